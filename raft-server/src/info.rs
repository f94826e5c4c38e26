//! What a member says about itself: `INFO raft` for RESP clients and the
//! Prometheus text format at `GET /metrics`, both rendered from one
//! [`Snapshot`], plus the minimal HTTP endpoint that serves the latter.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use raft_proto::{Role, Status};

mod http;
mod metrics;

pub use http::MetricsServer;
pub use metrics::render_metrics;

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
    /// Turns that left applies (or read answers, events) for the next turn
    /// to stay within their budget.
    pub apply_deferred_turns: u64,
    /// Times a client's requests or replies were left for the next turn to
    /// stay within the turn's budget.
    pub client_deferred: u64,
    /// Of the reads, walks of the key space served off the loop (`KEYS`, large
    /// `SCAN` pages).
    pub keyspace_walks: u64,
    /// Their total time on the helper thread.
    pub keyspace_walk_nanos: u64,
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
    /// What the longest turn spent most of its time on (a [`crate::turn`]
    /// phase).
    pub loop_turn_max_phase: &'static str,
    /// Loop turns that took a heartbeat interval or longer.
    pub loop_turns_over_heartbeat: u64,
    /// Loop turns that took half a heartbeat interval or longer (the
    /// budgets aim below it).
    pub loop_turns_over_half_heartbeat: u64,
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
    /// Duration of each event-loop turn (work between two polls).
    pub loop_turn: Histogram,
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
            // 10 µs to about 5 s in steps of 2.
            loop_turn: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
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
    /// Snapshots from a leader refused unwritten (over `max_snapshot_mb`
    /// or the free space).
    pub snapshots_refused: u64,
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
    field(o, "keyspace_walks", c.keyspace_walks);
    field(o, "apply_deferred_turns", c.apply_deferred_turns);
    field(o, "client_work_deferred", c.client_deferred);
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
    line("raft_snapshots_refused", &st.snapshots_refused);
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
    line("raft_loop_turn_max_phase", &c.loop_turn_max_phase);
    line(
        "raft_loop_turns_over_heartbeat",
        &c.loop_turns_over_heartbeat,
    );
    line(
        "raft_loop_turns_over_half_heartbeat",
        &c.loop_turns_over_half_heartbeat,
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
