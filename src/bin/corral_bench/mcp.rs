//! A minimal MCP Streamable HTTP client (JSON-RPC over POST, JSON or SSE answers). The same
//! client drives corral's `/mcp` and the axum floor, so their ratio isolates the servers.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

const VERSION: &str = "2025-06-18";

pub struct Mcp {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
    next: AtomicU64,
}

impl Mcp {
    /// `initialize` + `notifications/initialized`; one HTTP connection pool per client.
    pub async fn connect(url: &str) -> Result<Mcp> {
        let mut c = Mcp {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?,
            url: url.to_string(),
            session: None,
            next: AtomicU64::new(1),
        };
        let params = json!({"protocolVersion": VERSION, "capabilities": {},
            "clientInfo": {"name": "corral-bench", "version": "0"}});
        let (session, _) = c.post(0, "initialize", params).await?;
        c.session = session;
        let r = c
            .req(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("notifications/initialized: {}", r.status());
        }
        Ok(c)
    }

    fn req(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", VERSION)
            .json(body);
        if let Some(s) = &self.session {
            r = r.header("mcp-session-id", s);
        }
        r
    }

    /// One request; returns the session header and the JSON-RPC `result` as soon as the
    /// answer with our id arrives (progress notifications before it are skipped).
    async fn post(&self, id: u64, method: &str, params: Value) -> Result<(Option<String>, Value)> {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let r = self.req(&body).send().await?;
        let status = r.status();
        let session = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let sse = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if !status.is_success() {
            bail!(
                "{method}: HTTP {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        if !sse {
            return Ok((session, answer(r.json().await?, method)?));
        }
        let mut stream = r.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if v["id"].as_u64() == Some(id) {
                    return Ok((session, answer(v, method)?));
                }
            }
        }
        bail!("{method}: the stream ended without an answer")
    }

    /// `tools/call`; returns the structured content, or an error for a tool error.
    pub async fn tool(&self, name: &str, args: Value) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let params = json!({"name": name, "arguments": args});
        let (_, r) = self.post(id, "tools/call", params).await?;
        if r["isError"] == true {
            bail!("{name}: {}", r["content"]);
        }
        r.get("structuredContent")
            .cloned()
            .with_context(|| format!("{name}: no structured content: {r}"))
    }
}

fn answer(v: Value, method: &str) -> Result<Value> {
    if let Some(e) = v.get("error") {
        return Err(anyhow!("{method}: {e}"));
    }
    v.get("result").cloned().context("no result")
}

/// The floor: a minimal axum JSON-RPC handler answering `initialize` and `tools/call` with a
/// fixed `payload` (a real `get_instance` answer, so the bytes on the wire match).
pub async fn floor_server(payload: Value) -> Result<String> {
    use axum::{http::StatusCode, response::IntoResponse, routing::post, Json, Router};
    let app = Router::new().route(
        "/mcp",
        post(move |Json(req): Json<Value>| {
            let payload = payload.clone();
            async move {
                let Some(id) = req.get("id").cloned() else {
                    return StatusCode::ACCEPTED.into_response();
                };
                let result = match req["method"].as_str() {
                    Some("initialize") => json!({"protocolVersion": VERSION, "capabilities": {},
                        "serverInfo": {"name": "floor", "version": "0"}}),
                    _ => json!({"content": [{"type": "text", "text": payload.to_string()}],
                        "structuredContent": payload, "isError": false}),
                };
                Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/mcp"))
}
