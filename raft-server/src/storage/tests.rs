//! The store's unit tests: the log's framing and recovery (what is
//! dropped as torn, what is refused), segments, snapshots, compaction, and
//! the power-cut simulation.

use super::power_cut::CutWhen;
use super::segment::{
    push_record, ENTRY_BODY_FIXED_LEN, KIND_ENTRY, KIND_TRUNCATE, MAX_BATCH_LEN, PAYLOAD_NOOP,
    RECORD_HEADER_LEN, SECTOR,
};
use super::snapshot::{encode_snapshot_header, SnapshotHeader, SNAPSHOT_HEADER_LEN};
use super::*;
use raft_proto::{EntryPayload, Rng};
use std::collections::BTreeMap;

const CLUSTER: u64 = 0xc1u64;
const ME: NodeId = NodeId(1);

fn entry(term: u64, index: u64, cmd: Option<&str>) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: match cmd {
            None => EntryPayload::Noop,
            Some(c) => EntryPayload::Command(Bytes::copy_from_slice(c.as_bytes())),
        },
    }
}

fn hs(term: u64, vote: Option<u64>) -> HardState {
    HardState {
        current_term: Term(term),
        voted_for: vote.map(NodeId),
    }
}

/// A store whose segment files end where their data does (no
/// preallocation), so that the tests of the format can damage, cut and
/// extend them at the end; `open_preallocated` for the other kind.
fn open(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
    Storage::open(dir, CLUSTER, ME, EXACT)
}

const EXACT: StorageOptions = StorageOptions {
    segment_bytes: 16 << 20,
    preallocate: false,
    max_incoming_snapshot: 16 << 30,
};

/// A store whose new segments are preallocated (as raft-node's are) to
/// `segment_bytes`.
fn open_preallocated(dir: &Path, segment_bytes: u64) -> Result<(Storage, Recovered), StorageError> {
    open_segments(dir, segment_bytes, true)
}

/// A store that starts a new segment at nearly every sync.
fn open_small(dir: &Path, segment_bytes: u64) -> Result<(Storage, Recovered), StorageError> {
    open_segments(dir, segment_bytes, false)
}

fn open_segments(
    dir: &Path,
    segment_bytes: u64,
    preallocate: bool,
) -> Result<(Storage, Recovered), StorageError> {
    let options = StorageOptions {
        segment_bytes,
        preallocate,
        ..StorageOptions::default()
    };
    Storage::open(dir, CLUSTER, ME, options)
}

/// The path of the segment whose first index is `first`.
fn seg(dir: &Path, first: u64) -> PathBuf {
    dir.join(segment_name(LogIndex(first)))
}

/// Every file in the dir and its contents.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A store with a noop at 1 and commands at 2..=4, all in term 2, each
/// synced on its own: batch `i` holds record `i` (as on a follower
/// receiving one entry at a time).
fn populated(dir: &Path) -> Vec<Entry> {
    populated_with(dir, "ccc")
}

/// `populated`, with `last` as the command of entry 4.
fn populated_with(dir: &Path, last: &str) -> Vec<Entry> {
    let (mut s, r) = open(dir).unwrap();
    assert!(r.first_boot);
    s.save_hard_state(hs(2, Some(1)));
    let entries = vec![
        entry(2, 1, None),
        entry(2, 2, Some("a")),
        entry(2, 3, Some("bb")),
        entry(2, 4, Some(last)),
    ];
    for e in &entries {
        s.append(std::slice::from_ref(e));
        s.sync().unwrap();
    }
    entries
}

/// Byte offset of each batch in the log file, up to zeroes (where the
/// data of a preallocated segment ends).
fn batch_offsets(log: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off + BATCH_HEADER_LEN <= log.len()
        && log[off..off + BATCH_HEADER_LEN].iter().any(|&b| b != 0)
    {
        v.push(off);
        off += BATCH_HEADER_LEN + u32_at(log, off + 4) as usize;
    }
    v
}

/// Byte offset of each record in the log file.
fn record_offsets(log: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    for b in batch_offsets(log) {
        let end = (b + BATCH_HEADER_LEN + u32_at(log, b + 4) as usize).min(log.len());
        let mut off = b + BATCH_HEADER_LEN;
        while off + RECORD_HEADER_LEN <= end {
            v.push(off);
            off += RECORD_HEADER_LEN + u32_at(log, off) as usize;
        }
    }
    v
}

#[test]
fn first_boot_creates_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("node1");
    let (s, r) = open(&d).unwrap();
    assert!(r.first_boot);
    assert_eq!(r.hard_state, HardState::default());
    assert!(r.entries.is_empty());
    assert!(!s.needs_sync());
    drop(s);
    let (_, r) = open(&d).unwrap();
    assert!(!r.first_boot);
    assert!(r.entries.is_empty());
    let files = files(&d);
    assert!(files.contains_key(META_FILE) && files.contains_key(&segment_name(LogIndex(1))));
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let entries = populated(dir.path());
    let (mut s, r) = open(dir.path()).unwrap();
    assert_eq!(r.hard_state, hs(2, Some(1)));
    assert_eq!(r.entries, entries);
    assert_eq!(s.last_index(), LogIndex(4));
    // Vote cleared in a new term.
    s.save_hard_state(hs(3, None));
    s.sync().unwrap();
    drop(s);
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.hard_state, hs(3, None));
    assert_eq!(r.entries, entries);
}

#[test]
fn nothing_is_durable_before_sync() {
    let dir = tempfile::tempdir().unwrap();
    let entries = populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    s.save_hard_state(hs(5, Some(2)));
    s.append(&[entry(5, 5, Some("lost"))]);
    assert!(s.needs_sync());
    drop(s); // a crash: the buffer is gone
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.hard_state, hs(2, Some(1)));
    assert_eq!(r.entries, entries);
}

#[test]
fn truncate_then_append_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries = populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    s.save_hard_state(hs(3, None));
    s.truncate(LogIndex(3));
    s.append(&[
        entry(3, 3, Some("x")),
        entry(3, 4, Some("y")),
        entry(3, 5, None),
    ]);
    s.sync().unwrap();
    drop(s);
    let (mut s, r) = open(dir.path()).unwrap();
    let mut want = entries[..2].to_vec();
    want.extend([
        entry(3, 3, Some("x")),
        entry(3, 4, Some("y")),
        entry(3, 5, None),
    ]);
    assert_eq!(r.entries, want);
    // Truncate everything, in a batch of its own.
    s.truncate(LogIndex(1));
    s.sync().unwrap();
    drop(s);
    let (mut s, r) = open(dir.path()).unwrap();
    assert!(r.entries.is_empty());
    s.append(&[entry(3, 1, Some("again"))]);
    s.sync().unwrap();
    drop(s);
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries, vec![entry(3, 1, Some("again"))]);
}

#[test]
#[should_panic(expected = "does not follow")]
fn append_with_a_gap_panics() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    s.append(&[entry(2, 6, None)]);
}

#[test]
#[should_panic(expected = "above current term")]
fn append_above_current_term_panics() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    s.append(&[entry(3, 5, None)]);
}

/// Damages the last batch (entry 4, command `last`) with `mangle`, which
/// gets the batch offsets, reopens, and checks the torn batch is
/// dropped, the file is cut back to the last good batch, and appending
/// works after.
fn check_torn(mangle: impl FnOnce(&mut Vec<u8>, &[usize])) {
    check_torn_with("ccc", mangle)
}

fn check_torn_with(last: &str, mangle: impl FnOnce(&mut Vec<u8>, &[usize])) {
    let dir = tempfile::tempdir().unwrap();
    let entries = populated_with(dir.path(), last);
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let offsets = batch_offsets(&log);
    assert_eq!(offsets.len(), 4);
    mangle(&mut log, &offsets);
    fs::write(&log_path, &log).unwrap();
    let (mut s, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries, entries[..3]);
    assert_eq!(fs::metadata(&log_path).unwrap().len(), offsets[3] as u64);
    s.append(&[entry(2, 4, Some("new"))]);
    s.sync().unwrap();
    drop(s);
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries[3], entry(2, 4, Some("new")));
}

#[test]
fn torn_tail_short_body_is_cut() {
    check_torn(|log, _| log.truncate(log.len() - 2));
}

#[test]
fn torn_tail_short_header_is_cut() {
    check_torn(|log, offs| log.truncate(offs[3] + 3));
}

#[test]
fn torn_tail_bad_checksum_is_cut() {
    // The last batch spans sectors; one in its middle was not written
    // back and reads as zeroes, with the batch's later sectors intact.
    // (A bit flip there would be refused: a power cut leaves zeroes.)
    check_torn_with(&"c".repeat(1500), |log, offs| {
        let hole = (offs[3] / SECTOR + 1) * SECTOR;
        assert!(hole + SECTOR < log.len());
        log[hole..hole + SECTOR].fill(0);
    });
}

/// Replaces the last batch (entry 4) and what follows with `tail`'s
/// result, reopens, and checks the log ends cleanly before it: entries
/// 1..=3, no warning needed, the file left as it is (a preallocated
/// segment keeps its length), and an append goes where entry 4 was.
fn check_zero_tail(tail: impl FnOnce(&mut Vec<u8>, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let entries = populated(dir.path());
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let offsets = batch_offsets(&log);
    assert_eq!(offsets.len(), 4);
    tail(&mut log, offsets[3]);
    fs::write(&log_path, &log).unwrap();
    let (mut s, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries, entries[..3]);
    assert_eq!(fs::read(&log_path).unwrap(), log, "the file was changed");
    s.append(&[entry(2, 4, Some("new"))]);
    s.sync().unwrap();
    drop(s);
    let after = fs::read(&log_path).unwrap();
    assert!(after.len() >= log.len(), "the file was cut");
    assert_eq!(batch_offsets(&after).get(3), Some(&offsets[3]));
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries[3], entry(2, 4, Some("new")));
}

#[test]
fn a_zero_tail_is_where_the_data_ends() {
    // The last record's body never made it, and the filesystem shows
    // zeroes in its place plus a block of preallocated zeroes: nothing
    // was written there, nothing is lost.
    check_zero_tail(|log, last| {
        for b in &mut log[last..] {
            *b = 0;
        }
        log.extend_from_slice(&[0u8; 4096]);
    });
    check_zero_tail(|log, last| {
        log.truncate(last);
        log.extend_from_slice(&[0u8; 100]);
    });
    // Fewer zeroes than a batch header.
    check_zero_tail(|log, last| {
        log.truncate(last);
        log.extend_from_slice(&[0u8; 3]);
    });
}

#[test]
fn mid_file_corruption_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let offsets = record_offsets(&log);
    // Flip a payload byte of record 2 (index 3, "bb").
    log[offsets[2] + RECORD_HEADER_LEN + ENTRY_BODY_FIXED_LEN] ^= 0x01;
    fs::write(&log_path, &log).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == offsets[2] as u64),
        "{msg}"
    );
    assert!(msg.contains(&log_path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("byte offset {}", offsets[2])),
        "{msg}"
    );
    assert!(msg.contains("checksum"), "{msg}");
    assert!(!msg.contains('\n'));
    assert_eq!(files(dir.path()), before, "disk changed on a refused start");
}

