//! A disk that fails the way disks do, behind the driver's [`LogStore`]
//! (TigerBeetle's `testing/storage.zig` is the model).
//!
//! - Writes sit in a volatile cache until a sync completes; a sync takes
//!   time (the simulator completes it later), and only one is in flight.
//! - A crash loses an arbitrary suffix of the unsynced writes: of the ops
//!   not yet durable, a prefix (in the order written) survives. The last
//!   surviving log write may also be torn: the real storage checksums every
//!   record and recovers the log up to the first bad one, so a torn or
//!   missing record and everything written after it are gone. Writes
//!   reordered within a file reduce to the same thing for that reason.
//!   Term and vote live in another file, written before the log records
//!   that depend on them, so a surviving prefix is always consistent.
//! - A read fault at restart (optional) corrupts one durable record: the
//!   checksum must catch it, and the member must refuse to start rather
//!   than apply it.
//!
//! - Snapshots: one taken locally is durable before the node hears of it
//!   (the real store writes a temporary file, fsyncs it and renames it); one
//!   received from the leader is a write like the others, lost in a crash
//!   unless synced. Compaction is a write too. Recovery applies §7's rule:
//!   the log after the snapshot is kept only if it holds the snapshot's last
//!   entry.
//!
//! The simulator's checker sees what was written (the node's view) through
//! `written`, and what survives a crash through `durable`. The checker's
//! mirror of the log always starts at index 1: what a snapshot covers is
//! filled in from the committed entries.

use std::convert::Infallible;

use bytes::Bytes;

use super::checker::{entry_hash, Checker, DiskLog, Violation};
use crate::driver::LogStore;
use crate::{Entry, HardState, LogIndex, NodeId, PersistentState, Rng, SnapshotMeta, Term};

/// One write, as issued.
#[derive(Clone, Debug)]
enum Op {
    HardState(HardState),
    Truncate(LogIndex),
    Append(Vec<Entry>),
    /// A snapshot received from the leader, installed.
    Install(SnapshotMeta, Bytes),
    Compact(LogIndex),
}

/// A snapshot: what identifies it, and its bytes.
pub(crate) type Snapshot = (SnapshotMeta, Bytes);

/// A member's disk.
#[derive(Debug, Default)]
pub(crate) struct SimDisk {
    /// What the node has written, synced or not: its view of its disk.
    pub(crate) written_hs: HardState,
    pub(crate) written_log: DiskLog,
    /// What a crash cannot take away.
    pub(crate) durable_hs: HardState,
    /// The durable log holds the entries after this index, whose term is
    /// `durable_start_term` (0 until a snapshot was installed or the log
    /// compacted).
    durable_start: LogIndex,
    durable_start_term: Term,
    durable_log: Vec<Entry>,
    /// Each durable entry's checksum, as the real storage keeps one per
    /// record: recomputed at restart to detect corruption.
    durable_sums: Vec<u64>,
    /// The current snapshot, as written and as durable.
    pub(crate) written_snapshot: Option<Snapshot>,
    durable_snapshot: Option<Snapshot>,
    /// A snapshot being received: its bytes so far.
    incoming: Option<(SnapshotMeta, Vec<u8>)>,
    /// Written, no sync started yet.
    cache: Vec<Op>,
    /// Covered by the sync in flight.
    syncing: Option<Vec<Op>>,
    /// A corrupted durable record that recovery must refuse.
    corrupt: Option<usize>,
}

impl SimDisk {
    /// Whether entries were written that a crash could still lose.
    pub(crate) fn has_unsynced_entries(&self) -> bool {
        self.cache
            .iter()
            .chain(self.syncing.iter().flatten())
            .any(|op| matches!(op, Op::Append(e) if !e.is_empty()))
    }

    /// Whether a sync is in flight.
    pub(crate) fn sync_in_flight(&self) -> bool {
        self.syncing.is_some()
    }

    /// The durable log: the index before its first entry, and the entries.
    pub(crate) fn durable_log(&self) -> (LogIndex, &[Entry]) {
        (self.durable_start, &self.durable_log)
    }

    /// Saves a snapshot taken locally: durable at once (the store writes
    /// and fsyncs it before telling the node).
    pub(crate) fn save_snapshot(&mut self, snapshot: Snapshot) {
        self.written_snapshot = Some(snapshot.clone());
        self.durable_snapshot = Some(snapshot);
    }

