//! Abuse resistance against a real tern: floods, per-source limits, and
//! memory that stays flat under unauthenticated load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use stun::message::{Getter, Setter};
use stun::xoraddr::XorMappedAddress;
use tern::core::DropReason;
use tern::wire::method;
use turn::proto::reqtrans::RequestedTransport;

fn binding_ok(server: SocketAddr) -> bool {
    let mut c = RawClient::udp(server, "", "");
    let raw = c.build(method::BINDING, vec![], false);
    let m = c.transact(&raw);
    let mut x = XorMappedAddress::default();
    x.get_from(&m).is_ok() && SocketAddr::new(x.ip, x.port) == c.local_addr()
}

#[test]
fn a_flood_of_malformed_datagrams_does_not_stop_binding_answers() {
    let s = TestServer::start("");
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut junk = [0u8; 64];
    for i in 0..20_000u32 {
        junk[..4].copy_from_slice(&i.to_be_bytes());
        junk[4] = (i % 251) as u8;
        // Vary the first byte so STUN-, ChannelData- and other-looking junk all appear.
        junk[0] = (i % 3) as u8 * 0x40;
        let _ = flood.send_to(&junk[..(i as usize % 64) + 1], s.udp4());
    }
    assert!(binding_ok(s.udp4()));
    assert!(wait_until(TIMEOUT, || s.board.total().core.dropped
        [DropReason::Malformed as usize]
        > 0));
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn unauthenticated_allocates_from_many_ports_leave_memory_flat() {
    let s = TestServer::start("");
    let mut req = Vec::new();
    // Only builds requests (a fresh transaction id each).
    let c = RawClient::udp(s.udp4(), "", "");
    let send_round = |rounds: u32, req: &mut Vec<u8>| {
        for port in 0..rounds {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..10 {
                *req = c.build(
                    method::ALLOCATE,
                    vec![Box::new(RequestedTransport {
                        protocol: turn::proto::PROTO_UDP,
                    }) as Box<dyn Setter>],
                    false,
                );
                let _ = sock.send_to(req, s.udp4());
            }
            let _ = port;
        }
    };
    let handled = |s: &TestServer| {
        let st = s.board.total().core;
        st.auth_failures[0] + st.dropped[DropReason::RateLimited as usize]
    };
    send_round(200, &mut req);
    assert!(wait_until(TIMEOUT, || handled(&s) >= 2_000));
    let before = resident_bytes();
    send_round(2_000, &mut req);
    assert!(
        wait_until(Duration::from_secs(20), || handled(&s) >= 22_000),
        "{}",
        handled(&s)
    );
    let after = resident_bytes();
    assert_eq!(s.allocations(), 0);
    // No per-source state: growth is noise, far below 20,000 of anything.
    assert!(
        after.saturating_sub(before) < 4 << 20,
        "grew {} bytes",
        after - before
    );
    // Most answers to one source IP were rate-limited, and tern still serves.
    assert!(s.board.total().core.dropped[DropReason::RateLimited as usize] > 10_000);
    assert!(wait_until(TIMEOUT, || binding_ok(s.udp4())));
}

#[test]
fn tcp_connections_are_limited_per_source_ip() {
    let s = TestServer::start("[limits]\nmax-tcp-connections-per-ip = 2\n");
    let mut a = RawClient::tcp(s.tcp4(), "", "");
    let mut b = RawClient::tcp(s.tcp4(), "", "");
    let raw = a.build(method::BINDING, vec![], false);
    a.transact(&raw);
    b.transact(&raw);
    // The third is closed at once.
    let mut c = TcpStream::connect(s.tcp4()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    use std::io::{Read, Write};
    let _ = c.write_all(&raw);
    let mut buf = [0u8; 64];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    // Closing one frees its slot.
    drop(a);
    assert!(wait_until(TIMEOUT, || {
        let mut d = RawClient::tcp(s.tcp4(), "", "");
        let raw = d.build(method::BINDING, vec![], false);
        d.send_raw(&raw);
        d.recv_raw().is_some()
    }));
}

#[test]
fn a_tcp_client_that_does_not_read_has_its_backlog_bounded_and_counted() {
    let s = TestServer::start(
        "[peers]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax-bandwidth-bytes-per-second = 1000000000\n",
    );
    // A small receive window, so the kernel holds little for the client.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&s.tcp4().into(), TIMEOUT).unwrap();
    let mut c = RawClient::over_tcp(sock.into(), "alice", "wonderland");
    let relayed = allocate(&mut c, none);
    let p = UdpSocket::bind("127.0.0.1:0").unwrap();
    let m = c.request(method::CREATE_PERMISSION, || {
        vec![peer(p.local_addr().unwrap())]
    });
    assert_eq!(m.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "{m}");
    // The peer sends while the client reads nothing: past 1 MiB waiting
    // for the client, tern drops and counts (bounded: at most 20,000
    // datagrams of 1,200 bytes).
    let backlog = || {
        metric(
            &s.http_get("/metrics").1,
            "tern_dropped_packets_total{reason=\"stream_backlog\"}",
        )
    };
    let payload = [7u8; 1200];
    let mut sent = 0;
    while sent < 20_000 && backlog() == 0.0 {
        for _ in 0..1000 {
            let _ = p.send_to(&payload, relayed);
        }
        sent += 1000;
        // Publishing is once a second; give the counter a moment.
        wait_until(Duration::from_millis(1200), || backlog() > 0.0);
    }
    assert!(backlog() > 0.0, "nothing dropped after {sent} datagrams");
    // The client reads again: the backlog (1 MiB and what the kernel
    // holds) arrives and
    // the connection still serves it.
    let mut read = 0;
    while read < 1 << 20 {
        read += c.recv_raw().expect("the backlog").len();
    }
    let raw = c.build(method::BINDING, vec![], false);
    c.transact(&raw);
}

#[test]
fn an_idle_tcp_connection_is_closed_unless_it_carries_an_allocation() {
    use std::io::Read;
    let s = TestServer::start("[tcp]\nidle-timeout-seconds = 1\n");
    // A client with an allocation, then a connection that sends nothing:
    // the client's last bytes came first, so by the time tern closes the
    // silent one, the client has been idle past the timeout too.
    let mut c = RawClient::tcp(s.tcp4(), "alice", "wonderland");
    allocate(&mut c, none);
    let opened = std::time::Instant::now();
    let mut silent = TcpStream::connect_timeout(&s.tcp4(), TIMEOUT).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = silent.read(&mut buf);
    assert!(
        matches!(closed, Ok(0))
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?} after {:?}",
        opened.elapsed()
    );
    // Not before its timeout (a second), and not long after.
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    // The client's connection was kept for its allocation.
    let m = c.request(method::REFRESH, none);
    assert_eq!(m.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "{m}");
}
