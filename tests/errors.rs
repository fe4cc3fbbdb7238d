//! Error responses of a real tern on loopback port 0, over UDP and TCP
//! (400, 401, 403, 420, 437, 438, 440–443, 486, 508), and Allocate
//! retransmissions answered alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use stun::attributes::{AttrType, RawAttribute};
use stun::message::{CLASS_SUCCESS_RESPONSE, Setter};
use tern::wire::method;
use turn::proto::channum::ChannelNumber;
use turn::proto::reqfamily::{REQUESTED_FAMILY_IPV6, RequestedAddressFamily};
use turn::proto::reqtrans::RequestedTransport;

/// The authentication errors of RFC 8489 and RFC 8656 over the clients
/// `c` makes (user, password): 401 with REALM and NONCE, no larger than
/// twice the request; 401 for a wrong password; 438 for a nonce not
/// tern's; 437 without an allocation. Returns alice's client, which has
/// learned a nonce.
fn auth_errors(c: &mut impl FnMut(&str, &str) -> RawClient) -> RawClient {
    let mut a = c("alice", "wonderland");
    let raw = a.build(method::ALLOCATE, vec![udp_transport()], false);
    let m = a.transact(&raw);
    assert_eq!(error_code(&m), Some(401));
    assert!(m.contains(stun::attributes::ATTR_REALM) && m.contains(stun::attributes::ATTR_NONCE));
    assert!(a.learn_nonce(&m));
    assert!(
        m.raw.len() <= 2 * raw.len(),
        "401 is {} bytes for {}",
        m.raw.len(),
        raw.len()
    );
    // Wrong password: 401, not 400.
    let mut bad = c("alice", "wrong");
    assert_eq!(
        error_code(&bad.request(method::ALLOCATE, || vec![udp_transport()])),
        Some(401)
    );
    // A nonce that is not ours: 438 with a fresh one.
    let mut forged = c("alice", "wonderland");
    forged.nonce = Some("AAAAAAAAAAAAAAAAAAAA".into());
    let raw = forged.build(method::ALLOCATE, vec![udp_transport()], true);
    assert_eq!(error_code(&forged.transact(&raw)), Some(438));
    // No allocation yet: 437.
    assert_eq!(error_code(&a.request(method::REFRESH, Vec::new)), Some(437));
    a
}

/// The Allocate request's errors for client `a` (no allocation yet):
/// 442 for TCP, 420 for an unknown comprehension-required attribute, 440
/// for an unknown family; then, allocated, 441 for another user on its
/// 5-tuple.
fn allocate_errors(a: &mut RawClient) {
    let tcp = || -> Vec<Box<dyn Setter>> {
        vec![Box::new(RequestedTransport {
            protocol: turn::proto::PROTO_TCP,
        })]
    };
    assert_eq!(error_code(&a.request(method::ALLOCATE, tcp)), Some(442));
    let unknown = || -> Vec<Box<dyn Setter>> {
        vec![
            udp_transport(),
            Box::new(RawAttribute {
                typ: AttrType(0x7777),
                length: 0,
                value: vec![],
            }),
        ]
    };
    assert_eq!(error_code(&a.request(method::ALLOCATE, unknown)), Some(420));
    assert_eq!(
        error_code(&a.request(method::ALLOCATE, || vec![
            Box::new(RequestedAddressFamily(7)),
            udp_transport()
        ])),
        Some(440)
    );
    allocate(a, none);
    // Same 5-tuple, other user: 441.
    a.user = "bob".into();
    a.pass = "builder".into();
    assert_eq!(error_code(&a.request(method::REFRESH, Vec::new)), Some(441));
    a.user = "alice".into();
    a.pass = "wonderland".into();
}

/// The errors for peers of allocated client `a`: 400 for a channel
/// number outside 0x4000-0x4FFF, 403 for a denied peer and for the
/// server's own address, 443 for a peer of the other family; then a
/// Refresh with LIFETIME 0 deletes the allocation, and the next is 437.
fn peer_errors(a: &mut RawClient) {
    let p: SocketAddr = "8.8.8.8:9".parse().unwrap();
    assert_eq!(
        error_code(&a.request(method::CHANNEL_BIND, || vec![
            Box::new(ChannelNumber(0x5000)),
            peer(p)
        ])),
        Some(400)
    );
    // No datagram is ever sent to these: the requests are refused.
    let private: SocketAddr = "10.0.0.1:9".parse().unwrap();
    assert_eq!(
        error_code(&a.request(method::CREATE_PERMISSION, || vec![peer(private)])),
        Some(403)
    );
    // The server's own address outside the relay port range.
    let own: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(
        error_code(&a.request(method::CHANNEL_BIND, || vec![
            Box::new(ChannelNumber(0x4000)),
            peer(own)
        ])),
        Some(403)
    );
    let v6: SocketAddr = "[2606:4700::1]:9".parse().unwrap();
    assert_eq!(
        error_code(&a.request(method::CREATE_PERMISSION, || vec![peer(v6)])),
        Some(443)
    );
    delete_allocation(a);
    assert_eq!(error_code(&a.request(method::REFRESH, Vec::new)), Some(437));
}

