//! A simulated cluster of correct nodes whose network is the adversary: the
//! input chooses which message in flight arrives next, which are duplicated
//! or lost, and when time passes. The simulator's safety checks must hold
//! throughout (a peer fault reported on this honest traffic is a violation
//! too), and once the network turns fair the cluster must commit again.
//! The driver is `raft_proto::sim::fuzz`; replay a crash with its trace by
//! calling `raft_proto::sim::fuzz::replay_network` on the input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raft_proto::sim::fuzz::fuzz_network(data);
});
