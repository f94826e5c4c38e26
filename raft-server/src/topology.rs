//! The Raft group as Redis Cluster clients see it: one shard owning all
//! 16384 hash slots, whose master is the Raft leader and whose replicas are
//! the other members. `CLUSTER SLOTS`, `SHARDS`, `NODES`, `MYID` and `INFO`
//! describe it, so a cluster-aware client (redis-py's `RedisCluster`,
//! go-redis, `redis-cli --cluster`) routes every key to the leader and,
//! after a failover, follows `-MOVED <slot> <addr>` and refreshes.

use std::net::SocketAddr;

use bytes::Bytes;
use raft_proto::{NodeId, Term};

use crate::resp::Reply;

/// Hash slots of a Redis cluster.
pub const SLOTS: u16 = 16384;

/// The slot of `key`, as Redis computes it: CRC16 (XMODEM) of the key, or
/// of its hash tag (the part between the first `{` and the next `}`, if
/// not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A member's 40-character cluster node id: its Raft id in hex, so that
/// the ids are stable across restarts and easy to read.
pub fn node_id(id: NodeId) -> String {
    format!("{:040x}", id.0)
}

/// One member as topology replies show it.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    /// Raft id.
    pub id: NodeId,
    /// Where clients reach it.
    pub client_addr: SocketAddr,
    /// Where its peers reach it (the cluster bus of `CLUSTER NODES`).
    pub peer_addr: SocketAddr,
    /// Whether this is the leader.
    pub leader: bool,
    /// Whether this member's link is up as the answering member sees it
    /// (always true for itself).
    pub connected: bool,
}

fn bulk(s: impl AsRef<str>) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_ref().as_bytes()))
}

/// The leader first, then the others in id order.
fn ordered(nodes: &[Node]) -> Vec<&Node> {
    let mut v: Vec<&Node> = nodes.iter().collect();
    v.sort_by_key(|n| (!n.leader, n.id));
    v
}

/// `CLUSTER SLOTS`: one range, the leader and then the replicas; empty while
/// no leader is known (the client retries).
pub fn slots(nodes: &[Node]) -> Reply {
    if !nodes.iter().any(|n| n.leader) {
        return Reply::Array(Vec::new());
    }
    let mut range = vec![Reply::Integer(0), Reply::Integer(i64::from(SLOTS - 1))];
    for n in ordered(nodes) {
        range.push(Reply::Array(vec![
            bulk(n.client_addr.ip().to_string()),
            Reply::Integer(i64::from(n.client_addr.port())),
            bulk(node_id(n.id)),
        ]));
    }
    Reply::Array(vec![Reply::Array(range)])
}

/// `CLUSTER SHARDS` (Redis 7): one shard with all slots.
pub fn shards(nodes: &[Node]) -> Reply {
    let members = ordered(nodes)
        .into_iter()
        .map(|n| {
            Reply::Map(vec![
                (bulk("id"), bulk(node_id(n.id))),
                (
                    bulk("port"),
                    Reply::Integer(i64::from(n.client_addr.port())),
                ),
                (bulk("ip"), bulk(n.client_addr.ip().to_string())),
                (bulk("endpoint"), bulk(n.client_addr.ip().to_string())),
                (
                    bulk("role"),
                    bulk(if n.leader { "master" } else { "replica" }),
                ),
                (bulk("replication-offset"), Reply::Integer(0)),
                (
                    bulk("health"),
                    bulk(if n.connected { "online" } else { "fail" }),
                ),
            ])
        })
        .collect();
    let slots = if nodes.iter().any(|n| n.leader) {
        vec![Reply::Integer(0), Reply::Integer(i64::from(SLOTS - 1))]
    } else {
        Vec::new()
    };
    Reply::Array(vec![Reply::Map(vec![
        (bulk("slots"), Reply::Array(slots)),
        (bulk("nodes"), Reply::Array(members)),
    ])])
}

/// `CLUSTER NODES`: one line per member, in Redis' format.
pub fn nodes_text(nodes: &[Node], me: NodeId, term: Term) -> String {
    let leader = nodes.iter().find(|n| n.leader).map(|n| node_id(n.id));
    let mut out = String::new();
    for n in ordered(nodes) {
        let mut flags = Vec::new();
        if n.id == me {
            flags.push("myself");
        }
        flags.push(if n.leader { "master" } else { "slave" });
        if !n.connected {
            flags.push("fail");
        }
        let master = match (&leader, n.leader) {
            (Some(l), false) => l.clone(),
            _ => "-".into(),
        };
        let slots = if n.leader {
            format!(" 0-{}", SLOTS - 1)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{} {}:{}@{} {} {master} 0 0 {term} {}{slots}\n",
            node_id(n.id),
            n.client_addr.ip(),
            n.client_addr.port(),
            n.peer_addr.port(),
            flags.join(","),
            if n.connected {
                "connected"
            } else {
                "disconnected"
            },
        ));
    }
    out
}

/// `CLUSTER INFO`.
pub fn info_text(nodes: &[Node], term: Term) -> String {
    let ok = nodes.iter().any(|n| n.leader);
    let assigned = if ok { SLOTS } else { 0 };
    format!(
        "cluster_enabled:1\r\ncluster_state:{}\r\ncluster_slots_assigned:{assigned}\r\n\
         cluster_slots_ok:{assigned}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n\
         cluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{term}\r\n\
         cluster_my_epoch:{term}\r\n",
        if ok { "ok" } else { "fail" },
        nodes.len(),
        u8::from(ok),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from Redis' own cluster tests and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b""), 0);
    }

    fn three() -> Vec<Node> {
        (1..=3)
            .map(|i| Node {
                id: NodeId(i),
                client_addr: format!("127.0.0.{i}:640{i}").parse().unwrap(),
                peer_addr: format!("127.0.0.{i}:700{i}").parse().unwrap(),
                leader: i == 2,
                connected: i != 3,
            })
            .collect()
    }

    #[test]
    fn one_shard_led_by_the_leader() {
        let Reply::Array(ranges) = slots(&three()) else {
            panic!()
        };
        let Reply::Array(range) = &ranges[0] else {
            panic!()
        };
        assert_eq!(range[0], Reply::Integer(0));
        assert_eq!(range[1], Reply::Integer(16383));
        let Reply::Array(master) = &range[2] else {
            panic!()
        };
        assert_eq!(master[1], Reply::Integer(6402));
        assert_eq!(range.len(), 5);
        let text = nodes_text(&three(), NodeId(1), Term(4));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "0000000000000000000000000000000000000002 127.0.0.2:6402@7002 master - 0 0 4 connected 0-16383"
        );
        assert!(lines[1].contains(" myself,slave 0000000000000000000000000000000000000002 "));
        assert!(lines[2].contains(" slave,fail "));
        assert!(info_text(&three(), Term(4)).contains("cluster_state:ok\r\n"));
        let mut none = three();
        none[1].leader = false;
        assert_eq!(slots(&none), Reply::Array(Vec::new()));
        assert!(info_text(&none, Term(4)).contains("cluster_state:fail\r\n"));
    }
}
