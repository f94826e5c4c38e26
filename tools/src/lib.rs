//! Shared pieces of the tools and the process-level tests: the one RESP2
//! client, sockets bound to a chosen source address, network namespaces,
//! and the chaos checker's checks of the Redis workloads.

pub mod checks;
pub mod net;
pub mod netns;
pub mod resp;
