//! RESP client connections: buffers, ordered replies, back-pressure, and the
//! command table.
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
//! Back-pressure: a connection with [`MAX_PENDING_REPLIES`] unanswered
//! requests, or more than [`OUTPUT_SOFT_LIMIT`] bytes of unsent replies, is
//! not read from until it drains, so a client that does not read its replies
//! is slowed down by TCP instead of growing our buffers. Past
//! [`OUTPUT_HARD_LIMIT`] it is disconnected.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Registry, Token};

use crate::conn::{self, ReadStatus};
use crate::resp::{self, Limits, ProtocolError, Reply, Request};

/// Unanswered requests per connection before it is no longer read.
pub const MAX_PENDING_REPLIES: usize = 1024;
/// Unsent reply bytes per connection before it is no longer read.
pub const OUTPUT_SOFT_LIMIT: usize = 1 << 20;
/// Unsent reply bytes per connection before it is disconnected. Reached only
/// if the requests already accepted produce this much (large `GET`s).
pub const OUTPUT_HARD_LIMIT: usize = 64 << 20;
/// Client connections at most; more are told so and closed, as Redis does.
pub const MAX_CLIENTS: usize = 4096;

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
    /// Reply slots in request order; `None` is still being worked on.
    replies: VecDeque<Option<Reply>>,
    /// Sequence number of `replies[0]`.
    first_seq: u64,
    writable: bool,
    /// Close once every reply is written (after a protocol error or QUIT).
    closing: bool,
    /// The socket was read until `WouldBlock` since its last readable event.
    drained: bool,
    /// Reading stopped because of back-pressure or a held request; resume
    /// once it clears.
    stalled: bool,
    /// A request that must wait for the in-flight ones (program order).
    held: Option<Request>,
    /// Requests answered later (reserved slots), all of `inflight_kind`.
    inflight: usize,
    inflight_kind: Kind,
}

/// Whether a request reads or writes the store, for program order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Served by ReadIndex.
    Read,
    /// Goes through the log.
    Write,
}

impl Client {
    /// Wraps an accepted socket already registered for READABLE.
    pub fn new(id: u64, sock: TcpStream, addr: SocketAddr) -> Client {
        Client {
            id,
            addr,
            sock,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            replies: VecDeque::new(),
            first_seq: 0,
            writable: false,
            closing: false,
            drained: false,
            stalled: false,
            held: None,
            inflight: 0,
            inflight_kind: Kind::Read,
        }
    }

