//! Core unit tests: a recording `Io` and a fake clock.

use std::net::SocketAddr;
use std::time::Duration;

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, AttrType, RawAttribute};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, Message,
    Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use super::*;
use crate::auth::{long_term_key, rest_password};

use crate::testing::{Clock, REALM, Recorder, SECRET, START_UNIX, core_config};

/// The last answer to a client, decoded.
trait Last {
    fn last(&self) -> Message;
}

impl Last for Recorder {
    fn last(&self) -> Message {
        let (_, bytes) = self.to_client.last().expect("an answer");
        decode(bytes)
    }
}

fn decode(bytes: &[u8]) -> Message {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode().expect("a valid STUN message");
    m
}

struct Harness {
    core: Core,
    io: Recorder,
    clock: Clock,
    /// Length of the last datagram sent to the core.
    sent_len: usize,
}

fn client(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        local: "192.0.2.1:3478".parse().unwrap(),
        remote: SocketAddr::from(([198, 51, 100, 7], port)),
    }
}

const PEER_A: &str = "8.8.8.8:5000";
const PEER_B: &str = "1.1.1.1:6000";

fn peer_attr(addr: &str) -> Box<dyn Setter> {
    let a: SocketAddr = addr.parse().unwrap();
    Box::new(PeerAddress {
        ip: a.ip(),
        port: a.port(),
    })
}

impl Harness {
    fn new() -> Self {
        Self::with(core_config())
    }

    /// This harness once its client at port 1000 holds an allocation:
    /// where most tests of an allocation's peers and lifetime start.
    fn allocated(mut self) -> (Self, FiveTuple, AllocId) {
        let c = client(1000);
        self.allocate(&c);
        let id = alloc_id(&self, &c);
        (self, c, id)
    }

    fn with(cfg: CoreConfig) -> Self {
        let clock = Clock::new();
        Self {
            core: Core::new(
                Arc::new(cfg),
                Arc::new(Quotas::default()),
                0,
                42,
                clock.start,
            ),
            io: Recorder::default(),
            clock,
            sent_len: 0,
        }
    }

    fn send(&mut self, from: &FiveTuple, bytes: &[u8]) {
        self.sent_len = bytes.len();
        self.core
            .on_client(self.clock.now(), from, bytes, &mut self.io);
    }

    /// Build a request, signed as `user` with a nonce fetched for `from`.
    fn signed(
        &mut self,
        from: &FiveTuple,
        method: u16,
        attrs: Vec<Box<dyn Setter>>,
        user: &str,
        pass: &str,
    ) -> Vec<u8> {
        let nonce = self
            .core
            .cfg
            .nonces
            .issue(self.clock.now().unix, false, &from.remote);
        build(method, CLASS_REQUEST, attrs, Some((user, pass, &nonce)))
    }

    /// Size of the last answer to a client.
    fn last_len(&self) -> usize {
        self.io.to_client.last().map_or(0, |(_, b)| b.len())
    }

    fn request(&mut self, from: &FiveTuple, method: u16, attrs: Vec<Box<dyn Setter>>) -> Message {
        let raw = self.signed(from, method, attrs, "alice", "pw");
        self.send(from, &raw);
        self.io.last()
    }

    fn allocate(&mut self, from: &FiveTuple) -> SocketAddr {
        let m = self.request(from, method::ALLOCATE, vec![udp()]);
        assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
        let mut r = RelayedAddress::default();
        r.get_from(&m).unwrap();
        SocketAddr::new(r.ip, r.port)
    }

    /// Refresh with LIFETIME 0 (RFC 8656 §7.3: delete), signed as alice.
    fn delete(&mut self, c: &FiveTuple) -> Message {
        self.request(c, method::REFRESH, vec![Box::new(Lifetime(Duration::ZERO))])
    }

    /// ChannelBind `number` to `peer` on `c`'s allocation, signed as alice.
    fn bind(&mut self, c: &FiveTuple, number: u16, peer: &str) -> Message {
        self.request(
            c,
            method::CHANNEL_BIND,
            vec![channel(number), peer_attr(peer)],
        )
    }

    fn tick(&mut self) {
        self.core.tick(self.clock.now(), &mut self.io);
    }

