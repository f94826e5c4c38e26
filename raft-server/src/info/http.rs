//! The metrics endpoint: a small HTTP/1.0 server on the loop, bounded in
//! connections, request size and time, answering `GET /metrics`.

use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::conn::{self, ReadStatus};

/// HTTP connections at most; beyond it, the oldest is closed to make room,
/// so that idle connections can never keep a scrape out.
const MAX_HTTP_CONNS: usize = 16;

/// After `accept` failed (out of descriptors, say), when to try again; the
/// connections wait in the listen backlog.
const HTTP_ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Request bytes read at most.
const MAX_HTTP_REQUEST: usize = 8 * 1024;

/// A connection must send its request and take the response within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

struct HttpConn {
    sock: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    responded: bool,
    /// Accept time plus [`HTTP_TIMEOUT`]: the earliest is the oldest.
    deadline: Instant,
}

/// The `/metrics` endpoint: one request per connection, answered and closed.
pub struct MetricsServer {
    listener: TcpListener,
    listener_token: Token,
    token_base: usize,
    conns: Slab<HttpConn>,
    /// When to retry a failed `accept`.
    accept_retry_at: Option<Instant>,
}

impl MetricsServer {
    /// Registers the bound listener under `listener_token`; connections use
    /// tokens from `token_base`.
    pub fn new(
        mut listener: TcpListener,
        listener_token: Token,
        token_base: usize,
        registry: &Registry,
    ) -> io::Result<Self> {
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(MetricsServer {
            listener,
            listener_token,
            token_base,
            conns: Slab::new(),
            accept_retry_at: None,
        })
    }

    /// Whether this token is the endpoint's.
    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token
            || token
                .0
                .checked_sub(self.token_base)
                .is_some_and(|k| self.conns.contains(k))
    }

    /// Handles readiness; `render` produces the metrics text when a request
    /// is complete.
    pub fn ready(
        &mut self,
        token: Token,
        registry: &Registry,
        now: Instant,
        render: &mut dyn FnMut() -> String,
    ) {
        if token == self.listener_token {
            self.accept(registry, now);
            return;
        }
        let Some(k) = token.0.checked_sub(self.token_base) else {
            return;
        };
        let keep = match self.conns.get_mut(k) {
            Some(c) => serve(c, registry, Token(self.token_base + k), render).unwrap_or(false),
            None => return,
        };
        if !keep {
            let mut c = self.conns.remove(k);
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// Accepts every queued connection. At the cap the oldest connection is
    /// closed instead of the new one: a scraper's fresh connection is worth
    /// more than one that has been open longest (idle, or a slow reader).
    /// If `accept` fails, the connections stay queued and edge-triggered
    /// readiness will not report them again: retry on a timer.
    fn accept(&mut self, registry: &Registry, now: Instant) {
        let retrying = self.accept_retry_at.take().is_some();
        loop {
            match self.listener.accept() {
                Ok((mut sock, _)) => {
                    if self.conns.len() >= MAX_HTTP_CONNS {
                        self.close_oldest(registry);
                    }
                    let e = self.conns.vacant_entry();
                    if registry
                        .register(
                            &mut sock,
                            Token(self.token_base + e.key()),
                            Interest::READABLE,
                        )
                        .is_ok()
                    {
                        e.insert(HttpConn {
                            sock,
                            inbuf: BytesMut::new(),
                            out: BytesMut::new(),
                            responded: false,
                            deadline: now + HTTP_TIMEOUT,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if !retrying {
                        log::warn!(
                            "metrics: accept failed: {e}; retrying every {} ms",
                            HTTP_ACCEPT_RETRY.as_millis()
                        );
                    }
                    self.accept_retry_at = Some(now + HTTP_ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn close_oldest(&mut self, registry: &Registry) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.deadline)
            .map(|(k, _)| k);
        if let Some(k) = oldest {
            let mut c = self.conns.remove(k);
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// Closes connections past their deadline; retries a failed accept.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        if self.accept_retry_at.is_some_and(|at| now >= at) {
            self.accept(registry, now);
        }
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(k, _)| k)
            .collect();
        for k in expired {
            let mut c = self.conns.remove(k);
            let _ = registry.deregister(&mut c.sock);
        }
    }

    /// The earliest connection deadline or accept retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|(_, c)| c.deadline)
            .chain(self.accept_retry_at)
            .min()
    }

    /// Closes the listener and every connection.
    pub fn close_all(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        for mut c in self.conns.drain() {
            let _ = registry.deregister(&mut c.sock);
        }
    }
}

/// Reads the request, answers it once complete, writes. `Ok(false)`: done.
fn serve(
    c: &mut HttpConn,
    registry: &Registry,
    token: Token,
    render: &mut dyn FnMut() -> String,
) -> io::Result<bool> {
    if !c.responded {
        let status = conn::read_into(&mut c.sock, &mut c.inbuf, MAX_HTTP_REQUEST)?;
        let complete = c.inbuf.windows(4).any(|w| w == b"\r\n\r\n");
        if !complete && status == ReadStatus::Drained {
            return Ok(true);
        }
        const TEXT: &str = "text/plain; charset=utf-8";
        // What prometheus-client writes; Prometheus negotiates it.
        const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        let (code, ctype, body) = if !complete {
            ("400 Bad Request", TEXT, "bad request\n".to_string())
        } else if c.inbuf.starts_with(b"GET /metrics ") || c.inbuf.starts_with(b"GET /metrics?") {
            ("200 OK", OPENMETRICS, render())
        } else {
            ("404 Not Found", TEXT, "try GET /metrics\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.out.extend_from_slice(head.as_bytes());
        c.out.extend_from_slice(body.as_bytes());
        c.responded = true;
    }
    if conn::write_from(&mut c.sock, &mut c.out)? {
        return Ok(false);
    }
    registry.reregister(&mut c.sock, token, Interest::WRITABLE)?;
    Ok(true)
}
