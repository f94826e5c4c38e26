//! `--membership`: members replaced and restarted under a steady write load.
//!
//! Run a1 replaces member 1 by member 4, with member 1 leading when it is
//! removed (the harder case: the leader commits its own removal, then
//! steps down). Runs b1 and b2 restart every member in turn (followers
//! first, the leader last): once with the leader's hand-over at SIGTERM,
//! once with `shutdown_transfer = false` (the whole cluster is restarted
//! with that file first), for comparison. Run a2 replaces member 2, a
//! follower, by member 5 while member 4 leads: a member joining through a
//! leader that is not in the log's first configuration. Each replacement
//! is: start the new member with `--join`, `RAFT.ADD N ... LEARNER`, wait
//! until it has caught up, `RAFT.PROMOTE N`, `RAFT.REMOVE old`, SIGTERM
//! the old one. A run that fails ends the drill.
//!
//! During each run several writers SET keys of their own (one key per
//! write, `md:RUN:CLIENT:SEQ` = `SEQ`), resending a write until it is
//! acknowledged (SET of the same key and value is idempotent, so a resend
//! after a timeout is safe). Afterwards every acknowledged write is read
//! back from the leader, and from each member added in that run with
//! `READONLY`: a missing or different value is a lost write, and fails the
//! drill, as does a step that could not be carried out or a member that
//! died. Pauses are measured from the writers' own acknowledgements.

mod control;
mod load;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::cluster::{Cluster, ClusterFile, NodeEntry};
use crate::logs::log_len;
use crate::{cluster_paths, Args, INSIDE_ENV};
use control::Drill;
use load::{step, under_load, Run};
use report::{member_ids, members_summary, print_results};

/// Addresses of member `id`, following tools/cluster.sh (127.0.0.ID,
/// ports 7000+ID, 6400+ID, 9400+ID).
fn addrs_of(id: u64) -> (String, String, String) {
    (
        format!("127.0.0.{id}:{}", 7000 + id),
        format!("127.0.0.{id}:{}", 6400 + id),
        format!("127.0.0.{id}:{}", 9400 + id),
    )
}

/// Adds [[node]] entries for `ids` to the cluster file, unless present.
fn add_to_cluster_file(data: &Path, ids: &[u64]) -> Result<(), String> {
    let mut file = ClusterFile::read(data)?;
    for &id in ids {
        if file.nodes.iter().any(|n| n.id == id) {
            continue;
        }
        let (peer_addr, client_addr, metrics_addr) = addrs_of(id);
        file.nodes.push(NodeEntry {
            id,
            peer_addr,
            client_addr,
            metrics_addr: Some(metrics_addr),
        });
    }
    file.write(data, "")
}

/// Sets `shutdown_transfer = false` in the cluster file.
fn disable_hand_over(data: &Path) -> Result<(), String> {
    let mut file = ClusterFile::read(data)?;
    file.shutdown_transfer = Some(false);
    file.write(
        data,
        "# The membership drill's baseline: no hand-over at SIGTERM.\n",
    )
}

