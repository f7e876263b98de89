//! Drives the journey shell on a virtual clock for one customer and one or more workflows,
//! and records the timeline: `trellis simulate` prints it, and tests assert it.
//!
//! The simulator is the runtime's own code: the journey shell ([`journey::drive`]) against
//! the in-memory store ([`MemoryStore`]), ticked at each moment something is due, every
//! message delivered at once, the computed traits and the segments of `segments.yaml`
//! recomputed by the same sweep. No I/O and no wall clock: the caller hands in the parsed
//! workflows, templates, customer and events.
//!
//! Besides the customer's events, a script may hold lines that stand for what reaches
//! `serve` by other routes: [`PROFILE_PATCH`] (a `PATCH /v1/customers/{id}`) and
//! [`SUPPRESS`] (an address on the suppression list). Segments without a definition are
//! scripted with `$segment_entered` / `$segment_exited` events (property `segment`).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use jiff::Timestamp;

use crate::engine::policy::SendPolicy;
use crate::journey::{self, Catalog, Links, Shell, Sink, TickReport};
use crate::model::{Channel, Customer, CustomerId, CustomerPatch, Event};
use crate::store::{self, JourneyStore, MemoryStore};
use crate::template::Templates;
use crate::workflow::{SegmentDef, Workflow};

pub use crate::journey::{Line, PREVIEW_UNSUBSCRIBE_LINK, render_json, render_text};
pub use crate::journey::{SEGMENT_ENTERED, SEGMENT_EXITED};

/// A script line that changes the customer's profile as `PATCH /v1/customers/{id}` would:
/// its properties are the patch, such as `{"consent": {"email": false}}`.
pub const PROFILE_PATCH: &str = "$profile";
/// A script line that puts an address on the suppression list, as another customer's hard
/// bounce would: property `email` or `phone`.
pub const SUPPRESS: &str = "$suppress";

/// How long the simulation runs after the last event when no `until` is given.
pub const DEFAULT_HORIZON_DAYS: i64 = 30;
/// A bound on simulated moments, so a schedule firing every minute cannot run away (a year
/// of five-minute sweeps is 105,120 moments).
const MAX_MOMENTS: usize = 250_000;
/// Work items per simulated transaction.
const BATCH: u32 = 200;
/// The attribution window, as `serve`'s default.
const ATTRIBUTION_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 86_400);

