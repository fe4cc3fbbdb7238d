//! The per-packet path: ChannelData and Send indications from clients,
//! datagrams from peers (RFC 8656 §11, §12). No allocation, no lock; the
//! payload is never copied by the core.

use std::net::SocketAddr;

use super::stats::DropReason;
use super::{AllocId, Core, CoreConfig, FiveTuple, Io, Now, Transport, next_txid};
use crate::policy::canonical;
use crate::ratelimit::Bandwidth;
use crate::wire::{self, StunView, attr};

impl Core {
    /// ChannelData from a client (RFC 8656 §12.4).
    pub(super) fn channel_data_from_client(
        &mut self,
        now: Now,
        from: &FiveTuple,
        buf: &[u8],
        io: &mut impl Io,
    ) {
        let Some((number, payload)) = wire::parse_channel_data(buf) else {
            self.stats.drop(DropReason::Malformed);
            return;
        };
        let Some(a) = self.allocation_of(from) else {
            self.stats.drop(DropReason::NoAllocation);
            return;
        };
        let Some(peer) = a.channel_peer(number, now.instant) else {
            self.stats.drop(DropReason::NoChannel);
            return;
        };
        let id = a.id;
        self.relay_to_peer(now, id, peer, payload, from.transport, io);
    }

    /// A Send indication (RFC 8656 §11.2): no answer is ever sent.
    pub(super) fn send_indication(
        &mut self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        io: &mut impl Io,
    ) {
        let Some(&id) = self.by_client.get(from) else {
            self.stats.drop(DropReason::NoAllocation);
            return;
        };
        let txid = msg.transaction_id();
        let peer = msg
            .attr(attr::XOR_PEER_ADDRESS)
            .and_then(|v| wire::decode_xor_address(v, &txid));
        let (Some(peer), Some(data)) = (peer, msg.attr(attr::DATA)) else {
            self.stats.drop(DropReason::Malformed);
            return;
        };
        self.relay_to_peer(now, id, peer, data, from.transport, io);
    }

    fn relay_to_peer(
        &mut self,
        now: Now,
        id: AllocId,
        peer: SocketAddr,
        payload: &[u8],
        transport: Transport,
        io: &mut impl Io,
    ) {
        let Some(a) = self.allocs.get_mut(id) else {
            return;
        };
        let permitted = a.permits(&peer.ip(), now.instant);
        let bucket = &mut a.bandwidth_to_peer;
        if let Err(reason) = admit(&self.cfg, bucket, permitted, peer, payload.len(), now) {
            self.stats.drop(reason);
            return;
        }
        a.traffic.bytes_to_peer += payload.len() as u64;
        a.traffic.packets_to_peer += 1;
        self.stats.relayed(true, transport, payload.len());
        io.to_peer(id, peer, payload);
    }

    /// A datagram from `peer` arrived on allocation `id`'s relay. The payload
    /// sits at `buf[payload]` with at least [`wire::PEER_HEADROOM`] bytes
    /// free before it and 3 after it, so the ChannelData header or Data
    /// indication is written around it in place.
    pub fn on_peer(
        &mut self,
        now: Now,
        id: AllocId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: std::ops::Range<usize>,
        io: &mut impl Io,
    ) {
        let (start, len) = (payload.start, payload.len());
        let Some(a) = self.allocs.get_mut(id) else {
            self.stats.drop(DropReason::NoAllocation);
            return;
        };
        // Peers may arrive as IPv4-mapped addresses on a dual-stack socket.
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let permitted = a.permits(&peer.ip(), now.instant);
        let bucket = &mut a.bandwidth_to_client;
        if let Err(reason) = admit(&self.cfg, bucket, permitted, peer, len, now) {
            self.stats.drop(reason);
            return;
        }
        let client = a.client;
        let tcp = client.transport.is_stream();
        let framed = match a.channel_for(&peer, now.instant) {
            Some(number) => wire::frame_channel_data(buf, start, len, number, tcp),
            // Only Data indications need a transaction ID.
            None => {
                let txid = next_txid(&mut self.rng);
                wire::frame_data_indication(buf, start, len, &peer, &txid)
            }
        };
        let Some(range) = framed else {
            self.stats.drop(DropReason::TooLarge);
            return;
        };
        a.traffic.bytes_to_client += len as u64;
        a.traffic.packets_to_client += 1;
        self.stats.relayed(false, client.transport, len);
        io.to_client(&client, &buf[range]);
    }
}

/// The checks every relayed packet passes, in both directions: a live
/// permission for the peer's IP, the peer policy (re-checked so a reload
/// applies at once), and the direction's bandwidth bucket.
fn admit(
    cfg: &CoreConfig,
    bucket: &mut Bandwidth,
    permitted: bool,
    peer: SocketAddr,
    len: usize,
    now: Now,
) -> Result<(), DropReason> {
    if !permitted {
        return Err(DropReason::NoPermission);
    }
    if cfg.policy.check_addr(peer).is_err() {
        return Err(DropReason::DeniedPeer);
    }
    if !bucket.spend(len, now.instant, cfg.limits.max_bandwidth) {
        return Err(DropReason::Bandwidth);
    }
    Ok(())
}
