//! tern-loadgen: the benchmark's own load generator and bare forwarder.
//!
//! - `turn`: N sessions against any TURN server (tern or coturn): each
//!   authenticates with a REST credential, allocates, creates a permission
//!   and binds a channel to an echo peer, then sends ChannelData at a fixed
//!   rate and times every echo. Prints one `key=value` line.
//! - `raw`: the same traffic without TURN, straight to a UDP echo service
//!   (the bare forwarder, or the peer itself for direct latency).
//! - `forward`: the floor of the CPU comparison, a UDP forwarder with the
//!   socket layout of a relay and no TURN logic (`bench/forward.rs`).
//! - `echo`: the echo peer for the rows where coturn's single-socket
//!   `turnutils_peer` (one `recvfrom` and one `sendto` per datagram) is
//!   the first to overflow: the same service with batched I/O, so the
//!   servers under test, not the peer, meet the load.
//! - `paired`: the round trips of several targets (tern, coturn, the
//!   floors, the peer alone) in one run, in turns, with a paired
//!   comparison (`bench/paired.rs`).
//!
//! Loopback use only; every run is bounded by `--seconds`.

mod forward;
mod paired;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{CLASS_SUCCESS_RESPONSE, Getter, Message, Setter};
use stun::textattrs::TextAttribute;
use tern::io::batch::{RecvBatch, SendQueue, receive_batches};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqtrans::RequestedTransport;

use tern::request::{Auth, request};

#[derive(Parser)]
#[command(
    name = "tern-loadgen",
    about = "Load generator and bare forwarder for bench/compare"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// Server (or echo service) to send to.
    #[arg(long)]
    server: SocketAddr,
    /// Concurrent sessions (one client socket each).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Datagrams per second per session (0: set up, hold, send nothing).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Payload bytes per datagram (at least 16).
    #[arg(long, default_value_t = 120)]
    size: usize,
    /// Seconds of sending (or of holding, with --rate 0).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

#[derive(Subcommand)]
enum Mode {
    /// TURN sessions with channels to an echo peer.
    Turn {
        #[command(flatten)]
        load: Load,
        /// The REST API shared secret.
        #[arg(long)]
        secret: String,
        /// The echo peer every session relays to.
        #[arg(long)]
        peer: SocketAddr,
        /// Session set-ups in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Plain UDP to an echo service.
    Raw {
        #[command(flatten)]
        load: Load,
    },
    /// A bare forwarder: each client's datagrams go to `peer` from a socket
    /// of its own, and the answers back.
    Forward {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        peer: SocketAddr,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Upstream sockets: `connected` to the peer, `unconnected` (as
        /// a relay's, which may have many peers), `steered`: unconnected,
        /// and their answers received on one socket per worker through
        /// BPF sk_lookup (needs CAP_BPF and CAP_NET_ADMIN), as tern's
        /// relays with `[relay] steering`; `auto`: steered if it can be,
        /// else unconnected (as tern's default).
        #[arg(long, value_enum, default_value_t = forward::Upstream::Auto)]
        upstream: forward::Upstream,
    },
    /// A UDP echo service: every datagram goes back to its source.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Round trips of several targets in one run, driven in turns.
    Paired(paired::Paired),
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Turn {
            load,
            secret,
            peer,
            concurrency,
        } => run_load(load, Some(Turn { secret, peer }), concurrency),
        Mode::Raw { load } => run_load(load, None, 1),
        Mode::Forward {
            listen,
            peer,
            workers,
            upstream,
        } => forward::forward(listen, peer, workers, upstream),
        Mode::Echo { listen } => echo(listen),
        Mode::Paired(p) => paired::run(p),
    }
}

struct Turn {
    secret: String,
    peer: SocketAddr,
}

/// One client socket.
struct Session {
    sock: AsyncFd<UdpSocket>,
    /// Bytes before the payload: the ChannelData header, or nothing.
    header: Vec<u8>,
}

impl Session {
    /// Send `payload` (at least 16 bytes) behind this session's header,
    /// its first two words set to `words` (the send time in nanoseconds,
    /// and one of the caller's); `frame` is scratch space.
    fn send_stamped(
        &self,
        frame: &mut Vec<u8>,
        payload: &mut [u8],
        words: [u64; 2],
    ) -> std::io::Result<usize> {
        payload[..8].copy_from_slice(&words[0].to_be_bytes());
        payload[8..16].copy_from_slice(&words[1].to_be_bytes());
        frame.clear();
        frame.extend_from_slice(&self.header);
        frame.extend_from_slice(payload);
        // ChannelData over UDP needs no padding (RFC 8656 §12.5).
        socket2::SockRef::from(self.sock.get_ref()).send(frame)
    }

