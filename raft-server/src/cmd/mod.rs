//! Commands as clients send them: the one command table ([`COMMANDS`],
//! in `table`), the [`Command`] a request becomes, and the parsers, one
//! per command, by family: `connection` (the connection and server
//! commands), `cluster` (`RAFT.*`, `CLUSTER`), `store` (what the
//! replicated store runs). [`parse_command`] looks the name up, checks the
//! table's arity, and runs the entry's parser; [`kind_of`] routes a raw
//! request by the same table.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::resp::{Protocol, Reply, Request};

mod cluster;
mod connection;
mod store;
mod table;

pub use table::COMMANDS;

/// Whether a request reads or writes the store, for program order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Served by ReadIndex.
    Read,
    /// Goes through the log.
    Write,
}

/// A command, checked for arity and syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `TIME`: this member's clock.
    Time,
    /// A store command that only reads (`GET`, `MGET`, `TTL`, `SCAN`, ...):
    /// linearizable, through ReadIndex on the leader.
    Read(crate::kv::Command),
    /// A store command that writes (`SET`, `INCR`, `LOCK.ACQUIRE`, ...):
    /// through the log.
    Write(crate::kv::Command),
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WATCH key [key ...]`.
    Watch(Vec<Bytes>),
    /// `UNWATCH`.
    Unwatch,
    /// `INFO [section]`: local, no Raft round.
    Info(Option<String>),
    /// `QUIT`: `+OK`, then close.
    Quit,
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switch protocol
    /// and answer with the connection's facts.
    Hello {
        /// The protocol asked for; `None` keeps the current one.
        protocol: Option<Protocol>,
        /// `SETNAME`.
        name: Option<Bytes>,
        /// `AUTH username password`.
        auth: Option<(Bytes, Bytes)>,
    },
    /// `AUTH [username] password`.
    Auth {
        /// The user, if given (else `default`).
        user: Option<Bytes>,
        /// The password.
        password: Bytes,
    },
    /// `CLIENT SETNAME name`.
    ClientSetName(Bytes),
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT INFO`.
    ClientInfo,
    /// `CLIENT LIST`.
    ClientList,
    /// `SELECT 0`.
    Select,
    /// `RESET`.
    Reset,
    /// A command accepted and ignored (`CLIENT SETINFO`): `+OK`.
    Ok,
    /// `CONFIG GET pattern [pattern ...]`: the few parameters clients and
    /// redis-benchmark ask for.
    ConfigGet(Vec<Bytes>),
    /// `CLUSTER SLOTS|SHARDS|NODES|MYID|INFO|KEYSLOT key`: the Raft group
    /// as one shard (see `topology`).
    Cluster(ClusterQuery),
    /// `READONLY` (true) / `READWRITE` (false): whether followers serve
    /// this connection's reads, as replicas do for Redis Cluster clients.
    ReadMode(bool),
    /// `COMMAND` (every entry) or `COMMAND INFO name ...`.
    Commands(Option<Vec<Bytes>>),
    /// `COMMAND COUNT`.
    CountCommands,
    /// `COMMAND DOCS [name ...]`: every command's, or these.
    Docs(Option<Vec<Bytes>>),
    /// `RAFT.MEMBERS`: the configuration in force, as this member knows it.
    RaftMembers,
    /// `RAFT.ADD id peer_addr client_addr [LEARNER]`, `RAFT.PROMOTE id`,
    /// `RAFT.REMOVE id`: a configuration change, on the leader.
    RaftChange {
        /// The change.
        change: raft_proto::MembershipChange,
        /// For `RAFT.ADD`: the new member's peer and client addresses.
        addresses: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    },
    /// `RAFT.TRANSFER [id]`: hand leadership to `id`, or to the most
    /// up-to-date voter.
    RaftTransfer(Option<raft_proto::NodeId>),
}

/// How a table entry turns a request into a [`Command`].
#[derive(Clone, Copy)]
pub enum Parse {
    /// A command the session runs itself (connection, server, cluster).
    Session(fn(&str, &[Bytes]) -> Result<Command, Reply>),
    /// A command of the replicated store: a read (the entry is
    /// `readonly`) through ReadIndex, or a write through the log.
    Store(fn(&str, &[Bytes]) -> Result<crate::kv::Command, Reply>),
}

