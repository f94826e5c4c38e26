//! The Redis workloads: counters, transactions, WATCH, SET NX/XX, locks
//! with fenced writes and expiring keys, recorded for `tools::checks`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use raft_proto::Rng;
use tools::checks::{
    self, Acquired, Counter, ExpiryRead, FencedOutcome, FencedRead, FencedWrite, NxOutcome,
};
use tools::resp::{Conn, Reply};

use crate::register::{bulk_value, nanos, request, send, Outcome};
use crate::{client_addr, MEMBERS, OP_TIMEOUT};

pub const COUNTER: &[u8] = b"chaos:counter";
pub const CAS: &[u8] = b"chaos:cas";
pub const TX_A: &[u8] = b"chaos:tx:a";
pub const TX_B: &[u8] = b"chaos:tx:b";
pub const XX_NEVER: &[u8] = b"chaos:xx-never";
pub const LOCK: &[u8] = b"chaos:lock";
pub const FENCED: &[u8] = b"chaos:fenced";
/// Lease of the chaos lock: short, so that pauses outlive it.
pub const LOCK_TTL_MS: u64 = 300;
/// `SET NX` races: all clients use the key of the current window.
pub const NX_WINDOW_MS: u64 = 200;
/// A read sent this long after a deadline must not see the value: the
/// members' clocks are this machine's, read at start plus monotonic time.
pub const EXPIRY_SLACK_MS: u64 = 5;

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a write's reply says about its effect.
pub enum Effect {
    /// The server answered with this (not an error below).
    Reply(Reply),
    /// It was never proposed, or is known lost: no effect.
    None,
    /// It may or may not take effect.
    Unknown,
}

/// Classifies a write's outcome: errors that prove it was never applied
/// (a redirect, no leader, too many pending writes, a write lost to another
/// leader's entry) are no effect; a timeout, a broken connection or any
/// other error is unknown.
pub fn effect(o: Outcome) -> Effect {
    match o {
        Outcome::Reply(Reply::Error(e))
            if e.starts_with("CLUSTERDOWN")
                || e.starts_with("MOVED")
                || e.starts_with("ERR write lost")
                || e.starts_with("ERR too many uncommitted") =>
        {
            Effect::None
        }
        Outcome::Reply(Reply::Error(e))
            if e.starts_with("FENCED") || e.starts_with("EXECABORT") =>
        {
            Effect::Reply(Reply::Error(e))
        }
        Outcome::Reply(Reply::Error(_)) | Outcome::Lost => Effect::Unknown,
        Outcome::Reply(r) => Effect::Reply(r),
        Outcome::Refused => Effect::None,
    }
}

/// What the Redis clients recorded, for `tools::checks`.
#[derive(Default)]
pub struct RedisReport {
    pub counter: Counter,
    pub cas: Counter,
    pub tx: Counter,
    pub pairs: Vec<(i64, i64)>,
    pub nx: Vec<(u64, u64, NxOutcome)>,
    pub xx_set: u64,
    pub acquired: Vec<Acquired>,
    pub writes: Vec<FencedWrite>,
    pub reads: Vec<FencedRead>,
    pub aborted: u64,
    pub expiry: Vec<ExpiryRead>,
}

impl RedisReport {
    pub fn merge(&mut self, o: RedisReport) {
        self.counter.acked.extend(o.counter.acked);
        self.counter.unknown += o.counter.unknown;
        self.cas.acked.extend(o.cas.acked);
        self.cas.unknown += o.cas.unknown;
        self.tx.acked.extend(o.tx.acked);
        self.tx.unknown += o.tx.unknown;
        self.pairs.extend(o.pairs);
        self.nx.extend(o.nx);
        self.xx_set += o.xx_set;
        self.acquired.extend(o.acquired);
        self.writes.extend(o.writes);
        self.reads.extend(o.reads);
        self.aborted += o.aborted;
        self.expiry.extend(o.expiry);
    }

