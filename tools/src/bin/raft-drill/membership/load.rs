//! The write load of a membership run: the writers, what they saw, the
//! steps timed against it, and the check that every acknowledged write is
//! still there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tools::resp::{Conn, Reply};

use super::control::{Drill, ADMIN_IO_TIMEOUT};
use crate::logs::crash_summary;
use crate::{CONNECT_TIMEOUT, HEALTH_TIMEOUT, POLL};

/// Writes per client at most, so the record of acknowledged writes
/// stays bounded (a run lasts well under a minute; this is minutes of
/// load at the fastest rate this machine reaches).
pub const MAX_WRITES_PER_CLIENT: u64 = 2_000_000;
/// A write not acknowledged within this long is given up (and counted).
pub const WRITE_GIVE_UP: Duration = Duration::from_secs(30);
/// Pause before a resend (after CLUSTERDOWN, TRYAGAIN, an error or a
/// refused connection). Short: a longer one would itself become part of
/// the pauses the drill measures.
pub const RESEND_PAUSE: Duration = Duration::from_millis(1);
/// Redirects followed in a row without a pause: a hand-over can bounce
/// a client between the old leader and the target for a moment.
pub const FREE_HOPS: u32 = 3;
/// Read/write timeout of the writers' connections; a write whose reply
/// takes longer is resent.
pub const WRITE_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Load alone before the first step of a run: the reference pause.
pub const STEADY: Duration = Duration::from_secs(2);
/// Error replies kept per client for the report (counted beyond that).
pub const MAX_ERRORS_KEPT: usize = 10_000;
/// GETs in flight while reading the writes back.
pub const VERIFY_BATCH: usize = 256;

/// One acknowledged write.
pub struct Ack {
    pub seq: u64,
    pub sent: Instant,
    pub acked: Instant,
}

/// What one writer saw.
#[derive(Default)]
pub struct ClientLog {
    pub acks: Vec<Ack>,
    /// Writes that got an error reply other than a redirect: sequence
    /// number and the time of the first such reply.
    pub failed: Vec<(u64, Instant)>,
    /// Error replies other than redirects, with their time.
    pub errors: Vec<(Instant, String)>,
    pub errors_dropped: u64,
    /// Resends after a timeout or a lost connection (outcome unknown).
    pub unknown: Vec<Instant>,
    /// MOVED, CLUSTERDOWN and TRYAGAIN replies.
    pub redirects: u64,
    /// Writes given up after WRITE_GIVE_UP.
    pub given_up: u64,
}

impl ClientLog {
    pub fn error(&mut self, seq: u64, at: Instant, first: &mut bool, e: String) {
        if *first {
            self.failed.push((seq, at));
            *first = false;
        }
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push((at, e));
        } else {
            self.errors_dropped += 1;
        }
    }
}

/// Writes `md:TAG:C:SEQ` = `SEQ` until `stop`, each one until it is
/// acknowledged.
pub fn writer(c: u32, tag: &str, addrs: &[SocketAddr], stop: &AtomicBool) -> ClientLog {
    let mut log = ClientLog::default();
    let mut next = c as usize % addrs.len();
    let mut target = addrs[next];
    let mut conn: Option<Conn> = None;
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) && seq < MAX_WRITES_PER_CLIENT {
        seq += 1;
        let key = format!("md:{tag}:{c}:{seq}");
        let value = seq.to_string();
        let sent = Instant::now();
        let mut first_error = true;
        let mut hops = 0;
        loop {
            if stop.load(Ordering::SeqCst) {
                // Not acknowledged: not checked either.
                return log;
            }
            if sent.elapsed() > WRITE_GIVE_UP {
                log.given_up += 1;
                break;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::connect_timeouts(target, CONNECT_TIMEOUT, WRITE_IO_TIMEOUT) {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        // Down (stopped, restarting, removed): try the
                        // next member.
                        next = (next + 1) % addrs.len();
                        target = addrs[next];
                        thread::sleep(RESEND_PAUSE);
                        continue;
                    }
                },
            };
            match c.cmd(&["SET", &key, &value]) {
                Ok(Reply::Simple(s)) if s == "OK" => {
                    log.acks.push(Ack {
                        seq,
                        sent,
                        acked: Instant::now(),
                    });
                    break;
                }
                Ok(r @ Reply::Error(_)) if r.moved_to().is_some() => {
                    log.redirects += 1;
                    let to = r.moved_to().expect("checked");
                    if to != target {
                        target = to;
                        conn = None;
                    }
                    hops += 1;
                    if hops > FREE_HOPS {
                        thread::sleep(RESEND_PAUSE);
                    }
                }
                Ok(Reply::Error(e))
                    if e.starts_with("CLUSTERDOWN") || e.starts_with("TRYAGAIN") =>
                {
                    log.redirects += 1;
                    thread::sleep(RESEND_PAUSE);
                }
                Ok(Reply::Error(e)) => {
                    let e: String = e.chars().take(160).collect();
                    log.error(seq, Instant::now(), &mut first_error, e);
                    thread::sleep(RESEND_PAUSE);
                }
                Ok(other) => {
                    let e = format!("unexpected reply {other:?}");
                    log.error(seq, Instant::now(), &mut first_error, e);
                    thread::sleep(RESEND_PAUSE);
                }
                Err(_) => {
                    log.unknown.push(Instant::now());
                    conn = None;
                    next = (next + 1) % addrs.len();
                    target = addrs[next];
                }
            }
        }
    }
    log
}

