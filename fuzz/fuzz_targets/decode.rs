//! Feeds arbitrary bytes to the codec as a peer connection would: an
//! optional handshake, then frames until one is incomplete or invalid.
//! Decoding must never panic, and everything it accepts must survive a round
//! trip and re-encode to exactly the bytes it came from (the format has one
//! encoding per message).
//!
//! Seeds with one valid frame of each kind are in `seeds/decode`; without
//! them libFuzzer needs minutes to guess a consistent AppendEntries.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raft_proto::codec::{decode, decode_handshake, encode, encode_handshake, encoded_len};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    match decode_handshake(&mut buf) {
        Ok(Some(hs)) => {
            let mut again = BytesMut::new();
            encode_handshake(&hs, &mut again);
            assert_eq!(&again[..], &data[..again.len()], "handshake not canonical");
            assert_eq!(decode_handshake(&mut again), Ok(Some(hs)));
        }
        Ok(None) => assert_eq!(buf.len(), data.len(), "Ok(None) consumed input"),
        // Not a handshake: read the same bytes as frames.
        Err(_) => buf = BytesMut::from(data),
    }

    loop {
        let before = buf.len();
        let msg = match decode(&mut buf) {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed input");
                break;
            }
            Err(_) => break,
        };
        let consumed = before - buf.len();
        let start = data.len() - before;
        assert_eq!(encoded_len(&msg), consumed, "encoded_len disagrees");

        let mut again = BytesMut::new();
        encode(&msg, &mut again);
        assert_eq!(
            &again[..],
            &data[start..start + consumed],
            "frame not canonical"
        );
        assert_eq!(
            decode(&mut again),
            Ok(Some(msg)),
            "round trip changed the message"
        );
        assert!(again.is_empty());
    }
});
