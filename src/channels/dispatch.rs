//! The dispatcher: claims due outbox messages, delivers them concurrently within each
//! channel's limit, and records every attempt. [`run`] is a pipeline: one long-lived
//! recorder, the deliveries in flight, and a claimer that tops each channel up as its
//! deliveries end. [`drain`] does one round on the same pieces.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::retry::RetryPolicy;
use super::{Channels, Lane};
use crate::clock::Clock;
use crate::store::{self, AttemptOutcome, OutboxMessage, Store};

/// What the dispatcher works with.
#[derive(Debug, Clone)]
pub struct DispatchCtx {
    /// The database.
    pub store: Store,
    /// The channels.
    pub channels: Arc<Channels>,
    /// When to retry.
    pub policy: RetryPolicy,
    /// Messages claimed per round by [`drain`]; the most one channel claims at a time in
    /// [`run`].
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

    /// Counts a delivery that ended. A panicked delivery, or one whose outcome was not
    /// recorded, is not counted: its message stays `sending` and is retried after restart.
    fn count(&mut self, joined: Result<Option<AttemptOutcome>, JoinError>) {
        match joined {
            Ok(Some(AttemptOutcome::Sent { .. })) => self.sent += 1,
            Ok(Some(AttemptOutcome::Retry { .. })) => self.retried += 1,
            Ok(Some(AttemptOutcome::Failed { .. } | AttemptOutcome::Refused { .. })) => {
                self.failed += 1
            }
            Ok(None) | Err(_) => {}
        }
    }
}

/// An attempt's outcome on its way to the recorder; `ack` says whether it was committed.
struct Finished {
    key: String,
    attempt: u32,
    outcome: AttemptOutcome,
    ack: oneshot::Sender<bool>,
}

/// Deliveries in flight and the one recorder their outcomes go to: what [`drain`] and
/// [`run`] are both made of.
///
/// Each delivery holds a permit of its channel's limit from before its attempt until its
/// outcome is committed, so at most the channel's concurrency of messages are ever
/// accepted by a provider but not yet recorded — the crash guarantee.
struct Pipeline {
    ctx: DispatchCtx,
    finished: mpsc::UnboundedSender<Finished>,
    recorder: JoinHandle<Result<(), store::Error>>,
    deliveries: JoinSet<Option<AttemptOutcome>>,
    report: DrainReport,
}

impl Pipeline {
    /// Starts the recorder, with nothing in flight yet.
    fn start(ctx: &DispatchCtx) -> Self {
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record(
            ctx.store.clone(),
            Arc::clone(&ctx.clock),
            finished_rx,
        ));
        Self {
            ctx: ctx.clone(),
            finished,
            recorder,
            deliveries: JoinSet::new(),
            report: DrainReport::default(),
        }
    }

    /// Delivers `message` with `permit`, already taken from its channel's limit, held
    /// until the outcome is recorded. `now` is when the message was claimed.
    fn deliver(&mut self, message: OutboxMessage, permit: OwnedSemaphorePermit, now: Timestamp) {
        let span = delivery_span(&message);
        let attempt = attempt(
            self.ctx.clone(),
            message,
            permit,
            now,
            self.finished.clone(),
        );
        self.deliveries.spawn(attempt.instrument(span));
    }

    /// Delivers `message` once its channel has room (see [`Pipeline::deliver`]).
    fn deliver_when_free(&mut self, message: OutboxMessage, now: Timestamp) {
        let span = delivery_span(&message);
        let ctx = self.ctx.clone();
        let finished = self.finished.clone();
        let limit = Arc::clone(ctx.channels.limit_for(&message.payload));
        self.deliveries.spawn(
            async move {
                // A closed limit (never, today) leaves the message `sending` until restart.
                let permit = limit.acquire_owned().await.ok()?;
                attempt(ctx, message, permit, now, finished).await
            }
            .instrument(span),
        );
    }

    /// Deliveries started and not yet ended.
    fn in_flight(&self) -> usize {
        self.deliveries.len()
    }

    /// Waits until a delivery ends, then counts it and every other that has ended by then,
    /// so that one top-up claims for all of them. Returns at once when nothing is in
    /// flight. Cancel safe: a delivery that ends is counted by a later call.
    async fn reap(&mut self) {
        if let Some(joined) = self.deliveries.join_next().await {
            self.report.count(joined);
        }
        while let Some(joined) = self.deliveries.try_join_next() {
            self.report.count(joined);
        }
    }

    /// Lets every delivery in flight end and its outcome be recorded, then stops the
    /// recorder; returns what the deliveries did.
    ///
    /// # Errors
    /// The first database error the recorder met.
    async fn finish(self) -> Result<DrainReport, store::Error> {
        let Self {
            finished,
            recorder,
            mut deliveries,
            mut report,
            ..
        } = self;
        // Each delivery holds its own sender; once they all end, the recorder does.
        drop(finished);
        while let Some(joined) = deliveries.join_next().await {
            report.count(joined);
        }
        match recorder.await {
            Ok(recorded) => recorded.map(|()| report),
            Err(panic) => {
                // Its messages stay `sending`, as after a crash.
                error!(error = %panic, "The outcome recorder panicked.");
                Ok(report)
            }
        }
    }
}

