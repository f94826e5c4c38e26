//! What the cluster checks after every step, on top of the node's own
//! invariants and the safety checker's: no correct member taken for a
//! faulty one, a removal reported once, a leader's wake-up that sends.

use super::Cluster;
use crate::sim::Violation;
use crate::{Event, Message, NodeId, Role, Term};

impl Cluster {
    /// An event `id` reported: traced, counted, and checked (the network
    /// here only delays, loses, duplicates and reorders what correct
    /// members send, so a peer fault is a violation, unless a test forged
    /// the message).
    pub(super) fn on_event(
        &mut self,
        id: NodeId,
        ev: Event,
        removal_reports: &mut u64,
    ) -> Result<(), Violation> {
        if let Some(t) = &mut self.trace {
            t.push(format!("{} n{id} {}", self.now, describe(&ev)));
        }
        match ev {
            Event::PeerFault { .. } if self.forging => {
                self.peer_faults.push((id, ev));
                Ok(())
            }
            // The network here only delays, loses, duplicates
            // and reorders what correct members send.
            Event::PeerFault { .. } => Err(Violation(format!(
                "n{id} took a correct member's message for a fault: {}",
                describe(&ev)
            ))),
            Event::ElectionStarted {
                reason: crate::ElectionReason::LeadershipTransfer { .. },
                ..
            } => {
                self.transfer_elections += 1;
                Ok(())
            }
            Event::RoleChanged {
                reason: crate::RoleChangeReason::RemovedFromConfiguration,
                ..
            } => {
                *removal_reports += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The checks after `id` took an input and its output was carried
    /// out (`result` so far): its invariants, its removal reported once
    /// and only when it knows it, the safety checker's view of its state,
    /// and each message it sends (`outbox`).
    pub(super) fn check_after_input(
        &mut self,
        id: NodeId,
        mut result: Result<(), Violation>,
        removal_reports: u64,
        outbox: &[Message],
    ) -> Result<(), Violation> {
        let member = &self.members[&id];
        let node = member.node.as_ref().expect("running");
        node.check_invariants();
        let (role, term, commit) = (node.role(), node.term(), node.commit_index());
        // A member knows its removal once its removing configuration is
        // committed: it reports that once, and never campaigns after.
        let removed = node.is_removed();
        self.removals += removal_reports;
        if removal_reports > 0 && (!removed || !self.removal_reported.insert(id)) {
            result = result.and(Err(Violation(format!(
                "n{id} reported a removal {removal_reports} time(s) (removed: {removed}, reported before: {})",
                self.removal_reported.contains(&id)
            ))));
        }
        if !removed {
            self.removal_reported.remove(&id);
        } else if role != Role::Follower {
            result = result.and(Err(Violation(format!(
                "n{id} knows it was removed and is {role}"
            ))));
        }
        if result.is_ok() {
            result = self
                .checker
                .after_step(id, role, term, commit, &member.disk.written_log);
        }
        for m in outbox {
            if result.is_ok() {
                result = self.checker.on_send(m);
            }
        }
        result
    }

    /// After `id`'s timer fired: a leader's only timer is its heartbeat,
    /// so a wake-up that sent nothing (`sent`) while it stays leader (in
    /// the term it had `before`) with someone to send to is a timer that
    /// costs a wake-up for nothing (issue 12: a member at rest wakes only
    /// to send or receive).
    pub(super) fn check_leader_wake_up(&mut self, id: NodeId, before: (Role, Term), sent: usize) {
        let node = self.members[&id].node.as_ref().expect("up");
        let m = node.membership();
        let others = m.voters.iter().chain(&m.learners).any(|&p| p != id);
        if before.0 == Role::Leader
            && (node.role(), node.term()) == before
            && others
            && sent == 0
            && self.violation.is_none()
        {
            self.violation = Some(Violation(format!(
                "at {}: leader n{id} woke at its deadline and sent nothing",
                self.now
            )));
        }
    }
}

/// One line for an event, as the server logs it.
pub fn describe(ev: &Event) -> String {
    match ev {
        Event::ElectionStarted {
            term,
            pre_vote,
            reason,
        } => {
            let what = if *pre_vote { "pre-vote" } else { "election" };
            format!("{what} for term {term} ({reason})")
        }
        Event::RoleChanged { role, term, reason } => {
            format!("became {role} in term {term} ({reason})")
        }
        Event::LeaderChanged {
            leader: Some(l),
            term,
        } => format!("leader is n{l} (term {term})"),
        Event::LeaderChanged { leader: None, term } => format!("no leader (term {term})"),
        Event::PeerFault { peer, fault } => format!("dropped a message from n{peer}: {fault}"),
        Event::MembershipChanged { index, membership } => format!(
            "configuration at {index}: voters {:?} learners {:?}",
            membership.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            membership.learners.iter().map(|v| v.0).collect::<Vec<_>>()
        ),
        Event::TransferAborted { target } => {
            format!("leadership transfer to n{target} given up")
        }
    }
}
