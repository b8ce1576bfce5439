//! `/api/v1` handlers.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::AppState;
use crate::model::SpawnRequest;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q?;
    Ok(Json(st.sup.list(q.all).await?))
}

pub async fn spawn(
    State(st): State<AppState>,
    body: Result<Json<SpawnRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(req) = body?;
    let info = st.sup.spawn(req).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn get_instance(
    State(st): State<AppState>,
    Path(r): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.sup.get(&r).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    text: String,
    #[serde(default = "yes")]
    enter: bool,
    #[serde(default)]
    wait: bool,
    timeout_s: Option<f64>,
}

fn yes() -> bool {
    true
}

fn timeout(t: Option<f64>) -> Result<Duration, ApiError> {
    let t = t.unwrap_or(30.0);
    if !(t.is_finite() && (0.0..=300.0).contains(&t)) {
        return Err(ApiError::bad_request(format!(
            "timeout_s = {t}: must be between 0 and 300"
        )));
    }
    Ok(Duration::from_secs_f64(t))
}

pub async fn send(
    State(st): State<AppState>,
    Path(r): Path<String>,
    body: Result<Json<SendBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(b) = body?;
    let wait = timeout(b.timeout_s)?;
    let turn = st.sup.send(&r, b.text, b.enter).await?;
    if !b.wait {
        return Ok(Json(json!({ "turn": turn })));
    }
    let outcome = st.sup.wait_turn(&r, turn, wait).await?;
    Ok(Json(json!({ "turn": turn, "outcome": outcome })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout_s: Option<f64>,
}

pub async fn wait_turn(
    State(st): State<AppState>,
    Path((r, turn)): Path<(String, u64)>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q?;
    Ok(Json(
        st.sup.wait_turn(&r, turn, timeout(q.timeout_s)?).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    bytes: Option<usize>,
    lines: Option<usize>,
    #[serde(default = "yes")]
    strip: bool,
}

pub async fn output(
    State(st): State<AppState>,
    Path(r): Path<String>,
    q: Result<Query<OutputQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q?;
    let bytes = q.bytes.unwrap_or(64 * 1024);
    Ok(Json(st.sup.output(&r, bytes, q.lines, q.strip).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail_bytes: Option<usize>,
}

/// Raw output as a byte stream: the tail, then (with `follow`) everything that follows until
/// the instance ends.
pub async fn logs(
    State(st): State<AppState>,
    Path(r): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let mut f = st.sup.follow(&r, q.tail_bytes.unwrap_or(64 * 1024)).await?;
    let tail = bytes::Bytes::from(std::mem::take(&mut f.tail));
    let rx = if q.follow { f.chunks.take() } else { None };
    let catcher = f.catcher();
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(tail) });
    let body = match rx {
        None => Body::from_stream(head),
        Some(rx) => {
            let state = (rx, f.from, catcher);
            let rest = futures::stream::unfold(state, |(mut rx, mut from, catcher)| async move {
                loop {
                    match rx.recv().await {
                        Ok(c) => {
                            let end = c.offset + c.data.len() as u64;
                            if end <= from {
                                continue;
                            }
                            let skip = from.saturating_sub(c.offset) as usize;
                            from = end;
                            return Some((Ok(c.data.slice(skip..)), (rx, from, catcher)));
                        }
                        // Fell behind the chunk channel: catch up from the output ring, and
                        // say so only when the ring too has dropped what was missed.
                        Err(RecvError::Lagged(n)) => {
                            tracing::debug!(
                                chunks = n,
                                "a follower fell behind; catching up from the ring"
                            );
                            let Some((start, data)) = catcher.catch_up(from) else {
                                continue;
                            };
                            let mut out = Vec::new();
                            if start > from {
                                out.extend_from_slice(
                                    format!("\n[corral: {} output bytes skipped: the reader was too slow]\n", start - from)
                                        .as_bytes(),
                                );
                            }
                            from = start + data.len() as u64;
                            out.extend_from_slice(&data);
                            return Some((Ok(bytes::Bytes::from(out)), (rx, from, catcher)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            });
            use futures::StreamExt;
            Body::from_stream(head.chain(rest))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenQuery {
    lines: Option<u32>,
}

pub async fn screen(
    State(st): State<AppState>,
    Path(r): Path<String>,
    q: Result<Query<ScreenQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q?;
    let lines = q.lines.unwrap_or(200).clamp(1, 10_000);
    Ok(Json(json!({ "screen": st.sup.screen(&r, lines).await? })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    grace_s: Option<f64>,
    #[serde(default = "yes")]
    wait: bool,
    /// Stop the whole subtree, deepest first (always waits).
    #[serde(default)]
    cascade: bool,
}

pub async fn stop(
    State(st): State<AppState>,
    Path(r): Path<String>,
    body: Option<Json<StopBody>>,
) -> ApiResult<impl IntoResponse> {
    let b = body.map(|Json(b)| b).unwrap_or(StopBody {
        grace_s: None,
        wait: true,
        cascade: false,
    });
    if b.cascade {
        let (info, below) = st.sup.terminate_tree(&r, b.grace_s).await?;
        let mut v = serde_json::to_value(info).unwrap_or_default();
        v["cascade"] = json!(below);
        return Ok(Json(v));
    }
    Ok(Json(
        serde_json::to_value(st.sup.stop(&r, b.grace_s, b.wait).await?).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    cols: u16,
    rows: u16,
}

pub async fn resize(
    State(st): State<AppState>,
    Path(r): Path<String>,
    body: Result<Json<ResizeBody>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(b) = body?;
    st.sup.resize(&r, b.cols, b.rows).await?;
    Ok(Json(json!({ "cols": b.cols, "rows": b.rows })))
}

pub async fn resume(
    State(st): State<AppState>,
    Path(r): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(
            st.sup
                .resume(&crate::supervisor::Caller::Operator, &r)
                .await?,
        ),
    ))
}

pub async fn interrupt(
    State(st): State<AppState>,
    Path(r): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.sup.interrupt(&r).await?))
}

pub async fn attach(
    State(st): State<AppState>,
    Path(r): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(st.sup.attach(&r).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    instance: Option<String>,
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

pub async fn events(
    State(st): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q?;
    Ok(Json(
        st.sup
            .events(q.instance.as_deref(), q.after, q.limit.unwrap_or(1000))
            .await?,
    ))
}
