//! No client can stall the event loop into an election (issue 21): work
//! that grows with the store runs off the loop or in bounded slices. These
//! tests assert behaviour only (no election, no lost write, the right
//! answer); how long the loop's turns took is printed, and measured by
//! `make bench-stall`.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, Reply};

/// Keys in the store: `KEYS *` over this many took the loop about a second
/// before walks ran off it (two to three election timeouts by default).
const KEYS: usize = 1_000_000;
/// Keys per MSET (a request takes at most 1024 arguments).
const BATCH: usize = 500;

fn load(c: &Cluster, leader: u64, n: usize) {
    let mut conn = c.conn(leader);
    let mut sent = 0;
    while sent < n {
        // A window of pipelined MSETs, then their replies.
        let mut window = 0;
        while window < 100 && sent < n {
            let keys: Vec<String> = (sent..(sent + BATCH).min(n))
                .map(|i| format!("k{i:07}"))
                .collect();
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            for k in &keys {
                args.push(k.as_bytes());
                args.push(b"v");
            }
            conn.send(&args).unwrap();
            sent += keys.len();
            window += 1;
        }
        for _ in 0..window {
            assert_eq!(conn.read().unwrap(), Reply::Simple("OK".into()));
        }
    }
}

/// One line per row for `make bench-stall`: each member's longest loop
/// turn since it started, its slow-turn lines (rate-limited by the
/// server), and whether the term moved.
fn report(c: &Cluster, row: &str, before: &[String], after: &[String]) {
    let turns: Vec<String> = (1..=3)
        .map(|id| {
            let ms = c.field(id, "raft_loop_turn_max_ms").unwrap_or_default();
            let phase = c.field(id, "raft_loop_turn_max_phase").unwrap_or_default();
            format!("n{id} {ms} ms ({phase})")
        })
        .collect();
    println!(
        "stall-row {row}: longest turn {}; terms {before:?} -> {after:?}",
        turns.join(", ")
    );
    for id in 1..=3 {
        for line in c
            .log_text(id)
            .lines()
            .filter(|l| l.contains("slow event-loop turn"))
        {
            println!("  n{id}: {line}");
        }
    }
}

/// Every acknowledged write (`SET key 1`) reads back from the leader.
fn all_there(c: &Cluster, acked: &[String]) {
    let mut conn = c.conn(c.wait_leader(Duration::from_secs(5)));
    for key in acked {
        assert_eq!(
            conn.cmd(&["GET", key]).unwrap(),
            Reply::Bulk(Some(b"1".to_vec())),
            "acknowledged write {key} lost"
        );
    }
}

fn terms(c: &Cluster) -> Vec<String> {
    (1..=3)
        .map(|id| c.field(id, "raft_term").expect("INFO answers"))
        .collect()
}

#[test]
fn keys_over_a_large_store_causes_no_election_and_loses_no_write() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(15));
    let t0 = Instant::now();
    load(&c, leader, KEYS);
    println!("loaded {KEYS} keys in {:?}", t0.elapsed());
    for id in 1..=3 {
        c.wait_caught_up(id);
    }
    let before = terms(&c);

    // Writes acknowledged while the walks run must all be there after.
    let writer = {
        let mut conn = c.conn(leader);
        thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0..200 {
                let key = format!("w{i}");
                if conn.cmd(&["SET", &key, "1"]).ok() == Some(Reply::Simple("OK".into())) {
                    acked.push(key);
                }
                thread::sleep(Duration::from_millis(10));
            }
            acked
        })
    };
    // Four clients at once, twice each: inline, each took the loop a second.
    let walkers: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = c.conn(leader);
            // Walks queue on one thread: the last of eight waits for the
            // seven before it, longer on a loaded machine.
            conn.stream()
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            thread::spawn(move || {
                for _ in 0..2 {
                    let started = Instant::now();
                    let keys = match conn.cmd(&["KEYS", "k*"]).unwrap() {
                        Reply::Array(keys) => keys,
                        // An election answers "moved" or "write lost".
                        other => panic!("KEYS answered {other:?}"),
                    };
                    assert_eq!(keys.len(), KEYS);
                    println!("KEYS k* answered in {:?}", started.elapsed());
                }
            })
        })
        .collect();
    for w in walkers {
        w.join().unwrap();
    }
    let acked = writer.join().unwrap();
    assert!(
        !acked.is_empty(),
        "no write was acknowledged during the walks"
    );

    let after = terms(&c);
    report(
        &c,
        "load 1M keys, then KEYS x 8 from 4 clients",
        &before,
        &after,
    );
    assert_eq!(before, after, "an election happened during the walks");
    assert_eq!(c.wait_leader(Duration::from_secs(5)), leader);
    all_there(&c, &acked);
}

