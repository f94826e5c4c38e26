//! RESP client connections: buffers, ordered replies, back-pressure, memory
//! accounting, and the command table.
//!
//! Requests on one connection may be pipelined, and some are answered at
//! once (`PING`) while others wait for the log (`SET`) or for a ReadIndex
//! round (`GET`). Each request therefore reserves a reply slot in order; a
//! slot is filled whenever its answer is known, and replies leave strictly in
//! request order.
//!
//! Program order: a connection's requests take effect in the order sent, as
//! with Redis. Writes pipeline with writes and reads with reads, but a `GET`
//! waits until the connection's earlier writes are answered, and a write
//! waits for its earlier `GET`s: otherwise a pipelined `SET k 1; GET k;
//! SET k 2` could read `2` (linearizable, since the three are concurrent, but
//! not what a Redis user expects).
//!
//! # Output accounting and back-pressure
//!
//! A reply counts against its connection from the moment its request is
//! executed, not from when it is encoded: a slot holds either the reply's
//! encoded size or, while the answer is pending, a reservation for it. A
//! `GET` reserves the size of the value as it is when the request runs; the
//! slot is re-counted with the real reply when the ReadIndex round
//! completes. The output of a connection is its slots ([`SLOT_COST`] each
//! plus their bytes) and its encoded but unsent bytes.
//!
//! A connection with [`MAX_PENDING_REPLIES`] slots, or [`OUTPUT_SOFT_LIMIT`]
//! bytes of output, is neither read from nor has its buffered requests
//! executed until it drains, so a client that does not read its replies is
//! slowed down by TCP instead of growing our buffers. Replies are encoded
//! lazily, at most [`ENCODE_AHEAD`] bytes ahead of the socket; until then a
//! `GET`'s reply shares the stored value's memory. Past
//! [`OUTPUT_HARD_LIMIT`] (possible only if values grew between their `GET`s'
//! reservations and answers) the connection is closed before anything more
//! is encoded.
//!
//! The resulting bound per connection: input at most
//! `max_request_len + READ_CHUNK` (1 MiB + 64 KiB); output at most
//! `OUTPUT_SOFT_LIMIT` plus one reply (1 MiB + 512 KiB + a few bytes) from
//! the requests it may execute, and never more than `OUTPUT_HARD_LIMIT`
//! (16 MiB) plus one reply before it is closed; of the output, at most
//! `ENCODE_AHEAD` plus one reply is a private copy. [`Client::footprint`] is
//! what the connection holds, [`CONN_COST`] included; the [`Budget`] over
//! all connections bounds their sum.
//!
//! # Half-close
//!
//! A client may send its requests and shut down its sending side (`nc -q`,
//! `redis-cli < file`). At EOF the connection stops reading, executes the
//! complete requests it holds, writes every reply (including those that
//! complete later, like a `SET` waiting for commit), then closes. A partial
//! request at EOF can never complete and is dropped.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Registry, Token};

use crate::cmd::Kind;
use crate::conn::{self, ReadStatus};
use crate::resp::{self, Limits, Protocol, ProtocolError, Reply, Request};

