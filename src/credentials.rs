//! Minting TURN REST API credentials and the `iceServers` a browser needs.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::auth::rest_password;
use crate::config::Config;

/// A time-limited credential in the REST API draft's response shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestCredential {
    /// `<expiry>:<user>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Seconds the credential is valid.
    pub ttl: u64,
    /// `turn:` URIs of the server.
    pub uris: Vec<String>,
}

/// Mint `<expiry>:<user>` / base64(HMAC-SHA1(secret, username)).
pub fn mint(
    secret: &str,
    user: &str,
    ttl: u64,
    now_unix: u64,
    uris: Vec<String>,
) -> RestCredential {
    let expiry = now_unix.saturating_add(ttl);
    let username = if user.is_empty() {
        expiry.to_string()
    } else {
        format!("{expiry}:{user}")
    };
    let password = rest_password(secret.as_bytes(), &username);
    RestCredential {
        username,
        password,
        ttl,
        uris,
    }
}

/// The host clients should use: `host`, else the external IPv4 address,
/// else the relay address tern found.
pub fn public_host(config: &Config, relay_v4: Option<IpAddr>, relay_v6: Option<IpAddr>) -> String {
    if let Some(h) = &config.host {
        return h.clone();
    }
    let ip = config
        .external_ipv4
        .map(IpAddr::V4)
        .or(relay_v4)
        .or(config.external_ipv6.map(IpAddr::V6))
        .or(relay_v6);
    match ip {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(ip) => ip.to_string(),
        None => "localhost".into(),
    }
}

/// `turn:` and `turns:` URIs (RFC 7065) for the configured listeners, one
/// per listener port and transport (e.g. `turns:` on both 443 and 5349).
/// A `turns:` URI says `transport=tcp` (TLS runs over TCP; browsers use
/// TLS over TCP for `turns:` whatever it says).
pub fn turn_uris(
    host: &str,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    tls: &[SocketAddr],
) -> Vec<String> {
    let mut uris = Vec::new();
    for (scheme, transport, addrs) in [
        ("turn", "udp", udp),
        ("turn", "tcp", tcp),
        ("turns", "tcp", tls),
    ] {
        // Each port once (a dual-stack pair shares one), in listed order.
        let mut ports: Vec<u16> = Vec::new();
        for a in addrs {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
                uris.push(format!(
                    "{scheme}:{host}:{}?transport={transport}",
                    a.port()
                ));
            }
        }
    }
    uris
}

/// An `iceServers` array for `RTCPeerConnection`: a `stun:` entry on the
/// first UDP (else TCP) port and one entry with every `turn:`/`turns:`
/// URI and the credential.
pub fn ice_servers(
    host: &str,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    cred: &RestCredential,
) -> serde_json::Value {
    let stun_port = udp.first().or(tcp.first()).map_or(3478, SocketAddr::port);
    serde_json::json!([
        { "urls": [format!("stun:{host}:{stun_port}")] },
        { "urls": cred.uris, "username": cred.username, "credential": cred.password },
    ])
}

/// [`ice_servers`] as pretty-printed JSON.
pub fn ice_servers_json(
    host: &str,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
    cred: &RestCredential,
) -> String {
    serde_json::to_string_pretty(&ice_servers(host, udp, tcp, cred)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_authenticate_against_the_same_secret() {
        let c = mint("s", "alice", 3600, 1_000, vec![]);
        assert_eq!(c.username, "4600:alice");
        let creds = crate::auth::Credentials::new("r", &[], &["s".into()]);
        let key = crate::auth::long_term_key(&c.username, "r", &c.password);
        assert!(
            creds
                .authenticate(&c.username, 1_000, |k| k == &key)
                .is_ok()
        );
        assert_eq!(mint("s", "", 10, 5, vec![]).username, "15");
    }

    #[test]
    fn uris_follow_the_listeners() {
        let udp = ["0.0.0.0:3478".parse().unwrap()];
        let tcp = ["0.0.0.0:3479".parse().unwrap()];
        assert_eq!(
            turn_uris("h", &udp, &tcp, &[]),
            vec!["turn:h:3478?transport=udp", "turn:h:3479?transport=tcp"]
        );
        assert_eq!(
            turn_uris("h", &[], &tcp, &[]),
            vec!["turn:h:3479?transport=tcp"]
        );
        let tls = ["0.0.0.0:5349".parse().unwrap()];
        assert_eq!(
            turn_uris("turn.example.com", &udp, &[], &tls),
            vec![
                "turn:turn.example.com:3478?transport=udp",
                "turns:turn.example.com:5349?transport=tcp"
            ]
        );
    }
}
