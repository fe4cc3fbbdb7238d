//! tern-latfloor: the round-trip floor of `bench/compare --latency`.
//!
//! The least a relay built on sockets can add to a round trip: one
//! thread, its own level-triggered `epoll`, one `recvfrom` and one
//! `sendto` per datagram, no async runtime, no TURN. Datagrams from a
//! client go to `--peer` from an upstream socket of that client's own
//! (as a relay's allocation has); the peer's answers go back to the
//! client from the listener. At light load a round trip through it is
//! the kernel's part of any relay (wake-ups, context switches, loopback
//! deliveries), so tern's and coturn's distance to it is what their user
//! space adds. With `--connected` it answers each client from a socket
//! connected to that client, as coturn does, instead of from the listener
//! (what that choice is worth: docs/performance.md).
//!
//! With `--tokio` the same forwarding runs on a current-thread tokio
//! runtime, the sockets polled by one future as tern's workers poll
//! theirs (`src/io/pump.rs`): the difference between the two floors is
//! what the runtime's wake-up path adds. Like tern's workers, that
//! runtime has no time driver; `--time-driver` adds tokio's, with a 1 s
//! interval as a timer (tern's workers had both until they took their
//! timers onto a `timerfd`, `src/io/timer.rs`): what the driver costs.
//!
//! Loopback use only: it forwards to one peer, and holds at most
//! `--max-clients` upstream sockets.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use clap::Parser;
use tokio::io::unix::AsyncFd;

/// Forward UDP between clients and one peer, for latency floors.
#[derive(Parser)]
struct Args {
    /// Address to receive clients' datagrams on.
    #[arg(long)]
    listen: SocketAddr,
    /// Where clients' datagrams go.
    #[arg(long)]
    peer: SocketAddr,
    /// Clients served at most (one upstream socket each).
    #[arg(long, default_value_t = 1000)]
    max_clients: usize,
    /// Forward on a current-thread tokio runtime (sockets' readiness
    /// polled by one future, as tern's workers do) instead of a bare
    /// epoll loop: the runtime's share of tern's round trip.
    #[arg(long)]
    tokio: bool,
    /// With `--tokio`: enable tokio's time driver and keep a 1 s interval
    /// ticking, so that every park goes through the timer wheel.
    #[arg(long, requires = "tokio")]
    time_driver: bool,
    /// Answer each client from a socket of its own, bound to the listen
    /// address and connected to the client (as coturn does), instead of
    /// from the listener; the client's later datagrams arrive on it too.
    #[arg(long, conflicts_with = "tokio")]
    connected: bool,
}

/// Tokens of the connected client sockets: `DOWN + i` for client `i`.
const DOWN: u64 = 1 << 32;

/// The listener's token in the epoll set; upstream socket `i` is `i + 1`.
const LISTENER: u64 = 0;

fn main() -> io::Result<()> {
    let args = Args::parse();
    if args.tokio {
        return on_tokio(&args);
    }
    // With --connected, the clients' sockets share its address.
    let listener = bound(args.listen, args.connected)?;
    // SAFETY: epoll_create1 takes no pointers; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` is a new descriptor that nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    watch(&ep, listener.as_raw_fd(), LISTENER)?;
    let mut upstream = Upstreams::new(args.max_clients);
    let mut buf = [0u8; 65_536];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: `events` is valid for 64 entries, which the kernel writes.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        };
        for ev in &events[..n] {
            let token = ev.u64;
            if token == LISTENER {
                let Ok((len, client)) = listener.recv_from(&mut buf) else {
                    continue;
                };
                // Client i's sockets: upstream, and with --connected one
                // connected to the client (both opened, or neither).
                let open = |i: usize| -> io::Result<(UdpSocket, Option<UdpSocket>)> {
                    let up = open_upstream(&ep, args.listen, i as u64 + 1)?;
                    let down = args
                        .connected
                        .then(|| connected_to(&ep, args.listen, client, DOWN + i as u64));
                    Ok((up, down.transpose()?))
                };
                if let Some((sock, _)) = upstream.for_client(client, open) {
                    let _ = sock.send_to(&buf[..len], args.peer);
                }
            } else if token >= DOWN {
                let i = (token - DOWN) as usize;
                if let Some(((sock, Some(down)), _)) = upstream.socks.get(i) {
                    if let Ok(len) = down.recv(&mut buf) {
                        let _ = sock.send_to(&buf[..len], args.peer);
                    }
                }
            } else if let Some(((sock, down), client)) = upstream.socks.get(token as usize - 1) {
                if let Ok((len, _)) = sock.recv_from(&mut buf) {
                    let _ = match down {
                        Some(down) => down.send(&buf[..len]),
                        None => listener.send_to(&buf[..len], *client),
                    };
                }
            }
        }
    }
}

