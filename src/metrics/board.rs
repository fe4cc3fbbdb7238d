//! The board: what the workers and the server publish for operators, and
//! all that the admin listener and [`super::render`] read. Workers write
//! their own row once a tick (never per packet); readers take a copy.
//! Nothing here knows about sockets or workers' internals, so the I/O
//! layer depends on the board and the admin side never on the I/O layer.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::core::{Family, Stats};
use crate::proxy::Refusal;

/// How a relay-to-relay datagram reached the receiving allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffPath {
    /// Both relays belong to one worker: delivered at the end of the
    /// sending batch.
    SameWorker,
    /// Through the queue from the sending worker to the owning worker,
    /// which delivered it into its own allocation.
    OtherWorker,
}

impl HandoffPath {
    /// Every path, in index order.
    pub const ALL: [Self; 2] = [Self::SameWorker, Self::OtherWorker];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::SameWorker => "same_worker",
            Self::OtherWorker => "other_worker",
        }
    }
}

/// The XDP program's counters: relayed to peers, relayed to clients, and
/// left to userspace with an entry because it had expired, the next hop
/// was not learned yet, the bandwidth limit was reached, or the datagram
/// would exceed the MTU.
pub const XDP_PROGRAM_COUNTERS: usize = 6;

/// The I/O layer's own counters (one set per worker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Relay-to-relay datagrams delivered in-process, by [`HandoffPath`].
    pub handoffs: [u64; HandoffPath::ALL.len()],
    /// Relay-to-relay datagrams dropped because the queue to the owning
    /// worker was full (that worker is overloaded).
    pub handoffs_dropped: u64,
    /// Peer datagrams received through relay steering.
    pub steered: u64,
    /// Messages for a TCP or TLS client dropped because more than its
    /// send backlog (1 MiB) was waiting: it reads slower than its peers
    /// send.
    pub stream_backlog_dropped: u64,
    /// Allocation records dropped because the writer's queue was full.
    pub records_dropped: u64,
    /// Channels the XDP fast path could not take (a full map or no free
    /// slot): they stay in userspace.
    pub offload_failed: u64,
}

impl IoStats {
    /// Add another worker's counters into these.
    pub fn add(&mut self, o: &Self) {
        for (a, b) in self.handoffs.iter_mut().zip(&o.handoffs) {
            *a += b;
        }
        self.handoffs_dropped += o.handoffs_dropped;
        self.steered += o.steered;
        self.stream_backlog_dropped += o.stream_backlog_dropped;
        self.records_dropped += o.records_dropped;
        self.offload_failed += o.offload_failed;
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client did not finish within the handshake timeout.
    Timeout,
    /// Too many handshakes in progress, in total or from its IP.
    Limit,
    /// The client offered only ALPN protocols tern does not serve.
    Alpn,
    /// Any other handshake error (not TLS, bad records, no common
    /// version or cipher suite, the client's alert).
    Error,
}

impl TlsFailure {
    /// Every reason, in index order.
    pub const ALL: [Self; 4] = [Self::Timeout, Self::Limit, Self::Alpn, Self::Error];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Limit => "limit",
            Self::Alpn => "alpn",
            Self::Error => "error",
        }
    }
}

/// Server-wide TLS counters, written per handshake (never per packet).
#[derive(Debug, Default)]
pub struct TlsCounters {
    handshakes: AtomicU64,
    in_progress: AtomicU64,
    failures: [AtomicU64; TlsFailure::ALL.len()],
    /// The presented certificate's notAfter, Unix seconds (0: no TLS).
    not_after: AtomicU64,
}

impl TlsCounters {
    /// A handshake started (it holds a slot of the handshake caps).
    pub fn started(&self) {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
    }

