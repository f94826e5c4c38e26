//! The classic Raft scenarios, and the ones our users run into, on the
//! deterministic simulator. Each reads like the paper's case it covers.

use std::time::Duration;

use raft_proto::sim::{encode_write, Cluster, Completion};
use raft_proto::{
    Action, AppendEntriesResponse, AppendResult, Config, ConfigError, Entry, EntryPayload, Event,
    HardState, LogIndex, Message, MessageBody, Node, NodeId, PeerFault, PersistentState,
    ProposeError, RequestVoteResponse, Role, Term, Time, MAX_ENTRY_LEN,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn elect(c: &mut Cluster) -> NodeId {
    assert!(
        c.run_until_pred(5 * SEC, |c| c.leader().is_some()),
        "no leader elected"
    );
    c.leader().unwrap()
}

/// Proposes on the leader and runs until the leader applied it (it is
/// committed).
fn commit(c: &mut Cluster, value: u64) -> LogIndex {
    let leader = c.leader().expect("a leader");
    let id = c
        .propose(leader, encode_write(1, value))
        .expect("leader accepts");
    assert!(
        c.run_until_pred(5 * SEC, |c| c
            .node(leader)
            .is_some_and(|n| n.last_applied() >= id.index)),
        "entry {} not committed",
        id.index
    );
    id.index
}

/// Commits on the leader and runs until every running node applied it.
fn commit_everywhere(c: &mut Cluster, value: u64) -> LogIndex {
    let index = commit(c, value);
    let ids = c.ids().to_vec();
    assert!(
        c.run_until_pred(5 * SEC, |c| ids.iter().filter(|&&n| c.is_up(n)).all(|&n| c
            .node(n)
            .unwrap()
            .last_applied()
            >= index)),
        "entry {index} not applied everywhere"
    );
    index
}

fn terms(c: &Cluster) -> Vec<Term> {
    c.ids()
        .iter()
        .filter_map(|&n| c.node(n).map(|x| x.term()))
        .collect()
}

// ----- Election (§5.2) ---------------------------------------------------

#[test]
fn initial_election() {
    let mut c = Cluster::new(3, 1);
    let l = elect(&mut c);
    c.run_for(2 * SEC);
    assert_eq!(c.leader(), Some(l), "leader is stable without faults");
    let t = c.node(l).unwrap().term();
    for &n in c.ids() {
        assert_eq!(c.node(n).unwrap().term(), t, "all agree on the term");
        assert_eq!(c.node(n).unwrap().leader(), Some(l), "all know the leader");
    }
}

#[test]
fn reelection_after_leader_dies() {
    let mut c = Cluster::new(3, 2);
    let l1 = elect(&mut c);
    c.crash(l1);
    assert!(c.run_until_pred(2 * SEC, |c| c.leader().is_some_and(|l| l != l1)));
    let l2 = c.leader().unwrap();
    // The old leader returns as a follower; the new one keeps leading.
    c.restart(l1);
    c.run_for(2 * SEC);
    assert_eq!(c.leader(), Some(l2));
    assert_eq!(c.node(l1).unwrap().role(), Role::Follower);
}

#[test]
fn many_elections_with_seven_nodes() {
    let mut c = Cluster::new(7, 3);
    for round in 0..10 {
        let l = elect(&mut c);
        commit(&mut c, round);
        c.crash(l);
        // Keep a majority: bring back the previous victim.
        c.run_for(100 * MS);
        c.restart(l);
    }
    assert!(c.violation().is_none());
}

#[test]
fn no_leader_without_majority() {
    let mut c = Cluster::new(5, 4);
    let l = elect(&mut c);
    let others: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l).collect();
    c.crash(others[0]);
    c.crash(others[1]);
    c.crash(others[2]);
    // CheckQuorum deposes the lone leader; nobody can win.
    c.run_for(5 * SEC);
    assert_eq!(c.leader(), None);
}

// ----- Replication (§5.3) ------------------------------------------------

#[test]
fn basic_agreement() {
    let mut c = Cluster::new(3, 5);
    elect(&mut c);
    for v in 1..=10 {
        commit_everywhere(&mut c, v);
    }
    for &n in c.ids() {
        assert_eq!(c.value(n, 1), Some(10));
    }
}

#[test]
fn agreement_with_a_failed_follower() {
    let mut c = Cluster::new(3, 6);
    let l = elect(&mut c);
    let f = *c.ids().iter().find(|&&n| n != l).unwrap();
    c.crash(f);
    for v in 1..=5 {
        commit(&mut c, v);
    }
    c.restart(f);
    let last = commit_everywhere(&mut c, 6);
    assert!(
        c.node(f).unwrap().last_applied() >= last,
        "the follower caught up"
    );
    assert_eq!(c.value(f, 1), Some(6));
}

#[test]
fn no_commit_without_majority() {
    let mut c = Cluster::new(5, 7);
    let l = elect(&mut c);
    commit(&mut c, 1);
    let before = c.node(l).unwrap().commit_index();
    let others: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l).collect();
    for &n in &others[..3] {
        c.isolate(n);
    }
    let id = c.propose(l, encode_write(1, 2)).unwrap();
    c.run_for(SEC);
    assert_eq!(
        c.node(l).unwrap().commit_index(),
        before,
        "no majority, no commit"
    );
    c.heal();
    assert!(c.run_until_pred(5 * SEC, |c| c.leader().is_some()));
    let _ = id;
}

#[test]
fn concurrent_proposals() {
    let mut c = Cluster::new(3, 8);
    let l = elect(&mut c);
    let ids: Vec<_> = (0..200)
        .map(|v| c.propose(l, encode_write(v % 7, v)).unwrap())
        .collect();
    let last = ids.last().unwrap().index;
    let nodes = c.ids().to_vec();
    assert!(c.run_until_pred(5 * SEC, |c| nodes.iter().all(|&n| c
        .node(n)
        .unwrap()
        .last_applied()
        >= last)));
    for w in ids.windows(2) {
        assert_eq!(
            w[1].index,
            w[0].index.next(),
            "proposals take consecutive indexes"
        );
    }
}

