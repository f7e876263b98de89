//! The scheduler: takes new events and due wake-ups, runs the engine, and commits each
//! batch's new enrollment states together with the messages to send (a transactional
//! outbox). It never sends; the dispatcher drains the outbox.
//!
//! [`tick`] does one round at a given `now`; [`run`] only waits between ticks.

mod apply;
mod catalog;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, instrument};

pub use catalog::Catalog;

use crate::clock::Clock;
use crate::engine::entry::{EntryDecision, PastEntries, enrolls_on_event, may_enter};
use crate::engine::policy::SendPolicy;
use crate::engine::{Enrollment, ExitReason, Facts, Input, Status, step};
use crate::model::{Channel, Customer, CustomerId};
use crate::store::{self, Store, StoredEvent, Tx};
use crate::template::Templates;
use apply::{CustomerState, apply};

/// How long the loop sleeps at most between ticks, so a wake-up fires within a second.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Rounds of due wake-ups in one tick; more waits for the next tick, so zero-length waits
/// cannot hold a tick forever.
const MAX_ROUNDS: usize = 64;

/// Builds the links templates see, such as the signed unsubscribe link.
#[derive(Clone)]
pub struct Links {
    /// The public base URL, such as `https://trellis.example.com`.
    pub public_url: String,
    /// The key unsubscribe tokens are signed with.
    pub key: Arc<[u8]>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("public_url", &self.public_url)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Links {
    /// The unsubscribe link for a customer and channel.
    pub fn unsubscribe(&self, customer: &CustomerId, channel: Channel) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.public_url.trim_end_matches('/'),
            crate::unsubscribe::sign(&self.key, customer, channel)
        )
    }
}

/// What the scheduler works with.
#[derive(Debug, Clone)]
pub struct SchedulerCtx {
    /// The database.
    pub store: Store,
    /// The workflows.
    pub catalog: Arc<Catalog>,
    /// The templates.
    pub templates: Arc<Templates>,
    /// Link builder.
    pub links: Links,
    /// Events or enrollments per transaction.
    pub batch_size: u32,
    /// Woken when new messages are in the outbox.
    pub outbox_nudge: Arc<Notify>,
    /// Quiet hours, caps, default time zone.
    pub policy: Arc<SendPolicy>,
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Events processed.
    pub events: usize,
    /// Enrollments woken.
    pub woken: usize,
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
            break;
        }
        for stored in &events {
            report.messages += on_event(ctx, &mut tx, stored, &paused, now).await?;
            tx.mark_processed(stored.seq).await?;
        }
        tx.commit().await?;
        report.events += events.len();
    }
    for _ in 0..MAX_ROUNDS {
        let mut tx = ctx.store.begin().await?;
        let due = tx.due_enrollments(now, ctx.batch_size).await?;
        if due.is_empty() {
            break;
        }
        for enrollment in &due {
            report.messages += on_wake(ctx, &mut tx, enrollment, now).await?;
        }
        tx.commit().await?;
        report.woken += due.len();
    }
    if report.messages > 0 {
        ctx.outbox_nudge.notify_one();
    }
    report.next_wake = ctx.store.next_wake().await?;
    Ok(report)
}

async fn load_customer(tx: &mut Tx, id: &CustomerId) -> Result<Customer, store::Error> {
    Ok(tx
        .customer(id)
        .await?
        .unwrap_or_else(|| Customer::minimal(id.clone())))
}

/// The sends frequency caps count: as far back as the longest cap window.
async fn load_recent_sends(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    id: &CustomerId,
    now: Timestamp,
) -> Result<Vec<(Channel, Timestamp)>, store::Error> {
    match ctx.policy.longest_window() {
        Some(window) => {
            let since = now
                .checked_sub(window.as_signed())
                .unwrap_or(Timestamp::MIN);
            tx.recent_sends(id, since).await
        }
        None => Ok(Vec::new()),
    }
}

