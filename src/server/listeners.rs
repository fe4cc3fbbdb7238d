//! Binding the listeners: every address once per worker (one SO_REUSEPORT
//! group each), after checking that no other process serves it; and the
//! data path they feed: relay steering, the XDP fast path, TLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::ServerError;
use crate::config::{Config, Steering, Xdp, XdpSettings};
use crate::io::ports::RelayPorts;
use crate::io::xdp::{self, FastPath, Mode};
use crate::io::{IoSettings, Shared, StreamMode, TlsServer, net};
use crate::metrics::Board;
use crate::records;
use crate::tls::{Certificate, Tls};

/// Per worker: its UDP and stream (TCP, TLS or both) listener sockets.
pub(super) type WorkerSockets = Vec<(
    Vec<std::net::UdpSocket>,
    Vec<(std::net::TcpListener, StreamMode)>,
)>;

/// The stream listener addresses and what each serves: TCP, TLS, or
/// both on one socket when an address is listed under both.
fn stream_listeners(config: &Config) -> Vec<(SocketAddr, StreamMode)> {
    let mut out: Vec<(SocketAddr, StreamMode)> = config
        .listen_tcp
        .iter()
        .map(|a| (*a, StreamMode::Tcp))
        .collect();
    for a in &config.listen_tls {
        match out.iter_mut().find(|(b, _)| b == a) {
            Some((_, mode)) => *mode = StreamMode::Both,
            None => out.push((*a, StreamMode::Tls)),
        }
    }
    out
}

/// The bound UDP addresses, the bound stream addresses with what each
/// serves, and each worker's sockets.
pub(super) type Bound = (
    Vec<SocketAddr>,
    Vec<(SocketAddr, StreamMode)>,
    WorkerSockets,
);

/// Each address asked for with the one bound, and each worker's sockets.
type Group<S> = (Vec<(SocketAddr, SocketAddr)>, Vec<Vec<S>>);

/// Bind every UDP and TCP listener of `config` once per worker; warn when
/// the kernel caps the UDP buffers below what was asked.
pub(super) fn bind_listeners(config: &Config, workers: usize) -> Result<Bound, ServerError> {
    let best_effort = config.listen_best_effort;
    let udp_bind = |a| net::udp_listener(a, config.socket_buffer_bytes);
    let (udp_addrs, udp) = bind_all(&config.listen_udp, workers, best_effort, "udp", udp_bind)?;
    let streams = stream_listeners(config);
    let addrs: Vec<SocketAddr> = streams.iter().map(|(a, _)| *a).collect();
    let (tcp_addrs, tcp) = bind_all(&addrs, workers, best_effort, "tcp", net::tcp_listener)?;
    // Best effort may have skipped some: each bound one's mode is that of
    // the address it was asked for.
    let modes: Vec<StreamMode> = tcp_addrs
        .iter()
        .map(|(asked, _)| {
            streams
                .iter()
                .find(|(a, _)| a == asked)
                .map_or(StreamMode::Tcp, |(_, m)| *m)
        })
        .collect();
    let tcp: Vec<Vec<(std::net::TcpListener, StreamMode)>> = tcp
        .into_iter()
        .map(|socks| socks.into_iter().zip(modes.iter().copied()).collect())
        .collect();
    let tcp_addrs: Vec<(SocketAddr, StreamMode)> = tcp_addrs
        .into_iter()
        .map(|(_, bound)| bound)
        .zip(modes)
        .collect();
    let udp_addrs: Vec<SocketAddr> = udp_addrs.into_iter().map(|(_, bound)| bound).collect();
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
    if udp_addrs.is_empty() && tcp_addrs.is_empty() {
        return Err(ServerError::NoListener);
    }
    Ok((udp_addrs, tcp_addrs, udp.into_iter().zip(tcp).collect()))
}

