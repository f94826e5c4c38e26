//! The snapshot payload: what a snapshot file holds after the storage's
//! own header, written and read here and nowhere else. The snapshotter's
//! helper thread writes it ([`Payload::write_to`], `snapshots.rs`); a
//! member reads it back at start-up and when it installs a snapshot sent by
//! its leader ([`read_payload`], `server.rs`).
//!
//! **These bytes are an on-disk and on-the-wire format**: the file stays
//! on disk across upgrades, and InstallSnapshot ships it as it is to
//! followers that may run another build. The unit test
//! `payloads_written_by_the_previous_build_still_load_and_are_written_the_same`
//! pins them.
//!
//! ```text
//! payload:    membership prefix | store
//! membership prefix (version 1, implicit: it has no version field):
//!             voters u8 | voters x id u64 | learners u8 | learners x id u64
//!             | context_len u32 | context          (big-endian: the wire
//!             format of raft_proto::codec::put_membership)
//! store:      magic "RAFTKV\0\x01" | version u32 (1) | ... | crc32c u32
//!             (little-endian; see KvSnapshot::write_to)
//! ```
//!
//! The store part is versioned (its magic and version field). The
//! membership prefix is not, and stays so: giving it a version field would
//! change the bytes of every snapshot written from now on, and a member
//! still running the previous build (a rolling upgrade) could not load a
//! snapshot its upgraded leader sends. Version 1 is what is written today.
//! A future version 2 can be told apart without ambiguity: a version-1
//! prefix starts with its voter count, at most `raft_proto::MAX_MEMBERS`
//! (64), so a first byte above that (say `0xFF`, then a version byte) can
//! only be a newer prefix. Introduce it in two releases: one that reads
//! both, then one that writes the new one.
//!
//! The maps are persistent (`imbl`): [`Kv::snapshot`] is a clone that shares
//! every node with the live store (O(1): a few reference counts), and the
//! live store copies a node only when it changes one that a snapshot still
//! holds. A [`KvSnapshot`] is `Send + 'static`, so a helper thread can
//! stream it with [`KvSnapshot::write_to`] while the event loop goes on
//! applying; [`Kv::read_from`] reads it back with bounded allocations and a
//! checksum over the whole stream.

use std::io::{self, Read};

use bytes::Bytes;
use raft_proto::Membership;

use super::entry::DecodeError;
use super::store::{key_hash, Key, Kv, Lock, Record};
use super::{MAX_KEY_LEN, MAX_TOMBSTONES, MAX_VALUE_LEN};

/// A snapshot's payload, ready to be written on another thread: the
/// configuration at the snapshot's index, encoded, and an O(1) copy of the
/// store. `Send + 'static`.
pub struct Payload {
    membership: Vec<u8>,
    kv: KvSnapshot,
}

impl Payload {
    /// The payload for the store `kv` and the configuration `membership`
    /// it was applied under. Cheap: the store is shared, not copied.
    pub fn new(membership: &Membership, kv: &Kv) -> Payload {
        Payload {
            membership: membership_bytes(membership),
            kv: kv.snapshot(),
        }
    }

    /// Writes the payload (the configuration, then the store, streamed)
    /// and flushes `w`. The caller makes it durable.
    pub fn write_to(&self, w: &mut dyn io::Write) -> io::Result<()> {
        w.write_all(&self.membership)?;
        self.kv.write_to(w)
    }
}

/// Reads a payload written by [`Payload::write_to`]: the configuration and
/// the store, every bound checked before anything is allocated. The error
/// says what is wrong, for a log line.
pub fn read_payload(r: &mut impl Read) -> Result<(Membership, Kv), String> {
    let membership = read_membership(r)?;
    let kv = Kv::read_from(r).map_err(|e| e.to_string())?;
    Ok((membership, kv))
}

/// A configuration as the first bytes of the payload (the wire format of
/// [`raft_proto::codec::put_membership`]): version 1, see the module doc.
fn membership_bytes(m: &Membership) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    raft_proto::codec::put_membership(m, &mut b);
    b.to_vec()
}

