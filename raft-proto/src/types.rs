//! Newtypes for the quantities of the Raft paper, and the protocol's notion of time.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use bytes::Bytes;

/// A member's identity. `0` is never a valid id: on the wire and in `INFO`
/// it stands for "none".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(pub u64);

/// A Raft term (§5.1). Terms only grow on a node, and a message from an older
/// term is stale.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Term(pub u64);

/// A position in the replicated log. Index 0 is the empty prefix before the
/// first entry; the first entry has index 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct LogIndex(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Term {
    /// The highest term a node adopts or campaigns in: 2^62. A hard
    /// ceiling for arithmetic, not the defence against forged terms (that
    /// is [`Term::MAX_JUMP`]).
    ///
    /// Terms come from the network, and a term of `u64::MAX` once taken
    /// from one forged frame made [`Term::next`] overflow forever after. So
    /// the codec refuses every term field above this bound, the node drops
    /// (as a [`crate::PeerFault`]) any message whose term exceeds it, and a
    /// node at this term no longer campaigns, which is all [`Term::next`]
    /// is used for. With the bound on each message's jump, a node gets here
    /// only through some 2^30 forged messages of the largest jump each.
    ///
    /// Why 2^62: an honest cluster cannot get near it. Every term is one
    /// election attempt; even a cluster campaigning once per microsecond
    /// (far faster than any sane configuration) needs about 146,000 years
    /// to climb that far. The headroom above it means `term + 1` (and
    /// `term + Term::MAX_JUMP`) never overflows anywhere, and it still
    /// fits an `i64` for the tools and languages that read terms as
    /// signed integers.
    pub const MAX: Term = Term(1 << 62);

    /// How far one message may move a node's term: 2^32.
    ///
    /// A fixed ceiling alone does not protect liveness: a member holding
    /// the cluster secret (compromised, or with a memory fault) that sends
    /// one frame of term [`Term::MAX`] would have every member adopt it,
    /// and then nobody could campaign past it, ever. So a message whose
    /// term exceeds the node's own by more than this is not believed on
    /// its sender's word alone: it is dropped, and its term kept as that
    /// sender's *claim* (the highest per voter of the configuration).
    /// Then (see the `node` module):
    ///
    /// - the node moves to the highest term that enough voters other than
    ///   itself claim: at least two, and with this node, if it votes, a
    ///   majority of the voters. One faulty member never moves anyone
    ///   past this bound on its own this way;
    /// - where no such quorum can form (three voters with one down, two
    ///   voters, a learner, a member that joins), a node that has heard
    ///   no leader for a minimum election timeout moves by this bound,
    ///   once per minimum election timeout at most. A node with a live
    ///   leader, or that leads, is not moved by one voter's claim at all.
    ///
    /// So one message moves a node by this bound at most, and only a node
    /// that has no leader anyway; a member that fell behind (it was away
    /// while a forged jump and then elections took the others past the
    /// bound) catches up, from the claims in the leader's messages and in
    /// the refusals of its own pre-votes.
    ///
    /// Why 2^32: an honest cluster never runs this far ahead of a member
    /// on its own. Every term is one election attempt, and the highest
    /// term in a cluster rises at most once per minimum election timeout
    /// (only a member that has sat in the highest term for a whole
    /// timeout starts the next one): 2^32 elections take 40 years at the
    /// default 300 ms, and still 49 days at an absurd 1 ms. Leadership
    /// transfers each cost a term too, and an operator does not order four
    /// billion of them. Meanwhile [`Term::MAX`] leaves room for 2^30 such
    /// jumps: a member that forges message after message (a persistent
    /// malicious insider, outside the threat model: it can refuse every
    /// vote anyway) moves a leaderless node by the bound once per election
    /// timeout at most, a decade at 300 ms before anyone nears the ceiling.
    pub const MAX_JUMP: Term = Term(1 << 32);

    /// This term plus [`Term::MAX_JUMP`]: the highest term one message may
    /// move a node at this term to. Never overflows: terms stay at or
    /// below [`Term::MAX`].
    pub fn plus_max_jump(self) -> Term {
        Term(
            self.0
                .checked_add(Term::MAX_JUMP.0)
                .expect("term invariant: terms stay at or below Term::MAX"),
        )
    }

    /// The term after this one.
    ///
    /// # Panics
    ///
    /// At [`Term::MAX`] or above: the node never asks for a term beyond the
    /// bound (it does not campaign there), so this is a bug in the caller.
    pub fn next(self) -> Term {
        assert!(
            self < Term::MAX,
            "term invariant: no term after Term::MAX ({self})"
        );
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.checked_add(1).expect("log index overflow"))
    }

    /// The index before this one; `LogIndex(0)` has none.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.checked_sub(1).expect("log index underflow"))
    }

    /// `self + n`.
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0.checked_add(n).expect("log index overflow"))
    }
}

/// A point in time as the driver sees it: nanoseconds since an epoch the
/// driver chooses (its start, or the simulator's virtual zero). The crate only
/// compares and offsets times; it never reads a clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Time(u64);

impl Time {
    /// The driver's epoch.
    pub const ZERO: Time = Time(0);

