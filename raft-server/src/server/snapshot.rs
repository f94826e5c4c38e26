//! Snapshots on this member: taking one when enough was applied (the
//! writing runs on the snapshot thread), making it current when the thread
//! is done, installing the leader's, and loading one into a store.

use std::io;
use std::time::Instant;

use raft_proto::{LogIndex, Membership, SnapshotMeta};

use super::{FatalError, Server};
use crate::kv::{self, Kv};
use crate::storage::{SnapshotInfo, Storage};
use crate::turn::Phase;

impl Server {
    /// The leader's snapshot was received, checked and installed by the
    /// store (the driver did that): the store is replaced by it. This runs
    /// on the loop: a member that needs a whole snapshot is not serving
    /// reads meanwhile anyway.
    pub(super) fn install_snapshot(
        &mut self,
        meta: SnapshotMeta,
        now: Instant,
    ) -> Result<(), FatalError> {
        let t0 = Instant::now();
        let (kv, membership) =
            load_snapshot(&self.storage, info_of(&meta)).map_err(FatalError::Snapshot)?;
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
        Ok(())
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

/// The store and the configuration as the current snapshot holds them,
/// which must be `meta`.
pub(super) fn load_snapshot(
    storage: &Storage,
    meta: SnapshotInfo,
) -> Result<(Kv, Membership), String> {
    let Some((info, reader)) = storage.snapshot_payload().map_err(|e| e.to_string())? else {
        return Err(format!("the snapshot at {} is missing", meta.last_index));
    };
    if info != meta {
        return Err(format!(
            "the snapshot on disk is at {} (term {}), not {} (term {})",
            info.last_index, info.last_term, meta.last_index, meta.last_term
        ));
    }
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
