//! The network model: what a sent message goes through (the codec, loss,
//! duplication, delay, slow answers), and the network or peer a test
//! takes over: forged messages and frames, messages held in flight.

use std::time::Duration;

use bytes::BytesMut;

use super::{Cluster, Scheduled};
use crate::codec;
use crate::{Event, Message, MessageBody, NodeId, Term};

/// The network's behaviour.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way delay is uniform in `[min_delay, max_delay)`; different delays
    /// reorder messages.
    pub min_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// How long after a process dies its peers see the connection close.
    pub eof_delay: Duration,
    /// A sync of a member's disk takes uniformly up to this.
    pub fsync_delay: Duration,
    /// Probability that a restart finds one durable record corrupt (a read
    /// fault): the member must refuse to start.
    pub corrupt_on_restart: f64,
    /// A member snapshots its state machine once it has applied this many
    /// entries since its last snapshot (0: never), and compacts its log.
    pub snapshot_every: u64,
    /// Probability that an answer (a vote, an append or snapshot answer,
    /// a read index) takes the long way: a delay uniform in
    /// `slow_reply_delay` instead (a congested or far network).
    pub slow_replies: f64,
    /// The range of a slow answer's delay.
    pub slow_reply_delay: (Duration, Duration),
    /// A member that receives a message also takes every other message
    /// for it due within this window before draining (zero: one message
    /// per drain). `raft-node` reads all its sockets, then drains once a
    /// loop turn: several answers, appends and read requests reach the
    /// node between two drains, which is what the leader's one
    /// AppendEntries per follower per drain is built on.
    pub batch_window: Duration,
    /// A member's timer fires up to this late (zero: exactly at its
    /// deadline), by an amount fixed by the seed, the member and the
    /// deadline: a real loop wakes late by varying amounts, so deadlines
    /// set from its clock drift apart, which exact wake-ups never show.
    pub timer_lateness: Duration,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
            loss: 0.0,
            duplicate: 0.0,
            eof_delay: Duration::from_millis(1),
            fsync_delay: Duration::from_millis(2),
            corrupt_on_restart: 0.0,
            snapshot_every: 0,
            slow_replies: 0.0,
            slow_reply_delay: (Duration::from_millis(200), Duration::from_millis(2200)),
            batch_window: Duration::ZERO,
            timer_lateness: Duration::ZERO,
        }
    }
}

impl Cluster {
    // ----- A hostile peer, a hostile network ---------------------------------

    /// Hands `msg` to `msg.to` now, as a broken or hostile peer would: it
    /// skips the codec (like a driver that builds messages itself), so it
    /// may be anything. Unlike honest traffic, after which a
    /// [`Event::PeerFault`] is a violation (a correct member was taken for
    /// a faulty one), what it makes the node report is collected in
    /// [`Cluster::peer_faults`]. Returns false if the addressee is down or
    /// frozen, and nothing happened.
    pub fn inject(&mut self, msg: Message) -> bool {
        let to = msg.to;
        if !self.is_up(to) {
            return false;
        }
        self.log_line(|| format!("{msg} (forged)"));
        let now = self.now;
        self.forging = true;
        self.members
            .get_mut(&to)
            .and_then(|m| m.node.as_mut())
            .expect("up")
            .handle_message(now, msg);
        self.after_input(to);
        self.forging = false;
        true
    }

    /// Like [`Cluster::inject`], but the forged message arrives as a frame
    /// on the wire ([`forge_frame`]) and goes through [`codec::decode`]
    /// first, as in the server: `Err` if the codec refused it (nothing was
    /// delivered), else whether the addressee was up.
    pub fn inject_frame(&mut self, mut frame: BytesMut) -> Result<bool, codec::DecodeError> {
        match codec::decode(&mut frame)? {
            Some(msg) => Ok(self.inject(msg)),
            None => unreachable!("a whole frame decodes to a message or an error"),
        }
    }

    /// The [`Event::PeerFault`]s reported on messages from
    /// [`Cluster::inject`], with the node that reported each.
    pub fn peer_faults(&self) -> &[(NodeId, Event)] {
        &self.peer_faults
    }

