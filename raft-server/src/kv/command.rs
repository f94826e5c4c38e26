//! The replicated commands: what each one is ([`Command`]), what it does
//! to the store when a committed entry is applied ([`Kv::apply`] lands in
//! `exec` here, one method per command) or when it is read ([`Kv::query`]),
//! and what it answers ([`Outcome`]).
//!
//! Applying is deterministic: it depends on the store, the entry's index
//! and the command only (the store clock was moved by the entry's stamp
//! before), never on the member's clock or on hash-seeded iteration. How a
//! command is encoded in the log is in [`super::entry`].

use bytes::{BufMut, Bytes, BytesMut};

use super::glob::glob_match;
use super::store::{Key, Kv, Lock, Record};
#[allow(unused_imports)] // named by the docs
use super::MAX_TTL_MS;
use super::{MAX_VALUE_LEN, SWEEP_MAX};

/// `SET`'s condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCond {
    /// No condition.
    Always,
    /// `NX`: only if the key does not exist.
    Nx,
    /// `XX`: only if it exists.
    Xx,
}

/// What a write does to a key's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Leave it (`KEEPTTL`; `GETEX` without option).
    Keep,
    /// Remove it (a plain `SET`; `GETEX PERSIST`).
    Clear,
    /// This many ms after the store clock (`EX`, `PX`); 1..=[`MAX_TTL_MS`].
    In(u64),
    /// At this time, ms since the Unix epoch (`EXAT`, `PXAT`); at or before
    /// the clock deletes the key. 1..=[`MAX_TTL_MS`].
    At(u64),
}

/// `EXPIRE`'s condition (Redis 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireCond {
    /// No condition.
    Always,
    /// `NX`: only if the key has no deadline.
    Nx,
    /// `XX`: only if it has one.
    Xx,
    /// `GT`: only if the new deadline is later (no deadline is infinite).
    Gt,
    /// `LT`: only if it is earlier.
    Lt,
}

/// One operation on the store. Writes travel in log entries; reads are
/// answered by [`Kv::query`], or inside a transaction by [`Kv::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT|KEEPTTL]`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// `NX` / `XX`.
        cond: SetCond,
        /// `GET`: reply with the old value.
        get: bool,
        /// The deadline; [`Ttl::Clear`] without option.
        ttl: Ttl,
    },
    /// `GETDEL key`.
    GetDel {
        /// The key.
        key: Bytes,
    },
    /// `GETEX key [EX|PX|EXAT|PXAT|PERSIST]`.
    GetEx {
        /// The key.
        key: Bytes,
        /// [`Ttl::Keep`] without option, [`Ttl::Clear`] for `PERSIST`.
        ttl: Ttl,
    },
    /// `MSET key value [key value ...]`.
    MSet {
        /// At least one pair.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `MSETNX key value [key value ...]`.
    MSetNx {
        /// At least one pair.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `DEL` / `UNLINK key [key ...]`: how many of the keys existed
    /// (duplicates count once).
    Del {
        /// At least one key.
        keys: Vec<Bytes>,
    },
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`.
    IncrBy {
        /// The key.
        key: Bytes,
        /// What to add.
        by: i64,
    },
    /// `APPEND key value`.
    Append {
        /// The key.
        key: Bytes,
        /// What to append.
        value: Bytes,
    },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT key t [NX|XX|GT|LT]`.
    Expire {
        /// The key.
        key: Bytes,
        /// [`Ttl::In`] or [`Ttl::At`].
        ttl: Ttl,
        /// The condition.
        cond: ExpireCond,
    },
    /// `PERSIST key`.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// `FLUSHALL`: removes every key (not the locks).
    FlushAll,
    /// `MULTI ... EXEC`: applied as one entry, aborted (nil) if a watched
    /// key changed after the index the client watched it at.
    Exec {
        /// `(key, applied index at WATCH)`.
        watches: Vec<(Bytes, u64)>,
        /// The queued commands, neither `Exec` nor `Sweep`.
        cmds: Vec<Command>,
    },
    /// Removes expired keys and locks (proposed by the leader).
    Sweep,
    /// `LOCK.ACQUIRE name owner ttl-ms`: the token, or nil if another owner
    /// holds it.
    LockAcquire {
        /// The lock.
        name: Bytes,
        /// Who asks.
        owner: Bytes,
        /// Lease, 1..=[`MAX_TTL_MS`].
        ttl_ms: u64,
    },
    /// `LOCK.RELEASE name owner token`: 1 if released, 0 if not held so.
    LockRelease {
        /// The lock.
        name: Bytes,
        /// The holder.
        owner: Bytes,
        /// Its token.
        token: u64,
    },
    /// `LOCK.EXTEND name owner token ttl-ms`: 1 if extended, 0 if not held so.
    LockExtend {
        /// The lock.
        name: Bytes,
        /// The holder.
        owner: Bytes,
        /// Its token.
        token: u64,
        /// New lease from now, 1..=[`MAX_TTL_MS`].
        ttl_ms: u64,
    },
    /// `FENCED.SET lock token key value`: a `SET` applied only while
    /// `token` is the lock's current, live token.
    FencedSet {
        /// The lock.
        lock: Bytes,
        /// The writer's token.
        token: u64,
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// `GET key`.
    Get {
        /// The key.
        key: Bytes,
    },
    /// `MGET key [key ...]`.
    MGet {
        /// At least one key.
        keys: Vec<Bytes>,
    },
    /// `EXISTS key [key ...]`: duplicates count each time.
    Exists {
        /// At least one key.
        keys: Vec<Bytes>,
    },
    /// `TTL` (`ms: false`) / `PTTL` (`ms: true`).
    TimeToLive {
        /// The key.
        key: Bytes,
        /// Milliseconds rather than seconds.
        ms: bool,
    },
    /// `STRLEN key`.
    Strlen {
        /// The key.
        key: Bytes,
    },
    /// `TYPE key`.
    Type {
        /// The key.
        key: Bytes,
    },
    /// `DBSIZE`: keys stored, including expired ones not yet swept (as
    /// Redis counts them).
    DbSize,
    /// `KEYS pattern`.
    Keys {
        /// Glob pattern.
        pattern: Bytes,
    },
    /// `SCAN cursor [MATCH pattern] [COUNT n]`.
    Scan {
        /// Where to resume: 0 to start.
        cursor: u64,
        /// `MATCH`.
        pattern: Option<Bytes>,
        /// Keys to examine, at least 1.
        count: u64,
    },
    /// `LOCK.INFO name`: `[owner, token, pttl]` or nil.
    LockInfo {
        /// The lock.
        name: Bytes,
    },
}

impl Command {
    /// Whether the read walks the key space rather than a few keys: `KEYS`,
    /// and a `SCAN` page of more than [`super::WALK_INLINE_MAX`] keys. Such
    /// reads run off the event loop (`crate::walks`), and cannot be queued
    /// in a transaction (inside `EXEC` they would run on every member's
    /// loop).
    pub fn walks_keyspace(&self) -> bool {
        match self {
            Command::Keys { .. } => true,
            Command::Scan { count, .. } => *count > super::WALK_INLINE_MAX,
            _ => false,
        }
    }

    /// Whether the command only reads (it may then be answered through
    /// ReadIndex instead of the log).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Get { .. }
                | Command::MGet { .. }
                | Command::Exists { .. }
                | Command::TimeToLive { .. }
                | Command::Strlen { .. }
                | Command::Type { .. }
                | Command::DbSize
                | Command::Keys { .. }
                | Command::Scan { .. }
                | Command::LockInfo { .. }
        )
    }

    /// The key a redirect names the slot of: the first key, if any.
    pub fn first_key(&self) -> Option<&Bytes> {
        match self {
            Command::Set { key, .. }
            | Command::GetDel { key }
            | Command::GetEx { key, .. }
            | Command::IncrBy { key, .. }
            | Command::Append { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key }
            | Command::FencedSet { key, .. }
            | Command::Get { key }
            | Command::TimeToLive { key, .. }
            | Command::Strlen { key }
            | Command::Type { key } => Some(key),
            Command::MSet { pairs } | Command::MSetNx { pairs } => pairs.first().map(|p| &p.0),
            Command::Del { keys } | Command::MGet { keys } | Command::Exists { keys } => {
                keys.first()
            }
            Command::Exec { watches, cmds } => watches
                .first()
                .map(|w| &w.0)
                .or_else(|| cmds.iter().find_map(Command::first_key)),
            Command::LockAcquire { name, .. }
            | Command::LockRelease { name, .. }
            | Command::LockExtend { name, .. }
            | Command::LockInfo { name } => Some(name),
            Command::FlushAll
            | Command::Sweep
            | Command::DbSize
            | Command::Keys { .. }
            | Command::Scan { .. } => None,
        }
    }
}