#[test]
fn rejoin_of_old_leader_with_uncommitted_entries() {
    let mut c = Cluster::new(3, 9);
    let l1 = elect(&mut c);
    commit(&mut c, 1);
    // The leader is cut off and takes proposals it can never commit.
    c.isolate(l1);
    for v in 100..105 {
        let _ = c.propose(l1, encode_write(1, v));
    }
    assert!(c.run_until_pred(3 * SEC, |c| c.leader().is_some_and(|l| l != l1)));
    commit(&mut c, 2);
    c.heal();
    let last = commit_everywhere(&mut c, 3);
    assert!(c.node(l1).unwrap().last_applied() >= last);
    assert_eq!(
        c.value(l1, 1),
        Some(3),
        "the old leader's uncommitted writes were overwritten"
    );
}

#[test]
fn backup_of_a_long_divergent_log() {
    // A leader isolated with 500 uncommitted entries; the majority commits
    // 500 others. On return, its log is repaired in few round trips thanks
    // to the conflict hints (one term skipped per round trip).
    let mut c = Cluster::new(5, 10);
    let l1 = elect(&mut c);
    commit(&mut c, 0);
    c.isolate(l1);
    for v in 0..500 {
        let _ = c.propose(l1, encode_write(2, v));
    }
    assert!(c.run_until_pred(3 * SEC, |c| c.leader().is_some_and(|l| l != l1)));
    let l2 = c.leader().unwrap();
    for v in 0..500 {
        c.propose(l2, encode_write(3, v)).unwrap();
    }
    commit(&mut c, 1);
    c.heal();
    c.reset_message_counts();
    let last = commit_everywhere(&mut c, 2);
    assert!(c.node(l1).unwrap().last_applied() >= last);
    let rejections = c
        .messages_sent()
        .get("AppendEntriesResponse")
        .copied()
        .unwrap_or(0);
    assert!(rejections < 200, "repair took {rejections} responses");
}

// ----- Safety (§5.4) ------------------------------------------------------

/// A node driven by hand, for the cases that need exact control.
fn hand_node(id: u64, hs: HardState, terms: &[u64]) -> Node {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: Term(t),
            index: LogIndex(i as u64 + 1),
            payload: EntryPayload::Noop,
        })
        .collect();
    Node::new(
        Config::new(NodeId(id), voters),
        PersistentState {
            snapshot: None,
            hard_state: hs,
            entries,
            applied: LogIndex(0),
        },
        Time::ZERO,
    )
    .unwrap()
}

fn drain(n: &mut Node) -> Vec<Action> {
    std::iter::from_fn(|| n.poll_action()).collect()
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

/// Runs a pre-vote and an election on `n` with grants from 2 and 3.
fn win_election(n: &mut Node, now: Time) {
    n.handle_timeout(now);
    let term = n.term().0;
    for p in [2, 3] {
        let grant = RequestVoteResponse {
            pre_vote: true,
            granted: true,
        };
        n.handle_message(
            now,
            msg(p, 1, term + 1, MessageBody::RequestVoteResponse(grant)),
        );
    }
    for p in [2, 3] {
        let grant = RequestVoteResponse {
            pre_vote: false,
            granted: true,
        };
        n.handle_message(
            now,
            msg(p, 1, term + 1, MessageBody::RequestVoteResponse(grant)),
        );
    }
    assert_eq!(n.role(), Role::Leader);
}

/// On a slow network the votes may come after the candidate's timer ran
/// out and it went back to a pre-vote: they were granted for its term,
/// which the pre-vote did not change, and still elect it.
#[test]
fn late_votes_of_the_current_term_still_elect_a_node_that_went_back_to_pre_vote() {
    let hs = HardState {
        current_term: Term(3),
        voted_for: None,
    };
    let mut n = hand_node(1, hs, &[1, 2]);
    let t = Time::ZERO + SEC;
    n.handle_timeout(t);
    for p in [2, 3] {
        let grant = RequestVoteResponse {
            pre_vote: true,
            granted: true,
        };
        n.handle_message(t, msg(p, 1, 4, MessageBody::RequestVoteResponse(grant)));
    }
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(4)));
    // No answer within the election timeout: back to a pre-vote.
    let later = t + 700 * MS;
    n.handle_timeout(later);
    assert_eq!(n.role(), Role::PreCandidate);
    for p in [2, 3] {
        let grant = RequestVoteResponse {
            pre_vote: false,
            granted: true,
        };
        n.handle_message(later, msg(p, 1, 4, MessageBody::RequestVoteResponse(grant)));
    }
    assert_eq!((n.role(), n.term()), (Role::Leader, Term(4)));
}

/// The votes that elected a leader prove its voters alive within the last
/// election timeout: the first CheckQuorum counts them, so a leader whose
/// first answers are slow keeps its term; silence after that deposes it.
#[test]
fn a_new_leader_is_not_deposed_before_its_voters_could_answer() {
    let hs = HardState {
        current_term: Term(3),
        voted_for: None,
    };
    let mut n = hand_node(1, hs, &[1, 2]);
    let t = Time::ZERO + SEC;
    win_election(&mut n, t);
    drain(&mut n);
    n.handle_timeout(t + 310 * MS);
    assert_eq!(n.role(), Role::Leader, "deposed by the first CheckQuorum");
    n.handle_timeout(t + 620 * MS);
    assert_eq!(n.role(), Role::Follower, "silence deposes it after that");
}

#[test]
fn figure_8_old_term_entries_are_not_committed_by_counting() {
    // S1's log: [1, 2]; it wins term 4 and appends its no-op at index 3.
    let hs = HardState {
        current_term: Term(3),
        voted_for: None,
    };
    let mut s1 = hand_node(1, hs, &[1, 2]);
    let t = Time::ZERO + SEC;
    win_election(&mut s1, t);
    assert_eq!(s1.term(), Term(4));
    assert_eq!(s1.last_log_index(), LogIndex(3));
    drain(&mut s1);
    // The driver reports its own log durable (the no-op included).
    s1.handle_log_persisted(t, LogIndex(3), Term(4));
    // S2 and S3 now hold index 2 (term 2): a majority with S1, but of an
    // old term. §5.4.2: it must not be committed by counting.
    for p in [2, 3] {
        let r = AppendEntriesResponse {
            round: 0,
            result: AppendResult::Success {
                match_index: LogIndex(2),
            },
        };
        s1.handle_message(t, msg(p, 1, 4, MessageBody::AppendEntriesResponse(r)));
    }
    assert_eq!(
        s1.commit_index(),
        LogIndex(0),
        "Figure 8: a term-2 entry on a majority is not committed"
    );
    // Once the term-4 entry is on a majority, everything up to it commits.
    let r = AppendEntriesResponse {
        round: 0,
        result: AppendResult::Success {
            match_index: LogIndex(3),
        },
    };
    s1.handle_message(
        t,
        msg(2, 1, 4, MessageBody::AppendEntriesResponse(r.clone())),
    );
    assert_eq!(s1.commit_index(), LogIndex(0));
    s1.handle_message(t, msg(3, 1, 4, MessageBody::AppendEntriesResponse(r)));
    assert_eq!(s1.commit_index(), LogIndex(3));
}