    /// A started handshake ended, whatever its outcome.
    pub fn ended(&self) {
        self.in_progress.fetch_sub(1, Ordering::Relaxed);
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> u64 {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Count a completed handshake.
    pub fn handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a handshake that failed.
    pub fn failure(&self, why: TlsFailure) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Completed handshakes so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Failed handshakes so far, for one reason.
    pub fn failures(&self, why: TlsFailure) -> u64 {
        self.failures[why as usize].load(Ordering::Relaxed)
    }

    /// Record the certificate now presented.
    pub fn set_not_after(&self, unix: i64) {
        self.not_after
            .store(u64::try_from(unix).unwrap_or(0), Ordering::Relaxed);
    }

    /// The presented certificate's notAfter (0: TLS is off).
    pub fn not_after(&self) -> u64 {
        self.not_after.load(Ordering::Relaxed)
    }
}

/// Server-wide PROXY protocol counters, written per connection from a
/// trusted proxy (never per packet).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl ProxyCounters {
    /// Count a header read.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a connection closed for want of a usable header.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Headers read so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused so far, for one reason.
    pub fn refused_count(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }
}

/// What became of a request to the credential endpoint (`[api]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOutcome {
    /// A credential was minted.
    Issued,
    /// A CORS preflight from an allowed origin was answered.
    Preflight,
    /// No key, or a wrong one.
    Unauthorized,
    /// The key's request rate was exceeded.
    RateLimited,
    /// The page's origin is not in `[api] allowed-origins`.
    OriginRefused,
    /// A malformed body or query.
    BadRequest,
    /// No such path or method.
    NotFound,
}

impl ApiOutcome {
    /// Every outcome, in index order.
    pub const ALL: [Self; 7] = [
        Self::Issued,
        Self::Preflight,
        Self::Unauthorized,
        Self::RateLimited,
        Self::OriginRefused,
        Self::BadRequest,
        Self::NotFound,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Preflight => "preflight",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::OriginRefused => "origin_refused",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
        }
    }
}

/// Credential endpoint requests by outcome (written per request, never
/// per packet).
#[derive(Debug, Default)]
pub struct ApiCounters([AtomicU64; ApiOutcome::ALL.len()]);

impl ApiCounters {
    /// Count one request.
    pub fn count(&self, outcome: ApiOutcome) {
        self.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests so far with `outcome`.
    pub fn get(&self, outcome: ApiOutcome) -> u64 {
        self.0[outcome as usize].load(Ordering::Relaxed)
    }
}

/// One worker's published row (or, from [`Board::total`], all of them
/// summed).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The protocol core's counters and gauges.
    pub core: Stats,
    /// The I/O layer's counters.
    pub io: IoStats,
    /// Live allocations.
    pub allocations: usize,
    /// Open TCP client connections.
    pub tcp_connections: usize,
    /// Allocations with channels offloaded to the XDP fast path.
    pub offloaded: usize,
}

impl Report {
    fn add(&mut self, o: &Self) {
        self.core.add(&o.core);
        self.io.add(&o.io);
        self.allocations += o.allocations;
        self.tcp_connections += o.tcp_connections;
        self.offloaded += o.offloaded;
    }
}

/// Readiness, worker ticks, per-worker reports and server-wide gauges.
#[derive(Debug)]
pub struct Board {
    /// Ticks are measured from here.
    started: Instant,
    ready: AtomicBool,
    /// Per worker: milliseconds after `started` of its last publish (0:
    /// never).
    last_tick_ms: Box<[AtomicU64]>,
    reports: Box<[Mutex<Report>]>,
    allocations_limit: AtomicU32,
    /// Relay steering in force, per family.
    steering: [AtomicBool; 2],
    /// The XDP fast path's mode, when it is attached.
    xdp: Mutex<Option<&'static str>>,
    /// The XDP program's own counters (see `io::xdp::FastPath::stats`).
    xdp_program: [AtomicU64; XDP_PROGRAM_COUNTERS],
    /// TLS handshakes and the certificate's expiry.
    pub tls: TlsCounters,
    /// PROXY protocol headers from trusted proxies.
    pub proxy: ProxyCounters,
    /// Credential endpoint requests.
    pub api: ApiCounters,
}

