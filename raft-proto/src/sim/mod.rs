//! A deterministic cluster simulator, the main test of this crate (feature
//! `sim`): real nodes on a virtual clock that jumps to the next deadline or
//! delivery, a seeded network (delay, loss, duplication, reordering,
//! partitions), crashes that keep only what was persisted, freezes, link
//! reports like the driver's, and safety checks after every step. Everything
//! random derives from one seed, so a seed replays a run exactly.
//!
//! Each member runs the production driver ([`crate::driver::Driver`]) over
//! a disk that lies ([`disk`]): writes are lost on a crash until a sync
//! completes, so the ordering code that keeps acknowledged writes safe is
//! the code under test.

mod checker;
mod cluster;
mod disk;
pub mod fuzz;
pub mod linearizability;
mod nemesis;
mod run;

pub use checker::{Checker, Violation};
pub use cluster::{describe, encode_write, forge_frame, Cluster, Completion, NetConfig};
pub use run::{run_seed, run_slow_network, RunOptions, RunReport};
