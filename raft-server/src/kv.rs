//! The replicated key-value state machine.
//!
//! Writes travel through the Raft log as [`Command`]s encoded to bytes; every
//! member applies the committed ones in log order, so every member's [`Kv`]
//! goes through the same states. Applying depends on nothing but the store
//! and the command (no clock, no randomness, no iteration order), which is
//! what keeps the replicas identical.
//!
//! Encoding (little-endian), versioned by its first byte so that a future
//! format can be told apart from a corrupt one:
//!
//! ```text
//! SET: 1 | key_len u32 | key | value (the rest)
//! DEL: 2 | count u32 (>= 1) | count x (key_len u32 | key)
//! ```

use std::collections::HashMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;

/// A write, as stored in a log entry's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `SET key value`: replies `+OK`.
    Set {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// `DEL key [key ...]`: replies how many of the keys existed.
    Del {
        /// The keys, at least one; duplicates count once (as in Redis).
        keys: Vec<Bytes>,
    },
}

/// A log payload that is not a valid [`Command`]. Every member decodes the
/// same bytes, so every member fails the same way: the driver logs it and
/// applies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid command: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Command {
    /// Encodes the command for a log entry.
    ///
    /// Panics on a `Del` without keys or a key longer than `u32::MAX` bytes
    /// (the client protocol's limits make both impossible).
    pub fn encode(&self) -> Bytes {
        match self {
            Command::Set { key, value } => {
                let mut b = BytesMut::with_capacity(5 + key.len() + value.len());
                b.put_u8(OP_SET);
                put_len(&mut b, key.len());
                b.put_slice(key);
                b.put_slice(value);
                b.freeze()
            }
            Command::Del { keys } => {
                assert!(!keys.is_empty(), "DEL without keys");
                let size = 5 + keys.iter().map(|k| 4 + k.len()).sum::<usize>();
                let mut b = BytesMut::with_capacity(size);
                b.put_u8(OP_DEL);
                put_len(&mut b, keys.len());
                for k in keys {
                    put_len(&mut b, k.len());
                    b.put_slice(k);
                }
                b.freeze()
            }
        }
    }

    /// Decodes a log entry's payload. The keys and value share `payload`'s
    /// buffer. Never panics: a payload is data from disk or the network.
    pub fn decode(payload: &Bytes) -> Result<Command, DecodeError> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let cmd = match r.u8()? {
            OP_SET => {
                let key_len = r.u32()? as usize;
                let key = r.take(key_len, "key")?;
                let value = r.rest();
                Command::Set { key, value }
            }
            OP_DEL => {
                let count = r.u32()? as usize;
                if count == 0 {
                    return Err(DecodeError("DEL without keys".into()));
                }
                // Each key takes at least its 4-byte length: a count beyond
                // that is corrupt, and checking first bounds the allocation.
                if count > r.remaining() / 4 {
                    return Err(DecodeError(format!(
                        "DEL of {count} keys in {} bytes",
                        r.remaining()
                    )));
                }
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    let len = r.u32()? as usize;
                    keys.push(r.take(len, "key")?);
                }
                if r.remaining() != 0 {
                    return Err(DecodeError(format!(
                        "{} bytes after the last key",
                        r.remaining()
                    )));
                }
                Command::Del { keys }
            }
            op => return Err(DecodeError(format!("unknown opcode {op}"))),
        };
        Ok(cmd)
    }
}

fn put_len(b: &mut BytesMut, len: usize) {
    b.put_u32_le(u32::try_from(len).expect("length fits in u32"));
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
            return Err(DecodeError(format!(
                "{what} of {n} bytes, only {} left",
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

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "length")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }
}

/// What applying a command produced, for the client that proposed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `SET` done: `+OK`.
    Ok,
    /// `DEL` done: this many keys existed (`:n`).
    Deleted(u64),
}

/// The key-value store.
#[derive(Debug, Default)]
pub struct Kv {
    map: HashMap<Bytes, Bytes>,
}

impl Kv {
    /// An empty store.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Applies a committed command.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match cmd {
            Command::Set { key, value } => {
                // Copy out of the entry's buffer: a recovered entry's payload
                // is a slice of the whole log file read at start-up, which a
                // stored slice would keep alive.
                self.map
                    .insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
                Outcome::Ok
            }
            Command::Del { keys } => {
                let deleted = keys
                    .iter()
                    .filter(|k| self.map.remove(k.as_ref()).is_some())
                    .count();
                Outcome::Deleted(deleted as u64)
            }
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn commands_round_trip() {
        let cmds = [
            Command::Set {
                key: b("k"),
                value: b("v"),
            },
            Command::Set {
                key: Bytes::new(),
                value: Bytes::new(),
            },
            Command::Set {
                key: b("bin\0\r\n"),
                value: Bytes::from(vec![0xff; 1000]),
            },
            Command::Del {
                keys: vec![b("a"), b(""), b("a")],
            },
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
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
        ];
        for p in bad {
            let e = Command::decode(&Bytes::copy_from_slice(p));
            assert!(e.is_err(), "{p:?} decoded as {e:?}");
        }
        // Every truncation of a valid command is refused or decodes to
        // something else, but never panics.
        let full = Command::Del {
            keys: vec![b("abc"), b("de")],
        }
        .encode();
        for n in 0..full.len() {
            assert!(Command::decode(&full.slice(..n)).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn apply_set_get_del() {
        let mut kv = Kv::new();
        assert_eq!(kv.len(), 0);
        let set = |k: &str, v: &str| Command::Set {
            key: b(k),
            value: b(v),
        };
        assert_eq!(kv.apply(&set("a", "1")), Outcome::Ok);
        assert_eq!(kv.apply(&set("b", "2")), Outcome::Ok);
        assert_eq!(kv.apply(&set("a", "3")), Outcome::Ok);
        assert_eq!(kv.get(b"a"), Some(&b("3")));
        assert_eq!(kv.len(), 2);
        let del = Command::Del {
            keys: vec![b("a"), b("a"), b("zz"), b("b")],
        };
        assert_eq!(kv.apply(&del), Outcome::Deleted(2));
        assert_eq!(kv.get(b"a"), None);
        assert_eq!(kv.len(), 0);
    }

    #[test]
    fn replicas_applying_the_same_log_agree() {
        let log: Vec<Bytes> = (0..200u32)
            .map(|i| {
                if i % 7 == 3 {
                    Command::Del {
                        keys: vec![b(&format!("k{}", i % 13)), b(&format!("k{}", i % 5))],
                    }
                } else {
                    Command::Set {
                        key: b(&format!("k{}", i % 13)),
                        value: b(&i.to_string()),
                    }
                }
                .encode()
            })
            .collect();
        let run = || {
            let mut kv = Kv::new();
            let outcomes: Vec<Outcome> = log
                .iter()
                .map(|p| kv.apply(&Command::decode(p).unwrap()))
                .collect();
            let state: Vec<Option<Bytes>> = (0..13)
                .map(|i| kv.get(format!("k{i}").as_bytes()).cloned())
                .collect();
            (outcomes, state)
        };
        assert_eq!(run(), run());
    }
}
