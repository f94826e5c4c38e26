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
//!   followed by records, only ever appended to. Each record is
//!   `u32 length | u32 CRC32C of the body | body`, little-endian; the body is
//!   an entry `{1, term u64, index u64, payload kind u8 (0 no-op, 1 command),
//!   command bytes}` or a truncation `{2, from u64}`.
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
//! log fsync (group commit: every entry of a loop turn shares it), writing
//! `meta` first when the hard state changed. Nothing is promised before
//! `sync` returns.
//!
//! # Recovery
//!
//! [`Storage::open`] validates everything before changing anything. A torn
//! final record (a crash in the middle of an append) is cut off with a
//! warning. A checksum error before the tail, a record whose fields are
//! impossible (an index that does not follow, a term that goes down or is
//! above the current term), a missing or unreadable file, or a data dir of
//! another cluster or member is a [`StorageError`] naming the file, the byte
//! offset and what is wrong, and leaves the disk untouched.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_proto::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

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
const FORMAT_VERSION: u32 = 2;
/// magic 8 | version 4 | cluster 8 | member 8 | term 8 | voted_for 8 | crc 4
const META_LEN: usize = 48;
/// magic 8 | version 4 | cluster 8 | member 8 | crc 4
const LOG_HEADER_LEN: usize = 32;
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
}

