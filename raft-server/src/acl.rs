//! Who may run what: client users, their passwords, and the command
//! categories each may use, in Redis' ACL conventions.
//!
//! Data clients and operators are different people. A user who may read
//! and write data must not be able to change the cluster: `RAFT.ADD` of
//! three members that do not exist took a quorum away for good. So every
//! command belongs to categories, as in Redis (`@read`, `@write`,
//! `@admin`, `@dangerous`, ...; `@raft` for this server's own commands),
//! and each user is allowed a set of them.
//!
//! The users file (`users_file` in the cluster file, mode 0600 like the
//! secret) takes a subset of Redis' ACL file syntax, one user a line:
//!
//! ```text
//! user admin on >change-me +@all
//! user app on >app-password +@all -@admin -@dangerous
//! user default off
//! ```
//!
//! - `on` / `off`: the user may (not) authenticate;
//! - `>password` adds a password, `#<sha256 hex>` a password given by its
//!   SHA-256 digest (as `ACL GETUSER` shows it), `nopass` lets any
//!   password in;
//! - `+@category`, `-@category`, `+command`, `-command`, `allcommands`
//!   (`+@all`), `nocommands` (`-@all`), applied in order, later rules
//!   winning, as Redis does;
//! - `~*`, `allkeys`, `&*`, `allchannels`, `resetkeys`... are accepted
//!   only in their "everything" forms: raft-node has no per-key rules,
//!   and a rule it cannot enforce is refused rather than ignored.
//!
//! The `default` user is the one a connection starts as. Without a users
//! file it is `default on nopass +@all` (or `>password` from
//! `client_password_file`); with one that does not name `default`, it is
//! off, and every connection must `AUTH` first.
//!
//! **Protected mode** (Redis'): while the default user takes no password,
//! only loopback clients are served; any other gets one line saying why
//! and is closed. `make cluster` keeps working, and a member put on a
//! real network by mistake does not hand it the cluster.
//!
//! **Failed AUTH attempts are rate-limited** per connection (closed after
//! [`MAX_AUTH_FAILURES_PER_CONNECTION`]) and per source address (a token
//! bucket of [`AUTH_BURST`] failures refilled at [`AUTH_REFILL_PER_SEC`]
//! a second; an attempt beyond it is refused without being checked).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::cmd::COMMANDS;

/// Users one file may define.
pub const MAX_USERS: usize = 256;
/// Bytes of a users file.
pub const MAX_USERS_FILE_LEN: u64 = 1 << 20;
/// Failed AUTH attempts after which a connection is closed.
pub const MAX_AUTH_FAILURES_PER_CONNECTION: u32 = 5;
/// Failed AUTH attempts one source address may make at once...
pub const AUTH_BURST: f64 = 20.0;
/// ...and how many more it gets each second.
pub const AUTH_REFILL_PER_SEC: f64 = 2.0;
/// Source addresses the limiter remembers; past that the longest quiet
/// one is forgotten (an attacker with many addresses gains nothing a
/// fresh address would not give it).
pub const MAX_TRACKED_ADDRESSES: usize = 4096;

/// A command category, Redis' `@name`: a bit in a [`Categories`] mask.
pub type Categories = u32;

/// Reads data.
pub const READ: Categories = 1 << 0;
/// Writes data.
pub const WRITE: Categories = 1 << 1;
/// Works on keys whatever their type.
pub const KEYSPACE: Categories = 1 << 2;
/// Works on strings.
pub const STRING: Categories = 1 << 3;
/// O(1) or O(log n).
pub const FAST: Categories = 1 << 4;
/// Not fast.
pub const SLOW: Categories = 1 << 5;
/// Administration: changes the cluster or its configuration.
pub const ADMIN: Categories = 1 << 6;
/// Can wipe data, stall the server or reveal other clients.
pub const DANGEROUS: Categories = 1 << 7;
/// The connection itself (`AUTH`, `HELLO`, `CLIENT SETNAME`, ...).
pub const CONNECTION: Categories = 1 << 8;
/// `MULTI`, `EXEC`, `WATCH`, ...
pub const TRANSACTION: Categories = 1 << 9;
/// raft-node's own `RAFT.*` commands.
pub const RAFT: Categories = 1 << 10;
/// Every category.
pub const ALL: Categories = (1 << 11) - 1;

