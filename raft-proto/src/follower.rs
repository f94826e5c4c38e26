//! The follower (§5.2, §5.3): its step function, and AppendEntries on the
//! receiving side, which a candidate also reaches once it hears from the
//! leader of its term.

use crate::action::{Action, PeerFault};
use crate::message::{AppendEntries, AppendEntriesResponse, AppendResult, Message, MessageBody};
use crate::node::Node;
use crate::types::{LogIndex, NodeId, Time};

impl Node {
    /// A follower's messages, after the term rules (their term is ours, or
    /// for a pre-vote request the next one).
    pub(crate) fn step_follower(&mut self, now: Time, msg: Message) {
        match msg.body {
            MessageBody::RequestVote(rv) => self.handle_request_vote(now, msg.from, msg.term, rv),
            MessageBody::AppendEntries(ae) => {
                // A term has one leader (§5.2); once we know it, an
                // AppendEntries of this term from anyone else is forged.
                if let Some(leader) = self.leader.filter(|&l| l != msg.from) {
                    let fault = PeerFault::SecondLeader {
                        term: msg.term,
                        leader,
                    };
                    self.peer_fault(msg.from, fault);
                    return;
                }
                self.set_leader(Some(msg.from));
                self.last_leader_contact = Some(now);
                self.election_reason = None;
                self.reset_election_deadline(now);
                self.handle_append_entries(msg.from, ae);
            }
            // Late answers: to a campaign this node gave up, or to appends
            // it sent while it led this term (before CheckQuorum deposed it).
            MessageBody::RequestVoteResponse(_) | MessageBody::AppendEntriesResponse(_) => {}
        }
    }

    /// What makes an AppendEntries of our term or a later one impossible,
    /// given our log: a `prev_log_index` below the log start, or a
    /// `(index, term)` pair, for `prev_log_index` or an entry, that differs
    /// from an entry we know committed. A leader of our term or a later one
    /// holds every committed entry (§5.4.1, Leader Completeness), so by Log
    /// Matching it agrees with us on all of them. Checked before anything
    /// changes, so `append_to_log` may assert it.
    pub(crate) fn check_append_entries(&self, ae: &AppendEntries) -> Result<(), PeerFault> {
        let log_start = self.log.start_index();
        if ae.prev_log_index < log_start {
            return Err(PeerFault::PrevBelowLogStart {
                prev_log_index: ae.prev_log_index,
                log_start,
            });
        }
        let commit_index = self.commit_index;
        let check = |index: LogIndex, term| match self.log.term_at(index) {
            Some(committed_term) if index <= commit_index && committed_term != term => {
                Err(PeerFault::ConflictsWithCommitted {
                    index,
                    term,
                    committed_term,
                    commit_index,
                })
            }
            _ => Ok(()),
        };
        check(ae.prev_log_index, ae.prev_log_term)?;
        // Entries follow prev_log_index one by one (the codec checked), so
        // only those up to the commit index need looking at.
        for e in ae.entries.iter().take_while(|e| e.index <= commit_index) {
            check(e.index, e.term)?;
        }
        Ok(())
    }

    /// Answers an AppendEntries from the leader of our term (§5.3).
    pub(crate) fn handle_append_entries(&mut self, from: NodeId, ae: AppendEntries) {
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
                // leader's log (§5.4); check_append_entries dropped a message
                // that says otherwise.
                assert!(
                    prev > self.commit_index,
                    "log matching violated: committed entry {prev} conflicts with leader"
                );
                return self.conflict(prev);
            }
            None => {
                assert!(
                    prev > self.log.last_index(),
                    "prev_log_index {prev} below the log start passed check_append_entries"
                );
                return self.conflict(prev);
            }
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

#[cfg(test)]
mod tests {
    use crate::log::RaftLog;
    use crate::{
        AppendEntries, Config, Event, LogIndex, Message, MessageBody, Node, NodeId, PeerFault,
        PersistentState, Term, Time,
    };

    /// A prev_log_index below the start of the log cannot be checked. Logs
    /// start at 0 until snapshots exist, so the public API cannot reach
    /// this yet; it used to be an `unreachable!`.
    #[test]
    fn append_entries_below_the_log_start_is_a_peer_fault() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = Config::new(NodeId(1), voters);
        let mut node = Node::new(config, PersistentState::default(), Time::ZERO).unwrap();
        // As if a snapshot covered everything up to index 10, of term 2.
        node.log = RaftLog::new(LogIndex(10), Term(2), vec![]);
        node.current_term = Term(2);
        node.commit_index = LogIndex(10);
        node.last_applied = LogIndex(10);
        node.persisted_index = LogIndex(10);
        node.check_invariants();
        let before = node.status();
        let ae = AppendEntries {
            prev_log_index: LogIndex(5),
            prev_log_term: Term(1),
            entries: vec![],
            leader_commit: LogIndex(5),
            round: 0,
        };
        let msg = Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(2),
            body: MessageBody::AppendEntries(ae),
        };
        node.handle_message(Time::ZERO, msg);
        let actions: Vec<_> = std::iter::from_fn(|| node.poll_action()).collect();
        assert_eq!(
            actions,
            vec![crate::Action::Event(Event::PeerFault {
                peer: NodeId(2),
                fault: PeerFault::PrevBelowLogStart {
                    prev_log_index: LogIndex(5),
                    log_start: LogIndex(10),
                },
            })]
        );
        assert_eq!(node.status(), before);
    }
}
