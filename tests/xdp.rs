//! The XDP fast path (`[relay] xdp`) as an operator runs it: a real tern
//! process in a network namespace of its own, its clients and peers in a
//! second one across a veth pair, every datagram crossing the veth. Each
//! test makes both namespaces and removes them when it ends, whatever
//! happens; everything is bounded in count and time. Needs root (CI runs
//! these with `cargo test -- --ignored`).
//!
//! ```text
//!   client ns: 10.99.0.2 (clients), 10.99.0.3 (peers)    fd99::2, fd99::3
//!        |  veth (checksum offload off: the checksums on the wire are real)
//!   server ns: 10.99.0.1 (tern: listener, relays, XDP)   fd99::1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{RawClient, allocate, error_code, family, metric, peer, wait_until};
use stun::message::{CLASS_SUCCESS_RESPONSE, Setter};
use tern::wire::method;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;

const TERN: &str = env!("CARGO_BIN_EXE_tern");
const ROOT: &str = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)";
const SERVER4: &str = "10.99.0.1";
const SERVER6: &str = "fd99::1";
const CHANNEL: u16 = 0x4000;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two network namespaces joined by a veth pair, and a tern in the
/// first; all removed on drop.
struct Bench {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    dir: PathBuf,
    tern: Option<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

fn ethtool_tx_off(ns: &str, dev: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ethtool: {out:?}");
}

impl Bench {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "{ROOT}");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let b = Self {
            server_ns: format!("txs{tag}"),
            client_ns: format!("txc{tag}"),
            server_if: format!("txv{tag}s"),
            client_if: format!("txv{tag}c"),
            dir: std::env::temp_dir().join(format!("tern-xdp-{tag}")),
            tern: None,
        };
        std::fs::create_dir_all(&b.dir).unwrap();
        let (s, c) = (b.server_ns.as_str(), b.client_ns.as_str());
        ip(&["netns", "add", s]);
        ip(&["netns", "add", c]);
        ip(&[
            "link",
            "add",
            &b.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &b.client_if,
        ]);
        ip(&["link", "set", &b.server_if, "netns", s]);
        ip(&["link", "set", &b.client_if, "netns", c]);
        for (ns, dev, addrs) in [
            (
                s,
                &b.server_if,
                [format!("{SERVER4}/24"), format!("{SERVER6}/64")].to_vec(),
            ),
            (
                c,
                &b.client_if,
                ["10.99.0.2/24", "10.99.0.3/24", "fd99::2/64", "fd99::3/64"]
                    .map(String::from)
                    .to_vec(),
            ),
        ] {
            for a in addrs {
                ip(&["-n", ns, "addr", "add", &a, "dev", dev, "nodad"]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ethtool_tx_off(ns, dev);
        }
        b
    }

    /// Write the config (the base plus `extra` tables) and start tern.
    fn start(&mut self, xdp: &str, extra: &str) {
        std::fs::write(self.dir.join("tern.toml"), config(xdp, extra)).unwrap();
        self.spawn(Command::new("ip").args(["netns", "exec", &self.server_ns, TERN]));
        assert!(
            wait_until(Duration::from_secs(10), || self
                .metrics()
                .contains("tern_xdp{")),
            "tern did not become ready: {}",
            self.log()
        );
    }

    fn spawn(&mut self, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.join("tern.log")).unwrap();
        let child = cmd
            .arg("--config")
            .arg(self.dir.join("tern.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.tern = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tern.log")).unwrap_or_default()
    }

    /// Rewrite the config and reload it (SIGHUP).
    fn reload(&self, xdp: &str, extra: &str) {
        std::fs::write(self.dir.join("tern.toml"), config(xdp, extra)).unwrap();
        let pid = self.tern.as_ref().unwrap().id() as i32;
        // SAFETY: kill has no memory preconditions; the pid is our child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    /// tern's /metrics, read in the server namespace.
    fn metrics(&self) -> String {
        in_ns(&self.server_ns, || {
            std::panic::catch_unwind(|| {
                common::http_get("127.0.0.1:9641".parse().unwrap(), "/metrics").1
            })
            .unwrap_or_default()
        })
    }

    /// Whether an XDP program is attached to the server's veth.
    fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.server_ns,
                "-d",
                "link",
                "show",
                "dev",
                &self.server_if,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut t) = self.tern.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(xdp: &str, extra: &str) -> String {
    format!(
        r#"realm = "tern"
workers = 2
[listen]
udp = ["{SERVER4}:3478", "[{SERVER6}]:3478"]
tcp = []
[relay]
address-ipv4 = "{SERVER4}"
address-ipv6 = "{SERVER6}"
xdp = "{xdp}"
[auth]
secrets = ["{secret}"]
[[auth.users]]
name = "alice"
password = "wonderland"
[admin]
listen = "127.0.0.1:9641"
{extra}
"#,
        secret = common::SECRET
    )
}

const ALLOW: &str = "[peers]\nallow = [\"10.99.0.0/24\", \"fd99::/64\"]\n";

/// Run `f` on a thread inside network namespace `ns` (sockets it makes
/// stay in that namespace, whichever thread uses them later).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                // SAFETY: setns on an open namespace descriptor; it changes
                // only this thread's network namespace.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
    })
}

