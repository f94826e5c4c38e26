//! `raft-delay-proxy`: a TCP proxy that delays every chunk of bytes, in both
//! directions, by a fixed time plus optional jitter, preserving order.
//!
//! ```text
//! raft-delay-proxy --listen 127.0.0.250:17012 --to 127.0.0.2:7002 --delay-ms 50 [--jitter-ms 10]
//! ```
//!
//! It stands in for `tc qdisc ... netem delay`, which the kernels of our test
//! machines lack. Each chunk read from one side is stamped on arrival and
//! written to the other side no earlier than `arrival + delay (+ jitter)`,
//! and never before the chunk ahead of it (so jitter never reorders bytes,
//! as TCP would not either). A round trip through the proxy therefore takes
//! about `2 × delay`.
//!
//! # Routing a member's peer traffic through it
//!
//! `raft-node` binds its peer listener to its own `peer_addr`, and every
//! member derives the cluster id from the `(id, peer_addr)` pairs of the
//! cluster file, so the file cannot simply name the proxy instead of the
//! member. What works is to leave the file alone and redirect the
//! connections with a DNAT rule in the `nat` table's `OUTPUT` chain (every
//! member runs on this host, e.g. inside a network namespace on
//! 127.0.0.1/.2/.3). To delay what member A (127.0.0.1:7001) sends to member
//! B (127.0.0.2:7002):
//!
//! ```text
//! raft-delay-proxy --listen 127.0.0.250:17012 --to 127.0.0.2:7002 --delay-ms 50 &
//! iptables -t nat -A OUTPUT -s 127.0.0.1 -d 127.0.0.2 -p tcp --dport 7002 \
//!          -j DNAT --to-destination 127.0.0.250:17012
//! ```
//!
//! The rule matches A's source address (members bind their outgoing peer
//! connections to their own IP), and the proxy's own connection to B leaves
//! from the proxy's address (`--bind`, by default the listen IP), so it is not
//! redirected again. B sees a connection from 127.0.0.250; it identifies
//! peers by the handshake, not by address, so that is fine. Members send on
//! their own outbound connection and receive on the peer's, so a second proxy
//! and rule for B → A delays the replies too; with both, one-way latency on
//! the link is `delay` and a Raft round trip `2 × delay`, like netem on both
//! ends. NAT applies to new connections only: existing A–B connections must be
//! closed (`ss -K`) so that the members redial through the proxy.
//! `tools/fault.sh delay A B MS` does all of this and `tools/fault.sh heal`
//! undoes it.
//!
//! # Bounds
//!
//! At most `--max-conns` proxied connections at once (more are closed on
//! accept); each direction of each connection holds at most
//! [`QUEUE_CHUNKS`] chunks of at most [`CHUNK`] bytes in flight. When the
//! queue is full the proxy stops reading, and TCP flow control pushes back on
//! the sender. EOF is forwarded as a half-close after the bytes ahead of it;
//! an error on either side closes both sides of that connection only.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use raft_proto::Rng;
use tools::net::connect_from;

/// Largest chunk read (and delayed) at once.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction of a connection; with [`CHUNK`] that bounds
/// the bytes held per direction to 1 MiB.
const QUEUE_CHUNKS: usize = 64;
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "raft-delay-proxy",
    about = "TCP proxy that delays each chunk by --delay-ms (+ jitter), both directions, in order"
)]
struct Args {
    /// Address to accept connections on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward each connection to.
    #[arg(long)]
    to: SocketAddr,
    /// Delay added to every chunk, each direction.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    delay_ms: u64,
    /// Extra delay drawn uniformly from [0, jitter] per chunk; order is kept.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    jitter_ms: u64,
    /// Source IP of the proxy's outgoing connections (default: the listen
    /// IP), so that a NAT rule keyed on the members' addresses skips them.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Proxied connections at once, at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_conns: u64,
}

/// The delay settings shared by every pump.
#[derive(Clone, Copy, Debug)]
struct Delay {
    base: Duration,
    jitter_ms: u64,
}

