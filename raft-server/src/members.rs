//! The members' addresses travel with the configuration: raft-node puts
//! them in the configuration's context ([`raft_proto::Membership::context`],
//! opaque to the protocol), so that every member, one that joins later
//! included, learns where a new member listens from the log or a snapshot.
//! The cluster file only gives the bootstrap members' addresses (and each
//! member its own).
//!
//! Format: one line per member, `id peer_addr client_addr\n`, ASCII,
//! sorted by id. Small (a few dozen bytes a member), readable in a hex dump,
//! and checked like any input from outside: a line that does not parse is
//! refused as a whole context.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use raft_proto::{Membership, NodeId};

/// One member as listed in the cluster file, addresses resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's id (never 0).
    pub id: NodeId,
    /// Raft traffic: the member listens here and binds its outgoing peer
    /// connections to this IP.
    pub peer_addr: SocketAddr,
    /// RESP clients.
    pub client_addr: SocketAddr,
    /// Prometheus metrics, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The IP its peer connections must come from, when `peer_addr` is
    /// written as an IP address (not a host name, not unspecified): a
    /// member binds its outgoing peer connections to that IP, so a
    /// handshake claiming this member from elsewhere is an impostor.
    pub peer_ip: Option<IpAddr>,
}

/// One member's addresses as the context carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The member.
    pub id: NodeId,
    /// Raft traffic.
    pub peer_addr: SocketAddr,
    /// RESP clients.
    pub client_addr: SocketAddr,
}

/// The context for a configuration whose members are `members`.
pub fn encode(members: &[Member]) -> Bytes {
    let mut list: Vec<Addresses> = members
        .iter()
        .map(|m| Addresses {
            id: m.id,
            peer_addr: m.peer_addr,
            client_addr: m.client_addr,
        })
        .collect();
    list.sort_by_key(|a| a.id);
    encode_list(&list)
}

/// The context for `list` (sorted by id).
pub fn encode_list(list: &[Addresses]) -> Bytes {
    let mut s = String::new();
    for a in list {
        s.push_str(&format!("{} {} {}\n", a.id, a.peer_addr, a.client_addr));
    }
    Bytes::from(s)
}

/// Parses a context written by [`encode`]. An empty context (written by a
/// version without membership change) is an empty list.
pub fn decode(context: &[u8]) -> Result<Vec<Addresses>, String> {
    let text = std::str::from_utf8(context).map_err(|_| "not UTF-8".to_string())?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        let (Some(id), Some(peer), Some(client), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "line {line:?}: expected `id peer_addr client_addr`"
            ));
        };
        let id = id
            .parse::<u64>()
            .ok()
            .filter(|&i| i != 0)
            .ok_or_else(|| format!("line {line:?}: bad id"))?;
        let parse = |a: &str| {
            a.parse::<SocketAddr>()
                .map_err(|_| format!("line {line:?}: bad address {a:?}"))
        };
        out.push(Addresses {
            id: NodeId(id),
            peer_addr: parse(peer)?,
            client_addr: parse(client)?,
        });
    }
    Ok(out)
}

/// The members of `m` with their addresses: from its context, else (for a
/// member the context does not name, as in a data dir written before
/// membership change) from what was known so far. A member whose address
/// is known nowhere is left out (and logged by the caller); `me` is always
/// kept, member or not, since it is this process.
pub fn members_of(m: &Membership, known: &[Member], me: NodeId) -> (Vec<Member>, Vec<NodeId>) {
    let book = decode(&m.context).unwrap_or_else(|e| {
        log::warn!("the configuration's addresses do not parse ({e}); using the known ones");
        Vec::new()
    });
    let mut members = Vec::new();
    let mut unknown = Vec::new();
    for id in m.members().chain((!m.contains(me)).then_some(me)) {
        let old = known.iter().find(|k| k.id == id);
        match (book.iter().find(|a| a.id == id), old) {
            (Some(a), old) => members.push(Member {
                id,
                peer_addr: a.peer_addr,
                client_addr: a.client_addr,
                // Metrics are local to each member; keep what the file said.
                metrics_addr: old.and_then(|o| o.metrics_addr),
                peer_ip: (!a.peer_addr.ip().is_unspecified()).then(|| a.peer_addr.ip()),
            }),
            (None, Some(o)) => members.push(o.clone()),
            (None, None) => unknown.push(id),
        }
    }
    members.sort_by_key(|m| m.id);
    (members, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_trip_and_refusals() {
        let list = vec![
            Addresses {
                id: NodeId(1),
                peer_addr: addr("127.0.0.1:7001"),
                client_addr: addr("127.0.0.1:6401"),
            },
            Addresses {
                id: NodeId(4),
                peer_addr: addr("[::1]:7004"),
                client_addr: addr("127.0.0.4:6404"),
            },
        ];
        assert_eq!(decode(&encode_list(&list)).unwrap(), list);
        assert_eq!(decode(b"").unwrap(), vec![]);
        for bad in [
            &b"1 127.0.0.1:7001\n"[..],
            b"0 127.0.0.1:7001 127.0.0.1:6401\n",
            b"1 127.0.0.1:7001 127.0.0.1:6401 x\n",
            b"1 nowhere 127.0.0.1:6401\n",
            b"\xff\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn members_come_from_the_context_then_from_what_was_known() {
        let known = vec![Member {
            id: NodeId(2),
            peer_addr: addr("127.0.0.2:7002"),
            client_addr: addr("127.0.0.2:6402"),
            metrics_addr: None,
            peer_ip: None,
        }];
        let m = Membership {
            voters: vec![NodeId(1), NodeId(2)],
            learners: vec![NodeId(5)],
            context: encode_list(&[Addresses {
                id: NodeId(1),
                peer_addr: addr("127.0.0.1:7001"),
                client_addr: addr("127.0.0.1:6401"),
            }]),
        };
        let (members, unknown) = members_of(&m, &known, NodeId(2));
        let ids: Vec<u64> = members.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(members[0].peer_ip, Some(addr("127.0.0.1:7001").ip()));
        assert_eq!(unknown, vec![NodeId(5)]);
    }
}
