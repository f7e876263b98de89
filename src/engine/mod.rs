//! The pure engine: one enrollment, one input, one `now` in; the new enrollment and the
//! effects to perform out.
//!
//! No I/O, no clock, no randomness, no logging: the scheduler gathers [`Facts`] and performs
//! [`Effect`]s; the simulator prints them. Same arguments, same result.

pub mod condition;
pub mod entry;
pub mod hash;
mod node;
pub mod policy;
pub mod segment;
pub mod time;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::{Channel, Customer, CustomerId, Event, IdempotencyKey, NodeId, WorkflowId};
use crate::workflow::{Method, Node, Update, Workflow};

use condition::Scope;

pub use node::apply_update;

/// A bound on nodes entered in one step. A journey that passes this many nodes without
/// waiting is looping, and exits as broken rather than spinning.
pub const MAX_NODES_PER_STEP: usize = 100;

/// One customer's pass through one workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Unique id, chosen by the shell.
    pub id: String,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The content hash of the workflow version the customer entered with.
    pub workflow_version: String,
    /// The customer.
    pub customer_id: CustomerId,
    /// When the customer entered.
    pub entered_at: Timestamp,
    /// Where the enrollment stands.
    pub status: Status,
    /// The event that started the enrollment, if an event did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_event: Option<Event>,
    /// The last event a `wait_for_event` matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_event: Option<Event>,
    /// How many times each node has been entered; part of each message's idempotency key.
    #[serde(default)]
    pub visits: BTreeMap<NodeId, u32>,
    /// The split arm taken, for reporting conversions per arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

/// Where an enrollment stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// Created, not yet stepped with [`Input::Enter`].
    New,
    /// Paused at a wait node until `wake_at` (or, at a `wait_for_event`, until the event).
    Waiting {
        /// The wait node.
        node: NodeId,
        /// When to call the engine again.
        wake_at: Timestamp,
    },
    /// Finished.
    Exited {
        /// Why.
        reason: ExitReason,
        /// When.
        at: Timestamp,
    },
}

/// Why an enrollment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum ExitReason {
    /// It reached an `exit` node.
    Completed,
    /// The goal event arrived.
    GoalReached,
    /// A split put the customer in the hold-out group.
    HeldOut,
    /// A node needed data the customer does not have, such as a date attribute.
    MissingData(String),
    /// The workflow could not go on: a missing node in an old version, or a loop without a wait.
    Broken(String),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Completed => f.write_str("completed"),
            ExitReason::GoalReached => f.write_str("goal reached"),
            ExitReason::HeldOut => f.write_str("held out"),
            ExitReason::MissingData(what) => write!(f, "missing data: {what}"),
            ExitReason::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

impl Enrollment {
    /// A new enrollment at the workflow's start, to be stepped with [`Input::Enter`].
    pub fn new(
        id: impl Into<String>,
        workflow: &Workflow,
        customer_id: CustomerId,
        trigger_event: Option<Event>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: id.into(),
            workflow_id: workflow.id.clone(),
            workflow_version: workflow.source.version.clone(),
            customer_id,
            entered_at: now,
            status: Status::New,
            trigger_event,
            matched_event: None,
            visits: BTreeMap::new(),
            arm: None,
        }
    }

    /// When the engine wants to be called again with [`Input::Wake`]; `None` once exited.
    pub fn next_wake(&self) -> Option<Timestamp> {
        match &self.status {
            Status::Waiting { wake_at, .. } => Some(*wake_at),
            Status::New | Status::Exited { .. } => None,
        }
    }

    /// Whether the enrollment has not ended.
    pub fn is_active(&self) -> bool {
        !matches!(self.status, Status::Exited { .. })
    }

    /// The node the enrollment waits at.
    pub fn current_node(&self) -> Option<&NodeId> {
        match &self.status {
            Status::Waiting { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The event conditions and templates see as `event`: the matched one, else the trigger.
    pub fn current_event(&self) -> Option<&Event> {
        self.matched_event.as_ref().or(self.trigger_event.as_ref())
    }
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Start a [`Status::New`] enrollment.
    Enter,
    /// An event for this customer arrived.
    Event(Event),
    /// Time passed; the shell calls this at or after [`Enrollment::next_wake`].
    Wake,
}

/// Everything the engine may consult about the customer, gathered by the shell.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The profile.
    pub customer: &'a Customer,
    /// Segments the customer belongs to.
    pub segments: &'a BTreeSet<String>,
    /// The customer's events, at least as far back as [`Workflow::history_window`] says.
    pub history: &'a [Event],
    /// Quiet hours, caps and the default time zone.
    pub policy: &'a policy::SendPolicy,
    /// The customer's marketing sends across all workflows, at least as far back as the
    /// longest cap window.
    pub recent_sends: &'a [(Channel, Timestamp)],
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique per enrollment, node and visit: the outbox's dedup key and the `Message-ID`.
    pub key: IdempotencyKey,
    /// The send node.
    pub node: NodeId,
    /// Email or SMS.
    pub channel: Channel,
    /// The template folder.
    pub template: String,
    /// Sender override (email only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Reply-To (email only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Why a send node did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    /// No consent for the channel, and the workflow is marketing.
    NoConsent,
    /// The customer has no address for the channel.
    NoAddress,
    /// Due inside quiet hours, and the policy drops such messages.
    QuietHours,
    /// Over a frequency cap, and the policy drops such messages.
    FrequencyCap,
}

impl fmt::Display for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Suppression::NoConsent => "no consent",
            Suppression::NoAddress => "no address",
            Suppression::QuietHours => "quiet hours",
            Suppression::FrequencyCap => "frequency cap",
        })
    }
}

