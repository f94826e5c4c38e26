//! `raft-load`: a closed-loop load generator for `raft-node` over RESP2.
//!
//! ```text
//! raft-load --addr 127.0.0.1:6401,127.0.0.2:6402 --clients 16 --duration-secs 10 \
//!           --op set --value-size 100 --keys 10000
//! set clients=16 value=100B: 12345 ops/s, p50 1.23 ms, p99 4.56 ms, errors 0
//! ```
//!
//! Each client is one thread with one blocking connection. It sends a batch of
//! `--pipeline` commands, waits for every reply, and repeats until the
//! duration is over. A request's latency runs from the moment its batch was
//! first written to the moment its reply was parsed, including any `-MOVED`
//! hops and `-CLUSTERDOWN` waits on the way, since that is what an application
//! would see.
//!
//! - `-MOVED <slot> host:port`: reconnect there and resend what was redirected.
//! - `-CLUSTERDOWN`: sleep briefly, then resend.
//! - Any other error reply, an unexpected reply, a lost connection or a reply
//!   that does not come within [`GRACE`] after the end counts as an error. A
//!   SET whose connection broke is not resent: its outcome is unknown, and the
//!   interface forbids pretending otherwise.
//!
//! `get` and `mixed` first write every key once (not measured), so a nil
//! reply to a GET means a write was lost and is counted as an error.
//!
//! Latencies go into a log-linear histogram (under 0.8% relative error), so
//! memory stays bounded however long the run is.

use std::fmt::Write as _;
use std::io;
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use raft_proto::Rng;
use tools::resp::{encode_command, Conn, ReadError, Reply};

#[derive(Parser, Debug)]
#[command(
    name = "raft-load",
    about = "Load generator for raft-node: SET/GET throughput and latency over RESP2"
)]
struct Args {
    /// Client addresses, comma separated. Client i starts at address i mod n
    /// and follows `-MOVED` from there.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    /// Concurrent clients (one thread and one connection each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// Length of the measured phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_secs: u64,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Op::Set)]
    op: Op,
    /// Bytes per value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=(1 << 20)))]
    value_size: u32,
    /// Distinct keys, chosen uniformly at random.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    keys: u64,
    /// Commands in flight per client.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pipeline: u32,
    /// Share of GETs in `--op mixed`, in percent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    get_percent: u8,
    /// Print one JSON object instead of the text line.
    #[arg(long)]
    json: bool,
    /// Send `READONLY` on every connection and start the measured phase at
    /// the client's own address again: followers serve the GETs (with a
    /// read index from the leader), so reads spread over all members.
    #[arg(long)]
    readonly: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Set,
    Get,
    Mixed,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
            Op::Mixed => "mixed",
        }
    }
}

/// How long a client waits past the end of the run for replies in flight
/// before it counts them as errors.
const GRACE: Duration = Duration::from_secs(5);
/// Socket read timeout: how often a blocked read wakes to look at the clock.
const READ_POLL: Duration = Duration::from_millis(200);
/// Pause after `-CLUSTERDOWN` or a failed connect before trying again.
const RETRY_SLEEP: Duration = Duration::from_millis(50);
/// Rounds of redirects or failed connects for one batch before its requests
/// count as errors (with [`RETRY_SLEEP`] between most of them).
const MAX_RETRIES: u32 = 50;
/// Distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;
/// Commands per batch when writing the keys before a GET or mixed run.
const POPULATE_PIPELINE: usize = 64;
/// Time allowed for writing the keys before a GET or mixed run.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Histogram

/// Sub-buckets per power of two: values are kept to 8 significant bits.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed to cover every `u64`.
const BUCKETS: usize = ((64 - SUB_BITS as usize) * SUB as usize) + SUB as usize;

