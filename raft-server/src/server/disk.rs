//! The driver's two ports on this server: [`Disk`], the data dir as its
//! [`LogStore`], and [`Links`], the peer links as its [`Transport`]. Each
//! borrows what it needs from the `Server` for one drain and counts what it
//! did for the metrics.

use std::collections::VecDeque;
use std::time::Instant;

use raft_proto::driver::{LogStore, Transport};
use raft_proto::{Entry, HardState, LogIndex, Message, SnapshotMeta};

use super::snapshot::info_of;
use super::MAX_APPLY_LAG_TRACKED;
use crate::info::Histograms;
use crate::peer::{PeerInput, PeerSet};
use crate::storage::{Storage, StorageError};

/// The data dir as the driver's [`LogStore`]: `Storage` buffers the writes
/// and makes them durable with one fsync per sync (group commit), timed
/// for the metrics; appends are remembered for the apply-lag histogram.
pub(super) struct Disk<'a> {
    pub(super) storage: &'a mut Storage,
    pub(super) histograms: &'a mut Histograms,
    pub(super) appended_at: &'a mut VecDeque<(u64, Instant)>,
    pub(super) durable_pending: &'a mut VecDeque<(u64, Instant)>,
    pub(super) now: Instant,
    pub(super) fsyncs: u64,
    pub(super) fsync_nanos: u64,
    pub(super) compact_nanos: u64,
    pub(super) entries_persisted: u64,
    pub(super) chunks_sent: u64,
    pub(super) chunk_bytes_sent: u64,
    pub(super) snapshots_sent: u64,
}

/// Observes the durable lag of every tracked append up to `synced`.
pub(super) fn observe_durable(
    pending: &mut VecDeque<(u64, Instant)>,
    durable_lag: &prometheus_client::metrics::histogram::Histogram,
    synced: u64,
    now: Instant,
) {
    while pending.front().is_some_and(|&(i, _)| i <= synced) {
        if let Some((_, at)) = pending.pop_front() {
            durable_lag.observe(now.saturating_duration_since(at).as_secs_f64());
        }
    }
}

impl LogStore for Disk<'_> {
    type Error = StorageError;

    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.storage.save_hard_state(hs);
        Ok(())
    }

    fn truncate_log(&mut self, from: LogIndex) -> Result<(), StorageError> {
        for q in [&mut *self.appended_at, &mut *self.durable_pending] {
            while q.back().is_some_and(|&(i, _)| i >= from.0) {
                q.pop_back();
            }
        }
        self.storage.truncate(from);
        Ok(())
    }

    fn append_log(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.entries_persisted += entries.len() as u64;
        for e in entries {
            if self.appended_at.len() == MAX_APPLY_LAG_TRACKED {
                self.appended_at.pop_front();
            }
            self.appended_at.push_back((e.index.0, self.now));
            if self.durable_pending.len() == MAX_APPLY_LAG_TRACKED {
                self.durable_pending.pop_front();
            }
            self.durable_pending.push_back((e.index.0, self.now));
        }
        self.storage.append(entries);
        Ok(())
    }

    /// Usually the fdatasync runs on the store's helper thread
    /// (`Ok(false)`; `Server::sync_finished` completes it); a sync that
    /// also writes the hard state or starts a segment is done here.
    fn sync(&mut self) -> Result<bool, StorageError> {
        if !self.storage.needs_sync() {
            return Ok(true);
        }
        let t0 = Instant::now();
        let durable = self.storage.start_sync()?;
        if durable {
            let took = t0.elapsed();
            self.fsyncs += 1;
            self.fsync_nanos += took.as_nanos() as u64;
            self.histograms.fsync.observe(took.as_secs_f64());
            observe_durable(
                self.durable_pending,
                &self.histograms.durable_lag,
                self.storage.synced_index(),
                Instant::now(),
            );
        }
        Ok(durable)
    }

    fn write_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        self.storage
            .write_incoming_chunk(info_of(meta), offset, data)
    }

    /// Checks the received snapshot (length, header, checksum) and makes it
    /// current, durably, with §7's rule applied to the log.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<bool, StorageError> {
        self.storage.install_incoming(info_of(meta))
    }

    fn compact_log(&mut self, through: LogIndex) -> Result<(), StorageError> {
        let t0 = Instant::now();
        let r = self.storage.compact(through);
        self.compact_nanos += t0.elapsed().as_nanos() as u64;
        r
    }

    fn read_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Option<raft_proto::Bytes>, StorageError> {
        match self
            .storage
            .read_snapshot_chunk(meta.last_index, offset, len)
        {
            Ok(data) => {
                self.chunks_sent += 1;
                self.chunk_bytes_sent += data.len() as u64;
                if offset == 0 {
                    self.snapshots_sent += 1;
                }
                Ok(Some(data))
            }
            // A newer snapshot replaced it: the node starts over with that.
            Err(StorageError::SnapshotReplaced { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The peer links as the driver's [`Transport`]: messages are queued on
/// their link; `flush` writes them out before an fsync, so that a leader's
/// AppendEntries travel while its disk works (thesis §10.2.1).
pub(super) struct Links<'a> {
    pub(super) peers: &'a mut PeerSet,
    pub(super) registry: &'a mio::Registry,
    pub(super) now: Instant,
    pub(super) inputs: &'a mut Vec<PeerInput>,
    pub(super) sent: u64,
    pub(super) heartbeats_sent: u64,
    pub(super) heartbeats_failed: u64,
}

impl Transport for Links<'_> {
    fn send(&mut self, msg: Message) {
        self.sent += 1;
        let queued = self.peers.send(&msg, self.registry, self.now, self.inputs);
        if msg.kind() == "Heartbeat" {
            self.heartbeats_sent += 1;
            self.heartbeats_failed += u64::from(!queued);
        }
    }

    fn flush(&mut self) {
        self.peers.flush(self.registry, self.now, self.inputs);
    }
}
