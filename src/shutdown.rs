//! Turning process signals into the shutdown future `server::run` takes.

use std::future::Future;

/// Register SIGTERM and SIGINT handlers now (so a signal that arrives
/// before the server starts waiting is not lost) and return a future that
/// completes on either. Call inside a tokio runtime.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            // Without handlers the signals keep their default action, which
            // ends the process.
            tracing::warn!("cannot install signal handlers");
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
