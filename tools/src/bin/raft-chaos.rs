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

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use raft_proto::sim::linearizability::{self, Op, OpKind};
use raft_proto::Rng;
use tools::checks::{
    self, Acquired, Counter, ExpiryRead, FencedOutcome, FencedRead, FencedWrite, NxOutcome,
};
use tools::netns::{is_root, on_path, Netns};
use tools::resp::{Conn, Reply};

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

struct Cluster {
    dir: PathBuf,
    netns: String,
    raft_node: PathBuf,
}

impl Cluster {
    fn script(&self, script: &str, args: &[&str]) -> bool {
        let out = Command::new(repo_root().join("tools").join(script))
            .args(args)
            .env("DATA", &self.dir)
            .env("RAFT_NETNS", &self.netns)
            .env("RAFT_NODE", &self.raft_node)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => {
                if !o.status.success() {
                    eprintln!(
                        "{script} {args:?} failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
                o.status.success()
            }
            Err(e) => {
                eprintln!("{script}: {e}");
                false
            }
        }
    }

    fn fault(&self, args: &[&str]) -> bool {
        self.script("fault.sh", args)
    }

    fn leader(&self) -> Option<u64> {
        (1..=MEMBERS).find(|&i| {
            let Ok(mut c) = Conn::connect(client_addr(i), Duration::from_millis(300)) else { return false };
            matches!(c.cmd_bytes(&[b"INFO", b"raft"]), Ok(Reply::Bulk(Some(b))) if String::from_utf8_lossy(&b).contains("raft_role:leader"))
        })
    }

    fn alive(&self, i: u64) -> bool {
        let Some(pid) = read_pid(&self.dir, i) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }
}

fn read_pid(dir: &Path, member: u64) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("node{member}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
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
    // Members are started by scripts that exit at once, so they would be
    // reparented to pid 1, which may reap a killed one late: until then
    // it looks alive and cannot be restarted. Adopt them instead, and reap
    // them here as soon as they die.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let reaping = Arc::new(AtomicBool::new(true));
    let reaper = {
        let (dir, reaping) = (dir.to_path_buf(), reaping.clone());
        thread::spawn(move || {
            while reaping.load(Ordering::Relaxed) {
                for i in 1..=MEMBERS {
                    if let Some(pid) = read_pid(&dir, i) {
                        let mut status = 0;
                        // SAFETY: waits only for this pid, without blocking.
                        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    if !cluster.script("cluster.sh", &["start"]) {
        eprintln!("the cluster did not start");
        return ExitCode::FAILURE;
    }
    let start = Instant::now();
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
        if let Err(e) = nemesis(&cluster, &mut rng, &mut schedule, start) {
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
    let mut history: Vec<Op> = Vec::new();
    let (mut ok, mut failed, mut unknown, mut follower_reads) = (0, 0, 0, 0);
    for w in workers {
        let r = w.join().expect("client thread");
        ok += r.ok;
        failed += r.failed;
        unknown += r.unknown;
        follower_reads += r.follower_reads;
        history.extend(r.ops);
    }
    let mut redis = RedisReport::default();
    for w in redis_workers {
        redis.merge(w.join().expect("redis client thread"));
    }

    // Heal: network whole, every member running.
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
    let mut live = None;
    while healed.elapsed() < RECOVERY_BOUND {
        if let Some(Reply::Simple(s)) =
            request(&mut None, &mut 1, &[b"SET", b"chaos-liveness", b"1"])
        {
            if s == "OK" {
                live = Some(healed.elapsed());
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let verdict = match (nemesis_error, schedule.injected, live) {
        (Some(e), _, _) => Err(format!("fault injection failed: {e}")),
        (None, 0, _) => Err("no fault was injected: the run proves nothing".into()),
        (None, _, live) => match live {
            None => Err(format!(
                "liveness: no write succeeded within {} s of healing",
                RECOVERY_BOUND.as_secs()
            )),
            Some(_) => {
                // Final reads of every key through the leader.
                let mut target = cluster.leader().unwrap_or(1);
                for key in 0..args.keys {
                    let t0 = nanos(start);
                    let k = key.to_string();
                    match request(&mut None, &mut target, &[b"GET", k.as_bytes()]) {
                        Some(Reply::Bulk(v)) => history.push(Op {
                            client: 0,
                            key,
                            kind: OpKind::Read(
                                v.and_then(|b| String::from_utf8_lossy(&b).parse().ok()),
                            ),
                            invoke: t0,
                            complete: Some(nanos(start)),
                        }),
                        other => eprintln!("final read of key {key} failed: {other:?}"),
                    }
                }
                linearizability::check(&history)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        // A check of follower reads that saw none would
                        // prove nothing.
                        if follower_reads == 0 {
                            return Err("no read was served through READONLY".into());
                        }
                        Ok(())
                    })
                    .and_then(|()| {
                        let mut target = cluster.leader().unwrap_or(1);
                        redis.finish(&mut target, start)
                    })
            }
        },
    };
    cluster.script("cluster.sh", &["stop"]);
    reaping.store(false, Ordering::Relaxed);
    let _ = reaper.join();
    println!("redis workloads: {}", redis.summary());
    println!(
        "history: {} ops ({ok} ok, of which {follower_reads} reads served through READONLY; {failed} failed, {unknown} unknown), {} faults injected; recovered {} ms after healing",
        history.len(),
        schedule.injected,
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
            for s in &schedule.lines {
                println!("  {s}");
            }
            println!("chaos: 0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

/// One fault.sh call of the nemesis: what it does (for the schedule) and
/// its arguments.
type Step<'a> = (String, Vec<&'a str>);

/// Injects one fault, holds it a while, and undoes it. Every step must take
/// effect; the first that does not is the error.
fn nemesis(c: &Cluster, rng: &mut Rng, s: &mut Schedule, start: Instant) -> Result<(), String> {
    let member = 1 + rng.range(0, MEMBERS);
    let leader = c.leader();
    let follower = leader.map(|l| 1 + (l % MEMBERS)).unwrap_or(member);
    let hold = Duration::from_millis(rng.range(500, 3000));
    let (m, l, f) = (
        member.to_string(),
        leader.unwrap_or(member).to_string(),
        follower.to_string(),
    );
    // One fault.sh step; noted only once it took effect.
    let step = |s: &mut Schedule, what: String, args: &[&str]| -> Result<(), String> {
        if c.fault(args) {
            s.note(start, what);
            Ok(())
        } else {
            Err(format!("{what}: fault.sh {} failed", args.join(" ")))
        }
    };
    let partition_rest: Vec<String> = (1..=MEMBERS)
        .filter(|&i| i != member)
        .map(|i| i.to_string())
        .collect();
    let rest = partition_rest.join(",");
    // (what, inject, undo): a fault and the steps that undo it.
    let (inject, undo): (Vec<Step>, Vec<Step>) = match rng.range(0, 10) {
        0 => (
            vec![(format!("kill {m}"), vec!["kill", &m])],
            vec![(format!("restart {m}"), vec!["restart", &m])],
        ),
        1 => (
            vec![(format!("kill leader {l}"), vec!["kill", &l])],
            vec![(format!("restart {l}"), vec!["restart", &l])],
        ),
        2 => (
            vec![(format!("freeze {l}"), vec!["freeze", &l])],
            vec![(format!("thaw {l}"), vec!["thaw", &l])],
        ),
        3 => (
            vec![(format!("isolate leader {l}"), vec!["isolate", &l])],
            vec![("heal".into(), vec!["heal"])],
        ),
        4 => (
            vec![(format!("isolate follower {f}"), vec!["isolate", &f])],
            vec![("heal".into(), vec!["heal"])],
        ),
        5 => (
            vec![(
                format!("partition {m} | {rest}"),
                vec!["partition", &m, &rest],
            )],
            vec![("heal".into(), vec!["heal"])],
        ),
        6 => (
            vec![("drop 20% of packets".into(), vec!["drop", "20"])],
            vec![("heal".into(), vec!["heal"])],
        ),
        7 => (
            vec![(
                format!("reset connections of leader {l}"),
                vec!["reset", &l],
            )],
            vec![("heal".into(), vec!["heal"])],
        ),
        8 => (
            vec![
                ("kill 1 (kill all)".into(), vec!["kill", "1"]),
                ("kill 2 (kill all)".into(), vec!["kill", "2"]),
                ("kill 3 (kill all)".into(), vec!["kill", "3"]),
            ],
            vec![
                ("restart 1".into(), vec!["restart", "1"]),
                ("restart 2".into(), vec!["restart", "2"]),
                ("restart 3".into(), vec!["restart", "3"]),
            ],
        ),
        _ => (
            vec![(format!("freeze follower {f}"), vec!["freeze", &f])],
            vec![(format!("thaw {f}"), vec!["thaw", &f])],
        ),
    };
    let kill_all = inject.len() > 1;
    for (what, args) in inject {
        step(s, what, &args)?;
    }
    s.injected += 1;
    thread::sleep(if kill_all {
        hold.min(Duration::from_millis(1000))
    } else {
        hold
    });
    for (what, args) in undo {
        step(s, what, &args)?;
    }
    Ok(())
}

fn nanos(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// How a request ended.
enum Outcome {
    /// The server answered.
    Reply(Reply),
    /// It never left: no connection could be made.
    Refused,
    /// Sent, but the connection broke or timed out before an answer.
    Lost,
}

/// Sends one command to member `*target`, following `-MOVED` (up to three
/// times).
fn send(conn: &mut Option<Conn>, target: &mut u64, args: &[&[u8]]) -> Outcome {
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

fn request(conn: &mut Option<Conn>, target: &mut u64, args: &[&[u8]]) -> Option<Reply> {
    match send(conn, target, args) {
        Outcome::Reply(r) => Some(r),
        _ => None,
    }
}

struct ClientReport {
    ops: Vec<Op>,
    ok: u64,
    failed: u64,
    unknown: u64,
    /// Reads served by the member the client chose (READONLY).
    follower_reads: u64,
}

/// One client: sequential reads and writes of unique values until stopped.
fn client(id: u64, seed: u64, keys: u64, start: Instant, stop: &AtomicBool) -> ClientReport {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(id));
    let mut r = ClientReport {
        ops: Vec::new(),
        ok: 0,
        failed: 0,
        unknown: 0,
        follower_reads: 0,
    };
    let mut conn: Option<Conn> = None;
    let mut target = 1 + rng.range(0, MEMBERS);
    // Odd clients read through READONLY on a member of their own choosing
    // (follower reads: a read index from the leader, thesis §6.4); the
    // history mixes them with everyone's writes.
    let mut ro_conn: Option<Conn> = None;
    let mut counter = 0u64;
    let backoff = || thread::sleep(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        let key = rng.range(0, keys);
        let k = key.to_string();
        let invoke = nanos(start);
        if rng.chance(0.5) {
            counter += 1;
            let value = (id << 32) | counter;
            let v = value.to_string();
            let mut op = Op {
                client: id,
                key,
                kind: OpKind::Write(value),
                invoke,
                complete: None,
            };
            match send(
                &mut conn,
                &mut target,
                &[b"SET", k.as_bytes(), v.as_bytes()],
            ) {
                Outcome::Reply(Reply::Simple(s)) if s == "OK" => {
                    op.complete = Some(nanos(start));
                    r.ok += 1;
                    r.ops.push(op);
                }
                // Refused before it was proposed, or known lost to another
                // leader's entry at its index: it never took effect.
                Outcome::Reply(Reply::Error(e))
                    if e.starts_with("CLUSTERDOWN")
                        || e.starts_with("ERR write lost")
                        || e.starts_with("MOVED") =>
                {
                    r.failed += 1;
                    backoff();
                }
                Outcome::Refused => {
                    r.failed += 1;
                    target = 1 + rng.range(0, MEMBERS);
                    backoff();
                }
                // Any other error, a timeout or a broken connection: the
                // write may or may not take effect.
                _ => {
                    r.unknown += 1;
                    r.ops.push(op);
                    conn = None;
                    target = 1 + rng.range(0, MEMBERS);
                    backoff();
                }
            }
        } else if id % 2 == 1 {
            if ro_conn.is_none() {
                let member = 1 + rng.range(0, MEMBERS);
                ro_conn = Conn::connect(client_addr(member), OP_TIMEOUT)
                    .ok()
                    .and_then(|mut c| match c.cmd_bytes(&[b"READONLY"]) {
                        Ok(Reply::Simple(_)) => Some(c),
                        _ => None,
                    });
            }
            match ro_conn
                .as_mut()
                .map(|c| c.cmd_bytes(&[b"GET", k.as_bytes()]))
            {
                Some(Ok(Reply::Bulk(v))) => {
                    let value = v.and_then(|b| String::from_utf8_lossy(&b).parse().ok());
                    r.ok += 1;
                    r.follower_reads += 1;
                    r.ops.push(Op {
                        client: id,
                        key,
                        kind: OpKind::Read(value),
                        invoke,
                        complete: Some(nanos(start)),
                    });
                }
                // MOVED (that member knows no leader), CLUSTERDOWN, a broken
                // connection: no effect; try another member next time.
                _ => {
                    r.failed += 1;
                    ro_conn = None;
                    backoff();
                }
            }
        } else {
            match send(&mut conn, &mut target, &[b"GET", k.as_bytes()]) {
                Outcome::Reply(Reply::Bulk(v)) => {
                    let value = v.and_then(|b| String::from_utf8_lossy(&b).parse().ok());
                    r.ok += 1;
                    r.ops.push(Op {
                        client: id,
                        key,
                        kind: OpKind::Read(value),
                        invoke,
                        complete: Some(nanos(start)),
                    });
                }
                // A failed read had no effect: it is left out of the history.
                Outcome::Reply(_) => {
                    r.failed += 1;
                    backoff();
                }
                Outcome::Refused | Outcome::Lost => {
                    r.failed += 1;
                    conn = None;
                    target = 1 + rng.range(0, MEMBERS);
                    backoff();
                }
            }
        }
    }
    r
}

// ----- The Redis workloads ---------------------------------------------------

const COUNTER: &[u8] = b"chaos:counter";
const CAS: &[u8] = b"chaos:cas";
const TX_A: &[u8] = b"chaos:tx:a";
const TX_B: &[u8] = b"chaos:tx:b";
const XX_NEVER: &[u8] = b"chaos:xx-never";
const LOCK: &[u8] = b"chaos:lock";
const FENCED: &[u8] = b"chaos:fenced";
/// Lease of the chaos lock: short, so that pauses outlive it.
const LOCK_TTL_MS: u64 = 300;
/// `SET NX` races: all clients use the key of the current window.
const NX_WINDOW_MS: u64 = 200;
/// A read sent this long after a deadline must not see the value: the
/// members' clocks are this machine's, read at start plus monotonic time.
const EXPIRY_SLACK_MS: u64 = 5;

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a write's reply says about its effect.
enum Effect {
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
fn effect(o: Outcome) -> Effect {
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
struct RedisReport {
    counter: Counter,
    cas: Counter,
    tx: Counter,
    pairs: Vec<(i64, i64)>,
    nx: Vec<(u64, u64, NxOutcome)>,
    xx_set: u64,
    acquired: Vec<Acquired>,
    writes: Vec<FencedWrite>,
    reads: Vec<FencedRead>,
    aborted: u64,
    expiry: Vec<ExpiryRead>,
}

impl RedisReport {
    fn merge(&mut self, o: RedisReport) {
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

    fn summary(&self) -> String {
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
    fn finish(&mut self, target: &mut u64, start: Instant) -> Result<(), String> {
        let int = |r: Option<Reply>, what: &str| -> Result<i64, String> {
            match r {
                Some(Reply::Bulk(None)) => Ok(0),
                Some(Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b)
                    .parse()
                    .map_err(|_| format!("{what}: not a number")),
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
                value: v.and_then(|b| String::from_utf8_lossy(&b).parse().ok()),
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
                Some(Reply::Bulk(v)) => v.and_then(|b| String::from_utf8_lossy(&b).parse().ok()),
                other => return Err(format!("final read of {key} failed: {other:?}")),
            };
            checks::check_nx(&key, &attempts, value)?;
        }
        checks::check_expiry(&self.expiry, EXPIRY_SLACK_MS)?;
        checks::check_fencing(&self.acquired, &self.writes, &self.reads)
    }
}

/// One Redis client: a random mix of the workloads until stopped.
fn redis_client(id: u64, seed: u64, start: Instant, stop: &AtomicBool) -> RedisReport {
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
            0 => match effect(send(&mut conn, &mut target, &[b"INCR", COUNTER])) {
                Effect::Reply(Reply::Integer(v)) => {
                    r.counter.acked.push(v);
                    true
                }
                Effect::Unknown => {
                    r.counter.unknown += 1;
                    false
                }
                _ => false,
            },
            1 => cas_increment(&mut conn, &mut target, &mut r),
            2 => {
                let cmds: [&[&[u8]]; 2] = [&[b"INCR", TX_A], &[b"INCR", TX_B]];
                match transaction(&mut conn, &mut target, &cmds) {
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
            3 => match send(&mut conn, &mut target, &[b"MGET", TX_A, TX_B]) {
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
            },
            4 => {
                let window = start.elapsed().as_millis() as u64 / NX_WINDOW_MS;
                let key = format!("chaos:nx:{window}");
                let v = unique.to_string();
                let args: [&[u8]; 4] = [b"SET", key.as_bytes(), v.as_bytes(), b"NX"];
                let outcome = match effect(send(&mut conn, &mut target, &args)) {
                    Effect::Reply(Reply::Simple(s)) if s == "OK" => Some(NxOutcome::Set),
                    Effect::Reply(Reply::Bulk(None)) => Some(NxOutcome::Refused),
                    Effect::Unknown => Some(NxOutcome::Unknown),
                    _ => None,
                };
                let done = outcome.is_some();
                if let Some(o) = outcome {
                    r.nx.push((window, unique, o));
                }
                // XX on a key nobody creates: never set.
                let v = unique.to_string();
                if let Effect::Reply(Reply::Simple(_)) = effect(send(
                    &mut conn,
                    &mut target,
                    &[b"SET", XX_NEVER, v.as_bytes(), b"XX"],
                )) {
                    r.xx_set += 1;
                }
                done
            }
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
            _ => {
                let invoke = nanos(start);
                match send(&mut conn, &mut target, &[b"GET", FENCED]) {
                    Outcome::Reply(Reply::Bulk(v)) => {
                        r.reads.push(FencedRead {
                            value: v.and_then(|b| String::from_utf8_lossy(&b).parse().ok()),
                            invoke,
                            complete: nanos(start),
                        });
                        true
                    }
                    _ => false,
                }
            }
        };
        if !progressed {
            conn = None;
            target = 1 + rng.range(0, MEMBERS);
            backoff();
        }
    }
    r
}

/// A read-modify-write guarded by WATCH: read the counter, set it one
/// higher in a transaction. Whether it landed is recorded with the value it
/// set; a conflict aborts it (no effect).
fn cas_increment(conn: &mut Option<Conn>, target: &mut u64, r: &mut RedisReport) -> bool {
    let Some(c) = connect(conn, *target) else {
        return false;
    };
    match c.cmd_bytes(&[b"WATCH", CAS]) {
        Ok(Reply::Simple(_)) => {}
        Ok(other) => return follow(conn, target, &other),
        Err(_) => return false,
    }
    let current = match c.cmd_bytes(&[b"GET", CAS]) {
        Ok(Reply::Bulk(None)) => 0,
        Ok(Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b).parse::<i64>().unwrap_or(-1),
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
fn lock_cycle(
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
fn connect(conn: &mut Option<Conn>, target: u64) -> Option<&mut Conn> {
    if conn.is_none() {
        *conn = Conn::connect(client_addr(target), OP_TIMEOUT).ok();
    }
    conn.as_mut()
}

/// An unexpected reply inside a WATCH/MULTI sequence: a redirect moves the
/// target; the connection is dropped either way (it may hold watches).
fn follow(conn: &mut Option<Conn>, target: &mut u64, reply: &Reply) -> bool {
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
fn transaction(conn: &mut Option<Conn>, target: &mut u64, cmds: &[&[&[u8]]]) -> Effect {
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
fn expiring_key(
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
