//! Deleting large files without stalling the thread that owns the store.
//!
//! Unlinking a file frees its page-cache pages and its extents inside the
//! call: about 0.7 ms per MiB on the development VM (ext4), so 12 ms for a
//! 16 MiB log segment and 90-100 ms for the 127 MB snapshot of a 1 M-key
//! store, on the event loop, after every snapshot (issue 9). Instead the
//! store gives a file it no longer needs a trash name, which is a cheap
//! metadata operation (a rename out of the way for a segment or a tmp file;
//! a hard link for the snapshot that a new one is renamed over, so that
//! the rename frees nothing), and a helper thread shrinks the trash file a
//! few MiB at a time, pausing between steps, then unlinks it. Steps rather
//! than one unlink on the helper: a long truncation holds its journal
//! handle for its whole length, and every fsync on the filesystem (the
//! loop's log fsync, and other members' when they share a disk) waits for
//! the journal commit that waits for that handle.
//!
//! Only a file with one name is shrunk: one with another link (power-cut
//! mode keeps a backup link of files whose deletion is not durable yet) is
//! merely unlinked, which frees nothing. Nobody may read a file after it
//! went to the trash: its contents disappear from the end.
//!
//! Trash is not durable state. The renames are not fsynced, like the
//! deletions they stand for (module docs of `storage`), so a crash may
//! bring back the file's old name (recovery skips such a segment) or leave
//! trash files, which [`super::Storage::open`] deletes once the data dir
//! checked out.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::power_cut::PowerCut;
use super::{io_err, remove_file, StorageError};

/// Trash files are named this, a sequence number and the file's old name.
pub(super) const TRASH_PREFIX: &str = "trash-";
/// Files waiting for the helper at most; beyond, the caller deletes the
/// file itself (slow, but bounded, and logged).
const MAX_QUEUED: usize = 64;
/// The helper shrinks a file by this much per step: about 3 ms of work.
const STEP_BYTES: u64 = 4 << 20;
/// And rests this long between steps, for journal commits to go through.
const STEP_PAUSE: Duration = Duration::from_millis(2);

/// Whether `name` is a trash file.
pub(super) fn is_trash(name: &str) -> bool {
    name.starts_with(TRASH_PREFIX)
}

/// A file given a trash name by [`Trash::link`], to hand to the helper
/// once nothing needs it: [`Trash::delete`].
#[must_use = "a linked file stays on disk until it is passed to Trash::delete"]
#[derive(Debug)]
pub(super) struct Linked(Option<String>);

/// The trash of one data dir, and the helper thread that empties it.
#[derive(Debug)]
pub(super) struct Trash {
    dir: PathBuf,
    /// Makes trash names unique: the store empties the trash at open.
    next: u64,
    helper: Option<Helper>,
    /// The helper could not be started, or fell behind: logged once.
    warned: bool,
}

#[derive(Debug)]
struct Helper {
    tx: Option<SyncSender<PathBuf>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Trash {
    /// The trash of `dir`; its helper starts with the first file.
    pub fn new(dir: &Path) -> Trash {
        Trash {
            dir: dir.to_path_buf(),
            next: 0,
            helper: None,
            warned: false,
        }
    }

    /// Moves `dir/name` to the trash (rename), if it exists, and has it
    /// deleted in the background. Like an unlink for a power cut: the old
    /// name may come back.
    pub fn discard(
        &mut self,
        name: &str,
        power_cut: &mut Option<PowerCut>,
    ) -> Result<(), StorageError> {
        if let Some(pc) = power_cut {
            pc.before_unlink(name);
        }
        let trash = self.trash_name(name);
        let from = self.dir.join(name);
        match fs::rename(&from, self.dir.join(&trash)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&from, "cannot move to the trash", e)),
        }
        self.send(trash, power_cut)
    }

    /// Gives `dir/name`, if it exists, a second name in the trash (hard
    /// link), so that renaming another file over `name` frees nothing.
    /// Pass the result to [`Trash::delete`] once the old contents are no
    /// longer read. A link that fails is logged and costs only the stall:
    /// the rename then frees the file.
    pub fn link(&mut self, name: &str) -> Linked {
        let trash = self.trash_name(name);
        let from = self.dir.join(name);
        match fs::hard_link(&from, self.dir.join(&trash)) {
            Ok(()) => Linked(Some(trash)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Linked(None),
            Err(e) => {
                log::warn!(
                    "cannot link {} into the trash: {e}; replacing it will free it on the \
                     event loop",
                    from.display()
                );
                Linked(None)
            }
        }
    }

    /// Has a file [`Trash::link`] kept deleted in the background.
    pub fn delete(
        &mut self,
        linked: Linked,
        power_cut: &mut Option<PowerCut>,
    ) -> Result<(), StorageError> {
        match linked.0 {
            Some(trash) => self.send(trash, power_cut),
            None => Ok(()),
        }
    }

    fn trash_name(&mut self, name: &str) -> String {
        self.next += 1;
        format!("{TRASH_PREFIX}{}-{name}", self.next)
    }

    /// Queues `trash` for the helper; deletes it here if the helper is
    /// not available or is too far behind.
    fn send(
        &mut self,
        trash: String,
        power_cut: &mut Option<PowerCut>,
    ) -> Result<(), StorageError> {
        if self.helper.is_none() {
            self.helper = Helper::start();
        }
        let path = self.dir.join(&trash);
        let why = match self.helper.as_ref().and_then(|h| h.tx.as_ref()) {
            Some(tx) => match tx.try_send(path) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => "is behind",
                Err(TrySendError::Disconnected(_)) => "has stopped",
            },
            None => "could not be started",
        };
        if !std::mem::replace(&mut self.warned, true) {
            log::warn!(
                "{}: the thread that deletes old log segments and snapshots {why}: deleting \
                 on the event loop, which may stall it",
                self.dir.display()
            );
        }
        remove_file(&self.dir, &trash, power_cut)
    }
}

