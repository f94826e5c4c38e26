//! What the node asks its driver to do, and the events it reports.

use std::fmt;
use std::time::Duration;

use crate::message::Message;
use crate::types::{Entry, HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};

/// One thing the driver MUST do. Drain them with [`crate::Node::poll_action`]
/// after every input; they come out in this order, and the driver performs
/// them in it:
///
/// 1. storage: [`Action::SaveHardState`], [`Action::TruncateLog`],
///    [`Action::AppendLog`], [`Action::WriteSnapshotChunk`],
///    [`Action::InstallSnapshot`] and [`Action::CompactLog`] in the order
///    given. All of them MUST be durable (fsynced) before any later `Send`
///    leaves the node, except those whose message
///    [`Message::may_precede_persistence`] (a leader's AppendEntries and
///    snapshot chunks), and before any client is told a write succeeded.
///    One fsync may cover the whole batch. After it, the driver reports the
///    last entry appended with [`crate::Node::handle_log_persisted`]: the
///    leader counts itself in commits only up to there.
/// 2. [`Action::Send`] and [`Action::SendSnapshotChunk`]: hand the message
///    to the transport. Delivery is best effort: a lost message is repaired
///    by the protocol.
/// 3. [`Action::Apply`]: apply committed entries to the state machine, in
///    index order, each exactly once per process lifetime. (After an
///    installed snapshot, the state machine is the snapshot's and applies
///    continue after its last index.)
/// 4. [`Action::ReadReady`] / [`Action::ReadFailed`]: answer linearizable
///    reads; a ready read is served from the state machine as it stands
///    after the applies above.
/// 5. [`Action::Event`]: informational (logs, metrics), except that
///    [`Event::PeerFault`] also asks the driver to close that peer's link.
#[must_use = "every action must be carried out by the driver"]
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Durably record the current term and vote, replacing the previous ones.
    SaveHardState(HardState),
    /// Durably remove every log entry with index `>= from` (a conflicting
    /// suffix, §5.3). Never touches committed entries.
    TruncateLog {
        /// First index to remove.
        from: LogIndex,
    },
    /// Durably append these entries; the first follows the last entry
    /// persisted so far (after any preceding truncation).
    AppendLog(Vec<Entry>),
    /// Keep a chunk of the snapshot `meta` that the leader is sending:
    /// `data` goes at `offset` of it. Offset 0 starts the snapshot afresh
    /// (discarding any partial one); later chunks come in order, each
    /// starting where the previous ended. No sync is needed: a chunk lost
    /// in a crash is sent again.
    WriteSnapshotChunk {
        /// The snapshot the chunk belongs to.
        meta: SnapshotMeta,
        /// Where `data` starts.
        offset: u64,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// Every chunk of the snapshot `meta` has been handed out with
    /// `WriteSnapshotChunk`: check it (a leader's disk or a peer may be
    /// broken), make it this member's snapshot, durably, and apply §7's
    /// rule to the stored log: if it holds the entry `(meta.last_index,
    /// meta.last_term)`, the entries after it stay, otherwise the whole
    /// log goes. Then call [`crate::Node::handle_snapshot_installed`] with
    /// the outcome (until then the node drops its inputs); if it
    /// was installed, load the state machine from it before carrying out
    /// any later [`Action::Apply`]. ([`crate::driver::Driver`] does all of
    /// this and hands the action back once the snapshot is in place.)
    InstallSnapshot {
        /// The snapshot received.
        meta: SnapshotMeta,
    },
    /// Entries up to and including `through` are covered by the snapshot
    /// the driver reported with [`crate::Node::handle_snapshot_saved`] and
    /// may be deleted from storage (whenever convenient; no sync needed).
    CompactLog {
        /// Last index that may go.
        through: LogIndex,
    },
    /// Send this message to `message.to`.
    Send(Message),
    /// Fill `message`'s InstallSnapshot chunk with `len` bytes at its
    /// `offset` of this member's snapshot `meta` (the one last reported
    /// with [`crate::Node::handle_snapshot_saved`]), then send it. If the
    /// snapshot was replaced in between, drop the message: the node starts
    /// the transfer again with the new one.
    SendSnapshotChunk {
        /// The message, whose `data` is empty.
        message: Message,
        /// How many bytes to read into it.
        len: usize,
    },
    /// Apply this committed entry. Entries come in index order with no gaps;
    /// after a restart they start again from the first index in the log.
    Apply(Entry),
    /// The read registered with this id may be served now.
    ReadReady {
        /// The caller's id for the read.
        id: u64,
    },
    /// The read registered with this id cannot be served by this node
    /// (leadership was lost before it was confirmed).
    ReadFailed {
        /// The caller's id for the read.
        id: u64,
        /// Where to retry, as far as this node knows.
        error: ReadError,
    },
    /// Something worth logging or counting happened.
    Event(Event),
}

