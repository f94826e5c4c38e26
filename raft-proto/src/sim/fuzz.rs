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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::cluster::{encode_write, Cluster};
use crate::codec;
use crate::{
    Action, AppendEntries, AppendEntriesResponse, AppendResult, Config, Entry, EntryPayload, Event,
    HardState, LogIndex, Membership, MembershipChange, Message, MessageBody, Node, NodeId,
    PersistentState, ProposeError, RequestVote, RequestVoteResponse, Role, Term, Time,
    MAX_ENTRY_LEN,
};

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
    /// [`Event::PeerFault`]s reported.
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

impl NodeDriver {
    fn new(inp: &mut Input<'_>) -> NodeDriver {
        let flags = inp.byte();
        let n = if flags & 1 == 0 { 3 } else { 5 };
        let voters: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut config = Config::new(ID, voters.clone());
        config.pre_vote = flags & 2 == 0;
        config.check_quorum = flags & 4 == 0;
        config.fast_failover = flags & 8 == 0;
        config.seed = u64::from(inp.byte());
        config.max_entries_per_append = 1 + usize::from(inp.byte() % 8);
        config.max_bytes_per_append = 64;
        config.max_inflight_appends = 1 + usize::from(inp.byte() % 4);
        config.max_uncommitted_entries = 16;
        config.max_pending_reads = 8;

        // What it finds on disk: a few entries of rising terms, possibly
        // right below Term::MAX.
        let mut term = if flags & 0x80 != 0 {
            Term::MAX.0 - 4
        } else {
            0
        };
        let mut disk = Vec::new();
        for i in 1..=u64::from(inp.byte() % 8) {
            term = (term + u64::from(inp.byte() % 2)).clamp(1, Term::MAX.0);
            disk.push(Entry {
                term: Term(term),
                index: LogIndex(i),
                payload: EntryPayload::Noop,
            });
        }
        let current_term = Term((term + u64::from(inp.byte() % 3)).min(Term::MAX.0));
        let voted = inp.byte() % (n as u8 + 1);
        let hard_state = HardState {
            current_term,
            voted_for: (voted != 0).then_some(NodeId(u64::from(voted))),
        };
        let state = PersistentState {
            snapshot: None,
            hard_state,
            entries: disk.clone(),
            applied: LogIndex(0),
        };
        let node = Node::new(config.clone(), state, Time::ZERO).expect("valid config and state");
        NodeDriver {
            peers: voters.into_iter().filter(|&v| v != ID).collect(),
            config,
            node,
            now: Time::ZERO,
            hard_state,
            disk,
            sync_at_drain: true,
            unsynced_since: None,
            sent: VecDeque::new(),
            claims: BTreeMap::new(),
            next_read: 0,
            reads: BTreeSet::new(),
            applied: LogIndex(0),
            stats: FuzzStats::default(),
        }
    }

    fn peer(&self, b: u8) -> NodeId {
        self.peers[usize::from(b) % self.peers.len()]
    }

