//! Changing the cluster while it runs, on real `raft-node` processes
//! (issue 10): a member that joins with `--join` is added as a learner,
//! catches up, is promoted, and replaces a member that is removed; a
//! rolling restart in which each leader hands over at SIGTERM loses no
//! write and fails none.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

/// The cluster file with only the first `n` [[node]] tables: what the
/// initial members bootstrap from.
fn file_of_first(c: &Cluster, n: usize) -> std::path::PathBuf {
    let text = fs::read_to_string(&c.config).unwrap();
    let mut out = String::new();
    let mut nodes = 0;
    for block in text.split("[[node]]") {
        if out.is_empty() && !block.contains("id =") {
            out.push_str(block);
            continue;
        }
        nodes += 1;
        if nodes <= n {
            out.push_str("[[node]]");
            out.push_str(block);
        }
    }
    let path = c.dir.path().join(format!("cluster{n}.toml"));
    fs::write(&path, out).unwrap();
    path
}

/// Starts members 1..=`n` from a cluster file that names only them (the
/// bootstrap configuration), then points `c` back at the full file, which
/// members started later (joining ones) read.
fn start_bootstrap(c: &mut Cluster, n: usize) {
    let full = c.config.clone();
    c.config = file_of_first(c, n);
    for id in 1..=n as u64 {
        c.start(id);
    }
    c.config = full;
}

/// The ids in a RAFT.MEMBERS-shaped reply, with their roles.
fn members(r: &Reply) -> Vec<(i64, String)> {
    let Reply::Array(entries) = r else {
        panic!("not a member list: {r:?}")
    };
    entries
        .iter()
        .map(|e| match e {
            Reply::Array(f) => match (&f[0], &f[3]) {
                (Reply::Integer(id), Reply::Bulk(Some(role))) => {
                    (*id, String::from_utf8_lossy(role).into_owned())
                }
                other => panic!("entry {other:?}"),
            },
            other => panic!("entry {other:?}"),
        })
        .collect()
}