/// Category names as the file and errors spell them.
pub const CATEGORY_NAMES: &[(&str, Categories)] = &[
    ("read", READ),
    ("write", WRITE),
    ("keyspace", KEYSPACE),
    ("string", STRING),
    ("fast", FAST),
    ("slow", SLOW),
    ("admin", ADMIN),
    ("dangerous", DANGEROUS),
    ("connection", CONNECTION),
    ("transaction", TRANSACTION),
    ("raft", RAFT),
    ("all", ALL),
];

/// The categories of `name` (lower case) with its first argument `sub`
/// (for commands whose subcommands differ, as in Redis: `CLIENT LIST` is
/// `@admin @dangerous`, `CLIENT SETNAME` is not). An unknown name has
/// none: only `+@all` (or naming it) allows it, and it is refused as
/// unknown anyway.
pub fn categories(name: &str, sub: Option<&[u8]>) -> Categories {
    let Some(spec) = crate::cmd::spec(name) else {
        return 0;
    };
    // RAFT.MEMBERS carries COMMAND's `admin` flag (it is about the
    // cluster) but changes nothing, and cluster clients read the same
    // through CLUSTER SLOTS: not @admin or @dangerous.
    let changes_nothing = name == "raft.members";
    let mut cats = 0;
    for flag in spec.flags {
        cats |= match *flag {
            "readonly" => READ,
            "write" => WRITE,
            "fast" => FAST,
            "admin" if !changes_nothing => ADMIN | DANGEROUS,
            _ => 0,
        };
    }
    if cats & FAST == 0 {
        cats |= SLOW;
    }
    cats |= match spec.group {
        "string" => STRING,
        "generic" => KEYSPACE,
        "transactions" => TRANSACTION,
        "connection" => CONNECTION,
        "raft" => RAFT,
        _ => 0,
    };
    // Redis' own assignments where the flags do not say it.
    cats |= match name {
        // Whole-store scans stall the loop; wipes lose everything; INFO
        // and CONFIG reveal the deployment.
        "keys" | "info" => DANGEROUS,
        "flushall" | "flushdb" => DANGEROUS | KEYSPACE,
        "config" => ADMIN | DANGEROUS,
        "client" => {
            let sub = sub.map(|s| s.to_ascii_lowercase());
            match sub.as_deref() {
                Some(b"list") | Some(b"kill") => ADMIN | DANGEROUS,
                _ => CONNECTION,
            }
        }
        _ => 0,
    };
    cats
}

/// One rule of a user, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Allow(Categories),
    Deny(Categories),
    AllowCommand(String),
    DenyCommand(String),
}

/// A user as the users file defines it.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The name given to `AUTH`.
    pub name: String,
    /// `on`: may authenticate.
    pub enabled: bool,
    /// `nopass`: any password.
    nopass: bool,
    /// SHA-256 digests of the passwords.
    passwords: Vec<[u8; 32]>,
    rules: Vec<Rule>,
    /// The rules allow every command (the common admin case; checked
    /// once at load so that the hot path does no lookup).
    unrestricted: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("nopass", &self.nopass)
            .field("passwords", &self.passwords.len())
            .field("rules", &self.rules)
            .finish()
    }
}

impl User {
    fn new(name: &str) -> User {
        User {
            name: name.to_string(),
            enabled: false,
            nopass: false,
            passwords: Vec::new(),
            rules: Vec::new(),
            unrestricted: false,
        }
    }

    /// `on nopass +@all` (or one password): the default user without a
    /// users file.
    fn superuser(name: &str, password: Option<&[u8]>) -> User {
        let mut u = User::new(name);
        u.enabled = true;
        match password {
            Some(p) => u.passwords.push(digest(p)),
            None => u.nopass = true,
        }
        u.rules.push(Rule::Allow(ALL));
        u.unrestricted = true;
        u
    }

    /// Whether the rules allow `name` (lower case) with categories `cats`:
    /// the last rule that matches decides; none matching denies.
    fn allows(&self, name: &str, cats: Categories) -> bool {
        if self.unrestricted {
            return true;
        }
        let mut allowed = false;
        for rule in &self.rules {
            match rule {
                Rule::Allow(c) if *c == ALL || cats & c != 0 => allowed = true,
                Rule::Deny(c) if *c == ALL || cats & c != 0 => allowed = false,
                Rule::AllowCommand(n) if n == name => allowed = true,
                Rule::DenyCommand(n) if n == name => allowed = false,
                _ => {}
            }
        }
        allowed
    }

    /// Whether the user may authenticate with `password`. Every stored
    /// digest is compared in full, in constant time.
    fn accepts(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        let given = digest(password);
        let mut ok = self.nopass;
        for p in &self.passwords {
            ok |= constant_time_eq(p, &given);
        }
        ok
    }
}