fn delivery_span(message: &OutboxMessage) -> tracing::Span {
    info_span!("deliver", message.key = %message.key, workflow.id = %message.workflow_id)
}

/// Makes one attempt and hands its outcome to the recorder; returns the outcome once it is
/// committed, `None` if it was not. `_permit` is released when this ends, after the commit.
async fn attempt(
    ctx: DispatchCtx,
    message: OutboxMessage,
    _permit: OwnedSemaphorePermit,
    now: Timestamp,
    finished: mpsc::UnboundedSender<Finished>,
) -> Option<AttemptOutcome> {
    let attempt = message.attempts + 1;
    let outcome = match ctx.channels.deliver(&message).await {
        Ok(delivered) => AttemptOutcome::Sent {
            provider_id: delivered.provider_id,
        },
        Err(err) => ctx
            .policy
            .decide(&message.key, attempt, message.created_at, &err, now),
    };
    crate::crash_point::crash_point("after_send");
    log_outcome(attempt, &outcome);
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

fn log_outcome(attempt: u32, outcome: &AttemptOutcome) {
    match outcome {
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
                reason, "The recipient's address was refused; it is suppressed from now on."
            )
        }
    }
}

/// Claims the messages due at `now` (up to `batch_size`), delivers them concurrently, and
/// records each outcome as soon as its attempt ends — so a crash re-sends only what was on
/// the wire, never a message whose success was already known. Returns once every claimed
/// message's attempt has ended and been recorded.
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
    if claimed.is_empty() {
        return Ok(DrainReport::default());
    }
    crate::crash_point::crash_point("after_claim");
    let mut pipeline = Pipeline::start(ctx);
    for message in claimed {
        pipeline.deliver_when_free(message, now);
    }
    pipeline.finish().await
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
            // The recorder of `run` lives as long as the process: say so now, not at the end.
            error!(error = %crate::scheduler::error_chain(&err), outcomes = outcomes.len(),
                "Recording delivery outcomes failed; the messages stay `sending` until the next start.");
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

/// The longest the claimer sleeps without a delivery ending or a nudge: it looks again at
/// least this often (a clock moved by hand, a message due in a lane that has room).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The shortest sleep when a message looked due but nothing could be claimed (another
/// writer took it meanwhile): enough not to spin.
const MIN_SLEEP: Duration = Duration::from_millis(20);

