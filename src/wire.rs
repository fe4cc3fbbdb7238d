//! Zero-copy framing for STUN messages and TURN ChannelData.
//!
//! Control messages are *built* with the `stun`/`turn::proto` wire types (by
//! the core's `response` module); this module only *reads* them, in place, so that
//! the per-packet path (Send indications, ChannelData) and the integrity check
//! never copy or allocate. Everything here takes untrusted bytes and returns
//! `None`/`Err` instead of panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// STUN magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length.
pub const HEADER_LEN: usize = 20;
/// ChannelData header length (RFC 8656 §12.4).
pub const CHANNEL_HEADER_LEN: usize = 4;
/// Room a receive buffer keeps in front of a peer's payload, so the Data
/// indication (IPv6: 20 header + 24 XOR-PEER-ADDRESS + 4 DATA header) or the
/// ChannelData header can be written in front of it without moving it.
pub const PEER_HEADROOM: usize = HEADER_LEN + 24 + 4;

/// Attribute types tern reads or knows (RFC 8489 §18.3, RFC 8656 §18).
// A table of IANA registry entries under their registered names.
#[allow(missing_docs)]
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const CONNECTION_ID: u16 = 0x002A;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Comprehension-required attributes (type < 0x8000) that tern
    /// understands; any other one in a request earns a 420.
    pub const fn is_known_required(t: u16) -> bool {
        matches!(
            t,
            USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | PASSWORD_ALGORITHM
                | USERHASH
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
                | PRIORITY
                | USE_CANDIDATE
                | PADDING
                | RESPONSE_PORT
        )
    }
}

/// STUN methods tern handles (RFC 8489 §18.2, RFC 8656 §17).
// A table of IANA registry entries under their registered names.
#[allow(missing_docs)]
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// STUN message class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request.
    Request,
    /// An indication (no answer).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// What a datagram or stream frame starts with (RFC 8656 §12: the first two
/// bits tell STUN `00` from ChannelData `01`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A STUN message (first bits `00`).
    Stun,
    /// TURN ChannelData (first bits `01`).
    ChannelData,
    /// Neither: dropped.
    Other,
}

/// Classify a buffer by its first byte.
pub fn kind(buf: &[u8]) -> Kind {
    match buf.first().map(|b| b >> 6) {
        Some(0) => Kind::Stun,
        Some(1) => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// Why a STUN message was rejected at parse time; each maps to a drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its header.
    #[error("shorter than its header")]
    Truncated,
    /// No magic cookie: not an RFC 8489 message.
    #[error("not a STUN message")]
    NotStun,
    /// The length field does not match the bytes.
    #[error("length field does not match the datagram")]
    BadLength,
    /// An attribute overruns the message.
    #[error("attribute overruns the message")]
    BadAttribute,
    /// FINGERPRINT does not match.
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// A validated STUN message borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct StunView<'a> {
    buf: &'a [u8],
    /// Offset of the MESSAGE-INTEGRITY attribute header, if any.
    integrity_at: Option<usize>,
}

impl<'a> StunView<'a> {
    /// Parse and validate a whole STUN message: header, cookie, length,
    /// every attribute's bounds, and FINGERPRINT when present. `buf` must hold
    /// exactly one message (use [`stream_frame_len`] to cut one from a stream).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0] >> 6 != 0 || be32(buf, 4) != MAGIC_COOKIE {
            return Err(WireError::NotStun);
        }
        let len = usize::from(be16(buf, 2));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(WireError::BadLength);
        }
        let mut integrity_at = None;
        let mut at = HEADER_LEN;
        while at < buf.len() {
            if at + 4 > buf.len() {
                return Err(WireError::BadAttribute);
            }
            let t = be16(buf, at);
            let vlen = usize::from(be16(buf, at + 2));
            let end = at + 4 + vlen;
            if end > buf.len() {
                return Err(WireError::BadAttribute);
            }
            match t {
                attr::MESSAGE_INTEGRITY if integrity_at.is_none() => {
                    if vlen != 20 {
                        return Err(WireError::BadAttribute);
                    }
                    integrity_at = Some(at);
                }
                attr::FINGERPRINT => {
                    // FINGERPRINT is last (RFC 8489 §14.7).
                    if vlen != 4 || end != buf.len() {
                        return Err(WireError::BadAttribute);
                    }
                    let want = stun::fingerprint::fingerprint_value(&buf[..at]);
                    if be32(buf, at + 4) != want {
                        return Err(WireError::BadFingerprint);
                    }
                }
                _ => {}
            }
            at = (end + 3) & !3;
        }
        if at != buf.len() {
            return Err(WireError::BadAttribute);
        }
        Ok(Self { buf, integrity_at })
    }

    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The 12-bit method.
    pub fn method(&self) -> u16 {
        let t = be16(self.buf, 0);
        (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
    }

    /// The message class.
    pub fn class(&self) -> Class {
        let t = be16(self.buf, 0);
        match ((t >> 7) & 0x2) | ((t >> 4) & 0x1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        }
    }

    /// The 96-bit transaction ID.
    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buf[8..20]);
        id
    }

    /// Whether the message carried a (valid) FINGERPRINT.
    pub fn has_fingerprint(&self) -> bool {
        self.attrs_all().any(|(t, _)| t == attr::FINGERPRINT)
    }

    /// Attributes that count: those before MESSAGE-INTEGRITY (RFC 8489 §14.5
    /// says to ignore everything after it but FINGERPRINT).
    pub fn attrs(&self) -> Attrs<'a> {
        let end = self.integrity_at.unwrap_or(self.buf.len());
        Attrs {
            buf: &self.buf[..end],
            at: HEADER_LEN,
        }
    }

    fn attrs_all(&self) -> Attrs<'a> {
        Attrs {
            buf: self.buf,
            at: HEADER_LEN,
        }
    }

    /// The first value of attribute `t` (among those that count).
    pub fn attr(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs().find(|(at, _)| *at == t).map(|(_, v)| v)
    }

    /// MESSAGE-INTEGRITY: the bytes its HMAC covers, split as (header with
    /// the length adjusted per RFC 8489 §14.5, the rest) plus the 20-byte MAC.
    pub fn integrity(&self) -> Option<([u8; HEADER_LEN], &'a [u8], &'a [u8])> {
        let at = self.integrity_at?;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let covered_len = u16::try_from(at + 24 - HEADER_LEN).ok()?;
        header[2..4].copy_from_slice(&covered_len.to_be_bytes());
        Some((
            header,
            &self.buf[HEADER_LEN..at],
            &self.buf[at + 4..at + 24],
        ))
    }
}

