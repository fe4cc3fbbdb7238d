//! Building STUN responses with the `stun` / `turn::proto` wire types.
//!
//! Control-plane only: these allocate. The per-packet path frames data in
//! place with [`crate::wire`].

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_SOFTWARE, AttrType};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::integrity::MessageIntegrity;
use stun::message::{CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Message, MessageType, Setter};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;

use crate::auth::Key;
use crate::wire::StunView;

/// STUN/TURN error codes tern sends (RFC 8489 §14.8, RFC 8656 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    /// 300 Try Alternate.
    TryAlternate = 300,
    /// 400 Bad Request.
    BadRequest = 400,
    /// 401 Unauthenticated.
    Unauthorized = 401,
    /// 403 Forbidden.
    Forbidden = 403,
    /// 420 Unknown Attribute.
    UnknownAttribute = 420,
    /// 437 Allocation Mismatch.
    AllocationMismatch = 437,
    /// 438 Stale Nonce.
    StaleNonce = 438,
    /// 440 Address Family not Supported.
    AddressFamilyNotSupported = 440,
    /// 441 Wrong Credentials.
    WrongCredentials = 441,
    /// 442 Unsupported Transport Protocol.
    UnsupportedTransport = 442,
    /// 443 Peer Address Family Mismatch.
    PeerAddressFamilyMismatch = 443,
    /// 486 Allocation Quota Reached.
    AllocationQuotaReached = 486,
    /// 500 Server Error.
    ServerError = 500,
    /// 508 Insufficient Capacity.
    InsufficientCapacity = 508,
}

impl Code {
    fn reason(self) -> &'static str {
        match self {
            Self::TryAlternate => "Try Alternate",
            Self::BadRequest => "Bad Request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::UnknownAttribute => "Unknown Attribute",
            Self::AllocationMismatch => "Allocation Mismatch",
            Self::StaleNonce => "Stale Nonce",
            Self::AddressFamilyNotSupported => "Address Family not Supported",
            Self::WrongCredentials => "Wrong Credentials",
            Self::UnsupportedTransport => "Unsupported Transport Protocol",
            Self::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            Self::AllocationQuotaReached => "Allocation Quota Reached",
            Self::ServerError => "Server Error",
            Self::InsufficientCapacity => "Insufficient Capacity",
        }
    }
}

/// How to seal a response: integrity key (authenticated requests),
/// FINGERPRINT (when the request had one), SOFTWARE, and a size cap.
#[derive(Clone, Copy)]
pub struct Seal<'a> {
    /// MESSAGE-INTEGRITY with this key (authenticated requests).
    pub key: Option<&'a Key>,
    /// Add FINGERPRINT.
    pub fingerprint: bool,
    /// Add SOFTWARE with this text.
    pub software: Option<&'a str>,
    /// When set, the optional parts (SOFTWARE and an error's reason phrase)
    /// are left out if the answer would otherwise be longer than this.
    pub max_len: Option<usize>,
}

impl<'a> Seal<'a> {
    /// Seal for an answer to an authenticated `req`: FINGERPRINT iff the
    /// request had one.
    pub fn for_request(
        req: &StunView<'_>,
        key: Option<&'a Key>,
        software: Option<&'a str>,
    ) -> Self {
        Self {
            key,
            fingerprint: req.has_fingerprint(),
            software,
            max_len: None,
        }
    }

    /// Seal for an answer to a request that did not authenticate: no
    /// integrity, and SOFTWARE and the reason phrase only while the answer
    /// stays within twice the request's size (the amplification bound).
    pub fn unauthenticated(req: &StunView<'_>, software: Option<&'a str>) -> Self {
        Self {
            key: None,
            fingerprint: req.has_fingerprint(),
            software,
            max_len: Some(2 * req.bytes().len()),
        }
    }
}

fn build(
    req: &StunView<'_>,
    class: stun::message::MessageClass,
    error: Option<Code>,
    attrs: Vec<Box<dyn Setter>>,
    seal: Seal<'_>,
) -> Vec<u8> {
    build_saying(req, class, error.map(|c| (c, c.reason())), attrs, seal)
}

