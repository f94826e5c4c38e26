//! Configuration changes (thesis chapter 4) and leadership transfer (thesis
//! §3.10): the single-server rules, learners, a leader that removes itself,
//! a configuration undone by truncation, configurations in snapshots, and
//! transfers that succeed or are given up.

use std::time::Duration;

use raft_proto::sim::{encode_write, Cluster};
use raft_proto::{
    Action, AppendEntries, Bytes, Config, Entry, EntryPayload, Event, LogIndex, Membership,
    MembershipChange, MembershipError, Message, MessageBody, Node, NodeId, PersistentState,
    ProposeError, Role, Term, Time, TransferError,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().map(|&i| NodeId(i)).collect()
}

/// Voters 1..=3, and `spares` that start outside the cluster.
fn cluster(seed: u64, spares: &[u64]) -> Cluster {
    let config = Config::new(NodeId(1), ids(&[1, 2, 3]));
    Cluster::with_spares(config, &ids(spares), seed)
}

fn elect(c: &mut Cluster) -> NodeId {
    assert!(
        c.run_until_pred(5 * SEC, |c| c.leader().is_some()),
        "no leader elected"
    );
    c.leader().unwrap()
}

/// Waits until the leader has committed an entry of its term (a change
/// is refused before that).
fn settle(c: &mut Cluster) -> NodeId {
    let l = elect(c);
    assert!(c.run_until_pred(2 * SEC, |c| c.node(l).is_some_and(|n| n
        .entry(n.commit_index())
        .is_some_and(|e| e.term == n.term()))));
    l
}

/// Proposes `change` on the leader and waits until it is applied there.
fn change(c: &mut Cluster, change: MembershipChange) {
    let l = c.leader().expect("a leader");
    let id = c
        .propose_membership(l, change)
        .unwrap_or_else(|e| panic!("{change:?} refused: {e}"));
    assert!(
        c.run_until_pred(3 * SEC, |c| c
            .node(l)
            .is_some_and(|n| n.last_applied() >= id.index)),
        "{change:?} not committed"
    );
}

/// Writes `n` values on the current leader, waiting for each batch.
fn write(c: &mut Cluster, n: u64) -> LogIndex {
    let mut last = LogIndex(0);
    for v in 1..=n {
        let l = elect(c);
        last = c
            .propose(l, encode_write(v % 7, v))
            .expect("accepted")
            .index;
    }
    let l = c.leader().unwrap();
    assert!(c.run_until_pred(3 * SEC, |c| c
        .node(l)
        .is_some_and(|n| n.last_applied() >= last)));
    last
}

fn voters(c: &Cluster, id: u64) -> Vec<NodeId> {
    c.node(NodeId(id)).unwrap().membership().voters.clone()
}

#[test]
fn a_new_cluster_writes_its_configuration_as_entry_1() {
    let mut c = cluster(1, &[]);
    let l = settle(&mut c);
    let e = c.node(l).unwrap().entry(LogIndex(1)).unwrap().clone();
    match e.payload {
        EntryPayload::Configuration(m) => assert_eq!(m.voters, ids(&[1, 2, 3])),
        other => panic!("entry 1 is {other:?}"),
    }
    // A later leader writes a plain no-op.
    c.transfer_leadership(l, None).unwrap();
    c.run_for(100 * MS);
    let l2 = settle(&mut c);
    assert_ne!(l, l2);
    let n = c.node(l2).unwrap();
    let last = n.entry(n.last_log_index()).unwrap();
    assert_eq!(last.payload, EntryPayload::Noop);
}

/// A spare joins as a learner: it receives the whole log, but neither its
/// vote nor its copy of an entry counts.
#[test]
fn a_learner_receives_the_log_but_counts_for_nothing() {
    let mut c = cluster(2, &[4]);
    let l = settle(&mut c);
    // The spare knows no cluster and does not campaign.
    c.run_for(2 * SEC);
    let spare = c.node(NodeId(4)).unwrap();
    assert_eq!((spare.term(), spare.role()), (Term(0), Role::Follower));
    change(&mut c, MembershipChange::AddLearner(NodeId(4)));
    let last = write(&mut c, 20);
    assert!(c.run_until_pred(SEC, |c| c
        .node(NodeId(4))
        .is_some_and(|n| n.last_applied() >= last)));
    assert_eq!(c.node(NodeId(4)).unwrap().membership().learners, ids(&[4]));
    // With both other voters down, leader + learner commit nothing.
    for v in [1, 2, 3].map(NodeId).into_iter().filter(|&v| v != l) {
        c.crash(v);
    }
    let id = c.propose(l, encode_write(1, 99)).unwrap();
    c.run_for(300 * MS);
    assert!(c.node(l).unwrap().commit_index() < id.index);
    assert_eq!(c.node(NodeId(4)).unwrap().role(), Role::Follower);
}

