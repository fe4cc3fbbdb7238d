//! Micro-benchmarks of the per-packet path of the sans-IO core: what one
//! relayed datagram costs in tern's own code, without sockets (the kernel
//! side is measured by `bench/compare`). Run with `cargo bench`.
//!
//! Each case is measured with 1 and with 10,000 live allocations in the
//! core, the packets going to each allocation in turn, to show what a large
//! table costs per lookup (cache misses included). Beside them, the
//! worker's once-a-second housekeeping over those allocations.
// Set-up code on fixed inputs, not network data; `criterion_group!` makes
// an undocumented public function.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stun::agent::TransactionId;
use stun::attributes::ATTR_NONCE;
use stun::message::{CLASS_INDICATION, Message, MessageType, Setter};
use stun::textattrs::TextAttribute;
use tern::core::{AllocId, Core, CoreConfig, FiveTuple, Now, Quotas, Transport};
use tern::request::{Auth, request};
use tern::testing::{REALM, Recorder, core_config};
use tern::wire::PEER_HEADROOM;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqtrans::RequestedTransport;

const PAYLOAD: usize = 120;
const CHANNEL: u16 = 0x4000;

/// The test configuration with room for 10,000 allocations of one user,
/// no SOFTWARE and no strict expiry.
fn config() -> CoreConfig {
    let mut cfg = core_config();
    cfg.software = None;
    cfg.limits.max_allocations = 100_000;
    cfg.limits.max_allocations_per_user = 100_000;
    cfg.limits.max_permissions = 8;
    cfg.limits.max_channels = 8;
    cfg.limits.strict_expiry = false;
    cfg
}

/// A core holding `n` allocations, each with a channel to `peer`; returns
/// every client's 5-tuple and allocation id.
type Sessions = Vec<(FiveTuple, AllocId)>;
fn core_with(n: usize, peer: SocketAddr, now: Now) -> (Core, Sessions, Recorder) {
    let mut core = Core::new(
        Arc::new(config()),
        Arc::new(Quotas::default()),
        0,
        1,
        now.instant,
    );
    let mut io = Recorder::counting();
    let transport = || -> Box<dyn Setter> {
        Box::new(RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        })
    };
    let peer_attr = || -> Box<dyn Setter> {
        Box::new(PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        })
    };
    // Nonces are bound to the client address: each client takes one from
    // its own challenge.
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let client = FiveTuple {
            transport: Transport::Udp,
            local: SocketAddr::from(([192, 0, 2, 1], 3478)),
            remote: SocketAddr::from(([198, 51, 100, (i % 250) as u8], 1024 + (i / 250) as u16)),
        };
        core.on_client(
            now,
            &client,
            &request(0x003, vec![transport()], None).unwrap(),
            &mut io,
        );
        let mut challenge = Message::new();
        challenge.raw = io.last_answer.clone();
        challenge.decode().unwrap();
        let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
            .unwrap()
            .text;
        let auth = Auth {
            user: "alice",
            pass: "pw",
            realm: REALM,
            nonce: &nonce,
        };
        for req in [
            request(0x003, vec![transport()], Some(&auth)),
            request(
                0x009,
                vec![Box::new(ChannelNumber(CHANNEL)), peer_attr()],
                Some(&auth),
            ),
        ] {
            core.on_client(now, &client, &req.unwrap(), &mut io);
            assert_eq!(io.last_answer[0] & 0x01, 0x01, "request {i} failed");
        }
        let (alloc, _) = *io.opened.last().expect("an allocation was made");
        sessions.push((client, alloc));
    }
    assert_eq!(core.allocation_count(), n);
    (core, sessions, io)
}

/// The sessions in turn, one per call.
fn round_robin(sessions: &Sessions) -> impl FnMut() -> (FiveTuple, AllocId) + '_ {
    let mut i = 0;
    move || {
        i = (i + 1) % sessions.len();
        sessions[i]
    }
}

/// A Send indication to `peer` carrying `PAYLOAD` bytes.
fn send_indication(peer: SocketAddr) -> Vec<u8> {
    let mut t = MessageType::default();
    t.read_value(0x006);
    t.class = CLASS_INDICATION;
    let mut send = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(t),
        Box::new(PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        }),
        Box::new(Data(vec![0x5a; PAYLOAD])),
    ];
    send.build(&setters).unwrap();
    send.raw
}

