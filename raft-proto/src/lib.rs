//! # raft-proto: a Sans-IO Raft state machine
//!
//! A [`Node`] is one member of a Raft cluster with no I/O of its own. The
//! driver feeds it inputs and carries out the [`Action`]s it hands back:
//!
//! ```text
//!   inputs (each takes `now`)            outputs
//!   ------------------------------       --------------------------------------
//!   handle_message(now, Message)   -->   poll_action() -> Option<Action>
//!   handle_timeout(now)                    1. SaveHardState / TruncateLog / AppendLog
//!   handle_link_down(now, peer)               (durable before anything below)
//!   handle_link_up(now, peer)              2. Send(Message)
//!   propose(now, command)                  3. Apply(Entry)
//!   read_index(now, id)                    4. ReadReady / ReadFailed
//!   shutdown()                             5. Event (logs, metrics,
//!                                             PeerFault: close that link)
//!                                        poll_timeout() -> Option<Time>
//! ```
//!
//! The driver's loop: wait for I/O or `poll_timeout()`; read the clock once;
//! feed what happened; drain `poll_action()` until `None`, performing the
//! actions in the order they come (persist and fsync, then send, then apply,
//! then answer reads); repeat. Calling `handle_timeout` early or twice is
//! harmless: it fires only what is due.
//!
//! ## The easy way: [`driver::Driver`]
//!
//! The ordering rules are subtle (a leader's AppendEntries may leave before
//! its own fsync, nothing else may; the node must be told when its log is
//! durable), so the crate carries them out itself: implement
//! [`driver::LogStore`] (write, and make durable on `sync`) and
//! [`driver::Transport`] (send), call [`driver::Driver::drain`] after every
//! input, and perform the applies, read answers and events it hands back.
//! `raft-node` and the simulator both do exactly this, so the simulator,
//! with a disk that loses unsynced writes, tests the code a server runs.
//!
//! ## If you drive the node by hand
//!
//! - **Report durability.** After each fsync, call
//!   [`Node::handle_log_persisted`] with the last entry it covered. A
//!   leader counts itself in commits only up to there (thesis §10.2.1):
//!   forget it and a leader commits only while every follower answers,
//!   which fails silently when one is away. Debug builds panic with a
//!   message if a leader holds appends and gets no durability report at
//!   all for a minute (a disk stalled that long trips it too).
//! - **Errors of [`Node::propose`]** are all ordinary outcomes:
//!   [`ProposeError::NotLeader`] (retry at `leader`, or later if `None`),
//!   [`ProposeError::Busy`] (too many uncommitted proposals: back off and
//!   retry), [`ProposeError::TooLarge`] (never retry: the command exceeds
//!   [`MAX_ENTRY_LEN`]). A proposal that was accepted took effect if and
//!   only if the entry applied at its [`EntryId`]'s index has its term.
//! - **A durable state machine** passes how far it applied in
//!   [`PersistentState::applied`]; the node then applies only what follows.
//!   Without it (0), every entry in the log is applied again after a
//!   restart, which suits a state machine rebuilt in memory.
//! - Command payloads are [`Bytes`], re-exported here.
//!
//! The crate never reads a clock ([`Time`] is passed in), never touches a
//! socket or a file, and draws all randomness from a PRNG seeded through
//! [`Config::seed`]: the same inputs give the same outputs, which is what
//! the deterministic simulator (feature `sim`) relies on.
//!
//! Everything a peer sends is untrusted. Bytes become a [`Message`] only
//! through [`codec::decode`], which checks every length and bound, among
//! them [`Term::MAX`] for every term field and [`MAX_ENTRY_LEN`] for every
//! command. The node then drops any message no correct member sends (a
//! second leader in its term, a contradiction of a committed entry, an
//! answer to something it never sent, ...) without changing any state, and
//! reports it as [`Event::PeerFault`]; the driver logs it and closes that
//! peer's link. Nothing a peer sends makes the node panic: its assertions
//! guard only its own invariants. [`Node::propose`] refuses a command above
//! [`MAX_ENTRY_LEN`] ([`ProposeError::TooLarge`]), so that no member ever
//! holds an entry another would refuse.
//!
//! Terms get one more defence, because a term is the one field a single
//! message can use to stop a cluster for good: a member that adopts a term
//! near [`Term::MAX`] can never campaign past it. So no message moves a
//! node's term by more than [`Term::MAX_JUMP`] (2^32; an honest cluster
//! needs some 40 years of elections to run that far ahead of a member).
//! A term beyond that is kept as its sender's claim, one per voter; the
//! node moves there once two voters other than itself, and with it a
//! majority of the voters, claim it, or, if it has heard no leader for an
//! election timeout, moves by the bound toward it. One faulty member,
//! whatever it sends, moves a node by the bound at most, and a node with
//! a live leader not at all; a member that fell behind still catches up
//! ([`Node::term_claims`] shows what it still refuses). A member that
//! keeps forging (outside the threat model; Raft tolerates crashes, not
//! lies, and a faulty voter can refuse its votes anyway) moves leaderless
//! nodes by the bound once per election timeout: 2^30 timeouts before
//! anyone reaches [`Term::MAX`].
//!
//! Protocol: leader election with randomized timeouts, PreVote and
//! CheckQuorum (on by default), fast failover when the driver reports the
//! leader's link lost, log replication with conflict hints, bounded batching
//! and pipelining, the leader's no-op and the §5.4.2 commit rule, and
//! linearizable reads by ReadIndex (no lease reads).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod action;
mod candidate;
pub mod codec;
mod config;
pub mod driver;
mod follower;
mod leader;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod quorum;
mod read;
mod rng;
mod term_rules;
mod types;

#[cfg(feature = "sim")]
pub mod sim;

pub use action::{
    Action, ElectionReason, Event, MembershipError, PeerFault, ProposeError, ReadError, Role,
    RoleChangeReason, TransferError,
};
/// Command payloads are [`Bytes`]: re-exported so that a driver needs no
/// direct dependency on the `bytes` crate to call [`Node::propose`].
pub use bytes::Bytes;
pub use config::{Config, ConfigError, MIN_HEARTBEATS_PER_TIMEOUT};
pub use membership::PeerProgress;
pub use message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, ReadIndexRequest, ReadIndexResponse, RequestVote, RequestVoteResponse,
};
pub use node::{Node, PersistentState, Status};
pub use rng::Rng;
pub use types::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, MembershipChange, NodeId,
    SnapshotMeta, Term, Time, MAX_ENTRY_LEN, MAX_MEMBERS, MAX_MEMBERSHIP_CONTEXT,
};
