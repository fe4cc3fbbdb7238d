//! BPF `sk_lookup` steering (Linux ≥ 5.9, needs CAP_BPF and CAP_NET_ADMIN):
//! UDP datagrams to a port in a range are delivered to the socket stored
//! for that port in a SOCKMAP instead of the socket bound to the port. So
//! one socket per worker can receive for all of its relay ports in one
//! `recvmmsg`, while the per-port sockets only send (and hold the port).
//!
//! The program is a handful of hand-assembled instructions loaded with the
//! raw `bpf(2)` system call: no loader library, no compiler. It is attached
//! to the network namespace through a BPF link, which the kernel detaches
//! when the link's descriptor is closed (also when the process dies).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
#[cfg(test)]
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;

/// Offsets in `struct bpf_sk_lookup` (uapi/linux/bpf.h).
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
const CTX_LOCAL_IP6: i16 = 44;
const CTX_LOCAL_PORT: i16 = 60;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;

/// An attached steering program and its port map.
#[derive(Debug)]
pub struct Steering {
    map: OwnedFd,
    first_port: u16,
    ports: u32,
    /// Detaches the program when dropped.
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl Steering {
    /// Steer UDP datagrams to `address` (any local address when it is
    /// unspecified), ports `first..=last`, in this process's network
    /// namespace. Nothing is steered until [`Steering::set`] names a socket
    /// for a port.
    pub fn attach(address: IpAddr, first: u16, last: u16) -> io::Result<Self> {
        if last < first {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty range"));
        }
        let ports = u32::from(last - first) + 1;
        let map = map_create(ports)?;
        let prog = prog_load(&program(map.as_raw_fd(), address, first, last))?;
        let netns = std::fs::File::open("/proc/self/ns/net")?;
        let link = link_create(prog.as_raw_fd(), netns.as_raw_fd() as u32, BPF_SK_LOOKUP, 0)?;
        Ok(Self {
            map,
            first_port: first,
            ports,
            _link: link,
            _prog: prog,
        })
    }

    /// Deliver datagrams to `port` to `sock` (a bound, unconnected UDP
    /// socket of the address's family).
    pub fn set(&self, port: u16, sock: RawFd) -> io::Result<()> {
        let key = self.key(port)?;
        let value = u64::try_from(sock).map_err(|_| io::ErrorKind::InvalidInput)?;
        map_update(&self.map, &key, &value)
    }

    /// Stop steering `port`: datagrams go to whatever socket is bound to it.
    pub fn clear(&self, port: u16) -> io::Result<()> {
        map_delete(&self.map, &self.key(port)?)
    }

    fn key(&self, port: u16) -> io::Result<u32> {
        let key = u32::from(port.wrapping_sub(self.first_port));
        if port < self.first_port || key >= self.ports {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "port out of range",
            ));
        }
        Ok(key)
    }
}

/// `bpf(cmd, attr, sizeof attr)`; a descriptor result is returned as is.
pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded `union bpf_attr` prefix of the
    // stated size; pointers inside it point at data the caller keeps alive
    // for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(super) fn fd(r: libc::c_long) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(r).map_err(|_| io::Error::other("bad descriptor"))?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn map_create(entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    // map_type, key_size | value_size, max_entries (u32s, little-endian pairs).
    attr[0] = u64::from(BPF_MAP_TYPE_SOCKMAP) | (4u64 << 32);
    attr[1] = 8 | (u64::from(entries) << 32);
    fd(bpf(BPF_MAP_CREATE, &mut attr)?)
}

fn prog_load(insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_SK_LOOKUP) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // log_level 1, log_size
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    // kern_version, prog_flags: 0; prog_name at 48..64; prog_ifindex at 64,
    // expected_attach_type at 68.
    attr[6] = u64::from_le_bytes(*b"tern_rel");
    attr[8] = u64::from(BPF_SK_LOOKUP) << 32;
    bpf(BPF_PROG_LOAD, &mut attr).and_then(fd).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("{e}: {}", text.trim()))
    })
}

