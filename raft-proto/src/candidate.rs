//! Candidates and elections: PreVote (§9.6), RequestVote (§5.2) and the
//! election restriction (§5.4.1).

use crate::action::{ElectionReason, Event, Role, RoleChangeReason};
use crate::message::{Message, MessageBody, RequestVote, RequestVoteResponse};
use crate::node::{Node, RoleState};
use crate::quorum::{VoteResult, VoteTally};
use crate::types::{NodeId, Term, Time};

impl Node {
    /// Starts a pre-vote (or, without PreVote, an election).
    pub(crate) fn campaign(&mut self, now: Time, reason: ElectionReason) {
        if self.current_term >= Term::MAX {
            // No term is left to campaign in. Only a peer can have brought
            // us here (honest terms never get near the bound), and a member
            // that cannot campaign still votes, follows and, if it already
            // leads, keeps leading: the cluster loses elections, not
            // safety. Wait a whole timeout again rather than wake at once.
            self.reset_election_deadline(now);
            return;
        }
        if !self.log.membership().is_voter(self.config.id) {
            // A learner, a member that is joining, or one that was removed:
            // it never campaigns. Its timer stays armed, so it still wakes
            // once per election timeout, to no effect.
            self.reset_election_deadline(now);
            return;
        }
        if self.config.pre_vote {
            self.start_pre_vote(now, reason);
        } else {
            self.start_election(now, reason);
        }
    }

    fn start_pre_vote(&mut self, now: Time, reason: ElectionReason) {
        let mut votes = VoteTally::new(self.log.membership().voters.clone());
        votes.record(self.config.id, true);
        // A pre-vote keeps the term, so an election this node ran in it
        // is still open: its votes are the voters' durable word for this
        // term, and a majority of them elects it whenever they arrive. So
        // is a snapshot transfer of this term it was receiving.
        let (election, incoming) = match &mut self.role {
            RoleState::Candidate { votes } => (Some(votes.clone()), None),
            RoleState::PreCandidate {
                election, incoming, ..
            } => (election.take(), incoming.take()),
            RoleState::Follower(follower) => (None, follower.incoming.take()),
            RoleState::Leader(_) => (None, None),
        };
        // While still a follower: the reads it serves fail with the leader.
        self.set_leader(None);
        self.role = RoleState::PreCandidate {
            votes,
            election,
            incoming,
        };
        self.last_leader_contact = None;
        self.reset_election_deadline(now);
        let term = self.current_term.next();
        self.events.push_back(Event::ElectionStarted {
            term,
            pre_vote: true,
            reason,
        });
        self.events.push_back(Event::RoleChanged {
            role: Role::PreCandidate,
            term: self.current_term,
            reason: RoleChangeReason::Campaign,
        });
        self.request_votes(term, true, false);
        self.tally(now);
    }

    pub(crate) fn start_election(&mut self, now: Time, reason: ElectionReason) {
        let transfer = matches!(reason, ElectionReason::LeadershipTransfer { .. });
        self.current_term = self.current_term.next();
        self.voted_for = Some(self.config.id);
        self.hard_state_dirty = true;
        let mut votes = VoteTally::new(self.log.membership().voters.clone());
        votes.record(self.config.id, true);
        // While still a follower, if it was one: the reads it serves fail
        // with the leader.
        self.set_leader(None);
        self.role = RoleState::Candidate { votes };
        self.last_leader_contact = None;
        self.reset_election_deadline(now);
        self.events.push_back(Event::ElectionStarted {
            term: self.current_term,
            pre_vote: false,
            reason,
        });
        self.events.push_back(Event::RoleChanged {
            role: Role::Candidate,
            term: self.current_term,
            reason: RoleChangeReason::Campaign,
        });
        self.request_votes(self.current_term, false, transfer);
        self.tally(now);
    }

