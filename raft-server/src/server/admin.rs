//! The cluster's own commands: `RAFT.MEMBERS`, `RAFT.ADD`, `RAFT.PROMOTE`,
//! `RAFT.REMOVE`, `RAFT.TRANSFER`, and the leadership hand-over at
//! SIGTERM. The decisions are the node's (`Node::propose_membership`,
//! `Node::transfer_leadership`); this is the driver's side: addresses,
//! replies, links.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use raft_proto::{LogIndex, Membership, MembershipChange, NodeId, ProposeError, Role, Term, Time};

use super::{MembershipError, PendingWrite, ReplyTo, Server, TransferError};
use crate::client;
use crate::members::{self, Addresses};
use crate::resp::Reply;

fn bulk(s: impl AsRef<str>) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(s.as_ref().as_bytes()))
}

impl Server {
    /// `RAFT.MEMBERS`: the configuration in force, and this member as
    /// `removed` when it knows a committed configuration removed it (the
    /// configuration it follows no longer lists it).
    pub(super) fn members_command(&self) -> Reply {
        let m = self.node.membership().clone();
        let mut reply = self.members_reply(&m);
        if let Reply::Array(entries) = &mut reply {
            if self.node.is_removed() && !m.contains(self.settings.id) {
                let me = self.settings.me();
                entries.push(Reply::Array(vec![
                    Reply::Integer(me.id.0 as i64),
                    bulk(me.peer_addr.to_string()),
                    bulk(me.client_addr.to_string()),
                    bulk("removed"),
                ]));
            }
        }
        reply
    }

    /// `RAFT.MEMBERS`, or the reply to a change: one entry per member of
    /// `m`, `[id, peer_addr, client_addr, voter|learner]`, and on the
    /// leader also the member's match index and its link (`up`, `down`,
    /// or `self`).
    pub(super) fn members_reply(&self, m: &Membership) -> Reply {
        let book = members::decode(&m.context).unwrap_or_default();
        let progress = self.node.peer_progress();
        let links = self.peers.status(Instant::now());
        let leader = self.node.role() == Role::Leader;
        let entries = m
            .members()
            .map(|id| {
                let addrs = book.iter().find(|a| a.id == id).map_or_else(
                    || {
                        self.settings
                            .member(id)
                            .map(|k| (k.peer_addr.to_string(), k.client_addr.to_string()))
                            .unwrap_or_default()
                    },
                    |a| (a.peer_addr.to_string(), a.client_addr.to_string()),
                );
                let role = if m.is_voter(id) { "voter" } else { "learner" };
                let mut e = vec![
                    Reply::Integer(id.0 as i64),
                    bulk(addrs.0),
                    bulk(addrs.1),
                    bulk(role),
                ];
                if leader {
                    let (matched, link) = if id == self.settings.id {
                        (self.node.last_log_index(), "self")
                    } else {
                        let matched = progress
                            .iter()
                            .find(|p| p.id == id)
                            .map_or(LogIndex(0), |p| p.match_index);
                        let up = links.iter().any(|l| l.id == id && l.up);
                        (matched, if up { "up" } else { "down" })
                    };
                    e.push(Reply::Integer(matched.0 as i64));
                    e.push(bulk(link));
                }
                Reply::Array(e)
            })
            .collect();
        Reply::Array(entries)
    }

