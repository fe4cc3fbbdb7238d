//! `[relay] xdp` and `xdp-interfaces`: the XDP fast path (see `io::xdp`).

use serde::Deserialize;

/// Whether and how the XDP fast path is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Xdp {
    /// Every datagram goes through tern's sockets (the default: an
    /// operator opts in, as the program runs in the kernel).
    #[default]
    Off,
    /// Native if the driver supports it, else generic; if neither can be
    /// attached, log once and relay through the sockets.
    Auto,
    /// In the driver, or refuse to start.
    Native,
    /// At the start of the kernel's receive path, or refuse to start.
    Generic,
}

/// The fast path's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XdpSettings {
    /// The mode.
    pub mode: Xdp,
    /// The interfaces to attach to; empty: those that carry the relay
    /// addresses.
    pub interfaces: Vec<String>,
}
