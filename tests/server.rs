//! Integration tests: a real tern on loopback port 0, driven by
//! `turn::client::Client` and by raw STUN messages over UDP and TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use common::*;
use stun::attributes::{AttrType, RawAttribute};
use stun::message::{CLASS_INDICATION, CLASS_SUCCESS_RESPONSE, Getter, Setter};
use stun::xoraddr::XorMappedAddress;
use tern::wire::method;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;

const ALLOW_LOOPBACK: &str = "[peers]\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n";

fn peer_socket(v6: bool) -> UdpSocket {
    let s = UdpSocket::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn binding(c: &mut RawClient) -> SocketAddr {
    let raw = c.build(method::BINDING, vec![], false);
    let m = c.transact(&raw);
    let mut x = XorMappedAddress::default();
    x.get_from(&m).unwrap();
    SocketAddr::new(x.ip, x.port)
}

#[test]
fn binding_reflects_the_client_over_udp_and_tcp_on_both_families() {
    let s = TestServer::start("");
    for mut c in [
        RawClient::udp(s.udp4(), "", ""),
        RawClient::udp(s.udp6(), "", ""),
        RawClient::tcp(s.tcp4(), "", ""),
        RawClient::tcp(s.tcp6(), "", ""),
    ] {
        assert_eq!(binding(&mut c), c.local_addr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_crate_client_relays_to_a_peer() {
    use webrtc_util::conn::Conn;
    let s = TestServer::start(ALLOW_LOOPBACK);
    let conn = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let cfg = turn::client::ClientConfig {
        stun_serv_addr: s.udp4().to_string(),
        turn_serv_addr: s.udp4().to_string(),
        username: "alice".into(),
        password: "wonderland".into(),
        realm: REALM.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    };
    let client = turn::client::Client::new(cfg).await.unwrap();
    client.listen().await.unwrap();
    let relay = client.allocate().await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    assert_eq!(
        relay_addr.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );

    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 1500];
    for i in 0..20u8 {
        let msg = vec![i; 100 + usize::from(i)];
        relay.send_to(&msg, peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(TIMEOUT, peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buf[..n], from), (&msg[..], relay_addr));
        peer.send_to(&buf[..n], relay_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(TIMEOUT, relay.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buf[..n], from), (&msg[..], peer_addr));
    }
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

/// Permission, Send/Data indications and channels, over one transport.
fn relay_round_trips(c: &mut RawClient, v6: bool) {
    let relayed = allocate(c, family(v6));
    assert_eq!(relayed.is_ipv6(), v6);
    let p = peer_socket(v6);
    let paddr = p.local_addr().unwrap();
    let m = c.request(method::CREATE_PERMISSION, || vec![peer(paddr)]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");

    // Send indication -> peer; peer -> Data indication.
    let mut send = stun::message::Message::new();
    send.build(&[
        Box::new(stun::agent::TransactionId::new()),
        Box::new(message_type(method::SEND, CLASS_INDICATION)),
        peer(paddr),
        Box::new(Data(b"via send".to_vec())),
    ])
    .unwrap();
    c.send_raw(&send.raw);
    let mut buf = [0u8; 2048];
    let (n, from) = p.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"via send"[..], relayed));
    p.send_to(b"via data", relayed).unwrap();
    let d = decode(&c.recv_raw().unwrap());
    assert_eq!(d.typ, message_type(method::DATA, CLASS_INDICATION));
    let mut data = Data::default();
    data.get_from(&d).unwrap();
    assert_eq!(data.0, b"via data");

    // Channel both ways.
    let m = c.request(method::CHANNEL_BIND, || {
        vec![Box::new(ChannelNumber(0x4001)), peer(paddr)]
    });
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    c.send_raw(&[
        0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
    ]);
    let (n, _) = p.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    p.send_to(b"world!", relayed).unwrap();
    let frame = c.recv_raw().unwrap();
    assert_eq!(
        &frame[..10],
        &[0x40, 0x01, 0x00, 0x06, b'w', b'o', b'r', b'l', b'd', b'!']
    );

    // A peer without permission (another IP) is not relayed; a second port
    // on a permitted IP is, as a Data indication (permissions are per IP).
    if !v6 {
        let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
        stranger.send_to(b"nope", relayed).unwrap();
    }
    let same_ip = peer_socket(v6);
    same_ip.send_to(b"same ip", relayed).unwrap();
    let d = decode(&c.recv_raw().unwrap());
    data.get_from(&d).unwrap();
    assert_eq!(data.0, b"same ip");
    p.send_to(b"after", relayed).unwrap();
    let frame = c.recv_raw().unwrap();
    assert_eq!(&frame[4..9], b"after");
}

#[test]
fn relaying_works_over_udp_and_tcp_for_ipv4_and_ipv6() {
    let s = TestServer::start(ALLOW_LOOPBACK);
    relay_round_trips(&mut RawClient::udp(s.udp4(), "alice", "wonderland"), false);
    relay_round_trips(&mut RawClient::tcp(s.tcp4(), "alice", "wonderland"), false);
    relay_round_trips(&mut RawClient::udp(s.udp6(), "bob", "builder"), true);
    relay_round_trips(&mut RawClient::tcp(s.tcp6(), "bob", "builder"), true);
}

#[test]
fn relaying_works_over_tls_as_over_tcp() {
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "ec").unwrap();
    let s = TestServer::start_with(&tls_config(&leaf, ALLOW_LOOPBACK));
    let tls = tls_client_config(&pki.ca);
    let mut c = RawClient::tls(s.tls[0], Arc::clone(&tls), "alice", "wonderland");
    relay_round_trips(&mut c, false);
    let mut page = String::new();
    let tls_packets = "tern_relayed_packets_total{direction=\"peer_to_client\",path=\"userspace\",transport=\"tls\"}";
    assert!(
        wait_until(TIMEOUT, || {
            page = s.http_get("/metrics").1;
            metric(&page, tls_packets) >= 3.0
                && metric(&page, "tern_allocations{family=\"ipv4\",transport=\"tls\"}") == 1.0
        }),
        "{page}"
    );
    assert_eq!(metric(&page, "tern_tls_handshakes_total"), 1.0, "{page}");
    // The allocation ends with the connection.
    drop(c);
    assert!(wait_until(TIMEOUT, || s.allocations() == 0));
}

#[test]
fn relaying_works_over_tls_on_ipv6_with_both_relay_families() {
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "rsa").unwrap();
    let toml = tls_config(&leaf, ALLOW_LOOPBACK).replace(
        "tls = [\"127.0.0.1:0\"]",
        "tls = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let s = TestServer::start_with(&toml);
    assert!(s.tls[1].is_ipv6());
    let tls = tls_client_config(&pki.ca);
    for v6 in [true, false] {
        let mut c = RawClient::tls(s.tls[1], Arc::clone(&tls), "alice", "wonderland");
        assert_eq!(
            c.local_addr().ip(),
            "::1".parse::<std::net::IpAddr>().unwrap()
        );
        relay_round_trips(&mut c, v6);
    }
    let created = "tern_allocations_created_total{transport=\"tls\"}";
    assert!(wait_until(TIMEOUT, || metric(
        &s.http_get("/metrics").1,
        created
    ) == 2.0));
}

/// Whether this process may attach BPF sk_lookup programs (as root).
fn can_steer() -> bool {
    tern::io::sklookup::Steering::attach("127.0.0.1".parse().unwrap(), 1, 1).is_ok()
}

/// A server allowing loopback peers with `relay.steering = mode`.
fn with_steering(mode: &str) -> TestServer {
    let toml = base_config(ALLOW_LOOPBACK).replacen(
        "[relay]\n",
        &format!("[relay]\nsteering = \"{mode}\"\n"),
        1,
    );
    TestServer::start_with(&toml)
}

#[test]
fn relaying_works_with_relay_steering_on_and_off() {
    let steerable = can_steer();
    for mode in ["off", "auto"] {
        let s = with_steering(mode);
        let page = s.http_get("/metrics").1;
        let want = f64::from(u8::from(mode == "auto" && steerable));
        for family in ["ipv4", "ipv6"] {
            let name = format!("tern_relay_steering{{family=\"{family}\"}}");
            assert_eq!(metric(&page, &name), want, "{mode}: {page}");
        }
        relay_round_trips(&mut RawClient::udp(s.udp4(), "alice", "wonderland"), false);
        relay_round_trips(&mut RawClient::tcp(s.tcp4(), "alice", "wonderland"), false);
        relay_round_trips(&mut RawClient::udp(s.udp6(), "bob", "builder"), true);
        // Peers sent 5 datagrams to each IPv4 relay (one from a stranger)
        // and 4 to the IPv6 one; counted once a second.
        let steered = "tern_relay_steered_packets_total";
        let mut page = String::new();
        assert!(
            wait_until(TIMEOUT, || {
                page = s.http_get("/metrics").1;
                metric(&page, steered) == 14.0 * want
            }),
            "{mode}: {page}"
        );
    }
}

#[test]
#[ignore = "needs CAP_BPF and CAP_NET_ADMIN (as root, scripts/test runs it)"]
fn a_closed_steered_relay_gives_its_port_back() {
    assert!(
        can_steer(),
        "this process cannot attach BPF sk_lookup programs"
    );
    let s = with_steering("on");
    for v6 in [false, true] {
        let server = if v6 { s.udp6() } else { s.udp4() };
        let mut c = RawClient::udp(server, "alice", "wonderland");
        let relayed = allocate(&mut c, family(v6));
        delete_allocation(&mut c);
        // The port is free again, and what is sent to it reaches whoever
        // binds it next, not tern.
        let mut mine = None;
        assert!(wait_until(TIMEOUT, || {
            mine = UdpSocket::bind(relayed).ok();
            mine.is_some()
        }));
        let mine = mine.unwrap();
        mine.set_read_timeout(Some(TIMEOUT)).unwrap();
        let p = peer_socket(v6);
        p.send_to(b"mine", relayed).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = mine.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"mine"[..], p.local_addr().unwrap()));
    }
}

