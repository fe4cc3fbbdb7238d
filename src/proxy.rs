//! PROXY protocol headers (HAProxy's v1 text and v2 binary forms), as an
//! L4 load balancer puts them at the start of a TCP connection to tell
//! the server whose connection it is. Parsing is `ppp`'s; this module
//! decides what a header means for tern and how many bytes it takes, so
//! the I/O layer reads exactly the header and leaves what follows (a TLS
//! ClientHello, STUN, ChannelData) in the socket.
//!
//! Pure: bytes in, a verdict out. Fuzzed (`fuzz/fuzz_targets/proxy.rs`)
//! and property-tested (`proxy/tests.rs`).

use std::net::SocketAddr;

use ppp::v1;
use ppp::v2;

/// The longest header accepted, in bytes. A v1 header is at most 107
/// bytes; a v2 header is 16 bytes, the addresses (at most 216, for Unix
/// sockets) and TLVs (HAProxy's: ALPN, authority, unique ID, TLS details:
/// well under 1 KiB). Longer ones are refused, which bounds the memory a
/// connection can make tern hold before it is served.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The longest v1 header, CRLF included.
const V1_MAX_BYTES: usize = 107;
/// v1 headers begin with this.
const V1_PREFIX: &[u8] = b"PROXY ";
/// v2 headers begin with this.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address, as the proxy saw it; `None` when the
    /// connection is the proxy's own (v2 `LOCAL`, e.g. a health check;
    /// v1 `UNKNOWN`; v2 `UNSPEC`), whose real address then stands.
    pub client: Option<SocketAddr>,
    /// The header's length in bytes; the client's own bytes follow.
    pub len: usize,
}

/// Why a connection from a trusted proxy was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first bytes are not a PROXY header (e.g. a client connected to
    /// tern directly from a proxy's address, or the proxy does not send
    /// headers).
    Missing,
    /// A header that does not parse, is longer than [`MAX_HEADER_BYTES`],
    /// or names an address family tern cannot serve (Unix sockets).
    Invalid,
    /// No complete header within the time allowed (the I/O layer's
    /// verdict; [`parse`] never gives it).
    Timeout,
}

impl Refusal {
    /// Every reason, in index order.
    pub const ALL: [Self; 3] = [Self::Missing, Self::Invalid, Self::Timeout];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
        }
    }
}

/// Read a header from the start of `bytes`: `Ok(None)` while `bytes` is
/// a proper prefix of one (read more and call again with all of it).
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, Refusal> {
    let n = bytes.len().min(V2_SIGNATURE.len());
    let v2 = bytes[..n] == V2_SIGNATURE[..n];
    let n = bytes.len().min(V1_PREFIX.len());
    let v1 = bytes[..n] == V1_PREFIX[..n];
    if !v1 && !v2 {
        return Err(Refusal::Missing);
    }
    if bytes.len() < V2_SIGNATURE.len().min(V1_PREFIX.len()) {
        return Ok(None);
    }
    let header = if v2 {
        version_2(bytes)
    } else {
        version_1(bytes)
    };
    match header {
        Ok(Some(h)) if h.len > MAX_HEADER_BYTES => Err(Refusal::Invalid),
        Ok(None) if bytes.len() >= MAX_HEADER_BYTES => Err(Refusal::Invalid),
        other => other,
    }
}

fn version_1(bytes: &[u8]) -> Result<Option<Header>, Refusal> {
    // A v1 header is one CRLF-terminated line of at most 107 bytes; parse
    // it whole (ppp does not tell a proper prefix from a bad header) and
    // never look at the client's bytes after it.
    let Some(cr) = bytes.iter().take(V1_MAX_BYTES).position(|&b| b == b'\r') else {
        return if bytes.len() < V1_MAX_BYTES {
            Ok(None)
        } else {
            Err(Refusal::Invalid)
        };
    };
    let Some(line) = bytes.get(..cr + 2) else {
        return Ok(None);
    };
    let h = v1::Header::try_from(line).map_err(|_| Refusal::Invalid)?;
    let client = match h.addresses {
        v1::Addresses::Unknown => None,
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
    };
    Ok(Some(Header {
        client,
        len: line.len(),
    }))
}

fn version_2(bytes: &[u8]) -> Result<Option<Header>, Refusal> {
    // Refuse an over-long header as soon as its length field shows.
    if let Some(len) = bytes.get(14..16) {
        if 16 + usize::from(u16::from_be_bytes([len[0], len[1]])) > MAX_HEADER_BYTES {
            return Err(Refusal::Invalid);
        }
    }
    match v2::Header::try_from(bytes) {
        Ok(h) => {
            let client = match (h.command, h.addresses) {
                (v2::Command::Local, _) | (_, v2::Addresses::Unspecified) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unix(_)) => return Err(Refusal::Invalid),
            };
            Ok(Some(Header {
                client,
                len: h.len(),
            }))
        }
        Err(v2::ParseError::Incomplete(_) | v2::ParseError::Partial(..)) => Ok(None),
        Err(_) => Err(Refusal::Invalid),
    }
}

#[cfg(test)]
mod tests;
