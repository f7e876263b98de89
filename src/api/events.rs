//! `POST /v1/events` and `POST /v1/events/batch`: record events, nothing half-written.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::warn;

use super::error::{Body, parse_json};
use super::{ApiError, AppState, MAX_BATCH};
use crate::model::{CustomerId, Event, EventId, Properties};
use crate::store::{Inserted, Store};

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
    let refs: Vec<(&CustomerId, &Event)> = events.iter().map(|(c, e)| (c, e)).collect();
    let results = tx.insert_events(&refs, now).await?;
    tx.commit().await?;
    crate::crash_point::crash_point("after_event_insert");
    state.nudge.notify_one();
    Ok(results)
}

/// Group commit for `POST /v1/events`: events posted one by one at the same time are
/// stored in one transaction, each request answered once that transaction has committed.
/// A lone request is written at once; under load, the requests that arrive while one group
/// commits form the next, so concurrent clients are not held to one commit each.
#[derive(Debug, Clone)]
pub struct EventQueue(mpsc::UnboundedSender<Queued>);

#[derive(Debug)]
struct Queued {
    customer: CustomerId,
    event: Event,
    now: Timestamp,
    reply: oneshot::Sender<Result<Inserted, GroupFailed>>,
}

/// Why a group's transaction stored nothing.
#[derive(Debug, Clone)]
enum GroupFailed {
    /// The database cannot take writes now (disk full, locked): every request of the group
    /// is answered 503 at once. Retrying each alone would only wait out the same lock again,
    /// doubling how long a client waits for its 503.
    Unavailable(String),
    /// Anything else: each request is retried alone, so that its answer is its own error.
    Other,
}

impl EventQueue {
    /// Starts the writer task; it ends when the last clone of the queue is dropped.
    pub fn start(store: Store, nudge: Arc<Notify>) -> Self {
        let (sender, mut queued) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            let mut group = Vec::new();
            while queued.recv_many(&mut group, MAX_BATCH).await > 0 {
                let results = match write_group(&store, &group).await {
                    Ok(results) => {
                        nudge.notify_one();
                        Ok(results)
                    }
                    Err(err) if err.is_unavailable() => {
                        let reason = crate::scheduler::error_chain(&err);
                        warn!(error = %reason, events = group.len(),
                            "Storing a group of events failed for now; each is answered 503.");
                        Err(GroupFailed::Unavailable(reason))
                    }
                    Err(err) => {
                        warn!(error = %crate::scheduler::error_chain(&err), events = group.len(),
                            "Storing a group of events failed; each is retried alone.");
                        Err(GroupFailed::Other)
                    }
                };
                for (i, q) in group.drain(..).enumerate() {
                    let _ = q.reply.send(match &results {
                        Ok(inserted) => Ok(inserted[i]),
                        Err(failed) => Err(failed.clone()),
                    });
                }
            }
        });
        Self(sender)
    }

    /// Stores one event with whatever else is queued.
    async fn insert(
        &self,
        customer: CustomerId,
        event: Event,
        now: Timestamp,
    ) -> Result<Inserted, GroupFailed> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Queued {
                customer,
                event,
                now,
                reply,
            })
            .map_err(|_| GroupFailed::Other)?;
        answer.await.unwrap_or(Err(GroupFailed::Other))
    }
}

async fn write_group(
    store: &Store,
    group: &[Queued],
) -> Result<Vec<Inserted>, crate::store::Error> {
    let mut tx = store.begin().await?;
    // One `now` for the group: the last to arrive, so no event is received before it came.
    let now = group
        .iter()
        .map(|q| q.now)
        .max()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let refs: Vec<(&CustomerId, &Event)> = group.iter().map(|q| (&q.customer, &q.event)).collect();
    let results = tx.insert_events(&refs, now).await?;
    tx.commit().await?;
    crate::crash_point::crash_point("after_event_insert");
    Ok(results)
}

