//! The dispatcher: claims due outbox messages, delivers them concurrently within each
//! channel's limit, and records every attempt. [`drain`] does one round; [`run`] waits
//! between rounds.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use super::Channels;
use super::retry::RetryPolicy;
use crate::clock::Clock;
use crate::store::{self, AttemptOutcome, Store};

/// What the dispatcher works with.
#[derive(Debug, Clone)]
pub struct DispatchCtx {
    /// The database.
    pub store: Store,
    /// The channels.
    pub channels: Arc<Channels>,
    /// When to retry.
    pub policy: RetryPolicy,
    /// Messages claimed per round.
    pub batch_size: u32,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Accepted by the provider.
    pub sent: usize,
    /// Failed, to be retried.
    pub retried: usize,
    /// Failed for good.
    pub failed: usize,
}

impl DrainReport {
    /// Messages attempted.
    pub fn attempted(&self) -> usize {
        self.sent + self.retried + self.failed
    }
}

/// Claims the messages due at `now`, delivers them concurrently, and records each outcome
/// as soon as its attempt ends — so a crash re-sends only what was on the wire, never a
/// message whose success was already known.
///
/// # Errors
/// A database error. Claimed messages whose outcome was not recorded stay `sending` and are
/// released at the next start.
pub async fn drain(ctx: &DispatchCtx, now: Timestamp) -> Result<DrainReport, store::Error> {
    let claimed = ctx.store.claim_messages(now, ctx.batch_size).await?;
    let mut report = DrainReport::default();
    let mut deliveries = JoinSet::new();
    for message in claimed {
        let ctx = ctx.clone();
        let span =
            info_span!("deliver", message.key = %message.key, workflow.id = %message.workflow_id);
        deliveries.spawn(
            async move {
                // Held until the outcome is recorded: see `Channels::limit_for`.
                let Ok(_permit) = ctx
                    .channels
                    .limit_for(&message.payload)
                    .clone()
                    .acquire_owned()
                    .await
                else {
                    return Ok(AttemptOutcome::Retry {
                        next_attempt_at: now,
                        reason: "shutting down".into(),
                    });
                };
                let attempt = message.attempts + 1;
                let outcome = match ctx.channels.deliver(&message).await {
                    Ok(delivered) => AttemptOutcome::Sent {
                        provider_id: delivered.provider_id,
                    },
                    Err(err) => {
                        ctx.policy
                            .decide(&message.key, attempt, message.created_at, &err, now)
                    }
                };
                match &outcome {
                    AttemptOutcome::Sent { .. } => {}
                    AttemptOutcome::Retry { reason, .. } => {
                        warn!(attempt, reason, "Delivery failed; will retry.")
                    }
                    AttemptOutcome::Failed { reason } => {
                        error!(attempt, reason, "Delivery failed for good.")
                    }
                }
                let recorded = ctx
                    .store
                    .record_attempts(&[(message.key, attempt, outcome.clone())], now)
                    .await;
                recorded.map(|()| outcome)
            }
            .instrument(span),
        );
    }
    let mut first_error = None;
    while let Some(joined) = deliveries.join_next().await {
        // A panicked delivery stays `sending` and is retried after restart.
        let Ok(result) = joined else { continue };
        match result {
            Ok(AttemptOutcome::Sent { .. }) => report.sent += 1,
            Ok(AttemptOutcome::Retry { .. }) => report.retried += 1,
            Ok(AttemptOutcome::Failed { .. }) => report.failed += 1,
            Err(err) => first_error = first_error.or(Some(err)),
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(report),
    }
}

/// Drains until `shutdown`. A round in progress finishes (its attempts are recorded)
/// before the loop stops.
pub async fn run(
    ctx: DispatchCtx,
    clock: Arc<dyn Clock>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    const MAX_SLEEP: Duration = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let now = clock.now();
        let sleep = match drain(&ctx, now).await {
            Ok(report) if report.attempted() > 0 => Duration::ZERO,
            Ok(_) => match ctx.store.next_attempt().await {
                Ok(Some(at)) => Duration::try_from(at.duration_since(now))
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_SLEEP),
                _ => MAX_SLEEP,
            },
            Err(err) => {
                error!(error = %crate::scheduler::error_chain(&err), "Dispatcher round failed; retrying.");
                MAX_SLEEP
            }
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = nudge.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}
