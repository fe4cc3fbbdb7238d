//! The program itself, run by the kernel on frames made here
//! (`BPF_PROG_TEST_RUN`), with entries installed as a worker installs
//! them: both rewrites in both families with their checksums recomputed
//! from scratch, the next hops learned, the counters, expiry, withdrawal,
//! and every malformed or unexpected frame passed on untouched. Needs
//! root (CAP_BPF); CI runs these with `cargo test -- --ignored`.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::table::Offloads;
use super::{FastPath, PROGRAM_COUNTERS};
use crate::core::alloc::Traffic;
use crate::core::{AllocId, FiveTuple, Offload, Transport};
use crate::testing::internet_checksum;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];

/// Run the program on `frame`: its verdict and the frame it left.
fn run(path: &FastPath, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = [0u64; 10];
    attr[0] = u64::from(path.prog.as_raw_fd() as u32);
    attr[1] = frame.len() as u64 | ((out.len() as u64) << 32);
    attr[2] = frame.as_ptr() as u64;
    attr[3] = out.as_mut_ptr() as u64;
    attr[4] = 1; // repeat
    super::super::sklookup::bpf(10, &mut attr).expect("BPF_PROG_TEST_RUN");
    let retval = attr[0] >> 32;
    let size = (attr[1] >> 32) as usize;
    out.truncate(size);
    (retval as u32, out)
}

/// An Ethernet frame with a UDP datagram, checksums right.
fn frame(src_mac: [u8; 6], from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&src_mac);
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = internet_checksum(&[&ip]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let pseudo = [
                &s.octets()[..],
                &d.octets(),
                &[0, 17],
                &udp_len.to_be_bytes(),
            ]
            .concat();
            let c = internet_checksum(&[&pseudo, &udp]);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&udp_len.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let pseudo = [
                &s.octets()[..],
                &d.octets(),
                &u32::from(udp_len).to_be_bytes(),
                &[0, 0, 0, 17],
            ]
            .concat();
            let c = internet_checksum(&[&pseudo, &udp]);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        _ => unreachable!("one family"),
    }
    f.extend_from_slice(&udp);
    f
}

/// The frame's UDP datagram, with every checksum verified: (from, to,
/// payload, destination MAC, source MAC).
fn parse(f: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>, [u8; 6], [u8; 6]) {
    let (dst_mac, src_mac) = (f[..6].try_into().unwrap(), f[6..12].try_into().unwrap());
    let (from_ip, to_ip, udp): (IpAddr, IpAddr, &[u8]) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ip = &f[14..34];
            assert_eq!(internet_checksum(&[ip]), 0, "IPv4 header checksum");
            assert_eq!(ip[8], 64, "TTL");
            let len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(len, f.len() - 14, "IPv4 total length");
            let udp = &f[34..];
            let pseudo = [&ip[12..20], &[0, 17], &(udp.len() as u16).to_be_bytes()].concat();
            assert_eq!(internet_checksum(&[&pseudo, udp]), 0, "UDP checksum");
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), udp)
        }
        0x86dd => {
            let ip = &f[14..54];
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            assert_eq!(len, f.len() - 54, "IPv6 payload length");
            let udp = &f[54..];
            let pseudo = [&ip[8..40], &(len as u32).to_be_bytes()[..], &[0, 0, 0, 17]].concat();
            assert_eq!(internet_checksum(&[&pseudo, udp]), 0, "UDP checksum");
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), udp)
        }
        t => panic!("ethertype {t:#x}"),
    };
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    let port = |i: usize| u16::from_be_bytes([udp[i], udp[i + 1]]);
    (
        SocketAddr::new(from_ip, port(0)),
        SocketAddr::new(to_ip, port(2)),
        udp[8..].to_vec(),
        dst_mac,
        src_mac,
    )
}

fn channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

struct Setup {
    path: Arc<FastPath>,
    offloads: Offloads,
    id: AllocId,
    client: FiveTuple,
    relay: SocketAddr,
    peer: SocketAddr,
}

impl Setup {
    fn new(v6: bool) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (CAP_BPF)");
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (server, client, relay, peer) = if v6 {
            (
                a("[2001:db8::1]:3478"),
                a("[2001:db8::2]:5000"),
                a("[2001:db8::1]:50000"),
                a("[2001:db8::3]:6000"),
            )
        } else {
            (
                a("192.0.2.1:3478"),
                a("192.0.2.2:5000"),
                a("192.0.2.1:50000"),
                a("192.0.2.3:6000"),
            )
        };
        let path = Arc::new(FastPath::load().unwrap());
        let mut s = Self {
            offloads: Offloads::new(Arc::clone(&path), 0, 1),
            path,
            id: AllocId::from_bits(7).unwrap(),
            client: FiveTuple {
                transport: Transport::Udp,
                local: server,
                remote: client,
            },
            relay,
            peer,
        };
        s.offer(Duration::from_secs(60));
        s
    }

    fn offer(&mut self, left: Duration) {
        let o = Offload {
            channel: 0x4000,
            peer: self.peer,
            expires: Instant::now() + left,
        };
        let offered = self
            .offloads
            .set(self.id, &self.client, Some(self.relay), &[o]);
        assert!(offered.buckets.is_some());
    }

    fn client_frame(&self, payload: &[u8]) -> Vec<u8> {
        frame(CLIENT_MAC, self.client.remote, self.client.local, payload)
    }

    fn peer_frame(&self, payload: &[u8]) -> Vec<u8> {
        frame(PEER_MAC, self.peer, self.relay, payload)
    }

    fn stats(&self) -> [u64; PROGRAM_COUNTERS] {
        self.path.stats()
    }
}

