//! The membership drill's hands on the cluster: starting, stopping and
//! restarting members, admin commands to the leader, and the waits between.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tools::resp::{Conn, Reply};

use crate::cluster::{Cluster, Info};
use crate::logs::crash_summary;
use crate::{wait_until, CONNECT_TIMEOUT, POLL};

/// RAFT.ADD and the like answer when the change commits.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one admin command may be retried ("in progress", "has
/// caught up to", no leader).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new or restarted member may take to catch up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a started member may take to answer INFO.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member may take to exit after SIGTERM (a leader first
/// hands over, for at most an election timeout).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The drill's view of the cluster, and the members it started itself
/// (kept to be reaped when they exit).
pub struct Drill {
    pub cl: Cluster,
    pub children: Mutex<Vec<Child>>,
    pub clients: u32,
}

impl Drill {
    pub fn reap(&self) {
        let mut ch = self.children.lock().unwrap_or_else(|p| p.into_inner());
        ch.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    pub fn alive(&self, id: u64) -> bool {
        self.reap();
        self.cl.alive(id)
    }

    /// Members with a pid file whose process runs.
    pub fn running(&self) -> Vec<u64> {
        self.reap();
        self.cl
            .members
            .iter()
            .map(|m| m.id)
            .filter(|&id| self.cl.alive(id))
            .collect()
    }

    /// The running member that says it leads, in the highest term.
    pub fn leader(&self) -> Option<(u64, Info)> {
        self.running()
            .into_iter()
            .filter_map(|id| self.cl.info(id).ok().map(|i| (id, i)))
            .filter(|(_, i)| i.role == "leader")
            .max_by_key(|(_, i)| i.term)
    }

    /// The client addresses the writers start from (and fall back to).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.cl.members.iter().map(|m| m.client_addr).collect()
    }

    /// Sends an admin command to the leader, retrying while there is
    /// none, on a redirect, and on an error containing one of `retry`.
    pub fn admin(&self, cmd: &[&str], retry: &[&str]) -> Result<Reply, String> {
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
                Err(e) => return Err(format!("{}: no reply from member {l}: {e}", cmd.join(" "))),
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
    pub fn launch(&self, id: u64, argv: &[OsString], cwd: &Path) -> Result<(), String> {
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
    pub fn wait_answers(&self, id: u64, log_from: u64) -> Result<(), String> {
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
    pub fn wait_caught_up(&self, id: u64) -> Result<String, String> {
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
    pub fn stop(&self, id: u64) -> Result<Duration, String> {
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
    pub fn command_line(&self, id: u64) -> Result<(Vec<OsString>, PathBuf), String> {
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
    pub fn wait_ready(&self) -> Result<u64, String> {
        wait_until("ready", || self.ready())
    }

    pub fn ready(&self) -> Result<u64, String> {
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
