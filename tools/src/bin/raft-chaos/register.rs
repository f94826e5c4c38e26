//! The register clients: reads and writes of unique values whose history
//! is checked for linearizability, and the request path the Redis clients
//! share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use raft_proto::sim::linearizability::{Op, OpKind};
use raft_proto::Rng;
use tools::resp::{Conn, Reply};

use crate::{client_addr, MEMBERS, OP_TIMEOUT};

pub fn nanos(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// How a request ended.
pub enum Outcome {
    /// The server answered.
    Reply(Reply),
    /// It never left: no connection could be made.
    Refused,
    /// Sent, but the connection broke or timed out before an answer.
    Lost,
}

/// Sends one command to member `*target`, following `-MOVED` (up to three
/// times).
pub fn send(conn: &mut Option<Conn>, target: &mut u64, args: &[&[u8]]) -> Outcome {
    for _ in 0..4 {
        if conn.is_none() {
            *conn = Conn::connect(client_addr(*target), OP_TIMEOUT).ok();
        }
        let Some(c) = conn.as_mut() else {
            return Outcome::Refused;
        };
        match c.cmd_bytes(args) {
            Ok(r) => match r
                .moved_to()
                .and_then(|a| (1..=MEMBERS).find(|&i| client_addr(i) == a))
            {
                Some(leader) => {
                    *target = leader;
                    *conn = None;
                }
                None => return Outcome::Reply(r),
            },
            Err(_) => {
                *conn = None;
                return Outcome::Lost;
            }
        }
    }
    Outcome::Refused
}

pub fn request(conn: &mut Option<Conn>, target: &mut u64, args: &[&[u8]]) -> Option<Reply> {
    match send(conn, target, args) {
        Outcome::Reply(r) => Some(r),
        _ => None,
    }
}

/// What the register clients recorded.
#[derive(Default)]
pub struct ClientReport {
    pub ops: Vec<Op>,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Reads served by the member the client chose (READONLY).
    pub follower_reads: u64,
}

impl ClientReport {
    pub fn merge(&mut self, o: ClientReport) {
        self.ops.extend(o.ops);
        self.ok += o.ok;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.follower_reads += o.follower_reads;
    }
}

/// The number a bulk string holds, if any (nil: none).
pub fn bulk_value<T: std::str::FromStr>(v: Option<Vec<u8>>) -> Option<T> {
    v.and_then(|b| String::from_utf8_lossy(&b).parse().ok())
}

/// One client: sequential reads and writes of unique values until stopped.
pub fn client(id: u64, seed: u64, keys: u64, start: Instant, stop: &AtomicBool) -> ClientReport {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(id));
    let target = 1 + rng.range(0, MEMBERS);
    let mut c = Client {
        id,
        start,
        rng,
        conn: None,
        target,
        ro_conn: None,
        counter: 0,
        r: ClientReport::default(),
    };
    while !stop.load(Ordering::Relaxed) {
        let key = c.rng.range(0, keys);
        let invoke = nanos(start);
        if c.rng.chance(0.5) {
            c.write(key, invoke);
        } else if id % 2 == 1 {
            c.follower_read(key, invoke);
        } else {
            c.read(key, invoke);
        }
    }
    c.r
}

/// A register client's state between operations.
struct Client {
    id: u64,
    start: Instant,
    rng: Rng,
    conn: Option<Conn>,
    /// The member it sends to (following `-MOVED`).
    target: u64,
    /// Odd clients read through READONLY on a member of their own choosing
    /// (follower reads: a read index from the leader, thesis §6.4); the
    /// history mixes them with everyone's writes.
    ro_conn: Option<Conn>,
    /// Values written so far: with the id, each write's unique value.
    counter: u64,
    r: ClientReport,
}

impl Client {
    fn backoff() {
        thread::sleep(Duration::from_millis(20));
    }

    fn read_done(&mut self, key: u64, invoke: u64, v: Option<Vec<u8>>) {
        self.r.ok += 1;
        self.r.ops.push(Op {
            client: self.id,
            key,
            kind: OpKind::Read(bulk_value(v)),
            invoke,
            complete: Some(nanos(self.start)),
        });
    }

    fn write(&mut self, key: u64, invoke: u64) {
        self.counter += 1;
        let value = (self.id << 32) | self.counter;
        let (k, v) = (key.to_string(), value.to_string());
        let mut op = Op {
            client: self.id,
            key,
            kind: OpKind::Write(value),
            invoke,
            complete: None,
        };
        let args: [&[u8]; 3] = [b"SET", k.as_bytes(), v.as_bytes()];
        match send(&mut self.conn, &mut self.target, &args) {
            Outcome::Reply(Reply::Simple(s)) if s == "OK" => {
                op.complete = Some(nanos(self.start));
                self.r.ok += 1;
                self.r.ops.push(op);
            }
            // Refused before it was proposed, or known lost to another
            // leader's entry at its index: it never took effect.
            Outcome::Reply(Reply::Error(e))
                if e.starts_with("CLUSTERDOWN")
                    || e.starts_with("ERR write lost")
                    || e.starts_with("MOVED") =>
            {
                self.r.failed += 1;
                Client::backoff();
            }
            Outcome::Refused => {
                self.r.failed += 1;
                self.target = 1 + self.rng.range(0, MEMBERS);
                Client::backoff();
            }
            // Any other error, a timeout or a broken connection: the
            // write may or may not take effect.
            _ => {
                self.r.unknown += 1;
                self.r.ops.push(op);
                self.conn = None;
                self.target = 1 + self.rng.range(0, MEMBERS);
                Client::backoff();
            }
        }
    }

    fn follower_read(&mut self, key: u64, invoke: u64) {
        if self.ro_conn.is_none() {
            let member = 1 + self.rng.range(0, MEMBERS);
            self.ro_conn = Conn::connect(client_addr(member), OP_TIMEOUT)
                .ok()
                .and_then(|mut c| match c.cmd_bytes(&[b"READONLY"]) {
                    Ok(Reply::Simple(_)) => Some(c),
                    _ => None,
                });
        }
        let k = key.to_string();
        match self
            .ro_conn
            .as_mut()
            .map(|c| c.cmd_bytes(&[b"GET", k.as_bytes()]))
        {
            Some(Ok(Reply::Bulk(v))) => {
                self.r.follower_reads += 1;
                self.read_done(key, invoke, v);
            }
            // MOVED (that member knows no leader), CLUSTERDOWN, a broken
            // connection: no effect; try another member next time.
            _ => {
                self.r.failed += 1;
                self.ro_conn = None;
                Client::backoff();
            }
        }
    }

    fn read(&mut self, key: u64, invoke: u64) {
        let k = key.to_string();
        match send(&mut self.conn, &mut self.target, &[b"GET", k.as_bytes()]) {
            Outcome::Reply(Reply::Bulk(v)) => self.read_done(key, invoke, v),
            // A failed read had no effect: it is left out of the history.
            Outcome::Reply(_) => {
                self.r.failed += 1;
                Client::backoff();
            }
            Outcome::Refused | Outcome::Lost => {
                self.r.failed += 1;
                self.conn = None;
                self.target = 1 + self.rng.range(0, MEMBERS);
                Client::backoff();
            }
        }
    }
}
