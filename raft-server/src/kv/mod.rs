//! The replicated key-value state machine: strings with expiry, WATCH
//! bookkeeping, locks with fencing tokens, and snapshots of all of it.
//!
//! Writes travel through the Raft log as [`Write`]s encoded to bytes; every
//! member applies the committed ones in log order with [`Kv::apply`], so
//! every member's [`Kv`] goes through the same states. Applying depends on
//! nothing but the store, the entry's index and the entry's bytes (no local
//! clock, no randomness, no hash-seeded iteration), which is what keeps the
//! replicas identical.
//!
//! # Time and expiry
//!
//! The leader stamps its wall clock (milliseconds since the Unix epoch) into
//! every write it proposes ([`Write::stamp_ms`]). The store keeps a *store
//! clock*, the maximum of the stamps it has applied, and applying an entry
//! first moves the clock to `max(clock, stamp)`. Everything time-dependent
//! is decided by that clock, never by the member's own: `EX 10` becomes the
//! deadline `clock + 10000` identically on every member, and a key is
//! *expired* once its deadline is at or below the clock.
//!
//! The maximum matters when a leader's clock is behind its predecessor's:
//! its stamps are then below the clock, the clock does not move back, a key
//! already expired stays expired, and a relative TTL it sets counts from the
//! clock (the later of the two times), not from its own stamp. A leader
//! whose clock runs ahead makes keys expire early by its skew; one behind
//! makes them expire late (the clock only moves with entries). Keep the
//! members' clocks in sync (NTP), as Redis replicas rely on their master's.
//!
//! Expired keys are removed by replicated entries: the leader proposes a
//! [`Command::Sweep`] when the earliest deadline in the store has passed by
//! its clock (see [`Kv::sweep_due`]); the sweep carries the leader's stamp,
//! moves the clock and removes at most [`SWEEP_MAX`] expired keys and locks
//! in deadline order (the leader proposes another while some remain). Until
//! a sweep removes it, an expired key is absent to every command (a write
//! that touches it removes it first).
//!
//! Reads answer from the store's state at the clock (ReadIndex on the
//! leader, see the server). A read whose key has a deadline between the
//! store clock and the serving leader's wall clock ([`Kv::read_due`]) must
//! not see the key, but the clock has not caught up: the server then
//! proposes a sweep stamped with its time and answers the read once that
//! sweep has been applied. So what a read sees is always a state of the
//! log, at a time recorded in the log: two reads never disagree about a key
//! whose deadline passed between them, even across a leader change to a
//! member whose clock is behind. `TTL` shows the time left by the later of
//! the store clock and the leader's clock.
//!
//! # WATCH
//!
//! Every key records the log index of the last entry that changed it
//! (`modified`). A deleted key leaves a tombstone with the index that
//! deleted it. A client's `WATCH k` remembers the store's
//! [`applied index`](Kv::applied_index) `A` on its leader; `EXEC` carries
//! `(k, A)` in its entry, and the transaction is aborted (nil reply) if, at
//! apply time, `k` changed after `A`: its `modified` or tombstone index is
//! above `A`, or it is expired but not yet swept. Everything the client read
//! after its `WATCH` was read at an index at or after `A`, so any change it
//! did not see is above `A`. Tombstones are bounded ([`MAX_TOMBSTONES`]):
//! past the bound they are all dropped and `deleted_floor` rises to the
//! current index, so an absent key without a tombstone counts as deleted at
//! `deleted_floor` (conservative: a watcher older than that aborts, as
//! after `FLUSHALL`). Aborting too often is allowed (the client retries);
//! missing a change is not.
//!
//! # Locks and fencing tokens
//!
//! `LOCK.ACQUIRE name owner ttl-ms` grants a lock to `owner` for `ttl-ms` of
//! store time; its token is the log index of the acquiring entry, so tokens
//! strictly increase across all acquisitions of a lock. A write guarded by
//! a token (`FENCED.SET lock token key value`) is applied only if that token
//! is the lock's *current* one, held and not expired at the entry's time;
//! once the lock has expired, been released or been acquired again, the
//! token is stale and the write is refused. The lock record is dropped on
//! release and swept on expiry (later tokens are larger anyway).
//!
//! Worked example. Client A acquires `inventory` with a 10 s TTL and gets
//! token 1041. A pauses (a GC pause, a stopped VM) for 30 s. At second 10
//! the lock expires; client B acquires it and gets token 1187, then writes
//! `FENCED.SET inventory 1187 stock 41`, which is applied. A wakes up
//! believing it still holds the lock and sends `FENCED.SET inventory 1041
//! stock 42`: the entry is applied after B's acquisition, the lock's token
//! is 1187, and the write is refused with `-FENCED ...`; `stock` stays 41.
//! With Redlock, A's write would have landed: nothing ties the write to the
//! lock. Here the check happens in the same log as the lock, so no pause,
//! clock jump or network delay can reorder them.
//!
//! # Encoding
//!
//! A log entry's payload, little-endian, versioned by its first byte so that
//! a future format can be told apart from a corrupt one:
//!
//! ```text
//! legacy (read only):  1 | key_len u32 | key | value        SET, no stamp
//!                      2 | count u32 | count x (len u32 | key)   DEL
//! current:            16 | stamp_ms u64 | command
//! command:             op u8 | fields (bytes: len u32 | data; u64; i64; u8)
//! ```
//!
//! Legacy entries (written before stamps existed) apply with the store clock
//! unchanged. Lengths and counts are checked against what remains before
//! anything is allocated.
//!
//! # Snapshots
//!
//! The maps are persistent (`imbl`): [`Kv::snapshot`] is a clone that shares
//! every node with the live store (O(1): a few reference counts), and the
//! live store copies a node only when it changes one that a snapshot still
//! holds. A [`KvSnapshot`] is `Send + 'static`, so a helper thread can
//! stream it with [`KvSnapshot::write_to`] while the event loop goes on
//! applying; [`Kv::read_from`] reads it back with bounded allocations and a
//! checksum over the whole stream.

use std::fmt;
use std::io::{self, Read};

use bytes::{BufMut, Bytes, BytesMut};
use imbl::{OrdMap, OrdSet};

/// Longest value a command may produce (`APPEND`); `SET` is bounded by the
/// request size. Redis' `proto-max-bulk-len` is 512 MB; here a value must
/// fit a client's output limits and a log entry.
pub const MAX_VALUE_LEN: usize = 4 << 20;
#[allow(dead_code)] // until log compaction (issue 9) uses it
/// Longest key or lock name or owner (a request argument is at most 512 KiB).
pub const MAX_KEY_LEN: usize = 512 * 1024;
/// Expired keys (and, separately, locks) one sweep entry removes at most.
pub const SWEEP_MAX: usize = 1000;
/// Tombstones kept for WATCH at most; past this they are all dropped and
/// `deleted_floor` rises (see the module doc).
pub const MAX_TOMBSTONES: usize = 100_000;
/// Longest TTL or latest absolute deadline, in ms (about 146 million years):
/// keeps `clock + ttl` far from overflow. Larger values are refused when
/// the command is parsed, with Redis' "invalid expire time".
pub const MAX_TTL_MS: u64 = 1 << 62;

const LEGACY_SET: u8 = 1;
const LEGACY_DEL: u8 = 2;
const STAMPED: u8 = 16;

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

    #[allow(dead_code)] // until log compaction (issue 9) uses it
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

