//! TLS handshake limits: a flood of half-open TLS connections from many
//! addresses is bounded by the handshake caps and timeout, new clients are
//! served meanwhile, and every flood connection and the memory it held are
//! gone afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use socket2::{Domain, Socket, Type};

/// The first bytes of a ClientHello record, never finished.
const HALF_HELLO: [u8; 6] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

/// A TCP connection to `server` from `ip`, which sends `HALF_HELLO`.
fn half_open(server: SocketAddr, ip: IpAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    s.connect_timeout(&server.into(), TIMEOUT).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(&HALF_HELLO).unwrap();
    s
}

/// Let this process hold `n` more descriptors (the flood's both ends).
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(lim.rlim_cur.max(n));
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Heap bytes in use in this process (tern and the test's clients); RSS
/// would not show memory coming back, as the allocator keeps freed pages.
fn heap() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.uordblks
}

/// 2,000 half-open TLS connections to `server`, 100 from each of 20
/// loopback addresses.
fn flood(server: SocketAddr) -> Vec<TcpStream> {
    (0..2000)
        .map(|i| {
            let from = Ipv4Addr::new(127, 0, 1, 1 + (i % 20) as u8);
            half_open(server, IpAddr::V4(from))
        })
        .collect()
}

/// TLS handshakes that failed for `why`, on metrics page `p`.
fn failures(p: &str, why: &str) -> f64 {
    metric(
        p,
        &format!("tern_tls_handshake_failures_total{{reason=\"{why}\"}}"),
    )
}

/// Every connection of `flood` is closed by the server (EOF or a reset).
fn all_let_go(flood: Vec<TcpStream>) {
    for mut f in flood {
        f.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(f.read(&mut buf), Ok(0) | Err(_)));
    }
}

#[test]
fn a_half_open_tls_flood_is_bounded_and_new_clients_are_served() {
    raise_fd_limit(8192);
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "ec").unwrap();
    // The default caps (1,000 handshakes, 20 per IP), a short timeout.
    let extra = "handshake-timeout-seconds = 3\n";
    let s = TestServer::start_with(&tls_config(&leaf, extra));
    let server = s.tls[0];
    let before = heap();
    // 100 connections from each of 20 loopback addresses (the default
    // per-IP TCP limit): 20 per IP at a time get to handshake, 400 in
    // all, below the total cap; the rest are closed at once.
    let flood = flood(server);
    let page = || s.http_get("/metrics").1;
    // However slowly tern gets through its accept queue, no more than 20
    // per IP (400) are ever in a handshake, and the rest are refused.
    let in_progress = || s.board.tls.in_progress();
    let mut most = 0;
    assert!(
        wait_until(Duration::from_secs(15), || {
            most = most.max(in_progress());
            let p = page();
            failures(&p, "limit") + failures(&p, "timeout") + in_progress() as f64 == 2000.0
        }),
        "{}",
        page()
    );
    assert!(most > 0 && most <= 400, "{most} handshakes at once");
    let peak = heap();
    assert!(failures(&page(), "limit") >= 1000.0, "{}", page());
    // A client from another address is served meanwhile.
    let tls = tls_client_config(&pki.ca);
    let mut c = RawClient::tls(server, tls, "alice", "wonderland");
    let relayed = allocate(&mut c, none);
    assert!(relayed.ip().is_loopback());
    // Past the handshake timeout every flood connection is closed by tern.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let p = page();
            failures(&p, "limit") + failures(&p, "timeout") == 2000.0 && in_progress() == 0
        }),
        "{}",
        page()
    );
    all_let_go(flood);
    let p = page();
    assert_eq!(metric(&p, "tern_tls_handshakes_total"), 1.0, "{p}");
    assert!(
        wait_until(TIMEOUT, || metric(&page(), "tern_tcp_connections") == 1.0),
        "{}",
        page()
    );
    // Memory returns to where it was: what is left is the one client's
    // connection and allocation (about 0.3 MB), not the flood's (several
    // MB at its height).
    let after = heap();
    assert!(
        after < before + (1 << 20) && peak > after + (1 << 20),
        "heap in use: {before} before, {peak} during, {after} after the flood"
    );
    // The client still relays after the flood.
    let m = c.request(tern::wire::method::REFRESH, none);
    assert_eq!(m.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "{m}");
}
