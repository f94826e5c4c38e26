//! Safety properties of Raft (Figure 3), checked after every step.

use std::collections::{BTreeMap, HashMap};

use crate::message::{Message, MessageBody};
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, SnapshotMeta, Term};
use crate::Role;

/// A broken safety property, with where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn entry_hash(e: &Entry) -> u64 {
    // FNV-1a over term, index and payload: a fingerprint for comparisons.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for b in e
        .term
        .0
        .to_le_bytes()
        .into_iter()
        .chain(e.index.0.to_le_bytes())
    {
        eat(b);
    }
    match &e.payload {
        EntryPayload::Noop => eat(0),
        EntryPayload::Command(c) => {
            eat(1);
            for &b in c.iter() {
                eat(b);
            }
        }
        EntryPayload::Configuration(m) => {
            eat(2);
            for id in m.members() {
                id.0.to_le_bytes().into_iter().for_each(&mut eat);
            }
            for &b in m.context.iter() {
                eat(b);
            }
        }
    }
    h
}

/// The per-node mirror of what is on "disk", with a hash chain over the log
/// so that log matching is checked in O(1) per appended entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct DiskLog {
    pub(crate) entries: Vec<Entry>,
    chain: Vec<u64>,
}

impl DiskLog {
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(1) as usize;
        self.entries.truncate(keep);
        self.chain.truncate(keep);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn chain_at(&self, i: usize) -> u64 {
        self.chain[i]
    }

    pub(crate) fn append(&mut self, e: Entry) -> u64 {
        let prev = self.chain.last().copied().unwrap_or(0);
        let h = prev.rotate_left(17) ^ entry_hash(&e).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.entries.push(e);
        self.chain.push(h);
        h
    }
}

/// Watches every node's persisted state and outputs.
#[derive(Debug, Default)]
pub struct Checker {
    /// Election safety: the leader of each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching: (index, term) -> hash of the log prefix ending there.
    prefixes: HashMap<(u64, u64), u64>,
    /// State machine safety: what was applied at each index, anywhere.
    committed: Vec<u64>,
    /// The entries behind `committed`, for leader completeness and to fill
    /// in what a snapshot covers in a node's log mirror.
    committed_entries: Vec<Entry>,
    /// A fingerprint of the state machine at each index a snapshot was
    /// taken: every snapshot at an index, and every state restored from
    /// one, must agree.
    snapshots: BTreeMap<LogIndex, u64>,
    /// Per node, this process lifetime: last applied and commit index seen.
    last_applied: BTreeMap<NodeId, LogIndex>,
    last_commit: BTreeMap<NodeId, LogIndex>,
    roles: BTreeMap<NodeId, (Role, Term)>,
    /// Leader append-only: per node leading a term, its log length and the
    /// prefix hash at that length when last seen.
    leader_marks: BTreeMap<NodeId, (Term, usize, u64)>,
    /// Votes granted on the wire, across restarts: (voter, term) -> the
    /// candidate. A second candidate means a vote was sent before it was
    /// durable and then lost in a crash.
    votes_sent: BTreeMap<(NodeId, Term), NodeId>,
}

impl Checker {
    pub(crate) fn on_restart(&mut self, id: NodeId) {
        self.last_applied.remove(&id);
        self.last_commit.remove(&id);
        self.roles.remove(&id);
        self.leader_marks.remove(&id);
    }

