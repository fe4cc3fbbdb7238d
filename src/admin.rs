//! The admin HTTP listener (hyper, HTTP/1.1; bound to loopback by
//! default): `/metrics` (Prometheus text), `/healthz` (worker event loops
//! turning) and `/readyz` (serving and not draining) for anyone who can
//! connect; the JSON API under `/v1/` ([`api`]) only with a bearer token
//! from `[admin] token-file`, and not at all without one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
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
    fn info(&self) -> Value;
    /// Every allocation, or `user`'s.
    fn sessions(&self, user: Option<String>) -> BoxFuture<Vec<SessionInfo>>;
    /// Close the allocation with this id; how many were closed (0 or 1).
    fn close(&self, id: u64) -> BoxFuture<usize>;
    /// Close every allocation of `user`; how many were closed.
    fn disconnect(&self, user: String) -> BoxFuture<usize>;
    /// Begin draining, as on SIGTERM (nothing more when already draining).
    fn drain(&self);
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
    pub(crate) fn accepts(&self, given: &[u8]) -> bool {
        let d = digest(given);
        let tokens = self.0.read().unwrap_or_else(PoisonError::into_inner);
        tokens
            .iter()
            .fold(false, |ok, t| ok | bool::from(t.ct_eq(&d)))
    }
}

pub(crate) fn digest(bytes: &[u8]) -> [u8; 20] {
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

/// How many connections an HTTP listener serves at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// In total; further connections wait in the backlog.
    pub(crate) concurrent: usize,
    /// From one client IP; further ones are closed at once.
    pub(crate) per_ip: usize,
}

/// The admin listener's limits (it faces operators on loopback).
const ADMIN_LIMITS: HttpLimits = HttpLimits {
    concurrent: MAX_CONCURRENT,
    per_ip: MAX_CONCURRENT,
};

/// Serve admin requests until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    serve_http(listener, ADMIN_LIMITS, None, move |req, _| {
        let admin = Arc::clone(&admin);
        async move { answer(&admin, req).await }
    })
    .await;
}

/// Serve HTTP/1.1 on `listener` (over TLS with `tls`) until the task is
/// dropped: `handle` answers each request, given the client's address.
/// Every connection ends within [`CONNECTION_TIMEOUT`] (handshake and
/// keep-alive included), headers must arrive within 5 s, and `limits`
/// bound the connections served at once.
pub(crate) async fn serve_http<F, Fut>(
    listener: TcpListener,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handle: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.concurrent));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Some(slot) = per_ip.take(peer.ip(), limits.per_ip) else {
            continue;
        };
        let (handle, tls) = (handle.clone(), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http1(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http1(TokioIo::new(stream), service).await;
                    }
                }
            };
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop((permit, slot));
        });
    }
}

/// One HTTP/1.1 connection on `io`.
async fn http1<I, S>(io: I, service: S) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Send,
    S::Future: Send,
{
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .serve_connection(io, service)
        .await
}

/// Open connections per client IP (entries leave at zero, so the table
/// holds at most one per connection served).
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerIp`], given back when dropped.
struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// A response with `body` of `content_type`.
pub(crate) fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub(crate) fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{v}\n"))
}

/// A JSON `{"error": message}` response.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_reply(status, &json!({ "error": message }))
}

/// A query parameter, percent-decoded.
pub(crate) fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
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
pub(crate) async fn body(req: Request<Incoming>) -> Option<Bytes> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()
        .map(http_body_util::Collected::to_bytes)
}
