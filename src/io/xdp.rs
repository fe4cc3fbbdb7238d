//! The XDP fast path (`[relay] xdp`): a BPF program on the interfaces
//! that carry the relay addresses rewrites ChannelData from UDP clients
//! into datagrams from the relay to the peer, and peers' datagrams into
//! ChannelData to the client, in the driver (native) or at the start of
//! the stack (generic), without reaching tern's sockets.
//!
//! The program is `bpf/relay_xdp.c`, compiled by `scripts/build-bpf` into
//! `relay_xdp.o` beside this file and committed, so building tern needs no
//! clang (a test rebuilds it and compares when clang-16 is present). It is
//! loaded with `aya`, which creates its maps and fixes up their
//! references; tern then keeps only descriptors: the program, its maps and
//! one BPF link per interface, which the kernel detaches when the
//! descriptor closes, also when the process dies however it dies.
//!
//! What is offloaded is the core's decision (`core::offload`): each worker
//! installs and withdraws its own allocations' entries (`xdp/table.rs`)
//! with `bpf(2)` map calls on the control path (ChannelBind,
//! CreatePermission, Refresh, expiry, reload), never per packet. Each
//! offloaded allocation has a slot in an array shared through `mmap`: its
//! counters, which the worker adds to the allocation on its tick, and its
//! bandwidth cells (`ratelimit::SharedCell`), spent by both paths. The
//! counters are atomic adds in that shared array rather than per-CPU map
//! values: the worker then reads them with plain loads, no system call per
//! allocation per tick, and measured, the program's time per run was the
//! same with plain (racy) adds (docs/performance.md), so the atomics cost
//! nothing visible.

mod table;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::sklookup::map_lookup;
use crate::ratelimit::SharedCell;

pub use table::Offloads;

/// The compiled program (see the module docs).
static OBJECT: &[u8] = include_bytes!("xdp/relay_xdp.o");

/// Slots: offloaded allocations at once, over all workers (`MAX_SLOTS`).
pub const MAX_SLOTS: u32 = 65_536;
/// `struct slot` in u64s: the counters (0-3), the bandwidth cells (4, 5),
/// the limit (6), the MTU towards clients (7), the client's hop (8, 9),
/// the address it sends to (10, 11).
pub const SLOT_WORDS: usize = 16;
/// The program's counters (`STAT_*` in the C source).
pub const PROGRAM_COUNTERS: usize = 6;

const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// How the program is attached (`[relay] xdp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the driver (XDP_FLAGS_DRV_MODE): the fastest, where the driver
    /// supports it.
    Native,
    /// At the start of the kernel's receive path (XDP_FLAGS_SKB_MODE):
    /// every driver.
    Generic,
}

