//! The failover drill: break the leader, measure detection, election and
//! unavailability, check the old leader rejoins quietly (the steps are in
//! the crate doc).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tools::netns::{is_root, on_path};
use tools::resp::{Conn, Reply};

use crate::cluster::Cluster;
use crate::logs::{
    crash_summary, is_detection, is_role_line, leader_term, log_len, now_ms, read_log_from, LogLine,
};
use crate::{
    cluster_paths, wait_until, Args, Fault, WritesVia, CONNECT_TIMEOUT, INSIDE_ENV, IO_TIMEOUT,
    POLL,
};

/// Pause between write attempts that did not succeed.
const WRITE_RETRY: Duration = Duration::from_millis(5);
/// After the old leader rejoined: how long nothing may change.
const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// The healthy state a trial starts from.
struct Healthy {
    leader: u64,
    term: u64,
}

/// Waits until every member answers, exactly one leads and the others
/// follow it in its term, a write commits and every member applied it.
fn wait_healthy(cl: &Cluster, tag: &str) -> Result<Healthy, String> {
    let mut n = 0u64;
    wait_until("healthy", || check_healthy(cl, tag, &mut n))
}

fn check_healthy(cl: &Cluster, tag: &str, n: &mut u64) -> Result<Healthy, String> {
    let mut infos = Vec::new();
    for m in &cl.members {
        if !cl.alive(m.id) {
            return Err(format!("member {} is not running", m.id));
        }
        infos.push((m.id, cl.info(m.id)?));
    }
    let leaders: Vec<_> = infos.iter().filter(|(_, i)| i.role == "leader").collect();
    let [(leader, li)] = leaders[..] else {
        return Err(format!("{} members report leader", leaders.len()));
    };
    for (id, i) in &infos {
        if *id != *leader && (i.role != "follower" || i.leader != *leader || i.term != li.term) {
            return Err(format!(
                "member {id} is {} of {} in term {} (leader {leader} in term {})",
                i.role, i.leader, i.term, li.term
            ));
        }
    }
    *n += 1;
    let mut c = Conn::connect_timeouts(cl.member(*leader).client_addr, CONNECT_TIMEOUT, IO_TIMEOUT)
        .map_err(|e| format!("leader {leader}: {e}"))?;
    match c.cmd(&["SET", &format!("drill:health:{tag}"), &n.to_string()]) {
        Ok(Reply::Simple(s)) if s == "OK" => {}
        other => return Err(format!("health write via {leader}: {other:?}")),
    }
    // Followers learn the commit index with the next heartbeat: give them
    // a few before writing again.
    let commit = cl.info(*leader)?.commit_index;
    let until = Instant::now() + Duration::from_secs(2);
    for m in &cl.members {
        loop {
            let i = cl.info(m.id)?;
            if i.last_applied >= commit {
                break;
            }
            if Instant::now() > until {
                return Err(format!(
                    "member {} applied {} of {commit}",
                    m.id, i.last_applied
                ));
            }
            thread::sleep(POLL);
        }
    }
    Ok(Healthy {
        leader: *leader,
        term: li.term,
    })
}

/// Shared between the writers of one trial.
struct Writes {
    stop: AtomicBool,
    attempts: AtomicU64,
    /// Time after T0 and member of the first acknowledged write.
    first_ack: Mutex<Option<(Duration, u64)>>,
}

/// Keeps writing to `start` (a survivor) until a write is acknowledged or
/// `stop` is set. Follows MOVED to other survivors, never to `old_leader`.
fn writer(cl: &Cluster, start: u64, old_leader: u64, t0: Instant, trial: u32, w: &Writes) {
    let mut target = start;
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !w.stop.load(Ordering::SeqCst) {
        seq += 1;
        w.attempts.fetch_add(1, Ordering::Relaxed);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect_timeouts(
                cl.member(target).client_addr,
                CONNECT_TIMEOUT,
                IO_TIMEOUT,
            ) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    thread::sleep(WRITE_RETRY);
                    continue;
                }
            },
        };
        let key = format!("drill:{trial}:{start}");
        match c.cmd(&["SET", &key, &seq.to_string()]) {
            Ok(Reply::Simple(s)) if s == "OK" => {
                let at = t0.elapsed();
                let mut first = w.first_ack.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some((at, target));
                }
                w.stop.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Reply::Error(e)) if e.starts_with("MOVED") => {
                let to = e
                    .rsplit(' ')
                    .next()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                match cl.members.iter().find(|m| Some(m.client_addr) == to) {
                    Some(m) if m.id != old_leader && m.id != target => {
                        target = m.id;
                        conn = None;
                        continue;
                    }
                    // Pointed at the old leader (or back at itself): ask
                    // this survivor again shortly.
                    _ => thread::sleep(WRITE_RETRY),
                }
            }
            // CLUSTERDOWN, a failed write, anything else: retry.
            Ok(_) => thread::sleep(WRITE_RETRY),
            // A timeout or broken connection: the write's outcome is
            // unknown; it does not count. Reconnect.
            Err(_) => {
                conn = None;
                thread::sleep(WRITE_RETRY);
            }
        }
    }
}

