//! Starting a member: binding the listeners (before the data dir is
//! touched, so a taken port fails fast), restoring the node and the store
//! from the data dir, capping clients below the descriptor limit, and the
//! start line in the log.

use super::*;

/// Descriptors kept for everything but client connections, on top of two
/// per member (an outbound and an inbound peer link each). The fixed needs
/// are about 40: stdio, the poll, the signal pipe, three listeners, the
/// data dir's log and lock files plus the two that saving hard state opens
/// (`meta.tmp`, the directory for its fsync), 8 unidentified inbound peer
/// connections, 16 metrics connections, and the one a refused client
/// briefly takes; the rest is slack. Clients are capped so that storage
/// never fails for want of a descriptor (which would stop the member).
const FD_RESERVE: usize = 64;

/// The member's listening sockets, bound before the data dir is touched so
/// that a bad or busy address leaves nothing on disk.
pub struct Listeners {
    peer: TcpListener,
    client: TcpListener,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the peer, client and (if configured) metrics addresses.
    pub fn bind(settings: &Settings) -> Result<Listeners, StartError> {
        let me = settings.me();
        let bind = |what: &'static str, addr: SocketAddr| {
            TcpListener::bind(addr).map_err(|source| StartError::Bind {
                config: settings.config_path.display().to_string(),
                what,
                addr,
                source,
            })
        };
        Ok(Listeners {
            peer: bind("peer_addr", me.peer_addr)?,
            client: bind("client_addr", me.client_addr)?,
            metrics: settings
                .metrics_addr
                .map(|a| bind("metrics_addr", a))
                .transpose()?,
        })
    }
}

/// The node and the store as the data dir left them.
struct Restored {
    node: Node,
    kv: Kv,
    snapshot: Option<SnapshotMeta>,
    /// The last entry the store holds (the snapshot's).
    last_applied: (LogIndex, Term),
    /// The configuration known committed.
    committed_membership: Option<Membership>,
}

/// Starts the node from the recovered state, and the store from the
/// snapshot; the members' addresses from then on come from the
/// configuration in force, not from the cluster file.
fn restore(
    settings: &mut Settings,
    storage: &Storage,
    recovered: Recovered,
    seed: u64,
) -> Result<Restored, StartError> {
    // The store starts from the snapshot, and the log after it is
    // applied again (the node hands out the applies).
    // Its payload starts with the configuration at its last index.
    let (kv, snapshot) = match recovered.snapshot {
        None => (Kv::new(), None),
        Some(info) => {
            let (kv, membership) = load_snapshot(storage, info).map_err(StartError::Snapshot)?;
            let meta = SnapshotMeta {
                last_index: info.last_index,
                last_term: info.last_term,
                len: info.len,
                membership: Box::new(membership),
            };
            (kv, Some(meta))
        }
    };
    let last_applied = snapshot
        .as_ref()
        .map_or((LogIndex(0), Term(0)), |s| (s.last_index, s.last_term));
    let node = Node::new(
        settings.proto_config(seed),
        PersistentState {
            snapshot: snapshot.clone(),
            hard_state: recovered.hard_state,
            entries: recovered.entries,
            applied: last_applied.0,
        },
        Time::ZERO,
    )
    .map_err(StartError::Node)?;
    // The configuration in force lives in the log and the snapshot:
    // the cluster file only bootstrapped it (and gives this member's
    // own addresses).
    let committed_membership = node.membership_at(node.last_applied()).cloned();
    if !node.membership().voters.is_empty() {
        settings.join = false;
        let (members, unknown) =
            crate::members::members_of(node.membership(), &settings.members, settings.id);
        if !unknown.is_empty() {
            log::warn!("no address known for members {unknown:?}: not connecting to them");
        }
        settings.members = members;
    }
    Ok(Restored {
        node,
        kv,
        snapshot,
        last_applied,
        committed_membership,
    })
}

/// The start line: who, where, timing, the durable state and the seed.
fn log_start(
    settings: &Settings,
    me: &Member,
    node: &Node,
    kv: &Kv,
    snapshot: Option<&SnapshotMeta>,
    seed: u64,
) {
    log::info!(
        "member {} of cluster {:016x} ({} members): peers on {}, clients on {}{}; heartbeat {} ms, \
         election timeout {}-{} ms; term {}, {} log entries; PRNG seed {seed}",
        settings.id,
        settings.cluster_id,
        settings.members.len(),
        me.peer_addr,
        me.client_addr,
        settings.metrics_addr.map(|a| format!(", metrics on {a}")).unwrap_or_default(),
        settings.heartbeat.as_millis(),
        settings.election_timeout_min.as_millis(),
        settings.election_timeout_max.as_millis(),
        node.term(),
        node.last_log_index(),
    );
    if let Some(s) = snapshot {
        log::info!(
            "started from the snapshot at index {} (term {}, {} bytes, {} keys); log {}..={}",
            s.last_index,
            s.last_term,
            s.len,
            kv.len(),
            s.last_index.next(),
            node.last_log_index()
        );
    }
}