fn digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user's place in [`Acl::users`], carried by each connection.
pub type UserId = usize;

/// Every user, and which one a connection starts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    users: Vec<User>,
    /// `default`'s place; always present (maybe `off`).
    default: UserId,
    /// Redis' `protected-mode` (cluster file `protected_mode`, default
    /// true); in force only while the default user takes no password.
    protected_mode: bool,
}

/// Why a login failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// `AUTH password` while the default user needs none (Redis' error).
    NoPasswordConfigured,
    /// Wrong user or password, or the user is off.
    WrongPass,
}

impl Acl {
    /// The ACL without a users file: the default user takes `password`
    /// (from `client_password_file`) or, with none, anything.
    pub fn single(password: Option<&[u8]>, protected_mode: bool) -> Acl {
        Acl {
            users: vec![User::superuser("default", password)],
            default: 0,
            protected_mode,
        }
    }

    /// Parses a users file (see the module docs). `password` is the
    /// `client_password_file`'s, for the default user when the file does
    /// not define it. Errors name the line.
    pub fn parse(text: &str, password: Option<&[u8]>, protected_mode: bool) -> Result<Acl, String> {
        let mut users: Vec<User> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |msg: String| format!("line {}: {msg}", n + 1);
            let mut words = line.split_whitespace();
            if words.next() != Some("user") {
                return Err(at("a line is `user <name> <rules...>`".into()));
            }
            let Some(name) = words.next() else {
                return Err(at("`user` without a name".into()));
            };
            if !valid_name(name) {
                return Err(at(format!(
                    "user name {name:?}: use letters, digits and -_.@ (at most 64)"
                )));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(at(format!("user {name:?} is defined twice")));
            }
            if name == "default" && password.is_some() {
                return Err(at(
                    "user \"default\" is defined here and by client_password_file: keep one".into(),
                ));
            }
            if users.len() == MAX_USERS {
                return Err(at(format!("more than {MAX_USERS} users")));
            }
            let mut user = User::new(name);
            for word in words {
                apply_rule(&mut user, word).map_err(|e| at(format!("user {name:?}: {e}")))?;
            }
            if user.enabled && !user.nopass && user.passwords.is_empty() {
                return Err(at(format!(
                    "user {name:?} is on but has no password (add >password, or nopass)"
                )));
            }
            user.unrestricted = COMMANDS.iter().all(|c| {
                user.allows(c.name, categories(c.name, None))
                    && user.allows(c.name, categories(c.name, Some(b"list")))
            }) && user.allows("", ALL);
            users.push(user);
        }
        if users.is_empty() {
            return Err("no users defined (a line is `user <name> on >password +@all`)".into());
        }
        let default = match users.iter().position(|u| u.name == "default") {
            Some(i) => i,
            None => {
                users.push(match password {
                    Some(p) => User::superuser("default", Some(p)),
                    None => User::new("default"),
                });
                users.len() - 1
            }
        };
        Ok(Acl {
            users,
            default,
            protected_mode,
        })
    }

    /// The user a new connection is: `default` while it is on and takes
    /// no password, else nobody until `AUTH`.
    pub fn initial_user(&self) -> Option<UserId> {
        let d = &self.users[self.default];
        (d.enabled && d.nopass).then_some(self.default)
    }

    /// Whether only loopback clients are served: protected mode is on and
    /// the default user takes no password.
    pub fn protected(&self) -> bool {
        self.protected_mode && self.initial_user().is_some()
    }

    /// `AUTH [user] password`: the user it logs in as.
    pub fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Result<UserId, AuthError> {
        let id = match user {
            None => {
                if self.users[self.default].nopass && self.users[self.default].enabled {
                    return Err(AuthError::NoPasswordConfigured);
                }
                Some(self.default)
            }
            Some(name) => self.users.iter().position(|u| u.name.as_bytes() == name),
        };
        match id {
            Some(id) if self.users[id].accepts(password) => Ok(id),
            // Spend the same time on an unknown user as on a known one.
            None => {
                let _ = User::superuser("", Some(b"")).accepts(password);
                Err(AuthError::WrongPass)
            }
            Some(_) => Err(AuthError::WrongPass),
        }
    }

    /// Whether `user` may run the command named `name` with first
    /// argument `sub`.
    pub fn allows(&self, user: UserId, name: &[u8], sub: Option<&[u8]>) -> bool {
        let u = &self.users[user];
        if u.unrestricted {
            return true;
        }
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        u.allows(&lower, categories(&lower, sub))
    }

    /// The user's name (`CLIENT LIST`'s `user=`, errors).
    pub fn name(&self, user: UserId) -> &str {
        &self.users[user].name
    }

    /// How many users are defined, the default one included.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn apply_rule(user: &mut User, word: &str) -> Result<(), String> {
    let category = |name: &str| {
        CATEGORY_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                format!(
                    "unknown category @{name} (known: {})",
                    CATEGORY_NAMES
                        .iter()
                        .map(|(n, _)| format!("@{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
    };
    let command = |name: &str| {
        let lower = name.to_ascii_lowercase();
        if COMMANDS.iter().any(|c| c.name == lower) {
            Ok(lower)
        } else {
            Err(format!("unknown command {name:?}"))
        }
    };
    match word {
        "on" => user.enabled = true,
        "off" => user.enabled = false,
        "nopass" => {
            user.nopass = true;
            user.passwords.clear();
        }
        "resetpass" => {
            user.nopass = false;
            user.passwords.clear();
        }
        "allcommands" => user.rules.push(Rule::Allow(ALL)),
        "nocommands" => user.rules.push(Rule::Deny(ALL)),
        // Keys and channels: only "all of them" is enforceable here.
        "~*" | "%RW~*" | "allkeys" | "&*" | "allchannels" | "resetchannels" => {}
        _ => {
            if let Some(pw) = word.strip_prefix('>') {
                if pw.is_empty() {
                    return Err("empty password after '>'".into());
                }
                user.nopass = false;
                user.passwords.push(digest(pw.as_bytes()));
            } else if let Some(hex) = word.strip_prefix('#') {
                user.nopass = false;
                user.passwords.push(parse_digest(hex)?);
            } else if let Some(c) = word.strip_prefix("+@") {
                user.rules.push(Rule::Allow(category(c)?));
            } else if let Some(c) = word.strip_prefix("-@") {
                user.rules.push(Rule::Deny(category(c)?));
            } else if let Some(c) = word.strip_prefix('+') {
                user.rules.push(Rule::AllowCommand(command(c)?));
            } else if let Some(c) = word.strip_prefix('-') {
                user.rules.push(Rule::DenyCommand(command(c)?));
            } else if word.starts_with('~') || word.starts_with('%') || word.starts_with('&') {
                return Err(format!(
                    "{word:?}: per-key and per-channel rules are not supported (only ~* / allkeys)"
                ));
            } else {
                return Err(format!("unknown rule {word:?}"));
            }
        }
    }
    Ok(())
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err("a #digest is 64 hex digits (SHA-256)".into());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "a #digest is 64 hex digits (SHA-256)".to_string())?;
    }
    Ok(out)
}

