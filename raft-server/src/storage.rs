//! The durable store in the data dir: term, vote and the Raft log.
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
//! - `log`: a 32-byte header (magic, version, cluster id, member id, CRC32C)
//!   followed by batches, only ever appended to. Each [`Storage::sync`]
//!   writes its records as one batch, `magic "BTCH" | u32 body length |
//!   u32 CRC32C of the body | u32 CRC32C of these 12 bytes | body`, and
//!   fdatasyncs it before the next batch is written. The body is records,
//!   each `u32 length | u32 CRC32C of the length | u32 CRC32C of the body |
//!   body`, little-endian; a record body is an entry `{1, term u64, index
//!   u64, payload kind u8 (0 no-op, 1 command), command bytes}` or a
//!   truncation `{2, from u64}`.
//!
//! Format version 3 introduced the batches; a data dir of an older version
//! is refused with one line naming the version (there is no in-place
//! upgrade).
//!
//! # Truncation
//!
//! Removing a conflicting suffix (§5.3) appends a truncation record instead
//! of shrinking the file. The file then only ever grows, so a crash can only
//! damage its tail, and recovery has a single rule for that. Physically
//! truncating (`ftruncate` and then appending new records over the same byte
//! range) mixes a metadata change with data writes whose ordering after a
//! crash is filesystem-specific: the old suffix, the new records and zeroes
//! could interleave. The price is that dead entries stay on disk and are
//! replayed at start-up; conflicting suffixes are rare (uncommitted entries
//! of a deposed leader) and short.
//!
//! # Durability
//!
//! [`Storage::save_hard_state`], [`Storage::truncate`] and [`Storage::append`]
//! only buffer. [`Storage::sync`] makes everything buffered durable with one
//! log fdatasync (group commit: every entry of a loop turn shares it),
//! writing `meta` first when the hard state changed. Nothing is promised
//! before `sync` returns. (A sync of more than [`MAX_BATCH_LEN`] bytes is
//! split into batches with an fdatasync each, which bounds what a torn batch
//! can cover.)
//!
//! # Recovery
//!
//! [`Storage::open`] validates everything before changing anything. What a
//! power cut can do to the log follows from the write order: a batch is
//! written only after the previous one's fdatasync returned, so at most the
//! last batch is unsynced, and only it can be damaged by the cut. Of that
//! batch the disk may hold any prefix, and within it whole 512-byte sectors
//! (pages, sectors not written back) may read as zeroes instead of the data.
//! So recovery drops the last batch, with a warning, when it is incomplete
//! (runs past the end of the file), or when its damage is a zeroed sector:
//! it was never acknowledged, because `sync` had not returned. Anything else
//! is a [`StorageError`] naming the file, the byte offset and what is wrong,
//! and leaves the disk untouched: a damaged batch with data after it (a
//! later batch proves it was synced), a damaged header that is not zeroes
//! (no torn write produces it), a record whose fields are impossible (an
//! index that does not follow, a term that goes down or is above the
//! current term), a missing or unreadable file, or a data dir of another
//! cluster or member.
//!
//! # Power-cut mode (testing)
//!
//! `SIGKILL` keeps the page cache, so a missing fsync never shows in a test
//! that kills processes. With `RAFT_POWER_CUT_AT_SYNC=N` (a positive
//! integer) or `RAFT_POWER_CUT_FILE=PATH` in the environment, read once by
//! [`Storage::open`], the store simulates losing power: every write goes
//! through as usual, but the store remembers, per file, what an actual
//! fsync made durable (recorded inside the helpers that call fsync, so code
//! that skips an fsync also skips the record). At the N-th [`Storage::sync`]
//! that has anything to write (counting from this process's start), or at
//! the first one after `PATH` exists, it cuts the power at one of the
//! points inside that sync, chosen by the seed: after the log batch was
//! written and before its fdatasync (the point that matters: a group commit
//! in flight), or, when the sync also writes `meta`, after `meta.tmp` was
//! written and before its fsync, or after the rename and before the
//! directory fsync. The cut tears the log at a point between its durable
//! length and its current length, sometimes zeroes whole sectors inside the
//! unsynced part or leaves zeroes after it, puts back the last durable
//! `meta` (a rename not made durable by a directory fsync is lost; a renamed
//! file whose data was never fsynced is empty), deletes the tmp files, and
//! calls [`std::process::abort`]. The files as found at start count as
//! durable. `RAFT_POWER_CUT_SEED` seeds the choices (default: from the OS;
//! the seed is logged). Syncs are counted rather than writes because the
//! instant that matters is between a write and the fsync that makes it
//! durable, and every sync has exactly such instants. Unset, none of this
//! exists: the store keeps no records and behaves as in production.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_proto::{Entry, EntryPayload, HardState, LogIndex, NodeId, Rng, Term};

/// Name of the lock file in the data dir.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the hard-state file in the data dir.
pub const META_FILE: &str = "meta";
/// Name of the log file in the data dir.
pub const LOG_FILE: &str = "log";
const META_TMP: &str = "meta.tmp";
const LOG_TMP: &str = "log.tmp";

/// Largest command payload a log entry may carry: the limit shared by the
/// node's `propose`, the peer codec and this log. The client protocol's
/// request limit is well below it; a larger entry is caller misuse.
pub const MAX_PAYLOAD_LEN: usize = raft_proto::MAX_ENTRY_LEN;

const META_MAGIC: &[u8; 8] = b"RAFTMETA";
const LOG_MAGIC: &[u8; 8] = b"RAFTLOG\0";
/// Version 3: the log's records are framed in batches, one per sync.
const FORMAT_VERSION: u32 = 3;
/// magic 8 | version 4 | cluster 8 | member 8 | term 8 | voted_for 8 | crc 4
const META_LEN: usize = 48;
/// magic 8 | version 4 | cluster 8 | member 8 | crc 4
const LOG_HEADER_LEN: usize = 32;
/// magic 4 | body length 4 | crc of the body 4 | crc of these 12 bytes 4.
/// The magic lets recovery look for a later batch when a header was
/// zeroed; the header's own checksum means a header that checks out is
/// exactly what was written, length included.
const BATCH_HEADER_LEN: usize = 16;
const BATCH_MAGIC: &[u8; 4] = b"BTCH";
/// length 4 | crc of the length 4 | crc of the body 4. The length has a
/// checksum of its own so that a damaged length is never mistaken for a
/// record the crash cut short (which recovery would cut off, dropping
/// acknowledged entries behind it).
const RECORD_HEADER_LEN: usize = 12;
/// kind 1 | term 8 | index 8 | payload kind 1
const ENTRY_BODY_FIXED_LEN: usize = 18;
/// kind 1 | from 8
const TRUNCATE_BODY_LEN: usize = 9;
/// Bounds the allocation and CRC work a corrupt length field can cause, and
/// lets recovery tell a wild length (corruption) from a short final record.
const MAX_RECORD_LEN: usize = ENTRY_BODY_FIXED_LEN + MAX_PAYLOAD_LEN;
/// Largest batch body: a few of the largest records. Bounds how much of the
/// file one unsynced batch (the only thing a power cut can damage) covers.
pub const MAX_BATCH_LEN: usize = 4 * (RECORD_HEADER_LEN + MAX_RECORD_LEN);
/// The unit in which a power cut may leave zeroes in place of written data:
/// a disk writes a sector atomically, and the page cache writes back whole
/// pages (a multiple of it), both aligned to file offsets.
const SECTOR: usize = 512;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const PAYLOAD_NOOP: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;

/// What [`Storage::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The last durable term and vote.
    pub hard_state: HardState,
    /// The log, indexes `1..=n` in order.
    pub entries: Vec<Entry>,
    /// The data dir was empty (or a first boot was interrupted before any
    /// state was written): this is the member's first start.
    pub first_boot: bool,
}

/// The open data dir. Holds the lock until dropped.
///
/// After any method returns an error the store is poisoned: the state of the
/// files is unknown (a failed fsync may have dropped dirty pages), so later
/// syncs fail too and the driver must exit.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    log_path: PathBuf,
    /// Kept open for the lock's lifetime: closing it releases the flock.
    _lock: File,
    log: File,
    cluster_id: u64,
    node_id: NodeId,
    /// The hard state as of the latest `save_hard_state` (durable or not).
    hard_state: HardState,
    /// Set when `hard_state` has not been written to `meta` yet.
    hard_state_dirty: bool,
    /// `terms[i]` is the term of the entry at index `i + 1`, as of the latest
    /// buffered operation. Lets `append` assert that terms never go down.
    terms: Vec<Term>,
    /// Encoded records not yet written to the log file.
    buf: Vec<u8>,
    poisoned: bool,
    /// The power-cut simulation; `None` unless its environment switch is set.
    power_cut: Option<PowerCut>,
}

impl Storage {
    /// Opens (or on first boot creates) the store in `dir` for member
    /// `node_id` of cluster `cluster_id`, takes the lock and recovers the
    /// durable state. Reads the power-cut switches (module docs) from the
    /// environment.
    pub fn open(
        dir: &Path,
        cluster_id: u64,
        node_id: NodeId,
    ) -> Result<(Storage, Recovered), StorageError> {
        let plan = PowerCutPlan::from_env()?;
        Storage::open_with(dir, cluster_id, node_id, plan)
    }

