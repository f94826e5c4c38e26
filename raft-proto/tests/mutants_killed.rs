//! Tests written for mutants that `make mutants` (cargo-mutants) found
//! alive: each names the mutant it kills, and says what contract the
//! mutant broke. See docs/mutants.md for the whole list, including the
//! mutants left alive on purpose and why.

use std::time::Duration;

use raft_proto::driver::{Driver, LogStore, Transport};
use raft_proto::sim::{encode_write, Cluster};
use raft_proto::{
    Action, AppendEntries, AppendResult, Bytes, Config, Entry, EntryPayload, HardState, LogIndex,
    Message, MessageBody, Node, NodeId, PersistentState, RequestVote, RequestVoteResponse, Role,
    SnapshotMeta, Term, Time,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A cluster on an in-order network with a fixed delay, as the transcripts
/// use: the scenario depends on the order of events, not on noise.
fn quiet_cluster(n: u64, seed: u64) -> Cluster {
    let mut c = Cluster::new(n, seed);
    c.net.min_delay = MS;
    c.net.max_delay = MS + Duration::from_nanos(1);
    c
}

fn elect_other_than(c: &mut Cluster, not: &[NodeId]) -> NodeId {
    assert!(
        c.run_until_pred(5 * SEC, |c| c.leader().is_some_and(|l| !not.contains(&l))),
        "no leader elected"
    );
    c.leader().unwrap()
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

fn node(id: u64, voters: &[u64]) -> Node {
    let mut c = Config::new(NodeId(id), voters.iter().map(|&v| NodeId(v)).collect());
    c.seed = 7;
    Node::new(c, PersistentState::default(), Time::ZERO).expect("valid config")
}

/// A store whose syncs complete only when the test says so.
#[derive(Default)]
struct Disk {
    appends: usize,
    syncs: usize,
}

impl LogStore for Disk {
    type Error = ();
    fn save_hard_state(&mut self, _: HardState) -> Result<(), ()> {
        Ok(())
    }
    fn truncate_log(&mut self, _: LogIndex) -> Result<(), ()> {
        Ok(())
    }
    fn append_log(&mut self, _: &[Entry]) -> Result<(), ()> {
        self.appends += 1;
        Ok(())
    }
    fn sync(&mut self) -> Result<bool, ()> {
        self.syncs += 1;
        Ok(false)
    }
    fn write_snapshot_chunk(&mut self, _: &SnapshotMeta, _: u64, _: &[u8]) -> Result<(), ()> {
        unreachable!("no snapshots in these tests")
    }
    fn install_snapshot(&mut self, _: &SnapshotMeta) -> Result<bool, ()> {
        unreachable!("no snapshots in these tests")
    }
    fn compact_log(&mut self, _: LogIndex) -> Result<(), ()> {
        unreachable!("no snapshots in these tests")
    }
    fn read_snapshot_chunk(
        &mut self,
        _: &SnapshotMeta,
        _: u64,
        _: usize,
    ) -> Result<Option<raft_proto::Bytes>, ()> {
        unreachable!("no snapshots in these tests")
    }
}

#[derive(Default)]
struct Wire(Vec<Message>);

impl Transport for Wire {
    fn send(&mut self, msg: Message) {
        self.0.push(msg);
    }
}

// ----- driver.rs ----------------------------------------------------------

/// Kills `Driver::sync_in_flight -> true`, `Driver::has_unsynced_writes ->
/// false` and `|| -> &&` in `has_unsynced_writes`: both observers must
/// say yes while a sync is in flight (and nothing else waits) and no once
/// it completed. The driver's unit tests only ever asked one way.
#[test]
fn driver_reports_a_sync_in_flight_and_then_none() {
    let mut n = node(1, &[1]);
    let (mut d, mut disk, mut wire, mut out) =
        (Driver::new(), Disk::default(), Wire::default(), Vec::new());
    assert!(!d.sync_in_flight() && !d.has_unsynced_writes(), "fresh");
    n.handle_timeout(at(1000));
    d.drain(&mut n, at(1000), &mut disk, &mut wire, &mut out)
        .unwrap();
    // The election wrote term and vote; their sync is in flight and no
    // other write waits (`dirty` is false, `in_flight` is set).
    assert!(d.sync_in_flight());
    assert!(
        d.has_unsynced_writes(),
        "writes whose sync is in flight are not yet durable"
    );
    // Complete syncs until nothing more is written (the election's, the
    // no-op's).
    for t in 1001..1010 {
        if !d.sync_in_flight() {
            break;
        }
        d.sync_completed(&mut n, at(t), &mut wire);
        d.drain(&mut n, at(t), &mut disk, &mut wire, &mut out)
            .unwrap();
    }
    assert_eq!(n.role(), Role::Leader);
    assert!(!d.sync_in_flight(), "the sync completed");
    assert!(!d.has_unsynced_writes());
}

/// Kills `Driver::crash -> ()`: a crash forgets the sync in flight and the
/// messages held for it (they never left the process). The simulator
/// replaces the driver at restart anyway, so no scenario noticed.
#[test]
fn driver_forgets_everything_on_crash() {
    // A single member: its election writes term and vote at once.
    let mut n = node(1, &[1]);
    let (mut d, mut disk, mut wire, mut out) =
        (Driver::new(), Disk::default(), Wire::default(), Vec::new());
    n.handle_timeout(at(1000));
    d.drain(&mut n, at(1000), &mut disk, &mut wire, &mut out)
        .unwrap();
    assert!(d.has_unsynced_writes());
    d.crash();
    assert!(!d.sync_in_flight(), "no sync survives the process");
    assert!(!d.has_unsynced_writes());
    // A new incarnation's first drain starts its own sync at once: nothing
    // is left in flight to wait for.
    let mut n = node(1, &[1]);
    n.handle_timeout(at(2000));
    let syncs = disk.syncs;
    d.drain(&mut n, at(2000), &mut disk, &mut wire, &mut out)
        .unwrap();
    assert_eq!(disk.syncs, syncs + 1, "a sync was started after the crash");
}

// ----- leader.rs ----------------------------------------------------------

/// Kills "delete match arm `Some(Action::AppendLog(batch))`" in
/// `Node::leader_append`: proposals made before the next drain are
/// coalesced into one `AppendLog` (one write for the batch), not one
/// action per entry. Safety does not depend on it; the cost of a write
/// per entry under load does.
#[test]
fn proposals_between_drains_are_one_append() {
    let mut n = node(1, &[1]);
    let (mut d, mut disk, mut wire, mut out) =
        (Driver::new(), Disk::default(), Wire::default(), Vec::new());
    n.handle_timeout(at(1000));
    for t in 1000..1003 {
        d.drain(&mut n, at(t), &mut disk, &mut wire, &mut out)
            .unwrap();
        if d.sync_in_flight() {
            d.sync_completed(&mut n, at(t + 1), &mut wire);
        }
    }
    assert_eq!(n.role(), Role::Leader);
    for cmd in [&b"a"[..], b"b", b"c"] {
        n.propose(at(1010), Bytes::copy_from_slice(cmd)).unwrap();
    }
    let mut appends = Vec::new();
    while let Some(a) = n.poll_action() {
        if let Action::AppendLog(entries) = a {
            appends.push(entries.len());
        }
    }
    assert_eq!(appends, [3], "three proposals, one AppendLog");
}

// ----- follower.rs ----------------------------------------------------------

/// Kills "replace match guard `t == ae.prev_log_term` with true" in
/// `Node::append_to_log`: the §5.3 consistency check itself. A follower
/// must refuse an AppendEntries whose `prev_log_term` differs from its own
/// entry at `prev_log_index`, or it keeps a divergent entry below ones it
/// acknowledges, and applies it once they commit.
///
/// The scenario the existing tests never reach: the new leader's first,
/// optimistic AppendEntries names a `prev` that the follower holds with
/// another term. (A leader that probes after a reconnect starts from
/// `prev=0`, which always matches, so rejoin scenarios skip this check.)
/// Five members: `f` alone receives entry 2 of term 1; `f` and the leader
/// of term 1 die; three others commit their term-2 no-op at index 2; that
/// leader dies too and `f` returns, so the leader of term 3 (elected by
/// the two left and `f`) sends `f` prev=2@t2 while `f` holds 2@t1.
#[test]
fn a_follower_refuses_an_append_whose_prev_term_differs_from_its_own() {
    let mut c = quiet_cluster(5, 11);
    let l1 = elect_other_than(&mut c, &[]);
    c.run_for(100 * MS);
    let others: Vec<NodeId> = c.ids().iter().copied().filter(|&n| n != l1).collect();
    let f = others[0];
    for &n in &others[1..] {
        c.block(l1, n);
    }
    // f's acknowledgement is lost: the entry cannot commit.
    c.block(f, l1);
    let e = c.propose(l1, encode_write(1, 1)).expect("l1 leads");
    assert!(
        c.run_until_pred(SEC, |c| c.persisted_last_index(f) >= e.index),
        "f never made entry {} durable",
        e.index
    );
    assert!(c.node(l1).unwrap().commit_index() < e.index);
    c.crash(f);
    c.crash(l1);

    let l2 = elect_other_than(&mut c, &[l1, f]);
    let index = e.index;
    assert!(
        c.run_until_pred(2 * SEC, |c| c
            .node(l2)
            .is_some_and(|n| n.commit_index() >= index)),
        "the term-2 leader did not commit index {index}"
    );
    let t2 = c.node(l2).unwrap().entry(index).expect("held").term;
    assert!(t2 > e.term, "index {index} holds the new leader's no-op");

    c.crash(l2);
    c.restart(f);
    let l3 = elect_other_than(&mut c, &[l1, l2, f]);
    let ok = c.run_for(2 * SEC);
    assert!(ok, "safety violation: {:?}", c.violation());
    let fe = c
        .node(f)
        .unwrap()
        .entry(index)
        .expect("f holds the index")
        .clone();
    assert_eq!(
        fe.term,
        t2,
        "f kept entry {index} of term {} under the leader of term {}",
        fe.term,
        c.node(l3).unwrap().term()
    );
    assert!(c.node(f).unwrap().last_applied() > index);
}

// ----- Hand-driven nodes -------------------------------------------------

/// Member `id` of {1, 2, 3} whose persisted log holds entries of `terms`.
fn hand_node(id: u64, current_term: u64, terms: &[u64]) -> Node {
    hand_node_of(3, id, current_term, terms)
}

/// Member `id` of {1..=voters} whose persisted log holds entries of `terms`.
fn hand_node_of(voters: u64, id: u64, current_term: u64, terms: &[u64]) -> Node {
    let voters: Vec<NodeId> = (1..=voters).map(NodeId).collect();
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            term: Term(t),
            index: LogIndex(i as u64 + 1),
            payload: EntryPayload::Noop,
        })
        .collect();
    let mut config = Config::new(NodeId(id), voters);
    config.seed = 7;
    let state = PersistentState {
        snapshot: None,
        hard_state: HardState {
            current_term: Term(current_term),
            voted_for: None,
        },
        entries,
        applied: LogIndex(0),
    };
    Node::new(config, state, Time::ZERO).expect("valid config")
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

/// The messages `n` sends next, everything else it says dropped.
fn sent(n: &mut Node) -> Vec<Message> {
    std::iter::from_fn(|| n.poll_action())
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn vote_request(pre_vote: bool, last_index: u64, last_term: u64) -> MessageBody {
    MessageBody::RequestVote(RequestVote {
        pre_vote,
        leadership_transfer: false,
        last_log_index: LogIndex(last_index),
        last_log_term: Term(last_term),
    })
}

/// The (pre-)vote answers among `msgs`: (to, term, granted).
fn vote_answers(msgs: &[Message]) -> Vec<(u64, u64, bool)> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            MessageBody::RequestVoteResponse(r) => Some((m.to.0, m.term.0, r.granted)),
            _ => None,
        })
        .collect()
}

