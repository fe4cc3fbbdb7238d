//! The credential endpoint's place in the server: its listener, bound at
//! start-up beside the others, and its state, rebuilt on reload.

use std::sync::Arc;

use super::{Server, ServerError};
use crate::api::{Api, State};
use crate::config::Config;

/// The bound credential endpoint.
pub(super) struct Endpoint {
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    api: Arc<Api>,
}

impl Server {
    /// Bind `[api] listen` when set (after the TLS server, whose
    /// certificate HTTPS presents, is in place).
    pub(super) fn bind_api(&mut self) -> Result<(), ServerError> {
        let Some(settings) = &self.config.api else {
            return Ok(());
        };
        let listener = super::bind_http(settings.listen, "api http")?;
        let tls = match (settings.tls, self.shared.tls()) {
            (true, Some(server)) => {
                Some(tokio_rustls::TlsAcceptor::from(server.tls().http_config()))
            }
            _ => None,
        };
        let Some(state) = self.api_state(&self.config) else {
            return Ok(());
        };
        let api = Arc::new(Api::new(state, Arc::clone(&self.board)));
        self.api = Some(Endpoint { listener, tls, api });
        Ok(())
    }

    /// The bound credential endpoint address.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().and_then(|e| e.listener.local_addr().ok())
    }

    /// Start serving the endpoint, if it is on.
    pub(super) fn spawn_api(&self) -> Result<Option<tokio::task::JoinHandle<()>>, ServerError> {
        let Some(e) = &self.api else {
            return Ok(None);
        };
        let listener = e.listener.try_clone().map_err(ServerError::Worker)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ServerError::Worker)?;
        Ok(Some(tokio::spawn(crate::api::serve(
            listener,
            e.tls.clone(),
            Arc::clone(&e.api),
        ))))
    }

    /// Keys, origins, lifetimes, rate, secret and host from `new` (reload).
    pub(super) fn reload_api(&self, new: &Config) {
        if let (Some(e), Some(state)) = (&self.api, self.api_state(new)) {
            e.api.set(state);
        }
    }

    /// What the endpoint mints from under `config`: its first REST secret,
    /// the public host and the bound listeners.
    fn api_state(&self, config: &Config) -> Option<State> {
        let settings = config.api.as_ref()?;
        let secret = config.secrets.first()?.clone();
        let host = crate::credentials::public_host(config, self.relay.0, self.relay.1);
        let listeners = [&self.udp_addrs[..], &self.tcp_addrs, &self.tls_addrs];
        Some(State::new(settings, secret, host, listeners))
    }
}
