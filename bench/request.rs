//! STUN/TURN requests as clients send them, with long-term credentials
//! when given: shared by `tern-loadgen` and the criterion benchmarks
//! (`benches/per_packet.rs` includes this file), which drive the server
//! from outside the library.

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{CLASS_REQUEST, Message, MessageType, Setter};
use stun::textattrs::TextAttribute;

/// Long-term credentials and the server's realm and nonce.
pub(crate) struct Auth<'a> {
    pub(crate) user: &'a str,
    pub(crate) pass: &'a str,
    pub(crate) realm: &'a str,
    pub(crate) nonce: &'a str,
}

/// A request of `method` with `attrs`, signed with MESSAGE-INTEGRITY when
/// `auth` is given.
pub(crate) fn request(
    method: u16,
    mut attrs: Vec<Box<dyn Setter>>,
    auth: Option<&Auth<'_>>,
) -> Result<Vec<u8>, stun::Error> {
    let mut t = MessageType::default();
    t.read_value(method);
    t.class = CLASS_REQUEST;
    let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(TransactionId::new()), Box::new(t)];
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
