//! `/kannel/dlr`: delivery reports from a Kannel gateway. The URL carries the message key
//! and a signature of it, so only reports for messages Trellis sent are taken.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::extract::Query;
use super::{ApiError, AppState};
use crate::channels::sms_kannel::dlr_status;

/// The callback's query: Kannel fills in `status`.
#[derive(Debug, Deserialize)]
pub(super) struct Report {
    key: String,
    sig: String,
    status: u32,
}

/// Records the report on the message.
pub(super) async fn report(
    State(state): State<AppState>,
    Query(report): Query<Report>,
) -> Result<StatusCode, ApiError> {
    if !crate::unsubscribe::verify_value(&state.unsubscribe_key, "dlr", &report.key, &report.sig) {
        return Err(ApiError::BadSignature);
    }
    let (status, meaning) = dlr_status(report.status);
    let mut tx = state.store.begin().await?;
    let known = tx
        .record_delivery_report(&report.key, status, meaning, state.clock.now())
        .await?;
    tx.commit().await?;
    if known {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::UnknownMessage(report.key))
    }
}
