//! Command line and cluster file.
//!
//! `raft-node --config FILE --id N --data-dir DIR` names the cluster file (the
//! same on every member), this member's id in it and its data directory. The
//! timing flags override the file. [`Settings::load`] turns both into one
//! validated [`Settings`]; every error is a single line naming the file (or
//! the flag) and what is wrong, ready for `main` to print before exiting 2.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use raft_proto::NodeId;
use serde::Deserialize;

use crate::acl::{Acl, MAX_USERS_FILE_LEN};
use crate::auth::PeerKey;
use crate::members::Member;

/// Bytes queued for one peer at most (see [`crate::peer`]); past it the link is dropped as
/// unreachable. Room for a few maximal frames, or a window of pipelined
/// AppendEntries. Here, below the links, because the settings are checked
/// against it (a request must fit in a peer's queue).
pub const MAX_SEND_QUEUE: usize = 64 << 20;

/// Default leader heartbeat interval, as in the interface contract.
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
/// Default election timeout range `[min, max)`, as in the interface contract.
pub const DEFAULT_ELECTION_TIMEOUT_MS: [u64; 2] = [300, 600];
/// The minimum election timeout must be at least this many heartbeats, or one
/// late heartbeat starts an election. Mirrors
/// `raft_proto::MIN_HEARTBEATS_PER_TIMEOUT`, checked here too so that the
/// message can name the file or flag at fault.
pub const MIN_HEARTBEATS_PER_TIMEOUT: u64 = 3;
/// Members in one cluster at most. Raft clusters are small; the bound keeps
/// per-peer state (connections, queues) bounded by construction.
pub const MAX_MEMBERS: usize = 64;
/// Cluster files larger than this are refused before parsing.
pub const MAX_CONFIG_FILE_LEN: u64 = 1 << 20;
/// Secret files larger than this are refused: a secret is a few dozen bytes,
/// and a bigger file is most likely the wrong one.
pub const MAX_SECRET_FILE_LEN: u64 = 4096;
/// A secret shorter than this is accepted with a warning: it can be guessed
/// offline from one recorded handshake.
pub const MIN_SECRET_LEN: usize = 16;
/// `client_idle_timeout_ms` at most: 30 days (Redis' `timeout` has no
/// useful setting beyond; keeps `Instant` arithmetic trivially safe).
pub const MAX_CLIENT_IDLE_TIMEOUT_MS: u64 = 30 * 24 * 3_600_000;
/// `client_memory_budget_mb` at least: room for a few maximal requests and
/// replies at once.
pub const MIN_CLIENT_MEMORY_BUDGET_MB: u64 = 8;
/// `client_memory_budget_mb` at most (1 TiB).
pub const MAX_CLIENT_MEMORY_BUDGET_MB: u64 = 1 << 20;
/// `snapshot_entries` by default: a snapshot after this many entries
/// applied since the last one. With 100-byte writes the log since the last
/// snapshot then holds about 10 MB in memory.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 50_000;
/// `snapshot_log_mb` by default: or once the commands applied since the
/// last snapshot add up to this many MiB.
pub const DEFAULT_SNAPSHOT_LOG_MB: u64 = 64;
/// `compaction_trailing_entries` by default: entries kept before a
/// snapshot for followers that lag a little.
pub const DEFAULT_TRAILING_ENTRIES: u64 = 5_000;
/// `log_segment_mb` by default.
pub const DEFAULT_LOG_SEGMENT_MB: u64 = 16;
/// `max_snapshot_mb` by default: a snapshot a leader announces larger than
/// this is refused unwritten (the store lives in memory; 16 GiB).
pub const DEFAULT_MAX_SNAPSHOT_MB: u64 = 16 << 10;
/// Default `member_add_timeout_ms`.
pub const DEFAULT_MEMBER_ADD_TIMEOUT_MS: u64 = 10_000;
/// Bytes of snapshot per InstallSnapshot message: with the pipelining
/// window (32 messages) 16 MiB in flight, which fits the peer send queue
/// beside a full window of appends.
pub const SNAPSHOT_CHUNK_BYTES: usize = 512 << 10;

/// The command line of `raft-node`.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "raft-node",
    version,
    about = "One member of a Raft cluster serving a replicated key-value store over RESP2 \
             (redis-cli, redis-py, ...).",
    long_about = None,
    after_help = "Exit status: 0 after SIGTERM/SIGINT, 2 on bad configuration, an unusable \
                  data dir or corrupt durable state.\nRUST_LOG sets the log level (default: info)."
)]
pub struct Cli {
    /// Cluster file (TOML), identical on every member: heartbeat_ms,
    /// election_timeout_ms = [MIN, MAX] and one [[node]] table per member with
    /// id, peer_addr, client_addr and optional metrics_addr.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

    /// This member's id: one of the [[node]] ids in the cluster file (not 0).
    #[arg(long, value_name = "N")]
    pub id: u64,

    /// Directory for this member's durable state (term, vote, log). Created if
    /// missing; an empty directory is a first boot, one with state a restart.
    /// Only one process may use it at a time.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Leader heartbeat interval in milliseconds (overrides heartbeat_ms in the
    /// cluster file; default 50).
    #[arg(long, value_name = "N")]
    pub heartbeat_ms: Option<u64>,

    /// Election timeout range in milliseconds, randomized in [MIN, MAX)
    /// (overrides election_timeout_ms in the cluster file; default 300-600).
    /// MIN must be at least 3 heartbeats.
    #[arg(long, value_name = "MIN-MAX")]
    pub election_timeout_ms: Option<ElectionRange>,

    /// Serve Prometheus metrics at GET /metrics on this address (overrides this
    /// member's metrics_addr in the cluster file; off when neither is set).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// A new member of a running cluster: it does not bootstrap a cluster
    /// of its own from the file's members, and waits to be added with
    /// RAFT.ADD on the leader (the file must list it, for its own
    /// addresses). Ignored once the data dir holds state.
    #[arg(long)]
    pub join: bool,