/// Iterator over `(type, value)` attribute pairs of a validated message.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.at + 4 > self.buf.len() {
            return None;
        }
        let t = be16(self.buf, self.at);
        let vlen = usize::from(be16(self.buf, self.at + 2));
        let v = self.buf.get(self.at + 4..self.at + 4 + vlen)?;
        self.at = (self.at + 4 + vlen + 3) & !3;
        Some((t, v))
    }
}

/// Decode an XOR-*-ADDRESS value (RFC 8489 §14.2).
pub fn decode_xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = be16(v, 2) ^ (MAGIC_COOKIE >> 16) as u16;
    match (v[1], v.len()) {
        (0x01, 8) => {
            let x = be32(v, 4) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        (0x02, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(txid);
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Length of an XOR-*-ADDRESS value for `addr`.
const fn xor_address_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Encode an XOR-*-ADDRESS value into `out` (which must be long enough);
/// returns the value length.
fn encode_xor_address(out: &mut [u8], addr: &SocketAddr, txid: &[u8; 12]) -> usize {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            out[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(txid);
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ key[i];
            }
            20
        }
    }
}

/// Total length of a STUN message or ChannelData frame at the start of a
/// stream buffer, once at least 4 bytes are there (RFC 8656 §12.5: on TCP,
/// ChannelData is padded to a multiple of 4). `None` for anything else.
pub fn stream_frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 {
        return None;
    }
    let len = usize::from(be16(buf, 2));
    match kind(buf) {
        Kind::Stun => Some(HEADER_LEN + len),
        Kind::ChannelData => Some((CHANNEL_HEADER_LEN + len + 3) & !3),
        Kind::Other => None,
    }
}

/// Parse a ChannelData message: `(channel, payload)`. On UDP the datagram may
/// carry padding after the payload; it is ignored.
pub fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < CHANNEL_HEADER_LEN || kind(buf) != Kind::ChannelData {
        return None;
    }
    let channel = be16(buf, 0);
    let len = usize::from(be16(buf, 2));
    let payload = buf.get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len)?;
    Some((channel, payload))
}

