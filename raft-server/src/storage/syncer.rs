//! The log's fdatasync on a helper thread, so that a slow disk delays
//! the answers that wait for durability but not the event loop.
//!
//! On the development VM an fdatasync of a 200-byte append takes under a
//! millisecond, but stalls for 40-290 ms about once or twice a minute even
//! with the cluster idle (the host's disk), and longer while other members
//! write snapshots on the same disk. Waiting for it on the loop held up
//! heartbeats and every other socket for that long. The driver of
//! `raft-proto` already supports a store whose sync completes later (the
//! simulator's disk does): messages that depend on the writes are held
//! until the sync completes, and a leader's AppendEntries and heartbeats
//! leave at once.
//!
//! The store writes the batch on the caller's thread, as before, and hands
//! only the fdatasync to this thread; the next batch is written only after
//! it completed (the rule recovery relies on: module docs of `storage`).

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{io_err, StorageError};

/// Called on the helper thread after each fdatasync (to wake the loop).
pub(super) type Notify = Box<dyn Fn() + Send>;

/// What the helper reports: how long the fdatasync took, or why it failed.
pub(super) type Done = Result<Duration, StorageError>;

struct Job {
    /// A descriptor of the segment written to, duplicated once per segment
    /// (not per sync: that was two system calls per batch).
    file: Arc<File>,
    path: PathBuf,
}

/// The helper thread and its channels.
pub(super) struct Syncer {
    tx: Option<Sender<Job>>,
    rx: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer").finish_non_exhaustive()
    }
}

impl Syncer {
    /// Starts the helper, which calls `notify` after each fdatasync.
    pub fn start(notify: Notify) -> std::io::Result<Syncer> {
        let (tx, jobs) = mpsc::channel::<Job>();
        let (done, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || {
                for job in jobs {
                    let t0 = Instant::now();
                    let r = job
                        .file
                        .sync_data()
                        .map(|()| t0.elapsed())
                        .map_err(|e| io_err(&job.path, "cannot fsync", e));
                    if done.send(r).is_err() {
                        return;
                    }
                    notify();
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            rx,
            thread: Some(thread),
        })
    }

    /// Starts the fdatasync of `file` (at `path`).
    pub fn submit(&self, file: Arc<File>, path: PathBuf) {
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Job { file, path }).is_ok());
        // The helper only ends when this is dropped, or if it panicked.
        assert!(sent, "the log-sync thread is gone");
    }

    /// The outcome of the fdatasync submitted, if it finished.
    pub fn try_done(&self) -> Option<Done> {
        match self.rx.try_recv() {
            Ok(d) => Some(d),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => panic!("the log-sync thread died"),
        }
    }

    /// Waits for the outcome of the fdatasync submitted.
    pub fn wait(&self) -> Done {
        self.rx.recv().expect("the log-sync thread died")
    }
}

impl Drop for Syncer {
    /// Lets the helper finish what it was given, then joins it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
