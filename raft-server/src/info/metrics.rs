//! The Prometheus text exposition (`/metrics`), built with
//! `prometheus-client` from a [`Snapshot`] at scrape time, section by
//! section in the order INFO uses.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricRegistry;
use raft_proto::Role;

use super::{role_name, Snapshot};

/// The Prometheus text exposition format, built with `prometheus-client`
/// from the snapshot at scrape time: the event loop keeps plain counters and
/// nothing is shared between threads.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut m = Metrics {
        r: MetricRegistry::with_prefix("raft"),
    };
    membership_metrics(s, &mut m);
    client_metrics(s, &mut m);
    peer_metrics(s, &mut m);
    storage_metrics(s, &mut m);
    traffic_metrics(s, &mut m);
    m.r.register(
        "fsync_seconds",
        "Duration of log fsyncs.",
        s.histograms.fsync.clone(),
    );
    m.r.register(
        "apply_lag_seconds",
        "Time from an entry's append to this member's log to its application.",
        s.histograms.apply_lag.clone(),
    );
    m.r.register(
        "loop_turn_seconds",
        "Duration of event-loop turns (work between two polls).",
        s.histograms.loop_turn.clone(),
    );
    m.r.register(
        "durable_lag_seconds",
        "Time from an entry's append to this member's log to the end of the fsync that made it durable.",
        s.histograms.durable_lag.clone(),
    );
    let mut o = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = encode(&mut o, &m.r);
    o
}

/// The registry, with one call per plain value.
struct Metrics {
    r: MetricRegistry,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, v: i64) {
        let g: Gauge = Gauge::default();
        g.set(v);
        self.r.register(name, help, g);
    }

    fn fgauge(&mut self, name: &str, help: &str, v: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        self.r.register(name, help, g);
    }

    fn fcounter(&mut self, name: &str, help: &str, v: f64) {
        let k: Counter<f64, AtomicU64> = Counter::default();
        k.inc_by(v);
        self.r.register(name, help, k);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        let k: Counter = Counter::default();
        k.inc_by(v);
        self.r.register(name, help, k);
    }
}

/// A count as a gauge value (saturating: gauges are signed).
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Who this member is, its configuration and its place in it.
fn membership_metrics(s: &Snapshot, m: &mut Metrics) {
    let st = &s.status;
    m.gauge("node_id", "This member's id.", clamp(st.id.0));
    m.gauge(
        "voters",
        "Voters in the configuration in force.",
        s.voters.len() as i64,
    );
    m.gauge(
        "learners",
        "Learners in the configuration in force.",
        s.learners.len() as i64,
    );
    m.gauge(
        "is_voter",
        "1 if this member votes in the configuration in force.",
        i64::from(s.voters.contains(&st.id.0)),
    );
    m.gauge(
        "configuration_index",
        "Log index of the configuration in force.",
        clamp(s.configuration_index),
    );
    m.gauge("term", "Current term.", clamp(st.term.0));
    m.gauge(
        "leader_id",
        "Known leader's id (0: none).",
        clamp(st.leader.map_or(0, |l| l.0)),
    );
    m.gauge(
        "commit_index",
        "Highest log index known committed.",
        clamp(st.commit_index.0),
    );
    m.gauge(
        "last_applied",
        "Highest log index applied.",
        clamp(st.last_applied.0),
    );
    m.gauge(
        "last_log_index",
        "Index of the last log entry.",
        clamp(st.last_log_index.0),
    );
    m.gauge(
        "is_leader",
        "1 if this member leads.",
        i64::from(st.role == Role::Leader),
    );
    let roles = Family::<Vec<(String, String)>, Gauge>::default();
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        roles
            .get_or_create(&vec![("role".into(), role_name(role).into())])
            .set(i64::from(st.role == role));
    }
    m.r.register("role", "Current role (1 for the role held).", roles);
}