/// A webhook to call; strings are still templates, rendered by the shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookCall {
    /// Idempotency key, sent as the `Idempotency-Key` header.
    pub key: IdempotencyKey,
    /// The webhook node.
    pub node: NodeId,
    /// HTTP method.
    pub method: Method,
    /// URL template.
    pub url: String,
    /// Header templates.
    pub headers: Vec<(String, String)>,
    /// Body with template strings.
    pub body: Option<serde_json::Value>,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Render and deliver a message.
    Send(Message),
    /// Record that a send node did not send, and why.
    Suppressed {
        /// The key the message would have had.
        key: IdempotencyKey,
        /// The send node.
        node: NodeId,
        /// The channel.
        channel: Channel,
        /// Why not.
        reason: Suppression,
    },
    /// Call a webhook.
    CallWebhook(WebhookCall),
    /// Change the customer's profile.
    UpdateProfile {
        /// The update node.
        node: NodeId,
        /// What to change.
        update: Update,
    },
    /// A send is held (quiet hours, a frequency cap); the journey waits at the send node
    /// and sends, with the same key, at `until`.
    Held {
        /// The key the message will have when it goes.
        key: IdempotencyKey,
        /// The send node.
        node: NodeId,
        /// The channel.
        channel: Channel,
        /// When it may go.
        until: Timestamp,
        /// Why it waits.
        reason: Suppression,
    },
    /// Call the engine again at `at`.
    WakeAt {
        /// The wait node.
        node: NodeId,
        /// When.
        at: Timestamp,
    },
    /// The goal was reached: count a conversion.
    Goal {
        /// The goal event's name.
        event: String,
        /// The conversion value, when the goal names a value property and the event has it.
        value: Option<f64>,
    },
    /// The enrollment ended.
    Exit(ExitReason),
}

/// The result of one call to [`step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The enrollment after the step.
    pub enrollment: Enrollment,
    /// The effects, in the order they happen.
    pub effects: Vec<Effect>,
    /// The nodes entered during the step, in order.
    pub path: Vec<Visit>,
}

/// One node entered during a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// The node.
    pub node: NodeId,
    /// The index in [`Step::effects`] of the first effect this node produced; the node's
    /// effects run up to the next visit's `first_effect`.
    pub first_effect: usize,
}

/// Advances one enrollment as far as it can go without waiting.
///
/// An input that does not apply (a wake before its time, an event nobody waits for, an
/// enrollment that already ended) returns the enrollment unchanged with no effects.
pub fn step(
    workflow: &Workflow,
    enrollment: &Enrollment,
    facts: &Facts<'_>,
    input: &Input,
    now: Timestamp,
) -> Step {
    let mut run = Run {
        workflow,
        facts,
        customer: Cow::Borrowed(facts.customer),
        enrollment: enrollment.clone(),
        now,
        effects: Vec::new(),
        path: Vec::new(),
        node: None,
    };
    match (&enrollment.status, input) {
        (Status::New, Input::Enter) => run.advance(workflow.start.value.clone()),
        (Status::Waiting { node, wake_at }, Input::Event(event)) => {
            run.on_event(node, *wake_at, event)
        }
        (Status::Waiting { node, wake_at }, Input::Wake) if *wake_at <= now => run.on_wake(node),
        _ => {}
    }
    Step {
        enrollment: run.enrollment,
        effects: run.effects,
        path: run.path,
    }
}

/// What a node tells the run loop.
pub(crate) enum Flow {
    /// Go on to this node.
    Next(NodeId),
    /// Pause until this instant.
    Sleep(Timestamp),
    /// End the enrollment.
    End(ExitReason),
}

