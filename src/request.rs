//! STUN/TURN requests as clients send them, signed with long-term
//! credentials when given. Not on the server's path: the load generator
//! (`tern-loadgen`), the micro-benchmarks, the fuzz targets and the tests
//! drive tern from the client's side with it.

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{CLASS_REQUEST, Message, MessageClass, MessageType, Setter};
use stun::textattrs::TextAttribute;

/// Long-term credentials and the server's realm and nonce.
#[derive(Debug, Clone, Copy)]
pub struct Auth<'a> {
    /// USERNAME.
    pub user: &'a str,
    /// The password (or REST credential) the key is derived from.
    pub pass: &'a str,
    /// REALM, as the server's challenge gave it.
    pub realm: &'a str,
    /// NONCE, as the server's challenge gave it.
    pub nonce: &'a str,
}

/// The STUN message type of `method` in `class`, for any method number
/// (RFC 8489 §5: the class bits sit between the method bits).
pub fn message_type(method: u16, class: MessageClass) -> MessageType {
    let m = method;
    let mut t = MessageType::default();
    t.read_value((m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2));
    t.class = class;
    t
}

/// A request of `method` with `attrs`, signed with MESSAGE-INTEGRITY when
/// `auth` is given.
pub fn request(
    method: u16,
    attrs: Vec<Box<dyn Setter>>,
    auth: Option<&Auth<'_>>,
) -> Result<Vec<u8>, stun::Error> {
    message(method, CLASS_REQUEST, attrs, auth)
}

/// A message of `method` and `class` with `attrs` and a fresh
/// transaction ID, signed when `auth` is given.
pub fn message(
    method: u16,
    class: MessageClass,
    mut attrs: Vec<Box<dyn Setter>>,
    auth: Option<&Auth<'_>>,
) -> Result<Vec<u8>, stun::Error> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(message_type(method, class)),
    ];
    setters.append(&mut attrs);
    if let Some(a) = auth {
        setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, a.user.into())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, a.realm.into())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, a.nonce.into())));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            a.user.into(),
            a.realm.into(),
            a.pass.into(),
        )));
    }
    let mut m = Message::new();
    m.build(&setters)?;
    Ok(m.raw)
}
