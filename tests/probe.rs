//! `tern probe` (the binary) against a real tern on loopback: a good
//! server passes every stage over UDP and TCP; each misconfiguration gets
//! its own diagnosis and a non-zero exit. (The relay-port firewall and a
//! wrong external address are probed in network namespaces by
//! `tests/interop/probe.sh`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;

const TERN: &str = env!("CARGO_BIN_EXE_tern");
const ALLOW_LOOPBACK: &str = "[peers]\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n";

/// Run `tern probe URL ARGS…`: (exit success, stdout).
fn probe(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(TERN)
        .args(["probe", url, "--timeout-seconds", "2"])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

fn url(a: SocketAddr, t: &str) -> String {
    format!("turn:{a}?transport={t}")
}

/// The line of `stage`, asserting it says `word` (PASS or FAIL).
fn line<'a>(out: &'a str, word: &str, stage: &str) -> &'a str {
    let prefix = format!("{word} {stage}:");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{out}"))
}

#[test]
fn a_good_server_passes_every_stage_over_udp_and_tcp() {
    let s = TestServer::start(ALLOW_LOOPBACK);
    for (addr, t) in [(s.udp4(), "udp"), (s.tcp4(), "tcp"), (s.udp6(), "udp")] {
        let (ok, out) = probe(&url(addr, t), &["--secret", SECRET, "--user", "probe"]);
        assert!(ok, "{out}");
        for stage in [
            "reachability",
            "binding",
            "challenge",
            "allocate",
            "relayed address",
            "relay inbound",
            "relay outbound",
            "private peer",
            "cleanup",
        ] {
            line(&out, "PASS", &format!("{t} {stage}"));
        }
        assert!(line(&out, "PASS", &format!("{t} private peer")).contains("refused (403)"));
        assert!(out.ends_with("ok: 9 stages, 0 failed\n"), "{out}");
    }
    // Static users too, and JSON.
    let (ok, out) = probe(
        &url(s.udp4(), "udp"),
        &["--user", "alice", "--password", "wonderland", "--json"],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["stages"].as_array().unwrap().len(), 9);
    // The probe deleted its allocations.
    assert!(wait_until(TIMEOUT, || s.allocations() == 0));
}

#[test]
fn credential_and_realm_failures_each_get_their_own_diagnosis() {
    let s = TestServer::start(ALLOW_LOOPBACK);
    let u = url(s.udp4(), "udp");
    let (ok, out) = probe(&u, &["--secret", "not-the-secret"]);
    assert!(!ok);
    assert!(line(&out, "FAIL", "udp allocate").contains("no REST secret equal to --secret"));
    let (ok, out) = probe(&u, &["--user", "1000:alice", "--password", "x"]);
    assert!(!ok);
    assert!(line(&out, "FAIL", "udp allocate").contains("by this machine's clock"));
    let (ok, out) = probe(&u, &["--user", "alice", "--password", "wrong"]);
    assert!(!ok);
    assert!(
        line(&out, "FAIL", "udp allocate").contains("a wrong password, or no [[auth.users]] entry")
    );
    // With the admin listener, the server's own counters name the cause.
    let admin = s.admin.to_string();
    let (_, out) = probe(
        &u,
        &["--user", "alice", "--password", "wrong", "--admin", &admin],
    );
    assert!(
        line(&out, "FAIL", "udp allocate").contains("counted it as \"bad_integrity\""),
        "{out}"
    );
    let (_, out) = probe(&u, &["--user", "zed", "--password", "x", "--admin", &admin]);
    assert!(
        line(&out, "FAIL", "udp allocate").contains("counted it as \"unknown_user\""),
        "{out}"
    );
    // A wrong realm fails its stage, naming both; the rest still passes.
    let (ok, out) = probe(&u, &["--secret", SECRET, "--realm", "turn.example.org"]);
    assert!(!ok);
    let l = line(&out, "FAIL", "udp challenge");
    assert!(
        l.contains("\"tern\"") && l.contains("\"turn.example.org\""),
        "{l}"
    );
    line(&out, "PASS", "udp cleanup");
}