/// A log-linear histogram of nanoseconds: exact below 256 ns, then 128
/// buckets per power of two (relative error under 0.8%). Fixed size, so a
/// long run costs no more memory than a short one.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let shift = (63 - v.leading_zeros()) - SUB_BITS;
        (shift as u64 * SUB + (v >> shift)) as usize
    }

    /// Lowest and highest value of bucket `i`.
    fn bounds(i: usize) -> (u64, u64) {
        let i = i as u64;
        if i < 2 * SUB {
            return (i, i);
        }
        let shift = i / SUB - 1;
        let low = (i - shift * SUB) << shift;
        (low, low + ((1u64 << shift) - 1))
    }

    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), in nanoseconds; 0 if empty.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = Self::bounds(i);
                return (low + (high - low) / 2).min(self.max);
            }
        }
        self.max
    }
}

// ---------------------------------------------------------------------------
// Clients

/// What one client counted.
struct Stats {
    hist: Histogram,
    ops: u64,
    errors: u64,
    redirects: u64,
    error_samples: Vec<String>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            hist: Histogram::new(),
            ops: 0,
            errors: 0,
            redirects: 0,
            error_samples: Vec::new(),
        }
    }

    /// Counts `n` failed requests and keeps `what` for the report.
    fn error(&mut self, n: u64, what: &str) {
        self.errors += n;
        self.note(what);
    }

    /// Keeps a message for the report without counting an error (a failed
    /// connect is retried, not lost).
    fn note(&mut self, what: &str) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES
            && !self.error_samples.iter().any(|s| s == what)
        {
            self.error_samples.push(what.to_string());
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.hist.merge(&other.hist);
        self.ops += other.ops;
        self.errors += other.errors;
        self.redirects += other.redirects;
        for s in &other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(s) {
                self.error_samples.push(s.clone());
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum ReqKind {
    Get,
    Set,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    kind: ReqKind,
    key: u64,
    /// When the request was first written; latency is measured from here.
    first_sent: Option<Instant>,
}

/// Connects to `addr` (a name or an address, as `--addr` and `-MOVED` give
/// it) with the load's timeouts: reads wake every [`READ_POLL`] to look at
/// the clock; a write stuck for [`GRACE`] fails.
fn connect(addr: &str) -> io::Result<Conn> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(READ_POLL))?;
    stream.set_write_timeout(Some(GRACE))?;
    Ok(Conn::new(stream))
}

/// What a failed read is reported as.
fn read_failure(e: &ReadError) -> String {
    match e {
        ReadError::TimedOut => "no reply before the end of the grace period".into(),
        e => e.to_string(),
    }
}

fn key_name(key: u64) -> String {
    format!("key:{key:010}")
}

/// One client: a connection that follows the leader.
struct Client<'a> {
    addrs: &'a [String],
    /// Where to connect next when there is no connection.
    target: String,
    /// Rotates through `addrs` when connecting fails.
    next_addr: usize,
    conn: Option<Conn>,
    value: Vec<u8>,
    out: Vec<u8>,
    stats: Stats,
    /// Send `READONLY` first on every connection.
    readonly: bool,
}

impl<'a> Client<'a> {
    fn new(addrs: &'a [String], first: usize, value_size: usize) -> Self {
        Client {
            addrs,
            target: addrs[first % addrs.len()].clone(),
            next_addr: first + 1,
            conn: None,
            value: vec![b'x'; value_size],
            out: Vec::new(),
            stats: Stats::new(),
            readonly: false,
        }
    }

    /// Connects if needed; on failure moves to the next address and sleeps.
    fn ensure_connected(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        let connected = connect(&self.target).and_then(|mut c| {
            if self.readonly {
                c.send(&[b"READONLY"])?;
                match c.read_before(Instant::now() + GRACE) {
                    Ok(Reply::Simple(_)) => {}
                    Ok(other) => {
                        return Err(io::Error::other(format!("READONLY answered {other:?}")))
                    }
                    Err(_) => return Err(io::Error::other("no answer to READONLY")),
                }
            }
            Ok(c)
        });
        match connected {
            Ok(c) => {
                self.conn = Some(c);
                true
            }
            Err(e) => {
                self.stats.note(&format!("connect {}: {e}", self.target));
                self.target = self.addrs[self.next_addr % self.addrs.len()].clone();
                self.next_addr += 1;
                thread::sleep(RETRY_SLEEP);
                false
            }
        }
    }

