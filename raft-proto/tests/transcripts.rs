//! Transcript tests, after etcd's data-driven `testdata/`: every
//! `testdata/*.txt` file is a scenario written as commands for the
//! simulator, each followed by the output it must produce. A change in
//! protocol behaviour shows up as a diff to review. A new scenario is a new
//! text file: write the commands alone, then fill in their outputs with
//!
//! ```text
//! RAFT_UPDATE_TRANSCRIPTS=1 cargo test -p raft-proto --test transcripts
//! ```
//!
//! which rewrites every output in place, keeping commands and comments
//! (`RAFT_TRANSCRIPT=<name>` runs only `testdata/<name>.txt`). Review the
//! diff: the outputs are the test.
//!
//! # File format
//!
//! ```text
//! # Comments (lines starting with `#`) and blank lines are kept as written.
//! cluster n=3 seed=2 delay=1ms
//! ----
//! ok
//!
//! run-until leader
//! ----
//! 0.301s n3 pre-vote for term 1 (election timeout: no leader known)
//! ...
//! ```
//!
//! A command is one line; `----` starts its expected output, which ends at
//! the next blank line. The output is every trace line the simulator
//! recorded while the command ran (messages delivered, role, leader and
//! election events, faults; times relative to the cluster's start), then
//! what the command itself prints, or `ok` if that is nothing. A command
//! without `----` below it has no expected output yet: the update fills it
//! in. A mismatch names the file, the command's line and the first line
//! that differs.
//!
//! # Commands
//!
//! A node is `3` or `n3`, `leader` (the leader at that moment; a fault
//! command on `leader` also binds it to `$old`), or a variable `$name`.
//! Durations are `<integer><ns|us|ms|s>`. Any command takes `quiet`, which
//! drops its trace lines (for the set-up a scenario is not about).
//!
//! - `cluster n=<count> seed=<seed> [delay=<d>|<d>..<d>] [loss=<p>]
//!   [dup=<p>] [eof=<d>] [fsync=<d>] [heartbeat=<d>] [election=<d>..<d>]
//!   [pre-vote=off] [check-quorum=off] [fast-failover=off]`: a fresh
//!   cluster with tracing on. `delay=1ms` is a fixed one-way delay (in
//!   order, like one TCP connection on a quiet LAN); a range draws each
//!   delay from it (reordering). Without `delay`, the simulator's default
//!   network.
//! - `net [delay=..] [loss=..] [dup=..] [eof=..] [fsync=..]`: changes the
//!   network from now on.
//! - `run <d>`: runs for `d` of virtual time.
//! - `run-until <condition> [timeout=<d>]` (default 5s), conditions:
//!   `leader`, `leader=<node>`, `leader!=<node>`, `no-leader`,
//!   `follower <node>`, `applied <node>|all <index>`,
//!   `commit <node>|all <index>` (`all`: every running member). Prints
//!   `timed out after <d>` if the condition never held.
//! - `crash`, `restart`, `freeze`, `thaw`, `isolate` `<node>`.
//! - `partition <node>... [reset]`: no traffic between these nodes and the
//!   rest (with `reset`, both sides see their connections reset).
//! - `block <from> <to>`: drops every message from one node to another.
//! - `heal`: removes every partition and block; the links come back up
//!   (a leader probes each member it was cut from).
//! - `stall-disk <node> on|off`: the node's syncs do not complete while on.
//! - `propose <key> <value> [on=<node>]` (default `on=leader`): prints
//!   where the entry was appended, or why it was refused.
//! - `read <key> [on=<node>] [timeout=<d>]`: a linearizable read; runs
//!   until it is served or fails and prints the value (`-`: none). If it
//!   is still pending at the timeout, a later `run` prints how it ends
//!   (`run-until` cannot: `Cluster::run_until_pred` drops completions).
//! - `values <key>`: each member's state machine value for `key`.
//! - `status`: role, term, leader, vote, commit, applied, last entry per
//!   member.
//! - `let <name>=leader|follower|<node>`: binds `$name`; `follower` is the
//!   lowest-numbered running member that is not the leader.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft_proto::sim::{encode_write, Cluster, Completion};
use raft_proto::{Config, LogIndex, NodeId, Role};

