//! Configuration: TOML text → [`RawConfig`] (serde, unknown keys rejected) →
//! validated [`Config`]. Errors name the file, line and key:
//! `FILE:LINE: key: problem`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::core::Limits;
use crate::policy::PortRange;
use crate::tls::Certificate;

/// A configuration problem, printed as `FILE:LINE: key: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {key}: {problem}")]
pub struct ConfigError {
    /// The file the configuration came from.
    pub file: String,
    /// 1-based; 0 when the key is absent from the file.
    pub line: usize,
    /// The key, as a dotted path (`relay.min-port`).
    pub key: String,
    /// What is wrong with its value.
    pub problem: String,
}

/// Where a relay socket binds, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAddress {
    /// The host's primary address of that family (found by a route lookup),
    /// or loopback when the host has none.
    Auto,
    /// No relays of this family (Allocate for it gets 440).
    Disabled,
    /// This address.
    Ip(IpAddr),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Relay receive steering (BPF `sk_lookup`, see `io::sklookup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Steering {
    /// Steer when the kernel and the process's capabilities allow it.
    Auto,
    /// Steer, or refuse to start.
    On,
    /// Read every relay socket on its own.
    Off,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, or `<embedded default>`.
    pub source: String,
    /// The realm of authentication challenges.
    pub realm: String,
    /// The SOFTWARE attribute, if any.
    pub software: Option<String>,
    /// Host put in printed `turn:` URIs.
    pub host: Option<String>,
    /// Worker threads; 0 = one per CPU.
    pub workers: usize,
    /// Serve STUN Binding only (no TURN; no credentials needed).
    pub stun_only: bool,
    /// UDP listener addresses.
    pub listen_udp: Vec<SocketAddr>,
    /// TCP listener addresses.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listener addresses (one also in `listen_tcp` serves both on one
    /// socket).
    pub listen_tls: Vec<SocketAddr>,
    /// Sources (L4 load balancers) whose TCP and TLS connections must
    /// begin with a PROXY protocol header naming the client.
    pub proxy_protocol_from: Vec<IpNet>,
    /// The certificate and TLS limits, when `[tls]` names the files.
    pub tls: Option<TlsSettings>,
    /// When true, a listener address that cannot be bound (e.g. `[::]` on a
    /// host without IPv6) is skipped with a warning instead of failing.
    pub listen_best_effort: bool,
    /// Receive and send buffer of each UDP listener socket, in bytes.
    pub socket_buffer_bytes: usize,
    /// Where IPv4 relays bind.
    pub relay_ipv4: RelayAddress,
    /// Where IPv6 relays bind.
    pub relay_ipv6: RelayAddress,
    /// The IPv4 address advertised for relays (1:1 NAT).
    pub external_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address advertised for relays.
    pub external_ipv6: Option<Ipv6Addr>,
    /// The relay port range.
    pub relay_ports: PortRange,
    /// Whether relay datagrams are steered to one socket per worker.
    pub relay_steering: Steering,
    /// The XDP fast path.
    pub xdp: XdpSettings,
    /// TURN REST API secrets, listed and read from files.
    pub secrets: Vec<String>,
    /// Static users: (name, password).
    pub users: Vec<(String, String)>,
    /// Whether the secret was generated at start (no config file).
    pub generated_secret: bool,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Nonce keys shared by a fleet (the first signs, all verify); empty:
    /// a random key per process.
    pub nonce_secrets: Vec<String>,
    /// Peer ranges allowed despite the default deny list.
    pub peers_allow: Vec<IpNet>,
    /// Peer ranges denied besides the defaults.
    pub peers_deny: Vec<IpNet>,
    /// Lifetimes and limits, exactly as the core enforces them.
    pub limits: Limits,
    /// Open TCP client connections, in total.
    pub max_tcp_connections: usize,
    /// Open TCP client connections per client IP.
    pub max_tcp_connections_per_ip: usize,
    /// How long a TCP connection without an allocation may stay idle.
    pub tcp_idle_timeout: Duration,
    /// The admin HTTP listener.
    pub admin_listen: SocketAddr,
    /// Allocation records, when `[records] file` is set.
    pub records: Option<RecordsSettings>,
    /// Bearer tokens of the admin API (`[admin] token-file`; none: the
    /// API is off).
    pub admin_tokens: Vec<String>,
    /// The credential endpoint, when `[api] listen` is set.
    pub api: Option<ApiSettings>,
    /// The longest SIGTERM drain.
    pub drain_timeout: Duration,
    /// Where draining sends new allocations (300 Try Alternate).
    pub alternate_server: Option<SocketAddr>,
    /// The log filter (`RUST_LOG` syntax).
    pub log_level: String,
    /// The log format.
    pub log_format: LogFormat,
}

/// `[tls]`: the checked certificate and the handshake limits.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The PEM certificate chain file.
    pub certificate_file: PathBuf,
    /// The PEM private key file.
    pub private_key_file: PathBuf,
    /// The pair as loaded and checked.
    pub certificate: Certificate,
    /// How long a client may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress, in total.
    pub max_handshakes: usize,
    /// Handshakes in progress per client IP.
    pub max_handshakes_per_ip: usize,
}

/// The file format, one struct per table; kebab-case keys carry their unit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default = "default_realm")]
    realm: Spanned<String>,
    #[serde(default = "default_software")]
    software: String,
    host: Option<String>,
    #[serde(default)]
    stun_only: bool,
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    peers: RawPeers,
    #[serde(default)]
    allocations: RawAllocations,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    tcp: RawTcp,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    records: records::RawRecords,
    #[serde(default)]
    api: api::RawApi,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawListen {
    #[serde(default = "default_listen")]
    udp: Vec<SocketAddr>,
    #[serde(default = "default_listen")]
    tcp: Vec<SocketAddr>,
    #[serde(default = "no_listeners")]
    tls: Spanned<Vec<SocketAddr>>,
    #[serde(default = "default_socket_buffer")]
    socket_buffer_bytes: usize,
    #[serde(default)]
    proxy_protocol_from: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRelay {
    #[serde(default = "auto")]
    address_ipv4: Spanned<String>,
    #[serde(default = "auto")]
    address_ipv6: Spanned<String>,
    external_ipv4: Option<Ipv4Addr>,
    external_ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_min_port")]
    min_port: Spanned<u16>,
    #[serde(default = "default_max_port")]
    max_port: Spanned<u16>,
    #[serde(default = "default_steering")]
    steering: Steering,
    #[serde(default)]
    xdp: Xdp,
    #[serde(default)]
    xdp_interfaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAuth {
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    #[serde(default)]
    secret_files: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default = "default_nonce_lifetime")]
    nonce_lifetime_seconds: Spanned<u64>,
    #[serde(default)]
    nonce_secrets: Vec<Spanned<String>>,
    #[serde(default)]
    nonce_secret_files: Vec<Spanned<PathBuf>>,
    #[serde(default = "yes")]
    strict_expiry: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUser {
    name: Spanned<String>,
    password: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPeers {
    #[serde(default)]
    allow: Vec<IpNet>,
    #[serde(default)]
    deny: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAllocations {
    #[serde(default = "default_lifetime")]
    default_lifetime_seconds: Spanned<u64>,
    #[serde(default = "max_lifetime")]
    max_lifetime_seconds: Spanned<u64>,
    #[serde(default)]
    legacy_channel_numbers: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    #[serde(default = "default_max_allocations")]
    max_allocations: u32,
    #[serde(default = "default_max_per_user")]
    max_allocations_per_user: u32,
    #[serde(default = "default_max_permissions")]
    max_permissions_per_allocation: usize,
    #[serde(default = "default_max_channels")]
    max_channels_per_allocation: usize,
    #[serde(default = "default_max_tcp")]
    max_tcp_connections: usize,
    #[serde(default = "default_max_tcp_per_ip")]
    max_tcp_connections_per_ip: usize,
    #[serde(default = "default_unauth_rate")]
    unauthenticated_requests_per_second_per_ip: u32,
    #[serde(default = "default_bandwidth")]
    max_bandwidth_bytes_per_second: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTcp {
    #[serde(default = "default_tcp_idle")]
    idle_timeout_seconds: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTls {
    certificate_file: Option<Spanned<PathBuf>>,
    private_key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout_seconds: Spanned<u64>,
    #[serde(default = "default_max_handshakes")]
    max_handshakes: usize,
    #[serde(default = "default_max_handshakes_per_ip")]
    max_handshakes_per_ip: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAdmin {
    #[serde(default = "default_admin")]
    listen: SocketAddr,
    token_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawShutdown {
    #[serde(default = "default_drain")]
    drain_timeout_seconds: u64,
    alternate_server: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLog {
    #[serde(default = "default_log_level")]
    level: String,
    #[serde(default = "default_log_format")]
    format: LogFormat,
}

fn unspanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_realm() -> Spanned<String> {
    unspanned("tern".into())
}
fn default_software() -> String {
    concat!("tern/", env!("CARGO_PKG_VERSION")).into()
}
fn default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3478)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 3478)),
    ]
}
fn no_listeners() -> Spanned<Vec<SocketAddr>> {
    unspanned(Vec::new())
}
fn default_socket_buffer() -> usize {
    4 << 20
}
fn auto() -> Spanned<String> {
    unspanned("auto".into())
}
fn default_min_port() -> Spanned<u16> {
    unspanned(49152)
}
fn default_max_port() -> Spanned<u16> {
    unspanned(65535)
}
fn default_nonce_lifetime() -> Spanned<u64> {
    unspanned(600)
}
fn yes() -> bool {
    true
}
fn default_lifetime() -> Spanned<u64> {
    unspanned(600)
}
fn max_lifetime() -> Spanned<u64> {
    unspanned(3600)
}
fn default_max_allocations() -> u32 {
    10_000
}
fn default_max_per_user() -> u32 {
    100
}
fn default_max_permissions() -> usize {
    64
}
fn default_max_channels() -> usize {
    64
}
fn default_max_tcp() -> usize {
    10_000
}
fn default_max_tcp_per_ip() -> usize {
    100
}
fn default_unauth_rate() -> u32 {
    50
}
fn default_bandwidth() -> u64 {
    5_000_000
}
fn default_tcp_idle() -> Spanned<u64> {
    unspanned(30)
}
fn default_handshake_timeout() -> Spanned<u64> {
    unspanned(10)
}
fn default_max_handshakes() -> usize {
    1000
}
fn default_max_handshakes_per_ip() -> usize {
    20
}
fn default_admin() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 9641))
}
fn default_drain() -> u64 {
    30
}
fn default_log_level() -> String {
    "info".into()
}
fn default_steering() -> Steering {
    Steering::Auto
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}

macro_rules! empty_default {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // An empty table yields every field's default.
                toml::from_str("").unwrap_or_else(|_| unreachable!())
            }
        }
    )*};
}
empty_default!(
    RawListen,
    RawRelay,
    RawAuth,
    RawAllocations,
    RawLimits,
    RawTcp,
    RawTls,
    RawAdmin,
    RawShutdown,
    RawLog
);

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            key: "-".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// The configuration used when no file is given: listen on 3478 (UDP
    /// and TCP, all addresses), with a random REST secret made now.
    pub fn embedded_default() -> Self {
        let mut cfg = Self::parse_inner("", "<embedded default>", true)
            .unwrap_or_else(|e| unreachable!("the empty config is valid: {e}"));
        let secret: [u8; 24] = rand::random();
        cfg.secrets = vec![base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            secret,
        )];
        cfg.generated_secret = true;
        cfg.listen_best_effort = true;
        cfg
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        Self::parse_inner(text, file, false)
    }

    fn parse_inner(text: &str, file: &str, embedded: bool) -> Result<Self, ConfigError> {
        let at = validate::Errors { text, file };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // Spanned<T> shows up in the path as a private field; drop it.
            let path = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let key = if path == "." { "-".to_owned() } else { path };
            at.error(inner.span(), &key, inner.message().trim())
        })?;
        let realm = validate::realm(&raw.realm, &at)?;
        let relay = validate::relay(&raw.relay, &at)?;
        let limits = validate::limits(&raw, &at)?;
        let auth = validate::auth(&raw.auth, embedded || raw.stun_only, &at)?;
        let tcp_idle_timeout = validate::tcp(&raw.tcp, &at)?;
        let tls = validate::tls(&raw.tls, &raw.listen.tls, &at)?;
        let admin_tokens = validate::admin_tokens(raw.admin.token_file.as_ref(), &at)?;
        let records = records::records(&raw.records, &at)?;
        let api = api::api(&raw, &at)?;
        let nonce_secrets = validate::nonce_secrets(&raw.auth, &at)?;
        if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
            let problem = format!("not a log filter: {:?}", raw.log.level);
            return Err(at.error(None, "log.level", &problem));
        }
        Ok(Self {
            source: file.to_owned(),
            realm,
            software: (!raw.software.is_empty()).then_some(raw.software),
            host: raw.host,
            workers: raw.workers,
            stun_only: raw.stun_only,
            listen_udp: raw.listen.udp,
            listen_tcp: raw.listen.tcp,
            listen_tls: raw.listen.tls.into_inner(),
            proxy_protocol_from: raw.listen.proxy_protocol_from,
            tls,
            listen_best_effort: false,
            socket_buffer_bytes: raw.listen.socket_buffer_bytes,
            relay_ipv4: relay.ipv4,
            relay_ipv6: relay.ipv6,
            external_ipv4: raw.relay.external_ipv4,
            external_ipv6: raw.relay.external_ipv6,
            relay_ports: relay.ports,
            relay_steering: raw.relay.steering,
            xdp: XdpSettings {
                mode: raw.relay.xdp,
                interfaces: raw.relay.xdp_interfaces,
            },
            secrets: auth.secrets,
            users: auth.users,
            generated_secret: false,
            nonce_lifetime: auth.nonce_lifetime,
            nonce_secrets,
            peers_allow: raw.peers.allow,
            peers_deny: raw.peers.deny,
            limits,
            max_tcp_connections: raw.limits.max_tcp_connections,
            max_tcp_connections_per_ip: raw.limits.max_tcp_connections_per_ip,
            tcp_idle_timeout,
            admin_listen: raw.admin.listen,
            admin_tokens,
            records,
            api,
            drain_timeout: Duration::from_secs(raw.shutdown.drain_timeout_seconds),
            alternate_server: raw.shutdown.alternate_server,
            log_level: raw.log.level,
            log_format: raw.log.format,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

mod api;
mod records;
mod validate;
mod xdp;
pub use api::ApiSettings;
pub use records::RecordsSettings;
pub use xdp::{Xdp, XdpSettings};

#[cfg(test)]
mod tests;
