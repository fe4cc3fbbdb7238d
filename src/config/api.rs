//! `[api]`: the credential endpoint for applications (off unless
//! `listen` is set).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::raw::RawConfig;
use super::validate::{Errors, long_secrets};

/// The longest credential lifetime an operator may allow (30 days).
const MAX_TTL_CEILING: u64 = 30 * 86_400;

/// `[api]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawApi {
    listen: Option<Spanned<SocketAddr>>,
    #[serde(default = "off")]
    tls: Spanned<bool>,
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    #[serde(default)]
    key_files: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default = "default_max_ttl")]
    max_ttl_seconds: Spanned<u64>,
    #[serde(default = "default_ttl")]
    default_ttl_seconds: Spanned<u64>,
    #[serde(default = "default_rate")]
    requests_per_minute: Spanned<u32>,
}

impl Default for RawApi {
    fn default() -> Self {
        // An empty table yields every field's default.
        toml::from_str("").unwrap_or_else(|_| unreachable!())
    }
}

fn off() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_max_ttl() -> Spanned<u64> {
    Spanned::new(0..0, 86_400)
}
fn default_ttl() -> Spanned<u64> {
    Spanned::new(0..0, 3600)
}
fn default_rate() -> Spanned<u32> {
    Spanned::new(0..0, 600)
}

/// The checked `[api]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// The listener address.
    pub listen: SocketAddr,
    /// Serve HTTPS with the `[tls]` certificate.
    pub tls: bool,
    /// The bearer keys applications present (inline and from files).
    pub keys: Vec<String>,
    /// Origins (`https://app.example.com`, or `*`) whose pages may call the
    /// endpoint from a browser (CORS); none by default.
    pub allowed_origins: Vec<String>,
    /// The longest credential lifetime a caller may ask for.
    pub max_ttl: Duration,
    /// The lifetime when a caller asks for none.
    pub default_ttl: Duration,
    /// Requests per key per minute (bursting to a tenth of a minute's
    /// worth at once); 0: unlimited.
    pub requests_per_minute: u32,
}

/// Check `[api]`: keys, a REST secret to mint with, TLS only with a
/// certificate, origins as `scheme://host[:port]`, lifetimes in range.
pub(super) fn api(raw: &RawConfig, e: &Errors<'_>) -> Result<Option<ApiSettings>, ConfigError> {
    let a = &raw.api;
    let keys = ("api.keys", "api.key-files");
    let api_keys = long_secrets(&a.keys, &a.key_files, keys, "an API key", e)?;
    let Some(listen) = &a.listen else {
        return Ok(None);
    };
    if api_keys.is_empty() {
        let problem = "the credential endpoint needs api.keys or api.key-files";
        return Err(e.at(listen, "api.listen", problem));
    }
    if raw.stun_only {
        let problem = "a STUN-only server has no credential to hand out";
        return Err(e.at(listen, "api.listen", problem));
    }
    if raw.auth.secrets.is_empty() && raw.auth.secret_files.is_empty() {
        let problem =
            "the credential endpoint mints REST credentials: set auth.secrets or auth.secret-files";
        return Err(e.at(listen, "api.listen", problem));
    }
    if *a.tls.get_ref() && raw.tls.certificate_file.is_none() {
        let problem = "api.tls needs tls.certificate-file and tls.private-key-file";
        return Err(e.at(&a.tls, "api.tls", problem));
    }
    for o in &a.allowed_origins {
        if let Err(problem) = origin(o.get_ref()) {
            return Err(e.at(o, "api.allowed-origins", &problem));
        }
    }
    let max = *a.max_ttl_seconds.get_ref();
    if max == 0 || max > MAX_TTL_CEILING {
        let problem = format!("must be 1 to {MAX_TTL_CEILING} (30 days)");
        return Err(e.at(&a.max_ttl_seconds, "api.max-ttl-seconds", &problem));
    }
    let default = *a.default_ttl_seconds.get_ref();
    if default == 0 || default > max {
        let problem = format!("must be 1 to api.max-ttl-seconds ({max})");
        return Err(e.at(&a.default_ttl_seconds, "api.default-ttl-seconds", &problem));
    }
    Ok(Some(ApiSettings {
        listen: *listen.get_ref(),
        tls: *a.tls.get_ref(),
        keys: api_keys,
        allowed_origins: a
            .allowed_origins
            .iter()
            .map(|o| o.get_ref().clone())
            .collect(),
        max_ttl: Duration::from_secs(max),
        default_ttl: Duration::from_secs(default),
        requests_per_minute: *a.requests_per_minute.get_ref(),
    }))
}

