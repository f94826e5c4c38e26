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
//! ```
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
    /// What to do to the leader.
    #[arg(long, value_enum)]
    fault: Fault,
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
        reexec_inside(ns, &[])
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

/// Whether an executable of this name is on PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs this program again inside network namespace `ns` with the same
/// arguments (plus `extra`), and returns its exit status.
fn reexec_inside(ns: &str, extra: &[OsString]) -> Result<u8, String> {
    if !is_root() {
        return Err(format!(
            "--netns {ns}: needs root (ip netns exec); run it with sudo"
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .args(extra)
        .env(INSIDE_ENV, ns)
        .spawn()
        .map_err(|e| format!("ip netns exec {ns}: {e}"))?;
    // Ctrl-C reaches the child too (same process group); this process
    // stays to clean up after it. spawn() returned after the exec, so the
    // child keeps the default disposition.
    ignore_interrupts();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the drill inside {ns}: {e}"))?;
    Ok(status
        .code()
        .map_or(1, |c| u8::try_from(c).unwrap_or(1).max(u8::from(c != 0))))
}

fn ignore_interrupts() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no
    // preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

/// `--start`, outside the namespace: creates it and a data dir, runs the
/// drill inside, then deletes the namespace (and every process in it).
fn start_outside(args: &Args) -> Result<u8, String> {
    if !is_root() {
        return Err(
            "--start: needs root (it creates a network namespace); run it with sudo".into(),
        );
    }
    let ns = args
        .netns
        .clone()
        .unwrap_or_else(|| format!("raft-drill-{}", std::process::id()));
    let existing = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| format!("ip netns list: {e}"))?;
    if String::from_utf8_lossy(&existing.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
    {
        return Err(format!(
            "--start: network namespace {ns} already exists; name a fresh one (it is deleted afterwards)"
        ));
    }
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
    fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let script = fault_script(args)?;
    let up = Command::new(&script)
        .args(["netns-up", &ns])
        .status()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !up.success() {
        return Err(format!("could not create network namespace {ns}"));
    }
    let extra: Vec<OsString> = if args.data.is_none() {
        vec!["--data".into(), data.clone().into()]
    } else {
        Vec::new()
    };
    let code = reexec_inside(&ns, &extra);
    let down = Command::new(&script).args(["netns-down", &ns]).status();
    if !matches!(down, Ok(s) if s.success()) {
        eprintln!("raft-drill: could not delete network namespace {ns}: delete it with `ip netns delete {ns}`");
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

impl Cluster {
    fn load(data: &Path, script: PathBuf, bin: Option<PathBuf>) -> Result<Cluster, String> {
        let file = data.join("cluster.toml");
        let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut members = Vec::new();
        let (mut heartbeat_ms, mut election_timeout_ms) = (50, (300, 600));
        let mut current: Option<(Option<u64>, Option<String>)> = None;
        let mut finish = |m: Option<(Option<u64>, Option<String>)>| -> Result<(), String> {
            if let Some((id, client)) = m {
                let id = id.ok_or_else(|| format!("{}: a [[node]] without id", file.display()))?;
                let client = client
                    .ok_or_else(|| format!("{}: member {id} has no client_addr", file.display()))?;
                let client_addr = client
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("member {id}: bad client_addr {client}"))?;
                members.push(Member {
                    id,
                    client_addr,
                    pid_file: data.join(format!("node{id}.pid")),
                    log: data.join(format!("node{id}")).join("node.log"),
                });
            }
            Ok(())
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("[[node]]") {
                finish(current.take())?;
                current = Some((None, None));
                continue;
            }
            if line.starts_with('[') {
                finish(current.take())?;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = strip_value(value);
            match (key.trim(), current.as_mut()) {
                ("id", Some(m)) => m.0 = value.parse().ok(),
                ("client_addr", Some(m)) => m.1 = Some(value),
                ("heartbeat_ms", None) => heartbeat_ms = value.parse().unwrap_or(heartbeat_ms),
                ("election_timeout_ms", None) => {
                    let v: Vec<u64> = value
                        .trim_matches(|c| c == '[' || c == ']')
                        .split(',')
                        .filter_map(|x| x.trim().parse().ok())
                        .collect();
                    if let [a, b] = v[..] {
                        election_timeout_ms = (a, b);
                    }
                }
                _ => {}
            }
        }
        finish(current.take())?;
        if members.len() < 3 {
            return Err(format!(
                "{}: {} members; the drill needs at least 3",
                file.display(),
                members.len()
            ));
        }
        Ok(Cluster {
            data: data.to_path_buf(),
            members,
            heartbeat_ms,
            election_timeout_ms,
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
        match c.call(&["INFO", "raft"]) {
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

/// A value from the cluster file, without quotes and trailing comment.
fn strip_value(v: &str) -> String {
    let v = v.trim();
    if let Some(rest) = v.strip_prefix('"') {
        rest.split('"').next().unwrap_or("").to_string()
    } else {
        v.split('#').next().unwrap_or("").trim().to_string()
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
    match c.call(&["SET", &format!("drill:health:{tag}"), &n.to_string()]) {
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
        match c.call(&["SET", &key, &seq.to_string()]) {
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
    if args.fault == Fault::Isolate && !is_root() {
        return Err("--fault isolate: needs root (iptables)".into());
    }
    if args.trials == 0 {
        return Err("--trials 0: a drill must run at least one trial".into());
    }
    if args.fault == Fault::Isolate {
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
    } else if args.fault == Fault::Isolate {
        let _ = cl.fault_sh(&["heal"]);
    }
    result
}

fn trials(args: &Args, cl: &Cluster) -> Result<bool, String> {
    println!(
        "raft-drill: fault {:?}, {} trials, {} members in {}{} (heartbeat {} ms, election timeout {}-{} ms)",
        args.fault,
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
        let injected = match args.fault {
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
    let recovered = match args.fault {
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
        args.fault.verb(),
        fmt(r.detection_ms),
        fmt(r.election_ms),
        fmt(r.unavailable_ms),
    );
    if !detected_by.is_empty() {
        println!("  detected: {detected_by}");
    }
    if r.failures.is_empty() && args.fault != Fault::Kill {
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
        args.fault,
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
    fn reads_cluster_values() {
        assert_eq!(strip_value(" \"127.0.0.1:6401\"   # c"), "127.0.0.1:6401");
        assert_eq!(strip_value(" 3 # c"), "3");
        let i = Info::parse(
            "raft_node_id:1\r\nraft_role:leader\r\nraft_term:7\r\nraft_leader_id:1\r\n",
        );
        assert_eq!((i.role.as_str(), i.term, i.leader), ("leader", 7, 1));
    }
}
