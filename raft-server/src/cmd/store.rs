//! Parsers of the store's commands as Redis clients send them: options
//! and values checked with Redis' error replies, and turned into
//! [`kv::Command`]s. Each is one entry of the table in [`super::table`],
//! whose arity is checked before the parser runs. What they do is in
//! `kv`; docs/commands.md is the reference for users.

use bytes::Bytes;

use super::arity;
use crate::kv::{self, Command, ExpireCond, SetCond, Ttl, MAX_TTL_MS};
use crate::resp::Reply;

/// `SCAN COUNT` above this is taken as this: a bound on the work (and the
/// reply) of one call; COUNT is a hint in Redis too.
pub const MAX_SCAN_COUNT: u64 = 100_000;
/// `SCAN` without `COUNT`, as in Redis.
pub const DEFAULT_SCAN_COUNT: u64 = 10;

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

fn err(msg: impl Into<String>) -> Reply {
    Reply::Error(msg.into())
}

fn syntax() -> Reply {
    err("ERR syntax error")
}

fn int(arg: &[u8]) -> Result<i64, Reply> {
    kv::parse_i64(arg).ok_or_else(|| err(NOT_INTEGER))
}

/// A token or lease: a non-negative integer.
fn unsigned(arg: &[u8]) -> Result<u64, Reply> {
    int(arg).and_then(|v| u64::try_from(v).map_err(|_| err(NOT_INTEGER)))
}

fn invalid_expire(name: &str) -> Reply {
    err(format!("ERR invalid expire time in '{name}' command"))
}

/// The TTL of `EX`/`PX`/`EXAT`/`PXAT` (and `EXPIRE`'s family when
/// `allow_past`): `v` seconds (`scale` 1000) or ms. A TTL or time at or
/// below zero is an error for `SET`/`GETEX` and a deadline in the past for
/// `EXPIRE` (Redis deletes the key); it is sent as the deadline 1 ms after
/// the epoch, which every store clock has passed.
fn ttl_arg(
    name: &str,
    arg: &[u8],
    scale: i64,
    absolute: bool,
    allow_past: bool,
) -> Result<Ttl, Reply> {
    let v = int(arg)?;
    if v <= 0 {
        return if allow_past {
            Ok(Ttl::At(1))
        } else {
            Err(invalid_expire(name))
        };
    }
    let ms = v.checked_mul(scale).ok_or_else(|| invalid_expire(name))? as u64;
    if ms > MAX_TTL_MS {
        return Err(invalid_expire(name));
    }
    Ok(if absolute { Ttl::At(ms) } else { Ttl::In(ms) })
}

/// `GET`.
pub fn parse_get(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Get {
        key: args[1].clone(),
    })
}

/// `SET`.
pub fn parse_set(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    set_args(args)
}

/// `GETDEL`.
pub fn parse_getdel(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::GetDel {
        key: args[1].clone(),
    })
}

/// `GETEX`.
pub fn parse_getex(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let ttl = match &args[2..] {
        [] => Ttl::Keep,
        [p] if p.eq_ignore_ascii_case(b"persist") => Ttl::Clear,
        [opt, v] => {
            let (scale, absolute) = ttl_option(opt).ok_or_else(syntax)?;
            ttl_arg("getex", v, scale, absolute, false)?
        }
        _ => return Err(syntax()),
    };
    Ok(Command::GetEx {
        key: args[1].clone(),
        ttl,
    })
}

/// `MGET`.
pub fn parse_mget(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::MGet {
        keys: args[1..].to_vec(),
    })
}

/// `MSET`.
pub fn parse_mset(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc >= 3 && argc % 2 == 1)?;
    Ok(Command::MSet { pairs: pairs(args) })
}

/// `MSETNX`.
pub fn parse_msetnx(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let argc = args.len();
    arity(name, argc >= 3 && argc % 2 == 1)?;
    Ok(Command::MSetNx { pairs: pairs(args) })
}

/// `EXISTS`.
pub fn parse_exists(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Exists {
        keys: args[1..].to_vec(),
    })
}

/// `DEL / UNLINK`.
pub fn parse_del(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Del {
        keys: args[1..].to_vec(),
    })
}

/// `INCR / DECR`.
pub fn parse_incr(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let by = if name == "incr" { 1 } else { -1 };
    Ok(Command::IncrBy {
        key: args[1].clone(),
        by,
    })
}

/// `INCRBY / DECRBY`.
pub fn parse_incrby(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let v = int(&args[2])?;
    let by = if name == "incrby" {
        v
    } else {
        v.checked_neg()
            .ok_or_else(|| err("ERR decrement would overflow"))?
    };
    Ok(Command::IncrBy {
        key: args[1].clone(),
        by,
    })
}