/// Unanswered requests per connection before it is no longer read.
pub const MAX_PENDING_REPLIES: usize = 1024;
/// Output bytes per connection (reply slots and unsent bytes) at which it is
/// no longer read and its buffered requests wait.
pub const OUTPUT_SOFT_LIMIT: usize = 1 << 20;
/// Output bytes per connection past which it is disconnected. Requests stop
/// executing at the soft limit, so only answers larger than their
/// reservations (values that grew between a `GET`'s start and its answer)
/// get here.
pub const OUTPUT_HARD_LIMIT: usize = 16 << 20;
/// Client connections at most; more are told so and closed, as Redis does.
/// The descriptor limit may lower it (see the server's accept).
pub const MAX_CLIENTS: usize = 4096;
/// Counted per reply slot on top of the reply's bytes: the slot itself and
/// the server's record of the pending request.
pub const SLOT_COST: usize = 64;
/// Counted per connection: its state here, with empty buffers.
pub const CONN_COST: usize = 1024;
/// Reserved for the reply to a write: `+OK`, an integer, or one of the
/// server's error messages (all shorter).
pub const WRITE_REPLY_RESERVE: usize = 128;
/// Encoded reply bytes kept ahead of the socket. The rest stay as replies
/// in their slots, where a `GET`'s value is shared with the store.
pub const ENCODE_AHEAD: usize = 64 * 1024;
/// An empty buffer with more capacity than this is released, so that an
/// idle connection holds no buffer memory.
const IDLE_BUF_KEEP: usize = 16 * 1024;
/// A partial request holding more than this many bytes must complete within
/// [`SLOW_REQUEST_TIMEOUT`]. Smaller partial requests (a `telnet` user
/// typing) wait as long as the idle timeout allows.
pub const SLOW_REQUEST_BYTES: usize = 16 * 1024;
/// How long a partial request over [`SLOW_REQUEST_BYTES`] may take to
/// arrive: 1 MiB at 100 KB/s.
pub const SLOW_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Budget`] for all client buffers together.
pub const DEFAULT_CLIENT_MEMORY_BUDGET: usize = 256 << 20;
/// How long the budget may stay full before the largest clients are
/// evicted: long enough for clients that read their replies to drain it
/// (256 MiB on loopback takes well under a second).
pub const BUDGET_GRACE: Duration = Duration::from_secs(1);
/// Client deadlines are checked at most this often; a client is closed at
/// most this late.
pub const TIMER_SLACK: Duration = Duration::from_millis(100);

/// One reply slot: the reply once known, and the bytes it counts for.
#[derive(Debug)]
struct Slot {
    reply: Option<Reply>,
    /// `SLOT_COST` plus the reply's encoded size, or the reservation while
    /// it is pending.
    bytes: usize,
    /// The protocol in force when its request ran: a `HELLO 3` pipelined
    /// behind a request does not change how that request is answered.
    protocol: Protocol,
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    /// Unique over the process's life, unlike the slab key: a late answer
    /// for a closed connection must not reach a new one that reused its key.
    pub id: u64,
    /// The client's address.
    pub addr: SocketAddr,
    sock: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    /// Reply slots in request order.
    replies: VecDeque<Slot>,
    /// Sum of the slots' `bytes`.
    slot_bytes: usize,
    /// Sequence number of `replies[0]`.
    first_seq: u64,
    writable: bool,
    /// Close once every reply is written (after a protocol error, QUIT, or
    /// EOF once the buffered requests ran).
    closing: bool,
    /// The client shut down its side: no more input will come.
    read_closed: bool,
    /// The socket was read until `WouldBlock` since its last readable event.
    drained: bool,
    /// An event reported EOF or an error: read to the end.
    hangup: bool,
    /// Reading stopped because of back-pressure or a held request; resume
    /// once it clears.
    stalled: bool,
    /// A request that must wait for the in-flight ones (program order).
    held: Option<Request>,
    /// Requests answered later (reserved slots), all of `inflight_kind`.
    inflight: usize,
    inflight_kind: Kind,
    /// When bytes last moved in either direction.
    last_active: Instant,
    /// Since when the request at the head of `inbuf` has been arriving.
    partial_since: Option<Instant>,
    /// The last parse found `inbuf` to end in an incomplete request, and
    /// nothing arrived since.
    incomplete: bool,
    /// What the [`Budget`] last counted for this connection.
    accounted: usize,
    /// Waiting for room in the [`Budget`] (to avoid listing it twice).
    waiting_for_budget: bool,
    /// RESP2 until `HELLO 3`.
    pub protocol: Protocol,
    /// `CLIENT SETNAME` / `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
    /// Between `MULTI` and `EXEC`/`DISCARD`: the queued commands.
    pub tx: Option<Transaction>,
    /// `WATCH`ed keys, each with the store's applied index when watched.
    pub watches: Vec<(Bytes, u64)>,
    /// Who this connection is logged in as (see [`crate::acl`]): the
    /// default user from the start when it takes no password, else
    /// nobody until `AUTH`.
    pub user: Option<crate::acl::UserId>,
    /// Failed `AUTH` attempts on this connection.
    pub auth_failures: u32,
    /// `READONLY`: a follower serves this client's reads (linearizable:
    /// it asks the leader for a read index first).
    pub readonly: bool,
}

/// Commands queued between `MULTI` and `EXEC`.
#[derive(Debug, Default)]
pub struct Transaction {
    /// In order.
    pub cmds: Vec<crate::kv::Command>,
    /// A queued command was refused: `EXEC` answers `EXECABORT`.
    pub failed: bool,
    /// What the queued commands hold, counted in the client's footprint.
    pub bytes: usize,
}

/// Commands one transaction may queue.
pub const MAX_TX_COMMANDS: usize = 1024;
/// Bytes of arguments one transaction may queue: a transaction is one log
/// entry, bounded like one request.
pub const MAX_TX_BYTES: usize = 1 << 20;
/// Keys one connection may `WATCH`.
pub const MAX_WATCHED_KEYS: usize = 1024;
/// Counted per queued command or watched key on top of its bytes.
pub const ITEM_COST: usize = 32;

/// Why a client's deadline closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No bytes moved for the idle timeout while nothing was pending.
    Idle,
    /// A partial request over [`SLOW_REQUEST_BYTES`] did not complete in
    /// [`SLOW_REQUEST_TIMEOUT`].
    SlowRequest,
}

impl Client {
    /// Wraps an accepted socket already registered for READABLE.
    pub fn new(id: u64, sock: TcpStream, addr: SocketAddr, now: Instant) -> Client {
        Client {
            id,
            addr,
            sock,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            replies: VecDeque::new(),
            slot_bytes: 0,
            first_seq: 0,
            writable: false,
            closing: false,
            read_closed: false,
            drained: false,
            hangup: false,
            stalled: false,
            held: None,
            inflight: 0,
            inflight_kind: Kind::Read,
            last_active: now,
            partial_since: None,
            incomplete: false,
            accounted: 0,
            waiting_for_budget: false,
            protocol: Protocol::Resp2,
            name: None,
            tx: None,
            watches: Vec::new(),
            user: None,
            auth_failures: 0,
            readonly: false,
        }
    }

    /// Whether a `MULTI` is open.
    pub fn in_multi(&self) -> bool {
        self.tx.is_some()
    }

