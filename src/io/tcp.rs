//! TCP clients (RFC 8656 §12.5 framing): STUN messages and ChannelData
//! (padded to 4 bytes) back to back on one stream. Partial reads and several
//! messages per read are handled; anything that is neither closes the
//! connection. The allocation made over a connection dies with it.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use super::{TcpOut, Worker, now};
use crate::core::{FiveTuple, Transport};
use crate::wire;

/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin; this is back-off, not synchronisation.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub(super) async fn accept_loop(w: Rc<Worker>, listener: TcpListener) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "tcp accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = TcpSlot::take(&w.shared, remote.ip()) else {
            tracing::debug!(%remote, "tcp connection limit reached; closing");
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let tuple = FiveTuple {
            transport: Transport::Tcp,
            local,
            remote,
        };
        tokio::task::spawn_local(connection(Rc::clone(&w), stream, tuple, slot));
    }
}

/// One connection's share of the total and per-IP limits, given back on drop.
struct TcpSlot {
    shared: std::sync::Arc<super::Shared>,
    ip: IpAddr,
}

impl TcpSlot {
    fn take(shared: &std::sync::Arc<super::Shared>, ip: IpAddr) -> Option<Self> {
        let max = shared.max_tcp_connections.load(Ordering::Relaxed);
        let max_ip = shared.max_tcp_connections_per_ip.load(Ordering::Relaxed);
        let mut per_ip = shared
            .tcp_per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if shared.tcp_connections.load(Ordering::Relaxed) >= max || mine >= max_ip {
            return None;
        }
        per_ip.insert(ip, mine + 1);
        shared.tcp_connections.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            shared: std::sync::Arc::clone(shared),
            ip,
        })
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut per_ip = self
            .shared
            .tcp_per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.shared.tcp_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(w: Rc<Worker>, stream: TcpStream, tuple: FiveTuple, slot: TcpSlot) {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let out = Rc::new(TcpOut::default());
    w.io.borrow_mut().tcp.insert(tuple, Rc::clone(&out));
    let writer = tokio::task::spawn_local(writer(wr, Rc::clone(&out)));
    let idle = w.shared.tcp_idle_timeout;
    let mut inbuf: Vec<u8> = Vec::with_capacity(2048);
    'conn: loop {
        match tokio::time::timeout(idle, rd.read_buf(&mut inbuf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                // Idle: keep connections that carry an allocation.
                if w.core().allocation_of(&tuple).is_none() {
                    break;
                }
                continue;
            }
        }
        let mut used = 0;
        while inbuf.len() - used >= 4 {
            let rest = &inbuf[used..];
            let Some(n) = wire::stream_frame_len(rest) else {
                // Framing error: neither STUN nor ChannelData.
                w.core().stats.drop(crate::core::DropReason::Malformed);
                break 'conn;
            };
            if rest.len() < n {
                break;
            }
            w.client_message(&tuple, &rest[..n]);
            used += n;
        }
        inbuf.drain(..used);
        if out.closed.get() {
            break;
        }
        // Keep the buffer no larger than a maximal frame needs.
        if inbuf.capacity() > 1 << 17 && inbuf.len() < 2048 {
            inbuf.shrink_to(2048);
        }
    }
    w.io.borrow_mut().tcp.remove(&tuple);
    {
        let mut io = w.io.borrow_mut();
        w.core().on_client_closed(now(), &tuple, &mut *io);
    }
    out.closed.set(true);
    out.notify.notify_one();
    let _ = writer.await;
    drop(slot);
}

async fn writer(mut wr: OwnedWriteHalf, out: Rc<TcpOut>) {
    let mut pending = Vec::new();
    loop {
        if out.buf.borrow().is_empty() {
            if out.closed.get() {
                break;
            }
            out.notify.notified().await;
            continue;
        }
        std::mem::swap(&mut *out.buf.borrow_mut(), &mut pending);
        if wr.write_all(&pending).await.is_err() {
            out.closed.set(true);
            break;
        }
        pending.clear();
    }
    let _ = wr.shutdown().await;
}