    /// The two words of our own frame echoed back (see `send_stamped`);
    /// `None` for anything else, such as a STUN answer.
    fn echoed(&self, slot: &[u8], len: usize) -> Option<[u64; 2]> {
        let skip = self.header.len();
        if len < skip + 16 || slot[..skip] != self.header[..] {
            return None;
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&slot[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Some([word(skip), word(skip + 8)])
    }
}

/// Everything the receivers record.
#[derive(Default)]
struct Tally {
    received: u64,
    rtt_us: Vec<u32>,
}

const CHANNEL: u16 = 0x4000;

fn run_load(load: Load, turn: Option<Turn>, concurrency: usize) -> Result<()> {
    if load.size < 16 {
        bail!("--size must be at least 16");
    }
    on_local_runtime(async move {
        let epoch = Instant::now();
        let started = Instant::now();
        let (sessions, failed) = open_sessions(&load, turn, concurrency).await;
        let setup_s = started.elapsed().as_secs_f64();
        let tally = Rc::new(RefCell::new(Tally::default()));
        let rx = Rc::new(RefCell::new(RecvBatch::new(2048)));
        for s in &sessions {
            tokio::task::spawn_local(receive(
                Rc::clone(s),
                Rc::clone(&tally),
                Rc::clone(&rx),
                epoch,
            ));
        }
        let (sent, send_errors) = if load.rate == 0 {
            // Hold the allocations (memory measurement) for the duration.
            tokio::time::sleep(Duration::from_secs_f64(load.seconds)).await;
            (0, 0)
        } else {
            send(&sessions, &load, epoch).await
        };
        // Let the last echoes arrive.
        let deadline = Instant::now() + Duration::from_secs(2);
        while tally.borrow().received < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = tally.borrow();
        let mut rtt = t.rtt_us.clone();
        rtt.sort_unstable();
        let pct = |p: f64| {
            rtt.get(((rtt.len() as f64 * p) as usize).min(rtt.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let loss = if sent > 0 {
            100.0 * (sent.saturating_sub(t.received)) as f64 / sent as f64
        } else {
            0.0
        };
        println!(
            "sessions={} failed={} setup_s={:.3} setups_per_s={:.0} sent={} received={} send_errors={} loss_pct={:.3} rtt_p50_us={} rtt_p99_us={}",
            sessions.len(),
            failed,
            setup_s,
            sessions.len() as f64 / setup_s.max(1e-9),
            sent,
            t.received,
            send_errors,
            loss,
            pct(0.5),
            pct(0.99),
        );
        Ok(())
    })
}

/// Open `load.sessions` sessions, `concurrency` at a time; those open,
/// and how many failed.
async fn open_sessions(
    load: &Load,
    turn: Option<Turn>,
    concurrency: usize,
) -> (Vec<Rc<Session>>, usize) {
    let sessions = Rc::new(RefCell::new(Vec::with_capacity(load.sessions)));
    let turn = Rc::new(turn);
    let sem = Rc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut setups = Vec::new();
    for i in 0..load.sessions {
        let (turn, sem, sessions) = (Rc::clone(&turn), Rc::clone(&sem), Rc::clone(&sessions));
        let (server, size) = (load.server, load.size);
        setups.push(tokio::task::spawn_local(async move {
            let _permit = sem.acquire().await;
            let s = open_session(server, turn.as_ref().as_ref(), i, size).await;
            if let Err(e) = &s {
                eprintln!("session {i}: {e:#}");
            }
            s.map(|s| sessions.borrow_mut().push(s))
        }));
    }
    let mut failed = 0;
    for s in setups {
        if !matches!(s.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let open = sessions.borrow_mut().drain(..).map(Rc::new).collect();
    (open, failed)
}

/// Send at the configured rate, sessions spread evenly over each period:
/// datagram `j` overall goes to session `j mod n` at time `j / (n * rate)`,
/// so each 1 ms tick costs only the datagrams due in it.
async fn send(sessions: &[Rc<Session>], load: &Load, epoch: Instant) -> (u64, u64) {
    let n = sessions.len() as u64;
    let total = n * (f64::from(load.rate) * load.seconds) as u64;
    let per_second = n as f64 * f64::from(load.rate);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut payload = vec![0u8; load.size];
    let mut frame = Vec::with_capacity(load.size + 8);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total && n > 0 {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed > load.seconds + 5.0 {
            break;
        }
        let due = ((elapsed * per_second) as u64 + 1).min(total);
        while sent < due {
            let s = &sessions[(sent % n) as usize];
            let stamp = epoch.elapsed().as_nanos() as u64;
            if s.send_stamped(&mut frame, &mut payload, [stamp, sent / n])
                .is_err()
            {
                errors += 1;
            }
            sent += 1;
        }
    }
    (sent, errors)
}

/// Count echoes and their round trips, reading with tern's batched
/// receive loop: the generator must not be what limits the rows with
/// thousands of sessions.
async fn receive(
    s: Rc<Session>,
    tally: Rc<RefCell<Tally>>,
    rx: Rc<RefCell<RecvBatch>>,
    epoch: Instant,
) {
    receive_loop(&s.sock, &rx, 0, 1, |slot, len, _| {
        if let Some([sent_ns, _]) = s.echoed(slot, len) {
            let now_ns = epoch.elapsed().as_nanos() as u64;
            let mut t = tally.borrow_mut();
            t.received += 1;
            t.rtt_us
                .push((now_ns.saturating_sub(sent_ns) / 1000) as u32);
        }
    })
    .await;
}

fn udp_to(server: SocketAddr) -> Result<AsyncFd<UdpSocket>> {
    // Any local address: `connect` picks the route's source (loopback for
    // a server on loopback, the veth's address in bench/veth).
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(server)?;
    s.set_nonblocking(true)?;
    let sock = socket2::SockRef::from(&s);
    let _ = sock.set_recv_buffer_size(1 << 20);
    // SAFETY: the socket owns its descriptor for the AsyncFd's lifetime.
    Ok(unsafe { AsyncFd::register(s) }.map_err(std::io::Error::from)?)
}

/// Open one session: for TURN, authenticate, allocate, permit and bind.
async fn open_session(
    server: SocketAddr,
    turn: Option<&Turn>,
    i: usize,
    size: usize,
) -> Result<Session> {
    let sock = udp_to(server)?;
    let Some(turn) = turn else {
        return Ok(Session {
            sock,
            header: Vec::new(),
        });
    };
    let expiry = tern::cli::unix_now() + 3600;
    let username = format!("{expiry}:loadgen{i}");
    let password = tern::auth::rest_password(turn.secret.as_bytes(), &username);
    let transport = || -> Box<dyn Setter> {
        Box::new(RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        })
    };
    let peer = || -> Box<dyn Setter> {
        Box::new(PeerAddress {
            ip: turn.peer.ip(),
            port: turn.peer.port(),
        })
    };
    // The first Allocate draws the realm and nonce.
    let challenge = transact(&sock, &request(0x003, vec![transport()], None)?).await?;
    let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)?.text;
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)?.text;
    let auth = Auth {
        user: &username,
        pass: &password,
        realm: &realm,
        nonce: &nonce,
    };
    for (method, attrs) in [
        (0x003, vec![transport()]),
        (0x008, vec![peer()]),
        (
            0x009,
            vec![Box::new(ChannelNumber(CHANNEL)) as Box<dyn Setter>, peer()],
        ),
    ] {
        let m = transact(&sock, &request(method, attrs, Some(&auth))?).await?;
        if m.typ.class != CLASS_SUCCESS_RESPONSE {
            let mut e = ErrorCodeAttribute::default();
            let _ = e.get_from(&m);
            bail!("method {method:#x} failed: {}", e.code.0);
        }
    }
    let mut header = CHANNEL.to_be_bytes().to_vec();
    header.extend_from_slice(&u16::try_from(size)?.to_be_bytes());
    Ok(Session { sock, header })
}

/// Send a request and wait for its answer, retransmitting (RFC 8489 §6.2.1).
async fn transact(sock: &AsyncFd<UdpSocket>, req: &[u8]) -> Result<Message> {
    let mut buf = vec![0u8; 2048];
    let mut rto = Duration::from_millis(250);
    for _ in 0..6 {
        sock.get_ref().send(req)?;
        let deadline = tokio::time::Instant::now() + rto;
        loop {
            let wait = tokio::time::timeout_at(deadline, sock.readable()).await;
            let Ok(ready) = wait else { break };
            let mut ready = ready?;
            match sock.get_ref().recv(&mut buf) {
                Ok(n) if n >= 20 && buf[8..20] == req[8..20] => {
                    let mut m = Message::new();
                    m.raw = buf[..n].to_vec();
                    m.decode()?;
                    return Ok(m);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
        rto *= 2;
    }
    bail!("no answer from the server")
}

/// by a flush task woken with the first, which runs after the scheduling
/// round's ready tasks (as in tern's workers).
struct Outbox {
    sock: Rc<AsyncFd<UdpSocket>>,
    queue: RefCell<SendQueue>,
    wake: Notify,
}

impl Outbox {
    /// An outbox for `sock`, its flush task spawned on this thread.
    fn spawn(sock: Rc<AsyncFd<UdpSocket>>) -> Rc<Self> {
        let outbox = Rc::new(Self {
            sock,
            queue: RefCell::new(SendQueue::default()),
            wake: Notify::new(),
        });
        let flusher = Rc::clone(&outbox);
        tokio::task::spawn_local(async move {
            let fd = flusher.sock.get_ref().as_raw_fd();
            loop {
                flusher.wake.notified().await;
                flusher.queue.borrow_mut().flush(|_| Some(fd));
            }
        });
        outbox
    }

    fn push(&self, to: SocketAddr, bytes: &[u8]) {
        let mut queue = self.queue.borrow_mut();
        queue.push(0, to, bytes);
        if queue.len() == 1 {
            self.wake.notify_one();
        }
    }
}

/// Register a socket with this thread's reactor.
fn register(sock: UdpSocket) -> Result<Rc<AsyncFd<UdpSocket>>> {
    // SAFETY: the socket owns its descriptor for the AsyncFd's lifetime.
    Ok(Rc::new(
        unsafe { AsyncFd::register(sock) }.map_err(std::io::Error::from)?,
    ))
}

/// The echo peer: one thread, one socket, `recvmmsg` in and `sendmmsg`
/// out (the answers of a batch leave together, after the batch).
fn echo(listen: SocketAddr) -> Result<()> {
    let sock = tern::io::net::udp_listener(listen, 8 << 20)
        .with_context(|| format!("binding {listen}"))?;
    on_local_runtime(async move {
        let sock = register(sock)?;
        let out = Outbox::spawn(Rc::clone(&sock));
        let rx = RefCell::new(RecvBatch::new(2048));
        receive_loop(&sock, &rx, 0, 4, |slot, len, from| {
            out.push(from, &slot[..len]);
        })
        .await;
        bail!("echo socket failed")
    })
}

/// Run `task` on a current-thread runtime with a `LocalSet` (the
/// generator, each forwarder thread and the echo peer are single-threaded).
fn on_local_runtime<T>(task: impl Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, task)
}

/// Read `sock` until it fails, handing each datagram (at `offset` in its
/// slot) to `handle(slot, length, source)` (see
/// [`tern::io::batch::receive_batches`]).
async fn receive_loop(
    sock: &AsyncFd<UdpSocket>,
    rx: &RefCell<RecvBatch>,
    offset: usize,
    rounds: usize,
    mut handle: impl FnMut(&mut [u8], usize, SocketAddr),
) {
    receive_batches(sock, rx, offset, rounds, |rx, n| rx.each(n, &mut handle)).await;
}
