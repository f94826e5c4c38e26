//! The store's state and the primitives every command changes it with:
//! the map of keys (ordered by a fixed hash, the `SCAN` cursor), the
//! expiry index, the tombstones and deletion floor WATCH relies on, the
//! locks and their expiry index, the store clock and the applied index.
//! The maps are persistent (`imbl`), so a clone is O(1), which is what a
//! snapshot is ([`super::snapshot`]). The commands that use these
//! primitives are in [`super::command`].

use std::fmt;

use bytes::Bytes;
use imbl::{OrdMap, OrdSet};

use super::command::{Command, Outcome, Ttl};
use super::entry::Write;
use super::MAX_TOMBSTONES;

/// A key as the maps order it: by a fixed 64-bit hash, then by its bytes.
/// The hash is the `SCAN` cursor: resuming at a hash finds every key that
/// was there throughout, whatever was inserted or removed meanwhile. It is
/// FNV-1a, identical on every member and every version (a cursor may be
/// continued on another member after a failover), and never 0 (the cursor
/// that starts and ends a scan). A colliding attacker gains nothing: ties
/// are ordered by the bytes, the tree stays balanced.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Key {
    pub(super) hash: u64,
    pub(super) bytes: Bytes,
}

impl Key {
    /// For a lookup: shares `b`.
    pub(super) fn probe(b: &Bytes) -> Key {
        Key {
            hash: key_hash(b),
            bytes: b.clone(),
        }
    }

    /// For storing: a copy, so that the store does not keep alive the
    /// buffer the key came in (a recovered entry's payload is a slice of a
    /// whole log file read at start-up).
    pub(super) fn stored(b: &Bytes) -> Key {
        Key {
            hash: key_hash(b),
            bytes: Bytes::copy_from_slice(b),
        }
    }

    /// The first key a `SCAN` at `cursor` looks at.
    pub(super) fn first_at(cursor: u64) -> Key {
        Key {
            hash: cursor,
            bytes: Bytes::new(),
        }
    }
}

/// FNV-1a, 64 bits, never 0.
pub(super) fn key_hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// One key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) value: Bytes,
    /// Deadline, ms since the Unix epoch by the store clock.
    pub(super) expires_at: Option<u64>,
    /// Log index of the entry that last changed the key (WATCH).
    pub(super) modified: u64,
}

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lock {
    pub(super) owner: Bytes,
    /// Log index of the acquiring entry.
    pub(super) token: u64,
    /// By the store clock.
    pub(super) expires_at: u64,
}

/// The key-value store. Cloning is cheap (the maps are persistent), which
/// is what [`Kv::snapshot`] relies on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub(super) keys: OrdMap<Key, Record>,
    /// `(deadline, key)` of every key with a deadline.
    pub(super) deadlines: OrdSet<(u64, Key)>,
    /// Deleted keys and the index of the entry that deleted them.
    pub(super) tombstones: OrdMap<Key, u64>,
    /// An absent key without a tombstone was deleted at this index at the
    /// latest (0: never).
    pub(super) deleted_floor: u64,
    pub(super) locks: OrdMap<Bytes, Lock>,
    /// `(deadline, name)` of every lock.
    pub(super) lock_deadlines: OrdSet<(u64, Bytes)>,
    /// The store clock: the largest stamp applied, ms since the Unix epoch.
    pub(super) clock_ms: u64,
    /// Index of the last entry applied.
    pub(super) applied: u64,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv")
            .field("keys", &self.keys.len())
            .field("deadlines", &self.deadlines.len())
            .field("tombstones", &self.tombstones.len())
            .field("deleted_floor", &self.deleted_floor)
            .field("locks", &self.locks.len())
            .field("clock_ms", &self.clock_ms)
            .field("applied", &self.applied)
            .finish()
    }
}

impl Kv {
    /// An empty store.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Number of keys, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[allow(dead_code)] // the pair of `len` (clippy::len_without_is_empty)
    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys with a deadline.
    pub fn volatile_len(&self) -> usize {
        self.deadlines.len()
    }

    /// Locks held (or expired and not yet swept).
    pub fn locks_len(&self) -> usize {
        self.locks.len()
    }

    /// The store clock: the largest stamp applied (ms since the Unix epoch).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Index of the last entry applied (0: none). What a `WATCH` remembers.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Applies the committed entry at `index`. Entries must come in
    /// increasing index order (panics otherwise: a driver bug).
    pub fn apply(&mut self, index: u64, w: &Write) -> Outcome {
        assert!(
            index > self.applied,
            "entry {index} applied after entry {}",
            self.applied
        );
        self.applied = index;
        self.clock_ms = self.clock_ms.max(w.stamp_ms);
        self.exec(index, &w.cmd)
    }