/// A BPF link of `prog` to `target` (a descriptor or an interface index,
/// as `attach_type` wants), with `flags`; the kernel detaches it when the
/// descriptor closes.
pub(super) fn link_create(
    prog: RawFd,
    target: u32,
    attach_type: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    attr[0] = u64::from(prog as u32) | (u64::from(target) << 32);
    attr[1] = u64::from(attach_type) | (u64::from(flags) << 32);
    fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// Set `key` to `value` in `map` (BPF_ANY).
pub(super) fn map_update<K, V>(map: &OwnedFd, key: &K, value: &V) -> io::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = (key as *const K) as u64;
    attr[2] = (value as *const V) as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Remove `key` from `map`; a key that is not there is no error.
pub(super) fn map_delete<K>(map: &OwnedFd, key: &K) -> io::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = (key as *const K) as u64;
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(drop),
    }
}

/// Look `key` up in `map`, into `value` (for a per-CPU map, one value per
/// possible CPU).
pub(super) fn map_lookup<K, V>(map: &OwnedFd, key: &K, value: &mut [V]) -> io::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = (key as *const K) as u64;
    attr[2] = value.as_mut_ptr() as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(drop)
}

/// The key after `key` in `map` (the first key for `None`), into `next`;
/// an error once there is none.
#[cfg(test)]
pub(super) fn map_next_key(map: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key.map_or(0, |k| k.as_ptr() as u64);
    attr[2] = next.as_mut_ptr() as u64;
    bpf(BPF_MAP_GET_NEXT_KEY, &mut attr).map(drop)
}

