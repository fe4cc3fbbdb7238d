//! Relay-to-relay delivery without the kernel. When a client sends to a
//! peer that is another tern relay address, the datagram is handed to the
//! worker that owns that relay, which delivers it through
//! `Core::on_peer` exactly as if it had arrived on the relay socket: the
//! same permission, policy and bandwidth checks, the sender's relay address
//! as the source. Within a worker that is a queue drained at the end of the
//! scheduling round; across workers, a batch per round is appended to the
//! owner's inbox under one short lock, and the owner is woken.
//!
//! A relay is recognised by its bound address. When relays advertise an
//! `external-ipv4`/`-ipv6` address, a client sending to that address goes
//! through the kernel (and the NAT in front of tern) as before.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

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

/// Which worker owns each relay port, every worker's inbox and wake-up.
pub struct Handoffs {
    relay_v4: Option<IpAddr>,
    relay_v6: Option<IpAddr>,
    /// Per port: 0 for none, else owning worker + 1.
    owners_v4: Box<[AtomicU8]>,
    owners_v6: Box<[AtomicU8]>,
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
    /// For relays bound on `v4`/`v6` and `workers` workers (at most 255;
    /// beyond, relays of the later workers are reached through the kernel).
    pub fn new(v4: Option<IpAddr>, v6: Option<IpAddr>, workers: usize) -> Self {
        let table = || (0..=u16::MAX).map(|_| AtomicU8::new(0)).collect();
        Self {
            relay_v4: v4,
            relay_v6: v6,
            owners_v4: table(),
            owners_v6: table(),
            inboxes: (0..workers).map(|_| Mutex::new(Batch::default())).collect(),
            wakes: (0..workers).map(|_| Arc::new(Notify::new())).collect(),
        }
    }

    fn slot(&self, addr: &SocketAddr) -> Option<&AtomicU8> {
        let (ip, table) = match addr {
            SocketAddr::V4(_) => (self.relay_v4, &self.owners_v4),
            SocketAddr::V6(_) => (self.relay_v6, &self.owners_v6),
        };
        (ip == Some(addr.ip())).then(|| &table[usize::from(addr.port())])
    }

    /// The worker owning the relay at `addr`, if it is one of tern's.
    pub(crate) fn owner(&self, addr: &SocketAddr) -> Option<usize> {
        let w = self.slot(addr)?.load(Ordering::Relaxed);
        (w != 0).then(|| usize::from(w - 1))
    }

    pub(crate) fn set_owner(&self, addr: &SocketAddr, worker: usize) {
        if let (Some(slot), Ok(w)) = (self.slot(addr), u8::try_from(worker + 1)) {
            slot.store(w, Ordering::Relaxed);
        }
    }

    pub(crate) fn clear_owner(&self, addr: &SocketAddr) {
        if let Some(slot) = self.slot(addr) {
            slot.store(0, Ordering::Relaxed);
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

    #[test]
    fn owners_are_found_by_relay_address_only() {
        let h = Handoffs::new(Some("127.0.0.1".parse().unwrap()), None, 2);
        let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        h.set_owner(&relay, 1);
        assert_eq!(h.owner(&relay), Some(1));
        // Same port on another host, or the other family: not ours.
        assert_eq!(h.owner(&"8.8.8.8:50000".parse().unwrap()), None);
        assert_eq!(h.owner(&"[::1]:50000".parse().unwrap()), None);
        h.clear_owner(&relay);
        assert_eq!(h.owner(&relay), None);
    }

    #[test]
    fn batches_move_to_the_inbox_with_their_bytes() {
        let h = Handoffs::new(Some("127.0.0.1".parse().unwrap()), None, 2);
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
