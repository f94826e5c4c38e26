//! The snapshot file: its header, the writer a helper thread fills, the
//! reader that streams the payload back, and the checks applied to a
//! snapshot found at start-up or received from a leader.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft_proto::{LogIndex, Term};

use super::{corrupt, io_err, u32_at, u64_at, StorageError};

const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTSNAP";
/// The snapshot file's own format version: it travels between members, so
/// it is versioned apart from the data dir. Version 2: the payload, opaque
/// here, starts with the cluster configuration (raft-node's `members.rs`);
/// a version 1 file is refused with one line rather than misread.
pub(super) const SNAPSHOT_VERSION: u32 = 2;
/// magic 8 | version 4 | cluster 8 | last index 8 | last term 8 |
/// payload length 8 | payload crc 4 | header crc 4
pub const SNAPSHOT_HEADER_LEN: usize = 52;
/// Buffer size of the writer and the readers: large enough that a payload
/// of a hundred megabytes takes few system calls.
const IO_BUF_LEN: usize = 1 << 20;

/// A snapshot as the store knows it: the last log entry it covers, and the
/// length of the whole file (header and payload), which is what is sent to
/// other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Index of the last entry the snapshot covers.
    pub last_index: LogIndex,
    /// Term of that entry.
    pub last_term: Term,
    /// Bytes in the whole snapshot file, header included.
    pub len: u64,
}

/// Fsyncs made off the main thread (by [`SnapshotWriter::finish`]) that the
/// power-cut simulation must learn of: `(inode, length)` of each file.
pub(super) type SyncLedger = Arc<Mutex<Vec<(u64, u64)>>>;

/// What a snapshot header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SnapshotHeader {
    pub cluster_id: u64,
    pub last_index: LogIndex,
    pub last_term: Term,
    pub payload_len: u64,
    pub payload_crc: u32,
}

impl SnapshotHeader {
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            last_index: self.last_index,
            last_term: self.last_term,
            len: SNAPSHOT_HEADER_LEN as u64 + self.payload_len,
        }
    }
}

pub(super) fn encode_snapshot_header(h: &SnapshotHeader) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut b = [0u8; SNAPSHOT_HEADER_LEN];
    b[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    b[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&h.cluster_id.to_le_bytes());
    b[20..28].copy_from_slice(&h.last_index.0.to_le_bytes());
    b[28..36].copy_from_slice(&h.last_term.0.to_le_bytes());
    b[36..44].copy_from_slice(&h.payload_len.to_le_bytes());
    b[44..48].copy_from_slice(&h.payload_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..48]);
    b[48..52].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a snapshot file is not acceptable: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SnapshotFault {
    /// Written in another format version.
    Version(u32),
    /// Of another cluster.
    Foreign(u64),
    /// Anything else, at this byte offset.
    Bad { offset: u64, what: String },
}

impl fmt::Display for SnapshotFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotFault::Version(v) => write!(
                f,
                "snapshot format version {v}, this raft-node reads version {SNAPSHOT_VERSION}"
            ),
            SnapshotFault::Foreign(c) => write!(f, "snapshot of cluster {c:016x}"),
            SnapshotFault::Bad { offset, what } => write!(f, "at byte offset {offset}: {what}"),
        }
    }
}

impl SnapshotFault {
    fn bad(offset: u64, what: impl Into<String>) -> SnapshotFault {
        SnapshotFault::Bad {
            offset,
            what: what.into(),
        }
    }

    /// The fault of the snapshot file at `path`, as an error of the store.
    pub fn into_error(self, path: &Path, cluster_id: u64) -> StorageError {
        match self {
            SnapshotFault::Version(found) => StorageError::Version {
                path: path.to_path_buf(),
                found,
                expected: SNAPSHOT_VERSION,
            },
            SnapshotFault::Foreign(c) => StorageError::Foreign {
                path: path.to_path_buf(),
                what: format!(
                    "the snapshot belongs to cluster {c:016x}, but the cluster file describes \
                     cluster {cluster_id:016x}"
                ),
            },
            SnapshotFault::Bad { offset, what } => corrupt(path, offset, what),
        }
    }
}