/// How many clients this member accepts, logged with the other client
/// limits at start.
fn client_limits(settings: &Settings) -> usize {
    let fd_limit = conn::fd_limit().ok();
    let max_clients = client_cap(fd_limit, settings.members.len());
    let limit = fd_limit.map_or("unknown".into(), |l| l.to_string());
    if max_clients < MAX_CLIENTS {
        log::warn!(
            "descriptor limit {limit}: at most {max_clients} clients (the rest is reserved for \
             storage and peers); raise the hard limit (`ulimit -Hn`) for up to {MAX_CLIENTS}"
        );
    }
    log::info!(
        "clients: at most {max_clients} (descriptor limit {limit}), {} MiB for all their \
         buffers, idle timeout {}",
        settings.client_memory_budget >> 20,
        settings
            .client_idle_timeout
            .map_or("off".into(), |t| format!("{} ms", t.as_millis()))
    );
    max_clients
}

/// Clients the member may accept with a soft descriptor limit of `fd_limit`
/// (unknown: assume enough) in a cluster of `members`: [`MAX_CLIENTS`],
/// or what the limit leaves after [`FD_RESERVE`] and the peer links.
fn client_cap(fd_limit: Option<u64>, members: usize) -> usize {
    let reserve = (FD_RESERVE + 2 * members) as u64;
    let available = fd_limit.map_or(u64::MAX, |l| l.saturating_sub(reserve));
    usize::try_from(available).map_or(MAX_CLIENTS, |a| a.min(MAX_CLIENTS))
}

impl Server {
    /// Takes over the bound listeners, starts the node from the recovered
    /// state and schedules the first dials.
    pub fn new(
        settings: Settings,
        listeners: Listeners,
        mut storage: Storage,
        recovered: Recovered,
    ) -> Result<Server, StartError> {
        let poll = Poll::new().map_err(StartError::Io)?;
        let me = settings.me().clone();
        let Listeners {
            peer: peer_listener,
            client: mut client_listener,
            metrics: metrics_listener,
        } = listeners;

        let start = Instant::now();
        let start_wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Seeded from the OS and logged (STYLE §4): a run's election timing
        // can be replayed in the simulator from this number.
        let seed: u64 = rand::random();
        let mut settings = settings;
        let Restored {
            node,
            kv,
            snapshot,
            last_applied,
            committed_membership,
        } = restore(&mut settings, &storage, recovered, seed)?;
        let registry = poll.registry();
        let snapshotter = Snapshotter::new(registry, HELPER_WAKER).map_err(StartError::Io)?;
        // A slow disk then delays what waits for durability, not the loop.
        let walker = Walker::new(snapshotter.waker()).map_err(StartError::Io)?;
        let sync_waker = snapshotter.waker();
        storage
            .sync_in_background(move || {
                let _ = sync_waker.wake();
            })
            .map_err(StartError::Io)?;
        let signals = ShutdownSignals::install(registry, SIGNALS).map_err(StartError::Io)?;
        registry
            .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            .map_err(StartError::Io)?;
        let metrics = metrics_listener
            .map(|l| MetricsServer::new(l, METRICS_LISTENER, METRICS_BASE, registry))
            .transpose()
            .map_err(StartError::Io)?;
        let peers = PeerSet::new(
            &settings,
            peer_listener,
            PEER_LISTENER,
            registry,
            start,
            seed,
        )
        .map_err(StartError::Io)?;

        let max_clients = client_limits(&settings);
        let budget = Budget::new(settings.client_memory_budget);
        log_start(&settings, &me, &node, &kv, snapshot.as_ref(), seed);
        Ok(Server {
            poll,
            settings,
            start,
            start_wall_ms,
            node,
            driver: Driver::new(),
            storage,
            kv,
            peers,
            client_listener,
            clients: Slab::new(),
            next_client_id: 0,
            limits: Limits::DEFAULT,
            max_clients,
            read_buf: vec![0u8; conn::READ_CHUNK].into_boxed_slice(),
            budget,
            budget_waiters: Vec::new(),
            client_timer: ClientTimer::new(start),
            accept_retry_at: None,
            metrics,
            signals,
            writes: BTreeMap::new(),
            changes: BTreeMap::new(),
            transfers: Vec::new(),
            join: None,
            led_since: None,
            leaving: None,
            committed_membership,
            reads: HashMap::new(),
            clock_waits: Vec::new(),
            sweep_in_flight: None,
            next_sweep_at: None,
            redrain: false,
            encode_arena: bytes::BytesMut::new(),
            next_read_id: 0,
            inputs: Vec::new(),
            dirty: Vec::new(),
            resume: Vec::new(),
            refusing: false,
            link_down_reason: HashMap::new(),
            peer_faults: HashMap::new(),
            counters: Counters::default(),
            auth_limiter: crate::acl::AuthLimiter::default(),
            no_leader_since: Some(Instant::now()),
            histograms: Histograms::new(),
            appended_at: VecDeque::new(),
            durable_pending: VecDeque::new(),
            last_applied,
            backlog: VecDeque::new(),
            loading: None,
            snapshotter,
            walker,
            turn: TurnTimer::new(start),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_capped_below_the_descriptor_limit() {
        // The common default soft limit: 1024 - 64 - 2 x 3.
        assert_eq!(client_cap(Some(1024), 3), 954);
        assert_eq!(client_cap(Some(128), 3), 58);
        // A limit below the reserve: no clients at all, storage first.
        assert_eq!(client_cap(Some(50), 3), 0);
        assert_eq!(client_cap(Some(1 << 20), 3), MAX_CLIENTS);
        assert_eq!(client_cap(None, 3), MAX_CLIENTS);
        assert_eq!(client_cap(Some(4096 + 64 + 2 * 64), 64), MAX_CLIENTS);
    }
}
