//! The nemesis: one seeded fault at a time, held a while, then undone.

use std::thread;
use std::time::{Duration, Instant};

use raft_proto::Rng;

use crate::cluster::Cluster;
use crate::{Schedule, MEMBERS};

/// One fault.sh call of the nemesis: what it does (for the schedule) and
/// its arguments.
pub type Step<'a> = (String, Vec<&'a str>);

/// Injects one fault, holds it a while, and undoes it. Every step must take
/// effect; the first that does not is the error.
pub fn nemesis(c: &Cluster, rng: &mut Rng, s: &mut Schedule, start: Instant) -> Result<(), String> {
    let member = 1 + rng.range(0, MEMBERS);
    let leader = c.leader();
    let follower = leader.map(|l| 1 + (l % MEMBERS)).unwrap_or(member);
    let hold = Duration::from_millis(rng.range(500, 3000));
    let (m, l, f) = (
        member.to_string(),
        leader.unwrap_or(member).to_string(),
        follower.to_string(),
    );
    // One fault.sh step; noted only once it took effect.
    let step = |s: &mut Schedule, what: String, args: &[&str]| -> Result<(), String> {
        if c.fault(args) {
            s.note(start, what);
            Ok(())
        } else {
            Err(format!("{what}: fault.sh {} failed", args.join(" ")))
        }
    };
    let partition_rest: Vec<String> = (1..=MEMBERS)
        .filter(|&i| i != member)
        .map(|i| i.to_string())
        .collect();
    let rest = partition_rest.join(",");
    // (what, inject, undo): a fault and the steps that undo it.
    let (inject, undo): (Vec<Step>, Vec<Step>) = match rng.range(0, 10) {
        0 => (
            vec![(format!("kill {m}"), vec!["kill", &m])],
            vec![(format!("restart {m}"), vec!["restart", &m])],
        ),
        1 => (
            vec![(format!("kill leader {l}"), vec!["kill", &l])],
            vec![(format!("restart {l}"), vec!["restart", &l])],
        ),
        2 => (
            vec![(format!("freeze {l}"), vec!["freeze", &l])],
            vec![(format!("thaw {l}"), vec!["thaw", &l])],
        ),
        3 => (
            vec![(format!("isolate leader {l}"), vec!["isolate", &l])],
            vec![("heal".into(), vec!["heal"])],
        ),
        4 => (
            vec![(format!("isolate follower {f}"), vec!["isolate", &f])],
            vec![("heal".into(), vec!["heal"])],
        ),
        5 => (
            vec![(
                format!("partition {m} | {rest}"),
                vec!["partition", &m, &rest],
            )],
            vec![("heal".into(), vec!["heal"])],
        ),
        6 => (
            vec![("drop 20% of packets".into(), vec!["drop", "20"])],
            vec![("heal".into(), vec!["heal"])],
        ),
        7 => (
            vec![(
                format!("reset connections of leader {l}"),
                vec!["reset", &l],
            )],
            vec![("heal".into(), vec!["heal"])],
        ),
        8 => (
            vec![
                ("kill 1 (kill all)".into(), vec!["kill", "1"]),
                ("kill 2 (kill all)".into(), vec!["kill", "2"]),
                ("kill 3 (kill all)".into(), vec!["kill", "3"]),
            ],
            vec![
                ("restart 1".into(), vec!["restart", "1"]),
                ("restart 2".into(), vec!["restart", "2"]),
                ("restart 3".into(), vec!["restart", "3"]),
            ],
        ),
        _ => (
            vec![(format!("freeze follower {f}"), vec!["freeze", &f])],
            vec![(format!("thaw {f}"), vec!["thaw", &f])],
        ),
    };
    let kill_all = inject.len() > 1;
    for (what, args) in inject {
        step(s, what, &args)?;
    }
    s.injected += 1;
    thread::sleep(if kill_all {
        hold.min(Duration::from_millis(1000))
    } else {
        hold
    });
    for (what, args) in undo {
        step(s, what, &args)?;
    }
    Ok(())
}
