//! One seeded simulator run: a nemesis injects faults while clients read and
//! write; then the network heals and the cluster must recover.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use super::cluster::{encode_write, forge_frame, Cluster, Completion, NetConfig};
use super::linearizability::{self, Op, OpKind};
use crate::{
    AppendEntries, AppendEntriesResponse, AppendResult, Config, EntryId, InstallSnapshot,
    InstallSnapshotResponse, LogIndex, MembershipChange, Message, MessageBody, NodeId,
    ProposeError, ReadError, ReadIndexRequest, ReadIndexResponse, RequestVote, RequestVoteResponse,
    Rng, SnapshotMeta, Term, Time,
};

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
    let mut report = RunReport {
        nodes: n,
        ..RunReport::default()
    };

    let mut clients: Vec<Client> = (0..opts.clients)
        .map(|i| Client {
            id: i + 1,
            leader_guess: None,
            next_at: Time::ZERO,
            op: None,
        })
        .collect();
    let mut history: Vec<Op> = Vec::new();
    let mut next_value: u64 = 1;
    let mut next_read_id: u64 = 1;

    let fault_end = Time::ZERO + opts.fault_time;
    let mut next_fault = Time::ZERO + Duration::from_millis(rng.range(500, 2000));
    // Half the seeds also have one member send one forged message with an
    // arbitrary term, then stop (see `forge_one`). From its own stream,
    // so the rest of the seed's choices stay as they were.
    let mut forgery = Rng::new(seed ^ 0xF0A6_ED00_0000_0003);
    let mut forge_at = forgery.chance(0.5).then(|| {
        let ms = opts.fault_time.as_millis() as u64;
        Time::ZERO + Duration::from_millis(forgery.range(500, ms.max(501)))
    });
    let mut crashed: Vec<NodeId> = Vec::new();
    let mut frozen: Vec<NodeId> = Vec::new();

    while cluster.now() < fault_end {
        // Nemesis.
        if cluster.now() >= next_fault {
            let text = inject_fault(&mut cluster, &mut rng, &ids, &mut crashed, &mut frozen);
            report.faults.push(format!("{} {text}", cluster.now()));
            next_fault = cluster.now() + Duration::from_millis(rng.range(200, 3000));
        }
        if forge_at.is_some_and(|t| cluster.now() >= t) {
            forge_at = None;
            let (text, refused) = forge_one(&mut cluster, &mut forgery, &ids, &mut crashed);
            report.forged += 1;
            report.forged_refused += u64::from(refused);
            report.faults.push(format!("{} {text}", cluster.now()));
        }
        // Clients.
        let now = cluster.now();
        for c in clients.iter_mut() {
            if c.op.is_none() && now >= c.next_at {
                start_op(
                    &mut cluster,
                    &mut rng,
                    c,
                    opts.keys,
                    &mut next_value,
                    &mut next_read_id,
                );
            }
            if let Some((op, _, started)) = &c.op {
                if now >= *started + OP_TIMEOUT {
                    // Timed out: a write's outcome is unknown; a read had no effect.
                    if let OpKind::Write(_) = op.kind {
                        history.push(*op);
                        report.unknown += 1;
                    } else {
                        report.failed += 1;
                    }
                    c.op = None;
                    c.leader_guess = None;
                }
            }
        }
        let wake = clients
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
                &cluster,
                &mut clients,
                &done,
                &mut history,
                &mut report,
                &mut rng,
            );
        }
    }
    if let Some(v) = cluster.violation().map(|v| v.to_string()) {
        return Err(fail(&mut cluster, &report, &v));
    }

    // Heal: every process up, network whole and reliable.
    cluster.heal();
    for id in frozen.drain(..) {
        cluster.thaw(id);
    }
    for id in crashed.drain(..) {
        cluster.restart(id);
    }
    cluster.net = NetConfig::default();
    let healed_at = cluster.now();
    // Outstanding client operations end with unknown outcome.
    for c in clients.iter_mut() {
        if let Some((op, _, _)) = c.op.take() {
            if let OpKind::Write(_) = op.kind {
                history.push(op);
                report.unknown += 1;
            }
        }
    }

    // Liveness: a leader, and a fresh write applied on every node, in bound
    // (10 s by default: some 16 maximum election timeouts). The heal above
    // undoes every kind of fault the nemesis injects (crashes, crash-all,
    // freezes, partitions, blocks, isolations, a lossy network, and the
    // member that forged a message, crashed or cut off), so this is the
    // "a leader within a bound of the last fault" check for all of them;
    // a member a configuration change removed is not expected to hear.
    let deadline = healed_at + opts.recovery_bound;
    let probe_value = next_value;
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
                    | Err(e @ ProposeError::Membership(_)) => unreachable!("16-byte write: {e}"),
                }
            }
        }
        if let Some((l, id)) = probe {
            // Every member of the configuration: one the nemesis removed
            // hears nothing more, by design.
            let members: Vec<NodeId> = cluster
                .node(l)
                .map(|n| n.membership().members().collect())
                .unwrap_or_default();
            let everywhere = members.iter().all(|&n| {
                cluster
                    .node(n)
                    .is_some_and(|node| node.last_applied() >= id.index)
                    && cluster.persisted_term_at(n, id.index) == Some(id.term)
            });
            if everywhere {
                recovered = true;
                break;
            }
            // The node we proposed to no longer leads that term (a stale
            // leader that was frozen, say): the probe may be lost, so
            // propose again on the current leader.
            let (l, _) = probe.expect("set");
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
        return Err(fail(&mut cluster, &report, &v));
    }
    if !recovered {
        let mut msg = format!(
            "liveness: no leader with a new commit on every node within {} ms of healing (probe {probe:?})",
            opts.recovery_bound.as_millis()
        );
        for &id in &ids {
            let _ = write!(msg, "\n  n{id}: {:?}", cluster.node(id).map(|n| n.status()));
        }

        return Err(fail(&mut cluster, &report, &msg));
    }
    report.recovery = cluster.now() - healed_at;

    // Every acknowledged write must be in the final state or overwritten,
    // which the linearizability check covers: it includes a final read of
    // every key from the leader after recovery.
    if let Some(l) = cluster.leader() {
        let t = cluster.now().as_nanos();
        for key in 0..opts.keys {
            history.push(Op {
                client: 0,
                key,
                kind: OpKind::Read(cluster.value(l, key)),
                invoke: t,
                complete: Some(t),
            });
        }
    }
    if let Err(e) = linearizability::check(&history) {
        return Err(fail(&mut cluster, &report, &e.to_string()));
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
    Ok(report)
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

/// One single-server configuration change on the leader, of the kinds an
/// operator makes: add a node as a learner or directly as a voter,
/// promote a learner, remove a voter (the leader itself now and then) or
/// a learner. At least two voters stay. Refusals (a change in progress, a
/// learner behind) are part of the test.
fn reconfigure(cluster: &mut Cluster, rng: &mut Rng, ids: &[NodeId]) -> String {
    let Some(l) = cluster.leader() else {
        return "reconfigure: no leader".into();
    };
    let m = cluster.node(l).expect("up").membership().clone();
    let outside: Vec<NodeId> = ids.iter().copied().filter(|&id| !m.contains(id)).collect();
    let any = |rng: &mut Rng, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
    let mut options = Vec::new();
    if !outside.is_empty() {
        let id = any(rng, &outside);
        options.push(MembershipChange::AddLearner(id));
        options.push(MembershipChange::AddVoter(id));
    }
    if !m.learners.is_empty() {
        let id = any(rng, &m.learners);
        options.push(MembershipChange::Promote(id));
        options.push(MembershipChange::Promote(id));
        options.push(MembershipChange::Remove(id));
    }
    if m.voters.len() > 2 {
        options.push(MembershipChange::Remove(any(rng, &m.voters)));
    }
    if options.is_empty() {
        return format!("reconfigure: nothing to change in {m:?}");
    }
    let change = options[rng.range(0, options.len() as u64) as usize];
    match cluster.propose_membership(l, change) {
        Ok(id) => format!("n{l}: {change:?} at {}", id.index),
        Err(e) => format!("n{l}: {change:?} refused: {e}"),
    }
}

/// One member sends one forged message with an arbitrary term, then is
/// crashed or cut off (a member with a memory fault, or a compromised one,
/// caught at once): the run must still end with a leader and a new commit
/// on every member once it heals. The frame goes through the codec as in
/// the server, so terms above `Term::MAX` are refused there. Terms are
/// what is forged: the contents are ones that cannot break safety by
/// themselves (an AppendEntries anchored at index 0, a snapshot the
/// addressee has committed, answers to nothing), since Raft does not
/// survive a member that lies about its log; and a term the addressee
/// could honestly share with a real leader (a small step up) is never
/// used for the kinds only a leader sends. Returns what happened, and
/// whether the codec refused the frame.
fn forge_one(
    cluster: &mut Cluster,
    rng: &mut Rng,
    ids: &[NodeId],
    crashed: &mut Vec<NodeId>,
) -> (String, bool) {
    let any = |rng: &mut Rng, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
    let from = any(rng, ids);
    let targets: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|&id| id != from && cluster.is_up(id))
        .collect();
    if targets.is_empty() {
        return (format!("forge from n{from}: no target"), false);
    }
    let to = any(rng, &targets);
    let node = cluster.node(to).expect("up");
    let current = node.term();
    let commit = node.commit_index();
    let membership = node.membership().clone();
    let term = match rng.range(0, 8) {
        0 => current.plus_max_jump().0,
        1 => current.plus_max_jump().0 + 1,
        2 => Term::MAX.0 - 1,
        3 => Term::MAX.0,
        4 => Term::MAX.0 + 1,
        5 => u64::MAX - 1,
        6 => u64::MAX,
        _ => rng.next_u64().max(current.plus_max_jump().0),
    };
    let rv = |pre_vote, leadership_transfer| {
        MessageBody::RequestVote(RequestVote {
            pre_vote,
            leadership_transfer,
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
        })
    };
    let vote = |pre_vote, granted| {
        MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted })
    };
    let body = match rng.range(0, 12) {
        0 => rv(false, false),
        1 => rv(true, false),
        2 => rv(false, true),
        3 => vote(rng.chance(0.5), rng.chance(0.5)),
        4 => MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: Vec::new(),
            leader_commit: LogIndex(0),
            round: 0,
        }),
        5 => MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            round: 0,
            result: AppendResult::Success {
                match_index: LogIndex(0),
            },
        }),
        6 if commit.0 > 0 => MessageBody::InstallSnapshot(InstallSnapshot {
            meta: SnapshotMeta {
                last_index: commit,
                last_term: Term(1),
                len: 1,
                membership: Box::new(membership),
            },
            offset: 0,
            data: Bytes::new(),
            round: 0,
        }),
        7 => MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            last_index: LogIndex(1),
            next_offset: 0,
            round: 0,
        }),
        8 => MessageBody::ReadIndexRequest(ReadIndexRequest { id: rng.next_u64() }),
        9 => MessageBody::ReadIndexResponse(ReadIndexResponse {
            id: rng.next_u64(),
            read_index: None,
        }),
        _ => MessageBody::TimeoutNow,
    };
    let msg = Message {
        from,
        to,
        term: Term(term),
        body,
    };
    let what = format!("{msg}");
    let (outcome, refused) = match cluster.inject_frame(forge_frame(&msg)) {
        Ok(_) => {
            let now_at = cluster.node(to).map_or(Term(0), |n| n.term());
            (format!("n{to} now at term {now_at}"), false)
        }
        Err(e) => (format!("refused by the codec: {e}"), true),
    };
    let stop = if rng.chance(0.5) {
        cluster.crash(from);
        if !crashed.contains(&from) {
            crashed.push(from);
        }
        "crashed"
    } else {
        cluster.isolate(from);
        "isolated"
    };
    (
        format!("forged {what} ({outcome}); n{from} {stop}"),
        refused,
    )
}