#[test]
fn keys_cannot_be_queued_in_a_transaction() {
    let mut c = Cluster::new(1);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(15));
    let mut conn = c.conn(leader);
    assert_eq!(conn.cmd(&["MULTI"]).unwrap(), Reply::Simple("OK".into()));
    let Reply::Error(e) = conn.cmd(&["KEYS", "*"]).unwrap() else {
        panic!("KEYS was queued");
    };
    assert!(e.contains("cannot be queued in a transaction"), "{e}");
    // A small SCAN page still runs inside EXEC.
    assert_eq!(
        conn.cmd(&["SCAN", "0", "COUNT", "10"]).unwrap(),
        Reply::Simple("QUEUED".into())
    );
    let Reply::Error(e) = conn.cmd(&["EXEC"]).unwrap() else {
        panic!("EXEC ran a doomed transaction");
    };
    assert!(e.starts_with("EXECABORT"), "{e}");
}

#[test]
fn clients_that_pipeline_big_gets_and_never_read_cause_no_election() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(15));
    let value = "x".repeat(512 * 1024);
    let mut conn = c.conn(leader);
    assert_eq!(
        conn.cmd(&["SET", "big", &value]).unwrap(),
        Reply::Simple("OK".into())
    );
    for id in 1..=3 {
        c.wait_caught_up(id);
    }
    let before = terms(&c);
    // 100 connections, 2,000 GETs of 512 KiB each, none ever read: the
    // replies would be 100 GB; the client budget bounds what is held, and
    // the turn budget how long one turn spends on them.
    let get = common::encode(&[b"GET", b"big"]).repeat(2_000);
    let mut floods = Vec::new();
    for _ in 0..100 {
        let mut s = std::net::TcpStream::connect(c.m(leader).client).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // The server stops reading once its budget is full: a short
        // write then is expected.
        let _ = std::io::Write::write_all(&mut s, &get);
        floods.push(s);
    }
    // Writes go on meanwhile, and must all be there after.
    let mut acked = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while Instant::now() < until {
        let key = format!("w{i}");
        i += 1;
        if conn.cmd(&["SET", &key, "1"]).ok() == Some(Reply::Simple("OK".into())) {
            acked.push(key);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let after = terms(&c);
    report(
        &c,
        "100 clients x 2,000 GETs of 512 KiB, never read",
        &before,
        &after,
    );
    assert_eq!(before, after, "an election happened during the flood");
    drop(floods);
    assert!(
        !acked.is_empty(),
        "no write was acknowledged during the flood"
    );
    all_there(&c, &acked);
}

#[test]
fn a_follower_loads_a_large_snapshot_off_the_loop() {
    let mut c = Cluster::with_options(
        3,
        common::Options {
            extra_toml: Some("snapshot_entries = 500\ncompaction_trailing_entries = 0".into()),
            ..Default::default()
        },
    );
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(15));
    let away = (1..=3).find(|&id| id != leader).unwrap();
    c.kill(away);
    load(&c, leader, KEYS);
    let others: Vec<u64> = (1..=3).filter(|&id| id != away).collect();
    // The leader's log must be compacted past what `away` holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .field(leader, "raft_snapshot_index")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        < 1_500
    {
        assert!(Instant::now() < deadline, "the leader took no snapshot");
        thread::sleep(Duration::from_millis(100));
    }
    let before: Vec<String> = others
        .iter()
        .map(|&id| c.field(id, "raft_term").unwrap())
        .collect();
    c.start(away);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.field(away, "raft_snapshots_installed").as_deref() != Some("1") {
        assert!(
            Instant::now() < deadline,
            "member {away} installed no snapshot"
        );
        thread::sleep(Duration::from_millis(100));
    }
    c.wait_caught_up(away);
    let after: Vec<String> = others
        .iter()
        .map(|&id| c.field(id, "raft_term").unwrap())
        .collect();
    for line in c
        .log_text(away)
        .lines()
        .filter(|l| l.contains("installed the leader's snapshot"))
    {
        println!("  n{away}: {line}");
    }
    report(
        &c,
        &format!("n{away} installs a snapshot of ~1M keys"),
        &before,
        &after,
    );
    assert_eq!(before, after, "an election happened during the install");
    // What it serves is the leader's store.
    let mut conn = c.conn(away);
    assert_eq!(conn.cmd(&["READONLY"]).unwrap(), Reply::Simple("OK".into()));
    assert_eq!(conn.cmd(&["DBSIZE"]).unwrap(), Reply::Integer(KEYS as i64));
    assert_eq!(
        conn.cmd(&["GET", "k0999999"]).unwrap(),
        Reply::Bulk(Some(b"v".to_vec()))
    );
}