/// One step of a run.
pub struct Step {
    pub name: String,
    pub start: Instant,
    pub end: Instant,
    /// What happened (Ok), or why the step could not be carried out.
    pub outcome: Result<String, String>,
}

/// One run: load, steps, and what the writers saw.
pub struct Run {
    pub tag: String,
    pub title: String,
    pub start: Instant,
    pub end: Instant,
    pub steps: Vec<Step>,
    pub logs: Vec<ClientLog>,
    /// Acknowledged writes read back, and the lost ones.
    pub checked: u64,
    pub lost: Vec<String>,
    /// Problems found after the steps (lost writes, dead members,
    /// verification that could not run).
    pub failures: Vec<String>,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.steps.iter().all(|s| s.outcome.is_ok())
    }
    pub fn acked(&self) -> usize {
        self.logs.iter().map(|l| l.acks.len()).sum()
    }
    pub fn failed(&self) -> usize {
        self.logs.iter().map(|l| l.failed.len()).sum()
    }
}

/// The numbers of one step's window.
pub struct Window {
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Longest time overlapping the window in which no client had a
    /// write acknowledged.
    pub pause: Duration,
    /// Longest single write (first send to acknowledgement) that
    /// overlaps the window.
    pub max_latency: Duration,
}

pub fn window(run: &Run, acks: &[Instant], s: Instant, e: Instant) -> Window {
    // The gaps between consecutive acknowledgements (and from the
    // start of the load to the first, from the last to its end).
    let mut pause = Duration::ZERO;
    let mut prev = run.start;
    for &a in acks.iter().chain(std::iter::once(&run.end)) {
        if a >= s && prev <= e {
            pause = pause.max(a.saturating_duration_since(prev));
        }
        prev = a;
        if prev > e {
            break;
        }
    }
    let within = |t: Instant| t >= s && t <= e;
    let all = || run.logs.iter().flat_map(|l| l.acks.iter());
    Window {
        acked: all().filter(|a| within(a.acked)).count(),
        failed: run
            .logs
            .iter()
            .flat_map(|l| l.failed.iter())
            .filter(|f| within(f.1))
            .count(),
        unknown: run
            .logs
            .iter()
            .flat_map(|l| l.unknown.iter())
            .filter(|&&t| within(t))
            .count(),
        pause,
        max_latency: all()
            .filter(|a| a.sent <= e && a.acked >= s)
            .map(|a| a.acked - a.sent)
            .max()
            .unwrap_or_default(),
    }
}

/// Runs `f`, timed, as a step of `run`; prints it as it ends.
pub fn step(
    steps: &mut Vec<Step>,
    name: impl Into<String>,
    f: impl FnOnce() -> Result<String, String>,
) -> bool {
    let name = name.into();
    let start = Instant::now();
    let outcome = f();
    let end = Instant::now();
    match &outcome {
        Ok(note) => println!(
            "  {name}: {} ms{}",
            (end - start).as_millis(),
            if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            }
        ),
        Err(e) => println!(
            "  {name}: FAILED after {} ms: {e}",
            (end - start).as_millis()
        ),
    }
    let ok = outcome.is_ok();
    steps.push(Step {
        name,
        start,
        end,
        outcome,
    });
    ok
}

