//! The credential endpoint (`[api]`) against a real tern: minted
//! `iceServers` allocate over UDP and TCP; keys (401, reload); bodies
//! (400, ttl capped); CORS (preflight, allowed and refused origins); the
//! REST draft's GET; the per-key rate; HTTPS with the `[tls]` pair; every
//! outcome counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::*;
use serde_json::Value;
use tern::server::Control;

const KEY: &str = "0123456789abcdef-app-key-1";
const OTHER_KEY: &str = "0123456789abcdef-app-key-2";
const ORIGIN: &str = "http://app.localhost:8080";

fn api_config(extra: &str) -> String {
    base_config(&format!(
        "[api]\nlisten = \"127.0.0.1:0\"\nkeys = [\"{KEY}\"]\nallowed-origins = [\"{ORIGIN}\"]\n\
         max-ttl-seconds = 7200\n{extra}"
    ))
}

/// An HTTP answer: status, header block and body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

fn exchange(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Answer {
    // A server that refuses the request (plain HTTP on its HTTPS port)
    // may close before it is all written: that is an answer of nothing.
    let _ = write_http_request(&mut s, method, path, headers, body);
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after the answer.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (status, head, body) = parse_http_response(&text);
    Answer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    exchange(s, method, path, headers, body)
}

fn post(addr: SocketAddr, key: Option<&str>, body: &str) -> Answer {
    let auth = key.map(|k| format!("Authorization: Bearer {k}"));
    let mut h: Vec<&str> = auth.iter().map(String::as_str).collect();
    h.push("Content-Type: application/json");
    request(addr, "POST", "/v1/ice-servers", &h, body)
}

/// `tern_api_requests_total{outcome}` in a metrics page.
fn outcome(page: &str, outcome: &str) -> f64 {
    metric(
        page,
        &format!("tern_api_requests_total{{outcome=\"{outcome}\"}}"),
    )
}

/// The TURN entry (the one with a credential) of an `iceServers` array.
fn turn_entry(v: &Value) -> &Value {
    v["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get("credential").is_some())
        .unwrap()
}

#[test]
fn minted_ice_servers_allocate_over_udp_and_tcp() {
    let s = TestServer::start_with(&api_config(""));
    let api = s.api.unwrap();
    let before = unix_now();
    let a = post(api, Some(KEY), r#"{"user": "alice", "ttl": 600}"#);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(a.header("cache-control").as_deref(), Some("no-store"));
    let v = a.json();
    assert_eq!(v["ttl"], 600);
    let stun = &v["iceServers"][0]["urls"][0];
    assert_eq!(stun, &format!("stun:127.0.0.1:{}", s.udp4().port()));
    let turn = turn_entry(&v);
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    // Every listener port (port 0 gave v4 and v6 different ones).
    let want: Vec<String> = [
        (s.udp4(), "udp"),
        (s.udp6(), "udp"),
        (s.tcp4(), "tcp"),
        (s.tcp6(), "tcp"),
    ]
    .iter()
    .map(|(a, t)| format!("turn:127.0.0.1:{}?transport={t}", a.port()))
    .collect();
    assert_eq!(urls, want);
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    let expiry: u64 = expiry.parse().unwrap();
    assert_eq!(user, "alice");
    assert!((before + 600..=unix_now() + 600).contains(&expiry));
    let expires_at = humantime::parse_rfc3339(v["expiresAt"].as_str().unwrap()).unwrap();
    let at = expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(at, expiry);

    let password = turn["credential"].as_str().unwrap();
    let mut udp = RawClient::udp(s.udp4(), username, password);
    allocate(&mut udp, none);
    let mut tcp = RawClient::tcp(s.tcp4(), username, password);
    allocate(&mut tcp, none);

    // No body: the default lifetime (an hour) and no user part.
    let v = post(api, Some(KEY), "").json();
    assert_eq!(v["ttl"], 3600);
    assert!(!turn_entry(&v)["username"].as_str().unwrap().contains(':'));
    // A longer ask is capped at max-ttl-seconds.
    assert_eq!(
        post(api, Some(KEY), r#"{"ttl": 86400}"#).json()["ttl"],
        7200
    );
    let page = s.http_get("/metrics").1;
    assert_eq!(outcome(&page, "issued"), 3.0);
}

#[test]
fn keys_bodies_and_paths_are_checked_and_counted() {
    let s = TestServer::start_with(&api_config(""));
    let api = s.api.unwrap();
    let a = post(api, None, "{}");
    assert_eq!(a.status, 401);
    assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(post(api, Some(OTHER_KEY), "{}").status, 401);
    assert_eq!(post(api, Some(""), "{}").status, 401);
    for body in [
        "not json",
        r#"{"user": "alice", "ttl": -1}"#,
        r#"{"ttl": 0}"#,
        r#"{"usr": "alice"}"#,
        r#"{"user": "a\nb"}"#,
        "[1, 2]",
    ] {
        let a = post(api, Some(KEY), body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.json()["error"].is_string(), "{body}");
    }
    let big = format!(r#"{{"user": "{}"}}"#, "x".repeat(5000));
    assert_eq!(post(api, Some(KEY), &big).status, 400);
    assert_eq!(request(api, "GET", "/v1/ice-servers", &[], "").status, 405);
    assert_eq!(request(api, "GET", "/metrics", &[], "").status, 404);
    let page = s.http_get("/metrics").1;
    assert_eq!(outcome(&page, "unauthorized"), 3.0);
    assert_eq!(outcome(&page, "bad_request"), 7.0);
    assert_eq!(outcome(&page, "not_found"), 2.0);
    assert_eq!(outcome(&page, "issued"), 0.0);
    // The admin listener does not serve the endpoint.
    assert_eq!(post(s.admin, Some(KEY), "{}").status, 404);
}

#[test]
fn pages_of_allowed_origins_may_call_it() {
    let s = TestServer::start_with(&api_config(""));
    let api = s.api.unwrap();
    let origin = format!("Origin: {ORIGIN}");
    let pre = request(
        api,
        "OPTIONS",
        "/v1/ice-servers",
        &[
            &origin,
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: authorization, content-type",
        ],
        "",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let auth = format!("Authorization: Bearer {KEY}");
    let a = request(api, "POST", "/v1/ice-servers", &[&origin, &auth], "{}");
    assert_eq!(a.status, 201);
    assert_eq!(
        a.header("access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(a.header("vary").as_deref(), Some("Origin"));
    // Even a 401 carries the header, so the page can read why.
    let a = request(api, "POST", "/v1/ice-servers", &[&origin], "{}");
    assert_eq!(
        (a.status, a.header("access-control-allow-origin").is_some()),
        (401, true)
    );
    let page = s.http_get("/metrics").1;
    assert_eq!(outcome(&page, "preflight"), 1.0);
}

#[test]
fn pages_of_other_origins_are_refused_and_every_page_without_allowed_origins() {
    let s = TestServer::start_with(&api_config(""));
    let api = s.api.unwrap();
    let auth = format!("Authorization: Bearer {KEY}");
    for evil in ["Origin: http://evil.localhost", "Origin: null"] {
        let pre = request(
            api,
            "OPTIONS",
            "/v1/ice-servers",
            &[evil, "Access-Control-Request-Method: POST"],
            "",
        );
        assert_eq!(pre.status, 403, "{evil}");
        assert!(pre.header("access-control-allow-origin").is_none());
        let a = request(api, "POST", "/v1/ice-servers", &[evil, &auth], "{}");
        assert_eq!(a.status, 403, "{evil}");
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("allowed-origins")
        );
    }
    let page = s.http_get("/metrics").1;
    assert_eq!(outcome(&page, "preflight"), 0.0);
    assert_eq!(outcome(&page, "origin_refused"), 4.0);

    // Without allowed-origins no browser page may call it.
    let origin = format!("Origin: {ORIGIN}");
    let s = TestServer::start_with(
        &api_config("").replace(&format!("allowed-origins = [\"{ORIGIN}\"]\n"), ""),
    );
    let a = request(
        s.api.unwrap(),
        "POST",
        "/v1/ice-servers",
        &[&origin, &auth],
        "{}",
    );
    assert_eq!(a.status, 403);
}

#[test]
fn the_rest_draft_get_answers_with_a_working_credential() {
    let s = TestServer::start_with(&api_config(""));
    let api = s.api.unwrap();
    let path = format!("/?service=turn&username=bob%40example&ttl=300&key={KEY}");
    let a = request(api, "GET", &path, &[], "");
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["ttl"], 300);
    let username = v["username"].as_str().unwrap();
    assert!(username.ends_with(":bob@example"), "{username}");
    assert_eq!(
        v["uris"][0],
        format!("turn:127.0.0.1:{}?transport=udp", s.udp4().port())
    );
    let mut c = RawClient::udp(s.udp4(), username, v["password"].as_str().unwrap());
    allocate(&mut c, none);
    let bad_key = format!("/?service=turn&username=bob&key={OTHER_KEY}");
    assert_eq!(request(api, "GET", &bad_key, &[], "").status, 401);
    assert_eq!(
        request(api, "GET", "/?service=turn&username=bob", &[], "").status,
        401
    );
    let wrong_service = format!("/?service=stun&key={KEY}");
    assert_eq!(request(api, "GET", &wrong_service, &[], "").status, 400);
    let bad_ttl = format!("/?service=turn&ttl=soon&key={KEY}");
    assert_eq!(request(api, "GET", &bad_ttl, &[], "").status, 400);
}

#[test]
fn each_key_is_rate_limited_and_keys_follow_a_reload() {
    // 10 a minute: a burst of one, then one every 6 s.
    let s = TestServer::start_with(&api_config("requests-per-minute = 10\n"));
    let api = s.api.unwrap();
    assert_eq!(post(api, Some(KEY), "{}").status, 201);
    let a = post(api, Some(KEY), "{}");
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after").as_deref(), Some("6"));
    let page = s.http_get("/metrics").1;
    assert_eq!(outcome(&page, "rate_limited"), 1.0);

    // A reload swaps the keys: the old one is refused, the new one works
    // with a budget of its own.
    let new = api_config("requests-per-minute = 10\n").replace(KEY, OTHER_KEY);
    s.control(Control::Reload(Box::new(
        tern::config::Config::parse(&new, "new.toml").unwrap(),
    )));
    assert!(wait_until(TIMEOUT, || post(api, Some(KEY), "{}").status == 401));
    assert_eq!(post(api, Some(OTHER_KEY), "{}").status, 201);
}

#[test]
fn https_uses_the_tls_certificate_and_lists_turns() {
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "ec").unwrap();
    let toml = tls_config(
        &leaf,
        &format!("[api]\nlisten = \"127.0.0.1:0\"\ntls = true\nkeys = [\"{KEY}\"]\n"),
    );
    let s = TestServer::start_with(&toml);
    let api = s.api.unwrap();
    let mut cfg = (*tls_client_config(&pki.ca)).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect_timeout(&api, TIMEOUT).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let tls = rustls::StreamOwned::new(conn, tcp);
    let auth = format!("Authorization: Bearer {KEY}");
    let a = exchange(tls, "POST", "/v1/ice-servers", &[&auth], "{}");
    assert_eq!(a.status, 201, "{}", a.body);
    let v = a.json();
    let urls = turn_entry(&v)["urls"].to_string();
    assert!(
        urls.contains(&format!(
            "turns:127.0.0.1:{}?transport=tcp",
            s.tls[0].port()
        )),
        "{urls}"
    );
    // Plain HTTP on the HTTPS port gets no answer.
    assert_eq!(
        request(api, "POST", "/v1/ice-servers", &[&auth], "{}").status,
        0
    );
}

fn unix_now() -> u64 {
    tern::unix::now()
}