// ----- candidate.rs: one vote per term (§5.2) ------------------------------

/// Kills, in `Node::handle_request_vote`: `==` -> `!=` in
/// `voted_for == Some(from)` and `&&` -> `||` in `voted_for.is_none() &&
/// leader.is_none()` (a second candidate of the same term gets a vote,
/// and the "one vote per term" assertion fires, or a repeated request
/// from the candidate already voted for is refused), and `&&` -> `||` and
/// `>` -> `>=` in `pre_vote && term > current_term` (a pre-vote for the
/// term this member already voted in is granted).
#[test]
fn a_member_votes_once_per_term_and_repeats_that_vote() {
    let mut n = hand_node(1, 0, &[]);
    n.handle_message(at(10), msg(2, 1, 1, vote_request(false, 0, 0)));
    assert_eq!(vote_answers(&sent(&mut n)), [(2, 1, true)], "first request");
    // Another candidate of the same term (a split vote).
    n.handle_message(at(11), msg(3, 1, 1, vote_request(false, 0, 0)));
    assert_eq!(
        vote_answers(&sent(&mut n)),
        [(3, 1, false)],
        "a second vote in term 1"
    );
    // The first candidate asks again (its request was duplicated, or the
    // answer lost): the same vote, again.
    n.handle_message(at(12), msg(2, 1, 1, vote_request(false, 0, 0)));
    assert_eq!(
        vote_answers(&sent(&mut n)),
        [(2, 1, true)],
        "repeated request"
    );
    // A pre-vote for the term this member already voted in: a real
    // election of that term could not get its vote either.
    n.handle_message(at(13), msg(3, 1, 1, vote_request(true, 0, 0)));
    assert_eq!(
        vote_answers(&sent(&mut n)),
        [(3, 1, false)],
        "pre-vote for a term already voted in"
    );
    assert_eq!(n.hard_state().voted_for, Some(NodeId(2)));
}

