//! Non-blocking socket I/O shared by every connection kind, in the mio idiom:
//! read or write until `WouldBlock`, retry on `Interrupted`, `Ok(0)` from a
//! read is EOF. Errors are returned to the caller, which closes that one
//! socket and nothing else.

use std::io::{self, Read, Write};

use bytes::{Buf, BytesMut};
use mio::event::Source;
use mio::{Interest, Registry, Token};

/// Bytes requested from the kernel per `read` call.
pub const READ_CHUNK: usize = 64 * 1024;

/// Why [`read_into`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket has nothing more for now; wait for the next readable event.
    Drained,
    /// `buf` reached the limit; the socket may hold more. The caller MUST
    /// call again after consuming from `buf` (mio is edge-triggered: no new
    /// event comes for data already waiting).
    Full,
    /// The peer closed its side.
    Eof,
}

/// Reads from `src` into `buf` until the socket is drained, EOF, or `buf`
/// holds at least `limit` bytes.
pub fn read_into(src: &mut impl Read, buf: &mut BytesMut, limit: usize) -> io::Result<ReadStatus> {
    loop {
        if buf.len() >= limit {
            return Ok(ReadStatus::Full);
        }
        let want = (limit - buf.len()).min(READ_CHUNK);
        let start = buf.len();
        buf.resize(start + want, 0);
        let r = src.read(&mut buf[start..]);
        let n = *r.as_ref().unwrap_or(&0);
        buf.truncate(start + n);
        match r {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::Drained),
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `out` as `dst` accepts, consuming what was written.
/// `Ok(true)`: `out` is empty; `Ok(false)`: the socket is full, wait for a
/// writable event.
pub fn write_from(dst: &mut impl Write, out: &mut BytesMut) -> io::Result<bool> {
    while !out.is_empty() {
        match dst.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Keeps `WRITABLE` interest registered exactly while output is queued
/// (STYLE §14): after a write pass that drained the output (`done`) or not,
/// re-registers `sock` only when that changed. `writable` is the caller's
/// record of the current registration.
pub fn update_write_interest(
    registry: &Registry,
    sock: &mut impl Source,
    token: Token,
    writable: &mut bool,
    done: bool,
) -> io::Result<()> {
    if done == *writable {
        *writable = !done;
        let interest = if *writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(sock, token, interest)?;
    }
    Ok(())
}

/// Releases the memory of a buffer that grew large for one burst and is now
/// empty, so that an idle connection costs little.
pub fn shrink_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
        *buf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its data in small pieces, then WouldBlock or EOF.
    struct Trickle {
        data: Vec<u8>,
        piece: usize,
        eof: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = self.piece.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn reads_until_drained_eof_or_full() {
        let mut buf = BytesMut::new();
        let mut s = Trickle {
            data: b"hello world".to_vec(),
            piece: 3,
            eof: false,
        };
        assert_eq!(
            read_into(&mut s, &mut buf, 100).unwrap(),
            ReadStatus::Drained
        );
        assert_eq!(&buf[..], b"hello world");

        let mut buf = BytesMut::new();
        let mut s = Trickle {
            data: b"hello world".to_vec(),
            piece: 4,
            eof: true,
        };
        assert_eq!(read_into(&mut s, &mut buf, 5).unwrap(), ReadStatus::Full);
        assert_eq!(&buf[..], b"hello");
        buf.clear();
        assert_eq!(read_into(&mut s, &mut buf, 100).unwrap(), ReadStatus::Eof);
        assert_eq!(&buf[..], b" world");
    }

    /// Accepts `room` bytes, then WouldBlock.
    struct Sink {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(2);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_until_blocked() {
        let mut out = BytesMut::from(&b"abcdefg"[..]);
        let mut s = Sink {
            got: Vec::new(),
            room: 5,
        };
        assert!(!write_from(&mut s, &mut out).unwrap());
        assert_eq!(&out[..], b"fg");
        s.room = 10;
        assert!(write_from(&mut s, &mut out).unwrap());
        assert_eq!(s.got, b"abcdefg");
    }
}
