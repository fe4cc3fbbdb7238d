//! The sans-IO STUN/TURN core: one per worker.
//!
//! [`Core`] owns the worker's allocations and decides what every datagram
//! means. It reads no clock (time arrives as [`Now`]), owns no socket and
//! spawns nothing: it acts through the [`Io`] trait, which the I/O layer
//! implements with real sockets and tests implement with a recorder.
//!
//! Inputs: [`Core::on_client`] (bytes from a client's 5-tuple),
//! [`Core::on_peer`] (bytes a relay received from a peer), [`Core::tick`]
//! (expiry), [`Core::on_client_closed`] (a TCP connection ended).

pub mod alloc;
mod labels;
mod methods;
mod offload;
mod quotas;
mod records;
mod relay;
pub mod response;
mod sessions;
pub mod slab;
pub mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{AuthError, Authenticated, Credentials, NonceIssuer, NonceState};
use crate::policy::PeerPolicy;
use crate::ratelimit::SourceLimiter;
use crate::wire::{self, Class, Kind, StunView, attr, method};

use alloc::{Allocation, Traffic};
pub use labels::{Family, Transport};
pub use offload::{Offered, Offload};
pub use quotas::{QuotaError, Quotas};
pub use records::{EndReason, Record};
use response::{Code, Seal};
pub use sessions::{Blocks, MAX_BLOCKS, SessionInfo};
pub use stats::{AuthFailure, DropReason, Stats};

/// A client's 5-tuple: transport, tern's address, the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// UDP or TCP.
    pub transport: Transport,
    /// tern's address: the listener the client reached.
    pub local: SocketAddr,
    /// The client's address.
    pub remote: SocketAddr,
}

/// The time, as handed in by the I/O layer (or a test's fake clock).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time, for lifetimes.
    pub instant: Instant,
    /// Wall-clock Unix seconds, for nonces and REST credential expiry.
    pub unix: u64,
}

pub use slab::AllocId;

/// Which relay port an Allocate asked for (RFC 8656 §14.6, §14.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Any port of the range.
    Any,
    /// EVEN-PORT: an even port, optionally reserving the next one.
    Even {
        /// Also reserve the next port (the R bit).
        reserve_next: bool,
    },
    /// RESERVATION-TOKEN from an earlier EVEN-PORT allocation.
    Reserved([u8; 8]),
}

/// What the core asks of the I/O layer when it opens a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRequest {
    /// The relay's address family.
    pub family: Family,
    /// Which port.
    pub port: PortRequest,
    /// Set DF on the relay socket (DONT-FRAGMENT).
    pub dont_fragment: bool,
}

/// An opened relay: its bound address and any reservation token made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayGrant {
    /// The relay's bound address.
    pub local: SocketAddr,
    /// The RESERVATION-TOKEN for the next port, when one was reserved.
    pub token: Option<[u8; 8]>,
}

/// Why no relay could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// Every port of the range is taken (508).
    #[error("no relay port left")]
    NoCapacity,
    /// The family has no relay address (440).
    #[error("no relay address of that family")]
    FamilyUnavailable,
}

/// The I/O the core drives. Sends are fire-and-forget (datagram semantics).
pub trait Io {
    /// Send bytes to a client over its 5-tuple.
    fn to_client(&mut self, client: &FiveTuple, bytes: &[u8]);
    /// Send a datagram from allocation `alloc`'s relay to `peer`.
    fn to_peer(&mut self, alloc: AllocId, peer: SocketAddr, bytes: &[u8]);
    /// Open a relay socket for allocation `alloc`.
    fn open_relay(&mut self, alloc: AllocId, req: &RelayRequest) -> Result<RelayGrant, RelayError>;
    /// Close allocation `alloc`'s relay socket.
    fn close_relay(&mut self, alloc: AllocId);
    /// Write an allocation record (only when records are on).
    fn record(&mut self, _record: Record) {}
    /// Allocation `alloc`'s channels that may be relayed without the core
    /// until each one's `expires` (none: withdraw every one), called
    /// whenever they may have changed once the core offloads
    /// ([`Core::set_offloading`]). Returns what the fast path relayed for
    /// the allocation since the last call of this or [`Io::offloaded`],
    /// and while any channel is offloaded, the bandwidth cells the fast
    /// path spends from.
    fn offload(&mut self, _alloc: AllocId, _client: &FiveTuple, _channels: &[Offload]) -> Offered {
        Offered::default()
    }
    /// What the fast path relayed for allocation `alloc` since the last
    /// call of this or [`Io::offload`].
    fn offloaded(&mut self, _alloc: AllocId) -> Traffic {
        Traffic::default()
    }
}

