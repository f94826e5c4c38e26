//! The log-entry format: how a [`Write`] becomes the bytes of a log entry's
//! payload, and back.
//!
//! **These bytes are an on-disk and on-the-wire format.** They are written
//! into every log segment, they are what AppendEntries carries between
//! members, and a member replays them at start-up, possibly with a later
//! build than the one that wrote them (a rolling upgrade has both builds
//! in one cluster, each applying the other's entries). So a change to any
//! byte here is a format change: every build must keep decoding every
//! version it has ever written, and two builds must never read one entry
//! two ways (`decoding_arbitrary_bytes_never_panics` checks that what
//! decodes encodes back to the same bytes). The unit test
//! `the_encoding_is_byte_for_byte_the_stamped_format` pins the bytes of
//! one entry per opcode; if it fails, you changed the format.
//!
//! # Versions
//!
//! The first byte of a payload says its format. The version in use today
//! is the *stamped* format, first byte [`STAMPED`] (16); the legacy,
//! unstamped formats (first byte 1 and 2) are still read, never written:
//!
//! ```text
//! legacy (read only):  1 | key_len u32 | key | value        SET, no stamp
//!                      2 | count u32 | count x (len u32 | key)   DEL
//! current:            16 | stamp_ms u64 | command
//! command:             op u8 | fields (bytes: len u32 | data; u64; i64; u8)
//! ```
//!
//! Little-endian throughout. The `OP_` codes below are part of the format:
//! writes are 1..=17, reads (inside an `EXEC`) 32..=41; a code is never
//! reused for another meaning. Legacy entries (written before stamps
//! existed) apply with the store clock unchanged. Lengths and counts are
//! checked against what remains before anything is allocated.
//!
//! A new command is a new `OP_` code inside the stamped format: a build
//! that does not know it refuses the entry (and so does every member that
//! decodes it the same way), so it may be proposed only once every member
//! runs a build that knows it. A change to the layout of an existing
//! command, or to the header, is a new format: take a new first byte (17
//! is next), teach one release to read it, and let a later release write
//! it; keep reading 1, 2 and 16 for as long as a log or a snapshot may
//! hold them.

use std::fmt;
use std::io;

use bytes::{BufMut, Bytes, BytesMut};

use super::command::{Command, ExpireCond, SetCond, Ttl};
use super::MAX_TTL_MS;

/// First byte of a legacy, unstamped `SET` entry (read only).
const LEGACY_SET: u8 = 1;
/// First byte of a legacy, unstamped `DEL` entry (read only).
const LEGACY_DEL: u8 = 2;
/// First byte of the current format: a stamp, then a command.
pub(super) const STAMPED: u8 = 16;

/// A write as stored in a log entry: the command and the proposing
/// leader's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The leader's wall clock when it proposed the entry, ms since the
    /// Unix epoch (0 for legacy entries: the store clock does not move).
    pub stamp_ms: u64,
    /// The command.
    pub cmd: Command,
}

/// A log payload or snapshot stream that is not valid. Every member
/// decodes the same log bytes, so every member fails the same way on a bad
/// entry: the driver logs it and applies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub(super) msg: String,
    pub(super) io: Option<io::ErrorKind>,
}

impl DecodeError {
    pub(super) fn new(msg: impl Into<String>) -> DecodeError {
        DecodeError {
            msg: msg.into(),
            io: None,
        }
    }

