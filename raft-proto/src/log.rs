//! The in-memory copy of the replicated log.
//!
//! The log may start after index 1: `offset` is the index just before the
//! first held entry (a snapshot's last index once compaction exists), and
//! `offset_term` its term, so that the consistency check at `offset` still
//! works (§7).
//!
//! The log also knows the configuration in force (thesis §4.1: the latest
//! configuration entry in the log, committed or not), because every change
//! to the log may change it: an append adds one, a truncation undoes one,
//! a snapshot replaces the prefix that held them.

use crate::types::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};

#[derive(Debug)]
pub(crate) struct RaftLog {
    offset: LogIndex,
    offset_term: Term,
    entries: Vec<Entry>,
    /// The configuration at `offset` (from the snapshot, or the bootstrap
    /// one), then every configuration entry the log holds, by index. The
    /// last one is in force. Never empty.
    configs: Vec<(LogIndex, Membership)>,
    /// Bumped whenever the configuration in force may have changed, so
    /// the node notices without comparing configurations on every input.
    config_epoch: u64,
}

impl RaftLog {
    /// A log holding `entries`, which must be consecutive and start at
    /// `offset + 1`, with non-decreasing terms no lower than `offset_term`.
    /// `base` is the configuration in force at `offset`.
    pub(crate) fn new(
        offset: LogIndex,
        offset_term: Term,
        entries: Vec<Entry>,
        base: Membership,
    ) -> RaftLog {
        let mut configs = vec![(offset, base)];
        for e in &entries {
            if let EntryPayload::Configuration(m) = &e.payload {
                configs.push((e.index, (**m).clone()));
            }
        }
        let log = RaftLog {
            offset,
            offset_term,
            entries,
            configs,
            config_epoch: 0,
        };
        log.check_invariants();
        log
    }

    /// The configuration in force: the latest in the log.
    pub(crate) fn membership(&self) -> &Membership {
        &self.configs.last().expect("configs is never empty").1
    }

    /// Index of the entry that holds the configuration in force (the
    /// log's start if it came with a snapshot or the bootstrap).
    /// Whether any configuration the log still knows of (the one at its
    /// start, and those in its entries) names `id`.
    pub(crate) fn ever_contains(&self, id: NodeId) -> bool {
        self.configs.iter().any(|(_, m)| m.contains(id))
    }

    pub(crate) fn membership_index(&self) -> LogIndex {
        self.configs.last().expect("configs is never empty").0
    }

    /// The configuration in force after the entry `index`, which must not
    /// be below the log's start.
    pub(crate) fn membership_at(&self, index: LogIndex) -> &Membership {
        assert!(index >= self.offset, "membership_at below the log start");
        let pos = self.configs.partition_point(|(i, _)| *i <= index);
        &self.configs[pos.max(1) - 1].1
    }

    pub(crate) fn config_epoch(&self) -> u64 {
        self.config_epoch
    }

    pub(crate) fn check_invariants(&self) {
        let mut expected = self.offset.next();
        let mut term = self.offset_term;
        for e in &self.entries {
            assert_eq!(e.index, expected, "log invariant: indexes are consecutive");
            assert!(e.term >= term, "log invariant: terms never decrease");
            expected = expected.next();
            term = e.term;
        }
        assert!(
            self.configs[0].0 <= self.offset
                && self.configs.windows(2).all(|w| w[0].0 < w[1].0)
                && self.configs[1..].iter().all(|(i, m)| matches!(
                    self.entry(*i).map(|e| &e.payload),
                    Some(EntryPayload::Configuration(c)) if **c == *m
                )),
            "log invariant: the configurations are the base and the log's configuration entries"
        );
    }

    /// The O(1) part of the invariants, for checks after every input.
    pub(crate) fn check_tail(&self) {
        if let Some(last) = self.entries.last() {
            assert_eq!(
                last.index,
                self.last_index(),
                "log invariant: indexes are consecutive"
            );
            let before = self.term_at(last.index.prev()).expect("entry before last");
            assert!(last.term >= before, "log invariant: terms never decrease");
        }
    }

    /// The index just before the first entry held: 0, or the last index a
    /// snapshot covers. Its term is known, so the consistency check works
    /// from here on, and not below.
    pub(crate) fn start_index(&self) -> LogIndex {
        self.offset
    }

