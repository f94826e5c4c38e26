//! `raft-chaos`: a Jepsen-style check of a real raft-node cluster.
//!
//! Creates a private network namespace (every iptables rule stays inside
//! it; deleting it removes everything), starts three members there with
//! `tools/cluster.sh`, runs concurrent clients that write unique values and
//! read a few keys, and lets a seeded nemesis inject faults through
//! `tools/fault.sh`: kill and restart, freeze and thaw, isolate the leader
//! or a follower, majority/minority partitions, packet loss, connection
//! resets, kill everything and restart. Every operation is recorded with its
//! start, end and outcome (ok, failed, or unknown when a write timed out or
//! its connection broke). At the end the network heals, every member runs
//! again, and the checker requires:
//!
//! - the cluster is live again (a write succeeds) within a bound;
//! - the history, ending with a read of every key, is linearizable per key
//!   (so every acknowledged write is readable or overwritten by a later one);
//! - the Redis workloads (see `tools::checks`), run by other clients at the
//!   same time: a counter's `INCR`s are never lost or doubled, `SET NX`
//!   races have one winner and `SET XX` never creates a key, a transaction's
//!   two `INCR`s are always seen together, `WATCH`-guarded increments never
//!   both land from one read, a key written with `PXAT` is never read after
//!   its deadline, and a `FENCED.SET` with a stale token (its client paused
//!   past its lock's lease) never lands.
//!
//! On failure it prints the seed, the fault schedule and the smallest failing
//! window of history, and keeps the members' data dirs and logs.
//!
//! ```text
//! sudo target/release/raft-chaos --seed 7 --duration-secs 60
//! ```

mod cluster;
mod nemesis;
mod redis;
mod register;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use raft_proto::sim::linearizability::{self, Op, OpKind};
use raft_proto::Rng;
use tools::netns::{is_root, on_path, Netns};
use tools::resp::Reply;

use cluster::{Cluster, Reaper};
use nemesis::nemesis;
use redis::{redis_client, RedisReport};
use register::{bulk_value, client, nanos, request, ClientReport};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "raft-chaos",
    about = "Jepsen-style linearizability check of a real raft-node cluster under faults (needs root)"
)]
struct Args {
    /// Seed of the fault schedule and the client workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of faults and load.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Keys the clients share.
    #[arg(long, default_value_t = 3)]
    keys: u64,
    /// Clients running the Redis workloads (INCR, SET NX/XX, transactions,
    /// WATCH, locks with fenced writes), beside the register clients.
    #[arg(long, default_value_t = 4)]
    redis_clients: u64,
    /// The raft-node binary.
    #[arg(long, default_value = "target/release/raft-node")]
    raft_node: PathBuf,
    /// Keep the data dirs and logs even when the check passes.
    #[arg(long)]
    keep: bool,
    /// Internal: run inside the namespace with this data dir.
    #[arg(long, hide = true)]
    inside: Option<PathBuf>,
    /// Internal: the namespace's name.
    #[arg(long, hide = true)]
    netns: Option<String>,
}

const MEMBERS: u64 = 3;
/// A request that has no answer within this is abandoned: a write's outcome
/// is then unknown.
const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// After healing, a write must succeed within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn client_addr(i: u64) -> SocketAddr {
    format!("127.0.0.{i}:640{i}")
        .parse()
        .expect("valid address")
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.inside {
        Some(dir) => inside(&args, dir),
        None => outside(&args),
    }
}

