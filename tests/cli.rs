//! The `tern` binary as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const TERN: &str = env!("CARGO_BIN_EXE_tern");

/// A config file holding `text` in a directory of its own, and the
/// directory (removed when dropped: keep it for as long as the file).
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("tern-cli-{name}-"))
        .tempdir()
        .unwrap();
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_config_accepts_the_example_and_reports_file_line_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml");
    let out = Command::new(TERN)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let (_dir, bad) = temp_file(
        "bad",
        "[auth]\nsecrets = [\"x\"]\n\n[relay]\nmin-port = \"many\"\n",
    );
    let out = Command::new(TERN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let want = format!("{}:5: relay.min-port: ", bad.display());
    assert!(err.starts_with(&want), "{err}");

    // Serving with a bad file fails the same way, with a non-zero exit.
    let out = Command::new(TERN)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
#[ignore = "needs root and util-linux's setpriv (as root, scripts/test runs it)"]
fn steering_on_without_the_capabilities_refuses_to_start() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "needs root to drop capabilities");
    let (_dir, cfg) = temp_file(
        "steer",
        "[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\n[relay]\naddress-ipv4 = \"127.0.0.1\"\naddress-ipv6 = \"none\"\nsteering = \"on\"\n[auth]\nsecrets = [\"x\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-bpf,-net_admin,-sys_admin",
            "--inh-caps=-all",
            "--",
            TERN,
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay.steering = \"on\""), "{err}");
    assert!(err.contains("CAP_BPF"), "{err}");
}

