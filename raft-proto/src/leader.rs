//! The leader: its state, no-op on election, replication with flow
//! control (§5.3), the commit rule (§5.4.2), heartbeats, CheckQuorum and
//! ReadIndex (§6.4).

use std::collections::BTreeMap;

use crate::action::{Action, Event, PeerFault, Role, RoleChangeReason};
use crate::config::Config;
use crate::log::RaftLog;
use crate::message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, RequestVote,
};
use crate::node::{Node, RoleState};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{majority, quorum_index};
use crate::read::{PendingRead, ReadQueue};
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, NodeId, Term, Time};

/// How long a leader may hold appends without any durability report
/// before a debug build calls it a driver bug. A disk that stalls this long
/// trips it too: the check cannot tell the two apart, and a minute-long
/// stall in a test is worth a loud failure as well.
const UNREPORTED_DURABILITY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What only a leader holds (STYLE §6), from its election to its step
/// down.
#[derive(Debug)]
pub(crate) struct LeaderState {
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Heartbeat round: bumped for each broadcast that confirms leadership
    /// for reads; every AppendEntries carries the current value.
    pub(crate) round: u64,
    /// Reads wait for `round + 1`, to be sent at the next drain.
    pub(crate) round_pending: bool,
    /// Entries were appended or a follower's answer moved its window:
    /// send what flow control allows at the next drain. Deferred so that
    /// every proposal and answer fed between two drains goes out as one
    /// AppendEntries per follower, not one each (etcd batches the same
    /// way, per `Ready`).
    pub(crate) replicate_pending: bool,
    pub(crate) reads: ReadQueue,
    pub(crate) heartbeat_deadline: Time,
    pub(crate) check_quorum_deadline: Time,
    /// A leadership transfer under way (thesis §3.10).
    pub(crate) transfer: Option<Transfer>,
    /// Members a configuration of this leader removed that are still
    /// being told so (see [`Departing`]). Their progress stays in
    /// `progress`; they count for nothing.
    pub(crate) departing: BTreeMap<NodeId, Departing>,
    /// Since when this leader has held appends not yet reported durable
    /// with no durability report since (debug check that the driver calls
    /// `handle_log_persisted` at all).
    pub(crate) unpersisted_since: Option<Time>,
}

/// A member the configuration in force removed. It would never learn
/// that its removal committed if the leader stopped sending to it at
/// once, and would take itself for a voter: so the leader keeps
/// replicating to it (log and commit index) until it acknowledges an
/// append, sent after the removal committed, that reaches the removing
/// configuration, or for [`DEPARTING_GRACE_TIMEOUTS`] maximum election
/// timeouts after the commit, whichever comes first: a member that is
/// away then does not learn, by design (it cannot disrupt: its pre-votes
/// carry a log without the removal, which the voters refuse).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Departing {
    /// Index of the configuration that removed it.
    pub(crate) config_index: LogIndex,
    /// Once that configuration is committed: the first heartbeat round all
    /// of whose appends carry a commit index at or past it, and when the
    /// leader stops trying.
    pub(crate) committed: Option<(u64, Time)>,
}

/// How long, in maximum election timeouts after a removal commits, the
/// leader keeps telling the removed member: a member that is up answers
/// within a round trip; one that is away would need a whole catch-up.
pub(crate) const DEPARTING_GRACE_TIMEOUTS: u32 = 2;

/// A leadership transfer: proposals are refused until it succeeds (this
/// leader hears of the target's newer term) or `deadline` passes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub(crate) target: NodeId,
    pub(crate) deadline: Time,
}

