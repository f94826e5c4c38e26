//! The one RESP2 client of the tools and the process-level tests.
//!
//! - [`parse_reply`] turns bytes into a [`Reply`]: the only RESP parser on
//!   the client side. It works on a buffer and says when it needs more
//!   bytes, so a pipelining caller (raft-load) and a blocking one share it.
//! - [`encode_command`] turns a command into bytes.
//! - [`Conn`] is a blocking connection built on both: send, read, pipeline,
//!   with the socket's timeouts ([`Conn::read`]) or with a deadline of the
//!   caller's ([`Conn::read_before`]).
//!
//! Every length the server sends is checked against a bound before anything
//! is allocated for it; a reply that breaks one is a [`ProtocolError`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A reply from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:n`
    Integer(i64),
    /// `$n` (None for the nil bulk string `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*n`
    Array(Vec<Reply>),
    /// `*-1`: the nil array (an `EXEC` aborted by `WATCH`).
    NilArray,
}

impl Reply {
    /// The leader's client address, if this is a `-MOVED <slot> host:port` redirect.
    pub fn moved_to(&self) -> Option<SocketAddr> {
        match self {
            Reply::Error(e) => e
                .strip_prefix("MOVED ")?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok(),
            _ => None,
        }
    }

    /// The number a bulk string holds (`GET` of a counter): `Some(0)` for
    /// nil, `None` for anything that is not a bulk string of a number.
    pub fn bulk_i64(&self) -> Option<i64> {
        match self {
            Reply::Bulk(None) => Some(0),
            Reply::Bulk(Some(b)) => parse_int(b).ok(),
            _ => None,
        }
    }
}

/// The server sent something that is not RESP2, or that breaks a bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bulk string longer than this is a protocol error.
pub const MAX_BULK_LEN: usize = 64 << 20;
/// Elements in one array reply at most.
pub const MAX_ARRAY_LEN: usize = 1 << 20;
/// Nesting of array replies at most.
pub const MAX_DEPTH: u32 = 8;
/// A header line (`+`, `-`, `:`, `$n`, `*n`) longer than this is a
/// protocol error.
const MAX_LINE: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Appends `args` as a RESP2 array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// `args` as a RESP2 array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_command(&mut out, args);
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the reply and the number of bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], pos: usize, depth: u32) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("arrays nested too deep".into()));
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(line_end) = find_crlf(buf, pos + 1) else {
        if buf.len() - pos > MAX_LINE {
            return Err(ProtocolError("header line too long".into()));
        }
        return Ok(None);
    };
    let line = &buf[pos + 1..line_end];
    let after = line_end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), after))),
        b'-' => Ok(Some((Reply::Error(text()), after))),
        b':' => Ok(Some((Reply::Integer(parse_int(line)?), after))),
        b'$' => {
            let n = parse_int(line)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_BULK_LEN)
                .ok_or_else(|| ProtocolError(format!("bad bulk length {n}")))?;
            let end = after + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not followed by CRLF".into()));
            }
            Ok(Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = parse_int(line)?;
            if n == -1 {
                return Ok(Some((Reply::NilArray, after)));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_ARRAY_LEN)
                .ok_or_else(|| ProtocolError(format!("bad array length {n}")))?;
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((item, next)) => {
                        items.push(item);
                        at = next;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => Err(ProtocolError(format!(
            "unknown reply type byte {other:#04x}"
        ))),
    }
}

/// How far the reply at the front of a buffer is known to be there, kept
/// between reads: a reply arriving in many reads is scanned once in all,
/// then parsed once. (Parsing it whole after every read made a 20 MB
/// `KEYS` reply of a million keys take minutes to read.)
#[derive(Debug, Default)]
struct Scan {
    /// Where the next element to check starts.
    pos: usize,
    /// Elements still expected by each open array, outermost first.
    open: Vec<u64>,
}

