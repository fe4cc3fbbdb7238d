//! One TURN allocation: its relay, lifetime, permissions, channels and the
//! cache of recent answers that makes retransmitted requests idempotent.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::Key;
use crate::ratelimit::Bandwidth;

use super::{AllocId, FiveTuple};

/// Permission lifetime (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires, neither its number nor its peer may be
/// rebound to something else for this long (RFC 8656 §12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// How long an answer is kept for retransmissions: a STUN transaction over
/// UDP gives up after 39.5 s (RFC 8489 §6.2.1).
pub const ANSWER_CACHE_TIME: Duration = Duration::from_secs(40);
const ANSWER_CACHE_LEN: usize = 8;

/// A channel binding (RFC 8656 §12).
#[derive(Debug, Clone, Copy)]
pub struct Channel {
    /// The peer bound to the channel.
    pub peer: SocketAddr,
    /// When the binding expires (unless refreshed).
    pub expires: Instant,
}

/// What an allocation relayed (payload bytes and datagrams, each way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Payload bytes relayed to peers.
    pub bytes_to_peer: u64,
    /// Payload bytes relayed to the client.
    pub bytes_to_client: u64,
    /// Datagrams relayed to peers.
    pub packets_to_peer: u64,
    /// Datagrams relayed to the client.
    pub packets_to_client: u64,
}

impl Traffic {
    /// What was relayed after `earlier` (a snapshot of the same counters).
    pub fn since(self, earlier: Self) -> Self {
        Self {
            bytes_to_peer: self.bytes_to_peer - earlier.bytes_to_peer,
            bytes_to_client: self.bytes_to_client - earlier.bytes_to_client,
            packets_to_peer: self.packets_to_peer - earlier.packets_to_peer,
            packets_to_client: self.packets_to_client - earlier.packets_to_client,
        }
    }
}

/// A live allocation.
#[derive(Debug)]
pub struct Allocation {
    /// Its id (and its relay's).
    pub id: AllocId,
    /// The client's 5-tuple.
    pub client: FiveTuple,
    /// The address advertised in XOR-RELAYED-ADDRESS.
    pub relayed: SocketAddr,
    /// The user it was made for.
    pub username: String,
    /// The long-term key that signs its answers.
    pub key: Key,
    /// Unix time the REST credential expires (static users: `None`).
    pub credential_expires_unix: Option<u64>,
    /// When it was made.
    pub created: Instant,
    /// When it expires (unless refreshed).
    pub expires: Instant,
    /// Permissions and channels are short lists (a handful per allocation,
    /// at most the configured limits), searched linearly: for the few
    /// entries a call has, that beats hashing and stays in one cache line
    /// or two, which matters with thousands of allocations.
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<(u16, Channel)>,
    answers: VecDeque<(Instant, [u8; 12], Vec<u8>)>,
    /// What it has relayed.
    pub traffic: Traffic,
    /// `traffic` as of the last record.
    pub recorded: Traffic,
    /// When the last record (or the allocation) was made.
    pub recorded_at: Instant,
    /// The bandwidth limit towards peers.
    pub bandwidth_to_peer: Bandwidth,
    /// The bandwidth limit towards the client.
    pub bandwidth_to_client: Bandwidth,
    /// While channels are offloaded to a fast path: the earliest expiry
    /// among them (see `core::offload`).
    pub offloaded_until: Option<Instant>,
}