const UPDATE_VAR: &str = "RAFT_UPDATE_TRANSCRIPTS";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn transcripts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let only = std::env::var("RAFT_TRANSCRIPT").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/testdata")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .filter(|p| match &only {
            Some(o) => p.file_stem().is_some_and(|s| s == o.as_str()),
            None => true,
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no transcripts in {}", dir.display());
    let update = std::env::var_os(UPDATE_VAR).is_some();
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| run_file(f, update).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} transcripts failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

// ----- The file format ------------------------------------------------------

/// One command and what surrounds it in the file.
struct Block {
    /// Comment and blank lines above the command, as written.
    leading: Vec<String>,
    /// The command line.
    command: String,
    /// Its 1-based line number in the file.
    line: usize,
    /// The expected output, `None` if the file has no `----` for it yet.
    expected: Option<Vec<String>>,
}

struct Script {
    blocks: Vec<Block>,
    /// Comment and blank lines after the last command.
    trailing: Vec<String>,
}

fn parse(text: &str) -> Script {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut leading = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() || l.starts_with('#') {
            leading.push(l.to_string());
            i += 1;
            continue;
        }
        let (command, line) = (l.trim().to_string(), i + 1);
        i += 1;
        let expected = if lines.get(i) == Some(&"----") {
            i += 1;
            let mut out = Vec::new();
            while i < lines.len() && !lines[i].trim().is_empty() {
                out.push(lines[i].to_string());
                i += 1;
            }
            Some(out)
        } else {
            None
        };
        blocks.push(Block {
            leading: std::mem::take(&mut leading),
            command,
            line,
            expected,
        });
    }
    Script {
        blocks,
        trailing: leading,
    }
}