impl Scan {
    /// Whether a whole reply is at the front of `buf` (which may have grown
    /// since the last call, never changed before `pos`).
    fn complete(&mut self, buf: &[u8]) -> Result<bool, ProtocolError> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(false);
            };
            let Some(line_end) = find_crlf(buf, self.pos + 1) else {
                if buf.len() - self.pos > MAX_LINE {
                    return Err(ProtocolError("header line too long".into()));
                }
                return Ok(false);
            };
            let line = &buf[self.pos + 1..line_end];
            let after = line_end + 2;
            match kind {
                b'+' | b'-' | b':' => self.pos = after,
                b'$' => match parse_int(line)? {
                    -1 => self.pos = after,
                    n => {
                        let end = usize::try_from(n)
                            .ok()
                            .filter(|&n| n <= MAX_BULK_LEN)
                            .ok_or_else(|| ProtocolError(format!("bad bulk length {n}")))?
                            + after
                            + 2;
                        if buf.len() < end {
                            return Ok(false);
                        }
                        self.pos = end;
                    }
                },
                b'*' => {
                    let n = parse_int(line)?;
                    self.pos = after;
                    if n > 0 {
                        if self.open.len() as u32 >= MAX_DEPTH {
                            return Err(ProtocolError("arrays nested too deep".into()));
                        }
                        self.open.push(n as u64);
                        continue;
                    }
                }
                other => {
                    return Err(ProtocolError(format!(
                        "unknown reply type byte {other:#04x}"
                    )))
                }
            }
            // One element is whole: it counts for the array it is in, and
            // an array whose last element it was is whole in its turn.
            loop {
                let Some(left) = self.open.last_mut() else {
                    return Ok(true);
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }
}

/// Index of the first `\r\n` at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// A decimal integer, as RESP writes lengths and integers (and as the
/// server writes numbers into bulk strings).
fn parse_int(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError(format!("bad integer {:?}", String::from_utf8_lossy(line))))
}

/// Why a read gave up.
#[derive(Debug)]
pub enum ReadError {
    /// The socket failed (including its own read timeout, for
    /// [`Conn::read`]).
    Io(io::Error),
    /// The server closed the connection.
    Eof,
    /// The server sent something that is not RESP2.
    Protocol(ProtocolError),
    /// The caller's deadline passed ([`Conn::read_before`]).
    TimedOut,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "connection error: {e}"),
            ReadError::Eof => write!(f, "connection closed by server"),
            ReadError::Protocol(e) => write!(f, "protocol error: {e}"),
            ReadError::TimedOut => write!(f, "no reply before the deadline"),
        }
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Io(e) => e,
            ReadError::Eof => io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            ReadError::Protocol(p) => {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {p}"))
            }
            ReadError::TimedOut => io::Error::new(io::ErrorKind::TimedOut, "no reply in time"),
        }
    }
}

/// One blocking connection with its read buffer. It has the timeouts its
/// stream was given: [`Conn::connect`] sets them, [`Conn::new`] keeps
/// whatever the caller set.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    start: usize,
    /// How much of the next reply has arrived.
    scan: Scan,
}

