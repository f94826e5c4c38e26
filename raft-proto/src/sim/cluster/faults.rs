//! The faults a test or a run injects: crashes that lose what was not
//! synced, restarts (from a disk that may fail its checksums), freezes,
//! partitions and blocked links, stalled disks.

use std::time::Duration;

use super::{Cluster, Completion, Scheduled};
use crate::{HardState, NodeId, Term, Time};

impl Cluster {
    // ----- Faults -------------------------------------------------------------

    /// Kills the process: what was not persisted is lost, peers see the
    /// connection close after `net.eof_delay`.
    pub fn crash(&mut self, id: NodeId) {
        let m = self.members.get_mut(&id).expect("member");
        if m.node.is_none() {
            return;
        }
        m.node = None;
        m.frozen = false;
        m.reads.clear();
        m.held.clear();
        self.removal_reported.remove(&id);
        // Messages the driver held for a sync never left; of the writes
        // not yet synced, the disk keeps a prefix (maybe torn).
        m.driver.crash();
        let (kept, unsynced) = m
            .disk
            .crash(&mut self.rng, self.checker.committed_entries());
        self.log_line(|| format!("n{id} crashed ({kept} of {unsynced} unsynced writes survived)"));
        self.completions.push(Completion::Crashed { node: id });
        for peer in self.ids.clone() {
            if peer != id {
                // Like TCP, the close arrives after all data sent before it.
                let at = self.last_delivery(id, peer).max(self.now) + self.net.eof_delay;
                self.schedule(
                    at,
                    Scheduled::LinkDown {
                        node: peer,
                        peer: id,
                    },
                );
            }
        }
    }

    /// When the last message in flight from `from` to `to` arrives.
    fn last_delivery(&self, from: NodeId, to: NodeId) -> Time {
        self.queue
            .iter()
            .filter_map(|(&(t, _), s)| match s {
                Scheduled::Deliver(m) if m.from == from && m.to == to => Some(t),
                _ => None,
            })
            .max()
            .unwrap_or(self.now)
    }

    /// Starts a crashed process again from what it persisted; links come up
    /// shortly after, as the driver reconnects.
    pub fn restart(&mut self, id: NodeId) {
        if self.members[&id].node.is_some() {
            return;
        }
        let others_refused = self.members.values().any(|m| m.refused.is_some());
        if !others_refused && self.rng.chance(self.net.corrupt_on_restart) {
            let m = self.members.get_mut(&id).expect("member");
            if let Some(index) = m.disk.corrupt_a_record(&mut self.rng) {
                self.log_line(|| format!("n{id} disk: record of entry {index} corrupted"));
            }
        }
        if !self.boot(id) {
            let index = self.members[&id].refused.expect("refused");
            self.log_line(|| format!("n{id} refused to start: entry {index} fails its checksum"));
            return;
        }
        self.log_line(|| format!("n{id} restarted"));
        let at = self.now + self.net.eof_delay;
        for peer in self.ids.clone() {
            if peer != id {
                self.schedule(
                    at,
                    Scheduled::LinkUp {
                        node: peer,
                        peer: id,
                    },
                );
                self.schedule(at, Scheduled::LinkUp { node: id, peer });
            }
        }
    }

    /// Stops the process without closing its sockets (SIGSTOP): it neither
    /// handles timers nor messages; messages to it wait in its buffers.
    pub fn freeze(&mut self, id: NodeId) {
        if let Some(m) = self.members.get_mut(&id) {
            if m.node.is_some() {
                m.frozen = true;
            }
        }
        self.log_line(|| format!("n{id} frozen"));
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&mut self, id: NodeId) {
        let held = match self.members.get_mut(&id) {
            Some(m) => {
                m.frozen = false;
                std::mem::take(&mut m.held)
            }
            None => Vec::new(),
        };
        // What waited in the socket buffers comes first, in order.
        for (i, msg) in held.into_iter().enumerate() {
            let at = self.now + Duration::from_nanos(i as u64);
            self.schedule(at, Scheduled::Deliver(msg));
        }
        self.log_line(|| format!("n{id} thawed"));
    }

    /// Drops every message from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Cuts `id` off from everyone, both directions, silently (DROP).
    pub fn isolate(&mut self, id: NodeId) {
        for peer in self.ids.clone() {
            if peer != id {
                self.blocked.insert((id, peer));
                self.blocked.insert((peer, id));
            }
        }
        self.log_line(|| format!("n{id} isolated"));
    }

    /// Splits the cluster: no traffic between `group` and the rest. With
    /// `reset`, both sides see their connections reset (REJECT with TCP RST).
    pub fn partition(&mut self, group: &[NodeId], reset: bool) {
        for &a in group {
            for b in self.ids.clone() {
                if !group.contains(&b) {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                    if reset {
                        let at = self.now + self.net.eof_delay;
                        self.schedule(at, Scheduled::LinkDown { node: a, peer: b });
                        self.schedule(at, Scheduled::LinkDown { node: b, peer: a });
                    }
                }
            }
        }
        self.log_line(|| format!("partition {group:?} | rest (reset: {reset})"));
    }

    /// Removes every partition and block; links that were reset come back.
    pub fn heal(&mut self) {
        let at = self.now + self.net.eof_delay;
        for (a, b) in std::mem::take(&mut self.blocked) {
            self.schedule(at, Scheduled::LinkUp { node: a, peer: b });
        }
        self.log_line(|| "network healed".to_string());
    }

    /// Stalls (or resumes) `id`'s disk: its syncs do not complete while
    /// stalled.
    pub fn stall_disk(&mut self, id: NodeId, stalled: bool) {
        self.members.get_mut(&id).expect("member").disk_stalled = stalled;
    }

    /// Moves the durable term of `id`, which must be down, to `term` (no
    /// vote in it), as if it had taken part in elections up to there. For
    /// tests of terms an honest cluster reaches only after ages (see
    /// [`Term::MAX_JUMP`]).
    ///
    /// # Panics
    ///
    /// If `id` is running, or `term` is not above its durable term.
    pub fn set_persisted_term(&mut self, id: NodeId, term: Term) {
        let m = self.members.get_mut(&id).expect("member");
        assert!(m.node.is_none(), "n{id} must be down");
        assert!(term > m.disk.durable_hs.current_term, "terms only grow");
        let hs = HardState {
            current_term: term,
            voted_for: None,
        };
        m.disk.durable_hs = hs;
        m.disk.written_hs = hs;
    }
}
