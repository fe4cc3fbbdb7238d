//! One worker: a thread with a current-thread tokio runtime that owns its
//! [`Core`], its listener sockets, its relays and its clients' send queue.
//! The runtime has no time driver (its park path costs every wake-up);
//! the worker's few timers are on its own `timerfd` (`timer`).
//! The core sits in a `RefCell` inside a thread-local `Rc<Worker>`, so no
//! other thread can reach it: other workers hand datagrams over through
//! `handoff` lanes, which this worker drains into its own core.
//!
//! Every UDP socket of the worker is read a batch (`recvmmsg`) at a time:
//! the hot ones (listeners, steered sockets) by the future the runtime
//! polls itself, each polled relay by a task of its own (`pump`). Each
//! batch goes to [`Worker::on_batch`], which hands it to the core with one
//! read of the clock, and then [`Worker::settle`] finishes it: relay-to-relay
//! datagrams are delivered (this worker's) or sent on (other workers'),
//! and what the core queued for clients leaves in one `sendmmsg` per
//! listener (TCP: one write per connection), with no task hop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::batch::{self, RecvBatch, SEND_QUEUE_LIMIT, SendQueue};
use super::handoff::{Batch, deliver};
use super::mailbox::{self, Order, Target};
use super::pump::{self, Source};
use super::relay::{Relay, RelaySocket, Relays, SteeredRelay, Udp, register, send_now};
use super::tcp::{self, Queued, TcpOut};
use super::timer::Timers;
use super::tls::StreamMode;
use super::xdp::Offloads;
use super::{Phase, Shared, WorkerState, net, now};
use crate::core::alloc::Traffic;
use crate::core::{
    AllocId, Core, DropReason, Family, FiveTuple, Io, Now, Offered, Offload, RelayError,
    RelayGrant, RelayRequest, Transport,
};
use crate::metrics::{HandoffPath, IoStats, Report};
use crate::wire::PEER_HEADROOM;

/// `recvmmsg` calls per readiness event before yielding to other tasks.
pub(super) const RECV_ROUNDS: usize = 4;
/// Receive slot: headroom for re-framing, the largest UDP payload, padding.
const BUF_LEN: usize = PEER_HEADROOM + 65_535 + 4;