/// Client connections and the store.
fn client_metrics(s: &Snapshot, m: &mut Metrics) {
    m.gauge(
        "client_connections",
        "Open client connections.",
        s.clients as i64,
    );
    m.gauge(
        "client_max_connections",
        "Client connections accepted at most.",
        s.max_clients as i64,
    );
    m.gauge(
        "client_memory_bytes",
        "Bytes held by client connections: input, reply slots, unsent output.",
        s.client_bytes as i64,
    );
    m.gauge(
        "client_memory_budget_bytes",
        "Budget for client_memory_bytes.",
        s.client_budget as i64,
    );
    m.gauge("kv_keys", "Keys in the store.", s.keys as i64);
    m.gauge(
        "kv_expires",
        "Keys in the store with a deadline.",
        s.expires as i64,
    );
    m.gauge("kv_locks", "Locks held.", s.locks as i64);
    m.gauge(
        "uptime_seconds",
        "Seconds since start.",
        clamp(s.uptime.as_secs()),
    );
}

/// Peer links and elections.
fn peer_metrics(s: &Snapshot, m: &mut Metrics) {
    let c = &s.counters;
    let peer_up = Family::<Vec<(String, String)>, Gauge>::default();
    let peer_attempts = Family::<Vec<(String, String)>, Counter>::default();
    let peer_failures = Family::<Vec<(String, String)>, Counter>::default();
    let peer_dropped = Family::<Vec<(String, String)>, Counter>::default();
    for p in &s.peers {
        let l = vec![("peer".to_string(), p.id.to_string())];
        peer_up.get_or_create(&l).set(i64::from(p.up));
        peer_attempts.get_or_create(&l).inc_by(p.connect_attempts);
        peer_failures.get_or_create(&l).inc_by(p.connect_failures);
        peer_dropped.get_or_create(&l).inc_by(p.dropped);
    }
    m.r.register("peer_up", "Whether the link to a peer is up.", peer_up);
    m.r.register(
        "peer_connect_attempts",
        "Connection attempts to a peer.",
        peer_attempts,
    );
    m.r.register(
        "peer_connect_failures",
        "Failed attempts and broken links to a peer.",
        peer_failures,
    );
    m.r.register(
        "peer_messages_dropped",
        "Messages to a peer dropped for want of a link.",
        peer_dropped,
    );

    m.counter(
        "pre_votes_started",
        "Pre-vote rounds started.",
        c.pre_votes_started,
    );
    m.counter(
        "elections_started",
        "Elections started (terms campaigned in).",
        c.elections_started,
    );
    m.counter(
        "leader_changes",
        "Times a leader became known after none was.",
        c.leader_changes,
    );
    m.fgauge(
        "last_election_seconds",
        "Duration of the last leaderless stretch, loss of the leader to the next one.",
        c.last_election_nanos as f64 / 1e9,
    );
    let open = s.no_leader_for.map_or(0, |d| d.as_nanos() as u64);
    let k: Counter<f64, AtomicU64> = Counter::default();
    k.inc_by((c.no_leader_nanos + open) as f64 / 1e9);
    m.r.register("no_leader_seconds", "Total time without a known leader.", k);
    m.counter(
        "heartbeats_sent",
        "Heartbeats sent as leader.",
        c.heartbeats_sent,
    );
    m.counter(
        "heartbeats_failed",
        "Heartbeats dropped for want of a link.",
        c.heartbeats_failed,
    );
    m.counter("fsyncs", "Log fsyncs (group commits).", c.fsyncs);
}