#[test]
fn a_member_that_joins_replaces_one_that_leaves() {
    let mut c = Cluster::new(4);
    start_bootstrap(&mut c, 3);
    c.wait_leader(Duration::from_secs(10));
    for i in 0..200 {
        let v = format!("v{i}");
        assert_eq!(
            c.exec(&["SET", &format!("k{i}"), &v]),
            Reply::Simple("OK".into())
        );
    }
    // Member 4 joins: it does not bootstrap, does not campaign, waits.
    c.start_joining(4);
    sleep(Duration::from_millis(800));
    assert_eq!(c.field(4, "raft_role").as_deref(), Some("follower"));
    assert_eq!(c.num(4, "raft_term"), 0, "a joining member never campaigns");
    assert_eq!(c.num(4, "raft_last_log_index"), 0);

    let (peer, client) = (c.m(4).peer.to_string(), c.m(4).client.to_string());
    let r = c.admin(&["RAFT.ADD", "4", &peer, &client, "LEARNER"]);
    assert!(
        members(&r).contains(&(4, "learner".into())),
        "after ADD: {r:?}"
    );
    // It catches up from the log (or a snapshot) as a learner.
    c.wait_caught_up(4);
    assert_eq!(c.field(4, "raft_membership").as_deref(), Some("learner"));
    let r = c.admin(&["RAFT.PROMOTE", "4"]);
    assert!(
        members(&r).contains(&(4, "voter".into())),
        "after PROMOTE: {r:?}"
    );
    // Removing 1 (whichever role it has) leaves 2, 3 and 4.
    // The hard case: the leader removes itself. It leads until the change
    // commits (its followers must still answer it), then hands over.
    assert_eq!(c.admin(&["RAFT.TRANSFER", "1"]), Reply::Simple("OK".into()));
    assert_eq!(c.wait_leader(Duration::from_secs(5)), 1);
    let r = c.admin(&["RAFT.REMOVE", "1"]);
    let ids: Vec<i64> = members(&r).iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![2, 3, 4], "after REMOVE: {r:?}");
    assert!(c.terminate(1).success());
    // Retried after it took effect: answered as done, not an error.
    let r = c.admin(&["RAFT.REMOVE", "1"]);
    assert_eq!(members(&r).len(), 3, "REMOVE again: {r:?}");
    let r = c.admin(&["RAFT.ADD", "4", &peer, &client, "LEARNER"]);
    assert!(
        members(&r).contains(&(4, "voter".into())),
        "ADD again: {r:?}"
    );
    for i in 200..300 {
        let v = format!("v{i}");
        assert_eq!(
            c.exec(&["SET", &format!("k{i}"), &v]),
            Reply::Simple("OK".into())
        );
    }
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_ne!(leader, 1);
    // Every write is on member 4, served by it (READONLY: its own read).
    c.wait_caught_up(4);
    let mut conn = c.conn(4);
    assert_eq!(conn.cmd(&["READONLY"]).unwrap(), Reply::Simple("OK".into()));
    for i in (0..300).step_by(37) {
        assert_eq!(
            conn.cmd(&["GET", &format!("k{i}")]).unwrap(),
            Reply::Bulk(Some(format!("v{i}").into_bytes())),
            "k{i} on member 4"
        );
    }
    assert_eq!(c.field(4, "raft_voters").as_deref(), Some("2,3,4"));
    assert_eq!(c.field(4, "raft_membership").as_deref(), Some("voter"));
    let r = c.exec(&["RAFT.MEMBERS"]);
    assert_eq!(members(&r).len(), 3, "{r:?}");
    // Bad requests get clear errors.
    for (args, want) in [
        // Member 2 exists with other addresses: not the same member.
        (vec!["RAFT.ADD", "2", &peer, &client], "already a member"),
        (vec!["RAFT.PROMOTE", "9"], "not such a member"),
        (vec!["RAFT.ADD", "0", &peer, &client], "invalid member id"),
        (vec!["RAFT.ADD", "5", "nowhere", &client], "invalid address"),
        (vec!["RAFT.REMOVE"], "wrong number of arguments"),
    ] {
        match c.exec(&args) {
            Reply::Error(e) => assert!(e.contains(want), "{args:?}: {e}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    // Member 1's log says it left; member 4's that it joined.
    assert!(c.log_text(4).contains("configuration in force"));
}

/// A rolling restart under a steady write load: each member in turn gets
/// SIGTERM and is started again; the leader hands over first. No write
/// fails (clients follow `-MOVED`), none is lost.
#[test]
fn a_rolling_restart_hands_leadership_over_and_fails_no_write() {
    let mut c = Cluster::new(3);
    c.start_all();
    c.wait_leader(Duration::from_secs(10));
    let c = Arc::new(Mutex::new(c));
    let stop = Arc::new(AtomicBool::new(false));
    let (addrs, client_password) = {
        let c = c.lock().unwrap();
        (
            c.members.iter().map(|m| m.client).collect::<Vec<_>>(),
            c.client_password.clone(),
        )
    };
    assert!(client_password.is_none());
    // The writer: one key per write, following MOVED; any other error
    // is a failed write.
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            let mut target = addrs[0];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i}");
                let r = open(target).and_then(|mut conn| conn.cmd(&["SET", &key, "x"]));
                match r {
                    Ok(Reply::Simple(s)) if s == "OK" => {
                        acked.push(key);
                        i += 1;
                    }
                    Ok(Reply::Error(e)) if e.starts_with("MOVED ") => {
                        target = e.rsplit(' ').next().unwrap().parse().unwrap();
                    }
                    Ok(Reply::Error(e)) if e.starts_with("CLUSTERDOWN") => {
                        sleep(Duration::from_millis(5))
                    }
                    // The member is restarting: try the next one.
                    Err(_) => {
                        let k = addrs.iter().position(|a| *a == target).unwrap();
                        target = addrs[(k + 1) % addrs.len()];
                        sleep(Duration::from_millis(5));
                    }
                    Ok(other) => {
                        failed.push(format!("{key}: {other:?}"));
                        i += 1;
                    }
                }
            }
            (acked, failed)
        })
    };
    sleep(Duration::from_millis(300));
    let mut handovers = 0;
    // Followers first, the leader last, as an operator would.
    let order: Vec<u64> = {
        let c = c.lock().unwrap();
        let l = c.wait_leader(Duration::from_secs(10));
        let mut o: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
        o.push(l);
        o
    };
    for id in order {
        let mut g = c.lock().unwrap();
        let was_leader = g.field(id, "raft_role").as_deref() == Some("leader");
        assert!(g.terminate(id).success(), "member {id} exit status");
        if was_leader {
            handovers += 1;
            assert!(
                g.log_text(id).contains("handing leadership to member"),
                "leader {id} did not hand over"
            );
        }
        g.start(id);
        g.wait_caught_up(id);
        drop(g);
        sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.join().unwrap();
    let c = c.lock().unwrap();
    assert!(handovers >= 1, "no restart of a leader");
    assert!(failed.is_empty(), "failed writes: {failed:?}");
    assert!(acked.len() > 100, "only {} writes", acked.len());
    // None lost.
    for key in acked.iter().step_by(17).chain(acked.last()) {
        assert_eq!(
            c.exec(&["GET", key]),
            Reply::Bulk(Some(b"x".to_vec())),
            "{key} lost"
        );
    }
}