/// An origin as browsers send it: `*`, or `http(s)://host[:port]` with no
/// path and no trailing slash.
fn origin(o: &str) -> Result<(), String> {
    if o == "*" {
        return Ok(());
    }
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| format!("{o:?} must start with https:// or http:// (or be \"*\")"))?;
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !host_ok {
        return Err(format!(
            "{o:?} must be scheme://host[:port], with no path or trailing slash (as a browser's Origin header)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::origin;
    use crate::config::Config;

    const KEY: &str = "keys = [\"0123456789abcdef-key\"]";

    fn error(text: &str) -> (usize, String, String) {
        let e = Config::parse(text, "t").unwrap_err();
        (e.line, e.key, e.problem)
    }

    #[test]
    fn the_endpoint_is_off_by_default_and_on_with_a_listener_and_keys() {
        let min = Config::parse("[auth]\nsecrets = [\"x\"]\n", "t").unwrap();
        assert!(min.api.is_none());
        let text = format!(
            "[auth]\nsecrets = [\"x\"]\n[api]\nlisten = \"0.0.0.0:8443\"\n{KEY}\nallowed-origins = [\"https://app.example.com\"]\n"
        );
        let api = Config::parse(&text, "t").unwrap().api.unwrap();
        assert_eq!(api.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(api.keys, vec!["0123456789abcdef-key"]);
        assert_eq!(api.max_ttl.as_secs(), 86_400);
        assert_eq!(api.default_ttl.as_secs(), 3600);
        assert_eq!(api.requests_per_minute, 600);
        assert!(!api.tls);
    }

    #[test]
    fn a_bad_api_table_names_its_key_and_line() {
        let auth = "[auth]\nsecrets = [\"x\"]\n";
        let listen = "[api]\nlisten = \"127.0.0.1:8443\"\n";
        let (line, key, problem) = error(&format!("{auth}{listen}"));
        assert_eq!((line, key.as_str()), (4, "api.listen"));
        assert!(problem.contains("api.keys"), "{problem}");
        let (line, key, _) = error(&format!("{auth}{listen}keys = [\"short\"]\n"));
        assert_eq!((line, key.as_str()), (5, "api.keys"));
        let (_, key, problem) = error(&format!(
            "[[auth.users]]\nname = \"a\"\npassword = \"b\"\n{listen}{KEY}\n"
        ));
        assert_eq!(key, "api.listen");
        assert!(problem.contains("auth.secrets"), "{problem}");
        let (line, key, problem) = error(&format!("{auth}{listen}{KEY}\ntls = true\n"));
        assert_eq!((line, key.as_str()), (6, "api.tls"));
        assert!(problem.contains("tls.certificate-file"), "{problem}");
        let (line, key, _) = error(&format!(
            "{auth}{listen}{KEY}\nallowed-origins = [\"https://a.com/\"]\n"
        ));
        assert_eq!((line, key.as_str()), (6, "api.allowed-origins"));
        let (_, key, _) = error(&format!("{auth}{listen}{KEY}\nmax-ttl-seconds = 0\n"));
        assert_eq!(key, "api.max-ttl-seconds");
        let (_, key, _) = error(&format!("{auth}{listen}{KEY}\nmax-ttl-seconds = 60\n"));
        assert_eq!(
            key, "api.default-ttl-seconds",
            "the default hour exceeds the maximum"
        );
        let (_, key, _) = error(&format!("stun-only = true\n{listen}{KEY}\n"));
        assert_eq!(key, "api.listen");
        let (_, key, _) = error(&format!("{auth}[api]\nlisen = \"127.0.0.1:1\"\n"));
        assert_eq!(key, "api.lisen");
    }

    #[test]
    fn origins_are_what_browsers_send() {
        assert!(origin("*").is_ok());
        assert!(origin("https://app.example.com").is_ok());
        assert!(origin("http://127.0.0.1:8080").is_ok());
        assert!(origin("http://[::1]:8080").is_ok());
        assert!(origin("https://app.example.com/").is_err());
        assert!(origin("app.example.com").is_err());
        assert!(origin("https://").is_err());
        assert!(origin("https://a.com/path").is_err());
    }
}
