//! Snapshots and log compaction (§7 of the Raft paper, chapter 5 of the
//! thesis): members that fall behind the leader's compacted log catch up by
//! InstallSnapshot, over a network that loses and reorders chunks, through
//! crashes; and the corner cases the thesis names, on nodes driven by hand.

use std::time::Duration;

use raft_proto::sim::{encode_write, Cluster};
use raft_proto::{
    Action, Bytes, Config, Entry, EntryPayload, Event, HardState, InstallSnapshot, LogIndex,
    Membership, Message, MessageBody, Node, NodeId, PeerFault, PersistentState,
    RequestVoteResponse, Role, SnapshotMeta, Term, Time,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A 3-member cluster that snapshots every `every` applied entries and
/// keeps `trailing` entries behind each snapshot, with small chunks so
/// that a transfer takes several.
fn compacting_cluster(seed: u64, every: u64, trailing: u64) -> Cluster {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut config = Config::new(NodeId(1), ids);
    config.compaction_trailing_entries = trailing;
    config.snapshot_chunk_bytes = 48;
    config.max_inflight_appends = 4;
    let mut c = Cluster::with_config(config, seed);
    c.net.snapshot_every = every;
    c
}

fn elect(c: &mut Cluster) -> NodeId {
    assert!(
        c.run_until_pred(5 * SEC, |c| c.leader().is_some()),
        "no leader elected"
    );
    c.leader().unwrap()
}

/// Writes `n` values to keys 0..10 on the leader and waits until the
/// leader applied them all. Returns the last index.
fn write_many(c: &mut Cluster, n: u64) -> LogIndex {
    let mut last = LogIndex(0);
    for v in 1..=n {
        let leader = c.leader().expect("a leader");
        let id = c
            .propose(leader, encode_write(v % 10, v))
            .expect("leader accepts");
        last = id.index;
        if v % 16 == 0 {
            c.run_for(5 * MS);
        }
    }
    let leader = c.leader().expect("a leader");
    assert!(
        c.run_until_pred(10 * SEC, |c| c
            .node(leader)
            .is_some_and(|n| n.last_applied() >= last)),
        "writes not committed"
    );
    last
}

fn follower(c: &Cluster) -> NodeId {
    let l = c.leader().unwrap();
    *c.ids().iter().find(|&&n| n != l).unwrap()
}

fn caught_up(c: &mut Cluster, f: NodeId, index: LogIndex) -> bool {
    c.run_until_pred(10 * SEC, |c| {
        c.node(f).is_some_and(|n| n.last_applied() >= index)
    })
}

fn same_values(c: &Cluster, a: NodeId, b: NodeId) {
    for key in 0..10 {
        assert_eq!(c.value(a, key), c.value(b, key), "key {key} differs");
    }
}

#[test]
fn a_follower_that_missed_compacted_entries_catches_up_by_snapshot() {
    let mut c = compacting_cluster(1, 20, 5);
    let l = elect(&mut c);
    let f = follower(&c);
    c.isolate(f);
    let last = write_many(&mut c, 200);
    let leader = c.node(l).unwrap().status();
    assert!(
        leader.log_start_index > LogIndex(100),
        "the leader compacted its log: {leader:?}"
    );
    assert_eq!(c.snapshot_counts().1, 0);
    c.heal();
    assert!(caught_up(&mut c, f, last), "the follower caught up");
    assert!(c.snapshot_counts().1 >= 1, "by installing a snapshot");
    same_values(&c, l, f);
    assert!(c.violation().is_none(), "{:?}", c.violation());
    // And it follows the log from there on.
    let more = write_many(&mut c, 30);
    assert!(caught_up(&mut c, f, more));
    same_values(&c, l, f);
}

#[test]
fn a_follower_a_little_behind_catches_up_from_the_trailing_log() {
    let mut c = compacting_cluster(2, 20, 100);
    let l = elect(&mut c);
    let f = follower(&c);
    c.isolate(f);
    let last = write_many(&mut c, 60);
    c.heal();
    assert!(caught_up(&mut c, f, last));
    assert_eq!(
        c.snapshot_counts().1,
        0,
        "the trailing log held what it missed: no snapshot was sent"
    );
    same_values(&c, l, f);
}

#[test]
fn lost_duplicated_and_reordered_chunks_are_sent_again() {
    for seed in 0..8 {
        let mut c = compacting_cluster(100 + seed, 15, 0);
        let l = elect(&mut c);
        let f = follower(&c);
        c.isolate(f);
        let last = write_many(&mut c, 150);
        c.net.loss = 0.2;
        c.net.duplicate = 0.2;
        c.net.max_delay = 20 * MS;
        c.heal();
        assert!(
            c.run_until_pred(30 * SEC, |c| c
                .node(f)
                .is_some_and(|n| n.last_applied() >= last)),
            "seed {seed}: the follower caught up over a lossy network"
        );
        assert!(c.snapshot_counts().1 >= 1, "seed {seed}: by snapshot");
        same_values(&c, l, f);
        assert!(c.violation().is_none(), "{:?}", c.violation());
    }
}

/// The follower crashes just after installing (its install may not be
/// durable yet) and again in the middle of a transfer; each time it starts
/// from what its disk kept and still catches up, applying nothing twice.
#[test]
fn crashes_during_a_transfer_and_right_after_an_install() {
    for seed in 0..6 {
        let mut c = compacting_cluster(200 + seed, 20, 0);
        let l = elect(&mut c);
        let f = follower(&c);
        c.isolate(f);
        let last = write_many(&mut c, 120);
        c.heal();
        // Mid-transfer: a few milliseconds in.
        c.run_for(Duration::from_micros(1500 + 500 * seed));
        c.crash(f);
        c.run_for(20 * MS);
        c.restart(f);
        let installs = c.snapshot_counts().1;
        assert!(
            c.run_until_pred(10 * SEC, |c| c.snapshot_counts().1 > installs),
            "seed {seed}: a snapshot was installed after the restart"
        );
        // Right after the install, before its sync can complete.
        c.crash(f);
        c.run_for(20 * MS);
        c.restart(f);
        assert!(caught_up(&mut c, f, last), "seed {seed}: caught up");
        same_values(&c, l, f);
        assert!(c.violation().is_none(), "{:?}", c.violation());
    }
}

/// Every member restarts from its snapshot plus the log after it, and
/// applies only what follows the snapshot.
#[test]
fn a_whole_cluster_restarts_from_snapshots() {
    let mut c = compacting_cluster(3, 25, 3);
    elect(&mut c);
    let last = write_many(&mut c, 140);
    let ids = c.ids().to_vec();
    assert!(c.run_until_pred(5 * SEC, |c| ids.iter().all(|&n| c
        .node(n)
        .unwrap()
        .last_applied()
        >= last)));
    for &n in &ids {
        c.crash(n);
    }
    c.run_for(10 * MS);
    for &n in &ids {
        c.restart(n);
        let s = c.node(n).unwrap().status();
        assert!(s.snapshot.is_some(), "n{n} restarted from a snapshot");
        assert!(s.last_applied >= s.snapshot.unwrap().last_index);
    }
    let l = elect(&mut c);
    let more = write_many(&mut c, 10);
    for &n in &ids {
        assert!(caught_up(&mut c, n, more));
        same_values(&c, l, n);
    }
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

// ----- Corner cases, by hand -----------------------------------------------

fn node_with(id: u64, term: u64, terms: &[u64], applied: u64) -> Node {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: Term(t),
            index: LogIndex(i as u64 + 1),
            payload: EntryPayload::Noop,
        })
        .collect();
    let hs = HardState {
        current_term: Term(term),
        voted_for: None,
    };
    let state = PersistentState {
        hard_state: hs,
        snapshot: None,
        entries,
        applied: LogIndex(applied),
    };
    Node::new(Config::new(NodeId(id), voters), state, Time::ZERO).unwrap()
}

