//! The TLS side of stream listeners: which accepted connections speak
//! TLS (a `tls` listener, or the first byte on a shared `tcp`+`tls`
//! port), the handshake under its timeout and concurrency limits, and the
//! record layer of an established connection, driven straight on the
//! connection's socket by [`super::tcp`] with no extra task or copy queue.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConnection;
use tokio::net::TcpStream;

use super::limit::PerIpLimit;
use super::timer::Timers;
use crate::metrics::{Board, TlsFailure};
use crate::tls::{HANDSHAKE_RECORD, Tls};

/// What a stream listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// STUN/TURN over TCP.
    Tcp,
    /// STUN/TURN over TLS.
    Tls,
    /// Both, told apart by the connection's first byte.
    Both,
}

/// The TLS server every worker's TLS listeners share.
#[derive(Debug)]
pub struct TlsServer {
    tls: Arc<Tls>,
    handshake_timeout: Duration,
    /// Handshakes in progress, in total and per client IP.
    handshakes: PerIpLimit,
}

impl TlsServer {
    /// Serve `tls` with the given handshake timeout and limits.
    pub fn new(tls: Arc<Tls>, timeout: Duration, max: usize, max_per_ip: usize) -> Self {
        Self {
            tls,
            handshake_timeout: timeout,
            handshakes: PerIpLimit::new(max, max_per_ip),
        }
    }

    /// The certificate store reload swaps pairs in.
    pub fn tls(&self) -> &Arc<Tls> {
        &self.tls
    }

    /// Change the handshake limits (reload).
    pub fn set_limits(&self, max: usize, max_per_ip: usize) {
        self.handshakes.set(max, max_per_ip);
    }

    /// Whether `stream` (accepted on a listener in `mode`) speaks TLS;
    /// `None` when a shared port's client sent nothing in time or hung up.
    pub(super) async fn speaks_tls(
        &self,
        stream: &TcpStream,
        mode: StreamMode,
        timers: &Rc<Timers>,
    ) -> Option<bool> {
        match mode {
            StreamMode::Tcp => Some(false),
            StreamMode::Tls => Some(true),
            StreamMode::Both => {
                let mut first = [0u8; 1];
                match timers
                    .timeout(self.handshake_timeout, stream.peek(&mut first))
                    .await
                {
                    Ok(Ok(1)) => Some(first[0] == HANDSHAKE_RECORD),
                    _ => None,
                }
            }
        }
    }

    /// Run the server side of the handshake on `stream` from `ip`, within
    /// the timeout and limits, counting the outcome on `board`.
    pub(super) async fn handshake(
        &self,
        stream: TcpStream,
        ip: IpAddr,
        board: &Board,
        timers: &Rc<Timers>,
    ) -> Option<(TcpStream, ServerConnection)> {
        let Some(_slot) = self.take(ip, board) else {
            board.tls.failure(TlsFailure::Limit);
            return None;
        };
        let accept = tokio_rustls::TlsAcceptor::from(self.tls.server_config()).accept(stream);
        match timers.timeout(self.handshake_timeout, accept).await {
            Ok(Ok(s)) => {
                board.tls.handshake();
                Some(s.into_inner())
            }
            Ok(Err(e)) => {
                let alpn = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::NoApplicationProtocol));
                let why = if alpn {
                    TlsFailure::Alpn
                } else {
                    TlsFailure::Error
                };
                tracing::debug!(%ip, error = %e, "tls handshake failed");
                board.tls.failure(why);
                None
            }
            Err(_) => {
                tracing::debug!(%ip, "tls handshake timed out");
                board.tls.failure(TlsFailure::Timeout);
                None
            }
        }
    }

    /// A handshake slot for `ip`, if the limits allow one.
    fn take<'a>(&'a self, ip: IpAddr, board: &'a Board) -> Option<HandshakeSlot<'a>> {
        if !self.handshakes.acquire(ip) {
            return None;
        }
        board.tls.started();
        Some(HandshakeSlot {
            server: self,
            board,
            ip,
        })
    }
}

/// One handshake's share of the limits, given back on drop.
struct HandshakeSlot<'a> {
    server: &'a TlsServer,
    board: &'a Board,
    ip: IpAddr,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.server.handshakes.release(self.ip);
        self.board.tls.ended();
    }
}

/// The non-blocking socket as `std::io` reader and writer for rustls
/// (`WouldBlock` when the kernel has nothing, or takes nothing, now).
pub(super) struct Sock<'a>(pub(super) &'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Read what the socket holds into `conn` and append the plaintext to
/// `inbuf`. `Ok(0)`: the client closed (TCP or `close_notify`);
/// `WouldBlock`: nothing more now; another error ends the connection
/// (after a TLS error the alert waits in `conn` to be written).
pub(super) fn read(
    stream: &TcpStream,
    conn: &mut ServerConnection,
    inbuf: &mut Vec<u8>,
) -> io::Result<usize> {
    let got = match conn.read_tls(&mut Sock(stream)) {
        Ok(0) => return Ok(0),
        Ok(n) => n,
        // Plaintext may wait from an earlier read (e.g. sent with the
        // handshake's last flight).
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let state = conn
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let plain = state.plaintext_bytes_to_read();
    let closed = state.peer_has_closed();
    if plain > 0 {
        let start = inbuf.len();
        inbuf.resize(start + plain, 0);
        conn.reader().read_exact(&mut inbuf[start..])?;
    } else if closed {
        return Ok(0);
    }
    if got == 0 && plain == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(got.max(plain))
}