    /// From now on the caller is the network: every message sent waits in
    /// [`Cluster::in_flight`] until the caller delivers it (in any order,
    /// as often as it likes, with [`Cluster::deliver_in_flight`]) or drops
    /// it. Messages already scheduled still arrive; nothing else changes.
    pub fn take_network(&mut self) {
        self.in_flight.get_or_insert_with(Vec::new);
    }

    /// Messages sent and not yet delivered or dropped, after
    /// [`Cluster::take_network`].
    pub fn in_flight(&self) -> &[Message] {
        self.in_flight.as_deref().unwrap_or(&[])
    }

    /// Delivers the in-flight message at `i` now. With `keep`, a copy stays
    /// in flight (the network duplicates it). Out of range does nothing.
    pub fn deliver_in_flight(&mut self, i: usize, keep: bool) {
        let Some(pool) = self.in_flight.as_mut().filter(|p| i < p.len()) else {
            return;
        };
        let msg = if keep {
            pool[i].clone()
        } else {
            pool.swap_remove(i)
        };
        self.handle_scheduled(Scheduled::Deliver(msg));
    }

    /// Gives the network back to the simulator, fair again: what is in
    /// flight arrives shortly, in order, and later messages follow `net`.
    pub fn release_network(&mut self) {
        for (i, m) in self
            .in_flight
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = self.now + self.net.min_delay + Duration::from_nanos(i as u64);
            self.schedule(at, Scheduled::Deliver(m));
        }
    }

    /// Loses the in-flight message at `i`. Out of range does nothing.
    pub fn drop_in_flight(&mut self, i: usize) {
        if let Some(pool) = self.in_flight.as_mut().filter(|p| i < p.len()) {
            pool.swap_remove(i);
        }
    }

    // ----- The network model ----------------------------------------------

    /// Puts `m` on the network: through the codec and back, then, unless
    /// a test holds the network ([`Cluster::take_network`]), lost,
    /// duplicated and delayed as [`Cluster::net`] says.
    pub(super) fn transmit(&mut self, m: Message) {
        *self.sent.entry(m.kind()).or_insert(0) += 1;
        // Every message crosses the wire format, as in the real server: a
        // message the codec refuses is a bug in the node.
        let mut frame = bytes::BytesMut::new();
        crate::codec::encode(&m, &mut frame);
        let decoded = crate::codec::decode(&mut frame);
        assert!(
            matches!(&decoded, Ok(Some(d)) if *d == m) && frame.is_empty(),
            "codec round trip changed {m:?} into {decoded:?}"
        );
        if let Some(pool) = &mut self.in_flight {
            pool.push(m);
            return;
        }
        if self.rng.chance(self.net.loss) {
            return;
        }
        let copies = if self.rng.chance(self.net.duplicate) {
            2
        } else {
            1
        };
        let reply = matches!(
            m.body,
            MessageBody::RequestVoteResponse(_)
                | MessageBody::AppendEntriesResponse(_)
                | MessageBody::InstallSnapshotResponse(_)
                | MessageBody::ReadIndexResponse(_)
        );
        for _ in 0..copies {
            let (lo, hi) = if reply && self.rng.chance(self.net.slow_replies) {
                self.net.slow_reply_delay
            } else {
                (self.net.min_delay, self.net.max_delay)
            };
            let d = self.rng.range(lo.as_nanos() as u64, hi.as_nanos() as u64);
            let at = self.now + Duration::from_nanos(d);
            self.schedule(at, Scheduled::Deliver(m.clone()));
        }
    }
}

/// `msg` as a frame on the wire, whatever its term: [`codec::encode`]
/// refuses to write a term above [`Term::MAX`], so the frame is encoded
/// with `Term::MAX` in its place and the term field overwritten. What a
/// hostile or broken peer can put on a link; [`codec::decode`] judges it.
pub fn forge_frame(msg: &Message) -> BytesMut {
    // len:u32 version:u8 tag:u8 from:u64 to:u64, then term:u64.
    const TERM_AT: usize = codec::FRAME_HEADER_LEN + 1 + 8 + 8;
    let mut as_max = msg.clone();
    as_max.term = Term::MAX;
    let mut frame = BytesMut::new();
    codec::encode(&as_max, &mut frame);
    frame[TERM_AT..TERM_AT + 8].copy_from_slice(&msg.term.0.to_be_bytes());
    frame
}
