//! The wire codec: the only way bytes become a [`Message`].
//!
//! [`decode`] checks every length, tag and bound, and every rule a handler
//! relies on that can be checked without the node's state, so that handlers
//! can trust the types. It never panics and never allocates more than a
//! small multiple of the frame's declared length, which is itself bounded by
//! [`MAX_FRAME_LEN`] before anything is buffered for it. [`encode`] writes
//! only messages that [`decode`] accepts, so what one member sends, another
//! reads back equal.
//!
//! # Format
//!
//! All integers are big-endian; there are no varints and no optional
//! padding, so every message has exactly one encoding.
//!
//! ```text
//! frame    = len:u32 body                    len = body length, 1..=MAX_FRAME_LEN
//! body     = version:u8 message              version = VERSION
//! message  = tag:u8 from:u64 to:u64 term:u64 fields
//!   tag 1  RequestVote            flags:u8 last_log_index:u64 last_log_term:u64
//!                                 flags: 0, 1 = pre_vote, 2 = leadership_transfer
//!   tag 2  RequestVoteResponse    pre_vote:bool granted:bool
//!   tag 3  AppendEntries          prev_log_index:u64 prev_log_term:u64
//!                                 leader_commit:u64 round:u64 count:u32 entry{count}
//!   tag 4  AppendEntriesResponse  round:u64 result
//!   tag 5  InstallSnapshot        last_index:u64 last_term:u64 len:u64
//!                                 membership offset:u64 round:u64 data_len:u32 byte{data_len}
//!   tag 6  InstallSnapshotResponse last_index:u64 next_offset:u64 round:u64
//!   tag 7  ReadIndexRequest       id:u64
//!   tag 8  ReadIndexResponse      id:u64 read_index:option_index
//!   tag 9  TimeoutNow
//! option_index = 0 | 1 index:u64
//! entry    = term:u64 index:u64 payload
//! payload  = 1                               Noop
//!          | 2 len:u32 byte{len}             Command
//!          | 3 membership                    Configuration
//! membership = voters:u8 id:u64{voters} learners:u8 id:u64{learners}
//!              context_len:u32 byte{context_len}
//! result   = 1 match_index:u64               Success
//!          | 2 rejected_index:u64 last_log_index:u64
//!            conflict_term:option conflict_index:u64                         Conflict
//! option   = 0 | 1 term:u64
//! bool     = 0 | 1
//! ```
//!
//! Tags start at 1, so a zero-filled buffer is never a message.
//!
//! # What `decode` rejects besides malformed bytes
//!
//! - node id 0 in `from` or `to` (0 means "none", [`NodeId`]);
//! - any term field (`term`, `last_log_term`, `prev_log_term`, entry terms,
//!   `conflict_term`) above [`Term::MAX`], so that no term a peer sends can
//!   exhaust the node's terms;
//! - a command longer than [`MAX_ENTRY_LEN`], which no member proposes;
//! - a log position `(index, term)` (`last_log_*`, `prev_log_*`) where index 0
//!   does not have term 0 or a real index has term 0, or whose term exceeds
//!   the message's term: the sender's log cannot hold entries from the future;
//! - entries whose indexes are not `prev_log_index + 1, + 2, ...`, whose
//!   terms decrease, fall below `prev_log_term`, are 0, or exceed the
//!   leader's term (terms never decrease along a log, §5.3 Log Matching);
//! - a conflict hint that breaks the contract of [`AppendResult::Conflict`]:
//!   `rejected_index` is at least 1 (index 0 always matches); with a
//!   `conflict_term` (at least 1, at most the follower's term) the follower
//!   holds `rejected_index` and `1 <= conflict_index <= rejected_index <=
//!   last_log_index`; without one its log is shorter, `rejected_index >
//!   last_log_index`, and `conflict_index` is `last_log_index + 1`;
//! - a snapshot chunk whose snapshot is empty or at index or term 0, whose
//!   last term exceeds the leader's, whose data is longer than
//!   [`MAX_SNAPSHOT_CHUNK`] or reaches past the snapshot's length; an answer
//!   about a snapshot at index 0; a read index of 0 (a leader answers
//!   only once it has committed an entry);
//! - a configuration (in an entry or a snapshot) that breaks
//!   [`Membership::check`]: no voter, unsorted or duplicate ids, id 0, a
//!   learner that also votes, more than [`crate::MAX_MEMBERS`] members or
//!   more than [`crate::MAX_MEMBERSHIP_CONTEXT`] bytes of context;
//! - a RequestVote that is both a pre-vote and a leadership transfer.
//!
//! Whatever needs the receiver's state (is `to` me, is `from` a voter, does
//! `match_index` exceed my log) is the node's to check.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, ReadIndexRequest, ReadIndexResponse, RequestVote, RequestVoteResponse,
};
use crate::types::{
    Entry, EntryPayload, LogIndex, Membership, NodeId, SnapshotMeta, Term, MAX_ENTRY_LEN,
    MAX_MEMBERS, MAX_MEMBERSHIP_CONTEXT,
};

/// Version of the wire format, carried in every frame. A frame of any
/// other version is rejected with [`DecodeError::UnsupportedVersion`]. (The
/// peer handshake that precedes the frames is the driver's: raft-node's is
/// an authenticated challenge-response.)
pub const VERSION: u8 = 1;

/// The largest length prefix [`decode`] accepts, and so the largest body
/// (version byte plus message) [`encode`] writes: 16 MiB. A whole frame is at
/// most `MAX_FRAME_LEN + 4` bytes.
///
/// An AppendEntries batch of the default configuration (256 entries, 512 KiB
/// of payload) takes about 0.51 MiB. The batch limit lets a single larger
/// entry through so that it still makes progress; that entry is at most
/// [`MAX_ENTRY_LEN`] (4 MiB), which [`crate::Node::propose`] enforces, so a
/// batch carries at most `max(max_bytes_per_append, MAX_ENTRY_LEN)` of
/// payload plus [`ENTRY_OVERHEAD`] per entry plus [`APPEND_ENTRIES_HEADER_LEN`];
/// [`crate::Config::validate`] refuses limits that would not fit.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// The body bytes of an AppendEntries besides its entries: version byte,
/// message header and the fixed fields.
pub const APPEND_ENTRIES_HEADER_LEN: usize = 1 + MESSAGE_HEADER_LEN + APPEND_ENTRIES_FIXED_LEN;

/// Bytes of a frame before the message: the `u32` length prefix and the
/// version byte.
pub const FRAME_HEADER_LEN: usize = LEN_PREFIX_LEN + 1;

/// Bytes an AppendEntries spends on one entry besides its command: term,
/// index, payload tag and command length.
pub const ENTRY_OVERHEAD: usize = 8 + 8 + 1 + 4;

/// The most snapshot bytes one InstallSnapshot carries: 8 MiB.
/// [`crate::Config::snapshot_chunk_bytes`] may not exceed it.
pub const MAX_SNAPSHOT_CHUNK: usize = 8 << 20;

const LEN_PREFIX_LEN: usize = 4;

// The length prefix is a u32.
const _: () = assert!(MAX_FRAME_LEN <= u32::MAX as usize);
// One entry of the largest size, with every header, fits in a frame, so
// that any entry a leader accepted can be replicated. (A command length
// is a u32 on the wire too.)
const _: () = assert!(APPEND_ENTRIES_HEADER_LEN + ENTRY_OVERHEAD + MAX_ENTRY_LEN <= MAX_FRAME_LEN);
const _: () = assert!(MAX_ENTRY_LEN <= u32::MAX as usize);
const _: () = assert!(
    1 + MESSAGE_HEADER_LEN + INSTALL_SNAPSHOT_FIXED_LEN + MAX_SNAPSHOT_CHUNK <= MAX_FRAME_LEN
);

const TAG_REQUEST_VOTE: u8 = 1;
const TAG_REQUEST_VOTE_RESPONSE: u8 = 2;
const TAG_APPEND_ENTRIES: u8 = 3;
const TAG_APPEND_ENTRIES_RESPONSE: u8 = 4;
const TAG_INSTALL_SNAPSHOT: u8 = 5;
const TAG_INSTALL_SNAPSHOT_RESPONSE: u8 = 6;
const TAG_READ_INDEX_REQUEST: u8 = 7;
const TAG_READ_INDEX_RESPONSE: u8 = 8;
const TAG_TIMEOUT_NOW: u8 = 9;