#[test]
fn one_change_at_a_time_and_only_after_the_leader_committed_in_its_term() {
    let mut c = cluster(3, &[4, 5]);
    // Right after winning, before its first entry commits.
    assert!(c.run_until_pred(5 * SEC, |c| c.leader().is_some()));
    let l = c.leader().unwrap();
    assert_eq!(
        c.propose_membership(l, MembershipChange::AddLearner(NodeId(4))),
        Err(ProposeError::Membership(MembershipError::ChangeInProgress))
    );
    let l = settle(&mut c);
    c.propose_membership(l, MembershipChange::AddLearner(NodeId(4)))
        .unwrap();
    // The first is in force at once on the leader, but not committed.
    assert_eq!(c.node(l).unwrap().membership().learners, ids(&[4]));
    assert_eq!(
        c.propose_membership(l, MembershipChange::AddLearner(NodeId(5))),
        Err(ProposeError::Membership(MembershipError::ChangeInProgress))
    );
    c.run_for(100 * MS);
    c.propose_membership(l, MembershipChange::AddLearner(NodeId(5)))
        .unwrap();
    c.run_for(100 * MS);
    // And the refusals that need no waiting.
    for (ch, err) in [
        (
            MembershipChange::AddVoter(NodeId(2)),
            MembershipError::AlreadyMember(NodeId(2)),
        ),
        (
            MembershipChange::Promote(NodeId(2)),
            MembershipError::UnknownMember(NodeId(2)),
        ),
        (
            MembershipChange::Remove(NodeId(9)),
            MembershipError::UnknownMember(NodeId(9)),
        ),
        (
            MembershipChange::AddLearner(NodeId(0)),
            MembershipError::Invalid("a configuration names node 0"),
        ),
    ] {
        assert_eq!(
            c.propose_membership(l, ch),
            Err(ProposeError::Membership(err))
        );
    }
    let f = [1, 2, 3].map(NodeId).into_iter().find(|&v| v != l).unwrap();
    assert!(matches!(
        c.propose_membership(f, MembershipChange::Remove(NodeId(3))),
        Err(ProposeError::NotLeader { leader: Some(_) })
    ));
}

#[test]
fn a_learner_is_promoted_only_once_it_has_caught_up() {
    let mut c = cluster(4, &[4]);
    settle(&mut c);
    c.isolate(NodeId(4));
    change(&mut c, MembershipChange::AddLearner(NodeId(4)));
    write(&mut c, 30);
    let l = c.leader().unwrap();
    assert!(matches!(
        c.propose_membership(l, MembershipChange::Promote(NodeId(4))),
        Err(ProposeError::Membership(MembershipError::LearnerBehind { id, .. })) if id == NodeId(4)
    ));
    c.heal();
    c.run_for(500 * MS);
    change(&mut c, MembershipChange::Promote(NodeId(4)));
    assert_eq!(voters(&c, 4), ids(&[1, 2, 3, 4]));
}

