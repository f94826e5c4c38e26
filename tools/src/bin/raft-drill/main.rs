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

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use tools::netns::{is_root, on_path, Netns};
use tools::resp::{Conn, Reply};

/// Set in the environment of the copy of the drill that runs inside the
/// namespace, so that it does not re-execute itself again.
const INSIDE_ENV: &str = "RAFT_DRILL_INSIDE";
/// How long the cluster may take to become healthy before a trial.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeouts of one RESP exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between write attempts that did not succeed.
const WRITE_RETRY: Duration = Duration::from_millis(5);
/// How often the logs and INFO are polled.
const POLL: Duration = Duration::from_millis(20);
/// After the old leader rejoined: how long nothing may change.
const QUIET_WINDOW: Duration = Duration::from_secs(1);

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
        run_drill(&args).map(|ok| if ok { 0 } else { 1 })
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

// ----- the cluster -----------------------------------------------------------

/// One member, as the cluster file and the data dir describe it.
#[derive(Clone, Debug)]
struct Member {
    id: u64,
    client_addr: SocketAddr,
    pid_file: PathBuf,
    log: PathBuf,
}

/// What the drill knows of the cluster, and how to act on it.
struct Cluster {
    data: PathBuf,
    members: Vec<Member>,
    heartbeat_ms: u64,
    election_timeout_ms: (u64, u64),
    script: PathBuf,
    bin: Option<PathBuf>,
}

/// The parts of `cluster.toml` the drill reads and writes (the whole format
/// is raft-server/src/config.rs's `ClusterFile`); every other setting is
/// kept as read and written back as it was.
#[derive(Debug, Deserialize, Serialize)]
struct ClusterFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    election_timeout_ms: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_transfer: Option<bool>,
    /// Every other top-level setting (`secret_file`, ...).
    #[serde(flatten)]
    other: toml::Table,
    /// Serialised last: a TOML array of tables ends the top level.
    #[serde(rename = "node", default)]
    nodes: Vec<NodeEntry>,
}

/// One `[[node]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
struct NodeEntry {
    id: u64,
    peer_addr: String,
    client_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
}

impl ClusterFile {
    fn path(data: &Path) -> PathBuf {
        data.join("cluster.toml")
    }