/// Kills "replace match guard `r.pre_vote` with true" in
/// `Node::handle_vote_response`: a pre-candidate must not count a late
/// answer to the real election it ran before in the same term. Each voter
/// counts once, so a stale refusal would shadow that voter's pre-vote
/// grant and lose a pre-vote that a majority granted.
#[test]
fn a_late_election_refusal_does_not_count_as_a_pre_vote() {
    let mut n = hand_node(1, 0, &[]);
    n.handle_timeout(at(1000));
    assert_eq!(n.role(), Role::PreCandidate);
    let grant = |term| {
        msg(
            2,
            1,
            term,
            MessageBody::RequestVoteResponse(RequestVoteResponse {
                pre_vote: true,
                granted: true,
            }),
        )
    };
    n.handle_message(at(1001), grant(1));
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(1)));
    // The election of term 1 times out with no answer; a new pre-vote
    // starts (still in term 1, asking for 2).
    n.handle_timeout(at(2000));
    assert_eq!((n.role(), n.term()), (Role::PreCandidate, Term(1)));
    let _ = sent(&mut n);
    // n2's refusal of the real vote of term 1 arrives late...
    let refusal = MessageBody::RequestVoteResponse(RequestVoteResponse {
        pre_vote: false,
        granted: false,
    });
    n.handle_message(at(2001), msg(2, 1, 1, refusal));
    // ...then n2's pre-vote grant for term 2: with its own, a majority.
    n.handle_message(at(2002), grant(2));
    assert_eq!(
        (n.role(), n.term()),
        (Role::Candidate, Term(2)),
        "the pre-vote was won"
    );
}

