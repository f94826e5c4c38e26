//! The cluster under test, through tools/cluster.sh and tools/fault.sh in
//! its data dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tools::resp::{Conn, Reply};

use crate::{client_addr, repo_root, MEMBERS};

pub struct Cluster {
    pub dir: PathBuf,
    pub netns: String,
    pub raft_node: PathBuf,
}

impl Cluster {
    pub fn script(&self, script: &str, args: &[&str]) -> bool {
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

    pub fn fault(&self, args: &[&str]) -> bool {
        self.script("fault.sh", args)
    }

    pub fn leader(&self) -> Option<u64> {
        (1..=MEMBERS).find(|&i| {
            let Ok(mut c) = Conn::connect(client_addr(i), Duration::from_millis(300)) else { return false };
            matches!(c.cmd_bytes(&[b"INFO", b"raft"]), Ok(Reply::Bulk(Some(b))) if String::from_utf8_lossy(&b).contains("raft_role:leader"))
        })
    }

    pub fn alive(&self, i: u64) -> bool {
        let Some(pid) = read_pid(&self.dir, i) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }
}

pub fn read_pid(dir: &Path, member: u64) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("node{member}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reaps the members as soon as they die. They are started by scripts
/// that exit at once, so they would be reparented to pid 1, which may reap
/// a killed one late: until then it looks alive and cannot be restarted.
/// This process adopts them instead (a child subreaper).
pub struct Reaper {
    reaping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Reaper {
    /// Becomes the subreaper of the members whose pid files are in `dir`.
    pub fn adopt(dir: &Path) -> Reaper {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let reaping = Arc::new(AtomicBool::new(true));
        let (dir, flag) = (dir.to_path_buf(), reaping.clone());
        let thread = thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                for i in 1..=MEMBERS {
                    if let Some(pid) = read_pid(&dir, i) {
                        let mut status = 0;
                        // SAFETY: waits only for this pid, without blocking.
                        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        Reaper { reaping, thread }
    }

    /// Stops reaping.
    pub fn stop(self) {
        self.reaping.store(false, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
