//! The durable store in the data dir: term, vote, the Raft log in segments,
//! and the latest snapshot.
//!
//! # Files
//!
//! - `LOCK`: held with `flock(LOCK_EX)` while a [`Storage`] is open, so that
//!   a second process on the same data dir fails at start instead of
//!   interleaving writes with the first. The kernel drops the lock when the
//!   process dies, so a crash never leaves a stale lock behind.
//! - `meta`: the hard state (term, vote) plus the cluster id and member id
//!   the data dir belongs to, 48 bytes ending in a CRC32C. It is replaced
//!   atomically: write `meta.tmp`, fsync, rename over `meta`, fsync the
//!   directory, so a crash at any instant leaves either the old or the new
//!   value.
//! - `log-<first index, 20 digits>`: the log, in segments. Each starts with
//!   a 48-byte header (magic, version, cluster id, member id, the index of
//!   its first entry, the term of the entry just before it (`prev`; its
//!   index is `first - 1`), CRC32C), followed by batches. A segment is
//!   created atomically (written as `log.tmp`, fsynced, renamed, directory
//!   fsynced), so its header is always whole, and only the last segment (the
//!   active one) is ever appended to. A new segment is preallocated
//!   ([`StorageOptions::preallocate`]): `fallocate` makes the file
//!   `segment_bytes` long before its fsync, reading as zeroes after the
//!   header, and batches are written at the end of the data, not of the
//!   file. An fdatasync then has no file size to write, only the data: on
//!   the development VM the p50 of a member's log fdatasync under one
//!   client's SETs fell from 0.47 to 0.33-0.38 ms (three members on one
//!   disk; docs/numbers.md). A start allocates an active segment that is
//!   shorter (one cut after a torn batch, or of a data dir written before
//!   preallocation, which still opens). Recovery keeps only a segment's
//!   data in memory, not its zeroes. Each [`Storage::sync`] writes its
//!   records as one batch, `magic "BTCH" | u32 body length | u32 CRC32C of
//!   the body | u32 CRC32C of these 12 bytes | body`, and fdatasyncs it
//!   before the next batch is written. The body is records, each `u32
//!   length | u32 CRC32C of the length | u32 CRC32C of the body | body`,
//!   little-endian; a record body is an entry `{1, term u64, index u64,
//!   payload kind u8 (0 no-op, 1 command, 2 configuration), the command's
//!   bytes or the configuration in the wire format}`, a truncation
//!   `{2, from u64}` or a reset `{3, index u64, term u64}` (below).
//! - `snapshot`: the latest snapshot, a 52-byte header (magic, snapshot
//!   format version, cluster id, last index u64, last term u64, payload
//!   length u64, payload CRC32C, header CRC32C) and the payload, opaque
//!   bytes (raft-node's: the configuration at the last index, then the
//!   store; snapshot format version 2, version 1 had no configuration). The whole file is what is
//!   sent to other members, so it names no member, and a receiver checks
//!   it like the file at start-up. `snapshot.tmp` holds a local snapshot
//!   while it is written ([`SnapshotWriter`]), `snapshot.incoming` one
//!   received from the leader; both are renamed over `snapshot` once
//!   fsynced, and a start removes any left behind.
//!
//! Format version 4 introduced segments and snapshots (version 3 had a
//! single file `log`); a data dir of an older version is refused with one
//! line naming the version (there is no in-place upgrade).
//!
//! # The log
//!
//! A new segment starts at the first sync (with records to write) after the
//! active one reached [`StorageOptions::segment_bytes`], at the index after
//! the last entry synced, which it names with its term as `prev`; a segment
//! can therefore exceed the limit by one sync's records. Segment names
//! sort in creation order: a new segment's first index is above the active
//! one's (a segment whose every entry was truncated away is not rolled over
//! until it holds an entry).
//!
//! Removing a conflicting suffix (§5.3) appends a truncation record instead
//! of shrinking the file. The file then only ever grows, so a crash can only
//! damage its tail, and recovery has a single rule for that. Physically
//! truncating (`ftruncate` and then appending new records over the same byte
//! range) mixes a metadata change with data writes whose ordering after a
//! crash is filesystem-specific: the old suffix, the new records and zeroes
//! could interleave. The price is that dead entries stay on disk and are
//! replayed at start-up; conflicting suffixes are rare (uncommitted entries
//! of a deposed leader) and short. A truncation may reach back into an
//! earlier segment. It never reaches the snapshot's last index (asserted):
//! that entry is committed.
//!
//! [`Storage::compact`] deletes whole segments, oldest first, whose every
//! index is at or below the given index, itself at or below the snapshot's
//! last index; never the active one. The deletions are not fsynced: a
//! segment a crash brings back is skipped by the next start (recovery,
//! below), which deletes it again.
//!
//! # Snapshots
//!
//! A local snapshot is written by a [`SnapshotWriter`] (any thread) into
//! `snapshot.tmp`, fsynced by [`SnapshotWriter::finish`], and made current
//! by [`Storage::commit_snapshot`]; one received from the leader is written
//! chunk by chunk into `snapshot.incoming` ([`Storage::write_incoming_chunk`],
//! no fsync) and made current by [`Storage::install_incoming`], which
//! checks it first (length, header, cluster, index and term, and the
//! checksum, computed as the chunks arrived) and refuses it without changing
//! anything if it is not what the leader announced. Installing fsyncs the
//! file on the caller's thread. Installing applies Raft's rule (§7): if the log holds the
//! snapshot's last entry (same index and term, or it is the log's `prev`),
//! the entries after it are kept; otherwise the whole log is discarded by a
//! reset record `{index, term}` (the log is now empty after that entry),
//! followed, when the name sorts after the active segment, by a new segment
//! at `index + 1`, and the older segments are deleted.
//!
//! # Durability
//!
//! [`Storage::save_hard_state`], [`Storage::truncate`] and [`Storage::append`]
//! only buffer. [`Storage::sync`] makes everything buffered durable with one
//! log fdatasync (group commit: every entry of a loop turn shares it),
//! writing `meta` first when the hard state changed, and starting a new
//! segment first when one is due. Nothing is promised before `sync`
//! returns. (A sync of more than [`segment::MAX_BATCH_LEN`] bytes is split into
//! batches with an fdatasync each, which bounds what a torn batch can
//! cover.) [`Storage::commit_snapshot`] and [`Storage::install_incoming`]
//! sync everything buffered first, so they never reorder earlier writes:
//! the snapshot's term is durable in `meta` before the snapshot is.
//!
//! # Crash ordering
//!
//! Every step below leaves a state that [`Storage::open`] accepts; the
//! snapshot found is always a complete valid one, old or new.
//!
//! - New segment: `log.tmp` written, fsynced, renamed to `log-<first>`,
//!   directory fsynced, and only then the first batch written into it. A
//!   crash before the directory fsync loses at most the empty new segment
//!   (and `log.tmp`, which the next start removes): the previous segment
//!   stays the last one, complete.
//! - Commit of a local snapshot: (1) sync of everything buffered; (2)
//!   `snapshot.tmp`, already fsynced by [`SnapshotWriter::finish`], renamed
//!   over `snapshot`; (3) directory fsync. A crash before (3) finds the old
//!   snapshot (or none) or the new one, both whole: the new file's data was
//!   fsynced before its name was. Nothing else changes: the log still holds
//!   the snapshot's entries.
//! - Install of a received snapshot: (1) sync of everything buffered; (2)
//!   `snapshot.incoming` fsynced; (3) renamed over `snapshot`; (4)
//!   directory fsync. Until (4) a crash finds the old snapshot and the old
//!   log, untouched; after it, the new snapshot. The log is changed only
//!   then: its entries may be committed ones this member acknowledged, which
//!   must not be lost before a durable snapshot covers them. When the log
//!   does not match: (5) a reset
//!   record appended to the active segment and fdatasynced; (6) maybe a new
//!   segment at `index + 1` (as above); (7) the older segments deleted, no
//!   fsync. A crash between (4) and (5) finds the new snapshot and a log
//!   that does not match it, which recovery handles by the same rule and
//!   completes the reset. After (5) every segment before the reset's is
//!   dead, so any subset of them that (7) leaves is skipped.
//! - Compaction: deletions only, no fsync; any subset may survive a crash
//!   and is skipped. A deleted file is first renamed to a trash name and
//!   unlinked by a helper thread (`trash.rs`): a crash may leave trash
//!   files, which the next start deletes.
//!
//! # Recovery
//!
//! [`Storage::open`] validates everything before changing anything. It
//! checks `meta`, then the snapshot whole (header, length, and the
//! payload's checksum: reading and checksumming 120 MiB took 0.03 s from
//! the page cache and 0.09 s from disk on the development VM), then
//! replays the segments in order. A segment continues the log when it
//! starts right after the last entry replayed and its `prev` term matches
//! that entry's. One that does not starts the log afresh; the segments
//! before it are skipped (and deleted once the start is validated), which
//! is right only when nothing they hold is needed: so after the replay the
//! log must start at or below the snapshot's last index (at index 1 without
//! a snapshot), or the data dir is refused (segments are missing). That
//! accepts the leftovers of a compaction and of a reset, and a truncation
//! record that reaches below the first segment left (written before the
//! segments it reached were compacted). The replayed log is then matched
//! against the snapshot (§7): if it holds the snapshot's last entry, the
//! entries after it are recovered; if not (it ends before that index, or
//! holds it with another term: the entries after it were uncommitted
//! entries of another term), the whole log is discarded with a warning and
//! the reset is completed. Entries at or below the snapshot's index stay on disk until
//! [`Storage::compact`] but are not returned.
//!
//! What a power cut can do to the log follows from the write order: a batch
//! is written only after the previous one's fdatasync returned, into the
//! last segment only, so at most the last batch of the last segment is
//! unsynced, and only it can be damaged by the cut. Of that batch the disk
//! may hold any prefix, and within it whole 512-byte sectors (pages,
//! sectors not written back) may read as zeroes instead of the data. A
//! segment's data ends where only zeroes follow (a batch starts with its
//! non-zero magic): the free space of a preallocated segment, or a size a
//! power cut made durable without the data; nothing was written there, so
//! that end is clean, and the next batch goes there. The rules that bound
//! the damage by "what follows" count data up to the last non-zero byte,
//! not the file's length. So
//! recovery drops the last batch, with a warning, when it is incomplete
//! (runs past the end of the file), or when its damage is a zeroed sector:
//! it was never acknowledged, because `sync` had not returned; it cuts the
//! file there (and allocates the segment again), so no byte of the
//! dropped batch is read later. (Zeroes at the end of the data are its
//! clean end, without a warning: a disk that zeroed the tail of synced
//! data there goes unnoticed, as a lost tail always could.) Anything else
//! is a [`StorageError`] naming the file, the byte offset and what is wrong,
//! and leaves the disk untouched: a damaged batch with data after it (a
//! later batch proves it was synced), a damaged batch in a segment that is
//! not the last, a damaged header that is not zeroes (no torn write
//! produces it), a record whose fields are impossible (an index that does
//! not follow, a term that goes down or is above the current term), a
//! damaged or short snapshot, a missing or unreadable file, or a data dir
//! of another cluster or member.
//!
//! # Power-cut mode (testing)
//!
//! `SIGKILL` keeps the page cache, so a missing fsync never shows in a test
//! that kills processes. With `RAFT_POWER_CUT_AT_SYNC=N` (a positive
//! integer) or `RAFT_POWER_CUT_FILE=PATH` in the environment, read once by
//! [`Storage::open`], the store simulates losing power: every write goes
//! through as usual, but the store remembers what an actual fsync made
//! durable: per file, the length fsynced, and for the directory, the
//! entries as of its last fsync (recorded inside the helpers that call
//! fsync, so code that skips an fsync also skips the record). At the N-th
//! durable operation that has anything to write (a [`Storage::sync`], a
//! [`Storage::commit_snapshot`] or a successful
//! [`Storage::install_incoming`], counted from this process's start), or
//! at the first one after `PATH` exists, it cuts the power at one of the
//! points inside that operation, chosen by the seed: after each write or
//! rename and before the fsync that makes it durable (a log batch before
//! its fdatasync, the point that matters: a group commit in flight;
//! `meta.tmp` or `log.tmp` before its fsync, or after its rename before
//! the directory fsync; a snapshot before or after its rename, before the
//! directory fsync; a reset record before its fdatasync). The cut tears
//! the active segment at a point between its durable length and the end
//! of its data (a preallocated one keeps its length: the lost part reads
//! as zeroes, cut at a sector boundary), sometimes zeroes whole sectors
//! inside the unsynced part or leaves zeroes after it; undoes every rename and creation not made
//! durable by a directory fsync (a renamed file whose data was never
//! fsynced is durable as an empty file); brings back each file deleted
//! since, or not (any subset); deletes the tmp files; and calls
//! [`std::process::abort`]. The files as found at start count as durable.
//! `RAFT_POWER_CUT_SEED` seeds the choices (default: from the OS; the seed
//! is logged). Operations are counted rather than writes because the
//! instant that matters is between a write and the fsync that makes it
//! durable, and every operation has exactly such instants. Unset, none of
//! this exists: the store keeps no records and behaves as in production.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use raft_proto::{Entry, HardState, LogIndex, NodeId, Term};