fn chunk(term: u64, meta: SnapshotMeta, offset: u64, data: &[u8]) -> Message {
    Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(term),
        body: MessageBody::InstallSnapshot(InstallSnapshot {
            meta,
            offset,
            data: Bytes::copy_from_slice(data),
            round: 0,
        }),
    }
}

fn meta(index: u64, term: u64, len: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(term),
        len,
        membership: Box::new(Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..Membership::default()
        }),
    }
}

fn drain(n: &mut Node) -> Vec<Action> {
    std::iter::from_fn(|| n.poll_action()).collect()
}

/// The answers `n` sent, as trace lines.
fn sent(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m.to_string()),
            _ => None,
        })
        .collect()
}

fn writes_anything(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::WriteSnapshotChunk { .. }
                | Action::InstallSnapshot { .. }
                | Action::AppendLog(_)
                | Action::TruncateLog { .. }
        )
    })
}

#[test]
fn a_stale_install_snapshot_from_an_old_term_changes_nothing() {
    let mut n = node_with(1, 5, &[1, 2, 3], 1);
    let before = n.status();
    n.handle_message(Time::ZERO, chunk(3, meta(3, 3, 4), 0, b"abcd"));
    let actions = drain(&mut n);
    assert!(!writes_anything(&actions), "{actions:?}");
    // The deposed leader learns the newer term from the answer.
    assert_eq!(
        sent(&actions),
        ["n1->n2 t5 InstallSnapshotResponse snap=3 next_offset=0 round=0"]
    );
    assert_eq!(n.status(), before);
}

