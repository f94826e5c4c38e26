//! `raft-idle-floor`: what a member at rest costs on this machine with no
//! Raft in it at all, as a reference for raft-node's idle CPU.
//!
//! ```text
//! raft-idle-floor --secs 30
//! idle floor over 30 s (heartbeat 50 ms, answers on separate links): leader 0.34%, followers 0.11% / 0.12%
//! ```
//!
//! Three processes on 127.0.0.1 do what three members at rest must do and
//! nothing else: a "leader" wakes every heartbeat interval and writes a
//! heartbeat-sized message (64 bytes) to each of two "followers"; each
//! follower reads it and writes back a 48-byte answer. Every process runs
//! one mio loop with a timer, as raft-node does (`epoll_wait` with a
//! timeout, non-blocking `recv` until a short read, one `send` per
//! message), so the figure is the floor of that design: the kernel's and
//! the hypervisor's cost of the wake-ups and the loopback TCP traffic.
//! With `--links separate` (the default) answers come back on a second
//! connection the follower dialled, the way raft-node's peer links work;
//! `--links same` answers on the heartbeat's own connection, where the
//! answer carries the TCP ACK.
//!
//! CPU is each process's `schedstat` run time (all threads) over the
//! window, after a second of warm-up.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const HEARTBEAT_BYTES: usize = 64;
const ANSWER_BYTES: usize = 48;
/// A follower's poll timeout: it has an election timer armed, as a member
/// does; it never fires while heartbeats come.
const FOLLOWER_TIMER: Duration = Duration::from_millis(300);

#[derive(Parser, Debug)]
#[command(
    name = "raft-idle-floor",
    about = "Idle CPU of three bare processes exchanging heartbeats: the floor for raft-node at rest"
)]
struct Args {
    /// Length of the measured window.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
    /// Heartbeat interval (raft-node's default is 50 ms).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    heartbeat_ms: u64,
    /// Where the followers' answers travel.
    #[arg(long, value_enum, default_value_t = Links::Separate)]
    links: Links,
    /// Print one JSON object instead of the text line.
    #[arg(long)]
    json: bool,
    /// Internal: run as one of the three processes.
    #[arg(long, hide = true)]
    role: Option<String>,
    /// Internal: the leader's listen port (separate links) and the
    /// followers' ports.
    #[arg(long, hide = true, value_delimiter = ',')]
    ports: Vec<u16>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Links {
    /// Answers on a second connection, dialled by the follower.
    Separate,
    /// Answers on the heartbeat's connection.
    Same,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.role.as_deref() {
        None => measure(&args),
        // A process of the run ends when the others are killed.
        Some("leader") => quiet_eof(leader(&args)),
        Some("follower") => quiet_eof(follower(&args)),
        Some(other) => Err(io::Error::other(format!("unknown role {other}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-idle-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn quiet_eof(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        r => r,
    }
}

/// Kills the children when dropped, so no process outlives a failed run.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn measure(args: &Args) -> io::Result<()> {
    // Three free ports, held until all are chosen.
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()?;
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<_>>()?;
    drop(held);
    let ports_arg = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe()?;
    let links = match args.links {
        Links::Separate => "separate",
        Links::Same => "same",
    };
    let spawn = |role: &str| {
        Command::new(&exe)
            .args(["--role", role, "--ports", &ports_arg, "--links", links])
            .arg("--heartbeat-ms")
            .arg(args.heartbeat_ms.to_string())
            .spawn()
    };
    let mut children = Children(Vec::new());
    children.0.push(spawn("follower")?);
    children.0.push(spawn("follower")?);
    children.0.push(spawn("leader")?);
    std::thread::sleep(Duration::from_secs(1));
    let pids: Vec<u32> = children.0.iter().map(Child::id).collect();
    let before = pids
        .iter()
        .map(|&p| run_ns(p))
        .collect::<io::Result<Vec<_>>>()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.secs));
    let after = pids
        .iter()
        .map(|&p| run_ns(p))
        .collect::<io::Result<Vec<_>>>()?;
    let window = start.elapsed().as_secs_f64();
    for c in &mut children.0 {
        if let Some(status) = c.try_wait()? {
            return Err(io::Error::other(format!(
                "a process of the run exited early ({status}): no figure"
            )));
        }
    }
    let pct: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64 / 1e9 / window * 100.0)
        .collect();
    if args.json {
        println!(
            "{{\"secs\":{:.1},\"heartbeat_ms\":{},\"links\":\"{links}\",\"leader_cpu_pct\":{:.3},\"follower_cpu_pct\":[{:.3},{:.3}]}}",
            window, args.heartbeat_ms, pct[2], pct[0], pct[1]
        );
    } else {
        println!(
            "idle floor over {window:.0} s (heartbeat {} ms, answers on {links} links): leader {:.3}%, followers {:.3}% / {:.3}%",
            args.heartbeat_ms, pct[2], pct[0], pct[1]
        );
    }
    Ok(())
}

