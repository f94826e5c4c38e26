//! Process-level tests that play an attacker on the same network as a real
//! 3-member cluster on loopback: garbage and forged handshakes on the peer
//! port (an outsider without the secret), and impossible Raft frames over an
//! authenticated link (an insider who knows the secret, or a buggy member).
//! Whatever arrives, no member may crash, lose or change durable state it
//! should not, or stop committing.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::insider::*;
use common::*;
use raft_proto::{
    AppendEntries, AppendEntriesResponse, AppendResult, Entry, EntryPayload, LogIndex, Message,
    MessageBody, NodeId, Term,
};

// The handshake written out from the contract (not shared with the
// server, so that a change to either side is caught) is in
// common::insider, which tests/authority.rs uses too.

fn term_of(c: &Cluster, id: u64) -> u64 {
    c.field(id, "raft_term").unwrap().parse().unwrap()
}

fn meta(c: &Cluster, id: u64) -> Vec<u8> {
    std::fs::read(c.m(id).data.join("meta")).unwrap()
}

fn log_lines(c: &Cluster, id: u64, needle: &str) -> usize {
    c.log_text(id)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn outsiders_without_the_secret_are_refused_and_change_nothing() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["SET", "a", "b"]), ok());
    let term = term_of(&c, leader);
    let peer = c.m(leader).peer;
    let cluster = cluster_id(&c, leader);
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    // Refusals are logged once per source address and minute, so each
    // kind of probe comes from an address of its own.
    let stranger = |i: u8| -> IpAddr { [127, 0, 0, 10 + i].into() };

    // Not a Raft peer at all, and the old unauthenticated handshake.
    for (i, bytes) in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0xff; 100],
        b"RAFT\x01\0\0\0\0\0\0\0\x07",
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = connect_from(stranger(i as u8), peer);
        let _ = s.write_all(bytes);
        assert!(
            closed_by_server(&s, Duration::from_secs(5)),
            "{bytes:?} was not refused"
        );
    }
    // Another cluster; a member id that does not exist; the right member
    // from the wrong address: refused before any challenge.
    for (cid, from, ip) in [
        (cluster ^ 1, followers[0], c.m(followers[0]).peer.ip()),
        (cluster, 9, stranger(3)),
        (cluster, followers[0], stranger(4)),
    ] {
        let mut s = connect_from(ip, peer);
        // Member 9 is unknown: it says it listens elsewhere than where it
        // connects from.
        let listen = SocketAddr::new(c.m(followers[0]).peer.ip(), 7999);
        s.write_all(&hello(cid, from, leader, listen, &[1; 32]))
            .unwrap();
        let mut buf = [0u8; 8];
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "hello from {from} of {cid:x} via {ip} was answered"
        );
    }
    // A member's address and id but not its secret: the member's proof
    // does not verify for us, and ours is refused.
    for &f in &followers {
        assert!(authenticate(&c, f, leader, b"not the secret").is_none());
    }
    // The real secret, proving the challenge-response works at all (and
    // that this test would see a server that skipped the check).
    let s = authenticate(&c, followers[0], leader, SECRET);
    assert!(s.is_some(), "a correct handshake must verify");
    drop(s);

    // A flood of impostors claiming to be both followers, from their own
    // addresses, for two seconds: the old test saw 33 elections in 20 s.
    let until = Instant::now() + Duration::from_secs(2);
    let mut attempts = 0;
    while Instant::now() < until && attempts < 400 {
        let f = followers[attempts % 2];
        let mut s = connect_from(c.m(f).peer.ip(), peer);
        s.write_all(&hello(cluster, f, leader, c.m(f).peer, &[2; 32]))
            .unwrap();
        let mut ch = [0u8; CHALLENGE_LEN];
        if s.read_exact(&mut ch).is_ok() {
            let _ = s.write_all(b"RAFT\x03\x03");
            let _ = s.write_all(&[0u8; 32]);
        }
        assert!(closed_by_server(&s, Duration::from_secs(5)));
        attempts += 1;
    }
    assert!(attempts >= 20, "only {attempts} attempts");

    // Nothing changed: same leader, same term, still committing, no
    // member restarted, and the leader's log says so a few lines a
    // minute, not a line per attempt.
    assert_eq!(c.wait_leader(Duration::from_secs(5)), leader);
    assert_eq!(term_of(&c, leader), term, "an impostor caused an election");
    assert_eq!(c.exec(&["SET", "a", "c"]), ok());
    assert_eq!(c.exec(&["GET", "a"]), bulk("c"));
    for id in 1..=3 {
        assert!(c.m(id).child.is_some());
        assert_eq!(term_of(&c, id), term);
    }
    let refusals = log_lines(&c, leader, "refused");
    assert!(
        (3..=12).contains(&refusals),
        "{refusals} refusal lines for {attempts} attempts:\n{}",
        c.log_text(leader)
    );
    let log = c.log_text(leader);
    for needle in [
        "not a Raft peer handshake",
        "handshake version 1",
        "another cluster",
        "member 9 not in this member's configuration says it listens on",
        "whose peer_addr is on",
        "does not prove the cluster secret",
    ] {
        assert!(log.contains(needle), "no {needle:?} in the log:\n{log}");
    }
}

