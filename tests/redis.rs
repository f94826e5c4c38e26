//! The Redis commands against a real cluster, through redis-py with its
//! defaults (RESP3) where a client library's view matters (exceptions,
//! pipelines, WATCH), and the harness' own RESP client for exact replies:
//! expiry, INCR under concurrency, transactions and WATCH conflicts, locks
//! and fenced writes, the client password.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

/// Runs a redis-py script with `HOST` and `PORT` bound to `addr` (and
/// `PASSWORD` if given); it must print `ok`.
fn python(addr: std::net::SocketAddr, password: Option<&str>, body: &str) {
    let script = format!(
        "import redis, time, threading\nHOST = {:?}\nPORT = {}\nPASSWORD = {}\n{body}",
        addr.ip().to_string(),
        addr.port(),
        password.map_or("None".into(), |p| format!("{p:?}")),
    );
    redis_py("redis-py script", &script);
}

/// Runs a redis-py script (see [`python`]) against the leader of a fresh
/// three-member cluster.
fn python_on_a_leader(body: &str) {
    let (c, leader) = leader_cluster();
    python(c.m(leader).client, None, body);
}

fn leader_cluster() -> (Cluster, u64) {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    (c, leader)
}

/// SET's options, expiry (relative, absolute, removed by replicated
/// sweeps), the INCR family under concurrent clients (no increment lost or
/// doubled), MGET/MSET, KEYS, SCAN and the errors redis-py maps to its
/// exceptions.
#[test]
fn redis_py_strings_expiry_incr_and_scan() {
    python_on_a_leader(
        r#"
r = redis.Redis(host=HOST, port=PORT)
assert r.set("a", "1", ex=100)
assert 99 <= r.ttl("a") <= 100, r.ttl("a")
assert r.set("p", "v", px=300)
assert 0 < r.pttl("p") <= 300
assert r.get("p") == b"v"
time.sleep(0.4)
assert r.get("p") is None
assert r.exists("p") == 0
assert r.ttl("p") == -2
assert r.set("a", "2", nx=True) is None
assert r.set("a", "3", xx=True, get=True) == b"1"
assert r.ttl("a") == -1, "a plain SET clears the TTL"
assert r.set("a", "4", pxat=int(time.time() * 1000) + 5000)
assert r.set("a", "5", keepttl=True)
assert 0 < r.pttl("a") <= 5000
assert r.persist("a") and r.ttl("a") == -1
assert r.expire("a", 50) and not r.expire("a", 10, gt=True) and r.expire("a", 10, lt=True)
assert r.ttl("a") == 10
assert r.expireat("a", int(time.time()) - 1) and r.get("a") is None
r.set("a", "6")
assert r.getex("a", px=1000) == b"6" and 0 < r.pttl("a") <= 1000
assert r.getex("a", persist=True) == b"6" and r.ttl("a") == -1
assert r.getdel("a") == b"6" and r.get("a") is None
try:
    r.set("a", "1", ex=0)
    raise SystemExit("EX 0 accepted")
except redis.ResponseError as e:
    assert "invalid expire time in 'set' command" in str(e), e

assert r.incr("c") == 1 and r.incrby("c", 10) == 11 and r.decr("c") == 10 and r.decrby("c", 5) == 5
r.set("s", "abc")
try:
    r.incr("s")
    raise SystemExit("INCR of a non-integer")
except redis.ResponseError as e:
    assert str(e) == "value is not an integer or out of range", e
assert r.append("s", "de") == 5 and r.strlen("s") == 5

def work():
    c = redis.Redis(host=HOST, port=PORT)
    for _ in range(250):
        c.incr("counter")
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
assert r.get("counter") == b"1000", r.get("counter")

assert r.mset({"m1": "1", "m2": "2"})
assert r.mget(["m1", "m2", "zz"]) == [b"1", b"2", None]
assert r.msetnx({"m1": "x", "m3": "y"}) is False and r.get("m3") is None
assert r.exists("m1", "m1", "zz") == 2
assert r.unlink("m1", "m2", "zz") == 2

assert r.flushall()
for i in range(300):
    r.set("key:%d" % i, i)
r.set("other", 1)
assert r.dbsize() == 301
assert sorted(r.keys("key:1?")) == sorted(("key:1%d" % d).encode() for d in range(10))
assert set(r.scan_iter(match="key:*", count=17)) == {("key:%d" % i).encode() for i in range(300)}
assert r.type("other") in (b"string", "string") and r.type("nope") in (b"none", "none")
for i in range(50):
    r.set("tmp:%d" % i, 1, px=100)
deadline = time.time() + 5
while r.dbsize() != 301 and time.time() < deadline:
    time.sleep(0.05)
assert r.dbsize() == 301, "expired keys are swept"
print("ok")
"#,
    );
}

