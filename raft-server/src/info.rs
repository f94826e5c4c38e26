//! What a member says about itself: `INFO raft` for RESP clients and the
//! Prometheus text format at `GET /metrics`, both rendered from one
//! [`Snapshot`], plus the minimal HTTP endpoint that serves the latter.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as MetricRegistry;
use raft_proto::{Role, Status};
use slab::Slab;
use std::sync::atomic::AtomicU64;

use crate::conn::{self, ReadStatus};
use crate::peer::PeerStatus;

/// Counters kept by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// fsyncs of the log (group commits).
    pub fsyncs: u64,
    /// Total time spent in them.
    pub fsync_nanos: u64,
    /// Log entries appended to storage.
    pub entries_persisted: u64,
    /// Entries applied to the key-value store.
    pub entries_applied: u64,
    /// Messages handed to peer links.
    pub messages_sent: u64,
    /// Messages received from peers.
    pub messages_received: u64,
    /// Writes answered with success.
    pub writes_ok: u64,
    /// Writes answered with an error after being proposed.
    pub writes_failed: u64,
    /// Linearizable reads served.
    pub reads_ok: u64,
    /// Redirects (`MOVED`, `CLUSTERDOWN`).
    pub redirects: u64,
    /// Client connections accepted.
    pub clients_accepted: u64,
    /// Impossible messages from peers, dropped (their links closed).
    pub peer_faults: u64,
    /// Client connections refused: the maximum was connected.
    pub clients_rejected: u64,
    /// Client connections refused by protected mode (not loopback, and
    /// no password for the default user).
    pub clients_denied_protected: u64,
    /// `AUTH` attempts with a wrong user or password.
    pub auth_failures: u64,
    /// `AUTH` attempts refused unchecked: their source address had failed
    /// too often.
    pub auth_rate_limited: u64,
    /// Commands refused by the user's rules (`NOPERM`).
    pub commands_denied: u64,
    /// Clients closed because the budget for all client buffers stayed
    /// full.
    pub clients_evicted: u64,
    /// Clients closed by the idle timeout or for a too slow partial
    /// request.
    pub clients_timed_out: u64,
    /// Pre-vote rounds started.
    pub pre_votes_started: u64,
    /// Real elections started (pre-votes won, or PreVote off).
    pub elections_started: u64,
    /// Times a leader became known after none was.
    pub leader_changes: u64,
    /// How long the last leaderless stretch lasted (loss of the leader to
    /// the next one known): the last election's duration as seen here.
    pub last_election_nanos: u64,
    /// Total time without a known leader, closed stretches only.
    pub no_leader_nanos: u64,
    /// Heartbeats (empty AppendEntries) sent by this member as leader.
    pub heartbeats_sent: u64,
    /// Of those, dropped because the link to the follower was down.
    pub heartbeats_failed: u64,
    /// The longest loop turn (work between two polls) since start.
    pub loop_turn_max_nanos: u64,
    /// Loop turns that took a heartbeat interval or longer.
    pub loop_turns_over_heartbeat: u64,
    /// Snapshots taken here (committed).
    pub snapshots_taken: u64,
    /// Snapshots that failed to be written (retried later).
    pub snapshots_failed: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Snapshot transfers this leader started (first chunks sent).
    pub snapshots_sent: u64,
    /// Snapshot chunks sent, and their bytes.
    pub snapshot_chunks_sent: u64,
    /// Bytes of snapshot sent.
    pub snapshot_bytes_sent: u64,
}

/// Latency distributions, kept across scrapes.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Duration of each log fsync (one per loop turn with writes).
    pub fsync: Histogram,
    /// Time from an entry's append to this member's log to its application.
    pub apply_lag: Histogram,
    /// Time from an entry's append to this member's log to the end of the
    /// fsync that made it durable: with `apply_lag` on the leader (append
    /// to commit, so to the answer), it splits a write's wait into its own
    /// disk and the followers' round trip.
    pub durable_lag: Histogram,
}

impl Histograms {
    /// Empty histograms: fsyncs with buckets from 50 µs to about 1.6 s;
    /// the lags, which split a write's latency of a few hundred
    /// microseconds, in steps of 1.5x from 25 µs to about 2 s.
    pub fn new() -> Histograms {
        let lag = || Histogram::new(exponential_buckets(0.000_025, 1.5, 29));
        Histograms {
            fsync: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            apply_lag: lag(),
            durable_lag: lag(),
        }
    }
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms::new()
    }
}