#[test]
fn leader_counts_itself_only_once_its_log_is_durable() {
    // Thesis §10.2.1: the leader sends AppendEntries before its own fsync
    // completes, so one follower's ack must not commit an entry the leader
    // has not yet made durable: the leader could crash, lose it, and with
    // the other follower outvote the one that holds it.
    let mut c = Cluster::new(3, 21);
    let l = elect(&mut c);
    commit(&mut c, 1);
    let others: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l).collect();
    c.block(l, others[1]);
    c.stall_disk(l, true); // the leader's disk stalls; the followers' do not
    let id = c.propose(l, encode_write(1, 2)).unwrap();
    c.run_for(200 * MS);
    assert!(
        c.node(others[0]).unwrap().last_log_index() >= id.index,
        "follower 1 holds the entry"
    );
    assert!(c.has_unsynced_entries(l));
    assert!(
        c.node(l).unwrap().commit_index() < id.index,
        "committed on one durable copy of three"
    );
    // Once the second follower gets it, two durable copies commit it
    // without the leader's.
    c.heal();
    assert!(c.run_until_pred(SEC, |c| c.node(l).unwrap().commit_index() >= id.index));
}

/// Under a steady write load the durable index may trail the log for good
/// (every sync ends with newer appends waiting): a driver that reports each
/// sync is correct, and the debug check for drivers that never report must
/// not fire. It used to count from the first append not yet durable until
/// the log was durable to its end (issue 28).
#[test]
fn a_leader_whose_durable_index_always_trails_does_not_trip_the_driver_check() {
    let hs = HardState {
        current_term: Term(1),
        voted_for: None,
    };
    let mut n = hand_node(1, hs, &[1]);
    let mut now = Time::ZERO + SEC;
    win_election(&mut n, now);
    let mut appended: Vec<(LogIndex, Term)> = Vec::new();
    for i in 0..9_000 {
        now = now + 10 * MS;
        let id = n.propose(now, encode_write(1, i)).unwrap();
        appended.push((id.index, id.term));
        // The sync that completes now covered what was appended before
        // the last proposal: one entry always waits.
        if let Some(&(index, term)) = appended.iter().rev().nth(1) {
            n.handle_log_persisted(now, index, term);
        }
        n.handle_timeout(now);
        // The followers hold whatever they are sent.
        for a in drain(&mut n) {
            if let Action::Send(Message {
                to,
                body: MessageBody::AppendEntries(ae),
                ..
            }) = a
            {
                let match_index = ae.prev_log_index.plus(ae.entries.len() as u64);
                let r = AppendEntriesResponse {
                    round: ae.round,
                    result: AppendResult::Success { match_index },
                };
                let answer = msg(to.0, 1, 2, MessageBody::AppendEntriesResponse(r));
                n.handle_message(now, answer);
            }
        }
        drain(&mut n);
        assert_eq!(n.role(), Role::Leader);
    }
    assert!(now > Time::ZERO + 90 * SEC);
    assert!(n.commit_index() >= appended[8_990].0);
}

#[test]
fn election_restriction_refuses_a_stale_log() {
    // §5.4.1: a voter whose log is more up to date refuses its vote.
    let hs = HardState {
        current_term: Term(2),
        voted_for: None,
    };
    let mut voter = hand_node(2, hs, &[1, 2]);
    let rv = raft_proto::RequestVote {
        pre_vote: false,
        leadership_transfer: false,
        last_log_index: LogIndex(5),
        last_log_term: Term(1),
    };
    voter.handle_message(Time::ZERO + SEC, msg(1, 2, 3, MessageBody::RequestVote(rv)));
    let actions = drain(&mut voter);
    let granted = actions.iter().any(|a| {
        matches!(
            a,
            Action::Send(Message {
                body: MessageBody::RequestVoteResponse(RequestVoteResponse { granted: true, .. }),
                ..
            })
        )
    });
    assert!(!granted);
    assert_eq!(voter.hard_state().voted_for, None);
}

#[test]
fn persistence_across_restarts() {
    let mut c = Cluster::new(3, 11);
    elect(&mut c);
    for v in 1..=20 {
        commit(&mut c, v);
    }
    let ids = c.ids().to_vec();
    let before: Vec<_> = ids.iter().map(|&n| c.persisted_hard_state(n)).collect();
    for &n in &ids {
        c.crash(n);
    }
    for &n in &ids {
        c.restart(n);
        assert_eq!(
            c.node(n).unwrap().term(),
            before[n.0 as usize - 1].current_term,
            "term survives"
        );
        assert!(
            c.node(n).unwrap().last_log_index() >= LogIndex(21),
            "log survives"
        );
    }
    elect(&mut c);
    commit_everywhere(&mut c, 21);
    for &n in &ids {
        assert_eq!(c.value(n, 1), Some(21));
    }
}

// ----- Unreliable networks ------------------------------------------------

#[test]
fn unreliable_network_still_agrees() {
    let mut c = Cluster::new(5, 12);
    c.net.loss = 0.1;
    c.net.duplicate = 0.1;
    c.net.max_delay = 30 * MS;
    elect(&mut c);
    for v in 1..=30 {
        if c.leader().is_none() {
            elect(&mut c);
        }
        let l = c.leader().unwrap();
        let _ = c.propose(l, encode_write(1, v));
        c.run_for(50 * MS);
    }
    c.net.loss = 0.0;
    elect(&mut c);
    commit(&mut c, 1000);
    assert!(c.violation().is_none());
}

#[test]
fn churn_crashes_and_restarts() {
    let mut c = Cluster::new(5, 13);
    elect(&mut c);
    for round in 0..20u64 {
        let victim = c.ids()[(round * 3 % 5) as usize];
        c.crash(victim);
        if let Some(l) = c.leader() {
            let _ = c.propose(l, encode_write(1, round));
        }
        c.run_for(300 * MS);
        c.restart(victim);
        c.run_for(200 * MS);
    }
    elect(&mut c);
    commit(&mut c, 99);
    assert!(c.violation().is_none());
}

