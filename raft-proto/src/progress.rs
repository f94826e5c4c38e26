//! The leader's view of one follower's log (Figure 2's `nextIndex` and
//! `matchIndex`, plus flow control).

use std::collections::VecDeque;

use crate::types::LogIndex;

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
        /// Last index of each AppendEntries in flight, oldest first.
        inflight: VecDeque<LogIndex>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated on the follower.
    pub(crate) match_index: LogIndex,
    /// Index of the next entry to send.
    pub(crate) next_index: LogIndex,
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
        if let ProgressState::Replicate { inflight } = &self.state {
            assert!(
                inflight.len() <= max_inflight,
                "progress invariant: inflight bounded"
            );
            let mut prev = self.match_index;
            for &i in inflight {
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
        }
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

    /// Records that an AppendEntries ending at `last` was sent.
    pub(crate) fn sent(&mut self, last: LogIndex, carried_entries: bool) {
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = true,
            ProgressState::Replicate { inflight } => {
                if carried_entries {
                    inflight.push_back(last);
                    self.next_index = last.next();
                }
            }
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
                while inflight.front().is_some_and(|&i| i <= index) {
                    inflight.pop_front();
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
        }
        let next = hint_next.min(rejected).max(self.match_index.next());
        self.state = ProgressState::Probe { paused: false };
        self.next_index = next;
        true
    }

    /// A heartbeat answer: a probe may be retried, and in replicate mode a
    /// full window gives up its oldest slot, so a lost append is found by
    /// the next one's consistency check rather than stalling the follower.
    pub(crate) fn on_heartbeat_answer(&mut self, max_inflight: usize) {
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = false,
            ProgressState::Replicate { inflight } => {
                if inflight.len() >= max_inflight {
                    inflight.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_replicate() {
        let mut p = Progress::new(LogIndex(11));
        assert!(!p.is_paused(4));
        p.sent(LogIndex(11), true);
        assert!(p.is_paused(4));
        // Rejected at prev 10: follower has only 5 entries.
        assert!(p.on_conflict(LogIndex(10), LogIndex(6)));
        assert_eq!(p.next_index, LogIndex(6));
        assert!(!p.is_paused(4));
        p.sent(LogIndex(11), true);
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
    fn replicate_window_is_bounded() {
        let mut p = Progress::new(LogIndex(1));
        p.become_replicate();
        for i in 1..=4 {
            assert!(!p.is_paused(4));
            p.sent(LogIndex(i), true);
        }
        assert!(p.is_paused(4));
        p.on_success(LogIndex(2));
        assert!(!p.is_paused(4));
        p.sent(LogIndex(5), true);
        p.sent(LogIndex(6), true);
        assert!(p.is_paused(4));
        p.on_heartbeat_answer(4);
        assert!(!p.is_paused(4));
    }
}
