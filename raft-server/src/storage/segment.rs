//! The log's on-disk format: segment names and headers, record and batch
//! framing, and the scan that validates a segment and replays its records
//! (module docs of `storage` for the format and the recovery rules).

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use raft_proto::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

use super::{check_owner, corrupt, u32_at, u64_at, StorageError, FORMAT_VERSION, MAX_PAYLOAD_LEN};

/// Segment files are named this followed by their first index in 20
/// decimal digits (so that names sort like the indexes).
pub(super) const SEGMENT_PREFIX: &str = "log-";
const SEGMENT_MAGIC: &[u8; 8] = b"RAFTSEG\0";
/// magic 8 | version 4 | cluster 8 | member 8 | first index 8 | prev term 8
/// | crc 4
pub(super) const SEGMENT_HEADER_LEN: usize = 48;
/// magic 4 | body length 4 | crc of the body 4 | crc of these 12 bytes 4.
/// The magic lets recovery look for a later batch when a header was
/// zeroed; the header's own checksum means a header that checks out is
/// exactly what was written, length included.
pub(super) const BATCH_HEADER_LEN: usize = 16;
const BATCH_MAGIC: &[u8; 4] = b"BTCH";
/// length 4 | crc of the length 4 | crc of the body 4. The length has a
/// checksum of its own so that a damaged length is never mistaken for a
/// record the crash cut short (which recovery would cut off, dropping
/// acknowledged entries behind it).
pub(super) const RECORD_HEADER_LEN: usize = 12;
/// kind 1 | term 8 | index 8 | payload kind 1
pub(super) const ENTRY_BODY_FIXED_LEN: usize = 18;
/// kind 1 | from 8
const TRUNCATE_BODY_LEN: usize = 9;
/// kind 1 | index 8 | term 8
const RESET_BODY_LEN: usize = 17;
/// Bounds the allocation and CRC work a corrupt length field can cause, and
/// lets recovery tell a wild length (corruption) from a short final record.
pub(super) const MAX_RECORD_LEN: usize = ENTRY_BODY_FIXED_LEN + MAX_PAYLOAD_LEN;
/// Largest batch body: a few of the largest records. Bounds how much of the
/// file one unsynced batch (the only thing a power cut can damage) covers.
pub const MAX_BATCH_LEN: usize = 4 * (RECORD_HEADER_LEN + MAX_RECORD_LEN);
/// The unit in which a power cut may leave zeroes in place of written data:
/// a disk writes a sector atomically, and the page cache writes back whole
/// pages (a multiple of it), both aligned to file offsets.
pub(super) const SECTOR: usize = 512;

pub(super) const KIND_ENTRY: u8 = 1;
pub(super) const KIND_TRUNCATE: u8 = 2;
pub(super) const KIND_RESET: u8 = 3;
pub(super) const PAYLOAD_NOOP: u8 = 0;
pub(super) const PAYLOAD_COMMAND: u8 = 1;
/// A configuration entry, in the wire format of
/// [`raft_proto::codec::put_membership`].
pub(super) const PAYLOAD_CONFIGURATION: u8 = 2;

/// The file name of the segment whose first entry is `first`.
pub(super) fn segment_name(first: LogIndex) -> String {
    format!("{SEGMENT_PREFIX}{:020}", first.0)
}

/// The first index of the segment named `name`; `None` for any other name.
pub(super) fn parse_segment_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// Index of its first entry.
    pub first: LogIndex,
    /// Term of the entry at `first - 1` when the segment was started
    /// (0 for index 0).
    pub prev_term: Term,
}

