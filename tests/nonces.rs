//! Fleet-safe nonces: two terns with the same `[auth] nonce-secrets`
//! accept each other's nonces, so a client whose flow moves to the other
//! node keeps going; with their own random keys it gets 438.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use stun::message::CLASS_SUCCESS_RESPONSE;
use tern::wire::method;

fn node(nonce: &str) -> TestServer {
    TestServer::start_with(&base_config("").replacen("[auth]\n", &format!("[auth]\n{nonce}"), 1))
}

/// A nonce from `a`, then a signed Allocate with it to `b`, from the same
/// socket: the error code, if any.
fn moved(a: &TestServer, b: &TestServer) -> Option<u16> {
    let mut c = RawClient::udp(a.udp4(), "alice", "wonderland");
    let raw = c.build(method::ALLOCATE, vec![udp_transport()], false);
    let challenge = c.transact(&raw);
    assert_eq!(error_code(&challenge), Some(401));
    assert!(c.learn_nonce(&challenge));
    c.server = b.udp4();
    let raw = c.build(method::ALLOCATE, vec![udp_transport()], true);
    let m = c.transact(&raw);
    (m.typ.class != CLASS_SUCCESS_RESPONSE).then(|| error_code(&m).unwrap_or(0))
}

#[test]
fn a_shared_nonce_secret_lets_a_flow_move_between_nodes() {
    let shared = "nonce-secrets = [\"fleet-nonce-secret-0123456789\"]\n";
    let (a, b) = (node(shared), node(shared));
    assert_eq!(moved(&a, &b), None, "the other node accepts the nonce");
    // Rotation: a node that lists a new secret first still accepts the old.
    let rotated = node(
        "nonce-secrets = [\"fleet-nonce-secret-new-98765\", \"fleet-nonce-secret-0123456789\"]\n",
    );
    assert_eq!(moved(&a, &rotated), None);
    // Baseline: per-process random keys.
    let (c, d) = (node(""), node(""));
    assert_eq!(moved(&c, &d), Some(438));
}