/// Everything the core reads from the configuration; swapped as a whole.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Static users and REST secrets.
    pub credentials: Credentials,
    /// Issues and checks stateless nonces.
    pub nonces: NonceIssuer,
    /// Which peers may be relayed to.
    pub policy: PeerPolicy,
    /// The SOFTWARE attribute, if any.
    pub software: Option<String>,
    /// Lifetimes and limits.
    pub limits: Limits,
    /// The IPv4 address advertised for relays, if not their own.
    pub external_v4: Option<Ipv4Addr>,
    /// The IPv6 address advertised for relays, if not their own.
    pub external_v6: Option<Ipv6Addr>,
    /// Where to send clients (300 Try Alternate) while draining.
    pub alternate_server: Option<SocketAddr>,
    /// Answer Binding only: every other request gets 400 "STUN only".
    pub stun_only: bool,
    /// Allocation records on, with interim records this often.
    pub records: Option<Duration>,
}

/// Lifetimes and limits the core enforces; the validated configuration
/// holds the same struct, so the two cannot drift apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Lifetime when the client asks for none or less.
    pub default_lifetime: Duration,
    /// The longest lifetime granted.
    pub max_lifetime: Duration,
    /// Allocations server-wide.
    pub max_allocations: u32,
    /// Allocations per user.
    pub max_allocations_per_user: u32,
    /// Permissions (peer IPs) per allocation.
    pub max_permissions: usize,
    /// Channel bindings per allocation.
    pub max_channels: usize,
    /// Accept RFC 5766 channel numbers 0x5000-0x7FFF too.
    pub legacy_channel_numbers: bool,
    /// Cap allocation lifetimes at the REST credential's expiry.
    pub strict_expiry: bool,
    /// Unauthenticated answers per second per source IP (0: unlimited).
    pub unauthenticated_rate: u32,
    /// Relayed bytes per second per allocation and direction (0: unlimited).
    pub max_bandwidth: u64,
}

/// One worker's protocol state.
pub struct Core {
    cfg: Arc<CoreConfig>,
    quotas: Arc<Quotas>,
    allocs: slab::Slab<Allocation>,
    /// Looked up for every datagram from a client, so hashed with foldhash
    /// (randomly seeded, several times cheaper than SipHash on a 5-tuple).
    /// Only authenticated Allocates insert keys, within the allocation
    /// quotas, so a flood of chosen addresses cannot grow it.
    by_client: HashMap<FiveTuple, AllocId, foldhash::fast::RandomState>,
    rng: u64,
    /// Whether new allocations are refused (draining).
    refuse_allocations: bool,
    limiter: SourceLimiter,
    /// Whether channels are offered to the I/O layer's fast path.
    offloading: bool,
    /// This worker's counters.
    pub stats: Stats,
}

/// The shortest TURN request without MESSAGE-INTEGRITY that gets a
/// challenge: an Allocate with only REQUESTED-TRANSPORT, as browsers send
/// first. Its 401 (header, ERROR-CODE, REALM "tern", a 16-character NONCE)
/// is 56 bytes, twice the request; shorter requests are dropped unanswered.
const MIN_CHALLENGED_LEN: usize = 28;

/// Why a TURN request did not authenticate, and so what it gets.
enum Reject {
    /// Too short to challenge within the amplification bound: dropped.
    Undersized,
    /// A challenge (401, or 438 for a stale nonce) with a fresh nonce.
    Challenge(Code, AuthFailure),
    /// 400, without a challenge.
    BadRequest(AuthFailure),
}

impl Core {
    /// A core for worker `worker` (ids are unique across workers);
    /// `epoch` is any instant not after the first `now` it will see.
    pub fn new(
        cfg: Arc<CoreConfig>,
        quotas: Arc<Quotas>,
        worker: u16,
        seed: u64,
        epoch: Instant,
    ) -> Self {
        Self {
            limiter: SourceLimiter::new(cfg.limits.unauthenticated_rate, epoch),
            offloading: false,
            cfg,
            quotas,
            allocs: slab::Slab::new(worker),
            by_client: HashMap::default(),
            rng: seed | 1,
            refuse_allocations: false,
            stats: Stats::default(),
        }
    }

