//! Batched datagram I/O (Linux), also used by the benchmark's bare
//! forwarder (`tern-loadgen forward`): `recvmmsg` into a set of slots and
//! `sendmmsg` from a queue, so one system call moves many datagrams. On
//! this kind of machine a system call costs more than all of tern's
//! per-packet logic (docs/performance.md), so this is where the time goes.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use tokio::io::unix::AsyncFd;

/// Datagrams taken per `recvmmsg`.
pub const RECV_BATCH: usize = 32;
/// Datagrams given per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// Queued datagrams at which the send queue is flushed without waiting for
/// the end of the scheduling round (bounds its memory).
pub const SEND_QUEUE_LIMIT: usize = 256;

/// `RECV_BATCH` receive slots, each `slot_len` bytes, with the `recvmmsg`
/// headers built once: a call resets only the address and control lengths
/// the last call used (rebuilding 32 headers per call was a quarter of
/// tern's own instructions when most calls return one datagram). A worker
/// reads client datagrams at offset 0 and peer datagrams after the
/// re-framing headroom, often in turn, so there are two sets of headers,
/// each aimed at one offset, and switching offsets rewrites nothing.
pub struct RecvBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    names: Box<[libc::sockaddr_storage]>,
    lens: [usize; RECV_BATCH],
    /// `SETS` header sets, `RECV_BATCH` headers (and iovecs) each.
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// The offset each set points at, once aimed.
    aimed: [Option<usize>; SETS],
    /// Headers each set's last call filled.
    used: [usize; SETS],
    /// The set the last call used.
    last: usize,
    /// Per-slot control buffers, when destinations are asked for (shared
    /// by the sets: one call uses one set).
    control: Option<Box<[[u64; CONTROL_WORDS]]>>,
}

/// Header sets, one per receive offset in use.
const SETS: usize = 2;

/// Control buffer per slot: room for one IP(V6)_ORIGDSTADDR message.
const CONTROL_WORDS: usize = 8;

impl RecvBatch {
    /// A batch of slots of `slot_len` bytes each.
    pub fn new(slot_len: usize) -> Self {
        // SAFETY: all zeros is a valid sockaddr_storage, iovec and mmsghdr.
        let (zero, iov, hdr) = unsafe {
            (
                std::mem::zeroed::<libc::sockaddr_storage>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::mmsghdr>(),
            )
        };
        let mut b = Self {
            buf: vec![0u8; slot_len * RECV_BATCH].into_boxed_slice(),
            slot_len,
            names: vec![zero; RECV_BATCH].into_boxed_slice(),
            lens: [0; RECV_BATCH],
            iov: vec![iov; SETS * RECV_BATCH].into_boxed_slice(),
            hdrs: vec![hdr; SETS * RECV_BATCH].into_boxed_slice(),
            aimed: [None; SETS],
            used: [RECV_BATCH; SETS],
            last: 0,
            control: None,
        };
        // The boxed slices never move or resize, so these pointers stay
        // valid for the batch's life (the buffers are aimed per set).
        for (j, h) in b.hdrs.iter_mut().enumerate() {
            let h = &mut h.msg_hdr;
            h.msg_name = (&raw mut b.names[j % RECV_BATCH]).cast();
            h.msg_iovlen = 1;
            h.msg_iov = &raw mut b.iov[j];
        }
        b
    }