    #[allow(dead_code)] // the contract of a snapshot read; raft-node logs the message only
    /// Reading failed (rather than the data being invalid): the kind of
    /// the I/O error. A truncated snapshot is invalid data, not I/O.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.io
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DecodeError {}

// ----- Encoding -------------------------------------------------------------

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_GETDEL: u8 = 3;
const OP_GETEX: u8 = 4;
const OP_MSET: u8 = 5;
const OP_MSETNX: u8 = 6;
const OP_INCRBY: u8 = 7;
const OP_APPEND: u8 = 8;
const OP_EXPIRE: u8 = 9;
const OP_PERSIST: u8 = 10;
const OP_FLUSHALL: u8 = 11;
const OP_EXEC: u8 = 12;
const OP_SWEEP: u8 = 13;
const OP_LOCK_ACQUIRE: u8 = 14;
const OP_LOCK_RELEASE: u8 = 15;
const OP_LOCK_EXTEND: u8 = 16;
const OP_FENCED_SET: u8 = 17;
const OP_GET: u8 = 32;
const OP_MGET: u8 = 33;
const OP_EXISTS: u8 = 34;
const OP_TTL: u8 = 35;
const OP_STRLEN: u8 = 36;
const OP_TYPE: u8 = 37;
const OP_DBSIZE: u8 = 38;
const OP_KEYS: u8 = 39;
const OP_SCAN: u8 = 40;
const OP_LOCK_INFO: u8 = 41;

impl Write {
    /// A write of `cmd` stamped `stamp_ms`.
    pub fn new(stamp_ms: u64, cmd: Command) -> Write {
        Write { stamp_ms, cmd }
    }

    /// Encodes the write for a log entry.
    ///
    /// Panics on a length over `u32::MAX` (the client protocol's limits make
    /// it impossible).
    #[cfg(test)]
    pub fn encode(&self) -> Bytes {
        self.encode_in(&mut BytesMut::new())
    }

    /// Encodes the write at the end of `arena` and splits it off: the
    /// writes a leader encodes one after another share the arena's
    /// buffers ([`ENCODE_ARENA`] at a time), so a log entry costs no
    /// allocation of its own, neither for its bytes nor for the shared
    /// header the first clone of a `Bytes` made from a `Vec` allocates.
    /// A buffer is freed once every entry in it is gone (entries leave
    /// the log in order, so that is soon after the last of them).
    pub fn encode_in(&self, arena: &mut BytesMut) -> Bytes {
        let hint = 16 + encoded_hint(&self.cmd);
        if arena.capacity() < hint {
            // `reserve` on a buffer that split-off entries still share
            // allocates a new one; ask for a whole chunk, not one write.
            *arena = BytesMut::with_capacity(hint.max(ENCODE_ARENA));
        }
        arena.put_u8(STAMPED);
        arena.put_u64_le(self.stamp_ms);
        put_cmd(arena, &self.cmd);
        arena.split().freeze()
    }

    /// Decodes a log entry's payload. Keys and values share `payload`'s
    /// buffer. Never panics: a payload is data from disk or the network.
    pub fn decode(payload: &Bytes) -> Result<Write, DecodeError> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let w = match r.u8()? {
            LEGACY_SET => {
                let key = r.bytes("key")?;
                let value = r.rest();
                Write {
                    stamp_ms: 0,
                    cmd: Command::Set {
                        key,
                        value,
                        cond: SetCond::Always,
                        get: false,
                        ttl: Ttl::Clear,
                    },
                }
            }
            LEGACY_DEL => {
                let keys = r.vec(4, "key", |r| r.bytes("key"))?;
                if keys.is_empty() {
                    return Err(DecodeError::new("invalid command: DEL without keys"));
                }
                Write {
                    stamp_ms: 0,
                    cmd: Command::Del { keys },
                }
            }
            STAMPED => {
                let stamp_ms = r.u64()?;
                let cmd = get_cmd(&mut r, true)?;
                Write { stamp_ms, cmd }
            }
            v => {
                return Err(DecodeError::new(format!(
                    "invalid command: unknown format {v}"
                )))
            }
        };
        if r.remaining() != 0 {
            return Err(DecodeError::new(format!(
                "invalid command: {} bytes after its end",
                r.remaining()
            )));
        }
        Ok(w)
    }
}

/// The size of the buffers [`Write::encode_in`] encodes into.
pub const ENCODE_ARENA: usize = 64 << 10;