    /// Bytes held by the open transaction and the watched keys.
    fn tx_bytes(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| t.bytes)
            + self
                .watches
                .iter()
                .map(|(k, _)| ITEM_COST + k.len())
                .sum::<usize>()
    }

    /// The socket, for (de)registration.
    pub fn sock(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// A readable event arrived: the socket may hold data again. With
    /// `hangup` (the event also reported EOF or an error), reads go on to
    /// `EAGAIN` or EOF rather than stop at a short read (`conn::read_via`).
    pub fn mark_readable(&mut self, hangup: bool) {
        self.drained = false;
        self.hangup |= hangup;
    }

    /// Output bytes: reply slots (answered or reserved) and unsent bytes.
    pub fn output_bytes(&self) -> usize {
        self.slot_bytes + self.out.len()
    }

    /// Everything this connection holds: [`CONN_COST`], buffered input and
    /// output. What the [`Budget`] counts.
    pub fn footprint(&self) -> usize {
        CONN_COST + self.inbuf.len() + self.output_bytes() + self.tx_bytes()
    }

    /// Whether reading and executing requests should stop for now.
    pub fn paused(&self) -> bool {
        self.replies.len() >= MAX_PENDING_REPLIES || self.output_bytes() >= OUTPUT_SOFT_LIMIT
    }

    /// Records that reading stopped because of back-pressure.
    pub fn stall(&mut self) {
        self.stalled = true;
    }

    /// If reading was stalled and the back-pressure has cleared (and a held
    /// request may now run), un-stalls and returns true: the caller must
    /// service the client again (edge-triggered readiness will not report
    /// data that was already waiting).
    pub fn unstall_if_ready(&mut self) -> bool {
        let held_blocked = self
            .held
            .as_ref()
            .is_some_and(|r| self.must_wait(crate::cmd::kind_of(r, self.in_multi())));
        if self.stalled && !self.paused() && !held_blocked {
            self.stalled = false;
            return true;
        }
        false
    }

    /// Marks the client as waiting for room in the budget. Returns false if
    /// it was already waiting (it is listed once).
    pub fn wait_for_budget(&mut self) -> bool {
        !std::mem::replace(&mut self.waiting_for_budget, true)
    }

    /// Clears the budget wait, when the client is about to be serviced.
    pub fn budget_wait_over(&mut self) {
        self.waiting_for_budget = false;
    }

    /// Whether a request of `kind` must wait for the in-flight requests.
    pub fn must_wait(&self, kind: Option<Kind>) -> bool {
        matches!(kind, Some(k) if self.inflight > 0 && self.inflight_kind != k)
    }

    /// Keeps `req` until the in-flight requests are answered; stalls the
    /// connection meanwhile.
    pub fn hold(&mut self, req: Request) {
        assert!(self.held.is_none(), "a request is held already");
        self.held = Some(req);
        self.stalled = true;
    }

    /// Whether a request is held.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Whether the connection is finishing (no more requests are taken).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Whether the client shut down its sending side.
    pub fn read_closed(&self) -> bool {
        self.read_closed
    }

    /// Whether the socket may hold unread data.
    pub fn may_have_input(&self) -> bool {
        !self.drained && !self.read_closed
    }

    /// Reads what the socket has, up to one maximal request (plus one read)
    /// beyond what is buffered, and at most `room` more bytes (what the
    /// budget has left). EOF marks the connection read-closed: the caller
    /// runs the complete requests buffered and then closes after their
    /// replies.
    pub fn read(
        &mut self,
        limits: &Limits,
        scratch: &mut [u8],
        room: usize,
        now: Instant,
    ) -> io::Result<ReadStatus> {
        let before = self.inbuf.len();
        let limit = (limits.max_request_len + conn::READ_CHUNK).min(before.saturating_add(room));
        let status = conn::read_via(
            &mut self.sock,
            scratch,
            &mut self.inbuf,
            limit,
            !self.hangup,
        )?;
        match status {
            ReadStatus::Drained => self.drained = true,
            ReadStatus::Eof => self.read_closed = true,
            ReadStatus::Full => {}
        }
        if self.inbuf.len() > before {
            self.last_active = now;
            self.incomplete = false;
            if before == 0 {
                self.partial_since = Some(now);
            }
        }
        Ok(status)
    }

    /// The next complete buffered request. A protocol error queues
    /// `-ERR Protocol error: ...`, marks the connection closing and returns
    /// `None`.
    pub fn next_request(&mut self, limits: &Limits, now: Instant) -> Option<Request> {
        if self.closing {
            return None;
        }
        if let Some(req) = self.held.take() {
            return Some(req);
        }
        match resp::parse_request(&mut self.inbuf, limits) {
            Ok(Some(r)) => {
                // The next request's clock starts when this one is done.
                self.partial_since = (!self.inbuf.is_empty()).then_some(now);
                release_if_idle(&mut self.inbuf);
                Some(r)
            }
            Ok(None) => {
                self.incomplete = !self.inbuf.is_empty();
                if self.inbuf.is_empty() {
                    self.partial_since = None;
                }
                release_if_idle(&mut self.inbuf);
                None
            }
            Err(e) => {
                self.protocol_error(&e);
                None
            }
        }
    }

    fn protocol_error(&mut self, e: &ProtocolError) {
        log::debug!("client {}: {e}; closing", self.addr);
        self.reply_now(Reply::Error(format!("ERR {e}")));
        self.closing = true;
        self.inbuf = BytesMut::new();
        self.incomplete = false;
        self.partial_since = None;
    }

    /// Answers the next request at once (in order behind earlier ones).
    pub fn reply_now(&mut self, reply: Reply) {
        let protocol = self.protocol;
        let bytes = SLOT_COST + reply.encoded_len(protocol);
        self.slot_bytes += bytes;
        self.replies.push_back(Slot {
            reply: Some(reply),
            bytes,
            protocol,
        });
    }

    /// Reserves the next reply slot for an answer that comes later, counting
    /// `reply_bytes` (the expected encoded size) against the output limits
    /// until then; returns its sequence number for [`Client::fill`]. Panics
    /// if a request of the other kind is in flight (the caller checks
    /// [`Client::must_wait`]).
    pub fn reserve(&mut self, kind: Kind, reply_bytes: usize) -> u64 {
        assert!(
            !self.must_wait(Some(kind)),
            "program order: {kind:?} reserved behind the other kind"
        );
        self.inflight_kind = kind;
        self.inflight += 1;
        let bytes = SLOT_COST + reply_bytes;
        self.slot_bytes += bytes;
        self.replies.push_back(Slot {
            reply: None,
            bytes,
            protocol: self.protocol,
        });
        self.first_seq + self.replies.len() as u64 - 1
    }

    /// The protocol the reply in slot `seq` must be encoded in (the one in
    /// force when the request was read). Panics if `seq` is not reserved.
    pub fn slot_protocol(&self, seq: u64) -> Protocol {
        let i = seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.replies.len())
            .unwrap_or_else(|| panic!("reply slot {seq} not reserved on client {}", self.id));
        self.replies[i].protocol
    }

    /// Fills a reserved slot; it now counts the reply's real size. Panics
    /// if `seq` was not reserved or is filled already (a driver bug).
    pub fn fill(&mut self, seq: u64, reply: Reply) {
        let i = seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.replies.len())
            .unwrap_or_else(|| panic!("reply slot {seq} not reserved on client {}", self.id));
        let slot = &mut self.replies[i];
        assert!(slot.reply.is_none(), "reply slot {seq} filled twice");
        let bytes = SLOT_COST + reply.encoded_len(slot.protocol);
        self.slot_bytes = self.slot_bytes - slot.bytes + bytes;
        slot.bytes = bytes;
        slot.reply = Some(reply);
        self.inflight -= 1;
    }

    /// Answers the request after the last one (QUIT) and closes after it.
    pub fn close_after_replies(&mut self) {
        self.closing = true;
    }

    /// Whether the output is past [`OUTPUT_HARD_LIMIT`]: the connection
    /// must be closed.
    pub fn over_hard_limit(&self) -> bool {
        self.output_bytes() > OUTPUT_HARD_LIMIT
    }

    /// Encodes the replies that are ready, in order and at most
    /// [`ENCODE_AHEAD`] ahead of the socket, and writes what the socket
    /// takes. `Ok(false)`: the connection is done (closing and all
    /// written, or over the hard output limit) and must be closed.
    pub fn flush(&mut self, registry: &Registry, token: Token, now: Instant) -> io::Result<bool> {
        if self.over_hard_limit() {
            log::warn!(
                "client {}: {} bytes of replies held, over the {} byte limit; disconnecting",
                self.addr,
                self.output_bytes(),
                OUTPUT_HARD_LIMIT
            );
            return Ok(false);
        }
        let done = loop {
            while self.out.len() < ENCODE_AHEAD
                && self.replies.front().is_some_and(|s| s.reply.is_some())
            {
                // A reply encoded already (a walk of the key space, tens
                // of MB) is copied out a window at a time, like the rest.
                let room = ENCODE_AHEAD - self.out.len();
                let front = self.replies.front_mut().expect("front checked");
                if let Some(Reply::Encoded(b)) = &mut front.reply {
                    if b.len() > room {
                        let part = b.split_to(room);
                        self.out.extend_from_slice(&part);
                        front.bytes -= part.len();
                        self.slot_bytes -= part.len();
                        continue;
                    }
                }
                let slot = self.replies.pop_front().expect("front checked");
                self.first_seq += 1;
                self.slot_bytes -= slot.bytes;
                slot.reply
                    .expect("filled")
                    .encode(&mut self.out, slot.protocol);
            }
            let before = self.out.len();
            let done = conn::write_from(&mut self.sock, &mut self.out)?;
            if self.out.len() < before {
                self.last_active = now;
            }
            let more = self.replies.front().is_some_and(|s| s.reply.is_some());
            if !done || !more {
                break done;
            }
        };
        if done {
            release_if_idle(&mut self.out);
            if self.closing && self.replies.is_empty() {
                return Ok(false);
            }
        }
        conn::update_write_interest(registry, &mut self.sock, token, &mut self.writable, done)?;
        Ok(true)
    }

    /// When this client's next deadline falls, if it has one: the idle
    /// timeout (if configured) runs while no request is pending here,
    /// from the last byte moved; a partial request over
    /// [`SLOW_REQUEST_BYTES`] must complete within [`SLOW_REQUEST_TIMEOUT`].
    pub fn deadline(&self, idle_timeout: Option<Duration>) -> Option<Instant> {
        let idle = self.idle_deadline(idle_timeout);
        idle.into_iter().chain(self.slow_request_deadline()).min()
    }

    /// Whether a deadline has passed at `now`, and which.
    pub fn expired(&self, now: Instant, idle_timeout: Option<Duration>) -> Option<Expiry> {
        if self.slow_request_deadline().is_some_and(|d| now >= d) {
            Some(Expiry::SlowRequest)
        } else if self.idle_deadline(idle_timeout).is_some_and(|d| now >= d) {
            Some(Expiry::Idle)
        } else {
            None
        }
    }

    fn idle_deadline(&self, idle_timeout: Option<Duration>) -> Option<Instant> {
        idle_timeout
            .filter(|_| self.inflight == 0 && self.held.is_none())
            .map(|t| self.last_active + t)
    }

    fn slow_request_deadline(&self) -> Option<Instant> {
        self.partial_since
            .filter(|_| self.incomplete && self.inbuf.len() > SLOW_REQUEST_BYTES)
            .map(|t| t + SLOW_REQUEST_TIMEOUT)
    }
}