/// One entry of the `COMMAND` table, in Redis' shape: name, arity
/// (negative: at least that many arguments, name included), flags, and
/// where the keys are (first, last, step; 0 when there are none, last -1
/// for "to the end"). Cluster clients find a command's key from it.
pub struct CommandSpec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis' arity.
    pub arity: i64,
    /// Redis' flags.
    pub flags: &'static [&'static str],
    /// First key argument, last, step.
    pub keys: (i64, i64, i64),
    /// Redis' command group (`raft` for this server's own commands).
    pub group: &'static str,
    /// One line, for `COMMAND DOCS`.
    pub summary: &'static str,
    /// Turns a request (the name first, the arity checked) into what the
    /// session runs.
    pub parse: Parse,
}

/// The entry for `name` (lower case).
pub fn spec(name: &str) -> Option<&'static CommandSpec> {
    static INDEX: OnceLock<HashMap<&'static str, &'static CommandSpec>> = OnceLock::new();
    INDEX
        .get_or_init(|| COMMANDS.iter().map(|c| (c.name, c)).collect())
        .get(name)
        .copied()
}

/// The entry a request names (any case).
fn spec_of(args: &[Bytes]) -> Option<&'static CommandSpec> {
    let name = args.first()?;
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    spec(&String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// No command name is longer (`lock.acquire`): a longer one is unknown
/// without lower-casing it.
const MAX_NAME_LEN: usize = 32;

/// Parses a request into a [`Command`], or the error reply Redis would
/// give: unknown command, wrong number of arguments (from the table's
/// arity: exactly `arity` arguments, name included, or at least `-arity`),
/// then the entry's own checks.
pub fn parse_command(args: &[Bytes]) -> Result<Command, Reply> {
    let Some(spec) = spec_of(args) else {
        return Err(unknown_command(args));
    };
    let argc = args.len() as i64;
    let arity_ok = if spec.arity >= 0 {
        argc == spec.arity
    } else {
        argc >= -spec.arity
    };
    arity(spec.name, arity_ok)?;
    match spec.parse {
        Parse::Session(parse) => parse(spec.name, args),
        Parse::Store(parse) => {
            let c = parse(spec.name, args)?;
            Ok(if c.is_read() {
                Command::Read(c)
            } else {
                Command::Write(c)
            })
        }
    }
}

/// The store command a request names, parsed (`None` for any other).
#[cfg(test)]
fn parse_store(args: &[Bytes]) -> Option<Result<crate::kv::Command, Reply>> {
    let spec = spec_of(args)?;
    match spec.parse {
        Parse::Store(_) => Some(parse_command(args).map(|c| match c {
            Command::Read(c) | Command::Write(c) => c,
            other => unreachable!("a store entry parsed to {other:?}"),
        })),
        Parse::Session(_) => None,
    }
}

/// Redis' error for a count of arguments a command does not take (beyond
/// what the table's arity checks, e.g. an upper bound).
pub(super) fn arity(name: &str, ok: bool) -> Result<(), Reply> {
    if ok {
        Ok(())
    } else {
        Err(Reply::Error(format!(
            "ERR wrong number of arguments for '{name}' command"
        )))
    }
}

/// The [`Kind`] of a raw request, judged by its name: store commands read
/// (a `readonly` entry) or write, `WATCH` reads (it must see the
/// connection's earlier writes applied), `EXEC` writes. Inside `MULTI`
/// commands are only queued, so only `EXEC` has a kind.
pub fn kind_of(req: &Request, in_multi: bool) -> Option<Kind> {
    let spec = spec_of(req)?;
    match spec.name {
        "exec" => return Some(Kind::Write),
        _ if in_multi => return None,
        "watch" => return Some(Kind::Read),
        _ => {}
    }
    match spec.parse {
        Parse::Store(_) if spec.flags.contains(&"readonly") => Some(Kind::Read),
        Parse::Store(_) => Some(Kind::Write),
        Parse::Session(_) => None,
    }
}

/// A `COMMAND` entry as a reply.
pub fn command_entry(c: &CommandSpec) -> Reply {
    let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
    Reply::Array(vec![
        bulk(c.name),
        Reply::Integer(c.arity),
        Reply::Array(c.flags.iter().map(|f| Reply::Simple(f)).collect()),
        Reply::Integer(c.keys.0),
        Reply::Integer(c.keys.1),
        Reply::Integer(c.keys.2),
    ])
}

/// `COMMAND DOCS` of one command: its summary and group, as Redis lays
/// them out (a map; RESP2 clients see a flat array).
pub fn command_docs(c: &CommandSpec) -> (Reply, Reply) {
    let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
    (
        bulk(c.name),
        Reply::Map(vec![
            (bulk("summary"), bulk(c.summary)),
            (bulk("group"), bulk(c.group)),
        ]),
    )
}

/// What `CLUSTER` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterQuery {
    /// `CLUSTER SLOTS`.
    Slots,
    /// `CLUSTER SHARDS`.
    Shards,
    /// `CLUSTER NODES`.
    Nodes,
    /// `CLUSTER MYID`.
    MyId,
    /// `CLUSTER INFO`.
    Info,
    /// `CLUSTER KEYSLOT key`.
    KeySlot(Bytes),
}

