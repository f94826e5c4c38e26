//! Feeds an arbitrary sequence of inputs into a small simulated cluster:
//! time passing (timeouts), crashes and restarts, freezes, partitions with
//! and without connection resets (link reports), lossy and duplicating
//! network, proposals and reads. The simulator checks the Raft safety
//! properties and every node's invariants after each step; any violation
//! or assertion is a crash for libFuzzer.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use raft_proto::sim::{encode_write, Cluster};
use raft_proto::NodeId;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = 3 + u64::from(data[0] % 2) * 2; // 3 or 5 nodes
    let mut c = Cluster::new(n, u64::from(data[1]));
    let mut value = 0u64;
    let mut read_id = 0u64;
    // At most 256 inputs, each at most 1 s of virtual time: bounded work.
    for chunk in data[2..].chunks(2).take(256) {
        let (op, arg) = (chunk[0], chunk.get(1).copied().unwrap_or(0));
        let node = NodeId(1 + u64::from(arg) % n);
        match op % 12 {
            0 | 1 | 2 => {
                c.run_for(Duration::from_millis(u64::from(arg) * 4 + 1));
            }
            3 => c.crash(node),
            4 => c.restart(node),
            5 => c.freeze(node),
            6 => c.thaw(node),
            7 => c.isolate(node),
            8 => {
                let group: Vec<NodeId> = (1..=n).filter(|i| arg & (1 << i) != 0).map(NodeId).collect();
                c.partition(&group, arg & 1 == 1);
            }
            9 => c.heal(),
            10 => {
                c.net.loss = f64::from(arg % 4) * 0.1;
                c.net.duplicate = f64::from((arg >> 2) % 4) * 0.1;
            }
            _ => {
                let target = c.leader().unwrap_or(node);
                if arg & 1 == 0 {
                    value += 1;
                    let _ = c.propose(target, encode_write(u64::from(arg >> 1) % 3, value));
                } else {
                    read_id += 1;
                    let _ = c.read(target, read_id, u64::from(arg >> 1) % 3);
                }
            }
        }
        if let Some(v) = c.violation() {
            panic!("safety violation: {v}");
        }
        let _ = c.take_completions();
    }
});
