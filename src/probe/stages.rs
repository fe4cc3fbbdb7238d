//! The stages over one transport, in order; a stage the next ones need
//! ends the run when it fails.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_SUCCESS_RESPONSE, Getter, Message, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use super::client::{Conn, NoAnswer, Proto, TlsClient};
use super::{Options, Stage};
use crate::request::{self, Auth};
use crate::wire::method;

mod diagnose;
mod server;

/// The run over one transport.
pub(super) struct Probe<'a> {
    opts: &'a Options,
    server: SocketAddr,
    proto: Proto,
    tls: Option<&'a TlsClient>,
    stages: Vec<Stage>,
}

/// The credential in use and the server's realm and nonce.
struct Session {
    conn: Conn,
    user: String,
    pass: String,
    realm: String,
    nonce: String,
}

/// A live allocation's addresses.
struct Alloc {
    relayed: SocketAddr,
    mapped: SocketAddr,
}

impl<'a> Probe<'a> {
    pub(super) fn new(
        opts: &'a Options,
        server: SocketAddr,
        proto: Proto,
        tls: Option<&'a TlsClient>,
    ) -> Self {
        Self {
            opts,
            server,
            proto,
            tls,
            stages: Vec::new(),
        }
    }

    /// Every stage that can run.
    pub(super) fn run(mut self) -> Vec<Stage> {
        let _ = self.steps();
        self.stages
    }

    fn steps(&mut self) -> Option<()> {
        let mut conn = self.reach()?;
        let (realm, nonce) = self.challenge(&mut conn)?;
        let (user, pass) = self.credential()?;
        let mut s = Session {
            conn,
            user,
            pass,
            realm,
            nonce,
        };
        let alloc = self.allocate(&mut s)?;
        self.relayed_address(&alloc);
        self.relay_ports(&mut s, &alloc);
        self.private_peer(&mut s);
        self.cleanup(&mut s);
        Some(())
    }

    fn pass(&mut self, stage: &str, detail: String) {
        self.stages.push(Stage {
            name: format!("{} {stage}", self.proto.label()),
            ok: true,
            detail,
        });
    }

    /// A failure: what was seen, the likely cause, what to change.
    fn fail(&mut self, stage: &str, (seen, cause, change): (String, String, String)) {
        self.stages.push(Stage {
            name: format!("{} {stage}", self.proto.label()),
            ok: false,
            detail: format!("{seen} — likely: {cause} — {change}"),
        });
    }

