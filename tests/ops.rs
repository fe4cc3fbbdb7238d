//! Operations against a real tern: metrics move with traffic, health and
//! readiness, drain, and reload with live allocations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use stun::message::{CLASS_SUCCESS_RESPONSE, Getter, Setter};
use tern::server::Control;
use tern::wire::method;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

const ALLOW_LOOPBACK: &str = "[peers]\nallow = [\"127.0.0.1/32\"]\n";

fn udp() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

/// An allocation with a channel 0x4000 bound to a fresh loopback peer.
struct Session {
    client: RawClient,
    peer: UdpSocket,
    relayed: SocketAddr,
}

impl Session {
    fn open(s: &TestServer, user: &str, pass: &str) -> Self {
        let mut client = RawClient::udp(s.udp4(), user, pass);
        let m = client.request(method::ALLOCATE, || vec![udp()]);
        assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
        let mut r = RelayedAddress::default();
        r.get_from(&m).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(TIMEOUT)).unwrap();
        let p = peer.local_addr().unwrap();
        let m = client.request(method::CHANNEL_BIND, || {
            vec![
                Box::new(ChannelNumber(0x4000)),
                Box::new(PeerAddress {
                    ip: p.ip(),
                    port: p.port(),
                }),
            ]
        });
        assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
        Self {
            client,
            peer,
            relayed: SocketAddr::new(r.ip, r.port),
        }
    }

    /// One ChannelData to the peer and its echo back; true if both arrived.
    fn round_trip(&mut self, payload: &[u8; 4]) -> bool {
        let mut frame = vec![0x40, 0x00, 0x00, 0x04];
        frame.extend_from_slice(payload);
        self.client.send_raw(&frame);
        let mut buf = [0u8; 64];
        self.peer
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let Ok((n, _)) = self.peer.recv_from(&mut buf) else {
            return false;
        };
        if &buf[..n] != payload {
            return false;
        }
        self.peer.send_to(payload, self.relayed).unwrap();
        self.client.recv_raw().is_some_and(|f| f[4..8] == *payload)
    }

    fn delete(&mut self) {
        delete_allocation(&mut self.client);
    }
}

#[test]
fn metrics_health_and_readiness_are_served() {
    let s = TestServer::start(ALLOW_LOOPBACK);
    assert_eq!(s.http_get("/healthz").0, 200);
    assert_eq!(s.http_get("/readyz").0, 200);
    assert_eq!(s.http_get("/nope").0, 404);
    let (code, page) = s.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(page.contains("tern_build_info{version=\""), "{page}");
    assert_eq!(metric(&page, "tern_allocations{"), 0.0);

    let mut session = Session::open(&s, "alice", "wonderland");
    for i in 0..10u8 {
        assert!(session.round_trip(&[i; 4]));
    }
    // Workers publish once a second: poll for the live values.
    let mut page = String::new();
    assert!(
        wait_until(TIMEOUT, || {
            page = s.http_get("/metrics").1;
            metric(&page, "tern_allocations{family=\"ipv4\",transport=\"udp\"}") == 1.0
                && metric(
                    &page,
                    "tern_relayed_bytes_total{direction=\"client_to_peer\",path=\"userspace\",transport=\"udp\"}",
                ) == 40.0
                && metric(
                    &page,
                    "tern_relayed_packets_total{direction=\"peer_to_client\",path=\"userspace\",transport=\"udp\"}",
                ) == 10.0
        }),
        "{page}"
    );
    assert_eq!(metric(&page, "tern_channels "), 1.0);
    assert_eq!(metric(&page, "tern_permissions "), 1.0);
    assert_eq!(
        metric(&page, "tern_allocations_created_total{transport=\"udp\"}"),
        1.0
    );
    assert!(metric(&page, "tern_auth_challenges_total") >= 1.0);
    assert!(metric(&page, "process_resident_memory_bytes") > 0.0);
    assert!(
        !page.contains("alice") && !page.contains("127.0.0.1"),
        "no users or addresses as labels"
    );

    session.delete();
    assert!(
        wait_until(TIMEOUT, || {
            page = s.http_get("/metrics").1;
            metric(&page, "tern_allocations{") == 0.0
                && metric(&page, "tern_allocation_duration_seconds_count") == 1.0
        }),
        "{page}"
    );
}

/// What a drain does, once begun: `/readyz` turns 503, a new Allocate gets
/// 508, the live allocation keeps relaying; then `meanwhile` runs, and the
/// server ends once the live allocation is deleted.
fn assert_drains(s: &TestServer, mut session: Session, meanwhile: impl FnOnce()) {
    assert!(wait_until(TIMEOUT, || s.http_get("/readyz").0 == 503));
    let mut late = RawClient::udp(s.udp4(), "bob", "builder");
    assert_eq!(
        error_code(&late.request(method::ALLOCATE, || vec![udp()])),
        Some(508)
    );
    assert!(session.round_trip(b"live"));
    meanwhile();
    assert!(!s.finished());
    session.delete();
    assert!(wait_until(TIMEOUT, || s.finished()));
}

