//! Process signals as [`Control`] messages for a running server:
//! SIGHUP reloads the config file, SIGTERM drains (a second SIGTERM stops),
//! SIGINT stops at once.

use std::future::Future;
use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tokio::sync::mpsc;

use crate::config::Config;

/// What the operator asks of a running server (signals map onto these).
#[derive(Debug)]
pub enum Control {
    /// Swap in a new configuration (SIGHUP); live allocations are kept.
    Reload(Box<Config>),
    /// Stop taking allocations, let live ones finish (SIGTERM).
    Drain,
    /// Close everything now (SIGINT, or a second SIGTERM).
    Stop,
}

/// Register SIGTERM and SIGINT handlers now (so a signal that arrives
/// before the server starts waiting is not lost) and return a future that
/// completes on either. Call inside a tokio runtime.
pub fn signal() -> impl Future<Output = ()> {
    let term = unix_signal(SignalKind::terminate());
    let int = unix_signal(SignalKind::interrupt());
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

/// Install SIGHUP, SIGTERM and SIGINT handlers now and turn the signals
/// into controls. On SIGHUP `config` is read and validated again: a valid
/// file is passed to `on_reload` and sent on; a broken one is logged once
/// and the running configuration stays. Call inside a tokio runtime.
pub fn controls(
    config: Option<PathBuf>,
    on_reload: impl Fn(&Config) + Send + 'static,
) -> std::io::Result<mpsc::Receiver<Control>> {
    let mut hup = unix_signal(SignalKind::hangup())?;
    let mut term = unix_signal(SignalKind::terminate())?;
    let mut int = unix_signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = hup.recv() => {
                    let Some(path) = &config else {
                        tracing::warn!("SIGHUP received, but tern runs without a config file; nothing to reload");
                        continue;
                    };
                    match Config::load(path) {
                        Ok(c) => {
                            on_reload(&c);
                            Control::Reload(Box::new(c))
                        }
                        Err(e) => {
                            tracing::error!("reload failed, keeping the running configuration: {e}");
                            continue;
                        }
                    }
                }
                _ = term.recv() => { tracing::info!("SIGTERM received"); Control::Drain }
                _ = int.recv() => { tracing::info!("SIGINT received"); Control::Stop }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