    fn read(data: &Path) -> Result<ClusterFile, String> {
        let file = ClusterFile::path(data);
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Writes the file back, `comment` (lines starting with `#`) first.
    fn write(&self, data: &Path, comment: &str) -> Result<(), String> {
        let file = ClusterFile::path(data);
        let text = toml::to_string(self).map_err(|e| format!("{}: {e}", file.display()))?;
        fs::write(&file, format!("{comment}{text}")).map_err(|e| format!("{}: {e}", file.display()))
    }
}

impl Cluster {
    fn load(data: &Path, script: PathBuf, bin: Option<PathBuf>) -> Result<Cluster, String> {
        let file = ClusterFile::read(data)?;
        let members = file
            .nodes
            .iter()
            .map(|n| {
                let client_addr = n
                    .client_addr
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("member {}: bad client_addr {}", n.id, n.client_addr))?;
                Ok(Member {
                    id: n.id,
                    client_addr,
                    pid_file: data.join(format!("node{}.pid", n.id)),
                    log: data.join(format!("node{}", n.id)).join("node.log"),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if members.len() < 3 {
            return Err(format!(
                "{}: {} members; the drill needs at least 3",
                ClusterFile::path(data).display(),
                members.len()
            ));
        }
        let [min, max] = file.election_timeout_ms.unwrap_or([300, 600]);
        Ok(Cluster {
            data: data.to_path_buf(),
            members,
            heartbeat_ms: file.heartbeat_ms.unwrap_or(50),
            election_timeout_ms: (min, max),
            script,
            bin,
        })
    }

    fn member(&self, id: u64) -> &Member {
        self.members
            .iter()
            .find(|m| m.id == id)
            .expect("member ids come from the cluster file")
    }

    fn pid(&self, id: u64) -> Option<i32> {
        fs::read_to_string(&self.member(id).pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The member's process exists and is not a zombie (a killed member
    /// stays one until its parent, often init, reaps it).
    fn alive(&self, id: u64) -> bool {
        let Some(pid) = self.pid(id) else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return false;
        }
        // The state follows the last ')' of /proc/PID/stat (the command
        // name may hold one).
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(true)
    }

    fn signal(&self, id: u64, sig: libc::c_int) -> Result<(), String> {
        let pid = self
            .pid(id)
            .ok_or_else(|| format!("member {id}: no pid file"))?;
        // SAFETY: sends a signal to a process id read from the pid file.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(format!(
                "member {id} (pid {pid}): kill: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Runs `tools/fault.sh ARGS` on this cluster (already inside the
    /// namespace, if any) and returns its output.
    fn fault_sh(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.script);
        cmd.args(args)
            .env("DATA", &self.data)
            .env_remove("RAFT_NETNS")
            .stdin(Stdio::null());
        if let Some(b) = &self.bin {
            cmd.env("RAFT_NODE", b);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", self.script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_string())
        } else {
            Err(format!("fault.sh {}: {}", args.join(" "), text.trim()))
        }
    }

    fn info(&self, id: u64) -> Result<Info, String> {
        let mut c =
            Conn::connect_timeouts(self.member(id).client_addr, CONNECT_TIMEOUT, IO_TIMEOUT)
                .map_err(|e| format!("member {id}: {e}"))?;
        match c.cmd(&["INFO", "raft"]) {
            Ok(Reply::Bulk(Some(b))) => Ok(Info::parse(&String::from_utf8_lossy(&b))),
            Ok(r) => Err(format!("member {id}: INFO raft: unexpected reply {r:?}")),
            Err(e) => Err(format!("member {id}: INFO raft: {e}")),
        }
    }

    /// Restarts every member whose process is gone; returns their ids.
    fn restart_dead(&self) -> Vec<u64> {
        let mut restarted = Vec::new();
        for m in &self.members {
            if !self.alive(m.id) {
                match self.fault_sh(&["restart", &m.id.to_string()]) {
                    Ok(_) => restarted.push(m.id),
                    Err(e) => eprintln!("  could not restart member {}: {e}", m.id),
                }
            }
        }
        restarted
    }
}

/// The `INFO raft` fields the drill uses.
#[derive(Clone, Debug, Default)]
struct Info {
    role: String,
    term: u64,
    leader: u64,
    commit_index: u64,
    last_applied: u64,
}

impl Info {
    fn parse(text: &str) -> Info {
        let f: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
            .collect();
        let num = |k: &str| f.get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        Info {
            role: f.get("raft_role").unwrap_or(&"?").trim().to_string(),
            term: num("raft_term"),
            leader: num("raft_leader_id"),
            commit_index: num("raft_commit_index"),
            last_applied: num("raft_last_applied"),
        }
    }
}

// ----- logs ----------------------------------------------------------------------

/// One line of a member's log.
#[derive(Clone, Debug)]
struct LogLine {
    /// Milliseconds since the Unix epoch.
    at_ms: i64,
    node: u64,
    msg: String,
}

/// Parses `2026-11-23T18:35:34.105Z INFO  [n3] message`.
fn parse_log_line(line: &str) -> Option<LogLine> {
    let (ts, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let (_level, rest) = rest.split_once(' ')?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("[n")?;
    let (node, msg) = rest.split_once("] ")?;
    Some(LogLine {
        at_ms: parse_utc_ms(ts)?,
        node: node.parse().ok()?,
        msg: msg.to_string(),
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` to milliseconds since the Unix epoch.
fn parse_utc_ms(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The lines of `path` from byte `from` on, at most 4 MiB of them.
fn read_log_from(path: &Path, from: u64) -> Vec<LogLine> {
    let Ok(mut f) = fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(4 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(parse_log_line)
        .collect()
}

/// The last lines of a log that look like a crash (a panic and its
/// message), for the report of a member that died.
fn crash_summary(path: &Path, from: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return "no log".into();
    };
    let _ = f.seek(SeekFrom::Start(from));
    let mut buf = Vec::new();
    let _ = f.take(4 << 20).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        return lines[i..lines.len().min(i + 2)].join(" / ");
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or("log is empty".into(), |l| l.to_string())
}

fn is_detection(msg: &str, leader: u64) -> bool {
    msg.starts_with(&format!("link to leader {leader} lost"))
        || msg.starts_with("pre-vote for term")
        || msg.starts_with("election for term")
        || msg.starts_with("no leader known")
        || msg.starts_with("became precandidate")
        || msg.starts_with("became candidate")
}

/// A line about roles, leaders and elections (not links or start-up).
fn is_role_line(msg: &str) -> bool {
    [
        "became ",
        "leader is ",
        "no leader known",
        "pre-vote for",
        "election for",
        "link to leader",
    ]
    .iter()
    .any(|p| msg.starts_with(p))
}

/// `became leader in term N (...)` → N.
fn leader_term(msg: &str) -> Option<u64> {
    msg.strip_prefix("became leader in term ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ----- the drill ------------------------------------------------------------------

/// The healthy state a trial starts from.
struct Healthy {
    leader: u64,
    term: u64,
}

/// Waits until every member answers, exactly one leads and the others
/// follow it in its term, a write commits and every member applied it.
fn wait_healthy(cl: &Cluster, tag: &str) -> Result<Healthy, String> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    let mut last = String::from("not checked yet");
    let mut n = 0u64;
    while Instant::now() < deadline {
        match check_healthy(cl, tag, &mut n) {
            Ok(h) => return Ok(h),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "cluster not healthy within {} s: {last}",
        HEALTH_TIMEOUT.as_secs()
    ))
}

fn check_healthy(cl: &Cluster, tag: &str, n: &mut u64) -> Result<Healthy, String> {
    let mut infos = Vec::new();
    for m in &cl.members {
        if !cl.alive(m.id) {
            return Err(format!("member {} is not running", m.id));
        }
        infos.push((m.id, cl.info(m.id)?));
    }
    let leaders: Vec<_> = infos.iter().filter(|(_, i)| i.role == "leader").collect();
    let [(leader, li)] = leaders[..] else {
        return Err(format!("{} members report leader", leaders.len()));
    };
    for (id, i) in &infos {
        if *id != *leader && (i.role != "follower" || i.leader != *leader || i.term != li.term) {
            return Err(format!(
                "member {id} is {} of {} in term {} (leader {leader} in term {})",
                i.role, i.leader, i.term, li.term
            ));
        }
    }
    *n += 1;
    let mut c = Conn::connect_timeouts(cl.member(*leader).client_addr, CONNECT_TIMEOUT, IO_TIMEOUT)
        .map_err(|e| format!("leader {leader}: {e}"))?;
    match c.cmd(&["SET", &format!("drill:health:{tag}"), &n.to_string()]) {
        Ok(Reply::Simple(s)) if s == "OK" => {}
        other => return Err(format!("health write via {leader}: {other:?}")),
    }
    // Followers learn the commit index with the next heartbeat: give them
    // a few before writing again.
    let commit = cl.info(*leader)?.commit_index;
    let until = Instant::now() + Duration::from_secs(2);
    for m in &cl.members {
        loop {
            let i = cl.info(m.id)?;
            if i.last_applied >= commit {
                break;
            }
            if Instant::now() > until {
                return Err(format!(
                    "member {} applied {} of {commit}",
                    m.id, i.last_applied
                ));
            }
            thread::sleep(POLL);
        }
    }
    Ok(Healthy {
        leader: *leader,
        term: li.term,
    })
}

/// Shared between the writers of one trial.
struct Writes {
    stop: AtomicBool,
    attempts: AtomicU64,
    /// Time after T0 and member of the first acknowledged write.
    first_ack: Mutex<Option<(Duration, u64)>>,
}

/// Keeps writing to `start` (a survivor) until a write is acknowledged or
/// `stop` is set. Follows MOVED to other survivors, never to `old_leader`.
fn writer(cl: &Cluster, start: u64, old_leader: u64, t0: Instant, trial: u32, w: &Writes) {
    let mut target = start;
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !w.stop.load(Ordering::SeqCst) {
        seq += 1;
        w.attempts.fetch_add(1, Ordering::Relaxed);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect_timeouts(
                cl.member(target).client_addr,
                CONNECT_TIMEOUT,
                IO_TIMEOUT,
            ) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    thread::sleep(WRITE_RETRY);
                    continue;
                }
            },
        };
        let key = format!("drill:{trial}:{start}");
        match c.cmd(&["SET", &key, &seq.to_string()]) {
            Ok(Reply::Simple(s)) if s == "OK" => {
                let at = t0.elapsed();
                let mut first = w.first_ack.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some((at, target));
                }
                w.stop.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Reply::Error(e)) if e.starts_with("MOVED") => {
                let to = e
                    .rsplit(' ')
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                match cl.members.iter().find(|m| Some(m.client_addr) == to) {
                    Some(m) if m.id != old_leader && m.id != target => {
                        target = m.id;
                        conn = None;
                        continue;
                    }
                    // Pointed at the old leader (or back at itself): ask
                    // this survivor again shortly.
                    _ => thread::sleep(WRITE_RETRY),
                }
            }
            // CLUSTERDOWN, a failed write, anything else: retry.
            Ok(_) => thread::sleep(WRITE_RETRY),
            // A timeout or broken connection: the write's outcome is
            // unknown; it does not count. Reconnect.
            Err(_) => {
                conn = None;
                thread::sleep(WRITE_RETRY);
            }
        }
    }
}

/// The measurements of one trial.
#[derive(Debug, Default)]
struct TrialResult {
    detection_ms: Option<i64>,
    election_ms: Option<i64>,
    unavailable_ms: Option<i64>,
    term_before: u64,
    term_elected: Option<u64>,
    term_after: Option<u64>,
    failures: Vec<String>,
}

fn run_drill(args: &Args) -> Result<bool, String> {
    let data = match &args.data {
        Some(d) => absolute(d)?,
        None => return Err("--data DIR is required (or --start)".into()),
    };
    let script = fault_script(args)?;
    let bin = args
        .bin
        .clone()
        .or_else(|| std::env::var_os("RAFT_NODE").map(PathBuf::from))
        .map(|b| absolute(&b))
        .transpose()?;
    if args.fault() == Fault::Isolate && !is_root() {
        return Err("--fault isolate: needs root (iptables)".into());
    }
    if args.trials == 0 {
        return Err("--trials 0: a drill must run at least one trial".into());
    }
    if args.fault() == Fault::Isolate {
        // Checked before anything starts: without iptables no fault would
        // take effect, and the drill would measure nothing.
        for tool in ["iptables", "iptables-restore"] {
            if !on_path(tool) {
                return Err(format!(
                    "--fault isolate: {tool} not found (apt-get install iptables)"
                ));
            }
        }
    }
    if args.start {
        let cl = Cluster {
            data: data.clone(),
            members: Vec::new(),
            heartbeat_ms: 0,
            election_timeout_ms: (0, 0),
            script: script.clone(),
            bin: bin.clone(),
        };
        let out = cl.fault_sh(&["cluster-start"])?;
        println!(
            "{}",
            out.lines()
                .filter(|l| l.starts_with("leader:"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let cl = Cluster::load(&data, script, bin)?;
    let result = trials(args, &cl);
    if args.start {
        if let Err(e) = cl
            .fault_sh(&["heal"])
            .and_then(|_| cl.fault_sh(&["cluster-stop"]))
        {
            eprintln!("raft-drill: stopping the cluster: {e}");
        }
    } else if args.fault() == Fault::Isolate {
        let _ = cl.fault_sh(&["heal"]);
    }
    result
}

fn trials(args: &Args, cl: &Cluster) -> Result<bool, String> {
    println!(
        "raft-drill: fault {:?}, {} trials, {} members in {}{} (heartbeat {} ms, election timeout {}-{} ms)",
        args.fault(),
        args.trials,
        cl.members.len(),
        cl.data.display(),
        std::env::var(INSIDE_ENV)
            .map(|ns| format!(", namespace {ns}"))
            .unwrap_or_default(),
        cl.heartbeat_ms,
        cl.election_timeout_ms.0,
        cl.election_timeout_ms.1,
    );
    let mut results = Vec::new();
    for t in 1..=args.trials {
        let r = match trial(args, cl, t) {
            Ok(r) => r,
            Err(e) => {
                println!("trial {t}/{}: cannot run: {e}", args.trials);
                print_summary(args, cl, &results);
                return Ok(false);
            }
        };
        let failed = !r.failures.is_empty();
        results.push(r);
        if failed {
            if args.stop_on_failure {
                break;
            }
            let restarted = cl.restart_dead();
            if !restarted.is_empty() {
                println!("  restarted dead members {restarted:?} to go on");
            }
        }
    }
    print_summary(args, cl, &results);
    Ok(!results.is_empty()
        && results.len() == args.trials as usize
        && results.iter().all(|r| r.failures.is_empty()))
}

fn trial(args: &Args, cl: &Cluster, t: u32) -> Result<TrialResult, String> {
    let h = wait_healthy(cl, &t.to_string())?;
    let l = h.leader;
    let survivors: Vec<u64> = cl
        .members
        .iter()
        .map(|m| m.id)
        .filter(|&id| id != l)
        .collect();
    let offsets: HashMap<u64, u64> = cl.members.iter().map(|m| (m.id, log_len(&m.log))).collect();
    let writes = Writes {
        stop: AtomicBool::new(false),
        attempts: AtomicU64::new(0),
        first_ack: Mutex::new(None),
    };
    let write_via: Vec<u64> = match args.writes_via {
        WritesVia::All => survivors.clone(),
        WritesVia::One => survivors[..1].to_vec(),
    };
    let timeout = Duration::from_secs(args.failover_timeout_secs);
    let mut r = TrialResult {
        term_before: h.term,
        ..TrialResult::default()
    };
    let mut detected_by = String::new();
    let mut elected = None;

    let injected_ms = thread::scope(|s| -> Result<u128, String> {
        // T0 is the moment the fault is in place. A signal takes effect at
        // once; fault.sh installs the isolation rules in one transaction as
        // its last step, so T0 is when it returns (the tens of ms of bash
        // before that are not counted).
        let started = Instant::now();
        let injected = match args.fault() {
            Fault::Kill => cl.signal(l, libc::SIGKILL),
            Fault::Freeze => cl.signal(l, libc::SIGSTOP),
            Fault::Isolate => cl.fault_sh(&["isolate", &l.to_string()]).map(|_| ()),
        };
        let t0_ms = now_ms();
        let t0 = Instant::now();
        injected?;
        let injected_ms = started.elapsed().as_millis();
        for &via in &write_via {
            let w = &writes;
            s.spawn(move || writer(cl, via, l, t0, t, w));
        }
        // Poll the survivors' logs until both the election and a write are
        // seen, or the deadline passes.
        loop {
            let mut lines: Vec<LogLine> = survivors
                .iter()
                .flat_map(|id| read_log_from(&cl.member(*id).log, offsets[id]))
                .filter(|x| x.at_ms >= t0_ms)
                .collect();
            lines.sort_by_key(|x| x.at_ms);
            if r.detection_ms.is_none() {
                if let Some(d) = lines.iter().find(|x| is_detection(&x.msg, l)) {
                    r.detection_ms = Some(d.at_ms - t0_ms);
                    // Of the lines in that millisecond, show the one that
                    // says why (`no leader known` comes first, but says less).
                    let why = lines
                        .iter()
                        .filter(|x| x.at_ms == d.at_ms && is_detection(&x.msg, l))
                        .find(|x| !x.msg.starts_with("no leader known"))
                        .unwrap_or(d);
                    detected_by = format!("n{}: {}", why.node, why.msg);
                }
            }
            if elected.is_none() {
                if let Some((x, term)) = lines
                    .iter()
                    .find_map(|x| leader_term(&x.msg).map(|term| (x, term)))
                {
                    r.election_ms = Some(x.at_ms - t0_ms);
                    r.term_elected = Some(term);
                    elected = Some(x.node);
                }
            }
            let acked = writes
                .first_ack
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if (elected.is_some() && acked) || t0.elapsed() > timeout {
                break;
            }
            thread::sleep(POLL);
        }
        writes.stop.store(true, Ordering::SeqCst);
        Ok(injected_ms)
    })?;

    let ack = *writes.first_ack.lock().unwrap_or_else(|p| p.into_inner());
    r.unavailable_ms = ack.map(|(d, _)| d.as_millis() as i64);
    if r.detection_ms.is_none() {
        r.failures.push(format!(
            "no survivor logged losing leader {l} within {} s",
            timeout.as_secs()
        ));
    }
    if elected.is_none() {
        r.failures.push(format!(
            "no survivor logged `became leader` within {} s",
            timeout.as_secs()
        ));
    }
    if ack.is_none() {
        r.failures.push(format!(
            "no write through a survivor acknowledged within {} s ({} attempts)",
            timeout.as_secs(),
            writes.attempts.load(Ordering::Relaxed)
        ));
    }

    // Recover, and check the old leader rejoins quietly.
    let recover_ms = now_ms();
    let recover_at = Instant::now();
    let recovered = match args.fault() {
        Fault::Kill => cl.fault_sh(&["restart", &l.to_string()]).map(|_| ()),
        Fault::Freeze => cl.signal(l, libc::SIGCONT),
        Fault::Isolate => cl.fault_sh(&["heal"]).map(|_| ()),
    };
    let mut rejoin = String::new();
    match recovered {
        Err(e) => r.failures.push(format!("recovery failed: {e}")),
        Ok(()) => match check_rejoin(args, cl, l, &survivors, recover_at) {
            Ok((ms, term)) => {
                r.term_after = Some(term);
                rejoin = format!("member {l} follower again after {ms} ms");
            }
            Err(e) => r.failures.push(e),
        },
    }
    // Any member that died since the trial began is a failure, whatever
    // the fault was.
    for m in &cl.members {
        if !cl.alive(m.id) {
            r.failures.push(format!(
                "member {} exited: {}",
                m.id,
                crash_summary(&m.log, offsets[&m.id])
            ));
        }
    }

    let fmt = |v: Option<i64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let term_change = match (r.term_elected, r.term_after) {
        (Some(e), Some(a)) if a != e => {
            format!("term {} -> {e} -> {a} after rejoin", r.term_before)
        }
        (Some(e), _) => format!("term {} -> {e} (+{})", r.term_before, e - r.term_before),
        _ => format!("term {} -> ?", r.term_before),
    };
    let took = if injected_ms > 1 {
        format!(" (fault.sh took {injected_ms} ms)")
    } else {
        String::new()
    };
    let by = elected
        .map(|n| format!(" (member {n})"))
        .unwrap_or_default();
    let via = ack.map(|(_, v)| format!(" (via {v})")).unwrap_or_default();
    let rejoin = if rejoin.is_empty() {
        rejoin
    } else {
        format!(" | {rejoin}")
    };
    println!(
        "trial {t}/{}: leader {l} {}{took} | detection {} | election {}{by} \
         | first write acked {}{via} | {term_change}{rejoin}",
        args.trials,
        args.fault().verb(),
        fmt(r.detection_ms),
        fmt(r.election_ms),
        fmt(r.unavailable_ms),
    );
    if !detected_by.is_empty() {
        println!("  detected: {detected_by}");
    }
    if r.failures.is_empty() && args.fault() != Fault::Kill {
        // What the old leader said on its way back: how quiet it was.
        let raft_lines: Vec<String> = read_log_from(&cl.member(l).log, offsets[&l])
            .into_iter()
            .filter(|x| x.at_ms >= recover_ms && is_role_line(&x.msg))
            .map(|x| x.msg)
            .collect();
        let shown = raft_lines.iter().take(4).cloned().collect::<Vec<_>>();
        let more = raft_lines.len().saturating_sub(shown.len());
        println!(
            "  member {l} after recovery: {}{}",
            shown.join("; "),
            if more > 0 {
                format!("; ... {more} more")
            } else {
                String::new()
            }
        );
    }
    if !r.failures.is_empty() {
        for f in &r.failures {
            println!("  CHECK FAILED: {f}");
        }
        let since: Vec<String> = read_log_from(&cl.member(l).log, offsets[&l])
            .into_iter()
            .filter(|x| x.at_ms >= recover_ms)
            .take(12)
            .map(|x| format!("    {}", x.msg))
            .collect();
        if !since.is_empty() {
            println!("  member {l}'s log after recovery:\n{}", since.join("\n"));
        }
    }
    Ok(r)
}

/// After recovery: the old leader `l` must show up as a follower of the
/// current leader in the current term within `--rejoin-ms`, and then for
/// [`QUIET_WINDOW`] no member's leader or term may change. Returns how long
/// the rejoin took and the term.
fn check_rejoin(
    args: &Args,
    cl: &Cluster,
    l: u64,
    survivors: &[u64],
    start: Instant,
) -> Result<(u128, u64), String> {
    // The survivors' view: who leads now, in which term.
    let current = |what: &str| -> Result<(u64, u64), String> {
        let mut seen = None;
        for &id in survivors {
            let i = cl.info(id)?;
            if i.role == "leader" {
                seen = Some((id, i.term));
            }
        }
        seen.ok_or_else(|| format!("{what}: no survivor reports itself leader"))
    };
    let limit = Duration::from_millis(args.rejoin_ms);
    let (leader, term, took) = loop {
        let now = current("after recovery");
        let old = cl.info(l);
        if let (Ok((leader, term)), Ok(i)) = (&now, &old) {
            if i.role == "follower" && i.leader == *leader && i.term == *term {
                break (*leader, *term, start.elapsed().as_millis());
            }
        }
        if start.elapsed() > limit {
            let seen = match (now, old) {
                (Ok((ld, tm)), Ok(i)) => format!(
                    "it is {} of {} in term {} while member {ld} leads term {tm}",
                    i.role, i.leader, i.term
                ),
                (Err(e), _) | (_, Err(e)) => e,
            };
            return Err(format!(
                "old leader {l} did not rejoin as a follower within {} ms: {seen}",
                args.rejoin_ms
            ));
        }
        thread::sleep(POLL);
    };
    let quiet_until = Instant::now() + QUIET_WINDOW;
    while Instant::now() < quiet_until {
        for m in &cl.members {
            let i = cl.info(m.id)?;
            if i.term != term || (m.id != leader && i.leader != leader) {
                return Err(format!(
                    "after member {l} rejoined, member {} went to {} of {} in term {} \
                     (was: member {leader} leading term {term})",
                    m.id, i.role, i.leader, i.term
                ));
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok((took, term))
}

// ----- summary ---------------------------------------------------------------

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn print_summary(args: &Args, cl: &Cluster, results: &[TrialResult]) {
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    println!();
    println!(
        "summary: fault {:?}, {} trials, heartbeat {} ms, election timeout {}-{} ms, writes via {:?}",
        args.fault(),
        results.len(),
        cl.heartbeat_ms,
        cl.election_timeout_ms.0,
        cl.election_timeout_ms.1,
        args.writes_via,
    );
    println!(
        "  {:<16} {:>8} {:>8} {:>8} {:>8}",
        "ms from fault", "p50", "p90", "max", "samples"
    );
    type Metric = fn(&TrialResult) -> Option<i64>;
    let rows: [(&str, Metric); 3] = [
        ("detection", |r| r.detection_ms),
        ("election", |r| r.election_ms),
        ("unavailability", |r| r.unavailable_ms),
    ];
    for (name, get) in rows {
        let mut v: Vec<i64> = results.iter().filter_map(get).collect();
        v.sort_unstable();
        let cell = |x: Option<i64>| x.map_or("-".into(), |x| x.to_string());
        println!(
            "  {:<16} {:>8} {:>8} {:>8} {:>8}",
            name,
            cell(percentile(&v, 0.5)),
            cell(percentile(&v, 0.9)),
            cell(v.last().copied()),
            v.len()
        );
    }
    let terms: Vec<String> = results
        .iter()
        .map(|r| match (r.term_elected, r.term_after) {
            (Some(e), Some(a)) if a != e => format!("+{}(+{} on rejoin)", e - r.term_before, a - e),
            (Some(e), _) => format!("+{}", e - r.term_before),
            _ => "?".into(),
        })
        .collect();
    println!("  term changes per trial: {}", terms.join(" "));
    if results.is_empty() {
        // A drill that ran no trial proved nothing: never "all passed".
        println!("  checks: FAILED: no trial ran");
    } else if failed == 0 && results.len() == args.trials as usize {
        println!("  checks: all passed");
    } else if failed == 0 {
        println!(
            "  checks: FAILED: only {} of {} trials ran",
            results.len(),
            args.trials
        );
    } else {
        println!(
            "  checks: {failed} of {} trials FAILED (see above)",
            results.len()
        );
    }
}

// ----- membership drill ----------------------------------------------------------

/// `--membership`: members replaced and restarted under a steady write load.
///
/// Run a1 replaces member 1 by member 4, with member 1 leading when it is
/// removed (the harder case: the leader commits its own removal, then
/// steps down). Runs b1 and b2 restart every member in turn (followers
/// first, the leader last): once with the leader's hand-over at SIGTERM,
/// once with `shutdown_transfer = false` (the whole cluster is restarted
/// with that file first), for comparison. Run a2 replaces member 2, a
/// follower, by member 5 while member 4 leads: a member joining through a
/// leader that is not in the log's first configuration. Each replacement
/// is: start the new member with `--join`, `RAFT.ADD N ... LEARNER`, wait
/// until it has caught up, `RAFT.PROMOTE N`, `RAFT.REMOVE old`, SIGTERM
/// the old one. A run that fails ends the drill.
///
/// During each run several writers SET keys of their own (one key per
/// write, `md:RUN:CLIENT:SEQ` = `SEQ`), resending a write until it is
/// acknowledged (SET of the same key and value is idempotent, so a resend
/// after a timeout is safe). Afterwards every acknowledged write is read
/// back from the leader, and from each member added in that run with
/// `READONLY`: a missing or different value is a lost write, and fails the
/// drill, as does a step that could not be carried out or a member that
/// died. Pauses are measured from the writers' own acknowledgements.
mod membership {
    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::fs::OpenOptions;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Child;

    /// Writes per client at most, so the record of acknowledged writes
    /// stays bounded (a run lasts well under a minute; this is minutes of
    /// load at the fastest rate this machine reaches).
    const MAX_WRITES_PER_CLIENT: u64 = 2_000_000;
    /// A write not acknowledged within this long is given up (and counted).
    const WRITE_GIVE_UP: Duration = Duration::from_secs(30);
    /// Pause before a resend (after CLUSTERDOWN, TRYAGAIN, an error or a
    /// refused connection). Short: a longer one would itself become part of
    /// the pauses the drill measures.
    const RESEND_PAUSE: Duration = Duration::from_millis(1);
    /// Redirects followed in a row without a pause: a hand-over can bounce
    /// a client between the old leader and the target for a moment.
    const FREE_HOPS: u32 = 3;
    /// Read/write timeout of the writers' connections; a write whose reply
    /// takes longer is resent.
    const WRITE_IO_TIMEOUT: Duration = Duration::from_secs(1);
    /// RAFT.ADD and the like answer when the change commits.
    const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long one admin command may be retried ("in progress", "has
    /// caught up to", no leader).
    const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a new or restarted member may take to catch up.
    const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a started member may take to answer INFO.
    const START_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a member may take to exit after SIGTERM (a leader first
    /// hands over, for at most an election timeout).
    const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Load alone before the first step of a run: the reference pause.
    const STEADY: Duration = Duration::from_secs(2);
    /// Error replies kept per client for the report (counted beyond that).
    const MAX_ERRORS_KEPT: usize = 10_000;
    /// GETs in flight while reading the writes back.
    const VERIFY_BATCH: usize = 256;
    /// The goal for a rolling restart with the hand-over.
    const PAUSE_GOAL: Duration = Duration::from_millis(20);

    /// Addresses of member `id`, following tools/cluster.sh (127.0.0.ID,
    /// ports 7000+ID, 6400+ID, 9400+ID).
    fn addrs_of(id: u64) -> (String, String, String) {
        (
            format!("127.0.0.{id}:{}", 7000 + id),
            format!("127.0.0.{id}:{}", 6400 + id),
            format!("127.0.0.{id}:{}", 9400 + id),
        )
    }

    /// One acknowledged write.
    struct Ack {
        seq: u64,
        sent: Instant,
        acked: Instant,
    }

    /// What one writer saw.
    #[derive(Default)]
    struct ClientLog {
        acks: Vec<Ack>,
        /// Writes that got an error reply other than a redirect: sequence
        /// number and the time of the first such reply.
        failed: Vec<(u64, Instant)>,
        /// Error replies other than redirects, with their time.
        errors: Vec<(Instant, String)>,
        errors_dropped: u64,
        /// Resends after a timeout or a lost connection (outcome unknown).
        unknown: Vec<Instant>,
        /// MOVED, CLUSTERDOWN and TRYAGAIN replies.
        redirects: u64,
        /// Writes given up after WRITE_GIVE_UP.
        given_up: u64,
    }

    impl ClientLog {
        fn error(&mut self, seq: u64, at: Instant, first: &mut bool, e: String) {
            if *first {
                self.failed.push((seq, at));
                *first = false;
            }
            if self.errors.len() < MAX_ERRORS_KEPT {
                self.errors.push((at, e));
            } else {
                self.errors_dropped += 1;
            }
        }
    }

    /// Writes `md:TAG:C:SEQ` = `SEQ` until `stop`, each one until it is
    /// acknowledged.
    fn writer(c: u32, tag: &str, addrs: &[SocketAddr], stop: &AtomicBool) -> ClientLog {
        let mut log = ClientLog::default();
        let mut next = c as usize % addrs.len();
        let mut target = addrs[next];
        let mut conn: Option<Conn> = None;
        let mut seq = 0;
        while !stop.load(Ordering::SeqCst) && seq < MAX_WRITES_PER_CLIENT {
            seq += 1;
            let key = format!("md:{tag}:{c}:{seq}");
            let value = seq.to_string();
            let sent = Instant::now();
            let mut first_error = true;
            let mut hops = 0;
            loop {
                if stop.load(Ordering::SeqCst) {
                    // Not acknowledged: not checked either.
                    return log;
                }
                if sent.elapsed() > WRITE_GIVE_UP {
                    log.given_up += 1;
                    break;
                }
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::connect_timeouts(target, CONNECT_TIMEOUT, WRITE_IO_TIMEOUT)
                    {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            // Down (stopped, restarting, removed): try the
                            // next member.
                            next = (next + 1) % addrs.len();
                            target = addrs[next];
                            thread::sleep(RESEND_PAUSE);
                            continue;
                        }
                    },
                };
                match c.cmd(&["SET", &key, &value]) {
                    Ok(Reply::Simple(s)) if s == "OK" => {
                        log.acks.push(Ack {
                            seq,
                            sent,
                            acked: Instant::now(),
                        });
                        break;
                    }
                    Ok(r @ Reply::Error(_)) if r.moved_to().is_some() => {
                        log.redirects += 1;
                        let to = r.moved_to().expect("checked");
                        if to != target {
                            target = to;
                            conn = None;
                        }
                        hops += 1;
                        if hops > FREE_HOPS {
                            thread::sleep(RESEND_PAUSE);
                        }
                    }
                    Ok(Reply::Error(e))
                        if e.starts_with("CLUSTERDOWN") || e.starts_with("TRYAGAIN") =>
                    {
                        log.redirects += 1;
                        thread::sleep(RESEND_PAUSE);
                    }
                    Ok(Reply::Error(e)) => {
                        let e: String = e.chars().take(160).collect();
                        log.error(seq, Instant::now(), &mut first_error, e);
                        thread::sleep(RESEND_PAUSE);
                    }
                    Ok(other) => {
                        let e = format!("unexpected reply {other:?}");
                        log.error(seq, Instant::now(), &mut first_error, e);
                        thread::sleep(RESEND_PAUSE);
                    }
                    Err(_) => {
                        log.unknown.push(Instant::now());
                        conn = None;
                        next = (next + 1) % addrs.len();
                        target = addrs[next];
                    }
                }
            }
        }
        log
    }

    /// One step of a run.
    struct Step {
        name: String,
        start: Instant,
        end: Instant,
        /// What happened (Ok), or why the step could not be carried out.
        outcome: Result<String, String>,
    }

    /// One run: load, steps, and what the writers saw.
    struct Run {
        tag: String,
        title: String,
        start: Instant,
        end: Instant,
        steps: Vec<Step>,
        logs: Vec<ClientLog>,
        /// Acknowledged writes read back, and the lost ones.
        checked: u64,
        lost: Vec<String>,
        /// Problems found after the steps (lost writes, dead members,
        /// verification that could not run).
        failures: Vec<String>,
    }

    impl Run {
        fn ok(&self) -> bool {
            self.failures.is_empty() && self.steps.iter().all(|s| s.outcome.is_ok())
        }
        fn acked(&self) -> usize {
            self.logs.iter().map(|l| l.acks.len()).sum()
        }
        fn failed(&self) -> usize {
            self.logs.iter().map(|l| l.failed.len()).sum()
        }
    }

    /// The numbers of one step's window.
    struct Window {
        acked: usize,
        failed: usize,
        unknown: usize,
        /// Longest time overlapping the window in which no client had a
        /// write acknowledged.
        pause: Duration,
        /// Longest single write (first send to acknowledgement) that
        /// overlaps the window.
        max_latency: Duration,
    }

    fn window(run: &Run, acks: &[Instant], s: Instant, e: Instant) -> Window {
        // The gaps between consecutive acknowledgements (and from the
        // start of the load to the first, from the last to its end).
        let mut pause = Duration::ZERO;
        let mut prev = run.start;
        for &a in acks.iter().chain(std::iter::once(&run.end)) {
            if a >= s && prev <= e {
                pause = pause.max(a.saturating_duration_since(prev));
            }
            prev = a;
            if prev > e {
                break;
            }
        }
        let within = |t: Instant| t >= s && t <= e;
        let all = || run.logs.iter().flat_map(|l| l.acks.iter());
        Window {
            acked: all().filter(|a| within(a.acked)).count(),
            failed: run
                .logs
                .iter()
                .flat_map(|l| l.failed.iter())
                .filter(|f| within(f.1))
                .count(),
            unknown: run
                .logs
                .iter()
                .flat_map(|l| l.unknown.iter())
                .filter(|&&t| within(t))
                .count(),
            pause,
            max_latency: all()
                .filter(|a| a.sent <= e && a.acked >= s)
                .map(|a| a.acked - a.sent)
                .max()
                .unwrap_or_default(),
        }
    }

    /// The drill's view of the cluster, and the members it started itself
    /// (kept to be reaped when they exit).
    struct Drill {
        cl: Cluster,
        children: Mutex<Vec<Child>>,
        clients: u32,
    }

    impl Drill {
        fn reap(&self) {
            let mut ch = self.children.lock().unwrap_or_else(|p| p.into_inner());
            ch.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }

        fn alive(&self, id: u64) -> bool {
            self.reap();
            self.cl.alive(id)
        }

        /// Members with a pid file whose process runs.
        fn running(&self) -> Vec<u64> {
            self.reap();
            self.cl
                .members
                .iter()
                .map(|m| m.id)
                .filter(|&id| self.cl.alive(id))
                .collect()
        }

        /// The running member that says it leads, in the highest term.
        fn leader(&self) -> Option<(u64, Info)> {
            self.running()
                .into_iter()
                .filter_map(|id| self.cl.info(id).ok().map(|i| (id, i)))
                .filter(|(_, i)| i.role == "leader")
                .max_by_key(|(_, i)| i.term)
        }

        /// The client addresses the writers start from (and fall back to).
        fn addrs(&self) -> Vec<SocketAddr> {
            self.cl.members.iter().map(|m| m.client_addr).collect()
        }

        /// Sends an admin command to the leader, retrying while there is
        /// none, on a redirect, and on an error containing one of `retry`.
        fn admin(&self, cmd: &[&str], retry: &[&str]) -> Result<Reply, String> {
            let deadline = Instant::now() + ADMIN_TIMEOUT;
            let mut last = String::from("no leader");
            let mut tries = 0u32;
            while Instant::now() < deadline {
                tries += 1;
                let Some((l, _)) = self.leader() else {
                    thread::sleep(POLL);
                    continue;
                };
                let addr = self.cl.member(l).client_addr;
                let mut c = Conn::connect_timeouts(addr, CONNECT_TIMEOUT, ADMIN_IO_TIMEOUT)
                    .map_err(|e| format!("leader {l}: {e}"))?;
                match c.cmd(cmd) {
                    Ok(Reply::Error(e))
                        if e.starts_with("MOVED")
                            || e.starts_with("CLUSTERDOWN")
                            || retry.iter().any(|r| e.contains(r)) =>
                    {
                        last = format!("-{e} (from member {l})");
                        thread::sleep(Duration::from_millis(20));
                    }
                    Ok(Reply::Error(e)) => {
                        return Err(format!("{}: -{e} (from member {l})", cmd.join(" ")))
                    }
                    Ok(r) => return Ok(r),
                    // Not resent: the outcome of a change whose reply was
                    // lost is unknown, and the drill must say so.
                    Err(e) => {
                        return Err(format!("{}: no reply from member {l}: {e}", cmd.join(" ")))
                    }
                }
            }
            Err(format!(
                "{}: not done within {} s ({tries} tries); last reply {last}",
                cmd.join(" "),
                ADMIN_TIMEOUT.as_secs()
            ))
        }

        /// Starts a member with `argv` in `cwd`, appending to its node.log
        /// and writing its pid file as tools/cluster.sh does.
        fn launch(&self, id: u64, argv: &[OsString], cwd: &Path) -> Result<(), String> {
            let m = self.cl.member(id);
            if let Some(dir) = m.log.parent() {
                fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.log)
                .map_err(|e| format!("{}: {e}", m.log.display()))?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            let exe = cwd.join(&argv[0]);
            let child = Command::new(&exe)
                .args(&argv[1..])
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("member {id}: {}: {e}", exe.display()))?;
            fs::write(&m.pid_file, format!("{}\n", child.id()))
                .map_err(|e| format!("{}: {e}", m.pid_file.display()))?;
            self.children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(child);
            Ok(())
        }

        /// Waits until member `id` answers INFO.
        fn wait_answers(&self, id: u64, log_from: u64) -> Result<(), String> {
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if !self.alive(id) {
                    return Err(format!(
                        "member {id} exited: {}",
                        crash_summary(&self.cl.member(id).log, log_from)
                    ));
                }
                if self.cl.info(id).is_ok() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "member {id} did not answer INFO within {} s",
                        START_TIMEOUT.as_secs()
                    ));
                }
                thread::sleep(POLL);
            }
        }

        /// Waits until member `id` applied what the leader had committed
        /// when the wait began (under load, the commit index moves on).
        fn wait_caught_up(&self, id: u64) -> Result<String, String> {
            let deadline = Instant::now() + CATCH_UP_TIMEOUT;
            let mut target = None;
            let mut seen = String::from("no leader");
            loop {
                if target.is_none() {
                    if let Some((l, i)) = self.leader() {
                        target = Some((l, i.commit_index));
                    }
                }
                if let Some((l, t)) = target {
                    match self.cl.info(id) {
                        Ok(i) if i.last_applied >= t => {
                            return Ok(format!(
                                "applied {} >= leader {l}'s commit index {t}",
                                i.last_applied
                            ))
                        }
                        Ok(i) => seen = format!("applied {} of {t}", i.last_applied),
                        Err(e) => seen = e,
                    }
                }
                if !self.alive(id) {
                    return Err(format!("member {id} exited while catching up"));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "member {id} did not catch up within {} s: {seen}",
                        CATCH_UP_TIMEOUT.as_secs()
                    ));
                }
                thread::sleep(POLL);
            }
        }

        /// SIGTERM, then waits for the exit; returns how long it took.
        fn stop(&self, id: u64) -> Result<Duration, String> {
            let t = Instant::now();
            self.cl.signal(id, libc::SIGTERM)?;
            while self.alive(id) {
                if t.elapsed() > EXIT_TIMEOUT {
                    let _ = self.cl.signal(id, libc::SIGKILL);
                    return Err(format!(
                        "member {id} did not exit within {} s of SIGTERM (killed)",
                        EXIT_TIMEOUT.as_secs()
                    ));
                }
                thread::sleep(Duration::from_millis(2));
            }
            let took = t.elapsed();
            let _ = fs::remove_file(&self.cl.member(id).pid_file);
            Ok(took)
        }

        /// The command line and working directory of a running member.
        fn command_line(&self, id: u64) -> Result<(Vec<OsString>, PathBuf), String> {
            let pid = self
                .cl
                .pid(id)
                .ok_or_else(|| format!("member {id}: no pid file"))?;
            let raw = fs::read(format!("/proc/{pid}/cmdline"))
                .map_err(|e| format!("member {id}: /proc/{pid}/cmdline: {e}"))?;
            let argv: Vec<OsString> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| OsStr::from_bytes(a).to_os_string())
                .collect();
            let cwd = fs::read_link(format!("/proc/{pid}/cwd"))
                .map_err(|e| format!("member {id}: /proc/{pid}/cwd: {e}"))?;
            if argv.is_empty() {
                return Err(format!("member {id}: empty command line"));
            }
            Ok((argv, cwd))
        }

        /// Every running member follows one leader in its term and applied
        /// what it had committed.
        fn wait_ready(&self) -> Result<u64, String> {
            let deadline = Instant::now() + HEALTH_TIMEOUT;
            let mut last = String::from("not checked");
            while Instant::now() < deadline {
                match self.ready() {
                    Ok(l) => return Ok(l),
                    Err(e) => last = e,
                }
                thread::sleep(Duration::from_millis(50));
            }
            Err(format!(
                "cluster not ready within {} s: {last}",
                HEALTH_TIMEOUT.as_secs()
            ))
        }

        fn ready(&self) -> Result<u64, String> {
            let (l, li) = self.leader().ok_or("no leader")?;
            for id in self.running() {
                let i = self.cl.info(id)?;
                if id != l && (i.leader != l || i.term != li.term) {
                    return Err(format!(
                        "member {id} follows {} in term {}",
                        i.leader, i.term
                    ));
                }
                if i.last_applied < li.commit_index {
                    return Err(format!(
                        "member {id} applied {} of {}",
                        i.last_applied, li.commit_index
                    ));
                }
            }
            Ok(l)
        }
    }

    /// Runs `f`, timed, as a step of `run`; prints it as it ends.
    fn step(
        steps: &mut Vec<Step>,
        name: impl Into<String>,
        f: impl FnOnce() -> Result<String, String>,
    ) -> bool {
        let name = name.into();
        let start = Instant::now();
        let outcome = f();
        let end = Instant::now();
        match &outcome {
            Ok(note) => println!(
                "  {name}: {} ms{}",
                (end - start).as_millis(),
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                }
            ),
            Err(e) => println!(
                "  {name}: FAILED after {} ms: {e}",
                (end - start).as_millis()
            ),
        }
        let ok = outcome.is_ok();
        steps.push(Step {
            name,
            start,
            end,
            outcome,
        });
        ok
    }

    /// Runs the steps of `body` under the write load, then reads every
    /// acknowledged write back (from the leader, and with READONLY from
    /// each of `check_on`).
    fn under_load(
        d: &Drill,
        tag: &str,
        title: &str,
        check_on: &[u64],
        body: impl FnOnce(&mut Vec<Step>),
    ) -> Run {
        println!("\n{tag}: {title}");
        let addrs = d.addrs();
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let mut steps = Vec::new();
        let logs = thread::scope(|s| {
            let handles: Vec<_> = (0..d.clients)
                .map(|c| {
                    let (addrs, stop) = (&addrs, &stop);
                    s.spawn(move || writer(c, tag, addrs, stop))
                })
                .collect();
            // The writers stop however the steps end (even by a panic).
            struct StopOnDrop<'a>(&'a AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = StopOnDrop(&stop);
            step(
                &mut steps,
                format!("steady load ({} s)", STEADY.as_secs()),
                || {
                    thread::sleep(STEADY);
                    Ok(String::new())
                },
            );
            body(&mut steps);
            stop.store(true, Ordering::SeqCst);
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        let end = Instant::now();
        let mut run = Run {
            tag: tag.to_string(),
            title: title.to_string(),
            start,
            end,
            steps,
            logs,
            checked: 0,
            lost: Vec::new(),
            failures: Vec::new(),
        };
        verify(d, &mut run, check_on);
        for m in &d.cl.members {
            if m.pid_file.exists() && !d.alive(m.id) {
                run.failures.push(format!(
                    "member {} died: {}",
                    m.id,
                    crash_summary(&m.log, 0)
                ));
            }
        }
        run
    }

    /// Reads every acknowledged write of `run` back.
    fn verify(d: &Drill, run: &mut Run, check_on: &[u64]) {
        // A leader is enough to read from: a member that did not catch up
        // is the step's failure, not a reason to skip the check.
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let leader = loop {
            if let Some((l, _)) = d.leader() {
                break l;
            }
            if Instant::now() > deadline {
                run.failures.push(format!(
                    "cannot read the writes back: no leader within {} s",
                    HEALTH_TIMEOUT.as_secs()
                ));
                return;
            }
            thread::sleep(POLL);
        };
        let mut targets = vec![(leader, false)];
        targets.extend(
            check_on
                .iter()
                .filter(|&&id| id != leader && d.alive(id))
                .map(|&id| (id, true)),
        );
        for (id, readonly) in targets {
            match read_back(d, run, id, readonly) {
                Ok((checked, lost)) => {
                    println!(
                        "  read back from member {id}{}: {checked} acknowledged writes, {} lost",
                        if readonly { " (READONLY)" } else { " (leader)" },
                        lost.len()
                    );
                    run.checked = run.checked.max(checked);
                    if !lost.is_empty() {
                        run.failures.push(format!(
                            "member {id}: {} acknowledged writes lost, e.g. {}",
                            lost.len(),
                            lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                    run.lost.extend(lost);
                }
                Err(e) => run
                    .failures
                    .push(format!("reading the writes back from member {id}: {e}")),
            }
        }
    }

    fn read_back(
        d: &Drill,
        run: &Run,
        id: u64,
        readonly: bool,
    ) -> Result<(u64, Vec<String>), String> {
        let mut c = Conn::connect_timeouts(
            d.cl.member(id).client_addr,
            CONNECT_TIMEOUT,
            ADMIN_IO_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        if readonly {
            match c.cmd(&["READONLY"]) {
                Ok(Reply::Simple(_)) => {}
                other => return Err(format!("READONLY: {other:?}")),
            }
        }
        let mut checked = 0;
        let mut lost = Vec::new();
        for (client, log) in run.logs.iter().enumerate() {
            for batch in log.acks.chunks(VERIFY_BATCH) {
                let keys: Vec<String> = batch
                    .iter()
                    .map(|a| format!("md:{}:{client}:{}", run.tag, a.seq))
                    .collect();
                for k in &keys {
                    c.send(&[b"GET", k.as_bytes()]).map_err(|e| e.to_string())?;
                }
                for (a, k) in batch.iter().zip(&keys) {
                    let want = a.seq.to_string();
                    match c.read().map_err(|e| format!("GET {k}: {e}"))? {
                        Reply::Bulk(Some(v)) if v == want.as_bytes() => {}
                        Reply::Bulk(Some(v)) => lost.push(format!(
                            "{k} = {:?} (acknowledged {want})",
                            String::from_utf8_lossy(&v)
                        )),
                        Reply::Bulk(None) => lost.push(format!("{k} missing")),
                        other => return Err(format!("GET {k}: {other:?}")),
                    }
                    checked += 1;
                }
            }
        }
        Ok((checked, lost))
    }

    /// Adds [[node]] entries for `ids` to the cluster file, unless present.
    fn add_to_cluster_file(data: &Path, ids: &[u64]) -> Result<(), String> {
        let mut file = ClusterFile::read(data)?;
        for &id in ids {
            if file.nodes.iter().any(|n| n.id == id) {
                continue;
            }
            let (peer_addr, client_addr, metrics_addr) = addrs_of(id);
            file.nodes.push(NodeEntry {
                id,
                peer_addr,
                client_addr,
                metrics_addr: Some(metrics_addr),
            });
        }
        file.write(data, "")
    }

    /// Sets `shutdown_transfer = false` in the cluster file.
    fn disable_hand_over(data: &Path) -> Result<(), String> {
        let mut file = ClusterFile::read(data)?;
        file.shutdown_transfer = Some(false);
        file.write(
            data,
            "# The membership drill's baseline: no hand-over at SIGTERM.\n",
        )
    }

    /// Replaces member `old` by `new` (see the module doc).
    /// Member `leads` is made leader first (unless it leads already).
    fn replace(d: &Drill, tag: &str, old: u64, new: u64, leads: u64) -> Run {
        let title = if leads == old {
            format!("replace member {old} (the leader) by member {new}")
        } else {
            format!("replace member {old} (a follower) by member {new}, member {leads} leading")
        };
        under_load(d, tag, &title, &[new], |steps| {
            let id = leads.to_string();
            if d.leader().map(|(l, _)| l) != Some(leads)
                && !step(steps, format!("RAFT.TRANSFER {leads}"), || {
                    d.admin(&["RAFT.TRANSFER", &id], &["in progress", "retry in"])
                        .map(|r| members_summary(&r))
                })
            {
                return;
            }
            let (peer, client, _) = addrs_of(new);
            let log_from = log_len(&d.cl.member(new).log);
            if !step(steps, format!("start member {new} --join"), || {
                if d.alive(new) {
                    return Err(format!("member {new} is running already"));
                }
                let (argv, cwd) = d.command_line(old)?;
                let mut new_argv = vec![argv[0].clone()];
                let data = &d.cl.data;
                for a in [
                    "--config".into(),
                    data.join("cluster.toml").into_os_string(),
                    "--id".into(),
                    new.to_string().into(),
                    "--data-dir".into(),
                    data.join(format!("node{new}")).into_os_string(),
                    "--join".into(),
                ] {
                    new_argv.push(a);
                }
                d.launch(new, &new_argv, &cwd)?;
                d.wait_answers(new, log_from)?;
                Ok("answers INFO".into())
            }) {
                return;
            }
            let new_s = new.to_string();
            if !step(steps, format!("RAFT.ADD {new} LEARNER"), || {
                d.admin(
                    &["RAFT.ADD", &new_s, &peer, &client, "LEARNER"],
                    &["in progress"],
                )
                .map(|r| members_summary(&r))
            }) {
                return;
            }
            if !step(steps, format!("catch-up of {new}"), || {
                d.wait_caught_up(new)
            }) {
                return;
            }
            if !step(steps, format!("RAFT.PROMOTE {new}"), || {
                d.admin(&["RAFT.PROMOTE", &new_s], &["has caught up", "in progress"])
                    .map(|r| members_summary(&r))
            }) {
                return;
            }
            let role = if d.leader().map(|(l, _)| l) == Some(old) {
                "leader"
            } else {
                "follower"
            };
            let old_s = old.to_string();
            if !step(steps, format!("RAFT.REMOVE {old} ({role})"), || {
                match d.admin(&["RAFT.REMOVE", &old_s], &["in progress"]) {
                    Ok(r) => {
                        let summary = members_summary(&r);
                        if member_ids(&r).contains(&old) {
                            return Err(format!("the reply still lists member {old}: {summary}"));
                        }
                        Ok(summary)
                    }
                    // The server's own words: the change may have been
                    // committed by the next leader. The configuration
                    // says which; either way the reply is reported.
                    Err(e) if e.contains("may still take effect") => {
                        let r = d.admin(&["RAFT.MEMBERS"], &[])?;
                        if member_ids(&r).contains(&old) {
                            return Err(format!("{e}; RAFT.MEMBERS still lists {old}"));
                        }
                        Ok(format!(
                            "ANOMALY: the removal took effect ({}) but the reply was {e}",
                            members_summary(&r)
                        ))
                    }
                    Err(e) => Err(e),
                }
            }) {
                return;
            }
            step(steps, format!("stop member {old}"), || {
                let took = d.stop(old)?;
                let l = d.leader().map_or("none".into(), |(l, _)| l.to_string());
                Ok(format!(
                    "exited {} ms after SIGTERM; leader now {l}",
                    took.as_millis()
                ))
            });
        })
    }

    /// Restarts every running member in turn, followers first, the leader
    /// last, each with its own command line.
    fn rolling_restart(d: &Drill, tag: &str, title: &str) -> Run {
        under_load(d, tag, title, &[], |steps| {
            let Some((leader, _)) = d.leader() else {
                step(steps, "find the leader", || Err("no leader".into()));
                return;
            };
            let mut order: Vec<u64> = d.running().into_iter().filter(|&id| id != leader).collect();
            order.push(leader);
            for id in order {
                let role = if d.leader().map(|(l, _)| l) == Some(id) {
                    "leader"
                } else {
                    "follower"
                };
                let ok = step(steps, format!("restart member {id} ({role})"), || {
                    let (argv, cwd) = d.command_line(id)?;
                    let log_from = log_len(&d.cl.member(id).log);
                    let down = d.stop(id)?;
                    let t = Instant::now();
                    d.launch(id, &argv, &cwd)?;
                    d.wait_answers(id, log_from)?;
                    let answers = t.elapsed();
                    d.wait_caught_up(id)?;
                    let l = d.leader().map_or("none".into(), |(l, _)| l.to_string());
                    Ok(format!(
                        "exited {} ms after SIGTERM, answered {} ms after start, caught up after {} ms; leader now {l}",
                        down.as_millis(),
                        answers.as_millis(),
                        t.elapsed().as_millis()
                    ))
                });
                if !ok {
                    return;
                }
            }
        })
    }

    /// Restarts the whole cluster (no load): every member stops, then all
    /// start again with their own command lines.
    fn restart_all(d: &Drill) -> Result<(), String> {
        let ids = d.running();
        let mut lines = Vec::new();
        for &id in &ids {
            lines.push((id, d.command_line(id)?, log_len(&d.cl.member(id).log)));
        }
        for &id in &ids {
            d.stop(id)?;
        }
        for (id, (argv, cwd), _) in &lines {
            d.launch(*id, argv, cwd)?;
        }
        for (id, _, from) in &lines {
            d.wait_answers(*id, *from)?;
        }
        d.wait_ready().map(|_| ())
    }

    /// `[[id, peer, client, role, ...], ...]` → `1 voter, 4 learner`.
    fn members_summary(r: &Reply) -> String {
        match r {
            Reply::Array(ms) => ms
                .iter()
                .map(|m| match m {
                    Reply::Array(f) => match (f.first(), f.get(3)) {
                        (Some(Reply::Integer(id)), Some(Reply::Bulk(Some(role)))) => {
                            format!("{id} {}", String::from_utf8_lossy(role))
                        }
                        _ => format!("{f:?}"),
                    },
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Reply::Simple(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }

    fn member_ids(r: &Reply) -> Vec<u64> {
        match r {
            Reply::Array(ms) => ms
                .iter()
                .filter_map(|m| match m {
                    Reply::Array(f) => match f.first() {
                        Some(Reply::Integer(id)) => u64::try_from(*id).ok(),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn ms(d: Duration) -> String {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    }

    fn print_run(run: &Run) -> (Duration, usize) {
        let mut acks: Vec<Instant> = run
            .logs
            .iter()
            .flat_map(|l| l.acks.iter().map(|a| a.acked))
            .collect();
        acks.sort_unstable();
        println!("\n{}: {}", run.tag, run.title);
        println!(
            "  {:<34} {:>8} {:>7} {:>6} {:>7} {:>9} {:>10}",
            "step", "took ms", "acked", "failed", "unknown", "pause ms", "max lat ms"
        );
        let (mut worst, mut failed) = (Duration::ZERO, 0);
        for s in &run.steps {
            let w = window(run, &acks, s.start, s.end);
            println!(
                "  {:<34} {:>8} {:>7} {:>6} {:>7} {:>9} {:>10}{}",
                s.name,
                (s.end - s.start).as_millis(),
                w.acked,
                w.failed,
                w.unknown,
                ms(w.pause),
                ms(w.max_latency),
                if s.outcome.is_err() {
                    "  STEP FAILED"
                } else {
                    ""
                }
            );
            if !s.name.starts_with("steady") {
                worst = worst.max(w.pause);
                failed += w.failed;
            }
        }
        let redirects: u64 = run.logs.iter().map(|l| l.redirects).sum();
        let unknown: usize = run.logs.iter().map(|l| l.unknown.len()).sum();
        let given_up: u64 = run.logs.iter().map(|l| l.given_up).sum();
        println!(
            "  whole run: {} writes acknowledged, {} failed, {} resent after a timeout or closed connection, \
             {redirects} MOVED/CLUSTERDOWN/TRYAGAIN replies followed, {given_up} given up, {} lost of {} read back",
            run.acked(),
            run.failed(),
            unknown,
            run.lost.len(),
            run.checked
        );
        let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
        for l in &run.logs {
            for (_, e) in &l.errors {
                *errors.entry(e.as_str()).or_default() += 1;
            }
        }
        for (e, n) in errors {
            println!("  error reply ({n}x): -{e}");
        }
        let dropped: u64 = run.logs.iter().map(|l| l.errors_dropped).sum();
        if dropped > 0 {
            println!("  ... and {dropped} more error replies not kept");
        }
        for s in &run.steps {
            if let Ok(note) = &s.outcome {
                if note.starts_with("ANOMALY") {
                    println!("  {}: {note}", s.name);
                }
            }
        }
        for f in &run.failures {
            println!("  CHECK FAILED: {f}");
        }
        (worst, failed)
    }

    pub(super) fn run(args: &Args) -> Result<bool, String> {
        if !args.start {
            return Err(
                "--membership needs --start: it replaces and restarts members, so it runs on a cluster of its own"
                    .into(),
            );
        }
        let data = match &args.data {
            Some(d) => absolute(d)?,
            None => return Err("--data DIR is required (--start passes it)".into()),
        };
        let script = fault_script(args)?;
        let bin = args
            .bin
            .clone()
            .or_else(|| std::env::var_os("RAFT_NODE").map(PathBuf::from))
            .map(|b| absolute(&b))
            .transpose()?;
        let boot = Cluster {
            data: data.clone(),
            members: Vec::new(),
            heartbeat_ms: 0,
            election_timeout_ms: (0, 0),
            script: script.clone(),
            bin: bin.clone(),
        };
        boot.fault_sh(&["cluster-start"])?;
        let result = drill(args, &data, script, bin);
        // Every member with a pid file, joined ones included; whatever is
        // left, the namespace's deletion kills.
        if let Err(e) = boot.fault_sh(&["cluster-stop"]) {
            eprintln!("raft-drill: stopping the cluster: {e}");
        }
        result
    }

    fn drill(
        args: &Args,
        data: &Path,
        script: PathBuf,
        bin: Option<PathBuf>,
    ) -> Result<bool, String> {
        // From now on the file lists members 4 and 5 (for their own
        // addresses when they join). The running members never reread it;
        // a restarted member takes its configuration from its data dir.
        add_to_cluster_file(data, &[4, 5])?;
        let d = Drill {
            cl: Cluster::load(data, script, bin)?,
            children: Mutex::new(Vec::new()),
            clients: args.clients,
        };
        let l = d.wait_ready()?;
        println!(
            "raft-drill --membership: {} writers, members {:?} in {}{} (heartbeat {} ms, election timeout {}-{} ms); leader {l}",
            args.clients,
            d.running(),
            data.display(),
            std::env::var(INSIDE_ENV)
                .map(|ns| format!(", namespace {ns}"))
                .unwrap_or_default(),
            d.cl.heartbeat_ms,
            d.cl.election_timeout_ms.0,
            d.cl.election_timeout_ms.1,
        );
        let mut runs = Vec::new();
        let go_on = |runs: &Vec<Run>| runs.last().is_none_or(|r: &Run| r.ok());
        runs.push(replace(&d, "a1", 1, 4, 1));
        if go_on(&runs) {
            runs.push(rolling_restart(
                &d,
                "b1",
                "rolling restart with the hand-over (shutdown_transfer = true, the default)",
            ));
        }
        if go_on(&runs) {
            println!("\nrestarting the whole cluster with shutdown_transfer = false (no load)");
            match disable_hand_over(data).and_then(|_| restart_all(&d)) {
                Ok(()) => runs.push(rolling_restart(
                    &d,
                    "b2",
                    "rolling restart without the hand-over (shutdown_transfer = false)",
                )),
                Err(e) => {
                    println!("  FAILED: {e}");
                    print_results(&runs);
                    return Ok(false);
                }
            }
        }
        // Last, as it may leave a learner that never catches up behind:
        // member 5 joins through a leader that joined itself (4, not in the
        // log's first configuration).
        if go_on(&runs) {
            runs.push(replace(&d, "a2", 2, 5, 4));
        }
        Ok(print_results(&runs))
    }

    fn print_results(runs: &[Run]) -> bool {
        println!("\n===== membership drill results =====");
        println!(
            "pause ms: the longest time overlapping the step in which no writer had a write acknowledged (all \
             writers together; normal latency included). max lat ms: the longest single write overlapping the step, \
             first send to acknowledgement, resends after MOVED/CLUSTERDOWN/timeouts included. failed: writes that \
             got an error reply other than MOVED, CLUSTERDOWN or TRYAGAIN (then resent: SET of the same key and \
             value is idempotent). unknown: resends after a timeout or a closed connection."
        );
        let mut restart = BTreeMap::new();
        for r in runs {
            let (pause, failed) = print_run(r);
            restart.insert(r.tag.as_str(), (pause, failed));
        }
        println!();
        if let Some((p, f)) = restart.get("b1") {
            println!(
                "rolling restart with hand-over: longest pause {} ms (goal < {} ms: {}), failed writes {f} (goal 0: {})",
                ms(*p),
                PAUSE_GOAL.as_millis(),
                if *p < PAUSE_GOAL { "met" } else { "MISSED" },
                if *f == 0 { "met" } else { "MISSED" }
            );
        }
        if let Some((p, f)) = restart.get("b2") {
            println!(
                "rolling restart without hand-over: longest pause {} ms, failed writes {f}",
                ms(*p)
            );
        }
        let anomalies = runs
            .iter()
            .flat_map(|r| r.steps.iter())
            .filter(|s| matches!(&s.outcome, Ok(n) if n.starts_with("ANOMALY")))
            .count();
        if anomalies > 0 {
            // Carried out, so not a failed step; but a reply that
            // contradicts what happened is a server defect to look at.
            println!("server anomalies: {anomalies} (ANOMALY lines above)");
        }
        let lost: usize = runs.iter().map(|r| r.lost.len()).sum();
        let ok = runs.len() == 4 && runs.iter().all(Run::ok);
        println!(
            "checks: {} ({} runs of 4, {lost} acknowledged writes lost)",
            if ok { "all passed" } else { "FAILED" },
            runs.len()
        );
        ok
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pause_is_the_longest_gap_overlapping_the_window() {
            let t0 = Instant::now();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let log = ClientLog {
                acks: [10, 20, 70, 75]
                    .iter()
                    .map(|&ms| Ack {
                        seq: ms,
                        sent: at(ms - 5),
                        acked: at(ms),
                    })
                    .collect(),
                ..ClientLog::default()
            };
            let run = Run {
                tag: "t".into(),
                title: "t".into(),
                start: t0,
                end: at(100),
                steps: Vec::new(),
                logs: vec![log],
                checked: 0,
                lost: Vec::new(),
                failures: Vec::new(),
            };
            let acks: Vec<Instant> = run.logs[0].acks.iter().map(|a| a.acked).collect();
            // The 20..70 gap overlaps a window inside it, and one that
            // only touches its end.
            let w = window(&run, &acks, at(30), at(40));
            assert_eq!((w.pause, w.acked), (Duration::from_millis(50), 0));
            let w = window(&run, &acks, at(72), at(74));
            assert_eq!(w.pause, Duration::from_millis(5));
            // From the last acknowledgement to the end of the load.
            let w = window(&run, &acks, at(90), at(95));
            assert_eq!(w.pause, Duration::from_millis(25));
            assert_eq!(w.max_latency, Duration::ZERO);
            let w = window(&run, &acks, at(0), at(100));
            assert_eq!((w.acked, w.max_latency), (4, Duration::from_millis(5)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_lines() {
        let l = parse_log_line(
            "2026-11-23T18:35:34.105Z INFO  [n3] link to leader 1 lost: connection closed by peer",
        )
        .unwrap();
        assert_eq!(l.node, 3);
        assert_eq!(l.msg, "link to leader 1 lost: connection closed by peer");
        // 2026-11-23T18:35:34.105Z, cross-checked with `date -d ... +%s%3N`.
        assert_eq!(l.at_ms, 1_795_458_934_105);
        assert!(is_detection(&l.msg, 1));
        assert!(!is_detection(&l.msg, 2));
        assert!(parse_log_line("thread 'main' panicked at x").is_none());
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_utc_ms("2000-03-01T00:00:00.001Z"),
            Some(951_868_800_001)
        );
    }

    #[test]
    fn finds_election_term() {
        assert_eq!(
            leader_term("became leader in term 7 (won election)"),
            Some(7)
        );
        assert_eq!(leader_term("became follower in term 7 (x)"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 0.5), Some(5));
        assert_eq!(percentile(&v, 0.9), Some(9));
        assert_eq!(percentile(&[4], 0.9), Some(4));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn cluster_file_round_trip_keeps_other_settings() {
        let dir = std::env::temp_dir().join(format!("raft-drill-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            ClusterFile::path(&dir),
            "# Generated by make cluster.\nheartbeat_ms = 50\nelection_timeout_ms = [300, 600]\n\
             secret_file = \"cluster.secret\"\n\n[[node]]\nid = 1\npeer_addr = \"127.0.0.1:7001\"\n\
             client_addr = \"127.0.0.1:6401\"\n",
        )
        .unwrap();
        let mut f = ClusterFile::read(&dir).unwrap();
        assert_eq!(
            (f.heartbeat_ms, f.election_timeout_ms),
            (Some(50), Some([300, 600]))
        );
        f.shutdown_transfer = Some(false);
        f.nodes.push(NodeEntry {
            id: 4,
            peer_addr: "127.0.0.4:7004".into(),
            client_addr: "127.0.0.4:6404".into(),
            metrics_addr: Some("127.0.0.4:9404".into()),
        });
        f.write(&dir, "# c\n").unwrap();
        let text = fs::read_to_string(ClusterFile::path(&dir)).unwrap();
        // Top-level keys before the first [[node]]: after it they would
        // belong to that node.
        let first_node = text.find("[[node]]").unwrap();
        for key in ["shutdown_transfer", "secret_file", "heartbeat_ms"] {
            assert!(text.find(key).unwrap() < first_node, "{key} in:\n{text}");
        }
        let g = ClusterFile::read(&dir).unwrap();
        assert_eq!(g.nodes, f.nodes);
        assert_eq!(g.shutdown_transfer, Some(false));
        assert_eq!(
            g.other.get("secret_file").and_then(|v| v.as_str()),
            Some("cluster.secret")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_cluster_values() {
        let i = Info::parse(
            "raft_node_id:1\r\nraft_role:leader\r\nraft_term:7\r\nraft_leader_id:1\r\n",
        );
        assert_eq!((i.role.as_str(), i.term, i.leader), ("leader", 7, 1));
    }
}
