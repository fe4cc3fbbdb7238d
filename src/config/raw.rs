//! The configuration file's format: one struct per table, as serde reads
//! it (kebab-case keys carry their unit), with each key's default. The
//! parent module validates what is read into a [`super::Config`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::validate::Errors;
use super::{ConfigError, LogFormat, Steering, Xdp, api, records};

/// The file format, one struct per table; kebab-case keys carry their unit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    #[serde(default = "default_realm")]
    pub(super) realm: Spanned<String>,
    #[serde(default = "default_software")]
    pub(super) software: String,
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) stun_only: bool,
    #[serde(default)]
    pub(super) workers: usize,
    #[serde(default)]
    pub(super) listen: RawListen,
    #[serde(default)]
    pub(super) relay: RawRelay,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default)]
    pub(super) peers: RawPeers,
    #[serde(default)]
    pub(super) allocations: RawAllocations,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) tcp: RawTcp,
    #[serde(default)]
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) records: records::RawRecords,
    #[serde(default)]
    pub(super) api: api::RawApi,
    #[serde(default)]
    pub(super) shutdown: RawShutdown,
    #[serde(default)]
    pub(super) log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawListen {
    #[serde(default = "default_listen")]
    pub(super) udp: Vec<SocketAddr>,
    #[serde(default = "default_listen")]
    pub(super) tcp: Vec<SocketAddr>,
    #[serde(default = "no_listeners")]
    pub(super) tls: Spanned<Vec<SocketAddr>>,
    #[serde(default = "default_socket_buffer")]
    pub(super) socket_buffer_bytes: usize,
    #[serde(default)]
    pub(super) proxy_protocol_from: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRelay {
    #[serde(default = "auto")]
    pub(super) address_ipv4: Spanned<String>,
    #[serde(default = "auto")]
    pub(super) address_ipv6: Spanned<String>,
    pub(super) external_ipv4: Option<Ipv4Addr>,
    pub(super) external_ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_min_port")]
    pub(super) min_port: Spanned<u16>,
    #[serde(default = "default_max_port")]
    pub(super) max_port: Spanned<u16>,
    #[serde(default = "default_steering")]
    pub(super) steering: Steering,
    #[serde(default)]
    pub(super) xdp: Xdp,
    #[serde(default)]
    pub(super) xdp_interfaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) secret_files: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) users: Vec<RawUser>,
    #[serde(default = "default_nonce_lifetime")]
    pub(super) nonce_lifetime_seconds: Spanned<u64>,
    #[serde(default)]
    pub(super) nonce_secrets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) nonce_secret_files: Vec<Spanned<PathBuf>>,
    #[serde(default = "yes")]
    pub(super) strict_expiry: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) password: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPeers {
    #[serde(default)]
    pub(super) allow: Vec<IpNet>,
    #[serde(default)]
    pub(super) deny: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAllocations {
    #[serde(default = "default_lifetime")]
    pub(super) default_lifetime_seconds: Spanned<u64>,
    #[serde(default = "max_lifetime")]
    pub(super) max_lifetime_seconds: Spanned<u64>,
    #[serde(default)]
    pub(super) legacy_channel_numbers: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimits {
    #[serde(default = "default_max_allocations")]
    pub(super) max_allocations: u32,
    #[serde(default = "default_max_per_user")]
    pub(super) max_allocations_per_user: u32,
    #[serde(default = "default_max_permissions")]
    pub(super) max_permissions_per_allocation: usize,
    #[serde(default = "default_max_channels")]
    pub(super) max_channels_per_allocation: usize,
    #[serde(default = "default_max_tcp")]
    pub(super) max_tcp_connections: usize,
    #[serde(default = "default_max_tcp_per_ip")]
    pub(super) max_tcp_connections_per_ip: usize,
    #[serde(default = "default_unauth_rate")]
    pub(super) unauthenticated_requests_per_second_per_ip: u32,
    #[serde(default = "default_bandwidth")]
    pub(super) max_bandwidth_bytes_per_second: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTcp {
    #[serde(default = "default_tcp_idle")]
    pub(super) idle_timeout_seconds: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTls {
    pub(super) certificate_file: Option<Spanned<PathBuf>>,
    pub(super) private_key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_handshake_timeout")]
    pub(super) handshake_timeout_seconds: Spanned<u64>,
    #[serde(default = "default_max_handshakes")]
    pub(super) max_handshakes: usize,
    #[serde(default = "default_max_handshakes_per_ip")]
    pub(super) max_handshakes_per_ip: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAdmin {
    #[serde(default = "default_admin")]
    pub(super) listen: SocketAddr,
    pub(super) token_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawShutdown {
    #[serde(default = "default_drain")]
    pub(super) drain_timeout_seconds: u64,
    pub(super) alternate_server: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLog {
    #[serde(default = "default_log_level")]
    pub(super) level: String,
    #[serde(default = "default_log_format")]
    pub(super) format: LogFormat,
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
pub(super) fn default_listen() -> Vec<SocketAddr> {
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

/// The file's tables and keys, or an error naming the key (and its line)
/// that does not parse.
pub(super) fn deserialize(at: &Errors<'_>) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::new(at.text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> shows up in the path as a private field; drop it.
        let path = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        let key = if path == "." { "-".to_owned() } else { path };
        at.error(inner.span(), &key, inner.message().trim())
    })
}