    /// Connect and send a Binding request: the server answers, and says
    /// where it sees us.
    fn reach(&mut self) -> Option<Conn> {
        let started = Instant::now();
        let binding = request::request(method::BINDING, vec![], None).ok()?;
        let answer =
            Conn::open(self.proto, self.server, self.opts.timeout, self.tls).and_then(|mut c| {
                let m = c.transact(&binding)?;
                Ok((c, m))
            });
        let (conn, m) = match answer {
            Ok(x) => x,
            Err(e) => {
                let why = diagnose::unreachable(self.proto, self.server, self.opts.timeout, &e);
                self.fail("reachability", why);
                return None;
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.pass(
            "reachability",
            format!(
                "{} answered over {} in {ms:.1} ms",
                self.server,
                self.proto.label()
            ),
        );
        match mapped(&m) {
            Some(a) => self.pass("binding", format!("mapped address {a}")),
            None => self.fail("binding", diagnose::no_mapped(&m)),
        }
        Some(conn)
    }

    /// An unsigned Allocate must draw 401 with REALM and NONCE.
    fn challenge(&mut self, conn: &mut Conn) -> Option<(String, String)> {
        let raw = request::request(method::ALLOCATE, vec![udp()], None).ok()?;
        let m = match conn.transact(&raw) {
            Ok(m) => m,
            Err(e) => {
                self.fail("challenge", diagnose::allocate_unanswered(&e));
                return None;
            }
        };
        let (realm, nonce) = (text(&m, ATTR_REALM), text(&m, ATTR_NONCE));
        let (Some(401), Some(realm), Some(nonce)) = (error(&m).map(|(c, _)| c), realm, nonce)
        else {
            self.fail("challenge", diagnose::no_challenge(&m));
            return None;
        };
        match &self.opts.realm {
            Some(want) if *want != realm => self.fail("challenge", diagnose::realm(&realm, want)),
            _ => self.pass(
                "challenge",
                format!("401 with realm {realm:?} and a nonce, as expected"),
            ),
        }
        Some((realm, nonce))
    }

    /// The credential from the options: minted from the REST secret, or
    /// given.
    fn credential(&mut self) -> Option<(String, String)> {
        let o = self.opts;
        if let Some(secret) = &o.secret {
            let user = o.user.as_deref().unwrap_or("probe");
            let c = crate::credentials::mint(secret, user, 3600, crate::unix::now(), vec![]);
            return Some((c.username, c.password));
        }
        if let (Some(u), Some(p)) = (&o.user, &o.password) {
            return Some((u.clone(), p.clone()));
        }
        self.fail("allocate", diagnose::no_credential());
        None
    }

    /// A signed request on `s`, renewing the nonce once on 438.
    fn signed(
        &mut self,
        s: &mut Session,
        m: u16,
        attrs: impl Fn() -> Vec<Box<dyn Setter>>,
    ) -> Result<Message, NoAnswer> {
        let mut answer = None;
        for _ in 0..2 {
            let auth = Auth {
                user: &s.user,
                pass: &s.pass,
                realm: &s.realm,
                nonce: &s.nonce,
            };
            let raw = request::request(m, attrs(), Some(&auth)).map_err(|_| NoAnswer::Timeout)?;
            let r = s.conn.transact(&raw)?;
            let stale = is_error(&r, 438);
            if let Some(n) = text(&r, ATTR_NONCE).filter(|_| stale) {
                s.nonce = n;
                answer = Some(r);
                continue;
            }
            return Ok(r);
        }
        answer.ok_or(NoAnswer::Timeout)
    }

    fn allocate(&mut self, s: &mut Session) -> Option<Alloc> {
        let before = self.opts.admin.and_then(server::auth_failures);
        let m = match self.signed(s, method::ALLOCATE, || vec![udp()]) {
            Ok(m) => m,
            Err(e) => {
                self.fail("allocate", diagnose::allocate_unanswered(&e));
                return None;
            }
        };
        if m.typ.class == CLASS_SUCCESS_RESPONSE {
            return self.allocated(s, &m);
        }
        let why = diagnose::allocate_error(&m, &s.user);
        let unauthorized = is_error(&m, 401);
        // The server's own counters say why, when its admin listener is
        // reachable.
        let locally_expired = diagnose::expired_by_local_clock(&s.user);
        if let (true, false, Some(admin), Some(before)) =
            (unauthorized, locally_expired, self.opts.admin, before)
        {
            if let Some(reason) = server::grown_reason(admin, &before) {
                self.fail("allocate", diagnose::server_says(&reason, &s.user, why));
                return None;
            }
        }
        // 401 with a fresh REST credential: a server clock far ahead (it
        // sees the credential as expired) or the wrong secret.
        if unauthorized && self.opts.secret.is_some() {
            return self.retry_with_long_credential(s);
        }
        self.fail("allocate", why);
        None
    }

    fn allocated(&mut self, s: &Session, m: &Message) -> Option<Alloc> {
        let (Some(relayed), Some(mapped)) = (relayed(m), mapped(m)) else {
            self.fail("allocate", diagnose::incomplete_success());
            return None;
        };
        let mut l = Lifetime::default();
        let lifetime = l.get_from(m).map_or(0, |()| l.0.as_secs());
        self.pass(
            "allocate",
            format!(
                "allocated {relayed} for {} (lifetime {lifetime} s, mapped {mapped})",
                s.user
            ),
        );
        Some(Alloc { relayed, mapped })
    }

    fn retry_with_long_credential(&mut self, s: &mut Session) -> Option<Alloc> {
        let secret = self.opts.secret.clone().unwrap_or_default();
        let user = self.opts.user.clone().unwrap_or_else(|| "probe".into());
        let c = crate::credentials::mint(&secret, &user, 30 * 86_400, crate::unix::now(), vec![]);
        let (old_user, old_pass) = (
            std::mem::replace(&mut s.user, c.username),
            std::mem::replace(&mut s.pass, c.password),
        );
        match self.signed(s, method::ALLOCATE, || vec![udp()]) {
            Ok(m) if m.typ.class == CLASS_SUCCESS_RESPONSE => {
                self.fail("allocate", diagnose::clock_ahead(&old_user));
                let (Some(relayed), Some(mapped)) = (relayed(&m), mapped(&m)) else {
                    return None;
                };
                Some(Alloc { relayed, mapped })
            }
            _ => {
                self.fail("allocate", diagnose::wrong_secret(&old_user));
                s.user = old_user;
                s.pass = old_pass;
                None
            }
        }
    }

    /// Whether the relayed address is one peers can reach.
    fn relayed_address(&mut self, a: &Alloc) {
        let r = a.relayed.ip();
        if let Some(want) = self.opts.expect_ip.filter(|w| *w != r) {
            self.fail("relayed address", diagnose::unexpected_relay(r, want));
        } else if !diagnose::is_public(r) && diagnose::is_public(self.server.ip()) {
            self.fail(
                "relayed address",
                diagnose::private_relay(r, self.server.ip()),
            );
        } else {
            let note = if r == self.server.ip() {
                String::new()
            } else {
                format!(
                    " (not the address you reached, {}: right for a server behind 1:1 NAT with [relay] external-ipv4)",
                    self.server.ip()
                )
            };
            self.pass("relayed address", format!("{}{note}", a.relayed));
        }
    }

    /// A datagram from a second local socket in through the relay port,
    /// and one back out: never relay-to-relay, which a server may deliver
    /// internally and so hide a firewall.
    fn relay_ports(&mut self, s: &mut Session, a: &Alloc) {
        let Some((peer, peer_ip)) = self.peer_socket(a) else {
            return;
        };
        match self.signed(s, method::CREATE_PERMISSION, || {
            vec![peer_attr(SocketAddr::new(peer_ip, 9))]
        }) {
            Ok(m) if m.typ.class == CLASS_SUCCESS_RESPONSE => {}
            Ok(m) => return self.fail("relay inbound", diagnose::own_permission(&m, peer_ip)),
            Err(e) => return self.fail("relay inbound", diagnose::allocate_unanswered(&e)),
        }
        let token: [u8; 8] = rand::random();
        let inbound = [b"tern-probe-in-".as_slice(), &token].concat();
        let Some(from) = self.inbound(s, &peer, peer_ip, a, &inbound) else {
            return;
        };
        let outbound = [b"tern-probe-out-".as_slice(), &token].concat();
        self.outbound(s, &peer, from, a, &outbound);
    }

    /// A UDP socket for the peer side, and the IP the relay will see it
    /// send from (our address as the server sees it, when of the relay's
    /// family).
    fn peer_socket(&mut self, a: &Alloc) -> Option<(UdpSocket, IpAddr)> {
        let any: SocketAddr = if a.relayed.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .ok()?;
        let sock = match UdpSocket::bind(any) {
            Ok(s) => s,
            Err(e) => {
                self.fail("relay inbound", diagnose::local(&e));
                return None;
            }
        };
        let ip = if a.mapped.is_ipv4() == a.relayed.is_ipv4() {
            a.mapped.ip()
        } else {
            let probe = UdpSocket::bind(any).ok()?;
            probe.connect(a.relayed).ok()?;
            probe.local_addr().ok()?.ip()
        };
        Some((sock, ip))
    }

    /// Send `payload` from `peer` to the relayed address until it arrives
    /// as a Data indication; returns the peer address the server saw.
    fn inbound(
        &mut self,
        s: &mut Session,
        peer: &UdpSocket,
        peer_ip: IpAddr,
        a: &Alloc,
        payload: &[u8],
    ) -> Option<SocketAddr> {
        let deadline = Instant::now() + self.opts.timeout;
        while Instant::now() < deadline {
            if let Err(e) = peer.send_to(payload, a.relayed) {
                self.fail(
                    "relay inbound",
                    diagnose::cannot_send(a.relayed, &e, self.server.ip()),
                );
                return None;
            }
            let round = (Instant::now() + Duration::from_millis(500)).min(deadline);
            while let Ok(m) = s.conn.next_message(round) {
                if let Some(from) = data_from(&m, payload) {
                    self.pass(
                        "relay inbound",
                        format!("a datagram to {} from your UDP port came back as a Data indication (peer {from})", a.relayed),
                    );
                    return Some(from);
                }
            }
        }
        self.fail(
            "relay inbound",
            diagnose::inbound_lost(a.relayed, self.server.ip(), peer_ip, self.opts.timeout),
        );
        None
    }

    /// A Send indication to `to` must reach `peer`.
    fn outbound(
        &mut self,
        s: &mut Session,
        peer: &UdpSocket,
        to: SocketAddr,
        a: &Alloc,
        payload: &[u8],
    ) {
        let deadline = Instant::now() + self.opts.timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let send = request::message(
                method::SEND,
                CLASS_INDICATION,
                vec![peer_attr(to), Box::new(Data(payload.to_vec()))],
                None,
            );
            if let Ok(raw) = send {
                let _ = s.conn.send(&raw);
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            let _ = peer.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            if let Ok((n, from)) = peer.recv_from(&mut buf) {
                if &buf[..n] == payload {
                    self.pass(
                        "relay outbound",
                        format!("a Send indication reached your UDP port from {from}"),
                    );
                    return;
                }
            }
        }
        self.fail(
            "relay outbound",
            diagnose::outbound_lost(a.relayed, self.opts.timeout),
        );
    }

    /// Information: whether a private peer (10.0.0.0/8) is allowed.
    fn private_peer(&mut self, s: &mut Session) {
        let private: SocketAddr = SocketAddr::from(([10, 0, 0, 1], 9));
        let detail = match self.signed(s, method::CREATE_PERMISSION, || vec![peer_attr(private)]) {
            Ok(m) if m.typ.class == CLASS_SUCCESS_RESPONSE => format!(
                "a permission for {} was granted: the server's peer policy allows 10.0.0.0/8 ([peers] allow), so every user can reach that network through the relay",
                private.ip()
            ),
            Ok(m) if is_error(&m, 403) => format!(
                "a permission for {} is refused (403), as tern's default peer policy does: private networks are not reachable through the relay",
                private.ip()
            ),
            Ok(m) => format!(
                "a permission for {} was answered {}",
                private.ip(),
                diagnose::code_text(&m)
            ),
            Err(e) => format!("a permission for {} got {e}", private.ip()),
        };
        self.pass("private peer", detail);
    }

    /// Refresh with LIFETIME 0 deletes the allocation.
    fn cleanup(&mut self, s: &mut Session) {
        match self.signed(s, method::REFRESH, || {
            vec![Box::new(Lifetime(Duration::ZERO))]
        }) {
            Ok(m) if m.typ.class == CLASS_SUCCESS_RESPONSE => {
                self.pass("cleanup", "allocation deleted (Refresh, lifetime 0)".into())
            }
            Ok(m) => self.fail("cleanup", diagnose::refresh_error(&m)),
            Err(e) => self.fail("cleanup", diagnose::allocate_unanswered(&e)),
        }
    }
}

fn udp() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

fn peer_attr(a: SocketAddr) -> Box<dyn Setter> {
    Box::new(PeerAddress {
        ip: a.ip(),
        port: a.port(),
    })
}

fn text(m: &Message, attr: stun::attributes::AttrType) -> Option<String> {
    TextAttribute::get_from_as(m, attr).ok().map(|t| t.text)
}

/// An error response's code and reason phrase.
fn error(m: &Message) -> Option<(u16, String)> {
    let mut e = ErrorCodeAttribute::default();
    (m.typ.class == CLASS_ERROR_RESPONSE && e.get_from(m).is_ok())
        .then(|| (e.code.0, String::from_utf8_lossy(&e.reason).into_owned()))
}

/// Whether `m` is an error response with `code`.
fn is_error(m: &Message, code: u16) -> bool {
    error(m).is_some_and(|(c, _)| c == code)
}

fn mapped(m: &Message) -> Option<SocketAddr> {
    let mut x = XorMappedAddress::default();
    x.get_from(m).ok()?;
    Some(SocketAddr::new(x.ip, x.port))
}

fn relayed(m: &Message) -> Option<SocketAddr> {
    let mut r = RelayedAddress::default();
    r.get_from(m).ok()?;
    Some(SocketAddr::new(r.ip, r.port))
}

/// The peer address of a Data indication carrying `payload`.
fn data_from(m: &Message, payload: &[u8]) -> Option<SocketAddr> {
    if m.typ != request::message_type(method::DATA, CLASS_INDICATION) {
        return None;
    }
    let mut d = Data::default();
    d.get_from(m).ok()?;
    if d.0 != payload {
        return None;
    }
    let mut p = PeerAddress::default();
    p.get_from(m).ok()?;
    Some(SocketAddr::new(p.ip, p.port))
}