    fn peer_datagram(&mut self, id: AllocId, peer: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let before = self.io.to_client.len();
        let mut buf = vec![0u8; wire::PEER_HEADROOM + payload.len() + 4];
        let start = wire::PEER_HEADROOM;
        buf[start..start + payload.len()].copy_from_slice(payload);
        self.core.on_peer(
            self.clock.now(),
            id,
            peer.parse().unwrap(),
            &mut buf,
            start..start + payload.len(),
            &mut self.io,
        );
        (self.io.to_client.len() > before).then(|| self.io.to_client.last().unwrap().1.clone())
    }
}

fn udp() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

/// A message signed as `(user, password, nonce)` when given.
fn build(
    method: u16,
    class: stun::message::MessageClass,
    attrs: Vec<Box<dyn Setter>>,
    auth: Option<(&str, &str, &str)>,
) -> Vec<u8> {
    let auth = auth.map(|(user, pass, nonce)| crate::request::Auth {
        user,
        pass,
        realm: REALM,
        nonce,
    });
    crate::request::message(method, class, attrs, auth.as_ref()).unwrap()
}

fn error_code(m: &Message) -> u16 {
    assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE, "{m}");
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).unwrap();
    e.code.0
}

fn alloc_id(h: &Harness, from: &FiveTuple) -> AllocId {
    h.core.allocation_of(from).unwrap().id
}