#[test]
fn wild_length_mid_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let offsets = record_offsets(&log);
    log[offsets[1] + 3] = 0x7f; // length ~2 GiB
    fs::write(&log_path, &log).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == offsets[1] as u64),
        "{err}"
    );
    assert_eq!(files(dir.path()), before);
}

#[test]
fn damaged_length_of_the_last_record_is_corruption_not_a_torn_tail() {
    // A bit flip makes the final record's length point past the end of
    // the file, which looks like a write the crash cut short. Cutting
    // it would silently drop an acknowledged entry; the length's own
    // checksum tells the two apart.
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let last = *record_offsets(&log).last().unwrap();
    log[last + 1] ^= 0x04; // +1 KiB: in range, past the end of the file
    fs::write(&log_path, &log).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == last as u64),
        "{err}"
    );
    assert_eq!(files(dir.path()), before, "nothing on disk changed");
}

/// Appends a batch of one record with valid checksums but the given
/// body; returns the record's offset.
fn append_raw(dir: &Path, body: &[u8]) -> u64 {
    let log_path = seg(dir, 1);
    let mut log = fs::read(&log_path).unwrap();
    let mut batch = Vec::new();
    push_record(&mut batch, body);
    log.extend_from_slice(&encode_batch_header(&batch));
    let off = log.len() as u64;
    log.extend_from_slice(&batch);
    fs::write(&log_path, &log).unwrap();
    off
}

fn entry_body(term: u64, index: u64) -> Vec<u8> {
    let mut b = vec![KIND_ENTRY];
    b.extend_from_slice(&term.to_le_bytes());
    b.extend_from_slice(&index.to_le_bytes());
    b.push(PAYLOAD_NOOP);
    b
}

fn check_impossible(body: Vec<u8>, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let off = append_raw(dir.path(), &body);
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == off),
        "{msg}"
    );
    assert!(msg.contains(want), "{msg} lacks {want}");
    assert_eq!(files(dir.path()), before);
}

#[test]
fn impossible_records_are_refused_even_at_the_tail() {
    check_impossible(entry_body(2, 6), "does not follow the previous index 4");
    check_impossible(entry_body(2, 4), "does not follow");
    check_impossible(entry_body(9, 5), "above the current term 2");
    check_impossible(
        vec![KIND_TRUNCATE, 9, 0, 0, 0, 0, 0, 0, 0],
        "outside the log",
    );
    check_impossible(vec![7, 1, 2, 3], "unknown record kind 7");
    let mut b = entry_body(2, 5);
    b[17] = 9;
    check_impossible(b, "unknown payload kind 9");
}

#[test]
fn decreasing_term_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.save_hard_state(hs(3, None));
    s.append(&[entry(3, 1, None)]);
    s.sync().unwrap();
    drop(s);
    let off = append_raw(dir.path(), &entry_body(2, 2));
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { offset, .. } if offset == off));
    assert!(err
        .to_string()
        .contains("below the previous entry's term 3"));
}

#[test]
fn another_cluster_or_member_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let before = files(dir.path());
    let err = Storage::open(dir.path(), CLUSTER + 1, ME, StorageOptions::default()).unwrap_err();
    assert!(matches!(err, StorageError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("belongs to cluster"), "{err}");
    assert!(err.to_string().contains(META_FILE), "{err}");
    let err = Storage::open(dir.path(), CLUSTER, NodeId(2), StorageOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("belongs to member 1, not to member 2"),
        "{err}"
    );
    assert_eq!(files(dir.path()), before);

    // A log swapped in from another member is caught by its header.
    let other = tempfile::tempdir().unwrap();
    Storage::open(other.path(), CLUSTER, NodeId(2), StorageOptions::default()).unwrap();
    fs::copy(seg(other.path(), 1), seg(dir.path(), 1)).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains(&segment_name(LogIndex(1))),
        "{err}"
    );
    assert!(err.to_string().contains("member 2"), "{err}");
}

#[test]
fn missing_or_corrupt_meta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let meta_path = dir.path().join(META_FILE);
    let good = fs::read(&meta_path).unwrap();

    let mut bad = good.clone();
    bad[30] ^= 1;
    fs::write(&meta_path, &bad).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset: 44, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with(&meta_path.display().to_string()));
    assert_eq!(files(dir.path()), before);

    fs::write(&meta_path, &good[..10]).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("file is 10 bytes"), "{err}");

    fs::remove_file(&meta_path).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Missing { .. }), "{err}");
    assert_eq!(files(dir.path()), before);
}

#[test]
fn missing_log_is_refused_unless_first_boot_was_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    fs::remove_file(seg(dir.path(), 1)).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("records term 2"), "{err}");

    // Crash after meta, before log, on first boot: completed on restart.
    let dir = tempfile::tempdir().unwrap();
    write_meta(dir.path(), CLUSTER, ME, HardState::default(), &mut None).unwrap();
    let (_, r) = open(dir.path()).unwrap();
    assert!(r.first_boot);
    assert!(seg(dir.path(), 1).exists());
}

#[test]
fn a_second_opener_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(s);
    open(dir.path()).unwrap();
}

#[test]
fn meta_round_trips_and_rejects_bit_flips() {
    let h = hs(u64::MAX, Some(u64::MAX - 1));
    let b = encode_meta(7, NodeId(3), h);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m");
    fs::write(&p, b).unwrap();
    let m = read_meta(&p).unwrap().unwrap();
    assert_eq!((m.cluster_id, m.node_id, m.hard_state), (7, 3, h));
    for i in 0..META_LEN {
        let mut c = b;
        c[i] ^= 0x10;
        fs::write(&p, c).unwrap();
        assert!(read_meta(&p).is_err(), "flip at {i} accepted");
    }
}

// Batch framing: what recovery drops and what it refuses.

/// `populated`, then entries 5..5+n with `size`-byte commands in one
/// batch (spanning sectors when large), then, if `after`, entry
/// 5+n in a batch of its own. Returns every entry and the offsets of
/// the batches.
fn with_big_batch(dir: &Path, n: u64, size: usize, after: bool) -> (Vec<Entry>, Vec<usize>) {
    let mut entries = populated(dir);
    let (mut s, _) = open(dir).unwrap();
    let mut rng = Rng::new(n * 1000 + size as u64);
    let big: Vec<Entry> = (5..5 + n)
        .map(|i| {
            // Letters: no run of zeroes that could pass for a hole.
            let c: String = (0..size)
                .map(|_| char::from(b'a' + rng.range(0, 26) as u8))
                .collect();
            entry(2, i, Some(&c))
        })
        .collect();
    s.append(&big);
    s.sync().unwrap();
    entries.extend(big);
    if after {
        let e = entry(2, 5 + n, Some("after"));
        s.append(std::slice::from_ref(&e));
        s.sync().unwrap();
        entries.push(e);
    }
    let log = fs::read(seg(dir, 1)).unwrap();
    (entries, batch_offsets(&log))
}

/// Mangles the log of `with_big_batch(8, 300, false)` and checks that
/// recovery drops the big (last) batch whole, cuts the file back to it,
/// and that the store works after.
fn check_last_batch_dropped(mangle: impl FnOnce(&mut Vec<u8>, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let (entries, batches) = with_big_batch(dir.path(), 8, 300, false);
    let last = batches[4];
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    mangle(&mut log, last);
    fs::write(&log_path, &log).unwrap();
    let (mut s, r) = open(dir.path()).unwrap();
    assert_eq!(
        r.entries,
        entries[..4],
        "the torn batch was not dropped whole"
    );
    assert_eq!(fs::metadata(&log_path).unwrap().len(), last as u64);
    s.append(&[entry(2, 5, Some("again"))]);
    s.sync().unwrap();
    drop(s);
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries.len(), 5);
    assert_eq!(r.entries[4], entry(2, 5, Some("again")));
}

#[test]
fn torn_last_batch_is_dropped_whole() {
    // The cut left a prefix holding whole records: none of the batch was
    // acknowledged (its sync never returned), so none of it is kept.
    check_last_batch_dropped(|log, last| {
        let recs: Vec<usize> = record_offsets(log)
            .into_iter()
            .filter(|&r| r > last)
            .collect();
        log.truncate(recs[5] + 7);
    });
    check_last_batch_dropped(|log, last| log.truncate(last + BATCH_HEADER_LEN));
    check_last_batch_dropped(|log, last| log.truncate(last + 5));
    check_last_batch_dropped(|log, _| log.truncate(log.len() - 1));
}

#[test]
fn a_zero_tail_longer_than_a_batch_is_where_the_data_ends() {
    // However long it is (preallocated space).
    check_zero_tail(|log, last| {
        log.truncate(last);
        log.resize(last + BATCH_HEADER_LEN + MAX_BATCH_LEN + 1, 0);
    });
}

#[test]
fn zero_hole_inside_the_last_batch_is_dropped() {
    // A sector in the middle was not written back; the records after
    // it were. This was refused as corruption before batches.
    check_last_batch_dropped(|log, last| {
        let hole = (last / SECTOR + 2) * SECTOR;
        assert!(hole + 2 * SECTOR < log.len());
        log[hole..hole + SECTOR].fill(0);
    });
    // Two sectors, and zeroes after the end (size updated, data not).
    check_last_batch_dropped(|log, last| {
        let hole = (last / SECTOR + 1) * SECTOR;
        log[hole..hole + 2 * SECTOR].fill(0);
        log.extend_from_slice(&[0u8; 300]);
    });
    // The batch's first sector, header included (clipped at the batch:
    // the synced bytes before it in that sector stay).
    check_last_batch_dropped(|log, last| {
        let end = (last / SECTOR + 1) * SECTOR;
        log[last..end].fill(0);
    });
    // The last, partial sector.
    check_last_batch_dropped(|log, _| {
        let n = log.len();
        log[(n - 1) / SECTOR * SECTOR..].fill(0);
    });
}

/// Mangles the log of `with_big_batch(8, 300, true)` and checks that
/// opening is refused at `want_offset(batches, records)`, with a
/// message containing `want`, and that nothing changed.
fn check_refused(
    mangle: impl FnOnce(&mut Vec<u8>, &[usize]),
    want_offset: impl FnOnce(&[usize], &[usize]) -> usize,
    want: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_, batches) = with_big_batch(dir.path(), 8, 300, true);
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let records = record_offsets(&log);
    mangle(&mut log, &batches);
    fs::write(&log_path, &log).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    let msg = err.to_string();
    let at = want_offset(&batches, &records) as u64;
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == at),
        "want offset {at}: {msg}"
    );
    assert!(msg.contains(want), "{msg} lacks {want:?}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(files(dir.path()), before, "disk changed on a refused start");
}

