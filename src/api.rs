//! The credential endpoint (`[api]`, off by default): web applications
//! get a ready `iceServers` array with a freshly minted TURN REST API
//! credential, on a listener of its own (so it can face the apps while
//! the admin listener stays on loopback), over HTTPS with the `[tls]`
//! certificate when `[api] tls = true`.
//!
//! - `POST /v1/ice-servers` with `Authorization: Bearer KEY` and an
//!   optional body `{"user": "alice", "ttl": 3600}` → 201
//!   `{"iceServers": [...], "ttl": N, "expiresAt": "RFC 3339"}`; `ttl` is
//!   capped at `[api] max-ttl-seconds`.
//! - The TURN REST API draft's `GET /?service=turn&username=U&key=KEY`
//!   [`&ttl=N`] → 200 `{"username", "password", "ttl", "uris"}`.
//! - CORS: a page whose `Origin` is in `[api] allowed-origins` may call
//!   both (preflights answered); any other `Origin` gets 403.
//!
//! Keys are compared in constant time (as SHA-1 digests, every key);
//! each key has its own request budget (`[api] requests-per-minute`); no
//! answer is cached (`Cache-Control: no-store`). Outcomes are counted in
//! `tern_api_requests_total{outcome}`; each request is logged at debug.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::admin::{HttpLimits, Tokens, body, digest, error, json_reply, query};
use crate::config::ApiSettings;
use crate::credentials;
use crate::metrics::{ApiOutcome, Board};

/// Connections served at once, and from one client IP.
const LIMITS: HttpLimits = HttpLimits {
    concurrent: 1024,
    per_ip: 32,
};
/// The longest `user` accepted, in bytes.
const MAX_USER: usize = 128;

/// What the endpoint mints from: the settings and the server's public
/// face; rebuilt by a reload.
#[derive(Debug)]
pub(crate) struct State {
    settings: ApiSettings,
    keys: Tokens,
    /// The REST secret credentials are signed with (the first configured).
    secret: String,
    /// Host put in the URIs.
    host: String,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    uris: Vec<String>,
}

impl State {
    /// Mint with `secret` for clients reaching `host` on these listeners.
    pub(crate) fn new(
        settings: &ApiSettings,
        secret: String,
        host: String,
        listeners: [&[SocketAddr]; 3],
    ) -> Self {
        let keys = Tokens::default();
        keys.set(&settings.keys);
        let [udp, tcp, tls] = listeners;
        Self {
            settings: settings.clone(),
            keys,
            secret,
            uris: credentials::turn_uris(&host, udp, tcp, tls),
            host,
            udp: udp.to_vec(),
            tcp: tcp.to_vec(),
        }
    }

    fn allows_origin(&self, origin: &[u8]) -> bool {
        self.settings
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.as_bytes().eq_ignore_ascii_case(origin))
    }
}

/// A key's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The running endpoint.
#[derive(Debug)]
pub(crate) struct Api {
    state: RwLock<Arc<State>>,
    board: Arc<Board>,
    /// One bucket per key that has been used (keyed by its digest; only
    /// accepted keys get one, so the table is as small as the key list).
    buckets: Mutex<HashMap<[u8; 20], Bucket>>,
}

impl Api {
    pub(crate) fn new(state: State, board: Arc<Board>) -> Self {
        Self {
            state: RwLock::new(Arc::new(state)),
            board,
            buckets: Mutex::default(),
        }
    }

