//! An in-memory cluster of real [`Node`]s on a virtual clock and a seeded,
//! faulty network. This file holds the cluster and its run loop; the
//! network model and the hostile peer are in `network`, the faults a test
//! injects in `faults`, the state machine each member runs in `machine`,
//! and the checks after every step in `checks`.

mod checks;
mod faults;
mod machine;
mod network;

pub use checks::describe;
pub use machine::encode_write;
use machine::{decode_machine, machine_hash};
pub use network::{forge_frame, NetConfig};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use super::checker::{Checker, Violation};
use super::disk::{CheckedDisk, SimDisk};
use crate::driver::{Driver, Transport};
use crate::{
    Action, Config, Entry, EntryId, Event, HardState, LogIndex, MembershipChange, Message, Node,
    NodeId, ProposeError, ReadError, Rng, Role, Term, Time, TransferError,
};

/// What the cluster reports to a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// `node` applied the entry at `index`, of term `term`, with `payload`.
    Applied {
        /// The node.
        node: NodeId,
        /// The entry.
        entry: Entry,
    },
    /// A read registered on `node` may be served; `value` is what that
    /// node's state machine holds for the read's key.
    ReadReady {
        /// The node.
        node: NodeId,
        /// The read's id.
        id: u64,
        /// The value read.
        value: Option<u64>,
    },
    /// A read failed.
    ReadFailed {
        /// The node.
        node: NodeId,
        /// The read's id.
        id: u64,
    },
    /// The node's process ended (crash): its pending work has an unknown
    /// outcome.
    Crashed {
        /// The node.
        node: NodeId,
    },
}

#[derive(Debug)]
enum Scheduled {
    Deliver(Message),
    /// The sync in flight on a member's disk completes.
    SyncDone {
        node: NodeId,
        incarnation: u64,
    },
    LinkDown {
        node: NodeId,
        peer: NodeId,
    },
    LinkUp {
        node: NodeId,
        peer: NodeId,
    },
}

struct Member {
    node: Option<Node>,
    frozen: bool,
    /// The production driver: persist, sync, send in the safe order.
    driver: Driver,
    /// A disk that loses unsynced writes on a crash.
    disk: SimDisk,
    /// Its syncs do not complete while set (a stalled disk).
    disk_stalled: bool,
    /// The disk's records failed their checksums at the last restart: the
    /// member refused to start and stays down.
    refused: Option<LogIndex>,
    machine: BTreeMap<u64, u64>,
    /// The last entry applied to `machine` (or the snapshot it came from).
    applied: (LogIndex, Term),
    /// The last index a snapshot was taken at or restored from.
    snapshot_index: LogIndex,
    reads: BTreeMap<u64, u64>,
    incarnation: u64,
    /// Messages that arrived while frozen, in order (the socket buffers).
    held: Vec<Message>,
}

/// The network as the driver's transport: what a drain sends, collected.
#[derive(Default)]
struct Outbox(Vec<Message>);

impl Transport for Outbox {
    fn send(&mut self, msg: Message) {
        self.0.push(msg);
    }
}

/// A simulated cluster. Every step delivers one message, fires one node's
/// timers, or reports one link change, then checks the safety properties.
pub struct Cluster {
    now: Time,
    seed: u64,
    ids: Vec<NodeId>,
    members: BTreeMap<NodeId, Member>,
    queue: BTreeMap<(Time, u64), Scheduled>,
    seq: u64,
    /// Directed links that drop everything (iptables DROP).
    blocked: BTreeSet<(NodeId, NodeId)>,
    rng: Rng,
    /// The network's behaviour; may be changed between steps.
    pub net: NetConfig,
    template: Config,
    checker: Checker,
    completions: Vec<Completion>,
    sent: BTreeMap<&'static str, u64>,
    trace: Option<Vec<String>>,
    violation: Option<Violation>,
    /// With `Some`, the caller is the network: sent messages wait here
    /// until it delivers or drops them.
    in_flight: Option<Vec<Message>>,
    /// Set while a forged message is being handled.
    forging: bool,
    /// Peer faults reported on forged messages: (reporter, event).
    peer_faults: Vec<(NodeId, Event)>,
    /// Members that reported their removal and still know it (a removal
    /// is reported once per process).
    removal_reported: BTreeSet<NodeId>,
    /// Removals reported, in all.
    removals: u64,
    snapshots_taken: u64,
    snapshots_installed: u64,
    transfer_elections: u64,
}

impl Cluster {
    /// A cluster of `n` fresh nodes with ids 1..=n, the default node
    /// configuration and a perfect network, all randomness derived from `seed`.
    pub fn new(n: u64, seed: u64) -> Cluster {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let template = Config::new(NodeId(1), ids.clone());
        Cluster::with_config(template, seed)
    }