/// A write as stored in a log entry: the command and the proposing
/// leader's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The leader's wall clock when it proposed the entry, ms since the
    /// Unix epoch (0 for legacy entries: the store clock does not move).
    pub stamp_ms: u64,
    /// The command.
    pub cmd: Command,
}

/// A log payload or snapshot stream that is not valid. Every member
/// decodes the same log bytes, so every member fails the same way on a bad
/// entry: the driver logs it and applies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    msg: String,
    io: Option<io::ErrorKind>,
}

impl DecodeError {
    fn new(msg: impl Into<String>) -> DecodeError {
        DecodeError {
            msg: msg.into(),
            io: None,
        }
    }

    #[allow(dead_code)] // until log compaction (issue 9) uses it
    /// Reading failed (rather than the data being invalid): the kind of
    /// the I/O error. A truncated snapshot is invalid data, not I/O.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.io
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DecodeError {}

// ----- Encoding -------------------------------------------------------------

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_GETDEL: u8 = 3;
const OP_GETEX: u8 = 4;
const OP_MSET: u8 = 5;
const OP_MSETNX: u8 = 6;
const OP_INCRBY: u8 = 7;
const OP_APPEND: u8 = 8;
const OP_EXPIRE: u8 = 9;
const OP_PERSIST: u8 = 10;
const OP_FLUSHALL: u8 = 11;
const OP_EXEC: u8 = 12;
const OP_SWEEP: u8 = 13;
const OP_LOCK_ACQUIRE: u8 = 14;
const OP_LOCK_RELEASE: u8 = 15;
const OP_LOCK_EXTEND: u8 = 16;
const OP_FENCED_SET: u8 = 17;
const OP_GET: u8 = 32;
const OP_MGET: u8 = 33;
const OP_EXISTS: u8 = 34;
const OP_TTL: u8 = 35;
const OP_STRLEN: u8 = 36;
const OP_TYPE: u8 = 37;
const OP_DBSIZE: u8 = 38;
const OP_KEYS: u8 = 39;
const OP_SCAN: u8 = 40;
const OP_LOCK_INFO: u8 = 41;

impl Write {
    /// A write of `cmd` stamped `stamp_ms`.
    pub fn new(stamp_ms: u64, cmd: Command) -> Write {
        Write { stamp_ms, cmd }
    }

    /// Encodes the write for a log entry.
    ///
    /// Panics on a length over `u32::MAX` (the client protocol's limits make
    /// it impossible).
    #[cfg(test)]
    pub fn encode(&self) -> Bytes {
        self.encode_in(&mut BytesMut::new())
    }

    /// Encodes the write at the end of `arena` and splits it off: the
    /// writes a leader encodes one after another share the arena's
    /// buffers ([`ENCODE_ARENA`] at a time), so a log entry costs no
    /// allocation of its own, neither for its bytes nor for the shared
    /// header the first clone of a `Bytes` made from a `Vec` allocates.
    /// A buffer is freed once every entry in it is gone (entries leave
    /// the log in order, so that is soon after the last of them).
    pub fn encode_in(&self, arena: &mut BytesMut) -> Bytes {
        let hint = 16 + encoded_hint(&self.cmd);
        if arena.capacity() < hint {
            // `reserve` on a buffer that split-off entries still share
            // allocates a new one; ask for a whole chunk, not one write.
            *arena = BytesMut::with_capacity(hint.max(ENCODE_ARENA));
        }
        arena.put_u8(STAMPED);
        arena.put_u64_le(self.stamp_ms);
        put_cmd(arena, &self.cmd);
        arena.split().freeze()
    }

    /// Decodes a log entry's payload. Keys and values share `payload`'s
    /// buffer. Never panics: a payload is data from disk or the network.
    pub fn decode(payload: &Bytes) -> Result<Write, DecodeError> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let w = match r.u8()? {
            LEGACY_SET => {
                let key = r.bytes("key")?;
                let value = r.rest();
                Write {
                    stamp_ms: 0,
                    cmd: Command::Set {
                        key,
                        value,
                        cond: SetCond::Always,
                        get: false,
                        ttl: Ttl::Clear,
                    },
                }
            }
            LEGACY_DEL => {
                let keys = r.vec(4, "key", |r| r.bytes("key"))?;
                if keys.is_empty() {
                    return Err(DecodeError::new("invalid command: DEL without keys"));
                }
                Write {
                    stamp_ms: 0,
                    cmd: Command::Del { keys },
                }
            }
            STAMPED => {
                let stamp_ms = r.u64()?;
                let cmd = get_cmd(&mut r, true)?;
                Write { stamp_ms, cmd }
            }
            v => {
                return Err(DecodeError::new(format!(
                    "invalid command: unknown format {v}"
                )))
            }
        };
        if r.remaining() != 0 {
            return Err(DecodeError::new(format!(
                "invalid command: {} bytes after its end",
                r.remaining()
            )));
        }
        Ok(w)
    }
}

/// The size of the buffers [`Write::encode_in`] encodes into.
pub const ENCODE_ARENA: usize = 64 << 10;

fn encoded_hint(cmd: &Command) -> usize {
    match cmd {
        Command::Set { key, value, .. } => 32 + key.len() + value.len(),
        _ => 64,
    }
}

fn put_len(b: &mut BytesMut, len: usize) {
    b.put_u32_le(u32::try_from(len).expect("length fits in u32"));
}

fn put_bytes(b: &mut BytesMut, data: &[u8]) {
    put_len(b, data.len());
    b.put_slice(data);
}

fn put_keys(b: &mut BytesMut, keys: &[Bytes]) {
    put_len(b, keys.len());
    for k in keys {
        put_bytes(b, k);
    }
}

fn put_pairs(b: &mut BytesMut, pairs: &[(Bytes, Bytes)]) {
    put_len(b, pairs.len());
    for (k, v) in pairs {
        put_bytes(b, k);
        put_bytes(b, v);
    }
}

fn put_ttl(b: &mut BytesMut, ttl: Ttl) {
    match ttl {
        Ttl::Keep => b.put_u8(0),
        Ttl::Clear => b.put_u8(1),
        Ttl::In(ms) => {
            b.put_u8(2);
            b.put_u64_le(ms);
        }
        Ttl::At(ms) => {
            b.put_u8(3);
            b.put_u64_le(ms);
        }
    }
}

