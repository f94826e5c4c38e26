//! The driver's side of [`crate::acl`]: logging a connection in (with the
//! rate limits on failed attempts), checking each command against the
//! user's rules, and protected mode at accept.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::Server;
use crate::acl::{AuthError, MAX_AUTH_FAILURES_PER_CONNECTION};
use crate::client::WRONGPASS;
use crate::resp::Reply;

/// Redis' words for a client refused by protected mode, on one line.
pub const DENIED_PROTECTED: &str = "-DENIED Running in protected mode because no password is \
     set for the default user: only loopback clients are served. Set client_password_file \
     or users_file in the cluster file (or protected_mode = false to serve any address \
     without a password)\r\n";

impl Server {
    /// `AUTH [user] password`, or `HELLO ... AUTH user password`: logs
    /// connection `key` in, or says why not. A source address past its
    /// budget of failed attempts is refused without checking the password;
    /// a connection that failed too often is closed after the reply.
    pub(super) fn login(
        &mut self,
        key: usize,
        user: Option<&Bytes>,
        password: &[u8],
    ) -> Result<(), Reply> {
        let now = Instant::now();
        let ip = self.clients[key].addr.ip();
        if let Some(secs) = self.auth_limiter.check(ip, now) {
            self.counters.auth_rate_limited += 1;
            // Counted against the connection too: one that keeps trying
            // while its address is limited is closed like a guesser.
            self.count_connection_failure(key);
            return Err(Reply::Error(format!(
                "ERR too many failed AUTH attempts from {ip}; retry in {secs} s"
            )));
        }
        match self
            .settings
            .acl
            .authenticate(user.map(|u| &u[..]), password)
        {
            Ok(id) => {
                let c = &mut self.clients[key];
                c.user = Some(id);
                c.auth_failures = 0;
                Ok(())
            }
            Err(AuthError::NoPasswordConfigured) => Err(Reply::Error(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?"
                    .into(),
            )),
            Err(AuthError::WrongPass) => {
                self.counters.auth_failures += 1;
                self.auth_limiter.failed(ip, now);
                self.count_connection_failure(key);
                Err(Reply::Error(WRONGPASS.into()))
            }
        }
    }

    /// One more failed (or refused) `AUTH` on connection `key`; the
    /// connection closes after its reply at the limit.
    fn count_connection_failure(&mut self, key: usize) {
        let c = &mut self.clients[key];
        c.auth_failures += 1;
        if c.auth_failures >= MAX_AUTH_FAILURES_PER_CONNECTION {
            log::debug!(
                "client {}: {} failed AUTH attempts, closing",
                c.addr,
                c.auth_failures
            );
            c.close_after_replies();
        }
    }

    /// Whether connection `key` may run `req`; if not, answers it as
    /// Redis does (`NOAUTH` before a login, `NOPERM` for a command the
    /// user's rules deny) and a transaction it was queued in is doomed.
    pub(super) fn permitted(&mut self, key: usize, req: &[Bytes]) -> bool {
        let c = &mut self.clients[key];
        let Some(user) = c.user else {
            c.reply_now(Reply::Error("NOAUTH Authentication required.".into()));
            return false;
        };
        let acl = &self.settings.acl;
        let name = &req[0];
        if acl.allows(user, name, req.get(1).map(|b| &b[..])) {
            return true;
        }
        self.counters.commands_denied += 1;
        if let Some(tx) = &mut c.tx {
            tx.failed = true;
        }
        // Redis names a subcommand as `container|sub` where its rules
        // differ from the container's (`client|list`).
        let mut what = String::from_utf8_lossy(name).to_ascii_lowercase();
        if let Some(sub) = req.get(1).filter(|_| what == "client") {
            what = format!(
                "{what}|{}",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            );
        }
        c.reply_now(Reply::Error(format!(
            "NOPERM User {} has no permissions to run the '{what}' command",
            acl.name(user),
        )));
        false
    }

    /// Protected mode: a client from outside loopback while the default
    /// user takes no password is told why in one line and closed. Returns
    /// whether it was refused.
    pub(super) fn refuse_if_protected(
        &mut self,
        sock: &mut mio::net::TcpStream,
        addr: SocketAddr,
    ) -> bool {
        // `to_canonical`: an IPv4-mapped loopback (::ffff:127.0.0.1) is
        // loopback too.
        if !self.settings.acl.protected() || addr.ip().to_canonical().is_loopback() {
            return false;
        }
        if self.counters.clients_denied_protected == 0 {
            log::warn!(
                "client {addr}: refused by protected mode (no client password is set, so only \
                 loopback clients are served); further refusals are counted in INFO \
                 denied_protected_connections"
            );
        }
        self.counters.clients_denied_protected += 1;
        // A fresh socket takes a short write; what the client sent is
        // read first so that closing does not reset the reply away.
        let _ = std::io::Read::read(sock, &mut self.read_buf);
        let _ = sock.write(DENIED_PROTECTED.as_bytes());
        true
    }
}
