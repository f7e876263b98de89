//! Evaluates conditions against the facts the shell gathered. Pure.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::Value;

use crate::model::{Customer, Event};
use crate::workflow::{Comparison, Condition, EventCount, EventSum, Op};

/// What a condition may look at.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The customer, with any updates made earlier in this step.
    pub customer: &'a Customer,
    /// The event a `wait_for_event` matched, or else the trigger event.
    pub event: Option<&'a Event>,
    /// The event that started the enrollment.
    pub trigger: Option<&'a Event>,
    /// Segments the customer belongs to.
    pub segments: &'a BTreeSet<String>,
    /// The customer's events, at least as far back as the workflow's windows need.
    pub history: &'a [Event],
    /// The engine's `now`.
    pub now: Timestamp,
}

/// Whether `condition` holds in `scope`.
pub fn holds(condition: &Condition, scope: &Scope<'_>) -> bool {
    match condition {
        Condition::All(list) => list.iter().all(|c| holds(c, scope)),
        Condition::Any(list) => list.iter().any(|c| holds(c, scope)),
        Condition::Not(inner) => !holds(inner, scope),
        Condition::Attribute(cmp) => compare(scope.customer.field(&cmp.name).as_ref(), cmp),
        Condition::Event(cmp) => compare(scope.event.and_then(|e| e.property(&cmp.name)), cmp),
        Condition::Trigger(cmp) => compare(scope.trigger.and_then(|e| e.property(&cmp.name)), cmp),
        Condition::HasTag(tag) => scope.customer.tags.contains(tag),
        Condition::Consent(channel) => scope.customer.consent.allows(*channel),
        Condition::EventCount(count) => count_holds(count, scope),
        Condition::EventSum(sum) => sum_holds(sum, scope),
        Condition::InSegment(name) => scope.segments.contains(name),
    }
}

fn count_holds(count: &EventCount, scope: &Scope<'_>) -> bool {
    let since = count
        .within
        .and_then(|w| scope.now.checked_sub(w.as_signed()).ok());
    let n = scope
        .history
        .iter()
        .filter(|e| e.name == count.event && e.timestamp <= scope.now)
        .filter(|e| since.is_none_or(|s| e.timestamp >= s))
        .filter(|e| matches_filter(e, &count.filter))
        .count() as u64;
    let at_least = count
        .at_least
        .unwrap_or(if count.at_most.is_some() { 0 } else { 1 });
    n >= at_least && count.at_most.is_none_or(|max| n <= max)
}

fn sum_holds(sum: &EventSum, scope: &Scope<'_>) -> bool {
    let since = sum
        .within
        .and_then(|w| scope.now.checked_sub(w.as_signed()).ok());
    let total: f64 = scope
        .history
        .iter()
        .filter(|e| e.name == sum.event && e.timestamp <= scope.now)
        .filter(|e| since.is_none_or(|s| e.timestamp >= s))
        .filter(|e| matches_filter(e, &sum.filter))
        .filter_map(|e| e.property(&sum.property).and_then(Value::as_f64))
        .sum();
    sum.at_least.is_none_or(|min| total >= min) && sum.at_most.is_none_or(|max| total <= max)
}

/// Whether an event passes every comparison of a filter.
pub fn matches_filter(event: &Event, filter: &[Comparison]) -> bool {
    filter
        .iter()
        .all(|cmp| compare(event.property(&cmp.name), cmp))
}