/// What the node does once the leader's state took a message in
/// ([`LeaderState::step`]).
#[derive(Debug)]
pub(crate) enum LeaderNext {
    /// Nothing more.
    Nothing,
    /// A (pre-)vote request, answered as in any role.
    Vote {
        from: NodeId,
        term: Term,
        rv: RequestVote,
    },
    /// A message no correct member sends: dropped and reported.
    Fault { from: NodeId, fault: PeerFault },
    /// A message only a leader sends, in this leader's term (§5.2).
    SecondLeader { from: NodeId, term: Term },
    /// A follower's answer to appends, applied to its progress: `matched`
    /// if its match index moved; `reprobe` if it needs a probe now.
    AppendAnswered {
        from: NodeId,
        matched: bool,
        reprobe: bool,
    },
    /// The follower holds the snapshot: replicate the log after it.
    SnapshotDone { from: NodeId },
    /// The follower took more of the snapshot (or lost it): send on.
    SnapshotMoved { from: NodeId },
    /// A follower's read waits for the next round.
    ReadQueued,
    /// A follower's read refused: too many reads are pending.
    ReadRefused { from: NodeId, id: u64 },
}

impl LeaderState {
    /// A leader's messages, after the term rules (their term is ours, or
    /// for a pre-vote request the next one): what the leader's own state
    /// (progress, reads) takes in, reading the `log` and, for a read,
    /// the `read_index` it gets now. The node then does what the answer
    /// says (`Node::step_leader`). There is no case for an AppendEntries:
    /// this term has no other leader (§5.2).
    pub(crate) fn step(
        &mut self,
        msg: Message,
        log: &RaftLog,
        read_index: impl FnOnce() -> Option<LogIndex>,
        config: &Config,
    ) -> LeaderNext {
        let from = msg.from;
        let member = self.progress.contains_key(&from);
        match msg.body {
            // Answers from a node that is not a member (any more): its
            // progress is gone with the configuration that removed it.
            MessageBody::AppendEntriesResponse(_)
            | MessageBody::InstallSnapshotResponse(_)
            | MessageBody::ReadIndexRequest(_)
                if !member =>
            {
                LeaderNext::Nothing
            }
            MessageBody::RequestVote(rv) => LeaderNext::Vote {
                from,
                term: msg.term,
                rv,
            },
            MessageBody::AppendEntriesResponse(r) => self.take_append_response(log, from, r),
            MessageBody::InstallSnapshotResponse(r) => self.take_snapshot_response(from, r),
            // A follower asks for a read index: confirmed like the
            // leader's own reads (by a heartbeat round a majority
            // acknowledges, §6.4), then sent back without waiting for
            // this leader's state machine.
            MessageBody::ReadIndexRequest(r) => {
                if self.queue_read(r.id, Some(from), read_index(), config.max_pending_reads) {
                    LeaderNext::ReadQueued
                } else {
                    LeaderNext::ReadRefused { from, id: r.id }
                }
            }
            // Late answers from the election this leader won, or to reads
            // this node asked for while it followed.
            MessageBody::RequestVoteResponse(_) | MessageBody::ReadIndexResponse(_) => {
                LeaderNext::Nothing
            }
            MessageBody::AppendEntries(_)
            | MessageBody::InstallSnapshot(_)
            | MessageBody::TimeoutNow => LeaderNext::SecondLeader {
                from,
                term: msg.term,
            },
        }
    }

    /// The leader's invariants, on top of the node's
    /// (`Node::check_invariants`).
    pub(crate) fn check_invariants(&self, node: &Node) {
        self.reads.check_invariants();
        assert_eq!(
            node.leader,
            Some(node.config.id),
            "invariant: a leader knows it leads"
        );
        assert!(
            self.progress
                .keys()
                .filter(|p| !self.departing.contains_key(p))
                .eq(node.peers.iter()),
            "invariant: the leader tracks exactly the other members, and departing ones"
        );
        assert!(
            self.departing
                .iter()
                .all(|(p, d)| self.progress.contains_key(p)
                    && !node.membership.contains(*p)
                    && d.config_index <= node.log.last_index()),
            "invariant: a departing member has progress and is no member"
        );
        assert!(
            node.membership.is_voter(node.config.id)
                || node.log.membership_index() > node.commit_index,
            "invariant: a leader is a voter, or its removal is not committed yet"
        );
        assert!(
            self.transfer
                .is_none_or(|t| node.membership.is_voter(t.target) && t.target != node.config.id),
            "invariant: a leadership transfer targets another voter"
        );
        assert_eq!(
            node.voted_for,
            Some(node.config.id),
            "invariant: a leader voted for itself"
        );
        for pr in self.progress.values() {
            pr.check_invariants(node.log.last_index(), node.config.max_inflight_appends);
        }
    }

