//! Links to the other members.
//!
//! Each member dials every peer and keeps that one **outbound** connection
//! for everything it sends to the peer; what the peer sends arrives on the
//! peer's own outbound connection, which is an **inbound** one here. Two
//! TCP connections per pair, each used in one direction, so there is no
//! dial race to break and no connection shared between two senders.
//!
//! Every connection starts with the authenticated handshake of [`auth`]:
//! the dialer's `Hello`, the acceptor's `Challenge` (with its proof), the
//! dialer's `Proof`. Nothing from a connection reaches the node before both
//! sides proved knowledge of the cluster secret. A connection from another
//! cluster, from an unknown member, from the wrong address for the member it
//! claims to be, without the secret, or from something that is not a member
//! at all (a RESP client on the wrong port, a scanner) is refused. Refusals
//! are logged once per source address per minute, with a count: a flood of
//! bad handshakes costs the attacker a connection each and the log a line a
//! minute. Unauthenticated connections are bounded per source address and
//! in total, and have a short deadline; when the total is reached the oldest
//! is closed, so squatters cannot lock a member out. Only an authenticated
//! connection replaces a member's existing inbound link.
//!
//! After the handshake, frames go one way only, through
//! [`raft_proto::codec`].
//!
//! A link is up once the dialer has verified the acceptor's proof. It goes
//! down on EOF, a reset, a connect or handshake timeout, a protocol error, or
//! a full send queue (a peer that does not read is unreachable; the queue
//! does not grow past [`MAX_SEND_QUEUE`]). Down links are redialed with
//! capped, jittered exponential backoff; the cap stays below the election
//! timeout so that a restarted member is reached before it would start an
//! election.
//!
//! The node hears of every change as a [`PeerInput`]: `LinkUp` when an
//! outbound link comes up, `LinkDown` when an up link (either direction)
//! breaks, which is how a follower notices at once that its leader died.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use raft_proto::codec;
use raft_proto::{EntryPayload, Message, MessageBody, NodeId, Rng};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

mod inbound;
mod outbound;

use crate::auth::{self, Challenge, Hello, Nonce, PeerKey, Proof};
use crate::config::{Settings, MAX_SEND_QUEUE};
use crate::conn::{self, ReadStatus};
use crate::members::Member;

/// Token of the first outbound link; peer `i` (in id order) uses base + i.
pub const OUTBOUND_TOKEN_BASE: usize = 1_000;
/// Token of the first inbound connection (slab key + base).
pub const INBOUND_TOKEN_BASE: usize = 2_000;
/// Inbound peer connections that have not authenticated yet, at most. A
/// new connection beyond it closes the oldest such one, so connections that
/// squat on the slots cannot keep a member out for longer than it takes to
/// open this many more.
const MAX_UNIDENTIFIED_INBOUND: usize = 64;
/// Unauthenticated inbound connections from one source address at most; a
/// member has at most one handshake in progress towards us.
const MAX_UNIDENTIFIED_PER_SOURCE: usize = 4;
/// Source addresses whose refused handshakes are counted, at most (besides
/// the members' own). A connection from a new address past it is refused
/// and counted with the others.
const MAX_TRACKED_SOURCES: usize = 1024;
/// Refused handshakes are logged once per source per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
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
    /// An outbound connection whose handshake has not completed by then is
    /// closed.
    pub handshake_timeout: Duration,
    /// An inbound connection that has not authenticated by then is closed:
    /// short, because until then it holds a slot an attacker would like to
    /// keep. An honest handshake takes one and a half round trips.
    pub accept_timeout: Duration,
}

impl LinkTiming {
    /// Backoff from 10 ms up to half the minimum election timeout (at most
    /// 1 s); connects time out after the maximum election timeout (at least
    /// 200 ms), handshakes after twice that (at least 1 s); an inbound
    /// connection must authenticate within the minimum election timeout
    /// (between 200 ms and 1 s).
    pub fn from_settings(s: &Settings) -> LinkTiming {
        let backoff_max =
            (s.election_timeout_min / 2).clamp(Duration::from_millis(1), Duration::from_secs(1));
        LinkTiming {
            backoff_min: Duration::from_millis(10).min(backoff_max),
            backoff_max,
            connect_timeout: s.election_timeout_max.max(Duration::from_millis(200)),
            handshake_timeout: (s.election_timeout_max * 2).max(Duration::from_secs(1)),
            accept_timeout: s
                .election_timeout_min
                .clamp(Duration::from_millis(200), Duration::from_secs(1)),
        }
    }

