//! `raft-node`: one member of a Raft cluster serving a replicated key-value
//! store over RESP2.
//!
//! A thin, single-threaded driver around `raft-proto`'s sans-IO [`Node`]:
//! `main` parses the flags and the cluster file, opens the data dir and hands
//! everything to the mio event loop in [`server`]. Any problem before the
//! loop starts is one line on stderr and exit status 2, with nothing on disk
//! changed.
//!
//! [`Node`]: raft_proto::Node

mod acl;
mod auth;
mod client;
mod cmd;
mod config;
mod conn;
mod info;
mod kv;
mod members;
mod peer;
mod recovery;
mod resp;
mod server;
mod signal;
mod snapshots;
mod storage;
mod topology;
mod turn;
mod walks;

use std::io::Write;
use std::process::ExitCode;

use config::{Cli, Settings};
use server::{Listeners, Server};
use storage::{Storage, StorageOptions};

/// Exit status for bad configuration, an unusable data dir or corrupt state.
const EXIT_CONFIG: u8 = 2;
/// Exit status after a storage or poll failure at run time.
const EXIT_FATAL: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(Ok(help)) => {
            print!("{help}");
            return ExitCode::SUCCESS;
        }
        Err(Err(line)) => {
            eprintln!("{line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(cli.id);

    let settings = match Settings::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Everything that can be refused is checked before the data dir is
    // touched: the settings above, then every address we listen on. A bad
    // config or a busy port leaves nothing on disk.
    let listeners = match Listeners::bind(&settings) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (mut storage, mut recovered) = match Storage::open(
        &settings.data_dir,
        settings.cluster_id,
        settings.id,
        StorageOptions {
            segment_bytes: settings.segment_bytes,
            max_incoming_snapshot: settings.max_snapshot_bytes,
            ..StorageOptions::default()
        },
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    log::info!(
        "data dir {}: {}, term {}, {} log entries",
        settings.data_dir.display(),
        if recovered.first_boot {
            "first boot"
        } else {
            "restart"
        },
        recovered.hard_state.current_term,
        recovered.entries.len()
    );
    if cli.force_new_cluster {
        match recovery::force_new_cluster(&settings, &mut storage, &mut recovered) {
            Ok(line) => log::warn!("{line}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    match &settings.secret_path {
        Some(path) if !settings.peer_key.is_insecure() => {
            log::info!(
                "peer links authenticated with the secret in {}",
                path.display()
            );
            if settings.peer_key.key_len() < config::MIN_SECRET_LEN {
                log::warn!(
                    "the secret in {} is only {} bytes; use at least {} random bytes \
                     (head -c 32 /dev/urandom | base64)",
                    path.display(),
                    settings.peer_key.key_len(),
                    config::MIN_SECRET_LEN
                );
            }
        }
        _ => log::warn!(
            "insecure_peer_links = true: peer links are NOT authenticated; anyone who can \
             reach the peer port can pose as a member. For experiments only."
        ),
    }
    let acl = &settings.acl;
    if acl.protected() {
        log::info!(
            "clients: no password for the default user, so protected mode serves loopback \
             clients only (set client_password_file or users_file to serve others)"
        );
    } else if acl.initial_user().is_some() {
        log::warn!(
            "clients: protected_mode = false and no password for the default user: any \
             client that reaches {} may run every command, RAFT.ADD and FLUSHALL included",
            settings.me().client_addr
        );
    } else {
        log::info!(
            "clients: {} user(s); every connection must AUTH first",
            acl.users()
        );
    }
    // The default soft limit (often 1024) dates from select(2); clients are
    // capped below whatever limit is in force, keeping a reserve for
    // storage and peers, so take all the hard limit allows.
    match conn::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            log::info!("descriptor limit raised from {before} to {after} (the hard limit)")
        }
        Ok((_, now)) => log::info!("descriptor limit {now} (the hard limit)"),
        Err(e) => log::warn!("cannot raise the descriptor limit: {e}"),
    }
    let server = match Server::new(settings, listeners, storage, recovered) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// Logs to stderr as `2026-11-23T18:00:00.123Z INFO  [n1] message`: UTC
/// time with milliseconds, level, this member's id. `RUST_LOG` sets the
/// level, `info` by default.
fn init_logging(id: u64) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {:<5} [n{id}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
    // A panic (a broken invariant: the process ends) is logged like
    // everything else, with time and member id, not as a bare stderr line.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("fatal: {info}");
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default_hook(info);
        }
    }));
}
