//! The I/O layer: one worker per thread (`worker`), each a current-thread
//! tokio runtime that owns its [`Core`](crate::core::Core), its listener
//! sockets (SO_REUSEPORT: the kernel hashes each client to one worker),
//! the relay sockets of its allocations and its clients' send queues.
//! What the workers share ([`Shared`]) is touched per allocation or
//! connection, never per relayed packet, except one atomic load in the
//! port table for steered and handed-over datagrams.
//!
//! The two peer paths:
//! - client → peer: listener batch → `Core::on_client` → the relay socket
//!   (`sendto`), or, when the peer is another tern relay, `handoff`.
//! - peer → client: the steered socket (or a polled relay socket) batch →
//!   `Core::on_peer` → the worker's send queue, flushed when the batch
//!   settles (`sendmmsg`).
//!
//! Modules:
//! - `worker`: the event loop, the one receive adapter and the core's
//!   [`Io`](crate::core::Io).
//! - `pump`: who reads which UDP socket: the runtime's own future the hot
//!   ones (listeners, steered sockets), a task each polled relay.
//! - `relay`: relay sockets, steered and polled, and the port →
//!   allocation table.
//! - `handoff`: relay-to-relay datagrams, in order, between workers.
//! - `tcp`: RFC 8656 stream framing for TCP clients and their admission
//!   limits.
//! - `tls`: the first-byte sniff, the handshake under its limits and the
//!   record layer; `limit`: total and per-IP caps.
//! - `timer`: the worker's timers on one `timerfd` (its runtime has no
//!   time driver: that costs every wake-up).
//! - `proxy`: trusted proxies' PROXY headers, read before anything else.
//! - `mailbox`: operators' orders (list, close) to the workers.
//! - `batch`: `recvmmsg` into slots, `sendmmsg` from a queue.
//! - `net`: socket creation, relay address discovery.
//! - `ports`: the shared relay port allocator.
//! - `sklookup`: the BPF program that steers relay datagrams.
//! - `xdp`: the XDP fast path for ChannelData (`[relay] xdp`), and each
//!   worker's table of what it offloaded.

pub mod batch;
mod handoff;
mod limit;
mod mailbox;
pub mod net;
pub mod ports;
mod proxy;
mod pump;
mod relay;
pub mod sklookup;
mod tcp;
mod timer;
mod tls;
mod worker;
pub mod xdp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::{AllocId, CoreConfig, Family, Now};
use crate::metrics::Board;
use crate::tls::Certificate;
use handoff::Handoffs;
use ports::RelayPorts;
use relay::RelayTable;
use sklookup::Steering;

pub use mailbox::{Mailboxes, Target};
pub use tls::{StreamMode, TlsServer};
pub use worker::run;

/// The phase a server is in; every worker watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving, taking new allocations.
    Serving,
    /// Refusing new allocations; live ones go on.
    Draining,
    /// Close every allocation and end.
    Stopping,
}

/// What every worker watches: the configuration and the phase.
#[derive(Debug, Clone)]
pub struct WorkerState {
    /// The core's configuration, swapped as a whole on reload.
    pub config: Arc<CoreConfig>,
    /// The server's phase.
    pub phase: Phase,
}

/// How the workers' sockets are set up.
#[derive(Debug, Clone, Copy)]
pub struct IoSettings {
    /// Number of workers.
    pub workers: usize,
    /// Receive and send buffer of the listeners and steered sockets.
    pub socket_buffer_bytes: usize,
    /// Open TCP client connections, in total.
    pub max_tcp_connections: usize,
    /// Open TCP client connections per client IP.
    pub max_tcp_connections_per_ip: usize,
    /// Close a TCP connection idle this long without an allocation.
    pub tcp_idle_timeout: Duration,
}

/// State shared by all workers.
#[derive(Debug)]
pub struct Shared {
    workers: usize,
    ports: RelayPorts,
    /// Each relay port's allocation.
    relays: RelayTable,
    /// The lanes between workers, for relay-to-relay datagrams.
    handoffs: Handoffs,
    /// Relay receive steering (IPv4, IPv6), when the kernel allows it.
    steering: [Option<Arc<Steering>>; 2],
    /// The XDP fast path, when it is attached.
    xdp: Option<Arc<xdp::FastPath>>,
    tcp: tcp::Admission,
    /// The TLS server, when TLS listeners are configured.
    tls: Option<Arc<TlsServer>>,
    socket_buffer_bytes: usize,
    /// Where the workers publish their counters and ticks.
    board: Arc<Board>,
    /// Operators' orders to each worker.
    mailboxes: Mailboxes,
    /// Where allocation records go, when they are on.
    records: Option<std::sync::mpsc::SyncSender<crate::core::Record>>,
}

