//! An in-memory cluster of real [`Node`]s on a virtual clock and a seeded,
//! faulty network.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::checker::{Checker, Violation};
use super::disk::{CheckedDisk, SimDisk};
use crate::codec;
use crate::driver::{Driver, Transport};
use crate::{
    Action, Config, Entry, EntryId, EntryPayload, Event, HardState, LogIndex, MembershipChange,
    Message, MessageBody, Node, NodeId, ProposeError, ReadError, Rng, Role, SnapshotMeta, Term,
    Time, TransferError,
};

/// The network's behaviour.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way delay is uniform in `[min_delay, max_delay)`; different delays
    /// reorder messages.
    pub min_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// How long after a process dies its peers see the connection close.
    pub eof_delay: Duration,
    /// A sync of a member's disk takes uniformly up to this.
    pub fsync_delay: Duration,
    /// Probability that a restart finds one durable record corrupt (a read
    /// fault): the member must refuse to start.
    pub corrupt_on_restart: f64,
    /// A member snapshots its state machine once it has applied this many
    /// entries since its last snapshot (0: never), and compacts its log.
    pub snapshot_every: u64,
    /// Probability that an answer (a vote, an append or snapshot answer,
    /// a read index) takes the long way: a delay uniform in
    /// `slow_reply_delay` instead (a congested or far network).
    pub slow_replies: f64,
    /// The range of a slow answer's delay.
    pub slow_reply_delay: (Duration, Duration),
    /// A member that receives a message also takes every other message
    /// for it due within this window before draining (zero: one message
    /// per drain). `raft-node` reads all its sockets, then drains once a
    /// loop turn: several answers, appends and read requests reach the
    /// node between two drains, which is what the leader's one
    /// AppendEntries per follower per drain is built on.
    pub batch_window: Duration,
    /// A member's timer fires up to this late (zero: exactly at its
    /// deadline), by an amount fixed by the seed, the member and the
    /// deadline: a real loop wakes late by varying amounts, so deadlines
    /// set from its clock drift apart, which exact wake-ups never show.
    pub timer_lateness: Duration,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
            loss: 0.0,
            duplicate: 0.0,
            eof_delay: Duration::from_millis(1),
            fsync_delay: Duration::from_millis(2),
            corrupt_on_restart: 0.0,
            snapshot_every: 0,
            slow_replies: 0.0,
            slow_reply_delay: (Duration::from_millis(200), Duration::from_millis(2200)),
            batch_window: Duration::ZERO,
            timer_lateness: Duration::ZERO,
        }
    }
}

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

/// The sim's state machine: a register per key. Commands are 16 bytes:
/// key and value, big-endian.
pub fn encode_write(key: u64, value: u64) -> Bytes {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&key.to_be_bytes());
    v.extend_from_slice(&value.to_be_bytes());
    Bytes::from(v)
}

/// The sim state machine's snapshot: a version byte, then each key and
/// value big-endian, in key order.
fn encode_machine(machine: &BTreeMap<u64, u64>) -> Bytes {
    let mut v = Vec::with_capacity(1 + 16 * machine.len());
    v.push(1);
    for (k, val) in machine {
        v.extend_from_slice(&k.to_be_bytes());
        v.extend_from_slice(&val.to_be_bytes());
    }
    Bytes::from(v)
}

fn decode_machine(data: &[u8]) -> BTreeMap<u64, u64> {
    assert_eq!(data.first(), Some(&1), "sim snapshot version");
    assert_eq!((data.len() - 1) % 16, 0, "sim snapshot length");
    data[1..]
        .chunks(16)
        .map(|c| decode_write(c).expect("16 bytes"))
        .collect()
}