    /// Queues a read (the leader's own, or a follower's: `from`) for the
    /// next heartbeat round, unless `max_reads` are pending already.
    pub(crate) fn queue_read(
        &mut self,
        id: u64,
        from: Option<NodeId>,
        read_index: Option<LogIndex>,
        max_reads: usize,
    ) -> bool {
        if self.reads.len() >= max_reads {
            return false;
        }
        if from.is_some_and(|p| self.reads.queued_for(p) >= ReadQueue::peer_share(max_reads)) {
            return false;
        }
        self.round_pending = true;
        self.reads.push(PendingRead {
            id,
            round: self.round + 1,
            read_index,
            from,
        });
        true
    }

    /// What makes an answer impossible: it echoes a round this leader has
    /// not started, or names an index beyond anything it sent that peer.
    /// Followers answer only what they were sent, in the round it was sent.
    fn check_append_response(
        &self,
        from: NodeId,
        r: &AppendEntriesResponse,
    ) -> Result<(), PeerFault> {
        if r.round > self.round {
            return Err(PeerFault::RoundNeverSent {
                round: r.round,
                current_round: self.round,
            });
        }
        let sent_index = self.progress[&from].sent_index;
        match r.result {
            AppendResult::Success { match_index } if match_index > sent_index => {
                Err(PeerFault::MatchNeverSent {
                    match_index,
                    sent_index,
                })
            }
            AppendResult::Conflict { rejected_index, .. } if rejected_index > sent_index => {
                Err(PeerFault::RejectNeverSent {
                    rejected_index,
                    sent_index,
                })
            }
            _ => Ok(()),
        }
    }

    /// A member's answer to appends: its progress moves (or a departing
    /// member is done with).
    fn take_append_response(
        &mut self,
        log: &RaftLog,
        from: NodeId,
        r: AppendEntriesResponse,
    ) -> LeaderNext {
        if let Err(fault) = self.check_append_response(from, &r) {
            return LeaderNext::Fault { from, fault };
        }
        if let Some(d) = self.departing.get(&from) {
            // This answer proves the departing member holds the removing
            // configuration and a commit index at or past it (its append
            // left after the removal committed, carrying that commit
            // index up to the index matched): it knows; forget it.
            let told = match (d.committed, &r.result) {
                (Some((round, _)), AppendResult::Success { match_index }) => {
                    r.round >= round && *match_index >= d.config_index
                }
                _ => false,
            };
            if told {
                self.departing.remove(&from);
                self.progress.remove(&from);
                return LeaderNext::Nothing;
            }
        }
        let pr = self
            .progress
            .get_mut(&from)
            .expect("progress for every peer");
        pr.recent_active = true;
        pr.acked_round = pr.acked_round.max(r.round);
        let mut matched = false;
        match r.result {
            AppendResult::Success { match_index } => {
                matched = pr.on_success(match_index);
                if !matched {
                    // A heartbeat's answer (or a duplicate).
                    pr.on_answer_without_progress();
                }
            }
            AppendResult::Conflict {
                rejected_index,
                conflict_term,
                conflict_index,
                ..
            } => {
                let hint_next = match conflict_term {
                    Some(t) => match log.last_index_of_term(t, rejected_index) {
                        Some(k) => k.next(),
                        None => conflict_index,
                    },
                    None => conflict_index,
                };
                if !pr.on_conflict(rejected_index, hint_next) {
                    // A stale rejection, or one of a heartbeat anchored at
                    // the log start: it moves nothing, but it is an
                    // answer, so a probe may be retried (one may have been
                    // lost).
                    pr.on_answer_without_progress();
                }
            }
        }
        // In-order links: an append of an earlier round still unanswered
        // now was lost; resend from the match index.
        pr.detect_loss(r.round);
        // A probe that is not outstanding any more (this answer moved
        // nothing, or the probe was lost or dropped) while the follower
        // lacks entries: ask again now. Without new entries to carry, the
        // next drain sends nothing, and heartbeats (anchored at the match
        // index) never find where its log ends: an idle leader left a
        // member whose probe was lost behind for good.
        let reprobe = !matched
            && matches!(pr.state, ProgressState::Probe { paused: false })
            && pr.match_index < log.last_index();
        LeaderNext::AppendAnswered {
            from,
            matched,
            reprobe,
        }
    }

