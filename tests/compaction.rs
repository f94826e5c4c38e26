//! Snapshots and log compaction on real `raft-node` processes (issue 9):
//! members snapshot their store and drop the log it covers, a member that
//! was stopped while the log moved on rejoins by receiving the leader's
//! snapshot, and every member restarts from its snapshot plus the log
//! after it.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Small thresholds, so that a test of a few thousand writes snapshots
/// several times and compacts whole segments.
const SMALL: &str = "snapshot_entries = 400\ncompaction_trailing_entries = 50\nlog_segment_mb = 1";

fn cluster() -> Cluster {
    let mut c = Cluster::with_options(
        3,
        Options {
            extra_toml: Some(SMALL.into()),
            ..Options::default()
        },
    );
    c.start_all();
    c
}

/// Writes `n` SETs of 100-byte values over `keys` keys to the leader,
/// pipelined 64 at a time; returns the value written last to each key.
fn write_many(c: &Cluster, leader: u64, n: u64, keys: u64, tag: &str) -> Vec<String> {
    let mut conn = c.conn(leader);
    let mut last = vec![String::new(); keys as usize];
    let mut sent = 0;
    while sent < n {
        let batch = 64.min(n - sent);
        let mut buf = Vec::new();
        for i in sent..sent + batch {
            let k = i % keys;
            let v = format!("{tag}-{i:0>94}");
            buf.extend(encode(&[b"SET", format!("k{k}").as_bytes(), v.as_bytes()]));
            last[k as usize] = v;
        }
        conn.write_all(&buf).unwrap();
        for _ in 0..batch {
            assert_eq!(conn.read().unwrap(), ok());
        }
        sent += batch;
    }
    last
}

fn wait_for(what: &str, c: &Cluster, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads every key on member `id` itself (READONLY: a follower serves it
/// with a read index from the leader) and compares.
fn check_values(c: &Cluster, id: u64, expected: &[String]) {
    let mut conn = c.conn(id);
    assert_eq!(conn.cmd(&["READONLY"]).unwrap(), ok());
    for (k, v) in expected.iter().enumerate() {
        let key = format!("k{k}");
        assert_eq!(
            conn.cmd(&["GET", &key]).unwrap(),
            bulk(v),
            "member {id}, {key}"
        );
    }
}

#[test]
fn a_member_stopped_during_writes_rejoins_by_snapshot_and_serves_the_same_data() {
    let mut c = cluster();
    let leader = c.wait_leader(Duration::from_secs(10));
    let away = c
        .members
        .iter()
        .map(|m| m.id)
        .find(|&i| i != leader)
        .unwrap();
    c.kill(away);
    let expected = write_many(&c, leader, 12_000, 50, "a");
    wait_for(
        "the leader to snapshot and compact",
        &c,
        Duration::from_secs(10),
        || {
            c.num(leader, "raft_snapshots_taken") >= 2
                && c.num(leader, "raft_log_first_index") > 100
        },
    );
    let log_text_before = c.log_text(away);
    c.start(away);
    let commit = c.num(leader, "raft_commit_index");
    wait_for(
        "the member to catch up",
        &c,
        Duration::from_secs(20),
        || {
            c.field(away, "raft_last_applied")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|a| a >= commit)
        },
    );
    assert!(
        c.num(away, "raft_snapshots_installed") >= 1,
        "it caught up by snapshot"
    );
    assert!(c.num(leader, "raft_snapshots_sent") >= 1);
    let log = c.log_text(away);
    assert!(
        log[log_text_before.len()..].contains("installed the leader's snapshot"),
        "the member says so in its log"
    );
    check_values(&c, away, &expected);
    // And it follows the log from there on.
    let more = write_many(&c, leader, 200, 50, "b");
    let commit = c.num(leader, "raft_commit_index");
    wait_for(
        "the member to apply the new writes",
        &c,
        Duration::from_secs(10),
        || c.num(away, "raft_last_applied") >= commit,
    );
    check_values(&c, away, &more);
}

#[test]
fn every_member_restarts_from_its_snapshot_and_the_log_after_it() {
    let mut c = cluster();
    let leader = c.wait_leader(Duration::from_secs(10));
    let expected = write_many(&c, leader, 12_000, 40, "r");
    let commit = c.num(leader, "raft_commit_index");
    let ids: Vec<u64> = c.members.iter().map(|m| m.id).collect();
    wait_for(
        "every member to snapshot",
        &c,
        Duration::from_secs(10),
        || {
            ids.iter().all(|&i| {
                c.num(i, "raft_snapshot_index") > 0 && c.num(i, "raft_last_applied") >= commit
            })
        },
    );
    for &i in &ids {
        let segments = c.num(i, "raft_log_segments");
        assert!(segments >= 1);
        assert!(
            c.num(i, "raft_log_first_index") > 1,
            "member {i} compacted its log"
        );
        assert_eq!(c.terminate(i).code(), Some(0));
    }
    for &i in &ids {
        c.start(i);
    }
    let leader = c.wait_leader(Duration::from_secs(10));
    for &i in &ids {
        let log = c.log_text(i);
        assert!(
            log.contains("started from the snapshot"),
            "member {i} loaded its snapshot"
        );
    }
    wait_for(
        "every member to apply its log again",
        &c,
        Duration::from_secs(10),
        || ids.iter().all(|&i| c.num(i, "raft_last_applied") >= commit),
    );
    for &i in &ids {
        check_values(&c, i, &expected);
    }
    let _ = leader;
}
