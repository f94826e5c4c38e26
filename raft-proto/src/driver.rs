//! The one place that turns a node's actions into effects in a safe order:
//! persist, make durable, send, report durability, and hand the rest back.
//!
//! `raft-node` and the simulator both drive their nodes through a
//! [`Driver`], so the simulator tests the real ordering code against a disk
//! that loses unsynced writes, and a driver bug shows up there first.
//!
//! The rules it keeps (crate docs, and Raft's "persist before you answer"):
//!
//! - every persistence action goes to the [`LogStore`] in order, as written
//!   but not yet durable;
//! - a message that depends on what was written (a vote, an append answer,
//!   any message but a leader's AppendEntries) is held until a sync that
//!   covers every write issued before it has completed;
//! - a leader's AppendEntries leave at once, before its own sync (thesis
//!   §10.2.1), and the node is told how far its log is durable only when a
//!   sync covering those appends completes ([`Node::handle_log_persisted`]);
//!   the leader counts itself in commits only up to there;
//! - one sync covers every write issued before it (group commit); while one
//!   is in flight, new writes wait for the next;
//! - applies, read answers and events are handed back in the order the node
//!   produced them: none depends on this node's own durability (an entry is
//!   applied only once committed, that is durable on a majority);
//! - a snapshot received from the leader is installed in the store, the
//!   node told the outcome at once, and, if installed, the
//!   [`Action::InstallSnapshot`] handed back among the applies so that the
//!   caller loads its state machine from it in order; snapshot chunks are
//!   read from the store as they go out.
//!
//! A store may sync synchronously (`raft-node` calls `fsync` and returns) or
//! asynchronously (the simulator's disk completes it later, and a crash
//! before then loses the writes); the driver is the same for both.

use std::collections::VecDeque;

use crate::action::Action;
use crate::message::Message;
use crate::node::Node;
use crate::types::{Entry, HardState, LogIndex, SnapshotMeta, Term, Time};

/// Durable storage for a node's hard state and log, as the driver uses it.
/// Writes may sit in a volatile cache until [`LogStore::sync`]; an error
/// from any method means the durable state can no longer be trusted to
/// match what the node believes, and the driver stops at once.
pub trait LogStore {
    /// Why a write or sync failed.
    type Error;
    /// Writes the current term and vote, replacing the previous ones.
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), Self::Error>;
    /// Removes every log entry with index `>= from`.
    fn truncate_log(&mut self, from: LogIndex) -> Result<(), Self::Error>;
    /// Appends entries after the last one written.
    fn append_log(&mut self, entries: &[Entry]) -> Result<(), Self::Error>;
    /// Starts making every write so far durable. `Ok(true)`: durable on
    /// return. `Ok(false)`: the store completes it later, and its owner
    /// then calls [`Driver::sync_completed`].
    fn sync(&mut self) -> Result<bool, Self::Error>;
    /// Keeps a chunk of a snapshot received from the leader: `data` at
    /// `offset` of the snapshot `meta`. Offset 0 starts it afresh; later
    /// chunks follow on where the previous one ended. Needs no sync.
    fn write_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Self::Error>;
    /// Every chunk of `meta` was written: check the snapshot (its length,
    /// checksum, header: a peer or its disk may be broken) and, if it is
    /// valid, make it this member's snapshot and apply §7's rule to the
    /// log: if the log holds the entry `(meta.last_index, meta.last_term)`
    /// the entries after it stay, otherwise the whole log goes. Writes
    /// issued before it stay ordered before it. `Ok(false)`: invalid,
    /// nothing changed. The install is durable once the next
    /// [`LogStore::sync`] completes, or earlier.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<bool, Self::Error>;
    /// Entries up to and including `through` are covered by a snapshot
    /// and may be deleted, now or later. Needs no sync.
    fn compact_log(&mut self, through: LogIndex) -> Result<(), Self::Error>;
    /// Reads `len` bytes at `offset` of this member's snapshot `meta`, to
    /// send to a follower. `Ok(None)` if `meta` is no longer this member's
    /// snapshot (a newer one replaced it): the chunk is not sent.
    fn read_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Option<bytes::Bytes>, Self::Error>;
}

/// Where the driver hands messages to go out.
pub trait Transport {
    /// Queues `msg` for `msg.to`. Best effort: a lost message is repaired
    /// by the protocol.
    fn send(&mut self, msg: Message);
    /// Lets what is queued leave now: called before a sync, so that a
    /// leader's AppendEntries travel while its own disk works.
    fn flush(&mut self) {}
}

