//! `/v1/customers/{id}`: create or replace, merge, read, erase.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::{Body, parse_json};
use super::extract::Path;
use super::{ApiError, AppState};
use crate::model::{Customer, CustomerId, CustomerPatch};

fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::InvalidField(format!("id: {e}")))
}

/// Checks and normalises contact fields.
fn check(customer: Customer) -> Result<Customer, ApiError> {
    customer
        .normalise_contacts()
        .map_err(ApiError::InvalidField)
}

async fn profile_updated(
    tx: &mut crate::store::Tx,
    id: &CustomerId,
    now: jiff::Timestamp,
) -> Result<(), ApiError> {
    let event = crate::model::Event::profile_updated(now);
    tx.insert_event(id, &event, now).await?;
    Ok(())
}

/// `PUT`: the body is the whole profile (without `id`, or with the same `id`).
pub(super) async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = customer_id(&id)?;
    let mut value: Value = parse_json(&body)?;
    let Some(map) = value.as_object_mut() else {
        return Err(ApiError::InvalidField(
            "the body must be a JSON object".into(),
        ));
    };
    match map.get("id") {
        None => {
            map.insert("id".into(), Value::String(id.to_string()));
        }
        Some(Value::String(given)) if given == id.as_str() => {}
        Some(_) => {
            return Err(ApiError::InvalidField(
                "id in the body differs from the id in the path".into(),
            ));
        }
    }
    let customer = check(
        serde_json::from_value::<Customer>(value)
            .map_err(|e| ApiError::InvalidField(e.to_string()))?,
    )?;
    let mut tx = state.store.begin().await?;
    let existed = tx.customer(&id).await?.is_some();
    tx.put_customer(&customer, state.clock.now()).await?;
    profile_updated(&mut tx, &id, state.clock.now()).await?;
    tx.commit().await?;
    state.nudge.notify_one();
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!(customer))))
}

/// `PATCH`: merges into an existing profile.
pub(super) async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let id = customer_id(&id)?;
    let patch: CustomerPatch = parse_json(&body)?;
    let mut tx = state.store.begin().await?;
    let customer = tx
        .customer(&id)
        .await?
        .ok_or_else(|| ApiError::UnknownCustomer(id.to_string()))?;
    let customer = patch.apply(customer).map_err(ApiError::InvalidField)?;
    tx.put_customer(&customer, state.clock.now()).await?;
    profile_updated(&mut tx, &id, state.clock.now()).await?;
    tx.commit().await?;
    state.nudge.notify_one();
    Ok(Json(json!(customer)))
}

/// `GET`: profile, consent, recent events, enrollments and messages.
pub(super) async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = customer_id(&id)?;
    let customer = state
        .store
        .customer(&id)
        .await?
        .ok_or_else(|| ApiError::UnknownCustomer(id.to_string()))?;
    let events = state.store.recent_events(&id, 20).await?;
    let enrollments = state.store.enrollments_of(&id).await?;
    let messages = state.store.messages_of(&id).await?;
    let conversions = state.store.conversions_of(&id).await?;
    Ok(Json(json!({
        "customer": customer,
        "recent_events": events,
        "enrollments": enrollments,
        "messages": messages,
        "conversions": conversions,
    })))
}

/// `DELETE`: erases personal data and pending messages; anonymous counts stay.
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = customer_id(&id)?;
    let mut tx = state.store.begin().await?;
    let existed = tx.erase_customer(&id, state.clock.now()).await?;
    tx.commit().await?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::UnknownCustomer(id.to_string()))
    }
}