/// A client with an allocation of its own family and a channel to a peer
/// socket: (client, peer socket, relayed address).
fn channel_to_peer(v6: bool) -> (RawClient, UdpSocket, SocketAddr) {
    let (server, client, peer_ip) = if v6 {
        (format!("[{SERVER6}]:3478"), "[fd99::2]:0", "[fd99::3]:0")
    } else {
        (format!("{SERVER4}:3478"), "10.99.0.2:0", "10.99.0.3:0")
    };
    let mut c = RawClient::udp_from(
        client.parse().unwrap(),
        server.parse().unwrap(),
        "alice",
        "wonderland",
    );
    let relay = allocate(&mut c, family(v6));
    let p = UdpSocket::bind(peer_ip).unwrap();
    p.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let paddr = p.local_addr().unwrap();
    let m = c.request(method::CHANNEL_BIND, || {
        vec![Box::new(ChannelNumber(CHANNEL)), peer(paddr)]
    });
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
    (c, p, relay)
}

fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.extend_from_slice(&CHANNEL.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// `n` round trips: ChannelData from the client to the peer, the peer's
/// answer back as ChannelData; every payload checked. Returns the payload
/// bytes sent each way.
fn round_trips(c: &mut RawClient, p: &UdpSocket, relay: SocketAddr, n: usize) -> u64 {
    let mut bytes = 0;
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let payload = format!("datagram {i:05} through the fast path").into_bytes();
        c.send_raw(&channel_data(&payload));
        let (len, from) = p.recv_from(&mut buf).expect("the peer got the datagram");
        assert_eq!(&buf[..len], &payload[..], "payload {i} to the peer");
        assert_eq!(from, relay, "from the relayed address");
        let answer: Vec<u8> = payload.iter().rev().copied().collect();
        p.send_to(&answer, relay).unwrap();
        let got = c.recv_raw().expect("the client got the answer");
        assert_eq!(got, channel_data(&answer), "answer {i} to the client");
        bytes += payload.len() as u64;
    }
    bytes
}

fn counted(page: &str, direction: &str, path: &str) -> f64 {
    metric(
        page,
        &format!(
            "tern_relayed_packets_total{{direction=\"{direction}\",path=\"{path}\",transport=\"udp\"}}"
        ),
    )
}

