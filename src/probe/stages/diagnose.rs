//! What each failure means: (what was seen, the likely cause, what to
//! change), in words an operator can act on, naming tern's keys.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use stun::message::{CLASS_ERROR_RESPONSE, Message};

use super::super::client::{NoAnswer, Proto};
use super::error;
use crate::auth::rest_expiry;

/// (seen, likely cause, what to change).
pub(super) type Why = (String, String, String);

fn why(seen: impl Into<String>, cause: impl Into<String>, change: impl Into<String>) -> Why {
    (seen.into(), cause.into(), change.into())
}

/// Whether `ip` is in none of the ranges tern denies as peers by default
/// (loopback, private, link-local, CGNAT, documentation, multicast, …).
pub(super) fn is_public(ip: IpAddr) -> bool {
    let ip = crate::policy::canonical(ip);
    !crate::policy::DEFAULT_DENY
        .iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .any(|n| n.contains(&ip))
}

/// An error response's code and reason, e.g. `403 (Forbidden)`.
pub(super) fn code_text(m: &Message) -> String {
    match error(m) {
        Some((code, reason)) => format!("{code} ({reason})"),
        None if m.typ.class == CLASS_ERROR_RESPONSE => "with an error without ERROR-CODE".into(),
        None => "with success".into(),
    }
}

pub(super) fn unreachable(proto: Proto, server: SocketAddr, t: Duration, e: &NoAnswer) -> Why {
    let (p, port, secs) = (proto.label().to_uppercase(), server.port(), t.as_secs_f64());
    let key = format!("[listen] {}", proto.label());
    match (proto, e) {
        (_, NoAnswer::Refused) => why(
            format!(
                "{server} refused ({})",
                if proto == Proto::Udp {
                    "ICMP port unreachable"
                } else {
                    "TCP reset"
                }
            ),
            format!("nothing listens on {p} {port} on that host"),
            format!("start tern there, or add the address to {key}"),
        ),
        (Proto::Udp, NoAnswer::Timeout) => why(
            format!("no answer from {server} over UDP within {secs} s"),
            format!("a firewall drops UDP {port} on the way, or nothing listens there"),
            format!("open UDP {port} inbound to the server, and check that {key} lists it"),
        ),
        (Proto::Tcp | Proto::Tls, NoAnswer::Timeout) => why(
            format!("no answer from {server} over TCP within {secs} s"),
            format!("a firewall drops TCP {port}, or the server accepts but does not answer STUN"),
            format!("open TCP {port} inbound, and check that {key} lists it"),
        ),
        (_, NoAnswer::Closed) => why(
            format!("{server} closed the connection without answering a Binding request"),
            "the per-IP connection limit is reached, or the listener expects a PROXY protocol header from this address",
            "check [limits] max-tcp-connections-per-ip and [listen] proxy-protocol-from",
        ),
        (_, NoAnswer::Tls(err)) => why(
            format!("the TLS handshake with {server} failed: {err}"),
            tls_cause(err),
            "serve the full chain for the host from a CA clients trust ([tls] certificate-file; host must be one of its names), or pass --ca-file for a private CA",
        ),
        (_, NoAnswer::Failed(err)) => why(
            format!("cannot reach {server} over {p}: {err}"),
            "no route from this machine to the server",
            "check this machine's network and the server's address",
        ),
    }
}

fn tls_cause(err: &str) -> &'static str {
    if err.contains("UnknownIssuer") {
        "the certificate is not signed by a CA this machine trusts (self-signed, a private CA, or a chain without its intermediate)"
    } else if err.contains("NotValidForName") {
        "the certificate does not name the host in the URI (browsers refuse it too)"
    } else if err.contains("Expired") {
        "the certificate has expired (browsers refuse it too)"
    } else if err.contains("CaUsedAsEndEntity") {
        "the server presents a CA certificate (a self-signed one made with openssl req -x509) as its own; clients want a leaf certificate signed by a CA"
    } else if err.contains("invalid peer certificate") {
        "the certificate does not verify for this host"
    } else if err.contains("NoApplicationProtocol") || err.contains("no_application_protocol") {
        "the server refuses the ALPN protocol stun.turn"
    } else {
        "a TLS server that does not speak TLS 1.2 or 1.3 with common cipher suites, or not TLS at all on that port"
    }
}

pub(super) fn no_mapped(m: &Message) -> Why {
    why(
        format!(
            "the Binding answer ({}) has no XOR-MAPPED-ADDRESS",
            code_text(m)
        ),
        "not a STUN server (RFC 8489) on that port",
        "point the URI at the TURN server's listener",
    )
}

pub(super) fn allocate_unanswered(e: &NoAnswer) -> Why {
    why(
        format!("a TURN request got {e}, though Binding was answered"),
        "a STUN-only server, or a middlebox that passes Binding but drops TURN methods",
        "use a server that serves TURN (tern: stun-only = false)",
    )
}