#[test]
fn binding_reflects_the_source_with_fingerprint_when_asked() {
    let mut h = Harness::new();
    let c = client(1000);
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(stun::message::BINDING_REQUEST),
    ];
    setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters).unwrap();
    h.send(&c, &m.raw);
    let r = h.io.last();
    assert_eq!(r.typ, stun::message::BINDING_SUCCESS);
    assert_eq!(r.transaction_id, m.transaction_id);
    let mut x = XorMappedAddress::default();
    x.get_from(&r).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), c.remote);
    assert!(r.contains(stun::attributes::ATTR_FINGERPRINT));
    stun::fingerprint::FINGERPRINT.check(&r).unwrap();
    // No per-source state.
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn allocate_challenges_then_succeeds_with_clamped_lifetime() {
    let mut h = Harness::new();
    let c = client(1000);
    h.send(
        &c,
        &build(method::ALLOCATE, CLASS_REQUEST, vec![udp()], None),
    );
    let r = h.io.last();
    assert_eq!(error_code(&r), 401);
    assert!(r.contains(ATTR_REALM) && r.contains(ATTR_NONCE));
    assert!(h.io.to_client.last().unwrap().1.len() < 120);

    let m = h.request(
        &c,
        method::ALLOCATE,
        vec![udp(), Box::new(Lifetime(Duration::from_secs(99_999)))],
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    let mut l = Lifetime::default();
    l.get_from(&m).unwrap();
    assert_eq!(l.0, Duration::from_secs(3600));
    MessageIntegrity(long_term_key("alice", REALM, "pw").to_vec())
        .check(&mut m.clone())
        .unwrap();
    let mut x = XorMappedAddress::default();
    x.get_from(&m).unwrap();
    assert_eq!(x.port, 1000);

    let c2 = client(1001);
    let m = h.request(
        &c2,
        method::ALLOCATE,
        vec![udp(), Box::new(Lifetime(Duration::from_secs(5)))],
    );
    l.get_from(&m).unwrap();
    assert_eq!(l.0, Duration::from_secs(600));
}

#[test]
fn a_bad_password_gets_401_and_an_unknown_user_too() {
    let mut h = Harness::new();
    let c = client(1000);
    let raw = h.signed(&c, method::ALLOCATE, vec![udp()], "alice", "wrong");
    h.send(&c, &raw);
    assert_eq!(error_code(&h.io.last()), 401);
    let raw = h.signed(&c, method::ALLOCATE, vec![udp()], "mallory", "x");
    h.send(&c, &raw);
    assert_eq!(error_code(&h.io.last()), 401);
    assert_eq!(
        h.core.stats.auth_failures[AuthFailure::BadIntegrity as usize],
        1
    );
    assert_eq!(
        h.core.stats.auth_failures[AuthFailure::UnknownUser as usize],
        1
    );
}

#[test]
fn rest_credentials_work_and_expire() {
    let mut h = Harness::new();
    let c = client(1000);
    let user = format!("{}:carol", START_UNIX + 100);
    let pass = rest_password(SECRET.as_bytes(), &user);
    let raw = h.signed(&c, method::ALLOCATE, vec![udp()], &user, &pass);
    h.send(&c, &raw);
    let m = h.io.last();
    let mut l = Lifetime::default();
    l.get_from(&m).unwrap();
    // Strict expiry caps the lifetime at the credential's expiry.
    assert_eq!(l.0, Duration::from_secs(100));
    h.clock.advance(100);
    h.tick();
    assert_eq!(h.core.allocation_count(), 0);
    let raw = h.signed(&client(1001), method::ALLOCATE, vec![udp()], &user, &pass);
    h.send(&client(1001), &raw);
    assert_eq!(error_code(&h.io.last()), 401);
}

#[test]
fn stale_nonces_get_438_with_a_fresh_nonce() {
    let mut h = Harness::new();
    let c = client(1000);
    let raw = h.signed(&c, method::ALLOCATE, vec![udp()], "alice", "pw");
    h.clock.advance(600);
    h.send(&c, &raw);
    let r = h.io.last();
    assert_eq!(error_code(&r), 438);
    let nonce = TextAttribute::get_from_as(&r, ATTR_NONCE).unwrap();
    assert_eq!(
        h.core
            .cfg
            .nonces
            .check(nonce.text.as_bytes(), h.clock.now().unix, false, &c.remote),
        NonceState::Valid
    );
}

#[test]
fn allocate_retransmissions_get_the_original_answer() {
    let mut h = Harness::new();
    let c = client(1000);
    let raw = h.signed(&c, method::ALLOCATE, vec![udp()], "alice", "pw");
    h.send(&c, &raw);
    let first = h.io.to_client.last().unwrap().1.clone();
    h.clock.advance(5);
    h.send(&c, &raw);
    assert_eq!(h.io.to_client.last().unwrap().1, first);
    assert_eq!(h.io.opened.len(), 1);
    // A new transaction on the same 5-tuple is a mismatch.
    assert_eq!(
        error_code(&h.request(&c, method::ALLOCATE, vec![udp()])),
        437
    );
}

#[test]
fn allocate_checks_transport_attributes_and_families() {
    let mut h = Harness::new();
    let c = client(1000);
    assert_eq!(error_code(&h.request(&c, method::ALLOCATE, vec![])), 400);
    let tcp = Box::new(RequestedTransport {
        protocol: turn::proto::PROTO_TCP,
    });
    assert_eq!(error_code(&h.request(&c, method::ALLOCATE, vec![tcp])), 442);
    let unknown = Box::new(RawAttribute {
        typ: AttrType(0x0077),
        length: 4,
        value: vec![0; 4],
    });
    let r = h.request(&c, method::ALLOCATE, vec![udp(), unknown]);
    assert_eq!(error_code(&r), 420);
    let mut u = stun::uattrs::UnknownAttributes(vec![]);
    u.get_from(&r).unwrap();
    assert_eq!(u.0, vec![AttrType(0x0077)]);
    let v6 = Box::new(turn::proto::reqfamily::REQUESTED_FAMILY_IPV6);
    assert_eq!(
        error_code(&h.request(&c, method::ALLOCATE, vec![udp(), v6])),
        440
    );
    let bad = Box::new(turn::proto::reqfamily::RequestedAddressFamily(9));
    assert_eq!(
        error_code(&h.request(&c, method::ALLOCATE, vec![udp(), bad])),
        440
    );
    let even = even_port(false);
    let token = Box::new(turn::proto::rsrvtoken::ReservationToken(vec![1; 8]));
    assert_eq!(
        error_code(&h.request(&c, method::ALLOCATE, vec![udp(), even, token])),
        400
    );
    let even = even_port(true);
    h.allocate_with(&c, vec![udp(), even]);
    assert_eq!(
        h.io.opened[0].1.port,
        PortRequest::Even { reserve_next: true }
    );
}

impl Harness {
    fn allocate_with(&mut self, c: &FiveTuple, attrs: Vec<Box<dyn Setter>>) {
        let m = self.request(c, method::ALLOCATE, attrs);
        assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    }
}

#[test]
fn no_relay_port_gives_508_and_quotas_give_486() {
    let mut h = Harness::new();
    h.io.fail = Some(RelayError::NoCapacity);
    assert_eq!(
        error_code(&h.request(&client(1), method::ALLOCATE, vec![udp()])),
        508
    );
    h.io.fail = None;
    for p in 2..5 {
        h.allocate(&client(p));
    }
    assert_eq!(
        error_code(&h.request(&client(9), method::ALLOCATE, vec![udp()])),
        486
    );
    // Closing one frees the user's slot.
    h.delete(&client(2));
    h.allocate(&client(9));
}

#[test]
fn requests_without_an_allocation_get_437_and_other_users_441() {
    let mut h = Harness::new();
    let c = client(1000);
    assert_eq!(error_code(&h.request(&c, method::REFRESH, vec![])), 437);
    assert_eq!(
        error_code(&h.request(&c, method::CREATE_PERMISSION, vec![peer_attr(PEER_A)])),
        437
    );
    h.allocate(&c);
    let raw = h.signed(&c, method::REFRESH, vec![], "bob", "pw2");
    h.send(&c, &raw);
    assert_eq!(error_code(&h.io.last()), 441);
}

#[test]
fn refresh_extends_and_lifetime_zero_deletes() {
    let (mut h, c, _) = Harness::new().allocated();
    h.clock.advance(590);
    let m = h.request(
        &c,
        method::REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(1200)))],
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    h.clock.advance(590);
    h.tick();
    assert_eq!(h.core.allocation_count(), 1);
    assert_eq!(h.delete(&c).typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.io.closed.len(), 1);
}