fn error_codes_over(mut c: impl FnMut(&str, &str) -> RawClient) {
    let mut a = auth_errors(&mut c);
    allocate_errors(&mut a);
    peer_errors(&mut a);
}

#[test]
fn every_error_code_over_udp_and_tcp() {
    let s = TestServer::start("");
    let (u, t) = (s.udp4(), s.tcp4());
    error_codes_over(|user, pass| RawClient::udp(u, user, pass));
    error_codes_over(|user, pass| RawClient::tcp(t, user, pass));
}

#[test]
fn allocate_retransmission_gets_the_same_answer() {
    let s = TestServer::start("");
    for mut c in [
        RawClient::udp(s.udp4(), "alice", "wonderland"),
        RawClient::tcp(s.tcp4(), "alice", "wonderland"),
    ] {
        let probe = c.build(method::ALLOCATE, vec![udp_transport()], false);
        let challenge = c.transact(&probe);
        assert!(c.learn_nonce(&challenge));
        let req = c.build(method::ALLOCATE, vec![udp_transport()], true);
        let first = c.transact(&req);
        assert_eq!(first.typ.class, CLASS_SUCCESS_RESPONSE, "{first}");
        // The very same bytes (same transaction ID) again: the same answer.
        let again = c.transact(&req);
        assert_eq!(again.raw, first.raw);
        // A new transaction on the same 5-tuple is a mismatch.
        let other = c.build(method::ALLOCATE, vec![udp_transport()], true);
        assert_eq!(error_code(&c.transact(&other)), Some(437));
    }
}

#[test]
fn no_relay_port_left_gives_508_and_a_missing_family_440() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = base_config("").replace(
        "address-ipv6 = \"::1\"",
        &format!("address-ipv6 = \"none\"\nmin-port = {port}\nmax-port = {port}"),
    );
    let s = TestServer::start_with(&toml);
    let mut a = RawClient::udp(s.udp4(), "alice", "wonderland");
    allocate(&mut a, none);
    let mut b = RawClient::udp(s.udp4(), "alice", "wonderland");
    assert_eq!(
        error_code(&b.request(method::ALLOCATE, || vec![udp_transport()])),
        Some(508)
    );
    let v6 = || -> Vec<Box<dyn Setter>> { vec![udp_transport(), Box::new(REQUESTED_FAMILY_IPV6)] };
    assert_eq!(error_code(&b.request(method::ALLOCATE, v6)), Some(440));
}

/// The quotas are the server's, not a worker's: with two workers, a
/// user's second allocation (over UDP or TCP, on either worker) and any
/// allocation over the server-wide limit get 486, counted by reason; one
/// deleted gives its place back.
#[test]
fn quotas_give_486_per_user_and_server_wide_across_workers() {
    let s = TestServer::start("[limits]\nmax-allocations = 2\nmax-allocations-per-user = 1\n");
    let refused =
        |c: &mut RawClient| error_code(&c.request(method::ALLOCATE, || vec![udp_transport()]));
    let mut alice = RawClient::udp(s.udp4(), "alice", "wonderland");
    allocate(&mut alice, none);
    // Eight more tries from new sockets: the kernel's SO_REUSEPORT hash
    // puts some on the other worker (all on one: odds 1 in 256).
    for i in 0..8 {
        let mut again = match i % 2 {
            0 => RawClient::udp(s.udp4(), "alice", "wonderland"),
            _ => RawClient::tcp(s.tcp4(), "alice", "wonderland"),
        };
        assert_eq!(refused(&mut again), Some(486), "alice's second");
    }
    let mut bob = RawClient::tcp(s.tcp4(), "bob", "builder");
    allocate(&mut bob, none);
    // carol (a REST credential) has no allocation, but the server is full.
    let now = tern::cli::unix_now();
    let carol = tern::credentials::mint(SECRET, "carol", 600, now, vec![]);
    let mut carol = RawClient::udp(s.udp4(), &carol.username, &carol.password);
    assert_eq!(refused(&mut carol), Some(486), "over the server's quota");
    // Workers publish their counters each tick.
    let quota = "tern_allocation_rejections_total{reason=\"quota\"}";
    let mut page = String::new();
    assert!(
        wait_until(TIMEOUT, || {
            page = s.http_get("/metrics").1;
            metric(&page, quota) == 9.0
        }),
        "{page}"
    );
    // Deleted, alice's allocation frees both her place and the server's.
    delete_allocation(&mut alice);
    allocate(&mut carol, none);
}
