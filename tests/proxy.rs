//! The PROXY protocol on TCP and TLS listeners: a trusted proxy's header
//! names the client for everything; a trusted source without a usable
//! header is refused and counted; other sources are served as usual.
//! The client side writes its headers byte by byte from the
//! specification (the interop suite runs a real HAProxy).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use socket2::{Domain, Socket, Type};
use stun::message::{CLASS_SUCCESS_RESPONSE, Getter};
use stun::xoraddr::XorMappedAddress;
use tern::server::Control;
use tern::wire::method;

/// tern trusts 127.0.0.1 as a proxy; direct clients come from 127.0.0.2.
const TRUST: &str = "proxy-protocol-from = [\"127.0.0.1/32\"]\n";
const PROXY_IP: &str = "127.0.0.1";
const DIRECT_IP: &str = "127.0.0.2";

/// A test CA and certificate, and the base TLS config trusting the
/// proxy, plus `extra`.
fn config(extra: &str) -> (String, tern::testing::Pki) {
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "ec").unwrap();
    let toml = tls_config(&leaf, extra).replacen("[listen]\n", &format!("[listen]\n{TRUST}"), 1);
    (toml, pki)
}

/// A connection to `server` from `ip`.
fn connect_from(server: SocketAddr, ip: &str) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into())
        .unwrap();
    s.connect_timeout(&server.into(), TIMEOUT).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A connection from the proxy that sends `header` in two writes.
fn proxied(server: SocketAddr, header: &[u8]) -> TcpStream {
    let mut s = connect_from(server, PROXY_IP);
    s.set_nodelay(true).unwrap();
    let (a, b) = header.split_at(header.len() / 2);
    s.write_all(a).unwrap();
    s.write_all(b).unwrap();
    s
}

fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    tern::testing::proxy_v1(client, server)
}

/// A v2 header with an ALPN TLV, as HAProxy may add.
fn v2(command: u8, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    tern::testing::proxy_v2(command, client, server, &[(0x01, b"stun.turn")])
}

fn mapped(m: &stun::message::Message) -> SocketAddr {
    let mut x = XorMappedAddress::default();
    x.get_from(m).unwrap();
    SocketAddr::new(x.ip, x.port)
}

fn binding(c: &mut RawClient) -> SocketAddr {
    let raw = c.build(method::BINDING, vec![], false);
    mapped(&c.transact(&raw))
}