fn relayed_bytes(page: &str, direction: &str) -> f64 {
    metric(
        page,
        &format!("tern_relayed_bytes_total{{direction=\"{direction}\""),
    )
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn the_fast_path_relays_both_ways_with_valid_checksums_and_counts_every_byte() {
    relays_both_ways("generic");
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn native_mode_relays_both_ways_too() {
    relays_both_ways("native");
}

fn relays_both_ways(mode: &str) {
    let mut b = Bench::new();
    // A veth sends an XDP_TX'd frame on only when its peer has an XDP
    // program of its own (any, in native mode).
    let _pass = (mode == "native").then(|| in_ns(&b.client_ns, || xdp_pass_on(&b.client_if)));
    let records = b.dir.join("records.jsonl");
    b.start(
        mode,
        &format!("{ALLOW}[records]\nfile = \"{}\"\n", records.display()),
    );
    assert!(b.xdp_attached());
    assert_eq!(
        metric(&b.metrics(), &format!("tern_xdp{{mode=\"{mode}\"}}")),
        1.0
    );
    const N: usize = 300;
    let (sent, frames) = in_ns(&b.client_ns, || {
        let capture = Capture::open(&b.client_if);
        let mut sent = 0;
        for v6 in [false, true] {
            let (mut c, p, relay) = channel_to_peer(v6);
            sent += round_trips(&mut c, &p, relay, N);
            // Delete it: its record carries what was relayed.
            let m = c.request(method::REFRESH, || vec![Box::new(Lifetime(Duration::ZERO))]);
            assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
        }
        (sent, capture.check_all())
    });
    // Every datagram tern's side sent across the veth had valid IPv4
    // header and UDP checksums (checked on the captured frames).
    assert!(frames >= 4 * N, "only {frames} frames checked");
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            page = b.metrics();
            relayed_bytes(&page, "client_to_peer") == sent as f64
                && relayed_bytes(&page, "peer_to_client") == sent as f64
        }),
        "sent {sent} each way: {page}"
    );
    // All but the first datagram or two of each allocation each way
    // (before the next hop is learned) took the fast path.
    for d in ["client_to_peer", "peer_to_client"] {
        let xdp = counted(&page, d, "xdp");
        assert!(xdp >= (2 * N - 4) as f64, "{d}: {xdp} by XDP\n{page}");
        assert_eq!(xdp + counted(&page, d, "userspace"), (2 * N) as f64, "{d}");
    }
    // The records (one per allocation) add up to what the peers got.
    let text = std::fs::read_to_string(&records).unwrap();
    let (mut to_peer, mut to_client) = (0, 0);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        to_peer += v["bytes_to_peer"].as_u64().unwrap();
        to_client += v["bytes_to_client"].as_u64().unwrap();
    }
    assert_eq!((to_peer, to_client), (sent, sent), "{text}");
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn a_reload_that_denies_the_peer_stops_the_fast_path_at_once() {
    let mut b = Bench::new();
    b.start("generic", ALLOW);
    let b = &b;
    in_ns(&b.client_ns, || {
        let (mut c, p, relay) = channel_to_peer(false);
        round_trips(&mut c, &p, relay, 20);
        assert!(
            wait_until(Duration::from_secs(3), || metric(
                &b.metrics(),
                "tern_xdp_allocations"
            ) == 1.0),
            "offloaded"
        );
        let denied =
            |page: &str| metric(page, "tern_dropped_packets_total{reason=\"denied_peer\"}");
        let before = denied(&b.metrics());
        b.reload("generic", "");
        assert!(
            wait_until(Duration::from_secs(5), || metric(
                &b.metrics(),
                "tern_xdp_allocations"
            ) == 0.0),
            "the reload withdrew the entries: {}",
            b.log()
        );
        // Neither direction is relayed any more, by either path.
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            c.send_raw(&channel_data(b"after the reload"));
            p.send_to(b"after the reload", relay).unwrap();
        }
        assert!(p.recv_from(&mut buf).is_err(), "the peer got a datagram");
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Some(got) = c.recv_raw() {
                assert!(
                    tern::wire::parse_channel_data(&got).is_none(),
                    "the client got data"
                );
            }
        }
        assert!(
            wait_until(Duration::from_secs(3), || denied(&b.metrics())
                >= before + 20.0),
            "tern dropped them as denied"
        );
    });
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn the_bandwidth_limit_holds_for_both_paths_together() {
    const RATE: u64 = 100_000;
    let mut b = Bench::new();
    b.start(
        "generic",
        &format!("{ALLOW}[limits]\nmax-bandwidth-bytes-per-second = {RATE}\n"),
    );
    let (received, allowed) = in_ns(&b.client_ns, || {
        let (mut c, p, relay) = channel_to_peer(false);
        // Learn both next hops, then start from a full bucket.
        round_trips(&mut c, &p, relay, 2);
        std::thread::sleep(Duration::from_millis(1100));
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut buf = [0u8; 2048];
                let mut got = 0u64;
                p.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                while let Ok((n, _)) = p.recv_from(&mut buf) {
                    got += n as u64;
                }
                got
            });
            // 1000-byte payloads at twice the limit for 2 s, alternating
            // ChannelData (the fast path) and Send indications (userspace).
            let payload = vec![0x5a; 1000];
            let start = Instant::now();
            let mut sent = 0;
            let send = c.build(
                method::SEND,
                vec![
                    peer(p.local_addr().unwrap()),
                    Box::new(Data(payload.clone())) as Box<dyn Setter>,
                ],
                false,
            );
            let send = indication(send);
            for i in 0..400u32 {
                while start.elapsed() < Duration::from_millis(u64::from(i) * 5) {
                    std::hint::spin_loop();
                }
                if i % 2 == 0 {
                    c.send_raw(&channel_data(&payload));
                } else {
                    c.send_raw(&send);
                }
                sent += payload.len() as u64;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let received = reader.join().unwrap();
            // A full bucket (one second's worth) plus the rate since.
            let allowed = (RATE as f64 * (1.0 + elapsed)).min(sent as f64);
            (received, allowed)
        })
    });
    let ratio = received as f64 / allowed;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "received {received}, allowed {allowed:.0}"
    );
    // Both paths carried part of it, and tern dropped what was over.
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(3), || {
            page = b.metrics();
            counted(&page, "client_to_peer", "xdp") >= 50.0
                && counted(&page, "client_to_peer", "userspace") >= 50.0
                && metric(
                    &page,
                    "tern_dropped_packets_total{reason=\"bandwidth_limit\"}",
                ) >= 50.0
        }),
        "{page}"
    );
}