impl Mode {
    /// The label of `tern_xdp{mode}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    fn flags(self) -> u32 {
        match self {
            Self::Native => XDP_FLAGS_DRV_MODE,
            Self::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// Why the fast path could not be attached.
#[derive(Debug)]
pub struct AttachError(String);

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AttachError {}

/// The attached program and its maps; shared by the workers.
pub struct FastPath {
    mode: Mode,
    interfaces: Vec<String>,
    from_client: OwnedFd,
    from_peer: OwnedFd,
    stats: OwnedFd,
    /// Possible CPUs: the length of a per-CPU map's value.
    cpus: usize,
    slots: Slots,
    /// The smallest MTU of the interfaces: ChannelData towards a client
    /// that would exceed it is left to userspace.
    mtu: u64,
    /// An instant and CLOCK_MONOTONIC at or just before it: the
    /// program's clock ([`table::clock_pair`]).
    clock: (std::time::Instant, u64),
    /// Detach the program when dropped.
    links: Vec<OwnedFd>,
    prog: OwnedFd,
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("mode", &self.mode)
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Load the program and attach it to `interfaces` in `modes[0]`, or
    /// if that fails on the first interface, in the next mode.
    pub fn attach(interfaces: &[String], modes: &[Mode]) -> Result<Self, AttachError> {
        let mut path = Self::load()?;
        let (mode, links) = attach_all(&path.prog, interfaces, modes)?;
        path.mode = mode;
        path.links = links;
        path.interfaces = interfaces.to_vec();
        if let Some(mtu) = interfaces.iter().filter_map(|i| mtu_of(i)).min() {
            path.mtu = mtu;
        }
        Ok(path)
    }

    /// Load the program and its maps, attached nowhere yet.
    fn load() -> Result<Self, AttachError> {
        let err = |what: &str, e: &dyn fmt::Display| AttachError(format!("{what}: {e}"));
        // aya parses the ELF in place: give it an 8-byte aligned copy.
        let mut aligned = vec![0u64; OBJECT.len().div_ceil(8)];
        let bytes = &mut bytemuck_bytes(&mut aligned)[..OBJECT.len()];
        bytes.copy_from_slice(OBJECT);
        let mut ebpf = aya::Ebpf::load(bytes).map_err(|e| err("loading the XDP object", &e))?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut("tern_relay")
            .ok_or_else(|| AttachError("the XDP object has no tern_relay program".into()))?
            .try_into()
            .map_err(|e| err("the XDP object", &e))?;
        prog.load()
            .map_err(|e| err("the kernel refused the XDP program", &e))?;
        let prog = dup(prog.fd().map_err(|e| err("XDP program", &e))?.as_fd())?;
        let map = |name: &str| -> Result<OwnedFd, AttachError> {
            let m = ebpf
                .map(name)
                .ok_or_else(|| AttachError(format!("the XDP object has no {name} map")))?;
            let (aya::maps::Map::HashMap(data)
            | aya::maps::Map::Array(data)
            | aya::maps::Map::PerCpuArray(data)) = m
            else {
                return Err(AttachError(format!("{name}: unexpected map type")));
            };
            dup(data.fd().as_fd())
        };
        let (from_client, from_peer, slots, stats) = (
            map("FROM_CLIENT")?,
            map("FROM_PEER")?,
            map("SLOTS")?,
            map("STATS")?,
        );
        drop(ebpf);
        let slots = Slots::map(slots).map_err(|e| err("mapping the XDP slots", &e))?;
        Ok(Self {
            clock: table::clock_pair(),
            mtu: 1500,
            mode: Mode::Generic,
            interfaces: Vec::new(),
            from_client,
            from_peer,
            stats,
            cpus: possible_cpus(),
            slots,
            links: Vec::new(),
            prog,
        })
    }

    /// The mode it is attached in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The interfaces it is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// The program's own counters, summed over CPUs: relayed to peers,
    /// relayed to clients, and left to userspace with an entry because it
    /// had expired, the next hop was not learned yet, the bandwidth limit
    /// was reached, or the datagram would exceed the MTU.
    pub fn stats(&self) -> [u64; PROGRAM_COUNTERS] {
        let mut out = [0u64; PROGRAM_COUNTERS];
        let mut values = vec![0u64; self.cpus];
        for (i, o) in out.iter_mut().enumerate() {
            let key = i as u32;
            if map_lookup(&self.stats, &key, &mut values).is_ok() {
                *o = values.iter().sum();
            }
        }
        out
    }

    /// Slot `index`'s bandwidth cells (towards the peer, towards the
    /// client), for the core's buckets to spend from.
    pub(crate) fn cells(self: &Arc<Self>, index: u32) -> Option<[SharedCell; 2]> {
        let s = self.slot(index)?;
        let owner = || Arc::clone(self) as Arc<dyn Send + Sync>;
        let (base, base_ns) = self.clock;
        // SAFETY: the slot lives in the mapping `self` owns, which the
        // cells keep alive; both sides access it only atomically.
        Some(unsafe {
            [
                SharedCell::new(&s[4], owner(), base, base_ns),
                SharedCell::new(&s[5], owner(), base, base_ns),
            ]
        })
    }

    pub(crate) fn slot(&self, index: u32) -> Option<&[AtomicU64; SLOT_WORDS]> {
        self.slots.get(index)
    }
}

/// Attach `prog` to every interface, in the first of `modes` the first
/// interface takes.
fn attach_all(
    prog: &OwnedFd,
    interfaces: &[String],
    modes: &[Mode],
) -> Result<(Mode, Vec<OwnedFd>), AttachError> {
    let mut last = None;
    for &mode in modes {
        let mut links = Vec::new();
        let mut failed = None;
        for name in interfaces {
            match link(prog, name, mode) {
                Ok(l) => links.push(l),
                Err(e) => {
                    failed = Some(AttachError(format!(
                        "attaching XDP ({}) to {name}: {e}",
                        mode.label()
                    )));
                    break;
                }
            }
        }
        match failed {
            None => return Ok((mode, links)),
            Some(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| AttachError("no XDP mode to try".into())))
}

/// The MTU of interface `name`.
fn mtu_of(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A BPF link attaching `prog` to interface `name` (BPF_LINK_CREATE).
fn link(prog: &OwnedFd, name: &str, mode: Mode) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such interface"));
    }
    super::sklookup::link_create(prog.as_raw_fd(), index, BPF_XDP, mode.flags())
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, AttachError> {
    fd.try_clone_to_owned()
        .map_err(|e| AttachError(format!("duplicating a BPF descriptor: {e}")))
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    let len = size_of_val(words);
    // SAFETY: any bytes are valid u8s; the slice covers exactly the words'
    // memory and borrows them mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

/// The number of possible CPUs (the length of a per-CPU map's value).
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit(['-', ',']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        })
        .unwrap_or(1)
}

/// The SLOTS array, mapped into this process: `MAX_SLOTS` ×
/// [`SLOT_WORDS`] u64s (`struct slot` in the C source), read and written
/// with atomics by both sides.
struct Slots {
    ptr: NonNull<AtomicU64>,
    len: usize,
    _map: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it
// lives until `Slots` is dropped.
unsafe impl Send for Slots {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for Slots {}

impl Slots {
    fn map(map: OwnedFd) -> io::Result<Self> {
        let len = MAX_SLOTS as usize * SLOT_WORDS;
        let bytes = len * 8;
        // SAFETY: a fresh shared mapping of the map's descriptor, of the
        // map's exact size; the kernel checks both.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or(io::ErrorKind::Other)?;
        Ok(Self {
            ptr,
            len,
            _map: map,
        })
    }

    fn get(&self, index: u32) -> Option<&[AtomicU64; SLOT_WORDS]> {
        let start = index as usize * SLOT_WORDS;
        if start + SLOT_WORDS > self.len {
            return None;
        }
        // SAFETY: in bounds (checked), 8-byte aligned (page-aligned base,
        // 128-byte slots), and only ever accessed atomically.
        Some(unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(start)
                .cast::<[AtomicU64; SLOT_WORDS]>()
        })
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Slots::map`, of this size, not used
        // after this.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len * 8);
        }
    }
}

/// The interfaces that carry `addresses` (the relay addresses), for
/// `[relay] xdp-interfaces` left unset.
pub fn interfaces_of(addresses: &[IpAddr]) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list freed below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null sockaddr from getifaddrs, read by its family.
        let ip = unsafe { sockaddr_ip(ifa.ifa_addr) };
        // SAFETY: a NUL-terminated name from getifaddrs.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if ip.is_some_and(|ip| addresses.contains(&ip)) && !out.contains(&name) {
            out.push(name);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// The IP of an AF_INET or AF_INET6 sockaddr.
///
/// # Safety
/// `sa` points at a valid sockaddr of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller's promise; reads by the stated family only.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}
