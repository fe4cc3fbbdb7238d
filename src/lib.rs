//! tern: a STUN/TURN relay server (RFC 8489, RFC 8656, RFC 6156).
//!
//! # Layout
//! Where a packet goes, edge to core:
//! - [`server`]: binds listeners, starts one worker thread per core, stops on
//!   the shutdown future (`run(config, shutdown)`).
//! - [`io`]: a worker's event loop: UDP listener sockets (SO_REUSEPORT), TCP
//!   connections with RFC 8656 framing (`io/tcp.rs`), one relay socket per
//!   allocation from the shared port allocator (`io/ports.rs`).
//! - [`core`]: the sans-IO protocol core. `Core::on_client` takes a client's
//!   bytes, `Core::on_peer` a peer's, `Core::tick` expires state; all output
//!   goes through the `core::Io` trait. TURN methods are in
//!   `core/methods.rs`, the per-packet path in `core/relay.rs`, allocation
//!   state in `core/alloc.rs`, answers in `core/response.rs`.
//! - [`wire`]: zero-copy reading of STUN messages and ChannelData framing.
//! - [`auth`]: long-term credentials, REST API secrets, stateless nonces.
//! - [`policy`]: which peers may be relayed to; [`ratelimit`]: per-source
//!   and per-allocation limits in bounded memory.
//! - [`config`], [`cli`], [`credentials`], [`shutdown`]: the operator's edge;
//!   [`admin`] serves [`metrics`] and health over HTTP; [`notify`] speaks
//!   systemd's sd_notify.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod core;
pub mod credentials;
pub mod io;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod shutdown;
pub mod wire;
