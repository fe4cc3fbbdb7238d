//! Per-source rate limiting for unauthenticated answers, in memory that
//! does not grow with the number of sources: a fixed table of token buckets
//! indexed by a keyed hash of the source IP. Sources that collide share a
//! bucket, which only ever makes the limit stricter for them.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// One allocation's bandwidth limit in one direction: a bucket refilled at
/// the rate that holds one second's worth, kept as GCRA's theoretical
/// arrival time (nanoseconds) so that it fits one atomic word. The word is
/// this allocation's own, or, while its channels are offloaded, a word the
/// XDP program spends from too ([`SharedCell`]), so the limit holds for
/// both paths together.
#[derive(Debug)]
pub struct Bandwidth {
    /// Own cell: the theoretical arrival time, nanoseconds after `epoch`.
    tat: u64,
    epoch: Instant,
    /// Boxed: an idle allocation carries two of these, mostly unshared.
    shared: Option<Box<SharedCell>>,
}

impl Bandwidth {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            tat: 0,
            epoch: now,
            shared: None,
        }
    }

    /// Spend `bytes` if the bucket (refilled at `bytes_per_second`, holding
    /// one second's worth) allows; 0 means unlimited.
    pub fn spend(&mut self, bytes: usize, now: Instant, bytes_per_second: u64) -> bool {
        if bytes_per_second == 0 {
            return true;
        }
        // A datagram is at most 64 KiB: bytes × 10^9 fits in a u64.
        let inc = (bytes as u64).saturating_mul(NS_PER_S) / bytes_per_second;
        match &self.shared {
            Some(cell) => cell.spend(cell.ns(now), inc),
            None => {
                let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
                match gcra(self.tat, now, inc) {
                    Some(tat) => {
                        self.tat = tat;
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Spend from `cell` from now on (its state is the fast path's), or
    /// from this bucket's own word again (`None`).
    pub fn share(&mut self, cell: Option<SharedCell>) {
        self.shared = cell.map(Box::new);
    }

    /// Whether it spends from a shared cell.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// GCRA: the new theoretical arrival time if `inc` more nanoseconds of
/// traffic keep it within a second of `now`.
fn gcra(tat: u64, now: u64, inc: u64) -> Option<u64> {
    let next = tat.max(now).saturating_add(inc);
    (next - now <= NS_PER_S).then_some(next)
}

/// A bandwidth word shared with the XDP program (`io::xdp`): GCRA's
/// theoretical arrival time on CLOCK_MONOTONIC nanoseconds, the clock of
/// `bpf_ktime_get_ns`, spent with compare-and-swap by both sides.
pub struct SharedCell {
    cell: std::ptr::NonNull<AtomicU64>,
    /// Keeps the memory the cell lives in mapped.
    _owner: Arc<dyn Send + Sync>,
    /// An instant and CLOCK_MONOTONIC at that instant.
    base: Instant,
    base_ns: u64,
}

// SAFETY: the cell is only ever accessed atomically, and the memory it
// points into lives as long as `_owner`.
unsafe impl Send for SharedCell {}
// SAFETY: as above.
unsafe impl Sync for SharedCell {}

impl std::fmt::Debug for SharedCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCell").finish_non_exhaustive()
    }
}

impl SharedCell {
    /// A cell at `cell`, whose memory `owner` keeps alive; `base` is an
    /// instant and `base_ns` CLOCK_MONOTONIC at that instant.
    ///
    /// # Safety
    /// `cell` must stay valid, and be accessed only atomically, for as
    /// long as `owner` lives.
    pub unsafe fn new(
        cell: &AtomicU64,
        owner: Arc<dyn Send + Sync>,
        base: Instant,
        base_ns: u64,
    ) -> Self {
        Self {
            cell: std::ptr::NonNull::from(cell),
            _owner: owner,
            base,
            base_ns,
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.base) {
            Some(d) => self.base_ns.saturating_add(d.as_nanos() as u64),
            None => self
                .base_ns
                .saturating_sub(self.base.duration_since(now).as_nanos() as u64),
        }
    }

    fn spend(&self, now: u64, inc: u64) -> bool {
        // SAFETY: valid while `_owner` lives (the constructor's contract).
        let cell = unsafe { self.cell.as_ref() };
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let Some(next) = gcra(tat, now, inc) else {
                return false;
            };
            match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
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
        let mut b = Bandwidth::new(t0);
        assert!(b.spend(600, t0, 1000));
        assert!(!b.spend(600, t0, 1000));
        assert!(b.spend(600, t0 + Duration::from_millis(200), 1000));
        assert!(b.spend(1_000_000, t0, 0), "0 is unlimited");
    }

    #[test]
    fn a_shared_cell_is_one_bucket_for_both_sides() {
        let t0 = Instant::now();
        let owner: Arc<AtomicU64> = Arc::new(AtomicU64::new(0));
        let base_ns = 5_000_000_000;
        let cell = |o: &Arc<AtomicU64>| {
            // SAFETY: the cell is the owner's own word.
            unsafe { SharedCell::new(o, Arc::clone(o) as Arc<dyn Send + Sync>, t0, base_ns) }
        };
        let mut b = Bandwidth::new(t0);
        b.share(Some(cell(&owner)));
        assert!(b.is_shared());
        assert!(b.spend(600, t0, 1000));
        // The other side (the XDP program) spent 300 bytes' worth: 0.3 s.
        owner.fetch_add(300_000_000, Ordering::Relaxed);
        assert!(!b.spend(200, t0, 1000), "600 + 300 + 200 > 1000");
        assert!(b.spend(100, t0, 1000));
        assert_eq!(owner.load(Ordering::Relaxed), base_ns + 1_000_000_000);
        // Back to its own word: a full bucket of its own again.
        b.share(None);
        assert!(b.spend(1000, t0, 1000));
    }
}
