//! Limits and property tests of the core: rate limits, bandwidth, and
//! arbitrary packet sequences from several sources under a fake clock.

use proptest::prelude::*;

use super::*;

#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut cfg = core_config();
    cfg.limits.unauthenticated_rate = 5;
    let mut h = Harness::with(cfg);
    let c = client(1000);
    let req = build(method::ALLOCATE, CLASS_REQUEST, vec![udp()], None);
    for _ in 0..50 {
        h.send(&c, &req);
    }
    assert_eq!(h.io.to_client.len(), 10, "the burst is twice the rate");
    assert_eq!(h.core.stats.dropped[DropReason::RateLimited as usize], 40);
    // Another source is unaffected; time refills the bucket.
    let other = FiveTuple {
        remote: "203.0.113.77:9".parse().unwrap(),
        ..c
    };
    h.send(&other, &req);
    assert_eq!(h.io.to_client.len(), 11);
    h.clock.advance(1);
    for _ in 0..50 {
        h.send(&c, &req);
    }
    assert_eq!(h.io.to_client.len(), 16);
    // Authenticated traffic is not limited by it.
    let before = h.io.to_client.len();
    for p in 0..3 {
        h.allocate(&client(2000 + p));
    }
    assert_eq!(h.io.to_client.len(), before + 3);
}

#[test]
fn unauthenticated_answers_stay_within_twice_the_request() {
    let mut h = Harness::new();
    let c = client(1000);
    // A browser's first Allocate: header and REQUESTED-TRANSPORT, 28 bytes.
    let first = build(method::ALLOCATE, CLASS_REQUEST, vec![udp()], None);
    assert_eq!(first.len(), 28);
    h.send(&c, &first);
    assert_eq!(h.last_len(), 56, "header, ERROR-CODE, REALM, NONCE");
    let m = h.io.last();
    assert_eq!(error_code(&m), 401);
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&m).unwrap();
    assert!(e.reason.is_empty(), "no room for the reason phrase");
    // The 16-character nonce it carries authenticates the next request.
    let nonce = TextAttribute::get_from_as(&m, ATTR_NONCE).unwrap().text;
    assert_eq!(nonce.len(), 16);
    let raw = build(
        method::ALLOCATE,
        CLASS_REQUEST,
        vec![udp()],
        Some(("alice", "pw", &nonce)),
    );
    h.send(&c, &raw);
    assert_eq!(h.io.last().typ.class, CLASS_SUCCESS_RESPONSE);
    // A larger request leaves room for the reason phrase.
    let big = build(
        method::ALLOCATE,
        CLASS_REQUEST,
        vec![udp(), Box::new(Lifetime(Duration::from_secs(600)))],
        Some(("alice", "wrong", &nonce)),
    );
    h.send(&c, &big);
    let m = h.io.last();
    e.get_from(&m).unwrap();
    assert_eq!((e.code.0, e.reason.as_slice()), (401, &b"Unauthorized"[..]));
    // A TURN request too short for any challenge within 2x is dropped.
    let answered = h.io.to_client.len();
    h.send(&c, &build(method::REFRESH, CLASS_REQUEST, vec![], None));
    assert_eq!(h.io.to_client.len(), answered);
    assert_eq!(h.core.stats.dropped[DropReason::Undersized as usize], 1);
    // Binding: IPv4 fits in 2x with room for nothing else; IPv6's
    // XOR-MAPPED-ADDRESS alone makes 44 bytes, the one answer over 2x.
    let bare = build(method::BINDING, CLASS_REQUEST, vec![], None);
    h.send(&c, &bare);
    assert_eq!(h.last_len(), 32);
    let v6 = FiveTuple {
        remote: "[2001:db8::7]:1000".parse().unwrap(),
        local: "[2001:db8::1]:3478".parse().unwrap(),
        ..c
    };
    h.send(&v6, &bare);
    assert_eq!(h.last_len(), 44);
}