    /// The term of the durable entry at `index`, including the snapshot's
    /// last entry (the index before the durable log).
    pub(crate) fn durable_term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.durable_start {
            return Some(self.durable_start_term);
        }
        let pos = index.0.checked_sub(self.durable_start.0 + 1)? as usize;
        self.durable_log.get(pos).map(|e| e.term)
    }

    fn durable_drop_through(&mut self, through: LogIndex) {
        let term = self.durable_term_at(through).expect("dropped entries held");
        let n = (through.0 - self.durable_start.0) as usize;
        self.durable_log.drain(..n);
        self.durable_sums.drain(..n);
        self.durable_start = through;
        self.durable_start_term = term;
    }

    /// The sync in flight completed: its writes are durable.
    pub(crate) fn complete_sync(&mut self) {
        let ops = self.syncing.take().expect("a sync in flight");
        for op in ops {
            self.make_durable(op);
        }
    }

    fn make_durable(&mut self, op: Op) {
        match op {
            Op::HardState(hs) => self.durable_hs = hs,
            Op::Truncate(from) => {
                assert!(from > self.durable_start, "truncation below the log start");
                let keep = (from.0 - self.durable_start.0 - 1) as usize;
                self.durable_log.truncate(keep);
                self.durable_sums.truncate(keep);
            }
            Op::Install(meta, data) => {
                // §7, as the real store does it.
                if self.durable_term_at(meta.last_index) == Some(meta.last_term) {
                    if meta.last_index > self.durable_start {
                        self.durable_drop_through(meta.last_index);
                    }
                } else {
                    self.durable_log.clear();
                    self.durable_sums.clear();
                    self.durable_start = meta.last_index;
                    self.durable_start_term = meta.last_term;
                }
                self.durable_snapshot = Some((meta, data));
            }
            Op::Compact(through) => {
                let covered = self
                    .durable_snapshot
                    .as_ref()
                    .is_some_and(|(m, _)| m.last_index >= through);
                assert!(covered, "compaction beyond the durable snapshot");
                if through > self.durable_start {
                    self.durable_drop_through(through);
                }
            }
            Op::Append(entries) => {
                for e in entries {
                    self.durable_sums.push(entry_hash(&e));
                    self.durable_log.push(e);
                }
            }
        }
    }

    /// The process died: a prefix of the unsynced writes survives, the last
    /// surviving append maybe torn (and so lost from that record on).
    /// Returns how many of the unsynced ops survived, for the trace.
    pub(crate) fn crash(&mut self, rng: &mut Rng, committed: &[Entry]) -> (usize, usize) {
        let mut unsynced: Vec<Op> = self.syncing.take().unwrap_or_default();
        unsynced.append(&mut self.cache);
        let total = unsynced.len();
        let keep = rng.range(0, total as u64 + 1) as usize;
        unsynced.truncate(keep);
        if let Some(Op::Append(entries)) = unsynced.last_mut() {
            if !entries.is_empty() && rng.chance(0.5) {
                // A torn sector: the records from a random one on fail
                // their checksum and recovery cuts the log there.
                let cut = rng.range(0, entries.len() as u64) as usize;
                entries.truncate(cut);
            }
        }
        for op in unsynced {
            self.make_durable(op);
        }
        // What the next start does, as the real store does it (§7): a log
        // that does not hold the snapshot's last entry (the sync of its
        // tail was lost, the snapshot was not) is discarded, durably, so
        // that later appends continue from the snapshot. Without this the
        // durable log kept the old tail and the next append left a gap.
        if self.corrupt.is_none() {
            if let Some((meta, _)) = &self.durable_snapshot {
                if self.durable_term_at(meta.last_index) != Some(meta.last_term) {
                    self.durable_log.clear();
                    self.durable_sums.clear();
                    self.durable_start = meta.last_index;
                    self.durable_start_term = meta.last_term;
                }
            }
        }
        self.incoming = None;
        self.restore_written(committed);
        (keep, total)
    }

    /// Corrupts one durable record, to be found at the next restart.
    pub(crate) fn corrupt_a_record(&mut self, rng: &mut Rng) -> Option<LogIndex> {
        if self.durable_sums.is_empty() {
            return None;
        }
        let i = rng.range(0, self.durable_sums.len() as u64) as usize;
        self.corrupt = Some(i);
        Some(self.durable_start.plus(i as u64 + 1))
    }

    /// What a restarting node recovers, with the snapshot's bytes, or the
    /// first record whose checksum does not match (the member must refuse
    /// to start).
    pub(crate) fn recover(&self) -> Result<(PersistentState, Option<Bytes>), LogIndex> {
        for (i, (e, &sum)) in self.durable_log.iter().zip(&self.durable_sums).enumerate() {
            let mut read = entry_hash(e);
            if self.corrupt == Some(i) {
                read ^= 1; // a flipped bit on the way back
            }
            if read != sum {
                return Err(e.index);
            }
        }
        let Some((meta, data)) = self.durable_snapshot.clone() else {
            assert_eq!(
                self.durable_start,
                LogIndex(0),
                "compacted without a snapshot"
            );
            let state = PersistentState {
                hard_state: self.durable_hs,
                snapshot: None,
                entries: self.durable_log.clone(),
                applied: LogIndex(0),
            };
            return Ok((state, None));
        };
        // §7: the log after the snapshot counts only if it holds the
        // snapshot's last entry (else it is another term's uncommitted
        // tail, or does not reach that far).
        let entries = if self.durable_term_at(meta.last_index) == Some(meta.last_term) {
            let skip = (meta.last_index.0 - self.durable_start.0) as usize;
            self.durable_log[skip..].to_vec()
        } else {
            Vec::new()
        };
        let state = PersistentState {
            hard_state: self.durable_hs,
            applied: meta.last_index,
            snapshot: Some(meta),
            entries,
        };
        Ok((state, Some(data)))
    }

    /// After a crash, the node's view is the durable state again. The
    /// checker's mirror starts at index 1: what the snapshot covers comes
    /// from the committed entries.
    fn restore_written(&mut self, committed: &[Entry]) {
        self.written_hs = self.durable_hs;
        self.written_snapshot = self.durable_snapshot.clone();
        self.written_log = DiskLog::default();
        let (state, _) = match self.recover_ignoring_corruption() {
            Some(r) => r,
            None => return,
        };
        let start = state.snapshot.map_or(LogIndex(0), |m| m.last_index);
        for e in &committed[..start.0 as usize] {
            self.written_log.append(e.clone());
        }
        for e in state.entries {
            self.written_log.append(e);
        }
    }

    fn recover_ignoring_corruption(&self) -> Option<(PersistentState, Option<Bytes>)> {
        let corrupt = self.corrupt;
        if corrupt.is_some() {
            // Refused at restart anyway; the mirror does not matter.
            return None;
        }
        self.recover().ok()
    }
}

