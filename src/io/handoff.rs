//! Relay-to-relay delivery without the kernel. When a client sends to a
//! peer that is another tern relay address, the datagram is delivered to
//! that relay's allocation through `Core::on_peer` exactly as if it had
//! arrived on the relay socket: the same permission, policy and bandwidth
//! checks, the sender's relay address as the source.
//!
//! Only the worker that owns an allocation ever touches it. A datagram for
//! one of the sending worker's own relays waits in that worker's local
//! [`Batch`] until the end of the receive batch. One for another worker's
//! relay goes into a [`Batch`] for that worker, and at the end of the
//! receive batch the whole batch moves through the [`Lane`] from the
//! sender to the owner: a bounded lock-free FIFO of batches, one per
//! ordered pair of workers. The owner drains its lanes at the end of each
//! of its own batches and when woken, and delivers in order. So one
//! flow's datagrams (one sending allocation to one receiving allocation)
//! always take the same path, and keep their order. Emptied batches go
//! back to the sender through the lane's spares, so a steady flow
//! allocates nothing.
//!
//! What one worker may do to another's allocations is [`Handoffs::send`]:
//! queue datagrams for it. The core itself lives in the owner's
//! thread-local worker and cannot be reached from another thread.
//!
//! A relay is recognised by its bound address ([`super::relay::RelayTable`]).
//! When relays advertise an `external-ipv4`/`-ipv6` address, a client
//! sending to that address goes through the kernel (and the NAT in front
//! of tern) as before.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

/// Datagrams one batch holds (a batch is sent at the end of every receive
/// batch, which holds at most 32, so this is only reached by a TCP read
/// carrying many frames).
const BATCH_ITEMS: usize = 1024;
/// Payload bytes one batch holds.
const BATCH_BYTES: usize = 256 * 1024;
/// Datagrams waiting in one lane before more are dropped (only reached
/// when the receiving worker is overloaded): as many as the old inbox
/// held, a few milliseconds of a busy worker's traffic.
const LANE_DATAGRAMS: usize = 4096;
/// Payload bytes waiting in one lane before more are dropped.
const LANE_BYTES: usize = 4 << 20;
/// Batches one lane holds (batches are often short: one per receive batch).
const LANE_BATCHES: usize = 1024;
/// Emptied batches kept for reuse per lane, and the arena each keeps.
const SPARES: usize = 64;
const SPARE_BYTES: usize = 16 * 1024;

/// One datagram from relay `from` to relay `to`.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) to: SocketAddr,
    pub(crate) from: SocketAddr,
    pub(crate) bytes: Range<usize>,
}

/// Datagrams copied into one arena, in the order they were sent.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) items: Vec<Item>,
    pub(crate) arena: Vec<u8>,
}

impl Batch {
    /// Queue a datagram; false when the batch is full (nothing queued).
    pub(crate) fn push(&mut self, to: SocketAddr, from: SocketAddr, bytes: &[u8]) -> bool {
        if self.items.len() >= BATCH_ITEMS || self.arena.len() + bytes.len() > BATCH_BYTES {
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

    /// Each datagram: where to, where from, its bytes.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr, &[u8])> {
        self.items
            .iter()
            .map(|i| (i.to, i.from, &self.arena[i.bytes.clone()]))
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.arena.clear();
    }
}

/// Batches from one worker to another, in order, and the emptied ones on
/// their way back.
#[derive(Debug)]
struct Lane {
    full: ArrayQueue<Batch>,
    spare: ArrayQueue<Batch>,
    /// Datagrams and payload bytes in `full`: taken by the sender before
    /// it pushes, given back by the receiver once delivered.
    datagrams: AtomicUsize,
    bytes: AtomicUsize,
}

impl Lane {
    /// Take room for `batch`; false (nothing taken) when the lane is full.
    fn reserve(&self, batch: &Batch) -> bool {
        let (n, b) = (batch.len(), batch.arena.len());
        let datagrams = self.datagrams.fetch_add(n, Ordering::AcqRel) + n;
        let bytes = self.bytes.fetch_add(b, Ordering::AcqRel) + b;
        if datagrams > LANE_DATAGRAMS || bytes > LANE_BYTES {
            self.release(batch);
            return false;
        }
        true
    }