const PAYLOAD_NOOP: u8 = 1;
const PAYLOAD_COMMAND: u8 = 2;
const PAYLOAD_CONFIGURATION: u8 = 3;

const VOTE_FLAG_PRE_VOTE: u8 = 1;
const VOTE_FLAG_TRANSFER: u8 = 2;

const RESULT_SUCCESS: u8 = 1;
const RESULT_CONFLICT: u8 = 2;

/// tag, from, to, term.
const MESSAGE_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// prev_log_index, prev_log_term, leader_commit, round, count.
const APPEND_ENTRIES_FIXED_LEN: usize = 8 + 8 + 8 + 8 + 4;
/// last_index, last_term, len, offset, round, data_len.
const INSTALL_SNAPSHOT_FIXED_LEN: usize = 8 + 8 + 8 + 8 + 8 + 4;
/// The smallest entry, a Noop: term, index, payload tag. Bounds how many
/// entries a frame can hold.
const MIN_ENTRY_LEN: usize = 8 + 8 + 1;

/// Why bytes are not a valid frame. Any of them means the peer
/// is broken or not a peer: the connection MUST be closed, since its framing
/// can no longer be trusted.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`]; detected before the body
    /// is buffered.
    FrameTooLarge {
        /// Declared body length.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// A frame of another version of the protocol.
    UnsupportedVersion(u8),
    /// An unknown tag or flag byte.
    UnknownTag {
        /// Which field.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// The frame ends inside a field, or declares more than it holds.
    Truncated {
        /// The field that did not fit.
        what: &'static str,
    },
    /// The message ends before its frame does.
    TrailingBytes {
        /// How many bytes are left over.
        n: usize,
    },
    /// A term field above [`Term::MAX`]: adopting it could exhaust the
    /// terms (see there).
    TermAboveMax {
        /// Which field.
        what: &'static str,
        /// The value found.
        term: u64,
    },
    /// An entry whose command is longer than [`MAX_ENTRY_LEN`], which no
    /// member proposes; detected before the command is sliced off.
    EntryTooLarge {
        /// The declared command length.
        len: usize,
        /// [`MAX_ENTRY_LEN`].
        max: usize,
    },
    /// Well-formed bytes that no correct member sends.
    Invalid {
        /// The rule broken.
        what: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::UnsupportedVersion(v) => {
                write!(f, "unsupported wire version {v} (expected {VERSION})")
            }
            DecodeError::UnknownTag { what, tag } => write!(f, "unknown {what} tag {tag}"),
            DecodeError::Truncated { what } => write!(f, "frame truncated in {what}"),
            DecodeError::TrailingBytes { n } => write!(f, "{n} trailing bytes in frame"),
            DecodeError::TermAboveMax { what, term } => {
                write!(f, "{what} {term} exceeds the maximum term {}", Term::MAX)
            }
            DecodeError::EntryTooLarge { len, max } => {
                write!(
                    f,
                    "entry command of {len} bytes exceeds the maximum of {max}"
                )
            }
            DecodeError::Invalid { what } => write!(f, "invalid message: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Length of the frame [`encode`] writes for `msg`, length prefix included.
/// Lets a sender bound its output queue in bytes before encoding.
pub fn encoded_len(msg: &Message) -> usize {
    LEN_PREFIX_LEN + body_len(msg)
}

/// Appends one whole frame holding `msg` to `dst`, reserving the space first.
///
/// # Panics
///
/// On caller misuse only: if the frame's body would exceed
/// [`MAX_FRAME_LEN`] (the server failed to cap command sizes), or if `msg`
/// breaks a rule [`decode`] enforces (see the module docs), which means the
/// node built a message no correct member sends. Either way the peer would
/// reject the frame, so sending it would only hide the bug.
pub fn encode(msg: &Message, dst: &mut BytesMut) {
    if let Err(what) = check(msg) {
        panic!("codec::encode: invalid {} message: {what}", msg.kind());
    }
    let body_len = body_len(msg);
    assert!(
        body_len <= MAX_FRAME_LEN,
        "codec::encode: {} message of {body_len} bytes exceeds MAX_FRAME_LEN ({MAX_FRAME_LEN}); \
         commands must be capped before they are proposed",
        msg.kind(),
    );
    dst.reserve(LEN_PREFIX_LEN + body_len);
    let start = dst.len();
    dst.put_u32(u32::try_from(body_len).expect("MAX_FRAME_LEN fits in u32"));
    dst.put_u8(VERSION);
    put_message(msg, dst);
    assert_eq!(
        dst.len() - start,
        LEN_PREFIX_LEN + body_len,
        "codec::encode: encoded_len disagrees with what was written"
    );
}

/// The frame `encode` would write for `msg`, without its checks: the
/// fuzz drivers need frames of messages the codec refuses, to watch
/// `decode` refuse them. Only the lengths must fit their u32 fields.
#[cfg(feature = "sim")]
pub(crate) fn encode_unchecked(msg: &Message) -> BytesMut {
    let body_len = body_len(msg);
    let mut dst = BytesMut::with_capacity(LEN_PREFIX_LEN + body_len);
    dst.put_u32(u32::try_from(body_len).unwrap_or(u32::MAX));
    dst.put_u8(VERSION);
    put_message(msg, &mut dst);
    dst
}

/// Takes one frame off the front of `src` and decodes it.
///
/// - `Ok(None)`: `src` does not yet hold a whole frame. Nothing is consumed;
///   call again after reading more bytes. `decode` does not reserve space for
///   the rest of the frame: a peer that declares a large frame and stalls
///   costs only the bytes it actually sent.
/// - `Ok(Some(msg))`: exactly one frame was consumed. Command payloads are
///   zero-copy slices of the frame, so they keep the buffer they were split
///   from alive for as long as they live; a driver that retains entries for
///   long and reads into large buffers may want to copy them.
/// - `Err(_)`: the input is not a valid frame. How much of `src` was
///   consumed is unspecified; the caller MUST close the connection.
///
/// A length prefix above [`MAX_FRAME_LEN`] and a wrong version byte are
/// rejected as soon as they arrive, without waiting for the body.
pub fn decode(src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
    if src.len() < LEN_PREFIX_LEN {
        return Ok(None);
    }
    let declared = (&src[..LEN_PREFIX_LEN]).get_u32();
    let len = usize::try_from(declared).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Truncated { what: "version" });
    }
    if let Some(&version) = src.get(LEN_PREFIX_LEN) {
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
    }
    if src.len() - LEN_PREFIX_LEN < len {
        return Ok(None);
    }
    src.advance(LEN_PREFIX_LEN);
    let body = src.split_to(len).freeze();
    decode_body(body).map(Some)
}

/// The length prefix `encode` writes: version byte plus message.
fn body_len(msg: &Message) -> usize {
    let fields = match &msg.body {
        MessageBody::RequestVote(_) => 1 + 8 + 8,
        MessageBody::RequestVoteResponse(_) => 1 + 1,
        MessageBody::AppendEntries(ae) => {
            APPEND_ENTRIES_FIXED_LEN + ae.entries.iter().map(entry_len).sum::<usize>()
        }
        MessageBody::AppendEntriesResponse(r) => {
            8 + 1
                + match r.result {
                    AppendResult::Success { .. } => 8,
                    AppendResult::Conflict { conflict_term, .. } => {
                        8 + 8 + 1 + conflict_term.map_or(0, |_| 8) + 8
                    }
                }
        }
        MessageBody::InstallSnapshot(is) => {
            INSTALL_SNAPSHOT_FIXED_LEN + membership_len(&is.meta.membership) + is.data.len()
        }
        MessageBody::InstallSnapshotResponse(_) => 8 + 8 + 8,
        MessageBody::ReadIndexRequest(_) => 8,
        MessageBody::ReadIndexResponse(r) => 8 + 1 + r.read_index.map_or(0, |_| 8),
        MessageBody::TimeoutNow => 0,
    };
    1 + MESSAGE_HEADER_LEN + fields
}

fn entry_len(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Noop => MIN_ENTRY_LEN,
        EntryPayload::Command(c) => ENTRY_OVERHEAD + c.len(),
        EntryPayload::Configuration(m) => MIN_ENTRY_LEN + membership_len(m),
    }
}

/// Encoded length of a configuration.
pub fn membership_len(m: &Membership) -> usize {
    1 + 8 * m.voters.len() + 1 + 8 * m.learners.len() + 4 + m.context.len()
}

/// Appends a configuration in the wire format (also used by drivers to
/// store one, e.g. in a snapshot's header). It must pass
/// [`Membership::check`].
pub fn put_membership(m: &Membership, dst: &mut BytesMut) {
    assert!(m.check().is_ok(), "put_membership: {:?}", m.check());
    put_membership_unchecked(m, dst);
}

/// `encode` checked the message already (and `encode_unchecked`, for
/// tests of `decode`, must be able to write what `decode` refuses).
fn put_membership_unchecked(m: &Membership, dst: &mut BytesMut) {
    for list in [&m.voters, &m.learners] {
        dst.put_u8(u8::try_from(list.len()).expect("MAX_MEMBERS fits in u8"));
        for id in list {
            dst.put_u64(id.0);
        }
    }
    dst.put_u32(u32::try_from(m.context.len()).expect("context length fits in u32"));
    dst.put_slice(&m.context);
}

/// Reads a configuration written by [`put_membership`] from the front of
/// `src`, checking every bound and [`Membership::check`].
pub fn get_membership(src: &mut Bytes) -> Result<Membership, DecodeError> {
    let mut r = Reader {
        buf: std::mem::take(src),
    };
    let m = r.membership();
    *src = r.buf;
    let m = m?;
    m.check().map_err(|what| DecodeError::Invalid { what })?;
    Ok(m)
}

fn put_message(msg: &Message, dst: &mut BytesMut) {
    let tag = match &msg.body {
        MessageBody::RequestVote(_) => TAG_REQUEST_VOTE,
        MessageBody::RequestVoteResponse(_) => TAG_REQUEST_VOTE_RESPONSE,
        MessageBody::AppendEntries(_) => TAG_APPEND_ENTRIES,
        MessageBody::AppendEntriesResponse(_) => TAG_APPEND_ENTRIES_RESPONSE,
        MessageBody::InstallSnapshot(_) => TAG_INSTALL_SNAPSHOT,
        MessageBody::InstallSnapshotResponse(_) => TAG_INSTALL_SNAPSHOT_RESPONSE,
        MessageBody::ReadIndexRequest(_) => TAG_READ_INDEX_REQUEST,
        MessageBody::ReadIndexResponse(_) => TAG_READ_INDEX_RESPONSE,
        MessageBody::TimeoutNow => TAG_TIMEOUT_NOW,
    };
    dst.put_u8(tag);
    dst.put_u64(msg.from.0);
    dst.put_u64(msg.to.0);
    dst.put_u64(msg.term.0);
    match &msg.body {
        MessageBody::RequestVote(rv) => {
            let mut flags = 0;
            if rv.pre_vote {
                flags |= VOTE_FLAG_PRE_VOTE;
            }
            if rv.leadership_transfer {
                flags |= VOTE_FLAG_TRANSFER;
            }
            dst.put_u8(flags);
            dst.put_u64(rv.last_log_index.0);
            dst.put_u64(rv.last_log_term.0);
        }
        MessageBody::RequestVoteResponse(r) => {
            dst.put_u8(u8::from(r.pre_vote));
            dst.put_u8(u8::from(r.granted));
        }
        MessageBody::AppendEntries(ae) => {
            dst.put_u64(ae.prev_log_index.0);
            dst.put_u64(ae.prev_log_term.0);
            dst.put_u64(ae.leader_commit.0);
            dst.put_u64(ae.round);
            // The frame bound, checked by the caller, bounds the count.
            dst.put_u32(u32::try_from(ae.entries.len()).expect("entry count fits in u32"));
            for e in &ae.entries {
                dst.put_u64(e.term.0);
                dst.put_u64(e.index.0);
                match &e.payload {
                    EntryPayload::Noop => dst.put_u8(PAYLOAD_NOOP),
                    EntryPayload::Command(c) => {
                        dst.put_u8(PAYLOAD_COMMAND);
                        dst.put_u32(u32::try_from(c.len()).expect("command length fits in u32"));
                        dst.put_slice(c);
                    }
                    EntryPayload::Configuration(m) => {
                        dst.put_u8(PAYLOAD_CONFIGURATION);
                        put_membership_unchecked(m, dst);
                    }
                }
            }
        }
        MessageBody::AppendEntriesResponse(r) => {
            dst.put_u64(r.round);
            match r.result {
                AppendResult::Success { match_index } => {
                    dst.put_u8(RESULT_SUCCESS);
                    dst.put_u64(match_index.0);
                }
                AppendResult::Conflict {
                    rejected_index,
                    last_log_index,
                    conflict_term,
                    conflict_index,
                } => {
                    dst.put_u8(RESULT_CONFLICT);
                    dst.put_u64(rejected_index.0);
                    dst.put_u64(last_log_index.0);
                    match conflict_term {
                        None => dst.put_u8(0),
                        Some(t) => {
                            dst.put_u8(1);
                            dst.put_u64(t.0);
                        }
                    }
                    dst.put_u64(conflict_index.0);
                }
            }
        }
        MessageBody::InstallSnapshot(is) => {
            dst.put_u64(is.meta.last_index.0);
            dst.put_u64(is.meta.last_term.0);
            dst.put_u64(is.meta.len);
            put_membership_unchecked(&is.meta.membership, dst);
            dst.put_u64(is.offset);
            dst.put_u64(is.round);
            // The frame bound, checked by the caller, bounds the length.
            dst.put_u32(u32::try_from(is.data.len()).expect("chunk length fits in u32"));
            dst.put_slice(&is.data);
        }
        MessageBody::InstallSnapshotResponse(r) => {
            dst.put_u64(r.last_index.0);
            dst.put_u64(r.next_offset);
            dst.put_u64(r.round);
        }
        MessageBody::ReadIndexRequest(r) => dst.put_u64(r.id),
        MessageBody::ReadIndexResponse(r) => {
            dst.put_u64(r.id);
            match r.read_index {
                None => dst.put_u8(0),
                Some(i) => {
                    dst.put_u8(1);
                    dst.put_u64(i.0);
                }
            }
        }
        MessageBody::TimeoutNow => {}
    }
}

fn decode_body(body: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: body };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let msg = r.message()?;
    if r.buf.has_remaining() {
        return Err(DecodeError::TrailingBytes {
            n: r.buf.remaining(),
        });
    }
    check(&msg).map_err(|what| DecodeError::Invalid { what })?;
    Ok(msg)
}

