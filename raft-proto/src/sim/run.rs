//! One seeded simulator run: a nemesis injects faults while clients read and
//! write; then the network heals and the cluster must recover.

use std::fmt::Write as _;
use std::time::Duration;

use super::cluster::{encode_write, Cluster, Completion, NetConfig};
use super::linearizability::{self, Op, OpKind};
use super::nemesis::{forge_one, inject_fault};
use crate::{Config, EntryId, NodeId, ProposeError, ReadError, Rng, Time};

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Cluster size; `None` picks 3, 5 or 7 from the seed.
    pub nodes: Option<u64>,
    /// How long the nemesis injects faults (virtual time).
    pub fault_time: Duration,
    /// After healing, how long the cluster has to elect a leader and commit.
    pub recovery_bound: Duration,
    /// Concurrent clients.
    pub clients: u64,
    /// Keys the clients use.
    pub keys: u64,
    /// Record a step-by-step trace.
    pub trace: bool,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            nodes: None,
            fault_time: Duration::from_secs(20),
            recovery_bound: Duration::from_secs(10),
            clients: 5,
            keys: 3,
            trace: false,
        }
    }
}

/// What a successful run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Cluster size.
    pub nodes: u64,
    /// Faults injected, as text.
    pub faults: Vec<String>,
    /// Operations in the history, by outcome.
    pub ok: u64,
    /// Operations that failed (no effect).
    pub failed: u64,
    /// Writes with unknown outcome.
    pub unknown: u64,
    /// Entries committed.
    pub committed: u64,
    /// Terms that had a leader.
    pub leader_terms: usize,
    /// Snapshots taken, and installed from a leader.
    pub snapshots_taken: u64,
    /// Snapshots a member installed from its leader.
    pub snapshots_installed: u64,
    /// Configuration changes committed (the bootstrap one not counted).
    pub config_changes: u64,
    /// Elections started by a leadership transfer.
    pub transfer_elections: u64,
    /// Removals members learned and reported ([`crate::Node::is_removed`]).
    pub removals_reported: u64,
    /// Forged messages sent (one member sends one, then stops).
    pub forged: u64,
    /// Of those, refused by the codec (term above `Term::MAX`).
    pub forged_refused: u64,
    /// Virtual time from healing to a new commit on every node.
    pub recovery: Duration,
    /// The trace, when asked for.
    pub trace: Vec<String>,
}

#[derive(Debug)]
enum Pending {
    Write { node: NodeId, id: EntryId },
    Read { node: NodeId, read_id: u64 },
}

struct Client {
    id: u64,
    leader_guess: Option<NodeId>,
    next_at: Time,
    op: Option<(Op, Pending, Time)>,
}

const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one seed. `Err` carries the seed's failure: a safety violation, a
/// non-linearizable history, or no recovery after healing. Node assertions
/// panic; the caller may catch them.
pub fn run_seed(seed: u64, opts: &RunOptions) -> Result<RunReport, String> {
    let mut run = Run::new(seed, opts);
    run.under_faults(seed)?;
    let healed_at = run.heal();
    run.recover(healed_at)?;
    run.finish()
}

/// One run's state, from one phase to the next: the cluster, the seed's
/// choices, the clients and the history they make.
struct Run<'a> {
    opts: &'a RunOptions,
    cluster: Cluster,
    rng: Rng,
    /// Every node, members and spares.
    ids: Vec<NodeId>,
    report: RunReport,
    clients: Vec<Client>,
    history: Vec<Op>,
    next_value: u64,
    next_read_id: u64,
    crashed: Vec<NodeId>,
    frozen: Vec<NodeId>,
}