/// MULTI/EXEC as one log entry, WATCH conflicts seen as redis-py's
/// `WatchError`, and a counter incremented with WATCH retry loops by
/// concurrent clients ends exact.
#[test]
fn redis_py_transactions_and_watch() {
    python_on_a_leader(
        r#"
r = redis.Redis(host=HOST, port=PORT)
r2 = redis.Redis(host=HOST, port=PORT)
r.set("bal", 100)
p = r.pipeline(transaction=True)
p.incr("bal"); p.get("bal"); p.set("x", "y"); p.incr("x")
res = p.execute(raise_on_error=False)
assert res[:3] == [101, b"101", True], res
assert isinstance(res[3], redis.ResponseError), res

with r.pipeline() as p:
    p.watch("bal")
    v = int(p.get("bal"))
    r2.set("bal", 5)
    p.multi()
    p.set("bal", v + 1)
    try:
        p.execute()
        raise SystemExit("EXEC applied despite a change to a watched key")
    except redis.WatchError:
        pass
assert r.get("bal") == b"5"

with r.pipeline() as p:
    p.watch("bal")
    v = int(p.get("bal"))
    p.multi()
    p.set("bal", v * 2)
    assert p.execute() == [True]
assert r.get("bal") == b"10"

with r.pipeline() as p:
    p.watch("ghost")
    r2.set("ghost", 1)
    r2.delete("ghost")
    p.multi()
    p.set("ghost", "mine")
    try:
        p.execute()
        raise SystemExit("a key set and deleted after WATCH went unnoticed")
    except redis.WatchError:
        pass
assert r.get("ghost") is None

conflicts = [0]
def work():
    c = redis.Redis(host=HOST, port=PORT)
    for _ in range(40):
        while True:
            with c.pipeline() as p:
                try:
                    p.watch("counter")
                    v = int(p.get("counter") or 0)
                    p.multi()
                    p.set("counter", v + 1)
                    p.execute()
                    break
                except redis.WatchError:
                    conflicts[0] += 1
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
assert r.get("counter") == b"160", r.get("counter")
print("ok")
"#,
    );
}

