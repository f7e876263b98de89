//! Drives the engine on a virtual clock for one customer and one workflow, and records the
//! timeline: `trellis simulate` prints it, and tests assert it.
//!
//! No I/O and no wall clock: the caller hands in the parsed workflow, templates, customer and
//! events. Segment membership is scripted with `$segment_entered` / `$segment_exited` events
//! (property `segment`) until segments are computed by the runtime.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::engine::entry::{
    EntryDecision, PastEntries, enrolls_on_event, in_audience, may_enter, next_fire,
};
use crate::engine::policy::SendPolicy;
use crate::engine::{Effect, Enrollment, Facts, Input, Step, apply_update, condition::Scope, step};
use crate::model::{Channel, Customer, Event};
use crate::template::{Templates, render_context};
use crate::workflow::{Trigger, Workflow};

/// The unsubscribe link shown in simulated messages; the runtime signs real ones.
pub const PREVIEW_UNSUBSCRIBE_LINK: &str = "https://trellis.invalid/unsubscribe/preview";
/// The event that scripts entering a segment in the simulator.
pub const SEGMENT_ENTERED: &str = "$segment_entered";
/// The event that scripts leaving a segment in the simulator.
pub const SEGMENT_EXITED: &str = "$segment_exited";
/// How long the simulation runs after the last event when no `until` is given.
pub const DEFAULT_HORIZON_DAYS: i64 = 30;
/// A bound on simulated moments, so a schedule firing every minute cannot run away.
const MAX_MOMENTS: usize = 100_000;
/// How many lines of a message body the timeline shows.
const PREVIEW_LINES: usize = 3;

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
}

/// What happened at one moment of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// When.
    pub at: Timestamp,
    /// The node involved, if any.
    pub node: Option<String>,
    /// `enter`, `wait`, `send`, `suppressed`, `webhook`, `update`, `goal`, `exit`, `skip`, `error`.
    pub kind: &'static str,
    /// Kind-specific fields, as in the `--json` output.
    pub fields: serde_json::Map<String, Value>,
}

impl Line {
    fn new(at: Timestamp, node: Option<&str>, kind: &'static str, fields: Value) -> Self {
        let fields = match fields {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        Self {
            at,
            node: node.map(str::to_owned),
            kind,
            fields,
        }
    }

    /// The line as one JSON object: `at`, `node`, `kind`, then the fields.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("at".into(), json!(self.at.to_string()));
        map.insert("node".into(), json!(self.node));
        map.insert("kind".into(), json!(self.kind));
        map.extend(self.fields.clone());
        Value::Object(map)
    }

    /// The line as text for people: time, kind, node and a short description.
    pub fn to_text(&self) -> String {
        let f = |k: &str| self.fields.get(k).and_then(Value::as_str).unwrap_or("");
        let node = self.node.as_deref().unwrap_or("-");
        let detail = match self.kind {
            "wait" => format!("until {} ({})", f("until"), f("local")),
            "send" if f("channel") == "email" => {
                format!("email {} to {}: {:?}", f("template"), f("to"), f("subject"))
            }
            "send" => format!("{} {} to {}", f("channel"), f("template"), f("to")),
            "suppressed" => format!("{} not sent: {}", f("channel"), f("reason")),
            "held" => format!(
                "{} held until {} ({})",
                f("channel"),
                f("until"),
                f("reason")
            ),
            "webhook" => format!("{} {}", f("method"), f("url")),
            "update" => self
                .fields
                .get("update")
                .map(Value::to_string)
                .unwrap_or_default(),
            "goal" => match self.fields.get("value").and_then(Value::as_f64) {
                Some(v) => format!("{} reached, value {v:.2}", f("event")),
                None => format!("{} reached", f("event")),
            },
            "exit" => f("reason").to_owned(),
            "skip" | "error" => f("reason").to_owned(),
            _ => String::new(),
        };
        let mut out = format!("{}  {:<10} {:<16} {}", self.at, self.kind, node, detail)
            .trim_end()
            .to_owned();
        if let Some(body) = self.fields.get("body").and_then(Value::as_str) {
            for line in body.lines() {
                let _ = write!(out, "\n{:>33}| {line}", "");
            }
        }
        out
    }
}

/// One simulation in progress.
struct Sim<'a> {
    workflow: &'a Workflow,
    templates: &'a Templates,
    customer: Customer,
    segments: BTreeSet<String>,
    history: Vec<Event>,
    enrollment: Option<Enrollment>,
    past: PastEntries,
    n_enrollments: usize,
    lines: Vec<Line>,
    policy: SendPolicy,
    /// Marketing sends so far, which frequency caps count.
    sends: Vec<(Channel, Timestamp)>,
}

