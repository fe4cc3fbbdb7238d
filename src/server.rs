//! Start-up and shutdown: bind every listener, build one [`Core`] per
//! worker thread, serve until told to stop (a [`Control`] or the shutdown
//! future), then close every allocation.
//!
//! Start-up refuses an address another process already serves (each
//! listener group is probed with a bind that does not share the port
//! first), waits until every worker's loop has turned while watching for
//! a worker that fails and for a signal, and only then reports ready.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::auth::{Credentials, NonceIssuer};
use crate::config::Config;
use crate::core::{Core, CoreConfig, Quotas};
use crate::io::{Phase, Shared, StreamMode, WorkerState, net};
use crate::metrics::Board;
use crate::policy::PeerPolicy;
pub use crate::shutdown::Control;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener address could not be bound.
    #[error("cannot bind {transport} listener {addr}")]
    Bind {
        /// `udp`, `tcp`, `admin http` or `api http`.
        transport: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// Another process already serves a listener address.
    #[error(
        "{transport} listener {addr} is already in use by another process (is another tern or TURN server running?)"
    )]
    InUse {
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The address asked for.
        addr: SocketAddr,
    },
    /// No listener address could be bound at all.
    #[error("no listener could be bound")]
    NoListener,
    /// Neither relay family has a usable address.
    #[error("no relay address: both relay.address-ipv4 and relay.address-ipv6 are unusable")]
    NoRelayAddress,
    /// `relay.xdp` is native or generic and the fast path could not be
    /// attached.
    #[error(
        "relay.xdp = \"{0}\" but the XDP fast path cannot be attached: {1}; it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root) on Linux 5.12+, and for native mode a driver with XDP support"
    )]
    Xdp(&'static str, String),
    /// `relay.steering = "on"` and steering could not be attached.
    #[error(
        "relay.steering = \"on\" but BPF sk_lookup cannot be attached ({0}); it needs Linux 5.9+ with CAP_BPF and CAP_NET_ADMIN"
    )]
    Steering(std::io::Error),
    /// The allocation records file could not be opened.
    #[error("records file {0}: {1}")]
    Records(std::path::PathBuf, std::io::Error),
    /// The certificate could not be set up for TLS.
    #[error("tls: {0}")]
    Tls(rustls::Error),
    /// A worker thread could not start, failed or panicked.
    #[error("worker thread failed: {0}")]
    Worker(std::io::Error),
}

/// A server whose sockets are bound, ready to [`Server::run`].
pub struct Server {
    config: Config,
    /// Per worker: its UDP and stream listener sockets.
    sockets: WorkerSockets,
    udp_addrs: Vec<SocketAddr>,
    /// Addresses serving plain TCP (alone or beside TLS).
    tcp_addrs: Vec<SocketAddr>,
    /// Addresses serving TLS (alone or beside TCP).
    tls_addrs: Vec<SocketAddr>,
    admin: std::net::TcpListener,
    relay: (Option<IpAddr>, Option<IpAddr>),
    own_ips: Vec<IpAddr>,
    nonce_key: [u8; 32],
    core_config: Arc<CoreConfig>,
    quotas: Arc<Quotas>,
    shared: Arc<Shared>,
    board: Arc<Board>,
    /// The admin API's bearer tokens (reload swaps them).
    tokens: Arc<crate::admin::Tokens>,
    /// The allocation records writer, when records are on.
    records: Option<crate::records::Writer>,
    /// The credential endpoint, when `[api] listen` is set.
    api: Option<api::Endpoint>,
    /// Notified by the admin API's `POST /v1/drain`: drain as on SIGTERM.
    drain_asked: Arc<tokio::sync::Notify>,
}

/// The worker threads of a running server, and word of each one ending.
struct Workers {
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Each thread sends its index here as it ends.
    ended: mpsc::UnboundedReceiver<usize>,
}

/// How start-up ended.
enum Start {
    Serving,
    /// A stop (or drain) was asked for before every worker served.
    Stopped,
    /// A worker ended before every worker served.
    WorkerEnded,
}

