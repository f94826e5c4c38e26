//! Applying committed entries and answering what waited for them: writes
//! by log index, reads by ReadIndex round, and reads that wait for the
//! store clock to move (the leader's sweeps of expired keys).

use std::time::{Duration, Instant};

use raft_proto::{Entry, EntryPayload, ReadError, Role, Time};

use super::{ClockWait, PendingRead, Server, SWEEP_INTERVAL};
use crate::client;
use crate::kv;
use crate::resp::Reply;

impl Server {
    /// Time from an entry's append here to its application.
    pub(super) fn observe_apply_lag(&mut self, index: u64, applied_at: Instant) {
        while self.appended_at.front().is_some_and(|&(i, _)| i < index) {
            self.appended_at.pop_front();
        }
        if let Some(&(i, at)) = self.appended_at.front() {
            if i == index {
                self.appended_at.pop_front();
                let lag = applied_at.saturating_duration_since(at);
                self.histograms.apply_lag.observe(lag.as_secs_f64());
            }
        }
    }

    /// Applies a committed entry and answers the write that proposed it.
    pub(super) fn apply(&mut self, entry: Entry, now: Instant) {
        self.counters.entries_applied += 1;
        self.last_applied = (entry.index, entry.term);
        self.snapshotter.applied(entry.payload_len());
        let result = match &entry.payload {
            EntryPayload::Noop => None,
            EntryPayload::Configuration(m) => {
                self.configuration_applied(entry.index, entry.term, m);
                None
            }
            EntryPayload::Command(bytes) => Some(match kv::Write::decode(bytes) {
                Ok(w) => Ok(self.kv.apply(entry.index.0, &w)),
                Err(e) => {
                    // Every member holds the same bytes and skips them alike.
                    log::error!(
                        "log entry {} (term {}): {e}; not applied",
                        entry.index,
                        entry.term
                    );
                    Err(e)
                }
            }),
        };
        self.applied_for_reads(entry.index.0, now);
        debug_assert!(
            self.writes.range(..entry.index.0).next().is_none(),
            "a pending write below the applied index was never answered"
        );
        let Some(w) = self.writes.remove(&entry.index.0) else {
            return;
        };
        let reply = match result {
            // §5.3: another leader's entry took the index; ours is gone.
            _ if w.term != entry.term => {
                Reply::Error("ERR write lost to a leader change; retry".into())
            }
            Some(Ok(outcome)) => client::outcome_reply(outcome),
            Some(Err(e)) => Reply::Error(format!("ERR {e}")),
            None => Reply::Error("ERR internal error: no-op at a proposed index".into()),
        };
        if matches!(reply, Reply::Error(_)) {
            self.counters.writes_failed += 1;
        } else {
            self.counters.writes_ok += 1;
        }
        self.deliver(w.to, reply);
    }

    pub(super) fn answer_read(&mut self, id: u64, error: Option<ReadError>, now: Instant) {
        let Some(r) = self.reads.remove(&id) else {
            return;
        };
        match error {
            None => self.finish_read(r, None, now),
            Some(e) => {
                let reply = self.read_error(e, r.cmd.first_key().map_or(&[][..], |k| k));
                self.deliver(r.to, reply);
            }
        }
    }

    /// Answers a read whose ReadIndex round is complete. If it would see a
    /// key whose deadline has passed by this leader's clock but not by the
    /// store clock, a sweep stamped with this clock is proposed first and
    /// the read answered once it is applied: what a read sees is then a
    /// state of the log at a time recorded in the log (kv/mod.rs, "Time and
    /// expiry"). `checked_ms` is the clock of a first check: a read waits
    /// at most twice (an in-flight sweep may have been stamped earlier than
    /// it needed; the next one is stamped later). A member that cannot
    /// propose answers from its state, which is still linearizable.
    pub(super) fn finish_read(&mut self, read: PendingRead, checked_ms: Option<u64>, now: Instant) {
        let now_ms = checked_ms.unwrap_or_else(|| self.wall_ms(now));
        if self.node.role() == Role::Leader && self.kv.read_due(&read.cmd, now_ms) {
            if let Some(index) = self.propose_sweep(now) {
                self.clock_waits.push(ClockWait {
                    index,
                    now_ms,
                    read,
                });
                return;
            }
        }
        self.counters.reads_ok += 1;
        if read.cmd.walks_keyspace() {
            // Off the loop, over the store as it is now (walks.rs).
            let to = read.to;
            let Some(c) = self.clients.get(to.key).filter(|c| c.id == to.client_id) else {
                return;
            };
            let protocol = c.slot_protocol(to.seq);
            let now_ms = self.wall_ms(now);
            self.walker
                .start(to, self.kv.clone(), read.cmd, now_ms, protocol);
            return;
        }
        let outcome = self.kv.query(&read.cmd, self.wall_ms(now));
        self.deliver(read.to, client::outcome_reply(outcome));
    }