/// A node's role (§5.1, plus the pre-candidate of §9.6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks whether it could win an election, without raising the term.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Leads the current term.
    Leader,
}

impl Role {
    /// Lower-case name, as in `INFO raft`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "precandidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Informational events, for logs and metrics. Nothing in the protocol
/// depends on them; a driver may still act on them (raft-node answers its
/// pending writes with an error when it stops leading, while the applied
/// entry at each index stays the authority on which write took effect).
/// [`Event::PeerFault`] is the one a driver SHOULD act on: by closing the
/// link to the peer that sent an impossible message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// The node started a pre-vote or an election.
    ElectionStarted {
        /// The term campaigned in (for a pre-vote: the term it would use).
        term: Term,
        /// Whether this is a pre-vote round.
        pre_vote: bool,
        /// Why.
        reason: ElectionReason,
    },
    /// The node's role changed.
    RoleChanged {
        /// The new role.
        role: Role,
        /// The term it holds that role in.
        term: Term,
        /// Why.
        reason: RoleChangeReason,
    },
    /// The leader this node knows of changed (`None`: no leader known).
    LeaderChanged {
        /// The new leader.
        leader: Option<NodeId>,
        /// The term.
        term: Term,
    },
    /// A peer sent a message that no correct member sends (see
    /// [`PeerFault`]). The node dropped it whole: its term, vote, log,
    /// commit index and role are as if it never arrived, and nothing was
    /// sent in answer.
    ///
    /// The driver SHOULD log it, rate-limited (a broken or hostile peer
    /// can send one per frame), and SHOULD close that peer's link: the
    /// peer is broken, misconfigured or an impostor, and the reconnect
    /// backoff throttles it. The protocol needs neither to stay safe.
    PeerFault {
        /// Who sent it.
        peer: NodeId,
        /// What was wrong with it.
        fault: PeerFault,
    },
    /// The configuration in force changed: an entry holding a new one was
    /// appended (it takes effect then, committed or not, thesis §4.1), a
    /// truncation undid one, or a snapshot brought one. The driver SHOULD
    /// connect to the members it names and drop links to the others.
    MembershipChanged {
        /// Index of the entry that holds it (or of the snapshot).
        index: LogIndex,
        /// The configuration now in force (boxed: events stay small).
        membership: Box<Membership>,
    },
    /// A leadership transfer this leader started was given up: the target
    /// did not catch up and win within an election timeout. Proposals are
    /// accepted again.
    TransferAborted {
        /// The member that was to lead.
        target: NodeId,
    },
}