// ----- What users run into -------------------------------------------------

#[test]
fn steady_state_has_no_elections_and_heartbeats_reset_every_timer() {
    let mut c = Cluster::new(3, 14);
    let l = elect(&mut c);
    c.run_for(SEC);
    let term = c.node(l).unwrap().term();
    let hb = Duration::from_millis(50);
    let min_timeout = Duration::from_millis(300);
    let followers: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l).collect();
    c.reset_message_counts();
    // 10,000 heartbeat intervals, checked after every single step: no
    // role or term change, and every follower's election deadline stays at
    // least (min timeout - one interval - max delay) ahead: every heartbeat
    // pushed it forward.
    let end = c.now() + hb * 10_000;
    let ok = c.run_until_pred(hb * 10_001, |c| {
        assert_eq!(c.leader(), Some(l));
        for &f in &followers {
            let n = c.node(f).unwrap();
            assert_eq!(n.term(), term, "a follower's term changed");
            assert_eq!(n.role(), Role::Follower);
            let ahead = n.poll_timeout().unwrap() - c.now();
            assert!(
                ahead >= min_timeout - hb - 2 * MS,
                "follower {f} timer not reset: {ahead:?} left"
            );
        }
        c.now() >= end
    });
    assert!(ok);
    let beats = c.messages_sent()["Heartbeat"];
    // One heartbeat per interval per follower (+1 for the boundary).
    assert!(
        beats <= 2 * 10_001,
        "{beats} heartbeats for 10,000 intervals"
    );
    assert!(beats >= 2 * 9_999);
    assert!(!c.messages_sent().contains_key("PreVote"));
    assert!(!c.messages_sent().contains_key("RequestVote"));
}

#[test]
fn first_election_and_replication_take_few_messages() {
    let mut c = Cluster::new(3, 15);
    // In order, like a TCP connection: every reordering would cost a
    // rejection and a resend, which is not what this counts.
    c.net.max_delay = c.net.min_delay + Duration::from_nanos(1);
    elect(&mut c);
    let m = c.messages_sent().clone();
    // Pre-vote and vote: a request and a response per peer each (2 peers).
    assert!(m.get("PreVote").copied().unwrap_or(0) <= 4, "{m:?}");
    assert!(m.get("RequestVote").copied().unwrap_or(0) <= 4, "{m:?}");
    c.run_for(100 * MS);
    c.reset_message_counts();
    let l = c.leader().unwrap();
    for v in 0..10 {
        c.propose(l, encode_write(1, v)).unwrap();
    }
    c.run_for(10 * MS);
    let m = c.messages_sent().clone();
    // Ten proposals in one go: pipelined appends, at most one per proposal
    // per follower, and their answers.
    assert!(m.get("AppendEntries").copied().unwrap_or(0) <= 20, "{m:?}");
}

#[test]
fn follower_cut_off_and_back_changes_nothing() {
    let mut c = Cluster::new(3, 16);
    let l = elect(&mut c);
    commit(&mut c, 1);
    let term = c.node(l).unwrap().term();
    let f = *c.ids().iter().find(|&&n| n != l).unwrap();
    c.isolate(f);
    c.run_for(5 * SEC); // many election timeouts: f pre-votes in vain
    assert_eq!(
        c.node(f).unwrap().term(),
        term,
        "pre-vote kept the cut-off follower's term"
    );
    c.heal();
    c.run_for(2 * SEC);
    assert_eq!(c.leader(), Some(l), "the leader was not unseated");
    assert_eq!(terms(&c), vec![term; 3], "no term changed");
    commit(&mut c, 2);
}

#[test]
fn leader_crash_with_link_report_fails_over_in_round_trips() {
    let mut c = Cluster::new(3, 17);
    let l = elect(&mut c);
    c.run_for(SEC);
    let t0 = c.now();
    c.crash(l); // peers see EOF 1 ms later
    assert!(c.run_until_pred(SEC, |c| c.leader().is_some()));
    let took = c.now() - t0;
    // EOF (1 ms) + jitter below one heartbeat (50 ms) + a few round trips
    // (<= 2 ms each): far below the 300 ms minimum election timeout.
    assert!(took < Duration::from_millis(60), "failover took {took:?}");
}

#[test]
fn frozen_leader_is_replaced_within_an_election_timeout() {
    let mut c = Cluster::new(3, 18);
    let l = elect(&mut c);
    c.run_for(SEC);
    let t0 = c.now();
    c.freeze(l); // no EOF: only the election timeout notices
    assert!(c.run_until_pred(2 * SEC, |c| c.leader().is_some_and(|x| x != l)));
    let took = c.now() - t0;
    assert!(
        took <= Duration::from_millis(600 + 10),
        "failover took {took:?}"
    );
    // Thawed, the old leader steps down quietly.
    c.thaw(l);
    c.run_for(SEC);
    assert_eq!(c.node(l).unwrap().role(), Role::Follower);
    commit(&mut c, 5);
}

#[test]
fn one_broken_link_does_not_force_an_election() {
    // The driver reports the link to the leader lost on one follower only
    // (its TCP connection was reset); the other still hears the leader.
    let mut c = Cluster::new(3, 19);
    let l = elect(&mut c);
    c.run_for(SEC);
    let term = c.node(l).unwrap().term();
    let f = *c.ids().iter().find(|&&n| n != l).unwrap();
    c.partition(&[f], true);
    c.heal(); // only the connection reset happened; traffic flows again
    c.run_for(3 * SEC);
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.node(l).unwrap().term(), term);
}

/// Runs until a completion for read `id` arrives (or `d` passes).
fn await_read(c: &mut Cluster, id: u64, d: Duration) -> Option<Completion> {
    let deadline = c.now() + d;
    while c.now() < deadline {
        c.run_until(deadline);
        for done in c.take_completions() {
            match &done {
                Completion::ReadReady { id: r, .. } | Completion::ReadFailed { id: r, .. }
                    if *r == id =>
                {
                    return Some(done)
                }
                _ => {}
            }
        }
    }
    None
}

