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
mod netbench;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    RawClient, allocate, delete_allocation, error_code, family, metric, peer, wait_until,
};
use netbench::{ALLOW, Bench, Capture, SERVER4, SERVER6, TERN, config, in_ns, xdp_pass_on};
use stun::message::{CLASS_SUCCESS_RESPONSE, Setter};
use tern::wire::method;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;

const CHANNEL: u16 = 0x4000;

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
            delete_allocation(&mut c);
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
        let (received, sent, elapsed) = mixed_burst(&mut c, &p);
        // A full bucket (one second's worth) plus the rate since.
        let allowed = (RATE as f64 * (1.0 + elapsed)).min(sent as f64);
        (received, allowed)
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

/// 1000-byte payloads at 200 a second for 2 s from client `c` to peer
/// `p`, alternating ChannelData (the fast path) and Send indications
/// (userspace): the bytes `p` received, the bytes sent, and the seconds
/// the sending took.
fn mixed_burst(c: &mut RawClient, p: &UdpSocket) -> (u64, u64, f64) {
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
        (reader.join().unwrap(), sent, elapsed)
    })
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
