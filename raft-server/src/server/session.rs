//! The client session layer: accepting connections (protected mode,
//! the connection cap), reading and running their requests in program
//! order, proposing writes and registering reads, and writing replies back
//! under the output and memory budgets. The loop (`server.rs`) calls in
//! here once a turn; the node's decisions stay in raft-proto.

use super::*;

/// Client requests stop for the turn once it has kept the loop busy for
/// this fraction of a heartbeat (a fourth: 12.5 ms by default).
const CLIENT_BUDGET_HEARTBEATS: u32 = 4;

impl Server {
    pub(super) fn deliver(&mut self, to: ReplyTo, reply: Reply) {
        if let Some(c) = self.clients.get_mut(to.key) {
            if c.id == to.client_id {
                c.fill(to.seq, reply);
                self.budget.update(c);
                self.dirty.push(to.key);
            }
        }
    }

    /// Where to send a client that asked a non-leader about `key`: the
    /// key's hash slot and the leader, as Redis Cluster redirects.
    pub(super) fn redirect(&mut self, leader: Option<NodeId>, key: &[u8]) -> Reply {
        self.counters.redirects += 1;
        match leader.and_then(|l| self.settings.member(l)) {
            Some(m) => Reply::Error(format!(
                "MOVED {} {}",
                topology::key_slot(key),
                m.client_addr
            )),
            // A member the configuration no longer names hears from no
            // leader: say why, so that an operator stops it.
            None if !self.node.membership().contains(self.settings.id)
                && !self.node.membership().voters.is_empty() =>
            {
                Reply::Error(
                    "CLUSTERDOWN no leader: this member is not in the cluster's configuration \
                     (removed?)"
                        .into(),
                )
            }
            None => Reply::Error("CLUSTERDOWN no leader".into()),
        }
    }

    /// The members as topology replies show them.
    pub(super) fn topology(&self) -> Vec<topology::Node> {
        let leader = self.node.leader();
        let up: Vec<NodeId> = self
            .peers
            .status(Instant::now())
            .iter()
            .filter(|p| p.up)
            .map(|p| p.id)
            .collect();
        self.settings
            .members
            .iter()
            .map(|m| topology::Node {
                id: m.id,
                client_addr: m.client_addr,
                peer_addr: m.peer_addr,
                leader: leader == Some(m.id),
                connected: m.id == self.settings.id || up.contains(&m.id),
            })
            .collect()
    }

    pub(super) fn read_error(&mut self, e: ReadError, key: &[u8]) -> Reply {
        match e {
            ReadError::NotLeader { leader } => self.redirect(leader, key),
            ReadError::Busy => Reply::Error("ERR too many pending reads; retry".into()),
        }
    }

