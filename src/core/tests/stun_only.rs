//! stun-only: Binding is answered; every TURN request, signed or not,
//! gets 400 "STUN only" (within the amplification bound) and nothing is
//! allocated.

use super::*;

#[test]
fn binding_only_and_turn_requests_refused_with_a_reason() {
    let mut cfg = core_config();
    cfg.stun_only = true;
    let mut h = Harness::with(cfg);
    let c = client(1000);
    h.send(&c, &build(method::BINDING, CLASS_REQUEST, vec![], None));
    assert_eq!(h.io.last().typ, stun::message::BINDING_SUCCESS);
    // An unsigned Allocate as a browser's first: 400 with the reason.
    h.send(
        &c,
        &build(method::ALLOCATE, CLASS_REQUEST, vec![udp()], None),
    );
    let m = h.io.last();
    assert_eq!(error_code(&m), 400);
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&m).unwrap();
    assert_eq!(e.reason, b"STUN only");
    assert!(h.last_len() <= 2 * h.sent_len);
    // Signed requests of every TURN method, too; nothing is allocated.
    for (method, attrs) in [
        (method::ALLOCATE, vec![udp()]),
        (method::REFRESH, vec![]),
        (method::CREATE_PERMISSION, vec![peer_attr(PEER_A)]),
    ] {
        let m = h.request(&c, method, attrs);
        assert_eq!(error_code(&m), 400, "{m}");
    }
    assert_eq!(h.core.allocation_count(), 0);
    assert!(h.io.opened.is_empty());
}