/// A member holding the secret announces a snapshot of 2^63 bytes and
/// streams 8 MiB chunks of it (before: 344 MB written, a 6 s stall). The
/// follower refuses it before a byte is written, stays up, and the cluster
/// goes on committing.
#[test]
fn a_snapshot_announced_larger_than_any_disk_is_refused_unwritten() {
    use common::{closed_by_server, insider, SECRET};
    use raft_proto::{InstallSnapshot, LogIndex, Membership, Message, MessageBody, NodeId};
    use raft_proto::{SnapshotMeta, Term};
    use std::io::Write;

    let mut c = Cluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(15));
    // The insider poses as member 3 (the real one stopped).
    c.kill(3);
    let leader = c.wait_leader(Duration::from_secs(15));
    let target = if leader == 1 { 2 } else { 1 };
    let term: u64 = c.field(target, "raft_term").unwrap().parse().unwrap();
    let meta = SnapshotMeta {
        last_index: LogIndex(1_000_000),
        last_term: Term(term + 1),
        len: 1 << 63,
        membership: Box::new(Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: Vec::new(),
            context: bytes::Bytes::new(),
        }),
    };
    let chunk = bytes::Bytes::from(vec![0xAB; 8 << 20]);
    let mut s = insider::authenticate(&c, 3, target, SECRET).expect("insider handshake");
    for i in 0..8u64 {
        let f = insider::frame(&Message {
            from: NodeId(3),
            to: NodeId(target),
            term: Term(term + 1),
            body: MessageBody::InstallSnapshot(InstallSnapshot {
                meta: meta.clone(),
                offset: i * chunk.len() as u64,
                data: chunk.clone(),
                round: i,
            }),
        });
        if s.write_all(&f).is_err() {
            break; // the link closed: the wait below tells whether it was refused
        }
    }
    let _ = closed_by_server(&s, Duration::from_secs(2));
    // The member may still be reading the chunks on a loaded machine.
    let refused = |c: &Cluster| -> u64 {
        c.field(target, "raft_snapshots_refused")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused(&c) == 0 {
        assert!(Instant::now() < deadline, "the snapshot was not refused");
        thread::sleep(Duration::from_millis(50));
    }
    drop(s);
    let incoming = c.m(target).data.join("snapshot.incoming");
    let written = std::fs::metadata(&incoming).map_or(0, |m| m.len());
    assert_eq!(
        written, 0,
        "{written} bytes of the announced snapshot written"
    );
    assert!(c.alive(target), "the member stopped");
    // The cluster goes on.
    c.wait_leader(Duration::from_secs(15));
    assert_eq!(c.exec(&["SET", "after", "1"]), Reply::Simple("OK".into()));
}