/// Carries out a node's actions in the safe order. One per node; it holds
/// the messages that wait for a sync.
#[derive(Debug, Default)]
pub struct Driver {
    /// Writes issued since the last sync was started.
    dirty: bool,
    /// Syncs started so far; a sync covers the writes issued before it.
    started: u64,
    /// Syncs completed so far (they complete in order).
    completed: u64,
    /// The sync in flight, if any, with the last entry it makes durable.
    in_flight: Option<Option<(LogIndex, Term)>>,
    /// Messages waiting for sync number `.0` to complete.
    held: VecDeque<(u64, Message)>,
}

impl Driver {
    /// A driver with nothing written and nothing held.
    pub fn new() -> Driver {
        Driver::default()
    }

    /// Takes every action of `node` and carries it out: persistence into
    /// `store`, messages into `transport` (each only once what it depends
    /// on is durable), the rest into `out` in order (applies, read
    /// answers, events: the caller performs them next). Repeats until the
    /// node has nothing more to say. Stops at the first store error.
    pub fn drain<S: LogStore>(
        &mut self,
        node: &mut Node,
        now: Time,
        store: &mut S,
        transport: &mut impl Transport,
        out: &mut Vec<Action>,
    ) -> Result<(), S::Error> {
        loop {
            let mut any = false;
            while let Some(action) = node.poll_action() {
                any = true;
                match action {
                    Action::SaveHardState(hs) => {
                        store.save_hard_state(hs)?;
                        self.dirty = true;
                    }
                    Action::TruncateLog { from } => {
                        store.truncate_log(from)?;
                        self.dirty = true;
                    }
                    Action::AppendLog(entries) => {
                        store.append_log(&entries)?;
                        self.dirty = true;
                    }
                    Action::WriteSnapshotChunk { meta, offset, data } => {
                        store.write_snapshot_chunk(&meta, offset, &data)?;
                    }
                    Action::InstallSnapshot { meta } => {
                        let installed = store.install_snapshot(&meta)?;
                        // The answer that says "installed" waits for it
                        // to be durable, like any answer.
                        self.dirty = true;
                        node.handle_snapshot_installed(now, installed);
                        if installed {
                            // The caller loads its state machine from it,
                            // in order with the applies around it.
                            out.push(Action::InstallSnapshot { meta });
                        }
                    }
                    Action::CompactLog { through } => store.compact_log(through)?,
                    Action::Send(m) => self.send(m, transport),
                    Action::SendSnapshotChunk { mut message, len } => {
                        let crate::MessageBody::InstallSnapshot(is) = &mut message.body else {
                            unreachable!("a snapshot chunk is an InstallSnapshot");
                        };
                        if let Some(data) = store.read_snapshot_chunk(&is.meta, is.offset, len)? {
                            debug_assert_eq!(data.len(), len, "read_snapshot_chunk: short read");
                            is.data = data;
                            self.send(message, transport);
                        }
                    }
                    other => out.push(other),
                }
            }
            if self.dirty && self.in_flight.is_none() {
                transport.flush();
                self.dirty = false;
                self.started += 1;
                // Every persistence action so far is in the store, so the
                // store's log is the node's: the sync covers all of it.
                let last = node.last_log_index();
                let covers = node.entry(last).map(|e| (e.index, e.term));
                self.in_flight = Some(covers);
                if store.sync()? {
                    self.complete(node, now, transport);
                    any = true;
                }
            }
            if !any {
                return Ok(());
            }
        }
    }

    /// The store finished the sync in flight (for stores whose
    /// [`LogStore::sync`] returned `Ok(false)`). Call [`Driver::drain`]
    /// afterwards: the node may have more to say.
    pub fn sync_completed(&mut self, node: &mut Node, now: Time, transport: &mut impl Transport) {
        assert!(
            self.in_flight.is_some(),
            "Driver::sync_completed without a sync in flight"
        );
        self.complete(node, now, transport);
    }

    /// Whether a sync is in flight (started, not completed).
    pub fn sync_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether writes wait for a sync to be started.
    pub fn has_unsynced_writes(&self) -> bool {
        self.dirty || self.in_flight.is_some()
    }

