//! The whole sans-IO core fed a sequence of packets from several sources
//! and peers under a fake clock. Invariants: no panic, every table within
//! its limit, and answers to unauthenticated traffic stay small.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tern::core::{AllocId, Core, FiveTuple, Now, Quotas, Transport};
use tern::testing::{Recorder, core_config};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut cfg = core_config();
    cfg.limits.max_allocations = 4;
    cfg.limits.max_allocations_per_user = 4;
    cfg.limits.max_permissions = 8;
    cfg.limits.max_channels = 8;
    let mut core = Core::new(Arc::new(cfg), Arc::new(Quotas::default()), 0, 7, start);
    let mut io = Recorder::default();
    let mut offset = 0u64;
    let mut buf = vec![0u8; tern::wire::PEER_HEADROOM + 600];
    // Each record: [control byte][len byte][len bytes of packet].
    let mut rest = data;
    while rest.len() >= 2 {
        let (ctl, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..rest.len().min(2 + len)];
        rest = &rest[(2 + len).min(rest.len())..];
        offset += u64::from(ctl >> 5) * 37;
        let now = Now {
            instant: start + Duration::from_secs(offset),
            unix: 1_800_000_000 + offset,
        };
        let from = FiveTuple {
            transport: if ctl & 1 == 0 { Transport::Udp } else { Transport::Tcp },
            local: SocketAddr::from(([192, 0, 2, 1], 3478)),
            remote: SocketAddr::from(([198, 51, 100, (ctl >> 1) & 3], 1000)),
        };
        let before = io.to_client.len();
        // Nothing the fuzzer sends can authenticate, so every answer to a
        // client's packet must stay within twice its size (IPv4 client, a
        // 4-byte realm); a peer's datagram is re-framed with at most 48
        // bytes of header.
        let mut bound = 2 * body.len();
        match ctl & 0x18 {
            0x18 => {
                let n = body.len().min(500);
                let start_at = tern::wire::PEER_HEADROOM;
                buf[start_at..start_at + n].copy_from_slice(&body[..n]);
                let peer = SocketAddr::from(([8, 8, 8, ctl], 5000));
                // The ids of the first allocations (worker 0, generation 1).
                let Some(alloc) = AllocId::from_bits((1 << 24) | u64::from(ctl & 3)) else {
                    continue;
                };
                core.on_peer(now, alloc, peer, &mut buf, start_at..start_at + n, &mut io);
                bound = n + tern::wire::PEER_HEADROOM + 3;
            }
            0x10 => core.tick(now, &mut io),
            0x08 if ctl & 0x80 != 0 => core.on_client_closed(now, &from, &mut io),
            _ => core.on_client(now, &from, body, &mut io),
        }
        assert!(core.allocation_count() <= 4);
        assert_eq!(core.allocation_count(), io.open());
        for (_, answer) in &io.to_client[before..] {
            assert!(answer.len() <= bound, "answer of {} bytes", answer.len());
        }
    }
});
