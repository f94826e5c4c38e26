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
//! The simulator's checker sees what was written (the node's view) through
//! `written`, and what survives a crash through `durable`.

use std::convert::Infallible;

use super::checker::{entry_hash, Checker, DiskLog, Violation};
use crate::driver::LogStore;
use crate::{Entry, HardState, LogIndex, NodeId, PersistentState, Rng};

/// One write, as issued.
#[derive(Clone, Debug)]
enum Op {
    HardState(HardState),
    Truncate(LogIndex),
    Append(Vec<Entry>),
}

/// A member's disk.
#[derive(Debug, Default)]
pub(crate) struct SimDisk {
    /// What the node has written, synced or not: its view of its disk.
    pub(crate) written_hs: HardState,
    pub(crate) written_log: DiskLog,
    /// What a crash cannot take away.
    pub(crate) durable_hs: HardState,
    durable_log: Vec<Entry>,
    /// Each durable entry's checksum, as the real storage keeps one per
    /// record: recomputed at restart to detect corruption.
    durable_sums: Vec<u64>,
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

    /// The durable log.
    pub(crate) fn durable_log(&self) -> &[Entry] {
        &self.durable_log
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
                let keep = from.0.saturating_sub(1) as usize;
                self.durable_log.truncate(keep);
                self.durable_sums.truncate(keep);
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
    pub(crate) fn crash(&mut self, rng: &mut Rng) -> (usize, usize) {
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
        self.restore_written();
        (keep, total)
    }

    /// Corrupts one durable record, to be found at the next restart.
    pub(crate) fn corrupt_a_record(&mut self, rng: &mut Rng) -> Option<LogIndex> {
        if self.durable_sums.is_empty() {
            return None;
        }
        let i = rng.range(0, self.durable_sums.len() as u64) as usize;
        self.corrupt = Some(i);
        Some(LogIndex(i as u64 + 1))
    }

    /// What a restarting node recovers, or the first record whose checksum
    /// does not match (the member must refuse to start).
    pub(crate) fn recover(&self) -> Result<PersistentState, LogIndex> {
        for (i, (e, &sum)) in self.durable_log.iter().zip(&self.durable_sums).enumerate() {
            let mut read = entry_hash(e);
            if self.corrupt == Some(i) {
                read ^= 1; // a flipped bit on the way back
            }
            if read != sum {
                return Err(e.index);
            }
        }
        Ok(PersistentState {
            hard_state: self.durable_hs,
            entries: self.durable_log.clone(),
            applied: LogIndex(0),
        })
    }

    /// After a crash, the node's view is the durable state again.
    fn restore_written(&mut self) {
        self.written_hs = self.durable_hs;
        self.written_log = DiskLog::default();
        for e in &self.durable_log {
            self.written_log.append(e.clone());
        }
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