    /// Index of the first entry held (`last_index() + 1` if none).
    pub(crate) fn first_index(&self) -> LogIndex {
        self.offset.next()
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.offset.plus(self.entries.len() as u64)
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log holds it (or it is the
    /// offset, whose term is remembered).
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        let pos = usize::try_from(index.0 - self.offset.0 - 1).ok()?;
        self.entries.get(pos)
    }

    /// Entries from `from` on, at most `max_entries` of them and at most
    /// `max_bytes` of payload, but at least one if any exists.
    pub(crate) fn slice(&self, from: LogIndex, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        assert!(from > self.offset, "slice from a compacted index");
        let start = (from.0 - self.offset.0 - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self.entries.iter().skip(start).take(max_entries) {
            bytes += e.payload_len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Entries in `[from, to]`.
    pub(crate) fn range(&self, from: LogIndex, to: LogIndex) -> &[Entry] {
        if from > to {
            return &[];
        }
        assert!(
            from > self.offset && to <= self.last_index(),
            "range out of log"
        );
        let a = (from.0 - self.offset.0 - 1) as usize;
        let b = (to.0 - self.offset.0) as usize;
        &self.entries[a..b]
    }

    /// Appends one entry at `last_index() + 1`.
    pub(crate) fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "log append must be contiguous"
        );
        assert!(
            entry.term >= self.last_term(),
            "log append must not lower the term"
        );
        if let EntryPayload::Configuration(m) = &entry.payload {
            self.configs.push((entry.index, (**m).clone()));
            self.config_epoch += 1;
        }
        self.entries.push(entry);
    }

    /// Removes every entry with index `>= from`.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        assert!(from > self.offset, "truncate into the compacted prefix");
        let keep = (from.0 - self.offset.0 - 1) as usize;
        self.entries.truncate(keep);
        // The base is at or below the offset, never truncated.
        while self.configs.last().is_some_and(|(i, _)| *i >= from) {
            self.configs.pop();
            self.config_epoch += 1;
        }
    }

    /// Drops every entry up to and including `through`, which a snapshot
    /// covers; the log then starts after it (§7). Its term is remembered,
    /// so the consistency check still works at `through`.
    pub(crate) fn compact_through(&mut self, through: LogIndex) {
        if through <= self.offset {
            return;
        }
        let term = self.term_at(through).expect("compact within the log");
        let n = (through.0 - self.offset.0) as usize;
        self.entries.drain(..n);
        self.offset = through;
        self.offset_term = term;
        // The configuration at `through` becomes the base; older ones go.
        let pos = self.configs.partition_point(|(i, _)| *i <= through);
        self.configs.drain(..pos - 1);
    }

    /// Installs a snapshot ending at `(last_index, last_term)` (§7): if the
    /// log holds that entry, the entries after it stay (by Log Matching they
    /// agree with the leader's up to there); otherwise the whole log goes.
    /// The snapshot's configuration becomes the base. Returns whether the
    /// suffix was kept.
    pub(crate) fn install_snapshot(
        &mut self,
        last_index: LogIndex,
        last_term: Term,
        membership: Membership,
    ) -> bool {
        self.config_epoch += 1;
        if self.term_at(last_index) == Some(last_term) {
            self.compact_through(last_index);
            // By Log Matching the log's own configuration at `last_index`
            // is the snapshot's; the snapshot's word is taken all the same.
            self.configs[0] = (last_index, membership);
            true
        } else {
            self.entries.clear();
            self.offset = last_index;
            self.offset_term = last_term;
            self.configs = vec![(last_index, membership)];
            false
        }
    }

    /// The first index of the run of entries with `term` that contains
    /// `index` (§5.3's conflict optimization: skip a whole term per round trip).
    pub(crate) fn first_index_of_term_run(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut i = index;
        while i > self.first_index() && self.term_at(i.prev()) == Some(term) {
            i = i.prev();
        }
        i
    }

    /// The largest index `<= at_most` whose entry has `term`, if any.
    pub(crate) fn last_index_of_term(&self, term: Term, at_most: LogIndex) -> Option<LogIndex> {
        let mut i = at_most.min(self.last_index());
        while i > self.offset {
            let t = self.term_at(i).expect("index within log");
            if t == term {
                return Some(i);
            }
            if t < term {
                return None;
            }
            i = i.prev();
        }
        None
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours if its
    /// last term is higher, or equal with an index at least as high.
    pub(crate) fn is_up_to_date(&self, last_term: Term, last_index: LogIndex) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry {
                term: Term(t),
                index: LogIndex(i as u64 + 1),
                payload: EntryPayload::Noop,
            })
            .collect();
        RaftLog::new(LogIndex(0), Term(0), entries, base())
    }

