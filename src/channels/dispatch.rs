//! The dispatcher: claims due outbox messages, delivers them concurrently within each
//! channel's limit, and records every attempt. [`run`] is a pipeline: one long-lived
//! recorder, the deliveries in flight, and a claimer that tops each channel up as its
//! deliveries end. [`drain`] does one round on the same pieces.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
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
    /// Per lane, the deliveries waiting for a permit (claimed, not yet attempted).
    waiting: Arc<[AtomicUsize; 3]>,
    /// Cancelled when the dispatcher stops: a delivery still waiting for its permit then
    /// gives up without an attempt and leaves its key in `unsent`.
    stop: CancellationToken,
    unsent: Arc<std::sync::Mutex<Vec<String>>>,
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
            waiting: Arc::default(),
            stop: CancellationToken::new(),
            unsent: Arc::default(),
        }
    }

    /// Delivers `message` once its channel has a free permit, which it holds until the
    /// outcome is recorded (the permits are handed out in turn, so a freed one goes
    /// straight to the next waiting delivery, whatever the claimer is doing). `now` is when
    /// the message was claimed.
    fn deliver_when_free(&mut self, message: OutboxMessage, now: Timestamp) {
        let span = delivery_span(&message);
        let ctx = self.ctx.clone();
        let finished = self.finished.clone();
        let lane = Lane::of(&message.payload);
        let limit = Arc::clone(ctx.channels.limit(lane));
        let waiting = Arc::clone(&self.waiting);
        let (stop, unsent) = (self.stop.clone(), Arc::clone(&self.unsent));
        waiting[lane.index()].fetch_add(1, Ordering::Relaxed);
        self.deliveries.spawn(
            async move {
                // Stopping wins over a permit freed at the same moment: nothing new starts.
                let permit = tokio::select! {
                    biased;
                    () = stop.cancelled() => None,
                    permit = limit.acquire_owned() => permit.ok(),
                };
                waiting[lane.index()].fetch_sub(1, Ordering::Relaxed);
                let Some(permit) = permit else {
                    // Stopping (or a closed limit, never today): not attempted.
                    unsent
                        .lock()
                        .expect("never held across a panic")
                        .push(message.key);
                    return None;
                };
                attempt(ctx, message, permit, now, finished).await
            }
            .instrument(span),
        );
    }

    /// Deliveries of `lane` claimed and still waiting for a permit.
    fn waiting(&self, lane: Lane) -> usize {
        self.waiting[lane.index()].load(Ordering::Relaxed)
    }

    /// Deliveries started and not yet ended.
    fn in_flight(&self) -> usize {
        self.deliveries.len()
    }

    /// Stops the deliveries still waiting for a permit; those attempting go on.
    fn stop_waiting(&self) {
        self.stop.cancel();
    }

    /// The keys of the claimed messages that were never attempted (after
    /// [`Pipeline::stop_waiting`] and [`Pipeline::finish`]).
    fn unsent(&self) -> Arc<std::sync::Mutex<Vec<String>>> {
        Arc::clone(&self.unsent)
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
    // A claim held so long (a runner stopped past its lease) that another runner may have
    // taken it is not started: the other runner sends it, once.
    if !ctx.store.still_claimed(&message.key) {
        tracing::warn!(key = %message.key, "The claim on this message may have passed to another runner; not sending it.");
        // Handed back, fenced by the claim's token: if it is still ours, it goes back to
        // pending at once (rather than staying `sending` under a claim nobody will start);
        // if another runner took it, this changes nothing.
        if let Err(err) = ctx
            .store
            .release_claims(std::slice::from_ref(&message.key))
            .await
        {
            tracing::warn!(error = %crate::scheduler::error_chain(&err), "Handing back a lapsed claim failed; it expires by itself.");
        }
        return None;
    }
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

/// Commits outcomes as they arrive. A group is closed only once its transaction holds the
/// write lock: every attempt that ended while the recorder waited for it (behind a
/// scheduler batch, say) goes into the same commit, so the busier the database, the fewer
/// and larger the commits — and, since each delivery keeps its permit until its outcome is
/// committed, the sooner the permits come back. Outcomes are written at the time of the
/// commit. Returns the first database error; later groups are still tried.
async fn record(
    store: Store,
    clock: Arc<dyn Clock>,
    mut finished: mpsc::UnboundedReceiver<Finished>,
) -> Result<(), store::Error> {
    let mut first_error = None;
    let mut group = Vec::new();
    while let Some(first) = finished.recv().await {
        group.push(first);
        let recorded = record_until_written(&store, &*clock, &mut finished, &mut group).await;
        let ok = recorded.is_ok();
        if let Err(err) = recorded {
            // The recorder of `run` lives as long as the process: say so now, not at the end.
            error!(error = %crate::scheduler::error_chain(&err), outcomes = group.len(),
                "Recording delivery outcomes failed; the messages stay `sending` until the next start.");
            first_error = first_error.or(Some(err));
        }
        for f in group.drain(..) {
            let _ = f.ack.send(ok);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The most outcomes one commit takes.
const MAX_GROUP: usize = 500;

/// Records `group`, and whatever else has ended by the time the write lock is held, trying
/// again while the database cannot take them for a reason that passes (disk full, locked,
/// the write gate busy): an outcome not recorded would leave its message `sending` until
/// the next start, which sends it again. The deliveries keep their channel permits
/// meanwhile, so no more go out than can be recorded. Outcome writes are idempotent (keyed
/// by message and attempt), so a retry after an unclear failure is safe.
async fn record_until_written(
    store: &Store,
    clock: &dyn Clock,
    finished: &mut mpsc::UnboundedReceiver<Finished>,
    group: &mut Vec<Finished>,
) -> Result<(), store::Error> {
    let mut pause = Duration::from_millis(100);
    loop {
        let written = async {
            let mut tx = store.begin().await?;
            while group.len() < MAX_GROUP {
                let Ok(more) = finished.try_recv() else { break };
                group.push(more);
            }
            let outcomes: Vec<_> = group
                .iter()
                .map(|f| (f.key.clone(), f.attempt, f.outcome.clone()))
                .collect();
            tx.record_attempts(&outcomes, clock.now()).await?;
            tx.commit().await
        }
        .await;
        match written {
            Err(err) if err.is_unavailable() => {
                warn!(error = %crate::scheduler::error_chain(&err), outcomes = group.len(),
                    "Recording delivery outcomes failed for now; trying again.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// The longest the claimer sleeps without a delivery ending or a nudge: it looks again at
/// least this often (a clock moved by hand, a retry come due).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Delivers continuously until `shutdown`: a pipeline, not rounds.
///
/// One recorder group-commits the outcomes (as in [`drain`]); each claimed message waits
/// for a permit of its channel and is attempted the moment one is free, so a delivery that
/// ends hands its permit straight to the next, whatever the claimer is doing. A claim is a
/// write transaction and waits for the database's one write lock behind the scheduler's
/// batches, so the claimer claims ahead ([`Lanes`]): up to `batch_size` of a channel's own
/// due messages at once, and again when fewer than half of that still wait — one claim
/// feeds about a hundred deliveries, not the handful a committed group of outcomes frees.
/// Channels are claimed separately, so a backlog of emails never keeps a due SMS or webhook
/// waiting, and one slow webhook holds only its own permit.
///
/// Each delivery takes its permit before its attempt and keeps it until its outcome is
/// committed, so at most the channel's concurrency of messages are ever accepted by a
/// provider but not yet recorded — the crash guarantee. Queued messages are `sending`
/// without being on the wire: after a crash the next start releases them (nothing of them
/// was sent, so nothing is duplicated); on `shutdown` the claimer stops claiming and
/// starting, lets the deliveries in flight end and be recorded, and puts the queued ones
/// back to `pending` at once.
pub async fn run(
    ctx: DispatchCtx,
    clock: Arc<dyn Clock>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut pipeline = Pipeline::start(&ctx);
    let mut lanes = Lanes::default();
    while !shutdown.is_cancelled() {
        let now = clock.now();
        if let Err(err) = lanes.refill(&ctx, &mut pipeline, now).await {
            error!(error = %crate::scheduler::error_chain(&err), "Claiming messages failed; retrying.");
            lanes.rest_all(now);
        }
        let wait = lanes.wait(now);
        let in_flight = pipeline.in_flight() > 0;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = pipeline.reap(), if in_flight => {}
            () = nudge.notified() => lanes.wake(),
            () = tokio::time::sleep(wait) => {}
        }
    }
    info!(
        in_flight = pipeline.in_flight(),
        "The dispatcher is stopping: the deliveries in flight end and are recorded."
    );
    pipeline.stop_waiting();
    let unsent = pipeline.unsent();
    let finished = pipeline.finish().await;
    let keys = std::mem::take(&mut *unsent.lock().expect("never held across a panic"));
    if !keys.is_empty()
        && let Err(err) = ctx.store.release_claims(&keys).await
    {
        warn!(error = %crate::scheduler::error_chain(&err), queued = keys.len(),
            "Putting the claimed messages not yet sent back failed; the next start does it.");
    }
    match finished {
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

/// What the claimer knows of each lane's due messages.
#[derive(Default)]
struct Lanes {
    /// `Some(t)`: the lane's last claim came up short, so nothing more is due before `t`
    /// (its next attempt, or a second later) unless a nudge says new messages came.
    rest_until: [Option<Timestamp>; 3],
}

impl Lanes {
    /// Claims for every lane with at most half of `batch_size` waiting and that may have
    /// messages due, in one transaction, and hands them to `pipeline`; a lane that gets
    /// fewer than it asked for rests until its next attempt.
    async fn refill(
        &mut self,
        ctx: &DispatchCtx,
        pipeline: &mut Pipeline,
        now: Timestamp,
    ) -> Result<(), store::Error> {
        let batch = ctx.batch_size.max(1) as usize;
        let mut wants = [0_u32; 3];
        for lane in Lane::ALL {
            let i = lane.index();
            let waiting = pipeline.waiting(lane);
            if waiting > batch / 2 || self.rest_until[i].is_some_and(|t| t > now) {
                continue;
            }
            // Resting ended or never began: a read (no write lock) says whether to claim.
            if self.rest_until[i].take().is_some() && !self.due(ctx, lane, now).await? {
                continue;
            }
            wants[i] = u32::try_from(batch - waiting).unwrap_or(u32::MAX);
        }
        if wants.iter().all(|w| *w == 0) {
            return Ok(());
        }
        let limits: Vec<(&str, u32)> = Lane::ALL
            .iter()
            .map(|lane| (lane.channel_name(), wants[lane.index()]))
            .collect();
        let claimed = ctx.store.claim_messages_per_channel(now, &limits).await?;
        if claimed.iter().any(|c| !c.is_empty()) {
            crate::crash_point::crash_point("after_claim");
        }
        for (lane, messages) in Lane::ALL.into_iter().zip(claimed) {
            let i = lane.index();
            if wants[i] > 0 && messages.len() < wants[i] as usize {
                self.rest_until[i] = Some(self.next_look(ctx, lane, now).await);
            }
            for message in messages {
                pipeline.deliver_when_free(message, now);
            }
        }
        Ok(())
    }

    /// Whether `lane` has a message due at `now`; when not, it rests until its next one.
    async fn due(
        &mut self,
        ctx: &DispatchCtx,
        lane: Lane,
        now: Timestamp,
    ) -> Result<bool, store::Error> {
        match ctx.store.next_attempt_of(lane.channel_name()).await? {
            Some(at) if at <= now => Ok(true),
            next => {
                self.rest_until[lane.index()] = Some(rest_end(next, now));
                Ok(false)
            }
        }
    }

    /// When a lane whose claim came up short should look again.
    async fn next_look(&self, ctx: &DispatchCtx, lane: Lane, now: Timestamp) -> Timestamp {
        match ctx.store.next_attempt_of(lane.channel_name()).await {
            Ok(next) => rest_end(next, now),
            Err(err) => {
                warn!(error = %crate::scheduler::error_chain(&err), "Finding the next attempt failed.");
                rest_end(None, now)
            }
        }
    }

    /// How long the claimer may sleep when no delivery ends and no nudge comes: until the
    /// first resting lane's next look, at most [`MAX_SLEEP`]. A lane that is not resting
    /// needs no timer: its deliveries ending wake the claimer.
    fn wait(&self, now: Timestamp) -> Duration {
        self.rest_until
            .iter()
            .flatten()
            .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO))
            .fold(MAX_SLEEP, Duration::min)
    }

    /// A nudge: new messages may be due on any resting lane, which looks again (with a
    /// read first, so a nudge for one channel costs the others no write transaction).
    fn wake(&mut self) {
        for rest in self.rest_until.iter_mut().flatten() {
            *rest = Timestamp::MIN;
        }
    }

    /// After a failed claim: every lane looks again a second later.
    fn rest_all(&mut self, now: Timestamp) {
        self.rest_until = [Some(rest_end(None, now)); 3];
    }
}

/// The end of a rest: the next attempt when it is within [`MAX_SLEEP`], else a second on.
fn rest_end(next: Option<Timestamp>, now: Timestamp) -> Timestamp {
    let cap = now
        .checked_add(jiff::SignedDuration::try_from(MAX_SLEEP).unwrap_or_default())
        .unwrap_or(now);
    next.map_or(cap, |at| at.clamp(now, cap))
}
