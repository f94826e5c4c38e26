//! Process-level tests: real `raft-node` processes on loopback (127.0.0.1,
//! .2, .3), driven over RESP and the peer port, killed with SIGKILL and
//! SIGTERM. Each test has its own ports and temporary data dirs, so they run
//! in parallel. On failure the members' logs are printed.

mod common;

use std::fs;

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
#[test]
fn elects_a_leader_serves_writes_and_redirects() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));

    let mut l = c.conn(leader);
    assert_eq!(l.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    assert_eq!(l.cmd(&["SET", "k", "v1"]).unwrap(), ok());
    assert_eq!(l.cmd(&["GET", "k"]).unwrap(), bulk("v1"));
    assert_eq!(l.cmd(&["GET", "nope"]).unwrap(), Reply::Bulk(None));
    assert_eq!(l.cmd(&["DEL", "k", "nope"]).unwrap(), Reply::Integer(1));
    assert_eq!(l.cmd(&["GET", "k"]).unwrap(), Reply::Bulk(None));

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
        assert_eq!(l.read().unwrap(), Reply::Simple("PONG".into()));
    }

    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = c.conn(follower);
    // MOVED names the key's hash slot and the leader. The slot is Redis
    // Cluster's (CRC16 of the key mod 16384; Redis documents "foo" as 12182).
    assert_eq!(
        f.cmd(&["CLUSTER", "KEYSLOT", "foo"]).unwrap(),
        Reply::Integer(12182)
    );
    let moved = |f: &mut Conn, key: &str| {
        let Reply::Integer(slot) = f.cmd(&["CLUSTER", "KEYSLOT", key]).unwrap() else {
            panic!("CLUSTER KEYSLOT")
        };
        Reply::Error(format!("MOVED {slot} {}", c.m(leader).client))
    };
    let want = moved(&mut f, "p");
    assert_eq!(f.cmd(&["GET", "p"]).unwrap(), want);
    let want = moved(&mut f, "x");
    assert_eq!(f.cmd(&["SET", "x", "y"]).unwrap(), want);
    assert_eq!(f.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    assert_eq!(
        f.cmd(&["GET"]).unwrap(),
        Reply::Error("ERR wrong number of arguments for 'get' command".into())
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
    assert_eq!(c.exec(&["DEL", "k0"]), Reply::Integer(1));
    for id in 1..=3 {
        c.kill(id);
    }
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["GET", "k0"]), Reply::Bulk(None));
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
    // The last entry spans several 512-byte sectors.
    assert_eq!(c.exec(&["SET", "big", &"v".repeat(1500)]), ok());
    c.wait_caught_up(1);
    c.kill(1);
    // The first (and, with this little load, only) log segment.
    let log = c.m(1).data.join(format!("log-{:020}", 1));

    // The segment is preallocated: its data ends where zeroes start.
    let mut bytes = fs::read(&log).unwrap();
    assert!(
        bytes.len() >= 1 << 20,
        "not preallocated: {} bytes",
        bytes.len()
    );
    let data_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    // The last batch (48-byte segment header, then batches of a 16-byte
    // header with the body's length at +4).
    let (mut last, mut at) = (48, 48);
    while at < data_end {
        last = at;
        at += 16 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    // A crash in the middle of an append: the sector holding the end of
    // the last batch never reached the disk (it reads as the zeroes that
    // were there).
    let lo = (data_end - 1) / 512 * 512;
    assert!(lo > last, "the last batch does not span sectors");
    bytes[lo..data_end].fill(0);
    fs::write(&log, &bytes).unwrap();
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

    // A flipped byte in the middle of the data: refuse to start, touch
    // nothing.
    let mut bytes = fs::read(&log).unwrap();
    let mid = last / 2;
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

/// Whatever is refused at start is refused before the data dir is touched:
/// a busy port, a missing or world-readable secret.
#[test]
fn refused_start_leaves_nothing_on_disk() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new(3);
    let cfg = c.config.display().to_string();
    let fresh = c.dir.path().join("fresh");
    let run = || {
        let out = Command::new(BIN)
            .args(["--config", &cfg, "--id", "2", "--data-dir"])
            .arg(&fresh)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };

    // Member 2's client port is taken.
    let squatter = std::net::TcpListener::bind(c.m(2).client).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot listen on client_addr"), "{err}");
    assert!(!fresh.exists(), "a failed bind created the data dir");
    drop(squatter);

    // The secret is readable by others.
    let secret = c.dir.path().join("cluster.secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("must not be accessible by group or others"),
        "{err}"
    );
    assert!(!fresh.exists());

    // The secret is missing.
    fs::remove_file(&secret).unwrap();
    let (code, err) = run();
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read secret_file"), "{err}");
    assert!(!fresh.exists());
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
        Reply::Simple("PONG".into())
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
    // Its ports are bound first, so the second process stops there, before
    // the data dir; the data dir's lock (storage's unit tests) is the
    // second guard, for a copy with other ports.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Address already in use"), "{err}");
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
    assert_eq!(c.exec(&["GET", "via"]), Reply::Bulk(None));
}

