//! Which peers a relay may reach.
//!
//! An open relay is a proxy into the operator's network (coturn
//! CVE-2020-26262), so the default denies every special-purpose range and the
//! server's own addresses; `[peers] allow` (wins) and `[peers] deny` extend
//! it. Addresses that carry an IPv4 address inside IPv6 (mapped, compatible,
//! NAT64, 6to4, Teredo) are judged by the IPv4 address they carry.
//! Checked at CreatePermission/ChannelBind and again on every relayed packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Ranges denied unless `[peers] allow` lists them.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "2001:db8::/32",
];

/// An inclusive port range, start <= end (parsed, not re-checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// `None` unless `1 <= start <= end`.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start >= 1 && start <= end).then_some(Self { start, end })
    }
    /// The first port.
    pub fn start(&self) -> u16 {
        self.start
    }
    /// The last port.
    pub fn end(&self) -> u16 {
        self.end
    }
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end - self.start) + 1
    }
    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why a peer was refused; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// In a default-denied special-purpose range.
    Reserved,
    /// In `[peers] deny`.
    Configured,
    /// One of the server's own addresses, outside the relay port range.
    OwnAddress,
}

/// The peer filter of one configuration.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    defaults: Vec<IpNet>,
    /// Addresses relays are bound to or advertised as: relay-to-relay traffic
    /// to these, inside the relay port range, stays allowed.
    relay_ips: Vec<IpAddr>,
    /// Every other address of this host (listeners, interfaces).
    own_ips: Vec<IpAddr>,
    relay_ports: PortRange,
}

impl PeerPolicy {
    /// Build a policy. `relay_ips` and `own_ips` are canonicalised here.
    pub fn new(
        allow: Vec<IpNet>,
        deny: Vec<IpNet>,
        relay_ips: Vec<IpAddr>,
        own_ips: Vec<IpAddr>,
        relay_ports: PortRange,
    ) -> Self {
        let defaults = DEFAULT_DENY.iter().filter_map(|s| s.parse().ok()).collect();
        Self {
            allow,
            deny,
            defaults,
            relay_ips: relay_ips.into_iter().map(canonical).collect(),
            own_ips: own_ips.into_iter().map(canonical).collect(),
            relay_ports,
        }
    }

    /// Check a peer IP for CreatePermission (no port is known yet).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denial> {
        self.check(ip, None)
    }

    /// Check a full peer address (ChannelBind, every relayed packet).
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), Denial> {
        self.check(addr.ip(), Some(addr.port()))
    }

    fn check(&self, ip: IpAddr, port: Option<u16>) -> Result<(), Denial> {
        let ips = embedded(ip);
        let judged = ips.iter().flatten();
        if judged
            .clone()
            .all(|ip| self.allow.iter().any(|n| n.contains(ip)))
        {
            return Ok(());
        }
        if judged
            .clone()
            .any(|ip| self.deny.iter().any(|n| n.contains(ip)))
        {
            return Err(Denial::Configured);
        }
        let in_range = port.is_none_or(|p| self.relay_ports.contains(p));
        if judged.clone().any(|ip| self.relay_ips.contains(ip)) {
            return if in_range {
                Ok(())
            } else {
                Err(Denial::OwnAddress)
            };
        }
        if judged.clone().any(|ip| self.own_ips.contains(ip)) {
            return Err(Denial::OwnAddress);
        }
        if judged
            .clone()
            .any(|ip| self.defaults.iter().any(|n| n.contains(ip)))
        {
            return Err(Denial::Reserved);
        }
        Ok(())
    }
}

/// The address an IPv4-in-IPv6 address stands for, else the address itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    embedded(ip)[0].unwrap_or(ip)
}