#[test]
fn credentials_json_has_the_rest_api_shape_and_a_valid_password() {
    let (_dir, cfg) = temp_file(
        "cred",
        "host = \"turn.example.org\"\n[listen]\nudp = [\"0.0.0.0:3478\"]\ntcp = [\"0.0.0.0:443\"]\n[auth]\nsecrets = [\"s1\", \"s0\"]\n",
    );
    let out = Command::new(TERN)
        .args([
            "credentials",
            "--user",
            "alice",
            "--ttl",
            "3600",
            "--json",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let username = v["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    let now = tern::cli::unix_now();
    assert!((now + 3590..=now + 3610).contains(&expiry));
    assert_eq!(v["ttl"], 3600);
    assert_eq!(
        v["password"].as_str().unwrap(),
        tern::auth::rest_password(b"s1", username)
    );
    assert_eq!(
        v["uris"],
        serde_json::json!([
            "turn:turn.example.org:3478?transport=udp",
            "turn:turn.example.org:443?transport=tcp"
        ])
    );
}

#[test]
fn serves_until_sigterm_then_exits_zero() {
    let (_dir, cfg) = temp_file(
        "serve",
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[relay]\naddress-ipv4 = \"127.0.0.1\"\naddress-ipv6 = \"none\"\n[auth]\nsecrets = [\"x\"]\n",
    );
    let mut child = Command::new(TERN)
        .args(["--log-format", "json", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("tern serving"))
        .expect("a start-up line");
    let log: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let udp = log["fields"]["udp"].as_str().unwrap();
    let addr: SocketAddr = udp.trim_matches(|c| c == '[' || c == ']').parse().unwrap();

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    sock.send_to(&req, addr).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0x01, 0x01], "binding success");
    assert!(n > 20);

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn credentials_json_lists_turns_when_tls_is_configured() {
    let pki = tern::testing::Pki::new().unwrap();
    let leaf = pki.issue(30, "ec").unwrap();
    // localhost: the name the test certificate holds.
    let (_dir, cfg) = temp_file(
        "cred-tls",
        &format!(
            "host = \"localhost\"\n[listen]\nudp = [\"0.0.0.0:3478\"]\ntcp = [\"0.0.0.0:443\"]\ntls = [\"0.0.0.0:443\", \"0.0.0.0:5349\"]\n[tls]\ncertificate-file = {:?}\nprivate-key-file = {:?}\n[auth]\nsecrets = [\"s1\"]\n",
            leaf.cert.display().to_string(),
            leaf.key.display().to_string()
        ),
    );
    let out = Command::new(TERN)
        .args(["credentials", "--user", "alice", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["uris"],
        serde_json::json!([
            "turn:localhost:3478?transport=udp",
            "turn:localhost:443?transport=tcp",
            "turns:localhost:443?transport=tcp",
            "turns:localhost:5349?transport=tcp"
        ])
    );
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    // As under systemd or with output to a file: escape codes would be
    // stored as text.
    let (_dir, cfg) = temp_file(
        "text-logs",
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[relay]\naddress-ipv4 = \"127.0.0.1\"\naddress-ipv6 = \"none\"\n[auth]\nsecrets = [\"x\"]\n",
    );
    let mut child = Command::new(TERN)
        .args(["--log-format", "text", "--config"])
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .map(Result::unwrap)
        .find(|l| l.contains("tern serving"))
        .expect("a start-up line");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap();
    assert!(serving.contains(" INFO "), "{serving}");
    assert!(!serving.contains('\x1b'), "{serving:?}");
}

/// A tern child process whose stdout (JSON logs) is read line by line.
struct Child {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Child {
    fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(TERN)
            .args(["--log-format", "json", "--log-level", "info", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Wait for a log line containing `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

fn serve_config(extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listen]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[relay]\naddress-ipv4 = \"127.0.0.1\"\naddress-ipv6 = \"none\"\n[auth]\nsecrets = [\"x\"]\n{extra}"
    )
}

#[test]
fn sd_notify_reports_ready_and_stopping_on_a_real_socket() {
    let dir = std::env::temp_dir().join(format!("tern-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (_dir, cfg) = temp_file("notify", &serve_config(""));
    // systemd asks for a watchdog ping every 0.2 s (WATCHDOG_USEC / 2).
    let mut child = Child::spawn(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    for _ in 0..3 {
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
    child.signal(libc::SIGTERM);
    // Pings may still be in flight; STOPPING=1 must follow.
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if &buf[..n] != b"WATCHDOG=1" {
            assert_eq!(&buf[..n], b"STOPPING=1");
            break;
        }
    }
    assert_eq!(child.child.wait().unwrap().code(), Some(0));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_config() {
    let (_dir, cfg) = temp_file("hup", &serve_config(""));
    let mut child = Child::spawn(&cfg, &[]);
    child.wait_for("tern serving");
    std::fs::write(&cfg, "[listen]\nudpp = []\n").unwrap();
    child.signal(libc::SIGHUP);
    let line = child.wait_for("reload failed");
    assert!(line.contains("udpp"), "{line}");
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    std::fs::write(&cfg, serve_config("[limits]\nmax-allocations = 7\n")).unwrap();
    child.signal(libc::SIGHUP);
    child.wait_for("configuration reloaded");
    child.signal(libc::SIGINT);
    assert_eq!(child.child.wait().unwrap().code(), Some(0));
}

/// A port that was free on `host` a moment ago (UDP, or TCP with `tcp`).
fn free_port(host: &str, tcp: bool) -> u16 {
    let addr = format!("{host}:0");
    if tcp {
        std::net::TcpListener::bind(&addr)
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        UdpSocket::bind(&addr).unwrap().local_addr().unwrap().port()
    }
}

/// Wait for `child` to exit within `limit`; kill it and fail if it does
/// not.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("tern did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_tern_on_a_busy_listener_address_exits_naming_it() {
    for (host, tcp) in [
        ("127.0.0.1", false),
        ("[::1]", false),
        ("127.0.0.1", true),
        ("[::1]", true),
    ] {
        let listen = format!("{host}:{}", free_port(host, tcp));
        let (udp, tcp_list) = if tcp {
            (String::new(), format!("\"{listen}\""))
        } else {
            (format!("\"{listen}\""), String::new())
        };
        let (_dir, cfg) = temp_file(
            &format!("busy-{}-{tcp}", host.len()),
            &format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[listen]\nudp = [{udp}]\ntcp = [{tcp_list}]\n[relay]\naddress-ipv4 = \"127.0.0.1\"\naddress-ipv6 = \"::1\"\n[auth]\nsecrets = [\"x\"]\n"
            ),
        );
        let mut first = Child::spawn(&cfg, &[]);
        first.wait_for("tern serving");
        let mut second = Command::new(TERN)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exit_within(&mut second, Duration::from_secs(10));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{listen}: {err}");
        assert!(err.contains(&listen), "{listen}: {err}");
        assert!(err.contains("already in use"), "{listen}: {err}");
        first.signal(libc::SIGINT);
        assert_eq!(first.child.wait().unwrap().code(), Some(0));
    }
}

/// Whatever the open-file limit, tern either serves or exits non-zero
/// with the reason; it never hangs. Some limit leaves room for the
/// listeners but not for a worker's event loop: the worker fails after
/// start-up began, and tern must notice, stop and say why.
#[test]
fn a_worker_that_fails_at_start_makes_tern_exit_non_zero_with_the_reason() {
    use std::os::unix::process::CommandExt;
    let (_dir, cfg) = temp_file("nofile", &format!("workers = 2\n{}", serve_config("")));
    let mut worker_failed = false;
    let mut served = false;
    for limit in 8..64u64 {
        let mut cmd = Command::new(TERN);
        cmd.args(["--log-format", "json", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe and touches nothing of
        // the parent's state.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        // Serving: stop it. Otherwise it must exit by itself.
        let serving = lines.iter().find(|l| l.contains("tern serving"));
        if serving.is_some() {
            served = true;
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        let status = exit_within(&mut child, Duration::from_secs(10));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        if serving.is_some() {
            assert_eq!(status.code(), Some(0), "limit {limit}: {err}");
            break;
        }
        assert_eq!(status.code(), Some(1), "limit {limit}: {err}");
        assert!(err.contains("tern: "), "limit {limit}: {err}");
        worker_failed |= err.contains("worker thread failed: worker ");
    }
    assert!(served, "no open-file limit below 64 let tern serve");
    assert!(worker_failed, "no limit made a worker fail at start");
}
