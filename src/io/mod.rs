//! The I/O layer: one [`Worker`] per thread, each a current-thread tokio
//! runtime that owns its [`Core`], its listener sockets (SO_REUSEPORT) and
//! the relay sockets of its allocations. The core sits behind a mutex only
//! so that relay-to-relay datagrams for another worker's allocations can
//! be delivered by the sender (see `handoff`): its owner takes it once per
//! received batch, never per packet, and other workers only with
//! `try_lock`, once per batch, so no worker ever waits for another.
//!
//! - `batch`: `recvmmsg` into slots, `sendmmsg` from a queue. Every UDP
//!   socket is read a batch at a time; datagrams to clients are queued and
//!   leave in one `sendmmsg` at the end of the scheduling round.
//! - `handoff`: relay-to-relay datagrams delivered without the kernel, to
//!   this worker's relays or another worker's.
//! - `net`: socket creation, relay address discovery.
//! - `ports`: the shared relay port allocator.
//! - `tcp`: RFC 8656 stream framing for TCP clients.

pub mod batch;
mod handoff;
pub mod net;
pub mod ports;
pub mod sklookup;
mod tcp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::core::slab::slot;
use crate::core::stats::HandoffPath::{self, OtherWorker, Queued, SameWorker};
use crate::core::{
    AllocId, Core, FiveTuple, Io, Now, RelayError, RelayGrant, RelayRequest, Stats, Transport,
};
use crate::wire::PEER_HEADROOM;
use batch::{RecvBatch, SEND_QUEUE_LIMIT, SendQueue};
use handoff::{Batch, Handoffs};
use ports::RelayPorts;

/// Names of the address families, in the order of every per-family array
/// (`[IPv4, IPv6]`, e.g. [`Shared::steering`]).
pub const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// `recvmmsg` calls per readiness event before yielding to other tasks.
const RECV_ROUNDS: usize = 4;
/// Receive slot: headroom for re-framing, the largest UDP payload, padding.
const BUF_LEN: usize = PEER_HEADROOM + 65_535 + 4;

/// A UDP socket registered with the worker's reactor.
type Udp = AsyncFd<UdpSocket>;

/// State shared by all workers; touched per allocation or connection.
#[derive(Debug)]
pub struct Shared {
    pub ports: RelayPorts,
    /// Relay owners and inboxes for relay-to-relay delivery.
    pub handoffs: Handoffs,
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
    /// Relay receive steering (IPv4, IPv6), when the kernel allows it.
    pub steering: [Option<sklookup::Steering>; 2],
    /// Receive and send buffer of the listeners and steered sockets.
    pub socket_buffer_bytes: usize,
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
        let (v4, v6) = ports.addresses();
        Self {
            handoffs: Handoffs::new(v4, v6, ports.range(), workers),
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
            steering: [None, None],
            socket_buffer_bytes: 4 << 20,
        }
    }

    /// Attach relay receive steering for each relay family (see
    /// `sklookup`); returns why it could not, for each family it could not.
    pub fn steer(&mut self) -> Vec<std::io::Error> {
        let (v4, v6) = self.ports.addresses();
        let range = self.ports.range();
        let mut errors = Vec::new();
        for (i, ip) in [v4, v6].into_iter().enumerate() {
            let Some(ip) = ip else { continue };
            match sklookup::Steering::attach(ip, range.start(), range.end()) {
                Ok(s) => self.steering[i] = Some(s),
                Err(e) => errors.push(e),
            }
        }
        errors
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
    /// Taken by this worker once per batch, by others only with `try_lock`.
    core: Arc<Mutex<Core>>,
    io: RefCell<WorkerIo>,
    /// The receive slots every task of this worker uses in turn (never held
    /// across an await).
    rx: RefCell<RecvBatch>,
    /// A buffer for relay-to-relay datagrams delivered in-process.
    scratch: RefCell<Box<[u8]>>,
    /// Relay-to-relay datagrams taken from this worker's inbox.
    inbox: RefCell<Batch>,
    /// Wakes the flush task: datagrams are queued for the listeners, or
    /// relay-to-relay datagrams wait for delivery (other workers wake it
    /// too).
    flush_wake: Arc<Notify>,
    shared: Arc<Shared>,
}

struct Relay {
    id: AllocId,
    sock: RelaySocket,
    local: SocketAddr,
}

/// How a relay socket's datagrams are read.
enum RelaySocket {
    /// By its own receive task.
    Polled(Rc<Udp>, JoinHandle<()>),
    /// Through the worker's steered socket (see `sklookup`): this one only
    /// sends, and holds the port.
    Steered(SteeredRelay),
}

impl RelaySocket {
    fn get(&self) -> &UdpSocket {
        match self {
            Self::Polled(sock, _) => sock.get_ref(),
            Self::Steered(s) => &s.sock,
        }
    }
}

