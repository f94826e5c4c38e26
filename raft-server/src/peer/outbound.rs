//! Outbound links: dialing a member, the dialer's side of the handshake
//! (verifying the acceptor's proof), sending, and going down with a
//! backoff before the next dial.

use super::*;

impl PeerSet {
    pub(super) fn dial(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        let o = &mut self.outbound[i];
        debug_assert_eq!(o.phase, Phase::Idle);
        o.connect_attempts += 1;
        match connect(o.addr, self.bind_ip) {
            Ok(mut sock) => {
                if let Err(e) =
                    registry.register(&mut sock, o.token, Interest::READABLE | Interest::WRITABLE)
                {
                    self.fail_outbound(i, registry, now, describe(&e), out);
                    return;
                }
                // A fresh nonce per connection: a recorded handshake is
                // worthless on the next one.
                let hello = Hello {
                    cluster_id: self.cluster_id,
                    from: self.me,
                    to: o.id,
                    listen: self.listen,
                    nonce: auth::fresh_nonce(),
                };
                let mut out = BytesMut::with_capacity(auth::HELLO_LEN);
                auth::encode_hello(&hello, &mut out);
                o.hello = Some(hello);
                o.link = Some(Link {
                    sock,
                    out,
                    inbuf: BytesMut::new(),
                    writable: true,
                });
                o.phase = Phase::Connecting;
                o.deadline = now + self.timing.connect_timeout;
            }
            Err(e) => self.fail_outbound(i, registry, now, describe(&e), out),
        }
    }

    pub(super) fn outbound_ready(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) {
        if let Err(reason) = self.outbound_io(i, registry, now, out) {
            self.fail_outbound(i, registry, now, reason, out);
        }
    }

    /// Advances an outbound link as far as its socket allows. `Err` carries
    /// the reason to take it down.
    pub(super) fn outbound_io(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        out: &mut Vec<PeerInput>,
    ) -> Result<(), String> {
        let handshake_timeout = self.timing.handshake_timeout;
        let key = &self.key;
        let o = &mut self.outbound[i];
        let Some(link) = o.link.as_mut() else {
            return Ok(()); // a stale event for a closed socket
        };
        if o.phase == Phase::Connecting {
            // mio's recipe for a non-blocking connect: an error, or an
            // address once connected; NotConnected is a spurious wake-up.
            match link.sock.take_error() {
                Ok(Some(e)) | Err(e) => return Err(describe(&e)),
                Ok(None) => {}
            }
            match link.sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(describe(&e)),
            }
            let _ = link.sock.set_nodelay(true);
            o.phase = Phase::Handshaking;
            o.deadline = now + handshake_timeout;
        }
        link.flush(registry, o.token).map_err(|e| describe(&e))?;