/// Reads the configuration at the front of a snapshot payload, checking
/// every bound before reading what it announces.
fn read_membership(r: &mut impl Read) -> Result<Membership, String> {
    use raft_proto::{MAX_MEMBERS, MAX_MEMBERSHIP_CONTEXT};
    let mut raw = Vec::new();
    let take = |r: &mut dyn Read, n: usize, raw: &mut Vec<u8>| {
        let at = raw.len();
        raw.resize(at + n, 0);
        r.read_exact(&mut raw[at..])
            .map_err(|e| format!("the configuration at its start: {e}"))
    };
    for _ in 0..2 {
        take(r, 1, &mut raw)?;
        let n = usize::from(*raw.last().expect("one byte read"));
        if n > MAX_MEMBERS {
            return Err(format!("a configuration of {n} members"));
        }
        take(r, 8 * n, &mut raw)?;
    }
    take(r, 4, &mut raw)?;
    let len = u32::from_be_bytes(raw[raw.len() - 4..].try_into().expect("4 bytes")) as usize;
    if len > MAX_MEMBERSHIP_CONTEXT {
        return Err(format!("a configuration context of {len} bytes"));
    }
    take(r, len, &mut raw)?;
    let mut b = Bytes::from(raw);
    raft_proto::codec::get_membership(&mut b).map_err(|e| format!("its configuration: {e}"))
}

// ----- Snapshots ----------------------------------------------------------------

const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTKV\0\x01";
const SNAPSHOT_VERSION: u32 = 1;
/// Bytes buffered before each write to the snapshot's destination.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// The whole state of a [`Kv`] at one index: values, deadlines, store clock,
/// WATCH indexes and tombstones, locks. Taken in O(1) by [`Kv::snapshot`];
/// `Send + 'static`, for a helper thread to write out.
#[derive(Clone, Debug)]
pub struct KvSnapshot {
    kv: Kv,
}

#[allow(dead_code)] // getters for tests and the kv_bench example
impl KvSnapshot {
    /// Index of the last entry the snapshot includes.
    pub fn applied_index(&self) -> u64 {
        self.kv.applied
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kv.keys.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.kv.keys.is_empty()
    }

    /// Writes the snapshot, streaming (64 KiB at a time, nothing copied
    /// whole). Format (little-endian), read back by [`Kv::read_from`]:
    ///
    /// ```text
    /// magic "RAFTKV\0\x01" | version u32 (1)
    /// applied u64 | clock_ms u64 | deleted_floor u64
    /// keys u64       | keys x (key | value | flags u8 [| expires_at u64] | modified u64)
    /// tombstones u64 | tombstones x (key | index u64)
    /// locks u64      | locks x (name | owner | token u64 | expires_at u64)
    /// crc32c u32 of everything before
    /// ```
    ///
    /// where `key`, `value`, `name` and `owner` are `len u32 | bytes`, keys
    /// in the store's order (by hash, then bytes), `flags` bit 0 says a
    /// deadline follows.
    pub fn write_to(&self, w: &mut dyn io::Write) -> io::Result<()> {
        let kv = &self.kv;
        let mut out = SnapWriter {
            w,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK + 1024),
            crc: 0,
        };
        out.put(SNAPSHOT_MAGIC)?;
        out.u32(SNAPSHOT_VERSION)?;
        out.u64(kv.applied)?;
        out.u64(kv.clock_ms)?;
        out.u64(kv.deleted_floor)?;
        out.u64(kv.keys.len() as u64)?;
        for (k, r) in &kv.keys {
            out.bytes(&k.bytes)?;
            out.bytes(&r.value)?;
            match r.expires_at {
                None => out.put(&[0])?,
                Some(d) => {
                    out.put(&[1])?;
                    out.u64(d)?;
                }
            }
            out.u64(r.modified)?;
        }
        out.u64(kv.tombstones.len() as u64)?;
        for (k, i) in &kv.tombstones {
            out.bytes(&k.bytes)?;
            out.u64(*i)?;
        }
        out.u64(kv.locks.len() as u64)?;
        for (n, l) in &kv.locks {
            out.bytes(n)?;
            out.bytes(&l.owner)?;
            out.u64(l.token)?;
            out.u64(l.expires_at)?;
        }
        out.finish()
    }
}

struct SnapWriter<'a> {
    w: &'a mut dyn io::Write,
    buf: Vec<u8>,
    crc: u32,
}

impl SnapWriter<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        if self.buf.len() + b.len() > SNAPSHOT_CHUNK {
            self.flush()?;
        }
        if b.len() > SNAPSHOT_CHUNK {
            self.crc = crc32c::crc32c_append(self.crc, b);
            return self.w.write_all(b);
        }
        self.buf.extend_from_slice(b);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.u32(u32::try_from(b.len()).expect("key or value fits in u32"))?;
        self.put(b)
    }

    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        let crc = self.crc;
        self.w.write_all(&crc.to_le_bytes())?;
        self.w.flush()
    }
}

