//! The term rules (§5.1), applied once for every peer message in
//! `Node::step` before the role's step function sees it, and the bound on
//! how far one message moves a node's term.
//!
//! # How far one message moves the term
//!
//! Before the term rules (§5.1), a message whose term is more than
//! [`Term::MAX_JUMP`] beyond this node's is dropped, and its term kept as
//! a claim of its sender if that is a voter (the highest per voter, so at
//! most one per voter). Then:
//!
//! - if at least two voters other than this node, that make with this
//!   node (if it votes) a majority of the voters, claim a term beyond
//!   ours, the node moves to the highest such term (three of five: itself
//!   and two others; both others of three; two of a learner's three
//!   voters). Their claims come with the leader's messages and with the
//!   refusals of this node's pre-votes, which carry the voters' terms;
//! - otherwise, if the claim comes from a voter (or from anyone, for a
//!   member that joins and has no configuration yet, so no voter to ask),
//!   and this node is no leader, has heard no leader for a minimum
//!   election timeout and did not do so within the last one, it moves by
//!   the bound. The leader's next message is then within it.
//!
//! What one message can still do: move a node that has no leader by the
//! bound, as a forged message within the bound does anyway; the members
//! then meet again by the terms their answers carry. What it can no longer
//! do is take anyone to [`Term::MAX`]: a node with a live leader, or that
//! leads, is not moved at all, and quorum vouching never takes a term
//! above a second voter's claim. Beyond one message: a member that keeps
//! forging moves leaderless nodes by the bound once per election timeout
//! (2^30 timeouts before the ceiling: a persistent insider is outside the
//! threat model, and it can refuse every vote anyway).

use crate::action::RoleChangeReason;
use crate::message::{AppendResult, Message, MessageBody};
use crate::node::{Node, RoleState};
use crate::quorum;
use crate::types::{LogIndex, Term, Time};

impl Node {
    /// The bound on how far one message moves this node's term
    /// ([`Term::MAX_JUMP`]). A message whose term is beyond it is dropped
    /// and its term kept as its sender's claim, if the sender is a voter;
    /// then, if enough voters vouch for a term beyond ours
    /// ([`Node::vouched_term`]), this node moves to it. If none can, a
    /// node that has heard no leader for a while steps by the bound
    /// ([`Node::may_step_term`]). Returns whether the message goes on to
    /// the term rules: its term is within the bound, or is the vouched
    /// term just moved to.
    ///
    /// A node whose configuration has no voter at all (a member that joins
    /// and has not received one yet) has nobody to ask: it steps by the
    /// bound on anyone's word, under the same conditions. So one forged
    /// message moves it by the bound at most too, and a cluster whose term
    /// went past the bound (a forged jump within it, then elections) can
    /// still add members: they get there a bound at a time.
    pub(crate) fn within_term_bound(&mut self, now: Time, msg: &Message) -> bool {
        if msg.term <= self.current_term.plus_max_jump() {
            return true;
        }
        let m = self.log.membership();
        let joining = m.voters.is_empty();
        let claim = match &msg.body {
            // A pre-candidate asks for the term after its own: it is in
            // the one before.
            MessageBody::RequestVote(rv) if rv.pre_vote => Term(msg.term.0 - 1),
            // A granted pre-vote carries the term its candidate asked for,
            // nobody's term: no honest one is beyond the bound, and it
            // claims nothing.
            MessageBody::RequestVoteResponse(r) if r.pre_vote && r.granted => return false,
            _ => msg.term,
        };
        let voter = m.is_voter(msg.from) && msg.from != self.config.id;
        if voter {
            let held = self.term_claims.entry(msg.from).or_insert(claim);
            *held = (*held).max(claim);
        }
        if let Some(term) = self.vouched_term() {
            self.become_follower(now, term, None, RoleChangeReason::TermVouched { term });
            // Only a message of the vouched term itself goes on: one
            // message moves the term to a vouched one or by the bound,
            // never both (its sender alone would add a jump on top).
            return msg.term == self.current_term;
        }
        if (voter || joining) && self.may_step_term(now) {
            // Below the claim, which is at most Term::MAX.
            let term = self.current_term.plus_max_jump();
            self.last_term_step = Some(now);
            self.become_follower(now, term, None, RoleChangeReason::TermStepped { term });
        }
        false
    }

    /// Whether this node may move its term by [`Term::MAX_JUMP`] on one
    /// voter's claim, when no quorum vouches: it is not a leader, it has
    /// heard no leader for a minimum election timeout, and it did not step
    /// within the last one.
    ///
    /// For the members that no quorum can vouch for: of three voters with
    /// one down, a member that was away while the other two went past the
    /// bound (a forged jump takes them to the bound, and one election
    /// beyond); of two voters; a member whose log still holds a stale
    /// configuration; a learner, which does not campaign and so hears only
    /// the leader. Such a member takes one step, and then the leader's next
    /// message is within the bound.
    ///
    /// What it costs: a forged claim moves a node that has no leader by
    /// the bound, as a forged message within the bound does anyway. A
    /// member with a live leader, or that leads, is not moved at all, and
    /// one that keeps forging moves a leaderless node by the bound once
    /// per election timeout at most: 2^30 election timeouts, a decade at
    /// 300 ms, before anyone nears [`Term::MAX`].
    pub(crate) fn may_step_term(&self, now: Time) -> bool {
        let quiet = self.config.election_timeout_min;
        !matches!(self.role, RoleState::Leader(_))
            && self
                .last_leader_contact
                .is_none_or(|t| now.saturating_since(t) >= quiet)
            && self
                .last_term_step
                .is_none_or(|t| now.saturating_since(t) >= quiet)
    }