    fn base() -> Membership {
        Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..Membership::default()
        }
    }

    #[test]
    fn term_lookup_and_bounds() {
        let log = log_of(&[1, 1, 2, 3]);
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(log.last_term(), Term(3));
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(5)), None);
    }

    #[test]
    fn term_runs() {
        let log = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(
            log.first_index_of_term_run(LogIndex(5), Term(2)),
            LogIndex(3)
        );
        assert_eq!(
            log.first_index_of_term_run(LogIndex(2), Term(1)),
            LogIndex(1)
        );
        assert_eq!(
            log.last_index_of_term(Term(2), LogIndex(6)),
            Some(LogIndex(5))
        );
        assert_eq!(log.last_index_of_term(Term(3), LogIndex(6)), None);
        assert_eq!(
            log.last_index_of_term(Term(1), LogIndex(6)),
            Some(LogIndex(2))
        );
    }

    #[test]
    fn up_to_date_rule() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(Term(3), LogIndex(1)));
        assert!(log.is_up_to_date(Term(2), LogIndex(3)));
        assert!(!log.is_up_to_date(Term(2), LogIndex(2)));
        assert!(!log.is_up_to_date(Term(1), LogIndex(9)));
    }

    #[test]
    fn slice_respects_limits_but_sends_one() {
        let mut log = log_of(&[]);
        for i in 1..=10 {
            log.push(Entry {
                term: Term(1),
                index: LogIndex(i),
                payload: EntryPayload::Command(bytes::Bytes::from(vec![0u8; 100])),
            });
        }
        assert_eq!(log.slice(LogIndex(1), 4, 1 << 20).len(), 4);
        assert_eq!(log.slice(LogIndex(1), 100, 250).len(), 2);
        assert_eq!(log.slice(LogIndex(1), 100, 10).len(), 1);
        assert_eq!(log.slice(LogIndex(11), 100, 1000).len(), 0);
    }

    #[test]
    fn compaction_and_install_keep_the_consistency_check() {
        let mut log = log_of(&[1, 1, 2, 2, 3]);
        log.compact_through(LogIndex(3));
        assert_eq!(log.start_index(), LogIndex(3));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.entry(LogIndex(3)), None);
        assert_eq!(log.last_index(), LogIndex(5));
        log.check_invariants();
        // A snapshot that matches an entry keeps what follows it.
        assert!(log.install_snapshot(LogIndex(4), Term(2), base()));
        assert_eq!(
            (log.start_index(), log.last_index()),
            (LogIndex(4), LogIndex(5))
        );
        // One that does not match replaces the whole log.
        assert!(!log.install_snapshot(LogIndex(5), Term(4), base()));
        assert_eq!(
            (log.start_index(), log.last_index()),
            (LogIndex(5), LogIndex(5))
        );
        assert_eq!(log.last_term(), Term(4));
        // Beyond the log: the same.
        assert!(!log.install_snapshot(LogIndex(9), Term(4), base()));
        assert_eq!(log.last_index(), LogIndex(9));
        log.check_invariants();
    }

    #[test]
    fn log_may_start_after_one() {
        let log = RaftLog::new(
            LogIndex(10),
            Term(3),
            vec![Entry {
                term: Term(3),
                index: LogIndex(11),
                payload: EntryPayload::Noop,
            }],
            base(),
        );
        assert_eq!(log.first_index(), LogIndex(11));
        assert_eq!(log.term_at(LogIndex(10)), Some(Term(3)));
        assert_eq!(log.term_at(LogIndex(9)), None);
        assert_eq!(log.last_index(), LogIndex(11));
    }
}
