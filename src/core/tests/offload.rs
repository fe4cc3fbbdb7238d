//! What the core offers a fast path (`core::offload`), on a fake clock:
//! only live channels with a live permission to an allowed peer, for UDP
//! clients, each until its earliest expiry; withdrawn when that passes,
//! when the policy stops allowing the peer and when the allocation goes;
//! the fast path's counts land in the allocation and the worker's
//! counters; the bandwidth buckets spend from its cells meanwhile.

use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::*;
use crate::core::alloc::{CHANNEL_LIFETIME, PERMISSION_LIFETIME, Traffic};
use crate::policy::{PeerPolicy, PortRange};

fn offloading() -> (Harness, FiveTuple, AllocId) {
    let mut h = Harness::new();
    h.core.set_offloading(true);
    h.allocated()
}

fn last_offer(h: &Harness) -> &[Offload] {
    &h.io.offers.last().expect("an offer").1
}

#[test]
fn a_bound_channel_is_offered_until_its_permission_expires_then_withdrawn() {
    let (mut h, c, id) = offloading();
    let start = h.clock.now().instant;
    assert_eq!(h.bind(&c, 0x4000, PEER_A).typ.class, CLASS_SUCCESS_RESPONSE);
    let offer = last_offer(&h).to_vec();
    assert_eq!(h.io.offers.last().unwrap().0, id);
    assert_eq!(offer.len(), 1);
    assert_eq!(offer[0].channel, 0x4000);
    assert_eq!(offer[0].peer, PEER_A.parse::<SocketAddr>().unwrap());
    // The permission (5 min) expires before the channel (10 min) and the
    // allocation (10 min).
    assert!(PERMISSION_LIFETIME < CHANNEL_LIFETIME);
    assert_eq!(offer[0].expires, start + PERMISSION_LIFETIME);

    // Until then the tick only reads the fast path's counts.
    let offers = h.io.offers.len();
    h.io.fast_path = Traffic {
        packets_to_peer: 5,
        bytes_to_peer: 500,
        packets_to_client: 3,
        bytes_to_client: 300,
    };
    h.clock.advance(60);
    h.tick();
    assert_eq!(h.io.offers.len(), offers);
    assert_eq!(h.core.stats.offloaded_packets, [5, 3]);
    assert_eq!(h.core.stats.offloaded_bytes, [500, 300]);
    let s = &h.core.sessions(h.clock.now(), None)[0];
    assert_eq!(
        (s.traffic.bytes_to_peer, s.traffic.bytes_to_client),
        (500, 300)
    );

    // Past the permission's expiry the tick withdraws it.
    h.clock.advance(PERMISSION_LIFETIME.as_secs());
    h.tick();
    assert!(last_offer(&h).is_empty(), "{:?}", h.io.offers);
}

#[test]
fn refreshing_the_permission_extends_the_offer_and_deleting_withdraws_it_first() {
    let (mut h, c, id) = offloading();
    h.bind(&c, 0x4000, PEER_A);
    let start = h.clock.now().instant;
    h.clock.advance(350);
    let m = h.request(&c, method::CREATE_PERMISSION, vec![peer_attr(PEER_A)]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    // Now the channel (bound at 0) ends before the permission (at 350 +
    // 300), with the allocation.
    assert_eq!(last_offer(&h)[0].expires, start + CHANNEL_LIFETIME);

    h.io.fast_path.bytes_to_peer = 1234;
    assert_eq!(h.delete(&c).typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(h.io.offers.last().unwrap(), &(id, vec![]));
    // The withdrawal's final count is in the allocation's last figures.
    assert_eq!(h.core.stats.offloaded_bytes[0], 1234);
}

#[test]
fn a_policy_that_denies_the_peer_withdraws_it_at_once() {
    let (mut h, c, _) = offloading();
    h.bind(&c, 0x4000, PEER_A);
    h.bind(&c, 0x4001, PEER_B);
    assert_eq!(last_offer(&h).len(), 2);
    let mut cfg = core_config();
    cfg.policy = PeerPolicy::new(
        vec![],
        vec!["8.8.8.0/24".parse().unwrap()],
        vec![],
        vec![],
        PortRange::new(49152, 65535).unwrap(),
    );
    h.core.set_config(Arc::new(cfg));
    h.core.reoffload_all(h.clock.now(), &mut h.io);
    let offer = last_offer(&h);
    assert_eq!(offer.len(), 1);
    assert_eq!(offer[0].peer, PEER_B.parse::<SocketAddr>().unwrap());
}

#[test]
fn the_bandwidth_buckets_spend_from_the_fast_paths_cells_while_offloaded() {
    let mut cfg = core_config();
    cfg.limits.max_bandwidth = 1000;
    let mut h = Harness::with(cfg);
    h.core.set_offloading(true);
    let (mut h, c, id) = h.allocated();
    h.bind(&c, 0x4000, PEER_A);
    // The fast path has spent a whole second's worth towards the client.
    h.io.cells[1].store(u64::MAX / 2, Ordering::Relaxed);
    assert!(
        h.peer_datagram(id, PEER_A, &[7; 100]).is_none(),
        "over the shared limit"
    );
    assert_eq!(h.core.stats.dropped[DropReason::Bandwidth as usize], 1);
    // Towards the peer the cell is fresh: the core spends from it.
    h.send(&c, &[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]);
    assert_eq!(h.io.to_peer.len(), 1);
    assert!(h.io.cells[0].load(Ordering::Relaxed) > 0);
}

#[test]
fn tcp_clients_and_cores_that_do_not_offload_offer_nothing() {
    let (mut h, c, _) = Harness::new().allocated();
    h.bind(&c, 0x4000, PEER_A);
    assert!(h.io.offers.is_empty());
    h.core.set_offloading(true);
    let t = FiveTuple {
        transport: Transport::Tcp,
        ..client(2000)
    };
    let nonce = h.core.cfg.nonces.issue(h.clock.now().unix, true, &t.remote);
    let signed = |method, attrs| build(method, CLASS_REQUEST, attrs, Some(("alice", "pw", &nonce)));
    h.send(&t, &signed(method::ALLOCATE, vec![udp()]));
    assert_eq!(h.io.last().typ.class, CLASS_SUCCESS_RESPONSE);
    h.send(
        &t,
        &signed(
            method::CHANNEL_BIND,
            vec![channel(0x4000), peer_attr(PEER_A)],
        ),
    );
    assert_eq!(h.io.last().typ.class, CLASS_SUCCESS_RESPONSE);
    assert!(last_offer(&h).is_empty());
}

/// What a client or the operator does, for the property below.
#[derive(Debug, Clone)]
enum Op {
    Bind(u16, usize),
    Permit(usize),
    Refresh(bool),
    Advance(u64),
    Tick,
    Deny(Option<usize>),
}

const PEERS: [&str; 3] = ["8.8.8.8:5000", "1.1.1.1:6000", "9.9.9.9:7000"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0x4000u16..0x4003, 0usize..3).prop_map(|(n, p)| Op::Bind(n, p)),
        (0usize..3).prop_map(Op::Permit),
        any::<bool>().prop_map(Op::Refresh),
        (0u64..400).prop_map(Op::Advance),
        Just(Op::Tick),
        proptest::option::of(0usize..3).prop_map(Op::Deny),
    ]
}

