//! Request guards for /api (and later /mcp): Origin validation against DNS rebinding and
//! cross-site calls, and bearer-token authentication with a constant-time comparison.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Config;

/// Compares without an early exit on the first differing byte (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a browser Origin may call us: loopback origins, and those configured.
pub fn origin_allowed(origin: &str, cfg: &Config) -> bool {
    if cfg
        .server
        .allowed_origins
        .iter()
        .any(|o| o == origin || o == "*")
    {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// Whether a `Host` header (with or without port) names an allowed host.
pub fn host_allowed(host: &str, cfg: &Config) -> bool {
    let Some(allowed) = cfg.allowed_hosts() else {
        return true;
    };
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    allowed.iter().any(|a| a == name || a == host)
}

fn deny(status: StatusCode, code: &str, msg: String) -> Box<Response> {
    Box::new(
        (
            status,
            axum::Json(serde_json::json!({ "error": msg, "code": code })),
        )
            .into_response(),
    )
}

/// The bearer token, or the password of HTTP Basic credentials (for browsers).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    Some(s.split_once(':').map_or(s.clone(), |(_, p)| p.to_string()))
}

pub fn check(headers: &HeaderMap, cfg: &Config) -> Result<(), Box<Response>> {
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, cfg) {
            return Err(deny(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!("host {host:?} is not allowed (server.allowed_hosts)"),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(origin, cfg) {
            return Err(Box::new((
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({
                    "error": format!("origin {origin:?} is not allowed (server.allowed_origins)"),
                    "code": "forbidden_origin"
                })),
            )
                .into_response()));
        }
    }
    let token = &cfg.server.token;
    if token.is_empty() {
        return Ok(());
    }
    let given = presented_token(headers).unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Ok(());
    }
    Err(Box::new(
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"corral\", Basic realm=\"corral\"",
            )],
            axum::Json(serde_json::json!({
                "error": "missing or wrong bearer token (Authorization: Bearer <server.token>)",
                "code": "unauthorized"
            })),
        )
            .into_response(),
    ))
}

pub async fn middleware(State(cfg): State<Arc<Config>>, req: Request, next: Next) -> Response {
    if let Err(resp) = check(req.headers(), &cfg) {
        return *resp;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn hosts() {
        let mut cfg = Config::default();
        assert!(host_allowed("127.0.0.1:8001", &cfg));
        assert!(host_allowed("localhost", &cfg));
        assert!(host_allowed("[::1]:8001", &cfg));
        assert!(!host_allowed("evil.example:8001", &cfg));
        cfg.server.allowed_hosts = vec!["corral.internal".into()];
        assert!(host_allowed("corral.internal:8001", &cfg));
        cfg.server.host = "0.0.0.0".into();
        cfg.server.token = "0123456789abcdef".into();
        cfg.server.allowed_hosts.clear();
        assert!(
            host_allowed("10.1.2.3:8001", &cfg),
            "token-protected public bind accepts any Host"
        );
    }

    #[test]
    fn origins() {
        let mut cfg = Config::default();
        assert!(origin_allowed("http://localhost:3000", &cfg));
        assert!(origin_allowed("http://127.0.0.1", &cfg));
        assert!(origin_allowed("http://[::1]:8001", &cfg));
        assert!(!origin_allowed("http://evil.example", &cfg));
        assert!(!origin_allowed("http://localhost.evil.example", &cfg));
        assert!(!origin_allowed("null", &cfg));
        cfg.server.allowed_origins = vec!["https://ops.example".into()];
        assert!(origin_allowed("https://ops.example", &cfg));
    }
}