// ----- follower.rs: the consistency check and its hint (§5.3) -------------

fn append(prev: (u64, u64), commit: u64) -> MessageBody {
    MessageBody::AppendEntries(AppendEntries {
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries: Vec::new(),
        leader_commit: LogIndex(commit),
        round: 1,
    })
}

fn append_result(msgs: &[Message]) -> AppendResult {
    let answers: Vec<AppendResult> = msgs
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntriesResponse(r) => Some(r.result),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer: {msgs:?}");
    answers[0]
}

/// Kills "replace match guard `t == ae.prev_log_term` with true" (the
/// consistency check) and `<=` -> `>` in `Node::conflict` (the hint): a
/// follower holding entries 1..3 of term 1 refuses an AppendEntries with
/// prev=3@t2, and tells the leader where its term-1 run starts, so the
/// leader skips the whole run in one round trip instead of one entry per
/// round trip.
#[test]
fn a_follower_refuses_a_prev_of_another_term_and_hints_its_term_run() {
    let mut n = hand_node(2, 1, &[1, 1, 1]);
    n.handle_message(at(10), msg(1, 2, 2, append((3, 2), 0)));
    assert_eq!(
        append_result(&sent(&mut n)),
        AppendResult::Conflict {
            rejected_index: LogIndex(3),
            last_log_index: LogIndex(3),
            conflict_term: Some(Term(1)),
            conflict_index: LogIndex(1),
        }
    );
    assert_eq!(n.last_log_index(), LogIndex(3), "nothing appended");
    // The same prev with the right term matches.
    n.handle_message(at(11), msg(1, 2, 2, append((3, 1), 0)));
    assert_eq!(
        append_result(&sent(&mut n)),
        AppendResult::Success {
            match_index: LogIndex(3)
        }
    );
}