/// What a command produced, for the client that sent it (the server turns
/// it into a RESP reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `+OK`.
    Ok,
    /// A simple string (`TYPE`'s `string` / `none`).
    Status(&'static str),
    /// Nil (no such key, condition not met, lock held).
    Nil,
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// An array.
    Array(Vec<Outcome>),
    /// An error reply, in Redis' words (`ERR ...`, `FENCED ...`).
    Error(String),
    /// The nil array of an aborted `EXEC` (`*-1` in RESP2).
    Aborted,
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// Parses a decimal `i64` the way Redis' `string2ll` does: optional `-`, no
/// `+`, no leading zeros, no spaces.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || s.len() > 1) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl Kv {
    /// Applies `cmd` at `index` (the clock already moved): one method per
    /// command below, reads answered at the store clock.
    pub(super) fn exec(&mut self, index: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::Set {
                key,
                value,
                cond,
                get,
                ttl,
            } => self.exec_set(index, key, value, *cond, *get, *ttl),
            Command::GetDel { key } => self.exec_get_del(index, key),
            Command::GetEx { key, ttl } => self.exec_get_ex(index, key, *ttl),
            Command::MSet { pairs } => self.exec_mset(index, pairs),
            Command::MSetNx { pairs } => self.exec_mset_nx(index, pairs),
            Command::Del { keys } => self.exec_del(index, keys),
            Command::IncrBy { key, by } => self.exec_incr_by(index, key, *by),
            Command::Append { key, value } => self.exec_append(index, key, value),
            Command::Expire { key, ttl, cond } => self.exec_expire(index, key, *ttl, *cond),
            Command::Persist { key } => self.exec_persist(index, key),
            Command::FlushAll => self.exec_flush_all(index),
            Command::Exec { watches, cmds } => self.exec_transaction(index, watches, cmds),
            Command::Sweep => self.exec_sweep(index),
            Command::LockAcquire {
                name,
                owner,
                ttl_ms,
            } => self.exec_lock_acquire(index, name, owner, *ttl_ms),
            Command::LockRelease { name, owner, token } => {
                self.exec_lock_release(name, owner, *token)
            }
            Command::LockExtend {
                name,
                owner,
                token,
                ttl_ms,
            } => self.exec_lock_extend(name, owner, *token, *ttl_ms),
            Command::FencedSet {
                lock,
                token,
                key,
                value,
            } => self.exec_fenced_set(index, lock, *token, key, value),
            read => self.read(read, self.clock_ms),
        }
    }

    /// `SET`: the fast path for a plain overwrite, then the options.
    fn exec_set(
        &mut self,
        index: u64,
        key: &Bytes,
        value: &Bytes,
        cond: SetCond,
        get: bool,
        ttl: Ttl,
    ) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        // The common case, a plain SET over a key without a
        // deadline, in one search instead of two (the search is
        // the largest single cost of applying a SET).
        if matches!((cond, get, ttl), (SetCond::Always, false, Ttl::Clear)) {
            if let Some(r) = self.keys.get_mut(&k).filter(|r| r.expires_at.is_none()) {
                r.value = Bytes::copy_from_slice(value);
                r.modified = index;
                return Outcome::Ok;
            }
        }
        let old = self.keys.get(&k);
        let old_value = if get {
            old.map(|r| r.value.clone())
        } else {
            None
        };
        let go = match cond {
            SetCond::Always => true,
            SetCond::Nx => old.is_none(),
            SetCond::Xx => old.is_some(),
        };
        if go {
            let expires_at = self.deadline(ttl, old.and_then(|r| r.expires_at));
            if expires_at.is_some_and(|d| d <= self.clock_ms) {
                // Redis: a deadline in the past deletes the key.
                self.remove(index, &k);
            } else {
                self.put(index, &k, Bytes::copy_from_slice(value), expires_at);
            }
        }
        match (get, go) {
            (true, _) => old_value.map_or(Outcome::Nil, Outcome::Bulk),
            (false, true) => Outcome::Ok,
            (false, false) => Outcome::Nil,
        }
    }

    /// `GETDEL`.
    fn exec_get_del(&mut self, index: u64, key: &Bytes) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        self.remove(index, &k)
            .map_or(Outcome::Nil, |r| Outcome::Bulk(r.value))
    }

    /// `GETEX`: the value, and the deadline changed as asked.
    fn exec_get_ex(&mut self, index: u64, key: &Bytes, ttl: Ttl) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        let Some(r) = self.keys.get(&k) else {
            return Outcome::Nil;
        };
        let value = r.value.clone();
        let current = r.expires_at;
        let new = self.deadline(ttl, current);
        if new != current {
            self.set_deadline(index, &k, new);
        }
        Outcome::Bulk(value)
    }

    /// `MSET`.
    fn exec_mset(&mut self, index: u64, pairs: &[(Bytes, Bytes)]) -> Outcome {
        for (key, value) in pairs {
            self.put(index, &Key::probe(key), Bytes::copy_from_slice(value), None);
        }
        Outcome::Ok
    }

    /// `MSETNX`: all or nothing.
    fn exec_mset_nx(&mut self, index: u64, pairs: &[(Bytes, Bytes)]) -> Outcome {
        if pairs
            .iter()
            .any(|(k, _)| self.live(&Key::probe(k)).is_some())
        {
            return Outcome::Int(0);
        }
        for (key, value) in pairs {
            let k = Key::probe(key);
            self.purge_expired(index, &k);
            self.put(index, &k, Bytes::copy_from_slice(value), None);
        }
        Outcome::Int(1)
    }

    /// `DEL`: how many existed.
    fn exec_del(&mut self, index: u64, keys: &[Bytes]) -> Outcome {
        let mut n = 0;
        for key in keys {
            let k = Key::probe(key);
            self.purge_expired(index, &k);
            n += i64::from(self.remove(index, &k).is_some());
        }
        Outcome::Int(n)
    }

    /// `INCRBY` and friends; the deadline stays.
    fn exec_incr_by(&mut self, index: u64, key: &Bytes, by: i64) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        let (current, expires_at) = match self.keys.get(&k) {
            None => (0, None),
            Some(r) => match parse_i64(&r.value) {
                Some(v) => (v, r.expires_at),
                None => return Outcome::Error(NOT_INTEGER.into()),
            },
        };
        let Some(new) = current.checked_add(by) else {
            return Outcome::Error("ERR increment or decrement would overflow".into());
        };
        self.put(index, &k, Bytes::from(new.to_string()), expires_at);
        Outcome::Int(new)
    }

    /// `APPEND`, bounded by [`MAX_VALUE_LEN`]; the deadline stays.
    fn exec_append(&mut self, index: u64, key: &Bytes, value: &Bytes) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        let (old, expires_at) = match self.keys.get(&k) {
            None => (Bytes::new(), None),
            Some(r) => (r.value.clone(), r.expires_at),
        };
        let len = old.len() + value.len();
        if len > MAX_VALUE_LEN {
            return Outcome::Error(
                "ERR string exceeds maximum allowed size (proto-max-bulk-len)".into(),
            );
        }
        let mut v = BytesMut::with_capacity(len);
        v.put_slice(&old);
        v.put_slice(value);
        self.put(index, &k, v.freeze(), expires_at);
        Outcome::Int(len as i64)
    }

    /// `EXPIRE` and friends with Redis 7 conditions.
    fn exec_expire(&mut self, index: u64, key: &Bytes, ttl: Ttl, cond: ExpireCond) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        let Some(r) = self.keys.get(&k) else {
            return Outcome::Int(0);
        };
        let current = r.expires_at;
        let new = self.deadline(ttl, current).expect("EXPIRE sets a deadline");
        let go = match (cond, current) {
            (ExpireCond::Always, _) => true,
            (ExpireCond::Nx, c) => c.is_none(),
            (ExpireCond::Xx, c) => c.is_some(),
            // No deadline is an infinite one.
            (ExpireCond::Gt, c) => c.is_some_and(|c| new > c),
            (ExpireCond::Lt, c) => c.is_none_or(|c| new < c),
        };
        if go {
            self.set_deadline(index, &k, Some(new));
        }
        Outcome::Int(i64::from(go))
    }

    /// `PERSIST`.
    fn exec_persist(&mut self, index: u64, key: &Bytes) -> Outcome {
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        match self.keys.get(&k) {
            Some(r) if r.expires_at.is_some() => {
                self.set_deadline(index, &k, None);
                Outcome::Int(1)
            }
            _ => Outcome::Int(0),
        }
    }

    /// `FLUSHALL`: every key, not the locks; watchers older than `index` abort.
    fn exec_flush_all(&mut self, index: u64) -> Outcome {
        self.keys.clear();
        self.deadlines.clear();
        self.tombstones.clear();
        self.deleted_floor = index;
        Outcome::Ok
    }

    /// `EXEC`: aborted if a watched key changed after its watch, else every command at `index`.
    fn exec_transaction(
        &mut self,
        index: u64,
        watches: &[(Bytes, u64)],
        cmds: &[Command],
    ) -> Outcome {
        if watches
            .iter()
            .any(|(k, seen)| self.changed_since(&Key::probe(k), *seen))
        {
            return Outcome::Aborted;
        }
        Outcome::Array(cmds.iter().map(|c| self.exec(index, c)).collect())
    }

    /// A sweep: at most [`SWEEP_MAX`] expired keys and as many locks, in deadline order.
    fn exec_sweep(&mut self, index: u64) -> Outcome {
        let clock = self.clock_ms;
        let due: Vec<Key> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= clock)
            .take(SWEEP_MAX)
            .map(|(_, k)| k.clone())
            .collect();
        for k in &due {
            self.remove(index, k);
        }
        let locks: Vec<Bytes> = self
            .lock_deadlines
            .iter()
            .take_while(|(d, _)| *d <= clock)
            .take(SWEEP_MAX)
            .map(|(_, n)| n.clone())
            .collect();
        for n in &locks {
            self.remove_lock(n);
        }
        Outcome::Int((due.len() + locks.len()) as i64)
    }

    /// `LOCK.ACQUIRE`: the token is the acquiring entry's index.
    fn exec_lock_acquire(
        &mut self,
        index: u64,
        name: &Bytes,
        owner: &Bytes,
        ttl_ms: u64,
    ) -> Outcome {
        let expires_at = self.clock_ms.saturating_add(ttl_ms);
        let token = match self.live_lock(name) {
            Some(l) if l.owner != *owner => return Outcome::Nil,
            // The holder asking again (a retry whose answer was
            // lost): same token, lease renewed.
            Some(l) => l.token,
            None => index,
        };
        self.put_lock(
            name,
            Lock {
                owner: Bytes::copy_from_slice(owner),
                token,
                expires_at,
            },
        );
        Outcome::Int(token as i64)
    }

    /// `LOCK.RELEASE`.
    fn exec_lock_release(&mut self, name: &Bytes, owner: &Bytes, token: u64) -> Outcome {
        match self.live_lock(name) {
            Some(l) if l.owner == *owner && l.token == token => {}
            _ => return Outcome::Int(0),
        }
        self.remove_lock(name);
        Outcome::Int(1)
    }

    /// `LOCK.EXTEND`.
    fn exec_lock_extend(
        &mut self,
        name: &Bytes,
        owner: &Bytes,
        token: u64,
        ttl_ms: u64,
    ) -> Outcome {
        let lock = match self.live_lock(name) {
            Some(l) if l.owner == *owner && l.token == token => l.clone(),
            _ => return Outcome::Int(0),
        };
        let expires_at = self.clock_ms.saturating_add(ttl_ms);
        self.put_lock(name, Lock { expires_at, ..lock });
        Outcome::Int(1)
    }

    /// `FENCED.SET`: a `SET` only while `token` is the lock's current, live one.
    fn exec_fenced_set(
        &mut self,
        index: u64,
        lock: &Bytes,
        token: u64,
        key: &Bytes,
        value: &Bytes,
    ) -> Outcome {
        match self.live_lock(lock) {
            Some(l) if l.token == token => {}
            Some(l) => {
                return Outcome::Error(format!(
                    "FENCED token {token} is stale: lock '{}' is held with token {}",
                    String::from_utf8_lossy(lock),
                    l.token
                ))
            }
            None => {
                return Outcome::Error(format!(
                    "FENCED token {token} is stale: lock '{}' is not held (expired or \
                     released)",
                    String::from_utf8_lossy(lock)
                ))
            }
        }
        let k = Key::probe(key);
        self.purge_expired(index, &k);
        self.put(index, &k, Bytes::copy_from_slice(value), None);
        Outcome::Ok
    }

    /// A read at the store clock; `now_ms` (at least the clock) is the
    /// time `TTL` counts from.
    pub(super) fn read(&self, cmd: &Command, now_ms: u64) -> Outcome {
        let get = |k: &Bytes| self.live(&Key::probe(k));
        match cmd {
            Command::Get { key } => {
                get(key).map_or(Outcome::Nil, |r| Outcome::Bulk(r.value.clone()))
            }
            Command::MGet { keys } => Outcome::Array(
                keys.iter()
                    .map(|k| get(k).map_or(Outcome::Nil, |r| Outcome::Bulk(r.value.clone())))
                    .collect(),
            ),
            Command::Exists { keys } => {
                Outcome::Int(keys.iter().filter(|k| get(k).is_some()).count() as i64)
            }
            Command::TimeToLive { key, ms } => match get(key) {
                None => Outcome::Int(-2),
                Some(Record {
                    expires_at: None, ..
                }) => Outcome::Int(-1),
                Some(Record {
                    expires_at: Some(d),
                    ..
                }) => {
                    let left = d.saturating_sub(now_ms);
                    // Redis rounds seconds to the nearest.
                    let v = if *ms {
                        left
                    } else {
                        left.saturating_add(500) / 1000
                    };
                    Outcome::Int(v as i64)
                }
            },
            Command::Strlen { key } => Outcome::Int(get(key).map_or(0, |r| r.value.len() as i64)),
            Command::Type { key } => {
                Outcome::Status(if get(key).is_some() { "string" } else { "none" })
            }
            Command::DbSize => Outcome::Int(self.keys.len() as i64),
            Command::Keys { pattern } => Outcome::Array(
                self.keys
                    .iter()
                    .filter(|(k, r)| !self.expired(r) && glob_match(pattern, &k.bytes))
                    .map(|(k, _)| Outcome::Bulk(k.bytes.clone()))
                    .collect(),
            ),
            Command::Scan {
                cursor,
                pattern,
                count,
            } => {
                let mut found = Vec::new();
                let mut last_hash = None;
                let mut next = 0;
                for (examined, (k, r)) in self.keys.range(Key::first_at(*cursor)..).enumerate() {
                    // Never end a page inside a group of equal hashes: the
                    // next page starts at a hash, and must not repeat
                    // forever.
                    if examined as u64 >= *count && last_hash != Some(k.hash) {
                        next = k.hash;
                        break;
                    }
                    last_hash = Some(k.hash);
                    if !self.expired(r) && pattern.as_ref().is_none_or(|p| glob_match(p, &k.bytes))
                    {
                        found.push(Outcome::Bulk(k.bytes.clone()));
                    }
                }
                Outcome::Array(vec![
                    Outcome::Bulk(Bytes::from(next.to_string())),
                    Outcome::Array(found),
                ])
            }
            Command::LockInfo { name } => match self.live_lock(name) {
                None => Outcome::Nil,
                Some(l) => Outcome::Array(vec![
                    Outcome::Bulk(l.owner.clone()),
                    Outcome::Int(l.token as i64),
                    Outcome::Int(l.expires_at.saturating_sub(now_ms) as i64),
                ]),
            },
            write => unreachable!("read of a write: {write:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::{b, bulk, set, Log};
    use crate::kv::{Write, MAX_VALUE_LEN, SWEEP_MAX};

    #[test]
    fn set_options() {
        let mut l = Log::new();
        assert_eq!(l.run(set("a", "1")), Outcome::Ok);
        let with = |cond, get, ttl| Command::Set {
            key: b("a"),
            value: b("2"),
            cond,
            get,
            ttl,
        };
        assert_eq!(l.run(with(SetCond::Nx, false, Ttl::Clear)), Outcome::Nil);
        assert_eq!(l.get("a"), bulk("1"));
        assert_eq!(l.run(with(SetCond::Xx, true, Ttl::In(1000))), bulk("1"));
        assert_eq!(l.get("a"), bulk("2"));
        assert_eq!(l.ttl_ms("a"), Outcome::Int(1000));
        // KEEPTTL keeps it, a plain SET clears it.
        assert_eq!(l.run(with(SetCond::Always, false, Ttl::Keep)), Outcome::Ok);
        assert_eq!(l.ttl_ms("a"), Outcome::Int(1000));
        assert_eq!(l.run(set("a", "3")), Outcome::Ok);
        assert_eq!(l.ttl_ms("a"), Outcome::Int(-1));
        // NX GET on an existing key: the old value, nothing set.
        assert_eq!(l.run(with(SetCond::Nx, true, Ttl::Clear)), bulk("3"));
        assert_eq!(l.get("a"), bulk("3"));
        // XX on a missing key.
        let xx = Command::Set {
            key: b("zz"),
            value: b("v"),
            cond: SetCond::Xx,
            get: true,
            ttl: Ttl::Clear,
        };
        assert_eq!(l.run(xx), Outcome::Nil);
        assert_eq!(l.get("zz"), Outcome::Nil);
        // EXAT in the past: the key is deleted.
        let past = Command::Set {
            key: b("a"),
            value: b("4"),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::At(l.now_ms - 1),
        };
        assert_eq!(l.run(past), Outcome::Ok);
        assert_eq!(l.get("a"), Outcome::Nil);
        let pxat = Command::Set {
            key: b("a"),
            value: b("5"),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::At(l.now_ms + 2500),
        };
        l.run(pxat);
        assert_eq!(
            l.q(Command::TimeToLive {
                key: b("a"),
                ms: false
            }),
            Outcome::Int(3),
            "2.5 s rounds to 3, as in Redis"
        );
    }

    #[test]
    fn expiry_follows_the_store_clock_only() {
        let mut l = Log::new();
        let t0 = l.now_ms;
        l.run(Command::Set {
            key: b("k"),
            value: b("v"),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::In(100),
        });
        // A later leader clock alone does not expire it: the store clock
        // decides, and the read is told to wait for a sweep.
        assert_eq!(
            l.kv.query(&Command::Get { key: b("k") }, t0 + 200),
            bulk("v")
        );
        assert!(l.kv.read_due(&Command::Get { key: b("k") }, t0 + 200));
        assert!(!l.kv.read_due(&Command::Get { key: b("k") }, t0 + 99));
        assert!(l.kv.read_due(&Command::Keys { pattern: b("*") }, t0 + 100));
        assert!(!l.kv.read_due(&Command::Get { key: b("other") }, t0 + 200));
        assert!(!l.kv.sweep_due(t0 + 99));
        assert!(l.kv.sweep_due(t0 + 100));
        // A leader whose clock is behind: its stamp does not move the
        // clock back.
        l.now_ms = t0 + 150;
        l.run(Command::Sweep);
        assert_eq!(l.kv.clock_ms(), t0 + 150);
        assert_eq!(l.kv.len(), 0, "swept");
        l.now_ms = t0 + 10;
        l.run(Command::Set {
            key: b("j"),
            value: b("v"),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::In(100),
        });
        assert_eq!(l.kv.clock_ms(), t0 + 150, "max of the stamps");
        // The TTL counts from the store clock, not from the late stamp.
        assert_eq!(
            l.kv.query(
                &Command::TimeToLive {
                    key: b("j"),
                    ms: true
                },
                0
            ),
            Outcome::Int(100)
        );
        assert_eq!(l.kv.next_deadline(), Some(t0 + 250));
        assert!(!l.kv.sweep_due(t0 + 200));
        assert!(l.kv.sweep_due(t0 + 250));
    }

    #[test]
    fn an_expired_key_is_absent_to_writes_before_any_sweep() {
        let mut l = Log::new();
        let t0 = l.now_ms;
        let px = |k: &str, ms| Command::Set {
            key: b(k),
            value: b("5"),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::In(ms),
        };
        l.run(px("a", 10));
        l.run(px("b", 10));
        l.run(px("c", 10));
        l.now_ms = t0 + 10;
        // Expired by the next entry's stamp: INCR starts from 0, NX sets.
        assert_eq!(
            l.run(Command::IncrBy { key: b("a"), by: 1 }),
            Outcome::Int(1)
        );
        assert_eq!(l.ttl_ms("a"), Outcome::Int(-1), "a new key, no deadline");
        let nx = Command::Set {
            key: b("b"),
            value: b("x"),
            cond: SetCond::Nx,
            get: true,
            ttl: Ttl::Clear,
        };
        assert_eq!(l.run(nx), Outcome::Nil, "the old value is gone");
        assert_eq!(l.get("b"), bulk("x"));
        assert_eq!(l.get("c"), Outcome::Nil);
        assert_eq!(l.q(Command::DbSize), Outcome::Int(3), "c is not swept yet");
        let Outcome::Array(keys) = l.q(Command::Keys { pattern: b("*") }) else {
            panic!()
        };
        assert_eq!(keys.len(), 2, "KEYS skips the expired key");
        assert_eq!(l.run(Command::Del { keys: vec![b("c")] }), Outcome::Int(0));
        assert_eq!(l.q(Command::DbSize), Outcome::Int(2));
    }

    #[test]
    fn sweeps_are_bounded_and_in_deadline_order() {
        let mut l = Log::new();
        let t0 = l.now_ms;
        for i in 0..(SWEEP_MAX as u64 + 10) {
            l.run(Command::Set {
                key: b(&format!("k{i}")),
                value: b("v"),
                cond: SetCond::Always,
                get: false,
                ttl: Ttl::In(1 + i),
            });
        }
        l.run(set("forever", "v"));
        l.now_ms = t0 + 10_000;
        assert!(l.kv.sweep_due(l.now_ms));
        assert_eq!(l.run(Command::Sweep), Outcome::Int(SWEEP_MAX as i64));
        assert_eq!(l.kv.len(), 11);
        assert_eq!(l.kv.volatile_len(), 10);
        assert!(l.kv.sweep_due(l.now_ms), "more to sweep");
        assert_eq!(l.run(Command::Sweep), Outcome::Int(10));
        assert!(!l.kv.sweep_due(l.now_ms));
        assert_eq!(l.get("forever"), bulk("v"));
    }

    #[test]
    fn incr_append_and_friends() {
        let mut l = Log::new();
        let incr = |k: &str, by| Command::IncrBy { key: b(k), by };
        assert_eq!(l.run(incr("n", 1)), Outcome::Int(1));
        assert_eq!(l.run(incr("n", -5)), Outcome::Int(-4));
        assert_eq!(l.get("n"), bulk("-4"));
        l.run(set("s", "abc"));
        assert_eq!(l.run(incr("s", 1)), Outcome::Error(NOT_INTEGER.into()));
        for bad in [
            "",
            " 1",
            "1 ",
            "+1",
            "01",
            "-0",
            "1.5",
            "99999999999999999999",
        ] {
            l.run(set("s", bad));
            assert_eq!(
                l.run(incr("s", 1)),
                Outcome::Error(NOT_INTEGER.into()),
                "{bad:?}"
            );
        }
        l.run(set("m", &i64::MAX.to_string()));
        assert_eq!(
            l.run(incr("m", 1)),
            Outcome::Error("ERR increment or decrement would overflow".into())
        );
        l.run(set("m", "0"));
        assert_eq!(l.run(incr("m", i64::MIN)), Outcome::Int(i64::MIN));
        // INCR keeps the deadline, as in Redis.
        l.run(Command::Expire {
            key: b("n"),
            ttl: Ttl::In(5000),
            cond: ExpireCond::Always,
        });
        l.run(incr("n", 1));
        assert_eq!(l.ttl_ms("n"), Outcome::Int(5000));
        assert_eq!(
            l.run(Command::Append {
                key: b("ap"),
                value: b("ab")
            }),
            Outcome::Int(2)
        );
        assert_eq!(
            l.run(Command::Append {
                key: b("ap"),
                value: b("cd")
            }),
            Outcome::Int(4)
        );
        assert_eq!(l.q(Command::Strlen { key: b("ap") }), Outcome::Int(4));
        assert_eq!(l.q(Command::Strlen { key: b("no") }), Outcome::Int(0));
        assert_eq!(
            l.q(Command::Type { key: b("ap") }),
            Outcome::Status("string")
        );
        assert_eq!(l.q(Command::Type { key: b("no") }), Outcome::Status("none"));
        l.run(set("big", &"x".repeat(MAX_VALUE_LEN - 1)));
        assert_eq!(
            l.run(Command::Append {
                key: b("big"),
                value: b("yz")
            }),
            Outcome::Error("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into())
        );
        assert_eq!(l.run(Command::GetDel { key: b("ap") }), bulk("abcd"));
        assert_eq!(l.run(Command::GetDel { key: b("ap") }), Outcome::Nil);
        // MSET, MSETNX, MGET, EXISTS, DEL.
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (b(k), b(v))).collect();
        assert_eq!(
            l.run(Command::MSet {
                pairs: pairs(&[("x", "1"), ("y", "2"), ("x", "3")])
            }),
            Outcome::Ok
        );
        assert_eq!(
            l.q(Command::MGet {
                keys: vec![b("x"), b("nope"), b("y")]
            }),
            Outcome::Array(vec![bulk("3"), Outcome::Nil, bulk("2")])
        );
        assert_eq!(
            l.run(Command::MSetNx {
                pairs: pairs(&[("q", "1"), ("x", "9")])
            }),
            Outcome::Int(0)
        );
        assert_eq!(l.get("q"), Outcome::Nil, "all or nothing");
        assert_eq!(
            l.run(Command::MSetNx {
                pairs: pairs(&[("q", "1"), ("r", "2")])
            }),
            Outcome::Int(1)
        );
        assert_eq!(
            l.q(Command::Exists {
                keys: vec![b("q"), b("q"), b("zz")]
            }),
            Outcome::Int(2),
            "EXISTS counts repeats"
        );
        assert_eq!(
            l.run(Command::Del {
                keys: vec![b("q"), b("q"), b("zz"), b("r")]
            }),
            Outcome::Int(2),
            "DEL does not"
        );
        assert_eq!(l.run(Command::FlushAll), Outcome::Ok);
        assert_eq!(l.q(Command::DbSize), Outcome::Int(0));
    }

    #[test]
    fn expire_conditions_like_redis() {
        let mut l = Log::new();
        let t0 = l.now_ms;
        let exp = |ttl, cond| Command::Expire {
            key: b("k"),
            ttl,
            cond,
        };
        assert_eq!(
            l.run(exp(Ttl::In(10), ExpireCond::Always)),
            Outcome::Int(0),
            "no key"
        );
        l.run(set("k", "v"));
        assert_eq!(l.run(exp(Ttl::In(100), ExpireCond::Xx)), Outcome::Int(0));
        assert_eq!(
            l.run(exp(Ttl::In(100), ExpireCond::Gt)),
            Outcome::Int(0),
            "infinite"
        );
        assert_eq!(l.run(exp(Ttl::In(100), ExpireCond::Lt)), Outcome::Int(1));
        assert_eq!(l.run(exp(Ttl::In(50), ExpireCond::Nx)), Outcome::Int(0));
        assert_eq!(l.run(exp(Ttl::In(200), ExpireCond::Lt)), Outcome::Int(0));
        assert_eq!(l.run(exp(Ttl::In(200), ExpireCond::Gt)), Outcome::Int(1));
        assert_eq!(l.ttl_ms("k"), Outcome::Int(200));
        assert_eq!(
            l.run(exp(Ttl::At(t0 + 300), ExpireCond::Xx)),
            Outcome::Int(1)
        );
        assert_eq!(l.ttl_ms("k"), Outcome::Int(300));
        assert_eq!(l.run(Command::Persist { key: b("k") }), Outcome::Int(1));
        assert_eq!(l.run(Command::Persist { key: b("k") }), Outcome::Int(0));
        assert_eq!(l.ttl_ms("k"), Outcome::Int(-1));
        assert_eq!(l.ttl_ms("none"), Outcome::Int(-2));
        // A deadline in the past deletes the key.
        assert_eq!(
            l.run(exp(Ttl::At(t0 - 5), ExpireCond::Always)),
            Outcome::Int(1)
        );
        assert_eq!(l.get("k"), Outcome::Nil);
        // GETEX: read and set the deadline, or PERSIST.
        l.run(set("g", "v"));
        let getex = |ttl| Command::GetEx { key: b("g"), ttl };
        assert_eq!(l.run(getex(Ttl::In(700))), bulk("v"));
        assert_eq!(l.ttl_ms("g"), Outcome::Int(700));
        assert_eq!(l.run(getex(Ttl::Keep)), bulk("v"));
        assert_eq!(l.ttl_ms("g"), Outcome::Int(700));
        assert_eq!(l.run(getex(Ttl::Clear)), bulk("v"));
        assert_eq!(l.ttl_ms("g"), Outcome::Int(-1));
        assert_eq!(l.run(getex(Ttl::At(t0 - 1))), bulk("v"));
        assert_eq!(l.get("g"), Outcome::Nil);
        assert_eq!(
            l.run(Command::GetEx {
                key: b("none"),
                ttl: Ttl::In(5)
            }),
            Outcome::Nil
        );
    }

    #[test]
    fn exec_aborts_on_a_change_after_watch_only() {
        let mut l = Log::new();
        l.run(set("a", "1"));
        let watched = l.kv.applied_index();
        let tx = |w: u64| Command::Exec {
            watches: vec![(b("a"), w), (b("absent"), w)],
            cmds: vec![
                Command::IncrBy { key: b("a"), by: 1 },
                Command::Get { key: b("a") },
                Command::IncrBy { key: b("s"), by: 1 },
            ],
        };
        // Nothing changed: applied, each command's outcome in order (an
        // error inside does not stop the others).
        l.run(set("s", "x"));
        assert_eq!(
            l.run(tx(watched)),
            Outcome::Array(vec![
                Outcome::Int(2),
                bulk("2"),
                Outcome::Error(NOT_INTEGER.into())
            ])
        );
        // `a` changed (by that transaction) after `watched`: aborted.
        assert_eq!(l.run(tx(watched)), Outcome::Aborted);
        assert_eq!(l.get("a"), bulk("2"), "nothing applied");
        // A plain SET over a key without a deadline (the apply's fast
        // path) is a change too.
        let watched = l.kv.applied_index();
        l.run(set("a", "2"));
        assert_eq!(l.run(tx(watched)), Outcome::Aborted);
        let watched = l.kv.applied_index();
        // A key that appears and disappears after WATCH: its tombstone says so.
        l.run(set("absent", "1"));
        l.run(Command::Del {
            keys: vec![b("absent")],
        });
        assert_eq!(l.run(tx(watched)), Outcome::Aborted);
        let watched = l.kv.applied_index();
        assert!(matches!(l.run(tx(watched)), Outcome::Array(_)));
        // Expiry counts as a change, and so does FLUSHALL.
        let watched = l.kv.applied_index();
        l.run(Command::Expire {
            key: b("a"),
            ttl: Ttl::In(1),
            cond: ExpireCond::Always,
        });
        assert_eq!(l.run(tx(watched)), Outcome::Aborted);
        l.now_ms += 10;
        let watched = l.kv.applied_index();
        l.run(Command::Get { key: b("a") });
        assert_eq!(l.run(tx(watched)), Outcome::Aborted, "expired, not swept");
        let watched = l.kv.applied_index();
        l.run(Command::FlushAll);
        assert_eq!(l.run(tx(watched)), Outcome::Aborted);
        assert!(matches!(l.run(tx(l.kv.applied_index())), Outcome::Array(_)));
    }

    #[test]
    fn locks_and_fencing_tokens() {
        let mut l = Log::new();
        let acquire = |owner: &str, ttl_ms| Command::LockAcquire {
            name: b("inventory"),
            owner: b(owner),
            ttl_ms,
        };
        let fenced = |token: u64, v: &str| Command::FencedSet {
            lock: b("inventory"),
            token,
            key: b("stock"),
            value: b(v),
        };
        // The worked example of the module doc.
        let Outcome::Int(a) = l.run(acquire("A", 10_000)) else {
            panic!()
        };
        assert_eq!(a as u64, l.index, "the token is the entry's index");
        assert_eq!(l.run(acquire("B", 10_000)), Outcome::Nil, "held by A");
        // A retried acquire by the holder: same token.
        assert_eq!(l.run(acquire("A", 10_000)), Outcome::Int(a));
        assert_eq!(l.run(fenced(a as u64, "40")), Outcome::Ok);
        l.now_ms += 30_000; // A pauses; the lease runs out.
        let Outcome::Int(b_token) = l.run(acquire("B", 10_000)) else {
            panic!()
        };
        assert!(b_token > a, "tokens strictly increase");
        assert_eq!(l.run(fenced(b_token as u64, "41")), Outcome::Ok);
        let Outcome::Error(e) = l.run(fenced(a as u64, "42")) else {
            panic!("the stale write was applied")
        };
        assert!(e.starts_with("FENCED token"), "{e}");
        assert_eq!(l.get("stock"), bulk("41"));
        // Release and extend need the owner and the token.
        let release = |owner: &str, token: i64| Command::LockRelease {
            name: b("inventory"),
            owner: b(owner),
            token: token as u64,
        };
        let extend = |owner: &str, token: i64| Command::LockExtend {
            name: b("inventory"),
            owner: b(owner),
            token: token as u64,
            ttl_ms: 60_000,
        };
        assert_eq!(l.run(release("A", a)), Outcome::Int(0));
        assert_eq!(l.run(extend("A", b_token)), Outcome::Int(0));
        assert_eq!(l.run(extend("B", b_token)), Outcome::Int(1));
        assert_eq!(
            l.q(Command::LockInfo {
                name: b("inventory")
            }),
            Outcome::Array(vec![bulk("B"), Outcome::Int(b_token), Outcome::Int(60_000)])
        );
        assert_eq!(l.run(release("B", b_token)), Outcome::Int(1));
        assert_eq!(
            l.q(Command::LockInfo {
                name: b("inventory")
            }),
            Outcome::Nil
        );
        let Outcome::Error(e) = l.run(fenced(b_token as u64, "43")) else {
            panic!("a write with a released token was applied")
        };
        assert!(e.contains("not held"), "{e}");
        // An expired lock is swept.
        l.run(acquire("C", 5));
        l.now_ms += 5;
        assert!(l.kv.sweep_due(l.now_ms));
        l.run(Command::Sweep);
        assert_eq!(l.kv.locks_len(), 0);
    }

    #[test]
    fn scan_visits_every_key_present_throughout_despite_writes() {
        let mut l = Log::new();
        for i in 0..500 {
            l.run(set(&format!("stay{i}"), "v"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut calls = 0;
        loop {
            let Outcome::Array(r) = l.q(Command::Scan {
                cursor,
                pattern: Some(b("stay*")),
                count: 7,
            }) else {
                panic!()
            };
            let (Outcome::Bulk(c), Outcome::Array(keys)) = (&r[0], &r[1]) else {
                panic!()
            };
            for k in keys {
                let Outcome::Bulk(k) = k else { panic!() };
                seen.insert(k.clone());
            }
            // Writes between calls: new keys, removed keys.
            l.run(set(&format!("new{calls}"), "v"));
            l.run(Command::Del {
                keys: vec![b(&format!("new{}", calls / 2))],
            });
            calls += 1;
            cursor = std::str::from_utf8(c).unwrap().parse().unwrap();
            if cursor == 0 {
                break;
            }
            assert!(calls < 1000, "the scan ends");
        }
        assert_eq!(seen.len(), 500);
        assert!(calls >= 500 / 7);
        // Equal hashes are never split: a page may be longer than COUNT.
        let mut kv = Kv::new();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            let key = Key {
                hash: 42,
                bytes: b(k),
            };
            kv.keys.insert(
                key,
                Record {
                    value: b("v"),
                    expires_at: None,
                    modified: i as u64,
                },
            );
        }
        let Outcome::Array(r) = kv.read(
            &Command::Scan {
                cursor: 0,
                pattern: None,
                count: 1,
            },
            0,
        ) else {
            panic!()
        };
        assert_eq!(r[0], bulk("0"));
        assert_eq!(r[1], Outcome::Array(vec![bulk("a"), bulk("b"), bulk("c")]));
    }

    #[test]
    fn replicas_applying_the_same_log_agree() {
        let log: Vec<Bytes> = (0..400u64)
            .map(|i| {
                let k = b(&format!("k{}", i % 13));
                let cmd = match i % 7 {
                    0 => Command::Del {
                        keys: vec![k, b(&format!("k{}", i % 5))],
                    },
                    1 => Command::IncrBy { key: k, by: 3 },
                    2 => Command::Expire {
                        key: k,
                        ttl: Ttl::In(1 + i % 50),
                        cond: ExpireCond::Always,
                    },
                    3 => Command::Sweep,
                    4 => Command::LockAcquire {
                        name: k,
                        owner: b(&format!("o{}", i % 3)),
                        ttl_ms: 30,
                    },
                    _ => set(&format!("k{}", i % 13), &i.to_string()),
                };
                // Stamps that go back and forth, as leaders' clocks may.
                Write::new(1000 + i * 10 - (i % 4) * 25, cmd).encode()
            })
            .collect();
        let run = || {
            let mut kv = Kv::new();
            let outcomes: Vec<Outcome> = log
                .iter()
                .enumerate()
                .map(|(i, p)| kv.apply(i as u64 + 1, &Write::decode(p).unwrap()))
                .collect();
            kv.check_invariants();
            (outcomes, kv)
        };
        let (o1, kv1) = run();
        let (o2, kv2) = run();
        assert_eq!(o1, o2);
        assert!(kv1 == kv2);
    }
}
