//! The journey shell: everything between loading a customer and writing the results, decided
//! on the loaded state alone. Given the catalog, the send policy, one customer's
//! [`CustomerState`], one piece of [`Work`] and `now`, [`plan`] returns the
//! [`CustomerWrite`] — entry decisions, engine steps, cap and quiet-hours bookkeeping, segment
//! membership, trigger occurrences, rendering. Pure: no store, no clock, no async; the
//! scheduler loads before and writes after.

mod catalog;
pub mod drive;
mod fires;
mod links;
mod outbox;
mod state;
#[cfg(test)]
mod tests;
mod timeline;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

pub use catalog::Catalog;
pub use drive::{Sink, TickReport};
pub use links::{Links, PREVIEW_UNSUBSCRIBE_LINK};
pub use state::{CustomerState, CustomerWrite, FireWrite, LoadSpec, Work};
pub use timeline::{Line, render_json, render_text};

use crate::engine::entry::{EntryDecision, PastEntries, enrolls_on_event, may_enter};
use crate::engine::policy::SendPolicy;
use crate::engine::{Enrollment, ExitReason, Facts, Input, Status, step};
use crate::model::{Channel, Customer, CustomerId, Event};
use crate::template::Templates;
use crate::workflow::{Trigger, Workflow};

/// The event that scripts entering a segment that has no definition (the simulator's
/// scripts; the API refuses event names starting with `$`).
pub const SEGMENT_ENTERED: &str = "$segment_entered";
/// The event that scripts leaving a segment that has no definition.
pub const SEGMENT_EXITED: &str = "$segment_exited";

/// How far back a catch-up looks for a missed occurrence (`missed: next_day` reaches one day
/// back, and its replacement one day ahead), with a margin.
const FIRED_LOOKBACK: jiff::SignedDuration = jiff::SignedDuration::from_hours(49);

/// What the shell decides with: the same for every customer of a run.
#[derive(Debug, Clone)]
pub struct Shell {
    /// The workflows and segments.
    pub catalog: Arc<Catalog>,
    /// The templates.
    pub templates: Arc<Templates>,
    /// Link builder.
    pub links: Links,
    /// Quiet hours, caps, default time zone.
    pub policy: Arc<SendPolicy>,
    /// A conversion is credited to the last message received within this long before it.
    pub attribution_window: Duration,
    /// Whether [`plan`] writes the timeline of what it decided ([`CustomerWrite::journal`]):
    /// the simulator's output. Off in `serve`, where nobody reads it.
    pub journal: bool,
    /// The lifecycle thresholds of the computed traits, which every sweep recomputes first;
    /// `None`: no traits are computed.
    pub lifecycle: Option<crate::traits::Lifecycle>,
}

impl Shell {
    /// What the store must read for `work` at `now`.
    pub fn load_spec(&self, work: &Work<'_>, now: Timestamp) -> LoadSpec {
        let lookback = now.checked_sub(FIRED_LOOKBACK).unwrap_or(Timestamp::MIN);
        // Occurrences are consulted by a catch-up (`missed: next_day`) and by a due fire.
        let catches_up = self.catalog.current().any(|w| {
            matches!(&w.trigger.value, Trigger::Schedule(s) if s.missed == crate::workflow::Missed::NextDay)
        });
        LoadSpec {
            history_since: self.catalog.history_since(now),
            sends_since: self.policy.longest_window().map(|window| {
                now.checked_sub(window.as_signed())
                    .unwrap_or(Timestamp::MIN)
            }),
            fired_since: match work {
                Work::Fire { occurrence, .. } => Some(lookback.min(*occurrence)),
                Work::Event(_) | Work::Sweep if catches_up => Some(lookback),
                Work::Event(_) | Work::Sweep | Work::Wake(_) => None,
            },
            enrollments: !matches!(work, Work::Wake(_)),
        }
    }
}

/// Plans one piece of work for one customer on their loaded state. Workflows in `paused`
/// enroll nobody.
pub fn plan(
    shell: &Shell,
    id: &CustomerId,
    state: CustomerState,
    work: Work<'_>,
    paused: &BTreeSet<String>,
    now: Timestamp,
) -> CustomerWrite {
    let mut working = Working::new(id, state);
    match work {
        Work::Event(stored) => working.on_event(shell, stored, paused, now),
        Work::Wake(enrollment) => working.on_wake(shell, enrollment, now),
        Work::Fire {
            workflow_id,
            occurrence,
        } => working.on_fire(shell, workflow_id, occurrence, paused, now),
        Work::Sweep => working.on_sweep(shell, paused, now),
    }
    working.finish()
}

/// One customer while planned: the loaded state, the profile as the steps leave it, and the
/// writes so far.
pub(crate) struct Working {
    state: CustomerState,
    customer: Customer,
    changed: bool,
    /// Workflows the customer is active in after the steps so far.
    active_in: BTreeSet<String>,
    write: CustomerWrite,
}