fn put_cmd(b: &mut BytesMut, cmd: &Command) {
    match cmd {
        Command::Set {
            key,
            value,
            cond,
            get,
            ttl,
        } => {
            b.put_u8(OP_SET);
            put_bytes(b, key);
            put_bytes(b, value);
            b.put_u8(match cond {
                SetCond::Always => 0,
                SetCond::Nx => 1,
                SetCond::Xx => 2,
            });
            b.put_u8(u8::from(*get));
            put_ttl(b, *ttl);
        }
        Command::Del { keys } => {
            assert!(!keys.is_empty(), "DEL without keys");
            b.put_u8(OP_DEL);
            put_keys(b, keys);
        }
        Command::GetDel { key } => {
            b.put_u8(OP_GETDEL);
            put_bytes(b, key);
        }
        Command::GetEx { key, ttl } => {
            b.put_u8(OP_GETEX);
            put_bytes(b, key);
            put_ttl(b, *ttl);
        }
        Command::MSet { pairs } => {
            b.put_u8(OP_MSET);
            put_pairs(b, pairs);
        }
        Command::MSetNx { pairs } => {
            b.put_u8(OP_MSETNX);
            put_pairs(b, pairs);
        }
        Command::IncrBy { key, by } => {
            b.put_u8(OP_INCRBY);
            put_bytes(b, key);
            b.put_i64_le(*by);
        }
        Command::Append { key, value } => {
            b.put_u8(OP_APPEND);
            put_bytes(b, key);
            put_bytes(b, value);
        }
        Command::Expire { key, ttl, cond } => {
            b.put_u8(OP_EXPIRE);
            put_bytes(b, key);
            put_ttl(b, *ttl);
            b.put_u8(match cond {
                ExpireCond::Always => 0,
                ExpireCond::Nx => 1,
                ExpireCond::Xx => 2,
                ExpireCond::Gt => 3,
                ExpireCond::Lt => 4,
            });
        }
        Command::Persist { key } => {
            b.put_u8(OP_PERSIST);
            put_bytes(b, key);
        }
        Command::FlushAll => b.put_u8(OP_FLUSHALL),
        Command::Exec { watches, cmds } => {
            b.put_u8(OP_EXEC);
            put_len(b, watches.len());
            for (k, i) in watches {
                put_bytes(b, k);
                b.put_u64_le(*i);
            }
            put_len(b, cmds.len());
            for c in cmds {
                assert!(
                    !matches!(c, Command::Exec { .. } | Command::Sweep),
                    "nested {c:?} in a transaction"
                );
                put_cmd(b, c);
            }
        }
        Command::Sweep => b.put_u8(OP_SWEEP),
        Command::LockAcquire {
            name,
            owner,
            ttl_ms,
        } => {
            b.put_u8(OP_LOCK_ACQUIRE);
            put_bytes(b, name);
            put_bytes(b, owner);
            b.put_u64_le(*ttl_ms);
        }
        Command::LockRelease { name, owner, token } => {
            b.put_u8(OP_LOCK_RELEASE);
            put_bytes(b, name);
            put_bytes(b, owner);
            b.put_u64_le(*token);
        }
        Command::LockExtend {
            name,
            owner,
            token,
            ttl_ms,
        } => {
            b.put_u8(OP_LOCK_EXTEND);
            put_bytes(b, name);
            put_bytes(b, owner);
            b.put_u64_le(*token);
            b.put_u64_le(*ttl_ms);
        }
        Command::FencedSet {
            lock,
            token,
            key,
            value,
        } => {
            b.put_u8(OP_FENCED_SET);
            put_bytes(b, lock);
            b.put_u64_le(*token);
            put_bytes(b, key);
            put_bytes(b, value);
        }
        Command::Get { key } => {
            b.put_u8(OP_GET);
            put_bytes(b, key);
        }
        Command::MGet { keys } => {
            b.put_u8(OP_MGET);
            put_keys(b, keys);
        }
        Command::Exists { keys } => {
            b.put_u8(OP_EXISTS);
            put_keys(b, keys);
        }
        Command::TimeToLive { key, ms } => {
            b.put_u8(OP_TTL);
            put_bytes(b, key);
            b.put_u8(u8::from(*ms));
        }
        Command::Strlen { key } => {
            b.put_u8(OP_STRLEN);
            put_bytes(b, key);
        }
        Command::Type { key } => {
            b.put_u8(OP_TYPE);
            put_bytes(b, key);
        }
        Command::DbSize => b.put_u8(OP_DBSIZE),
        Command::Keys { pattern } => {
            b.put_u8(OP_KEYS);
            put_bytes(b, pattern);
        }
        Command::Scan {
            cursor,
            pattern,
            count,
        } => {
            b.put_u8(OP_SCAN);
            b.put_u64_le(*cursor);
            match pattern {
                None => b.put_u8(0),
                Some(p) => {
                    b.put_u8(1);
                    put_bytes(b, p);
                }
            }
            b.put_u64_le(*count);
        }
        Command::LockInfo { name } => {
            b.put_u8(OP_LOCK_INFO);
            put_bytes(b, name);
        }
    }
}

fn get_ttl(r: &mut Reader<'_>, keep_ok: bool) -> Result<Ttl, DecodeError> {
    let ttl = match r.u8()? {
        0 if keep_ok => Ttl::Keep,
        1 if keep_ok => Ttl::Clear,
        2 => Ttl::In(r.u64()?),
        3 => Ttl::At(r.u64()?),
        t => return Err(DecodeError::new(format!("invalid command: TTL tag {t}"))),
    };
    if let Ttl::In(ms) | Ttl::At(ms) = ttl {
        if ms == 0 || ms > MAX_TTL_MS {
            return Err(DecodeError::new(format!("invalid command: TTL {ms} ms")));
        }
    }
    Ok(ttl)
}