    pub fn summary(&self) -> String {
        let refused = self
            .writes
            .iter()
            .filter(|w| w.outcome == FencedOutcome::Refused)
            .count();
        format!(
            "{} INCRs ({} unknown), {} WATCH increments ({} unknown, {} aborted by a conflict), \
             {} transactions ({} unknown), {} pair reads, {} SET NX, {} locks acquired, \
             {} fenced writes ({refused} refused as stale), {} fenced reads, {} reads of \
             expiring keys ({} absent)",
            self.counter.acked.len(),
            self.counter.unknown,
            self.cas.acked.len(),
            self.cas.unknown,
            self.aborted,
            self.tx.acked.len(),
            self.tx.unknown,
            self.pairs.len(),
            self.nx.len(),
            self.acquired.len(),
            self.writes.len(),
            self.reads.len(),
            self.expiry.len(),
            self.expiry
                .iter()
                .filter(|r| r.seen_deadline_ms.is_none())
                .count()
        )
    }

    /// Reads the final state through the leader and runs every check.
    pub fn finish(&mut self, target: &mut u64, start: Instant) -> Result<(), String> {
        let int = |r: Option<Reply>, what: &str| -> Result<i64, String> {
            match r {
                Some(r @ Reply::Bulk(_)) => {
                    r.bulk_i64().ok_or_else(|| format!("{what}: not a number"))
                }
                other => Err(format!("final read of {what} failed: {other:?}")),
            }
        };
        let mut get = |key: &[u8]| request(&mut None, target, &[b"GET", key]);
        self.counter.final_value = int(get(COUNTER), "the counter")?;
        self.cas.final_value = int(get(CAS), "the WATCH counter")?;
        let (a, b) = (int(get(TX_A), "tx:a")?, int(get(TX_B), "tx:b")?);
        self.pairs.push((a, b));
        self.tx.final_value = a;
        if self.xx_set > 0 || get(XX_NEVER) != Some(Reply::Bulk(None)) {
            return Err("SET XX created a key that never existed".into());
        }
        let invoke = nanos(start);
        match get(FENCED) {
            Some(Reply::Bulk(v)) => self.reads.push(FencedRead {
                value: bulk_value(v),
                invoke,
                complete: nanos(start),
            }),
            other => return Err(format!("final read of the fenced key failed: {other:?}")),
        }
        checks::check_counter("INCR", &self.counter)?;
        checks::check_counter("WATCH/MULTI/EXEC increments", &self.cas)?;
        checks::check_counter("MULTI/EXEC INCR pairs", &self.tx)?;
        checks::check_pairs("MULTI/EXEC", &self.pairs)?;
        let mut windows: Vec<u64> = self.nx.iter().map(|(w, _, _)| *w).collect();
        windows.sort_unstable();
        windows.dedup();
        for w in windows {
            let key = format!("chaos:nx:{w}");
            let attempts: Vec<(u64, NxOutcome)> = self
                .nx
                .iter()
                .filter(|(x, _, _)| *x == w)
                .map(|(_, v, o)| (*v, o.clone()))
                .collect();
            let value = match request(&mut None, target, &[b"GET", key.as_bytes()]) {
                Some(Reply::Bulk(v)) => bulk_value(v),
                other => return Err(format!("final read of {key} failed: {other:?}")),
            };
            checks::check_nx(&key, &attempts, value)?;
        }
        checks::check_expiry(&self.expiry, EXPIRY_SLACK_MS)?;
        checks::check_fencing(&self.acquired, &self.writes, &self.reads)
    }
}