/// A member's disk as the driver's [`LogStore`], checking every write
/// against the safety properties as it is issued.
pub(crate) struct CheckedDisk<'a> {
    pub(crate) id: NodeId,
    pub(crate) disk: &'a mut SimDisk,
    pub(crate) checker: &'a mut Checker,
    pub(crate) result: &'a mut Result<(), Violation>,
}

impl CheckedDisk<'_> {
    fn note(&mut self, r: Result<(), Violation>) {
        if self.result.is_ok() {
            *self.result = r;
        }
    }
}

impl LogStore for CheckedDisk<'_> {
    type Error = Infallible;

    fn save_hard_state(&mut self, hs: HardState) -> Result<(), Infallible> {
        let r = self
            .checker
            .on_hard_state(self.id, self.disk.written_hs, hs);
        self.note(r);
        self.disk.written_hs = hs;
        self.disk.cache.push(Op::HardState(hs));
        Ok(())
    }

    fn truncate_log(&mut self, from: LogIndex) -> Result<(), Infallible> {
        self.disk.written_log.truncate_from(from);
        self.disk.cache.push(Op::Truncate(from));
        Ok(())
    }

    fn write_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Infallible> {
        if offset == 0 {
            self.disk.incoming = Some((meta.clone(), Vec::new()));
        }
        let (m, bytes) = self
            .disk
            .incoming
            .as_mut()
            .expect("a snapshot being received");
        assert!(
            m == meta && bytes.len() as u64 == offset,
            "driver wrote a snapshot chunk out of order"
        );
        bytes.extend_from_slice(data);
        Ok(())
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<bool, Infallible> {
        let Some((m, bytes)) = self.disk.incoming.take() else {
            return Ok(false);
        };
        if m != *meta || bytes.len() as u64 != meta.len {
            return Ok(false);
        }
        let data = Bytes::from(bytes);
        let r = self
            .checker
            .on_install(self.id, &mut self.disk.written_log, meta);
        self.note(r);
        self.disk.written_snapshot = Some((meta.clone(), data.clone()));
        self.disk.cache.push(Op::Install(meta.clone(), data));
        Ok(true)
    }

    fn compact_log(&mut self, through: LogIndex) -> Result<(), Infallible> {
        self.disk.cache.push(Op::Compact(through));
        Ok(())
    }

    fn read_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Option<Bytes>, Infallible> {
        Ok(match &self.disk.written_snapshot {
            Some((m, data)) if m == meta => {
                let at = offset as usize;
                Some(data.slice(at..at + len))
            }
            _ => None,
        })
    }

    fn append_log(&mut self, entries: &[Entry]) -> Result<(), Infallible> {
        let r = self
            .checker
            .on_append(self.id, &mut self.disk.written_log, entries.to_vec());
        self.note(r);
        self.disk.cache.push(Op::Append(entries.to_vec()));
        Ok(())
    }

    /// Always asynchronous: the simulator completes it later.
    fn sync(&mut self) -> Result<bool, Infallible> {
        assert!(
            self.disk.syncing.is_none(),
            "driver started a sync while one was in flight"
        );
        self.disk.syncing = Some(std::mem::take(&mut self.disk.cache));
        Ok(false)
    }
}