    fn input(&mut self, inp: &mut Input<'_>) {
        match inp.byte() % 16 {
            0..=4 => {
                let direct = inp.bit();
                let msg = self.message(inp);
                self.deliver(msg, direct);
            }
            5..=7 => {
                if let Some(msg) = self.answer(inp) {
                    self.deliver(msg, false);
                }
            }
            8 => {
                // Raw bytes after a correct length prefix and version.
                let n = usize::from(inp.byte());
                let body = inp.bytes(n);
                let mut frame = BytesMut::new();
                frame.put_u32(body.len() as u32 + 1);
                frame.put_u8(codec::VERSION);
                frame.put_slice(&body);
                match codec::decode(&mut frame) {
                    Ok(Some(msg)) => self.feed(msg),
                    Ok(None) => unreachable!("a whole frame is never incomplete"),
                    Err(_) => self.stats.refused += 1,
                }
            }
            9 => {
                self.now = self.now + Duration::from_millis(5 * u64::from(inp.byte()));
                self.timeout();
            }
            10 => {
                if let Some(t) = self.node.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            11 => self.propose(inp),
            12 => {
                self.next_read += 1;
                if self.node.read_index(self.now, self.next_read).is_ok() {
                    self.reads.insert(self.next_read);
                }
                self.drain();
            }
            13 => {
                let peer = self.peer(inp.byte());
                if inp.bit() {
                    self.node.handle_link_down(self.now, peer);
                } else {
                    self.node.handle_link_up(self.now, peer);
                }
                self.drain();
            }
            14 => {
                match inp.byte() % 3 {
                    0 => self.sync_at_drain = !self.sync_at_drain,
                    1 => self.report_durable(),
                    // A report for something the log does not hold (any
                    // more) is ignored.
                    _ => {
                        let index = self.index(inp);
                        let term = self.term(inp);
                        self.node.handle_log_persisted(self.now, index, term);
                    }
                }
                self.drain();
            }
            _ => match inp.byte() % 6 {
                0 => self.restart(),
                // Configuration changes and leadership transfers, as an
                // operator issues them; refusals change nothing.
                4 => {
                    let id = NodeId(1 + u64::from(inp.byte() % 6));
                    let change = match inp.byte() % 4 {
                        0 => MembershipChange::AddLearner(id),
                        1 => MembershipChange::AddVoter(id),
                        2 => MembershipChange::Promote(id),
                        _ => MembershipChange::Remove(id),
                    };
                    let before = self.node.status();
                    if self
                        .node
                        .propose_membership(self.now, change, Bytes::new())
                        .is_err()
                    {
                        assert_eq!(
                            self.node.status(),
                            before,
                            "a refused change changed the node"
                        );
                        assert_eq!(self.node.poll_action(), None, "a refused change had output");
                    }
                    self.drain();
                }
                5 => {
                    let target = inp.bit().then(|| self.peer(inp.byte()));
                    let _ = self.node.transfer_leadership(self.now, target);
                    self.drain();
                }
                1 => {
                    self.node.shutdown();
                    assert_eq!(self.node.poll_action(), None, "output after shutdown");
                    assert_eq!(self.node.poll_timeout(), None, "deadline after shutdown");
                }
                _ => {
                    // Time passes without a timeout call: a late driver.
                    self.now = self.now + Duration::from_millis(u64::from(inp.byte()));
                }
            },
        }
    }

    /// A stalled disk completes its sync at last (see `unsynced_since`).
    fn end_long_stall(&mut self) {
        let Some(since) = self.unsynced_since else {
            return;
        };
        if self.now.saturating_since(since) >= DISK_STALL_MAX {
            self.report_durable();
        }
    }

    /// Reports the whole disk durable, as after a completed sync.
    fn report_durable(&mut self) {
        self.unsynced_since = None;
        if let Some((index, term)) = self.disk.last().map(|e| (e.index, e.term)) {
            self.node.handle_log_persisted(self.now, index, term);
        }
    }

    fn timeout(&mut self) {
        self.end_long_stall();
        self.node.handle_timeout(self.now);
        self.drain();
        if let Some(t) = self.node.poll_timeout() {
            // Otherwise the driver would spin.
            assert!(
                t > self.now,
                "deadline {t} not after a timeout at {}",
                self.now
            );
        }
    }

    fn propose(&mut self, inp: &mut Input<'_>) {
        let command = if inp.byte() == 0xff {
            Bytes::from_static(&TOO_LARGE)
        } else {
            let n = usize::from(inp.byte() % 24);
            inp.bytes(n)
        };
        let len = command.len();
        let before = self.node.status();
        match self.node.propose(self.now, command) {
            Ok(id) => {
                assert_eq!(self.node.role(), Role::Leader);
                assert_eq!(id.index, self.node.last_log_index());
                assert_eq!(id.term, self.node.term());
                assert!(len <= MAX_ENTRY_LEN);
            }
            Err(e) => {
                if let ProposeError::TooLarge { .. } = e {
                    assert!(len > MAX_ENTRY_LEN, "{e} for {len} bytes");
                }
                assert_eq!(
                    self.node.status(),
                    before,
                    "a refused proposal changed the node"
                );
                assert_eq!(
                    self.node.poll_action(),
                    None,
                    "a refused proposal had output"
                );
            }
        }
        self.drain();
    }

    fn restart(&mut self) {
        let state = PersistentState {
            snapshot: None,
            hard_state: self.hard_state,
            entries: self.disk.clone(),
            applied: LogIndex(0),
        };
        self.node = Node::new(self.config.clone(), state, self.now)
            .expect("a node restarts from what it persisted");
        self.applied = LogIndex(0);
        self.reads.clear();
        self.sent.clear();
        self.drain();
    }

    // ----- Messages ---------------------------------------------------------

    /// A log index, mostly near the node's last or commit index.
    fn index(&mut self, inp: &mut Input<'_>) -> LogIndex {
        let last = self.node.last_log_index().0;
        let commit = self.node.commit_index().0;
        LogIndex(match inp.byte() % 12 {
            0 => 0,
            1 => last.saturating_sub(1),
            2 | 3 => last,
            4 => last.saturating_add(1),
            5 => commit,
            6 => commit.saturating_sub(1),
            7 => commit.saturating_add(1),
            8 => u64::from(inp.byte()),
            9 => last.saturating_add(u64::from(inp.byte())),
            10 => u64::MAX - u64::from(inp.byte() % 2),
            _ => inp.u64(),
        })
    }

    /// A term, mostly the node's own or next to it, sometimes at or just
    /// past the largest jump one message may make ([`Term::MAX_JUMP`]),
    /// at or beyond [`Term::MAX`], up to `u64::MAX`.
    fn term(&mut self, inp: &mut Input<'_>) -> Term {
        let t = self.node.term().0;
        let bound = t.saturating_add(Term::MAX_JUMP.0);
        Term(match inp.byte() % 16 {
            0..=4 => t,
            5 => t.saturating_add(1),
            6 => t.saturating_sub(1),
            7 => t.saturating_add(2),
            8 => Term::MAX.0,
            9 => Term::MAX.0 + 1,
            10 => u64::from(inp.byte()),
            11 => bound,
            12 => bound.saturating_add(1 + u64::from(inp.byte())),
            13 => Term::MAX.0 - 1,
            14 => u64::MAX - u64::from(inp.byte() % 2),
            _ => inp.u64(),
        })
    }

    /// The term of the entry at `index`: mostly what the node's log holds
    /// there, so that consistency checks pass; sometimes not.
    fn log_term(&mut self, inp: &mut Input<'_>, index: LogIndex) -> Term {
        let ours = if index.0 == 0 {
            Some(Term(0))
        } else {
            self.node.entry(index).map(|e| e.term)
        };
        let ours = ours.unwrap_or(self.node.term());
        match inp.byte() % 8 {
            0..=3 => ours,
            4 => Term(ours.0.saturating_add(1)),
            5 => Term(ours.0.saturating_sub(1)),
            6 => Term(0),
            _ => self.term(inp),
        }
    }

    fn round(&mut self, inp: &mut Input<'_>) -> u64 {
        match inp.byte() % 4 {
            0..=2 => u64::from(inp.byte() % 8),
            _ => inp.u64(),
        }
    }

    /// Any message, mostly addressed correctly and mostly near the node's
    /// state; the codec refuses the inconsistent ones.
    fn message(&mut self, inp: &mut Input<'_>) -> Message {
        let from = match inp.byte() {
            0xff => NodeId(inp.u64()),
            b => self.peer(b),
        };
        let to = match inp.byte() {
            0xff => NodeId(inp.u64()),
            _ => ID,
        };
        let term = self.term(inp);
        // Four in five of the Figure 2 kinds, which elections and commits
        // need; the rest snapshot chunks and read-index messages.
        let kind = match inp.byte() % 10 {
            k @ 0..=7 => k / 2,
            8 => 4 + u8::from(inp.bit()),
            _ => 6 + inp.byte() % 3,
        };
        let body = match kind {
            0 => {
                let pre_vote = inp.bit();
                // Now and then both, which the codec refuses.
                let leadership_transfer = inp.byte().is_multiple_of(8);
                let last_log_index = self.index(inp);
                let last_log_term = self.log_term(inp, last_log_index);
                MessageBody::RequestVote(RequestVote {
                    pre_vote,
                    leadership_transfer,
                    last_log_index,
                    last_log_term,
                })
            }
            1 => MessageBody::RequestVoteResponse(RequestVoteResponse {
                pre_vote: inp.bit(),
                granted: inp.bit(),
            }),
            2 => MessageBody::AppendEntries(self.append_entries(inp)),
            3 => {
                let round = self.round(inp);
                let result = self.append_result(inp);
                MessageBody::AppendEntriesResponse(AppendEntriesResponse { round, result })
            }
            4 => {
                // A chunk of a snapshot, mostly beyond the commit index so
                // that the follower takes it; the codec refuses the
                // impossible ones.
                let last_index = LogIndex(self.index(inp).0.max(1));
                let last_term = self.log_term(inp, last_index);
                let len = 1 + u64::from(inp.byte());
                let offset = u64::from(inp.byte()) % (len + 1);
                let n = usize::from(inp.byte()).min((len - offset.min(len)) as usize);
                MessageBody::InstallSnapshot(crate::InstallSnapshot {
                    meta: crate::SnapshotMeta {
                        last_index,
                        last_term,
                        len,
                        membership: Box::new(self.membership(inp)),
                    },
                    offset,
                    data: inp.bytes(n),
                    round: self.round(inp),
                })
            }
            5 => MessageBody::InstallSnapshotResponse(crate::InstallSnapshotResponse {
                last_index: LogIndex(self.index(inp).0.max(1)),
                next_offset: u64::from(inp.byte()),
                round: self.round(inp),
            }),
            6 => MessageBody::ReadIndexRequest(crate::ReadIndexRequest { id: inp.u64() }),
            8 => MessageBody::TimeoutNow,
            _ => MessageBody::ReadIndexResponse(crate::ReadIndexResponse {
                id: inp.u64() % 4,
                read_index: inp.bit().then(|| LogIndex(self.index(inp).0.max(1))),
            }),
        };
        Message {
            from,
            to,
            term,
            body,
        }
    }

    fn append_entries(&mut self, inp: &mut Input<'_>) -> AppendEntries {
        let prev_log_index = self.index(inp);
        let prev_log_term = self.log_term(inp, prev_log_index);
        let mut entries = Vec::new();
        let mut term = prev_log_term.max(Term(1));
        for k in 1..=u64::from(inp.byte() % 6) {
            let flags = inp.byte();
            let index = if flags & 0x40 != 0 {
                self.index(inp)
            } else {
                LogIndex(prev_log_index.0.wrapping_add(k))
            };
            term = match flags % 8 {
                0..=3 => self.node.entry(index).map_or(term, |e| e.term),
                4 => Term(term.0.saturating_add(1)),
                5 => term,
                6 => self.term(inp),
                _ => Term(term.0.saturating_sub(1)),
            };
            let payload = match flags >> 7 {
                0 if flags & 0x20 != 0 => {
                    EntryPayload::Configuration(Box::new(self.membership(inp)))
                }
                0 => EntryPayload::Noop,
                _ if flags == 0xff => EntryPayload::Command(Bytes::from_static(&TOO_LARGE)),
                _ => {
                    let n = usize::from(inp.byte() % 16);
                    EntryPayload::Command(inp.bytes(n))
                }
            };
            entries.push(Entry {
                term,
                index,
                payload,
            });
        }
        AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.index(inp),
            round: self.round(inp),
        }
    }