impl Conn {
    /// Wraps a connected stream, keeping its settings.
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            start: 0,
            scan: Scan::default(),
        }
    }

    /// Connects with `timeout` for the connection and for every later read
    /// and write.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        Conn::connect_timeouts(addr, timeout, timeout)
    }

    /// Connects within `connect`; every later read and write must finish
    /// within `io`. Without Nagle's delay.
    pub fn connect_timeouts(addr: SocketAddr, connect: Duration, io: Duration) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, connect)?;
        s.set_read_timeout(Some(io))?;
        s.set_write_timeout(Some(io))?;
        s.set_nodelay(true)?;
        Ok(Conn::new(s))
    }

    /// The socket, to change its timeouts or shut it down.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes raw bytes (a pipeline encoded with [`encode_command`], or
    /// something that is not RESP at all).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one command without waiting for the reply (pipelining).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.stream.write_all(&encode(args))
    }

    /// Reads one reply; the socket's read timeout is an error.
    pub fn read(&mut self) -> io::Result<Reply> {
        self.read_inner(None).map_err(io::Error::from)
    }

    /// Reads one reply, waiting through the socket's read timeouts until
    /// `deadline` (set a short read timeout: it is how often the clock is
    /// looked at).
    pub fn read_before(&mut self, deadline: Instant) -> Result<Reply, ReadError> {
        self.read_inner(Some(deadline))
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args)
    }

    /// [`Conn::cmd`] with binary arguments.
    pub fn cmd_bytes(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.read()
    }

    fn read_inner(&mut self, deadline: Option<Instant>) -> Result<Reply, ReadError> {
        loop {
            let whole = self
                .scan
                .complete(&self.buf[self.start..])
                .map_err(ReadError::Protocol)?;
            let parsed = if whole {
                parse_reply(&self.buf[self.start..])
            } else {
                Ok(None)
            };
            match parsed {
                Ok(Some((reply, used))) => {
                    self.scan = Scan::default();
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Protocol(e)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ReadError::TimedOut);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; READ_CHUNK];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if deadline.is_some()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
        parse_reply(bytes)
    }

    /// The resumable scan says "whole" exactly when the parser finds a
    /// whole reply, fed one byte at a time, for every reply type.
    #[test]
    fn the_scan_agrees_with_the_parser_on_every_prefix() {
        let replies: [&[u8]; 8] = [
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n*0\r\n$-1\r\n",
        ];
        for r in replies {
            let mut scan = Scan::default();
            for end in 0..=r.len() {
                let whole = scan.complete(&r[..end]).unwrap();
                let parsed = parse_reply(&r[..end]).unwrap();
                assert_eq!(
                    whole,
                    parsed.is_some(),
                    "{:?} at {end}",
                    String::from_utf8_lossy(r)
                );
                if whole {
                    assert_eq!(parsed.unwrap().1, r.len());
                }
            }
        }
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(encode(&[b"SET", b"k", b""]), out);
    }

    #[test]
    fn parses_every_reply_type() {
        let buf = b"+OK\r\n-MOVED 0 127.0.0.1:6401\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n:1\r\n$-1\r\n*-1\r\n*0\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while at < buf.len() {
            let (r, used) = parse(&buf[at..]).unwrap().unwrap();
            got.push(r);
            at += used;
        }
        assert_eq!(
            got,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("MOVED 0 127.0.0.1:6401".into()),
                Reply::Integer(-3),
                Reply::Bulk(Some(b"a\r\nb".to_vec())),
                Reply::Bulk(None),
                Reply::Array(vec![Reply::Integer(1), Reply::Bulk(None)]),
                Reply::NilArray,
                Reply::Array(Vec::new()),
            ]
        );
    }

    #[test]
    fn partial_replies_ask_for_more() {
        let full = b"*2\r\n$3\r\nabc\r\n:7\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"*-5\r\n",
            b"$99999999999\r\n",
            b"*2000000\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut deep = b"*1\r\n".repeat(MAX_DEPTH as usize + 2);
        deep.extend_from_slice(b":1\r\n");
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn moved_redirect() {
        let r = Reply::Error("MOVED 0 127.0.0.2:6402".into());
        assert_eq!(r.moved_to(), Some("127.0.0.2:6402".parse().unwrap()));
        assert_eq!(
            Reply::Error("CLUSTERDOWN no leader".into()).moved_to(),
            None
        );
    }

    #[test]
    fn numbers_in_bulk_strings() {
        assert_eq!(Reply::Bulk(Some(b"-12".to_vec())).bulk_i64(), Some(-12));
        assert_eq!(Reply::Bulk(None).bulk_i64(), Some(0));
        assert_eq!(Reply::Bulk(Some(b"x".to_vec())).bulk_i64(), None);
        assert_eq!(Reply::Integer(3).bulk_i64(), None);
    }

    #[test]
    fn a_connection_reads_pipelined_replies_split_anyhow() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 14];
            s.read_exact(&mut req).unwrap();
            assert_eq!(&req, b"*1\r\n$4\r\nPING\r\n");
            for part in [&b"+PO"[..], b"NG\r\n$3\r", b"\nabc\r\n"] {
                s.write_all(part).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut c = Conn::connect(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(c.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            c.read_before(deadline).unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        server.join().unwrap();
        assert!(matches!(c.read_before(deadline), Err(ReadError::Eof)));
    }
}
