//! The HTTP API: `router(state) -> Router`, one file per resource, one error type.
//! The API never sends: it records events and profiles and nudges the scheduler.

mod customers;
pub mod error;
pub mod events;
pub mod extract;
mod health;
mod inbound;
mod kannel;
pub mod routes;
mod unsubscribe;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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

/// The whole API: the routes of [`routes::table`], the bearer token in front of those that
/// need it, and JSON errors for unknown paths and methods.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let table = routes::table();
    // The 405 of a route behind the token is behind it too: without the token, a wrong
    // method is a 401 like a right one.
    let token = table
        .token
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    table
        .open
        .merge(token)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(
            move |mut req: Request, next: Next| async move {
                // A declared length over the limit is refused before anything is read, and
                // before hyper tells an `Expect: 100-continue` client to send it all.
                let declared = req
                    .headers()
                    .get(axum::http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > limit as u64) {
                    // The body is left unread, so the connection cannot carry another request.
                    let mut response = ApiError::BodyTooLarge(limit).into_response();
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    return response;
                }
                req.extensions_mut().insert(BodyLimit(limit));
                next.run(req).await
            },
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// No route has the path.
async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

/// The path has routes, none for the method (axum adds the `Allow` header).
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Refuses requests without the configured bearer token.
async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.token {
        // Exactly one `Authorization` header: with two, a proxy in front could check a
        // different one than this.
        let mut all = req.headers().get_all(AUTHORIZATION).iter();
        let given = match (all.next(), all.next()) {
            (Some(value), None) => value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default(),
            _ => "",
        };
        if given.is_empty() || !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(req).await)
}

/// Compares secrets in time that depends on their lengths only, not on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
