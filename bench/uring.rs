//! An `io_uring` variant of the bare forwarder (`tern-loadgen forward
//! --uring`), to measure what one submission for many sockets saves over
//! a system call per socket: the listener is read with `recvmmsg` as in
//! the plain forwarder, but the per-client upstream sockets are read by
//! one multishot receive each (into buffers the kernel picks from a
//! provided group) and written by `send` requests, all submitted together
//! once per batch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use io_uring::{IoUring, cqueue, opcode, types};
use tern::io::batch::{RecvBatch, receive_batches};
use tokio::io::unix::AsyncFd;

use super::{Outbox, register};

/// Receive buffers in the provided group, and their size.
const BUFFERS: u16 = 4096;
const BUFFER_LEN: usize = 2048;
/// Send slots (a send's bytes must live until its completion).
const SEND_SLOTS: usize = 4096;
const GROUP: u16 = 0;
/// `user_data` tags.
const RECV: u64 = 1 << 62;
const SEND: u64 = 2 << 62;
const PROVIDE: u64 = 3 << 62;
const TAG: u64 = 3 << 62;

struct Uring {
    ring: RefCell<IoUring>,
    /// The provided receive buffers (never moved: the kernel holds
    /// pointers into them).
    buffers: RefCell<Box<[u8]>>,
    sends: RefCell<Box<[u8]>>,
    free_sends: RefCell<Vec<usize>>,
    upstream: RefCell<Vec<(UdpSocket, SocketAddr)>>,
    by_client: RefCell<HashMap<SocketAddr, usize>>,
    /// Answers to the clients, from the listener.
    out: Rc<Outbox>,
    peer: SocketAddr,
}

impl Uring {
    /// Queue a request; when the submission queue is full, submit first.
    fn push(&self, entry: &io_uring::squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: every buffer an entry points at is owned by `self` and
        // outlives the ring's use of it (see the fields).
        while unsafe { ring.submission().push(entry) }.is_err() {
            let _ = ring.submit();
        }
    }

    fn submit(&self) {
        let _ = self.ring.borrow_mut().submit();
    }

    /// Give buffer `bid` (back) to the kernel.
    fn provide(&self, bid: u16) {
        let ptr = self.buffers.borrow_mut()[usize::from(bid) * BUFFER_LEN..].as_mut_ptr();
        let e = opcode::ProvideBuffers::new(ptr, BUFFER_LEN as i32, 1, GROUP, bid)
            .build()
            .user_data(PROVIDE);
        self.push(&e);
    }

    fn arm(&self, i: usize) {
        let fd = self.upstream.borrow()[i].0.as_raw_fd();
        let e = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(RECV | i as u64);
        self.push(&e);
    }

    /// Send `bytes` upstream for `client`, opening its socket first.
    fn forward(&self, client: SocketAddr, bytes: &[u8]) -> Result<()> {
        let known = self.by_client.borrow().get(&client).copied();
        let i = match known {
            Some(i) => i,
            None => {
                let s = UdpSocket::bind("127.0.0.1:0")?;
                s.connect(self.peer)?;
                s.set_nonblocking(true)?;
                let mut up = self.upstream.borrow_mut();
                up.push((s, client));
                let i = up.len() - 1;
                drop(up);
                self.by_client.borrow_mut().insert(client, i);
                self.arm(i);
                i
            }
        };
        let Some(slot) = self.free_sends.borrow_mut().pop() else {
            return Ok(()); // all in flight: dropped, counted by the generator
        };
        let len = bytes.len().min(BUFFER_LEN);
        let ptr = {
            let mut sends = self.sends.borrow_mut();
            let dst = &mut sends[slot * BUFFER_LEN..slot * BUFFER_LEN + len];
            dst.copy_from_slice(&bytes[..len]);
            dst.as_ptr()
        };
        let fd = self.upstream.borrow()[i].0.as_raw_fd();
        let e = opcode::Send::new(types::Fd(fd), ptr, len as u32)
            .build()
            .user_data(SEND | slot as u64);
        self.push(&e);
        Ok(())
    }

    /// Handle every completion waiting.
    fn complete(&self) {
        let mut done = Vec::new();
        {
            let mut ring = self.ring.borrow_mut();
            done.extend(
                ring.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
        }
        for (data, result, flags) in done {
            let index = (data & !TAG) as usize;
            match data & TAG {
                RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if result > 0 {
                            let client = self.upstream.borrow()[index].1;
                            let start = usize::from(bid) * BUFFER_LEN;
                            let buffers = self.buffers.borrow();
                            self.out
                                .push(client, &buffers[start..start + result as usize]);
                        }
                        self.provide(bid);
                    }
                    if !cqueue::more(flags) {
                        self.arm(index);
                    }
                }
                SEND => self.free_sends.borrow_mut().push(index),
                _ => {}
            }
        }
    }
}

/// One forwarder worker on `listener`, with its own ring.
pub(super) async fn forward_worker(listener: UdpSocket, peer: SocketAddr) -> Result<()> {
    let listener = register(listener)?;
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(8192)
        .context("io_uring_setup")?;
    // SAFETY: eventfd returns a new descriptor or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        bail!("eventfd: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `efd` is a fresh descriptor owned from here on.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    ring.submitter().register_eventfd(efd.as_raw_fd())?;
    // SAFETY: the OwnedFd keeps its descriptor open for the AsyncFd's life.
    let events = unsafe { AsyncFd::register(efd) }.map_err(std::io::Error::from)?;
    let u = Rc::new(Uring {
        ring: RefCell::new(ring),
        buffers: RefCell::new(vec![0u8; usize::from(BUFFERS) * BUFFER_LEN].into_boxed_slice()),
        sends: RefCell::new(vec![0u8; SEND_SLOTS * BUFFER_LEN].into_boxed_slice()),
        free_sends: RefCell::new((0..SEND_SLOTS).collect()),
        upstream: RefCell::new(Vec::new()),
        by_client: RefCell::new(HashMap::new()),
        out: Outbox::spawn(Rc::clone(&listener)),
        peer,
    });
    {
        let ptr = u.buffers.borrow_mut().as_mut_ptr();
        let e = opcode::ProvideBuffers::new(ptr, BUFFER_LEN as i32, BUFFERS, GROUP, 0)
            .build()
            .user_data(PROVIDE);
        u.push(&e);
        u.submit();
    }
    let completer = Rc::clone(&u);
    tokio::task::spawn_local(async move {
        loop {
            let Ok(mut ready) = events.readable().await else {
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer.
            unsafe { libc::read(events.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            ready.clear_ready();
            completer.complete();
            completer.submit();
        }
    });
    let rx = RefCell::new(RecvBatch::new(2048));
    receive_batches(&listener, &rx, 0, 4, |rx, n| {
        rx.each(n, |slot, len, client| {
            let _ = u.forward(client, &slot[..len]);
        });
        u.submit();
    })
    .await;
    bail!("listener failed")
}