mod power_cut;
mod segment;
mod snapshot;
mod syncer;
#[cfg(test)]
mod tests;
mod trash;

use self::power_cut::{cut_point, PowerCut, PowerCutPlan};
use self::segment::{
    batch_end, check_segment_header, encode_batch_header, encode_segment_header,
    parse_segment_name, push_entry, push_reset, push_truncate, replay_records, scan_segment,
    segment_name, LogTerms, Replay, ReplayBounds, SegmentEnd, SegmentHeader, BATCH_HEADER_LEN,
    MAX_RECORD_LEN, SEGMENT_HEADER_LEN,
};
use self::snapshot::{check_snapshot_file, read_snapshot_header, Incoming};
pub use self::snapshot::{SnapshotInfo, SnapshotReader, SnapshotWriter};
use self::syncer::{Done, Syncer};
use self::trash::Trash;

/// Name of the lock file in the data dir.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the hard-state file in the data dir.
pub const META_FILE: &str = "meta";
/// Name of the current snapshot in the data dir.
pub const SNAPSHOT_FILE: &str = "snapshot";
const META_TMP: &str = "meta.tmp";
const SEGMENT_TMP: &str = "log.tmp";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const SNAPSHOT_INCOMING: &str = "snapshot.incoming";
/// The single log file of format version 3 and before.
const OLD_LOG_FILE: &str = "log";
const OLD_LOG_MAGIC: &[u8; 8] = b"RAFTLOG\0";

/// Largest command payload a log entry may carry: the limit shared by the
/// node's `propose`, the peer codec and this log. The client protocol's
/// request limit is well below it; a larger entry is caller misuse.
pub const MAX_PAYLOAD_LEN: usize = raft_proto::MAX_ENTRY_LEN;

const META_MAGIC: &[u8; 8] = b"RAFTMETA";
/// Version 4: the log is in segments, and there are snapshots.
const FORMAT_VERSION: u32 = 4;
/// magic 8 | version 4 | cluster 8 | member 8 | term 8 | voted_for 8 | crc 4
const META_LEN: usize = 48;

/// How the store lays out the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOptions {
    /// A new segment starts at the first sync after the active one reached
    /// this many bytes (at least 1). Default 16 MiB.
    pub segment_bytes: u64,
    /// Allocate each new segment's `segment_bytes` when it is created
    /// (`fallocate`), so that an append does not change the file's size
    /// and its fdatasync has no size to write (module docs). Default on.
    pub preallocate: bool,
    /// A snapshot a leader announces larger than this is refused before a
    /// byte of it is written (a peer holding the secret may declare any
    /// size). Default 16 GiB: the store lives in memory.
    pub max_incoming_snapshot: u64,
}

/// Free space an incoming snapshot must leave on the data dir's file
/// system, for the log and the next snapshot.
const INCOMING_SNAPSHOT_HEADROOM: u64 = 256 << 20;
/// Refused incoming snapshots are logged at most this often.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl StorageOptions {
    /// The length a new segment is allocated to (0: none).
    fn preallocation(&self) -> u64 {
        if self.preallocate {
            self.segment_bytes
        } else {
            0
        }
    }
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions {
            segment_bytes: 16 << 20,
            preallocate: true,
            max_incoming_snapshot: 16 << 30,
        }
    }
}

/// What [`Storage::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The last durable term and vote.
    pub hard_state: HardState,
    /// The current snapshot; read it with [`Storage::snapshot_payload`].
    pub snapshot: Option<SnapshotInfo>,
    /// The log after the snapshot's last index (from index 1 without a
    /// snapshot), in order: empty when the log did not hold the snapshot's
    /// last entry (§7).
    pub entries: Vec<Entry>,
    /// The data dir was empty (or a first boot was interrupted before any
    /// state was written): this is the member's first start.
    pub first_boot: bool,
}

/// A segment of the log the store holds.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first: LogIndex,
    /// Where its data ends: the end of its last batch. A preallocated
    /// segment's file is longer, zeroes after that.
    bytes: u64,
}

/// The current snapshot and its file, kept open for sending chunks.
#[derive(Debug)]
struct CurrentSnapshot {
    info: SnapshotInfo,
    file: File,
}

/// The open data dir. Holds the lock until dropped.
///
/// Errors: [`StorageError::SnapshotReplaced`] is an expected outcome. After
/// any other error from a method that writes, the store is poisoned: the
/// state of the files is unknown (a failed fsync may have dropped dirty
/// pages), so later writes fail too and the driver must exit.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    /// Kept open for the lock's lifetime: closing it releases the flock.
    _lock: File,
    cluster_id: u64,
    node_id: NodeId,
    options: StorageOptions,
    /// The hard state as of the latest `save_hard_state` (durable or not).
    hard_state: HardState,
    /// Set when `hard_state` has not been written to `meta` yet.
    hard_state_dirty: bool,
    /// The terms of the log held, as of the latest buffered operation. Lets
    /// `append` assert that terms never go down, and the snapshot methods
    /// apply §7.
    log: LogTerms,
    /// The last entry as of the last sync (what the segments hold): the
    /// `prev` of a new segment.
    synced_last: (LogIndex, Term),
    /// The segments, oldest first; the last one is the active one.
    segments: Vec<Segment>,
    /// The active segment, open for appending.
    active: File,
    /// A duplicate of `active`'s descriptor for the log-sync thread, made
    /// at the first background sync of each segment.
    sync_file: Option<std::sync::Arc<File>>,
    /// Encoded records not yet written to the active segment.
    buf: Vec<u8>,
    poisoned: bool,
    snapshot: Option<CurrentSnapshot>,
    /// The snapshot a [`SnapshotWriter`] handed out is writing, until it is
    /// committed or aborted.
    writer: Option<(LogIndex, Term)>,
    /// The snapshot being received.
    incoming: Option<Incoming>,
    /// A snapshot a leader announced that is refused (over the limit or
    /// the free space): its chunks are dropped unwritten and its install
    /// fails, as for a damaged one.
    refused_incoming: Option<SnapshotInfo>,
    /// Snapshots refused so, and when one was last logged.
    incoming_refusals: u64,
    refusal_logged_at: Option<std::time::Instant>,
    /// The power-cut simulation; `None` unless its environment switch is set.
    power_cut: Option<PowerCut>,
    /// Files no longer needed, deleted by a helper thread (`trash.rs`).
    trash: Trash,
    /// Runs the log's fdatasync on a helper thread, once the owner asked
    /// for it ([`Storage::sync_in_background`]; `syncer.rs`).
    syncer: Option<Syncer>,
    /// The batch written whose fdatasync the syncer runs.
    in_flight: Option<InFlight>,
    /// A background sync that completed while a synchronous operation
    /// waited for it, until [`Storage::finish_sync`] reports it.
    finished: Option<Duration>,
}