/// What made a peer's message impossible. Each one contradicts either the
/// wire contract or a fact this node knows about its own term, log or
/// messages, so it can only come from a broken, misconfigured or hostile
/// sender, never from a slow, lossy or reordering network. `Display` is one
/// line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerFault {
    /// The message's term exceeds [`Term::MAX`]. Adopting it could
    /// exhaust the terms; the codec refuses it too, this is for drivers
    /// that build messages some other way.
    TermAboveMax {
        /// The term it carried.
        term: Term,
    },
    /// The message breaks a rule [`crate::codec::decode`] enforces (named
    /// by `rule`): it reached the node without going through the codec.
    Malformed {
        /// The rule broken, as the codec words it.
        rule: &'static str,
    },
    /// An AppendEntries in a term that has another leader: this node
    /// leads it, or follows another member in it. A term has at most one
    /// leader (§5.2, Election Safety).
    SecondLeader {
        /// The term of the AppendEntries.
        term: Term,
        /// The leader of that term as this node knows it (maybe itself).
        leader: NodeId,
    },
    /// An AppendEntries, from a leader of this node's term or a later one,
    /// that contradicts a committed entry (its `prev_log_term`, or an entry
    /// it would truncate). Every such leader holds all committed entries
    /// (§5.4.1, Leader Completeness), so a correct one never does this.
    ConflictsWithCommitted {
        /// The index where the two logs differ.
        index: LogIndex,
        /// The term the peer claims for that index.
        term: Term,
        /// The term of this node's committed entry there.
        committed_term: Term,
        /// This node's commit index.
        commit_index: LogIndex,
    },
    /// A success answer reaching beyond anything this leader sent that
    /// peer in this term.
    MatchNeverSent {
        /// The `match_index` it claimed.
        match_index: LogIndex,
        /// The highest index this leader sent it.
        sent_index: LogIndex,
    },
    /// A rejection of a `prev_log_index` this leader never sent that peer
    /// in this term.
    RejectNeverSent {
        /// The `rejected_index` it named.
        rejected_index: LogIndex,
        /// The highest index this leader sent it.
        sent_index: LogIndex,
    },
    /// An InstallSnapshotResponse expecting an offset beyond what this
    /// leader sent that peer of that snapshot.
    ChunkNeverSent {
        /// The `next_offset` it claimed.
        next_offset: u64,
        /// How far this leader sent.
        sent: u64,
    },
    /// A snapshot whose chunks, put together, the driver found invalid
    /// (length, checksum, header): the leader's copy or its sender is
    /// broken. Nothing was installed.
    BadSnapshot {
        /// The snapshot's claimed last index.
        last_index: LogIndex,
    },
    /// An answer echoing a heartbeat round this leader has not started.
    RoundNeverSent {
        /// The round it echoed.
        round: u64,
        /// This leader's current round.
        current_round: u64,
    },
}

impl fmt::Display for PeerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFault::TermAboveMax { term } => {
                write!(f, "term {term} above the maximum {}", Term::MAX)
            }
            PeerFault::Malformed { rule } => write!(f, "malformed message: {rule}"),
            PeerFault::SecondLeader { term, leader } => write!(
                f,
                "AppendEntries in term {term}, whose leader is {leader} (two leaders in a term)"
            ),
            PeerFault::ConflictsWithCommitted {
                index,
                term,
                committed_term,
                commit_index,
            } => write!(
                f,
                "AppendEntries claims term {term} at index {index}, \
                 where the committed entry has term {committed_term} (commit index {commit_index})"
            ),
            PeerFault::MatchNeverSent {
                match_index,
                sent_index,
            } => write!(
                f,
                "AppendEntriesResponse matches up to {match_index}, beyond the {sent_index} sent to it"
            ),
            PeerFault::RejectNeverSent {
                rejected_index,
                sent_index,
            } => write!(
                f,
                "AppendEntriesResponse rejects prev_log_index {rejected_index}, \
                 beyond the {sent_index} sent to it"
            ),
            PeerFault::ChunkNeverSent { next_offset, sent } => write!(
                f,
                "InstallSnapshotResponse expects offset {next_offset}, beyond the {sent} bytes sent to it"
            ),
            PeerFault::BadSnapshot { last_index } => write!(
                f,
                "the snapshot it sent (last index {last_index}) is invalid; not installed"
            ),
            PeerFault::RoundNeverSent {
                round,
                current_round,
            } => write!(
                f,
                "AppendEntriesResponse echoes round {round}, not started yet (current {current_round})"
            ),
        }
    }
}