/// Run worker `index` on this thread until the phase turns to stopping:
/// serve `udp` and `tcp` (this worker's listener sockets) with `core`.
pub fn run(
    index: usize,
    core: Core,
    shared: Arc<Shared>,
    udp: Vec<UdpSocket>,
    tcp: Vec<(std::net::TcpListener, StreamMode)>,
    state: watch::Receiver<WorkerState>,
) -> std::io::Result<()> {
    let (park, unpark) = (Arc::clone(&shared), Arc::clone(&shared));
    // No time driver: the worker's timers are its own (`timer`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .on_thread_park(move || park.handoffs.park(index))
        .on_thread_unpark(move || unpark.handoffs.unpark(index))
        .build()?;
    let local = tokio::task::LocalSet::new();
    let timers = {
        let _in = rt.enter();
        Timers::new()?
    };
    local.spawn_local(Rc::clone(&timers).drive());
    let worker = Worker::new(index, core, shared, timers);
    let result = local
        .block_on(&rt, async { worker.start_sockets(udp, tcp) })
        .and_then(|hot| {
            // The control loop is a task; the hot sockets are polled by the
            // future the runtime itself polls (see `pump`).
            let control = local.spawn_local(Rc::clone(&worker).control(state));
            local.block_on(&rt, pump::pump(worker, hot, control))
        });
    // Dropping the LocalSet cancels the worker's remaining tasks.
    drop(local);
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// One worker thread's state.
pub(crate) struct Worker {
    index: usize,
    core: RefCell<Core>,
    io: RefCell<WorkerIo>,
    /// The receive slots every socket of this worker is read into, a batch
    /// at a time (never held across an await).
    rx: RefCell<RecvBatch>,
    /// A buffer for relay-to-relay datagrams delivered in-process.
    scratch: RefCell<Box<[u8]>>,
    /// Notified when another worker sends this one datagrams while it is
    /// parked.
    wake: Arc<Notify>,
    shared: Arc<Shared>,
    timers: Rc<Timers>,
}

/// The worker's implementation of [`Io`].
struct WorkerIo {
    me: Weak<Worker>,
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<Rc<Udp>>,
    /// The listeners' addresses, in `listeners` order (a handful: searched
    /// linearly, cheaper than hashing an address per datagram).
    listener_addrs: Vec<SocketAddr>,
    /// Datagrams for clients, sent with `sendmmsg` when the batch settles
    /// (or when [`SEND_QUEUE_LIMIT`] are waiting).
    out: SendQueue,
    relays: Relays,
    /// Relay-to-relay datagrams for this worker's relays, and for each
    /// other worker's.
    local: Batch,
    remote: Vec<Batch>,
    tcp: HashMap<FiveTuple, Rc<TcpOut>>,
    /// TCP clients with bytes queued since the last settle.
    tcp_dirty: Vec<Rc<TcpOut>>,
    /// This worker's steered receive socket per relay family (IPv4,
    /// IPv6), when steering is on.
    steered: [Option<RawFd>; 2],
    /// What this worker offloaded to the XDP fast path, when it is on.
    offloads: Option<Offloads>,
    stats: IoStats,
}

impl WorkerIo {
    fn flush_out(&mut self) {
        let listeners = &self.listeners;
        self.out
            .flush(|i| listeners.get(i).map(|s| s.get_ref().as_raw_fd()));
    }

    /// Queue a relay-to-relay datagram for the worker owning `to`.
    fn hand_over(&mut self, owner: usize, to: SocketAddr, from: SocketAddr, bytes: &[u8]) {
        if owner == self.index {
            if !self.local.push(to, from, bytes) {
                self.stats.handoffs_dropped += 1;
            }
            return;
        }
        let Some(batch) = self.remote.get_mut(owner) else {
            return;
        };
        if batch.push(to, from, bytes) {
            return;
        }
        // Full: send this batch on now and start the next.
        let dropped = self.shared.handoffs.send(self.index, owner, batch);
        self.stats.handoffs_dropped += dropped as u64;
        if !batch.push(to, from, bytes) {
            self.stats.handoffs_dropped += 1;
        }
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
                    }
                }
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(out) = self.tcp.get(client) {
                    match out.queue(bytes) {
                        Queued::ToList => self.tcp_dirty.push(Rc::clone(out)),
                        Queued::Listed => {}
                        Queued::Dropped => self.stats.stream_backlog_dropped += 1,
                    }
                }
            }
        }
    }

    fn record(&mut self, record: crate::core::Record) {
        if let Some(sink) = &self.shared.records {
            if sink.try_send(record).is_err() {
                self.stats.records_dropped += 1;
            }
        }
    }

    fn to_peer(&mut self, alloc: AllocId, peer: SocketAddr, bytes: &[u8]) {
        let Some(r) = self.relays.get(alloc) else {
            return;
        };
        // The peer is another tern relay: hand the datagram to its worker,
        // from this relay's address, as the kernel would have delivered it
        // (the receiving side checks permission, policy and bandwidth as
        // for any peer datagram). See `handoff`.
        if let Some(owner) = self.shared.relays.get(&peer) {
            let from = r.local;
            self.hand_over(owner.worker(), peer, from, bytes);
            return;
        }
        send_now(r.sock.socket(), bytes, peer);
    }

    fn open_relay(&mut self, alloc: AllocId, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        let (std_sock, token) = self.shared.ports.open(req, Instant::now())?;
        let local = std_sock.local_addr().map_err(|_| RelayError::NoCapacity)?;
        let family = Family::of(&local).index();
        let steering = self.steered[family]
            .zip(self.shared.steering[family].as_ref())
            .filter(|(fd, s)| s.set(local.port(), *fd).is_ok());
        let sock = if let Some((_, steering)) = steering {
            RelaySocket::Steered(SteeredRelay {
                sock: std_sock,
                port: local.port(),
                steering: Arc::clone(steering),
            })
        } else {
            let sock = Rc::new(register(std_sock).map_err(|_| RelayError::NoCapacity)?);
            let me = self.me.upgrade().ok_or(RelayError::NoCapacity)?;
            let task =
                tokio::task::spawn_local(pump::serve(me, Rc::clone(&sock), Source::Relay(alloc)));
            RelaySocket::Polled(sock, task)
        };
        self.relays.insert(Relay {
            id: alloc,
            local,
            sock,
        });
        self.shared.relays.set(&local, alloc);
        Ok(RelayGrant { local, token })
    }

    fn offload(&mut self, alloc: AllocId, client: &FiveTuple, channels: &[Offload]) -> Offered {
        let relay = self.relays.get(alloc).map(|r| r.local);
        match &mut self.offloads {
            Some(o) => o.set(alloc, client, relay, channels),
            None => Offered::default(),
        }
    }

    fn offloaded(&mut self, alloc: AllocId) -> Traffic {
        match &mut self.offloads {
            Some(o) => o.read(alloc),
            None => Traffic::default(),
        }
    }

    fn close_relay(&mut self, alloc: AllocId) {
        if let Some(r) = self.relays.remove(alloc) {
            self.shared.relays.clear(&r.local, alloc);
            // A steered relay clears its steering as it drops.
            if let RelaySocket::Polled(_, task) = r.sock {
                task.abort();
            }
        }
    }
}