    /// An answer about a snapshot chunk: where the follower stands in the
    /// transfer, or that it is done (installed, or not needed).
    fn take_snapshot_response(&mut self, from: NodeId, r: InstallSnapshotResponse) -> LeaderNext {
        if r.round > self.round {
            let fault = PeerFault::RoundNeverSent {
                round: r.round,
                current_round: self.round,
            };
            return LeaderNext::Fault { from, fault };
        }
        let pr = self
            .progress
            .get_mut(&from)
            .expect("progress for every peer");
        let ProgressState::Snapshot {
            meta,
            acked,
            sent,
            sent_max,
            ..
        } = &mut pr.state
        else {
            // About a transfer that is over: nothing to do.
            pr.recent_active = true;
            pr.acked_round = pr.acked_round.max(r.round);
            return LeaderNext::Nothing;
        };
        if meta.last_index != r.last_index {
            pr.recent_active = true;
            pr.acked_round = pr.acked_round.max(r.round);
            return LeaderNext::Nothing;
        }
        let done = r.next_offset == meta.len;
        if !done && r.next_offset > *sent_max {
            let fault = PeerFault::ChunkNeverSent {
                next_offset: r.next_offset,
                sent: *sent_max,
            };
            return LeaderNext::Fault { from, fault };
        }
        pr.recent_active = true;
        pr.acked_round = pr.acked_round.max(r.round);
        if done {
            // The follower's log now matches ours up to the snapshot's
            // last index: replicate the rest of the log from there.
            let last_index = meta.last_index;
            pr.match_index = pr.match_index.max(last_index);
            pr.sent_index = pr.sent_index.max(pr.match_index);
            pr.become_replicate();
            return LeaderNext::SnapshotDone { from };
        }
        if r.next_offset < *acked {
            // It lost what it had (a restart): go back to where it is.
            *acked = r.next_offset;
            *sent = r.next_offset;
        } else {
            *acked = r.next_offset;
            *sent = (*sent).max(*acked);
        }
        LeaderNext::SnapshotMoved { from }
    }
}