#[test]
fn damaged_record_in_an_earlier_batch_is_refused() {
    // Zeroes, as a power cut would leave, but in a batch with another
    // one after it: that batch was synced, so this is lost data.
    check_refused(
        |log, b| {
            let hole = (b[4] / SECTOR + 2) * SECTOR;
            log[hole..hole + SECTOR].fill(0);
        },
        |b, r| {
            // The first record reaching into the hole.
            let hole = (b[4] / SECTOR + 2) * SECTOR;
            *r.iter().filter(|&&o| o < hole).max().unwrap()
        },
        "further data after it (so it was synced)",
    );
    // A bit flip in a record of the first batch.
    check_refused(
        |log, b| log[b[0] + BATCH_HEADER_LEN + RECORD_HEADER_LEN + 3] ^= 0x20,
        |_, r| r[0],
        "record checksum mismatch",
    );
}

#[test]
fn damaged_batch_header_of_an_earlier_batch_is_refused() {
    // Zeroed with its sector: a whole batch follows, so it was synced.
    check_refused(
        |log, b| {
            let end = (b[4] / SECTOR + 1) * SECTOR;
            log[b[4]..end].fill(0);
        },
        |b, _| b[4],
        "a whole batch follows at byte offset",
    );
    // A bit flip: no torn write makes one.
    check_refused(
        |log, b| log[b[2] + 2] ^= 0x01,
        |b, _| b[2],
        "batch header damaged, and not by a power cut",
    );
    // A changed length: the header's own checksum catches it, so it is
    // never read as a batch that runs past the end of the file.
    check_refused(
        |log, b| log[b[5] + 5] ^= 0x10,
        |b, _| b[5],
        "batch header damaged",
    );
}

#[test]
fn damaged_batch_header_of_the_last_batch() {
    // Zeroed with its sector, the rest of the batch there: torn, dropped
    // (zero_hole_inside_the_last_batch_is_dropped). Cut short: torn
    // (torn_tail_short_header_is_cut). Flipped bits: refused, a power
    // cut leaves zeroes.
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let last = *batch_offsets(&log).last().unwrap();
    log[last + 9] ^= 0x80;
    fs::write(&log_path, &log).unwrap();
    let before = files(dir.path());
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == last as u64),
        "{err}"
    );
    assert!(err.to_string().contains("not by a power cut"), "{err}");
    assert_eq!(files(dir.path()), before);

    // Only the header's bytes zeroed, the record bytes in the same
    // sector intact: a sector is written whole, so not a power cut.
    let mut log = fs::read(&log_path).unwrap();
    log[last + 9] ^= 0x80;
    log[last..last + BATCH_HEADER_LEN].fill(0);
    fs::write(&log_path, &log).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not by a power cut"), "{err}");

    // A well-formed header with an impossible length is what was
    // written: refused, not cut.
    let mut log = fs::read(&log_path).unwrap();
    let mut h = encode_batch_header(&[1]);
    h[4..8].copy_from_slice(&(MAX_BATCH_LEN as u32 + 1).to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    log[last..last + BATCH_HEADER_LEN].copy_from_slice(&h);
    fs::write(&log_path, &log).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("batch length"), "{err}");
}

#[test]
fn bit_flip_in_the_last_batch_is_refused() {
    // A power cut leaves zeroes, never a flipped bit: dropping this batch
    // could drop acknowledged entries.
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let log_path = seg(dir.path(), 1);
    let mut log = fs::read(&log_path).unwrap();
    let last = *record_offsets(&log).last().unwrap();
    let n = log.len();
    log[n - 1] ^= 0xff;
    fs::write(&log_path, &log).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == last as u64),
        "{err}"
    );
    assert!(err.to_string().contains("no zeroed sector"), "{err}");
}

#[test]
fn a_sync_larger_than_a_batch_is_split() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path()).unwrap();
    s.save_hard_state(hs(1, None));
    let big = "z".repeat(MAX_PAYLOAD_LEN);
    let entries: Vec<Entry> = (1..=5).map(|i| entry(1, i, Some(&big))).collect();
    s.append(&entries);
    s.sync().unwrap();
    drop(s);
    let log = fs::read(seg(dir.path(), 1)).unwrap();
    assert_eq!(
        batch_offsets(&log).len(),
        2,
        "four largest records per batch"
    );
    let (_, r) = open(dir.path()).unwrap();
    assert_eq!(r.entries, entries);
}

#[test]
fn older_format_is_refused_with_one_line() {
    let one = segment_name(LogIndex(1));
    for file in [META_FILE, one.as_str()] {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path());
        let path = dir.path().join(file);
        let mut b = fs::read(&path).unwrap();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        // A valid file of version 2, checksum and all.
        let crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &b).unwrap();
        check_version_refused(dir.path(), &path, 2);
    }
}

/// Opening `dir` is refused because `path` is of format version `found`,
/// in one line, and nothing changes.
fn check_version_refused(dir: &Path, path: &Path, found: u32) {
    let before = files(dir);
    let err = open(dir).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Version { found: f, .. } if f == found),
        "{msg}"
    );
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("format version {found}")), "{msg}");
    assert!(
        msg.contains(&format!("only version {FORMAT_VERSION}")),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(files(dir), before);
}

#[test]
fn a_version_3_data_dir_is_refused_with_one_line() {
    // As version 3 wrote it: meta, and a single file `log` (32-byte
    // header, then batches).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut meta = encode_meta(CLUSTER, ME, hs(2, Some(1)));
    meta[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c::crc32c(&meta[..44]);
    meta[44..48].copy_from_slice(&crc.to_le_bytes());
    fs::write(d.join(META_FILE), meta).unwrap();
    let mut log = Vec::new();
    log.extend_from_slice(OLD_LOG_MAGIC);
    log.extend_from_slice(&3u32.to_le_bytes());
    log.extend_from_slice(&CLUSTER.to_le_bytes());
    log.extend_from_slice(&ME.0.to_le_bytes());
    let crc = crc32c::crc32c(&log);
    log.extend_from_slice(&crc.to_le_bytes());
    fs::write(d.join(OLD_LOG_FILE), &log).unwrap();
    fs::write(d.join(LOCK_FILE), b"").unwrap();
    check_version_refused(d, &d.join(META_FILE), 3);
    // And if only the log were left of it.
    fs::remove_file(d.join(META_FILE)).unwrap();
    check_version_refused(d, &d.join(OLD_LOG_FILE), 3);
}

// Power-cut mode: the simulation these tests and tests/crash.rs rely on.

/// The unit tests' end of a power cut: unwind (quietly, without the
/// panic hook) back to the test, which drops the store and reopens.
fn unwind() -> ! {
    std::panic::resume_unwind(Box::new("simulated power cut"))
}

fn plan(when: CutWhen, seed: u64) -> Option<PowerCutPlan> {
    Some(PowerCutPlan {
        when,
        seed,
        halt: unwind,
    })
}

/// One run: a random workload of hard-state changes, truncations and
/// appends, one sync per step, in power-cut mode until the cut; then a
/// reopen, which must succeed and recover what the last completed sync
/// made durable, or (where the cut spared it) what the sync in flight
/// wrote. Returns the number of steps that completed.
fn power_cut_run(seed: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    if rng.chance(0.5) {
        // A restart: the files as found count as durable.
        populated(dir.path());
    }
    let cut_at = rng.range(1, 16);
    // Seeds 0, 1 mod 4 preallocate (1 MiB, so a run may fill a segment).
    let options = StorageOptions {
        segment_bytes: 1 << 20,
        preallocate: seed % 4 < 2,
        ..StorageOptions::default()
    };
    let (mut s, r) = Storage::open_with(
        dir.path(),
        CLUSTER,
        ME,
        options,
        plan(CutWhen::AtSync(cut_at), seed),
    )
    .unwrap();
    // Odd seeds leave the fdatasync of plain appends to the helper thread,
    // as raft-node does.
    let done = (seed % 2 == 1).then(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.sync_in_background(move || {
            let _ = tx.send(());
        })
        .unwrap();
        rx
    });
    let mut synced = (r.hard_state, r.entries);
    let mut pending = synced.clone();
    let mut steps = 0;
    loop {
        let (hard, log) = &mut pending;
        if hard.current_term.0 == 0 || rng.chance(0.2) {
            *hard = hs(hard.current_term.0 + 1, rng.chance(0.5).then_some(2));
            s.save_hard_state(*hard);
        }
        if !log.is_empty() && rng.chance(0.2) {
            let from = rng.range(1, log.len() as u64 + 2);
            s.truncate(LogIndex(from));
            log.truncate(from as usize - 1);
        }
        for _ in 0..rng.range(1, 7) {
            let size = rng.range(0, 700) as usize;
            let c: String = (0..size)
                .map(|_| char::from(b'a' + rng.range(0, 26) as u8))
                .collect();
            let e = entry(hard.current_term.0, log.len() as u64 + 1, Some(&c));
            s.append(std::slice::from_ref(&e));
            log.push(e);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &done {
            None => s.sync(),
            Some(rx) => {
                if s.start_sync()? {
                    return Ok(());
                }
                rx.recv().unwrap();
                s.finish_sync().expect("notified").map(|_| ())
            }
        }));
        match r {
            Ok(Ok(())) => synced = pending.clone(),
            Ok(Err(e)) => panic!("seed {seed}: sync failed: {e}"),
            Err(_) => break,
        }
        steps += 1;
        assert!(steps < cut_at, "seed {seed}: no power cut at sync {cut_at}");
    }
    drop(s);
    let (mut s, r) = Storage::open(dir.path(), CLUSTER, ME, options)
        .unwrap_or_else(|e| panic!("seed {seed}: refused after a power cut: {e}"));
    assert!(
        r.hard_state == synced.0 || r.hard_state == pending.0,
        "seed {seed}: recovered hard state {:?}; the last completed sync made {:?} durable, \
         the one cut short wrote {:?}",
        r.hard_state,
        synced.0,
        pending.0
    );
    assert!(
        r.entries == synced.1 || r.entries == pending.1,
        "seed {seed}: recovered {} entries (last {:?}); the last completed sync made {} \
         durable, the one cut short wrote {}",
        r.entries.len(),
        r.entries.last().map(|e| (e.term, e.index)),
        synced.1.len(),
        pending.1.len()
    );
    // The store goes on where the cut left it (after a repair, if any).
    let mut entries = r.entries;
    let next = entry(
        r.hard_state.current_term.0.max(1),
        entries.len() as u64 + 1,
        Some("after the cut"),
    );
    if r.hard_state.current_term < next.term {
        s.save_hard_state(hs(next.term.0, None));
    }
    s.append(std::slice::from_ref(&next));
    s.sync().unwrap();
    entries.push(next);
    drop(s);
    let (_, r) = Storage::open(dir.path(), CLUSTER, ME, options).unwrap();
    assert_eq!(
        r.entries, entries,
        "seed {seed}: after the cut and one more sync"
    );
    steps
}