/// Runs the steps of `body` under the write load, then reads every
/// acknowledged write back (from the leader, and with READONLY from
/// each of `check_on`).
pub fn under_load(
    d: &Drill,
    tag: &str,
    title: &str,
    check_on: &[u64],
    body: impl FnOnce(&mut Vec<Step>),
) -> Run {
    println!("\n{tag}: {title}");
    let addrs = d.addrs();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut steps = Vec::new();
    let logs = thread::scope(|s| {
        let handles: Vec<_> = (0..d.clients)
            .map(|c| {
                let (addrs, stop) = (&addrs, &stop);
                s.spawn(move || writer(c, tag, addrs, stop))
            })
            .collect();
        // The writers stop however the steps end (even by a panic).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _guard = StopOnDrop(&stop);
        step(
            &mut steps,
            format!("steady load ({} s)", STEADY.as_secs()),
            || {
                thread::sleep(STEADY);
                Ok(String::new())
            },
        );
        body(&mut steps);
        stop.store(true, Ordering::SeqCst);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    let end = Instant::now();
    let mut run = Run {
        tag: tag.to_string(),
        title: title.to_string(),
        start,
        end,
        steps,
        logs,
        checked: 0,
        lost: Vec::new(),
        failures: Vec::new(),
    };
    verify(d, &mut run, check_on);
    for m in &d.cl.members {
        if m.pid_file.exists() && !d.alive(m.id) {
            run.failures.push(format!(
                "member {} died: {}",
                m.id,
                crash_summary(&m.log, 0)
            ));
        }
    }
    run
}

/// Reads every acknowledged write of `run` back.
pub fn verify(d: &Drill, run: &mut Run, check_on: &[u64]) {
    // A leader is enough to read from: a member that did not catch up
    // is the step's failure, not a reason to skip the check.
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    let leader = loop {
        if let Some((l, _)) = d.leader() {
            break l;
        }
        if Instant::now() > deadline {
            run.failures.push(format!(
                "cannot read the writes back: no leader within {} s",
                HEALTH_TIMEOUT.as_secs()
            ));
            return;
        }
        thread::sleep(POLL);
    };
    let mut targets = vec![(leader, false)];
    targets.extend(
        check_on
            .iter()
            .filter(|&&id| id != leader && d.alive(id))
            .map(|&id| (id, true)),
    );
    for (id, readonly) in targets {
        match read_back(d, run, id, readonly) {
            Ok((checked, lost)) => {
                println!(
                    "  read back from member {id}{}: {checked} acknowledged writes, {} lost",
                    if readonly { " (READONLY)" } else { " (leader)" },
                    lost.len()
                );
                run.checked = run.checked.max(checked);
                if !lost.is_empty() {
                    run.failures.push(format!(
                        "member {id}: {} acknowledged writes lost, e.g. {}",
                        lost.len(),
                        lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                run.lost.extend(lost);
            }
            Err(e) => run
                .failures
                .push(format!("reading the writes back from member {id}: {e}")),
        }
    }
}

pub fn read_back(
    d: &Drill,
    run: &Run,
    id: u64,
    readonly: bool,
) -> Result<(u64, Vec<String>), String> {
    let mut c = Conn::connect_timeouts(
        d.cl.member(id).client_addr,
        CONNECT_TIMEOUT,
        ADMIN_IO_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    if readonly {
        match c.cmd(&["READONLY"]) {
            Ok(Reply::Simple(_)) => {}
            other => return Err(format!("READONLY: {other:?}")),
        }
    }
    let mut checked = 0;
    let mut lost = Vec::new();
    for (client, log) in run.logs.iter().enumerate() {
        for batch in log.acks.chunks(VERIFY_BATCH) {
            let keys: Vec<String> = batch
                .iter()
                .map(|a| format!("md:{}:{client}:{}", run.tag, a.seq))
                .collect();
            for k in &keys {
                c.send(&[b"GET", k.as_bytes()]).map_err(|e| e.to_string())?;
            }
            for (a, k) in batch.iter().zip(&keys) {
                let want = a.seq.to_string();
                match c.read().map_err(|e| format!("GET {k}: {e}"))? {
                    Reply::Bulk(Some(v)) if v == want.as_bytes() => {}
                    Reply::Bulk(Some(v)) => lost.push(format!(
                        "{k} = {:?} (acknowledged {want})",
                        String::from_utf8_lossy(&v)
                    )),
                    Reply::Bulk(None) => lost.push(format!("{k} missing")),
                    other => return Err(format!("GET {k}: {other:?}")),
                }
                checked += 1;
            }
        }
    }
    Ok((checked, lost))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_is_the_longest_gap_overlapping_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let log = ClientLog {
            acks: [10, 20, 70, 75]
                .iter()
                .map(|&ms| Ack {
                    seq: ms,
                    sent: at(ms - 5),
                    acked: at(ms),
                })
                .collect(),
            ..ClientLog::default()
        };
        let run = Run {
            tag: "t".into(),
            title: "t".into(),
            start: t0,
            end: at(100),
            steps: Vec::new(),
            logs: vec![log],
            checked: 0,
            lost: Vec::new(),
            failures: Vec::new(),
        };
        let acks: Vec<Instant> = run.logs[0].acks.iter().map(|a| a.acked).collect();
        // The 20..70 gap overlaps a window inside it, and one that
        // only touches its end.
        let w = window(&run, &acks, at(30), at(40));
        assert_eq!((w.pause, w.acked), (Duration::from_millis(50), 0));
        let w = window(&run, &acks, at(72), at(74));
        assert_eq!(w.pause, Duration::from_millis(5));
        // From the last acknowledgement to the end of the load.
        let w = window(&run, &acks, at(90), at(95));
        assert_eq!(w.pause, Duration::from_millis(25));
        assert_eq!(w.max_latency, Duration::ZERO);
        let w = window(&run, &acks, at(0), at(100));
        assert_eq!((w.acked, w.max_latency), (4, Duration::from_millis(5)));
    }
}