impl<'a> Run<'a> {
    /// The cluster the seed chooses (size, spares, batching, compaction,
    /// a late timer, ...) and idle clients.
    fn new(seed: u64, opts: &'a RunOptions) -> Run<'a> {
        let mut rng = Rng::new(seed);
        let n = opts.nodes.unwrap_or([3, 5, 7][rng.range(0, 3) as usize]);
        let voters: Vec<NodeId> = (1..=n).map(NodeId).collect();
        // Spare nodes start outside the cluster; configuration changes bring
        // them in and take others out, so majorities really change.
        let spares: Vec<NodeId> = (n + 1..=n + rng.range(0, 3)).map(NodeId).collect();
        let ids: Vec<NodeId> = voters.iter().chain(&spares).copied().collect();
        let mut config = Config::new(NodeId(1), voters);
        // Small batches and windows make flow control and batching bite.
        config.max_entries_per_append = 1 + rng.range(0, 64) as usize;
        config.max_inflight_appends = 1 + rng.range(0, 8) as usize;
        // Every run compacts: snapshots every few dozen entries, a short
        // trailing log, and chunks small enough that a transfer takes several.
        config.compaction_trailing_entries = [0, 3, 20][rng.range(0, 3) as usize];
        config.snapshot_chunk_bytes = 16 + rng.range(0, 100) as usize;
        let snapshot_every = [10, 25, 60][rng.range(0, 3) as usize];
        let mut cluster = Cluster::with_spares(config, &spares, seed);
        cluster.net.snapshot_every = snapshot_every;
        // Two seeds in three feed a member every message due within a window
        // before it drains, as raft-node's loop turns do; the window comes
        // from its own stream so the rest of the seed's choices stay as they
        // were.
        let mut batching = Rng::new(seed ^ 0xBA7C_4ED0_0000_0001);
        if batching.range(0, 3) > 0 {
            cluster.net.batch_window = Duration::from_micros(batching.range(50, 1000));
        }
        // Half the seeds wake their members up to 0.1-3 ms late, as a loop
        // turn does (its own stream too): timers set from a late clock drift
        // apart, and the cluster checks a leader never wakes to send nothing.
        let mut lateness = Rng::new(seed ^ 0x1A7E_0000_0000_0002);
        if lateness.chance(0.5) {
            cluster.net.timer_lateness = Duration::from_micros(lateness.range(100, 3000));
        }
        if opts.trace {
            cluster.enable_trace();
        }
        let report = RunReport {
            nodes: n,
            ..RunReport::default()
        };
        let clients: Vec<Client> = (0..opts.clients)
            .map(|i| Client {
                id: i + 1,
                leader_guess: None,
                next_at: Time::ZERO,
                op: None,
            })
            .collect();
        Run {
            opts,
            cluster,
            rng,
            ids,
            report,
            clients,
            history: Vec::new(),
            next_value: 1,
            next_read_id: 1,
            crashed: Vec::new(),
            frozen: Vec::new(),
        }
    }

    /// For `opts.fault_time`: the nemesis injects faults while the clients
    /// read and write. `Err` on a safety violation.
    fn under_faults(&mut self, seed: u64) -> Result<(), String> {
        let fault_end = Time::ZERO + self.opts.fault_time;
        let mut next_fault = Time::ZERO + Duration::from_millis(self.rng.range(500, 2000));
        // Half the seeds also have one member send one forged message with an
        // arbitrary term, then stop (see `forge_one`). From its own stream,
        // so the rest of the seed's choices stay as they were.
        let mut forgery = Rng::new(seed ^ 0xF0A6_ED00_0000_0003);
        let mut forge_at = forgery.chance(0.5).then(|| {
            let ms = self.opts.fault_time.as_millis() as u64;
            Time::ZERO + Duration::from_millis(forgery.range(500, ms.max(501)))
        });
        let cluster = &mut self.cluster;
        while cluster.now() < fault_end {
            // Nemesis.
            if cluster.now() >= next_fault {
                let text = inject_fault(
                    cluster,
                    &mut self.rng,
                    &self.ids,
                    &mut self.crashed,
                    &mut self.frozen,
                );
                self.report.faults.push(format!("{} {text}", cluster.now()));
                next_fault = cluster.now() + Duration::from_millis(self.rng.range(200, 3000));
            }
            if forge_at.is_some_and(|t| cluster.now() >= t) {
                forge_at = None;
                let (text, refused) =
                    forge_one(cluster, &mut forgery, &self.ids, &mut self.crashed);
                self.report.forged += 1;
                self.report.forged_refused += u64::from(refused);
                self.report.faults.push(format!("{} {text}", cluster.now()));
            }
            // Clients.
            let now = cluster.now();
            for c in self.clients.iter_mut() {
                if c.op.is_none() && now >= c.next_at {
                    start_op(
                        cluster,
                        &mut self.rng,
                        c,
                        self.opts.keys,
                        &mut self.next_value,
                        &mut self.next_read_id,
                    );
                }
                if let Some((op, _, started)) = &c.op {
                    if now >= *started + OP_TIMEOUT {
                        // Timed out: a write's outcome is unknown; a read had no effect.
                        if let OpKind::Write(_) = op.kind {
                            self.history.push(*op);
                            self.report.unknown += 1;
                        } else {
                            self.report.failed += 1;
                        }
                        c.op = None;
                        c.leader_guess = None;
                    }
                }
            }
            let wake = self
                .clients
                .iter()
                .map(|c| match &c.op {
                    None => c.next_at,
                    Some((_, _, started)) => *started + OP_TIMEOUT,
                })
                .chain([next_fault, fault_end])
                .chain(forge_at)
                .min()
                .expect("some deadline")
                .max(cluster.now());
            if !cluster.run_until(wake) {
                break;
            }
            for done in cluster.take_completions() {
                complete_ops(
                    cluster,
                    &mut self.clients,
                    &done,
                    &mut self.history,
                    &mut self.report,
                    &mut self.rng,
                );
            }
        }
        if let Some(v) = cluster.violation().map(|v| v.to_string()) {
            return Err(fail(cluster, &self.report, &v));
        }
        Ok(())
    }

    /// Heal: every process up, network whole and reliable. Returns when.
    fn heal(&mut self) -> Time {
        let cluster = &mut self.cluster;
        cluster.heal();
        for id in self.frozen.drain(..) {
            cluster.thaw(id);
        }
        for id in self.crashed.drain(..) {
            cluster.restart(id);
        }
        cluster.net = NetConfig::default();
        let healed_at = cluster.now();
        // Outstanding client operations end with unknown outcome.
        for c in self.clients.iter_mut() {
            if let Some((op, _, _)) = c.op.take() {
                if let OpKind::Write(_) = op.kind {
                    self.history.push(op);
                    self.report.unknown += 1;
                }
            }
        }
        healed_at
    }

    /// Liveness: a leader, and a fresh write applied on every node, in bound
    /// (10 s by default: some 16 maximum election timeouts). The heal
    /// undoes every kind of fault the nemesis injects (crashes, crash-all,
    /// freezes, partitions, blocks, isolations, a lossy network, and the
    /// member that forged a message, crashed or cut off), so this is the
    /// "a leader within a bound of the last fault" check for all of them;
    /// a member a configuration change removed is not expected to hear.
    fn recover(&mut self, healed_at: Time) -> Result<(), String> {
        let cluster = &mut self.cluster;
        let deadline = healed_at + self.opts.recovery_bound;
        let probe_value = self.next_value;
        let mut probe: Option<(NodeId, EntryId)> = None;
        let mut recovered = false;
        while cluster.now() < deadline {
            if probe.is_none() {
                if let Some(l) = cluster.leader() {
                    match cluster.propose(l, encode_write(u64::MAX, probe_value)) {
                        Ok(id) => probe = Some((l, id)),
                        Err(ProposeError::NotLeader { .. })
                        | Err(ProposeError::Busy)
                        | Err(ProposeError::TransferInProgress { .. }) => {}
                        Err(e @ ProposeError::TooLarge { .. })
                        | Err(e @ ProposeError::Membership(_)) => {
                            unreachable!("16-byte write: {e}")
                        }
                    }
                }
            }
            if let Some((l, id)) = probe {
                if applied_everywhere(cluster, l, id) {
                    recovered = true;
                    break;
                }
                // The node we proposed to no longer leads that term (a stale
                // leader that was frozen, say): the probe may be lost, so
                // propose again on the current leader.
                if cluster
                    .node(l)
                    .is_none_or(|n| n.role() != crate::Role::Leader || n.term() != id.term)
                {
                    probe = None;
                }
            }
            let step_to = cluster.now() + Duration::from_millis(10);
            if !cluster.run_for(step_to - cluster.now()) {
                break;
            }
        }
        if let Some(v) = cluster.violation().map(|v| v.to_string()) {
            return Err(fail(cluster, &self.report, &v));
        }
        if !recovered {
            let mut msg = format!(
                "liveness: no leader with a new commit on every node within {} ms of healing (probe {probe:?})",
                self.opts.recovery_bound.as_millis()
            );
            for &id in &self.ids {
                let _ = write!(msg, "\n  n{id}: {:?}", cluster.node(id).map(|n| n.status()));
            }

            return Err(fail(cluster, &self.report, &msg));
        }
        self.report.recovery = cluster.now() - healed_at;
        Ok(())
    }

    /// The history must be linearizable; the report.
    fn finish(mut self) -> Result<RunReport, String> {
        let cluster = &mut self.cluster;
        let history = &mut self.history;
        let report = &mut self.report;
        // Every acknowledged write must be in the final state or overwritten,
        // which the linearizability check covers: it includes a final read of
        // every key from the leader after recovery.
        if let Some(l) = cluster.leader() {
            let t = cluster.now().as_nanos();
            for key in 0..self.opts.keys {
                history.push(Op {
                    client: 0,
                    key,
                    kind: OpKind::Read(cluster.value(l, key)),
                    invoke: t,
                    complete: Some(t),
                });
            }
        }
        if let Err(e) = linearizability::check(history) {
            return Err(fail(cluster, report, &e.to_string()));
        }
        report.committed = cluster.checker().committed_len();
        report.leader_terms = cluster.checker().leader_terms();
        (report.snapshots_taken, report.snapshots_installed) = cluster.snapshot_counts();
        report.config_changes = cluster
            .checker()
            .committed_configurations()
            .saturating_sub(1);
        report.transfer_elections = cluster.transfer_elections();
        report.removals_reported = cluster.removals_reported();
        report.trace = cluster.take_trace();
        Ok(self.report)
    }
}

/// Whether the probe `id`, proposed on `l`, is applied and durable on
/// every member of `l`'s configuration: one the nemesis removed hears
/// nothing more, by design.
fn applied_everywhere(cluster: &Cluster, l: NodeId, id: EntryId) -> bool {
    let members: Vec<NodeId> = cluster
        .node(l)
        .map(|n| n.membership().members().collect())
        .unwrap_or_default();
    members.iter().all(|&n| {
        cluster
            .node(n)
            .is_some_and(|node| node.last_applied() >= id.index)
            && cluster.persisted_term_at(n, id.index) == Some(id.term)
    })
}

/// Election liveness on a slow, lossy network, in the shape of the MIT
/// 6.5840 labs' unreliable tests: 5 members, 10% of messages lost, two
/// thirds of all answers delayed by 200 to 2200 ms. From a cold start, a
/// leader must commit a client write within `bound`. Returns how long it
/// took. (Nothing else faults: this is about elections and CheckQuorum
/// under long delays, not about safety, which the main sweep checks.)
pub fn run_slow_network(seed: u64, bound: Duration) -> Result<Duration, String> {
    let ids: Vec<NodeId> = (1..=5).map(NodeId).collect();
    let config = Config::new(NodeId(1), ids.clone());
    let mut cluster = Cluster::with_config(config, seed);
    cluster.net.loss = 0.1;
    cluster.net.slow_replies = 2.0 / 3.0;
    let mut probe: Option<(NodeId, EntryId)> = None;
    let deadline = Time::ZERO + bound;
    while cluster.now() < deadline {
        if let Some((l, id)) = probe {
            let node = cluster.node(l).expect("no crashes here");
            if node.term() != id.term || node.role() != crate::Role::Leader {
                probe = None;
            } else if node.last_applied() >= id.index {
                return Ok(cluster.now() - Time::ZERO);
            }
        }
        if probe.is_none() {
            if let Some(l) = cluster.leader() {
                if let Ok(id) = cluster.propose(l, encode_write(1, 1)) {
                    probe = Some((l, id));
                }
            }
        }
        cluster.run_for(Duration::from_millis(10));
        if let Some(v) = cluster.violation() {
            return Err(format!("seed {seed}: {v}"));
        }
    }
    let mut msg = format!(
        "seed {seed}: no leader committed a write within {} ms on the slow network",
        bound.as_millis()
    );
    for &id in &ids {
        let _ = write!(msg, "\n  n{id}: {:?}", cluster.node(id).map(|n| n.status()));
    }
    Err(msg)
}

fn fail(cluster: &mut Cluster, report: &RunReport, what: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{what}");
    let _ = writeln!(s, "faults injected ({} nodes):", report.nodes);
    for f in &report.faults {
        let _ = writeln!(s, "  {f}");
    }
    let trace = cluster.take_trace();
    if !trace.is_empty() {
        let _ = writeln!(s, "last steps:");
        for line in trace.iter().rev().take(60).rev() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

fn start_op(
    cluster: &mut Cluster,
    rng: &mut Rng,
    c: &mut Client,
    keys: u64,
    next_value: &mut u64,
    next_read_id: &mut u64,
) {
    let ids = cluster.ids().to_vec();
    let target = c
        .leader_guess
        .unwrap_or_else(|| ids[rng.range(0, ids.len() as u64) as usize]);
    let key = rng.range(0, keys);
    let now = cluster.now();
    let invoke = now.as_nanos();
    if rng.chance(0.5) {
        let value = *next_value;
        *next_value += 1;
        match cluster.propose(target, encode_write(key, value)) {
            Ok(id) => {
                let op = Op {
                    client: c.id,
                    key,
                    kind: OpKind::Write(value),
                    invoke,
                    complete: None,
                };
                c.op = Some((op, Pending::Write { node: target, id }, now));
            }
            Err(ProposeError::NotLeader { leader }) => {
                c.leader_guess = leader;
                c.next_at = now + Duration::from_millis(if leader.is_some() { 0 } else { 50 });
            }
            Err(ProposeError::Busy) | Err(ProposeError::TransferInProgress { .. }) => {
                c.next_at = now + Duration::from_millis(20)
            }
            Err(e @ ProposeError::TooLarge { .. }) | Err(e @ ProposeError::Membership(_)) => {
                unreachable!("16-byte write: {e}")
            }
        }
    } else {
        let read_id = *next_read_id;
        *next_read_id += 1;
        // Half the reads go to any member: followers serve them by asking
        // the leader for a read index (thesis §6.4), and the history must
        // stay linearizable.
        let target = if rng.chance(0.5) {
            ids[rng.range(0, ids.len() as u64) as usize]
        } else {
            target
        };
        match cluster.read(target, read_id, key) {
            Ok(()) => {
                let op = Op {
                    client: c.id,
                    key,
                    kind: OpKind::Read(None),
                    invoke,
                    complete: None,
                };
                c.op = Some((
                    op,
                    Pending::Read {
                        node: target,
                        read_id,
                    },
                    now,
                ));
            }
            Err(ReadError::NotLeader { leader }) => {
                c.leader_guess = leader;
                c.next_at = now + Duration::from_millis(if leader.is_some() { 0 } else { 50 });
            }
            Err(ReadError::Busy) => c.next_at = now + Duration::from_millis(20),
        }
    }
}

fn complete_ops(
    cluster: &Cluster,
    clients: &mut [Client],
    done: &Completion,
    history: &mut Vec<Op>,
    report: &mut RunReport,
    rng: &mut Rng,
) {
    let now = cluster.now();
    for c in clients.iter_mut() {
        let Some((op, pending, _)) = &c.op else {
            continue;
        };
        let mut op = *op;
        let finished = match (pending, done) {
            (Pending::Write { node, id }, Completion::Applied { node: n, entry })
                if n == node && entry.index == id.index =>
            {
                if entry.term == id.term {
                    op.complete = Some(now.as_nanos());
                    history.push(op);
                    report.ok += 1;
                } else {
                    // Another entry took the index: the write never happened.
                    report.failed += 1;
                }
                true
            }
            (Pending::Write { node, .. }, Completion::Crashed { node: n }) if n == node => {
                history.push(op);
                report.unknown += 1;
                true
            }
            (Pending::Read { node, read_id }, Completion::ReadReady { node: n, id, value })
                if n == node && id == read_id =>
            {
                op.kind = OpKind::Read(*value);
                op.complete = Some(now.as_nanos());
                history.push(op);
                report.ok += 1;
                true
            }
            (Pending::Read { node, read_id }, Completion::ReadFailed { node: n, id })
                if n == node && id == read_id =>
            {
                report.failed += 1;
                c.leader_guess = None;
                true
            }
            (Pending::Read { node, .. }, Completion::Crashed { node: n }) if n == node => {
                report.failed += 1;
                c.leader_guess = None;
                true
            }
            _ => false,
        };
        if finished {
            c.op = None;
            c.next_at = now + Duration::from_millis(rng.range(0, 20));
        }
    }
}
