//! Non-blocking socket I/O shared by every connection kind, in the mio idiom:
//! read or write until `WouldBlock`, retry on `Interrupted`, `Ok(0)` from a
//! read is EOF. Errors are returned to the caller, which closes that one
//! socket and nothing else. Also the process's descriptor limit, which
//! bounds how many sockets may be open at all.

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

/// Like [`read_into`], but reads through `scratch` (one buffer shared by
/// every connection of a kind) and appends to `buf` only the bytes that
/// arrived. `buf` then grows by what a peer actually sent, not by a whole
/// read chunk per connection: thousands of mostly idle clients cost what
/// they hold, which is what a memory budget over all of them counts.
///
/// With `short_is_drained`, a read that returns less than was asked for
/// ends it as [`ReadStatus::Drained`] without the read that would only
/// say `EAGAIN`: that was one system call in three on a leader under
/// load. Sound for a TCP socket under edge-triggered epoll (tokio does the
/// same): a read takes all that is queued up to its length, and data that
/// arrives later is a new edge. The caller passes `false` when the event
/// also reported a hang-up or an error, which arrive with no further edge
/// and need the read to the end.
pub fn read_via(
    src: &mut impl Read,
    scratch: &mut [u8],
    buf: &mut BytesMut,
    limit: usize,
    short_is_drained: bool,
) -> io::Result<ReadStatus> {
    assert!(!scratch.is_empty(), "empty scratch buffer");
    loop {
        if buf.len() >= limit {
            return Ok(ReadStatus::Full);
        }
        let want = (limit - buf.len()).min(scratch.len());
        match src.read(&mut scratch[..want]) {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                if short_is_drained && n < want {
                    return Ok(ReadStatus::Drained);
                }
            }
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

/// Whether an `accept` failed for want of a descriptor (per process or
/// system-wide), which only time or a closed socket cures.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Soft limits above this are treated as this: the kernel's default
/// `fs.nr_open`, and far more sockets than one member serves.
const FD_LIMIT_CAP: u64 = 1 << 20;

/// The soft `RLIMIT_NOFILE`: descriptors this process may have open.
pub fn fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(clamp_limit(lim.rlim_cur))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 2^20), as
/// servers do at start: the default soft limit (often 1024) is a
/// compatibility setting for `select`, which mio does not use. Returns the
/// soft limit before and after; on error the limit is unchanged.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in fd_limit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = clamp_limit(lim.rlim_cur);
    let target = clamp_limit(lim.rlim_max);
    if target <= before {
        return Ok((before, before));
    }
    let new = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass; raising the soft limit up
    // to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, target))
}

// `rlim_t` is u64 on 64-bit Linux but not on every target.
#[allow(clippy::unnecessary_cast)]
fn clamp_limit(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        FD_LIMIT_CAP
    } else {
        (v as u64).min(FD_LIMIT_CAP)
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

    #[test]
    fn read_via_appends_only_what_arrived() {
        let mut scratch = [0u8; 4];
        let mut buf = BytesMut::new();
        let mut s = Trickle {
            data: b"hello world".to_vec(),
            piece: 3,
            eof: true,
        };
        assert_eq!(
            read_via(&mut s, &mut scratch, &mut buf, 5, false).unwrap(),
            ReadStatus::Full
        );
        assert_eq!(&buf[..], b"hello");
        assert_eq!(
            read_via(&mut s, &mut scratch, &mut buf, 100, false).unwrap(),
            ReadStatus::Eof
        );
        assert_eq!(&buf[..], b"hello world");
        // Nothing allocated for a read that brings nothing.
        let mut empty = BytesMut::new();
        let mut s = Trickle {
            data: Vec::new(),
            piece: 3,
            eof: false,
        };
        assert_eq!(
            read_via(&mut s, &mut scratch, &mut empty, 100, false).unwrap(),
            ReadStatus::Drained
        );
        assert_eq!(empty.capacity(), 0);
    }

    /// A short read ends the pass when allowed: the socket had nothing more
    /// (the next read would only say `EAGAIN`); otherwise, and whenever
    /// the reads fill what was asked, it reads on.
    #[test]
    fn a_short_read_ends_the_pass_only_when_allowed() {
        let mut scratch = [0u8; 4];
        let trickle = || Trickle {
            data: b"hello world".to_vec(),
            piece: 3,
            eof: true,
        };
        let mut buf = BytesMut::new();
        let mut s = trickle();
        assert_eq!(
            read_via(&mut s, &mut scratch, &mut buf, 100, true).unwrap(),
            ReadStatus::Drained
        );
        assert_eq!(&buf[..], b"hel");
        // Reads that fill the scratch buffer go on.
        let mut buf = BytesMut::new();
        let mut s = Trickle {
            data: b"hello world".to_vec(),
            piece: 4,
            eof: true,
        };
        assert_eq!(
            read_via(&mut s, &mut scratch, &mut buf, 100, true).unwrap(),
            ReadStatus::Drained
        );
        // ... up to the last, short one: it stops before the EOF.
        assert_eq!(&buf[..], b"hello world");
        // After a hang-up the reads go to the end.
        let mut buf = BytesMut::new();
        let mut s = trickle();
        assert_eq!(
            read_via(&mut s, &mut scratch, &mut buf, 100, false).unwrap(),
            ReadStatus::Eof
        );
        assert_eq!(&buf[..], b"hello world");
    }

    #[test]
    fn fd_limit_is_readable_and_raising_is_idempotent() {
        let (before, after) = raise_fd_limit().unwrap();
        assert!(after >= before);
        assert_eq!(fd_limit().unwrap(), after);
        assert_eq!(raise_fd_limit().unwrap(), (after, after));
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
