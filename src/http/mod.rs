//! The HTTP server: `/health` and `/ready` (no auth), and the JSON API under `/api/v1` that the
//! CLI client uses. Handlers parse input, call one supervisor method, and map the result; they
//! hold no PIDs, terminals or SQL.

mod api;
pub mod error;
pub mod guard;
mod peer;

pub use peer::{NoDelay, PeerConn};
mod status;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::mcp::CorralMcp;
use crate::metrics::Metrics;
use crate::supervisor::Supervisor;

#[derive(Clone)]
pub struct AppState {
    pub sup: Supervisor,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Ends open MCP streams at shutdown.
    pub shutdown: CancellationToken,
}

/// The MCP endpoint: rmcp's Streamable HTTP service with sessions (protocol versions before
/// 2026-07-28 use them; 2026-07-28 is stateless), Host validation, and our shutdown token.
fn mcp_service(state: &AppState) -> StreamableHttpService<CorralMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        .with_cancellation_token(state.shutdown.child_token());
    config = match state.cfg.allowed_hosts() {
        Some(hosts) => config.with_allowed_hosts(hosts),
        None => config.disable_allowed_hosts(),
    };
    let sup = state.sup.clone();
    let metrics = state.metrics.clone();
    let sessions = crate::mcp::Sessions::default();
    sessions.spawn_forwarder(&sup);
    StreamableHttpService::new(
        move || {
            Ok(CorralMcp::new(
                sup.clone(),
                metrics.clone(),
                sessions.clone(),
            ))
        },
        Default::default(),
        config,
    )
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/instances", get(api::list).post(api::spawn))
        .route("/instances/{r}", get(api::get_instance))
        .route("/instances/{r}/send", post(api::send))
        .route("/instances/{r}/turns/{turn}", get(api::wait_turn))
        .route("/instances/{r}/output", get(api::output))
        .route("/instances/{r}/logs", get(api::logs))
        .route("/instances/{r}/screen", get(api::screen))
        .route("/instances/{r}/stop", post(api::stop))
        .route("/instances/{r}/resize", post(api::resize))
        .route("/instances/{r}/attach", get(api::attach))
        .route("/instances/{r}/resume", post(api::resume))
        .route("/instances/{r}/interrupt", post(api::interrupt))
        .route("/events", get(api::events));
    // Everything but /health and /ready sits behind the Host/Origin/token guard.
    let guarded = Router::new()
        .nest("/api/v1", api)
        .route("/", get(status::page))
        .route("/metrics", get(metrics))
        .nest_service(
            "/mcp",
            Router::new()
                .fallback_service(mcp_service(&state))
                .layer(axum::middleware::from_fn(delete_ok)),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::middleware,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(guarded)
        .with_state(state)
}

/// Liveness and a summary; reveals no names, commands or secrets. `isolation` says what
/// instances get here (agent user, cgroups or why not, Landlock ABI).
async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    let counts = st.sup.counts();
    let live: usize = counts.values().sum();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "instances": { "live": live, "by_state": counts },
        "max_instances": st.cfg.limits.max_instances,
        "isolation": st.sup.isolation_status(),
    }))
}

async fn metrics(State(st): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(&st.sup),
    )
}

/// A session DELETE that succeeded answers 200 rather than rmcp's 202: the spec leaves the
/// code open, the reference servers answer 200, and their clients log anything but
/// 200/204/405 as a failed termination.
async fn delete_ok(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_delete = req.method() == axum::http::Method::DELETE;
    let mut resp = next.run(req).await;
    if is_delete && resp.status() == axum::http::StatusCode::ACCEPTED {
        *resp.status_mut() = axum::http::StatusCode::OK;
    }
    resp
}

async fn ready() -> Json<serde_json::Value> {
    Json(json!({ "ready": true }))
}