/// Parses a snapshot header of a file of `file_len` bytes, for cluster
/// `cluster_id`. `bytes` holds the file's first bytes (at most the header).
pub(super) fn parse_snapshot_header(
    bytes: &[u8],
    file_len: u64,
    cluster_id: u64,
) -> Result<SnapshotHeader, SnapshotFault> {
    if bytes.len() >= 12 && &bytes[0..8] == SNAPSHOT_MAGIC {
        let version = u32_at(bytes, 8);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotFault::Version(version));
        }
    }
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(SnapshotFault::bad(
            bytes.len() as u64,
            format!(
                "file is {} bytes, shorter than the {SNAPSHOT_HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    if &bytes[0..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotFault::bad(0, "not a snapshot (bad magic)"));
    }
    if crc32c::crc32c(&bytes[..48]) != u32_at(bytes, 48) {
        return Err(SnapshotFault::bad(48, "header checksum mismatch"));
    }
    let h = SnapshotHeader {
        cluster_id: u64_at(bytes, 12),
        last_index: LogIndex(u64_at(bytes, 20)),
        last_term: Term(u64_at(bytes, 28)),
        payload_len: u64_at(bytes, 36),
        payload_crc: u32_at(bytes, 44),
    };
    if h.cluster_id != cluster_id {
        return Err(SnapshotFault::Foreign(h.cluster_id));
    }
    if h.last_index.0 == 0 || h.last_term.0 == 0 {
        return Err(SnapshotFault::bad(
            20,
            format!(
                "last entry {} of term {}: a snapshot covers at least one entry",
                h.last_index, h.last_term
            ),
        ));
    }
    let want = (SNAPSHOT_HEADER_LEN as u64).checked_add(h.payload_len);
    if want != Some(file_len) {
        return Err(SnapshotFault::bad(
            file_len.min(want.unwrap_or(u64::MAX)),
            format!(
                "file is {file_len} bytes, but its header promises {SNAPSHOT_HEADER_LEN} + {} bytes",
                h.payload_len
            ),
        ));
    }
    Ok(h)
}

/// Reads and parses the header of the snapshot file `file` (at `path`).
pub(super) fn read_snapshot_header(
    path: &Path,
    file: &File,
    cluster_id: u64,
) -> Result<SnapshotHeader, StorageError> {
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    let mut b = vec![0u8; (len as usize).min(SNAPSHOT_HEADER_LEN)];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| io_err(path, "cannot read", e))?;
    parse_snapshot_header(&b, len, cluster_id).map_err(|f| f.into_error(path, cluster_id))
}

/// Reads and checks the whole snapshot file `file` (at `path`): header,
/// length and payload checksum. Errors name the file and the offset.
pub(super) fn check_snapshot_file(
    path: &Path,
    file: &File,
    cluster_id: u64,
) -> Result<SnapshotHeader, StorageError> {
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    let h = read_snapshot_header(path, file, cluster_id)?;
    // pread: the store's descriptor of the current snapshot is shared,
    // and only ever read at explicit offsets.
    let mut buf = vec![0u8; IO_BUF_LEN.min(h.payload_len as usize)];
    let mut crc = 0u32;
    let mut off = SNAPSHOT_HEADER_LEN as u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)
            .map_err(|e| io_err(path, "cannot read", e))?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        off += n as u64;
    }
    if crc != h.payload_crc {
        return Err(corrupt(
            path,
            SNAPSHOT_HEADER_LEN as u64,
            format!("payload checksum mismatch (bytes {SNAPSHOT_HEADER_LEN}..{len} were damaged)"),
        ));
    }
    Ok(h)
}