struct SnapReader<'a> {
    r: &'a mut dyn Read,
    crc: u32,
}

impl SnapReader<'_> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DecodeError> {
        self.r.read_exact(buf).map_err(|e| read_error(e, what))?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// `len u32 | bytes`, at most `max` bytes. Memory grows with the bytes
    /// actually read, so a corrupt length within the bound costs at most
    /// what the stream holds.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::new(format!(
                "corrupt snapshot: {what} of {len} bytes, at most {max}"
            )));
        }
        let mut v = Vec::with_capacity(len.min(SNAPSHOT_CHUNK));
        (&mut *self.r)
            .take(len as u64)
            .read_to_end(&mut v)
            .map_err(|e| read_error(e, what))?;
        if v.len() != len {
            return Err(DecodeError::new(format!(
                "corrupt snapshot: truncated in a {what}"
            )));
        }
        self.crc = crc32c::crc32c_append(self.crc, &v);
        Ok(Bytes::from(v))
    }
}

fn read_error(e: io::Error, what: &str) -> DecodeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        DecodeError::new(format!("corrupt snapshot: truncated in a {what}"))
    } else {
        DecodeError {
            msg: format!("cannot read snapshot: {e}"),
            io: Some(e.kind()),
        }
    }
}

impl Kv {
    /// A snapshot of the whole state, sharing the maps (O(1)); later
    /// writes to the store do not change it.
    pub fn snapshot(&self) -> KvSnapshot {
        KvSnapshot { kv: self.clone() }
    }

    /// Reads a snapshot written by [`KvSnapshot::write_to`], exactly its
    /// bytes (wrap a file in a `BufReader`: this reads in small pieces).
    /// Every length is checked against its bound before anything is
    /// allocated, the keys' order and every index against the snapshot's
    /// applied index, and the checksum at the end.
    pub fn read_from(r: &mut dyn Read) -> Result<Kv, DecodeError> {
        let corrupt = |m: String| DecodeError::new(format!("corrupt snapshot: {m}"));
        let mut r = SnapReader { r, crc: 0 };
        let mut magic = [0u8; 8];
        r.exact(&mut magic, "header")?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(corrupt("not a key-value snapshot (bad magic)".into()));
        }
        let version = r.u32("header")?;
        if version != SNAPSHOT_VERSION {
            return Err(DecodeError::new(format!(
                "unsupported snapshot version {version} (this build reads {SNAPSHOT_VERSION})"
            )));
        }
        let mut kv = Kv {
            applied: r.u64("header")?,
            clock_ms: r.u64("header")?,
            deleted_floor: r.u64("header")?,
            ..Kv::default()
        };
        if kv.deleted_floor > kv.applied {
            return Err(corrupt(format!(
                "deletion floor {} above the applied index {}",
                kv.deleted_floor, kv.applied
            )));
        }
        let check_index = |i: u64, what: &str| {
            if i > kv.applied {
                Err(corrupt(format!(
                    "{what} {i} above the applied index {}",
                    kv.applied
                )))
            } else {
                Ok(())
            }
        };
        // Counts are not trusted for allocation: items are read one by one
        // and a count beyond the stream ends in a truncation error.
        let n = r.u64("key count")?;
        let mut prev: Option<Key> = None;
        for _ in 0..n {
            let bytes = r.bytes(MAX_KEY_LEN, "key")?;
            let value = r.bytes(MAX_VALUE_LEN, "value")?;
            let expires_at = match r.u8("key flags")? {
                0 => None,
                1 => Some(r.u64("deadline")?),
                f => return Err(corrupt(format!("key flags {f}"))),
            };
            let modified = r.u64("key index")?;
            check_index(modified, "key changed at")?;
            let key = Key {
                hash: key_hash(&bytes),
                bytes,
            };
            if prev.as_ref().is_some_and(|p| *p >= key) {
                return Err(corrupt("keys out of order".into()));
            }
            if let Some(d) = expires_at {
                kv.deadlines.insert((d, key.clone()));
            }
            prev = Some(key.clone());
            kv.keys.insert(
                key,
                Record {
                    value,
                    expires_at,
                    modified,
                },
            );
        }
        let n = r.u64("tombstone count")?;
        if n > MAX_TOMBSTONES as u64 {
            return Err(corrupt(format!("{n} tombstones, at most {MAX_TOMBSTONES}")));
        }
        for _ in 0..n {
            let bytes = r.bytes(MAX_KEY_LEN, "tombstone")?;
            let index = r.u64("tombstone index")?;
            check_index(index, "key deleted at")?;
            let key = Key {
                hash: key_hash(&bytes),
                bytes,
            };
            if kv.keys.contains_key(&key) || kv.tombstones.insert(key, index).is_some() {
                return Err(corrupt("a tombstone for a present or repeated key".into()));
            }
        }
        let n = r.u64("lock count")?;
        for _ in 0..n {
            let name = r.bytes(MAX_KEY_LEN, "lock name")?;
            let owner = r.bytes(MAX_KEY_LEN, "lock owner")?;
            let token = r.u64("lock token")?;
            check_index(token, "lock token")?;
            let expires_at = r.u64("lock deadline")?;
            kv.lock_deadlines.insert((expires_at, name.clone()));
            let lock = Lock {
                owner,
                token,
                expires_at,
            };
            if kv.locks.insert(name, lock).is_some() {
                return Err(corrupt("a lock listed twice".into()));
            }
        }
        let computed = r.crc;
        let mut b = [0u8; 4];
        r.r.read_exact(&mut b)
            .map_err(|e| read_error(e, "checksum"))?;
        let stored = u32::from_le_bytes(b);
        if stored != computed {
            return Err(corrupt(format!(
                "checksum {stored:08x}, computed {computed:08x}"
            )));
        }
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use raft_proto::NodeId;