/// A fingerprint of a state machine, for the checker.
fn machine_hash(machine: &BTreeMap<u64, u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encode_machine(machine).iter() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn decode_write(cmd: &[u8]) -> Option<(u64, u64)> {
    if cmd.len() != 16 {
        return None;
    }
    let key = u64::from_be_bytes(cmd[..8].try_into().ok()?);
    let value = u64::from_be_bytes(cmd[8..].try_into().ok()?);
    Some((key, value))
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

    // ----- Faults -------------------------------------------------------------

    /// Kills the process: what was not persisted is lost, peers see the
    /// connection close after `net.eof_delay`.
    pub fn crash(&mut self, id: NodeId) {
        let m = self.members.get_mut(&id).expect("member");
        if m.node.is_none() {
            return;
        }
        m.node = None;
        m.frozen = false;
        m.reads.clear();
        m.held.clear();
        self.removal_reported.remove(&id);
        // Messages the driver held for a sync never left; of the writes
        // not yet synced, the disk keeps a prefix (maybe torn).
        m.driver.crash();
        let (kept, unsynced) = m
            .disk
            .crash(&mut self.rng, self.checker.committed_entries());
        self.log_line(|| format!("n{id} crashed ({kept} of {unsynced} unsynced writes survived)"));
        self.completions.push(Completion::Crashed { node: id });
        for peer in self.ids.clone() {
            if peer != id {
                // Like TCP, the close arrives after all data sent before it.
                let at = self.last_delivery(id, peer).max(self.now) + self.net.eof_delay;
                self.schedule(
                    at,
                    Scheduled::LinkDown {
                        node: peer,
                        peer: id,
                    },
                );
            }
        }
    }

    /// When the last message in flight from `from` to `to` arrives.
    fn last_delivery(&self, from: NodeId, to: NodeId) -> Time {
        self.queue
            .iter()
            .filter_map(|(&(t, _), s)| match s {
                Scheduled::Deliver(m) if m.from == from && m.to == to => Some(t),
                _ => None,
            })
            .max()
            .unwrap_or(self.now)
    }

    /// Starts a crashed process again from what it persisted; links come up
    /// shortly after, as the driver reconnects.
    pub fn restart(&mut self, id: NodeId) {
        if self.members[&id].node.is_some() {
            return;
        }
        let others_refused = self.members.values().any(|m| m.refused.is_some());
        if !others_refused && self.rng.chance(self.net.corrupt_on_restart) {
            let m = self.members.get_mut(&id).expect("member");
            if let Some(index) = m.disk.corrupt_a_record(&mut self.rng) {
                self.log_line(|| format!("n{id} disk: record of entry {index} corrupted"));
            }
        }
        if !self.boot(id) {
            let index = self.members[&id].refused.expect("refused");
            self.log_line(|| format!("n{id} refused to start: entry {index} fails its checksum"));
            return;
        }
        self.log_line(|| format!("n{id} restarted"));
        let at = self.now + self.net.eof_delay;
        for peer in self.ids.clone() {
            if peer != id {
                self.schedule(
                    at,
                    Scheduled::LinkUp {
                        node: peer,
                        peer: id,
                    },
                );
                self.schedule(at, Scheduled::LinkUp { node: id, peer });
            }
        }
    }

    /// Stops the process without closing its sockets (SIGSTOP): it neither
    /// handles timers nor messages; messages to it wait in its buffers.
    pub fn freeze(&mut self, id: NodeId) {
        if let Some(m) = self.members.get_mut(&id) {
            if m.node.is_some() {
                m.frozen = true;
            }
        }
        self.log_line(|| format!("n{id} frozen"));
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&mut self, id: NodeId) {
        let held = match self.members.get_mut(&id) {
            Some(m) => {
                m.frozen = false;
                std::mem::take(&mut m.held)
            }
            None => Vec::new(),
        };
        // What waited in the socket buffers comes first, in order.
        for (i, msg) in held.into_iter().enumerate() {
            let at = self.now + Duration::from_nanos(i as u64);
            self.schedule(at, Scheduled::Deliver(msg));
        }
        self.log_line(|| format!("n{id} thawed"));
    }

    /// Drops every message from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Cuts `id` off from everyone, both directions, silently (DROP).
    pub fn isolate(&mut self, id: NodeId) {
        for peer in self.ids.clone() {
            if peer != id {
                self.blocked.insert((id, peer));
                self.blocked.insert((peer, id));
            }
        }
        self.log_line(|| format!("n{id} isolated"));
    }

    /// Splits the cluster: no traffic between `group` and the rest. With
    /// `reset`, both sides see their connections reset (REJECT with TCP RST).
    pub fn partition(&mut self, group: &[NodeId], reset: bool) {
        for &a in group {
            for b in self.ids.clone() {
                if !group.contains(&b) {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                    if reset {
                        let at = self.now + self.net.eof_delay;
                        self.schedule(at, Scheduled::LinkDown { node: a, peer: b });
                        self.schedule(at, Scheduled::LinkDown { node: b, peer: a });
                    }
                }
            }
        }
        self.log_line(|| format!("partition {group:?} | rest (reset: {reset})"));
    }

    /// Removes every partition and block; links that were reset come back.
    pub fn heal(&mut self) {
        let at = self.now + self.net.eof_delay;
        for (a, b) in std::mem::take(&mut self.blocked) {
            self.schedule(at, Scheduled::LinkUp { node: a, peer: b });
        }
        self.log_line(|| "network healed".to_string());
    }

    // ----- A hostile peer, a hostile network ---------------------------------

    /// Hands `msg` to `msg.to` now, as a broken or hostile peer would: it
    /// skips the codec (like a driver that builds messages itself), so it
    /// may be anything. Unlike honest traffic, after which a
    /// [`Event::PeerFault`] is a violation (a correct member was taken for
    /// a faulty one), what it makes the node report is collected in
    /// [`Cluster::peer_faults`]. Returns false if the addressee is down or
    /// frozen, and nothing happened.
    pub fn inject(&mut self, msg: Message) -> bool {
        let to = msg.to;
        if !self.is_up(to) {
            return false;
        }
        self.log_line(|| format!("{msg} (forged)"));
        let now = self.now;
        self.forging = true;
        self.members
            .get_mut(&to)
            .and_then(|m| m.node.as_mut())
            .expect("up")
            .handle_message(now, msg);
        self.after_input(to);
        self.forging = false;
        true
    }

    /// Like [`Cluster::inject`], but the forged message arrives as a frame
    /// on the wire ([`forge_frame`]) and goes through [`codec::decode`]
    /// first, as in the server: `Err` if the codec refused it (nothing was
    /// delivered), else whether the addressee was up.
    pub fn inject_frame(&mut self, mut frame: BytesMut) -> Result<bool, codec::DecodeError> {
        match codec::decode(&mut frame)? {
            Some(msg) => Ok(self.inject(msg)),
            None => unreachable!("a whole frame decodes to a message or an error"),
        }
    }

    /// The [`Event::PeerFault`]s reported on messages from
    /// [`Cluster::inject`], with the node that reported each.
    pub fn peer_faults(&self) -> &[(NodeId, Event)] {
        &self.peer_faults
    }

    /// From now on the caller is the network: every message sent waits in
    /// [`Cluster::in_flight`] until the caller delivers it (in any order,
    /// as often as it likes, with [`Cluster::deliver_in_flight`]) or drops
    /// it. Messages already scheduled still arrive; nothing else changes.
    pub fn take_network(&mut self) {
        self.in_flight.get_or_insert_with(Vec::new);
    }

    /// Messages sent and not yet delivered or dropped, after
    /// [`Cluster::take_network`].
    pub fn in_flight(&self) -> &[Message] {
        self.in_flight.as_deref().unwrap_or(&[])
    }

    /// Delivers the in-flight message at `i` now. With `keep`, a copy stays
    /// in flight (the network duplicates it). Out of range does nothing.
    pub fn deliver_in_flight(&mut self, i: usize, keep: bool) {
        let Some(pool) = self.in_flight.as_mut().filter(|p| i < p.len()) else {
            return;
        };
        let msg = if keep {
            pool[i].clone()
        } else {
            pool.swap_remove(i)
        };
        self.handle_scheduled(Scheduled::Deliver(msg));
    }

    /// Gives the network back to the simulator, fair again: what is in
    /// flight arrives shortly, in order, and later messages follow `net`.
    pub fn release_network(&mut self) {
        for (i, m) in self
            .in_flight
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = self.now + self.net.min_delay + Duration::from_nanos(i as u64);
            self.schedule(at, Scheduled::Deliver(m));
        }
    }

    /// Loses the in-flight message at `i`. Out of range does nothing.
    pub fn drop_in_flight(&mut self, i: usize) {
        if let Some(pool) = self.in_flight.as_mut().filter(|p| i < p.len()) {
            pool.swap_remove(i);
        }
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
                // A leader's only timer is its heartbeat: a wake-up that
                // sends nothing (issue 12: a member at rest wakes only to
                // send or receive) while it stays leader with someone to
                // send to is a timer that costs a wake-up for nothing.
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
        let now = self.now;
        let member = self.members.get_mut(&id).expect("member");
        let node = member.node.as_mut().expect("running");
        let mut result = Ok(());
        let mut outbox = Outbox(released);
        let mut out = Vec::new();
        let mut removal_reports = 0;
        let sync_was_in_flight = member.disk.sync_in_flight();
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
        for action in out {
            let r = match action {
                Action::Apply(e) => {
                    if let EntryPayload::Command(c) = &e.payload {
                        if let Some((k, v)) = decode_write(c) {
                            member.machine.insert(k, v);
                        }
                    }
                    member.applied = (e.index, e.term);
                    let r = self.checker.on_apply(id, &e);
                    self.completions
                        .push(Completion::Applied { node: id, entry: e });
                    r
                }
                Action::InstallSnapshot { meta } => {
                    let (m, data) = member.disk.written_snapshot.as_ref().expect("installed");
                    assert_eq!(*m, meta, "the driver installed another snapshot");
                    member.machine = decode_machine(data);
                    member.applied = (meta.last_index, meta.last_term);
                    member.snapshot_index = meta.last_index;
                    self.snapshots_installed += 1;
                    if let Some(t) = &mut self.trace {
                        t.push(format!(
                            "{} n{id} installed snapshot {}@t{}",
                            self.now, meta.last_index, meta.last_term
                        ));
                    }
                    self.checker
                        .on_restore(id, &meta, machine_hash(&member.machine))
                }
                Action::ReadReady { id: read_id } => {
                    let key = member.reads.remove(&read_id).expect("read registered");
                    let value = member.machine.get(&key).copied();
                    self.completions.push(Completion::ReadReady {
                        node: id,
                        id: read_id,
                        value,
                    });
                    Ok(())
                }
                Action::ReadFailed { id: read_id, .. } => {
                    member.reads.remove(&read_id);
                    self.completions.push(Completion::ReadFailed {
                        node: id,
                        id: read_id,
                    });
                    Ok(())
                }
                Action::Event(ev) => {
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
                            removal_reports += 1;
                            Ok(())
                        }
                        _ => Ok(()),
                    }
                }
                other => unreachable!("the driver carries out {other:?} itself"),
            };
            if result.is_ok() {
                result = r;
            }
        }
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
        for m in &outbox.0 {
            if result.is_ok() {
                result = self.checker.on_send(m);
            }
        }
        if let Err(v) = result {
            self.violation
                .get_or_insert(Violation(format!("at {}: {v}", self.now)));
        }
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
        let sent = outbox.0.len();
        for m in outbox.0 {
            self.transmit(m);
        }
        self.maybe_snapshot(id);
        sent
    }

    /// Takes a snapshot of `id`'s state machine once it applied
    /// `net.snapshot_every` entries since the last one, as a server would
    /// on its threshold: durable first, then the node is told (and
    /// compacts its log).
    fn maybe_snapshot(&mut self, id: NodeId) {
        let every = self.net.snapshot_every;
        let member = self.members.get_mut(&id).expect("member");
        let (index, term) = member.applied;
        if every == 0 || index.0 < member.snapshot_index.0 + every || member.node.is_none() {
            return;
        }
        let data = encode_machine(&member.machine);
        let membership = member
            .node
            .as_ref()
            .expect("running")
            .membership_at(index)
            .expect("the applied index is not below the log start")
            .clone();
        let meta = SnapshotMeta {
            last_index: index,
            last_term: term,
            len: data.len() as u64,
            membership: Box::new(membership),
        };
        member.snapshot_index = index;
        member.disk.save_snapshot((meta.clone(), data));
        self.snapshots_taken += 1;
        let r = self
            .checker
            .on_snapshot(id, &meta, machine_hash(&member.machine));
        if let Err(v) = r {
            self.violation
                .get_or_insert(Violation(format!("at {}: {v}", self.now)));
        }
        let now = self.now;
        member
            .node
            .as_mut()
            .expect("running")
            .handle_snapshot_saved(now, meta);
        self.log_line(|| format!("n{id} snapshot {index}@t{term}"));
        self.after_input(id);
    }

    fn transmit(&mut self, m: Message) {
        *self.sent.entry(m.kind()).or_insert(0) += 1;
        // Every message crosses the wire format, as in the real server: a
        // message the codec refuses is a bug in the node.
        let mut frame = bytes::BytesMut::new();
        crate::codec::encode(&m, &mut frame);
        let decoded = crate::codec::decode(&mut frame);
        assert!(
            matches!(&decoded, Ok(Some(d)) if *d == m) && frame.is_empty(),
            "codec round trip changed {m:?} into {decoded:?}"
        );
        if let Some(pool) = &mut self.in_flight {
            pool.push(m);
            return;
        }
        if self.rng.chance(self.net.loss) {
            return;
        }
        let copies = if self.rng.chance(self.net.duplicate) {
            2
        } else {
            1
        };
        let reply = matches!(
            m.body,
            MessageBody::RequestVoteResponse(_)
                | MessageBody::AppendEntriesResponse(_)
                | MessageBody::InstallSnapshotResponse(_)
                | MessageBody::ReadIndexResponse(_)
        );
        for _ in 0..copies {
            let (lo, hi) = if reply && self.rng.chance(self.net.slow_replies) {
                self.net.slow_reply_delay
            } else {
                (self.net.min_delay, self.net.max_delay)
            };
            let d = self.rng.range(lo.as_nanos() as u64, hi.as_nanos() as u64);
            let at = self.now + Duration::from_nanos(d);
            self.schedule(at, Scheduled::Deliver(m.clone()));
        }
    }

    /// Whether `id` holds appends it wrote but has not synced yet.
    pub fn has_unsynced_entries(&self, id: NodeId) -> bool {
        self.members[&id].disk.has_unsynced_entries()
    }

    /// Stalls (or resumes) `id`'s disk: its syncs do not complete while
    /// stalled.
    pub fn stall_disk(&mut self, id: NodeId, stalled: bool) {
        self.members.get_mut(&id).expect("member").disk_stalled = stalled;
    }

    /// If `id` refused to start because a durable record failed its
    /// checksum: the entry whose record it was.
    pub fn refused(&self, id: NodeId) -> Option<LogIndex> {
        self.members[&id].refused
    }

    /// Moves the durable term of `id`, which must be down, to `term` (no
    /// vote in it), as if it had taken part in elections up to there. For
    /// tests of terms an honest cluster reaches only after ages (see
    /// [`Term::MAX_JUMP`]).
    ///
    /// # Panics
    ///
    /// If `id` is running, or `term` is not above its durable term.
    pub fn set_persisted_term(&mut self, id: NodeId, term: Term) {
        let m = self.members.get_mut(&id).expect("member");
        assert!(m.node.is_none(), "n{id} must be down");
        assert!(term > m.disk.durable_hs.current_term, "terms only grow");
        let hs = HardState {
            current_term: term,
            voted_for: None,
        };
        m.disk.durable_hs = hs;
        m.disk.written_hs = hs;
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

/// `msg` as a frame on the wire, whatever its term: [`codec::encode`]
/// refuses to write a term above [`Term::MAX`], so the frame is encoded
/// with `Term::MAX` in its place and the term field overwritten. What a
/// hostile or broken peer can put on a link; [`codec::decode`] judges it.
pub fn forge_frame(msg: &Message) -> BytesMut {
    // len:u32 version:u8 tag:u8 from:u64 to:u64, then term:u64.
    const TERM_AT: usize = codec::FRAME_HEADER_LEN + 1 + 8 + 8;
    let mut as_max = msg.clone();
    as_max.term = Term::MAX;
    let mut frame = BytesMut::new();
    codec::encode(&as_max, &mut frame);
    frame[TERM_AT..TERM_AT + 8].copy_from_slice(&msg.term.0.to_be_bytes());
    frame
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