/// One Redis client: a random mix of the workloads until stopped.
pub fn redis_client(id: u64, seed: u64, start: Instant, stop: &AtomicBool) -> RedisReport {
    let mut rng = Rng::new(seed.wrapping_mul(7_000_003).wrapping_add(id));
    let mut r = RedisReport::default();
    let mut conn: Option<Conn> = None;
    let mut target = 1 + rng.range(0, MEMBERS);
    let mut seq = 0u64;
    let backoff = || thread::sleep(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let unique = (id << 40) | seq;
        // The mix: 0 INCR, 1 WATCH increment, 2 transaction, 3 pair read,
        // 4 SET NX/XX, 5 a lock with fenced writes, 7 an expiring key (long:
        // it reads until past the deadline), 8 a read of the fenced key.
        const MIX: [u64; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 7, 8, 8];
        let progressed = match MIX[rng.range(0, 16) as usize] {
            0 => incr(&mut conn, &mut target, &mut r),
            1 => cas_increment(&mut conn, &mut target, &mut r),
            2 => incr_pair(&mut conn, &mut target, &mut r),
            3 => read_pair(&mut conn, &mut target, &mut r),
            4 => set_nx_xx(&mut conn, &mut target, &mut r, start, unique),
            5 | 6 => lock_cycle(
                id,
                &mut conn,
                &mut target,
                &mut rng,
                &mut r,
                start,
                &mut seq,
            ),
            7 => expiring_key(id, &mut conn, &mut target, &mut rng, &mut r, unique),
            _ => read_fenced(&mut conn, &mut target, &mut r, start),
        };
        if !progressed {
            conn = None;
            target = 1 + rng.range(0, MEMBERS);
            backoff();
        }
    }
    r
}

/// `INCR` of the shared counter.
fn incr(conn: &mut Option<Conn>, target: &mut u64, r: &mut RedisReport) -> bool {
    match effect(send(conn, target, &[b"INCR", COUNTER])) {
        Effect::Reply(Reply::Integer(v)) => {
            r.counter.acked.push(v);
            true
        }
        Effect::Unknown => {
            r.counter.unknown += 1;
            false
        }
        _ => false,
    }
}

/// Both keys of the pair `INCR`ed in one transaction.
fn incr_pair(conn: &mut Option<Conn>, target: &mut u64, r: &mut RedisReport) -> bool {
    let cmds: [&[&[u8]]; 2] = [&[b"INCR", TX_A], &[b"INCR", TX_B]];
    match transaction(conn, target, &cmds) {
        Effect::Reply(Reply::Array(v)) => match v.as_slice() {
            [Reply::Integer(a), Reply::Integer(b)] => {
                r.tx.acked.push(*a);
                r.pairs.push((*a, *b));
                true
            }
            _ => false,
        },
        Effect::Unknown => {
            r.tx.unknown += 1;
            false
        }
        _ => false,
    }
}

/// Both keys of the pair in one `MGET`: they must be equal.
fn read_pair(conn: &mut Option<Conn>, target: &mut u64, r: &mut RedisReport) -> bool {
    match send(conn, target, &[b"MGET", TX_A, TX_B]) {
        Outcome::Reply(Reply::Array(v)) => {
            let n = |x: &Reply| match x {
                Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).parse().unwrap_or(-1),
                _ => 0,
            };
            if let [a, b] = v.as_slice() {
                r.pairs.push((n(a), n(b)));
            }
            true
        }
        _ => false,
    }
}

/// `SET NX` of this window's key (one winner per window), then `SET XX`
/// of a key nobody creates (never set).
fn set_nx_xx(
    conn: &mut Option<Conn>,
    target: &mut u64,
    r: &mut RedisReport,
    start: Instant,
    unique: u64,
) -> bool {
    let window = start.elapsed().as_millis() as u64 / NX_WINDOW_MS;
    let key = format!("chaos:nx:{window}");
    let v = unique.to_string();
    let args: [&[u8]; 4] = [b"SET", key.as_bytes(), v.as_bytes(), b"NX"];
    let outcome = match effect(send(conn, target, &args)) {
        Effect::Reply(Reply::Simple(s)) if s == "OK" => Some(NxOutcome::Set),
        Effect::Reply(Reply::Bulk(None)) => Some(NxOutcome::Refused),
        Effect::Unknown => Some(NxOutcome::Unknown),
        _ => None,
    };
    let done = outcome.is_some();
    if let Some(o) = outcome {
        r.nx.push((window, unique, o));
    }
    let args: [&[u8]; 4] = [b"SET", XX_NEVER, v.as_bytes(), b"XX"];
    if let Effect::Reply(Reply::Simple(_)) = effect(send(conn, target, &args)) {
        r.xx_set += 1;
    }
    done
}