/// Reads fields off one frame's body, turning a short read into
/// [`DecodeError::Truncated`] instead of the panic `Buf::get_*` would raise.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated { what });
        }
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { what, tag }),
        }
    }

    /// Every term field goes through here, so none exceeds [`Term::MAX`].
    fn term(&mut self, what: &'static str) -> Result<Term, DecodeError> {
        let term = self.u64(what)?;
        if term > Term::MAX.0 {
            return Err(DecodeError::TermAboveMax { what, term });
        }
        Ok(Term(term))
    }

    fn index(&mut self, what: &'static str) -> Result<LogIndex, DecodeError> {
        self.u64(what).map(LogIndex)
    }

    /// `n` bytes as a slice of the frame, without copying.
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    fn message(&mut self) -> Result<Message, DecodeError> {
        let tag = self.u8("message tag")?;
        if !(TAG_REQUEST_VOTE..=TAG_TIMEOUT_NOW).contains(&tag) {
            return Err(DecodeError::UnknownTag {
                what: "message",
                tag,
            });
        }
        let from = NodeId(self.u64("from")?);
        let to = NodeId(self.u64("to")?);
        let term = self.term("term")?;
        let body = match tag {
            TAG_REQUEST_VOTE => {
                let flags = self.u8("vote flags")?;
                if flags & !(VOTE_FLAG_PRE_VOTE | VOTE_FLAG_TRANSFER) != 0 {
                    return Err(DecodeError::UnknownTag {
                        what: "vote flags",
                        tag: flags,
                    });
                }
                MessageBody::RequestVote(RequestVote {
                    pre_vote: flags & VOTE_FLAG_PRE_VOTE != 0,
                    leadership_transfer: flags & VOTE_FLAG_TRANSFER != 0,
                    last_log_index: self.index("last_log_index")?,
                    last_log_term: self.term("last_log_term")?,
                })
            }
            TAG_REQUEST_VOTE_RESPONSE => MessageBody::RequestVoteResponse(RequestVoteResponse {
                pre_vote: self.bool("pre_vote")?,
                granted: self.bool("granted")?,
            }),
            TAG_APPEND_ENTRIES => MessageBody::AppendEntries(self.append_entries()?),
            TAG_APPEND_ENTRIES_RESPONSE => {
                MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                    round: self.u64("round")?,
                    result: self.append_result()?,
                })
            }
            TAG_INSTALL_SNAPSHOT => MessageBody::InstallSnapshot(self.install_snapshot()?),
            TAG_INSTALL_SNAPSHOT_RESPONSE => {
                MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                    last_index: self.index("last_index")?,
                    next_offset: self.u64("next_offset")?,
                    round: self.u64("round")?,
                })
            }
            TAG_READ_INDEX_REQUEST => MessageBody::ReadIndexRequest(ReadIndexRequest {
                id: self.u64("read id")?,
            }),
            TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
            _ => MessageBody::ReadIndexResponse(ReadIndexResponse {
                id: self.u64("read id")?,
                read_index: match self.u8("read_index flag")? {
                    0 => None,
                    1 => Some(self.index("read_index")?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "read_index flag",
                            tag,
                        })
                    }
                },
            }),
        };
        Ok(Message {
            from,
            to,
            term,
            body,
        })
    }

    fn append_entries(&mut self) -> Result<AppendEntries, DecodeError> {
        let prev_log_index = self.index("prev_log_index")?;
        let prev_log_term = self.term("prev_log_term")?;
        let leader_commit = self.index("leader_commit")?;
        let round = self.u64("round")?;
        let count = usize::try_from(self.u32("entry count")?).unwrap_or(usize::MAX);
        // Every entry takes at least MIN_ENTRY_LEN bytes, so a count the rest
        // of the frame cannot hold is rejected before allocating for it. This
        // bounds the Vec by the frame's length.
        if count > self.buf.remaining() / MIN_ENTRY_LEN {
            return Err(DecodeError::Truncated { what: "entries" });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(self.entry()?);
        }
        Ok(AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            round,
        })
    }

    fn install_snapshot(&mut self) -> Result<InstallSnapshot, DecodeError> {
        let meta = SnapshotMeta {
            last_index: self.index("snapshot last_index")?,
            last_term: self.term("snapshot last_term")?,
            len: self.u64("snapshot len")?,
            membership: Box::new(self.membership()?),
        };
        let offset = self.u64("snapshot offset")?;
        let round = self.u64("round")?;
        let len = usize::try_from(self.u32("chunk length")?).unwrap_or(usize::MAX);
        if len > MAX_SNAPSHOT_CHUNK {
            return Err(DecodeError::Invalid {
                what: "snapshot chunk exceeds MAX_SNAPSHOT_CHUNK",
            });
        }
        Ok(InstallSnapshot {
            meta,
            offset,
            data: self.bytes(len, "chunk")?,
            round,
        })
    }

    fn entry(&mut self) -> Result<Entry, DecodeError> {
        let term = self.term("entry term")?;
        let index = self.index("entry index")?;
        let payload = match self.u8("entry payload tag")? {
            PAYLOAD_NOOP => EntryPayload::Noop,
            PAYLOAD_COMMAND => {
                let len = usize::try_from(self.u32("command length")?).unwrap_or(usize::MAX);
                if len > MAX_ENTRY_LEN {
                    return Err(DecodeError::EntryTooLarge {
                        len,
                        max: MAX_ENTRY_LEN,
                    });
                }
                EntryPayload::Command(self.bytes(len, "command")?)
            }
            PAYLOAD_CONFIGURATION => EntryPayload::Configuration(Box::new(self.membership()?)),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "entry payload",
                    tag,
                })
            }
        };
        Ok(Entry {
            term,
            index,
            payload,
        })
    }

    /// A configuration's bytes; `check` judges its rules. The counts are
    /// bounded before anything is allocated for them.
    fn membership(&mut self) -> Result<Membership, DecodeError> {
        let mut lists = [Vec::new(), Vec::new()];
        for list in lists.iter_mut() {
            let n = usize::from(self.u8("member count")?);
            if n > MAX_MEMBERS {
                return Err(DecodeError::Invalid {
                    what: "a configuration has too many members",
                });
            }
            self.need(8 * n, "members")?;
            for _ in 0..n {
                list.push(NodeId(self.u64("member id")?));
            }
        }
        let len = usize::try_from(self.u32("context length")?).unwrap_or(usize::MAX);
        if len > MAX_MEMBERSHIP_CONTEXT {
            return Err(DecodeError::Invalid {
                what: "a configuration's context is too long",
            });
        }
        let context = self.bytes(len, "context")?;
        let [voters, learners] = lists;
        Ok(Membership {
            voters,
            learners,
            context,
        })
    }

    fn append_result(&mut self) -> Result<AppendResult, DecodeError> {
        match self.u8("append result tag")? {
            RESULT_SUCCESS => Ok(AppendResult::Success {
                match_index: self.index("match_index")?,
            }),
            RESULT_CONFLICT => {
                let rejected_index = self.index("rejected_index")?;
                let last_log_index = self.index("last_log_index")?;
                let conflict_term = match self.u8("conflict_term flag")? {
                    0 => None,
                    1 => Some(self.term("conflict_term")?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "conflict_term flag",
                            tag,
                        })
                    }
                };
                Ok(AppendResult::Conflict {
                    rejected_index,
                    last_log_index,
                    conflict_term,
                    conflict_index: self.index("conflict_index")?,
                })
            }
            tag => Err(DecodeError::UnknownTag {
                what: "append result",
                tag,
            }),
        }
    }
}

