//! Node configuration and its validation.

use std::fmt;
use std::time::Duration;

use crate::codec;
use crate::types::{LogIndex, NodeId, Term, MAX_ENTRY_LEN};

/// Everything a [`crate::Node`] needs to know that is not replicated state.
///
/// Defaults follow the interface contract: 50 ms heartbeats, elections after
/// a silence randomized in [300, 600) ms, PreVote and CheckQuorum on.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member.
    pub id: NodeId,
    /// The bootstrap configuration: every voting member of a new cluster,
    /// this one included. It is used only while neither the log nor a
    /// snapshot holds a configuration (the first leader writes it as entry
    /// 1). Empty for a member that joins an existing cluster: it does not
    /// vote or campaign until the leader's log makes it a member.
    pub voters: Vec<NodeId>,
    /// The driver's context of the bootstrap configuration
    /// ([`crate::Membership::context`]); raft-node keeps the members'
    /// addresses there.
    pub bootstrap_context: bytes::Bytes,
    /// The leader sends an AppendEntries (empty if nothing is new) to every
    /// follower this often.
    pub heartbeat_interval: Duration,
    /// The election timeout is drawn uniformly from `[min, max)` each time a
    /// follower's timer is reset (§5.2).
    pub election_timeout_min: Duration,
    /// Upper (exclusive) bound of the election timeout.
    pub election_timeout_max: Duration,
    /// Seed of the node's PRNG: election timeouts and failover jitter are
    /// the only random choices. The server seeds it from the OS and logs it;
    /// the simulator derives it from the run's seed.
    pub seed: u64,
    /// Entries per AppendEntries message at most.
    pub max_entries_per_append: usize,
    /// Payload bytes per AppendEntries message at most (at least one entry
    /// is always sent, so a single large entry still makes progress).
    pub max_bytes_per_append: usize,
    /// AppendEntries messages in flight to one follower at most, once the
    /// leader knows where the follower's log matches (pipelining).
    pub max_inflight_appends: usize,
    /// Proposed but not yet committed entries at most; past it `propose`
    /// answers [`crate::ProposeError::Busy`].
    pub max_uncommitted_entries: u64,
    /// Pending linearizable reads at most.
    pub max_pending_reads: usize,
    /// Run a PreVote round (§9.6) before a real election, so that a member
    /// that was cut off does not raise the term when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority for an election timeout
    /// steps down (checked at the first heartbeat after each minimum
    /// election timeout, so that the check costs no wake-up of its own),
    /// and followers that heard from a leader within the minimum election
    /// timeout refuse votes (§6.2, "leader stickiness").
    pub check_quorum: bool,
    /// When the driver reports the link to the leader lost, start a
    /// pre-vote after a short delay (the survivors take turns, half a
    /// heartbeat interval apart) rather than waiting for the election timeout.
    pub fast_failover: bool,
    /// When a snapshot is saved, the log keeps this many entries before the
    /// snapshot's last index, so that a follower that lags a little catches
    /// up from the log instead of receiving the whole snapshot.
    pub compaction_trailing_entries: u64,
    /// Bytes of snapshot per InstallSnapshot message at most. With
    /// `max_inflight_appends` this bounds what is in flight to one follower
    /// during a snapshot transfer.
    pub snapshot_chunk_bytes: usize,
}

