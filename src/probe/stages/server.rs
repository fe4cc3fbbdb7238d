//! The server's side of a refusal, from its admin listener's `/metrics`
//! (no token needed): which `tern_auth_failures_total` reason grew.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const METRIC: &str = "tern_auth_failures_total{reason=\"";
/// Workers publish their counters once a second.
const WAIT: Duration = Duration::from_millis(3500);

/// Auth failures by reason, now.
pub(super) fn auth_failures(admin: SocketAddr) -> Option<HashMap<String, f64>> {
    let (status, body) =
        crate::ctl::request(admin, hyper::Method::GET, "/metrics", None, String::new()).ok()?;
    if !status.is_success() {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let counts = text
        .lines()
        .filter_map(|l| l.strip_prefix(METRIC))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    Some(counts)
}

/// The reason that grew since `before` (waiting for the next publish).
pub(super) fn grown_reason(admin: SocketAddr, before: &HashMap<String, f64>) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = auth_failures(admin)?;
        let grown = now
            .iter()
            .filter(|(r, _)| r.as_str() != "challenge")
            .map(|(r, n)| (r, n - before.get(r).unwrap_or(&0.0)))
            .filter(|(_, d)| *d > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(r, _)| r.clone());
        if grown.is_some() {
            return grown;
        }
    }
    None
}
