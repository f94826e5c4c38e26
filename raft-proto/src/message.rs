//! Messages exchanged between members. Bytes become a [`Message`] only through
//! [`crate::codec::decode`], which checks every bound. The node checks the
//! same rules again on arrival (a driver may build messages another way),
//! then what only it can know (see [`crate::PeerFault`]); its handlers trust
//! what passed.

use bytes::Bytes;

use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};

/// A message from one member to another.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// The sender's current term, or for a pre-vote request the term the
    /// sender would campaign in (§9.6).
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}

/// The Raft RPCs (Figure 2) plus PreVote (§9.6).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MessageBody {
    /// RequestVote, or a PreVote request when `pre_vote` is set.
    RequestVote(RequestVote),
    /// The answer to a [`RequestVote`].
    RequestVoteResponse(RequestVoteResponse),
    /// AppendEntries; an empty one is a heartbeat.
    AppendEntries(AppendEntries),
    /// The answer to an [`AppendEntries`].
    AppendEntriesResponse(AppendEntriesResponse),
    /// A chunk of the leader's snapshot, for a follower that needs entries
    /// the leader no longer holds (§7).
    InstallSnapshot(InstallSnapshot),
    /// The answer to an [`InstallSnapshot`].
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// A follower asks the leader for a read index, to serve a
    /// linearizable read itself (thesis §6.4).
    ReadIndexRequest(ReadIndexRequest),
    /// The answer to a [`ReadIndexRequest`].
    ReadIndexResponse(ReadIndexResponse),
    /// Leadership transfer (thesis §3.10): the leader tells an up-to-date
    /// follower to start an election at once, past PreVote and the
    /// CheckQuorum lease.
    TimeoutNow,
}

/// A follower's request for a read index.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReadIndexRequest {
    /// The follower's id for the read, echoed in the answer.
    pub id: u64,
}

/// The leader's answer to a [`ReadIndexRequest`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReadIndexResponse {
    /// Echo of the request's `id`.
    pub id: u64,
    /// The commit index when the request arrived, confirmed by a majority
    /// after it arrived: once the follower has applied this far, the read
    /// may be served. `None`: refused (not the leader any more, or too
    /// many reads pending).
    pub read_index: Option<LogIndex>,
}

/// InstallSnapshot arguments (§7, chunked as in Figure 13). The chunks of
/// one transfer go out in order; the follower takes a chunk only at the
/// offset it expects next, so a lost or reordered chunk costs a resend from
/// there, never a hole. An empty chunk is a probe (and a heartbeat): the
/// answer says where the follower stands.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InstallSnapshot {
    /// The snapshot being sent.
    pub meta: SnapshotMeta,
    /// Where `data` starts in the serialised snapshot.
    pub offset: u64,
    /// The chunk: `meta.len - offset` bytes at most.
    pub data: Bytes,
    /// The leader's heartbeat round, echoed as in [`AppendEntries::round`].
    pub round: u64,
}

/// InstallSnapshot result.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InstallSnapshotResponse {
    /// The `meta.last_index` of the snapshot answered.
    pub last_index: LogIndex,
    /// The offset the follower expects next; `len` of the snapshot once it
    /// is installed (or when the follower needed none of it: its commit
    /// index had reached `last_index` already).
    pub next_offset: u64,
    /// Echo of the request's `round`.
    pub round: u64,
}

/// RequestVote / PreVote arguments.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RequestVote {
    /// A pre-vote asks "would you vote for me?" without anyone changing term.
    pub pre_vote: bool,
    /// The election was asked for by the leader (TimeoutNow, thesis
    /// §3.10): voters grant it even while they hear from that leader, which
    /// CheckQuorum's lease would otherwise refuse.
    pub leadership_transfer: bool,
    /// Index of the candidate's last log entry (§5.4.1).
    pub last_log_index: LogIndex,
    /// Term of the candidate's last log entry (§5.4.1).
    pub last_log_term: Term,
}

/// RequestVote / PreVote result.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RequestVoteResponse {
    /// Echoes the request's flag.
    pub pre_vote: bool,
    /// Whether the vote (or pre-vote) was granted.
    pub granted: bool,
}

/// AppendEntries arguments.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AppendEntries {
    /// Index of the entry immediately preceding `entries`.
    pub prev_log_index: LogIndex,
    /// Term of that entry.
    pub prev_log_term: Term,
    /// Entries to store, in order, starting at `prev_log_index + 1`; empty
    /// for a heartbeat.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// The leader's heartbeat round when it sent this message, echoed in the
    /// response. A response with round `r` proves the follower still accepted
    /// the leader after the leader started round `r`, which is how ReadIndex
    /// confirms leadership (§6.4).
    pub round: u64,
}

/// AppendEntries result.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AppendEntriesResponse {
    /// Echo of the request's `round`.
    pub round: u64,
    /// The outcome of the consistency check.
    pub result: AppendResult,
}

