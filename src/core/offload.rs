//! Offloading channels to a fast path (the XDP program of `io::xdp`): the
//! core decides which of an allocation's channels may be relayed without
//! it, and until when; the I/O layer installs them and reports back what
//! the fast path relayed, which the core counts as if it had relayed it.
//!
//! A channel is offered only when every check the per-packet path makes
//! would pass for it until the offer's `expires`: a UDP client, a live
//! channel, a live permission for its peer, the peer policy (re-checked
//! for every allocation when the configuration changes, so a reload that
//! denies a peer withdraws it at once), the allocation's lifetime and,
//! with strict expiry, the REST credential's. The bandwidth limit is the
//! one check both paths make on every datagram, from one bucket: while
//! anything is offloaded, the allocation's buckets spend from the cells
//! the I/O layer hands back ([`Offered::buckets`]), which the fast path
//! spends from too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::alloc::Traffic;
use super::{AllocId, Allocation, Core, Io, Now, Transport};
use crate::ratelimit::SharedCell;

/// A channel the fast path may relay until `expires`, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// The channel number.
    pub channel: u16,
    /// The peer bound to it.
    pub peer: SocketAddr,
    /// The earliest of the channel's, the permission's, the allocation's
    /// and (with strict expiry) the credential's expiry.
    pub expires: Instant,
}

/// What the I/O layer answers an offer with.
#[derive(Debug, Default)]
pub struct Offered {
    /// What the fast path relayed for the allocation since the last
    /// report.
    pub traffic: Traffic,
    /// While channels are offloaded: the bandwidth cells towards the peer
    /// and towards the client, which the fast path spends from too.
    pub buckets: Option<[SharedCell; 2]>,
}

impl Core {
    /// Offer channels to the I/O layer's fast path from now on (off by
    /// default: nothing is offered).
    pub fn set_offloading(&mut self, on: bool) {
        self.offloading = on;
    }

    /// The channels of `a` that may be relayed without the core now.
    fn offloads(&self, a: &Allocation, now: Now) -> Vec<Offload> {
        if !self.offloading || a.client.transport != Transport::Udp {
            return Vec::new();
        }
        let mut until = a.expires;
        if self.cfg.limits.strict_expiry {
            if let Some(exp) = a.credential_expires_unix {
                let left = Duration::from_secs(exp.saturating_sub(now.unix));
                until = until.min(now.instant + left);
            }
        }
        a.live_channel_list(now.instant)
            .filter(|(_, c)| self.cfg.policy.check_addr(c.peer).is_ok())
            .filter_map(|(channel, c)| {
                let permission = a.permission_expiry(&c.peer.ip(), now.instant)?;
                let expires = c.expires.min(permission).min(until);
                (expires > now.instant).then_some(Offload {
                    channel,
                    peer: c.peer,
                    expires,
                })
            })
            .collect()
    }

    /// Tell the I/O layer which of allocation `id`'s channels it may relay
    /// without the core now (none when it is gone), and count what its
    /// fast path relayed meanwhile.
    pub(super) fn offload(&mut self, now: Now, id: AllocId, io: &mut impl Io) {
        if !self.offloading {
            return;
        }
        let Some(a) = self.allocs.get(id) else {
            return;
        };
        let offers = self.offloads(a, now);
        let client = a.client;
        let offered = io.offload(id, &client, &offers);
        self.offered(id, offers.iter().map(|o| o.expires).min(), offered);
    }

    /// Withdraw everything offered for allocation `id` before it goes, and
    /// count what the fast path relayed for it until then.
    pub(super) fn withdraw(&mut self, id: AllocId, io: &mut impl Io) {
        // Nothing installed: nothing to withdraw, nothing left to count.
        let Some(a) = self.allocs.get(id).filter(|a| a.offloaded_until.is_some()) else {
            return;
        };
        let client = a.client;
        let offered = io.offload(id, &client, &[]);
        self.offered(id, None, offered);
    }

    /// Take the I/O layer's answer to an offer for allocation `id`: count
    /// its traffic, and spend from the shared bandwidth cells while
    /// anything is offloaded (`until`: the earliest offer's expiry).
    fn offered(&mut self, id: AllocId, until: Option<Instant>, offered: Offered) {
        if let Some(a) = self.allocs.get_mut(id) {
            a.offloaded_until = until.filter(|_| offered.buckets.is_some());
            let [to_peer, to_client] = match offered.buckets {
                Some([p, c]) => [Some(p), Some(c)],
                None => [None, None],
            };
            a.bandwidth_to_peer.share(to_peer);
            a.bandwidth_to_client.share(to_client);
        }
        self.count_offloaded(id, offered.traffic);
    }

    /// Re-offer every allocation's channels (after a configuration change:
    /// the peer policy or the limits may have changed).
    pub fn reoffload_all(&mut self, now: Now, io: &mut impl Io) {
        if !self.offloading {
            return;
        }
        let ids: Vec<AllocId> = self.allocs.values().map(|a| a.id).collect();
        for id in ids {
            self.offload(now, id, io);
        }
    }

    /// On the tick: count what the fast path relayed for every offloaded
    /// allocation, and re-offer those whose earliest offer has expired.
    pub(super) fn tick_offloads(&mut self, now: Now, io: &mut impl Io) {
        if !self.offloading {
            return;
        }
        let offloaded: Vec<(AllocId, Instant)> = self
            .allocs
            .values()
            .filter_map(|a| Some((a.id, a.offloaded_until?)))
            .collect();
        for (id, until) in offloaded {
            if until <= now.instant {
                self.offload(now, id, io);
            } else {
                let traffic = io.offloaded(id);
                self.count_offloaded(id, traffic);
            }
        }
    }

    /// Count what the fast path relayed for allocation `id`: in its
    /// traffic (records, sessions, logs) and in the worker's counters.
    fn count_offloaded(&mut self, id: AllocId, t: Traffic) {
        if t == Traffic::default() {
            return;
        }
        if let Some(a) = self.allocs.get_mut(id) {
            a.traffic.bytes_to_peer += t.bytes_to_peer;
            a.traffic.bytes_to_client += t.bytes_to_client;
            a.traffic.packets_to_peer += t.packets_to_peer;
            a.traffic.packets_to_client += t.packets_to_client;
        }
        self.stats.offloaded(t);
    }
}
