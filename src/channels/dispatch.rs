//! The dispatcher: claims due outbox messages, delivers them concurrently within each
//! channel's limit, and records every attempt. [`drain`] does one round; [`run`] waits
//! between rounds.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, mpsc, oneshot};
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
    /// When outcomes are recorded (`sent_at`).
    pub clock: Arc<dyn Clock>,
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

/// An attempt's outcome on its way to the recorder; `ack` says whether it was committed.
struct Finished {
    key: String,
    attempt: u32,
    outcome: AttemptOutcome,
    ack: oneshot::Sender<bool>,
}

/// Claims the messages due at `now`, delivers them concurrently, and records each outcome
/// as soon as its attempt ends — so a crash re-sends only what was on the wire, never a
/// message whose success was already known.
///
/// Outcomes are group-committed: while one transaction of outcomes commits, the attempts
/// that end meanwhile queue up and go into the next one. A delivery keeps its channel
/// permit until its outcome is committed, so at most the channel's concurrency of messages
/// are ever accepted by a provider but not yet recorded.
///
/// # Errors
/// A database error. Claimed messages whose outcome was not recorded stay `sending` and are
/// released at the next start.
pub async fn drain(ctx: &DispatchCtx, now: Timestamp) -> Result<DrainReport, store::Error> {
    let claimed = ctx.store.claim_messages(now, ctx.batch_size).await?;
    let mut report = DrainReport::default();
    if claimed.is_empty() {
        return Ok(report);
    }
    crate::crash_point::crash_point("after_claim");
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record(
        ctx.store.clone(),
        Arc::clone(&ctx.clock),
        finished_rx,
    ));
    let mut deliveries = JoinSet::new();
    for message in claimed {
        let ctx = ctx.clone();
        let finished = finished_tx.clone();
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
                    return Some(AttemptOutcome::Retry {
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
                crate::crash_point::crash_point("after_send");
                match &outcome {
                    AttemptOutcome::Sent { .. } => {}
                    AttemptOutcome::Retry { reason, .. } => {
                        warn!(attempt, reason, "Delivery failed; will retry.")
                    }
                    AttemptOutcome::Failed { reason } => {
                        error!(attempt, reason, "Delivery failed for good.")
                    }
                    AttemptOutcome::Refused { reason } => {
                        warn!(
                            attempt,
                            reason,
                            "The recipient's address was refused; it is suppressed from now on."
                        )
                    }
                }
                let (ack, acked) = oneshot::channel();
                let queued = finished.send(Finished {
                    key: message.key,
                    attempt,
                    outcome: outcome.clone(),
                    ack,
                });
                let recorded = queued.is_ok() && acked.await.unwrap_or(false);
                recorded.then_some(outcome)
            }
            .instrument(span),
        );
    }
    drop(finished_tx);
    while let Some(joined) = deliveries.join_next().await {
        // A panicked delivery, or one whose outcome was not recorded, stays `sending` and is
        // retried after restart.
        match joined {
            Ok(Some(AttemptOutcome::Sent { .. })) => report.sent += 1,
            Ok(Some(AttemptOutcome::Retry { .. })) => report.retried += 1,
            Ok(Some(AttemptOutcome::Failed { .. } | AttemptOutcome::Refused { .. })) => {
                report.failed += 1
            }
            Ok(None) | Err(_) => {}
        }
    }
    // Every sender is gone once the deliveries are, so the recorder ends.
    match recorder.await {
        Ok(recorded) => recorded.map(|()| report),
        Err(panic) => {
            // Its messages stay `sending`, as after a crash.
            error!(error = %panic, "The outcome recorder panicked.");
            Ok(report)
        }
    }
}

/// Commits outcomes as they arrive, each transaction taking everything queued by then, at
/// the time of the commit. Returns the first database error; later groups are still tried.
async fn record(
    store: Store,
    clock: Arc<dyn Clock>,
    mut finished: mpsc::UnboundedReceiver<Finished>,
) -> Result<(), store::Error> {
    const MAX_GROUP: usize = 500;
    let mut first_error = None;
    let mut group = Vec::new();
    while finished.recv_many(&mut group, MAX_GROUP).await > 0 {
        let outcomes: Vec<_> = group
            .iter()
            .map(|f| (f.key.clone(), f.attempt, f.outcome.clone()))
            .collect();
        let recorded = record_until_written(&store, &*clock, &outcomes).await;
        let ok = recorded.is_ok();
        if let Err(err) = recorded {
            first_error = first_error.or(Some(err));
        }
        for f in group.drain(..) {
            let _ = f.ack.send(ok);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Records outcomes, trying again while the database cannot take them for a reason that
/// passes (disk full, locked, the write gate busy): an outcome not recorded would leave its
/// message `sending` until the next start, which sends it again. The deliveries keep their
/// channel permits meanwhile, so no more go out than can be recorded. Outcome writes are
/// idempotent (keyed by message and attempt), so a retry after an unclear failure is safe.
async fn record_until_written(
    store: &Store,
    clock: &dyn Clock,
    outcomes: &[(String, u32, AttemptOutcome)],
) -> Result<(), store::Error> {
    let mut pause = Duration::from_millis(100);
    loop {
        match store.record_attempts(outcomes, clock.now()).await {
            Err(err) if err.is_unavailable() => {
                warn!(error = %crate::scheduler::error_chain(&err), outcomes = outcomes.len(),
                    "Recording delivery outcomes failed for now; trying again.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
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
