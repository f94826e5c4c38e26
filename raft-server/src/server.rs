//! The event loop: one thread, one `mio::Poll`, and a fixed order per turn
//! (STYLE §13):
//!
//! 1. poll, with the timeout of the earliest deadline (the node's
//!    `poll_timeout()`, redials, connection timeouts, client deadlines and
//!    accept retries): zero CPU between;
//! 2. read the clock once;
//! 3. feed inputs: peer messages and link changes, client requests
//!    (`propose`, `read_index`), timers (`handle_timeout`);
//! 4. drain every action of the node, then carry them out in the documented
//!    order: persist and fsync once for the whole turn (group commit), send,
//!    apply and answer writes, answer reads, log events;
//! 5. write queued output and recompute interests.
//!
//! No Raft decision is made here. An error on one socket closes that socket;
//! only a storage failure (or the poll itself failing) ends the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use raft_proto::driver::Driver;
use raft_proto::{
    Action, ElectionReason, Event, LogIndex, Membership, MembershipError, Node, NodeId,
    PersistentState, ProposeError, ReadError, Role, SnapshotMeta, Term, Time, TransferError,
};
use slab::Slab;

use crate::client::{self, Budget, Client, ClientTimer, Expiry, MAX_CLIENTS};
use crate::cmd::{self, Command};
use crate::config::Settings;
use crate::conn;
use crate::info::{self, Counters, Histograms, MetricsServer, Snapshot};
use crate::kv::{self, Kv};
use crate::members::Member;
use crate::peer::{PeerInput, PeerSet};
use crate::resp::{self, Limits, Reply, Request};
use crate::signal::ShutdownSignals;
use crate::snapshots::Snapshotter;
use crate::storage::{Recovered, Storage, MAX_PAYLOAD_LEN};
use crate::topology;
use crate::turn::{Phase, TurnTimer};
use crate::walks::Walker;

mod access;
mod admin;
mod apply;
mod disk;
mod error;
mod reconfig;
mod session;
mod snapshot;
mod start;

use disk::{observe_durable, Disk, Links};
pub use error::{FatalError, StartError};
use snapshot::load_snapshot;
pub use start::Listeners;

/// Impossible messages from one peer are logged at most once per interval.
const PEER_FAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Log entries whose append time is remembered for the apply-lag histogram.
const MAX_APPLY_LAG_TRACKED: usize = 65_536;

const PEER_LISTENER: Token = Token(0);
const CLIENT_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const METRICS_LISTENER: Token = Token(3);
/// Helper threads wake the loop with this token: the snapshot writer
/// when it is done, the store's log-sync thread after each fdatasync
/// (storage/syncer.rs). One waker for both: mio allows one per poll.
const HELPER_WAKER: Token = Token(4);
/// Metrics HTTP connections use tokens from here (peer links use 1000+ and
/// 2000+, see `peer`).
const METRICS_BASE: usize = 3_000;
/// Client connections use tokens from here (slab key + base).
const CLIENT_BASE: usize = 10_000;
/// The applies, reads and events of one turn stop once the turn has kept
/// the loop busy for this fraction of a heartbeat (a fourth: 12.5 ms by
/// default), and go on next turn (`run_backlog`).
const APPLY_BUDGET_HEARTBEATS: u32 = 4;
/// Past this many actions waiting, the backlog is carried out whatever the
/// budget: memory is bounded before latency.
const MAX_APPLY_BACKLOG: usize = 1 << 20;
/// Drain rounds per turn: a flush can take a link down, which is fed back
/// to the node; anything left after this many rounds waits one turn.
const MAX_DRAIN_ROUNDS: usize = 4;
/// After `accept` failed for want of descriptors (or otherwise), when to
/// try again if no client closes first. The connections stay queued in the
/// listen backlog meanwhile.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

// A command accepted by the RESP limits always fits in one log entry, and a
// log entry in one peer frame with room to spare (see `codec::MAX_FRAME_LEN`).
const _: () = assert!(Limits::DEFAULT.max_request_len < MAX_PAYLOAD_LEN);
const _: () = assert!(MAX_PAYLOAD_LEN <= raft_proto::codec::MAX_FRAME_LEN / 2);