    fn release(&self, batch: &Batch) {
        self.datagrams.fetch_sub(batch.len(), Ordering::AcqRel);
        self.bytes.fetch_sub(batch.arena.len(), Ordering::AcqRel);
    }
}

/// Every ordered pair of workers' lane, and every worker's wake-up.
///
/// A worker is woken only when it is parked (waiting for events): a busy
/// worker drains its lanes at the end of each of its batches anyway, and
/// waking it would cost a cross-thread wake per batch. So each worker
/// flags itself parked just before it blocks, then looks at its lanes once
/// more; a sender looks at the flag after pushing. One of the two always
/// sees the other (both sides order their store before their load), so no
/// batch waits for a wake that never comes.
#[derive(Debug)]
pub(crate) struct Handoffs {
    workers: usize,
    /// Indexed by `from * workers + to`.
    lanes: Box<[Lane]>,
    wakes: Box<[Arc<Notify>]>,
    /// One flag per worker, each on its own cache line: a worker writes
    /// its flag at every park and unpark, and flags sharing a line would
    /// move it between cores on every wake-up of any worker.
    parked: Box<[Parked]>,
}

/// A worker's parked flag, alone on its cache line (128 bytes: adjacent
/// lines are fetched in pairs on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Parked(AtomicBool);

impl Handoffs {
    /// Lanes between `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            workers,
            lanes: (0..workers * workers)
                .map(|_| Lane {
                    full: ArrayQueue::new(LANE_BATCHES),
                    spare: ArrayQueue::new(SPARES),
                    datagrams: AtomicUsize::new(0),
                    bytes: AtomicUsize::new(0),
                })
                .collect(),
            wakes: (0..workers).map(|_| Arc::new(Notify::new())).collect(),
            parked: (0..workers).map(|_| Parked::default()).collect(),
        }
    }

    /// Worker `worker` is about to block waiting for events: if a batch
    /// waits for it, wake it at once.
    pub(crate) fn park(&self, worker: usize) {
        let Some(parked) = self.parked.get(worker) else {
            return;
        };
        parked.0.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let waiting = (0..self.workers)
            .filter_map(|from| self.lane(from, worker))
            .any(|l| l.datagrams.load(Ordering::SeqCst) > 0);
        if waiting {
            self.wakes[worker].notify_one();
        }
    }

    /// Worker `worker` runs again.
    pub(crate) fn unpark(&self, worker: usize) {
        if let Some(parked) = self.parked.get(worker) {
            parked.0.store(false, Ordering::SeqCst);
        }
    }

    fn lane(&self, from: usize, to: usize) -> Option<&Lane> {
        if from >= self.workers || to >= self.workers {
            return None;
        }
        self.lanes.get(from * self.workers + to)
    }

    /// Worker `worker`'s wake-up: notified when a batch is sent to it while
    /// it is parked.
    pub(crate) fn wake(&self, worker: usize) -> Arc<Notify> {
        self.wakes
            .get(worker)
            .map_or_else(|| Arc::new(Notify::new()), Arc::clone)
    }

    /// Move `batch` (from worker `from`) to worker `to`, waking it if it is
    /// parked; `batch` is left empty. Returns how many datagrams were dropped
    /// because the lane was full.
    pub(crate) fn send(&self, from: usize, to: usize, batch: &mut Batch) -> usize {
        let Some(lane) = self.lane(from, to) else {
            let n = batch.len();
            batch.clear();
            return n;
        };
        let dropped = if lane.reserve(batch) {
            let spare = lane.spare.pop().unwrap_or_default();
            match lane.full.push(std::mem::replace(batch, spare)) {
                Ok(()) => 0,
                Err(mut full) => {
                    lane.release(&full);
                    let n = full.len();
                    full.clear();
                    let _ = lane.spare.push(std::mem::replace(batch, full));
                    n
                }
            }
        } else {
            let n = batch.len();
            batch.clear();
            n
        };
        fence(Ordering::SeqCst);
        if self
            .parked
            .get(to)
            .is_some_and(|p| p.0.load(Ordering::SeqCst))
        {
            self.wakes[to].notify_one();
        }
        dropped
    }

    /// Hand every batch waiting for worker `to` to `deliver`, lane by lane
    /// and in the order sent; the emptied batches go back as spares.
    /// Returns how many datagrams there were.
    pub(crate) fn receive(&self, to: usize, mut deliver: impl FnMut(&Batch)) -> usize {
        let mut n = 0;
        for from in 0..self.workers {
            let Some(lane) = self.lane(from, to) else {
                continue;
            };
            // Nothing reserved, nothing to take: skip the queue (an empty
            // pop costs a fence). A batch pushed after this look is taken
            // at the next settle, or on the wake-up `park` asks for.
            if lane.datagrams.load(Ordering::Acquire) == 0 {
                continue;
            }
            while let Some(mut batch) = lane.full.pop() {
                n += batch.len();
                deliver(&batch);
                lane.release(&batch);
                batch.clear();
                if batch.arena.capacity() > SPARE_BYTES {
                    batch.arena.shrink_to(SPARE_BYTES);
                }
                let _ = lane.spare.push(batch);
            }
        }
        n
    }
}

