//! The Raft node: its state, its inputs and outputs, and `step`, where
//! every peer message is validated, goes through the term rules once
//! (`term_rules.rs`) and is then handed to the step function of the role
//! (`follower.rs`, `candidate.rs`, `leader.rs`, each also holding its
//! role's state).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::action::{
    Action, ElectionReason, Event, PeerFault, ProposeError, ReadError, Role, RoleChangeReason,
};
use crate::codec;
use crate::config::{Config, ConfigError};
use crate::follower::{FollowerState, IncomingSnapshot};
use crate::leader::LeaderState;
use crate::log::RaftLog;
use crate::message::{Message, MessageBody, RequestVoteResponse};
use crate::quorum::VoteTally;
use crate::rng::Rng;
use crate::types::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term,
    Time, MAX_ENTRY_LEN,
};

/// What a node finds on disk when it starts: the hard state, the latest
/// snapshot and the log after it. An empty value is a first boot.
#[derive(Clone, Debug, Default)]
pub struct PersistentState {
    /// Term and vote as last saved.
    pub hard_state: HardState,
    /// The latest snapshot, if any. The state machine starts from it.
    pub snapshot: Option<SnapshotMeta>,
    /// The log as persisted: consecutive entries starting right after the
    /// snapshot's last index (at index 1 without a snapshot). A store that
    /// kept older entries leaves them out.
    pub entries: Vec<Entry>,
    /// How far a durable state machine has applied the log (0 for one that
    /// starts empty, like raft-node's; at least the snapshot's last index).
    /// Entries up to here are committed (they were applied), and the node
    /// starts handing out [`crate::Action::Apply`] after it, so nothing is
    /// applied twice.
    pub applied: LogIndex,
}

/// A snapshot of a node's externally visible state (`INFO raft`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its vote in the current term.
    pub voted_for: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Highest index handed out as [`Action::Apply`].
    pub last_applied: LogIndex,
    /// Index of the last log entry.
    pub last_log_index: LogIndex,
    /// Term of the last log entry.
    pub last_log_term: Term,
    /// Index just before the first entry the log holds (0, or an index a
    /// snapshot covers).
    pub log_start_index: LogIndex,
    /// The latest snapshot this node knows of, if any.
    pub snapshot: Option<SnapshotMeta>,
}

/// Role-specific state lives in the role's variant (STYLE §6).
#[derive(Debug)]
pub(crate) enum RoleState {
    Follower(FollowerState),
    PreCandidate {
        votes: VoteTally,
        /// The real votes of this term's election, when this node
        /// campaigned in it and its timer ran out: late grants still count
        /// (on a slow network they arrive after the timeout).
        election: Option<VoteTally>,
        /// The snapshot this node was receiving as a follower of this
        /// term. A pre-vote keeps the term: if it fails and the same
        /// leader goes on, the transfer resumes where it stopped
        /// (`Node::become_follower` hands it back).
        incoming: Option<IncomingSnapshot>,
    },
    Candidate {
        votes: VoteTally,
    },
    Leader(Box<LeaderState>),
}

/// One member of a Raft cluster, with no I/O of its own. See the crate
/// documentation for the driver's contract.
#[derive(Debug)]
pub struct Node {
    pub(crate) config: Config,
    /// Every member of the configuration in force but this node, sorted:
    /// whom the leader replicates to and whose messages are expected.
    pub(crate) peers: Vec<NodeId>,
    /// The configuration in force as last announced (`MembershipChanged`),
    /// and the log's configuration epoch it was read at.
    pub(crate) membership: Membership,
    pub(crate) membership_epoch: u64,
    pub(crate) rng: Rng,

    // Persistent state (Figure 2).
    pub(crate) current_term: Term,
    pub(crate) voted_for: Option<NodeId>,
    pub(crate) log: RaftLog,
    /// How far the driver has confirmed this node's log durable. The leader
    /// counts itself in commits only up to here (thesis §10.2.1: it may
    /// replicate entries before its own fsync completes).
    pub(crate) persisted_index: LogIndex,
    /// The latest snapshot the driver saved or installed. The log holds
    /// nothing at or below its start, which is at most this snapshot's
    /// last index.
    pub(crate) snapshot: Option<SnapshotMeta>,

