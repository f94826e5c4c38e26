//! Parsers of the connection and server commands: `PING`, `HELLO`,
//! `AUTH`, `CLIENT`, `CONFIG`, `COMMAND`, `INFO`, the transaction
//! commands. Each is one entry of the table in [`super::table`]; the
//! table's arity is checked before any of them runs.

use bytes::Bytes;

use super::{arity, Command};
use crate::resp::{self, Protocol, Reply};

/// `PING`.
pub fn parse_ping(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc <= 2)?;
    Ok(Command::Ping(args.get(1).cloned()))
}

/// `ECHO`.
pub fn parse_echo(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Echo(args[1].clone()))
}

/// `MULTI`.
pub fn parse_multi(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Multi)
}

/// `EXEC`.
pub fn parse_exec(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Exec)
}

/// `DISCARD`.
pub fn parse_discard(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Discard)
}

/// `WATCH`.
pub fn parse_watch(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Watch(args[1..].to_vec()))
}

/// `UNWATCH`.
pub fn parse_unwatch(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Unwatch)
}

/// `INFO`.
pub fn parse_info(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc <= 2)?;
    Ok(Command::Info(
        args.get(1)
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()),
    ))
}

/// `AUTH`.
pub fn parse_auth(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc == 2 || argc == 3)?;
    Ok(Command::Auth {
        user: (argc == 3).then(|| args[1].clone()),
        password: args[argc - 1].clone(),
    })
}

/// `CLIENT`.
pub fn parse_client(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let sub_arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reply::Error(format!(
                "ERR wrong number of arguments for 'client|{sub}' command"
            )))
        }
    };
    Ok(match sub.as_str() {
        "setname" => {
            sub_arity(argc == 3)?;
            Command::ClientSetName(valid_client_name(&args[2])?)
        }
        "getname" => {
            sub_arity(argc == 2)?;
            Command::ClientGetName
        }
        "id" => {
            sub_arity(argc == 2)?;
            Command::ClientId
        }
        "info" => {
            sub_arity(argc == 2)?;
            Command::ClientInfo
        }
        "list" => Command::ClientList,
        // Client libraries announce themselves (redis-py, go-redis).
        "setinfo" => {
            sub_arity(argc == 4)?;
            Command::Ok
        }
        _ => {
            return Err(Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )))
        }
    })
}

/// `SELECT`.
pub fn parse_select(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(match resp::parse_i64(&args[1]) {
        Some(0) => Command::Select,
        Some(_) => return Err(Reply::Error("ERR DB index is out of range".into())),
        None => {
            return Err(Reply::Error(
                "ERR value is not an integer or out of range".into(),
            ))
        }
    })
}

/// `RESET`.
pub fn parse_reset(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Reset)
}

/// `READONLY / READWRITE`.
pub fn parse_readonly(name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::ReadMode(name == "readonly"))
}

/// `CONFIG`.
pub fn parse_config(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    Ok(match sub.as_str() {
        "get" => {
            if argc < 3 {
                return Err(Reply::Error(
                    "ERR wrong number of arguments for 'config|get' command".into(),
                ));
            }
            Command::ConfigGet(args[2..].to_vec())
        }
        "resetstat" => Command::Ok,
        "set" => {
            return Err(Reply::Error(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                args.get(2)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_default()
            )))
        }
        _ => {
            return Err(Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                String::from_utf8_lossy(&args[1])
            )))
        }
    })
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`, with
/// Redis' errors.
pub fn parse_hello(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let args = &args[1..];
    let mut protocol = None;
    let mut name = None;
    let mut auth = None;
    let mut rest = args;
    if let Some(v) = rest.first() {
        protocol = match resp::parse_i64(v) {
            Some(2) => Some(Protocol::Resp2),
            Some(3) => Some(Protocol::Resp3),
            Some(_) => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
            None => {
                return Err(Reply::Error(
                    "ERR Protocol version is not an integer or out of range".into(),
                ))
            }
        };
        rest = &rest[1..];
    }
    while let Some(opt) = rest.first() {
        if opt.eq_ignore_ascii_case(b"auth") && rest.len() >= 3 {
            auth = Some((rest[1].clone(), rest[2].clone()));
            rest = &rest[3..];
        } else if opt.eq_ignore_ascii_case(b"setname") && rest.len() >= 2 {
            name = Some(valid_client_name(&rest[1])?);
            rest = &rest[2..];
        } else {
            return Err(Reply::Error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    Ok(Command::Hello {
        protocol,
        name,
        auth,
    })
}

/// A client name: printable ASCII without spaces, at most 256 bytes.
fn valid_client_name(name: &Bytes) -> Result<Bytes, Reply> {
    if name.len() > 256 || name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(Reply::Error(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        ));
    }
    Ok(name.clone())
}

/// `TIME`: the answering member's own clock, no Raft round (expiry uses
/// the leader's clock stamped into the log, not this).
pub fn parse_time(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Time)
}

/// `QUIT`: any arguments are ignored, as Redis does.
pub fn parse_quit(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Quit)
}

/// `COMMAND [COUNT | INFO name ... | DOCS [name ...]]`.
pub fn parse_command_command(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    let Some(sub) = args
        .get(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
    else {
        return Ok(Command::Commands(None));
    };
    Ok(match sub.as_str() {
        "count" => {
            arity(name, argc == 2)?;
            Command::CountCommands
        }
        "info" => Command::Commands(Some(args[2..].to_vec())),
        "docs" if argc == 2 => Command::Docs(None),
        "docs" => Command::Docs(Some(args[2..].to_vec())),
        _ => {
            return Err(Reply::Error(format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(&args[1])
            )))
        }
    })
}