    use super::*;
    use crate::kv::testing::{b, set, Log};
    use crate::kv::{Command, ExpireCond, SetCond, Ttl, Write};

    /// A store with every kind of state: values with and without deadlines,
    /// tombstones, a deletion floor, locks, a clock.
    fn busy_store() -> Log {
        let mut l = Log::new();
        for i in 0..300 {
            l.run(set(&format!("key{i}"), &"v".repeat(i % 40)));
        }
        for i in 0..50 {
            l.run(Command::Expire {
                key: b(&format!("key{i}")),
                ttl: Ttl::In(1000 + i),
                cond: ExpireCond::Always,
            });
        }
        l.run(Command::Del {
            keys: vec![b("key299"), b("key298")],
        });
        l.run(Command::LockAcquire {
            name: b("l1"),
            owner: b("me"),
            ttl_ms: 5000,
        });
        l.run(set("bin\0\r\n", "\0\u{1}"));
        l.run(set("", ""));
        l
    }

    fn write(s: &KvSnapshot) -> Vec<u8> {
        let mut v = Vec::new();
        s.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn snapshot_round_trips_every_kind_of_state() {
        let l = busy_store();
        let bytes = write(&l.kv.snapshot());
        let back = Kv::read_from(&mut &bytes[..]).unwrap();
        back.check_invariants();
        assert!(back == l.kv, "the same state");
        assert_eq!(back.clock_ms(), l.kv.clock_ms());
        assert_eq!(back.applied_index(), l.kv.applied_index());
        // And it behaves the same from there on.
        let mut a = l.kv.clone();
        let mut b2 = back;
        for (i, cmd) in [
            Command::Sweep,
            Command::IncrBy {
                key: b("key3"),
                by: 1,
            },
            Command::Exec {
                watches: vec![(b("key298"), 10)],
                cmds: vec![set("x", "y")],
            },
        ]
        .into_iter()
        .enumerate()
        {
            let w = Write::new(l.now_ms + 5000, cmd);
            let idx = l.index + 1 + i as u64;
            assert_eq!(a.apply(idx, &w), b2.apply(idx, &w));
        }
        assert!(a == b2);
        // An empty store too.
        let empty = write(&Kv::new().snapshot());
        assert!(Kv::read_from(&mut &empty[..]).unwrap() == Kv::new());
    }

    #[test]
    fn a_snapshot_is_unaffected_by_later_writes() {
        let mut l = busy_store();
        let snap = l.kv.snapshot();
        let before = write(&snap);
        let state = l.kv.clone();
        for i in 0..100 {
            l.run(set(&format!("key{i}"), "changed"));
            l.run(Command::Del {
                keys: vec![b(&format!("key{}", 100 + i))],
            });
        }
        l.run(Command::FlushAll);
        l.run(Command::LockRelease {
            name: b("l1"),
            owner: b("me"),
            token: 303,
        });
        assert_eq!(write(&snap), before, "the snapshot did not move");
        assert!(Kv::read_from(&mut &before[..]).unwrap() == state);
        // And it can be written from another thread.
        let handle = std::thread::spawn(move || write(&snap));
        assert_eq!(handle.join().unwrap(), before);
    }

    #[test]
    fn corrupt_snapshots_are_refused_without_panics_or_big_allocations() {
        let l = busy_store();
        let good = write(&l.kv.snapshot());
        // Every truncation.
        for n in (0..good.len()).step_by(29).chain([good.len() - 1]) {
            let e = Kv::read_from(&mut &good[..n]).unwrap_err();
            assert!(e.io_kind().is_none(), "{e}");
        }
        // Every flipped byte: refused (a checksum or a check), never a panic.
        for i in (0..good.len()).step_by(17) {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            assert!(Kv::read_from(&mut &bad[..]).is_err(), "byte {i}");
        }
        // A huge length: an error naming the bound, nothing allocated.
        let mut bad = good[..8 + 4 + 24 + 8].to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = Kv::read_from(&mut &bad[..]).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        // A huge count: read item by item until the data runs out.
        let mut bad = good[..8 + 4 + 24].to_vec();
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Kv::read_from(&mut &bad[..]).is_err());
        // Another version.
        let mut bad = good.clone();
        bad[8] = 9;
        let e = Kv::read_from(&mut &bad[..]).unwrap_err().to_string();
        assert!(e.contains("unsupported snapshot version 9"), "{e}");
        // An I/O error is told apart.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let e = Kv::read_from(&mut Failing).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::Other));
    }