/// A batch whose fdatasync runs in the background.
#[derive(Debug)]
struct InFlight {
    /// The last entry it makes durable.
    last: (LogIndex, Term),
    /// In power-cut mode: the segment's inode and the length it makes
    /// durable.
    durable: Option<(u64, u64)>,
}

impl Storage {
    /// Opens (or on first boot creates) the store in `dir` for member
    /// `node_id` of cluster `cluster_id`, takes the lock and recovers the
    /// durable state. Reads the power-cut switches (module docs) from the
    /// environment.
    ///
    /// Panics if `node_id` is 0 or `options.segment_bytes` is 0.
    pub fn open(
        dir: &Path,
        cluster_id: u64,
        node_id: NodeId,
        options: StorageOptions,
    ) -> Result<(Storage, Recovered), StorageError> {
        let plan = PowerCutPlan::from_env()?;
        Storage::open_with(dir, cluster_id, node_id, options, plan)
    }

    fn open_with(
        dir: &Path,
        cluster_id: u64,
        node_id: NodeId,
        options: StorageOptions,
        plan: Option<PowerCutPlan>,
    ) -> Result<(Storage, Recovered), StorageError> {
        assert_ne!(node_id.0, 0, "node id 0 is reserved");
        assert!(options.segment_bytes >= 1, "segment_bytes must be positive");
        fs::create_dir_all(dir).map_err(|e| io_err(dir, "cannot create directory", e))?;
        let lock = take_lock(&dir.join(LOCK_FILE))?;
        // Before recovery touches anything: the files as found are the
        // durable baseline of the simulation.
        let mut power_cut = plan.map(|p| PowerCut::new(p, dir));

        let meta_path = dir.join(META_FILE);
        let meta = read_meta(&meta_path)?;
        if let Some(m) = &meta {
            check_owner(&meta_path, m.cluster_id, m.node_id, cluster_id, node_id)?;
        }
        refuse_old_log(dir)?;
        let segments = list_segments(dir)?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match File::open(&snapshot_path) {
            Ok(f) => Some((check_snapshot_file(&snapshot_path, &f, cluster_id)?, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&snapshot_path, "cannot open", e)),
        };
        let snapshot = snapshot.map(|(h, file)| CurrentSnapshot {
            info: h.info(),
            file,
        });
        let first_segment = dir.join(segment_name(LogIndex(1)));

        let Some(meta) = meta else {
            if segments.is_empty() && snapshot.is_none() {
                // First boot. `meta` goes first: a crash before the first
                // segment exists leaves a meta with no term and no vote,
                // which is recognized below as an interrupted first boot.
                write_meta(
                    dir,
                    cluster_id,
                    node_id,
                    HardState::default(),
                    &mut power_cut,
                )?;
                let store = Storage::first_segment(
                    dir,
                    lock,
                    cluster_id,
                    node_id,
                    options,
                    HardState::default(),
                    power_cut,
                )?;
                return Ok((store, Recovered::first_boot(HardState::default())));
            }
            let found = match segments.first() {
                Some(&first) => dir.join(segment_name(first)),
                None => snapshot_path,
            };
            return Err(StorageError::Missing {
                path: meta_path,
                why: format!(
                    "file is missing but {} exists: the term and vote are lost, refusing to \
                     start: restore the file from a backup. Do not wipe the data dir and restart \
                     this member with the same id: it could vote twice in a term and lose \
                     committed entries",
                    found.display()
                ),
            });
        };
        let hard_state = meta.hard_state;
        if let Some(s) = &snapshot {
            if s.info.last_term > hard_state.current_term {
                return Err(corrupt(
                    &snapshot_path,
                    28,
                    format!(
                        "snapshot of term {}, above the current term {} in {META_FILE}",
                        s.info.last_term, hard_state.current_term
                    ),
                ));
            }
        }
        if segments.is_empty() {
            if hard_state == HardState::default() && snapshot.is_none() {
                // Term 0 and no vote: nothing was ever appended (an entry's
                // term is at least 1 and never above the durable term), so
                // this is a first boot that crashed before creating the log.
                let store = Storage::first_segment(
                    dir, lock, cluster_id, node_id, options, hard_state, power_cut,
                )?;
                return Ok((store, Recovered::first_boot(hard_state)));
            }
            return Err(StorageError::Missing {
                path: first_segment,
                why: format!(
                    "no log segment ({}*) but {} records term {}{}: the log is lost, refusing to \
                     start: restore the files from a backup. Do not wipe the data dir and \
                     restart this member with the same id: it could vote twice in a term and \
                     lose committed entries",
                    segment::SEGMENT_PREFIX,
                    meta_path.display(),
                    hard_state.current_term,
                    if snapshot.is_some() {
                        " and there is a snapshot"
                    } else {
                        ""
                    }
                ),
            });
        }

        // Replay every segment, validating everything before changing
        // anything.
        let bounds = ReplayBounds {
            hard_state,
            snapshot_last: snapshot.as_ref().map(|s| s.info.last_index),
        };
        let mut replay: Option<Replay> = None;
        let mut run_start = 0;
        let mut sizes = Vec::with_capacity(segments.len());
        let mut torn = None;
        for (i, &first) in segments.iter().enumerate() {
            let path = dir.join(segment_name(first));
            let mut bytes = fs::read(&path).map_err(|e| io_err(&path, "cannot read", e))?;
            let h = check_segment_header(&path, &bytes, first, cluster_id, node_id, hard_state)?;
            let continues = replay.as_mut().is_some_and(|r| r.continued_by(h));
            if !continues {
                replay = Some(Replay::starting_at(h));
                run_start = i;
            }
            let r = replay.as_mut().expect("a segment was replayed");
            let mut records = Vec::new();
            let end = match scan_segment(&path, &bytes, &mut records)? {
                SegmentEnd::Clean { data_end } => data_end,
                SegmentEnd::Torn(t) if i + 1 < segments.len() => {
                    return Err(corrupt(
                        &path,
                        t.offset,
                        format!(
                            "{}, in a segment that is not the last (the one after it proves it \
                             was synced)",
                            t.why
                        ),
                    ));
                }
                SegmentEnd::Torn(t) => {
                    let end = t.offset;
                    torn = Some((path.clone(), t));
                    end
                }
            };
            sizes.push(end);
            // The entries keep slices of this buffer: drop what lies after
            // the data (a preallocated segment's zeroes) first.
            bytes.truncate(end as usize);
            bytes.shrink_to_fit();
            replay_records(&path, &Bytes::from(bytes), &records, r, bounds)?;
        }
        let mut replay = replay.expect("there are segments");
        let start_path = dir.join(segment_name(segments[run_start]));
        // A segment that does not continue the one before it: that one's
        // last entries may be what is missing (zeroed synced data reads as
        // the clean end of a segment).
        let lost_end = match run_start {
            0 => String::new(),
            i => format!(
                ", or the end of {} was lost",
                dir.join(segment_name(segments[i - 1])).display()
            ),
        };
        match &snapshot {
            None if replay.base.0 > 0 => {
                return Err(corrupt(
                    &start_path,
                    0,
                    format!(
                        "the log starts after index {}, but there is no snapshot: the segments \
                         before are missing{}",
                        replay.base, lost_end
                    ),
                ))
            }
            Some(s) if replay.base > s.info.last_index => {
                return Err(corrupt(
                    &start_path,
                    0,
                    format!(
                        "the log starts after index {}, but the snapshot covers only up to {}: \
                         the segments between are missing{}",
                        replay.base, s.info.last_index, lost_end
                    ),
                ))
            }
            _ => {}
        }

        // Everything checked out: only now touch the disk.
        if let Some((path, t)) = &torn {
            log::warn!(
                "{}: torn final records at byte offset {} ({}): the last batch, never \
                 acknowledged, dropped; recovering the log up to index {}",
                path.display(),
                t.offset,
                t.why,
                replay.last_index()
            );
            // Cut, so that no byte of it is taken for a batch later (the
            // active segment is allocated again below).
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(path, "cannot open for writing", e))?;
            f.set_len(t.offset)
                .map_err(|e| io_err(path, "cannot truncate", e))?;
            fsync_file(&f, path, SyncKind::All, &mut power_cut)?;
        }
        if run_start > 0 {
            log::warn!(
                "{}: {} older segments do not continue into {} and are not needed (below the \
                 snapshot, or discarded by it): deleted",
                dir.display(),
                run_start,
                start_path.display()
            );
            for &first in &segments[..run_start] {
                remove_file(dir, &segment_name(first), &mut power_cut)?;
            }
        }
        for tmp in [SNAPSHOT_TMP, SNAPSHOT_INCOMING, SEGMENT_TMP, META_TMP] {
            remove_file(dir, tmp, &mut power_cut)?;
        }
        // What the helper of the last run did not get to delete (trash.rs).
        // Here, not on a helper: nothing waits on the store yet.
        for name in list_trash(dir)? {
            remove_file(dir, &name, &mut power_cut)?;
        }