/// Frees an empty buffer's memory once it is larger than worth keeping.
fn release_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > IDLE_BUF_KEEP {
        *buf = BytesMut::new();
    }
}

/// The memory budget shared by every client connection: the sum of their
/// [`Client::footprint`]s (input buffers, reply slots, unsent output).
///
/// While it is full, no client reads: all of them wait, rather than only
/// the largest, because any read adds memory and the point is that the sum
/// stops growing at once; each read is also capped to the room left, so
/// reads never overshoot. Requests already buffered still run: that moves
/// a write's bytes out of the client into the log, and what a `GET`
/// reserves is bounded by its connection's output limits. Clients that
/// take their replies drain the budget within [`BUDGET_GRACE`]. If it is
/// still full after that, the memory is held by clients that do not drain
/// (unread output, partial requests), so the largest are evicted, as
/// Redis' `maxmemory-clients` does, until a quarter of the budget is free.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    full_since: Option<Instant>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: 0,
            full_since: None,
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by all clients, as last accounted.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Whether clients must stop reading and executing requests.
    pub fn full(&self) -> bool {
        self.used >= self.limit
    }

    /// Bytes clients may still read.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    /// Counts a client's current footprint (call after anything that may
    /// change it).
    pub fn update(&mut self, c: &mut Client) {
        let now = c.footprint();
        self.used = self.used - c.accounted + now;
        c.accounted = now;
    }

    /// Forgets a closed client.
    pub fn release(&mut self, c: &Client) {
        self.used -= c.accounted;
    }

    /// What a client counted for, as last accounted.
    pub fn counted(c: &Client) -> usize {
        c.accounted
    }

    /// At the end of a loop turn: notes since when the budget has been
    /// full.
    pub fn end_turn(&mut self, now: Instant) {
        if self.full() {
            self.full_since.get_or_insert(now);
        } else {
            self.full_since = None;
        }
    }

    /// When evictions are due, if the budget is full.
    pub fn deadline(&self) -> Option<Instant> {
        self.full_since.map(|t| t + BUDGET_GRACE)
    }

    /// Whether clients must be evicted now: the budget has stayed full for
    /// the grace period, and is still over the low-water mark.
    pub fn must_evict(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d) && self.used > self.low_water()
    }

    /// Evictions stop once usage is at most this: three quarters of the
    /// budget, so that reading resumes with room to spare.
    pub fn low_water(&self) -> usize {
        self.limit / 4 * 3
    }
}

