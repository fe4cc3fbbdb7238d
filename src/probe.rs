//! `tern probe`: a stage-by-stage diagnosis of a TURN server as a client
//! sees it — reachability, Binding, the challenge, the authenticated
//! Allocate, the relayed address, relay ports in and out, the peer policy,
//! cleanup — with each failure named with what was seen, the likely cause
//! and what to change. Runs against any TURN server; it knows tern's
//! defaults and keys.
//!
//! Blocking sockets, no runtime: a command-line tool, never on the
//! server's path.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

mod client;
mod stages;

pub use client::Proto;

/// What to probe and with which credential.
#[derive(Debug, Clone)]
pub struct Options {
    /// A `turn:` URI, with `?transport=udp|tcp` or (both) without.
    pub url: String,
    /// A TURN REST API secret to mint a credential with.
    pub secret: Option<String>,
    /// The user name (with `secret`: the REST user part).
    pub user: Option<String>,
    /// A static user's password, or a ready REST credential's.
    pub password: Option<String>,
    /// The realm the server should announce.
    pub realm: Option<String>,
    /// The public IP relayed addresses should carry.
    pub expect_ip: Option<IpAddr>,
    /// How long each exchange may take.
    pub timeout: Duration,
    /// The server's admin listener, whose `/metrics` tell why it refused
    /// a credential.
    pub admin: Option<SocketAddr>,
    /// PEM certificates to trust for `turns:` besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// One stage's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    /// E.g. `udp allocate`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen; on failure also the likely cause and the fix.
    pub detail: String,
}

/// Every stage run, in order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// True when every stage passed.
    pub ok: bool,
    /// The stages.
    pub stages: Vec<Stage>,
}

impl Report {
    /// One `PASS`/`FAIL name: detail` line per stage and a summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.stages {
            let word = if s.ok { "PASS" } else { "FAIL" };
            out.push_str(&format!("{word} {}: {}\n", s.name, s.detail));
        }
        let failed = self.stages.iter().filter(|s| !s.ok).count();
        out.push_str(&format!(
            "{}: {} stages, {failed} failed\n",
            if self.ok { "ok" } else { "not ok" },
            self.stages.len()
        ));
        out
    }
}

/// A parsed `turn:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as written (a name or an IP).
    pub host: String,
    /// The port (default 3478).
    pub port: u16,
    /// The transports to check.
    pub protos: Vec<Proto>,
}

/// Parse `turn:HOST[:PORT][?transport=udp|tcp]` or
/// `turns:HOST[:PORT][?transport=tcp]` (RFC 7065).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (secure, rest) = if let Some(r) = url.strip_prefix("turns:") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("turn:") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?} is not a turn: or turns: URI (turn:HOST[:PORT][?transport=udp|tcp])"
        ));
    };
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let protos = match (secure, query) {
        (true, "" | "transport=tcp") => vec![Proto::Tls],
        (true, "transport=udp") => {
            return Err("turns: over UDP (DTLS) is not served by tern; use ?transport=tcp".into());
        }
        (false, "") => vec![Proto::Udp, Proto::Tcp],
        (false, "transport=udp") => vec![Proto::Udp],
        (false, "transport=tcp") => vec![Proto::Tcp],
        q => {
            return Err(format!(
                "unknown query {q:?}: use ?transport=udp or ?transport=tcp"
            ));
        }
    };
    let (host, port) = split_host_port(hostport)?;
    Ok(Target {
        host,
        port: port.unwrap_or(if secure { 5349 } else { 3478 }),
        protos,
    })
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("{p:?} is not a port");
    if let Some(v6) = s.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err(format!("{s:?}: junk after ]")),
        };
        return Ok((ip.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            Ok((h.to_owned(), Some(p.parse().map_err(|_| bad_port(p))?)))
        }
        Some(_) => Err(format!("{s:?}: write an IPv6 address in brackets")),
        None if s.is_empty() => Err("no host".into()),
        None => Ok((s.to_owned(), None)),
    }
}

/// Run every stage against `opts.url`.
pub fn run(opts: &Options) -> Report {
    let mut stages = Vec::new();
    match parse_url(&opts.url).and_then(|t| resolve(&t).map(|a| (t, a))) {
        Err(e) => stages.push(Stage {
            name: "url".into(),
            ok: false,
            detail: e,
        }),
        Ok((target, server)) => {
            let tls = match target.protos.contains(&Proto::Tls) {
                true => match tls_client(&target.host, opts.ca_file.as_deref()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        stages.push(Stage {
                            name: "tls".into(),
                            ok: false,
                            detail: e,
                        });
                        return Report { ok: false, stages };
                    }
                },
                false => None,
            };
            for proto in &target.protos {
                stages.extend(stages::Probe::new(opts, server, *proto, tls.as_ref()).run());
            }
        }
    }
    Report {
        ok: stages.iter().all(|s| s.ok),
        stages,
    }
}

/// What a `turns:` probe verifies the server against: the system's CAs
/// and `ca_file`'s, for `host`.
fn tls_client(host: &str, ca_file: Option<&std::path::Path>) -> Result<client::TlsClient, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(f) = ca_file {
        let certs =
            CertificateDer::pem_file_iter(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("{}: {e}", f.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"stun.turn".to_vec()];
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
    Ok(client::TlsClient {
        config: std::sync::Arc::new(config),
        name,
    })
}

fn resolve(t: &Target) -> Result<SocketAddr, String> {
    let host = t.host.as_str();
    let mut addrs = (host, t.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e} — check the name in DNS"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{host:?} has no address — check the name in DNS"))
}

#[cfg(test)]
mod tests;