        // §7: the entries after the snapshot, if the log holds its last one.
        let log = replay.terms();
        let mut reset = None;
        let entries = match &snapshot {
            None => std::mem::take(&mut replay.entries),
            Some(s) => {
                let (index, term) = (s.info.last_index, s.info.last_term);
                if replay.term_at(index) == Some(term) {
                    replay.entries.split_off((index.0 - replay.base.0) as usize)
                } else {
                    let why = match replay.term_at(index) {
                        Some(t) => format!(
                            "holds entry {index} of term {t}, not {term}: the entries after it \
                             were uncommitted entries of another term"
                        ),
                        None => format!("ends at index {}", replay.last_index()),
                    };
                    log::warn!(
                        "{}: the snapshot ends at entry {index} of term {term}, but the log \
                         {why}; the log is discarded (§7)",
                        dir.display()
                    );
                    reset = Some((index, term));
                    Vec::new()
                }
            }
        };
        drop(replay);
        let segments: Vec<Segment> = segments[run_start..]
            .iter()
            .zip(&sizes[run_start..])
            .map(|(&first, &bytes)| Segment { first, bytes })
            .collect();
        let snapshot_info = snapshot.as_ref().map(|s| s.info);
        let last = segments.last().expect("at least one segment");
        let path = dir.join(segment_name(last.first));
        let active = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, "cannot open for writing", e))?;
        if let Some(pc) = &mut power_cut {
            // What lies after the data (zeroes) is not the log's.
            pc.segment_written(&active, last.bytes);
        }
        // A segment cut after a torn batch, one of a data dir written
        // without preallocation, or one whose allocation a crash undid.
        let meta = active
            .metadata()
            .map_err(|e| io_err(&path, "cannot stat", e))?;
        if options.preallocate && meta.len() < options.segment_bytes {
            allocate(&active, &path, options.segment_bytes)?;
            fsync_file(&active, &path, SyncKind::All, &mut power_cut)?;
        }
        if let Some(pc) = &mut power_cut {
            pc.synced_len(std::os::unix::fs::MetadataExt::ino(&meta), last.bytes);
        }
        let mut store = Storage::assemble(
            dir, lock, cluster_id, node_id, options, hard_state, log, segments, active, snapshot,
            power_cut,
        )?;
        if let Some((index, term)) = reset {
            // Not counted as a power-cut operation: no cut at start-up.
            store.guard(|s| s.reset_log(index, term))?;
        }
        Ok((
            store,
            Recovered {
                hard_state,
                snapshot: snapshot_info,
                entries,
                first_boot: false,
            },
        ))
    }

    /// The store of a first boot: an empty `log-1`, created atomically so
    /// that a segment always has a whole header.
    fn first_segment(
        dir: &Path,
        lock: File,
        cluster_id: u64,
        node_id: NodeId,
        options: StorageOptions,
        hard_state: HardState,
        mut power_cut: Option<PowerCut>,
    ) -> Result<Storage, StorageError> {
        let h = SegmentHeader {
            first: LogIndex(1),
            prev_term: Term(0),
        };
        let active = create_segment(
            dir,
            cluster_id,
            node_id,
            h,
            options.preallocation(),
            &mut power_cut,
        )?;
        let log = LogTerms::new(LogIndex(0), Some(Term(0)), VecDeque::new());
        let segments = vec![Segment {
            first: h.first,
            bytes: SEGMENT_HEADER_LEN as u64,
        }];
        Storage::assemble(
            dir, lock, cluster_id, node_id, options, hard_state, log, segments, active, None,
            power_cut,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        lock: File,
        cluster_id: u64,
        node_id: NodeId,
        options: StorageOptions,
        hard_state: HardState,
        log: LogTerms,
        segments: Vec<Segment>,
        active: File,
        snapshot: Option<CurrentSnapshot>,
        power_cut: Option<PowerCut>,
    ) -> Result<Storage, StorageError> {
        // After recovery the last term is known: a base of unknown term
        // lies below the snapshot's index, whose entry the log then holds,
        // or the log is about to be reset to that entry (`open`), which
        // sets this before it is used.
        let synced_last = (log.last_index(), log.last_term().unwrap_or(Term(0)));
        Ok(Storage {
            dir: dir.to_path_buf(),
            _lock: lock,
            cluster_id,
            node_id,
            options,
            hard_state,
            hard_state_dirty: false,
            log,
            synced_last,
            segments,
            active,
            sync_file: None,
            buf: Vec::new(),
            poisoned: false,
            snapshot,
            writer: None,
            incoming: None,
            refused_incoming: None,
            incoming_refusals: 0,
            refusal_logged_at: None,
            power_cut,
            trash: Trash::new(dir),
            syncer: None,
            in_flight: None,
            finished: None,
        })
    }

    /// Buffers a new term and vote, durable after the next [`Storage::sync`].
    ///
    /// Panics if the term goes down: terms only grow (§5.1).
    pub fn save_hard_state(&mut self, hard_state: HardState) {
        assert!(
            hard_state.current_term >= self.hard_state.current_term,
            "hard state term must not go down: {} -> {}",
            self.hard_state.current_term,
            hard_state.current_term
        );
        if hard_state != self.hard_state {
            self.hard_state = hard_state;
            self.hard_state_dirty = true;
        }
    }

    /// Buffers the removal of every entry with index `>= from`, durable after
    /// the next [`Storage::sync`].
    ///
    /// Panics unless `first_index <= from <= last_index + 1` and `from` is
    /// above the snapshot's last index (a committed entry is never removed).
    pub fn truncate(&mut self, from: LogIndex) {
        assert!(
            from > self.log.base() && from <= self.last_index().next(),
            "truncate from {from} outside {}..={}",
            self.log.base().next(),
            self.last_index().next()
        );
        if let Some(s) = &self.snapshot {
            assert!(
                from > s.info.last_index,
                "truncate from {from}, at or below the snapshot's last index {}",
                s.info.last_index
            );
        }
        push_truncate(&mut self.buf, from);
        self.log.truncate(from);
    }

    /// Buffers entries for appending, durable after the next
    /// [`Storage::sync`].
    ///
    /// Panics if an entry does not follow the last one (index + 1), has a
    /// term below the previous entry's or above the current term, is of term
    /// 0, or carries more than [`MAX_PAYLOAD_LEN`] bytes: the node never asks
    /// for any of these.
    pub fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            let last = self.last_index();
            assert_eq!(
                e.index,
                last.next(),
                "appended entry does not follow the log"
            );
            assert!(e.term.0 >= 1, "entry {} has term 0", e.index);
            if let Some(prev) = self.log.last_term() {
                assert!(
                    e.term >= prev,
                    "entry {} term {} < previous term {prev}",
                    e.index,
                    e.term
                );
            }
            assert!(
                e.term <= self.hard_state.current_term,
                "entry {} term {} above current term {}",
                e.index,
                e.term,
                self.hard_state.current_term
            );
            assert!(
                e.payload_len() <= MAX_PAYLOAD_LEN,
                "entry {} payload of {} bytes exceeds {MAX_PAYLOAD_LEN}",
                e.index,
                e.payload_len()
            );
            push_entry(&mut self.buf, e);
            self.log.push(e.term);
        }
    }

    /// Makes everything buffered since the last sync durable: `meta` first
    /// (if the hard state changed), then a new segment if one is due, then
    /// the log records as one batch with one fdatasync.
    ///
    /// `meta` goes first so that the log never holds an entry whose term is
    /// above the durable term (which recovery checks). On error the store is
    /// poisoned and the driver must stop: after a failed fsync the kernel may
    /// have dropped the dirty pages, so retrying could report success for
    /// data that is gone.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.guard(Storage::sync_inner)
    }

    /// Runs `op` unless the store is poisoned, and poisons it if `op` fails.
    fn guard<T>(
        &mut self,
        op: impl FnOnce(&mut Storage) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned {
                path: self.dir.clone(),
            });
        }
        let r = op(self);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn sync_inner(&mut self) -> Result<(), StorageError> {
        // Nothing is written while a batch's fdatasync runs.
        self.wait_in_flight()?;
        let records = !self.buf.is_empty();
        let roll = records && self.roll_due();
        if let Some(pc) = &mut self.power_cut {
            // Cut points, in order: meta.tmp written, meta renamed, log.tmp
            // written, new segment renamed, first batch written.
            pc.begin_op(
                2 * u64::from(self.hard_state_dirty) + 2 * u64::from(roll) + u64::from(records),
            );
        }
        if self.hard_state_dirty {
            write_meta(
                &self.dir,
                self.cluster_id,
                self.node_id,
                self.hard_state,
                &mut self.power_cut,
            )?;
            self.hard_state_dirty = false;
        }
        if roll {
            self.roll()?;
        }
        self.write_batches()
    }

    /// Whether the next records go into a new segment: the active one is
    /// full, and a new one's name (the index after the last synced entry)
    /// sorts after it.
    fn roll_due(&self) -> bool {
        let active = self.active_segment();
        active.bytes >= self.options.segment_bytes && self.synced_last.0.next() > active.first
    }

    fn active_segment(&self) -> Segment {
        *self.segments.last().expect("there is an active segment")
    }

    /// Starts a new segment after the last synced entry and makes it the
    /// active one. It is durable (directory fsynced) before anything is
    /// written into it.
    fn roll(&mut self) -> Result<(), StorageError> {
        let (last, term) = self.synced_last;
        let h = SegmentHeader {
            first: last.next(),
            prev_term: term,
        };
        assert!(
            h.first > self.active_segment().first,
            "a new segment must sort after the active one"
        );
        self.sync_file = None;
        self.active = create_segment(
            &self.dir,
            self.cluster_id,
            self.node_id,
            h,
            self.options.preallocation(),
            &mut self.power_cut,
        )?;
        self.segments.push(Segment {
            first: h.first,
            bytes: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    /// Writes the buffered records into the active segment, one batch per
    /// fdatasync: recovery relies on a batch being written only after the
    /// previous one is durable.
    fn write_batches(&mut self) -> Result<(), StorageError> {
        let path = self.dir.join(segment_name(self.active_segment().first));
        let mut start = 0;
        while start < self.buf.len() {
            start = self.write_batch(start)?;
            // fdatasync also persists the new file size when the batch
            // grew the file (no preallocation, or a segment past it).
            fsync_file(&self.active, &path, SyncKind::Data, &mut self.power_cut)?;
        }
        self.synced_last = self.buffer_written();
        Ok(())
    }

    /// Writes the batch that starts at record boundary `start` of the
    /// buffer into the active segment, without fsync (a cut point follows
    /// the write); returns where it ends.
    fn write_batch(&mut self, start: usize) -> Result<usize, StorageError> {
        let path = self.dir.join(segment_name(self.active_segment().first));
        let end = batch_end(&self.buf, start);
        let body = &self.buf[start..end];
        // At the end of the data, not of the file: a preallocated segment
        // is longer.
        let at = self.active_segment().bytes;
        self.active
            .write_all_at(&encode_batch_header(body), at)
            .and_then(|()| self.active.write_all_at(body, at + BATCH_HEADER_LEN as u64))
            .map_err(|e| io_err(&path, "cannot write", e))?;
        let data_end = at + (BATCH_HEADER_LEN + body.len()) as u64;
        if let Some(pc) = &mut self.power_cut {
            pc.segment_written(&self.active, data_end);
        }
        cut_point(&mut self.power_cut);
        let active = self
            .segments
            .last_mut()
            .expect("there is an active segment");
        active.bytes = data_end;
        Ok(end)
    }

    /// The whole buffer was written: empties it, and returns the last
    /// entry the segments now hold.
    fn buffer_written(&mut self) -> (LogIndex, Term) {
        self.buf.clear();
        // Do not keep a large buffer from one big batch forever.
        if self.buf.capacity() > 4 * MAX_RECORD_LEN {
            self.buf = Vec::new();
        }
        (
            self.log.last_index(),
            self.log
                .last_term()
                .expect("log invariant: the last entry's term is known"),
        )
    }

    /// From now on [`Storage::start_sync`] may leave the fdatasync of the
    /// log to a helper thread, which calls `notify` when it is done
    /// (`syncer.rs`).
    pub fn sync_in_background(&mut self, notify: impl Fn() + Send + 'static) -> io::Result<()> {
        assert!(self.syncer.is_none(), "sync_in_background called twice");
        self.syncer = Some(Syncer::start(Box::new(notify))?);
        Ok(())
    }

    /// Starts making everything buffered durable. `Ok(true)`: durable on
    /// return, as after [`Storage::sync`]. `Ok(false)`: the records were
    /// written as one batch whose fdatasync runs on the helper thread
    /// (only when [`Storage::sync_in_background`] was called, the hard
    /// state is unchanged, no new segment is due and the records fit in
    /// one batch; otherwise the sync is done here); after `notify`, call
    /// [`Storage::finish_sync`]. Errors poison the store, as with `sync`.
    ///
    /// Panics if a background sync is in flight or not yet reported by
    /// `finish_sync` (one at a time, as the driver does).
    pub fn start_sync(&mut self) -> Result<bool, StorageError> {
        assert!(
            self.in_flight.is_none() && self.finished.is_none(),
            "start_sync before the previous background sync was reported by finish_sync"
        );
        self.guard(|s| {
            let background = s.syncer.is_some()
                && !s.hard_state_dirty
                && !s.buf.is_empty()
                && !s.roll_due()
                && batch_end(&s.buf, 0) == s.buf.len();
            if !background {
                s.sync_inner()?;
                return Ok(true);
            }
            if let Some(pc) = &mut s.power_cut {
                // The one cut point: the batch written, before its fsync.
                pc.begin_op(1);
            }
            s.write_batch(0)?;
            let last = s.buffer_written();
            let path = s.dir.join(segment_name(s.active_segment().first));
            let file = match &s.sync_file {
                Some(f) => f.clone(),
                None => {
                    let f = std::sync::Arc::new(
                        s.active
                            .try_clone()
                            .map_err(|e| io_err(&path, "cannot duplicate the descriptor of", e))?,
                    );
                    s.sync_file = Some(f.clone());
                    f
                }
            };
            let durable = match &s.power_cut {
                None => None,
                Some(_) => {
                    use std::os::unix::fs::MetadataExt;
                    let m = file
                        .metadata()
                        .map_err(|e| io_err(&path, "cannot stat", e))?;
                    Some((m.ino(), s.active_segment().bytes))
                }
            };
            s.syncer.as_ref().expect("checked above").submit(file, path);
            s.in_flight = Some(InFlight { last, durable });
            Ok(false)
        })
    }

    /// The background sync [`Storage::start_sync`] started, if it is done:
    /// how long its fdatasync took, or its error (the store is poisoned
    /// then). `None`: still running, or none was started.
    pub fn finish_sync(&mut self) -> Option<Result<Duration, StorageError>> {
        if let Some(took) = self.finished.take() {
            return Some(Ok(took));
        }
        self.in_flight.as_ref()?;
        let done = self.syncer.as_ref()?.try_done()?;
        Some(self.complete_in_flight(done))
    }

    /// Waits for the background sync in flight, if any: the next batch may
    /// be written only once it is durable. Its outcome is kept for
    /// [`Storage::finish_sync`].
    fn wait_in_flight(&mut self) -> Result<(), StorageError> {
        let Some(syncer) = self.syncer.as_ref().filter(|_| self.in_flight.is_some()) else {
            return Ok(());
        };
        let done = syncer.wait();
        self.finished = Some(self.complete_in_flight(done)?);
        Ok(())
    }

    fn complete_in_flight(&mut self, done: Done) -> Done {
        let f = self.in_flight.take().expect("a background sync in flight");
        match &done {
            Ok(_) => {
                self.synced_last = f.last;
                if let (Some(pc), Some((ino, len))) = (&mut self.power_cut, f.durable) {
                    pc.synced_len(ino, len);
                }
            }
            Err(_) => self.poisoned = true,
        }
        done
    }

    /// Discards the whole log, which does not hold `(index, term)`, the
    /// snapshot's last entry (§7): a reset record, durable before anything
    /// is deleted; a new segment at `index + 1` when its name sorts after
    /// the active one; then the older segments go.
    fn reset_log(&mut self, index: LogIndex, term: Term) -> Result<(), StorageError> {
        assert!(self.buf.is_empty(), "reset with records buffered");
        push_reset(&mut self.buf, index, term);
        self.log.reset(index, term);
        self.write_batches()?;
        if index.next() > self.active_segment().first {
            self.roll()?;
        }
        self.delete_segments(self.segments.len() - 1)
    }

    /// Cut points of [`Storage::reset_log`] to `index`.
    fn reset_points(&self, index: LogIndex) -> u64 {
        1 + 2 * u64::from(index.next() > self.active_segment().first)
    }

    /// Deletes the `n` oldest segments (never the active one): moved to
    /// the trash at once, so that their names are gone for recovery and
    /// for the tests, and unlinked by the trash's helper thread (unlinking
    /// a 16 MiB segment here took the event loop 12 ms, tens under load).
    /// No fsync: module docs.
    fn delete_segments(&mut self, n: usize) -> Result<(), StorageError> {
        assert!(
            n < self.segments.len(),
            "the active segment is never deleted"
        );
        for s in self.segments.drain(..n) {
            self.trash
                .discard(&segment_name(s.first), &mut self.power_cut)?;
        }
        Ok(())
    }

    /// Whether anything is buffered that [`Storage::sync`] would write.
    pub fn needs_sync(&self) -> bool {
        self.hard_state_dirty || !self.buf.is_empty()
    }

    /// Index of the last entry known durable (its batch's fsync is done).
    pub fn synced_index(&self) -> u64 {
        self.synced_last.0 .0
    }

    /// Index of the last entry as of the latest buffered operation.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
}

// Snapshots and compaction.
impl Storage {
    /// Index of the first entry the store holds (the log's segments may
    /// begin before the snapshot's last index; those entries stay until
    /// [`Storage::compact`]).
    pub fn first_index(&self) -> LogIndex {
        self.log.base().next()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Option<SnapshotInfo> {
        self.snapshot.as_ref().map(|s| s.info)
    }

    /// Bytes of log data in the segments (a preallocated segment's file is
    /// longer).
    pub fn log_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Number of log segments on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Deletes the segments whose every index is `<= through`, except the
    /// active one, and forgets their entries. The deletions are not
    /// fsynced (module docs).
    ///
    /// Panics unless there is a snapshot and `through` is at or below its
    /// last index.
    pub fn compact(&mut self, through: LogIndex) -> Result<(), StorageError> {
        let snapshot = self.snapshot();
        assert!(
            snapshot.is_some_and(|s| through <= s.last_index),
            "compact through {through} beyond the snapshot ({snapshot:?})"
        );
        // A segment's every index is below the next one's first.
        let n = self
            .segments
            .windows(2)
            .take_while(|w| w[1].first.prev() <= through)
            .count();
        if n == 0 {
            return Ok(());
        }
        self.guard(|s| s.delete_segments(n))?;
        let new_base = self.segments[0].first.prev();
        if new_base > self.log.base() {
            self.log.compact_to(new_base);
        }
        Ok(())
    }

    /// Starts a local snapshot through entry `(last_index, last_term)`:
    /// creates `snapshot.tmp` and returns its writer, which may be moved to
    /// another thread. When it is finished, pass its info to
    /// [`Storage::commit_snapshot`]; if it fails, call
    /// [`Storage::abort_snapshot`].
    ///
    /// Panics if another writer is outstanding, if `last_index` is not
    /// above the current snapshot's, or if the log does not hold that
    /// entry (caller misuse).
    pub fn snapshot_writer(
        &mut self,
        last_index: LogIndex,
        last_term: Term,
    ) -> Result<SnapshotWriter, StorageError> {
        assert!(
            self.writer.is_none(),
            "a local snapshot is already being written: commit or abort it first"
        );
        if let Some(s) = self.snapshot() {
            assert!(
                last_index > s.last_index,
                "snapshot at {last_index}, not above the current one at {}",
                s.last_index
            );
        }
        assert!(
            last_index.0 >= 1 && last_index <= self.last_index(),
            "snapshot at {last_index}, outside the log 1..={}",
            self.last_index()
        );
        if let Some(t) = self.log.term_at(last_index) {
            assert_eq!(t, last_term, "snapshot at {last_index} of the wrong term");
        }
        let w = self.guard(|s| {
            let path = s.dir.join(SNAPSHOT_TMP);
            let file = create_file(&path, &mut s.power_cut)?;
            let ledger = s.power_cut.as_ref().map(PowerCut::ledger);
            SnapshotWriter::new(file, path, s.cluster_id, last_index, last_term, ledger)
        })?;
        self.writer = Some((last_index, last_term));
        Ok(w)
    }

    /// Makes the snapshot a [`SnapshotWriter`] finished the current one:
    /// syncs everything buffered, renames `snapshot.tmp` over `snapshot`
    /// and fsyncs the directory (module docs). Only then may
    /// [`Storage::compact`] go up to its index.
    ///
    /// Returns `Ok(false)`, removing `snapshot.tmp`, when the snapshot is
    /// no longer newer than the current one (a snapshot from the leader was
    /// installed meanwhile): not an error, the writer's work is simply
    /// superseded. Panics if `info` is not what the outstanding writer was
    /// started for.
    #[must_use = "Ok(false): the snapshot was superseded and discarded"]
    pub fn commit_snapshot(&mut self, info: SnapshotInfo) -> Result<bool, StorageError> {
        let pending = self
            .writer
            .take()
            .expect("commit_snapshot without an outstanding snapshot_writer");
        assert_eq!(
            pending,
            (info.last_index, info.last_term),
            "commit_snapshot of another snapshot than the writer's"
        );
        if self
            .snapshot()
            .is_some_and(|s| s.last_index >= info.last_index)
        {
            log::info!(
                "local snapshot at {} superseded by the snapshot at {}: discarded",
                info.last_index,
                self.snapshot().map_or(LogIndex(0), |s| s.last_index)
            );
            // Rare (a leader's snapshot overtook this one), so deleted
            // here rather than through the trash: nothing stays behind.
            self.guard(|s| remove_file(&s.dir, SNAPSHOT_TMP, &mut s.power_cut))?;
            return Ok(false);
        }
        self.guard(|s| s.commit_inner(info))?;
        Ok(true)
    }

    fn commit_inner(&mut self, info: SnapshotInfo) -> Result<(), StorageError> {
        self.sync_inner()?;
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let file = File::open(&tmp).map_err(|e| io_err(&tmp, "cannot open", e))?;
        // The writer wrote and fsynced it; a cheap check that the file is
        // the one `info` describes.
        let h = read_snapshot_header(&tmp, &file, self.cluster_id)?;
        if h.info() != info {
            return Err(corrupt(
                &tmp,
                20,
                format!(
                    "the file is {:?}, not the finished snapshot {info:?}",
                    h.info()
                ),
            ));
        }
        if let Some(pc) = &mut self.power_cut {
            // Cut points: before the rename, before the directory fsync.
            pc.begin_op(2);
        }
        cut_point(&mut self.power_cut);
        // The rename would free the old snapshot (hundreds of MB for a
        // large store) on this thread: the trash keeps a name for it.
        let old = self.trash.link(SNAPSHOT_FILE);
        rename_into_place(&self.dir, SNAPSHOT_TMP, SNAPSHOT_FILE, &mut self.power_cut)?;
        cut_point(&mut self.power_cut);
        fsync_dir(&self.dir, &mut self.power_cut)?;
        self.snapshot = Some(CurrentSnapshot { info, file });
        self.trash.delete(old, &mut self.power_cut)
    }

    /// Removes `snapshot.tmp` left by a writer that failed or was dropped,
    /// and forgets the writer. Does nothing if there is none.
    pub fn abort_snapshot(&mut self) -> Result<(), StorageError> {
        self.writer = None;
        self.guard(|s| remove_file(&s.dir, SNAPSHOT_TMP, &mut s.power_cut))
    }

    /// Reads up to `len` bytes at `offset` of the current snapshot's file
    /// (header and payload: the blob sent to other members), which must be
    /// the one through `last_index`; fewer at the end of the file.
    ///
    /// Fails with [`StorageError::SnapshotReplaced`] (not fatal) if the
    /// current snapshot is another one: the sender should start over with
    /// the new one. Panics if `offset` is past the end of the file.
    pub fn read_snapshot_chunk(
        &self,
        last_index: LogIndex,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, StorageError> {
        let current = match &self.snapshot {
            Some(s) if s.info.last_index == last_index => s,
            other => {
                return Err(StorageError::SnapshotReplaced {
                    wanted: last_index,
                    current: other.as_ref().map(|s| s.info.last_index),
                })
            }
        };
        assert!(
            offset <= current.info.len,
            "chunk at offset {offset} past the end of the {}-byte snapshot",
            current.info.len
        );
        let n = (len as u64).min(current.info.len - offset) as usize;
        let mut buf = vec![0u8; n];
        let path = self.dir.join(SNAPSHOT_FILE);
        current
            .file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| io_err(&path, "cannot read", e))?;
        Ok(Bytes::from(buf))
    }

    /// The current snapshot and a reader of its payload (module docs of
    /// [`SnapshotReader`] for how it reports a damaged payload), or `None`.
    /// The reader must be done before the snapshot is replaced (the next
    /// [`Storage::commit_snapshot`] or [`Storage::install_incoming`]): the
    /// replaced file is shrunk in the background (`trash.rs`).
    pub fn snapshot_payload(&self) -> Result<Option<(SnapshotInfo, SnapshotReader)>, StorageError> {
        let Some(current) = &self.snapshot else {
            return Ok(None);
        };
        // A descriptor of its own, so that its file offset is its own.
        let path = self.dir.join(SNAPSHOT_FILE);
        let file = File::open(&path).map_err(|e| io_err(&path, "cannot open", e))?;
        let h = read_snapshot_header(&path, &file, self.cluster_id)?;
        if h.info() != current.info {
            return Err(corrupt(
                &path,
                20,
                format!(
                    "the file is {:?}, not the current snapshot {:?}: changed behind the store",
                    h.info(),
                    current.info
                ),
            ));
        }
        Ok(Some((current.info, SnapshotReader::new(file, path, &h)?)))
    }

    /// Why a snapshot of `len` bytes announced by a leader cannot be
    /// received here, if it cannot: over the configured limit, or more
    /// than the file system has free (with headroom for the log).
    fn incoming_refusal(&self, len: u64) -> Option<String> {
        let max = self.options.max_incoming_snapshot;
        if len > max {
            return Some(format!("{len} bytes announced, over the {max}-byte limit"));
        }
        match free_bytes(&self.dir) {
            Ok(free) if len.saturating_add(INCOMING_SNAPSHOT_HEADROOM) > free => Some(format!(
                "{len} bytes announced, {free} bytes free on the data dir's file system"
            )),
            // The write itself fails then, and is fatal like any other.
            _ => None,
        }
    }

    fn refuse_incoming(&mut self, info: SnapshotInfo, why: &str) {
        self.refused_incoming = Some(info);
        self.incoming_refusals += 1;
        let now = std::time::Instant::now();
        if self
            .refusal_logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL)
        {
            log::warn!(
                "the leader's snapshot through {} of term {} refused unwritten: {why} \
                 ({} refused since start; logged at most once a minute)",
                info.last_index,
                info.last_term,
                self.incoming_refusals
            );
            self.refusal_logged_at = Some(now);
        }
    }

    /// Snapshots from a leader refused unwritten since start (see
    /// [`StorageOptions::max_incoming_snapshot`]).
    pub fn incoming_refusals(&self) -> u64 {
        self.incoming_refusals
    }

    /// Writes `data`, received from the leader at `offset` of the snapshot
    /// file `info` describes, into `snapshot.incoming`. Offset 0 starts
    /// over (creating or emptying the file); a later chunk must continue
    /// the same `info` exactly where the previous one ended. No fsync
    /// ([`Storage::install_incoming`] does it).
    ///
    /// Panics if a chunk does not follow (caller misuse: the node accepts
    /// chunks in order) or would reach past `info.len`.
    pub fn write_incoming_chunk(
        &mut self,
        info: SnapshotInfo,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if offset == 0 {
            self.incoming = None;
            self.refused_incoming = None;
            if let Some(why) = self.incoming_refusal(info.len) {
                self.refuse_incoming(info, &why);
                return self.guard(|s| remove_file(&s.dir, SNAPSHOT_INCOMING, &mut s.power_cut));
            }
            let inc = self.guard(|s| {
                let path = s.dir.join(SNAPSHOT_INCOMING);
                let file = create_file(&path, &mut s.power_cut)?;
                Ok(Incoming::new(info, file))
            })?;
            self.incoming = Some(inc);
        }
        if self.refused_incoming == Some(info) {
            return Ok(());
        }
        let inc = self
            .incoming
            .as_ref()
            .unwrap_or_else(|| panic!("snapshot chunk at offset {offset} before the one at 0"));
        assert_eq!(inc.info, info, "snapshot chunk of another snapshot");
        assert_eq!(
            offset, inc.written,
            "snapshot chunk at offset {offset}, but {} bytes were received",
            inc.written
        );
        assert!(
            offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= info.len),
            "snapshot chunk of {} bytes at {offset} past the snapshot's {} bytes",
            data.len(),
            info.len
        );
        self.guard(|s| {
            let inc = s.incoming.as_mut().expect("checked above");
            inc.file
                .write_all_at(data, offset)
                .map_err(|e| io_err(&s.dir.join(SNAPSHOT_INCOMING), "cannot write", e))?;
            inc.received(data);
            Ok(())
        })
    }

    /// Makes the received snapshot `info` current, if it is valid (module
    /// docs): syncs everything buffered, fsyncs `snapshot.incoming`,
    /// renames it over `snapshot`, fsyncs the directory, then keeps the
    /// log after the snapshot's last entry if the log holds it, or discards
    /// the whole log (§7).
    ///
    /// Returns `Ok(false)`, with `snapshot.incoming` removed and nothing
    /// else changed, when the received file is not a valid snapshot
    /// matching `info` (length, header, cluster, index and term, checksum,
    /// a term above the current one) or is not newer than the current
    /// snapshot: what a broken or hostile sender causes. Panics if `info`
    /// is not the snapshot being received.
    #[must_use = "Ok(false): the snapshot was refused"]
    pub fn install_incoming(&mut self, info: SnapshotInfo) -> Result<bool, StorageError> {
        if self.refused_incoming == Some(info) {
            self.refused_incoming = None;
            return Ok(false);
        }
        let inc = self
            .incoming
            .take()
            .expect("install_incoming without snapshot chunks");
        assert_eq!(inc.info, info, "install of another snapshot than received");
        let fault = inc
            .fault(self.cluster_id)
            .map(|f| f.to_string())
            .or_else(|| {
                if let Some(s) = self.snapshot().filter(|s| s.last_index >= info.last_index) {
                    Some(format!(
                        "not newer than the current snapshot at {}",
                        s.last_index
                    ))
                } else if info.last_term > self.hard_state.current_term {
                    Some(format!(
                        "its last term {} is above the current term {}",
                        info.last_term, self.hard_state.current_term
                    ))
                } else {
                    None
                }
            });
        if let Some(why) = fault {
            log::warn!(
                "{}: received snapshot through {} of term {} refused: {why}",
                self.dir.join(SNAPSHOT_INCOMING).display(),
                info.last_index,
                info.last_term
            );
            drop(inc);
            self.guard(|s| remove_file(&s.dir, SNAPSHOT_INCOMING, &mut s.power_cut))?;
            return Ok(false);
        }
        self.guard(|s| s.install_inner(inc))?;
        Ok(true)
    }

    fn install_inner(&mut self, inc: Incoming) -> Result<(), StorageError> {
        self.sync_inner()?;
        let SnapshotInfo {
            last_index: index,
            last_term: term,
            ..
        } = inc.info;
        let keep = self.log.term_at(index) == Some(term);
        // Cut points: before the fsync, before the directory fsync, and
        // those of the reset.
        let points = 2 + if keep { 0 } else { self.reset_points(index) };
        if let Some(pc) = &mut self.power_cut {
            pc.begin_op(points);
        }
        let path = self.dir.join(SNAPSHOT_INCOMING);
        cut_point(&mut self.power_cut);
        fsync_file(&inc.file, &path, SyncKind::All, &mut self.power_cut)?;
        // As in `commit_inner`: the old snapshot is freed by the trash.
        let old = self.trash.link(SNAPSHOT_FILE);
        rename_into_place(
            &self.dir,
            SNAPSHOT_INCOMING,
            SNAPSHOT_FILE,
            &mut self.power_cut,
        )?;
        cut_point(&mut self.power_cut);
        fsync_dir(&self.dir, &mut self.power_cut)?;
        self.snapshot = Some(CurrentSnapshot {
            info: inc.info,
            file: inc.file,
        });
        self.trash.delete(old, &mut self.power_cut)?;
        if !keep {
            log::info!(
                "snapshot through {index} of term {term} installed; the log does not hold that \
                 entry (§7): discarded"
            );
            self.reset_log(index, term)?;
        }
        Ok(())
    }
}

impl Recovered {
    fn first_boot(hard_state: HardState) -> Recovered {
        Recovered {
            hard_state,
            snapshot: None,
            entries: Vec::new(),
            first_boot: true,
        }
    }
}

/// Why the store could not be opened or written. `Display` is one line naming
/// the file.
#[derive(Debug)]
pub enum StorageError {
    /// An I/O operation failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another process holds the data dir's lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A file's contents are invalid.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad record or field.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A file was written in a storage format this build does not read.
    Version {
        /// The file.
        path: PathBuf,
        /// The format version it carries.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A file the data dir's state requires is missing.
    Missing {
        /// The missing file.
        path: PathBuf,
        /// Why it is required.
        why: String,
    },
    /// The data dir belongs to another cluster or member.
    Foreign {
        /// The file that says so.
        path: PathBuf,
        /// Whose it is.
        what: String,
    },
    /// An earlier error left the files in an unknown state.
    Poisoned {
        /// The data dir.
        path: PathBuf,
    },
    /// A power-cut switch in the environment has an unusable value.
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        what: String,
    },
    /// Not fatal: [`Storage::read_snapshot_chunk`] was asked for a snapshot
    /// that is no longer the current one.
    SnapshotReplaced {
        /// The snapshot asked for (its last index).
        wanted: LogIndex,
        /// The current one's, if any.
        current: Option<LogIndex>,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, op, source } => {
                write!(f, "{}: {op}: {source}", path.display())
            }
            StorageError::Locked { path } => write!(
                f,
                "{}: the data dir is in use by another process (lock held)",
                path.display()
            ),
            StorageError::Corrupt { path, offset, what } => {
                write!(
                    f,
                    "{}: corrupt at byte offset {offset}: {what}",
                    path.display()
                )
            }
            StorageError::Version {
                path,
                found,
                expected,
            } => write!(
                f,
                "{}: storage format version {found}, but this raft-node reads only version \
                 {expected} (there is no in-place upgrade): run the raft-node release that \
                 wrote this data dir",
                path.display()
            ),
            StorageError::Missing { path, why } => write!(f, "{}: {why}", path.display()),
            StorageError::Foreign { path, what } => write!(f, "{}: {what}", path.display()),
            StorageError::Poisoned { path } => write!(
                f,
                "{}: an earlier write or fsync failed; the state of the files is unknown",
                path.display()
            ),
            StorageError::Env { var, what } => write!(f, "environment variable {var}: {what}"),
            StorageError::SnapshotReplaced { wanted, current } => write!(
                f,
                "the snapshot through {wanted} is no longer current ({})",
                match current {
                    Some(c) => format!("the current one ends at {c}"),
                    None => "there is none".into(),
                }
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: what.into(),
    }
}

fn take_lock(path: &Path) -> Result<File, StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_err(path, "cannot open lock file", e))?;
    // SAFETY: flock takes a file descriptor that `file` owns and keeps open
    // for the call's duration; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StorageError::Locked {
                path: path.to_path_buf(),
            });
        }
        return Err(io_err(path, "cannot lock", e));
    }
    Ok(file)
}

