//! Per-worker counters, plain integers bumped on the per-packet path and
//! summed across workers when metrics are read. Labels come from small fixed
//! enums, never from users or addresses.

use std::time::Duration;

use super::Transport;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a valid STUN message or ChannelData frame.
    Malformed,
    /// A valid message tern has no use for (a response, an unknown indication).
    Unexpected,
    /// Data on a 5-tuple with no allocation.
    NoAllocation,
    /// Data to or from a peer with no live permission.
    NoPermission,
    /// ChannelData on an unbound channel.
    NoChannel,
    /// Data to or from a peer the policy denies.
    DeniedPeer,
    /// The frame did not fit (e.g. a payload too large to re-frame).
    TooLarge,
    /// An unauthenticated answer beyond the per-source rate limit.
    RateLimited,
    /// Over the allocation's bandwidth limit.
    Bandwidth,
    /// A TURN request without MESSAGE-INTEGRITY too short for its challenge
    /// to stay within the amplification bound (no client sends one).
    Undersized,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 10] = [
        Self::Malformed,
        Self::Unexpected,
        Self::NoAllocation,
        Self::NoPermission,
        Self::NoChannel,
        Self::DeniedPeer,
        Self::TooLarge,
        Self::RateLimited,
        Self::Bandwidth,
        Self::Undersized,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unexpected => "unexpected",
            Self::NoAllocation => "no_allocation",
            Self::NoPermission => "no_permission",
            Self::NoChannel => "no_channel",
            Self::DeniedPeer => "denied_peer",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Bandwidth => "bandwidth_limit",
            Self::Undersized => "undersized",
        }
    }
}

/// Why a request failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the ordinary first request of every client.
    Missing,
    /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE.
    Malformed,
    /// NONCE expired or not tern's (438).
    StaleNonce,
    /// USERNAME is no static user and no valid REST username.
    UnknownUser,
    /// A REST credential past its expiry.
    Expired,
    /// MESSAGE-INTEGRITY does not verify (wrong password or secret).
    BadIntegrity,
}

impl AuthFailure {
    /// Every reason, in index order.
    pub const ALL: [Self; 6] = [
        Self::Missing,
        Self::Malformed,
        Self::StaleNonce,
        Self::UnknownUser,
        Self::Expired,
        Self::BadIntegrity,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "challenge",
            Self::Malformed => "malformed",
            Self::StaleNonce => "stale_nonce",
            Self::UnknownUser => "unknown_user",
            Self::Expired => "expired",
            Self::BadIntegrity => "bad_integrity",
        }
    }
}

/// Why an Allocate was refused (after authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over the server-wide or per-user allocation quota (486).
    Quota,
    /// No relay port or allocation slot left (508).
    Capacity,
    /// Malformed or unsupported attributes (400, 442).
    BadRequest,
    /// No relay address of the family asked for (440).
    Family,
    /// The server is draining (508 or 300).
    Draining,
    /// An operator blocked the user (403).
    Blocked,
}

impl Rejection {
    /// Every reason, in index order.
    pub const ALL: [Self; 6] = [
        Self::Quota,
        Self::Capacity,
        Self::BadRequest,
        Self::Family,
        Self::Draining,
        Self::Blocked,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Quota => "quota",
            Self::Capacity => "capacity",
            Self::BadRequest => "bad_request",
            Self::Family => "family",
            Self::Draining => "draining",
            Self::Blocked => "blocked",
        }
    }
}