/// Identifies one request of one client connection.
#[derive(Clone, Copy, Debug)]
struct ReplyTo {
    key: usize,
    client_id: u64,
    seq: u64,
}

/// A write waiting for its entry to be applied.
#[derive(Debug)]
struct PendingWrite {
    to: ReplyTo,
    /// The term `propose` returned: the write took effect iff the entry
    /// applied at its index has this term.
    term: Term,
}

/// A linearizable read waiting for `ReadReady`.
#[derive(Debug)]
struct PendingRead {
    to: ReplyTo,
    /// A store command that only reads.
    cmd: kv::Command,
}

/// A read that would see a key whose deadline has passed by this leader's
/// clock but not yet by the store clock: it waits for the sweep entry at
/// `index` (see `finish_read` and kv/mod.rs, "Time and expiry").
#[derive(Debug)]
struct ClockWait {
    index: u64,
    /// The leader's clock when the read was first answered.
    now_ms: u64,
    read: PendingRead,
}

/// The leader proposes a timer sweep of expired keys at most this often
/// (reads never wait for it: a read of an expired key proposes its own).
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// The running member.
pub struct Server {
    poll: Poll,
    settings: Settings,
    start: Instant,
    /// The wall clock at `start`, ms since the Unix epoch (see `wall_ms`).
    start_wall_ms: u64,
    node: Node,
    /// Carries out the node's actions in the safe order (shared with the
    /// simulator).
    driver: Driver,
    storage: Storage,
    kv: Kv,
    peers: PeerSet,
    client_listener: TcpListener,
    clients: Slab<Client>,
    next_client_id: u64,
    limits: Limits,
    /// Clients accepted at most: [`MAX_CLIENTS`], or fewer if the
    /// descriptor limit is lower (see [`FD_RESERVE`]).
    max_clients: usize,
    /// One read buffer for every client (see `conn::read_via`).
    read_buf: Box<[u8]>,
    /// Memory of all client connections together.
    budget: Budget,
    /// Clients waiting for room in the budget, with their ids (a key may be
    /// reused once its client closed).
    budget_waiters: Vec<(usize, u64)>,
    /// Idle timeouts and slow partial requests.
    client_timer: ClientTimer,
    /// When to retry `accept` after it failed; a past instant (`start`)
    /// once a client closed and freed a descriptor.
    accept_retry_at: Option<Instant>,
    metrics: Option<MetricsServer>,
    signals: ShutdownSignals,
    /// Pending writes by log index.
    writes: BTreeMap<u64, PendingWrite>,
    /// Configuration changes (RAFT.ADD, PROMOTE, REMOVE) waiting for their
    /// entry to apply, by log index.
    changes: BTreeMap<u64, PendingWrite>,
    /// RAFT.TRANSFER requests waiting for the target to lead.
    transfers: Vec<(ReplyTo, NodeId)>,
    /// A RAFT.ADD of a voter under way (learner, catch-up, promotion).
    join: Option<reconfig::Join>,
    /// Since when this member leads (None while it does not).
    led_since: Option<Instant>,
    /// SIGTERM/SIGINT on the leader: leadership is being handed over
    /// first; shut down once it moved or at the deadline.
    leaving: Option<(&'static str, Instant)>,
    /// The latest configuration known committed (applied, or from the
    /// snapshot): its members keep their links until a newer one commits.
    committed_membership: Option<Membership>,
    /// Pending reads by read id.
    reads: HashMap<u64, PendingRead>,
    /// Reads waiting for a sweep to move the store clock.
    clock_waits: Vec<ClockWait>,
    /// The sweep entry proposed and not applied yet, by index.
    sweep_in_flight: Option<u64>,
    /// No timer sweep before this.
    next_sweep_at: Option<Instant>,
    /// Proposals were made while draining: drain again before sleeping.
    redrain: bool,
    /// Where proposals are encoded (`kv::Write::encode_in`).
    encode_arena: bytes::BytesMut,
    next_read_id: u64,
    /// Peer inputs not yet fed to the node.
    inputs: Vec<PeerInput>,
    /// Clients with output to write this turn (may repeat).
    dirty: Vec<usize>,
    /// Clients whose back-pressure cleared, to service next turn.
    resume: Vec<usize>,
    /// Clients are being refused (the maximum is connected): logged once
    /// per stretch, which ends when a client closes.
    refusing: bool,
    /// Why the link to each peer last went down, for election log lines.
    link_down_reason: HashMap<NodeId, String>,
    /// Per peer: when an impossible message from it was last logged, and
    /// how many were not logged since.
    peer_faults: HashMap<NodeId, (Option<Instant>, u64)>,
    counters: Counters,
    /// Failed AUTH attempts per source address.
    auth_limiter: crate::acl::AuthLimiter,
    /// Since when no leader has been known (None while one is).
    no_leader_since: Option<Instant>,
    /// Fsync latency and apply lag.
    histograms: Histograms,
    /// When each log entry not yet applied was appended here, oldest first
    /// (apply lag); bounded, the oldest forgotten past the bound.
    appended_at: VecDeque<(u64, Instant)>,
    /// Appends not yet durable, for the durable-lag histogram.
    durable_pending: VecDeque<(u64, Instant)>,
    /// The last entry applied to `kv` (or the snapshot it was loaded from):
    /// what a snapshot taken now covers.
    last_applied: (LogIndex, Term),
    /// What the driver handed out for this side to carry out (applies,
    /// read answers, events), in its order, beyond the last turn's budget.
    backlog: VecDeque<Action>,
    /// The leader's snapshot being loaded into a store, off the loop; the
    /// backlog waits behind it.
    loading: Option<snapshot::Loading>,
    /// Takes snapshots on a helper thread.
    snapshotter: Snapshotter,
    /// Walks the key space for reads, on a helper thread.
    walker: Walker<ReplyTo>,
    /// Where the current loop turn spends its time (slow-turn warnings).
    turn: TurnTimer,
}

impl Server {
    /// Runs until SIGTERM/SIGINT (then shuts down cleanly and returns
    /// `Ok`) or a fatal error.
    pub fn run(mut self) -> Result<(), FatalError> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FatalError::Poll(e)),
            }
            let now = Instant::now();
            let t = self.time(now);
            self.turn.begin(now);

            let mut shutdown = None;
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => shutdown = shutdown.or(self.signals.received()),
                    // Handled below, every turn.
                    HELPER_WAKER => {}
                    CLIENT_LISTENER => self.accept_clients(now),
                    token if self.peers.owns(token) => {
                        let hangup = ev.is_read_closed() || ev.is_error();
                        self.peers.ready(
                            token,
                            hangup,
                            self.poll.registry(),
                            now,
                            &mut self.inputs,
                        );
                        self.feed(t);
                    }
                    token if token.0 >= CLIENT_BASE => {
                        let key = token.0 - CLIENT_BASE;
                        if let Some(c) = self.clients.get_mut(key) {
                            let hangup = ev.is_read_closed() || ev.is_error();
                            if ev.is_readable() || hangup {
                                c.mark_readable(hangup);
                            }
                            self.dirty.push(key);
                            self.service_client(key, t, now);
                        }
                    }
                    token => {
                        if let Some(mut m) = self.metrics.take() {
                            if m.owns(token) {
                                let mut render = || info::render_metrics(&self.snapshot(now));
                                m.ready(token, self.poll.registry(), now, &mut render);
                            }
                            self.metrics = Some(m);
                        }
                    }
                }
            }
            if let Some(signal) = shutdown {
                if self.leaving.is_some() || !self.hand_over(signal, t, now) {
                    return self.shutdown(signal);
                }
            }
            if let Some((signal, deadline)) = self.leaving {
                if self.node.role() != Role::Leader || now >= deadline {
                    return self.shutdown(signal);
                }
            }

            for key in std::mem::take(&mut self.resume) {
                self.service_client(key, t, now);
            }
            self.turn.lap(Phase::Io);
            self.client_timers(now);
            self.peers.tick(self.poll.registry(), now, &mut self.inputs);
            self.feed(t);
            if let Some(m) = &mut self.metrics {
                m.tick(self.poll.registry(), now);
            }
            self.node.handle_timeout(t);
            self.sweep_expired(now, t);
            self.advance_join(t, now);
            self.turn.lap(Phase::Timers);

            self.sync_finished(now)?;
            self.snapshot_finished(now)?;
            self.walks_finished();

            for _ in 0..MAX_DRAIN_ROUNDS {
                self.drain(now)?;
                self.peers
                    .flush(self.poll.registry(), now, &mut self.inputs);
                self.flush_clients(now);
                self.turn.lap(Phase::Flush);
                if self.inputs.is_empty() && !std::mem::take(&mut self.redrain) {
                    break;
                }
                self.feed(t);
                self.turn.lap(Phase::Io);
            }
            self.maybe_snapshot(now)?;
            self.turn.lap(Phase::SnapshotStart);
            self.end_client_turn(now);
            // How long this turn kept the loop from the sockets and timers:
            // the stall an operator cares about (a snapshot must not cause
            // one; issue 9).
            let took = self.turn.end(self.settings.heartbeat);
            let c = &mut self.counters;
            let nanos = took.as_nanos() as u64;
            if nanos > c.loop_turn_max_nanos {
                c.loop_turn_max_nanos = nanos;
                c.loop_turn_max_phase = self.turn.dominant();
            }
            if took >= self.settings.heartbeat {
                c.loop_turns_over_heartbeat += 1;
            }
            if took >= self.settings.heartbeat / 2 {
                c.loop_turns_over_half_heartbeat += 1;
            }
            self.histograms.loop_turn.observe(took.as_secs_f64());
        }
    }

    /// The wall clock, ms since the Unix epoch, as stamped into writes and
    /// used for expiry: the wall clock read once at start plus the
    /// monotonic time since, so that it never goes back while the process
    /// runs (a clock step after start is not followed; NTP's slewing is).
    fn wall_ms(&self, now: Instant) -> u64 {
        self.start_wall_ms
            .saturating_add(now.saturating_duration_since(self.start).as_millis() as u64)
    }

    /// The node's clock: time since start.
    fn time(&self, now: Instant) -> Time {
        Time::from_duration(now.saturating_duration_since(self.start))
    }

    /// How long the next poll may sleep: until the earliest deadline, or not
    /// at all if work is already waiting.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.resume.is_empty()
            || !self.inputs.is_empty()
            || self.redrain
            || (!self.backlog.is_empty() && self.loading.is_none())
            || !self.dirty.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let node = self
            .node
            .poll_timeout()
            .map(|t| self.start + t.since_epoch());
        let metrics = self.metrics.as_ref().and_then(|m| m.next_deadline());
        [
            node,
            self.peers.next_deadline(),
            metrics,
            self.client_timer.deadline(),
            self.budget.deadline(),
            self.accept_retry_at,
            self.sweep_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
    }

    /// Feeds the queued peer inputs to the node.
    fn feed(&mut self, t: Time) {
        for input in std::mem::take(&mut self.inputs) {
            match input {
                PeerInput::Message(m) => {
                    self.counters.messages_received += 1;
                    self.node.handle_message(t, m);
                }
                PeerInput::LinkUp(peer) => self.node.handle_link_up(t, peer),
                PeerInput::LinkDown { peer, reason } => {
                    if self.node.leader() == Some(peer) && self.node.role() != Role::Leader {
                        log::info!("link to leader {peer} lost: {reason}");
                    }
                    self.link_down_reason.insert(peer, reason);
                    self.node.handle_link_down(t, peer);
                }
            }
        }
    }

    /// Takes every action from the node and carries it out: the driver
    /// (shared with the simulator) persists, fsyncs, sends and reports
    /// durability in the safe order; applies, read answers and events come
    /// back in order and are performed here.
    fn drain(&mut self, now: Instant) -> Result<(), FatalError> {
        let t = self.time(now);
        let mut out = Vec::new();
        let mut disk = Disk {
            storage: &mut self.storage,
            histograms: &mut self.histograms,
            appended_at: &mut self.appended_at,
            durable_pending: &mut self.durable_pending,
            now,
            fsyncs: 0,
            fsync_nanos: 0,
            compact_nanos: 0,
            entries_persisted: 0,
            chunks_sent: 0,
            chunk_bytes_sent: 0,
            snapshots_sent: 0,
        };
        let mut links = Links {
            peers: &mut self.peers,
            registry: self.poll.registry(),
            now,
            inputs: &mut self.inputs,
            sent: 0,
            heartbeats_sent: 0,
            heartbeats_failed: 0,
        };
        let r = self
            .driver
            .drain(&mut self.node, t, &mut disk, &mut links, &mut out);
        self.turn.lap(Phase::Drive);
        self.turn
            .recharge(Phase::Drive, Phase::Fsync, disk.fsync_nanos);
        self.turn
            .recharge(Phase::Drive, Phase::Compaction, disk.compact_nanos);
        let c = &mut self.counters;
        c.fsyncs += disk.fsyncs;
        c.fsync_nanos += disk.fsync_nanos;
        c.entries_persisted += disk.entries_persisted;
        c.snapshot_chunks_sent += disk.chunks_sent;
        c.snapshot_bytes_sent += disk.chunk_bytes_sent;
        c.snapshots_sent += disk.snapshots_sent;
        c.messages_sent += links.sent;
        c.heartbeats_sent += links.heartbeats_sent;
        c.heartbeats_failed += links.heartbeats_failed;
        r.map_err(FatalError::Storage)?;

        self.backlog.extend(out);
        self.run_backlog(now)?;
        self.turn.lap(Phase::Apply);
        Ok(())
    }

    /// Carries out the applies, read answers and events the driver handed
    /// out, in its order, until the turn has used its budget
    /// ([`APPLY_BUDGET_HEARTBEATS`]); the rest waits for the next turn,
    /// which starts at once (`poll_timeout`). A backlog of a million
    /// entries (a follower catching up, a burst of large MSETs) then costs
    /// several short turns instead of one that misses heartbeats.
    ///
    /// The order is what keeps this safe: a read the node declared ready is
    /// answered only after every entry it handed out before it, exactly as
    /// when everything ran at once. The node counts those entries applied
    /// already; nothing on this side reads the store except through that
    /// order (reads through ReadIndex, WATCH through the store's own
    /// index, snapshots at the store's `last_applied`).
    ///
    /// An installed snapshot is loaded on a helper thread, and what follows
    /// it waits until the store is replaced (`install_snapshot`). The
    /// budget does not hold past [`MAX_APPLY_BACKLOG`] actions (memory
    /// first).
    fn run_backlog(&mut self, now: Instant) -> Result<(), FatalError> {
        let budget = self.settings.heartbeat / APPLY_BUDGET_HEARTBEATS;
        while let Some(action) = self.backlog.pop_front() {
            match action {
                Action::Apply(e) => {
                    self.observe_apply_lag(e.index.0, Instant::now());
                    self.apply(e, now);
                }
                Action::InstallSnapshot { meta } => {
                    if let Some(meta) = self.install_snapshot(meta, now)? {
                        // Loading: what follows waits behind it.
                        self.backlog.push_front(Action::InstallSnapshot { meta });
                        break;
                    }
                }
                Action::ReadReady { id } => self.answer_read(id, None, now),
                Action::ReadFailed { id, error } => self.answer_read(id, Some(error), now),
                Action::Event(e) => self.on_event(e),
                other => unreachable!("the driver carries out {other:?} itself"),
            }
            if !self.backlog.is_empty()
                && self.backlog.len() <= MAX_APPLY_BACKLOG
                && self.turn.busy() >= budget
            {
                self.counters.apply_deferred_turns += 1;
                break;
            }
        }
        Ok(())
    }

    /// The store's background fdatasync completed: the driver releases
    /// what waited for it (the drain that follows sends it).
    fn sync_finished(&mut self, now: Instant) -> Result<(), FatalError> {
        let Some(done) = self.storage.finish_sync() else {
            return Ok(());
        };
        let took = done.map_err(FatalError::Storage)?;
        let c = &mut self.counters;
        c.fsyncs += 1;
        c.fsync_nanos += took.as_nanos() as u64;
        self.histograms.fsync.observe(took.as_secs_f64());
        observe_durable(
            &mut self.durable_pending,
            &self.histograms.durable_lag,
            self.storage.synced_index(),
            now,
        );
        let t = self.time(now);
        let mut links = Links {
            peers: &mut self.peers,
            registry: self.poll.registry(),
            now,
            inputs: &mut self.inputs,
            sent: 0,
            heartbeats_sent: 0,
            heartbeats_failed: 0,
        };
        self.driver.sync_completed(&mut self.node, t, &mut links);
        let c = &mut self.counters;
        c.messages_sent += links.sent;
        c.heartbeats_sent += links.heartbeats_sent;
        c.heartbeats_failed += links.heartbeats_failed;
        Ok(())
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ElectionStarted {
                term,
                pre_vote,
                reason,
            } => {
                let detail = match &reason {
                    ElectionReason::LeaderLinkLost { leader } => self
                        .link_down_reason
                        .get(leader)
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let what = if pre_vote { "pre-vote" } else { "election" };
                if pre_vote {
                    self.counters.pre_votes_started += 1;
                } else {
                    self.counters.elections_started += 1;
                }
                log::info!("{what} for term {term}: {reason}{detail}");
            }
            Event::RoleChanged { role, term, reason } => {
                log::info!("became {role} in term {term} ({reason})");
                self.note_role(role);
                if role != Role::Leader {
                    self.abandon_join();
                    self.fail_pending_writes(
                        "ERR leadership lost before the write committed; it may still take effect",
                    );
                    for (_, w) in std::mem::take(&mut self.changes) {
                        let msg = "ERR leadership lost before the configuration change committed; it may still take effect (see RAFT.MEMBERS)";
                        self.deliver(w.to, Reply::Error(msg.into()));
                    }
                    self.release_clock_waits(Instant::now());
                }
            }
            Event::LeaderChanged { leader, term } => {
                self.track_leader(leader.is_some());
                self.log_leader(leader, term);
                if let Some(l) = leader {
                    for (to, target) in std::mem::take(&mut self.transfers) {
                        let reply = if l == target {
                            Reply::Simple("OK")
                        } else {
                            Reply::Error(format!(
                                "ERR leadership went to member {l}, not to member {target}"
                            ))
                        };
                        self.deliver(to, reply);
                    }
                }
            }
            Event::MembershipChanged { index, membership } => {
                self.follow_membership(index, &membership);
            }
            Event::TransferAborted { target } => {
                log::warn!(
                    "leadership transfer to member {target} given up: it did not catch up and win within an election timeout; accepting writes again"
                );
                for (to, _) in std::mem::take(&mut self.transfers) {
                    let msg = format!(
                        "ERR leadership transfer to member {target} given up: it did not catch up and win within an election timeout"
                    );
                    self.deliver(to, Reply::Error(msg));
                }
            }
            Event::PeerFault { peer, fault } => {
                // A member that sends impossible messages is buggy or not
                // who it claims to be: drop its link (it redials with its
                // backoff) and say so, once a minute per peer at most.
                self.counters.peer_faults += 1;
                let now = Instant::now();
                let (logged_at, suppressed) = self.peer_faults.entry(peer).or_insert((None, 0));
                let quiet = logged_at
                    .is_some_and(|t| now.saturating_duration_since(t) < PEER_FAULT_LOG_INTERVAL);
                if quiet {
                    *suppressed += 1;
                } else {
                    let more = match *suppressed {
                        0 => String::new(),
                        n => format!(" ({n} more since the last report)"),
                    };
                    log::warn!(
                        "peer {peer} sent an impossible message, dropped; closing its link: \
                         {fault}{more}"
                    );
                    *logged_at = Some(now);
                    *suppressed = 0;
                }
                self.peers.close_link_from(
                    peer,
                    self.poll.registry(),
                    format!("impossible message: {fault}"),
                    &mut self.inputs,
                );
            }
        }
    }

    /// Leaderless time: an election's duration runs from losing the leader
    /// to learning the next one.
    fn track_leader(&mut self, known: bool) {
        let now = Instant::now();
        match (known, self.no_leader_since) {
            (true, Some(since)) => {
                let gap = now.saturating_duration_since(since);
                self.counters.leader_changes += 1;
                self.counters.last_election_nanos = gap.as_nanos() as u64;
                self.counters.no_leader_nanos += gap.as_nanos() as u64;
                self.no_leader_since = None;
            }
            (false, None) => self.no_leader_since = Some(now),
            _ => {}
        }
    }

    fn log_leader(&self, leader: Option<NodeId>, term: Term) {
        match leader {
            Some(l) if l == self.settings.id => {
                log::info!("leader is this member in term {term}")
            }
            Some(l) => log::info!("leader is member {l} in term {term}"),
            None => log::info!("no leader known in term {term}"),
        }
    }

    /// Answers every pending write with an error: its outcome is unknown,
    /// so it must not be reported as `+OK` (it may still commit).
    fn fail_pending_writes(&mut self, msg: &str) {
        for (_, w) in std::mem::take(&mut self.writes) {
            self.counters.writes_failed += 1;
            self.deliver(w.to, Reply::Error(msg.to_string()));
        }
    }

    // ----- Clients ------------------------------------------------------

    // ----- Status and shutdown -----------------------------------------

    fn snapshot(&self, now: Instant) -> Snapshot {
        let status = self.node.status();
        let membership = self.node.membership();
        Snapshot {
            voters: membership.voters.iter().map(|v| v.0).collect(),
            learners: membership.learners.iter().map(|v| v.0).collect(),
            configuration_index: self.node.membership_index().0,
            removed: self.node.is_removed(),
            term_claims: self
                .node
                .term_claims()
                .iter()
                .map(|(id, t)| (id.0, t.0))
                .collect(),
            status: status.clone(),
            leader_client_addr: status
                .leader
                .and_then(|l| self.settings.member(l))
                .map(|m| m.client_addr),
            cluster_id: self.settings.cluster_id,
            client_port: self.settings.me().client_addr.port(),
            peers: self.peers.status(now),
            clients: self.clients.len(),
            max_clients: self.max_clients,
            client_bytes: self.budget.used(),
            client_budget: self.budget.limit(),
            keys: self.kv.len(),
            expires: self.kv.volatile_len(),
            locks: self.kv.locks_len(),
            store_clock_ms: self.kv.clock_ms(),
            uptime: now.saturating_duration_since(self.start),
            counters: self.counters,
            no_leader_for: self
                .no_leader_since
                .map(|t| now.saturating_duration_since(t)),
            histograms: self.histograms.clone(),
            storage: info::StorageStatus {
                snapshot: self
                    .storage
                    .snapshot()
                    .map(|s| (s.last_index.0, s.last_term.0, s.len)),
                log_first_index: self.storage.first_index().0,
                log_bytes: self.storage.log_bytes(),
                log_segments: self.storage.segment_count(),
                snapshot_in_progress: self.snapshotter.running(),
                snapshots_refused: self.storage.incoming_refusals(),
                last_snapshot: self
                    .snapshotter
                    .last
                    .map(|l| (now.saturating_duration_since(l.at), l.took)),
            },
        }
    }

    /// Stops accepting work, makes everything durable, answers what is
    /// pending with an error, closes every socket.
    fn shutdown(mut self, signal: &str) -> Result<(), FatalError> {
        log::info!("{signal} received: shutting down");
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut self.client_listener);
        if let Some(m) = &mut self.metrics {
            m.close_all(registry);
        }
        // Carry out whatever the node still asks for, then sync.
        self.drain(Instant::now())?;
        self.storage.sync().map_err(FatalError::Storage)?;
        self.node.shutdown();
        self.fail_pending_writes("ERR server shutting down; the write may still take effect");
        for (_, w) in std::mem::take(&mut self.changes) {
            let msg = "ERR server shutting down; the configuration change may still take effect";
            self.deliver(w.to, Reply::Error(msg.into()));
        }
        for (to, _) in std::mem::take(&mut self.transfers) {
            self.deliver(to, Reply::Error("ERR server shutting down".into()));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            self.deliver(r.to, Reply::Error("ERR server shutting down".into()));
        }
        for w in std::mem::take(&mut self.clock_waits) {
            self.deliver(w.read.to, Reply::Error("ERR server shutting down".into()));
        }
        let now = Instant::now();
        for (key, c) in self.clients.iter_mut() {
            // Best effort: one non-blocking write of what is ready.
            let _ = c.flush(self.poll.registry(), Token(CLIENT_BASE + key), now);
        }
        self.peers.close_all(self.poll.registry());
        self.clients.clear();
        log::info!(
            "shut down: term {}, log up to {}, applied up to {}",
            self.node.term(),
            self.node.last_log_index(),
            self.node.last_applied()
        );
        Ok(())
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("id", &self.settings.id)
            .field("clients", &self.clients.len())
            .field("peers", &self.peers)
            .finish()
    }
}
