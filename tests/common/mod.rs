//! What the process-level tests share: a cluster of real `raft-node`
//! processes on loopback (127.0.0.1, .2, .3) in a temporary directory, and
//! the tools' RESP client. Each test binary uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_raft-node");
/// The peer-link secret of every test cluster (a test playing an insider
/// needs it to authenticate).
pub const SECRET: &[u8] = b"test-cluster-secret-0123456789abcdef";

#[allow(unused_imports)]
pub use tools::resp::{encode, Conn, Reply};

/// A client connection as the tests open it: 2 s to connect, 10 s for
/// each read.
pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    wrap(s)
}

/// A connection from the local address `from` (any 127.x address is
/// local): limits kept per source address then see this test's
/// connections apart from the harness's own.
pub fn open_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<Conn> {
    wrap(tools::net::connect_from(
        from,
        addr,
        Duration::from_secs(2),
    )?)
}

fn wrap(s: TcpStream) -> std::io::Result<Conn> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(Conn::new(s))
}

/// Whether the other side closed this connection (EOF or reset), waiting
/// up to `timeout` for it to happen, rather than leaving it open.
pub fn closed_by_server(mut s: &TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// Writes `bytes` to a new file at `path` readable by its owner only (mode
/// 0600), as raft-node wants its secret and password files.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .write_all(bytes)
        .unwrap();
}

/// Runs `script` with redis-py (`$PYTHON`, else python3; a Python without
/// redis-py fails the test and says how to get it). The script must print
/// `ok`; `what` names it in the failure.
pub fn redis_py(what: &str, script: &str) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{python} with redis-py not found: pip install redis (or set PYTHON)"
    );
    let out = Command::new(&python)
        .args(["-c", script])
        .output()
        .expect("run python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Member {
    pub id: u64,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub members: Vec<Member>,
    pub extra_args: Vec<String>,
    /// RLIMIT_NOFILE (soft and hard) of every member process.
    pub fd_limit: Option<u64>,
    /// A `client_password_file` with this password.
    pub client_password: Option<String>,
    /// The user and password the harness logs in with (`AUTH user pw`).
    pub login: Option<(String, String)>,
}

/// Settings of a test cluster beyond the defaults, written to its file.
#[derive(Default, Clone)]
pub struct Options {
    /// `client_idle_timeout_ms`.
    pub idle_timeout_ms: Option<u64>,
    /// `client_memory_budget_mb`.
    pub budget_mb: Option<u64>,
    /// A `metrics_addr` for every member.
    pub metrics: bool,
    /// RLIMIT_NOFILE (soft and hard) of every member process.
    pub fd_limit: Option<u64>,
    /// `client_password_file`'s password: the harness authenticates with it.
    pub client_password: Option<String>,
    /// More top-level settings, as TOML lines.
    pub extra_toml: Option<String>,
    /// A `users_file` (written mode 0600) with these lines.
    pub users: Option<String>,
    /// The user and password the harness logs in with (`AUTH user pw`),
    /// one of `users`.
    pub login: Option<(String, String)>,
}

impl Cluster {
    pub fn new(n: usize) -> Cluster {
        Cluster::with_options(n, Options::default())
    }