/// Why an election (or pre-vote) started.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ElectionReason {
    /// No AppendEntries from a leader within the election timeout.
    ElectionTimeout {
        /// The leader last followed, if any.
        last_leader: Option<NodeId>,
        /// Time since that leader was last heard from, if ever.
        silent_for: Option<Duration>,
    },
    /// The driver reported the link to the leader lost.
    LeaderLinkLost {
        /// The leader whose link was lost.
        leader: NodeId,
    },
    /// A majority granted the pre-vote; this is the real election.
    PreVoteWon,
    /// The leader handed leadership over (TimeoutNow, thesis §3.10).
    LeadershipTransfer {
        /// The leader that asked.
        from: NodeId,
    },
}

impl fmt::Display for ElectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElectionReason::ElectionTimeout {
                last_leader: Some(l),
                silent_for: Some(d),
            } => write!(
                f,
                "election timeout: no heartbeat from leader {l} for {} ms",
                d.as_millis()
            ),
            ElectionReason::ElectionTimeout { .. } => {
                write!(f, "election timeout: no leader known")
            }
            ElectionReason::LeaderLinkLost { leader } => {
                write!(f, "leader {leader} link lost")
            }
            ElectionReason::PreVoteWon => write!(f, "pre-vote won"),
            ElectionReason::LeadershipTransfer { from } => {
                write!(f, "leader {from} transfers leadership here")
            }
        }
    }
}

/// Why the role changed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RoleChangeReason {
    /// A message carried a higher term (§5.1).
    HigherTerm {
        /// Who sent it.
        from: NodeId,
    },
    /// A leader of this term was heard from.
    LeaderHeard {
        /// The leader.
        leader: NodeId,
    },
    /// A majority voted for this node.
    WonElection,
    /// Pre-vote or election started.
    Campaign,
    /// CheckQuorum: no majority heard from within an election timeout.
    LostQuorum,
    /// A pre-vote round was lost; waiting again as a follower.
    PreVoteLost,
    /// An election was lost (a majority refused); waiting again.
    ElectionLost,
    /// This node's removal is committed: a leader that removed itself
    /// steps down (thesis §4.2.2), and a follower reports it once
    /// ([`crate::Node::is_removed`]); it never campaigns again unless it
    /// is added back.
    RemovedFromConfiguration,
    /// Enough voters claimed a term more than [`Term::MAX_JUMP`] beyond
    /// this node's that it moved there (it fell far behind, or a forged
    /// jump reached a majority one bounded step at a time).
    TermVouched {
        /// The term moved to.
        term: Term,
    },
    /// A voter claimed a term more than [`Term::MAX_JUMP`] beyond this
    /// node's, no quorum vouched for it, and this node had heard no leader
    /// for an election timeout: it moved by the bound (to `term`), toward
    /// the claim.
    TermStepped {
        /// The term moved to.
        term: Term,
    },
}

impl fmt::Display for RoleChangeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleChangeReason::HigherTerm { from } => write!(f, "higher term from {from}"),
            RoleChangeReason::LeaderHeard { leader } => write!(f, "heard from leader {leader}"),
            RoleChangeReason::WonElection => write!(f, "won election"),
            RoleChangeReason::Campaign => write!(f, "campaigning"),
            RoleChangeReason::LostQuorum => {
                write!(f, "check quorum: no majority heard within election timeout")
            }
            RoleChangeReason::PreVoteLost => write!(f, "pre-vote rejected by a majority"),
            RoleChangeReason::ElectionLost => write!(f, "election rejected by a majority"),
            RoleChangeReason::RemovedFromConfiguration => {
                write!(f, "removed from the cluster by a committed configuration")
            }
            RoleChangeReason::TermVouched { term } => {
                write!(
                    f,
                    "voters vouched for term {term}, beyond the one-message bound"
                )
            }
            RoleChangeReason::TermStepped { term } => {
                write!(
                    f,
                    "no leader heard, and a claim beyond the one-message bound: stepped to term {term}"
                )
            }
        }
    }
}