    /// Swap in a new configuration; live allocations are kept.
    pub fn set_config(&mut self, cfg: Arc<CoreConfig>) {
        self.limiter.set_rate(cfg.limits.unauthenticated_rate);
        self.cfg = cfg;
    }

    /// Refuse (or accept again) new allocations, e.g. while draining.
    pub fn set_refuse_allocations(&mut self, refuse: bool) {
        self.refuse_allocations = refuse;
    }

    /// Number of live allocations in this worker.
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    /// Recompute the gauges in [`Stats`] (once a tick, not per packet).
    pub fn refresh_gauges(&mut self, now: Now) {
        let mut allocations = [[0u64; 2]; Transport::ALL.len()];
        let (mut permissions, mut channels) = (0u64, 0u64);
        for a in self.allocs.values() {
            let t = a.client.transport.index();
            let f = Family::of(&a.relayed).index();
            allocations[t][f] += 1;
            permissions += a.permission_count() as u64;
            channels += a.live_channels(now.instant) as u64;
        }
        self.stats.allocations = allocations;
        self.stats.permissions = permissions;
        self.stats.channels = channels;
    }

    /// The allocation owned by `client`, for tests and diagnostics.
    pub fn allocation_of(&self, client: &FiveTuple) -> Option<&Allocation> {
        self.by_client
            .get(client)
            .and_then(|&id| self.allocs.get(id))
    }

    /// The transport allocation `id`'s client uses, if it is live.
    pub fn client_transport(&self, id: AllocId) -> Option<Transport> {
        self.allocs.get(id).map(|a| a.client.transport)
    }

    /// A datagram (UDP) or one framed message (TCP) from a client.
    pub fn on_client(&mut self, now: Now, from: &FiveTuple, buf: &[u8], io: &mut impl Io) {
        match wire::kind(buf) {
            Kind::ChannelData => self.channel_data_from_client(now, from, buf, io),
            Kind::Stun => match StunView::parse(buf) {
                Ok(msg) => self.stun_from_client(now, from, &msg, io),
                Err(wire::WireError::NotStun) => self.classic_binding(now, from, buf, io),
                Err(_) => self.stats.drop(DropReason::Malformed),
            },
            Kind::Other => self.stats.drop(DropReason::Malformed),
        }
    }

    fn stun_from_client(
        &mut self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        io: &mut impl Io,
    ) {
        match (msg.class(), msg.method()) {
            (Class::Indication, method::SEND) => self.send_indication(now, from, msg, io),
            (Class::Request, method::BINDING) => self.binding(now, from, msg, io),
            (Class::Request, _) if self.cfg.stun_only => {
                // Answered, not dropped, so a client stops retrying at once.
                let seal = Seal::unauthenticated(msg, None);
                let answer = response::error_saying(msg, Code::BadRequest, "STUN only", seal);
                self.unauthenticated(now, from, &answer, io);
            }
            (Class::Request, m) => self.turn_request(now, from, msg, m, io),
            // Responses and other indications: nothing to do.
            _ => self.stats.drop(DropReason::Unexpected),
        }
    }

    /// STUN Binding (RFC 8489 §8.1): reflect the source address. No
    /// authentication (browsers send none), no per-source state.
    fn binding(&mut self, now: Now, from: &FiveTuple, msg: &StunView<'_>, io: &mut impl Io) {
        if !self.limiter.allow(from.remote.ip(), now.instant) {
            self.stats.drop(DropReason::RateLimited);
            return;
        }
        self.stats.binding_requests[from.transport.index()] += 1;
        if let Some(unknown) = unknown_required(msg) {
            let seal = Seal::unauthenticated(msg, None);
            io.to_client(from, &response::unknown_attributes(msg, &unknown, seal));
            return;
        }
        let mapped = stun::xoraddr::XorMappedAddress {
            ip: from.remote.ip(),
            port: from.remote.port(),
        };
        // SOFTWARE only when the answer stays within twice the request.
        let seal = Seal::unauthenticated(msg, self.cfg.software.as_deref());
        io.to_client(from, &response::success(msg, vec![Box::new(mapped)], seal));
    }

