//! Snapshots on this member: taking one when enough was applied (the
//! writing runs on the snapshot thread), making it current when the thread
//! is done, installing the leader's, and loading one into a store.

use std::io;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use raft_proto::{LogIndex, Membership, SnapshotMeta};

use super::{FatalError, Server};
use crate::kv::{self, Kv};
use crate::storage::{SnapshotInfo, SnapshotReader, Storage};
use crate::turn::Phase;

impl Server {
    /// The leader's snapshot was received, checked and installed by the
    /// store (the driver did that): the store is to be replaced by it. The
    /// loading (a million keys take about a second) runs on a helper
    /// thread; meanwhile the loop serves its peers and timers, and the
    /// applies, reads and events handed out after the snapshot wait in the
    /// backlog behind it. `Ok(Some(meta))`: still loading, call again.
    pub(super) fn install_snapshot(
        &mut self,
        meta: SnapshotMeta,
        now: Instant,
    ) -> Result<Option<SnapshotMeta>, FatalError> {
        let Some(loading) = &self.loading else {
            self.loading = Some(Loading::start(
                &self.storage,
                info_of(&meta),
                self.snapshotter.waker(),
            )?);
            return Ok(Some(meta));
        };
        let (kv, membership) = match loading.rx.try_recv() {
            Ok(loaded) => loaded.map_err(FatalError::Snapshot)?,
            Err(TryRecvError::Empty) => return Ok(Some(meta)),
            Err(TryRecvError::Disconnected) => {
                return Err(FatalError::Snapshot(
                    "the snapshot loading thread died".into(),
                ))
            }
        };
        let t0 = self.loading.take().expect("checked above").started;
        if membership != *meta.membership {
            // The leader wrote both from the same log; the node follows
            // the announced one.
            log::warn!(
                "the leader's snapshot at {} holds configuration {membership:?}, announced {:?}",
                meta.last_index,
                meta.membership
            );
        }
        self.kv = kv;
        self.committed_membership = Some((*meta.membership).clone());
        self.sync_links();
        self.last_applied = (meta.last_index, meta.last_term);
        // Entries the snapshot replaced are neither applied nor made
        // durable here: they leave the lag histograms unobserved.
        for q in [&mut self.appended_at, &mut self.durable_pending] {
            while q.front().is_some_and(|&(i, _)| i <= meta.last_index.0) {
                q.pop_front();
            }
        }
        self.snapshotter.reset();
        self.counters.snapshots_installed += 1;
        log::info!(
                "installed the leader's snapshot at index {} (term {}): {} bytes, {} keys, loaded in {} ms",
                meta.last_index,
                meta.last_term,
                meta.len,
                self.kv.len(),
                t0.elapsed().as_millis()
            );
        self.applied_for_reads(meta.last_index.0, now);
        Ok(None)
    }

    /// Starts a snapshot when enough was applied since the last one.
    pub(super) fn maybe_snapshot(&mut self, now: Instant) -> Result<(), FatalError> {
        let (index, term) = self.last_applied;
        let current = self
            .storage
            .snapshot()
            .map_or(LogIndex(0), |s| s.last_index);
        if index <= current
            || !self.snapshotter.due(
                self.settings.snapshot_entries,
                self.settings.snapshot_bytes,
                now,
            )
        {
            return Ok(());
        }
        log::debug!("snapshot at index {index} (term {term}) started");
        self.snapshotter
            .start(
                &mut self.storage,
                &self.kv,
                &self
                    .node
                    .membership_at(index)
                    .expect("the applied index is not below the log start")
                    .clone(),
                index,
                term,
                now,
            )
            .map_err(FatalError::Storage)
    }