    fn request_votes(&mut self, term: Term, pre_vote: bool, leadership_transfer: bool) {
        let rv = RequestVote {
            pre_vote,
            leadership_transfer,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        for peer in self.other_voters() {
            self.sends.push_back((
                Message {
                    from: self.config.id,
                    to: peer,
                    term,
                    body: MessageBody::RequestVote(rv.clone()),
                },
                0,
            ));
        }
    }

    /// A (pre-)candidate's messages, after the term rules (their term is
    /// ours, or for a granted pre-vote the one asked for).
    pub(crate) fn step_candidate(&mut self, now: Time, msg: Message) {
        match msg.body {
            MessageBody::RequestVote(rv) => self.handle_request_vote(now, msg.from, msg.term, rv),
            MessageBody::RequestVoteResponse(r) => {
                self.handle_vote_response(now, msg.from, msg.term, r)
            }
            MessageBody::AppendEntries(ae) => {
                // §5.2: a candidate that hears from the leader of its term
                // returns to follower.
                self.become_follower(
                    now,
                    self.current_term,
                    Some(msg.from),
                    RoleChangeReason::LeaderHeard { leader: msg.from },
                );
                self.handle_append_entries(msg.from, ae);
            }
            MessageBody::InstallSnapshot(is) => {
                self.become_follower(
                    now,
                    self.current_term,
                    Some(msg.from),
                    RoleChangeReason::LeaderHeard { leader: msg.from },
                );
                self.handle_install_snapshot(msg.from, is);
            }
            // Late answers to appends a pre-candidate sent while it led this
            // term (before CheckQuorum deposed it).
            MessageBody::AppendEntriesResponse(_)
            | MessageBody::InstallSnapshotResponse(_)
            | MessageBody::ReadIndexResponse(_) => {}
            MessageBody::ReadIndexRequest(r) => self.send_read_index_response(msg.from, r.id, None),
            // A transfer to this node already made it campaign, or the
            // leader that sent it was deposed since.
            MessageBody::TimeoutNow => {}
        }
    }

    /// Answers a (pre-)vote request whose term is not below ours (the term
    /// rules ran already; a real request's term now equals ours).
    pub(crate) fn handle_request_vote(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        rv: RequestVote,
    ) {
        // We may vote for `from` if we already did in this term, if we have
        // neither voted nor know a leader, or (pre-vote only) if it asks
        // about a later term.
        let can_vote = self.voted_for == Some(from)
            || (self.voted_for.is_none() && self.leader.is_none())
            || (rv.pre_vote && term > self.current_term);
        let granted = can_vote && self.log.is_up_to_date(rv.last_log_term, rv.last_log_index);
        if rv.pre_vote {
            // A granted pre-vote answers in the asked term, so the
            // pre-candidate does not take it as stale; a refusal in ours.
            let reply_term = if granted { term } else { self.current_term };
            self.send_vote_response(from, reply_term, true, granted);
            return;
        }
        if granted {
            assert!(
                self.voted_for.is_none() || self.voted_for == Some(from),
                "vote invariant: one vote per term"
            );
            if self.voted_for != Some(from) {
                self.voted_for = Some(from);
                self.hard_state_dirty = true;
            }
            // §5.2: granting a vote resets the election timer.
            self.reset_election_deadline(now);
        }
        self.send_vote_response(from, self.current_term, false, granted);
    }

    pub(crate) fn handle_vote_response(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        r: RequestVoteResponse,
    ) {
        match &mut self.role {
            RoleState::PreCandidate {
                election: Some(votes),
                ..
            } if !r.pre_vote && term == self.current_term => {
                votes.record(from, r.granted);
                if votes.result() == VoteResult::Won {
                    let granted: Vec<NodeId> = votes.granted().collect();
                    self.become_leader(now, &granted);
                }
                return;
            }
            RoleState::PreCandidate { votes, .. } if r.pre_vote => {
                // Grants come in the asked term (ours + 1), refusals in ours.
                let expected = if r.granted {
                    self.current_term.next()
                } else {
                    self.current_term
                };
                if term != expected {
                    return;
                }
                votes.record(from, r.granted);
            }
            RoleState::Candidate { votes } if !r.pre_vote && term == self.current_term => {
                votes.record(from, r.granted);
            }
            _ => return,
        }
        self.tally(now);
    }

    fn tally(&mut self, now: Time) {
        let (result, pre) = match &self.role {
            RoleState::PreCandidate { votes, .. } => (votes.result(), true),
            RoleState::Candidate { votes } => (votes.result(), false),
            _ => return,
        };
        match (result, pre) {
            (VoteResult::Won, true) => self.start_election(now, ElectionReason::PreVoteWon),
            (VoteResult::Won, false) => {
                let RoleState::Candidate { votes } = &self.role else {
                    unreachable!("a candidate won");
                };
                let granted: Vec<NodeId> = votes.granted().collect();
                self.become_leader(now, &granted)
            }
            (VoteResult::Lost, true) => {
                self.become_follower(now, self.current_term, None, RoleChangeReason::PreVoteLost)
            }
            (VoteResult::Lost, false) => {
                self.become_follower(now, self.current_term, None, RoleChangeReason::ElectionLost)
            }
            (VoteResult::Pending, _) => {}
        }
    }
}
