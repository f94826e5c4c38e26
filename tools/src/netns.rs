//! Network namespaces: a private network for a cluster under test, where
//! iptables rules and extra addresses touch nothing outside, and deleting
//! the namespace removes all of it. raft-chaos, raft-drill and the
//! protected-mode test make theirs here; `tools/fault.sh netns-up` is the
//! same for shell users.
//!
//! A namespace made by [`Netns::create`] is deleted when dropped (also on a
//! panic), after every process still inside it is killed: nothing of a run
//! outlives it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::AsRawFd;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long the processes inside may take to die before the namespace is
/// deleted anyway.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Whether this process runs as root (namespaces and iptables need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether an executable of this name is on PATH.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Runs `ip ARGS`; its error output is the error.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a namespace of this name exists.
pub fn exists(name: &str) -> Result<bool, String> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name)))
}

/// A network namespace, by name.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Created here, so deleted here.
    owned: bool,
}

impl Netns {
    /// Creates namespace `name` with its loopback device up, so that all of
    /// 127.0.0.0/8 is local inside it (members on 127.0.0.1, .2, .3). It is
    /// an error if the namespace exists already: it would be deleted
    /// afterwards. Needs root.
    pub fn create(name: &str) -> Result<Netns, String> {
        if !is_root() {
            return Err(format!(
                "creating network namespace {name} needs root (ip netns add)"
            ));
        }
        if exists(name)? {
            return Err(format!(
                "network namespace {name} already exists; name a fresh one (it is deleted afterwards)"
            ));
        }
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// An existing namespace, which dropping this leaves alone.
    pub fn existing(name: &str) -> Result<Netns, String> {
        if !exists(name)? {
            return Err(format!("no network namespace {name}"));
        }
        Ok(Netns {
            name: name.to_string(),
            owned: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds `cidr` (say `192.0.2.1/32`) to the loopback device: an address
    /// that is local inside the namespace but not a loopback address.
    pub fn add_loopback_addr(&self, cidr: &str) -> Result<(), String> {
        self.ip(&["addr", "add", cidr, "dev", "lo"]).map(drop)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs this program again inside the namespace with `args` and `env`,
    /// and waits for it. Ctrl-C and SIGTERM reach the copy inside (same
    /// process group) but no longer this process, which stays to clean up
    /// after it.
    pub fn run_self(&self, args: &[OsString], env: &[(&str, &str)]) -> Result<ExitStatus, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
        let mut child = self
            .command(exe)
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .map_err(|e| format!("ip netns exec {}: {e}", self.name))?;
        // Only now: spawn() returned after the exec, so the child keeps
        // the default disposition (an ignored signal would be inherited).
        // SAFETY: setting a signal's disposition to SIG_IGN has no
        // preconditions; no handler code runs.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
        child
            .wait()
            .map_err(|e| format!("waiting for the run inside {}: {e}", self.name))
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// opens belong to the namespace, wherever they are used afterwards.
    pub fn on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let path = format!("/run/netns/{}", self.name);
        let file = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let joined = thread::spawn(move || {
            // SAFETY: setns(2) on a descriptor we own; it changes this
            // thread's network namespace only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join();
        match joined {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Kills every process inside and deletes the namespace (only one this
    /// created; an [`existing`](Netns::existing) one is left alone).
    pub fn delete(mut self) -> Result<(), String> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.owned) {
            return Ok(());
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids = ip(&["netns", "pids", &self.name])?;
            let pids: Vec<i32> = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) on a process listed inside our namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
        ip(&["netns", "delete", &self.name]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let name = self.name.clone();
        if let Err(e) = self.remove() {
            eprintln!("could not delete network namespace {name} ({e}): delete it with `ip netns delete {name}`");
        }
    }
}