/// Refuses a data dir with the single log file of format version 3 and
/// before, naming its version.
fn refuse_old_log(dir: &Path) -> Result<(), StorageError> {
    let path = dir.join(OLD_LOG_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&path, "cannot open", e)),
    };
    let mut b = Vec::with_capacity(12);
    (&mut f)
        .take(12)
        .read_to_end(&mut b)
        .map_err(|e| io_err(&path, "cannot read", e))?;
    if b.len() == 12 && &b[0..8] == OLD_LOG_MAGIC {
        return Err(StorageError::Version {
            path,
            found: u32_at(&b, 8),
            expected: FORMAT_VERSION,
        });
    }
    Err(corrupt(
        &path,
        0,
        "a file named log has no place in a data dir of format version 4",
    ))
}

/// The names of the trash files in `dir` (`trash.rs`).
fn list_trash(dir: &Path) -> Result<Vec<String>, StorageError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| io_err(dir, "cannot list", e))? {
        let e = e.map_err(|e| io_err(dir, "cannot list", e))?;
        if let Some(name) = e.file_name().to_str().filter(|n| trash::is_trash(n)) {
            v.push(name.to_string());
        }
    }
    Ok(v)
}

/// The first indexes of the segment files in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<LogIndex>, StorageError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| io_err(dir, "cannot list", e))? {
        let e = e.map_err(|e| io_err(dir, "cannot list", e))?;
        if let Some(first) = e.file_name().to_str().and_then(parse_segment_name) {
            v.push(first);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// How much of a file an fsync covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    /// `fdatasync`: the data and the size (enough after an append).
    Data,
    /// `fsync`: the data and all metadata.
    All,
}