/// Everything `INFO` and `/metrics` show, gathered at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The node's state.
    pub status: Status,
    /// The configuration in force: voters, learners, and the index of the
    /// entry (or snapshot) that holds it.
    pub voters: Vec<u64>,
    /// Learners of the configuration in force.
    pub learners: Vec<u64>,
    /// Index of the configuration in force.
    pub configuration_index: u64,
    /// This member knows a committed configuration removed it
    /// (`Node::is_removed`).
    pub removed: bool,
    /// Terms beyond the one-message bound that peers claimed and no
    /// quorum vouched for yet (`Node::term_claims`).
    pub term_claims: Vec<(u64, u64)>,
    /// The leader's client address, if a leader is known.
    pub leader_client_addr: Option<SocketAddr>,
    /// Identifies the cluster's membership.
    pub cluster_id: u64,
    /// Peer links.
    pub peers: Vec<PeerStatus>,
    /// Open client connections.
    pub clients: usize,
    /// Client connections accepted at most.
    pub max_clients: usize,
    /// Bytes held by all client connections (buffers, reply slots).
    pub client_bytes: usize,
    /// The budget for `client_bytes`.
    pub client_budget: usize,
    /// Keys in the store (expired ones not yet swept included).
    pub keys: usize,
    /// Keys with a deadline.
    pub expires: usize,
    /// Locks held (`LOCK.ACQUIRE`).
    pub locks: usize,
    /// The store clock: the latest leader stamp applied, ms since the epoch.
    pub store_clock_ms: u64,
    /// Seconds since start.
    pub uptime: Duration,
    /// Counters.
    pub counters: Counters,
    /// How long no leader has been known, if none is now.
    pub no_leader_for: Option<Duration>,
    /// Latency histograms.
    pub histograms: Histograms,
    /// This member's client port (`INFO server`).
    pub client_port: u16,
    /// The data dir: snapshot and log.
    pub storage: StorageStatus,
}

/// The snapshot and the log on disk, for `INFO raft` and `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StorageStatus {
    /// The current snapshot: last index, last term, bytes.
    pub snapshot: Option<(u64, u64, u64)>,
    /// First index the log on disk holds.
    pub log_first_index: u64,
    /// Bytes of log segments on disk.
    pub log_bytes: u64,
    /// Log segment files.
    pub log_segments: usize,
    /// A snapshot is being written by the helper thread.
    pub snapshot_in_progress: bool,
    /// The last snapshot taken here: how long ago, and how long it took.
    pub last_snapshot: Option<(Duration, Duration)>,
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

/// The Redis version whose protocol raft-node follows (`INFO server`,
/// `HELLO`): clients pick features by it.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// `INFO [section]` as Redis lays it out: `# Section` headers and
/// `field:value` lines. No section, `default`, `all` or `everything` gives
/// every section; an unknown one gives an empty string, as in Redis.
pub fn render_info_sections(s: &Snapshot, section: Option<&str>) -> String {
    type Render = fn(&Snapshot, &mut String);
    let sections: [(&str, Render); 9] = [
        ("server", server_section),
        ("clients", clients_section),
        ("memory", memory_section),
        ("persistence", persistence_section),
        ("stats", stats_section),
        ("replication", replication_section),
        // Cluster tools (redis-cli --cluster) check this before CLUSTER
        // NODES: the Raft group answers as a one-shard cluster.
        ("cluster", |_, o| {
            o.push_str("# Cluster\r\ncluster_enabled:1\r\n")
        }),
        ("keyspace", keyspace_section),
        ("raft", |s, o| o.push_str(&render_info(s))),
    ];
    let mut o = String::with_capacity(2048);
    for (name, render) in sections {
        let all = matches!(section, None | Some("default" | "all" | "everything"));
        if all || section == Some(name) {
            if !o.is_empty() {
                o.push_str("\r\n");
            }
            render(s, &mut o);
        }
    }
    o
}

fn field(o: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = write!(o, "{k}:{v}\r\n");
}

fn server_section(s: &Snapshot, o: &mut String) {
    o.push_str("# Server\r\n");
    field(o, "redis_version", REDIS_COMPAT_VERSION);
    field(o, "raft_node_version", env!("CARGO_PKG_VERSION"));
    field(o, "redis_mode", "standalone");
    field(o, "arch_bits", usize::BITS);
    field(o, "process_id", std::process::id());
    field(o, "tcp_port", s.client_port);
    field(o, "uptime_in_seconds", s.uptime.as_secs());
    field(o, "uptime_in_days", s.uptime.as_secs() / 86_400);
}

fn clients_section(s: &Snapshot, o: &mut String) {
    o.push_str("# Clients\r\n");
    field(o, "connected_clients", s.clients);
    field(o, "maxclients", s.max_clients);
    field(o, "blocked_clients", 0);
    field(o, "client_memory_bytes", s.client_bytes);
}

fn memory_section(s: &Snapshot, o: &mut String) {
    o.push_str("# Memory\r\n");
    field(o, "used_memory_rss", rss_bytes());
    field(o, "client_memory_budget_bytes", s.client_budget);
    field(o, "maxmemory", 0);
}

