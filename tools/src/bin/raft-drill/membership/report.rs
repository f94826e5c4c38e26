//! What the membership drill prints: each run's steps with their pauses and
//! failed writes, and the results at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tools::resp::Reply;

use super::load::{window, Run};

/// The goal for a rolling restart with the hand-over.
pub const PAUSE_GOAL: Duration = Duration::from_millis(20);

/// `[[id, peer, client, role, ...], ...]` → `1 voter, 4 learner`.
pub fn members_summary(r: &Reply) -> String {
    match r {
        Reply::Array(ms) => ms
            .iter()
            .map(|m| match m {
                Reply::Array(f) => match (f.first(), f.get(3)) {
                    (Some(Reply::Integer(id)), Some(Reply::Bulk(Some(role)))) => {
                        format!("{id} {}", String::from_utf8_lossy(role))
                    }
                    _ => format!("{f:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Reply::Simple(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

pub fn member_ids(r: &Reply) -> Vec<u64> {
    match r {
        Reply::Array(ms) => ms
            .iter()
            .filter_map(|m| match m {
                Reply::Array(f) => match f.first() {
                    Some(Reply::Integer(id)) => u64::try_from(*id).ok(),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

pub fn print_run(run: &Run) -> (Duration, usize) {
    let mut acks: Vec<Instant> = run
        .logs
        .iter()
        .flat_map(|l| l.acks.iter().map(|a| a.acked))
        .collect();
    acks.sort_unstable();
    println!("\n{}: {}", run.tag, run.title);
    println!(
        "  {:<34} {:>8} {:>7} {:>6} {:>7} {:>9} {:>10}",
        "step", "took ms", "acked", "failed", "unknown", "pause ms", "max lat ms"
    );
    let (mut worst, mut failed) = (Duration::ZERO, 0);
    for s in &run.steps {
        let w = window(run, &acks, s.start, s.end);
        println!(
            "  {:<34} {:>8} {:>7} {:>6} {:>7} {:>9} {:>10}{}",
            s.name,
            (s.end - s.start).as_millis(),
            w.acked,
            w.failed,
            w.unknown,
            ms(w.pause),
            ms(w.max_latency),
            if s.outcome.is_err() {
                "  STEP FAILED"
            } else {
                ""
            }
        );
        if !s.name.starts_with("steady") {
            worst = worst.max(w.pause);
            failed += w.failed;
        }
    }
    let redirects: u64 = run.logs.iter().map(|l| l.redirects).sum();
    let unknown: usize = run.logs.iter().map(|l| l.unknown.len()).sum();
    let given_up: u64 = run.logs.iter().map(|l| l.given_up).sum();
    println!(
        "  whole run: {} writes acknowledged, {} failed, {} resent after a timeout or closed connection, \
         {redirects} MOVED/CLUSTERDOWN/TRYAGAIN replies followed, {given_up} given up, {} lost of {} read back",
        run.acked(),
        run.failed(),
        unknown,
        run.lost.len(),
        run.checked
    );
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for l in &run.logs {
        for (_, e) in &l.errors {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    for (e, n) in errors {
        println!("  error reply ({n}x): -{e}");
    }
    let dropped: u64 = run.logs.iter().map(|l| l.errors_dropped).sum();
    if dropped > 0 {
        println!("  ... and {dropped} more error replies not kept");
    }
    for s in &run.steps {
        if let Ok(note) = &s.outcome {
            if note.starts_with("ANOMALY") {
                println!("  {}: {note}", s.name);
            }
        }
    }
    for f in &run.failures {
        println!("  CHECK FAILED: {f}");
    }
    (worst, failed)
}

pub fn print_results(runs: &[Run]) -> bool {
    println!("\n===== membership drill results =====");
    println!(
        "pause ms: the longest time overlapping the step in which no writer had a write acknowledged (all \
         writers together; normal latency included). max lat ms: the longest single write overlapping the step, \
         first send to acknowledgement, resends after MOVED/CLUSTERDOWN/timeouts included. failed: writes that \
         got an error reply other than MOVED, CLUSTERDOWN or TRYAGAIN (then resent: SET of the same key and \
         value is idempotent). unknown: resends after a timeout or a closed connection."
    );
    let mut restart = BTreeMap::new();
    for r in runs {
        let (pause, failed) = print_run(r);
        restart.insert(r.tag.as_str(), (pause, failed));
    }
    println!();
    if let Some((p, f)) = restart.get("b1") {
        println!(
            "rolling restart with hand-over: longest pause {} ms (goal < {} ms: {}), failed writes {f} (goal 0: {})",
            ms(*p),
            PAUSE_GOAL.as_millis(),
            if *p < PAUSE_GOAL { "met" } else { "MISSED" },
            if *f == 0 { "met" } else { "MISSED" }
        );
    }
    if let Some((p, f)) = restart.get("b2") {
        println!(
            "rolling restart without hand-over: longest pause {} ms, failed writes {f}",
            ms(*p)
        );
    }
    let anomalies = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| matches!(&s.outcome, Ok(n) if n.starts_with("ANOMALY")))
        .count();
    if anomalies > 0 {
        // Carried out, so not a failed step; but a reply that
        // contradicts what happened is a server defect to look at.
        println!("server anomalies: {anomalies} (ANOMALY lines above)");
    }
    let lost: usize = runs.iter().map(|r| r.lost.len()).sum();
    let ok = runs.len() == 4 && runs.iter().all(Run::ok);
    println!(
        "checks: {} ({} runs of 4, {lost} acknowledged writes lost)",
        if ok { "all passed" } else { "FAILED" },
        runs.len()
    );
    ok
}
