//! The node kinds of the file format, each with its explicit edges.
//!
//! This file holds the format only; `engine::node` holds what each kind does.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Located;
use super::condition::{Comparison, Condition};
use super::duration::Duration;
use super::local_time::{TimeOfDay, Weekday};
use crate::model::NodeId;

/// One step of a journey. Written as `kind: { fields }`, or `exit` alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    /// Pause for a duration, until a local time of day, or until a date attribute.
    Wait(Wait),
    /// Pause until an event arrives or a timeout passes.
    WaitForEvent(WaitForEvent),
    /// Take the first case whose condition holds, else the `else` edge.
    Branch(Branch),
    /// Send each customer down one weighted arm, the same one every time.
    Split(Split),
    /// Send an email rendered from a template.
    SendEmail(SendEmail),
    /// Send an SMS rendered from a template.
    SendSms(SendSms),
    /// Call an HTTP endpoint with a templated JSON body.
    Webhook(Webhook),
    /// Change the customer's attributes and tags.
    Update(Update),
    /// End the journey.
    Exit,
}

/// Pause. Exactly one of `duration`, `until` or `until_attribute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// Wait this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Wait until the next time the customer's local clock shows this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<TimeOfDay>,
    /// With `until`: only on these local weekdays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekdays: Option<Vec<Weekday>>,
    /// Wait until the date in this attribute (`YYYY-MM-DD`), moved by `offset`, at `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_attribute: Option<String>,
    /// With `until_attribute`: days before (`-7d`) or after the date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Duration>,
    /// With `until_attribute`: the local time of day (default `09:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<TimeOfDay>,
    /// Where to go when the wait is over.
    pub next: Located<NodeId>,
}

/// Pause until a matching event, or the timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForEvent {
    /// The event name.
    pub event: String,
    /// Every comparison must hold on the event's properties.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Comparison>,
    /// How long to wait before taking `on_timeout`.
    pub timeout: Duration,
    /// Where to go when the event arrives; later nodes see it as `event`.
    pub on_event: Located<NodeId>,
    /// Where to go when the timeout passes first.
    pub on_timeout: Located<NodeId>,
}

/// An ordered list of cases plus a fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// Tried in order; the first whose condition holds wins.
    pub cases: Vec<Case>,
    /// Where to go when no case holds.
    #[serde(rename = "else")]
    pub otherwise: Located<NodeId>,
}

/// One case of a branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The condition.
    pub when: Condition,
    /// Where to go when it holds.
    pub next: Located<NodeId>,
}

/// A/B/n split with an optional hold-out. Weights are percentages and, with the hold-out,
/// must sum to 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The arms.
    pub arms: Vec<Arm>,
    /// Percentage of customers held out: they exit here and receive nothing (a control group).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One arm of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// The arm's name in reports, such as `a` or `discount`.
    pub name: String,
    /// Percentage of customers on this arm.
    pub weight: u32,
    /// Where this arm goes.
    pub next: Located<NodeId>,
}

/// Send an email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEmail {
    /// The template folder under `templates/`, with `subject.hbs`, `html.hbs` and `text.hbs`.
    pub template: String,
    /// Overrides the configured sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A Reply-To address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Where to go next.
    pub next: Located<NodeId>,
}

/// Send an SMS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSms {
    /// The template folder under `templates/`, with `sms.hbs`.
    pub template: String,
    /// Where to go next.
    pub next: Located<NodeId>,
}

/// Call an HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// HTTP method (default `POST`).
    #[serde(default)]
    pub method: Method,
    /// The URL; may use template expressions such as `{{customer.id}}`.
    pub url: String,
    /// Extra headers; values may use template expressions.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    /// JSON body; every string in it may use template expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Where to go next.
    pub next: Located<NodeId>,
}

/// The HTTP method of a webhook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// POST
    #[default]
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// GET (sends no body)
    Get,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Get => "GET",
            Method::Delete => "DELETE",
        }
    }
}

/// Change the customer's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Attributes to set.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub set: Map<String, Value>,
    /// Attributes to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
    /// Tags to add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_tags: Vec<String>,
    /// Tags to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tags: Vec<String>,
    /// Where to go next.
    pub next: Located<NodeId>,
}

impl Node {
    /// The kind's name as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Wait(_) => "wait",
            Node::WaitForEvent(_) => "wait_for_event",
            Node::Branch(_) => "branch",
            Node::Split(_) => "split",
            Node::SendEmail(_) => "send_email",
            Node::SendSms(_) => "send_sms",
            Node::Webhook(_) => "webhook",
            Node::Update(_) => "update",
            Node::Exit => "exit",
        }
    }

    /// Every outgoing edge, in the order the file gives them.
    pub fn edges(&self) -> Vec<&NodeId> {
        self.located_edges().into_iter().map(|e| &e.value).collect()
    }

    /// Every outgoing edge with its line in the file, in the order the file gives them.
    pub fn located_edges(&self) -> Vec<&Located<NodeId>> {
        match self {
            Node::Wait(n) => vec![&n.next],
            Node::WaitForEvent(n) => vec![&n.on_event, &n.on_timeout],
            Node::Branch(n) => n
                .cases
                .iter()
                .map(|c| &c.next)
                .chain([&n.otherwise])
                .collect(),
            Node::Split(n) => n.arms.iter().map(|a| &a.next).collect(),
            Node::SendEmail(n) => vec![&n.next],
            Node::SendSms(n) => vec![&n.next],
            Node::Webhook(n) => vec![&n.next],
            Node::Update(n) => vec![&n.next],
            Node::Exit => vec![],
        }
    }

    /// Whether the node pauses the journey, so a loop through it cannot spin. A zero-length
    /// wait does not: a loop through it would wake at once, forever.
    pub fn waits(&self) -> bool {
        match self {
            Node::Wait(w) => w.duration.is_none_or(|d| d.is_positive()),
            Node::WaitForEvent(_) => true,
            _ => false,
        }
    }

    /// Whether the node can end the journey by itself (exit, or a split's hold-out).
    pub fn can_end(&self) -> bool {
        matches!(self, Node::Exit) || matches!(self, Node::Split(s) if s.holdout > 0)
    }
}