/// A read of the fenced key, for the fencing check.
fn read_fenced(
    conn: &mut Option<Conn>,
    target: &mut u64,
    r: &mut RedisReport,
    start: Instant,
) -> bool {
    let invoke = nanos(start);
    match send(conn, target, &[b"GET", FENCED]) {
        Outcome::Reply(Reply::Bulk(v)) => {
            r.reads.push(FencedRead {
                value: bulk_value(v),
                invoke,
                complete: nanos(start),
            });
            true
        }
        _ => false,
    }
}

/// A read-modify-write guarded by WATCH: read the counter, set it one
/// higher in a transaction. Whether it landed is recorded with the value it
/// set; a conflict aborts it (no effect).
pub fn cas_increment(conn: &mut Option<Conn>, target: &mut u64, r: &mut RedisReport) -> bool {
    let Some(c) = connect(conn, *target) else {
        return false;
    };
    match c.cmd_bytes(&[b"WATCH", CAS]) {
        Ok(Reply::Simple(_)) => {}
        Ok(other) => return follow(conn, target, &other),
        Err(_) => return false,
    }
    let current = match c.cmd_bytes(&[b"GET", CAS]) {
        Ok(r @ Reply::Bulk(_)) => r.bulk_i64().unwrap_or(-1),
        Ok(other) => return follow(conn, target, &other),
        Err(_) => return false,
    };
    let next = (current + 1).to_string();
    let cmds: [&[&[u8]]; 1] = [&[b"SET", CAS, next.as_bytes()]];
    match transaction(conn, target, &cmds) {
        Effect::Reply(Reply::Array(v)) if v.len() == 1 => {
            r.cas.acked.push(current + 1);
            true
        }
        // `*-1`: a watched key changed.
        Effect::Reply(Reply::NilArray | Reply::Array(_)) => {
            r.aborted += 1;
            true
        }
        Effect::Unknown => {
            r.cas.unknown += 1;
            false
        }
        _ => false,
    }
}

/// Acquires the chaos lock and writes with its token, pausing between
/// writes, sometimes past the lease: those writes must be refused.
pub fn lock_cycle(
    id: u64,
    conn: &mut Option<Conn>,
    target: &mut u64,
    rng: &mut Rng,
    r: &mut RedisReport,
    start: Instant,
    seq: &mut u64,
) -> bool {
    let owner = id.to_string();
    let ttl = LOCK_TTL_MS.to_string();
    let args: [&[u8]; 4] = [b"LOCK.ACQUIRE", LOCK, owner.as_bytes(), ttl.as_bytes()];
    let token = match effect(send(conn, target, &args)) {
        Effect::Reply(Reply::Integer(t)) => {
            r.acquired.push(Acquired {
                owner: id,
                token: t as u64,
                complete: nanos(start),
            });
            t as u64
        }
        Effect::Reply(Reply::Bulk(None)) => return true,
        _ => return false,
    };
    let t = token.to_string();
    for _ in 0..rng.range(1, 4) {
        // A pause: a third of them outlive the lease.
        thread::sleep(Duration::from_millis(rng.range(0, LOCK_TTL_MS * 3 / 2)));
        *seq += 1;
        let value = (id << 40) | *seq;
        let v = value.to_string();
        let invoke = nanos(start);
        let args: [&[u8]; 5] = [b"FENCED.SET", LOCK, t.as_bytes(), FENCED, v.as_bytes()];
        let outcome = match effect(send(conn, target, &args)) {
            Effect::Reply(Reply::Simple(s)) if s == "OK" => FencedOutcome::Ok,
            Effect::Reply(Reply::Error(e)) if e.starts_with("FENCED") => FencedOutcome::Refused,
            Effect::None => continue,
            _ => FencedOutcome::Unknown,
        };
        r.writes.push(FencedWrite {
            token,
            value,
            invoke,
            complete: (outcome != FencedOutcome::Unknown).then(|| nanos(start)),
            outcome,
        });
        if outcome == FencedOutcome::Unknown {
            return false;
        }
    }
    let args: [&[u8]; 4] = [b"LOCK.RELEASE", LOCK, owner.as_bytes(), t.as_bytes()];
    let _ = send(conn, target, &args);
    true
}