/// The clock the benchmarks run at, and the peer every channel is bound
/// to: a public address (the default policy denies documentation ranges).
fn clock_and_peer() -> (Now, SocketAddr) {
    let now = Now {
        instant: Instant::now(),
        unix: 1_800_000_000,
    };
    (now, SocketAddr::from(([8, 8, 8, 8], 5000)))
}

fn per_packet(c: &mut Criterion) {
    let (now, peer) = clock_and_peer();
    let mut group = c.benchmark_group("per_packet");
    group.throughput(Throughput::Elements(1));
    // Client -> peer: ChannelData from the client's 5-tuple, and a Send
    // indication. Peer -> client: framed as ChannelData (the bound peer) or
    // as a Data indication (another port of the permitted peer IP), in
    // place in a receive slot.
    let mut frame = CHANNEL.to_be_bytes().to_vec();
    frame.extend_from_slice(&(PAYLOAD as u16).to_be_bytes());
    frame.extend_from_slice(&[0x5a; PAYLOAD]);
    let send = send_indication(peer);
    let mut slot = vec![0u8; PEER_HEADROOM + PAYLOAD + 4];
    let payload = PEER_HEADROOM..PEER_HEADROOM + PAYLOAD;
    let other_port = SocketAddr::new(peer.ip(), 5001);
    for n in [1usize, 10_000] {
        let (mut core, sessions, mut io) = core_with(n, peer, now);
        // Every case relays, checked once before timing (whichever cases
        // criterion's filter then runs): two to the peer, two to the client.
        let (client, alloc) = sessions[0];
        let (to_client, to_peer) = io.sent;
        core.on_client(now, &client, &frame, &mut io);
        core.on_client(now, &client, &send, &mut io);
        core.on_peer(now, alloc, peer, &mut slot, payload.clone(), &mut io);
        core.on_peer(now, alloc, other_port, &mut slot, payload.clone(), &mut io);
        assert!(core.stats.dropped.iter().all(|&d| d == 0));
        assert_eq!(io.sent, (to_client + 2, to_peer + 2));

        group.bench_function(BenchmarkId::new("channel_data_to_peer", n), |b| {
            let mut next = round_robin(&sessions);
            b.iter(|| core.on_client(now, &next().0, black_box(&frame), &mut io));
        });

        group.bench_function(BenchmarkId::new("send_indication_to_peer", n), |b| {
            let mut next = round_robin(&sessions);
            b.iter(|| core.on_client(now, &next().0, black_box(&send), &mut io));
        });

        group.bench_function(BenchmarkId::new("peer_to_channel_data", n), |b| {
            let mut next = round_robin(&sessions);
            b.iter(|| core.on_peer(now, next().1, peer, &mut slot, payload.clone(), &mut io));
        });
        group.bench_function(BenchmarkId::new("peer_to_data_indication", n), |b| {
            let mut next = round_robin(&sessions);
            b.iter(|| {
                core.on_peer(
                    now,
                    next().1,
                    other_port,
                    &mut slot,
                    payload.clone(),
                    &mut io,
                )
            });
        });

        // Nothing timed was dropped on the way either.
        assert!(core.stats.dropped.iter().all(|&d| d == 0));
    }
    group.finish();
}

/// A worker's once-a-second housekeeping with 1 and with 10,000 live
/// allocations, none due: `tick` (the expiry scan, interim records, the
/// permission and channel sweep) and the gauges. The worker serves no
/// datagram meanwhile.
fn housekeeping(c: &mut Criterion) {
    let (now, peer) = clock_and_peer();
    let mut group = c.benchmark_group("housekeeping");
    for n in [1usize, 10_000] {
        let (mut core, _, mut io) = core_with(n, peer, now);
        group.bench_function(BenchmarkId::new("tick", n), |b| {
            b.iter(|| core.tick(now, &mut io));
        });
        group.bench_function(BenchmarkId::new("refresh_gauges", n), |b| {
            b.iter(|| core.refresh_gauges(now));
        });
        assert_eq!(core.allocation_count(), n);
    }
    group.finish();
}

criterion_group!(benches, per_packet, housekeeping);
criterion_main!(benches);
