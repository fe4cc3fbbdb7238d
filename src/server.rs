//! Start-up and shutdown: bind every listener, build one [`Core`] per
//! worker thread, serve until the shutdown future completes.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};

use crate::auth::{Credentials, NonceIssuer};
use crate::config::{Config, Steering};
use crate::core::{Core, CoreConfig, Quotas};
use crate::io::ports::RelayPorts;
use crate::io::{Shared, Worker, net};
use crate::policy::PeerPolicy;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {transport} listener {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no listener could be bound")]
    NoListener,
    #[error("no relay address: both relay.address-ipv4 and relay.address-ipv6 are unusable")]
    NoRelayAddress,
    #[error(
        "relay.steering = \"on\" but BPF sk_lookup cannot be attached ({0}); it needs Linux 5.9+ with CAP_BPF and CAP_NET_ADMIN"
    )]
    Steering(std::io::Error),
    #[error("worker thread failed: {0}")]
    Worker(std::io::Error),
}

/// What the operator asks of a running server (signals map onto these).
#[derive(Debug)]
pub enum Control {
    /// Swap in a new configuration (SIGHUP); live allocations are kept.
    Reload(Box<Config>),
    /// Stop taking allocations, let live ones finish (SIGTERM).
    Drain,
    /// Close everything now (SIGINT, or a second SIGTERM).
    Stop,
}

/// The phase a server is in; workers watch it.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub config: Arc<CoreConfig>,
    pub draining: bool,
    pub stopping: bool,
}