    /// Answers the walks of the key space the helper thread finished.
    pub(super) fn walks_finished(&mut self) {
        while let Some(w) = self.walker.poll() {
            self.counters.keyspace_walks += 1;
            self.counters.keyspace_walk_nanos += w.took.as_nanos() as u64;
            self.deliver(w.to, w.reply);
        }
    }

    /// An entry was applied: the reads waiting for it are answered.
    pub(super) fn applied_for_reads(&mut self, index: u64, now: Instant) {
        if self.sweep_in_flight.is_some_and(|i| i <= index) {
            self.sweep_in_flight = None;
        }
        if self.clock_waits.iter().any(|w| w.index <= index) {
            let (ready, waiting) = std::mem::take(&mut self.clock_waits)
                .into_iter()
                .partition::<Vec<_>, _>(|w| w.index <= index);
            self.clock_waits = waiting;
            for w in ready {
                self.finish_read(w.read, Some(w.now_ms), now);
            }
        }
    }

    /// Proposes a sweep of expired keys stamped with this member's clock,
    /// unless one is in flight; the index of the sweep to wait for.
    pub(super) fn propose_sweep(&mut self, now: Instant) -> Option<u64> {
        if self.sweep_in_flight.is_some() {
            return self.sweep_in_flight;
        }
        let w = kv::Write::new(self.wall_ms(now), kv::Command::Sweep);
        let payload = w.encode_in(&mut self.encode_arena);
        match self.node.propose(self.time(now), payload) {
            Ok(id) => {
                self.sweep_in_flight = Some(id.index.0);
                self.redrain = true;
                Some(id.index.0)
            }
            Err(e) => {
                log::debug!("sweep of expired keys not proposed: {e:?}");
                None
            }
        }
    }

    /// Timers, on the leader: expired keys are removed through the log, by
    /// a sweep once the earliest deadline has passed (bounded per entry;
    /// another follows while some remain), at most every
    /// [`SWEEP_INTERVAL`].
    pub(super) fn sweep_expired(&mut self, now: Instant, _t: Time) {
        if self.node.role() != Role::Leader
            || self.sweep_in_flight.is_some()
            || self.next_sweep_at.is_some_and(|at| now < at)
        {
            return;
        }
        if self.kv.sweep_due(self.wall_ms(now)) {
            self.next_sweep_at = Some(now + SWEEP_INTERVAL);
            self.propose_sweep(now);
        }
    }

    /// When the next timer sweep is due, on the leader.
    pub(super) fn sweep_deadline(&self) -> Option<Instant> {
        if self.node.role() != Role::Leader || self.sweep_in_flight.is_some() {
            return None;
        }
        let d = self.kv.next_deadline()?;
        let due = if d <= self.kv.clock_ms() {
            self.start
        } else {
            self.start + Duration::from_millis(d.saturating_sub(self.start_wall_ms))
        };
        Some(self.next_sweep_at.map_or(due, |at| due.max(at)))
    }

    /// Leadership lost: no sweep of ours will commit, and the waiting reads
    /// are answered from this member's state.
    pub(super) fn release_clock_waits(&mut self, now: Instant) {
        self.sweep_in_flight = None;
        for w in std::mem::take(&mut self.clock_waits) {
            self.finish_read(w.read, Some(w.now_ms), now);
        }
    }
}