    /// Every message as it leaves a node: one granted vote per voter and
    /// term, over the whole run, crashes included (§5.2; the vote must be
    /// durable before it is sent, or a restart may vote again).
    pub(crate) fn on_send(&mut self, m: &Message) -> Result<(), Violation> {
        if let MessageBody::RequestVoteResponse(r) = &m.body {
            if r.granted && !r.pre_vote {
                match self.votes_sent.insert((m.from, m.term), m.to) {
                    Some(prev) if prev != m.to => {
                        return Err(Violation(format!(
                            "node {} voted twice in term {}: for {prev} and for {}",
                            m.from, m.term, m.to
                        )))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub(crate) fn on_hard_state(
        &mut self,
        id: NodeId,
        old: HardState,
        new: HardState,
    ) -> Result<(), Violation> {
        if new.current_term < old.current_term {
            return Err(Violation(format!(
                "node {id}: term went back from {} to {}",
                old.current_term, new.current_term
            )));
        }
        if new.current_term == old.current_term
            && old.voted_for.is_some()
            && new.voted_for != old.voted_for
        {
            return Err(Violation(format!(
                "node {id}: vote changed within term {} from {:?} to {:?}",
                new.current_term, old.voted_for, new.voted_for
            )));
        }
        Ok(())
    }

    pub(crate) fn on_append(
        &mut self,
        id: NodeId,
        log: &mut DiskLog,
        entries: Vec<Entry>,
    ) -> Result<(), Violation> {
        for e in entries {
            if e.index.0 != log.entries.len() as u64 + 1 {
                return Err(Violation(format!(
                    "node {id}: appended entry {} after {} entries",
                    e.index,
                    log.entries.len()
                )));
            }
            let (i, t) = (e.index.0, e.term.0);
            let h = log.append(e);
            match self.prefixes.get(&(i, t)) {
                Some(&seen) if seen != h => {
                    return Err(Violation(format!(
                        "node {id}: log matching violated: entry ({i}, term {t}) has a prefix that differs from another node's"
                    )))
                }
                Some(_) => {}
                None => {
                    self.prefixes.insert((i, t), h);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn on_apply(&mut self, id: NodeId, e: &Entry) -> Result<(), Violation> {
        let last = self.last_applied.get(&id).copied().unwrap_or(LogIndex(0));
        if e.index != last.next() {
            return Err(Violation(format!(
                "node {id}: applied {} after {last} (gap or repeat)",
                e.index
            )));
        }
        self.last_applied.insert(id, e.index);
        let pos = (e.index.0 - 1) as usize;
        let h = entry_hash(e);
        if pos < self.committed.len() {
            if self.committed[pos] != h {
                return Err(Violation(format!(
                    "node {id}: state machine safety violated: applied a different entry at index {} (term {})",
                    e.index, e.term
                )));
            }
        } else {
            assert_eq!(pos, self.committed.len(), "applies are gapless");
            self.committed.push(h);
            self.committed_entries.push(e.clone());
        }
        Ok(())
    }

    /// Checks role-level properties of one live node after a step.
    pub(crate) fn after_step(
        &mut self,
        id: NodeId,
        role: Role,
        term: Term,
        commit: LogIndex,
        log: &DiskLog,
    ) -> Result<(), Violation> {
        let prev_commit = self.last_commit.get(&id).copied().unwrap_or(LogIndex(0));
        if commit < prev_commit {
            return Err(Violation(format!(
                "node {id}: commit index went back from {prev_commit} to {commit}"
            )));
        }
        self.last_commit.insert(id, commit);
        let became_leader =
            role == Role::Leader && self.roles.get(&id) != Some(&(Role::Leader, term));
        self.roles.insert(id, (role, term));
        if role == Role::Leader {
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(Violation(format!(
                        "election safety violated: nodes {other} and {id} both lead term {term}"
                    )))
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                }
            }
        }
        if role == Role::Leader {
            // Leader append-only (Figure 3): while it leads a term, what it
            // held stays a prefix of its log.
            if let Some(&(t, len, h)) = self.leader_marks.get(&id) {
                if t == term && (log.len() < len || (len > 0 && log.chain_at(len - 1) != h)) {
                    return Err(Violation(format!(
                        "node {id}: leader of term {term} lost or rewrote entries up to {len} (leader append-only)"
                    )));
                }
            }
            let len = log.len();
            let h = if len > 0 { log.chain_at(len - 1) } else { 0 };
            self.leader_marks.insert(id, (term, len, h));
        } else {
            self.leader_marks.remove(&id);
        }
        if became_leader {
            // Leader completeness (§5.4): a new leader holds every entry
            // committed so far.
            for (pos, (&h, c)) in self
                .committed
                .iter()
                .zip(&self.committed_entries)
                .enumerate()
            {
                match log.entries.get(pos) {
                    Some(e) if e.term == c.term && entry_hash(e) == h => {}
                    _ => {
                        return Err(Violation(format!(
                            "leader completeness violated: new leader {id} of term {term} lacks committed entry {}",
                            pos + 1
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries applied anywhere so far, in index order.
    pub(crate) fn committed_entries(&self) -> &[Entry] {
        &self.committed_entries
    }

    /// A node took a snapshot of its state machine, fingerprinted
    /// `machine`, as of `meta.last_index`. It must cover only applied
    /// entries, name the committed entry's term, and agree with every
    /// other snapshot at that index.
    pub(crate) fn on_snapshot(
        &mut self,
        id: NodeId,
        meta: &SnapshotMeta,
        machine: u64,
    ) -> Result<(), Violation> {
        let pos = meta.last_index.0 as usize - 1;
        // Its configuration is the latest committed one at its index (the
        // first leader wrote the bootstrap one as entry 1).
        let committed_config = self
            .committed_entries
            .get(..=pos)
            .unwrap_or(&[])
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                EntryPayload::Configuration(m) => Some(&**m),
                _ => None,
            });
        if let Some(m) = committed_config.filter(|&m| *m != *meta.membership) {
            return Err(Violation(format!(
                "node {id}: snapshot at {} carries configuration {:?}, the log says {:?}",
                meta.last_index, meta.membership, m
            )));
        }
        match self.committed_entries.get(pos) {
            Some(e) if e.term == meta.last_term => {}
            Some(e) => {
                return Err(Violation(format!(
                    "node {id}: snapshot at {} claims term {}, the committed entry has {}",
                    meta.last_index, meta.last_term, e.term
                )))
            }
            None => {
                return Err(Violation(format!(
                    "node {id}: snapshot at {} covers entries never committed",
                    meta.last_index
                )))
            }
        }
        match self.snapshots.insert(meta.last_index, machine) {
            Some(other) if other != machine => Err(Violation(format!(
                "node {id}: state machine safety violated: its snapshot at {} differs from another's",
                meta.last_index
            ))),
            _ => Ok(()),
        }
    }

    /// A node's state machine was restored from the snapshot `meta`, and
    /// is now fingerprinted `machine`: it must be the state every other
    /// member had at that index, and applies continue after it.
    pub(crate) fn on_restore(
        &mut self,
        id: NodeId,
        meta: &SnapshotMeta,
        machine: u64,
    ) -> Result<(), Violation> {
        let last = self.last_applied.get(&id).copied().unwrap_or(LogIndex(0));
        if meta.last_index < last {
            return Err(Violation(format!(
                "node {id}: restored a snapshot at {} after applying up to {last}",
                meta.last_index
            )));
        }
        self.last_applied.insert(id, meta.last_index);
        match self.snapshots.get(&meta.last_index) {
            Some(&m) if m != machine => Err(Violation(format!(
                "node {id}: state machine safety violated: restored state at {} differs from the snapshot taken there",
                meta.last_index
            ))),
            Some(_) => Ok(()),
            None => Err(Violation(format!(
                "node {id}: restored a snapshot at {} that nobody took",
                meta.last_index
            ))),
        }
    }

    /// A node installed the snapshot `meta` received from the leader: its
    /// log mirror becomes the committed entries up to there, followed by
    /// its own entries after it if it held the snapshot's last entry (§7).
    pub(crate) fn on_install(
        &mut self,
        id: NodeId,
        log: &mut DiskLog,
        meta: &SnapshotMeta,
    ) -> Result<(), Violation> {
        let n = meta.last_index.0 as usize;
        if self.committed_entries.len() < n || self.committed_entries[n - 1].term != meta.last_term
        {
            return Err(Violation(format!(
                "node {id}: installed a snapshot at {} (term {}) that does not end in a committed entry",
                meta.last_index, meta.last_term
            )));
        }
        let keeps = log
            .entries
            .get(n - 1)
            .is_some_and(|e| e.term == meta.last_term);
        if !keeps {
            log.truncate_from(LogIndex(1));
            for e in &self.committed_entries[..n] {
                log.append(e.clone());
            }
        }
        Ok(())
    }

    /// Entries applied anywhere so far.
    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// Configuration entries committed, the bootstrap one included.
    pub fn committed_configurations(&self) -> u64 {
        self.committed_entries
            .iter()
            .filter(|e| matches!(e.payload, EntryPayload::Configuration(_)))
            .count() as u64
    }

    /// Terms that had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }
}