/// Nanoseconds on CPU of every thread of process `pid`.
fn run_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let first = text.split_whitespace().next().unwrap_or("0");
        total += first
            .parse::<u64>()
            .map_err(|e| io::Error::other(format!("schedstat of {pid}: {e}")))?;
    }
    Ok(total)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Connects, retrying for a few seconds while the other process starts.
fn dial(port: u16) -> io::Result<std::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect(addr(port)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads everything queued on `s` (until a short read), returns the bytes read.
fn drain(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    loop {
        match s.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                total += n;
                if n < buf.len() {
                    return Ok(total);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// One poll; a signal (a tracer attaching, say) is an empty wake-up.
fn wait(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        r => r,
    }
}

fn send(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    // Idle traffic never fills a socket buffer; a short write is a failure.
    match s.write(bytes)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::Error::other("short write at rest")),
    }
}

fn leader(args: &Args) -> io::Result<()> {
    let (listen, followers) = (args.ports[0], [args.ports[1], args.ports[2]]);
    let listener = std::net::TcpListener::bind(addr(listen))?;
    let mut poll = Poll::new()?;
    let mut out: Vec<TcpStream> = Vec::new();
    for (i, &p) in followers.iter().enumerate() {
        let mut s = TcpStream::from_std(dial(p)?);
        s.set_nodelay(true)?;
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)?;
        out.push(s);
    }
    let mut inbound: Vec<TcpStream> = Vec::new();
    if args.links == Links::Separate {
        for i in 0..2 {
            let (s, _) = listener.accept()?;
            s.set_nonblocking(true)?;
            let mut s = TcpStream::from_std(s);
            s.set_nodelay(true)?;
            poll.registry()
                .register(&mut s, Token(2 + i), Interest::READABLE)?;
            inbound.push(s);
        }
    }
    let interval = Duration::from_millis(args.heartbeat_ms);
    let heartbeat = [7u8; HEARTBEAT_BYTES];
    let mut buf = [0u8; 4096];
    let mut events = Events::with_capacity(16);
    let mut next = Instant::now() + interval;
    loop {
        let now = Instant::now();
        if now >= next {
            for s in &mut out {
                send(s, &heartbeat)?;
            }
            next = now + interval;
        }
        let timeout = next.saturating_duration_since(Instant::now());
        wait(&mut poll, &mut events, timeout)?;
        for ev in &events {
            let i = ev.token().0;
            let s = if i < 2 {
                &mut out[i]
            } else {
                &mut inbound[i - 2]
            };
            drain(s, &mut buf)?;
        }
    }
}

fn follower(args: &Args) -> io::Result<()> {
    // The two followers race for the two ports; the loser takes the other.
    let listener = std::net::TcpListener::bind(addr(args.ports[1]))
        .or_else(|_| std::net::TcpListener::bind(addr(args.ports[2])))?;
    let (s, _) = listener.accept()?;
    s.set_nonblocking(true)?;
    let mut inbound = TcpStream::from_std(s);
    inbound.set_nodelay(true)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut inbound, Token(0), Interest::READABLE)?;
    let mut out = match args.links {
        Links::Separate => {
            let s = dial(args.ports[0])?;
            s.set_nonblocking(true)?;
            Some(TcpStream::from_std(s))
        }
        Links::Same => None,
    };
    let answer = [9u8; ANSWER_BYTES];
    let mut buf = [0u8; 4096];
    let mut pending = 0;
    let mut events = Events::with_capacity(16);
    loop {
        wait(&mut poll, &mut events, FOLLOWER_TIMER)?;
        if events.is_empty() {
            continue; // the election timer: nothing to do at rest
        }
        pending += drain(&mut inbound, &mut buf)?;
        while pending >= HEARTBEAT_BYTES {
            pending -= HEARTBEAT_BYTES;
            match &mut out {
                Some(s) => send(s, &answer)?,
                None => send(&mut inbound, &answer)?,
            }
        }
    }
}