    /// A configuration over this cluster's ids (so that the node only
    /// ever sends to known peers), with or without this node, as a voter
    /// or a learner; now and then one the codec refuses (no voter, or
    /// unsorted).
    fn membership(&mut self, inp: &mut Input<'_>) -> Membership {
        let (roles, twist) = (inp.byte(), inp.byte());
        let mut m = Membership::default();
        let everyone = std::iter::once(ID).chain(self.peers.iter().copied());
        let mut ids: Vec<NodeId> = everyone.collect();
        ids.sort();
        for (k, id) in ids.into_iter().enumerate() {
            match (roles >> (k % 4 * 2)) & 3 {
                0 | 1 => m.voters.push(id),
                2 => m.learners.push(id),
                _ => {}
            }
        }
        if twist == 0xfe {
            m.voters.reverse();
        }
        if twist & 0x0f == 0 {
            m.context = inp.bytes(usize::from(twist >> 4));
        }
        m
    }

    fn append_result(&mut self, inp: &mut Input<'_>) -> AppendResult {
        if inp.bit() {
            return AppendResult::Success {
                match_index: self.index(inp),
            };
        }
        let rejected_index = self.index(inp);
        let shape = inp.byte();
        let r = rejected_index.0;
        match shape % 4 {
            // The follower holds rejected_index, with another term.
            0 | 1 => {
                let conflict_term = self.log_term(inp, rejected_index);
                AppendResult::Conflict {
                    rejected_index,
                    last_log_index: LogIndex(r.saturating_add(u64::from(shape >> 5))),
                    conflict_term: Some(conflict_term),
                    conflict_index: LogIndex(r.saturating_sub(u64::from(inp.byte() % 4)).max(1)),
                }
            }
            // Its log is shorter.
            2 => {
                let last = r.saturating_sub(1 + u64::from(shape >> 5));
                AppendResult::Conflict {
                    rejected_index,
                    last_log_index: LogIndex(last),
                    conflict_term: None,
                    conflict_index: LogIndex(last + 1),
                }
            }
            _ => AppendResult::Conflict {
                rejected_index,
                last_log_index: self.index(inp),
                conflict_term: inp.bit().then(|| self.term(inp)),
                conflict_index: self.index(inp),
            },
        }
    }

