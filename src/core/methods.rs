//! TURN requests on the control plane, one function per method
//! (RFC 8656 §7 Allocate/Refresh, §9 CreatePermission, §12 ChannelBind).
//! Each returns the answer to send; successes are cached for
//! retransmissions.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use stun::message::Setter;
use turn::proto::lifetime::Lifetime;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::rsrvtoken::ReservationToken;

use super::alloc::Allocation;
use super::response::{self, Code, Seal};
use super::stats::Rejection;
use super::{
    AllocId, Core, Family, FiveTuple, Io, Now, PortRequest, RelayError, RelayGrant, RelayRequest,
    family_of_ip,
};
use crate::auth::Authenticated;
use crate::policy::canonical;
use crate::wire::{StunView, attr, decode_xor_address};

/// UDP, the only REQUESTED-TRANSPORT tern relays (RFC 8656 §7.2).
const PROTO_UDP: u8 = 17;

/// Why an Allocate is refused.
enum Refusal {
    /// An error answer, counted under the rejection reason if any.
    Error(Code, Option<Rejection>),
    /// Draining: 300 Try Alternate when configured, else 508.
    Draining,
}

/// What an admitted Allocate is granted.
struct Grant {
    id: AllocId,
    relay: RelayGrant,
    lifetime: Duration,
}

impl Core {
    /// Allocate (RFC 8656 §7.2), after authentication: admit the request,
    /// take its quota and relay, then record it.
    pub(super) fn allocate(
        &mut self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        auth: &Authenticated,
        seal: Seal<'_>,
        io: &mut impl Io,
    ) -> Vec<u8> {
        let granted = self
            .admit_allocate(now, from, msg, auth)
            .and_then(|(req, lifetime)| self.open_allocation(auth, &req, lifetime, io));
        match granted {
            Ok(g) => self.record_allocation(now, from, msg, auth, g, seal),
            Err(r) => self.refuse(msg, r, seal),
        }
    }

    /// The checks of RFC 8656 §7.2 that take nothing: no allocation on
    /// this 5-tuple yet, valid attributes, not draining, a lifetime.
    fn admit_allocate(
        &self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        auth: &Authenticated,
    ) -> Result<(RelayRequest, Duration), Refusal> {
        if self.by_client.contains_key(from) {
            // Not a retransmission (those were answered from the cache).
            return Err(Refusal::Error(Code::AllocationMismatch, None));
        }
        let req = parse_allocate(msg).map_err(|code| {
            let reason = if code == Code::AddressFamilyNotSupported {
                Rejection::Family
            } else {
                Rejection::BadRequest
            };
            Refusal::Error(code, Some(reason))
        })?;
        if self.refuse_allocations {
            return Err(Refusal::Draining);
        }
        if self.quotas.blocks.blocked(auth.user(), now.unix) {
            return Err(Refusal::Error(Code::Forbidden, Some(Rejection::Blocked)));
        }
        match self.granted_lifetime(msg, auth.expires_unix, now) {
            Some(l) if !l.is_zero() => Ok((req, l)),
            _ => Err(Refusal::Error(Code::BadRequest, None)),
        }
    }

