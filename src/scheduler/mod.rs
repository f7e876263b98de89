//! The scheduler: takes new events and due wake-ups, runs the engine, and commits each
//! batch's new enrollment states together with the messages to send (a transactional
//! outbox). It never sends; the dispatcher drains the outbox.
//!
//! [`tick`] does one round at a given `now`; [`run`] only waits between ticks.

mod catalog;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, instrument};

pub use crate::journey::{Catalog, Links};

use crate::clock::Clock;
use crate::journey::{Shell, Work};
use crate::model::CustomerId;
use crate::store::{self, Store, Tx};
use crate::workflow::Trigger;

/// How long the loop sleeps at most between ticks, so a wake-up fires within a second.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Rounds of due wake-ups in one tick; more waits for the next tick, so zero-length waits
/// cannot hold a tick forever.
const MAX_ROUNDS: usize = 64;

/// What the scheduler works with.
#[derive(Debug, Clone)]
pub struct SchedulerCtx {
    /// The database.
    pub store: Store,
    /// The journey shell: workflows, templates, links, send policy.
    pub shell: Shell,
    /// Events or enrollments per transaction.
    pub batch_size: u32,
    /// Woken when new messages are in the outbox.
    pub outbox_nudge: Arc<Notify>,
    /// How often [`refresh_segments`] runs in the loop.
    pub segment_refresh: Duration,
    /// When it last ran.
    pub last_refresh: Arc<std::sync::Mutex<Option<Timestamp>>>,
    /// Lifecycle thresholds for computed traits.
    pub lifecycle: crate::traits::Lifecycle,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Events processed.
    pub events: usize,
    /// Enrollments woken.
    pub woken: usize,
    /// Schedule and date trigger occurrences handled.
    pub fired: usize,
    /// Messages added to the outbox.
    pub messages: usize,
    /// The next wake-up, if any.
    pub next_wake: Option<Timestamp>,
}

/// Processes every pending event, then every enrollment due at `now`.
///
/// # Errors
/// A database error; the batch in progress is rolled back and retried next tick.
#[instrument(skip_all, fields(now = %now))]
pub async fn tick(ctx: &SchedulerCtx, now: Timestamp) -> Result<TickReport, store::Error> {
    let paused = ctx.store.paused().await?;
    let mut report = TickReport::default();
    loop {
        let mut tx = ctx.store.begin().await?;
        let events = tx.pending_events(ctx.batch_size).await?;
        if events.is_empty() {
            tx.end_unwritten().await?;
            break;
        }
        for stored in &events {
            let work = Work::Event(stored);
            report.messages += visit(ctx, &mut tx, &stored.customer_id, work, &paused, now).await?;
            report.events += 1;
        }
        crate::crash_point::crash_point("in_step");
        tx.commit().await?;
        crate::crash_point::crash_point("after_step_commit");
        nudge_outbox(ctx, &report);
    }
    for _ in 0..MAX_ROUNDS {
        let mut tx = ctx.store.begin().await?;
        let due = tx.due_enrollments(now, ctx.batch_size).await?;
        if due.is_empty() {
            tx.end_unwritten().await?;
            break;
        }
        for enrollment in &due {
            let work = Work::Wake(enrollment);
            report.messages +=
                visit(ctx, &mut tx, &enrollment.customer_id, work, &paused, now).await?;
            report.woken += 1;
        }
        crate::crash_point::crash_point("in_step");
        tx.commit().await?;
        crate::crash_point::crash_point("after_step_commit");
        nudge_outbox(ctx, &report);
    }
    for _ in 0..MAX_ROUNDS {
        let mut tx = ctx.store.begin().await?;
        let fires = tx.due_fires(now, ctx.batch_size).await?;
        if fires.is_empty() {
            tx.end_unwritten().await?;
            break;
        }
        for (workflow_id, customer_id, occurrence) in &fires {
            let work = Work::Fire {
                workflow_id,
                occurrence: *occurrence,
            };
            report.messages += visit(ctx, &mut tx, customer_id, work, &paused, now).await?;
            report.fired += 1;
        }
        crate::crash_point::crash_point("in_step");
        tx.commit().await?;
        crate::crash_point::crash_point("after_step_commit");
        nudge_outbox(ctx, &report);
    }
    report.next_wake = ctx.store.next_wake().await?;
    Ok(report)
}