impl Server {
    /// Bind every listener (port 0 is allowed: workers share the port the
    /// first bind got) and prepare the workers.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (udp_addrs, streams, sockets) = bind_listeners(&config, workers)?;
        let serving = |m: StreamMode| -> Vec<SocketAddr> {
            streams
                .iter()
                .filter(|(_, mode)| *mode == m || *mode == StreamMode::Both)
                .map(|(a, _)| *a)
                .collect()
        };
        let (tcp_addrs, tls_addrs) = (serving(StreamMode::Tcp), serving(StreamMode::Tls));
        let v4 = net::resolve_relay(config.relay_ipv4, true);
        let v6 = net::resolve_relay(config.relay_ipv6, false);
        if v4.is_none() && v6.is_none() {
            return Err(ServerError::NoRelayAddress);
        }
        let mut own_ips: Vec<IpAddr> = net::interface_addresses();
        own_ips.extend(
            udp_addrs
                .iter()
                .chain(&tcp_addrs)
                .chain(&tls_addrs)
                .map(SocketAddr::ip),
        );
        let nonce_key: [u8; 32] = rand::random();
        let core_config = Arc::new(core_config(&config, v4, v6, own_ips.clone(), nonce_key));
        let admin = bind_http(config.admin_listen, "admin http")?;
        let board = Arc::new(Board::new(workers));
        board.set_allocations_limit(config.limits.max_allocations);
        let tls = !tls_addrs.is_empty();
        let (shared, records) = data_path(&config, workers, (v4, v6), &board, tls)?;
        let tokens = crate::admin::Tokens::default();
        tokens.set(&config.admin_tokens);
        let mut server = Self {
            config,
            sockets,
            udp_addrs,
            tcp_addrs,
            tls_addrs,
            admin,
            relay: (v4, v6),
            own_ips,
            nonce_key,
            core_config,
            quotas: Arc::new(Quotas::default()),
            shared: Arc::new(shared),
            board,
            tokens: Arc::new(tokens),
            records,
            api: None,
            drain_asked: Arc::default(),
        };
        server.bind_api()?;
        Ok(server)
    }

    /// The bound UDP listener addresses (with their real ports).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The bound TCP listener addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The bound TLS listener addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The relay IPs in use, per family.
    pub fn relay_addresses(&self) -> (Option<IpAddr>, Option<IpAddr>) {
        self.shared.relay_addresses()
    }

    /// The configuration being served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state the workers share (e.g. which worker owns a relay).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// What the workers publish: readiness, health, counters (for
    /// metrics and tests).
    pub fn board(&self) -> Arc<Board> {
        Arc::clone(&self.board)
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serve until `shutdown` completes, then close every allocation.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (tx, rx) = mpsc::channel(1);
        let stop = async move {
            shutdown.await;
            let _ = tx.send(Control::Stop).await;
        };
        let (_, result) = tokio::join!(stop, self.run_with(rx));
        result
    }

    /// Serve, obeying `control`: reload, drain, stop. Returns when stopped
    /// (or when `control` closes); an error when a worker failed.
    pub async fn run_with(
        mut self,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<(), ServerError> {
        let (tx, rx) = watch::channel(WorkerState {
            config: Arc::clone(&self.core_config),
            phase: Phase::Serving,
        });
        let mut workers = self.spawn_workers(&rx)?;
        let admin =
            tokio::net::TcpListener::from_std(self.admin.try_clone().map_err(ServerError::Worker)?)
                .map_err(ServerError::Worker)?;
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            self.admin(workers.threads.len()),
        ));
        let api_task = self.spawn_api()?;
        let start = self
            .wait_until_serving(&mut workers, &mut control, &tx)
            .await;
        if let Start::Serving = start {
            tracing::info!(
                udp = ?self.udp_addrs,
                tcp = ?self.tcp_addrs,
                tls = ?self.tls_addrs,
                admin = ?self.admin_addr(),
                api = ?self.api_addr(),
                workers = workers.threads.len(),
                stun_only = self.config.stun_only,
                "tern serving"
            );
            crate::notify::notify("READY=1");
            let watchdog = crate::notify::watchdog_interval()
                .map(|every| tokio::spawn(watchdog(Arc::clone(&self.board), every)));
            self.serve(&mut workers, &mut control, &tx).await;
            if let Some(w) = watchdog {
                w.abort();
            }
        }
        tracing::info!("shutting down");
        crate::notify::notify("STOPPING=1");
        self.board.set_ready(false);
        tx.send_modify(|s| s.phase = Phase::Stopping);
        admin_task.abort();
        if let Some(t) = api_task {
            t.abort();
        }
        let ended = workers.join().await;
        // The workers' last records (shutdown) are queued: write them.
        if let Some(w) = self.records.take() {
            w.finish();
        }
        ended
    }

    /// Obey `control` until told to stop, a drain finishes or a worker
    /// ends.
    async fn serve(
        &mut self,
        workers: &mut Workers,
        control: &mut mpsc::Receiver<Control>,
        tx: &watch::Sender<WorkerState>,
    ) {
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                msg = control.recv() => match msg {
                    Some(Control::Reload(config)) => self.reload(*config, tx),
                    Some(Control::Drain) if drain_deadline.is_none() => {
                        drain_deadline = Some(self.start_drain(tx, "signal"));
                    }
                    Some(Control::Drain | Control::Stop) | None => return,
                },
                () = self.drain_asked.notified(), if drain_deadline.is_none() => {
                    drain_deadline = Some(self.start_drain(tx, "admin api"));
                }
                () = drained(&self.quotas, drain_deadline) => {
                    tracing::info!(left = self.quotas.total(), "drain finished");
                    return;
                }
                Some(index) = workers.ended.recv() => {
                    tracing::error!(worker = index, "a worker ended unexpectedly; stopping");
                    return;
                }
            }
        }
    }

    /// Wait until every worker's loop has turned once, then mark ready;
    /// meanwhile obey `control` and watch for a worker ending.
    async fn wait_until_serving(
        &mut self,
        workers: &mut Workers,
        control: &mut mpsc::Receiver<Control>,
        tx: &watch::Sender<WorkerState>,
    ) -> Start {
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                _ = poll.tick() => if self.board.all_ticked() {
                    self.board.set_ready(true);
                    return Start::Serving;
                },
                msg = control.recv() => match msg {
                    Some(Control::Reload(config)) => self.reload(*config, tx),
                    Some(Control::Drain | Control::Stop) | None => return Start::Stopped,
                },
                Some(index) = workers.ended.recv() => {
                    tracing::error!(worker = index, "a worker ended during start-up");
                    return Start::WorkerEnded;
                }
            }
        }
    }

    fn spawn_workers(&mut self, rx: &watch::Receiver<WorkerState>) -> Result<Workers, ServerError> {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut threads = Vec::new();
        for (index, (udp, tcp)) in std::mem::take(&mut self.sockets).into_iter().enumerate() {
            let core = Core::new(
                Arc::clone(&self.core_config),
                Arc::clone(&self.quotas),
                u16::try_from(index).unwrap_or(u16::MAX),
                rand::random(),
                self.board.started(),
            );
            let shared = Arc::clone(&self.shared);
            let rx = rx.clone();
            let ended_tx = ended_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tern-worker-{index}"))
                .spawn(move || {
                    let result = crate::io::run(index, core, shared, udp, tcp, rx)
                        .map_err(|e| std::io::Error::new(e.kind(), format!("worker {index}: {e}")));
                    let _ = ended_tx.send(index);
                    result
                })
                .map_err(ServerError::Worker)?;
            threads.push(thread);
        }
        Ok(Workers { threads, ended })
    }

    /// Apply a new configuration: credentials, peer policy, limits,
    /// trusted proxies and lifetimes change at once; listeners, relay addresses and workers need
    /// a restart.
    fn reload(&mut self, new: Config, tx: &watch::Sender<WorkerState>) {
        let old = &self.config;
        let needs_restart = [
            (
                "listen",
                old.listen_udp != new.listen_udp
                    || old.listen_tcp != new.listen_tcp
                    || old.listen_tls != new.listen_tls,
            ),
            ("tls", old.tls.is_some() != new.tls.is_some()),
            (
                "relay",
                old.relay_ipv4 != new.relay_ipv4
                    || old.relay_ipv6 != new.relay_ipv6
                    || old.relay_ports != new.relay_ports
                    || old.relay_steering != new.relay_steering
                    || old.xdp != new.xdp,
            ),
            ("workers", old.workers != new.workers),
            ("admin.listen", old.admin_listen != new.admin_listen),
            ("records", old.records.is_some() != new.records.is_some()),
            (
                "api.listen",
                old.api.as_ref().map(|a| (a.listen, a.tls))
                    != new.api.as_ref().map(|a| (a.listen, a.tls)),
            ),
        ];
        for (key, changed) in needs_restart {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the reloaded config but needs a restart; keeping the old value"
                );
            }
        }
        let cfg = Arc::new(core_config(
            &new,
            self.relay.0,
            self.relay.1,
            self.own_ips.clone(),
            self.nonce_key,
        ));
        self.shared
            .set_tcp_limits(new.max_tcp_connections, new.max_tcp_connections_per_ip);
        self.shared
            .set_proxy_protocol_from(new.proxy_protocol_from.clone());
        if let (Some(server), Some(t)) = (self.shared.tls(), &new.tls) {
            self.shared.present(&t.certificate);
            listeners::warn_tls(&new, &t.certificate);
            server.set_limits(t.max_handshakes, t.max_handshakes_per_ip);
            tracing::info!(
                serial = %t.certificate.serial,
                expires = %t.certificate.expiry(),
                "tls certificate loaded"
            );
        }
        self.board.set_allocations_limit(new.limits.max_allocations);
        self.tokens.set(&new.admin_tokens);
        self.reload_api(&new);
        if let (Some(w), Some(r)) = (&self.records, &new.records) {
            w.reopen(r);
        }
        tx.send_modify(|s| s.config = Arc::clone(&cfg));
        self.core_config = cfg;
        tracing::info!(source = %new.source, "configuration reloaded");
        self.config = new;
    }
}