#[test]
fn reads_see_the_latest_commit_and_fail_on_leader_loss() {
    let mut c = Cluster::new(3, 20);
    let l = elect(&mut c);
    commit(&mut c, 7);
    // §6.4: confirmed by a heartbeat round, served after applying.
    c.read(l, 1, 1).unwrap();
    match await_read(&mut c, 1, SEC) {
        Some(Completion::ReadReady { value, .. }) => assert_eq!(value, Some(7)),
        other => panic!("read not served: {other:?}"),
    }
    // A leader cut off cannot confirm itself: the read is never served,
    // and fails when CheckQuorum deposes the leader.
    c.isolate(l);
    c.read(l, 2, 1).unwrap();
    match await_read(&mut c, 2, 2 * SEC) {
        Some(Completion::ReadFailed { .. }) => {}
        other => panic!("a partitioned leader answered a read: {other:?}"),
    }
    // Followers redirect writes to the leader they know, and serve reads
    // with a read index from it (thesis §6.4).
    c.heal();
    let l2 = elect(&mut c);
    c.run_for(SEC);
    let f = *c.ids().iter().find(|&&n| n != l2).unwrap();
    assert!(
        matches!(c.propose(f, encode_write(1, 1)), Err(ProposeError::NotLeader { leader: Some(x) }) if x == l2)
    );
    c.read(f, 3, 1).unwrap();
    match await_read(&mut c, 3, SEC) {
        Some(Completion::ReadReady { node, value, .. }) => {
            assert_eq!((node, value), (f, Some(7)))
        }
        other => panic!("the follower did not serve the read: {other:?}"),
    }
}

/// A follower still attached to a deposed leader (CheckQuorum off, so the
/// old leader keeps believing it leads) must not serve what that leader
/// last committed: the old leader cannot get its read confirmed by a
/// majority, so the read waits, while the majority commits a newer value.
#[test]
fn a_follower_of_a_deposed_leader_does_not_serve_stale_reads() {
    let ids: Vec<NodeId> = (1..=5).map(NodeId).collect();
    let mut config = Config::new(NodeId(1), ids);
    config.check_quorum = false;
    let mut c = Cluster::with_config(config, 21);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 7);
    let f = *c.ids().iter().find(|&&n| n != l).unwrap();
    c.partition(&[l, f], false);
    let rest: Vec<NodeId> = c
        .ids()
        .iter()
        .copied()
        .filter(|&n| n != l && n != f)
        .collect();
    assert!(
        c.run_until_pred(5 * SEC, |c| rest
            .iter()
            .any(|&n| c.node(n).unwrap().role() == Role::Leader)),
        "the majority elects a leader"
    );
    let l2 = *rest
        .iter()
        .find(|&&n| c.node(n).unwrap().role() == Role::Leader)
        .unwrap();
    let id = c.propose(l2, encode_write(1, 8)).unwrap();
    assert!(c.run_until_pred(5 * SEC, |c| c.node(l2).unwrap().last_applied() >= id.index));
    assert_eq!(c.node(f).unwrap().leader(), Some(l), "f still follows l");
    c.read(f, 1, 1).unwrap();
    match await_read(&mut c, 1, 2 * SEC) {
        None | Some(Completion::ReadFailed { .. }) => {}
        Some(other) => panic!("a stale read was served: {other:?}"),
    }
}

// ----- Impossible messages: dropped, reported, harmless --------------------
//
// A frame on a peer link may come from a broken or hostile sender. Each
// message below is one no correct member sends; the node must drop it
// whole (term, vote, log, commit and role as before), report it as
// `Event::PeerFault` naming the sender, and the cluster must go on.

/// Injects `msg` as a forged frame and checks that its addressee dropped
/// it, reported `fault` against its sender, and changed nothing.
fn assert_dropped(c: &mut Cluster, msg: Message, fault: PeerFault) {
    let (to, from) = (msg.to, msg.from);
    let state = |c: &Cluster| {
        let n = c.node(to).unwrap();
        (n.status(), n.poll_timeout())
    };
    let before = state(c);
    let persisted = c.persisted_hard_state(to);
    let faults = c.peer_faults().len();
    assert!(c.inject(msg), "n{to} is up");
    assert_eq!(
        &c.peer_faults()[faults..],
        &[(to, Event::PeerFault { peer: from, fault })],
        "reported against the sender"
    );
    assert_eq!(state(c), before, "nothing changed, not even a timer");
    assert_eq!(c.persisted_hard_state(to), persisted, "nothing persisted");
    assert!(c.violation().is_none());
}

/// A cluster with a leader, everything committed everywhere, and entries
/// of two terms: index 1 (term t1 no-op), 2 (t1 write), 3 (t2 no-op),
/// 4 (t2 write), where t1 < t2.
fn cluster_with_two_terms(seed: u64) -> (Cluster, NodeId) {
    let mut c = Cluster::new(3, seed);
    let l1 = elect(&mut c);
    commit_everywhere(&mut c, 1);
    c.crash(l1);
    assert!(c.run_until_pred(2 * SEC, |c| c.leader().is_some_and(|l| l != l1)));
    c.restart(l1);
    commit_everywhere(&mut c, 2);
    let l = c.leader().unwrap();
    assert_eq!(c.node(l).unwrap().commit_index(), LogIndex(4));
    (c, l)
}

fn heartbeat(prev: (u64, u64), commit: u64) -> MessageBody {
    MessageBody::AppendEntries(raft_proto::AppendEntries {
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries: vec![],
        leader_commit: LogIndex(commit),
        round: 0,
    })
}

fn follower_of(c: &Cluster, l: NodeId) -> NodeId {
    *c.ids().iter().find(|&&n| n != l).unwrap()
}

#[test]
fn a_leader_drops_append_entries_from_a_second_leader_of_its_term() {
    // §5.2 Election Safety: at most one leader per term. This used to
    // crash the leader ("election safety violated").
    let mut c = Cluster::new(3, 30);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = follower_of(&c, l);
    let term = c.node(l).unwrap().term();
    let last = c.node(l).unwrap().last_log_index().0;
    let forged = msg(f.0, l.0, term.0, heartbeat((last, term.0), last));
    assert_dropped(&mut c, forged, PeerFault::SecondLeader { term, leader: l });
    commit_everywhere(&mut c, 2);
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.node(l).unwrap().term(), term);
}

#[test]
fn a_follower_drops_append_entries_from_a_second_leader_of_its_term() {
    let mut c = Cluster::new(3, 31);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let others: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l).collect();
    let term = c.node(l).unwrap().term();
    let forged = msg(others[1].0, others[0].0, term.0, heartbeat((0, 0), 0));
    assert_dropped(&mut c, forged, PeerFault::SecondLeader { term, leader: l });
    commit_everywhere(&mut c, 2);
    assert_eq!(c.node(others[0]).unwrap().leader(), Some(l));
}

