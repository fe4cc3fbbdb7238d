//! One validator per config table: each turns its raw table into checked
//! values or an error naming the file, line and key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawAuth, RawConfig, RawRelay, RawTcp, RawTls};
use super::{ConfigError, RelayAddress, TlsSettings, line_of};
use crate::core::Limits;
use crate::policy::PortRange;
use crate::tls::{CertFile, Certificate};

/// Makes errors for one file.
pub(super) struct Errors<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Errors<'_> {
    /// The error for `key` at `span` (its line; 0 when unknown).
    pub(super) fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        problem: &str,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: span.map_or(0, |s| line_of(self.text, s.start)),
            key: key.to_owned(),
            problem: problem.to_owned(),
        }
    }

    /// The error for `key`, at the line of `value`.
    pub(super) fn at<T>(&self, value: &Spanned<T>, key: &str, problem: &str) -> ConfigError {
        self.error(Some(value.span()), key, problem)
    }
}

/// `realm`: 1 to 127 characters, trimmed.
pub(super) fn realm(raw: &Spanned<String>, e: &Errors<'_>) -> Result<String, ConfigError> {
    let realm = raw.get_ref().trim().to_owned();
    if realm.is_empty() || realm.len() > 127 {
        return Err(e.at(raw, "realm", "must be 1 to 127 characters"));
    }
    Ok(realm)
}

/// The checked `[relay]` table.
pub(super) struct Relay {
    pub(super) ports: PortRange,
    pub(super) ipv4: RelayAddress,
    pub(super) ipv6: RelayAddress,
}

/// `[relay]`: a port range and an address per family.
pub(super) fn relay(raw: &RawRelay, e: &Errors<'_>) -> Result<Relay, ConfigError> {
    let ports =
        PortRange::new(*raw.min_port.get_ref(), *raw.max_port.get_ref()).ok_or_else(|| {
            e.at(
                &raw.min_port,
                "relay.min-port",
                "must be at least 1 and not above relay.max-port",
            )
        })?;
    let ipv4 = relay_address(&raw.address_ipv4, true)
        .map_err(|p| e.at(&raw.address_ipv4, "relay.address-ipv4", &p))?;
    let ipv6 = relay_address(&raw.address_ipv6, false)
        .map_err(|p| e.at(&raw.address_ipv6, "relay.address-ipv6", &p))?;
    Ok(Relay { ports, ipv4, ipv6 })
}

/// `[allocations]` and `[limits]`: lifetimes, quotas and rates.
pub(super) fn limits(raw: &RawConfig, e: &Errors<'_>) -> Result<Limits, ConfigError> {
    let a = &raw.allocations;
    let (default_s, max_s) = (
        *a.default_lifetime_seconds.get_ref(),
        *a.max_lifetime_seconds.get_ref(),
    );
    if default_s == 0 || max_s < default_s {
        return Err(e.at(
            &a.default_lifetime_seconds,
            "allocations.default-lifetime-seconds",
            "must be at least 1 and not above allocations.max-lifetime-seconds",
        ));
    }
    let l = &raw.limits;
    Ok(Limits {
        default_lifetime: Duration::from_secs(default_s),
        max_lifetime: Duration::from_secs(max_s),
        max_allocations: l.max_allocations,
        max_allocations_per_user: l.max_allocations_per_user,
        max_permissions: l.max_permissions_per_allocation,
        max_channels: l.max_channels_per_allocation,
        legacy_channel_numbers: a.legacy_channel_numbers,
        strict_expiry: raw.auth.strict_expiry,
        unauthenticated_rate: l.unauthenticated_requests_per_second_per_ip,
        max_bandwidth: l.max_bandwidth_bytes_per_second,
    })
}

/// The checked `[auth]` table.
pub(super) struct Auth {
    pub(super) secrets: Vec<String>,
    pub(super) users: Vec<(String, String)>,
    pub(super) nonce_lifetime: Duration,
}

/// `[auth]`: secrets (listed and from files), users and the nonce
/// lifetime; a file that serves TURN must let somebody in (`optional`:
/// the embedded default, which makes its own secret, and stun-only).
pub(super) fn auth(raw: &RawAuth, optional: bool, e: &Errors<'_>) -> Result<Auth, ConfigError> {
    let nonce = &raw.nonce_lifetime_seconds;
    if *nonce.get_ref() < 10 {
        return Err(e.at(nonce, "auth.nonce-lifetime-seconds", "must be at least 10"));
    }
    let mut secrets = Vec::new();
    for s in &raw.secrets {
        if s.get_ref().is_empty() {
            return Err(e.at(s, "auth.secrets", "a secret may not be empty"));
        }
        secrets.push(s.get_ref().clone());
    }
    for f in &raw.secret_files {
        let found = read_secret_file(f.get_ref()).map_err(|p| e.at(f, "auth.secret-files", &p))?;
        secrets.extend(found);
    }
    let mut users: Vec<(String, String)> = Vec::new();
    for u in &raw.users {
        let (name, password) = (u.name.get_ref(), u.password.get_ref());
        if name.is_empty() || password.is_empty() {
            return Err(e.at(&u.name, "auth.users", "name and password may not be empty"));
        }
        if users.iter().any(|(n, _)| n == name) {
            let problem = format!("user {name:?} is listed twice");
            return Err(e.at(&u.name, "auth.users.name", &problem));
        }
        users.push((name.clone(), password.clone()));
    }
    if !optional && secrets.is_empty() && users.is_empty() {
        return Err(e.error(
            None,
            "auth",
            "no secrets and no users: nobody could authenticate (for a STUN-only server, set stun-only = true)",
        ));
    }
    Ok(Auth {
        secrets,
        users,
        nonce_lifetime: Duration::from_secs(*nonce.get_ref()),
    })
}