/// One event: 202 when accepted, 200 when its id was seen before.
pub(super) async fn post_one(
    State(state): State<AppState>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = state.clock.now();
    let (customer, event) = parse_json::<EventIn>(&body)?.into_event(now)?;
    let inserted = match state
        .events
        .insert(customer.clone(), event.clone(), now)
        .await
    {
        Ok(inserted) => inserted,
        Err(GroupFailed::Unavailable(reason)) => {
            return Err(ApiError::Unavailable(
                crate::store::Error::SharedUnavailable(reason),
            ));
        }
        // Alone, so that the answer is this event's own error if there is one.
        Err(GroupFailed::Other) => store_events(&state, &[(customer, event)]).await?[0],
    };
    let status = match inserted {
        Inserted::Accepted => StatusCode::ACCEPTED,
        Inserted::Duplicate => StatusCode::OK,
    };
    Ok((status, Json(json!({ "status": inserted }))))
}

/// The events of a batch body, each checked, in order: a JSON array of events, or NDJSON
/// (one event a line, blank lines skipped) when `ndjson` is set. Pure: nothing is stored.
///
/// # Errors
/// Malformed JSON (naming the NDJSON line), more than [`MAX_BATCH`] events, or an invalid
/// event (naming its index).
pub fn parse_batch(
    body: &[u8],
    ndjson: bool,
    now: Timestamp,
) -> Result<Vec<(CustomerId, Event)>, ApiError> {
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
        parse_json(body)?
    };
    if raw.len() > MAX_BATCH {
        return Err(ApiError::InvalidField(format!(
            "a batch holds at most {MAX_BATCH} events, not {}",
            raw.len()
        )));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, value)| {
            serde_json::from_value::<EventIn>(value)
                .map_err(|e| ApiError::InvalidField(format!("event {i}: {e}")))
                .and_then(|e| {
                    e.into_event(now)
                        .map_err(|err| ApiError::InvalidField(format!("event {i}: {err}")))
                })
        })
        .collect()
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
    let events = parse_batch(&body, ndjson, state.clock.now())?;
    let results = store_events(&state, &events).await?;
    let accepted = results.iter().filter(|r| **r == Inserted::Accepted).count();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": accepted, "duplicates": results.len() - accepted })),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::OpenOptions;

    /// A lone event posted while another connection holds the write lock is answered 503
    /// after one wait for the lock, not after waiting it out once in its group and again
    /// alone (it was: 2 × `lock_wait`).
    #[tokio::test]
    async fn a_locked_database_answers_a_single_event_after_one_wait_not_two() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let lock_wait = Duration::from_secs(1);
        let store = Store::open(
            &format!("sqlite://{}", path.display()),
            OpenOptions {
                gate_wait: lock_wait,
                lock_wait,
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();
        let nudge = Arc::new(Notify::new());
        let state = AppState {
            events: EventQueue::start(store.clone(), Arc::clone(&nudge)),
            store,
            catalog: Arc::default(),
            clock: Arc::new(ManualClock::new("2026-03-02T15:00:00Z".parse().unwrap())),
            nudge,
            token: None,
            max_body_bytes: 1 << 20,
            unsubscribe_key: Arc::from(&b"key"[..]),
        };
        let locker = crate::store::testing::Locker::lock(&path).await;

        let body = Body(br#"{"customer_id":"c1","name":"signup"}"#.to_vec().into());
        // One wait is 1 s; two would be 2 s. The margin is for a loaded machine.
        let answer =
            tokio::time::timeout(lock_wait.mul_f32(1.7), post_one(State(state.clone()), body))
                .await
                .expect("the 503 comes after one wait for the lock");
        let err = answer.expect_err("a locked database stores nothing");
        assert_eq!(err.status_and_code().1, "unavailable", "{err:?}");

        locker.release().await;
        let body = Body(br#"{"customer_id":"c1","name":"signup"}"#.to_vec().into());
        let (status, _) = post_one(State(state), body).await.unwrap();
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "once the lock goes, the event is stored"
        );
    }
}
