//! Test support, for the core's unit tests, the fuzz targets, the
//! micro-benchmarks and the integration tests (enabled by the `testing`
//! feature, which `cargo test` turns on): a recording [`Io`], a fake
//! [`Clock`] and a [`core_config`] to start from, PROXY protocol headers
//! ([`proxy_v1`], [`proxy_v2`]). Requests are built with
//! [`crate::request`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{Credentials, NonceIssuer};
use crate::core::{
    AllocId, CoreConfig, Family, FiveTuple, Io, Limits, Now, RelayError, RelayGrant, RelayRequest,
};
use crate::policy::{PeerPolicy, PortRange};

/// The realm of [`core_config`]: the default one, so challenge sizes are
/// the ones users get.
pub const REALM: &str = "tern";
/// The REST API secret of [`core_config`].
pub const SECRET: &str = "shh";
/// The Unix time a [`Clock`] starts at.
pub const START_UNIX: u64 = 1_800_000_000;
/// The address [`Recorder`] binds relays on (a documentation address, so
/// the default peer policy treats it as tern's own).
pub const RELAY_IP: [u8; 4] = [203, 0, 113, 5];

/// An [`Io`] that records what the core does, and opens relays on
/// [`RELAY_IP`] (IPv4 only: IPv6 is refused as unavailable).
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every datagram to a client, unless made [`Recorder::counting`].
    pub to_client: Vec<(FiveTuple, Vec<u8>)>,
    /// Every datagram to a peer, unless made [`Recorder::counting`].
    pub to_peer: Vec<(AllocId, SocketAddr, Vec<u8>)>,
    /// Relays opened, and what for.
    pub opened: Vec<(AllocId, RelayRequest)>,
    /// Relays closed.
    pub closed: Vec<AllocId>,
    /// Datagrams to clients and to peers, counted.
    pub sent: (usize, usize),
    /// The last STUN message (not ChannelData) sent to a client.
    pub last_answer: Vec<u8>,
    /// Refuse every relay with this error.
    pub fail: Option<RelayError>,
    /// Allocation records written.
    pub records: Vec<crate::core::Record>,
    /// Every offer of channels to a fast path, in order.
    pub offers: Vec<(AllocId, Vec<crate::core::Offload>)>,
    /// What the pretend fast path relayed, reported (and reset) at the
    /// next offer or read.
    pub fast_path: crate::core::alloc::Traffic,
    /// The pretend fast path's bandwidth cells (to the peer, to the
    /// client), handed to the core while anything is offloaded.
    pub cells: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    counting: bool,
}

impl Recorder {
    /// A recorder that keeps only counts and the last answer, so that the
    /// per-packet path allocates nothing in it (for benchmarks).
    pub fn counting() -> Self {
        Self {
            counting: true,
            ..Self::default()
        }
    }

    /// Relays open now.
    pub fn open(&self) -> usize {
        self.opened.len() - self.closed.len()
    }
}

impl Io for Recorder {
    fn to_client(&mut self, client: &FiveTuple, bytes: &[u8]) {
        self.sent.0 += 1;
        if bytes.first().is_some_and(|b| b & 0xC0 == 0) {
            self.last_answer.clear();
            self.last_answer.extend_from_slice(bytes);
        }
        if !self.counting {
            self.to_client.push((*client, bytes.to_vec()));
        }
    }

    fn to_peer(&mut self, alloc: AllocId, peer: SocketAddr, bytes: &[u8]) {
        self.sent.1 += 1;
        if !self.counting {
            self.to_peer.push((alloc, peer, bytes.to_vec()));
        }
    }

    fn open_relay(&mut self, alloc: AllocId, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        if req.family == Family::V6 {
            return Err(RelayError::FamilyUnavailable);
        }
        self.opened.push((alloc, *req));
        let port = 50_000 + 2 * (self.opened.len() % 7_000) as u16;
        Ok(RelayGrant {
            local: SocketAddr::from((RELAY_IP, port)),
            token: None,
        })
    }

    fn close_relay(&mut self, alloc: AllocId) {
        self.closed.push(alloc);
    }

    fn record(&mut self, record: crate::core::Record) {
        self.records.push(record);
    }

    fn offload(
        &mut self,
        alloc: AllocId,
        _client: &FiveTuple,
        channels: &[crate::core::Offload],
    ) -> crate::core::Offered {
        self.offers.push((alloc, channels.to_vec()));
        let cell = |i: usize| {
            let owner = std::sync::Arc::clone(&self.cells);
            // SAFETY: the cell is a word of `owner`, which the shared
            // cell keeps alive; it is only accessed atomically.
            unsafe {
                crate::ratelimit::SharedCell::new(
                    &self.cells[i],
                    owner as std::sync::Arc<dyn Send + Sync>,
                    Instant::now(),
                    0,
                )
            }
        };
        crate::core::Offered {
            traffic: std::mem::take(&mut self.fast_path),
            buckets: (!channels.is_empty()).then(|| [cell(0), cell(1)]),
        }
    }

    fn offloaded(&mut self, _alloc: AllocId) -> crate::core::alloc::Traffic {
        std::mem::take(&mut self.fast_path)
    }
}

