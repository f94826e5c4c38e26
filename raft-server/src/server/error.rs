//! Why the server could not start, and why its loop stopped.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::storage::StorageError;

/// Why the server could not start. `Display` is one line.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be bound.
    Bind {
        /// The cluster file.
        config: String,
        /// Which address.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The node refused its configuration.
    Node(raft_proto::ConfigError),
    /// The poll or the signal handlers could not be set up.
    Io(io::Error),
    /// The snapshot in the data dir could not be loaded.
    Snapshot(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind {
                config,
                what,
                addr,
                source,
            } => write!(f, "{config}: cannot listen on {what} {addr}: {source}"),
            StartError::Node(
                e @ (raft_proto::ConfigError::PersistedTermAboveMax { .. }
                | raft_proto::ConfigError::AppliedBeyondLog { .. }
                | raft_proto::ConfigError::LogDoesNotFollowSnapshot { .. }),
            ) => write!(f, "the data dir's durable state is refused: {e}"),
            StartError::Snapshot(e) => write!(f, "the data dir's snapshot is refused: {e}"),
            StartError::Node(e) => write!(f, "invalid Raft configuration: {e}"),
            StartError::Io(e) => write!(f, "cannot set up the event loop: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why the loop stopped other than by a signal. The process must exit: the
/// durable state can no longer be trusted to match what was acknowledged.
#[derive(Debug)]
pub enum FatalError {
    /// A write or fsync of the data dir failed.
    Storage(StorageError),
    /// `epoll_wait` failed.
    Poll(io::Error),
    /// A snapshot the store had checked and installed could not be loaded.
    Snapshot(String),
}

impl fmt::Display for FatalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatalError::Storage(e) => write!(f, "storage failure, stopping: {e}"),
            FatalError::Poll(e) => write!(f, "poll failed, stopping: {e}"),
            FatalError::Snapshot(e) => {
                write!(f, "cannot load the installed snapshot, stopping: {e}")
            }
        }
    }
}

impl std::error::Error for FatalError {}
