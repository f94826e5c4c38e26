//! Feeds arbitrary bytes to the codec as a peer connection would after its
//! handshake: frames until one is incomplete or invalid.
//! Decoding must never panic, and everything it accepts must survive a round
//! trip and re-encode to exactly the bytes it came from (the format has one
//! encoding per message).
//!
//! Seeds with one valid frame of each kind are in `seeds/decode`; without
//! them libFuzzer needs minutes to guess a consistent AppendEntries.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raft_proto::codec::{decode, encode, encoded_len};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);

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