/// One step in progress: the state node handlers read and write.
pub(crate) struct Run<'a> {
    workflow: &'a Workflow,
    facts: &'a Facts<'a>,
    /// The customer, with this step's updates applied so later nodes see them.
    customer: Cow<'a, Customer>,
    enrollment: Enrollment,
    now: Timestamp,
    effects: Vec<Effect>,
    path: Vec<Visit>,
    /// The node being visited and its visit number.
    node: Option<(NodeId, u32)>,
}

impl Run<'_> {
    fn scope(&self) -> Scope<'_> {
        Scope {
            customer: &self.customer,
            event: self.enrollment.current_event(),
            trigger: self.enrollment.trigger_event.as_ref(),
            segments: self.facts.segments,
            history: self.facts.history,
            now: self.now,
        }
    }

    /// The customer's time zone, or the policy's default for customers without one.
    fn tz(&self) -> jiff::tz::TimeZone {
        match (&self.customer.timezone, &self.facts.policy.default_timezone) {
            (None, Some(default)) => default.clone(),
            _ => self.customer.tz(),
        }
    }

    fn node_id(&self) -> NodeId {
        self.node
            .as_ref()
            .map(|(id, _)| id.clone())
            .expect("node handlers run only inside advance, which sets the node")
    }

    /// The idempotency key of whatever the current node visit sends.
    fn key(&self) -> IdempotencyKey {
        let (node, visit) = self
            .node
            .as_ref()
            .expect("node handlers run only inside advance, which sets the node");
        IdempotencyKey::derive(&[&self.enrollment.id, node.as_str(), &visit.to_string()])
    }

    fn on_event(&mut self, at: &NodeId, wake_at: Timestamp, event: &Event) {
        if let Some(goal) = &self.workflow.goal
            && goal.event == event.name
            && condition::matches_filter(event, &goal.filter)
        {
            let value = goal
                .value
                .value
                .as_deref()
                .and_then(|prop| event.property(prop))
                .and_then(serde_json::Value::as_f64);
            self.effects.push(Effect::Goal {
                event: event.name.clone(),
                value,
            });
            return self.finish(ExitReason::GoalReached);
        }
        if let Some(Node::WaitForEvent(wait)) = self.workflow.node(at)
            && wait.event == event.name
            && event.timestamp <= wake_at
            && condition::matches_filter(event, &wait.filter)
        {
            self.enrollment.matched_event = Some(event.clone());
            self.advance(wait.on_event.value.clone());
        }
    }

    fn on_wake(&mut self, at: &NodeId) {
        match self.workflow.node(at) {
            Some(Node::Wait(wait)) => self.advance(wait.next.value.clone()),
            Some(Node::WaitForEvent(wait)) => self.advance(wait.on_timeout.value.clone()),
            // A held send: enter it again as the same visit, so it keeps its key.
            Some(Node::SendEmail(_) | Node::SendSms(_)) => self.resume(at.clone()),
            Some(other) => self.finish(ExitReason::Broken(format!(
                "waiting at node {at}, which is now a {} node",
                other.kind()
            ))),
            None => self.finish(ExitReason::Broken(format!(
                "waiting at node {at}, which no longer exists"
            ))),
        }
    }

    fn advance(&mut self, from: NodeId) {
        self.walk(from, false);
    }

    fn resume(&mut self, at: NodeId) {
        self.walk(at, true);
    }

    /// Walks from `from` until a wait or an exit; `resume` re-enters `from` as the same visit.
    fn walk(&mut self, from: NodeId, mut resume: bool) {
        let mut current = from;
        for _ in 0..MAX_NODES_PER_STEP {
            let Some(node) = self.workflow.node(&current) else {
                return self.finish(ExitReason::Broken(format!("node {current} does not exist")));
            };
            let visit = self.enrollment.visits.entry(current.clone()).or_insert(0);
            if !std::mem::take(&mut resume) || *visit == 0 {
                *visit += 1;
            }
            self.node = Some((current.clone(), *visit));
            self.path.push(Visit {
                node: current.clone(),
                first_effect: self.effects.len(),
            });
            match node::visit(node, self) {
                Flow::Next(next) => current = next,
                Flow::Sleep(at) => {
                    self.effects.push(Effect::WakeAt {
                        node: current.clone(),
                        at,
                    });
                    self.enrollment.status = Status::Waiting {
                        node: current,
                        wake_at: at,
                    };
                    return;
                }
                Flow::End(reason) => return self.finish(reason),
            }
        }
        self.finish(ExitReason::Broken(format!(
            "passed {MAX_NODES_PER_STEP} nodes without waiting: a loop without a wait"
        )));
    }

    fn finish(&mut self, reason: ExitReason) {
        self.effects.push(Effect::Exit(reason.clone()));
        self.enrollment.status = Status::Exited {
            reason,
            at: self.now,
        };
    }
}