/// This process's resident set size, from `/proc/self/statm` (0 where it
/// cannot be read).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

fn persistence_section(s: &Snapshot, o: &mut String) {
    o.push_str("# Persistence\r\n");
    // Every write is in the Raft log, fsynced on a majority before it is
    // acknowledged; the snapshot plays the part of the RDB file.
    field(o, "loading", 0);
    field(
        o,
        "rdb_bgsave_in_progress",
        u8::from(s.storage.snapshot_in_progress),
    );
    field(o, "rdb_saves", s.counters.snapshots_taken);
    field(
        o,
        "raft_snapshot_bytes",
        s.storage.snapshot.map_or(0, |x| x.2),
    );
    field(o, "aof_enabled", 0);
    field(o, "raft_fsyncs", s.counters.fsyncs);
    field(o, "raft_entries_persisted", s.counters.entries_persisted);
}

fn stats_section(s: &Snapshot, o: &mut String) {
    let c = &s.counters;
    o.push_str("# Stats\r\n");
    field(o, "total_connections_received", c.clients_accepted);
    field(
        o,
        "total_commands_processed",
        c.writes_ok + c.writes_failed + c.reads_ok + c.redirects,
    );
    field(o, "rejected_connections", c.clients_rejected);
    field(o, "evicted_clients", c.clients_evicted);
    field(o, "acl_access_denied_auth", c.auth_failures);
    field(o, "acl_access_denied_cmd", c.commands_denied);
    field(o, "auth_rate_limited", c.auth_rate_limited);
    field(
        o,
        "denied_protected_connections",
        c.clients_denied_protected,
    );
}

fn replication_section(s: &Snapshot, o: &mut String) {
    o.push_str("# Replication\r\n");
    if s.status.role == Role::Leader {
        field(o, "role", "master");
        let up: Vec<&PeerStatus> = s.peers.iter().filter(|p| p.up).collect();
        field(o, "connected_slaves", up.len());
        for (i, p) in up.iter().enumerate() {
            field(
                o,
                &format!("slave{i}"),
                format!("raft_id={},state=online", p.id),
            );
        }
    } else {
        field(o, "role", "slave");
        match s.leader_client_addr {
            Some(a) => {
                field(o, "master_host", a.ip());
                field(o, "master_port", a.port());
                field(o, "master_link_status", "up");
            }
            None => field(o, "master_link_status", "down"),
        }
        field(o, "connected_slaves", 0);
    }
}

fn keyspace_section(s: &Snapshot, o: &mut String) {
    o.push_str("# Keyspace\r\n");
    if s.keys > 0 {
        field(
            o,
            "db0",
            format!("keys={},expires={},avg_ttl=0", s.keys, s.expires),
        );
    }
}

