//! What a leader sends for what was fed to it between two drains: one
//! AppendEntries per follower carrying every proposal, and a read's round
//! confirmed by the answers to those appends rather than by a heartbeat of
//! its own (issue 12: the write path). Safety does not depend on either;
//! the number of messages per write does.

use std::time::Duration;

use raft_proto::{
    Action, AppendEntriesResponse, AppendResult, Bytes, Config, LogIndex, Message, MessageBody,
    Node, NodeId, PersistentState, RequestVoteResponse, Role, Term, Time,
};

const MS: Duration = Duration::from_millis(1);

fn drain(n: &mut Node) -> Vec<Action> {
    std::iter::from_fn(|| n.poll_action()).collect()
}

/// The AppendEntries among `actions`: (to, entries, round).
fn appends(actions: &[Action]) -> Vec<(u64, usize, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Message {
                to,
                body: MessageBody::AppendEntries(ae),
                ..
            }) => Some((to.0, ae.entries.len(), ae.round)),
            _ => None,
        })
        .collect()
}

fn from(peer: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(peer),
        to: NodeId(1),
        term: Term(1),
        body,
    }
}

/// Node 1 of three, leader of term 1 by node 3's vote, its first entry
/// held by both followers, its log durable: nothing in flight.
fn leader(t: Time) -> Node {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let mut n = Node::new(
        Config::new(NodeId(1), voters),
        PersistentState::default(),
        t,
    )
    .unwrap();
    n.handle_timeout(t + Duration::from_secs(1));
    for pre_vote in [true, false] {
        let vote = RequestVoteResponse {
            pre_vote,
            granted: true,
        };
        n.handle_message(t, from(3, MessageBody::RequestVoteResponse(vote)));
    }
    assert_eq!(n.role(), Role::Leader);
    drain(&mut n);
    n.handle_log_persisted(t, LogIndex(1), Term(1));
    for peer in [2, 3] {
        n.handle_message(t, from(peer, ok(1, 0)));
    }
    drain(&mut n);
    assert_eq!(n.commit_index(), LogIndex(1));
    n
}

fn ok(match_index: u64, round: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse(AppendEntriesResponse {
        round,
        result: AppendResult::Success {
            match_index: LogIndex(match_index),
        },
    })
}

#[test]
fn proposals_and_a_read_between_drains_are_one_append_per_follower() {
    let t = Time::ZERO;
    let mut n = leader(t);
    let t = t + MS;
    for cmd in [&b"a"[..], b"b", b"c"] {
        n.propose(t, Bytes::copy_from_slice(cmd)).unwrap();
    }
    n.read_index(t, 7).unwrap();
    let out = drain(&mut n);
    let sent = appends(&out);
    assert_eq!(sent.len(), 2, "one message per follower: {sent:?}");
    let round = sent[0].2;
    for (to, entries, r) in &sent {
        assert!([2, 3].contains(to));
        assert_eq!(*entries, 3, "all three proposals in one AppendEntries");
        assert_eq!(*r, round, "the read's round rides on the appends");
    }
    // The leader's own disk and one follower's answer to the append
    // commit the entries and confirm the read's round: the read is ready
    // without a heartbeat of its own.
    n.handle_log_persisted(t, LogIndex(4), Term(1));
    n.handle_message(t, from(3, ok(4, round)));
    let out = drain(&mut n);
    assert_eq!(n.commit_index(), LogIndex(4));
    assert!(
        out.iter().any(|a| matches!(a, Action::ReadReady { id: 7 })),
        "{out:?}"
    );
    assert!(appends(&out).is_empty(), "nothing more to send: {out:?}");
}

#[test]
fn a_read_alone_sends_a_heartbeat_round() {
    let t = Time::ZERO;
    let mut n = leader(t);
    let t = t + MS;
    n.read_index(t, 9).unwrap();
    let sent = appends(&drain(&mut n));
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|&(_, entries, _)| entries == 0));
    n.handle_message(t, from(2, ok(1, sent[0].2)));
    assert!(drain(&mut n)
        .iter()
        .any(|a| matches!(a, Action::ReadReady { id: 9 })));
}

/// §6.4: a read is served only once a majority has answered a message
/// sent after the read arrived. An answer to an append or heartbeat sent
/// before it, even one fed between the read and the next drain (as a loop
/// turn does), proves nothing: that leader may have been deposed since.
#[test]
fn an_answer_to_a_round_sent_before_the_read_does_not_confirm_it() {
    let t = Time::ZERO;
    let mut n = leader(t);
    let t = t + MS;
    n.read_index(t, 5).unwrap();
    // Late answers to round 0, sent before the read.
    n.handle_message(t, from(2, ok(1, 0)));
    n.handle_message(t, from(3, ok(1, 0)));
    let out = drain(&mut n);
    assert!(
        !out.iter().any(|a| matches!(a, Action::ReadReady { .. })),
        "{out:?}"
    );
    let sent = appends(&out);
    assert_eq!(sent.len(), 2, "{sent:?}");
    n.handle_message(t, from(3, ok(1, sent[0].2)));
    assert!(drain(&mut n)
        .iter()
        .any(|a| matches!(a, Action::ReadReady { id: 5 })));
}

/// Issue 12: a member at rest wakes only to send or receive. A leader's
/// timer is its heartbeat; CheckQuorum runs at the first heartbeat at or
/// after its deadline instead of at a wake-up of its own, which would send
/// nothing. It still deposes a leader cut off from its followers, at most
/// one heartbeat later.
#[test]
fn a_leader_at_rest_wakes_only_to_send() {
    let t0 = Time::ZERO;
    let mut n = leader(t0);
    let config = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
    let mut t = t0;
    let mut wakes = 0u32;
    while t < t0 + config.election_timeout_min * 10 {
        // A loop wakes a little late, by a varying amount: the heartbeat
        // and CheckQuorum deadlines drift apart.
        wakes += 1;
        t = n.poll_timeout().expect("a leader has a timer") + MS * (wakes % 4) / 2;
        n.handle_timeout(t);
        let sent = appends(&drain(&mut n));
        assert_eq!(sent.len(), 2, "a wake-up at {t:?} sent {sent:?}");
        for (peer, _, round) in sent {
            n.handle_message(t, from(peer, ok(1, round)));
        }
        drain(&mut n);
        assert_eq!(n.role(), Role::Leader);
    }
    // The followers fall silent at `cut`: two CheckQuorum windows later at
    // most, plus the heartbeat it waits for, it steps down.
    let cut = t;
    while n.role() == Role::Leader {
        t = n.poll_timeout().expect("a leader has a timer");
        assert!(
            t <= cut + config.election_timeout_min * 2 + config.heartbeat_interval,
            "still leading at {t:?}, cut off at {cut:?}"
        );
        n.handle_timeout(t);
        drain(&mut n);
    }
}