impl Node {
    /// Takes the lead, `granted` being the voters whose votes won it.
    pub(crate) fn become_leader(&mut self, now: Time, granted: &[NodeId]) {
        let next = self.log.last_index().next();
        let progress: BTreeMap<NodeId, Progress> = self
            .peers
            .iter()
            .map(|&p| {
                let mut pr = Progress::new(next);
                // Their votes are proof of life within the last election
                // timeout: the first CheckQuorum counts them, so that a
                // leader whose first answers are slow (a congested
                // network) is not deposed one timeout after it won.
                pr.recent_active = granted.contains(&p);
                (p, pr)
            })
            .collect();
        self.role = RoleState::Leader(Box::new(LeaderState {
            progress,
            round: 0,
            round_pending: false,
            replicate_pending: false,
            reads: ReadQueue::default(),
            heartbeat_deadline: now + self.config.heartbeat_interval,
            check_quorum_deadline: now + self.config.election_timeout_min,
            transfer: None,
            // A removal of an earlier leader's term is not told by this
            // one: best effort, see `Departing`.
            departing: BTreeMap::new(),
            unpersisted_since: None,
        }));
        self.election_reason = None;
        self.set_leader(Some(self.config.id));
        self.events.push_back(Event::RoleChanged {
            role: Role::Leader,
            term: self.current_term,
            reason: RoleChangeReason::WonElection,
        });
        // §5.4.2 / §8: commit an entry of our own term right away, which
        // also commits everything before it and lets reads start. The
        // first leader of a new cluster makes it the bootstrap
        // configuration, so that the configuration is in the log from
        // index 1 on and members that join later learn it from there.
        let first = if self.log.last_index() == LogIndex(0) {
            EntryPayload::Configuration(Box::new(self.log.membership().clone()))
        } else {
            EntryPayload::Noop
        };
        self.leader_append(now, first);
        self.leader_replicate_all();
    }

    /// Appends to the leader's own log. The leader counts itself as holding
    /// the entry only once the driver reports it durable
    /// ([`Node::handle_log_persisted`]); until then the AppendEntries that
    /// carry it may already be on their way (thesis §10.2.1).
    pub(crate) fn leader_append(&mut self, now: Time, payload: EntryPayload) -> EntryId {
        if let RoleState::Leader(ls) = &mut self.role {
            ls.unpersisted_since.get_or_insert(now);
        }
        let entry = Entry {
            term: self.current_term,
            index: self.log.last_index().next(),
            payload,
        };
        let id = entry.id();
        self.log.push(entry.clone());
        match self.persist.back_mut() {
            // Coalesce appends made before the next drain into one action.
            Some(Action::AppendLog(batch)) => batch.push(entry),
            _ => self.persist.push_back(Action::AppendLog(vec![entry])),
        }
        // A single-node cluster commits on its own.
        self.leader_maybe_commit(now);
        id
    }

    pub(crate) fn leader_replicate_all(&mut self) {
        for peer in self.replication_targets() {
            self.send_append(peer, false);
        }
    }

    /// Whom the leader sends to: the other members, then the departing
    /// ones (`Departing`).
    pub(crate) fn replication_targets(&self) -> Vec<NodeId> {
        let mut to = self.peers.clone();
        if let RoleState::Leader(ls) = &self.role {
            to.extend(ls.departing.keys());
        }
        to
    }

    /// Asks for [`Node::leader_flush`] at the next drain.
    pub(crate) fn replicate_at_drain(&mut self) {
        if let RoleState::Leader(ls) = &mut self.role {
            ls.replicate_pending = true;
        }
    }

    /// At a drain: sends every follower what flow control allows of what
    /// was appended since the last drain; with `round`, a new round was
    /// started for reads and every follower that got no entries gets a
    /// heartbeat of it. An append carries the round too, so its answer
    /// confirms the round as well as a heartbeat's would: reads under
    /// write load cost no extra messages.
    pub(crate) fn leader_flush(&mut self, round: bool) {
        for peer in self.replication_targets() {
            let in_snapshot = match &self.role {
                RoleState::Leader(ls) => matches!(
                    ls.progress.get(&peer).map(|p| &p.state),
                    Some(ProgressState::Snapshot { .. })
                ),
                _ => return,
            };
            if round && in_snapshot {
                self.heartbeat(peer);
                continue;
            }
            if !self.send_append(peer, false) && round {
                self.heartbeat(peer);
            }
        }
    }