/// Failed AUTH attempts per source address: a token bucket each, in a
/// bounded table.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * AUTH_REFILL_PER_SEC).min(AUTH_BURST);
        self.at = now;
    }
}

impl AuthLimiter {
    /// `None` if `ip` may try a password now, else how many seconds until
    /// it may.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        let b = self.buckets.get_mut(&ip)?;
        b.refill(now);
        (b.tokens < 1.0).then(|| ((1.0 - b.tokens) / AUTH_REFILL_PER_SEC).ceil().max(1.0) as u64)
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            // Forget the bucket that has been quiet longest; it has
            // refilled the most.
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| *k)
            {
                self.buckets.remove(&oldest);
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: AUTH_BURST,
            at: now,
        });
        b.refill(now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Addresses remembered.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FILE: &str = "\
# operators and applications
user admin on >adminpw +@all
user app on >apppw +@all -@admin -@dangerous
user reader on >rpw +@read +@connection -@dangerous +ping
";

    fn login(acl: &Acl, user: &str, pw: &str) -> UserId {
        acl.authenticate(Some(user.as_bytes()), pw.as_bytes())
            .unwrap_or_else(|e| panic!("{user}: {e:?}"))
    }

    #[test]
    fn data_users_cannot_change_the_cluster() {
        let acl = Acl::parse(FILE, None, true).unwrap();
        let admin = login(&acl, "admin", "adminpw");
        let app = login(&acl, "app", "apppw");
        let reader = login(&acl, "reader", "rpw");
        for cmd in [
            "raft.add",
            "raft.remove",
            "raft.promote",
            "raft.transfer",
            "flushall",
        ] {
            assert!(acl.allows(admin, cmd.as_bytes(), None), "{cmd}");
            assert!(!acl.allows(app, cmd.as_bytes(), None), "{cmd}");
            assert!(!acl.allows(reader, cmd.as_bytes(), None), "{cmd}");
        }
        for cmd in [
            "set",
            "get",
            "del",
            "incr",
            "multi",
            "exec",
            "raft.members",
            "cluster",
        ] {
            assert!(acl.allows(app, cmd.as_bytes(), None), "{cmd}");
        }
        assert!(acl.allows(app, b"CLIENT", Some(b"setname")));
        assert!(!acl.allows(app, b"client", Some(b"LIST")));
        assert!(!acl.allows(app, b"keys", None));
        assert!(acl.allows(reader, b"get", None));
        assert!(acl.allows(reader, b"ping", None));
        assert!(!acl.allows(reader, b"set", None));
    }

    #[test]
    fn logins() {
        let acl = Acl::parse(FILE, None, true).unwrap();
        assert_eq!(acl.initial_user(), None, "default is off without a line");
        assert!(!acl.protected());
        assert_eq!(
            acl.authenticate(Some(b"app"), b"adminpw"),
            Err(AuthError::WrongPass)
        );
        assert_eq!(
            acl.authenticate(Some(b"nobody"), b"x"),
            Err(AuthError::WrongPass)
        );
        assert_eq!(acl.authenticate(None, b"x"), Err(AuthError::WrongPass));
        let with_pw = Acl::parse(FILE, Some(b"defpw"), true).unwrap();
        let d = with_pw.authenticate(None, b"defpw").unwrap();
        assert_eq!(with_pw.name(d), "default");
        assert!(with_pw.allows(d, b"raft.add", None));
    }

    #[test]
    fn without_a_users_file_the_default_user_may_do_everything() {
        let open = Acl::single(None, true);
        assert!(open.protected());
        let d = open.initial_user().unwrap();
        assert!(open.allows(d, b"raft.add", None));
        assert_eq!(
            open.authenticate(None, b"x"),
            Err(AuthError::NoPasswordConfigured)
        );
        assert!(!Acl::single(None, false).protected());
        let pw = Acl::single(Some(b"pw"), true);
        assert!(!pw.protected());
        assert_eq!(pw.initial_user(), None);
        assert!(pw.authenticate(Some(b"default"), b"pw").is_ok());
    }

    #[test]
    fn file_errors_name_the_line() {
        let bad = [
            (
                "user a on >x +@nope",
                "line 1: user \"a\": unknown category @nope",
            ),
            ("user a on >x ~app:*", "per-key"),
            ("user a on +@all", "has no password"),
            (
                "user a on >x\nuser a on >y",
                "line 2: user \"a\" is defined twice",
            ),
            ("usr a", "line 1"),
            ("user a on >x +frobnicate", "unknown command"),
            ("user a on #abc", "64 hex digits"),
            ("# nothing", "no users"),
        ];
        for (text, want) in bad {
            let e = Acl::parse(text, None, true).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = Acl::parse("user default on >x", Some(b"y"), true).unwrap_err();
        assert!(e.contains("client_password_file"), "{e}");
    }

    #[test]
    fn digests_and_nopass() {
        let hex: String = digest(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let acl = Acl::parse(
            &format!("user ops on #{hex} +@all\nuser default on nopass -@all +ping"),
            None,
            true,
        )
        .unwrap();
        assert!(acl.authenticate(Some(b"ops"), b"s3cret").is_ok());
        let d = acl.initial_user().unwrap();
        assert!(acl.protected());
        assert!(acl.allows(d, b"ping", None));
        assert!(!acl.allows(d, b"get", None));
    }

    #[test]
    fn the_limiter_allows_a_burst_then_a_trickle() {
        let mut l = AuthLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..AUTH_BURST as usize {
            assert_eq!(l.check(ip, t0), None);
            l.failed(ip, t0);
        }
        assert!(l.check(ip, t0).is_some());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(l.check(other, t0), None, "per address");
        let later = t0 + Duration::from_millis((1000.0 / AUTH_REFILL_PER_SEC) as u64 + 1);
        assert_eq!(l.check(ip, later), None);
        l.failed(ip, later);
        assert!(l.check(ip, later).is_some());
    }

    #[test]
    fn the_limiter_table_is_bounded() {
        let mut l = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            l.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_micros(u64::from(i)),
            );
        }
        assert_eq!(l.tracked(), MAX_TRACKED_ADDRESSES);
    }
}
