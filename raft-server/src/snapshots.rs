//! Taking snapshots without stalling the event loop (issue 9).
//!
//! The store is a persistent map (`imbl`), so [`Kv::snapshot`] is an O(1)
//! clone that later writes do not disturb. The loop takes that clone, with
//! the configuration, as a [`crate::kv::snapshot::Payload`] (whose module
//! defines the payload's bytes, and reads them back), and a
//! [`SnapshotWriter`] for `snapshot.tmp`, and hands both to a helper
//! thread, which serialises the store, writes and fsyncs the file, and
//! wakes the loop through a [`Waker`]. Back on the loop, the store makes it
//! current (rename, directory fsync: [`Storage::commit_snapshot`]) and only
//! then is the node told ([`raft_proto::Node::handle_snapshot_saved`]) and
//! the log compacted. So the loop never serialises a million keys, never
//! waits for the snapshot's fsync, and heartbeats keep flowing.
//!
//! Why not `fork()` (Redis' way)? The child would inherit every socket
//! and the flock, and copy-on-write makes memory use depend on the write
//! rate during the snapshot. Why not serialise incrementally on the loop?
//! A persistent map gives the same non-blocking property with one clone
//! and no bookkeeping of what changed while a snapshot ran.
//!
//! A snapshot is due once `snapshot_entries` entries, or `snapshot_log_mb`
//! MiB of commands, were applied since the last one began. A writer that
//! fails (disk full) is logged, its file removed, and tried again after
//! [`RETRY_AFTER`]; it never stops the member.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Registry, Token, Waker};
use raft_proto::{LogIndex, Term};

use crate::kv::Kv;
use crate::storage::{SnapshotInfo, Storage, StorageError};

/// After a failed snapshot, the next attempt waits this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a finished helper thread reports.
type Outcome = Result<SnapshotInfo, String>;

struct Job {
    rx: Receiver<Outcome>,
    thread: JoinHandle<()>,
    started: Instant,
    last_index: LogIndex,
}

/// A snapshot the helper thread finished writing.
pub struct Finished {
    /// The snapshot, or why it could not be written.
    pub outcome: Outcome,
    /// How long it took, from the clone to the fsynced file.
    pub took: Duration,
    /// The index it was taken at.
    pub last_index: LogIndex,
}

/// The last snapshot taken here, for INFO and metrics.
#[derive(Clone, Copy, Debug)]
pub struct LastSnapshot {
    /// When it was committed.
    pub at: Instant,
    /// From the clone to the fsynced file.
    pub took: Duration,
}

/// Decides when to snapshot and runs the helper thread.
pub struct Snapshotter {
    waker: Arc<Waker>,
    job: Option<Job>,
    entries_since: u64,
    bytes_since: u64,
    retry_at: Option<Instant>,
    /// The last snapshot taken here.
    pub last: Option<LastSnapshot>,
}

impl Snapshotter {
    /// A snapshotter whose helper threads wake `registry` with `token`.
    pub fn new(registry: &Registry, token: Token) -> std::io::Result<Snapshotter> {
        Ok(Snapshotter {
            waker: Arc::new(Waker::new(registry, token)?),
            job: None,
            entries_since: 0,
            bytes_since: 0,
            retry_at: None,
            last: None,
        })
    }

    /// The waker its helper threads use, for other helpers to share (mio
    /// allows one waker per poll).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// An entry with `bytes` of command was applied.
    pub fn applied(&mut self, bytes: usize) {
        self.entries_since += 1;
        self.bytes_since += bytes as u64;
    }

    /// The state machine was replaced by an installed snapshot: counting
    /// starts again.
    pub fn reset(&mut self) {
        self.entries_since = 0;
        self.bytes_since = 0;
    }

    /// Whether a snapshot should start now.
    pub fn due(&self, entries: u64, bytes: u64, now: Instant) -> bool {
        self.job.is_none()
            && self.retry_at.is_none_or(|t| now >= t)
            && (self.entries_since >= entries || self.bytes_since >= bytes)
    }

    /// Whether a helper thread is writing one.
    pub fn running(&self) -> bool {
        self.job.is_some()
    }

    /// Starts writing the store, as it is after applying the entry
    /// `(last_index, last_term)`, on a helper thread.
    pub fn start(
        &mut self,
        storage: &mut Storage,
        kv: &Kv,
        membership: &raft_proto::Membership,
        last_index: LogIndex,
        last_term: Term,
        now: Instant,
    ) -> Result<(), StorageError> {
        assert!(self.job.is_none(), "one snapshot at a time");
        let mut writer = storage.snapshot_writer(last_index, last_term)?;
        // The configuration at `last_index`, then the store (kv::snapshot).
        let payload = crate::kv::snapshot::Payload::new(membership, kv);
        let (tx, rx) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                // Below the event loop: on a small machine the loop's
                // heartbeats must not wait for the serialiser. Linux takes
                // a thread id here, so only this thread is reniced.
                // SAFETY: plain syscalls; a failure only keeps the default
                // priority.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                }
                let written = payload.write_to(&mut writer);
                let outcome = match written {
                    Ok(()) => writer.finish().map_err(|e| e.to_string()),
                    Err(e) => Err(format!("cannot write the snapshot: {e}")),
                };
                // Freed here, before the loop hears of the outcome and
                // joins this thread: the tree nodes the live store replaced
                // since the clone belong to this copy alone, and freeing a
                // large store's took the loop 100+ ms when the join did it.
                drop(payload);
                // The loop may be gone (shutdown): nothing to tell then.
                let _ = tx.send(outcome);
                let _ = waker.wake();
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                log::error!(
                    "snapshot at {last_index} not taken: cannot start its thread: {e}; \
                     next attempt in {} s",
                    RETRY_AFTER.as_secs()
                );
                self.retry_at = Some(now + RETRY_AFTER);
                return storage.abort_snapshot();
            }
        };
        self.entries_since = 0;
        self.bytes_since = 0;
        self.job = Some(Job {
            rx,
            thread,
            started: now,
            last_index,
        });
        Ok(())
    }

    /// The snapshot the helper thread finished, if it has.
    pub fn poll(&mut self, now: Instant) -> Option<Finished> {
        let job = self.job.as_ref()?;
        let outcome = match job.rx.try_recv() {
            Ok(o) => o,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err("the snapshot thread died".into()),
        };
        let job = self.job.take().expect("job checked above");
        let _ = job.thread.join();
        if outcome.is_err() {
            self.retry_at = Some(now + RETRY_AFTER);
        }
        Some(Finished {
            outcome,
            took: now.saturating_duration_since(job.started),
            last_index: job.last_index,
        })
    }
}