/// One chunk on its way, or the sender's half-close.
enum Item {
    Data { due: Instant, bytes: Vec<u8> },
    Eof { due: Instant },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("raft-delay-proxy: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let bind_ip = args.bind.unwrap_or(args.listen.ip());
    let delay = Delay {
        base: Duration::from_millis(args.delay_ms),
        jitter_ms: args.jitter_ms,
    };
    eprintln!(
        "raft-delay-proxy: {} -> {} (from {bind_ip}), delay {} ms, jitter {} ms",
        args.listen, args.to, args.delay_ms, args.jitter_ms
    );
    let active = Arc::new(AtomicUsize::new(0));
    let max = usize::try_from(args.max_conns).unwrap_or(usize::MAX);
    // Jitter needs no reproducibility: the clock seeds it, and each
    // direction of each connection draws from a generator of its own.
    let mut seeds = Rng::new(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()),
    );
    for conn in listener.incoming() {
        let client = match conn {
            Ok(c) => c,
            // A failed accept (the client gave up, out of descriptors) ends
            // that connection only; back off a little in case it repeats.
            Err(e) => {
                eprintln!("raft-delay-proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= max {
            eprintln!("raft-delay-proxy: {max} connections already; closing a new one");
            continue;
        }
        let seeds = [seeds.next_u64(), seeds.next_u64()];
        active.fetch_add(1, Ordering::SeqCst);
        let (to, active) = (args.to, Arc::clone(&active));
        let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
            if let Err(e) = proxy(client, to, bind_ip, delay, seeds) {
                eprintln!("raft-delay-proxy: connection to {to}: {e}");
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            eprintln!("raft-delay-proxy: cannot start a thread: {e}");
        }
    }
    ExitCode::SUCCESS
}

/// Connects to the target and runs both directions until both are closed.
fn proxy(
    client: TcpStream,
    to: SocketAddr,
    bind_ip: IpAddr,
    delay: Delay,
    seeds: [u64; 2],
) -> io::Result<()> {
    let server = connect_from(bind_ip, to, CONNECT_TIMEOUT)?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let up = pump(client.try_clone()?, server.try_clone()?, delay, seeds[0])?;
    let down = pump(server, client, delay, seeds[1])?;
    for h in up.into_iter().chain(down) {
        let _ = h.join();
    }
    Ok(())
}

/// Starts the reader and writer of one direction, `from` → `to`.
fn pump(
    from: TcpStream,
    to: TcpStream,
    delay: Delay,
    seed: u64,
) -> io::Result<[thread::JoinHandle<()>; 2]> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
    // The writer needs a handle on `from` to close it when `to` fails, so
    // that the reader (blocked in read) ends too.
    let from_for_writer = from.try_clone()?;
    let reader = thread::Builder::new()
        .name("read".into())
        .spawn(move || read_side(from, tx, delay, seed))?;
    let writer = thread::Builder::new()
        .name("write".into())
        .spawn(move || write_side(to, from_for_writer, rx))?;
    Ok([reader, writer])
}

/// Reads chunks and stamps each with its due time. The due time never goes
/// backwards, so jitter cannot reorder chunks.
fn read_side(mut from: TcpStream, tx: SyncSender<Item>, delay: Delay, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut last_due = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A reset or any other error: the writer closes the other side
            // at once instead of delivering what is queued (as a real reset
            // would discard it too).
            Err(_) => return,
        };
        let now = Instant::now();
        let jitter = Duration::from_millis(rng.range(0, delay.jitter_ms + 1));
        let due = (now + delay.base + jitter).max(last_due);
        last_due = due;
        let item = if n == 0 {
            Item::Eof { due }
        } else {
            Item::Data {
                due,
                bytes: buf[..n].to_vec(),
            }
        };
        let eof = n == 0;
        // A full queue blocks here: back-pressure to the sender.
        if tx.send(item).is_err() || eof {
            return;
        }
    }
}

/// Writes each chunk when it is due. On EOF half-closes `to`; on a broken
/// channel (the reader saw an error) or a write error closes both sockets.
fn write_side(mut to: TcpStream, from: TcpStream, rx: Receiver<Item>) {
    while let Ok(item) = rx.recv() {
        let due = match &item {
            Item::Data { due, .. } | Item::Eof { due } => *due,
        };
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        match item {
            Item::Data { bytes, .. } => {
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            Item::Eof { .. } => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