/// Why a proposal was not accepted. All are ordinary outcomes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProposeError {
    /// Only the leader accepts proposals; this is who it is, if known.
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Too many proposals are waiting to commit; retry later.
    Busy,
    /// The command is longer than [`crate::MAX_ENTRY_LEN`]; no member
    /// would accept it, so it is refused before anything is appended.
    /// Retrying does not help.
    TooLarge {
        /// The command's length in bytes.
        len: usize,
        /// [`crate::MAX_ENTRY_LEN`].
        max: usize,
    },
    /// A leadership transfer is under way: proposals wait for the new
    /// leader (or for the transfer to be given up, within an election
    /// timeout). Retry shortly, on the leader [`crate::Node::leader`]
    /// names then.
    TransferInProgress {
        /// The member that is to lead.
        target: NodeId,
    },
    /// A configuration change was refused (only
    /// [`crate::Node::propose_membership`]).
    Membership(MembershipError),
}

/// Why a configuration change was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MembershipError {
    /// A previous change is not committed yet, or this leader has not yet
    /// committed an entry of its own term (the fix to single-server
    /// changes: a new leader must not change the configuration before
    /// that). Retry shortly.
    ChangeInProgress,
    /// The member to add is already a member.
    AlreadyMember(NodeId),
    /// The member to promote or remove is not a member (or, to promote,
    /// not a learner).
    UnknownMember(NodeId),
    /// The learner to promote has not caught up with the commit index;
    /// retry once it has.
    LearnerBehind {
        /// The learner.
        id: NodeId,
        /// How far its log is known to match the leader's.
        match_index: LogIndex,
        /// The leader's commit index it has to reach.
        commit_index: LogIndex,
    },
    /// Removing the only voter would leave nobody to decide anything.
    LastVoter,
    /// The configuration would exceed [`crate::MAX_MEMBERS`], the context
    /// [`crate::MAX_MEMBERSHIP_CONTEXT`], or name node 0.
    Invalid(&'static str),
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::ChangeInProgress => {
                write!(f, "a configuration change is in progress; retry shortly")
            }
            MembershipError::AlreadyMember(id) => write!(f, "node {id} is already a member"),
            MembershipError::UnknownMember(id) => write!(f, "node {id} is not such a member"),
            MembershipError::LearnerBehind {
                id,
                match_index,
                commit_index,
            } => write!(
                f,
                "learner {id} has caught up to {match_index} of {commit_index}; retry when it has"
            ),
            MembershipError::LastVoter => write!(f, "cannot remove the last voter"),
            MembershipError::Invalid(rule) => write!(f, "invalid configuration: {rule}"),
        }
    }
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => write!(f, "not leader; leader is {l}"),
            ProposeError::NotLeader { leader: None } => write!(f, "not leader; no leader known"),
            ProposeError::Busy => write!(f, "too many uncommitted proposals"),
            ProposeError::TooLarge { len, max } => {
                write!(f, "command of {len} bytes exceeds the maximum of {max}")
            }
            ProposeError::TransferInProgress { target } => {
                write!(f, "leadership is being transferred to {target}")
            }
            ProposeError::Membership(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a read could not be served here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadError {
    /// Only the leader serves linearizable reads; this is who it is, if known.
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Too many reads pending; retry later.
    Busy,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotLeader { leader: Some(l) } => write!(f, "not leader; leader is {l}"),
            ReadError::NotLeader { leader: None } => write!(f, "not leader; no leader known"),
            ReadError::Busy => write!(f, "too many pending reads"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Why a leadership transfer could not start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransferError {
    /// Only the leader transfers leadership.
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the configuration in force.
    NotAVoter(NodeId),
    /// No other voter to hand leadership to.
    NoTarget,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotLeader { leader: Some(l) } => write!(f, "not leader; leader is {l}"),
            TransferError::NotLeader { leader: None } => write!(f, "not leader; no leader known"),
            TransferError::NotAVoter(id) => write!(f, "node {id} is not a voter"),
            TransferError::NoTarget => write!(f, "no other voter to transfer leadership to"),
        }
    }
}

impl std::error::Error for TransferError {}
