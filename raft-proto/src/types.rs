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
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0.checked_add(1).expect("term overflow"))
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

/// What a log entry carries.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EntryPayload {
    /// Appended by a new leader at the start of its term so that entries of
    /// earlier terms can be committed (§5.4.2, §8). Applies to nothing.
    Noop,
    /// An opaque command for the state machine, as proposed.
    Command(Bytes),
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