    /// Accepts every queued client connection, up to `max_clients`; those
    /// beyond get Redis' error and are closed. If `accept` fails (out of
    /// descriptors, say), the connections stay queued in the backlog and
    /// edge-triggered readiness will not report them again: accepting is
    /// retried after [`ACCEPT_RETRY`], or as soon as a client closes.
    pub(super) fn accept_clients(&mut self, now: Instant) {
        let retrying = self.accept_retry_at.take().is_some();
        loop {
            match self.client_listener.accept() {
                Ok((mut sock, addr)) => {
                    if self.refuse_if_protected(&mut sock, addr) {
                        continue;
                    }
                    if self.clients.len() >= self.max_clients {
                        self.refuse_client(sock, addr);
                        continue;
                    }
                    self.add_client(sock, addr, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client gave up before we got to it; take the next.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    if !retrying {
                        let why = if conn::out_of_descriptors(&e) {
                            " (out of descriptors)"
                        } else {
                            ""
                        };
                        log::warn!(
                            "client port: accept failed: {e}{why}; retrying every {} ms or when \
                             a client closes",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    self.accept_retry_at = Some(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    pub(super) fn add_client(
        &mut self,
        mut sock: mio::net::TcpStream,
        addr: SocketAddr,
        now: Instant,
    ) {
        let entry = self.clients.vacant_entry();
        let token = Token(CLIENT_BASE + entry.key());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, token, Interest::READABLE)
        {
            log::warn!("client {addr}: cannot register: {e}");
            return;
        }
        let _ = sock.set_nodelay(true);
        self.next_client_id += 1;
        let mut c = Client::new(self.next_client_id, sock, addr, now);
        c.user = self.settings.acl.initial_user();
        self.budget.update(&mut c);
        self.client_timer
            .note(c.deadline(self.settings.client_idle_timeout));
        entry.insert(c);
        self.counters.clients_accepted += 1;
    }

    /// Redis' answer to a client over the limit, then close.
    pub(super) fn refuse_client(&mut self, mut sock: mio::net::TcpStream, addr: SocketAddr) {
        use std::io::Read;
        if !std::mem::replace(&mut self.refusing, true) {
            log::warn!(
                "client {addr}: refused, {} clients connected (the maximum); further refusals \
                 are counted in INFO rejected_connections",
                self.clients.len()
            );
        }
        self.counters.clients_rejected += 1;
        // Closing a socket with unread input resets the connection, which
        // can discard the error before the client reads it: take what it
        // sent already (one read; a fresh socket has little).
        let _ = sock.read(&mut self.read_buf);
        // A fresh socket takes a short write.
        let _ = sock.write(b"-ERR max number of clients reached\r\n");
    }

    /// Executes a client's buffered requests and reads more, until its
    /// socket is drained, back-pressure stalls it or the budget is full;
    /// then counts what it holds and notes its deadline.
    pub(super) fn service_client(&mut self, key: usize, t: Time, now: Instant) {
        self.service_client_io(key, t, now);
        if let Some(c) = self.clients.get_mut(key) {
            self.budget.update(c);
            self.client_timer
                .note(c.deadline(self.settings.client_idle_timeout));
        }
    }

    pub(super) fn service_client_io(&mut self, key: usize, t: Time, now: Instant) {
        let budget = self.settings.heartbeat / CLIENT_BUDGET_HEARTBEATS;
        loop {
            loop {
                // Past the turn's budget the client's requests wait for
                // the next turn (which starts at once), after the peers'
                // traffic and the timers have been served: a pipeline of
                // thousands of requests from many clients costs several
                // short turns, not one long one.
                if self.turn.busy() >= budget {
                    self.counters.client_deferred += 1;
                    self.dirty.push(key);
                    self.resume.push(key);
                    return;
                }
                let Some(c) = self.clients.get_mut(key) else {
                    return;
                };
                // A full budget stops reading only: running what is
                // buffered moves a write's bytes into the log, and a
                // GET's reservation is bounded by the output limits.
                if c.paused() {
                    break;
                }
                let Some(req) = c.next_request(&self.limits, now) else {
                    break;
                };
                if c.must_wait(cmd::kind_of(&req, c.in_multi())) {
                    c.hold(req);
                    break;
                }
                self.execute(key, req, t);
            }
            self.dirty.push(key);
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            if c.closing() || c.holding() {
                return;
            }
            if c.paused() {
                c.stall();
                return;
            }
            self.budget.update(c);
            if self.budget.full() {
                if c.wait_for_budget() {
                    self.budget_waiters.push((key, c.id));
                }
                return;
            }
            if c.read_closed() {
                // The client sent EOF and every complete request it sent
                // has run: close once their replies are written.
                c.close_after_replies();
                return;
            }
            if !c.may_have_input() {
                return;
            }
            // At EOF the loop runs what is buffered before closing.
            if let Err(e) = c.read(&self.limits, &mut self.read_buf, self.budget.room(), now) {
                log::debug!("client {}: {e}", c.addr);
                self.close_client(key);
                return;
            }
        }
    }

    pub(super) fn execute(&mut self, key: usize, req: Request, t: Time) {
        let c = &mut self.clients[key];
        let cmd = match cmd::parse_command(&req) {
            Ok(cmd) => cmd,
            Err(reply) => {
                // Inside MULTI a refused command dooms the transaction.
                if let Some(tx) = &mut c.tx {
                    tx.failed = true;
                }
                c.reply_now(reply);
                return;
            }
        };
        // Before AUTH only these run (as in Redis); after it, what the
        // user's rules allow.
        let before_auth = matches!(
            cmd,
            Command::Auth { .. } | Command::Hello { .. } | Command::Quit | Command::Reset
        );
        if !before_auth && !self.permitted(key, &req) {
            return;
        }
        let c = &mut self.clients[key];
        if c.in_multi()
            && !matches!(
                cmd,
                Command::Exec
                    | Command::Discard
                    | Command::Multi
                    | Command::Watch(_)
                    | Command::Quit
                    | Command::Reset
            )
        {
            self.queue(key, cmd, &req);
            return;
        }
        match cmd {
            Command::Ping(None) => self.clients[key].reply_now(Reply::Simple("PONG")),
            Command::Time => self.time_reply(key),
            Command::Ping(Some(m)) | Command::Echo(m) => {
                self.clients[key].reply_now(Reply::Bulk(m))
            }
            Command::Quit => {
                let c = &mut self.clients[key];
                c.reply_now(Reply::Simple("OK"));
                c.close_after_replies();
            }
            Command::Hello {
                protocol,
                name,
                auth,
            } => self.hello(key, protocol, name, auth),
            Command::Auth { user, password } => {
                let reply = match self.login(key, user.as_ref(), &password) {
                    Ok(()) => Reply::Simple("OK"),
                    Err(reply) => reply,
                };
                self.clients[key].reply_now(reply);
            }
            Command::Multi => self.multi(key),
            Command::Discard => self.discard(key),
            Command::Unwatch => {
                let c = &mut self.clients[key];
                c.watches.clear();
                c.reply_now(Reply::Simple("OK"));
            }
            Command::Watch(keys) => self.watch(key, keys),
            Command::Exec => self.exec(key, t),
            Command::Ok | Command::Select => self.clients[key].reply_now(Reply::Simple("OK")),
            Command::ReadMode(readonly) => {
                let c = &mut self.clients[key];
                c.readonly = readonly;
                c.reply_now(Reply::Simple("OK"));
            }
            Command::CountCommands => {
                self.clients[key].reply_now(Reply::Integer(cmd::COMMANDS.len() as i64))
            }
            Command::Commands(names) => self.command_info(key, names),
            Command::Docs(names) => self.command_docs(key, names),
            Command::RaftMembers => {
                let reply = self.members_command();
                self.clients[key].reply_now(reply);
            }
            Command::RaftChange { change, addresses } => {
                self.change_membership(key, change, addresses, t)
            }
            Command::RaftTransfer(target) => self.transfer(key, target, t),
            Command::Cluster(q) => self.cluster(key, q),
            Command::ConfigGet(patterns) => self.config_get(key, patterns),
            Command::Reset => self.reset(key),
            Command::ClientSetName(name) => {
                let c = &mut self.clients[key];
                c.name = Some(name);
                c.reply_now(Reply::Simple("OK"));
            }
            Command::ClientGetName => {
                let c = &mut self.clients[key];
                let reply = c.name.clone().map_or(Reply::Nil, Reply::Bulk);
                c.reply_now(reply);
            }
            Command::ClientId => {
                let c = &mut self.clients[key];
                c.reply_now(Reply::Integer(c.id as i64));
            }
            Command::ClientInfo => self.client_lines(key, false),
            Command::ClientList => self.client_lines(key, true),
            Command::Info(section) => {
                let text =
                    info::render_info_sections(&self.snapshot(Instant::now()), section.as_deref());
                self.clients[key].reply_now(Reply::Bulk(Bytes::from(text)));
            }
            Command::Read(cmd) => self.read(key, cmd, t),
            Command::Write(cmd) => {
                let slot_key = cmd.first_key().cloned().unwrap_or_default();
                self.propose(key, cmd, &slot_key, t)
            }
        }
    }

    /// `MULTI`: commands are queued until `EXEC`.
    fn multi(&mut self, key: usize) {
        let c = &mut self.clients[key];
        if c.in_multi() {
            c.reply_now(Reply::Error("ERR MULTI calls can not be nested".into()));
        } else {
            c.tx = Some(client::Transaction::default());
            c.reply_now(Reply::Simple("OK"));
        }
    }

    /// `DISCARD`: the queued commands and the watched keys are dropped.
    fn discard(&mut self, key: usize) {
        let c = &mut self.clients[key];
        if c.tx.take().is_some() {
            c.watches.clear();
            c.reply_now(Reply::Simple("OK"));
        } else {
            c.reply_now(Reply::Error("ERR DISCARD without MULTI".into()));
        }
    }

    /// `CLIENT INFO` (this connection) or `CLIENT LIST` (all of them).
    fn client_lines(&mut self, key: usize, all: bool) {
        let acl = &self.settings.acl;
        let text = if all {
            self.clients
                .iter()
                .map(|(_, c)| client_line(c, acl))
                .collect::<String>()
        } else {
            client_line(&self.clients[key], acl)
        };
        self.clients[key].reply_now(Reply::Bulk(Bytes::from(text)));
    }

    /// The clock of `TIME`.
    fn time_reply(&mut self, key: usize) {
        // Redis' shape: two bulk strings, seconds and microseconds.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let bulk = |n: u64| Reply::Bulk(Bytes::from(n.to_string()));
        self.clients[key].reply_now(Reply::Array(vec![
            bulk(now.as_secs()),
            bulk(u64::from(now.subsec_micros())),
        ]));
    }

    /// `HELLO`: logs in if asked, switches the protocol, answers the facts.
    fn hello(
        &mut self,
        key: usize,
        protocol: Option<resp::Protocol>,
        name: Option<Bytes>,
        auth: Option<(Bytes, Bytes)>,
    ) {
        let role = if self.node.role() == Role::Leader {
            "master"
        } else {
            "replica"
        };
        if let Some((user, pw)) = &auth {
            if let Err(reply) = self.login(key, Some(user), pw) {
                return self.clients[key].reply_now(reply);
            }
        }
        let c = &mut self.clients[key];
        if auth.is_none() && c.user.is_none() {
            return c.reply_now(Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, \
                 otherwise the HELLO <proto> AUTH <user> <pass> option can be used \
                 to authenticate the client and select the RESP protocol version at \
                 the same time"
                    .into(),
            ));
        }
        if let Some(p) = protocol {
            // The reply to HELLO is already in the new protocol.
            c.protocol = p;
        }
        if name.is_some() {
            c.name = name;
        }
        let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let proto = match c.protocol {
            resp::Protocol::Resp2 => 2,
            resp::Protocol::Resp3 => 3,
        };
        let reply = Reply::Map(vec![
            (bulk("server"), bulk("redis")),
            (bulk("version"), bulk(info::REDIS_COMPAT_VERSION)),
            (bulk("proto"), Reply::Integer(proto)),
            (bulk("id"), Reply::Integer(c.id as i64)),
            (bulk("mode"), bulk("cluster")),
            (bulk("role"), bulk(role)),
            (bulk("modules"), Reply::Array(Vec::new())),
        ]);
        c.reply_now(reply);
    }

    /// `EXEC`: the queued commands as one log entry, with the watched keys.
    fn exec(&mut self, key: usize, t: Time) {
        let c = &mut self.clients[key];
        let Some(tx) = c.tx.take() else {
            return c.reply_now(Reply::Error("ERR EXEC without MULTI".into()));
        };
        let watches = std::mem::take(&mut c.watches);
        if tx.failed {
            return c.reply_now(Reply::Error(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            ));
        }
        let cmd = kv::Command::Exec {
            watches,
            cmds: tx.cmds,
        };
        let slot_key = cmd.first_key().cloned().unwrap_or_default();
        self.propose(key, cmd, &slot_key, t);
    }

    /// `COMMAND` and `COMMAND INFO`: entries of the table.
    fn command_info(&mut self, key: usize, names: Option<Vec<Bytes>>) {
        let reply = match names {
            None => Reply::Array(cmd::COMMANDS.iter().map(cmd::command_entry).collect()),
            Some(names) => Reply::Array(
                names
                    .iter()
                    .map(|n| {
                        cmd::COMMANDS
                            .iter()
                            .find(|c| c.name.as_bytes().eq_ignore_ascii_case(n))
                            .map_or(Reply::Nil, cmd::command_entry)
                    })
                    .collect(),
            ),
        };
        self.clients[key].reply_now(reply);
    }

    /// `COMMAND DOCS`.
    fn command_docs(&mut self, key: usize, names: Option<Vec<Bytes>>) {
        let docs = cmd::COMMANDS
            .iter()
            .filter(|c| {
                names
                    .as_ref()
                    .is_none_or(|ns| ns.iter().any(|n| c.name.as_bytes().eq_ignore_ascii_case(n)))
            })
            .map(cmd::command_docs)
            .collect();
        self.clients[key].reply_now(Reply::Map(docs));
    }

    /// `CLUSTER ...`: the Raft group as one shard.
    fn cluster(&mut self, key: usize, q: cmd::ClusterQuery) {
        let nodes = self.topology();
        let term = self.node.term();
        let bulk_text = |t: String| Reply::Bulk(Bytes::from(t));
        let reply = match q {
            cmd::ClusterQuery::Slots => topology::slots(&nodes),
            cmd::ClusterQuery::Shards => topology::shards(&nodes),
            cmd::ClusterQuery::Nodes => {
                bulk_text(topology::nodes_text(&nodes, self.settings.id, term))
            }
            cmd::ClusterQuery::MyId => bulk_text(topology::node_id(self.settings.id)),
            cmd::ClusterQuery::Info => bulk_text(topology::info_text(&nodes, term)),
            cmd::ClusterQuery::KeySlot(k) => Reply::Integer(i64::from(topology::key_slot(&k))),
        };
        self.clients[key].reply_now(reply);
    }

    /// `CONFIG GET`.
    fn config_get(&mut self, key: usize, patterns: Vec<Bytes>) {
        let idle = self.settings.client_idle_timeout.map_or(0, |d| d.as_secs());
        // What redis-benchmark and client libraries ask for, with
        // raft-node's answers: no RDB or AOF file (the Raft log is
        // the durability), one database.
        let params: [(&str, String); 8] = [
            ("save", String::new()),
            ("appendonly", "no".into()),
            ("databases", "1".into()),
            ("maxclients", self.max_clients.to_string()),
            ("timeout", idle.to_string()),
            ("maxmemory", "0".into()),
            ("cluster-enabled", "yes".into()),
            ("port", self.settings.me().client_addr.port().to_string()),
        ];
        let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let pairs = params
            .iter()
            .filter(|(name, _)| {
                patterns
                    .iter()
                    .any(|p| client::glob_match(p, name.as_bytes()))
            })
            .map(|(name, value)| (bulk(name), bulk(value)))
            .collect();
        self.clients[key].reply_now(Reply::Map(pairs));
    }

    /// `RESET`: the connection as it started.
    fn reset(&mut self, key: usize) {
        let c = &mut self.clients[key];
        c.protocol = resp::Protocol::Resp2;
        c.name = None;
        c.tx = None;
        c.watches.clear();
        c.user = self.settings.acl.initial_user();
        c.readonly = false;
        c.reply_now(Reply::Simple("RESET"));
    }

    /// A store read: through ReadIndex on the leader, or on a follower for a `READONLY` connection; answered when the read index is applied.
    fn read(&mut self, key: usize, cmd: kv::Command, t: Time) {
        self.next_read_id += 1;
        let id = self.next_read_id;
        // A follower serves the reads of clients that asked for it
        // (READONLY), with a read index from the leader (thesis
        // §6.4); other reads go to the leader, as writes do.
        let read = if self.node.role() == Role::Leader || self.clients[key].readonly {
            self.node.read_index(t, id)
        } else {
            Err(ReadError::NotLeader {
                leader: self.node.leader(),
            })
        };
        match read {
            Ok(()) => {
                // The reply counts against the connection's output
                // from now on: the values as they are now,
                // re-counted with the real reply when the read
                // completes.
                let reply_bytes = self.kv.reply_size_hint(&cmd);
                let c = &mut self.clients[key];
                let to = ReplyTo {
                    key,
                    client_id: c.id,
                    seq: c.reserve(crate::cmd::Kind::Read, reply_bytes),
                };
                self.reads.insert(id, PendingRead { to, cmd });
            }
            Err(e) => {
                let reply = self.read_error(e, cmd.first_key().map_or(&[][..], |k| k));
                self.clients[key].reply_now(reply);
            }
        }
    }

    /// `WATCH`: remembers each key with the store's applied index; `EXEC`
    /// sends them along, and applying it checks that none changed after
    /// (kv/mod.rs, "WATCH"). Only the leader's index counts, so followers
    /// redirect.
    pub(super) fn watch(&mut self, key: usize, keys: Vec<Bytes>) {
        if self.clients[key].in_multi() {
            let reply = Reply::Error("ERR WATCH inside MULTI is not allowed".into());
            return self.clients[key].reply_now(reply);
        }
        if self.node.role() != Role::Leader {
            let reply = self.redirect(self.node.leader(), &keys[0]);
            return self.clients[key].reply_now(reply);
        }
        let index = self.kv.applied_index();
        let c = &mut self.clients[key];
        if c.watches.len() + keys.len() > client::MAX_WATCHED_KEYS {
            return c.reply_now(Reply::Error(format!(
                "ERR too many watched keys: at most {} per connection",
                client::MAX_WATCHED_KEYS
            )));
        }
        c.watches.extend(keys.into_iter().map(|k| (k, index)));
        c.reply_now(Reply::Simple("OK"));
    }

    /// A command between `MULTI` and `EXEC`: a store command is queued
    /// (`+QUEUED`); anything else, a follower's redirect or a transaction
    /// over its bounds is an error that dooms the transaction, as Redis
    /// does with commands it refuses before `EXEC`.
    pub(super) fn queue(&mut self, key: usize, cmd: Command, req: &Request) {
        let refused = match cmd {
            Command::Read(c) | Command::Write(c) if self.node.role() != Role::Leader => {
                let slot_key = c.first_key().cloned().unwrap_or_default();
                Err(self.redirect(self.node.leader(), &slot_key))
            }
            Command::Read(c) if c.walks_keyspace() => Err(Reply::Error(format!(
                "ERR KEYS and SCAN with COUNT above {} cannot be queued in a transaction: \
                 inside EXEC they would run on every member's event loop",
                kv::WALK_INLINE_MAX
            ))),
            Command::Read(c) | Command::Write(c) => Ok(c),
            _ => Err(Reply::Error(
                "ERR only the store's commands can be queued in a transaction".into(),
            )),
        };
        let c = &mut self.clients[key];
        let tx = c.tx.as_mut().expect("queue inside MULTI");
        let bytes = client::ITEM_COST + req.iter().map(|a| a.len()).sum::<usize>();
        let reply = match refused {
            Ok(_)
                if tx.cmds.len() >= client::MAX_TX_COMMANDS
                    || tx.bytes + bytes > client::MAX_TX_BYTES =>
            {
                Err(Reply::Error(format!(
                    "ERR transaction too large: at most {} commands and {} bytes",
                    client::MAX_TX_COMMANDS,
                    client::MAX_TX_BYTES
                )))
            }
            other => other,
        };
        match reply {
            Ok(cmd) => {
                tx.cmds.push(cmd);
                tx.bytes += bytes;
                c.reply_now(Reply::Simple("QUEUED"));
            }
            Err(reply) => {
                tx.failed = true;
                c.reply_now(reply);
            }
        }
    }

    /// Proposes a write; `slot_key` (its first key) names the slot in a
    /// redirect.
    pub(super) fn propose(&mut self, key: usize, cmd: kv::Command, slot_key: &[u8], t: Time) {
        let stamp_ms = self.wall_ms(self.start + t.since_epoch());
        let payload = kv::Write::new(stamp_ms, cmd).encode_in(&mut self.encode_arena);
        match self.node.propose(t, payload) {
            Ok(id) => {
                let c = &mut self.clients[key];
                let to = ReplyTo {
                    key,
                    client_id: c.id,
                    seq: c.reserve(crate::cmd::Kind::Write, client::WRITE_REPLY_RESERVE),
                };
                let old = self
                    .writes
                    .insert(id.index.0, PendingWrite { to, term: id.term });
                assert!(old.is_none(), "two pending writes at index {}", id.index);
            }
            Err(e) => {
                let reply = match e {
                    ProposeError::NotLeader { leader } => self.redirect(leader, slot_key),
                    ProposeError::Busy => {
                        Reply::Error("ERR too many uncommitted writes; retry".into())
                    }
                    ProposeError::TooLarge { len, max } => {
                        Reply::Error(format!("ERR value too large: {len} bytes, at most {max}"))
                    }
                    // Leadership is moving there: the client follows the
                    // redirect (the target leads within a round trip).
                    ProposeError::TransferInProgress { target } => {
                        self.redirect(Some(target), slot_key)
                    }
                    ProposeError::Membership(e) => unreachable!("a store write: {e}"),
                };
                self.clients[key].reply_now(reply);
            }
        }
    }

    /// Writes ready replies of every client touched this turn; closes the
    /// finished ones and resumes those whose back-pressure cleared, and
    /// those waiting for the budget if it has room again.
    pub(super) fn flush_clients(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let budget = self.settings.heartbeat / CLIENT_BUDGET_HEARTBEATS;
        for (i, &key) in dirty.iter().enumerate() {
            // Filling a hundred sockets' buffers with large replies took
            // one turn a third of a second: past the budget, the rest are
            // written next turn (which starts at once).
            if i > 0 && self.turn.busy() >= budget {
                self.counters.client_deferred += 1;
                self.dirty.extend_from_slice(&dirty[i..]);
                break;
            }
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            match c.flush(self.poll.registry(), Token(CLIENT_BASE + key), now) {
                Ok(true) => {
                    self.budget.update(c);
                    self.client_timer
                        .note(c.deadline(self.settings.client_idle_timeout));
                    if c.unstall_if_ready() {
                        self.resume.push(key);
                    }
                }
                Ok(false) => self.close_client(key),
                Err(e) => {
                    log::debug!("client {}: {e}", c.addr);
                    self.close_client(key);
                }
            }
        }
        if !self.budget.full() && !self.budget_waiters.is_empty() {
            // Smallest first: the room goes to clients holding little (a
            // new client's PING) before those holding the most, which
            // wait longest and are the first evicted.
            let mut waiters: Vec<(usize, usize)> = Vec::new();
            for (key, id) in std::mem::take(&mut self.budget_waiters) {
                if let Some(c) = self.clients.get_mut(key).filter(|c| c.id == id) {
                    c.budget_wait_over();
                    waiters.push((Budget::counted(c), key));
                }
            }
            waiters.sort_unstable();
            self.resume.extend(waiters.into_iter().map(|(_, key)| key));
        }
    }

    /// Client timers, in the input phase of a turn: accept retries, idle
    /// timeouts and slow partial requests, and evictions when the budget
    /// stayed full.
    pub(super) fn client_timers(&mut self, now: Instant) {
        if self.accept_retry_at.is_some_and(|at| now >= at) {
            self.accept_clients(now);
        }
        if self.client_timer.start_scan(now) {
            let idle = self.settings.client_idle_timeout;
            let mut expired = Vec::new();
            for (key, c) in self.clients.iter() {
                match c.expired(now, idle) {
                    Some(why) => expired.push((key, why)),
                    None => self.client_timer.note(c.deadline(idle)),
                }
            }
            let mut slow = 0;
            for (key, why) in expired {
                let c = &self.clients[key];
                match why {
                    Expiry::Idle => log::debug!("client {}: idle; closing", c.addr),
                    Expiry::SlowRequest => {
                        log::debug!("client {}: partial request too slow; closing", c.addr);
                        slow += 1;
                    }
                }
                self.counters.clients_timed_out += 1;
                self.close_client(key);
            }
            if slow > 0 {
                log::info!(
                    "closed {slow} clients whose partial request (over {} bytes) did not \
                     complete within {} s",
                    client::SLOW_REQUEST_BYTES,
                    client::SLOW_REQUEST_TIMEOUT.as_secs()
                );
            }
        }
        if self.budget.must_evict(now) {
            self.evict_clients();
        }
    }

    /// The budget stayed full for the grace period: what holds it does not
    /// drain by itself, so the largest clients go, largest first, until it
    /// is under its low-water mark.
    pub(super) fn evict_clients(&mut self) {
        let before = self.budget.used();
        let mut by_size: Vec<(usize, usize)> = self
            .clients
            .iter()
            .map(|(key, c)| (Budget::counted(c), key))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let mut evicted = 0;
        for (bytes, key) in by_size {
            if self.budget.used() <= self.budget.low_water() {
                break;
            }
            log::debug!(
                "client {}: evicted, holding {bytes} bytes",
                self.clients[key].addr
            );
            self.close_client(key);
            evicted += 1;
        }
        self.counters.clients_evicted += evicted;
        log::warn!(
            "client buffers stayed at their {} MiB budget for {} ms: evicted the {evicted} \
             largest clients, {} MiB -> {} MiB",
            self.budget.limit() >> 20,
            client::BUDGET_GRACE.as_millis(),
            before >> 20,
            self.budget.used() >> 20
        );
    }

    /// End of a turn: the budget notes whether it is full; debug builds
    /// check that every client's memory is accounted for.
    pub(super) fn end_client_turn(&mut self, now: Instant) {
        self.budget.end_turn(now);
        if cfg!(debug_assertions) {
            let mut sum = 0;
            for (_, c) in self.clients.iter() {
                assert_eq!(
                    Budget::counted(c),
                    c.footprint(),
                    "client {} changed without being accounted",
                    c.addr
                );
                sum += c.footprint();
            }
            assert_eq!(
                sum,
                self.budget.used(),
                "budget out of step with its clients"
            );
        }
    }

    pub(super) fn close_client(&mut self, key: usize) {
        if self.clients.contains(key) {
            let mut c = self.clients.remove(key);
            self.budget.release(&c);
            let _ = self.poll.registry().deregister(c.sock());
            if self.accept_retry_at.is_some() {
                // A descriptor was freed: try the queued connections now.
                self.accept_retry_at = Some(self.start);
            }
            self.refusing = false;
        }
    }
}

/// One `CLIENT LIST` / `CLIENT INFO` line, in Redis' `key=value` form.
fn client_line(c: &Client, acl: &crate::acl::Acl) -> String {
    let name = c
        .name
        .as_ref()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let resp = match c.protocol {
        resp::Protocol::Resp2 => 2,
        resp::Protocol::Resp3 => 3,
    };
    // Redis writes `user=` the same way, empty before a login.
    let user = c.user.map_or("", |u| acl.name(u));
    format!(
        "id={} addr={} laddr= fd=0 name={name} db=0 user={user} resp={resp}\n",
        c.id, c.addr
    )
}