    fn open_with(
        dir: &Path,
        cluster_id: u64,
        node_id: NodeId,
        plan: Option<PowerCutPlan>,
    ) -> Result<(Storage, Recovered), StorageError> {
        assert_ne!(node_id.0, 0, "node id 0 is reserved");
        fs::create_dir_all(dir).map_err(|e| io_err(dir, "cannot create directory", e))?;
        let lock = take_lock(&dir.join(LOCK_FILE))?;
        // Before recovery touches anything: the files as found are the
        // durable baseline of the simulation.
        let mut power_cut = plan.map(|p| PowerCut::new(p, dir));

        let meta_path = dir.join(META_FILE);
        let log_path = dir.join(LOG_FILE);
        let meta = read_meta(&meta_path)?;
        let log_bytes = match fs::read(&log_path) {
            Ok(b) => Some(Bytes::from(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&log_path, "cannot read", e)),
        };

        if let Some(m) = &meta {
            check_owner(&meta_path, m.cluster_id, m.node_id, cluster_id, node_id)?;
        }

        let (hard_state, entries, first_boot) = match (meta, log_bytes) {
            (None, None) => {
                // First boot. `meta` goes first: a crash before `log` exists
                // leaves a meta with no term and no vote, which the arm below
                // recognizes as an interrupted first boot.
                write_meta(
                    dir,
                    cluster_id,
                    node_id,
                    HardState::default(),
                    &mut power_cut,
                )?;
                create_log(dir, cluster_id, node_id, &mut power_cut)?;
                (HardState::default(), Vec::new(), true)
            }
            (None, Some(_)) => {
                return Err(StorageError::Missing {
                    path: meta_path,
                    why: format!(
                        "file is missing but {} exists: the term and vote are lost, \
                         refusing to start: restore the file from a backup. Do not wipe the data dir and restart \
                         this member with the same id: it could vote twice in a term and lose committed entries",
                        log_path.display()
                    ),
                })
            }
            (Some(m), None) => {
                if m.hard_state != HardState::default() {
                    return Err(StorageError::Missing {
                        path: log_path,
                        why: format!(
                            "file is missing but {} records term {}: the log is lost, \
                             refusing to start: restore the file from a backup. Do not wipe the data dir and restart \
                         this member with the same id: it could vote twice in a term and lose committed entries",
                            meta_path.display(),
                            m.hard_state.current_term
                        ),
                    });
                }
                // Term 0 and no vote: nothing was ever appended (an entry's
                // term is at least 1 and never above the durable term), so
                // this is a first boot that crashed before creating the log.
                create_log(dir, cluster_id, node_id, &mut power_cut)?;
                (m.hard_state, Vec::new(), true)
            }
            (Some(m), Some(bytes)) => {
                let scan = scan_log(&log_path, &bytes, cluster_id, node_id, m.hard_state)?;
                if let Some(torn) = &scan.torn {
                    // Everything before the tail checked out: only now touch
                    // the disk.
                    log::warn!(
                        "{}: torn final records at byte offset {} ({} bytes, {}): the last \
                         batch, never acknowledged, dropped; recovering {} entries",
                        log_path.display(),
                        torn.offset,
                        bytes.len() as u64 - torn.offset,
                        torn.why,
                        scan.entries.len()
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&log_path)
                        .map_err(|e| io_err(&log_path, "cannot open for writing", e))?;
                    f.set_len(torn.offset)
                        .map_err(|e| io_err(&log_path, "cannot truncate", e))?;
                    fsync_file(&f, dir, LOG_FILE, SyncKind::All, &mut power_cut)?;
                }
                (m.hard_state, scan.entries, false)
            }
        };

        let log = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err(&log_path, "cannot open for appending", e))?;
        let storage = Storage {
            dir: dir.to_path_buf(),
            log_path,
            _lock: lock,
            log,
            cluster_id,
            node_id,
            hard_state,
            hard_state_dirty: false,
            terms: entries.iter().map(|e| e.term).collect(),
            buf: Vec::new(),
            poisoned: false,
            power_cut,
        };
        Ok((
            storage,
            Recovered {
                hard_state,
                entries,
                first_boot,
            },
        ))
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
    /// Panics unless `1 <= from <= last_index + 1`.
    pub fn truncate(&mut self, from: LogIndex) {
        assert!(
            from.0 >= 1 && from.0 <= self.last_index().0 + 1,
            "truncate from {from} outside 1..={}",
            self.last_index().0 + 1
        );
        let mut body = [0u8; TRUNCATE_BODY_LEN];
        body[0] = KIND_TRUNCATE;
        body[1..9].copy_from_slice(&from.0.to_le_bytes());
        push_record(&mut self.buf, &body);
        // from >= 1 was just asserted, so this cannot underflow.
        self.terms.truncate(from.0 as usize - 1);
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
            if let Some(&prev) = self.terms.last() {
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
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
            self.buf.push(KIND_ENTRY);
            self.buf.extend_from_slice(&e.term.0.to_le_bytes());
            self.buf.extend_from_slice(&e.index.0.to_le_bytes());
            match &e.payload {
                EntryPayload::Noop => self.buf.push(PAYLOAD_NOOP),
                EntryPayload::Command(c) => {
                    self.buf.push(PAYLOAD_COMMAND);
                    self.buf.extend_from_slice(c);
                }
            }
            seal_record(&mut self.buf, start);
            self.terms.push(e.term);
        }
    }

    /// Makes everything buffered since the last sync durable: `meta` first
    /// (if the hard state changed), then the log records as one batch with
    /// one fdatasync.
    ///
    /// `meta` goes first so that the log never holds an entry whose term is
    /// above the durable term (which recovery checks). On error the store is
    /// poisoned and the driver must stop: after a failed fsync the kernel may
    /// have dropped the dirty pages, so retrying could report success for
    /// data that is gone.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned {
                path: self.log_path.clone(),
            });
        }
        let r = self.sync_inner();
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn sync_inner(&mut self) -> Result<(), StorageError> {
        if let Some(pc) = &mut self.power_cut {
            pc.begin_sync(self.hard_state_dirty, !self.buf.is_empty());
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
        let mut start = 0;
        while start < self.buf.len() {
            // One batch per fdatasync: recovery relies on a batch being
            // written only after the previous one is durable.
            let end = batch_end(&self.buf, start);
            let body = &self.buf[start..end];
            self.log
                .write_all(&encode_batch_header(body))
                .and_then(|()| self.log.write_all(body))
                .map_err(|e| io_err(&self.log_path, "cannot write", e))?;
            cut_point(&mut self.power_cut);
            // fdatasync also persists the new file size, which is all the
            // metadata an append changes.
            fsync_file(
                &self.log,
                &self.dir,
                LOG_FILE,
                SyncKind::Data,
                &mut self.power_cut,
            )?;
            start = end;
        }
        self.buf.clear();
        // Do not keep a large buffer from one big batch forever.
        if self.buf.capacity() > 4 * MAX_RECORD_LEN {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Whether anything is buffered that [`Storage::sync`] would write.
    pub fn needs_sync(&self) -> bool {
        self.hard_state_dirty || !self.buf.is_empty()
    }

    /// Index of the last entry as of the latest buffered operation.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.terms.len() as u64)
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
        /// The log file.
        path: PathBuf,
    },
    /// A power-cut switch in the environment has an unusable value.
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        what: String,
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
            StorageError::Version { path, found } => write!(
                f,
                "{}: storage format version {found}, but this raft-node reads only version \
                 {FORMAT_VERSION} (there is no in-place upgrade): run the raft-node release that \
                 wrote this data dir",
                path.display()
            ),
            StorageError::Missing { path, why } => write!(f, "{}: {why}", path.display()),
            StorageError::Foreign { path, what } => write!(f, "{}: {what}", path.display()),
            StorageError::Poisoned { path } => write!(
                f,
                "{}: an earlier write or fsync failed; the file's state is unknown",
                path.display()
            ),
            StorageError::Env { var, what } => write!(f, "environment variable {var}: {what}"),
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

/// How much of a file an fsync covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    /// `fdatasync`: the data and the size (enough after an append).
    Data,
    /// `fsync`: the data and all metadata.
    All,
}

/// Makes `file` (`dir/name`) durable. Every fsync of a data file goes
/// through here, and in power-cut mode the record of what is durable is made
/// here and nowhere else: code that skips the fsync skips the record, and
/// the simulated power cut then loses what it would lose on a real disk.
fn fsync_file(
    file: &File,
    dir: &Path,
    name: &'static str,
    kind: SyncKind,
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    match kind {
        SyncKind::Data => file.sync_data(),
        SyncKind::All => file.sync_all(),
    }
    .map_err(|e| io_err(&dir.join(name), "cannot fsync", e))?;
    if let Some(pc) = power_cut {
        pc.file_synced(name, file);
    }
    Ok(())
}

/// Makes the directory's entries (renames) durable; in power-cut mode,
/// records that, like [`fsync_file`].
fn fsync_dir(dir: &Path, power_cut: &mut Option<PowerCut>) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot fsync directory", e))?;
    if let Some(pc) = power_cut {
        pc.dir_synced();
    }
    Ok(())
}

