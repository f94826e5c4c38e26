//! RESP2, the Redis protocol: an incremental request parser with limits, and
//! reply encoders.
//!
//! Requests are arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), or
//! inline commands (`PING\r\n`) as typed into `telnet`, which Redis accepts
//! too. [`parse_request`] takes bytes off the front of a connection's input
//! buffer only once a whole request is there, so the caller just appends
//! what it reads and calls it in a loop until `Ok(None)`.
//!
//! Malformed input is a [`ProtocolError`] worded like Redis'
//! (`Protocol error: invalid bulk length`); input over one of the
//! [`Limits`] says which, so that a client author can tell a bug from a
//! limit (`Protocol error: invalid bulk length (max 524288 bytes)`). The
//! caller answers it with `-ERR <message>` and closes the connection, as
//! Redis does.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bounds on one request. Every bound is checked against declared lengths
/// before the data arrives, so a client cannot make the server buffer more
/// than `max_request_len` (plus one read) for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Arguments per request at most (command name included). Redis allows
    /// 1M; `DEL` with thousands of keys is the only use for many.
    pub max_args: usize,
    /// Bytes per argument at most.
    pub max_bulk_len: usize,
    /// Encoded bytes per request at most, headers included. Keeps one log
    /// entry (and one AppendEntries frame carrying it) bounded.
    pub max_request_len: usize,
    /// Bytes of an inline command, or of a `*N` / `$N` header line, at most
    /// (Redis' `PROTO_INLINE_MAX_SIZE` is 64 KiB).
    pub max_inline_len: usize,
}

impl Limits {
    /// The server's limits: 1 MiB requests of at most 1024 arguments, each at
    /// most 512 KiB; 64 KiB inline commands.
    pub const DEFAULT: Limits = Limits {
        max_args: 1024,
        max_bulk_len: 512 * 1024,
        max_request_len: 1024 * 1024,
        max_inline_len: 64 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Malformed or oversized input. The connection cannot be resynchronized:
/// answer with `-ERR {self}` and close it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(String);

impl ProtocolError {
    fn new(what: impl fmt::Display) -> Self {
        ProtocolError(format!("Protocol error: {what}"))
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// One request: the command name and its arguments, never empty.
pub type Request = Vec<Bytes>;

/// Takes the next complete request off the front of `buf`.
///
/// `Ok(None)`: no complete request yet (nothing is consumed, apart from
/// empty lines and empty arrays, which Redis also skips); read more and call
/// again. `Err`: the input is malformed or over a limit; `buf` is left as is
/// and the connection must be closed after replying.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Request>, ProtocolError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let parsed = if first == b'*' {
            parse_multibulk(buf, limits)?
        } else {
            parse_inline(buf, limits)?
        };
        match parsed {
            Parsed::Incomplete => return Ok(None),
            Parsed::Request(consumed, args) => {
                buf.advance(consumed);
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(args));
            }
        }
    }
}

enum Parsed {
    Incomplete,
    /// Bytes to consume, and the arguments (empty: nothing to run).
    Request(usize, Request),
}

/// Finds the header line (`*N` or `$N`) starting at `from`, which must end in
/// `\r\n`. `Ok(Some((line_end, next)))`: the line is `buf[from..line_end]`
/// and the next one starts at `next`; `Ok(None)`: not all there yet.
/// Only the first `max_len + 2` bytes are searched.
fn header_line(
    buf: &[u8],
    from: usize,
    max_len: usize,
    what: &str,
) -> Result<Option<(usize, usize)>, ProtocolError> {
    let window = &buf[from..buf
        .len()
        .min(from.saturating_add(max_len).saturating_add(2))];
    let Some(rel) = memchr(b'\r', window) else {
        return Ok(None);
    };
    let cr = from + rel;
    match buf.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((cr, cr + 2))),
        Some(_) => Err(ProtocolError::new(format_args!("invalid {what} length"))),
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Parses a decimal `i64` the way Redis' `string2ll` does: optional `-`, no
/// `+`, no leading zeros, no spaces.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let text = std::str::from_utf8(s).ok()?;
    let v: i64 = text.parse().ok()?;
    if neg && v == 0 {
        return None;
    }
    Some(v)
}

