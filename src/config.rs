//! Configuration: TOML text → [`RawConfig`] (serde, unknown keys rejected) →
//! validated [`Config`]. Errors name the file, line and key:
//! `FILE:LINE: key: problem`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

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
        let raw = deserialize(&at)?;
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
mod raw;
mod records;
mod validate;
mod xdp;
pub use api::ApiSettings;
use raw::deserialize;
pub use records::RecordsSettings;
pub use xdp::{Xdp, XdpSettings};

#[cfg(test)]
mod tests;