impl Working {
    fn new(id: &CustomerId, mut state: CustomerState) -> Self {
        let customer = state
            .customer
            .take()
            .unwrap_or_else(|| Customer::minimal(id.clone()));
        // Active whether or not its version still loads: entering the workflow again would
        // break the one-active-enrollment rule.
        let active_in = state
            .enrollments
            .iter()
            .map(|e| e.workflow_id.to_string())
            .collect();
        let version = state.version;
        Self {
            state,
            customer,
            changed: false,
            active_in,
            write: CustomerWrite {
                id: Some(id.clone()),
                version,
                ..CustomerWrite::default()
            },
        }
    }

    /// Notes in the journal why nothing happened (in `workflow`, when it is about one).
    fn skip(&mut self, shell: &Shell, now: Timestamp, workflow: Option<&str>, reason: &str) {
        if shell.journal {
            let mut line = Line::new(now, None, "skip", serde_json::json!({ "reason": reason }));
            line.workflow = workflow
                .filter(|_| shell.catalog.several())
                .map(str::to_owned);
            self.write.journal.push(line);
        }
    }

    fn id(&self) -> &CustomerId {
        &self.customer.id
    }

    fn finish(mut self) -> CustomerWrite {
        if self.changed {
            self.write.profile = Some(self.customer);
        }
        self.write
    }

    /// Steps one enrollment and adds its writes.
    fn step(
        &mut self,
        shell: &Shell,
        workflow: &Workflow,
        enrollment: &Enrollment,
        input: &Input,
        now: Timestamp,
    ) {
        let facts = Facts {
            customer: &self.customer,
            segments: &self.state.segments,
            history: &self.state.history,
            policy: &shell.policy,
            recent_sends: &self.state.cap_sends,
        };
        let result = step(workflow, enrollment, &facts, input, now);
        if result.enrollment != *enrollment {
            let first_row = self.write.messages.len();
            let marks = outbox::apply(shell, workflow, &result, self, now);
            if shell.journal {
                let zone =
                    crate::engine::policy::with_default_zone(&self.customer, &shell.policy).tz();
                let waiting_at = enrollment.current_node().map(|n| n.as_str());
                let mut lines = timeline::step_lines(
                    &result,
                    waiting_at,
                    &self.write.messages[first_row..],
                    &zone,
                    now,
                );
                if shell.catalog.several() {
                    for line in &mut lines {
                        line.workflow = Some(workflow.id.to_string());
                    }
                }
                self.write.journal.extend(lines);
            }
            // The next workflow stepped for this customer sees exactly what the outbox rows
            // will count.
            self.state
                .cap_sends
                .extend(marks.iter().map(|mark| (mark.channel(), mark.at())));
        }
        if result.enrollment.is_active() {
            self.active_in.insert(workflow.id.to_string());
        } else {
            self.active_in.remove(workflow.id.as_str());
        }
    }

    /// Enrolls the customer if the workflow's entry rule allows.
    fn enter(
        &mut self,
        shell: &Shell,
        workflow: &Workflow,
        trigger: Option<Event>,
        enrollment_id: String,
        now: Timestamp,
    ) {
        let past = PastEntries {
            active: self.active_in.contains(workflow.id.as_str()),
            last_entered_at: self.state.last_entered.get(workflow.id.as_str()).copied(),
        };
        let refused = match may_enter(workflow.entry, past, now) {
            EntryDecision::Enter => None,
            EntryDecision::AlreadyActive => Some("already in this workflow".to_owned()),
            EntryDecision::AlreadyEntered => {
                Some("entry is once, and the customer entered before".to_owned())
            }
            EntryDecision::CoolingDown(until) => Some(format!("cooling down until {until}")),
        };
        if let Some(reason) = refused {
            self.skip(shell, now, Some(workflow.id.as_str()), &reason);
            return;
        }
        self.state.last_entered.insert(workflow.id.to_string(), now);
        let new = Enrollment::new(enrollment_id, workflow, self.id().clone(), trigger, now);
        self.step(shell, workflow, &new, &Input::Enter, now);
    }

    /// Recomputes segment membership; records and returns the transitions.
    fn refresh_segments(&mut self, shell: &Shell, now: Timestamp) -> (Vec<String>, Vec<String>) {
        if shell.catalog.segments().is_empty() {
            return (Vec::new(), Vec::new());
        }
        let no_segments = BTreeSet::new();
        let scope = crate::engine::condition::Scope {
            customer: &self.customer,
            event: None,
            trigger: None,
            segments: &no_segments,
            history: &self.state.history,
            now,
        };
        let now_in = crate::engine::segment::membership(shell.catalog.segments(), &scope);
        let entered: Vec<String> = now_in.difference(&self.state.segments).cloned().collect();
        let exited: Vec<String> = self.state.segments.difference(&now_in).cloned().collect();
        self.write.joined.extend(entered.iter().cloned());
        self.write.left.extend(exited.iter().cloned());
        self.state.segments = now_in;
        (entered, exited)
    }