fn parse_multibulk(buf: &BytesMut, limits: &Limits) -> Result<Parsed, ProtocolError> {
    let too_big = || {
        ProtocolError::new(format_args!(
            "too big mbulk count string (max {} bytes)",
            limits.max_inline_len
        ))
    };
    let Some((line_end, mut pos)) = header_line(buf, 0, limits.max_inline_len, "multibulk")? else {
        if buf.len() > limits.max_inline_len {
            return Err(too_big());
        }
        return Ok(Parsed::Incomplete);
    };
    if line_end > limits.max_inline_len {
        return Err(too_big());
    }
    let count = parse_i64(&buf[1..line_end])
        .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
    if count <= 0 {
        // `*0` and `*-1` are no request at all; Redis skips them.
        return Ok(Parsed::Request(pos, Vec::new()));
    }
    if count as u64 > limits.max_args as u64 {
        return Err(too_many_args(limits));
    }
    let count = count as usize;

    // First pass: check every header and find the extent of the request
    // without copying anything, so an incomplete request costs no allocation.
    let mut spans = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some(&marker) = buf.get(pos) else {
            return Ok(Parsed::Incomplete);
        };
        if marker != b'$' {
            return Err(ProtocolError::new(format_args!(
                "expected '$', got '{}'",
                char::from(marker).escape_default()
            )));
        }
        let too_big = || {
            ProtocolError::new(format_args!(
                "too big bulk count string (max {} bytes)",
                limits.max_inline_len
            ))
        };
        let Some((line_end, data_start)) = header_line(buf, pos, limits.max_inline_len, "bulk")?
        else {
            if buf.len() - pos > limits.max_inline_len {
                return Err(too_big());
            }
            return Ok(Parsed::Incomplete);
        };
        if line_end - pos > limits.max_inline_len {
            return Err(too_big());
        }
        let len = parse_i64(&buf[pos + 1..line_end])
            .filter(|&n| n >= 0)
            .ok_or_else(|| ProtocolError::new("invalid bulk length"))?;
        // Over the limit is a different message from malformed: the client
        // may be correct and the value just too large for this server.
        if len as u64 > limits.max_bulk_len as u64 {
            return Err(ProtocolError::new(format_args!(
                "invalid bulk length (max {} bytes)",
                limits.max_bulk_len
            )));
        }
        let data_end = data_start + len as usize;
        if data_end + 2 > limits.max_request_len {
            return Err(request_too_big(limits));
        }
        if buf.len() < data_end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(ProtocolError::new("bulk string not terminated by CRLF"));
        }
        spans.push((data_start, data_end));
        pos = data_end + 2;
    }
    if pos > limits.max_request_len {
        return Err(request_too_big(limits));
    }
    // The caller consumes `pos` bytes; arguments share one allocation.
    let whole = Bytes::copy_from_slice(&buf[..pos]);
    let args = spans.into_iter().map(|(s, e)| whole.slice(s..e)).collect();
    Ok(Parsed::Request(pos, args))
}

fn too_many_args(limits: &Limits) -> ProtocolError {
    ProtocolError::new(format_args!(
        "invalid multibulk length (max {} arguments)",
        limits.max_args
    ))
}

fn request_too_big(limits: &Limits) -> ProtocolError {
    ProtocolError::new(format_args!(
        "too big request (max {} bytes)",
        limits.max_request_len
    ))
}

fn parse_inline(buf: &BytesMut, limits: &Limits) -> Result<Parsed, ProtocolError> {
    let too_big = || {
        ProtocolError::new(format_args!(
            "too big inline request (max {} bytes)",
            limits.max_inline_len
        ))
    };
    let Some(nl) = memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_len {
            return Err(too_big());
        }
        return Ok(Parsed::Incomplete);
    };
    if nl > limits.max_inline_len {
        return Err(too_big());
    }
    let mut line = &buf[..nl];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    let args =
        split_args(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
    if args.len() > limits.max_args {
        return Err(too_many_args(limits));
    }
    Ok(Parsed::Request(nl + 1, args))
}

