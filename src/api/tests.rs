#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;

fn settings(origins: &[&str], per_minute: u32) -> ApiSettings {
    ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        keys: vec!["k".repeat(32)],
        allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        max_ttl: Duration::from_secs(7200),
        default_ttl: Duration::from_secs(3600),
        requests_per_minute: per_minute,
    }
}

fn state(origins: &[&str], per_minute: u32) -> State {
    let udp = ["0.0.0.0:3478".parse().unwrap()];
    let tls = ["0.0.0.0:5349".parse().unwrap()];
    State::new(
        &settings(origins, per_minute),
        "s".into(),
        "turn.example.org".into(),
        [&udp, &[], &tls],
    )
}

#[test]
fn origins_match_exactly_or_by_wildcard() {
    let s = state(&["https://app.example.com"], 0);
    assert!(s.allows_origin(b"https://app.example.com"));
    assert!(s.allows_origin(b"HTTPS://APP.EXAMPLE.COM"));
    assert!(!s.allows_origin(b"https://app.example.com.evil.net"));
    assert!(!s.allows_origin(b"http://app.example.com"));
    assert!(!state(&[], 0).allows_origin(b"https://app.example.com"));
    assert!(state(&["*"], 0).allows_origin(b"https://anything.net"));
}

#[test]
fn ttl_defaults_and_is_capped_and_users_are_checked() {
    let s = state(&[], 0);
    assert_eq!(checked(&s, None, None), Ok(("", 3600)));
    assert_eq!(checked(&s, Some("alice"), Some(60)), Ok(("alice", 60)));
    assert_eq!(
        checked(&s, Some("alice"), Some(86_400)),
        Ok(("alice", 7200))
    );
    assert!(checked(&s, None, Some(0)).is_err());
    assert!(checked(&s, Some("a\nb"), None).is_err());
    assert!(checked(&s, Some(&"x".repeat(129)), None).is_err());
    assert_eq!(
        s.uris,
        vec![
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349?transport=tcp"
        ]
    );
}

#[test]
fn each_key_has_its_own_budget_refilled_over_time() {
    let api = Api::new(state(&[], 60), Arc::new(Board::new(1)));
    let t0 = Instant::now();
    // 60 a minute bursts to 6, then one a second.
    for _ in 0..6 {
        assert!(api.spend(b"a", 60, t0));
    }
    assert!(!api.spend(b"a", 60, t0));
    assert!(api.spend(b"b", 60, t0), "another key is not charged");
    assert!(!api.spend(b"a", 60, t0 + Duration::from_millis(500)));
    assert!(api.spend(b"a", 60, t0 + Duration::from_millis(1600)));
    assert!(api.spend(b"a", 0, t0), "0 is unlimited");
    // A reload drops the buckets of keys no longer configured.
    api.set(state(&[], 60));
    assert!(api.buckets.lock().unwrap().is_empty());
}
