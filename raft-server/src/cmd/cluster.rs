//! Parsers of the cluster's own commands (`RAFT.*`) and of `CLUSTER`,
//! the topology cluster-aware clients read.

use bytes::Bytes;
use raft_proto::NodeId;

use super::{arity, ClusterQuery, Command};
use crate::resp::Reply;

/// `RAFT.MEMBERS`.
pub fn parse_raft_members(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::RaftMembers)
}

/// `RAFT.ADD`.
pub fn parse_raft_add(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc == 4 || argc == 5)?;
    let id = member_id(&args[1])?;
    let addr = |a: &Bytes| {
        std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
            .ok_or_else(|| {
                Reply::Error(format!(
                    "ERR invalid address '{}': expected IP:PORT",
                    String::from_utf8_lossy(a)
                ))
            })
    };
    let addresses = Some((addr(&args[2])?, addr(&args[3])?));
    let change = match args.get(4) {
        None => raft_proto::MembershipChange::AddVoter(id),
        Some(a) if a.eq_ignore_ascii_case(b"learner") => {
            raft_proto::MembershipChange::AddLearner(id)
        }
        Some(a) => {
            return Err(Reply::Error(format!(
                "ERR syntax error: expected LEARNER, got '{}'",
                String::from_utf8_lossy(a)
            )))
        }
    };
    Ok(Command::RaftChange { change, addresses })
}

/// `RAFT.PROMOTE / RAFT.REMOVE`.
pub fn parse_raft_promote(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let id = member_id(&args[1])?;
    let change = if name == "raft.promote" {
        raft_proto::MembershipChange::Promote(id)
    } else {
        raft_proto::MembershipChange::Remove(id)
    };
    Ok(Command::RaftChange {
        change,
        addresses: None,
    })
}

/// `RAFT.TRANSFER`.
pub fn parse_raft_transfer(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc <= 2)?;
    Ok(Command::RaftTransfer(
        args.get(1).map(member_id).transpose()?,
    ))
}

/// `CLUSTER`.
pub fn parse_cluster(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let q = match (sub.as_str(), argc) {
        ("slots", 2) => ClusterQuery::Slots,
        ("shards", 2) => ClusterQuery::Shards,
        ("nodes", 2) => ClusterQuery::Nodes,
        ("myid", 2) => ClusterQuery::MyId,
        ("info", 2) => ClusterQuery::Info,
        ("keyslot", 3) => ClusterQuery::KeySlot(args[2].clone()),
        ("slots" | "shards" | "nodes" | "myid" | "info" | "keyslot", _) => {
            return Err(Reply::Error(format!(
                "ERR wrong number of arguments for 'cluster|{sub}' command"
            )))
        }
        _ => {
            return Err(Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try CLUSTER HELP.",
                String::from_utf8_lossy(&args[1])
            )))
        }
    };
    Ok(Command::Cluster(q))
}

/// A member id argument: a positive integer.
fn member_id(a: &Bytes) -> Result<NodeId, Reply> {
    std::str::from_utf8(a)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&i| i != 0)
        .map(NodeId)
        .ok_or_else(|| {
            Reply::Error(format!(
                "ERR invalid member id '{}': expected a positive integer",
                String::from_utf8_lossy(a)
            ))
        })
}
