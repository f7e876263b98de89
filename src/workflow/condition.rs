//! Conditions, as branches, filters, audiences and segments write them.
//!
//! This file holds the format only; `engine::condition` evaluates it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::duration::Duration;
use crate::model::Channel;

/// A yes/no question about the customer, an event, or the customer's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Every condition holds (true when the list is empty).
    All(Vec<Condition>),
    /// At least one condition holds (false when the list is empty).
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// Compares a profile field (`email`, `phone`, `timezone`, `locale`) or an attribute path.
    Attribute(Comparison),
    /// Compares a property of the most recent event of this enrollment: the event a
    /// `wait_for_event` matched, or else the trigger event.
    Event(Comparison),
    /// Compares a property of the event that started the enrollment.
    Trigger(Comparison),
    /// The customer carries this tag.
    HasTag(String),
    /// The customer consents to messages on this channel.
    Consent(Channel),
    /// Counts the customer's events of one name, optionally filtered and within a window.
    EventCount(EventCount),
    /// Sums a numeric property of the customer's events of one name (such as order `value`).
    EventSum(EventSum),
    /// The customer is a member of the named segment.
    InSegment(String),
}

/// One comparison of a named value against an operand. Exactly one operator must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The attribute or property path, such as `plan` or `shipping.country`.
    pub name: String,
    /// Equal to (numbers compare by value, so `1` equals `1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<Value>,
    /// Not equal to; also true when the value is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ne: Option<Value>,
    /// Greater than (numbers, or strings such as ISO dates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Value>,
    /// Greater than or equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<Value>,
    /// Less than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Value>,
    /// Less than or equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<Value>,
    /// One of the listed values.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    /// A string containing this text, or a list containing this element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Value>,
    /// `true`: the value is present and not null; `false`: it is missing or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

/// The operator of a comparison, once checked that exactly one was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op<'a> {
    /// `eq`
    Eq(&'a Value),
    /// `ne`
    Ne(&'a Value),
    /// `gt`
    Gt(&'a Value),
    /// `gte`
    Gte(&'a Value),
    /// `lt`
    Lt(&'a Value),
    /// `lte`
    Lte(&'a Value),
    /// `in`
    In(&'a [Value]),
    /// `contains`
    Contains(&'a Value),
    /// `exists`
    Exists(bool),
}

impl Comparison {
    /// The single operator of this comparison.
    ///
    /// # Errors
    /// A sentence for the validator when none or several operators are given.
    pub fn op(&self) -> Result<Op<'_>, String> {
        let candidates = [
            self.eq.as_ref().map(Op::Eq),
            self.ne.as_ref().map(Op::Ne),
            self.gt.as_ref().map(Op::Gt),
            self.gte.as_ref().map(Op::Gte),
            self.lt.as_ref().map(Op::Lt),
            self.lte.as_ref().map(Op::Lte),
            self.one_of.as_deref().map(Op::In),
            self.contains.as_ref().map(Op::Contains),
            self.exists.map(Op::Exists),
        ];
        let mut given = candidates.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(op), None) => Ok(op),
            (None, _) => Err(format!(
                "comparison on {:?} needs one operator (eq, ne, gt, gte, lt, lte, in, contains, exists)",
                self.name
            )),
            (Some(_), Some(_)) => Err(format!(
                "comparison on {:?} has more than one operator; combine comparisons with `all`",
                self.name
            )),
        }
    }
}

/// How many events of one name the customer has, compared with a bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventCount {
    /// The event name, such as `order_completed`.
    pub event: String,
    /// Only count events whose properties pass every comparison.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Comparison>,
    /// Only count events this recent; all of history when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
    /// At least this many (default 1 when neither bound is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<u64>,
    /// At most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<u64>,
}

/// The sum of one property over the customer's events of one name, compared with bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSum {
    /// The event name, such as `order_completed`.
    pub event: String,
    /// The numeric property to add up, such as `value`; events without it add nothing.
    pub property: String,
    /// Only sum events whose properties pass every comparison.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Comparison>,
    /// Only events this recent; all of history when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
    /// The sum is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    /// The sum is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
}

impl Condition {
    /// The event-history window this condition looks back over, if it counts or sums events:
    /// `Some(None)` for all of history.
    pub fn history_window(&self) -> Option<Option<Duration>> {
        match self {
            Condition::EventCount(c) => Some(c.within),
            Condition::EventSum(s) => Some(s.within),
            _ => None,
        }
    }

    /// Calls `visit` on this condition and every condition nested in it.
    pub fn walk<'a>(&'a self, visit: &mut dyn FnMut(&'a Condition)) {
        visit(self);
        match self {
            Condition::All(list) | Condition::Any(list) => {
                list.iter().for_each(|c| c.walk(visit));
            }
            Condition::Not(inner) => inner.walk(visit),
            _ => {}
        }
    }
}