    /// Answers a read at the current state. `now_ms` is the serving
    /// leader's clock; it only sets what `TTL` shows (from the later of it
    /// and the store clock). Which keys exist is decided by the store
    /// clock: the server checks [`Kv::read_due`] first. Panics on a write
    /// (caller bug).
    pub fn query(&self, cmd: &Command, now_ms: u64) -> Outcome {
        assert!(cmd.is_read(), "query of a write: {cmd:?}");
        self.read(cmd, now_ms.max(self.clock_ms))
    }

    /// Whether a read would see a key (or lock) whose deadline has passed
    /// by `now_ms` but not by the store clock: it must then wait for a
    /// sweep stamped `now_ms` or later (see the module doc). `KEYS` and
    /// `SCAN` look at every deadline; `DBSIZE` counts expired keys anyway.
    pub fn read_due(&self, cmd: &Command, now_ms: u64) -> bool {
        if now_ms <= self.clock_ms {
            return false;
        }
        let key_due = |k: &Bytes| {
            self.keys
                .get(&Key::probe(k))
                .and_then(|r| r.expires_at)
                .is_some_and(|d| d > self.clock_ms && d <= now_ms)
        };
        match cmd {
            Command::Get { key }
            | Command::TimeToLive { key, .. }
            | Command::Strlen { key }
            | Command::Type { key } => key_due(key),
            Command::MGet { keys } | Command::Exists { keys } => keys.iter().any(key_due),
            Command::Keys { .. } | Command::Scan { .. } => self
                .deadlines
                .range((self.clock_ms + 1, Key::first_at(0))..)
                .next()
                .is_some_and(|(d, _)| *d <= now_ms),
            Command::LockInfo { name } => self
                .locks
                .get(name)
                .is_some_and(|l| l.expires_at > self.clock_ms && l.expires_at <= now_ms),
            _ => false,
        }
    }

    /// The earliest deadline of a key or lock, expired or not.
    pub fn next_deadline(&self) -> Option<u64> {
        let k = self.deadlines.get_min().map(|(d, _)| *d);
        let l = self.lock_deadlines.get_min().map(|(d, _)| *d);
        k.into_iter().chain(l).min()
    }

    /// Whether a leader whose clock reads `now_ms` should propose a
    /// [`Command::Sweep`]: some deadline has passed by its clock or the
    /// store's (the later).
    pub fn sweep_due(&self, now_ms: u64) -> bool {
        self.next_deadline()
            .is_some_and(|d| d <= now_ms.max(self.clock_ms))
    }

    /// A guess of a read's reply size in bytes, counted against the client
    /// until the read is answered: the values it returns as they are now.
    pub fn reply_size_hint(&self, cmd: &Command) -> usize {
        let value_len = |k: &Bytes| {
            self.keys
                .get(&Key::probe(k))
                .map_or(5, |r| r.value.len() + 16)
        };
        match cmd {
            Command::Get { key } => value_len(key),
            Command::MGet { keys } => 16 + keys.iter().map(value_len).sum::<usize>(),
            Command::Keys { .. } => 16 + self.keys.len().min(1 << 16) * 16,
            Command::Scan { count, .. } => 64 + (*count).min(1 << 16) as usize * 16,
            _ => 64,
        }
    }

    // ----- Internals ------------------------------------------------------

    pub(super) fn expired(&self, r: &Record) -> bool {
        r.expires_at.is_some_and(|d| d <= self.clock_ms)
    }

    /// The key's record if it exists and has not expired.
    pub(super) fn live(&self, key: &Key) -> Option<&Record> {
        self.keys.get(key).filter(|r| !self.expired(r))
    }

    /// A write is about to touch `key`: if it expired, it goes now.
    pub(super) fn purge_expired(&mut self, index: u64, key: &Key) {
        if self.deadlines.is_empty() {
            return;
        }
        if self.keys.get(key).is_some_and(|r| self.expired(r)) {
            self.remove(index, key);
        }
    }

    /// Stores `value` under `key` with `expires_at`, changed at `index`.
    pub(super) fn put(&mut self, index: u64, key: &Key, value: Bytes, expires_at: Option<u64>) {
        // An overwrite changes the record in place: one search.
        if let Some(r) = self.keys.get_mut(key) {
            let old = std::mem::replace(&mut r.expires_at, expires_at);
            r.value = value;
            r.modified = index;
            if old != expires_at {
                // The index holds the stored key, never `key`, which may
                // share a log entry's buffer.
                let stored = self.keys.get_key_value(key).expect("just found").0.clone();
                if let Some(d) = old {
                    self.deadlines.remove(&(d, stored.clone()));
                }
                if let Some(d) = expires_at {
                    self.deadlines.insert((d, stored));
                }
            }
            return;
        }
        let key = Key::stored(&key.bytes);
        if !self.tombstones.is_empty() {
            self.tombstones.remove(&key);
        }
        if let Some(d) = expires_at {
            self.deadlines.insert((d, key.clone()));
        }
        self.keys.insert(
            key,
            Record {
                value,
                expires_at,
                modified: index,
            },
        );
    }

