//! systemd's notification protocol (sd_notify): `READY=1` once every
//! listener serves, `WATCHDOG=1` while the worker loops turn, `STOPPING=1`
//! when shutting down. A no-op when `NOTIFY_SOCKET` is unset.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send one notification to `$NOTIFY_SOCKET`, if set. Errors are ignored:
/// notification is advisory.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let _ = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract socket namespace (Linux).
        send_abstract(&sock, name, state)
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<usize> {
    Ok(0)
}

/// The watchdog ping interval systemd asked for (half of `WATCHDOG_USEC`),
/// if it asked this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
