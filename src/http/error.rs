//! One mapping from supervisor errors to HTTP statuses and a JSON body `{error, code}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::supervisor::SupervisorError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: message.into(),
        }
    }
}

impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> ApiError {
        let (status, code) = match &e {
            SupervisorError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            SupervisorError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            SupervisorError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            SupervisorError::LimitReached(_) => (StatusCode::TOO_MANY_REQUESTS, "limit_reached"),
            SupervisorError::SpawnFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "spawn_failed"),
            SupervisorError::State(_) => (StatusCode::CONFLICT, "invalid_state"),
            SupervisorError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "backend"),
            SupervisorError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            SupervisorError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> ApiError {
        ApiError::bad_request(format!("invalid request body: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}