    /// The delay before reconnect attempt `attempt` (0-based): exponential,
    /// capped, and jittered to `[d/2, d]` so that members do not redial in
    /// lockstep.
    pub fn backoff(&self, attempt: u32, rng: &mut Rng) -> Duration {
        let exp = self
            .backoff_min
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let d = exp.min(self.backoff_max);
        let nanos = d.as_nanos() as u64;
        Duration::from_nanos(rng.range(nanos / 2, nanos + 1))
    }
}

/// Where an outbound link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No socket; redial at `retry_at`.
    Idle,
    /// Non-blocking connect in progress.
    Connecting,
    /// Connected, our `Hello` sent, waiting for the peer's `Challenge`.
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
    /// The `Hello` sent on the current connection (its nonce is ours).
    hello: Option<Hello>,
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
    /// The member left the configuration: no dials, no sends. Its slot
    /// (and token) is reused by the next member that joins.
    retired: bool,
}

impl Outbound {
    /// The link to `m` in slot `i` (its token), to be dialled at `now`.
    fn new(m: &Member, i: usize, now: Instant) -> Outbound {
        Outbound {
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
            hello: None,
            retired: false,
        }
    }
}

/// Where an inbound connection's handshake stands.
#[derive(Clone, Copy, Debug)]
enum InboundState {
    /// Waiting for the dialer's `Hello`.
    AwaitHello,
    /// `Challenge` sent; waiting for the dialer's `Proof` over our nonce.
    AwaitProof { hello: Hello, nonce: Nonce },
    /// Authenticated as this member.
    Up(NodeId),
}

struct Inbound {
    sock: TcpStream,
    addr: SocketAddr,
    state: InboundState,
    inbuf: BytesMut,
    out: BytesMut,
    writable: bool,
    /// When accepted; close if still unauthenticated at `+ accept_timeout`.
    accepted: Instant,
}

impl Inbound {
    /// The member this connection authenticated as, if it did.
    fn peer(&self) -> Option<NodeId> {
        match self.state {
            InboundState::Up(p) => Some(p),
            _ => None,
        }
    }
}

