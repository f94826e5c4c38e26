//! Links to the other members.
//!
//! Each member dials every peer and keeps that one **outbound** connection
//! for everything it sends to the peer; what the peer sends arrives on the
//! peer's own outbound connection, which is an **inbound** one here. Two
//! TCP connections per pair, each used in one direction, so there is no
//! dial race to break and no connection shared between two senders.
//!
//! Both sides of a connection send a [`Handshake`] first: the dialer at once,
//! the acceptor after checking the dialer's. A connection from another
//! cluster, from an unknown member, or from something that is not a member
//! at all (a RESP client on the wrong port, a scanner) is refused with one
//! log line. After the handshake, frames go one way only, through
//! [`raft_proto::codec`].
//!
//! A link is up once the dialer has the acceptor's handshake. It goes down
//! on EOF, a reset, a connect or handshake timeout, a protocol error, or a
//! full send queue (a peer that does not read is unreachable; the queue does
//! not grow past [`MAX_SEND_QUEUE`]). Down links are redialed with capped,
//! jittered exponential backoff; the cap stays below the election timeout so
//! that a restarted member is reached before it would start an election.
//!
//! The node hears of every change as a [`PeerInput`]: `LinkUp` when an
//! outbound link comes up, `LinkDown` when an up link (either direction)
//! breaks, which is how a follower notices at once that its leader died.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use raft_proto::codec::{self, Handshake};
use raft_proto::{EntryPayload, Message, MessageBody, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Settings;
use crate::conn::{self, ReadStatus};

/// Token of the first outbound link; peer `i` (in id order) uses base + i.
pub const OUTBOUND_TOKEN_BASE: usize = 1_000;
/// Token of the first inbound connection (slab key + base).
pub const INBOUND_TOKEN_BASE: usize = 2_000;
/// Bytes queued for one peer at most; past it the link is dropped as
/// unreachable. Room for a few maximal frames, or a window of pipelined
/// AppendEntries.
pub const MAX_SEND_QUEUE: usize = 64 << 20;
/// Inbound peer connections that have not identified themselves yet, at
/// most. Beyond it new connections are closed at once.
const MAX_UNIDENTIFIED_INBOUND: usize = 8;
/// An inbound buffer holds at most one maximal frame plus one read.
const INBOUND_BUF_LIMIT: usize = codec::MAX_FRAME_LEN + 4 + conn::READ_CHUNK;
/// While a peer stays unreachable, one summary line per this interval.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(30);

/// What the links report to the node.
#[derive(Debug)]
pub enum PeerInput {
    /// A message from a peer (its sender checked against the handshake).
    Message(Message),
    /// The outbound link to this peer came up.
    LinkUp(NodeId),
    /// A link to or from this peer that was up broke.
    LinkDown {
        /// The peer.
        peer: NodeId,
        /// What happened, for the log.
        reason: String,
    },
}

/// Timings of the links, derived from the Raft timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTiming {
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap; below the minimum election timeout.
    pub backoff_max: Duration,
    /// A connect that has not completed by then is abandoned.
    pub connect_timeout: Duration,
    /// A connection whose handshake has not arrived by then is closed.
    pub handshake_timeout: Duration,
}

impl LinkTiming {
    /// Backoff from 10 ms up to half the minimum election timeout (at most
    /// 1 s); connects time out after the maximum election timeout (at least
    /// 200 ms), handshakes after twice that (at least 1 s).
    pub fn from_settings(s: &Settings) -> LinkTiming {
        let backoff_max =
            (s.election_timeout_min / 2).clamp(Duration::from_millis(1), Duration::from_secs(1));
        LinkTiming {
            backoff_min: Duration::from_millis(10).min(backoff_max),
            backoff_max,
            connect_timeout: s.election_timeout_max.max(Duration::from_millis(200)),
            handshake_timeout: (s.election_timeout_max * 2).max(Duration::from_secs(1)),
        }
    }

    /// The delay before reconnect attempt `attempt` (0-based): exponential,
    /// capped, and jittered to `[d/2, d]` so that members do not redial in
    /// lockstep.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .backoff_min
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let d = exp.min(self.backoff_max);
        let nanos = d.as_nanos() as u64;
        Duration::from_nanos(rng.gen_range(nanos / 2..=nanos))
    }
}