/// Write a ChannelData header in front of a payload that already sits at
/// `buf[start..start + len]` (`start >= 4`); with `pad`, zero-pad to 4 bytes
/// (TCP). Returns the frame's range in `buf`. `None` if there is no room.
pub fn frame_channel_data(
    buf: &mut [u8],
    start: usize,
    len: usize,
    channel: u16,
    pad: bool,
) -> Option<std::ops::Range<usize>> {
    let begin = start.checked_sub(CHANNEL_HEADER_LEN)?;
    let len16 = u16::try_from(len).ok()?;
    let mut end = start + len;
    if pad {
        let padded = (end + 3) & !3;
        buf.get_mut(end..padded)?.fill(0);
        end = padded;
    }
    if end > buf.len() {
        return None;
    }
    buf[begin..begin + 2].copy_from_slice(&channel.to_be_bytes());
    buf[begin + 2..start].copy_from_slice(&len16.to_be_bytes());
    Some(begin..end)
}

/// Write a Data indication (RFC 8656 §11.4) carrying XOR-PEER-ADDRESS and
/// DATA in front of a payload already at `buf[start..start + len]`, padding
/// the DATA attribute. Returns the message's range. `None` if there is no room.
pub fn frame_data_indication(
    buf: &mut [u8],
    start: usize,
    len: usize,
    peer: &SocketAddr,
    txid: &[u8; 12],
) -> Option<std::ops::Range<usize>> {
    let alen = xor_address_len(peer);
    let begin = start.checked_sub(HEADER_LEN + 4 + alen + 4)?;
    let padded_len = (len + 3) & !3;
    let end = start + padded_len;
    buf.get_mut(start + len..end)?.fill(0);
    let body_len = u16::try_from(4 + alen + 4 + padded_len).ok()?;
    let data_len = u16::try_from(len).ok()?;
    let h = &mut buf[begin..start];
    // Data indication: method 0x007, class indication -> type 0x0017.
    h[0..2].copy_from_slice(&0x0017u16.to_be_bytes());
    h[2..4].copy_from_slice(&body_len.to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(txid);
    h[20..22].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    h[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
    encode_xor_address(&mut h[24..24 + alen], peer, txid);
    let d = 24 + alen;
    h[d..d + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    h[d + 2..d + 4].copy_from_slice(&data_len.to_be_bytes());
    Some(begin..end)
}

/// An RFC 3489 ("classic STUN") Binding request: no magic cookie, a
/// 128-bit transaction ID. Returns whether it asks the server to answer
/// from another address or port (CHANGE-REQUEST with flags set), which tern
/// cannot do. `None` if `buf` is not one.
pub fn classic_binding(buf: &[u8]) -> Option<bool> {
    if buf.len() < HEADER_LEN || be16(buf, 0) != 0x0001 || be32(buf, 4) == MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(be16(buf, 2));
    if len % 4 != 0 || HEADER_LEN + len != buf.len() {
        return None;
    }
    let mut at = HEADER_LEN;
    let mut change = false;
    while at + 4 <= buf.len() {
        let (t, vlen) = (be16(buf, at), usize::from(be16(buf, at + 2)));
        let value = buf.get(at + 4..at + 4 + vlen)?;
        // CHANGE-REQUEST (RFC 3489 §11.2.4): "change IP" 0x4, "change port" 0x2.
        if t == 0x0003 && value.len() == 4 && value[3] & 0x06 != 0 {
            change = true;
        }
        at += 4 + ((vlen + 3) & !3);
    }
    (at == buf.len()).then_some(change)
}

/// The RFC 3489 Binding answer to `req`: MAPPED-ADDRESS of `client`, with
/// the request's 128-bit transaction ID. At most 44 bytes.
pub fn classic_binding_answer(req: &[u8], client: &SocketAddr, out: &mut [u8; 44]) -> usize {
    let alen = xor_address_len(client);
    out[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
    out[2..4].copy_from_slice(&((4 + alen) as u16).to_be_bytes());
    out[4..20].copy_from_slice(&req[4..20]);
    out[20..22].copy_from_slice(&0x0001u16.to_be_bytes());
    out[22..24].copy_from_slice(&(alen as u16).to_be_bytes());
    out[24] = 0;
    out[26..28].copy_from_slice(&client.port().to_be_bytes());
    match client.ip() {
        IpAddr::V4(ip) => {
            out[25] = 0x01;
            out[28..32].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[25] = 0x02;
            out[28..44].copy_from_slice(&ip.octets());
        }
    }
    24 + alen
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::{BINDING_REQUEST, Message, Setter};
    use stun::xoraddr::XorMappedAddress;

    fn binding_with_fingerprint() -> Vec<u8> {
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(stun::fingerprint::FINGERPRINT),
        ];
        m.build(&setters).unwrap();
        m.raw
    }

    #[test]
    fn parses_a_binding_request_with_fingerprint() {
        let raw = binding_with_fingerprint();
        let v = StunView::parse(&raw).unwrap();
        assert_eq!(v.method(), method::BINDING);
        assert_eq!(v.class(), Class::Request);
        assert!(v.has_fingerprint());
    }

    #[test]
    fn rejects_a_corrupted_fingerprint_and_bad_lengths() {
        let mut raw = binding_with_fingerprint();
        let n = raw.len();
        raw[n - 1] ^= 1;
        assert_eq!(
            StunView::parse(&raw).unwrap_err(),
            WireError::BadFingerprint
        );
        let raw = binding_with_fingerprint();
        assert_eq!(
            StunView::parse(&raw[..raw.len() - 4]).unwrap_err(),
            WireError::BadLength
        );
        assert_eq!(
            StunView::parse(&raw[..10]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn xor_address_round_trips_for_both_families() {
        let txid = [7u8; 12];
        for addr in ["192.0.2.1:3478", "[2001:db8::1]:40000"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = [0u8; 20];
            let n = encode_xor_address(&mut out, &addr, &txid);
            assert_eq!(decode_xor_address(&out[..n], &txid), Some(addr));
        }
    }

    #[test]
    fn xor_address_matches_the_stun_crate() {
        let mut m = Message::new();
        let a = XorMappedAddress {
            ip: "2001:db8::7".parse().unwrap(),
            port: 9,
        };
        m.build(&[Box::new(TransactionId::new()), Box::new(a)])
            .unwrap();
        let raw = m.raw.clone();
        let v = StunView::parse(&raw).unwrap();
        let value = v.attr(attr::XOR_MAPPED_ADDRESS).unwrap();
        assert_eq!(
            decode_xor_address(value, &v.transaction_id()),
            Some("[2001:db8::7]:9".parse().unwrap())
        );
    }

    #[test]
    fn data_indication_is_a_valid_stun_message() {
        let peer: SocketAddr = "[2001:db8::2]:5000".parse().unwrap();
        let mut buf = vec![0u8; PEER_HEADROOM + 16];
        buf[PEER_HEADROOM..PEER_HEADROOM + 5].copy_from_slice(b"hello");
        let r = frame_data_indication(&mut buf, PEER_HEADROOM, 5, &peer, &[1; 12]).unwrap();
        let v = StunView::parse(&buf[r]).unwrap();
        assert_eq!(v.method(), method::DATA);
        assert_eq!(v.class(), Class::Indication);
        assert_eq!(v.attr(attr::DATA), Some(&b"hello"[..]));
        let p = v.attr(attr::XOR_PEER_ADDRESS).unwrap();
        assert_eq!(decode_xor_address(p, &v.transaction_id()), Some(peer));
    }

    #[test]
    fn classic_stun_bindings_are_recognised_and_answered() {
        let mut req = vec![0x00, 0x01, 0x00, 0x08];
        req.extend_from_slice(&[9u8; 16]);
        req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
        assert_eq!(classic_binding(&req), Some(false));
        req[27] = 0x06;
        assert_eq!(classic_binding(&req), Some(true));
        assert_eq!(classic_binding(&req[..24]), None);
        let mut out = [0u8; 44];
        let client: SocketAddr = "192.0.2.5:4000".parse().unwrap();
        let n = classic_binding_answer(&req, &client, &mut out);
        assert_eq!(n, 32);
        assert_eq!(&out[4..20], &req[4..20]);
        assert_eq!(&out[24..32], &[0, 1, 0x0F, 0xA0, 192, 0, 2, 5]);
        // A modern request is not classic.
        let modern = binding_with_fingerprint();
        assert_eq!(classic_binding(&modern), None);
    }

    #[test]
    fn channel_data_frames_and_parses() {
        let mut buf = vec![0u8; 16];
        buf[4..9].copy_from_slice(b"abcde");
        let r = frame_channel_data(&mut buf, 4, 5, 0x4001, true).unwrap();
        assert_eq!(r, 0..12);
        assert_eq!(stream_frame_len(&buf), Some(12));
        assert_eq!(parse_channel_data(&buf[r]), Some((0x4001, &b"abcde"[..])));
        assert_eq!(parse_channel_data(&buf[..6]), None);
    }
}
