//! A linearizability checker for histories of reads and writes on registers
//! (one register per key), after Wing & Gong with Lowe's memoization
//! ("Testing for linearizability", 2017), as in Porcupine and Knossos.
//!
//! Writes carry unique values, as Jepsen-style workloads arrange. Each key is
//! checked on its own (linearizability is compositional, Herlihy & Wing).
//! A write whose outcome is unknown (timed out, connection lost) may take
//! effect at any time after its invocation, or never; reads that failed are
//! left out, since they had no effect.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A register value; writes use unique ones.
pub type Value = u64;

/// What an operation did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpKind {
    /// Wrote this value.
    Write(Value),
    /// Read and observed this value (`None`: the key was absent).
    Read(Option<Value>),
}

/// One completed (or possibly completed) operation on one key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Op {
    /// Which client ran it (for reports).
    pub client: u64,
    /// The register it acted on.
    pub key: u64,
    /// What it did.
    pub kind: OpKind,
    /// When it was invoked (any monotonic unit, e.g. nanoseconds).
    pub invoke: u64,
    /// When it completed successfully; `None` for a write whose outcome is
    /// unknown (it may take effect at any time after `invoke`, or never).
    /// Reads must have completed.
    pub complete: Option<u64>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.complete {
            Some(c) => format!("{:.3}s", c as f64 / 1e9),
            None => "?".to_string(),
        };
        match self.kind {
            OpKind::Write(v) => write!(
                f,
                "client {} write(key {}, {v}) [{:.3}s, {end}]",
                self.client,
                self.key,
                self.invoke as f64 / 1e9
            ),
            OpKind::Read(r) => write!(
                f,
                "client {} read(key {}) -> {} [{:.3}s, {end}]",
                self.client,
                self.key,
                r.map_or("nil".to_string(), |v| v.to_string()),
                self.invoke as f64 / 1e9
            ),
        }
    }
}

/// A key whose history has no linearization.
#[derive(Clone, Debug)]
pub struct NonLinearizable {
    /// The key.
    pub key: u64,
    /// The smallest window of its history found without a linearization:
    /// the operations overlapping the point where every search failed.
    pub window: Vec<Op>,
}

impl fmt::Display for NonLinearizable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history of key {} is not linearizable; smallest failing window:",
            self.key
        )?;
        for op in &self.window {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Checks every key's history; the first key found non-linearizable is reported.
pub fn check(history: &[Op]) -> Result<(), NonLinearizable> {
    let mut by_key: BTreeMap<u64, Vec<Op>> = BTreeMap::new();
    for op in history {
        assert!(
            op.complete.is_some() || matches!(op.kind, OpKind::Write(_)),
            "a read with unknown outcome must be left out of the history"
        );
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, ops) in by_key {
        check_key(key, ops)?;
    }
    Ok(())
}

fn check_key(key: u64, mut ops: Vec<Op>) -> Result<(), NonLinearizable> {
    // An unknown write that nobody read can be taken never to have happened:
    // if it took effect, no read saw it, so dropping it breaks no read.
    let read_values: HashSet<Value> = ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Read(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    ops.retain(|o| match o.kind {
        OpKind::Write(v) => o.complete.is_some() || read_values.contains(&v),
        OpKind::Read(_) => true,
    });
    // A read of a value nobody wrote can never be linearized.
    let written: HashSet<Value> = ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Write(v) => Some(v),
            _ => None,
        })
        .collect();
    if let Some(bad) = ops
        .iter()
        .find(|o| matches!(o.kind, OpKind::Read(Some(v)) if !written.contains(&v)))
    {
        return Err(NonLinearizable {
            key,
            window: vec![*bad],
        });
    }
    Search::new(&ops)
        .run()
        .map_err(|window| NonLinearizable { key, window })
}

/// Lowe's just-in-time linearization search over a doubly linked list of
/// call and return events.
struct Search<'a> {
    ops: &'a [Op],
    /// Events: `2*i` is op i's call, `2*i+1` its return. Linked in time
    /// order, with a sentinel head at index `2n`.
    next: Vec<usize>,
    prev: Vec<usize>,
}

const NIL: usize = usize::MAX;

