//! The follower (§5.2, §5.3): its state, its step function, AppendEntries
//! on the receiving side (which a candidate also reaches once it hears
//! from the leader of its term), the leader's snapshot coming in (§7), and
//! the reads a follower serves by asking its leader for a read index
//! (thesis §6.4).

use std::collections::{BTreeMap, VecDeque};

use crate::action::{Action, Event, PeerFault, ReadError, Role, RoleChangeReason};
use crate::message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, ReadIndexRequest, ReadIndexResponse,
};
use crate::node::{Node, RoleState};
use crate::types::{LogIndex, NodeId, SnapshotMeta, Term, Time};

/// What only a follower holds (STYLE §6): it goes when the node stops
/// following, but for the snapshot being received, which a pre-vote in
/// the same term keeps (`RoleState::PreCandidate`).
#[derive(Debug, Default)]
pub(crate) struct FollowerState {
    /// A snapshot being received from the leader.
    pub(crate) incoming: Option<IncomingSnapshot>,
    /// Set between `Action::InstallSnapshot` and the driver's
    /// `handle_snapshot_installed`. Inputs in between (a driver that feeds
    /// several messages before it drains) are dropped or refused: a
    /// message as if lost, a proposal as if sent to a follower. Nothing
    /// changes the role meanwhile.
    pub(crate) installing: Option<Installing>,
    /// Reads this follower serves, by the caller's id (thesis §6.4).
    pub(crate) remote_reads: BTreeMap<u64, RemoteRead>,
    /// AppendEntries received from its leader so far (paces read retries;
    /// only differences count, and every read is of this follower state).
    pub(crate) leader_messages: u64,
}

/// A snapshot being received from the leader: which, and how much of it.
#[derive(Clone, Debug)]
pub(crate) struct IncomingSnapshot {
    pub(crate) leader: NodeId,
    pub(crate) term: Term,
    pub(crate) meta: SnapshotMeta,
    /// Bytes handed to the driver so far, from offset 0.
    pub(crate) received: u64,
}

/// A linearizable read served by this follower: waiting for the leader's
/// read index, then for the state machine to apply up to it.
#[derive(Clone, Debug)]
pub(crate) struct RemoteRead {
    pub(crate) read_index: Option<LogIndex>,
    /// `leader_messages` when the request was (last) sent: one lost on
    /// the way is sent again once the leader has been heard from twice.
    pub(crate) asked_at: u64,
}

/// A received snapshot handed to the driver to check and install.
#[derive(Clone, Debug)]
pub(crate) struct Installing {
    pub(crate) from: NodeId,
    pub(crate) meta: SnapshotMeta,
    pub(crate) round: u64,
}

impl IncomingSnapshot {
    pub(crate) fn check_invariants(&self) {
        assert!(
            self.received < self.meta.len,
            "invariant: a complete snapshot is installed, not still incoming"
        );
    }
}

impl FollowerState {
    pub(crate) fn check_invariants(&self) {
        if let Some(inc) = &self.incoming {
            inc.check_invariants();
        }
        assert!(
            self.installing.is_none() || self.incoming.is_none(),
            "invariant: a snapshot being installed is no longer incoming"
        );
    }

    /// Takes a chunk of the leader's snapshot in (see
    /// [`Node::handle_install_snapshot`]) and hands what it carries to the
    /// driver. Returns the offset to answer with, or `None` once the
    /// snapshot is complete and handed over to be installed: it is
    /// answered when the driver reports the install.
    fn receive_chunk(
        &mut self,
        from: NodeId,
        term: Term,
        is: InstallSnapshot,
        persist: &mut VecDeque<Action>,
    ) -> Option<u64> {
        let meta = is.meta;
        let same =
            |inc: &IncomingSnapshot| inc.leader == from && inc.term == term && inc.meta == meta;
        if is.offset == 0 && !self.incoming.as_ref().is_some_and(same) {
            self.incoming = Some(IncomingSnapshot {
                leader: from,
                term,
                meta: meta.clone(),
                received: 0,
            });
        }
        let Some(inc) = self.incoming.as_mut().filter(|inc| same(inc)) else {
            // A chunk of a transfer this node is not receiving (it
            // restarted, or another one began): start from the beginning.
            return Some(0);
        };
        if is.offset == inc.received && !is.data.is_empty() {
            inc.received += is.data.len() as u64;
            let complete = inc.received == meta.len;
            persist.push_back(Action::WriteSnapshotChunk {
                meta: meta.clone(),
                offset: is.offset,
                data: is.data,
            });
            if complete {
                // Answered once the driver has checked and installed it.
                self.incoming = None;
                self.installing = Some(Installing {
                    from,
                    meta: meta.clone(),
                    round: is.round,
                });
                persist.push_back(Action::InstallSnapshot { meta });
                return None;
            }
        }
        Some(inc.received)
    }
}