#[test]
fn a_snapshot_older_than_the_followers_commit_keeps_its_log() {
    // Committed up to 10, entries up to 15.
    let terms = [1; 15];
    let mut n = node_with(1, 1, &terms, 10);
    n.handle_message(Time::ZERO, chunk(1, meta(8, 1, 4), 0, b"abcd"));
    let actions = drain(&mut n);
    assert!(!writes_anything(&actions), "{actions:?}");
    assert_eq!(
        sent(&actions),
        ["n1->n2 t1 InstallSnapshotResponse snap=8 next_offset=4 round=0"],
        "done at once: nothing to install"
    );
    let s = n.status();
    assert_eq!(
        (s.log_start_index, s.last_log_index),
        (LogIndex(0), LogIndex(15))
    );
}

/// §7: "If existing log entry has same index and term as snapshot's last
/// included entry, retain log entries following it."
#[test]
fn an_install_keeps_the_entries_after_a_matching_last_entry() {
    let mut n = node_with(1, 2, &[1, 1, 1, 2, 2], 1);
    n.handle_message(Time::ZERO, chunk(2, meta(3, 1, 6), 0, b"abc"));
    let actions: Vec<Action> = drain(&mut n)
        .into_iter()
        .filter(|a| !matches!(a, Action::Event(_)))
        .collect();
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::WriteSnapshotChunk { offset: 0, .. },
                Action::Send(_)
            ]
        ),
        "{actions:?}"
    );
    // A chunk out of order is not taken: the answer says where to resume.
    n.handle_message(Time::ZERO, chunk(2, meta(3, 1, 6), 5, b"f"));
    assert_eq!(
        sent(&drain(&mut n)),
        ["n1->n2 t2 InstallSnapshotResponse snap=3 next_offset=3 round=0"]
    );
    n.handle_message(Time::ZERO, chunk(2, meta(3, 1, 6), 3, b"def"));
    let actions = drain(&mut n);
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::WriteSnapshotChunk { offset: 3, .. },
                Action::InstallSnapshot { .. }
            ]
        ),
        "{actions:?}"
    );
    // A driver that feeds several messages before it drains: until the
    // install is reported, messages are dropped (as if lost), timers wait
    // and proposals and reads are refused.
    n.handle_message(Time::ZERO, chunk(2, meta(3, 1, 6), 0, b"abc"));
    n.handle_timeout(Time::ZERO + 10 * SEC);
    assert!(n.propose(Time::ZERO, Bytes::from_static(b"x")).is_err());
    assert!(n.read_index(Time::ZERO, 1).is_err());
    assert!(drain(&mut n).is_empty());
    n.handle_snapshot_installed(Time::ZERO, true);
    assert_eq!(
        sent(&drain(&mut n)),
        ["n1->n2 t2 InstallSnapshotResponse snap=3 next_offset=6 round=0"]
    );
    let s = n.status();
    assert_eq!(s.log_start_index, LogIndex(3));
    assert_eq!(s.last_log_index, LogIndex(5), "entries 4 and 5 stay");
    assert_eq!((s.commit_index, s.last_applied), (LogIndex(3), LogIndex(3)));
    assert_eq!(s.snapshot, Some(meta(3, 1, 6)));
}