/// Replaces member `old` by `new` (see the module doc).
/// Member `leads` is made leader first (unless it leads already).
fn replace(d: &Drill, tag: &str, old: u64, new: u64, leads: u64) -> Run {
    let title = if leads == old {
        format!("replace member {old} (the leader) by member {new}")
    } else {
        format!("replace member {old} (a follower) by member {new}, member {leads} leading")
    };
    under_load(d, tag, &title, &[new], |steps| {
        let id = leads.to_string();
        if d.leader().map(|(l, _)| l) != Some(leads)
            && !step(steps, format!("RAFT.TRANSFER {leads}"), || {
                d.admin(&["RAFT.TRANSFER", &id], &["in progress", "retry in"])
                    .map(|r| members_summary(&r))
            })
        {
            return;
        }
        let (peer, client, _) = addrs_of(new);
        if !step(steps, format!("start member {new} --join"), || {
            start_joining(d, new, old)
        }) {
            return;
        }
        let new_s = new.to_string();
        if !step(steps, format!("RAFT.ADD {new} LEARNER"), || {
            d.admin(
                &["RAFT.ADD", &new_s, &peer, &client, "LEARNER"],
                &["in progress"],
            )
            .map(|r| members_summary(&r))
        }) {
            return;
        }
        if !step(steps, format!("catch-up of {new}"), || {
            d.wait_caught_up(new)
        }) {
            return;
        }
        if !step(steps, format!("RAFT.PROMOTE {new}"), || {
            d.admin(&["RAFT.PROMOTE", &new_s], &["has caught up", "in progress"])
                .map(|r| members_summary(&r))
        }) {
            return;
        }
        let role = if d.leader().map(|(l, _)| l) == Some(old) {
            "leader"
        } else {
            "follower"
        };
        if !step(steps, format!("RAFT.REMOVE {old} ({role})"), || {
            remove(d, old)
        }) {
            return;
        }
        step(steps, format!("stop member {old}"), || {
            let took = d.stop(old)?;
            let l = d.leader().map_or("none".into(), |(l, _)| l.to_string());
            Ok(format!(
                "exited {} ms after SIGTERM; leader now {l}",
                took.as_millis()
            ))
        });
    })
}

/// Starts member `new` with `--join`, with the binary and working
/// directory member `model` runs with.
fn start_joining(d: &Drill, new: u64, model: u64) -> Result<String, String> {
    if d.alive(new) {
        return Err(format!("member {new} is running already"));
    }
    let log_from = log_len(&d.cl.member(new).log);
    let (argv, cwd) = d.command_line(model)?;
    let data = &d.cl.data;
    let new_argv = vec![
        argv[0].clone(),
        "--config".into(),
        data.join("cluster.toml").into_os_string(),
        "--id".into(),
        new.to_string().into(),
        "--data-dir".into(),
        data.join(format!("node{new}")).into_os_string(),
        "--join".into(),
    ];
    d.launch(new, &new_argv, &cwd)?;
    d.wait_answers(new, log_from)?;
    Ok("answers INFO".into())
}

/// `RAFT.REMOVE old`; the configuration it answers must no longer list
/// `old`.
fn remove(d: &Drill, old: u64) -> Result<String, String> {
    match d.admin(&["RAFT.REMOVE", &old.to_string()], &["in progress"]) {
        Ok(r) => {
            let summary = members_summary(&r);
            if member_ids(&r).contains(&old) {
                return Err(format!("the reply still lists member {old}: {summary}"));
            }
            Ok(summary)
        }
        // The server's own words: the change may have been committed by
        // the next leader. The configuration says which; either way the
        // reply is reported.
        Err(e) if e.contains("may still take effect") => {
            let r = d.admin(&["RAFT.MEMBERS"], &[])?;
            if member_ids(&r).contains(&old) {
                return Err(format!("{e}; RAFT.MEMBERS still lists {old}"));
            }
            Ok(format!(
                "ANOMALY: the removal took effect ({}) but the reply was {e}",
                members_summary(&r)
            ))
        }
        Err(e) => Err(e),
    }
}

/// Restarts every running member in turn, followers first, the leader
/// last, each with its own command line.
fn rolling_restart(d: &Drill, tag: &str, title: &str) -> Run {
    under_load(d, tag, title, &[], |steps| {
        let Some((leader, _)) = d.leader() else {
            step(steps, "find the leader", || Err("no leader".into()));
            return;
        };
        let mut order: Vec<u64> = d.running().into_iter().filter(|&id| id != leader).collect();
        order.push(leader);
        for id in order {
            let role = if d.leader().map(|(l, _)| l) == Some(id) {
                "leader"
            } else {
                "follower"
            };
            let ok = step(steps, format!("restart member {id} ({role})"), || {
                let (argv, cwd) = d.command_line(id)?;
                let log_from = log_len(&d.cl.member(id).log);
                let down = d.stop(id)?;
                let t = Instant::now();
                d.launch(id, &argv, &cwd)?;
                d.wait_answers(id, log_from)?;
                let answers = t.elapsed();
                d.wait_caught_up(id)?;
                let l = d.leader().map_or("none".into(), |(l, _)| l.to_string());
                Ok(format!(
                    "exited {} ms after SIGTERM, answered {} ms after start, caught up after {} ms; leader now {l}",
                    down.as_millis(),
                    answers.as_millis(),
                    t.elapsed().as_millis()
                ))
            });
            if !ok {
                return;
            }
        }
    })
}