impl Shared {
    /// Shared state for the workers of `settings`, with relays from
    /// `ports`, publishing to `board`.
    pub fn new(ports: RelayPorts, settings: IoSettings, board: Arc<Board>) -> Self {
        let (v4, v6) = ports.addresses();
        Self {
            workers: settings.workers,
            relays: RelayTable::new(v4, v6, ports.range()),
            handoffs: Handoffs::new(settings.workers),
            ports,
            steering: [None, None],
            xdp: None,
            tcp: tcp::Admission::new(
                settings.max_tcp_connections,
                settings.max_tcp_connections_per_ip,
                settings.tcp_idle_timeout,
            ),
            tls: None,
            socket_buffer_bytes: settings.socket_buffer_bytes,
            board,
            mailboxes: Mailboxes::new(settings.workers),
            records: None,
        }
    }

    /// Attach relay receive steering for each relay family (see
    /// `sklookup`); returns why it could not, for each family it could not.
    pub fn steer(&mut self) -> Vec<std::io::Error> {
        let (v4, v6) = self.ports.addresses();
        let range = self.ports.range();
        let mut errors = Vec::new();
        for (family, ip) in Family::ALL.into_iter().zip([v4, v6]) {
            let Some(ip) = ip else { continue };
            match Steering::attach(ip, range.start(), range.end()) {
                Ok(s) => {
                    self.steering[family.index()] = Some(Arc::new(s));
                    self.board.set_steering(family, true);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Relay through the XDP fast path from now on (before the workers
    /// start).
    pub fn set_xdp(&mut self, path: Arc<xdp::FastPath>) {
        self.board.set_xdp(Some(path.mode().label()));
        self.xdp = Some(path);
    }

    /// The XDP fast path, when it is attached.
    pub fn xdp(&self) -> Option<&Arc<xdp::FastPath>> {
        self.xdp.as_ref()
    }

    /// The families relay steering is on for.
    pub fn steered_families(&self) -> Vec<Family> {
        Family::ALL
            .into_iter()
            .filter(|f| self.steering[f.index()].is_some())
            .collect()
    }

    /// The relay IPs in use, per family.
    pub fn relay_addresses(&self) -> (Option<IpAddr>, Option<IpAddr>) {
        self.ports.addresses()
    }

    /// The worker owning the allocation whose relay is bound at `relay`,
    /// if it is one of tern's (for diagnostics and tests).
    pub fn relay_worker(&self, relay: &SocketAddr) -> Option<usize> {
        self.relays.get(relay).map(AllocId::worker)
    }

    /// Serve TLS with `server`, presenting `cert`, on the listeners in
    /// TLS or shared mode.
    pub fn set_tls(&mut self, server: Arc<TlsServer>, cert: &Certificate) {
        self.tls = Some(server);
        self.present(cert);
    }

    /// Present `cert` to new TLS handshakes (reload) and publish its
    /// expiry; live connections keep theirs.
    pub fn present(&self, cert: &Certificate) {
        if let Some(server) = &self.tls {
            server.tls().set(cert);
            self.board.tls.set_not_after(cert.not_after);
        }
    }

    /// The TLS server, if any (reload swaps its certificate).
    pub fn tls(&self) -> Option<&Arc<TlsServer>> {
        self.tls.as_ref()
    }

    /// Send allocation records to `sink` (the records writer).
    pub fn set_records(&mut self, sink: std::sync::mpsc::SyncSender<crate::core::Record>) {
        self.records = Some(sink);
    }

    /// The workers' mailboxes, for an operator's orders.
    pub fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }

    /// Expect a PROXY header on stream connections from `nets` (start-up,
    /// reload).
    pub fn set_proxy_protocol_from(&self, nets: Vec<ipnet::IpNet>) {
        self.tcp.proxies.set(nets);
    }

    /// Change the TCP connection limits (reload).
    pub fn set_tcp_limits(&self, max: usize, max_per_ip: usize) {
        self.tcp.set_limits(max, max_per_ip);
    }
}

/// The current time for the core.
pub(crate) fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: crate::unix::now(),
    }
}
