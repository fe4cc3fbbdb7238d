//! Relay-to-relay delivery without the kernel. When a client sends to a
//! peer that is another tern relay address, the datagram is delivered to
//! that relay's allocation through `Core::on_peer` exactly as if it had
//! arrived on the relay socket: the same permission, policy and bandwidth
//! checks, the sender's relay address as the source. Datagrams are queued
//! per owning worker and delivered at the end of the scheduling round.
//! For this worker's own relays that is a direct call. For another
//! worker's, the sender takes that worker's core if it is free (one
//! `try_lock` per batch) and delivers the batch itself, sending to the
//! receiving clients from its own listener socket: every worker has one
//! bound to the same address (SO_REUSEPORT), so the client sees the same
//! source. Waking the owner instead cost a context switch per few packets
//! (docs/performance.md). When the owner's core is busy, or the receiving
//! client is on TCP (its connection belongs to its worker), the batch goes
//! to the owner's inbox under one short lock and the owner is woken.
//!
//! A relay is recognised by its bound address. When relays advertise an
//! `external-ipv4`/`-ipv6` address, a client sending to that address goes
//! through the kernel (and the NAT in front of tern) as before.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

use tokio::sync::Notify;

use crate::core::slab::worker_of;
use crate::core::{AllocId, Core};
use crate::policy::PortRange;

/// Datagrams a batch or inbox holds before more are dropped (a queue drains
/// every scheduling round, so this is only reached under overload).
const LIMIT: usize = 4096;

/// One datagram from relay `from` to relay `to`.
pub(crate) struct Item {
    pub(crate) to: SocketAddr,
    pub(crate) from: SocketAddr,
    pub(crate) bytes: Range<usize>,
}

/// Datagrams copied into one arena.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) items: Vec<Item>,
    pub(crate) arena: Vec<u8>,
}

impl Batch {
    /// Queue a datagram; false (dropped) when the batch is full.
    pub(crate) fn push(&mut self, to: SocketAddr, from: SocketAddr, bytes: &[u8]) -> bool {
        if self.items.len() >= LIMIT {
            return false;
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.items.push(Item {
            to,
            from,
            bytes: start..start + bytes.len(),
        });
        true
    }

    /// Move `other`'s datagrams to the end of this batch, up to the limit.
    fn append(&mut self, other: &mut Self) {
        let room = LIMIT.saturating_sub(self.items.len());
        let base = self.arena.len();
        self.arena.extend_from_slice(&other.arena);
        self.items
            .extend(other.items.drain(..).take(room).map(|i| Item {
                bytes: base + i.bytes.start..base + i.bytes.end,
                ..i
            }));
        other.arena.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.arena.clear();
    }
}

/// Each relay port's allocation, every worker's core, inbox and wake-up.
pub struct Handoffs {
    relay_v4: Option<IpAddr>,
    relay_v6: Option<IpAddr>,
    ports: PortRange,
    /// Per port of the relay range: 0 for none, else the allocation id
    /// (which names its worker, see `core::slab`).
    relays_v4: Box<[AtomicU64]>,
    relays_v6: Box<[AtomicU64]>,
    cores: Vec<OnceLock<Arc<Mutex<Core>>>>,
    inboxes: Vec<Mutex<Batch>>,
    wakes: Vec<Arc<Notify>>,
}

impl std::fmt::Debug for Handoffs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoffs")
            .field("workers", &self.wakes.len())
            .finish_non_exhaustive()
    }
}

impl Handoffs {
    /// For relays bound on `v4`/`v6` in `ports`, and `workers` workers.
    pub fn new(v4: Option<IpAddr>, v6: Option<IpAddr>, ports: PortRange, workers: usize) -> Self {
        let table = |ip: Option<IpAddr>| {
            let n = if ip.is_some() { ports.len() } else { 0 };
            (0..n).map(|_| AtomicU64::new(0)).collect()
        };
        Self {
            relay_v4: v4,
            relay_v6: v6,
            ports,
            relays_v4: table(v4),
            relays_v6: table(v6),
            cores: (0..workers).map(|_| OnceLock::new()).collect(),
            inboxes: (0..workers).map(|_| Mutex::new(Batch::default())).collect(),
            wakes: (0..workers).map(|_| Arc::new(Notify::new())).collect(),
        }
    }

    fn slot(&self, addr: &SocketAddr) -> Option<&AtomicU64> {
        let (ip, table) = match addr {
            SocketAddr::V4(_) => (self.relay_v4, &self.relays_v4),
            SocketAddr::V6(_) => (self.relay_v6, &self.relays_v6),
        };
        if ip != Some(addr.ip()) || !self.ports.contains(addr.port()) {
            return None;
        }
        table.get(usize::from(addr.port() - self.ports.start()))
    }