#[test]
fn drain_refuses_new_allocations_and_waits_for_live_ones() {
    let s = TestServer::start(ALLOW_LOOPBACK);
    let session = Session::open(&s, "alice", "wonderland");
    assert!(wait_until(TIMEOUT, || s.allocations() == 1));
    s.control(Control::Drain);
    assert_drains(&s, session, || {});
}

#[test]
fn the_admin_api_drains_as_sigterm_does() {
    const TOKEN: &str = "0123456789abcdef-drain-token";
    let tokens = std::env::temp_dir().join(format!("tern-ops-drain-{}", std::process::id()));
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let s = TestServer::start(&format!("token-file = {tokens:?}\n{ALLOW_LOOPBACK}"));
    let drain = |token: Option<&str>, method: &str| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (code, body) = http(s.admin, method, "/v1/drain", &headers, "");
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    };
    let session = Session::open(&s, "alice", "wonderland");
    assert!(wait_until(TIMEOUT, || s.allocations() == 1));
    assert_eq!(drain(None, "POST").0, 401);
    assert_eq!(drain(Some(TOKEN), "GET").0, 405);
    assert_eq!(s.http_get("/readyz").0, 200);
    let (code, v) = drain(Some(TOKEN), "POST");
    assert_eq!(
        (code, &v["draining"], &v["allocations"]),
        (202, &true.into(), &1.into())
    );
    // Asking again changes nothing (a second SIGTERM would stop at once).
    assert_drains(&s, session, || {
        assert_eq!(drain(Some(TOKEN), "POST").0, 202);
    });
    let _ = std::fs::remove_file(tokens);
}

#[test]
fn drain_ends_after_its_timeout_and_can_point_at_an_alternate() {
    let s = TestServer::start(&format!(
        "{ALLOW_LOOPBACK}[shutdown]\ndrain-timeout-seconds = 3\nalternate-server = \"192.0.2.7:3478\"\n"
    ));
    let _session = Session::open(&s, "alice", "wonderland");
    s.control(Control::Drain);
    assert!(wait_until(TIMEOUT, || s.http_get("/readyz").0 == 503));
    let mut late = RawClient::udp(s.udp4(), "bob", "builder");
    assert_eq!(
        error_code(&late.request(method::ALLOCATE, || vec![udp()])),
        Some(300)
    );
    assert!(wait_until(TIMEOUT, || s.finished()));
}

#[test]
fn reload_changes_users_and_policy_without_dropping_allocations() {
    // Relay ports outside the ephemeral range, so the loopback peer is never
    // mistaken for another tern relay once loopback is no longer allowed.
    let config = |extra: &str| {
        base_config(extra).replace(
            "address-ipv6 = \"::1\"",
            "address-ipv6 = \"::1\"\nmin-port = 20000\nmax-port = 29999",
        )
    };
    let s = TestServer::start_with(&config(ALLOW_LOOPBACK));
    let mut session = Session::open(&s, "alice", "wonderland");
    assert!(session.round_trip(b"pre!"));

    // alice is removed, carol added; the live allocation survives.
    let toml = config(ALLOW_LOOPBACK).replace(
        "name = \"alice\"\npassword = \"wonderland\"",
        "name = \"carol\"\npassword = \"singer\"",
    );
    s.control(Control::Reload(Box::new(
        tern::config::Config::parse(&toml, "new.toml").unwrap(),
    )));
    assert!(wait_until(TIMEOUT, || {
        let mut c = RawClient::udp(s.udp4(), "carol", "singer");
        c.request(method::ALLOCATE, || vec![udp()]).typ.class == CLASS_SUCCESS_RESPONSE
    }));
    let mut gone = RawClient::udp(s.udp4(), "alice", "wonderland");
    assert_eq!(
        error_code(&gone.request(method::ALLOCATE, || vec![udp()])),
        Some(401)
    );
    assert!(session.round_trip(b"post"));

    // Dropping the loopback allowance applies to the very next packet.
    s.control(Control::Reload(Box::new(
        tern::config::Config::parse(&config(""), "strict.toml").unwrap(),
    )));
    assert!(wait_until(TIMEOUT, || !session.round_trip(b"deny")));
    assert!(
        wait_until(TIMEOUT, || s.board.total().core.dropped[5] > 0),
        "{:?}",
        s.board.total().core
    );
}
