//! The probe's side of one connection to a TURN server: STUN
//! transactions over UDP (retransmitted as RFC 8489 §6.2.1 says, within
//! the probe's timeout) or TCP (RFC 8656 §12.5 framing), and the frames
//! the server sends unasked (Data indications).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use stun::message::Message;

use crate::wire;

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// STUN/TURN over UDP.
    Udp,
    /// STUN/TURN over TCP.
    Tcp,
    /// STUN/TURN over TLS over TCP (`turns:`).
    Tls,
}

impl Proto {
    /// As written in a URI and in stage names.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// Why a transaction got no answer.
#[derive(Debug)]
pub(super) enum NoAnswer {
    /// Nothing within the timeout.
    Timeout,
    /// The server's host said nothing listens there (ICMP port
    /// unreachable on UDP, RST on TCP connect).
    Refused,
    /// The connection was reset or closed by the server.
    Closed,
    /// The TLS handshake failed (e.g. the certificate did not verify).
    Tls(String),
    /// Any other socket error.
    Failed(std::io::Error),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("no answer"),
            Self::Refused => f.write_str("refused"),
            Self::Closed => f.write_str("connection closed by the server"),
            Self::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

fn no_answer(e: std::io::Error) -> NoAnswer {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => NoAnswer::Timeout,
        ErrorKind::ConnectionRefused => NoAnswer::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::UnexpectedEof => {
            NoAnswer::Closed
        }
        _ => NoAnswer::Failed(e),
    }
}

/// One connected client socket.
pub(super) struct Conn {
    wire: Wire,
    /// How long one transaction may take, retransmissions included.
    timeout: Duration,
}

/// Read and write: a TCP stream, or TLS over one.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

enum Wire {
    Udp(UdpSocket),
    /// A stream, its socket (for timeouts) and bytes of a partial frame.
    Stream(Box<dyn Stream>, TcpStream, Vec<u8>),
}

/// What a `turns:` connection verifies the server against.
pub(super) struct TlsClient {
    pub(super) config: std::sync::Arc<rustls::ClientConfig>,
    pub(super) name: rustls::pki_types::ServerName<'static>,
}

impl Conn {
    /// Connect to `server` over `proto`.
    pub(super) fn open(
        proto: Proto,
        server: SocketAddr,
        timeout: Duration,
        tls: Option<&TlsClient>,
    ) -> Result<Self, NoAnswer> {
        let any: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| NoAnswer::Timeout)?;
        let wire = match proto {
            Proto::Udp => {
                let s = UdpSocket::bind(any).map_err(no_answer)?;
                // Connected, so ICMP port unreachable shows as refused.
                s.connect(server).map_err(no_answer)?;
                Wire::Udp(s)
            }
            Proto::Tcp | Proto::Tls => {
                let s = TcpStream::connect_timeout(&server, timeout).map_err(no_answer)?;
                let _ = s.set_nodelay(true);
                let sock = s.try_clone().map_err(no_answer)?;
                let io: Box<dyn Stream> = match (proto, tls) {
                    (Proto::Tls, Some(t)) => Box::new(handshake(s, t, timeout)?),
                    _ => Box::new(s),
                };
                Wire::Stream(io, sock, Vec::new())
            }
        };
        Ok(Self { wire, timeout })
    }

    /// Send `raw` (a request) and wait for the answer with its
    /// transaction ID; over UDP, retransmit after 250 ms, 500 ms, … until
    /// the timeout. Other frames that arrive meanwhile are dropped.
    pub(super) fn transact(&mut self, raw: &[u8]) -> Result<Message, NoAnswer> {
        let txid = raw.get(8..20).ok_or(NoAnswer::Timeout)?.to_vec();
        let deadline = Instant::now() + self.timeout;
        let mut rto = Duration::from_millis(250);
        self.send(raw)?;
        let mut resend = Instant::now() + rto;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(NoAnswer::Timeout);
            }
            let udp = matches!(self.wire, Wire::Udp(_));
            let until = if udp { resend.min(deadline) } else { deadline };
            match self.recv_until(until) {
                Ok(frame) => {
                    if wire::kind(&frame) == wire::Kind::Stun && frame.get(8..20) == Some(&txid[..])
                    {
                        return decode(&frame).ok_or(NoAnswer::Timeout);
                    }
                }
                Err(NoAnswer::Timeout) if udp && Instant::now() < deadline => {
                    self.send(raw)?;
                    rto *= 2;
                    resend = Instant::now() + rto;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send one message (a request or an indication).
    pub(super) fn send(&mut self, raw: &[u8]) -> Result<(), NoAnswer> {
        match &mut self.wire {
            Wire::Udp(s) => s.send(raw).map(drop).map_err(no_answer),
            Wire::Stream(s, _, _) => s.write_all(raw).and_then(|()| s.flush()).map_err(no_answer),
        }
    }

    /// The next STUN message the server sends before `deadline`
    /// (ChannelData is skipped).
    pub(super) fn next_message(&mut self, deadline: Instant) -> Result<Message, NoAnswer> {
        loop {
            let frame = self.recv_until(deadline)?;
            if wire::kind(&frame) == wire::Kind::Stun {
                if let Some(m) = decode(&frame) {
                    return Ok(m);
                }
            }
        }
    }

    /// One datagram or frame, before `deadline`.
    fn recv_until(&mut self, deadline: Instant) -> Result<Vec<u8>, NoAnswer> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(NoAnswer::Timeout)?;
        match &mut self.wire {
            Wire::Udp(s) => {
                s.set_read_timeout(Some(left)).map_err(no_answer)?;
                let mut buf = vec![0u8; 65_536];
                let n = s.recv(&mut buf).map_err(no_answer)?;
                buf.truncate(n);
                Ok(buf)
            }
            Wire::Stream(s, sock, pending) => loop {
                if let Some(n) = wire::stream_frame_len(pending) {
                    if pending.len() >= n {
                        return Ok(pending.drain(..n).collect());
                    }
                } else if pending.len() >= 4 {
                    return Err(NoAnswer::Closed);
                }
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())
                    .ok_or(NoAnswer::Timeout)?;
                sock.set_read_timeout(Some(left)).map_err(no_answer)?;
                let mut buf = [0u8; 4096];
                match s.read(&mut buf) {
                    Ok(0) => return Err(NoAnswer::Closed),
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(no_answer(e)),
                }
            },
        }
    }
}

fn decode(frame: &[u8]) -> Option<Message> {
    let mut m = Message::new();
    m.raw = frame.to_vec();
    m.decode().ok()?;
    Some(m)
}

/// The client side of a TLS handshake on `s`, verifying the server.
fn handshake(
    s: TcpStream,
    t: &TlsClient,
    timeout: Duration,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, NoAnswer> {
    let conn = rustls::ClientConnection::new(std::sync::Arc::clone(&t.config), t.name.clone())
        .map_err(|e| NoAnswer::Tls(e.to_string()))?;
    s.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    let mut stream = rustls::StreamOwned::new(conn, s);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            let tls = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map(ToString::to_string);
            return Err(match tls {
                Some(t) => NoAnswer::Tls(t),
                None => no_answer(e),
            });
        }
    }
    Ok(stream)
}