/// The channels the per-packet path would relay for `id` right now, on a
/// live allocation.
fn relayable(h: &Harness, id: AllocId) -> Vec<(u16, SocketAddr)> {
    let now = h.clock.now().instant;
    // A live allocation (one past its lifetime goes at the next tick).
    let Some(a) = h.core.allocs.get(id).filter(|a| a.expires > now) else {
        return Vec::new();
    };
    let mut v: Vec<(u16, SocketAddr)> = a
        .live_channel_list(now)
        .map(|(n, c)| (n, c.peer))
        .filter(|(_, p)| a.permits(&p.ip(), now))
        .filter(|(_, p)| h.core.cfg.policy.check_addr(*p).is_ok())
        .collect();
    v.sort();
    v
}

proptest! {
    /// Whatever a client and the operator do, the fast path holds exactly
    /// what the per-packet path would relay: every live offer is a channel
    /// it would relay now, and every channel it would relay is offered;
    /// a deleted allocation's last offer is empty.
    #[test]
    fn offers_are_exactly_what_userspace_would_relay(ops in proptest::collection::vec(op(), 1..40)) {
        let (mut h, c, id) = offloading();
        let mut deleted = false;
        for op in ops {
            if deleted {
                break;
            }
            match op {
                Op::Bind(n, p) => { h.bind(&c, n, PEERS[p]); }
                Op::Permit(p) => { h.request(&c, method::CREATE_PERMISSION, vec![peer_attr(PEERS[p])]); }
                Op::Refresh(keep) => {
                    let life = if keep { 600 } else { 0 };
                    h.request(&c, method::REFRESH, vec![Box::new(Lifetime(Duration::from_secs(life)))]);
                }
                Op::Advance(s) => h.clock.advance(s),
                Op::Tick => h.tick(),
                Op::Deny(p) => {
                    let mut cfg = core_config();
                    let deny = p.map(|p| PEERS[p].parse::<SocketAddr>().unwrap().ip());
                    cfg.policy = PeerPolicy::new(
                        vec![],
                        deny.map(ipnet::IpNet::from).into_iter().collect(),
                        vec![],
                        vec![],
                        PortRange::new(49152, 65535).unwrap(),
                    );
                    h.core.set_config(Arc::new(cfg));
                    h.core.reoffload_all(h.clock.now(), &mut h.io);
                }
            }
            deleted = h.core.allocs.get(id).is_none();
            let now = h.clock.now().instant;
            let mut offered: Vec<(u16, SocketAddr)> = h
                .io
                .offers
                .iter()
                .rev()
                .find(|(a, _)| *a == id)
                .map(|(_, o)| o.iter().filter(|o| o.expires > now).map(|o| (o.channel, o.peer)).collect())
                .unwrap_or_default();
            offered.sort();
            prop_assert_eq!(offered, relayable(&h, id));
        }
    }
}
