//! `tern-loadgen forward`: the floor of the CPU comparison, a UDP
//! forwarder with no TURN logic and the same socket layout as a relay
//! (one listener per core with SO_REUSEPORT, one unconnected upstream
//! socket per client, `recvmmsg` and `sendmmsg` through tern's own batch
//! I/O, and the answers steered to one socket per worker when tern's
//! relays would be: see `--upstream`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use anyhow::{Context, Result, bail};
use tern::io::batch::{RecvBatch, receive_batches};
use tokio::io::unix::AsyncFd;

use super::{Outbox, on_local_runtime, receive_loop, register, udp_to};

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    Auto,
    Connected,
    Unconnected,
    Steered,
}

/// Ports the steered forwarder binds its upstream sockets in.
const STEERED_PORTS: (u16, u16) = (16000, 31999);

/// The bare forwarder: per worker thread a listener (SO_REUSEPORT) and one
/// upstream socket per client, batched I/O both ways.
pub(crate) fn forward(
    listen: SocketAddr,
    peer: SocketAddr,
    workers: usize,
    upstream: Upstream,
) -> Result<()> {
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        workers
    };
    let (first, last) = STEERED_PORTS;
    let attach = || tern::io::sklookup::Steering::attach(listen.ip(), first, last);
    let (upstream, steering) = match upstream {
        Upstream::Steered => (
            upstream,
            Some(attach().context("attaching the sk_lookup program")?),
        ),
        Upstream::Auto => match attach() {
            Ok(s) => (Upstream::Steered, Some(s)),
            Err(_) => (Upstream::Unconnected, None),
        },
        other => (other, None),
    };
    let steering = steering.map(Arc::new);
    eprintln!(
        "forwarding with {} upstream sockets",
        if steering.is_some() {
            "steered"
        } else {
            "per-socket"
        }
    );
    let next_port = Arc::new(AtomicU16::new(STEERED_PORTS.0));
    let mut threads = Vec::new();
    for _ in 0..workers {
        let listener = tern::io::net::udp_listener(listen, 8 << 20)
            .with_context(|| format!("binding {listen}"))?;
        let how = How {
            peer,
            upstream,
            steering: steering.clone(),
            next_port: Arc::clone(&next_port),
        };
        threads.push(std::thread::spawn(move || {
            on_local_runtime(forward_worker(listener, how))
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(())
}

/// How a forwarder worker reaches the peer.
struct How {
    peer: SocketAddr,
    upstream: Upstream,
    steering: Option<Arc<tern::io::sklookup::Steering>>,
    next_port: Arc<AtomicU16>,
}

struct Fwd {
    how: How,
    listener: Rc<AsyncFd<UdpSocket>>,
    upstream: RefCell<HashMap<SocketAddr, Rc<AsyncFd<UdpSocket>>>>,
    /// Steered: the client of each upstream port.
    client_of: RefCell<HashMap<u16, SocketAddr>>,
    rx: RefCell<RecvBatch>,
    /// Answers to the clients, from the listener.
    out: Rc<Outbox>,
}

async fn forward_worker(listener: UdpSocket, how: How) -> Result<()> {
    let ip = listener.local_addr()?.ip();
    let listener = register(listener)?;
    let steered = how.upstream == Upstream::Steered;
    let f = Rc::new(Fwd {
        how,
        out: Outbox::spawn(Rc::clone(&listener)),
        listener,
        upstream: RefCell::new(HashMap::new()),
        client_of: RefCell::new(HashMap::new()),
        rx: RefCell::new(RecvBatch::new(2048)),
    });
    let mut receiver = None;
    if steered {
        // This worker's one socket for every upstream port's answers.
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        sock.set_nonblocking(true)?;
        socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20)?;
        tern::io::batch::receive_destinations(&sock)?;
        let sock = register(sock)?;
        let f2 = Rc::clone(&f);
        let r2 = Rc::clone(&sock);
        tokio::task::spawn_local(async move {
            let rx = RefCell::new(RecvBatch::with_destinations(2048));
            receive_batches(&r2, &rx, 0, 4, |rx, n| {
                let clients = f2.client_of.borrow();
                for i in 0..n {
                    let port = rx.destination(i).map(|d| d.port());
                    let (slot, len, _) = rx.slot(i);
                    if let Some(client) = port.and_then(|p| clients.get(&p)) {
                        f2.out.push(*client, &slot[..len]);
                    }
                }
            })
            .await;
        });
        receiver = Some(sock);
    }
    receive_loop(&f.listener, &f.rx, 0, 4, |slot, len, client| {
        // A client whose upstream socket cannot be opened loses the
        // datagram, which the generator counts.
        if let Ok(up) = upstream_for(&f, client, receiver.as_deref()) {
            let sock = socket2::SockRef::from(up.get_ref());
            let _ = match f.how.upstream {
                Upstream::Connected => sock.send(&slot[..len]),
                _ => sock.send_to(&slot[..len], &f.how.peer.into()),
            };
        }
    })
    .await;
    bail!("listener failed")
}

fn upstream_for(
    f: &Rc<Fwd>,
    client: SocketAddr,
    receiver: Option<&AsyncFd<UdpSocket>>,
) -> Result<Rc<AsyncFd<UdpSocket>>> {
    if let Some(u) = f.upstream.borrow().get(&client) {
        return Ok(Rc::clone(u));
    }
    let ip = f.listener.get_ref().local_addr()?.ip();
    let up = match (f.how.upstream, receiver, &f.how.steering) {
        (Upstream::Connected, _, _) => Rc::new(udp_to(f.how.peer)?),
        (Upstream::Steered, Some(receiver), Some(steering)) => {
            let (port, sock) = loop {
                let port = f.how.next_port.fetch_add(1, Ordering::Relaxed);
                if !(STEERED_PORTS.0..=STEERED_PORTS.1).contains(&port) {
                    bail!("steered ports exhausted");
                }
                if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port)) {
                    break (port, s);
                }
            };
            sock.set_nonblocking(true)?;
            steering.set(port, receiver.get_ref().as_raw_fd())?;
            f.client_of.borrow_mut().insert(port, client);
            // Registered only to live in the same map; never read.
            let up = register(sock)?;
            f.upstream.borrow_mut().insert(client, Rc::clone(&up));
            return Ok(up);
        }
        _ => {
            let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
            s.set_nonblocking(true)?;
            register(s)?
        }
    };
    f.upstream.borrow_mut().insert(client, Rc::clone(&up));
    let (f2, up2) = (Rc::clone(f), Rc::clone(&up));
    tokio::task::spawn_local(async move {
        receive_loop(&up2, &f2.rx, 0, 4, |slot, len, _| {
            f2.out.push(client, &slot[..len]);
        })
        .await;
    });
    Ok(up)
}
