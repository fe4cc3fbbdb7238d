//! How a worker's UDP sockets are read. The hot ones (its listeners and
//! steered relay sockets) are read by the future the worker's runtime
//! polls itself, [`pump`], which also waits for the control task to end;
//! each polled relay socket by a task of its own, [`serve`].
//!
//! Why not a task per socket, as polled relays have: a task woken by the
//! reactor is queued in the `LocalSet`, which is woken in turn, and only
//! then polled, through its own readiness future. At light load every
//! datagram pays that path, with cold caches, twice per round trip
//! (client → peer, peer → client). A socket polled here registers the
//! runtime's own waker, so the reactor's wake-up leads straight to its
//! `recvmmsg` (docs/performance.md, "The added round trip at light load").
//! The hot sockets are a handful per worker, so polling each one's
//! readiness (an atomic load) on every wake-up costs less than the queue.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

use super::batch;
use super::relay::Udp;
use super::worker::{RECV_ROUNDS, Worker};
use crate::core::AllocId;
use crate::wire::PEER_HEADROOM;

/// A socket the pump reads.
pub(super) struct Hot {
    sock: Rc<Udp>,
    source: Source,
}

impl Hot {
    /// Read `sock`, whose datagrams come from `source`.
    pub(super) fn new(sock: Rc<Udp>, source: Source) -> Self {
        Self { sock, source }
    }

    /// Read this socket if it is readable; whether it still is (not
    /// drained, or readable again), so the pump should come back after
    /// letting the other tasks run. Leaves the runtime's waker registered
    /// otherwise.
    fn poll(&self, w: &Worker, cx: &mut Context<'_>) -> bool {
        let Poll::Ready(Ok(mut ready)) = self.sock.poll_read_ready(cx) else {
            // Not readable (the waker is registered), or the reactor is
            // gone (the worker is ending).
            return false;
        };
        if !w.receive(&self.sock, self.source) {
            return true;
        }
        ready.clear_ready();
        // Register the waker for the next datagram, or notice it is here.
        matches!(self.sock.poll_read_ready(cx), Poll::Ready(Ok(_)))
    }
}

/// What one poll of the pump found.
enum Step {
    /// The control task ended, with this result.
    Done(io::Result<()>),
    /// A socket is still readable: yield to the other tasks, then go on.
    Busy,
}

/// Read `hot` whenever woken, until the `control` task ends; its result.
pub(super) async fn pump(
    w: Rc<Worker>,
    hot: Vec<Hot>,
    control: JoinHandle<io::Result<()>>,
) -> io::Result<()> {
    let mut control = pin!(control);
    loop {
        let step = poll_fn(|cx| {
            if let Poll::Ready(joined) = control.as_mut().poll(cx) {
                return Poll::Ready(Step::Done(
                    joined.unwrap_or_else(|e| Err(io::Error::other(e))),
                ));
            }
            let mut busy = false;
            for h in &hot {
                busy |= h.poll(&w, cx);
            }
            if busy {
                Poll::Ready(Step::Busy)
            } else {
                Poll::Pending
            }
        })
        .await;
        match step {
            Step::Done(result) => return result,
            // A deferred wake-up: the runtime turns its reactor (without
            // blocking) and runs the woken tasks before polling again.
            Step::Busy => tokio::task::yield_now().await,
        }
    }
}

/// Where a socket's datagrams come from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// Clients, on the listener bound at this address.
    Listener(SocketAddr),
    /// Peers of one polled relay.
    Relay(AllocId),
    /// Peers of every steered relay of this worker.
    Steered,
}

impl Source {
    /// Where in a receive slot this source's datagrams go: peers' after
    /// the headroom their re-framing needs.
    pub(super) fn offset(self) -> usize {
        match self {
            Self::Listener(_) => 0,
            Self::Relay(_) | Self::Steered => PEER_HEADROOM,
        }
    }
}

/// Read a polled relay's socket for as long as the worker runs (the
/// task ends when the relay closes and aborts it).
pub(super) async fn serve(w: Rc<Worker>, sock: Rc<Udp>, source: Source) {
    let rx = w.rx();
    batch::receive_batches(&sock, rx, source.offset(), RECV_ROUNDS, |rx, n| {
        w.on_batch(source, rx, n);
    })
    .await;
}