    /// UNSAFE recovery when a quorum of the voters is lost for good:
    /// restart this surviving member as the only voter of a new
    /// configuration, from its own data (what only the lost members held is
    /// gone). Re-add the others with RAFT.ADD from empty data dirs started
    /// with --join. See docs/operations.md, "Unsafe recovery".
    #[arg(long, conflicts_with = "join")]
    pub force_new_cluster: bool,
}

impl Cli {
    /// Parses the process arguments. `Err(Ok(text))` is `--help`/`--version`
    /// output to print on stdout (exit 0); `Err(Err(line))` is a usage error as
    /// one line (exit 2).
    pub fn parse_args<I, T>(args: I) -> Result<Cli, Result<String, String>>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match Cli::try_parse_from(args) {
            Ok(cli) => Ok(cli),
            Err(e) => match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Err(Ok(e.render().to_string()))
                }
                _ => {
                    // clap renders several lines (error, usage, hint); the
                    // contract is one line, so keep the first and point at --help.
                    // The message proper is what precedes the usage block.
                    let rendered = e.render().to_string();
                    let msg: Vec<&str> = rendered
                        .lines()
                        .map(str::trim)
                        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                        .filter(|l| !l.is_empty())
                        .collect();
                    let msg = msg.join(" ");
                    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
                    Err(Err(format!("raft-node: {msg} (see --help)")))
                }
            },
        }
    }
}

/// An election timeout range `MIN-MAX` in milliseconds, as given on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionRange {
    /// Lower bound (inclusive), ms.
    pub min_ms: u64,
    /// Upper bound (exclusive), ms.
    pub max_ms: u64,
}

impl FromStr for ElectionRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (min, max) = s
            .split_once('-')
            .ok_or_else(|| format!("expected MIN-MAX in milliseconds, e.g. 300-600, got {s:?}"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("expected MIN-MAX in milliseconds, e.g. 300-600, got {s:?}"))
        };
        Ok(ElectionRange {
            min_ms: parse(min)?,
            max_ms: parse(max)?,
        })
    }
}

/// Everything the server needs from the command line and the cluster file,
/// validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The cluster file, as given.
    pub config_path: PathBuf,
    /// This member's data directory.
    pub data_dir: PathBuf,
    /// This member.
    pub id: NodeId,
    /// Every member, this one included, sorted by id.
    pub members: Vec<Member>,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range, lower bound (inclusive).
    pub election_timeout_min: Duration,
    /// Election timeout range, upper bound (exclusive).
    pub election_timeout_max: Duration,
    /// Where this member serves metrics (flag, else its `metrics_addr`).
    pub metrics_addr: Option<SocketAddr>,
    /// Identifies the cluster: a keyed hash of its peer secret
    /// ([`PeerKey::cluster_id`]), recorded in the data dir at the first
    /// boot. Not a secret: the peer handshake sends it in the clear.
    pub cluster_id: u64,
    /// `--join`: start without bootstrapping (see [`Cli::join`]).
    pub join: bool,
    /// What peer links prove in the handshake: the cluster secret from
    /// `secret_file`, or nothing (`insecure_peer_links = true`).
    pub peer_key: PeerKey,
    /// Where the secret was read from (None when insecure), for the log.
    pub secret_path: Option<PathBuf>,
    /// Clients idle this long are closed (`client_idle_timeout_ms`, like
    /// Redis' `timeout`); `None` (0 in the file, the default): never.
    pub client_idle_timeout: Option<Duration>,
    /// Bytes all client connections may hold together
    /// (`client_memory_budget_mb`, default 256).
    pub client_memory_budget: usize,
    /// Who may connect and run what: the users of `users_file`, the
    /// default user's password from `client_password_file`, protected
    /// mode (see [`crate::acl`]).
    pub acl: Acl,
    /// A snapshot is taken once this many entries were applied since the
    /// last one (`snapshot_entries`)...
    pub snapshot_entries: u64,
    /// ...or this many bytes of commands (`snapshot_log_mb`).
    pub snapshot_bytes: u64,
    /// Entries kept before a snapshot (`compaction_trailing_entries`).
    pub compaction_trailing_entries: u64,
    /// Size at which a log segment is closed (`log_segment_mb`).
    pub segment_bytes: u64,
    /// A leader's snapshot larger than this is refused unwritten
    /// (`max_snapshot_mb`).
    pub max_snapshot_bytes: u64,
    /// A leader that gets SIGTERM/SIGINT hands leadership over before it
    /// exits (`shutdown_transfer`, default true; false is for comparing,
    /// in the membership drill).
    pub shutdown_transfer: bool,
    /// `RAFT.ADD` of a voter gives the new member this long without
    /// progress to connect and catch up before it removes it again
    /// (`member_add_timeout_ms`, default 10 s).
    pub member_add_timeout: Duration,
}

impl Settings {
    /// Reads and validates the cluster file named by `cli`, applies the flag
    /// overrides, and checks that `--id` is a member.
    pub fn load(cli: &Cli) -> Result<Settings, LoadError> {
        let text = read_config_file(&cli.config)?;
        Settings::from_toml(cli, &text)
    }