/// Otherwise the whole log goes: it disagrees with the leader's.
#[test]
fn an_install_replaces_a_log_that_does_not_hold_its_last_entry() {
    let mut n = node_with(1, 3, &[1, 1, 2, 2], 1);
    n.handle_message(Time::ZERO, chunk(3, meta(3, 3, 2), 0, b"xy"));
    assert!(drain(&mut n)
        .iter()
        .any(|a| matches!(a, Action::InstallSnapshot { .. })));
    n.handle_snapshot_installed(Time::ZERO, true);
    drain(&mut n);
    let s = n.status();
    assert_eq!(
        (s.log_start_index, s.last_log_index),
        (LogIndex(3), LogIndex(3))
    );
    assert_eq!(s.last_log_term, Term(3));
}

/// A snapshot that fails the driver's checks is reported and installs
/// nothing; the next transfer starts from the beginning.
#[test]
fn an_invalid_snapshot_is_reported_and_changes_nothing() {
    let mut n = node_with(1, 2, &[1, 1], 1);
    let before = n.status();
    n.handle_message(Time::ZERO, chunk(2, meta(5, 2, 2), 0, b"xy"));
    drain(&mut n);
    n.handle_snapshot_installed(Time::ZERO, false);
    let actions = drain(&mut n);
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Event(Event::PeerFault {
                fault: PeerFault::BadSnapshot { .. },
                ..
            })]
        ),
        "{actions:?}"
    );
    let mut s = n.status();
    s.leader = before.leader;
    assert_eq!(s, before, "nothing installed");
    n.handle_message(Time::ZERO, chunk(2, meta(5, 2, 2), 1, b"y"));
    assert_eq!(
        sent(&drain(&mut n)),
        ["n1->n2 t2 InstallSnapshotResponse snap=5 next_offset=0 round=0"]
    );
}

/// A pre-vote keeps the term: a follower whose timer ran out in the middle
/// of a transfer, and whose pre-vote failed (the leader is alive), takes
/// the leader's next chunk where the transfer stopped.
#[test]
fn a_transfer_resumes_after_a_failed_pre_vote() {
    let mut n = node_with(1, 2, &[1, 1], 1);
    n.handle_message(Time::ZERO, chunk(2, meta(5, 2, 6), 0, b"abc"));
    drain(&mut n);
    let t = n.poll_timeout().expect("an election deadline");
    n.handle_timeout(t);
    assert_eq!(n.role(), Role::PreCandidate);
    drain(&mut n);
    for from in [2, 3] {
        let refusal = RequestVoteResponse {
            pre_vote: true,
            granted: false,
        };
        let msg = Message {
            from: NodeId(from),
            to: NodeId(1),
            term: Term(2),
            body: MessageBody::RequestVoteResponse(refusal),
        };
        n.handle_message(t, msg);
    }
    assert_eq!((n.role(), n.term()), (Role::Follower, Term(2)));
    drain(&mut n);
    n.handle_message(t, chunk(2, meta(5, 2, 6), 3, b"def"));
    let actions: Vec<Action> = drain(&mut n)
        .into_iter()
        .filter(|a| !matches!(a, Action::Event(_)))
        .collect();
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::WriteSnapshotChunk { offset: 3, .. },
                Action::InstallSnapshot { .. }
            ]
        ),
        "{actions:?}"
    );
}

/// A snapshot can only cover what was applied, and so committed: the
/// driver cannot report one beyond.
#[test]
#[should_panic(expected = "beyond the applied index")]
fn a_snapshot_of_uncommitted_entries_is_refused() {
    let mut n = node_with(1, 1, &[1, 1, 1], 1);
    n.handle_snapshot_saved(Time::ZERO, meta(2, 1, 10));
}