    /// The snapshot thread finished: make its snapshot current, tell the
    /// node (which compacts its log), or log why it failed.
    pub(super) fn snapshot_finished(&mut self, now: Instant) -> Result<(), FatalError> {
        let Some(done) = self.snapshotter.poll(now) else {
            return Ok(());
        };
        let info = match done.outcome {
            Ok(info) => info,
            Err(e) => {
                self.counters.snapshots_failed += 1;
                log::error!(
                    "snapshot at index {} failed: {e}; next attempt in {} s",
                    done.last_index,
                    crate::snapshots::RETRY_AFTER.as_secs()
                );
                return self.storage.abort_snapshot().map_err(FatalError::Storage);
            }
        };
        let committed = self
            .storage
            .commit_snapshot(info)
            .map_err(FatalError::Storage)?;
        self.turn.lap(Phase::SnapshotCommit);
        if !committed {
            log::info!(
                "snapshot at index {} dropped: a newer one was installed meanwhile",
                info.last_index
            );
            return Ok(());
        }
        let Some(membership) = self.node.membership_at(info.last_index).cloned() else {
            log::info!(
                "snapshot at index {} dropped: the log was compacted past it meanwhile",
                info.last_index
            );
            return Ok(());
        };
        let meta = SnapshotMeta {
            last_index: info.last_index,
            last_term: info.last_term,
            len: info.len,
            membership: Box::new(membership),
        };
        self.counters.snapshots_taken += 1;
        self.snapshotter.last = Some(crate::snapshots::LastSnapshot {
            at: now,
            took: done.took,
        });
        let before = self.storage.log_bytes();
        self.node.handle_snapshot_saved(self.time(now), meta);
        self.drain(now)?;
        log::info!(
            "snapshot at index {} (term {}): {} bytes in {} ms; log {} -> {} bytes, from index {}",
            info.last_index,
            info.last_term,
            info.len,
            done.took.as_millis(),
            before,
            self.storage.log_bytes(),
            self.storage.first_index()
        );
        Ok(())
    }
}

pub(super) fn info_of(meta: &SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        last_index: meta.last_index,
        last_term: meta.last_term,
        len: meta.len,
    }
}

/// A snapshot being loaded into a store on a helper thread.
pub(super) struct Loading {
    rx: Receiver<Result<(Kv, Membership), String>>,
    started: Instant,
}

impl Loading {
    /// Opens the current snapshot (on the loop: a file's open, so that a
    /// snapshot installed meanwhile cannot swap the file under the reader)
    /// and reads it on a helper thread, which wakes the loop when done.
    fn start(
        storage: &Storage,
        meta: SnapshotInfo,
        waker: Arc<mio::Waker>,
    ) -> Result<Loading, FatalError> {
        let reader = open_snapshot(storage, meta).map_err(FatalError::Snapshot)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("snapshot-load".into())
            .spawn(move || {
                let _ = tx.send(read_snapshot(reader, meta));
                let _ = waker.wake();
            })
            .map_err(|e| FatalError::Snapshot(format!("cannot start the loading thread: {e}")))?;
        Ok(Loading {
            rx,
            started: Instant::now(),
        })
    }
}

/// The store and the configuration as the current snapshot holds them,
/// which must be `meta` (at start, on the loop's thread).
pub(super) fn load_snapshot(
    storage: &Storage,
    meta: SnapshotInfo,
) -> Result<(Kv, Membership), String> {
    read_snapshot(open_snapshot(storage, meta)?, meta)
}

fn open_snapshot(storage: &Storage, meta: SnapshotInfo) -> Result<SnapshotReader, String> {
    let Some((info, reader)) = storage.snapshot_payload().map_err(|e| e.to_string())? else {
        return Err(format!("the snapshot at {} is missing", meta.last_index));
    };
    if info != meta {
        return Err(format!(
            "the snapshot on disk is at {} (term {}), not {} (term {})",
            info.last_index, info.last_term, meta.last_index, meta.last_term
        ));
    }
    Ok(reader)
}

fn read_snapshot(reader: SnapshotReader, meta: SnapshotInfo) -> Result<(Kv, Membership), String> {
    let mut reader = io::BufReader::with_capacity(1 << 20, reader);
    let (kv, membership) = kv::snapshot::read_payload(&mut reader)
        .map(|(m, kv)| (kv, m))
        .map_err(|e| format!("snapshot at {}: {e}", meta.last_index))?;
    if kv.applied_index() > meta.last_index.0 {
        return Err(format!(
            "snapshot at {} holds a store applied up to {}",
            meta.last_index,
            kv.applied_index()
        ));
    }
    Ok((kv, membership))
}
