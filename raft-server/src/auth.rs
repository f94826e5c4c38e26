//! The peer-link handshake: mutual challenge-response over the cluster
//! secret, before any Raft frame is accepted.
//!
//! ```text
//!   dialer D                                         acceptor A
//!   Hello     { cluster_id, from: D, to: A, listen_d, nonce_d }  -->
//!             <--  Challenge { from: A, nonce_a, mac_a }
//!   Proof     { mac_d }                                -->
//!   Raft frames (D to A only)                          -->
//!
//!   mac_a = HMAC-SHA256(secret, "raft-peer-v3 acceptor" | cluster_id | D | A | listen_d | nonce_d | nonce_a)
//!   mac_d = HMAC-SHA256(secret, "raft-peer-v3 dialer"   | cluster_id | D | A | listen_d | nonce_d | nonce_a)
//! ```
//!
//! `listen_d` is the dialer's `peer_addr` (IPv6 or IPv4-mapped, 16 bytes,
//! and the port): an acceptor that does not know the dialer yet (a member
//! whose log has not reached the configuration that added it) dials back
//! there to answer it. The MACs cover it, so nobody on the path can point
//! that dial elsewhere.
//!
//! Each side proves that it knows the secret over a nonce the other side
//! chose fresh for this connection, so a recorded handshake cannot be
//! replayed, and the secret never crosses the wire. Both MACs are bound to
//! the cluster id and to both member ids, so a proof made for one pair of
//! members (or one direction) is worthless for another: the two labels keep
//! an acceptor's answer from serving as a dialer's proof. The acceptor
//! answers a `Hello` only after checking the cheap facts (cluster, member
//! ids, the source address), and replaces a member's link only after the
//! `Proof` checks out.
//!
//! What this does not give (see docs/operations.md, Security): secrecy and
//! per-frame integrity. Someone who can read or rewrite the TCP stream
//! between two members (on the path, not just on the network) sees the
//! Raft traffic and can tamper with frames after the handshake. TLS is the
//! later step for that.
//!
//! Every message here has a fixed length, so parsing needs no length
//! prefix and an unauthenticated connection is read one message at a time.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use raft_proto::NodeId;
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// First bytes of every handshake message: a Raft peer is told from a
/// scanner or a RESP client on the wrong port at once.
pub const MAGIC: [u8; 4] = *b"RAFT";
/// Handshake protocol version. Version 1 (unauthenticated) is refused.
pub const VERSION: u8 = 3;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

const KIND_HELLO: u8 = 1;
const KIND_CHALLENGE: u8 = 2;
const KIND_PROOF: u8 = 3;
const HEADER_LEN: usize = 4 + 1 + 1;

/// Length of an encoded [`Hello`].
pub const HELLO_LEN: usize = HEADER_LEN + 8 + 8 + 8 + ADDR_LEN + NONCE_LEN;
/// An address: 16 bytes of IPv6 (IPv4-mapped for IPv4) and the port.
const ADDR_LEN: usize = 16 + 2;
/// Length of an encoded [`Challenge`].
pub const CHALLENGE_LEN: usize = HEADER_LEN + 8 + NONCE_LEN + MAC_LEN;
/// Length of an encoded [`Proof`].
pub const PROOF_LEN: usize = HEADER_LEN + MAC_LEN;

const LABEL_ACCEPTOR: &[u8] = b"raft-peer-v3 acceptor";
const LABEL_DIALER: &[u8] = b"raft-peer-v3 dialer";

/// A fresh random nonce from the OS.
pub type Nonce = [u8; NONCE_LEN];
/// A MAC as sent.
pub type Tag = [u8; MAC_LEN];

/// The dialer's opening message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The dialer's cluster (not a secret: it tells a misconfigured member
    /// of another cluster from an attacker in the log).
    pub cluster_id: u64,
    /// Who the dialer says it is.
    pub from: NodeId,
    /// Whom it means to reach.
    pub to: NodeId,
    /// Where the dialer listens for peers (its `peer_addr`).
    pub listen: std::net::SocketAddr,
    /// The dialer's challenge to the acceptor.
    pub nonce: Nonce,
}

fn addr_bytes(a: &std::net::SocketAddr) -> [u8; ADDR_LEN] {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut b = [0u8; ADDR_LEN];
    b[..16].copy_from_slice(&ip.octets());
    b[16..].copy_from_slice(&a.port().to_be_bytes());
    b
}

