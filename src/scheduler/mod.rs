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
use crate::engine::entry::{
    EntryDecision, PastEntries, catch_up, enrolls_on_event, in_audience, may_enter, next_fire,
};
use crate::engine::policy::SendPolicy;
use crate::engine::{Enrollment, ExitReason, Facts, Input, Status, step};
use crate::model::{Channel, Customer, CustomerId};
use crate::store::{self, Store, StoredEvent, Tx};
use crate::template::Templates;
use crate::workflow::{Trigger, Workflow};
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
    /// How often [`refresh_segments`] runs in the loop.
    pub segment_refresh: Duration,
    /// When it last ran.
    pub last_refresh: Arc<std::sync::Mutex<Option<Timestamp>>>,
    /// A conversion is credited to the last message received within this long before it.
    pub attribution_window: Duration,
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
            report.messages += on_event(ctx, &mut tx, stored, &paused, now).await?;
            tx.mark_processed(stored.seq).await?;
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
            report.messages += on_wake(ctx, &mut tx, enrollment, now).await?;
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
        for fire in &fires {
            report.messages += on_fire(ctx, &mut tx, fire, &paused, now).await?;
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

/// One customer's state while the scheduler works on them inside a transaction.
struct Visit {
    id: CustomerId,
    state: CustomerState,
    history: Vec<crate::model::Event>,
    sends: Vec<(Channel, Timestamp)>,
    segments: BTreeSet<String>,
    /// Workflows the customer is active in after this visit's steps so far.
    active_in: BTreeSet<String>,
}

impl Visit {
    async fn load(
        ctx: &SchedulerCtx,
        tx: &mut Tx,
        id: &CustomerId,
        now: Timestamp,
    ) -> Result<Self, store::Error> {
        Ok(Self {
            id: id.clone(),
            state: CustomerState {
                customer: load_customer(tx, id).await?,
                changed: false,
            },
            history: tx.history(id, ctx.catalog.history_since(now)).await?,
            sends: load_recent_sends(ctx, tx, id, now).await?,
            segments: tx.segments_of(id).await?,
            active_in: BTreeSet::new(),
        })
    }

    fn facts<'a>(&'a self, policy: &'a SendPolicy) -> Facts<'a> {
        Facts {
            customer: &self.state.customer,
            segments: &self.segments,
            history: &self.history,
            policy,
            recent_sends: &self.sends,
        }
    }

    /// Steps and writes one enrollment.
    async fn step(
        &mut self,
        ctx: &SchedulerCtx,
        tx: &mut Tx,
        workflow: &Workflow,
        enrollment: &Enrollment,
        input: &Input,
        now: Timestamp,
    ) -> Result<usize, store::Error> {
        let result = step(workflow, enrollment, &self.facts(&ctx.policy), input, now);
        let mut n = 0;
        if result.enrollment != *enrollment {
            let applied = apply(ctx, tx, workflow, &result, &mut self.state, now).await?;
            n = applied.queued;
            // The next workflow stepped for this customer sees exactly what the outbox rows
            // will count.
            self.sends.extend(
                applied
                    .cap_marks
                    .iter()
                    .map(|mark| (mark.channel(), mark.at())),
            );
        }
        if result.enrollment.is_active() {
            self.active_in.insert(workflow.id.to_string());
        } else {
            self.active_in.remove(workflow.id.as_str());
        }
        Ok(n)
    }

    /// Enrolls the customer if the workflow's entry rule allows.
    async fn enter(
        &mut self,
        ctx: &SchedulerCtx,
        tx: &mut Tx,
        workflow: &Workflow,
        trigger: Option<crate::model::Event>,
        enrollment_id: String,
        now: Timestamp,
    ) -> Result<usize, store::Error> {
        let past = PastEntries {
            active: self.active_in.contains(workflow.id.as_str()),
            last_entered_at: tx.last_entered(workflow.id.as_str(), &self.id).await?,
        };
        if may_enter(workflow.entry, past, now) != EntryDecision::Enter {
            return Ok(0);
        }
        let new = Enrollment::new(enrollment_id, workflow, self.id.clone(), trigger, now);
        self.step(ctx, tx, workflow, &new, &Input::Enter, now).await
    }

    /// Recomputes segment membership; stores and returns the transitions.
    async fn refresh_segments(
        &mut self,
        ctx: &SchedulerCtx,
        tx: &mut Tx,
        now: Timestamp,
    ) -> Result<(Vec<String>, Vec<String>), store::Error> {
        if ctx.catalog.segments().is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let no_segments = BTreeSet::new();
        let scope = crate::engine::condition::Scope {
            customer: &self.state.customer,
            event: None,
            trigger: None,
            segments: &no_segments,
            history: &self.history,
            now,
        };
        let now_in = crate::engine::segment::membership(ctx.catalog.segments(), &scope);
        let entered: Vec<String> = now_in.difference(&self.segments).cloned().collect();
        let exited: Vec<String> = self.segments.difference(&now_in).cloned().collect();
        for segment in &entered {
            tx.set_member(segment, &self.id, true, now).await?;
        }
        for segment in &exited {
            tx.set_member(segment, &self.id, false, now).await?;
        }
        self.segments = now_in;
        Ok((entered, exited))
    }

    /// Enrolls in the workflows whose segment triggers the transitions fire.
    async fn enter_by_segments(
        &mut self,
        ctx: &SchedulerCtx,
        tx: &mut Tx,
        transitions: &(Vec<String>, Vec<String>),
        paused: &BTreeSet<String>,
        now: Timestamp,
    ) -> Result<usize, store::Error> {
        let mut n = 0;
        let workflows: Vec<Arc<Workflow>> = ctx.catalog.current().cloned().collect();
        for workflow in workflows {
            if paused.contains(workflow.id.as_str()) {
                continue;
            }
            let fired = match &workflow.trigger.value {
                Trigger::SegmentEntered(segment) => {
                    transitions.0.contains(segment).then_some("entered")
                }
                Trigger::SegmentExited(segment) => {
                    transitions.1.contains(segment).then_some("exited")
                }
                _ => None,
            };
            if let Some(how) = fired {
                // One id per transition: a replay after a crash gives the same enrollment.
                let id = format!(
                    "{}:{}:segment-{how}:{}",
                    workflow.id,
                    self.id,
                    now.as_millisecond()
                );
                n += self.enter(ctx, tx, &workflow, None, id, now).await?;
            }
        }
        Ok(n)
    }

    /// Keeps the next occurrence of every time-based trigger current for this customer (their
    /// zone or date attribute may have changed).
    async fn schedule_fires(
        &self,
        ctx: &SchedulerCtx,
        tx: &mut Tx,
        now: Timestamp,
    ) -> Result<(), store::Error> {
        for workflow in ctx.catalog.current() {
            if matches!(
                workflow.trigger.value,
                Trigger::Schedule(_) | Trigger::DateAttribute(_)
            ) {
                let customer =
                    crate::engine::policy::with_default_zone(&self.state.customer, &ctx.policy);
                let mut next = next_fire(workflow, &customer, now);
                if let Some((at, missed)) = catch_up(workflow, &customer, now)
                    && next.is_none_or(|n| at < n)
                    && !tx.has_fired(workflow.id.as_str(), &self.id, missed).await?
                    && !tx.has_fired(workflow.id.as_str(), &self.id, at).await?
                {
                    next = Some(at);
                }
                tx.schedule_fire(workflow.id.as_str(), &self.id, next, now)
                    .await?;
            }
        }
        Ok(())
    }

    async fn save(self, tx: &mut Tx, now: Timestamp) -> Result<(), store::Error> {
        if self.state.changed {
            tx.put_customer(&self.state.customer, now).await?;
        }
        Ok(())
    }
}

/// Recomputes segments, steps the customer's active enrollments with the event, then enrolls
/// the customer in every workflow the event or a segment transition triggers.
async fn on_event(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    stored: &StoredEvent,
    paused: &BTreeSet<String>,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let mut visit = Visit::load(ctx, tx, &stored.customer_id, now).await?;
    let transitions = visit.refresh_segments(ctx, tx, now).await?;
    let input = Input::Event(stored.event.clone());
    let mut n_messages = 0;
    for enrollment in tx.active_enrollments(&stored.customer_id).await? {
        // Active whether or not its version still loads: entering the workflow again would
        // break the one-active-enrollment rule and fail this batch at every tick.
        visit.active_in.insert(enrollment.workflow_id.to_string());
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
        n_messages += visit
            .step(ctx, tx, &workflow, &enrollment, &input, now)
            .await?;
    }
    let workflows: Vec<Arc<Workflow>> = ctx.catalog.current().cloned().collect();
    for workflow in workflows {
        if paused.contains(workflow.id.as_str()) || !enrolls_on_event(&workflow, &stored.event) {
            continue;
        }
        // Derived from the event's sequence number, so a replay after a crash gives the
        // same enrollment and the same message keys.
        let enrollment_id = format!("{}:{}:{}", workflow.id, stored.customer_id, stored.seq);
        n_messages += visit
            .enter(
                ctx,
                tx,
                &workflow,
                Some(stored.event.clone()),
                enrollment_id,
                now,
            )
            .await?;
    }
    n_messages += visit
        .enter_by_segments(ctx, tx, &transitions, paused, now)
        .await?;
    visit.schedule_fires(ctx, tx, now).await?;
    visit.save(tx, now).await?;
    Ok(n_messages)
}

/// Handles one due occurrence of a schedule or date trigger: enrolls the customer if they
/// are in the audience (once per occurrence), then schedules the next occurrence.
async fn on_fire(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    fire: &(String, CustomerId, Timestamp),
    paused: &BTreeSet<String>,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let (workflow_id, customer_id, occurrence) = fire;
    let Some(workflow) = ctx.catalog.get(workflow_id).cloned() else {
        tx.advance_fire(workflow_id, customer_id, None).await?;
        return Ok(0);
    };
    let mut visit = Visit::load(ctx, tx, customer_id, now).await?;
    for enrollment in tx.active_enrollments(customer_id).await? {
        visit.active_in.insert(enrollment.workflow_id.to_string());
    }
    let mut n = 0;
    let first_time = tx
        .record_fire(workflow_id, customer_id, *occurrence)
        .await?;
    let scope = crate::engine::condition::Scope {
        customer: &visit.state.customer,
        event: None,
        trigger: None,
        segments: &visit.segments,
        history: &visit.history,
        now,
    };
    if first_time && !paused.contains(workflow_id.as_str()) && in_audience(&workflow, &scope) {
        let id = format!(
            "{workflow_id}:{customer_id}:at-{}",
            occurrence.as_millisecond()
        );
        n = visit.enter(ctx, tx, &workflow, None, id, now).await?;
    }
    let customer = crate::engine::policy::with_default_zone(&visit.state.customer, &ctx.policy);
    let next = next_fire(&workflow, &customer, (*occurrence).max(now));
    tx.advance_fire(workflow_id, customer_id, next).await?;
    visit.save(tx, now).await?;
    Ok(n)
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
    let mut visit = Visit::load(ctx, tx, &enrollment.customer_id, now).await?;
    let n = visit
        .step(ctx, tx, &workflow, enrollment, &Input::Wake, now)
        .await?;
    visit.save(tx, now).await?;
    Ok(n)
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
    let time_triggers = ctx.catalog.current().any(|w| {
        matches!(
            w.trigger.value,
            Trigger::Schedule(_) | Trigger::DateAttribute(_)
        )
    });
    if ctx.catalog.segments().is_empty() && !time_triggers {
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
            let mut visit = Visit::load(ctx, &mut tx, id, now).await?;
            for enrollment in tx.active_enrollments(id).await? {
                visit.active_in.insert(enrollment.workflow_id.to_string());
            }
            let transitions = visit.refresh_segments(ctx, &mut tx, now).await?;
            if !transitions.0.is_empty() || !transitions.1.is_empty() {
                changed += 1;
                n_messages += visit
                    .enter_by_segments(ctx, &mut tx, &transitions, &paused, now)
                    .await?;
            }
            visit.schedule_fires(ctx, &mut tx, now).await?;
            visit.save(&mut tx, now).await?;
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
