//! The messages a fuzzed node is fed ([`super::fuzz_node`]): made up from
//! the bytes, mostly near the node's own state so that they reach deep
//! into its handlers, and answers to what it sent that look honest.

use bytes::Bytes;

use super::{Input, NodeDriver, ID, TOO_LARGE};
use crate::{
    AppendEntries, AppendEntriesResponse, AppendResult, Entry, EntryPayload, LogIndex, Membership,
    Message, MessageBody, NodeId, RequestVote, RequestVoteResponse, Term,
};

impl NodeDriver {
    /// A log index, mostly near the node's last or commit index.
    pub(super) fn index(&mut self, inp: &mut Input<'_>) -> LogIndex {
        let last = self.node.last_log_index().0;
        let commit = self.node.commit_index().0;
        LogIndex(match inp.byte() % 12 {
            0 => 0,
            1 => last.saturating_sub(1),
            2 | 3 => last,
            4 => last.saturating_add(1),
            5 => commit,
            6 => commit.saturating_sub(1),
            7 => commit.saturating_add(1),
            8 => u64::from(inp.byte()),
            9 => last.saturating_add(u64::from(inp.byte())),
            10 => u64::MAX - u64::from(inp.byte() % 2),
            _ => inp.u64(),
        })
    }

    /// A term, mostly the node's own or next to it, sometimes at or just
    /// past the largest jump one message may make ([`Term::MAX_JUMP`]),
    /// at or beyond [`Term::MAX`], up to `u64::MAX`.
    pub(super) fn term(&mut self, inp: &mut Input<'_>) -> Term {
        let t = self.node.term().0;
        let bound = t.saturating_add(Term::MAX_JUMP.0);
        Term(match inp.byte() % 16 {
            0..=4 => t,
            5 => t.saturating_add(1),
            6 => t.saturating_sub(1),
            7 => t.saturating_add(2),
            8 => Term::MAX.0,
            9 => Term::MAX.0 + 1,
            10 => u64::from(inp.byte()),
            11 => bound,
            12 => bound.saturating_add(1 + u64::from(inp.byte())),
            13 => Term::MAX.0 - 1,
            14 => u64::MAX - u64::from(inp.byte() % 2),
            _ => inp.u64(),
        })
    }

    /// The term of the entry at `index`: mostly what the node's log holds
    /// there, so that consistency checks pass; sometimes not.
    fn log_term(&mut self, inp: &mut Input<'_>, index: LogIndex) -> Term {
        let ours = if index.0 == 0 {
            Some(Term(0))
        } else {
            self.node.entry(index).map(|e| e.term)
        };
        let ours = ours.unwrap_or(self.node.term());
        match inp.byte() % 8 {
            0..=3 => ours,
            4 => Term(ours.0.saturating_add(1)),
            5 => Term(ours.0.saturating_sub(1)),
            6 => Term(0),
            _ => self.term(inp),
        }
    }

    fn round(&mut self, inp: &mut Input<'_>) -> u64 {
        match inp.byte() % 4 {
            0..=2 => u64::from(inp.byte() % 8),
            _ => inp.u64(),
        }
    }

