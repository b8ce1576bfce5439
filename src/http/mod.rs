//! The HTTP server: `/health` and `/ready` (no auth), and the JSON API under `/api/v1` that the
//! CLI client uses. Handlers parse input, call one supervisor method, and map the result; they
//! hold no PIDs, terminals or SQL.

mod api;
pub mod error;
pub mod guard;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::supervisor::Supervisor;

#[derive(Clone)]
pub struct AppState {
    pub sup: Supervisor,
    pub cfg: Arc<Config>,
    pub started: Instant,
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
        .route("/events", get(api::events))
        .layer(axum::middleware::from_fn_with_state(
            state.cfg.clone(),
            guard::middleware,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .nest("/api/v1", api)
        .with_state(state)
}

/// Liveness and a summary; reveals no names, commands or secrets.
async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    let counts = st.sup.counts();
    let live: usize = counts.values().sum();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "instances": { "live": live, "by_state": counts },
        "max_instances": st.cfg.limits.max_instances,
    }))
}

async fn ready() -> Json<serde_json::Value> {
    Json(json!({ "ready": true }))
}