#[test]
fn a_background_sync_completes_later_and_a_synchronous_one_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open(d).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    s.sync_in_background(move || {
        let _ = tx.send(());
    })
    .unwrap();
    // The hard state changed: synced here, as `sync` does.
    s.save_hard_state(hs(1, None));
    s.append(&[entry(1, 1, None)]);
    assert!(s.start_sync().unwrap());
    assert!(s.finish_sync().is_none());
    // Records alone: the fdatasync runs on the helper.
    s.append(&[entry(1, 2, Some("a"))]);
    assert!(!s.start_sync().unwrap());
    rx.recv().unwrap();
    assert!(s.finish_sync().unwrap().is_ok());
    assert!(s.finish_sync().is_none());
    // A synchronous sync (here a snapshot's commit) waits for the one in
    // flight, whose completion is still reported.
    s.append(&[entry(1, 3, Some("b"))]);
    assert!(!s.start_sync().unwrap());
    s.append(&[entry(1, 4, Some("c"))]);
    write_snapshot(&mut s, 3, 1, b"state at 3");
    assert!(!s.needs_sync());
    assert!(s.finish_sync().unwrap().is_ok());
    assert!(s.finish_sync().is_none());
    drop(s);
    let (_, r) = open(d).unwrap();
    assert_eq!(r.entries, [entry(1, 4, Some("c"))]);
}

#[test]
fn power_cut_loses_nothing_synced() {
    let mut steps = 0;
    // Each run fsyncs a few dozen times: slow disks make this the
    // slowest unit test, so the seeds are few and the runs short.
    for seed in 0..100 {
        steps += power_cut_run(seed);
    }
    assert!(steps > 300, "too few syncs completed: {steps}");
}

#[test]
fn power_cut_tears_the_log_and_puts_meta_back() {
    // Sync 1 writes meta and a batch; sync 2 writes a new term and a
    // batch and is cut: which point the seed picks decides whether the
    // new meta survives, never whether sync 1's data does.
    // Cut before meta.tmp's fsync or before the directory fsync: term 1;
    // after: term 2, with the batch torn (dropped) or spared. Runs until
    // each was seen (a bounded number of seeds), with preallocated
    // segments (even seeds) and without: a cut must tear both kinds.
    let want: std::collections::BTreeSet<_> = [true, false]
        .into_iter()
        .flat_map(|p| [(p, 1, 1), (p, 2, 1), (p, 2, 2)])
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..800u64 {
        if seen == want {
            break;
        }
        let dir = tempfile::tempdir().unwrap();
        let preallocate = seed.is_multiple_of(2);
        let options = StorageOptions {
            preallocate,
            ..StorageOptions::default()
        };
        let (mut s, _) = Storage::open_with(
            dir.path(),
            CLUSTER,
            ME,
            options,
            plan(CutWhen::AtSync(2), seed),
        )
        .unwrap();
        s.save_hard_state(hs(1, Some(1)));
        s.append(&[entry(1, 1, Some("synced"))]);
        s.sync().unwrap();
        s.save_hard_state(hs(2, Some(2)));
        s.append(&[entry(2, 2, Some(&"in flight ".repeat(100)))]);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.sync()));
        assert!(r.is_err(), "seed {seed}: no cut");
        drop(s);
        assert!(!dir.path().join(META_TMP).exists());
        if preallocate {
            let len = fs::metadata(seg(dir.path(), 1)).unwrap().len();
            assert_eq!(
                len, options.segment_bytes,
                "seed {seed}: the cut changed the size"
            );
        }
        let (_, r) = Storage::open(dir.path(), CLUSTER, ME, options).unwrap();
        assert_eq!(
            r.entries.first(),
            Some(&entry(1, 1, Some("synced"))),
            "seed {seed}: the entry of sync 1 was lost"
        );
        assert!(r.entries.len() <= 2);
        seen.insert((preallocate, r.hard_state.current_term.0, r.entries.len()));
    }
    assert_eq!(seen, want);
}

#[test]
fn a_rename_is_durable_after_the_directory_fsync_with_the_data_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut pc = Some(PowerCut::new(plan(CutWhen::AtSync(9), 0).unwrap(), d));
    let meta = |pc: &mut Option<PowerCut>| pc.as_mut().unwrap().durable(META_FILE);
    assert_eq!(meta(&mut pc), None, "nothing there at start");
    replace_atomically(d, META_TMP, META_FILE, b"one", &mut pc).unwrap();
    assert_eq!(meta(&mut pc).as_deref(), Some(&b"one"[..]));

    // Written and renamed, never fsynced: the old contents until the
    // directory fsync, then an empty file.
    let tmp = |bytes: &[u8], pc: &mut Option<PowerCut>| {
        let f = create_file(&d.join(META_TMP), pc).unwrap();
        (&f).write_all(bytes).unwrap();
        f
    };
    let rename = |pc: &mut Option<PowerCut>| {
        rename_into_place(d, META_TMP, META_FILE, pc).unwrap();
    };
    drop(tmp(b"two", &mut pc));
    rename(&mut pc);
    assert_eq!(
        meta(&mut pc).as_deref(),
        Some(&b"one"[..]),
        "rename not durable yet"
    );
    fsync_dir(d, &mut pc).unwrap();
    assert_eq!(
        meta(&mut pc).as_deref(),
        Some(&b""[..]),
        "data never fsynced"
    );

    // Fsynced, renamed: still the old contents until the directory fsync.
    let f = tmp(b"three", &mut pc);
    fsync_file(&f, &d.join(META_TMP), SyncKind::All, &mut pc).unwrap();
    rename(&mut pc);
    assert_eq!(meta(&mut pc).as_deref(), Some(&b""[..]));
    fsync_dir(d, &mut pc).unwrap();
    assert_eq!(meta(&mut pc).as_deref(), Some(&b"three"[..]));

    // Deleted: there until the directory fsync.
    remove_file(d, META_FILE, &mut pc).unwrap();
    assert_eq!(meta(&mut pc).as_deref(), Some(&b"three"[..]));
    fsync_dir(d, &mut pc).unwrap();
    assert_eq!(meta(&mut pc), None);
}

#[test]
fn power_cut_switches_parse() {
    let os = |s: &str| Some(std::ffi::OsString::from(s));
    assert!(PowerCutPlan::parse(None, None, None).unwrap().is_none());
    let p = PowerCutPlan::parse(os("7"), None, os("42"))
        .unwrap()
        .unwrap();
    assert_eq!((p.when, p.seed), (CutWhen::AtSync(7), 42));
    let p = PowerCutPlan::parse(None, os("/tmp/x"), os("1"))
        .unwrap()
        .unwrap();
    assert_eq!(p.when, CutWhen::FileExists(PathBuf::from("/tmp/x")));
    for (at, file, seed, want) in [
        (
            os("0"),
            None,
            None,
            "RAFT_POWER_CUT_AT_SYNC: \"0\" is not a positive integer",
        ),
        (os("x"), None, None, "not a positive integer"),
        (os("1"), os("/f"), None, "set one"),
        (None, os(""), None, "RAFT_POWER_CUT_FILE: empty path"),
        (os("1"), None, os("-3"), "RAFT_POWER_CUT_SEED"),
    ] {
        let err = PowerCutPlan::parse(at, file, seed).unwrap_err().to_string();
        assert!(err.contains(want), "{err} lacks {want}");
    }
}

// Segments, compaction and snapshots.

/// Appends entries `from..from + n` of term `term`, one sync each.
fn append_synced(s: &mut Storage, term: u64, from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| {
            let e = entry(term, i, Some(&format!("entry {i}")));
            s.append(std::slice::from_ref(&e));
            s.sync().unwrap();
            e
        })
        .collect()
}

/// The first indexes of the segment files in `dir`.
fn segment_files(dir: &Path) -> Vec<u64> {
    list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|i| i.0)
        .collect()
}

fn segment_header(dir: &Path, first: u64) -> SegmentHeader {
    let b = fs::read(seg(dir, first)).unwrap();
    check_segment_header(
        &seg(dir, first),
        &b,
        LogIndex(first),
        CLUSTER,
        ME,
        hs(u64::MAX, None),
    )
    .unwrap()
}

/// Takes and commits a local snapshot through `(index, term)`.
fn write_snapshot(s: &mut Storage, index: u64, term: u64, payload: &[u8]) -> SnapshotInfo {
    let mut w = s.snapshot_writer(LogIndex(index), Term(term)).unwrap();
    w.write_all(payload).unwrap();
    let info = w.finish().unwrap();
    assert!(s.commit_snapshot(info).unwrap());
    info
}

/// The current snapshot's payload, read through its reader.
fn read_payload(s: &Storage) -> Vec<u8> {
    let (_, mut r) = s.snapshot_payload().unwrap().expect("a snapshot");
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// A snapshot file as a leader would send it.
fn blob(cluster_id: u64, index: u64, term: u64, payload: &[u8]) -> (SnapshotInfo, Vec<u8>) {
    let h = SnapshotHeader {
        cluster_id,
        last_index: LogIndex(index),
        last_term: Term(term),
        payload_len: payload.len() as u64,
        payload_crc: crc32c::crc32c(payload),
    };
    let mut b = encode_snapshot_header(&h).to_vec();
    b.extend_from_slice(payload);
    (h.info(), b)
}

/// Receives `bytes` as the snapshot `info` in chunks of `chunk` bytes and
/// installs it.
fn receive(s: &mut Storage, info: SnapshotInfo, bytes: &[u8], chunk: usize) -> bool {
    for (i, c) in bytes.chunks(chunk).enumerate() {
        s.write_incoming_chunk(info, (i * chunk) as u64, c).unwrap();
    }
    if bytes.is_empty() {
        s.write_incoming_chunk(info, 0, &[]).unwrap();
    }
    s.install_incoming(info).unwrap()
}

#[test]
fn segments_roll_over_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 1).unwrap();
    s.save_hard_state(hs(1, None));
    // The empty log-1 is not rolled over; each later sync starts a segment.
    let mut entries = append_synced(&mut s, 1, 1, 3);
    assert_eq!(segment_files(d), [1, 2, 3]);
    assert_eq!(s.segment_count(), 3);
    let on_disk: u64 = (1..=3)
        .map(|i| fs::metadata(seg(d, i)).unwrap().len())
        .sum();
    assert_eq!(s.log_bytes(), on_disk);
    // A truncation in a new segment reaching back into earlier ones.
    s.save_hard_state(hs(2, None));
    s.truncate(LogIndex(2));
    let e = [entry(2, 2, Some("x")), entry(2, 3, Some("y"))];
    s.append(&e);
    s.sync().unwrap();
    entries.truncate(1);
    entries.extend(e);
    assert_eq!(segment_files(d), [1, 2, 3, 4]);
    assert_eq!(
        segment_header(d, 4),
        SegmentHeader {
            first: LogIndex(4),
            prev_term: Term(1)
        },
        "prev: the last synced entry when it started"
    );
    drop(s);
    let (mut s, r) = open_small(d, 1).unwrap();
    assert_eq!(r.entries, entries);
    assert_eq!(s.last_index(), LogIndex(3));
    // Index 4 again: the active log-4 holds no entry yet, so it is not
    // rolled over (log-4 exists); log-5 follows.
    entries.extend(append_synced(&mut s, 2, 4, 2));
    assert_eq!(segment_files(d), [1, 2, 3, 4, 5]);
    assert_eq!(segment_header(d, 5).prev_term, Term(2));
    drop(s);
    // Another segment size reads the same segments.
    let (_, r) = open(d).unwrap();
    assert_eq!(r.entries, entries);
}