    /// RFC 3489 Binding (RFC 8489 §12 backwards compatibility): answer with
    /// MAPPED-ADDRESS. Requests to answer from another address or port get
    /// no answer, as from a server that has no second address.
    fn classic_binding(&mut self, now: Now, from: &FiveTuple, buf: &[u8], io: &mut impl Io) {
        match wire::classic_binding(buf) {
            Some(false) => {
                if !self.limiter.allow(from.remote.ip(), now.instant) {
                    self.stats.drop(DropReason::RateLimited);
                    return;
                }
                self.stats.binding_requests[from.transport.index()] += 1;
                let mut out = [0u8; 44];
                let n = wire::classic_binding_answer(buf, &from.remote, &mut out);
                io.to_client(from, &out[..n]);
            }
            Some(true) => self.stats.drop(DropReason::Unexpected),
            None => self.stats.drop(DropReason::Malformed),
        }
    }

    /// Authenticate a TURN request (RFC 8489 §9.2.4). On failure the
    /// challenge or error is sent (or, for an undersized request, nothing)
    /// and `None` returned.
    fn authenticate(
        &mut self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        io: &mut impl Io,
    ) -> Option<Authenticated> {
        let reject = match self.check_credentials(now, from, msg) {
            Ok(a) => return Some(a),
            Err(r) => r,
        };
        let answer = match reject {
            Reject::Undersized => {
                self.stats.drop(DropReason::Undersized);
                return None;
            }
            Reject::Challenge(code, why) => {
                self.stats.auth_failure(why);
                let tcp = from.transport.is_stream();
                let nonce = self.cfg.nonces.issue(now.unix, tcp, &from.remote);
                response::challenge(msg, code, self.cfg.credentials.realm(), nonce)
            }
            Reject::BadRequest(why) => {
                self.stats.auth_failure(why);
                let seal = Seal::unauthenticated(msg, None);
                response::error(msg, Code::BadRequest, vec![], seal)
            }
        };
        self.unauthenticated(now, from, &answer, io);
        None
    }

    /// The long-term credential check: MESSAGE-INTEGRITY with USERNAME,
    /// REALM and a valid NONCE, and a key that verifies it.
    fn check_credentials(
        &self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
    ) -> Result<Authenticated, Reject> {
        let Some((header, body, mac)) = msg.integrity() else {
            if msg.bytes().len() < MIN_CHALLENGED_LEN {
                return Err(Reject::Undersized);
            }
            return Err(Reject::Challenge(Code::Unauthorized, AuthFailure::Missing));
        };
        let (Some(user), Some(_), Some(nonce)) = (
            msg.attr(attr::USERNAME),
            msg.attr(attr::REALM),
            msg.attr(attr::NONCE),
        ) else {
            return Err(Reject::BadRequest(AuthFailure::Malformed));
        };
        let tcp = from.transport.is_stream();
        if self.cfg.nonces.check(nonce, now.unix, tcp, &from.remote) != NonceState::Valid {
            return Err(Reject::Challenge(Code::StaleNonce, AuthFailure::StaleNonce));
        }
        let unauthorized = |why| Reject::Challenge(Code::Unauthorized, why);
        let user = std::str::from_utf8(user).map_err(|_| unauthorized(AuthFailure::UnknownUser))?;
        let verify = |key: &[u8; 16]| crate::auth::verify_integrity(key, &header, body, mac);
        self.cfg
            .credentials
            .authenticate(user, now.unix, verify)
            .map_err(|e| {
                unauthorized(match e {
                    AuthError::UnknownUser => AuthFailure::UnknownUser,
                    AuthError::Expired => AuthFailure::Expired,
                    AuthError::BadIntegrity => AuthFailure::BadIntegrity,
                })
            })
    }

    /// Send an answer to an unauthenticated request, within the per-source
    /// rate limit (beyond it the answer is dropped and counted).
    fn unauthenticated(&mut self, now: Now, to: &FiveTuple, answer: &[u8], io: &mut impl Io) {
        if self.limiter.allow(to.remote.ip(), now.instant) {
            io.to_client(to, answer);
        } else {
            self.stats.drop(DropReason::RateLimited);
        }
    }