/// Outcome of the AppendEntries consistency check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AppendResult {
    /// The follower's log now matches the leader's up to and including
    /// `match_index` (`prev_log_index + entries.len()`).
    Success {
        /// Highest index known to match the leader's log.
        match_index: LogIndex,
    },
    /// The follower has no entry at `prev_log_index` with `prev_log_term`.
    /// The hint lets the leader skip a whole term of conflicting entries per
    /// round trip instead of one entry (§5.3, the optimization at its end).
    Conflict {
        /// The request's `prev_log_index`, so the leader can tell a fresh
        /// rejection from a stale, reordered one.
        rejected_index: LogIndex,
        /// The follower's last log index.
        last_log_index: LogIndex,
        /// The term of the follower's entry at `prev_log_index`, or `None` if
        /// its log is shorter than that.
        conflict_term: Option<Term>,
        /// With `conflict_term`: the first index the follower holds of that
        /// term. Without: `last_log_index + 1`.
        conflict_index: LogIndex,
    },
}

impl Message {
    /// Whether the driver may send this message before the fsync of the
    /// persistence actions drained with it: a leader's AppendEntries (thesis
    /// §10.2.1; the leader counts itself in commits only once its entries
    /// are reported durable), and a leader's snapshot chunk (a snapshot is
    /// durable before the node learns of it). Every other message (votes,
    /// responses) depends on what was just persisted and MUST wait for the
    /// fsync.
    pub fn may_precede_persistence(&self) -> bool {
        matches!(
            self.body,
            MessageBody::AppendEntries(_) | MessageBody::InstallSnapshot(_)
        )
    }

    /// A short name for the message kind, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            MessageBody::RequestVote(rv) if rv.pre_vote => "PreVote",
            MessageBody::RequestVote(_) => "RequestVote",
            MessageBody::RequestVoteResponse(r) if r.pre_vote => "PreVoteResponse",
            MessageBody::RequestVoteResponse(_) => "RequestVoteResponse",
            MessageBody::AppendEntries(ae) if ae.entries.is_empty() => "Heartbeat",
            MessageBody::AppendEntries(_) => "AppendEntries",
            MessageBody::AppendEntriesResponse(_) => "AppendEntriesResponse",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
            MessageBody::ReadIndexRequest(_) => "ReadIndexRequest",
            MessageBody::ReadIndexResponse(_) => "ReadIndexResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

impl std::fmt::Display for Message {
    /// One line, as in traces: `n1->n2 t3 AppendEntries prev=4@t2 entries=5..7 commit=4 round=9`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n{}->n{} t{} {}",
            self.from,
            self.to,
            self.term,
            self.kind()
        )?;
        match &self.body {
            MessageBody::RequestVote(rv) => {
                write!(f, " last={}@t{}", rv.last_log_index, rv.last_log_term)?;
                if rv.leadership_transfer {
                    f.write_str(" transfer")?;
                }
                Ok(())
            }
            MessageBody::RequestVoteResponse(r) => {
                f.write_str(if r.granted { " granted" } else { " rejected" })
            }
            MessageBody::AppendEntries(ae) => {
                write!(f, " prev={}@t{}", ae.prev_log_index, ae.prev_log_term)?;
                if let (Some(a), Some(b)) = (ae.entries.first(), ae.entries.last()) {
                    write!(f, " entries={}..{}", a.index, b.index)?;
                }
                write!(f, " commit={} round={}", ae.leader_commit, ae.round)
            }
            MessageBody::AppendEntriesResponse(r) => match r.result {
                AppendResult::Success { match_index } => {
                    write!(f, " ok match={match_index} round={}", r.round)
                }
                AppendResult::Conflict {
                    rejected_index,
                    last_log_index,
                    conflict_term,
                    conflict_index,
                } => {
                    write!(
                        f,
                        " reject prev={rejected_index} last={last_log_index} hint="
                    )?;
                    match conflict_term {
                        Some(t) => write!(f, "t{t}@{conflict_index}"),
                        None => write!(f, "end@{conflict_index}"),
                    }
                }
            },
            MessageBody::InstallSnapshot(is) => write!(
                f,
                " snap={}@t{} len={} offset={} data={} round={}",
                is.meta.last_index,
                is.meta.last_term,
                is.meta.len,
                is.offset,
                is.data.len(),
                is.round
            ),
            MessageBody::InstallSnapshotResponse(r) => write!(
                f,
                " snap={} next_offset={} round={}",
                r.last_index, r.next_offset, r.round
            ),
            MessageBody::ReadIndexRequest(r) => write!(f, " id={}", r.id),
            MessageBody::ReadIndexResponse(r) => match r.read_index {
                Some(i) => write!(f, " id={} index={i}", r.id),
                None => write!(f, " id={} refused", r.id),
            },
            MessageBody::TimeoutNow => Ok(()),
        }
    }
}
