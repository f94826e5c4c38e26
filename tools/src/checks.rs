//! What `raft-chaos` checks about the Redis commands beyond registers (the
//! register workload goes through `raft_proto::sim::linearizability`):
//! counters never lose or double an increment, `SET NX` lets one writer
//! win, a transaction's writes are seen together, WATCH never lets two
//! read-modify-writes both land, and a fenced write with a stale token
//! never lands.
//!
//! Each check takes what the clients recorded: acknowledged operations,
//! operations whose outcome is unknown (timed out, connection lost), and
//! the final state read after the cluster healed. Times are any monotonic
//! unit (nanoseconds since the run's start).

use std::collections::{HashMap, HashSet};

/// The INCR workload (and any counter that only goes up by one per
/// operation: WATCH-guarded increments, transactions).
#[derive(Debug, Default, Clone)]
pub struct Counter {
    /// Values returned by acknowledged increments (INCR's reply; for a
    /// read-modify-write, the value it set).
    pub acked: Vec<i64>,
    /// Increments whose outcome is unknown.
    pub unknown: u64,
    /// The value read after healing (absent: 0).
    pub final_value: i64,
}

/// Every acknowledged increment counted exactly once: no two returned the
/// same value (one lost or doubled), and the final value is between the
/// acknowledged count and that plus the unknown ones.
pub fn check_counter(name: &str, c: &Counter) -> Result<(), String> {
    let mut seen = HashSet::new();
    for v in &c.acked {
        if !seen.insert(v) {
            return Err(format!(
                "{name}: two acknowledged increments both produced {v}: one was lost or doubled"
            ));
        }
        if *v > c.final_value || *v < 1 {
            return Err(format!(
                "{name}: an acknowledged increment produced {v}, but the counter ends at {}",
                c.final_value
            ));
        }
    }
    let acked = c.acked.len() as i64;
    if c.final_value < acked {
        return Err(format!(
            "{name}: {acked} increments acknowledged but the counter is {}: increments lost",
            c.final_value
        ));
    }
    if c.final_value > acked + c.unknown as i64 {
        return Err(format!(
            "{name}: counter {} exceeds {acked} acknowledged + {} unknown increments: doubled",
            c.final_value, c.unknown
        ));
    }
    Ok(())
}

/// One `SET key value NX` attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NxOutcome {
    /// `+OK`: this client's value was set.
    Set,
    /// Nil: the key existed.
    Refused,
    /// Timed out or lost.
    Unknown,
}

/// A race of `SET NX` on one key: at most one acknowledged winner; the
/// final value is the winner's (or, without one, an unknown attempt's, or
/// nothing); a refused attempt means some value landed.
pub fn check_nx(
    key: &str,
    attempts: &[(u64, NxOutcome)],
    final_value: Option<u64>,
) -> Result<(), String> {
    let winners: Vec<u64> = attempts
        .iter()
        .filter(|(_, o)| *o == NxOutcome::Set)
        .map(|(v, _)| *v)
        .collect();
    if winners.len() > 1 {
        return Err(format!(
            "{key}: SET NX acknowledged for {winners:?}: two winners"
        ));
    }
    match (winners.first(), final_value) {
        (Some(w), Some(f)) if *w == f => Ok(()),
        (Some(w), f) => Err(format!(
            "{key}: SET NX of {w} acknowledged, the key holds {f:?}"
        )),
        (None, None) if attempts.iter().any(|(_, o)| *o == NxOutcome::Refused) => Err(format!(
            "{key}: a SET NX was refused (the key existed) but the key is empty"
        )),
        (None, None) => Ok(()),
        (None, Some(f)) => {
            if attempts
                .iter()
                .any(|(v, o)| *v == f && *o == NxOutcome::Unknown)
            {
                Ok(())
            } else {
                Err(format!(
                    "{key}: holds {f}, which no unacknowledged SET NX wrote"
                ))
            }
        }
    }
}

/// Reads of two keys that every transaction increments together: each read
/// (an `MGET`, itself atomic) must see them equal.
pub fn check_pairs(name: &str, reads: &[(i64, i64)]) -> Result<(), String> {
    match reads.iter().find(|(a, b)| a != b) {
        Some((a, b)) => Err(format!(
            "{name}: a read saw {a} and {b}: half a transaction"
        )),
        None => Ok(()),
    }
}

/// One lock acquisition, as acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// Who.
    pub owner: u64,
    /// The fencing token.
    pub token: u64,
    /// When the reply arrived.
    pub complete: u64,
}

/// How a `FENCED.SET` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencedOutcome {
    /// `+OK`.
    Ok,
    /// `-FENCED ...`: refused.
    Refused,
    /// Timed out or lost.
    Unknown,
}