fn encoded_hint(cmd: &Command) -> usize {
    match cmd {
        Command::Set { key, value, .. } => 32 + key.len() + value.len(),
        _ => 64,
    }
}

fn put_len(b: &mut BytesMut, len: usize) {
    b.put_u32_le(u32::try_from(len).expect("length fits in u32"));
}

fn put_bytes(b: &mut BytesMut, data: &[u8]) {
    put_len(b, data.len());
    b.put_slice(data);
}

fn put_keys(b: &mut BytesMut, keys: &[Bytes]) {
    put_len(b, keys.len());
    for k in keys {
        put_bytes(b, k);
    }
}

fn put_pairs(b: &mut BytesMut, pairs: &[(Bytes, Bytes)]) {
    put_len(b, pairs.len());
    for (k, v) in pairs {
        put_bytes(b, k);
        put_bytes(b, v);
    }
}

fn put_ttl(b: &mut BytesMut, ttl: Ttl) {
    match ttl {
        Ttl::Keep => b.put_u8(0),
        Ttl::Clear => b.put_u8(1),
        Ttl::In(ms) => {
            b.put_u8(2);
            b.put_u64_le(ms);
        }
        Ttl::At(ms) => {
            b.put_u8(3);
            b.put_u64_le(ms);
        }
    }
}

fn put_cmd(b: &mut BytesMut, cmd: &Command) {
    match cmd {
        Command::Set {
            key,
            value,
            cond,
            get,
            ttl,
        } => {
            b.put_u8(OP_SET);
            put_bytes(b, key);
            put_bytes(b, value);
            b.put_u8(match cond {
                SetCond::Always => 0,
                SetCond::Nx => 1,
                SetCond::Xx => 2,
            });
            b.put_u8(u8::from(*get));
            put_ttl(b, *ttl);
        }
        Command::Del { keys } => {
            assert!(!keys.is_empty(), "DEL without keys");
            b.put_u8(OP_DEL);
            put_keys(b, keys);
        }
        Command::GetDel { key } => {
            b.put_u8(OP_GETDEL);
            put_bytes(b, key);
        }
        Command::GetEx { key, ttl } => {
            b.put_u8(OP_GETEX);
            put_bytes(b, key);
            put_ttl(b, *ttl);
        }
        Command::MSet { pairs } => {
            b.put_u8(OP_MSET);
            put_pairs(b, pairs);
        }
        Command::MSetNx { pairs } => {
            b.put_u8(OP_MSETNX);
            put_pairs(b, pairs);
        }
        Command::IncrBy { key, by } => {
            b.put_u8(OP_INCRBY);
            put_bytes(b, key);
            b.put_i64_le(*by);
        }
        Command::Append { key, value } => {
            b.put_u8(OP_APPEND);
            put_bytes(b, key);
            put_bytes(b, value);
        }
        Command::Expire { key, ttl, cond } => {
            b.put_u8(OP_EXPIRE);
            put_bytes(b, key);
            put_ttl(b, *ttl);
            b.put_u8(match cond {
                ExpireCond::Always => 0,
                ExpireCond::Nx => 1,
                ExpireCond::Xx => 2,
                ExpireCond::Gt => 3,
                ExpireCond::Lt => 4,
            });
        }
        Command::Persist { key } => {
            b.put_u8(OP_PERSIST);
            put_bytes(b, key);
        }
        Command::FlushAll => b.put_u8(OP_FLUSHALL),
        Command::Exec { watches, cmds } => {
            b.put_u8(OP_EXEC);
            put_len(b, watches.len());
            for (k, i) in watches {
                put_bytes(b, k);
                b.put_u64_le(*i);
            }
            put_len(b, cmds.len());
            for c in cmds {
                assert!(
                    !matches!(c, Command::Exec { .. } | Command::Sweep),
                    "nested {c:?} in a transaction"
                );
                put_cmd(b, c);
            }
        }
        Command::Sweep => b.put_u8(OP_SWEEP),
        Command::LockAcquire {
            name,
            owner,
            ttl_ms,
        } => {
            b.put_u8(OP_LOCK_ACQUIRE);
            put_bytes(b, name);
            put_bytes(b, owner);
            b.put_u64_le(*ttl_ms);
        }
        Command::LockRelease { name, owner, token } => {
            b.put_u8(OP_LOCK_RELEASE);
            put_bytes(b, name);
            put_bytes(b, owner);
            b.put_u64_le(*token);
        }
        Command::LockExtend {
            name,
            owner,
            token,
            ttl_ms,
        } => {
            b.put_u8(OP_LOCK_EXTEND);
            put_bytes(b, name);
            put_bytes(b, owner);
            b.put_u64_le(*token);
            b.put_u64_le(*ttl_ms);
        }
        Command::FencedSet {
            lock,
            token,
            key,
            value,
        } => {
            b.put_u8(OP_FENCED_SET);
            put_bytes(b, lock);
            b.put_u64_le(*token);
            put_bytes(b, key);
            put_bytes(b, value);
        }
        read => put_read_cmd(b, read),
    }
}