    /// Sends `batch` and waits for every reply, following redirects. Records
    /// latencies into the stats when `measure` is set; errors are always
    /// counted. Gives up at `hard_deadline`.
    fn run_batch(&mut self, batch: &mut Vec<Request>, measure: bool, hard_deadline: Instant) {
        let mut rounds = 0;
        let mut last_retry = "MOVED/CLUSTERDOWN";
        while !batch.is_empty() {
            if Instant::now() >= hard_deadline {
                self.stats.error(
                    batch.len() as u64,
                    "no reply before the end of the grace period",
                );
                batch.clear();
                return;
            }
            if rounds > MAX_RETRIES {
                self.stats.error(
                    batch.len() as u64,
                    &format!("gave up after {MAX_RETRIES} retries (last: {last_retry})"),
                );
                batch.clear();
                return;
            }
            rounds += 1;
            if !self.ensure_connected() {
                last_retry = "connect failed";
                continue;
            }
            self.out.clear();
            let now = Instant::now();
            for r in batch.iter_mut() {
                r.first_sent.get_or_insert(now);
                let key = key_name(r.key);
                match r.kind {
                    ReqKind::Get => encode_command(&mut self.out, &[b"GET", key.as_bytes()]),
                    ReqKind::Set => {
                        encode_command(&mut self.out, &[b"SET", key.as_bytes(), &self.value])
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            if let Err(e) = conn.write_all(&self.out) {
                // Nothing or part of the batch reached the server: every
                // outcome is unknown.
                self.stats
                    .error(batch.len() as u64, &format!("write failed: {e}"));
                self.conn = None;
                batch.clear();
                return;
            }
            let mut retry = Vec::new();
            let mut moved_to: Option<String> = None;
            let mut cluster_down = false;
            for (i, r) in batch.iter().enumerate() {
                let reply = match conn.read_before(hard_deadline) {
                    Ok(reply) => reply,
                    Err(e) => {
                        self.stats
                            .error((batch.len() - i) as u64, &read_failure(&e));
                        self.conn = None;
                        batch.clear();
                        return;
                    }
                };
                match classify(r.kind, &reply, self.value.len()) {
                    Outcome::Ok => {
                        if measure {
                            let sent = r.first_sent.expect("stamped before writing");
                            self.stats.hist.record(sent.elapsed());
                            self.stats.ops += 1;
                        }
                    }
                    Outcome::Moved(addr) => {
                        self.stats.redirects += 1;
                        moved_to = Some(addr);
                        retry.push(*r);
                    }
                    Outcome::ClusterDown => {
                        self.stats.redirects += 1;
                        cluster_down = true;
                        retry.push(*r);
                    }
                    Outcome::Error(what) => self.stats.error(1, &what),
                }
            }
            *batch = retry;
            if let Some(addr) = moved_to {
                if addr != self.target {
                    self.target = addr;
                    self.conn = None;
                } else {
                    // Sent back to where we are: the leader is changing.
                    thread::sleep(RETRY_SLEEP);
                }
            } else if cluster_down {
                thread::sleep(RETRY_SLEEP);
            }
            last_retry = if cluster_down { "CLUSTERDOWN" } else { "MOVED" };
        }
    }
}

enum Outcome {
    Ok,
    Moved(String),
    ClusterDown,
    Error(String),
}

fn classify(kind: ReqKind, reply: &Reply, value_size: usize) -> Outcome {
    match (kind, reply) {
        (_, Reply::Error(e)) => {
            let mut words = e.split_ascii_whitespace();
            match words.next() {
                Some("MOVED") => match (words.next(), words.next()) {
                    (Some(_slot), Some(addr)) => Outcome::Moved(addr.to_string()),
                    _ => Outcome::Error(format!("malformed redirect: -{e}")),
                },
                Some("CLUSTERDOWN") => Outcome::ClusterDown,
                _ => Outcome::Error(format!("-{e}")),
            }
        }
        (ReqKind::Set, Reply::Simple(s)) if s == "OK" => Outcome::Ok,
        (ReqKind::Get, Reply::Bulk(Some(v))) if v.len() == value_size => Outcome::Ok,
        (ReqKind::Get, Reply::Bulk(Some(v))) => Outcome::Error(format!(
            "GET returned {} bytes, expected {value_size}",
            v.len()
        )),
        (ReqKind::Get, Reply::Bulk(None)) => {
            Outcome::Error("GET returned nil for a key that was written".into())
        }
        (kind, other) => Outcome::Error(format!("unexpected reply to {kind:?}: {other:?}")),
    }
}

/// Client `id` of `clients`: writes its share of the keys, waits at the
/// barrier, then runs for `duration`.
fn run_client(args: &Args, id: u32, barrier: &Barrier, duration: Duration) -> Stats {
    let mut client = Client::new(&args.addr, id as usize, args.value_size as usize);
    let mut batch = Vec::with_capacity(POPULATE_PIPELINE.max(args.pipeline as usize));

    if args.op != Op::Set {
        let populate_deadline = Instant::now() + POPULATE_TIMEOUT;
        let mut key = u64::from(id);
        while key < args.keys && Instant::now() < populate_deadline {
            while batch.len() < POPULATE_PIPELINE && key < args.keys {
                batch.push(Request {
                    kind: ReqKind::Set,
                    key,
                    first_sent: None,
                });
                key += u64::from(args.clients);
            }
            let sent = batch.len() as u64;
            let errors = client.stats.errors;
            client.run_batch(&mut batch, false, populate_deadline);
            if client.stats.errors - errors == sent {
                // Not one write got through: the cluster is unusable, and the
                // measured phase will say so.
                break;
            }
        }
        if key < args.keys {
            client
                .stats
                .note("writing the keys before the run stopped early");
        }
        // Errors while populating would make later GETs fail; report them
        // as part of the run rather than hide them.
    }
    if args.readonly {
        // Populating followed MOVED to the leader: start over at this
        // client's own member, with READONLY.
        client.readonly = true;
        client.conn = None;
        client.target = args.addr[id as usize % args.addr.len()].clone();
    }
    // Connect before the clock starts, so the first requests do not pay for
    // the handshake.
    let connect_deadline = Instant::now() + GRACE;
    while !client.ensure_connected() && Instant::now() < connect_deadline {}

    barrier.wait();
    let start = Instant::now();
    let deadline = start + duration;
    let hard_deadline = deadline + GRACE;
    // Each client its own stream of keys (raft-proto's seeded SplitMix64).
    let mut rng = Rng::new(u64::from(id));
    while Instant::now() < deadline {
        batch.clear();
        for _ in 0..args.pipeline {
            let kind = match args.op {
                Op::Set => ReqKind::Set,
                Op::Get => ReqKind::Get,
                Op::Mixed if rng.range(0, 100) < u64::from(args.get_percent) => ReqKind::Get,
                Op::Mixed => ReqKind::Set,
            };
            batch.push(Request {
                kind,
                key: rng.range(0, args.keys),
                first_sent: None,
            });
        }
        client.run_batch(&mut batch, true, hard_deadline);
    }
    client.stats
}

// ---------------------------------------------------------------------------
// Report

struct Report<'a> {
    args: &'a Args,
    stats: Stats,
    elapsed: Duration,
}

impl Report<'_> {
    fn ops_per_sec(&self) -> f64 {
        self.stats.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        self.stats.hist.quantile(q) as f64 / 1e6
    }

    fn text(&self) -> String {
        let a = self.args;
        let mut s = format!("{} clients={}", a.op.as_str(), a.clients);
        if a.pipeline > 1 {
            let _ = write!(s, " pipeline={}", a.pipeline);
        }
        let _ = write!(
            s,
            " value={}B: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
            a.value_size,
            self.ops_per_sec(),
            self.ms(0.50),
            self.ms(0.99),
            self.stats.errors
        );
        s
    }

    fn json(&self) -> String {
        let a = self.args;
        let samples: Vec<String> = self
            .stats
            .error_samples
            .iter()
            .map(|e| json_string(e))
            .collect();
        format!(
            concat!(
                "{{\"op\":\"{}\",\"clients\":{},\"pipeline\":{},\"value_size\":{},",
                "\"keys\":{},\"duration_secs\":{:.3},\"ops\":{},\"ops_per_sec\":{:.1},",
                "\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},",
                "\"max_ms\":{:.3},\"errors\":{},\"redirects\":{},\"error_samples\":[{}]}}"
            ),
            a.op.as_str(),
            a.clients,
            a.pipeline,
            a.value_size,
            a.keys,
            self.elapsed.as_secs_f64(),
            self.stats.ops,
            self.ops_per_sec(),
            self.ms(0.50),
            self.ms(0.90),
            self.ms(0.99),
            self.ms(0.999),
            self.stats.hist.max as f64 / 1e6,
            self.stats.errors,
            self.stats.redirects,
            samples.join(",")
        )
    }
}

fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn main() -> ExitCode {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration_secs);
    let barrier = Barrier::new(args.clients as usize + 1);