impl Node {
    /// Makes this node a follower in `term` (at least the current one),
    /// of `leader` if it is known: what a leader (its reads fail) or a
    /// candidate held goes; the follower's own state stays with a
    /// follower, and a transfer of this term comes back from a pre-vote.
    pub(crate) fn become_follower(
        &mut self,
        now: Time,
        term: Term,
        leader: Option<NodeId>,
        reason: RoleChangeReason,
    ) {
        assert!(
            term >= self.current_term,
            "term invariant: terms never decrease"
        );
        let was = self.role();
        let new_term = term > self.current_term;
        if new_term {
            self.current_term = term;
            self.voted_for = None;
            self.hard_state_dirty = true;
            // Claims at or below our term are met.
            self.term_claims.retain(|_, t| *t > term);
        }
        if let RoleState::Leader(ls) = &mut self.role {
            let leader_hint = leader;
            let mut refused = Vec::new();
            for read in ls.reads.drain() {
                match read.from {
                    None => self.read_results.push_back(Action::ReadFailed {
                        id: read.id,
                        error: ReadError::NotLeader {
                            leader: leader_hint,
                        },
                    }),
                    Some(peer) => refused.push((peer, read.id)),
                }
            }
            for (peer, id) in refused {
                self.send_read_index_response(peer, id, None);
            }
        }
        // The follower's own state: a follower keeps its own, a
        // pre-candidate back in its term the snapshot it was receiving;
        // whatever else the old role held goes with it.
        let mut follower = match std::mem::replace(
            &mut self.role,
            RoleState::Follower(FollowerState::default()),
        ) {
            RoleState::Follower(follower) => follower,
            RoleState::PreCandidate { incoming, .. } => FollowerState {
                incoming,
                ..FollowerState::default()
            },
            RoleState::Candidate { .. } | RoleState::Leader(_) => FollowerState::default(),
        };
        if new_term {
            // A transfer belongs to its leader's term.
            follower.incoming = None;
        }
        self.role = RoleState::Follower(follower);
        self.set_leader(leader);
        if leader.is_some() {
            self.last_leader_contact = Some(now);
        }
        self.election_reason = None;
        self.reset_election_deadline(now);
        // A follower that moves to a newer term says so too, so that every
        // term change shows in the logs.
        if was != Role::Follower || new_term {
            self.events.push_back(Event::RoleChanged {
                role: Role::Follower,
                term: self.current_term,
                reason,
            });
        }
    }

    /// A follower's messages, after the term rules (their term is ours, or
    /// for a pre-vote request the next one).
    pub(crate) fn step_follower(&mut self, now: Time, msg: Message) {
        match msg.body {
            MessageBody::RequestVote(rv) => self.handle_request_vote(now, msg.from, msg.term, rv),
            MessageBody::AppendEntries(ae) => {
                if self.heard_from_leader(now, msg.from, msg.term) {
                    self.handle_append_entries(msg.from, ae);
                    self.retry_remote_reads();
                }
            }
            // A follower serves no one else's reads.
            MessageBody::ReadIndexRequest(r) => self.send_read_index_response(msg.from, r.id, None),
            MessageBody::ReadIndexResponse(r) => self.handle_read_index_response(msg.from, r),
            MessageBody::InstallSnapshot(is) => {
                if self.heard_from_leader(now, msg.from, msg.term) {
                    self.handle_install_snapshot(msg.from, is);
                }
            }
            // Late answers: to a campaign this node gave up, or to appends
            // it sent while it led this term (before CheckQuorum deposed it).
            MessageBody::RequestVoteResponse(_)
            | MessageBody::AppendEntriesResponse(_)
            | MessageBody::InstallSnapshotResponse(_) => {}
            MessageBody::TimeoutNow => self.handle_timeout_now(now, msg.from),
        }
    }