/// One `FENCED.SET lock token key value`, value unique per write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedWrite {
    /// Its token.
    pub token: u64,
    /// Its unique value.
    pub value: u64,
    /// When it was sent.
    pub invoke: u64,
    /// When its reply arrived (unknown: never).
    pub complete: Option<u64>,
    /// How it ended.
    pub outcome: FencedOutcome,
}

/// A completed read of the fenced key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedRead {
    /// The value seen (None: absent).
    pub value: Option<u64>,
    /// When it was sent.
    pub invoke: u64,
    /// When its reply arrived.
    pub complete: u64,
}

/// Fencing: tokens strictly order acquisitions (two owners never share
/// one); a refused write is never seen; a write with a token older than an
/// acquisition acknowledged before the write was sent is refused, and never
/// seen; and what reads see never goes back to an older token: once a read
/// (or an acknowledged write) with token T is over, no later read sees a
/// token below T.
pub fn check_fencing(
    acquired: &[Acquired],
    writes: &[FencedWrite],
    reads: &[FencedRead],
) -> Result<(), String> {
    let mut owner_of: HashMap<u64, u64> = HashMap::new();
    for a in acquired {
        if let Some(o) = owner_of.insert(a.token, a.owner) {
            if o != a.owner {
                return Err(format!(
                    "token {} granted to owners {o} and {}",
                    a.token, a.owner
                ));
            }
        }
    }
    let by_value: HashMap<u64, &FencedWrite> = writes.iter().map(|w| (w.value, w)).collect();
    for r in reads {
        let Some(v) = r.value else { continue };
        let Some(w) = by_value.get(&v) else {
            return Err(format!("a read saw {v}, which no FENCED.SET wrote"));
        };
        if w.outcome == FencedOutcome::Refused {
            return Err(format!(
                "a read saw {v}, written with token {} by a FENCED.SET that was refused",
                w.token
            ));
        }
    }
    for w in writes {
        let newer = acquired
            .iter()
            .find(|a| a.token > w.token && a.complete < w.invoke);
        if let Some(a) = newer {
            if w.outcome == FencedOutcome::Ok {
                return Err(format!(
                    "FENCED.SET with token {} acknowledged after token {} was granted",
                    w.token, a.token
                ));
            }
            if reads.iter().any(|r| r.value == Some(w.value)) {
                return Err(format!(
                    "a stale write (token {}, after token {} was granted) landed: it was read",
                    w.token, a.token
                ));
            }
        }
    }
    // Token order over real time: events that are over before a read
    // starts bound the token it may see from below.
    let token_of = |v: Option<u64>| v.and_then(|v| by_value.get(&v)).map_or(0, |w| w.token);
    let mut floor: Vec<(u64, u64, &str)> = reads
        .iter()
        .map(|r| (r.complete, token_of(r.value), "read"))
        .chain(
            writes
                .iter()
                .filter(|w| w.outcome == FencedOutcome::Ok)
                .map(|w| {
                    (
                        w.complete.unwrap_or(u64::MAX),
                        w.token,
                        "acknowledged write",
                    )
                }),
        )
        .collect();
    floor.sort_unstable();
    let mut sorted: Vec<&FencedRead> = reads.iter().collect();
    sorted.sort_by_key(|r| r.invoke);
    let (mut i, mut max, mut why) = (0, 0, "");
    for r in sorted {
        while i < floor.len() && floor[i].0 < r.invoke {
            if floor[i].1 > max {
                max = floor[i].1;
                why = floor[i].2;
            }
            i += 1;
        }
        let t = token_of(r.value);
        if t < max {
            return Err(format!(
                "a read saw token {t} after a {why} with token {max} was over: a stale write landed"
            ));
        }
    }
    Ok(())
}

/// A read of a key written with `SET key value PXAT deadline`: when it was
/// sent (wall clock, ms) and the deadline of the value it saw, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryRead {
    /// When the read was sent, ms since the Unix epoch.
    pub sent_ms: u64,
    /// The deadline of the value it returned (None: absent).
    pub seen_deadline_ms: Option<u64>,
}

