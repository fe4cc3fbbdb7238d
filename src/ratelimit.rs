//! Per-source rate limiting for unauthenticated answers, in memory that
//! does not grow with the number of sources: a fixed table of token buckets
//! indexed by a keyed hash of the source IP. Sources that collide share a
//! bucket, which only ever makes the limit stricter for them.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// Buckets per table (each 8 bytes).
pub(crate) const SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    tokens: f32,
    /// Milliseconds after the limiter's base of the last refill; 0 = unused.
    last_ms: u32,
}

/// A fixed-size table of token buckets.
#[derive(Debug)]
pub(crate) struct SourceLimiter {
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
    base: Instant,
    per_second: f32,
    burst: f32,
}

impl SourceLimiter {
    /// `per_second` answers per source, bursting to twice that; 0 disables.
    pub(crate) fn new(per_second: u32, base: Instant) -> Self {
        Self {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            hasher: std::collections::hash_map::RandomState::new(),
            base,
            per_second: per_second as f32,
            burst: 2.0 * per_second as f32,
        }
    }

    /// Change the rate (on reload); buckets keep their tokens.
    pub(crate) fn set_rate(&mut self, per_second: u32) {
        self.per_second = per_second as f32;
        self.burst = 2.0 * per_second as f32;
    }

    /// Take one token for `ip`; false when its bucket is empty.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let i = (self.hasher.hash_one(ip) as usize) % SLOTS;
        // Offset by one so that 0 can mean "never used".
        let now_ms = u32::try_from(now.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u32::MAX - 1)
            + 1;
        let slot = &mut self.slots[i];
        let elapsed = if slot.last_ms == 0 {
            f32::INFINITY
        } else {
            now_ms.saturating_sub(slot.last_ms) as f32 / 1000.0
        };
        slot.tokens = (slot.tokens + elapsed * self.per_second).min(self.burst);
        slot.last_ms = now_ms;
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket for one allocation's bandwidth in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    tokens: f64,
    last: Instant,
}

impl Bandwidth {
    /// A full bucket at `now`.
    pub fn new(now: Instant, bytes_per_second: u64) -> Self {
        Self {
            tokens: bytes_per_second as f64,
            last: now,
        }
    }

    /// Spend `bytes` if the bucket (refilled at `bytes_per_second`, holding
    /// one second's worth) allows; 0 means unlimited.
    pub fn spend(&mut self, bytes: usize, now: Instant, bytes_per_second: u64) -> bool {
        if bytes_per_second == 0 {
            return true;
        }
        let rate = bytes_per_second as f64;
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(rate);
        self.last = now;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let granted = (0..100).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(granted, 20);
        let t1 = t0 + Duration::from_millis(500);
        let granted = (0..100).filter(|_| l.allow(ip, t1)).count();
        assert_eq!(granted, 5);
        let mut off = SourceLimiter::new(0, t0);
        assert!((0..1000).all(|_| off.allow(ip, t0)));
    }

    #[test]
    fn other_sources_are_unaffected_mostly() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, t0);
        let flood: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            l.allow(flood, t0);
        }
        let others = (0..200u8)
            .filter(|i| l.allow(IpAddr::from([198, 51, 100, *i]), t0))
            .count();
        assert!(others >= 190, "{others}");
    }

    #[test]
    fn bandwidth_buckets_refill_at_their_rate() {
        let t0 = Instant::now();
        let mut b = Bandwidth::new(t0, 1000);
        assert!(b.spend(600, t0, 1000));
        assert!(!b.spend(600, t0, 1000));
        assert!(b.spend(600, t0 + Duration::from_millis(200), 1000));
        assert!(b.spend(1_000_000, t0, 0), "0 is unlimited");
    }
}