impl Board {
    /// A board for `workers` workers, none of which has ticked yet.
    pub fn new(workers: usize) -> Self {
        Self {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            last_tick_ms: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            reports: (0..workers).map(|_| Mutex::default()).collect(),
            allocations_limit: AtomicU32::new(0),
            steering: [AtomicBool::new(false), AtomicBool::new(false)],
            xdp: Mutex::new(None),
            xdp_program: Default::default(),
            tls: TlsCounters::default(),
            proxy: ProxyCounters::default(),
            api: ApiCounters::default(),
        }
    }

    /// The instant the board was made (an epoch no later than any `now`
    /// a worker will see).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Mark the server ready (every listener serves) or not (starting,
    /// draining, stopping).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the server is ready (`/readyz`).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Publish worker `worker`'s row and stamp its tick.
    pub fn publish(&self, worker: usize, report: &Report) {
        if let Some(r) = self.reports.get(worker) {
            r.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone_from(report);
        }
        if let Some(t) = self.last_tick_ms.get(worker) {
            let ms = self.started.elapsed().as_millis() as u64;
            t.store(ms.max(1), Ordering::Relaxed);
        }
    }

    /// Whether every worker has published at least once.
    pub fn all_ticked(&self) -> bool {
        self.last_tick_ms
            .iter()
            .all(|t| t.load(Ordering::Relaxed) > 0)
    }

    /// Whether every worker published within `within` (`/healthz`).
    pub fn healthy(&self, within: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let limit = within.as_millis() as u64;
        self.last_tick_ms
            .iter()
            .all(|t| now.saturating_sub(t.load(Ordering::Relaxed)) <= limit)
    }

    /// Every worker's row summed (as of their last publish).
    pub fn total(&self) -> Report {
        let mut total = Report::default();
        for r in &self.reports {
            total.add(&r.lock().unwrap_or_else(PoisonError::into_inner));
        }
        total
    }

    /// Set the configured server-wide allocation limit.
    pub fn set_allocations_limit(&self, limit: u32) {
        self.allocations_limit.store(limit, Ordering::Relaxed);
    }

    /// The configured server-wide allocation limit.
    pub fn allocations_limit(&self) -> u32 {
        self.allocations_limit.load(Ordering::Relaxed)
    }

    /// Record the XDP fast path's mode (`None`: off).
    pub fn set_xdp(&self, mode: Option<&'static str>) {
        if let Ok(mut m) = self.xdp.lock() {
            *m = mode;
        }
    }

    /// The XDP fast path's mode, when it is attached.
    pub fn xdp(&self) -> Option<&'static str> {
        self.xdp.lock().ok().and_then(|m| *m)
    }

    /// Publish the XDP program's own counters.
    pub fn set_xdp_program(&self, counters: [u64; XDP_PROGRAM_COUNTERS]) {
        for (a, v) in self.xdp_program.iter().zip(counters) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// The XDP program's own counters.
    pub fn xdp_program(&self) -> [u64; XDP_PROGRAM_COUNTERS] {
        std::array::from_fn(|i| self.xdp_program[i].load(Ordering::Relaxed))
    }

    /// Record whether relay steering is in force for `family`.
    pub fn set_steering(&self, family: Family, on: bool) {
        self.steering[family.index()].store(on, Ordering::Relaxed);
    }

    /// Whether relay steering is in force for `family`.
    pub fn steering(&self, family: Family) -> bool {
        self.steering[family.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_sum_and_ticks_make_health() {
        let b = Board::new(2);
        assert!(!b.all_ticked() && !b.ready());
        let mut r = Report {
            allocations: 3,
            tcp_connections: 1,
            ..Report::default()
        };
        r.io.handoffs[HandoffPath::OtherWorker as usize] = 5;
        r.core.retransmissions = 2;
        b.publish(0, &r);
        assert!(!b.all_ticked());
        b.publish(1, &r);
        assert!(b.all_ticked());
        assert!(b.healthy(Duration::from_secs(5)));
        let t = b.total();
        assert_eq!((t.allocations, t.tcp_connections), (6, 2));
        assert_eq!((t.io.handoffs, t.core.retransmissions), ([0, 10], 4));
        b.set_steering(Family::V6, true);
        assert!(b.steering(Family::V6) && !b.steering(Family::V4));
    }
}