fn addr_of(b: &[u8; ADDR_LEN]) -> std::net::SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[..16]);
    let v6 = std::net::Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => std::net::IpAddr::V4(v4),
        None => std::net::IpAddr::V6(v6),
    };
    std::net::SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

/// The acceptor's answer: its own challenge and its proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The acceptor's id.
    pub from: NodeId,
    /// The acceptor's challenge to the dialer.
    pub nonce: Nonce,
    /// `mac_a` (see the module docs).
    pub mac: Tag,
}

/// The dialer's proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// `mac_d` (see the module docs).
    pub mac: Tag,
}

/// Why handshake bytes were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a Raft peer at all (wrong first bytes).
    BadMagic,
    /// A Raft peer speaking another handshake version.
    Version(u8),
    /// The right version, but not the message expected at this point.
    UnexpectedKind(u8),
    /// Member id 0 (reserved for "none").
    ZeroId,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadMagic => write!(f, "not a Raft peer handshake"),
            HandshakeError::Version(v) => write!(
                f,
                "handshake version {v}, expected {VERSION} (a member of an older release, \
                 without peer authentication?)"
            ),
            HandshakeError::UnexpectedKind(k) => write!(f, "unexpected handshake message {k}"),
            HandshakeError::ZeroId => write!(f, "member id 0 in handshake"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// How members prove they belong: the cluster secret, or, for experiments
/// only, a fixed public key (`insecure_peer_links = true`). The insecure
/// mode runs the same handshake, so the code paths are the same, but anyone
/// can compute its MACs.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerKey {
    key: Vec<u8>,
    insecure: bool,
}

impl PeerKey {
    /// A key from the secret file's contents.
    pub fn secret(secret: Vec<u8>) -> PeerKey {
        assert!(!secret.is_empty(), "PeerKey::secret: empty secret");
        PeerKey {
            key: secret,
            insecure: false,
        }
    }

    /// The well-known key of `insecure_peer_links = true`.
    pub fn insecure() -> PeerKey {
        PeerKey {
            key: b"raft-insecure-peer-links".to_vec(),
            insecure: true,
        }
    }

    /// The cluster id: the first 8 bytes of HMAC-SHA256(secret, "raft
    /// cluster id v1"). Every member holds the secret, a member that joins
    /// included, so all agree on the id without a bootstrap exchange, and
    /// a membership change leaves it alone. The HMAC does not reveal the
    /// secret. (With `insecure_peer_links` the well-known key makes it a
    /// constant: such clusters are not told apart.)
    pub fn cluster_id(&self) -> u64 {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(b"raft cluster id v1");
        let tag = m.finalize().into_bytes();
        u64::from_be_bytes(tag[..8].try_into().expect("32-byte tag"))
    }

    /// Whether links are unauthenticated.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Bytes of the key.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    fn mac(&self, label: &[u8], hello: &Hello) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        m.update(label);
        m.update(&hello.cluster_id.to_be_bytes());
        m.update(&hello.from.0.to_be_bytes());
        m.update(&hello.to.0.to_be_bytes());
        m.update(&addr_bytes(&hello.listen));
        m
    }

    /// The acceptor's MAC over both nonces.
    pub fn acceptor_mac(&self, hello: &Hello, acceptor_nonce: &Nonce) -> Tag {
        let mut m = self.mac(LABEL_ACCEPTOR, hello);
        m.update(&hello.nonce);
        m.update(acceptor_nonce);
        m.finalize().into_bytes().into()
    }

    /// The dialer's MAC over both nonces.
    pub fn dialer_mac(&self, hello: &Hello, acceptor_nonce: &Nonce) -> Tag {
        let mut m = self.mac(LABEL_DIALER, hello);
        m.update(&hello.nonce);
        m.update(acceptor_nonce);
        m.finalize().into_bytes().into()
    }

    /// Checks the acceptor's MAC in constant time.
    pub fn verify_acceptor(&self, hello: &Hello, ch: &Challenge) -> bool {
        let mut m = self.mac(LABEL_ACCEPTOR, hello);
        m.update(&hello.nonce);
        m.update(&ch.nonce);
        m.verify_slice(&ch.mac).is_ok()
    }

    /// Checks the dialer's MAC in constant time.
    pub fn verify_dialer(&self, hello: &Hello, acceptor_nonce: &Nonce, proof: &Proof) -> bool {
        let mut m = self.mac(LABEL_DIALER, hello);
        m.update(&hello.nonce);
        m.update(acceptor_nonce);
        m.verify_slice(&proof.mac).is_ok()
    }
}