/// Restarts the whole cluster (no load): every member stops, then all
/// start again with their own command lines.
fn restart_all(d: &Drill) -> Result<(), String> {
    let ids = d.running();
    let mut lines = Vec::new();
    for &id in &ids {
        lines.push((id, d.command_line(id)?, log_len(&d.cl.member(id).log)));
    }
    for &id in &ids {
        d.stop(id)?;
    }
    for (id, (argv, cwd), _) in &lines {
        d.launch(*id, argv, cwd)?;
    }
    for (id, _, from) in &lines {
        d.wait_answers(*id, *from)?;
    }
    d.wait_ready().map(|_| ())
}

pub fn run(args: &Args) -> Result<bool, String> {
    if !args.start {
        return Err(
            "--membership needs --start: it replaces and restarts members, so it runs on a cluster of its own"
                .into(),
        );
    }
    let (data, script, bin) = cluster_paths(args, "--start passes it")?;
    let boot = Cluster::unloaded(&data, &script, &bin);
    boot.fault_sh(&["cluster-start"])?;
    let result = drill(args, &data, script, bin);
    // Every member with a pid file, joined ones included; whatever is
    // left, the namespace's deletion kills.
    if let Err(e) = boot.fault_sh(&["cluster-stop"]) {
        eprintln!("raft-drill: stopping the cluster: {e}");
    }
    result
}

fn drill(args: &Args, data: &Path, script: PathBuf, bin: Option<PathBuf>) -> Result<bool, String> {
    // From now on the file lists members 4 and 5 (for their own
    // addresses when they join). The running members never reread it;
    // a restarted member takes its configuration from its data dir.
    add_to_cluster_file(data, &[4, 5])?;
    let d = Drill {
        cl: Cluster::load(data, script, bin)?,
        children: Mutex::new(Vec::new()),
        clients: args.clients,
    };
    let l = d.wait_ready()?;
    println!(
        "raft-drill --membership: {} writers, members {:?} in {}{} (heartbeat {} ms, election timeout {}-{} ms); leader {l}",
        args.clients,
        d.running(),
        data.display(),
        std::env::var(INSIDE_ENV)
            .map(|ns| format!(", namespace {ns}"))
            .unwrap_or_default(),
        d.cl.heartbeat_ms,
        d.cl.election_timeout_ms.0,
        d.cl.election_timeout_ms.1,
    );
    let mut runs = Vec::new();
    let go_on = |runs: &Vec<Run>| runs.last().is_none_or(|r: &Run| r.ok());
    runs.push(replace(&d, "a1", 1, 4, 1));
    if go_on(&runs) {
        runs.push(rolling_restart(
            &d,
            "b1",
            "rolling restart with the hand-over (shutdown_transfer = true, the default)",
        ));
    }
    if go_on(&runs) {
        println!("\nrestarting the whole cluster with shutdown_transfer = false (no load)");
        match disable_hand_over(data).and_then(|_| restart_all(&d)) {
            Ok(()) => runs.push(rolling_restart(
                &d,
                "b2",
                "rolling restart without the hand-over (shutdown_transfer = false)",
            )),
            Err(e) => {
                println!("  FAILED: {e}");
                print_results(&runs);
                return Ok(false);
            }
        }
    }
    // Last, as it may leave a learner that never catches up behind:
    // member 5 joins through a leader that joined itself (4, not in the
    // log's first configuration).
    if go_on(&runs) {
        runs.push(replace(&d, "a2", 2, 5, 4));
    }
    Ok(print_results(&runs))
}