fn inject_fault(
    cluster: &mut Cluster,
    rng: &mut Rng,
    ids: &[NodeId],
    crashed: &mut Vec<NodeId>,
    frozen: &mut Vec<NodeId>,
) -> String {
    let pick = |rng: &mut Rng| ids[rng.range(0, ids.len() as u64) as usize];
    match rng.range(0, 16) {
        13 => reconfigure(cluster, rng, ids),
        14 => {
            // Changes in a burst (all but the first must be refused while
            // it is uncommitted), then the leader is cut off, so that a
            // new leader may start from a log without them: the case the
            // single-server rules exist for.
            let mut s: Vec<String> = (0..rng.range(2, 4))
                .map(|_| reconfigure(cluster, rng, ids))
                .collect();
            if let Some(l) = cluster.leader().filter(|_| rng.chance(0.5)) {
                cluster.isolate(l);
                s.push(format!("isolate n{l}"));
            }
            s.join("; ")
        }
        15 => {
            let Some(l) = cluster.leader() else {
                return "transfer leadership: no leader".into();
            };
            let target = rng.chance(0.5).then(|| pick(rng));
            match cluster.transfer_leadership(l, target) {
                Ok(t) => format!("transfer leadership n{l} -> n{t}"),
                Err(e) => format!("transfer leadership n{l} -> {target:?}: {e}"),
            }
        }
        12 => {
            // Crash the leader at the worst moment for §10.2.1: while it
            // holds entries it sent but has not fsynced.
            let Some(id) = cluster.leader() else {
                return "crash leader with unsynced entries: no leader".into();
            };
            let until = cluster.now() + Duration::from_millis(200);
            cluster.run_until_pred(until - cluster.now(), |c| c.has_unsynced_entries(id));
            let unsynced = cluster.has_unsynced_entries(id);
            cluster.crash(id);
            crashed.push(id);
            format!("crash leader n{id} (unsynced entries: {unsynced})")
        }
        0 | 1 => {
            let id = cluster.leader().unwrap_or_else(|| pick(rng));
            cluster.crash(id);
            crashed.push(id);
            format!("crash n{id} (leader: {})", cluster.leader().is_none())
        }
        2 => {
            let id = pick(rng);
            cluster.crash(id);
            crashed.push(id);
            format!("crash n{id}")
        }
        3 | 4 => {
            let mut s = Vec::new();
            for id in crashed.drain(..) {
                cluster.restart(id);
                s.push(format!("n{id}"));
            }
            format!("restart {}", s.join(" "))
        }
        5 => {
            let id = cluster.leader().unwrap_or_else(|| pick(rng));
            cluster.isolate(id);
            format!("isolate n{id}")
        }
        6 => {
            let mut group: Vec<NodeId> = ids.iter().copied().filter(|_| rng.chance(0.5)).collect();
            if group.is_empty() {
                group.push(pick(rng));
            }
            let reset = rng.chance(0.5);
            cluster.partition(&group, reset);
            format!("partition {group:?} reset={reset}")
        }
        7 => {
            let (a, b) = (pick(rng), pick(rng));
            if a != b {
                cluster.block(a, b);
            }
            format!("block n{a} -> n{b}")
        }
        8 => {
            let id = cluster.leader().unwrap_or_else(|| pick(rng));
            cluster.freeze(id);
            frozen.push(id);
            format!("freeze n{id}")
        }
        9 => {
            for id in frozen.drain(..) {
                cluster.thaw(id);
            }
            cluster.heal();
            "heal + thaw".to_string()
        }
        10 => {
            cluster.net.loss = [0.0, 0.01, 0.05, 0.2][rng.range(0, 4) as usize];
            cluster.net.duplicate = [0.0, 0.02, 0.1][rng.range(0, 3) as usize];
            cluster.net.max_delay = Duration::from_millis([2, 10, 50][rng.range(0, 3) as usize]);
            format!(
                "net loss={} dup={} max_delay={:?}",
                cluster.net.loss, cluster.net.duplicate, cluster.net.max_delay
            )
        }
        _ => {
            // Kill everything, then bring it all back: only what was
            // persisted survives.
            for &id in ids {
                cluster.crash(id);
            }
            for &id in ids {
                cluster.restart(id);
            }
            crashed.clear();
            frozen.clear();
            "crash all + restart all".to_string()
        }
    }
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
