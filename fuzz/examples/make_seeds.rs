//! Writes the seed corpus of the `decode` target: one valid frame of each
//! message kind, and a stream of all of them.
//! Rerun after a wire format change:
//! `cargo run --example make_seeds` (from `fuzz/`).

use bytes::{Bytes, BytesMut};
use raft_proto::codec::encode;
use raft_proto::{
    AppendEntries, AppendEntriesResponse, AppendResult, Entry, EntryPayload, LogIndex, Message,
    MessageBody, NodeId, RequestVote, RequestVoteResponse, Term,
};

fn main() -> std::io::Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/decode");
    std::fs::create_dir_all(dir)?;

    let msg = |body| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body,
    };
    let append = |entries| {
        msg(MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(4),
            prev_log_term: Term(2),
            entries,
            leader_commit: LogIndex(4),
            round: 9,
        }))
    };
    let entry = |index, payload| Entry {
        term: Term(3),
        index: LogIndex(index),
        payload,
    };
    let response = |result| {
        msg(MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            round: 9,
            result,
        }))
    };
    let seeds = [
        (
            "request_vote",
            msg(MessageBody::RequestVote(RequestVote {
                pre_vote: false,
                leadership_transfer: false,
                last_log_index: LogIndex(4),
                last_log_term: Term(2),
            })),
        ),
        (
            "pre_vote_response",
            msg(MessageBody::RequestVoteResponse(RequestVoteResponse {
                pre_vote: true,
                granted: true,
            })),
        ),
        ("heartbeat", append(vec![])),
        (
            "append_entries",
            append(vec![
                entry(5, EntryPayload::Noop),
                entry(6, EntryPayload::Command(Bytes::from_static(b"set x 1"))),
                entry(7, EntryPayload::Command(Bytes::new())),
                entry(
                    8,
                    EntryPayload::Configuration(Box::new(raft_proto::Membership {
                        voters: vec![NodeId(1), NodeId(2), NodeId(4)],
                        learners: vec![NodeId(5)],
                        context: Bytes::from_static(b"4 127.0.0.4:7004 127.0.0.4:6404\n"),
                    })),
                ),
            ]),
        ),
        ("timeout_now", msg(MessageBody::TimeoutNow)),
        (
            "append_success",
            response(AppendResult::Success {
                match_index: LogIndex(7),
            }),
        ),
        (
            "append_conflict_term",
            response(AppendResult::Conflict {
                rejected_index: LogIndex(4),
                last_log_index: LogIndex(6),
                conflict_term: Some(Term(1)),
                conflict_index: LogIndex(2),
            }),
        ),
        (
            "append_conflict_short",
            response(AppendResult::Conflict {
                rejected_index: LogIndex(4),
                last_log_index: LogIndex(2),
                conflict_term: None,
                conflict_index: LogIndex(3),
            }),
        ),
    ];

    let mut stream = BytesMut::new();
    for (name, m) in &seeds {
        let mut frame = BytesMut::new();
        encode(m, &mut frame);
        std::fs::write(format!("{dir}/{name}"), &frame)?;
        stream.extend_from_slice(&frame);
    }
    std::fs::write(format!("{dir}/stream"), &stream)?;
    println!("wrote {} seeds to {dir}", seeds.len() + 1);
    Ok(())
}