    /// A time `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// A time `d` after the epoch (saturating at ~584 years).
    pub fn from_duration(d: Duration) -> Time {
        Time(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the epoch.
    pub fn since_epoch(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Time {
    /// Seconds with millisecond precision, e.g. `12.345s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:03}s",
            self.0 / 1_000_000_000,
            (self.0 / 1_000_000) % 1000
        )
    }
}

/// The most command bytes one log entry may carry: 4 MiB.
///
/// One limit shared by everything that handles entries, so that none can
/// accept what another refuses: [`crate::Node::propose`] answers
/// [`crate::ProposeError::TooLarge`] above it, [`crate::codec::decode`]
/// refuses an entry above it, and the server's storage asserts it. A frame
/// ([`crate::codec::MAX_FRAME_LEN`]) holds at least one such entry with all
/// its headers; the codec checks that at compile time.
pub const MAX_ENTRY_LEN: usize = 4 << 20;

/// What a log entry carries.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EntryPayload {
    /// Appended by a new leader at the start of its term so that entries of
    /// earlier terms can be committed (§5.4.2, §8). Applies to nothing.
    Noop,
    /// An opaque command for the state machine, as proposed.
    Command(Bytes),
    /// A new cluster configuration (thesis chapter 4). It takes effect on
    /// each member as soon as it is in that member's log, committed or not,
    /// and is undone if the entry is truncated. The first leader of a new
    /// cluster writes the bootstrap configuration as entry 1, so the
    /// configuration is in the log (or a snapshot) from then on.
    /// Boxed: a command is the common case, and an unboxed configuration
    /// (two vectors and the context) made every entry twice as large,
    /// which halved the follower's throughput in the protocol benchmark.
    Configuration(Box<Membership>),
}

/// Most members (voters and learners together) a configuration may have.
/// Bounds the work per configuration change and the size of its entry.
pub const MAX_MEMBERS: usize = 64;

/// Most bytes of driver context a configuration may carry.
pub const MAX_MEMBERSHIP_CONTEXT: usize = 64 << 10;

/// A cluster configuration: who votes, who only receives the log, and the
/// driver's own description of them (raft-node keeps the members'
/// addresses there), which the node stores and replicates but never reads.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Membership {
    /// Voting members, sorted, without duplicates. Elections and commits
    /// need a majority of them.
    pub voters: Vec<NodeId>,
    /// Non-voting members (learners), sorted, without duplicates, none of
    /// them a voter. They receive the log and snapshots and count for
    /// nothing, so they can catch up before a promotion.
    pub learners: Vec<NodeId>,
    /// Opaque to the node; replaced as a whole by each change.
    pub context: Bytes,
}

impl Membership {
    /// Whether `id` votes in this configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` is a learner in this configuration.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// Whether `id` is a member at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The rule a well-formed configuration breaks, if any: ids non-zero,
    /// each list sorted without duplicates, disjoint, at least one voter,
    /// at most [`MAX_MEMBERS`] members and [`MAX_MEMBERSHIP_CONTEXT`]
    /// bytes of context.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.voters.is_empty() {
            return Err("a configuration has no voter");
        }
        if self.voters.len() + self.learners.len() > MAX_MEMBERS {
            return Err("a configuration has too many members");
        }
        if self.context.len() > MAX_MEMBERSHIP_CONTEXT {
            return Err("a configuration's context is too long");
        }
        for list in [&self.voters, &self.learners] {
            if list.iter().any(|id| id.0 == 0) {
                return Err("a configuration names node 0");
            }
            if list.windows(2).any(|w| w[0] >= w[1]) {
                return Err("a configuration's members are not sorted and unique");
            }
        }
        if self.learners.iter().any(|&l| self.is_voter(l)) {
            return Err("a configuration has a learner that is also a voter");
        }
        Ok(())
    }
}

/// A single-server change to the configuration (thesis §4.1): at most one
/// voter comes or goes per change, so any majority of the old voters and
/// any majority of the new ones overlap.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MembershipChange {
    /// A new member that receives the log but does not vote.
    AddLearner(NodeId),
    /// A new voter, directly (it may delay commits until it catches up:
    /// adding a learner and promoting it is kinder).
    AddVoter(NodeId),
    /// A learner becomes a voter. Refused until it has caught up.
    Promote(NodeId),
    /// A voter or learner leaves. A leader that removes itself steps down
    /// once the change is committed.
    Remove(NodeId),
}

/// One entry of the replicated log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What it carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes of payload, for batching limits.
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(c) => c.len(),
            // As encoded (two counts, the ids, the context), so that the
            // codec's frame bounds hold for configurations too.
            EntryPayload::Configuration(m) => {
                2 + 8 * (m.voters.len() + m.learners.len()) + m.context.len()
            }
        }
    }

    /// The entry's identity, as returned by `propose`.
    pub fn id(&self) -> EntryId {
        EntryId {
            term: self.term,
            index: self.index,
        }
    }
}

/// Identifies a proposed entry. The proposal took effect if and only if the
/// entry applied at `index` has this `term`; an entry of another term at that
/// index means the proposal was lost to a leader change (§5.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EntryId {
    /// Term of the leader that accepted the proposal.
    pub term: Term,
    /// Where it was appended.
    pub index: LogIndex,
}

/// The state a node must find again after a restart (Figure 2 "persistent
/// state on all servers", apart from the log).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct HardState {
    /// Latest term this node has seen.
    pub current_term: Term,
    /// The candidate that received this node's vote in `current_term`, if any.
    pub voted_for: Option<NodeId>,
}

/// What identifies a snapshot (§7): the last entry it covers, the
/// configuration in force at that entry, and the size of its serialised
/// form, which travels in chunks to members that need it. The bytes
/// themselves belong to the driver (its state machine and its disk); the
/// node only ever handles their offsets.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers (at least 1).
    pub last_index: LogIndex,
    /// Term of that entry (at least 1).
    pub last_term: Term,
    /// Length in bytes of the serialised snapshot (at least 1).
    pub len: u64,
    /// The configuration after applying `last_index` (the latest
    /// configuration entry at or before it): a member that starts from the
    /// snapshot knows its cluster without the log. Boxed so that messages
    /// and actions that carry a snapshot's metadata stay small.
    pub membership: Box<Membership>,
}