#[test]
fn a_follower_drops_append_entries_that_contradict_a_committed_entry() {
    // §5.4 Log Matching: a leader of our term holds every committed entry,
    // so a prev_log_term that differs at a committed index is a lie. This
    // used to crash the follower ("log matching violated").
    let (mut c, l) = cluster_with_two_terms(32);
    let f = follower_of(&c, l);
    let t1 = c.node(f).unwrap().entry(LogIndex(2)).unwrap().term;
    let t2 = c.node(l).unwrap().term();
    assert!(t1 < t2);
    let forged = msg(l.0, f.0, t2.0, heartbeat((2, t2.0), 4));
    assert_dropped(
        &mut c,
        forged,
        PeerFault::ConflictsWithCommitted {
            index: LogIndex(2),
            term: t2,
            committed_term: t1,
            commit_index: LogIndex(4),
        },
    );
    // From a (claimed) later term too, and the claim does not even raise
    // the follower's term.
    let later = Term(t2.0 + 1);
    let forged = msg(l.0, f.0, later.0, heartbeat((2, later.0), 4));
    assert_dropped(
        &mut c,
        forged,
        PeerFault::ConflictsWithCommitted {
            index: LogIndex(2),
            term: later,
            committed_term: t1,
            commit_index: LogIndex(4),
        },
    );
    commit_everywhere(&mut c, 3);
}

#[test]
fn a_follower_drops_append_entries_that_would_truncate_a_committed_entry() {
    // §5.4.3 State Machine Safety: a committed entry is never replaced.
    // This used to crash the follower ("truncating committed entry").
    let (mut c, l) = cluster_with_two_terms(33);
    let f = follower_of(&c, l);
    let t1 = c.node(f).unwrap().entry(LogIndex(1)).unwrap().term;
    let t2 = c.node(l).unwrap().term();
    let forged = msg(
        l.0,
        f.0,
        t2.0,
        MessageBody::AppendEntries(raft_proto::AppendEntries {
            prev_log_index: LogIndex(1),
            prev_log_term: t1,
            entries: vec![Entry {
                term: t2,
                index: LogIndex(2),
                payload: EntryPayload::Noop,
            }],
            leader_commit: LogIndex(4),
            round: 0,
        }),
    );
    assert_dropped(
        &mut c,
        forged,
        PeerFault::ConflictsWithCommitted {
            index: LogIndex(2),
            term: t2,
            committed_term: t1,
            commit_index: LogIndex(4),
        },
    );
    assert_eq!(c.node(f).unwrap().entry(LogIndex(2)).unwrap().term, t1);
    assert_eq!(c.persisted_term_at(f, LogIndex(2)), Some(t1));
    commit_everywhere(&mut c, 3);
}

#[test]
fn a_term_above_the_maximum_is_dropped_and_elections_go_on() {
    // An AppendEntriesResponse with term 2^64 - 1 used to be adopted and
    // saved, and every later election panicked on "term overflow". The
    // codec refuses it; a driver that skips the codec meets the node's own
    // check.
    let mut c = Cluster::new(3, 34);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = follower_of(&c, l);
    let r = AppendEntriesResponse {
        round: 0,
        result: AppendResult::Success {
            match_index: LogIndex(0),
        },
    };
    for term in [u64::MAX, Term::MAX.0 + 1] {
        let forged = msg(
            f.0,
            l.0,
            term,
            MessageBody::AppendEntriesResponse(r.clone()),
        );
        assert_dropped(&mut c, forged, PeerFault::TermAboveMax { term: Term(term) });
    }
    // A vote request with such a term, to a follower.
    let rv = raft_proto::RequestVote {
        pre_vote: false,
        leadership_transfer: false,
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
    };
    let forged = msg(l.0, f.0, u64::MAX, MessageBody::RequestVote(rv));
    assert_dropped(
        &mut c,
        forged,
        PeerFault::TermAboveMax {
            term: Term(u64::MAX),
        },
    );
    // Elections still work.
    c.crash(l);
    assert!(c.run_until_pred(2 * SEC, |c| c.leader().is_some_and(|x| x != l)));
    c.restart(l);
    commit_everywhere(&mut c, 2);
}

#[test]
fn a_leader_drops_a_success_for_entries_it_never_sent_that_peer() {
    // With a follower down, the leader sends it one probe and then waits:
    // entries appended since were never sent to it, so it cannot have
    // them. (Before, such a claim was believed.)
    let mut c = Cluster::new(3, 35);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = follower_of(&c, l);
    c.crash(f);
    c.run_for(50 * MS);
    for v in 2..=5 {
        commit(&mut c, v);
    }
    let node = c.node(l).unwrap();
    let (term, last) = (node.term(), node.last_log_index());
    let r = AppendEntriesResponse {
        round: 0,
        result: AppendResult::Success { match_index: last },
    };
    let forged = msg(f.0, l.0, term.0, MessageBody::AppendEntriesResponse(r));
    let faults = c.peer_faults().len();
    let before = c.node(l).unwrap().status();
    assert!(c.inject(forged));
    match &c.peer_faults()[faults..] {
        [(
            to,
            Event::PeerFault {
                peer,
                fault:
                    PeerFault::MatchNeverSent {
                        match_index,
                        sent_index,
                    },
            },
        )] => {
            assert_eq!((*to, *peer, *match_index), (l, f, last));
            assert!(*sent_index < last, "sent {sent_index}");
        }
        other => panic!("not reported: {other:?}"),
    }
    assert_eq!(c.node(l).unwrap().status(), before);
    c.restart(f);
    commit_everywhere(&mut c, 6);
}

#[test]
fn a_leader_drops_a_rejection_of_an_index_it_never_sent() {
    let mut c = Cluster::new(3, 36);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = follower_of(&c, l);
    let node = c.node(l).unwrap();
    let (term, last) = (node.term(), node.last_log_index().0);
    let r = AppendEntriesResponse {
        round: 0,
        result: AppendResult::Conflict {
            rejected_index: LogIndex(last + 3),
            last_log_index: LogIndex(last + 1),
            conflict_term: None,
            conflict_index: LogIndex(last + 2),
        },
    };
    let forged = msg(f.0, l.0, term.0, MessageBody::AppendEntriesResponse(r));
    assert_dropped(
        &mut c,
        forged,
        PeerFault::RejectNeverSent {
            rejected_index: LogIndex(last + 3),
            sent_index: LogIndex(last),
        },
    );
    commit_everywhere(&mut c, 2);
}

