//! The HTTP API: `router(state) -> Router`, one file per resource, one error type.
//! The API never sends: it records events and profiles and nudges the scheduler.

mod customers;
pub mod error;
pub mod events;
mod health;
mod inbound;
mod kannel;
mod unsubscribe;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Secret;
use crate::scheduler::Catalog;
use crate::store::Store;
pub use error::ApiError;
use error::BodyLimit;

/// The most events one batch request may carry.
pub const MAX_BATCH: usize = 1000;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The workflows.
    pub catalog: Arc<Catalog>,
    /// The clock, for events without a timestamp.
    pub clock: Arc<dyn Clock>,
    /// Wakes the scheduler when an event arrives.
    pub nudge: Arc<Notify>,
    /// The bearer token; `None` only when serving without auth on loopback.
    pub token: Option<Secret>,
    /// The body limit in bytes.
    pub max_body_bytes: usize,
    /// The key unsubscribe tokens are signed with.
    pub unsubscribe_key: Arc<[u8]>,
    /// Single events, group-committed.
    pub events: events::EventQueue,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let v1 = Router::new()
        .route("/events", post(events::post_one))
        .route("/events/batch", post(events::post_batch))
        .route(
            "/customers/{id}",
            get(customers::get_one)
                .put(customers::put)
                .patch(customers::patch)
                .delete(customers::delete),
        )
        .route("/bounces", post(inbound::bounce))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{id}", get(workflows::get_one))
        .route("/workflows/{id}/pause", post(workflows::pause))
        .route("/workflows/{id}/resume", post(workflows::resume))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/openapi.json", get(health::openapi));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/kannel/dlr", get(kannel::report).post(kannel::report))
        .route("/sms/inbound", post(inbound::sms))
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe::confirm).post(unsubscribe::unsubscribe),
        )
        .nest("/v1", v1)
        .layer(middleware::from_fn(
            move |mut req: Request, next: Next| async move {
                req.extensions_mut().insert(BodyLimit(limit));
                next.run(req).await
            },
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Refuses requests without the configured bearer token.
async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(req).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