/// The reads (opcodes 32..=41).
fn put_read_cmd(b: &mut BytesMut, cmd: &Command) {
    match cmd {
        Command::Get { key } => {
            b.put_u8(OP_GET);
            put_bytes(b, key);
        }
        Command::MGet { keys } => {
            b.put_u8(OP_MGET);
            put_keys(b, keys);
        }
        Command::Exists { keys } => {
            b.put_u8(OP_EXISTS);
            put_keys(b, keys);
        }
        Command::TimeToLive { key, ms } => {
            b.put_u8(OP_TTL);
            put_bytes(b, key);
            b.put_u8(u8::from(*ms));
        }
        Command::Strlen { key } => {
            b.put_u8(OP_STRLEN);
            put_bytes(b, key);
        }
        Command::Type { key } => {
            b.put_u8(OP_TYPE);
            put_bytes(b, key);
        }
        Command::DbSize => b.put_u8(OP_DBSIZE),
        Command::Keys { pattern } => {
            b.put_u8(OP_KEYS);
            put_bytes(b, pattern);
        }
        Command::Scan {
            cursor,
            pattern,
            count,
        } => {
            b.put_u8(OP_SCAN);
            b.put_u64_le(*cursor);
            match pattern {
                None => b.put_u8(0),
                Some(p) => {
                    b.put_u8(1);
                    put_bytes(b, p);
                }
            }
            b.put_u64_le(*count);
        }
        Command::LockInfo { name } => {
            b.put_u8(OP_LOCK_INFO);
            put_bytes(b, name);
        }
        write => unreachable!("{write:?} is encoded by put_cmd"),
    }
}

fn get_ttl(r: &mut Reader<'_>, keep_ok: bool) -> Result<Ttl, DecodeError> {
    let ttl = match r.u8()? {
        0 if keep_ok => Ttl::Keep,
        1 if keep_ok => Ttl::Clear,
        2 => Ttl::In(r.u64()?),
        3 => Ttl::At(r.u64()?),
        t => return Err(DecodeError::new(format!("invalid command: TTL tag {t}"))),
    };
    if let Ttl::In(ms) | Ttl::At(ms) = ttl {
        if ms == 0 || ms > MAX_TTL_MS {
            return Err(DecodeError::new(format!("invalid command: TTL {ms} ms")));
        }
    }
    Ok(ttl)
}