/// Wakes the dispatcher once a batch has put messages in the outbox, so that delivery starts
/// while the rest of a long tick is still being stepped.
fn nudge_outbox(ctx: &SchedulerCtx, report: &TickReport) {
    if report.messages > 0 {
        ctx.outbox_nudge.notify_one();
    }
}

/// Loads one customer for one piece of work, plans it in the journey shell and writes the
/// result, inside the batch's transaction; returns how many messages it queued.
async fn visit(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    id: &CustomerId,
    work: Work<'_>,
    paused: &BTreeSet<String>,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let spec = ctx.shell.load_spec(&work, now);
    let state = tx.load_customer(id, &spec).await?;
    let write = crate::journey::plan(&ctx.shell, id, state, work, paused, now);
    tx.write_customer(&write, now).await?;
    Ok(write.queued())
}

/// Recomputes every customer's value traits (RFM, value tier, lifecycle) at `now` and writes
/// them into their attributes. Returns how many customers were scored.
///
/// # Errors
/// A database error.
pub async fn recompute_traits(
    store: &Store,
    lifecycle: crate::traits::Lifecycle,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let stats = store.order_stats().await?;
    let traits = crate::traits::compute(&stats, now, lifecycle);
    store.write_traits(&traits, now).await?;
    Ok(traits.len())
}

/// Customers per transaction in a segment sweep.
const SWEEP_BATCH: u32 = 500;

/// Recomputes every customer's segments at `now`, firing segment triggers for each
/// transition (for conditions that become true with time alone, "no order in 60 days"), and
/// schedules time-based triggers for customers who have none yet (new workflows, imports).
/// Returns how many customers entered or left a segment.
///
/// # Errors
/// A database error; the batch in progress is rolled back.
pub async fn refresh_segments(ctx: &SchedulerCtx, now: Timestamp) -> Result<usize, store::Error> {
    let time_triggers = ctx.shell.catalog.current().any(|w| {
        matches!(
            w.trigger.value,
            Trigger::Schedule(_) | Trigger::DateAttribute(_)
        )
    });
    if ctx.shell.catalog.segments().is_empty() && !time_triggers {
        return Ok(0);
    }
    let paused = ctx.store.paused().await?;
    let mut after: Option<String> = None;
    let mut changed = 0;
    loop {
        let ids = ctx
            .store
            .customer_ids_after(after.as_deref(), SWEEP_BATCH)
            .await?;
        let Some(last) = ids.last() else { break };
        after = Some(last.to_string());
        let mut tx = ctx.store.begin().await?;
        let mut n_messages = 0;
        for id in &ids {
            let spec = ctx.shell.load_spec(&Work::Sweep, now);
            let state = tx.load_customer(id, &spec).await?;
            let write = crate::journey::plan(&ctx.shell, id, state, Work::Sweep, &paused, now);
            if !write.joined.is_empty() || !write.left.is_empty() {
                changed += 1;
            }
            n_messages += write.queued();
            tx.write_customer(&write, now).await?;
        }
        tx.commit().await?;
        if n_messages > 0 {
            ctx.outbox_nudge.notify_one();
        }
    }
    Ok(changed)
}

/// Ticks until `shutdown`: after each tick it sleeps until the next wake-up (at most
/// [`MAX_SLEEP`]) or until `nudge` says an event arrived.
pub async fn run(
    ctx: SchedulerCtx,
    clock: Arc<dyn Clock>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let now = clock.now();
        let due = {
            let last = ctx
                .last_refresh
                .lock()
                .expect("the lock is never held across a panic");
            last.is_none_or(|at| {
                Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO)
                    >= ctx.segment_refresh
            })
        };
        if due {
            // Traits first, so the sweep's segments see fresh scores.
            if let Err(err) = recompute_traits(&ctx.store, ctx.lifecycle, now).await {
                error!(error = %error_chain(&err), "Recomputing traits failed; retrying.");
            }
            match refresh_segments(&ctx, now).await {
                Ok(_) => {
                    *ctx.last_refresh
                        .lock()
                        .expect("the lock is never held across a panic") = Some(now)
                }
                Err(err) => error!(error = %error_chain(&err), "Segment refresh failed; retrying."),
            }
        }
        let sleep = match tick(&ctx, now).await {
            Ok(report) => report
                .next_wake
                .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP),
            Err(err) => {
                error!(error = %error_chain(&err), "Scheduler tick failed; retrying.");
                MAX_SLEEP
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = nudge.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// An error and its causes on one line, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