/// The `INFO raft` text: `field:value` lines ending in CRLF, as Redis does.
pub fn render_info(s: &Snapshot) -> String {
    let st = &s.status;
    let mut o = String::with_capacity(1024);
    o.push_str("# Raft\r\n");
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(o, "{k}:{v}\r\n");
    };
    line("raft_node_id", &st.id);
    line("raft_role", &role_name(st.role));
    line("raft_term", &st.term);
    line("raft_leader_id", &st.leader.map_or(0, |l| l.0));
    line(
        "raft_leader_client_addr",
        &s.leader_client_addr
            .map_or(String::new(), |a| a.to_string()),
    );
    line("raft_voted_for", &st.voted_for.map_or(0, |v| v.0));
    line("raft_commit_index", &st.commit_index);
    line("raft_last_applied", &st.last_applied);
    line("raft_last_log_index", &st.last_log_index);
    line("raft_last_log_term", &st.last_log_term);
    line("raft_cluster_id", &format!("{:016x}", s.cluster_id));
    let me = st.id.0;
    let membership = if s.removed {
        "removed"
    } else if s.voters.contains(&me) {
        "voter"
    } else if s.learners.contains(&me) {
        "learner"
    } else {
        "none"
    };
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    line("raft_membership", &membership);
    line("raft_voters", &list(&s.voters));
    line("raft_learners", &list(&s.learners));
    line("raft_configuration_index", &s.configuration_index);
    let claims: Vec<String> = s
        .term_claims
        .iter()
        .map(|(id, term)| format!("{id}={term}"))
        .collect();
    line("raft_term_claims", &claims.join(","));
    let up: Vec<String> = s
        .peers
        .iter()
        .filter(|p| p.up)
        .map(|p| p.id.to_string())
        .collect();
    line("raft_peers", &s.peers.len());
    line("raft_peers_connected", &up.join(","));
    for p in &s.peers {
        line(&format!("raft_peer_{}", p.id), &peer_health(p));
    }
    let c = &s.counters;
    let ms = |nanos: u64| format!("{:.1}", nanos as f64 / 1e6);
    let open = s.no_leader_for.map_or(0, |d| d.as_nanos() as u64);
    line("raft_pre_votes_started", &c.pre_votes_started);
    line("raft_elections_started", &c.elections_started);
    line("raft_leader_changes", &c.leader_changes);
    line("raft_last_election_ms", &ms(c.last_election_nanos));
    line("raft_no_leader_ms_total", &ms(c.no_leader_nanos + open));
    line("raft_heartbeats_sent", &c.heartbeats_sent);
    line("raft_heartbeats_failed", &c.heartbeats_failed);
    line("raft_peer_faults", &c.peer_faults);
    line("raft_fsyncs", &s.counters.fsyncs);
    let st = &s.storage;
    let (si, sterm, slen) = st.snapshot.unwrap_or((0, 0, 0));
    line("raft_snapshot_index", &si);
    line("raft_snapshot_term", &sterm);
    line("raft_snapshot_bytes", &slen);
    line(
        "raft_snapshot_in_progress",
        &u8::from(st.snapshot_in_progress),
    );
    line("raft_snapshots_taken", &c.snapshots_taken);
    line("raft_snapshots_failed", &c.snapshots_failed);
    line("raft_snapshots_installed", &c.snapshots_installed);
    line("raft_snapshots_sent", &c.snapshots_sent);
    line("raft_snapshot_chunks_sent", &c.snapshot_chunks_sent);
    line("raft_snapshot_bytes_sent", &c.snapshot_bytes_sent);
    let (ago, took) = st
        .last_snapshot
        .map_or((String::new(), String::new()), |(a, t)| {
            (a.as_secs().to_string(), t.as_millis().to_string())
        });
    line("raft_last_snapshot_age_s", &ago);
    line("raft_last_snapshot_ms", &took);
    line("raft_loop_turn_max_ms", &ms(c.loop_turn_max_nanos));
    line(
        "raft_loop_turns_over_heartbeat",
        &c.loop_turns_over_heartbeat,
    );
    line("raft_log_first_index", &st.log_first_index);
    line("raft_log_bytes", &st.log_bytes);
    line("raft_log_segments", &st.log_segments);
    line("connected_clients", &s.clients);
    line("maxclients", &s.max_clients);
    line("rejected_connections", &c.clients_rejected);
    line("evicted_clients", &c.clients_evicted);
    line("timed_out_clients", &c.clients_timed_out);
    line("client_memory_bytes", &s.client_bytes);
    line("client_memory_budget_bytes", &s.client_budget);
    line("keys", &s.keys);
    line("expires", &s.expires);
    line("locks", &s.locks);
    line("store_clock_ms", &s.store_clock_ms);
    line("uptime_in_seconds", &s.uptime.as_secs());
    o
}

/// One peer's health for `INFO`: `up,for=12.3s,attempts=1,failures=0` or
/// `down,for=4.2s,next_retry_ms=80,attempts=12,failures=11`.
fn peer_health(p: &PeerStatus) -> String {
    let state = if p.up {
        "up"
    } else if p.connect_failures == 0 {
        "connecting"
    } else {
        "down"
    };
    let mut h = format!("{state},for={:.1}s", p.for_.as_secs_f64());
    if let Some(d) = p.next_retry_in {
        let _ = write!(h, ",next_retry_ms={}", d.as_millis());
    }
    let _ = write!(
        h,
        ",attempts={},failures={},dropped={}",
        p.connect_attempts, p.connect_failures, p.dropped
    );
    h
}