/// Makes `file` (at `path`) durable. Every fsync of a data file on the
/// store's thread goes through here (and [`SnapshotWriter::finish`] records
/// its own), and in power-cut mode the record of what is durable is made
/// here and nowhere else: code that skips the fsync skips the record, and
/// the simulated power cut then loses what it would lose on a real disk.
fn fsync_file(
    file: &File,
    path: &Path,
    kind: SyncKind,
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    match kind {
        SyncKind::Data => file.sync_data(),
        SyncKind::All => file.sync_all(),
    }
    .map_err(|e| io_err(path, "cannot fsync", e))?;
    if let Some(pc) = power_cut {
        pc.file_synced(file);
    }
    Ok(())
}

/// Makes the directory's entries (renames, creations, deletions) durable;
/// in power-cut mode, records that, like [`fsync_file`].
fn fsync_dir(dir: &Path, power_cut: &mut Option<PowerCut>) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot fsync directory", e))?;
    if let Some(pc) = power_cut {
        pc.dir_synced();
    }
    Ok(())
}

/// Creates (or empties) the file at `path` for writing.
fn create_file(path: &Path, power_cut: &mut Option<PowerCut>) -> Result<File, StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_err(path, "cannot create", e))?;
    if let Some(pc) = power_cut {
        pc.created(&f);
    }
    Ok(f)
}