impl<'a> Search<'a> {
    fn new(ops: &'a [Op]) -> Search<'a> {
        let n = ops.len();
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, op) in ops.iter().enumerate() {
            // Calls sort before returns at equal times: touching operations
            // count as concurrent, the conservative reading of a tie.
            events.push((op.invoke, 0, 2 * i));
            events.push((op.complete.unwrap_or(u64::MAX), 1, 2 * i + 1));
        }
        events.sort();
        let head = 2 * n;
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for &(_, _, e) in &events {
            next[last] = e;
            prev[e] = last;
            last = e;
        }
        Search { ops, next, prev }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn run(mut self) -> Result<(), Vec<Op>> {
        let n = self.ops.len();
        let head = 2 * n;
        let words = n.div_ceil(64).max(1);
        let mut linearized = vec![0u64; words];
        let mut state: Option<Value> = None;
        let mut cache: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
        let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
        // The deepest point reached, for the report.
        let mut best_depth = 0usize;
        let mut best_event = NIL;
        let mut entry = self.next[head];
        while self.next[head] != NIL {
            if entry == NIL {
                // Ran off the end without meeting a return: cannot happen,
                // since every call's return follows it.
                unreachable!("linearizability search: call without a return");
            }
            if entry.is_multiple_of(2) {
                let i = entry / 2;
                let (ok, new_state) = match self.ops[i].kind {
                    OpKind::Write(v) => (true, Some(v)),
                    OpKind::Read(r) => (r == state, state),
                };
                if ok {
                    let mut lin = linearized.clone();
                    lin[i / 64] |= 1 << (i % 64);
                    if cache.insert((lin.clone(), new_state)) {
                        stack.push((entry, state));
                        state = new_state;
                        linearized = lin;
                        self.unlink(entry);
                        self.unlink(entry + 1);
                        entry = self.next[head];
                        continue;
                    }
                }
                entry = self.next[entry];
            } else {
                // A return: its operation had to be linearized by now.
                if stack.len() >= best_depth {
                    best_depth = stack.len();
                    best_event = entry;
                }
                let Some((call, old_state)) = stack.pop() else {
                    return Err(self.window(best_event));
                };
                let i = call / 2;
                state = old_state;
                linearized[i / 64] &= !(1 << (i % 64));
                self.relink(call + 1);
                self.relink(call);
                entry = self.next[call];
            }
        }
        Ok(())
    }

    /// The operations concurrent with the return event where the deepest
    /// search got stuck: the smallest window that shows the problem.
    fn window(&self, stuck: usize) -> Vec<Op> {
        let op = &self.ops[stuck / 2];
        let t = op.complete.unwrap_or(u64::MAX);
        let mut w: Vec<Op> = self
            .ops
            .iter()
            .filter(|o| o.invoke <= t && o.complete.is_none_or(|c| c >= op.invoke))
            .copied()
            .collect();
        // Plus the last completed write before the window, which fixes the
        // state the window starts from.
        if let Some(before) = self
            .ops
            .iter()
            .filter(|o| {
                matches!(o.kind, OpKind::Write(_)) && o.complete.is_some_and(|c| c < op.invoke)
            })
            .max_by_key(|o| o.complete)
        {
            w.insert(0, *before);
        }
        w.sort_by_key(|o| o.invoke);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: u64, v: Value, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client,
            key: 0,
            kind: OpKind::Write(v),
            invoke,
            complete,
        }
    }
    fn r(client: u64, v: Option<Value>, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: 0,
            kind: OpKind::Read(v),
            invoke,
            complete: Some(complete),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            w(1, 1, 0, Some(10)),
            r(2, Some(1), 20, 30),
            w(1, 2, 40, Some(50)),
            r(2, Some(2), 60, 70),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn initial_read_of_nil() {
        assert!(check(&[r(1, None, 0, 5), w(2, 7, 10, Some(20))]).is_ok());
        assert!(check(&[w(2, 7, 0, Some(5)), r(1, None, 10, 20)]).is_err());
    }

    #[test]
    fn stale_read_is_caught() {
        // Write 2 completed before the read began, yet the read saw 1.
        let h = [
            w(1, 1, 0, Some(10)),
            w(1, 2, 20, Some(30)),
            r(2, Some(1), 40, 50),
        ];
        let err = check(&h).unwrap_err();
        assert_eq!(err.key, 0);
        assert!(err.window.iter().any(|o| o.kind == OpKind::Read(Some(1))));
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        let h = [
            w(1, 1, 0, Some(100)),
            r(2, Some(1), 10, 20),
            r(3, None, 5, 15),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn reads_must_agree_on_order() {
        // Two writes concurrent with two sequential reads by one client: the
        // reads see 1 then 2, while a third client sees 2 then 1 after both
        // writes completed. No single order explains both.
        let h = [
            w(1, 1, 0, Some(100)),
            w(2, 2, 0, Some(100)),
            r(3, Some(2), 110, 120),
            r(3, Some(1), 130, 140),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let late = [
            w(1, 1, 0, None),
            r(2, None, 10, 20),
            r(2, Some(1), 1000, 1010),
        ];
        assert!(check(&late).is_ok());
        let never = [w(1, 1, 0, None), r(2, None, 1000, 1010)];
        assert!(check(&never).is_ok());
        // But not before it was invoked.
        let early = [r(2, Some(1), 0, 5), w(1, 1, 10, None)];
        assert!(check(&early).is_err());
    }

    #[test]
    fn read_of_unwritten_value_fails() {
        assert!(check(&[r(1, Some(99), 0, 1)]).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let mut a = w(1, 1, 0, Some(10));
        a.key = 1;
        let mut b = r(2, None, 20, 30);
        b.key = 2;
        assert!(check(&[a, b]).is_ok());
    }

    #[test]
    fn many_concurrent_writers_stay_tractable() {
        // 200 operations in overlapping waves of 8: the memoized search
        // must finish quickly.
        let mut h = Vec::new();
        let mut v = 0;
        for wave in 0..25u64 {
            let t = wave * 100;
            for c in 0..7u64 {
                v += 1;
                h.push(w(c, v, t, Some(t + 50)));
            }
            h.push(r(9, Some(v), t + 60, t + 70));
        }
        assert!(check(&h).is_ok());
    }
}