#[test]
fn relay_and_policy_failures_each_get_their_own_diagnosis() {
    // Default peer policy: the probe's own loopback address is denied.
    // (Relay ports above the kernel's ephemeral range, so the probe's
    // peer socket never sits in it and passes as one of tern's relays.)
    let s = TestServer::start_with(&base_config("").replacen(
        "address-ipv6 = \"::1\"\n",
        "address-ipv6 = \"::1\"\nmin-port = 61000\nmax-port = 61100\n",
        1,
    ));
    for t in ["udp", "tcp"] {
        let addr = if t == "udp" { s.udp4() } else { s.tcp4() };
        let (ok, out) = probe(&url(addr, t), &["--secret", SECRET]);
        assert!(!ok);
        let l = line(&out, "FAIL", &format!("{t} relay inbound"));
        assert!(
            l.contains("from the server's own host") && l.contains("127.0.0.1"),
            "{l}"
        );
    }
    // An --expect-ip the relay does not carry.
    let (ok, out) = probe(
        &url(s.tcp4(), "tcp"),
        &["--secret", SECRET, "--expect-ip", "198.51.100.7"],
    );
    assert!(!ok);
    assert!(
        line(&out, "FAIL", "tcp relayed address")
            .contains("set [relay] external-ipv4 (or external-ipv6) = \"198.51.100.7\"")
    );
}

#[test]
fn turns_is_probed_with_its_certificate_verified() {
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "ec").unwrap();
    let s = TestServer::start_with(&tls_config(&leaf, ALLOW_LOOPBACK));
    let u = format!("turns:localhost:{}?transport=tcp", s.tls[0].port());
    let ca = pki.ca.display().to_string();
    let (ok, out) = probe(&u, &["--secret", SECRET, "--ca-file", &ca]);
    assert!(ok, "{out}");
    line(&out, "PASS", "tls relay inbound");
    line(&out, "PASS", "tls relay outbound");
    assert!(out.ends_with("ok: 9 stages, 0 failed\n"), "{out}");
    // Without the private CA the certificate does not verify.
    let (ok, out) = probe(&u, &["--secret", SECRET]);
    assert!(!ok);
    assert!(
        line(&out, "FAIL", "tls reachability").contains("not signed by a CA this machine trusts"),
        "{out}"
    );
}

#[test]
fn unreachable_and_stun_only_servers_are_told_apart() {
    // Nothing listens: a freed port, over UDP and TCP.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, out) = probe(&url(free, "udp"), &["--secret", "x"]);
    assert!(!ok);
    assert!(line(&out, "FAIL", "udp reachability").contains("ICMP port unreachable"));
    let (_, out) = probe(&url(free, "tcp"), &["--secret", "x"]);
    assert!(line(&out, "FAIL", "tcp reachability").contains("TCP reset"));
    // A STUN-only server answers Binding and refuses the Allocate.
    let s = TestServer::start_with(&format!("stun-only = true\n{}", base_config("")));
    let (ok, out) = probe(&url(s.udp4(), "udp"), &["--secret", SECRET]);
    assert!(!ok);
    line(&out, "PASS", "udp binding");
    assert!(line(&out, "FAIL", "udp challenge").contains("stun-only = true"));
    // A trusted PROXY-protocol source without a header is closed.
    let s = TestServer::start_with(&base_config("").replacen(
        "[listen]\n",
        "[listen]\nproxy-protocol-from = [\"127.0.0.1/32\"]\n",
        1,
    ));
    let (_, out) = probe(&url(s.tcp4(), "tcp"), &["--secret", SECRET]);
    assert!(line(&out, "FAIL", "tcp reachability").contains("proxy-protocol-from"));
}
