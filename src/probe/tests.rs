#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn turn_uris_parse_with_their_transports_and_ports() {
    let t = parse_url("turn:turn.example.org").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.protos),
        ("turn.example.org", 3478, vec![Proto::Udp, Proto::Tcp])
    );
    let t = parse_url("turn:192.0.2.1:443?transport=tcp").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.protos),
        ("192.0.2.1", 443, vec![Proto::Tcp])
    );
    let t = parse_url("turn:[2001:db8::1]:3479?transport=udp").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.protos),
        ("2001:db8::1", 3479, vec![Proto::Udp])
    );
    let t = parse_url("turn:[::1]").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 3478));
    let t = parse_url("turns:turn.example.org").unwrap();
    assert_eq!((t.port, t.protos), (5349, vec![Proto::Tls]));
    let t = parse_url("turns:turn.example.org:443?transport=tcp").unwrap();
    assert_eq!((t.port, t.protos), (443, vec![Proto::Tls]));
}

#[test]
fn bad_uris_say_what_is_wrong() {
    for (url, says) in [
        ("stun:example.org", "not a turn: or turns: URI"),
        ("turns:example.org?transport=udp", "DTLS"),
        ("turn:example.org?transport=sctp", "unknown query"),
        ("turn:example.org:http", "not a port"),
        ("turn:2001:db8::1", "brackets"),
        ("turn:", "no host"),
        ("turn:[::1", "unclosed"),
    ] {
        let e = parse_url(url).unwrap_err();
        assert!(e.contains(says), "{url}: {e}");
    }
}

#[test]
fn a_report_is_ok_only_when_every_stage_passed_and_prints_each() {
    let stage = |name: &str, ok| Stage {
        name: name.into(),
        ok,
        detail: "d".into(),
    };
    let r = Report {
        ok: false,
        stages: vec![
            stage("udp reachability", true),
            stage("udp allocate", false),
        ],
    };
    let text = r.text();
    assert!(text.contains("PASS udp reachability: d\n"), "{text}");
    assert!(text.contains("FAIL udp allocate: d\n"), "{text}");
    assert!(text.ends_with("not ok: 2 stages, 1 failed\n"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["stages"][1]["name"], "udp allocate");
}
