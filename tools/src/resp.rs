//! A minimal blocking RESP2 client: enough to send commands to raft-node and
//! read its replies, with timeouts, following `-MOVED` redirects.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A reply from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:n`
    Integer(i64),
    /// `$n` (None for the nil bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*n`
    Array(Vec<Reply>),
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
}

/// Replies larger than this are refused (the client is for small values).
const MAX_REPLY: usize = 64 << 20;

/// One connection.
pub struct Conn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects with `timeout` for the connection and for every later read
    /// and write.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        Conn::connect_timeouts(addr, timeout, timeout)
    }

    /// Connects within `connect`; every later read and write must finish
    /// within `io`.
    pub fn connect_timeouts(addr: SocketAddr, connect: Duration, io: Duration) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, connect)?;
        s.set_read_timeout(Some(io))?;
        s.set_write_timeout(Some(io))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            addr,
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one command without waiting for the reply (pipelining).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&buf)
    }

    /// Reads one reply.
    pub fn read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader, 0)
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.read()
    }

    /// [`Conn::cmd`] with text arguments.
    pub fn call(&mut self, args: &[&str]) -> io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd(&args)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {what}"))
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_REPLY as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("line without CRLF"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| bad("not UTF-8"))
}

fn read_reply(r: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    if depth > 8 {
        return Err(bad("nested too deep"));
    }
    let line = read_line(r)?;
    let (tag, rest) = line.split_at(line.len().min(1));
    let num = || rest.parse::<i64>().map_err(|_| bad("number"));
    match tag {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Integer(num()?)),
        "$" => {
            let n = num()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| bad("length"))?;
            if n > MAX_REPLY {
                return Err(bad("bulk too large"));
            }
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(bad("bulk without CRLF"));
            }
            buf.truncate(n);
            Ok(Reply::Bulk(Some(buf)))
        }
        "*" => {
            let n = num()?;
            if n < 0 {
                return Ok(Reply::Array(Vec::new()));
            }
            let n = usize::try_from(n).map_err(|_| bad("length"))?.min(1 << 16);
            (0..n)
                .map(|_| read_reply(r, depth + 1))
                .collect::<io::Result<_>>()
                .map(Reply::Array)
        }
        _ => Err(bad("unknown type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        read_reply(&mut BufReader::new(bytes), 0)
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"-ERR x\r\n").unwrap(), Reply::Error("ERR x".into()));
        assert_eq!(parse(b":42\r\n").unwrap(), Reply::Integer(42));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(),
            Reply::Array(vec![Reply::Integer(1), Reply::Bulk(Some(b"x".to_vec()))])
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b"$5\r\nab\r\n").is_err());
        assert!(parse(b"+OK").is_err());
        assert!(parse(b"").is_err());
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
}