/// Where an outbound link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No socket; redial at `retry_at`.
    Idle,
    /// Non-blocking connect in progress.
    Connecting,
    /// Connected, our handshake sent, waiting for the peer's.
    Handshaking,
    /// Ready for frames.
    Up,
}

/// A socket with its buffers.
struct Link {
    sock: TcpStream,
    out: BytesMut,
    inbuf: BytesMut,
    /// Whether WRITABLE is part of the registered interest.
    writable: bool,
}

impl Link {
    /// Writes what is queued and keeps WRITABLE registered exactly while
    /// output remains (STYLE §14).
    fn flush(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let done = conn::write_from(&mut self.sock, &mut self.out)?;
        if done {
            conn::shrink_if_idle(&mut self.out);
        }
        conn::update_write_interest(registry, &mut self.sock, token, &mut self.writable, done)?;
        Ok(())
    }
}

/// Reachability as the log reports it: one line per change, a summary at
/// most every [`SUMMARY_INTERVAL`] while down.
#[derive(Debug)]
enum Health {
    /// Never connected since start.
    Starting,
    Up {
        since: Instant,
    },
    Down {
        since: Instant,
        failures: u64,
        last_summary: Instant,
        /// Whether the link was ever up (else the peer is still starting).
        was_up: bool,
    },
}

struct Outbound {
    id: NodeId,
    addr: SocketAddr,
    token: Token,
    phase: Phase,
    link: Option<Link>,
    /// Idle: when to redial. Connecting/Handshaking: when to give up.
    deadline: Instant,
    /// Consecutive failures, for the backoff.
    attempt: u32,
    health: Health,
    /// Messages dropped because the link was not up (the protocol repairs
    /// them), for metrics.
    dropped: u64,
    /// Dials started, and failures (including links that broke), for metrics.
    connect_attempts: u64,
    connect_failures: u64,
}

struct Inbound {
    sock: TcpStream,
    addr: SocketAddr,
    /// Set once the handshake checked out.
    peer: Option<NodeId>,
    inbuf: BytesMut,
    out: BytesMut,
    writable: bool,
    /// Close if still unidentified by then.
    deadline: Instant,
}

/// Per-peer state for `INFO` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: NodeId,
    /// Whether the outbound link is up.
    pub up: bool,
    /// How long the link has been in its current state (up, or down /
    /// not yet connected).
    pub for_: Duration,
    /// While down: time until the next connection attempt (zero while one
    /// is in progress).
    pub next_retry_in: Option<Duration>,
    /// Connection attempts since start.
    pub connect_attempts: u64,
    /// Attempts that failed, and links that broke after coming up.
    pub connect_failures: u64,
    /// Messages dropped for want of a link since start.
    pub dropped: u64,
}

/// All peer links, the peer listener included.
pub struct PeerSet {
    me: NodeId,
    cluster_id: u64,
    /// Outgoing connections bind to this member's own IP (port 0).
    bind_ip: Option<IpAddr>,
    timing: LinkTiming,
    listener: TcpListener,
    listener_token: Token,
    outbound: Vec<Outbound>,
    inbound: Slab<Inbound>,
    /// The identified inbound connection of each peer (slab key).
    inbound_of: HashMap<NodeId, usize>,
    members: Vec<NodeId>,
    rng: StdRng,
    handshake: Bytes,
}