    /// Take the user's quota, an id and a relay; a failure gives back
    /// what was taken.
    fn open_allocation(
        &mut self,
        auth: &Authenticated,
        req: &RelayRequest,
        lifetime: Duration,
        io: &mut impl Io,
    ) -> Result<Grant, Refusal> {
        let limits = &self.cfg.limits;
        let quota = self.quotas.acquire(
            &auth.username,
            limits.max_allocations,
            limits.max_allocations_per_user,
        );
        if quota.is_err() {
            // 486 for the per-user and the server-wide quota alike, as
            // coturn answers: a client treats it as "not now, not here",
            // and 508 stays the signal for relay port exhaustion.
            return Err(Refusal::Error(
                Code::AllocationQuotaReached,
                Some(Rejection::Quota),
            ));
        }
        let opened = self
            .allocs
            .next_id()
            .ok_or(RelayError::NoCapacity)
            .and_then(|id| Ok((id, io.open_relay(id, req)?)));
        match opened {
            Ok((id, relay)) => Ok(Grant {
                id,
                relay,
                lifetime,
            }),
            Err(e) => {
                self.quotas.release(&auth.username);
                Err(match e {
                    RelayError::NoCapacity => {
                        Refusal::Error(Code::InsufficientCapacity, Some(Rejection::Capacity))
                    }
                    RelayError::FamilyUnavailable => {
                        Refusal::Error(Code::AddressFamilyNotSupported, Some(Rejection::Family))
                    }
                })
            }
        }
    }

    /// The answer to a refused Allocate, counted.
    fn refuse(&mut self, msg: &StunView<'_>, refusal: Refusal, seal: Seal<'_>) -> Vec<u8> {
        match refusal {
            Refusal::Error(code, reason) => {
                if let Some(r) = reason {
                    self.stats.reject(r);
                }
                response::error(msg, code, vec![], seal)
            }
            Refusal::Draining => {
                self.stats.reject(Rejection::Draining);
                match self.cfg.alternate_server {
                    Some(alt) => response::try_alternate(msg, alt, seal),
                    None => response::error(msg, Code::InsufficientCapacity, vec![], seal),
                }
            }
        }
    }