impl Storage {
    /// Opens (or on first boot creates) the store in `dir` for member
    /// `node_id` of cluster `cluster_id`, takes the lock and recovers the
    /// durable state.
    pub fn open(
        dir: &Path,
        cluster_id: u64,
        node_id: NodeId,
    ) -> Result<(Storage, Recovered), StorageError> {
        assert_ne!(node_id.0, 0, "node id 0 is reserved");
        fs::create_dir_all(dir).map_err(|e| io_err(dir, "cannot create directory", e))?;
        let lock = take_lock(&dir.join(LOCK_FILE))?;

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
                write_meta(dir, cluster_id, node_id, HardState::default())?;
                create_log(dir, cluster_id, node_id)?;
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
                create_log(dir, cluster_id, node_id)?;
                (m.hard_state, Vec::new(), true)
            }
            (Some(m), Some(bytes)) => {
                let scan = scan_log(&log_path, &bytes, cluster_id, node_id, m.hard_state)?;
                if let Some(torn) = &scan.torn {
                    // Everything before the tail checked out: only now touch
                    // the disk.
                    log::warn!(
                        "{}: torn final record at byte offset {} ({} bytes, {}): cut off, \
                         recovering {} entries",
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
                    f.sync_all()
                        .map_err(|e| io_err(&log_path, "cannot fsync", e))?;
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
    /// (if the hard state changed), then the log records with one fsync.
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
        if self.hard_state_dirty {
            write_meta(&self.dir, self.cluster_id, self.node_id, self.hard_state)?;
            self.hard_state_dirty = false;
        }
        if !self.buf.is_empty() {
            self.log
                .write_all(&self.buf)
                .map_err(|e| io_err(&self.log_path, "cannot write", e))?;
            // fdatasync also persists the new file size, which is all the
            // metadata an append changes.
            self.log
                .sync_data()
                .map_err(|e| io_err(&self.log_path, "cannot fsync", e))?;
            self.buf.clear();
            // Do not keep a large buffer from one big batch forever.
            if self.buf.capacity() > 4 * MAX_RECORD_LEN {
                self.buf = Vec::new();
            }
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
            StorageError::Missing { path, why } => write!(f, "{}: {why}", path.display()),
            StorageError::Foreign { path, what } => write!(f, "{}: {what}", path.display()),
            StorageError::Poisoned { path } => write!(
                f,
                "{}: an earlier write or fsync failed; the file's state is unknown",
                path.display()
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

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot fsync directory", e))
}

/// Writes `bytes` to `dir/tmp`, fsyncs it, renames it to `dir/name` and
/// fsyncs the directory: after a crash `name` holds either its old contents or
/// all of `bytes`.
fn replace_atomically(dir: &Path, tmp: &str, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp_path = dir.join(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)
        .map_err(|e| io_err(&tmp_path, "cannot create", e))?;
    f.write_all(bytes)
        .map_err(|e| io_err(&tmp_path, "cannot write", e))?;
    f.sync_all()
        .map_err(|e| io_err(&tmp_path, "cannot fsync", e))?;
    drop(f);
    let path = dir.join(name);
    fs::rename(&tmp_path, &path).map_err(|e| io_err(&path, "cannot rename into place", e))?;
    sync_dir(dir)
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
) -> Result<(), StorageError> {
    replace_atomically(
        dir,
        META_TMP,
        META_FILE,
        &encode_meta(cluster_id, node_id, hs),
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
    let version = u32_at(&b, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            8,
            format!("unsupported format version {version} (expected {FORMAT_VERSION})"),
        ));
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
fn create_log(dir: &Path, cluster_id: u64, node_id: NodeId) -> Result<(), StorageError> {
    replace_atomically(
        dir,
        LOG_TMP,
        LOG_FILE,
        &encode_log_header(cluster_id, node_id),
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

/// A damaged final record that recovery may cut off.
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

/// Validates the whole log without changing it. Returns the entries and, if
/// the file ends in a torn record, where the valid prefix ends.
///
/// A bad record is a torn tail, not corruption, when nothing valid can follow
/// it: its declared body runs past the end of the file, or everything from
/// the end of the record (or from the record itself, when its length field
/// is unusable) to the end of the file is zero bytes, which is what some
/// filesystems show for blocks allocated but not written before a crash. Any
/// other bad record is corruption: it has data after it that was once
/// written successfully, and cutting there could drop acknowledged entries.
fn scan_log(
    path: &Path,
    bytes: &Bytes,
    cluster_id: u64,
    node_id: NodeId,
    hard_state: HardState,
) -> Result<Scan, StorageError> {
    let len = bytes.len();
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
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            8,
            format!("unsupported format version {version} (expected {FORMAT_VERSION})"),
        ));
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
    let mut torn: Option<TornTail> = None;
    let mut off = LOG_HEADER_LEN;
    while off < len {
        let mut cut = |why: String| {
            torn = Some(TornTail {
                offset: off as u64,
                why,
            })
        };
        let rest = len - off;
        if rest < RECORD_HEADER_LEN {
            cut(format!("{rest} bytes of a record header"));
            break;
        }
        let rlen = u32_at(bytes, off) as usize;
        let crc = u32_at(bytes, off + 8);
        if crc32c::crc32c(&bytes[off..off + 4]) != u32_at(bytes, off + 4) {
            // A header written in full but wrong: torn only if nothing was
            // ever written after it.
            if zeros_from(off) {
                cut("zero-filled tail".into());
                break;
            }
            return Err(corrupt(path, off as u64, "record length checksum mismatch"));
        }
        if rlen == 0 || rlen > MAX_RECORD_LEN {
            if zeros_from(off) {
                cut("zero-filled tail".into());
                break;
            }
            return Err(corrupt(
                path,
                off as u64,
                format!("record length {rlen} outside 1..={MAX_RECORD_LEN}"),
            ));
        }
        let end = off + RECORD_HEADER_LEN + rlen;
        if end > len {
            cut(format!(
                "record of {rlen} bytes has only {} written",
                rest - RECORD_HEADER_LEN
            ));
            break;
        }
        let body = bytes.slice(off + RECORD_HEADER_LEN..end);
        if crc32c::crc32c(&body) != crc {
            if zeros_from(end) {
                cut("checksum mismatch in the final record".into());
                break;
            }
            return Err(corrupt(
                path,
                off as u64,
                format!(
                    "record checksum mismatch, with {} bytes of further records after it",
                    len - end
                ),
            ));
        }
        // From here on the record is exactly what was written: anything
        // impossible in it is corruption (or a bug), never a torn write.
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
        off = end;
    }
    Ok(Scan { entries, torn })
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

    /// A store with a noop at 1 and commands at 2..=4, all in term 2.
    fn populated(dir: &Path) -> Vec<Entry> {
        let (mut s, r) = open(dir).unwrap();
        assert!(r.first_boot);
        s.save_hard_state(hs(2, Some(1)));
        let entries = vec![
            entry(2, 1, None),
            entry(2, 2, Some("a")),
            entry(2, 3, Some("bb")),
            entry(2, 4, Some("ccc")),
        ];
        s.append(&entries);
        s.sync().unwrap();
        entries
    }

    /// Byte offset of each record in the log file.
    fn record_offsets(log: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        let mut off = LOG_HEADER_LEN;
        while off + RECORD_HEADER_LEN <= log.len() {
            v.push(off);
            off += RECORD_HEADER_LEN + u32_at(log, off) as usize;
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

    /// Cuts the file, reopens, and checks the torn record is dropped, the
    /// file is cut back to the last good record, and appending works after.
    fn check_torn(mangle: impl FnOnce(&mut Vec<u8>, &[usize])) {
        let dir = tempfile::tempdir().unwrap();
        let entries = populated(dir.path());
        let log_path = dir.path().join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let offsets = record_offsets(&log);
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
        check_torn(|log, _| {
            let n = log.len();
            log[n - 1] ^= 0xff;
        });
    }

    #[test]
    fn torn_tail_zero_filled_is_cut() {
        // The last record's body never made it, and the filesystem shows
        // zeroes in its place plus a block of preallocated zeroes.
        check_torn(|log, offs| {
            for b in &mut log[offs[3] + RECORD_HEADER_LEN..] {
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

    /// Appends a record with a valid checksum but the given body.
    fn append_raw(dir: &Path, body: &[u8]) -> u64 {
        let log_path = dir.join(LOG_FILE);
        let mut log = fs::read(&log_path).unwrap();
        let off = log.len() as u64;
        push_record(&mut log, body);
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
        write_meta(dir.path(), CLUSTER, ME, HardState::default()).unwrap();
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
}