/// Hand each datagram of `batch` to its relay's allocation in `core`, as
/// if it had arrived on the relay socket, sending through `io`. A relay
/// that closed meanwhile, or whose port now belongs to another worker's
/// allocation, drops it.
pub(super) fn deliver(
    shared: &super::Shared,
    me: usize,
    core: &mut crate::core::Core,
    batch: &Batch,
    io: &mut impl crate::core::Io,
    scratch: &mut [u8],
    now: crate::core::Now,
) {
    use crate::wire::PEER_HEADROOM;
    for (to, from, bytes) in batch.iter() {
        let Some(alloc) = shared.relays.get(&to).filter(|a| a.worker() == me) else {
            continue;
        };
        let payload = PEER_HEADROOM..PEER_HEADROOM + bytes.len();
        scratch[payload.clone()].copy_from_slice(bytes);
        core.on_peer(now, alloc, from, scratch, payload, io);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn texts(got: &Batch) -> Vec<Vec<u8>> {
        got.iter().map(|(_, _, b)| b.to_vec()).collect()
    }

    #[test]
    fn batches_arrive_in_order_with_their_addresses() {
        let h = Handoffs::new(2);
        let mut out = Batch::default();
        assert!(out.push(addr(2), addr(1), b"first"));
        assert_eq!(h.send(0, 1, &mut out), 0);
        assert!(out.is_empty());
        assert!(out.push(addr(1), addr(2), b"second"));
        assert!(out.push(addr(1), addr(2), b"third"));
        assert_eq!(h.send(0, 1, &mut out), 0);
        let mut seen = Vec::new();
        let mut sources = Vec::new();
        assert_eq!(
            h.receive(1, |b| {
                seen.extend(texts(b));
                sources.extend(b.iter().map(|(to, from, _)| (to, from)));
            }),
            3
        );
        assert_eq!(seen, [&b"first"[..], b"second", b"third"]);
        assert_eq!(sources[0], (addr(2), addr(1)));
        // Nothing for the sender, nothing left for the receiver.
        assert_eq!(h.receive(0, |_| panic!("not for worker 0")), 0);
        assert_eq!(h.receive(1, |_| panic!("already delivered")), 0);
    }

    #[test]
    fn a_full_lane_drops_and_counts_and_batches_are_bounded() {
        let h = Handoffs::new(2);
        let mut out = Batch::default();
        for i in 0..LANE_DATAGRAMS / 4 {
            for _ in 0..4 {
                assert!(out.push(addr(2), addr(1), &(i as u32).to_be_bytes()));
            }
            assert_eq!(h.send(0, 1, &mut out), 0);
        }
        assert!(out.push(addr(2), addr(1), b"late"));
        assert!(out.push(addr(2), addr(1), b"later"));
        assert_eq!(h.send(0, 1, &mut out), 2);
        assert!(out.is_empty());
        assert_eq!(h.receive(1, |_| {}), LANE_DATAGRAMS);
        // Recycled: the next send reuses a spare and gets through.
        assert!(out.push(addr(2), addr(1), b"again"));
        assert_eq!(h.send(0, 1, &mut out), 0);
        assert_eq!(h.receive(1, |b| assert_eq!(texts(b), [b"again"])), 1);
        // The byte budget holds too.
        for _ in 0..LANE_BYTES / (BATCH_BYTES / 2) {
            assert!(out.push(addr(2), addr(1), &vec![0; BATCH_BYTES / 2]));
            assert_eq!(h.send(0, 1, &mut out), 0);
        }
        assert!(out.push(addr(2), addr(1), b"over"));
        assert_eq!(h.send(0, 1, &mut out), 1);
        assert_eq!(h.receive(1, |_| {}), LANE_BYTES / (BATCH_BYTES / 2));
        // A batch refuses more than its item and byte limits.
        let mut big = Batch::default();
        assert!(!big.push(addr(2), addr(1), &vec![0; BATCH_BYTES + 1]));
        for _ in 0..BATCH_ITEMS {
            assert!(big.push(addr(2), addr(1), b"x"));
        }
        assert!(!big.push(addr(2), addr(1), b"x"));
        // Workers that do not exist get nothing.
        assert_eq!(h.send(0, 7, &mut big), BATCH_ITEMS);
    }
}