/// Creates the namespace, runs the check inside it, cleans up.
fn outside(args: &Args) -> ExitCode {
    if !is_root() {
        eprintln!(
            "raft-chaos needs root (it creates a network namespace and iptables rules inside it)"
        );
        return ExitCode::FAILURE;
    }
    // Every network fault needs these; without them the nemesis would
    // inject nothing and the run would prove nothing.
    for tool in ["ip", "iptables", "iptables-restore"] {
        if !on_path(tool) {
            eprintln!(
                "raft-chaos: {tool} not found: faults cannot be injected \
                 (apt-get install iproute2 iptables)"
            );
            return ExitCode::FAILURE;
        }
    }
    let raft_node = match std::fs::canonicalize(&args.raft_node) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "{}: {e} (build it with cargo build --release)",
                args.raft_node.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("raft-chaos-{pid}"));
    let _ = std::fs::create_dir_all(&dir);
    let ns = match Netns::create(&format!("raft-chaos-{pid}")) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("could not create network namespace: {e}");
            return ExitCode::FAILURE;
        }
    };
    let inside_args: Vec<OsString> = vec![
        "--inside".into(),
        dir.clone().into(),
        "--netns".into(),
        ns.name().into(),
        "--raft-node".into(),
        raft_node.into(),
        "--seed".into(),
        args.seed.to_string().into(),
        "--duration-secs".into(),
        args.duration_secs.to_string().into(),
        "--clients".into(),
        args.clients.to_string().into(),
        "--keys".into(),
        args.keys.to_string().into(),
        "--redis-clients".into(),
        args.redis_clients.to_string().into(),
    ];
    let status = ns.run_self(&inside_args, &[]);
    if let Err(e) = &status {
        eprintln!("raft-chaos: {e}");
    }
    // Whatever happened inside: nothing of it may outlive the run.
    if let Err(e) = ns.delete() {
        eprintln!("raft-chaos: {e}");
    }
    let passed = status.is_ok_and(|s| s.success());
    if passed && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("member data dirs and logs kept in {}", dir.display());
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the nemesis did and undid, for the report, and how many faults
/// took effect (fault.sh checked them: a rule in place, a process stopped).
struct Schedule {
    lines: Vec<String>,
    injected: usize,
}

impl Schedule {
    fn note(&mut self, start: Instant, what: String) {
        println!("{:8.3}s nemesis: {what}", start.elapsed().as_secs_f64());
        self.lines
            .push(format!("{:8.3}s {what}", start.elapsed().as_secs_f64()));
    }
}