/// The file with `outputs` (one per block) as the expected outputs; blocks
/// are separated by exactly one blank line, comments stay where they were.
fn render(script: &Script, outputs: &[Vec<String>]) -> String {
    fn trimmed(lines: &[String]) -> &[String] {
        let start = lines
            .iter()
            .position(|l| !l.trim().is_empty())
            .unwrap_or(lines.len());
        let end = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(start, |e| e + 1);
        &lines[start..end]
    }
    let mut text = String::new();
    for (k, (b, out)) in script.blocks.iter().zip(outputs).enumerate() {
        if k > 0 {
            text.push('\n');
        }
        for l in trimmed(&b.leading) {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str(&b.command);
        text.push_str("\n----\n");
        for l in out {
            text.push_str(l);
            text.push('\n');
        }
    }
    let tail = trimmed(&script.trailing);
    if !tail.is_empty() {
        text.push('\n');
        for l in tail {
            text.push_str(l);
            text.push('\n');
        }
    }
    text
}

/// Runs one file; in update mode rewrites its outputs, otherwise compares
/// them. The error says where and how it failed.
fn run_file(path: &Path, update: bool) -> Result<(), String> {
    let name = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let script = parse(&text);
    let mut runner = Runner::default();
    let mut outputs = Vec::new();
    for b in &script.blocks {
        let got = runner
            .execute(&b.command)
            .map_err(|e| format!("{name}:{}: `{}`: {e}", b.line, b.command))?;
        if !update {
            compare(&name, b, &got)?;
        }
        outputs.push(got);
    }
    if update {
        let new = render(&script, &outputs);
        if new != text {
            std::fs::write(path, new).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(())
}

fn compare(name: &str, b: &Block, got: &[String]) -> Result<(), String> {
    let Some(want) = &b.expected else {
        return Err(format!(
            "{name}:{}: `{}` has no expected output (no `----` below it); \
             fill it in with {UPDATE_VAR}=1",
            b.line, b.command
        ));
    };
    if want.as_slice() == got {
        return Ok(());
    }
    let n = want
        .iter()
        .zip(got)
        .position(|(w, g)| w != g)
        .unwrap_or(want.len().min(got.len()));
    let end = "<end of output>".to_string();
    Err(format!(
        "{name}:{}: `{}`: output differs at its line {}:\n  want: {}\n  got:  {}\n\
         if the change is intended, regenerate with {UPDATE_VAR}=1 and review the diff",
        b.line,
        b.command,
        n + 1,
        want.get(n).unwrap_or(&end),
        got.get(n).unwrap_or(&end),
    ))
}

// ----- Arguments --------------------------------------------------------------

/// A command's words: `key=value` pairs (the key made of letters, digits
/// and `-`) and the rest, in order.
struct Args {
    positional: Vec<String>,
    named: BTreeMap<String, String>,
    quiet: bool,
}

impl Args {
    fn parse(words: &[&str]) -> Args {
        let mut args = Args {
            positional: Vec::new(),
            named: BTreeMap::new(),
            quiet: false,
        };
        for w in words {
            match w.split_once('=') {
                Some((k, v))
                    if !k.is_empty()
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    args.named.insert(k.to_string(), v.to_string());
                }
                _ if *w == "quiet" => args.quiet = true,
                _ => args.positional.push(w.to_string()),
            }
        }
        args
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.named.remove(key)
    }

    fn pos(&self, i: usize, what: &str) -> Result<&str, String> {
        self.positional
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing {what}"))
    }

    /// Fails on anything not consumed: a typo must not pass silently.
    fn done(&self, positional: usize) -> Result<(), String> {
        if let Some(extra) = self.positional.get(positional) {
            return Err(format!("unexpected argument `{extra}`"));
        }
        if let Some(k) = self.named.keys().next() {
            return Err(format!("unknown argument `{k}=`"));
        }
        Ok(())
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad duration `{s}`"))?;
    Ok(match unit {
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(format!("bad duration `{s}` (units: ns, us, ms, s)")),
    })
}

/// `d` or `lo..hi`, as `[lo, hi)`. A single `d` is `[d, d + 1ns)`: the
/// network's delay is drawn from a half-open range.
fn duration_range(s: &str) -> Result<(Duration, Duration), String> {
    match s.split_once("..") {
        Some((lo, hi)) => Ok((duration(lo)?, duration(hi)?)),
        None => {
            let d = duration(s)?;
            Ok((d, d + Duration::from_nanos(1)))
        }
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad number `{s}`"))
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got `{s}`")),
    }
}

// ----- Running ----------------------------------------------------------------

#[derive(Default)]
struct Runner {
    cluster: Option<Cluster>,
    vars: BTreeMap<String, NodeId>,
    next_read: u64,
    /// Reads whose `read` command gave up waiting: id -> (node, key).
    /// `run` prints how they end.
    pending_reads: BTreeMap<u64, (NodeId, u64)>,
}

/// What a node argument named.
struct Target {
    id: NodeId,
    /// It was `leader`: fault commands bind it to `$old`.
    was_leader: bool,
}

impl Runner {
    fn cluster(&mut self) -> Result<&mut Cluster, String> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster yet: start with `cluster n=.. seed=..`".to_string())
    }

    fn node(&mut self, s: &str) -> Result<Target, String> {
        if s == "leader" {
            let id = self.cluster()?.leader().ok_or("there is no leader")?;
            return Ok(Target {
                id,
                was_leader: true,
            });
        }
        let id = if let Some(var) = s.strip_prefix('$') {
            *self
                .vars
                .get(var)
                .ok_or_else(|| format!("no variable `${var}`"))?
        } else {
            NodeId(number(s.strip_prefix('n').unwrap_or(s))?)
        };
        if !self.cluster()?.ids().contains(&id) {
            return Err(format!("no member n{id}"));
        }
        Ok(Target {
            id,
            was_leader: false,
        })
    }

    /// Runs one command line: the trace lines it produced, then what it
    /// printed (or `ok`).
    fn execute(&mut self, line: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (&verb, rest) = words.split_first().expect("a command line is not empty");
        let mut args = Args::parse(rest);
        let quiet = args.quiet;
        let printed = self.dispatch(verb, &mut args)?;
        let c = self.cluster()?;
        if let Some(v) = c.violation() {
            return Err(format!("safety violation: {v:?}"));
        }
        let trace = c.take_trace();
        let mut out: Vec<String> = if quiet { Vec::new() } else { trace };
        out.extend(printed);
        if out.is_empty() {
            out.push("ok".to_string());
        }
        Ok(out)
    }

    fn dispatch(&mut self, verb: &str, args: &mut Args) -> Result<Vec<String>, String> {
        let mut printed = Vec::new();
        match verb {
            "cluster" => {
                self.new_cluster(args)?;
                args.done(0)?;
            }
            "net" => {
                self.cluster()?;
                self.net(args)?;
                args.done(0)?;
            }
            "run" => {
                let d = duration(args.pos(0, "duration")?)?;
                args.done(1)?;
                printed = self.run(d, args.quiet)?;
            }
            "run-until" => {
                let timeout = args
                    .take("timeout")
                    .map(|t| duration(&t))
                    .transpose()?
                    .unwrap_or(DEFAULT_TIMEOUT);
                let (pred, used) = self.condition(args)?;
                args.done(used)?;
                if !self.cluster()?.run_until_pred(timeout, pred) {
                    printed.push(format!("timed out after {timeout:?}"));
                }
            }
            "crash" | "restart" | "freeze" | "thaw" | "isolate" => {
                let t = self.node(args.pos(0, "node")?)?;
                args.done(1)?;
                if t.was_leader {
                    self.vars.insert("old".to_string(), t.id);
                }
                let c = self.cluster()?;
                match verb {
                    "crash" => c.crash(t.id),
                    "restart" => c.restart(t.id),
                    "freeze" => c.freeze(t.id),
                    "thaw" => c.thaw(t.id),
                    _ => c.isolate(t.id),
                }
            }
            "partition" => {
                let reset = args.positional.iter().any(|w| w == "reset");
                let words: Vec<String> = args
                    .positional
                    .iter()
                    .filter(|w| *w != "reset")
                    .flat_map(|w| w.split(',').map(str::to_string).collect::<Vec<_>>())
                    .filter(|w| !w.is_empty())
                    .collect();
                if words.is_empty() {
                    return Err("missing nodes".to_string());
                }
                let group = words
                    .iter()
                    .map(|w| self.node(w).map(|t| t.id))
                    .collect::<Result<Vec<_>, _>>()?;
                args.done(args.positional.len())?;
                self.cluster()?.partition(&group, reset);
            }
            "block" => {
                let from = self.node(args.pos(0, "from")?)?.id;
                let to = self.node(args.pos(1, "to")?)?.id;
                args.done(2)?;
                self.cluster()?.block(from, to);
            }
            "heal" => {
                args.done(0)?;
                self.cluster()?.heal();
            }
            "stall-disk" => {
                let id = self.node(args.pos(0, "node")?)?.id;
                let on = on_off(args.pos(1, "on|off")?)?;
                args.done(2)?;
                self.cluster()?.stall_disk(id, on);
            }
            "propose" => {
                let key: u64 = number(args.pos(0, "key")?)?;
                let value: u64 = number(args.pos(1, "value")?)?;
                let on = args.take("on").unwrap_or_else(|| "leader".to_string());
                let id = self.node(&on)?.id;
                args.done(2)?;
                printed.push(
                    match self.cluster()?.propose(id, encode_write(key, value)) {
                        Ok(e) => format!(
                            "n{id} appended {key}={value} at index {} term {}",
                            e.index, e.term
                        ),
                        Err(e) => format!("n{id} refused {key}={value}: {e}"),
                    },
                );
            }
            "read" => {
                let key: u64 = number(args.pos(0, "key")?)?;
                let on = args.take("on").unwrap_or_else(|| "leader".to_string());
                let id = self.node(&on)?.id;
                let timeout = args
                    .take("timeout")
                    .map(|t| duration(&t))
                    .transpose()?
                    .unwrap_or(DEFAULT_TIMEOUT);
                args.done(1)?;
                self.next_read += 1;
                let read_id = self.next_read;
                printed.push(self.read(id, read_id, key, timeout)?);
            }
            "values" => {
                let key: u64 = number(args.pos(0, "key")?)?;
                args.done(1)?;
                let c = self.cluster()?;
                let mut line = format!("key {key}:");
                for &id in c.ids() {
                    let v = if c.node(id).is_none() {
                        "down".to_string()
                    } else {
                        c.value(id, key).map_or("-".to_string(), |v| v.to_string())
                    };
                    let _ = write!(line, " n{id}={v}");
                }
                printed.push(line);
            }
            "status" => {
                args.done(0)?;
                printed = status(self.cluster()?);
            }
            "let" => {
                let (name, what) = match args.named.pop_first() {
                    Some(kv) => kv,
                    None => return Err("expected `let <name>=<node>`".to_string()),
                };
                args.done(0)?;
                let id = if what == "follower" {
                    let c = self.cluster()?;
                    let leader = c.leader();
                    *c.ids()
                        .iter()
                        .find(|&&n| c.is_up(n) && Some(n) != leader)
                        .ok_or("no running follower")?
                } else {
                    self.node(&what)?.id
                };
                self.vars.insert(name.clone(), id);
                printed.push(format!("${name} = n{id}"));
            }
            _ => return Err(format!("unknown command `{verb}`")),
        }
        Ok(printed)
    }

    fn new_cluster(&mut self, args: &mut Args) -> Result<(), String> {
        let n: u64 = number(&args.take("n").ok_or("missing n=")?)?;
        let seed: u64 = number(&args.take("seed").ok_or("missing seed=")?)?;
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut config = Config::new(NodeId(1), ids);
        if let Some(h) = args.take("heartbeat") {
            config.heartbeat_interval = duration(&h)?;
        }
        if let Some(e) = args.take("election") {
            let (lo, hi) = e.split_once("..").ok_or("election=<min>..<max>")?;
            config.election_timeout_min = duration(lo)?;
            config.election_timeout_max = duration(hi)?;
        }
        for (key, field) in [
            ("pre-vote", &mut config.pre_vote),
            ("check-quorum", &mut config.check_quorum),
            ("fast-failover", &mut config.fast_failover),
        ] {
            if let Some(v) = args.take(key) {
                *field = on_off(&v)?;
            }
        }
        config.validate().map_err(|e| format!("{e}"))?;
        // Cluster::new(n, seed) is exactly this with the default config.
        self.cluster = Some(Cluster::with_config(config, seed));
        self.vars.clear();
        self.net(args)?;
        self.cluster()?.enable_trace();
        Ok(())
    }

    fn net(&mut self, args: &mut Args) -> Result<(), String> {
        let c = self.cluster()?;
        if let Some(d) = args.take("delay") {
            (c.net.min_delay, c.net.max_delay) = duration_range(&d)?;
        }
        if let Some(p) = args.take("loss") {
            c.net.loss = number(&p)?;
        }
        if let Some(p) = args.take("dup") {
            c.net.duplicate = number(&p)?;
        }
        if let Some(d) = args.take("eof") {
            c.net.eof_delay = duration(&d)?;
        }
        if let Some(d) = args.take("fsync") {
            c.net.fsync_delay = duration(&d)?;
        }
        Ok(())
    }

    /// Parses a `run-until` condition; returns it and how many positional
    /// words it used.
    #[allow(clippy::type_complexity)]
    fn condition(
        &mut self,
        args: &mut Args,
    ) -> Result<(Box<dyn FnMut(&Cluster) -> bool>, usize), String> {
        // `leader=<node>` parses as a named argument.
        if let Some(x) = args.take("leader") {
            let id = self.node(&x)?.id;
            return Ok((Box::new(move |c: &Cluster| c.leader() == Some(id)), 0));
        }
        let what = args.pos(0, "condition")?.to_string();
        if what == "leader" {
            return Ok((Box::new(|c: &Cluster| c.leader().is_some()), 1));
        }
        if what == "no-leader" {
            return Ok((Box::new(|c: &Cluster| c.leader().is_none()), 1));
        }
        if let Some(x) = what.strip_prefix("leader!=") {
            let id = self.node(x)?.id;
            return Ok((
                Box::new(move |c: &Cluster| c.leader().is_some_and(|l| l != id)),
                1,
            ));
        }
        match what.as_str() {
            "follower" => {
                let id = self.node(args.pos(1, "node")?)?.id;
                Ok((
                    Box::new(move |c: &Cluster| {
                        c.is_up(id) && c.node(id).is_some_and(|n| n.role() == Role::Follower)
                    }),
                    2,
                ))
            }
            "applied" | "commit" => {
                let who = args.pos(1, "node or all")?.to_string();
                let index = LogIndex(number(args.pos(2, "index")?)?);
                let ids: Option<NodeId> = if who == "all" {
                    None
                } else {
                    Some(self.node(&who)?.id)
                };
                let applied = what == "applied";
                let reached = move |c: &Cluster, id: NodeId| {
                    c.node(id).is_some_and(|n| {
                        if applied {
                            n.last_applied() >= index
                        } else {
                            n.commit_index() >= index
                        }
                    })
                };
                Ok((
                    Box::new(move |c: &Cluster| match ids {
                        Some(id) => reached(c, id),
                        None => c
                            .ids()
                            .iter()
                            .filter(|&&n| c.is_up(n))
                            .all(|&n| reached(c, n)),
                    }),
                    3,
                ))
            }
            _ => Err(format!("unknown condition `{what}`")),
        }
    }

    /// Runs for `d`, as `Cluster::run_for` does (which drops completions):
    /// the trace, with how pending reads end in their place in it.
    fn run(&mut self, d: Duration, quiet: bool) -> Result<Vec<String>, String> {
        let mut pending = std::mem::take(&mut self.pending_reads);
        let c = self.cluster()?;
        let deadline = c.now() + d;
        let mut printed = Vec::new();
        while c.now() < deadline && c.violation().is_none() {
            c.run_until(deadline);
            let trace = c.take_trace();
            if !quiet {
                printed.extend(trace);
            }
            for done in c.take_completions() {
                if let Some(line) = read_outcome(&mut pending, &done) {
                    printed.push(format!("{} {line}", c.now()));
                }
            }
        }
        self.pending_reads = pending;
        Ok(printed)
    }

    /// A linearizable read on `id`, run until it is served or fails.
    fn read(
        &mut self,
        id: NodeId,
        read_id: u64,
        key: u64,
        timeout: Duration,
    ) -> Result<String, String> {
        let c = self.cluster()?;
        if let Err(e) = c.read(id, read_id, key) {
            return Ok(format!("n{id} refused read of {key}: {e}"));
        }
        let deadline = c.now() + timeout;
        let mut pending = BTreeMap::from([(read_id, (id, key))]);
        // `run_until` stops at every completion; the others are dropped,
        // as `run` drops them.
        while c.now() < deadline && c.violation().is_none() {
            c.run_until(deadline);
            for done in c.take_completions() {
                if let Some(line) = read_outcome(&mut pending, &done) {
                    return Ok(line);
                }
            }
        }
        self.pending_reads.insert(read_id, (id, key));
        Ok(format!(
            "n{id} read of {key} still pending after {timeout:?}"
        ))
    }
}

/// If `done` ends one of the `pending` reads: removes it and says how.
fn read_outcome(pending: &mut BTreeMap<u64, (NodeId, u64)>, done: &Completion) -> Option<String> {
    let (read_id, node, text) = match done {
        Completion::ReadReady { node, id, value } => {
            let v = value.map_or("-".to_string(), |v| v.to_string());
            (*id, *node, format!("={v}"))
        }
        Completion::ReadFailed { node, id } => (*id, *node, " failed".to_string()),
        Completion::Crashed { node } => {
            let read_id = pending
                .iter()
                .find(|(_, (n, _))| n == node)
                .map(|(&r, _)| r)?;
            let (_, key) = pending.remove(&read_id)?;
            return Some(format!("n{node} crashed with the read of {key} pending"));
        }
        Completion::Applied { .. } => return None,
    };
    match pending.get(&read_id) {
        Some(&(n, key)) if n == node => {
            pending.remove(&read_id);
            Some(format!("n{node} read {key}{text}"))
        }
        _ => None,
    }
}

fn status(c: &Cluster) -> Vec<String> {
    let name = |n: Option<NodeId>| n.map_or("-".to_string(), |n| format!("n{n}"));
    c.ids()
        .iter()
        .map(|&id| match c.node(id) {
            None => match c.refused(id) {
                Some(index) => format!("n{id} down (refused to start: entry {index} corrupt)"),
                None => format!("n{id} down"),
            },
            Some(n) => {
                let s = n.status();
                format!(
                    "n{id} {} term={} leader={} vote={} commit={} applied={} last={}@t{}{}",
                    s.role,
                    s.term,
                    name(s.leader),
                    name(s.voted_for),
                    s.commit_index,
                    s.last_applied,
                    s.last_log_index,
                    s.last_log_term,
                    if c.is_up(id) { "" } else { " (frozen)" },
                )
            }
        })
        .collect()
}