    // Volatile state.
    pub(crate) commit_index: LogIndex,
    pub(crate) last_applied: LogIndex,
    pub(crate) role: RoleState,
    pub(crate) leader: Option<NodeId>,
    /// When a follower or candidate starts the next (pre-)election.
    pub(crate) election_deadline: Time,
    /// Why the next election will start, if not a plain timeout.
    pub(crate) election_reason: Option<ElectionReason>,
    /// Last time a leader of the current term was heard from (CheckQuorum's
    /// vote lease, and the "silent for" in election logs).
    pub(crate) last_leader_contact: Option<Time>,
    pub(crate) last_leader: Option<NodeId>,
    /// Terms beyond `current_term + Term::MAX_JUMP` that voters of the
    /// configuration claimed, the highest per voter: at most one entry
    /// per voter (pruned when the configuration changes). Not persisted:
    /// after a restart the voters say it again.
    pub(crate) term_claims: BTreeMap<NodeId, Term>,
    /// When this node last moved its term by the bound on one claim
    /// (`Node::may_step_term`).
    pub(crate) last_term_step: Option<Time>,
    /// Some configuration this node followed named it (or its log still
    /// holds one that does): a configuration without it then means it was
    /// removed, not that it is still joining.
    pub(crate) was_member: bool,
    /// `Node::is_removed` was reported (once per removal).
    pub(crate) removal_reported: bool,
    pub(crate) shut_down: bool,

    // Output, drained in this order by `poll_action`.
    pub(crate) hard_state_dirty: bool,
    pub(crate) persist: VecDeque<Action>,
    /// Messages to send; an InstallSnapshot comes with the number of bytes
    /// of snapshot the driver reads into it.
    pub(crate) sends: VecDeque<(Message, usize)>,
    pub(crate) applies: VecDeque<Entry>,
    pub(crate) read_results: VecDeque<Action>,
    pub(crate) events: VecDeque<Event>,
}