/// Splits an inline command into arguments like Redis' `sdssplitargs`:
/// whitespace separates, `"..."` supports `\n \r \t \b \a \\ \" \xHH`
/// escapes, `'...'` supports `\'`; a closing quote must be followed by a
/// space or the end. `None` on unbalanced quotes.
fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i == n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < n {
                    cur.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    // The closing quote must end the argument.
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else if in_sq {
                if i == n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else {
                if i == n {
                    break;
                }
                match line[i] {
                    c if c.is_ascii_whitespace() => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
                i += 1;
            }
        }
        args.push(Bytes::from(cur));
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The reply protocol a connection speaks: RESP2 until `HELLO 3` switches
/// it to RESP3 (`HELLO 2` or `RESET` back). Only the shapes RESP3 changes
/// differ: a null is `_`, a map is `%`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every client's start.
    #[default]
    Resp2,
    /// RESP3 (`HELLO 3`).
    Resp3,
}

/// A reply to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+text`; the text must not contain CR or LF.
    Simple(&'static str),
    /// `-message`, e.g. `ERR unknown command` or `MOVED 3999 host:port`; CR and
    /// LF in it are replaced by spaces.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$len` and the bytes.
    Bulk(Bytes),
    /// `$-1`: no such key.
    Nil,
    /// `*-1`: the nil array of an aborted `EXEC`.
    NilArray,
    /// `*n` and the elements.
    Array(Vec<Reply>),
    /// Key-value pairs: a RESP3 map (`%n`), or in RESP2 an array of 2n
    /// elements (as Redis answers `HELLO 2`, `CONFIG GET`).
    Map(Vec<(Reply, Reply)>),
    /// A reply already encoded for the connection's protocol (a walk of
    /// the key space, encoded off the loop: see `crate::walks`).
    Encoded(Bytes),
}

impl Reply {
    /// The exact number of bytes [`Reply::encode`] appends, without
    /// encoding: a client's output limits count replies before they are
    /// encoded (see `client`).
    pub fn encoded_len(&self, p: Protocol) -> usize {
        match self {
            Reply::Simple(s) => s.len() + 3,
            Reply::Error(e) => e.len() + 3,
            Reply::Integer(n) => n.to_string().len() + 3,
            Reply::Bulk(b) => bulk_len(b.len()),
            Reply::Encoded(b) => b.len(),
            Reply::Nil | Reply::NilArray if p == Protocol::Resp3 => 3,
            Reply::Nil | Reply::NilArray => 5,
            Reply::Array(items) => {
                items.len().to_string().len()
                    + 3
                    + items.iter().map(|r| r.encoded_len(p)).sum::<usize>()
            }
            Reply::Map(pairs) => {
                let n = match p {
                    Protocol::Resp2 => pairs.len() * 2,
                    Protocol::Resp3 => pairs.len(),
                };
                n.to_string().len()
                    + 3
                    + pairs
                        .iter()
                        .map(|(k, v)| k.encoded_len(p) + v.encoded_len(p))
                        .sum::<usize>()
            }
        }
    }

    /// Appends the encoded reply to `out`, in protocol `p`.
    pub fn encode(&self, out: &mut BytesMut, p: Protocol) {
        match self {
            Reply::Simple(s) => simple(out, s),
            Reply::Error(e) => error(out, e),
            Reply::Integer(n) => integer(out, *n),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Encoded(b) => out.put_slice(b),
            Reply::Nil | Reply::NilArray if p == Protocol::Resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => nil(out),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                out.put_u8(b'*');
                out.put_slice(items.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(out, p);
                }
            }
            Reply::Map(pairs) => {
                let (tag, n) = match p {
                    Protocol::Resp2 => (b'*', pairs.len() * 2),
                    Protocol::Resp3 => (b'%', pairs.len()),
                };
                out.put_u8(tag);
                out.put_slice(n.to_string().as_bytes());
                out.put_slice(b"\r\n");
                for (k, v) in pairs {
                    k.encode(out, p);
                    v.encode(out, p);
                }
            }
        }
    }
}