/// The rules of the module docs that a well-formed message must also obey;
/// `Err` names the rule broken. `decode` rejects, and `encode` panics on,
/// exactly these; the node checks them again for messages that did not come
/// through `decode`. The bound on the message's term also bounds every other
/// term field, which may not exceed it.
pub(crate) fn check(msg: &Message) -> Result<(), &'static str> {
    if msg.from.0 == 0 {
        return Err("from is node id 0");
    }
    if msg.to.0 == 0 {
        return Err("to is node id 0");
    }
    if msg.term > Term::MAX {
        return Err("term exceeds Term::MAX");
    }
    match &msg.body {
        MessageBody::RequestVote(rv) if rv.pre_vote && rv.leadership_transfer => {
            Err("a pre-vote is never a leadership transfer")
        }
        MessageBody::RequestVote(rv) => {
            check_log_position(rv.last_log_index, rv.last_log_term, msg.term).map_err(|rule| {
                match rule {
                    PositionRule::NonZeroAtIndexZero => "last_log_term of an empty log is not 0",
                    PositionRule::ZeroAtRealIndex => "last_log_term is 0 for a non-empty log",
                    PositionRule::AboveSenderTerm => "last_log_term exceeds the candidate's term",
                }
            })
        }
        MessageBody::RequestVoteResponse(_) => Ok(()),
        MessageBody::AppendEntries(ae) => check_append_entries(ae, msg.term),
        MessageBody::AppendEntriesResponse(r) => match r.result {
            AppendResult::Success { .. } => Ok(()),
            AppendResult::Conflict { rejected_index, .. } if rejected_index.0 == 0 => {
                Err("rejected_index is 0")
            }
            AppendResult::Conflict {
                rejected_index,
                last_log_index,
                conflict_term: Some(t),
                conflict_index,
            } => {
                if t.0 == 0 {
                    Err("conflict_term is 0")
                } else if t > msg.term {
                    Err("conflict_term exceeds the follower's term")
                } else if rejected_index > last_log_index {
                    Err("conflict_term for an index beyond the follower's log")
                } else if conflict_index.0 == 0 || conflict_index > rejected_index {
                    Err("conflict_index outside 1..=rejected_index")
                } else {
                    Ok(())
                }
            }
            AppendResult::Conflict {
                rejected_index,
                last_log_index,
                conflict_term: None,
                conflict_index,
            } => {
                if rejected_index <= last_log_index {
                    Err("no conflict_term for an index within the follower's log")
                } else if last_log_index.0.checked_add(1) != Some(conflict_index.0) {
                    Err("conflict_index without conflict_term is not last_log_index + 1")
                } else {
                    Ok(())
                }
            }
        },
        MessageBody::InstallSnapshot(is) => check_install_snapshot(is, msg.term),
        MessageBody::InstallSnapshotResponse(r) => {
            if r.last_index.0 == 0 {
                Err("snapshot last_index is 0")
            } else {
                Ok(())
            }
        }
        MessageBody::ReadIndexRequest(_) | MessageBody::TimeoutNow => Ok(()),
        MessageBody::ReadIndexResponse(r) => {
            if r.read_index == Some(LogIndex(0)) {
                Err("read_index is 0")
            } else {
                Ok(())
            }
        }
    }
}