/// Delivers continuously until `shutdown`: a pipeline, not rounds.
///
/// One recorder group-commits the outcomes (as in [`drain`]); the claimer keeps every
/// channel's deliveries topped up. Whenever deliveries end (their permits come back with
/// their commit), a nudge arrives, or the next attempt is due, it takes each channel's
/// *free permits* (at most `batch_size`) and claims that many of the channel's own due
/// messages, one transaction for all channels, each message delivered with one of the
/// permits taken for it.
///
/// Why free permits bound the claim: a message is only claimed when it can go out at once,
/// so nothing sits `sending` waiting for a permit (a crash or stop leaves at most the
/// channel's concurrency of messages `sending`, each of them on the wire); and channels are
/// claimed separately, so a backlog of emails never keeps a due SMS or webhook waiting, and
/// one slow webhook holds only its own permit. Permits come back a committed group at a
/// time, so one claim tops up for a whole group.
///
/// On `shutdown` it stops claiming, lets the deliveries in flight end and their outcomes be
/// recorded, then returns. Claimed messages whose outcome could not be recorded stay
/// `sending` and are released at the next start.
pub async fn run(
    ctx: DispatchCtx,
    clock: Arc<dyn Clock>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut pipeline = Pipeline::start(&ctx);
    while !shutdown.is_cancelled() {
        let now = clock.now();
        let wait = match top_up(&ctx, &mut pipeline, now).await {
            Ok(claimed) => next_wait(&ctx, now, claimed).await,
            Err(err) => {
                error!(error = %crate::scheduler::error_chain(&err), "Claiming messages failed; retrying.");
                MAX_SLEEP
            }
        };
        let in_flight = pipeline.in_flight() > 0;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = pipeline.reap(), if in_flight => {}
            () = nudge.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    let in_flight = pipeline.in_flight();
    info!(
        in_flight,
        "The dispatcher is stopping: the deliveries in flight end and are recorded."
    );
    match pipeline.finish().await {
        Ok(report) => info!(
            sent = report.sent,
            retried = report.retried,
            failed = report.failed,
            "The dispatcher stopped."
        ),
        Err(err) => error!(error = %crate::scheduler::error_chain(&err),
            "The dispatcher stopped; some outcomes were not recorded and are sent again at the next start."),
    }
}

/// Claims, for every lane with room, as many of its due messages as it has free permits
/// (at most `batch_size`) and starts delivering each with one of them; the permits left
/// over go back. Returns how many messages were claimed.
async fn top_up(
    ctx: &DispatchCtx,
    pipeline: &mut Pipeline,
    now: Timestamp,
) -> Result<usize, store::Error> {
    let permits = Lane::ALL.map(|lane| free_permits(ctx.channels.limit(lane), ctx.batch_size));
    if permits.iter().all(Vec::is_empty) {
        return Ok(0);
    }
    let limits: Vec<(&str, u32)> = Lane::ALL
        .iter()
        .zip(&permits)
        .map(|(lane, free)| {
            let free = u32::try_from(free.len()).unwrap_or(u32::MAX);
            (lane.channel_name(), free)
        })
        .collect();
    let claimed = ctx.store.claim_messages_per_channel(now, &limits).await?;
    let total = claimed.iter().map(Vec::len).sum();
    if total > 0 {
        crate::crash_point::crash_point("after_claim");
    }
    for (messages, mut permits) in claimed.into_iter().zip(permits) {
        for message in messages {
            let permit = permits
                .pop()
                .expect("a lane claims no more messages than it has permits");
            pipeline.deliver(message, permit, now);
        }
    }
    Ok(total)
}

/// Takes every permit `limit` has free, at most `most`.
fn free_permits(limit: &Arc<Semaphore>, most: u32) -> Vec<OwnedSemaphorePermit> {
    std::iter::from_fn(|| Arc::clone(limit).try_acquire_owned().ok())
        .take(usize::try_from(most).unwrap_or(usize::MAX))
        .collect()
}

/// How long the claimer may sleep if no delivery ends and no nudge comes: until the next
/// attempt due in a lane that has room, at most [`MAX_SLEEP`]. A lane without room needs
/// no timer: its deliveries ending wake the claimer.
async fn next_wait(ctx: &DispatchCtx, now: Timestamp, claimed: usize) -> Duration {
    let mut wait = MAX_SLEEP;
    for lane in Lane::ALL {
        if ctx.channels.limit(lane).available_permits() == 0 {
            continue;
        }
        match ctx.store.next_attempt_of(lane.channel_name()).await {
            Ok(Some(at)) => {
                let until = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
                wait = wait.min(until);
            }
            Ok(None) => {}
            Err(err) => {
                warn!(error = %crate::scheduler::error_chain(&err), "Finding the next attempt failed.");
            }
        }
    }
    // Due now in a lane with room: more than one claim's worth was due, so claim again at
    // once — unless this pass claimed nothing (another writer took the message meanwhile),
    // which must not spin.
    if wait.is_zero() && claimed == 0 {
        MIN_SLEEP
    } else {
        wait
    }
}