#[test]
fn allocations_expire_on_tick() {
    let (mut h, _, _) = Harness::new().allocated();
    h.clock.advance(599);
    h.tick();
    assert_eq!(h.core.allocation_count(), 1);
    h.clock.advance(1);
    h.tick();
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.io.closed.len(), 1);
}

fn even_port(reserve: bool) -> Box<dyn Setter> {
    Box::new(RawAttribute {
        typ: AttrType(0x0018),
        length: 1,
        value: vec![if reserve { 0x80 } else { 0 }],
    })
}

fn channel(n: u16) -> Box<dyn Setter> {
    Box::new(ChannelNumber(n))
}

#[test]
fn tcp_allocations_die_with_their_connection() {
    let mut h = Harness::new();
    let c = FiveTuple {
        transport: Transport::Tcp,
        ..client(1000)
    };
    let nonce = h.core.cfg.nonces.issue(h.clock.now().unix, true, &c.remote);
    h.send(
        &c,
        &build(
            method::ALLOCATE,
            CLASS_REQUEST,
            vec![udp()],
            Some(("alice", "pw", &nonce)),
        ),
    );
    assert_eq!(h.core.allocation_count(), 1);
    h.core.on_client_closed(h.clock.now(), &c, &mut h.io);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.io.closed.len(), 1);
}

#[test]
fn garbage_is_dropped_and_counted() {
    let mut h = Harness::new();
    let c = client(1000);
    for bytes in [
        &[][..],
        &[0xFF; 30],
        &[0x00, 0x01, 0x00, 0x08],
        &[0x40, 0x00, 0xFF, 0xFF, 1],
    ] {
        h.send(&c, bytes);
    }
    assert!(h.io.to_client.is_empty());
    assert_eq!(h.core.stats.dropped[DropReason::Malformed as usize], 4);
}

#[test]
fn draining_refuses_new_allocations() {
    let mut h = Harness::new();
    h.core.set_refuse_allocations(true);
    assert_eq!(
        error_code(&h.request(&client(1), method::ALLOCATE, vec![udp()])),
        508
    );
    let mut cfg = core_config();
    let alt: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    cfg.alternate_server = Some(alt);
    h.core.set_config(Arc::new(cfg));
    let r = h.request(&client(1), method::ALLOCATE, vec![udp()]);
    assert_eq!(error_code(&r), 300);
    let mut a = stun::addr::MappedAddress::default();
    a.get_from_as(&r, stun::attributes::ATTR_ALTERNATE_SERVER)
        .unwrap();
    assert_eq!(SocketAddr::new(a.ip, a.port), alt);
}

mod offload;
mod peers;
mod props;
mod sessions;
mod stun_only;

#[test]
fn summed_stats_keep_every_transport() {
    use crate::core::Stats;
    let mut one = Stats::default();
    for t in Transport::ALL {
        let i = t.index();
        one.allocations[i][1] = 1 + i as u64;
        one.allocations_created[i] = 1;
        one.binding_requests[i] = 1;
        one.relayed(true, t, 10);
        one.relayed(false, t, 20);
    }
    let mut total = Stats::default();
    total.add(&one);
    total.add(&one);
    for t in Transport::ALL {
        let i = t.index();
        assert_eq!(total.allocations[i][1], 2 * (1 + i as u64), "{t:?}");
        assert_eq!(total.allocations_created[i], 2, "{t:?}");
        assert_eq!(total.binding_requests[i], 2, "{t:?}");
        assert_eq!(total.relayed_packets[0][i], 2, "{t:?}");
        assert_eq!(total.relayed_bytes[1][i], 40, "{t:?}");
    }
}