/// Writes a local snapshot's payload into `snapshot.tmp`, off the event
/// loop: it is `Send` and owns everything it needs, so the driver can move
/// it to a helper thread. Bytes written are buffered and checksummed as
/// they go; [`SnapshotWriter::finish`] writes the header and fsyncs.
/// Dropping it without finishing leaves a partial `snapshot.tmp`, which
/// [`super::Storage::abort_snapshot`] (or the next start) removes.
#[derive(Debug)]
pub struct SnapshotWriter {
    out: BufWriter<File>,
    path: PathBuf,
    cluster_id: u64,
    last_index: LogIndex,
    last_term: Term,
    payload_len: u64,
    crc: u32,
    ledger: Option<SyncLedger>,
    /// File bytes handed to the kernel's writeback so far (see `write`).
    written_back: u64,
}

/// The writer starts the kernel's writeback of every this many bytes, and
/// waits for the range before it: the final fsync then has little left to
/// flush. Without it a snapshot of a large store leaves hundreds of MB dirty
/// for one fsync, and on ext4 that fsync's journal commit also holds up the
/// log's fdatasync on the event loop (measured: loop turns of 250 ms).
const WRITEBACK_STEP: u64 = 4 << 20;

impl SnapshotWriter {
    /// A writer into `file` (at `path`, new and empty) for the snapshot
    /// through `(last_index, last_term)`.
    pub(super) fn new(
        file: File,
        path: PathBuf,
        cluster_id: u64,
        last_index: LogIndex,
        last_term: Term,
        ledger: Option<SyncLedger>,
    ) -> Result<SnapshotWriter, StorageError> {
        let mut out = BufWriter::with_capacity(IO_BUF_LEN, file);
        // Room for the header, which is known only at the end.
        out.write_all(&[0u8; SNAPSHOT_HEADER_LEN])
            .map_err(|e| io_err(&path, "cannot write", e))?;
        Ok(SnapshotWriter {
            out,
            path,
            cluster_id,
            last_index,
            last_term,
            payload_len: 0,
            crc: 0,
            ledger,
            written_back: 0,
        })
    }

    /// Writes the header and makes the file durable (fsync). The snapshot
    /// is not current until [`super::Storage::commit_snapshot`] takes the
    /// returned info, on the thread that owns the store.
    pub fn finish(self) -> Result<SnapshotInfo, StorageError> {
        let SnapshotWriter {
            out,
            path,
            cluster_id,
            last_index,
            last_term,
            payload_len,
            crc,
            ledger,
            written_back: _,
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| io_err(&path, "cannot write", e.into_error()))?;
        let h = SnapshotHeader {
            cluster_id,
            last_index,
            last_term,
            payload_len,
            payload_crc: crc,
        };
        file.write_all_at(&encode_snapshot_header(&h), 0)
            .map_err(|e| io_err(&path, "cannot write", e))?;
        file.sync_all()
            .map_err(|e| io_err(&path, "cannot fsync", e))?;
        if let Some(ledger) = ledger {
            // Power-cut mode: the fsync above is what makes this durable
            // (module docs of `storage`).
            let m = file
                .metadata()
                .map_err(|e| io_err(&path, "cannot stat", e))?;
            ledger
                .lock()
                .expect("power-cut ledger poisoned")
                .push((m.ino(), m.len()));
        }
        Ok(h.info())
    }
}

