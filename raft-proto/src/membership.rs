//! Configuration changes (thesis chapter 4) and leadership transfer
//! (thesis §3.10).
//!
//! # Why single-server changes, not joint consensus
//!
//! A change adds or removes at most one voter, so every majority of the old
//! voters overlaps every majority of the new ones and no two leaders can be
//! elected by disjoint majorities while the change is under way (§4.1).
//! Joint consensus allows arbitrary changes in one step, but needs two
//! configurations in force at once, a second entry to leave the joint
//! state, and double quorum arithmetic on every commit and vote. Operators
//! replace, add and remove one machine at a time anyway; replacing member
//! 1 by member 4 is three single-server steps (add 4 as a learner, promote
//! it, remove 1), each committed before the next starts. We choose the
//! simpler mechanism with the smaller surface for bugs, as etcd and
//! hashicorp/raft do for their common paths.
//!
//! The rules, all enforced by [`Node::propose_membership`]:
//!
//! - a configuration takes effect on each member when it is appended to
//!   that member's log, committed or not, and is undone if the entry is
//!   truncated (the log, `RaftLog`, tracks it);
//! - one change at a time: a new one is refused until the previous one is
//!   committed;
//! - the known fix to single-server changes (Ongaro, raft-dev, 2015): a
//!   leader proposes a change only once it has committed an entry of its
//!   own term, so a change of a deposed leader's term that some voters
//!   never saw cannot combine with this one into two disjoint majorities;
//! - a leader that removes itself keeps leading (without counting itself
//!   in majorities, and taking no new proposals, which the step-down would
//!   cut off) until the change commits, then hands over to the most
//!   up-to-date voter with TimeoutNow and steps down (§4.2.2);
//! - learners receive the log and snapshots and count for nothing; a
//!   learner is promoted only once it holds everything committed, so the
//!   new voter does not stall commits while it catches up (§4.2.1);
//! - a removed member learns it: the leader keeps replicating to it (log
//!   and commit index, counting it for nothing) until it acknowledges an
//!   append sent after the removal committed that reaches the removing
//!   configuration, or for two maximum election timeouts after the commit.
//!   It then knows ([`Node::is_removed`]), reports it once, serves no
//!   reads, and, as every non-voter, never campaigns. One that was away
//!   meanwhile may never learn; it cannot disrupt either: its log lacks
//!   the removal, so the voters refuse its pre-votes (§4.2.3, with
//!   PreVote and CheckQuorum's lease). Added back, it is a member again.
//!
//! The configuration lives in the log (the first leader of a new cluster
//! writes the bootstrap one as entry 1) and in snapshots
//! ([`crate::SnapshotMeta::membership`]); [`crate::Config::voters`] only
//! bootstraps.

use bytes::Bytes;

use crate::action::{Event, MembershipError, ProposeError, RoleChangeReason, TransferError};
use crate::leader::{Departing, LeaderState, Transfer};
use crate::message::MessageBody;
use crate::node::{Node, RoleState};
use crate::progress::{Progress, ProgressState};
use crate::types::{EntryId, EntryPayload, LogIndex, Membership, MembershipChange, NodeId, Time};

/// What the leader knows of one member's log (for `RAFT.MEMBERS`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PeerProgress {
    /// The member.
    pub id: NodeId,
    /// Highest index known replicated on it.
    pub match_index: LogIndex,
    /// How the leader sends to it: `probe`, `replicate` or `snapshot`.
    pub state: &'static str,
    /// Heard from within the current CheckQuorum window.
    pub recent_active: bool,
}

impl Node {
    /// The configuration in force: the latest in this node's log, committed
    /// or not (thesis §4.1).
    pub fn membership(&self) -> &Membership {
        self.log.membership()
    }

    /// Index of the entry (or snapshot) that holds the configuration in
    /// force; it is committed once [`Node::commit_index`] reaches it.
    pub fn membership_index(&self) -> LogIndex {
        self.log.membership_index()
    }

    /// The configuration in force after the entry `index`, for a driver
    /// that takes a snapshot there (it goes into
    /// [`crate::SnapshotMeta::membership`]). `None` below the log's start.
    pub fn membership_at(&self, index: LogIndex) -> Option<&Membership> {
        (index >= self.log.start_index()).then(|| self.log.membership_at(index))
    }

    /// On the leader, what it knows of every other member's log; empty
    /// elsewhere.
    pub fn peer_progress(&self) -> Vec<PeerProgress> {
        let RoleState::Leader(ls) = &self.role else {
            return Vec::new();
        };
        ls.progress
            .iter()
            .filter(|(id, _)| !ls.departing.contains_key(id))
            .map(|(&id, pr)| PeerProgress {
                id,
                match_index: pr.match_index,
                state: match pr.state {
                    ProgressState::Probe { .. } => "probe",
                    ProgressState::Replicate { .. } => "replicate",
                    ProgressState::Snapshot { .. } => "snapshot",
                },
                recent_active: pr.recent_active,
            })
            .collect()
    }