/// `APPEND`.
pub fn parse_append(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Append {
        key: args[1].clone(),
        value: args[2].clone(),
    })
}

/// `STRLEN`.
pub fn parse_strlen(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Strlen {
        key: args[1].clone(),
    })
}

/// `EXPIRE / PEXPIRE / EXPIREAT / PEXPIREAT`.
pub fn parse_expire(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let scale = if name.starts_with('p') { 1 } else { 1000 };
    let ttl = ttl_arg(name, &args[2], scale, name.ends_with("at"), true)?;
    let cond = expire_cond(&args[3..])?;
    Ok(Command::Expire {
        key: args[1].clone(),
        ttl,
        cond,
    })
}

/// `TTL / PTTL`.
pub fn parse_ttl(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::TimeToLive {
        key: args[1].clone(),
        ms: name == "pttl",
    })
}

/// `PERSIST`.
pub fn parse_persist(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Persist {
        key: args[1].clone(),
    })
}

/// `TYPE`.
pub fn parse_type(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Type {
        key: args[1].clone(),
    })
}

/// `DBSIZE`.
pub fn parse_dbsize(_name: &str, _args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::DbSize)
}

/// `KEYS`.
pub fn parse_keys(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::Keys {
        pattern: args[1].clone(),
    })
}

/// `SCAN`.
pub fn parse_scan(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    scan_args(args)
}

/// `FLUSHALL / FLUSHDB`.
pub fn parse_flushall(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    match &args[1..] {
        [] => {}
        [m] if m.eq_ignore_ascii_case(b"sync") || m.eq_ignore_ascii_case(b"async") => {}
        _ => return Err(syntax()),
    }
    Ok(Command::FlushAll)
}

/// `LOCK.ACQUIRE`.
pub fn parse_lock_acquire(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::LockAcquire {
        name: args[1].clone(),
        owner: args[2].clone(),
        ttl_ms: lease(name, &args[3])?,
    })
}

/// `LOCK.RELEASE`.
pub fn parse_lock_release(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::LockRelease {
        name: args[1].clone(),
        owner: args[2].clone(),
        token: unsigned(&args[3])?,
    })
}

/// `LOCK.EXTEND`.
pub fn parse_lock_extend(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::LockExtend {
        name: args[1].clone(),
        owner: args[2].clone(),
        token: unsigned(&args[3])?,
        ttl_ms: lease(name, &args[4])?,
    })
}

/// `LOCK.INFO`.
pub fn parse_lock_info(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::LockInfo {
        name: args[1].clone(),
    })
}

/// `FENCED.SET`.
pub fn parse_fenced_set(_name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    Ok(Command::FencedSet {
        lock: args[1].clone(),
        token: unsigned(&args[2])?,
        key: args[3].clone(),
        value: args[4].clone(),
    })
}