/// Replace member 1 by member 4, one server at a time, with writes in
/// between; then member 1 is gone and stays quiet, and the new majority
/// commits without it.
#[test]
fn a_member_is_replaced_one_server_at_a_time() {
    let mut c = cluster(5, &[4]);
    settle(&mut c);
    write(&mut c, 10);
    change(&mut c, MembershipChange::AddLearner(NodeId(4)));
    write(&mut c, 10);
    c.run_for(200 * MS);
    change(&mut c, MembershipChange::Promote(NodeId(4)));
    write(&mut c, 10);
    change(&mut c, MembershipChange::Remove(NodeId(1)));
    elect(&mut c);
    let last = write(&mut c, 10);
    c.run_for(500 * MS);
    for id in [2, 3, 4] {
        assert_eq!(voters(&c, id), ids(&[2, 3, 4]), "n{id}");
        let n = c.node(NodeId(id)).unwrap();
        assert!(n.last_applied() >= last, "n{id} behind");
    }
    // Member 1 heard of its removal, or not: either way it never
    // campaigns again, so its term stays put, and nobody's moves.
    let term = c.node(NodeId(1)).unwrap().term();
    let cluster_term = c.node(NodeId(2)).unwrap().term();
    c.run_for(5 * SEC);
    assert_eq!(c.node(NodeId(1)).unwrap().term(), term);
    assert_eq!(c.node(NodeId(2)).unwrap().term(), cluster_term);
    assert_ne!(c.node(NodeId(1)).unwrap().role(), Role::Leader);
    // 2, 3, 4 commit with 1 down.
    c.crash(NodeId(1));
    write(&mut c, 5);
}

/// A leader that removes itself keeps leading until the change commits,
/// without counting itself; then hands over with TimeoutNow, so the next
/// leader is in place within a round trip, not an election timeout.
#[test]
fn a_leader_that_removes_itself_hands_over_once_committed() {
    let mut c = cluster(6, &[]);
    let l = settle(&mut c);
    write(&mut c, 5);
    let before = c.now();
    c.propose_membership(l, MembershipChange::Remove(l))
        .unwrap();
    // Until it steps down it takes no write: one would be cut off by the
    // step-down; the client is sent to the voter furthest along.
    assert!(matches!(
        c.propose(l, encode_write(1, 1)),
        Err(ProposeError::TransferInProgress { target }) if target != l
    ));
    assert!(c.run_until_pred(SEC, |c| c.leader().is_some_and(|n| n != l)));
    let took = c.now() - before;
    assert!(took < 100 * MS, "handover took {took:?}");
    assert_eq!(c.node(l).unwrap().role(), Role::Follower);
    let others: Vec<NodeId> = [1, 2, 3]
        .map(NodeId)
        .into_iter()
        .filter(|&v| v != l)
        .collect();
    assert_eq!(voters(&c, others[0].0), others);
    write(&mut c, 5);
}

#[test]
fn the_last_voter_cannot_be_removed() {
    let config = Config::new(NodeId(1), ids(&[1]));
    let mut c = Cluster::with_spares(config, &ids(&[2]), 7);
    let l = settle(&mut c);
    assert_eq!(
        c.propose_membership(l, MembershipChange::Remove(l)),
        Err(ProposeError::Membership(MembershipError::LastVoter))
    );
    // A single voter grows to two: commits then need both.
    change(&mut c, MembershipChange::AddVoter(NodeId(2)));
    write(&mut c, 3);
    assert_eq!(voters(&c, 2), ids(&[1, 2]));
}

/// Thesis §4.1: a configuration is in force when appended, and a
/// truncation of its entry undoes it.
#[test]
fn a_truncated_configuration_entry_is_undone() {
    let config = Config::new(NodeId(2), ids(&[1, 2, 3]));
    let mut n = Node::new(config, PersistentState::default(), Time::ZERO).unwrap();
    let now = Time::ZERO + 10 * MS;
    let cfg = |voters: &[u64]| {
        EntryPayload::Configuration(Box::new(Membership {
            voters: ids(voters),
            ..Membership::default()
        }))
    };
    let entry = |term, index, payload| Entry {
        term: Term(term),
        index: LogIndex(index),
        payload,
    };
    let ae = |term, prev: (u64, u64), entries| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(prev.0),
            prev_log_term: Term(prev.1),
            entries,
            leader_commit: LogIndex(1),
            round: 0,
        }),
    };
    n.handle_message(
        now,
        ae(
            1,
            (0, 0),
            vec![
                entry(1, 1, cfg(&[1, 2, 3])),
                entry(1, 2, cfg(&[1, 2, 3, 4])),
            ],
        ),
    );
    assert_eq!(n.membership().voters, ids(&[1, 2, 3, 4]));
    assert_eq!(n.membership_index(), LogIndex(2));
    let events: Vec<Action> = std::iter::from_fn(|| n.poll_action()).collect();
    assert!(events.iter().any(|a| matches!(a,
        Action::Event(Event::MembershipChanged { index, .. }) if *index == LogIndex(2))));
    // A new leader of term 2 never had entry 2: it goes, and so does
    // the configuration it held.
    let noop = entry(2, 2, EntryPayload::Noop);
    let mut from3 = ae(2, (1, 1), vec![noop]);
    from3.from = NodeId(3);
    n.handle_message(now, from3);
    assert_eq!(n.membership().voters, ids(&[1, 2, 3]));
    assert_eq!(n.membership_index(), LogIndex(1));
}

