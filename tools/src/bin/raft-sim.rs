//! `raft-sim`: runs the deterministic cluster simulator.
//!
//! ```text
//! raft-sim --seed 42            # one run; prints the seed first, then a summary
//! raft-sim --seed 42 --trace    # the same run, step by step
//! raft-sim --seeds 0..500       # a sweep; exits 1 and names the seed on any failure
//! raft-sim --slow-network --seeds 0..300   # election liveness on a slow, lossy network
//! ```

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use raft_proto::sim::{run_seed, run_slow_network, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "raft-sim",
    about = "Deterministic Raft cluster simulator: one seed replays one run exactly"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B exclusive).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Cluster size (default: 3, 5 or 7, chosen by the seed).
    #[arg(long)]
    nodes: Option<u64>,
    /// Seconds of virtual time with faults injected.
    #[arg(long, default_value_t = 20)]
    fault_secs: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: u64,
    /// Print every step of a single run.
    #[arg(long)]
    trace: bool,
    /// Instead of the fault sweep: from a cold start on a network that
    /// loses 10% of messages and delays two thirds of all answers by 200
    /// to 2200 ms, a leader must commit a write within 10 s (5 members).
    #[arg(long)]
    slow_network: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected A..B")?;
    let a: u64 = a.parse().map_err(|e| format!("bad start: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("bad end: {e}"))?;
    if a >= b {
        return Err("empty range".into());
    }
    Ok((a, b))
}

fn run_one(seed: u64, opts: &RunOptions) -> Result<raft_proto::sim::RunReport, String> {
    match panic::catch_unwind(AssertUnwindSafe(|| run_seed(seed, opts))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("node assertion failed: {msg}"))
        }
    }
}

fn slow_network(start: u64, end: u64) -> ExitCode {
    let began = Instant::now();
    let mut times = Vec::new();
    let mut failed = Vec::new();
    for seed in start..end {
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            run_slow_network(seed, Duration::from_secs(10))
        }));
        match r {
            Ok(Ok(t)) => times.push(t),
            Ok(Err(e)) => {
                println!("FAILED {e}");
                failed.push(seed);
            }
            Err(_) => {
                println!("FAILED seed {seed}: node assertion failed");
                failed.push(seed);
            }
        }
    }
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p) as usize)
            .map_or(0, |d| d.as_millis())
    };
    println!(
        "slow network: {} of {} seeds committed within 10 s in {:.1}s; first commit p50 {} ms, p99 {} ms, max {} ms",
        times.len(),
        end - start,
        began.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed seeds: {failed:?}; replay one with --slow-network --seed N");
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = RunOptions {
        nodes: args.nodes,
        fault_time: Duration::from_secs(args.fault_secs),
        clients: args.clients,
        trace: args.trace,
        ..RunOptions::default()
    };
    let (start, end) = match (args.seed, args.seeds) {
        (Some(s), _) => (s, s + 1),
        (None, Some(r)) => r,
        (None, None) => (0, 1),
    };
    let single = end - start == 1;
    if args.slow_network {
        return slow_network(start, end);
    }
    if !single {
        // Assertion messages are reported per seed; keep stderr readable.
        panic::set_hook(Box::new(|_| {}));
    }
    let began = Instant::now();
    let (mut ops, mut unknown, mut committed) = (0u64, 0u64, 0u64);
    let (mut snapshots, mut installs, mut seeds_installing) = (0u64, 0u64, 0u64);
    let mut worst_recovery = (Duration::ZERO, start);
    let (mut config_changes, mut transfers) = (0u64, 0u64);
    let (mut forged, mut forged_refused, mut removals) = (0u64, 0u64, 0u64);
    for seed in start..end {
        if single {
            println!("seed {seed}");
        }
        match run_one(seed, &opts) {
            Ok(r) => {
                if single {
                    for line in &r.faults {
                        println!("fault: {line}");
                    }
                    for line in &r.trace {
                        println!("{line}");
                    }
                    println!(
                        "ok: {} nodes, {} faults, {} ops ok, {} failed, {} unknown, {} entries committed, {} terms with a leader, {} snapshots taken, {} installed from a leader, {} configuration changes, {} transfer elections, recovered {} ms after healing",
                        r.nodes,
                        r.faults.len(),
                        r.ok,
                        r.failed,
                        r.unknown,
                        r.committed,
                        r.leader_terms,
                        r.snapshots_taken,
                        r.snapshots_installed,
                        r.config_changes,
                        r.transfer_elections,
                        r.recovery.as_millis()
                    );
                }
                ops += r.ok;
                unknown += r.unknown;
                committed += r.committed;
                snapshots += r.snapshots_taken;
                installs += r.snapshots_installed;
                seeds_installing += u64::from(r.snapshots_installed > 0);
                config_changes += r.config_changes;
                transfers += r.transfer_elections;
                forged += r.forged;
                removals += r.removals_reported;
                forged_refused += r.forged_refused;
                if r.recovery > worst_recovery.0 {
                    worst_recovery = (r.recovery, seed);
                }
            }
            Err(e) => {
                println!("FAILED seed {seed}: {e}");
                println!("replay with: cargo run --release -p tools --bin raft-sim -- --seed {seed} --trace");
                println!("sim: {} passed, 1 failed", seed - start);
                return ExitCode::FAILURE;
            }
        }
    }
    if !single {
        println!(
            "{} seeds passed ({start}..{end}) in {:.1}s: {ops} ops ok, {unknown} unknown, {committed} entries committed, {snapshots} snapshots taken, {installs} installed from a leader (in {seeds_installing} seeds), {config_changes} configuration changes committed ({removals} removals learned by the removed), {transfers} transfer elections, {forged} forged messages ({forged_refused} refused by the codec), worst recovery after healing {} ms (seed {})",
            end - start,
            began.elapsed().as_secs_f64(),
            worst_recovery.0.as_millis(),
            worst_recovery.1
        );
        println!("sim: {} passed, 0 failed", end - start);
    }
    ExitCode::SUCCESS
}