impl Config {
    /// A configuration with the default timings and limits.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            bootstrap_context: bytes::Bytes::new(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            seed: 0,
            max_entries_per_append: 256,
            max_bytes_per_append: 512 << 10,
            max_inflight_appends: 32,
            max_uncommitted_entries: 8192,
            max_pending_reads: 8192,
            pre_vote: true,
            check_quorum: true,
            fast_failover: true,
            compaction_trailing_entries: 5000,
            snapshot_chunk_bytes: 1 << 20,
        }
    }

    /// Checks the configuration; every `Node` constructor calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.0 == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.voters.iter().any(|v| v.0 == 0) {
            return Err(ConfigError::ZeroId);
        }
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter(self.id));
        }
        let mut sorted = self.voters.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.voters.len() {
            return Err(ConfigError::DuplicateVoter);
        }
        if sorted.len() > crate::types::MAX_MEMBERS
            || self.bootstrap_context.len() > crate::types::MAX_MEMBERSHIP_CONTEXT
        {
            return Err(ConfigError::TooManyMembers);
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(ConfigError::EmptyElectionRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        // A follower must see several heartbeats per election timeout, or one
        // delayed heartbeat starts an election and the cluster flaps.
        if self.election_timeout_min < self.heartbeat_interval * MIN_HEARTBEATS_PER_TIMEOUT {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                election_min: self.election_timeout_min,
            });
        }
        if self.max_entries_per_append == 0
            || self.max_bytes_per_append == 0
            || self.max_inflight_appends == 0
            || self.max_uncommitted_entries == 0
            || self.max_pending_reads == 0
            || self.snapshot_chunk_bytes == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        // One AppendEntries must fit in a frame, or encoding it panics. It
        // carries at most max_entries_per_append entries and at most
        // max_bytes_per_append of payload, except that one entry always
        // goes, whatever its size (at most MAX_ENTRY_LEN).
        let largest_append = self
            .max_entries_per_append
            .saturating_mul(codec::ENTRY_OVERHEAD)
            .saturating_add(self.max_bytes_per_append.max(MAX_ENTRY_LEN))
            .saturating_add(codec::APPEND_ENTRIES_HEADER_LEN);
        if largest_append > codec::MAX_FRAME_LEN {
            return Err(ConfigError::AppendTooLarge {
                max_entries: self.max_entries_per_append,
                max_bytes: self.max_bytes_per_append,
            });
        }
        if self.snapshot_chunk_bytes > codec::MAX_SNAPSHOT_CHUNK {
            return Err(ConfigError::SnapshotChunkTooLarge {
                chunk_bytes: self.snapshot_chunk_bytes,
                max: codec::MAX_SNAPSHOT_CHUNK,
            });
        }
        Ok(())
    }
}

/// The minimum election timeout must be at least this many heartbeat
/// intervals.
pub const MIN_HEARTBEATS_PER_TIMEOUT: u32 = 3;

