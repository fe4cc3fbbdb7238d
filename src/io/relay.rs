//! Relay sockets and the port → allocation table.
//!
//! Each allocation has one UDP socket bound to its relay address; it holds
//! the port and sends the allocation's datagrams to peers. Peers' answers
//! reach the owning worker one of two ways:
//! - **steered** (see `sklookup`): a BPF `sk_lookup` program hands every
//!   datagram for the worker's relay ports to one socket of that worker,
//!   read in batches; [`RelayTable`] maps the destination port back to the
//!   allocation.
//! - **polled**: the relay socket is read by its own task.
//!
//! [`RelayTable`] is also how relay-to-relay datagrams find their
//! receiving allocation (see `handoff`).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::sklookup::Steering;
use crate::core::AllocId;
use crate::policy::PortRange;

/// A UDP socket registered with the worker's reactor.
pub(super) type Udp = AsyncFd<UdpSocket>;

/// Register a UDP socket with this thread's reactor, for readability only
/// (datagrams are sent straight to the kernel).
pub(super) fn register(sock: UdpSocket) -> std::io::Result<Udp> {
    // SAFETY: the `UdpSocket` owns its descriptor and keeps it open, the
    // same one, for as long as the `AsyncFd` holds it.
    unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Each relay port's allocation, for both families. Written when a relay
/// opens or closes; read (one atomic load) per steered or handed-over
/// datagram.
#[derive(Debug)]
pub(crate) struct RelayTable {
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
    ports: PortRange,
    /// Per port of the range: 0 for none, else the allocation id's bits
    /// (the id names its worker, see `core::slab`).
    v4_ports: Box<[AtomicU64]>,
    v6_ports: Box<[AtomicU64]>,
}

impl RelayTable {
    /// For relays bound on `v4`/`v6` in `ports`.
    pub(crate) fn new(v4: Option<IpAddr>, v6: Option<IpAddr>, ports: PortRange) -> Self {
        let table = |ip: Option<IpAddr>| {
            let n = if ip.is_some() { ports.len() } else { 0 };
            (0..n).map(|_| AtomicU64::new(0)).collect()
        };
        Self {
            v4,
            v6,
            ports,
            v4_ports: table(v4),
            v6_ports: table(v6),
        }
    }

    fn entry(&self, addr: &SocketAddr) -> Option<&AtomicU64> {
        let (ip, table) = match addr {
            SocketAddr::V4(_) => (self.v4, &self.v4_ports),
            SocketAddr::V6(_) => (self.v6, &self.v6_ports),
        };
        if ip != Some(addr.ip()) || !self.ports.contains(addr.port()) {
            return None;
        }
        table.get(usize::from(addr.port() - self.ports.start()))
    }

    /// The allocation whose relay is bound at `addr`, if it is one of
    /// tern's.
    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<AllocId> {
        AllocId::from_bits(self.entry(addr)?.load(Ordering::Acquire))
    }

    /// Record that allocation `id`'s relay is bound at `addr`.
    pub(crate) fn set(&self, addr: &SocketAddr, id: AllocId) {
        if let Some(e) = self.entry(addr) {
            e.store(id.to_bits(), Ordering::Release);
        }
    }

    /// Forget `addr`'s relay if it is still allocation `id`'s.
    pub(crate) fn clear(&self, addr: &SocketAddr, id: AllocId) {
        if let Some(e) = self.entry(addr) {
            let _ = e.compare_exchange(id.to_bits(), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// One allocation's relay.
pub(super) struct Relay {
    pub(super) id: AllocId,
    pub(super) local: SocketAddr,
    pub(super) sock: RelaySocket,
}

/// How a relay socket's datagrams are read.
pub(super) enum RelaySocket {
    /// By its own receive task.
    Polled(Rc<Udp>, JoinHandle<()>),
    /// Through the worker's steered socket: this one only sends, and holds
    /// the port.
    Steered(SteeredRelay),
}

impl RelaySocket {
    /// The socket, for sending.
    pub(super) fn socket(&self) -> &UdpSocket {
        match self {
            Self::Polled(sock, _) => sock.get_ref(),
            Self::Steered(s) => &s.sock,
        }
    }
}

/// A steered relay's socket. However it is dropped, its port's steering
/// entry goes first: once the socket closes the port may go to another
/// worker's allocation, or to another program, whose datagrams must not
/// be steered here.
pub(super) struct SteeredRelay {
    pub(super) sock: UdpSocket,
    pub(super) port: u16,
    pub(super) steering: Arc<Steering>,
}

impl Drop for SteeredRelay {
    fn drop(&mut self) {
        let _ = self.steering.clear(self.port);
    }
}

/// A worker's relays, indexed by their allocation's slot (see
/// `core::slab`): the per-packet lookup is an index and a compare.
#[derive(Default)]
pub(super) struct Relays {
    slots: Vec<Option<Relay>>,
}

impl Relays {
    /// Allocation `id`'s relay.
    pub(super) fn get(&self, id: AllocId) -> Option<&Relay> {
        self.slots
            .get(id.slot())
            .and_then(Option::as_ref)
            .filter(|r| r.id == id)
    }

    pub(super) fn insert(&mut self, relay: Relay) {
        let s = relay.id.slot();
        if self.slots.len() <= s {
            self.slots.resize_with(s + 1, || None);
        }
        self.slots[s] = Some(relay);
    }

    /// Take allocation `id`'s relay out.
    pub(super) fn remove(&mut self, id: AllocId) -> Option<Relay> {
        self.slots.get_mut(id.slot())?.take_if(|r| r.id == id)
    }
}

/// Send a datagram with one `sendto`, now. UDP needs no readiness
/// bookkeeping, so go straight to the kernel (tokio's `try_send_to`
/// refuses until its reactor has seen a fresh socket writable). A full
/// buffer drops the datagram (datagram semantics).
pub(super) fn send_now(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket2::SockRef::from(sock).send_to(bytes, &to.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_are_found_by_relay_address_only() {
        let ports = PortRange::new(49152, 65535).unwrap();
        let t = RelayTable::new(Some("127.0.0.1".parse().unwrap()), None, ports);
        let relay: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let id = AllocId::from_bits((1 << 48) | (7 << 24) | 3).unwrap();
        t.set(&relay, id);
        assert_eq!(t.get(&relay), Some(id));
        assert_eq!(t.get(&relay).map(AllocId::worker), Some(1));
        // Same port on another host, the other family, or a port outside
        // the relay range: not ours.
        assert_eq!(t.get(&"8.8.8.8:50000".parse().unwrap()), None);
        assert_eq!(t.get(&"[::1]:50000".parse().unwrap()), None);
        assert_eq!(t.get(&"127.0.0.1:3478".parse().unwrap()), None);
        // A later tenant of the port is not cleared by an earlier one.
        let next = AllocId::from_bits(id.to_bits() + (1 << 24)).unwrap();
        t.set(&relay, next);
        t.clear(&relay, id);
        assert_eq!(t.get(&relay), Some(next));
        t.clear(&relay, next);
        assert_eq!(t.get(&relay), None);
    }
}
