//! Shared pieces of the tools: a small blocking RESP2 client for talking to
//! raft-node from load, drill and chaos programs.

pub mod resp;