    /// Any message, mostly addressed correctly and mostly near the node's
    /// state; the codec refuses the inconsistent ones.
    pub(super) fn message(&mut self, inp: &mut Input<'_>) -> Message {
        let from = match inp.byte() {
            0xff => NodeId(inp.u64()),
            b => self.peer(b),
        };
        let to = match inp.byte() {
            0xff => NodeId(inp.u64()),
            _ => ID,
        };
        let term = self.term(inp);
        // Four in five of the Figure 2 kinds, which elections and commits
        // need; the rest snapshot chunks and read-index messages.
        let kind = match inp.byte() % 10 {
            k @ 0..=7 => k / 2,
            8 => 4 + u8::from(inp.bit()),
            _ => 6 + inp.byte() % 3,
        };
        let body = match kind {
            0 => {
                let pre_vote = inp.bit();
                // Now and then both, which the codec refuses.
                let leadership_transfer = inp.byte().is_multiple_of(8);
                let last_log_index = self.index(inp);
                let last_log_term = self.log_term(inp, last_log_index);
                MessageBody::RequestVote(RequestVote {
                    pre_vote,
                    leadership_transfer,
                    last_log_index,
                    last_log_term,
                })
            }
            1 => MessageBody::RequestVoteResponse(RequestVoteResponse {
                pre_vote: inp.bit(),
                granted: inp.bit(),
            }),
            2 => MessageBody::AppendEntries(self.append_entries(inp)),
            3 => {
                let round = self.round(inp);
                let result = self.append_result(inp);
                MessageBody::AppendEntriesResponse(AppendEntriesResponse { round, result })
            }
            4 => {
                // A chunk of a snapshot, mostly beyond the commit index so
                // that the follower takes it; the codec refuses the
                // impossible ones.
                let last_index = LogIndex(self.index(inp).0.max(1));
                let last_term = self.log_term(inp, last_index);
                let len = 1 + u64::from(inp.byte());
                let offset = u64::from(inp.byte()) % (len + 1);
                let n = usize::from(inp.byte()).min((len - offset.min(len)) as usize);
                MessageBody::InstallSnapshot(crate::InstallSnapshot {
                    meta: crate::SnapshotMeta {
                        last_index,
                        last_term,
                        len,
                        membership: Box::new(self.membership(inp)),
                    },
                    offset,
                    data: inp.bytes(n),
                    round: self.round(inp),
                })
            }
            5 => MessageBody::InstallSnapshotResponse(crate::InstallSnapshotResponse {
                last_index: LogIndex(self.index(inp).0.max(1)),
                next_offset: u64::from(inp.byte()),
                round: self.round(inp),
            }),
            6 => MessageBody::ReadIndexRequest(crate::ReadIndexRequest { id: inp.u64() }),
            8 => MessageBody::TimeoutNow,
            _ => MessageBody::ReadIndexResponse(crate::ReadIndexResponse {
                id: inp.u64() % 4,
                read_index: inp.bit().then(|| LogIndex(self.index(inp).0.max(1))),
            }),
        };
        Message {
            from,
            to,
            term,
            body,
        }
    }