/// The addresses to judge for `ip`: itself, or the IPv4 address(es) it
/// carries (Teredo carries two: server and obfuscated client).
fn embedded(ip: IpAddr) -> [Option<IpAddr>; 2] {
    let IpAddr::V6(v6) = ip else {
        return [Some(ip), None];
    };
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    let tail = v4(o[12], o[13], o[14], o[15]);
    if let Some(m) = v6.to_ipv4_mapped() {
        return [Some(IpAddr::V4(m)), None];
    }
    // IPv4-compatible (deprecated ::a.b.c.d), but not :: or ::1.
    if s[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return [tail, None];
    }
    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        return [tail, None];
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return [v4(o[2], o[3], o[4], o[5]), None];
    }
    // Teredo: 2001:0000:<server v4>:<flags>:<port>:<client v4 ^ 0xffffffff>.
    if s[0] == 0x2001 && s[1] == 0 {
        let client = v4(!o[12], !o[13], !o[14], !o[15]);
        return [v4(o[4], o[5], o[6], o[7]), client];
    }
    [Some(ip), None]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny.iter().map(|s| s.parse().unwrap()).collect(),
            vec!["10.1.1.1".parse().unwrap()],
            vec!["198.51.100.9".parse().unwrap(), "8.8.4.4".parse().unwrap()],
            PortRange::new(49152, 65535).unwrap(),
        )
    }

    #[test]
    fn every_default_range_is_denied() {
        let p = policy(&[], &[]);
        for net in DEFAULT_DENY {
            let net: IpNet = net.parse().unwrap();
            assert_eq!(p.check_ip(net.network()), Err(Denial::Reserved), "{net}");
            assert_eq!(p.check_ip(net.broadcast()), Err(Denial::Reserved), "{net}");
        }
        for ip in [
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
            "64:ff9b:1::a00:1",
        ] {
            assert!(p.check_ip(ip.parse().unwrap()).is_err(), "{ip}");
        }
    }

    #[test]
    fn public_peers_pass_and_lists_extend_the_defaults() {
        let p = policy(&["127.0.0.1/32"], &["9.9.9.0/24"]);
        assert_eq!(p.check_ip("1.1.1.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check_ip("2606:4700::1111".parse().unwrap()), Ok(()));
        assert_eq!(p.check_ip("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check_ip("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(
            p.check_ip("127.0.0.2".parse().unwrap()),
            Err(Denial::Reserved)
        );
        assert_eq!(
            p.check_ip("9.9.9.9".parse().unwrap()),
            Err(Denial::Configured)
        );
    }

    #[test]
    fn own_addresses_are_denied_except_relay_ports() {
        let p = policy(&[], &[]);
        assert_eq!(p.check_addr("10.1.1.1:50000".parse().unwrap()), Ok(()));
        assert_eq!(p.check_ip("10.1.1.1".parse().unwrap()), Ok(()));
        assert_eq!(
            p.check_addr("10.1.1.1:3478".parse().unwrap()),
            Err(Denial::OwnAddress)
        );
        assert_eq!(
            p.check_addr("8.8.4.4:50000".parse().unwrap()),
            Err(Denial::OwnAddress)
        );
    }

    #[test]
    fn readme_lists_exactly_the_default_deny_list() {
        let defaults: Vec<IpNet> = DEFAULT_DENY.iter().map(|s| s.parse().unwrap()).collect();
        // README writes them short: "10/8", "100.64/10", "::1",
        // "255.255.255.255".
        let words: Vec<&str> = include_str!("../README.md").split_whitespace().collect();
        let text = words.join(" ");
        let (_, list) = text
            .split_once("Relaying is denied by default to ")
            .unwrap();
        let (list, _) = list.split_once(", and to the server's own").unwrap();
        let widen = |s: &str| -> IpNet {
            let (addr, len) = s.split_once('/').unwrap_or((s, ""));
            if addr.contains(':') {
                let len = if len.is_empty() { "128" } else { len };
                return format!("{addr}/{len}").parse().unwrap();
            }
            let mut octets: Vec<&str> = addr.split('.').collect();
            octets.resize(4, "0");
            let len = if len.is_empty() { "32" } else { len };
            format!("{}/{len}", octets.join(".")).parse().unwrap()
        };
        let listed: Vec<IpNet> = list.split(", ").map(str::trim).map(widen).collect();
        assert_eq!(listed, defaults);
    }
}