/// When the simulation starts and stops, and the send-time rules in force.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Start; default: the first event's time.
    pub start: Option<Timestamp>,
    /// Stop; default: 30 days after the start or the last event, whichever is later.
    pub until: Option<Timestamp>,
    /// Quiet hours, caps, default time zone (none by default here; the CLI applies the
    /// same defaults as `serve`).
    pub policy: SendPolicy,
    /// Segment definitions, computed as `serve` computes them: on each event and by a sweep
    /// every `segment_refresh`. Segments not defined here are scripted with
    /// `$segment_entered` / `$segment_exited` events.
    pub segments: Vec<SegmentDef>,
    /// How often the sweep runs (`serve`'s `TRELLIS_SEGMENT_REFRESH`); `None`: only at the
    /// start.
    pub segment_refresh: Option<std::time::Duration>,
    /// The lifecycle thresholds of the computed traits, which every sweep recomputes as in
    /// `serve`.
    pub lifecycle: crate::traits::Lifecycle,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimulateError {
    /// Nothing says when to start.
    #[error("there are no events, so give --start")]
    NoStart,
    /// `until` is before `start`.
    #[error("--until {until} is before the start {start}")]
    UntilBeforeStart {
        /// The start.
        start: Timestamp,
        /// The stop.
        until: Timestamp,
    },
    /// A [`PROFILE_PATCH`] or [`SUPPRESS`] line that cannot be applied.
    #[error("the script's {name} at {at}: {reason}")]
    BadScriptLine {
        /// The line's name.
        name: String,
        /// Its time.
        at: Timestamp,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a script line does besides being an event.
enum ScriptAction {
    Patch(CustomerPatch),
    Suppress(Channel, String),
}

impl ScriptAction {
    /// The action of a [`PROFILE_PATCH`] or [`SUPPRESS`] line; `None` for an event.
    fn of(event: &Event) -> Option<Result<Self, SimulateError>> {
        let bad = |reason: String| SimulateError::BadScriptLine {
            name: event.name.clone(),
            at: event.timestamp,
            reason,
        };
        let properties = serde_json::Value::Object(event.properties.clone());
        match event.name.as_str() {
            PROFILE_PATCH => Some(
                serde_json::from_value(properties)
                    .map(Self::Patch)
                    .map_err(|e| bad(format!("not a profile patch: {e}"))),
            ),
            SUPPRESS => Some(
                match (
                    event.property("email").and_then(|v| v.as_str()),
                    event.property("phone").and_then(|v| v.as_str()),
                ) {
                    (Some(email), None) => Ok(Self::Suppress(Channel::Email, email.to_owned())),
                    (None, Some(phone)) => Ok(Self::Suppress(Channel::Sms, phone.to_owned())),
                    _ => Err(bad("give one address: email or phone".into())),
                },
            ),
            _ => None,
        }
    }
}

/// Checks the script's [`PROFILE_PATCH`] and [`SUPPRESS`] lines, applying the patches in
/// order to `customer`, so a simulation never stops half way on one.
///
/// # Errors
/// The first line that cannot be applied.
pub fn check_script(customer: &Customer, events: &[Event]) -> Result<(), SimulateError> {
    let mut customer = customer.clone();
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| e.timestamp);
    for event in events {
        if let Some(ScriptAction::Patch(patch)) = ScriptAction::of(event).transpose()? {
            customer = patch
                .apply(customer)
                .map_err(|reason| SimulateError::BadScriptLine {
                    name: event.name.clone(),
                    at: event.timestamp,
                    reason,
                })?;
        }
    }
    Ok(())
}

/// Where a timeline is played: a journey store that can also take a customer and events as
/// the API would, and deliver what is due. The simulator plays on [`MemoryStore`]; the
/// parity tests play the same script on SQLite with the real dispatcher.
pub trait Stage: JourneyStore {
    /// Creates or replaces the customer.
    fn put_customer(
        &self,
        customer: &Customer,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), store::Error>> + Send;
    /// Stores an event for `customer` as the API would (a resent id is stored once).
    fn insert_event(
        &self,
        customer: &CustomerId,
        event: &Event,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), store::Error>> + Send;
    /// Applies a profile patch as `PATCH /v1/customers/{id}` does (the profile changed, a
    /// profile-change event stored); a patch that does not apply changes nothing.
    fn patch_customer(
        &self,
        customer: &CustomerId,
        patch: &CustomerPatch,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), store::Error>> + Send;
    /// Suppresses an address on a channel, as a hard bounce would.
    fn suppress(
        &self,
        channel: Channel,
        address: &str,
        reason: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), store::Error>> + Send;
    /// Delivers the messages due at `now`.
    fn deliver(&self, now: Timestamp) -> impl Future<Output = Result<(), store::Error>> + Send;
}

/// A store whose transactions take customers, events and suppressions as the API writes
/// them, as a stage: each call one transaction. Delivery is the dispatcher's, which needs
/// channels: a stage that delivers wraps the store with one (tests/it/parity.rs); here
/// `deliver` sends nothing.
macro_rules! transactional_stage {
    ($store:ty) => {
        impl Stage for $store {
            async fn put_customer(
                &self,
                customer: &Customer,
                now: Timestamp,
            ) -> Result<(), store::Error> {
                let mut tx = self.begin().await?;
                tx.put_customer(customer, now).await?;
                tx.commit().await
            }

            async fn insert_event(
                &self,
                customer: &CustomerId,
                event: &Event,
                now: Timestamp,
            ) -> Result<(), store::Error> {
                let mut tx = self.begin().await?;
                tx.insert_event(customer, event, now).await?;
                tx.commit().await
            }

            async fn patch_customer(
                &self,
                customer: &CustomerId,
                patch: &CustomerPatch,
                now: Timestamp,
            ) -> Result<(), store::Error> {
                let mut tx = self.begin().await?;
                let Some(Ok(patched)) =
                    tx.customer(customer).await?.map(|c| patch.clone().apply(c))
                else {
                    return tx.end_unwritten().await;
                };
                tx.put_customer(&patched, now).await?;
                tx.insert_event(customer, &Event::profile_updated(now), now)
                    .await?;
                tx.commit().await
            }

            async fn suppress(
                &self,
                channel: Channel,
                address: &str,
                reason: &str,
                now: Timestamp,
            ) -> Result<(), store::Error> {
                let mut tx = self.begin().await?;
                tx.suppress(channel, address, reason, now).await?;
                tx.commit().await
            }

            async fn deliver(&self, _now: Timestamp) -> Result<(), store::Error> {
                Ok(())
            }
        }
    };
}

// SQLite and PostgreSQL (whose outbox is a later increment) as stages.
transactional_stage!(store::Store);
transactional_stage!(store::PgStore);

impl Stage for MemoryStore {
    async fn put_customer(&self, customer: &Customer, _now: Timestamp) -> Result<(), store::Error> {
        MemoryStore::put_customer(self, customer);
        Ok(())
    }

    async fn insert_event(
        &self,
        customer: &CustomerId,
        event: &Event,
        _now: Timestamp,
    ) -> Result<(), store::Error> {
        MemoryStore::insert_event(self, customer, event);
        Ok(())
    }

    async fn patch_customer(
        &self,
        customer: &CustomerId,
        patch: &CustomerPatch,
        now: Timestamp,
    ) -> Result<(), store::Error> {
        if let Some(Ok(patched)) = self.customer(customer).map(|c| patch.clone().apply(c)) {
            MemoryStore::put_customer(self, &patched);
            MemoryStore::insert_event(self, customer, &Event::profile_updated(now));
        }
        Ok(())
    }

    async fn suppress(
        &self,
        channel: Channel,
        address: &str,
        reason: &str,
        _now: Timestamp,
    ) -> Result<(), store::Error> {
        MemoryStore::suppress(self, channel, address, reason);
        Ok(())
    }

    async fn deliver(&self, now: Timestamp) -> Result<(), store::Error> {
        self.deliver_pending(now);
        Ok(())
    }
}

/// When a simulation of `events` starts and stops.
///
/// # Errors
/// When no start can be determined, or `until` comes before the start.
pub fn bounds(
    events: &[Event],
    options: &Options,
) -> Result<(Timestamp, Timestamp), SimulateError> {
    let first = events.iter().map(|e| e.timestamp).min();
    let start = options.start.or(first).ok_or(SimulateError::NoStart)?;
    let horizon = jiff::SignedDuration::from_hours(24 * DEFAULT_HORIZON_DAYS);
    let last = events
        .iter()
        .map(|e| e.timestamp)
        .max()
        .map_or(start, |t| t.max(start));
    let until = options
        .until
        .unwrap_or_else(|| last.saturating_add(horizon).unwrap_or(Timestamp::MAX));
    if until < start {
        return Err(SimulateError::UntilBeforeStart { start, until });
    }
    Ok((start, until))
}

/// The shell the simulator plans with: the workflows, the segments and the lifecycle
/// thresholds of `options`, preview links, the journal on.
pub fn shell(workflows: &[Workflow], templates: Arc<Templates>, options: &Options) -> Shell {
    Shell {
        catalog: Arc::new(Catalog::from_parts(
            workflows.to_vec(),
            Vec::new(),
            options.segments.clone(),
        )),
        templates,
        links: Links::Preview,
        policy: Arc::new(options.policy.clone()),
        attribution_window: ATTRIBUTION_WINDOW,
        journal: true,
        lifecycle: Some(options.lifecycle),
    }
}

/// Plays `events` for `customer` on `stage` from `start` to `until` with `shell`, as `serve`
/// would with its clock at each moment something is due: a sweep when one is due (at the
/// start, then every `refresh` when the catalog has segments or the shell computes traits),
/// the script lines of that moment applied ([`PROFILE_PATCH`] and [`SUPPRESS`] as the API
/// would, the others stored as events), a scheduler tick, a delivery round. Returns the
/// journal; the script is assumed checked ([`check_script`]), a line that does not apply
/// is passed over.
///
/// # Errors
/// A store error.
pub async fn timeline<S: Stage>(
    stage: &S,
    shell: &Shell,
    customer: Customer,
    mut events: Vec<Event>,
    (start, until): (Timestamp, Timestamp),
    refresh: Option<std::time::Duration>,
) -> Result<Vec<Line>, store::Error> {
    let refresh = refresh
        .filter(|_| !shell.catalog.segments().is_empty() || shell.lifecycle.is_some())
        .and_then(|r| jiff::SignedDuration::try_from(r).ok())
        .filter(jiff::SignedDuration::is_positive);
    events.sort_by_key(|e| e.timestamp);
    let id = customer.id.clone();
    stage.put_customer(&customer, start).await?;
    let mut journal = Vec::new();
    let nothing = |_: &TickReport| {};
    // The sweep a new customer meets in `serve`: their time-based triggers scheduled.
    let mut sink = Sink {
        committed: &nothing,
        journal: Some(&mut journal),
    };
    journey::drive::sweep(stage, shell, start, &mut sink).await?;
    let mut events = events
        .into_iter()
        .filter(|e| e.timestamp >= start)
        .peekable();
    let mut next_sweep = refresh.and_then(|r| start.checked_add(r).ok());
    for _ in 0..MAX_MOMENTS {
        let next_event = events.peek().map(|e| e.timestamp);
        let next_due = stage.next_due().await?;
        // At equal times events go first, as in `serve`: an order at the very second a wait
        // times out still counts as arriving in time.
        let Some(now) = [next_event, next_due, next_sweep]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        if now > until {
            break;
        }
        if next_sweep == Some(now) {
            // As `scheduler::run`: the sweep first, then the tick.
            let mut sink = Sink {
                committed: &nothing,
                journal: Some(&mut journal),
            };
            journey::drive::sweep(stage, shell, now, &mut sink).await?;
            next_sweep = refresh.and_then(|r| now.checked_add(r).ok());
        }
        while let Some(event) = events.next_if(|e| e.timestamp == now) {
            match ScriptAction::of(&event) {
                None => stage.insert_event(&id, &event, now).await?,
                Some(Ok(ScriptAction::Patch(patch))) => {
                    stage.patch_customer(&id, &patch, now).await?
                }
                Some(Ok(ScriptAction::Suppress(channel, address))) => {
                    stage.suppress(channel, &address, "hard", now).await?
                }
                Some(Err(_)) => {}
            }
        }
        let mut sink = Sink {
            committed: &nothing,
            journal: Some(&mut journal),
        };
        journey::drive::tick(stage, shell, BATCH, now, &mut sink).await?;
        stage.deliver(now).await?;
    }
    Ok(journal)
}

/// Runs the simulation of `workflows` in memory and returns the timeline.
///
/// # Errors
/// When no start can be determined, `until` comes before the start, or a script line does
/// not apply ([`check_script`]).
pub fn run(
    workflows: &[Workflow],
    templates: Arc<Templates>,
    customer: Customer,
    events: Vec<Event>,
    options: Options,
) -> Result<Vec<Line>, SimulateError> {
    let bounds = bounds(&events, &options)?;
    check_script(&customer, &events)?;
    let shell = shell(workflows, templates, &options);
    let lines = ready(timeline(
        &MemoryStore::default(),
        &shell,
        customer,
        events,
        bounds,
        options.segment_refresh,
    ))
    .expect("the memory store refuses nothing the shell plans");
    Ok(lines)
}

/// The output of a future of the memory store, which never waits: it is ready when first
/// polled.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the memory store never waits"),
    }
}
