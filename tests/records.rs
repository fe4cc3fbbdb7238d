//! Allocation records from a real tern: one line per ended allocation with
//! its reason, interim lines for long ones, and byte counts whose sum is
//! the relayed-bytes metric.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use stun::message::{CLASS_INDICATION, CLASS_SUCCESS_RESPONSE};
use tern::wire::method;
use turn::proto::data::Data;

const ALLOW_LOOPBACK: &str = "[peers]\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n";

fn send(c: &mut RawClient, to: std::net::SocketAddr, payload: &[u8]) {
    let mut m = stun::message::Message::new();
    m.build(&[
        Box::new(stun::agent::TransactionId::new()),
        Box::new(message_type(method::SEND, CLASS_INDICATION)),
        peer(to),
        Box::new(Data(payload.to_vec())),
    ])
    .unwrap();
    c.send_raw(&m.raw);
}

/// Relay `n` payloads of `len` bytes each way between `c` and a new peer;
/// the payload bytes relayed.
fn relay(c: &mut RawClient, n: usize, len: usize) -> u64 {
    let relayed = allocate(c, none);
    let p = UdpSocket::bind("127.0.0.1:0").unwrap();
    p.set_read_timeout(Some(TIMEOUT)).unwrap();
    let paddr = p.local_addr().unwrap();
    let m = c.request(method::CREATE_PERMISSION, || vec![peer(paddr)]);
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        send(c, paddr, &vec![1u8; len]);
        assert_eq!(p.recv_from(&mut buf).unwrap().0, len);
        p.send_to(&vec![2u8; len], relayed).unwrap();
        assert!(c.recv_raw().is_some());
    }
    (2 * n * len) as u64
}

fn lines(path: &PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn records_carry_end_reasons_interim_lines_and_sum_to_the_metric() {
    let file = std::env::temp_dir().join(format!("tern-records-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let extra = format!(
        "{ALLOW_LOOPBACK}[records]\nfile = {:?}\nnode = \"test-node\"\ninterim-seconds = 1\n",
        file.display().to_string()
    );
    let s = TestServer::start(&extra);
    let mut total = 0;
    // alice deletes hers (Refresh 0): reason client.
    let mut alice = RawClient::udp(s.udp4(), "alice", "wonderland");
    total += relay(&mut alice, 3, 100);
    delete_allocation(&mut alice);
    // bob's TCP connection closes: connection_closed.
    let mut bob = RawClient::tcp(s.tcp4(), "bob", "builder");
    total += relay(&mut bob, 2, 50);
    drop(bob);
    // carol's REST credential runs out in 2 s: credential_expired.
    let user = format!("{}:carol", tern::cli::unix_now() + 2);
    let pass = tern::auth::rest_password(SECRET.as_bytes(), &user);
    let mut carol = RawClient::udp(s.udp4(), &user, &pass);
    total += relay(&mut carol, 1, 10);
    // dave's lives on until the server stops: interim lines, then shutdown.
    let mut dave = RawClient::udp(s.udp4(), "alice", "wonderland");
    total += relay(&mut dave, 4, 200);
    let reasons = |l: &[serde_json::Value]| -> Vec<String> {
        l.iter()
            .filter_map(|r| r["reason"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let l = lines(&file);
            let r = reasons(&l);
            ["client", "connection_closed", "credential_expired"]
                .iter()
                .all(|w| r.iter().any(|x| x == w))
                && l.iter().any(|x| x["kind"] == "interim")
        }),
        "{:?}",
        lines(&file)
    );
    let bytes = "tern_relayed_bytes_total";
    assert!(wait_until(TIMEOUT, || metric(
        &s.http_get("/metrics").1,
        bytes
    ) == total as f64));
    drop(s);
    let l = lines(&file);
    assert!(reasons(&l).iter().any(|r| r == "shutdown"), "{l:?}");
    let sum: u64 = l
        .iter()
        .map(|r| r["bytes_to_peer"].as_u64().unwrap() + r["bytes_to_client"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, total, "{l:?}");
    let alice_line = l.iter().find(|r| r["reason"] == "client").unwrap();
    assert_eq!(alice_line["user"], "alice");
    assert_eq!(alice_line["node"], "test-node");
    assert_eq!(alice_line["transport"], "udp");
    assert_eq!(alice_line["family"], "ipv4");
    assert_eq!(alice_line["packets_to_peer"], 3);
    assert_eq!(alice_line["bytes_to_client"], 300);
    let carol_line = l
        .iter()
        .find(|r| r["reason"] == "credential_expired")
        .unwrap();
    assert_eq!(carol_line["user"], "carol");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_reload_reopens_the_file_so_logrotate_can_move_it() {
    let dir = std::env::temp_dir().join(format!("tern-records-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("allocations.jsonl");
    let extra = format!("[records]\nfile = {:?}\n", file.display().to_string());
    let s = TestServer::start(&extra);
    let end_one = || {
        let mut c = RawClient::udp(s.udp4(), "alice", "wonderland");
        allocate(&mut c, none);
        delete_allocation(&mut c);
    };
    end_one();
    assert!(wait_until(TIMEOUT, || lines(&file).len() == 1));
    // logrotate moves the file away, then reloads tern.
    let rotated = dir.join("allocations.jsonl.1");
    std::fs::rename(&file, &rotated).unwrap();
    let config = tern::config::Config::parse(&base_config(&extra), "r.toml").unwrap();
    s.control(tern::server::Control::Reload(Box::new(config)));
    // The next record goes to a new file at the configured path (the
    // writer reopens before writing it, within its poll interval).
    let mut ended = 1;
    assert!(wait_until(TIMEOUT, || {
        end_one();
        ended += 1;
        !lines(&file).is_empty()
    }));
    // Records ended before the reload took effect stay in the moved
    // file; none is lost.
    assert!(wait_until(TIMEOUT, || lines(&rotated).len()
        + lines(&file).len()
        == ended));
    assert!(!lines(&rotated).is_empty());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