impl Allocation {
    /// A new allocation expiring at `expires`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: AllocId,
        client: FiveTuple,
        relayed: SocketAddr,
        username: String,
        key: Key,
        credential_expires_unix: Option<u64>,
        now: Instant,
        expires: Instant,
    ) -> Self {
        Self {
            id,
            client,
            relayed,
            username,
            key,
            credential_expires_unix,
            created: now,
            expires,
            permissions: Vec::new(),
            channels: Vec::new(),
            answers: VecDeque::with_capacity(ANSWER_CACHE_LEN),
            traffic: Traffic::default(),
            recorded: Traffic::default(),
            recorded_at: now,
            bandwidth_to_peer: Bandwidth::new(now),
            bandwidth_to_client: Bandwidth::new(now),
            offloaded_until: None,
        }
    }

    /// Whether a live permission covers `ip` (the per-packet check).
    pub fn permits(&self, ip: &IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|(p, exp)| p == ip && *exp > now)
    }

    /// Whether a permission for `ip` is installed (live or not yet swept).
    pub fn has_permission(&self, ip: &IpAddr) -> bool {
        self.permissions.iter().any(|(p, _)| p == ip)
    }

    /// Installed permissions.
    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    /// The Unix time it was made, given the time `now`.
    pub fn created_unix(&self, now: super::Now) -> u64 {
        let ago = now
            .instant
            .saturating_duration_since(self.created)
            .as_secs();
        now.unix.saturating_sub(ago)
    }

    /// Channel bindings (live or not yet swept).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The user part of the username: the name after `<expiry>:` for a
    /// REST credential, else the whole static user name.
    pub fn user(&self) -> &str {
        crate::auth::user_part(&self.username, self.credential_expires_unix.is_some())
    }

    /// Install or refresh a permission.
    pub fn permit(&mut self, ip: IpAddr, now: Instant) {
        let expires = now + PERMISSION_LIFETIME;
        match self.permissions.iter_mut().find(|(p, _)| *p == ip) {
            Some((_, exp)) => *exp = expires,
            None => self.permissions.push((ip, expires)),
        }
    }

    fn channel(&self, number: u16) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, c)| c)
    }

    /// The peer of a live channel.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channel(number)
            .filter(|c| c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`, if any.
    pub fn channel_for(&self, peer: &SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, c)| c.peer == *peer)
            .filter(|(_, c)| c.expires > now)
            .map(|(n, _)| *n)
    }

    /// Live channels: number and binding.
    pub fn live_channel_list(&self, now: Instant) -> impl Iterator<Item = (u16, Channel)> + '_ {
        self.channels
            .iter()
            .filter(move |(_, c)| c.expires > now)
            .copied()
    }

    /// When the live permission for `ip` expires, if there is one.
    pub fn permission_expiry(&self, ip: &IpAddr, now: Instant) -> Option<Instant> {
        self.permissions
            .iter()
            .find(|(p, exp)| p == ip && *exp > now)
            .map(|(_, exp)| *exp)
    }

    /// Whether `number` may be bound to `peer` now (RFC 8656 §12.2: neither
    /// side may already be bound, or cooling down, to something else).
    pub fn may_bind(&self, number: u16, peer: &SocketAddr) -> bool {
        self.channels
            .iter()
            .all(|(n, c)| (*n == number) == (c.peer == *peer))
    }

    /// Bind or refresh a channel (also refreshes the peer's permission).
    pub fn bind(&mut self, number: u16, peer: SocketAddr, now: Instant) {
        let channel = Channel {
            peer,
            expires: now + CHANNEL_LIFETIME,
        };
        match self.channels.iter_mut().find(|(n, _)| *n == number) {
            Some((_, c)) => *c = channel,
            None => self.channels.push((number, channel)),
        }
        self.permit(peer.ip(), now);
    }

    /// Live (not cooling down) channels.
    pub fn live_channels(&self, now: Instant) -> usize {
        self.channels
            .iter()
            .filter(|(_, c)| c.expires > now)
            .count()
    }

    /// Drop expired permissions, channels past their cool-down and stale
    /// cached answers.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|(_, exp)| *exp > now);
        self.channels
            .retain(|(_, c)| c.expires + CHANNEL_COOLDOWN > now);
        while self
            .answers
            .front()
            .is_some_and(|(t, _, _)| *t + ANSWER_CACHE_TIME <= now)
        {
            self.answers.pop_front();
        }
    }

    /// The answer already sent for transaction `txid`, if recent.
    pub fn cached_answer(&self, txid: &[u8; 12], now: Instant) -> Option<&[u8]> {
        self.answers
            .iter()
            .find(|(t, id, _)| id == txid && *t + ANSWER_CACHE_TIME > now)
            .map(|(_, _, a)| a.as_slice())
    }

    /// Remember an answer for retransmissions of `txid`.
    pub fn cache_answer(&mut self, txid: [u8; 12], answer: &[u8], now: Instant) {
        if self.answers.len() == ANSWER_CACHE_LEN {
            self.answers.pop_front();
        }
        self.answers.push_back((now, txid, answer.to_vec()));
    }
}
