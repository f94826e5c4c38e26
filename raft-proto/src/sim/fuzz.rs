//! Byte-driven adversaries, shared by the cargo-fuzz targets in `fuzz/` and
//! the proptests that run them briefly under `cargo test`: the same bytes
//! give the same run either way.
//!
//! - [`fuzz_node`]: one real [`Node`] among hostile peers. The bytes choose
//!   messages (from any peer, with any term, mostly near the node's own
//!   log so that they reach deep into the handlers), and every one of them
//!   goes through [`crate::codec`], as in the server: only frames the codec
//!   accepts reach the node. Frames it refuses are also handed to the node
//!   directly, as by a driver that skipped the codec. Interleaved: honest
//!   looking answers to what the node sent (so it wins elections and
//!   commits), proposals, reads, link reports, timeouts, restarts from what
//!   it persisted. Nothing may panic, the node's invariants hold after every
//!   input, what it asks the driver to do is consistent, a message it
//!   drops as a [`PeerFault`](crate::PeerFault) changes nothing, and no
//!   message moves its term past [`Term::MAX_JUMP`] unless two peers
//!   claimed the new term. Terms range up to `u64::MAX`.
//! - [`fuzz_network`]: a simulated cluster of correct nodes whose network is
//!   the adversary: the bytes choose which message in flight arrives next,
//!   which are duplicated or lost, and when time passes. The simulator's
//!   safety checks hold throughout (a peer fault reported on this honest
//!   traffic counts as a violation), and once the network turns fair the
//!   cluster recovers.
//!
//! Here: the entry points, the byte reader and the single node's driver
//! state; `node` runs it (feeds the inputs, checks the output), `messages`
//! makes up the messages and answers it is fed, `network` runs the
//! cluster under the network adversary.

mod messages;
mod network;
mod node;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::{Config, Entry, HardState, LogIndex, Message, Node, NodeId, Term, Time, MAX_ENTRY_LEN};

/// What a run reached, so that tests can tell the adversary got where it is
/// meant to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuzzStats {
    /// Inputs fed.
    pub inputs: u64,
    /// Peer messages handed to the node after the codec accepted them.
    pub delivered: u64,
    /// Frames the codec refused.
    pub refused: u64,
    /// [`Event::PeerFault`](crate::Event::PeerFault)s reported.
    pub faults: u64,
    /// How many of each kind (the `PeerFault` variant's name).
    pub fault_kinds: BTreeMap<String, u64>,
    /// Highest commit index any node reached.
    pub max_commit: u64,
    /// Whether the node (any node, for [`fuzz_network`]) led at some point.
    pub led: bool,
}

/// The fuzzer's bytes, read front to back; zeros once they run out.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bit(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }

    fn bytes(&mut self, n: usize) -> Bytes {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Bytes::copy_from_slice(head)
    }
}

/// A command one byte longer than any member accepts, without allocating.
static TOO_LARGE: [u8; MAX_ENTRY_LEN + 1] = [0; MAX_ENTRY_LEN + 1];

const ID: NodeId = NodeId(1);
/// Recent messages the node sent, for answers that look honest.
const SENT_KEPT: usize = 32;
/// Inputs per run at most: bounded work per fuzz case.
const MAX_INPUTS: u64 = 4096;
/// The longest a disk stalls before its sync completes: under the minute
/// after which debug builds call unreported appends a driver bug.
const DISK_STALL_MAX: Duration = Duration::from_secs(50);

/// One node, its "disk", and what a driver would check of its output.
struct NodeDriver {
    config: Config,
    peers: Vec<NodeId>,
    node: Node,
    now: Time,
    hard_state: HardState,
    disk: Vec<Entry>,
    /// Report the log durable at the end of every drain, as a follower's
    /// driver does after its fsync; off, the leader waits for its disk.
    sync_at_drain: bool,
    /// Since when, with `sync_at_drain` off, appends have waited for a
    /// sync. A real disk may stall, but one whose syncs never complete is
    /// a driver that never calls `Node::handle_log_persisted`, which debug
    /// builds report loudly after a minute (issue 28): the stalled disk
    /// completes its sync after [`DISK_STALL_MAX`] at most.
    unsynced_since: Option<Time>,
    sent: VecDeque<Message>,
    /// The highest term each peer claimed (a pre-candidate: the one
    /// before the term it asks for), as the node should count them.
    claims: BTreeMap<NodeId, Term>,
    next_read: u64,
    reads: BTreeSet<u64>,
    applied: LogIndex,
    stats: FuzzStats,
}

/// Feeds one node the inputs `data` describes; panics if anything is wrong
/// (see the module docs). Work is bounded by the length of `data`.
pub fn fuzz_node(data: &[u8]) -> FuzzStats {
    let mut inp = Input { data };
    let mut d = NodeDriver::new(&mut inp);
    while !inp.is_empty() && d.stats.inputs < MAX_INPUTS {
        d.stats.inputs += 1;
        d.input(&mut inp);
        d.after_input();
    }
    d.stats
}

/// Runs a cluster of correct nodes over a network the bytes control; panics
/// on a safety violation, or if the cluster does not recover once the
/// network is fair again. Work is bounded by the length of `data`.
pub fn fuzz_network(data: &[u8]) -> FuzzStats {
    network::network(data, false)
}

/// [`fuzz_network`] with the simulator's trace, printed to stderr when the
/// run fails: for replaying a fuzzer's find.
pub fn replay_network(data: &[u8]) -> FuzzStats {
    network::network(data, true)
}
