//! A count of open things (TCP connections, TLS handshakes) with a total
//! and a per-client-IP cap, shared by every worker and touched once per
//! connection, never per packet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Caps on how many may be open at once, in total and per client IP.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    max_per_ip: AtomicUsize,
    /// Open per client IP (entries leave at zero, so the map never holds
    /// more than `max` entries).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIpLimit {
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            max_per_ip: AtomicUsize::new(max_per_ip),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Change the caps (reload); what is open stays open.
    pub(crate) fn set(&self, max: usize, max_per_ip: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    /// Count one more for `ip`, unless a cap is reached; every `true`
    /// must be matched by one [`PerIpLimit::release`].
    pub(crate) fn acquire(&self, ip: IpAddr) -> bool {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if self.open.load(Ordering::Relaxed) >= self.max.load(Ordering::Relaxed)
            || mine >= self.max_per_ip.load(Ordering::Relaxed)
        {
            return false;
        }
        per_ip.insert(ip, mine + 1);
        self.open.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Count one fewer for `ip`.
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// How many are open, and for how many IPs.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        (self.open.load(Ordering::Relaxed), per_ip.len())
    }
}

#[cfg(test)]
mod tests {
    use super::PerIpLimit;

    #[test]
    fn caps_in_total_and_per_ip_and_forgets_ips_at_zero() {
        let l = PerIpLimit::new(3, 2);
        let (a, b, c) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        assert!(l.acquire(a) && l.acquire(a));
        assert!(!l.acquire(a), "per-IP cap");
        assert!(l.acquire(b));
        assert!(!l.acquire(c), "total cap");
        l.release(a);
        assert!(l.acquire(c));
        l.set(10, 1);
        assert!(!l.acquire(b), "lowered per-IP cap");
        for ip in [a, b, c] {
            l.release(ip);
        }
        assert_eq!(l.counts(), (0, 0));
    }
}
