//! Shared helpers for integration tests: a real tern on loopback port 0 and
//! a raw STUN/TURN client over UDP or TCP.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::ATTR_NONCE;
use stun::error_code::ErrorCodeAttribute;
use stun::message::{CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Getter, Message, Setter};
use stun::textattrs::TextAttribute;
use tern::config::Config;
use tern::io::Shared;
use tern::metrics::Board;
use tern::request::Auth;
use tern::wire::method;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;
use turn::proto::reqtrans::RequestedTransport;

pub const SECRET: &str = "integration-secret";
/// The default realm, so challenges have the size users get.
pub const REALM: &str = "tern";
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A tern serving on loopback; stopped and joined on drop.
pub struct TestServer {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// The credential endpoint, when `[api] listen` is set.
    pub api: Option<SocketAddr>,
    pub board: Arc<Board>,
    /// The workers' shared state, e.g. to see which worker owns a relay.
    pub shared: Arc<Shared>,
    pub control: tokio::sync::mpsc::Sender<tern::server::Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The base test configuration: loopback v4 and v6 listeners on port 0.
pub fn base_config(extra: &str) -> String {
    format!(
        r#"realm = "{REALM}"
workers = 2
[listen]
udp = ["127.0.0.1:0", "[::1]:0"]
tcp = ["127.0.0.1:0", "[::1]:0"]
[relay]
address-ipv4 = "127.0.0.1"
address-ipv6 = "::1"
[auth]
secrets = ["{SECRET}"]
[[auth.users]]
name = "alice"
password = "wonderland"
[[auth.users]]
name = "bob"
password = "builder"
[admin]
listen = "127.0.0.1:0"
{extra}
"#
    )
}

impl TestServer {
    /// Start a server with `base_config(extra)`.
    pub fn start(extra: &str) -> Self {
        Self::start_with(&base_config(extra))
    }

