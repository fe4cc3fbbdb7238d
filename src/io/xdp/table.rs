//! One worker's offloaded allocations: the entries it installed in the
//! fast path's maps, each allocation's slot, and what was last read of
//! the slot's counters.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{FastPath, MAX_SLOTS};
use crate::core::alloc::Traffic;
use crate::core::{AllocId, FiveTuple, Offered, Offload};
use crate::io::sklookup::{map_delete, map_lookup, map_update};
use crate::policy::canonical;

/// `struct client_key` in `bpf/relay_xdp.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientKey {
    family: u8,
    pad: u8,
    channel: u16,
    client_port: u16,
    server_port: u16,
    client_ip: [u8; 16],
}

/// `struct hop`: learned by the program; installed as zero (unknown).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hop {
    their_mac: [u8; 6],
    our_mac: [u8; 6],
    ifindex: u32,
}

/// `struct to_peer`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ToPeer {
    relay_ip: [u8; 16],
    peer_ip: [u8; 16],
    relay_port: u16,
    peer_port: u16,
    slot: u32,
    expires_ns: u64,
    peer: Hop,
}

/// `struct peer_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerKey {
    family: u8,
    pad: [u8; 3],
    peer_port: u16,
    relay_port: u16,
    peer_ip: [u8; 16],
    relay_ip: [u8; 16],
}

/// `struct to_client`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ToClient {
    server_ip: [u8; 16],
    client_ip: [u8; 16],
    server_port: u16,
    client_port: u16,
    channel: u16,
    pad: u16,
    slot: u32,
    pad2: u32,
    expires_ns: u64,
    pushed: Hop,
}

/// One channel's entries in the two maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ck: ClientKey,
    tp: ToPeer,
    pk: PeerKey,
    tc: ToClient,
}

/// What one allocation has installed.
#[derive(Debug)]
struct Installed {
    slot: u32,
    /// Each channel's two entries, as installed (hops unknown).
    entries: Vec<Entry>,
    /// The slot's counters as last read.
    seen: Traffic,
}

/// One worker's offloaded allocations.
#[derive(Debug)]
pub struct Offloads {
    path: Arc<FastPath>,
    /// Slots of this worker's range not in use, oldest freed first (a
    /// datagram in flight as a slot is freed counts against whoever
    /// held it, not its next holder).
    free: VecDeque<u32>,
    allocs: HashMap<AllocId, Installed>,
    /// Bandwidth limit per allocation and direction, bytes per second.
    rate: u64,
    /// Installs that failed (a full map): those stay in userspace.
    pub failed: u64,
}

impl Offloads {
    /// Worker `worker` of `workers`: it uses its own share of the slots.
    pub fn new(path: Arc<FastPath>, worker: usize, workers: usize) -> Self {
        let per = MAX_SLOTS / workers.max(1) as u32;
        let first = per * worker as u32;
        Self {
            path,
            free: (first..first + per).collect(),
            allocs: HashMap::new(),
            rate: 0,
            failed: 0,
        }
    }

    /// The bandwidth limit per allocation and direction (0: unlimited),
    /// for slots installed from now on and those in use.
    pub fn set_rate(&mut self, rate: u64) {
        self.rate = rate;
        for i in self.allocs.values() {
            if let Some(s) = self.path.slot(i.slot) {
                s[6].store(rate, Ordering::Relaxed);
            }
        }
    }

    /// Allocations with entries installed.
    pub fn len(&self) -> usize {
        self.allocs.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }

