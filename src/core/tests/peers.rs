//! Peers of an allocation: permissions installed and expiring, refused
//! atomically; channel binding and its rebinding rules; Send indications;
//! retransmitted requests answered from the cache.

use super::*;

#[test]
fn create_permission_installs_every_peer_and_they_expire() {
    let (mut h, c, id) = Harness::new().allocated();
    let m = h.request(
        &c,
        method::CREATE_PERMISSION,
        vec![peer_attr(PEER_A), peer_attr(PEER_B)],
    );
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    for peer in [PEER_A, PEER_B] {
        let data = h.peer_datagram(id, peer, b"hi").expect("relayed");
        let d = decode(&data);
        assert_eq!(
            d.typ,
            crate::request::message_type(method::DATA, CLASS_INDICATION)
        );
    }
    assert!(h.peer_datagram(id, "9.9.9.9:1", b"x").is_none());
    assert_eq!(h.core.stats.dropped[DropReason::NoPermission as usize], 1);
    h.clock.advance(300);
    assert!(h.peer_datagram(id, PEER_A, b"late").is_none());
}

#[test]
fn create_permission_refuses_denied_and_mismatched_peers_atomically() {
    let (mut h, c, id) = Harness::new().allocated();
    let r = h.request(
        &c,
        method::CREATE_PERMISSION,
        vec![peer_attr(PEER_A), peer_attr("127.0.0.1:1")],
    );
    assert_eq!(error_code(&r), 403);
    assert!(
        h.peer_datagram(id, PEER_A, b"x").is_none(),
        "nothing installed"
    );
    let r = h.request(
        &c,
        method::CREATE_PERMISSION,
        vec![peer_attr("[2606:4700::1]:1")],
    );
    assert_eq!(error_code(&r), 443);
    assert_eq!(
        error_code(&h.request(&c, method::CREATE_PERMISSION, vec![])),
        400
    );
    // Own relay address inside the relay range: relay-to-relay is allowed.
    let r = h.request(
        &c,
        method::CREATE_PERMISSION,
        vec![peer_attr("203.0.113.5:50002")],
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    // The permission limit (4) holds.
    let peers = ["2.2.2.2:1", "3.3.3.3:1", "4.4.4.4:1", "5.5.5.5:1"];
    let r = h.request(
        &c,
        method::CREATE_PERMISSION,
        peers.iter().map(|p| peer_attr(p)).collect(),
    );
    assert_eq!(error_code(&r), 508);
}

#[test]
fn channel_bind_follows_the_rebinding_rules() {
    let (mut h, c, id) = Harness::new().allocated();
    for bad in [0x3FFF, 0x5000, 0xFFFF] {
        assert_eq!(error_code(&h.bind(&c, bad, PEER_A)), 400);
    }
    assert_eq!(
        error_code(&h.request(&c, method::CHANNEL_BIND, vec![channel(0x4000)])),
        400
    );
    let ok = h.bind(&c, 0x4000, PEER_A);
    assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE);
    // Refreshing the same binding is fine; binding either side elsewhere is not.
    let ok = h.bind(&c, 0x4000, PEER_A);
    assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(error_code(&h.bind(&c, 0x4000, PEER_B)), 400);
    assert_eq!(error_code(&h.bind(&c, 0x4001, PEER_A)), 400);
    assert_eq!(error_code(&h.bind(&c, 0x4002, "10.0.0.1:1")), 403);

    // ChannelData both ways.
    h.send(&c, &[0x40, 0x00, 0x00, 0x03, b'a', b'b', b'c', 0]);
    let (to, peer, bytes) = h.io.to_peer.last().unwrap().clone();
    assert_eq!(
        (to, peer, bytes.as_slice()),
        (id, PEER_A.parse().unwrap(), &b"abc"[..])
    );
    let back = h.peer_datagram(id, PEER_A, b"xyz").unwrap();
    assert_eq!(back, vec![0x40, 0x00, 0x00, 0x03, b'x', b'y', b'z']);

    // Unbound channels drop; the binding expires after 600 s, but its number
    // and peer stay reserved for 300 s more.
    h.request(
        &c,
        method::REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(3600)))],
    );
    h.send(&c, &[0x40, 0x09, 0x00, 0x01, b'a', 0, 0, 0]);
    assert_eq!(h.core.stats.dropped[DropReason::NoChannel as usize], 1);
    h.clock.advance(600);
    h.tick();
    let sent = h.io.to_peer.len();
    h.send(&c, &[0x40, 0x00, 0x00, 0x01, b'a', 0, 0, 0]);
    assert_eq!(h.io.to_peer.len(), sent);
    assert_eq!(error_code(&h.bind(&c, 0x4000, PEER_B)), 400);
    h.clock.advance(300);
    h.tick();
    let ok = h.bind(&c, 0x4000, PEER_B);
    assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE);
}

#[test]
fn legacy_channel_numbers_are_opt_in() {
    let mut cfg = core_config();
    cfg.limits.legacy_channel_numbers = true;
    let mut h = Harness::with(cfg);
    let c = client(1000);
    h.allocate(&c);
    let ok = h.bind(&c, 0x7A22, PEER_A);
    assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(error_code(&h.bind(&c, 0x8000, PEER_B)), 400);
}

#[test]
fn send_indications_need_a_permission_and_get_no_answer() {
    let (mut h, c, _) = Harness::new().allocated();
    let answers = h.io.to_client.len();
    let send = |peer: &str| {
        build(
            method::SEND,
            CLASS_INDICATION,
            vec![
                peer_attr(peer),
                Box::new(turn::proto::data::Data(b"payload".to_vec())),
            ],
            None,
        )
    };
    h.send(&c, &send(PEER_A));
    assert!(h.io.to_peer.is_empty());
    h.request(&c, method::CREATE_PERMISSION, vec![peer_attr(PEER_A)]);
    let answers = answers + 1;
    h.send(&c, &send(PEER_A));
    assert_eq!(h.io.to_peer.last().unwrap().2, b"payload");
    assert_eq!(h.io.to_client.len(), answers);
}

#[test]
fn other_requests_retransmitted_get_the_cached_answer() {
    let (mut h, c, _) = Harness::new().allocated();
    let raw = h.signed(
        &c,
        method::CREATE_PERMISSION,
        vec![peer_attr(PEER_A)],
        "alice",
        "pw",
    );
    h.send(&c, &raw);
    let first = h.io.to_client.last().unwrap().1.clone();
    h.clock.advance(700); // even with the nonce stale by now
    h.send(&c, &raw);
    assert_ne!(
        h.io.to_client.last().unwrap().1,
        first,
        "cache lasts 40 s only"
    );
    let raw = h.signed(
        &c,
        method::CREATE_PERMISSION,
        vec![peer_attr(PEER_A)],
        "alice",
        "pw",
    );
    h.send(&c, &raw);
    let first = h.io.to_client.last().unwrap().1.clone();
    h.clock.advance(10);
    h.send(&c, &raw);
    assert_eq!(h.io.to_client.last().unwrap().1, first);
}