#[test]
fn a_damaged_earlier_segment_is_refused_even_where_a_last_one_would_be_torn() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 1).unwrap();
    s.save_hard_state(hs(1, None));
    append_synced(&mut s, 1, 1, 4);
    drop(s);
    // Cut short, as a power cut leaves the last batch: but log-2 is not
    // the last segment, and log-3 proves it was synced.
    let path = seg(d, 2);
    let b = fs::read(&path).unwrap();
    fs::write(&path, &b[..b.len() - 3]).unwrap();
    let before = files(d);
    let err = open(d).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == SEGMENT_HEADER_LEN as u64),
        "{msg}"
    );
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not the last"), "{msg}");
    assert_eq!(files(d), before);
}

#[test]
fn a_segment_of_another_history_does_not_continue_the_log() {
    // Two histories of the same member: entry 2 of term 1 here, of term 2
    // there. Their log-3 follow index 2 alike, but only one names the
    // right term as its prev.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, term2) in [(a.path(), 1), (b.path(), 2)] {
        let (mut s, _) = open_small(dir, 1).unwrap();
        s.save_hard_state(hs(2, None));
        append_synced(&mut s, 1, 1, 1);
        append_synced(&mut s, term2, 2, 1);
        append_synced(&mut s, 2, 3, 1);
    }
    fs::copy(seg(b.path(), 3), seg(a.path(), 3)).unwrap();
    let before = files(a.path());
    let err = open(a.path()).unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { path, .. } if *path == seg(a.path(), 3)),
        "{err}"
    );
    assert!(err.to_string().contains("there is no snapshot"), "{err}");
    assert_eq!(files(a.path()), before);
}

#[test]
fn compaction_deletes_whole_segments_and_restart_recovers_snapshot_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 200).unwrap();
    s.save_hard_state(hs(1, None));
    let entries = append_synced(&mut s, 1, 1, 30);
    let firsts = segment_files(d);
    assert!(firsts.len() >= 5, "{firsts:?}");
    let info = write_snapshot(&mut s, 17, 1, b"state at 17");
    // Kept: every segment holding an index above 17, and the active one.
    let kept: Vec<u64> = firsts
        .iter()
        .enumerate()
        .filter(|&(i, _)| firsts.get(i + 1).is_none_or(|&next| next - 1 > 17))
        .map(|(_, &f)| f)
        .collect();
    assert!(kept[0] <= 17 && kept.len() < firsts.len(), "{kept:?}");
    s.compact(LogIndex(17)).unwrap();
    assert_eq!(segment_files(d), kept);
    assert_eq!(s.segment_count(), kept.len());
    assert_eq!(s.first_index(), LogIndex(kept[0]));
    drop(s);
    let (mut s, r) = open_small(d, 200).unwrap();
    assert_eq!(r.snapshot, Some(info));
    assert_eq!(r.entries, entries[17..]);
    assert_eq!(s.first_index(), LogIndex(kept[0]));
    assert_eq!(read_payload(&s), b"state at 17");
    // Through the last index: all but the active segment go.
    write_snapshot(&mut s, 30, 1, b"state at 30");
    s.compact(LogIndex(30)).unwrap();
    assert_eq!(s.segment_count(), 1);
    s.compact(LogIndex(30)).unwrap();
    drop(s);
    let (mut s, r) = open_small(d, 200).unwrap();
    assert!(r.entries.is_empty());
    let more = append_synced(&mut s, 1, 31, 2);
    drop(s);
    let (_, r) = open(d).unwrap();
    assert_eq!(r.entries, more);
}

/// The names in the dir that are trash (`trash.rs`).
fn trash_files(dir: &Path) -> Vec<String> {
    files(dir)
        .into_keys()
        .filter(|n| n.starts_with(trash::TRASH_PREFIX))
        .collect()
}

#[test]
fn deleted_files_leave_their_names_at_once_and_a_start_empties_the_trash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 200).unwrap();
    s.save_hard_state(hs(1, None));
    let entries = append_synced(&mut s, 1, 1, 30);
    let firsts = segment_files(d);
    write_snapshot(&mut s, 17, 1, b"state at 17");
    // Replacing a snapshot keeps the old one under a trash name until the
    // helper deletes it; the new one is in place at once.
    let info = write_snapshot(&mut s, 20, 1, b"state at 20");
    assert_eq!(read_payload(&s), b"state at 20");
    s.compact(LogIndex(20)).unwrap();
    // The segments' names are gone at once, whatever the helper did yet.
    let kept = segment_files(d);
    assert!(kept.len() < firsts.len(), "{firsts:?} -> {kept:?}");
    assert_eq!(s.segment_count(), kept.len());
    drop(s);
    // What a crash leaves: trash the helper never got to.
    fs::write(
        d.join("trash-1-log-00000000000000000001"),
        b"left by a crash",
    )
    .unwrap();
    fs::write(d.join("trash-2-snapshot"), vec![7u8; 5 << 20]).unwrap();
    let (s, r) = open_small(d, 200).unwrap();
    assert_eq!(trash_files(d), Vec::<String>::new());
    assert_eq!(segment_files(d), kept);
    assert_eq!(r.snapshot, Some(info));
    assert_eq!(r.entries, entries[20..]);
    assert_eq!(read_payload(&s), b"state at 20");
}

#[test]
#[should_panic(expected = "beyond the snapshot")]
fn compaction_beyond_the_snapshot_panics() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    write_snapshot(&mut s, 2, 2, b"");
    s.compact(LogIndex(3)).unwrap();
}

#[test]
#[should_panic(expected = "at or below the snapshot's last index")]
fn truncation_at_the_snapshot_panics() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    write_snapshot(&mut s, 2, 2, b"");
    s.truncate(LogIndex(2));
}

#[test]
fn a_truncation_that_reaches_into_a_compacted_segment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 1).unwrap();
    s.save_hard_state(hs(1, None));
    let mut entries = append_synced(&mut s, 1, 1, 6);
    // In log-7, a truncation reaching back to index 3 in log-3.
    s.save_hard_state(hs(2, None));
    s.truncate(LogIndex(3));
    let e: Vec<Entry> = (3..=8).map(|i| entry(2, i, Some("new"))).collect();
    s.append(&e);
    s.sync().unwrap();
    entries.truncate(2);
    entries.extend(e);
    entries.extend(append_synced(&mut s, 2, 9, 1));
    assert_eq!(segment_files(d), [1, 2, 3, 4, 5, 6, 7, 9]);
    write_snapshot(&mut s, 7, 2, b"");
    s.compact(LogIndex(7)).unwrap();
    assert_eq!(segment_files(d), [7, 9]);
    drop(s);
    let (s, r) = open(d).unwrap();
    assert_eq!(r.entries, entries[7..]);
    // The replay restarted the log at the truncation.
    assert_eq!(s.first_index(), LogIndex(3));
}

#[test]
fn segments_a_crash_brings_back_are_skipped_and_missing_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 1).unwrap();
    s.save_hard_state(hs(1, None));
    let entries = append_synced(&mut s, 1, 1, 10);
    let old: Vec<(u64, Vec<u8>)> = (1..=10)
        .map(|i| (i, fs::read(seg(d, i)).unwrap()))
        .collect();
    let info = write_snapshot(&mut s, 6, 1, b"six");
    s.compact(LogIndex(6)).unwrap();
    assert_eq!(segment_files(d), [7, 8, 9, 10]);
    drop(s);
    // A crash undid some of the deletions: log-2 and log-6 are back.
    for (i, b) in &old {
        if [2, 6].contains(i) {
            fs::write(seg(d, *i), b).unwrap();
        }
    }
    let (s, r) = open(d).unwrap();
    assert_eq!((r.snapshot, &r.entries[..]), (Some(info), &entries[6..]));
    assert_eq!(s.first_index(), LogIndex(6), "log-6 continues into log-7");
    drop(s);
    // log-2 did not continue into the rest: deleted at that start.
    assert_eq!(segment_files(d), [6, 7, 8, 9, 10]);

    // A segment above the snapshot is gone: refused, nothing changes.
    fs::remove_file(seg(d, 6)).unwrap();
    fs::remove_file(seg(d, 7)).unwrap();
    let before = files(d);
    let err = open(d).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, StorageError::Corrupt { path, offset: 0, .. } if *path == seg(d, 8)),
        "{msg}"
    );
    assert!(msg.contains("snapshot covers only up to 6"), "{msg}");
    assert_eq!(files(d), before);

    // Without a snapshot the log must start at index 1.
    fs::remove_file(d.join(SNAPSHOT_FILE)).unwrap();
    let err = open(d).unwrap_err();
    assert!(err.to_string().contains("there is no snapshot"), "{err}");
}

#[test]
fn a_snapshot_written_on_another_thread_reads_back() {
    fn send_static<T: Send + 'static>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open(d).unwrap();
    s.save_hard_state(hs(3, None));
    let entries = append_synced(&mut s, 3, 1, 5);
    let w = s.snapshot_writer(LogIndex(4), Term(3)).unwrap();
    send_static(&w);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let p = payload.clone();
    let info = std::thread::spawn(move || {
        let mut w = w;
        for c in p.chunks(1000) {
            w.write_all(c).unwrap();
        }
        w.finish()
    })
    .join()
    .unwrap()
    .unwrap();
    let len = (SNAPSHOT_HEADER_LEN + payload.len()) as u64;
    assert_eq!(
        info,
        SnapshotInfo {
            last_index: LogIndex(4),
            last_term: Term(3),
            len
        }
    );
    assert_eq!(s.snapshot(), None, "not current before the commit");
    assert!(s.commit_snapshot(info).unwrap());
    assert_eq!(s.snapshot(), Some(info));
    assert!(!d.join(SNAPSHOT_TMP).exists());
    let (got, reader) = s.snapshot_payload().unwrap().unwrap();
    assert_eq!(got, info);
    send_static(&reader);
    assert_eq!(read_payload(&s), payload);
    // The chunks a leader sends reassemble to the file.
    let mut sent = Vec::new();
    while (sent.len() as u64) < info.len {
        let c = s
            .read_snapshot_chunk(LogIndex(4), sent.len() as u64, 7777)
            .unwrap();
        assert!(!c.is_empty());
        sent.extend_from_slice(&c);
    }
    assert_eq!(sent, fs::read(d.join(SNAPSHOT_FILE)).unwrap());
    assert!(s
        .read_snapshot_chunk(LogIndex(4), info.len, 10)
        .unwrap()
        .is_empty());
    drop(s);
    let (s, r) = open(d).unwrap();
    assert_eq!(r.snapshot, Some(info));
    assert_eq!(r.entries, entries[4..]);
    assert_eq!(read_payload(&s), payload);
}