/// The connection to `target`, opened if needed.
pub fn connect(conn: &mut Option<Conn>, target: u64) -> Option<&mut Conn> {
    if conn.is_none() {
        *conn = Conn::connect(client_addr(target), OP_TIMEOUT).ok();
    }
    conn.as_mut()
}

/// An unexpected reply inside a WATCH/MULTI sequence: a redirect moves the
/// target; the connection is dropped either way (it may hold watches).
pub fn follow(conn: &mut Option<Conn>, target: &mut u64, reply: &Reply) -> bool {
    if let Some(leader) = reply
        .moved_to()
        .and_then(|a| (1..=MEMBERS).find(|&i| client_addr(i) == a))
    {
        *target = leader;
    }
    *conn = None;
    false
}

/// `MULTI`, the commands, `EXEC` on one connection (never re-sent elsewhere
/// halfway: a redirect before `EXEC` means nothing was applied). Keys to
/// watch must have been watched on this connection already.
pub fn transaction(conn: &mut Option<Conn>, target: &mut u64, cmds: &[&[&[u8]]]) -> Effect {
    let Some(c) = connect(conn, *target) else {
        return Effect::None;
    };
    match c.cmd_bytes(&[b"MULTI"]) {
        Ok(Reply::Simple(_)) => {}
        Ok(other) => {
            follow(conn, target, &other);
            return Effect::None;
        }
        Err(_) => {
            *conn = None;
            return Effect::None;
        }
    }
    for cmd in cmds {
        match c.cmd_bytes(cmd) {
            Ok(Reply::Simple(s)) if s == "QUEUED" => {}
            Ok(other) => {
                follow(conn, target, &other);
                return Effect::None;
            }
            Err(_) => {
                *conn = None;
                return Effect::None;
            }
        }
    }
    match c.cmd_bytes(&[b"EXEC"]) {
        Ok(r) => {
            if r.moved_to().is_some() {
                follow(conn, target, &r);
                return Effect::None;
            }
            effect(Outcome::Reply(r))
        }
        Err(_) => {
            *conn = None;
            Effect::Unknown
        }
    }
}

/// Writes this client's expiring key with a deadline 50-300 ms ahead (the
/// value names it) and reads it until a little past the deadline.
pub fn expiring_key(
    id: u64,
    conn: &mut Option<Conn>,
    target: &mut u64,
    rng: &mut Rng,
    r: &mut RedisReport,
    unique: u64,
) -> bool {
    let key = format!("chaos:exp:{id}");
    let deadline = wall_ms() + rng.range(50, 300);
    let value = format!("{unique}@{deadline}");
    let at = deadline.to_string();
    let args: [&[u8]; 5] = [
        b"SET",
        key.as_bytes(),
        value.as_bytes(),
        b"PXAT",
        at.as_bytes(),
    ];
    // Whatever the outcome, a value is read with the deadline it names.
    if !matches!(effect(send(conn, target, &args)), Effect::Reply(_)) {
        return false;
    }
    while wall_ms() < deadline + 30 {
        let sent_ms = wall_ms();
        match send(conn, target, &[b"GET", key.as_bytes()]) {
            Outcome::Reply(Reply::Bulk(v)) => r.expiry.push(ExpiryRead {
                sent_ms,
                seen_deadline_ms: v.and_then(|b| {
                    let t = String::from_utf8_lossy(&b).into_owned();
                    t.split_once('@').and_then(|(_, d)| d.parse().ok())
                }),
            }),
            _ => return false,
        }
        thread::sleep(Duration::from_millis(rng.range(5, 25)));
    }
    true
}