    /// A cluster whose nodes use `template` (its `id` and `seed` are
    /// replaced per node).
    pub fn with_config(template: Config, seed: u64) -> Cluster {
        Cluster::with_spares(template, &[], seed)
    }

    /// Like [`Cluster::with_config`], plus nodes that are not in the
    /// bootstrap configuration: they start empty, as a member that joins
    /// does, and take part once a configuration change adds them.
    pub fn with_spares(template: Config, spares: &[NodeId], seed: u64) -> Cluster {
        let mut ids = template.voters.clone();
        ids.extend_from_slice(spares);
        let mut c = Cluster {
            now: Time::ZERO,
            seed,
            ids: ids.clone(),
            members: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            rng: Rng::new(seed ^ 0x005E_ED0F_C1A5_7E25),
            net: NetConfig::default(),
            template,
            checker: Checker::default(),
            completions: Vec::new(),
            sent: BTreeMap::new(),
            trace: None,
            violation: None,
            in_flight: None,
            forging: false,
            peer_faults: Vec::new(),
            removal_reported: BTreeSet::new(),
            removals: 0,
            snapshots_taken: 0,
            snapshots_installed: 0,
            transfer_elections: 0,
        };
        for id in ids {
            c.members.insert(
                id,
                Member {
                    node: None,
                    frozen: false,
                    driver: Driver::new(),
                    disk: SimDisk::default(),
                    disk_stalled: false,
                    refused: None,
                    machine: BTreeMap::new(),
                    applied: (LogIndex(0), Term(0)),
                    snapshot_index: LogIndex(0),
                    reads: BTreeMap::new(),
                    incarnation: 0,
                    held: Vec::new(),
                },
            );
            c.boot(id);
        }
        c
    }

    /// Starts the member's process from what its disk recovers. Returns
    /// false if recovery refused a corrupt record: the member stays down.
    fn boot(&mut self, id: NodeId) -> bool {
        let m = self.members.get_mut(&id).expect("member");
        m.incarnation += 1;
        let mut cfg = self.template.clone();
        if !cfg.voters.contains(&id) {
            // A spare joins: it bootstraps nothing.
            cfg.voters.clear();
        }
        cfg.id = id;
        cfg.seed = self
            .seed
            .wrapping_mul(0x100_0000_01B3)
            .wrapping_add(id.0 * 1_000_003 + m.incarnation);
        let (state, snapshot) = match m.disk.recover() {
            Ok(r) => r,
            Err(index) => {
                // Like raft-node: a record that fails its checksum is
                // refused, never applied, and the member does not start.
                m.refused = Some(index);
                return false;
            }
        };
        m.driver = Driver::new();
        let meta = state.snapshot.clone();
        m.node = Some(Node::new(cfg, state, self.now).expect("valid sim config"));
        m.machine = snapshot.as_deref().map(decode_machine).unwrap_or_default();
        m.applied = meta
            .as_ref()
            .map_or((LogIndex(0), Term(0)), |s| (s.last_index, s.last_term));
        m.snapshot_index = m.applied.0;
        m.reads.clear();
        m.frozen = false;
        self.checker.on_restart(id);
        if let Some(meta) = meta {
            let r = self.checker.on_restore(id, &meta, machine_hash(&m.machine));
            if let Err(v) = r {
                self.violation.get_or_insert(v);
            }
        }
        true
    }