/// Whether the server closed `s` without answering a Binding request.
fn refused(mut s: TcpStream) -> bool {
    let raw = tern::request::request(method::BINDING, vec![], None).unwrap();
    // The write may fail if the server has already closed.
    let _ = s.write_all(&raw);
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

fn refusals(s: &TestServer, why: &str) -> f64 {
    metric(
        &s.http_get("/metrics").1,
        &format!("tern_proxy_protocol_refused_total{{reason=\"{why}\"}}"),
    )
}

#[test]
fn a_trusted_proxys_header_names_the_client_over_tcp_and_tls() {
    let (toml, pki) = config("");
    let s = TestServer::start_with(&toml);
    let (tcp, tls) = (s.tcp4(), s.tls[0]);
    let ca = tls_client_config(&pki.ca);
    let v4: SocketAddr = "203.0.113.7:4444".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:5555".parse().unwrap();
    let cases = [
        (v1(v4, tcp), v4),
        (v2(1, v4, tcp), v4),
        (v1(v6, "[2001:db8::1]:3478".parse().unwrap()), v6),
        (v2(1, v6, "[2001:db8::1]:3478".parse().unwrap()), v6),
    ];
    for (header, client) in &cases {
        let mut c = RawClient::over_tcp(proxied(tcp, header), "alice", "wonderland");
        assert_eq!(binding(&mut c), *client, "over tcp");
        let mut c = RawClient::over_tls(proxied(tls, header), ca.clone(), "", "");
        assert_eq!(binding(&mut c), *client, "over tls");
    }
    assert_eq!(
        metric(
            &s.http_get("/metrics").1,
            "tern_proxy_protocol_headers_total"
        ),
        8.0
    );
    // An allocation through the proxy: its answer maps the client too.
    let mut c = RawClient::over_tcp(proxied(tcp, &v2(1, v4, tcp)), "alice", "wonderland");
    let m = c.request(method::ALLOCATE, || vec![udp_transport()]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(mapped(&m), v4);
    // The proxy's own connection (LOCAL, e.g. a health check) keeps the
    // proxy's address.
    let mut c = RawClient::over_tcp(proxied(tcp, &v2(0, v4, tcp)), "", "");
    let own = c.local_addr();
    assert_eq!(binding(&mut c), own);
}

#[test]
fn a_trusted_source_without_a_usable_header_is_refused_and_counted() {
    let (toml, pki) = config("");
    let s = TestServer::start_with(&toml);
    let tcp = s.tcp4();
    // Straight STUN from the proxy's address.
    assert!(refused(connect_from(tcp, PROXY_IP)));
    assert!(wait_until(TIMEOUT, || refusals(&s, "missing") == 1.0));
    // A TLS ClientHello from the proxy's address, on the TLS listener.
    let ca = tls_client_config(&pki.ca);
    let s2 = connect_from(s.tls[0], PROXY_IP);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(ca, name).unwrap(), s2);
    assert!(tls.conn.complete_io(&mut tls.sock).is_err());
    assert!(wait_until(TIMEOUT, || refusals(&s, "missing") == 2.0));
    // A header that does not parse.
    assert!(refused(proxied(tcp, b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n")));
    assert!(wait_until(TIMEOUT, || refusals(&s, "invalid") == 1.0));
    // Half a header, then nothing: closed after the header timeout.
    let mut half = connect_from(tcp, PROXY_IP);
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    half.write_all(b"PROXY TCP4 203.0.113.7").unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(half.read(&mut buf), Ok(0) | Err(_)));
    assert!(wait_until(TIMEOUT, || refusals(&s, "timeout") == 1.0));
    // Clients from elsewhere are served as usual, with their own address.
    let mut c = RawClient::over_tcp(connect_from(tcp, DIRECT_IP), "", "");
    let own = c.local_addr();
    assert_eq!(binding(&mut c), own);
}

#[test]
fn per_ip_limits_count_the_client_in_the_header_not_the_proxy() {
    let (toml, _pki) = config("[limits]\nmax-tcp-connections-per-ip = 2\n");
    let s = TestServer::start_with(&toml);
    let tcp = s.tcp4();
    let a: SocketAddr = "203.0.113.7:1000".parse().unwrap();
    let b: SocketAddr = "203.0.113.8:1000".parse().unwrap();
    let mut held = Vec::new();
    for port in [1000, 1001] {
        let client = SocketAddr::new(a.ip(), port);
        let mut c = RawClient::over_tcp(proxied(tcp, &v1(client, tcp)), "", "");
        assert_eq!(binding(&mut c), client);
        held.push(c);
    }
    // A third from the same client is over its limit; another client is
    // not, though all come from the one proxy.
    assert!(refused(proxied(
        tcp,
        &v1(SocketAddr::new(a.ip(), 1002), tcp)
    )));
    let mut c = RawClient::over_tcp(proxied(tcp, &v2(1, b, tcp)), "", "");
    assert_eq!(binding(&mut c), b);
}

#[test]
fn reload_changes_which_sources_are_trusted() {
    let (toml, _pki) = config("");
    let s = TestServer::start_with(&toml);
    let tcp = s.tcp4();
    assert!(refused(connect_from(tcp, PROXY_IP)));
    let toml = toml.replace(TRUST, "proxy-protocol-from = []\n");
    s.control(Control::Reload(Box::new(
        tern::config::Config::parse(&toml, "reload.toml").unwrap(),
    )));
    // Once applied, the former proxy's address is served directly.
    assert!(wait_until(TIMEOUT, || {
        let mut c = RawClient::over_tcp(connect_from(tcp, PROXY_IP), "", "");
        let raw = c.build(method::BINDING, vec![], false);
        c.send_raw(&raw);
        c.recv_raw().is_some()
    }));
}