/// A member that starts from a snapshot knows the configuration from it,
/// whatever the log after it holds.
#[test]
fn a_restart_from_a_snapshot_keeps_the_configuration() {
    let mut c = cluster(8, &[4]);
    c.net.snapshot_every = 10;
    settle(&mut c);
    change(&mut c, MembershipChange::AddLearner(NodeId(4)));
    c.run_for(200 * MS);
    change(&mut c, MembershipChange::Promote(NodeId(4)));
    // Far enough that every member's snapshot covers the change.
    write(&mut c, 40);
    c.run_for(200 * MS);
    for id in [1, 2, 3, 4].map(NodeId) {
        let s = c.node(id).unwrap().status();
        let snap = s.snapshot.expect("a snapshot");
        assert_eq!(snap.membership.voters, ids(&[1, 2, 3, 4]), "n{id}");
        c.crash(id);
        c.restart(id);
        assert_eq!(voters(&c, id.0), ids(&[1, 2, 3, 4]), "n{id} after restart");
    }
    write(&mut c, 5);
}

#[test]
fn leadership_moves_to_the_target_within_a_round_trip() {
    let mut c = cluster(9, &[]);
    let l = settle(&mut c);
    write(&mut c, 10);
    let target = [1, 2, 3].map(NodeId).into_iter().find(|&v| v != l).unwrap();
    let started = c.now();
    assert_eq!(c.transfer_leadership(l, Some(target)), Ok(target));
    // Proposals wait for the new leader.
    assert_eq!(
        c.propose(l, encode_write(1, 1)),
        Err(ProposeError::TransferInProgress { target })
    );
    assert!(c.run_until_pred(SEC, |c| c.leader() == Some(target)));
    assert!(c.now() - started < 20 * MS, "took {:?}", c.now() - started);
    assert_eq!(c.node(l).unwrap().role(), Role::Follower);
    write(&mut c, 5);
    // The refusals.
    let l = c.leader().unwrap();
    assert_eq!(c.transfer_leadership(l, Some(l)), Ok(l));
    assert_eq!(
        c.transfer_leadership(l, Some(NodeId(9))),
        Err(TransferError::NotAVoter(NodeId(9)))
    );
    let f = [1, 2, 3].map(NodeId).into_iter().find(|&v| v != l).unwrap();
    assert_eq!(
        c.transfer_leadership(f, None),
        Err(TransferError::NotLeader { leader: Some(l) })
    );
}

#[test]
fn a_transfer_to_an_unreachable_member_is_given_up() {
    let mut c = cluster(10, &[]);
    let l = settle(&mut c);
    let target = [1, 2, 3].map(NodeId).into_iter().find(|&v| v != l).unwrap();
    c.isolate(target);
    write(&mut c, 3);
    c.transfer_leadership(l, Some(target)).unwrap();
    c.run_for(300 * MS);
    assert!(matches!(
        c.propose(l, encode_write(1, 1)),
        Err(ProposeError::TransferInProgress { .. })
    ));
    // An election timeout (at most 600 ms) later, the leader gives up
    // and takes proposals again; it never stopped leading.
    c.run_for(400 * MS);
    assert_eq!(c.leader(), Some(l));
    assert!(c.propose(l, encode_write(1, 2)).is_ok());
}