    /// Proposes a single-server configuration change (see the module
    /// docs), with `context` as the new configuration's driver context.
    /// On success the configuration is in force at once on this leader;
    /// it is done when the returned entry is applied. Refused with
    /// [`ProposeError::Membership`] when a change is under way, this
    /// leader has not committed an entry of its term yet, or the change
    /// does not fit the configuration in force.
    pub fn propose_membership(
        &mut self,
        now: Time,
        change: MembershipChange,
        context: Bytes,
    ) -> Result<EntryId, ProposeError> {
        if self.installing_snapshot() || self.shut_down {
            return Err(ProposeError::NotLeader { leader: None });
        }
        let RoleState::Leader(ls) = &self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(target) = self.leadership_moving() {
            return Err(ProposeError::TransferInProgress { target });
        }
        if !self.committed_in_current_term() || self.log.membership_index() > self.commit_index {
            return Err(ProposeError::Membership(MembershipError::ChangeInProgress));
        }
        if self.log.last_index().0 - self.commit_index.0 >= self.config.max_uncommitted_entries {
            return Err(ProposeError::Busy);
        }
        let current = self.log.membership();
        let mut next = Membership {
            voters: current.voters.clone(),
            learners: current.learners.clone(),
            context,
        };
        let refuse = |e| Err(ProposeError::Membership(e));
        match change {
            MembershipChange::AddLearner(id) | MembershipChange::AddVoter(id) => {
                if current.contains(id) {
                    return refuse(MembershipError::AlreadyMember(id));
                }
                let list = if matches!(change, MembershipChange::AddLearner(_)) {
                    &mut next.learners
                } else {
                    &mut next.voters
                };
                list.push(id);
                list.sort();
            }
            MembershipChange::Promote(id) => {
                if !current.is_learner(id) {
                    return refuse(MembershipError::UnknownMember(id));
                }
                let match_index = ls.progress.get(&id).map_or(LogIndex(0), |p| p.match_index);
                if match_index < self.commit_index {
                    return refuse(MembershipError::LearnerBehind {
                        id,
                        match_index,
                        commit_index: self.commit_index,
                    });
                }
                next.learners.retain(|&l| l != id);
                next.voters.push(id);
                next.voters.sort();
            }
            MembershipChange::Remove(id) => {
                if current.is_voter(id) {
                    if current.voters.len() == 1 {
                        return refuse(MembershipError::LastVoter);
                    }
                    next.voters.retain(|&v| v != id);
                } else if current.is_learner(id) {
                    next.learners.retain(|&l| l != id);
                } else {
                    return refuse(MembershipError::UnknownMember(id));
                }
            }
        }
        if let Err(rule) = next.check() {
            return refuse(MembershipError::Invalid(rule));
        }
        let id = self.leader_append(now, EntryPayload::Configuration(Box::new(next)));
        self.sync_membership(now);
        self.leader_replicate_all();
        self.debug_check_invariants();
        Ok(id)
    }

    /// Starts a leadership transfer (thesis §3.10) to `target`, or to the
    /// voter whose log is furthest along. The leader refuses proposals,
    /// brings the target's log up to its own, then sends it TimeoutNow;
    /// the target campaigns at once and wins (its log is the most
    /// up to date). If that has not happened within an election timeout
    /// the transfer is given up ([`Event::TransferAborted`]). Returns the
    /// target; a transfer to this node itself is done at once.
    pub fn transfer_leadership(
        &mut self,
        now: Time,
        target: Option<NodeId>,
    ) -> Result<NodeId, TransferError> {
        if self.installing_snapshot() || self.shut_down {
            return Err(TransferError::NotLeader { leader: None });
        }
        let me = self.config.id;
        let membership = self.log.membership();
        let RoleState::Leader(ls) = &mut self.role else {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        };
        let target = match target {
            Some(t) if t == me => return Ok(me),
            Some(t) if !membership.is_voter(t) => return Err(TransferError::NotAVoter(t)),
            Some(t) => t,
            None => membership
                .voters
                .iter()
                .filter(|&&v| v != me)
                .max_by_key(|&&v| {
                    // Furthest log first; among equals the lowest id.
                    let m = ls.progress.get(&v).map_or(LogIndex(0), |p| p.match_index);
                    (m, std::cmp::Reverse(v))
                })
                .copied()
                .ok_or(TransferError::NoTarget)?,
        };
        ls.transfer = Some(Transfer {
            target,
            deadline: now + self.config.election_timeout_max,
        });
        self.leader_maybe_send_timeout_now(target);
        self.send_append(target, false);
        self.debug_check_invariants();
        Ok(target)
    }

    /// On a leader whose leadership is about to move, where it moves: the
    /// target of a transfer, or, once the leader removed itself from the
    /// voters (it leads only until that commits, thesis §4.2.2), the voter
    /// furthest along. A proposal then would be cut off by the step-down,
    /// so it is refused with [`ProposeError::TransferInProgress`] and the
    /// client goes there.
    pub(crate) fn leadership_moving(&self) -> Option<NodeId> {
        let RoleState::Leader(ls) = &self.role else {
            return None;
        };
        if let Some(t) = ls.transfer {
            return Some(t.target);
        }
        let m = self.log.membership();
        if m.is_voter(self.config.id) {
            return None;
        }
        m.voters.iter().copied().max_by_key(|v| {
            let matched = ls.progress.get(v).map_or(LogIndex(0), |p| p.match_index);
            (matched, std::cmp::Reverse(*v))
        })
    }

