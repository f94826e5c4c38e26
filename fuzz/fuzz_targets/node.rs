//! One real node among hostile peers: arbitrary sequences of messages that
//! the codec accepts (and, handed over directly, some it refuses), from any
//! peer with any term, interleaved with honest-looking answers, proposals,
//! reads, link reports, timeouts and restarts. Nothing may panic, the
//! node's invariants hold after every input, and a message it drops as a
//! peer fault changes nothing. The driver is `raft_proto::sim::fuzz`, which
//! `cargo test -p raft-proto --test adversary` also runs briefly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raft_proto::sim::fuzz::fuzz_node(data);
});
