//! The admin API against a real tern: off without a token file, 401
//! without or with a wrong token; sessions listed with their user and
//! counters; a disconnected user stops relaying at once and is refused
//! (403) while blocked; tokens and blocks across a reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use stun::message::CLASS_SUCCESS_RESPONSE;
use tern::server::Control;
use tern::wire::method;

const TOKEN: &str = "0123456789abcdef-admin-token";
const ALLOW_LOOPBACK: &str = "[peers]\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n";

/// (status, JSON body) of one API call.
fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    let (code, text) = http(admin, method, path, &headers, body);
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A token file in a directory of its own, removed with it when dropped.
struct TokenFile(tempfile::TempDir);

impl TokenFile {
    fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("tern-admin-")
                .tempdir()
                .unwrap(),
        )
    }

    /// Write `tokens` to the file; a config using it.
    fn config(&self, tokens: &str) -> String {
        let path = self.0.path().join("tokens");
        std::fs::write(&path, tokens).unwrap();
        base_config(&format!(
            "token-file = {:?}\n{ALLOW_LOOPBACK}",
            path.display().to_string()
        ))
    }
}

#[test]
fn without_a_token_file_the_api_is_off_and_with_one_it_needs_the_token() {
    let s = TestServer::start(ALLOW_LOOPBACK);
    let (code, v) = call(s.admin, "GET", "/v1/info", Some(TOKEN), "");
    assert_eq!(code, 404);
    assert!(v["error"].as_str().unwrap().contains("token-file"));
    assert_eq!(s.http_get("/metrics").0, 200);

    let tokens = TokenFile::new();
    let s = TestServer::start_with(&tokens.config(&format!("{TOKEN}\n")));
    assert_eq!(call(s.admin, "GET", "/v1/info", None, "").0, 401);
    assert_eq!(
        call(
            s.admin,
            "GET",
            "/v1/info",
            Some("0123456789abcdef-wrong-token"),
            ""
        )
        .0,
        401
    );
    let (code, v) = call(s.admin, "GET", "/v1/info", Some(TOKEN), "");
    assert_eq!(code, 200);
    assert_eq!(v["workers"], 2);
    assert_eq!(v["listeners"]["udp"][0], s.udp4().to_string());
    assert_eq!(v["relay"]["ipv4"], "127.0.0.1");
    assert_eq!(call(s.admin, "GET", "/v1/nothing", Some(TOKEN), "").0, 404);
    assert_eq!(call(s.admin, "PUT", "/v1/info", Some(TOKEN), "").0, 405);
    // Unauthenticated endpoints stay open.
    assert_eq!(s.http_get("/readyz").0, 200);
}

/// The one session left is `user`'s; closed by its id, it is gone (a
/// second close: 404).
fn close_the_last_session(admin: SocketAddr, user: &str) {
    let (_, v) = call(admin, "GET", "/v1/sessions", Some(TOKEN), "");
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["user"], user);
    let path = format!("/v1/sessions/{}", v[0]["id"].as_str().unwrap());
    assert_eq!(call(admin, "DELETE", &path, Some(TOKEN), "").0, 200);
    assert_eq!(call(admin, "DELETE", &path, Some(TOKEN), "").0, 404);
}

#[test]
fn a_disconnected_user_stops_relaying_at_once_and_is_refused_while_blocked() {
    let tokens = TokenFile::new();
    let s = TestServer::start_with(&tokens.config(&format!("{TOKEN}\n")));
    let mut alice = RawClient::udp(s.udp4(), "alice", "wonderland");
    let relayed = allocate(&mut alice, none);
    let mut bob = RawClient::tcp(s.tcp4(), "bob", "builder");
    allocate(&mut bob, none);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let m = alice.request(method::CREATE_PERMISSION, || {
        vec![common::peer(peer.local_addr().unwrap())]
    });
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    peer.send_to(b"before", relayed).unwrap();
    assert!(alice.recv_raw().is_some(), "relays before");

    let (code, v) = call(s.admin, "GET", "/v1/sessions", Some(TOKEN), "");
    assert_eq!(code, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (_, v) = call(s.admin, "GET", "/v1/sessions?user=alice", Some(TOKEN), "");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["client"], alice.local_addr().to_string());
    assert_eq!(list[0]["relay"], relayed.to_string());
    assert_eq!(list[0]["transport"], "udp");
    assert_eq!(list[0]["permissions"], 1);
    assert_eq!(list[0]["packets_to_client"], 1);
    assert_eq!(list[0]["bytes_to_client"], 6);

    let (code, v) = call(
        s.admin,
        "POST",
        "/v1/users/alice/disconnect",
        Some(TOKEN),
        "{\"block_seconds\": 60}",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["closed"], 1);
    assert!(v["blocked_until"].is_string());
    // Closed when the call returns: the relay is gone.
    assert_eq!(s.shared.relay_worker(&relayed), None);
    let m = alice.request(method::ALLOCATE, || vec![udp_transport()]);
    assert_eq!(error_code(&m), Some(403), "a blocked user's Allocate");
    let (_, v) = call(s.admin, "GET", "/v1/blocks", Some(TOKEN), "");
    assert_eq!(v[0]["user"], "alice");
    // bob carries on; one session left, closed by id.
    close_the_last_session(s.admin, "bob");

    // Blocks survive a reload; unblocked, alice allocates again.
    s.control(Control::Reload(Box::new(
        tern::config::Config::parse(&tokens.config(&format!("{TOKEN}\n")), "r.toml").unwrap(),
    )));
    assert!(wait_until(TIMEOUT, || {
        let (_, v) = call(s.admin, "GET", "/v1/blocks", Some(TOKEN), "");
        v[0]["user"] == "alice"
    }));
    assert_eq!(
        call(s.admin, "DELETE", "/v1/blocks/alice", Some(TOKEN), "").0,
        200
    );
    let mut again = RawClient::udp(s.udp4(), "alice", "wonderland");
    allocate(&mut again, none);
}

#[test]
fn bad_bodies_are_refused_and_tokens_change_on_reload() {
    let tokens = TokenFile::new();
    let s = TestServer::start_with(&tokens.config(&format!("{TOKEN}\n")));
    let post = |body: &str| call(s.admin, "POST", "/v1/users/x/disconnect", Some(TOKEN), body).0;
    assert_eq!(post("{\"block_seconds\": -1}"), 400);
    assert_eq!(post("not json"), 400);
    assert_eq!(post(&" ".repeat(5000)), 413);
    assert_eq!(post(""), 200);
    let new = "fedcba9876543210-new-admin-token";
    s.control(Control::Reload(Box::new(
        tern::config::Config::parse(&tokens.config(&format!("{new}\n")), "r.toml").unwrap(),
    )));
    assert!(wait_until(TIMEOUT, || call(
        s.admin,
        "GET",
        "/v1/info",
        Some(new),
        ""
    )
    .0 == 200));
    assert_eq!(call(s.admin, "GET", "/v1/info", Some(TOKEN), "").0, 401);
}
