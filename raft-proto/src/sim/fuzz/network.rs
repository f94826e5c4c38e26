//! The network as the adversary ([`super::fuzz_network`]): a cluster of
//! correct nodes whose message deliveries, duplicates, losses and time
//! the bytes choose, then a fair network under which it must recover.

use std::time::Duration;

use super::{FuzzStats, Input, MAX_INPUTS};
use crate::sim::cluster::{encode_write, Cluster};
use crate::{Config, NodeId, ProposeError};

/// The run behind [`super::fuzz_network`] and [`super::replay_network`].
pub(super) fn network(data: &[u8], trace: bool) -> FuzzStats {
    let mut inp = Input { data };
    let flags = inp.byte();
    let n = if flags & 1 == 0 { 3 } else { 5 };
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    let mut config = Config::new(NodeId(1), ids.clone());
    config.pre_vote = flags & 2 == 0;
    config.check_quorum = flags & 4 == 0;
    config.max_entries_per_append = 1 + usize::from(inp.byte() % 8);
    config.max_inflight_appends = 1 + usize::from(inp.byte() % 4);
    let mut c = Cluster::with_config(config, u64::from(inp.byte()));
    if trace {
        c.enable_trace();
    }
    c.take_network();
    let mut stats = FuzzStats::default();
    let mut value = 0;
    let mut read_id = 0;
    while !inp.is_empty() && stats.inputs < MAX_INPUTS {
        stats.inputs += 1;
        let op = inp.byte();
        let pick = usize::from(inp.byte());
        let in_flight = c.in_flight().len().max(1);
        match op % 8 {
            0..=3 => c.deliver_in_flight(pick % in_flight, false),
            4 => c.deliver_in_flight(pick % in_flight, true),
            5 => c.drop_in_flight(pick % in_flight),
            6 => {
                c.run_for(Duration::from_millis(pick as u64 * 2));
            }
            _ => {
                let target = c.leader().unwrap_or(ids[pick % ids.len()]);
                if op & 0x80 == 0 {
                    value += 1;
                    let _ = c.propose(target, encode_write(u64::from(op % 3), value));
                } else {
                    read_id += 1;
                    let _ = c.read(target, read_id, u64::from(op % 3));
                }
            }
        }
        if let Some(v) = c.violation().cloned() {
            fail(&mut c, &format!("safety violation: {v}"));
        }
        // Bounded memory: a network this slow loses the oldest.
        while c.in_flight().len() > 512 {
            c.drop_in_flight(0);
        }
        let _ = c.take_completions();
        stats.led |= c.leader().is_some();
        stats.max_commit = stats.max_commit.max(c.checker().committed_len());
    }

    // The network turns fair: what is in flight arrives, in order, and so
    // does everything after. A leader must emerge and commit.
    c.release_network();
    // A leader elected under the adversary may be deposed before its write
    // commits; like a client, try again on the current leader.
    let deadline = c.now() + Duration::from_secs(30);
    let mut done = false;
    while !done && c.now() < deadline {
        if !c.run_until_pred(deadline - c.now(), |c| c.leader().is_some()) {
            break;
        }
        let leader = c.leader().expect("leader");
        let id = match c.propose(leader, encode_write(u64::MAX, 0)) {
            Ok(id) => id,
            Err(ProposeError::Busy) => {
                c.run_for(Duration::from_millis(50));
                continue;
            }
            Err(e) => fail(&mut c, &format!("the leader refused a write: {e}")),
        };
        done = c.run_until_pred(Duration::from_secs(2), |c| {
            ids.iter().all(|&n| {
                c.node(n).is_some_and(|node| {
                    node.last_applied() >= id.index
                        && node.entry(id.index).map(|e| e.term) == Some(id.term)
                })
            })
        });
    }
    if let Some(v) = c.violation().cloned() {
        fail(&mut c, &format!("safety violation: {v}"));
    }
    if !done {
        fail(
            &mut c,
            "no write applied everywhere within 30 s of a fair network",
        );
    }
    stats.max_commit = stats.max_commit.max(c.checker().committed_len());
    stats
}

/// Panics with `why` and the trace, if one was recorded.
fn fail(c: &mut Cluster, why: &str) -> ! {
    let trace = c.take_trace().join("\n");
    panic!("{why}\n{trace}");
}
