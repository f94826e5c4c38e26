//! `raft-drill`: the failover drill. Breaks the leader of a running
//! `raft-node` cluster, N times, and measures how long the others take to
//! notice, to elect a new leader, and to take writes again.
//!
//! ```text
//! # self-contained (root): a fresh network namespace, a cluster in a temp dir
//! raft-drill --start --fault kill --trials 10
//! # an already running cluster, e.g. from `make cluster` (kill/freeze need no root)
//! raft-drill --data data --fault freeze --trials 5
//! # a cluster started with `RAFT_NETNS=ns DATA=dir tools/fault.sh cluster-start`
//! raft-drill --data dir --netns ns --fault isolate --trials 5
//! # the membership drill (root): replace members, rolling restarts, under load
//! raft-drill --start --membership
//! ```
//!
//! `--membership` is a drill of its own, described at [`membership`]; it
//! shares the namespace, cluster and log machinery below.
//!
//! `--start` creates a network namespace (`--netns NAME`, or
//! `raft-drill-PID`), starts three members inside it with `tools/fault.sh
//! cluster-start` in `--data DIR` (or a fresh temp dir), runs the trials and
//! tears everything down again; the data dir is removed unless a check failed
//! or `--keep` is given. With `--netns` the drill re-executes itself inside
//! the namespace (`ip netns exec`), so that its RESP connections and the
//! members it restarts live there.
//!
//! Each trial:
//! 1. waits until the cluster is healthy: every member answers `INFO raft`,
//!    one leader L, every other member follows L in L's term, a SET through
//!    L is acknowledged and applied everywhere;
//! 2. notes the time T0 and injects the fault on L: `kill` (SIGKILL),
//!    `freeze` (SIGSTOP) or `isolate` (`tools/fault.sh isolate L`: all of L's
//!    peer traffic dropped);
//! 3. from T0 on, keeps writing (SET over RESP, every few ms) to the
//!    survivors (`--writes-via all`: each survivor in parallel; `one`: the
//!    lowest-numbered one), following `-MOVED` to another survivor but never
//!    to L, and measures
//!    - **detection**: the first line after T0 in a survivor's `node.log`
//!      saying it lost the leader (`link to leader L lost`, `pre-vote/election
//!      for term ...`, `no leader known`, `became precandidate/candidate`),
//!    - **election**: the first `became leader` line in a survivor after T0,
//!    - **unavailability**: until the first write through a survivor is
//!      acknowledged (`+OK`),
//!
//!    with log times (UTC, milliseconds) compared to the wall clock at T0;
//! 4. recovers: `kill` restarts L from its data dir (`tools/fault.sh
//!    restart`); `freeze` sends SIGCONT; `isolate` heals. For freeze and
//!    isolate it CHECKS that the old leader steps down quietly: within
//!    `--rejoin-ms` it reports `follower` of the current leader in the
//!    current term, and for a second after that no member's term or leader
//!    changes. It also checks, for every fault, that no member died.
//!
//! A failed check is reported with the evidence (the old leader's log since
//! recovery, the last lines of a member that exited); dead members are
//! restarted so that the remaining trials still run, and the drill exits 1
//! at the end. Every wait is bounded (`--failover-timeout-secs`, 30 s for
//! health).

mod cluster;
mod failover;
mod logs;
mod membership;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tools::netns::{is_root, Netns};

/// Set in the environment of the copy of the drill that runs inside the
/// namespace, so that it does not re-execute itself again.
const INSIDE_ENV: &str = "RAFT_DRILL_INSIDE";
/// How long the cluster may take to become healthy before a trial.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeouts of one RESP exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the logs and INFO are polled.
const POLL: Duration = Duration::from_millis(20);

#[derive(Parser, Debug)]
#[command(
    name = "raft-drill",
    about = "Failover drill for raft-node: kill, freeze or isolate the leader N times; \
             print detection, election and unavailability times (p50, p90, max)"
)]
struct Args {
    /// Data dir of the cluster (cluster.toml, nodeN.pid, nodeN/node.log), as
    /// tools/cluster.sh lays it out. Required unless --start.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Network namespace the cluster runs in; the drill runs inside it. With
    /// --start: the name of the namespace to create (default raft-drill-PID).
    #[arg(long)]
    netns: Option<String>,
    /// Start a fresh cluster in a new namespace (needs root), and tear it
    /// down afterwards.
    #[arg(long)]
    start: bool,
    /// What to do to the leader (required unless --membership).
    #[arg(
        long = "fault",
        value_name = "FAULT",
        value_enum,
        required_unless_present = "membership"
    )]
    fault_arg: Option<Fault>,
    /// Instead of a failover drill: the membership drill (needs --start).
    /// Under a steady write load it replaces member 1 (made leader first) by
    /// a joining member 4 and member 2 (a follower) by member 5, then
    /// restarts every member in turn, once with the leader's hand-over at
    /// SIGTERM and once with `shutdown_transfer = false`; it checks that
    /// no acknowledged write is lost and prints each step's time, failed
    /// writes and longest write pause.
    #[arg(long, conflicts_with = "fault_arg")]
    membership: bool,
    /// Concurrent writers in the membership drill.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Number of trials.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    trials: u32,
    /// Where the drill writes during failover: every survivor, or one.
    #[arg(long, value_enum, default_value_t = WritesVia::All)]
    writes_via: WritesVia,
    /// How long one failover may take before the trial fails.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    failover_timeout_secs: u64,
    /// How long a thawed or healed old leader may take to show up as a
    /// follower of the new leader.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    rejoin_ms: u64,
    /// raft-node binary for --start and restarts (default: $RAFT_NODE, else
    /// target/release/raft-node).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// tools/fault.sh (default: the one next to this crate's sources).
    #[arg(long)]
    fault_script: Option<PathBuf>,
    /// With --start: keep the data dir (logs) even when every check passed.
    #[arg(long)]
    keep: bool,
    /// Stop at the first failed check instead of recovering and going on.
    #[arg(long)]
    stop_on_failure: bool,
}