/// Expiry is never late to a read: a read sent after a value's deadline
/// (plus `slack_ms` for the two clocks, both the machine's) never returns
/// that value.
pub fn check_expiry(reads: &[ExpiryRead], slack_ms: u64) -> Result<(), String> {
    for r in reads {
        if let Some(d) = r.seen_deadline_ms {
            if r.sent_ms > d + slack_ms {
                return Err(format!(
                    "a read sent {} ms after a value's deadline returned it",
                    r.sent_ms - d
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        let c = |acked: Vec<i64>, unknown, final_value| Counter {
            acked,
            unknown,
            final_value,
        };
        assert!(check_counter("c", &c(vec![1, 2, 3], 0, 3)).is_ok());
        assert!(check_counter("c", &c(vec![1, 3], 1, 3)).is_ok());
        assert!(
            check_counter("c", &c(vec![1, 3], 0, 2)).is_err(),
            "3 > final"
        );
        assert!(
            check_counter("c", &c(vec![1, 2, 2], 0, 3)).is_err(),
            "doubled"
        );
        assert!(check_counter("c", &c(vec![1, 2], 0, 1)).is_err(), "lost");
        assert!(
            check_counter("c", &c(vec![1, 2], 1, 4)).is_err(),
            "too many"
        );
        assert!(check_counter("c", &c(vec![], 0, 0)).is_ok());
    }

    #[test]
    fn nx_races() {
        use NxOutcome::*;
        assert!(check_nx("k", &[(1, Set), (2, Refused)], Some(1)).is_ok());
        assert!(check_nx("k", &[(1, Set), (2, Set)], Some(1)).is_err());
        assert!(check_nx("k", &[(1, Set), (2, Unknown)], Some(2)).is_err());
        assert!(check_nx("k", &[(1, Unknown), (2, Refused)], Some(1)).is_ok());
        assert!(check_nx("k", &[(1, Unknown), (2, Refused)], None).is_err());
        assert!(check_nx("k", &[(1, Unknown)], None).is_ok());
        assert!(check_nx("k", &[(1, Refused)], Some(7)).is_err());
    }

    #[test]
    fn expiry() {
        let r = |sent_ms, seen_deadline_ms| ExpiryRead {
            sent_ms,
            seen_deadline_ms,
        };
        assert!(check_expiry(&[r(100, Some(200)), r(300, None), r(203, Some(200))], 5).is_ok());
        assert!(check_expiry(&[r(206, Some(200))], 5).is_err());
    }

    #[test]
    fn pairs() {
        assert!(check_pairs("tx", &[(0, 0), (3, 3)]).is_ok());
        assert!(check_pairs("tx", &[(3, 2)]).is_err());
    }

    fn w(
        token: u64,
        value: u64,
        invoke: u64,
        complete: Option<u64>,
        outcome: FencedOutcome,
    ) -> FencedWrite {
        FencedWrite {
            token,
            value,
            invoke,
            complete,
            outcome,
        }
    }

    fn r(value: Option<u64>, invoke: u64, complete: u64) -> FencedRead {
        FencedRead {
            value,
            invoke,
            complete,
        }
    }

    #[test]
    fn fencing() {
        use FencedOutcome::*;
        let acq = vec![
            Acquired {
                owner: 1,
                token: 10,
                complete: 5,
            },
            Acquired {
                owner: 2,
                token: 20,
                complete: 50,
            },
        ];
        let writes = vec![
            w(10, 100, 10, Some(20), Ok),
            w(20, 200, 60, Some(70), Ok),
            // Owner 1, paused past its lease, tries again: refused.
            w(10, 101, 80, Some(90), Refused),
        ];
        let reads = vec![
            r(Some(100), 25, 30),
            r(Some(200), 75, 78),
            r(Some(200), 100, 110),
        ];
        assert_eq!(check_fencing(&acq, &writes, &reads), Result::Ok(()));
        // The refused write was seen.
        let bad = vec![r(Some(101), 100, 110)];
        assert!(check_fencing(&acq, &writes, &bad)
            .unwrap_err()
            .contains("refused"));
        // A stale write acknowledged.
        let mut stale = writes.clone();
        stale[2].outcome = Ok;
        assert!(check_fencing(&acq, &stale, &reads)
            .unwrap_err()
            .contains("acknowledged after"));
        // A stale write of unknown outcome that was read.
        stale[2].outcome = Unknown;
        stale[2].complete = None;
        let seen = vec![r(Some(101), 100, 110)];
        assert!(check_fencing(&acq, &stale, &seen)
            .unwrap_err()
            .contains("landed"));
        // Tokens going back in time: token 20 read, then token 10 read.
        let back = vec![r(Some(200), 75, 78), r(Some(100), 79, 85)];
        assert!(check_fencing(&acq, &writes, &back)
            .unwrap_err()
            .contains("stale write landed"));
        // Overlapping reads may see either.
        let overlap = vec![r(Some(200), 75, 90), r(Some(100), 65, 80)];
        assert_eq!(check_fencing(&acq, &writes, &overlap), Result::Ok(()));
        // Two owners with one token.
        let twice = vec![
            Acquired {
                owner: 1,
                token: 10,
                complete: 5,
            },
            Acquired {
                owner: 2,
                token: 10,
                complete: 6,
            },
        ];
        assert!(check_fencing(&twice, &[], &[]).is_err());
        // A value nobody wrote.
        assert!(check_fencing(&acq, &writes, &[r(Some(999), 1, 2)]).is_err());
    }
}
