//! Transcript tests, after etcd's `testdata/`: each scenario runs on the
//! simulator with tracing on, and its whole trace (every message delivered,
//! every role, leader and election event, times relative to the start) must
//! equal `testdata/<name>.txt`. A change in protocol behaviour shows up as a
//! diff to review; regenerate with
//!
//! ```text
//! RAFT_UPDATE_TRANSCRIPTS=1 cargo test -p raft-proto --test transcripts
//! ```

use std::path::PathBuf;
use std::time::Duration;

use raft_proto::sim::Cluster;
use raft_proto::Role;

const MS: Duration = Duration::from_millis(1);

fn check(name: &str, about: &str, c: &mut Cluster) {
    let mut text = String::new();
    for line in about.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    for line in c.take_trace() {
        text.push_str(&line);
        text.push('\n');
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(format!("{name}.txt"));
    if std::env::var_os("RAFT_UPDATE_TRANSCRIPTS").is_some() {
        std::fs::write(&path, &text).expect("write transcript");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with RAFT_UPDATE_TRANSCRIPTS=1",
            path.display()
        )
    });
    if want != text {
        let (n, (w, g)) = want
            .lines()
            .zip(text.lines())
            .enumerate()
            .find(|(_, (w, g))| w != g)
            .unwrap_or((
                want.lines().count().min(text.lines().count()),
                ("<end>", "<end>"),
            ));
        panic!(
            "transcript {name} differs at line {}:\n  want: {w}\n  got:  {g}\n\
             if the change is intended, regenerate with RAFT_UPDATE_TRANSCRIPTS=1 and review the diff",
            n + 1
        );
    }
}

fn traced(n: u64, seed: u64) -> Cluster {
    let mut c = Cluster::new(n, seed);
    // In order and at a fixed delay, like one TCP connection on a quiet
    // LAN: the transcript shows the protocol, not network noise.
    c.net.min_delay = MS;
    c.net.max_delay = MS + Duration::from_nanos(1);
    c.enable_trace();
    c
}

#[test]
fn election() {
    let mut c = traced(3, 1);
    assert!(c.run_until_pred(2000 * MS, |c| c.leader().is_some()));
    c.run_for(120 * MS);
    check(
        "election",
        "Three fresh members. The first election timeout to fire starts a pre-vote\n\
         (term 1 asked, nobody's term moves), then the real election; the new\n\
         leader appends its no-op and heartbeats follow every 50 ms.",
        &mut c,
    );
}

#[test]
fn leader_crash_fast_failover() {
    let mut c = traced(3, 2);
    assert!(c.run_until_pred(2000 * MS, |c| c.leader().is_some()));
    c.run_for(200 * MS);
    let old = c.leader().unwrap();
    let _ = c.take_trace();
    c.crash(old);
    assert!(c.run_until_pred(1000 * MS, |c| c.leader().is_some_and(|l| l != old)));
    c.run_for(60 * MS);
    check(
        "leader_crash_fast_failover",
        "The leader's process dies. Its peers see the connection close, stop\n\
         trusting it and pre-vote at once, in turn by rank (no split vote); a new\n\
         leader is elected in a few round trips instead of an election timeout.",
        &mut c,
    );
}

#[test]
fn follower_rejoins_without_disruption() {
    let mut c = traced(3, 3);
    assert!(c.run_until_pred(2000 * MS, |c| c.leader().is_some()));
    c.run_for(200 * MS);
    let leader = c.leader().unwrap();
    let f = *c.ids().iter().find(|&&n| n != leader).unwrap();
    let _ = c.take_trace();
    c.isolate(f);
    c.run_for(1500 * MS);
    c.heal();
    c.run_for(200 * MS);
    assert_eq!(c.leader(), Some(leader));
    check(
        "follower_rejoins_without_disruption",
        "A follower is cut off: it pre-votes in vain (its term never moves) while\n\
         the others keep the leader. When the network heals it hears the leader's\n\
         heartbeat and follows again: same leader, same term.",
        &mut c,
    );
}

#[test]
fn frozen_leader_steps_down_on_thaw() {
    let mut c = traced(3, 4);
    assert!(c.run_until_pred(2000 * MS, |c| c.leader().is_some()));
    c.run_for(200 * MS);
    let old = c.leader().unwrap();
    let _ = c.take_trace();
    c.freeze(old);
    assert!(c.run_until_pred(1000 * MS, |c| c.leader().is_some_and(|l| l != old)));
    c.run_for(100 * MS);
    c.thaw(old);
    assert!(c.run_until_pred(500 * MS, |c| c.node(old).unwrap().role() == Role::Follower));
    c.run_for(60 * MS);
    assert_ne!(c.leader(), Some(old));
    check(
        "frozen_leader_steps_down_on_thaw",
        "The leader is frozen (SIGSTOP): no EOF, so the followers wait out their\n\
         election timeout, then elect a new leader. Thawed, the old leader reads\n\
         what waited in its socket buffers, in order: it refuses the stale\n\
         pre-vote (it still believes it leads), ignores the vote request, and the\n\
         new leader's AppendEntries of term 2 makes it a follower at once. Its own\n\
         heartbeats, sent on waking, are answered with the new term.",
        &mut c,
    );
}