#[test]
fn a_replaced_snapshot_is_a_distinct_error_and_a_stale_commit_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    populated(d);
    let (mut s, _) = open(d).unwrap();
    write_snapshot(&mut s, 2, 2, b"two");
    let w = s.snapshot_writer(LogIndex(3), Term(2)).unwrap();
    // Meanwhile, a snapshot from the leader replaces the current one.
    let (info, bytes) = blob(CLUSTER, 4, 2, b"four");
    assert!(receive(&mut s, info, &bytes, 5));
    let err = s.read_snapshot_chunk(LogIndex(2), 0, 10).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::SnapshotReplaced {
                wanted: LogIndex(2),
                current: Some(LogIndex(4))
            }
        ),
        "{err}"
    );
    // The writer's snapshot is older than the installed one.
    let stale = w.finish().unwrap();
    assert!(!s.commit_snapshot(stale).unwrap());
    assert!(!d.join(SNAPSHOT_TMP).exists());
    assert_eq!(s.snapshot(), Some(info));
    assert_eq!(read_payload(&s), b"four");
    // Neither is fatal.
    s.append(&[entry(2, 5, None)]);
    s.sync().unwrap();
}

#[test]
fn an_aborted_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    populated(d);
    let (mut s, _) = open(d).unwrap();
    let before = files(d);
    let mut w = s.snapshot_writer(LogIndex(3), Term(2)).unwrap();
    w.write_all(&[7u8; 5000]).unwrap();
    drop(w);
    s.abort_snapshot().unwrap();
    assert_eq!(files(d), before);
    // A new writer may start; a tmp left by a crash goes at the next start.
    let mut w = s.snapshot_writer(LogIndex(3), Term(2)).unwrap();
    w.write_all(b"partial").unwrap();
    drop(w);
    drop(s);
    let (_, r) = open(d).unwrap();
    assert_eq!(r.snapshot, None);
    assert_eq!(files(d), before);
}

#[test]
fn a_damaged_snapshot_is_refused_at_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    populated(d);
    let (mut s, _) = open(d).unwrap();
    let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
    write_snapshot(&mut s, 3, 2, &payload);
    drop(s);
    let path = d.join(SNAPSHOT_FILE);
    let good = fs::read(&path).unwrap();
    let with_crc = |mut b: Vec<u8>| {
        let crc = crc32c::crc32c(&b[..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        (
            {
                let mut b = good.clone();
                b[SNAPSHOT_HEADER_LEN + 1000] ^= 0x01;
                b
            },
            SNAPSHOT_HEADER_LEN as u64,
            "payload checksum mismatch",
        ),
        (
            {
                let mut b = good.clone();
                b[21] ^= 0x01;
                b
            },
            48,
            "header checksum mismatch",
        ),
        (
            good[..good.len() - 1].to_vec(),
            good.len() as u64 - 1,
            "header promises",
        ),
        (good[..30].to_vec(), 30, "shorter than the 52-byte header"),
        (
            {
                let mut b = good.clone();
                b[0] = b'X';
                b
            },
            0,
            "bad magic",
        ),
        (
            with_crc({
                let mut b = good.clone();
                b[20..28].copy_from_slice(&0u64.to_le_bytes());
                b
            }),
            20,
            "covers at least one entry",
        ),
    ];
    for (bytes, offset, want) in cases {
        fs::write(&path, &bytes).unwrap();
        let before = files(d);
        let err = open(d).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, StorageError::Corrupt { path: p, offset: o, .. } if *p == path && *o == offset),
            "want offset {offset}: {msg}"
        );
        assert!(msg.contains(want), "{msg} lacks {want:?}");
        assert!(msg.contains(&format!("byte offset {offset}")), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert_eq!(files(d), before);
    }
    // Another version, another cluster.
    fs::write(
        &path,
        with_crc({
            let mut b = good.clone();
            b[8..12].copy_from_slice(&9u32.to_le_bytes());
            b
        }),
    )
    .unwrap();
    let err = open(d).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Version {
                found: 9,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    fs::write(
        &path,
        with_crc({
            let mut b = good.clone();
            b[12..20].copy_from_slice(&(CLUSTER + 1).to_le_bytes());
            b
        }),
    )
    .unwrap();
    let err = open(d).unwrap_err();
    assert!(matches!(err, StorageError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("the snapshot belongs to cluster"));
    fs::write(&path, &good).unwrap();
    open(d).unwrap();
}

#[test]
fn the_reader_reports_a_payload_damaged_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    populated(d);
    let (mut s, _) = open(d).unwrap();
    let payload = vec![5u8; 10_000];
    write_snapshot(&mut s, 3, 2, &payload);
    let path = d.join(SNAPSHOT_FILE);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[6], SNAPSHOT_HEADER_LEN as u64 + 9_000)
        .unwrap();
    // At EOF.
    let (_, mut r) = s.snapshot_payload().unwrap().unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    // A caller that reads exactly the payload's length learns it too.
    let (_, mut r) = s.snapshot_payload().unwrap().unwrap();
    let mut buf = vec![0u8; payload.len()];
    assert_eq!(
        r.read_exact(&mut buf).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    // Short: the file lost its end while being read, or before.
    let (_, mut r) = s.snapshot_payload().unwrap().unwrap();
    f.set_len(SNAPSHOT_HEADER_LEN as u64 + 5_000).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    let err = s.snapshot_payload().unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset: 5052, .. }),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "snapshot chunk at offset 100, but 50 bytes were received")]
fn incoming_chunks_out_of_order_panic() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    let (info, bytes) = blob(CLUSTER, 3, 2, &[1u8; 500]);
    s.write_incoming_chunk(info, 0, &bytes[..50]).unwrap();
    let _ = s.write_incoming_chunk(info, 100, &bytes[100..150]);
}

#[test]
#[should_panic(expected = "before the one at 0")]
fn an_incoming_chunk_without_a_start_panics() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    let (info, bytes) = blob(CLUSTER, 3, 2, &[1u8; 500]);
    let _ = s.write_incoming_chunk(info, 50, &bytes[50..100]);
}

#[test]
#[should_panic(expected = "past the snapshot's")]
fn an_incoming_chunk_past_the_announced_length_panics() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let (mut s, _) = open(dir.path()).unwrap();
    let (info, bytes) = blob(CLUSTER, 3, 2, &[1u8; 500]);
    let _ = s.write_incoming_chunk(info, 0, &[bytes.clone(), vec![0]].concat());
}

/// A snapshot announced over the limit (a peer may declare 2^63 bytes) or
/// over the free space is refused before a byte is written: its chunks are
/// dropped, no file is left, its install fails; the next good one installs.
#[test]
fn an_oversized_incoming_snapshot_is_refused_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    populated(d);
    let options = StorageOptions {
        max_incoming_snapshot: 400,
        ..EXACT
    };
    let (mut s, _) = Storage::open(d, CLUSTER, ME, options).unwrap();
    let (info, bytes) = blob(CLUSTER, 3, 2, &[1u8; 500]);
    assert!(info.len > 400);
    assert!(
        !receive(&mut s, info, &bytes, 100),
        "installed over the limit"
    );
    assert!(
        !d.join(SNAPSHOT_INCOMING).exists(),
        "a refused snapshot left a file"
    );
    // Declared far beyond any disk: refused by the limit and by the free
    // space alike, never written.
    let huge = SnapshotInfo {
        len: 1 << 63,
        ..info
    };
    s.write_incoming_chunk(huge, 0, &bytes[..100]).unwrap();
    s.write_incoming_chunk(huge, 100, &bytes[100..200]).unwrap();
    assert!(!d.join(SNAPSHOT_INCOMING).exists());
    assert!(!s.install_incoming(huge).unwrap());
    assert_eq!(s.incoming_refusals(), 2);
    // Under the limit, the same store receives one.
    let (small, bytes) = blob(CLUSTER, 3, 2, &[1u8; 100]);
    assert!(receive(&mut s, small, &bytes, 64));
}

#[test]
fn a_bad_received_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let entries = populated(d);
    let (mut s, _) = open(d).unwrap();
    let current = write_snapshot(&mut s, 2, 2, b"two");
    let payload = vec![9u8; 3000];
    let (info, good) = blob(CLUSTER, 3, 2, &payload);
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x40;
        b
    };
    let other_cluster = blob(CLUSTER + 1, 3, 2, &payload).1;
    let other_entry = blob(CLUSTER, 4, 2, &payload).1;
    let (old_info, old) = blob(CLUSTER, 2, 2, b"older");
    let (high_info, high_term) = blob(CLUSTER, 3, 3, &payload);
    let long_info = SnapshotInfo {
        len: info.len + 10,
        ..info
    };
    let cases: Vec<(SnapshotInfo, Vec<u8>, &str)> = vec![
        (info, flip(SNAPSHOT_HEADER_LEN + 2000), "payload checksum"),
        (info, flip(30), "header checksum"),
        (info, flip(2), "bad magic"),
        (info, good[..1000].to_vec(), "received 1000 of"),
        (long_info, [good.clone(), vec![0; 10]].concat(), "promises"),
        (info, other_cluster, "cluster"),
        (info, other_entry, "the leader announced 3 of term 2"),
        (info, vec![0u8; good.len()], ""),
        (old_info, old, "not newer than the current snapshot at 2"),
        (high_info, high_term, "above the current term 2"),
    ];
    let before = files(d);
    for (info, bytes, want) in cases {
        for chunk in [1, 700, 1 << 20] {
            if chunk == 1 && bytes.len() > 100 {
                continue;
            }
            assert!(!receive(&mut s, info, &bytes, chunk), "{want}: accepted");
            assert_eq!(files(d), before, "{want}: the disk changed");
            assert_eq!(s.snapshot(), Some(current));
        }
        let _ = want;
    }
    // The store carries on, and restarts as it was.
    let e = entry(2, 5, None);
    s.append(std::slice::from_ref(&e));
    s.sync().unwrap();
    drop(s);
    let (_, r) = open(d).unwrap();
    assert_eq!(r.snapshot, Some(current));
    assert_eq!(r.entries, [&entries[2..], &[e]].concat());
}

#[test]
fn install_keeps_the_log_after_a_matching_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 1).unwrap();
    s.save_hard_state(hs(2, None));
    let entries = append_synced(&mut s, 2, 1, 6);
    let segments = segment_files(d);
    let (info, bytes) = blob(CLUSTER, 4, 2, b"four");
    assert!(receive(&mut s, info, &bytes, 3));
    assert_eq!(s.snapshot(), Some(info));
    assert_eq!(s.last_index(), LogIndex(6));
    assert_eq!(segment_files(d), segments, "the log is untouched");
    assert!(!d.join(SNAPSHOT_INCOMING).exists());
    drop(s);
    let (s, r) = open(d).unwrap();
    assert_eq!(r.snapshot, Some(info));
    assert_eq!(r.entries, entries[4..]);
    assert_eq!(read_payload(&s), b"four");
}

