//! Safe reconfiguration, on by default (etcd's `--strict-reconfig-check`
//! is the anchor): no configuration change may leave the cluster without
//! a quorum that can answer.
//!
//! - `RAFT.ADD id peer client` (a voter) runs add-learner, catch-up,
//!   promote: the new member counts in majorities only once it has an
//!   authenticated link and holds everything committed. A member that
//!   never shows up (a typo in its address, a process never started) is
//!   removed as a learner again after `member_add_timeout_ms` without
//!   progress, and the command says so. Three `RAFT.ADD`s of members that
//!   do not exist once took a quorum away for good; now they leave the
//!   configuration as it was.
//! - A change that would leave fewer connected, caught-up voters than a
//!   quorum of the new configuration is refused, naming the members that
//!   are down or behind.
//! - A leader takes `RAFT.TRANSFER` only once it has led for the minimum
//!   election timeout, so a client looping on it moves leadership at most
//!   once per election timeout, cluster-wide.

use std::time::Instant;

use raft_proto::{LogIndex, Membership, MembershipChange, NodeId, Role, Term, Time};

use super::{ReplyTo, Server};
use crate::resp::Reply;

/// Entries a voter may trail the commit index by and still count as
/// caught up for the strict check: replication in flight under load.
/// (Promotion itself waits for the whole committed log: the node checks.)
pub const CAUGHT_UP_SLACK: u64 = 256;

/// A `RAFT.ADD` of a voter under way.
#[derive(Debug)]
pub(super) struct Join {
    /// The member being added.
    pub id: NodeId,
    /// Who asked.
    pub to: ReplyTo,
    pub step: JoinStep,
    /// Given up at this instant unless the learner makes progress (each
    /// gain of its match index moves the deadline).
    pub deadline: Instant,
    /// The learner's match index when the deadline was last moved.
    pub best_match: LogIndex,
}

/// Where a [`Join`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JoinStep {
    /// Waiting for the AddLearner entry at this index (of this term) to
    /// commit.
    AddingLearner(LogIndex, Term),
    /// A learner: waiting for its link and its log.
    CatchingUp,
    /// Waiting for the Promote entry to commit.
    Promoting(LogIndex, Term),
    /// It never caught up: waiting for its removal to commit; the reply
    /// is this error.
    GivingUp(LogIndex, Term, String),
}

/// One voter's health, as the strict check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Healthy,
    Down,
    Behind { match_index: LogIndex },
}

impl Server {
    /// Whether member `id` is connected (its link authenticated and up)
    /// and within [`CAUGHT_UP_SLACK`] of the commit index; this member
    /// always is.
    fn health(&self, id: NodeId, now: Instant) -> Health {
        if id == self.settings.id {
            return Health::Healthy;
        }
        let up = self.peers.status(now).iter().any(|l| l.id == id && l.up);
        if !up {
            return Health::Down;
        }
        let match_index = self
            .node
            .peer_progress()
            .iter()
            .find(|p| p.id == id)
            .map_or(LogIndex(0), |p| p.match_index);
        if match_index.0 + CAUGHT_UP_SLACK < self.node.commit_index().0 {
            return Health::Behind { match_index };
        }
        Health::Healthy
    }