impl Worker {
    fn new(index: usize, core: Core, shared: Arc<Shared>, timers: Rc<Timers>) -> Rc<Self> {
        let wake = shared.handoffs.wake(index);
        let workers = shared.workers;
        Rc::new_cyclic(|me| Self {
            index,
            core: RefCell::new(core),
            io: RefCell::new(WorkerIo {
                me: me.clone(),
                index,
                shared: Arc::clone(&shared),
                listeners: Vec::new(),
                listener_addrs: Vec::new(),
                out: SendQueue::default(),
                relays: Relays::default(),
                local: Batch::default(),
                remote: (0..workers).map(|_| Batch::default()).collect(),
                tcp: HashMap::new(),
                tcp_dirty: Vec::new(),
                steered: [None, None],
                offloads: shared
                    .xdp
                    .as_ref()
                    .map(|p| Offloads::new(Arc::clone(p), index, workers)),
                stats: IoStats::default(),
            }),
            rx: RefCell::new(RecvBatch::with_destinations(BUF_LEN)),
            scratch: RefCell::new(vec![0u8; BUF_LEN].into_boxed_slice()),
            wake,
            shared,
            timers,
        })
    }

    /// The state shared with the other workers.
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This worker's timers.
    pub(super) fn timers(&self) -> &Rc<Timers> {
        &self.timers
    }

    /// The receive slots every socket of this worker is read into.
    pub(super) fn rx(&self) -> &RefCell<RecvBatch> {
        &self.rx
    }

    /// Up to [`RECV_ROUNDS`] batches from `sock`, each handed to the core
    /// and settled; whether the socket is drained.
    pub(super) fn receive(&self, sock: &Udp, source: Source) -> bool {
        let fd = sock.get_ref().as_raw_fd();
        batch::drain(fd, &self.rx, source.offset(), RECV_ROUNDS, &mut |rx, n| {
            self.on_batch(source, rx, n);
        })
    }