#[test]
fn install_discards_a_log_that_does_not_match() {
    // (log length, snapshot index, snapshot term): the entry at the index
    // has another term; the log is shorter than the snapshot; the active
    // segment starts after the snapshot's index.
    for (n, index, term, new_segment) in [(6, 6, 3, true), (6, 10, 2, true), (12, 3, 3, false)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut s, _) = open_small(d, 1).unwrap();
        s.save_hard_state(hs(2, None));
        append_synced(&mut s, 2, 1, n);
        s.save_hard_state(hs(3, None));
        s.sync().unwrap();
        let active = *segment_files(d).last().unwrap();
        let (info, bytes) = blob(CLUSTER, index, term, b"other history");
        assert!(receive(&mut s, info, &bytes, 100));
        let want = if new_segment { index + 1 } else { active };
        assert_eq!(segment_files(d), [want], "{n} {index} {term}");
        assert_eq!(s.last_index(), LogIndex(index));
        assert_eq!(s.first_index(), LogIndex(index + 1));
        if new_segment {
            assert_eq!(segment_header(d, want).prev_term, Term(term));
        }
        drop(s);
        let (mut s, r) = open_small(d, 1).unwrap();
        assert_eq!(r.snapshot, Some(info));
        assert!(r.entries.is_empty());
        // The log goes on after the snapshot, across new segments.
        let more = append_synced(&mut s, 3, index + 1, 12);
        drop(s);
        let (_, r) = open(d).unwrap();
        assert_eq!(r.entries, more, "{n} {index} {term}");
    }
}

#[test]
fn commit_and_install_make_what_is_buffered_durable_first() {
    for install in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        populated(d);
        let (mut s, _) = open(d).unwrap();
        s.save_hard_state(hs(3, Some(1)));
        let e = entry(3, 5, Some("buffered"));
        s.append(std::slice::from_ref(&e));
        let info = if install {
            let (info, bytes) = blob(CLUSTER, 5, 3, b"x");
            assert!(receive(&mut s, info, &bytes, 10));
            info
        } else {
            write_snapshot(&mut s, 5, 3, b"x")
        };
        assert!(!s.needs_sync(), "install {install}");
        drop(s);
        let (s, r) = open(d).unwrap_or_else(|e| panic!("install {install}: {e}"));
        assert_eq!(r.hard_state, hs(3, Some(1)));
        assert_eq!(r.snapshot, Some(info));
        assert_eq!(s.last_index(), LogIndex(5));
    }
}

#[test]
fn a_crash_between_install_and_reset_is_completed_at_start() {
    // The snapshot was renamed into place, but the reset record never
    // made it: the log does not match the snapshot.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_small(d, 1).unwrap();
    s.save_hard_state(hs(3, None));
    append_synced(&mut s, 2, 1, 6);
    drop(s);
    let (_, bytes) = blob(CLUSTER, 4, 3, b"x");
    fs::write(d.join(SNAPSHOT_FILE), &bytes).unwrap();
    let (mut s, r) = open_small(d, 1).unwrap();
    assert!(r.entries.is_empty());
    // The reset went into the active segment (log-5 would sort before it).
    assert_eq!(segment_files(d), [6]);
    let more = append_synced(&mut s, 3, 5, 3);
    drop(s);
    let (_, r) = open(d).unwrap();
    assert_eq!(r.entries, more);
}

// Power cuts inside snapshot operations.

/// A store with entries 1..=10 of term 2, one segment each, term 3, and a
/// snapshot at 2; reopened in power-cut mode, cut in its first operation.
/// Built once, copied for each run (fsyncs are slow).
fn before_a_cut(d: &Path, seed: u64) -> Storage {
    static TEMPLATE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open_small(dir.path(), 1).unwrap();
        s.save_hard_state(hs(3, None));
        append_synced(&mut s, 2, 1, 10);
        write_snapshot(&mut s, 2, 2, b"old");
        dir
    });
    for (name, bytes) in files(template.path()) {
        fs::write(d.join(name), bytes).unwrap();
    }
    let options = StorageOptions {
        segment_bytes: 1,
        preallocate: false,
        ..StorageOptions::default()
    };
    let (s, _) =
        Storage::open_with(d, CLUSTER, ME, options, plan(CutWhen::AtSync(1), seed)).unwrap();
    s
}

/// Runs `op` on a store made by `before_a_cut`, which must cut the power;
/// returns what a restart then recovers (snapshot, entries, payload),
/// after checking that the store goes on from there.
fn cut_in(
    seed: u64,
    op: impl FnOnce(&mut Storage) -> bool,
) -> (Option<SnapshotInfo>, Vec<Entry>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = before_a_cut(d, seed);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut s)));
    assert!(r.is_err(), "seed {seed}: no power cut");
    drop(s);
    for tmp in [SNAPSHOT_TMP, SNAPSHOT_INCOMING, SEGMENT_TMP, META_TMP] {
        assert!(!d.join(tmp).exists(), "{tmp}");
    }
    let (mut s, r) =
        open_small(d, 1).unwrap_or_else(|e| panic!("seed {seed}: refused after a power cut: {e}"));
    let payload = read_payload(&s);
    let e = entry(3, s.last_index().0 + 1, Some("after"));
    s.append(std::slice::from_ref(&e));
    s.sync().unwrap();
    drop(s);
    let (_, again) = open(d).unwrap();
    assert_eq!(again.entries, [&r.entries[..], &[e]].concat());
    (r.snapshot, r.entries, payload)
}

/// What `before_a_cut` leaves: its entries, and its snapshot at 2.
fn before_the_cut() -> (Vec<Entry>, SnapshotInfo) {
    let entries = (1..=10)
        .map(|i| entry(2, i, Some(&format!("entry {i}"))))
        .collect();
    let old = SnapshotInfo {
        last_index: LogIndex(2),
        last_term: Term(2),
        len: SNAPSHOT_HEADER_LEN as u64 + 3,
    };
    (entries, old)
}

#[test]
fn power_cut_inside_a_snapshot_commit() {
    // Before the rename, or after it and before the directory fsync: the
    // old snapshot, whole.
    let (all, old) = before_the_cut();
    for seed in 0..20 {
        let got = cut_in(seed, |s| {
            write_snapshot(s, 5, 2, b"new");
            true
        });
        assert_eq!(
            got,
            (Some(old), all[2..].to_vec(), b"old".to_vec()),
            "seed {seed}"
        );
    }
}

#[test]
fn power_cut_inside_an_install() {
    // (index, term, the log matches): kept; reset with a new segment;
    // reset in the active segment (log-10), with the segments between the
    // snapshot and it to delete.
    let (all, old) = before_the_cut();
    for (index, term, matches) in [(4, 2, true), (12, 3, false), (3, 3, false)] {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let (info, bytes) = blob(CLUSTER, index, term, b"installed");
            let (snapshot, entries, payload) = cut_in(seed, |s| receive(s, info, &bytes, 7));
            if snapshot == Some(old) {
                assert_eq!((&entries[..], &payload[..]), (&all[2..], &b"old"[..]));
            } else {
                assert_eq!(snapshot, Some(info), "seed {seed}");
                assert_eq!(payload, b"installed");
                let want = if matches { &all[index as usize..] } else { &[] };
                assert_eq!(entries, want, "seed {seed}");
            }
            seen.insert(snapshot == Some(old));
        }
        // A kept log has no cut point after the directory fsync.
        let want = if matches { 1 } else { 2 };
        assert_eq!(seen.len(), want, "{index}: outcomes {seen:?}");
    }
}

/// What a store should recover: the hard state, the snapshot, and the log
/// after `base`.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    hard: HardState,
    snapshot: Option<SnapshotInfo>,
    base: (u64, u64),
    entries: Vec<Entry>,
}

impl Model {
    fn recovered(r: &Recovered) -> Model {
        Model {
            hard: r.hard_state,
            snapshot: r.snapshot,
            base: r
                .snapshot
                .map_or((0, 0), |s| (s.last_index.0, s.last_term.0)),
            entries: r.entries.clone(),
        }
    }

    fn last(&self) -> u64 {
        self.base.0 + self.entries.len() as u64
    }

    fn term_at(&self, i: u64) -> Option<u64> {
        if i == self.base.0 {
            return Some(self.base.1);
        }
        if i < self.base.0 || i > self.last() {
            return None;
        }
        Some(self.entries[(i - self.base.0 - 1) as usize].term.0)
    }

    fn snapshot_last(&self) -> u64 {
        self.snapshot.map_or(0, |s| s.last_index.0)
    }

    /// What a start must recover from this: the snapshot, and the
    /// entries after it if the log holds its last entry (§7).
    fn expected(&self) -> (Option<SnapshotInfo>, Vec<Entry>) {
        let Some(s) = self.snapshot else {
            return (None, self.entries.clone());
        };
        let (i, t) = (s.last_index.0, s.last_term.0);
        let after = match self.term_at(i) {
            Some(x) if x == t => self.entries[(i - self.base.0) as usize..].to_vec(),
            _ => Vec::new(),
        };
        (Some(s), after)
    }
}

