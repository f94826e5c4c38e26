//! The leader's view of one follower's log (Figure 2's `nextIndex` and
//! `matchIndex`, plus flow control).

use std::collections::VecDeque;

use crate::types::{LogIndex, SnapshotMeta};

/// How the leader sends to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// The leader does not know where the follower's log matches: one
    /// AppendEntries at a time, until an answer (or the next heartbeat).
    Probe {
        /// A probe is outstanding.
        paused: bool,
    },
    /// The follower's log matches up to `match_index`: stream entries
    /// optimistically, up to `max_inflight_appends` messages unanswered.
    Replicate {
        /// Last index and heartbeat round of each AppendEntries in flight,
        /// oldest first.
        inflight: VecDeque<(LogIndex, u64)>,
    },
    /// The follower needs entries the leader compacted: the leader sends
    /// its snapshot in chunks, at most `max_inflight_appends` of them
    /// unanswered, and no AppendEntries until the follower has it (§7).
    Snapshot {
        /// The snapshot being sent.
        meta: SnapshotMeta,
        /// The follower holds this many bytes of it, as it last said.
        acked: u64,
        /// Chunks went out up to here; the next one starts here.
        sent: u64,
        /// The furthest `sent` reached in this transfer: an honest answer
        /// never expects more, unless it says the snapshot is done.
        sent_max: u64,
        /// `acked` at the previous heartbeat. A transfer that did not move
        /// for a whole heartbeat interval lost a chunk: resend from
        /// `acked`.
        acked_at_heartbeat: u64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated on the follower.
    pub(crate) match_index: LogIndex,
    /// Index of the next entry to send.
    pub(crate) next_index: LogIndex,
    /// The highest index any AppendEntries to the follower reached
    /// (`prev_log_index` plus its entries) in this term. An honest answer
    /// never names an index beyond it.
    pub(crate) sent_index: LogIndex,
    pub(crate) state: ProgressState,
    /// Heard from since the last CheckQuorum.
    pub(crate) recent_active: bool,
    /// Highest heartbeat round the follower has acknowledged (ReadIndex).
    pub(crate) acked_round: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            sent_index: LogIndex(0),
            state: ProgressState::Probe { paused: false },
            recent_active: false,
            acked_round: 0,
        }
    }

    pub(crate) fn check_invariants(&self, last_index: LogIndex, max_inflight: usize) {
        assert!(
            self.match_index < self.next_index,
            "progress invariant: match_index < next_index"
        );
        assert!(
            self.next_index <= last_index.next(),
            "progress invariant: next_index <= last_index + 1"
        );
        assert!(
            self.match_index <= self.sent_index && self.sent_index <= last_index,
            "progress invariant: match_index <= sent_index <= last_index"
        );
        if let ProgressState::Snapshot {
            meta,
            acked,
            sent,
            sent_max,
            ..
        } = &self.state
        {
            assert!(
                acked <= sent && sent <= sent_max && *sent_max <= meta.len,
                "progress invariant: acked <= sent <= sent_max <= snapshot len"
            );
        }
        if let ProgressState::Replicate { inflight } = &self.state {
            assert!(
                inflight.len() <= max_inflight,
                "progress invariant: inflight bounded"
            );
            let mut prev = self.match_index;
            for &(i, _) in inflight {
                assert!(
                    i > prev,
                    "progress invariant: inflight ascending above match"
                );
                prev = i;
            }
        }
    }

    /// Whether the leader must hold back new AppendEntries for now.
    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match &self.state {
            ProgressState::Probe { paused } => *paused,
            ProgressState::Replicate { inflight } => inflight.len() >= max_inflight,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Starts sending `meta`, from its first byte.
    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.state = ProgressState::Snapshot {
            meta,
            acked: 0,
            sent: 0,
            sent_max: 0,
            acked_at_heartbeat: 0,
        };
        self.next_index = self.match_index.next();
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe { paused: false };
        self.next_index = self.match_index.next();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate {
            inflight: VecDeque::new(),
        };
        self.next_index = self.match_index.next();
    }

    /// Records that an AppendEntries ending at `last` was sent in heartbeat
    /// round `round`.
    pub(crate) fn sent(&mut self, last: LogIndex, carried_entries: bool, round: u64) {
        self.sent_index = self.sent_index.max(last);
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = true,
            ProgressState::Replicate { inflight } => {
                if carried_entries {
                    inflight.push_back((last, round));
                    self.next_index = last.next();
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// Handles a successful AppendEntries up to `index`. Returns whether
    /// the match index moved.
    pub(crate) fn on_success(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        match &mut self.state {
            ProgressState::Probe { .. } => {
                // The probe point is confirmed once everything sent matches.
                if self.next_index == index.next() {
                    self.become_replicate();
                } else {
                    self.state = ProgressState::Probe { paused: false };
                }
            }
            ProgressState::Replicate { inflight } => {
                while inflight.front().is_some_and(|&(i, _)| i <= index) {
                    inflight.pop_front();
                }
            }
            // A late answer to an append from before the transfer: once
            // the follower is known to hold what the snapshot covers, it
            // needs the rest of the log, not the snapshot.
            ProgressState::Snapshot { meta, .. } => {
                if self.match_index >= meta.last_index {
                    self.become_replicate();
                }
            }
        }
        advanced
    }

    /// Handles a rejection of an AppendEntries whose `prev_log_index` was
    /// `rejected`, given the hint-derived `hint_next`. Returns false for a
    /// stale rejection, which changes nothing.
    pub(crate) fn on_conflict(&mut self, rejected: LogIndex, hint_next: LogIndex) -> bool {
        match &self.state {
            ProgressState::Replicate { .. } => {
                // A rejection at or below what is known to match is an old,
                // reordered answer.
                if rejected <= self.match_index {
                    return false;
                }
            }
            ProgressState::Probe { .. } => {
                // Only the answer to the current probe counts.
                if rejected.next() != self.next_index {
                    return false;
                }
            }
            // From before the transfer: the snapshot answers decide.
            ProgressState::Snapshot { .. } => return false,
        }
        let next = hint_next.min(rejected).max(self.match_index.next());
        self.state = ProgressState::Probe { paused: false };
        self.next_index = next;
        true
    }

    /// A heartbeat's answer (or any answer that moved nothing): a probe
    /// may be retried.
    pub(crate) fn on_answer_without_progress(&mut self) {
        if let ProgressState::Probe { paused } = &mut self.state {
            *paused = false;
        }
    }

    /// An answer to a message of heartbeat round `round` arrived. Links
    /// deliver in order, so every AppendEntries of an earlier round was
    /// processed before it: one still unanswered was lost (its connection
    /// broke). Go back to probing from the match index. Returns whether it
    /// did. On a network that reorders this only costs a resend.
    pub(crate) fn detect_loss(&mut self, round: u64) -> bool {
        let lost = match &self.state {
            ProgressState::Replicate { inflight } => {
                inflight.front().is_some_and(|&(_, r)| r < round)
            }
            ProgressState::Probe { .. } | ProgressState::Snapshot { .. } => false,
        };
        if lost {
            self.become_probe();
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_replicate() {
        let mut p = Progress::new(LogIndex(11));
        assert!(!p.is_paused(4));
        p.sent(LogIndex(11), true, 0);
        assert!(p.is_paused(4));
        // Rejected at prev 10: follower has only 5 entries.
        assert!(p.on_conflict(LogIndex(10), LogIndex(6)));
        assert_eq!(p.next_index, LogIndex(6));
        assert!(!p.is_paused(4));
        p.sent(LogIndex(11), true, 0);
        assert!(p.on_success(LogIndex(11)));
        assert_eq!(
            p.state,
            ProgressState::Replicate {
                inflight: VecDeque::new()
            }
        );
        assert_eq!(p.next_index, LogIndex(12));
        p.check_invariants(LogIndex(11), 4);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(LogIndex(1));
        p.on_success(LogIndex(0));
        p.match_index = LogIndex(5);
        p.become_replicate();
        assert!(!p.on_conflict(LogIndex(3), LogIndex(1)));
        assert_eq!(p.next_index, LogIndex(6));
        let mut q = Progress::new(LogIndex(10));
        assert!(!q.on_conflict(LogIndex(4), LogIndex(2)));
        assert_eq!(q.next_index, LogIndex(10));
    }

    #[test]
    fn replicate_window_is_bounded_and_losses_found_by_round() {
        let mut p = Progress::new(LogIndex(1));
        p.become_replicate();
        for i in 1..=4 {
            assert!(!p.is_paused(4));
            p.sent(LogIndex(i), true, 1);
        }
        assert!(p.is_paused(4));
        p.on_success(LogIndex(2));
        assert!(!p.is_paused(4));
        p.sent(LogIndex(5), true, 2);
        p.sent(LogIndex(6), true, 2);
        assert!(p.is_paused(4));
        // An answer from round 2 while appends 3-4 of round 1 are still
        // unanswered: they were lost; probe again from the match index.
        assert!(!p.detect_loss(1));
        assert!(p.detect_loss(2));
        assert_eq!(p.state, ProgressState::Probe { paused: false });
        assert_eq!(p.next_index, LogIndex(3));
    }
}