    /// A batch that also reports each datagram's destination address (see
    /// [`RecvBatch::destination`]; the socket needs
    /// [`receive_destinations`] set).
    pub fn with_destinations(slot_len: usize) -> Self {
        let mut b = Self::new(slot_len);
        let control = b
            .control
            .insert(vec![[0; CONTROL_WORDS]; RECV_BATCH].into_boxed_slice());
        for (j, h) in b.hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_control = control[j % RECV_BATCH].as_mut_ptr().cast();
        }
        b
    }

    /// The destination of datagram `i` of the last [`RecvBatch::recv`]
    /// (`None` unless made [`RecvBatch::with_destinations`]).
    pub fn destination(&self, i: usize) -> Option<SocketAddr> {
        self.control.as_ref()?;
        if i >= RECV_BATCH {
            return None;
        }
        let h = &self.hdrs.get(self.last * RECV_BATCH + i)?.msg_hdr;
        // SAFETY: the header's control buffer is ours and the kernel set
        // its length; the CMSG macros stay within it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level, kind) == (libc::SOL_IP, libc::IP_ORIGDSTADDR)
                    || (level, kind) == (libc::SOL_IPV6, libc::IPV6_ORIGDSTADDR)
                {
                    let mut s: libc::sockaddr_storage = std::mem::zeroed();
                    let len = ((*c).cmsg_len as usize)
                        .saturating_sub(libc::CMSG_LEN(0) as usize)
                        .min(size_of::<libc::sockaddr_storage>());
                    std::ptr::copy_nonoverlapping(
                        libc::CMSG_DATA(c),
                        (&raw mut s).cast::<u8>(),
                        len,
                    );
                    return socket_addr(&s);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// Receive up to [`RECV_BATCH`] datagrams without blocking, each at
    /// `offset` in its slot. Returns how many arrived; `WouldBlock` when
    /// none did.
    pub fn recv(&mut self, fd: RawFd, offset: usize) -> io::Result<usize> {
        let offset = offset.min(self.slot_len);
        let room = self.slot_len - offset;
        let set = match self.aimed.iter().position(|a| *a == Some(offset)) {
            Some(set) => set,
            None => {
                // Re-aim the set not used last.
                let set = (self.last + 1) % SETS;
                let base = self.buf.as_mut_ptr();
                for (i, v) in self.iov[set * RECV_BATCH..][..RECV_BATCH]
                    .iter_mut()
                    .enumerate()
                {
                    // SAFETY: i * slot_len + offset stays inside `buf`
                    // (offset <= slot_len, i < RECV_BATCH).
                    v.iov_base = unsafe { base.add(i * self.slot_len + offset) }.cast();
                    v.iov_len = room;
                }
                self.aimed[set] = Some(offset);
                set
            }
        };
        self.last = set;
        let hdrs = &mut self.hdrs[set * RECV_BATCH..][..RECV_BATCH];
        // The kernel rewrites the address and control lengths of each
        // header it fills.
        let control_len = if self.control.is_some() {
            size_of::<[u64; CONTROL_WORDS]>()
        } else {
            0
        };
        for h in &mut hdrs[..self.used[set]] {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = control_len;
        }
        // SAFETY: every header of the set points at a live iovec and name
        // buffer of the stated sizes, and at a control buffer of
        // `control_len` (or none), all owned by `self` (see `new`).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.used[set] = 1;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // Also the header after the last datagram, which the kernel tried.
        self.used[set] = (n + 1).min(RECV_BATCH);
        for (len, h) in self.lens.iter_mut().zip(hdrs.iter()).take(n) {
            *len = (h.msg_len as usize).min(room);
        }
        Ok(n)
    }

    /// Hand each of the first `n` datagrams of the last
    /// [`RecvBatch::recv`] to `handle(slot, length, source)` (see
    /// [`RecvBatch::slot`]; datagrams from an address family tern does not
    /// serve are skipped).
    pub fn each(&mut self, n: usize, mut handle: impl FnMut(&mut [u8], usize, SocketAddr)) {
        for i in 0..n.min(RECV_BATCH) {
            if let (slot, len, Some(from)) = self.slot(i) {
                handle(slot, len, from);
            }
        }
    }

    /// Slot `i` of the last [`RecvBatch::recv`]: the whole slot (the
    /// datagram starts at the offset given there), its length, and its
    /// source (`None` for an address family tern does not serve).
    pub fn slot(&mut self, i: usize) -> (&mut [u8], usize, Option<SocketAddr>) {
        let start = i * self.slot_len;
        let from = socket_addr(&self.names[i]);
        (
            &mut self.buf[start..start + self.slot_len],
            self.lens[i],
            from,
        )
    }
}

/// Ask the kernel to report each datagram's destination address and port
/// on `sock` (for [`RecvBatch::with_destinations`]).
pub fn receive_destinations(sock: &UdpSocket) -> io::Result<()> {
    if sock.local_addr()?.is_ipv6() {
        super::net::set_int_option(sock, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)
    } else {
        super::net::set_int_option(sock, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)
    }
}

/// Read `sock` until it fails: [`drain`] it whenever it is readable, and
/// yield to the thread's other tasks when it was not drained.
pub async fn receive_batches(
    sock: &AsyncFd<UdpSocket>,
    rx: &RefCell<RecvBatch>,
    offset: usize,
    rounds: usize,
    mut handle: impl FnMut(&mut RecvBatch, usize),
) {
    let fd = sock.get_ref().as_raw_fd();
    loop {
        let Ok(mut ready) = sock.readable().await else {
            return;
        };
        if drain(fd, rx, offset, rounds, &mut handle) {
            ready.clear_ready();
        } else {
            drop(ready);
            tokio::task::yield_now().await;
        }
    }
}

/// Up to `rounds` batches from `fd` (`recvmmsg`, without blocking), each
/// datagram at `offset` in its slot, each batch handed whole to
/// `handle(rx, count)`; whether the socket is drained. A short batch means
/// it is, so the caller clears its readiness without the extra call that
/// would only return `EAGAIN`. `rx` is borrowed for one batch at a time,
/// so the sockets of a thread share it.
pub fn drain(
    fd: RawFd,
    rx: &RefCell<RecvBatch>,
    offset: usize,
    rounds: usize,
    handle: &mut impl FnMut(&mut RecvBatch, usize),
) -> bool {
    for _ in 0..rounds {
        let mut rx = rx.borrow_mut();
        match rx.recv(fd, offset) {
            Ok(n) => {
                handle(&mut rx, n);
                if n < RECV_BATCH {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // Interrupted, or an error reported for an earlier datagram:
            // try again.
            Err(_) => {}
        }
    }
    false
}

/// A kernel socket address as a `SocketAddr`.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(&raw const *s).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(&raw const *s).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One queued datagram.
struct Queued {
    socket: usize,
    to: SockAddr,
    start: usize,
    len: usize,
}

/// Datagrams waiting to be sent, each on one of several sockets (named by
/// index), copied into one reusable arena.
#[derive(Default)]
pub struct SendQueue {
    arena: Vec<u8>,
    queued: Vec<Queued>,
}

impl SendQueue {
    /// Queue a datagram to `to` on socket number `socket`.
    pub fn push(&mut self, socket: usize, to: SocketAddr, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.queued.push(Queued {
            socket,
            to: to.into(),
            start,
            len: bytes.len(),
        });
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Send everything queued, `sendmmsg` per run of datagrams on the same
    /// socket. A datagram the kernel refuses (full buffer, unreachable) is
    /// dropped, as a datagram may be; returns how many were.
    pub fn flush(&mut self, fd_of: impl Fn(usize) -> Option<RawFd>) -> usize {
        let mut dropped = 0;
        let mut at = 0;
        while at < self.queued.len() {
            let socket = self.queued[at].socket;
            let run = self.queued[at..]
                .iter()
                .take(SEND_BATCH)
                .take_while(|q| q.socket == socket)
                .count();
            let batch = &self.queued[at..at + run];
            at += run;
            match fd_of(socket) {
                Some(fd) => dropped += send_batch(fd, &self.arena, batch),
                None => dropped += run,
            }
        }
        self.queued.clear();
        self.arena.clear();
        dropped
    }
}

/// `sendmmsg` the batch, skipping any datagram the kernel refuses. Only
/// the headers in use are written (zeroing all 64 per call cost more than
/// the rest of tern's per-packet work when batches are short). A batch of
/// one, the usual case at light load, goes out with `sendto`, which the
/// kernel handles in about 0.17 µs less (no message header to copy in and
/// no count to write back; docs/performance.md).
fn send_batch(fd: RawFd, arena: &[u8], batch: &[Queued]) -> usize {
    if let [q] = batch {
        return send_one(fd, &arena[q.start..q.start + q.len], &q.to);
    }
    let mut iov = [MaybeUninit::<libc::iovec>::uninit(); SEND_BATCH];
    let mut hdrs = [MaybeUninit::<libc::mmsghdr>::uninit(); SEND_BATCH];
    let n = batch.len().min(SEND_BATCH);
    for ((q, v), h) in batch.iter().zip(iov.iter_mut()).zip(hdrs.iter_mut()) {
        let v = v.write(libc::iovec {
            iov_base: arena[q.start..q.start + q.len].as_ptr().cast_mut().cast(),
            iov_len: q.len,
        });
        // SAFETY: all zeros is a valid mmsghdr.
        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
        m.msg_hdr.msg_name = q.to.as_ptr().cast_mut().cast();
        m.msg_hdr.msg_namelen = q.to.len();
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
        h.write(m);
    }
    let hdrs = hdrs.as_mut_ptr().cast::<libc::mmsghdr>();
    let mut dropped = 0;
    let mut done = 0;
    while done < n {
        // SAFETY: headers 0..n are written (above); done..n point at
        // iovecs over `arena` and at socket addresses owned by `batch`, all
        // alive for this call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.add(done),
                (n - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent > 0 {
            done += sent as usize;
        } else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.kind() == io::ErrorKind::WouldBlock {
                // The socket's buffer is full: the rest would fail alike.
                return dropped + n - done;
            }
            // This datagram is refused (e.g. unreachable); go on after it.
            dropped += 1;
            done += 1;
        }
    }
    dropped
}

/// `sendto` one datagram; how many were dropped (0 or 1).
fn send_one(fd: RawFd, bytes: &[u8], to: &SockAddr) -> usize {
    loop {
        // SAFETY: `bytes` and `to` are live for the call and their lengths
        // are theirs.
        let sent = unsafe {
            libc::sendto(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT,
                to.as_ptr().cast(),
                to.len(),
            )
        };
        if sent >= 0 {
            return 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_with_sources() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx6 = UdpSocket::bind("[::1]:0").unwrap();
        let rx6 = UdpSocket::bind("[::1]:0").unwrap();
        let mut q = SendQueue::default();
        for i in 0..5u8 {
            q.push(0, rx.local_addr().unwrap(), &[i; 10]);
        }
        q.push(1, rx6.local_addr().unwrap(), b"six");
        q.push(0, rx.local_addr().unwrap(), &[9; 3000]);
        let fds = [tx4.as_raw_fd(), tx6.as_raw_fd()];
        assert_eq!(q.flush(|i| fds.get(i).copied()), 0);
        assert_eq!(q.len(), 0);

        let mut b = RecvBatch::new(4096);
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = b.recv(rx.as_raw_fd(), 48).unwrap();
            for i in 0..n {
                let (slot, len, from) = b.slot(i);
                got.push((slot[48..48 + len].to_vec(), from));
            }
        }
        assert_eq!(got[0], (vec![0; 10], Some(tx4.local_addr().unwrap())));
        assert_eq!(got[4].0, vec![4; 10]);
        assert_eq!(got[5].0, vec![9; 3000]);
        let n = b.recv(rx6.as_raw_fd(), 0).unwrap();
        assert_eq!(n, 1);
        let (slot, len, from) = b.slot(0);
        assert_eq!(
            (&slot[..len], from),
            (&b"six"[..], Some(tx6.local_addr().unwrap()))
        );
        // Nothing left: WouldBlock, not a wait.
        let e = b.recv(rx.as_raw_fd(), 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_the_kernel_refuses_is_counted_dropped_alone_or_in_a_batch() {
        let tx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let fd = [tx4.as_raw_fd()];
        let mut q = SendQueue::default();
        // Alone (sent with sendto), then first of three (sendmmsg): an
        // IPv6 destination on an IPv4 socket.
        q.push(0, v6, b"alone");
        assert_eq!(q.flush(|i| fd.get(i).copied()), 1);
        q.push(0, v6, b"first");
        q.push(0, rx.local_addr().unwrap(), b"second");
        q.push(0, rx.local_addr().unwrap(), b"third");
        assert_eq!(q.flush(|i| fd.get(i).copied()), 1);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"second");
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"third");
    }

    #[test]
    fn offsets_can_alternate_between_calls() {
        // A worker reads clients at offset 0 and peers after the headroom,
        // in turn: each call must land every datagram at its own offset,
        // with its source and destination, whichever set served the last.
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        receive_destinations(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut b = RecvBatch::with_destinations(256);
        for (round, offset) in [0, 48, 0, 48, 20, 0].into_iter().enumerate() {
            let count = round % 3 + 1;
            for i in 0..count {
                tx.send_to(&[round as u8, i as u8, 7], to).unwrap();
            }
            let mut got = 0;
            while got < count {
                rx.set_nonblocking(false).unwrap();
                rx.peek(&mut [0u8; 1]).unwrap();
                let n = b.recv(rx.as_raw_fd(), offset).unwrap();
                for i in 0..n {
                    assert_eq!(b.destination(i), Some(to));
                    let (slot, len, from) = b.slot(i);
                    assert_eq!(len, 3);
                    assert_eq!(from, Some(tx.local_addr().unwrap()));
                    assert_eq!(slot[offset..offset + 3], [round as u8, (got + i) as u8, 7]);
                }
                got += n;
            }
        }
    }

    #[test]
    fn destinations_are_reported_when_asked_for() {
        for (rx, tx) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let rx = UdpSocket::bind(rx).unwrap();
            let tx = UdpSocket::bind(tx).unwrap();
            receive_destinations(&rx).unwrap();
            let to = rx.local_addr().unwrap();
            tx.send_to(b"a", to).unwrap();
            tx.send_to(b"b", to).unwrap();
            let mut b = RecvBatch::with_destinations(64);
            let mut got = 0;
            while got < 2 {
                rx.set_nonblocking(false).unwrap();
                let mut peek = [0u8; 1];
                rx.peek(&mut peek).unwrap();
                let n = b.recv(rx.as_raw_fd(), 0).unwrap();
                for i in 0..n {
                    assert_eq!(b.destination(i), Some(to));
                    assert_eq!(b.slot(i).2, Some(tx.local_addr().unwrap()));
                }
                got += n;
            }
            // A batch made without them reports none.
            tx.send_to(b"c", to).unwrap();
            let mut plain = RecvBatch::new(64);
            rx.peek(&mut [0u8; 1]).unwrap();
            assert_eq!(plain.recv(rx.as_raw_fd(), 0).unwrap(), 1);
            assert_eq!(plain.destination(0), None);
        }
    }
}
