//! Running one node among hostile peers ([`super::fuzz_node`]): each input
//! fed as a driver would, and everything the node hands back checked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::{FuzzStats, Input, NodeDriver, DISK_STALL_MAX, ID, SENT_KEPT, TOO_LARGE};
use crate::codec;
use crate::{
    Action, Config, Entry, EntryPayload, Event, HardState, LogIndex, MembershipChange, Message,
    MessageBody, Node, NodeId, PersistentState, ProposeError, Role, Term, Time, MAX_ENTRY_LEN,
};

impl NodeDriver {
    pub(super) fn new(inp: &mut Input<'_>) -> NodeDriver {
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

    pub(super) fn peer(&self, b: u8) -> NodeId {
        self.peers[usize::from(b) % self.peers.len()]
    }

    pub(super) fn input(&mut self, inp: &mut Input<'_>) {
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
            _ => self.operator(inp),
        }
    }

    /// What an operator or the process does: restart, shut down,
    /// reconfigure, transfer the lead; or time passes without a timeout
    /// call (a late driver).
    fn operator(&mut self, inp: &mut Input<'_>) {
        match inp.byte() % 6 {
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

    pub(super) fn after_input(&mut self) {
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