    /// The allocation whose relay is bound at `addr`, if it is one of
    /// tern's.
    pub(crate) fn relay(&self, addr: &SocketAddr) -> Option<AllocId> {
        let id = self.slot(addr)?.load(Ordering::Acquire);
        (id != 0).then_some(id)
    }

    /// The worker owning the relay at `addr`, if it is one of tern's.
    pub(crate) fn owner(&self, addr: &SocketAddr) -> Option<usize> {
        self.relay(addr).map(worker_of)
    }

    pub(crate) fn set_relay(&self, addr: &SocketAddr, id: AllocId) {
        if let Some(slot) = self.slot(addr) {
            slot.store(id, Ordering::Release);
        }
    }

    /// Forget `addr`'s relay if it is still allocation `id`'s.
    pub(crate) fn clear_relay(&self, addr: &SocketAddr, id: AllocId) {
        if let Some(slot) = self.slot(addr) {
            let _ = slot.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Make worker `worker`'s core reachable by the other workers.
    pub(crate) fn set_core(&self, worker: usize, core: Arc<Mutex<Core>>) {
        if let Some(cell) = self.cores.get(worker) {
            let _ = cell.set(core);
        }
    }

    /// Worker `worker`'s core, if no one holds it now.
    pub(crate) fn try_core(&self, worker: usize) -> Option<MutexGuard<'_, Core>> {
        match self.cores.get(worker)?.get()?.try_lock() {
            Ok(core) => Some(core),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Worker `worker`'s wake-up.
    pub(crate) fn wake(&self, worker: usize) -> Arc<Notify> {
        self.wakes
            .get(worker)
            .map_or_else(|| Arc::new(Notify::new()), Arc::clone)
    }

    /// Append a batch to `worker`'s inbox and wake it.
    pub(crate) fn send(&self, worker: usize, batch: &mut Batch) {
        if let (Some(inbox), Some(wake)) = (self.inboxes.get(worker), self.wakes.get(worker)) {
            inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(batch);
            wake.notify_one();
        }
        batch.clear();
    }

    /// Swap `worker`'s inbox with `spare` (empty, keeping its capacity).
    pub(crate) fn take(&self, worker: usize, spare: &mut Batch) {
        if let Some(inbox) = self.inboxes.get(worker) {
            std::mem::swap(
                &mut *inbox.lock().unwrap_or_else(PoisonError::into_inner),
                spare,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoffs() -> Handoffs {
        let ports = PortRange::new(49152, 65535).unwrap();
        Handoffs::new(Some("127.0.0.1".parse().unwrap()), None, ports, 2)
    }

    #[test]
    fn relays_are_found_by_relay_address_only() {
        let h = handoffs();
        let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let id: AllocId = (1 << 48) | (7 << 24) | 3;
        h.set_relay(&relay, id);
        assert_eq!(h.relay(&relay), Some(id));
        assert_eq!(h.owner(&relay), Some(1));
        // Same port on another host, the other family, or a port outside
        // the relay range: not ours.
        assert_eq!(h.owner(&"8.8.8.8:50000".parse().unwrap()), None);
        assert_eq!(h.owner(&"[::1]:50000".parse().unwrap()), None);
        assert_eq!(h.owner(&"127.0.0.1:3478".parse().unwrap()), None);
        // A later tenant of the port is not cleared by an earlier one.
        let next = id + (1 << 24);
        h.set_relay(&relay, next);
        h.clear_relay(&relay, id);
        assert_eq!(h.relay(&relay), Some(next));
        h.clear_relay(&relay, next);
        assert_eq!(h.relay(&relay), None);
    }

    #[test]
    fn batches_move_to_the_inbox_with_their_bytes() {
        let h = handoffs();
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut out = Batch::default();
        assert!(out.push(b, a, b"first"));
        h.send(1, &mut out);
        assert!(out.push(a, b, b"second"));
        h.send(1, &mut out);
        assert!(out.is_empty());
        let mut got = Batch::default();
        h.take(1, &mut got);
        let texts: Vec<&[u8]> = got
            .items
            .iter()
            .map(|i| &got.arena[i.bytes.clone()])
            .collect();
        assert_eq!(texts, [&b"first"[..], &b"second"[..]]);
        assert_eq!((got.items[1].to, got.items[1].from), (a, b));
        let mut again = Batch::default();
        h.take(1, &mut again);
        assert!(again.is_empty());
    }
}