impl Drop for Trash {
    /// Stops the helper after its current step and waits for it: the
    /// files it did not get to stay in the trash until the next open.
    fn drop(&mut self) {
        if let Some(mut h) = self.helper.take() {
            h.stop.store(true, Ordering::Relaxed);
            drop(h.tx.take());
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Helper {
    fn start() -> Option<Helper> {
        let (tx, rx) = mpsc::sync_channel(MAX_QUEUED);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("trash".into())
            .spawn(move || empty_trash(&rx, &stop2))
            .map_err(|e| log::warn!("cannot start the thread that deletes old files: {e}"))
            .ok()?;
        Some(Helper {
            tx: Some(tx),
            stop,
            thread: Some(thread),
        })
    }
}

fn empty_trash(rx: &Receiver<PathBuf>, stop: &AtomicBool) {
    // Below the event loop, like the snapshot writer (`snapshots.rs`).
    // SAFETY: a plain syscall on this thread; a failure only keeps the
    // default priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
    while let Ok(path) = rx.recv() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = remove_gradually(&path, stop) {
            // Left for the next start, which empties the trash.
            log::warn!("cannot delete {}: {e}", path.display());
        }
    }
}

/// Shrinks `path` from the end in steps, then unlinks it. Stops early,
/// leaving the file, when `stop` is set.
fn remove_gradually(path: &Path, stop: &AtomicBool) -> io::Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let m = file.metadata()?;
    if m.nlink() == 1 {
        let mut len = m.len();
        while len > 0 {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            len = len.saturating_sub(STEP_BYTES);
            file.set_len(len)?;
            std::thread::sleep(STEP_PAUSE);
        }
    }
    drop(file);
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_another_name_is_unlinked_not_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("a"), vec![7u8; 3 * STEP_BYTES as usize / 2]).unwrap();
        fs::hard_link(d.join("a"), d.join("b")).unwrap();
        remove_gradually(&d.join("b"), &AtomicBool::new(false)).unwrap();
        assert!(!d.join("b").exists());
        assert_eq!(
            fs::read(d.join("a")).unwrap().len(),
            3 * STEP_BYTES as usize / 2
        );
        // The last name: shrunk, then gone.
        remove_gradually(&d.join("a"), &AtomicBool::new(false)).unwrap();
        assert!(!d.join("a").exists());
        // Gone already: nothing to do.
        remove_gradually(&d.join("a"), &AtomicBool::new(false)).unwrap();
    }

    #[test]
    fn linked_files_go_only_when_deleted_and_drop_waits_for_the_helper() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("old"), b"old contents").unwrap();
        fs::write(d.join("new"), b"new contents").unwrap();
        let mut trash = Trash::new(d);
        let linked = trash.link("old");
        fs::rename(d.join("new"), d.join("old")).unwrap();
        assert_eq!(fs::read(d.join("trash-1-old")).unwrap(), b"old contents");
        trash.delete(linked, &mut None).unwrap();
        trash.discard("old", &mut None).unwrap();
        // Nothing there: nothing to do.
        trash.discard("missing", &mut None).unwrap();
        let none = trash.link("missing");
        trash.delete(none, &mut None).unwrap();
        // The helper works in the background; wait for it a little.
        for _ in 0..500 {
            if fs::read_dir(d).unwrap().next().is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(trash);
        let left: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