    /// Allocate, Refresh, CreatePermission, ChannelBind.
    fn turn_request(
        &mut self,
        now: Now,
        from: &FiveTuple,
        msg: &StunView<'_>,
        m: u16,
        io: &mut impl Io,
    ) {
        if !matches!(
            m,
            method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND
        ) {
            let seal = Seal::unauthenticated(msg, None);
            self.unauthenticated(
                now,
                from,
                &response::error(msg, Code::BadRequest, vec![], seal),
                io,
            );
            return;
        }
        // A retransmission of a request this allocation already answered gets
        // the same answer again (RFC 8656 §7.2, §7.3; RFC 8489 §6.3.1).
        if let Some(a) = self.by_client.get(from).and_then(|&id| self.allocs.get(id)) {
            if let Some(answer) = a.cached_answer(&msg.transaction_id(), now.instant) {
                self.stats.retransmissions += 1;
                io.to_client(from, answer);
                return;
            }
        }
        let Some(auth) = self.authenticate(now, from, msg, io) else {
            return;
        };
        let cfg = Arc::clone(&self.cfg);
        let seal = Seal::for_request(msg, Some(&auth.key), cfg.software.as_deref());
        if let Some(unknown) = unknown_required(msg) {
            io.to_client(from, &response::unknown_attributes(msg, &unknown, seal));
            return;
        }
        let answer = match m {
            method::ALLOCATE => self.allocate(now, from, msg, &auth, seal, io),
            _ => {
                let Some(&id) = self.by_client.get(from) else {
                    let answer = response::error(msg, Code::AllocationMismatch, vec![], seal);
                    io.to_client(from, &answer);
                    return;
                };
                if self
                    .allocs
                    .get(id)
                    .is_some_and(|a| a.username != auth.username)
                {
                    let answer = response::error(msg, Code::WrongCredentials, vec![], seal);
                    io.to_client(from, &answer);
                    return;
                }
                let answer = match m {
                    method::REFRESH => self.refresh(now, id, msg, seal, io),
                    method::CREATE_PERMISSION => self.create_permission(now, id, msg, seal),
                    _ => self.channel_bind(now, id, msg, seal),
                };
                // Offered before the answer leaves, so a client's first
                // ChannelData after its ChannelBind finds the fast path set.
                self.offload(now, id, io);
                answer
            }
        };
        io.to_client(from, &answer);
    }

    /// Expire allocations, permissions and channels. Call about once a
    /// second; lifetimes are also checked per packet, so the tick only frees
    /// memory and relays.
    pub fn tick(&mut self, now: Now, io: &mut impl Io) {
        let expired: Vec<AllocId> = self
            .allocs
            .values()
            .filter(|a| a.expires <= now.instant || self.credential_expired(a, now))
            .map(|a| a.id)
            .collect();
        for id in expired {
            self.stats.allocations_expired += 1;
            let why = match self.allocs.get(id) {
                Some(a) if self.credential_expired(a, now) => EndReason::CredentialExpired,
                _ => EndReason::Expired,
            };
            self.remove(id, now, io, why);
        }
        self.tick_offloads(now, io);
        self.interim_records(now, io);
        for a in self.allocs.values_mut() {
            a.sweep(now.instant);
        }
    }

    fn credential_expired(&self, a: &Allocation, now: Now) -> bool {
        self.cfg.limits.strict_expiry && a.credential_expires_unix.is_some_and(|e| e <= now.unix)
    }
}

/// A Data indication's transaction ID from the xorshift64* state `rng`:
/// unique-ish, not secret (RFC 8656 §11.4 lets the server pick freely).
fn next_txid(rng: &mut u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    for chunk in out.chunks_mut(6) {
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let v = rng.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..6]);
    }
    out
}

/// Comprehension-required attributes tern does not understand, if any.
fn unknown_required(msg: &StunView<'_>) -> Option<Vec<u16>> {
    let unknown: Vec<u16> = msg
        .attrs()
        .map(|(t, _)| t)
        .filter(|t| *t < 0x8000 && !attr::is_known_required(*t))
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}

/// The address family an IP belongs to, after IPv4-mapped canonicalisation.
fn family_of_ip(ip: &IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

#[cfg(test)]
mod tests;