/// Steps the customer's active enrollments with the event, then enrolls the customer in
/// every workflow the event triggers.
async fn on_event(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    stored: &StoredEvent,
    paused: &BTreeSet<String>,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let id = &stored.customer_id;
    let mut state = CustomerState {
        customer: load_customer(tx, id).await?,
        changed: false,
    };
    let history = tx.history(id, ctx.catalog.history_since(now)).await?;
    let mut sends = load_recent_sends(ctx, tx, id, now).await?;
    let segments = BTreeSet::new();
    let input = Input::Event(stored.event.clone());
    let mut n_messages = 0;
    let mut still_active = BTreeSet::new();

    for enrollment in tx.active_enrollments(id).await? {
        let Some(workflow) = ctx
            .catalog
            .version(
                enrollment.workflow_id.as_str(),
                &enrollment.workflow_version,
            )
            .cloned()
        else {
            continue; // Exited as broken at its next wake-up.
        };
        let facts = Facts {
            customer: &state.customer,
            segments: &segments,
            history: &history,
            policy: &ctx.policy,
            recent_sends: &sends,
        };
        let result = step(&workflow, &enrollment, &facts, &input, now);
        if result.enrollment != enrollment {
            n_messages += apply(ctx, tx, &workflow, &result, &mut state, now).await?;
            note_sends(&result, &mut sends, now);
        }
        if result.enrollment.is_active() {
            still_active.insert(enrollment.workflow_id.to_string());
        }
    }

    for workflow in ctx.catalog.current() {
        if paused.contains(workflow.id.as_str()) || !enrolls_on_event(workflow, &stored.event) {
            continue;
        }
        let past = PastEntries {
            active: still_active.contains(workflow.id.as_str()),
            last_entered_at: tx.last_entered(workflow.id.as_str(), id).await?,
        };
        if may_enter(workflow.entry, past, now) != EntryDecision::Enter {
            continue;
        }
        // Derived from the event's sequence number, so a replay after a crash gives the
        // same enrollment and the same message keys.
        let enrollment_id = format!("{}:{}:{}", workflow.id, id, stored.seq);
        let new = Enrollment::new(
            enrollment_id,
            workflow,
            id.clone(),
            Some(stored.event.clone()),
            now,
        );
        let facts = Facts {
            customer: &state.customer,
            segments: &segments,
            history: &history,
            policy: &ctx.policy,
            recent_sends: &sends,
        };
        let result = step(workflow, &new, &facts, &Input::Enter, now);
        n_messages += apply(ctx, tx, workflow, &result, &mut state, now).await?;
        note_sends(&result, &mut sends, now);
    }

    if state.changed {
        tx.put_customer(&state.customer, now).await?;
    }
    Ok(n_messages)
}

/// Adds a step's marketing sends to the ones caps count, so the next workflow stepped for
/// the same event sees them.
fn note_sends(step: &crate::engine::Step, sends: &mut Vec<(Channel, Timestamp)>, now: Timestamp) {
    for effect in &step.effects {
        if let crate::engine::Effect::Send(message) = effect {
            sends.push((message.channel, now));
        }
    }
}

/// Wakes one due enrollment.
async fn on_wake(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    enrollment: &Enrollment,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let Some(workflow) = ctx
        .catalog
        .version(
            enrollment.workflow_id.as_str(),
            &enrollment.workflow_version,
        )
        .cloned()
    else {
        let mut ended = enrollment.clone();
        ended.status = Status::Exited {
            reason: ExitReason::Broken(format!(
                "workflow version {} is no longer available",
                enrollment.workflow_version
            )),
            at: now,
        };
        tx.save_enrollment(&ended, now).await?;
        return Ok(0);
    };
    let id = &enrollment.customer_id;
    let mut state = CustomerState {
        customer: load_customer(tx, id).await?,
        changed: false,
    };
    let history = tx.history(id, ctx.catalog.history_since(now)).await?;
    let sends = load_recent_sends(ctx, tx, id, now).await?;
    let segments = BTreeSet::new();
    let facts = Facts {
        customer: &state.customer,
        segments: &segments,
        history: &history,
        policy: &ctx.policy,
        recent_sends: &sends,
    };
    let result = step(&workflow, enrollment, &facts, &Input::Wake, now);
    let n = apply(ctx, tx, &workflow, &result, &mut state, now).await?;
    if state.changed {
        tx.put_customer(&state.customer, now).await?;
    }
    Ok(n)
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
