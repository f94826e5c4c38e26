//! Process-level tests: real `raft-node` processes on loopback (127.0.0.1,
//! .2, .3), driven over RESP and the peer port, killed with SIGKILL and
//! SIGTERM. Each test has its own ports and temporary data dirs, so they run
//! in parallel. On failure the members' logs are printed.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_raft-node");

/// A free TCP port on `ip` (bound and released; racy but adequate here).
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A RESP value as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out)
    }

    fn read(&mut self) -> std::io::Result<Resp> {
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

    fn cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a)?;
        self.read()
    }
}

struct Member {
    id: u64,
    peer: SocketAddr,
    client: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    config: PathBuf,
    members: Vec<Member>,
    extra_args: Vec<String>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = String::new();
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
            _dir: dir,
            config,
            members,
            extra_args: Vec::new(),
        }
    }

    fn m(&self, id: u64) -> &Member {
        &self.members[id as usize - 1]
    }

    fn command(&self, id: u64) -> Command {
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

    fn start(&mut self, id: u64) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.m(id).log)
            .unwrap();
        let child = self.command(id).stderr(log).spawn().unwrap();
        self.members[id as usize - 1].child = Some(child);
    }

    fn start_all(&mut self) {
        for id in 1..=self.members.len() as u64 {
            self.start(id);
        }
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[id as usize - 1].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut c = self.members[id as usize - 1].child.take().expect("running");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        wait_exit(&mut c, Duration::from_secs(10))
    }

    fn pid(&self, id: u64) -> u32 {
        self.m(id).child.as_ref().unwrap().id()
    }

    fn conn(&self, id: u64) -> Conn {
        Conn::open(self.m(id).client).unwrap()
    }

    fn info(&self, id: u64) -> Option<Vec<(String, String)>> {
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

    fn field(&self, id: u64, key: &str) -> Option<String> {
        self.info(id)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Waits until every running member agrees on one leader; returns it.
    fn wait_leader(&self, timeout: Duration) -> u64 {
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
    fn exec(&self, args: &[&str]) -> Resp {
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

    fn dump_logs(&self) {
        for m in &self.members {
            eprintln!("===== node {} =====", m.id);
            eprintln!("{}", fs::read_to_string(&m.log).unwrap_or_default());
        }
    }

    fn log_text(&self, id: u64) -> String {
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

fn wait_exit(c: &mut Child, timeout: Duration) -> ExitStatus {
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

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

fn bulk(s: &str) -> Resp {
    Resp::Bulk(Some(s.as_bytes().to_vec()))
}

#[test]
fn elects_a_leader_serves_writes_and_redirects() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));

    let mut l = c.conn(leader);
    assert_eq!(l.cmd(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    assert_eq!(l.cmd(&["SET", "k", "v1"]).unwrap(), ok());
    assert_eq!(l.cmd(&["GET", "k"]).unwrap(), bulk("v1"));
    assert_eq!(l.cmd(&["GET", "nope"]).unwrap(), Resp::Bulk(None));
    assert_eq!(l.cmd(&["DEL", "k", "nope"]).unwrap(), Resp::Int(1));
    assert_eq!(l.cmd(&["GET", "k"]).unwrap(), Resp::Bulk(None));

    // Pipelined requests are answered in order.
    for i in 0..50 {
        let v = format!("v{i}");
        l.send(&[b"SET", b"p", v.as_bytes()]).unwrap();
        l.send(&[b"GET", b"p"]).unwrap();
        l.send(&[b"PING"]).unwrap();
    }
    for i in 0..50 {
        assert_eq!(l.read().unwrap(), ok());
        assert_eq!(l.read().unwrap(), bulk(&format!("v{i}")));
        assert_eq!(l.read().unwrap(), Resp::Simple("PONG".into()));
    }

    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = c.conn(follower);
    let moved = format!("MOVED 0 {}", c.m(leader).client);
    assert_eq!(f.cmd(&["GET", "p"]).unwrap(), Resp::Error(moved.clone()));
    assert_eq!(f.cmd(&["SET", "x", "y"]).unwrap(), Resp::Error(moved));
    assert_eq!(f.cmd(&["PING"]).unwrap(), Resp::Simple("PONG".into()));
    assert_eq!(
        f.cmd(&["GET"]).unwrap(),
        Resp::Error("ERR wrong number of arguments for 'get' command".into())
    );
    assert_eq!(c.exec(&["GET", "p"]), bulk("v49"));

    let info = c.info(follower).unwrap();
    for key in [
        "raft_node_id",
        "raft_role",
        "raft_term",
        "raft_leader_id",
        "raft_commit_index",
        "raft_last_applied",
        "raft_last_log_index",
    ] {
        assert!(info.iter().any(|(k, _)| k == key), "INFO lacks {key}");
    }
}

#[test]
fn survives_leader_kill_and_old_leader_rejoins_quietly() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    for i in 0..20 {
        assert_eq!(c.exec(&["SET", &format!("k{i}"), &format!("v{i}")]), ok());
    }

    let killed_at = Instant::now();
    c.kill(leader);
    let new_leader = c.wait_leader(Duration::from_secs(10));
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert_eq!(c.exec(&["SET", "after", "kill"]), ok());
    for i in 0..20 {
        assert_eq!(c.exec(&["GET", &format!("k{i}")]), bulk(&format!("v{i}")));
    }
    eprintln!("failover took {failover:?}");

    let term = c.field(new_leader, "raft_term").unwrap();
    c.start(leader);
    // Caught up: its applied index reaches the leader's commit index.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let commit = c.field(new_leader, "raft_commit_index");
        if commit.is_some() && c.field(leader, "raft_last_applied") == commit {
            break;
        }
        assert!(Instant::now() < deadline, "old leader did not catch up");
        sleep(Duration::from_millis(50));
    }
    sleep(Duration::from_millis(1500)); // several election timeouts
    assert_eq!(c.field(leader, "raft_role").as_deref(), Some("follower"));
    assert_eq!(c.wait_leader(Duration::from_secs(5)), new_leader);
    assert_eq!(
        c.field(new_leader, "raft_term").unwrap(),
        term,
        "the return raised the term"
    );
}

#[test]
fn acknowledged_writes_survive_killing_everyone() {
    let mut c = Cluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    for i in 0..30 {
        assert_eq!(c.exec(&["SET", &format!("k{i}"), &format!("v{i}")]), ok());
    }
    assert_eq!(c.exec(&["DEL", "k0"]), Resp::Int(1));
    for id in 1..=3 {
        c.kill(id);
    }
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["GET", "k0"]), Resp::Bulk(None));
    for i in 1..30 {
        assert_eq!(c.exec(&["GET", &format!("k{i}")]), bulk(&format!("v{i}")));
    }
}

#[test]
fn sigterm_exits_zero_and_the_data_dir_reopens() {
    let mut c = Cluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["SET", "a", "1"]), ok());
    for id in 1..=3 {
        let status = c.terminate(id);
        assert_eq!(status.code(), Some(0), "node {id}: {status:?}");
        assert!(c.log_text(id).contains("SIGTERM received"));
    }
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["GET", "a"]), bulk("1"));
}