/// Redis' wording: `ERR unknown command 'foo', with args beginning with: 'a' 'b' `.
fn unknown_command(args: &[Bytes]) -> Reply {
    let show = |b: &Bytes| {
        let s = String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned();
        s.replace(['\r', '\n'], " ")
    };
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        show(&args[0])
    );
    for a in args[1..].iter().take(16) {
        msg.push_str(&format!("'{}' ", show(a)));
    }
    Reply::Error(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn err(v: &[&str]) -> String {
        match parse_command(&args(v)) {
            Err(Reply::Error(e)) => e,
            other => panic!("{v:?} gave {other:?}"),
        }
    }

    #[test]
    fn parses_the_commands() {
        assert_eq!(parse_command(&args(&["PING"])), Ok(Command::Ping(None)));
        assert_eq!(
            parse_command(&args(&["ping", "x"])),
            Ok(Command::Ping(Some(Bytes::from("x"))))
        );
        assert_eq!(
            parse_command(&args(&["GeT", "k"])),
            Ok(Command::Read(crate::kv::Command::Get {
                key: Bytes::from("k")
            }))
        );
        assert_eq!(
            parse_command(&args(&["SET", "k", "v"])),
            Ok(Command::Write(crate::kv::Command::Set {
                key: Bytes::from("k"),
                value: Bytes::from("v"),
                cond: crate::kv::SetCond::Always,
                get: false,
                ttl: crate::kv::Ttl::Clear,
            }))
        );
        assert_eq!(
            parse_command(&args(&["DEL", "a", "b"])),
            Ok(Command::Write(crate::kv::Command::Del {
                keys: args(&["a", "b"])
            }))
        );
        assert_eq!(
            parse_command(&args(&["INFO", "Raft"])),
            Ok(Command::Info(Some("raft".into())))
        );
        assert_eq!(
            parse_command(&args(&["COMMAND", "DOCS"])),
            Ok(Command::Docs(None))
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(&args(&["get", "k"]), false), Some(Kind::Read));
        assert_eq!(kind_of(&args(&["SET", "k", "v"]), false), Some(Kind::Write));
        assert_eq!(kind_of(&args(&["Del", "k"]), false), Some(Kind::Write));
        assert_eq!(kind_of(&args(&["PING"]), false), None);
        assert_eq!(kind_of(&args(&["INFO"]), false), None);
        assert_eq!(kind_of(&args(&["scan", "0"]), false), Some(Kind::Read));
        assert_eq!(kind_of(&args(&["LOCK.INFO", "l"]), false), Some(Kind::Read));
        assert_eq!(
            kind_of(&args(&["lock.acquire", "l", "o", "1"]), false),
            Some(Kind::Write)
        );
        // WATCH waits for the connection's writes; EXEC is a write.
        assert_eq!(kind_of(&args(&["WATCH", "k"]), false), Some(Kind::Read));
        assert_eq!(kind_of(&args(&["EXEC"]), false), Some(Kind::Write));
        // Inside MULTI commands are only queued.
        assert_eq!(kind_of(&args(&["GET", "k"]), true), None);
        assert_eq!(kind_of(&args(&["INCR", "k"]), true), None);
        assert_eq!(kind_of(&args(&["EXEC"]), true), Some(Kind::Write));
        // Every store command has a kind, read exactly when its entry is
        // `readonly`.
        for c in COMMANDS {
            if let Parse::Store(_) = c.parse {
                let want = if c.flags.contains(&"readonly") {
                    Kind::Read
                } else {
                    Kind::Write
                };
                assert_eq!(kind_of(&args(&[c.name]), false), Some(want), "{}", c.name);
            }
        }
    }

    /// One valid request per store command: each parses, and what it
    /// builds reads exactly when the table says `readonly` (a command
    /// added without an example here fails).
    const STORE_EXAMPLES: &[&[&str]] = &[
        &["GET", "k"],
        &["SET", "k", "v", "EX", "10"],
        &["GETDEL", "k"],
        &["GETEX", "k", "PERSIST"],
        &["MGET", "a", "b"],
        &["MSET", "a", "1", "b", "2"],
        &["MSETNX", "a", "1"],
        &["EXISTS", "a", "b"],
        &["DEL", "a"],
        &["UNLINK", "a"],
        &["INCR", "n"],
        &["DECR", "n"],
        &["INCRBY", "n", "5"],
        &["DECRBY", "n", "5"],
        &["APPEND", "k", "v"],
        &["STRLEN", "k"],
        &["EXPIRE", "k", "10", "NX"],
        &["PEXPIRE", "k", "10"],
        &["EXPIREAT", "k", "2000000000"],
        &["PEXPIREAT", "k", "2000000000000"],
        &["TTL", "k"],
        &["PTTL", "k"],
        &["PERSIST", "k"],
        &["TYPE", "k"],
        &["DBSIZE"],
        &["KEYS", "*"],
        &["SCAN", "0", "MATCH", "a*", "COUNT", "5"],
        &["FLUSHALL", "ASYNC"],
        &["FLUSHDB"],
        &["LOCK.ACQUIRE", "l", "me", "1000"],
        &["LOCK.RELEASE", "l", "me", "1"],
        &["LOCK.EXTEND", "l", "me", "1", "1000"],
        &["LOCK.INFO", "l"],
        &["FENCED.SET", "l", "1", "k", "v"],
    ];

    #[test]
    fn the_table_agrees_with_what_the_store_parsers_build() {
        for c in COMMANDS {
            let Parse::Store(_) = c.parse else { continue };
            let example = STORE_EXAMPLES
                .iter()
                .find(|e| e[0].eq_ignore_ascii_case(c.name))
                .unwrap_or_else(|| panic!("{}: no example in STORE_EXAMPLES", c.name));
            let parsed = parse_store(&args(example))
                .expect("a store command")
                .unwrap_or_else(|e| panic!("{example:?}: {e:?}"));
            let readonly = c.flags.contains(&"readonly");
            assert_eq!(parsed.is_read(), readonly, "{}", c.name);
            assert_eq!(c.flags.contains(&"write"), !readonly, "{}", c.name);
        }
        for name in [
            "multi", "exec", "discard", "watch", "unwatch", "auth", "hello",
        ] {
            assert!(spec(name).is_some(), "{name}");
        }
    }

    #[test]
    fn time_takes_no_argument() {
        assert_eq!(parse_command(&args(&["TIME"])), Ok(Command::Time));
        assert_eq!(
            err(&["time", "now"]),
            "ERR wrong number of arguments for 'time' command"
        );
    }

    /// The reference for users names every command of the table.
    #[test]
    fn docs_commands_md_lists_every_command() {
        let doc = include_str!("../../../docs/commands.md").to_ascii_lowercase();
        for c in COMMANDS {
            assert!(
                doc.contains(&format!("`{}", c.name)),
                "docs/commands.md does not mention `{}`",
                c.name.to_ascii_uppercase()
            );
        }
    }

    /// The table's arity is checked before any parser runs, in Redis'
    /// words, and for a command whose arity is a minimum too.
    #[test]
    fn the_table_arity_is_checked_first() {
        for c in COMMANDS {
            let too_few = if c.arity > 0 {
                c.arity - 1
            } else {
                -c.arity - 1
            };
            if too_few < 1 {
                continue;
            }
            let mut req = vec![c.name];
            req.resize(too_few as usize, "x");
            assert_eq!(
                err(&req),
                format!("ERR wrong number of arguments for '{}' command", c.name),
                "{req:?}"
            );
        }
    }

    fn cmd(args: &[&str]) -> Command {
        let req: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        parse_command(&req).expect("a valid command")
    }

    #[test]
    fn hello_auth_client_and_select_like_redis() {
        assert!(matches!(
            cmd(&["HELLO", "3"]),
            Command::Hello {
                protocol: Some(Protocol::Resp3),
                name: None,
                auth: None,
            }
        ));
        assert!(matches!(
            cmd(&["hello"]),
            Command::Hello {
                protocol: None,
                name: None,
                auth: None,
            }
        ));
        assert!(matches!(
            cmd(&["HELLO", "2", "AUTH", "default", "pw", "SETNAME", "me"]),
            Command::Hello { protocol: Some(Protocol::Resp2), name: Some(n), auth: Some(_) } if n == "me"
        ));
        assert_eq!(err(&["HELLO", "4"]), "NOPROTO unsupported protocol version");
        assert_eq!(
            err(&["HELLO", "x"]),
            "ERR Protocol version is not an integer or out of range"
        );
        // Who may AUTH is decided when it runs (crate::acl).
        assert!(matches!(
            cmd(&["HELLO", "3", "AUTH", "bob", "pw"]),
            Command::Hello { auth: Some((u, _)), .. } if u == "bob"
        ));
        assert_eq!(
            err(&["HELLO", "3", "BOGUS"]),
            "ERR Syntax error in HELLO option 'BOGUS'"
        );
        assert!(matches!(
            cmd(&["AUTH", "pw"]),
            Command::Auth { user: None, password } if password == "pw"
        ));
        assert!(matches!(
            cmd(&["AUTH", "default", "pw"]),
            Command::Auth { user: Some(u), .. } if u == "default"
        ));
        assert!(matches!(
            cmd(&["CLIENT", "SETNAME", "a-b"]),
            Command::ClientSetName(_)
        ));
        assert_eq!(
            err(&["CLIENT", "SETNAME", "a b"]),
            "ERR Client names cannot contain spaces, newlines or special characters."
        );
        assert!(matches!(
            cmd(&["client", "setinfo", "lib-name", "redis-py"]),
            Command::Ok
        ));
        assert_eq!(
            err(&["CLIENT", "KILL"]),
            "ERR unknown subcommand 'KILL'. Try CLIENT HELP."
        );
        assert!(matches!(cmd(&["SELECT", "0"]), Command::Select));
        assert_eq!(err(&["SELECT", "1"]), "ERR DB index is out of range");
        assert!(matches!(cmd(&["RESET"]), Command::Reset));
        assert!(matches!(cmd(&["CONFIG", "GET", "save"]), Command::ConfigGet(p) if p.len() == 1));
        assert!(err(&["CONFIG", "SET", "x", "1"]).starts_with("ERR Unknown option"));
        assert!(crate::client::glob_match(b"*", b"save"));
        assert!(crate::client::glob_match(b"max*", b"maxclients"));
        assert!(crate::client::glob_match(b"s?ve", b"SAVE"));
        assert!(!crate::client::glob_match(b"max*s", b"maxmemory"));
        assert!(!crate::client::glob_match(b"", b"x"));
    }

    #[test]
    fn errors_in_redis_words() {
        assert_eq!(
            err(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err(&["set", "k"]),
            "ERR wrong number of arguments for 'set' command"
        );
        assert_eq!(
            err(&["DEL"]),
            "ERR wrong number of arguments for 'del' command"
        );
        assert_eq!(err(&["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
        assert_eq!(
            err(&["exec", "x"]),
            "ERR wrong number of arguments for 'exec' command"
        );
        assert_eq!(
            err(&["WATCH"]),
            "ERR wrong number of arguments for 'watch' command"
        );
        assert_eq!(
            err(&["FOO", "a", "b"]),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            err(&["x\r\ny"]),
            "ERR unknown command 'x  y', with args beginning with: "
        );
    }

    /// `COMMAND DOCS` has a real entry for every command: a summary and a
    /// Redis group, and `COMMAND DOCS name` only that one.
    #[test]
    fn command_docs_cover_every_command() {
        for c in COMMANDS {
            assert!(
                !c.summary.is_empty() && c.summary.ends_with('.'),
                "{}",
                c.name
            );
            assert!(
                [
                    "string",
                    "generic",
                    "server",
                    "transactions",
                    "connection",
                    "cluster",
                    "raft"
                ]
                .contains(&c.group),
                "{}",
                c.name
            );
            let (name, doc) = command_docs(c);
            assert_eq!(name, Reply::Bulk(Bytes::copy_from_slice(c.name.as_bytes())));
            assert!(matches!(doc, Reply::Map(ref m) if m.len() == 2));
        }
        assert_eq!(
            parse_command(&[
                Bytes::from_static(b"command"),
                Bytes::from_static(b"DOCS"),
                Bytes::from_static(b"get")
            ]),
            Ok(Command::Docs(Some(vec![Bytes::from_static(b"get")])))
        );
    }
}