    /// An answer to one of the node's recent messages, as its addressee
    /// might send it: votes granted or refused, appends accepted or
    /// rejected with a plausible hint.
    fn answer(&mut self, inp: &mut Input<'_>) -> Option<Message> {
        if self.sent.is_empty() {
            return None;
        }
        let asked = self.sent[usize::from(inp.byte()) % self.sent.len()].clone();
        let (term, body) = match &asked.body {
            MessageBody::RequestVote(rv) => {
                let granted = inp.byte() & 3 != 0;
                // A granted pre-vote comes in the asked term, a refusal in
                // the voter's own.
                let term = if granted || !rv.pre_vote {
                    asked.term
                } else {
                    self.node.term()
                };
                let body = MessageBody::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: rv.pre_vote,
                    granted,
                });
                (term, body)
            }
            MessageBody::AppendEntries(ae) => {
                let prev = ae.prev_log_index;
                let result = match inp.byte() % 4 {
                    0..=2 => AppendResult::Success {
                        match_index: prev.plus(ae.entries.len() as u64),
                    },
                    _ if prev.0 == 0 => return None,
                    _ => {
                        let last = prev.0 - 1 - (u64::from(inp.byte()) % prev.0);
                        AppendResult::Conflict {
                            rejected_index: prev,
                            last_log_index: LogIndex(last),
                            conflict_term: None,
                            conflict_index: LogIndex(last + 1),
                        }
                    }
                };
                let body = MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                    round: ae.round,
                    result,
                });
                (asked.term, body)
            }
            _ => return None,
        };
        Some(Message {
            from: asked.to,
            to: asked.from,
            term,
            body,
        })
    }

    /// Hands `msg` to the node as the server would: through the codec.
    /// With `direct`, a frame the codec refuses is also handed over as is.
    fn deliver(&mut self, msg: Message, direct: bool) {
        let mut frame = codec::encode_unchecked(&msg);
        match codec::decode(&mut frame) {
            Ok(Some(decoded)) => {
                assert_eq!(decoded, msg, "codec round trip changed the message");
                assert!(frame.is_empty());
                self.feed(decoded);
            }
            Ok(None) => unreachable!("a whole frame is never incomplete"),
            Err(_) => {
                self.stats.refused += 1;
                if direct {
                    self.feed_refused(msg);
                }
            }
        }
    }

    /// Feeds a message the codec accepted; if the node drops it as a peer
    /// fault, nothing else may happen. Its term moves by at most
    /// [`Term::MAX_JUMP`], unless two peers claimed the new term.
    fn feed(&mut self, msg: Message) {
        self.stats.delivered += 1;
        let from = msg.from;
        let claim = match &msg.body {
            MessageBody::RequestVote(rv) if rv.pre_vote => Some(Term(msg.term.0.saturating_sub(1))),
            MessageBody::RequestVoteResponse(r) if r.pre_vote && r.granted => None,
            _ => Some(msg.term),
        };
        if let Some(claim) = claim.filter(|_| from != ID) {
            let held = self.claims.entry(from).or_insert(claim);
            *held = (*held).max(claim);
        }
        let before = (self.node.status(), self.node.poll_timeout());
        self.node.handle_message(self.now, msg);
        let (old, new) = (before.0.term, self.node.term());
        if new > old.plus_max_jump() {
            let vouching = self.claims.values().filter(|&&t| t >= new).count();
            assert!(
                vouching >= 2,
                "one message moved the term from {old} to {new} with {vouching} peer(s) claiming it"
            );
        }
        let first = self.poll_all();
        // A snapshot assembled from hostile chunks is refused by the
        // driver after the node took its chunks (`BadSnapshot`): that is
        // not a message dropped on arrival.
        let dropped = first.iter().any(|a| {
            matches!(a, Action::Event(Event::PeerFault { fault, .. })
                if !matches!(fault, crate::PeerFault::BadSnapshot { .. }))
        });
        if dropped {
            assert_dropped(&first, from);
            let after = (self.node.status(), self.node.poll_timeout());
            assert_eq!(after, before, "a dropped message changed the node");
        }
        self.drain();
    }

    /// Feeds a message the codec refused: the node must drop it too,
    /// reporting it if it is addressed to it from a peer.
    fn feed_refused(&mut self, msg: Message) {
        let from = msg.from;
        let reported = msg.to == ID && from != ID;
        let before = (self.node.status(), self.node.poll_timeout());
        let shut_down = self.node.poll_timeout().is_none();
        self.node.handle_message(self.now, msg);
        let first = self.poll_all();
        if reported && !shut_down {
            assert_dropped(&first, from);
        } else {
            assert!(
                first.is_empty(),
                "output for a message not for it: {first:?}"
            );
        }
        let after = (self.node.status(), self.node.poll_timeout());
        assert_eq!(after, before, "a refused message changed the node");
        self.drain();
    }

    // ----- Output -------------------------------------------------------------

    /// Drains the node's actions, performing each, without reporting the
    /// log durable.
    fn poll_all(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.node.poll_action() {
            self.perform(&a);
            if let Action::InstallSnapshot { .. } = a {
                // Whatever hostile peers assembled is refused, as a store
                // refuses a snapshot whose checksum fails; the node must
                // drop the transfer and report it.
                self.node.handle_snapshot_installed(self.now, false);
            }
            out.push(a);
        }
        out
    }

    /// Drains like a driver: actions until none are left, then (if on) the
    /// report that the log is durable, which may commit and bring more.
    fn drain(&mut self) {
        self.poll_all();
        while self.sync_at_drain {
            if self.disk.is_empty() {
                return;
            }
            self.report_durable();
            if self.poll_all().is_empty() {
                return;
            }
        }
    }

    /// Does what the driver must, checking that it is consistent.
    fn perform(&mut self, a: &Action) {
        match a {
            Action::SaveHardState(hs) => {
                let old = self.hard_state;
                assert!(hs.current_term >= old.current_term, "saved term went back");
                assert!(hs.current_term <= Term::MAX, "saved term above Term::MAX");
                if hs.current_term == old.current_term && old.voted_for.is_some() {
                    assert_eq!(hs.voted_for, old.voted_for, "second vote in a term");
                }
                self.hard_state = *hs;
            }
            Action::TruncateLog { from } => {
                assert!(from.0 >= 1 && from.0 <= self.disk.len() as u64 + 1);
                assert!(*from > self.applied, "truncating applied entry {from}");
                self.disk.truncate(from.0 as usize - 1);
            }
            Action::AppendLog(entries) => {
                assert!(!entries.is_empty(), "empty AppendLog");
                if !self.sync_at_drain {
                    self.unsynced_since.get_or_insert(self.now);
                }
                for e in entries {
                    assert_eq!(
                        e.index.0,
                        self.disk.len() as u64 + 1,
                        "append not contiguous"
                    );
                    assert!(
                        e.term <= self.hard_state.current_term,
                        "entry from a future term"
                    );
                    assert!(e.payload_len() <= MAX_ENTRY_LEN);
                    self.disk.push(e.clone());
                }
            }
            Action::Send(m) => {
                assert_eq!(m.from, ID);
                // A node answers whoever asked (a member that joins is
                // unknown to it), but reaches out only to members.
                assert_ne!(m.to, ID, "message to itself: {m}");
                // A message the codec refuses is a bug in the node.
                let mut frame = BytesMut::new();
                codec::encode(m, &mut frame);
                assert_eq!(codec::decode(&mut frame), Ok(Some(m.clone())));
                if self.sent.len() == SENT_KEPT {
                    self.sent.pop_front();
                }
                self.sent.push_back(m.clone());
            }
            Action::Apply(e) => {
                assert_eq!(e.index, self.applied.next(), "applies out of order");
                assert_eq!(
                    self.disk.get(e.index.0 as usize - 1),
                    Some(e),
                    "applied entry not on disk"
                );
                self.applied = e.index;
            }
            Action::ReadReady { id } | Action::ReadFailed { id, .. } => {
                assert!(
                    self.reads.remove(id),
                    "answer for read {id} never registered"
                );
            }
            Action::Event(Event::PeerFault { fault, .. }) => {
                self.stats.faults += 1;
                let debug = format!("{fault:?}");
                let kind = debug.split([' ', '{']).next().unwrap_or_default();
                *self.stats.fault_kinds.entry(kind.to_string()).or_default() += 1;
            }
            Action::Event(_) => {}
            Action::WriteSnapshotChunk { meta, offset, data } => {
                assert!(
                    offset + data.len() as u64 <= meta.len,
                    "chunk beyond the snapshot"
                );
            }
            Action::InstallSnapshot { .. } => {}
            Action::CompactLog { .. } | Action::SendSnapshotChunk { .. } => {
                panic!("{a:?} without a snapshot saved")
            }
        }
    }

    fn after_input(&mut self) {
        self.node.check_invariants();
        self.stats.max_commit = self.stats.max_commit.max(self.node.commit_index().0);
        self.stats.led |= self.node.role() == Role::Leader;
    }
}

/// The output of a dropped message: one [`Event::PeerFault`] naming the
/// sender, and nothing else.
fn assert_dropped(actions: &[Action], from: NodeId) {
    match actions {
        [Action::Event(Event::PeerFault { peer, fault })] => {
            assert_eq!(*peer, from, "fault blamed on the wrong peer");
            assert!(!fault.to_string().is_empty());
        }
        _ => panic!("a dropped message must have no effect but its report: {actions:?}"),
    }
}

// ----- The network as the adversary ----------------------------------------

/// Runs a cluster of correct nodes over a network the bytes control; panics
/// on a safety violation, or if the cluster does not recover once the
/// network is fair again. Work is bounded by the length of `data`.
pub fn fuzz_network(data: &[u8]) -> FuzzStats {
    network(data, false)
}

/// [`fuzz_network`] with the simulator's trace, printed to stderr when the
/// run fails: for replaying a fuzzer's find.
pub fn replay_network(data: &[u8]) -> FuzzStats {
    network(data, true)
}

fn network(data: &[u8], trace: bool) -> FuzzStats {
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