pub(super) fn no_challenge(m: &Message) -> Why {
    match error(m) {
        Some((400, r)) if r.contains("STUN only") => why(
            "an Allocate got 400 (STUN only)",
            "the server runs with stun-only = true",
            "set stun-only = false to serve TURN, or use another server for TURN",
        ),
        Some((300, _)) => why(
            "an Allocate got 300 Try Alternate",
            "the server is draining (SIGTERM) and points clients elsewhere ([shutdown] alternate-server)",
            "probe the alternate server, or wait until this one restarts",
        ),
        Some((508, _)) => why(
            "an Allocate got 508 Insufficient Capacity before authentication",
            "the server is draining (SIGTERM)",
            "wait until it restarts",
        ),
        Some((401, _)) => why(
            "a 401 without REALM or NONCE",
            "not a long-term-credential TURN server (RFC 8489 §9.2)",
            "use a TURN server with long-term credentials",
        ),
        Some((code, reason)) => why(
            format!("an unsigned Allocate got {code} ({reason}), not 401"),
            "a server that does not challenge as RFC 8656 says",
            "check the server's TURN support",
        ),
        None => why(
            "an Allocate without credentials succeeded",
            "the server relays for anyone, without authentication",
            "require credentials on the server (tern always does)",
        ),
    }
}

pub(super) fn realm(got: &str, want: &str) -> Why {
    why(
        format!("the server's realm is {got:?}, not {want:?}"),
        "the server and its clients are configured with different realms",
        format!("set realm = {want:?} in the server's config, or use --realm {got:?}"),
    )
}

pub(super) fn no_credential() -> Why {
    why(
        "no credential given",
        "neither --secret nor --user with --password",
        "pass --secret (a REST secret from [auth] secrets) or --user and --password",
    )
}

pub(super) fn incomplete_success() -> Why {
    why(
        "the Allocate success lacks XOR-RELAYED-ADDRESS or XOR-MAPPED-ADDRESS",
        "a server that does not follow RFC 8656",
        "check the server's TURN support",
    )
}

pub(super) fn allocate_error(m: &Message, user: &str) -> Why {
    let Some((code, reason)) = error(m) else {
        return no_challenge(m);
    };
    let seen = format!("the signed Allocate got {code} ({reason})");
    match code {
        401 => unauthorized(seen, user),
        438 => why(
            format!("{seen} twice, with a fresh nonce each time"),
            "several servers behind one address that do not share a nonce key (or a clock that jumps)",
            "give every node of a fleet the same nonce key, or keep a client on one node",
        ),
        486 => why(
            seen,
            "an allocation quota: per user ([limits] max-allocations-per-user) or server-wide (max-allocations)",
            "wait for allocations to end, or raise the limit",
        ),
        508 => why(
            seen,
            "the relay ports are used up ([relay] min-port..max-port) or the server is draining",
            "widen the port range, or wait",
        ),
        403 => why(
            seen,
            "the server refuses this user (blocked by an operator) or this address",
            "check the server's admin blocks and logs",
        ),
        437 => why(
            seen,
            "an allocation already exists for this source address and port (a client reusing its port)",
            "wait for it to expire, or probe again (a new port)",
        ),
        440 => why(
            seen,
            "the server has no relay address of the requested family",
            "set [relay] address-ipv4/address-ipv6 to an address instead of \"none\"",
        ),
        441 => why(
            seen,
            "this 5-tuple's allocation belongs to another username",
            "probe again from a new port",
        ),
        442 => why(
            seen,
            "the server relays no UDP for this request",
            "check the server's TURN support",
        ),
        300 | 400 => no_challenge(m),
        _ => why(
            seen,
            "an error tern does not send",
            "check the server's logs",
        ),
    }
}

/// Whether `user` is a REST username whose expiry has passed here.
pub(super) fn expired_by_local_clock(user: &str) -> bool {
    rest_expiry(user).is_some_and(|e| e <= crate::unix::now())
}

fn unauthorized(seen: String, user: &str) -> Why {
    let now = crate::unix::now();
    if let Some(expiry) = rest_expiry(user).filter(|e| *e <= now) {
        return why(
            format!(
                "{seen}: the credential {user:?} expired {} s ago by this machine's clock",
                now - expiry
            ),
            "a REST credential used after its expiry (the number before ':')",
            "mint a fresh credential (tern credentials, or your web application)",
        );
    }
    if rest_expiry(user).is_some() {
        return why(
            format!("{seen} for the REST credential {user:?}"),
            "the password is not base64(HMAC-SHA1(secret, username)) for any of the server's [auth] secrets, or the server's clock is past the expiry",
            "mint with a secret listed in [auth] secrets (or secret-files), and check the server's clock",
        );
    }
    why(
        format!("{seen} for the user {user:?}"),
        "a wrong password, or no [[auth.users]] entry with that name (tern answers both alike)",
        "check the [[auth.users]] name and password (or use a REST credential)",
    )
}

