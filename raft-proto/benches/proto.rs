//! `make bench`: the costs of the protocol itself, with no I/O.
//!
//! - follower AppendEntries handling: entries/s, 64 entries of 100 bytes
//!   per message;
//! - the leader's commit path in a 3-node in-process cluster with an
//!   instant network: commits/s, one proposal at a time and batched;
//! - codec encode and decode of that AppendEntries: MB/s.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft_proto::codec;
use raft_proto::{
    Action, AppendEntries, Config, Entry, EntryPayload, LogIndex, Message, MessageBody, Node,
    NodeId, PersistentState, Role, Term, Time,
};

const BATCH: u64 = 64;
const PAYLOAD: usize = 100;

fn voters() -> Vec<NodeId> {
    vec![NodeId(1), NodeId(2), NodeId(3)]
}

fn append_batch(prev: u64, commit: u64) -> Message {
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let entries = (1..=BATCH)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(prev + i),
            payload: EntryPayload::Command(payload.clone()),
        })
        .collect();
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(if prev == 0 { 0 } else { 1 }),
            entries,
            leader_commit: LogIndex(commit),
            round: 0,
        }),
    }
}

fn follower_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("follower");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("append_entries_64x100B", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // A fresh follower every 1024 batches keeps memory bounded.
                let mut node = Node::new(
                    Config::new(NodeId(2), voters()),
                    PersistentState::default(),
                    Time::ZERO,
                )
                .unwrap();
                let msgs: Vec<Message> = (0..1024.min(iters - done))
                    .map(|k| append_batch(k * BATCH, k * BATCH))
                    .collect();
                let start = Instant::now();
                for m in msgs {
                    node.handle_message(Time::ZERO, m);
                    while let Some(a) = node.poll_action() {
                        // By reference: `criterion::black_box` read the whole
                        // action with a volatile, byte-by-byte copy, which
                        // cost more than the node's work once `Action` grew.
                        black_box(&a);
                    }
                }
                total += start.elapsed();
                done += 1024.min(iters - done);
            }
            total
        })
    });
    g.finish();
}

/// Three nodes wired back to back: every sent message is delivered at once.
struct Instant3 {
    nodes: Vec<Node>,
    wire: VecDeque<Message>,
    applied: LogIndex,
}

impl Instant3 {
    fn new() -> Instant3 {
        let nodes = (1..=3)
            .map(|i| {
                Node::new(
                    Config::new(NodeId(i), voters()),
                    PersistentState::default(),
                    Time::ZERO,
                )
                .unwrap()
            })
            .collect();
        let mut c = Instant3 {
            nodes,
            wire: VecDeque::new(),
            applied: LogIndex(0),
        };
        let t = Time::ZERO + Duration::from_secs(1);
        c.nodes[0].handle_timeout(t);
        c.pump(t);
        assert_eq!(c.nodes[0].role(), Role::Leader);
        c
    }

    fn drain(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].poll_action() {
            match a {
                Action::Send(m) => self.wire.push_back(m),
                Action::Apply(e) if i == 0 => self.applied = e.index,
                other => {
                    black_box(&other);
                }
            }
        }
    }

    fn pump(&mut self, now: Time) {
        for i in 0..3 {
            self.drain(i);
        }
        while let Some(m) = self.wire.pop_front() {
            let to = (m.to.0 - 1) as usize;
            self.nodes[to].handle_message(now, m);
            self.drain(to);
        }
    }
}

fn leader_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("leader");
    let now = Time::ZERO + Duration::from_secs(1);
    let cmd = Bytes::from(vec![1u8; PAYLOAD]);
    for batch in [1u64, 64] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("commit_3_nodes_batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let mut cl = Instant3::new();
                    let n = 4096.min(iters - done);
                    let start = Instant::now();
                    for _ in 0..n {
                        let mut last = LogIndex(0);
                        for _ in 0..batch {
                            last = cl.nodes[0].propose(now, cmd.clone()).unwrap().index;
                        }
                        cl.pump(now);
                        assert!(cl.applied >= last);
                    }
                    total += start.elapsed();
                    done += n;
                }
                total
            })
        });
    }
    g.finish();
}

fn codec_bench(c: &mut Criterion) {
    let msg = append_batch(1000, 1000);
    let mut buf = BytesMut::new();
    codec::encode(&msg, &mut buf);
    let frame = buf.freeze();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode_append_64x100B", |b| {
        let mut out = BytesMut::with_capacity(frame.len() * 2);
        b.iter(|| {
            out.clear();
            codec::encode(black_box(&msg), &mut out);
        })
    });
    g.bench_function("decode_append_64x100B", |b| {
        b.iter(|| {
            let mut src = BytesMut::from(&frame[..]);
            black_box(codec::decode(&mut src).unwrap().unwrap());
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = follower_append, leader_commit, codec_bench
}
criterion_main!(benches);
