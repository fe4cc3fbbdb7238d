//! TCP clients (RFC 8656 §12.5 framing): STUN messages and ChannelData
//! (padded to 4 bytes) back to back on one stream. Partial reads and several
//! messages per read are handled; anything that is neither closes the
//! connection. The allocation made over a connection dies with it.
//!
//! Admission ([`Admission`]) caps open connections in total and per client
//! IP. Bytes for a client are queued on its [`TcpOut`] and written at the
//! end of the batch that produced them, straight from the worker; only
//! what the kernel does not take at once waits for the connection's writer
//! task.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Write;

use rustls::ServerConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::limit::PerIpLimit;
use super::proxy::{self, Outcome, Proxies};
use super::timer::{FOREVER, Sleep, Timers};
use super::tls::{self, StreamMode};
use super::worker::Worker;
use super::{Shared, now};
use crate::core::{DropReason, FiveTuple, Transport};
use crate::wire;

/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin; this is back-off, not synchronisation.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Queued bytes above which a slow TCP client's data is dropped.
const OUT_LIMIT: usize = 1 << 20;
/// Frames handed to the core before what they produced is sent.
const FRAMES_PER_BATCH: usize = 64;
/// How long a closing connection may take to write what is still queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TCP connection limits and counts, shared by every worker (touched
/// per connection, never per packet).
#[derive(Debug)]
pub(crate) struct Admission {
    limit: PerIpLimit,
    /// Close a connection idle this long without an allocation.
    pub(crate) idle_timeout: Duration,
    /// Sources whose connections begin with a PROXY header.
    pub(crate) proxies: Proxies,
}

impl Admission {
    pub(crate) fn new(max: usize, max_per_ip: usize, idle_timeout: Duration) -> Self {
        Self {
            limit: PerIpLimit::new(max, max_per_ip),
            idle_timeout,
            proxies: Proxies::default(),
        }
    }

    /// Change the limits (reload); open connections are kept.
    pub(crate) fn set_limits(&self, max: usize, max_per_ip: usize) {
        self.limit.set(max, max_per_ip);
    }
}

/// One connection's share of the total and per-IP limits, given back on drop.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Slot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        shared.tcp.limit.acquire(ip).then(|| Self {
            shared: Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.tcp.limit.release(self.ip);
    }
}

/// What [`TcpOut::queue`] did with a client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    /// Queued; list the client for the next flush.
    ToList,
    /// Queued, and already listed (or the connection is closing and
    /// nothing more will be written).
    Listed,
    /// Dropped: too much is queued already.
    Dropped,
}

/// A stream client's outgoing bytes and its socket (TCP, or TLS with
/// the record layer in `tls`).
pub(super) struct TcpOut {
    buf: RefCell<Vec<u8>>,
    stream: TcpStream,
    tls: Option<RefCell<ServerConnection>>,
    /// Wakes the writer task: bytes are left over, or the connection ends.
    wake: Notify,
    closed: Cell<bool>,
    /// A write failed: nothing more can be sent.
    broken: Cell<bool>,
    /// Listed for the worker's next flush.
    dirty: Cell<bool>,
}

impl TcpOut {
    /// Queue bytes for the client. Beyond [`OUT_LIMIT`] queued (a client
    /// that reads slower than its peers send), they are dropped.
    pub(super) fn queue(&self, bytes: &[u8]) -> Queued {
        let mut buf = self.buf.borrow_mut();
        if self.closed.get() {
            return Queued::Listed;
        }
        if buf.len() + bytes.len() > OUT_LIMIT {
            return Queued::Dropped;
        }
        buf.extend_from_slice(bytes);
        if self.dirty.replace(true) {
            Queued::Listed
        } else {
            Queued::ToList
        }
    }

    /// Write what is queued, as far as the kernel takes it now; what is
    /// left waits for the writer task. Over TLS the bytes are sealed
    /// into records first (as many as rustls buffers).
    pub(super) fn flush(&self) {
        self.dirty.set(false);
        if self.broken.get() {
            return;
        }
        let result = match &self.tls {
            None => self.write_plain(),
            Some(conn) => self.write_tls(&mut conn.borrow_mut()),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.wake.notify_one(),
            Err(_) => {
                self.closed.set(true);
                self.broken.set(true);
                self.buf.borrow_mut().clear();
                self.wake.notify_one();
            }
        }
    }