#[test]
fn a_leader_drops_an_answer_to_a_round_it_never_started() {
    let mut c = Cluster::new(3, 37);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = follower_of(&c, l);
    let term = c.node(l).unwrap().term();
    let r = AppendEntriesResponse {
        round: u64::MAX,
        result: AppendResult::Success {
            match_index: LogIndex(0),
        },
    };
    let forged = msg(f.0, l.0, term.0, MessageBody::AppendEntriesResponse(r));
    let faults = c.peer_faults().len();
    assert!(c.inject(forged));
    assert!(matches!(
        &c.peer_faults()[faults..],
        [(_, Event::PeerFault { peer, fault: PeerFault::RoundNeverSent { round: u64::MAX, .. } })] if *peer == f
    ));
    commit_everywhere(&mut c, 2);
}

#[test]
fn a_message_that_skipped_the_codec_meets_the_same_rules() {
    // A driver may build messages without the codec; what the codec would
    // refuse must not reach the handlers' assertions (here: a gap in the
    // entries, which used to fail "log append must be contiguous").
    let mut c = Cluster::new(3, 38);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = follower_of(&c, l);
    let node = c.node(l).unwrap();
    let (term, last) = (node.term(), node.last_log_index().0);
    let gap = MessageBody::AppendEntries(raft_proto::AppendEntries {
        prev_log_index: LogIndex(last),
        prev_log_term: term,
        entries: vec![Entry {
            term,
            index: LogIndex(last + 2),
            payload: EntryPayload::Noop,
        }],
        leader_commit: LogIndex(last),
        round: 0,
    });
    assert_dropped(
        &mut c,
        msg(l.0, f.0, term.0, gap),
        PeerFault::Malformed {
            rule: "entry indexes are not consecutive from prev_log_index + 1",
        },
    );
    commit_everywhere(&mut c, 2);
}

#[test]
fn a_node_at_the_maximum_term_does_not_campaign_and_does_not_panic() {
    // A term of exactly Term::MAX passes the codec, so a node can be
    // pushed there, though only if two voters vouch for it (one message
    // moves a term by Term::MAX_JUMP at most; with a leader, not at all). It has no term left to
    // campaign in: it keeps waking once per election timeout, sends
    // nothing, and still votes.
    let hs = HardState {
        current_term: Term(1),
        voted_for: None,
    };
    let mut n = hand_node(1, hs, &[1]);
    let rv = raft_proto::RequestVote {
        pre_vote: false,
        leadership_transfer: false,
        last_log_index: LogIndex(1),
        last_log_term: Term(1),
    };
    n.handle_message(
        Time::ZERO + SEC,
        msg(2, 1, Term::MAX.0, MessageBody::RequestVote(rv.clone())),
    );
    // One voter's word moves a node that has no leader by the bound only.
    assert_eq!(n.term(), Term(1).plus_max_jump());
    assert_eq!(n.term_claims(), [(NodeId(2), Term::MAX)]);
    n.handle_message(
        Time::ZERO + SEC,
        msg(3, 1, Term::MAX.0, MessageBody::RequestVote(rv.clone())),
    );
    assert_eq!(n.term(), Term::MAX);
    assert_eq!(n.hard_state().voted_for, Some(NodeId(3)));
    assert!(n.term_claims().is_empty());
    drain(&mut n);
    let mut now = Time::ZERO + SEC;
    for _ in 0..10 {
        let deadline = n.poll_timeout().unwrap();
        assert!(deadline > now, "the node would spin");
        now = deadline;
        n.handle_timeout(now);
        let actions = drain(&mut n);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Send(_))),
            "campaigned at Term::MAX: {actions:?}"
        );
        assert_eq!(n.role(), Role::Follower);
        assert_eq!(n.term(), Term::MAX);
    }
    // A node that restarts there behaves the same.
    let hs = HardState {
        current_term: Term::MAX,
        voted_for: None,
    };
    let mut n = hand_node(1, hs, &[1]);
    n.handle_timeout(n.poll_timeout().unwrap());
    assert!(drain(&mut n).is_empty());
    n.handle_message(
        Time::ZERO + SEC,
        msg(3, 1, Term::MAX.0, MessageBody::RequestVote(rv)),
    );
    assert_eq!(n.hard_state().voted_for, Some(NodeId(3)), "still votes");
}

#[test]
fn a_persisted_term_above_the_maximum_is_refused_at_start() {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let state = PersistentState {
        snapshot: None,
        hard_state: HardState {
            current_term: Term(u64::MAX),
            voted_for: None,
        },
        entries: vec![],
        applied: LogIndex(0),
    };
    let err = Node::new(Config::new(NodeId(1), voters), state, Time::ZERO).unwrap_err();
    assert_eq!(
        err,
        ConfigError::PersistedTermAboveMax {
            term: Term(u64::MAX)
        }
    );
}

#[test]
fn proposals_above_max_entry_len_are_refused_before_anything_is_appended() {
    // A 5 MiB command once passed every check on the leader, travelled in
    // a 16 MiB frame, and crashed the followers' storage (4 MiB limit).
    let mut c = Cluster::new(3, 39);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let before = c.node(l).unwrap().status();
    let too_large = bytes::Bytes::from(vec![0u8; MAX_ENTRY_LEN + 1]);
    assert_eq!(
        c.propose(l, too_large.clone()),
        Err(ProposeError::TooLarge {
            len: MAX_ENTRY_LEN + 1,
            max: MAX_ENTRY_LEN
        })
    );
    assert_eq!(c.node(l).unwrap().status(), before, "nothing appended");
    // Retrying elsewhere would not help either: a follower says the same.
    let f = follower_of(&c, l);
    assert!(matches!(
        c.propose(f, too_large),
        Err(ProposeError::TooLarge { .. })
    ));
    // The largest entry allowed commits everywhere (crossing the codec).
    let id = c
        .propose(l, bytes::Bytes::from(vec![1u8; MAX_ENTRY_LEN]))
        .unwrap();
    let ids = c.ids().to_vec();
    assert!(c.run_until_pred(5 * SEC, |c| ids.iter().all(|&n| c
        .node(n)
        .unwrap()
        .last_applied()
        >= id.index)));
    commit_everywhere(&mut c, 2);
}

