//! The transport and address family of an allocation, with the index
//! each has in per-transport and per-family arrays and its metric label.

use std::net::SocketAddr;

/// The transport a client reached tern over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// STUN/TURN over UDP.
    Udp,
    /// STUN/TURN over TCP (RFC 8656 §12.5 framing).
    Tcp,
    /// STUN/TURN over TLS over TCP: framed as over TCP.
    Tls,
}

impl Transport {
    /// Every transport, in the order of per-transport arrays.
    pub const ALL: [Self; 3] = [Self::Udp, Self::Tcp, Self::Tls];

    /// Index in per-transport arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Whether it is a byte stream (TCP or TLS): ChannelData is padded to
    /// 4 bytes and the allocation ends with the connection.
    pub fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// Address family of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Every family, in the order of per-family arrays (`[IPv4, IPv6]`).
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];

    /// The family of an address.
    pub fn of(addr: &SocketAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// Index in per-family arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}
