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
}

impl Proto {
    /// As written in a URI and in stage names.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
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
    /// Any other socket error.
    Failed(std::io::Error),
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("no answer"),
            Self::Refused => f.write_str("refused"),
            Self::Closed => f.write_str("connection closed by the server"),
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

enum Wire {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

impl Conn {
    /// Connect to `server` over `proto`.
    pub(super) fn open(
        proto: Proto,
        server: SocketAddr,
        timeout: Duration,
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
            Proto::Tcp => {
                let s = TcpStream::connect_timeout(&server, timeout).map_err(no_answer)?;
                let _ = s.set_nodelay(true);
                Wire::Tcp(s, Vec::new())
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
            Wire::Tcp(s, _) => s.write_all(raw).map_err(no_answer),
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
            Wire::Tcp(s, pending) => loop {
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
                s.set_read_timeout(Some(left)).map_err(no_answer)?;
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