#[test]
fn torn_tail_is_recovered_and_mid_file_corruption_refused() {
    let mut c = Cluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(c.exec(&["SET", &format!("k{i}"), "value"]), ok());
    }
    c.kill(1);
    let log = c.m(1).data.join("log");

    // A crash in the middle of an append: the last record is cut short.
    let bytes = fs::read(&log).unwrap();
    fs::write(&log, &bytes[..bytes.len() - 3]).unwrap();
    c.start(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.field(1, "raft_role").is_none() {
        assert!(Instant::now() < deadline, "node 1 did not restart");
        sleep(Duration::from_millis(50));
    }
    assert!(
        c.log_text(1).contains("torn final record"),
        "{}",
        c.log_text(1)
    );
    c.wait_leader(Duration::from_secs(10));
    c.kill(1);

    // A flipped byte in the middle: refuse to start, touch nothing.
    let mut bytes = fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&log, &bytes).unwrap();
    let out = c.command(1).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    assert!(stderr.contains("byte offset"), "{stderr}");
    assert_eq!(fs::read(&log).unwrap(), bytes, "the log was changed");
}

#[test]
fn bad_config_exits_2_with_one_line() {
    let c = Cluster::new(3);
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let cfg = c.config.display().to_string();
    let data = c.m(1).data.display().to_string();
    let (code, err) = run(&["--config", &cfg, "--id", "9", "--data-dir", &data]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--id 9 is not a member"), "{err}");
    let (code, err) = run(&["--config", &cfg, "--id", "1"]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, out) = {
        let o = Command::new(BIN).arg("--help").output().unwrap();
        (o.status.code(), String::from_utf8(o.stdout).unwrap())
    };
    assert_eq!(code, Some(0));
    assert!(out.contains("--election-timeout-ms"));
    // Another member's data dir is refused.
    let mut c = c;
    c.start(1);
    sleep(Duration::from_millis(300));
    c.kill(1);
    let (code, err) = run(&["--config", &cfg, "--id", "2", "--data-dir", &data]);
    assert_eq!(code, Some(2));
    assert!(err.contains("belongs to member 1"), "{err}");
}

#[test]
fn garbage_on_the_ports_only_costs_that_connection() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let peer = c.m(leader).peer;

    let probe = |bytes: &[u8]| {
        let mut s = TcpStream::connect(peer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(bytes);
        let mut buf = [0u8; 64];
        // The node closes the connection: EOF (or a reset).
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    };
    assert!(probe(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(probe(&[0xff; 100]));
    // Right magic, another cluster.
    let mut hs = b"RAFT\x01".to_vec();
    hs.extend_from_slice(&0xdeadu64.to_be_bytes());
    hs.extend_from_slice(&2u64.to_be_bytes());
    assert!(probe(&hs));

    // A real peer's handshake (taken from a member's own dial) followed by a
    // huge length prefix.
    let own = {
        // Learn the cluster id from INFO.
        let id = c.field(leader, "raft_cluster_id").unwrap();
        u64::from_str_radix(&id, 16).unwrap()
    };
    let other = (1..=3).find(|&i| i != leader).unwrap();
    let mut s = TcpStream::connect(peer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hs = b"RAFT\x01".to_vec();
    hs.extend_from_slice(&own.to_be_bytes());
    hs.extend_from_slice(&other.to_be_bytes());
    s.write_all(&hs).unwrap();
    let mut reply = [0u8; 21];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], b"RAFT");
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));

    // Malformed RESP: an error reply, then the connection is closed.
    let mut r = c.conn(leader);
    r.w.write_all(b"*1\r\n$x\r\n").unwrap();
    assert_eq!(
        r.read().unwrap(),
        Resp::Error("ERR Protocol error: invalid bulk length".into())
    );
    assert!(r.read().is_err());
    let mut r = c.conn(leader);
    r.w.write_all(b"*2\r\n$3\r\nSET\r\n$999999999\r\n").unwrap();
    assert!(matches!(r.read().unwrap(), Resp::Error(e) if e.starts_with("ERR Protocol error")));

    // And the cluster still works, with the same leader.
    assert_eq!(c.exec(&["SET", "still", "ok"]), ok());
    assert_eq!(c.exec(&["GET", "still"]), bulk("ok"));
    assert_eq!(c.wait_leader(Duration::from_secs(5)), leader);
    let log = c.log_text(leader);
    assert!(log.contains("not a Raft peer handshake"), "{log}");
    assert!(log.contains("another cluster"), "{log}");
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_lonely_member_keeps_fds_and_memory_bounded() {
    let mut c = Cluster::new(3);
    // Fast timings: the backoff cap is half the minimum election timeout,
    // so this makes hundreds of reconnect attempts in a few seconds.
    c.extra_args = ["--heartbeat-ms", "5", "--election-timeout-ms", "20-40"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    c.start(1);
    let pid = c.pid(1);
    sleep(Duration::from_millis(500));
    let fds_early = fd_count(pid);
    let rss_early = rss_kib(pid);
    let mut max_fds = 0;
    for _ in 0..40 {
        sleep(Duration::from_millis(100));
        max_fds = max_fds.max(fd_count(pid));
    }
    let rss_late = rss_kib(pid);
    assert!(
        max_fds <= fds_early + 2,
        "fds grew from {fds_early} to {max_fds}"
    );
    assert!(
        rss_late < rss_early + 4096,
        "RSS grew from {rss_early} KiB to {rss_late} KiB"
    );
    let log = c.log_text(1);
    let lines = log.lines().filter(|l| l.contains("peer 2")).count();
    assert!(lines <= 3, "peer state is logged per attempt:\n{log}");
    // It still answers.
    assert_eq!(
        c.conn(1).cmd(&["PING"]).unwrap(),
        Resp::Simple("PONG".into())
    );
    let role = c.field(1, "raft_role").unwrap();
    assert!(role == "follower" || role == "precandidate", "{role}");
}

#[test]
fn second_process_on_a_data_dir_is_refused() {
    let mut c = Cluster::new(3);
    c.start(1);
    sleep(Duration::from_millis(300));
    let out = c.command(1).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("in use by another process"), "{err}");
}

/// `redis-cli -c` pointed at a follower follows `-MOVED` to the leader. CI
/// installs redis-tools; without it this test says how to get it.
#[test]
fn redis_cli_follows_moved_to_the_leader() {
    let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
    let found = Command::new(&cli)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{cli} not found: apt-get install redis-tools (or set REDIS_CLI)"
    );
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let addr = c.m(follower).client;
    let run = |args: &[&str]| {
        let out = Command::new(&cli)
            .args([
                "-c",
                "-h",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
            ])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["SET", "via", "follower"]), "OK");
    assert_eq!(run(&["GET", "via"]), "follower");
    assert_eq!(run(&["DEL", "via"]), "1");
    // And the write really went through the leader's log.
    assert_eq!(c.exec(&["GET", "via"]), Resp::Bulk(None));
}