/// The Prometheus text exposition format, built with `prometheus-client`
/// from the snapshot at scrape time: the event loop keeps plain counters and
/// nothing is shared between threads.
pub fn render_metrics(s: &Snapshot) -> String {
    let st = &s.status;
    let c = &s.counters;
    let mut r = MetricRegistry::with_prefix("raft");
    let gauge = |r: &mut MetricRegistry, name: &str, help: &str, v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        r.register(name, help, g);
    };
    let fgauge = |r: &mut MetricRegistry, name: &str, help: &str, v: f64| {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        r.register(name, help, g);
    };
    let counter = |r: &mut MetricRegistry, name: &str, help: &str, v: u64| {
        let k: Counter = Counter::default();
        k.inc_by(v);
        r.register(name, help, k);
    };
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(&mut r, "node_id", "This member's id.", i(st.id.0));
    gauge(
        &mut r,
        "voters",
        "Voters in the configuration in force.",
        s.voters.len() as i64,
    );
    gauge(
        &mut r,
        "learners",
        "Learners in the configuration in force.",
        s.learners.len() as i64,
    );
    gauge(
        &mut r,
        "is_voter",
        "1 if this member votes in the configuration in force.",
        i64::from(s.voters.contains(&st.id.0)),
    );
    gauge(
        &mut r,
        "configuration_index",
        "Log index of the configuration in force.",
        i(s.configuration_index),
    );
    gauge(&mut r, "term", "Current term.", i(st.term.0));
    gauge(
        &mut r,
        "leader_id",
        "Known leader's id (0: none).",
        i(st.leader.map_or(0, |l| l.0)),
    );
    gauge(
        &mut r,
        "commit_index",
        "Highest log index known committed.",
        i(st.commit_index.0),
    );
    gauge(
        &mut r,
        "last_applied",
        "Highest log index applied.",
        i(st.last_applied.0),
    );
    gauge(
        &mut r,
        "last_log_index",
        "Index of the last log entry.",
        i(st.last_log_index.0),
    );
    gauge(
        &mut r,
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
    r.register("role", "Current role (1 for the role held).", roles);
    gauge(
        &mut r,
        "client_connections",
        "Open client connections.",
        s.clients as i64,
    );
    gauge(
        &mut r,
        "client_max_connections",
        "Client connections accepted at most.",
        s.max_clients as i64,
    );
    gauge(
        &mut r,
        "client_memory_bytes",
        "Bytes held by client connections: input, reply slots, unsent output.",
        s.client_bytes as i64,
    );
    gauge(
        &mut r,
        "client_memory_budget_bytes",
        "Budget for client_memory_bytes.",
        s.client_budget as i64,
    );
    gauge(&mut r, "kv_keys", "Keys in the store.", s.keys as i64);
    gauge(
        &mut r,
        "kv_expires",
        "Keys in the store with a deadline.",
        s.expires as i64,
    );
    gauge(&mut r, "kv_locks", "Locks held.", s.locks as i64);
    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since start.",
        i(s.uptime.as_secs()),
    );

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
    r.register("peer_up", "Whether the link to a peer is up.", peer_up);
    r.register(
        "peer_connect_attempts",
        "Connection attempts to a peer.",
        peer_attempts,
    );
    r.register(
        "peer_connect_failures",
        "Failed attempts and broken links to a peer.",
        peer_failures,
    );
    r.register(
        "peer_messages_dropped",
        "Messages to a peer dropped for want of a link.",
        peer_dropped,
    );

    counter(
        &mut r,
        "pre_votes_started",
        "Pre-vote rounds started.",
        c.pre_votes_started,
    );
    counter(
        &mut r,
        "elections_started",
        "Elections started (terms campaigned in).",
        c.elections_started,
    );
    counter(
        &mut r,
        "leader_changes",
        "Times a leader became known after none was.",
        c.leader_changes,
    );
    fgauge(
        &mut r,
        "last_election_seconds",
        "Duration of the last leaderless stretch, loss of the leader to the next one.",
        c.last_election_nanos as f64 / 1e9,
    );
    let open = s.no_leader_for.map_or(0, |d| d.as_nanos() as u64);
    let k: Counter<f64, AtomicU64> = Counter::default();
    k.inc_by((c.no_leader_nanos + open) as f64 / 1e9);
    r.register("no_leader_seconds", "Total time without a known leader.", k);
    counter(
        &mut r,
        "heartbeats_sent",
        "Heartbeats sent as leader.",
        c.heartbeats_sent,
    );
    counter(
        &mut r,
        "heartbeats_failed",
        "Heartbeats dropped for want of a link.",
        c.heartbeats_failed,
    );
    counter(&mut r, "fsyncs", "Log fsyncs (group commits).", c.fsyncs);
    let st = &s.storage;
    let (si, sterm, slen) = st.snapshot.unwrap_or((0, 0, 0));
    gauge(
        &mut r,
        "snapshot_index",
        "Last index the current snapshot covers (0: none).",
        i(si),
    );
    gauge(&mut r, "snapshot_term", "Term of that entry.", i(sterm));
    gauge(
        &mut r,
        "snapshot_bytes",
        "Size of the current snapshot file.",
        i(slen),
    );
    gauge(
        &mut r,
        "snapshot_in_progress",
        "1 while a snapshot is being written.",
        i64::from(st.snapshot_in_progress),
    );
    counter(
        &mut r,
        "snapshots_taken",
        "Snapshots taken here.",
        c.snapshots_taken,
    );
    counter(
        &mut r,
        "snapshots_failed",
        "Snapshots that could not be written (retried later).",
        c.snapshots_failed,
    );
    counter(
        &mut r,
        "snapshots_installed",
        "Snapshots received from a leader and installed.",
        c.snapshots_installed,
    );
    counter(
        &mut r,
        "snapshots_sent",
        "Snapshot transfers started to followers.",
        c.snapshots_sent,
    );
    counter(
        &mut r,
        "snapshot_bytes_sent",
        "Bytes of snapshot sent to followers.",
        c.snapshot_bytes_sent,
    );
    if let Some((ago, took)) = st.last_snapshot {
        fgauge(
            &mut r,
            "last_snapshot_age_seconds",
            "Time since the last snapshot taken here.",
            ago.as_secs_f64(),
        );
        fgauge(
            &mut r,
            "last_snapshot_duration_seconds",
            "How long the last snapshot took (clone to fsynced file).",
            took.as_secs_f64(),
        );
    }
    fgauge(
        &mut r,
        "loop_turn_max_seconds",
        "The longest event-loop turn (work between two polls) since start.",
        c.loop_turn_max_nanos as f64 / 1e9,
    );
    counter(
        &mut r,
        "loop_turns_over_heartbeat",
        "Event-loop turns that took a heartbeat interval or longer.",
        c.loop_turns_over_heartbeat,
    );
    gauge(
        &mut r,
        "log_first_index",
        "First index the log on disk holds.",
        i(st.log_first_index),
    );
    gauge(
        &mut r,
        "log_bytes",
        "Bytes of log segments on disk.",
        i(st.log_bytes),
    );
    gauge(
        &mut r,
        "log_segments",
        "Log segment files.",
        st.log_segments as i64,
    );
    counter(
        &mut r,
        "entries_persisted",
        "Log entries written.",
        c.entries_persisted,
    );
    counter(
        &mut r,
        "entries_applied",
        "Entries applied.",
        c.entries_applied,
    );
    counter(
        &mut r,
        "messages_sent",
        "Messages queued to peers.",
        c.messages_sent,
    );
    counter(
        &mut r,
        "messages_received",
        "Messages received from peers.",
        c.messages_received,
    );
    counter(&mut r, "writes_ok", "Writes acknowledged.", c.writes_ok);
    counter(
        &mut r,
        "writes_failed",
        "Proposed writes answered with an error.",
        c.writes_failed,
    );
    counter(&mut r, "reads_ok", "Linearizable reads served.", c.reads_ok);
    counter(
        &mut r,
        "redirects",
        "MOVED and CLUSTERDOWN replies.",
        c.redirects,
    );
    counter(
        &mut r,
        "clients_accepted",
        "Client connections accepted.",
        c.clients_accepted,
    );
    counter(
        &mut r,
        "peer_faults",
        "Impossible messages from peers, dropped with the link they came on.",
        c.peer_faults,
    );
    counter(
        &mut r,
        "clients_rejected",
        "Client connections refused at the maximum.",
        c.clients_rejected,
    );
    counter(
        &mut r,
        "clients_denied_protected",
        "Client connections refused by protected mode.",
        c.clients_denied_protected,
    );
    counter(
        &mut r,
        "client_auth_failures",
        "AUTH attempts with a wrong user or password.",
        c.auth_failures,
    );
    counter(
        &mut r,
        "client_auth_rate_limited",
        "AUTH attempts refused unchecked: their address had failed too often.",
        c.auth_rate_limited,
    );
    counter(
        &mut r,
        "client_commands_denied",
        "Commands refused by the user's ACL rules (NOPERM).",
        c.commands_denied,
    );
    counter(
        &mut r,
        "clients_evicted",
        "Clients closed because client buffers stayed over their budget.",
        c.clients_evicted,
    );
    counter(
        &mut r,
        "clients_timed_out",
        "Clients closed by the idle timeout or for a too slow partial request.",
        c.clients_timed_out,
    );
    r.register(
        "fsync_seconds",
        "Duration of log fsyncs.",
        s.histograms.fsync.clone(),
    );
    r.register(
        "apply_lag_seconds",
        "Time from an entry's append to this member's log to its application.",
        s.histograms.apply_lag.clone(),
    );
    r.register(
        "durable_lag_seconds",
        "Time from an entry's append to this member's log to the end of the fsync that made it durable.",
        s.histograms.durable_lag.clone(),
    );
    let mut o = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = encode(&mut o, &r);
    o
}

