//! `POST /v1/events` and `POST /v1/events/batch`: record events, nothing half-written.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{Body, parse_json};
use super::{ApiError, AppState, MAX_BATCH};
use crate::model::{CustomerId, Event, EventId, Properties};
use crate::store::Inserted;

/// An event as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Makes a retry idempotent.
    pub id: Option<EventId>,
    /// Whose event; an unknown customer gets a minimal profile.
    pub customer_id: CustomerId,
    /// Such as `signup`.
    pub name: String,
    /// Free properties.
    #[serde(default)]
    pub properties: Properties,
    /// When it happened; default: when it arrived.
    #[serde(default, deserialize_with = "rfc3339")]
    pub timestamp: Option<Timestamp>,
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "timestamp {text:?} is not RFC 3339, such as \"2026-03-02T15:00:00Z\""
        ))
    })
}

impl EventIn {
    /// Checks the name and makes the event.
    ///
    /// # Errors
    /// An invalid-field error naming the problem.
    pub fn into_event(self, now: Timestamp) -> Result<(CustomerId, Event), ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(ApiError::InvalidField(
                "name must hold 1 to 100 characters".into(),
            ));
        }
        if name.starts_with('$') {
            return Err(ApiError::InvalidField(format!(
                "name {name:?}: names starting with '$' are reserved"
            )));
        }
        Ok((
            self.customer_id,
            Event {
                id: self.id,
                name: name.to_owned(),
                timestamp: self.timestamp.unwrap_or(now),
                properties: self.properties,
            },
        ))
    }
}

async fn store_events(
    state: &AppState,
    events: &[(CustomerId, Event)],
) -> Result<Vec<Inserted>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let mut results = Vec::with_capacity(events.len());
    for (customer, event) in events {
        results.push(tx.insert_event(customer, event, now).await?);
    }
    tx.commit().await?;
    state.nudge.notify_one();
    Ok(results)
}

/// One event: 202 when accepted, 200 when its id was seen before.
pub(super) async fn post_one(
    State(state): State<AppState>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let event = parse_json::<EventIn>(&body)?.into_event(state.clock.now())?;
    let inserted = store_events(&state, &[event]).await?[0];
    let status = match inserted {
        Inserted::Accepted => StatusCode::ACCEPTED,
        Inserted::Duplicate => StatusCode::OK,
    };
    Ok((status, Json(json!({ "status": inserted }))))
}

/// Up to [`MAX_BATCH`] events as a JSON array or NDJSON (`Content-Type:
/// application/x-ndjson`). Every event is checked before any is stored.
pub(super) async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ndjson = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/x-ndjson") || v.starts_with("application/jsonl")
        });
    let raw: Vec<Value> = if ndjson {
        body.split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| {
                serde_json::from_slice(line)
                    .map_err(|e| ApiError::from_json(&e, &format!("line {}", i + 1)))
            })
            .collect::<Result<_, _>>()?
    } else {
        parse_json(&body)?
    };
    if raw.len() > MAX_BATCH {
        return Err(ApiError::InvalidField(format!(
            "a batch holds at most {MAX_BATCH} events, not {}",
            raw.len()
        )));
    }
    let now = state.clock.now();
    let events = raw
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            serde_json::from_value::<EventIn>(value)
                .map_err(|e| ApiError::InvalidField(format!("event {i}: {e}")))
                .and_then(|e| {
                    e.into_event(now)
                        .map_err(|err| ApiError::InvalidField(format!("event {i}: {err}")))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = store_events(&state, &events).await?;
    let accepted = results.iter().filter(|r| **r == Inserted::Accepted).count();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": accepted, "duplicates": results.len() - accepted })),
    ))
}
