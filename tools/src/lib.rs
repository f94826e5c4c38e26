//! Shared pieces of the tools: a small blocking RESP2 client for talking to
//! raft-node from load, drill and chaos programs, and the chaos checker's
//! checks of the Redis workloads.

pub mod checks;
pub mod resp;