/// Why a [`Config`] was rejected, or why [`crate::Node::new`] refused the
/// persisted state it was given.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ConfigError {
    /// Id 0 means "none" and cannot name a member.
    ZeroId,
    /// The node is not in its own (non-empty) bootstrap voter list.
    NotAVoter(NodeId),
    /// A voter appears twice.
    DuplicateVoter,
    /// More than [`crate::MAX_MEMBERS`] voters, or a bootstrap context
    /// longer than [`crate::MAX_MEMBERSHIP_CONTEXT`].
    TooManyMembers,
    /// A zero heartbeat interval.
    ZeroHeartbeat,
    /// `election_timeout_min >= election_timeout_max`.
    EmptyElectionRange {
        /// Configured minimum.
        min: Duration,
        /// Configured maximum.
        max: Duration,
    },
    /// The heartbeat interval is not well below the election timeout.
    HeartbeatTooSlow {
        /// Configured heartbeat interval.
        heartbeat: Duration,
        /// Configured minimum election timeout.
        election_min: Duration,
    },
    /// A batching or queue limit of zero.
    ZeroLimit,
    /// `max_entries_per_append` entries with `max_bytes_per_append` bytes
    /// of payload (or one entry of [`crate::MAX_ENTRY_LEN`]) may not fit in
    /// one frame ([`crate::codec::MAX_FRAME_LEN`]).
    AppendTooLarge {
        /// Configured `max_entries_per_append`.
        max_entries: usize,
        /// Configured `max_bytes_per_append`.
        max_bytes: usize,
    },
    /// The persisted current term exceeds [`Term::MAX`] (written by a
    /// version without the bound, which adopted a peer's forged term). No
    /// message with that term can be sent, so the node refuses to start.
    PersistedTermAboveMax {
        /// The persisted term.
        term: Term,
    },
    /// [`crate::PersistentState::applied`] is beyond the persisted log: the
    /// state machine is ahead of the log it was built from.
    AppliedBeyondLog {
        /// The applied index given.
        applied: LogIndex,
        /// The last index of the persisted log.
        last_index: LogIndex,
    },
    /// `snapshot_chunk_bytes` above what one InstallSnapshot frame holds.
    SnapshotChunkTooLarge {
        /// Configured `snapshot_chunk_bytes`.
        chunk_bytes: usize,
        /// [`crate::codec::MAX_SNAPSHOT_CHUNK`].
        max: usize,
    },
    /// [`crate::PersistentState::entries`] do not start right after the
    /// snapshot's last index.
    LogDoesNotFollowSnapshot {
        /// The snapshot's last index (0 without one).
        snapshot_index: LogIndex,
        /// The first persisted entry's index.
        first_index: LogIndex,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroId => write!(f, "node id 0 is reserved for \"none\""),
            ConfigError::NotAVoter(id) => write!(f, "node {id} is not in the voter list"),
            ConfigError::DuplicateVoter => write!(f, "a voter is listed twice"),
            ConfigError::TooManyMembers => write!(
                f,
                "more than {} voters, or a bootstrap context over {} bytes",
                crate::types::MAX_MEMBERS,
                crate::types::MAX_MEMBERSHIP_CONTEXT
            ),
            ConfigError::ZeroHeartbeat => write!(f, "heartbeat interval must be positive"),
            ConfigError::EmptyElectionRange { min, max } => write!(
                f,
                "election timeout range [{} ms, {} ms) is empty: min must be below max",
                min.as_millis(),
                max.as_millis()
            ),
            ConfigError::HeartbeatTooSlow {
                heartbeat,
                election_min,
            } => write!(
                f,
                "heartbeat interval {} ms is too close to the minimum election timeout {} ms: \
                 it must be at most 1/{} of it, or one late heartbeat starts an election",
                heartbeat.as_millis(),
                election_min.as_millis(),
                MIN_HEARTBEATS_PER_TIMEOUT
            ),
            ConfigError::ZeroLimit => write!(f, "batching and queue limits must be positive"),
            ConfigError::AppendTooLarge {
                max_entries,
                max_bytes,
            } => write!(
                f,
                "an AppendEntries of {max_entries} entries and {} bytes of payload \
                 may exceed the frame limit of {} bytes",
                (*max_bytes).max(MAX_ENTRY_LEN),
                codec::MAX_FRAME_LEN
            ),
            ConfigError::PersistedTermAboveMax { term } => write!(
                f,
                "persisted term {term} exceeds the maximum term {}",
                Term::MAX
            ),
            ConfigError::AppliedBeyondLog {
                applied,
                last_index,
            } => write!(
                f,
                "the state machine has applied up to {applied}, beyond the log's last index {last_index}"
            ),
            ConfigError::SnapshotChunkTooLarge { chunk_bytes, max } => write!(
                f,
                "snapshot chunks of {chunk_bytes} bytes exceed the maximum of {max} bytes"
            ),
            ConfigError::LogDoesNotFollowSnapshot {
                snapshot_index,
                first_index,
            } => write!(
                f,
                "the persisted log starts at {first_index}, not right after the snapshot's last index {snapshot_index}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_must_fit_in_a_frame() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        assert_eq!(Config::new(NodeId(1), voters.clone()).validate(), Ok(()));
        let mut c = Config::new(NodeId(1), voters);
        c.max_bytes_per_append = codec::MAX_FRAME_LEN;
        assert_eq!(
            c.validate(),
            Err(ConfigError::AppendTooLarge {
                max_entries: 256,
                max_bytes: codec::MAX_FRAME_LEN
            })
        );
        // Entry headers count too, and a huge count does not overflow.
        c.max_bytes_per_append = 1;
        c.max_entries_per_append = usize::MAX;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::AppendTooLarge { .. })
        ));
        assert!(!c.validate().unwrap_err().to_string().is_empty());
    }
}
