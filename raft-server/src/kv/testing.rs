//! Helpers shared by the store's unit tests: a store driven through a log
//! of encoded entries, checking the invariants after each.

use bytes::Bytes;

use super::{Command, Kv, Outcome, SetCond, Ttl, Write};

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn set(k: &str, v: &str) -> Command {
    Command::Set {
        key: b(k),
        value: b(v),
        cond: SetCond::Always,
        get: false,
        ttl: Ttl::Clear,
    }
}

/// A store and a log position: applies commands at increasing indexes
/// and stamps, checking the invariants after each.
pub struct Log {
    pub kv: Kv,
    pub index: u64,
    pub now_ms: u64,
}

impl Log {
    pub fn new() -> Log {
        Log {
            kv: Kv::new(),
            index: 0,
            now_ms: 1_700_000_000_000,
        }
    }

    pub fn run(&mut self, cmd: Command) -> Outcome {
        self.index += 1;
        let w = Write::new(self.now_ms, cmd);
        // Every command survives its encoding.
        let w = Write::decode(&w.encode()).expect("decodes");
        let out = self.kv.apply(self.index, &w);
        self.kv.check_invariants();
        out
    }

    pub fn q(&self, cmd: Command) -> Outcome {
        self.kv.query(&cmd, self.now_ms)
    }

    pub fn get(&self, k: &str) -> Outcome {
        self.q(Command::Get { key: b(k) })
    }

    pub fn ttl_ms(&self, k: &str) -> Outcome {
        self.q(Command::TimeToLive {
            key: b(k),
            ms: true,
        })
    }
}

pub fn bulk(s: &str) -> Outcome {
    Outcome::Bulk(b(s))
}
