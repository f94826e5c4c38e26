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
//! Latencies go into an HDR histogram (`hdrhistogram`, two significant
//! digits: under 0.8% relative error) of fixed size, so memory stays
//! bounded however long the run is.

use std::fmt::Write as _;
use std::io;
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use raft_proto::Rng;
use serde::Serialize;
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

/// Latencies in nanoseconds, from 1 ns to an hour (longer ones are recorded
/// as an hour), to two significant digits: 4,608 counters (36 KiB) per
/// client.
type Histogram = hdrhistogram::Histogram<u64>;

/// The longest latency the histogram tells apart, in nanoseconds.
const HISTOGRAM_MAX_NS: u64 = 3_600 * 1_000_000_000;

fn histogram() -> Histogram {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, 2).expect("valid histogram bounds")
}

fn record(h: &mut Histogram, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
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
            hist: histogram(),
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
        self.hist
            .add(&other.hist)
            .expect("histograms of the same bounds");
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
                            record(&mut self.stats.hist, sent.elapsed());
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
        self.stats.hist.value_at_quantile(q) as f64 / 1e6
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
        // Rounded as the text report rounds, so the numbers read the same.
        let round = |x: f64, places: i32| {
            let p = 10f64.powi(places);
            (x * p).round() / p
        };
        let report = JsonReport {
            op: a.op.as_str(),
            clients: a.clients,
            pipeline: a.pipeline,
            value_size: a.value_size,
            keys: a.keys,
            duration_secs: round(self.elapsed.as_secs_f64(), 3),
            ops: self.stats.ops,
            ops_per_sec: round(self.ops_per_sec(), 1),
            p50_ms: round(self.ms(0.50), 3),
            p90_ms: round(self.ms(0.90), 3),
            p99_ms: round(self.ms(0.99), 3),
            p999_ms: round(self.ms(0.999), 3),
            max_ms: round(self.stats.hist.max() as f64 / 1e6, 3),
            errors: self.stats.errors,
            redirects: self.stats.redirects,
            error_samples: &self.stats.error_samples,
        };
        serde_json::to_string(&report).expect("a report serialises")
    }
}

/// `--json`: one object on one line, in this field order (tools/bench-server.sh
/// reads fields by name, and `error_samples` last).
#[derive(Serialize)]
struct JsonReport<'a> {
    op: &'a str,
    clients: u32,
    pipeline: u32,
    value_size: u32,
    keys: u64,
    duration_secs: f64,
    ops: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    errors: u64,
    redirects: u64,
    error_samples: &'a [String],
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
    fn histogram_quantiles() {
        let mut h = histogram();
        assert_eq!(h.distinct_values(), 4608, "the size the doc states");
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p50 = h.value_at_quantile(0.5) as f64 / 1e3;
        let p99 = h.value_at_quantile(0.99) as f64 / 1e3;
        assert!((p50 - 500.0).abs() < 500.0 * 0.01, "p50 {p50}");
        assert!((p99 - 990.0).abs() < 990.0 * 0.01, "p99 {p99}");
        let max = h.max() as f64 / 1e3;
        assert!((max - 1000.0).abs() < 1000.0 * 0.01, "max {max}");
        record(&mut h, Duration::from_secs(7200));
        assert!(h.max() >= HISTOGRAM_MAX_NS);
    }

    #[test]
    fn json_report_keeps_its_fields_in_order() {
        let args = Args::parse_from(["raft-load", "--addr", "127.0.0.1:6401"]);
        let mut stats = Stats::new();
        stats.ops = 3;
        record(&mut stats.hist, Duration::from_millis(2));
        stats.error_samples.push("a \"quoted\" error".into());
        let r = Report {
            args: &args,
            stats,
            elapsed: Duration::from_millis(1500),
        };
        let json = r.json();
        let fields = [
            "op",
            "clients",
            "pipeline",
            "value_size",
            "keys",
            "duration_secs",
            "ops",
            "ops_per_sec",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "errors",
            "redirects",
            "error_samples",
        ];
        let at: Vec<usize> = fields
            .iter()
            .map(|f| {
                json.find(&format!("\"{f}\":"))
                    .unwrap_or_else(|| panic!("{f}: {json}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(
            json.starts_with(r#"{"op":"set","clients":1,"pipeline":1,"value_size":100,"keys":10000,"duration_secs":1.5,"ops":3,"ops_per_sec":2.0,"p50_ms":2.0"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""errors":0,"redirects":0,"error_samples":["a \"quoted\" error"]}"#),
            "{json}"
        );
    }
}