/// A server whose sockets are bound, ready to [`Server::run`].
pub struct Server {
    config: Config,
    /// Per worker: its UDP and TCP listener sockets.
    sockets: Vec<(Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>)>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    admin: std::net::TcpListener,
    relay: (Option<IpAddr>, Option<IpAddr>),
    own_ips: Vec<IpAddr>,
    nonce_key: [u8; 32],
    core_config: Arc<CoreConfig>,
    quotas: Arc<Quotas>,
    shared: Arc<Shared>,
}
impl Server {
    /// Bind every listener (port 0 is allowed: workers share the port the
    /// first bind got) and prepare the workers.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let best_effort = config.listen_best_effort;
        let udp_bind = |a| net::udp_listener(a, config.socket_buffer_bytes);
        let (udp_addrs, udp) = bind_all(&config.listen_udp, workers, best_effort, "udp", udp_bind)?;
        let (tcp_addrs, tcp) = bind_all(
            &config.listen_tcp,
            workers,
            best_effort,
            "tcp",
            net::tcp_listener,
        )?;
        if let Some(s) = udp.first().and_then(|w| w.first()) {
            let granted = net::recv_buffer(s);
            if granted < config.socket_buffer_bytes {
                tracing::warn!(
                    asked = config.socket_buffer_bytes,
                    granted,
                    "UDP listener buffers are capped by net.core.rmem_max/wmem_max, so \
                     bursts drop packets: raise them (deploy/sysctl/90-tern.conf) or run \
                     with CAP_NET_ADMIN"
                );
            }
        }
        let sockets: Vec<_> = udp.into_iter().zip(tcp).collect();
        if udp_addrs.is_empty() && tcp_addrs.is_empty() {
            return Err(ServerError::NoListener);
        }
        let v4 = net::resolve_relay(config.relay_ipv4, true);
        let v6 = net::resolve_relay(config.relay_ipv6, false);
        if v4.is_none() && v6.is_none() {
            return Err(ServerError::NoRelayAddress);
        }
        let ports = RelayPorts::new(v4, v6, config.relay_ports);
        let mut own_ips: Vec<IpAddr> = net::interface_addresses();
        own_ips.extend(udp_addrs.iter().chain(&tcp_addrs).map(SocketAddr::ip));
        let nonce_key: [u8; 32] = rand::random();
        let core_config = Arc::new(core_config(&config, v4, v6, own_ips.clone(), nonce_key));
        let admin = std::net::TcpListener::bind(config.admin_listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServerError::Bind {
                transport: "admin http",
                addr: config.admin_listen,
                source,
            })?;
        let mut shared = Shared::new(
            ports,
            workers,
            config.max_tcp_connections,
            config.limits.max_allocations,
            config.tcp_idle_timeout,
        );
        shared.socket_buffer_bytes = config.socket_buffer_bytes;
        if config.relay_steering != Steering::Off {
            let errors = shared.steer();
            let families: Vec<&str> = crate::io::FAMILIES
                .into_iter()
                .zip(&shared.steering)
                .filter_map(|(f, s)| s.as_ref().map(|_| f))
                .collect();
            if !families.is_empty() {
                tracing::info!(
                    families = %families.join(","),
                    "relay receive steering on (BPF sk_lookup)"
                );
            }
            if let Some(e) = errors.into_iter().next() {
                if config.relay_steering == Steering::On {
                    return Err(ServerError::Steering(e));
                }
                tracing::info!(
                    error = %e,
                    "relay receive steering (BPF sk_lookup) unavailable, each relay socket is read on its own: it needs Linux 5.9+ with CAP_BPF and CAP_NET_ADMIN (relay.steering = \"off\" silences this)"
                );
            }
        }
        let shared = Arc::new(shared);
        shared
            .max_tcp_connections_per_ip
            .store(config.max_tcp_connections_per_ip, Ordering::Relaxed);
        Ok(Self {
            config,
            sockets,
            udp_addrs,
            tcp_addrs,
            admin,
            relay: (v4, v6),
            own_ips,
            nonce_key,
            core_config,
            quotas: Arc::new(Quotas::default()),
            shared,
        })
    }

    /// The bound UDP listener addresses (with their real ports).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The bound TCP listener addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The relay IPs in use, per family.
    pub fn relay_addresses(&self) -> (Option<IpAddr>, Option<IpAddr>) {
        self.shared.ports.addresses()
    }

    /// The configuration being served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters and gauges shared with the workers (for metrics and tests).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serve until `shutdown` completes, then close every allocation.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stop = async move {
            shutdown.await;
            let _ = tx.send(Control::Stop).await;
        };
        let (_, result) = tokio::join!(stop, self.run_with(rx));
        result
    }

    /// Serve, obeying `control`: reload, drain, stop. Returns when stopped
    /// (or when `control` closes).
    pub async fn run_with(
        mut self,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<(), ServerError> {
        let state = WorkerState {
            config: Arc::clone(&self.core_config),
            draining: false,
            stopping: false,
        };
        let (tx, rx) = watch::channel(state);
        let threads = self.spawn_workers(&rx)?;
        let admin =
            tokio::net::TcpListener::from_std(self.admin.try_clone().map_err(ServerError::Worker)?)
                .map_err(ServerError::Worker)?;
        let admin_task = tokio::spawn(crate::admin::serve(admin, Arc::clone(&self.shared)));
        self.wait_until_serving().await;
        tracing::info!(
            udp = ?self.udp_addrs,
            tcp = ?self.tcp_addrs,
            admin = ?self.admin_addr(),
            workers = threads.len(),
            "tern serving"
        );
        crate::notify::notify("READY=1");
        let watchdog = crate::notify::watchdog_interval().map(|every| {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if shared.healthy(crate::admin::HEALTH_WINDOW) {
                        crate::notify::notify("WATCHDOG=1");
                    }
                }
            })
        });
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            let drained = async {
                match drain_deadline {
                    Some(deadline) => {
                        let mut poll = tokio::time::interval(Duration::from_millis(250));
                        loop {
                            poll.tick().await;
                            // The quota count is exact at every moment; the
                            // per-worker gauges lag by up to a tick.
                            if self.quotas.total() == 0 || tokio::time::Instant::now() >= deadline {
                                return;
                            }
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = control.recv() => match msg {
                    Some(Control::Reload(config)) => self.reload(*config, &tx),
                    Some(Control::Drain) if drain_deadline.is_none() => {
                        tracing::info!(timeout_seconds = self.config.drain_timeout.as_secs(), "draining");
                        crate::notify::notify("STOPPING=1");
                        self.shared.ready.store(false, Ordering::Relaxed);
                        tx.send_modify(|s| s.draining = true);
                        drain_deadline = Some(tokio::time::Instant::now() + self.config.drain_timeout);
                    }
                    Some(Control::Drain | Control::Stop) | None => break,
                },
                () = drained => {
                    tracing::info!(left = self.quotas.total(), "drain finished");
                    break;
                }
            }
        }
        tracing::info!("shutting down");
        crate::notify::notify("STOPPING=1");
        self.shared.ready.store(false, Ordering::Relaxed);
        tx.send_modify(|s| s.stopping = true);
        admin_task.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        let mut result = Ok(());
        for (thread, done) in threads {
            let _ = done.await;
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(ServerError::Worker(e)),
                Err(_) => {
                    result = Err(ServerError::Worker(std::io::Error::other(
                        "worker panicked",
                    )))
                }
            }
        }
        result
    }

    fn spawn_workers(
        &mut self,
        rx: &watch::Receiver<WorkerState>,
    ) -> Result<Vec<WorkerThread>, ServerError> {
        let mut threads = Vec::new();
        for (index, (udp, tcp)) in std::mem::take(&mut self.sockets).into_iter().enumerate() {
            let core = Core::new(
                Arc::clone(&self.core_config),
                Arc::clone(&self.quotas),
                u16::try_from(index).unwrap_or(u16::MAX),
                rand::random(),
                self.shared.started,
            );
            let shared = Arc::clone(&self.shared);
            let rx = rx.clone();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("tern-worker-{index}"))
                .spawn(move || {
                    let result = worker_thread(index, core, shared, udp, tcp, rx);
                    let _ = done_tx.send(());
                    result
                })
                .map_err(ServerError::Worker)?;
            threads.push((thread, done_rx));
        }
        Ok(threads)
    }

    /// Wait until every worker's loop has turned once, then mark ready.
    async fn wait_until_serving(&self) {
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        while !self
            .shared
            .last_tick_ms
            .iter()
            .all(|t| t.load(Ordering::Relaxed) > 0)
        {
            poll.tick().await;
        }
        self.shared.ready.store(true, Ordering::Relaxed);
    }

    /// Apply a new configuration: credentials, peer policy, limits and
    /// lifetimes change at once; listeners, relay addresses and workers need
    /// a restart.
    fn reload(&mut self, new: Config, tx: &watch::Sender<WorkerState>) {
        let old = &self.config;
        let needs_restart = [
            (
                "listen",
                old.listen_udp != new.listen_udp || old.listen_tcp != new.listen_tcp,
            ),
            (
                "relay",
                old.relay_ipv4 != new.relay_ipv4
                    || old.relay_ipv6 != new.relay_ipv6
                    || old.relay_ports != new.relay_ports
                    || old.relay_steering != new.relay_steering,
            ),
            ("workers", old.workers != new.workers),
            ("admin.listen", old.admin_listen != new.admin_listen),
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
            .max_tcp_connections
            .store(new.max_tcp_connections, Ordering::Relaxed);
        self.shared
            .max_tcp_connections_per_ip
            .store(new.max_tcp_connections_per_ip, Ordering::Relaxed);
        self.shared
            .max_allocations
            .store(new.limits.max_allocations, Ordering::Relaxed);
        tx.send_modify(|s| s.config = Arc::clone(&cfg));
        self.core_config = cfg;
        tracing::info!(source = %new.source, "configuration reloaded");
        self.config = new;
    }
}

