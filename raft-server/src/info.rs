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
use raft_proto::{Role, Status};
use slab::Slab;

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
}

/// Everything `INFO` and `/metrics` show, gathered at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The node's state.
    pub status: Status,
    /// The leader's client address, if a leader is known.
    pub leader_client_addr: Option<SocketAddr>,
    /// Identifies the cluster's membership.
    pub cluster_id: u64,
    /// Peer links.
    pub peers: Vec<PeerStatus>,
    /// Open client connections.
    pub clients: usize,
    /// Keys in the store.
    pub keys: usize,
    /// Seconds since start.
    pub uptime: Duration,
    /// Counters.
    pub counters: Counters,
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
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
    let up: Vec<String> = s
        .peers
        .iter()
        .filter(|p| p.up)
        .map(|p| p.id.to_string())
        .collect();
    line("raft_peers", &s.peers.len());
    line("raft_peers_connected", &up.join(","));
    line("raft_fsyncs", &s.counters.fsyncs);
    line("connected_clients", &s.clients);
    line("keys", &s.keys);
    line("uptime_in_seconds", &s.uptime.as_secs());
    o
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn render_metrics(s: &Snapshot) -> String {
    let st = &s.status;
    let c = &s.counters;
    let mut o = String::with_capacity(4096);
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    };
    gauge("raft_node_id", "This member's id.", st.id.0);
    gauge("raft_term", "Current term.", st.term.0);
    gauge(
        "raft_leader_id",
        "Known leader's id (0: none).",
        st.leader.map_or(0, |l| l.0),
    );
    gauge(
        "raft_commit_index",
        "Highest log index known committed.",
        st.commit_index.0,
    );
    gauge(
        "raft_last_applied",
        "Highest log index applied.",
        st.last_applied.0,
    );
    gauge(
        "raft_last_log_index",
        "Index of the last log entry.",
        st.last_log_index.0,
    );
    gauge(
        "raft_is_leader",
        "1 if this member leads.",
        u64::from(st.role == Role::Leader),
    );
    gauge(
        "raft_client_connections",
        "Open client connections.",
        s.clients as u64,
    );
    gauge("raft_kv_keys", "Keys in the store.", s.keys as u64);
    gauge(
        "raft_uptime_seconds",
        "Seconds since start.",
        s.uptime.as_secs(),
    );
    let _ = write!(
        o,
        "# HELP raft_role Current role (1 for the role held).\n# TYPE raft_role gauge\n"
    );
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let _ = writeln!(
            o,
            "raft_role{{role=\"{}\"}} {}",
            role_name(role),
            u64::from(st.role == role)
        );
    }
    let _ = write!(
        o,
        "# HELP raft_peer_up Whether the link to a peer is up.\n# TYPE raft_peer_up gauge\n"
    );
    for p in &s.peers {
        let _ = writeln!(o, "raft_peer_up{{peer=\"{}\"}} {}", p.id, u64::from(p.up));
    }
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = write!(
            o,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    };
    counter("raft_fsyncs_total", "Log fsyncs (group commits).", c.fsyncs);
    counter(
        "raft_entries_persisted_total",
        "Log entries written.",
        c.entries_persisted,
    );
    counter(
        "raft_entries_applied_total",
        "Entries applied.",
        c.entries_applied,
    );
    counter(
        "raft_messages_sent_total",
        "Messages queued to peers.",
        c.messages_sent,
    );
    counter(
        "raft_messages_received_total",
        "Messages received from peers.",
        c.messages_received,
    );
    counter("raft_writes_ok_total", "Writes acknowledged.", c.writes_ok);
    counter(
        "raft_writes_failed_total",
        "Proposed writes answered with an error.",
        c.writes_failed,
    );
    counter(
        "raft_reads_ok_total",
        "Linearizable reads served.",
        c.reads_ok,
    );
    counter(
        "raft_redirects_total",
        "MOVED and CLUSTERDOWN replies.",
        c.redirects,
    );
    counter(
        "raft_clients_accepted_total",
        "Client connections accepted.",
        c.clients_accepted,
    );
    let dropped: u64 = s.peers.iter().map(|p| p.dropped).sum();
    counter(
        "raft_messages_dropped_total",
        "Messages dropped for want of a link.",
        dropped,
    );
    let _ = write!(
        o,
        "# HELP raft_fsync_seconds_total Time spent in log fsyncs.\n# TYPE raft_fsync_seconds_total counter\nraft_fsync_seconds_total {:.6}\n",
        c.fsync_nanos as f64 / 1e9
    );
    o
}

/// HTTP connections at most; more are closed at once.
const MAX_HTTP_CONNS: usize = 16;
/// Request bytes read at most.
const MAX_HTTP_REQUEST: usize = 8 * 1024;
/// A connection must send its request and take the response within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

struct HttpConn {
    sock: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    responded: bool,
    deadline: Instant,
}

/// The `/metrics` endpoint: one request per connection, answered and closed.
pub struct MetricsServer {
    listener: TcpListener,
    listener_token: Token,
    token_base: usize,
    conns: Slab<HttpConn>,
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
            loop {
                match self.listener.accept() {
                    Ok((mut sock, _)) => {
                        if self.conns.len() >= MAX_HTTP_CONNS {
                            continue;
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
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        log::error!("metrics: accept failed: {e}");
                        return;
                    }
                }
            }
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

    /// Closes connections past their deadline.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
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

    /// The earliest connection deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
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
        let (code, body) = if !complete {
            ("400 Bad Request", "bad request\n".to_string())
        } else if c.inbuf.starts_with(b"GET /metrics ") || c.inbuf.starts_with(b"GET /metrics?") {
            ("200 OK", render())
        } else {
            ("404 Not Found", "try GET /metrics\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
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
            },
            leader_client_addr: Some("127.0.0.1:6401".parse().unwrap()),
            cluster_id: 0xabc,
            peers: vec![
                PeerStatus {
                    id: NodeId(2),
                    up: true,
                    dropped: 0,
                },
                PeerStatus {
                    id: NodeId(3),
                    up: false,
                    dropped: 4,
                },
            ],
            clients: 2,
            keys: 10,
            uptime: Duration::from_secs(5),
            counters: Counters::default(),
        }
    }

    #[test]
    fn info_has_the_contract_fields() {
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
            "raft_messages_dropped_total 4\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        for line in text.lines() {
            assert!(line.starts_with('#') || line.starts_with("raft_"), "{line}");
        }
    }
}
