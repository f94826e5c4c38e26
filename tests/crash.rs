//! Power cuts, not kills: real `raft-node` processes on loopback, under a
//! write load, lose power in the middle of a group commit and restart.
//!
//! SIGKILL keeps the page cache, so a missing fsync never shows in the other
//! process tests. Here every member runs in storage's power-cut mode
//! (`RAFT_POWER_CUT_FILE`, `RAFT_POWER_CUT_AT_SYNC`; raft-server/src/
//! storage.rs): at the chosen sync it leaves its files as a power cut could
//! (what no fsync made durable is torn off or zeroed, `meta` goes back to its
//! durable version) and aborts. The test then restarts it and checks that it
//! recovers, rejoins, and that every acknowledged SET is still readable with
//! its value or a later one.
//!
//! Each test prints its seed first; `CRASH_SEED=N` replays the storage-side
//! choices (where each log is torn), though not the timing of the load.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use raft_proto::Rng;

/// Writers of the load, each with its own keys (so that its writes to a key
/// are ordered by its own sequence).
const WRITERS: usize = 3;
/// Keys per writer: few, so keys are overwritten and "the acknowledged value
/// or a later one" is checked, not just presence.
const KEYS: u64 = 16;
/// Bound on one writer's writes, whatever the timing.
const MAX_WRITES: u64 = 20_000;
/// How long a member may take to reach its cut once it is due.
const CUT_TIMEOUT: Duration = Duration::from_secs(10);

fn base_seed() -> u64 {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (CRASH_SEED={seed} replays the tears)");
    seed
}

/// One SET the load sent, and whether it was acknowledged (`+OK`) or its
/// outcome is unknown (an error or a lost connection: it may or may not
/// take effect). Writes refused with `-MOVED` were never proposed and are
/// not recorded.
#[derive(Debug, Clone)]
struct Write {
    key: String,
    value: String,
    acked: bool,
}

/// Writers running against the cluster until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<Vec<Write>>>,
}

impl Load {
    fn start(c: &Cluster, seed: u64) -> Load {
        let addrs: Vec<SocketAddr> = c.members.iter().map(|m| m.client).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..WRITERS)
            .map(|t| {
                let addrs = addrs.clone();
                let stop = stop.clone();
                std::thread::spawn(move || writer(t, seed, &addrs, &stop))
            })
            .collect();
        Load { stop, writers }
    }

    fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::Relaxed);
        self.writers
            .into_iter()
            .flat_map(|h| h.join().expect("writer panicked"))
            .collect()
    }
}

