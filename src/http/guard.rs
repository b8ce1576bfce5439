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

pub fn check(headers: &HeaderMap, cfg: &Config) -> Result<(), Box<Response>> {
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
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Ok(());
    }
    Err(Box::new(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"corral\"")],
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