/// Upper bounds (seconds) of the allocation-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 8] = [1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// One worker's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Indexed by [`Transport::index`].
    pub binding_requests: [u64; Transport::ALL.len()],
    /// Allocations created, by transport.
    pub allocations_created: [u64; Transport::ALL.len()],
    /// Allocations closed by lifetime or credential expiry.
    pub allocations_expired: u64,
    /// Allocates refused, by [`Rejection`].
    pub rejections: [u64; Rejection::ALL.len()],
    /// Retransmitted requests answered from the cache.
    pub retransmissions: u64,
    /// `[client_to_peer, peer_to_client][transport]`.
    pub relayed_bytes: [[u64; Transport::ALL.len()]; 2],
    /// Packets relayed, indexed as `relayed_bytes`.
    pub relayed_packets: [[u64; Transport::ALL.len()]; 2],
    /// Payload bytes the fast path (XDP) relayed for UDP clients,
    /// `[client_to_peer, peer_to_client]`; not in `relayed_bytes`.
    pub offloaded_bytes: [u64; 2],
    /// Datagrams the fast path relayed, indexed as `offloaded_bytes`.
    pub offloaded_packets: [u64; 2],
    /// Datagrams dropped, by [`DropReason`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Failed authentications, by [`AuthFailure`].
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// CreatePermission/ChannelBind refused by the peer policy.
    pub peer_denied: u64,
    /// Cumulative histogram counts of allocation lifetimes, plus +Inf last.
    pub duration_buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// The sum of closed allocations' lifetimes.
    pub duration_sum_seconds: f64,
    /// Gauges, set by [`super::Core::refresh_gauges`]: live allocations by
    /// `[transport][family]`, permissions and live channels.
    pub allocations: [[u64; 2]; Transport::ALL.len()],
    /// Live permissions.
    pub permissions: u64,
    /// Live channel bindings.
    pub channels: u64,
}

impl Stats {
    /// Count a dropped datagram.
    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    /// Count an authentication failure.
    pub fn auth_failure(&mut self, reason: AuthFailure) {
        self.auth_failures[reason as usize] += 1;
    }

    /// Count a refused Allocate.
    pub fn reject(&mut self, reason: Rejection) {
        self.rejections[reason as usize] += 1;
    }

    /// Count what the fast path relayed.
    pub fn offloaded(&mut self, t: super::Traffic) {
        self.offloaded_bytes[0] += t.bytes_to_peer;
        self.offloaded_bytes[1] += t.bytes_to_client;
        self.offloaded_packets[0] += t.packets_to_peer;
        self.offloaded_packets[1] += t.packets_to_client;
    }

    /// Count a relayed packet; `to_peer` is the client-to-peer direction.
    pub fn relayed(&mut self, to_peer: bool, transport: Transport, bytes: usize) {
        let d = usize::from(!to_peer);
        let t = transport.index();
        self.relayed_packets[d][t] += 1;
        self.relayed_bytes[d][t] += bytes as u64;
    }

    /// Record a closed allocation's lifetime.
    pub fn allocation_closed(&mut self, lived: Duration) {
        let secs = lived.as_secs_f64();
        self.duration_sum_seconds += secs;
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[i] += 1;
    }

    /// Add another worker's counters into these.
    pub fn add(&mut self, o: &Self) {
        fn sum<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        sum(&mut self.binding_requests, &o.binding_requests);
        sum(&mut self.allocations_created, &o.allocations_created);
        self.allocations_expired += o.allocations_expired;
        sum(&mut self.rejections, &o.rejections);
        self.retransmissions += o.retransmissions;
        for d in 0..2 {
            sum(&mut self.relayed_bytes[d], &o.relayed_bytes[d]);
            sum(&mut self.relayed_packets[d], &o.relayed_packets[d]);
        }
        sum(&mut self.offloaded_bytes, &o.offloaded_bytes);
        sum(&mut self.offloaded_packets, &o.offloaded_packets);
        sum(&mut self.dropped, &o.dropped);
        sum(&mut self.auth_failures, &o.auth_failures);
        self.peer_denied += o.peer_denied;
        sum(&mut self.duration_buckets, &o.duration_buckets);
        self.duration_sum_seconds += o.duration_sum_seconds;
        for t in Transport::ALL {
            sum(&mut self.allocations[t.index()], &o.allocations[t.index()]);
        }
        self.permissions += o.permissions;
        self.channels += o.channels;
    }
}