    /// Start a server with this exact TOML.
    pub fn start_with(toml: &str) -> Self {
        let config = Config::parse(toml, "test.toml").expect("valid test config");
        let server = tern::server::Server::bind(config).expect("bind");
        let udp = server.udp_addrs().to_vec();
        let tcp = server.tcp_addrs().to_vec();
        let tls = server.tls_addrs().to_vec();
        let board = server.board();
        let shared = server.shared();
        let admin = server.admin_addr().unwrap();
        let api = server.api_addr();
        let (control, rx) = tokio::sync::mpsc::channel(4);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(server.run_with(rx)).unwrap();
        });
        let s = Self {
            udp,
            tcp,
            tls,
            admin,
            api,
            board,
            shared,
            control,
            thread: Some(thread),
        };
        assert!(wait_until(TIMEOUT, || s.board.ready()));
        s
    }

    pub fn udp4(&self) -> SocketAddr {
        self.udp[0]
    }
    pub fn udp6(&self) -> SocketAddr {
        self.udp[1]
    }
    pub fn tcp4(&self) -> SocketAddr {
        self.tcp[0]
    }
    pub fn tcp6(&self) -> SocketAddr {
        self.tcp[1]
    }

    /// Send a control message as a signal would.
    pub fn control(&self, c: tern::server::Control) {
        self.control.try_send(c).unwrap();
    }

    /// Whether the server thread has ended.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// GET `path` from the admin listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// Live allocations across workers (published once a second).
    pub fn allocations(&self) -> usize {
        self.board.total().allocations
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.control.try_send(tern::server::Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

enum Wire {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
    Tls(
        Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
        Vec<u8>,
    ),
}

/// A 4 MiB receive buffer (forced past net.core.rmem_max as root), so a
/// test thread the scheduler leaves waiting on a loaded machine does not
/// lose datagrams in its own socket.
fn big_receive_buffer(s: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads `size` (an int, as both options take)
        // for the duration of the call; the descriptor is open.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// The next whole frame from a stream, reading into `pending` as needed;
/// `None` on timeout or close.
fn next_frame(s: &mut impl Read, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(n) = tern::wire::stream_frame_len(pending) {
            if pending.len() >= n {
                return Some(pending.drain(..n).collect());
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A TLS client configuration trusting only the CA in `ca` (PEM).
pub fn tls_client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    Arc::new(cfg)
}

/// A raw STUN/TURN client with long-term credentials.
pub struct RawClient {
    wire: Wire,
    pub server: SocketAddr,
    pub user: String,
    pub pass: String,
    pub nonce: Option<String>,
}

#[allow(unused_imports)]
pub use tern::request::message_type;

pub fn decode(bytes: &[u8]) -> Message {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode().expect("valid STUN");
    m
}

pub fn error_code(m: &Message) -> Option<u16> {
    if m.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok()?;
    Some(e.code.0)
}

impl RawClient {
    pub fn udp(server: SocketAddr, user: &str, pass: &str) -> Self {
        let bind: SocketAddr = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .unwrap();
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        big_receive_buffer(&s);
        // Hold the port for the rest of the test process: an allocation
        // outlives its client here, and a later client given the same
        // port by the kernel would present the same 5-tuple and get 437
        // Allocation Mismatch (seen once in ~20 runs of the 16-pair
        // tests on a loaded machine).
        std::mem::forget(s.try_clone().unwrap());
        Self::new(Wire::Udp(s), server, user, pass)
    }

    /// A UDP client bound at `local` (e.g. an address in a network
    /// namespace).
    pub fn udp_from(local: SocketAddr, server: SocketAddr, user: &str, pass: &str) -> Self {
        let s = UdpSocket::bind(local).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        big_receive_buffer(&s);
        Self::new(Wire::Udp(s), server, user, pass)
    }

    pub fn tcp(server: SocketAddr, user: &str, pass: &str) -> Self {
        let s = TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
        Self::over_tcp(s, user, pass)
    }

    /// A client on a connected stream (e.g. one that sent a PROXY header).
    pub fn over_tcp(s: TcpStream, user: &str, pass: &str) -> Self {
        let server = s.peer_addr().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Self::new(Wire::Tcp(s, Vec::new()), server, user, pass)
    }

    /// A client over TLS to `server`, verifying its certificate for
    /// `localhost` against `tls` (see [`tls_client_config`]).
    pub fn tls(server: SocketAddr, tls: Arc<rustls::ClientConfig>, user: &str, pass: &str) -> Self {
        let s = TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
        Self::over_tls(s, tls, user, pass)
    }

    /// A TLS client on a connected stream, as [`RawClient::tls`].
    pub fn over_tls(s: TcpStream, tls: Arc<rustls::ClientConfig>, user: &str, pass: &str) -> Self {
        let server = s.peer_addr().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(tls, name).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, s);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        Self::new(Wire::Tls(Box::new(stream), Vec::new()), server, user, pass)
    }

    fn new(wire: Wire, server: SocketAddr, user: &str, pass: &str) -> Self {
        Self {
            wire,
            server,
            user: user.into(),
            pass: pass.into(),
            nonce: None,
        }
    }

    /// A second handle on the same socket (e.g. to receive on another
    /// thread), with the same credentials and nonce.
    pub fn try_clone(&self) -> Self {
        let wire = match &self.wire {
            Wire::Udp(s) => Wire::Udp(s.try_clone().unwrap()),
            Wire::Tcp(s, _) => Wire::Tcp(s.try_clone().unwrap(), Vec::new()),
            Wire::Tls(..) => panic!("a TLS client has one handle"),
        };
        Self {
            wire,
            server: self.server,
            user: self.user.clone(),
            pass: self.pass.clone(),
            nonce: self.nonce.clone(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.wire {
            Wire::Udp(s) => s.local_addr().unwrap(),
            Wire::Tcp(s, _) => s.local_addr().unwrap(),
            Wire::Tls(s, _) => s.sock.local_addr().unwrap(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.wire {
            Wire::Udp(s) => {
                s.send_to(bytes, self.server).unwrap();
            }
            Wire::Tcp(s, _) => s.write_all(bytes).unwrap(),
            Wire::Tls(s, _) => {
                s.write_all(bytes).unwrap();
                s.flush().unwrap();
            }
        }
    }

    /// The next message or ChannelData frame; `None` on timeout or close.
    pub fn recv_raw(&mut self) -> Option<Vec<u8>> {
        match &mut self.wire {
            Wire::Udp(s) => {
                let mut buf = vec![0u8; 70_000];
                let (n, _) = s.recv_from(&mut buf).ok()?;
                buf.truncate(n);
                Some(buf)
            }
            Wire::Tcp(s, pending) => next_frame(s, pending),
            Wire::Tls(s, pending) => next_frame(s, pending),
        }
    }

    /// Build a request; signed when a nonce is known.
    pub fn build(&self, method: u16, attrs: Vec<Box<dyn Setter>>, signed: bool) -> Vec<u8> {
        let auth = self.nonce.as_deref().filter(|_| signed).map(|nonce| Auth {
            user: &self.user,
            pass: &self.pass,
            realm: REALM,
            nonce,
        });
        tern::request::request(method, attrs, auth.as_ref()).unwrap()
    }

    /// Send and wait for the answer to this transaction.
    pub fn transact(&mut self, raw: &[u8]) -> Message {
        self.send_raw(raw);
        let want = &raw[8..20];
        loop {
            let got = self.recv_raw().expect("an answer before the timeout");
            if tern::wire::kind(&got) == tern::wire::Kind::Stun && &got[8..20] == want {
                return decode(&got);
            }
        }
    }

    /// A signed request; on 401/438 learn the nonce and try once more.
    pub fn request(&mut self, method: u16, attrs: impl Fn() -> Vec<Box<dyn Setter>>) -> Message {
        let raw = self.build(method, attrs(), true);
        let m = self.transact(&raw);
        if matches!(error_code(&m), Some(401 | 438)) && self.learn_nonce(&m) {
            let raw = self.build(method, attrs(), true);
            return self.transact(&raw);
        }
        m
    }

    /// Take NONCE from a challenge; true if it was new.
    pub fn learn_nonce(&mut self, m: &Message) -> bool {
        let Ok(n) = TextAttribute::get_from_as(m, ATTR_NONCE) else {
            return false;
        };
        let fresh = self.nonce.as_deref() != Some(n.text.as_str());
        self.nonce = Some(n.text);
        fresh
    }
}

/// A minimal HTTP GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "")
}

/// One HTTP/1.1 request with extra header lines and a body, on a
/// connection of its own: (status code, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write_http_request(&mut s, method, path, headers, body).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (code, _, body) = parse_http_response(&text);
    (code, body.to_owned())
}

/// Write a `Connection: close` HTTP/1.1 request to `s`, in one write (a
/// server that closes on the first bytes, as an HTTPS listener does on
/// plain HTTP, then fails no later write of ours).
pub fn write_http_request(
    s: &mut impl Write,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> std::io::Result<()> {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())?;
    s.flush()
}

/// A whole HTTP/1.1 response: (status code, header block, body); status 0
/// when there is none.
pub fn parse_http_response(text: &str) -> (u16, &str, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, body)
}

/// The value of an unlabelled or labelled sample in a Prometheus text page,
/// summed over the samples whose name and labels start with `prefix`.
pub fn metric(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// REQUESTED-TRANSPORT UDP.
pub fn udp_transport() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

/// XOR-PEER-ADDRESS.
pub fn peer(addr: SocketAddr) -> Box<dyn Setter> {
    Box::new(PeerAddress {
        ip: addr.ip(),
        port: addr.port(),
    })
}

/// Allocate (with `extra` attributes); the relayed address.
pub fn allocate(c: &mut RawClient, extra: fn() -> Vec<Box<dyn Setter>>) -> SocketAddr {
    let m = c.request(method::ALLOCATE, || {
        let mut v = vec![udp_transport()];
        v.extend(extra());
        v
    });
    assert_eq!(
        m.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "{m}: error {:?}",
        error_code(&m)
    );
    let mut r = RelayedAddress::default();
    r.get_from(&m).unwrap();
    SocketAddr::new(r.ip, r.port)
}

/// Delete `c`'s allocation: a Refresh with LIFETIME 0, which must succeed.
pub fn delete_allocation(c: &mut RawClient) {
    let m = c.request(method::REFRESH, || vec![Box::new(Lifetime(Duration::ZERO))]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{m}");
}

/// No extra attributes.
pub fn none() -> Vec<Box<dyn Setter>> {
    vec![]
}

/// The extra Allocate attributes asking for an IPv6 relay with `v6`, none
/// (IPv4, the default) without.
pub fn family(v6: bool) -> fn() -> Vec<Box<dyn Setter>> {
    if v6 {
        || vec![Box::new(REQUESTED_FAMILY_IPV6)]
    } else {
        none
    }
}

/// The base test configuration plus a TLS listener on 127.0.0.1 port 0
/// serving `leaf`, then `extra`.
pub fn tls_config(leaf: &tern::testing::Leaf, extra: &str) -> String {
    let tls = format!(
        "[tls]\ncertificate-file = {:?}\nprivate-key-file = {:?}\n{extra}",
        leaf.cert.display().to_string(),
        leaf.key.display().to_string()
    );
    base_config(&tls).replacen(
        "tcp = [\"127.0.0.1:0\", \"[::1]:0\"]\n",
        "tcp = [\"127.0.0.1:0\", \"[::1]:0\"]\ntls = [\"127.0.0.1:0\"]\n",
        1,
    )
}