/// When client deadlines must next be checked: a lower bound on the
/// earliest one, kept cheaply. Activity only moves a client's deadline
/// later, so the bound stays valid; a check then scans every client and
/// recomputes it. Checks are at least [`TIMER_SLACK`] apart, so a busy
/// server scans at most ten times a second, and an idle one without
/// deadlines never wakes up for them.
#[derive(Debug)]
pub struct ClientTimer {
    next: Option<Instant>,
    last_scan: Instant,
}

impl ClientTimer {
    /// No deadline yet.
    pub fn new(now: Instant) -> ClientTimer {
        ClientTimer {
            next: None,
            last_scan: now,
        }
    }

    /// Notes a client's deadline.
    pub fn note(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            let d = d.max(self.last_scan + TIMER_SLACK);
            self.next = Some(self.next.map_or(d, |n| n.min(d)));
        }
    }

    /// When to check next.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a check is due; if so, starts one: the caller scans every
    /// client, closes the expired and [`note`](Self::note)s the others.
    pub fn start_scan(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|n| now >= n) {
            self.next = None;
            self.last_scan = now;
            return true;
        }
        false
    }
}

/// The reply for a store [`Outcome`](crate::kv::Outcome).
pub fn outcome_reply(o: crate::kv::Outcome) -> Reply {
    use crate::kv::Outcome;
    match o {
        Outcome::Ok => Reply::Simple("OK"),
        Outcome::Status(s) => Reply::Simple(s),
        Outcome::Nil => Reply::Nil,
        Outcome::Int(n) => Reply::Integer(n),
        Outcome::Bulk(b) => Reply::Bulk(b),
        Outcome::Array(v) => Reply::Array(v.into_iter().map(outcome_reply).collect()),
        Outcome::Error(e) => Reply::Error(e),
        Outcome::Aborted => Reply::NilArray,
    }
}

