//! Start-up and shutdown: bind every listener, build one [`Core`] per
//! worker thread, serve until the shutdown future completes.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{Credentials, NonceIssuer};
use crate::config::Config;
use crate::core::{Core, CoreConfig, Quotas, Stats};
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
    #[error("worker thread failed: {0}")]
    Worker(std::io::Error),
}

/// A server whose sockets are bound, ready to [`Server::run`].
pub struct Server {
    config: Config,
    /// Per worker: its UDP and TCP listener sockets.
    sockets: Vec<(Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>)>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
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
        let mut sockets: Vec<_> = (0..workers).map(|_| (Vec::new(), Vec::new())).collect();
        let mut udp_addrs = Vec::new();
        for addr in &config.listen_udp {
            let bind = |a| net::udp_listener(a, config.socket_buffer_bytes);
            match bind_for_workers(*addr, workers, bind) {
                Ok((actual, socks)) => {
                    udp_addrs.push(actual);
                    for (w, s) in socks.into_iter().enumerate() {
                        sockets[w].0.push(s);
                    }
                }
                Err(e) if config.listen_best_effort => {
                    tracing::warn!(%addr, error = %e, "udp listener skipped")
                }
                Err(source) => {
                    return Err(ServerError::Bind {
                        transport: "udp",
                        addr: *addr,
                        source,
                    });
                }
            }
        }
        let mut tcp_addrs = Vec::new();
        for addr in &config.listen_tcp {
            match bind_for_workers(*addr, workers, net::tcp_listener) {
                Ok((actual, socks)) => {
                    tcp_addrs.push(actual);
                    for (w, s) in socks.into_iter().enumerate() {
                        sockets[w].1.push(s);
                    }
                }
                Err(e) if config.listen_best_effort => {
                    tracing::warn!(%addr, error = %e, "tcp listener skipped")
                }
                Err(source) => {
                    return Err(ServerError::Bind {
                        transport: "tcp",
                        addr: *addr,
                        source,
                    });
                }
            }
        }
        if udp_addrs.is_empty() && tcp_addrs.is_empty() {
            return Err(ServerError::NoListener);
        }
        let v4 = net::resolve_relay(config.relay_ipv4, true);
        let v6 = net::resolve_relay(config.relay_ipv6, false);
        if v4.is_none() && v6.is_none() {
            return Err(ServerError::NoRelayAddress);
        }
        let ports = RelayPorts::new(v4, v6, config.relay_ports);
        let mut own: Vec<IpAddr> = net::interface_addresses();
        own.extend(udp_addrs.iter().chain(&tcp_addrs).map(SocketAddr::ip));
        let core_config = Arc::new(core_config(&config, v4, v6, own, rand::random()));
        let shared = Arc::new(Shared {
            ports,
            tcp_connections: AtomicUsize::new(0),
            max_tcp_connections: config.max_tcp_connections,
            tcp_idle_timeout: config.tcp_idle_timeout,
            stats: (0..workers).map(|_| Mutex::new(Stats::default())).collect(),
            allocations: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        });
        Ok(Self {
            config,
            sockets,
            udp_addrs,
            tcp_addrs,
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

    /// Serve until `shutdown` completes, then close every allocation.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (tx, rx) = watch::channel(false);
        let mut threads = Vec::new();
        for (index, (udp, tcp)) in self.sockets.into_iter().enumerate() {
            let core = Core::new(
                Arc::clone(&self.core_config),
                Arc::clone(&self.quotas),
                u16::try_from(index).unwrap_or(u16::MAX),
                rand::random(),
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
        tracing::info!(
            udp = ?self.udp_addrs,
            tcp = ?self.tcp_addrs,
            workers = threads.len(),
            "tern serving"
        );
        shutdown.await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
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
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let worker = Worker::new(index, core, shared);
    let result = local.block_on(&rt, worker.run(udp, tcp, shutdown));
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
        default_lifetime: config.default_lifetime,
        max_lifetime: config.max_lifetime,
        max_allocations: config.max_allocations,
        max_allocations_per_user: config.max_allocations_per_user,
        max_permissions: config.max_permissions,
        max_channels: config.max_channels,
        legacy_channel_numbers: config.legacy_channel_numbers,
        strict_expiry: config.strict_expiry,
        external_v4: config.external_ipv4,
        external_v6: config.external_ipv6,
    }
}

/// Bind and serve `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    Server::bind(config)?.run(shutdown).await
}