/// The measurements of one trial.
#[derive(Debug, Default)]
struct TrialResult {
    detection_ms: Option<i64>,
    election_ms: Option<i64>,
    unavailable_ms: Option<i64>,
    term_before: u64,
    term_elected: Option<u64>,
    term_after: Option<u64>,
    failures: Vec<String>,
    /// How long injecting the fault took (fault.sh for isolate).
    injected_ms: u128,
    /// The detection line that says why (`n2: link to leader 1 lost: ...`).
    detected_by: String,
    /// The member that logged `became leader` first.
    elected: Option<u64>,
    /// The survivor through which the first write was acknowledged.
    acked_via: Option<u64>,
    /// How the old leader came back (`member 1 follower again after ...`).
    rejoin: String,
}

pub fn run(args: &Args) -> Result<bool, String> {
    let (data, script, bin) = cluster_paths(args, "or --start")?;
    if args.fault() == Fault::Isolate && !is_root() {
        return Err("--fault isolate: needs root (iptables)".into());
    }
    if args.trials == 0 {
        return Err("--trials 0: a drill must run at least one trial".into());
    }
    if args.fault() == Fault::Isolate {
        // Checked before anything starts: without iptables no fault would
        // take effect, and the drill would measure nothing.
        for tool in ["iptables", "iptables-restore"] {
            if !on_path(tool) {
                return Err(format!(
                    "--fault isolate: {tool} not found (apt-get install iptables)"
                ));
            }
        }
    }
    if args.start {
        let cl = Cluster::unloaded(&data, &script, &bin);
        let out = cl.fault_sh(&["cluster-start"])?;
        println!(
            "{}",
            out.lines()
                .filter(|l| l.starts_with("leader:"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let cl = Cluster::load(&data, script, bin)?;
    let result = trials(args, &cl);
    if args.start {
        if let Err(e) = cl
            .fault_sh(&["heal"])
            .and_then(|_| cl.fault_sh(&["cluster-stop"]))
        {
            eprintln!("raft-drill: stopping the cluster: {e}");
        }
    } else if args.fault() == Fault::Isolate {
        let _ = cl.fault_sh(&["heal"]);
    }
    result
}

fn trials(args: &Args, cl: &Cluster) -> Result<bool, String> {
    println!(
        "raft-drill: fault {:?}, {} trials, {} members in {}{} (heartbeat {} ms, election timeout {}-{} ms)",
        args.fault(),
        args.trials,
        cl.members.len(),
        cl.data.display(),
        std::env::var(INSIDE_ENV)
            .map(|ns| format!(", namespace {ns}"))
            .unwrap_or_default(),
        cl.heartbeat_ms,
        cl.election_timeout_ms.0,
        cl.election_timeout_ms.1,
    );
    let mut results = Vec::new();
    for t in 1..=args.trials {
        let r = match trial(args, cl, t) {
            Ok(r) => r,
            Err(e) => {
                println!("trial {t}/{}: cannot run: {e}", args.trials);
                print_summary(args, cl, &results);
                return Ok(false);
            }
        };
        let failed = !r.failures.is_empty();
        results.push(r);
        if failed {
            if args.stop_on_failure {
                break;
            }
            let restarted = cl.restart_dead();
            if !restarted.is_empty() {
                println!("  restarted dead members {restarted:?} to go on");
            }
        }
    }
    print_summary(args, cl, &results);
    Ok(!results.is_empty()
        && results.len() == args.trials as usize
        && results.iter().all(|r| r.failures.is_empty()))
}

/// One trial: wait for health, break the leader, measure, recover, check,
/// print.
fn trial(args: &Args, cl: &Cluster, t: u32) -> Result<TrialResult, String> {
    let h = wait_healthy(cl, &t.to_string())?;
    let l = h.leader;
    let survivors: Vec<u64> = cl
        .members
        .iter()
        .map(|m| m.id)
        .filter(|&id| id != l)
        .collect();
    let offsets: HashMap<u64, u64> = cl.members.iter().map(|m| (m.id, log_len(&m.log))).collect();
    let mut r = TrialResult {
        term_before: h.term,
        ..TrialResult::default()
    };
    let timeout = Duration::from_secs(args.failover_timeout_secs);
    let attempts = fail_over(args, cl, t, l, &survivors, &offsets, &mut r)?;
    if r.detection_ms.is_none() {
        r.failures.push(format!(
            "no survivor logged losing leader {l} within {} s",
            timeout.as_secs()
        ));
    }
    if r.elected.is_none() {
        r.failures.push(format!(
            "no survivor logged `became leader` within {} s",
            timeout.as_secs()
        ));
    }
    if r.unavailable_ms.is_none() {
        r.failures.push(format!(
            "no write through a survivor acknowledged within {} s ({attempts} attempts)",
            timeout.as_secs(),
        ));
    }
    let recover_ms = recover(args, cl, l, &survivors, &mut r);
    // Any member that died since the trial began is a failure, whatever
    // the fault was.
    for m in &cl.members {
        if !cl.alive(m.id) {
            r.failures.push(format!(
                "member {} exited: {}",
                m.id,
                crash_summary(&m.log, offsets[&m.id])
            ));
        }
    }
    print_trial(args, cl, t, l, &r, offsets[&l], recover_ms);
    Ok(r)
}

/// Injects the fault on leader `l` (T0 is when it is in place), then
/// writes through the survivors and polls their logs until both an
/// election and an acknowledged write are seen, or the failover timeout
/// passes. Fills in what it measured; returns the write attempts made.
fn fail_over(
    args: &Args,
    cl: &Cluster,
    t: u32,
    l: u64,
    survivors: &[u64],
    offsets: &HashMap<u64, u64>,
    r: &mut TrialResult,
) -> Result<u64, String> {
    let writes = Writes {
        stop: AtomicBool::new(false),
        attempts: AtomicU64::new(0),
        first_ack: Mutex::new(None),
    };
    let write_via: Vec<u64> = match args.writes_via {
        WritesVia::All => survivors.to_vec(),
        WritesVia::One => survivors[..1].to_vec(),
    };
    let timeout = Duration::from_secs(args.failover_timeout_secs);
    thread::scope(|s| -> Result<(), String> {
        // T0 is the moment the fault is in place. A signal takes effect at
        // once; fault.sh installs the isolation rules in one transaction as
        // its last step, so T0 is when it returns (the tens of ms of bash
        // before that are not counted).
        let started = Instant::now();
        let injected = match args.fault() {
            Fault::Kill => cl.signal(l, libc::SIGKILL),
            Fault::Freeze => cl.signal(l, libc::SIGSTOP),
            Fault::Isolate => cl.fault_sh(&["isolate", &l.to_string()]).map(|_| ()),
        };
        let t0_ms = now_ms();
        let t0 = Instant::now();
        injected?;
        r.injected_ms = started.elapsed().as_millis();
        for &via in &write_via {
            let w = &writes;
            s.spawn(move || writer(cl, via, l, t0, t, w));
        }
        loop {
            let mut lines: Vec<LogLine> = survivors
                .iter()
                .flat_map(|id| read_log_from(&cl.member(*id).log, offsets[id]))
                .filter(|x| x.at_ms >= t0_ms)
                .collect();
            lines.sort_by_key(|x| x.at_ms);
            observe(&lines, l, t0_ms, r);
            let acked = writes
                .first_ack
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if (r.elected.is_some() && acked) || t0.elapsed() > timeout {
                break;
            }
            thread::sleep(POLL);
        }
        writes.stop.store(true, Ordering::SeqCst);
        Ok(())
    })?;
    let ack = *writes.first_ack.lock().unwrap_or_else(|p| p.into_inner());
    r.unavailable_ms = ack.map(|(d, _)| d.as_millis() as i64);
    r.acked_via = ack.map(|(_, via)| via);
    Ok(writes.attempts.load(Ordering::Relaxed))
}

/// Notes the first detection and the first election in the survivors'
/// log `lines` since T0 (sorted by time), unless already noted.
fn observe(lines: &[LogLine], l: u64, t0_ms: i64, r: &mut TrialResult) {
    if r.detection_ms.is_none() {
        if let Some(d) = lines.iter().find(|x| is_detection(&x.msg, l)) {
            r.detection_ms = Some(d.at_ms - t0_ms);
            // Of the lines in that millisecond, show the one that says why
            // (`no leader known` comes first, but says less).
            let why = lines
                .iter()
                .filter(|x| x.at_ms == d.at_ms && is_detection(&x.msg, l))
                .find(|x| !x.msg.starts_with("no leader known"))
                .unwrap_or(d);
            r.detected_by = format!("n{}: {}", why.node, why.msg);
        }
    }
    if r.elected.is_none() {
        if let Some((x, term)) = lines
            .iter()
            .find_map(|x| leader_term(&x.msg).map(|term| (x, term)))
        {
            r.election_ms = Some(x.at_ms - t0_ms);
            r.term_elected = Some(term);
            r.elected = Some(x.node);
        }
    }
}

/// Undoes the fault on the old leader `l` and checks that it rejoins
/// quietly; returns the wall-clock time (ms) recovery began.
fn recover(args: &Args, cl: &Cluster, l: u64, survivors: &[u64], r: &mut TrialResult) -> i64 {
    let recover_ms = now_ms();
    let recover_at = Instant::now();
    let recovered = match args.fault() {
        Fault::Kill => cl.fault_sh(&["restart", &l.to_string()]).map(|_| ()),
        Fault::Freeze => cl.signal(l, libc::SIGCONT),
        Fault::Isolate => cl.fault_sh(&["heal"]).map(|_| ()),
    };
    match recovered {
        Err(e) => r.failures.push(format!("recovery failed: {e}")),
        Ok(()) => match check_rejoin(args, cl, l, survivors, recover_at) {
            Ok((ms, term)) => {
                r.term_after = Some(term);
                r.rejoin = format!("member {l} follower again after {ms} ms");
            }
            Err(e) => r.failures.push(e),
        },
    }
    recover_ms
}

/// The trial's line, then what the old leader `l` logged since recovery
/// (its log read from `log_from`): its role lines when all went well, the
/// first lines and every failed check otherwise.
fn print_trial(
    args: &Args,
    cl: &Cluster,
    t: u32,
    l: u64,
    r: &TrialResult,
    log_from: u64,
    recover_ms: i64,
) {
    let fmt = |v: Option<i64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let term_change = match (r.term_elected, r.term_after) {
        (Some(e), Some(a)) if a != e => {
            format!("term {} -> {e} -> {a} after rejoin", r.term_before)
        }
        (Some(e), _) => format!("term {} -> {e} (+{})", r.term_before, e - r.term_before),
        _ => format!("term {} -> ?", r.term_before),
    };
    let took = if r.injected_ms > 1 {
        format!(" (fault.sh took {} ms)", r.injected_ms)
    } else {
        String::new()
    };
    let by = r
        .elected
        .map(|n| format!(" (member {n})"))
        .unwrap_or_default();
    let via = r
        .acked_via
        .map(|v| format!(" (via {v})"))
        .unwrap_or_default();
    let rejoin = if r.rejoin.is_empty() {
        String::new()
    } else {
        format!(" | {}", r.rejoin)
    };
    println!(
        "trial {t}/{}: leader {l} {}{took} | detection {} | election {}{by} \
         | first write acked {}{via} | {term_change}{rejoin}",
        args.trials,
        args.fault().verb(),
        fmt(r.detection_ms),
        fmt(r.election_ms),
        fmt(r.unavailable_ms),
    );
    if !r.detected_by.is_empty() {
        println!("  detected: {}", r.detected_by);
    }
    let since = || {
        read_log_from(&cl.member(l).log, log_from)
            .into_iter()
            .filter(move |x| x.at_ms >= recover_ms)
    };
    if r.failures.is_empty() && args.fault() != Fault::Kill {
        // What the old leader said on its way back: how quiet it was.
        let raft_lines: Vec<String> = since()
            .filter(|x| is_role_line(&x.msg))
            .map(|x| x.msg)
            .collect();
        let shown = raft_lines.iter().take(4).cloned().collect::<Vec<_>>();
        let more = raft_lines.len().saturating_sub(shown.len());
        println!(
            "  member {l} after recovery: {}{}",
            shown.join("; "),
            if more > 0 {
                format!("; ... {more} more")
            } else {
                String::new()
            }
        );
    }
    if !r.failures.is_empty() {
        for f in &r.failures {
            println!("  CHECK FAILED: {f}");
        }
        let lines: Vec<String> = since().take(12).map(|x| format!("    {}", x.msg)).collect();
        if !lines.is_empty() {
            println!("  member {l}'s log after recovery:\n{}", lines.join("\n"));
        }
    }
}

/// After recovery: the old leader `l` must show up as a follower of the
/// current leader in the current term within `--rejoin-ms`, and then for
/// [`QUIET_WINDOW`] no member's leader or term may change. Returns how long
/// the rejoin took and the term.
fn check_rejoin(
    args: &Args,
    cl: &Cluster,
    l: u64,
    survivors: &[u64],
    start: Instant,
) -> Result<(u128, u64), String> {
    // The survivors' view: who leads now, in which term.
    let current = |what: &str| -> Result<(u64, u64), String> {
        let mut seen = None;
        for &id in survivors {
            let i = cl.info(id)?;
            if i.role == "leader" {
                seen = Some((id, i.term));
            }
        }
        seen.ok_or_else(|| format!("{what}: no survivor reports itself leader"))
    };
    let limit = Duration::from_millis(args.rejoin_ms);
    let (leader, term, took) = loop {
        let now = current("after recovery");
        let old = cl.info(l);
        if let (Ok((leader, term)), Ok(i)) = (&now, &old) {
            if i.role == "follower" && i.leader == *leader && i.term == *term {
                break (*leader, *term, start.elapsed().as_millis());
            }
        }
        if start.elapsed() > limit {
            let seen = match (now, old) {
                (Ok((ld, tm)), Ok(i)) => format!(
                    "it is {} of {} in term {} while member {ld} leads term {tm}",
                    i.role, i.leader, i.term
                ),
                (Err(e), _) | (_, Err(e)) => e,
            };
            return Err(format!(
                "old leader {l} did not rejoin as a follower within {} ms: {seen}",
                args.rejoin_ms
            ));
        }
        thread::sleep(POLL);
    };
    let quiet_until = Instant::now() + QUIET_WINDOW;
    while Instant::now() < quiet_until {
        for m in &cl.members {
            let i = cl.info(m.id)?;
            if i.term != term || (m.id != leader && i.leader != leader) {
                return Err(format!(
                    "after member {l} rejoined, member {} went to {} of {} in term {} \
                     (was: member {leader} leading term {term})",
                    m.id, i.role, i.leader, i.term
                ));
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok((took, term))
}

// ----- summary ---------------------------------------------------------------

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn print_summary(args: &Args, cl: &Cluster, results: &[TrialResult]) {
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    println!();
    println!(
        "summary: fault {:?}, {} trials, heartbeat {} ms, election timeout {}-{} ms, writes via {:?}",
        args.fault(),
        results.len(),
        cl.heartbeat_ms,
        cl.election_timeout_ms.0,
        cl.election_timeout_ms.1,
        args.writes_via,
    );
    println!(
        "  {:<16} {:>8} {:>8} {:>8} {:>8}",
        "ms from fault", "p50", "p90", "max", "samples"
    );
    type Metric = fn(&TrialResult) -> Option<i64>;
    let rows: [(&str, Metric); 3] = [
        ("detection", |r| r.detection_ms),
        ("election", |r| r.election_ms),
        ("unavailability", |r| r.unavailable_ms),
    ];
    for (name, get) in rows {
        let mut v: Vec<i64> = results.iter().filter_map(get).collect();
        v.sort_unstable();
        let cell = |x: Option<i64>| x.map_or("-".into(), |x| x.to_string());
        println!(
            "  {:<16} {:>8} {:>8} {:>8} {:>8}",
            name,
            cell(percentile(&v, 0.5)),
            cell(percentile(&v, 0.9)),
            cell(v.last().copied()),
            v.len()
        );
    }
    let terms: Vec<String> = results
        .iter()
        .map(|r| match (r.term_elected, r.term_after) {
            (Some(e), Some(a)) if a != e => format!("+{}(+{} on rejoin)", e - r.term_before, a - e),
            (Some(e), _) => format!("+{}", e - r.term_before),
            _ => "?".into(),
        })
        .collect();
    println!("  term changes per trial: {}", terms.join(" "));
    if results.is_empty() {
        // A drill that ran no trial proved nothing: never "all passed".
        println!("  checks: FAILED: no trial ran");
    } else if failed == 0 && results.len() == args.trials as usize {
        println!("  checks: all passed");
    } else if failed == 0 {
        println!(
            "  checks: FAILED: only {} of {} trials ran",
            results.len(),
            args.trials
        );
    } else {
        println!(
            "  checks: {failed} of {} trials FAILED (see above)",
            results.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 0.5), Some(5));
        assert_eq!(percentile(&v, 0.9), Some(9));
        assert_eq!(percentile(&[4], 0.9), Some(4));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