/// `[tcp]`: the idle timeout, at least a second.
pub(super) fn tcp(raw: &RawTcp, e: &Errors<'_>) -> Result<Duration, ConfigError> {
    let idle = &raw.idle_timeout_seconds;
    if *idle.get_ref() == 0 {
        return Err(e.at(idle, "tcp.idle-timeout-seconds", "must be at least 1"));
    }
    Ok(Duration::from_secs(*idle.get_ref()))
}

fn relay_address(v: &Spanned<String>, v4: bool) -> Result<RelayAddress, String> {
    match v.get_ref().as_str() {
        "auto" => Ok(RelayAddress::Auto),
        "none" => Ok(RelayAddress::Disabled),
        s => match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv4() == v4 && !ip.is_unspecified() => Ok(RelayAddress::Ip(ip)),
            Ok(_) => Err(format!(
                "{s:?} must be a specific {} address",
                if v4 { "IPv4" } else { "IPv6" }
            )),
            Err(_) => Err(format!("{s:?} is not \"auto\", \"none\" or an IP address")),
        },
    }
}

/// Secrets from a file: one per non-empty line (surrounding space trimmed).
fn read_secret_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secrets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if secrets.is_empty() {
        return Err(format!("{}: holds no secret", path.display()));
    }
    Ok(secrets)
}

/// `[tls]` and `listen.tls`: TLS listeners need both files, which must
/// hold a usable certificate chain and its key (see [`Certificate::load`]).
pub(super) fn tls(
    raw: &RawTls,
    listen: &Spanned<Vec<std::net::SocketAddr>>,
    e: &Errors<'_>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let (cert, key) = match (&raw.certificate_file, &raw.private_key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) if listen.get_ref().is_empty() => return Ok(None),
        (None, None) => {
            let problem = "TLS listeners need tls.certificate-file and tls.private-key-file";
            return Err(e.at(listen, "listen.tls", problem));
        }
        (Some(c), None) => {
            let problem = "needs tls.private-key-file as well";
            return Err(e.at(c, "tls.certificate-file", problem));
        }
        (None, Some(k)) => {
            let problem = "needs tls.certificate-file as well";
            return Err(e.at(k, "tls.private-key-file", problem));
        }
    };
    let timeout = *raw.handshake_timeout_seconds.get_ref();
    if timeout == 0 {
        let key = "tls.handshake-timeout-seconds";
        return Err(e.at(&raw.handshake_timeout_seconds, key, "must be at least 1"));
    }
    let certificate = Certificate::load(cert.get_ref(), key.get_ref(), crate::tls::now_unix())
        .map_err(|err| match err.file {
            CertFile::Certificate => e.at(cert, "tls.certificate-file", &err.problem),
            CertFile::PrivateKey => e.at(key, "tls.private-key-file", &err.problem),
        })?;
    Ok(Some(TlsSettings {
        certificate_file: cert.get_ref().clone(),
        private_key_file: key.get_ref().clone(),
        certificate,
        handshake_timeout: Duration::from_secs(timeout),
        max_handshakes: raw.max_handshakes,
        max_handshakes_per_ip: raw.max_handshakes_per_ip,
    }))
}

/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// `[admin] token-file`: one bearer token per non-empty line, each at
/// least 16 characters.
pub(super) fn admin_tokens(
    file: Option<&Spanned<PathBuf>>,
    e: &Errors<'_>,
) -> Result<Vec<String>, ConfigError> {
    let Some(f) = file else {
        return Ok(Vec::new());
    };
    let key = "admin.token-file";
    let tokens = read_secret_file(f.get_ref()).map_err(|p| e.at(f, key, &p))?;
    if let Some(n) = tokens.iter().position(|t| t.len() < MIN_TOKEN_LEN) {
        let problem = format!(
            "{}: token {} is shorter than {MIN_TOKEN_LEN} characters (make one with: openssl rand -hex 32)",
            f.get_ref().display(),
            n + 1
        );
        return Err(e.at(f, key, &problem));
    }
    Ok(tokens)
}

/// `[auth] nonce-secrets` and `nonce-secret-files`: listed first, then
/// each file's lines; each at least 16 characters.
pub(super) fn nonce_secrets(raw: &RawAuth, e: &Errors<'_>) -> Result<Vec<String>, ConfigError> {
    let keys = ("auth.nonce-secrets", "auth.nonce-secret-files");
    long_secrets(
        &raw.nonce_secrets,
        &raw.nonce_secret_files,
        keys,
        "a nonce secret",
        e,
    )
}

/// Secrets listed inline and read from files (one per non-empty line),
/// each at least [`MIN_TOKEN_LEN`] characters; `keys` names the list and
/// the files, `what` one secret.
pub(super) fn long_secrets(
    listed: &[Spanned<String>],
    files: &[Spanned<PathBuf>],
    keys: (&str, &str),
    what: &str,
    e: &Errors<'_>,
) -> Result<Vec<String>, ConfigError> {
    let short = |prefix: String| {
        format!(
            "{prefix}{what} must be at least {MIN_TOKEN_LEN} characters (make one with: openssl rand -hex 32)"
        )
    };
    let mut out = Vec::new();
    for s in listed {
        if s.get_ref().len() < MIN_TOKEN_LEN {
            return Err(e.at(s, keys.0, &short(String::new())));
        }
        out.push(s.get_ref().clone());
    }
    for f in files {
        let found = read_secret_file(f.get_ref()).map_err(|p| e.at(f, keys.1, &p))?;
        if found.iter().any(|s| s.len() < MIN_TOKEN_LEN) {
            return Err(e.at(f, keys.1, &short(format!("{}: ", f.get_ref().display()))));
        }
        out.extend(found);
    }
    Ok(out)
}