/// Bind every address in `addrs` once per worker, after checking that no
/// other process serves it. Returns each address asked for with the one
/// bound (its real port) and, per worker,
/// its sockets. With `best_effort` an address that cannot be bound is
/// skipped with a warning; one in use is an error all the same.
fn bind_all<S: LocalAddr>(
    addrs: &[SocketAddr],
    workers: usize,
    best_effort: bool,
    transport: &'static str,
    bind: impl Fn(SocketAddr) -> std::io::Result<S>,
) -> Result<Group<S>, ServerError> {
    let mut bound = Vec::new();
    let mut per_worker: Vec<Vec<S>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        let tcp = transport == "tcp";
        match probe_and_bind(*addr, tcp, workers, &bind) {
            Ok((actual, socks)) => {
                bound.push((*addr, actual));
                for (w, s) in socks.into_iter().enumerate() {
                    per_worker[w].push(s);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(ServerError::InUse {
                    transport,
                    addr: *addr,
                });
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

/// Times a port-0 listener is probed and bound again after another process
/// took the port between the two.
const PORT_ZERO_RETRIES: usize = 8;

/// Check that no other process serves `addr`, then bind it once per worker.
/// With port 0 nobody else can serve the address asked for: an `AddrInUse`
/// means another process took the port the probe found before the group
/// bound it (the probe closes first), so probe again.
fn probe_and_bind<S: LocalAddr>(
    addr: SocketAddr,
    tcp: bool,
    workers: usize,
    bind: &impl Fn(SocketAddr) -> std::io::Result<S>,
) -> std::io::Result<(SocketAddr, Vec<S>)> {
    let attempt = || net::probe_unused(addr, tcp).and_then(|p| bind_for_workers(p, workers, bind));
    let mut group = attempt();
    for _ in 0..PORT_ZERO_RETRIES {
        match &group {
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                group = attempt();
            }
            _ => break,
        }
    }
    group
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

/// The state the workers share for `workers` workers relaying from
/// `relay` (IPv4, IPv6): the relay ports, socket settings and PROXY
/// sources, relay steering, the XDP fast path and TLS (`tls`: a TLS
/// listener is bound) as configured, and the records writer when records
/// are on.
pub(super) fn data_path(
    config: &Config,
    workers: usize,
    (v4, v6): (Option<IpAddr>, Option<IpAddr>),
    board: &Arc<Board>,
    tls: bool,
) -> Result<(Shared, Option<records::Writer>), ServerError> {
    let settings = IoSettings {
        workers,
        socket_buffer_bytes: config.socket_buffer_bytes,
        max_tcp_connections: config.max_tcp_connections,
        max_tcp_connections_per_ip: config.max_tcp_connections_per_ip,
        tcp_idle_timeout: config.tcp_idle_timeout,
    };
    let ports = RelayPorts::new(v4, v6, config.relay_ports);
    let mut shared = Shared::new(ports, settings, Arc::clone(board));
    shared.set_proxy_protocol_from(config.proxy_protocol_from.clone());
    // Relay steering serves relays, which a STUN-only server has none of.
    if config.relay_steering != Steering::Off && !config.stun_only {
        steer(&mut shared, config.relay_steering)?;
    }
    if config.xdp.mode != Xdp::Off && !config.stun_only {
        attach_xdp(&mut shared, &config.xdp)?;
    }
    serve_tls(config, &mut shared, tls)?;
    let records = match &config.records {
        Some(r) => {
            let (writer, sink) =
                records::Writer::start(r).map_err(|e| ServerError::Records(r.file.clone(), e))?;
            shared.set_records(sink);
            Some(writer)
        }
        None => None,
    };
    Ok((shared, records))
}

/// Give the workers the TLS server for `config`'s certificate, if it has
/// one; warn about the certificate when TLS listeners are `listening`.
pub(super) fn serve_tls(
    config: &Config,
    shared: &mut Shared,
    listening: bool,
) -> Result<(), ServerError> {
    let Some(t) = &config.tls else {
        return Ok(());
    };
    let tls = Tls::new(&t.certificate).map_err(ServerError::Tls)?;
    let server = TlsServer::new(
        Arc::new(tls),
        t.handshake_timeout,
        t.max_handshakes,
        t.max_handshakes_per_ip,
    );
    shared.set_tls(Arc::new(server), &t.certificate);
    if listening {
        warn_tls(config, &t.certificate);
    }
    Ok(())
}

/// Warn when the certificate expires within 14 days, and when the host
/// put in `turns:` URIs is one it does not name (clients that check it,
/// as browsers do, will fail).
pub(super) fn warn_tls(config: &Config, cert: &Certificate) {
    for warning in cert.warnings(config.host.as_deref(), crate::tls::now_unix()) {
        tracing::warn!("{warning}");
    }
    if config.host.is_none() {
        tracing::warn!(
            names = ?cert.names,
            "TLS is on but `host` is unset: set it to a name the certificate holds so \
             printed turns: URIs verify"
        );
    }
}

/// Attach the XDP fast path to `shared` (`[relay] xdp`): to the listed
/// interfaces, or those that carry the relay addresses. `auto` logs a
/// failure once and goes on without it; `native` and `generic` refuse to
/// start.
pub(super) fn attach_xdp(shared: &mut Shared, settings: &XdpSettings) -> Result<(), ServerError> {
    let (label, modes): (&'static str, &[Mode]) = match settings.mode {
        Xdp::Off => return Ok(()),
        Xdp::Auto => ("auto", &[Mode::Native, Mode::Generic]),
        Xdp::Native => ("native", &[Mode::Native]),
        Xdp::Generic => ("generic", &[Mode::Generic]),
    };
    let interfaces = if settings.interfaces.is_empty() {
        let (v4, v6) = shared.relay_addresses();
        let ips: Vec<IpAddr> = [v4, v6].into_iter().flatten().collect();
        xdp::interfaces_of(&ips).unwrap_or_default()
    } else {
        settings.interfaces.clone()
    };
    let attached = if interfaces.is_empty() {
        Err("no interface carries the relay addresses (set relay.xdp-interfaces)".to_string())
    } else {
        FastPath::attach(&interfaces, modes).map_err(|e| e.to_string())
    };
    match attached {
        Ok(path) => {
            tracing::info!(
                mode = path.mode().label(),
                interfaces = %path.interfaces().join(","),
                "XDP fast path on: ChannelData over UDP is relayed in the kernel"
            );
            shared.set_xdp(Arc::new(path));
            Ok(())
        }
        Err(e) if settings.mode == Xdp::Auto => {
            tracing::warn!(
                error = %e,
                "XDP fast path unavailable, relaying through sockets (relay.xdp = \"off\" silences this)"
            );
            Ok(())
        }
        Err(e) => Err(ServerError::Xdp(label, e)),
    }
}

/// Attach relay steering to `shared`, logging which families have it;
/// with `on`, failing to is an error.
pub(super) fn steer(shared: &mut Shared, mode: Steering) -> Result<(), ServerError> {
    let errors = shared.steer();
    let families: Vec<&str> = shared
        .steered_families()
        .into_iter()
        .map(|f| f.label())
        .collect();
    if !families.is_empty() {
        tracing::info!(
            families = %families.join(","),
            "relay receive steering on (BPF sk_lookup)"
        );
    }
    if let Some(e) = errors.into_iter().next() {
        if mode == Steering::On {
            return Err(ServerError::Steering(e));
        }
        tracing::info!(
            error = %e,
            "relay receive steering (BPF sk_lookup) unavailable, each relay socket is read on its own: it needs Linux 5.9+ with CAP_BPF and CAP_NET_ADMIN (relay.steering = \"off\" silences this)"
        );
    }
    Ok(())
}