fn relays_both_ways(v6: bool) {
    let mut s = Setup::new(v6);
    // The first ChannelData teaches the way to the client; the way to the
    // peer is not known yet: userspace sends it.
    let (verdict, _) = run(&s.path, &s.client_frame(&channel_data(0x4000, b"hello")));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(s.stats()[3], 1, "no next hop");
    // The peer's answer: ChannelData to the client, by the way it came.
    let (verdict, out) = run(&s.path, &s.peer_frame(b"world!"));
    assert_eq!(verdict, XDP_TX);
    let (from, to, payload, dst, src) = parse(&out);
    assert_eq!((from, to), (s.client.local, s.client.remote));
    assert_eq!(payload, channel_data(0x4000, b"world!"));
    assert_eq!((dst, src), (CLIENT_MAC, OUR_MAC));
    // Now the client's ChannelData goes to the peer, from the relay.
    let (verdict, out) = run(&s.path, &s.client_frame(&channel_data(0x4000, b"hello")));
    assert_eq!(verdict, XDP_TX);
    let (from, to, payload, dst, src) = parse(&out);
    assert_eq!((from, to), (s.relay, s.peer));
    assert_eq!(payload, b"hello");
    assert_eq!((dst, src), (PEER_MAC, OUR_MAC));
    // An odd-length payload keeps its checksum right too.
    let (verdict, out) = run(&s.path, &s.client_frame(&channel_data(0x4000, b"odd")));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(parse(&out).2, b"odd");
    assert_eq!(
        s.offloads.read(s.id),
        Traffic {
            packets_to_peer: 2,
            bytes_to_peer: 8,
            packets_to_client: 1,
            bytes_to_client: 6,
        }
    );
    assert_eq!(s.stats()[..2], [2, 1]);
    // A refresh (a later expiry) keeps what was learned: no datagram goes
    // back to userspace for it.
    s.offer(Duration::from_secs(120));
    let (verdict, out) = run(&s.path, &s.client_frame(&channel_data(0x4000, b"again")));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(parse(&out).2, b"again");
    assert_eq!(run(&s.path, &s.peer_frame(b"again")).0, XDP_TX);
    assert_eq!(s.stats()[..2], [3, 2]);
    s.offloads.read(s.id);

    // An expired entry: left to userspace, counted.
    s.offer(Duration::ZERO);
    let (verdict, _) = run(&s.path, &s.peer_frame(b"late"));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(s.stats()[2], 1, "expired");
    // Withdrawn: no entry at all.
    let offered = s.offloads.set(s.id, &s.client, Some(s.relay), &[]);
    assert!(offered.buckets.is_none());
    for f in [
        s.peer_frame(b"gone"),
        s.client_frame(&channel_data(0x4000, b"gone")),
    ] {
        assert_eq!(run(&s.path, &f), (XDP_PASS, f.clone()));
    }
    assert_eq!(s.stats()[..3], [3, 2, 1]);
}

#[test]
#[ignore = "needs CAP_BPF (as root, scripts/test runs it)"]
fn ipv4_both_ways_with_checksums_hops_counters_expiry_and_withdrawal() {
    relays_both_ways(false);
}

#[test]
#[ignore = "needs CAP_BPF (as root, scripts/test runs it)"]
fn ipv6_both_ways_with_checksums_hops_counters_expiry_and_withdrawal() {
    relays_both_ways(true);
}