/// Appends `+text\r\n`. Panics if `text` holds CR or LF (caller bug: simple
/// strings are fixed words like `OK` and `PONG`).
pub fn simple(out: &mut BytesMut, text: &str) {
    assert!(
        !text.contains(['\r', '\n']),
        "simple string with CR/LF: {text:?}"
    );
    out.reserve(text.len() + 3);
    out.put_u8(b'+');
    out.put_slice(text.as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends `-message\r\n`, with any CR or LF in `message` (which may quote
/// client input) replaced by a space so that the reply stays one line.
pub fn error(out: &mut BytesMut, message: &str) {
    out.reserve(message.len() + 3);
    out.put_u8(b'-');
    for &b in message.as_bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

/// Appends `:n\r\n`.
pub fn integer(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

/// The encoded size of a bulk string of `len` bytes: `$len\r\n`, the
/// data, `\r\n`.
pub fn bulk_len(len: usize) -> usize {
    let mut digits = 1;
    let mut n = len;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    1 + digits + 2 + len + 2
}

/// Appends `$len\r\n` + `data` + `\r\n`.
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 16);
    out.put_u8(b'$');
    out.put_slice(data.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends the nil bulk string `$-1\r\n`.
pub fn nil(out: &mut BytesMut) {
    out.put_slice(b"$-1\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = parse_request(&mut buf, &Limits::DEFAULT)? {
            out.push(req.iter().map(|b| b.to_vec()).collect());
        }
        assert!(buf.is_empty(), "left over: {:?}", buf);
        Ok(out)
    }

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn err(input: &[u8], limits: &Limits) -> String {
        let mut buf = BytesMut::from(input);
        parse_request(&mut buf, limits).unwrap_err().to_string()
    }

    #[test]
    fn parses_arrays_of_bulk_strings() {
        let r = parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\n\0x\r\n").unwrap();
        assert_eq!(r, vec![args(&["SET", "k", "v\r\n\0x"])]);
        // Empty argument, pipelining.
        let r = parse_all(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(r, vec![args(&["GET", ""]), args(&["PING"])]);
    }

    #[test]
    fn empty_arrays_and_lines_are_skipped() {
        let r = parse_all(b"*0\r\n\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(r, vec![args(&["PING"])]);
    }

    #[test]
    fn incremental_byte_by_byte() {
        let input = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING\r\n*1\r\n$4\r\nINFO\r\n";
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.put_u8(b);
            while let Some(req) = parse_request(&mut buf, &Limits::DEFAULT).unwrap() {
                got.push(req);
            }
        }
        assert_eq!(
            got,
            vec![
                vec![Bytes::from("GET"), Bytes::from("key")],
                vec![Bytes::from("PING")],
                vec![Bytes::from("INFO")],
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_consumes_nothing() {
        let input = &b"*2\r\n$3\r\nGET\r\n$3\r\nke"[..];
        let mut buf = BytesMut::from(input);
        assert_eq!(parse_request(&mut buf, &Limits::DEFAULT).unwrap(), None);
        assert_eq!(&buf[..], input);
    }

    #[test]
    fn inline_commands() {
        let r = parse_all(b"PING\r\nset k \"a b\\n\\x41\"\n  get   'it\\'s'  \r\n").unwrap();
        assert_eq!(
            r,
            vec![
                args(&["PING"]),
                args(&["set", "k", "a b\nA"]),
                args(&["get", "it's"])
            ]
        );
        assert_eq!(
            err(b"set k \"abc\r\n", &Limits::DEFAULT),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            err(b"set k \"abc\"x\r\n", &Limits::DEFAULT),
            "Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn malformed_input_is_refused_in_redis_words() {
        let l = Limits::DEFAULT;
        assert_eq!(
            err(b"*x\r\n", &l),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*+1\r\n", &l),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*1\r\n$x\r\n", &l),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$-1\r\n", &l),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n:1\r\n", &l),
            "Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            err(b"*1\rx", &l),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*1\n$1\r\n", &l),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*1\r\n$1\rx", &l),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$3\r\nGETxx", &l),
            "Protocol error: bulk string not terminated by CRLF"
        );
    }

    /// Each limit's error names it, so a client author can tell "too
    /// large for this server" from "malformed".
    #[test]
    fn limits_are_enforced_before_the_data_arrives() {
        let l = Limits {
            max_args: 3,
            max_bulk_len: 10,
            max_request_len: 30,
            max_inline_len: 16,
        };
        assert_eq!(
            err(b"*4\r\n", &l),
            "Protocol error: invalid multibulk length (max 3 arguments)"
        );
        assert_eq!(
            err(b"*1\r\n$11\r\n", &l),
            "Protocol error: invalid bulk length (max 10 bytes)"
        );
        assert_eq!(
            err(b"*3\r\n$10\r\n0123456789\r\n$10\r\n", &l),
            "Protocol error: too big request (max 30 bytes)"
        );
        assert_eq!(
            err(&[b'a'; 17], &l),
            "Protocol error: too big inline request (max 16 bytes)"
        );
        assert_eq!(
            err(b"a b c d\r\n", &l),
            "Protocol error: invalid multibulk length (max 3 arguments)"
        );
        let mut long_count = b"*".to_vec();
        long_count.extend_from_slice(&[b'1'; 17]);
        assert_eq!(
            err(&long_count, &l),
            "Protocol error: too big mbulk count string (max 16 bytes)"
        );
        let mut long_bulk = b"*1\r\n$".to_vec();
        long_bulk.extend_from_slice(&[b'1'; 17]);
        assert_eq!(
            err(&long_bulk, &l),
            "Protocol error: too big bulk count string (max 16 bytes)"
        );
        // A huge declared length with no data is refused, not buffered.
        assert_eq!(
            err(b"*1\r\n$9223372036854775807\r\n", &Limits::DEFAULT),
            "Protocol error: invalid bulk length (max 524288 bytes)"
        );
        assert_eq!(
            err(b"*1\r\n$524289\r\n", &Limits::DEFAULT),
            "Protocol error: invalid bulk length (max 524288 bytes)"
        );
        assert_eq!(
            err(b"*99999999999999999999\r\n", &Limits::DEFAULT),
            "Protocol error: invalid multibulk length"
        );
        // Within limits, it parses.
        let mut buf = BytesMut::from(&b"*2\r\n$10\r\n0123456789\r\n$1\r\nx\r\n"[..]);
        assert!(parse_request(&mut buf, &l).unwrap().is_some());
    }

    #[test]
    fn integer_parsing_matches_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"01",
            b"-0",
            b"+1",
            b" 1",
            b"1 ",
            b"92233720368547758070",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn encoders() {
        let mut out = BytesMut::new();
        let p = Protocol::Resp2;
        Reply::Simple("OK").encode(&mut out, p);
        Reply::Error("MOVED 0 127.0.0.1:6401".into()).encode(&mut out, p);
        Reply::Error("ERR bad\r\ninjected".into()).encode(&mut out, p);
        Reply::Integer(-3).encode(&mut out, p);
        Reply::Bulk(Bytes::from_static(b"a\r\nb")).encode(&mut out, p);
        Reply::Bulk(Bytes::new()).encode(&mut out, p);
        Reply::Nil.encode(&mut out, p);
        Reply::Array(vec![]).encode(&mut out, p);
        Reply::Array(vec![Reply::Integer(1), Reply::Nil]).encode(&mut out, p);
        assert_eq!(
            &out[..],
            &b"+OK\r\n-MOVED 0 127.0.0.1:6401\r\n-ERR bad  injected\r\n:-3\r\n$4\r\na\r\nb\r\n$0\r\n\r\n$-1\r\n*0\r\n*2\r\n:1\r\n$-1\r\n"[..]
        );
    }

    #[test]
    fn resp3_differs_only_in_nulls_and_maps() {
        let r = Reply::Array(vec![
            Reply::Nil,
            Reply::Map(vec![(
                Reply::Bulk(Bytes::from_static(b"proto")),
                Reply::Integer(3),
            )]),
        ]);
        let mut two = BytesMut::new();
        r.encode(&mut two, Protocol::Resp2);
        assert_eq!(&two[..], &b"*2\r\n$-1\r\n*2\r\n$5\r\nproto\r\n:3\r\n"[..]);
        let mut three = BytesMut::new();
        r.encode(&mut three, Protocol::Resp3);
        assert_eq!(&three[..], &b"*2\r\n_\r\n%1\r\n$5\r\nproto\r\n:3\r\n"[..]);
    }

    #[test]
    fn encoded_len_is_exact() {
        let big = Bytes::from(vec![b'x'; 123_456]);
        for r in [
            Reply::Simple("OK"),
            Reply::Error("MOVED 0 127.0.0.1:6401".into()),
            Reply::Error("ERR a\r\nb".into()),
            Reply::Integer(0),
            Reply::Integer(-1234567),
            Reply::Integer(i64::MIN),
            Reply::Bulk(Bytes::new()),
            Reply::Bulk(Bytes::from_static(b"123456789")),
            Reply::Bulk(Bytes::from_static(b"1234567890")),
            Reply::Bulk(big),
            Reply::Nil,
            Reply::Array(vec![]),
            Reply::Array(vec![Reply::Integer(1); 12]),
            Reply::Array(vec![Reply::Nil, Reply::Bulk(Bytes::from_static(b"x"))]),
            Reply::Map(vec![(Reply::Bulk(Bytes::from_static(b"k")), Reply::Nil); 6]),
        ] {
            for p in [Protocol::Resp2, Protocol::Resp3] {
                let mut out = BytesMut::new();
                r.encode(&mut out, p);
                assert_eq!(r.encoded_len(p), out.len(), "{r:?} in {p:?}");
            }
        }
        assert_eq!(bulk_len(0), 6);
        assert_eq!(bulk_len(524_288), 524_288 + 11);
    }

    /// Arbitrary bytes never panic, and whatever parses re-encodes to a
    /// request that parses to the same arguments.
    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"*$\r\n0123456789-abc \"'\\x";
        for _ in 0..20_000 {
            let mut input = BytesMut::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 40) as usize;
            for i in 0..n {
                let r = x.rotate_left(i as u32 * 5);
                input.put_u8(alphabet[(r % alphabet.len() as u64) as usize]);
            }
            while let Ok(Some(req)) = parse_request(&mut input, &Limits::DEFAULT) {
                let mut enc = BytesMut::new();
                enc.put_slice(format!("*{}\r\n", req.len()).as_bytes());
                for a in &req {
                    bulk(&mut enc, a);
                }
                assert_eq!(
                    parse_request(&mut enc, &Limits::DEFAULT).unwrap(),
                    Some(req)
                );
            }
        }
    }
}