/// A member that was down while member 4 joined, and comes back to find 4
/// leading: its log does not name 4 yet, so it accepts 4's authenticated
/// link and answers on a link dialled back to the address 4's handshake
/// gives, until the log it receives makes 4 a member.
#[test]
fn a_member_behind_the_configuration_catches_up_from_a_leader_it_never_knew() {
    let mut c = Cluster::new(4);
    start_bootstrap(&mut c, 3);
    c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["SET", "before", "1"]), Reply::Simple("OK".into()));
    // Member 3 stops before 4 joins; the two others commit without it.
    assert!(c.terminate(3).success());
    c.start_joining(4);
    let (peer, client) = (c.m(4).peer.to_string(), c.m(4).client.to_string());
    c.admin(&["RAFT.ADD", "4", &peer, &client, "LEARNER"]);
    let r = c.admin(&["RAFT.PROMOTE", "4"]);
    assert!(members(&r).contains(&(4, "voter".into())), "{r:?}");
    assert_eq!(c.admin(&["RAFT.TRANSFER", "4"]), Reply::Simple("OK".into()));
    assert_eq!(c.exec(&["SET", "after", "2"]), Reply::Simple("OK".into()));
    // Member 3 returns, with the bootstrap file and a log from before 4.
    c.config = file_of_first(&c, 3);
    c.start(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = c.field(4, "raft_commit_index");
        if c.field(3, "raft_voters").as_deref() == Some("1,2,3,4")
            && c.field(3, "raft_last_applied") == l
            && c.field(3, "raft_leader_id").as_deref() == Some("4")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 3 did not catch up from leader 4: {:?} {:?}",
            c.field(3, "raft_voters"),
            c.field(3, "raft_last_applied")
        );
        sleep(Duration::from_millis(50));
    }
    assert!(c
        .log_text(3)
        .contains("not in this member's configuration, connected from"));
    let mut conn = c.conn(3);
    assert_eq!(conn.cmd(&["READONLY"]).unwrap(), Reply::Simple("OK".into()));
    assert_eq!(
        conn.cmd(&["GET", "after"]).unwrap(),
        Reply::Bulk(Some(b"2".to_vec()))
    );
}

/// A member that joins while the leader is a member added after the
/// bootstrap, behind a log longer than one AppendEntries batch: on the way
/// it applies the bootstrap configuration, which does not name its leader,
/// and must keep answering it (a drill found it refusing it for good).
#[test]
fn a_member_that_joins_behind_a_long_log_catches_up_from_a_later_leader() {
    let mut c = Cluster::new(5);
    start_bootstrap(&mut c, 3);
    let leader = c.wait_leader(Duration::from_secs(10));
    {
        // 600 entries, more than two batches of 256.
        let mut conn = c.conn(leader);
        for i in 0..600 {
            conn.send(&[b"SET", format!("k{i}").as_bytes(), b"v"])
                .unwrap();
        }
        for _ in 0..600 {
            assert_eq!(conn.read().unwrap(), Reply::Simple("OK".into()));
        }
    }
    for id in [4u64, 5] {
        c.start_joining(id);
        let (peer, client) = (c.m(id).peer.to_string(), c.m(id).client.to_string());
        let n = id.to_string();
        c.admin(&["RAFT.ADD", &n, &peer, &client, "LEARNER"]);
        c.wait_caught_up(id);
        if id == 4 {
            c.admin(&["RAFT.PROMOTE", "4"]);
            assert_eq!(c.admin(&["RAFT.TRANSFER", "4"]), Reply::Simple("OK".into()));
        }
    }
    assert_eq!(c.field(5, "raft_leader_id").as_deref(), Some("4"));
    assert_eq!(c.field(5, "raft_membership").as_deref(), Some("learner"));
}