/// Relay-to-relay datagrams handed over in-process, by path.
fn handoffs(s: &TestServer, path: &str) -> f64 {
    let name = format!("tern_relay_to_relay_packets_total{{path=\"{path}\"}}");
    metric(&s.http_get("/metrics").1, &name)
}

/// Clients `a` and `b` of one tern talk through their relays: the
/// receiving allocation's permission decides, and the source is the
/// sender's relay address, on every in-process path. With `check_drop`,
/// first that a datagram sent before the receiver's permission is dropped
/// (and counted, which the test waits for: a permission is checked on
/// arrival).
fn relay_pair(
    s: &TestServer,
    a: &mut RawClient,
    b: &mut RawClient,
    family: fn() -> Vec<Box<dyn Setter>>,
    check_drop: bool,
) {
    const NO_PERMISSION: &str = "tern_dropped_packets_total{reason=\"no_permission\"}";
    let (ra, rb) = (allocate(a, family), allocate(b, family));
    let m = a.request(method::CHANNEL_BIND, || {
        vec![Box::new(ChannelNumber(0x4000)), peer(rb)]
    });
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    if check_drop {
        let dropped = || metric(&s.http_get("/metrics").1, NO_PERMISSION);
        let before = dropped();
        a.send_raw(&[0x40, 0x00, 0x00, 0x04, b'e', b'a', b'r', b'l']);
        assert!(wait_until(TIMEOUT, || dropped() > before));
    }
    let m = b.request(method::CREATE_PERMISSION, || vec![peer(ra)]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    a.send_raw(&[0x40, 0x00, 0x00, 0x04, b'h', b'e', b'r', b'e']);
    let d = decode(&b.recv_raw().unwrap());
    assert_eq!(d.typ, message_type(method::DATA, CLASS_INDICATION));
    let (mut from, mut data) = (PeerAddress::default(), Data::default());
    from.get_from(&d).unwrap();
    data.get_from(&d).unwrap();
    assert_eq!(
        (SocketAddr::new(from.ip, from.port), &data.0[..]),
        (ra, &b"here"[..])
    );
    // And back over B's channel to A's relay.
    let m = b.request(method::CHANNEL_BIND, || {
        vec![Box::new(ChannelNumber(0x4001)), peer(ra)]
    });
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    b.send_raw(&[0x40, 0x01, 0x00, 0x04, b'b', b'a', b'c', b'k']);
    let frame = a.recv_raw().unwrap();
    assert_eq!(
        &frame[..8],
        &[0x40, 0x00, 0x00, 0x04, b'b', b'a', b'c', b'k']
    );
}

/// `rounds` pairs of clients (`b` on TCP with `b_tcp`; IPv6 clients and
/// relays with `v6`) exchange datagrams through their relays on a tern
/// with `workers` workers.
fn relay_to_relay(workers: usize, rounds: usize, b_tcp: bool, v6: bool) -> TestServer {
    let toml = base_config("").replace("workers = 2", &format!("workers = {workers}"));
    let s = TestServer::start_with(&toml);
    let (udp, tcp) = if v6 {
        (s.udp6(), s.tcp6())
    } else {
        (s.udp4(), s.tcp4())
    };
    for round in 0..rounds {
        let mut a = RawClient::udp(udp, "alice", "wonderland");
        let mut b = if b_tcp {
            RawClient::tcp(tcp, "bob", "builder")
        } else {
            RawClient::udp(udp, "bob", "builder")
        };
        relay_pair(&s, &mut a, &mut b, family(v6), round == 0);
    }
    s
}

#[test]
fn relay_to_relay_on_one_worker_is_handed_over_in_process() {
    let s = relay_to_relay(1, 3, false, false);
    // 'here' and 'back' per pair, and the first pair's 'earl'.
    assert!(wait_until(TIMEOUT, || handoffs(&s, "same_worker") >= 7.0));
    assert_eq!(handoffs(&s, "other_worker"), 0.0);
}

/// Clients land on workers by the kernel's SO_REUSEPORT hash of their
/// address, so of 16 pairs some are split across the two workers (all 16
/// on one side: odds 1 in 32,768). Those datagrams go through the queue
/// to the owning worker, which delivers them into its own allocation and
/// sends them from its own listener socket; a TCP client's too.
#[test]
fn relay_to_relay_across_workers_goes_through_the_owners_queue() {
    for (v6, b_tcp) in [(false, false), (true, false), (false, true)] {
        let s = relay_to_relay(2, 16, b_tcp, v6);
        // (Each worker publishes its counters once a second.)
        assert!(
            wait_until(TIMEOUT, || {
                handoffs(&s, "other_worker") > 0.0 && handoffs(&s, "same_worker") > 0.0
            }),
            "v6: {v6}, tcp: {b_tcp}"
        );
    }
}

/// Many pairs exchange datagrams both ways at once, unpaced, so the two
/// workers queue to each other at the same time: nothing is lost or stuck,
/// and every datagram arrives framed for the receiving channel (order and
/// pacing: tests/order.rs).
#[test]
fn relay_to_relay_both_ways_at_once_across_workers_delivers_everything() {
    const PAIRS: usize = 16;
    const EACH: u32 = 250;
    let s = TestServer::start("");
    let addr = s.udp4();
    let threads: Vec<_> = (0..PAIRS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut a = RawClient::udp(addr, "alice", "wonderland");
                let mut b = RawClient::udp(addr, "bob", "builder");
                let (ra, rb) = (allocate(&mut a, none), allocate(&mut b, none));
                for (c, to) in [(&mut a, rb), (&mut b, ra)] {
                    let m = c.request(method::CHANNEL_BIND, || {
                        vec![Box::new(ChannelNumber(0x4000)), peer(to)]
                    });
                    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
                }
                for i in 0..EACH {
                    let mut frame = vec![0x40, 0x00, 0x00, 0x04];
                    frame.extend_from_slice(&i.to_be_bytes());
                    a.send_raw(&frame);
                    b.send_raw(&frame);
                }
                for c in [&mut a, &mut b] {
                    let mut seen = std::collections::HashSet::new();
                    while seen.len() < EACH as usize {
                        let f = c.recv_raw().expect("a datagram went missing");
                        assert_eq!(&f[..4], &[0x40, 0x00, 0x00, 0x04]);
                        seen.insert(u32::from_be_bytes(f[4..8].try_into().unwrap()));
                    }
                    assert!(seen.iter().all(|&i| i < EACH));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every datagram was handed over in-process, some through the other
    // worker's queue (all 16 pairs on one worker: odds 1 in 32,768).
    let total = || {
        ["same_worker", "other_worker"]
            .iter()
            .map(|p| handoffs(&s, p))
            .sum::<f64>()
    };
    assert!(wait_until(TIMEOUT, || total() >= (2 * PAIRS * EACH as usize) as f64));
    assert!(handoffs(&s, "other_worker") > 0.0);
}

#[test]
fn rest_api_credentials_allocate_and_expired_ones_do_not() {
    let s = TestServer::start("");
    let now = tern::cli::unix_now();
    let good = tern::credentials::mint(SECRET, "carol", 600, now, vec![]);
    let mut c = RawClient::udp(s.udp4(), &good.username, &good.password);
    allocate(&mut c, none);
    let old = tern::credentials::mint(SECRET, "carol", 0, now - 10, vec![]);
    let mut c = RawClient::udp(s.udp4(), &old.username, &old.password);
    let m = c.request(method::ALLOCATE, || vec![udp_transport()]);
    assert_eq!(error_code(&m), Some(401));
    let bare = tern::credentials::mint(SECRET, "", 600, now, vec![]);
    assert!(!bare.username.contains(':'));
    allocate(
        &mut RawClient::tcp(s.tcp4(), &bare.username, &bare.password),
        none,
    );
}

#[test]
fn tcp_framing_handles_split_and_coalesced_messages() {
    let s = TestServer::start("");
    let mut c = RawClient::tcp(s.tcp4(), "", "");
    let one = c.build(method::BINDING, vec![], false);
    let two = c.build(method::BINDING, vec![], false);
    let mut both = one.clone();
    both.extend_from_slice(&two);
    c.send_raw(&both);
    let a = c.recv_raw().unwrap();
    let b = c.recv_raw().unwrap();
    assert_eq!((&a[8..20], &b[8..20]), (&one[8..20], &two[8..20]));
    let three = c.build(method::BINDING, vec![], false);
    for byte in &three {
        c.send_raw(std::slice::from_ref(byte));
    }
    assert_eq!(&c.recv_raw().unwrap()[8..20], &three[8..20]);
    // Garbage closes the connection.
    c.send_raw(&[0xFF; 8]);
    assert!(c.recv_raw().is_none());
}

#[test]
fn a_tcp_allocation_is_deleted_when_its_connection_closes() {
    let s = TestServer::start("");
    {
        let mut c = RawClient::tcp(s.tcp4(), "alice", "wonderland");
        allocate(&mut c, none);
        assert!(wait_until(TIMEOUT, || s.allocations() == 1));
    }
    assert!(wait_until(TIMEOUT, || s.allocations() == 0));
}

fn even_port(reserve: bool) -> Box<dyn Setter> {
    Box::new(RawAttribute {
        typ: AttrType(0x0018),
        length: 1,
        value: vec![if reserve { 0x80 } else { 0 }],
    })
}

#[test]
fn even_port_reserves_the_next_port_for_a_reservation_token() {
    let s = TestServer::start("");
    let mut a = RawClient::udp(s.udp4(), "alice", "wonderland");
    let m = a.request(method::ALLOCATE, || vec![udp_transport(), even_port(true)]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    let mut r = RelayedAddress::default();
    r.get_from(&m).unwrap();
    assert_eq!(r.port % 2, 0);
    let mut token = turn::proto::rsrvtoken::ReservationToken::default();
    token.get_from(&m).unwrap();
    assert_eq!(token.0.len(), 8);

    let mut b = RawClient::udp(s.udp4(), "bob", "builder");
    let t = token.0.clone();
    let m = b.request(method::ALLOCATE, || {
        vec![
            udp_transport(),
            Box::new(turn::proto::rsrvtoken::ReservationToken(t.clone())),
        ]
    });
    let mut r2 = RelayedAddress::default();
    r2.get_from(&m).unwrap();
    assert_eq!(r2.port, r.port + 1);
    // The token is spent.
    let mut c = RawClient::udp(s.udp4(), "bob", "builder");
    let t = token.0.clone();
    let m = c.request(method::ALLOCATE, || {
        vec![
            udp_transport(),
            Box::new(turn::proto::rsrvtoken::ReservationToken(t.clone())),
        ]
    });
    assert_eq!(error_code(&m), Some(508));
}

#[test]
fn the_external_address_is_advertised_and_relay_to_it_is_allowed() {
    let toml = base_config("").replace(
        "address-ipv6 = \"::1\"",
        "address-ipv6 = \"::1\"\nexternal-ipv4 = \"203.0.113.10\"",
    );
    let s = TestServer::start_with(&toml);
    let mut a = RawClient::udp(s.udp4(), "alice", "wonderland");
    let relayed = allocate(&mut a, none);
    assert_eq!(
        relayed.ip(),
        "203.0.113.10".parse::<std::net::IpAddr>().unwrap()
    );
    // Another client's relay address (even in a denied range) is a valid
    // peer: relay-to-relay works. No datagram is sent by this request.
    let other: SocketAddr = "203.0.113.10:50000".parse().unwrap();
    let m = a.request(method::CHANNEL_BIND, || {
        vec![Box::new(ChannelNumber(0x4000)), peer(other)]
    });
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
}