type WorkerThread = (
    std::thread::JoinHandle<std::io::Result<()>>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Bind every address in `addrs` once per worker. Returns the bound
/// addresses and, per worker, its sockets. With `best_effort` an address that
/// cannot be bound is skipped with a warning.
fn bind_all<S: LocalAddr>(
    addrs: &[SocketAddr],
    workers: usize,
    best_effort: bool,
    transport: &'static str,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
) -> Result<(Vec<SocketAddr>, Vec<Vec<S>>), ServerError> {
    let mut bound = Vec::new();
    let mut per_worker: Vec<Vec<S>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        match bind_for_workers(*addr, workers, &bind) {
            Ok((actual, socks)) => {
                bound.push(actual);
                for (w, s) in socks.into_iter().enumerate() {
                    per_worker[w].push(s);
                }
            }
            Err(e) if best_effort => {
                tracing::warn!(%addr, error = %e, "{transport} listener skipped")
            }
            Err(source) => {
                return Err(ServerError::Bind {
                    transport,
                    addr: *addr,
                    source,
                });
            }
        }
    }
    Ok((bound, per_worker))
}

/// Bind one socket per worker on `addr`; with port 0, the first socket's
/// port is reused for the others.
fn bind_for_workers<S>(
    addr: SocketAddr,
    workers: usize,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
) -> std::io::Result<(SocketAddr, Vec<S>)>
where
    S: LocalAddr,
{
    let first = bind(addr)?;
    let actual = first.local()?;
    let mut socks = vec![first];
    for _ in 1..workers {
        socks.push(bind(actual)?);
    }
    Ok((actual, socks))
}

/// Sockets that can tell their bound address.
trait LocalAddr {
    fn local(&self) -> std::io::Result<SocketAddr>;
}
impl LocalAddr for std::net::UdpSocket {
    fn local(&self) -> std::io::Result<SocketAddr> {
        self.local_addr()
    }
}
impl LocalAddr for std::net::TcpListener {
    fn local(&self) -> std::io::Result<SocketAddr> {
        self.local_addr()
    }
}

fn worker_thread(
    index: usize,
    core: Core,
    shared: Arc<Shared>,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    state: watch::Receiver<WorkerState>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let worker = Worker::new(index, core, shared);
    let result = local.block_on(&rt, worker.run(udp, tcp, state));
    // Dropping the LocalSet cancels the worker's remaining tasks.
    drop(local);
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

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
        nonces: NonceIssuer::new(nonce_key, config.nonce_lifetime.as_secs()),
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
    }
}

/// Bind and serve `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    Server::bind(config)?.run(shutdown).await
}