impl SnapshotWriter {
    /// Past each [`WRITEBACK_STEP`]: flush the buffer, start writeback of
    /// the new range and wait for the one before it (the pattern of
    /// RocksDB's `bytes_per_sync`), so dirty pages stay bounded.
    fn write_back(&mut self) -> io::Result<()> {
        let end = SNAPSHOT_HEADER_LEN as u64 + self.payload_len;
        if end < self.written_back + WRITEBACK_STEP {
            return Ok(());
        }
        self.out.flush()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.out.get_ref());
        let (from, len) = (self.written_back, end - self.written_back);
        // SAFETY: plain syscalls on a descriptor this writer owns; they only
        // schedule or wait for writeback, whatever the arguments.
        let r = unsafe {
            if from >= WRITEBACK_STEP {
                libc::sync_file_range(
                    fd,
                    (from - WRITEBACK_STEP) as libc::off64_t,
                    WRITEBACK_STEP as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            libc::sync_file_range(
                fd,
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.written_back = end;
        Ok(())
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.payload_len += n as u64;
        self.write_back()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Streams the current snapshot's payload, checking its checksum: the
/// read that reaches the end of the payload (or finds the file short)
/// fails with [`io::ErrorKind::InvalidData`] (or `UnexpectedEof`) instead
/// of returning its bytes if the payload does not match, so a caller that
/// parses while reading, and stops at the payload's length, still learns
/// of corruption. It reads its own descriptor: replacing the snapshot
/// meanwhile does not disturb it.
#[derive(Debug)]
pub struct SnapshotReader {
    inner: BufReader<File>,
    path: PathBuf,
    left: u64,
    crc: u32,
    want_crc: u32,
}

impl SnapshotReader {
    /// A reader of the payload of `file` (at `path`), whose header is `h`.
    pub(super) fn new(
        mut file: File,
        path: PathBuf,
        h: &SnapshotHeader,
    ) -> Result<SnapshotReader, StorageError> {
        file.seek(SeekFrom::Start(SNAPSHOT_HEADER_LEN as u64))
            .map_err(|e| io_err(&path, "cannot seek", e))?;
        Ok(SnapshotReader {
            inner: BufReader::with_capacity(IO_BUF_LEN, file),
            path,
            left: h.payload_len,
            crc: 0,
            want_crc: h.payload_crc,
        })
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: snapshot payload ends {} bytes early",
                    self.path.display(),
                    self.left
                ),
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.left -= n as u64;
        if self.left == 0 && self.crc != self.want_crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: snapshot payload checksum mismatch",
                    self.path.display()
                ),
            ));
        }
        Ok(n)
    }
}

/// A snapshot being received from the leader into `snapshot.incoming`.
#[derive(Debug)]
pub(super) struct Incoming {
    pub info: SnapshotInfo,
    pub file: File,
    /// Bytes received so far (chunks come in order).
    pub written: u64,
    /// The first bytes received, up to the header's length.
    pub header: Vec<u8>,
    /// CRC32C of the received bytes after the header.
    pub crc: u32,
}

impl Incoming {
    pub fn new(info: SnapshotInfo, file: File) -> Incoming {
        Incoming {
            info,
            file,
            written: 0,
            header: Vec::with_capacity(SNAPSHOT_HEADER_LEN),
            crc: 0,
        }
    }

    /// Takes note of `data`, just written at the end of what was received.
    pub fn received(&mut self, data: &[u8]) {
        let in_header = SNAPSHOT_HEADER_LEN
            .saturating_sub(self.written as usize)
            .min(data.len());
        self.header.extend_from_slice(&data[..in_header]);
        self.crc = crc32c::crc32c_append(self.crc, &data[in_header..]);
        self.written += data.len() as u64;
    }

    /// Why the received file is not the snapshot `info` promised, if it is
    /// not. Reads nothing: the checksum was computed as chunks came in.
    pub fn fault(&self, cluster_id: u64) -> Option<SnapshotFault> {
        if self.written != self.info.len {
            return Some(SnapshotFault::bad(
                self.written,
                format!("received {} of {} bytes", self.written, self.info.len),
            ));
        }
        let h = match parse_snapshot_header(&self.header, self.written, cluster_id) {
            Ok(h) => h,
            Err(f) => return Some(f),
        };
        if h.info() != self.info {
            return Some(SnapshotFault::bad(
                20,
                format!(
                    "header says last entry {} of term {}, the leader announced {} of term {}",
                    h.last_index, h.last_term, self.info.last_index, self.info.last_term
                ),
            ));
        }
        if h.payload_crc != self.crc {
            return Some(SnapshotFault::bad(
                SNAPSHOT_HEADER_LEN as u64,
                "payload checksum mismatch",
            ));
        }
        None
    }
}