    /// The worker's control loop: ticks, orders and state changes, until
    /// the phase turns to stopping. Must run inside a `LocalSet`.
    async fn control(
        self: Rc<Self>,
        mut state: watch::Receiver<WorkerState>,
    ) -> std::io::Result<()> {
        if let Some(o) = &mut self.io.borrow_mut().offloads {
            o.set_rate(state.borrow().config.limits.max_bandwidth);
            self.core.borrow_mut().set_offloading(true);
        }
        tokio::task::spawn_local(inbox_loop(Rc::clone(&self)));
        let mut orders = self.shared.mailboxes.take(self.index);
        let mut tick = self.timers.every(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                Some(order) = mailbox::next(&mut orders) => self.obey(order),
                r = state.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let s = state.borrow_and_update().clone();
                    if s.phase == Phase::Stopping {
                        break;
                    }
                    let mut core = self.core.borrow_mut();
                    let mut io = self.io.borrow_mut();
                    if let Some(o) = &mut io.offloads {
                        o.set_rate(s.config.limits.max_bandwidth);
                    }
                    core.set_config(s.config);
                    core.set_refuse_allocations(s.phase == Phase::Draining);
                    // The peer policy or the limits may have changed:
                    // every offloaded channel is checked again now.
                    core.reoffload_all(now(), &mut *io);
                }
            }
        }
        let now = now();
        self.settle(now);
        self.core
            .borrow_mut()
            .close_all(now, &mut *self.io.borrow_mut());
        self.settle(now);
        self.publish(now);
        Ok(())
    }

    /// Register the listeners and the steered sockets (returned, for the
    /// pump to read) and start a task accepting on each TCP listener. Must
    /// run inside a `LocalSet`.
    fn start_sockets(
        self: &Rc<Self>,
        udp: Vec<UdpSocket>,
        tcp: Vec<(std::net::TcpListener, StreamMode)>,
    ) -> std::io::Result<Vec<pump::Hot>> {
        let mut hot = Vec::new();
        for s in udp {
            let local = s.local_addr()?;
            let sock = Rc::new(register(s)?);
            let mut io = self.io.borrow_mut();
            io.listener_addrs.push(local);
            io.listeners.push(Rc::clone(&sock));
            hot.push(pump::Hot::new(sock, Source::Listener(local)));
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
            hot.push(pump::Hot::new(sock, Source::Steered));
        }
        for (l, mode) in tcp {
            let listener = tokio::net::TcpListener::from_std(l)?;
            tokio::task::spawn_local(tcp::accept_loop(Rc::clone(self), listener, mode));
        }
        Ok(hot)
    }

    /// An operator's order, between batches.
    fn obey(&self, order: Order) {
        let now = now();
        match order {
            Order::Sessions { user, reply } => {
                let _ = reply.send(self.core.borrow().sessions(now, user.as_deref()));
            }
            Order::Close { target, reply } => {
                let closed =
                    self.core
                        .borrow_mut()
                        .close_where(now, &mut *self.io.borrow_mut(), |a| match &target {
                            Target::Id(id) => a.id.to_bits() == *id,
                            Target::User(u) => a.user() == u,
                        });
                self.settle(now);
                let _ = reply.send(closed);
            }
        }
    }

    fn tick(&self) {
        let now = now();
        self.core.borrow_mut().tick(now, &mut *self.io.borrow_mut());
        self.settle(now);
        self.publish(now);
    }

    /// Hand one batch of `n` datagrams from `source` to the core, then
    /// settle it.
    pub(super) fn on_batch(&self, source: Source, rx: &mut RecvBatch, n: usize) {
        let now = now();
        {
            let mut core = self.core.borrow_mut();
            let mut io = self.io.borrow_mut();
            let io = &mut *io;
            match source {
                Source::Listener(local) => rx.each(n, |buf, len, remote| {
                    let tuple = FiveTuple {
                        transport: Transport::Udp,
                        local,
                        remote,
                    };
                    core.on_client(now, &tuple, &buf[..len], io);
                }),
                Source::Relay(alloc) => rx.each(n, |buf, len, peer| {
                    let payload = PEER_HEADROOM..PEER_HEADROOM + len;
                    core.on_peer(now, alloc, peer, buf, payload, io);
                }),
                Source::Steered => {
                    io.stats.steered += n as u64;
                    let relays = &self.shared.relays;
                    for i in 0..n {
                        let to = rx.destination(i);
                        let (buf, len, from) = rx.slot(i);
                        // A relay closed meanwhile drops it (as its socket
                        // would have).
                        let Some((alloc, peer)) = to.and_then(|to| relays.get(&to)).zip(from)
                        else {
                            continue;
                        };
                        let payload = PEER_HEADROOM..PEER_HEADROOM + len;
                        core.on_peer(now, alloc, peer, buf, payload, io);
                    }
                }
            }
        }
        self.settle(now);
    }

    /// Finish a batch: deliver relay-to-relay datagrams for this worker's
    /// relays (its own, then those other workers sent), send those for
    /// other workers' relays on, then send what waits for the clients.
    /// Delivering to a peer sends only to clients, so nothing new is
    /// queued for delivery meanwhile.
    pub(super) fn settle(&self, now: Now) {
        let mut core = self.core.borrow_mut();
        let mut io = self.io.borrow_mut();
        let io = &mut *io;
        let mut scratch = self.scratch.borrow_mut();
        if !io.local.is_empty() {
            let local = std::mem::take(&mut io.local);
            deliver(
                &self.shared,
                self.index,
                &mut core,
                &local,
                io,
                &mut scratch,
                now,
            );
            io.stats.handoffs[HandoffPath::SameWorker as usize] += local.len() as u64;
            io.local = local;
            io.local.clear();
        }
        let received = self.shared.handoffs.receive(self.index, |batch| {
            deliver(
                &self.shared,
                self.index,
                &mut core,
                batch,
                io,
                &mut scratch,
                now,
            );
        });
        io.stats.handoffs[HandoffPath::OtherWorker as usize] += received as u64;
        for w in 0..io.remote.len() {
            if !io.remote[w].is_empty() {
                let dropped = self.shared.handoffs.send(self.index, w, &mut io.remote[w]);
                io.stats.handoffs_dropped += dropped as u64;
            }
        }
        io.flush_out();
        for out in io.tcp_dirty.drain(..) {
            out.flush();
        }
    }

    /// Copy this worker's counters to the board.
    fn publish(&self, now: Now) {
        let mut core = self.core.borrow_mut();
        core.refresh_gauges(now);
        let io = self.io.borrow();
        let mut report = Report {
            core: core.stats.clone(),
            io: io.stats.clone(),
            allocations: core.allocation_count(),
            tcp_connections: io.tcp.len(),
            offloaded: 0,
        };
        if let Some(o) = &io.offloads {
            report.offloaded = o.len();
            report.io.offload_failed = o.failed;
        }
        self.shared.board.publish(self.index, &report);
        // The program's counters are global: one worker reads them.
        if let Some(path) = self.shared.xdp.as_ref().filter(|_| self.index == 0) {
            self.shared.board.set_xdp_program(path.stats());
        }
    }

    /// Hand one client message to the core (sent when the caller
    /// settles).
    pub(super) fn client_message(&self, tuple: &FiveTuple, bytes: &[u8]) {
        let mut io = self.io.borrow_mut();
        self.core
            .borrow_mut()
            .on_client(now(), tuple, bytes, &mut *io);
    }

    /// Count a datagram dropped before it reached the core.
    pub(super) fn count_drop(&self, reason: DropReason) {
        self.core.borrow_mut().stats.drop(reason);
    }

    /// Whether `client` holds an allocation.
    pub(super) fn has_allocation(&self, client: &FiveTuple) -> bool {
        self.core.borrow().allocation_of(client).is_some()
    }

    /// A TCP client connected.
    pub(super) fn add_tcp(&self, tuple: FiveTuple, out: Rc<TcpOut>) {
        self.io.borrow_mut().tcp.insert(tuple, out);
    }

    /// A TCP client's connection ended: its allocation goes with it.
    pub(super) fn remove_tcp(&self, tuple: &FiveTuple) {
        let now = now();
        let mut io = self.io.borrow_mut();
        io.tcp.remove(tuple);
        self.core
            .borrow_mut()
            .on_client_closed(now, tuple, &mut *io);
        drop(io);
        self.settle(now);
    }
}

/// Drain the lanes other workers send to whenever woken (only while this
/// worker is parked: when it is busy, its batches drain them).
async fn inbox_loop(w: Rc<Worker>) {
    loop {
        w.wake.notified().await;
        w.settle(now());
    }
}
