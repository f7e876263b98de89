//! `/v1/workflows`: list, inspect, pause and resume.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::extract::Path;
use super::{ApiError, AppState};
use crate::workflow::{Trigger, Workflow};

fn trigger_kind(wf: &Workflow) -> &'static str {
    match &wf.trigger.value {
        Trigger::Event(_) => "event",
        Trigger::SegmentEntered(_) => "segment_entered",
        Trigger::SegmentExited(_) => "segment_exited",
        Trigger::Schedule(_) => "schedule",
        Trigger::DateAttribute(_) => "date_attribute",
    }
}

async fn summary(state: &AppState, wf: &Workflow) -> Result<Value, ApiError> {
    let paused = state.store.paused().await?.contains(wf.id.as_str());
    let active = state
        .store
        .active_counts()
        .await?
        .into_iter()
        .find(|(id, _)| id == wf.id.as_str())
        .map_or(0, |(_, n)| n);
    Ok(json!({
        "id": wf.id,
        "name": wf.name,
        "description": wf.description,
        "version": wf.source.version,
        "category": wf.category,
        "trigger": trigger_kind(wf),
        "paused": paused,
        "active_enrollments": active,
    }))
}

/// Every current workflow.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for wf in state.catalog.current() {
        out.push(summary(&state, wf).await?);
    }
    Ok(Json(Value::Array(out)))
}

/// One workflow with its nodes.
pub(super) async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let wf = state
        .catalog
        .get(&id)
        .ok_or_else(|| ApiError::UnknownWorkflow(id.clone()))?;
    let mut body = summary(&state, wf).await?;
    body["start"] = json!(wf.start.value);
    body["nodes"] = wf
        .nodes
        .iter()
        .map(|(id, node)| json!({ "id": id, "kind": node.kind(), "next": node.edges() }))
        .collect();
    Ok(Json(body))
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    if state.catalog.get(id).is_none() {
        return Err(ApiError::UnknownWorkflow(id.to_owned()));
    }
    let mut tx = state.store.begin().await?;
    if !tx.set_paused(id, paused).await? {
        return Err(ApiError::UnknownWorkflow(id.to_owned()));
    }
    tx.commit().await?;
    tracing::info!(workflow.id = %id, paused, "Workflow pause state changed.");
    state.nudge.notify_one();
    Ok(Json(json!({ "id": id, "paused": paused })))
}

/// No new entries and no sends; waiting customers stay where they are.
pub(super) async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &id, true).await
}

/// Undoes a pause.
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &id, false).await
}
