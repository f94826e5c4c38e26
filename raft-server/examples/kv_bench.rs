//! The store's costs at scale, in a release build:
//!
//!     cargo run --release -p raft-server --example kv_bench [-- KEYS]
//!
//! RSS of the store with KEYS keys (default 1M) of 100-byte values; apply
//! throughput of SET (decode + apply, as the server does) for new keys and
//! for overwrites; the time of `Kv::snapshot()` and of
//! `KvSnapshot::write_to` into a `Vec`, and of `Kv::read_from` back.

use std::time::Instant;

use bytes::Bytes;

#[allow(dead_code)]
#[path = "../src/kv/mod.rs"]
mod kv;

use kv::{Command, Kv, SetCond, Ttl, Write};

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

fn set(i: usize, v: u8) -> Bytes {
    let cmd = Command::Set {
        key: Bytes::from(format!("key:{i:012}")),
        value: Bytes::from(vec![v; 100]),
        cond: SetCond::Always,
        get: false,
        ttl: Ttl::Clear,
    };
    Write::new(1_700_000_000_000 + i as u64, cmd).encode_in(&mut bytes::BytesMut::new())
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("KEYS is a number"));

    // RSS: the store alone, entries built one at a time.
    let rss0 = rss_mib();
    let mut kv = Kv::new();
    for i in 0..n {
        let w = Write::decode(&set(i, b'v')).expect("valid");
        kv.apply(i as u64 + 1, &w);
    }
    println!(
        "RSS of the store with {n} keys of 100 bytes: {:.0} MiB",
        rss_mib() - rss0
    );

    // Snapshot: the O(1) clone, then writing it out while the store is
    // changed (the copy-on-write cost falls on the writes).
    let t = Instant::now();
    let snap = kv.snapshot();
    let took_snapshot = t.elapsed();
    let t = Instant::now();
    let mut out = Vec::new();
    snap.write_to(&mut out).expect("to memory");
    let took_write = t.elapsed();
    println!(
        "snapshot(): {took_snapshot:?}; write_to(Vec): {took_write:?}, {} MiB ({:.0} MiB/s)",
        out.len() >> 20,
        out.len() as f64 / (1 << 20) as f64 / took_write.as_secs_f64()
    );
    let t = Instant::now();
    let back = Kv::read_from(&mut &out[..]).expect("reads back");
    println!("read_from(&[u8]): {:?}", t.elapsed());
    assert_eq!(back.len(), kv.len());
    drop((back, out));
    let t = Instant::now();
    for i in 0..n {
        let w = Write::decode(&set(i, b'w')).expect("valid");
        kv.apply(n as u64 + i as u64 + 1, &w);
    }
    println!(
        "{n} overwrites while a snapshot is held (every node copied once): {:?}",
        t.elapsed()
    );
    drop((snap, kv));

    for round in 0..3 {
        let payloads: Vec<Bytes> = (0..n).map(|i| set(i, b'v')).collect();
        let mut kv = Kv::new();
        let t = Instant::now();
        for (i, p) in payloads.iter().enumerate() {
            std::hint::black_box(kv.apply(i as u64 + 1, &Write::decode(p).expect("valid")));
        }
        let new_keys = t.elapsed();
        let t = Instant::now();
        for (i, p) in payloads.iter().enumerate() {
            let idx = (n + i) as u64 + 1;
            std::hint::black_box(kv.apply(idx, &Write::decode(p).expect("valid")));
        }
        let overwrites = t.elapsed();
        println!(
            "round {round}: SET (decode + apply) {:.0}/s new keys, {:.0}/s overwrites",
            n as f64 / new_keys.as_secs_f64(),
            n as f64 / overwrites.as_secs_f64()
        );
    }
}