fn get_cmd(r: &mut Reader<'_>, top: bool) -> Result<Command, DecodeError> {
    let op = r.u8()?;
    let cmd = match op {
        OP_SET => Command::Set {
            key: r.bytes("key")?,
            value: r.bytes("value")?,
            cond: match r.u8()? {
                0 => SetCond::Always,
                1 => SetCond::Nx,
                2 => SetCond::Xx,
                c => return Err(DecodeError::new(format!("invalid command: SET cond {c}"))),
            },
            get: r.flag()?,
            ttl: get_ttl(r, true)?,
        },
        OP_DEL => Command::Del { keys: r.keys()? },
        OP_GETDEL => Command::GetDel {
            key: r.bytes("key")?,
        },
        OP_GETEX => Command::GetEx {
            key: r.bytes("key")?,
            ttl: get_ttl(r, true)?,
        },
        OP_MSET => Command::MSet { pairs: r.pairs()? },
        OP_MSETNX => Command::MSetNx { pairs: r.pairs()? },
        OP_INCRBY => Command::IncrBy {
            key: r.bytes("key")?,
            by: r.u64()? as i64,
        },
        OP_APPEND => Command::Append {
            key: r.bytes("key")?,
            value: r.bytes("value")?,
        },
        OP_EXPIRE => Command::Expire {
            key: r.bytes("key")?,
            ttl: get_ttl(r, false)?,
            cond: match r.u8()? {
                0 => ExpireCond::Always,
                1 => ExpireCond::Nx,
                2 => ExpireCond::Xx,
                3 => ExpireCond::Gt,
                4 => ExpireCond::Lt,
                c => {
                    return Err(DecodeError::new(format!(
                        "invalid command: EXPIRE cond {c}"
                    )))
                }
            },
        },
        OP_PERSIST => Command::Persist {
            key: r.bytes("key")?,
        },
        OP_FLUSHALL => Command::FlushAll,
        OP_EXEC if top => {
            let watches = r.vec(12, "watch", |r| Ok((r.bytes("key")?, r.u64()?)))?;
            let cmds = r.vec(1, "command", |r| get_cmd(r, false))?;
            Command::Exec { watches, cmds }
        }
        OP_SWEEP if top => Command::Sweep,
        OP_LOCK_ACQUIRE => Command::LockAcquire {
            name: r.bytes("lock name")?,
            owner: r.bytes("owner")?,
            ttl_ms: r.ttl_ms()?,
        },
        OP_LOCK_RELEASE => Command::LockRelease {
            name: r.bytes("lock name")?,
            owner: r.bytes("owner")?,
            token: r.u64()?,
        },
        OP_LOCK_EXTEND => Command::LockExtend {
            name: r.bytes("lock name")?,
            owner: r.bytes("owner")?,
            token: r.u64()?,
            ttl_ms: r.ttl_ms()?,
        },
        OP_FENCED_SET => Command::FencedSet {
            lock: r.bytes("lock name")?,
            token: r.u64()?,
            key: r.bytes("key")?,
            value: r.bytes("value")?,
        },
        op => match get_read_cmd(r, op)? {
            Some(cmd) => cmd,
            None => {
                return Err(DecodeError::new(format!(
                    "invalid command: unknown opcode {op}{}",
                    if top { "" } else { " in a transaction" }
                )))
            }
        },
    };
    Ok(cmd)
}

