//! AppendEntries on the receiving side (§5.3), for followers and for
//! candidates that discover the leader of their term.

use crate::action::{Action, RoleChangeReason};
use crate::message::{AppendEntries, AppendEntriesResponse, AppendResult, MessageBody};
use crate::node::{Node, RoleState};
use crate::types::{LogIndex, NodeId, Time};

impl Node {
    pub(crate) fn handle_append_entries(&mut self, now: Time, from: NodeId, ae: AppendEntries) {
        match self.role {
            RoleState::Leader(_) => {
                panic!(
                    "election safety violated: two leaders ({} and {from}) in term {}",
                    self.config.id, self.current_term
                )
            }
            RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                // §5.2: a candidate that hears from the leader of its term
                // (or a later one) returns to follower.
                self.become_follower(
                    now,
                    self.current_term,
                    Some(from),
                    RoleChangeReason::LeaderHeard { leader: from },
                );
            }
            RoleState::Follower => {
                self.set_leader(Some(from));
                self.last_leader_contact = Some(now);
                self.election_reason = None;
                self.reset_election_deadline(now);
            }
        }

        let result = self.append_to_log(&ae);
        self.send_append_response(from, ae.round, result);
    }

    /// The consistency check and the log update; returns the answer.
    fn append_to_log(&mut self, ae: &AppendEntries) -> AppendResult {
        let prev = ae.prev_log_index;
        match self.log.term_at(prev) {
            Some(t) if t == ae.prev_log_term => {}
            Some(_) => {
                // Everything up to the commit index is known to match any
                // leader's log (§5.4), so a mismatch there is impossible.
                assert!(
                    prev > self.commit_index,
                    "log matching violated: committed entry {prev} conflicts with leader"
                );
                return self.conflict(prev);
            }
            None if prev > self.log.last_index() => return self.conflict(prev),
            None => unreachable!("prev_log_index below the log start needs snapshots"),
        }

        // Skip entries we already hold; truncate at the first conflict; append the rest (§5.3 steps 3-4).
        let mut new_from = None;
        for (i, e) in ae.entries.iter().enumerate() {
            match self.log.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    assert!(
                        e.index > self.commit_index,
                        "state machine safety violated: truncating committed entry {}",
                        e.index
                    );
                    self.log.truncate_from(e.index);
                    self.persisted_index = self.persisted_index.min(e.index.prev());
                    self.persist
                        .push_back(Action::TruncateLog { from: e.index });
                    new_from = Some(i);
                    break;
                }
                None => {
                    new_from = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = new_from {
            let new = ae.entries[i..].to_vec();
            for e in &new {
                self.log.push(e.clone());
            }
            self.persist.push_back(Action::AppendLog(new));
        }

        let match_index = prev.plus(ae.entries.len() as u64);
        // Figure 2: commitIndex = min(leaderCommit, index of last new entry).
        let commit_to = ae.leader_commit.min(match_index);
        if commit_to > self.commit_index {
            self.advance_commit(commit_to);
        }
        AppendResult::Success { match_index }
    }

    /// A rejection of an AppendEntries whose `prev_log_index` was `prev`,
    /// with the hint that lets the leader skip a term per round trip: our
    /// term at `prev` and where that term's run starts, or, when our log is
    /// shorter, where it ends.
    pub(crate) fn conflict(&self, prev: LogIndex) -> AppendResult {
        let last = self.log.last_index();
        match self.log.term_at(prev).filter(|_| prev <= last) {
            Some(t) => AppendResult::Conflict {
                rejected_index: prev,
                last_log_index: last,
                conflict_term: Some(t),
                conflict_index: self.log.first_index_of_term_run(prev, t),
            },
            None => AppendResult::Conflict {
                rejected_index: prev,
                last_log_index: last,
                conflict_term: None,
                conflict_index: last.next(),
            },
        }
    }

    pub(crate) fn send_append_response(&mut self, to: NodeId, round: u64, result: AppendResult) {
        self.send(
            to,
            MessageBody::AppendEntriesResponse(AppendEntriesResponse { round, result }),
        );
    }
}