    /// Record a granted allocation and answer with its relayed address,
    /// lifetime and mapped address (and reservation token).
    fn record_allocation(
        &mut self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        auth: &Authenticated,
        g: Grant,
        seal: Seal<'_>,
    ) -> Vec<u8> {
        let relayed = self.advertised(g.relay.local);
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(RelayedAddress {
                ip: relayed.ip(),
                port: relayed.port(),
            }),
            Box::new(Lifetime(g.lifetime)),
            Box::new(stun::xoraddr::XorMappedAddress {
                ip: from.remote.ip(),
                port: from.remote.port(),
            }),
        ];
        if let Some(token) = g.relay.token {
            attrs.push(Box::new(ReservationToken(token.to_vec())));
        }
        let answer = response::success(msg, attrs, seal);
        let mut a = Allocation::new(
            g.id,
            *from,
            relayed,
            auth.username.clone(),
            auth.key,
            auth.expires_unix,
            now.instant,
            now.instant + g.lifetime,
        );
        a.cache_answer(msg.transaction_id(), &answer, now.instant);
        self.allocs.insert(g.id, a);
        self.by_client.insert(*from, g.id);
        self.stats.allocations_created[from.transport.index()] += 1;
        tracing::info!(
            alloc = %g.id,
            user = %auth.username,
            client = %from.remote,
            transport = ?from.transport,
            relay = %relayed,
            lifetime_seconds = g.lifetime.as_secs(),
            "allocation created"
        );
        answer
    }

    /// The address to advertise for a relay bound at `local`.
    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        match local {
            SocketAddr::V4(_) => self
                .cfg
                .external_v4
                .map_or(local, |ip| SocketAddr::new(IpAddr::V4(ip), local.port())),
            SocketAddr::V6(_) => self
                .cfg
                .external_v6
                .map_or(local, |ip| SocketAddr::new(IpAddr::V6(ip), local.port())),
        }
    }

    /// The lifetime to grant: LIFETIME (or the default) clamped to
    /// `[default, max]` (RFC 8656 §7.2), then, with strict expiry, to the REST
    /// credential's expiry. `Some(0)` asks for deletion. `None` if malformed.
    fn granted_lifetime(
        &self,
        msg: &StunView<'_>,
        credential_expires: Option<u64>,
        now: Now,
    ) -> Option<Duration> {
        let requested = match msg.attr(attr::LIFETIME) {
            None => self.cfg.limits.default_lifetime,
            Some(v) => Duration::from_secs(u64::from(u32::from_be_bytes(v.try_into().ok()?))),
        };
        if requested.is_zero() {
            return Some(Duration::ZERO);
        }
        let mut granted = requested.min(self.cfg.limits.max_lifetime).max(
            self.cfg
                .limits
                .default_lifetime
                .min(self.cfg.limits.max_lifetime),
        );
        if let (true, Some(exp)) = (self.cfg.limits.strict_expiry, credential_expires) {
            granted = granted.min(Duration::from_secs(exp.saturating_sub(now.unix)));
        }
        Some(granted)
    }

    /// Refresh (RFC 8656 §7.3): extend, or delete with LIFETIME 0.
    pub(super) fn refresh(
        &mut self,
        now: Now,
        id: AllocId,
        msg: &StunView<'_>,
        seal: Seal<'_>,
        io: &mut impl Io,
    ) -> Vec<u8> {
        let Some(a) = self.allocs.get(id) else {
            return response::error(msg, Code::AllocationMismatch, vec![], seal);
        };
        if let Some(v) = msg.attr(attr::REQUESTED_ADDRESS_FAMILY) {
            if parse_family(v) != Ok(Family::of(&a.relayed)) {
                return response::error(msg, Code::PeerAddressFamilyMismatch, vec![], seal);
            }
        }
        let Some(lifetime) = self.granted_lifetime(msg, a.credential_expires_unix, now) else {
            return response::error(msg, Code::BadRequest, vec![], seal);
        };
        let answer = response::success(msg, vec![Box::new(Lifetime(lifetime))], seal);
        if lifetime.is_zero() {
            self.remove(id, now, io, super::EndReason::Client);
        } else if let Some(a) = self.allocs.get_mut(id) {
            a.expires = now.instant + lifetime;
            a.cache_answer(msg.transaction_id(), &answer, now.instant);
        }
        answer
    }

    /// CreatePermission (RFC 8656 §9.2): installs EVERY XOR-PEER-ADDRESS,
    /// or none if any is refused.
    pub(super) fn create_permission(
        &mut self,
        now: Now,
        id: AllocId,
        msg: &StunView<'_>,
        seal: Seal<'_>,
    ) -> Vec<u8> {
        let err = |c: Code| response::error(msg, c, vec![], seal);
        let Some(a) = self.allocs.get(id) else {
            return err(Code::AllocationMismatch);
        };
        let txid = msg.transaction_id();
        let mut peers: Vec<IpAddr> = Vec::new();
        for (t, v) in msg.attrs() {
            if t != attr::XOR_PEER_ADDRESS {
                continue;
            }
            let Some(peer) = decode_xor_address(v, &txid) else {
                return err(Code::BadRequest);
            };
            let ip = canonical(peer.ip());
            if family_of_ip(&peer.ip()) != Family::of(&a.relayed) {
                return err(Code::PeerAddressFamilyMismatch);
            }
            if self.cfg.policy.check_ip(ip).is_err() {
                self.stats.peer_denied += 1;
                return err(Code::Forbidden);
            }
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return err(Code::BadRequest);
        }
        let new = peers.iter().filter(|ip| !a.has_permission(ip)).count();
        if a.permission_count() + new > self.cfg.limits.max_permissions {
            return err(Code::InsufficientCapacity);
        }
        let answer = response::success(msg, vec![], seal);
        if let Some(a) = self.allocs.get_mut(id) {
            for ip in peers {
                a.permit(ip, now.instant);
            }
            a.cache_answer(txid, &answer, now.instant);
        }
        answer
    }

    /// ChannelBind (RFC 8656 §12.2).
    pub(super) fn channel_bind(
        &mut self,
        now: Now,
        id: AllocId,
        msg: &StunView<'_>,
        seal: Seal<'_>,
    ) -> Vec<u8> {
        let err = |c: Code| response::error(msg, c, vec![], seal);
        let Some(a) = self.allocs.get(id) else {
            return err(Code::AllocationMismatch);
        };
        let txid = msg.transaction_id();
        let number = match msg.attr(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) => u16::from_be_bytes([hi, lo]),
            other => {
                tracing::debug!(
                    alloc = %id,
                    ?other,
                    "channel bind without a valid CHANNEL-NUMBER"
                );
                return err(Code::BadRequest);
            }
        };
        let Some(peer) = msg
            .attr(attr::XOR_PEER_ADDRESS)
            .and_then(|v| decode_xor_address(v, &txid))
        else {
            return err(Code::BadRequest);
        };
        let last = if self.cfg.limits.legacy_channel_numbers {
            0x7FFF
        } else {
            0x4FFF
        };
        if !(0x4000..=last).contains(&number) || !a.may_bind(number, &peer) {
            tracing::debug!(alloc = %id, number, %peer, "channel bind refused: number out of range or bound elsewhere");
            return err(Code::BadRequest);
        }
        if family_of_ip(&peer.ip()) != Family::of(&a.relayed) {
            return err(Code::PeerAddressFamilyMismatch);
        }
        if self.cfg.policy.check_addr(peer).is_err() {
            self.stats.peer_denied += 1;
            return err(Code::Forbidden);
        }
        let is_new = a.channel_for(&peer, now.instant).is_none();
        let new_permission = !a.has_permission(&peer.ip());
        if (is_new && a.live_channels(now.instant) >= self.cfg.limits.max_channels)
            || (new_permission && a.permission_count() >= self.cfg.limits.max_permissions)
        {
            return err(Code::InsufficientCapacity);
        }
        let answer = response::success(msg, vec![], seal);
        if let Some(a) = self.allocs.get_mut(id) {
            a.bind(number, peer, now.instant);
            a.cache_answer(txid, &answer, now.instant);
        }
        answer
    }
}