/// A fake clock, starting now (monotonic) and at [`START_UNIX`] (wall).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The monotonic start.
    pub start: Instant,
    offset: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock at its start.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            offset: Duration::ZERO,
        }
    }

    /// The time now, for the core.
    pub fn now(&self) -> Now {
        Now {
            instant: self.start + self.offset,
            unix: START_UNIX + self.offset.as_secs(),
        }
    }

    /// Move on by `secs` seconds.
    pub fn advance(&mut self, secs: u64) {
        self.offset += Duration::from_secs(secs);
    }
}

/// A core configuration to start from: realm [`REALM`], users `alice`
/// (`pw`) and `bob` (`pw2`), REST secret [`SECRET`], the default peer
/// policy with [`RELAY_IP`] as tern's relay, 600/3600 s lifetimes, at most
/// 100 allocations (3 per user), 4 permissions and 4 channels each, strict
/// expiry, no rate or bandwidth limit. Change fields as a test needs.
pub fn core_config() -> CoreConfig {
    CoreConfig {
        credentials: Credentials::new(
            REALM,
            &[("alice".into(), "pw".into()), ("bob".into(), "pw2".into())],
            &[SECRET.into()],
        ),
        nonces: NonceIssuer::new([3; 32], 600),
        policy: PeerPolicy::new(
            vec![],
            vec![],
            vec![RELAY_IP.into()],
            vec![],
            PortRange::new(49152, 65535).unwrap_or_else(|| unreachable!("a valid range")),
        ),
        software: Some("tern-test".into()),
        limits: Limits {
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations: 100,
            max_allocations_per_user: 3,
            max_permissions: 4,
            max_channels: 4,
            legacy_channel_numbers: false,
            strict_expiry: true,
            unauthenticated_rate: 0,
            max_bandwidth: 0,
        },
        external_v4: None,
        external_v6: None,
        alternate_server: None,
        stun_only: false,
        records: None,
    }
}

/// A throw-away certificate authority in a temporary directory, made
/// with the `openssl` command, and the leaf certificates it issues
/// (removed on drop).
#[derive(Debug)]
pub struct Pki {
    /// The directory holding every file.
    pub dir: std::path::PathBuf,
    /// The CA certificate (PEM), for clients to trust.
    pub ca: std::path::PathBuf,
    issued: std::cell::Cell<u32>,
}

/// A leaf certificate's files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM).
    pub key: std::path::PathBuf,
    /// Its serial number, hex (as `openssl x509 -serial` prints it).
    pub serial: String,
}

impl Pki {
    /// A new CA (ECDSA P-256), valid for two days.
    pub fn new() -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tern-pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let ca = dir.join("ca.pem");
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tern test CA",
            ],
        )?;
        Ok(Self {
            dir,
            ca,
            issued: std::cell::Cell::new(0),
        })
    }

    /// Issue a certificate for `localhost`, 127.0.0.1 and ::1, valid for
    /// `days` from now (negative: already expired), with a key of `kind`
    /// (`ec` or `rsa`).
    pub fn issue(&self, days: i32, kind: &str) -> std::io::Result<Leaf> {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let (cert, key, csr, ext) = (
            format!("leaf{n}.pem"),
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.ext"),
        );
        let newkey: &[&str] = match kind {
            "rsa" => &["-newkey", "rsa:2048"],
            _ => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        };
        let mut args = vec!["req"];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&[
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&self.dir, &args)?;
        std::fs::write(
            self.dir.join(&ext),
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n",
        )?;
        let serial = format!("{:04X}", 0x1000 + n);
        let days = days.to_string();
        let set_serial = format!("0x{serial}");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &set_serial,
                "-days",
                &days,
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        )?;
        Ok(Leaf {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
            serial,
        })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `openssl ARGS` in `dir`, failing unless it succeeds.
fn openssl(dir: &std::path::Path, args: &[&str]) -> std::io::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// A PROXY protocol v1 header for a TCP connection from `src` to `dst`
/// (one family), as HAProxy's `send-proxy` writes it.
pub fn proxy_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header, built byte by byte from the
/// specification: `command` 0 (LOCAL) or 1 (PROXY), TCP from `src` to
/// `dst` (one family), then the TLVs `(type, value)`.
pub fn proxy_v2(command: u8, src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    use std::net::IpAddr;
    let mut body = Vec::new();
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x21
        }
        _ => unreachable!("one family"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// The Internet checksum (RFC 1071) over `parts` in order, each an even
/// number of bytes but the last: 0 when the bytes hold a valid checksum.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = parts
        .iter()
        .flat_map(|p| p.chunks(2))
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The rows of the Markdown table whose header line is `header` in `text`
/// (README's tables, which tests hold to the code), each row as its
/// trimmed cells; `None` if there is no such table.
pub fn markdown_rows<'a>(text: &'a str, header: &str) -> Option<Vec<Vec<&'a str>>> {
    let (_, after) = text.split_once(header)?;
    let rows = after.lines().skip(2).take_while(|l| l.starts_with('|'));
    let cells = |row: &'a str| {
        let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(str::trim).collect()
    };
    Some(rows.map(cells).collect())
}

/// The backticked words of a Markdown table cell, in order.
pub fn ticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}
