//! Reads that walk the key space (`KEYS`, a `SCAN` page of more than
//! [`kv::WALK_INLINE_MAX`] keys) run on a helper thread, so that no client
//! holds the event loop for the length of the store: a `KEYS *` over a
//! million keys took the loop about a second, and the member its
//! leadership with it (issue 21).
//!
//! What the read sees is unchanged. The loop hands the walk over at the
//! moment it would have answered the read itself (the ReadIndex round
//! complete, the read index applied, the store clock checked: see
//! `server/apply.rs`), with a clone of the store as it is then. The store's
//! maps are persistent (`imbl`), so the clone costs O(1) and keeps exactly
//! that state however the loop's copy moves on: the read is linearized at
//! the same point as before. The reply goes into the slot the connection
//! reserved for it, so the connection's program order holds as well.
//!
//! The reply is encoded on the helper thread too (a million keys make
//! about 20 MB of RESP), and the clone is dropped there: the tree nodes the
//! live store replaced meanwhile belong to the clone alone.
//!
//! Walks queue in order on one thread: a flood of them slows the flood,
//! not the loop. Their number is bounded by the client memory budget (each
//! holds a reply reservation, see `Kv::reply_size_hint`).

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::Waker;

use crate::kv::{self, Kv};
use crate::resp::{Protocol, Reply};

/// One walk: the store as the read must see it, and whom to answer.
struct Job<T> {
    to: T,
    kv: Kv,
    cmd: kv::Command,
    now_ms: u64,
    protocol: Protocol,
}

/// A finished walk.
pub struct Walked<T> {
    /// Whom to answer (the loop's reply slot).
    pub to: T,
    /// The reply, encoded ([`Reply::Encoded`]).
    pub reply: Reply,
    /// How long the walk and the encoding took.
    pub took: Duration,
}

/// The helper thread and its queues.
pub struct Walker<T> {
    jobs: Option<Sender<Job<T>>>,
    done: Receiver<Walked<T>>,
    thread: Option<JoinHandle<()>>,
    /// Walks handed over and not collected yet.
    in_flight: usize,
}

impl<T: Send + 'static> Walker<T> {
    /// Starts the helper thread; it wakes the loop through `waker` after
    /// each walk.
    pub fn new(waker: Arc<Waker>) -> std::io::Result<Walker<T>> {
        let (jobs, rx) = mpsc::channel::<Job<T>>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("walks".into())
            .spawn(move || {
                // Ends when the loop drops its sender.
                for job in rx {
                    let started = Instant::now();
                    let outcome = job.kv.query(&job.cmd, job.now_ms);
                    drop(job.kv);
                    let mut out = BytesMut::new();
                    crate::client::outcome_reply(outcome).encode(&mut out, job.protocol);
                    let walked = Walked {
                        to: job.to,
                        reply: Reply::Encoded(out.freeze()),
                        took: started.elapsed(),
                    };
                    if tx.send(walked).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Walker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// Hands a walk over: `kv` is the store as the read must see it (a
    /// clone: O(1)), `now_ms` the clock the inline read would have used.
    pub fn start(&mut self, to: T, kv: Kv, cmd: kv::Command, now_ms: u64, protocol: Protocol) {
        debug_assert!(cmd.walks_keyspace(), "not a walk: {cmd:?}");
        let job = Job {
            to,
            kv,
            cmd,
            now_ms,
            protocol,
        };
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        // The thread only ends when the loop lets it; a panic in it is a
        // bug, and the loop must not wait for an answer that cannot come.
        assert!(sent, "the walks thread is gone");
        self.in_flight += 1;
    }

    /// The next finished walk, if any.
    pub fn poll(&mut self) -> Option<Walked<T>> {
        if self.in_flight == 0 {
            return None;
        }
        match self.done.try_recv() {
            Ok(w) => {
                self.in_flight -= 1;
                Some(w)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => panic!("the walks thread died"),
        }
    }
}

impl<T> Drop for Walker<T> {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the walk it is on.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<T> std::fmt::Debug for Walker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walker")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mio::{Events, Poll, Token};

    fn set(kv: &mut Kv, index: u64, key: &'static str) {
        let cmd = kv::Command::Set {
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            cond: kv::SetCond::Always,
            get: false,
            ttl: kv::Ttl::Clear,
        };
        kv.apply(index, &kv::Write::new(1_700_000_000_000, cmd));
    }

    #[test]
    fn a_walk_sees_the_store_as_it_was_handed_over() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
        let mut walker = Walker::new(waker).unwrap();
        let mut kv = Kv::new();
        set(&mut kv, 1, "a");
        set(&mut kv, 2, "b");
        let keys = kv::Command::Keys {
            pattern: Bytes::from_static(b"*"),
        };
        walker.start(1u32, kv.clone(), keys.clone(), 0, Protocol::Resp2);
        // The live store moves on; the walk must not see it.
        set(&mut kv, 3, "c");
        let mut events = Events::with_capacity(4);
        let walked = loop {
            if let Some(w) = walker.poll() {
                break w;
            }
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .unwrap();
        };
        assert_eq!(walked.to, 1);
        let Reply::Encoded(bytes) = walked.reply else {
            panic!("not encoded");
        };
        let mut keys_now = BytesMut::new();
        crate::client::outcome_reply(kv.query(&keys, 0)).encode(&mut keys_now, Protocol::Resp2);
        assert_eq!(&bytes[..4], b"*2\r\n", "{bytes:?}");
        assert_ne!(bytes, keys_now.freeze());
        assert!(walker.poll().is_none());
    }
}