/// A Send indication as a client sends it (a request built by the shared
/// builder, turned into an indication: class bits cleared).
fn indication(mut raw: Vec<u8>) -> Vec<u8> {
    let t = u16::from_be_bytes([raw[0], raw[1]]) & !0x0110 | 0x0010;
    raw[..2].copy_from_slice(&t.to_be_bytes());
    raw
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn relay_to_relay_keeps_working_with_the_fast_path_on() {
    let mut b = Bench::new();
    b.start("generic", ALLOW);
    let b = &b;
    in_ns(&b.client_ns, || {
        let server: SocketAddr = format!("{SERVER4}:3478").parse().unwrap();
        let mut a = RawClient::udp_from(
            "10.99.0.2:0".parse().unwrap(),
            server,
            "alice",
            "wonderland",
        );
        let mut z = RawClient::udp_from(
            "10.99.0.3:0".parse().unwrap(),
            server,
            "alice",
            "wonderland",
        );
        let (ra, rz) = (
            allocate(&mut a, family(false)),
            allocate(&mut z, family(false)),
        );
        for (c, to) in [(&mut a, rz), (&mut z, ra)] {
            let m = c.request(method::CHANNEL_BIND, || {
                vec![Box::new(ChannelNumber(CHANNEL)), peer(to)]
            });
            assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&m));
        }
        for i in 0..50u32 {
            let payload = i.to_be_bytes();
            a.send_raw(&channel_data(&payload));
            assert_eq!(z.recv_raw().expect("z got it"), channel_data(&payload));
            z.send_raw(&channel_data(&payload));
            assert_eq!(a.recv_raw().expect("a got it"), channel_data(&payload));
        }
    });
    // Handed over in-process, never through the program (the peer, one of
    // tern's own relays, never sends anything the program could learn).
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(3), || {
            page = b.metrics();
            metric(&page, "tern_relay_to_relay_packets_total") >= 100.0
        }),
        "{page}"
    );
    assert_eq!(counted(&page, "client_to_peer", "xdp"), 0.0, "{page}");
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn the_program_is_gone_after_kill_9() {
    let mut b = Bench::new();
    b.start("generic", ALLOW);
    assert!(b.xdp_attached());
    let mut t = b.tern.take().unwrap();
    t.kill().unwrap();
    t.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || !b.xdp_attached()),
        "the BPF link outlived tern"
    );
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn without_the_capabilities_auto_falls_back_and_generic_refuses() {
    let mut b = Bench::new();
    std::fs::write(b.dir.join("tern.toml"), config("generic", ALLOW)).unwrap();
    let drop_caps = |cmd: &mut Command| {
        cmd.args(["netns", "exec", &b.server_ns, "setpriv"]).args([
            "--bounding-set=-bpf,-net_admin,-sys_admin,-perfmon",
            "--inh-caps=-all",
            "--",
            TERN,
        ]);
    };
    let mut cmd = Command::new("ip");
    drop_caps(&mut cmd);
    let out = cmd
        .arg("--config")
        .arg(b.dir.join("tern.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay.xdp = \"generic\""), "{err}");

    std::fs::write(b.dir.join("tern.toml"), config("auto", ALLOW)).unwrap();
    let mut cmd = Command::new("ip");
    drop_caps(&mut cmd);
    b.spawn(&mut cmd);
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &b.metrics(),
            "tern_xdp{mode=\"off\"}"
        ) == 1.0),
        "{}",
        b.log()
    );
    assert!(b.log().contains("XDP fast path unavailable"), "{}", b.log());
    assert!(!b.xdp_attached());
    in_ns(&b.client_ns, || {
        let (mut c, p, relay) = channel_to_peer(false);
        round_trips(&mut c, &p, relay, 10);
    });
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(3), || {
            page = b.metrics();
            counted(&page, "client_to_peer", "userspace") == 10.0
        }),
        "{page}"
    );
    assert_eq!(counted(&page, "client_to_peer", "xdp"), 0.0);
}