/// HTTP connections at most; beyond it, the oldest is closed to make room,
/// so that idle connections can never keep a scrape out.
const MAX_HTTP_CONNS: usize = 16;
/// After `accept` failed (out of descriptors, say), when to try again; the
/// connections wait in the listen backlog.
const HTTP_ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Request bytes read at most.
const MAX_HTTP_REQUEST: usize = 8 * 1024;
/// A connection must send its request and take the response within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

struct HttpConn {
    sock: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    responded: bool,
    /// Accept time plus [`HTTP_TIMEOUT`]: the earliest is the oldest.
    deadline: Instant,
}

/// The `/metrics` endpoint: one request per connection, answered and closed.
pub struct MetricsServer {
    listener: TcpListener,
    listener_token: Token,
    token_base: usize,
    conns: Slab<HttpConn>,
    /// When to retry a failed `accept`.
    accept_retry_at: Option<Instant>,
}

impl MetricsServer {
    /// Registers the bound listener under `listener_token`; connections use
    /// tokens from `token_base`.
    pub fn new(
        mut listener: TcpListener,
        listener_token: Token,
        token_base: usize,
        registry: &Registry,
    ) -> io::Result<Self> {
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(MetricsServer {
            listener,
            listener_token,
            token_base,
            conns: Slab::new(),
            accept_retry_at: None,
        })
    }