fn get_cmd(r: &mut Reader<'_>, top: bool) -> Result<Command, DecodeError> {
    let op = r.u8()?;
    let cmd = match op {
        OP_SET => Command::Set {
            key: r.bytes("key")?,
            value: r.bytes("value")?,
            cond: match r.u8()? {
                0 => SetCond::Always,
                1 => SetCond::Nx,
                2 => SetCond::Xx,
                c => return Err(DecodeError::new(format!("invalid command: SET cond {c}"))),
            },
            get: r.flag()?,
            ttl: get_ttl(r, true)?,
        },
        OP_DEL => Command::Del { keys: r.keys()? },
        OP_GETDEL => Command::GetDel {
            key: r.bytes("key")?,
        },
        OP_GETEX => Command::GetEx {
            key: r.bytes("key")?,
            ttl: get_ttl(r, true)?,
        },
        OP_MSET => Command::MSet { pairs: r.pairs()? },
        OP_MSETNX => Command::MSetNx { pairs: r.pairs()? },
        OP_INCRBY => Command::IncrBy {
            key: r.bytes("key")?,
            by: r.u64()? as i64,
        },
        OP_APPEND => Command::Append {
            key: r.bytes("key")?,
            value: r.bytes("value")?,
        },
        OP_EXPIRE => Command::Expire {
            key: r.bytes("key")?,
            ttl: get_ttl(r, false)?,
            cond: match r.u8()? {
                0 => ExpireCond::Always,
                1 => ExpireCond::Nx,
                2 => ExpireCond::Xx,
                3 => ExpireCond::Gt,
                4 => ExpireCond::Lt,
                c => {
                    return Err(DecodeError::new(format!(
                        "invalid command: EXPIRE cond {c}"
                    )))
                }
            },
        },
        OP_PERSIST => Command::Persist {
            key: r.bytes("key")?,
        },
        OP_FLUSHALL => Command::FlushAll,
        OP_EXEC if top => {
            let watches = r.vec(12, "watch", |r| Ok((r.bytes("key")?, r.u64()?)))?;
            let cmds = r.vec(1, "command", |r| get_cmd(r, false))?;
            Command::Exec { watches, cmds }
        }
        OP_SWEEP if top => Command::Sweep,
        OP_LOCK_ACQUIRE => Command::LockAcquire {
            name: r.bytes("lock name")?,
            owner: r.bytes("owner")?,
            ttl_ms: r.ttl_ms()?,
        },
        OP_LOCK_RELEASE => Command::LockRelease {
            name: r.bytes("lock name")?,
            owner: r.bytes("owner")?,
            token: r.u64()?,
        },
        OP_LOCK_EXTEND => Command::LockExtend {
            name: r.bytes("lock name")?,
            owner: r.bytes("owner")?,
            token: r.u64()?,
            ttl_ms: r.ttl_ms()?,
        },
        OP_FENCED_SET => Command::FencedSet {
            lock: r.bytes("lock name")?,
            token: r.u64()?,
            key: r.bytes("key")?,
            value: r.bytes("value")?,
        },
        OP_GET => Command::Get {
            key: r.bytes("key")?,
        },
        OP_MGET => Command::MGet { keys: r.keys()? },
        OP_EXISTS => Command::Exists { keys: r.keys()? },
        OP_TTL => Command::TimeToLive {
            key: r.bytes("key")?,
            ms: r.flag()?,
        },
        OP_STRLEN => Command::Strlen {
            key: r.bytes("key")?,
        },
        OP_TYPE => Command::Type {
            key: r.bytes("key")?,
        },
        OP_DBSIZE => Command::DbSize,
        OP_KEYS => Command::Keys {
            pattern: r.bytes("pattern")?,
        },
        OP_SCAN => Command::Scan {
            cursor: r.u64()?,
            pattern: if r.flag()? {
                Some(r.bytes("pattern")?)
            } else {
                None
            },
            count: match r.u64()? {
                0 => return Err(DecodeError::new("invalid command: SCAN COUNT 0")),
                n => n,
            },
        },
        OP_LOCK_INFO => Command::LockInfo {
            name: r.bytes("lock name")?,
        },
        op => {
            return Err(DecodeError::new(format!(
                "invalid command: unknown opcode {op}{}",
                if top { "" } else { " in a transaction" }
            )))
        }
    };
    Ok(cmd)
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::new(format!(
                "invalid command: {what} of {n} bytes, only {} left",
                self.remaining()
            )));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "opcode")?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(DecodeError::new(format!("invalid command: flag {f}"))),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "length")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8, "number")?;
        Ok(u64::from_le_bytes(b[..].try_into().expect("8 bytes")))
    }

    fn ttl_ms(&mut self) -> Result<u64, DecodeError> {
        match self.u64()? {
            ms @ 1..=MAX_TTL_MS => Ok(ms),
            ms => Err(DecodeError::new(format!("invalid command: TTL {ms} ms"))),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.take(len, what)
    }

    /// A count, then that many items of at least `min_size` bytes each: a
    /// count beyond what remains is corrupt, and checking first bounds the
    /// allocation.
    fn vec<T>(
        &mut self,
        min_size: usize,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.u32()? as usize;
        if count > self.remaining() / min_size {
            return Err(DecodeError::new(format!(
                "invalid command: {count} x {what} in {} bytes",
                self.remaining()
            )));
        }
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            v.push(item(self)?);
        }
        Ok(v)
    }

    fn keys(&mut self) -> Result<Vec<Bytes>, DecodeError> {
        let keys = self.vec(4, "key", |r| r.bytes("key"))?;
        if keys.is_empty() {
            return Err(DecodeError::new("invalid command: no keys"));
        }
        Ok(keys)
    }

    fn pairs(&mut self) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
        let pairs = self.vec(8, "pair", |r| Ok((r.bytes("key")?, r.bytes("value")?)))?;
        if pairs.is_empty() {
            return Err(DecodeError::new("invalid command: no pairs"));
        }
        Ok(pairs)
    }

    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }
}

// ----- Outcomes ---------------------------------------------------------------

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

// ----- The store --------------------------------------------------------------

/// A key as the maps order it: by a fixed 64-bit hash, then by its bytes.
/// The hash is the `SCAN` cursor: resuming at a hash finds every key that
/// was there throughout, whatever was inserted or removed meanwhile. It is
/// FNV-1a, identical on every member and every version (a cursor may be
/// continued on another member after a failover), and never 0 (the cursor
/// that starts and ends a scan). A colliding attacker gains nothing: ties
/// are ordered by the bytes, the tree stays balanced.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    hash: u64,
    bytes: Bytes,
}

impl Key {
    /// For a lookup: shares `b`.
    fn probe(b: &Bytes) -> Key {
        Key {
            hash: key_hash(b),
            bytes: b.clone(),
        }
    }

    /// For storing: a copy, so that the store does not keep alive the
    /// buffer the key came in (a recovered entry's payload is a slice of a
    /// whole log file read at start-up).
    fn stored(b: &Bytes) -> Key {
        Key {
            hash: key_hash(b),
            bytes: Bytes::copy_from_slice(b),
        }
    }

    /// The first key a `SCAN` at `cursor` looks at.
    fn first_at(cursor: u64) -> Key {
        Key {
            hash: cursor,
            bytes: Bytes::new(),
        }
    }
}

/// FNV-1a, 64 bits, never 0.
fn key_hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// One key's state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    value: Bytes,
    /// Deadline, ms since the Unix epoch by the store clock.
    expires_at: Option<u64>,
    /// Log index of the entry that last changed the key (WATCH).
    modified: u64,
}

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lock {
    owner: Bytes,
    /// Log index of the acquiring entry.
    token: u64,
    /// By the store clock.
    expires_at: u64,
}

