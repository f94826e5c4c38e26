//! What the process-level tests share: a cluster of real `raft-node`
//! processes on loopback (127.0.0.1, .2, .3) in a temporary directory, and
//! a minimal RESP client. Each test binary uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_raft-node");
/// The peer-link secret of every test cluster (a test playing an insider
/// needs it to authenticate).
pub const SECRET: &[u8] = b"test-cluster-secret-0123456789abcdef";

/// A free TCP port on `ip` (bound and released; racy but adequate here).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A RESP value as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

pub struct Conn {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out)
    }

    pub fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let body = line.trim_end_matches("\r\n").to_string();
        let (t, rest) = body.split_at(1);
        Ok(match t {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut b = vec![0; n as usize + 2];
                    self.r.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Resp::Bulk(Some(b))
                }
            }
            "*" => {
                let n: usize = rest.parse().unwrap();
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.read()?);
                }
                Resp::Array(v)
            }
            _ => panic!("bad reply line {line:?}"),
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a)?;
        self.read()
    }
}

pub struct Member {
    pub id: u64,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub members: Vec<Member>,
    pub extra_args: Vec<String>,
}

impl Cluster {
    pub fn new(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster.secret");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&secret)
                .unwrap();
            f.write_all(SECRET).unwrap();
        }
        let mut toml = "secret_file = \"cluster.secret\"\n\n".to_string();
        let mut members = Vec::new();
        for i in 1..=n {
            let ip = format!("127.0.0.{i}");
            let peer: SocketAddr = format!("{ip}:{}", free_port(&ip)).parse().unwrap();
            let client: SocketAddr = format!("{ip}:{}", free_port(&ip)).parse().unwrap();
            toml.push_str(&format!(
                "[[node]]\nid = {i}\npeer_addr = \"{peer}\"\nclient_addr = \"{client}\"\n\n"
            ));
            members.push(Member {
                id: i as u64,
                peer,
                client,
                data: dir.path().join(format!("node{i}")),
                log: dir.path().join(format!("node{i}.log")),
                child: None,
            });
        }
        let config = dir.path().join("cluster.toml");
        fs::write(&config, toml).unwrap();
        Cluster {
            dir,
            config,
            members,
            extra_args: Vec::new(),
        }
    }

    pub fn m(&self, id: u64) -> &Member {
        &self.members[id as usize - 1]
    }

    pub fn command(&self, id: u64) -> Command {
        let m = self.m(id);
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&m.data)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    pub fn start(&mut self, id: u64) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.m(id).log)
            .unwrap();
        let child = self.command(id).stderr(log).spawn().unwrap();
        self.members[id as usize - 1].child = Some(child);
    }

    pub fn start_all(&mut self) {
        for id in 1..=self.members.len() as u64 {
            self.start(id);
        }
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[id as usize - 1].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut c = self.members[id as usize - 1].child.take().expect("running");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        wait_exit(&mut c, Duration::from_secs(10))
    }

    pub fn pid(&self, id: u64) -> u32 {
        self.m(id).child.as_ref().unwrap().id()
    }

    pub fn conn(&self, id: u64) -> Conn {
        Conn::open(self.m(id).client).unwrap()
    }

    pub fn info(&self, id: u64) -> Option<Vec<(String, String)>> {
        let mut c = Conn::open(self.m(id).client).ok()?;
        match c.cmd(&["INFO", "raft"]).ok()? {
            Resp::Bulk(Some(b)) => Some(
                String::from_utf8(b)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            _ => None,
        }
    }

    pub fn field(&self, id: u64, key: &str) -> Option<String> {
        self.info(id)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Waits until every running member agrees on one leader; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<u64> = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .map(|m| m.id)
                .collect();
            let leaders: Vec<Option<String>> = running
                .iter()
                .map(|&id| self.field(id, "raft_leader_id"))
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if l != "0" && leaders.iter().all(|x| x.as_deref() == Some(l)) {
                    let l: u64 = l.parse().unwrap();
                    if self.field(l, "raft_role").as_deref() == Some("leader") {
                        return l;
                    }
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no leader within {timeout:?}: {leaders:?}");
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Runs a command against the cluster, following MOVED and retrying
    /// CLUSTERDOWN and connection errors, like `redis-cli -c` with retries.
    pub fn exec(&self, args: &[&str]) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut target = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .map(|m| m.client)
            .unwrap();
        loop {
            let r = Conn::open(target).and_then(|mut c| c.cmd(args));
            match r {
                Ok(Resp::Error(e)) if e.starts_with("MOVED ") => {
                    target = e.rsplit(' ').next().unwrap().parse().unwrap();
                    continue;
                }
                Ok(Resp::Error(e))
                    if e.starts_with("CLUSTERDOWN") || e.contains("leadership lost") => {}
                Ok(r) => return r,
                Err(_) => {
                    // That member is down: try another running one.
                    let alive: Vec<SocketAddr> = self
                        .members
                        .iter()
                        .filter(|m| m.child.is_some())
                        .map(|m| m.client)
                        .collect();
                    let i = alive
                        .iter()
                        .position(|a| *a == target)
                        .map_or(0, |i| (i + 1) % alive.len());
                    target = alive[i];
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("{args:?} did not succeed in time");
            }
            sleep(Duration::from_millis(50));
        }
    }

    pub fn dump_logs(&self) {
        for m in &self.members {
            eprintln!("===== node {} =====", m.id);
            eprintln!("{}", fs::read_to_string(&m.log).unwrap_or_default());
        }
    }

    pub fn log_text(&self, id: u64) -> String {
        fs::read_to_string(&self.m(id).log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn wait_exit(c: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("process did not exit within {timeout:?}");
        }
        sleep(Duration::from_millis(20));
    }
}

pub fn ok() -> Resp {
    Resp::Simple("OK".into())
}

pub fn bulk(s: &str) -> Resp {
    Resp::Bulk(Some(s.as_bytes().to_vec()))
}

pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