/// Sends SETs one after the other, following `-MOVED` and moving on to
/// another member when one is down. Values are 60 to 600 bytes, so that a
/// group commit often spans sectors and a tear can fall inside it.
fn writer(t: usize, seed: u64, addrs: &[SocketAddr], stop: &AtomicBool) -> Vec<Write> {
    let mut history = Vec::new();
    let mut target = t % addrs.len();
    let mut conn: Option<Conn> = None;
    let mut rng = Rng::new(seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for seq in 0..MAX_WRITES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match open(addrs[target]) {
                Ok(c) => {
                    c.stream()
                        .set_read_timeout(Some(Duration::from_secs(3)))
                        .unwrap();
                    conn.insert(c)
                }
                Err(_) => {
                    target = (target + 1) % addrs.len();
                    sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let pad = 60 + rng.range(0, 540) as usize;
        let key = format!("w{t}k{}", seq % KEYS);
        let value = format!("{t}-{seq}-{}", "v".repeat(pad));
        match c.cmd(&["SET", &key, &value]) {
            Ok(Reply::Simple(s)) if s == "OK" => history.push(Write {
                key,
                value,
                acked: true,
            }),
            Ok(Reply::Error(e)) if e.starts_with("MOVED ") => {
                let to: SocketAddr = e.rsplit(' ').next().unwrap().parse().unwrap();
                target = addrs.iter().position(|a| *a == to).unwrap();
                conn = None;
            }
            Ok(Reply::Error(_)) => {
                history.push(Write {
                    key,
                    value,
                    acked: false,
                });
                sleep(Duration::from_millis(20));
            }
            Ok(other) => panic!("SET answered {other:?}"),
            Err(_) => {
                history.push(Write {
                    key,
                    value,
                    acked: false,
                });
                conn = None;
                target = (target + 1) % addrs.len();
            }
        }
    }
    history
}

/// Every acknowledged write is readable with its value or a later one:
/// for each key, the value read is one written at or after the key's last
/// acknowledged write (a later write whose outcome is unknown may have
/// taken effect), and a key with an acknowledged write is not missing.
fn check_acknowledged(c: &Cluster, history: &[Write]) {
    let acked = history.iter().filter(|w| w.acked).count();
    let mut keys: Vec<&str> = history.iter().map(|w| w.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let writes: Vec<&Write> = history.iter().filter(|w| w.key == key).collect();
        let last_acked = writes.iter().rposition(|w| w.acked);
        let allowed = &writes[last_acked.unwrap_or(0)..];
        let got = c.exec(&["GET", key]);
        let ok = match &got {
            Reply::Bulk(Some(v)) => allowed.iter().any(|w| w.value.as_bytes() == v),
            Reply::Bulk(None) => last_acked.is_none(),
            _ => false,
        };
        assert!(
            ok,
            "acknowledged write lost: {key} was last acknowledged as {:?}, but GET returned {}",
            last_acked.map(|i| short(&writes[i].value)),
            match &got {
                Reply::Bulk(Some(v)) => short(&String::from_utf8_lossy(v)),
                other => format!("{other:?}"),
            }
        );
    }
    eprintln!(
        "{acked} acknowledged writes ({} sent) all readable",
        history.len()
    );
    assert!(
        acked >= 50,
        "too little load to mean anything: {acked} acked"
    );
}

fn short(v: &str) -> String {
    v.split('-').take(2).collect::<Vec<_>>().join("-")
}

/// The file whose existence cuts member `id`'s power at its next sync.
fn trigger(c: &Cluster, id: u64) -> std::path::PathBuf {
    c.dir.path().join(format!("power-cut-{id}"))
}

/// Starts (or restarts) member `id` in power-cut mode, armed by its
/// trigger file.
fn start_armed(c: &mut Cluster, id: u64, seed: u64) {
    let env = [
        ("RAFT_POWER_CUT_FILE", trigger(c, id).display().to_string()),
        ("RAFT_POWER_CUT_SEED", seed.to_string()),
    ];
    c.start_with_env(id, &env);
}

/// Waits until member `id`'s process ends, which must be the power cut's
/// abort; returns the line the cut logged.
fn wait_cut(c: &mut Cluster, id: u64) -> String {
    poll_cut(c, id, CUT_TIMEOUT)
        .unwrap_or_else(|| panic!("member {id} did not lose power within {CUT_TIMEOUT:?}"))
}

/// `wait_cut`, but `None` (the member still running) after `timeout`.
fn poll_cut(c: &mut Cluster, id: u64, timeout: Duration) -> Option<String> {
    let child = c.members[id as usize - 1].child.as_mut().expect("running");
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(10));
    };
    c.members[id as usize - 1].child = None;
    let log = c.log_text(id);
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "member {id} ended with {status:?}, not by the power cut:\n{log}"
    );
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("power cut (simulated)"))
        .unwrap_or_else(|| panic!("member {id} aborted without cutting:\n{log}"))
        .to_string();
    eprintln!("member {id}: {line}");
    Some(line)
}

/// Cuts member `id`'s power at its next sync and waits for it.
fn cut(c: &mut Cluster, id: u64) -> String {
    fs::write(trigger(c, id), b"").unwrap();
    let line = wait_cut(c, id);
    fs::remove_file(trigger(c, id)).unwrap();
    line
}