    /// Like [`Settings::load`], with the file's contents already read (the
    /// path is only used in messages).
    pub fn from_toml(cli: &Cli, text: &str) -> Result<Settings, LoadError> {
        let path = &cli.config;
        let file_err = |msg: String| LoadError::File {
            path: path.clone(),
            msg,
        };
        let file: ClusterFile = toml::from_str(text).map_err(|e| file_err(toml_error(&e, text)))?;

        if file.nodes.is_empty() {
            return Err(file_err("no [[node]] entries".into()));
        }
        if file.nodes.len() > MAX_MEMBERS {
            return Err(file_err(format!(
                "{} nodes listed, at most {MAX_MEMBERS} are supported",
                file.nodes.len()
            )));
        }

        let members = members_of(&file, &file_err)?;

        if cli.id == 0 {
            return Err(LoadError::Flag(
                "--id 0: node id 0 is reserved for \"no node\"; ids start at 1".into(),
            ));
        }
        let Some(me) = members.iter().find(|m| m.id == NodeId(cli.id)) else {
            let listed: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            return Err(file_err(format!(
                "--id {} is not a member (ids listed: {})",
                cli.id,
                listed.join(", ")
            )));
        };

        let (heartbeat_ms, min_ms, max_ms) = timing(cli, &file, &file_err)?;

        let metrics_addr = match &cli.metrics_addr {
            Some(m) => Some(
                resolve_addr(m)
                    .map_err(|why| LoadError::Flag(format!("--metrics-addr {m:?}: {why}")))?,
            ),
            None => me.metrics_addr,
        };

        let (peer_key, secret_path) = peer_key_of(&file, path, &file_err)?;
        let client_idle_timeout = match file.client_idle_timeout_ms {
            0 => None,
            ms if ms > MAX_CLIENT_IDLE_TIMEOUT_MS => {
                return Err(file_err(format!(
                    "client_idle_timeout_ms: {ms} ms is more than 30 days (0 turns it off)"
                )))
            }
            ms => Some(Duration::from_millis(ms)),
        };
        let budget_mb = file.client_memory_budget_mb;
        if !(MIN_CLIENT_MEMORY_BUDGET_MB..=MAX_CLIENT_MEMORY_BUDGET_MB).contains(&budget_mb) {
            return Err(file_err(format!(
                "client_memory_budget_mb: {budget_mb} is outside \
                 {MIN_CLIENT_MEMORY_BUDGET_MB}..={MAX_CLIENT_MEMORY_BUDGET_MB}"
            )));
        }

        let positive = |name: &str, v: u64, max: u64| {
            if (1..=max).contains(&v) {
                Ok(v)
            } else {
                Err(file_err(format!("{name}: {v} is outside 1..={max}")))
            }
        };
        let snapshot_entries = positive("snapshot_entries", file.snapshot_entries, 1 << 32)?;
        let snapshot_bytes = positive("snapshot_log_mb", file.snapshot_log_mb, 1 << 20)? << 20;
        let segment_bytes = positive("log_segment_mb", file.log_segment_mb, 1 << 10)? << 20;
        let max_snapshot_bytes = positive("max_snapshot_mb", file.max_snapshot_mb, 1 << 30)? << 20;
        let compaction_trailing_entries = file.compaction_trailing_entries;
        let member_add_timeout_ms = file.member_add_timeout_ms;
        if !(100..=3_600_000).contains(&member_add_timeout_ms) {
            return Err(file_err(format!(
                "member_add_timeout_ms: {member_add_timeout_ms} is outside 100..=3600000"
            )));
        }
        if compaction_trailing_entries > 1 << 32 {
            return Err(file_err(format!(
                "compaction_trailing_entries: {compaction_trailing_entries} is above {}",
                1u64 << 32
            )));
        }

        let acl = acl_of(&file, path)?;

        Ok(Settings {
            snapshot_entries,
            snapshot_bytes,
            compaction_trailing_entries,
            segment_bytes,
            max_snapshot_bytes,
            shutdown_transfer: file.shutdown_transfer,
            member_add_timeout: Duration::from_millis(member_add_timeout_ms),
            acl,
            client_idle_timeout,
            client_memory_budget: usize::try_from(budget_mb << 20).unwrap_or(usize::MAX),
            config_path: path.clone(),
            data_dir: cli.data_dir.clone(),
            id: me.id,
            cluster_id: peer_key.cluster_id(),
            join: cli.join,
            members,
            heartbeat: Duration::from_millis(heartbeat_ms),
            election_timeout_min: Duration::from_millis(min_ms),
            election_timeout_max: Duration::from_millis(max_ms),
            metrics_addr,
            peer_key,
            secret_path,
        })
    }

    /// This member's entry.
    pub fn me(&self) -> &Member {
        self.member(self.id).expect("validated: --id is a member")
    }

    /// The member with this id, if any.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Every member but this one.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.id != self.id)
    }

    /// The voter ids, sorted.
    pub fn voters(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// A `raft_proto::Config` with these timings and the protocol's default
    /// limits, seeded with `seed`.
    pub fn proto_config(&self, seed: u64) -> raft_proto::Config {
        // A member that joins knows no configuration until the leader's
        // log gives it one.
        let voters = if self.join { Vec::new() } else { self.voters() };
        let mut c = raft_proto::Config::new(self.id, voters);
        c.bootstrap_context = crate::members::encode(&self.members);
        c.heartbeat_interval = self.heartbeat;
        c.election_timeout_min = self.election_timeout_min;
        c.election_timeout_max = self.election_timeout_max;
        c.seed = seed;
        c.compaction_trailing_entries = self.compaction_trailing_entries;
        c.snapshot_chunk_bytes = SNAPSHOT_CHUNK_BYTES;
        // Everything the leader may have in flight to one follower must fit
        // in that peer's send queue, or a slow follower's link is reset
        // (and it starts a needless pre-vote). A message carries at most
        // max_bytes_per_append of payload, or one entry of at most one
        // client request.
        let per_message = c
            .max_bytes_per_append
            .max(crate::resp::Limits::DEFAULT.max_request_len);
        assert!(
            c.max_inflight_appends * (per_message + (64 << 10)) <= MAX_SEND_QUEUE / 4 * 3,
            "in-flight window ({} x {per_message} B) does not fit the peer send queue",
            c.max_inflight_appends
        );
        // A follower that just received a snapshot may still have appends
        // in flight to it: both windows together must fit.
        assert!(
            c.max_inflight_appends * (per_message + c.snapshot_chunk_bytes + (128 << 10))
                <= MAX_SEND_QUEUE,
            "snapshot window ({} x {} B) and append window do not fit the peer send queue",
            c.max_inflight_appends,
            c.snapshot_chunk_bytes
        );
        c
    }
}