    /// Whether this token is the endpoint's.
    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token
            || token
                .0
                .checked_sub(self.token_base)
                .is_some_and(|k| self.conns.contains(k))
    }

    /// Handles readiness; `render` produces the metrics text when a request
    /// is complete.
    pub fn ready(
        &mut self,
        token: Token,
        registry: &Registry,
        now: Instant,
        render: &mut dyn FnMut() -> String,
    ) {
        if token == self.listener_token {
            self.accept(registry, now);
            return;
        }
        let Some(k) = token.0.checked_sub(self.token_base) else {
            return;
        };
        let keep = match self.conns.get_mut(k) {
            Some(c) => serve(c, registry, Token(self.token_base + k), render).unwrap_or(false),
            None => return,
        };
        if !keep {
            let mut c = self.conns.remove(k);
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// Accepts every queued connection. At the cap the oldest connection is
    /// closed instead of the new one: a scraper's fresh connection is worth
    /// more than one that has been open longest (idle, or a slow reader).
    /// If `accept` fails, the connections stay queued and edge-triggered
    /// readiness will not report them again: retry on a timer.
    fn accept(&mut self, registry: &Registry, now: Instant) {
        let retrying = self.accept_retry_at.take().is_some();
        loop {
            match self.listener.accept() {
                Ok((mut sock, _)) => {
                    if self.conns.len() >= MAX_HTTP_CONNS {
                        self.close_oldest(registry);
                    }
                    let e = self.conns.vacant_entry();
                    if registry
                        .register(
                            &mut sock,
                            Token(self.token_base + e.key()),
                            Interest::READABLE,
                        )
                        .is_ok()
                    {
                        e.insert(HttpConn {
                            sock,
                            inbuf: BytesMut::new(),
                            out: BytesMut::new(),
                            responded: false,
                            deadline: now + HTTP_TIMEOUT,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if !retrying {
                        log::warn!(
                            "metrics: accept failed: {e}; retrying every {} ms",
                            HTTP_ACCEPT_RETRY.as_millis()
                        );
                    }
                    self.accept_retry_at = Some(now + HTTP_ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn close_oldest(&mut self, registry: &Registry) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.deadline)
            .map(|(k, _)| k);
        if let Some(k) = oldest {
            let mut c = self.conns.remove(k);
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// Closes connections past their deadline; retries a failed accept.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        if self.accept_retry_at.is_some_and(|at| now >= at) {
            self.accept(registry, now);
        }
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            let mut c = self.conns.remove(k);
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// The earliest connection deadline or accept retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|(_, c)| c.deadline)
            .chain(self.accept_retry_at)
            .min()
    }

    /// Closes the listener and every connection.
    pub fn close_all(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        for mut c in self.conns.drain() {
            let _ = registry.deregister(&mut c.sock);
        }
    }
}

/// Reads the request, answers it once complete, writes. `Ok(false)`: done.
fn serve(
    c: &mut HttpConn,
    registry: &Registry,
    token: Token,
    render: &mut dyn FnMut() -> String,
) -> io::Result<bool> {
    if !c.responded {
        let status = conn::read_into(&mut c.sock, &mut c.inbuf, MAX_HTTP_REQUEST)?;
        let complete = c.inbuf.windows(4).any(|w| w == b"\r\n\r\n");
        if !complete && status == ReadStatus::Drained {
            return Ok(true);
        }
        const TEXT: &str = "text/plain; charset=utf-8";
        // What prometheus-client writes; Prometheus negotiates it.
        const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        let (code, ctype, body) = if !complete {
            ("400 Bad Request", TEXT, "bad request\n".to_string())
        } else if c.inbuf.starts_with(b"GET /metrics ") || c.inbuf.starts_with(b"GET /metrics?") {
            ("200 OK", OPENMETRICS, render())
        } else {
            ("404 Not Found", TEXT, "try GET /metrics\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.out.extend_from_slice(head.as_bytes());
        c.out.extend_from_slice(body.as_bytes());
        c.responded = true;
    }
    if conn::write_from(&mut c.sock, &mut c.out)? {
        return Ok(false);
    }
    registry.reregister(&mut c.sock, token, Interest::WRITABLE)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_proto::{LogIndex, NodeId, Term};

    fn snapshot() -> Snapshot {
        Snapshot {
            voters: vec![1, 2, 3],
            learners: vec![],
            configuration_index: 1,
            removed: false,
            term_claims: Vec::new(),
            status: Status {
                id: NodeId(1),
                role: Role::Leader,
                term: Term(7),
                leader: Some(NodeId(1)),
                voted_for: Some(NodeId(1)),
                commit_index: LogIndex(1042),
                last_applied: LogIndex(1042),
                last_log_index: LogIndex(1043),
                last_log_term: Term(7),
                log_start_index: LogIndex(0),
                snapshot: None,
            },
            leader_client_addr: Some("127.0.0.1:6401".parse().unwrap()),
            client_port: 6401,
            storage: StorageStatus::default(),
            cluster_id: 0xabc,
            peers: vec![
                PeerStatus {
                    id: NodeId(2),
                    up: true,
                    for_: Duration::from_secs(3),
                    next_retry_in: None,
                    connect_attempts: 1,
                    connect_failures: 0,
                    dropped: 0,
                },
                PeerStatus {
                    id: NodeId(3),
                    up: false,
                    for_: Duration::from_millis(4200),
                    next_retry_in: Some(Duration::from_millis(80)),
                    connect_attempts: 12,
                    connect_failures: 11,
                    dropped: 4,
                },
            ],
            clients: 2,
            max_clients: 4096,
            client_bytes: 12345,
            client_budget: 256 << 20,
            keys: 10,
            expires: 3,
            locks: 1,
            store_clock_ms: 1_700_000_000_000,
            uptime: Duration::from_secs(5),
            counters: Counters {
                elections_started: 2,
                leader_changes: 3,
                last_election_nanos: 14_000_000,
                no_leader_nanos: 600_000_000,
                heartbeats_sent: 100,
                heartbeats_failed: 7,
                ..Counters::default()
            },
            no_leader_for: None,
            histograms: {
                let h = Histograms::new();
                h.fsync.observe(0.002);
                h.apply_lag.observe(0.004);
                h.durable_lag.observe(0.0003);
                h
            },
        }
    }

    #[test]
    fn info_has_the_contract_fields() {
        let all = render_info_sections(&snapshot(), None);
        for header in [
            "# Server\r\n",
            "# Clients\r\n",
            "# Memory\r\n",
            "# Persistence\r\n",
            "# Stats\r\n",
            "# Replication\r\n",
            "# Keyspace\r\n",
            "# Raft\r\n",
        ] {
            assert!(all.contains(header), "{header:?} missing");
        }
        let repl = render_info_sections(&snapshot(), Some("replication"));
        assert!(
            repl.starts_with("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n"),
            "{repl}"
        );
        assert!(!repl.contains("# Raft"));
        assert_eq!(render_info_sections(&snapshot(), Some("nosuch")), "");
        assert!(
            render_info_sections(&snapshot(), Some("server")).contains("redis_version:7.2.0\r\n")
        );
        let text = render_info(&snapshot());
        for want in [
            "raft_node_id:1\r\n",
            "raft_role:leader\r\n",
            "raft_term:7\r\n",
            "raft_leader_id:1\r\n",
            "raft_commit_index:1042\r\n",
            "raft_last_applied:1042\r\n",
            "raft_last_log_index:1043\r\n",
            "raft_peers_connected:2\r\n",
            "raft_peer_2:up,for=3.0s,attempts=1,failures=0,dropped=0\r\n",
            "raft_peer_3:down,for=4.2s,next_retry_ms=80,attempts=12,failures=11,dropped=4\r\n",
            "raft_elections_started:2\r\n",
            "raft_leader_changes:3\r\n",
            "raft_last_election_ms:14.0\r\n",
            "raft_no_leader_ms_total:600.0\r\n",
            "raft_heartbeats_sent:100\r\n",
            "raft_heartbeats_failed:7\r\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let mut s = snapshot();
        s.status.leader = None;
        s.status.role = Role::PreCandidate;
        let text = render_info(&s);
        assert!(text.contains("raft_leader_id:0\r\n"));
        assert!(text.contains("raft_role:precandidate\r\n"));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let text = render_metrics(&snapshot());
        for want in [
            "raft_term 7\n",
            "raft_commit_index 1042\n",
            "raft_last_applied 1042\n",
            "raft_role{role=\"leader\"} 1\n",
            "raft_role{role=\"follower\"} 0\n",
            "raft_peer_up{peer=\"3\"} 0\n",
            "raft_peer_messages_dropped_total{peer=\"3\"} 4\n",
            "raft_peer_connect_failures_total{peer=\"3\"} 11\n",
            "raft_elections_started_total 2\n",
            "raft_heartbeats_failed_total 7\n",
            "raft_last_election_seconds 0.014\n",
            "raft_no_leader_seconds_total 0.6\n",
            "raft_fsync_seconds_count 1\n",
            "raft_apply_lag_seconds_sum 0.004\n",
            "raft_durable_lag_seconds_sum 0.0003\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        for line in text.lines() {
            assert!(line.starts_with('#') || line.starts_with("raft_"), "{line}");
        }
    }
}