    /// Slots of this worker's share not in use.
    #[cfg(test)]
    pub(super) fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Install `channels` for allocation `alloc` (client `client`, relay
    /// socket bound at `relay`) in place of what it had; none withdraws
    /// it. Returns what the fast path relayed for it since the last read.
    pub fn set(
        &mut self,
        alloc: AllocId,
        client: &FiveTuple,
        relay: Option<SocketAddr>,
        channels: &[Offload],
    ) -> Offered {
        let wanted = match relay {
            Some(relay) if !channels.is_empty() => self.entries(client, relay, channels),
            _ => Vec::new(),
        };
        if wanted.is_empty() {
            return self.withdrawn(alloc);
        }
        let Some(slot) = self.slot_for(alloc) else {
            self.failed += 1;
            return self.withdrawn(alloc);
        };
        let old = self
            .allocs
            .get(&alloc)
            .map(|i| i.entries.clone())
            .unwrap_or_default();
        let entries = self.install_all(alloc, slot, wanted, &old);
        if entries.is_empty() {
            return self.withdrawn(alloc);
        }
        let Some(installed) = self.allocs.get_mut(&alloc) else {
            return Offered::default();
        };
        // What the allocation had and no longer has.
        for e in &installed.entries {
            if !entries.iter().any(|n| n.ck == e.ck) {
                let _ = map_delete(&self.path.from_client, &e.ck);
            }
            if !entries.iter().any(|n| n.pk == e.pk) {
                let _ = map_delete(&self.path.from_peer, &e.pk);
            }
        }
        installed.entries = entries;
        Offered {
            traffic: self.read(alloc),
            buckets: self.path.cells(slot),
        }
    }

    /// `alloc` withdrawn from the fast path: what it relayed there since
    /// the last read, and no buckets.
    fn withdrawn(&mut self, alloc: AllocId) -> Offered {
        Offered {
            traffic: self.withdraw(alloc),
            buckets: None,
        }
    }

    /// The slot `alloc` holds, or a free one claimed for it (reset: a full
    /// bucket each way, the limit, the MTU towards clients, nothing
    /// learned of the client); none when every slot is in use.
    fn slot_for(&mut self, alloc: AllocId) -> Option<u32> {
        if let Some(i) = self.allocs.get(&alloc) {
            return Some(i.slot);
        }
        let slot = self.free.pop_front()?;
        let seen = self.counters(slot);
        if let Some(s) = self.path.slot(slot) {
            for w in [4, 5, 8, 9, 10, 11] {
                s[w].store(0, Ordering::Relaxed);
            }
            s[6].store(self.rate, Ordering::Relaxed);
            s[7].store(self.path.mtu, Ordering::Relaxed);
        }
        let entries = Vec::new();
        self.allocs.insert(
            alloc,
            Installed {
                slot,
                entries,
                seen,
            },
        );
        Some(slot)
    }

    /// Install `wanted` for `alloc` in `slot` (`old`: what it had
    /// installed); the entries now in the maps. One that cannot be
    /// installed is counted failed, and its channel stays in userspace.
    fn install_all(
        &mut self,
        alloc: AllocId,
        slot: u32,
        wanted: Vec<Entry>,
        old: &[Entry],
    ) -> Vec<Entry> {
        let mut entries = Vec::with_capacity(wanted.len());
        for mut e in wanted {
            e.tp.slot = slot;
            e.tc.slot = slot;
            if old.contains(&e) {
                entries.push(e);
                continue;
            }
            if let Err(err) = self.install(&e, old) {
                tracing::debug!(%alloc, %err, "xdp: an entry could not be installed; its channel stays in userspace");
                self.failed += 1;
                let _ = map_delete(&self.path.from_client, &e.ck);
                let _ = map_delete(&self.path.from_peer, &e.pk);
                continue;
            }
            entries.push(e);
        }
        entries
    }

    /// Write `e` into the maps. Where the same channel is installed (a
    /// refresh: only the expiry changed), the hops the program learned are
    /// carried over, so a refresh sends no datagram back to userspace.
    fn install(&self, e: &Entry, old: &[Entry]) -> io::Result<()> {
        let (mut tp, mut tc) = (e.tp, e.tc);
        if old.iter().any(|o| o.ck == e.ck && o.pk == e.pk) {
            let mut cur = [tp];
            if map_lookup(&self.path.from_client, &e.ck, &mut cur).is_ok() {
                tp.peer = cur[0].peer;
            }
            let mut cur = [tc];
            if map_lookup(&self.path.from_peer, &e.pk, &mut cur).is_ok() {
                tc.pushed = cur[0].pushed;
            }
        }
        map_update(&self.path.from_client, &e.ck, &tp)?;
        map_update(&self.path.from_peer, &e.pk, &tc)
    }

    /// What the fast path relayed for `alloc` since the last read.
    pub fn read(&mut self, alloc: AllocId) -> Traffic {
        let Some(slot) = self.allocs.get(&alloc).map(|i| i.slot) else {
            return Traffic::default();
        };
        let now = self.counters(slot);
        let Some(i) = self.allocs.get_mut(&alloc) else {
            return Traffic::default();
        };
        let delta = now.since(i.seen);
        i.seen = now;
        delta
    }

    /// Remove every entry of `alloc` and free its slot; returns what was
    /// relayed since the last read.
    fn withdraw(&mut self, alloc: AllocId) -> Traffic {
        let Some(i) = self.allocs.get(&alloc) else {
            return Traffic::default();
        };
        for e in &i.entries {
            let _ = map_delete(&self.path.from_client, &e.ck);
            let _ = map_delete(&self.path.from_peer, &e.pk);
        }
        let traffic = self.read(alloc);
        if let Some(i) = self.allocs.remove(&alloc) {
            self.free.push_back(i.slot);
        }
        traffic
    }

    fn counters(&self, slot: u32) -> Traffic {
        let Some(s) = self.path.slot(slot) else {
            return Traffic::default();
        };
        let v = |i: usize| s[i].load(Ordering::Relaxed);
        Traffic {
            packets_to_peer: v(0),
            bytes_to_peer: v(1),
            packets_to_client: v(2),
            bytes_to_client: v(3),
        }
    }

    /// The map entries for `channels` (slot not set): only where the
    /// client, the relay and the peer are of one family (cross-family
    /// stays in userspace).
    fn entries(&self, client: &FiveTuple, relay: SocketAddr, channels: &[Offload]) -> Vec<Entry> {
        let client_ip = canonical(client.remote.ip());
        let relay_ip = canonical(relay.ip());
        let server_ip = canonical(client.local.ip());
        let fam = family(&client_ip);
        if fam != family(&relay_ip) {
            return Vec::new();
        }
        let ends = Ends {
            fam,
            client_ip: ip16(client_ip),
            client_port: client.remote.port().to_be(),
            // A wildcard listener: the kernel's route lookup picks the
            // source, as it does for tern's own answers from that socket.
            server_ip: if server_ip.is_unspecified() || family(&server_ip) != fam {
                [0u8; 16]
            } else {
                ip16(server_ip)
            },
            server_port: client.local.port().to_be(),
            relay_ip: ip16(relay_ip),
            relay_port: relay.port().to_be(),
        };
        // On the program's clock, through one fixed pair of readings, so
        // the same expiry always gives the same value.
        let (base, base_ns) = self.path.clock;
        channels
            .iter()
            .filter(|o| family(&canonical(o.peer.ip())) == fam)
            .map(|o| {
                let expires_ns = base_ns
                    .saturating_add(o.expires.saturating_duration_since(base).as_nanos() as u64);
                ends.entry(o, expires_ns)
            })
            .collect()
    }
}

/// What every entry of one allocation shares, as the maps hold it
/// (ports in network order).
struct Ends {
    fam: u8,
    client_ip: [u8; 16],
    client_port: u16,
    server_ip: [u8; 16],
    server_port: u16,
    relay_ip: [u8; 16],
    relay_port: u16,
}

impl Ends {
    /// The two entries of channel `o`, expiring at `expires_ns` on the
    /// program's clock, slot 0 and hops unknown.
    fn entry(&self, o: &Offload, expires_ns: u64) -> Entry {
        let peer_ip = ip16(canonical(o.peer.ip()));
        let peer_port = o.peer.port().to_be();
        let channel = o.channel.to_be();
        Entry {
            ck: ClientKey {
                family: self.fam,
                pad: 0,
                channel,
                client_port: self.client_port,
                server_port: self.server_port,
                client_ip: self.client_ip,
            },
            tp: ToPeer {
                relay_ip: self.relay_ip,
                peer_ip,
                relay_port: self.relay_port,
                peer_port,
                slot: 0,
                expires_ns,
                peer: Hop::default(),
            },
            pk: PeerKey {
                family: self.fam,
                pad: [0; 3],
                peer_port,
                relay_port: self.relay_port,
                peer_ip,
                relay_ip: self.relay_ip,
            },
            tc: ToClient {
                server_ip: self.server_ip,
                client_ip: self.client_ip,
                server_port: self.server_port,
                client_port: self.client_port,
                channel,
                pad: 0,
                slot: 0,
                pad2: 0,
                expires_ns,
                pushed: Hop::default(),
            },
        }
    }
}

impl Drop for Offloads {
    fn drop(&mut self) {
        let ids: Vec<AllocId> = self.allocs.keys().copied().collect();
        for id in ids {
            self.withdraw(id);
        }
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    }
}

/// An address as the maps hold it: IPv4 in the first 4 bytes.
fn ip16(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// An instant and CLOCK_MONOTONIC in nanoseconds read just before it: the
/// pair every instant goes through on its way to the program's clock.
/// `Instant` reads CLOCK_MONOTONIC too, so with the nanoseconds read first
/// every converted time lands at or before its true reading: an entry
/// expires early by the gap between the two reads (userspace then answers
/// it), never late. Of a few tries, the one with the smallest gap, so that
/// a read preempted between the two does not stretch it.
pub(super) fn clock_pair() -> (std::time::Instant, u64) {
    let read = || {
        let before = monotonic_ns();
        let at = std::time::Instant::now();
        let after = monotonic_ns();
        (after.saturating_sub(before), (at, before))
    };
    let mut best = read();
    for _ in 0..3 {
        let next = read();
        if next.0 < best.0 {
            best = next;
        }
    }
    best.1
}

/// CLOCK_MONOTONIC in nanoseconds: the program's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_times_are_never_later_than_the_clock() {
        // An offer that expires "now" must already be expired for the
        // program: no conversion may land after the true reading.
        for _ in 0..1000 {
            let (base, base_ns) = clock_pair();
            let at = std::time::Instant::now();
            let converted = base_ns + at.duration_since(base).as_nanos() as u64;
            assert!(converted <= monotonic_ns());
        }
    }

    #[test]
    fn layouts_match_the_c_source() {
        assert_eq!(size_of::<ClientKey>(), 24);
        assert_eq!(size_of::<ToPeer>(), 64);
        assert_eq!(size_of::<PeerKey>(), 40);
        assert_eq!(size_of::<ToClient>(), 72);
    }
}
