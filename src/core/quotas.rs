//! Allocation counts shared by every worker: the server-wide and per-user
//! allocation limits (RFC 8656 §7.2: 486 Allocation Quota Reached).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Allocation counts shared by every worker (touched per Allocate and
/// per close, never per packet).
#[derive(Debug, Default)]
pub struct Quotas {
    counts: Mutex<QuotaCounts>,
    /// Users an operator has blocked (checked per Allocate).
    pub blocks: super::sessions::Blocks,
}

#[derive(Debug, Default)]
struct QuotaCounts {
    total: u32,
    per_user: HashMap<String, u32>,
}

/// Which allocation limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// The server-wide limit.
    Total,
    /// The per-user limit.
    PerUser,
}

impl Quotas {
    /// Take one allocation slot for `user`, within both limits.
    pub fn acquire(&self, user: &str, max_total: u32, max_user: u32) -> Result<(), QuotaError> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= max_total {
            return Err(QuotaError::Total);
        }
        let mine = c.per_user.get(user).copied().unwrap_or(0);
        if mine >= max_user {
            return Err(QuotaError::PerUser);
        }
        c.total += 1;
        c.per_user.insert(user.to_owned(), mine + 1);
        Ok(())
    }

    /// Give back `user`'s slot.
    pub fn release(&self, user: &str) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(user);
            }
        }
    }

    /// Allocations held across all workers.
    pub fn total(&self) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}