        // The acceptor sends its `Challenge` and then nothing: after it
        // only EOF or an error is expected on this socket.
        // One byte more than the `Challenge`, so that `Full` means extra data.
        let status = conn::read_into(&mut link.sock, &mut link.inbuf, auth::CHALLENGE_LEN + 1)
            .map_err(|e| describe(&e))?;
        if o.phase == Phase::Handshaking {
            match auth::decode_challenge(&mut link.inbuf) {
                Ok(None) => {}
                Err(e) => return Err(format!("bad handshake: {e}")),
                Ok(Some(ch)) => {
                    let hello = o.hello.expect("a Hello was sent on this connection");
                    if ch.from != o.id {
                        return Err(format!(
                            "{} answered as member {}, expected member {} (check the cluster file)",
                            o.addr, ch.from, o.id
                        ));
                    }
                    if !key.verify_acceptor(&hello, &ch) {
                        return Err(format!(
                            "authentication failed: {} does not prove the cluster secret \
                             (check secret_file on both members)",
                            o.addr
                        ));
                    }
                    let proof = Proof {
                        mac: key.dialer_mac(&hello, &ch.nonce),
                    };
                    auth::encode_proof(&proof, &mut link.out);
                    // Frames queued from now on follow the proof on the wire.
                    link.flush(registry, o.token).map_err(|e| describe(&e))?;
                    o.phase = Phase::Up;
                    o.attempt = 0;
                    match o.health {
                        Health::Starting => log::info!("peer {} ({}) connected", o.id, o.addr),
                        Health::Down {
                            since,
                            failures,
                            was_up,
                            ..
                        } => log::info!(
                            "peer {} ({}) {} after {:.1} s ({failures} failed attempts)",
                            o.id,
                            o.addr,
                            if was_up { "is back" } else { "connected" },
                            now.saturating_duration_since(since).as_secs_f64()
                        ),
                        Health::Up { .. } => {}
                    }
                    o.health = Health::Up { since: now };
                    out.push(PeerInput::LinkUp(o.id));
                }
            }
        }
        if o.phase == Phase::Up && !link.inbuf.is_empty() {
            return Err(format!(
                "{} unexpected bytes after the handshake",
                link.inbuf.len()
            ));
        }
        match status {
            ReadStatus::Eof if o.phase == Phase::Handshaking => Err(
                "connection closed during the handshake (refused by the peer: see its log)".into(),
            ),
            ReadStatus::Eof => Err("connection closed by peer".into()),
            ReadStatus::Full if o.phase == Phase::Up => {
                Err("unexpected data after the handshake".into())
            }
            _ => Ok(()),
        }
    }

    /// Drops the outbound socket, tells the node if the link was up, logs
    /// the change of reachability, and schedules the redial.
    pub(super) fn fail_outbound(
        &mut self,
        i: usize,
        registry: &Registry,
        now: Instant,
        reason: String,
        out: &mut Vec<PeerInput>,
    ) {
        let delay = self.timing.backoff(self.outbound[i].attempt, &mut self.rng);
        let backoff_max = self.timing.backoff_max;
        let o = &mut self.outbound[i];
        o.hello = None;
        if let Some(mut link) = o.link.take() {
            let _ = registry.deregister(&mut link.sock);
        }
        if o.phase == Phase::Up {
            out.push(PeerInput::LinkDown {
                peer: o.id,
                reason: reason.clone(),
            });
        }
        o.phase = Phase::Idle;
        o.attempt = o.attempt.saturating_add(1);
        o.connect_failures += 1;
        o.deadline = now + delay;
        match o.health {
            Health::Starting => {
                log::info!(
                    "peer {} ({}) not reachable yet: {reason}; retrying with backoff up to {} ms",
                    o.id,
                    o.addr,
                    backoff_max.as_millis()
                );
                o.health = Health::Down {
                    since: now,
                    failures: 1,
                    last_summary: now,
                    was_up: false,
                };
            }
            Health::Up { since } => {
                log::warn!(
                    "peer {} ({}) unreachable: {reason} (was up for {:.1} s); retrying with backoff up to {} ms",
                    o.id,
                    o.addr,
                    now.saturating_duration_since(since).as_secs_f64(),
                    backoff_max.as_millis()
                );
                o.health = Health::Down {
                    since: now,
                    failures: 1,
                    last_summary: now,
                    was_up: true,
                };
            }
            Health::Down {
                since,
                ref mut failures,
                ref mut last_summary,
                ..
            } => {
                *failures += 1;
                if now.saturating_duration_since(*last_summary) >= SUMMARY_INTERVAL {
                    *last_summary = now;
                    log::warn!(
                        "peer {} ({}) still unreachable after {:.0} s ({} attempts; last: {reason})",
                        o.id,
                        o.addr,
                        now.saturating_duration_since(since).as_secs_f64(),
                        failures
                    );
                }
            }
        }
    }
}

/// A non-blocking connect to `addr` from `bind_ip` (port 0), so that a member
/// is seen by its peers at its own address.
fn connect(addr: SocketAddr, bind_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(ip) = bind_ip {
        if ip.is_ipv4() == addr.is_ipv4() {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}