    /// The one place that writes a test cluster's file (and its secret).
    pub fn with_options(n: usize, opts: Options) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("cluster.secret"), SECRET);
        let mut toml = "secret_file = \"cluster.secret\"\n".to_string();
        if let Some(ms) = opts.idle_timeout_ms {
            toml.push_str(&format!("client_idle_timeout_ms = {ms}\n"));
        }
        if let Some(mb) = opts.budget_mb {
            toml.push_str(&format!("client_memory_budget_mb = {mb}\n"));
        }
        if let Some(extra) = &opts.extra_toml {
            toml.push_str(extra);
            toml.push('\n');
        }
        if let Some(pw) = &opts.client_password {
            write_private(&dir.path().join("clients.password"), pw.as_bytes());
            toml.push_str("client_password_file = \"clients.password\"\n");
        }
        if let Some(users) = &opts.users {
            write_private(&dir.path().join("users.acl"), users.as_bytes());
            toml.push_str("users_file = \"users.acl\"\n");
        }
        toml.push('\n');
        let mut members = Vec::new();
        // Every port stays bound until all are chosen: a port released at
        // once may be handed out again by the next bind (a test once got
        // one port as both a member's peer and client address).
        let mut held = Vec::new();
        for i in 1..=n {
            let ip = format!("127.0.0.{i}");
            let mut addr = |ip: &str| -> SocketAddr {
                let l = TcpListener::bind((ip, 0)).unwrap();
                let a = l.local_addr().unwrap();
                held.push(l);
                a
            };
            let (peer, client) = (addr(&ip), addr(&ip));
            let metrics = opts.metrics.then(|| addr(&ip));
            toml.push_str(&format!(
                "[[node]]\nid = {i}\npeer_addr = \"{peer}\"\nclient_addr = \"{client}\"\n"
            ));
            if let Some(a) = metrics {
                toml.push_str(&format!("metrics_addr = \"{a}\"\n"));
            }
            toml.push('\n');
            members.push(Member {
                id: i as u64,
                peer,
                client,
                metrics,
                data: dir.path().join(format!("node{i}")),
                log: dir.path().join(format!("node{i}.log")),
                child: None,
            });
        }
        drop(held);
        let config = dir.path().join("cluster.toml");
        fs::write(&config, toml).unwrap();
        Cluster {
            dir,
            config,
            members,
            extra_args: Vec::new(),
            fd_limit: opts.fd_limit,
            client_password: opts.client_password,
            login: opts.login,
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
        if let Some(n) = self.fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls:
            // setrlimit(2) on the child itself.
            unsafe {
                c.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        c
    }

    /// Whether the member's process is still running.
    pub fn alive(&mut self, id: u64) -> bool {
        let c = self.members[id as usize - 1].child.as_mut().unwrap();
        c.try_wait().unwrap().is_none()
    }

    /// Starts member `id`, appending to its log.
    pub fn start(&mut self, id: u64) {
        self.start_with_env(id, &[]);
    }

    /// Starts member `id` like [`Cluster::start`], with `env` added to its
    /// environment (tests/crash.rs passes storage's power-cut switches).
    pub fn start_with_env(&mut self, id: u64, env: &[(&str, String)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.m(id).log)
            .unwrap();
        let child = self
            .command(id)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[id as usize - 1].child = Some(child);
    }

    /// Starts member `id` with `--join` and the cluster file as it is now
    /// (its log starts afresh).
    pub fn start_joining(&mut self, id: u64) {
        let log = fs::File::create(&self.m(id).log).unwrap();
        let child = self.command(id).arg("--join").stderr(log).spawn().unwrap();
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
        self.open(self.m(id).client).unwrap()
    }

    /// A connection, authenticated if the cluster has a client password
    /// or a login.
    pub fn open(&self, addr: SocketAddr) -> std::io::Result<Conn> {
        let mut c = open(addr)?;
        if let Some((user, pw)) = &self.login {
            let r = c.cmd(&["AUTH", user, pw])?;
            assert_eq!(r, Reply::Simple("OK".into()), "AUTH {user}");
        } else if let Some(pw) = &self.client_password {
            let r = c.cmd(&["AUTH", pw])?;
            assert_eq!(r, Reply::Simple("OK".into()), "AUTH");
        }
        Ok(c)
    }

    pub fn info(&self, id: u64) -> Option<Vec<(String, String)>> {
        let mut c = self.open(self.m(id).client).ok()?;
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .ok()?;
        match c.cmd(&["INFO", "raft"]).ok()? {
            Reply::Bulk(Some(b)) => Some(
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

    /// An `INFO raft` field that holds a number (0 if it does not parse);
    /// panics if member `id` does not report `key`.
    pub fn num(&self, id: u64, key: &str) -> u64 {
        self.field(id, key)
            .unwrap_or_else(|| panic!("INFO of {id} has no {key}"))
            .parse()
            .unwrap_or(0)
    }

    /// Waits until member `id` has applied everything the leader had
    /// committed when the wait began (a moving target under load would
    /// never be reached for sure).
    pub fn wait_caught_up(&self, id: u64) {
        let leader = self.wait_leader(Duration::from_secs(15));
        let commit: u64 = self
            .field(leader, "raft_commit_index")
            .and_then(|v| v.parse().ok())
            .expect("the leader reports its commit index");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let applied: u64 = self
                .field(id, "raft_last_applied")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if applied >= commit {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} did not catch up: applied {applied} of {commit}"
            );
            sleep(Duration::from_millis(50));
        }
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

    /// Runs `args` on the leader until it stops answering "retry": a
    /// configuration change in progress, a learner still catching up, or
    /// a leader too new to transfer leadership.
    pub fn admin(&self, args: &[&str]) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.exec(args) {
                Reply::Error(e)
                    if (e.contains("in progress")
                        || e.contains("has caught up")
                        || e.contains("retry in"))
                        && Instant::now() < deadline =>
                {
                    sleep(Duration::from_millis(50))
                }
                r => return r,
            }
        }
    }

    /// Runs a command against the cluster, following MOVED and retrying
    /// CLUSTERDOWN and connection errors, like `redis-cli -c` with retries.
    pub fn exec(&self, args: &[&str]) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut target = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .map(|m| m.client)
            .unwrap();
        loop {
            let r = self.open(target).and_then(|mut c| c.cmd(args));
            match r {
                Ok(Reply::Error(e)) if e.starts_with("MOVED ") => {
                    target = e.rsplit(' ').next().unwrap().parse().unwrap();
                    continue;
                }
                Ok(Reply::Error(e))
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

pub fn ok() -> Reply {
    Reply::Simple("OK".into())
}

pub fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 here.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Posing as a member that holds the cluster secret (an insider, or a
/// buggy member): the dialer's side of the peer handshake and raw Raft
/// frames. Written out from the handshake contract in docs/operations.md (version 3),
/// not shared with the server, so that a change to either side is caught.
/// tests/attack.rs and tests/authority.rs use it.
pub mod insider {
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpStream};
    use std::time::Duration;

    use bytes::BytesMut;
    use hmac::{Hmac, Mac};
    use raft_proto::{codec, Message};
    use sha2::Sha256;

    use super::Cluster;

    /// The handshake's message kinds and lengths.
    pub const HELLO: u8 = 1;
    /// A challenge: header, acceptor id, nonce, MAC.
    pub const CHALLENGE_LEN: usize = 6 + 8 + 32 + 32;
    /// Where a frame's term starts: length (4), version, tag, from (8),
    /// to (8).
    pub const TERM_OFFSET: usize = 22;

    /// An address as the handshake carries it: IPv4-mapped IPv6, then the
    /// port.
    pub fn addr18(a: SocketAddr) -> Vec<u8> {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut b = ip.octets().to_vec();
        b.extend_from_slice(&a.port().to_be_bytes());
        b
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mac(
        secret: &[u8],
        label: &[u8],
        cluster: u64,
        d: u64,
        a: u64,
        listen: SocketAddr,
        nd: &[u8],
        na: &[u8],
    ) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        for part in [
            label,
            &cluster.to_be_bytes(),
            &d.to_be_bytes(),
            &a.to_be_bytes(),
            &addr18(listen),
            nd,
            na,
        ] {
            m.update(part);
        }
        m.finalize().into_bytes().to_vec()
    }

    pub fn hello(
        cluster: u64,
        from: u64,
        to: u64,
        listen: SocketAddr,
        nonce: &[u8; 32],
    ) -> Vec<u8> {
        let mut b = b"RAFT\x03".to_vec();
        b.push(HELLO);
        b.extend_from_slice(&cluster.to_be_bytes());
        b.extend_from_slice(&from.to_be_bytes());
        b.extend_from_slice(&to.to_be_bytes());
        b.extend_from_slice(&addr18(listen));
        b.extend_from_slice(nonce);
        b
    }

    /// A TCP connection to `to` from `from_ip`, without Nagle's delay (a
    /// frame written right after the proof must not wait for its ACK).
    pub fn connect_from(from_ip: IpAddr, to: SocketAddr) -> TcpStream {
        let s = tools::net::connect_from(from_ip, to, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    pub fn cluster_id(c: &Cluster, id: u64) -> u64 {
        u64::from_str_radix(&c.field(id, "raft_cluster_id").unwrap(), 16).unwrap()
    }

    /// Runs the dialer's side of the handshake as member `me` towards
    /// member `peer`, from `me`'s own address, with `secret`. Returns the
    /// stream ready for frames, or None if the acceptor's proof did not
    /// verify or it closed.
    pub fn authenticate(c: &Cluster, me: u64, peer: u64, secret: &[u8]) -> Option<TcpStream> {
        let cluster = cluster_id(c, peer);
        let mut s = connect_from(c.m(me).peer.ip(), c.m(peer).peer);
        let nd = [me as u8; 32];
        let listen = c.m(me).peer;
        s.write_all(&hello(cluster, me, peer, listen, &nd)).ok()?;
        let mut ch = [0u8; CHALLENGE_LEN];
        s.read_exact(&mut ch).ok()?;
        assert_eq!(&ch[..6], b"RAFT\x03\x02", "a challenge");
        assert_eq!(u64::from_be_bytes(ch[6..14].try_into().unwrap()), peer);
        let na = &ch[14..46];
        let label = b"raft-peer-v3 acceptor";
        let expect = mac(secret, label, cluster, me, peer, listen, &nd, na);
        let mut proof = b"RAFT\x03\x03".to_vec();
        let label = b"raft-peer-v3 dialer";
        proof.extend(mac(secret, label, cluster, me, peer, listen, &nd, na));
        s.write_all(&proof).ok()?;
        (ch[46..] == expect[..]).then_some(s)
    }

    /// A message as it goes on a peer link.
    pub fn frame(msg: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        codec::encode(msg, &mut b);
        b.to_vec()
    }
}