#[test]
fn a_durable_state_machine_is_not_applied_twice_after_a_restart() {
    // A driver whose state machine survives restarts says how far it got;
    // the node takes those entries as committed and applies only the rest.
    let entries: Vec<Entry> = (1..=3)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: EntryPayload::Noop,
        })
        .collect();
    let state = |applied| PersistentState {
        snapshot: None,
        hard_state: HardState {
            current_term: Term(1),
            voted_for: Some(NodeId(1)),
        },
        entries: entries.clone(),
        applied: LogIndex(applied),
    };
    let n = Node::new(
        Config::new(NodeId(1), vec![NodeId(1)]),
        state(2),
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(n.last_applied(), LogIndex(2));
    assert_eq!(n.commit_index(), LogIndex(2));
    let err = Node::new(
        Config::new(NodeId(1), vec![NodeId(1)]),
        state(4),
        Time::ZERO,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ConfigError::AppliedBeyondLog {
            applied: LogIndex(4),
            last_index: LogIndex(3)
        }
    );
    // A single member becomes leader and commits; it applies 3 and its
    // no-op, never 1 or 2 again.
    let mut n = Node::new(
        Config::new(NodeId(1), vec![NodeId(1)]),
        state(2),
        Time::ZERO,
    )
    .unwrap();
    let mut d = raft_proto::driver::Driver::new();
    struct Mem;
    impl raft_proto::driver::LogStore for Mem {
        type Error = ();
        fn save_hard_state(&mut self, _: HardState) -> Result<(), ()> {
            Ok(())
        }
        fn truncate_log(&mut self, _: LogIndex) -> Result<(), ()> {
            Ok(())
        }
        fn append_log(&mut self, _: &[Entry]) -> Result<(), ()> {
            Ok(())
        }
        fn sync(&mut self) -> Result<bool, ()> {
            Ok(true)
        }
        fn write_snapshot_chunk(
            &mut self,
            _: &raft_proto::SnapshotMeta,
            _: u64,
            _: &[u8],
        ) -> Result<(), ()> {
            unreachable!("no snapshots here")
        }
        fn install_snapshot(&mut self, _: &raft_proto::SnapshotMeta) -> Result<bool, ()> {
            unreachable!("no snapshots here")
        }
        fn compact_log(&mut self, _: LogIndex) -> Result<(), ()> {
            unreachable!("no snapshots here")
        }
        fn read_snapshot_chunk(
            &mut self,
            _: &raft_proto::SnapshotMeta,
            _: u64,
            _: usize,
        ) -> Result<Option<raft_proto::Bytes>, ()> {
            unreachable!("no snapshots here")
        }
    }
    struct Nowhere;
    impl raft_proto::driver::Transport for Nowhere {
        fn send(&mut self, _: Message) {}
    }
    let mut out = Vec::new();
    let t = Time::ZERO + SEC;
    n.handle_timeout(t);
    d.drain(&mut n, t, &mut Mem, &mut Nowhere, &mut out)
        .unwrap();
    let applied: Vec<u64> = out
        .iter()
        .filter_map(|a| match a {
            Action::Apply(e) => Some(e.index.0),
            _ => None,
        })
        .collect();
    assert_eq!(applied, [3, 4]);
}

/// A driver that never calls `handle_log_persisted` leaves its leader unable
/// to count itself; debug builds say so instead of silently stalling.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "with no durability report")]
fn a_driver_that_never_reports_durability_is_told() {
    // One member: it leads at once and commits with its own durable copy.
    let mut n = Node::new(
        Config::new(NodeId(1), vec![NodeId(1)]),
        PersistentState::default(),
        Time::ZERO,
    )
    .unwrap();
    let mut t = Time::ZERO + SEC;
    n.handle_timeout(t);
    assert_eq!(n.role(), Role::Leader);
    // Drain without ever reporting the appends durable, as a driver that
    // forgot handle_log_persisted would: nothing ever commits.
    for _ in 0..100 {
        while n.poll_action().is_some() {}
        assert_eq!(n.commit_index(), LogIndex(0));
        t = t + SEC;
        n.handle_timeout(t);
    }
    panic!("still running: role {:?}, term {}", n.role(), n.term());
}

/// A read fault: a durable record comes back corrupt after a restart. The
/// checksum catches it, the member refuses to start (as raft-node exits 2),
/// nothing of it is applied, and the other two go on.
#[test]
fn a_corrupt_record_is_refused_at_restart_never_applied() {
    let mut c = Cluster::new(3, 77);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    let f = *c.ids().iter().find(|&&n| n != l).unwrap();
    c.crash(f);
    c.net.corrupt_on_restart = 1.0;
    c.restart(f);
    c.net.corrupt_on_restart = 0.0;
    assert!(c.refused(f).is_some(), "a corrupt record was not detected");
    assert!(!c.is_up(f), "a member with a corrupt disk started");
    let _ = c.take_completions();
    // The majority still commits, and the refused member never applies.
    commit(&mut c, 2);
    assert!(c
        .take_completions()
        .iter()
        .all(|x| !matches!(x, Completion::Applied { node, .. } if *node == f)));
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

/// A member flooding the leader with ReadIndex requests takes at most a
/// quarter of the leader's read queue: the rest of its requests are
/// refused at once, and the leader's own clients still find room.
#[test]
fn one_member_takes_at_most_a_share_of_the_read_queue() {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut config = Config::new(NodeId(1), ids);
    config.max_pending_reads = 64;
    let mut c = Cluster::with_config(config, 9);
    let l = elect(&mut c);
    commit_everywhere(&mut c, 1);
    // No heartbeat round completes while the flood arrives: the reads stay
    // queued.
    let others: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l).collect();
    for &n in &others {
        c.block(l, n);
    }
    let f = others[0];
    let term = c.node(l).unwrap().term();
    for id in 0..1_000u64 {
        let msg = Message {
            from: f,
            to: l,
            term,
            body: MessageBody::ReadIndexRequest(raft_proto::ReadIndexRequest { id }),
        };
        assert!(c.inject(msg));
    }
    // The leader's own reads: everything but the member's quarter.
    for id in 0..48u64 {
        assert_eq!(c.read(l, 10_000 + id, 1), Ok(()), "own read {id} refused");
    }
    assert!(c.read(l, 20_000, 1).is_err(), "the queue has a bound");
    assert!(c.violation().is_none(), "{:?}", c.violation());
}