/// Renames `dir/from` to `dir/to`, replacing it; durable after the next
/// directory fsync.
fn rename_into_place(
    dir: &Path,
    from: &str,
    to: &str,
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    if let Some(pc) = power_cut {
        pc.before_unlink(to);
    }
    let path = dir.join(to);
    fs::rename(dir.join(from), &path).map_err(|e| io_err(&path, "cannot rename into place", e))
}

/// Removes `dir/name` if it exists; durable after the next directory
/// fsync.
/// Bytes available to this process on the file system holding `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the data dir's path"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a struct to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn remove_file(
    dir: &Path,
    name: &str,
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    if let Some(pc) = power_cut {
        pc.before_unlink(name);
    }
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&path, "cannot remove", e)),
    }
}

/// Writes `bytes` to `dir/tmp`, fsyncs it, renames it to `dir/name` and
/// fsyncs the directory: after a crash `name` holds either its old contents
/// (or does not exist) or all of `bytes`.
fn replace_atomically(
    dir: &Path,
    tmp: &str,
    name: &str,
    bytes: &[u8],
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    let tmp_path = dir.join(tmp);
    let mut f = create_file(&tmp_path, power_cut)?;
    f.write_all(bytes)
        .map_err(|e| io_err(&tmp_path, "cannot write", e))?;
    cut_point(power_cut);
    fsync_file(&f, &tmp_path, SyncKind::All, power_cut)?;
    drop(f);
    rename_into_place(dir, tmp, name, power_cut)?;
    cut_point(power_cut);
    fsync_dir(dir, power_cut)
}