/// Restarts member `id` after its power cut and waits until it serves;
/// fails at once if it refuses to start (its recovery refused the disk).
fn restart(c: &mut Cluster, id: u64, seed: u64) {
    let before = c.log_text(id).len();
    start_armed(c, id, seed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let child = c.members[id as usize - 1].child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            let log = c.log_text(id);
            c.members[id as usize - 1].child = None;
            // A refused start is one line on stderr, the last one.
            panic!(
                "member {id} did not come back after the power cut, {status}: {}",
                log[before..].trim_end().lines().last().unwrap_or("")
            );
        }
        if c.field(id, "raft_role").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "member {id} did not restart");
        sleep(Duration::from_millis(20));
    }
    let log = c.log_text(id);
    let recovery = log[before..]
        .lines()
        .find(|l| l.contains("torn final records"))
        .unwrap_or("no torn batch");
    eprintln!("member {id} restarted: {recovery}");
}

/// A 3-member cluster with every member in power-cut mode, a leader, and
/// the load running for a moment.
fn loaded_cluster(seed: u64) -> (Cluster, Load) {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        start_armed(&mut c, id, seed.wrapping_add(id));
    }
    c.wait_leader(Duration::from_secs(15));
    let load = Load::start(&c, seed);
    sleep(Duration::from_millis(800));
    (c, load)
}

#[test]
fn leader_loses_power_mid_group_commit() {
    let seed = base_seed();
    let (mut c, load) = loaded_cluster(seed);
    for round in 1..=2u64 {
        let leader = c.wait_leader(Duration::from_secs(15));
        cut(&mut c, leader);
        // The others elect a leader and carry on under the load.
        sleep(Duration::from_millis(700));
        restart(&mut c, leader, seed.wrapping_add(10 * round + leader));
        c.wait_caught_up(leader);
    }
    let history = load.finish();
    check_acknowledged(&c, &history);
}

#[test]
fn follower_loses_power_mid_group_commit() {
    let seed = base_seed();
    let (mut c, load) = loaded_cluster(seed);
    let leader = c.wait_leader(Duration::from_secs(15));
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    // By trigger file, at its next append.
    cut(&mut c, follower);
    restart(&mut c, follower, seed.wrapping_add(10 + follower));
    c.wait_caught_up(follower);
    // By count: restarted with RAFT_POWER_CUT_AT_SYNC, it loses power at
    // its N-th sync, in the middle of catching up or of the load.
    c.kill(follower);
    let n = 5 + seed % 40;
    eprintln!("member {follower}: power cut at sync {n}");
    c.start_with_env(
        follower,
        &[
            ("RAFT_POWER_CUT_AT_SYNC", n.to_string()),
            ("RAFT_POWER_CUT_SEED", seed.wrapping_add(20).to_string()),
        ],
    );
    let line = wait_cut(&mut c, follower);
    assert!(line.contains(&format!("in sync number {n}:")), "{line}");
    restart(&mut c, follower, seed.wrapping_add(30 + follower));
    c.wait_caught_up(follower);
    let history = load.finish();
    check_acknowledged(&c, &history);
}

#[test]
fn every_member_loses_power_in_turn() {
    let seed = base_seed();
    let (mut c, load) = loaded_cluster(seed);
    for id in 1..=3 {
        cut(&mut c, id);
        sleep(Duration::from_millis(300));
        restart(&mut c, id, seed.wrapping_add(10 * id));
        c.wait_caught_up(id);
    }
    let history = load.finish();
    check_acknowledged(&c, &history);
}

