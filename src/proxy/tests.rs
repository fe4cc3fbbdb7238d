#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::{Header, MAX_HEADER_BYTES, Refusal, parse};

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    crate::testing::proxy_v1(src, dst)
}

fn v2(command: u8, src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let tlvs: Vec<(u8, &[u8])> = tlvs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    crate::testing::proxy_v2(command, src, dst, &tlvs)
}

fn pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| (
                SocketAddr::from((Ipv4Addr::from(s), sp)),
                SocketAddr::from((Ipv4Addr::from(d), dp))
            )),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(s, d, sp, dp)| (
                SocketAddr::from((Ipv6Addr::from(s), sp)),
                SocketAddr::from((Ipv6Addr::from(d), dp))
            )),
    ]
}

fn tlvs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)),
        0..4,
    )
}

/// A valid header of either version from `src`, with its length.
fn header() -> impl Strategy<Value = (Vec<u8>, SocketAddr)> {
    (pair(), tlvs(), any::<bool>()).prop_map(|((src, dst), tlvs, text)| {
        let bytes = if text {
            v1(src, dst)
        } else {
            v2(1, src, dst, &tlvs)
        };
        (bytes, src)
    })
}

proptest! {
    #[test]
    fn never_panics_and_never_claims_more_than_it_has(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some(h)) = parse(&bytes) {
            prop_assert!(h.len <= bytes.len() && h.len <= MAX_HEADER_BYTES);
        }
    }

    #[test]
    fn never_panics_on_mangled_headers((mut bytes, _) in header(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
        let i = at.index(bytes.len());
        bytes[i] = to;
        if let Ok(Some(h)) = parse(&bytes) {
            prop_assert!(h.len <= bytes.len());
        }
    }

    #[test]
    fn a_header_gives_the_client_and_leaves_what_follows(
        (bytes, src) in header(),
        rest in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut all = bytes.clone();
        all.extend_from_slice(&rest);
        prop_assert_eq!(parse(&all), Ok(Some(Header { client: Some(src), len: bytes.len() })));
    }

    #[test]
    fn every_proper_prefix_asks_for_more((bytes, _) in header()) {
        for n in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..n]), Ok(None), "prefix of {} bytes", n);
        }
    }
}

fn addrs(s: &str, d: &str) -> (SocketAddr, SocketAddr) {
    (s.parse().unwrap(), d.parse().unwrap())
}

#[test]
fn clients_speaking_first_are_missing_a_header() {
    // A STUN Binding request, a TLS ClientHello, ChannelData.
    for first in [
        &[0x00, 0x01, 0x00, 0x00][..],
        &[0x16, 0x03, 0x01],
        &[0x40, 0x00],
    ] {
        assert_eq!(parse(first), Err(Refusal::Missing));
    }
    assert_eq!(parse(b"PROXZ"), Err(Refusal::Missing));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(Refusal::Missing));
}

#[test]
fn the_proxys_own_connections_keep_their_address() {
    let (s, d) = addrs("192.0.2.1:1000", "198.51.100.2:3478");
    let local = v2(0, s, d, &[]);
    let want = Header {
        client: None,
        len: local.len(),
    };
    assert_eq!(parse(&local), Ok(Some(want)));
    let unknown = b"PROXY UNKNOWN\r\n";
    assert_eq!(
        parse(unknown),
        Ok(Some(Header {
            client: None,
            len: unknown.len()
        }))
    );
    // v2 PROXY with AF_UNSPEC: no address block.
    let mut unspec = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
    assert_eq!(parse(&unspec).unwrap().unwrap().client, None);
}

#[test]
fn refuses_what_tern_cannot_serve() {
    // AF_UNIX over a stream: 216 bytes of paths.
    let mut unix = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
    unix.extend_from_slice(&[0u8; 216]);
    assert_eq!(parse(&unix), Err(Refusal::Invalid));
    // A version 1 header with a bad address, and one too long.
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"),
        Err(Refusal::Invalid)
    );
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    assert_eq!(parse(&long), Err(Refusal::Invalid));
    // Version 2 with another version nibble, and a length over the cap,
    // refused from the 16 fixed bytes alone.
    let mut v3 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v3.extend_from_slice(&[0x31, 0x11, 0x00, 12]);
    assert_eq!(parse(&v3), Err(Refusal::Invalid));
    let mut huge = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(parse(&huge), Err(Refusal::Invalid));
}

#[test]
fn haproxys_v2_with_tlvs_parses() {
    // PP2_TYPE_ALPN (0x01) "stun.turn" and PP2_TYPE_UNIQUE_ID (0x05).
    let (s, d) = addrs("[2001:db8::7]:40000", "[2001:db8::1]:443");
    let h = v2(
        1,
        s,
        d,
        &[(0x01, b"stun.turn".to_vec()), (0x05, b"abc".to_vec())],
    );
    assert_eq!(
        parse(&h),
        Ok(Some(Header {
            client: Some(s),
            len: h.len()
        }))
    );
}