/// Creates the segment `h` describes, empty, atomically (written as
/// `log.tmp`, fsynced, renamed, directory fsynced), `preallocate` bytes
/// long when that is above the header's length (the rest reads as
/// zeroes), and returns it open for writing.
fn create_segment(
    dir: &Path,
    cluster_id: u64,
    node_id: NodeId,
    h: SegmentHeader,
    preallocate: u64,
    power_cut: &mut Option<PowerCut>,
) -> Result<File, StorageError> {
    let tmp_path = dir.join(SEGMENT_TMP);
    let mut f = create_file(&tmp_path, power_cut)?;
    f.write_all(&encode_segment_header(cluster_id, node_id, h))
        .map_err(|e| io_err(&tmp_path, "cannot write", e))?;
    if let Some(pc) = power_cut {
        pc.segment_written(&f, SEGMENT_HEADER_LEN as u64);
    }
    if preallocate > SEGMENT_HEADER_LEN as u64 {
        allocate(&f, &tmp_path, preallocate)?;
    }
    cut_point(power_cut);
    fsync_file(&f, &tmp_path, SyncKind::All, power_cut)?;
    rename_into_place(dir, SEGMENT_TMP, &segment_name(h.first), power_cut)?;
    cut_point(power_cut);
    fsync_dir(dir, power_cut)?;
    Ok(f)
}

/// Makes `file` `len` bytes long with its blocks allocated (`fallocate`),
/// the new part reading as zeroes. On a filesystem that cannot, says so
/// once and leaves the file as it is: appends then grow it, as without
/// preallocation.
fn allocate(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    use std::os::fd::AsRawFd;
    static UNSUPPORTED_LOGGED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    let len = libc::off_t::try_from(len).expect("segment size fits in off_t");
    loop {
        // SAFETY: fallocate reads no memory of ours; the descriptor is
        // open for the duration of the call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => {
                if !UNSUPPORTED_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::warn!(
                        "{}: the filesystem cannot preallocate log segments (fallocate: {e}); \
                         appends grow them instead, and each fdatasync writes the new size too",
                        path.display()
                    );
                }
                return Ok(());
            }
            // An optimisation is no reason to stop before the disk is
            // really full: appends fail then, as without it.
            Some(libc::ENOSPC) => {
                log::warn!(
                    "{}: no room to preallocate {len} bytes (fallocate: {e}); the segment grows \
                     as it is appended to",
                    path.display()
                );
                return Ok(());
            }
            _ => return Err(io_err(path, "cannot allocate", e)),
        }
    }
}

/// The decoded `meta` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    cluster_id: u64,
    node_id: u64,
    hard_state: HardState,
}

fn encode_meta(cluster_id: u64, node_id: NodeId, hs: HardState) -> [u8; META_LEN] {
    let mut b = [0u8; META_LEN];
    b[0..8].copy_from_slice(META_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&cluster_id.to_le_bytes());
    b[20..28].copy_from_slice(&node_id.0.to_le_bytes());
    b[28..36].copy_from_slice(&hs.current_term.0.to_le_bytes());
    b[36..44].copy_from_slice(&hs.voted_for.map_or(0, |v| v.0).to_le_bytes());
    let crc = crc32c::crc32c(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
    b
}

fn write_meta(
    dir: &Path,
    cluster_id: u64,
    node_id: NodeId,
    hs: HardState,
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    replace_atomically(
        dir,
        META_TMP,
        META_FILE,
        &encode_meta(cluster_id, node_id, hs),
        power_cut,
    )
}

fn read_meta(path: &Path) -> Result<Option<Meta>, StorageError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "cannot open", e)),
    };
    // Read one byte more than expected to notice a file that is too long
    // without reading an arbitrarily large one.
    let mut b = Vec::with_capacity(META_LEN + 1);
    (&mut f)
        .take(META_LEN as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| io_err(path, "cannot read", e))?;
    // The version is checked before the length so that a file of another
    // format (which may have another length) is named as such.
    if b.len() >= 12 && &b[0..8] == META_MAGIC {
        let version = u32_at(&b, 8);
        if version != FORMAT_VERSION {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
    }
    if b.len() != META_LEN {
        let len = b.len();
        let what = if len > META_LEN {
            format!("file is longer than the {META_LEN} bytes of a meta record")
        } else {
            format!("file is {len} bytes, a meta record is {META_LEN}")
        };
        return Err(corrupt(path, len.min(META_LEN) as u64, what));
    }
    if &b[0..8] != META_MAGIC {
        return Err(corrupt(path, 0, "not a meta file (bad magic)"));
    }
    let crc = u32_at(&b, 44);
    if crc32c::crc32c(&b[..44]) != crc {
        return Err(corrupt(path, 44, "checksum mismatch"));
    }
    let voted_for = u64_at(&b, 36);
    Ok(Some(Meta {
        cluster_id: u64_at(&b, 12),
        node_id: u64_at(&b, 20),
        hard_state: HardState {
            current_term: Term(u64_at(&b, 28)),
            voted_for: (voted_for != 0).then_some(NodeId(voted_for)),
        },
    }))
}

fn check_owner(
    path: &Path,
    found_cluster: u64,
    found_node: u64,
    cluster_id: u64,
    node_id: NodeId,
) -> Result<(), StorageError> {
    if found_cluster != cluster_id {
        return Err(StorageError::Foreign {
            path: path.to_path_buf(),
            what: format!(
                "the data dir belongs to cluster {found_cluster:016x}, but the cluster file \
                 describes cluster {cluster_id:016x} (another cluster, or its membership changed)"
            ),
        });
    }
    if found_node != node_id.0 {
        return Err(StorageError::Foreign {
            path: path.to_path_buf(),
            what: format!("the data dir belongs to member {found_node}, not to member {node_id}"),
        });
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