/// The whole cluster loses power at once, in the middle of a group commit:
/// the leader in its own, the followers in the sync of the batch it sent
/// them just before. Only fsynced data can survive this; no member has the
/// rest in its page cache.
#[test]
fn whole_cluster_loses_power_mid_group_commit() {
    let seed = base_seed();
    let (mut c, load) = loaded_cluster(seed);
    for id in 1..=3 {
        fs::write(trigger(&c, id), b"").unwrap();
    }
    let mut down = Vec::new();
    let mut stragglers = Vec::new();
    for id in 1..=3 {
        match poll_cut(&mut c, id, Duration::from_secs(5)) {
            Some(_) => down.push(id),
            None => stragglers.push(id),
        }
    }
    let history = load.finish();
    for &id in &down {
        fs::remove_file(trigger(&c, id)).unwrap();
        restart(&mut c, id, seed.wrapping_add(10 + id));
    }
    // A member that received no batch before the others went down has
    // nothing to write, and alone it cannot start an election: its power
    // goes out at its first sync once the others are back (the term of
    // their election), before it answers them.
    for &id in &stragglers {
        eprintln!("member {id} had nothing to sync when the others lost power");
        wait_cut(&mut c, id);
        fs::remove_file(trigger(&c, id)).unwrap();
        restart(&mut c, id, seed.wrapping_add(20 + id));
    }
    c.wait_leader(Duration::from_secs(15));
    check_acknowledged(&c, &history);
}

/// §5.3: a deposed leader's unacknowledged tail is overwritten, and the
/// truncation survives a power cut and a restart.
#[test]
fn deposed_leader_truncates_its_unacknowledged_tail() {
    let seed = base_seed();
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        start_armed(&mut c, id, seed.wrapping_add(id));
    }
    let old = c.wait_leader(Duration::from_secs(15));
    let mut history = Vec::new();
    for i in 0..20 {
        let (key, value) = (format!("k{i}"), format!("before-{i}"));
        assert_eq!(c.exec(&["SET", &key, &value]), ok());
        history.push(Write {
            key,
            value,
            acked: true,
        });
    }
    // The old leader alone appends (and fsyncs) writes no one else sees.
    let others: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
    for &id in &others {
        c.kill(id);
    }
    let mut lone = c.conn(old);
    for i in 0..10 {
        let k = format!("lost{i}");
        lone.send(&[b"SET", k.as_bytes(), b"never-acknowledged"])
            .unwrap();
    }
    sleep(Duration::from_millis(300));
    c.kill(old);
    drop(lone);

    // The others elect a leader and overwrite those indexes in a new term.
    for &id in &others {
        start_armed(&mut c, id, seed.wrapping_add(10 + id));
    }
    c.wait_leader(Duration::from_secs(15));
    for i in 0..30 {
        let (key, value) = (format!("k{i}"), format!("after-{i}"));
        assert_eq!(c.exec(&["SET", &key, &value]), ok());
        history.push(Write {
            key,
            value,
            acked: true,
        });
    }
    // The old leader rejoins and truncates its tail.
    start_armed(&mut c, old, seed.wrapping_add(20));
    c.wait_caught_up(old);
    // It loses power at its next sync, and restarts from what it made
    // durable: the truncation and the entries after it.
    fs::write(trigger(&c, old), b"").unwrap();
    assert_eq!(c.exec(&["SET", "k0", "last"]), ok());
    history.push(Write {
        key: "k0".into(),
        value: "last".into(),
        acked: true,
    });
    wait_cut(&mut c, old);
    fs::remove_file(trigger(&c, old)).unwrap();
    restart(&mut c, old, seed.wrapping_add(30));
    c.wait_caught_up(old);
    for i in 0..10 {
        assert_eq!(c.exec(&["GET", &format!("lost{i}")]), Reply::Bulk(None));
    }
    // The old leader's own log: stop the others, so that it must serve
    // from what it recovered.
    for &id in &others {
        c.kill(id);
    }
    c.kill(old);
    restart(&mut c, old, seed.wrapping_add(40));
    let first = others[0];
    start_armed(&mut c, first, seed.wrapping_add(50));
    c.wait_leader(Duration::from_secs(15));
    for w in history.iter().filter(|w| w.key != "k0") {
        if w.value.starts_with("after") {
            assert_eq!(c.exec(&["GET", &w.key]), bulk(&w.value), "{}", w.key);
        }
    }
    assert_eq!(c.exec(&["GET", "k0"]), bulk("last"));
}