// ----- quorum.rs ------------------------------------------------------------

fn vote_answer(from: u64, term: u64, pre_vote: bool, granted: bool) -> Message {
    msg(
        from,
        1,
        term,
        MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted }),
    )
}

/// Kills `-` -> `/` in `VoteTally::result` (`rejected > voters - need`):
/// in a five-member cluster two refusals do not lose a (pre-)vote, since
/// the two voters left can still make a majority. (With three members
/// `3 - 2 == 3 / 2`, which is why no three-member test saw it.)
#[test]
fn two_refusals_of_five_do_not_lose_the_pre_vote() {
    let mut n = hand_node_of(5, 1, 0, &[]);
    n.handle_timeout(at(1000));
    assert_eq!(n.role(), Role::PreCandidate);
    // Refusals come in the voter's term (0), grants in the asked one (1).
    n.handle_message(at(1001), vote_answer(2, 0, true, false));
    n.handle_message(at(1001), vote_answer(3, 0, true, false));
    assert_eq!(n.role(), Role::PreCandidate, "2 of 5 refused: not lost yet");
    n.handle_message(at(1002), vote_answer(4, 1, true, true));
    n.handle_message(at(1002), vote_answer(5, 1, true, true));
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(1)));
}

// ----- node.rs ----------------------------------------------------------------

/// Kills `||` -> `&&` (both) in `Node::handle_message`'s guard: a message
/// addressed to another member, or claiming to come from this node, is
/// dropped whole. (One from a node that is not a member is not: a member
/// that joins, or a voter whose configuration is behind, must hear it.)
#[test]
fn messages_for_another_member_or_from_itself_are_dropped() {
    let mut n = hand_node(1, 1, &[1]);
    let before = n.status();
    // Addressed to n3, from a member, with a newer term.
    n.handle_message(at(10), msg(2, 3, 5, append((1, 1), 1)));
    // Addressed to n1, from n1.
    n.handle_message(at(11), msg(1, 1, 5, append((1, 1), 1)));
    assert_eq!(n.status(), before, "nothing changed");
    assert_eq!(n.poll_action(), None, "nothing to do");
}

/// Kills `||` -> `&&` in `Node::handle_link_up`'s guard: a link report
/// about a node that is not a member changes nothing. Past the guard, a
/// leader would probe it, and `send_append` looks its progress up with an
/// `expect`: a panic.
#[test]
fn link_reports_about_a_stranger_are_ignored() {
    let mut n = hand_node(1, 0, &[]);
    n.handle_timeout(at(1000));
    n.handle_message(at(1001), vote_answer(2, 1, true, true));
    n.handle_message(at(1002), vote_answer(2, 1, false, true));
    assert_eq!(n.role(), Role::Leader);
    let _ = std::iter::from_fn(|| n.poll_action()).count();
    n.handle_link_up(at(1003), NodeId(9));
    n.handle_link_down(at(1003), NodeId(9));
    assert_eq!(n.poll_action(), None);
    assert_eq!(n.role(), Role::Leader);
}

