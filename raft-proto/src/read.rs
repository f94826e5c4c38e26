//! Pending linearizable reads (ReadIndex, §6.4).

use std::collections::{BTreeMap, VecDeque};

use crate::types::{LogIndex, NodeId};

/// A read waiting to be confirmed by a heartbeat round and for the state
/// machine to catch up.
#[derive(Clone, Debug)]
pub(crate) struct PendingRead {
    /// The caller's id.
    pub(crate) id: u64,
    /// The heartbeat round that must be acknowledged by a majority: the
    /// first round the leader started after the read arrived.
    pub(crate) round: u64,
    /// The commit index when the read arrived, once the leader has committed
    /// an entry of its own term; until then the leader does not know the
    /// latest commit index and the read waits (§6.4 step 1).
    pub(crate) read_index: Option<LogIndex>,
    /// The follower that asked, for a read it serves itself (thesis §6.4:
    /// the leader only confirms the read index); `None` for the leader's
    /// own reads.
    pub(crate) from: Option<NodeId>,
}

/// Reads in arrival order. Rounds and read indexes never decrease along
/// the queue, so reads complete in order.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    reads: VecDeque<PendingRead>,
    /// Reads queued per asking follower: one member may hold only a share
    /// of the queue ([`ReadQueue::peer_share`]), so a member flooding
    /// ReadIndex requests cannot take the room of the leader's own clients.
    per_peer: BTreeMap<NodeId, usize>,
}

impl ReadQueue {
    pub(crate) fn len(&self) -> usize {
        self.reads.len()
    }

    /// Reads one follower may have queued at most, of `max_reads` in all:
    /// a quarter.
    pub(crate) fn peer_share(max_reads: usize) -> usize {
        (max_reads / 4).max(1)
    }

    /// Reads queued for `peer`.
    pub(crate) fn queued_for(&self, peer: NodeId) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    pub(crate) fn push(&mut self, read: PendingRead) {
        if let Some(last) = self.reads.back() {
            assert!(last.round <= read.round, "read invariant: rounds ascend");
        }
        if let Some(p) = read.from {
            *self.per_peer.entry(p).or_insert(0) += 1;
        }
        self.reads.push_back(read);
    }

    fn forget(&mut self, read: &PendingRead) {
        if let Some(p) = read.from {
            let n = self.per_peer.get_mut(&p).expect("read invariant: counted");
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&p);
            }
        }
    }

    /// The per-peer counts match the queue.
    pub(crate) fn check_invariants(&self) {
        let mut counted: BTreeMap<NodeId, usize> = BTreeMap::new();
        for r in &self.reads {
            if let Some(p) = r.from {
                *counted.entry(p).or_insert(0) += 1;
            }
        }
        assert_eq!(counted, self.per_peer, "read invariant: per-peer counts");
    }

    /// Gives reads that were waiting for the term's first commit their read
    /// index.
    pub(crate) fn set_missing_read_index(&mut self, commit_index: LogIndex) {
        for r in self.reads.iter_mut().filter(|r| r.read_index.is_none()) {
            r.read_index = Some(commit_index);
        }
    }

    /// Removes and returns the reads that may be served: their round is
    /// acknowledged by a majority and, for the leader's own, the state
    /// machine has applied their read index (a follower's read waits for
    /// the follower's state machine instead).
    pub(crate) fn pop_ready(
        &mut self,
        quorum_round: u64,
        last_applied: LogIndex,
    ) -> Vec<PendingRead> {
        let mut ready = Vec::new();
        while let Some(front) = self.reads.front() {
            let ok = front.round <= quorum_round
                && front
                    .read_index
                    .is_some_and(|ri| front.from.is_some() || ri <= last_applied);
            if !ok {
                break;
            }
            let read = self.reads.pop_front().expect("front checked");
            self.forget(&read);
            ready.push(read);
        }
        ready
    }

    pub(crate) fn drain(&mut self) -> Vec<PendingRead> {
        self.per_peer.clear();
        self.reads.drain(..).collect()
    }
}