fn check_install_snapshot(is: &InstallSnapshot, leader_term: Term) -> Result<(), &'static str> {
    let meta = &is.meta;
    if meta.last_index.0 == 0 {
        return Err("snapshot last_index is 0");
    }
    if meta.last_term.0 == 0 {
        return Err("snapshot last_term is 0");
    }
    if meta.last_term > leader_term {
        return Err("snapshot last_term exceeds the leader's term");
    }
    if meta.len == 0 {
        return Err("snapshot len is 0");
    }
    meta.membership.check()?;
    if is.data.len() > MAX_SNAPSHOT_CHUNK {
        return Err("snapshot chunk exceeds MAX_SNAPSHOT_CHUNK");
    }
    match is.offset.checked_add(is.data.len() as u64) {
        Some(end) if end <= meta.len => Ok(()),
        _ => Err("snapshot chunk reaches past the snapshot's len"),
    }
}

enum PositionRule {
    NonZeroAtIndexZero,
    ZeroAtRealIndex,
    AboveSenderTerm,
}

/// Index 0 is the empty prefix and has term 0; every entry has a term of at
/// least 1, and no sender holds an entry from a term after its own.
fn check_log_position(index: LogIndex, term: Term, sender_term: Term) -> Result<(), PositionRule> {
    if index.0 == 0 && term.0 != 0 {
        return Err(PositionRule::NonZeroAtIndexZero);
    }
    if index.0 != 0 && term.0 == 0 {
        return Err(PositionRule::ZeroAtRealIndex);
    }
    if term > sender_term {
        return Err(PositionRule::AboveSenderTerm);
    }
    Ok(())
}