    /// The socket, for (de)registration.
    pub fn sock(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// A readable event arrived: the socket may hold data again.
    pub fn mark_readable(&mut self) {
        self.drained = false;
    }

    /// Whether reading and executing requests should stop for now.
    pub fn paused(&self) -> bool {
        self.replies.len() >= MAX_PENDING_REPLIES || self.out.len() >= OUTPUT_SOFT_LIMIT
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
            .is_some_and(|r| self.must_wait(kind_of(r)));
        if self.stalled && !self.paused() && !held_blocked {
            self.stalled = false;
            return true;
        }
        false
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

    /// Whether the socket may hold unread data.
    pub fn may_have_input(&self) -> bool {
        !self.drained
    }

    /// Reads what the socket has, up to one maximal request beyond what is
    /// buffered.
    pub fn read(&mut self, limits: &Limits) -> io::Result<ReadStatus> {
        let status = conn::read_into(
            &mut self.sock,
            &mut self.inbuf,
            limits.max_request_len + conn::READ_CHUNK,
        )?;
        if status == ReadStatus::Drained {
            self.drained = true;
        }
        Ok(status)
    }

    /// The next complete buffered request. A protocol error queues
    /// `-ERR Protocol error: ...`, marks the connection closing and returns
    /// `None`.
    pub fn next_request(&mut self, limits: &Limits) -> Option<Request> {
        if self.closing {
            return None;
        }
        if let Some(req) = self.held.take() {
            return Some(req);
        }
        match resp::parse_request(&mut self.inbuf, limits) {
            Ok(r) => {
                conn::shrink_if_idle(&mut self.inbuf);
                r
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
        self.inbuf.clear();
    }

    /// Answers the next request at once (in order behind earlier ones).
    pub fn reply_now(&mut self, reply: Reply) {
        self.replies.push_back(Some(reply));
    }

    /// Reserves the next reply slot for an answer that comes later; returns
    /// its sequence number for [`Client::fill`]. Panics if a request of the
    /// other kind is in flight (the caller checks [`Client::must_wait`]).
    pub fn reserve(&mut self, kind: Kind) -> u64 {
        assert!(
            !self.must_wait(Some(kind)),
            "program order: {kind:?} reserved behind the other kind"
        );
        self.inflight_kind = kind;
        self.inflight += 1;
        self.replies.push_back(None);
        self.first_seq + self.replies.len() as u64 - 1
    }

    /// Fills a reserved slot. Panics if `seq` was not reserved or is filled
    /// already (a driver bug).
    pub fn fill(&mut self, seq: u64, reply: Reply) {
        let i = seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.replies.len())
            .unwrap_or_else(|| panic!("reply slot {seq} not reserved on client {}", self.id));
        assert!(self.replies[i].is_none(), "reply slot {seq} filled twice");
        self.replies[i] = Some(reply);
        self.inflight -= 1;
    }

    /// Answers the request after the last one (QUIT) and closes after it.
    pub fn close_after_replies(&mut self) {
        self.closing = true;
    }

    /// Encodes the replies that are ready, in order, and writes what the
    /// socket takes. `Ok(false)`: the connection is done (closing and all
    /// written, or over the hard output limit) and should be closed.
    pub fn flush(&mut self, registry: &Registry, token: Token) -> io::Result<bool> {
        while let Some(Some(_)) = self.replies.front() {
            let Some(Some(reply)) = self.replies.pop_front() else {
                unreachable!()
            };
            self.first_seq += 1;
            reply.encode(&mut self.out);
        }
        let done = conn::write_from(&mut self.sock, &mut self.out)?;
        if done {
            conn::shrink_if_idle(&mut self.out);
            if self.closing && self.replies.is_empty() {
                return Ok(false);
            }
        }
        if self.out.len() > OUTPUT_HARD_LIMIT {
            log::warn!(
                "client {}: {} bytes of replies unread, over the {} byte limit; disconnecting",
                self.addr,
                self.out.len(),
                OUTPUT_HARD_LIMIT
            );
            return Ok(false);
        }
        conn::update_write_interest(registry, &mut self.sock, token, &mut self.writable, done)?;
        Ok(true)
    }
}

/// A command, checked for arity and syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `GET key`: linearizable, through ReadIndex on the leader.
    Get(Bytes),
    /// `SET key value`: through the log.
    Set(Bytes, Bytes),
    /// `DEL key [key ...]`: through the log.
    Del(Vec<Bytes>),
    /// `INFO [section]`: local, no Raft round.
    Info(Option<String>),
    /// `QUIT`: `+OK`, then close.
    Quit,
    /// `COMMAND ...`, `CONFIG GET ...`: clients probe these on connect
    /// (redis-cli, redis-benchmark); an empty array keeps them quiet.
    EmptyArray,
}

/// The [`Kind`] of a raw request, judged by its name.
pub fn kind_of(req: &Request) -> Option<Kind> {
    let name = req.first()?;
    if name.eq_ignore_ascii_case(b"get") {
        Some(Kind::Read)
    } else if name.eq_ignore_ascii_case(b"set") || name.eq_ignore_ascii_case(b"del") {
        Some(Kind::Write)
    } else {
        None
    }
}

/// Parses a request into a [`Command`], or the error reply Redis would give.
pub fn parse_command(args: &[Bytes]) -> Result<Command, Reply> {
    let name = args
        .first()
        .expect("parse_request never yields an empty request");
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    let argc = args.len();
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reply::Error(format!(
                "ERR wrong number of arguments for '{lower}' command"
            )))
        }
    };
    let cmd = match lower.as_str() {
        "ping" => {
            arity(argc <= 2)?;
            Command::Ping(args.get(1).cloned())
        }
        "echo" => {
            arity(argc == 2)?;
            Command::Echo(args[1].clone())
        }
        "get" => {
            arity(argc == 2)?;
            Command::Get(args[1].clone())
        }
        "set" => {
            arity(argc >= 3)?;
            if argc > 3 {
                // SET's options (EX, NX, ...) are not supported.
                return Err(Reply::Error("ERR syntax error".into()));
            }
            Command::Set(args[1].clone(), args[2].clone())
        }
        "del" => {
            arity(argc >= 2)?;
            Command::Del(args[1..].to_vec())
        }
        "info" => {
            arity(argc <= 2)?;
            Command::Info(
                args.get(1)
                    .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()),
            )
        }
        "quit" => Command::Quit,
        "command" => Command::EmptyArray,
        "config" => {
            arity(argc >= 2)?;
            Command::EmptyArray
        }
        _ => return Err(unknown_command(args)),
    };
    Ok(cmd)
}