/// A 401 explained by the server's `tern_auth_failures_total` reason.
pub(super) fn server_says(reason: &str, user: &str, fallback: Why) -> Why {
    let seen =
        format!("the signed Allocate got 401 for {user:?}; the server counted it as {reason:?}");
    match reason {
        "expired" => why(
            seen,
            "the server sees the credential as expired: its clock is ahead of the one that minted it (by more than the credential's life), or the credential is old",
            "fix time synchronisation (chrony, systemd-timesyncd) on the server and where credentials are minted",
        ),
        "bad_integrity" => why(
            seen,
            "the password does not match: a wrong static password, or a REST credential minted with a secret the server does not have",
            "check the password, or list the minting secret in [auth] secrets (or secret-files) and reload",
        ),
        "unknown_user" => why(
            seen,
            "no [[auth.users]] entry has that name (and it is not a REST credential)",
            "add the user, or use a REST credential",
        ),
        _ => fallback,
    }
}

pub(super) fn clock_ahead(user: &str) -> Why {
    why(
        format!(
            "a fresh one-hour credential {user:?} got 401, but one valid for 30 days was accepted"
        ),
        "the server's clock is more than an hour ahead of this machine's, so it sees short credentials as expired",
        "fix time synchronisation (chrony, systemd-timesyncd) on the server and on whatever mints credentials",
    )
}

pub(super) fn wrong_secret(user: &str) -> Why {
    why(
        format!(
            "the signed Allocate got 401 for {user:?}, minted with --secret (also with a 30-day expiry)"
        ),
        "the server has no REST secret equal to --secret (a secret that works in one place but not in the file: quotes, stray spaces, the wrong file)",
        "list the same secret in [auth] secrets or secret-files, then reload (SIGHUP)",
    )
}

pub(super) fn unexpected_relay(got: IpAddr, want: IpAddr) -> Why {
    why(
        format!("the relayed address is {got}, not {want}"),
        "the server advertises another address than the public one peers must reach",
        format!("set [relay] external-ipv4 (or external-ipv6) = \"{want}\""),
    )
}

pub(super) fn private_relay(got: IpAddr, server: IpAddr) -> Why {
    why(
        format!(
            "the relayed address {got} is private or loopback, though you reached the server at public {server}"
        ),
        "the server is behind NAT (a cloud VM, Docker) and advertises its inside address",
        format!("set [relay] external-ipv4 = \"{server}\" (its public address)"),
    )
}

pub(super) fn own_permission(m: &Message, ip: IpAddr) -> Why {
    why(
        format!(
            "a permission for your own address {ip} got {}",
            code_text(m)
        ),
        format!(
            "the server's peer policy denies {ip}'s range (tern denies loopback, private and CGNAT peers by default)"
        ),
        "probe from a public address, or list your network in [peers] allow while you test",
    )
}

pub(super) fn local(e: &std::io::Error) -> Why {
    why(
        format!("no local UDP socket: {e}"),
        "this machine",
        "check this machine's limits",
    )
}

pub(super) fn cannot_send(relayed: SocketAddr, e: &std::io::Error, server: IpAddr) -> Why {
    let cause = if relayed.ip() == server {
        "no route from here to the relay".to_owned()
    } else {
        format!(
            "the relayed address is not the server's ({server}): [relay] external-ipv4/ipv6 names an address this machine cannot reach"
        )
    };
    why(
        format!("cannot send to the relayed address {relayed}: {e}"),
        cause,
        "set [relay] external-ipv4 to the server's public address, or remove it",
    )
}

/// Datagrams to the relay never came back. A permission for `peer`
/// was granted, so the peer policy allows it — unless it is the server's
/// own address (probing from the server's host), which tern lets through
/// only from its relay ports.
pub(super) fn inbound_lost(relayed: SocketAddr, server: IpAddr, peer: IpAddr, t: Duration) -> Why {
    let seen = format!(
        "datagrams to the relayed address {relayed} never came back within {} s",
        t.as_secs_f64()
    );
    if relayed.ip() != server {
        why(
            seen,
            format!(
                "{} is not where the server receives ([relay] external-ipv4/ipv6 names another address than its public one), or a firewall drops UDP to the relay ports",
                relayed.ip()
            ),
            format!(
                "set [relay] external-ipv4 to the address peers reach the server at (you reached it at {server}), and open the relay port range"
            ),
        )
    } else if peer == server || peer.is_loopback() {
        why(
            seen,
            format!(
                "you probe from the server's own host: its peer policy drops datagrams from its own address {peer} unless they come from its relay ports (and denies loopback)"
            ),
            "probe from another host, as your users are",
        )
    } else {
        why(
            seen,
            format!(
                "a firewall drops UDP to the relay ports (port {} is in [relay] min-port..max-port)",
                relayed.port()
            ),
            "open the relay port range (tern's default: UDP 49152-65535) inbound to the server",
        )
    }
}

pub(super) fn outbound_lost(relayed: SocketAddr, t: Duration) -> Why {
    why(
        format!(
            "a Send indication from the relay {relayed} to your UDP port never arrived within {} s",
            t.as_secs_f64()
        ),
        "the server's outbound UDP from the relay ports is blocked, or this side drops it",
        "allow outbound UDP from the relay port range on the server",
    )
}

pub(super) fn refresh_error(m: &Message) -> Why {
    why(
        format!("Refresh with lifetime 0 got {}", code_text(m)),
        "the allocation ended early or the credential changed",
        "check the server's logs",
    )
}
