//! The API's one error type and its table of statuses and stable codes. Bodies are
//! `{"error": "<code>", "detail": "<sentence>"}`; a 5xx logs its cause and tells the
//! client nothing internal.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::store;

/// Everything an API call can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A field is missing or wrong.
    #[error("{0}")]
    InvalidField(String),
    /// The body is larger than the limit.
    #[error("the body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// No or a wrong bearer token.
    #[error("a valid bearer token is required: Authorization: Bearer <token>")]
    Unauthorized,
    /// A signed callback (a Kannel delivery report) whose signature does not match.
    #[error("the signature does not match the key: use the callback URL Trellis gave the gateway")]
    BadSignature,
    /// No or wrong Basic credentials on a webhook that takes them (inbound SMS).
    #[error("valid Basic credentials are required: the user twilio and the API token as password")]
    BasicUnauthorized,
    /// No such customer.
    #[error("no customer with id {0:?}")]
    UnknownCustomer(String),
    /// No such workflow.
    #[error("no workflow named {0:?}")]
    UnknownWorkflow(String),
    /// A delivery report for a message Trellis does not know.
    #[error("no message with key {0:?}")]
    UnknownMessage(String),
    /// A path segment did not decode (such as `%FF`, which is not UTF-8).
    #[error("the path is not valid: {0}")]
    InvalidPath(String),
    /// The query string is missing a parameter or has a wrong one.
    #[error("the query string is not valid: {0}")]
    InvalidQuery(String),
    /// No route has this path.
    #[error("no such endpoint: {0}; GET /v1/openapi.json lists them")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method {method} is not allowed on {path}; the Allow header lists those that are")]
    MethodNotAllowed {
        /// The refused method.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// The database cannot take this now (disk full, locked by another process, no
    /// connection in time) but will again by itself: 503 with `Retry-After`.
    #[error(
        "the database cannot take this request now (disk full or locked); retry after {RETRY_AFTER_SECONDS} s — resending is harmless, events with an id are stored once"
    )]
    Unavailable(store::Error),
    /// The store failed.
    #[error("internal error")]
    Internal(store::Error),
}

/// What a 503 asks the client to wait, in seconds (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 2;

impl From<store::Error> for ApiError {
    fn from(err: store::Error) -> Self {
        if err.is_unavailable() {
            ApiError::Unavailable(err)
        } else {
            ApiError::Internal(err)
        }
    }
}

impl ApiError {
    /// The status and the stable code of each variant.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidField(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Unauthorized | ApiError::BasicUnauthorized | ApiError::BadSignature => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ApiError::UnknownCustomer(_) => (StatusCode::NOT_FOUND, "unknown_customer"),
            ApiError::UnknownWorkflow(_) => (StatusCode::NOT_FOUND, "unknown_workflow"),
            ApiError::UnknownMessage(_) => (StatusCode::NOT_FOUND, "unknown_message"),
            ApiError::InvalidPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Maps a serde error on a JSON body: syntax errors are malformed JSON, the rest name a field.
    pub fn from_json(err: &serde_json::Error, context: &str) -> Self {
        let prefix = if context.is_empty() {
            String::new()
        } else {
            format!("{context}: ")
        };
        if err.is_syntax() || err.is_eof() {
            ApiError::MalformedJson(format!("{prefix}{err}"))
        } else {
            ApiError::InvalidField(format!("{prefix}{err}"))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(err) => {
                tracing::error!(error = %crate::scheduler::error_chain(err), "Request failed.");
            }
            ApiError::Unavailable(err) => {
                tracing::warn!(error = %crate::scheduler::error_chain(err), "Request refused for now: the database cannot take it.");
            }
            _ => {}
        }
        let mut response = (
            status,
            Json(json!({ "error": code, "detail": self.to_string() })),
        )
            .into_response();
        // Twilio sends Basic credentials only after a challenge that asks for them; a
        // signature is no credential a client could be challenged for.
        let challenge = match self {
            ApiError::Unauthorized => Some("Bearer"),
            ApiError::BasicUnauthorized => Some("Basic realm=\"trellis\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// The raw body, refused with a JSON error when it is over the limit.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|_| ApiError::BodyTooLarge(limit))
    }
}

/// The body limit in force, put into request extensions so errors can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Parses a JSON body.
///
/// # Errors
/// Malformed JSON or an invalid field, with serde's words (which name the field).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_and_stable_code() {
        let table = [
            (ApiError::MalformedJson("x".into()), 400, "malformed_json"),
            (ApiError::InvalidField("x".into()), 422, "invalid_field"),
            (ApiError::BodyTooLarge(10), 413, "body_too_large"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::BasicUnauthorized, 401, "unauthorized"),
            (ApiError::BadSignature, 401, "unauthorized"),
            (
                ApiError::UnknownCustomer("c".into()),
                404,
                "unknown_customer",
            ),
            (
                ApiError::UnknownWorkflow("w".into()),
                404,
                "unknown_workflow",
            ),
            (ApiError::UnknownMessage("k".into()), 404, "unknown_message"),
            (ApiError::InvalidPath("x".into()), 400, "invalid_path"),
            (ApiError::InvalidQuery("x".into()), 400, "invalid_query"),
            (ApiError::NotFound("/x".into()), 404, "not_found"),
            (
                ApiError::MethodNotAllowed {
                    method: "PUT".into(),
                    path: "/x".into(),
                },
                405,
                "method_not_allowed",
            ),
        ];
        for (err, status, code) in table {
            assert_eq!(
                err.status_and_code(),
                (StatusCode::from_u16(status).unwrap(), code)
            );
        }
    }

    #[test]
    fn a_busy_store_is_a_503_with_retry_after_and_other_failures_a_500() {
        // Every error that passes by itself (`store::Error::is_unavailable`, tested in the
        // store on a really locked file) is a 503.
        let busy = ApiError::from(store::Error::Busy("x"));
        assert_eq!(
            busy.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        let response = busy.into_response();
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "2");
        let broken = ApiError::from(store::Error::Constraint("x".into()));
        assert_eq!(
            broken.status_and_code(),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        assert!(
            !broken
                .into_response()
                .headers()
                .contains_key(axum::http::header::RETRY_AFTER)
        );
    }
}