pub(super) fn encode_segment_header(
    cluster_id: u64,
    node_id: NodeId,
    h: SegmentHeader,
) -> [u8; SEGMENT_HEADER_LEN] {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    b[0..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&cluster_id.to_le_bytes());
    b[20..28].copy_from_slice(&node_id.0.to_le_bytes());
    b[28..36].copy_from_slice(&h.first.0.to_le_bytes());
    b[36..44].copy_from_slice(&h.prev_term.0.to_le_bytes());
    let crc = crc32c::crc32c(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks the header of the segment at `path`, named for index `named`.
pub(super) fn check_segment_header(
    path: &Path,
    bytes: &[u8],
    named: LogIndex,
    cluster_id: u64,
    node_id: NodeId,
    hard_state: HardState,
) -> Result<SegmentHeader, StorageError> {
    let len = bytes.len();
    if len >= 12 && &bytes[0..8] == SEGMENT_MAGIC {
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
    }
    // A segment is renamed into place only after its header was fsynced,
    // so a short or damaged header is never a torn write.
    if len < SEGMENT_HEADER_LEN {
        return Err(corrupt(
            path,
            len as u64,
            format!("file is {len} bytes, shorter than the {SEGMENT_HEADER_LEN}-byte header"),
        ));
    }
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err(corrupt(path, 0, "not a log segment (bad magic)"));
    }
    if crc32c::crc32c(&bytes[..44]) != u32_at(bytes, 44) {
        return Err(corrupt(path, 44, "header checksum mismatch"));
    }
    check_owner(
        path,
        u64_at(bytes, 12),
        u64_at(bytes, 20),
        cluster_id,
        node_id,
    )?;
    let h = SegmentHeader {
        first: LogIndex(u64_at(bytes, 28)),
        prev_term: Term(u64_at(bytes, 36)),
    };
    if h.first != named || h.first.0 == 0 {
        return Err(corrupt(
            path,
            28,
            format!("header says first index {}, the name says {named}", h.first),
        ));
    }
    if (h.first.0 == 1) != (h.prev_term.0 == 0) || h.prev_term > hard_state.current_term {
        return Err(corrupt(
            path,
            36,
            format!(
                "previous entry {} of term {} is impossible (current term {})",
                h.first.prev(),
                h.prev_term,
                hard_state.current_term
            ),
        ));
    }
    Ok(h)
}

/// Appends one record with `body` to `buf`.
pub(super) fn push_record(buf: &mut Vec<u8>, body: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf.extend_from_slice(body);
    seal_record(buf, start);
}

/// Appends the record of entry `e` to `buf`.
pub(super) fn push_entry(buf: &mut Vec<u8>, e: &Entry) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf.push(KIND_ENTRY);
    buf.extend_from_slice(&e.term.0.to_le_bytes());
    buf.extend_from_slice(&e.index.0.to_le_bytes());
    match &e.payload {
        EntryPayload::Noop => buf.push(PAYLOAD_NOOP),
        EntryPayload::Command(c) => {
            buf.push(PAYLOAD_COMMAND);
            buf.extend_from_slice(c);
        }
        EntryPayload::Configuration(m) => {
            buf.push(PAYLOAD_CONFIGURATION);
            let mut b = bytes::BytesMut::new();
            raft_proto::codec::put_membership(m, &mut b);
            buf.extend_from_slice(&b);
        }
    }
    seal_record(buf, start);
}

/// Appends a truncation record (every entry `>= from` removed).
pub(super) fn push_truncate(buf: &mut Vec<u8>, from: LogIndex) {
    let mut body = [0u8; TRUNCATE_BODY_LEN];
    body[0] = KIND_TRUNCATE;
    body[1..9].copy_from_slice(&from.0.to_le_bytes());
    push_record(buf, &body);
}