#[test]
fn impossible_frames_from_an_insider_crash_nothing() {
    let mut c = Cluster::new(3);
    c.start_all();
    // One failover first, so that entry 1 is from an earlier term than the
    // current one: an entry of the current term at index 1 then conflicts.
    let first = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["SET", "a", "a"]), ok());
    c.kill(first);
    let _ = c.exec(&["SET", "a", "b"]);
    c.start(first);
    let leader = c.wait_leader(Duration::from_secs(10));
    assert_eq!(c.exec(&["SET", "a", "b"]), ok());
    sleep(Duration::from_millis(200)); // every member learns the commit index
    let term = term_of(&c, leader);
    assert!(term >= 2);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let metas: Vec<Vec<u8>> = (1..=3).map(|id| meta(&c, id)).collect();

    // Whether the member closed the link over the frame.
    let send = |as_member: u64, to: u64, bytes: Vec<u8>| -> bool {
        let mut s = authenticate(&c, as_member, to, SECRET).expect("insider handshake");
        s.write_all(&bytes).unwrap();
        closed_by_server(&s, Duration::from_secs(1))
    };

    // 1. An AppendEntriesResponse with term 2^64-1: before, every member
    //    adopted and saved it and then panicked on "term overflow" forever.
    let mut f = frame(&Message {
        from: NodeId(follower),
        to: NodeId(leader),
        term: Term(term),
        body: MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            round: 0,
            result: AppendResult::Success {
                match_index: LogIndex(0),
            },
        }),
    });
    f[22..30].copy_from_slice(&u64::MAX.to_be_bytes()); // len, version, tag, from, to | term
    assert!(send(follower, leader, f), "term 2^64-1 was accepted");

    // 2. An AppendEntries in the leader's own term, sent to the leader: a
    //    second leader of its term (crashed it: "election safety violated").
    let ae = |prev: u64, prev_term: u64, entries: Vec<Entry>| {
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(prev_term),
            entries,
            leader_commit: LogIndex(0),
            round: 0,
        })
    };
    let second_leader = frame(&Message {
        from: NodeId(follower),
        to: NodeId(leader),
        term: Term(term),
        body: ae(0, 0, Vec::new()),
    });
    assert!(
        send(follower, leader, second_leader),
        "a second leader was heard"
    );

    // 3. An AppendEntries "from the leader" that rewrites the follower's
    //    committed entry 1, written in an earlier term (crashed it:
    //    "truncating committed entry").
    let forged = Entry {
        term: Term(term),
        index: LogIndex(1),
        payload: EntryPayload::Command(bytes::Bytes::from_static(b"forged")),
    };
    let f = frame(&Message {
        from: NodeId(leader),
        to: NodeId(follower),
        term: Term(term),
        body: ae(0, 0, vec![forged]),
    });
    assert!(send(leader, follower, f), "a committed entry was rewritten");
    // 4. A consistency check that fails at a committed index ("log
    //    matching violated"): entry 1 is not of the current term.
    let f = frame(&Message {
        from: NodeId(leader),
        to: NodeId(other),
        term: Term(term),
        body: ae(1, term, Vec::new()),
    });
    assert!(
        send(leader, other, f),
        "a conflict below the commit index was kept"
    );

    // Nothing crashed, no term moved, the durable hard state is the same,
    // and the cluster still commits.
    sleep(Duration::from_millis(300));
    for id in 1..=3 {
        let alive = c.members[id as usize - 1]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none();
        assert!(alive, "member {id} exited:\n{}", c.log_text(id));
    }
    assert_eq!(c.exec(&["SET", "a", "c"]), ok());
    assert_eq!(c.exec(&["GET", "a"]), bulk("c"));
    let leader_now = c.wait_leader(Duration::from_secs(5));
    for id in 1..=3 {
        assert!(term_of(&c, id) < 1 << 40, "member {id} adopted a huge term");
    }
    if leader_now == leader && term_of(&c, leader) == term {
        assert_eq!(
            (1..=3).map(|id| meta(&c, id)).collect::<Vec<_>>(),
            metas,
            "a meta file changed"
        );
    }
    let log = c.log_text(leader);
    for needle in ["term 18446744073709551615", "impossible message"] {
        assert!(
            log.contains(needle),
            "no {needle:?} in the leader's log:\n{log}"
        );
    }
    for id in [follower, other] {
        let log = c.log_text(id);
        assert!(
            log.contains("impossible message") && log.contains("committed"),
            "no refusal in member {id}'s log:\n{log}"
        );
    }
}

