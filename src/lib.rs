//! tern: a STUN/TURN relay server (RFC 8489, RFC 8656, RFC 6156).
//!
//! # Layout
//! Modules in layers; each uses only the layers below it
//! (`tests/layout.rs` checks it):
//!
//! ```text
//! cli                                   the binary's commands
//! server · probe                        start-up, reload, drain, stop; diagnosis
//! api                                   the credential endpoint for apps
//! io · admin · shutdown · credentials   workers; HTTP; signals; REST minting;
//! · records · ctl                       records file; the admin API's client
//! config · metrics                      validated config; the board
//! core                                  the sans-IO protocol core
//! auth                                  credentials and nonces
//! wire · policy · ratelimit · notify    codec; peer filter; limits; sd_notify
//! request · tls · proxy · unix          client requests; certificates, rustls;
//!                                       PROXY protocol headers; Unix time
//! ```
//!
//! - [`wire`]: zero-copy reading of STUN messages and ChannelData framing.
//! - [`auth`]: long-term credentials, REST API secrets, stateless nonces.
//! - [`policy`]: which peers may be relayed to; `ratelimit`: per-source
//!   limits in bounded memory.
//! - [`core`]: the sans-IO protocol core, one per worker. `Core::on_client`
//!   takes a client's bytes, `Core::on_peer` a peer's, `Core::tick` expires
//!   state; all output goes through the `core::Io` trait. TURN methods are
//!   in `core/methods.rs`, the per-packet path in `core/relay.rs`,
//!   allocation state in `core/alloc.rs`, answers in `core/response.rs`.
//! - [`tls`]: the certificate and key (checked as loaded, swapped by
//!   reload for new handshakes) and the rustls server configuration.
//! - [`proxy`]: PROXY protocol v1/v2 headers from a trusted L4 load
//!   balancer: whose connection it is, and how many bytes the header takes.
//! - [`config`]: the validated configuration; [`metrics`]: the
//!   [`metrics::Board`] that workers publish to and the Prometheus text
//!   rendered from it.
//! - [`io`]: one worker thread per core, each owning its core, its
//!   listener sockets (SO_REUSEPORT), its relay sockets and its clients'
//!   send queue; relay-to-relay datagrams between workers go through
//!   bounded per-pair queues (`io/handoff.rs`). Stream clients (TCP, and
//!   TLS after a handshake under its limits, `io/tls.rs`) are read and
//!   written by the worker on their socket (`io/tcp.rs`). With `[relay]
//!   xdp`, `io/xdp.rs` attaches the XDP fast path (`bpf/relay_xdp.c`) and
//!   each worker installs what its core offers (`core/offload.rs`).
//! - `admin`: `/metrics`, `/healthz`, `/readyz` over HTTP (hyper), from
//!   the board, and the token-authenticated JSON API under `/v1/`
//!   (sessions, disconnect, blocks), whose orders reach the workers
//!   through their mailboxes (`io/mailbox.rs`); [`shutdown`]: signals as [`shutdown::Control`]s;
//!   [`credentials`]: minting REST credentials; `notify`: systemd's
//!   sd_notify. (`admin`, `notify` and `ratelimit` are internal; the other
//!   modules are the library that the binary, the load generator, the
//!   benchmarks, the fuzz targets and the tests use.)
//! - [`request`]: STUN/TURN requests as clients build them, for the load
//!   generator, benchmarks and tests; `testing` (the `testing` feature,
//!   on in `cargo test`): a recording `Io`, a fake clock, a test config.
//! - `api`: the credential endpoint (`[api]`): `POST /v1/ice-servers` and
//!   the REST draft's `GET /?service=turn`, bearer keys, CORS, on its own
//!   listener, served by `admin`'s HTTP loop.
//! - [`ctl`]: `tern ctl`, the admin API from the command line.
//! - [`probe`]: `tern probe`, a stage-by-stage diagnosis of a TURN server
//!   from the client's side (blocking sockets; never on the server's path).
//! - [`records`]: allocation records as JSON lines, written by their own
//!   thread from a bounded queue the workers push to.
//! - [`server`]: binds listeners, starts the workers, obeys controls
//!   (`run(config, shutdown)`) and drains (on SIGTERM or the admin API's
//!   `POST /v1/drain`); [`cli`]: what `main.rs` calls.
//!
//! # The peer paths
//! - **Client → peer**: a worker's listener socket yields a batch
//!   (`recvmmsg`) → `Core::on_client` → the allocation's relay socket
//!   (`sendto`); or, when the peer is another tern relay, the owning
//!   worker's queue (`io/handoff.rs`), drained into that worker's core.
//! - **Peer → client**: the worker's steered socket (BPF `sk_lookup`
//!   hands it every datagram for the worker's relay ports) or a polled
//!   relay socket yields a batch → `Core::on_peer` → the worker's send
//!   queue, which leaves in one `sendmmsg` per listener when the batch
//!   settles.
//! - **The XDP fast path** (`[relay] xdp`): for a channel the core has
//!   offered, the kernel program rewrites a UDP client's ChannelData into
//!   the relay's datagram to the peer, and the peer's datagram into
//!   ChannelData to the client, before any socket; what it relayed comes
//!   back to the core as counts on the worker's tick.

pub(crate) mod admin;
pub(crate) mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod core;
pub mod credentials;
pub mod ctl;
pub mod io;
pub mod metrics;
pub(crate) mod notify;
pub mod policy;
pub mod probe;
pub mod proxy;
pub(crate) mod ratelimit;
pub mod records;
pub mod request;
pub mod server;
pub mod shutdown;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod unix;
pub mod wire;