    /// `RAFT.ADD`, `RAFT.PROMOTE`, `RAFT.REMOVE`: proposed on the leader
    /// with the new configuration's addresses once the strict check passes
    /// (`reconfig`); answered when the entry applies
    /// (`configuration_applied`). `RAFT.ADD` of a voter goes through a
    /// learner first (`start_join`).
    pub(super) fn change_membership(
        &mut self,
        key: usize,
        change: MembershipChange,
        addresses: Option<(SocketAddr, SocketAddr)>,
        t: Time,
    ) {
        if self.node.role() != Role::Leader {
            let reply = self.redirect(self.node.leader(), b"");
            self.clients[key].reply_now(reply);
            return;
        }
        let current = self.node.membership().clone();
        // A change already in effect, committed, is answered as done: an
        // operator retries after "may still take effect", and a member
        // listed in the bootstrap file is a member already.
        let done = match change {
            MembershipChange::AddLearner(id) => {
                current.contains(id) && self.same_addresses(id, addresses)
            }
            MembershipChange::AddVoter(id) | MembershipChange::Promote(id) => {
                current.is_voter(id) && self.same_addresses(id, addresses)
            }
            MembershipChange::Remove(id) => !current.contains(id),
        };
        if done && self.node.membership_index() <= self.node.commit_index() {
            let reply = self.members_reply(&current);
            self.clients[key].reply_now(reply);
            return;
        }
        if let MembershipChange::AddVoter(id) = change {
            return self.start_join(key, id, addresses, t);
        }
        if let Err(reply) = self.check_quorum_after(change) {
            return self.clients[key].reply_now(reply);
        }
        match self.propose_change(change, addresses, t) {
            Ok((index, term)) => {
                let to = self.reserve_reply(key);
                self.changes.insert(index.0, PendingWrite { to, term });
            }
            Err(reply) => self.clients[key].reply_now(reply),
        }
    }

    /// Whether `addresses` (if given) are the ones member `id` has.
    pub(super) fn same_addresses(
        &self,
        id: NodeId,
        addresses: Option<(SocketAddr, SocketAddr)>,
    ) -> bool {
        addresses.is_none_or(|(p, c)| {
            self.settings
                .member(id)
                .is_some_and(|m| m.peer_addr == p && m.client_addr == c)
        })
    }

    /// A place in client `key`'s reply order for an answer that comes
    /// later.
    pub(super) fn reserve_reply(&mut self, key: usize) -> ReplyTo {
        let c = &mut self.clients[key];
        ReplyTo {
            key,
            client_id: c.id,
            seq: c.reserve(crate::cmd::Kind::Write, client::WRITE_REPLY_RESERVE),
        }
    }

    /// Proposes `change` with the addresses of the configuration it makes;
    /// the entry's index and term, or the reply that says why not.
    pub(super) fn propose_change(
        &mut self,
        change: MembershipChange,
        addresses: Option<(SocketAddr, SocketAddr)>,
        t: Time,
    ) -> Result<(LogIndex, Term), Reply> {
        let current = self.node.membership().clone();
        let mut book: Vec<Addresses> = current
            .members()
            .filter_map(|id| {
                self.settings.member(id).map(|m| Addresses {
                    id,
                    peer_addr: m.peer_addr,
                    client_addr: m.client_addr,
                })
            })
            .collect();
        match change {
            MembershipChange::AddLearner(id) | MembershipChange::AddVoter(id) => {
                if let Some((peer_addr, client_addr)) = addresses {
                    book.retain(|a| a.id != id);
                    book.push(Addresses {
                        id,
                        peer_addr,
                        client_addr,
                    });
                }
            }
            MembershipChange::Remove(id) => book.retain(|a| a.id != id),
            MembershipChange::Promote(_) => {}
        }
        book.sort_by_key(|a| a.id);
        let what = format!("{change:?}");
        match self
            .node
            .propose_membership(t, change, members::encode_list(&book))
        {
            Ok(id) => {
                log::info!(
                    "configuration change proposed at index {}: {what}",
                    id.index
                );
                Ok((id.index, id.term))
            }
            Err(e) => Err(match e {
                ProposeError::NotLeader { leader } => self.redirect(leader, b""),
                ProposeError::TransferInProgress { target } => self.redirect(Some(target), b""),
                ProposeError::Membership(MembershipError::ChangeInProgress) => Reply::Error(
                    "ERR a configuration change is in progress (or this leader has not \
                     committed its first entry yet); retry shortly"
                        .into(),
                ),
                ProposeError::Membership(e) => Reply::Error(format!("ERR {e}")),
                ProposeError::Busy => Reply::Error("ERR too many uncommitted writes; retry".into()),
                ProposeError::TooLarge { .. } => {
                    Reply::Error("ERR the configuration is too large".into())
                }
            }),
        }
    }