/// Kills `Node::shutdown -> ()`: a node that was shut down produces no
/// action and no deadline, and refuses proposals.
#[test]
fn a_shut_down_node_does_nothing() {
    let mut n = hand_node(1, 0, &[]);
    n.handle_timeout(at(1000));
    n.handle_message(at(1001), vote_answer(2, 1, true, true));
    n.handle_message(at(1002), vote_answer(2, 1, false, true));
    assert_eq!(n.role(), Role::Leader);
    n.shutdown();
    assert_eq!(n.poll_action(), None, "pending output discarded");
    assert_eq!(n.poll_timeout(), None);
    assert!(n.propose(at(1003), Bytes::from_static(b"x")).is_err());
    n.handle_timeout(at(5000));
    n.handle_message(at(5000), msg(2, 1, 9, append((0, 0), 0)));
    assert_eq!(n.poll_action(), None);
}

/// Kills "replace match guard `r.pre_vote && r.granted` with true" and
/// `&&` -> `||` in `Node::apply_term_rules` (§5.1: a response with a newer
/// term makes the node a follower in it). Only a *granted pre-vote*
/// carries a term nobody is in yet; a refused pre-vote and a refused vote
/// carry the voter's real, newer term.
#[test]
fn a_refusal_with_a_newer_term_makes_the_candidate_follow_that_term() {
    // A pre-candidate in term 0 refused by a voter already in term 3.
    let mut n = hand_node(1, 0, &[]);
    n.handle_timeout(at(1000));
    assert_eq!(n.role(), Role::PreCandidate);
    n.handle_message(at(1001), vote_answer(2, 3, true, false));
    assert_eq!((n.role(), n.term()), (Role::Follower, Term(3)));

    // A candidate in term 1 refused by a voter already in term 4.
    let mut n = hand_node(1, 0, &[]);
    n.handle_timeout(at(1000));
    n.handle_message(at(1001), vote_answer(2, 1, true, true));
    assert_eq!((n.role(), n.term()), (Role::Candidate, Term(1)));
    n.handle_message(at(1002), vote_answer(2, 4, false, false));
    assert_eq!((n.role(), n.term()), (Role::Follower, Term(4)));
}

/// Kills "replace match guard `rv.pre_vote` with false" in
/// `Node::apply_term_rules`: a pre-vote from an older term is refused in
/// our term, so the stale pre-candidate learns it and follows.
#[test]
fn a_stale_pre_vote_is_answered_with_the_newer_term() {
    let mut n = hand_node(1, 3, &[1]);
    n.handle_message(at(10), msg(2, 1, 2, vote_request(true, 1, 1)));
    assert_eq!(vote_answers(&sent(&mut n)), [(2, 3, false)]);
    assert_eq!(n.term(), Term(3));
}

/// Kills "delete match arm `(_, Some(_), Some(t))`" and `<` -> `==` in
/// `Node::in_lease`: CheckQuorum's stickiness (thesis §4.2.3). A follower
/// that heard from its leader within the minimum election timeout
/// refuses a pre-vote and ignores a vote request of a newer term, even
/// from a candidate whose log is up to date: a member that was cut off
/// and returns must not depose a live leader.
#[test]
fn a_follower_that_hears_its_leader_refuses_to_depose_it() {
    let mut n = hand_node(1, 1, &[1]);
    n.handle_message(at(1000), msg(2, 1, 1, append((1, 1), 1)));
    assert_eq!(n.leader(), Some(NodeId(2)));
    let _ = sent(&mut n);
    // 100 ms later (the minimum election timeout is 300 ms).
    n.handle_message(at(1100), msg(3, 1, 2, vote_request(true, 1, 1)));
    assert_eq!(vote_answers(&sent(&mut n)), [(3, 1, false)], "pre-vote");
    n.handle_message(at(1101), msg(3, 1, 2, vote_request(false, 1, 1)));
    assert!(vote_answers(&sent(&mut n)).is_empty(), "vote ignored");
    assert_eq!((n.term(), n.leader()), (Term(1), Some(NodeId(2))));
    // Past the lease, the same pre-vote is granted.
    n.handle_message(at(1400), msg(3, 1, 2, vote_request(true, 1, 1)));
    assert_eq!(vote_answers(&sent(&mut n)), [(3, 2, true)]);
}

