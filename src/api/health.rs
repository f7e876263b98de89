//! `GET /healthz` and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};

/// The OpenAPI document, kept beside the code it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// 200 `{"status": "ok"}` when the database answers and takes writes; 503 `{"status":
/// "cannot write", "detail": …}` with `Retry-After` while writes fail (disk full, locked),
/// turning good by itself once they work again.
pub(super) async fn healthz(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.store.ping().await?;
    match state.store.write_health().await {
        Ok(()) => Ok(Json(json!({ "status": "ok" })).into_response()),
        Err(reason) => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, super::error::RETRY_AFTER_SECONDS.to_string())],
            Json(json!({ "status": "cannot write", "detail": reason })),
        )
            .into_response()),
    }
}

/// `GET /v1/openapi.json`.
pub(super) async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}