/// One run: a random workload of log syncs, local snapshots, installs
/// (matching the log or not, and some broken ones) and compactions over
/// small or large segments, in power-cut mode until the cut; then a
/// reopen, which must recover the state before the operation cut short
/// or after it, and go on from there. Returns the operations completed.
fn power_cut_snapshot_run(seed: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = Rng::new(seed ^ 0x5eed_0f5a);
    let options = StorageOptions {
        segment_bytes: if rng.chance(0.7) {
            rng.range(1, 1500)
        } else {
            1 << 20
        },
        // Not drawn from `rng`: the seeds' workloads stay as they were.
        preallocate: seed.is_multiple_of(2),
        ..StorageOptions::default()
    };
    if rng.chance(0.3) {
        populated(d);
    }
    let cut_at = rng.range(1, 20);
    let (mut s, r) =
        Storage::open_with(d, CLUSTER, ME, options, plan(CutWhen::AtSync(cut_at), seed)).unwrap();
    let mut synced = Model::recovered(&r);
    let mut payloads: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut steps = 0;
    loop {
        let mut pending = synced.clone();
        let step = rng.range(0, 10);
        let can_snapshot = pending.last() > pending.snapshot_last();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let m = &mut pending;
            let term = m.hard.current_term.0;
            let payload: Vec<u8> = (0..rng.range(0, 3000))
                .map(|_| rng.range(0, 256) as u8)
                .collect();
            if step < 5 || term == 0 || (step < 7 && !can_snapshot) {
                if term == 0 || rng.chance(0.2) {
                    m.hard = hs(term + 1, rng.chance(0.5).then_some(2));
                    s.save_hard_state(m.hard);
                }
                let lo = m.snapshot_last() + 1;
                if lo <= m.last() && rng.chance(0.2) {
                    let from = rng.range(lo, m.last() + 2);
                    s.truncate(LogIndex(from));
                    m.entries.truncate((from - m.base.0 - 1) as usize);
                }
                for _ in 0..rng.range(1, 7) {
                    let size = rng.range(0, 700) as usize;
                    let c: String = (0..size)
                        .map(|_| char::from(b'a' + rng.range(0, 26) as u8))
                        .collect();
                    let e = entry(m.hard.current_term.0, m.last() + 1, Some(&c));
                    s.append(std::slice::from_ref(&e));
                    m.entries.push(e);
                }
                s.sync().unwrap();
            } else if step < 7 {
                let index = rng.range(m.snapshot_last() + 1, m.last() + 1);
                let term = m.term_at(index).unwrap();
                let mut w = s.snapshot_writer(LogIndex(index), Term(term)).unwrap();
                w.write_all(&payload).unwrap();
                let info = w.finish().unwrap();
                m.snapshot = Some(info);
                payloads.insert(index, payload);
                assert!(s.commit_snapshot(info).unwrap());
            } else {
                let index = rng.range(m.snapshot_last() + 1, m.last() + 4);
                let t = match m.term_at(index) {
                    Some(t) if rng.chance(0.5) => t,
                    _ => term,
                };
                let (info, mut bytes) = blob(CLUSTER, index, t, &payload);
                let broken = step == 9 && rng.chance(0.5);
                if broken {
                    let at = rng.range(0, bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.range(0, 8);
                }
                if !broken {
                    if m.term_at(index) != Some(t) {
                        m.base = (index, t);
                        m.entries.clear();
                    }
                    m.snapshot = Some(info);
                    payloads.insert(index, payload);
                }
                let chunk = rng.range(1, 2000) as usize;
                assert_eq!(receive(&mut s, info, &bytes, chunk), !broken);
            }
            if step >= 5 && rng.chance(0.5) {
                if let Some(snap) = m.snapshot {
                    s.compact(LogIndex(rng.range(0, snap.last_index.0 + 1)))
                        .unwrap();
                }
            }
        }));
        match r {
            Ok(()) => synced = pending,
            Err(_) => {
                drop(s);
                check_after_cut(d, options, seed, &synced, &pending, &payloads);
                return steps;
            }
        }
        steps += 1;
        assert!(
            steps < 3 * cut_at + 10,
            "seed {seed}: no power cut at operation {cut_at}"
        );
    }
}

fn check_after_cut(
    d: &Path,
    options: StorageOptions,
    seed: u64,
    synced: &Model,
    pending: &Model,
    payloads: &BTreeMap<u64, Vec<u8>>,
) {
    let (mut s, r) = Storage::open(d, CLUSTER, ME, options)
        .unwrap_or_else(|e| panic!("seed {seed}: refused after a power cut: {e}"));
    assert!(
        r.hard_state == synced.hard || r.hard_state == pending.hard,
        "seed {seed}: recovered hard state {:?}, not {:?} or {:?}",
        r.hard_state,
        synced.hard,
        pending.hard
    );
    let got = (r.snapshot, r.entries.clone());
    let show = |(s, e): &(Option<SnapshotInfo>, Vec<Entry>)| {
        format!(
            "snapshot {:?}, entries {:?}",
            s.map(|s| (s.last_index.0, s.last_term.0)),
            e.iter().map(|e| (e.index.0, e.term.0)).collect::<Vec<_>>()
        )
    };
    assert!(
        got == synced.expected() || got == pending.expected(),
        "seed {seed}: recovered {}; before the operation cut short: {}; after it: {}",
        show(&got),
        show(&synced.expected()),
        show(&pending.expected())
    );
    if let Some(info) = r.snapshot {
        assert_eq!(
            read_payload(&s),
            payloads[&info.last_index.0],
            "seed {seed}"
        );
    }
    // It goes on from there.
    let model = Model::recovered(&r);
    assert_eq!(s.last_index().0, model.last(), "seed {seed}");
    let term = r.hard_state.current_term.0.max(1);
    s.save_hard_state(hs(term, None));
    let e = entry(term, model.last() + 1, Some("after the cut"));
    s.append(std::slice::from_ref(&e));
    s.sync().unwrap();
    drop(s);
    let (_, again) = Storage::open(d, CLUSTER, ME, options).unwrap();
    assert_eq!(
        again.entries,
        [&r.entries[..], &[e]].concat(),
        "seed {seed}"
    );
}

#[test]
fn power_cut_with_segments_and_snapshots_loses_nothing() {
    let mut steps = 0;
    // Fsyncs dominate (a few hundred per run of seeds on a slow disk): the
    // seeds are few, and each run varies the segment size, the operations
    // and where the power goes.
    for seed in 0..64 {
        steps += power_cut_snapshot_run(seed);
    }
    assert!(steps > 200, "too few operations completed: {steps}");
}

// ----- Preallocated segments ----------------------------------------------

const PREALLOCATED: u64 = 32 << 10;

/// A preallocated store with entries 1..=n of term 2, each synced alone
/// (about 55 bytes each: 40 fit in a 32 KiB segment, 1000 do not).
fn preallocated_with(dir: &Path, n: u64) -> Vec<Entry> {
    let (mut s, r) = open_preallocated(dir, PREALLOCATED).unwrap();
    assert!(r.first_boot);
    s.save_hard_state(hs(2, Some(1)));
    append_synced(&mut s, 2, 1, n)
}

#[test]
fn preallocated_segments_keep_their_length_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s, _) = open_preallocated(d, PREALLOCATED).unwrap();
    assert_eq!(fs::metadata(seg(d, 1)).unwrap().len(), PREALLOCATED);
    drop(s);
    fs::remove_dir_all(d).unwrap();
    fs::create_dir(d).unwrap();
    let mut entries = preallocated_with(d, 40);
    assert_eq!(segment_files(d), vec![1]);
    // Appends went to the data's end, not the file's.
    assert_eq!(fs::metadata(seg(d, 1)).unwrap().len(), PREALLOCATED);
    let (mut s, r) = open_preallocated(d, PREALLOCATED).unwrap();
    assert_eq!(r.entries, entries);
    // Until a roll: the full segment grew by at most one batch, the new
    // one is preallocated too, and a start reads the first one's end
    // (zeroes, if any are left) as the end of its data.
    entries.extend(append_synced(&mut s, 2, 41, 1000));
    drop(s);
    let files = segment_files(d);
    assert!(files.len() >= 2, "no roll: {files:?}");
    for &f in &files {
        let len = fs::metadata(seg(d, f)).unwrap().len();
        assert!(
            (PREALLOCATED..PREALLOCATED + 4096).contains(&len),
            "segment {f}: {len} bytes"
        );
    }
    let (_, r) = open_preallocated(d, PREALLOCATED).unwrap();
    assert_eq!(r.entries, entries);
}

#[test]
fn a_torn_batch_in_a_preallocated_segment_is_dropped_and_the_zeroes_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_preallocated(d, PREALLOCATED).unwrap();
    s.save_hard_state(hs(2, Some(1)));
    let mut entries = append_synced(&mut s, 2, 1, 3);
    let big = entry(2, 4, Some(&"x".repeat(1500)));
    s.append(std::slice::from_ref(&big));
    s.sync().unwrap();
    drop(s);
    let path = seg(d, 1);
    let mut log = fs::read(&path).unwrap();
    let last = batch_offsets(&log)[3];
    // A sector in the middle of the last batch never reached the disk.
    let hole = (last / SECTOR + 1) * SECTOR;
    log[hole..hole + SECTOR].fill(0);
    fs::write(&path, &log).unwrap();
    let (mut s, r) = open_preallocated(d, PREALLOCATED).unwrap();
    assert_eq!(r.entries, entries);
    let after = fs::read(&path).unwrap();
    assert_eq!(after.len() as u64, PREALLOCATED, "not preallocated again");
    assert!(
        after[last..].iter().all(|&b| b == 0),
        "the torn batch's bytes are still there"
    );
    entries.extend(append_synced(&mut s, 2, 4, 2));
    drop(s);
    let (_, r) = open_preallocated(d, PREALLOCATED).unwrap();
    assert_eq!(r.entries, entries);
}

#[test]
fn damage_in_a_preallocated_segment_is_judged_by_its_data() {
    // A last batch whose first sector was lost is torn, not corrupt, in a
    // segment preallocated beyond the largest batch: the rule "more data
    // after a zeroed header than one batch holds" counts data, not the
    // free space's zeroes (which alone would exceed a batch).
    let big = (BATCH_HEADER_LEN + MAX_BATCH_LEN) as u64 + (1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut s, _) = open_preallocated(d, big).unwrap();
    s.save_hard_state(hs(2, Some(1)));
    let mut entries = append_synced(&mut s, 2, 1, 3);
    // Entry 4 pads the data to a sector boundary, so that entry 5's batch
    // starts a sector.
    let end = batch_offsets(&fs::read(seg(d, 1)).unwrap())
        .last()
        .map(|&o| o + BATCH_HEADER_LEN + u32_at(&fs::read(seg(d, 1)).unwrap(), o + 4) as usize)
        .unwrap();
    let fixed = BATCH_HEADER_LEN + RECORD_HEADER_LEN + ENTRY_BODY_FIXED_LEN;
    let pad = (2 * SECTOR - (end + fixed) % SECTOR) % SECTOR + SECTOR;
    let e4 = entry(2, 4, Some(&"p".repeat(pad)));
    s.append(std::slice::from_ref(&e4));
    s.sync().unwrap();
    entries.push(e4);
    s.append(&[entry(2, 5, Some(&"x".repeat(1500)))]);
    s.sync().unwrap();
    drop(s);
    let path = seg(d, 1);
    let mut log = fs::read(&path).unwrap();
    let last = *batch_offsets(&log).last().unwrap();
    assert_eq!(last % SECTOR, 0);
    log[last..last + SECTOR].fill(0);
    fs::write(&path, &log).unwrap();
    let (_, r) = open_preallocated(d, big).unwrap();
    assert_eq!(r.entries, entries);

    // Data in the free space is not ignored: a whole batch far after the
    // end of the data proves the zeroes before it are damage.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    preallocated_with(d, 3);
    let path = seg(d, 1);
    let mut log = fs::read(&path).unwrap();
    let offs = batch_offsets(&log);
    let stray =
        log[offs[2]..offs[2] + BATCH_HEADER_LEN + u32_at(&log, offs[2] + 4) as usize].to_vec();
    let far = PREALLOCATED as usize - 4096;
    log[far..far + stray.len()].copy_from_slice(&stray);
    fs::write(&path, &log).unwrap();
    let err = open_preallocated(d, PREALLOCATED).unwrap_err();
    assert!(err.to_string().contains("a whole batch follows"), "{err}");
}