impl Workers {
    /// Wait for every worker to end (they have been told to stop); the
    /// first failure is the result.
    async fn join(mut self) -> Result<(), ServerError> {
        for _ in 0..self.threads.len() {
            if self.ended.recv().await.is_none() {
                break;
            }
        }
        let mut result = Ok(());
        for thread in self.threads {
            let outcome = match thread.join() {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::other("worker panicked")),
            };
            if let (Ok(()), Err(e)) = (&result, outcome) {
                result = Err(ServerError::Worker(e));
            }
        }
        result
    }
}

/// Tell systemd the server is alive, every `every`, while every worker's
/// loop keeps turning.
async fn watchdog(board: Arc<Board>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if board.healthy(crate::admin::HEALTH_WINDOW) {
            crate::notify::notify("WATCHDOG=1");
        }
    }
}

/// A non-blocking listener for an HTTP server (`transport` names it in
/// the error).
fn bind_http(
    addr: SocketAddr,
    transport: &'static str,
) -> Result<std::net::TcpListener, ServerError> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ServerError::Bind {
            transport,
            addr,
            source,
        })
}

/// Per worker: its UDP and stream (TCP, TLS or both) listener sockets.
type WorkerSockets = listeners::WorkerSockets;

/// What the core needs from a configuration.
pub fn core_config(
    config: &Config,
    relay_v4: Option<IpAddr>,
    relay_v6: Option<IpAddr>,
    own: Vec<IpAddr>,
    nonce_key: [u8; 32],
) -> CoreConfig {
    let mut relay_ips: Vec<IpAddr> = [relay_v4, relay_v6].into_iter().flatten().collect();
    relay_ips.extend(config.external_ipv4.map(IpAddr::V4));
    relay_ips.extend(config.external_ipv6.map(IpAddr::V6));
    CoreConfig {
        credentials: Credentials::new(&config.realm, &config.users, &config.secrets),
        nonces: nonce_issuer(config, nonce_key),
        policy: PeerPolicy::new(
            config.peers_allow.clone(),
            config.peers_deny.clone(),
            relay_ips,
            own,
            config.relay_ports,
        ),
        software: config.software.clone(),
        limits: config.limits.clone(),
        external_v4: config.external_ipv4,
        external_v6: config.external_ipv6,
        alternate_server: config.alternate_server,
        stun_only: config.stun_only,
        records: config.records.as_ref().map(|r| r.interim),
    }
}

/// The nonce keys: the configured shared secrets (a fleet's), else this
/// process's random key.
fn nonce_issuer(config: &Config, random: [u8; 32]) -> NonceIssuer {
    let keys = if config.nonce_secrets.is_empty() {
        vec![random.to_vec()]
    } else {
        config
            .nonce_secrets
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    };
    NonceIssuer::with_keys(keys, config.nonce_lifetime.as_secs())
}

/// Bind and serve `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    Server::bind(config)?.run(shutdown).await
}

mod api;
mod drain;
mod listeners;
mod operator;
use drain::drained;
use listeners::{bind_listeners, data_path};