    fn write_plain(&self) -> std::io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        while !buf.is_empty() {
            match self.stream.try_write(&buf) {
                Ok(n) => drop(buf.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_tls(&self, conn: &mut ServerConnection) -> std::io::Result<()> {
        let mut buf = self.buf.borrow_mut();
        loop {
            if !buf.is_empty() {
                let n = conn.writer().write(&buf)?;
                buf.drain(..n);
            }
            if !conn.wants_write() {
                return Ok(());
            }
            match conn.write_tls(&mut tls::Sock(&self.stream)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether bytes wait to be written.
    fn pending(&self) -> bool {
        !self.broken.get()
            && (!self.buf.borrow().is_empty()
                || self.tls.as_ref().is_some_and(|c| c.borrow().wants_write()))
    }

    /// Read what the socket holds, appending the client's bytes to
    /// `inbuf` (see [`tls::read`] for the meaning of the result).
    fn read(&self, inbuf: &mut Vec<u8>) -> std::io::Result<usize> {
        match &self.tls {
            None => {
                inbuf.reserve(2048);
                self.stream.try_read_buf(inbuf)
            }
            Some(conn) => {
                let mut conn = conn.borrow_mut();
                let r = tls::read(&self.stream, &mut conn, inbuf);
                if conn.wants_write() {
                    // Handshake messages, key updates or the alert.
                    drop(conn);
                    self.flush();
                }
                r
            }
        }
    }
}

pub(super) async fn accept_loop(w: Rc<Worker>, listener: TcpListener, mode: StreamMode) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "tcp accept failed");
                w.timers().sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A trusted proxy's connection counts against the limits of the
        // client its header names, once it has been read.
        let slot = if w.shared().tcp.proxies.trusts(remote.ip()) {
            None
        } else if let Some(slot) = Slot::take(w.shared(), remote.ip()) {
            Some(slot)
        } else {
            tracing::debug!(%remote, "tcp connection limit reached; closing");
            continue;
        };
        tokio::task::spawn_local(connection(Rc::clone(&w), stream, mode, slot));
    }
}

/// Serve one accepted connection: read a trusted proxy's header, find out
/// whether it speaks TLS and run the handshake (TLS connections count
/// against the TCP limits through the slot all along), then [`serve`] it.
async fn connection(w: Rc<Worker>, stream: TcpStream, mode: StreamMode, slot: Option<Slot>) {
    let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (remote, slot) = match slot {
        Some(slot) => (remote, slot),
        None => match proxied(&w, &stream, remote).await {
            Some(x) => x,
            None => return,
        },
    };
    let tls_server = w.shared().tls.clone();
    let (stream, tls) = match (mode, tls_server) {
        (StreamMode::Tcp, _) | (_, None) => (stream, None),
        (_, Some(server)) => match server.speaks_tls(&stream, mode, w.timers()).await {
            None => return,
            Some(false) => (stream, None),
            Some(true) => {
                let board = Arc::clone(&w.shared().board);
                match server
                    .handshake(stream, remote.ip(), &board, w.timers())
                    .await
                {
                    Some((stream, conn)) => (stream, Some(RefCell::new(conn))),
                    None => return,
                }
            }
        },
    };
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let tuple = FiveTuple {
        transport,
        local,
        remote,
    };
    let out = Rc::new(TcpOut {
        buf: RefCell::default(),
        stream,
        tls,
        wake: Notify::new(),
        closed: Cell::new(false),
        broken: Cell::new(false),
        dirty: Cell::new(false),
    });
    serve(&w, &out, &tuple).await;
    drop(slot);
}

/// The client behind a trusted proxy's connection from `proxy`, from the
/// PROXY header that must begin it, and its slot of the limits; `None`
/// when the header is missing or bad (counted) or the limits are reached.
async fn proxied(w: &Worker, stream: &TcpStream, proxy: SocketAddr) -> Option<(SocketAddr, Slot)> {
    let board = &w.shared().board;
    let client = match proxy::read_header(stream, w.timers()).await {
        Outcome::Client(client) => client.unwrap_or(proxy),
        Outcome::Refused(why) => {
            tracing::debug!(%proxy, reason = why.label(), "no usable PROXY header; closing");
            board.proxy.refused(why);
            return None;
        }
        Outcome::Closed => return None,
    };
    board.proxy.accepted();
    let Some(slot) = Slot::take(w.shared(), client.ip()) else {
        tracing::debug!(%client, %proxy, "tcp connection limit reached; closing");
        return None;
    };
    Some((client, slot))
}

/// Relay a connection's frames until it closes, idles out without an
/// allocation, or breaks framing; its allocation goes with it.
async fn serve(w: &Rc<Worker>, out: &Rc<TcpOut>, tuple: &FiveTuple) {
    w.add_tcp(*tuple, Rc::clone(out));
    let writer = tokio::task::spawn_local(writer(Rc::clone(out)));
    let mut idle = Idle::new(w.timers(), w.shared().tcp.idle_timeout);
    let mut inbuf: Vec<u8> = Vec::with_capacity(2048);
    // Over TLS, bytes may have come with the handshake's last flight.
    let mut ready = out.tls.is_some();
    loop {
        if !ready {
            let readable = tokio::select! {
                biased;
                r = out.stream.readable() => Some(r.is_ok()),
                () = idle.elapsed() => None,
            };
            match readable {
                Some(true) => {}
                Some(false) => break,
                None => {
                    // Idle: keep connections that carry an allocation.
                    if !w.has_allocation(tuple) {
                        break;
                    }
                    idle.restart();
                    continue;
                }
            }
        }
        ready = false;
        idle.active();
        match out.read(&mut inbuf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        let Some(used) = frames(w, tuple, &inbuf) else {
            break;
        };
        inbuf.drain(..used);
        if out.closed.get() {
            break;
        }
        // Keep the buffer no larger than a maximal frame needs.
        if inbuf.capacity() > 1 << 17 && inbuf.len() < 2048 {
            inbuf.shrink_to(2048);
        }
    }
    w.remove_tcp(tuple);
    if let Some(conn) = &out.tls {
        conn.borrow_mut().send_close_notify();
    }
    out.closed.set(true);
    out.wake.notify_one();
    let _ = w.timers().timeout(CLOSE_TIMEOUT, writer).await;
}

/// A connection's idle timeout: one timer for its life, moved on lazily
/// (a read only notes the time; the timer, when it fires early, waits on
/// from the last read), instead of a timer set and cancelled per read.
struct Idle {
    timers: Rc<Timers>,
    after: Duration,
    timer: Sleep,
    last_read: Instant,
}

impl Idle {
    fn new(timers: &Rc<Timers>, after: Duration) -> Self {
        let after = after.min(FOREVER);
        Self {
            timers: Rc::clone(timers),
            after,
            timer: timers.sleep(after),
            last_read: Instant::now(),
        }
    }

    /// The connection was read from just now.
    fn active(&mut self) {
        self.last_read = Instant::now();
    }

    /// Completes once nothing has been read for the timeout.
    async fn elapsed(&mut self) {
        loop {
            (&mut self.timer).await;
            let due = self.last_read + self.after;
            if due <= self.timer.deadline() {
                return;
            }
            self.timer = self.timers.sleep_until(due);
        }
    }

    /// Count the timeout again from now.
    fn restart(&mut self) {
        self.active();
        self.timer = self.timers.sleep(self.after);
    }
}

/// Hand every whole frame in `inbuf` to the core, sending what they
/// produce every [`FRAMES_PER_BATCH`] frames and at the end; returns the
/// bytes used, or `None` on a framing error (neither STUN nor ChannelData:
/// the connection closes).
fn frames(w: &Worker, tuple: &FiveTuple, inbuf: &[u8]) -> Option<usize> {
    let mut used = 0;
    let mut count = 0;
    while inbuf.len() - used >= 4 {
        let rest = &inbuf[used..];
        let Some(n) = wire::stream_frame_len(rest) else {
            w.count_drop(DropReason::Malformed);
            w.settle(now());
            return None;
        };
        if rest.len() < n {
            break;
        }
        w.client_message(tuple, &rest[..n]);
        used += n;
        count += 1;
        if count % FRAMES_PER_BATCH == 0 {
            w.settle(now());
        }
    }
    w.settle(now());
    Some(used)
}

/// Write what [`TcpOut::flush`] left over once the socket takes more;
/// ends when the connection closes and nothing is left.
async fn writer(out: Rc<TcpOut>) {
    loop {
        if !out.pending() {
            if out.closed.get() {
                break;
            }
            out.wake.notified().await;
            continue;
        }
        if out.stream.writable().await.is_err() {
            out.closed.set(true);
            break;
        }
        out.flush();
    }
}
