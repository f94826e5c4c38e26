//! The nemesis of a simulator run ([`super::run_seed`]): the faults it
//! injects while clients read and write, configuration changes and
//! leadership transfers among them, and the one forged message of a
//! member that goes bad.

use std::time::Duration;

use bytes::Bytes;

use super::cluster::{forge_frame, Cluster};
use crate::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse,
    LogIndex, MembershipChange, Message, MessageBody, NodeId, ReadIndexRequest, ReadIndexResponse,
    RequestVote, RequestVoteResponse, Rng, SnapshotMeta, Term,
};

/// One single-server configuration change on the leader, of the kinds an
/// operator makes: add a node as a learner or directly as a voter,
/// promote a learner, remove a voter (the leader itself now and then) or
/// a learner. At least two voters stay. Refusals (a change in progress, a
/// learner behind) are part of the test.
fn reconfigure(cluster: &mut Cluster, rng: &mut Rng, ids: &[NodeId]) -> String {
    let Some(l) = cluster.leader() else {
        return "reconfigure: no leader".into();
    };
    let m = cluster.node(l).expect("up").membership().clone();
    let outside: Vec<NodeId> = ids.iter().copied().filter(|&id| !m.contains(id)).collect();
    let any = |rng: &mut Rng, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
    let mut options = Vec::new();
    if !outside.is_empty() {
        let id = any(rng, &outside);
        options.push(MembershipChange::AddLearner(id));
        options.push(MembershipChange::AddVoter(id));
    }
    if !m.learners.is_empty() {
        let id = any(rng, &m.learners);
        options.push(MembershipChange::Promote(id));
        options.push(MembershipChange::Promote(id));
        options.push(MembershipChange::Remove(id));
    }
    if m.voters.len() > 2 {
        options.push(MembershipChange::Remove(any(rng, &m.voters)));
    }
    if options.is_empty() {
        return format!("reconfigure: nothing to change in {m:?}");
    }
    let change = options[rng.range(0, options.len() as u64) as usize];
    match cluster.propose_membership(l, change) {
        Ok(id) => format!("n{l}: {change:?} at {}", id.index),
        Err(e) => format!("n{l}: {change:?} refused: {e}"),
    }
}

/// One member sends one forged message with an arbitrary term, then is
/// crashed or cut off (a member with a memory fault, or a compromised one,
/// caught at once): the run must still end with a leader and a new commit
/// on every member once it heals. The frame goes through the codec as in
/// the server, so terms above `Term::MAX` are refused there. Terms are
/// what is forged: the contents are ones that cannot break safety by
/// themselves (an AppendEntries anchored at index 0, a snapshot the
/// addressee has committed, answers to nothing), since Raft does not
/// survive a member that lies about its log; and a term the addressee
/// could honestly share with a real leader (a small step up) is never
/// used for the kinds only a leader sends. Returns what happened, and
/// whether the codec refused the frame.
pub(super) fn forge_one(
    cluster: &mut Cluster,
    rng: &mut Rng,
    ids: &[NodeId],
    crashed: &mut Vec<NodeId>,
) -> (String, bool) {
    let any = |rng: &mut Rng, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
    let from = any(rng, ids);
    let targets: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|&id| id != from && cluster.is_up(id))
        .collect();
    if targets.is_empty() {
        return (format!("forge from n{from}: no target"), false);
    }
    let to = any(rng, &targets);
    let node = cluster.node(to).expect("up");
    let current = node.term();
    let commit = node.commit_index();
    let membership = node.membership().clone();
    let term = match rng.range(0, 8) {
        0 => current.plus_max_jump().0,
        1 => current.plus_max_jump().0 + 1,
        2 => Term::MAX.0 - 1,
        3 => Term::MAX.0,
        4 => Term::MAX.0 + 1,
        5 => u64::MAX - 1,
        6 => u64::MAX,
        _ => rng.next_u64().max(current.plus_max_jump().0),
    };
    let rv = |pre_vote, leadership_transfer| {
        MessageBody::RequestVote(RequestVote {
            pre_vote,
            leadership_transfer,
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
        })
    };
    let vote = |pre_vote, granted| {
        MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted })
    };
    let body = match rng.range(0, 12) {
        0 => rv(false, false),
        1 => rv(true, false),
        2 => rv(false, true),
        3 => vote(rng.chance(0.5), rng.chance(0.5)),
        4 => MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: Vec::new(),
            leader_commit: LogIndex(0),
            round: 0,
        }),
        5 => MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            round: 0,
            result: AppendResult::Success {
                match_index: LogIndex(0),
            },
        }),
        6 if commit.0 > 0 => MessageBody::InstallSnapshot(InstallSnapshot {
            meta: SnapshotMeta {
                last_index: commit,
                last_term: Term(1),
                len: 1,
                membership: Box::new(membership),
            },
            offset: 0,
            data: Bytes::new(),
            round: 0,
        }),
        7 => MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            last_index: LogIndex(1),
            next_offset: 0,
            round: 0,
        }),
        8 => MessageBody::ReadIndexRequest(ReadIndexRequest { id: rng.next_u64() }),
        9 => MessageBody::ReadIndexResponse(ReadIndexResponse {
            id: rng.next_u64(),
            read_index: None,
        }),
        _ => MessageBody::TimeoutNow,
    };
    let msg = Message {
        from,
        to,
        term: Term(term),
        body,
    };
    let what = format!("{msg}");
    let (outcome, refused) = match cluster.inject_frame(forge_frame(&msg)) {
        Ok(_) => {
            let now_at = cluster.node(to).map_or(Term(0), |n| n.term());
            (format!("n{to} now at term {now_at}"), false)
        }
        Err(e) => (format!("refused by the codec: {e}"), true),
    };
    let stop = if rng.chance(0.5) {
        cluster.crash(from);
        if !crashed.contains(&from) {
            crashed.push(from);
        }
        "crashed"
    } else {
        cluster.isolate(from);
        "isolated"
    };
    (
        format!("forged {what} ({outcome}); n{from} {stop}"),
        refused,
    )
}