    /// Sends the next batch to `peer` if flow control allows. With `force`,
    /// sends even when there is nothing new (a probe). Whether an
    /// AppendEntries went out.
    pub(crate) fn send_append(&mut self, peer: NodeId, force: bool) -> bool {
        let commit = self.commit_index;
        let max_inflight = self.config.max_inflight_appends;
        let RoleState::Leader(ls) = &mut self.role else {
            return false;
        };
        let round = ls.round;
        let pr = ls.progress.get_mut(&peer).expect("progress for every peer");
        if matches!(pr.state, ProgressState::Snapshot { .. }) {
            self.send_snapshot_chunks(peer, false);
            return true;
        }
        if pr.is_paused(max_inflight) {
            return false;
        }
        if pr.next_index <= self.log.start_index() {
            // The entries it needs are compacted: send the snapshot that
            // covers them instead (§7).
            let meta = self
                .snapshot
                .clone()
                .expect("a compacted log has a snapshot");
            pr.become_snapshot(meta);
            self.send_snapshot_chunks(peer, true);
            return true;
        }
        let entries = if pr.next_index <= self.log.last_index() {
            self.log.slice(
                pr.next_index,
                self.config.max_entries_per_append,
                self.config.max_bytes_per_append,
            )
        } else {
            Vec::new()
        };
        if entries.is_empty() && !force {
            return false;
        }
        let prev_log_index = pr.next_index.prev();
        let prev_log_term = self
            .log
            .term_at(prev_log_index)
            .expect("prev entry held: next_index is above the log start");
        let last = prev_log_index.plus(entries.len() as u64);
        pr.sent(last, !entries.is_empty(), round);
        let ae = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: commit,
            round,
        };
        self.send(peer, MessageBody::AppendEntries(ae));
        true
    }

    /// Sends chunks of the snapshot to `peer` (in snapshot state) while
    /// the window allows; with `probe`, an empty chunk at the acknowledged
    /// offset if nothing else goes, which asks where the follower stands
    /// and serves as its heartbeat. A transfer of a snapshot that was
    /// replaced since starts again with the new one.
    pub(crate) fn send_snapshot_chunks(&mut self, peer: NodeId, probe: bool) {
        let current = self.snapshot.clone().expect("a snapshot to send");
        let chunk = self.config.snapshot_chunk_bytes as u64;
        let window = chunk * self.config.max_inflight_appends as u64;
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let round = ls.round;
        let pr = ls.progress.get_mut(&peer).expect("progress for every peer");
        if !matches!(&pr.state, ProgressState::Snapshot { meta, .. } if *meta == current) {
            pr.become_snapshot(current);
        }
        let ProgressState::Snapshot {
            meta,
            acked,
            sent,
            sent_max,
            ..
        } = &mut pr.state
        else {
            unreachable!("snapshot state set above");
        };
        let meta = meta.clone();
        let mut chunks = Vec::new();
        while *sent < meta.len && *sent - *acked < window {
            let len = chunk.min(meta.len - *sent);
            chunks.push((*sent, len));
            *sent += len;
        }
        *sent_max = (*sent_max).max(*sent);
        if chunks.is_empty() && probe {
            chunks.push((*acked, 0));
        }
        for (offset, len) in chunks {
            let message = Message {
                from: self.config.id,
                to: peer,
                term: self.current_term,
                body: MessageBody::InstallSnapshot(InstallSnapshot {
                    meta: meta.clone(),
                    offset,
                    data: bytes::Bytes::new(),
                    round,
                }),
            };
            self.sends.push_back((message, len as usize));
        }
    }

    /// Heartbeats: an empty AppendEntries to every follower, anchored at its
    /// match index (or, when that is compacted, at the log start) so it
    /// never commits beyond what the follower is known to hold; to a
    /// follower receiving the snapshot, its next chunks or a probe.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        for peer in self.replication_targets() {
            self.heartbeat(peer);
        }
    }

    /// One follower's heartbeat of the current round (see
    /// [`Node::broadcast_heartbeat`]).
    pub(crate) fn heartbeat(&mut self, peer: NodeId) {
        let commit = self.commit_index;
        let start = self.log.start_index();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let round = ls.round;
        let Some(pr) = ls.progress.get_mut(&peer) else {
            return;
        };
        if let ProgressState::Snapshot {
            acked,
            sent,
            acked_at_heartbeat,
            ..
        } = &mut pr.state
        {
            // No progress for a whole interval: a chunk was lost.
            if *acked == *acked_at_heartbeat && *sent > *acked {
                *sent = *acked;
            }
            *acked_at_heartbeat = *acked;
            self.send_snapshot_chunks(peer, true);
            return;
        }
        let prev_log_index = pr.match_index.max(start);
        // A heartbeat's answer may name its prev_log_index.
        pr.sent_index = pr.sent_index.max(prev_log_index);
        let ae = AppendEntries {
            prev_log_index,
            prev_log_term: self.log.term_at(prev_log_index).expect("index held"),
            entries: Vec::new(),
            leader_commit: commit.min(prev_log_index),
            round,
        };
        self.send(peer, MessageBody::AppendEntries(ae));
    }

    pub(crate) fn leader_tick(&mut self, now: Time) {
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        // Caller misuse, not a protocol fault: a driver that never reports
        // its log durable leaves the leader unable to count itself, and it
        // stops committing whenever one follower is away. Loud in debug
        // builds (the simulator, tests); a disk can be slow, so the bound
        // is generous.
        debug_assert!(
            ls.unpersisted_since
                .is_none_or(|t| now.saturating_since(t) < UNREPORTED_DURABILITY_LIMIT),
            "node {}: appends waited {:?} with no durability report: the driver must call \
             Node::handle_log_persisted after each sync (raft_proto::driver::Driver does)",
            self.config.id,
            UNREPORTED_DURABILITY_LIMIT
        );
        if now >= ls.check_quorum_deadline {
            // CheckQuorum (§6.2): step down if a majority of the voters was
            // silent for a whole election timeout; a partitioned leader
            // thus stops accepting writes it could never commit.
            let m = self.log.membership();
            let active = usize::from(m.is_voter(self.config.id))
                + m.voters
                    .iter()
                    .filter(|v| ls.progress.get(v).is_some_and(|p| p.recent_active))
                    .count();
            if self.config.check_quorum && active < majority(m.voters.len()) {
                let term = self.current_term;
                self.become_follower(now, term, None, RoleChangeReason::LostQuorum);
                return;
            }
            for pr in ls.progress.values_mut() {
                pr.recent_active = false;
            }
            ls.check_quorum_deadline = now + self.config.election_timeout_min;
        }
        if let Some(target) = ls.expire_transfer(now) {
            self.events.push_back(Event::TransferAborted { target });
        }
        if now >= ls.heartbeat_deadline {
            ls.heartbeat_deadline = now + self.config.heartbeat_interval;
            // Departing members that did not answer in time are given up.
            let expired: Vec<NodeId> = ls
                .departing
                .iter()
                .filter(|(_, d)| d.committed.is_some_and(|(_, until)| now >= until))
                .map(|(&id, _)| id)
                .collect();
            for id in expired {
                ls.departing.remove(&id);
                ls.progress.remove(&id);
            }
            // Each heartbeat starts a round: answers to it prove that every
            // earlier append was processed (flow control), and that the
            // follower still follows (ReadIndex). Reads waiting for the next
            // round are served by this one; no extra broadcast is needed.
            ls.round += 1;
            ls.round_pending = false;
            let transfer = ls.transfer.map(|t| t.target);
            self.broadcast_heartbeat();
            if let Some(target) = transfer {
                self.leader_maybe_send_timeout_now(target);
            }
        }
    }

    /// Does what a leader's message calls for once the leader's state took
    /// it in ([`LeaderState::step`]).
    pub(crate) fn step_leader(&mut self, now: Time, next: LeaderNext) {
        match next {
            LeaderNext::Nothing => {}
            LeaderNext::Vote { from, term, rv } => self.handle_request_vote(now, from, term, rv),
            LeaderNext::Fault { from, fault } => self.peer_fault(from, fault),
            LeaderNext::SecondLeader { from, term } => {
                debug_assert_eq!(term, self.current_term, "term rules: a newer term deposes");
                let fault = PeerFault::SecondLeader {
                    term,
                    leader: self.config.id,
                };
                self.peer_fault(from, fault);
            }
            LeaderNext::AppendAnswered {
                from,
                matched,
                reprobe,
            } => {
                if reprobe {
                    self.send_append(from, true);
                }
                if matched {
                    self.leader_maybe_commit(now);
                    self.leader_maybe_send_timeout_now(from);
                }
                self.advance_reads();
                // The window moved: what it allows goes at the drain,
                // together with what was proposed and what other answers
                // let through.
                self.replicate_at_drain();
            }
            LeaderNext::SnapshotDone { from } => {
                self.leader_maybe_commit(now);
                self.advance_reads();
                self.send_append(from, false);
            }
            LeaderNext::SnapshotMoved { from } => {
                self.advance_reads();
                self.send_snapshot_chunks(from, false);
            }
            LeaderNext::ReadQueued => self.advance_reads(),
            LeaderNext::ReadRefused { from, id } => self.send_read_index_response(from, id, None),
        }
    }

    /// §5.4.2: commit the highest index a majority of the voters holds,
    /// but only by counting replicas of an entry from the current term
    /// (Figure 8). A leader that is not a voter (it is removing itself)
    /// does not count itself (thesis §4.2.2).
    pub(crate) fn leader_maybe_commit(&mut self, now: Time) {
        let RoleState::Leader(ls) = &self.role else {
            return;
        };
        let m = self.log.membership();
        let me = self.config.id;
        let mut matches: Vec<_> = m
            .voters
            .iter()
            .filter(|&&v| v != me)
            .map(|v| ls.progress.get(v).map_or(LogIndex(0), |p| p.match_index))
            .collect();
        if m.is_voter(me) {
            // Itself only as far as its own log is durable (§10.2.1).
            matches.push(self.persisted_index);
        }
        let n = quorum_index(matches);
        if n > self.commit_index && self.log.term_at(n) == Some(self.current_term) {
            self.advance_commit(n);
            let grace = self.config.election_timeout_max * DEPARTING_GRACE_TIMEOUTS;
            if let RoleState::Leader(ls) = &mut self.role {
                // Appends of the next round carry a commit index past the
                // removal (this round's earlier ones may not).
                let round = ls.round + 1;
                for d in ls.departing.values_mut() {
                    if d.committed.is_none() && d.config_index <= n {
                        d.committed = Some((round, now + grace));
                    }
                }
            }
            // Followers learn the new commit index with the next append or
            // heartbeat; no extra message is needed for safety.
            self.leader_step_down_if_removed(now);
        }
    }

    /// Serves reads whose round a majority acknowledged and whose read
    /// index is applied.
    pub(crate) fn advance_reads(&mut self) {
        let last_applied = self.last_applied;
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        if ls.reads.len() == 0 {
            return;
        }
        let m = self.log.membership();
        let me = self.config.id;
        let mut rounds: Vec<u64> = m
            .voters
            .iter()
            .map(|&v| match ls.progress.get(&v) {
                Some(p) => p.acked_round,
                None if v == me => u64::MAX, // the leader confirms itself
                None => 0,
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_round = rounds[majority(rounds.len()) - 1];
        let ready = ls.reads.pop_ready(quorum_round, last_applied);
        for read in ready {
            match read.from {
                None => self
                    .read_results
                    .push_back(Action::ReadReady { id: read.id }),
                Some(peer) => self.send_read_index_response(peer, read.id, read.read_index),
            }
        }
    }
}