/// Attach a program that passes everything (two instructions, loaded with
/// `bpf(2)`) to `dev` in native mode; detached when the link is dropped.
fn xdp_pass_on(dev: &str) -> OwnedFd {
    fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> OwnedFd {
        // SAFETY: `attr` is a zero-padded bpf_attr prefix whose pointers
        // outlive the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
        assert!(r >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
        // SAFETY: the kernel just returned this descriptor.
        unsafe { OwnedFd::from_raw_fd(r as i32) }
    }
    // r0 = XDP_PASS; exit
    let insns: [u64; 2] = [0xb7 | (2u64 << 32), 0x95];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = 6 | (2u64 << 32); // BPF_PROG_TYPE_XDP, two instructions
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[8] = 37u64 << 32; // expected_attach_type BPF_XDP
    let prog = bpf(5, &mut attr);
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let mut attr = [0u64; 8];
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(index) << 32);
    attr[1] = 37 | (u64::from(1u32 << 2) << 32); // BPF_XDP, XDP_FLAGS_DRV_MODE
    bpf(28, &mut attr)
}

#[test]
#[ignore = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)"]
fn a_service_user_with_the_documented_capabilities_attaches_it() {
    // What the systemd unit's comment says to grant: CAP_BPF,
    // CAP_NET_ADMIN and CAP_PERFMON, as an unprivileged user.
    let mut b = Bench::new();
    std::fs::write(b.dir.join("tern.toml"), config("generic", ALLOW)).unwrap();
    let caps = "+bpf,+net_admin,+perfmon,+net_bind_service";
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &b.server_ns,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
    ])
    .args([
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
    ])
    .args(["--", TERN]);
    b.spawn(&mut cmd);
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            &b.metrics(),
            "tern_xdp{mode=\"generic\"}"
        ) == 1.0),
        "{}",
        b.log()
    );
    assert!(b.xdp_attached());
}

/// An AF_PACKET socket on the client's veth: every IPv4 and IPv6 UDP
/// frame tern's side sent, checked for valid checksums.
struct Capture(OwnedFd);

impl Capture {
    fn open(dev: &str) -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: a plain socket call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: the kernel just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: a zeroed sockaddr_ll is valid; filled below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: binds to a sockaddr_ll of the right size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0);
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt reads an int.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                4,
            )
        };
        Self(fd)
    }

    /// Check every captured UDP frame from tern's addresses; how many.
    fn check_all(&self) -> usize {
        let mut buf = vec![0u8; 70_000];
        let mut checked = 0;
        loop {
            // SAFETY: reads into a buffer of the given length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return checked;
            }
            let f = &buf[..n as usize];
            if f.len() < 14 {
                continue;
            }
            let ty = u16::from_be_bytes([f[12], f[13]]);
            let ip = &f[14..];
            let ok = match ty {
                0x0800 if ip.len() >= 28 && ip[9] == 17 && ip[12..16] == [10, 99, 0, 1] => {
                    assert_eq!(fold(sum(&ip[..20])), 0xffff, "IPv4 header checksum");
                    let len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                    let udp = &ip[20..len];
                    let pseudo =
                        [&ip[12..20], &[0, 17], &(udp.len() as u16).to_be_bytes()].concat();
                    fold(sum(&pseudo) + sum(udp)) == 0xffff
                }
                0x86dd
                    if ip.len() >= 48
                        && ip[6] == 17
                        && ip[8..24] == SERVER6.parse::<std::net::Ipv6Addr>().unwrap().octets() =>
                {
                    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                    let udp = &ip[40..40 + len];
                    let pseudo =
                        [&ip[8..40], &(len as u32).to_be_bytes()[..], &[0, 0, 0, 17]].concat();
                    fold(sum(&pseudo) + sum(udp)) == 0xffff
                }
                _ => continue,
            };
            assert!(ok, "bad UDP checksum in a frame from tern: {f:02x?}");
            checked += 1;
        }
    }
}

fn sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
#[ignore = "needs clang-16 (scripts/setup installs it; as root, scripts/test runs it)"]
fn the_committed_bpf_object_is_built_from_its_source() {
    let out = std::env::temp_dir().join(format!("relay_xdp-{}.o", std::process::id()));
    let status = Command::new("scripts/build-bpf")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let built = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let committed = std::fs::read("src/io/xdp/relay_xdp.o").unwrap();
    assert!(
        built == committed,
        "src/io/xdp/relay_xdp.o is not what bpf/relay_xdp.c builds to: run scripts/build-bpf and commit it"
    );
}