/// Parse Allocate's transport, family and port attributes (RFC 8656 §7.2).
fn parse_allocate(msg: &StunView<'_>) -> Result<RelayRequest, Code> {
    match msg.attr(attr::REQUESTED_TRANSPORT) {
        Some(&[PROTO_UDP, _, _, _]) => {}
        Some(&[_, _, _, _]) => return Err(Code::UnsupportedTransport),
        _ => return Err(Code::BadRequest),
    }
    let token = msg.attr(attr::RESERVATION_TOKEN);
    let even = msg.attr(attr::EVEN_PORT);
    let family = msg.attr(attr::REQUESTED_ADDRESS_FAMILY);
    let port = match (token, even) {
        (Some(_), Some(_)) => return Err(Code::BadRequest),
        (Some(t), None) => {
            let t: [u8; 8] = t.try_into().map_err(|_| Code::BadRequest)?;
            if family.is_some() {
                return Err(Code::BadRequest);
            }
            PortRequest::Reserved(t)
        }
        (None, Some(&[flags, ..])) => PortRequest::Even {
            reserve_next: flags & 0x80 != 0,
        },
        (None, Some(_)) => return Err(Code::BadRequest),
        (None, None) => PortRequest::Any,
    };
    let family = match family {
        Some(v) => parse_family(v)?,
        None => Family::V4,
    };
    Ok(RelayRequest {
        family,
        port,
        dont_fragment: msg.attr(attr::DONT_FRAGMENT).is_some(),
    })
}

/// REQUESTED-ADDRESS-FAMILY (RFC 6156 §4.1.1): 0x01 IPv4, 0x02 IPv6.
fn parse_family(v: &[u8]) -> Result<Family, Code> {
    match v {
        [0x01, _, _, _] => Ok(Family::V4),
        [0x02, _, _, _] => Ok(Family::V6),
        [_, _, _, _] => Err(Code::AddressFamilyNotSupported),
        _ => Err(Code::BadRequest),
    }
}