impl fmt::Debug for PeerKey {
    // Never print the secret, not even in a debug dump of the settings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.insecure {
            f.write_str("PeerKey(insecure)")
        } else {
            write!(f, "PeerKey(secret, {} bytes)", self.key.len())
        }
    }
}

/// A fresh nonce from the operating system's CSPRNG.
pub fn fresh_nonce() -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn put_header(kind: u8, dst: &mut BytesMut) {
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(kind);
}

/// Appends an encoded [`Hello`].
pub fn encode_hello(h: &Hello, dst: &mut BytesMut) {
    put_header(KIND_HELLO, dst);
    dst.put_u64(h.cluster_id);
    dst.put_u64(h.from.0);
    dst.put_u64(h.to.0);
    dst.put_slice(&addr_bytes(&h.listen));
    dst.put_slice(&h.nonce);
}

/// Appends an encoded [`Challenge`].
pub fn encode_challenge(c: &Challenge, dst: &mut BytesMut) {
    put_header(KIND_CHALLENGE, dst);
    dst.put_u64(c.from.0);
    dst.put_slice(&c.nonce);
    dst.put_slice(&c.mac);
}

/// Appends an encoded [`Proof`].
pub fn encode_proof(p: &Proof, dst: &mut BytesMut) {
    put_header(KIND_PROOF, dst);
    dst.put_slice(&p.mac);
}

/// Checks the header of the message at the front of `src` as far as it has
/// arrived. `Ok(false)`: not all `len` bytes are there yet.
fn header(src: &BytesMut, kind: u8, len: usize) -> Result<bool, HandshakeError> {
    // Refuse on the first wrong byte, even before the whole message is in:
    // a RESP client or an HTTP probe is told at once.
    let n = src.len().min(MAGIC.len());
    if src[..n] != MAGIC[..n] {
        return Err(HandshakeError::BadMagic);
    }
    if src.len() > 4 && src[4] != VERSION {
        return Err(HandshakeError::Version(src[4]));
    }
    if src.len() > 5 && src[5] != kind {
        return Err(HandshakeError::UnexpectedKind(src[5]));
    }
    Ok(src.len() >= len)
}

fn id(v: u64) -> Result<NodeId, HandshakeError> {
    if v == 0 {
        Err(HandshakeError::ZeroId)
    } else {
        Ok(NodeId(v))
    }
}

