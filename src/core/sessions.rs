//! How allocations end (`Core::remove`, with a record when records are
//! on), and what the admin API sees of and does to them: a snapshot of
//! each (`Core::sessions`), closing some (`Core::close_where`), and the
//! users an operator has blocked from allocating ([`Blocks`], shared by
//! every worker, checked per Allocate).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use super::alloc::{Allocation, Traffic};
use super::{AllocId, Core, EndReason, FiveTuple, Io, Now, Record, Transport};

/// One allocation as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The allocation's id.
    pub id: u64,
    /// The user: a REST credential's name part, or the static user.
    pub user: String,
    /// The username as sent (a REST credential's `<expiry>:<user>`).
    pub username: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's transport.
    pub transport: Transport,
    /// The relayed address.
    pub relay: SocketAddr,
    /// Unix seconds it was made.
    pub created_unix: u64,
    /// Unix seconds it expires unless refreshed.
    pub expires_unix: u64,
    /// Installed permissions.
    pub permissions: usize,
    /// Channel bindings.
    pub channels: usize,
    /// What it has relayed so far.
    pub traffic: Traffic,
}

impl SessionInfo {
    fn of(a: &Allocation, now: Now) -> Self {
        let left = a.expires.saturating_duration_since(now.instant).as_secs();
        Self {
            id: a.id.to_bits(),
            user: a.user().to_owned(),
            username: a.username.clone(),
            client: a.client.remote,
            transport: a.client.transport,
            relay: a.relayed,
            created_unix: a.created_unix(now),
            expires_unix: now.unix + left,
            permissions: a.permission_count(),
            channels: a.channel_count(),
            traffic: a.traffic,
        }
    }
}

impl Core {
    /// A client's TCP connection closed: its allocation goes with it
    /// (RFC 8656 §3.1).
    pub fn on_client_closed(&mut self, now: Now, client: &FiveTuple, io: &mut impl Io) {
        if let Some(&id) = self.by_client.get(client) {
            self.remove(id, now, io, EndReason::ConnectionClosed);
        }
    }

    /// Delete every allocation (shutdown).
    pub fn close_all(&mut self, now: Now, io: &mut impl Io) {
        let ids: Vec<AllocId> = self.allocs.ids().collect();
        for id in ids {
            self.remove(id, now, io, EndReason::Shutdown);
        }
    }

    pub(super) fn remove(&mut self, id: AllocId, now: Now, io: &mut impl Io, why: EndReason) {
        self.withdraw(id, io);
        let Some(mut a) = self.allocs.remove(id) else {
            return;
        };
        if self.cfg.records.is_some() {
            io.record(Record::take(&mut a, now, Some(why)));
        }
        self.by_client.remove(&a.client);
        self.quotas.release(&a.username);
        io.close_relay(id);
        let lived = now.instant.saturating_duration_since(a.created);
        self.stats.allocation_closed(lived);
        tracing::info!(
            alloc = %id,
            user = %a.username,
            client = %a.client.remote,
            transport = ?a.client.transport,
            relay = %a.relayed,
            bytes_to_peer = a.traffic.bytes_to_peer,
            bytes_to_client = a.traffic.bytes_to_client,
            lived_seconds = lived.as_secs(),
            "allocation closed"
        );
    }

    /// Every live allocation, or `user`'s only.
    pub fn sessions(&self, now: Now, user: Option<&str>) -> Vec<SessionInfo> {
        self.allocs
            .values()
            .filter(|a| user.is_none_or(|u| a.user() == u))
            .map(|a| SessionInfo::of(a, now))
            .collect()
    }

    /// Close every allocation `which` picks (an operator's order); how
    /// many were closed.
    pub fn close_where(
        &mut self,
        now: Now,
        io: &mut impl Io,
        which: impl Fn(&Allocation) -> bool,
    ) -> usize {
        let ids: Vec<_> = self
            .allocs
            .values()
            .filter(|a| which(a))
            .map(|a| a.id)
            .collect();
        for &id in &ids {
            self.remove(id, now, io, EndReason::Admin);
        }
        ids.len()
    }
}

/// At most this many users are blocked at once.
pub const MAX_BLOCKS: usize = 10_000;

/// Users blocked from allocating, each until a Unix time.
#[derive(Debug, Default)]
pub struct Blocks(Mutex<HashMap<String, u64>>);

impl Blocks {
    /// Block `user` until `until_unix`; false when [`MAX_BLOCKS`] other
    /// users are blocked already.
    pub fn block(&self, user: &str, until_unix: u64, now_unix: u64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.retain(|_, until| *until > now_unix);
        if m.len() >= MAX_BLOCKS && !m.contains_key(user) {
            return false;
        }
        m.insert(user.to_owned(), until_unix);
        true
    }

    /// Lift `user`'s block; whether there was one.
    pub fn unblock(&self, user: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.remove(user).is_some()
    }

    /// Whether `user` is blocked now.
    pub fn blocked(&self, user: &str, now_unix: u64) -> bool {
        let m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(user).is_some_and(|until| *until > now_unix)
    }

    /// The blocks in force: (user, until), by user.
    pub fn list(&self, now_unix: u64) -> Vec<(String, u64)> {
        let m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = m
            .iter()
            .filter(|(_, until)| **until > now_unix)
            .map(|(u, until)| (u.clone(), *until))
            .collect();
        v.sort();
        v
    }
}