    /// Forgets everything held: the process crashed (held messages never
    /// left; unsynced writes are the store's to lose).
    pub fn crash(&mut self) {
        *self = Driver::default();
    }

    fn send(&mut self, m: Message, transport: &mut impl Transport) {
        // The sync that covers every write issued so far: the next one if
        // writes wait, else the one in flight, else none is needed.
        let needs = if self.dirty {
            self.started + 1
        } else {
            self.started
        };
        if m.may_precede_persistence() || needs <= self.completed {
            transport.send(m);
        } else {
            self.held.push_back((needs, m));
        }
    }

    fn complete(&mut self, node: &mut Node, now: Time, transport: &mut impl Transport) {
        let covers = self.in_flight.take().expect("a sync in flight to complete");
        self.completed = self.started;
        if let Some((index, term)) = covers {
            node.handle_log_persisted(now, index, term);
        }
        while self.held.front().is_some_and(|(n, _)| *n <= self.completed) {
            let (_, m) = self.held.pop_front().expect("front exists");
            transport.send(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::config::Config;
    use crate::message::{AppendEntries, MessageBody};
    use crate::node::PersistentState;
    use crate::types::{EntryPayload, NodeId};

    /// A store that records what it was asked and syncs when told to.
    #[derive(Default)]
    struct Disk {
        written: Vec<String>,
        syncs: usize,
        synchronous: bool,
    }

    impl LogStore for Disk {
        type Error = ();
        fn save_hard_state(&mut self, hs: HardState) -> Result<(), ()> {
            self.written.push(format!("hs {}", hs.current_term));
            Ok(())
        }
        fn truncate_log(&mut self, from: LogIndex) -> Result<(), ()> {
            self.written.push(format!("truncate {from}"));
            Ok(())
        }
        fn append_log(&mut self, entries: &[Entry]) -> Result<(), ()> {
            for e in entries {
                self.written.push(format!("append {}", e.index));
            }
            Ok(())
        }
        fn sync(&mut self) -> Result<bool, ()> {
            self.syncs += 1;
            Ok(self.synchronous)
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
        ) -> Result<Option<Bytes>, ()> {
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

    fn node(id: u64, voters: &[u64]) -> Node {
        let mut c = Config::new(NodeId(id), voters.iter().map(|&v| NodeId(v)).collect());
        c.seed = 7;
        Node::new(c, PersistentState::default(), Time::ZERO).unwrap()
    }

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    fn applied(out: &[Action]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Action::Apply(e) => Some(e.index.0),
                _ => None,
            })
            .collect()
    }

    /// A single-member cluster: its leader commits with its own durable
    /// copy alone, so a commit before the sync completes would mean the
    /// leader counted an entry it may still lose.
    #[test]
    fn a_leader_counts_itself_only_once_its_sync_completed() {
        let mut n = node(1, &[1]);
        let (mut d, mut disk, mut wire, mut out) =
            (Driver::new(), Disk::default(), Wire::default(), Vec::new());
        n.handle_timeout(at(1000));
        d.drain(&mut n, at(1000), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert!(d.sync_in_flight(), "the election's writes are being synced");
        d.sync_completed(&mut n, at(1001), &mut wire);
        d.drain(&mut n, at(1001), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(n.role(), crate::Role::Leader);
        out.clear();
        let id = n.propose(at(1002), Bytes::from_static(b"x")).unwrap();
        d.drain(&mut n, at(1002), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert!(
            !applied(&out).contains(&id.index.0),
            "applied before its sync completed"
        );
        assert!(d.sync_in_flight());
        d.sync_completed(&mut n, at(1003), &mut wire);
        d.drain(&mut n, at(1003), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert!(applied(&out).contains(&id.index.0));
    }

    /// A follower's answer to an append says "I hold it": it may leave
    /// only once the append is durable. The leader's own appends leave
    /// before its sync.
    #[test]
    fn answers_wait_for_the_sync_and_appends_do_not() {
        let mut f = node(2, &[1, 2, 3]);
        let (mut d, mut disk, mut wire, mut out) =
            (Driver::new(), Disk::default(), Wire::default(), Vec::new());
        let ae = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: vec![Entry {
                    term: Term(1),
                    index: LogIndex(1),
                    payload: EntryPayload::Noop,
                }],
                leader_commit: LogIndex(0),
                round: 1,
            }),
        };
        f.handle_message(at(10), ae);
        d.drain(&mut f, at(10), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(disk.written, ["hs 1", "append 1"]);
        assert!(wire.0.is_empty(), "answered before the append was durable");
        assert_eq!(disk.syncs, 1);
        d.sync_completed(&mut f, at(11), &mut wire);
        assert_eq!(wire.0.len(), 1, "answered once durable");
        assert_eq!(wire.0[0].kind(), "AppendEntriesResponse");

        // The same node as leader of a 3-member cluster: its AppendEntries
        // go out while its own sync is still in flight.
        let mut l = node(1, &[1, 2, 3]);
        let (mut d, mut disk, mut wire) = (Driver::new(), Disk::default(), Wire::default());
        l.handle_timeout(at(1000));
        d.drain(&mut l, at(1000), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert!(wire.0.iter().all(|m| m.kind() == "PreVote"));
        let grant = |pre_vote| Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(1),
            body: MessageBody::RequestVoteResponse(crate::RequestVoteResponse {
                pre_vote,
                granted: true,
            }),
        };
        wire.0.clear();
        l.handle_message(at(1001), grant(true));
        d.drain(&mut l, at(1001), &mut disk, &mut wire, &mut out)
            .unwrap();
        // The vote requests wait for term and vote to be durable.
        assert!(d.sync_in_flight());
        assert!(
            wire.0.is_empty(),
            "asked for votes before its own vote was durable"
        );
        d.sync_completed(&mut l, at(1002), &mut wire);
        assert!(!wire.0.is_empty());
        assert!(wire.0.iter().all(|m| m.kind() == "RequestVote"));
        wire.0.clear();
        l.handle_message(at(1003), grant(false));
        d.drain(&mut l, at(1003), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(l.role(), crate::Role::Leader);
        assert!(d.sync_in_flight(), "the leader's no-op is being synced");
        assert!(
            wire.0.iter().any(|m| m.kind() == "AppendEntries"),
            "the leader's appends wait for its own sync: {:?}",
            wire.0
        );
    }

    /// Writes made while a sync is in flight go with the next one, and
    /// only one sync is in flight at a time.
    #[test]
    fn one_sync_at_a_time_covers_everything_before_it() {
        let mut n = node(1, &[1]);
        let (mut d, mut disk, mut wire, mut out) =
            (Driver::new(), Disk::default(), Wire::default(), Vec::new());
        n.handle_timeout(at(1000));
        d.drain(&mut n, at(1000), &mut disk, &mut wire, &mut out)
            .unwrap();
        d.sync_completed(&mut n, at(1001), &mut wire);
        d.drain(&mut n, at(1001), &mut disk, &mut wire, &mut out)
            .unwrap();
        let syncs = disk.syncs;
        let a = n.propose(at(1002), Bytes::from_static(b"a")).unwrap();
        d.drain(&mut n, at(1002), &mut disk, &mut wire, &mut out)
            .unwrap();
        let b = n.propose(at(1003), Bytes::from_static(b"b")).unwrap();
        let c = n.propose(at(1003), Bytes::from_static(b"c")).unwrap();
        d.drain(&mut n, at(1003), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(
            disk.syncs,
            syncs + 1,
            "a second sync while one is in flight"
        );
        out.clear();
        d.sync_completed(&mut n, at(1004), &mut wire);
        d.drain(&mut n, at(1004), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(applied(&out), [a.index.0]);
        assert_eq!(disk.syncs, syncs + 2, "b and c go in one sync");
        d.sync_completed(&mut n, at(1005), &mut wire);
        d.drain(&mut n, at(1005), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(applied(&out), [a.index.0, b.index.0, c.index.0]);
        assert!(!d.has_unsynced_writes());

        // A synchronous store: everything in one drain.
        let mut n = node(1, &[1]);
        let mut disk = Disk {
            synchronous: true,
            ..Disk::default()
        };
        let mut d = Driver::new();
        n.handle_timeout(at(1000));
        d.drain(&mut n, at(1000), &mut disk, &mut wire, &mut out)
            .unwrap();
        out.clear();
        let x = n.propose(at(1001), Bytes::from_static(b"x")).unwrap();
        d.drain(&mut n, at(1001), &mut disk, &mut wire, &mut out)
            .unwrap();
        assert_eq!(applied(&out), [x.index.0]);
        assert!(!d.has_unsynced_writes());
    }
}