/// A leader sends the snapshot to a follower that needs compacted
/// entries, a window of chunks at a time, and replicates the log after
/// it once the follower has it.
#[test]
fn a_leader_sends_its_snapshot_in_a_window_of_chunks() {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let mut config = Config::new(NodeId(1), voters);
    config.snapshot_chunk_bytes = 10;
    config.max_inflight_appends = 2;
    config.compaction_trailing_entries = 0;
    let mut n = Node::new(config, PersistentState::default(), Time::ZERO).unwrap();
    // Win an election, commit a few entries with node 3's help.
    let t = Time::ZERO + SEC;
    n.handle_timeout(t);
    let grant = |pre_vote, term| Message {
        from: NodeId(3),
        to: NodeId(1),
        term: Term(term),
        body: MessageBody::RequestVoteResponse(raft_proto::RequestVoteResponse {
            pre_vote,
            granted: true,
        }),
    };
    n.handle_message(t, grant(true, 1));
    n.handle_message(t, grant(false, 1));
    assert_eq!(n.role(), Role::Leader);
    let ok = |m: u64| Message {
        from: NodeId(3),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::AppendEntriesResponse(raft_proto::AppendEntriesResponse {
            round: 0,
            result: raft_proto::AppendResult::Success {
                match_index: LogIndex(m),
            },
        }),
    };
    // Node 3 holds the no-op: the leader streams to it from there.
    n.handle_message(t, ok(1));
    for v in 0..4u8 {
        let id = n.propose(t, Bytes::from(vec![v])).unwrap();
        // The append goes out at the drain (one per drain, not per
        // proposal); an answer before it would be for an unsent entry.
        drain(&mut n);
        n.handle_log_persisted(t, id.index, Term(1));
        n.handle_message(t, ok(id.index.0));
    }
    assert_eq!(n.commit_index(), LogIndex(5));
    drain(&mut n);
    n.handle_snapshot_saved(t, meta(5, 1, 25));
    assert_eq!(
        drain(&mut n),
        [Action::CompactLog {
            through: LogIndex(5)
        }]
    );
    // Node 2 never answered. The next heartbeat is anchored at the log
    // start, and node 2, whose log is empty, rejects it.
    let t = t + 60 * MS;
    n.handle_timeout(t);
    drain(&mut n);
    let reject = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::AppendEntriesResponse(raft_proto::AppendEntriesResponse {
            round: 0,
            result: raft_proto::AppendResult::Conflict {
                rejected_index: LogIndex(5),
                last_log_index: LogIndex(0),
                conflict_term: None,
                conflict_index: LogIndex(1),
            },
        }),
    };
    n.handle_message(t, reject);
    let chunks: Vec<(u64, usize)> = drain(&mut n)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendSnapshotChunk { message, len } => match message.body {
                MessageBody::InstallSnapshot(is) => Some((is.offset, len)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(chunks, [(0, 10), (10, 10)], "two chunks in flight at most");
    let answer = |next_offset| Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::InstallSnapshotResponse(raft_proto::InstallSnapshotResponse {
            last_index: LogIndex(5),
            next_offset,
            round: 0,
        }),
    };
    // An answer expecting more than was ever sent is a fault.
    n.handle_message(t, answer(22));
    assert!(matches!(
        drain(&mut n).as_slice(),
        [Action::Event(Event::PeerFault {
            fault: PeerFault::ChunkNeverSent { .. },
            ..
        })]
    ));
    n.handle_message(t, answer(10));
    let next: Vec<String> = drain(&mut n)
        .into_iter()
        .filter_map(|a| match a {
            Action::SendSnapshotChunk { message, len } => Some(format!("{message} len={len}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        next,
        ["n1->n2 t1 InstallSnapshot snap=5@t1 len=25 offset=20 data=0 round=1 len=5"]
    );
    // Done: the leader goes on with the log after the snapshot.
    n.handle_message(t, answer(25));
    let after: Vec<String> = drain(&mut n)
        .into_iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        after.iter().all(|m| !m.contains("InstallSnapshot")),
        "{after:?}"
    );
}