/// Redis' glob match for `CONFIG GET` patterns: `*`, `?` and literal
/// characters, case-insensitive (parameter names are lower case).
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob_match(rest, name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some((b'?', rest)), Some((_, n))) => glob_match(rest, n),
        (Some((p, rest)), Some((c, n))) if p.eq_ignore_ascii_case(c) => glob_match(rest, n),
        _ => false,
    }
}

/// Redis' answer to a wrong user or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered client on one end of a loopback connection.
    fn pair() -> (mio::Poll, Client, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, addr) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut sock = TcpStream::from_std(s);
        let poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut sock, Token(7), mio::Interest::READABLE)
            .unwrap();
        (poll, Client::new(1, sock, addr, Instant::now()), peer)
    }

    /// 64 KiB socket buffers on both ends: a peer that does not read
    /// stops the writes early.
    fn small_buffers(c: &Client, peer: &std::net::TcpStream) {
        socket2::SockRef::from(&c.sock)
            .set_send_buffer_size(64 * 1024)
            .unwrap();
        socket2::SockRef::from(peer)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
    }

    fn flush(poll: &mio::Poll, c: &mut Client) -> bool {
        c.flush(poll.registry(), Token(7), Instant::now()).unwrap()
    }

    /// Reads what the peer sent (waiting for it to arrive on loopback).
    fn read_all(c: &mut Client, want: usize, room: usize) -> ReadStatus {
        let mut scratch = vec![0u8; conn::READ_CHUNK];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let before = c.inbuf.len();
            let st = c
                .read(&Limits::DEFAULT, &mut scratch, room, Instant::now())
                .unwrap();
            if st != ReadStatus::Drained || c.inbuf.len() >= want {
                return st;
            }
            assert!(Instant::now() < deadline, "peer data did not arrive");
            if c.inbuf.len() == before {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn get(key: &str) -> Vec<u8> {
        format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes()
    }

    /// The accounting adds up: output is the slots plus unsent bytes, the
    /// footprint adds input and the fixed cost.
    fn check_accounting(c: &Client) {
        let slots: usize = c.replies.iter().map(|s| s.bytes).sum();
        assert_eq!(c.slot_bytes, slots);
        for s in &c.replies {
            if let Some(r) = &s.reply {
                assert_eq!(s.bytes, SLOT_COST + r.encoded_len(Protocol::Resp2));
            }
        }
        assert_eq!(c.output_bytes(), slots + c.out.len());
        assert_eq!(
            c.footprint(),
            CONN_COST + c.inbuf.len() + slots + c.out.len()
        );
    }

    /// A pipeline of GETs for a big value: each reserves the value's size
    /// when it runs, so the connection pauses after two, not after 1024.
    #[test]
    fn big_gets_pause_the_connection_when_reserved() {
        let (_poll, mut c, _peer) = pair();
        let value = 512 * 1024;
        let mut executed = 0;
        while !c.paused() {
            c.reserve(Kind::Read, resp::bulk_len(value));
            executed += 1;
            check_accounting(&c);
        }
        assert_eq!(executed, 2);
        assert!(c.output_bytes() <= OUTPUT_SOFT_LIMIT + SLOT_COST + resp::bulk_len(value));
        // Small replies pause on the slot count instead.
        let (_poll, mut c, _peer) = pair();
        while !c.paused() {
            c.reply_now(Reply::Simple("PONG"));
        }
        assert_eq!(c.replies.len(), MAX_PENDING_REPLIES);
        check_accounting(&c);
    }

    /// A slot is re-counted with the real reply when it is filled; an
    /// answer that grew past the hard limit closes the connection before
    /// anything is encoded.
    #[test]
    fn filling_recounts_and_the_hard_limit_closes() {
        let (poll, mut c, _peer) = pair();
        let seqs: Vec<u64> = (0..40).map(|_| c.reserve(Kind::Read, 5)).collect();
        assert_eq!(c.output_bytes(), 40 * (SLOT_COST + 5));
        assert!(!c.paused());
        let big = Bytes::from(vec![b'v'; 512 * 1024]);
        for (i, &seq) in seqs.iter().enumerate().rev() {
            c.fill(seq, Reply::Bulk(big.clone()));
            check_accounting(&c);
            if i == 8 {
                // 32 big answers: 16 MiB and change, still all unsent (the
                // first slot is not filled, so nothing can be encoded).
                assert!(c.over_hard_limit());
            }
        }
        assert!(!flush(&poll, &mut c), "over the hard limit: close");
        assert!(c.out.is_empty(), "nothing was encoded");
    }

    /// Replies are encoded at most ENCODE_AHEAD ahead of the socket: a
    /// client that does not read leaves its replies in their slots, where
    /// a GET's value is shared with the store.
    #[test]
    fn replies_are_encoded_lazily() {
        let (poll, mut c, peer) = pair();
        // Small socket buffers, so that the kernel cannot take it all.
        small_buffers(&c, &peer);
        let big = Bytes::from(vec![b'v'; 512 * 1024]);
        for _ in 0..8 {
            let seq = c.reserve(Kind::Read, resp::bulk_len(big.len()));
            c.fill(seq, Reply::Bulk(big.clone()));
        }
        let total = c.output_bytes();
        // The peer never reads: the socket buffers fill, the rest waits.
        for _ in 0..4 {
            assert!(flush(&poll, &mut c));
            check_accounting(&c);
            assert!(c.out.len() <= ENCODE_AHEAD + resp::bulk_len(big.len()));
        }
        assert!(!c.replies.is_empty(), "everything was encoded");
        assert!(c.output_bytes() <= total);
    }

    /// A reply encoded elsewhere (a walk of the key space) is copied out a
    /// window at a time too, and all of it arrives, in order.
    #[test]
    fn an_encoded_reply_is_copied_out_in_windows() {
        use std::io::Read;
        let (poll, mut c, mut peer) = pair();
        let encoded: Vec<u8> = (0..20 * ENCODE_AHEAD).map(|i| (i % 251) as u8).collect();
        let seq = c.reserve(Kind::Read, 16);
        c.fill(seq, Reply::Encoded(Bytes::from(encoded.clone())));
        c.reply_now(Reply::Simple("PONG"));
        check_accounting(&c);
        // Small socket buffers: the kernel takes little before the peer
        // reads, and what it does not take must not be copied yet.
        small_buffers(&c, &peer);
        assert!(flush(&poll, &mut c));
        check_accounting(&c);
        assert!(c.out.len() <= ENCODE_AHEAD, "copied past the window");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < encoded.len() + 7 {
            assert!(flush(&poll, &mut c));
            check_accounting(&c);
            assert!(c.out.len() <= ENCODE_AHEAD, "copied past the window");
            let n = peer.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..encoded.len()], &encoded[..]);
        assert_eq!(&got[encoded.len()..], b"+PONG\r\n");
        assert_eq!(c.output_bytes(), 0);
    }

    /// Input counts in the footprint, and a read takes at most the room
    /// the budget has left.
    #[test]
    fn reads_are_counted_and_capped_by_the_budget() {
        use std::io::Write;
        let (_poll, mut c, mut peer) = pair();
        let mut budget = Budget::new(CONN_COST + 100);
        budget.update(&mut c);
        assert_eq!(budget.used(), CONN_COST);
        peer.write_all(&[b'x'; 1000]).unwrap();
        assert_eq!(read_all(&mut c, 100, budget.room()), ReadStatus::Full);
        assert_eq!(c.inbuf.len(), 100);
        budget.update(&mut c);
        assert!(budget.full());
        assert_eq!(budget.room(), 0);
        check_accounting(&c);
        budget.release(&c);
        assert_eq!(budget.used(), 0);
    }

    /// The budget's eviction rule: only after the grace period, and down to
    /// the low-water mark.
    #[test]
    fn budget_evicts_only_after_the_grace_period() {
        let (_poll, mut a, _pa) = pair();
        let (_poll2, mut b, _pb) = pair();
        let t0 = Instant::now();
        let mut budget = Budget::new(4 * CONN_COST);
        budget.update(&mut a);
        budget.update(&mut b);
        budget.end_turn(t0);
        assert_eq!(budget.deadline(), None);
        a.reply_now(Reply::Bulk(Bytes::from(vec![0u8; 3000])));
        budget.update(&mut a);
        assert!(budget.full());
        budget.end_turn(t0);
        assert_eq!(budget.deadline(), Some(t0 + BUDGET_GRACE));
        assert!(!budget.must_evict(t0));
        budget.end_turn(t0 + BUDGET_GRACE / 2);
        assert_eq!(budget.deadline(), Some(t0 + BUDGET_GRACE), "full since t0");
        assert!(budget.must_evict(t0 + BUDGET_GRACE));
        // Evicting the larger one brings it under the low-water mark.
        assert!(Budget::counted(&a) > Budget::counted(&b));
        budget.release(&a);
        assert!(!budget.must_evict(t0 + BUDGET_GRACE));
        budget.end_turn(t0 + BUDGET_GRACE);
        assert_eq!(budget.deadline(), None);
    }

    /// EOF after complete requests: they are all still taken, and a partial
    /// one is not.
    #[test]
    fn half_closed_client_keeps_its_requests() {
        use std::io::Write;
        let (_poll, mut c, mut peer) = pair();
        let mut input = get("a");
        input.extend_from_slice(&get("b"));
        input.extend_from_slice(b"*2\r\n$3\r\nGET");
        peer.write_all(&input).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut scratch = vec![0u8; 1024];
        let deadline = Instant::now() + Duration::from_secs(5);
        while c
            .read(&Limits::DEFAULT, &mut scratch, usize::MAX, Instant::now())
            .unwrap()
            != ReadStatus::Eof
        {
            assert!(Instant::now() < deadline, "no EOF");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(c.read_closed());
        assert!(!c.may_have_input());
        let now = Instant::now();
        assert_eq!(c.next_request(&Limits::DEFAULT, now).unwrap()[1], "a");
        assert_eq!(c.next_request(&Limits::DEFAULT, now).unwrap()[1], "b");
        assert_eq!(c.next_request(&Limits::DEFAULT, now), None);
    }

    /// The idle deadline runs from the last byte moved while nothing is
    /// pending; a large partial request has its own deadline.
    #[test]
    fn deadlines() {
        use std::io::Write;
        let (_poll, mut c, mut peer) = pair();
        let idle = Some(Duration::from_secs(3));
        let t0 = c.last_active;
        assert_eq!(c.deadline(None), None);
        assert_eq!(c.deadline(idle), Some(t0 + Duration::from_secs(3)));
        assert_eq!(
            c.expired(t0 + Duration::from_secs(3), idle),
            Some(Expiry::Idle)
        );
        // Waiting for an answer is not idle.
        let seq = c.reserve(Kind::Write, WRITE_REPLY_RESERVE);
        assert_eq!(c.deadline(idle), None);
        assert_eq!(c.expired(t0 + Duration::from_secs(60), idle), None);
        c.fill(seq, Reply::Simple("OK"));
        assert!(c.deadline(idle).is_some());

        // A partial request over SLOW_REQUEST_BYTES.
        let mut req = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", 100_000).into_bytes();
        req.extend_from_slice(&[b'v'; SLOW_REQUEST_BYTES]);
        peer.write_all(&req).unwrap();
        read_all(&mut c, req.len(), usize::MAX);
        let t1 = c.partial_since.unwrap();
        assert_eq!(c.next_request(&Limits::DEFAULT, t1), None);
        assert_eq!(c.deadline(None), Some(t1 + SLOW_REQUEST_TIMEOUT));
        assert_eq!(
            c.expired(t1 + SLOW_REQUEST_TIMEOUT, None),
            Some(Expiry::SlowRequest)
        );
        // It completes: no more deadline.
        let rest = 100_000 - SLOW_REQUEST_BYTES;
        let mut tail = vec![b'v'; rest];
        tail.extend_from_slice(b"\r\n");
        peer.write_all(&tail).unwrap();
        read_all(&mut c, req.len() + tail.len(), usize::MAX);
        assert!(c.next_request(&Limits::DEFAULT, Instant::now()).is_some());
        assert_eq!(c.deadline(None), None);
        assert!(c.inbuf.is_empty());
        assert_eq!(c.inbuf.capacity(), 0, "an idle connection holds no buffer");
    }

    #[test]
    fn timer_is_a_lower_bound_with_slack() {
        let t0 = Instant::now();
        let mut t = ClientTimer::new(t0);
        assert_eq!(t.deadline(), None);
        assert!(!t.start_scan(t0 + Duration::from_secs(100)));
        t.note(Some(t0 + Duration::from_secs(5)));
        t.note(Some(t0 + Duration::from_secs(9)));
        t.note(None);
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(5)));
        // Never sooner than TIMER_SLACK after the last scan.
        t.note(Some(t0));
        assert_eq!(t.deadline(), Some(t0 + TIMER_SLACK));
        assert!(!t.start_scan(t0));
        assert!(t.start_scan(t0 + TIMER_SLACK));
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn replies_leave_in_request_order() {
        use std::io::Read;
        let (poll, mut c, mut peer) = pair();
        let w1 = c.reserve(Kind::Write, WRITE_REPLY_RESERVE);
        c.reply_now(Reply::Simple("PONG"));
        let w2 = c.reserve(Kind::Write, WRITE_REPLY_RESERVE);
        assert!(c.must_wait(Some(Kind::Read)));
        assert!(!c.must_wait(Some(Kind::Write)));
        assert!(!c.must_wait(None));
        c.fill(w2, Reply::Integer(2));
        assert!(flush(&poll, &mut c));
        check_accounting(&c);
        c.fill(w1, Reply::Simple("OK"));
        assert!(!c.must_wait(Some(Kind::Read)));
        assert!(flush(&poll, &mut c));
        check_accounting(&c);
        assert_eq!(c.output_bytes(), 0);
        let mut buf = [0u8; 64];
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 16 {
            let n = peer.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..], b"+OK\r\n+PONG\r\n:2\r\n");
    }

    #[test]
    fn a_held_request_resumes_when_the_other_kind_is_answered() {
        let (_poll, mut c, _peer) = pair();
        let w = c.reserve(Kind::Write, WRITE_REPLY_RESERVE);
        let get = vec![Bytes::from("GET"), Bytes::from("k")];
        assert!(c.must_wait(crate::cmd::kind_of(&get, false)));
        c.hold(get.clone());
        assert!(!c.unstall_if_ready());
        c.fill(w, Reply::Simple("OK"));
        assert!(c.unstall_if_ready());
        assert_eq!(c.next_request(&Limits::DEFAULT, Instant::now()), Some(get));
    }

    #[test]
    fn protocol_error_answers_then_closes() {
        let (poll, mut c, _peer) = pair();
        c.inbuf.extend_from_slice(b"*1\r\n$x\r\n");
        assert_eq!(c.next_request(&Limits::DEFAULT, Instant::now()), None);
        assert!(c.closing());
        assert_eq!(
            c.replies.front().and_then(|s| s.reply.as_ref()),
            Some(&Reply::Error(
                "ERR Protocol error: invalid bulk length".into()
            ))
        );
        assert!(!flush(&poll, &mut c), "closes once written");
    }
}