/// Runs the simulation and returns the timeline.
///
/// # Errors
/// When no start can be determined, or `until` comes before the start.
pub fn run(
    workflow: &Workflow,
    templates: &Templates,
    customer: Customer,
    mut events: Vec<Event>,
    options: Options,
) -> Result<Vec<Line>, SimulateError> {
    events.sort_by_key(|e| e.timestamp);
    let mut seen_ids = BTreeSet::new();
    events.retain(|e| e.id.as_ref().is_none_or(|id| seen_ids.insert(id.clone())));

    let start = options
        .start
        .or_else(|| events.first().map(|e| e.timestamp))
        .ok_or(SimulateError::NoStart)?;
    let horizon = jiff::SignedDuration::from_hours(24 * DEFAULT_HORIZON_DAYS);
    let last = events.last().map_or(start, |e| e.timestamp.max(start));
    let until = options
        .until
        .unwrap_or_else(|| last.saturating_add(horizon).unwrap_or(Timestamp::MAX));
    if until < start {
        return Err(SimulateError::UntilBeforeStart { start, until });
    }

    let mut sim = Sim {
        workflow,
        templates,
        customer,
        segments: BTreeSet::new(),
        history: Vec::new(),
        enrollment: None,
        past: PastEntries::default(),
        n_enrollments: 0,
        lines: Vec::new(),
        policy: options.policy.clone(),
        sends: Vec::new(),
    };
    let mut events = events
        .into_iter()
        .filter(|e| e.timestamp >= start)
        .peekable();
    let mut fire_cursor = start;
    let mut next_trigger = next_fire(
        workflow,
        &crate::engine::policy::with_default_zone(&sim.customer, &sim.policy),
        fire_cursor,
    );

    for _ in 0..MAX_MOMENTS {
        let next_event = events.peek().map(|e| e.timestamp);
        let next_wake = sim.enrollment.as_ref().and_then(Enrollment::next_wake);
        // At equal times an event goes first: an order at the very second a wait times out
        // still counts as arriving in time.
        let Some(now) = [next_event, next_wake, next_trigger]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        if now > until {
            break;
        }
        if next_event == Some(now) {
            let event = events.next().expect("peeked just above");
            sim.on_event(event, now);
        } else if next_wake == Some(now) {
            sim.step_current(&Input::Wake, now);
        } else {
            sim.on_schedule(now);
            fire_cursor = now;
        }
        // Updates may change the date attribute a trigger reads, so ask again each time.
        next_trigger = next_fire(
            workflow,
            &crate::engine::policy::with_default_zone(&sim.customer, &sim.policy),
            fire_cursor,
        );
    }
    Ok(sim.lines)
}

