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
//! # Where things are
//!
//! One job per file:
//!
//! - [`command`]: the replicated commands ([`Command`]), what each does to
//!   the store when applied ([`Kv::apply`]) or read ([`Kv::query`]), and
//!   their [`Outcome`]s.
//! - [`entry`]: the log-entry encoding of a [`Write`] (an on-disk and
//!   on-the-wire format: read its module doc before touching it).
//! - [`store`]: the [`Kv`] itself: the map of keys, the expiry index, the
//!   tombstones, the locks, and the helpers the commands change them with.
//! - [`snapshot`]: the snapshot payload, written and read in that one
//!   module: the configuration prefix, then the store ([`KvSnapshot`]).
//! - [`glob`]: Redis' glob matching, for `KEYS` and `SCAN MATCH`.
//!
//! Everything a caller needs is re-exported here (`crate::kv::Command`,
//! `crate::kv::Write`, ...), so the split is invisible outside `kv`.

/// Longest value a command may produce (`APPEND`); `SET` is bounded by the
/// request size. Redis' `proto-max-bulk-len` is 512 MB; here a value must
/// fit a client's output limits and a log entry.
pub const MAX_VALUE_LEN: usize = 4 << 20;
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
/// A `SCAN` page of at most this many keys runs on the event loop; a larger
/// one, like `KEYS`, walks the key space off it (`crate::walks`). A page of
/// 1000 keys takes well under a millisecond.
pub const WALK_INLINE_MAX: u64 = 1000;

mod command;
mod entry;
mod glob;
pub mod snapshot;
mod store;
#[cfg(test)]
mod testing;

// The public surface of the former `kv.rs`, at the same paths
// (`crate::kv::Command`, ...). Not every target uses every item (the
// kv_bench example compiles this module on its own), hence the allows.
#[allow(unused_imports)]
pub use command::{parse_i64, Command, ExpireCond, Outcome, SetCond, Ttl};
#[allow(unused_imports)]
pub use entry::{DecodeError, Write, ENCODE_ARENA};
#[allow(unused_imports)]
pub use glob::glob_match;
#[allow(unused_imports)]
pub use snapshot::KvSnapshot;
pub use store::Kv;