    /// A message only the leader of this term sends came from `from`:
    /// follow it, unless this term's leader is someone else. A term has one
    /// leader (§5.2); once we know it, such a message from anyone else is
    /// forged, and is dropped and reported.
    fn heard_from_leader(&mut self, now: Time, from: NodeId, term: crate::Term) -> bool {
        if let Some(leader) = self.leader.filter(|&l| l != from) {
            self.peer_fault(from, PeerFault::SecondLeader { term, leader });
            return false;
        }
        self.set_leader(Some(from));
        self.last_leader_contact = Some(now);
        self.election_reason = None;
        self.reset_election_deadline(now);
        true
    }

    /// What makes an AppendEntries of our term or a later one impossible,
    /// given our log: a `(index, term)` pair, for `prev_log_index` or an
    /// entry, that differs from an entry we know committed. A leader of our
    /// term or a later one holds every committed entry (§5.4.1, Leader
    /// Completeness), so by Log Matching it agrees with us on all of them.
    /// (Entries below the log start are committed too, but compacted: they
    /// cannot be compared, and are skipped.) Checked before anything
    /// changes, so `append_to_log` may assert it.
    pub(crate) fn check_append_entries(&self, ae: &AppendEntries) -> Result<(), PeerFault> {
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
        let start = self.log.start_index();
        let (prev, prev_term, entries) = if ae.prev_log_index < start {
            // A late AppendEntries, sent before the leader knew we had
            // moved past it: what lies below our log start is committed
            // and compacted, and equals the leader's (§5.4.1; an entry at
            // the start itself was checked against its remembered term).
            // Skip that part and check the rest from the start.
            let skip = (start.0 - ae.prev_log_index.0) as usize;
            if ae.entries.len() <= skip {
                let match_index = ae.prev_log_index.plus(ae.entries.len() as u64);
                return AppendResult::Success { match_index };
            }
            let start_term = self
                .log
                .term_at(start)
                .expect("the log start's term is kept");
            (start, start_term, &ae.entries[skip..])
        } else {
            (ae.prev_log_index, ae.prev_log_term, &ae.entries[..])
        };
        match self.log.term_at(prev) {
            Some(t) if t == prev_term => {}
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
        for (i, e) in entries.iter().enumerate() {
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
            let new = entries[i..].to_vec();
            for e in &new {
                self.log.push(e.clone());
            }
            self.persist.push_back(Action::AppendLog(new));
        }

        let match_index = prev.plus(entries.len() as u64);
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

    /// A chunk of the leader's snapshot (§7). The follower takes a chunk
    /// only at the offset it expects next, and answers with that offset,
    /// so a lost or reordered chunk costs the leader a resend from there
    /// and a transfer resumes where it stopped, as long as the leader,
    /// its term and the snapshot stay the same. A snapshot that covers
    /// only what this node has committed already is not needed: the answer
    /// says "done" at once, and the entries after it stay.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, is: InstallSnapshot) {
        let (last_index, len, round) = (is.meta.last_index, is.meta.len, is.round);
        if last_index <= self.commit_index {
            self.send_snapshot_response(from, last_index, len, round);
            return;
        }
        let term = self.current_term;
        let RoleState::Follower(follower) = &mut self.role else {
            unreachable!("only a follower takes a snapshot in: a candidate steps down first");
        };
        if let Some(next_offset) = follower.receive_chunk(from, term, is, &mut self.persist) {
            self.send_snapshot_response(from, last_index, next_offset, round);
        }
    }

    /// Whether a received snapshot is with the driver to be installed
    /// (`FollowerState::installing`): inputs wait for the install.
    pub(crate) fn installing_snapshot(&self) -> bool {
        matches!(&self.role, RoleState::Follower(f) if f.installing.is_some())
    }

    /// The driver carried out [`Action::InstallSnapshot`]: `installed`
    /// says whether the snapshot was valid and is now this member's, with
    /// §7's rule applied to the stored log. Until it comes, the node drops
    /// messages (as if lost) and refuses proposals and reads. It then takes the snapshot as its state (log, commit
    /// and applied index) and tells the leader; an invalid one is reported
    /// as [`Event::PeerFault`] and the transfer starts again.
    pub fn handle_snapshot_installed(&mut self, now: Time, installed: bool) {
        let inst = match &mut self.role {
            RoleState::Follower(follower) => {
                follower.incoming = None;
                follower.installing.take()
            }
            _ => None,
        }
        .expect("handle_snapshot_installed without Action::InstallSnapshot");
        if self.shut_down {
            return;
        }
        let meta = inst.meta;
        let round = inst.round;
        if !installed {
            let fault = PeerFault::BadSnapshot {
                last_index: meta.last_index,
            };
            self.peer_fault(inst.from, fault);
            return;
        }
        assert!(
            meta.last_index > self.commit_index,
            "only a snapshot beyond the commit index is installed"
        );
        self.log
            .install_snapshot(meta.last_index, meta.last_term, (*meta.membership).clone());
        self.persisted_index = self.persisted_index.min(self.log.last_index());
        self.commit_index = meta.last_index;
        // Entries waiting to be applied are older than the snapshot, which
        // replaces the state they would build.
        self.applies.clear();
        self.last_applied = meta.last_index;
        let (last_index, len) = (meta.last_index, meta.len);
        self.snapshot = Some(meta);
        self.advance_remote_reads();
        self.send_snapshot_response(inst.from, last_index, len, round);
        self.sync_membership(now);
        self.note_removal(now);
        self.debug_check_invariants();
    }

    pub(crate) fn send_snapshot_response(
        &mut self,
        to: NodeId,
        last_index: LogIndex,
        next_offset: u64,
        round: u64,
    ) {
        self.send(
            to,
            MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                last_index,
                next_offset,
                round,
            }),
        );
    }

    // ----- Reads served by this follower (thesis §6.4) -----------------

    /// A read on a follower: ask the leader for a read index.
    pub(crate) fn follower_read(&mut self, id: u64) -> Result<(), ReadError> {
        if self.is_removed() {
            // Not part of the cluster any more: its leader may stop
            // answering at any time.
            return Err(ReadError::NotLeader { leader: None });
        }
        let max_reads = self.config.max_pending_reads;
        let (RoleState::Follower(follower), Some(leader)) = (&mut self.role, self.leader) else {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        };
        if follower.remote_reads.len() >= max_reads {
            return Err(ReadError::Busy);
        }
        let read = RemoteRead {
            read_index: None,
            asked_at: follower.leader_messages,
        };
        let dup = follower.remote_reads.insert(id, read);
        assert!(dup.is_none(), "read_index: id {id} is already pending");
        self.send(
            leader,
            MessageBody::ReadIndexRequest(ReadIndexRequest { id }),
        );
        self.debug_check_invariants();
        Ok(())
    }

    /// The leader's answer to one of this follower's read requests.
    pub(crate) fn handle_read_index_response(&mut self, from: NodeId, r: ReadIndexResponse) {
        if self.leader != Some(from) {
            return;
        }
        // Only a follower asks (this is step_follower's).
        let RoleState::Follower(follower) = &mut self.role else {
            return;
        };
        let Some(read) = follower.remote_reads.get_mut(&r.id) else {
            // Answered already (a resent request), or failed since.
            return;
        };
        match r.read_index {
            Some(index) => {
                read.read_index.get_or_insert(index);
                self.advance_remote_reads();
            }
            None => {
                follower.remote_reads.remove(&r.id);
                self.read_results.push_back(Action::ReadFailed {
                    id: r.id,
                    error: ReadError::NotLeader {
                        leader: self.leader,
                    },
                });
            }
        }
    }

    /// Serves the follower's reads whose read index is applied.
    pub(crate) fn advance_remote_reads(&mut self) {
        let RoleState::Follower(follower) = &mut self.role else {
            return;
        };
        if follower.remote_reads.is_empty() {
            return;
        }
        let applied = self.last_applied;
        let ready: Vec<u64> = follower
            .remote_reads
            .iter()
            .filter(|(_, r)| r.read_index.is_some_and(|i| i <= applied))
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            follower.remote_reads.remove(&id);
            self.read_results.push_back(Action::ReadReady { id });
        }
    }

    /// The leader was heard from: requests it has not answered after two
    /// of its messages were lost on the way (a link broke); ask again.
    pub(crate) fn retry_remote_reads(&mut self) {
        let RoleState::Follower(follower) = &mut self.role else {
            return;
        };
        follower.leader_messages += 1;
        let Some(leader) = self.leader else {
            return;
        };
        let now = follower.leader_messages;
        let mut again = Vec::new();
        for (&id, r) in follower.remote_reads.iter_mut() {
            if r.read_index.is_none() && now >= r.asked_at + 2 {
                r.asked_at = now;
                again.push(id);
            }
        }
        for id in again {
            self.send(
                leader,
                MessageBody::ReadIndexRequest(ReadIndexRequest { id }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::log::RaftLog;
    use crate::{
        Action, AppendEntries, Config, Event, LogIndex, Message, MessageBody, Node, NodeId,
        PeerFault, PersistentState, ReadError, Role, Term, Time,
    };

    /// A read this follower serves fails when it stops following: at its
    /// pre-vote it knows no leader any more, so no read index will come.
    #[test]
    fn a_follower_read_fails_when_its_pre_vote_starts() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = Config::new(NodeId(1), voters);
        let mut node = Node::new(config, PersistentState::default(), Time::ZERO).unwrap();
        let heartbeat = Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(1),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: vec![],
                leader_commit: LogIndex(0),
                round: 0,
            }),
        };
        node.handle_message(Time::ZERO, heartbeat);
        while node.poll_action().is_some() {}
        node.read_index(Time::ZERO, 7).unwrap();
        let sent: Vec<String> = std::iter::from_fn(|| node.poll_action())
            .filter_map(|a| match a {
                Action::Send(m) => Some(m.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(sent, ["n1->n2 t1 ReadIndexRequest id=7"]);
        let t = node.poll_timeout().unwrap();
        node.handle_timeout(t);
        assert_eq!(node.role(), Role::PreCandidate);
        let failed: Vec<Action> = std::iter::from_fn(|| node.poll_action())
            .filter(|a| matches!(a, Action::ReadReady { .. } | Action::ReadFailed { .. }))
            .collect();
        assert!(
            matches!(
                failed.as_slice(),
                [Action::ReadFailed {
                    id: 7,
                    error: ReadError::NotLeader { leader: None }
                }]
            ),
            "{failed:?}"
        );
    }

    /// Below the start of the log everything is committed and compacted:
    /// a late AppendEntries that reaches down there is answered for what
    /// it could match, and the rest of it is checked from the start.
    #[test]
    fn append_entries_below_the_log_start_is_answered_from_the_start() {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let config = Config::new(NodeId(1), voters);
        let mut node = Node::new(config, PersistentState::default(), Time::ZERO).unwrap();
        // As if a snapshot covered everything up to index 10, of term 2.
        let membership = node.membership().clone();
        node.log = RaftLog::new(LogIndex(10), Term(2), vec![], membership.clone());
        node.snapshot = Some(crate::SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(2),
            len: 1,
            membership: Box::new(membership),
        });
        node.current_term = Term(2);
        node.commit_index = LogIndex(10);
        node.last_applied = LogIndex(10);
        node.persisted_index = LogIndex(10);
        node.check_invariants();
        let entry = |i| crate::Entry {
            term: Term(2),
            index: LogIndex(i),
            payload: crate::EntryPayload::Noop,
        };
        let ae = |prev: u64, entries: Vec<crate::Entry>| Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(2),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(prev),
                prev_log_term: Term(1),
                entries,
                leader_commit: LogIndex(5),
                round: 0,
            }),
        };
        let answers = |node: &mut Node| -> Vec<String> {
            std::iter::from_fn(|| node.poll_action())
                .filter_map(|a| match a {
                    crate::Action::Send(m) => Some(m.to_string()),
                    _ => None,
                })
                .collect()
        };
        node.handle_message(Time::ZERO, ae(5, vec![]));
        assert_eq!(
            answers(&mut node),
            ["n1->n2 t2 AppendEntriesResponse ok match=5 round=0"]
        );
        node.handle_message(Time::ZERO, ae(8, (9..=12).map(entry).collect()));
        assert_eq!(
            answers(&mut node),
            ["n1->n2 t2 AppendEntriesResponse ok match=12 round=0"]
        );
        assert_eq!(node.last_log_index(), LogIndex(12));
        // The entry at the log start must have its remembered term.
        let old = |i| crate::Entry {
            term: Term(1),
            ..entry(i)
        };
        node.handle_message(Time::ZERO, ae(8, vec![old(9), old(10)]));
        let actions: Vec<_> = std::iter::from_fn(|| node.poll_action()).collect();
        assert!(
            matches!(
                actions.as_slice(),
                [crate::Action::Event(Event::PeerFault {
                    fault: PeerFault::ConflictsWithCommitted { .. },
                    ..
                })]
            ),
            "{actions:?}"
        );
    }
}
