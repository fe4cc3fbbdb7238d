//! tern: a STUN/TURN relay server.
//!
//! # Layout
//! - [`wire`]: zero-copy reading of STUN messages and ChannelData framing.
//! - [`core`]: the sans-IO protocol core. `Core::on_client` takes a client's
//!   bytes, `Core::on_peer` a peer's, `Core::tick` expires state; all output
//!   goes through the `core::Io` trait. Methods live in `core/methods.rs`,
//!   the per-packet path in `core/relay.rs`.
//! - [`auth`]: long-term credentials, REST API secrets, stateless nonces.
//! - [`policy`]: which peers may be relayed to.

pub mod auth;
pub mod config;
pub mod core;
pub mod policy;
pub mod wire;
