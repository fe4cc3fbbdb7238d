//! Socket set-up: listener sockets (SO_REUSEPORT, sized buffers), relay
//! address discovery and the host's own addresses.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::RelayAddress;

/// A UDP listener socket that other workers can share (SO_REUSEPORT).
pub fn udp_listener(addr: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    udp_socket(addr, buffer_bytes, true)
}

/// A worker's own UDP socket with sized buffers (no SO_REUSEPORT: nothing
/// else may join it), e.g. for steered relay datagrams.
pub fn udp_private(addr: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    udp_socket(addr, buffer_bytes, false)
}

fn udp_socket(addr: SocketAddr, buffer_bytes: usize, shared: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if shared {
        s.set_reuse_port(true)?;
    }
    size_buffers(&s, buffer_bytes);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Ask for `bytes` of receive and send buffer. With CAP_NET_ADMIN (root,
/// or the capability granted to the service) `SO_RCVBUFFORCE` /
/// `SO_SNDBUFFORCE` set them whatever `net.core.rmem_max` / `wmem_max`
/// say; without it, the plain options are capped at those maxima (see
/// [`recv_buffer`]).
fn size_buffers(s: &Socket, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(s, libc::SOL_SOCKET, forced, value).is_err() {
            let _ = set_int_option(s, libc::SOL_SOCKET, plain, value);
        }
    }
}

/// `setsockopt` with an int value.
pub(crate) fn set_int_option(
    s: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer/length pair describing a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The receive buffer `s` has, in the units it was asked for (the kernel
/// reports twice that: it counts its bookkeeping too).
pub fn recv_buffer(s: &UdpSocket) -> usize {
    socket2::SockRef::from(s)
        .recv_buffer_size()
        .map_or(0, |b| b / 2)
}

/// A TCP listener socket that other workers can share (SO_REUSEPORT).
pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Check that no other socket serves `addr` (UDP, or TCP with `tcp`) by
/// binding it without SO_REUSEPORT; returns the address that bind got
/// (its port, for port 0). Listener groups share their port through
/// SO_REUSEPORT, which the kernel lets any process of the same user join,
/// so this is what stops a second tern from taking part of the clients:
/// the bind fails with `AddrInUse` against any socket holding the address.
/// For TCP, SO_REUSEADDR lets connections of an earlier run that linger
/// in TIME_WAIT pass, but not a listening socket.
pub(crate) fn probe_unused(addr: SocketAddr, tcp: bool) -> io::Result<SocketAddr> {
    let ty = if tcp { Type::STREAM } else { Type::DGRAM };
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if tcp {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP address"))
}

/// A relay socket bound to exactly `addr` (no port sharing).
pub(crate) fn relay_socket(addr: SocketAddr, dont_fragment: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if dont_fragment {
        set_dont_fragment(&s, addr.is_ipv6())?;
    }
    Ok(s.into())
}

/// DONT-FRAGMENT (RFC 8656 §14.8): set DF on everything the relay sends.
pub(crate) fn set_dont_fragment(s: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        set_int_option(s, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        set_int_option(
            s,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}

/// Resolve a configured relay address. `Auto` asks the routing table which
/// source address the host would use for a global destination (a UDP
/// `connect`, which sends nothing), falling back to loopback.
pub fn resolve_relay(addr: RelayAddress, v4: bool) -> Option<IpAddr> {
    match addr {
        RelayAddress::Ip(ip) => Some(ip),
        RelayAddress::Disabled => None,
        RelayAddress::Auto => {
            // Documentation addresses: routed by the default route like any
            // global address, and nothing is ever sent to them.
            let (bind, probe): (SocketAddr, SocketAddr) = if v4 {
                (
                    (Ipv4Addr::UNSPECIFIED, 0).into(),
                    (Ipv4Addr::new(203, 0, 113, 1), 9).into(),
                )
            } else {
                let probe = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
                ((Ipv6Addr::UNSPECIFIED, 0).into(), (probe, 9).into())
            };
            let routed = UdpSocket::bind(bind)
                .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
                .ok()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified());
            let loopback = if v4 {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
            let fallback = UdpSocket::bind(SocketAddr::new(loopback, 0))
                .ok()
                .map(|_| loopback);
            routed.or(fallback)
        }
    }
}

/// Every address configured on this host's interfaces (for the peer
/// policy's "own addresses" rule).
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether this process has CAP_NET_ADMIN (bit 12 of CapEff).
    fn net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap();
        u64::from_str_radix(caps.trim(), 16).unwrap() & (1 << 12) != 0
    }

    #[test]
    fn listener_buffers_are_sized_as_asked_or_capped_by_the_kernel() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let small = udp_listener(addr, 256 << 10).unwrap();
        assert_eq!(recv_buffer(&small), (256 << 10).min(sysctl("rmem_max")));
        // Above the kernel's maximum: granted with CAP_NET_ADMIN, capped
        // without.
        let asked = sysctl("rmem_max") + (1 << 20);
        let big = udp_listener(addr, asked).unwrap();
        let expected = if net_admin() {
            asked
        } else {
            sysctl("rmem_max")
        };
        assert_eq!(recv_buffer(&big), expected);
        let send = socket2::SockRef::from(&big).send_buffer_size().unwrap() / 2;
        let expected = if net_admin() {
            asked
        } else {
            sysctl("wmem_max")
        };
        assert_eq!(send, expected);
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let addrs = interface_addresses();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn explicit_and_disabled_relay_addresses_resolve_as_given() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(resolve_relay(RelayAddress::Ip(ip), true), Some(ip));
        assert_eq!(resolve_relay(RelayAddress::Disabled, true), None);
        assert!(resolve_relay(RelayAddress::Auto, true).is_some_and(|ip| ip.is_ipv4()));
    }

    #[test]
    fn udp_listeners_share_a_port_across_workers() {
        let a = udp_listener("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = udp_listener(SocketAddr::from(([127, 0, 0, 1], port)), 1 << 20).unwrap();
        assert_eq!(b.local_addr().unwrap().port(), port);
    }
}
