//! Majority arithmetic (§5.2, §5.3).

use std::collections::BTreeMap;

use crate::types::{LogIndex, NodeId};

/// Votes needed out of `voters`.
pub(crate) fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that at least a majority of `match_indexes` (one per
/// voter, the leader's own included) has reached.
pub(crate) fn quorum_index(mut match_indexes: Vec<LogIndex>) -> LogIndex {
    assert!(
        !match_indexes.is_empty(),
        "a cluster has at least one voter"
    );
    match_indexes.sort_unstable_by(|a, b| b.cmp(a));
    match_indexes[majority(match_indexes.len()) - 1]
}

/// The outcome of a vote, so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Votes received in one (pre-)election, among the voters of the
/// configuration it started in. A voter is counted once, whatever
/// duplicates the network delivers; anyone else's answer counts for
/// nothing (a learner, or a member this configuration removed).
#[derive(Clone, Debug)]
pub(crate) struct VoteTally {
    voters: Vec<NodeId>,
    votes: BTreeMap<NodeId, bool>,
}

impl VoteTally {
    /// `voters` sorted, as in [`crate::Membership`].
    pub(crate) fn new(voters: Vec<NodeId>) -> VoteTally {
        VoteTally {
            voters,
            votes: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, from: NodeId, granted: bool) {
        if self.voters.binary_search(&from).is_ok() {
            self.votes.entry(from).or_insert(granted);
        }
    }

    /// The voters that granted.
    pub(crate) fn granted(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.votes.iter().filter(|(_, &g)| g).map(|(&v, _)| v)
    }

    pub(crate) fn result(&self) -> VoteResult {
        let granted = self.votes.values().filter(|g| **g).count();
        let rejected = self.votes.len() - granted;
        let need = majority(self.voters.len());
        if granted >= need {
            VoteResult::Won
        } else if rejected > self.voters.len() - need {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn quorum_index_is_the_majority_floor() {
        let q = |v: &[u64]| quorum_index(v.iter().map(|&i| LogIndex(i)).collect()).0;
        assert_eq!(q(&[5]), 5);
        assert_eq!(q(&[5, 3, 1]), 3);
        assert_eq!(q(&[5, 5, 1, 1]), 1);
        assert_eq!(q(&[9, 7, 5, 3, 1]), 5);
    }

    #[test]
    fn tally_counts_each_voter_once() {
        let ids = |v: &[u64]| v.iter().map(|&i| NodeId(i)).collect::<Vec<_>>();
        let mut t = VoteTally::new(ids(&[1, 2, 3]));
        t.record(NodeId(9), true);
        t.record(NodeId(8), true);
        t.record(NodeId(1), true);
        assert_eq!(t.result(), VoteResult::Pending);
        t.record(NodeId(2), false);
        t.record(NodeId(2), true);
        assert_eq!(t.result(), VoteResult::Pending);
        t.record(NodeId(3), false);
        assert_eq!(t.result(), VoteResult::Lost);
        let mut w = VoteTally::new(ids(&[1, 2, 3]));
        w.record(NodeId(1), true);
        w.record(NodeId(3), true);
        assert_eq!(w.result(), VoteResult::Won);
    }
}
