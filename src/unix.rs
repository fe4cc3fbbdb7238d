//! Wall-clock time as tern keeps it outside the core: Unix seconds
//! (REST credential expiries, nonces, blocks, records), and RFC 3339 UTC
//! for what operators read (the admin API, allocation records).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, by this machine's clock.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-12-02T17:20:18Z`.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_to_the_second() {
        assert_eq!(super::rfc3339(1_796_233_607), "2026-12-02T17:46:47Z");
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
