//! Where an event-loop turn spends its time, and a quiet warning when a
//! turn kept the loop from its sockets and timers for a heartbeat or more.
//!
//! A turn longer than a heartbeat delays this member's heartbeats (as a
//! leader) or its answers (as a follower); a few in a row cost an election.
//! The total alone does not say what to fix, so the loop charges each
//! stretch of a turn to a [`Phase`] and a slow turn is reported with its
//! breakdown, at most once per [`WARN_INTERVAL`] (a disk that stalls every
//! turn must not flood the log).

use std::time::{Duration, Instant};

/// Slow turns are logged at most this often; the ones in between are
/// counted and the count is given with the next line.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What a stretch of a turn was spent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading sockets, parsing and executing client requests, feeding
    /// peer messages to the node.
    Io,
    /// Client timers, peer redials, the node's timers, expiry sweeps.
    Timers,
    /// Making a finished snapshot current (rename, directory fsync).
    SnapshotCommit,
    /// The driver's work other than fsync and compaction: persisting into
    /// buffers, sending, reading snapshot chunks.
    Drive,
    /// The log's fsyncs.
    Fsync,
    /// Deleting log segments below a snapshot.
    Compaction,
    /// Applying committed entries and answering their writes and reads.
    Apply,
    /// Writing peer and client output.
    Flush,
    /// Starting a snapshot (the store's clone, the helper thread).
    SnapshotStart,
}

const PHASES: [Phase; 9] = [
    Phase::Io,
    Phase::Timers,
    Phase::SnapshotCommit,
    Phase::Drive,
    Phase::Fsync,
    Phase::Compaction,
    Phase::Apply,
    Phase::Flush,
    Phase::SnapshotStart,
];

impl Phase {
    /// A short name for INFO and metrics.
    fn id(self) -> &'static str {
        match self {
            Phase::Io => "io",
            Phase::Timers => "timers",
            Phase::SnapshotCommit => "snapshot_commit",
            Phase::Drive => "persist_send",
            Phase::Fsync => "fsync",
            Phase::Compaction => "compaction",
            Phase::Apply => "apply",
            Phase::Flush => "output",
            Phase::SnapshotStart => "snapshot_start",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Io => "socket I/O and requests",
            Phase::Timers => "timers",
            Phase::SnapshotCommit => "snapshot commit",
            Phase::Drive => "persist and send",
            Phase::Fsync => "log fsync",
            Phase::Compaction => "log compaction",
            Phase::Apply => "apply",
            Phase::Flush => "output",
            Phase::SnapshotStart => "snapshot start",
        }
    }
}

/// The time of the current turn, by phase.
#[derive(Debug)]
pub struct TurnTimer {
    started: Instant,
    mark: Instant,
    nanos: [u64; PHASES.len()],
    warned_at: Option<Instant>,
    /// Slow turns not logged since the last line.
    suppressed: u64,
}

impl TurnTimer {
    /// A timer whose first turn starts at `now`.
    pub fn new(now: Instant) -> TurnTimer {
        TurnTimer {
            started: now,
            mark: now,
            nanos: [0; PHASES.len()],
            warned_at: None,
            suppressed: 0,
        }
    }

    /// A turn starts at `now` (after the poll returned).
    pub fn begin(&mut self, now: Instant) {
        self.started = now;
        self.mark = now;
        self.nanos = [0; PHASES.len()];
    }

    /// How long the current turn has kept the loop busy so far, the log's
    /// fsyncs excepted (a budget for deferrable work; an fsync is a wait
    /// for the disk, which deferring other work would not shorten).
    pub fn busy(&self) -> Duration {
        let elapsed = self.started.elapsed();
        elapsed.saturating_sub(Duration::from_nanos(self.nanos[Phase::Fsync as usize]))
    }

    /// Charges the time since the previous lap (or the turn's start) to
    /// `phase`.
    pub fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.nanos[phase as usize] += now.saturating_duration_since(self.mark).as_nanos() as u64;
        self.mark = now;
    }

    /// Moves `nanos` already charged to `from` over to `to`: a phase timed
    /// inside another (the fsyncs inside the driver's work).
    pub fn recharge(&mut self, from: Phase, to: Phase, nanos: u64) {
        let moved = nanos.min(self.nanos[from as usize]);
        self.nanos[from as usize] -= moved;
        self.nanos[to as usize] += moved;
    }

    /// Ends the turn: how long it took, and logs it if that was a
    /// `heartbeat` or more (rate-limited).
    pub fn end(&mut self, heartbeat: Duration) -> Duration {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.started);
        if took < heartbeat {
            return took;
        }
        if self
            .warned_at
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            // Every one, for whoever asks (`RUST_LOG=raft_node::turn=debug`).
            log::debug!(
                "slow event-loop turn: {} ms ({})",
                took.as_millis(),
                self.breakdown()
            );
            return took;
        }
        let more = match self.suppressed {
            0 => String::new(),
            n => format!(
                "; {n} more slow turns in the {} s before, not logged",
                WARN_INTERVAL.as_secs()
            ),
        };
        log::warn!(
            "slow event-loop turn: {} ms, over the {} ms heartbeat ({}){more}",
            took.as_millis(),
            heartbeat.as_millis(),
            self.breakdown()
        );
        self.warned_at = Some(now);
        self.suppressed = 0;
        took
    }

    /// The phase the last turn spent most of its time on.
    pub fn dominant(&self) -> &'static str {
        PHASES
            .iter()
            .max_by_key(|&&p| self.nanos[p as usize])
            .map_or("", |p| p.id())
    }

    /// The phases that took a millisecond or more, longest first.
    fn breakdown(&self) -> String {
        let mut v: Vec<(u64, Phase)> = PHASES
            .iter()
            .map(|&p| (self.nanos[p as usize], p))
            .filter(|&(n, _)| n >= 1_000_000)
            .collect();
        v.sort_unstable_by_key(|&(n, _)| std::cmp::Reverse(n));
        if v.is_empty() {
            return "no phase over 1 ms".into();
        }
        v.iter()
            .map(|&(n, p)| format!("{} {} ms", p.name(), n / 1_000_000))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recharge_moves_time_between_phases_without_going_negative() {
        let now = Instant::now();
        let mut t = TurnTimer::new(now);
        t.nanos[Phase::Drive as usize] = 5_000_000;
        t.recharge(Phase::Drive, Phase::Fsync, 3_000_000);
        assert_eq!(t.nanos[Phase::Drive as usize], 2_000_000);
        assert_eq!(t.nanos[Phase::Fsync as usize], 3_000_000);
        // More than was charged: only what was there moves.
        t.recharge(Phase::Drive, Phase::Compaction, 9_000_000);
        assert_eq!(t.nanos[Phase::Drive as usize], 0);
        assert_eq!(t.nanos[Phase::Compaction as usize], 2_000_000);
        assert_eq!(
            t.breakdown(),
            "log fsync 3 ms, log compaction 2 ms",
            "longest first, phases under 1 ms left out"
        );
    }
}