    /// Sends TimeoutNow to the transfer's target if its log matches ours.
    /// Called when its match index moves and at every heartbeat (a lost
    /// TimeoutNow is sent again; a late duplicate carries an old term and
    /// is ignored).
    pub(crate) fn leader_maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let RoleState::Leader(ls) = &self.role else {
            return;
        };
        let caught_up = ls.transfer.is_some_and(|t| t.target == peer)
            && ls
                .progress
                .get(&peer)
                .is_some_and(|p| p.match_index == last);
        if caught_up {
            self.send(peer, MessageBody::TimeoutNow);
        }
    }

    /// TimeoutNow from the leader: campaign at once, past PreVote (the
    /// leader itself asked; its followers grant past their lease).
    pub(crate) fn handle_timeout_now(&mut self, now: Time, from: NodeId) {
        if self.leader != Some(from)
            || !self.log.membership().is_voter(self.config.id)
            || self.current_term >= crate::Term::MAX
        {
            return;
        }
        self.start_election(now, crate::ElectionReason::LeadershipTransfer { from });
    }

    /// After a commit: a leader whose removal from the voters is now
    /// committed hands over to the most up-to-date voter and steps down.
    pub(crate) fn leader_step_down_if_removed(&mut self, now: Time) {
        let me = self.config.id;
        let last = self.log.last_index();
        let membership = self.log.membership();
        let RoleState::Leader(ls) = &self.role else {
            return;
        };
        if membership.is_voter(me) || self.log.membership_index() > self.commit_index {
            return;
        }
        // A successor whose log matches ours wins at once; otherwise the
        // voters elect one after their election timeout.
        let successor = membership
            .voters
            .iter()
            .copied()
            .find(|v| ls.progress.get(v).is_some_and(|p| p.match_index == last));
        if let Some(s) = successor {
            self.send(s, MessageBody::TimeoutNow);
        }
        let term = self.current_term;
        self.become_follower(now, term, None, RoleChangeReason::RemovedFromConfiguration);
        // That was the report of the removal (`Node::note_removal`).
        self.removal_reported = self.is_removed();
    }

    /// Every member but `me`, sorted.
    pub(crate) fn peers_of(m: &Membership, me: NodeId) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = m.members().filter(|&p| p != me).collect();
        peers.sort();
        peers
    }

    /// Follows the log's configuration: announces a new one, and on the
    /// leader starts replicating to new members (a probe at once) and
    /// marks the ones that left as departing (it tells them of their
    /// removal, see `Departing`). Called after every input that may have
    /// changed the log.
    pub(crate) fn sync_membership(&mut self, now: Time) {
        let _ = now;
        if self.log.config_epoch() == self.membership_epoch {
            return;
        }
        self.membership_epoch = self.log.config_epoch();
        if *self.log.membership() == self.membership {
            return;
        }
        self.membership = self.log.membership().clone();
        self.peers = Self::peers_of(&self.membership, self.config.id);
        // Only voters vouch for terms: one entry per voter at most.
        let m = &self.membership;
        self.term_claims.retain(|&id, _| m.is_voter(id));
        if m.contains(self.config.id) {
            self.was_member = true;
        }
        let config_index = self.log.membership_index();
        self.events.push_back(Event::MembershipChanged {
            index: self.log.membership_index(),
            membership: Box::new(self.membership.clone()),
        });
        let next = self.log.last_index().next();
        let peers = self.peers.clone();
        let voters = self.membership.voters.clone();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        // Who left is told so before it is forgotten; who is back is a
        // member again.
        let gone: Vec<NodeId> = ls
            .progress
            .keys()
            .filter(|p| !peers.contains(p) && !ls.departing.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            let d = Departing {
                config_index,
                committed: None,
            };
            ls.departing.insert(p, d);
        }
        ls.departing.retain(|p, _| !peers.contains(p));
        let mut added = Vec::new();
        for &p in &peers {
            ls.progress.entry(p).or_insert_with(|| {
                added.push(p);
                Progress::new(next)
            });
        }
        if let Some(t) = ls.transfer.filter(|t| !voters.contains(&t.target)) {
            ls.transfer = None;
            self.events
                .push_back(Event::TransferAborted { target: t.target });
        }
        for p in added {
            self.send_append(p, true);
        }
    }

    /// The voters other than this node.
    pub(crate) fn other_voters(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let m = self.log.membership();
        m.voters.iter().copied().filter(|&v| v != me).collect()
    }
}

impl LeaderState {
    /// Gives the transfer up once its deadline passed; its target, to
    /// report ([`Event::TransferAborted`]).
    pub(crate) fn expire_transfer(&mut self, now: Time) -> Option<NodeId> {
        let t = self.transfer.filter(|t| now >= t.deadline)?;
        self.transfer = None;
        Some(t.target)
    }
}