    #[test]
    fn snapshots_are_send_and_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<KvSnapshot>();
        check::<Kv>();
    }

    #[test]
    fn a_snapshot_payload_starts_with_its_configuration() {
        let m = Membership {
            voters: vec![NodeId(1), NodeId(3)],
            learners: vec![NodeId(4)],
            context: Bytes::from_static(b"4 127.0.0.1:1 127.0.0.1:2\n"),
        };
        let mut payload = membership_bytes(&m);
        payload.extend_from_slice(b"store");
        let mut r = &payload[..];
        assert_eq!(read_membership(&mut r).unwrap(), m);
        assert_eq!(r, b"store");
        assert!(read_membership(&mut &payload[..5]).is_err());
        assert!(read_membership(&mut &[200u8, 0, 0][..]).is_err());
    }

    fn unhex(parts: &[&str]) -> Vec<u8> {
        let s: String = parts.concat();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Bytes written by the build before the split of `kv.rs` (commit
    /// 00d8258): a payload of a small store with a value, a deadline, a
    /// tombstone and a lock, under a configuration of two voters and a
    /// learner. They still load, to the same state, and this build writes
    /// the same bytes for that state. For a large store, its length and
    /// checksum as the old build wrote it.
    #[test]
    fn payloads_written_by_the_previous_build_still_load_and_are_written_the_same() {
        let m = Membership {
            voters: vec![NodeId(1), NodeId(3)],
            learners: vec![NodeId(4)],
            context: Bytes::from_static(b"4 127.0.0.1:1 127.0.0.1:2\n"),
        };
        let mut l = Log::new();
        l.run(set("a", "1"));
        l.run(Command::Set {
            key: b("t"),
            value: b("x"),
            cond: SetCond::Always,
            get: false,
            ttl: Ttl::In(5000),
        });
        l.run(set("gone", "1"));
        l.run(Command::Del {
            keys: vec![b("gone")],
        });
        l.run(Command::LockAcquire {
            name: b("l"),
            owner: b("o"),
            ttl_ms: 100,
        });
        let old_membership = unhex(&[
            "02000000000000000100000000000000030100000000000000040000001a3420",
            "3132372e302e302e313a31203132372e302e302e313a320a",
        ]);
        let old_store = unhex(&[
            "524146544b5600010100000005000000000000000068e5cf8b01000000000000",
            "0000000002000000000000000100000061010000003100010000000000000001",
            "00000074010000007801887be5cf8b0100000200000000000000010000000000",
            "000004000000676f6e6504000000000000000100000000000000010000006c01",
            "0000006f05000000000000006468e5cf8b010000ba604dec",
        ]);
        let old = [old_membership.clone(), old_store].concat();
        let (m2, kv2) = read_payload(&mut &old[..]).unwrap();
        assert_eq!(m2, m);
        assert!(kv2 == l.kv, "the same store");
        let mut new = Vec::new();
        Payload::new(&m, &l.kv).write_to(&mut new).unwrap();
        assert_eq!(new, old, "the same bytes");
        assert_eq!(membership_bytes(&m), old_membership);
        let busy = write(&busy_store().kv.snapshot());
        assert_eq!((busy.len(), crc32c::crc32c(&busy)), (12927, 0x4867_4bc7));
    }
}
