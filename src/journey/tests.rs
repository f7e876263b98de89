//! The shell planned without a database: loaded state in, writes out.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::engine::policy::SendPolicy;
use crate::model::CustomerId;
use crate::store::{MessageStatus, StoredEvent};

const WELCOME: &str = "
id: welcome
name: Welcome
trigger:
  event:
    name: signup
entry: once
start: hello
nodes:
  hello:
    send_email:
      template: welcome
      next: later
  later:
    wait:
      duration: 2d
      next: done
  done: exit
";

const PROMO: &str = "
id: promo
name: Promo
trigger:
  event:
    name: signup
entry: every_time
start: offer
nodes:
  offer:
    send_email:
      template: tips
      next: done
  done: exit
";

const DAILY: &str = "
id: daily
name: Daily
trigger:
  schedule:
    cron: \"0 9 * * *\"
    timezone: customer
entry: every_time
start: offer
nodes:
  offer:
    send_email:
      template: tips
      next: done
  done: exit
";

fn shell(workflows: &[&str], policy: SendPolicy) -> Shell {
    let current = workflows
        .iter()
        .map(|text| {
            crate::workflow::parse(Path::new("test.yaml"), text).expect("the test workflow parses")
        })
        .collect();
    let (templates, problems) =
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
    assert!(problems.is_empty(), "{problems:?}");
    Shell {
        catalog: Arc::new(Catalog::from_parts(current, Vec::new(), Vec::new())),
        templates: Arc::new(templates),
        links: Links::Signed {
            public_url: "https://trellis.example.test".into(),
            key: Arc::from(&b"a test key that is long enough"[..]),
        },
        policy: Arc::new(policy),
        attribution_window: Duration::from_secs(86_400),
        journal: false,
        lifecycle: None,
    }
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn ada() -> CustomerId {
    CustomerId::parse("ada".to_owned()).unwrap()
}

fn known(email: &str) -> CustomerState {
    let customer: crate::model::Customer = serde_json::from_value(json!({
        "id": "ada", "email": email, "timezone": "Europe/Paris",
        "attributes": {"first_name": "Ada"}, "consent": {"email": true, "sms": true}
    }))
    .unwrap();
    CustomerState {
        customer: Some(customer),
        ..CustomerState::default()
    }
}

fn signup(seq: i64, when: Timestamp) -> StoredEvent {
    StoredEvent {
        seq,
        customer_id: ada(),
        event: crate::model::Event {
            id: None,
            name: "signup".into(),
            timestamp: when,
            properties: Default::default(),
        },
    }
}

/// Plans the signup with sequence number `seq` at `now` for `state`, no workflow paused.
fn signed_up(shell: &Shell, state: CustomerState, seq: i64, now: Timestamp) -> CustomerWrite {
    let event = signup(seq, now);
    plan(
        shell,
        &ada(),
        state,
        Work::Event(&event),
        &BTreeSet::new(),
        now,
    )
}

fn statuses(write: &CustomerWrite) -> Vec<(String, MessageStatus)> {
    write
        .messages
        .iter()
        .map(|m| (m.workflow_id.clone(), m.status))
        .collect()
}

#[test]
fn a_signup_enrolls_sends_the_welcome_and_marks_the_event_processed() {
    let shell = shell(&[WELCOME], SendPolicy::default());
    let now = at("2026-03-02T10:00:00Z");
    let write = signed_up(&shell, known("ada@example.test"), 7, now);
    assert_eq!(write.processed, Some(7));
    assert_eq!(
        statuses(&write),
        [("welcome".to_owned(), MessageStatus::Pending)]
    );
    let message = &write.messages[0];
    assert_eq!(
        message.enrollment_id, "welcome:ada:7",
        "derived from the event's seq"
    );
    assert_eq!(
        message.cap.map(|m| m.at()),
        Some(now),
        "a marketing send counts toward caps"
    );
    let [enrollment] = write.enrollments.as_slice() else {
        panic!("one enrollment: {:?}", write.enrollments)
    };
    assert_eq!(enrollment.id, "welcome:ada:7");
    assert_eq!(enrollment.next_wake(), Some(at("2026-03-04T10:00:00Z")));
    assert_eq!(write.queued(), 1);
    assert_eq!(write.profile, None, "no step changed the profile");
}

#[test]
fn a_suppressed_address_gets_a_suppressed_row_that_neither_queues_nor_counts() {
    let shell = shell(&[WELCOME], SendPolicy::default());
    let now = at("2026-03-02T10:00:00Z");
    let mut state = known("Ada@Example.test");
    state.suppressed.insert(
        (Channel::Email, "Ada@Example.test".into()),
        "bounced: 550 5.1.1".into(),
    );
    let event = signup(1, now);
    let write = plan(
        &shell,
        &ada(),
        state,
        Work::Event(&event),
        &BTreeSet::new(),
        now,
    );
    assert_eq!(
        statuses(&write),
        [("welcome".to_owned(), MessageStatus::Suppressed)]
    );
    assert_eq!(write.messages[0].cap, None);
    assert!(
        write.messages[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("550 5.1.1")),
        "{:?}",
        write.messages[0].note
    );
    assert_eq!(write.queued(), 0);
}

#[test]
fn entry_once_refuses_a_customer_who_entered_before_and_paused_workflows_enroll_nobody() {
    let shell = shell(&[WELCOME, PROMO], SendPolicy::default());
    let now = at("2026-03-02T10:00:00Z");
    let mut state = known("ada@example.test");
    state
        .last_entered
        .insert("welcome".into(), at("2026-01-01T00:00:00Z"));
    let event = signup(3, now);
    let paused = BTreeSet::from(["promo".to_owned()]);
    let write = plan(&shell, &ada(), state, Work::Event(&event), &paused, now);
    assert!(write.messages.is_empty(), "{:?}", write.messages);
    assert!(write.enrollments.is_empty());
    assert_eq!(write.processed, Some(3), "the event is still processed");
}

#[test]
fn a_second_workflow_in_the_same_visit_sees_the_first_ones_send_against_the_cap() {
    let policy = SendPolicy {
        caps: vec!["email=1/1d".parse().unwrap()],
        cap_mode: "drop".parse().unwrap(),
        ..SendPolicy::default()
    };
    let shell = shell(&[WELCOME, PROMO], policy);
    let now = at("2026-03-02T10:00:00Z");
    let write = signed_up(&shell, known("ada@example.test"), 1, now);
    // Workflows are taken in id order: promo first, then welcome, which the cap stops.
    assert_eq!(
        statuses(&write),
        [
            ("promo".to_owned(), MessageStatus::Pending),
            ("welcome".to_owned(), MessageStatus::Suppressed)
        ]
    );
    // A send from an earlier visit, loaded, counts the same way.
    let mut state = known("ada@example.test");
    state
        .cap_sends
        .push((Channel::Email, at("2026-03-02T09:00:00Z")));
    let write = signed_up(&shell, state, 1, now);
    assert!(
        write
            .messages
            .iter()
            .all(|m| m.status == MessageStatus::Suppressed),
        "{:?}",
        statuses(&write)
    );
}

#[test]
fn an_occurrence_is_handled_once_and_the_next_one_scheduled() {
    let shell = shell(&[DAILY], SendPolicy::default());
    let occurrence = at("2026-03-02T08:00:00Z"); // 09:00 in Paris
    let work = Work::Fire {
        workflow_id: "daily",
        occurrence,
    };
    let now = at("2026-03-02T08:00:01Z");
    let first = plan(
        &shell,
        &ada(),
        known("ada@example.test"),
        work,
        &BTreeSet::new(),
        now,
    );
    assert_eq!(first.queued(), 1);
    assert_eq!(
        first.fires,
        [
            FireWrite::Fired {
                workflow_id: "daily".into(),
                occurrence
            },
            FireWrite::Advance {
                workflow_id: "daily".into(),
                next: Some(at("2026-03-03T08:00:00Z"))
            }
        ]
    );
    // Replayed (a crash after the send was decided but before the fire moved on): the
    // occurrence is known as handled, so nobody is enrolled twice.
    let mut state = known("ada@example.test");
    state.fired.insert(("daily".into(), occurrence));
    let again = plan(&shell, &ada(), state, work, &BTreeSet::new(), now);
    assert_eq!(again.queued(), 0);
    assert!(again.enrollments.is_empty());
    assert!(matches!(
        again.fires.as_slice(),
        [FireWrite::Advance { .. }]
    ));
}

#[test]
fn a_wake_whose_workflow_version_is_gone_exits_as_broken() {
    let shell = shell(&[WELCOME], SendPolicy::default());
    let now = at("2026-03-02T10:00:00Z");
    let event = signup(1, now);
    let entered = plan(
        &shell,
        &ada(),
        known("ada@example.test"),
        Work::Event(&event),
        &BTreeSet::new(),
        now,
    );
    let mut enrollment = entered.enrollments[0].clone();
    enrollment.workflow_version = "gone".into();
    let later = at("2026-03-04T10:00:00Z");
    let write = plan(
        &shell,
        &ada(),
        known("ada@example.test"),
        Work::Wake(&enrollment),
        &BTreeSet::new(),
        later,
    );
    let [ended] = write.enrollments.as_slice() else {
        panic!("{:?}", write.enrollments)
    };
    assert!(!ended.is_active());
    assert!(format!("{:?}", ended.status).contains("no longer available"));
}

#[test]
fn the_load_spec_reads_only_what_the_work_consults() {
    let now = at("2026-03-02T10:00:00Z");
    let plain = shell(&[WELCOME], SendPolicy::default());
    let event = signup(1, now);
    let spec = plain.load_spec(&Work::Event(&event), now);
    assert!(spec.enrollments);
    assert_eq!(spec.sends_since, None, "no caps, no sends read");
    assert_eq!(spec.fired_since, None, "no catch-up, no occurrences read");
    let enrollment = plan(
        &plain,
        &ada(),
        known("a@example.test"),
        Work::Event(&event),
        &BTreeSet::new(),
        now,
    )
    .enrollments[0]
        .clone();
    assert!(!plain.load_spec(&Work::Wake(&enrollment), now).enrollments);

    let capped = shell(
        &[WELCOME],
        SendPolicy {
            caps: vec!["email=3/7d".parse().unwrap()],
            ..SendPolicy::default()
        },
    );
    assert_eq!(
        capped.load_spec(&Work::Event(&event), now).sends_since,
        Some(at("2026-02-23T10:00:00Z"))
    );
    let old = at("2026-02-01T09:00:00Z");
    let fire = Work::Fire {
        workflow_id: "daily",
        occurrence: old,
    };
    assert_eq!(plain.load_spec(&fire, now).fired_since, Some(old));
}