fn build_saying(
    req: &StunView<'_>,
    class: stun::message::MessageClass,
    error: Option<(Code, &str)>,
    attrs: Vec<Box<dyn Setter>>,
    seal: Seal<'_>,
) -> Vec<u8> {
    let full = assemble(req, class, error, &attrs, seal);
    match seal.max_len {
        Some(max) if full.len() > max => {
            let bare = Seal {
                software: None,
                ..seal
            };
            assemble(req, class, error.map(|(c, _)| (c, "")), &attrs, bare)
        }
        _ => full,
    }
}

fn assemble(
    req: &StunView<'_>,
    class: stun::message::MessageClass,
    error: Option<(Code, &str)>,
    attrs: &[Box<dyn Setter>],
    seal: Seal<'_>,
) -> Vec<u8> {
    // The request's method with the answer's class.
    let mut typ = MessageType::default();
    typ.read_value(u16::from_be_bytes([req.bytes()[0], req.bytes()[1]]));
    typ.class = class;
    let mut m = Message::new();
    // Every value below is bounded and well formed; a failure here would be
    // a bug in tern, answered with no response rather than a panic.
    let mut ok = m.build(&[]).is_ok();
    let mut add = |s: &dyn Setter| s.add_to(&mut m).is_ok();
    ok &= add(&TransactionId(req.transaction_id()));
    ok &= add(&typ);
    if let Some((code, reason)) = error {
        ok &= add(&ErrorCodeAttribute {
            code: ErrorCode(code as u16),
            reason: reason.as_bytes().to_vec(),
        });
    }
    for a in attrs {
        ok &= add(a.as_ref());
    }
    if let Some(sw) = seal.software {
        ok &= add(&TextAttribute::new(ATTR_SOFTWARE, sw.to_owned()));
    }
    if let Some(key) = seal.key {
        ok &= add(&MessageIntegrity(key.to_vec()));
    }
    if seal.fingerprint {
        ok &= add(&stun::fingerprint::FINGERPRINT);
    }
    if ok { m.raw } else { Vec::new() }
}

/// A success response carrying `attrs`.
pub fn success(req: &StunView<'_>, attrs: Vec<Box<dyn Setter>>, seal: Seal<'_>) -> Vec<u8> {
    build(req, CLASS_SUCCESS_RESPONSE, None, attrs, seal)
}

/// An error response with `code` plus `attrs`.
pub fn error(
    req: &StunView<'_>,
    code: Code,
    attrs: Vec<Box<dyn Setter>>,
    seal: Seal<'_>,
) -> Vec<u8> {
    build(req, CLASS_ERROR_RESPONSE, Some(code), attrs, seal)
}

/// An error response with `code` and its own reason phrase (dropped, as
/// every reason phrase, beyond the seal's size bound).
pub fn error_saying(req: &StunView<'_>, code: Code, reason: &str, seal: Seal<'_>) -> Vec<u8> {
    build_saying(
        req,
        CLASS_ERROR_RESPONSE,
        Some((code, reason)),
        vec![],
        seal,
    )
}

/// A 401 or 438 challenge: ERROR-CODE, REALM, NONCE; no SOFTWARE, and the
/// reason phrase only within the amplification bound.
pub fn challenge(req: &StunView<'_>, code: Code, realm: &str, nonce: String) -> Vec<u8> {
    let attrs: Vec<Box<dyn Setter>> = vec![
        Box::new(TextAttribute::new(ATTR_REALM, realm.to_owned())),
        Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
    ];
    error(req, code, attrs, Seal::unauthenticated(req, None))
}

/// ALTERNATE-SERVER (RFC 8489 §14.15), encoded like MAPPED-ADDRESS.
struct AlternateServer(std::net::SocketAddr);

impl Setter for AlternateServer {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        let a = stun::addr::MappedAddress {
            ip: self.0.ip(),
            port: self.0.port(),
        };
        a.add_to_as(m, stun::attributes::ATTR_ALTERNATE_SERVER)
    }
}

/// A 300 Try Alternate pointing at `server`.
pub fn try_alternate(req: &StunView<'_>, server: std::net::SocketAddr, seal: Seal<'_>) -> Vec<u8> {
    error(
        req,
        Code::TryAlternate,
        vec![Box::new(AlternateServer(server))],
        seal,
    )
}

/// A 420 listing the attributes not understood.
pub fn unknown_attributes(req: &StunView<'_>, unknown: &[u16], seal: Seal<'_>) -> Vec<u8> {
    let list = UnknownAttributes(unknown.iter().map(|t| AttrType(*t)).collect());
    error(req, Code::UnknownAttribute, vec![Box::new(list)], seal)
}
