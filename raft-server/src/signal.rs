//! SIGTERM and SIGINT as readiness events on the poll, through
//! signal-hook's self-pipe, so that shutdown happens between loop turns and
//! never inside one.

use std::io;

use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

/// The shutdown signals, registered on a poll.
pub struct ShutdownSignals(Signals);

impl ShutdownSignals {
    /// Installs handlers for SIGTERM and SIGINT and registers them under
    /// `token`.
    pub fn install(registry: &Registry, token: Token) -> io::Result<ShutdownSignals> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        registry.register(&mut signals, token, Interest::READABLE)?;
        Ok(ShutdownSignals(signals))
    }

    /// The name of a signal received since the last call, if any.
    pub fn received(&mut self) -> Option<&'static str> {
        let mut name = None;
        for s in self.0.pending() {
            name = Some(match s {
                SIGTERM => "SIGTERM",
                SIGINT => "SIGINT",
                _ => "signal",
            });
        }
        name
    }
}