#[test]
fn garbage_on_the_client_port_only_costs_that_connection() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    // Malformed RESP: an error reply, then the connection is closed.
    let mut r = c.conn(leader);
    r.write_all(b"*1\r\n$x\r\n").unwrap();
    assert!(
        matches!(r.read().unwrap(), Reply::Error(e) if e.starts_with("ERR Protocol error: invalid bulk length"))
    );
    assert!(r.read().is_err());
    // A declared length far over the limit: refused before it arrives.
    let mut r = c.conn(leader);
    r.write_all(b"*2\r\n$3\r\nSET\r\n$999999999\r\n").unwrap();
    assert!(matches!(r.read().unwrap(), Reply::Error(e) if e.starts_with("ERR Protocol error")));
    assert!(r.read().is_err());
    // And the cluster still works, with the same leader.
    assert_eq!(c.exec(&["SET", "still", "ok"]), ok());
    assert_eq!(c.exec(&["GET", "still"]), bulk("ok"));
    assert_eq!(c.wait_leader(Duration::from_secs(5)), leader);
}

/// Connections that never send a handshake, kept coming from many
/// addresses, do not keep a restarted member out (before: 8 squatters on the
/// unidentified slots delayed a rejoin by 8-10 s).
#[test]
fn squatters_on_the_peer_port_do_not_keep_a_member_out() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let peer = c.m(leader).peer;
    c.kill(follower);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let squatter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0usize;
            // Bounded: at most 20 s and 20k connections.
            let until = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < until
                && opened < 20_000
            {
                let ip: IpAddr = [127, 0, 1, (opened % 200) as u8 + 1].into();
                if let Ok(s) = std::panic::catch_unwind(|| connect_from(ip, peer)) {
                    held.push_back(s);
                }
                opened += 1;
                if held.len() > 256 {
                    held.pop_front();
                }
                sleep(Duration::from_millis(2));
            }
            opened
        })
    };
    sleep(Duration::from_millis(500));
    c.start(follower);
    // The restarted member's link must come up while the squatting goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        let connected = c.field(leader, "raft_peers_connected").unwrap_or_default();
        if connected.split(',').any(|p| p == follower.to_string()) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        sleep(Duration::from_millis(20));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = squatter.join().unwrap();
    assert!(back, "member {follower} did not get back in");
    assert!(opened > 100, "only {opened} squatter connections");
    assert_eq!(c.exec(&["SET", "k", "v"]), ok());
    let refusals = log_lines(&c, leader, "refused");
    assert!(refusals <= 400, "{refusals} refusal lines");
}

/// A holder of the secret cycling through member ids that no configuration
/// names: each gets a link dialled back (a member behind on its log must
/// answer members added since), but at most 64 at a time; the cluster
/// carries on.
#[test]
fn an_insider_cycling_ids_gets_a_bounded_number_of_links() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = c.wait_leader(Duration::from_secs(10));
    let peer = c.m(leader).peer;
    let cluster = cluster_id(&c, leader);
    let mut held = Vec::new();
    let mut refused = 0;
    for n in 0..70u8 {
        let ip: IpAddr = [127, 0, 1, n + 1].into();
        let id = 1000 + u64::from(n);
        let listen = SocketAddr::new(ip, 9);
        let mut s = connect_from(ip, peer);
        let nd = [n; 32];
        s.write_all(&hello(cluster, id, leader, listen, &nd))
            .unwrap();
        let mut ch = [0u8; CHALLENGE_LEN];
        if s.read_exact(&mut ch).is_err() {
            refused += 1;
            continue;
        }
        let na = &ch[14..46];
        let mut proof = b"RAFT\x03\x03".to_vec();
        proof.extend(mac(
            SECRET,
            b"raft-peer-v3 dialer",
            cluster,
            id,
            leader,
            listen,
            &nd,
            na,
        ));
        s.write_all(&proof).unwrap();
        held.push(s);
        // Identified before the next one is counted.
        sleep(Duration::from_millis(5));
    }
    assert_eq!(refused, 6, "70 ids, 64 links: {refused} refused");
    assert!(
        log_lines(
            &c,
            leader,
            "links to members not in this member's configuration"
        ) >= 1
    );
    assert_eq!(c.exec(&["SET", "a", "b"]), ok());
    assert_eq!(c.wait_leader(Duration::from_secs(5)), leader);
    drop(held);
}
