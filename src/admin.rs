//! The admin HTTP listener (hyper, HTTP/1.1; bound to loopback by
//! default): `/metrics` (Prometheus text), `/healthz` (worker event loops
//! turning) and `/readyz` (serving and not draining) for anyone who can
//! connect; the JSON API under `/v1/` ([`api`]) only with a bearer token
//! from `[admin] token-file`, and not at all without one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::core::{Quotas, SessionInfo};
use crate::metrics::Board;

mod api;

/// A worker that has not ticked for this long is unhealthy.
pub(crate) const HEALTH_WINDOW: Duration = Duration::from_secs(5);
/// How long one connection may take, keep-alive included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body taken (the API's bodies are a few bytes of JSON).
const MAX_BODY: usize = 4096;
/// Admin connections served at once; further ones wait in the backlog.
const MAX_CONCURRENT: usize = 32;

/// A boxed future, for [`Operator`]'s methods.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the API asks of the running server (implemented by `server`,
/// which reaches the workers through their mailboxes).
pub(crate) trait Operator: Send + Sync {
    /// `GET /v1/info`'s object.
    fn info(&self) -> serde_json::Value;
    /// Every allocation, or `user`'s.
    fn sessions(&self, user: Option<String>) -> BoxFuture<Vec<SessionInfo>>;
    /// Close the allocation with this id; how many were closed (0 or 1).
    fn close(&self, id: u64) -> BoxFuture<usize>;
    /// Close every allocation of `user`; how many were closed.
    fn disconnect(&self, user: String) -> BoxFuture<usize>;
}

/// The bearer tokens the API accepts, kept as SHA-1 digests so that the
/// comparison is of fixed length and constant time; swapped by reload.
#[derive(Debug, Default)]
pub(crate) struct Tokens(RwLock<Vec<[u8; 20]>>);

impl Tokens {
    /// Accept exactly `tokens` from now on.
    pub(crate) fn set(&self, tokens: &[String]) {
        let digests = tokens.iter().map(|t| digest(t.as_bytes())).collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = digests;
    }

    fn configured(&self) -> bool {
        !self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Whether `given` is one of the tokens (every one compared).
    fn accepts(&self, given: &[u8]) -> bool {
        let d = digest(given);
        let tokens = self.0.read().unwrap_or_else(PoisonError::into_inner);
        tokens
            .iter()
            .fold(false, |ok, t| ok | bool::from(t.ct_eq(&d)))
    }
}

fn digest(bytes: &[u8]) -> [u8; 20] {
    Sha1::digest(bytes).into()
}

/// What the listener serves from.
pub(crate) struct Admin {
    pub(crate) board: Arc<Board>,
    pub(crate) tokens: Arc<Tokens>,
    /// The allocation counts and user blocks every worker shares.
    pub(crate) quotas: Arc<Quotas>,
    pub(crate) operator: Arc<dyn Operator>,
}

/// Serve admin requests until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(answer(&admin, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

/// A response with `body` of `content_type`.
fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.to_owned())
}

async fn answer(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/v1" || path.starts_with("/v1/") {
        return api::answer(admin, req).await;
    }
    let board = &admin.board;
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(board),
        ),
        (&Method::GET, "/healthz") if board.healthy(HEALTH_WINDOW) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/healthz") => text(StatusCode::SERVICE_UNAVAILABLE, "worker stalled\n"),
        (&Method::GET, "/readyz") if board.ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::GET, _) => text(StatusCode::NOT_FOUND, "not found\n"),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    }
}

/// The request body, at most [`MAX_BODY`] bytes.
async fn body(req: Request<Incoming>) -> Option<Bytes> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()
        .map(http_body_util::Collected::to_bytes)
}