/// `+OK` means committed: a leader whose followers are all stopped must not
/// acknowledge a write, and acknowledges it once they run again.
#[test]
fn a_write_is_acknowledged_only_once_a_majority_holds_it() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["SET", "k", "before"]), ok());
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let signal = |id: u64, sig: i32| {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(c.pid(id) as i32, sig) };
    };
    for &f in &followers {
        signal(f, libc::SIGSTOP);
    }
    let mut conn = c.conn(leader);
    conn.stream()
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    conn.send(&[b"SET", b"k", b"during"]).unwrap();
    let early = conn.read();
    for &f in &followers {
        signal(f, libc::SIGCONT);
    }
    match early {
        Ok(Reply::Simple(s)) => panic!("acknowledged {s} with no follower running"),
        Ok(other) => assert!(matches!(other, Reply::Error(_)), "{other:?}"),
        Err(_) => {
            // No answer while the followers were stopped; now it commits
            // (or the leader lost its lease and says so).
            conn.stream()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            match conn.read().unwrap() {
                Reply::Simple(s) => {
                    assert_eq!(s, "OK");
                    assert_eq!(c.exec(&["GET", "k"]), bulk("during"));
                }
                Reply::Error(e) => assert!(e.contains("leadership lost"), "{e}"),
                other => panic!("{other:?}"),
            }
        }
    }
}

/// redis-py with its defaults (it opens with `HELLO 3` and announces itself
/// with `CLIENT SETINFO`) reads and writes through a follower's redirect and
/// the leader. CI installs redis-py from PyPI; without it this test says
/// how to get it.
#[test]
fn redis_py_works_with_its_defaults() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let addr = c.m(leader).client;
    let script = format!(
        r#"
import redis
r = redis.Redis(host="{ip}", port={port})
assert r.ping()
assert r.set("k", "v")
assert r.get("k") == b"v", r.get("k")
assert r.get("missing") is None
assert r.delete("k", "missing") == 1
r.client_setname("tester")
assert r.client_getname() in (b"tester", "tester")
hello = r.execute_command("HELLO", 3)
hello = {{(k.decode() if isinstance(k, bytes) else k): v for k, v in hello.items()}}
assert hello["proto"] == 3, hello
assert hello["role"] in (b"master", "master"), hello
print("ok")
"#,
        ip = addr.ip(),
        port = addr.port()
    );
    redis_py("redis-py", &script);
}

/// redis-benchmark against the leader: it fetches `CONFIG GET save` and
/// `appendonly` first and warns when it cannot; neither a warning nor an
/// error may show.
#[test]
fn redis_benchmark_runs_without_warnings() {
    let bench = std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".into());
    assert!(
        Command::new(&bench).arg("--version").output().is_ok(),
        "{bench} not found: apt-get install redis-tools (or set REDIS_BENCHMARK)"
    );
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let addr = c.m(leader).client;
    let out = Command::new(&bench)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", "ping,set,get", "-n", "500", "-c", "4", "-q"])
        .output()
        .expect("run redis-benchmark");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("WARN") && !text.contains("ERR"), "{text}");
    for t in ["SET:", "GET:", "PING_INLINE:"] {
        assert!(text.contains(t), "no {t} result: {text}");
    }
}

/// A cluster-aware client sees one shard led by the Raft leader: redis-py's
/// `RedisCluster`, pointed at a follower, writes through the leader, keeps
/// writing across a leader kill (MOVED and a topology refresh), and
/// `redis-cli --cluster check` finds all 16384 slots covered.
#[test]
fn cluster_clients_route_to_the_leader_and_follow_a_failover() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let addr = c.m(follower).client;
    let seeds = format!(
        "[ClusterNode(\"{}\", {}), ClusterNode(\"{}\", {})]",
        addr.ip(),
        addr.port(),
        c.m(other).client.ip(),
        c.m(other).client.port()
    );
    let script = format!(
        r#"
import os, signal, sys, time
from redis.cluster import RedisCluster, ClusterNode
rc = RedisCluster(startup_nodes={seeds}, cluster_error_retry_attempts=10)
assert rc.set("before", "1")
assert rc.get("before") == b"1"
os.kill({pid}, signal.SIGKILL)
done = 0
deadline = time.time() + 15
while done < 50 and time.time() < deadline:
    try:
        assert rc.set("k%d" % done, done)
        done += 1
    except Exception as e:
        print("retry:", type(e).__name__, e, file=sys.stderr)
        time.sleep(0.1)
assert done == 50, done
assert rc.get("k49") == b"49" and rc.get("before") == b"1"
print("ok")
"#,
        pid = c.pid(leader)
    );
    redis_py("RedisCluster", &script);
    // The script killed the leader behind the harness' back.
    c.members[leader as usize - 1]
        .child
        .take()
        .map(|mut ch| ch.wait());
    let check = Command::new("redis-cli")
        .args(["--cluster", "check", &addr.to_string()])
        .output()
        .expect("run redis-cli");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("All 16384 slots covered"), "{text}");
    assert!(!text.contains("[ERR]"), "{text}");
}
