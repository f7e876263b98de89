//! The scheduler: takes new events and due wake-ups, runs the engine, and commits each
//! batch's new enrollment states together with the messages to send (a transactional
//! outbox). It never sends; the dispatcher drains the outbox.
//!
//! [`tick`] does one round at a given `now`; [`run`] only waits between ticks.

mod catalog;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, instrument};

pub use crate::journey::{Catalog, Links, TickReport};

use crate::clock::Clock;
use crate::journey::{Shell, Sink, drive};
use crate::store::{self, Store};

/// How long the loop sleeps at most between ticks, so a wake-up fires within a second.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

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
}

/// Processes every pending event, then every enrollment and trigger occurrence due at `now`
/// ([`drive::tick`] on the store), nudging the dispatcher after each batch that queued
/// messages, so delivery starts while the rest of a long tick is still being stepped.
///
/// # Errors
/// A database error; the batch in progress is rolled back and retried next tick.
#[instrument(skip_all, fields(now = %now))]
pub async fn tick(ctx: &SchedulerCtx, now: Timestamp) -> Result<TickReport, store::Error> {
    let nudge = |report: &TickReport| nudge_outbox(ctx, report);
    let mut sink = Sink {
        committed: &nudge,
        journal: None,
    };
    drive::tick(&ctx.store, &ctx.shell, ctx.batch_size, now, &mut sink).await
}

fn nudge_outbox(ctx: &SchedulerCtx, report: &TickReport) {
    if report.messages > 0 {
        ctx.outbox_nudge.notify_one();
    }
}

/// Recomputes every customer's computed traits at `now` and writes them into their
/// attributes ([`drive::recompute_traits`]; every sweep does it first). Returns how many
/// customers were scored, and the predictive models' fit.
///
/// # Errors
/// A database error.
pub async fn recompute_traits(
    store: &Store,
    lifecycle: crate::traits::Lifecycle,
    now: Timestamp,
) -> Result<(usize, crate::traits::ModelFit), store::Error> {
    drive::recompute_traits(store, lifecycle, now).await
}

/// Recomputes every customer's traits (when the shell computes them), then segments, at
/// `now`, and keeps their time-based triggers scheduled ([`drive::sweep`]). Returns how many customers entered or left a segment.
///
/// # Errors
/// A database error; the batch in progress is rolled back.
pub async fn refresh_segments(ctx: &SchedulerCtx, now: Timestamp) -> Result<usize, store::Error> {
    let nudge = |report: &TickReport| nudge_outbox(ctx, report);
    let mut sink = Sink {
        committed: &nudge,
        journal: None,
    };
    drive::sweep(&ctx.store, &ctx.shell, now, &mut sink).await
}

/// How often a runner takes (or keeps) the sweep's leader lease.
const LEADER_CHECK: jiff::SignedDuration = jiff::SignedDuration::from_secs(1);

/// Ticks until `shutdown`: after each tick it sleeps until the next wake-up (at most
/// [`MAX_SLEEP`]) or until `nudge` says an event arrived.
pub async fn run(
    ctx: SchedulerCtx,
    clock: Arc<dyn Clock>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let (mut leads, mut last_lead_check) = (false, None::<Timestamp>);
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
        // On PostgreSQL one runner at a time sweeps: the leader, which keeps its lease by
        // taking it again at most once a second; the others try as often, and one takes
        // over within a lease of the leader's end.
        if last_lead_check.is_none_or(|at| now.duration_since(at) >= LEADER_CHECK) {
            last_lead_check = Some(now);
            leads = ctx.store.lead("sweep").await.unwrap_or_else(|err| {
                error!(error = %error_chain(&err), "Taking the sweep's leader lease failed; retrying.");
                false
            });
        }
        if due && leads {
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