    /// A configuration entry was applied: the change it carries is
    /// committed; answer the client that asked for it.
    pub(super) fn configuration_applied(&mut self, index: LogIndex, term: Term, m: &Membership) {
        self.committed_membership = Some(m.clone());
        self.sync_links();
        log::info!(
            "configuration committed at index {index}: voters {:?}, learners {:?}",
            m.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            m.learners.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        self.join_applied(index, term, m);
        if let Some(w) = self.changes.remove(&index.0) {
            let reply = if w.term == term {
                self.members_reply(m)
            } else {
                Reply::Error(
                    "ERR the configuration change was lost to a leader change; retry".into(),
                )
            };
            self.deliver(w.to, reply);
        }
    }

    /// The configuration in force changed (appended, undone, or from a
    /// snapshot): addresses and peer links follow it.
    pub(super) fn follow_membership(&mut self, index: LogIndex, m: &Membership) {
        log::info!(
            "configuration in force (index {index}): voters {:?}, learners {:?}{}",
            m.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            m.learners.iter().map(|v| v.0).collect::<Vec<_>>(),
            if m.contains(self.settings.id) {
                ""
            } else {
                "; this member is not in it"
            }
        );
        self.sync_links();
    }

    /// Peer links (and the addresses redirects use) cover the members of
    /// the configuration in force and of the last committed one. A member
    /// that a configuration removes must still be heard until that
    /// configuration commits: a leader that removes itself leads until
    /// then, and needs its followers' answers (thesis §4.2.2).
    pub(super) fn sync_links(&mut self) {
        let mut both = self.node.membership().clone();
        if let Some(c) = &self.committed_membership {
            for id in c.members() {
                if !both.contains(id) {
                    both.learners.push(id);
                }
            }
            both.learners.sort();
        }
        let (new, unknown) = members::members_of(&both, &self.settings.members, self.settings.id);
        if !unknown.is_empty() {
            log::warn!("no address known for members {unknown:?}: not connecting to them");
        }
        self.settings.members = new;
        self.settings.join &= self.node.membership().voters.is_empty();
        self.peers
            .set_members(&self.settings.members, self.poll.registry(), Instant::now());
    }

    /// `RAFT.TRANSFER [id]`: answered `+OK` once the target leads.
    pub(super) fn transfer(&mut self, key: usize, target: Option<NodeId>, t: Time) {
        if self.node.role() == Role::Leader {
            if let Some(reply) = self.transfer_too_soon(Instant::now()) {
                return self.clients[key].reply_now(reply);
            }
        }
        match self.node.transfer_leadership(t, target) {
            Ok(id) if id == self.settings.id => {
                self.clients[key].reply_now(Reply::Simple("OK"));
            }
            Ok(id) => {
                log::info!("leadership transfer to member {id} started");
                let to = self.reserve_reply(key);
                self.transfers.push((to, id));
            }
            Err(TransferError::NotLeader { leader }) => {
                let reply = self.redirect(leader, b"");
                self.clients[key].reply_now(reply);
            }
            Err(e) => self.clients[key].reply_now(Reply::Error(format!("ERR {e}"))),
        }
    }

    /// SIGTERM or SIGINT on the leader of a cluster with other voters:
    /// hand leadership to the most up-to-date one first, so that writes
    /// pause for a round trip instead of an election timeout (thesis
    /// §3.10). Returns false if there is nothing to hand over (shut down
    /// at once).
    pub(super) fn hand_over(&mut self, signal: &'static str, t: Time, now: Instant) -> bool {
        if self.node.role() != Role::Leader || !self.settings.shutdown_transfer {
            return false;
        }
        match self.node.transfer_leadership(t, None) {
            Ok(target) if target != self.settings.id => {
                log::info!(
                    "{signal} received: handing leadership to member {target} before shutting down"
                );
                // At most an election timeout (the node gives up then)
                // and a heartbeat for the answer.
                let deadline = now + self.settings.election_timeout_max + self.settings.heartbeat;
                self.leaving = Some((signal, deadline));
                true
            }
            _ => false,
        }
    }
}