#[test]
fn bandwidth_is_limited_per_allocation_and_direction() {
    let mut cfg = core_config();
    cfg.limits.max_bandwidth = 1000;
    let (mut h, c, id) = Harness::with(cfg).allocated();
    h.bind(&c, 0x4000, PEER_A);
    let mut frame = vec![0x40, 0x00, 0x02, 0x58];
    frame.extend_from_slice(&[7u8; 600]);
    h.send(&c, &frame);
    h.send(&c, &frame);
    assert_eq!(h.io.to_peer.len(), 1);
    assert_eq!(h.core.stats.dropped[DropReason::Bandwidth as usize], 1);
    // The other direction has its own bucket.
    assert!(h.peer_datagram(id, PEER_A, &[1u8; 900]).is_some());
    assert!(h.peer_datagram(id, PEER_A, &[1u8; 900]).is_none());
    h.clock.advance(1);
    h.send(&c, &frame);
    assert_eq!(h.io.to_peer.len(), 2);
}

/// One step of a generated session.
#[derive(Debug, Clone)]
enum Step {
    Garbage(Vec<u8>),
    Binding,
    Allocate {
        signed: bool,
        lifetime: u32,
    },
    Permission(Vec<[u8; 4]>),
    Bind(u16, [u8; 4]),
    ChannelData(u16, Vec<u8>),
    Send([u8; 4], Vec<u8>),
    Peer([u8; 4], Vec<u8>),
    /// A valid request with one byte flipped.
    Mutated(usize, u8),
    Advance(u16),
    Close,
}

fn step() -> impl Strategy<Value = Step> {
    let ip = prop_oneof![
        Just([8, 8, 8, 8]),
        Just([1, 1, 1, 1]),
        Just([127, 0, 0, 1]),
        any::<[u8; 4]>()
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120).prop_map(Step::Garbage),
        Just(Step::Binding),
        (
            any::<bool>(),
            prop_oneof![Just(0u32), Just(600), any::<u32>()]
        )
            .prop_map(|(signed, lifetime)| Step::Allocate { signed, lifetime }),
        proptest::collection::vec(ip.clone(), 0..6).prop_map(Step::Permission),
        (
            prop_oneof![Just(0x4000u16), Just(0x4001), any::<u16>()],
            ip.clone()
        )
            .prop_map(|(n, p)| Step::Bind(n, p)),
        (
            prop_oneof![Just(0x4000u16), any::<u16>()],
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(n, d)| Step::ChannelData(n, d)),
        (ip.clone(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(p, d)| Step::Send(p, d)),
        (ip, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(p, d)| Step::Peer(p, d)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Step::Mutated(i, b)),
        (0u16..700).prop_map(Step::Advance),
        Just(Step::Close),
    ]
}

fn peer_of(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 5000))
}