    let (stats, elapsed) = thread::scope(|s| {
        let handles: Vec<_> = (0..args.clients)
            .map(|id| {
                let (args, barrier) = (&args, &barrier);
                thread::Builder::new()
                    .name(format!("client-{id}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || run_client(args, id, barrier, duration))
                    .expect("spawning a client thread")
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut total = Stats::new();
        for h in handles {
            match h.join() {
                Ok(st) => total.merge(&st),
                Err(_) => total.error(1, "a client thread panicked"),
            }
        }
        (total, start.elapsed())
    });

    let report = Report {
        args: &args,
        stats,
        elapsed,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.text());
        if report.stats.redirects > 0 {
            eprintln!("  redirects followed: {}", report.stats.redirects);
        }
        for e in &report.stats.error_samples {
            eprintln!("  seen: {e}");
        }
    }
    if report.stats.ops == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_classified() {
        let moved = Reply::Error("MOVED 0 127.0.0.2:6402".into());
        assert!(
            matches!(classify(ReqKind::Set, &moved, 1), Outcome::Moved(a) if a == "127.0.0.2:6402")
        );
        let down = Reply::Error("CLUSTERDOWN no leader".into());
        assert!(matches!(
            classify(ReqKind::Get, &down, 1),
            Outcome::ClusterDown
        ));
        let nil = Reply::Bulk(None);
        assert!(matches!(classify(ReqKind::Get, &nil, 1), Outcome::Error(_)));
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut prev_high = None;
        for i in 0..BUCKETS {
            let (low, high) = Histogram::bounds(i);
            assert!(low <= high);
            if let Some(p) = prev_high {
                assert_eq!(low, p + 1, "bucket {i}");
            }
            assert_eq!(Histogram::index(low), i);
            assert_eq!(Histogram::index(high), i);
            assert!((high - low) as f64 <= low as f64 / 128.0 + 1.0);
            prev_high = Some(high);
        }
        assert_eq!(prev_high, Some(u64::MAX));
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5) as f64 / 1e3;
        let p99 = h.quantile(0.99) as f64 / 1e3;
        assert!((p50 - 500.0).abs() < 500.0 * 0.01, "p50 {p50}");
        assert!((p99 - 990.0).abs() < 990.0 * 0.01, "p99 {p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }
}