fn check_append_entries(ae: &AppendEntries, leader_term: Term) -> Result<(), &'static str> {
    check_log_position(ae.prev_log_index, ae.prev_log_term, leader_term).map_err(
        |rule| match rule {
            PositionRule::NonZeroAtIndexZero => "prev_log_term of index 0 is not 0",
            PositionRule::ZeroAtRealIndex => "prev_log_term is 0 for an index above 0",
            PositionRule::AboveSenderTerm => "prev_log_term exceeds the leader's term",
        },
    )?;
    let mut expected_index = ae.prev_log_index;
    let mut min_term = ae.prev_log_term;
    for e in &ae.entries {
        expected_index = match expected_index.0.checked_add(1) {
            Some(i) => LogIndex(i),
            None => return Err("entry index overflows"),
        };
        if e.index != expected_index {
            return Err("entry indexes are not consecutive from prev_log_index + 1");
        }
        if e.term.0 == 0 {
            return Err("entry term is 0");
        }
        if e.term < min_term {
            return Err("entry terms decrease");
        }
        if e.term > leader_term {
            return Err("entry term exceeds the leader's term");
        }
        if e.payload_len() > MAX_ENTRY_LEN {
            return Err("entry command exceeds MAX_ENTRY_LEN");
        }
        if let EntryPayload::Configuration(m) = &e.payload {
            m.check()?;
        }
        min_term = e.term;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- strategies: valid messages of every kind --------------------------

    fn node_id() -> impl Strategy<Value = NodeId> {
        prop_oneof![1u64..8, Just(u64::MAX), 1..=u64::MAX].prop_map(NodeId)
    }

    /// Terms a correct member may send: up to [`Term::MAX`].
    fn term() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..5, Just(Term::MAX.0), 0..=Term::MAX.0]
    }

    /// Terms the codec refuses.
    fn term_above_max() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(Term::MAX.0 + 1),
            Just(u64::MAX),
            Term::MAX.0 + 1..=u64::MAX
        ]
    }

    fn index() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..20, Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()]
    }

    /// A valid `(index, term)` log position for a sender at `sender_term`.
    fn log_position(sender_term: u64) -> BoxedStrategy<(LogIndex, Term)> {
        if sender_term == 0 {
            return Just((LogIndex(0), Term(0))).boxed();
        }
        prop_oneof![
            Just((LogIndex(0), Term(0))),
            (index(), 1..=sender_term).prop_map(|(i, t)| (LogIndex(i.max(1)), Term(t))),
        ]
        .boxed()
    }

    fn payload() -> impl Strategy<Value = EntryPayload> {
        prop_oneof![
            Just(EntryPayload::Noop),
            proptest::collection::vec(any::<u8>(), 0..48)
                .prop_map(|v| EntryPayload::Command(Bytes::from(v))),
            membership().prop_map(|m| EntryPayload::Configuration(Box::new(m))),
        ]
    }

    /// A valid configuration: disjoint sorted sets, at least one voter.
    fn membership() -> impl Strategy<Value = Membership> {
        (
            proptest::collection::btree_map(1..u64::MAX, any::<bool>(), 1..8),
            proptest::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(ids, context)| {
                let mut m = Membership {
                    context: Bytes::from(context),
                    ..Membership::default()
                };
                for (id, learner) in ids {
                    if learner {
                        m.learners.push(NodeId(id));
                    } else {
                        m.voters.push(NodeId(id));
                    }
                }
                if m.voters.is_empty() {
                    m.voters.push(m.learners.remove(0));
                }
                m
            })
    }

    fn append_entries(t: u64) -> impl Strategy<Value = MessageBody> {
        (
            log_position(t),
            proptest::collection::vec((any::<u64>(), payload()), 0..6),
            index(),
            any::<u64>(),
        )
            .prop_map(
                move |((prev_log_index, prev_log_term), raw, leader_commit, round)| {
                    // Terms are sorted draws from [max(prev_log_term, 1), t];
                    // indexes follow prev_log_index without overflowing.
                    let lo = prev_log_term.0.max(1);
                    let room = u64::MAX - prev_log_index.0;
                    let n = if t < lo {
                        0
                    } else {
                        raw.len().min(room as usize)
                    };
                    let mut terms: Vec<u64> = raw[..n]
                        .iter()
                        .map(|(r, _)| lo + r % (t - lo + 1))
                        .collect();
                    terms.sort_unstable();
                    let entries = raw[..n]
                        .iter()
                        .zip(terms)
                        .zip(1u64..)
                        .map(|(((_, p), term), k)| Entry {
                            term: Term(term),
                            index: prev_log_index.plus(k),
                            payload: p.clone(),
                        })
                        .collect();
                    MessageBody::AppendEntries(AppendEntries {
                        prev_log_index,
                        prev_log_term,
                        entries,
                        leader_commit: LogIndex(leader_commit),
                        round,
                    })
                },
            )
    }

    fn append_result(t: u64) -> impl Strategy<Value = AppendResult> {
        prop_oneof![
            index().prop_map(|i| AppendResult::Success {
                match_index: LogIndex(i)
            }),
            (index(), any::<bool>(), any::<[u64; 3]>()).prop_map(
                move |(last, with_term, [r1, r2, r3])| {
                    if with_term && t >= 1 && last >= 1 {
                        // 1 <= conflict_index <= rejected_index <= last
                        let rejected = 1 + r2 % last;
                        AppendResult::Conflict {
                            rejected_index: LogIndex(rejected),
                            last_log_index: LogIndex(last),
                            conflict_term: Some(Term(1 + r1 % t)),
                            conflict_index: LogIndex(1 + r3 % rejected),
                        }
                    } else {
                        // last < rejected_index
                        let last = last.min(u64::MAX - 1);
                        let rejected = last + 1 + r2 % (u64::MAX - last);
                        AppendResult::Conflict {
                            rejected_index: LogIndex(rejected),
                            last_log_index: LogIndex(last),
                            conflict_term: None,
                            conflict_index: LogIndex(last + 1),
                        }
                    }
                }
            ),
        ]
    }

    fn body(t: u64) -> impl Strategy<Value = MessageBody> {
        prop_oneof![
            (any::<bool>(), any::<bool>(), log_position(t)).prop_map(|(pre_vote, t, (i, lt))| {
                MessageBody::RequestVote(RequestVote {
                    pre_vote,
                    leadership_transfer: t && !pre_vote,
                    last_log_index: i,
                    last_log_term: lt,
                })
            }),
            (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| {
                MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted })
            }),
            append_entries(t),
            (any::<u64>(), append_result(t)).prop_map(|(round, result)| {
                MessageBody::AppendEntriesResponse(AppendEntriesResponse { round, result })
            }),
            // A leader of term 0 has no snapshot to send.
            install_snapshot(t.max(1)).prop_map(move |b| if t == 0 {
                MessageBody::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: false,
                    granted: false,
                })
            } else {
                b
            }),
            (1..u64::MAX, any::<u64>(), any::<u64>()).prop_map(|(i, next_offset, round)| {
                MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                    last_index: LogIndex(i),
                    next_offset,
                    round,
                })
            }),
            any::<u64>().prop_map(|id| MessageBody::ReadIndexRequest(ReadIndexRequest { id })),
            Just(MessageBody::TimeoutNow),
            (any::<u64>(), proptest::option::of(1..u64::MAX)).prop_map(|(id, i)| {
                MessageBody::ReadIndexResponse(ReadIndexResponse {
                    id,
                    read_index: i.map(LogIndex),
                })
            }),
        ]
    }

    /// A valid chunk of a snapshot whose last term is at most `t` (>= 1).
    fn install_snapshot(t: u64) -> impl Strategy<Value = MessageBody> {
        (
            1..u64::MAX,
            1..=t,
            proptest::collection::vec(any::<u8>(), 0..64),
            0..1000u64,
            0..1000u64,
            any::<u64>(),
            membership(),
        )
            .prop_map(|(i, lt, data, offset, tail, round, membership)| {
                MessageBody::InstallSnapshot(InstallSnapshot {
                    meta: SnapshotMeta {
                        last_index: LogIndex(i),
                        last_term: Term(lt),
                        len: (offset + data.len() as u64 + tail).max(1),
                        membership: Box::new(membership),
                    },
                    offset,
                    data: Bytes::from(data),
                    round,
                })
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        (node_id(), node_id(), term()).prop_flat_map(|(from, to, t)| {
            body(t).prop_map(move |body| Message {
                from,
                to,
                term: Term(t),
                body,
            })
        })
    }

    // ---- helpers ----------------------------------------------------------

    fn encoded(msg: &Message) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(msg, &mut buf);
        buf
    }

    /// A frame with a correct length prefix around hand-written bytes.
    fn raw_frame(write: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u8(VERSION);
        write(&mut body);
        let mut frame = BytesMut::new();
        frame.put_u32(body.len() as u32);
        frame.put_slice(&body);
        frame
    }

    fn header(b: &mut BytesMut, tag: u8, from: u64, to: u64, term: u64) {
        b.put_u8(tag);
        b.put_u64(from);
        b.put_u64(to);
        b.put_u64(term);
    }

    /// An AppendEntries at term 5 from 1 to 2 with these (term, index) Noops.
    fn append_frame(prev: (u64, u64), count: u32, entries: &[(u64, u64)]) -> BytesMut {
        raw_frame(|b| {
            header(b, TAG_APPEND_ENTRIES, 1, 2, 5);
            b.put_u64(prev.0);
            b.put_u64(prev.1);
            b.put_u64(0); // leader_commit
            b.put_u64(7); // round
            b.put_u32(count);
            for &(term, index) in entries {
                b.put_u64(term);
                b.put_u64(index);
                b.put_u8(PAYLOAD_NOOP);
            }
        })
    }

    fn heartbeat() -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(10),
                prev_log_term: Term(2),
                entries: vec![],
                leader_commit: LogIndex(9),
                round: 4,
            }),
        }
    }

    /// Every term field of `msg`'s frame: the name `decode` gives it and
    /// the offset of its 8 bytes in the frame `encode` writes.
    fn term_fields(msg: &Message) -> Vec<(&'static str, usize)> {
        // length prefix, version, tag, from, to
        let term_at = LEN_PREFIX_LEN + 1 + 1 + 8 + 8;
        let fields_at = term_at + 8;
        let mut fields = vec![("term", term_at)];
        match &msg.body {
            MessageBody::RequestVote(_) => fields.push(("last_log_term", fields_at + 1 + 8)),
            MessageBody::RequestVoteResponse(_) => {}
            MessageBody::AppendEntries(ae) => {
                fields.push(("prev_log_term", fields_at + 8));
                let mut at = fields_at + APPEND_ENTRIES_FIXED_LEN;
                for e in &ae.entries {
                    fields.push(("entry term", at));
                    at += entry_len(e);
                }
            }
            MessageBody::AppendEntriesResponse(r) => {
                if let AppendResult::Conflict {
                    conflict_term: Some(_),
                    ..
                } = r.result
                {
                    // round, result tag, rejected_index, last_log_index, flag
                    fields.push(("conflict_term", fields_at + 8 + 1 + 8 + 8 + 1));
                }
            }
            MessageBody::InstallSnapshot(_) => fields.push(("snapshot last_term", fields_at + 8)),
            MessageBody::InstallSnapshotResponse(_)
            | MessageBody::ReadIndexRequest(_)
            | MessageBody::ReadIndexResponse(_)
            | MessageBody::TimeoutNow => {}
        }
        fields
    }

    fn invalid(what: &'static str) -> Result<Option<Message>, DecodeError> {
        Err(DecodeError::Invalid { what })
    }

    /// Decodes frames until `None` or an error; every message decoded must
    /// re-encode to exactly the bytes it came from (the format is canonical).
    fn decode_all_canonical(mut buf: BytesMut) {
        loop {
            let before = buf.clone();
            match decode(&mut buf) {
                Ok(Some(msg)) => {
                    let consumed = before.len() - buf.len();
                    assert_eq!(encoded_len(&msg), consumed);
                    assert_eq!(&encoded(&msg)[..], &before[..consumed]);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed input");
                    return;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return;
                }
            }
        }
    }

    // ---- properties -------------------------------------------------------

    proptest! {
        #[test]
        fn round_trip(msg in message()) {
            prop_assert_eq!(check(&msg), Ok(()), "strategy made an invalid message");
            let mut buf = encoded(&msg);
            prop_assert_eq!(buf.len(), encoded_len(&msg));
            prop_assert_eq!(decode(&mut buf), Ok(Some(msg)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn every_proper_prefix_is_incomplete(msg in message()) {
            let frame = encoded(&msg);
            for n in 0..frame.len() {
                let mut buf = BytesMut::from(&frame[..n]);
                prop_assert_eq!(decode(&mut buf), Ok(None), "prefix of {} bytes", n);
                prop_assert_eq!(&buf[..], &frame[..n], "Ok(None) consumed input");
            }
        }

        #[test]
        fn frames_back_to_back(msgs in proptest::collection::vec(message(), 0..8)) {
            let mut buf = BytesMut::new();
            for m in &msgs {
                encode(m, &mut buf);
            }
            for m in msgs {
                prop_assert_eq!(decode(&mut buf), Ok(Some(m)));
            }
            prop_assert_eq!(decode(&mut buf), Ok(None));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_all_canonical(BytesMut::from(&bytes[..]));
        }

        /// Random bytes rarely get past the length prefix; corrupting valid
        /// frames reaches the field checks.
        #[test]
        fn corrupted_frames_never_panic(
            msg in message(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut frame = encoded(&msg);
            for (at, byte) in edits {
                let at = at % frame.len();
                frame[at] = byte;
            }
            frame.truncate(cut % (frame.len() + 1) + 1);
            decode_all_canonical(frame);
        }

        /// Whichever term field of a valid frame is set above [`Term::MAX`],
        /// `decode` refuses it with an error naming that field, and a term
        /// at the bound passes that check.
        #[test]
        fn every_term_field_is_bounded(
            msg in message(),
            pick in any::<usize>(),
            big in term_above_max(),
        ) {
            let fields = term_fields(&msg);
            let (what, at) = fields[pick % fields.len()];
            let mut frame = encoded(&msg);
            frame[at..at + 8].copy_from_slice(&big.to_be_bytes());
            prop_assert_eq!(
                decode(&mut frame),
                Err(DecodeError::TermAboveMax { what, term: big })
            );
        }

        #[test]
        fn command_lengths_are_bounded(len in MAX_ENTRY_LEN as u32 + 1..=u32::MAX) {
            let mut buf = short_command_frame(len);
            prop_assert_eq!(
                decode(&mut buf),
                Err(DecodeError::EntryTooLarge { len: len as usize, max: MAX_ENTRY_LEN })
            );
        }

    }

    // ---- specific cases ---------------------------------------------------

    #[test]
    fn huge_length_prefix_is_rejected_before_the_body() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::FrameTooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert!(matches!(
            decode(&mut buf),
            Err(DecodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn largest_length_prefix_waits_without_reserving() {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u32(MAX_FRAME_LEN as u32);
        buf.put_u8(VERSION);
        let capacity = buf.capacity();
        assert_eq!(decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), 5);
        assert_eq!(buf.capacity(), capacity);
    }

    /// `heartbeat()` carrying one command entry.
    fn append_command(command: Bytes) -> Message {
        let mut msg = heartbeat();
        let MessageBody::AppendEntries(ae) = &mut msg.body else {
            unreachable!()
        };
        ae.entries.push(Entry {
            term: Term(3),
            index: LogIndex(11),
            payload: EntryPayload::Command(command),
        });
        msg
    }

    /// `heartbeat()` carrying commands of these lengths.
    fn append_commands(lens: &[usize]) -> Message {
        let mut msg = heartbeat();
        let MessageBody::AppendEntries(ae) = &mut msg.body else {
            unreachable!()
        };
        for (k, &len) in (1..).zip(lens) {
            ae.entries.push(Entry {
                term: Term(3),
                index: LogIndex(10 + k),
                payload: EntryPayload::Command(Bytes::from(vec![7u8; len])),
            });
        }
        msg
    }

    #[test]
    fn largest_frame_round_trips() {
        // Three entries of the largest size, and one that fills the rest.
        let overhead = encoded_len(&append_commands(&[0; 4]));
        let largest = MAX_FRAME_LEN + LEN_PREFIX_LEN;
        let rest = largest - overhead - 3 * MAX_ENTRY_LEN;
        assert!(rest <= MAX_ENTRY_LEN);
        let msg = append_commands(&[MAX_ENTRY_LEN, MAX_ENTRY_LEN, MAX_ENTRY_LEN, rest]);
        assert_eq!(encoded_len(&msg), largest);
        let mut buf = encoded(&msg);
        assert_eq!(decode(&mut buf), Ok(Some(msg)));
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_FRAME_LEN")]
    fn encoding_an_oversized_message_panics() {
        encoded(&append_commands(&[MAX_ENTRY_LEN; 4]));
    }

    #[test]
    #[should_panic(expected = "not consecutive")]
    fn encoding_an_invalid_message_panics() {
        let mut msg = heartbeat();
        let MessageBody::AppendEntries(ae) = &mut msg.body else {
            unreachable!()
        };
        ae.entries.push(Entry {
            term: Term(3),
            index: LogIndex(12),
            payload: EntryPayload::Noop,
        });
        encoded(&msg);
    }

    #[test]
    fn unsupported_version() {
        let mut frame = encoded(&heartbeat());
        frame[LEN_PREFIX_LEN] = VERSION + 1;
        // Rejected as soon as the version byte arrives.
        let mut early = BytesMut::from(&frame[..FRAME_HEADER_LEN]);
        assert_eq!(
            decode(&mut early),
            Err(DecodeError::UnsupportedVersion(VERSION + 1))
        );
        assert_eq!(
            decode(&mut frame),
            Err(DecodeError::UnsupportedVersion(VERSION + 1))
        );
    }

    #[test]
    fn empty_body() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::Truncated { what: "version" })
        );
    }

    #[test]
    fn trailing_bytes() {
        let frame = encoded(&heartbeat());
        let mut buf = BytesMut::new();
        buf.put_u32((frame.len() - LEN_PREFIX_LEN + 2) as u32);
        buf.put_slice(&frame[LEN_PREFIX_LEN..]);
        buf.put_slice(&[0, 0]);
        assert_eq!(decode(&mut buf), Err(DecodeError::TrailingBytes { n: 2 }));
    }

    #[test]
    fn zero_node_id() {
        let mut buf = raw_frame(|b| {
            header(b, TAG_REQUEST_VOTE_RESPONSE, 0, 2, 1);
            b.put_slice(&[0, 1]);
        });
        assert_eq!(decode(&mut buf), invalid("from is node id 0"));
        let mut buf = raw_frame(|b| {
            header(b, TAG_REQUEST_VOTE_RESPONSE, 1, 0, 1);
            b.put_slice(&[0, 1]);
        });
        assert_eq!(decode(&mut buf), invalid("to is node id 0"));
    }

    #[test]
    fn unknown_tags_and_bad_bools() {
        let mut buf = raw_frame(|b| header(b, 10, 1, 2, 1));
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::UnknownTag {
                what: "message",
                tag: 10
            })
        );
        // Vote flags beyond pre-vote and transfer; both at once.
        let mut buf = raw_frame(|b| {
            header(b, TAG_REQUEST_VOTE, 1, 2, 1);
            b.put_u8(4);
            b.put_slice(&[0; 16]);
        });
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::UnknownTag {
                what: "vote flags",
                tag: 4
            })
        );
        let mut buf = raw_frame(|b| {
            header(b, TAG_REQUEST_VOTE, 1, 2, 1);
            b.put_u8(3);
            b.put_slice(&[0; 16]);
        });
        assert_eq!(
            decode(&mut buf),
            invalid("a pre-vote is never a leadership transfer")
        );
        // A configuration entry without voters, and one with 65 members.
        for (voters, learners, rule) in [
            (0u8, 1u8, "a configuration has no voter"),
            (65, 0, "a configuration has too many members"),
        ] {
            let mut buf = raw_frame(|b| {
                header(b, TAG_APPEND_ENTRIES, 1, 2, 1);
                b.put_slice(&[0; 32]);
                b.put_u32(1);
                b.put_u64(1);
                b.put_u64(1);
                b.put_u8(PAYLOAD_CONFIGURATION);
                for n in [voters, learners] {
                    b.put_u8(n);
                    for k in 0..n {
                        b.put_u64(u64::from(k) + 1);
                    }
                }
                b.put_u32(0);
            });
            assert_eq!(decode(&mut buf), invalid(rule));
        }
        let mut buf = raw_frame(|b| b.put_u8(0));
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::UnknownTag {
                what: "message",
                tag: 0
            })
        );
        let mut buf = raw_frame(|b| {
            header(b, TAG_REQUEST_VOTE_RESPONSE, 1, 2, 1);
            b.put_slice(&[1, 2]);
        });
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::UnknownTag {
                what: "granted",
                tag: 2
            })
        );
        let mut buf = raw_frame(|b| {
            header(b, TAG_APPEND_ENTRIES_RESPONSE, 1, 2, 1);
            b.put_u64(0);
            b.put_u8(RESULT_CONFLICT);
            b.put_u64(4);
            b.put_u64(4);
            b.put_u8(2); // option flag
            b.put_u64(1);
            b.put_u64(1);
        });
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::UnknownTag {
                what: "conflict_term flag",
                tag: 2
            })
        );
    }

    #[test]
    fn entries_must_follow_prev_log_index() {
        let ok = append_frame((10, 2), 2, &[(3, 11), (4, 12)]);
        assert!(decode(&mut ok.clone()).unwrap().is_some());
        for (entries, what) in [
            (
                [(3, 11), (4, 13)],
                "entry indexes are not consecutive from prev_log_index + 1",
            ),
            (
                [(3, 12), (4, 13)],
                "entry indexes are not consecutive from prev_log_index + 1",
            ),
            ([(4, 11), (3, 12)], "entry terms decrease"),
            ([(1, 11), (3, 12)], "entry terms decrease"),
            ([(3, 11), (6, 12)], "entry term exceeds the leader's term"),
        ] {
            let mut buf = append_frame((10, 2), 2, &entries);
            assert_eq!(decode(&mut buf), invalid(what), "{entries:?}");
        }
        let mut buf = append_frame((u64::MAX, 2), 1, &[(3, 0)]);
        assert_eq!(decode(&mut buf), invalid("entry index overflows"));
        let mut buf = append_frame((0, 0), 1, &[(0, 1)]);
        assert_eq!(decode(&mut buf), invalid("entry term is 0"));
    }

    #[test]
    fn log_positions_must_be_consistent() {
        let mut buf = append_frame((0, 1), 0, &[]);
        assert_eq!(
            decode(&mut buf),
            invalid("prev_log_term of index 0 is not 0")
        );
        let mut buf = append_frame((3, 0), 0, &[]);
        assert_eq!(
            decode(&mut buf),
            invalid("prev_log_term is 0 for an index above 0")
        );
        let mut buf = append_frame((3, 6), 0, &[]);
        assert_eq!(
            decode(&mut buf),
            invalid("prev_log_term exceeds the leader's term")
        );
        let mut buf = raw_frame(|b| {
            header(b, TAG_REQUEST_VOTE, 1, 2, 5);
            b.put_u8(1);
            b.put_u64(9);
            b.put_u64(6);
        });
        assert_eq!(
            decode(&mut buf),
            invalid("last_log_term exceeds the candidate's term")
        );
    }

    #[test]
    fn conflict_hints_must_follow_the_contract() {
        let conflict = |rejected: u64, last: u64, term: Option<u64>, index: u64| {
            raw_frame(|b| {
                header(b, TAG_APPEND_ENTRIES_RESPONSE, 2, 1, 5);
                b.put_u64(0);
                b.put_u8(RESULT_CONFLICT);
                b.put_u64(rejected);
                b.put_u64(last);
                match term {
                    None => b.put_u8(0),
                    Some(t) => {
                        b.put_u8(1);
                        b.put_u64(t);
                    }
                }
                b.put_u64(index);
            })
        };
        assert!(decode(&mut conflict(7, 9, Some(2), 4)).unwrap().is_some());
        assert!(decode(&mut conflict(7, 9, Some(2), 7)).unwrap().is_some());
        assert!(decode(&mut conflict(12, 9, None, 10)).unwrap().is_some());
        for (frame, what) in [
            (conflict(0, 9, Some(2), 4), "rejected_index is 0"),
            (conflict(0, 0, None, 1), "rejected_index is 0"),
            (conflict(7, 9, Some(0), 4), "conflict_term is 0"),
            (
                conflict(7, 9, Some(6), 4),
                "conflict_term exceeds the follower's term",
            ),
            (
                conflict(10, 9, Some(2), 4),
                "conflict_term for an index beyond the follower's log",
            ),
            (
                conflict(7, 9, Some(2), 0),
                "conflict_index outside 1..=rejected_index",
            ),
            (
                conflict(7, 9, Some(2), 8),
                "conflict_index outside 1..=rejected_index",
            ),
            (
                conflict(9, 9, None, 10),
                "no conflict_term for an index within the follower's log",
            ),
            (
                conflict(12, 9, None, 9),
                "conflict_index without conflict_term is not last_log_index + 1",
            ),
        ] {
            assert_eq!(decode(&mut frame.clone()), invalid(what));
        }
    }

    #[test]
    fn entry_count_beyond_the_frame_is_rejected_before_allocating() {
        let mut buf = append_frame((10, 2), u32::MAX, &[]);
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::Truncated { what: "entries" })
        );
        // One entry short of the count.
        let mut buf = append_frame((10, 2), 3, &[(3, 11), (4, 12)]);
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::Truncated { what: "entries" })
        );
    }

    /// An AppendEntries from 1 to 2 in term 5 whose one entry declares a
    /// command of `len` bytes but carries only `abc`.
    fn short_command_frame(len: u32) -> BytesMut {
        raw_frame(|b| {
            header(b, TAG_APPEND_ENTRIES, 1, 2, 5);
            b.put_slice(&[0; 32]);
            b.put_u32(1);
            b.put_u64(1);
            b.put_u64(1);
            b.put_u8(PAYLOAD_COMMAND);
            b.put_u32(len);
            b.put_slice(b"abc");
        })
    }

    #[test]
    fn command_length_beyond_the_frame() {
        let mut buf = short_command_frame(MAX_ENTRY_LEN as u32);
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::Truncated { what: "command" })
        );
    }

    #[test]
    fn command_longer_than_max_entry_len_is_refused_by_its_length() {
        // Refused on the declared length, before looking for the bytes.
        for len in [MAX_ENTRY_LEN as u32 + 1, u32::MAX] {
            let mut buf = short_command_frame(len);
            assert_eq!(
                decode(&mut buf),
                Err(DecodeError::EntryTooLarge {
                    len: len as usize,
                    max: MAX_ENTRY_LEN
                })
            );
        }
    }

    #[test]
    fn largest_entry_round_trips_and_one_more_byte_is_refused() {
        let msg = append_command(Bytes::from(vec![7u8; MAX_ENTRY_LEN]));
        let mut buf = encoded(&msg);
        assert_eq!(decode(&mut buf), Ok(Some(msg)));

        // The same frame with one more command byte: its length field and
        // the frame's length prefix both grow by one.
        let msg = append_command(Bytes::from(vec![7u8; MAX_ENTRY_LEN]));
        let frame = encoded(&msg);
        let mut bigger = BytesMut::new();
        bigger.put_u32((frame.len() - LEN_PREFIX_LEN + 1) as u32);
        bigger.put_slice(&frame[LEN_PREFIX_LEN..frame.len() - MAX_ENTRY_LEN - 4]);
        bigger.put_u32(MAX_ENTRY_LEN as u32 + 1);
        bigger.put_slice(&[7u8; MAX_ENTRY_LEN + 1]);
        assert_eq!(
            decode(&mut bigger),
            Err(DecodeError::EntryTooLarge {
                len: MAX_ENTRY_LEN + 1,
                max: MAX_ENTRY_LEN
            })
        );
    }

    #[test]
    #[should_panic(expected = "entry command exceeds MAX_ENTRY_LEN")]
    fn encoding_an_entry_above_max_entry_len_panics() {
        encoded(&append_command(Bytes::from(vec![0u8; MAX_ENTRY_LEN + 1])));
    }

    #[test]
    fn terms_up_to_max_are_accepted() {
        let mut msg = heartbeat();
        msg.term = Term::MAX;
        let mut buf = encoded(&msg);
        assert_eq!(decode(&mut buf), Ok(Some(msg)));
    }

    #[test]
    #[should_panic(expected = "term exceeds Term::MAX")]
    fn encoding_a_term_above_max_panics() {
        let mut msg = heartbeat();
        msg.term = Term(Term::MAX.0 + 1);
        encoded(&msg);
    }

    #[test]
    fn commands_are_slices_of_the_frame() {
        let msg = append_command(Bytes::from_static(b"set x 1"));
        let mut buf = encoded(&msg);
        let frame = buf.as_ptr_range();
        let Some(Message {
            body: MessageBody::AppendEntries(ae),
            ..
        }) = decode(&mut buf).unwrap()
        else {
            panic!("not an AppendEntries")
        };
        let EntryPayload::Command(c) = &ae.entries[0].payload else {
            panic!("not a command")
        };
        assert_eq!(&c[..], b"set x 1");
        assert!(frame.contains(&c.as_ptr()), "command was copied");
    }
}