/// The members listed in the cluster file, sorted by id, each address
/// resolved and owned by exactly one listener.
fn members_of(
    file: &ClusterFile,
    file_err: &dyn Fn(String) -> LoadError,
) -> Result<Vec<Member>, LoadError> {
    let mut members = Vec::with_capacity(file.nodes.len());
    // Every socket address must belong to exactly one listener.
    let mut addr_owner: HashMap<SocketAddr, (u64, &'static str)> = HashMap::new();
    let mut ids: HashSet<u64> = HashSet::new();
    for node in &file.nodes {
        if node.id == 0 {
            return Err(file_err(
                "node id 0 is reserved for \"no node\"; ids start at 1".into(),
            ));
        }
        if !ids.insert(node.id) {
            return Err(file_err(format!("node id {} is listed twice", node.id)));
        }
        let mut resolve = |field: &'static str, value: &str| -> Result<SocketAddr, LoadError> {
            let addr = resolve_addr(value)
                .map_err(|why| file_err(format!("node {}: {field} {value:?}: {why}", node.id)))?;
            if let Some((other, other_field)) = addr_owner.insert(addr, (node.id, field)) {
                return Err(file_err(format!(
                    "node {}: {field} {addr} is already used as {other_field} of node {other}",
                    node.id
                )));
            }
            Ok(addr)
        };
        let peer_addr = resolve("peer_addr", &node.peer_addr)?;
        let client_addr = resolve("client_addr", &node.client_addr)?;
        let metrics_addr = match &node.metrics_addr {
            Some(m) => Some(resolve("metrics_addr", m)?),
            None => None,
        };
        let peer_ip = node
            .peer_addr
            .trim()
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        members.push(Member {
            id: NodeId(node.id),
            peer_addr,
            client_addr,
            metrics_addr,
            peer_ip,
        });
    }
    members.sort_by_key(|m| m.id);
    Ok(members)
}

/// Heartbeat and election timeout in ms: flags override the file, and a
/// bad value is blamed on where it came from.
fn timing(
    cli: &Cli,
    file: &ClusterFile,
    file_err: &dyn Fn(String) -> LoadError,
) -> Result<(u64, u64, u64), LoadError> {
    // Timing: flags override the file; a bad value is blamed on its source.
    let (heartbeat_ms, hb_src) = match cli.heartbeat_ms {
        Some(v) => (v, Source::Flag("--heartbeat-ms")),
        None => (file.heartbeat_ms, Source::File("heartbeat_ms")),
    };
    let (min_ms, max_ms, et_src) = match cli.election_timeout_ms {
        Some(r) => (r.min_ms, r.max_ms, Source::Flag("--election-timeout-ms")),
        None => (
            file.election_timeout_ms[0],
            file.election_timeout_ms[1],
            Source::File("election_timeout_ms"),
        ),
    };
    let blame = |src: Source, msg: String| match src {
        Source::Flag(flag) => LoadError::Flag(format!("{flag}: {msg}")),
        Source::File(key) => file_err(format!("{key}: {msg}")),
    };
    if heartbeat_ms == 0 {
        return Err(blame(hb_src, "must be at least 1 ms".into()));
    }
    if min_ms == 0 || min_ms >= max_ms {
        return Err(blame(
            et_src,
            format!("[{min_ms}, {max_ms}) is not a range: need 0 < MIN < MAX"),
        ));
    }
    if min_ms < heartbeat_ms.saturating_mul(MIN_HEARTBEATS_PER_TIMEOUT) {
        let src = if matches!(et_src, Source::Flag(_)) {
            et_src
        } else {
            hb_src
        };
        return Err(blame(
            src,
            format!(
                "minimum election timeout {min_ms} ms must be at least \
                 {MIN_HEARTBEATS_PER_TIMEOUT} heartbeats ({heartbeat_ms} ms each), \
                 or one late heartbeat starts an election"
            ),
        ));
    }
    // Far beyond any sane setting; keeps Duration arithmetic trivially safe.
    const MAX_TIMING_MS: u64 = 3_600_000;
    if max_ms > MAX_TIMING_MS {
        return Err(blame(et_src, format!("{max_ms} ms is more than an hour")));
    }
    Ok((heartbeat_ms, min_ms, max_ms))
}

/// The peer links' key: from `secret_file` (next to the cluster file), or
/// none when `insecure_peer_links` says so; never both, never neither.
fn peer_key_of(
    file: &ClusterFile,
    path: &Path,
    file_err: &dyn Fn(String) -> LoadError,
) -> Result<(PeerKey, Option<PathBuf>), LoadError> {
    let (peer_key, secret_path) = match (&file.secret_file, file.insecure_peer_links) {
        (Some(_), true) => {
            return Err(file_err(
                "both secret_file and insecure_peer_links = true: choose one".into(),
            ))
        }
        (None, false) => {
            return Err(file_err(
                "no secret_file: peer links must be authenticated. Add \
                 secret_file = \"cluster.secret\" (a file of random bytes, mode 0600, the \
                 same on every member; e.g. head -c 32 /dev/urandom | base64 > cluster.secret), \
                 or insecure_peer_links = true for experiments"
                    .into(),
            ))
        }
        (None, true) => (PeerKey::insecure(), None),
        (Some(name), false) => {
            let secret_path = path
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join(name.trim());
            let secret = read_secret_file(&secret_path, "secret_file")?;
            (PeerKey::secret(secret), Some(secret_path))
        }
    };
    Ok((peer_key, secret_path))
}