impl Args {
    /// The failover drill's fault; clap requires it unless --membership,
    /// and only the failover drill asks for it.
    fn fault(&self) -> Fault {
        self.fault_arg
            .expect("clap requires --fault unless --membership")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// SIGKILL the leader, then restart it from its data dir.
    Kill,
    /// SIGSTOP the leader, then SIGCONT it.
    Freeze,
    /// Drop all of the leader's peer traffic (fault.sh isolate), then heal.
    Isolate,
}

impl Fault {
    fn verb(self) -> &'static str {
        match self {
            Fault::Kill => "killed",
            Fault::Freeze => "frozen",
            Fault::Isolate => "isolated",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WritesVia {
    /// Every survivor at once; the first acknowledgement counts.
    All,
    /// Only the lowest-numbered survivor (following MOVED to survivors).
    One,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let inside = std::env::var_os(INSIDE_ENV).is_some();
    let result = if args.start && !inside {
        start_outside(&args)
    } else if let (Some(ns), false) = (&args.netns, inside) {
        if !is_root() {
            Err(format!(
                "--netns {ns}: needs root (ip netns exec); run it with sudo"
            ))
        } else {
            Netns::existing(ns).and_then(|ns| reexec_inside(&ns, &[]))
        }
    } else if args.membership {
        membership::run(&args).map(|ok| if ok { 0 } else { 1 })
    } else {
        failover::run(&args).map(|ok| if ok { 0 } else { 1 })
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("raft-drill: {e}");
            ExitCode::from(2)
        }
    }
}

// ----- namespaces -------------------------------------------------------------

/// Runs this program again inside network namespace `ns` with the same
/// arguments (plus `extra`), and returns its exit status.
fn reexec_inside(ns: &Netns, extra: &[OsString]) -> Result<u8, String> {
    let args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .chain(extra.iter().cloned())
        .collect();
    let status = ns.run_self(&args, &[(INSIDE_ENV, ns.name())])?;
    Ok(status
        .code()
        .map_or(1, |c| u8::try_from(c).unwrap_or(1).max(u8::from(c != 0))))
}

/// `--start`, outside the namespace: creates it and a data dir, runs the
/// drill inside, then deletes the namespace (and every process in it).
fn start_outside(args: &Args) -> Result<u8, String> {
    if !is_root() {
        return Err(
            "--start: needs root (it creates a network namespace); run it with sudo".into(),
        );
    }
    let name = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("raft-drill-{}", std::process::id()));
    let (data, temp) = match &args.data {
        Some(d) => (absolute(d)?, false),
        None => (
            std::env::temp_dir().join(format!("raft-drill-{}", std::process::id())),
            true,
        ),
    };
    if data.join("cluster.toml").exists() {
        return Err(format!(
            "--start: {} already holds a cluster; give an empty or new dir",
            data.display()
        ));
    }
    let ns = Netns::create(&name).map_err(|e| format!("--start: {e}"))?;
    fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let extra: Vec<OsString> = if args.data.is_none() {
        vec!["--data".into(), data.clone().into()]
    } else {
        Vec::new()
    };
    let code = reexec_inside(&ns, &extra);
    if let Err(e) = ns.delete() {
        eprintln!("raft-drill: could not delete network namespace {name}: {e}; delete it with `ip netns delete {name}`");
    }
    let code = code?;
    if code == 0 && temp && !args.keep {
        let _ = fs::remove_dir_all(&data);
    } else {
        println!("data dir and logs kept in {}", data.display());
    }
    Ok(code)
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| format!("current dir: {e}"))
    }
}

/// Where the cluster lives and how to act on it, from the arguments: the
/// data dir, tools/fault.sh, and the raft-node binary for restarts
/// (`--bin`, else $RAFT_NODE, else fault.sh's default). `no_data` says
/// why a missing `--data` is an error.
fn cluster_paths(
    args: &Args,
    no_data: &str,
) -> Result<(PathBuf, PathBuf, Option<PathBuf>), String> {
    let data = match &args.data {
        Some(d) => absolute(d)?,
        None => return Err(format!("--data DIR is required ({no_data})")),
    };
    let bin = args
        .bin
        .clone()
        .or_else(|| std::env::var_os("RAFT_NODE").map(PathBuf::from))
        .map(|b| absolute(&b))
        .transpose()?;
    Ok((data, fault_script(args)?, bin))
}

/// Calls `f` every 50 ms until it succeeds or [`HEALTH_TIMEOUT`] passes;
/// the error then says the cluster was not `what`, with `f`'s last error.
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    let mut last = String::from("not checked yet");
    while Instant::now() < deadline {
        match f() {
            Ok(t) => return Ok(t),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "cluster not {what} within {} s: {last}",
        HEALTH_TIMEOUT.as_secs()
    ))
}

fn fault_script(args: &Args) -> Result<PathBuf, String> {
    if let Some(s) = &args.fault_script {
        return Ok(s.clone());
    }
    let next_to_sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("fault.sh");
    for c in [next_to_sources, PathBuf::from("tools/fault.sh")] {
        if c.is_file() {
            return Ok(c);
        }
    }
    Err("tools/fault.sh not found; give --fault-script".into())
}