/// A read's fields after its opcode `op`; `None` if `op` is not a read.
fn get_read_cmd(r: &mut Reader<'_>, op: u8) -> Result<Option<Command>, DecodeError> {
    let cmd = match op {
        OP_GET => Command::Get {
            key: r.bytes("key")?,
        },
        OP_MGET => Command::MGet { keys: r.keys()? },
        OP_EXISTS => Command::Exists { keys: r.keys()? },
        OP_TTL => Command::TimeToLive {
            key: r.bytes("key")?,
            ms: r.flag()?,
        },
        OP_STRLEN => Command::Strlen {
            key: r.bytes("key")?,
        },
        OP_TYPE => Command::Type {
            key: r.bytes("key")?,
        },
        OP_DBSIZE => Command::DbSize,
        OP_KEYS => Command::Keys {
            pattern: r.bytes("pattern")?,
        },
        OP_SCAN => Command::Scan {
            cursor: r.u64()?,
            pattern: if r.flag()? {
                Some(r.bytes("pattern")?)
            } else {
                None
            },
            count: match r.u64()? {
                0 => return Err(DecodeError::new("invalid command: SCAN COUNT 0")),
                n => n,
            },
        },
        OP_LOCK_INFO => Command::LockInfo {
            name: r.bytes("lock name")?,
        },
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::new(format!(
                "invalid command: {what} of {n} bytes, only {} left",
                self.remaining()
            )));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "opcode")?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(DecodeError::new(format!("invalid command: flag {f}"))),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "length")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8, "number")?;
        Ok(u64::from_le_bytes(b[..].try_into().expect("8 bytes")))
    }

    fn ttl_ms(&mut self) -> Result<u64, DecodeError> {
        match self.u64()? {
            ms @ 1..=MAX_TTL_MS => Ok(ms),
            ms => Err(DecodeError::new(format!("invalid command: TTL {ms} ms"))),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.take(len, what)
    }

    /// A count, then that many items of at least `min_size` bytes each: a
    /// count beyond what remains is corrupt, and checking first bounds the
    /// allocation.
    fn vec<T>(
        &mut self,
        min_size: usize,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.u32()? as usize;
        if count > self.remaining() / min_size {
            return Err(DecodeError::new(format!(
                "invalid command: {count} x {what} in {} bytes",
                self.remaining()
            )));
        }
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            v.push(item(self)?);
        }
        Ok(v)
    }

    fn keys(&mut self) -> Result<Vec<Bytes>, DecodeError> {
        let keys = self.vec(4, "key", |r| r.bytes("key"))?;
        if keys.is_empty() {
            return Err(DecodeError::new("invalid command: no keys"));
        }
        Ok(keys)
    }

    fn pairs(&mut self) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
        let pairs = self.vec(8, "pair", |r| Ok((r.bytes("key")?, r.bytes("value")?)))?;
        if pairs.is_empty() {
            return Err(DecodeError::new("invalid command: no pairs"));
        }
        Ok(pairs)
    }

    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testing::{b, set};

    /// Writes encoded one after another share the arena's buffer and decode
    /// as encoded alone; one too large for what is left gets a new buffer.
    #[test]
    fn writes_encoded_in_an_arena_share_its_buffer() {
        let mut arena = BytesMut::new();
        let w1 = Write::new(1, set("a", "1"));
        let w2 = Write::new(2, set("b", "2"));
        let p1 = w1.encode_in(&mut arena);
        let p2 = w2.encode_in(&mut arena);
        assert_eq!((p1.clone(), p2.clone()), (w1.encode(), w2.encode()));
        assert_eq!(p1.as_ptr().wrapping_add(p1.len()), p2.as_ptr());
        assert!(arena.capacity() >= ENCODE_ARENA - p1.len() - p2.len() - 64);
        let big = Write::new(3, set("c", &"x".repeat(ENCODE_ARENA)));
        let p3 = big.encode_in(&mut arena);
        assert_eq!(p3, big.encode());
        assert_eq!(Write::decode(&p2).unwrap(), w2);
    }

    /// One command of every kind, with the odd cases (empty key, binary
    /// key, extreme numbers).
    fn corpus() -> Vec<Command> {
        vec![
            set("k", "v"),
            Command::Set {
                key: Bytes::new(),
                value: Bytes::from(vec![0xff; 1000]),
                cond: SetCond::Nx,
                get: true,
                ttl: Ttl::In(5),
            },
            Command::Set {
                key: b("bin\0\r\n"),
                value: b(""),
                cond: SetCond::Xx,
                get: false,
                ttl: Ttl::Keep,
            },
            Command::Del {
                keys: vec![b("a"), b(""), b("a")],
            },
            Command::GetDel { key: b("g") },
            Command::GetEx {
                key: b("g"),
                ttl: Ttl::At(77),
            },
            Command::MSet {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
            },
            Command::MSetNx {
                pairs: vec![(b("a"), b("1"))],
            },
            Command::IncrBy {
                key: b("n"),
                by: i64::MIN,
            },
            Command::Append {
                key: b("s"),
                value: b("xyz"),
            },
            Command::Expire {
                key: b("e"),
                ttl: Ttl::In(MAX_TTL_MS),
                cond: ExpireCond::Lt,
            },
            Command::Persist { key: b("p") },
            Command::FlushAll,
            Command::Exec {
                watches: vec![(b("w"), 9)],
                cmds: vec![set("x", "1"), Command::Get { key: b("x") }],
            },
            Command::Sweep,
            Command::LockAcquire {
                name: b("l"),
                owner: b("o"),
                ttl_ms: 100,
            },
            Command::LockRelease {
                name: b("l"),
                owner: b("o"),
                token: 4,
            },
            Command::LockExtend {
                name: b("l"),
                owner: b("o"),
                token: 4,
                ttl_ms: 1,
            },
            Command::FencedSet {
                lock: b("l"),
                token: 4,
                key: b("k"),
                value: b("v"),
            },
            Command::MGet {
                keys: vec![b("a"), b("b")],
            },
            Command::Exists { keys: vec![b("a")] },
            Command::TimeToLive {
                key: b("a"),
                ms: false,
            },
            Command::Strlen { key: b("a") },
            Command::Type { key: b("a") },
            Command::DbSize,
            Command::Keys { pattern: b("*") },
            Command::Scan {
                cursor: 123,
                pattern: Some(b("a*")),
                count: 10,
            },
            Command::Scan {
                cursor: 0,
                pattern: None,
                count: 1,
            },
            Command::LockInfo { name: b("l") },
        ]
    }

    #[test]
    fn commands_round_trip() {
        for (i, c) in corpus().into_iter().enumerate() {
            let w = Write::new(i as u64 * 1000, c);
            let enc = w.encode();
            assert_eq!(Write::decode(&enc).unwrap(), w);
            // Every truncation is refused, never a panic.
            for n in 0..enc.len() {
                assert!(Write::decode(&enc.slice(..n)).is_err(), "{w:?} prefix {n}");
            }
        }
    }

    /// The bytes of one entry per opcode, as the build before the split of
    /// `kv.rs` (commit 00d8258) wrote them: the format did not move. A
    /// failure here means the encoding changed, which old logs, snapshots
    /// and members still running the previous build will not follow (see
    /// the module doc).
    #[test]
    fn the_encoding_is_byte_for_byte_the_stamped_format() {
        let golden = [
            "10000000000000000001010000006b0100000076000001",
            // 1: 1000 x 0xff elided, see below
            "10e8030000000000000100000000e8030000<ff x 1000>0101020500000000000000",
            "10d007000000000000010600000062696e000d0a00000000020000",
            "10b80b00000000000002030000000100000061000000000100000061",
            "10a00f000000000000030100000067",
            "108813000000000000040100000067034d00000000000000",
            "10701700000000000005020000000100000061010000003101000000620100000032",
            "10581b000000000000060100000001000000610100000031",
            "10401f00000000000007010000006e0000000000000080",
            "1028230000000000000801000000730300000078797a",
            "10102700000000000009010000006502000000000000004004",
            "10f82a0000000000000a0100000070",
            "10e02e0000000000000b",
            "10c8320000000000000c0100000001000000770900000000000000020000000101000000780100000031000001200100000078",
            "10b0360000000000000d",
            "10983a0000000000000e010000006c010000006f6400000000000000",
            "10803e0000000000000f010000006c010000006f0400000000000000",
            "10684200000000000010010000006c010000006f04000000000000000100000000000000",
            "10504600000000000011010000006c0400000000000000010000006b0100000076",
            "10384a000000000000210200000001000000610100000062",
            "10204e00000000000022010000000100000061",
            "10085200000000000023010000006100",
            "10f055000000000000240100000061",
            "10d859000000000000250100000061",
            "10c05d00000000000026",
            "10a86100000000000027010000002a",
            "109065000000000000287b000000000000000102000000612a0a00000000000000",
            "107869000000000000280000000000000000000100000000000000",
            "10606d00000000000029010000006c",
        ];
        let cmds = corpus();
        assert_eq!(cmds.len(), golden.len());
        for (i, (c, hex)) in cmds.into_iter().zip(golden).enumerate() {
            let enc = Write::new(i as u64 * 1000, c).encode();
            let got: String = enc.iter().map(|x| format!("{x:02x}")).collect();
            let want = hex.replace("<ff x 1000>", &"ff".repeat(1000));
            assert_eq!(got, want, "entry {i}");
            assert_eq!(enc[0], STAMPED);
        }
    }

    /// Random bytes and random mutations of valid entries: decoding never
    /// panics, and whatever decodes encodes back to the same bytes (so two
    /// members can never read one entry two ways).
    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid: Vec<Bytes> = [
            set("k", "v"),
            Command::Exec {
                watches: vec![(b("w"), 3)],
                cmds: vec![set("a", "b"), Command::IncrBy { key: b("n"), by: 2 }],
            },
            Command::Scan {
                cursor: 5,
                pattern: Some(b("*")),
                count: 3,
            },
            Command::FencedSet {
                lock: b("l"),
                token: 9,
                key: b("k"),
                value: b("v"),
            },
        ]
        .into_iter()
        .map(|c| Write::new(77, c).encode())
        .collect();
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                valid[round % valid.len()].to_vec()
            } else {
                let len = (next() % 48) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = v.first_mut() {
                    *first = [1, 2, 16][(next() % 3) as usize];
                }
                v
            };
            for _ in 0..(next() % 3) {
                if !bytes.is_empty() {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            let payload = Bytes::from(bytes);
            if let Ok(w) = Write::decode(&payload) {
                if payload[0] == STAMPED {
                    assert_eq!(w.encode(), payload, "{w:?}");
                }
            }
        }
    }

    #[test]
    fn legacy_entries_still_decode() {
        // SET k v and DEL a b as written before stamps existed.
        let set = Bytes::from_static(b"\x01\x01\x00\x00\x00kv");
        assert_eq!(
            Write::decode(&set).unwrap(),
            Write {
                stamp_ms: 0,
                cmd: self::set("k", "v")
            }
        );
        let del = Bytes::from_static(b"\x02\x02\x00\x00\x00\x01\x00\x00\x00a\x01\x00\x00\x00b");
        assert_eq!(
            Write::decode(&del).unwrap().cmd,
            Command::Del {
                keys: vec![b("a"), b("b")]
            }
        );
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let bad: &[&[u8]] = &[
            b"",
            b"\x03",
            b"\x01\x05\x00\x00",
            b"\x01\x05\x00\x00\x00ab",
            b"\x02\x00\x00\x00\x00",
            b"\x02\xff\xff\xff\xff",
            b"\x02\x01\x00\x00\x00\x01\x00\x00\x00",
            b"\x02\x01\x00\x00\x00\x01\x00\x00\x00ab",
            // Stamped: unknown op, nested EXEC, EXEC with a huge count.
            b"\x10\0\0\0\0\0\0\0\0\xee",
            b"\x10\0\0\0\0\0\0\0\0\x0c\0\0\0\0\x01\0\0\0\x0c\0\0\0\0\0\0\0\0",
            b"\x10\0\0\0\0\0\0\0\0\x0c\xff\xff\xff\xff",
            // A zero TTL, a SCAN COUNT 0.
            b"\x10\0\0\0\0\0\0\0\0\x0e\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ];
        for p in bad {
            let e = Write::decode(&Bytes::copy_from_slice(p));
            assert!(e.is_err(), "{p:?} decoded as {e:?}");
        }
    }
}
