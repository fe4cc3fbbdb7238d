//! TURN over TLS (RFC 8656 §3.1, RFC 7443): the certificate and key an
//! operator configures, checked as they are loaded, and the rustls server
//! configuration every TLS listener shares.
//!
//! The pair sits behind a resolver that reload swaps ([`Tls::set`]): new
//! handshakes take the new pair at once, while established connections keep
//! the session keys they already have. TLS 1.2 and 1.3 only, with ring's
//! cipher suites. ALPN: `stun.turn` and `stun.nat-discovery`; a client that
//! offers no ALPN is served, one that offers only other protocols gets the
//! `no_application_protocol` alert (rustls' rule).

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN protocol IDs served (RFC 7443).
pub const ALPN: [&[u8]; 2] = [b"stun.turn", b"stun.nat-discovery"];

/// The first byte of a TLS record carrying a handshake (a ClientHello);
/// STUN messages begin with 0x00 or 0x01 and ChannelData with 0x40–0x7f.
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// A checked certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// The end-entity certificate's notAfter, in Unix seconds.
    pub not_after: i64,
    /// Its serial number, hex.
    pub serial: String,
    /// The DNS names and IP addresses it is valid for (subjectAltName,
    /// or the subject's common name when it has none).
    pub names: Vec<String>,
}

/// Which file a [`CertError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFile {
    /// The certificate chain.
    Certificate,
    /// The private key.
    PrivateKey,
}

/// Why a certificate and key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct CertError {
    /// The file at fault.
    pub file: CertFile,
    /// What is wrong, naming the path.
    pub problem: String,
}

impl Certificate {
    /// Read a PEM certificate chain (end entity first) and a PEM private
    /// key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519) and check them:
    /// both parse, the key is the certificate's, and the certificate is
    /// valid at `now_unix`.
    pub fn load(cert: &Path, key: &Path, now_unix: i64) -> Result<Self, CertError> {
        let cert_err = |problem: String| CertError {
            file: CertFile::Certificate,
            problem: format!("{}: {problem}", cert.display()),
        };
        let key_err = |problem: String| CertError {
            file: CertFile::PrivateKey,
            problem: format!("{}: {problem}", key.display()),
        };
        let cert_text = std::fs::read(cert).map_err(|e| cert_err(format!("cannot read: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(&cert_text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
        let Some(end_entity) = chain.first() else {
            return Err(cert_err("holds no PEM certificate".into()));
        };
        let (not_before, not_after, serial, names) =
            inspect(end_entity).map_err(|e| cert_err(format!("not an X.509 certificate: {e}")))?;
        let key_text = std::fs::read(key).map_err(|e| key_err(format!("cannot read: {e}")))?;
        let der = PrivateKeyDer::from_pem_slice(&key_text)
            .map_err(|e| key_err(format!("no PEM private key: {e}")))?;
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| key_err(format!("unusable private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|_| {
            key_err(format!(
                "is not the key of the certificate in {}",
                cert.display()
            ))
        })?;
        if now_unix >= not_after {
            return Err(cert_err(format!("expired at {}", utc(not_after))));
        }
        if now_unix < not_before {
            return Err(cert_err(format!("not valid before {}", utc(not_before))));
        }
        Ok(Self {
            key: Arc::new(certified),
            not_after,
            serial,
            names,
        })
    }

    /// Whether a client connecting to `host` (a DNS name or an IP
    /// address) would accept this certificate's name.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self
                .names
                .iter()
                .any(|n| n.parse::<IpAddr>().is_ok_and(|n| n == ip));
        }
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                // A wildcard stands for exactly one leftmost label.
                Some(base) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
                None => n == host,
            }
        })
    }

    /// What an operator should hear about it at `now_unix`: that it
    /// expires within 14 days, and that `host` (the name put in `turns:`
    /// URIs), when set, is not one of its names (clients that verify it,
    /// as browsers do, will refuse it).
    pub fn warnings(&self, host: Option<&str>, now_unix: i64) -> Vec<String> {
        let mut out = Vec::new();
        if self.not_after < now_unix.saturating_add(14 * 86_400) {
            out.push(format!(
                "the TLS certificate expires within 14 days ({})",
                self.expiry()
            ));
        }
        if let Some(host) = host.filter(|h| !self.matches_host(h)) {
            out.push(format!(
                "host {host:?} is not a name of the certificate ({:?}): clients that verify it \
                 (browsers) will refuse turns: on this host",
                self.names
            ));
        }
        out
    }

    /// When it expires, as `YYYY-MM-DD HH:MM:SS UTC`.
    pub fn expiry(&self) -> String {
        utc(self.not_after)
    }
}

/// Validity, serial and names of a DER certificate.
fn inspect(der: &CertificateDer<'_>) -> Result<(i64, i64, String, Vec<String>), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push((*n).to_owned()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        serial_hex(cert.raw_serial()),
        names,
    ))
}

/// A serial number as `openssl x509 -serial` prints it: upper-case hex,
/// without the sign byte's leading zeros.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02X}")).collect()
}

/// Unix seconds as a UTC date and time.
fn utc(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("unix time {unix}"))
}

/// The current Unix time in seconds, as certificate times are kept.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// ring, the one crypto provider tern builds with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate in use, swapped by reload.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Taken once per handshake, never per packet.
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current))
    }
}

/// The TLS server side every TLS listener of every worker shares.
#[derive(Debug)]
pub struct Tls {
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    /// The same certificate for HTTPS (the credential endpoint).
    http: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// A TLS server presenting `cert`.
    pub fn new(cert: &Certificate) -> Result<Self, rustls::Error> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::clone(&cert.key)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        let mut http = config.clone();
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            resolver,
            config: Arc::new(config),
            http: Arc::new(http),
        })
    }

    /// Present `cert` from the next handshake on.
    pub fn set(&self, cert: &Certificate) {
        let mut current = self
            .resolver
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = Arc::clone(&cert.key);
    }

    /// The rustls configuration for HTTPS (ALPN `http/1.1`), presenting the
    /// same certificate, swapped by the same [`Tls::set`].
    pub fn http_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.http)
    }

    /// The rustls configuration for accepting connections.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }
}

#[cfg(test)]
mod tests;