/// Transaction errors in Redis' words, on one connection.
#[test]
fn transaction_errors_like_redis() {
    let (c, leader) = leader_cluster();
    let mut k = c.conn(leader);
    let err = |s: &str| Reply::Error(s.into());
    let queued = || Reply::Simple("QUEUED".into());
    assert_eq!(k.cmd(&["EXEC"]).unwrap(), err("ERR EXEC without MULTI"));
    assert_eq!(
        k.cmd(&["DISCARD"]).unwrap(),
        err("ERR DISCARD without MULTI")
    );
    assert_eq!(k.cmd(&["MULTI"]).unwrap(), ok());
    assert_eq!(
        k.cmd(&["MULTI"]).unwrap(),
        err("ERR MULTI calls can not be nested")
    );
    assert_eq!(
        k.cmd(&["WATCH", "a"]).unwrap(),
        err("ERR WATCH inside MULTI is not allowed")
    );
    assert_eq!(k.cmd(&["SET", "a", "1"]).unwrap(), queued());
    assert_eq!(
        k.cmd(&["SET", "a"]).unwrap(),
        err("ERR wrong number of arguments for 'set' command")
    );
    assert_eq!(
        k.cmd(&["EXEC"]).unwrap(),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(
        k.cmd(&["GET", "a"]).unwrap(),
        Reply::Bulk(None),
        "nothing ran"
    );
    // A good one: replies in order, an error inside does not stop the rest.
    assert_eq!(k.cmd(&["MULTI"]).unwrap(), ok());
    for cmd in [&["SET", "a", "x"][..], &["INCR", "a"], &["GET", "a"]] {
        assert_eq!(k.cmd(cmd).unwrap(), queued());
    }
    assert_eq!(
        k.cmd(&["EXEC"]).unwrap(),
        Reply::Array(vec![
            ok(),
            err("ERR value is not an integer or out of range"),
            bulk("x")
        ])
    );
    // DISCARD drops the queue and the watches.
    assert_eq!(k.cmd(&["WATCH", "a"]).unwrap(), ok());
    assert_eq!(k.cmd(&["MULTI"]).unwrap(), ok());
    assert_eq!(k.cmd(&["SET", "a", "y"]).unwrap(), queued());
    assert_eq!(k.cmd(&["DISCARD"]).unwrap(), ok());
    assert_eq!(k.cmd(&["GET", "a"]).unwrap(), bulk("x"));
    // An aborted EXEC is a nil array in RESP2.
    assert_eq!(k.cmd(&["WATCH", "a"]).unwrap(), ok());
    assert_eq!(c.exec(&["SET", "a", "z"]), ok());
    assert_eq!(k.cmd(&["MULTI"]).unwrap(), ok());
    assert_eq!(k.cmd(&["SET", "a", "w"]).unwrap(), queued());
    assert_eq!(k.cmd(&["EXEC"]).unwrap(), Reply::NilArray);
    assert_eq!(k.cmd(&["GET", "a"]).unwrap(), bulk("z"));
    // A follower refuses to queue: MOVED, and the transaction is doomed.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut f = c.conn(follower);
    assert_eq!(f.cmd(&["MULTI"]).unwrap(), ok());
    assert!(
        matches!(f.cmd(&["SET", "a", "1"]).unwrap(), Reply::Error(e) if e.starts_with("MOVED ")),
        "a follower redirects"
    );
    assert_eq!(
        f.cmd(&["EXEC"]).unwrap(),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
}

/// The worked example of kv/mod.rs: a client whose lease ran out while it was
/// paused has its fenced write refused; the new holder's write stays.
#[test]
fn locks_fence_a_paused_clients_write() {
    python_on_a_leader(
        r#"
r = redis.Redis(host=HOST, port=PORT)
OK = (b"OK", "OK", True)
a = r.execute_command("LOCK.ACQUIRE", "inventory", "A", 300)
assert isinstance(a, int) and a > 0, a
assert r.execute_command("LOCK.ACQUIRE", "inventory", "B", 300) is None
assert r.execute_command("LOCK.ACQUIRE", "inventory", "A", 300) == a, "a retry gets the same token"
assert r.execute_command("FENCED.SET", "inventory", a, "stock", "40") in OK
time.sleep(0.5)  # A pauses past its lease
b = r.execute_command("LOCK.ACQUIRE", "inventory", "B", 10000)
assert b > a, (a, b)
assert r.execute_command("FENCED.SET", "inventory", b, "stock", "41") in OK
try:
    r.execute_command("FENCED.SET", "inventory", a, "stock", "42")
    raise SystemExit("the stale write landed")
except redis.ResponseError as e:
    assert "FENCED token %d is stale" % a in str(e), e
assert r.get("stock") == b"41"
info = r.execute_command("LOCK.INFO", "inventory")
assert info[0] == b"B" and info[1] == b and 0 < info[2] <= 10000, info
assert r.execute_command("LOCK.EXTEND", "inventory", "A", a, 1000) == 0
assert r.execute_command("LOCK.EXTEND", "inventory", "B", b, 20000) == 1
assert r.execute_command("LOCK.RELEASE", "inventory", "A", a) == 0
assert r.execute_command("LOCK.RELEASE", "inventory", "B", b) == 1
assert r.execute_command("LOCK.INFO", "inventory") is None
try:
    r.execute_command("FENCED.SET", "inventory", b, "stock", "43")
    raise SystemExit("a write with a released token landed")
except redis.ResponseError as e:
    assert "not held" in str(e), e
print("ok")
"#,
    );
}

/// With `client_password_file`, nothing but AUTH, HELLO ... AUTH, QUIT and
/// RESET runs before authenticating; redis-py with the password works,
/// without it or with a wrong one it gets `AuthenticationError`.
#[test]
fn a_client_password_is_required_once_configured() {
    let mut c = Cluster::with_options(
        3,
        Options {
            client_password: Some("correct horse".into()),
            ..Options::default()
        },
    );
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let addr = c.m(leader).client;
    let mut k = open(addr).unwrap();
    let noauth = Reply::Error("NOAUTH Authentication required.".into());
    assert_eq!(k.cmd(&["GET", "a"]).unwrap(), noauth);
    assert_eq!(k.cmd(&["PING"]).unwrap(), noauth);
    assert!(
        matches!(k.cmd(&["HELLO", "3"]).unwrap(), Reply::Error(e) if e.starts_with("NOAUTH HELLO must be called"))
    );
    let wrongpass =
        Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
    assert_eq!(k.cmd(&["AUTH", "nope"]).unwrap(), wrongpass);
    assert_eq!(k.cmd(&["AUTH", "bob", "correct horse"]).unwrap(), wrongpass);
    assert_eq!(k.cmd(&["AUTH", "correct horse"]).unwrap(), ok());
    assert_eq!(k.cmd(&["SET", "a", "1"]).unwrap(), ok());
    // RESET forgets the authentication.
    assert_eq!(k.cmd(&["RESET"]).unwrap(), Reply::Simple("RESET".into()));
    assert_eq!(k.cmd(&["GET", "a"]).unwrap(), noauth);
    assert_eq!(k.cmd(&["AUTH", "default", "correct horse"]).unwrap(), ok());
    assert_eq!(k.cmd(&["GET", "a"]).unwrap(), bulk("1"));
    assert_eq!(k.cmd(&["QUIT"]).unwrap(), ok());
    python(
        addr,
        Some("correct horse"),
        r#"
r = redis.Redis(host=HOST, port=PORT, password=PASSWORD)
assert r.get("a") == b"1"
for pw in (None, "wrong"):
    try:
        redis.Redis(host=HOST, port=PORT, password=pw).get("a")
        raise SystemExit("served without the password: %r" % pw)
    except redis.AuthenticationError:
        pass
print("ok")
"#,
    );
}

/// Keys expire by entries in the log: once their deadline passes, every
/// member removes them (a follower's key count drops too), and a new
/// leader after a failover does not bring them back.
#[test]
fn expired_keys_are_removed_everywhere_and_stay_gone_after_a_failover() {
    let (mut c, leader) = leader_cluster();
    for i in 0..20 {
        let k = format!("short{i}");
        assert_eq!(c.exec(&["SET", &k, "v", "PX", "200"]), ok());
    }
    assert_eq!(c.exec(&["SET", "long", "v", "EX", "100"]), ok());
    assert_eq!(c.exec(&["GET", "short3"]), bulk("v"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<Option<String>> = (1..=3).map(|i| c.field(i, "keys")).collect();
        if counts.iter().all(|k| k.as_deref() == Some("1")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not swept everywhere: {counts:?}"
        );
        sleep(Duration::from_millis(50));
    }
    let clocks: Vec<Option<String>> = (1..=3).map(|i| c.field(i, "store_clock_ms")).collect();
    assert!(
        clocks.iter().all(|x| x == &clocks[0]),
        "one store clock: {clocks:?}"
    );
    c.kill(leader);
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["GET", "short3"]), Reply::Bulk(None));
    assert_eq!(c.exec(&["EXISTS", "short0", "short19"]), Reply::Integer(0));
    assert_eq!(c.exec(&["GET", "long"]), bulk("v"));
    match c.exec(&["TTL", "long"]) {
        Reply::Integer(t) => assert!((90..=100).contains(&t), "TTL {t}"),
        other => panic!("{other:?}"),
    }
}

/// A read never sees a key whose deadline has passed by the leader's
/// clock, even before any sweep removed it: `b` expires 30 ms after `a`,
/// so the timer sweep that removed `a` holds the next one back (it runs at
/// most every 50 ms) and `b` lingers in the store after its deadline; a GET
/// sent then must still find it gone (the read waits for a sweep of its
/// own).
#[test]
fn a_read_after_the_deadline_never_sees_the_key() {
    let (c, leader) = leader_cluster();
    let mut k = c.conn(leader);
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // The window is about 38 ms a round; a loaded machine may fit few
    // reads into one, so rounds go on until enough reads fell in it (every
    // read is checked either way). Bounded: 60 rounds of ~0.45 s.
    let mut late_reads = 0;
    let mut rounds = 0;
    while late_reads < 50 && rounds < 60 {
        let round = rounds;
        rounds += 1;
        let d = wall_ms() + 400;
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        assert_eq!(
            k.cmd(&["SET", &a, "v", "PXAT", &(d - 30).to_string()])
                .unwrap(),
            ok()
        );
        assert_eq!(
            k.cmd(&["SET", &b, "v", "PXAT", &d.to_string()]).unwrap(),
            ok()
        );
        while wall_ms() < d + 40 {
            let sent = wall_ms();
            let r = k.cmd(&["GET", &b]).unwrap();
            // Two ms of slack: the member's clock is the machine's, read
            // at its start plus monotonic time since.
            if sent > d + 2 {
                late_reads += 1;
                assert_eq!(
                    r,
                    Reply::Bulk(None),
                    "round {round}: read {}ms after the deadline",
                    sent - d
                );
            }
        }
    }
    assert!(
        late_reads >= 10,
        "the window was exercised: {late_reads} reads in {rounds} rounds"
    );
}

/// `TIME` answers this member's clock in Redis' shape (redis-py's
/// absolute-expiry tests call it), on any member, with no Raft round.
#[test]
fn time_answers_this_members_clock() {
    let (c, leader) = leader_cluster();
    for id in [leader, if leader == 1 { 2 } else { 1 }] {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let r = c.conn(id).cmd(&["TIME"]).unwrap();
        let Reply::Array(parts) = r else {
            panic!("TIME on member {id}: {r:?}")
        };
        let num = |p: &Reply| match p {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).parse::<u64>().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(parts.len(), 2);
        let (secs, micros) = (num(&parts[0]), num(&parts[1]));
        assert!((before..=before + 2).contains(&secs), "{secs} vs {before}");
        assert!(micros < 1_000_000, "{micros}");
    }
}
