//! Power-cut mode (module docs of `storage`): testing only, and absent
//! unless one of its environment switches is set.
//!
//! The model: the durable state of the data dir is a set of directory
//! entries (name to inode) as of the last directory fsync, and for each
//! inode the prefix of its contents that an fsync made durable. Every file
//! the store writes is append-only or written once before its fsync, so a
//! prefix length says it all. A segment's length is where its data ends,
//! which the store reports ([`PowerCut::segment_written`]): a preallocated
//! segment's file is longer, zeroes after the data. A file renamed over or unlinked while its
//! name is durable is kept alive through a hard link (`powercut-<inode>`),
//! so that the cut can put it back.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft_proto::Rng;

use super::segment::{parse_segment_name, SECTOR};
use super::snapshot::SyncLedger;
use super::{
    StorageError, META_FILE, META_TMP, SEGMENT_TMP, SNAPSHOT_FILE, SNAPSHOT_INCOMING, SNAPSHOT_TMP,
};

const POWER_CUT_AT_SYNC_VAR: &str = "RAFT_POWER_CUT_AT_SYNC";
const POWER_CUT_FILE_VAR: &str = "RAFT_POWER_CUT_FILE";
const POWER_CUT_SEED_VAR: &str = "RAFT_POWER_CUT_SEED";
/// Hard links that keep a durable file alive after a rename over it or an
/// unlink, until a directory fsync makes that durable.
const BACKUP_PREFIX: &str = "powercut-";

/// When the simulated power goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CutWhen {
    /// In the N-th durable operation with something to write (from 1).
    AtSync(u64),
    /// In the first durable operation with something to write after this
    /// file exists.
    FileExists(PathBuf),
}

/// The power-cut switches.
#[derive(Debug, Clone)]
pub(super) struct PowerCutPlan {
    pub when: CutWhen,
    pub seed: u64,
    /// Ends the process once the files are cut: [`power_off`]. (The store's
    /// unit tests unwind instead, and reopen the store.)
    pub halt: fn() -> !,
}

impl PowerCutPlan {
    /// Reads the switches; `None` when power-cut mode is off.
    pub fn from_env() -> Result<Option<PowerCutPlan>, StorageError> {
        PowerCutPlan::parse(
            std::env::var_os(POWER_CUT_AT_SYNC_VAR),
            std::env::var_os(POWER_CUT_FILE_VAR),
            std::env::var_os(POWER_CUT_SEED_VAR),
        )
    }

    /// The plan for the given values of the three switches.
    pub fn parse(
        at_sync: Option<OsString>,
        file: Option<OsString>,
        seed: Option<OsString>,
    ) -> Result<Option<PowerCutPlan>, StorageError> {
        let when = match (at_sync, file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(StorageError::Env {
                    var: POWER_CUT_AT_SYNC_VAR,
                    what: format!("set together with {POWER_CUT_FILE_VAR}: set one"),
                })
            }
            (Some(n), None) => {
                let at = n
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| StorageError::Env {
                        var: POWER_CUT_AT_SYNC_VAR,
                        what: format!("{n:?} is not a positive integer"),
                    })?;
                CutWhen::AtSync(at)
            }
            (None, Some(p)) if p.is_empty() => {
                return Err(StorageError::Env {
                    var: POWER_CUT_FILE_VAR,
                    what: "empty path".into(),
                })
            }
            (None, Some(p)) => CutWhen::FileExists(PathBuf::from(p)),
        };
        let seed = match seed {
            None => rand::random(),
            Some(s) => s
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StorageError::Env {
                    var: POWER_CUT_SEED_VAR,
                    what: format!("{s:?} is not an unsigned integer"),
                })?,
        };
        Ok(Some(PowerCutPlan {
            when,
            seed,
            halt: power_off,
        }))
    }
}

/// The end of a simulated power cut: the process stops on the spot, with no
/// unwinding, no flushing and no core file (a power cut leaves none, and
/// tests run in the source tree).
fn power_off() -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the struct, which lives across the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    std::process::abort()
}

/// A point in a durable operation where the simulated power may go out:
/// right after a write (or rename) and before the fsync that would make it
/// durable.
pub(super) fn cut_point(power_cut: &mut Option<PowerCut>) {
    if let Some(pc) = power_cut {
        pc.point();
    }
}

/// Whether the store manages a file of this name durably (the tmp files
/// are never durable state: a cut deletes them).
fn managed(name: &str) -> bool {
    name == META_FILE || name == SNAPSHOT_FILE || parse_segment_name(name).is_some()
}

