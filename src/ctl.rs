//! `tern ctl`: the admin API from the command line — `info`, `sessions`,
//! `disconnect`, `unblock`, `blocks`, `drain` — as tables (or the API's JSON with
//! `--json`). A client of the API over HTTP/1.1 (hyper); never on the
//! server's path.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

/// What to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `GET /v1/info`.
    Info,
    /// `GET /v1/sessions[?user=]`.
    Sessions(Option<String>),
    /// `POST /v1/users/{user}/disconnect`, blocking for some seconds.
    Disconnect(String, u64),
    /// `DELETE /v1/blocks/{user}`.
    Unblock(String),
    /// `GET /v1/blocks`.
    Blocks,
    /// `POST /v1/drain`.
    Drain,
}

/// Percent-encode a path segment or query value.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Call {
    fn request(&self) -> (Method, String, String) {
        match self {
            Self::Info => (Method::GET, "/v1/info".into(), String::new()),
            Self::Sessions(None) => (Method::GET, "/v1/sessions".into(), String::new()),
            Self::Sessions(Some(u)) => (
                Method::GET,
                format!("/v1/sessions?user={}", encode(u)),
                String::new(),
            ),
            Self::Disconnect(u, block) => (
                Method::POST,
                format!("/v1/users/{}/disconnect", encode(u)),
                serde_json::json!({ "block_seconds": block }).to_string(),
            ),
            Self::Unblock(u) => (
                Method::DELETE,
                format!("/v1/blocks/{}", encode(u)),
                String::new(),
            ),
            Self::Blocks => (Method::GET, "/v1/blocks".into(), String::new()),
            Self::Drain => (Method::POST, "/v1/drain".into(), String::new()),
        }
    }
}

/// Make `call` to the admin listener at `admin` with `token`: the status
/// and the JSON answer.
pub fn call(admin: SocketAddr, token: &str, call: &Call) -> anyhow::Result<(StatusCode, Value)> {
    let (method, path, body) = call.request();
    let (status, bytes) = request(admin, method, &path, Some(token), body)?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// One HTTP/1.1 request to the admin listener at `admin` (with a bearer
/// token, if given): the status and the body.
pub fn request(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: String,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{admin}: no answer to connect within 10 s"))?
        .map_err(|e| anyhow::anyhow!("{admin}: {e} (is [admin] listen this address?)"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, admin.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), send.send_request(req))
            .await
            .map_err(|_| anyhow::anyhow!("{admin}: no answer within 30 s"))??;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    })
}

/// After a drain: wait until the server at `admin` has exited (its admin
/// listener refuses connections), printing the allocations left as they
/// change. tern exits once they have ended or its drain timeout passed.
pub fn wait_for_exit(admin: SocketAddr, token: &str) {
    let mut last = None;
    while let Ok((_, v)) = call(admin, token, &Call::Info) {
        let left = v["allocations"].as_u64();
        if left != last {
            println!("{} allocation(s) left", s(&v["allocations"]));
            last = left;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    println!("drained: tern has exited");
}

/// The answer to `call` as text for a terminal.
pub fn table(call: &Call, v: &Value) -> String {
    match call {
        Call::Info => info(v),
        Call::Sessions(_) => sessions(v),
        Call::Blocks => {
            let rows = v.as_array().map_or(&[][..], Vec::as_slice);
            let mut out = format!("{:<32} UNTIL\n", "USER");
            for b in rows {
                out.push_str(&format!("{:<32} {}\n", s(&b["user"]), s(&b["until"])));
            }
            out
        }
        Call::Disconnect(..) => {
            let until = match v["blocked_until"].as_str() {
                Some(t) => format!("; blocked until {t}"),
                None => String::new(),
            };
            format!(
                "{}: {} allocation(s) closed{until}\n",
                s(&v["user"]),
                v["closed"]
            )
        }
        Call::Unblock(u) => format!("{u}: unblocked\n"),
        Call::Drain => format!("draining: {} allocation(s) left\n", v["allocations"]),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn info(v: &Value) -> String {
    let r = &v["relay"];
    format!(
        "version        {}\nuptime         {} s\nlisteners      udp {} tcp {} tls {}\nrelay          ipv4 {} ipv6 {} ports {}-{} ({} in use)\nallocations    {}\ntcp connections {}\nworkers        {}\nsteering       {}\nstun-only      {}\nready          {}\n",
        s(&v["version"]),
        s(&v["uptime_seconds"]),
        s(&v["listeners"]["udp"]),
        s(&v["listeners"]["tcp"]),
        s(&v["listeners"]["tls"]),
        s(&r["ipv4"]),
        s(&r["ipv6"]),
        s(&r["min_port"]),
        s(&r["max_port"]),
        s(&r["ports_in_use"]),
        s(&v["allocations"]),
        s(&v["tcp_connections"]),
        s(&v["workers"]),
        s(&v["steering"]),
        s(&v["stun_only"]),
        s(&v["ready"]),
    )
}

fn sessions(v: &Value) -> String {
    let rows = v.as_array().map_or(&[][..], Vec::as_slice);
    let mut out = format!(
        "{:<14} {:<16} {:<22} {:<4} {:<22} {:<20} {:>12} {:>12}\n",
        "ID", "USER", "CLIENT", "VIA", "RELAY", "EXPIRES", "TO PEER", "TO CLIENT"
    );
    for x in rows {
        out.push_str(&format!(
            "{:<14} {:<16} {:<22} {:<4} {:<22} {:<20} {:>12} {:>12}\n",
            s(&x["id"]),
            s(&x["user"]),
            s(&x["client"]),
            s(&x["transport"]),
            s(&x["relay"]),
            s(&x["expires"]),
            s(&x["bytes_to_peer"]),
            s(&x["bytes_to_client"]),
        ));
    }
    out.push_str(&format!("{} session(s)\n", rows.len()));
    out
}