impl Sim<'_> {
    fn facts_step(&self, enrollment: &Enrollment, input: &Input, now: Timestamp) -> Step {
        let facts = Facts {
            customer: &self.customer,
            segments: &self.segments,
            history: &self.history,
            policy: &self.policy,
            recent_sends: &self.sends,
        };
        step(self.workflow, enrollment, &facts, input, now)
    }

    fn on_event(&mut self, event: Event, now: Timestamp) {
        let segment = event
            .property("segment")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (event.name.as_str(), segment) {
            (SEGMENT_ENTERED, Some(segment)) => {
                if self.segments.insert(segment.clone())
                    && matches!(&self.workflow.trigger.value, Trigger::SegmentEntered(s) if *s == segment)
                {
                    self.try_enter(None, now);
                }
                return;
            }
            (SEGMENT_EXITED, Some(segment)) => {
                self.segments.remove(&segment);
                return;
            }
            _ => {}
        }
        self.history.push(event.clone());
        if self.enrollment.as_ref().is_some_and(Enrollment::is_active) {
            self.step_current(&Input::Event(event.clone()), now);
        }
        if enrolls_on_event(self.workflow, &event) {
            self.try_enter(Some(event), now);
        }
    }

    fn on_schedule(&mut self, now: Timestamp) {
        let scope = Scope {
            customer: &self.customer,
            event: None,
            trigger: None,
            segments: &self.segments,
            history: &self.history,
            now,
        };
        if in_audience(self.workflow, &scope) {
            self.try_enter(None, now);
        } else {
            self.lines.push(Line::new(
                now,
                None,
                "skip",
                json!({"reason": "not in the audience"}),
            ));
        }
    }

    fn try_enter(&mut self, trigger_event: Option<Event>, now: Timestamp) {
        self.past.active = self.enrollment.as_ref().is_some_and(Enrollment::is_active);
        let reason = match may_enter(self.workflow.entry, self.past, now) {
            EntryDecision::Enter => None,
            EntryDecision::AlreadyActive => Some("already in this workflow".to_owned()),
            EntryDecision::AlreadyEntered => {
                Some("entry is once, and the customer entered before".to_owned())
            }
            EntryDecision::CoolingDown(until) => Some(format!("cooling down until {until}")),
        };
        if let Some(reason) = reason {
            self.lines
                .push(Line::new(now, None, "skip", json!({ "reason": reason })));
            return;
        }
        self.n_enrollments += 1;
        let id = format!(
            "{}:{}:{}",
            self.workflow.id, self.customer.id, self.n_enrollments
        );
        self.enrollment = Some(Enrollment::new(
            id,
            self.workflow,
            self.customer.id.clone(),
            trigger_event,
            now,
        ));
        self.past.last_entered_at = Some(now);
        self.step_current(&Input::Enter, now);
    }

    fn step_current(&mut self, input: &Input, now: Timestamp) {
        let Some(enrollment) = self.enrollment.take() else {
            return;
        };
        let result = self.facts_step(&enrollment, input, now);
        // Each node entered, followed by the effects it produced; effects before the first
        // visit (a goal reached while waiting) come first, at the node that was waiting.
        let first = result
            .path
            .first()
            .map_or(result.effects.len(), |v| v.first_effect);
        let waiting_at = enrollment.current_node().map(|n| n.as_str());
        for effect in &result.effects[..first] {
            self.perform(effect, &result.enrollment, now, waiting_at);
        }
        for (i, visit) in result.path.iter().enumerate() {
            let end = result
                .path
                .get(i + 1)
                .map_or(result.effects.len(), |v| v.first_effect);
            let node = Some(visit.node.as_str());
            self.lines.push(Line::new(now, node, "enter", json!({})));
            for effect in &result.effects[visit.first_effect..end] {
                self.perform(effect, &result.enrollment, now, node);
            }
        }
        self.enrollment = Some(result.enrollment);
    }

    fn perform(
        &mut self,
        effect: &Effect,
        enrollment: &Enrollment,
        now: Timestamp,
        node: Option<&str>,
    ) {
        let wf = self.workflow;
        let context = || {
            render_context(
                &self.customer,
                enrollment.current_event(),
                (wf.id.as_str(), &wf.name),
                PREVIEW_UNSUBSCRIBE_LINK,
            )
        };
        let line = match effect {
            Effect::Send(message) => {
                let to = self.customer.address(message.channel).unwrap_or_default();
                let mut fields = json!({
                    "channel": message.channel.as_str(),
                    "template": message.template,
                    "to": to,
                    "key": message.key.as_str(),
                });
                let rendered = match message.channel {
                    Channel::Email => self
                        .templates
                        .render_email(&message.template, &context())
                        .map(|e| {
                            fields["subject"] = json!(e.subject);
                            preview(&e.text)
                        }),
                    Channel::Sms => self.templates.render_sms(&message.template, &context()),
                };
                match rendered {
                    Ok(body) => {
                        // Queued for delivery, as in the runtime: only now does it count.
                        if let Some(mark) = crate::engine::policy::counts_toward_caps(
                            self.workflow.category,
                            effect,
                            now,
                        ) {
                            self.sends.push((mark.channel(), mark.at()));
                        }
                        fields["body"] = json!(body);
                        Line::new(now, Some(message.node.as_str()), "send", fields)
                    }
                    Err(err) => Line::new(
                        now,
                        Some(message.node.as_str()),
                        "error",
                        json!({"reason": err.to_string()}),
                    ),
                }
            }
            Effect::Held {
                node,
                channel,
                until,
                reason,
                ..
            } => Line::new(
                now,
                Some(node.as_str()),
                "held",
                json!({"channel": channel.as_str(), "until": until.to_string(), "reason": reason.to_string()}),
            ),
            Effect::Suppressed {
                node,
                channel,
                reason,
                ..
            } => Line::new(
                now,
                Some(node.as_str()),
                "suppressed",
                json!({"channel": channel.as_str(), "reason": reason.to_string()}),
            ),
            Effect::CallWebhook(call) => {
                let url = self.templates.render_url(&call.url, &context());
                match url {
                    Ok(url) => Line::new(
                        now,
                        Some(call.node.as_str()),
                        "webhook",
                        json!({"method": call.method.as_str(), "url": url, "key": call.key.as_str()}),
                    ),
                    Err(err) => Line::new(
                        now,
                        Some(call.node.as_str()),
                        "error",
                        json!({"reason": err.to_string()}),
                    ),
                }
            }
            Effect::UpdateProfile { node, update } => {
                apply_update(update, &mut self.customer);
                // The edge is the workflow's business; the timeline shows what changed.
                let mut changes = json!(update);
                if let Some(map) = changes.as_object_mut() {
                    map.remove("next");
                }
                Line::new(
                    now,
                    Some(node.as_str()),
                    "update",
                    json!({ "update": changes }),
                )
            }
            Effect::WakeAt { node, at } => {
                let local = at.to_zoned(self.customer.tz());
                Line::new(
                    now,
                    Some(node.as_str()),
                    "wait",
                    json!({"until": at.to_string(), "local": local.strftime("%Y-%m-%d %H:%M %Z").to_string()}),
                )
            }
            Effect::Goal { event, value } => {
                Line::new(now, node, "goal", json!({"event": event, "value": value}))
            }
            Effect::Exit(reason) => {
                self.past.active = false;
                Line::new(now, node, "exit", json!({"reason": reason.to_string()}))
            }
        };
        self.lines.push(line);
    }
}

fn preview(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(PREVIEW_LINES)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The timeline as text, one moment a line (message bodies indented below their send).
pub fn render_text(lines: &[Line]) -> String {
    lines.iter().map(|l| l.to_text() + "\n").collect()
}

/// The timeline as JSON lines.
pub fn render_json(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| l.to_json().to_string() + "\n")
        .collect()
}