/// The `key value [key value ...]` pairs of `MSET`/`MSETNX`.
fn pairs(args: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    args[1..]
        .chunks_exact(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

/// A lock lease in ms: a positive integer.
fn lease(name: &str, arg: &[u8]) -> Result<u64, Reply> {
    match int(arg)? {
        v if v <= 0 || v as u64 > MAX_TTL_MS => Err(invalid_expire(name)),
        v => Ok(v as u64),
    }
}

/// `EX`, `PX`, `EXAT`, `PXAT`: (scale to ms, absolute).
fn ttl_option(opt: &[u8]) -> Option<(i64, bool)> {
    let o = opt.to_ascii_lowercase();
    match o.as_slice() {
        b"ex" => Some((1000, false)),
        b"px" => Some((1, false)),
        b"exat" => Some((1000, true)),
        b"pxat" => Some((1, true)),
        _ => None,
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`, with
/// Redis' checks: one condition, one expiry, a value after each of `EX`
/// and friends.
fn set_args(args: &[Bytes]) -> Result<Command, Reply> {
    let mut cond = SetCond::Always;
    let mut get = false;
    let mut ttl = Ttl::Clear;
    let mut ttl_given = false;
    let mut i = 3;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        match opt.as_slice() {
            b"nx" if cond == SetCond::Always => cond = SetCond::Nx,
            b"xx" if cond == SetCond::Always => cond = SetCond::Xx,
            b"get" if !get => get = true,
            b"keepttl" if !ttl_given => {
                ttl = Ttl::Keep;
                ttl_given = true;
            }
            _ => match ttl_option(&opt) {
                Some((scale, absolute)) if !ttl_given && i + 1 < args.len() => {
                    ttl = ttl_arg("set", &args[i + 1], scale, absolute, false)?;
                    ttl_given = true;
                    i += 1;
                }
                _ => return Err(syntax()),
            },
        }
        i += 1;
    }
    Ok(Command::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        cond,
        get,
        ttl,
    })
}

/// `EXPIRE`'s `NX|XX|GT|LT`, with Redis' errors.
fn expire_cond(opts: &[Bytes]) -> Result<ExpireCond, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in opts {
        match o.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => {
                return Err(err(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(o)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireCond::Nx,
        (_, _, true, _) => ExpireCond::Gt,
        (_, _, _, true) => ExpireCond::Lt,
        (_, true, ..) => ExpireCond::Xx,
        _ => ExpireCond::Always,
    })
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE string]`.
fn scan_args(args: &[Bytes]) -> Result<Command, Reply> {
    let cursor = std::str::from_utf8(&args[1])
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| err("ERR invalid cursor"))?;
    let mut pattern = None;
    let mut count = DEFAULT_SCAN_COUNT;
    let mut rest = &args[2..];
    while let [opt, v, tail @ ..] = rest {
        match opt.to_ascii_lowercase().as_slice() {
            b"match" => pattern = Some(v.clone()),
            b"count" => {
                let n = int(v)?;
                if n < 1 {
                    return Err(syntax());
                }
                count = (n as u64).min(MAX_SCAN_COUNT);
            }
            // Every key is a string.
            b"type" if v.eq_ignore_ascii_case(b"string") => {}
            _ => return Err(syntax()),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(syntax());
    }
    // `*` matches everything: skip the matching.
    if pattern.as_ref().is_some_and(|p| p.as_ref() == b"*") {
        pattern = None;
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Command, String> {
        let args: Vec<Bytes> = v
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        match super::super::parse_store(&args).expect("a store command") {
            Ok(c) => Ok(c),
            Err(Reply::Error(e)) => Err(e),
            Err(r) => panic!("{r:?}"),
        }
    }

    fn e(v: &[&str]) -> String {
        p(v).expect_err("an error")
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn not_a_store_command() {
        assert!(super::super::parse_store(&[b("PING")]).is_none());
        assert!(super::super::parse_store(&[b("LOCK.STEAL")]).is_none());
    }

    #[test]
    fn set_and_its_options_like_redis() {
        assert_eq!(
            p(&["SET", "k", "v", "nx", "GET", "PX", "1500"]),
            Ok(Command::Set {
                key: b("k"),
                value: b("v"),
                cond: SetCond::Nx,
                get: true,
                ttl: Ttl::In(1500)
            })
        );
        assert!(matches!(
            p(&["set", "k", "v", "EX", "2", "XX"]),
            Ok(Command::Set {
                cond: SetCond::Xx,
                ttl: Ttl::In(2000),
                ..
            })
        ));
        assert!(matches!(
            p(&["set", "k", "v", "exat", "1700000000"]),
            Ok(Command::Set {
                ttl: Ttl::At(1_700_000_000_000),
                ..
            })
        ));
        assert!(matches!(
            p(&["set", "k", "v", "KEEPTTL"]),
            Ok(Command::Set { ttl: Ttl::Keep, .. })
        ));
        for bad in [
            &["SET", "k", "v", "NX", "XX"][..],
            &["SET", "k", "v", "EX", "1", "PX", "1"],
            &["SET", "k", "v", "EX", "1", "KEEPTTL"],
            &["SET", "k", "v", "EX"],
            &["SET", "k", "v", "BOGUS"],
            &["SET", "k", "v", "GET", "GET"],
        ] {
            assert_eq!(e(bad), "ERR syntax error", "{bad:?}");
        }
        assert_eq!(e(&["SET", "k", "v", "EX", "x"]), NOT_INTEGER);
        assert_eq!(
            e(&["SET", "k", "v", "EX", "0"]),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            e(&["SET", "k", "v", "PX", "-5"]),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            e(&["SET", "k", "v", "EX", "9223372036854775807"]),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            e(&["set", "k"]),
            "ERR wrong number of arguments for 'set' command"
        );
    }

    #[test]
    fn the_other_commands_and_their_errors() {
        assert_eq!(
            p(&["incr", "n"]),
            Ok(Command::IncrBy { key: b("n"), by: 1 })
        );
        assert_eq!(
            p(&["DECRBY", "n", "7"]),
            Ok(Command::IncrBy {
                key: b("n"),
                by: -7
            })
        );
        assert_eq!(e(&["INCRBY", "n", "1.5"]), NOT_INTEGER);
        assert_eq!(
            e(&["DECRBY", "n", "-9223372036854775808"]),
            "ERR decrement would overflow"
        );
        assert_eq!(
            e(&["incr"]),
            "ERR wrong number of arguments for 'incr' command"
        );
        assert_eq!(
            e(&["mset", "a", "1", "b"]),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(
            p(&["MSET", "a", "1", "b", "2"]),
            Ok(Command::MSet {
                pairs: vec![(b("a"), b("1")), (b("b"), b("2"))]
            })
        );
        assert_eq!(
            p(&["UNLINK", "a", "b"]),
            Ok(Command::Del {
                keys: vec![b("a"), b("b")]
            })
        );
        assert_eq!(
            p(&["GETEX", "k", "PERSIST"]),
            Ok(Command::GetEx {
                key: b("k"),
                ttl: Ttl::Clear
            })
        );
        assert_eq!(
            p(&["GETEX", "k"]),
            Ok(Command::GetEx {
                key: b("k"),
                ttl: Ttl::Keep
            })
        );
        assert_eq!(e(&["GETEX", "k", "EX"]), "ERR syntax error");
        assert_eq!(
            e(&["GETEX", "k", "EX", "0"]),
            "ERR invalid expire time in 'getex' command"
        );
        // EXPIRE: a TTL at or below 0 is a deadline in the past.
        assert_eq!(
            p(&["EXPIRE", "k", "-1"]),
            Ok(Command::Expire {
                key: b("k"),
                ttl: Ttl::At(1),
                cond: ExpireCond::Always
            })
        );
        assert_eq!(
            p(&["pexpireat", "k", "1700000000123", "gt"]),
            Ok(Command::Expire {
                key: b("k"),
                ttl: Ttl::At(1_700_000_000_123),
                cond: ExpireCond::Gt
            })
        );
        assert_eq!(
            e(&["EXPIRE", "k", "10", "NX", "XX"]),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            e(&["EXPIRE", "k", "10", "GT", "LT"]),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(e(&["EXPIRE", "k", "10", "ZZ"]), "ERR Unsupported option ZZ");
        assert_eq!(
            e(&["EXPIRE", "k", "9223372036854775807"]),
            "ERR invalid expire time in 'expire' command"
        );
        assert_eq!(
            p(&["PTTL", "k"]),
            Ok(Command::TimeToLive {
                key: b("k"),
                ms: true
            })
        );
        assert_eq!(p(&["dbsize"]), Ok(Command::DbSize));
        assert_eq!(
            e(&["dbsize", "x"]),
            "ERR wrong number of arguments for 'dbsize' command"
        );
        assert_eq!(p(&["FLUSHALL", "async"]), Ok(Command::FlushAll));
        assert_eq!(e(&["FLUSHALL", "now"]), "ERR syntax error");
    }

    #[test]
    fn scan_arguments() {
        assert_eq!(
            p(&["SCAN", "0"]),
            Ok(Command::Scan {
                cursor: 0,
                pattern: None,
                count: 10
            })
        );
        assert_eq!(
            p(&[
                "scan",
                "18446744073709551615",
                "MATCH",
                "a*",
                "COUNT",
                "1000000000"
            ]),
            Ok(Command::Scan {
                cursor: u64::MAX,
                pattern: Some(b("a*")),
                count: MAX_SCAN_COUNT
            })
        );
        assert_eq!(
            p(&["SCAN", "5", "match", "*", "TYPE", "string"]),
            Ok(Command::Scan {
                cursor: 5,
                pattern: None,
                count: 10
            })
        );
        assert_eq!(e(&["SCAN", "x"]), "ERR invalid cursor");
        assert_eq!(e(&["SCAN", "-1"]), "ERR invalid cursor");
        assert_eq!(e(&["SCAN", "0", "COUNT", "0"]), "ERR syntax error");
        assert_eq!(e(&["SCAN", "0", "COUNT"]), "ERR syntax error");
        assert_eq!(e(&["SCAN", "0", "TYPE", "list"]), "ERR syntax error");
    }

    #[test]
    fn lock_commands() {
        assert_eq!(
            p(&["LOCK.ACQUIRE", "l", "me", "5000"]),
            Ok(Command::LockAcquire {
                name: b("l"),
                owner: b("me"),
                ttl_ms: 5000
            })
        );
        assert_eq!(
            e(&["LOCK.ACQUIRE", "l", "me", "0"]),
            "ERR invalid expire time in 'lock.acquire' command"
        );
        assert_eq!(e(&["lock.release", "l", "me", "-3"]), NOT_INTEGER);
        assert_eq!(
            p(&["FENCED.SET", "l", "42", "k", "v"]),
            Ok(Command::FencedSet {
                lock: b("l"),
                token: 42,
                key: b("k"),
                value: b("v")
            })
        );
        assert_eq!(
            e(&["LOCK.EXTEND", "l", "me", "1"]),
            "ERR wrong number of arguments for 'lock.extend' command"
        );
    }
}
