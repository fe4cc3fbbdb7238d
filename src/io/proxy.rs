//! The PROXY protocol on stream listeners: which sources are trusted
//! proxies, and reading a trusted connection's header off its socket —
//! exactly the header's bytes, so the TLS sniff and handshake or the STUN
//! framing that follow see the client's bytes as if it had connected
//! directly.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;

use super::timer::Timers;
use crate::proxy::{self, Refusal};

/// How long a trusted proxy may take to send its header (a proxy sends
/// it at once, before any of the client's bytes).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes looked at per read of a header (a v2 header with long TLVs
/// takes several).
const PEEK_BYTES: usize = 512;

/// The sources that must begin every connection with a PROXY header
/// (`[listen] proxy-protocol-from`); read once per accepted connection.
#[derive(Debug, Default)]
pub(crate) struct Proxies(RwLock<Vec<IpNet>>);

impl Proxies {
    /// Trust `nets` from now on (start-up, reload); open connections keep
    /// the address they were given.
    pub(crate) fn set(&self, nets: Vec<IpNet>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = nets;
    }

    /// Whether a connection from `ip` comes from a trusted proxy.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let nets = self.0.read().unwrap_or_else(PoisonError::into_inner);
        nets.iter().any(|n| n.contains(&ip))
    }
}

/// What a trusted proxy's connection said first.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A header, consumed from the socket: the client's address, or
    /// `None` for the proxy's own connection (health checks).
    Client(Option<SocketAddr>),
    /// Not a usable header in time: close the connection, counted.
    Refused(Refusal),
    /// The proxy closed the connection (or it failed) before a header.
    Closed,
}

/// Read the PROXY header that must begin `stream`, within
/// [`HEADER_TIMEOUT`].
pub(super) async fn read_header(stream: &TcpStream, timers: &Rc<Timers>) -> Outcome {
    timers
        .timeout(HEADER_TIMEOUT, header(stream))
        .await
        .unwrap_or(Outcome::Refused(Refusal::Timeout))
}

async fn header(stream: &TcpStream) -> Outcome {
    let mut got: Vec<u8> = Vec::new();
    let mut peeked = [0u8; PEEK_BYTES];
    loop {
        let room = PEEK_BYTES.min(proxy::MAX_HEADER_BYTES - got.len()).max(1);
        let n = match stream.peek(&mut peeked[..room]).await {
            Ok(0) | Err(_) => return Outcome::Closed,
            Ok(n) => n,
        };
        let before = got.len();
        got.extend_from_slice(&peeked[..n]);
        // Consume what belongs to the header: all of it while the header
        // is incomplete (the peeked bytes then all precede its end).
        let (take, outcome) = match proxy::parse(&got) {
            Ok(Some(h)) => (h.len - before, Some(Outcome::Client(h.client))),
            Ok(None) => (n, None),
            Err(why) => return Outcome::Refused(why),
        };
        if consume(stream, &mut peeked[..take]).await.is_err() {
            return Outcome::Closed;
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

/// Read exactly `buf.len()` bytes, already peeked, off `stream`.
async fn consume(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match stream.try_read(&mut buf[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
