//! The JSON API: `Authorization: Bearer TOKEN` on every call (401
//! otherwise), each call logged with its outcome.
//!
//! - `GET /v1/info`: version, uptime, listeners, relays, allocations.
//! - `GET /v1/sessions[?user=NAME]`: one object per allocation.
//! - `DELETE /v1/sessions/{id}`: close one allocation.
//! - `POST /v1/users/{name}/disconnect` [`{"block_seconds": N}`]: close
//!   every allocation of the user, and refuse its Allocates (403) for N
//!   seconds.
//! - `GET /v1/blocks`, `DELETE /v1/blocks/{name}`: the blocks in force;
//!   lift one.
//! - `POST /v1/drain`: drain as on SIGTERM (tern exits when its
//!   allocations have ended or the drain timeout passes).

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{Admin, body, error, json_reply, query};
use crate::core::SessionInfo;

/// The longest block, in seconds (a year).
const MAX_BLOCK_SECONDS: u64 = 365 * 86_400;

pub(super) async fn answer(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let r = if !admin.tokens.configured() {
        error(
            StatusCode::NOT_FOUND,
            "the admin API is off: set [admin] token-file",
        )
    } else if !authorized(admin, &req) {
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is needed");
        if let Ok(v) = "Bearer realm=\"tern\"".parse() {
            r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
        }
        r
    } else {
        route(admin, req).await
    };
    tracing::info!(%method, %path, status = r.status().as_u16(), "admin api");
    r
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| admin.tokens.accepts(t))
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["info"]) => json_reply(StatusCode::OK, &admin.operator.info()),
        (&Method::GET, ["sessions"]) => {
            let user = query(&req, "user");
            let list = admin.operator.sessions(user).await;
            json_reply(
                StatusCode::OK,
                &Value::Array(list.iter().map(session).collect()),
            )
        }
        (&Method::DELETE, ["sessions", id]) => match u64::from_str_radix(id, 16) {
            Ok(id) if admin.operator.close(id).await == 1 => {
                json_reply(StatusCode::OK, &json!({ "closed": 1 }))
            }
            _ => error(StatusCode::NOT_FOUND, "no such session"),
        },
        (&Method::POST, ["users", name, "disconnect"]) => {
            let name = decode(name);
            disconnect(admin, name, req).await
        }
        (&Method::GET, ["blocks"]) => json_reply(StatusCode::OK, &blocks(admin)),
        (&Method::DELETE, ["blocks", name]) => {
            if admin.quotas.blocks.unblock(&decode(name)) {
                json_reply(StatusCode::OK, &json!({ "unblocked": true }))
            } else {
                error(StatusCode::NOT_FOUND, "no such block")
            }
        }
        (&Method::POST, ["drain"]) => {
            admin.operator.drain();
            let allocations = admin.board.total().allocations;
            json_reply(
                StatusCode::ACCEPTED,
                &json!({ "draining": true, "allocations": allocations }),
            )
        }
        (
            _,
            ["info" | "sessions" | "blocks" | "drain"]
            | ["sessions" | "blocks", _]
            | ["users", _, "disconnect"],
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// End every allocation of `user` and, with `{"block_seconds": N}`,
/// refuse its Allocates for N seconds.
async fn disconnect(admin: &Admin, user: String, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(bytes) = body(req).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let block = if bytes.iter().all(u8::is_ascii_whitespace) {
        0
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => match v.get("block_seconds").map(Value::as_u64) {
                None => 0,
                Some(Some(n)) if n <= MAX_BLOCK_SECONDS => n,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "block_seconds must be a whole number of seconds, at most a year",
                    );
                }
            },
            Err(_) => return error(StatusCode::BAD_REQUEST, "the body is not JSON"),
        }
    };
    let now = crate::unix::now();
    // Block first, so the client cannot allocate again in between.
    if block > 0 && !admin.quotas.blocks.block(&user, now + block, now) {
        return error(StatusCode::INSUFFICIENT_STORAGE, "too many users blocked");
    }
    let closed = admin.operator.disconnect(user.clone()).await;
    let until = (block > 0).then(|| crate::unix::rfc3339(now + block));
    json_reply(
        StatusCode::OK,
        &json!({ "user": user, "closed": closed, "blocked_until": until }),
    )
}

fn blocks(admin: &Admin) -> Value {
    let list = admin.quotas.blocks.list(crate::unix::now());
    Value::Array(
        list.into_iter()
            .map(|(user, until)| json!({ "user": user, "until": crate::unix::rfc3339(until) }))
            .collect(),
    )
}

/// One allocation as JSON (its id as in logs: hexadecimal).
pub(crate) fn session(s: &SessionInfo) -> Value {
    json!({
        "id": format!("{:x}", s.id),
        "user": s.user,
        "username": s.username,
        "client": s.client.to_string(),
        "transport": s.transport.label(),
        "relay": s.relay.to_string(),
        "created": crate::unix::rfc3339(s.created_unix),
        "expires": crate::unix::rfc3339(s.expires_unix),
        "permissions": s.permissions,
        "channels": s.channels,
        "bytes_to_peer": s.traffic.bytes_to_peer,
        "bytes_to_client": s.traffic.bytes_to_client,
        "packets_to_peer": s.traffic.packets_to_peer,
        "packets_to_client": s.traffic.packets_to_client,
    })
}

/// A path segment, percent-decoded.
fn decode(segment: &str) -> String {
    form_urlencoded::parse(format!("x={segment}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