    /// Enrolls in the workflows whose segment triggers the transitions fire.
    fn enter_by_segments(
        &mut self,
        shell: &Shell,
        transitions: &(Vec<String>, Vec<String>),
        paused: &BTreeSet<String>,
        now: Timestamp,
    ) {
        for workflow in shell.catalog.current() {
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
                    self.id(),
                    now.as_millisecond()
                );
                self.enter(shell, workflow, None, id, now);
            }
        }
    }

    /// Recomputes segments, steps the customer's active enrollments with the event, then
    /// enrolls the customer in every workflow the event or a segment transition triggers.
    fn on_event(
        &mut self,
        shell: &Shell,
        stored: &crate::store::StoredEvent,
        paused: &BTreeSet<String>,
        now: Timestamp,
    ) {
        self.write.processed = Some(stored.seq);
        if let Some(segment) = defined_yet_scripted(shell, &stored.event) {
            let reason = format!(
                "segment {segment} is defined, so it is computed, not scripted (simulate --script-segments scripts it)"
            );
            self.skip(shell, now, None, &reason);
            return;
        }
        if let Some(transitions) = scripted_segment(&stored.event, &self.state.segments) {
            for segment in &transitions.0 {
                self.state.segments.insert(segment.clone());
            }
            for segment in &transitions.1 {
                self.state.segments.remove(segment);
            }
            self.write.joined.extend(transitions.0.iter().cloned());
            self.write.left.extend(transitions.1.iter().cloned());
            self.enter_by_segments(shell, &transitions, paused, now);
            return;
        }
        let transitions = self.refresh_segments(shell, now);
        let input = Input::Event(stored.event.clone());
        for enrollment in std::mem::take(&mut self.state.enrollments) {
            let Some(workflow) = shell.catalog.version(
                enrollment.workflow_id.as_str(),
                &enrollment.workflow_version,
            ) else {
                continue; // Exited as broken at its next wake-up.
            };
            self.step(shell, workflow, &enrollment, &input, now);
        }
        for workflow in shell.catalog.current() {
            if paused.contains(workflow.id.as_str()) || !enrolls_on_event(workflow, &stored.event) {
                continue;
            }
            // Derived from the event's sequence number, so a replay after a crash gives the
            // same enrollment and the same message keys.
            let enrollment_id = format!("{}:{}:{}", workflow.id, stored.customer_id, stored.seq);
            self.enter(
                shell,
                workflow,
                Some(stored.event.clone()),
                enrollment_id,
                now,
            );
        }
        self.enter_by_segments(shell, &transitions, paused, now);
        self.schedule_fires(shell, now);
    }

    /// Wakes one due enrollment; one whose version no longer loads exits as broken.
    fn on_wake(&mut self, shell: &Shell, enrollment: &Enrollment, now: Timestamp) {
        let Some(workflow) = shell.catalog.version(
            enrollment.workflow_id.as_str(),
            &enrollment.workflow_version,
        ) else {
            let mut ended = enrollment.clone();
            ended.status = Status::Exited {
                reason: ExitReason::Broken(format!(
                    "workflow version {} is no longer available",
                    enrollment.workflow_version
                )),
                at: now,
            };
            self.write.enrollments.push(ended);
            return;
        };
        self.step(shell, workflow, enrollment, &Input::Wake, now);
    }

    /// The periodic sweep: segment transitions that came with time alone, and the next
    /// occurrence of every time-based trigger.
    fn on_sweep(&mut self, shell: &Shell, paused: &BTreeSet<String>, now: Timestamp) {
        let transitions = self.refresh_segments(shell, now);
        if !transitions.0.is_empty() || !transitions.1.is_empty() {
            self.enter_by_segments(shell, &transitions, paused, now);
        }
        self.schedule_fires(shell, now);
    }
}

/// The transition a scripted segment event makes, `(entered, exited)`, empty unless it
/// changes membership; `None` for any other event. Called for segments the catalog does not
/// define (a defined one is computed: see `defined_yet_scripted`).
fn scripted_segment(
    event: &Event,
    segments: &BTreeSet<String>,
) -> Option<(Vec<String>, Vec<String>)> {
    let entered = match event.name.as_str() {
        SEGMENT_ENTERED => true,
        SEGMENT_EXITED => false,
        _ => return None,
    };
    let segment = event.property("segment")?.as_str()?.to_owned();
    Some(match (entered, segments.contains(&segment)) {
        (true, false) => (vec![segment], Vec::new()),
        (false, true) => (Vec::new(), vec![segment]),
        _ => (Vec::new(), Vec::new()),
    })
}

/// The segment a scripted segment event names, when the catalog defines it.
fn defined_yet_scripted<'e>(shell: &Shell, event: &'e Event) -> Option<&'e str> {
    if event.name != SEGMENT_ENTERED && event.name != SEGMENT_EXITED {
        return None;
    }
    let segment = event.property("segment")?.as_str()?;
    shell
        .catalog
        .segments()
        .iter()
        .any(|s| s.id == segment)
        .then_some(segment)
}

/// The channels a customer has an address for, with the address: what the store reads the
/// suppression list for.
pub fn addresses(customer: &Customer) -> Vec<(Channel, &str)> {
    [Channel::Email, Channel::Sms]
        .into_iter()
        .filter_map(|channel| customer.address(channel).map(|a| (channel, a)))
        .collect()
}