/// One fault, chosen by `rng`: crashes (the leader, with unsynced
/// entries, anyone, everyone), restarts, isolation, partitions, blocked
/// links, freezes, a lossy network, configuration changes, leadership
/// transfers, or healing. `crashed` and `frozen` track who is down, for
/// the heal. Returns what it did.
pub(super) fn inject_fault(
    cluster: &mut Cluster,
    rng: &mut Rng,
    ids: &[NodeId],
    crashed: &mut Vec<NodeId>,
    frozen: &mut Vec<NodeId>,
) -> String {
    let pick = |rng: &mut Rng| ids[rng.range(0, ids.len() as u64) as usize];
    match rng.range(0, 16) {
        13 => reconfigure(cluster, rng, ids),
        14 => {
            // Changes in a burst (all but the first must be refused while
            // it is uncommitted), then the leader is cut off, so that a
            // new leader may start from a log without them: the case the
            // single-server rules exist for.
            let mut s: Vec<String> = (0..rng.range(2, 4))
                .map(|_| reconfigure(cluster, rng, ids))
                .collect();
            if let Some(l) = cluster.leader().filter(|_| rng.chance(0.5)) {
                cluster.isolate(l);
                s.push(format!("isolate n{l}"));
            }
            s.join("; ")
        }
        15 => {
            let Some(l) = cluster.leader() else {
                return "transfer leadership: no leader".into();
            };
            let target = rng.chance(0.5).then(|| pick(rng));
            match cluster.transfer_leadership(l, target) {
                Ok(t) => format!("transfer leadership n{l} -> n{t}"),
                Err(e) => format!("transfer leadership n{l} -> {target:?}: {e}"),
            }
        }
        12 => {
            // Crash the leader at the worst moment for §10.2.1: while it
            // holds entries it sent but has not fsynced.
            let Some(id) = cluster.leader() else {
                return "crash leader with unsynced entries: no leader".into();
            };
            let until = cluster.now() + Duration::from_millis(200);
            cluster.run_until_pred(until - cluster.now(), |c| c.has_unsynced_entries(id));
            let unsynced = cluster.has_unsynced_entries(id);
            cluster.crash(id);
            crashed.push(id);
            format!("crash leader n{id} (unsynced entries: {unsynced})")
        }
        0 | 1 => {
            let id = cluster.leader().unwrap_or_else(|| pick(rng));
            cluster.crash(id);
            crashed.push(id);
            format!("crash n{id} (leader: {})", cluster.leader().is_none())
        }
        2 => {
            let id = pick(rng);
            cluster.crash(id);
            crashed.push(id);
            format!("crash n{id}")
        }
        3 | 4 => {
            let mut s = Vec::new();
            for id in crashed.drain(..) {
                cluster.restart(id);
                s.push(format!("n{id}"));
            }
            format!("restart {}", s.join(" "))
        }
        5 => {
            let id = cluster.leader().unwrap_or_else(|| pick(rng));
            cluster.isolate(id);
            format!("isolate n{id}")
        }
        6 => {
            let mut group: Vec<NodeId> = ids.iter().copied().filter(|_| rng.chance(0.5)).collect();
            if group.is_empty() {
                group.push(pick(rng));
            }
            let reset = rng.chance(0.5);
            cluster.partition(&group, reset);
            format!("partition {group:?} reset={reset}")
        }
        7 => {
            let (a, b) = (pick(rng), pick(rng));
            if a != b {
                cluster.block(a, b);
            }
            format!("block n{a} -> n{b}")
        }
        8 => {
            let id = cluster.leader().unwrap_or_else(|| pick(rng));
            cluster.freeze(id);
            frozen.push(id);
            format!("freeze n{id}")
        }
        9 => {
            for id in frozen.drain(..) {
                cluster.thaw(id);
            }
            cluster.heal();
            "heal + thaw".to_string()
        }
        10 => {
            cluster.net.loss = [0.0, 0.01, 0.05, 0.2][rng.range(0, 4) as usize];
            cluster.net.duplicate = [0.0, 0.02, 0.1][rng.range(0, 3) as usize];
            cluster.net.max_delay = Duration::from_millis([2, 10, 50][rng.range(0, 3) as usize]);
            format!(
                "net loss={} dup={} max_delay={:?}",
                cluster.net.loss, cluster.net.duplicate, cluster.net.max_delay
            )
        }
        _ => {
            // Kill everything, then bring it all back: only what was
            // persisted survives.
            for &id in ids {
                cluster.crash(id);
            }
            for &id in ids {
                cluster.restart(id);
            }
            crashed.clear();
            frozen.clear();
            "crash all + restart all".to_string()
        }
    }
}