    /// Serve from `state` from the next request on (reload).
    pub(crate) fn set(&self, state: State) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        // Buckets of keys no longer configured go; the others keep theirs.
        let state = self.state();
        let keep: Vec<[u8; 20]> = state
            .settings
            .keys
            .iter()
            .map(|k| digest(k.as_bytes()))
            .collect();
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| keep.contains(k));
    }

    fn state(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Take one request from `key`'s budget; false when it is spent.
    fn spend(&self, key: &[u8], per_minute: u32, now: Instant) -> bool {
        if per_minute == 0 {
            return true;
        }
        let rate = f64::from(per_minute) / 60.0;
        let burst = (f64::from(per_minute) / 10.0).max(1.0);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(digest(key)).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

/// Serve the endpoint on `listener` (HTTPS with `tls`) until the task is
/// dropped.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    api: Arc<Api>,
) {
    crate::admin::serve_http(listener, LIMITS, tls, move |req, peer| {
        let api = Arc::clone(&api);
        async move { answer(&api, req, peer).await }
    })
    .await;
}

type Reply = Response<Full<Bytes>>;

async fn answer(api: &Api, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let state = api.state();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().map(|o| state.allows_origin(o.as_bytes()));
    let (outcome, mut r) = if allowed == Some(false) {
        let message = "this page's origin is not allowed: add it to [api] allowed-origins";
        (
            ApiOutcome::OriginRefused,
            error(StatusCode::FORBIDDEN, message),
        )
    } else {
        route(api, &state, req).await
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let (Some(o), Some(true)) = (origin, allowed) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    api.board.api.count(outcome);
    tracing::debug!(%method, %path, %peer, status = r.status().as_u16(), outcome = outcome.label(), "api");
    r
}

async fn route(api: &Api, state: &State, req: Request<Incoming>) -> (ApiOutcome, Reply) {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    match (req.method(), path.as_str()) {
        (&Method::OPTIONS, "/v1/ice-servers" | "") => (ApiOutcome::Preflight, preflight()),
        (&Method::POST, "/v1/ice-servers") => {
            let key = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .map(<[u8]>::to_vec);
            if let Some(refused) = refusal(api, state, key.as_deref()) {
                return refused;
            }
            ice_servers(state, req).await
        }
        (&Method::GET, "") if query(&req, "service").is_some() => {
            let key = query(&req, "key");
            if let Some(refused) = refusal(api, state, key.as_deref().map(str::as_bytes)) {
                return refused;
            }
            draft(state, &req)
        }
        (_, "/v1/ice-servers") => (
            ApiOutcome::NotFound,
            error(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
        ),
        _ => (
            ApiOutcome::NotFound,
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: POST /v1/ice-servers, or GET /?service=turn&username=U&key=KEY",
            ),
        ),
    }
}

/// A CORS preflight's answer (the origin was checked by the caller).
fn preflight() -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// Check the key and spend from its budget: the refusal, if any.
fn refusal(api: &Api, state: &State, key: Option<&[u8]>) -> Option<(ApiOutcome, Reply)> {
    let Some(key) = key.filter(|k| state.keys.accepts(k)) else {
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid API key is needed");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tern\""),
        );
        return Some((ApiOutcome::Unauthorized, r));
    };
    if !api.spend(key, state.settings.requests_per_minute, Instant::now()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "this key's request rate is exceeded",
        );
        let wait = (60 / state.settings.requests_per_minute.max(1)).max(1);
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Some((ApiOutcome::RateLimited, r));
    }
    None
}

/// `POST /v1/ice-servers`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
}

fn bad(message: &str) -> (ApiOutcome, Reply) {
    (
        ApiOutcome::BadRequest,
        error(StatusCode::BAD_REQUEST, message),
    )
}

async fn ice_servers(state: &State, req: Request<Incoming>) -> (ApiOutcome, Reply) {
    let Some(bytes) = body(req).await else {
        return bad("the body is over 4 KiB or could not be read");
    };
    let ask = if bytes.iter().all(u8::is_ascii_whitespace) {
        Ask::default()
    } else {
        match serde_json::from_slice::<Ask>(&bytes) {
            Ok(a) => a,
            Err(e) => {
                let message = format!(
                    "the body must be JSON like {{\"user\": \"alice\", \"ttl\": 3600}}: {e}"
                );
                return bad(&message);
            }
        }
    };
    let (user, ttl) = match checked(state, ask.user.as_deref(), ask.ttl) {
        Ok(v) => v,
        Err(message) => return bad(message),
    };
    let now = crate::unix::now();
    let cred = credentials::mint(&state.secret, user, ttl, now, state.uris.clone());
    let body = json!({
        "iceServers": credentials::ice_servers(&state.host, &state.udp, &state.tcp, &cred),
        "ttl": ttl,
        "expiresAt": crate::unix::rfc3339(now.saturating_add(ttl)),
    });
    (ApiOutcome::Issued, json_reply(StatusCode::CREATED, &body))
}

/// The draft's `GET /?service=turn&username=U&key=KEY[&ttl=N]`.
fn draft(state: &State, req: &Request<Incoming>) -> (ApiOutcome, Reply) {
    if query(req, "service").as_deref() != Some("turn") {
        return bad("service must be \"turn\"");
    }
    let ttl = match query(req, "ttl").map(|t| t.parse::<u64>()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return bad("ttl must be a whole number of seconds"),
    };
    let user = query(req, "username");
    let (user, ttl) = match checked(state, user.as_deref(), ttl) {
        Ok(v) => v,
        Err(message) => return bad(message),
    };
    let cred = credentials::mint(
        &state.secret,
        user,
        ttl,
        crate::unix::now(),
        state.uris.clone(),
    );
    match serde_json::to_value(&cred) {
        Ok(v) => (ApiOutcome::Issued, json_reply(StatusCode::OK, &v)),
        Err(_) => bad("cannot encode the credential"),
    }
}

/// The user (printable, at most [`MAX_USER`] bytes; none: the username is
/// only the expiry) and the lifetime (default, capped at the maximum).
fn checked<'a>(
    state: &State,
    user: Option<&'a str>,
    ttl: Option<u64>,
) -> Result<(&'a str, u64), &'static str> {
    let user = user.unwrap_or("");
    if user.len() > MAX_USER || user.chars().any(char::is_control) {
        return Err("user must be at most 128 bytes of printable text");
    }
    let s = &state.settings;
    let ttl = match ttl {
        None => s.default_ttl.as_secs(),
        Some(0) => return Err("ttl must be at least 1 second"),
        Some(t) => t.min(s.max_ttl.as_secs()),
    };
    Ok((user, ttl))
}

#[cfg(test)]
mod tests;