/// The log on disk, snapshots and the loop.
fn storage_metrics(s: &Snapshot, m: &mut Metrics) {
    let c = &s.counters;
    let st = &s.storage;
    let (si, sterm, slen) = st.snapshot.unwrap_or((0, 0, 0));
    m.gauge(
        "snapshot_index",
        "Last index the current snapshot covers (0: none).",
        clamp(si),
    );
    m.gauge("snapshot_term", "Term of that entry.", clamp(sterm));
    m.gauge(
        "snapshot_bytes",
        "Size of the current snapshot file.",
        clamp(slen),
    );
    m.gauge(
        "snapshot_in_progress",
        "1 while a snapshot is being written.",
        i64::from(st.snapshot_in_progress),
    );
    m.counter(
        "snapshots_taken",
        "Snapshots taken here.",
        c.snapshots_taken,
    );
    m.counter(
        "snapshots_failed",
        "Snapshots that could not be written (retried later).",
        c.snapshots_failed,
    );
    m.counter(
        "snapshots_installed",
        "Snapshots received from a leader and installed.",
        c.snapshots_installed,
    );
    m.counter(
        "snapshots_refused",
        "Snapshots from a leader refused unwritten: over max_snapshot_mb or the free space.",
        st.snapshots_refused,
    );
    m.counter(
        "snapshots_sent",
        "Snapshot transfers started to followers.",
        c.snapshots_sent,
    );
    m.counter(
        "snapshot_bytes_sent",
        "Bytes of snapshot sent to followers.",
        c.snapshot_bytes_sent,
    );
    if let Some((ago, took)) = st.last_snapshot {
        m.fgauge(
            "last_snapshot_age_seconds",
            "Time since the last snapshot taken here.",
            ago.as_secs_f64(),
        );
        m.fgauge(
            "last_snapshot_duration_seconds",
            "How long the last snapshot took (clone to fsynced file).",
            took.as_secs_f64(),
        );
    }
    m.fgauge(
        "loop_turn_max_seconds",
        "The longest event-loop turn (work between two polls) since start.",
        c.loop_turn_max_nanos as f64 / 1e9,
    );
    m.counter(
        "loop_turns_over_heartbeat",
        "Event-loop turns that took a heartbeat interval or longer.",
        c.loop_turns_over_heartbeat,
    );
    m.counter(
        "loop_turns_over_half_heartbeat",
        "Event-loop turns that took half a heartbeat interval or longer.",
        c.loop_turns_over_half_heartbeat,
    );
    m.gauge(
        "log_first_index",
        "First index the log on disk holds.",
        clamp(st.log_first_index),
    );
    m.gauge(
        "log_bytes",
        "Bytes of log segments on disk.",
        clamp(st.log_bytes),
    );
    m.gauge("log_segments", "Log segment files.", st.log_segments as i64);
    m.counter(
        "entries_persisted",
        "Log entries written.",
        c.entries_persisted,
    );
    m.counter("entries_applied", "Entries applied.", c.entries_applied);
}

/// Messages, writes, reads, and what was refused.
fn traffic_metrics(s: &Snapshot, m: &mut Metrics) {
    let c = &s.counters;
    m.counter(
        "messages_sent",
        "Messages queued to peers.",
        c.messages_sent,
    );
    m.counter(
        "messages_received",
        "Messages received from peers.",
        c.messages_received,
    );
    m.counter("writes_ok", "Writes acknowledged.", c.writes_ok);
    m.counter(
        "writes_failed",
        "Proposed writes answered with an error.",
        c.writes_failed,
    );
    m.counter("reads_ok", "Linearizable reads served.", c.reads_ok);
    m.counter(
        "apply_deferred_turns",
        "Loop turns that left applies for the next turn to stay within their budget.",
        c.apply_deferred_turns,
    );
    m.counter(
        "client_work_deferred",
        "Times a client's requests or replies were left for the next loop turn to stay within its budget.",
        c.client_deferred,
    );
    m.counter(
        "keyspace_walks",
        "Reads that walked the key space on the helper thread (KEYS, SCAN pages over 1000 keys).",
        c.keyspace_walks,
    );
    m.fcounter(
        "keyspace_walk_seconds",
        "Time those walks took on the helper thread, reply encoding included.",
        c.keyspace_walk_nanos as f64 / 1e9,
    );
    m.counter("redirects", "MOVED and CLUSTERDOWN replies.", c.redirects);
    m.counter(
        "clients_accepted",
        "Client connections accepted.",
        c.clients_accepted,
    );
    m.counter(
        "peer_faults",
        "Impossible messages from peers, dropped with the link they came on.",
        c.peer_faults,
    );
    m.counter(
        "clients_rejected",
        "Client connections refused at the maximum.",
        c.clients_rejected,
    );
    m.counter(
        "clients_denied_protected",
        "Client connections refused by protected mode.",
        c.clients_denied_protected,
    );
    m.counter(
        "client_auth_failures",
        "AUTH attempts with a wrong user or password.",
        c.auth_failures,
    );
    m.counter(
        "client_auth_rate_limited",
        "AUTH attempts refused unchecked: their address had failed too often.",
        c.auth_rate_limited,
    );
    m.counter(
        "client_commands_denied",
        "Commands refused by the user's ACL rules (NOPERM).",
        c.commands_denied,
    );
    m.counter(
        "clients_evicted",
        "Clients closed because client buffers stayed over their budget.",
        c.clients_evicted,
    );
    m.counter(
        "clients_timed_out",
        "Clients closed by the idle timeout or for a too slow partial request.",
        c.clients_timed_out,
    );
}