/// One `struct bpf_insn`.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf | (src & 0xf) << 4) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const STX_W: u8 = 0x63;
const MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV_K: u8 = 0xb7;
const ADD_K: u8 = 0x07;
const SUB_K: u8 = 0x17;
const JEQ_K: u8 = 0x15;
// 32-bit compares (BPF_JMP32): an immediate is not sign-extended against
// the zero-extended 32-bit loads.
const JNE_K: u8 = 0x56;
const JGT_K: u8 = 0x26;
const JLT_K: u8 = 0xa6;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// The program: for UDP to `address` (if specified) and a port in
/// `first..=last`, look the port up in `map` and assign its socket.
fn program(map: RawFd, address: IpAddr, first: u16, last: u16) -> Vec<u64> {
    // Jumps to `pass` are patched once its position is known.
    let mut p = Vec::new();
    let mut to_pass = Vec::new();
    let jump = |p: &mut Vec<u64>, to_pass: &mut Vec<usize>, code, dst, imm| {
        to_pass.push(p.len());
        p.push(insn(code, dst, 0, 0, imm));
    };
    p.push(insn(MOV_X, 6, 1, 0, 0));
    p.push(insn(LDX_W, 2, 6, CTX_PROTOCOL, 0));
    jump(&mut p, &mut to_pass, JNE_K, 2, libc::IPPROTO_UDP);
    p.push(insn(LDX_W, 2, 6, CTX_FAMILY, 0));
    match address {
        IpAddr::V4(a) => {
            jump(&mut p, &mut to_pass, JNE_K, 2, libc::AF_INET);
            if !a.is_unspecified() {
                p.push(insn(LDX_W, 2, 6, CTX_LOCAL_IP4, 0));
                // The context holds the address in network order; a 32-bit
                // load on this little-endian machine reads it swapped.
                let want = u32::from_ne_bytes(a.octets()) as i32;
                jump(&mut p, &mut to_pass, JNE_K, 2, want);
            }
        }
        IpAddr::V6(a) => {
            jump(&mut p, &mut to_pass, JNE_K, 2, libc::AF_INET6);
            if !a.is_unspecified() {
                for (i, w) in a.octets().chunks_exact(4).enumerate() {
                    let want = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as i32;
                    p.push(insn(LDX_W, 2, 6, CTX_LOCAL_IP6 + 4 * i as i16, 0));
                    jump(&mut p, &mut to_pass, JNE_K, 2, want);
                }
            }
        }
    }
    p.push(insn(LDX_W, 2, 6, CTX_LOCAL_PORT, 0));
    jump(&mut p, &mut to_pass, JLT_K, 2, i32::from(first));
    jump(&mut p, &mut to_pass, JGT_K, 2, i32::from(last));
    p.push(insn(SUB_K, 2, 0, 0, i32::from(first)));
    p.push(insn(STX_W, 10, 2, -4, 0));
    p.push(insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map));
    p.push(insn(0, 0, 0, 0, 0));
    p.push(insn(MOV_X, 2, 10, 0, 0));
    p.push(insn(ADD_K, 2, 0, 0, -4));
    p.push(insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM));
    jump(&mut p, &mut to_pass, JEQ_K, 0, 0);
    p.push(insn(MOV_X, 7, 0, 0, 0));
    p.push(insn(MOV_X, 1, 6, 0, 0));
    p.push(insn(MOV_X, 2, 7, 0, 0));
    p.push(insn(MOV_K, 3, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, HELPER_SK_ASSIGN));
    p.push(insn(MOV_X, 1, 7, 0, 0));
    p.push(insn(CALL, 0, 0, 0, HELPER_SK_RELEASE));
    let pass = p.len();
    p.push(insn(MOV_K, 0, 0, 0, 1)); // SK_PASS
    p.push(insn(EXIT, 0, 0, 0, 0));
    for at in to_pass {
        let off = (pass - at - 1) as u64;
        p[at] |= (off & 0xffff) << 16;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};

    fn bound(addr: &str) -> UdpSocket {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr.parse().unwrap()),
            socket2::Type::DGRAM,
            None,
        )
        .unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        if addr.is_ipv6() {
            s.set_only_v6(true).unwrap();
        }
        s.bind(&addr.into()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.into()
    }

    fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 16];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        (buf[..n].to_vec(), from)
    }

    #[test]
    #[ignore = "needs CAP_BPF and CAP_NET_ADMIN (as root, scripts/test runs it)"]
    fn datagrams_to_a_steered_port_and_address_reach_the_chosen_socket() {
        // (steered address, another local address on the same port,
        // wildcard the port's own socket binds, receiver)
        for (ip, other, any, receiver) in [
            ("127.0.0.1", "127.0.0.2", "0.0.0.0", "127.0.0.1:0"),
            ("::1", "127.0.0.1", "[::]", "[::1]:0"),
        ] {
            let holder = bound(&format!("{any}:0"));
            let port = holder.local_addr().unwrap().port();
            let steering = match Steering::attach(ip.parse().unwrap(), port, port) {
                Ok(s) => s,
                Err(e) => panic!("attach: {e}"),
            };
            let receiver = bound(receiver);
            steering.set(port, receiver.as_raw_fd()).unwrap();
            let to: SocketAddr = SocketAddr::new(ip.parse().unwrap(), port);
            let sender = bound(&SocketAddr::new(to.ip(), 0).to_string());
            sender.send_to(b"one", to).unwrap();
            assert_eq!(
                recv(&receiver),
                (b"one".to_vec(), sender.local_addr().unwrap())
            );

            // Another address, or family, on the same port is not steered
            // (for IPv6, an IPv4 datagram to a v4 wildcard on that port).
            let v4_holder = (other == "127.0.0.1").then(|| bound(&format!("0.0.0.0:{port}")));
            let other_to = SocketAddr::new(other.parse().unwrap(), port);
            let other_sender = bound(&SocketAddr::new(other_to.ip(), 0).to_string());
            other_sender.send_to(b"two", other_to).unwrap();
            let got = recv(v4_holder.as_ref().unwrap_or(&holder));
            assert_eq!(got.0, b"two");

            // Cleared: back to the port's own socket.
            steering.clear(port).unwrap();
            sender.send_to(b"three", to).unwrap();
            assert_eq!(recv(&holder).0, b"three");
            receiver.set_nonblocking(true).unwrap();
            assert!(receiver.recv_from(&mut [0u8; 16]).is_err());
        }
    }

    #[test]
    #[ignore = "needs CAP_BPF and CAP_NET_ADMIN (as root, scripts/test runs it)"]
    fn ports_outside_the_range_are_refused() {
        let s = Steering::attach("127.0.0.1".parse().unwrap(), 40000, 40001).unwrap();
        assert!(s.set(39999, 0).is_err());
        assert!(s.clear(40002).is_err());
        assert!(Steering::attach("127.0.0.1".parse().unwrap(), 2, 1).is_err());
    }
}