    /// Records every step as a line of text, for transcripts and replays.
    pub fn enable_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// The trace so far (empty unless enabled).
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn log_line(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{} {}", self.now, line()));
        }
    }

    // ----- Observation ----------------------------------------------------

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Member ids.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// The node, if its process is running.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.members.get(&id).and_then(|m| m.node.as_ref())
    }

    /// Whether the node is running and not frozen.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.node.is_some() && !m.frozen)
    }

    /// The running, unfrozen node that leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.ids
            .iter()
            .filter(|&&id| self.is_up(id))
            .filter_map(|&id| {
                self.node(id)
                    .filter(|n| n.role() == Role::Leader)
                    .map(|n| (n.term(), id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// The value `node`'s state machine holds for `key`.
    pub fn value(&self, node: NodeId, key: u64) -> Option<u64> {
        self.members[&node].machine.get(&key).copied()
    }

    /// Messages sent so far, by kind (see [`Message::kind`]).
    pub fn messages_sent(&self) -> &BTreeMap<&'static str, u64> {
        &self.sent
    }

    /// Resets the message counters.
    pub fn reset_message_counts(&mut self) {
        self.sent.clear();
    }

    /// Removals members reported ([`crate::Node::is_removed`] became true)
    /// so far.
    pub fn removals_reported(&self) -> u64 {
        self.removals
    }

    /// Snapshots taken so far, and installed from a leader.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        (self.snapshots_taken, self.snapshots_installed)
    }

    /// Elections started by a leadership transfer (TimeoutNow) so far.
    pub fn transfer_elections(&self) -> u64 {
        self.transfer_elections
    }

    /// The safety checker (for statistics).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The first safety violation seen, if any. Once set, the run is over.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// Takes the completions reported since the last call.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    // ----- Client operations ------------------------------------------------

    /// Proposes a command on `id`.
    pub fn propose(&mut self, id: NodeId, command: Bytes) -> Result<EntryId, ProposeError> {
        self.on_node(id, |n, now| n.propose(now, command))
            .unwrap_or(Err(ProposeError::NotLeader { leader: None }))
    }

    /// Runs `f` on `id`'s node if it is up, then carries out its output.
    fn on_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut Node, Time) -> R) -> Option<R> {
        if !self.is_up(id) {
            return None;
        }
        let now = self.now;
        let node = self.members.get_mut(&id).and_then(|m| m.node.as_mut());
        let r = f(node.expect("up"), now);
        self.after_input(id);
        Some(r)
    }

    /// Proposes a configuration change on `id` (an empty context).
    pub fn propose_membership(
        &mut self,
        id: NodeId,
        change: MembershipChange,
    ) -> Result<EntryId, ProposeError> {
        self.on_node(id, |n, now| n.propose_membership(now, change, Bytes::new()))
            .unwrap_or(Err(ProposeError::NotLeader { leader: None }))
    }

    /// Asks `id` to hand its leadership to `target` (or the best voter).
    pub fn transfer_leadership(
        &mut self,
        id: NodeId,
        target: Option<NodeId>,
    ) -> Result<NodeId, TransferError> {
        self.on_node(id, |n, now| n.transfer_leadership(now, target))
            .unwrap_or(Err(TransferError::NotLeader { leader: None }))
    }

    /// Registers a linearizable read of `key` on `id`.
    pub fn read(&mut self, id: NodeId, read_id: u64, key: u64) -> Result<(), ReadError> {
        if !self.is_up(id) {
            return Err(ReadError::NotLeader { leader: None });
        }
        let now = self.now;
        let m = self.members.get_mut(&id).expect("member");
        let r = m.node.as_mut().expect("up").read_index(now, read_id);
        if r.is_ok() {
            m.reads.insert(read_id, key);
        }
        self.after_input(id);
        r
    }

    // ----- Running ------------------------------------------------------------

    fn schedule(&mut self, at: Time, what: Scheduled) {
        self.seq += 1;
        self.queue.insert((at, self.seq), what);
    }

    /// The time of the next step, if anything is pending.
    fn next_event(&self) -> Option<Time> {
        let net = self.queue.keys().next().map(|(t, _)| *t);
        let timers = self
            .members
            .iter()
            .filter(|(_, m)| !m.frozen)
            .filter_map(|(&id, m)| {
                let deadline = m.node.as_ref().and_then(|n| n.poll_timeout())?;
                Some(self.wake_at(id, deadline))
            })
            .min();
        // A deadline that passed while a node was frozen fires at once.
        let next = match (net, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|t| t.max(self.now))
    }

    /// Runs until `deadline` or until a completion is reported or a safety
    /// violation found, whichever is first. Returns false on a violation.
    pub fn run_until(&mut self, deadline: Time) -> bool {
        while self.violation.is_none() && self.completions.is_empty() {
            match self.next_event() {
                Some(t) if t <= deadline => self.step(t),
                _ => {
                    self.now = self.now.max(deadline);
                    break;
                }
            }
        }
        self.violation.is_none()
    }

    /// Runs for `d` of virtual time, discarding completions.
    pub fn run_for(&mut self, d: Duration) -> bool {
        let deadline = self.now + d;
        while self.now < deadline && self.violation.is_none() {
            self.run_until(deadline);
            self.completions.clear();
        }
        self.violation.is_none()
    }

    /// Runs until `pred` holds or `d` passes; returns whether it held.
    pub fn run_until_pred(&mut self, d: Duration, mut pred: impl FnMut(&Cluster) -> bool) -> bool {
        let deadline = self.now + d;
        loop {
            if pred(self) {
                return true;
            }
            if self.now >= deadline || self.violation.is_some() {
                return false;
            }
            // Step one event at a time so the predicate sees every state.
            match self.next_event() {
                Some(t) if t <= deadline => self.step(t),
                _ => self.now = deadline,
            }
            self.completions.clear();
        }
    }

    fn step(&mut self, t: Time) {
        assert!(t >= self.now, "virtual time never goes back");
        self.now = t;
        // Network events first, in order; then timers.
        if let Some((&(at, seq), _)) = self.queue.iter().next() {
            if at <= t {
                let what = self.queue.remove(&(at, seq)).expect("present");
                self.handle_scheduled(what);
                return;
            }
        }
        for id in self.ids.clone() {
            let due = self.members[&id]
                .node
                .as_ref()
                .and_then(|n| n.poll_timeout())
                .is_some_and(|d| self.wake_at(id, d) <= t);
            if due && !self.members[&id].frozen {
                let now = self.now;
                let node = self
                    .members
                    .get_mut(&id)
                    .and_then(|m| m.node.as_mut())
                    .expect("up");
                let before = (node.role(), node.term());
                node.handle_timeout(now);
                let sent = self.after_input_with(id, Vec::new());
                self.check_leader_wake_up(id, before, sent);
                return;
            }
        }
    }

    /// When a member whose timer is due at `deadline` wakes
    /// ([`NetConfig::timer_lateness`]).
    fn wake_at(&self, id: NodeId, deadline: Time) -> Time {
        let max = self.net.timer_lateness.as_nanos() as u64;
        if max == 0 {
            return deadline;
        }
        let mix =
            Rng::new(self.seed ^ id.0.rotate_left(32) ^ deadline.since_epoch().as_nanos() as u64)
                .range(0, max + 1);
        deadline + Duration::from_nanos(mix)
    }

    fn handle_scheduled(&mut self, what: Scheduled) {
        match what {
            Scheduled::Deliver(msg) => {
                let to = msg.to;
                if self.blocked.contains(&(msg.from, to)) {
                    return;
                }
                let m = &self.members[&to];
                if m.node.is_none() {
                    return;
                }
                if m.frozen {
                    // Held in the socket buffer until the process runs again.
                    self.members.get_mut(&to).expect("member").held.push(msg);
                    return;
                }
                self.log_line(|| format!("{msg}"));
                let now = self.now;
                self.members
                    .get_mut(&to)
                    .and_then(|m| m.node.as_mut())
                    .expect("up")
                    .handle_message(now, msg);
                for msg in self.take_batch(to) {
                    self.log_line(|| format!("{msg} (same drain)"));
                    self.members
                        .get_mut(&to)
                        .and_then(|m| m.node.as_mut())
                        .expect("up")
                        .handle_message(now, msg);
                }
                self.after_input(to);
            }
            Scheduled::SyncDone { node, incarnation } => {
                let m = self.members.get_mut(&node).expect("member");
                if m.incarnation != incarnation || m.node.is_none() {
                    return; // the process died before its sync completed
                }
                if m.frozen || m.disk_stalled {
                    // A stopped process learns of its fsync only once it
                    // runs again; a stalled disk has not finished.
                    let at = self.now + Duration::from_millis(5);
                    self.schedule(at, Scheduled::SyncDone { node, incarnation });
                    return;
                }
                m.disk.complete_sync();
                let now = self.now;
                let mut outbox = Outbox::default();
                m.driver
                    .sync_completed(m.node.as_mut().expect("up"), now, &mut outbox);
                self.after_input_with(node, outbox.0);
            }
            Scheduled::LinkDown { node, peer } | Scheduled::LinkUp { node, peer }
                if !self.is_up(node) =>
            {
                let _ = (node, peer);
            }
            Scheduled::LinkDown { node, peer } => {
                self.log_line(|| format!("n{node} link to n{peer} down"));
                let now = self.now;
                self.members
                    .get_mut(&node)
                    .and_then(|m| m.node.as_mut())
                    .expect("up")
                    .handle_link_down(now, peer);
                self.after_input(node);
            }
            Scheduled::LinkUp { node, peer } => {
                if !self.is_up(peer) || self.blocked.contains(&(node, peer)) {
                    return;
                }
                self.log_line(|| format!("n{node} link to n{peer} up"));
                let now = self.now;
                self.members
                    .get_mut(&node)
                    .and_then(|m| m.node.as_mut())
                    .expect("up")
                    .handle_link_up(now, peer);
                self.after_input(node);
            }
        }
    }

    /// The messages for `to` due within [`NetConfig::batch_window`], taken
    /// off the queue in order, to be fed before the next drain: up to the
    /// first other event for `to` (a sync's end, a link change), which
    /// keeps its place; blocked messages stay to be dropped at their time.
    fn take_batch(&mut self, to: NodeId) -> Vec<Message> {
        if self.net.batch_window.is_zero() {
            return Vec::new();
        }
        let until = self.now + self.net.batch_window;
        let mut keys = Vec::new();
        for (&key, what) in self.queue.range(..=(until, u64::MAX)) {
            match what {
                Scheduled::Deliver(m) if m.to == to => {
                    if !self.blocked.contains(&(m.from, to)) {
                        keys.push(key);
                    }
                }
                Scheduled::Deliver(_) => {}
                Scheduled::SyncDone { node, .. }
                | Scheduled::LinkDown { node, .. }
                | Scheduled::LinkUp { node, .. } => {
                    if *node == to {
                        break;
                    }
                }
            }
        }
        keys.into_iter()
            .map(|k| match self.queue.remove(&k) {
                Some(Scheduled::Deliver(m)) => m,
                _ => unreachable!("taken from the queue above"),
            })
            .collect()
    }

    /// Drains the node's actions through the production driver, carries
    /// out what it hands back, then checks safety.
    fn after_input(&mut self, id: NodeId) {
        self.after_input_with(id, Vec::new());
    }

    /// Like [`Cluster::after_input`], with messages the driver already
    /// released (on a sync's completion) to send first. Returns how many
    /// messages the member sent.
    fn after_input_with(&mut self, id: NodeId, released: Vec<Message>) -> usize {
        let sync_was_in_flight = self.members[&id].disk.sync_in_flight();
        let (actions, outbox, mut result) = self.drain(id, released);
        let mut removal_reports = 0;
        for action in actions {
            let r = self.carry_out(id, action, &mut removal_reports);
            if result.is_ok() {
                result = r;
            }
        }
        let result = self.check_after_input(id, result, removal_reports, &outbox);
        if let Err(v) = result {
            self.violation
                .get_or_insert(Violation(format!("at {}: {v}", self.now)));
        }
        let member = &self.members[&id];
        if member.disk.sync_in_flight() && !sync_was_in_flight {
            let incarnation = member.incarnation;
            let d = self
                .rng
                .range(0, self.net.fsync_delay.as_nanos() as u64 + 1);
            let at = self.now + Duration::from_nanos(d);
            self.schedule(
                at,
                Scheduled::SyncDone {
                    node: id,
                    incarnation,
                },
            );
        }
        let sent = outbox.len();
        for m in outbox {
            self.transmit(m);
        }
        self.maybe_snapshot(id);
        sent
    }

    /// Drains `id`'s node through the production driver onto its disk,
    /// the checker watching every write: the actions the driver hands
    /// back to carry out, the messages to send (after `released`), and
    /// the checker's verdict on the writes.
    fn drain(
        &mut self,
        id: NodeId,
        released: Vec<Message>,
    ) -> (Vec<Action>, Vec<Message>, Result<(), Violation>) {
        let now = self.now;
        let member = self.members.get_mut(&id).expect("member");
        let node = member.node.as_mut().expect("running");
        let mut result = Ok(());
        let mut outbox = Outbox(released);
        let mut out = Vec::new();
        let mut disk = CheckedDisk {
            id,
            disk: &mut member.disk,
            checker: &mut self.checker,
            result: &mut result,
        };
        let drained = member
            .driver
            .drain(node, now, &mut disk, &mut outbox, &mut out);
        match drained {
            Ok(()) => {}
            Err(never) => match never {},
        }
        (out, outbox.0, result)
    }

    /// Whether `id` holds appends it wrote but has not synced yet.
    pub fn has_unsynced_entries(&self, id: NodeId) -> bool {
        self.members[&id].disk.has_unsynced_entries()
    }

    /// If `id` refused to start because a durable record failed its
    /// checksum: the entry whose record it was.
    pub fn refused(&self, id: NodeId) -> Option<LogIndex> {
        self.members[&id].refused
    }

    /// The durable hard state of `id`.
    pub fn persisted_hard_state(&self, id: NodeId) -> HardState {
        self.members[&id].disk.durable_hs
    }

    /// The last index of `id`'s durable log.
    pub fn persisted_last_index(&self, id: NodeId) -> LogIndex {
        let (start, log) = self.members[&id].disk.durable_log();
        start.plus(log.len() as u64)
    }

    /// Term of `id`'s durable log entry at `index`, if the durable log
    /// holds it (not compacted).
    pub fn persisted_term_at(&self, id: NodeId, index: LogIndex) -> Option<Term> {
        // The snapshot's last entry counts: with no trailing log kept, a
        // member may compact exactly through the entry asked about.
        self.members[&id].disk.durable_term_at(index)
    }
}
