//! Relay-to-relay order: datagrams from one tern client to another arrive
//! in the order sent, with none lost at a paced rate, whether the two
//! allocations live on one worker or on two (forced by choosing clients
//! by the worker that owns their relay), over UDP and TCP clients, IPv4
//! and IPv6, with every pair sending both ways at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use stun::message::CLASS_SUCCESS_RESPONSE;
use tern::wire::method;
use turn::proto::channum::ChannelNumber;

const PAIRS: usize = 16;
const EACH: u32 = 5_000;
/// Datagrams a sender sends per pacing step, and the step: 1,000 per
/// second per direction, 32,000 per second in all. (At twice that, a
/// stall of the whole 2-core CI machine of about 90 ms overflowed tern's
/// 4 MiB listener buffers once: 180 datagrams lost in every pair at the
/// same moment, on one worker as across two. The rate is what a paced
/// test may ask of any machine; the relay's speed is measured in
/// `bench/compare`.)
const BURST: u32 = 5;
const STEP: Duration = Duration::from_millis(5);

/// What one pair is made of.
#[derive(Debug, Clone, Copy)]
struct Kind {
    v6: bool,
    /// B talks to tern over TCP (A always over UDP).
    b_tcp: bool,
    /// A's and B's allocations on different workers.
    across: bool,
}

/// Pair `i`'s kind: every combination of family, B's transport and
/// worker placement, two pairs each, cross-worker pairs first.
fn kind(i: usize) -> Kind {
    Kind {
        across: i < PAIRS / 2,
        b_tcp: i % 2 == 1,
        v6: (i / 2) % 2 == 1,
    }
}

/// Allocate for A, then for B clients until one lands where `kind` asks
/// (same or other worker than A); both bind channel 0x4000 to the other.
fn pair(s: &TestServer, kind: Kind) -> (RawClient, RawClient) {
    let (udp, tcp) = if kind.v6 {
        (s.udp6(), s.tcp6())
    } else {
        (s.udp4(), s.tcp4())
    };
    let mut a = RawClient::udp(udp, "alice", "wonderland");
    let ra = allocate(&mut a, family(kind.v6));
    let wa = s.shared.relay_worker(&ra).expect("A's relay is tern's");
    for _ in 0..64 {
        let mut b = if kind.b_tcp {
            RawClient::tcp(tcp, "bob", "builder")
        } else {
            RawClient::udp(udp, "bob", "builder")
        };
        let rb = allocate(&mut b, family(kind.v6));
        let wb = s.shared.relay_worker(&rb).expect("B's relay is tern's");
        if (wa != wb) != kind.across {
            continue;
        }
        for (c, to) in [(&mut a, rb), (&mut b, ra)] {
            let m = c.request(method::CHANNEL_BIND, || {
                vec![Box::new(ChannelNumber(0x4000)), peer(to)]
            });
            assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
        }
        return (a, b);
    }
    panic!("no client landed as {kind:?} in 64 tries");
}

/// Send `EACH` numbered ChannelData frames, paced.
fn send_numbered(mut c: RawClient) {
    let start = Instant::now();
    for i in 0..EACH {
        if i % BURST == 0 {
            let due = start + STEP * (i / BURST);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                // Pacing, not synchronisation.
                std::thread::sleep(wait);
            }
        }
        let mut frame = vec![0x40, 0x00, 0x00, 0x04];
        frame.extend_from_slice(&i.to_be_bytes());
        c.send_raw(&frame);
    }
}

/// Receive until `EACH` frames came, each the next number; the first
/// out-of-order or missing one fails with what arrived instead.
fn receive_in_order(mut c: RawClient, kind: Kind) {
    for want in 0..EACH {
        let f = c
            .recv_raw()
            .unwrap_or_else(|| panic!("{kind:?}: datagram {want} of {EACH} never arrived"));
        assert_eq!(&f[..4], &[0x40, 0x00, 0x00, 0x04], "{kind:?}");
        let got = u32::from_be_bytes(f[4..8].try_into().unwrap());
        assert_eq!(
            got, want,
            "{kind:?}: datagram {got} arrived in place of {want}"
        );
    }
}

#[test]
fn relay_to_relay_keeps_order_and_loses_nothing_across_and_within_workers() {
    let s = TestServer::start("");
    let pairs: Vec<(Kind, RawClient, RawClient)> = (0..PAIRS)
        .map(|i| {
            let (a, b) = pair(&s, kind(i));
            (kind(i), a, b)
        })
        .collect();
    let mut threads = Vec::new();
    for (kind, a, b) in pairs {
        for (from, to) in [(&a, &b), (&b, &a)] {
            let (tx, rx) = (from.try_clone(), to.try_clone());
            threads.push(std::thread::spawn(move || receive_in_order(rx, kind)));
            threads.push(std::thread::spawn(move || send_numbered(tx)));
        }
        // The originals hold the sockets open until the end.
        std::mem::forget((a, b));
    }
    for t in threads {
        t.join().unwrap();
    }
    // Both paths carried datagrams.
    let page = || s.http_get("/metrics").1;
    let path = |p: &str| {
        let name = format!("tern_relay_to_relay_packets_total{{path=\"{p}\"}}");
        metric(&page(), &name)
    };
    let half = f64::from(EACH) * PAIRS as f64;
    assert!(wait_until(TIMEOUT, || path("other_worker") >= half
        && path("same_worker") >= half));
    assert_eq!(
        metric(
            &page(),
            "tern_dropped_packets_total{reason=\"handoff_queue_full\"}"
        ),
        0.0
    );
}