impl Node {
    /// Creates a node from its configuration and what it persisted before
    /// (empty for a first boot). It starts as a follower with a randomized
    /// election deadline after `now`. Fails on an invalid configuration or
    /// a persisted term above [`Term::MAX`].
    pub fn new(config: Config, state: PersistentState, now: Time) -> Result<Node, ConfigError> {
        config.validate()?;
        let current_term = state.hard_state.current_term;
        if current_term > Term::MAX {
            return Err(ConfigError::PersistedTermAboveMax { term: current_term });
        }
        // The configuration at the log's start: the snapshot's, or the
        // bootstrap one (empty for a member that joins).
        let base = match &state.snapshot {
            Some(s) => (*s.membership).clone(),
            None => {
                let mut voters = config.voters.clone();
                voters.sort();
                Membership {
                    voters,
                    learners: Vec::new(),
                    context: config.bootstrap_context.clone(),
                }
            }
        };
        let mut rng = Rng::new(config.seed ^ config.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Warm the generator so nodes with nearby seeds diverge at once.
        rng.next_u64();
        let (start, start_term) = state
            .snapshot
            .as_ref()
            .map_or((LogIndex(0), Term(0)), |s| (s.last_index, s.last_term));
        if let Some(first) = state.entries.first() {
            if first.index != start.next() {
                return Err(ConfigError::LogDoesNotFollowSnapshot {
                    snapshot_index: start,
                    first_index: first.index,
                });
            }
        }
        let applied = state.applied.max(start);
        let log = RaftLog::new(start, start_term, state.entries, base);
        if applied > log.last_index() {
            return Err(ConfigError::AppliedBeyondLog {
                applied,
                last_index: log.last_index(),
            });
        }
        assert!(
            log.last_term() <= state.hard_state.current_term,
            "persisted log has an entry from a term after the persisted current term"
        );
        let persisted_index = log.last_index();
        let membership = log.membership().clone();
        let mut node = Node {
            peers: Self::peers_of(&membership, config.id),
            membership,
            membership_epoch: log.config_epoch(),
            config,
            rng,
            current_term: state.hard_state.current_term,
            voted_for: state.hard_state.voted_for,
            log,
            persisted_index,
            snapshot: state.snapshot,
            commit_index: applied,
            last_applied: applied,
            role: RoleState::Follower(FollowerState::default()),
            leader: None,
            election_deadline: now,
            election_reason: None,
            last_leader_contact: None,
            last_leader: None,
            term_claims: BTreeMap::new(),
            last_term_step: None,
            was_member: false,
            removal_reported: false,
            shut_down: false,
            hard_state_dirty: false,
            persist: VecDeque::new(),
            sends: VecDeque::new(),
            applies: VecDeque::new(),
            read_results: VecDeque::new(),
            events: VecDeque::new(),
        };
        node.reset_election_deadline(now);
        node.was_member = node.log.ever_contains(node.config.id);
        node.check_invariants();
        Ok(node)
    }

    // ----- Inputs -------------------------------------------------------

    /// Handles a message from a peer. Messages addressed to another node,
    /// or from a node that is not a voter, are dropped. A message no
    /// correct member sends is dropped whole and reported as
    /// [`Event::PeerFault`]; nothing a peer sends makes the node panic.
    pub fn handle_message(&mut self, now: Time, msg: Message) {
        if self.installing_snapshot() {
            // Lost, as far as the protocol can tell: it is sent again.
            return;
        }
        // From any member but this one: a member that joins hears from a
        // leader it does not know yet, and a voter may hear a candidate
        // whose configuration it has not received (thesis §4.1). Who may
        // connect at all is the driver's (authenticated) business.
        if self.shut_down || msg.to != self.config.id || msg.from == self.config.id {
            return;
        }
        self.step(now, msg);
        self.sync_membership(now);
        self.note_removal(now);
        self.debug_check_invariants();
    }

    /// Fires every timer that is due at `now`: elections for followers and
    /// candidates, heartbeats and CheckQuorum for the leader. Early or
    /// repeated calls do nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.installing_snapshot() {
            // Fired at the next call, after the install.
            return;
        }
        if self.shut_down {
            return;
        }
        if matches!(self.role, RoleState::Leader(_)) {
            self.leader_tick(now);
        } else if now >= self.election_deadline {
            let reason = self
                .election_reason
                .take()
                .unwrap_or(ElectionReason::ElectionTimeout {
                    last_leader: self.last_leader,
                    silent_for: self.last_leader_contact.map(|t| now.saturating_since(t)),
                });
            self.campaign(now, reason);
        }
        // A single-voter cluster wins at once and writes its configuration.
        self.sync_membership(now);
        self.note_removal(now);
        self.debug_check_invariants();
    }

    /// The driver lost its connection to `peer` (EOF, reset, refused). For a
    /// follower whose leader that is, the leader is no longer trusted: a
    /// pre-vote starts after a short random delay instead of a full election
    /// timeout. The pre-vote only succeeds if a majority also lost the
    /// leader, so one broken link never forces an election.
    pub fn handle_link_down(&mut self, now: Time, peer: NodeId) {
        if self.installing_snapshot() {
            return;
        }
        if self.shut_down || !self.replication_targets().contains(&peer) {
            return;
        }
        match &mut self.role {
            RoleState::Leader(ls) => {
                if let Some(pr) = ls.progress.get_mut(&peer) {
                    pr.become_probe();
                }
            }
            RoleState::Follower(_) if self.leader == Some(peer) => {
                self.set_leader(None);
                self.last_leader_contact = None;
                if self.config.fast_failover {
                    // Every survivor loses the leader at about the same
                    // moment. Independent random delays would let two of
                    // them campaign within one round trip and split the
                    // vote, costing a full election timeout. Instead they
                    // go in turn, by rank among the survivors (half a
                    // heartbeat apart, plus a little jitter): the first
                    // one with an up-to-date log wins in a round trip.
                    let step = self.config.heartbeat_interval.as_nanos() as u64 / 2;
                    let rank = self
                        .peers
                        .iter()
                        .filter(|&&p| p != peer && p < self.config.id)
                        .count() as u64;
                    let jitter = self.rng.range(0, step / 4 + 1);
                    let at = now + Duration::from_nanos(rank * step + jitter);
                    if at < self.election_deadline {
                        self.election_deadline = at;
                        self.election_reason =
                            Some(ElectionReason::LeaderLinkLost { leader: peer });
                    }
                }
            }
            _ => {}
        }
        self.debug_check_invariants();
    }

    /// The driver (re)established its connection to `peer`. A leader probes
    /// the peer at once, so a restarted follower hears from it before its
    /// own election timeout.
    pub fn handle_link_up(&mut self, now: Time, peer: NodeId) {
        if self.installing_snapshot() {
            return;
        }
        if self.shut_down || !self.replication_targets().contains(&peer) {
            return;
        }
        let _ = now;
        if let RoleState::Leader(ls) = &mut self.role {
            if let Some(pr) = ls.progress.get_mut(&peer) {
                pr.become_probe();
            }
            self.send_append(peer, true);
        }
        self.debug_check_invariants();
    }

    /// Proposes a command. On the leader it is appended to the log and
    /// replicated: the AppendEntries go out at the next [`Node::poll_action`],
    /// one per follower for all the proposals made since the last drain
    /// (so a driver that feeds a turn's requests before draining batches
    /// them); the returned id tells the caller which applied entry is
    /// its own (same index and term). Anywhere else the answer says who the
    /// leader is. A command longer than [`MAX_ENTRY_LEN`] is refused with
    /// [`ProposeError::TooLarge`] on any node, before anything is appended.
    pub fn propose(&mut self, now: Time, command: Bytes) -> Result<EntryId, ProposeError> {
        if self.installing_snapshot() {
            // Only a follower installs.
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.shut_down {
            return Err(ProposeError::NotLeader { leader: None });
        }
        // First: no member would accept the entry (the codec refuses it),
        // so redirecting the caller to the leader would not help either.
        if command.len() > MAX_ENTRY_LEN {
            return Err(ProposeError::TooLarge {
                len: command.len(),
                max: MAX_ENTRY_LEN,
            });
        }
        if !matches!(self.role, RoleState::Leader(_)) {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        let uncommitted = self.log.last_index().0 - self.commit_index.0;
        if uncommitted >= self.config.max_uncommitted_entries {
            return Err(ProposeError::Busy);
        }
        if let Some(target) = self.leadership_moving() {
            return Err(ProposeError::TransferInProgress { target });
        }
        let id = self.leader_append(now, EntryPayload::Command(command));
        self.replicate_at_drain();
        self.debug_check_invariants();
        Ok(id)
    }

    /// Registers a linearizable read under the caller's `id` (§6.4). When
    /// the leader has confirmed it still leads and applied everything
    /// committed when the read arrived, [`Action::ReadReady`] with this id
    /// comes out; if leadership is lost first, [`Action::ReadFailed`].
    ///
    /// A follower that knows its leader serves the read itself (thesis
    /// §6.4, "reads from followers"): it asks the leader for a read index,
    /// which the leader confirms as for its own reads, and answers once it
    /// has applied that far. If its leader changes first, or the leader
    /// refuses, the read fails with [`ReadError::NotLeader`]. A driver
    /// that wants reads on the leader only checks [`Node::role`] first.
    pub fn read_index(&mut self, now: Time, id: u64) -> Result<(), ReadError> {
        if self.installing_snapshot() {
            return Err(ReadError::Busy);
        }
        let _ = now;
        if self.shut_down {
            return Err(ReadError::NotLeader { leader: None });
        }
        let max_reads = self.config.max_pending_reads;
        let read_index = self
            .committed_in_current_term()
            .then_some(self.commit_index);
        let RoleState::Leader(ls) = &mut self.role else {
            return self.follower_read(id);
        };
        if !ls.queue_read(id, None, read_index, max_reads) {
            return Err(ReadError::Busy);
        }
        // A single-node cluster confirms itself.
        self.advance_reads();
        self.debug_check_invariants();
        Ok(())
    }

    /// The driver made this node's log durable up to and including the
    /// entry `index` of `term` (everything handed out in `AppendLog` and
    /// `TruncateLog` before it). A report for an entry the log no longer
    /// holds (it was truncated since) is ignored. The leader counts itself
    /// in commits only up to the durable index.
    pub fn handle_log_persisted(&mut self, now: Time, index: LogIndex, term: Term) {
        if self.installing_snapshot() {
            // Only a leader needs it, and only a follower installs.
            return;
        }
        let _ = now;
        if self.shut_down || self.log.term_at(index) != Some(term) || index <= self.persisted_index
        {
            return;
        }
        self.persisted_index = index;
        if let RoleState::Leader(ls) = &mut self.role {
            if self.persisted_index >= self.log.last_index() {
                ls.unpersisted_since = None;
            } else if ls.unpersisted_since.is_some() {
                // Progress: the driver does report. Under a steady write
                // load the durable index may trail the log for good; only
                // a driver that stops reporting altogether is what the
                // check is for.
                ls.unpersisted_since = Some(now);
            }
        }
        self.leader_maybe_commit(now);
        self.note_removal(now);
        self.debug_check_invariants();
    }

    /// The driver saved the state machine, as it stands after applying the
    /// entry `meta.last_index`, as a durable snapshot of `meta.len` bytes
    /// (§7). The node may then forget its log up to there: it keeps
    /// [`Config::compaction_trailing_entries`] entries before it for
    /// followers that lag a little, hands out [`Action::CompactLog`] for the
    /// rest, and sends this snapshot to followers that need what is gone.
    /// A snapshot not newer than the one it has is ignored.
    ///
    /// # Panics
    ///
    /// On caller misuse: a snapshot beyond what was applied, or whose
    /// last term is not the term of that entry in the log.
    /// Its `membership` must be [`Node::membership_at`] its last index.
    pub fn handle_snapshot_saved(&mut self, now: Time, meta: SnapshotMeta) {
        if self.installing_snapshot() {
            // The leader's snapshot, newer, is being installed.
            return;
        }
        let _ = now;
        if self.shut_down
            || self
                .snapshot
                .as_ref()
                .is_some_and(|s| s.last_index >= meta.last_index)
        {
            return;
        }
        assert!(
            meta.last_index.0 >= 1 && meta.len >= 1,
            "handle_snapshot_saved: an empty snapshot, or one at index 0"
        );
        assert!(
            meta.last_index <= self.last_applied,
            "handle_snapshot_saved: snapshot at {} beyond the applied index {}",
            meta.last_index,
            self.last_applied
        );
        assert_eq!(
            self.log.term_at(meta.last_index),
            Some(meta.last_term),
            "handle_snapshot_saved: snapshot term differs from the log's at {}",
            meta.last_index
        );
        assert_eq!(
            &*meta.membership,
            self.log.membership_at(meta.last_index),
            "handle_snapshot_saved: the snapshot's configuration is not the one at its index"
        );
        let last_index = meta.last_index;
        self.snapshot = Some(meta);
        let through = LogIndex(
            last_index
                .0
                .saturating_sub(self.config.compaction_trailing_entries),
        );
        if through > self.log.start_index() {
            self.log.compact_through(through);
            self.persist.push_back(Action::CompactLog { through });
        }
        self.debug_check_invariants();
    }

    /// Stops the node: no more actions, no more deadlines. Pending output
    /// is discarded (the process is going away).
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        self.hard_state_dirty = false;
        self.persist.clear();
        self.sends.clear();
        self.applies.clear();
        self.read_results.clear();
        self.events.clear();
    }

    // ----- Outputs ------------------------------------------------------

    /// The next action for the driver, in the order documented on
    /// [`Action`]. Drain until `None` after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.shut_down {
            return None;
        }
        if self.hard_state_dirty {
            self.hard_state_dirty = false;
            return Some(Action::SaveHardState(self.hard_state()));
        }
        if let Some(a) = self.persist.pop_front() {
            return Some(a);
        }
        if let RoleState::Leader(ls) = &mut self.role {
            let round = std::mem::take(&mut ls.round_pending);
            let replicate = std::mem::take(&mut ls.replicate_pending);
            if round {
                ls.round += 1;
            }
            if round || replicate {
                self.leader_flush(round);
            }
        }
        if let Some((message, len)) = self.sends.pop_front() {
            return Some(if len > 0 {
                Action::SendSnapshotChunk { message, len }
            } else {
                Action::Send(message)
            });
        }
        if let Some(e) = self.applies.pop_front() {
            return Some(Action::Apply(e));
        }
        if let Some(r) = self.read_results.pop_front() {
            return Some(r);
        }
        self.events.pop_front().map(Action::Event)
    }

    /// The next time `handle_timeout` has something to do, or `None` after
    /// `shutdown`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.shut_down {
            return None;
        }
        Some(match &self.role {
            // CheckQuorum runs at the first heartbeat at or after its
            // deadline, at most one heartbeat late (the config keeps the
            // election timeout at several heartbeats): a wake-up of its own
            // would send nothing when the check passes, as it nearly
            // always does.
            RoleState::Leader(ls) => ls.heartbeat_deadline,
            _ => self.election_deadline,
        })
    }

    // ----- Getters ------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower(_) => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.current_term
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// Highest index handed out as [`Action::Apply`].
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Terms more than [`Term::MAX_JUMP`] beyond this node's that voters
    /// claimed and not enough others vouched for yet, the highest per
    /// voter, by voter. Empty in a healthy cluster. Non-empty for long
    /// means this member fell far behind (it catches up once enough
    /// voters vouch) or a voter sends forged terms: worth showing in
    /// `INFO` and logging when it changes.
    pub fn term_claims(&self) -> Vec<(NodeId, Term)> {
        self.term_claims
            .iter()
            .filter(|(_, &t)| t > self.current_term.plus_max_jump())
            .map(|(&id, &t)| (id, t))
            .collect()
    }

    /// Index of the last log entry.
    pub fn last_log_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// Term and vote, as they must be persisted.
    pub fn hard_state(&self) -> HardState {
        HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
        }
    }

    /// The entry at `index`, if this node's log holds it.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Whether this node knows it was removed from the cluster: it was a
    /// member, the configuration in force does not name it, and that
    /// configuration is committed as far as it knows. A removed node never
    /// campaigns (nor does any non-voter) and serves no reads; it still
    /// answers what it is sent. It stops being removed once a
    /// configuration naming it is in force again (it was added back).
    ///
    /// The leader keeps telling a removed member until it acknowledges
    /// the commit, for a bounded time; a member that was away then never
    /// learns it, and after a restart a member learns the commit again
    /// only if its driver passes [`PersistentState::applied`] (raft-node
    /// does not): `false` then, though it does not campaign either, since
    /// the configuration in its log excludes it.
    pub fn is_removed(&self) -> bool {
        let m = self.log.membership();
        self.was_member
            && !m.voters.is_empty()
            && !m.contains(self.config.id)
            && self.log.membership_index() <= self.commit_index
    }

    /// Reports a removal once, when [`Node::is_removed`] becomes true (as
    /// [`Event::RoleChanged`] to follower, reason
    /// [`RoleChangeReason::RemovedFromConfiguration`]); a leader that
    /// removed itself reports it with its step-down. Reads this follower
    /// was serving fail.
    pub(crate) fn note_removal(&mut self, now: Time) {
        let removed = self.is_removed();
        if !removed {
            self.removal_reported = false;
            return;
        }
        if self.removal_reported {
            return;
        }
        self.removal_reported = true;
        if let RoleState::Follower(follower) = &mut self.role {
            for (id, _) in std::mem::take(&mut follower.remote_reads) {
                self.read_results.push_back(Action::ReadFailed {
                    id,
                    error: ReadError::NotLeader { leader: None },
                });
            }
        }
        let reason = RoleChangeReason::RemovedFromConfiguration;
        if matches!(self.role, RoleState::Follower(_)) {
            self.events.push_back(Event::RoleChanged {
                role: Role::Follower,
                term: self.current_term,
                reason,
            });
        } else {
            self.become_follower(now, self.current_term, None, reason);
        }
    }

    /// Everything `INFO raft` shows.
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role(),
            term: self.current_term,
            leader: self.leader,
            voted_for: self.voted_for,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            log_start_index: self.log.start_index(),
            snapshot: self.snapshot.clone(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- Validation, the term rules (§5.1), dispatch by role -----------

    /// Every peer message goes through three stages, as in etcd's `Step`:
    /// what makes it impossible (it is dropped whole and reported), the
    /// term rules, applied here once, and the step function of the role,
    /// which only sees messages of its own term (or, for pre-votes, the
    /// next one) and has a case only for what can happen in that role.
    fn step(&mut self, now: Time, msg: Message) {
        if let Err(fault) = self.check_message(&msg) {
            self.peer_fault(msg.from, fault);
            return;
        }
        if !self.within_term_bound(now, &msg) {
            return;
        }
        if !self.apply_term_rules(now, &msg) {
            return;
        }
        match &mut self.role {
            // The leader's state is borrowed here once: it takes the
            // message in, with the parts of the node it reads, and says
            // what the node must do next.
            RoleState::Leader(leader) => {
                // What a read arriving now waits for: the commit index,
                // once this leader committed an entry of its term (§6.4).
                let read_index = || {
                    (self.log.term_at(self.commit_index) == Some(self.current_term))
                        .then_some(self.commit_index)
                };
                let next = leader.step(msg, &self.log, read_index, &self.config);
                self.step_leader(now, next)
            }
            RoleState::PreCandidate { .. } | RoleState::Candidate { .. } => {
                self.step_candidate(now, msg)
            }
            RoleState::Follower(_) => self.step_follower(now, msg),
        }
    }

    /// The faults that do not depend on the role. They are found before
    /// the term rules, so that an impossible message does not even raise
    /// this node's term.
    fn check_message(&self, msg: &Message) -> Result<(), PeerFault> {
        if msg.term > Term::MAX {
            return Err(PeerFault::TermAboveMax { term: msg.term });
        }
        // The codec already refused all of these; a driver that builds
        // messages another way must not be able to reach the handlers'
        // assertions either. One linear pass, cheap next to the clone of
        // the entries that follows.
        codec::check(msg).map_err(|rule| PeerFault::Malformed { rule })?;
        match &msg.body {
            // An AppendEntries of an older term may well contradict our
            // committed entries (a deposed leader's uncommitted tail), but
            // it is only answered, never applied.
            MessageBody::AppendEntries(ae) if msg.term >= self.current_term => {
                self.check_append_entries(ae)
            }
            _ => Ok(()),
        }
    }

    /// Drops a message that came from `peer` and reports why.
    pub(crate) fn peer_fault(&mut self, peer: NodeId, fault: PeerFault) {
        self.events.push_back(Event::PeerFault { peer, fault });
    }

    // ----- For the role transitions (each `become_*` lives with its role) --

    pub(crate) fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            // Reads this follower serves were confirmed by the old leader,
            // or not at all: the new one knows nothing of them.
            if let RoleState::Follower(follower) = &mut self.role {
                for (id, _) in std::mem::take(&mut follower.remote_reads) {
                    self.read_results.push_back(Action::ReadFailed {
                        id,
                        error: ReadError::NotLeader { leader },
                    });
                }
            }
            self.leader = leader;
            if leader.is_some() {
                self.last_leader = leader;
            }
            self.events.push_back(Event::LeaderChanged {
                leader,
                term: self.current_term,
            });
        }
    }

    pub(crate) fn reset_election_deadline(&mut self, now: Time) {
        let min = self.config.election_timeout_min.as_nanos() as u64;
        let max = self.config.election_timeout_max.as_nanos() as u64;
        self.election_deadline = now + Duration::from_nanos(self.rng.range(min, max));
    }

    // ----- Output helpers -------------------------------------------------

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.sends.push_back((
            Message {
                from: self.config.id,
                to,
                term: self.current_term,
                body,
            },
            0,
        ));
    }

    pub(crate) fn send_read_index_response(
        &mut self,
        to: NodeId,
        id: u64,
        read_index: Option<LogIndex>,
    ) {
        let r = crate::message::ReadIndexResponse { id, read_index };
        self.send(to, MessageBody::ReadIndexResponse(r));
    }

    pub(crate) fn send_vote_response(
        &mut self,
        to: NodeId,
        term: Term,
        pre_vote: bool,
        granted: bool,
    ) {
        self.sends.push_back((
            Message {
                from: self.config.id,
                to,
                term,
                body: MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted }),
            },
            0,
        ));
    }

    /// Moves `commit_index` forward and queues the newly committed entries
    /// for application.
    pub(crate) fn advance_commit(&mut self, index: LogIndex) {
        if index <= self.commit_index {
            return;
        }
        assert!(
            index <= self.log.last_index(),
            "commit invariant: commit within log"
        );
        self.commit_index = index;
        let from = self.last_applied.next();
        for e in self.log.range(from, index) {
            self.applies.push_back(e.clone());
        }
        self.last_applied = index;
        self.advance_remote_reads();
        if let RoleState::Leader(ls) = &mut self.role {
            if self.log.term_at(index) == Some(self.current_term) {
                ls.reads.set_missing_read_index(index);
            }
        }
        self.advance_reads();
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term_at(self.commit_index) == Some(self.current_term)
    }

    // ----- Invariants -----------------------------------------------------

    pub(crate) fn debug_check_invariants(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// Asserts the node's internal invariants, naming the one that fails.
    /// Runs after every input in debug builds; the simulator calls it after
    /// every step in any build.
    pub fn check_invariants(&self) {
        self.log.check_tail();
        assert!(
            self.commit_index <= self.log.last_index(),
            "invariant: commit_index <= last log index"
        );
        assert!(
            self.last_applied <= self.commit_index,
            "invariant: last_applied <= commit_index"
        );
        assert!(
            self.persisted_index <= self.log.last_index(),
            "invariant: persisted_index <= last log index"
        );
        assert!(
            self.log.last_term() <= self.current_term,
            "invariant: no log entry from a future term"
        );
        let snapshot_index = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        assert!(
            self.log.start_index() <= snapshot_index,
            "invariant: only what a snapshot covers is compacted"
        );
        assert!(
            snapshot_index <= self.last_applied,
            "invariant: a snapshot covers only applied entries"
        );
        assert!(
            self.membership_epoch == self.log.config_epoch()
                && self.membership == *self.log.membership(),
            "invariant: the node follows the configuration in its log"
        );
        debug_assert_eq!(
            self.peers,
            Self::peers_of(&self.membership, self.config.id),
            "invariant: the peers are the configuration's other members"
        );
        match &self.role {
            RoleState::Leader(leader) => leader.check_invariants(self),
            RoleState::Candidate { .. } => {
                assert_eq!(
                    self.voted_for,
                    Some(self.config.id),
                    "invariant: a candidate voted for itself"
                );
                assert_eq!(self.leader, None, "invariant: a candidate knows no leader");
            }
            RoleState::PreCandidate { incoming, .. } => {
                assert_eq!(
                    self.leader, None,
                    "invariant: a pre-candidate knows no leader"
                );
                if let Some(inc) = incoming {
                    inc.check_invariants();
                }
            }
            RoleState::Follower(follower) => {
                assert_ne!(
                    self.leader,
                    Some(self.config.id),
                    "invariant: a follower does not lead"
                );
                assert!(
                    follower.remote_reads.is_empty() || self.leader.is_some(),
                    "invariant: only a follower with a leader serves reads"
                );
                follower.check_invariants();
            }
        }
    }
}