    /// The strict check: `change` applied to the configuration in force
    /// must leave at least a quorum of its voters connected and caught up.
    /// The error is the reply.
    pub(super) fn check_quorum_after(&self, change: MembershipChange) -> Result<(), Reply> {
        let mut voters: Vec<NodeId> = self.node.membership().voters.clone();
        // A change the node refuses anyway (promoting a non-member) gets
        // the node's own error.
        if let MembershipChange::Promote(id) = change {
            if !self.node.membership().learners.contains(&id) {
                return Ok(());
            }
        }
        match change {
            MembershipChange::AddVoter(id) | MembershipChange::Promote(id) => {
                if !voters.contains(&id) {
                    voters.push(id);
                }
            }
            MembershipChange::Remove(id) => voters.retain(|v| *v != id),
            MembershipChange::AddLearner(_) => return Ok(()),
        }
        voters.sort();
        let now = Instant::now();
        if let MembershipChange::Promote(id) | MembershipChange::AddVoter(id) = change {
            let why = match self.health(id, now) {
                Health::Healthy => None,
                Health::Down => Some("its link is not up".to_string()),
                Health::Behind { match_index } => Some(format!(
                    "it has {match_index} of {} committed",
                    self.node.commit_index()
                )),
            };
            if let Some(why) = why {
                return Err(Reply::Error(format!(
                    "ERR member {id} is not connected and caught up yet ({why}); a learner \
                     becomes a voter once it is: retry once it has caught up"
                )));
            }
        }
        let quorum = voters.len() / 2 + 1;
        let mut healthy = 0;
        let mut bad = Vec::new();
        for &v in &voters {
            match self.health(v, now) {
                Health::Healthy => healthy += 1,
                Health::Down => bad.push(format!("member {v} is down")),
                Health::Behind { match_index } => bad.push(format!(
                    "member {v} is behind (has {match_index} of {} committed)",
                    self.node.commit_index()
                )),
            }
        }
        if healthy >= quorum {
            return Ok(());
        }
        Err(Reply::Error(format!(
            "ERR refused: after this change the {} voters {:?} need {quorum} connected and \
             caught up to elect and commit, and only {healthy} are: {}",
            voters.len(),
            voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            bad.join(", ")
        )))
    }

    /// `RAFT.ADD` of a voter: start with the learner (or, if it is one
    /// already, with its catch-up).
    pub(super) fn start_join(
        &mut self,
        key: usize,
        id: NodeId,
        addresses: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
        t: Time,
    ) {
        if let Some(j) = &self.join {
            let reply = Reply::Error(format!(
                "ERR member {} is being added; one RAFT.ADD at a time",
                j.id
            ));
            return self.clients[key].reply_now(reply);
        }
        let current = self.node.membership().clone();
        let now = Instant::now();
        let step = if current.learners.contains(&id) && self.same_addresses(id, addresses) {
            JoinStep::CatchingUp
        } else {
            match self.propose_change(MembershipChange::AddLearner(id), addresses, t) {
                Ok((index, term)) => {
                    log::info!(
                        "adding member {id}: as a learner first (index {index}), a voter once \
                         it has connected and caught up"
                    );
                    JoinStep::AddingLearner(index, term)
                }
                Err(reply) => return self.clients[key].reply_now(reply),
            }
        };
        let to = self.reserve_reply(key);
        self.join = Some(Join {
            id,
            to,
            step,
            deadline: now + self.settings.member_add_timeout,
            best_match: LogIndex(0),
        });
    }

    /// Moves the join along; called every loop turn (a leader wakes at
    /// least every heartbeat).
    pub(super) fn advance_join(&mut self, t: Time, now: Instant) {
        let Some(j) = &mut self.join else {
            return;
        };
        if j.step != JoinStep::CatchingUp {
            return;
        }
        let id = j.id;
        // Another change may have settled it meanwhile (an operator's
        // RAFT.PROMOTE or RAFT.REMOVE): never remove a member that became
        // a voter, never promote one that is gone.
        let m = self.node.membership().clone();
        if m.is_voter(id) {
            log::info!("member {id} added as a voter (promoted by another change)");
            let reply = self.members_reply(&m);
            return self.end_join(reply);
        }
        if !m.contains(id) {
            return self.end_join(Reply::Error(format!(
                "ERR member {id} was removed by another change while it was being added"
            )));
        }
        let matched = self
            .node
            .peer_progress()
            .iter()
            .find(|p| p.id == id)
            .map_or(LogIndex(0), |p| p.match_index);
        let j = self.join.as_mut().expect("checked above");
        if matched > j.best_match {
            j.best_match = matched;
            j.deadline = now + self.settings.member_add_timeout;
        }
        let deadline = j.deadline;
        let up = self.peers.status(now).iter().any(|l| l.id == id && l.up);
        if up && matched >= self.node.commit_index() {
            if let Err(reply) = self.check_quorum_after(MembershipChange::Promote(id)) {
                return self.end_join(reply);
            }
            match self.propose_change(MembershipChange::Promote(id), None, t) {
                Ok((index, term)) => {
                    log::info!("adding member {id}: caught up, promoting it (index {index})");
                    self.join.as_mut().expect("checked above").step =
                        JoinStep::Promoting(index, term);
                    return;
                }
                // The node may refuse for now (a change in progress, the
                // learner fell behind again): retry next turn, until the
                // deadline below.
                Err(reply) => log::debug!("adding member {id}: promotion not yet: {reply:?}"),
            }
        }
        if now < deadline {
            return;
        }
        let why = if up {
            format!(
                "ERR member {id} connected but did not catch up within {} ms without progress \
                 (it has {matched} of {} committed); it was removed again",
                self.settings.member_add_timeout.as_millis(),
                self.node.commit_index()
            )
        } else {
            format!(
                "ERR member {id} never connected within {} ms (is it running, with --join, at \
                 the address given?); it was removed again",
                self.settings.member_add_timeout.as_millis()
            )
        };
        log::warn!("adding member {id}: giving up: {}", &why[4..]);
        match self.propose_change(MembershipChange::Remove(id), None, t) {
            Ok((index, term)) => {
                self.join.as_mut().expect("checked above").step =
                    JoinStep::GivingUp(index, term, why);
            }
            Err(reply) => {
                log::warn!("adding member {id}: could not remove the learner yet: {reply:?}");
                self.join.as_mut().expect("checked above").deadline = now + self.settings.heartbeat;
            }
        }
    }