#[test]
#[ignore = "needs CAP_BPF (as root, scripts/test runs it)"]
fn malformed_and_unexpected_frames_pass_untouched_and_count_nothing() {
    let mut s = Setup::new(false);
    // Learn both hops first, so that only the frame's shape decides.
    run(&s.path, &s.client_frame(&channel_data(0x4000, b"x")));
    run(&s.path, &s.peer_frame(b"y"));
    s.offloads.read(s.id);
    let before = s.stats();
    let good = s.client_frame(&channel_data(0x4000, b"payload"));
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "padded ChannelData",
            s.client_frame(&[channel_data(0x4000, b"pay"), vec![0]].concat()),
        ),
        ("ChannelData longer than the datagram", {
            let mut p = channel_data(0x4000, b"payload");
            p[3] += 1;
            s.client_frame(&p)
        }),
        (
            "another channel",
            s.client_frame(&channel_data(0x4001, b"payload")),
        ),
        (
            "STUN",
            s.client_frame(&[
                0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]),
        ),
        ("a header alone", s.client_frame(&[0x40, 0])),
        ("no payload", s.client_frame(&[])),
        (
            "a peer on another port",
            frame(PEER_MAC, "192.0.2.3:6001".parse().unwrap(), s.relay, b"p"),
        ),
        (
            "another relay port",
            frame(PEER_MAC, s.peer, "192.0.2.1:50001".parse().unwrap(), b"p"),
        ),
    ];
    let mut zero_check = good.clone();
    zero_check[40..42].copy_from_slice(&[0, 0]);
    cases.push(("no UDP checksum", zero_check));
    let mut fragment = good.clone();
    fragment[20] |= 0x20; // more fragments
    cases.push(("a fragment", fragment));
    let mut options = good.clone();
    options[14] = 0x46;
    cases.push(("IPv4 options", options));
    let mut tcp = good.clone();
    tcp[23] = 6;
    cases.push(("TCP", tcp));
    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    cases.push(("a VLAN tag", vlan));
    cases.push(("a frame cut short", good[..good.len() - 3].to_vec()));
    cases.push(("an Ethernet header alone", good[..14].to_vec()));
    let mut trailer = good.clone();
    trailer.extend_from_slice(&[0; 6]);
    cases.push(("bytes after the IP datagram", trailer));
    for (what, f) in cases {
        assert_eq!(run(&s.path, &f), (XDP_PASS, f.clone()), "{what}");
    }
    assert_eq!(s.offloads.read(s.id), Traffic::default());
    assert_eq!(s.stats(), before);
    // And the good frame still goes.
    assert_eq!(run(&s.path, &good).0, XDP_TX);
}

/// Keys of `size` bytes in a hash map (BPF_MAP_GET_NEXT_KEY from none).
fn count_keys(map: &std::os::fd::OwnedFd, size: usize) -> usize {
    let mut n = 0;
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; size];
        if super::super::sklookup::map_next_key(map, key.as_deref(), &mut next).is_err() {
            return n;
        }
        n += 1;
        key = Some(next);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
    /// Whatever sequence of offers a worker makes, the maps hold exactly
    /// the entries of what is offered now (nothing leaks, nothing is
    /// lost), each allocation keeps one slot while it has entries, and
    /// once everything is withdrawn the maps are empty and every slot is
    /// free again.
    #[test]
    #[ignore = "needs CAP_BPF (as root, scripts/test runs it)"]
    fn the_maps_hold_exactly_what_is_offered(
        ops in proptest::collection::vec((0u64..3, proptest::collection::vec((0u16..4, 0u16..3), 0..4)), 1..30)
    ) {
        let path = Arc::new(FastPath::load().unwrap());
        let mut offloads = Offloads::new(Arc::clone(&path), 0, 1);
        let free = offloads.free_slots();
        let mut live: std::collections::HashMap<u64, usize> = Default::default();
        for (alloc, channels) in ops {
            let id = AllocId::from_bits(alloc + 1).unwrap();
            let client = FiveTuple {
                transport: Transport::Udp,
                local: "192.0.2.1:3478".parse().unwrap(),
                remote: SocketAddr::from(([192, 0, 2, 10 + alloc as u8], 5000)),
            };
            let relay = SocketAddr::from(([192, 0, 2, 1], 50_000 + alloc as u16));
            // One peer per channel number (the core never offers two
            // channels to one peer).
            let mut offers: Vec<Offload> = Vec::new();
            for (n, p) in channels {
                if offers.iter().any(|o| o.channel == 0x4000 + n || o.peer.port() == 6000 + n) {
                    continue;
                }
                offers.push(Offload {
                    channel: 0x4000 + n,
                    peer: SocketAddr::from(([198, 51, 100, 1 + p as u8], 6000 + n)),
                    expires: Instant::now() + Duration::from_secs(60),
                });
            }
            let offered = offloads.set(id, &client, Some(relay), &offers);
            proptest::prop_assert_eq!(offered.buckets.is_some(), !offers.is_empty());
            live.insert(alloc, offers.len());
            let total: usize = live.values().sum();
            proptest::prop_assert_eq!(count_keys(&path.from_client, 24), total);
            proptest::prop_assert_eq!(count_keys(&path.from_peer, 40), total);
            let holding = live.values().filter(|n| **n > 0).count();
            proptest::prop_assert_eq!(offloads.len(), holding);
            proptest::prop_assert_eq!(offloads.free_slots(), free - holding);
        }
        for alloc in 0..3 {
            offloads.set(AllocId::from_bits(alloc + 1).unwrap(), &FiveTuple {
                transport: Transport::Udp,
                local: "192.0.2.1:3478".parse().unwrap(),
                remote: "192.0.2.9:1".parse().unwrap(),
            }, None, &[]);
        }
        proptest::prop_assert_eq!(count_keys(&path.from_client, 24), 0);
        proptest::prop_assert_eq!(count_keys(&path.from_peer, 40), 0);
        proptest::prop_assert_eq!(offloads.free_slots(), free);
    }
}