/// Inside the namespace: starts the cluster, runs the clients and the
/// nemesis for the run's duration, heals, checks, reports.
fn inside(args: &Args, dir: &Path) -> ExitCode {
    let cluster = Cluster {
        dir: dir.to_path_buf(),
        netns: args.netns.clone().expect("--netns with --inside"),
        raft_node: args.raft_node.clone(),
    };
    println!(
        "seed {}: {} clients, {} keys, {} s of faults; data in {}",
        args.seed,
        args.clients,
        args.keys,
        args.duration_secs,
        dir.display()
    );
    let reaper = Reaper::adopt(dir);
    if !cluster.script("cluster.sh", &["start"]) {
        eprintln!("the cluster did not start");
        return ExitCode::FAILURE;
    }
    let start = Instant::now();
    let mut run = under_faults(args, &cluster, start);
    let live = heal(&cluster, &mut run.schedule, start);
    let verdict = match (&run.nemesis_error, run.schedule.injected, live) {
        (Some(e), _, _) => Err(format!("fault injection failed: {e}")),
        (None, 0, _) => Err("no fault was injected: the run proves nothing".into()),
        (None, _, None) => Err(format!(
            "liveness: no write succeeded within {} s of healing",
            RECOVERY_BOUND.as_secs()
        )),
        (None, _, Some(_)) => check(args, &cluster, &mut run, start),
    };
    cluster.script("cluster.sh", &["stop"]);
    reaper.stop();
    let h = &run.history;
    println!("redis workloads: {}", run.redis.summary());
    println!(
        "history: {} ops ({} ok, of which {} reads served through READONLY; {} failed, {} unknown), {} faults injected; recovered {} ms after healing",
        h.ops.len(),
        h.ok,
        h.follower_reads,
        h.failed,
        h.unknown,
        run.schedule.injected,
        live.map_or("never".to_string(), |d| d.as_millis().to_string())
    );
    match verdict {
        Ok(()) => {
            println!("linearizable: yes");
            println!("chaos: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAILED seed {}: {e}", args.seed);
            println!("fault schedule:");
            for s in &run.schedule.lines {
                println!("  {s}");
            }
            println!("chaos: 0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

/// What the clients and the nemesis did during the run.
struct Run {
    history: ClientReport,
    redis: RedisReport,
    schedule: Schedule,
    /// The fault that did not take effect or could not be undone.
    nemesis_error: Option<String>,
}

/// Runs the register and Redis clients for `--duration-secs`, with the
/// nemesis injecting faults until 4 s before the end; returns what they
/// recorded.
fn under_faults(args: &Args, cluster: &Cluster, start: Instant) -> Run {
    let end = start + Duration::from_secs(args.duration_secs);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..args.clients)
        .map(|c| {
            let stop = stop.clone();
            let (seed, keys) = (args.seed, args.keys);
            thread::spawn(move || client(c + 1, seed, keys, start, &stop))
        })
        .collect();
    let redis_workers: Vec<_> = (0..args.redis_clients)
        .map(|c| {
            let stop = stop.clone();
            let id = 1000 + c;
            let seed = args.seed;
            thread::spawn(move || redis_client(id, seed, start, &stop))
        })
        .collect();
    let mut schedule = Schedule {
        lines: Vec::new(),
        injected: 0,
    };
    let mut rng = Rng::new(args.seed ^ 0xC4A0_5000);
    let mut nemesis_error = None;
    while Instant::now() + Duration::from_secs(4) < end {
        thread::sleep(Duration::from_millis(rng.range(300, 1500)));
        if let Err(e) = nemesis(cluster, &mut rng, &mut schedule, start) {
            // A fault that did not take effect (or could not be undone)
            // fails the run: the history would not mean what it claims.
            eprintln!("nemesis: {e}");
            nemesis_error = Some(e);
            break;
        }
    }
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = ClientReport::default();
    for w in workers {
        history.merge(w.join().expect("client thread"));
    }
    let mut redis = RedisReport::default();
    for w in redis_workers {
        redis.merge(w.join().expect("redis client thread"));
    }
    Run {
        history,
        redis,
        schedule,
        nemesis_error,
    }
}

/// Heals the network, thaws every member and restarts the dead; returns
/// how long until a write succeeded, if one did within
/// [`RECOVERY_BOUND`].
fn heal(cluster: &Cluster, schedule: &mut Schedule, start: Instant) -> Option<Duration> {
    cluster.fault(&["heal"]);
    for i in 1..=MEMBERS {
        if cluster.alive(i) {
            cluster.fault(&["thaw", &i.to_string()]);
        } else {
            cluster.fault(&["restart", &i.to_string()]);
        }
    }
    schedule.note(start, "heal all, thaw all, restart the dead".into());
    let healed = Instant::now();
    while healed.elapsed() < RECOVERY_BOUND {
        if let Some(Reply::Simple(s)) =
            request(&mut None, &mut 1, &[b"SET", b"chaos-liveness", b"1"])
        {
            if s == "OK" {
                return Some(healed.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Reads every key through the leader into the history, then checks it
/// for linearizability, and the Redis workloads.
fn check(args: &Args, cluster: &Cluster, run: &mut Run, start: Instant) -> Result<(), String> {
    let history = &mut run.history.ops;
    let mut target = cluster.leader().unwrap_or(1);
    for key in 0..args.keys {
        let t0 = nanos(start);
        let k = key.to_string();
        match request(&mut None, &mut target, &[b"GET", k.as_bytes()]) {
            Some(Reply::Bulk(v)) => history.push(Op {
                client: 0,
                key,
                kind: OpKind::Read(bulk_value(v)),
                invoke: t0,
                complete: Some(nanos(start)),
            }),
            other => eprintln!("final read of key {key} failed: {other:?}"),
        }
    }
    linearizability::check(history).map_err(|e| e.to_string())?;
    // A check of follower reads that saw none would prove nothing.
    if run.history.follower_reads == 0 {
        return Err("no read was served through READONLY".into());
    }
    let mut target = cluster.leader().unwrap_or(1);
    run.redis.finish(&mut target, start)
}
