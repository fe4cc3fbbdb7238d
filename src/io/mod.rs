//! The I/O layer: one [`Worker`] per thread, each a current-thread tokio
//! runtime that owns its [`Core`], its listener sockets (SO_REUSEPORT) and
//! the relay sockets of its allocations. Nothing on the per-packet path
//! crosses threads or takes a lock.
//!
//! - `net`: socket creation, relay address discovery.
//! - `ports`: the shared relay port allocator.
//! - `tcp`: RFC 8656 stream framing for TCP clients.

pub mod net;
pub mod ports;
mod tcp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::{
    AllocId, Core, FiveTuple, Io, Now, RelayError, RelayGrant, RelayRequest, Stats, Transport,
};
use crate::wire::PEER_HEADROOM;
use ports::RelayPorts;

/// Datagrams handled per readiness event before yielding to other tasks.
const BATCH: usize = 64;
/// Receive buffer: headroom for re-framing, the largest UDP payload, padding.
const BUF_LEN: usize = PEER_HEADROOM + 65_535 + 4;

/// State shared by all workers; touched per allocation or connection.
#[derive(Debug)]
pub struct Shared {
    pub ports: RelayPorts,
    pub tcp_connections: AtomicUsize,
    pub max_tcp_connections: AtomicUsize,
    pub max_tcp_connections_per_ip: AtomicUsize,
    /// Open TCP connections per client IP (entries leave at zero, so the
    /// map never holds more than `max_tcp_connections` entries).
    pub tcp_per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// The server-wide allocation limit in force (for metrics).
    pub max_allocations: AtomicU32,
    pub tcp_idle_timeout: Duration,
    /// Set once every worker serves; cleared when draining starts.
    pub ready: AtomicBool,
    /// When the shared state was made; ticks are measured from it.
    pub started: Instant,
    /// Per worker: milliseconds after `started` of its last tick.
    pub last_tick_ms: Vec<AtomicU64>,
    /// Each worker's counters, copied out once a tick for metrics.
    pub stats: Vec<Mutex<Stats>>,
    /// Live allocations per worker, copied out once a tick.
    pub allocations: Vec<AtomicUsize>,
}

impl Shared {
    /// Fresh shared state for `workers` workers.
    pub fn new(
        ports: RelayPorts,
        workers: usize,
        max_tcp: usize,
        max_allocations: u32,
        tcp_idle_timeout: Duration,
    ) -> Self {
        Self {
            ports,
            tcp_connections: AtomicUsize::new(0),
            max_tcp_connections: AtomicUsize::new(max_tcp),
            max_tcp_connections_per_ip: AtomicUsize::new(usize::MAX),
            tcp_per_ip: Mutex::new(HashMap::new()),
            max_allocations: AtomicU32::new(max_allocations),
            tcp_idle_timeout,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_tick_ms: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            stats: (0..workers).map(|_| Mutex::new(Stats::default())).collect(),
            allocations: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Whether every worker's event loop ticked within `within`.
    pub fn healthy(&self, within: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let limit = within.as_millis() as u64;
        self.last_tick_ms
            .iter()
            .all(|t| now.saturating_sub(t.load(Ordering::Relaxed)) <= limit)
    }

    /// Live allocations across workers (as of their last tick).
    pub fn allocation_total(&self) -> usize {
        self.allocations
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// Counters summed over every worker (as of their last tick).
    pub fn total_stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in &self.stats {
            total.add(&s.lock().unwrap_or_else(PoisonError::into_inner));
        }
        total
    }
}

/// The current time for the core.
pub(crate) fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// One worker thread's state.
pub struct Worker {
    index: usize,
    core: RefCell<Core>,
    io: RefCell<WorkerIo>,
    /// The receive buffer every task of this worker uses in turn (never held
    /// across an await).
    buf: RefCell<Box<[u8]>>,
    shared: Arc<Shared>,
}

struct Relay {
    sock: Rc<UdpSocket>,
    task: JoinHandle<()>,
}

/// A TCP client's outgoing bytes, drained by its writer task.
#[derive(Default)]
pub(crate) struct TcpOut {
    buf: RefCell<Vec<u8>>,
    notify: tokio::sync::Notify,
    closed: std::cell::Cell<bool>,
}

/// Queued bytes above which a slow TCP client's data is dropped.
const TCP_OUT_LIMIT: usize = 1 << 20;

/// The worker's implementation of [`Io`].
struct WorkerIo {
    me: Weak<Worker>,
    shared: Arc<Shared>,
    listeners: HashMap<SocketAddr, Rc<UdpSocket>>,
    relays: HashMap<AllocId, Relay>,
    tcp: HashMap<FiveTuple, Rc<TcpOut>>,
}

impl Io for WorkerIo {
    fn to_client(&mut self, client: &FiveTuple, bytes: &[u8]) {
        match client.transport {
            Transport::Udp => {
                if let Some(sock) = self.listeners.get(&client.local) {
                    send_now(sock, bytes, client.remote);
                }
            }
            Transport::Tcp => {
                if let Some(out) = self.tcp.get(client) {
                    let mut buf = out.buf.borrow_mut();
                    if buf.len() + bytes.len() <= TCP_OUT_LIMIT {
                        buf.extend_from_slice(bytes);
                        out.notify.notify_one();
                    }
                }
            }
        }
    }

    fn to_peer(&mut self, alloc: AllocId, peer: SocketAddr, bytes: &[u8]) {
        if let Some(r) = self.relays.get(&alloc) {
            send_now(&r.sock, bytes, peer);
        }
    }

    fn open_relay(&mut self, alloc: AllocId, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        let (std_sock, token) = self.shared.ports.open(req, Instant::now())?;
        let local = std_sock.local_addr().map_err(|_| RelayError::NoCapacity)?;
        let sock = Rc::new(UdpSocket::from_std(std_sock).map_err(|_| RelayError::NoCapacity)?);
        let me = self.me.upgrade().ok_or(RelayError::NoCapacity)?;
        let task = tokio::task::spawn_local(relay_loop(me, alloc, Rc::clone(&sock)));
        self.relays.insert(alloc, Relay { sock, task });
        Ok(RelayGrant { local, token })
    }

    fn close_relay(&mut self, alloc: AllocId) {
        if let Some(r) = self.relays.remove(&alloc) {
            r.task.abort();
        }
    }
}

/// Send a datagram with one `sendto`, now. Tokio's `try_send_to` refuses
/// to try until its reactor has seen the socket writable, which drops the
/// first datagrams on a fresh relay socket; UDP needs no readiness
/// bookkeeping, so go straight to the kernel. A full buffer drops the
/// datagram (datagram semantics).
fn send_now(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to(bytes, &to.into());
}

impl Worker {
    /// A worker with its core; sockets are added by [`Worker::run`].
    pub fn new(index: usize, core: Core, shared: Arc<Shared>) -> Rc<Self> {
        Rc::new_cyclic(|me| Self {
            index,
            core: RefCell::new(core),
            io: RefCell::new(WorkerIo {
                me: me.clone(),
                shared: Arc::clone(&shared),
                listeners: HashMap::new(),
                relays: HashMap::new(),
                tcp: HashMap::new(),
            }),
            buf: RefCell::new(vec![0u8; BUF_LEN].into_boxed_slice()),
            shared,
        })
    }

    /// Serve on the given sockets until `shutdown` turns true. Must run
    /// inside a `LocalSet`.
    pub async fn run(
        self: Rc<Self>,
        udp: Vec<std::net::UdpSocket>,
        tcp: Vec<std::net::TcpListener>,
        mut state: watch::Receiver<crate::server::WorkerState>,
    ) -> std::io::Result<()> {
        for s in udp {
            let local = s.local_addr()?;
            let sock = Rc::new(UdpSocket::from_std(s)?);
            self.io
                .borrow_mut()
                .listeners
                .insert(local, Rc::clone(&sock));
            tokio::task::spawn_local(udp_loop(Rc::clone(&self), sock, local));
        }
        for l in tcp {
            let listener = tokio::net::TcpListener::from_std(l)?;
            tokio::task::spawn_local(tcp::accept_loop(Rc::clone(&self), listener));
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                r = state.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let s = state.borrow_and_update().clone();
                    if s.stopping {
                        break;
                    }
                    let mut core = self.core.borrow_mut();
                    core.set_config(s.config);
                    core.set_refuse_allocations(s.draining);
                }
            }
        }
        let mut io = self.io.borrow_mut();
        self.core.borrow_mut().close_all(now(), &mut *io);
        drop(io);
        self.publish();
        Ok(())
    }

