//! The admin API's view of the running server: what `GET /v1/info`
//! shows, and orders to the workers through their mailboxes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::admin::{BoxFuture, Operator};
use crate::core::SessionInfo;
use crate::io::{Shared, Target};
use crate::metrics::Board;
use crate::policy::PortRange;

/// What `info` reports that does not change while serving.
pub(super) struct Fixed {
    pub(super) udp: Vec<SocketAddr>,
    pub(super) tcp: Vec<SocketAddr>,
    pub(super) tls: Vec<SocketAddr>,
    pub(super) relay: (Option<IpAddr>, Option<IpAddr>),
    pub(super) ports: PortRange,
    pub(super) workers: usize,
    pub(super) stun_only: bool,
}

pub(super) struct ServerOperator {
    pub(super) fixed: Fixed,
    pub(super) shared: Arc<Shared>,
    pub(super) board: Arc<Board>,
    /// What the server's control loop waits on to drain.
    pub(super) drain: Arc<Notify>,
}

impl Operator for ServerOperator {
    fn info(&self) -> Value {
        let f = &self.fixed;
        let total = self.board.total();
        let steering: Vec<&str> = self
            .shared
            .steered_families()
            .into_iter()
            .map(|fam| fam.label())
            .collect();
        let addrs = |a: &[SocketAddr]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.board.started().elapsed().as_secs(),
            "listeners": { "udp": addrs(&f.udp), "tcp": addrs(&f.tcp), "tls": addrs(&f.tls) },
            "relay": {
                "ipv4": f.relay.0.map(|ip| ip.to_string()),
                "ipv6": f.relay.1.map(|ip| ip.to_string()),
                "min_port": f.ports.start(),
                "max_port": f.ports.end(),
                // One relay port per allocation.
                "ports_in_use": total.allocations,
            },
            "allocations": total.allocations,
            "tcp_connections": total.tcp_connections,
            "workers": f.workers,
            "steering": steering,
            "stun_only": f.stun_only,
            "ready": self.board.ready(),
        })
    }

    fn sessions(&self, user: Option<String>) -> BoxFuture<Vec<SessionInfo>> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.mailboxes().sessions(user).await })
    }

    fn close(&self, id: u64) -> BoxFuture<usize> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.mailboxes().close(Target::Id(id)).await })
    }

    fn disconnect(&self, user: String) -> BoxFuture<usize> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.mailboxes().close(Target::User(user)).await })
    }

    fn drain(&self) {
        // A stored permit: a drain asked for before the server serves
        // starts as soon as it does.
        self.drain.notify_one();
    }
}

impl super::Server {
    /// What the admin listener serves from.
    pub(super) fn admin(&self, workers: usize) -> Arc<crate::admin::Admin> {
        let fixed = Fixed {
            udp: self.udp_addrs.clone(),
            tcp: self.tcp_addrs.clone(),
            tls: self.tls_addrs.clone(),
            relay: self.relay,
            ports: self.config.relay_ports,
            workers,
            stun_only: self.config.stun_only,
        };
        Arc::new(crate::admin::Admin {
            board: Arc::clone(&self.board),
            tokens: Arc::clone(&self.tokens),
            quotas: Arc::clone(&self.quotas),
            operator: Arc::new(ServerOperator {
                fixed,
                shared: Arc::clone(&self.shared),
                board: Arc::clone(&self.board),
                drain: Arc::clone(&self.drain_asked),
            }),
        })
    }
}