/// Appends a reset record: the log is now empty after `(index, term)`,
/// the last entry of a snapshot it did not match (§7).
pub(super) fn push_reset(buf: &mut Vec<u8>, index: LogIndex, term: Term) {
    let mut body = [0u8; RESET_BODY_LEN];
    body[0] = KIND_RESET;
    body[1..9].copy_from_slice(&index.0.to_le_bytes());
    body[9..17].copy_from_slice(&term.0.to_le_bytes());
    push_record(buf, &body);
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
pub(super) fn encode_batch_header(body: &[u8]) -> [u8; BATCH_HEADER_LEN] {
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
pub(super) fn batch_end(buf: &[u8], start: usize) -> usize {
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

/// The terms of the log the store holds, as of the latest buffered
/// operation: memory proportional to the retained log, not to every index
/// ever written.
#[derive(Debug, Clone)]
pub(super) struct LogTerms {
    /// The index before the first entry held.
    base: LogIndex,
    /// The term at `base`: 0 at index 0; `None` when unknown (recovery
    /// replayed a truncation that reached below the first segment left).
    base_term: Option<Term>,
    /// `terms[i]` is the term of the entry at `base + 1 + i`.
    terms: VecDeque<Term>,
}

impl LogTerms {
    pub fn new(base: LogIndex, base_term: Option<Term>, terms: VecDeque<Term>) -> LogTerms {
        LogTerms {
            base,
            base_term,
            terms,
        }
    }

    pub fn base(&self) -> LogIndex {
        self.base
    }

    pub fn last_index(&self) -> LogIndex {
        self.base.plus(self.terms.len() as u64)
    }

    pub fn last_term(&self) -> Option<Term> {
        self.terms.back().copied().or(self.base_term)
    }

    /// The term of the entry at `i`, if the log holds it (or `i` is its
    /// base and the base's term is known).
    pub fn term_at(&self, i: LogIndex) -> Option<Term> {
        if i == self.base {
            return self.base_term;
        }
        if i < self.base {
            return None;
        }
        self.terms.get((i.0 - self.base.0 - 1) as usize).copied()
    }

    pub fn push(&mut self, term: Term) {
        self.terms.push_back(term);
    }

    /// Removes every entry `>= from`; `from` must be above the base.
    pub fn truncate(&mut self, from: LogIndex) {
        assert!(from > self.base, "truncate at {from}, at or below the base");
        self.terms.truncate((from.0 - self.base.0 - 1) as usize);
    }

    /// Empties the log after `(index, term)`.
    pub fn reset(&mut self, index: LogIndex, term: Term) {
        self.base = index;
        self.base_term = Some(term);
        self.terms = VecDeque::new();
    }

    /// Forgets the entries up to `new_base`, which must be held.
    pub fn compact_to(&mut self, new_base: LogIndex) {
        assert!(
            new_base > self.base && new_base <= self.last_index(),
            "compact to {new_base} outside the log {}..={}",
            self.base.next(),
            self.last_index()
        );
        let n = (new_base.0 - self.base.0) as usize;
        let term = self.terms[n - 1];
        self.terms.drain(..n);
        self.base = new_base;
        self.base_term = Some(term);
        if self.terms.capacity() > 4 * self.terms.len() + 1024 {
            self.terms.shrink_to_fit();
        }
    }
}

/// The log as recovery rebuilds it while replaying records.
#[derive(Debug, Clone)]
pub(super) struct Replay {
    /// The index before the first entry.
    pub base: LogIndex,
    /// The term at `base`; `None` when unknown.
    pub base_term: Option<Term>,
    /// The entries `base + 1..`.
    pub entries: Vec<Entry>,
}

impl Replay {
    /// The log a segment with header `h` continues.
    pub fn starting_at(h: SegmentHeader) -> Replay {
        Replay {
            base: h.first.prev(),
            base_term: Some(h.prev_term),
            entries: Vec::new(),
        }
    }

    pub fn last_index(&self) -> LogIndex {
        self.base.plus(self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Option<Term> {
        self.entries.last().map(|e| e.term).or(self.base_term)
    }

    pub fn term_at(&self, i: LogIndex) -> Option<Term> {
        if i == self.base {
            return self.base_term;
        }
        if i < self.base {
            return None;
        }
        self.entries
            .get((i.0 - self.base.0 - 1) as usize)
            .map(|e| e.term)
    }

    /// Whether a segment with header `h` continues this log: it starts
    /// right after the last entry, whose term it names.
    pub fn continued_by(&mut self, h: SegmentHeader) -> bool {
        if h.first != self.last_index().next() {
            return false;
        }
        match self.last_term() {
            Some(t) => t == h.prev_term,
            None => {
                // The base's term was lost to a truncation that reached
                // below the first segment; the header names it.
                self.base_term = Some(h.prev_term);
                true
            }
        }
    }

    pub fn terms(&self) -> LogTerms {
        LogTerms::new(
            self.base,
            self.base_term,
            self.entries.iter().map(|e| e.term).collect(),
        )
    }
}

/// What recovery checks records against.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayBounds {
    /// The durable hard state: no entry is of a later term.
    pub hard_state: HardState,
    /// The snapshot's last index: no reset goes beyond it.
    pub snapshot_last: Option<LogIndex>,
}

/// How a segment's batches end.
#[derive(Debug)]
pub(super) enum SegmentEnd {
    /// After the batch ending at `data_end` the file ends, or holds only
    /// zeroes: nothing was written there (a preallocated segment's free
    /// space, or a size that a power cut made durable without the data).
    Clean { data_end: u64 },
    /// The final batch is torn.
    Torn(TornTail),
}

/// A damaged final batch that recovery may cut off.
#[derive(Debug)]
pub(super) struct TornTail {
    pub offset: u64,
    pub why: String,
}

/// What a record at some offset of a batch body turned out to be.
#[derive(Debug)]
enum RecordCheck {
    /// Intact; its body is `body`, the next record starts at `next`.
    Intact { body: Range<usize>, next: usize },
    /// Damaged; the damage lies in `extent`.
    Damaged { extent: Range<usize>, what: String },
}

/// Checks the record at `at`, which must lie within `..end` (its batch).
fn check_record(bytes: &[u8], at: usize, end: usize) -> RecordCheck {
    let damaged = |extent: Range<usize>, what: String| RecordCheck::Damaged { extent, what };
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
fn zeroed_by_power_cut(bytes: &[u8], batch: usize, extent: Range<usize>) -> bool {
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

/// An intact record found by [`scan_segment`]: its byte offset, and its
/// body's range in the segment.
pub(super) type RecordAt = (usize, Range<usize>);

/// Validates the batches of one segment (its header already checked)
/// without changing anything, and appends the records of its intact
/// batches to `records`, for [`replay_records`]. Returns where its data
/// ends, or where the valid prefix ends if the segment ends in a torn
/// batch: nothing after that is needed (a preallocated segment's zeroes
/// need not stay in memory).
///
/// Only the last batch of the last segment can be torn (module docs), and
/// a torn batch is dropped whole: it was never acknowledged. A batch is
/// taken for the torn last batch when nothing but zeroes follows it (or it
/// runs past the end of the file) and its damage is what a power cut
/// leaves: a prefix, and sectors of zeroes. A damaged batch with data
/// after it was synced, and damage that is not zeroes was not done by a
/// power cut: both are corruption, and cutting there could drop
/// acknowledged entries. The caller refuses a torn tail in any segment but
/// the last. Zeroes where a batch header would start end the data: that
/// is where the next batch goes.
pub(super) fn scan_segment(
    path: &Path,
    bytes: &[u8],
    records: &mut Vec<RecordAt>,
) -> Result<SegmentEnd, StorageError> {
    let len = bytes.len();
    // Everything from here on is zeroes: never written, or a power cut's
    // loss. A preallocated segment is mostly this.
    let data_end =
        last_nonzero(bytes).map_or(SEGMENT_HEADER_LEN, |i| (i + 1).max(SEGMENT_HEADER_LEN));
    let mut off = SEGMENT_HEADER_LEN;
    loop {
        if off >= data_end {
            return Ok(SegmentEnd::Clean {
                data_end: off as u64,
            });
        }
        let torn = |why: String| {
            Ok(SegmentEnd::Torn(TornTail {
                offset: off as u64,
                why,
            }))
        };
        let rest = len - off;
        if rest < BATCH_HEADER_LEN {
            return torn(format!("{rest} bytes of a batch header"));
        }
        let header_ok = &bytes[off..off + 4] == BATCH_MAGIC
            && crc32c::crc32c(&bytes[off..off + 12]) == u32_at(bytes, off + 12);
        if !header_ok {
            if !zeroed_by_power_cut(bytes, off, off..off + BATCH_HEADER_LEN) {
                return Err(corrupt(
                    path,
                    off as u64,
                    "batch header damaged, and not by a power cut (which leaves zeroes)",
                ));
            }
            // Only data counts, not the zeroes of a preallocated segment.
            let data = data_end - off;
            if data > BATCH_HEADER_LEN + MAX_BATCH_LEN {
                return Err(corrupt(
                    path,
                    off as u64,
                    format!(
                        "batch header zeroed, with {data} bytes of data after it, more than one \
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
            return torn("batch header zeroed".into());
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
            return torn(format!(
                "batch of {blen} bytes has only {} written",
                len - body_at
            ));
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
            if end < data_end {
                return Err(corrupt(
                    path,
                    rec as u64,
                    format!(
                        "{what}, in a batch with {} bytes of further data after it \
                         (so it was synced)",
                        data_end - end
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
            return torn(format!("{what} at byte offset {rec}, in zeroed sectors"));
        }
        // The batch is exactly what was written: anything wrong in it is
        // corruption (or a bug), never a torn write.
        let mut at = body_at;
        while at < end {
            match check_record(bytes, at, end) {
                RecordCheck::Intact { body, next } => {
                    records.push((at, body));
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
}

/// The offset of the last byte that is not zero.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    // Eight bytes at a time: a preallocated segment is 16 MiB of zeroes.
    let words = bytes.len() / 8;
    let tail = bytes[words * 8..].iter().rposition(|&b| b != 0);
    if let Some(i) = tail {
        return Some(words * 8 + i);
    }
    let w = (0..words)
        .rev()
        .find(|&w| u64::from_ne_bytes(bytes[w * 8..w * 8 + 8].try_into().expect("8 bytes")) != 0)?;
    bytes[w * 8..w * 8 + 8]
        .iter()
        .rposition(|&b| b != 0)
        .map(|i| w * 8 + i)
}

/// Checks the intact records [`scan_segment`] found in `data` (the
/// segment's bytes, or a prefix holding them) against the log so far, in
/// order, and applies them to `replay`.
pub(super) fn replay_records(
    path: &Path,
    data: &Bytes,
    records: &[RecordAt],
    replay: &mut Replay,
    bounds: ReplayBounds,
) -> Result<(), StorageError> {
    for (at, body) in records {
        apply_record(path, *at, data.slice(body.clone()), replay, bounds)?;
    }
    Ok(())
}

/// Checks one intact record at byte offset `off` against the log so far
/// and applies it.
fn apply_record(
    path: &Path,
    off: usize,
    body: Bytes,
    log: &mut Replay,
    bounds: ReplayBounds,
) -> Result<(), StorageError> {
    let bad = |what: String| corrupt(path, off as u64, what);
    let current_term = bounds.hard_state.current_term;
    let last = log.last_index();
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
                PAYLOAD_CONFIGURATION => {
                    let mut b = body.slice(ENTRY_BODY_FIXED_LEN..);
                    match raft_proto::codec::get_membership(&mut b) {
                        Ok(m) if b.is_empty() => EntryPayload::Configuration(Box::new(m)),
                        Ok(_) => return Err(bad("configuration entry with trailing bytes".into())),
                        Err(e) => return Err(bad(format!("configuration entry: {e}"))),
                    }
                }
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
            if let Some(prev) = log.last_term() {
                if term < prev {
                    return Err(bad(format!(
                        "entry {index} has term {term}, below the previous entry's term {prev}"
                    )));
                }
            }
            if term > current_term {
                return Err(bad(format!(
                    "entry {index} has term {term}, above the current term {current_term} in {}",
                    super::META_FILE
                )));
            }
            log.entries.push(Entry {
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
            if from <= log.base.0 {
                // Written when the segments before this one were still
                // there; compaction has deleted them since (they are below
                // the snapshot). The log now restarts at `from`.
                log.base = LogIndex(from - 1);
                log.base_term = (from == 1).then_some(Term(0));
                log.entries.clear();
            } else {
                log.entries.truncate((from - log.base.0 - 1) as usize);
            }
        }
        KIND_RESET => {
            if body.len() != RESET_BODY_LEN {
                return Err(bad(format!("reset record body of {} bytes", body.len())));
            }
            let index = LogIndex(u64_at(&body, 1));
            let term = Term(u64_at(&body, 9));
            if index.0 == 0 || term.0 == 0 || term > current_term {
                return Err(bad(format!(
                    "reset to index {index} of term {term} is impossible (current term \
                     {current_term})"
                )));
            }
            // A reset is written after its snapshot is durable, and
            // snapshots only move forward.
            if bounds.snapshot_last.is_none_or(|s| index > s) {
                return Err(bad(format!(
                    "reset to index {index}, beyond the snapshot ({})",
                    bounds
                        .snapshot_last
                        .map_or("there is none".to_string(), |s| format!("it ends at {s}"))
                )));
            }
            log.base = index;
            log.base_term = Some(term);
            log.entries.clear();
        }
        k => return Err(bad(format!("unknown record kind {k}"))),
    }
    Ok(())
}