/// Applies a comparison to a value that may be missing. A comparison with no single
/// operator (the validator refuses those) never holds.
pub fn compare(value: Option<&Value>, cmp: &Comparison) -> bool {
    let Ok(op) = cmp.op() else {
        return false;
    };
    let value = value.filter(|v| !v.is_null());
    match op {
        Op::Exists(want) => value.is_some() == want,
        Op::Eq(rhs) => value.is_some_and(|v| equal(v, rhs)),
        Op::Ne(rhs) => !value.is_some_and(|v| equal(v, rhs)),
        Op::Gt(rhs) => order(value, rhs) == Some(Ordering::Greater),
        Op::Gte(rhs) => matches!(order(value, rhs), Some(Ordering::Greater | Ordering::Equal)),
        Op::Lt(rhs) => order(value, rhs) == Some(Ordering::Less),
        Op::Lte(rhs) => matches!(order(value, rhs), Some(Ordering::Less | Ordering::Equal)),
        Op::In(list) => value.is_some_and(|v| list.iter().any(|x| equal(v, x))),
        Op::Contains(needle) => match value {
            Some(Value::String(s)) => needle.as_str().is_some_and(|n| s.contains(n)),
            Some(Value::Array(items)) => items.iter().any(|x| equal(x, needle)),
            _ => false,
        },
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn order(value: Option<&Value>, rhs: &Value) -> Option<Ordering> {
    let value = value?;
    match (value.as_f64(), rhs.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => match (value.as_str(), rhs.as_str()) {
            (Some(x), Some(y)) => Some(x.cmp(y)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmp(yaml_like: Value) -> Comparison {
        serde_json::from_value(yaml_like).unwrap()
    }

    #[test]
    fn comparisons_follow_their_operator() {
        let cases = [
            (json!({"name": "x", "eq": 1}), Some(json!(1.0)), true),
            (
                json!({"name": "x", "eq": "pro"}),
                Some(json!("free")),
                false,
            ),
            (json!({"name": "x", "ne": "pro"}), None, true),
            (json!({"name": "x", "gt": 50}), Some(json!(59.5)), true),
            (json!({"name": "x", "gte": 50}), Some(json!(50)), true),
            (json!({"name": "x", "lt": 50}), Some(json!("49")), false),
            (
                json!({"name": "x", "lte": "2026-01-01"}),
                Some(json!("2025-12-31")),
                true,
            ),
            (
                json!({"name": "x", "in": ["a", "b"]}),
                Some(json!("b")),
                true,
            ),
            (
                json!({"name": "x", "contains": "shoe"}),
                Some(json!("red shoes")),
                true,
            ),
            (
                json!({"name": "x", "contains": 3}),
                Some(json!([1, 2, 3])),
                true,
            ),
            (
                json!({"name": "x", "exists": true}),
                Some(json!(null)),
                false,
            ),
            (json!({"name": "x", "exists": false}), None, true),
            (json!({"name": "x"}), Some(json!(1)), false),
            (
                json!({"name": "x", "eq": 1, "ne": 2}),
                Some(json!(1)),
                false,
            ),
        ];
        for (c, value, want) in cases {
            let c = cmp(c);
            assert_eq!(compare(value.as_ref(), &c), want, "{c:?} on {value:?}");
        }
    }

    #[test]
    fn event_sums_add_a_property_within_the_window_and_filter() {
        let customer =
            crate::model::Customer::minimal(crate::model::CustomerId::parse("c").unwrap());
        let order = |at: &str, value: f64, country: &str| crate::model::Event {
            id: None,
            name: "order_completed".into(),
            timestamp: at.parse().unwrap(),
            properties: json!({"value": value, "country": country})
                .as_object()
                .unwrap()
                .clone(),
        };
        let history = [
            order("2026-01-01T00:00:00Z", 400.0, "DE"),
            order("2026-05-01T00:00:00Z", 150.0, "DE"),
            order("2026-05-20T00:00:00Z", 100.0, "FR"),
        ];
        let segments = BTreeSet::new();
        let scope = Scope {
            customer: &customer,
            event: None,
            trigger: None,
            segments: &segments,
            history: &history,
            now: "2026-06-01T00:00:00Z".parse().unwrap(),
        };
        let sum = |yaml: Value| {
            holds(
                &Condition::EventSum(serde_json::from_value(yaml).unwrap()),
                &scope,
            )
        };
        assert!(sum(
            json!({"event": "order_completed", "property": "value", "at_least": 650})
        ));
        assert!(!sum(
            json!({"event": "order_completed", "property": "value", "within": "60d", "at_least": 300})
        ));
        assert!(sum(
            json!({"event": "order_completed", "property": "value", "within": "60d", "at_least": 250, "at_most": 250})
        ));
        assert!(sum(
            json!({"event": "order_completed", "property": "value", "where": [{"name": "country", "eq": "DE"}], "at_least": 550, "at_most": 550})
        ));
    }
}
