//! Test support, for the core's unit tests, the fuzz targets, the
//! micro-benchmarks and the integration tests (enabled by the `testing`
//! feature, which `cargo test` turns on): a recording [`Io`], a fake
//! [`Clock`] and a [`core_config`] to start from. Requests are built with
//! [`crate::request`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{Credentials, NonceIssuer};
use crate::core::{
    AllocId, CoreConfig, Family, FiveTuple, Io, Limits, Now, RelayError, RelayGrant, RelayRequest,
};
use crate::policy::{PeerPolicy, PortRange};

/// The realm of [`core_config`]: the default one, so challenge sizes are
/// the ones users get.
pub const REALM: &str = "tern";
/// The REST API secret of [`core_config`].
pub const SECRET: &str = "shh";
/// The Unix time a [`Clock`] starts at.
pub const START_UNIX: u64 = 1_800_000_000;
/// The address [`Recorder`] binds relays on (a documentation address, so
/// the default peer policy treats it as tern's own).
pub const RELAY_IP: [u8; 4] = [203, 0, 113, 5];

/// An [`Io`] that records what the core does, and opens relays on
/// [`RELAY_IP`] (IPv4 only: IPv6 is refused as unavailable).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every datagram to a client, unless made [`Recorder::counting`].
    pub to_client: Vec<(FiveTuple, Vec<u8>)>,
    /// Every datagram to a peer, unless made [`Recorder::counting`].
    pub to_peer: Vec<(AllocId, SocketAddr, Vec<u8>)>,
    /// Relays opened, and what for.
    pub opened: Vec<(AllocId, RelayRequest)>,
    /// Relays closed.
    pub closed: Vec<AllocId>,
    /// Datagrams to clients and to peers, counted.
    pub sent: (usize, usize),
    /// The last STUN message (not ChannelData) sent to a client.
    pub last_answer: Vec<u8>,
    /// Refuse every relay with this error.
    pub fail: Option<RelayError>,
    counting: bool,
}

impl Recorder {
    /// A recorder that keeps only counts and the last answer, so that the
    /// per-packet path allocates nothing in it (for benchmarks).
    pub fn counting() -> Self {
        Self {
            counting: true,
            ..Self::default()
        }
    }

    /// Relays open now.
    pub fn open(&self) -> usize {
        self.opened.len() - self.closed.len()
    }
}

impl Io for Recorder {
    fn to_client(&mut self, client: &FiveTuple, bytes: &[u8]) {
        self.sent.0 += 1;
        if bytes.first().is_some_and(|b| b & 0xC0 == 0) {
            self.last_answer.clear();
            self.last_answer.extend_from_slice(bytes);
        }
        if !self.counting {
            self.to_client.push((*client, bytes.to_vec()));
        }
    }

    fn to_peer(&mut self, alloc: AllocId, peer: SocketAddr, bytes: &[u8]) {
        self.sent.1 += 1;
        if !self.counting {
            self.to_peer.push((alloc, peer, bytes.to_vec()));
        }
    }

    fn open_relay(&mut self, alloc: AllocId, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        if req.family == Family::V6 {
            return Err(RelayError::FamilyUnavailable);
        }
        self.opened.push((alloc, *req));
        let port = 50_000 + 2 * (self.opened.len() % 7_000) as u16;
        Ok(RelayGrant {
            local: SocketAddr::from((RELAY_IP, port)),
            token: None,
        })
    }

    fn close_relay(&mut self, alloc: AllocId) {
        self.closed.push(alloc);
    }
}

/// A fake clock, starting now (monotonic) and at [`START_UNIX`] (wall).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The monotonic start.
    pub start: Instant,
    offset: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock at its start.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            offset: Duration::ZERO,
        }
    }

    /// The time now, for the core.
    pub fn now(&self) -> Now {
        Now {
            instant: self.start + self.offset,
            unix: START_UNIX + self.offset.as_secs(),
        }
    }

    /// Move on by `secs` seconds.
    pub fn advance(&mut self, secs: u64) {
        self.offset += Duration::from_secs(secs);
    }
}

/// A core configuration to start from: realm [`REALM`], users `alice`
/// (`pw`) and `bob` (`pw2`), REST secret [`SECRET`], the default peer
/// policy with [`RELAY_IP`] as tern's relay, 600/3600 s lifetimes, at most
/// 100 allocations (3 per user), 4 permissions and 4 channels each, strict
/// expiry, no rate or bandwidth limit. Change fields as a test needs.
pub fn core_config() -> CoreConfig {
    CoreConfig {
        credentials: Credentials::new(
            REALM,
            &[("alice".into(), "pw".into()), ("bob".into(), "pw2".into())],
            &[SECRET.into()],
        ),
        nonces: NonceIssuer::new([3; 32], 600),
        policy: PeerPolicy::new(
            vec![],
            vec![],
            vec![RELAY_IP.into()],
            vec![],
            PortRange::new(49152, 65535).unwrap_or_else(|| unreachable!("a valid range")),
        ),
        software: Some("tern-test".into()),
        limits: Limits {
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations: 100,
            max_allocations_per_user: 3,
            max_permissions: 4,
            max_channels: 4,
            legacy_channel_numbers: false,
            strict_expiry: true,
            unauthenticated_rate: 0,
            max_bandwidth: 0,
        },
        external_v4: None,
        external_v6: None,
        alternate_server: None,
    }
}
