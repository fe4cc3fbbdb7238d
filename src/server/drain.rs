//! Draining (SIGTERM, or the admin API's `POST /v1/drain`): readiness
//! off, Allocates refused, live allocations go on until they end or the
//! drain timeout passes.

use std::time::Duration;

use tokio::sync::watch;

use crate::core::Quotas;
use crate::io::{Phase, WorkerState};

impl super::Server {
    /// Begin draining: not ready, Allocates refused, live allocations
    /// go on; returns when the drain ends at the latest.
    pub(super) fn start_drain(
        &self,
        tx: &watch::Sender<WorkerState>,
        by: &str,
    ) -> tokio::time::Instant {
        let timeout = self.config.drain_timeout;
        tracing::info!(by, timeout_seconds = timeout.as_secs(), "draining");
        crate::notify::notify("STOPPING=1");
        self.board.set_ready(false);
        tx.send_modify(|s| s.phase = Phase::Draining);
        tokio::time::Instant::now() + timeout
    }
}

/// Completes when every allocation is gone or `deadline` passes; never
/// without a deadline (not draining).
pub(super) async fn drained(quotas: &Quotas, deadline: Option<tokio::time::Instant>) {
    let Some(deadline) = deadline else {
        return std::future::pending().await;
    };
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    loop {
        poll.tick().await;
        // The quota count is exact at every moment; the per-worker gauges
        // lag by up to a tick.
        if quotas.total() == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}