/// A transfer's election is granted past CheckQuorum's lease (every voter
/// heard from the leader a moment ago); an ordinary one would be refused.
#[test]
fn a_transfer_election_is_granted_past_the_lease() {
    let mut c = cluster(11, &[]);
    let l = settle(&mut c);
    let term = c.node(l).unwrap().term();
    let target = [1, 2, 3].map(NodeId).into_iter().find(|&v| v != l).unwrap();
    c.transfer_leadership(l, Some(target)).unwrap();
    assert!(c.run_until_pred(SEC, |c| c.leader() == Some(target)));
    assert_eq!(c.node(target).unwrap().term(), Term(term.0 + 1));
    // No pre-vote term was skipped, nobody else campaigned.
    assert!(
        c.run_until_pred(SEC, |c| [1, 2, 3].map(NodeId).iter().all(|&id| c
            .node(id)
            .unwrap()
            .term()
            == Term(term.0 + 1)))
    );
}

#[test]
fn a_configuration_entry_round_trips_through_the_codec_and_bounds_hold() {
    let m = Membership {
        voters: ids(&[1, 2, 3]),
        learners: ids(&[7]),
        context: Bytes::from_static(b"addresses"),
    };
    let mut buf = bytes::BytesMut::new();
    raft_proto::codec::put_membership(&m, &mut buf);
    let mut b = buf.freeze();
    assert_eq!(raft_proto::codec::get_membership(&mut b), Ok(m));
    assert!(b.is_empty());
    let bad = Membership {
        voters: ids(&[3, 2]),
        ..Membership::default()
    };
    assert_eq!(
        bad.check(),
        Err("a configuration's members are not sorted and unique")
    );
}

// ----- A removed member knows it -------------------------------------------

/// How many times `id` reported its removal in `trace`.
fn removal_reports(trace: &[String], id: NodeId) -> usize {
    let who = format!(" n{id} became ");
    trace
        .iter()
        .filter(|l| l.contains(&who) && l.contains("removed from the cluster"))
        .count()
}

/// Lines of `trace` that are messages to or from `id`.
fn messages_of(trace: &[String], id: NodeId) -> usize {
    let (to, from) = (format!("->n{id} "), format!(" n{id}->"));
    trace
        .iter()
        .filter(|l| l.contains(&to) || l.contains(&from))
        .count()
}

/// Whether `id` campaigns (pre-vote or election) within `d`.
fn campaigns_within(c: &mut Cluster, id: NodeId, d: Duration) -> bool {
    c.run_until_pred(d, |c| {
        c.node(id)
            .is_some_and(|n| matches!(n.role(), Role::PreCandidate | Role::Candidate))
    })
}

#[test]
fn a_removed_follower_learns_it_reports_it_once_and_never_campaigns() {
    let mut c = cluster(40, &[]);
    c.enable_trace();
    let l = settle(&mut c);
    let mut trace = Vec::new();
    let f = *[1, 2, 3].map(NodeId).iter().find(|&&n| n != l).unwrap();
    assert!(!c.node(f).unwrap().is_removed());
    change(&mut c, MembershipChange::Remove(f));
    // The leader keeps telling it until it knows the removal committed.
    assert!(
        c.run_until_pred(SEC, |c| c.node(f).unwrap().is_removed()),
        "the removed member never learned its removal committed"
    );
    let node = c.node(f).unwrap();
    assert!(!node.membership().contains(f));
    assert!(node.commit_index() >= node.membership_index());
    // Then the leader stops sending to it, and it stays quiet: no
    // pre-vote, no election, however long the silence.
    c.run_for(SEC);
    trace.extend(c.take_trace());
    assert!(
        !campaigns_within(&mut c, f, 10 * SEC),
        "a removed member campaigned"
    );
    let quiet = c.take_trace();
    assert_eq!(messages_of(&quiet, f), 0, "{quiet:#?}");
    assert_eq!(c.leader(), Some(l));
    assert!(c.node(l).unwrap().peer_progress().iter().all(|p| p.id != f));
    write(&mut c, 3);
    assert!(c.node(f).unwrap().is_removed());
    assert!(c.violation().is_none(), "{:?}", c.violation());
    trace.extend(quiet);
    trace.extend(c.take_trace());
    assert_eq!(removal_reports(&trace, f), 1, "reported once");
    assert_eq!(c.removals_reported(), 1);
}