impl PeerSet {
    /// Takes over the bound peer listener (registered here under
    /// `listener_token`) and schedules a dial to every peer now.
    pub fn new(
        settings: &Settings,
        mut listener: TcpListener,
        listener_token: Token,
        registry: &Registry,
        now: Instant,
    ) -> io::Result<PeerSet> {
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        let own_ip = settings.me().peer_addr.ip();
        let outbound = settings
            .peers()
            .enumerate()
            .map(|(i, m)| Outbound {
                id: m.id,
                addr: m.peer_addr,
                token: Token(OUTBOUND_TOKEN_BASE + i),
                phase: Phase::Idle,
                link: None,
                deadline: now,
                attempt: 0,
                connect_attempts: 0,
                connect_failures: 0,
                health: Health::Starting,
                dropped: 0,
            })
            .collect();
        let mut hs = BytesMut::new();
        codec::encode_handshake(
            &Handshake {
                cluster_id: settings.cluster_id,
                node_id: settings.id,
            },
            &mut hs,
        );
        Ok(PeerSet {
            me: settings.id,
            cluster_id: settings.cluster_id,
            bind_ip: (!own_ip.is_unspecified()).then_some(own_ip),
            timing: LinkTiming::from_settings(settings),
            listener,
            listener_token,
            outbound,
            inbound: Slab::new(),
            inbound_of: HashMap::new(),
            members: settings.voters(),
            rng: StdRng::from_entropy(),
            handshake: hs.freeze(),
        })
    }