    fn tick(&self) {
        self.core
            .borrow_mut()
            .tick(now(), &mut *self.io.borrow_mut());
        self.publish();
    }

    /// Copy this worker's counters where metrics can read them.
    fn publish(&self) {
        self.core.borrow_mut().refresh_gauges(now());
        let core = self.core.borrow();
        if let Some(s) = self.shared.stats.get(self.index) {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone_from(&core.stats);
        }
        if let Some(a) = self.shared.allocations.get(self.index) {
            a.store(core.allocation_count(), Ordering::Relaxed);
        }
        if let Some(t) = self.shared.last_tick_ms.get(self.index) {
            let ms = self.shared.started.elapsed().as_millis() as u64;
            t.store(ms.max(1), Ordering::Relaxed);
        }
    }

    /// Hand one client message to the core.
    fn client_message(&self, tuple: &FiveTuple, bytes: &[u8]) {
        let mut io = self.io.borrow_mut();
        self.core
            .borrow_mut()
            .on_client(now(), tuple, bytes, &mut *io);
    }
}

async fn udp_loop(w: Rc<Worker>, sock: Rc<UdpSocket>, local: SocketAddr) {
    datagram_loop(&w, &sock, 0, |buf, n, remote| {
        let tuple = FiveTuple {
            transport: Transport::Udp,
            local,
            remote,
        };
        w.client_message(&tuple, &buf[..n]);
    })
    .await;
}

async fn relay_loop(w: Rc<Worker>, alloc: AllocId, sock: Rc<UdpSocket>) {
    datagram_loop(&w, &sock, PEER_HEADROOM, |buf, n, peer| {
        let mut io = w.io.borrow_mut();
        let payload = PEER_HEADROOM..PEER_HEADROOM + n;
        w.core
            .borrow_mut()
            .on_peer(now(), alloc, peer, buf, payload, &mut *io);
    })
    .await;
}

/// Receive datagrams into the worker's buffer at `offset` and hand each to
/// `handle(buffer, length, source)`, up to [`BATCH`] per readiness event.
async fn datagram_loop(
    w: &Worker,
    sock: &UdpSocket,
    offset: usize,
    mut handle: impl FnMut(&mut [u8], usize, SocketAddr),
) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let mut handled = 0;
        while handled < BATCH {
            let mut buf = w.buf.borrow_mut();
            match sock.try_recv_from(&mut buf[offset..offset + 65_535]) {
                Ok((n, from)) => handle(&mut buf, n, from),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {}
            }
            handled += 1;
        }
        if handled == BATCH {
            tokio::task::yield_now().await;
        }
    }
}
