//! The engine's promises, tested directly: stable keys, sticky split arms, bounded steps,
//! and inputs that do not apply leave the enrollment alone.

use std::collections::BTreeSet;

use trellis::engine::{Effect, Enrollment, ExitReason, Facts, Input, Status, step};
use trellis::model::{CustomerId, Event};

use crate::helpers::{at, customer, events, inline};

const LOOPING: &str = r#"
id: reminders
name: Weekly reminders
trigger: { event: { name: signup } }
start: remind
nodes:
  remind: { send_email: { template: welcome, next: pause } }
  pause: { wait: { duration: 7d, next: remind } }
"#;

static NO_SEGMENTS: BTreeSet<String> = BTreeSet::new();
static NO_POLICY: std::sync::LazyLock<trellis::engine::policy::SendPolicy> =
    std::sync::LazyLock::new(Default::default);

/// Facts with no segments, no history and no send-time rules.
fn facts(customer: &trellis::model::Customer) -> Facts<'_> {
    Facts {
        customer,
        segments: &NO_SEGMENTS,
        history: &[],
        policy: &NO_POLICY,
        recent_sends: &[],
    }
}

fn ada() -> trellis::model::Customer {
    customer(r#"{"id": "ada", "email": "ada@example.com", "consent": {"email": true}}"#)
}

fn sends(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(m) => Some(m.key.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_same_enrollment_at_the_same_node_visit_always_yields_the_same_key() {
    let wf = inline(LOOPING);
    let customer = ada();
    let facts = facts(&customer);
    let now = at("2026-01-01T00:00:00Z");
    let new = Enrollment::new("e1", &wf, customer.id.clone(), None, now);
    let first = step(&wf, &new, &facts, &Input::Enter, now);
    let replay = step(&wf, &new, &facts, &Input::Enter, now);
    assert_eq!(first, replay, "same arguments, same result");

    // The second visit of the send node, a week later, gets a new key.
    let later = at("2026-01-08T00:00:00Z");
    let second = step(&wf, &first.enrollment, &facts, &Input::Wake, later);
    let keys: Vec<String> = sends(&first.effects)
        .into_iter()
        .chain(sends(&second.effects))
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);

    // Another enrollment gets other keys.
    let other = Enrollment::new("e2", &wf, customer.id.clone(), None, now);
    let other_keys = sends(&step(&wf, &other, &facts, &Input::Enter, now).effects);
    assert_ne!(other_keys[0], keys[0]);
}

#[test]
fn a_wake_before_its_time_and_an_unexpected_event_change_nothing() {
    let wf = inline(LOOPING);
    let customer = ada();
    let facts = facts(&customer);
    let now = at("2026-01-01T00:00:00Z");
    let entered = step(
        &wf,
        &Enrollment::new("e1", &wf, customer.id.clone(), None, now),
        &facts,
        &Input::Enter,
        now,
    );
    let early = step(
        &wf,
        &entered.enrollment,
        &facts,
        &Input::Wake,
        at("2026-01-07T23:59:59Z"),
    );
    assert_eq!(early.enrollment, entered.enrollment);
    assert!(early.effects.is_empty());
    let event = events("2026-01-02T00:00:00Z page_viewed").remove(0);
    let ignored = step(
        &wf,
        &entered.enrollment,
        &facts,
        &Input::Event(event),
        at("2026-01-02T00:00:00Z"),
    );
    assert_eq!(ignored.enrollment, entered.enrollment);
    assert!(ignored.effects.is_empty());
}

#[test]
fn a_loop_without_a_wait_exits_as_broken_instead_of_spinning() {
    // The validator refuses this file; the engine must still survive it.
    let wf = inline(
        r#"
id: spin
name: Spin
trigger: { event: { name: signup } }
start: a
nodes:
  a: { update: { add_tags: [x], next: b } }
  b: { branch: { cases: [], else: a } }
"#,
    );
    let customer = ada();
    let facts = facts(&customer);
    let now = at("2026-01-01T00:00:00Z");
    let result = step(
        &wf,
        &Enrollment::new("e", &wf, customer.id.clone(), None, now),
        &facts,
        &Input::Enter,
        now,
    );
    assert!(
        matches!(&result.enrollment.status, Status::Exited { reason: ExitReason::Broken(why), .. } if why.contains("loop"))
    );
    assert_eq!(result.path.len(), trellis::engine::MAX_NODES_PER_STEP);
}

#[test]
fn a_customer_waiting_at_a_node_removed_from_the_workflow_exits_as_broken() {
    let old = inline(LOOPING);
    let new = inline(
        &LOOPING
            .replace(
                "pause: { wait: { duration: 7d, next: remind } }",
                "done: exit",
            )
            .replace("next: pause", "next: done"),
    );
    let customer = ada();
    let facts = facts(&customer);
    let now = at("2026-01-01T00:00:00Z");
    let waiting = step(
        &old,
        &Enrollment::new("e", &old, customer.id.clone(), None, now),
        &facts,
        &Input::Enter,
        now,
    );
    let woken = step(
        &new,
        &waiting.enrollment,
        &facts,
        &Input::Wake,
        at("2026-02-01T00:00:00Z"),
    );
    assert!(
        matches!(&woken.enrollment.status, Status::Exited { reason: ExitReason::Broken(why), .. } if why.contains("no longer exists"))
    );
}

#[test]
fn split_arms_are_sticky_per_customer_and_spread_across_customers() {
    let wf = inline(
        r#"
id: ab
name: A/B
trigger: { event: { name: signup } }
start: split
nodes:
  split:
    split:
      arms:
        - { name: a, weight: 45, next: done }
        - { name: b, weight: 45, next: done }
      holdout: 10
  done: exit
"#,
    );
    let now = at("2026-01-01T00:00:00Z");
    let arm_of = |id: &str, enrollment: &str| {
        let c = customer(&format!(r#"{{"id": "{id}"}}"#));
        let facts = facts(&c);
        let e = Enrollment::new(enrollment, &wf, CustomerId::parse(id).unwrap(), None, now);
        step(&wf, &e, &facts, &Input::Enter, now).enrollment.arm
    };
    assert_eq!(
        arm_of("c1", "first"),
        arm_of("c1", "second"),
        "a re-run gives the same arm"
    );
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..2000 {
        *counts
            .entry(arm_of(&format!("c{i}"), "e").unwrap())
            .or_insert(0) += 1;
    }
    assert!((800..1000).contains(&counts["a"]), "{counts:?}");
    assert!((800..1000).contains(&counts["b"]), "{counts:?}");
    assert!((140..260).contains(&counts["holdout"]), "{counts:?}");
}

#[test]
fn the_goal_ends_the_journey_wherever_the_customer_waits_and_carries_its_value() {
    let wf = crate::helpers::example("cart_abandonment");
    let customer = ada();
    let facts = facts(&customer);
    let now = at("2026-01-01T10:00:00Z");
    let entered = step(
        &wf,
        &Enrollment::new("e", &wf, customer.id.clone(), None, now),
        &facts,
        &Input::Enter,
        now,
    );
    let reminded = step(
        &wf,
        &entered.enrollment,
        &facts,
        &Input::Wake,
        at("2026-01-01T11:00:00Z"),
    );
    assert_eq!(
        reminded.enrollment.current_node().map(|n| n.as_str()),
        Some("wait_a_day")
    );
    let order: Event = events("2026-01-01T12:00:00Z order_completed value=42.5").remove(0);
    let done = step(
        &wf,
        &reminded.enrollment,
        &facts,
        &Input::Event(order),
        at("2026-01-01T12:00:00Z"),
    );
    assert_eq!(
        done.effects,
        vec![
            Effect::Goal {
                event: "order_completed".into(),
                value: Some(42.5)
            },
            Effect::Exit(ExitReason::GoalReached)
        ]
    );
}

#[test]
fn marketing_sends_without_consent_are_suppressed_and_the_journey_goes_on() {
    let wf = inline(LOOPING);
    let no_consent = customer(r#"{"id": "bob", "email": "bob@example.com"}"#);
    let facts = facts(&no_consent);
    let now = at("2026-01-01T00:00:00Z");
    let result = step(
        &wf,
        &Enrollment::new("e", &wf, no_consent.id.clone(), None, now),
        &facts,
        &Input::Enter,
        now,
    );
    assert!(matches!(
        result.effects[0],
        Effect::Suppressed {
            reason: trellis::engine::Suppression::NoConsent,
            ..
        }
    ));
    assert_eq!(
        result.enrollment.current_node().map(|n| n.as_str()),
        Some("pause")
    );

    let transactional = inline(&LOOPING.replace(
        "name: Weekly reminders",
        "name: Receipts\ncategory: transactional",
    ));
    let result = step(
        &transactional,
        &Enrollment::new("e", &transactional, no_consent.id.clone(), None, now),
        &facts,
        &Input::Enter,
        now,
    );
    assert!(
        matches!(result.effects[0], Effect::Send(_)),
        "transactional mail needs no marketing consent"
    );
}