/// The users: from `users_file`, or the default user alone (with
/// `client_password_file`'s password, if any).
fn acl_of(file: &ClusterFile, path: &Path) -> Result<Acl, LoadError> {
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    let client_password = match &file.client_password_file {
        None => None,
        Some(name) => Some(read_secret_file(
            &dir.join(name.trim()),
            "client_password_file",
        )?),
    };
    let acl = match &file.users_file {
        None => Acl::single(client_password.as_deref(), file.protected_mode),
        Some(name) => {
            let users_path = dir.join(name.trim());
            let bytes = read_private_file(&users_path, "users_file", MAX_USERS_FILE_LEN)?;
            let text = String::from_utf8(bytes).map_err(|_| LoadError::File {
                path: users_path.clone(),
                msg: "users_file is not UTF-8".into(),
            })?;
            Acl::parse(&text, client_password.as_deref(), file.protected_mode).map_err(|msg| {
                LoadError::File {
                    path: users_path.clone(),
                    msg,
                }
            })?
        }
    };
    Ok(acl)
}

/// Where a timing value came from, to blame the right one.
#[derive(Clone, Copy)]
enum Source {
    Flag(&'static str),
    File(&'static str),
}

/// Why the configuration was refused. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The cluster file could not be read or is invalid.
    File {
        /// The cluster file.
        path: PathBuf,
        /// What is wrong, one line.
        msg: String,
    },
    /// A command-line flag is invalid.
    Flag(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::File { path, msg } => write!(f, "{}: {msg}", path.display()),
            LoadError::Flag(msg) => write!(f, "raft-node: {msg}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The cluster file as written. Unknown keys are refused so that a typo
/// (`hearbeat_ms`) does not silently fall back to a default.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_election_timeout_ms")]
    election_timeout_ms: [u64; 2],
    /// The peer-link secret, relative to the cluster file.
    secret_file: Option<String>,
    /// Experiments only: peer links without authentication.
    #[serde(default)]
    insecure_peer_links: bool,
    /// The client password, relative to the cluster file.
    client_password_file: Option<String>,
    /// Client users and what each may run, relative to the cluster file.
    users_file: Option<String>,
    /// Redis' protected mode: with no password for the default user,
    /// serve loopback clients only.
    #[serde(default = "default_true")]
    protected_mode: bool,
    /// 0: off.
    #[serde(default)]
    client_idle_timeout_ms: u64,
    #[serde(default = "default_client_memory_budget_mb")]
    client_memory_budget_mb: u64,
    #[serde(default = "default_snapshot_entries")]
    snapshot_entries: u64,
    #[serde(default = "default_snapshot_log_mb")]
    snapshot_log_mb: u64,
    #[serde(default = "default_trailing_entries")]
    compaction_trailing_entries: u64,
    #[serde(default = "default_log_segment_mb")]
    log_segment_mb: u64,
    #[serde(default = "default_max_snapshot_mb")]
    max_snapshot_mb: u64,
    #[serde(default = "default_true")]
    shutdown_transfer: bool,
    /// RAFT.ADD gives a new member this long without progress to connect
    /// and catch up.
    #[serde(default = "default_member_add_timeout_ms")]
    member_add_timeout_ms: u64,
    #[serde(rename = "node", default)]
    nodes: Vec<NodeEntry>,
}

fn default_true() -> bool {
    true
}

fn default_member_add_timeout_ms() -> u64 {
    DEFAULT_MEMBER_ADD_TIMEOUT_MS
}

fn default_snapshot_entries() -> u64 {
    DEFAULT_SNAPSHOT_ENTRIES
}

fn default_snapshot_log_mb() -> u64 {
    DEFAULT_SNAPSHOT_LOG_MB
}

fn default_trailing_entries() -> u64 {
    DEFAULT_TRAILING_ENTRIES
}

fn default_log_segment_mb() -> u64 {
    DEFAULT_LOG_SEGMENT_MB
}

fn default_max_snapshot_mb() -> u64 {
    DEFAULT_MAX_SNAPSHOT_MB
}

fn default_client_memory_budget_mb() -> u64 {
    (crate::client::DEFAULT_CLIENT_MEMORY_BUDGET >> 20) as u64
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: u64,
    peer_addr: String,
    client_addr: String,
    metrics_addr: Option<String>,
}

fn default_heartbeat_ms() -> u64 {
    DEFAULT_HEARTBEAT_MS
}

fn default_election_timeout_ms() -> [u64; 2] {
    DEFAULT_ELECTION_TIMEOUT_MS
}

fn read_config_file(path: &Path) -> Result<String, LoadError> {
    let err = |msg: String| LoadError::File {
        path: path.to_path_buf(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if meta.len() > MAX_CONFIG_FILE_LEN {
        return Err(err(format!(
            "{} bytes is too large for a cluster file (at most {MAX_CONFIG_FILE_LEN})",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))
}

/// Reads the cluster secret (or the client password; `field` names the
/// key of the cluster file in messages): the file's bytes, less one trailing newline
/// (so that `echo`, `base64` and editors can write it). Refused if missing,
/// empty, too large, or accessible by group or others: a secret that other
/// local users can read protects nothing.
fn read_secret_file(path: &Path, field: &str) -> Result<Vec<u8>, LoadError> {
    let mut secret = read_private_file(path, field, MAX_SECRET_FILE_LEN)?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(LoadError::File {
            path: path.to_path_buf(),
            msg: format!("{field} is empty"),
        });
    }
    Ok(secret)
}

/// Reads a file that holds secrets (the cluster secret, passwords, the
/// users file): refused if missing, not a regular file, larger than
/// `max_len`, or accessible by group or others.
fn read_private_file(path: &Path, field: &str, max_len: u64) -> Result<Vec<u8>, LoadError> {
    let err = |msg: String| LoadError::File {
        path: path.to_path_buf(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read {field}: {e}")))?;
    if !meta.is_file() {
        return Err(err(format!("{field} is not a regular file")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "{field} has mode {mode:04o}: it must not be accessible by group or \
                 others (chmod 600 it)"
            )));
        }
    }
    if meta.len() > max_len {
        return Err(err(format!(
            "{field} is {} bytes, at most {max_len} (is it the right file?)",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| err(format!("cannot read {field}: {e}")))
}

/// A TOML error as `line L, column C: message` on one line (the toml crate's
/// own rendering spans several lines with a source excerpt).
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// Resolves `HOST:PORT` (an IP address or a name) to one socket address. Port
/// 0 is refused: other members and clients must be able to reach it.
pub fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            if !s.contains(':') {
                return Err("expected HOST:PORT".into());
            }
            let mut addrs = s
                .to_socket_addrs()
                .map_err(|e| format!("not a valid HOST:PORT ({e})"))?;
            addrs
                .next()
                .ok_or_else(|| "host name resolves to no address".to_string())?
        }
    };
    if addr.port() == 0 {
        return Err("port 0 is not a reachable address".into());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
heartbeat_ms = 50
election_timeout_ms = [300, 600]
insecure_peer_links = true

[[node]]
id = 1
peer_addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:6401"
metrics_addr = "127.0.0.1:9401"

[[node]]
id = 2
peer_addr = "127.0.0.1:7002"
client_addr = "127.0.0.1:6402"

[[node]]
id = 3
peer_addr = "127.0.0.1:7003"
client_addr = "127.0.0.1:6403"
"#;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["raft-node", "--config", "cluster.toml", "--data-dir", "d"];
        v.extend_from_slice(args);
        Cli::parse_args(v).expect("valid args")
    }

    fn load(args: &[&str], text: &str) -> Result<Settings, LoadError> {
        Settings::from_toml(&cli(args), text)
    }

    fn load_err(args: &[&str], text: &str) -> String {
        let e = load(args, text).expect_err("should be refused").to_string();
        assert!(!e.contains('\n'), "error must be one line: {e}");
        e
    }

    #[test]
    fn proto_config_is_valid_and_its_window_fits_the_send_queue() {
        let s = load(&["--id", "2"], THREE).unwrap();
        // proto_config asserts the in-flight window fits the queue.
        let c = s.proto_config(7);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.seed, 7);
    }

    #[test]
    fn parses_the_interface_example() {
        let s = load(&["--id", "2"], THREE).unwrap();
        assert_eq!(s.id, NodeId(2));
        assert_eq!(s.members.len(), 3);
        assert_eq!(s.me().client_addr, "127.0.0.1:6402".parse().unwrap());
        assert_eq!(s.heartbeat, Duration::from_millis(50));
        assert_eq!(s.election_timeout_min, Duration::from_millis(300));
        assert_eq!(s.election_timeout_max, Duration::from_millis(600));
        assert_eq!(s.metrics_addr, None);
        assert_eq!(
            s.peers().map(|m| m.id).collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(3)]
        );
        let s1 = load(&["--id", "1"], THREE).unwrap();
        assert_eq!(s1.metrics_addr, Some("127.0.0.1:9401".parse().unwrap()));
        assert_eq!(s1.cluster_id, s.cluster_id);
        let pc = s.proto_config(7);
        assert_eq!(pc.voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert!(pc.validate().is_ok());
    }

    #[test]
    fn defaults_apply_when_timings_are_absent() {
        let text = "insecure_peer_links = true\n[[node]]\nid = 1\npeer_addr = \"127.0.0.1:7001\"\n\
                    client_addr = \"127.0.0.1:6401\"\n";
        let s = load(&["--id", "1"], text).unwrap();
        assert_eq!(s.heartbeat, Duration::from_millis(DEFAULT_HEARTBEAT_MS));
        assert_eq!(s.election_timeout_min, Duration::from_millis(300));
        assert_eq!(s.election_timeout_max, Duration::from_millis(600));
        assert_eq!(s.client_idle_timeout, None);
        assert_eq!(s.client_memory_budget, 256 << 20);
    }

    #[test]
    fn client_limits() {
        let with = |extra: &str| format!("{extra}\n{THREE}");
        let s = load(
            &["--id", "1"],
            &with("client_idle_timeout_ms = 300000\nclient_memory_budget_mb = 64"),
        )
        .unwrap();
        assert_eq!(s.client_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(s.client_memory_budget, 64 << 20);
        let s = load(&["--id", "1"], &with("client_idle_timeout_ms = 0")).unwrap();
        assert_eq!(s.client_idle_timeout, None);
        let e = load_err(&["--id", "1"], &with("client_memory_budget_mb = 1"));
        assert!(
            e.contains("client_memory_budget_mb: 1 is outside 8..="),
            "{e}"
        );
        let e = load_err(
            &["--id", "1"],
            &with("client_idle_timeout_ms = 9999999999999"),
        );
        assert!(e.contains("client_idle_timeout_ms"), "{e}");
        let e = load_err(&["--id", "1"], &with("client_idle_timeout_ms = -1"));
        assert!(
            e.contains("client_idle_timeout_ms") || e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let s = load(
            &[
                "--id",
                "1",
                "--heartbeat-ms",
                "20",
                "--election-timeout-ms",
                "100-200",
                "--metrics-addr",
                "127.0.0.1:9999",
            ],
            THREE,
        )
        .unwrap();
        assert_eq!(s.heartbeat, Duration::from_millis(20));
        assert_eq!(s.election_timeout_min, Duration::from_millis(100));
        assert_eq!(s.election_timeout_max, Duration::from_millis(200));
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9999".parse().unwrap()));
    }

    #[test]
    fn cluster_id_depends_on_the_secret_only() {
        let a = load(&["--id", "1"], THREE).unwrap().cluster_id;
        // The membership may change (members join and leave); the
        // cluster stays the same.
        let moved = THREE.replace("7002", "7012");
        assert_eq!(a, load(&["--id", "1"], &moved).unwrap().cluster_id);
        assert_eq!(
            PeerKey::secret(b"one".to_vec()).cluster_id(),
            PeerKey::secret(b"one".to_vec()).cluster_id()
        );
        assert_ne!(
            PeerKey::secret(b"one".to_vec()).cluster_id(),
            PeerKey::secret(b"two".to_vec()).cluster_id()
        );
    }

    #[test]
    fn join_starts_without_a_bootstrap_configuration() {
        let s = load(&["--id", "2", "--join"], THREE).unwrap();
        assert!(s.join);
        assert!(s.proto_config(1).voters.is_empty());
        let s = load(&["--id", "2"], THREE).unwrap();
        assert_eq!(s.proto_config(1).voters.len(), 3);
    }

    /// A cluster file in a temporary directory with a secret file beside it.
    fn with_secret(secret: &[u8], mode: u32) -> (tempfile::TempDir, Cli, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret_path = dir.path().join("cluster.secret");
        std::fs::write(&secret_path, secret).unwrap();
        std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(mode)).unwrap();
        let config = dir.path().join("cluster.toml");
        let text = THREE.replace(
            "insecure_peer_links = true",
            "secret_file = \"cluster.secret\"",
        );
        let cli = Cli::parse_args([
            "raft-node",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            "d",
            "--id",
            "1",
        ])
        .unwrap();
        (dir, cli, text)
    }

    #[test]
    fn reads_the_secret_beside_the_cluster_file() {
        let (_dir, cli, text) = with_secret(b"0123456789abcdef0123\n", 0o600);
        let s = Settings::from_toml(&cli, &text).unwrap();
        // One trailing newline is not part of the secret.
        assert_eq!(
            s.peer_key,
            PeerKey::secret(b"0123456789abcdef0123".to_vec())
        );
        assert!(!s.peer_key.is_insecure());
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        let insecure = load(&["--id", "1"], THREE).unwrap();
        assert!(insecure.peer_key.is_insecure());
    }

    #[test]
    fn reads_the_client_password_like_the_secret() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, cli, text) = with_secret(b"0123456789abcdef0123\n", 0o600);
        let pw = dir.path().join("clients.pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let none = Settings::from_toml(&cli, &text).unwrap();
        assert!(none.acl.initial_user().is_some() && none.acl.protected());
        let text = text.replace(
            "secret_file =",
            "client_password_file = \"clients.pw\"\nsecret_file =",
        );
        let s = Settings::from_toml(&cli, &text).unwrap();
        assert_eq!(s.acl.initial_user(), None);
        assert!(s.acl.authenticate(None, b"hunter2").is_ok());
        assert!(!format!("{s:?}").contains("hunter2"), "kept out of Debug");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Settings::from_toml(&cli, &text).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "clients.pw: client_password_file has mode 0640: it must not be \
                         accessible by group or others (chmod 600 it)"
            ),
            "{e}"
        );
        std::fs::remove_file(&pw).unwrap();
        let e = Settings::from_toml(&cli, &text).unwrap_err().to_string();
        assert!(
            e.contains("clients.pw: cannot read client_password_file"),
            "{e}"
        );
    }

    #[test]
    fn reads_users_like_the_secret_and_names_the_bad_line() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, cli, text) = with_secret(b"0123456789abcdef0123\n", 0o600);
        let users = dir.path().join("users.acl");
        std::fs::write(
            &users,
            "user admin on >a +@all\nuser app on >b +@all -@admin\n",
        )
        .unwrap();
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = text.replace("secret_file =", "users_file = \"users.acl\"\nsecret_file =");
        let s = Settings::from_toml(&cli, &text).unwrap();
        assert_eq!(s.acl.initial_user(), None, "default is off");
        assert!(!s.acl.protected());
        let app = s.acl.authenticate(Some(b"app"), b"b").unwrap();
        assert!(!s.acl.allows(app, b"RAFT.ADD", None));
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Settings::from_toml(&cli, &text).unwrap_err().to_string();
        assert!(e.contains("users.acl: users_file has mode 0644"), "{e}");
        std::fs::write(&users, "user admin on >a +@all\nuser x on +@sudo\n").unwrap();
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Settings::from_toml(&cli, &text).unwrap_err().to_string();
        assert!(
            e.contains("users.acl: line 2: user \"x\": unknown category @sudo"),
            "{e}"
        );
        let off = text.replace("users_file = \"users.acl\"\n", "protected_mode = false\n");
        let s = Settings::from_toml(&cli, &off).unwrap();
        assert!(!s.acl.protected());
    }

    #[test]
    fn refuses_a_missing_empty_or_readable_secret() {
        let (_dir, cli, text) = with_secret(b"0123456789abcdef", 0o644);
        let e = Settings::from_toml(&cli, &text).unwrap_err().to_string();
        assert!(e.ends_with("cluster.secret: secret_file has mode 0644: it must not be accessible by group or others (chmod 600 it)"), "{e}");
        let (_dir, cli, text) = with_secret(b"\n", 0o600);
        let e = Settings::from_toml(&cli, &text).unwrap_err().to_string();
        assert!(e.ends_with("cluster.secret: secret_file is empty"), "{e}");
        let (_dir, cli, text) = with_secret(b"x", 0o600);
        let e = Settings::from_toml(&cli, &text.replace("cluster.secret", "nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope: cannot read secret_file"), "{e}");
        assert!(!e.contains('\n'));

        let e = load_err(
            &["--id", "1"],
            &THREE.replace("insecure_peer_links = true", ""),
        );
        assert!(e.starts_with("cluster.toml: no secret_file"), "{e}");
        let both = THREE.replace(
            "insecure_peer_links = true",
            "insecure_peer_links = true\nsecret_file = \"s\"",
        );
        let e = load_err(&["--id", "1"], &both);
        assert!(e.contains("choose one"), "{e}");
    }

    #[test]
    fn peer_ip_is_known_only_for_ip_addresses() {
        let s = load(&["--id", "1"], THREE).unwrap();
        assert_eq!(s.me().peer_ip, Some("127.0.0.1".parse().unwrap()));
        let s = load(
            &["--id", "1"],
            &THREE
                .replace("127.0.0.1:7001", "0.0.0.0:7001")
                .replace("127.0.0.1:7002", "localhost:7002"),
        )
        .unwrap();
        assert_eq!(s.member(NodeId(1)).unwrap().peer_ip, None);
        assert_eq!(s.member(NodeId(2)).unwrap().peer_ip, None);
        assert!(s.member(NodeId(3)).unwrap().peer_ip.is_some());
    }

    #[test]
    fn refuses_unknown_keys() {
        let e = load_err(
            &["--id", "1"],
            &THREE.replace("heartbeat_ms", "hearbeat_ms"),
        );
        assert!(e.starts_with("cluster.toml: line 2"), "{e}");
        assert!(e.contains("hearbeat_ms"), "{e}");
        let e = load_err(
            &["--id", "1"],
            &THREE.replace("metrics_addr", "metric_addr"),
        );
        assert!(e.contains("metric_addr"), "{e}");
    }

    #[test]
    fn refuses_duplicates_and_zero() {
        let e = load_err(&["--id", "1"], &THREE.replace("id = 3", "id = 2"));
        assert_eq!(e, "cluster.toml: node id 2 is listed twice");
        let e = load_err(&["--id", "1"], &THREE.replace("7003", "7002"));
        assert_eq!(
            e,
            "cluster.toml: node 3: peer_addr 127.0.0.1:7002 is already used as peer_addr of node 2"
        );
        let e = load_err(&["--id", "1"], &THREE.replace("6403", "7001"));
        assert!(e.contains("already used as peer_addr of node 1"), "{e}");
        let e = load_err(&["--id", "1"], &THREE.replace("id = 3", "id = 0"));
        assert!(e.contains("node id 0 is reserved"), "{e}");
        let e = load_err(&["--id", "0"], THREE);
        assert!(e.starts_with("raft-node: --id 0"), "{e}");
    }

    #[test]
    fn refuses_id_not_in_file() {
        let e = load_err(&["--id", "4"], THREE);
        assert_eq!(
            e,
            "cluster.toml: --id 4 is not a member (ids listed: 1, 2, 3)"
        );
    }

    #[test]
    fn refuses_bad_addresses() {
        let e = load_err(
            &["--id", "1"],
            &THREE.replace("127.0.0.1:7002", "127.0.0.1"),
        );
        assert!(
            e.contains("node 2: peer_addr \"127.0.0.1\": expected HOST:PORT"),
            "{e}"
        );
        let e = load_err(
            &["--id", "1"],
            &THREE.replace("127.0.0.1:6402", "127.0.0.1:99999"),
        );
        assert!(e.contains("node 2: client_addr"), "{e}");
        let e = load_err(
            &["--id", "1"],
            &THREE.replace("127.0.0.1:6402", "127.0.0.1:0"),
        );
        assert!(e.contains("port 0"), "{e}");
        let e = load_err(&["--id", "1", "--metrics-addr", "nonsense"], THREE);
        assert!(e.starts_with("raft-node: --metrics-addr"), "{e}");
    }

    #[test]
    fn refuses_bad_timings() {
        let e = load_err(&["--id", "1"], &THREE.replace("[300, 600]", "[600, 300]"));
        assert!(e.starts_with("cluster.toml: election_timeout_ms"), "{e}");
        let e = load_err(&["--id", "1", "--heartbeat-ms", "0"], THREE);
        assert!(e.starts_with("raft-node: --heartbeat-ms"), "{e}");
        let e = load_err(&["--id", "1", "--heartbeat-ms", "200"], THREE);
        assert!(e.contains("at least 3 heartbeats"), "{e}");
        let e = load_err(&["--id", "1"], &THREE.replace("[300, 600]", "[300]"));
        assert!(e.starts_with("cluster.toml: line 3"), "{e}");
        let e = load_err(&["--id", "1"], "");
        assert_eq!(e, "cluster.toml: no [[node]] entries");
    }

    #[test]
    fn cli_errors_are_one_line() {
        let e = Cli::parse_args(["raft-node", "--id", "1"])
            .unwrap_err()
            .unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("--config"), "{e}");
        let e = Cli::parse_args([
            "raft-node",
            "--config",
            "c",
            "--id",
            "1",
            "--data-dir",
            "d",
            "--election-timeout-ms",
            "300",
        ])
        .unwrap_err()
        .unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("MIN-MAX"), "{e}");
        let help = Cli::parse_args(["raft-node", "--help"])
            .unwrap_err()
            .unwrap();
        for flag in [
            "--config",
            "--id",
            "--data-dir",
            "--heartbeat-ms",
            "--election-timeout-ms",
            "--metrics-addr",
        ] {
            assert!(help.contains(flag), "help lacks {flag}: {help}");
        }
    }

    #[test]
    fn missing_file_names_it() {
        let c = Cli::parse_args([
            "raft-node",
            "--config",
            "/nonexistent/cluster.toml",
            "--id",
            "1",
            "--data-dir",
            "d",
        ])
        .unwrap();
        let e = Settings::load(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent/cluster.toml: cannot read"),
            "{e}"
        );
    }
}
