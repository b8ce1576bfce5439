//! Request guards for /api, /mcp, /metrics and the status page: Host and Origin validation
//! against DNS rebinding and cross-site calls, and bearer-token authentication (constant-time
//! comparison for the operator's token; per-instance MCP tokens by digest lookup). The
//! caller it identifies goes into the request's extensions for the handlers.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::config::Config;
use crate::supervisor::{Caller, TOKEN_PREFIX};

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

fn unauthorized(msg: &str) -> Box<Response> {
    Box::new(
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"corral\", Basic realm=\"corral\"",
            )],
            axum::Json(serde_json::json!({ "error": msg, "code": "unauthorized" })),
        )
            .into_response(),
    )
}

/// Checks Host, Origin and the token, and says who is calling: the operator (its token, or
/// anyone where no token is configured) or an agent (its per-instance MCP token, accepted at
/// `/mcp` only). `token_caller` maps a per-instance token to its agent.
pub fn check(
    headers: &HeaderMap,
    cfg: &Config,
    is_mcp: bool,
    token_caller: impl Fn(&str) -> Option<Caller>,
) -> Result<Caller, Box<Response>> {
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
            return Err(deny(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!("origin {origin:?} is not allowed (server.allowed_origins)"),
            ));
        }
    }
    let given = presented_token(headers);
    if let Some(t) = given.as_deref().filter(|t| t.starts_with(TOKEN_PREFIX)) {
        return match token_caller(t) {
            Some(c) if is_mcp => Ok(c),
            Some(_) => Err(deny(
                StatusCode::FORBIDDEN,
                "instance_token",
                "an instance's token is valid only at /mcp".into(),
            )),
            None => Err(unauthorized(
                "unknown or revoked instance token (instance tokens end with their instance)",
            )),
        };
    }
    let token = &cfg.server.token;
    if token.is_empty() {
        return Ok(Caller::Operator);
    }
    let given = given.unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Ok(Caller::Operator);
    }
    Err(unauthorized(
        "missing or wrong bearer token (Authorization: Bearer <server.token>)",
    ))
}

pub async fn middleware(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let is_mcp = req.uri().path().starts_with("/mcp");
    match check(req.headers(), &st.cfg, is_mcp, |t| {
        st.sup.caller_for_token(t)
    }) {
        Ok(Caller::Operator) if st.cfg.server.token.is_empty() && from_an_agent(&req, &st) => {
            *unauthorized(
                "agents must present their own instance token (CORRAL_MCP_TOKEN); without one they get nothing here",
            )
        }
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(resp) => *resp,
    }
}

/// Where no operator token is configured, loopback is the operator's, except for the agents:
/// a connection whose socket belongs to an agent's UID is one (see `peer.rs`).
fn from_an_agent(req: &Request, st: &AppState) -> bool {
    let Some(axum::extract::ConnectInfo(peer)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<super::peer::PeerConn>>()
    else {
        return false;
    };
    peer.uid().is_some_and(|uid| st.sup.is_agent_uid(uid))
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