    /// A configuration entry applied: the join's step at that index is
    /// done (or lost, if another term's entry took its place).
    pub(super) fn join_applied(&mut self, index: LogIndex, term: Term, m: &Membership) {
        let Some(j) = &self.join else {
            return;
        };
        let (at, want) = match &j.step {
            JoinStep::AddingLearner(i, t) | JoinStep::Promoting(i, t) => (*i, *t),
            JoinStep::GivingUp(i, t, _) => (*i, *t),
            JoinStep::CatchingUp => return,
        };
        if at != index {
            return;
        }
        if want != term {
            return self.end_join(Reply::Error(format!(
                "ERR adding member {} was lost to a leader change; see RAFT.MEMBERS and retry",
                j.id
            )));
        }
        match j.step.clone() {
            JoinStep::AddingLearner(..) => {
                self.join.as_mut().expect("checked above").step = JoinStep::CatchingUp;
            }
            JoinStep::Promoting(..) => {
                log::info!("member {} added as a voter", j.id);
                let reply = self.members_reply(m);
                self.end_join(reply);
            }
            JoinStep::GivingUp(_, _, why) => self.end_join(Reply::Error(why)),
            JoinStep::CatchingUp => {}
        }
    }

    /// Leadership lost: a join under way is left where it is.
    pub(super) fn abandon_join(&mut self) {
        if let Some(j) = &self.join {
            let msg = format!(
                "ERR leadership lost while adding member {}; it may be a learner now (see \
                 RAFT.MEMBERS): RAFT.ADD it again on the new leader, or RAFT.REMOVE it",
                j.id
            );
            self.end_join(Reply::Error(msg));
        }
    }

    fn end_join(&mut self, reply: Reply) {
        if let Some(j) = self.join.take() {
            self.deliver(j.to, reply);
        }
    }

    /// `RAFT.TRANSFER` on a leader that took over less than the minimum
    /// election timeout ago is refused: leadership moves at most once per
    /// election timeout however often it is asked.
    pub(super) fn transfer_too_soon(&self, now: Instant) -> Option<Reply> {
        let since = self.led_since?;
        let led = now.saturating_duration_since(since);
        let min = self.settings.election_timeout_min;
        (led < min).then(|| {
            Reply::Error(format!(
                "ERR this member has led for {} ms; leadership moves at most once per \
                 election timeout ({} ms): retry in {} ms",
                led.as_millis(),
                min.as_millis(),
                (min - led).as_millis().max(1)
            ))
        })
    }

    /// Tracks when this member became leader (for [`transfer_too_soon`]).
    ///
    /// [`transfer_too_soon`]: Server::transfer_too_soon
    pub(super) fn note_role(&mut self, role: Role) {
        self.led_since = (role == Role::Leader).then(Instant::now);
    }
}