/// Each client's upstream socket (as a relay's allocation has), opened on
/// its first datagram; at most `max` of them.
struct Upstreams<S> {
    /// The sockets and their clients, in the order they were opened.
    socks: Vec<(S, SocketAddr)>,
    by_client: HashMap<SocketAddr, usize>,
    max: usize,
}

impl<S> Upstreams<S> {
    fn new(max: usize) -> Self {
        Self {
            socks: Vec::new(),
            by_client: HashMap::new(),
            max,
        }
    }

    /// `client`'s upstream socket, opened by `open(index)` if it has none
    /// yet; `None` (drop the datagram) when `max` are open or the open
    /// fails (out of descriptors or ports).
    fn for_client(
        &mut self,
        client: SocketAddr,
        open: impl FnOnce(usize) -> io::Result<S>,
    ) -> Option<&S> {
        let i = match self.by_client.get(&client) {
            Some(&i) => i,
            None if self.socks.len() < self.max => {
                let sock = open(self.socks.len()).ok()?;
                self.socks.push((sock, client));
                self.by_client.insert(client, self.socks.len() - 1);
                self.socks.len() - 1
            }
            None => return None,
        };
        Some(&self.socks[i].0)
    }
}

/// A new upstream socket on `listen`'s address, in the epoll set as `token`.
fn open_upstream(ep: &OwnedFd, listen: SocketAddr, token: u64) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(listen.ip(), 0))?;
    sock.set_nonblocking(true)?;
    watch(ep, sock.as_raw_fd(), token)?;
    Ok(sock)
}

/// A non-blocking UDP socket bound to `addr`; with `shared`, with
/// SO_REUSEADDR, so that connected sockets can share the address.
fn bound(addr: SocketAddr, shared: bool) -> io::Result<UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    sock.set_reuse_address(shared)?;
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// A socket on `listen`'s address connected to `client`, in the epoll
/// set as `token`.
fn connected_to(
    ep: &OwnedFd,
    listen: SocketAddr,
    client: SocketAddr,
    token: u64,
) -> io::Result<UdpSocket> {
    let sock = bound(listen, true)?;
    sock.connect(client)?;
    watch(ep, sock.as_raw_fd(), token)?;
    Ok(sock)
}

/// Add `fd` to the epoll set `ep` for reading (level-triggered).
fn watch(ep: &OwnedFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: `ev` is a valid event for the call's duration; both
    // descriptors are open.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The same forwarding on a current-thread tokio runtime: one future
/// polls every socket's readiness (as tern's `io/pump.rs` does) and
/// reads and writes as the epoll loop does. Its distance to the epoll
/// loop is what the runtime's wake-up path costs.
fn on_tokio(args: &Args) -> io::Result<()> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if args.time_driver {
        builder.enable_all();
    } else {
        builder.enable_io();
    }
    let rt = builder.build()?;
    rt.block_on(async {
        let listener = registered(args.listen)?;
        let mut upstream = Upstreams::new(args.max_clients);
        let mut buf = [0u8; 65_536];
        if args.time_driver {
            // A timer as tern's workers had (their tick), so the timer
            // wheel takes part in each park.
            tokio::spawn(async {
                let mut t = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    t.tick().await;
                }
            });
        }
        std::future::poll_fn(|cx| {
            while let Some((len, client)) = read(&listener, cx, &mut buf) {
                let open = |_| registered(SocketAddr::new(args.listen.ip(), 0));
                if let Some(sock) = upstream.for_client(client, open) {
                    let _ = sock.get_ref().send_to(&buf[..len], args.peer);
                }
            }
            for (sock, client) in &upstream.socks {
                while let Some((len, _)) = read(sock, cx, &mut buf) {
                    let _ = listener.get_ref().send_to(&buf[..len], *client);
                }
            }
            std::task::Poll::<io::Result<()>>::Pending
        })
        .await
    })
}

/// A non-blocking UDP socket bound to `addr`, registered with the
/// runtime's reactor.
fn registered(addr: SocketAddr) -> io::Result<AsyncFd<UdpSocket>> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    // SAFETY: the AsyncFd owns the socket, so the descriptor stays open
    // for as long as it is registered.
    unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)
}

/// One datagram from `sock` if it has one; otherwise `None`, with the
/// waker registered for the next.
fn read(
    sock: &AsyncFd<UdpSocket>,
    cx: &mut std::task::Context<'_>,
    buf: &mut [u8],
) -> Option<(usize, SocketAddr)> {
    loop {
        let std::task::Poll::Ready(Ok(mut ready)) = sock.poll_read_ready(cx) else {
            return None;
        };
        match sock.get_ref().recv_from(buf) {
            Ok(got) => return Some(got),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
            // An error queued for an earlier datagram: read on.
            Err(_) => {}
        }
    }
}