/// Writes `bytes` to `dir/tmp`, fsyncs it, renames it to `dir/name` and
/// fsyncs the directory: after a crash `name` holds either its old contents or
/// all of `bytes`.
fn replace_atomically(
    dir: &Path,
    tmp: &'static str,
    name: &'static str,
    bytes: &[u8],
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    let tmp_path = dir.join(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)
        .map_err(|e| io_err(&tmp_path, "cannot create", e))?;
    if let Some(pc) = power_cut {
        pc.tmp_created(tmp);
    }
    f.write_all(bytes)
        .map_err(|e| io_err(&tmp_path, "cannot write", e))?;
    cut_point(power_cut);
    fsync_file(&f, dir, tmp, SyncKind::All, power_cut)?;
    drop(f);
    let path = dir.join(name);
    fs::rename(&tmp_path, &path).map_err(|e| io_err(&path, "cannot rename into place", e))?;
    if let Some(pc) = power_cut {
        pc.renamed(tmp, name);
    }
    cut_point(power_cut);
    fsync_dir(dir, power_cut)
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

fn encode_log_header(cluster_id: u64, node_id: NodeId) -> [u8; LOG_HEADER_LEN] {
    let mut b = [0u8; LOG_HEADER_LEN];
    b[0..8].copy_from_slice(LOG_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&cluster_id.to_le_bytes());
    b[20..28].copy_from_slice(&node_id.0.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Creates an empty log (header only) atomically, so that a log file always
/// has a complete header.
fn create_log(
    dir: &Path,
    cluster_id: u64,
    node_id: NodeId,
    power_cut: &mut Option<PowerCut>,
) -> Result<(), StorageError> {
    replace_atomically(
        dir,
        LOG_TMP,
        LOG_FILE,
        &encode_log_header(cluster_id, node_id),
        power_cut,
    )
}

/// Appends one record with `body` to `buf`.
fn push_record(buf: &mut Vec<u8>, body: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf.extend_from_slice(body);
    seal_record(buf, start);
}

/// Fills in the length and CRC of the record whose header starts at `start`
/// and whose body runs to the end of `buf`.
fn seal_record(buf: &mut [u8], start: usize) {
    let body = &buf[start + RECORD_HEADER_LEN..];
    assert!(body.len() <= MAX_RECORD_LEN, "record too large");
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c(body);
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&crc32c::crc32c(&len).to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// The header of a batch whose body is `body` (whole records).
fn encode_batch_header(body: &[u8]) -> [u8; BATCH_HEADER_LEN] {
    assert!(
        !body.is_empty() && body.len() <= MAX_BATCH_LEN,
        "batch of {} bytes outside 1..={MAX_BATCH_LEN}",
        body.len()
    );
    let mut h = [0u8; BATCH_HEADER_LEN];
    h[0..4].copy_from_slice(BATCH_MAGIC);
    h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// End of the batch that starts at record boundary `start` of `buf`: as
/// many whole records as fit in [`MAX_BATCH_LEN`], at least one.
fn batch_end(buf: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < buf.len() {
        let next = end + RECORD_HEADER_LEN + u32_at(buf, end) as usize;
        assert!(next <= buf.len(), "buffered record overruns the buffer");
        if end > start && next - start > MAX_BATCH_LEN {
            break;
        }
        end = next;
    }
    end
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

/// A damaged final batch that recovery may cut off.
#[derive(Debug)]
struct TornTail {
    offset: u64,
    why: String,
}

#[derive(Debug)]
struct Scan {
    entries: Vec<Entry>,
    torn: Option<TornTail>,
}

/// What a record at some offset of a batch body turned out to be.
#[derive(Debug)]
enum RecordCheck {
    /// Intact; its body is `body`, the next record starts at `next`.
    Intact {
        body: std::ops::Range<usize>,
        next: usize,
    },
    /// Damaged; the damage lies in `extent`.
    Damaged {
        extent: std::ops::Range<usize>,
        what: String,
    },
}

/// Checks the record at `at`, which must lie within `..end` (its batch).
fn check_record(bytes: &[u8], at: usize, end: usize) -> RecordCheck {
    let damaged =
        |extent: std::ops::Range<usize>, what: String| RecordCheck::Damaged { extent, what };
    if end - at < RECORD_HEADER_LEN {
        return damaged(at..end, format!("{} bytes of a record header", end - at));
    }
    let header = at..at + RECORD_HEADER_LEN;
    if crc32c::crc32c(&bytes[at..at + 4]) != u32_at(bytes, at + 4) {
        return damaged(header, "record length checksum mismatch".into());
    }
    let rlen = u32_at(bytes, at) as usize;
    if rlen == 0 || rlen > MAX_RECORD_LEN {
        return damaged(
            header,
            format!("record length {rlen} outside 1..={MAX_RECORD_LEN}"),
        );
    }
    let next = at + RECORD_HEADER_LEN + rlen;
    if next > end {
        return damaged(
            header,
            format!(
                "record of {rlen} bytes overruns its batch by {} bytes",
                next - end
            ),
        );
    }
    if crc32c::crc32c(&bytes[at + RECORD_HEADER_LEN..next]) != u32_at(bytes, at + 8) {
        return damaged(at..next, "record checksum mismatch".into());
    }
    RecordCheck::Intact {
        body: at + RECORD_HEADER_LEN..next,
        next,
    }
}

/// Whether the bytes in `extent` could differ from what was written because
/// of a power cut during the batch that starts at `batch`: some sector
/// overlapping `extent`, clipped to `batch..` (before it the data was
/// durable), reads as all zeroes, or the file ends inside `extent`.
fn zeroed_by_power_cut(bytes: &[u8], batch: usize, extent: std::ops::Range<usize>) -> bool {
    assert!(batch <= extent.start && extent.start < extent.end);
    if extent.end > bytes.len() {
        return true;
    }
    let first = extent.start / SECTOR;
    let last = (extent.end - 1) / SECTOR;
    (first..=last).any(|s| {
        let lo = (s * SECTOR).max(batch);
        let hi = ((s + 1) * SECTOR).min(bytes.len());
        lo < hi && bytes[lo..hi].iter().all(|&b| b == 0)
    })
}

/// The offset of a whole, valid batch at or after `from`, if there is one:
/// proof that a batch before it was synced.
fn find_whole_batch(bytes: &[u8], from: usize) -> Option<usize> {
    let len = bytes.len();
    (from..len.saturating_sub(BATCH_HEADER_LEN - 1)).find(|&at| {
        &bytes[at..at + 4] == BATCH_MAGIC
            && crc32c::crc32c(&bytes[at..at + 12]) == u32_at(bytes, at + 12)
            && {
                let blen = u32_at(bytes, at + 4) as usize;
                let end = at + BATCH_HEADER_LEN + blen;
                blen <= MAX_BATCH_LEN
                    && end <= len
                    && crc32c::crc32c(&bytes[at + BATCH_HEADER_LEN..end]) == u32_at(bytes, at + 8)
            }
    })
}

/// Validates the whole log without changing it. Returns the entries and, if
/// the file ends in a torn batch, where the valid prefix ends.
///
/// Only the last batch can be torn (module docs), and a torn batch is
/// dropped whole: it was never acknowledged. A batch is taken for the torn
/// last batch when nothing but zeroes follows it (or it runs past the end
/// of the file) and its damage is what a power cut leaves: a prefix, and
/// sectors of zeroes. A damaged batch with data after it was synced, and
/// damage that is not zeroes was not done by a power cut: both are
/// corruption, and cutting there could drop acknowledged entries.
fn scan_log(
    path: &Path,
    bytes: &Bytes,
    cluster_id: u64,
    node_id: NodeId,
    hard_state: HardState,
) -> Result<Scan, StorageError> {
    let len = bytes.len();
    if len >= 12 && &bytes[0..8] == LOG_MAGIC {
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
    }
    if len < LOG_HEADER_LEN {
        return Err(corrupt(
            path,
            len as u64,
            format!("file is {len} bytes, shorter than the {LOG_HEADER_LEN}-byte header"),
        ));
    }
    if &bytes[0..8] != LOG_MAGIC {
        return Err(corrupt(path, 0, "not a log file (bad magic)"));
    }
    if crc32c::crc32c(&bytes[..28]) != u32_at(bytes, 28) {
        return Err(corrupt(path, 28, "header checksum mismatch"));
    }
    check_owner(
        path,
        u64_at(bytes, 12),
        u64_at(bytes, 20),
        cluster_id,
        node_id,
    )?;

    let zeros_from = |at: usize| bytes[at..].iter().all(|&b| b == 0);
    let mut entries: Vec<Entry> = Vec::new();
    let mut off = LOG_HEADER_LEN;
    while off < len {
        let torn = |why: String| TornTail {
            offset: off as u64,
            why,
        };
        let rest = len - off;
        if rest < BATCH_HEADER_LEN {
            return Ok(Scan {
                entries,
                torn: Some(torn(format!("{rest} bytes of a batch header"))),
            });
        }
        let header_ok = &bytes[off..off + 4] == BATCH_MAGIC
            && crc32c::crc32c(&bytes[off..off + 12]) == u32_at(bytes, off + 12);
        if !header_ok {
            if zeros_from(off) {
                // Nothing at all was written here: dropping it loses nothing.
                return Ok(Scan {
                    entries,
                    torn: Some(torn("zero-filled tail".into())),
                });
            }
            if !zeroed_by_power_cut(bytes, off, off..off + BATCH_HEADER_LEN) {
                return Err(corrupt(
                    path,
                    off as u64,
                    "batch header damaged, and not by a power cut (which leaves zeroes)",
                ));
            }
            if rest > BATCH_HEADER_LEN + MAX_BATCH_LEN {
                return Err(corrupt(
                    path,
                    off as u64,
                    format!(
                        "batch header zeroed, with {rest} bytes after it, more than one \
                         batch holds: a synced batch was damaged"
                    ),
                ));
            }
            if let Some(at) = find_whole_batch(bytes, off + 1) {
                return Err(corrupt(
                    path,
                    off as u64,
                    format!(
                        "batch header zeroed, but a whole batch follows at byte offset {at}: \
                         a synced batch was damaged"
                    ),
                ));
            }
            return Ok(Scan {
                entries,
                torn: Some(torn("batch header zeroed".into())),
            });
        }
        let blen = u32_at(bytes, off + 4) as usize;
        if blen == 0 || blen > MAX_BATCH_LEN {
            // The header's checksum matched: this is what was written.
            return Err(corrupt(
                path,
                off as u64,
                format!("batch length {blen} outside 1..={MAX_BATCH_LEN}"),
            ));
        }
        let body_at = off + BATCH_HEADER_LEN;
        let end = body_at + blen;
        if end > len {
            return Ok(Scan {
                entries,
                torn: Some(torn(format!(
                    "batch of {blen} bytes has only {} written",
                    len - body_at
                ))),
            });
        }
        if crc32c::crc32c(&bytes[body_at..end]) != u32_at(bytes, off + 8) {
            // Find the damaged record, to name it and to judge the damage.
            let mut at = body_at;
            let damage = loop {
                if at == end {
                    break None;
                }
                match check_record(bytes, at, end) {
                    RecordCheck::Intact { next, .. } => at = next,
                    RecordCheck::Damaged { extent, what } => break Some((at, extent, what)),
                }
            };
            let Some((rec, extent, what)) = damage else {
                return Err(corrupt(
                    path,
                    off as u64,
                    "batch checksum mismatch, though every record in it checks out",
                ));
            };
            if !zeros_from(end) {
                return Err(corrupt(
                    path,
                    rec as u64,
                    format!(
                        "{what}, in a batch with {} bytes of further data after it \
                         (so it was synced)",
                        len - end
                    ),
                ));
            }
            if !zeroed_by_power_cut(bytes, off, extent) {
                return Err(corrupt(
                    path,
                    rec as u64,
                    format!("{what} in the final batch, and not by a power cut (no zeroed sector)"),
                ));
            }
            return Ok(Scan {
                entries,
                torn: Some(torn(format!(
                    "{what} at byte offset {rec}, in zeroed sectors"
                ))),
            });
        }
        // The batch is exactly what was written: anything wrong in it is
        // corruption (or a bug), never a torn write.
        let mut at = body_at;
        while at < end {
            match check_record(bytes, at, end) {
                RecordCheck::Intact { body, next } => {
                    apply_record(path, at, bytes.slice(body), &mut entries, hard_state)?;
                    at = next;
                }
                RecordCheck::Damaged { what, .. } => {
                    return Err(corrupt(
                        path,
                        at as u64,
                        format!("{what} in a batch whose checksum matches"),
                    ))
                }
            }
        }
        off = end;
    }
    Ok(Scan {
        entries,
        torn: None,
    })
}

/// Checks one intact record at byte offset `off` against the log so far
/// and applies it.
fn apply_record(
    path: &Path,
    off: usize,
    body: Bytes,
    entries: &mut Vec<Entry>,
    hard_state: HardState,
) -> Result<(), StorageError> {
    let bad = |what: String| corrupt(path, off as u64, what);
    let last = LogIndex(entries.len() as u64);
    match body[0] {
        KIND_ENTRY => {
            if body.len() < ENTRY_BODY_FIXED_LEN {
                return Err(bad(format!("entry record body of {} bytes", body.len())));
            }
            let term = Term(u64_at(&body, 1));
            let index = LogIndex(u64_at(&body, 9));
            let payload = match body[17] {
                PAYLOAD_NOOP if body.len() == ENTRY_BODY_FIXED_LEN => EntryPayload::Noop,
                PAYLOAD_NOOP => return Err(bad("no-op entry with a payload".into())),
                PAYLOAD_COMMAND => EntryPayload::Command(body.slice(ENTRY_BODY_FIXED_LEN..)),
                k => return Err(bad(format!("unknown payload kind {k}"))),
            };
            if index != last.next() {
                return Err(bad(format!(
                    "entry index {index} does not follow the previous index {last}"
                )));
            }
            if term.0 == 0 {
                return Err(bad(format!("entry {index} has term 0")));
            }
            if let Some(prev) = entries.last() {
                if term < prev.term {
                    return Err(bad(format!(
                        "entry {index} has term {term}, below the previous entry's term {}",
                        prev.term
                    )));
                }
            }
            if term > hard_state.current_term {
                return Err(bad(format!(
                    "entry {index} has term {term}, above the current term {} in {META_FILE}",
                    hard_state.current_term
                )));
            }
            entries.push(Entry {
                term,
                index,
                payload,
            });
        }
        KIND_TRUNCATE => {
            if body.len() != TRUNCATE_BODY_LEN {
                return Err(bad(format!("truncate record body of {} bytes", body.len())));
            }
            let from = u64_at(&body, 1);
            if from == 0 || from > last.0 + 1 {
                return Err(bad(format!(
                    "truncation from index {from} outside the log 1..={}",
                    last.0 + 1
                )));
            }
            entries.truncate(from as usize - 1);
        }
        k => return Err(bad(format!("unknown record kind {k}"))),
    }
    Ok(())
}

// Power-cut mode (module docs): testing only, and absent unless one of its
// environment switches is set.

const POWER_CUT_AT_SYNC_VAR: &str = "RAFT_POWER_CUT_AT_SYNC";
const POWER_CUT_FILE_VAR: &str = "RAFT_POWER_CUT_FILE";
const POWER_CUT_SEED_VAR: &str = "RAFT_POWER_CUT_SEED";

/// When the simulated power goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CutWhen {
    /// In the N-th sync with something to write (from 1).
    AtSync(u64),
    /// In the first sync with something to write after this file exists.
    FileExists(PathBuf),
}

/// The power-cut switches.
#[derive(Debug, Clone)]
struct PowerCutPlan {
    when: CutWhen,
    seed: u64,
    /// Ends the process once the files are cut: [`power_off`]. (This
    /// module's tests unwind instead, and reopen the store.)
    halt: fn() -> !,
}

impl PowerCutPlan {
    /// Reads the switches; `None` when power-cut mode is off.
    fn from_env() -> Result<Option<PowerCutPlan>, StorageError> {
        PowerCutPlan::parse(
            std::env::var_os(POWER_CUT_AT_SYNC_VAR),
            std::env::var_os(POWER_CUT_FILE_VAR),
            std::env::var_os(POWER_CUT_SEED_VAR),
        )
    }

    /// The plan for the given values of the three switches.
    fn parse(
        at_sync: Option<OsString>,
        file: Option<OsString>,
        seed: Option<OsString>,
    ) -> Result<Option<PowerCutPlan>, StorageError> {
        let when = match (at_sync, file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(StorageError::Env {
                    var: POWER_CUT_AT_SYNC_VAR,
                    what: format!("set together with {POWER_CUT_FILE_VAR}: set one"),
                })
            }
            (Some(n), None) => {
                let at = n
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| StorageError::Env {
                        var: POWER_CUT_AT_SYNC_VAR,
                        what: format!("{n:?} is not a positive integer"),
                    })?;
                CutWhen::AtSync(at)
            }
            (None, Some(p)) if p.is_empty() => {
                return Err(StorageError::Env {
                    var: POWER_CUT_FILE_VAR,
                    what: "empty path".into(),
                })
            }
            (None, Some(p)) => CutWhen::FileExists(PathBuf::from(p)),
        };
        let seed = match seed {
            None => rand::random(),
            Some(s) => s
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StorageError::Env {
                    var: POWER_CUT_SEED_VAR,
                    what: format!("{s:?} is not an unsigned integer"),
                })?,
        };
        Ok(Some(PowerCutPlan {
            when,
            seed,
            halt: power_off,
        }))
    }
}

/// The end of a simulated power cut: the process stops on the spot, with no
/// unwinding, no flushing and no core file (a power cut leaves none, and
/// tests run in the source tree).
fn power_off() -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the struct, which lives across the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    std::process::abort()
}

/// A point in a sync where the simulated power may go out: right after a
/// write and before the fsync that would make it durable.
fn cut_point(power_cut: &mut Option<PowerCut>) {
    if let Some(pc) = power_cut {
        pc.point();
    }
}

/// What the data dir would hold if the power went out now, as far as
/// fsyncs made it durable, and the cut itself.
#[derive(Debug)]
struct PowerCut {
    plan: PowerCutPlan,
    rng: Rng,
    dir: PathBuf,
    /// Syncs with something to write so far.
    syncs: u64,
    /// In the sync that cuts: how many cut points to pass before cutting.
    armed: Option<u64>,
    /// Durable length of the file named `log`; `None`: no durable file by
    /// that name. (Appends only extend it, so the durable contents are a
    /// prefix of the current ones.)
    log_len: Option<u64>,
    /// Durable contents of `meta`; `None`: no durable file by that name.
    meta: Option<Vec<u8>>,
    /// Durable contents of the files now named `meta.tmp` and `log.tmp`,
    /// as of their last fsync.
    tmp: Vec<(&'static str, Vec<u8>)>,
    /// Renames since the last directory fsync: the new name and the durable
    /// contents of the file under it (`None`: never fsynced).
    renamed: Vec<(&'static str, Option<Vec<u8>>)>,
}

impl PowerCut {
    /// Starts the simulation with the files as found counting as durable.
    fn new(plan: PowerCutPlan, dir: &Path) -> PowerCut {
        let when = match &plan.when {
            CutWhen::AtSync(n) => format!("in sync number {n}"),
            CutWhen::FileExists(p) => format!("in the first sync after {} exists", p.display()),
        };
        log::warn!(
            "power-cut mode (testing only): the power goes out {when}, losing what was not \
             fsynced, and the process aborts; seed {}",
            plan.seed
        );
        PowerCut {
            rng: Rng::new(plan.seed),
            plan,
            dir: dir.to_path_buf(),
            syncs: 0,
            armed: None,
            log_len: fs::metadata(dir.join(LOG_FILE)).ok().map(|m| m.len()),
            meta: fs::read(dir.join(META_FILE)).ok(),
            tmp: Vec::new(),
            renamed: Vec::new(),
        }
    }

    /// A sync begins that writes `meta` and/or log records: if it is the one
    /// that cuts, picks one of its cut points.
    fn begin_sync(&mut self, meta: bool, log: bool) {
        assert!(self.armed.is_none(), "a power cut was armed but not done");
        if !meta && !log {
            return;
        }
        self.syncs += 1;
        let due = match &self.plan.when {
            CutWhen::AtSync(n) => self.syncs == *n,
            CutWhen::FileExists(p) => p.exists(),
        };
        if due {
            // Cut points, in order: meta.tmp written, meta renamed, log
            // batch written.
            let points = 2 * u64::from(meta) + u64::from(log);
            self.armed = Some(self.rng.range(0, points));
        }
    }

    fn point(&mut self) {
        match self.armed {
            Some(0) => self.cut(),
            Some(k) => self.armed = Some(k - 1),
            None => {}
        }
    }

    /// `dir/name` was just fsynced through `file`.
    fn file_synced(&mut self, name: &'static str, file: &File) {
        if name == LOG_FILE {
            let len = file.metadata().expect("power-cut mode: stat the log").len();
            self.log_len = Some(len);
        } else {
            let contents =
                fs::read(self.dir.join(name)).expect("power-cut mode: read back a tmp file");
            self.tmp.retain(|(n, _)| *n != name);
            self.tmp.push((name, contents));
        }
    }

    /// `tmp` was created or emptied: nothing of its new contents is durable.
    fn tmp_created(&mut self, tmp: &'static str) {
        self.tmp.retain(|(n, _)| *n != tmp);
    }

    /// `tmp` was renamed to `name`, not durably until the directory fsync.
    fn renamed(&mut self, tmp: &'static str, name: &'static str) {
        let contents = self
            .tmp
            .iter()
            .position(|(n, _)| *n == tmp)
            .map(|i| self.tmp.remove(i).1);
        self.renamed.retain(|(n, _)| *n != name);
        self.renamed.push((name, contents));
        assert!(self.renamed.len() <= 2, "renames to meta and log only");
    }

    /// The directory was fsynced: the renames before it are durable. A
    /// renamed file whose data was never fsynced is durable as an empty file
    /// (what ext4 without auto_da_alloc or XFS may show after a crash).
    fn dir_synced(&mut self) {
        for (name, contents) in std::mem::take(&mut self.renamed) {
            match name {
                META_FILE => self.meta = Some(contents.unwrap_or_default()),
                LOG_FILE => self.log_len = Some(contents.map_or(0, |c| c.len() as u64)),
                _ => unreachable!("rename to {name}"),
            }
        }
    }

    /// Leaves the files as a power cut now could, then halts.
    fn cut(&mut self) -> ! {
        let log_path = self.dir.join(LOG_FILE);
        let log_report = match self.log_len {
            None => {
                remove_if_present(&log_path);
                "log removed (its creation was never durable)".to_string()
            }
            Some(durable) => self.tear_log(&log_path, durable),
        };
        let meta_path = self.dir.join(META_FILE);
        let meta_report = match &self.meta {
            None => {
                remove_if_present(&meta_path);
                "meta removed (its creation was never durable)".to_string()
            }
            Some(b) => {
                fs::write(&meta_path, b).expect("power-cut mode: restore meta");
                format!("meta back to its durable {} bytes", b.len())
            }
        };
        for tmp in [META_TMP, LOG_TMP] {
            remove_if_present(&self.dir.join(tmp));
        }
        log::error!(
            "power cut (simulated) in sync number {}: {log_report}; {meta_report}",
            self.syncs
        );
        log::logger().flush();
        (self.plan.halt)()
    }

    /// Cuts the log somewhere between its durable and its current length
    /// (sometimes nowhere: the whole batch reached the disk), maybe zeroes
    /// sectors of the unsynced part, and maybe leaves zeroes after the end
    /// (the size was updated, the data not). Zeroes come in whole sectors,
    /// clipped to the unsynced part (the durable bytes before it stay): a
    /// disk writes a sector all or nothing.
    fn tear_log(&mut self, path: &Path, durable: u64) -> String {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .expect("power-cut mode: open the log");
        let written = f.metadata().expect("power-cut mode: stat the log").len();
        assert!(
            written >= durable,
            "log of {written} bytes is shorter than its durable length {durable}"
        );
        let sector = SECTOR as u64;
        let zero = |lo: u64, hi: u64| {
            f.write_all_at(&vec![0u8; (hi - lo) as usize], lo)
                .expect("power-cut mode: zero sectors");
        };
        let keep = if self.rng.chance(0.25) {
            written
        } else {
            self.rng.range(durable, written + 1)
        };
        f.set_len(keep).expect("power-cut mode: cut the log");
        let mut report = format!("log cut to {keep} bytes (durable {durable}, written {written})");
        if keep > durable && self.rng.chance(0.5) {
            let s = self.rng.range(durable / sector, (keep - 1) / sector + 1);
            let n = self.rng.range(1, 4);
            let lo = (s * sector).max(durable);
            let hi = ((s + n) * sector).min(keep);
            zero(lo, hi);
            report.push_str(&format!(", zeroes at {lo}..{hi}"));
        }
        if self.rng.chance(0.25) {
            // The data of the last sector did not make it either.
            let lo = (keep / sector * sector).max(durable);
            zero(lo, keep);
            let pad = self.rng.range(1, 2 * sector);
            f.set_len(keep + pad)
                .expect("power-cut mode: extend the log");
            report.push_str(&format!(", zeroes at {lo}..{}", keep + pad));
        }
        report
    }
}

fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("power-cut mode: cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const CLUSTER: u64 = 0xc1u64;
    const ME: NodeId = NodeId(1);

    fn entry(term: u64, index: u64, cmd: Option<&str>) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: match cmd {
                None => EntryPayload::Noop,
                Some(c) => EntryPayload::Command(Bytes::copy_from_slice(c.as_bytes())),
            },
        }
    }

    fn hs(term: u64, vote: Option<u64>) -> HardState {
        HardState {
            current_term: Term(term),
            voted_for: vote.map(NodeId),
        }
    }

    fn open(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
        Storage::open(dir, CLUSTER, ME)
    }

    /// Every file in the dir and its contents.
    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// A store with a noop at 1 and commands at 2..=4, all in term 2, each
    /// synced on its own: batch `i` holds record `i` (as on a follower
    /// receiving one entry at a time).
    fn populated(dir: &Path) -> Vec<Entry> {
        populated_with(dir, "ccc")
    }

    /// `populated`, with `last` as the command of entry 4.
    fn populated_with(dir: &Path, last: &str) -> Vec<Entry> {
        let (mut s, r) = open(dir).unwrap();
        assert!(r.first_boot);
        s.save_hard_state(hs(2, Some(1)));
        let entries = vec![
            entry(2, 1, None),
            entry(2, 2, Some("a")),
            entry(2, 3, Some("bb")),
            entry(2, 4, Some(last)),
        ];
        for e in &entries {
            s.append(std::slice::from_ref(e));
            s.sync().unwrap();
        }
        entries
    }

    /// Byte offset of each batch in the log file.
    fn batch_offsets(log: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        let mut off = LOG_HEADER_LEN;
        while off + BATCH_HEADER_LEN <= log.len() {
            v.push(off);
            off += BATCH_HEADER_LEN + u32_at(log, off + 4) as usize;
        }
        v
    }

    /// Byte offset of each record in the log file.
    fn record_offsets(log: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        for b in batch_offsets(log) {
            let end = (b + BATCH_HEADER_LEN + u32_at(log, b + 4) as usize).min(log.len());
            let mut off = b + BATCH_HEADER_LEN;
            while off + RECORD_HEADER_LEN <= end {
                v.push(off);
                off += RECORD_HEADER_LEN + u32_at(log, off) as usize;
            }
        }
        v
    }

    #[test]
    fn first_boot_creates_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("node1");
        let (s, r) = open(&d).unwrap();
        assert!(r.first_boot);
        assert_eq!(r.hard_state, HardState::default());
        assert!(r.entries.is_empty());
        assert!(!s.needs_sync());
        drop(s);
        let (_, r) = open(&d).unwrap();
        assert!(!r.first_boot);
        assert!(r.entries.is_empty());
        let files = snapshot(&d);
        assert!(files.contains_key(META_FILE) && files.contains_key(LOG_FILE));
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let entries = populated(dir.path());
        let (mut s, r) = open(dir.path()).unwrap();
        assert_eq!(r.hard_state, hs(2, Some(1)));
        assert_eq!(r.entries, entries);
        assert_eq!(s.last_index(), LogIndex(4));
        // Vote cleared in a new term.
        s.save_hard_state(hs(3, None));
        s.sync().unwrap();
        drop(s);
        let (_, r) = open(dir.path()).unwrap();
        assert_eq!(r.hard_state, hs(3, None));
        assert_eq!(r.entries, entries);
    }

    #[test]
    fn nothing_is_durable_before_sync() {
        let dir = tempfile::tempdir().unwrap();
        let entries = populated(dir.path());
        let (mut s, _) = open(dir.path()).unwrap();
        s.save_hard_state(hs(5, Some(2)));
        s.append(&[entry(5, 5, Some("lost"))]);
        assert!(s.needs_sync());
        drop(s); // a crash: the buffer is gone
        let (_, r) = open(dir.path()).unwrap();
        assert_eq!(r.hard_state, hs(2, Some(1)));
        assert_eq!(r.entries, entries);
    }

    #[test]
    fn truncate_then_append_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let entries = populated(dir.path());
        let (mut s, _) = open(dir.path()).unwrap();
        s.save_hard_state(hs(3, None));
        s.truncate(LogIndex(3));
        s.append(&[
            entry(3, 3, Some("x")),
            entry(3, 4, Some("y")),
            entry(3, 5, None),
        ]);
        s.sync().unwrap();
        drop(s);
        let (mut s, r) = open(dir.path()).unwrap();
        let mut want = entries[..2].to_vec();
        want.extend([
            entry(3, 3, Some("x")),
            entry(3, 4, Some("y")),
            entry(3, 5, None),
        ]);
        assert_eq!(r.entries, want);
        // Truncate everything, in a batch of its own.
        s.truncate(LogIndex(1));
        s.sync().unwrap();
        drop(s);
        let (mut s, r) = open(dir.path()).unwrap();
        assert!(r.entries.is_empty());
        s.append(&[entry(3, 1, Some("again"))]);
        s.sync().unwrap();
        drop(s);
        let (_, r) = open(dir.path()).unwrap();
        assert_eq!(r.entries, vec![entry(3, 1, Some("again"))]);
    }

    #[test]
    #[should_panic(expected = "does not follow")]
    fn append_with_a_gap_panics() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let (mut s, _) = open(dir.path()).unwrap();
        s.append(&[entry(2, 6, None)]);
    }

    #[test]
    #[should_panic(expected = "above current term")]
    fn append_above_current_term_panics() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let (mut s, _) = open(dir.path()).unwrap();
        s.append(&[entry(3, 5, None)]);
    }

    /// Damages the last batch (entry 4, command `last`) with `mangle`, which
    /// gets the batch offsets, reopens, and checks the torn batch is
    /// dropped, the file is cut back to the last good batch, and appending
    /// works after.
    fn check_torn(mangle: impl FnOnce(&mut Vec<u8>, &[usize])) {
        check_torn_with("ccc", mangle)
    }

    fn check_torn_with(last: &str, mangle: impl FnOnce(&mut Vec<u8>, &[usize])) {
        let dir = tempfile::tempdir().unwrap();
        let entries = populated_with(dir.path(), last);
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let offsets = batch_offsets(&log);
        assert_eq!(offsets.len(), 4);
        mangle(&mut log, &offsets);
        fs::write(&log_path, &log).unwrap();
        let (mut s, r) = open(dir.path()).unwrap();
        assert_eq!(r.entries, entries[..3]);
        assert_eq!(fs::metadata(&log_path).unwrap().len(), offsets[3] as u64);
        s.append(&[entry(2, 4, Some("new"))]);
        s.sync().unwrap();
        drop(s);
        let (_, r) = open(dir.path()).unwrap();
        assert_eq!(r.entries[3], entry(2, 4, Some("new")));
    }

    #[test]
    fn torn_tail_short_body_is_cut() {
        check_torn(|log, _| log.truncate(log.len() - 2));
    }

    #[test]
    fn torn_tail_short_header_is_cut() {
        check_torn(|log, offs| log.truncate(offs[3] + 3));
    }

    #[test]
    fn torn_tail_bad_checksum_is_cut() {
        // The last batch spans sectors; one in its middle was not written
        // back and reads as zeroes, with the batch's later sectors intact.
        // (A bit flip there would be refused: a power cut leaves zeroes.)
        check_torn_with(&"c".repeat(1500), |log, offs| {
            let hole = (offs[3] / SECTOR + 1) * SECTOR;
            assert!(hole + SECTOR < log.len());
            log[hole..hole + SECTOR].fill(0);
        });
    }

    #[test]
    fn torn_tail_zero_filled_is_cut() {
        // The last record's body never made it, and the filesystem shows
        // zeroes in its place plus a block of preallocated zeroes.
        check_torn(|log, offs| {
            for b in &mut log[offs[3]..] {
                *b = 0;
            }
            log.extend_from_slice(&[0u8; 4096]);
        });
        check_torn(|log, offs| {
            log.truncate(offs[3]);
            log.extend_from_slice(&[0u8; 100]);
        });
    }

    #[test]
    fn mid_file_corruption_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let offsets = record_offsets(&log);
        // Flip a payload byte of record 2 (index 3, "bb").
        log[offsets[2] + RECORD_HEADER_LEN + ENTRY_BODY_FIXED_LEN] ^= 0x01;
        fs::write(&log_path, &log).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == offsets[2] as u64),
            "{msg}"
        );
        assert!(msg.contains(&log_path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("byte offset {}", offsets[2])),
            "{msg}"
        );
        assert!(msg.contains("checksum"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(
            snapshot(dir.path()),
            before,
            "disk changed on a refused start"
        );
    }

    #[test]
    fn wild_length_mid_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let offsets = record_offsets(&log);
        log[offsets[1] + 3] = 0x7f; // length ~2 GiB
        fs::write(&log_path, &log).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == offsets[1] as u64),
            "{err}"
        );
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn damaged_length_of_the_last_record_is_corruption_not_a_torn_tail() {
        // A bit flip makes the final record's length point past the end of
        // the file, which looks like a write the crash cut short. Cutting
        // it would silently drop an acknowledged entry; the length's own
        // checksum tells the two apart.
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let last = *record_offsets(&log).last().unwrap();
        log[last + 1] ^= 0x04; // +1 KiB: in range, past the end of the file
        fs::write(&log_path, &log).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == last as u64),
            "{err}"
        );
        assert_eq!(snapshot(dir.path()), before, "nothing on disk changed");
    }

    /// Appends a batch of one record with valid checksums but the given
    /// body; returns the record's offset.
    fn append_raw(dir: &Path, body: &[u8]) -> u64 {
        let log_path = dir.join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let mut batch = Vec::new();
        push_record(&mut batch, body);
        log.extend_from_slice(&encode_batch_header(&batch));
        let off = log.len() as u64;
        log.extend_from_slice(&batch);
        fs::write(&log_path, &log).unwrap();
        off
    }

    fn entry_body(term: u64, index: u64) -> Vec<u8> {
        let mut b = vec![KIND_ENTRY];
        b.extend_from_slice(&term.to_le_bytes());
        b.extend_from_slice(&index.to_le_bytes());
        b.push(PAYLOAD_NOOP);
        b
    }

    fn check_impossible(body: Vec<u8>, want: &str) {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let off = append_raw(dir.path(), &body);
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == off),
            "{msg}"
        );
        assert!(msg.contains(want), "{msg} lacks {want}");
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn impossible_records_are_refused_even_at_the_tail() {
        check_impossible(entry_body(2, 6), "does not follow the previous index 4");
        check_impossible(entry_body(2, 4), "does not follow");
        check_impossible(entry_body(9, 5), "above the current term 2");
        check_impossible(
            vec![KIND_TRUNCATE, 9, 0, 0, 0, 0, 0, 0, 0],
            "outside the log",
        );
        check_impossible(vec![7, 1, 2, 3], "unknown record kind 7");
        let mut b = entry_body(2, 5);
        b[17] = 9;
        check_impossible(b, "unknown payload kind 9");
    }

    #[test]
    fn decreasing_term_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path()).unwrap();
        s.save_hard_state(hs(3, None));
        s.append(&[entry(3, 1, None)]);
        s.sync().unwrap();
        drop(s);
        let off = append_raw(dir.path(), &entry_body(2, 2));
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { offset, .. } if offset == off));
        assert!(err
            .to_string()
            .contains("below the previous entry's term 3"));
    }

    #[test]
    fn another_cluster_or_member_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let before = snapshot(dir.path());
        let err = Storage::open(dir.path(), CLUSTER + 1, ME).unwrap_err();
        assert!(matches!(err, StorageError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("belongs to cluster"), "{err}");
        assert!(err.to_string().contains(META_FILE), "{err}");
        let err = Storage::open(dir.path(), CLUSTER, NodeId(2)).unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to member 1, not to member 2"),
            "{err}"
        );
        assert_eq!(snapshot(dir.path()), before);

        // A log swapped in from another member is caught by its header.
        let other = tempfile::tempdir().unwrap();
        Storage::open(other.path(), CLUSTER, NodeId(2)).unwrap();
        fs::copy(other.path().join(LOG_FILE), dir.path().join(LOG_FILE)).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(LOG_FILE), "{err}");
        assert!(err.to_string().contains("member 2"), "{err}");
    }

    #[test]
    fn missing_or_corrupt_meta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let meta_path = dir.path().join(META_FILE);
        let good = fs::read(&meta_path).unwrap();

        let mut bad = good.clone();
        bad[30] ^= 1;
        fs::write(&meta_path, &bad).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset: 44, .. }),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with(&meta_path.display().to_string()));
        assert_eq!(snapshot(dir.path()), before);

        fs::write(&meta_path, &good[..10]).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("file is 10 bytes"), "{err}");

        fs::remove_file(&meta_path).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Missing { .. }), "{err}");
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn missing_log_is_refused_unless_first_boot_was_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("records term 2"), "{err}");

        // Crash after meta, before log, on first boot: completed on restart.
        let dir = tempfile::tempdir().unwrap();
        write_meta(dir.path(), CLUSTER, ME, HardState::default(), &mut None).unwrap();
        let (_, r) = open(dir.path()).unwrap();
        assert!(r.first_boot);
        assert!(dir.path().join(LOG_FILE).exists());
    }

    #[test]
    fn a_second_opener_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = open(dir.path()).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        drop(s);
        open(dir.path()).unwrap();
    }

    #[test]
    fn meta_round_trips_and_rejects_bit_flips() {
        let h = hs(u64::MAX, Some(u64::MAX - 1));
        let b = encode_meta(7, NodeId(3), h);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        fs::write(&p, b).unwrap();
        let m = read_meta(&p).unwrap().unwrap();
        assert_eq!((m.cluster_id, m.node_id, m.hard_state), (7, 3, h));
        for i in 0..META_LEN {
            let mut c = b;
            c[i] ^= 0x10;
            fs::write(&p, c).unwrap();
            assert!(read_meta(&p).is_err(), "flip at {i} accepted");
        }
    }

    // Batch framing: what recovery drops and what it refuses.

    /// `populated`, then entries 5..5+n with `size`-byte commands in one
    /// batch (spanning sectors when large), then, if `after`, entry
    /// 5+n in a batch of its own. Returns every entry and the offsets of
    /// the batches.
    fn with_big_batch(dir: &Path, n: u64, size: usize, after: bool) -> (Vec<Entry>, Vec<usize>) {
        let mut entries = populated(dir);
        let (mut s, _) = open(dir).unwrap();
        let mut rng = Rng::new(n * 1000 + size as u64);
        let big: Vec<Entry> = (5..5 + n)
            .map(|i| {
                // Letters: no run of zeroes that could pass for a hole.
                let c: String = (0..size)
                    .map(|_| char::from(b'a' + rng.range(0, 26) as u8))
                    .collect();
                entry(2, i, Some(&c))
            })
            .collect();
        s.append(&big);
        s.sync().unwrap();
        entries.extend(big);
        if after {
            let e = entry(2, 5 + n, Some("after"));
            s.append(std::slice::from_ref(&e));
            s.sync().unwrap();
            entries.push(e);
        }
        let log = fs::read(dir.join(LOG_FILE)).unwrap();
        (entries, batch_offsets(&log))
    }

    /// Mangles the log of `with_big_batch(8, 300, false)` and checks that
    /// recovery drops the big (last) batch whole, cuts the file back to it,
    /// and that the store works after.
    fn check_last_batch_dropped(mangle: impl FnOnce(&mut Vec<u8>, usize)) {
        let dir = tempfile::tempdir().unwrap();
        let (entries, batches) = with_big_batch(dir.path(), 8, 300, false);
        let last = batches[4];
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        mangle(&mut log, last);
        fs::write(&log_path, &log).unwrap();
        let (mut s, r) = open(dir.path()).unwrap();
        assert_eq!(
            r.entries,
            entries[..4],
            "the torn batch was not dropped whole"
        );
        assert_eq!(fs::metadata(&log_path).unwrap().len(), last as u64);
        s.append(&[entry(2, 5, Some("again"))]);
        s.sync().unwrap();
        drop(s);
        let (_, r) = open(dir.path()).unwrap();
        assert_eq!(r.entries.len(), 5);
        assert_eq!(r.entries[4], entry(2, 5, Some("again")));
    }

    #[test]
    fn torn_last_batch_is_dropped_whole() {
        // The cut left a prefix holding whole records: none of the batch was
        // acknowledged (its sync never returned), so none of it is kept.
        check_last_batch_dropped(|log, last| {
            let recs: Vec<usize> = record_offsets(log)
                .into_iter()
                .filter(|&r| r > last)
                .collect();
            log.truncate(recs[5] + 7);
        });
        check_last_batch_dropped(|log, last| log.truncate(last + BATCH_HEADER_LEN));
        check_last_batch_dropped(|log, last| log.truncate(last + 5));
        check_last_batch_dropped(|log, _| log.truncate(log.len() - 1));
    }

    #[test]
    fn a_zero_tail_longer_than_a_batch_is_dropped() {
        // Nothing was written there, so nothing is lost by dropping it,
        // however long it is (preallocated space).
        check_torn(|log, offs| {
            log.truncate(offs[3]);
            log.resize(offs[3] + BATCH_HEADER_LEN + MAX_BATCH_LEN + 1, 0);
        });
    }

    #[test]
    fn zero_hole_inside_the_last_batch_is_dropped() {
        // A sector in the middle was not written back; the records after
        // it were. This was refused as corruption before batches.
        check_last_batch_dropped(|log, last| {
            let hole = (last / SECTOR + 2) * SECTOR;
            assert!(hole + 2 * SECTOR < log.len());
            log[hole..hole + SECTOR].fill(0);
        });
        // Two sectors, and zeroes after the end (size updated, data not).
        check_last_batch_dropped(|log, last| {
            let hole = (last / SECTOR + 1) * SECTOR;
            log[hole..hole + 2 * SECTOR].fill(0);
            log.extend_from_slice(&[0u8; 300]);
        });
        // The batch's first sector, header included (clipped at the batch:
        // the synced bytes before it in that sector stay).
        check_last_batch_dropped(|log, last| {
            let end = (last / SECTOR + 1) * SECTOR;
            log[last..end].fill(0);
        });
        // The last, partial sector.
        check_last_batch_dropped(|log, _| {
            let n = log.len();
            log[(n - 1) / SECTOR * SECTOR..].fill(0);
        });
    }

    /// Mangles the log of `with_big_batch(8, 300, true)` and checks that
    /// opening is refused at `want_offset(batches, records)`, with a
    /// message containing `want`, and that nothing changed.
    fn check_refused(
        mangle: impl FnOnce(&mut Vec<u8>, &[usize]),
        want_offset: impl FnOnce(&[usize], &[usize]) -> usize,
        want: &str,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (_, batches) = with_big_batch(dir.path(), 8, 300, true);
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let records = record_offsets(&log);
        mangle(&mut log, &batches);
        fs::write(&log_path, &log).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        let msg = err.to_string();
        let at = want_offset(&batches, &records) as u64;
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == at),
            "want offset {at}: {msg}"
        );
        assert!(msg.contains(want), "{msg} lacks {want:?}");
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(
            snapshot(dir.path()),
            before,
            "disk changed on a refused start"
        );
    }

    #[test]
    fn damaged_record_in_an_earlier_batch_is_refused() {
        // Zeroes, as a power cut would leave, but in a batch with another
        // one after it: that batch was synced, so this is lost data.
        check_refused(
            |log, b| {
                let hole = (b[4] / SECTOR + 2) * SECTOR;
                log[hole..hole + SECTOR].fill(0);
            },
            |b, r| {
                // The first record reaching into the hole.
                let hole = (b[4] / SECTOR + 2) * SECTOR;
                *r.iter().filter(|&&o| o < hole).max().unwrap()
            },
            "further data after it (so it was synced)",
        );
        // A bit flip in a record of the first batch.
        check_refused(
            |log, b| log[b[0] + BATCH_HEADER_LEN + RECORD_HEADER_LEN + 3] ^= 0x20,
            |_, r| r[0],
            "record checksum mismatch",
        );
    }

    #[test]
    fn damaged_batch_header_of_an_earlier_batch_is_refused() {
        // Zeroed with its sector: a whole batch follows, so it was synced.
        check_refused(
            |log, b| {
                let end = (b[4] / SECTOR + 1) * SECTOR;
                log[b[4]..end].fill(0);
            },
            |b, _| b[4],
            "a whole batch follows at byte offset",
        );
        // A bit flip: no torn write makes one.
        check_refused(
            |log, b| log[b[2] + 2] ^= 0x01,
            |b, _| b[2],
            "batch header damaged, and not by a power cut",
        );
        // A changed length: the header's own checksum catches it, so it is
        // never read as a batch that runs past the end of the file.
        check_refused(
            |log, b| log[b[5] + 5] ^= 0x10,
            |b, _| b[5],
            "batch header damaged",
        );
    }

    #[test]
    fn damaged_batch_header_of_the_last_batch() {
        // Zeroed with its sector, the rest of the batch there: torn, dropped
        // (zero_hole_inside_the_last_batch_is_dropped). Cut short: torn
        // (torn_tail_short_header_is_cut). Flipped bits: refused, a power
        // cut leaves zeroes.
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let last = *batch_offsets(&log).last().unwrap();
        log[last + 9] ^= 0x80;
        fs::write(&log_path, &log).unwrap();
        let before = snapshot(dir.path());
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == last as u64),
            "{err}"
        );
        assert!(err.to_string().contains("not by a power cut"), "{err}");
        assert_eq!(snapshot(dir.path()), before);

        // Only the header's bytes zeroed, the record bytes in the same
        // sector intact: a sector is written whole, so not a power cut.
        let mut log = fs::read(&log_path).unwrap();
        log[last + 9] ^= 0x80;
        log[last..last + BATCH_HEADER_LEN].fill(0);
        fs::write(&log_path, &log).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not by a power cut"), "{err}");

        // A well-formed header with an impossible length is what was
        // written: refused, not cut.
        let mut log = fs::read(&log_path).unwrap();
        let mut h = encode_batch_header(&[1]);
        h[4..8].copy_from_slice(&(MAX_BATCH_LEN as u32 + 1).to_le_bytes());
        let crc = crc32c::crc32c(&h[..12]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        log[last..last + BATCH_HEADER_LEN].copy_from_slice(&h);
        fs::write(&log_path, &log).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("batch length"), "{err}");
    }

    #[test]
    fn bit_flip_in_the_last_batch_is_refused() {
        // A power cut leaves zeroes, never a flipped bit: dropping this batch
        // could drop acknowledged entries.
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let last = *record_offsets(&log).last().unwrap();
        let n = log.len();
        log[n - 1] ^= 0xff;
        fs::write(&log_path, &log).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == last as u64),
            "{err}"
        );
        assert!(err.to_string().contains("no zeroed sector"), "{err}");
    }

    #[test]
    fn a_sync_larger_than_a_batch_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path()).unwrap();
        s.save_hard_state(hs(1, None));
        let big = "z".repeat(MAX_PAYLOAD_LEN);
        let entries: Vec<Entry> = (1..=5).map(|i| entry(1, i, Some(&big))).collect();
        s.append(&entries);
        s.sync().unwrap();
        drop(s);
        let log = fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(
            batch_offsets(&log).len(),
            2,
            "four largest records per batch"
        );
        let (_, r) = open(dir.path()).unwrap();
        assert_eq!(r.entries, entries);
    }

    #[test]
    fn older_format_is_refused_with_one_line() {
        for file in [META_FILE, LOG_FILE] {
            let dir = tempfile::tempdir().unwrap();
            populated(dir.path());
            let path = dir.path().join(file);
            let mut b = fs::read(&path).unwrap();
            b[8..12].copy_from_slice(&2u32.to_le_bytes());
            // A valid file of version 2, checksum and all.
            let (crc_at, len) = if file == META_FILE {
                (44, META_LEN)
            } else {
                (28, b.len())
            };
            let crc = crc32c::crc32c(&b[..crc_at]);
            b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(b.len(), len);
            fs::write(&path, &b).unwrap();
            let before = snapshot(dir.path());
            let err = open(dir.path()).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StorageError::Version { found: 2, .. }),
                "{msg}"
            );
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains("format version 2"), "{msg}");
            assert!(
                msg.contains(&format!("only version {FORMAT_VERSION}")),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
            assert_eq!(snapshot(dir.path()), before);
        }
    }

    // Power-cut mode: the simulation these tests and tests/crash.rs rely on.

    /// The unit tests' end of a power cut: unwind (quietly, without the
    /// panic hook) back to the test, which drops the store and reopens.
    fn unwind() -> ! {
        std::panic::resume_unwind(Box::new("simulated power cut"))
    }

    fn plan(when: CutWhen, seed: u64) -> Option<PowerCutPlan> {
        Some(PowerCutPlan {
            when,
            seed,
            halt: unwind,
        })
    }

    /// One run: a random workload of hard-state changes, truncations and
    /// appends, one sync per step, in power-cut mode until the cut; then a
    /// reopen, which must succeed and recover what the last completed sync
    /// made durable, or (where the cut spared it) what the sync in flight
    /// wrote. Returns the number of steps that completed.
    fn power_cut_run(seed: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        if rng.chance(0.5) {
            // A restart: the files as found count as durable.
            populated(dir.path());
        }
        let cut_at = rng.range(1, 16);
        let (mut s, r) =
            Storage::open_with(dir.path(), CLUSTER, ME, plan(CutWhen::AtSync(cut_at), seed))
                .unwrap();
        let mut synced = (r.hard_state, r.entries);
        let mut pending = synced.clone();
        let mut steps = 0;
        loop {
            let (hard, log) = &mut pending;
            if hard.current_term.0 == 0 || rng.chance(0.2) {
                *hard = hs(hard.current_term.0 + 1, rng.chance(0.5).then_some(2));
                s.save_hard_state(*hard);
            }
            if !log.is_empty() && rng.chance(0.2) {
                let from = rng.range(1, log.len() as u64 + 2);
                s.truncate(LogIndex(from));
                log.truncate(from as usize - 1);
            }
            for _ in 0..rng.range(1, 7) {
                let size = rng.range(0, 700) as usize;
                let c: String = (0..size)
                    .map(|_| char::from(b'a' + rng.range(0, 26) as u8))
                    .collect();
                let e = entry(hard.current_term.0, log.len() as u64 + 1, Some(&c));
                s.append(std::slice::from_ref(&e));
                log.push(e);
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.sync()));
            match r {
                Ok(Ok(())) => synced = pending.clone(),
                Ok(Err(e)) => panic!("seed {seed}: sync failed: {e}"),
                Err(_) => break,
            }
            steps += 1;
            assert!(steps < cut_at, "seed {seed}: no power cut at sync {cut_at}");
        }
        drop(s);
        let (_, r) = open(dir.path())
            .unwrap_or_else(|e| panic!("seed {seed}: refused after a power cut: {e}"));
        assert!(
            r.hard_state == synced.0 || r.hard_state == pending.0,
            "seed {seed}: recovered hard state {:?}; the last completed sync made {:?} durable, \
             the one cut short wrote {:?}",
            r.hard_state,
            synced.0,
            pending.0
        );
        assert!(
            r.entries == synced.1 || r.entries == pending.1,
            "seed {seed}: recovered {} entries (last {:?}); the last completed sync made {} \
             durable, the one cut short wrote {}",
            r.entries.len(),
            r.entries.last().map(|e| (e.term, e.index)),
            synced.1.len(),
            pending.1.len()
        );
        steps
    }

    #[test]
    fn power_cut_loses_nothing_synced() {
        let mut steps = 0;
        // Each run fsyncs a few dozen times: slow disks make this the
        // slowest unit test, so the seeds are few and the runs short.
        for seed in 0..100 {
            steps += power_cut_run(seed);
        }
        assert!(steps > 300, "too few syncs completed: {steps}");
    }

    #[test]
    fn power_cut_tears_the_log_and_puts_meta_back() {
        // Sync 1 writes meta and a batch; sync 2 writes a new term and a
        // batch and is cut: which point the seed picks decides whether the
        // new meta survives, never whether sync 1's data does.
        // Cut before meta.tmp's fsync or before the directory fsync: term 1;
        // after: term 2, with the batch torn (dropped) or spared. Runs until
        // each was seen (a bounded number of seeds).
        let want = [(1, 1), (2, 1), (2, 2)].into_iter().collect();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..400 {
            if seen == want {
                break;
            }
            let dir = tempfile::tempdir().unwrap();
            let (mut s, _) =
                Storage::open_with(dir.path(), CLUSTER, ME, plan(CutWhen::AtSync(2), seed))
                    .unwrap();
            s.save_hard_state(hs(1, Some(1)));
            s.append(&[entry(1, 1, Some("synced"))]);
            s.sync().unwrap();
            s.save_hard_state(hs(2, Some(2)));
            s.append(&[entry(2, 2, Some(&"in flight ".repeat(100)))]);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.sync()));
            assert!(r.is_err(), "seed {seed}: no cut");
            drop(s);
            assert!(!dir.path().join(META_TMP).exists());
            let (_, r) = open(dir.path()).unwrap();
            assert_eq!(
                r.entries.first(),
                Some(&entry(1, 1, Some("synced"))),
                "seed {seed}: the entry of sync 1 was lost"
            );
            assert!(r.entries.len() <= 2);
            seen.insert((r.hard_state.current_term.0, r.entries.len()));
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn a_rename_is_durable_after_the_directory_fsync_with_the_data_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut pc = Some(PowerCut::new(plan(CutWhen::AtSync(9), 0).unwrap(), d));
        let meta = |pc: &Option<PowerCut>| pc.as_ref().unwrap().meta.clone();
        assert_eq!(meta(&pc), None, "nothing there at start");
        replace_atomically(d, META_TMP, META_FILE, b"one", &mut pc).unwrap();
        assert_eq!(meta(&pc).as_deref(), Some(&b"one"[..]));

        // Written and renamed, never fsynced: the old contents until the
        // directory fsync, then an empty file.
        let tmp = |bytes: &[u8], pc: &mut Option<PowerCut>| {
            let f = File::create(d.join(META_TMP)).unwrap();
            pc.as_mut().unwrap().tmp_created(META_TMP);
            (&f).write_all(bytes).unwrap();
            f
        };
        let rename = |pc: &mut Option<PowerCut>| {
            fs::rename(d.join(META_TMP), d.join(META_FILE)).unwrap();
            pc.as_mut().unwrap().renamed(META_TMP, META_FILE);
        };
        drop(tmp(b"two", &mut pc));
        rename(&mut pc);
        assert_eq!(
            meta(&pc).as_deref(),
            Some(&b"one"[..]),
            "rename not durable yet"
        );
        fsync_dir(d, &mut pc).unwrap();
        assert_eq!(meta(&pc).as_deref(), Some(&b""[..]), "data never fsynced");

        // Fsynced, renamed: still the old contents until the directory fsync.
        let f = tmp(b"three", &mut pc);
        fsync_file(&f, d, META_TMP, SyncKind::All, &mut pc).unwrap();
        rename(&mut pc);
        assert_eq!(meta(&pc).as_deref(), Some(&b""[..]));
        fsync_dir(d, &mut pc).unwrap();
        assert_eq!(meta(&pc).as_deref(), Some(&b"three"[..]));
    }

    #[test]
    fn power_cut_switches_parse() {
        let os = |s: &str| Some(OsString::from(s));
        assert!(PowerCutPlan::parse(None, None, None).unwrap().is_none());
        let p = PowerCutPlan::parse(os("7"), None, os("42"))
            .unwrap()
            .unwrap();
        assert_eq!((p.when, p.seed), (CutWhen::AtSync(7), 42));
        let p = PowerCutPlan::parse(None, os("/tmp/x"), os("1"))
            .unwrap()
            .unwrap();
        assert_eq!(p.when, CutWhen::FileExists(PathBuf::from("/tmp/x")));
        for (at, file, seed, want) in [
            (
                os("0"),
                None,
                None,
                "RAFT_POWER_CUT_AT_SYNC: \"0\" is not a positive integer",
            ),
            (os("x"), None, None, "not a positive integer"),
            (os("1"), os("/f"), None, "set one"),
            (None, os(""), None, "RAFT_POWER_CUT_FILE: empty path"),
            (os("1"), None, os("-3"), "RAFT_POWER_CUT_SEED"),
        ] {
            let err = PowerCutPlan::parse(at, file, seed).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