/// The managed files in `dir`: name to (inode, length).
fn scan_managed(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    fs::read_dir(dir)
        .expect("power-cut mode: list the data dir")
        .filter_map(|e| {
            let e = e.expect("power-cut mode: list the data dir");
            let name = e.file_name().into_string().ok()?;
            if !managed(&name) {
                return None;
            }
            let m = e.metadata().expect("power-cut mode: stat a file");
            Some((name, (m.ino(), m.len())))
        })
        .collect()
}

fn remove_backups(dir: &Path, keep: impl Fn(u64) -> bool) {
    for e in fs::read_dir(dir).expect("power-cut mode: list the data dir") {
        let e = e.expect("power-cut mode: list the data dir");
        let name = e.file_name();
        let Some(ino) = name
            .to_str()
            .and_then(|n| n.strip_prefix(BACKUP_PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if !keep(ino) {
            remove_if_present(&e.path());
        }
    }
}

fn backup_path(dir: &Path, ino: u64) -> PathBuf {
    dir.join(format!("{BACKUP_PREFIX}{ino}"))
}

/// What the data dir would hold if the power went out now, as far as
/// fsyncs made it durable, and the cut itself.
#[derive(Debug)]
pub(super) struct PowerCut {
    plan: PowerCutPlan,
    rng: Rng,
    dir: PathBuf,
    /// Durable operations with something to write so far.
    syncs: u64,
    /// In the operation that cuts: how many cut points to pass first.
    armed: Option<u64>,
    /// Durable directory entries of managed files: name to inode.
    names: BTreeMap<String, u64>,
    /// Per inode: the length of the prefix an fsync made durable (none:
    /// nothing).
    synced: HashMap<u64, u64>,
    /// Per segment inode the store wrote to: where its data ends (none:
    /// at the end of the file).
    written: HashMap<u64, u64>,
    /// Fsyncs made on other threads (snapshot writers), not yet in
    /// `synced`.
    ledger: SyncLedger,
}

impl PowerCut {
    /// Starts the simulation with the files as found counting as durable.
    pub fn new(plan: PowerCutPlan, dir: &Path) -> PowerCut {
        let when = match &plan.when {
            CutWhen::AtSync(n) => format!("in sync number {n}"),
            CutWhen::FileExists(p) => format!("in the first sync after {} exists", p.display()),
        };
        log::warn!(
            "power-cut mode (testing only): the power goes out {when}, losing what was not \
             fsynced, and the process aborts; seed {}",
            plan.seed
        );
        // Left by a process killed (not cut) in power-cut mode.
        remove_backups(dir, |_| false);
        let found = scan_managed(dir);
        PowerCut {
            rng: Rng::new(plan.seed),
            plan,
            dir: dir.to_path_buf(),
            syncs: 0,
            armed: None,
            names: found
                .iter()
                .map(|(n, &(ino, _))| (n.clone(), ino))
                .collect(),
            synced: found.values().copied().collect(),
            written: HashMap::new(),
            ledger: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The ledger a snapshot writer records its fsync in.
    pub fn ledger(&self) -> SyncLedger {
        self.ledger.clone()
    }

    fn drain_ledger(&mut self) {
        let done = std::mem::take(&mut *self.ledger.lock().expect("power-cut ledger poisoned"));
        self.synced.extend(done);
    }

    /// A durable operation begins that has `points` cut points (0: nothing
    /// to write): if it is the one that cuts, picks one of them.
    pub fn begin_op(&mut self, points: u64) {
        assert!(self.armed.is_none(), "a power cut was armed but not done");
        if points == 0 {
            return;
        }
        self.syncs += 1;
        let due = match &self.plan.when {
            CutWhen::AtSync(n) => self.syncs == *n,
            CutWhen::FileExists(p) => p.exists(),
        };
        if due {
            self.armed = Some(self.rng.range(0, points));
        }
    }

    pub fn point(&mut self) {
        match self.armed {
            Some(0) => self.cut(),
            Some(k) => self.armed = Some(k - 1),
            None => {}
        }
    }

    /// `file` was just created (or emptied): nothing of it is durable,
    /// whatever an earlier file with the same inode number had.
    pub fn created(&mut self, file: &File) {
        self.drain_ledger();
        let ino = file.metadata().expect("power-cut mode: stat a file").ino();
        self.synced.remove(&ino);
        self.written.remove(&ino);
    }

    /// `file` was just fsynced: its current contents are durable.
    pub fn file_synced(&mut self, file: &File) {
        let m = file.metadata().expect("power-cut mode: stat a file");
        let len = self.written.get(&m.ino()).copied().unwrap_or(m.len());
        self.synced.insert(m.ino(), len);
    }

    /// The data of segment `file` now ends at `end` (what follows in the
    /// file, if anything, is zeroes the store did not write).
    pub fn segment_written(&mut self, file: &File, end: u64) {
        let ino = file.metadata().expect("power-cut mode: stat a file").ino();
        self.written.insert(ino, end);
    }

    /// `len` bytes of the file `ino` were made durable by an fsync on
    /// another thread, which the store's thread learnt of.
    pub fn synced_len(&mut self, ino: u64, len: u64) {
        self.synced.insert(ino, len);
    }

    /// `name` is about to be unlinked or renamed over: if it is durable,
    /// keep its inode alive for the cut to put back.
    pub fn before_unlink(&mut self, name: &str) {
        let Some(&ino) = self.names.get(name) else {
            return;
        };
        let path = self.dir.join(name);
        let Ok(m) = fs::metadata(&path) else {
            return;
        };
        let backup = backup_path(&self.dir, ino);
        if m.ino() == ino && !backup.exists() {
            fs::hard_link(&path, &backup).expect("power-cut mode: link a backup");
        }
    }

    /// The directory was fsynced: its entries as they are now are durable.
    pub fn dir_synced(&mut self) {
        self.drain_ledger();
        self.names = scan_managed(&self.dir)
            .into_iter()
            .map(|(n, (ino, _))| (n, ino))
            .collect();
        let live: Vec<u64> = self.names.values().copied().collect();
        remove_backups(&self.dir, |ino| live.contains(&ino));
    }

    /// What `name` would hold after a power cut now (`None`: no such file),
    /// ignoring the chance that an unlink reached the disk early.
    #[cfg(test)]
    pub fn durable(&mut self, name: &str) -> Option<Vec<u8>> {
        self.drain_ledger();
        let &ino = self.names.get(name)?;
        let current = self.dir.join(name);
        let path = match fs::metadata(&current) {
            Ok(m) if m.ino() == ino => current,
            _ => backup_path(&self.dir, ino),
        };
        let mut b = fs::read(path).expect("power-cut mode: read a durable file");
        b.truncate(self.synced.get(&ino).copied().unwrap_or(0) as usize);
        Some(b)
    }

    /// Leaves the files as a power cut now could, then halts.
    fn cut(&mut self) -> ! {
        self.drain_ledger();
        let mut report = Vec::new();
        let current = scan_managed(&self.dir);
        // Created or renamed into place since the last directory fsync:
        // that entry never reached the disk.
        for (name, (ino, _)) in &current {
            if self.names.get(name) != Some(ino) {
                remove_if_present(&self.dir.join(name));
            }
        }
        for (name, &ino) in &self.names.clone() {
            let path = self.dir.join(name);
            match current.get(name) {
                Some(&(now, _)) if now == ino => {}
                now => {
                    // An unlink may have reached the disk on its own (any
                    // subset of them); a rename over a file is lost.
                    if now.is_none() && self.rng.chance(0.5) {
                        report.push(format!("{name} stays deleted"));
                        continue;
                    }
                    fs::rename(backup_path(&self.dir, ino), &path)
                        .unwrap_or_else(|e| panic!("power-cut mode: put back {name}: {e}"));
                    report.push(format!("{name} put back"));
                }
            }
            let durable = self.synced.get(&ino).copied().unwrap_or(0);
            let file_len = fs::metadata(&path)
                .expect("power-cut mode: stat a file")
                .len();
            let len = self.written.get(&ino).copied().unwrap_or(file_len);
            assert!(
                len >= durable && file_len >= len,
                "{name} of {file_len} bytes, data to {len}, is shorter than its durable length \
                 {durable}"
            );
            if parse_segment_name(name).is_some() {
                if len > durable {
                    report.push(self.tear(name, &path, durable, len, file_len));
                }
            } else if len != durable {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(durable))
                    .expect("power-cut mode: cut a file");
                report.push(format!("{name} back to its durable {durable} bytes"));
            }
        }
        for tmp in [META_TMP, SEGMENT_TMP, SNAPSHOT_TMP, SNAPSHOT_INCOMING] {
            remove_if_present(&self.dir.join(tmp));
        }
        remove_backups(&self.dir, |_| false);
        if report.is_empty() {
            report.push("everything written was durable".into());
        }
        log::error!(
            "power cut (simulated) in sync number {}: {}",
            self.syncs,
            report.join("; ")
        );
        log::logger().flush();
        (self.plan.halt)()
    }

    /// Cuts the segment `name` somewhere between its durable length and
    /// the end of its data, `written` (sometimes nowhere: the whole batch
    /// reached the disk), maybe zeroes sectors of the unsynced part, and
    /// maybe leaves zeroes after the end (the size was updated, the data
    /// not). Zeroes come in whole sectors, clipped to the unsynced part (the
    /// durable bytes before it stay): a disk writes a sector all or
    /// nothing. A preallocated segment (`file_len` beyond `written`) keeps
    /// its length: its size was durable before the data, so the cut leaves
    /// zeroes where the lost data was.
    fn tear(
        &mut self,
        name: &str,
        path: &Path,
        durable: u64,
        written: u64,
        file_len: u64,
    ) -> String {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("power-cut mode: open a segment");
        let preallocated = file_len > written;
        if preallocated {
            // The store reports where its data ends; check it wrote nothing
            // after that, which the cut would otherwise keep.
            let mut after = vec![0u8; (file_len - written) as usize];
            f.read_exact_at(&mut after, written)
                .expect("power-cut mode: read a segment");
            assert!(
                after.iter().all(|&b| b == 0),
                "{name}: data after the end the store reported ({written})"
            );
        }
        let sector = SECTOR as u64;
        let zero = |lo: u64, hi: u64| {
            f.write_all_at(&vec![0u8; (hi - lo) as usize], lo)
                .expect("power-cut mode: zero sectors");
        };
        let keep = if self.rng.chance(0.25) {
            written
        } else if preallocated {
            // Each sector holds what was written or what was there before,
            // zeroes: the cut falls on a sector boundary (or at the
            // durable length, the sector before it keeping its durable part).
            (self.rng.range(durable, written + 1) / sector * sector).max(durable)
        } else {
            self.rng.range(durable, written + 1)
        };
        if preallocated {
            zero(keep, written);
        } else {
            f.set_len(keep).expect("power-cut mode: cut a segment");
        }
        let mut report = format!(
            "{name} cut to {keep} bytes (durable {durable}, written {written}{})",
            if preallocated { ", preallocated" } else { "" }
        );
        if keep > durable && self.rng.chance(0.5) {
            let s = self.rng.range(durable / sector, (keep - 1) / sector + 1);
            let n = self.rng.range(1, 4);
            let lo = (s * sector).max(durable);
            let hi = ((s + n) * sector).min(keep);
            zero(lo, hi);
            report.push_str(&format!(", zeroes at {lo}..{hi}"));
        }
        if self.rng.chance(0.25) {
            // The data of the last sector did not make it either.
            let lo = (keep / sector * sector).max(durable);
            zero(lo, keep);
            if preallocated {
                report.push_str(&format!(", zeroes at {lo}..{keep}"));
            } else {
                let pad = self.rng.range(1, 2 * sector);
                f.set_len(keep + pad)
                    .expect("power-cut mode: extend a segment");
                report.push_str(&format!(", zeroes at {lo}..{}", keep + pad));
            }
        }
        report
    }
}

fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("power-cut mode: cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halt() -> ! {
        panic!("halt")
    }

    #[test]
    fn a_preallocated_segment_is_torn_in_sectors_and_keeps_its_length() {
        const LEN: u64 = 64 << 10;
        const DURABLE: u64 = 3000;
        const WRITTEN: u64 = 10_000;
        let mut shortened = 0;
        for seed in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let name = "log-00000000000000000001";
            let path = dir.path().join(name);
            let mut bytes = vec![0xab; WRITTEN as usize];
            bytes.resize(LEN as usize, 0);
            fs::write(&path, &bytes).unwrap();
            let plan = PowerCutPlan {
                when: CutWhen::AtSync(1),
                seed,
                halt,
            };
            let mut pc = PowerCut::new(plan, dir.path());
            let report = pc.tear(name, &path, DURABLE, WRITTEN, LEN);
            let after = fs::read(&path).unwrap();
            assert_eq!(after.len() as u64, LEN, "seed {seed}: {report}");
            assert!(
                after[..DURABLE as usize].iter().all(|&b| b == 0xab),
                "seed {seed}: durable bytes lost: {report}"
            );
            let keep: u64 = report
                .split("cut to ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("seed {seed}: {report}"));
            assert!(
                keep == WRITTEN || keep == DURABLE || keep.is_multiple_of(SECTOR as u64),
                "seed {seed}: cut inside a sector: {report}"
            );
            assert!(
                after[keep as usize..].iter().all(|&b| b == 0),
                "seed {seed}: data after the cut: {report}"
            );
            shortened += u32::from(keep < WRITTEN);
        }
        assert!(shortened > 50, "only {shortened} cuts lost data");
    }
}