    /// Changes the deadline of an existing key, at `index`. A deadline at
    /// or before the clock deletes the key.
    pub(super) fn set_deadline(&mut self, index: u64, key: &Key, expires_at: Option<u64>) {
        if expires_at.is_some_and(|d| d <= self.clock_ms) {
            self.remove(index, key);
            return;
        }
        let value = self.keys.get(key).expect("key exists").value.clone();
        self.put(index, key, value, expires_at);
    }

    /// Removes `key` at `index`, leaving a tombstone; its record, if any.
    pub(super) fn remove(&mut self, index: u64, key: &Key) -> Option<Record> {
        let (k, r) = self.keys.remove_with_key(key)?;
        if let Some(d) = r.expires_at {
            self.deadlines.remove(&(d, k.clone()));
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones.clear();
            self.deleted_floor = index;
        } else {
            self.tombstones.insert(k, index);
        }
        Some(r)
    }

    /// Whether `key` may have changed after index `seen` (WATCH).
    pub(super) fn changed_since(&self, key: &Key, seen: u64) -> bool {
        match self.keys.get(key) {
            Some(r) => r.modified > seen || self.expired(r),
            None => {
                self.tombstones
                    .get(key)
                    .copied()
                    .unwrap_or(self.deleted_floor)
                    > seen
            }
        }
    }

    /// The deadline `ttl` asks for, by the store clock; `Err` for
    /// [`Ttl::Keep`].
    pub(super) fn deadline(&self, ttl: Ttl, current: Option<u64>) -> Option<u64> {
        match ttl {
            Ttl::Keep => current,
            Ttl::Clear => None,
            Ttl::In(ms) => Some(self.clock_ms.saturating_add(ms)),
            Ttl::At(ms) => Some(ms),
        }
    }

    pub(super) fn live_lock(&self, name: &Bytes) -> Option<&Lock> {
        self.locks
            .get(name)
            .filter(|l| l.expires_at > self.clock_ms)
    }

    pub(super) fn put_lock(&mut self, name: &Bytes, lock: Lock) {
        let name = match self.locks.get_key_value(name) {
            Some((n, _)) => n.clone(),
            None => Bytes::copy_from_slice(name),
        };
        let expires_at = lock.expires_at;
        if let Some(old) = self.locks.insert(name.clone(), lock) {
            self.lock_deadlines.remove(&(old.expires_at, name.clone()));
        }
        self.lock_deadlines.insert((expires_at, name));
    }

    pub(super) fn remove_lock(&mut self, name: &Bytes) {
        if let Some((n, l)) = self.locks.remove_with_key(name) {
            self.lock_deadlines.remove(&(l.expires_at, n));
        }
    }

    /// Checks that the maps agree with each other (tests; O(n)).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let with_deadline = self
            .keys
            .values()
            .filter(|r| r.expires_at.is_some())
            .count();
        assert_eq!(
            with_deadline,
            self.deadlines.len(),
            "every deadline is indexed once"
        );
        for (d, k) in &self.deadlines {
            let r = self.keys.get(k).expect("an indexed deadline's key exists");
            assert_eq!(r.expires_at, Some(*d), "the index holds the key's deadline");
        }
        for (k, r) in &self.keys {
            assert_eq!(k.hash, key_hash(&k.bytes), "a key is filed under its hash");
            assert!(r.modified <= self.applied, "modified at an applied index");
            assert!(
                !self.tombstones.contains_key(k),
                "a present key has no tombstone"
            );
        }
        assert!(
            self.tombstones.len() <= MAX_TOMBSTONES,
            "tombstones bounded"
        );
        assert!(self.tombstones.values().all(|&i| i <= self.applied));
        assert_eq!(self.locks.len(), self.lock_deadlines.len(), "lock index");
        for (d, n) in &self.lock_deadlines {
            let l = self.locks.get(n).expect("an indexed lock exists");
            assert_eq!(l.expires_at, *d, "the index holds the lock's deadline");
            assert!(l.token <= self.applied, "a token is an applied index");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::{b, Log};
    use crate::kv::Command;

    #[test]
    fn tombstones_are_bounded_and_stay_conservative() {
        let mut l = Log::new();
        let watched = l.kv.applied_index();
        for i in 0..=MAX_TOMBSTONES {
            let k = b(&format!("k{i}"));
            l.kv.apply(
                l.index + 1,
                &Write::new(
                    l.now_ms,
                    Command::MSet {
                        pairs: vec![(k.clone(), b("v"))],
                    },
                ),
            );
            l.kv.apply(
                l.index + 2,
                &Write::new(l.now_ms, Command::Del { keys: vec![k] }),
            );
            l.index += 2;
        }
        l.kv.check_invariants();
        assert!(l.kv.tombstones.len() < MAX_TOMBSTONES);
        assert!(l.kv.deleted_floor > watched);
        // k0's tombstone is gone, but the floor still says it changed.
        assert!(l.kv.changed_since(&Key::probe(&b("k0")), watched));
    }
}