/// Refused handshakes and pending connections from one source address.
#[derive(Debug, Default)]
struct SourceState {
    /// Its connections that have not authenticated yet.
    unidentified: usize,
    /// Refusals since the last line logged.
    unlogged: u64,
    /// The latest of them.
    last_reason: String,
    /// When the last line about this source was logged.
    logged_at: Option<Instant>,
    /// A member's own address: never forgotten (an attacker cannot push the
    /// members out of the table).
    member: bool,
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
    key: PeerKey,
    /// The address each member must connect from, where it is known.
    member_ips: HashMap<NodeId, Option<IpAddr>>,
    sources: HashMap<IpAddr, SourceState>,
    /// Refusals from addresses past [`MAX_TRACKED_SOURCES`], and when they
    /// were last logged.
    untracked_refusals: u64,
    untracked_logged_at: Option<Instant>,
    /// Per member: when a broken frame on its link was last logged, and
    /// how many were not logged since (a member that keeps sending them,
    /// and keeps redialing, gets a line a minute).
    link_errors: HashMap<NodeId, (Instant, u64)>,
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
    /// This member's peer address, sent in every handshake.
    listen: SocketAddr,
    /// Backoff jitter: the node's seeded PRNG (STYLE §4), seeded from the
    /// seed the start line logs. (Handshake nonces are not drawn from it:
    /// they must be unpredictable, and come from the OS, see `auth.rs`.)
    rng: Rng,
    /// Every inbound link reads through this one buffer, zeroed once:
    /// reading straight into a link's buffer zeroed a whole read chunk
    /// (64 KiB) per read, most of an idle follower's CPU after the kernel's
    /// (a heartbeat is 66 bytes).
    scratch: Box<[u8]>,
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
        seed: u64,
    ) -> io::Result<PeerSet> {
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        let own_ip = settings.me().peer_addr.ip();
        let outbound = settings
            .peers()
            .enumerate()
            .map(|(i, m)| Outbound::new(m, i, now))
            .collect();
        let member_ips: HashMap<NodeId, Option<IpAddr>> =
            settings.members.iter().map(|m| (m.id, m.peer_ip)).collect();
        let sources = member_ips
            .values()
            .flatten()
            .map(|&ip| {
                let state = SourceState {
                    member: true,
                    ..SourceState::default()
                };
                (ip, state)
            })
            .collect();
        Ok(PeerSet {
            me: settings.id,
            cluster_id: settings.cluster_id,
            key: settings.peer_key.clone(),
            member_ips,
            sources,
            untracked_refusals: 0,
            untracked_logged_at: None,
            link_errors: HashMap::new(),
            bind_ip: (!own_ip.is_unspecified()).then_some(own_ip),
            timing: LinkTiming::from_settings(settings),
            listener,
            listener_token,
            outbound,
            inbound: Slab::new(),
            inbound_of: HashMap::new(),
            members: settings.voters(),
            listen: settings.me().peer_addr,
            rng: Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            scratch: vec![0u8; conn::READ_CHUNK].into_boxed_slice(),
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
    /// `hangup`: the event also reported EOF or an error.
    pub fn ready(
        &mut self,
        token: Token,
        hangup: bool,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        if token == self.listener_token {
            self.accept(registry, now);
        } else if let Some(i) = self.outbound_index(token) {
            self.outbound_ready(i, registry, now, out);
        } else if let Some(k) = self.inbound_key(token) {
            self.inbound_ready(k, hangup, registry, now, out);
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
        let Some(i) = self
            .outbound
            .iter()
            .position(|o| o.id == msg.to && !o.retired)
        else {
            // Normal for a moment after a configuration change: the node
            // reaches a new member before the driver has dialled it.
            log::debug!("dropping {} to unknown member {}", msg.kind(), msg.to);
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
            if now < o.deadline || o.retired {
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
        let accept_timeout = self.timing.accept_timeout;
        let expired: Vec<usize> = self
            .inbound
            .iter()
            .filter(|(_, c)| c.peer().is_none() && now >= c.accepted + accept_timeout)
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            let addr = self.inbound[k].addr;
            let reason = format!(
                "no handshake completed within {} ms",
                accept_timeout.as_millis()
            );
            self.refused(addr, reason, now);
            self.close_inbound(k, registry, None, out);
        }
        self.log_refusal_summaries(now);
    }

    /// The earliest time [`PeerSet::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let out = self
            .outbound
            .iter()
            .filter(|o| o.phase != Phase::Up && !o.retired)
            .map(|o| o.deadline);
        let inb = self
            .inbound
            .iter()
            .filter(|(_, c)| c.peer().is_none())
            .map(|(_, c)| c.accepted + self.timing.accept_timeout);
        // A summary of refusals is due one interval after the last line,
        // and only when there is something to say.
        let summaries = self
            .sources
            .values()
            .filter(|s| s.unlogged > 0)
            .filter_map(|s| s.logged_at)
            .chain(
                self.untracked_logged_at
                    .filter(|_| self.untracked_refusals > 0),
            )
            .map(|t| t + REFUSAL_LOG_INTERVAL);
        out.chain(inb).chain(summaries).min()
    }

    /// Link state of every peer, in id order.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .outbound
            .iter()
            .filter(|o| !o.retired)
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
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Follows the configuration in force: dials the members it names that
    /// have no link yet (at once), closes the links of members that left,
    /// unless that member is connected to us (see below).
    pub fn set_members(&mut self, members: &[Member], registry: &Registry, now: Instant) {
        let previous = std::mem::replace(&mut self.members, members.iter().map(|m| m.id).collect());
        for m in members {
            self.member_ips.insert(m.id, m.peer_ip);
            if let Some(ip) = m.peer_ip {
                self.sources.entry(ip).or_default().member = true;
            }
        }
        for i in 0..self.outbound.len() {
            let id = self.outbound[i].id;
            // A link dialled back to a member this one does not know yet
            // stays, and so does the link to any member connected to us:
            // a member whose log is behind (one that joins, or one that was
            // down) applies old configurations that do not name members
            // added since, one of which may lead by now, and must still
            // answer it. Such a link goes when the member's own link does.
            if self.outbound[i].retired
                || self.members.contains(&id)
                || !previous.contains(&id)
                || self.inbound_of.contains_key(&id)
            {
                continue;
            }
            let o = &mut self.outbound[i];
            if let Some(mut link) = o.link.take() {
                let _ = registry.deregister(&mut link.sock);
            }
            o.phase = Phase::Idle;
            o.retired = true;
            log::info!("member {id} is not in the configuration any more: link to it closed");
        }
        for m in members.iter().filter(|m| m.id != self.me) {
            if let Some(o) = self
                .outbound
                .iter_mut()
                .find(|o| o.id == m.id && !o.retired)
            {
                // Used from the next dial on.
                o.addr = m.peer_addr;
                continue;
            }
            let slot = self.outbound.iter().position(|o| o.retired);
            let i = slot.unwrap_or(self.outbound.len());
            let o = Outbound::new(m, i, now);
            match slot {
                Some(i) => self.outbound[i] = o,
                None => self.outbound.push(o),
            }
            log::info!(
                "member {} is in the configuration: connecting to {}",
                m.id,
                m.peer_addr
            );
        }
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

    // ----- Inbound ------------------------------------------------------

    /// Logs that an authenticated link from `peer` sent something invalid
    /// (its link is being closed), at most once a minute per peer.
    fn link_error(&mut self, peer: NodeId, addr: SocketAddr, reason: &str, now: Instant) {
        match self.link_errors.get_mut(&peer) {
            Some((at, n)) if now.saturating_duration_since(*at) < REFUSAL_LOG_INTERVAL => *n += 1,
            entry => {
                let more = match entry {
                    Some((_, n)) if *n > 0 => format!(" ({n} more since the last report)"),
                    _ => String::new(),
                };
                log::warn!("peer {peer} ({addr}): {reason}; connection closed{more}");
                self.link_errors.insert(peer, (now, 0));
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
/// heartbeats and all. The payloads of one message go into one buffer
/// together (one allocation per message, not two per entry: its bytes and
/// the shared header of its first clone); they are appended and compacted
/// together, so none pins much beyond its neighbours.
fn own_payloads(mut msg: Message) -> Message {
    if let MessageBody::AppendEntries(ae) = &mut msg.body {
        let total: usize = ae
            .entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Command(c) => c.len(),
                _ => 0,
            })
            .sum();
        let mut buf = BytesMut::with_capacity(total);
        for e in &mut ae.entries {
            if let EntryPayload::Command(c) = &mut e.payload {
                buf.extend_from_slice(c);
                *c = buf.split().freeze();
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
            accept_timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let t = timing();
        let mut rng = Rng::new(1);
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
    fn payloads_are_copied_out_of_the_frame_into_one_buffer() {
        let frame = bytes::Bytes::from_static(b"xxhelloxxworldxx");
        let entry = |i: u64, payload| raft_proto::Entry {
            term: raft_proto::Term(1),
            index: raft_proto::LogIndex(i),
            payload,
        };
        let msg = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: raft_proto::Term(1),
            body: MessageBody::AppendEntries(raft_proto::AppendEntries {
                prev_log_index: raft_proto::LogIndex(0),
                prev_log_term: raft_proto::Term(0),
                entries: vec![
                    entry(1, EntryPayload::Command(frame.slice(2..7))),
                    entry(2, EntryPayload::Noop),
                    entry(3, EntryPayload::Command(frame.slice(9..14))),
                ],
                leader_commit: raft_proto::LogIndex(0),
                round: 0,
            }),
        };
        let owned = own_payloads(msg.clone());
        assert_eq!(owned, msg);
        let MessageBody::AppendEntries(ae) = &owned.body else {
            unreachable!()
        };
        let (EntryPayload::Command(a), EntryPayload::Command(b)) =
            (&ae.entries[0].payload, &ae.entries[2].payload)
        else {
            unreachable!()
        };
        assert_ne!(a.as_ptr(), frame[2..].as_ptr());
        assert_ne!(b.as_ptr(), frame[9..].as_ptr());
        // One allocation for the message: the second follows the first.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
    }
}
