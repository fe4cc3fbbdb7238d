//! A test bench for the XDP fast path (`tests/xdp.rs`): two network
//! namespaces joined by a veth pair, a real tern process in the first,
//! clients and peers in the second, and the tools to look at what crossed
//! the veth. Everything it makes is removed on drop.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{self, wait_until};
use tern::testing::internet_checksum;

pub const TERN: &str = env!("CARGO_BIN_EXE_tern");
pub const ROOT: &str = "needs root: network namespaces, veth, XDP (as root, scripts/test runs it)";
pub const SERVER4: &str = "10.99.0.1";
pub const SERVER6: &str = "fd99::1";

pub static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two network namespaces joined by a veth pair, and a tern in the
/// first; all removed on drop.
pub struct Bench {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub dir: PathBuf,
    pub tern: Option<Child>,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

pub fn ethtool_tx_off(ns: &str, dev: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ethtool: {out:?}");
}

impl Bench {
    pub fn new() -> Self {
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
    pub fn start(&mut self, xdp: &str, extra: &str) {
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

    pub fn spawn(&mut self, cmd: &mut Command) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tern.log")).unwrap_or_default()
    }

    /// Rewrite the config and reload it (SIGHUP).
    pub fn reload(&self, xdp: &str, extra: &str) {
        std::fs::write(self.dir.join("tern.toml"), config(xdp, extra)).unwrap();
        let pid = self.tern.as_ref().unwrap().id() as i32;
        // SAFETY: kill has no memory preconditions; the pid is our child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    /// tern's /metrics, read in the server namespace.
    pub fn metrics(&self) -> String {
        in_ns(&self.server_ns, || {
            std::panic::catch_unwind(|| {
                common::http_get("127.0.0.1:9641".parse().unwrap(), "/metrics").1
            })
            .unwrap_or_default()
        })
    }

    /// Whether an XDP program is attached to the server's veth.
    pub fn xdp_attached(&self) -> bool {
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

pub fn config(xdp: &str, extra: &str) -> String {
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

pub const ALLOW: &str = "[peers]\nallow = [\"10.99.0.0/24\", \"fd99::/64\"]\n";

/// Run `f` on a thread inside network namespace `ns` (sockets it makes
/// stay in that namespace, whichever thread uses them later).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
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

/// Attach a program that passes everything (two instructions, loaded with
/// `bpf(2)`) to `dev` in native mode; detached when the link is dropped.
pub fn xdp_pass_on(dev: &str) -> OwnedFd {
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

/// An AF_PACKET socket on the client's veth: every IPv4 and IPv6 UDP
/// frame tern's side sent, checked for valid checksums.
pub struct Capture(OwnedFd);

impl Capture {
    pub fn open(dev: &str) -> Self {
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
    pub fn check_all(&self) -> usize {
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
                    assert_eq!(internet_checksum(&[&ip[..20]]), 0, "IPv4 header checksum");
                    let len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                    let udp = &ip[20..len];
                    let pseudo =
                        [&ip[12..20], &[0, 17], &(udp.len() as u16).to_be_bytes()].concat();
                    internet_checksum(&[&pseudo, udp]) == 0
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
                    internet_checksum(&[&pseudo, udp]) == 0
                }
                _ => continue,
            };
            assert!(ok, "bad UDP checksum in a frame from tern: {f:02x?}");
            checked += 1;
        }
    }
}