#[test]
fn a_leader_that_removes_itself_knows_it_and_reports_it_once() {
    // §4.2.2: it leads until the removal commits, then hands over.
    let mut c = cluster(41, &[]);
    c.enable_trace();
    let l = settle(&mut c);
    c.propose_membership(l, MembershipChange::Remove(l))
        .unwrap();
    assert!(c.run_until_pred(SEC, |c| c.leader().is_some_and(|n| n != l)));
    let node = c.node(l).unwrap();
    assert!(node.is_removed());
    assert_eq!(node.role(), Role::Follower);
    assert!(!campaigns_within(&mut c, l, 10 * SEC));
    write(&mut c, 3);
    assert_eq!(removal_reports(&c.take_trace(), l), 1);
    assert_eq!(c.removals_reported(), 1);
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn a_member_removed_while_cut_off_does_not_disrupt_when_it_returns() {
    let mut c = cluster(42, &[]);
    let l = settle(&mut c);
    let f = *[1, 2, 3].map(NodeId).iter().find(|&&n| n != l).unwrap();
    c.isolate(f);
    change(&mut c, MembershipChange::Remove(f));
    write(&mut c, 3);
    // Longer than the leader tries to tell it.
    c.run_for(3 * SEC);
    let term = c.node(l).unwrap().term();
    c.heal();
    // It may never learn that it was removed: the leader stopped telling
    // it. It still takes itself for a voter and pre-votes now and then,
    // but its log lacks the removal, so the voters refuse it, and the
    // cluster goes on undisturbed.
    c.run_for(10 * SEC);
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.node(l).unwrap().term(), term, "no election");
    assert!(!c.node(f).unwrap().is_removed());
    write(&mut c, 3);
    assert_eq!(c.node(l).unwrap().term(), term);
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn a_removed_member_added_back_is_a_member_again() {
    let mut c = cluster(43, &[]);
    let l = settle(&mut c);
    let f = *[1, 2, 3].map(NodeId).iter().find(|&&n| n != l).unwrap();
    change(&mut c, MembershipChange::Remove(f));
    assert!(c.run_until_pred(SEC, |c| c.node(f).unwrap().is_removed()));
    write(&mut c, 3);
    change(&mut c, MembershipChange::AddVoter(f));
    assert!(
        c.run_until_pred(SEC, |c| !c.node(f).unwrap().is_removed()),
        "added back, it is no longer removed"
    );
    let last = write(&mut c, 3);
    assert!(c.run_until_pred(SEC, |c| c.node(f).unwrap().last_applied() >= last));
    // A voter again: it may even lead.
    c.transfer_leadership(l, Some(f)).unwrap();
    assert!(c.run_until_pred(SEC, |c| c.leader() == Some(f)));
    // And removed again, it learns again.
    c.run_until_pred(SEC, |c| {
        c.node(f).is_some_and(|n| {
            n.entry(n.commit_index())
                .is_some_and(|e| e.term == n.term())
        })
    });
    let l2 = c.leader().unwrap();
    let g = *[1, 2, 3].map(NodeId).iter().find(|&&n| n != l2).unwrap();
    change(&mut c, MembershipChange::Remove(g));
    assert!(c.run_until_pred(SEC, |c| c.node(g).unwrap().is_removed()));
    assert!(c.violation().is_none(), "{:?}", c.violation());
}

#[test]
fn a_member_that_joins_is_not_removed_while_it_replays_older_configurations() {
    // It receives the log from entry 1 on, two entries at a time: for a
    // while the configuration in force is an old one without it, and
    // committed. It was never a member of those: joining, not removed.
    let mut config = Config::new(NodeId(1), ids(&[1, 2, 3]));
    config.max_entries_per_append = 2;
    let mut c = Cluster::with_spares(config, &ids(&[4]), 44);
    settle(&mut c);
    write(&mut c, 20);
    change(&mut c, MembershipChange::AddLearner(NodeId(4)));
    let l = c.leader().unwrap();
    let last = c.node(l).unwrap().last_log_index();
    let removed = |c: &Cluster| c.node(NodeId(4)).unwrap().is_removed();
    let caught_up = |c: &Cluster| c.node(NodeId(4)).unwrap().last_applied() >= last;
    assert!(!c.run_until_pred(2 * SEC, |c| removed(c) || caught_up(c)) || !removed(&c));
    assert!(c.run_until_pred(2 * SEC, caught_up));
    assert!(!removed(&c));
    assert_eq!(c.removals_reported(), 0);
}