/// Kills `-` -> `+` in `Node::propose` (`last_index - commit_index`): the
/// bound on proposals counts uncommitted entries only. A long-lived
/// leader whose log passed the bound must still accept writes.
#[test]
fn the_proposal_bound_counts_only_uncommitted_entries() {
    let mut template = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
    template.max_uncommitted_entries = 4;
    let mut c = Cluster::with_config(template, 3);
    let l = elect_other_than(&mut c, &[]);
    for v in 0..10 {
        let id = c
            .propose(l, encode_write(1, v))
            .unwrap_or_else(|e| panic!("write {v} refused: {e}"));
        assert!(
            c.run_until_pred(SEC, |c| c
                .node(l)
                .is_some_and(|n| n.last_applied() >= id.index)),
            "write {v} not committed"
        );
    }
    // The bound itself still holds: 4 uncommitted at most.
    c.isolate(l);
    for v in 0..4 {
        c.propose(l, encode_write(2, v)).expect("under the bound");
    }
    assert!(c.propose(l, encode_write(2, 4)).is_err(), "over the bound");
}

/// Kills `||` -> `&&` (both) in `Node::handle_log_persisted`'s guard: a
/// durability report for an entry the log no longer holds (truncated and
/// replaced since the sync started) is ignored. Otherwise a leader would
/// count itself as holding, durably, an entry it has only in memory
/// (thesis §10.2.1) and commit it with one follower of three.
#[test]
fn a_durability_report_for_a_replaced_entry_is_ignored() {
    let mut n = hand_node(1, 1, &[]);
    let entry = |index: u64, term: u64| Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Noop,
    };
    // Entries 1..3 of term 1 from the leader of term 1.
    n.handle_message(
        at(10),
        msg(
            2,
            1,
            1,
            MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)],
                leader_commit: LogIndex(0),
                round: 1,
            }),
        ),
    );
    // The leader of term 2 replaces 2 and 3 with its own entry 2.
    n.handle_message(
        at(20),
        msg(
            3,
            1,
            2,
            MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(1),
                prev_log_term: Term(1),
                entries: vec![entry(2, 2)],
                leader_commit: LogIndex(0),
                round: 1,
            }),
        ),
    );
    assert_eq!(n.last_log_index(), LogIndex(2));
    // n1 wins term 3 and appends its no-op at 3.
    n.handle_timeout(at(2000));
    n.handle_message(at(2001), vote_answer(2, 3, true, true));
    n.handle_message(at(2002), vote_answer(2, 3, false, true));
    assert_eq!((n.role(), n.term()), (Role::Leader, Term(3)));
    assert_eq!(n.last_log_index(), LogIndex(3));
    let _ = std::iter::from_fn(|| n.poll_action()).count();
    // A sync started before the truncation completes: it covered entry 3
    // of term 1, which the log no longer holds.
    n.handle_log_persisted(at(2003), LogIndex(3), Term(1));
    // One follower holds the no-op: with the leader's own (in memory
    // only) copy, not a durable majority.
    let ok = MessageBody::AppendEntriesResponse(raft_proto::AppendEntriesResponse {
        round: 0,
        result: AppendResult::Success {
            match_index: LogIndex(3),
        },
    });
    n.handle_message(at(2004), msg(2, 1, 3, ok));
    assert!(
        n.commit_index() < LogIndex(3),
        "committed with a copy that is not durable"
    );
    // The real report: now it commits.
    n.handle_log_persisted(at(2005), LogIndex(3), Term(3));
    assert_eq!(n.commit_index(), LogIndex(3));
}