/// The key-value store. Cloning is cheap (the maps are persistent), which
/// is what [`Kv::snapshot`] relies on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Kv {
    keys: OrdMap<Key, Record>,
    /// `(deadline, key)` of every key with a deadline.
    deadlines: OrdSet<(u64, Key)>,
    /// Deleted keys and the index of the entry that deleted them.
    tombstones: OrdMap<Key, u64>,
    /// An absent key without a tombstone was deleted at this index at the
    /// latest (0: never).
    deleted_floor: u64,
    locks: OrdMap<Bytes, Lock>,
    /// `(deadline, name)` of every lock.
    lock_deadlines: OrdSet<(u64, Bytes)>,
    /// The store clock: the largest stamp applied, ms since the Unix epoch.
    clock_ms: u64,
    /// Index of the last entry applied.
    applied: u64,
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

    #[allow(dead_code)] // until log compaction (issue 9) uses it
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

    #[allow(dead_code)] // until log compaction (issue 9) uses it
    /// A snapshot of the whole state, sharing the maps (O(1)); later
    /// writes to the store do not change it.
    pub fn snapshot(&self) -> KvSnapshot {
        KvSnapshot { kv: self.clone() }
    }

    // ----- Internals ------------------------------------------------------

    fn expired(&self, r: &Record) -> bool {
        r.expires_at.is_some_and(|d| d <= self.clock_ms)
    }

    /// The key's record if it exists and has not expired.
    fn live(&self, key: &Key) -> Option<&Record> {
        self.keys.get(key).filter(|r| !self.expired(r))
    }

    /// A write is about to touch `key`: if it expired, it goes now.
    fn purge_expired(&mut self, index: u64, key: &Key) {
        if self.deadlines.is_empty() {
            return;
        }
        if self.keys.get(key).is_some_and(|r| self.expired(r)) {
            self.remove(index, key);
        }
    }

    /// Stores `value` under `key` with `expires_at`, changed at `index`.
    fn put(&mut self, index: u64, key: &Key, value: Bytes, expires_at: Option<u64>) {
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
    fn set_deadline(&mut self, index: u64, key: &Key, expires_at: Option<u64>) {
        if expires_at.is_some_and(|d| d <= self.clock_ms) {
            self.remove(index, key);
            return;
        }
        let value = self.keys.get(key).expect("key exists").value.clone();
        self.put(index, key, value, expires_at);
    }

    /// Removes `key` at `index`, leaving a tombstone; its record, if any.
    fn remove(&mut self, index: u64, key: &Key) -> Option<Record> {
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
    fn changed_since(&self, key: &Key, seen: u64) -> bool {
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
    fn deadline(&self, ttl: Ttl, current: Option<u64>) -> Option<u64> {
        match ttl {
            Ttl::Keep => current,
            Ttl::Clear => None,
            Ttl::In(ms) => Some(self.clock_ms.saturating_add(ms)),
            Ttl::At(ms) => Some(ms),
        }
    }

    fn live_lock(&self, name: &Bytes) -> Option<&Lock> {
        self.locks
            .get(name)
            .filter(|l| l.expires_at > self.clock_ms)
    }

    fn put_lock(&mut self, name: &Bytes, lock: Lock) {
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

    fn remove_lock(&mut self, name: &Bytes) {
        if let Some((n, l)) = self.locks.remove_with_key(name) {
            self.lock_deadlines.remove(&(l.expires_at, n));
        }
    }

    fn exec(&mut self, index: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::Set {
                key,
                value,
                cond,
                get,
                ttl,
            } => {
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
                let old_value = if *get {
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
                    let expires_at = self.deadline(*ttl, old.and_then(|r| r.expires_at));
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
            Command::GetDel { key } => {
                let k = Key::probe(key);
                self.purge_expired(index, &k);
                self.remove(index, &k)
                    .map_or(Outcome::Nil, |r| Outcome::Bulk(r.value))
            }
            Command::GetEx { key, ttl } => {
                let k = Key::probe(key);
                self.purge_expired(index, &k);
                let Some(r) = self.keys.get(&k) else {
                    return Outcome::Nil;
                };
                let value = r.value.clone();
                let current = r.expires_at;
                let new = self.deadline(*ttl, current);
                if new != current {
                    self.set_deadline(index, &k, new);
                }
                Outcome::Bulk(value)
            }
            Command::MSet { pairs } => {
                for (key, value) in pairs {
                    self.put(index, &Key::probe(key), Bytes::copy_from_slice(value), None);
                }
                Outcome::Ok
            }
            Command::MSetNx { pairs } => {
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
            Command::Del { keys } => {
                let mut n = 0;
                for key in keys {
                    let k = Key::probe(key);
                    self.purge_expired(index, &k);
                    n += i64::from(self.remove(index, &k).is_some());
                }
                Outcome::Int(n)
            }
            Command::IncrBy { key, by } => {
                let k = Key::probe(key);
                self.purge_expired(index, &k);
                let (current, expires_at) = match self.keys.get(&k) {
                    None => (0, None),
                    Some(r) => match parse_i64(&r.value) {
                        Some(v) => (v, r.expires_at),
                        None => return Outcome::Error(NOT_INTEGER.into()),
                    },
                };
                let Some(new) = current.checked_add(*by) else {
                    return Outcome::Error("ERR increment or decrement would overflow".into());
                };
                self.put(index, &k, Bytes::from(new.to_string()), expires_at);
                Outcome::Int(new)
            }
            Command::Append { key, value } => {
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
            Command::Expire { key, ttl, cond } => {
                let k = Key::probe(key);
                self.purge_expired(index, &k);
                let Some(r) = self.keys.get(&k) else {
                    return Outcome::Int(0);
                };
                let current = r.expires_at;
                let new = self
                    .deadline(*ttl, current)
                    .expect("EXPIRE sets a deadline");
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
            Command::Persist { key } => {
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
            Command::FlushAll => {
                self.keys.clear();
                self.deadlines.clear();
                self.tombstones.clear();
                self.deleted_floor = index;
                Outcome::Ok
            }
            Command::Exec { watches, cmds } => {
                if watches
                    .iter()
                    .any(|(k, seen)| self.changed_since(&Key::probe(k), *seen))
                {
                    return Outcome::Aborted;
                }
                Outcome::Array(cmds.iter().map(|c| self.exec(index, c)).collect())
            }
            Command::Sweep => {
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
            Command::LockAcquire {
                name,
                owner,
                ttl_ms,
            } => {
                let expires_at = self.clock_ms.saturating_add(*ttl_ms);
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
            Command::LockRelease { name, owner, token } => {
                match self.live_lock(name) {
                    Some(l) if l.owner == *owner && l.token == *token => {}
                    _ => return Outcome::Int(0),
                }
                self.remove_lock(name);
                Outcome::Int(1)
            }
            Command::LockExtend {
                name,
                owner,
                token,
                ttl_ms,
            } => {
                let lock = match self.live_lock(name) {
                    Some(l) if l.owner == *owner && l.token == *token => l.clone(),
                    _ => return Outcome::Int(0),
                };
                let expires_at = self.clock_ms.saturating_add(*ttl_ms);
                self.put_lock(name, Lock { expires_at, ..lock });
                Outcome::Int(1)
            }
            Command::FencedSet {
                lock,
                token,
                key,
                value,
            } => {
                match self.live_lock(lock) {
                    Some(l) if l.token == *token => {}
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
            read => self.read(read, self.clock_ms),
        }
    }

    /// A read at the store clock; `now_ms` (at least the clock) is the
    /// time `TTL` counts from.
    fn read(&self, cmd: &Command, now_ms: u64) -> Outcome {
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

/// Redis' glob (`stringmatchlen`), case-sensitive: `*`, `?`, `[abc]`,
/// `[^a-z]`, `\x`. Linear backtracking on the last `*` only, so a pattern
/// like `*a*a*a*b` costs O(pattern x string), not exponential time.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last star take one more byte.
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[at] == b'['`:
/// whether it matched and where the pattern continues. An unterminated
/// class runs to the end of the pattern, as in Redis.
fn class_match(pattern: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut p = at + 1;
    let not = pattern.get(p) == Some(&b'^');
    if not {
        p += 1;
    }
    let mut matched = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            matched |= pattern[p + 1] == c;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' && pattern[p + 2] != b']' {
            let (lo, hi) = (
                pattern[p].min(pattern[p + 2]),
                pattern[p].max(pattern[p + 2]),
            );
            matched |= (lo..=hi).contains(&c);
            p += 3;
        } else {
            matched |= pattern[p] == c;
            p += 1;
        }
    }
    let next = (p + 1).min(pattern.len());
    Some((matched != not, next))
}

// ----- Snapshots ----------------------------------------------------------------

#[allow(dead_code)] // until log compaction (issue 9) uses it
const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTKV\0\x01";
#[allow(dead_code)] // until log compaction (issue 9) uses it
const SNAPSHOT_VERSION: u32 = 1;
#[allow(dead_code)] // until log compaction (issue 9) uses it
/// Bytes buffered before each write to the snapshot's destination.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

#[allow(dead_code)] // until log compaction (issue 9) uses it
/// The whole state of a [`Kv`] at one index: values, deadlines, store clock,
/// WATCH indexes and tombstones, locks. Taken in O(1) by [`Kv::snapshot`];
/// `Send + 'static`, for a helper thread to write out.
#[derive(Clone, Debug)]
pub struct KvSnapshot {
    kv: Kv,
}

#[allow(dead_code)] // until log compaction (issue 9) uses it
impl KvSnapshot {
    /// Index of the last entry the snapshot includes.
    pub fn applied_index(&self) -> u64 {
        self.kv.applied
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kv.keys.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.kv.keys.is_empty()
    }

    /// Writes the snapshot, streaming (64 KiB at a time, nothing copied
    /// whole). Format (little-endian), read back by [`Kv::read_from`]:
    ///
    /// ```text
    /// magic "RAFTKV\0\x01" | version u32 (1)
    /// applied u64 | clock_ms u64 | deleted_floor u64
    /// keys u64       | keys x (key | value | flags u8 [| expires_at u64] | modified u64)
    /// tombstones u64 | tombstones x (key | index u64)
    /// locks u64      | locks x (name | owner | token u64 | expires_at u64)
    /// crc32c u32 of everything before
    /// ```
    ///
    /// where `key`, `value`, `name` and `owner` are `len u32 | bytes`, keys
    /// in the store's order (by hash, then bytes), `flags` bit 0 says a
    /// deadline follows.
    pub fn write_to(&self, w: &mut dyn io::Write) -> io::Result<()> {
        let kv = &self.kv;
        let mut out = SnapWriter {
            w,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK + 1024),
            crc: 0,
        };
        out.put(SNAPSHOT_MAGIC)?;
        out.u32(SNAPSHOT_VERSION)?;
        out.u64(kv.applied)?;
        out.u64(kv.clock_ms)?;
        out.u64(kv.deleted_floor)?;
        out.u64(kv.keys.len() as u64)?;
        for (k, r) in &kv.keys {
            out.bytes(&k.bytes)?;
            out.bytes(&r.value)?;
            match r.expires_at {
                None => out.put(&[0])?,
                Some(d) => {
                    out.put(&[1])?;
                    out.u64(d)?;
                }
            }
            out.u64(r.modified)?;
        }
        out.u64(kv.tombstones.len() as u64)?;
        for (k, i) in &kv.tombstones {
            out.bytes(&k.bytes)?;
            out.u64(*i)?;
        }
        out.u64(kv.locks.len() as u64)?;
        for (n, l) in &kv.locks {
            out.bytes(n)?;
            out.bytes(&l.owner)?;
            out.u64(l.token)?;
            out.u64(l.expires_at)?;
        }
        out.finish()
    }
}

#[allow(dead_code)] // until log compaction (issue 9) uses it
struct SnapWriter<'a> {
    w: &'a mut dyn io::Write,
    buf: Vec<u8>,
    crc: u32,
}

#[allow(dead_code)] // until log compaction (issue 9) uses it
impl SnapWriter<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        if self.buf.len() + b.len() > SNAPSHOT_CHUNK {
            self.flush()?;
        }
        if b.len() > SNAPSHOT_CHUNK {
            self.crc = crc32c::crc32c_append(self.crc, b);
            return self.w.write_all(b);
        }
        self.buf.extend_from_slice(b);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.u32(u32::try_from(b.len()).expect("key or value fits in u32"))?;
        self.put(b)
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        let crc = self.crc;
        self.w.write_all(&crc.to_le_bytes())?;
        self.w.flush()
    }
}

#[allow(dead_code)] // until log compaction (issue 9) uses it
struct SnapReader<'a> {
    r: &'a mut dyn Read,
    crc: u32,
}

#[allow(dead_code)] // until log compaction (issue 9) uses it
impl SnapReader<'_> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DecodeError> {
        self.r.read_exact(buf).map_err(|e| read_error(e, what))?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// `len u32 | bytes`, at most `max` bytes. Memory grows with the bytes
    /// actually read, so a corrupt length within the bound costs at most
    /// what the stream holds.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::new(format!(
                "corrupt snapshot: {what} of {len} bytes, at most {max}"
            )));
        }
        let mut v = Vec::with_capacity(len.min(SNAPSHOT_CHUNK));
        (&mut *self.r)
            .take(len as u64)
            .read_to_end(&mut v)
            .map_err(|e| read_error(e, what))?;
        if v.len() != len {
            return Err(DecodeError::new(format!(
                "corrupt snapshot: truncated in a {what}"
            )));
        }
        self.crc = crc32c::crc32c_append(self.crc, &v);
        Ok(Bytes::from(v))
    }
}

#[allow(dead_code)] // until log compaction (issue 9) uses it
fn read_error(e: io::Error, what: &str) -> DecodeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DecodeError::new(format!("corrupt snapshot: truncated in a {what}"))
    } else {
        DecodeError {
            msg: format!("cannot read snapshot: {e}"),
            io: Some(e.kind()),
        }
    }
}

impl Kv {
    #[allow(dead_code)] // until log compaction (issue 9) uses it
    /// Reads a snapshot written by [`KvSnapshot::write_to`], exactly its
    /// bytes (wrap a file in a `BufReader`: this reads in small pieces).
    /// Every length is checked against its bound before anything is
    /// allocated, the keys' order and every index against the snapshot's
    /// applied index, and the checksum at the end.
    pub fn read_from(r: &mut dyn Read) -> Result<Kv, DecodeError> {
        let corrupt = |m: String| DecodeError::new(format!("corrupt snapshot: {m}"));
        let mut r = SnapReader { r, crc: 0 };
        let mut magic = [0u8; 8];
        r.exact(&mut magic, "header")?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(corrupt("not a key-value snapshot (bad magic)".into()));
        }
        let version = r.u32("header")?;
        if version != SNAPSHOT_VERSION {
            return Err(DecodeError::new(format!(
                "unsupported snapshot version {version} (this build reads {SNAPSHOT_VERSION})"
            )));
        }
        let mut kv = Kv {
            applied: r.u64("header")?,
            clock_ms: r.u64("header")?,
            deleted_floor: r.u64("header")?,
            ..Kv::default()
        };
        if kv.deleted_floor > kv.applied {
            return Err(corrupt(format!(
                "deletion floor {} above the applied index {}",
                kv.deleted_floor, kv.applied
            )));
        }
        let check_index = |i: u64, what: &str| {
            if i > kv.applied {
                Err(corrupt(format!(
                    "{what} {i} above the applied index {}",
                    kv.applied
                )))
            } else {
                Ok(())
            }
        };
        // Counts are not trusted for allocation: items are read one by one
        // and a count beyond the stream ends in a truncation error.
        let n = r.u64("key count")?;
        let mut prev: Option<Key> = None;
        for _ in 0..n {
            let bytes = r.bytes(MAX_KEY_LEN, "key")?;
            let value = r.bytes(MAX_VALUE_LEN, "value")?;
            let expires_at = match r.u8("key flags")? {
                0 => None,
                1 => Some(r.u64("deadline")?),
                f => return Err(corrupt(format!("key flags {f}"))),
            };
            let modified = r.u64("key index")?;
            check_index(modified, "key changed at")?;
            let key = Key {
                hash: key_hash(&bytes),
                bytes,
            };
            if prev.as_ref().is_some_and(|p| *p >= key) {
                return Err(corrupt("keys out of order".into()));
            }
            if let Some(d) = expires_at {
                kv.deadlines.insert((d, key.clone()));
            }
            prev = Some(key.clone());
            kv.keys.insert(
                key,
                Record {
                    value,
                    expires_at,
                    modified,
                },
            );
        }
        let n = r.u64("tombstone count")?;
        if n > MAX_TOMBSTONES as u64 {
            return Err(corrupt(format!("{n} tombstones, at most {MAX_TOMBSTONES}")));
        }
        for _ in 0..n {
            let bytes = r.bytes(MAX_KEY_LEN, "tombstone")?;
            let index = r.u64("tombstone index")?;
            check_index(index, "key deleted at")?;
            let key = Key {
                hash: key_hash(&bytes),
                bytes,
            };
            if kv.keys.contains_key(&key) || kv.tombstones.insert(key, index).is_some() {
                return Err(corrupt("a tombstone for a present or repeated key".into()));
            }
        }
        let n = r.u64("lock count")?;
        for _ in 0..n {
            let name = r.bytes(MAX_KEY_LEN, "lock name")?;
            let owner = r.bytes(MAX_KEY_LEN, "lock owner")?;
            let token = r.u64("lock token")?;
            check_index(token, "lock token")?;
            let expires_at = r.u64("lock deadline")?;
            kv.lock_deadlines.insert((expires_at, name.clone()));
            let lock = Lock {
                owner,
                token,
                expires_at,
            };
            if kv.locks.insert(name, lock).is_some() {
                return Err(corrupt("a lock listed twice".into()));
            }
        }
        let computed = r.crc;
        let mut b = [0u8; 4];
        r.r.read_exact(&mut b)
            .map_err(|e| read_error(e, "checksum"))?;
        let stored = u32::from_le_bytes(b);
        if stored != computed {
            return Err(corrupt(format!(
                "checksum {stored:08x}, computed {computed:08x}"
            )));
        }
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(k: &str, v: &str) -> Command {
        Command::Set {
            key: b(k),
            value: b(v),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::Clear,
        }
    }

    /// A store and a log position: applies commands at increasing indexes
    /// and stamps, checking the invariants after each.
    struct Log {
        kv: Kv,
        index: u64,
        now_ms: u64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                kv: Kv::new(),
                index: 0,
                now_ms: 1_700_000_000_000,
            }
        }

        fn run(&mut self, cmd: Command) -> Outcome {
            self.index += 1;
            let w = Write::new(self.now_ms, cmd);
            // Every command survives its encoding.
            let w = Write::decode(&w.encode()).expect("decodes");
            let out = self.kv.apply(self.index, &w);
            self.kv.check_invariants();
            out
        }

        fn q(&self, cmd: Command) -> Outcome {
            self.kv.query(&cmd, self.now_ms)
        }

        fn get(&self, k: &str) -> Outcome {
            self.q(Command::Get { key: b(k) })
        }

        fn ttl_ms(&self, k: &str) -> Outcome {
            self.q(Command::TimeToLive {
                key: b(k),
                ms: true,
            })
        }
    }

    fn bulk(s: &str) -> Outcome {
        Outcome::Bulk(b(s))
    }

    /// Writes encoded one after another share the arena's buffer and decode
    /// as encoded alone; one too large for what is left gets a new buffer.
    #[test]
    fn writes_encoded_in_an_arena_share_its_buffer() {
        let mut arena = BytesMut::new();
        let w1 = Write::new(1, set("a", "1"));
        let w2 = Write::new(2, set("b", "2"));
        let p1 = w1.encode_in(&mut arena);
        let p2 = w2.encode_in(&mut arena);
        assert_eq!((p1.clone(), p2.clone()), (w1.encode(), w2.encode()));
        assert_eq!(p1.as_ptr().wrapping_add(p1.len()), p2.as_ptr());
        assert!(arena.capacity() >= ENCODE_ARENA - p1.len() - p2.len() - 64);
        let big = Write::new(3, set("c", &"x".repeat(ENCODE_ARENA)));
        let p3 = big.encode_in(&mut arena);
        assert_eq!(p3, big.encode());
        assert_eq!(Write::decode(&p2).unwrap(), w2);
    }

    #[test]
    fn commands_round_trip() {
        let cmds = vec![
            set("k", "v"),
            Command::Set {
                key: Bytes::new(),
                value: Bytes::from(vec![0xff; 1000]),
                cond: SetCond::Nx,
                get: true,
                ttl: Ttl::In(5),
            },
            Command::Set {
                key: b("bin\0\r\n"),
                value: b(""),
                cond: SetCond::Xx,
                get: false,
                ttl: Ttl::Keep,
            },
            Command::Del {
                keys: vec![b("a"), b(""), b("a")],
            },
            Command::GetDel { key: b("g") },
            Command::GetEx {
                key: b("g"),
                ttl: Ttl::At(77),
            },
            Command::MSet {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
            },
            Command::MSetNx {
                pairs: vec![(b("a"), b("1"))],
            },
            Command::IncrBy {
                key: b("n"),
                by: i64::MIN,
            },
            Command::Append {
                key: b("s"),
                value: b("xyz"),
            },
            Command::Expire {
                key: b("e"),
                ttl: Ttl::In(MAX_TTL_MS),
                cond: ExpireCond::Lt,
            },
            Command::Persist { key: b("p") },
            Command::FlushAll,
            Command::Exec {
                watches: vec![(b("w"), 9)],
                cmds: vec![set("x", "1"), Command::Get { key: b("x") }],
            },
            Command::Sweep,
            Command::LockAcquire {
                name: b("l"),
                owner: b("o"),
                ttl_ms: 100,
            },
            Command::LockRelease {
                name: b("l"),
                owner: b("o"),
                token: 4,
            },
            Command::LockExtend {
                name: b("l"),
                owner: b("o"),
                token: 4,
                ttl_ms: 1,
            },
            Command::FencedSet {
                lock: b("l"),
                token: 4,
                key: b("k"),
                value: b("v"),
            },
            Command::MGet {
                keys: vec![b("a"), b("b")],
            },
            Command::Exists { keys: vec![b("a")] },
            Command::TimeToLive {
                key: b("a"),
                ms: false,
            },
            Command::Strlen { key: b("a") },
            Command::Type { key: b("a") },
            Command::DbSize,
            Command::Keys { pattern: b("*") },
            Command::Scan {
                cursor: 123,
                pattern: Some(b("a*")),
                count: 10,
            },
            Command::Scan {
                cursor: 0,
                pattern: None,
                count: 1,
            },
            Command::LockInfo { name: b("l") },
        ];
        for (i, c) in cmds.into_iter().enumerate() {
            let w = Write::new(i as u64 * 1000, c);
            let enc = w.encode();
            assert_eq!(Write::decode(&enc).unwrap(), w);
            // Every truncation is refused, never a panic.
            for n in 0..enc.len() {
                assert!(Write::decode(&enc.slice(..n)).is_err(), "{w:?} prefix {n}");
            }
        }
    }

    /// Random bytes and random mutations of valid entries: decoding never
    /// panics, and whatever decodes encodes back to the same bytes (so two
    /// members can never read one entry two ways).
    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid: Vec<Bytes> = [
            set("k", "v"),
            Command::Exec {
                watches: vec![(b("w"), 3)],
                cmds: vec![set("a", "b"), Command::IncrBy { key: b("n"), by: 2 }],
            },
            Command::Scan {
                cursor: 5,
                pattern: Some(b("*")),
                count: 3,
            },
            Command::FencedSet {
                lock: b("l"),
                token: 9,
                key: b("k"),
                value: b("v"),
            },
        ]
        .into_iter()
        .map(|c| Write::new(77, c).encode())
        .collect();
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                valid[round % valid.len()].to_vec()
            } else {
                let len = (next() % 48) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = v.first_mut() {
                    *first = [1, 2, 16][(next() % 3) as usize];
                }
                v
            };
            for _ in 0..(next() % 3) {
                if !bytes.is_empty() {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            let payload = Bytes::from(bytes);
            if let Ok(w) = Write::decode(&payload) {
                if payload[0] == STAMPED {
                    assert_eq!(w.encode(), payload, "{w:?}");
                }
            }
        }
    }

    #[test]
    fn legacy_entries_still_decode() {
        // SET k v and DEL a b as written before stamps existed.
        let set = Bytes::from_static(b"\x01\x01\x00\x00\x00kv");
        assert_eq!(
            Write::decode(&set).unwrap(),
            Write {
                stamp_ms: 0,
                cmd: self::set("k", "v")
            }
        );
        let del = Bytes::from_static(b"\x02\x02\x00\x00\x00\x01\x00\x00\x00a\x01\x00\x00\x00b");
        assert_eq!(
            Write::decode(&del).unwrap().cmd,
            Command::Del {
                keys: vec![b("a"), b("b")]
            }
        );
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let bad: &[&[u8]] = &[
            b"",
            b"\x03",
            b"\x01\x05\x00\x00",
            b"\x01\x05\x00\x00\x00ab",
            b"\x02\x00\x00\x00\x00",
            b"\x02\xff\xff\xff\xff",
            b"\x02\x01\x00\x00\x00\x01\x00\x00\x00",
            b"\x02\x01\x00\x00\x00\x01\x00\x00\x00ab",
            // Stamped: unknown op, nested EXEC, EXEC with a huge count.
            b"\x10\0\0\0\0\0\0\0\0\xee",
            b"\x10\0\0\0\0\0\0\0\0\x0c\0\0\0\0\x01\0\0\0\x0c\0\0\0\0\0\0\0\0",
            b"\x10\0\0\0\0\0\0\0\0\x0c\xff\xff\xff\xff",
            // A zero TTL, a SCAN COUNT 0.
            b"\x10\0\0\0\0\0\0\0\0\x0e\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ];
        for p in bad {
            let e = Write::decode(&Bytes::copy_from_slice(p));
            assert!(e.is_err(), "{p:?} decoded as {e:?}");
        }
    }

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
    fn globs_like_redis() {
        let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "abc"));
        assert!(m("a*", "abc"));
        assert!(!m("a*", "bac"));
        assert!(m("*c", "abc"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("h[ae]llo", "hello"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h\\*llo", "h*llo"));
        assert!(!m("h\\*llo", "hallo"));
        assert!(m("*a*b", "xxaxxb"));
        assert!(!m("ABC", "abc"), "case-sensitive");
        // No exponential blow-up.
        let long = "a".repeat(5000);
        let t = std::time::Instant::now();
        assert!(!glob_match(
            format!("{}b", "*a".repeat(30)).as_bytes(),
            long.as_bytes()
        ));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
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

    // ----- Snapshots ------------------------------------------------------

    /// A store with every kind of state: values with and without deadlines,
    /// tombstones, a deletion floor, locks, a clock.
    fn busy_store() -> Log {
        let mut l = Log::new();
        for i in 0..300 {
            l.run(set(&format!("key{i}"), &"v".repeat(i % 40)));
        }
        for i in 0..50 {
            l.run(Command::Expire {
                key: b(&format!("key{i}")),
                ttl: Ttl::In(1000 + i),
                cond: ExpireCond::Always,
            });
        }
        l.run(Command::Del {
            keys: vec![b("key299"), b("key298")],
        });
        l.run(Command::LockAcquire {
            name: b("l1"),
            owner: b("me"),
            ttl_ms: 5000,
        });
        l.run(set("bin\0\r\n", "\0\u{1}"));
        l.run(set("", ""));
        l
    }

    fn write(s: &KvSnapshot) -> Vec<u8> {
        let mut v = Vec::new();
        s.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn snapshot_round_trips_every_kind_of_state() {
        let l = busy_store();
        let bytes = write(&l.kv.snapshot());
        let back = Kv::read_from(&mut &bytes[..]).unwrap();
        back.check_invariants();
        assert!(back == l.kv, "the same state");
        assert_eq!(back.clock_ms(), l.kv.clock_ms());
        assert_eq!(back.applied_index(), l.kv.applied_index());
        // And it behaves the same from there on.
        let mut a = l.kv.clone();
        let mut b2 = back;
        for (i, cmd) in [
            Command::Sweep,
            Command::IncrBy {
                key: b("key3"),
                by: 1,
            },
            Command::Exec {
                watches: vec![(b("key298"), 10)],
                cmds: vec![set("x", "y")],
            },
        ]
        .into_iter()
        .enumerate()
        {
            let w = Write::new(l.now_ms + 5000, cmd);
            let idx = l.index + 1 + i as u64;
            assert_eq!(a.apply(idx, &w), b2.apply(idx, &w));
        }
        assert!(a == b2);
        // An empty store too.
        let empty = write(&Kv::new().snapshot());
        assert!(Kv::read_from(&mut &empty[..]).unwrap() == Kv::new());
    }

    #[test]
    fn a_snapshot_is_unaffected_by_later_writes() {
        let mut l = busy_store();
        let snap = l.kv.snapshot();
        let before = write(&snap);
        let state = l.kv.clone();
        for i in 0..100 {
            l.run(set(&format!("key{i}"), "changed"));
            l.run(Command::Del {
                keys: vec![b(&format!("key{}", 100 + i))],
            });
        }
        l.run(Command::FlushAll);
        l.run(Command::LockRelease {
            name: b("l1"),
            owner: b("me"),
            token: 303,
        });
        assert_eq!(write(&snap), before, "the snapshot did not move");
        assert!(Kv::read_from(&mut &before[..]).unwrap() == state);
        // And it can be written from another thread.
        let handle = std::thread::spawn(move || write(&snap));
        assert_eq!(handle.join().unwrap(), before);
    }

    #[test]
    fn corrupt_snapshots_are_refused_without_panics_or_big_allocations() {
        let l = busy_store();
        let good = write(&l.kv.snapshot());
        // Every truncation.
        for n in (0..good.len()).step_by(29).chain([good.len() - 1]) {
            let e = Kv::read_from(&mut &good[..n]).unwrap_err();
            assert!(e.io_kind().is_none(), "{e}");
        }
        // Every flipped byte: refused (a checksum or a check), never a panic.
        for i in (0..good.len()).step_by(17) {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            assert!(Kv::read_from(&mut &bad[..]).is_err(), "byte {i}");
        }
        // A huge length: an error naming the bound, nothing allocated.
        let mut bad = good[..8 + 4 + 24 + 8].to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = Kv::read_from(&mut &bad[..]).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        // A huge count: read item by item until the data runs out.
        let mut bad = good[..8 + 4 + 24].to_vec();
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Kv::read_from(&mut &bad[..]).is_err());
        // Another version.
        let mut bad = good.clone();
        bad[8] = 9;
        let e = Kv::read_from(&mut &bad[..]).unwrap_err().to_string();
        assert!(e.contains("unsupported snapshot version 9"), "{e}");
        // An I/O error is told apart.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let e = Kv::read_from(&mut Failing).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::Other));
    }

    #[test]
    fn snapshots_are_send_and_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<KvSnapshot>();
        check::<Kv>();
    }
}