/// Redis' wording: `ERR unknown command 'foo', with args beginning with: 'a' 'b' `.
fn unknown_command(args: &[Bytes]) -> Reply {
    let show = |b: &Bytes| {
        let s = String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned();
        s.replace(['\r', '\n'], " ")
    };
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        show(&args[0])
    );
    for a in args[1..].iter().take(16) {
        msg.push_str(&format!("'{}' ", show(a)));
    }
    Reply::Error(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn err(v: &[&str]) -> String {
        match parse_command(&args(v)) {
            Err(Reply::Error(e)) => e,
            other => panic!("{v:?} gave {other:?}"),
        }
    }

    #[test]
    fn parses_the_commands() {
        assert_eq!(parse_command(&args(&["PING"])), Ok(Command::Ping(None)));
        assert_eq!(
            parse_command(&args(&["ping", "x"])),
            Ok(Command::Ping(Some(Bytes::from("x"))))
        );
        assert_eq!(
            parse_command(&args(&["GeT", "k"])),
            Ok(Command::Get(Bytes::from("k")))
        );
        assert_eq!(
            parse_command(&args(&["SET", "k", "v"])),
            Ok(Command::Set(Bytes::from("k"), Bytes::from("v")))
        );
        assert_eq!(
            parse_command(&args(&["DEL", "a", "b"])),
            Ok(Command::Del(args(&["a", "b"])))
        );
        assert_eq!(
            parse_command(&args(&["INFO", "Raft"])),
            Ok(Command::Info(Some("raft".into())))
        );
        assert_eq!(
            parse_command(&args(&["COMMAND", "DOCS"])),
            Ok(Command::EmptyArray)
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(&args(&["get", "k"])), Some(Kind::Read));
        assert_eq!(kind_of(&args(&["SET", "k", "v"])), Some(Kind::Write));
        assert_eq!(kind_of(&args(&["Del", "k"])), Some(Kind::Write));
        assert_eq!(kind_of(&args(&["PING"])), None);
        assert_eq!(kind_of(&args(&["INFO"])), None);
    }

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
        (poll, Client::new(1, sock, addr), peer)
    }

    #[test]
    fn replies_leave_in_request_order() {
        use std::io::Read;
        let (poll, mut c, mut peer) = pair();
        let w1 = c.reserve(Kind::Write);
        c.reply_now(Reply::Simple("PONG"));
        let w2 = c.reserve(Kind::Write);
        assert!(c.must_wait(Some(Kind::Read)));
        assert!(!c.must_wait(Some(Kind::Write)));
        assert!(!c.must_wait(None));
        c.fill(w2, Reply::Integer(2));
        assert!(c.flush(poll.registry(), Token(7)).unwrap());
        c.fill(w1, Reply::Simple("OK"));
        assert!(!c.must_wait(Some(Kind::Read)));
        assert!(c.flush(poll.registry(), Token(7)).unwrap());
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
        let w = c.reserve(Kind::Write);
        let get = args(&["GET", "k"]);
        assert!(c.must_wait(kind_of(&get)));
        c.hold(get.clone());
        assert!(!c.unstall_if_ready());
        c.fill(w, Reply::Simple("OK"));
        assert!(c.unstall_if_ready());
        assert_eq!(c.next_request(&Limits::DEFAULT), Some(get));
    }

    #[test]
    fn protocol_error_answers_then_closes() {
        let (poll, mut c, _peer) = pair();
        c.inbuf.extend_from_slice(b"*1\r\n$x\r\n");
        assert_eq!(c.next_request(&Limits::DEFAULT), None);
        assert!(c.closing());
        assert_eq!(
            c.replies.front(),
            Some(&Some(Reply::Error(
                "ERR Protocol error: invalid bulk length".into()
            )))
        );
        assert!(
            !c.flush(poll.registry(), Token(7)).unwrap(),
            "closes once written"
        );
    }

    #[test]
    fn errors_in_redis_words() {
        assert_eq!(
            err(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["set", "k"]),
            "ERR wrong number of arguments for 'set' command"
        );
        assert_eq!(
            err(&["DEL"]),
            "ERR wrong number of arguments for 'del' command"
        );
        assert_eq!(err(&["SET", "k", "v", "NX"]), "ERR syntax error");
        assert_eq!(
            err(&["FOO", "a", "b"]),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            err(&["x\r\ny"]),
            "ERR unknown command 'x  y', with args beginning with: "
        );
    }
}
