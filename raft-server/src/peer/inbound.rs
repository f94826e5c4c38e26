//! Inbound links: accepting (bounded per source and in all), the
//! acceptor's side of the handshake (challenge, then identify the member
//! by its proof), receiving frames, and closing, with refusals logged in
//! summaries rather than one line each.

use super::*;

impl PeerSet {
    pub(super) fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, addr)) => {
                    if !self.admit(addr, registry, now) {
                        continue; // dropping `sock` closes it
                    }
                    let entry = self.inbound.vacant_entry();
                    let token = Token(INBOUND_TOKEN_BASE + entry.key());
                    if let Err(e) = registry.register(&mut sock, token, Interest::READABLE) {
                        log::warn!("peer port: cannot register connection from {addr}: {e}");
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    entry.insert(Inbound {
                        sock,
                        addr,
                        state: InboundState::AwaitHello,
                        inbuf: BytesMut::new(),
                        out: BytesMut::new(),
                        writable: false,
                        accepted: now,
                    });
                    if let Some(src) = self.sources.get_mut(&addr.ip()) {
                        src.unidentified += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog; the next event retries.
                    log::error!("peer port: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Whether a new connection from `addr` gets an unauthenticated slot:
    /// within its source's share, after closing the oldest unauthenticated
    /// connection if all slots are taken.
    pub(super) fn admit(&mut self, addr: SocketAddr, registry: &Registry, now: Instant) -> bool {
        let ip = addr.ip();
        if !self.sources.contains_key(&ip) {
            self.forget_idle_sources(now);
            if self.sources.len() >= MAX_TRACKED_SOURCES + self.member_ips.len() {
                self.untracked_refusals += 1;
                if self.untracked_logged_at.is_none() {
                    self.log_untracked(now);
                }
                return false;
            }
            self.sources.insert(ip, SourceState::default());
        }
        let pending = self.sources[&ip].unidentified;
        if pending >= MAX_UNIDENTIFIED_PER_SOURCE {
            let reason =
                format!("{pending} connections from this address are already in their handshake");
            self.refused(addr, reason, now);
            return false;
        }
        let unidentified = self.inbound.iter().filter(|(_, c)| c.peer().is_none());
        if unidentified.clone().count() >= MAX_UNIDENTIFIED_INBOUND {
            let oldest = unidentified
                .min_by_key(|(_, c)| c.accepted)
                .map(|(k, c)| (k, c.addr));
            if let Some((k, old_addr)) = oldest {
                let reason = format!(
                    "handshake pending while {MAX_UNIDENTIFIED_INBOUND} connections were \
                     unauthenticated; closed for a newer one"
                );
                self.refused(old_addr, reason, now);
                self.close_inbound(k, registry, None, &mut Vec::new());
            }
        }
        true
    }

    /// Counts a refused handshake from `addr`, logging it if nothing was
    /// logged about that address within [`REFUSAL_LOG_INTERVAL`]; the rest
    /// are summed up by [`PeerSet::log_refusal_summaries`].
    pub(super) fn refused(&mut self, addr: SocketAddr, reason: String, now: Instant) {
        let Some(src) = self.sources.get_mut(&addr.ip()) else {
            self.untracked_refusals += 1;
            return;
        };
        let quiet = src
            .logged_at
            .is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_INTERVAL);
        if quiet {
            src.unlogged += 1;
            src.last_reason = reason;
        } else {
            log::warn!(
                "peer port: connection from {addr} refused: {reason} (further refusals from {} \
                 are summed up once a minute)",
                addr.ip()
            );
            src.logged_at = Some(now);
        }
    }

    /// One line per source whose refusals were not logged for a minute.
    pub(super) fn log_refusal_summaries(&mut self, now: Instant) {
        for (ip, src) in &mut self.sources {
            let due = src
                .logged_at
                .is_some_and(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
            if src.unlogged > 0 && due {
                log::warn!(
                    "peer port: {} more connections from {ip} refused in the last {:.0} s \
                     (last: {})",
                    src.unlogged,
                    now.saturating_duration_since(src.logged_at.unwrap_or(now))
                        .as_secs_f64(),
                    src.last_reason
                );
                src.unlogged = 0;
                src.logged_at = Some(now);
            }
        }
        let due = self
            .untracked_logged_at
            .is_some_and(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if self.untracked_refusals > 0 && due {
            self.log_untracked(now);
        }
    }

    pub(super) fn log_untracked(&mut self, now: Instant) {
        log::warn!(
            "peer port: {} connections refused from further addresses (more than \
             {MAX_TRACKED_SOURCES} addresses tried to connect)",
            self.untracked_refusals
        );
        self.untracked_refusals = 0;
        self.untracked_logged_at = Some(now);
    }

    /// Drops what is remembered about addresses that have nothing pending
    /// and nothing left to log, to make room for new ones.
    pub(super) fn forget_idle_sources(&mut self, now: Instant) {
        if self.sources.len() < MAX_TRACKED_SOURCES + self.member_ips.len() {
            return;
        }
        self.sources.retain(|_, s| {
            let recent = s
                .logged_at
                .is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_INTERVAL);
            s.member || s.unidentified > 0 || s.unlogged > 0 || recent
        });
    }

    pub(super) fn inbound_ready(
        &mut self,
        k: usize,
        hangup: bool,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        match self.inbound_io(k, hangup, registry, out) {
            Ok(true) => {}
            Ok(false) => {
                let c = &self.inbound[k];
                let (addr, peer) = (c.addr, c.peer());
                if peer.is_none() {
                    let reason = match c.state {
                        InboundState::AwaitHello => "closed before its handshake",
                        _ => "closed during the handshake",
                    };
                    self.refused(addr, reason.into(), now);
                }
                self.close_inbound(
                    k,
                    registry,
                    peer.map(|_| "connection closed by peer".to_string()),
                    out,
                );
            }
            Err(reason) => {
                let (addr, peer) = (self.inbound[k].addr, self.inbound[k].peer());
                match peer {
                    Some(p) => self.link_error(p, addr, &reason, now),
                    None => self.refused(addr, reason.clone(), now),
                }
                self.close_inbound(k, registry, peer.map(|_| reason), out);
            }
        }
    }

    /// Reads what an inbound connection has: the handshake, then frames.
    /// `Ok(false)`: EOF.
    pub(super) fn inbound_io(
        &mut self,
        k: usize,
        hangup: bool,
        registry: &Registry,
        out: &mut Vec<PeerInput>,
    ) -> Result<bool, String> {
        loop {
            let c = &mut self.inbound[k];
            if !c.out.is_empty() || c.writable {
                let done = conn::write_from(&mut c.sock, &mut c.out).map_err(|e| describe(&e))?;
                conn::update_write_interest(
                    registry,
                    &mut c.sock,
                    Token(INBOUND_TOKEN_BASE + k),
                    &mut c.writable,
                    done,
                )
                .map_err(|e| describe(&e))?;
            }
            // Until it has authenticated, a connection is read exactly one
            // handshake message at a time: an unauthenticated peer cannot
            // make us buffer more than that.
            let limit = match c.state {
                InboundState::AwaitHello => auth::HELLO_LEN,
                InboundState::AwaitProof { .. } => auth::PROOF_LEN,
                InboundState::Up(_) => INBOUND_BUF_LIMIT,
            };
            let status =
                conn::read_via(&mut c.sock, &mut self.scratch, &mut c.inbuf, limit, !hangup)
                    .map_err(|e| describe(&e))?;
            match c.state {
                InboundState::AwaitHello => {
                    if let Some(hello) =
                        auth::decode_hello(&mut c.inbuf).map_err(|e| e.to_string())?
                    {
                        self.challenge(k, hello)?;
                        continue; // send the challenge, read the proof
                    }
                }
                InboundState::AwaitProof { hello, nonce } => {
                    if let Some(proof) =
                        auth::decode_proof(&mut c.inbuf).map_err(|e| e.to_string())?
                    {
                        if !self.key.verify_dialer(&hello, &nonce, &proof) {
                            return Err(format!(
                                "authentication failed: claims to be member {} but does not \
                                 prove the cluster secret",
                                hello.from
                            ));
                        }
                        self.identify(k, hello, registry, out);
                        continue; // read frames
                    }
                }
                InboundState::Up(peer) => {
                    loop {
                        match codec::decode(&mut c.inbuf) {
                            Ok(None) => break,
                            Ok(Some(msg)) => {
                                if msg.from != peer || msg.to != self.me {
                                    return Err(format!(
                                        "message from {} to {} on the link of member {peer}",
                                        msg.from, msg.to
                                    ));
                                }
                                out.push(PeerInput::Message(own_payloads(msg)));
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    conn::shrink_if_idle(&mut c.inbuf);
                }
            }
            match status {
                ReadStatus::Drained => return Ok(true),
                ReadStatus::Eof => return Ok(false),
                ReadStatus::Full => {}
            }
        }
    }

    /// Checks a dialer's `Hello` for everything but the secret (its cluster,
    /// that it claims to be a member other than us, calling us, from that
    /// member's address) and answers with our `Challenge`.
    pub(super) fn challenge(&mut self, k: usize, hello: Hello) -> Result<(), String> {
        if hello.cluster_id != self.cluster_id {
            return Err(format!(
                "member {} of another cluster ({:016x}, ours is {:016x})",
                hello.from, hello.cluster_id, self.cluster_id
            ));
        }
        if hello.to != self.me {
            return Err(format!(
                "dialed member {}, but this is member {}",
                hello.to, self.me
            ));
        }
        if hello.from == self.me {
            return Err(format!("claims this member's own id {}", hello.from));
        }
        let c = &self.inbound[k];
        if !self.members.contains(&hello.from) {
            // A member not (yet) in this member's configuration gets a
            // link dialled back: a bounded number of them, so that a holder
            // of the secret cycling through ids cannot make this member
            // open sockets without end.
            let learned = self
                .outbound
                .iter()
                .filter(|o| !o.retired && !self.members.contains(&o.id))
                .count();
            let known = self
                .outbound
                .iter()
                .any(|o| o.id == hello.from && !o.retired);
            if !known && learned >= raft_proto::MAX_MEMBERS {
                return Err(format!(
                    "member {}: already {learned} links to members not in this member's \
                     configuration",
                    hello.from
                ));
            }
            // Its handshake names where it listens, and a member dials
            // from that IP.
            let ip = hello.listen.ip();
            if !ip.is_unspecified() && c.addr.ip() != ip {
                return Err(format!(
                    "member {} not in this member's configuration says it listens on {}, \
                     but connects from {}",
                    hello.from,
                    hello.listen,
                    c.addr.ip()
                ));
            }
        }
        let c = &mut self.inbound[k];
        if let Some(Some(ip)) = self.member_ips.get(&hello.from) {
            if c.addr.ip() != *ip {
                return Err(format!(
                    "claims to be member {}, whose peer_addr is on {ip}",
                    hello.from
                ));
            }
        }
        let nonce = auth::fresh_nonce();
        let ch = Challenge {
            from: self.me,
            nonce,
            mac: self.key.acceptor_mac(&hello, &nonce),
        };
        auth::encode_challenge(&ch, &mut c.out);
        c.state = InboundState::AwaitProof { hello, nonce };
        Ok(())
    }

    /// The dialer proved the secret: the connection becomes that peer's
    /// inbound link, replacing an older one.
    pub(super) fn identify(
        &mut self,
        k: usize,
        hello: Hello,
        registry: &Registry,
        out: &mut Vec<PeerInput>,
    ) {
        let peer = hello.from;
        let addr = self.inbound[k].addr;
        self.inbound[k].state = InboundState::Up(peer);
        if let Some(src) = self.sources.get_mut(&addr.ip()) {
            src.unidentified = src.unidentified.saturating_sub(1);
        }
        if let Some(old) = self.inbound_of.insert(peer, k) {
            if old != k && self.inbound.contains(old) {
                // The peer redialed; its old connection is dead or dying.
                self.close_inbound(old, registry, None, out);
            }
        }
        log::debug!("peer {peer} connected from {addr}");
        if !self.outbound.iter().any(|o| o.id == peer && !o.retired) {
            // A member this one's configuration does not name yet: answer
            // it on a link to where its handshake says it listens.
            log::info!(
                "member {peer}, not in this member's configuration, connected from {addr}: \
                 dialing back {}",
                hello.listen
            );
            let learned = Member {
                id: peer,
                peer_addr: hello.listen,
                client_addr: hello.listen,
                metrics_addr: None,
                peer_ip: None,
            };
            let slot = self.outbound.iter().position(|o| o.retired);
            let i = slot.unwrap_or(self.outbound.len());
            let o = Outbound::new(&learned, i, Instant::now());
            match slot {
                Some(i) => self.outbound[i] = o,
                None => self.outbound.push(o),
            }
        }
        // It is up, so a dial of ours waiting out its backoff may go now
        // (a member that was just added dials back at once).
        if let Some(o) = self
            .outbound
            .iter_mut()
            .find(|o| o.id == peer && !o.retired && o.phase == Phase::Idle)
        {
            o.deadline = o.deadline.min(Instant::now());
        }
    }

    /// Closes the inbound link of `peer`, if it has one, because of what
    /// arrived on it (a message the node reports as impossible). The peer
    /// redials with its backoff.
    pub fn close_link_from(
        &mut self,
        peer: NodeId,
        registry: &Registry,
        reason: String,
        out: &mut Vec<PeerInput>,
    ) {
        if let Some(&k) = self.inbound_of.get(&peer) {
            self.close_inbound(k, registry, Some(reason), out);
        }
    }

    /// Closes an inbound connection; with a reason, an identified link was
    /// lost and the node is told.
    pub(super) fn close_inbound(
        &mut self,
        k: usize,
        registry: &Registry,
        reason: Option<String>,
        out: &mut Vec<PeerInput>,
    ) {
        let mut c = self.inbound.remove(k);
        let _ = registry.deregister(&mut c.sock);
        match c.peer() {
            Some(peer) => {
                if self.inbound_of.get(&peer) == Some(&k) {
                    self.inbound_of.remove(&peer);
                    if let Some(reason) = reason {
                        out.push(PeerInput::LinkDown { peer, reason });
                    }
                    // A link dialled back to a member not in the
                    // configuration lives as long as its own link to us.
                    if !self.members.contains(&peer) {
                        for o in self.outbound.iter_mut().filter(|o| o.id == peer) {
                            if let Some(mut link) = o.link.take() {
                                let _ = registry.deregister(&mut link.sock);
                            }
                            o.phase = Phase::Idle;
                            o.retired = true;
                        }
                    }
                }
            }
            None => {
                if let Some(src) = self.sources.get_mut(&c.addr.ip()) {
                    src.unidentified = src.unidentified.saturating_sub(1);
                }
            }
        }
    }
}