/// Takes a [`Hello`] off the front of `src`: `Ok(None)` until all of it
/// has arrived (nothing consumed), an error as soon as a byte is wrong.
pub fn decode_hello(src: &mut BytesMut) -> Result<Option<Hello>, HandshakeError> {
    if !header(src, KIND_HELLO, HELLO_LEN)? {
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let cluster_id = src.get_u64();
    let from = src.get_u64();
    let to = src.get_u64();
    let mut listen = [0u8; ADDR_LEN];
    src.copy_to_slice(&mut listen);
    let mut nonce = [0u8; NONCE_LEN];
    src.copy_to_slice(&mut nonce);
    Ok(Some(Hello {
        cluster_id,
        from: id(from)?,
        to: id(to)?,
        listen: addr_of(&listen),
        nonce,
    }))
}

/// Takes a [`Challenge`] off the front of `src`, like [`decode_hello`].
pub fn decode_challenge(src: &mut BytesMut) -> Result<Option<Challenge>, HandshakeError> {
    if !header(src, KIND_CHALLENGE, CHALLENGE_LEN)? {
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let from = src.get_u64();
    let mut nonce = [0u8; NONCE_LEN];
    src.copy_to_slice(&mut nonce);
    let mut mac = [0u8; MAC_LEN];
    src.copy_to_slice(&mut mac);
    Ok(Some(Challenge {
        from: id(from)?,
        nonce,
        mac,
    }))
}

/// Takes a [`Proof`] off the front of `src`, like [`decode_hello`].
pub fn decode_proof(src: &mut BytesMut) -> Result<Option<Proof>, HandshakeError> {
    if !header(src, KIND_PROOF, PROOF_LEN)? {
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let mut mac = [0u8; MAC_LEN];
    src.copy_to_slice(&mut mac);
    Ok(Some(Proof { mac }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            cluster_id: 0xfeed,
            from: NodeId(1),
            to: NodeId(2),
            listen: "127.0.0.1:7001".parse().unwrap(),
            nonce: [7; NONCE_LEN],
        }
    }

    #[test]
    fn messages_round_trip_and_wait_for_all_their_bytes() {
        let h = hello();
        let mut buf = BytesMut::new();
        encode_hello(&h, &mut buf);
        assert_eq!(buf.len(), HELLO_LEN);
        for cut in 0..HELLO_LEN {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(decode_hello(&mut part), Ok(None), "prefix of {cut} bytes");
            assert_eq!(part.len(), cut, "nothing consumed from a prefix");
        }
        assert_eq!(decode_hello(&mut buf), Ok(Some(h)));
        assert!(buf.is_empty());
        let v6 = Hello {
            listen: "[2001:db8::7]:7004".parse().unwrap(),
            ..h
        };
        encode_hello(&v6, &mut buf);
        assert_eq!(decode_hello(&mut buf), Ok(Some(v6)));

        let c = Challenge {
            from: NodeId(2),
            nonce: [9; NONCE_LEN],
            mac: [3; MAC_LEN],
        };
        encode_challenge(&c, &mut buf);
        assert_eq!(buf.len(), CHALLENGE_LEN);
        assert_eq!(decode_challenge(&mut buf), Ok(Some(c)));

        let p = Proof { mac: [4; MAC_LEN] };
        encode_proof(&p, &mut buf);
        buf.extend_from_slice(b"next frame");
        assert_eq!(decode_proof(&mut buf), Ok(Some(p)));
        assert_eq!(&buf[..], b"next frame");
    }

    #[test]
    fn wrong_bytes_are_refused_at_once() {
        let mut resp = BytesMut::from(&b"*1\r\n"[..]);
        assert_eq!(decode_hello(&mut resp), Err(HandshakeError::BadMagic));
        let mut http = BytesMut::from(&b"G"[..]);
        assert_eq!(decode_hello(&mut http), Err(HandshakeError::BadMagic));
        // Version 1 was the unauthenticated handshake.
        let mut v1 = BytesMut::from(&b"RAFT\x01"[..]);
        assert_eq!(decode_hello(&mut v1), Err(HandshakeError::Version(1)));
        let mut buf = BytesMut::new();
        encode_proof(&Proof { mac: [0; MAC_LEN] }, &mut buf);
        assert_eq!(
            decode_hello(&mut buf),
            Err(HandshakeError::UnexpectedKind(KIND_PROOF))
        );
        let mut zero = BytesMut::new();
        encode_hello(
            &Hello {
                from: NodeId(0),
                ..hello()
            },
            &mut zero,
        );
        assert_eq!(decode_hello(&mut zero), Err(HandshakeError::ZeroId));
    }

    #[test]
    fn both_sides_prove_the_secret_and_nothing_else_verifies() {
        let key = PeerKey::secret(b"correct horse battery staple".to_vec());
        let h = hello();
        let nonce_a = [5; NONCE_LEN];
        let ch = Challenge {
            from: h.to,
            nonce: nonce_a,
            mac: key.acceptor_mac(&h, &nonce_a),
        };
        assert!(key.verify_acceptor(&h, &ch));
        let proof = Proof {
            mac: key.dialer_mac(&h, &nonce_a),
        };
        assert!(key.verify_dialer(&h, &nonce_a, &proof));

        // The acceptor's MAC is not a dialer's proof (a reflected answer).
        assert!(!key.verify_dialer(&h, &nonce_a, &Proof { mac: ch.mac }));
        // Another secret, another nonce, another member pair or cluster.
        let other = PeerKey::secret(b"correct horse battery stapler".to_vec());
        assert!(!other.verify_dialer(&h, &nonce_a, &proof));
        assert!(!key.verify_dialer(&h, &[6; NONCE_LEN], &proof));
        for changed in [
            Hello {
                from: NodeId(3),
                ..h
            },
            Hello { to: NodeId(3), ..h },
            Hello { cluster_id: 1, ..h },
            Hello {
                listen: "127.0.0.9:7001".parse().unwrap(),
                ..h
            },
            Hello {
                nonce: [8; NONCE_LEN],
                ..h
            },
        ] {
            assert!(!key.verify_dialer(&changed, &nonce_a, &proof));
            assert!(!key.verify_acceptor(&changed, &ch));
        }
        // The insecure key never verifies a secret key's MAC, and back.
        assert!(!PeerKey::insecure().verify_dialer(&h, &nonce_a, &proof));
    }

    #[test]
    fn the_secret_is_never_printed() {
        let key = PeerKey::secret(b"hunter2hunter2".to_vec());
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert_eq!(format!("{:?}", PeerKey::insecure()), "PeerKey(insecure)");
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(fresh_nonce(), fresh_nonce());
    }
}