    /// The highest term beyond ours that enough voters claim
    /// ([`Term::MAX_JUMP`]): at least two voters other than this node,
    /// and, counting this node if it is a voter, a majority of the voters.
    ///
    /// Two, so that one faulty member never moves anyone past the bound:
    /// whatever it claims, the term taken is at most what some other
    /// voter claims. A majority with this node, so that the voters that
    /// can elect a leader with it can also bring it along: in a cluster of
    /// five, this node and two others; of three, both others. Where that
    /// many voices cannot be heard (of three with one down, of two, or for
    /// a learner that hears only the leader), [`Node::may_step_term`]
    /// takes over, a bound at a time.
    pub(crate) fn vouched_term(&self) -> Option<Term> {
        let m = self.log.membership();
        let me = self.config.id;
        let needed = (quorum::majority(m.voters.len()) - usize::from(m.is_voter(me))).max(2);
        let mut claims: Vec<Term> = self
            .term_claims
            .iter()
            .filter(|(&id, _)| id != me && m.is_voter(id))
            .map(|(_, &t)| t)
            .collect();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        claims
            .get(needed - 1)
            .copied()
            .filter(|&t| t > self.current_term)
    }

    /// The term rules (§5.1). A newer term makes this node a follower in
    /// it (unless CheckQuorum's lease says the current leader is alive);
    /// an older one is stale and at most answered with our term. Returns
    /// whether the message goes on to the role's step function.
    pub(crate) fn apply_term_rules(&mut self, now: Time, msg: &Message) -> bool {
        if msg.term > self.current_term {
            match &msg.body {
                MessageBody::RequestVote(rv) => {
                    // A transfer's election was asked for by the leader
                    // itself: the lease protects that leader, not from it.
                    if self.in_lease(now) && !rv.leadership_transfer {
                        // CheckQuorum's stickiness: we heard from a live
                        // leader within the minimum election timeout, so a
                        // candidate must not depose it. Keep our term.
                        if rv.pre_vote {
                            self.send_vote_response(msg.from, self.current_term, true, false);
                        }
                        return false;
                    }
                    if !rv.pre_vote {
                        self.become_follower(
                            now,
                            msg.term,
                            None,
                            RoleChangeReason::HigherTerm { from: msg.from },
                        );
                    }
                }
                // A granted pre-vote carries the term the candidate asked
                // for; it is not a newer term anyone is in.
                MessageBody::RequestVoteResponse(r) if r.pre_vote && r.granted => {}
                MessageBody::AppendEntries(_) | MessageBody::InstallSnapshot(_) => {
                    self.become_follower(
                        now,
                        msg.term,
                        Some(msg.from),
                        RoleChangeReason::LeaderHeard { leader: msg.from },
                    );
                }
                _ => {
                    self.become_follower(
                        now,
                        msg.term,
                        None,
                        RoleChangeReason::HigherTerm { from: msg.from },
                    );
                }
            }
            true
        } else if msg.term < self.current_term {
            match &msg.body {
                // A deposed leader that was cut off learns our term from this
                // answer and steps down (needed with CheckQuorum/PreVote,
                // where our term may have moved on without it). Only the term
                // matters: "match at index 0" is trivially true and moves no
                // leader's progress, like etcd's empty MsgAppResp.
                MessageBody::AppendEntries(_) => {
                    let reply = AppendResult::Success {
                        match_index: LogIndex(0),
                    };
                    self.send_append_response(msg.from, 0, reply);
                }
                // Likewise for a deposed leader's snapshot chunk: "expect
                // offset 0" moves nothing.
                MessageBody::InstallSnapshot(is) => {
                    self.send_snapshot_response(msg.from, is.meta.last_index, 0, 0);
                }
                // A stale (pre-)candidate learns our term from the refusal
                // (Figure 2). Besides, a member that fell behind by more
                // than the bound learns the voters' terms this way: their
                // refusals are the claims that bring it back (see
                // `within_term_bound`).
                MessageBody::RequestVote(rv) => {
                    self.send_vote_response(msg.from, self.current_term, rv.pre_vote, false);
                }
                _ => {}
            }
            false
        } else {
            true
        }
    }

    /// Whether a leader is known to be alive: this node leads, or heard from
    /// its leader within the minimum election timeout.
    pub(crate) fn in_lease(&self, now: Time) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        match (&self.role, self.leader, self.last_leader_contact) {
            (RoleState::Leader(_), _, _) => true,
            (_, Some(_), Some(t)) => now.saturating_since(t) < self.config.election_timeout_min,
            _ => false,
        }
    }
}