/// A steered relay's socket. However it is dropped, its port's steering
/// entry goes first: once the socket closes the port may go to another
/// worker's allocation, or to another program, whose datagrams must not
/// be steered here.
struct SteeredRelay {
    sock: UdpSocket,
    local: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for SteeredRelay {
    fn drop(&mut self) {
        if let Some(s) = &self.shared.steering[usize::from(self.local.is_ipv6())] {
            let _ = s.clear(self.local.port());
        }
    }
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
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<Rc<Udp>>,
    /// The listeners' addresses, in `listeners` order (a handful: searched
    /// linearly, cheaper than hashing an address per datagram).
    listener_addrs: Vec<SocketAddr>,
    /// Datagrams for clients, sent with `sendmmsg` at the end of the
    /// scheduling round (or when [`SEND_QUEUE_LIMIT`] are waiting).
    out: SendQueue,
    /// Relays indexed by their allocation's slot (see `core::slab`).
    relays: Vec<Option<Relay>>,
    /// Relay-to-relay datagrams for this worker's relays, and for each
    /// other worker's.
    local: Batch,
    remote: Vec<Batch>,
    flush_wake: Arc<Notify>,
    tcp: HashMap<FiveTuple, Rc<TcpOut>>,
    /// This worker's steered receive socket per relay family (IPv4,
    /// IPv6), when steering is on.
    steered: [Option<std::os::fd::RawFd>; 2],
}

/// Allocation `alloc`'s relay in a table indexed by slot.
fn relay_of(relays: &[Option<Relay>], alloc: AllocId) -> Option<&Relay> {
    relays
        .get(slot(alloc))
        .and_then(Option::as_ref)
        .filter(|r| r.id == alloc)
}

impl WorkerIo {
    fn flush_out(&mut self) {
        let listeners = &self.listeners;
        self.out
            .flush(|i| listeners.get(i).map(|s| s.get_ref().as_raw_fd()));
    }
}

impl Io for WorkerIo {
    fn to_client(&mut self, client: &FiveTuple, bytes: &[u8]) {
        match client.transport {
            Transport::Udp => {
                if let Some(i) = self.listener_addrs.iter().position(|a| *a == client.local) {
                    self.out.push(i, client.remote, bytes);
                    if self.out.len() >= SEND_QUEUE_LIMIT {
                        self.flush_out();
                    } else if self.out.len() == 1 {
                        self.flush_wake.notify_one();
                    }
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
        let Some(r) = relay_of(&self.relays, alloc) else {
            return;
        };
        // The peer is another tern relay: hand the datagram to its worker,
        // from this relay's address, as the kernel would have delivered it
        // (the receiving side checks permission, policy and bandwidth as
        // for any peer datagram). See `handoff`.
        if let Some(owner) = self.shared.handoffs.owner(&peer) {
            let batch = if owner == self.index {
                &mut self.local
            } else if let Some(b) = self.remote.get_mut(owner) {
                b
            } else {
                return;
            };
            let first = batch.is_empty();
            if batch.push(peer, r.local, bytes) && first {
                self.flush_wake.notify_one();
            }
            return;
        }
        send_now(r.sock.get(), bytes, peer);
    }

    fn open_relay(&mut self, alloc: AllocId, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        let (std_sock, token) = self.shared.ports.open(req, Instant::now())?;
        let local = std_sock.local_addr().map_err(|_| RelayError::NoCapacity)?;
        let family = usize::from(local.is_ipv6());
        let steered = self.steered[family]
            .zip(self.shared.steering[family].as_ref())
            .is_some_and(|(fd, s)| s.set(local.port(), fd).is_ok());
        let sock = if steered {
            RelaySocket::Steered(SteeredRelay {
                sock: std_sock,
                local,
                shared: Arc::clone(&self.shared),
            })
        } else {
            let sock = Rc::new(register(std_sock).map_err(|_| RelayError::NoCapacity)?);
            let me = self.me.upgrade().ok_or(RelayError::NoCapacity)?;
            let task = tokio::task::spawn_local(relay_loop(me, alloc, Rc::clone(&sock)));
            RelaySocket::Polled(sock, task)
        };
        let s = slot(alloc);
        if self.relays.len() <= s {
            self.relays.resize_with(s + 1, || None);
        }
        self.relays[s] = Some(Relay {
            id: alloc,
            sock,
            local,
        });
        self.shared.handoffs.set_relay(&local, alloc);
        Ok(RelayGrant { local, token })
    }

    fn close_relay(&mut self, alloc: AllocId) {
        let entry = self.relays.get_mut(slot(alloc));
        if let Some(r) = entry.and_then(|r| r.take_if(|r| r.id == alloc)) {
            self.shared.handoffs.clear_relay(&r.local, alloc);
            // A steered relay clears its steering as it drops.
            if let RelaySocket::Polled(_, task) = r.sock {
                task.abort();
            }
        }
    }
}

/// Register a UDP socket with this thread's reactor, for readability only
/// (datagrams are sent straight to the kernel).
fn register(sock: UdpSocket) -> std::io::Result<Udp> {
    // SAFETY: the `UdpSocket` owns its descriptor and keeps it open, the
    // same one, for as long as the `AsyncFd` holds it.
    unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Send a datagram with one `sendto`, now. UDP needs no readiness
/// bookkeeping, so go straight to the kernel (tokio's `try_send_to`
/// refuses until its reactor has seen a fresh socket writable). A full
/// buffer drops the datagram (datagram semantics).
fn send_now(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to(bytes, &to.into());
}

impl Worker {
    /// A worker with its core; sockets are added by [`Worker::run`].
    pub fn new(index: usize, core: Core, shared: Arc<Shared>) -> Rc<Self> {
        let flush_wake = shared.handoffs.wake(index);
        let workers = shared.last_tick_ms.len();
        let core = Arc::new(Mutex::new(core));
        shared.handoffs.set_core(index, Arc::clone(&core));
        Rc::new_cyclic(|me| Self {
            index,
            core,
            io: RefCell::new(WorkerIo {
                me: me.clone(),
                index,
                shared: Arc::clone(&shared),
                listeners: Vec::new(),
                listener_addrs: Vec::new(),
                out: SendQueue::default(),
                relays: Vec::new(),
                local: Batch::default(),
                remote: (0..workers).map(|_| Batch::default()).collect(),
                flush_wake: Arc::clone(&flush_wake),
                tcp: HashMap::new(),
                steered: [None, None],
            }),
            rx: RefCell::new(RecvBatch::with_destinations(BUF_LEN)),
            scratch: RefCell::new(vec![0u8; BUF_LEN].into_boxed_slice()),
            inbox: RefCell::new(Batch::default()),
            flush_wake,
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
            let sock = Rc::new(register(s)?);
            let mut io = self.io.borrow_mut();
            io.listener_addrs.push(local);
            io.listeners.push(Rc::clone(&sock));
            drop(io);
            tokio::task::spawn_local(udp_loop(Rc::clone(&self), sock, local));
        }
        let (v4, v6) = self.shared.ports.addresses();
        for (i, ip) in [v4, v6].into_iter().enumerate() {
            let Some(ip) = ip.filter(|_| self.shared.steering[i].is_some()) else {
                continue;
            };
            let s = net::udp_private(SocketAddr::new(ip, 0), self.shared.socket_buffer_bytes)?;
            batch::receive_destinations(&s)?;
            let sock = Rc::new(register(s)?);
            self.io.borrow_mut().steered[i] = Some(sock.get_ref().as_raw_fd());
            tokio::task::spawn_local(steered_loop(Rc::clone(&self), sock));
        }
        tokio::task::spawn_local(flush_loop(Rc::clone(&self)));
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
                    let mut core = self.core();
                    core.set_config(s.config);
                    core.set_refuse_allocations(s.draining);
                }
            }
        }
        self.flush();
        let mut io = self.io.borrow_mut();
        self.core().close_all(now(), &mut *io);
        io.flush_out();
        drop(io);
        self.publish();
        Ok(())
    }

    /// This worker's core.
    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tick(&self) {
        self.core().tick(now(), &mut *self.io.borrow_mut());
        self.flush();
        self.publish();
    }

    /// Deliver relay-to-relay datagrams (those for another worker's relays
    /// straight into its core when it is free, else to its inbox), then
    /// those for this worker's relays and those other workers left in its
    /// inbox, then send what waits for the clients.
    fn flush(&self) {
        let mut io = self.io.borrow_mut();
        let io = &mut *io;
        let mut scratch = self.scratch.borrow_mut();
        let now = now();
        let shared = &*self.shared;
        for w in 0..io.remote.len() {
            if io.remote[w].is_empty() {
                continue;
            }
            let mut batch = std::mem::take(&mut io.remote[w]);
            if let Some(mut core) = shared.handoffs.try_core(w) {
                deliver(
                    shared,
                    &mut core,
                    &mut batch,
                    io,
                    &mut scratch,
                    now,
                    OtherWorker,
                );
            }
            if !batch.is_empty() {
                shared.handoffs.send(w, &mut batch);
            }
            io.remote[w] = batch;
        }
        let mut core = self.core();
        let mut local = std::mem::take(&mut io.local);
        deliver(
            shared,
            &mut core,
            &mut local,
            io,
            &mut scratch,
            now,
            SameWorker,
        );
        io.local = local;
        let mut inbox = self.inbox.borrow_mut();
        shared.handoffs.take(self.index, &mut inbox);
        deliver(shared, &mut core, &mut inbox, io, &mut scratch, now, Queued);
        drop(core);
        io.flush_out();
    }

    /// Copy this worker's counters where metrics can read them.
    fn publish(&self) {
        let mut core = self.core();
        core.refresh_gauges(now());
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
        self.core().on_client(now(), tuple, bytes, &mut *io);
    }
}

/// Flush whenever woken: the wake-up runs after the tasks already ready in
/// this round, so their datagrams leave in one `sendmmsg`.
async fn flush_loop(w: Rc<Worker>) {
    loop {
        w.flush_wake.notified().await;
        w.flush();
    }
}

/// Hand each datagram of `batch` to its relay's allocation in `core`, as
/// if it had arrived on the relay socket, sending through `io`; a relay
/// closed meanwhile drops it. Delivering to a peer sends only to clients,
/// so nothing is queued for delivery meanwhile. On the `OtherWorker` path
/// (`core` is another worker's), datagrams for allocations with a TCP
/// client stay in the batch: only their own worker can write to the
/// connection.
fn deliver(
    shared: &Shared,
    core: &mut Core,
    batch: &mut Batch,
    io: &mut WorkerIo,
    scratch: &mut [u8],
    now: Now,
    path: HandoffPath,
) {
    let Batch { items, arena } = batch;
    items.retain(|item| {
        let Some(alloc) = shared.handoffs.relay(&item.to) else {
            return false;
        };
        if path == OtherWorker && core.client_transport(alloc) == Some(Transport::Tcp) {
            return true;
        }
        core.stats.handoffs[path as usize] += 1;
        let payload = PEER_HEADROOM..PEER_HEADROOM + item.bytes.len();
        scratch[payload.clone()].copy_from_slice(&arena[item.bytes.clone()]);
        core.on_peer(now, alloc, item.from, scratch, payload, io);
        false
    });
    if items.is_empty() {
        arena.clear();
    }
}

async fn udp_loop(w: Rc<Worker>, sock: Rc<Udp>, local: SocketAddr) {
    let tuple = |remote| FiveTuple {
        transport: Transport::Udp,
        local,
        remote,
    };
    datagram_loop(&w, &sock, 0, |core, io, now, buf, len, remote| {
        core.on_client(now, &tuple(remote), &buf[..len], io);
    })
    .await;
}

async fn relay_loop(w: Rc<Worker>, alloc: AllocId, sock: Rc<Udp>) {
    datagram_loop(&w, &sock, PEER_HEADROOM, |core, io, now, buf, len, peer| {
        let payload = PEER_HEADROOM..PEER_HEADROOM + len;
        core.on_peer(now, alloc, peer, buf, payload, io);
    })
    .await;
}

/// Datagrams for every steered relay of this worker (see `sklookup`),
/// each handed to the allocation whose relay port it was sent to.
async fn steered_loop(w: Rc<Worker>, sock: Rc<Udp>) {
    let handoffs = &w.shared.handoffs;
    batch_loop(&w, &sock, PEER_HEADROOM, |core, io, now, rx, n| {
        core.stats.steered += n as u64;
        for i in 0..n {
            let to = rx.destination(i);
            let (buf, len, from) = rx.slot(i);
            // A relay closed meanwhile drops it (as its socket would have).
            let Some((alloc, peer)) = to.and_then(|to| handoffs.relay(&to)).zip(from) else {
                continue;
            };
            let payload = PEER_HEADROOM..PEER_HEADROOM + len;
            core.on_peer(now, alloc, peer, buf, payload, io);
        }
    })
    .await;
}

/// Receive datagrams into the worker's slots at `offset` and hand each to
/// `handle(core, io, now, slot, length, source)` (see [`batch_loop`]).
async fn datagram_loop(
    w: &Worker,
    sock: &Udp,
    offset: usize,
    mut handle: impl FnMut(&mut Core, &mut WorkerIo, Now, &mut [u8], usize, SocketAddr),
) {
    batch_loop(w, sock, offset, |core, io, now, rx, n| {
        rx.each(n, |buf, len, from| handle(core, io, now, buf, len, from));
    })
    .await;
}

/// Receive batches into the worker's slots at `offset` (see
/// [`batch::receive_batches`]) and hand each whole to `handle(core, io,
/// now, batch, count)`, taking the core and reading the clock once per
/// batch.
async fn batch_loop(
    w: &Worker,
    sock: &Udp,
    offset: usize,
    mut handle: impl FnMut(&mut Core, &mut WorkerIo, Now, &mut RecvBatch, usize),
) {
    batch::receive_batches(sock, &w.rx, offset, RECV_ROUNDS, |rx, n| {
        let mut io = w.io.borrow_mut();
        let mut core = w.core();
        handle(&mut core, &mut io, now(), rx, n);
    })
    .await;
}