    /// Whether this token belongs to the peer links.
    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token
            || self.outbound_index(token).is_some()
            || self.inbound_key(token).is_some()
    }

    fn outbound_index(&self, token: Token) -> Option<usize> {
        let i = token.0.checked_sub(OUTBOUND_TOKEN_BASE)?;
        (i < self.outbound.len()).then_some(i)
    }

    fn inbound_key(&self, token: Token) -> Option<usize> {
        let k = token.0.checked_sub(INBOUND_TOKEN_BASE)?;
        self.inbound.contains(k).then_some(k)
    }

    /// Handles a readiness event on one of the peer tokens.
    pub fn ready(
        &mut self,
        token: Token,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        if token == self.listener_token {
            self.accept(registry, now);
        } else if let Some(i) = self.outbound_index(token) {
            self.outbound_ready(i, registry, now, out);
        } else if let Some(k) = self.inbound_key(token) {
            self.inbound_ready(k, registry, now, out);
        }
    }

    /// Queues `msg` on its peer's link. Dropped if the link is not up; a
    /// full queue takes the link down.
    /// Queues `msg` on its peer's link. Returns false if it was dropped
    /// (no link up, or the send queue overflowed and the link was reset);
    /// the protocol repairs lost messages.
    pub fn send(
        &mut self,
        msg: &Message,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) -> bool {
        let Some(i) = self.outbound.iter().position(|o| o.id == msg.to) else {
            log::warn!("dropping {} to unknown member {}", msg.kind(), msg.to);
            return false;
        };
        let o = &mut self.outbound[i];
        let link = match (o.phase, o.link.as_mut()) {
            (Phase::Up, Some(link)) => link,
            _ => {
                o.dropped += 1;
                return false;
            }
        };
        let len = codec::encoded_len(msg);
        if link.out.len() + len > MAX_SEND_QUEUE {
            let reason = format!(
                "send queue full ({} bytes unsent): peer is not reading",
                link.out.len()
            );
            self.fail_outbound(i, registry, now, reason, out);
            return false;
        }
        codec::encode(msg, &mut link.out);
        true
    }

    /// Writes queued output on every link.
    pub fn flush(&mut self, registry: &Registry, now: Instant, out: &mut Vec<PeerInput>) {
        for i in 0..self.outbound.len() {
            let o = &mut self.outbound[i];
            if !matches!(o.phase, Phase::Handshaking | Phase::Up) {
                continue;
            }
            let Some(link) = o.link.as_mut() else {
                continue;
            };
            if link.out.is_empty() && !link.writable {
                continue;
            }
            if let Err(e) = link.flush(registry, o.token) {
                self.fail_outbound(i, registry, now, describe(&e), out);
            }
        }
    }

    /// Fires what is due: redials, connect and handshake timeouts.
    pub fn tick(&mut self, registry: &Registry, now: Instant, out: &mut Vec<PeerInput>) {
        for i in 0..self.outbound.len() {
            let o = &self.outbound[i];
            if now < o.deadline {
                continue;
            }
            match o.phase {
                Phase::Idle => self.dial(i, registry, now, out),
                Phase::Connecting => {
                    let reason = format!(
                        "connect timed out after {} ms",
                        self.timing.connect_timeout.as_millis()
                    );
                    self.fail_outbound(i, registry, now, reason, out);
                }
                Phase::Handshaking => {
                    let reason = format!(
                        "no handshake within {} ms",
                        self.timing.handshake_timeout.as_millis()
                    );
                    self.fail_outbound(i, registry, now, reason, out);
                }
                Phase::Up => {}
            }
        }
        let expired: Vec<usize> = self
            .inbound
            .iter()
            .filter(|(_, c)| c.peer.is_none() && now >= c.deadline)
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            let addr = self.inbound[k].addr;
            log::warn!(
                "peer port: connection from {addr} sent no handshake within {} ms; closed",
                self.timing.handshake_timeout.as_millis()
            );
            self.close_inbound(k, registry, None, out);
        }
    }

    /// The earliest time [`PeerSet::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let out = self
            .outbound
            .iter()
            .filter(|o| o.phase != Phase::Up)
            .map(|o| o.deadline);
        let inb = self
            .inbound
            .iter()
            .filter(|(_, c)| c.peer.is_none())
            .map(|(_, c)| c.deadline);
        out.chain(inb).min()
    }

    /// Link state of every peer, in id order.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        self.outbound
            .iter()
            .map(|o| {
                let up = o.phase == Phase::Up;
                let since = match o.health {
                    Health::Up { since } | Health::Down { since, .. } => Some(since),
                    Health::Starting => None,
                };
                PeerStatus {
                    id: o.id,
                    up,
                    for_: since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
                    next_retry_in: match o.phase {
                        Phase::Up => None,
                        Phase::Idle => Some(o.deadline.saturating_duration_since(now)),
                        _ => Some(Duration::ZERO),
                    },
                    connect_attempts: o.connect_attempts,
                    connect_failures: o.connect_failures,
                    dropped: o.dropped,
                }
            })
            .collect()
    }

    /// Closes every peer socket and the listener (shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        for o in &mut self.outbound {
            if let Some(mut link) = o.link.take() {
                let _ = conn::write_from(&mut link.sock, &mut link.out);
                let _ = registry.deregister(&mut link.sock);
            }
            o.phase = Phase::Idle;
        }
        for mut c in self.inbound.drain() {
            let _ = registry.deregister(&mut c.sock);
        }
        self.inbound_of.clear();
    }

    // ----- Outbound -----------------------------------------------------

    fn dial(&mut self, i: usize, registry: &Registry, now: Instant, out: &mut Vec<PeerInput>) {
        let o = &mut self.outbound[i];
        debug_assert_eq!(o.phase, Phase::Idle);
        o.connect_attempts += 1;
        match connect(o.addr, self.bind_ip) {
            Ok(mut sock) => {
                if let Err(e) =
                    registry.register(&mut sock, o.token, Interest::READABLE | Interest::WRITABLE)
                {
                    self.fail_outbound(i, registry, now, describe(&e), out);
                    return;
                }
                o.link = Some(Link {
                    sock,
                    out: BytesMut::from(&self.handshake[..]),
                    inbuf: BytesMut::new(),
                    writable: true,
                });
                o.phase = Phase::Connecting;
                o.deadline = now + self.timing.connect_timeout;
            }
            Err(e) => self.fail_outbound(i, registry, now, describe(&e), out),
        }
    }

    fn outbound_ready(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        if let Err(reason) = self.outbound_io(i, registry, now, out) {
            self.fail_outbound(i, registry, now, reason, out);
        }
    }

    /// Advances an outbound link as far as its socket allows. `Err` carries
    /// the reason to take it down.
    fn outbound_io(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) -> Result<(), String> {
        let (cluster_id, handshake_timeout) = (self.cluster_id, self.timing.handshake_timeout);
        let o = &mut self.outbound[i];
        let Some(link) = o.link.as_mut() else {
            return Ok(()); // a stale event for a closed socket
        };
        if o.phase == Phase::Connecting {
            // mio's recipe for a non-blocking connect: an error, or an
            // address once connected; NotConnected is a spurious wake-up.
            match link.sock.take_error() {
                Ok(Some(e)) | Err(e) => return Err(describe(&e)),
                Ok(None) => {}
            }
            match link.sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(describe(&e)),
            }
            let _ = link.sock.set_nodelay(true);
            o.phase = Phase::Handshaking;
            o.deadline = now + handshake_timeout;
        }
        link.flush(registry, o.token).map_err(|e| describe(&e))?;

        // The acceptor sends its handshake and then nothing: after the
        // handshake only EOF or an error is expected on this socket.
        let limit = codec::HANDSHAKE_LEN + 64;
        let status =
            conn::read_into(&mut link.sock, &mut link.inbuf, limit).map_err(|e| describe(&e))?;
        if o.phase == Phase::Handshaking {
            match codec::decode_handshake(&mut link.inbuf) {
                Ok(None) => {}
                Err(e) => return Err(format!("bad handshake: {e}")),
                Ok(Some(hs)) => {
                    if hs.cluster_id != cluster_id || hs.node_id != o.id {
                        return Err(format!(
                            "{} is member {} of cluster {:016x}, expected member {} of cluster {:016x} \
                             (check the cluster file)",
                            o.addr, hs.node_id, hs.cluster_id, o.id, cluster_id
                        ));
                    }
                    o.phase = Phase::Up;
                    o.attempt = 0;
                    match o.health {
                        Health::Starting => log::info!("peer {} ({}) connected", o.id, o.addr),
                        Health::Down {
                            since,
                            failures,
                            was_up,
                            ..
                        } => log::info!(
                            "peer {} ({}) {} after {:.1} s ({failures} failed attempts)",
                            o.id,
                            o.addr,
                            if was_up { "is back" } else { "connected" },
                            now.saturating_duration_since(since).as_secs_f64()
                        ),
                        Health::Up { .. } => {}
                    }
                    o.health = Health::Up { since: now };
                    out.push(PeerInput::LinkUp(o.id));
                }
            }
        }
        if o.phase == Phase::Up && !link.inbuf.is_empty() {
            return Err(format!(
                "{} unexpected bytes after the handshake",
                link.inbuf.len()
            ));
        }
        match status {
            ReadStatus::Eof => Err("connection closed by peer".into()),
            ReadStatus::Full if o.phase == Phase::Up => {
                Err("unexpected data after the handshake".into())
            }
            _ => Ok(()),
        }
    }

    /// Drops the outbound socket, tells the node if the link was up, logs
    /// the change of reachability, and schedules the redial.
    fn fail_outbound(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        reason: String,
        out: &mut Vec<PeerInput>,
    ) {
        let delay = self.timing.backoff(self.outbound[i].attempt, &mut self.rng);
        let backoff_max = self.timing.backoff_max;
        let o = &mut self.outbound[i];
        if let Some(mut link) = o.link.take() {
            let _ = registry.deregister(&mut link.sock);
        }
        if o.phase == Phase::Up {
            out.push(PeerInput::LinkDown {
                peer: o.id,
                reason: reason.clone(),
            });
        }
        o.phase = Phase::Idle;
        o.attempt = o.attempt.saturating_add(1);
        o.connect_failures += 1;
        o.deadline = now + delay;
        match o.health {
            Health::Starting => {
                log::info!(
                    "peer {} ({}) not reachable yet: {reason}; retrying with backoff up to {} ms",
                    o.id,
                    o.addr,
                    backoff_max.as_millis()
                );
                o.health = Health::Down {
                    since: now,
                    failures: 1,
                    last_summary: now,
                    was_up: false,
                };
            }
            Health::Up { since } => {
                log::warn!(
                    "peer {} ({}) unreachable: {reason} (was up for {:.1} s); retrying with backoff up to {} ms",
                    o.id,
                    o.addr,
                    now.saturating_duration_since(since).as_secs_f64(),
                    backoff_max.as_millis()
                );
                o.health = Health::Down {
                    since: now,
                    failures: 1,
                    last_summary: now,
                    was_up: true,
                };
            }
            Health::Down {
                since,
                ref mut failures,
                ref mut last_summary,
                ..
            } => {
                *failures += 1;
                if now.saturating_duration_since(*last_summary) >= SUMMARY_INTERVAL {
                    *last_summary = now;
                    log::warn!(
                        "peer {} ({}) still unreachable after {:.0} s ({} attempts; last: {reason})",
                        o.id,
                        o.addr,
                        now.saturating_duration_since(since).as_secs_f64(),
                        failures
                    );
                }
            }
        }
    }

    // ----- Inbound ------------------------------------------------------

    fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, addr)) => {
                    let unidentified = self
                        .inbound
                        .iter()
                        .filter(|(_, c)| c.peer.is_none())
                        .count();
                    if unidentified >= MAX_UNIDENTIFIED_INBOUND {
                        log::warn!(
                            "peer port: refusing connection from {addr}: {unidentified} connections \
                             already await their handshake"
                        );
                        continue; // dropping `sock` closes it
                    }
                    let entry = self.inbound.vacant_entry();
                    let token = Token(INBOUND_TOKEN_BASE + entry.key());
                    if let Err(e) = registry.register(&mut sock, token, Interest::READABLE) {
                        log::warn!("peer port: cannot register connection from {addr}: {e}");
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    entry.insert(Inbound {
                        sock,
                        addr,
                        peer: None,
                        inbuf: BytesMut::new(),
                        out: BytesMut::new(),
                        writable: false,
                        deadline: now + self.timing.handshake_timeout,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog; the next event retries.
                    log::error!("peer port: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn inbound_ready(
        &mut self,
        k: usize,
        registry: &Registry,
        _now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        match self.inbound_io(k, registry, out) {
            Ok(true) => {}
            Ok(false) => {
                let peer = self.inbound[k].peer;
                self.close_inbound(
                    k,
                    registry,
                    peer.map(|_| "connection closed by peer".to_string()),
                    out,
                );
            }
            Err(reason) => {
                let (addr, peer) = (self.inbound[k].addr, self.inbound[k].peer);
                match peer {
                    Some(p) => log::warn!("peer {p} ({addr}): {reason}; connection closed"),
                    None => log::warn!("peer port: connection from {addr} refused: {reason}"),
                }
                self.close_inbound(k, registry, peer.map(|_| reason), out);
            }
        }
    }

    /// Reads and decodes what an inbound connection has. `Ok(false)`: EOF.
    fn inbound_io(
        &mut self,
        k: usize,
        registry: &Registry,
        out: &mut Vec<PeerInput>,
    ) -> Result<bool, String> {
        loop {
            let c = &mut self.inbound[k];
            if !c.out.is_empty() || c.writable {
                let done = conn::write_from(&mut c.sock, &mut c.out).map_err(|e| describe(&e))?;
                conn::update_write_interest(
                    registry,
                    &mut c.sock,
                    Token(INBOUND_TOKEN_BASE + k),
                    &mut c.writable,
                    done,
                )
                .map_err(|e| describe(&e))?;
            }
            let status = conn::read_into(&mut c.sock, &mut c.inbuf, INBOUND_BUF_LIMIT)
                .map_err(|e| describe(&e))?;
            if c.peer.is_none() {
                match codec::decode_handshake(&mut c.inbuf) {
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                    Ok(Some(hs)) => {
                        self.identify(k, hs, registry, out)?;
                        continue; // send our handshake, then read frames
                    }
                }
            }
            let c = &mut self.inbound[k];
            if let Some(peer) = c.peer {
                loop {
                    match codec::decode(&mut c.inbuf) {
                        Ok(None) => break,
                        Ok(Some(msg)) => {
                            if msg.from != peer {
                                return Err(format!(
                                    "message from {} on the link of member {peer}",
                                    msg.from
                                ));
                            }
                            out.push(PeerInput::Message(own_payloads(msg)));
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                conn::shrink_if_idle(&mut c.inbuf);
            }
            match status {
                ReadStatus::Drained => return Ok(true),
                ReadStatus::Eof => return Ok(false),
                ReadStatus::Full => {}
            }
        }
    }

    /// Checks a dialer's handshake; on success the connection becomes that
    /// peer's inbound link (replacing an older one) and gets our handshake.
    fn identify(
        &mut self,
        k: usize,
        hs: Handshake,
        registry: &Registry,
        out: &mut Vec<PeerInput>,
    ) -> Result<(), String> {
        if hs.cluster_id != self.cluster_id {
            return Err(format!(
                "member {} of another cluster ({:016x}, ours is {:016x})",
                hs.node_id, hs.cluster_id, self.cluster_id
            ));
        }
        if hs.node_id == self.me || !self.members.contains(&hs.node_id) {
            return Err(format!("unknown member id {}", hs.node_id));
        }
        if let Some(old) = self.inbound_of.insert(hs.node_id, k) {
            if old != k && self.inbound.contains(old) {
                // The peer redialed; its old connection is dead or dying.
                self.close_inbound(old, registry, None, out);
            }
        }
        let c = &mut self.inbound[k];
        c.peer = Some(hs.node_id);
        c.out.extend_from_slice(&self.handshake);
        log::debug!("peer {} connected from {}", hs.node_id, c.addr);
        Ok(())
    }

    /// Closes an inbound connection; with a reason, an identified link was
    /// lost and the node is told.
    fn close_inbound(
        &mut self,
        k: usize,
        registry: &Registry,
        reason: Option<String>,
        out: &mut Vec<PeerInput>,
    ) {
        let mut c = self.inbound.remove(k);
        let _ = registry.deregister(&mut c.sock);
        if let Some(peer) = c.peer {
            if self.inbound_of.get(&peer) == Some(&k) {
                self.inbound_of.remove(&peer);
                if let Some(reason) = reason {
                    out.push(PeerInput::LinkDown { peer, reason });
                }
            }
        }
    }
}

impl fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSet")
            .field("me", &self.me)
            .field("peers", &self.status(Instant::now()))
            .field("inbound", &self.inbound.len())
            .finish()
    }
}

/// A non-blocking connect to `addr` from `bind_ip` (port 0), so that a member
/// is seen by its peers at its own address.
fn connect(addr: SocketAddr, bind_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(ip) = bind_ip {
        if ip.is_ipv4() == addr.is_ipv4() {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// An I/O error as a short phrase: `connection refused`, `connection reset`.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Copies command payloads out of the frame buffer. Decoded payloads are
/// slices of the read buffer; the node keeps log entries for the process's
/// life, and a retained slice would pin the whole read chunk it came from,
/// heartbeats and all.
fn own_payloads(mut msg: Message) -> Message {
    if let MessageBody::AppendEntries(ae) = &mut msg.body {
        for e in &mut ae.entries {
            if let EntryPayload::Command(c) = &mut e.payload {
                *c = Bytes::copy_from_slice(c);
            }
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> LinkTiming {
        LinkTiming {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(150),
            connect_timeout: Duration::from_millis(600),
            handshake_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let t = timing();
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 0..100 {
            let d = t.backoff(attempt, &mut rng);
            let cap = (Duration::from_millis(10) * 2u32.pow(attempt.min(20))).min(t.backoff_max);
            assert!(
                d <= cap && d >= cap / 2,
                "attempt {attempt}: {d:?} vs {cap:?}"
            );
        }
        assert!(t.backoff(u32::MAX, &mut rng) <= t.backoff_max);
    }

    #[test]
    fn payloads_are_copied_out_of_the_frame() {
        let frame = Bytes::from_static(b"xxhelloxx");
        let msg = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: raft_proto::Term(1),
            body: MessageBody::AppendEntries(raft_proto::AppendEntries {
                prev_log_index: raft_proto::LogIndex(0),
                prev_log_term: raft_proto::Term(0),
                entries: vec![raft_proto::Entry {
                    term: raft_proto::Term(1),
                    index: raft_proto::LogIndex(1),
                    payload: EntryPayload::Command(frame.slice(2..7)),
                }],
                leader_commit: raft_proto::LogIndex(0),
                round: 0,
            }),
        };
        let owned = own_payloads(msg.clone());
        assert_eq!(owned, msg);
        let MessageBody::AppendEntries(ae) = &owned.body else {
            unreachable!()
        };
        let EntryPayload::Command(c) = &ae.entries[0].payload else {
            unreachable!()
        };
        assert_ne!(c.as_ptr(), frame[2..].as_ptr());
    }
}
