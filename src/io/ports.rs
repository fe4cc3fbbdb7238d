//! The relay port allocator, shared by every worker (touched per Allocate,
//! never per packet). A port is free when binding it succeeds, so ports held
//! by other programs are skipped too. EVEN-PORT reservations (RFC 8656
//! §14.6) hold the next port's socket for 30 seconds under a random token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::{Family, PortRequest, RelayError, RelayRequest};
use crate::policy::PortRange;

use super::net;

/// How long a RESERVATION-TOKEN holds its port (RFC 8656 §14.9: ~30 s).
pub const RESERVATION_TIME: Duration = Duration::from_secs(30);
/// Reservations held at once, server-wide (bounded memory).
const MAX_RESERVATIONS: usize = 1024;

/// Hands out relay sockets within the configured range.
#[derive(Debug)]
pub struct RelayPorts {
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
    range: PortRange,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cursor: u32,
    reservations: HashMap<[u8; 8], (UdpSocket, Instant)>,
}

impl RelayPorts {
    /// An allocator binding relays on `v4`/`v6` (`None`: family disabled).
    pub fn new(v4: Option<IpAddr>, v6: Option<IpAddr>, range: PortRange) -> Self {
        Self {
            v4,
            v6,
            range,
            state: Mutex::new(State {
                cursor: rand::random::<u32>() % range.len(),
                reservations: HashMap::new(),
            }),
        }
    }

    /// The relay IP of each family.
    pub fn addresses(&self) -> (Option<IpAddr>, Option<IpAddr>) {
        (self.v4, self.v6)
    }

    /// The relay port range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Bind a relay socket for `req`; returns it and any reservation token.
    pub fn open(
        &self,
        req: &RelayRequest,
        now: Instant,
    ) -> Result<(UdpSocket, Option<[u8; 8]>), RelayError> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.reservations.retain(|_, (_, exp)| *exp > now);
        if let PortRequest::Reserved(token) = req.port {
            let (sock, _) = st
                .reservations
                .remove(&token)
                .ok_or(RelayError::NoCapacity)?;
            if req.dont_fragment {
                let v6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
                net::set_dont_fragment(&sock, v6).map_err(|_| RelayError::NoCapacity)?;
            }
            return Ok((sock, None));
        }
        let ip = match req.family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
        .ok_or(RelayError::FamilyUnavailable)?;
        let even = matches!(req.port, PortRequest::Even { .. });
        let reserve = matches!(req.port, PortRequest::Even { reserve_next: true });
        if reserve && st.reservations.len() >= MAX_RESERVATIONS {
            return Err(RelayError::NoCapacity);
        }
        let n = self.range.len();
        for i in 0..n {
            let offset = (st.cursor + i) % n;
            let port = u16::try_from(u32::from(self.range.start()) + offset).unwrap_or(0);
            if port == 0 || (even && port % 2 != 0) {
                continue;
            }
            if reserve && !self.range.contains(port.saturating_add(1)) {
                continue;
            }
            let Ok(sock) = net::relay_socket(SocketAddr::new(ip, port), req.dont_fragment) else {
                continue;
            };
            let token = if reserve {
                let Ok(next) = net::relay_socket(SocketAddr::new(ip, port + 1), false) else {
                    continue;
                };
                let token: [u8; 8] = rand::random();
                st.reservations
                    .insert(token, (next, now + RESERVATION_TIME));
                Some(token)
            } else {
                None
            };
            st.cursor = (offset + 1) % n;
            return Ok((sock, token));
        }
        Err(RelayError::NoCapacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range of `len` ports on 127.0.0.1 that were all free a moment
    /// ago (found by binding them), starting at an even port.
    fn free_range(len: u16) -> PortRange {
        for _ in 0..100 {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            let start = probe.local_addr().unwrap().port() & !1;
            drop(probe);
            let Some(end) = start.checked_add(len - 1) else {
                continue;
            };
            let held: Result<Vec<_>, _> = (start..=end)
                .map(|p| UdpSocket::bind(("127.0.0.1", p)))
                .collect();
            if held.is_ok() {
                return PortRange::new(start, end).unwrap();
            }
        }
        panic!("no {len} free ports in a row");
    }

    fn req(port: PortRequest) -> RelayRequest {
        RelayRequest {
            family: Family::V4,
            port,
            dont_fragment: false,
        }
    }

    #[test]
    fn ports_come_from_the_range_until_it_is_exhausted() {
        let range = free_range(4);
        let p = RelayPorts::new(Some("127.0.0.1".parse().unwrap()), None, range);
        let now = Instant::now();
        let socks: Vec<_> = (0..4)
            .map(|_| p.open(&req(PortRequest::Any), now).unwrap().0)
            .collect();
        for s in &socks {
            assert!(range.contains(s.local_addr().unwrap().port()));
        }
        assert_eq!(
            p.open(&req(PortRequest::Any), now).unwrap_err(),
            RelayError::NoCapacity
        );
        let v6 = RelayRequest {
            family: Family::V6,
            ..req(PortRequest::Any)
        };
        assert_eq!(p.open(&v6, now).unwrap_err(), RelayError::FamilyUnavailable);
    }

    #[test]
    fn even_port_reserves_the_next_one_for_its_token() {
        let range = free_range(10);
        let p = RelayPorts::new(Some("127.0.0.1".parse().unwrap()), None, range);
        let now = Instant::now();
        let (sock, token) = p
            .open(&req(PortRequest::Even { reserve_next: true }), now)
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        assert_eq!(port % 2, 0);
        let token = token.unwrap();
        let (next, none) = p.open(&req(PortRequest::Reserved(token)), now).unwrap();
        assert_eq!(next.local_addr().unwrap().port(), port + 1);
        assert_eq!(none, None);
        // A token works once.
        assert!(p.open(&req(PortRequest::Reserved(token)), now).is_err());
        // And expires.
        let (_s, t2) = p
            .open(&req(PortRequest::Even { reserve_next: true }), now)
            .unwrap();
        let later = now + RESERVATION_TIME;
        assert!(
            p.open(&req(PortRequest::Reserved(t2.unwrap())), later)
                .is_err()
        );
    }
}