    fn append_entries(&mut self, inp: &mut Input<'_>) -> AppendEntries {
        let prev_log_index = self.index(inp);
        let prev_log_term = self.log_term(inp, prev_log_index);
        let mut entries = Vec::new();
        let mut term = prev_log_term.max(Term(1));
        for k in 1..=u64::from(inp.byte() % 6) {
            let flags = inp.byte();
            let index = if flags & 0x40 != 0 {
                self.index(inp)
            } else {
                LogIndex(prev_log_index.0.wrapping_add(k))
            };
            term = match flags % 8 {
                0..=3 => self.node.entry(index).map_or(term, |e| e.term),
                4 => Term(term.0.saturating_add(1)),
                5 => term,
                6 => self.term(inp),
                _ => Term(term.0.saturating_sub(1)),
            };
            let payload = match flags >> 7 {
                0 if flags & 0x20 != 0 => {
                    EntryPayload::Configuration(Box::new(self.membership(inp)))
                }
                0 => EntryPayload::Noop,
                _ if flags == 0xff => EntryPayload::Command(Bytes::from_static(&TOO_LARGE)),
                _ => {
                    let n = usize::from(inp.byte() % 16);
                    EntryPayload::Command(inp.bytes(n))
                }
            };
            entries.push(Entry {
                term,
                index,
                payload,
            });
        }
        AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.index(inp),
            round: self.round(inp),
        }
    }

    /// A configuration over this cluster's ids (so that the node only
    /// ever sends to known peers), with or without this node, as a voter
    /// or a learner; now and then one the codec refuses (no voter, or
    /// unsorted).
    fn membership(&mut self, inp: &mut Input<'_>) -> Membership {
        let (roles, twist) = (inp.byte(), inp.byte());
        let mut m = Membership::default();
        let everyone = std::iter::once(ID).chain(self.peers.iter().copied());
        let mut ids: Vec<NodeId> = everyone.collect();
        ids.sort();
        for (k, id) in ids.into_iter().enumerate() {
            match (roles >> (k % 4 * 2)) & 3 {
                0 | 1 => m.voters.push(id),
                2 => m.learners.push(id),
                _ => {}
            }
        }
        if twist == 0xfe {
            m.voters.reverse();
        }
        if twist & 0x0f == 0 {
            m.context = inp.bytes(usize::from(twist >> 4));
        }
        m
    }

    fn append_result(&mut self, inp: &mut Input<'_>) -> AppendResult {
        if inp.bit() {
            return AppendResult::Success {
                match_index: self.index(inp),
            };
        }
        let rejected_index = self.index(inp);
        let shape = inp.byte();
        let r = rejected_index.0;
        match shape % 4 {
            // The follower holds rejected_index, with another term.
            0 | 1 => {
                let conflict_term = self.log_term(inp, rejected_index);
                AppendResult::Conflict {
                    rejected_index,
                    last_log_index: LogIndex(r.saturating_add(u64::from(shape >> 5))),
                    conflict_term: Some(conflict_term),
                    conflict_index: LogIndex(r.saturating_sub(u64::from(inp.byte() % 4)).max(1)),
                }
            }
            // Its log is shorter.
            2 => {
                let last = r.saturating_sub(1 + u64::from(shape >> 5));
                AppendResult::Conflict {
                    rejected_index,
                    last_log_index: LogIndex(last),
                    conflict_term: None,
                    conflict_index: LogIndex(last + 1),
                }
            }
            _ => AppendResult::Conflict {
                rejected_index,
                last_log_index: self.index(inp),
                conflict_term: inp.bit().then(|| self.term(inp)),
                conflict_index: self.index(inp),
            },
        }
    }

    /// An answer to one of the node's recent messages, as its addressee
    /// might send it: votes granted or refused, appends accepted or
    /// rejected with a plausible hint.
    pub(super) fn answer(&mut self, inp: &mut Input<'_>) -> Option<Message> {
        if self.sent.is_empty() {
            return None;
        }
        let asked = self.sent[usize::from(inp.byte()) % self.sent.len()].clone();
        let (term, body) = match &asked.body {
            MessageBody::RequestVote(rv) => {
                let granted = inp.byte() & 3 != 0;
                // A granted pre-vote comes in the asked term, a refusal in
                // the voter's own.
                let term = if granted || !rv.pre_vote {
                    asked.term
                } else {
                    self.node.term()
                };
                let body = MessageBody::RequestVoteResponse(RequestVoteResponse {
                    pre_vote: rv.pre_vote,
                    granted,
                });
                (term, body)
            }
            MessageBody::AppendEntries(ae) => {
                let prev = ae.prev_log_index;
                let result = match inp.byte() % 4 {
                    0..=2 => AppendResult::Success {
                        match_index: prev.plus(ae.entries.len() as u64),
                    },
                    _ if prev.0 == 0 => return None,
                    _ => {
                        let last = prev.0 - 1 - (u64::from(inp.byte()) % prev.0);
                        AppendResult::Conflict {
                            rejected_index: prev,
                            last_log_index: LogIndex(last),
                            conflict_term: None,
                            conflict_index: LogIndex(last + 1),
                        }
                    }
                };
                let body = MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                    round: ae.round,
                    result,
                });
                (asked.term, body)
            }
            _ => return None,
        };
        Some(Message {
            from: asked.to,
            to: asked.from,
            term,
            body,
        })
    }
}