impl Harness {
    fn apply(&mut self, from: &FiveTuple, step: &Step) {
        match step {
            Step::Garbage(bytes) => self.send(from, bytes),
            Step::Binding => self.send(from, &build(method::BINDING, CLASS_REQUEST, vec![], None)),
            Step::Allocate { signed, lifetime } => {
                let attrs: Vec<Box<dyn Setter>> = vec![
                    udp(),
                    Box::new(Lifetime(Duration::from_secs(u64::from(*lifetime)))),
                ];
                let raw = if *signed {
                    self.signed(from, method::ALLOCATE, attrs, "alice", "pw")
                } else {
                    build(method::ALLOCATE, CLASS_REQUEST, attrs, None)
                };
                self.send(from, &raw);
            }
            Step::Permission(ips) => {
                let attrs = ips
                    .iter()
                    .map(|ip| peer_attr(&peer_of(*ip).to_string()))
                    .collect();
                let raw = self.signed(from, method::CREATE_PERMISSION, attrs, "alice", "pw");
                self.send(from, &raw);
            }
            Step::Bind(n, ip) => {
                let attrs = vec![channel(*n), peer_attr(&peer_of(*ip).to_string())];
                let raw = self.signed(from, method::CHANNEL_BIND, attrs, "alice", "pw");
                self.send(from, &raw);
            }
            Step::ChannelData(n, data) => {
                let mut frame = n.to_be_bytes().to_vec();
                frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
                frame.extend_from_slice(data);
                self.send(from, &frame);
            }
            Step::Send(ip, data) => {
                let attrs = vec![
                    peer_attr(&peer_of(*ip).to_string()),
                    Box::new(turn::proto::data::Data(data.clone())) as Box<dyn Setter>,
                ];
                self.send(from, &build(method::SEND, CLASS_INDICATION, attrs, None));
            }
            Step::Peer(ip, data) => {
                if let Some(id) = self.core.allocation_of(from).map(|a| a.id) {
                    let _ = self.peer_datagram(id, &peer_of(*ip).to_string(), data);
                }
            }
            Step::Mutated(i, b) => {
                let mut raw = self.signed(from, method::REFRESH, vec![], "alice", "pw");
                let at = i % raw.len();
                raw[at] ^= b | 1;
                self.send(from, &raw);
            }
            Step::Advance(secs) => {
                self.clock.advance(u64::from(*secs));
                self.tick();
            }
            Step::Close => {
                let now = self.clock.now();
                self.core.on_client_closed(now, from, &mut self.io);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever arrives: no panic, every table within its limit, and an
    /// answer to a request that did not authenticate stays small.
    #[test]
    fn arbitrary_traffic_keeps_the_invariants(steps in proptest::collection::vec((0usize..4, step()), 1..60)) {
        let mut cfg = core_config();
        cfg.limits.max_allocations = 3;
        let mut h = Harness::with(cfg);
        let sources: Vec<FiveTuple> = (0..4).map(|i| client(1000 + i)).collect();
        for (src, step) in &steps {
            let answered = h.io.to_client.len();
            h.apply(&sources[*src], step);
            prop_assert!(h.core.allocation_count() <= 3);
            for s in &sources {
                if let Some(a) = h.core.allocation_of(s) {
                    prop_assert!(a.permission_count() <= 4);
                    prop_assert!(a.live_channels(h.clock.now().instant) <= 4);
                }
            }
            if matches!(step, Step::Garbage(_) | Step::Allocate { signed: false, .. } | Step::Binding) {
                for (_, answer) in &h.io.to_client[answered..] {
                    prop_assert!(
                        answer.len() <= 2 * h.sent_len,
                        "{} bytes for {}", answer.len(), h.sent_len
                    );
                }
            }
            if let Step::Garbage(_) = step {
                prop_assert!(h.io.to_client.len() <= answered + 1);
            }
        }
        // Everything closes cleanly and gives its quota back.
        let now = h.clock.now();
        h.core.close_all(now, &mut h.io);
        prop_assert_eq!(h.core.quotas.total(), 0);
    }

    /// The wire parser never panics and accepts only what fits.
    #[test]
    fn the_wire_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(v) = StunView::parse(&bytes) {
            prop_assert_eq!(v.bytes().len(), bytes.len());
            for (_, value) in v.attrs() {
                prop_assert!(value.len() <= bytes.len());
            }
            let _ = v.integrity();
        }
        let _ = wire::parse_channel_data(&bytes);
        let _ = wire::stream_frame_len(&bytes);
    }
}

#[test]
fn the_server_wide_allocation_limit_gives_486_and_channels_their_limit() {
    let mut cfg = core_config();
    cfg.limits.max_allocations = 2;
    cfg.limits.max_allocations_per_user = 10;
    let mut h = Harness::with(cfg);
    h.allocate(&client(1));
    h.allocate(&client(2));
    let r = h.request(&client(3), method::ALLOCATE, vec![udp()]);
    assert_eq!(error_code(&r), 486);
    // Channels per allocation: 4 here; the fifth new one is refused.
    let c = client(1);
    for (i, peer) in ["2.2.2.2:1", "3.3.3.3:1", "4.4.4.4:1", "5.5.5.5:1"]
        .iter()
        .enumerate()
    {
        let m = h.bind(&c, 0x4000 + i as u16, peer);
        assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
    }
    let r = h.bind(&c, 0x4010, "6.6.6.6:1");
    assert_eq!(error_code(&r), 508);
}
