//! Send-time controls through the runtime and the simulator: quiet hours in the customer's
//! local time, frequency caps across workflows, delay or drop, per-workflow overrides.

use jiff::SignedDuration;
use serde_json::json;
use trellis::simulate::Options;

use crate::app::{TwilioServer, spawn_app_in};
use crate::helpers::{at, customer, events, inline, lines};

const TEXT_ON_PING: &str = "id: ping_sms\nname: Ping SMS\ntrigger: { event: { name: ping } }\nentry: every_time\nstart: text\nnodes:\n  text: { send_sms: { template: nudge, next: done } }\n  done: exit\n";
const MAIL_ON_PING: &str = "id: ping_mail\nname: Ping mail\ntrigger: { event: { name: ping } }\nentry: every_time\nstart: mail\nnodes:\n  mail: { send_email: { template: welcome, next: done } }\n  done: exit\n";

async fn app_with(workflow: &str, extra: &[&str]) -> (crate::app::TestApp, tempfile::TempDir) {
    let wf_dir = tempfile::tempdir().unwrap();
    std::fs::write(wf_dir.path().join("w.yaml"), workflow).unwrap();
    let mut flags = vec!["--workflows", wf_dir.path().to_str().unwrap()];
    flags.extend_from_slice(extra);
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    (
        spawn_app_in(tempfile::tempdir().unwrap(), &refs).await,
        wf_dir,
    )
}

#[tokio::test]
async fn an_sms_due_at_22_30_local_is_held_and_arrives_at_08_00() {
    let twilio = TwilioServer::start(0).await;
    let (app, _wf) = app_with(TEXT_ON_PING, &twilio.flags()).await;
    // 22:30 in Los Angeles (PDT, UTC-7) is 05:30 UTC.
    app.clock.set(at("2026-06-02T05:30:00Z"));
    app.call("PUT", "/v1/customers/lucy", Some(json!({"phone": "+13105550199", "timezone": "America/Los_Angeles", "consent": {"sms": true}}))).await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "lucy", "name": "ping"})),
    )
    .await;
    app.settle().await;
    assert!(
        twilio.received.lock().unwrap().is_empty(),
        "nothing in quiet hours"
    );
    let (_, held) = app.call("GET", "/v1/customers/lucy", None).await;
    assert_eq!(
        held["messages"][0]["status"], "held",
        "the decision is recorded"
    );
    assert_eq!(
        held["messages"][0]["last_error"],
        "sms: quiet hours until 2026-06-02T15:00:00Z"
    );
    let (_, view) = app.call("GET", "/v1/customers/lucy", None).await;
    assert_eq!(
        (
            view["enrollments"][0]["node"].clone(),
            view["enrollments"][0]["next_wake"].clone()
        ),
        (json!("text"), json!("2026-06-02T15:00:00Z"))
    );

    app.clock.set(at("2026-06-02T14:59:00Z"));
    app.settle().await;
    assert!(
        twilio.received.lock().unwrap().is_empty(),
        "07:59 is still quiet"
    );
    app.clock.set(at("2026-06-02T15:00:00Z"));
    app.settle().await;
    assert_eq!(
        twilio.received.lock().unwrap().len(),
        1,
        "sent at 08:00 local"
    );
    let (_, sent) = app.call("GET", "/v1/customers/lucy", None).await;
    assert_eq!(
        sent["messages"].as_array().unwrap().len(),
        1,
        "the hold became the send: one message"
    );
    assert_eq!(sent["messages"][0]["status"], "sent");
}

#[tokio::test]
async fn the_fourth_email_in_a_week_is_held_by_a_3_per_week_cap_until_a_place_frees() {
    let (app, _wf) = app_with(MAIL_ON_PING, &["--caps", "email=3/7d"]).await;
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"email": "ada@example.com", "consent": {"email": true}})),
    )
    .await;
    let start = at("2026-06-01T09:00:00Z");
    for day in [0, 2, 4, 5] {
        app.clock.set(
            start
                .checked_add(SignedDuration::from_hours(24 * day))
                .unwrap(),
        );
        app.call(
            "POST",
            "/v1/events",
            Some(json!({"customer_id": "ada", "name": "ping"})),
        )
        .await;
        app.settle().await;
    }
    assert_eq!(app.outbox_files().len(), 3, "the fourth waits");
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let held = view["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["active"] == true)
        .unwrap()
        .clone();
    assert_eq!(
        (held["node"].clone(), held["next_wake"].clone()),
        (json!("mail"), json!("2026-06-08T09:00:00Z"))
    );
    app.clock.set(at("2026-06-08T09:00:00Z"));
    app.settle().await;
    assert_eq!(
        app.outbox_files().len(),
        4,
        "sent once the first email is a week old"
    );
}

#[tokio::test]
async fn over_the_cap_in_drop_mode_the_message_is_recorded_as_suppressed_and_the_journey_goes_on() {
    let (app, _wf) = app_with(
        MAIL_ON_PING,
        &["--caps", "email=1/1d", "--cap-mode", "drop"],
    )
    .await;
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"email": "ada@example.com", "consent": {"email": true}})),
    )
    .await;
    for _ in 0..2 {
        app.call(
            "POST",
            "/v1/events",
            Some(json!({"customer_id": "ada", "name": "ping"})),
        )
        .await;
        app.settle().await;
        app.advance(SignedDuration::from_hours(1));
    }
    assert_eq!(app.outbox_files().len(), 1);
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let statuses: Vec<String> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["suppressed", "sent"]);
    assert!(
        view["enrollments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["exit_reason"] == "completed")
    );
}

fn policy(quiet_sms: &str, caps: &[&str]) -> trellis::engine::policy::SendPolicy {
    trellis::engine::policy::SendPolicy {
        quiet_sms: Some(quiet_sms.parse().unwrap()),
        caps: caps.iter().map(|c| c.parse().unwrap()).collect(),
        ..Default::default()
    }
}

const LUCY: &str = r#"{"id": "lucy", "phone": "+13105550199", "timezone": "America/Los_Angeles", "consent": {"sms": true}}"#;

#[test]
fn the_simulator_holds_sms_in_quiet_hours_unless_the_workflow_overrides_them() {
    let options = Options {
        policy: policy("21:00-08:00", &[]),
        ..Options::default()
    };
    let held = lines(
        &inline(TEXT_ON_PING),
        customer(LUCY),
        events("2026-06-02T05:30:00Z ping"),
        options.clone(),
    );
    let send = held.iter().find(|l| l.kind == "send").unwrap();
    assert_eq!(send.at, at("2026-06-02T15:00:00Z"));
    assert!(
        held.iter()
            .any(|l| l.kind == "held" && l.fields["reason"] == "quiet hours")
    );

    let overridden = inline(&TEXT_ON_PING.replace(
        "entry: every_time",
        "entry: every_time\nquiet_hours: { sms: none }",
    ));
    let now = lines(
        &overridden,
        customer(LUCY),
        events("2026-06-02T05:30:00Z ping"),
        options,
    );
    assert_eq!(
        now.iter().find(|l| l.kind == "send").unwrap().at,
        at("2026-06-02T05:30:00Z")
    );
}

#[test]
fn the_simulator_applies_caps_within_the_journey_and_exempts_transactional_messages() {
    let options = Options {
        policy: policy("21:00-08:00", &["sms=1/1d"]),
        ..Options::default()
    };
    let script = "2026-06-02T18:00:00Z ping\n2026-06-02T19:00:00Z ping";
    let capped = lines(
        &inline(TEXT_ON_PING),
        customer(LUCY),
        events(script),
        options.clone(),
    );
    let sends: Vec<String> = capped
        .iter()
        .filter(|l| l.kind == "send")
        .map(|l| l.at.to_string())
        .collect();
    assert_eq!(
        sends,
        ["2026-06-02T18:00:00Z", "2026-06-03T18:00:00Z"],
        "the second waits a day"
    );

    let receipts =
        inline(&TEXT_ON_PING.replace("name: Ping SMS", "name: Receipts\ncategory: transactional"));
    let exempt = lines(&receipts, customer(LUCY), events(script), options);
    let sends: Vec<String> = exempt
        .iter()
        .filter(|l| l.kind == "send")
        .map(|l| l.at.to_string())
        .collect();
    assert_eq!(sends, ["2026-06-02T18:00:00Z", "2026-06-02T19:00:00Z"]);
}

#[tokio::test]
async fn consent_withdrawn_by_patch_stops_an_already_queued_marketing_email() {
    let app = crate::app::spawn_app(&["--smtp-url", "smtp://127.0.0.1:9"]).await; // nothing listens: the email stays queued
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"email": "ada@example.com", "consent": {"email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "signup"})),
    )
    .await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["messages"][0]["status"], "pending", "{view}");
    app.call(
        "PATCH",
        "/v1/customers/ada",
        Some(json!({"consent": {"email": false}})),
    )
    .await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["messages"][0]["status"], "cancelled");
    assert_eq!(
        view["messages"][0]["last_error"],
        "consent withdrawn before sending"
    );
}

/// Pings at 18:00Z and 19:00Z on 2 June and 20:00Z on 3 June under `sms=1/1d`: the second is
/// held until the first ages out (18:00Z on 3 June), and the third counts the second from
/// when it went out, not from when it was held, so it waits until 18:00Z on 4 June.
const CAP_SCRIPT: &str =
    "2026-06-02T18:00:00Z ping\n2026-06-02T19:00:00Z ping\n2026-06-03T20:00:00Z ping";
const CAP_SENDS: [&str; 3] = [
    "2026-06-02T18:00:00Z",
    "2026-06-03T18:00:00Z",
    "2026-06-04T18:00:00Z",
];

#[test]
fn the_simulator_counts_a_held_sms_against_the_cap_from_when_it_was_sent() {
    let options = Options {
        policy: policy("21:00-08:00", &["sms=1/1d"]),
        ..Options::default()
    };
    let sends: Vec<String> = lines(
        &inline(TEXT_ON_PING),
        customer(LUCY),
        events(CAP_SCRIPT),
        options,
    )
    .iter()
    .filter(|l| l.kind == "send")
    .map(|l| l.at.to_string())
    .collect();
    assert_eq!(sends, CAP_SENDS);
}

#[tokio::test]
async fn the_runtime_counts_a_held_sms_against_the_cap_from_when_it_was_sent() {
    let twilio = TwilioServer::start(0).await;
    let (app, _wf) = app_with(
        TEXT_ON_PING,
        &[&twilio.flags()[..], &["--caps", "sms=1/1d"]].concat(),
    )
    .await;
    app.clock.set(at("2026-06-02T17:00:00Z"));
    app.call(
        "PUT",
        "/v1/customers/lucy",
        Some(serde_json::from_str(LUCY).unwrap()),
    )
    .await;
    let pings: Vec<jiff::Timestamp> = CAP_SCRIPT
        .lines()
        .map(|l| at(l.split(' ').next().unwrap()))
        .collect();
    let mut sent = Vec::new();
    let end = at("2026-06-05T00:00:00Z");
    while app.now() < end {
        if pings.contains(&app.now()) {
            app.call(
                "POST",
                "/v1/events",
                Some(json!({"customer_id": "lucy", "name": "ping"})),
            )
            .await;
        }
        app.settle().await;
        while sent.len() < twilio.received.lock().unwrap().len() {
            sent.push(app.now().to_string());
        }
        app.advance(SignedDuration::from_mins(10));
    }
    assert_eq!(sent, CAP_SENDS);
}

/// A transactional receipt and a marketing promo on the same event, under `email=1/1d`.
const RECEIPT: &str = "id: a_receipt\nname: Receipt\ncategory: transactional\ntrigger: { event: { name: order_completed } }\nentry: every_time\nstart: mail\nnodes:\n  mail: { send_email: { template: welcome, next: done } }\n  done: exit\n";
const PROMO: &str = "id: b_promo\nname: Promo\ntrigger: { event: { name: order_completed } }\nentry: every_time\nstart: mail\nnodes:\n  mail: { send_email: { template: welcome, next: done } }\n  done: exit\n";

#[tokio::test]
async fn a_transactional_send_does_not_count_toward_a_marketing_cap() {
    let wf_dir = tempfile::tempdir().unwrap();
    std::fs::write(wf_dir.path().join("a.yaml"), RECEIPT).unwrap();
    std::fs::write(wf_dir.path().join("b.yaml"), PROMO).unwrap();
    let app = spawn_app_in(
        tempfile::tempdir().unwrap(),
        &[
            "--workflows",
            wf_dir.path().to_str().unwrap(),
            "--caps",
            "email=1/1d",
        ],
    )
    .await;
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"email": "ada@example.com", "attributes": {"first_name": "Ada"}, "consent": {"email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "order_completed"})),
    )
    .await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let mut statuses: Vec<(String, String)> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["workflow_id"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            ("a_receipt".to_owned(), "sent".to_owned()),
            ("b_promo".to_owned(), "sent".to_owned())
        ],
        "the receipt leaves the promo's cap alone: {view}"
    );
}

#[tokio::test]
async fn a_send_to_a_suppressed_address_does_not_use_up_the_customers_cap() {
    let (app, _wf) = app_with(MAIL_ON_PING, &["--caps", "email=1/1d"]).await;
    // Another customer's hard bounce suppresses the address both share.
    app.call(
        "PUT",
        "/v1/customers/old",
        Some(json!({"email": "shared@example.com", "consent": {"email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/bounces",
        Some(json!({"email": "shared@example.com", "type": "hard"})),
    )
    .await;
    app.call("PUT", "/v1/customers/ada", Some(json!({"email": "shared@example.com", "attributes": {"first_name": "Ada"}, "consent": {"email": true}}))).await;
    let ping = || json!({"customer_id": "ada", "name": "ping"});
    app.call("POST", "/v1/events", Some(ping())).await;
    app.settle().await;
    // Ada moves to an address of her own; the next ping's email goes at once: the
    // suppressed one never left, so it took no place under the cap.
    app.call(
        "PATCH",
        "/v1/customers/ada",
        Some(json!({"email": "ada@example.com"})),
    )
    .await;
    app.advance(SignedDuration::from_hours(1));
    app.call("POST", "/v1/events", Some(ping())).await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let mut statuses: Vec<String> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap().to_owned())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["sent", "suppressed"], "{view}");
}

/// The scenarios above that only the runtime played, played by the simulator and the
/// runtime alike (`lines` and `lines_of` play both and require the same timeline).
mod through_both {
    use super::*;
    use crate::helpers::lines_of;

    const ADA: &str = r#"{"id": "ada", "email": "ada@example.com", "attributes": {"first_name": "Ada"}, "consent": {"email": true}}"#;

    fn caps(caps: &[&str], mode: &str) -> Options {
        Options {
            policy: trellis::engine::policy::SendPolicy {
                caps: caps.iter().map(|c| c.parse().unwrap()).collect(),
                cap_mode: mode.parse().unwrap(),
                ..Default::default()
            },
            ..Options::default()
        }
    }

    fn text(lines: &[trellis::simulate::Line]) -> String {
        lines
            .iter()
            .map(|l| l.to_text().lines().next().unwrap_or_default().to_owned() + "\n")
            .collect()
    }

    /// The timeline of `MAIL_ON_PING` for `customer_json` playing `script` under `cap`.
    fn mail_on_ping(customer_json: &str, script: &str, cap: &str, mode: &str) -> String {
        text(&lines(
            &inline(MAIL_ON_PING),
            customer(customer_json),
            events(script),
            caps(&[cap], mode),
        ))
    }

    #[test]
    fn the_fourth_email_in_a_week_waits_for_a_place_under_a_3_per_week_cap() {
        let t = mail_on_ping(
            ADA,
            "2026-06-01T09:00:00Z ping\n2026-06-03T09:00:00Z ping\n2026-06-05T09:00:00Z ping\n2026-06-06T09:00:00Z ping",
            "email=3/7d",
            "delay",
        );
        insta::assert_snapshot!(t, @r#"
        2026-06-01T09:00:00Z  enter      mail
        2026-06-01T09:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-01T09:00:00Z  enter      done
        2026-06-01T09:00:00Z  exit       done             completed
        2026-06-03T09:00:00Z  enter      mail
        2026-06-03T09:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-03T09:00:00Z  enter      done
        2026-06-03T09:00:00Z  exit       done             completed
        2026-06-05T09:00:00Z  enter      mail
        2026-06-05T09:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-05T09:00:00Z  enter      done
        2026-06-05T09:00:00Z  exit       done             completed
        2026-06-06T09:00:00Z  enter      mail
        2026-06-06T09:00:00Z  held       mail             email held until 2026-06-08T09:00:00Z (frequency cap)
        2026-06-06T09:00:00Z  wait       mail             until 2026-06-08T09:00:00Z (2026-06-08 09:00 UTC)
        2026-06-08T09:00:00Z  enter      mail
        2026-06-08T09:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-08T09:00:00Z  enter      done
        2026-06-08T09:00:00Z  exit       done             completed
        "#);
    }

    #[test]
    fn over_the_cap_in_drop_mode_the_send_is_suppressed_and_the_journey_goes_on() {
        let t = mail_on_ping(
            ADA,
            "2026-06-01T09:00:00Z ping\n2026-06-01T10:00:00Z ping",
            "email=1/1d",
            "drop",
        );
        insta::assert_snapshot!(t, @r#"
        2026-06-01T09:00:00Z  enter      mail
        2026-06-01T09:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-01T09:00:00Z  enter      done
        2026-06-01T09:00:00Z  exit       done             completed
        2026-06-01T10:00:00Z  enter      mail
        2026-06-01T10:00:00Z  suppressed mail             email not sent: frequency cap
        2026-06-01T10:00:00Z  enter      done
        2026-06-01T10:00:00Z  exit       done             completed
        "#);
    }

    #[test]
    fn caps_count_across_journeys_and_a_transactional_receipt_takes_no_place() {
        // A receipt and two promotions on the same order, under one email a day: the
        // receipt and the first promotion go at once, the second promotion the next day.
        let promo_c = PROMO
            .replace("id: b_promo", "id: c_promo")
            .replace("name: Promo", "name: Other promo");
        let t = text(&lines_of(
            &[inline(RECEIPT), inline(PROMO), inline(&promo_c)],
            customer(ADA),
            events("2026-06-01T09:00:00Z order_completed"),
            caps(&["email=1/1d"], "delay"),
        ));
        insta::assert_snapshot!(t, @r#"
        2026-06-01T09:00:00Z  enter      a_receipt/mail
        2026-06-01T09:00:00Z  send       a_receipt/mail   email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-01T09:00:00Z  enter      a_receipt/done
        2026-06-01T09:00:00Z  exit       a_receipt/done   completed
        2026-06-01T09:00:00Z  enter      b_promo/mail
        2026-06-01T09:00:00Z  send       b_promo/mail     email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-01T09:00:00Z  enter      b_promo/done
        2026-06-01T09:00:00Z  exit       b_promo/done     completed
        2026-06-01T09:00:00Z  enter      c_promo/mail
        2026-06-01T09:00:00Z  held       c_promo/mail     email held until 2026-06-02T09:00:00Z (frequency cap)
        2026-06-01T09:00:00Z  wait       c_promo/mail     until 2026-06-02T09:00:00Z (2026-06-02 09:00 UTC)
        2026-06-02T09:00:00Z  enter      c_promo/mail
        2026-06-02T09:00:00Z  send       c_promo/mail     email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-02T09:00:00Z  enter      c_promo/done
        2026-06-02T09:00:00Z  exit       c_promo/done     completed
        "#);
    }

    #[test]
    fn consent_withdrawn_while_an_email_waits_out_the_cap_stops_it() {
        let t = mail_on_ping(
            ADA,
            "2026-06-01T09:00:00Z ping\n2026-06-01T10:00:00Z ping\n2026-06-01T11:00:00Z $profile consent={\"email\":false}",
            "email=1/1d",
            "delay",
        );
        insta::assert_snapshot!(t, @r#"
        2026-06-01T09:00:00Z  enter      mail
        2026-06-01T09:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-01T09:00:00Z  enter      done
        2026-06-01T09:00:00Z  exit       done             completed
        2026-06-01T10:00:00Z  enter      mail
        2026-06-01T10:00:00Z  held       mail             email held until 2026-06-02T09:00:00Z (frequency cap)
        2026-06-01T10:00:00Z  wait       mail             until 2026-06-02T09:00:00Z (2026-06-02 09:00 UTC)
        2026-06-02T09:00:00Z  enter      mail
        2026-06-02T09:00:00Z  suppressed mail             email not sent: no consent
        2026-06-02T09:00:00Z  enter      done
        2026-06-02T09:00:00Z  exit       done             completed
        "#);
    }

    #[test]
    fn a_send_to_a_suppressed_address_takes_no_place_under_the_cap() {
        // Another customer's bounce put the shared address on the suppression list; Ada's
        // first email is suppressed, she moves to an address of her own, and the next email
        // goes at once: the suppressed one never left, so it took no place under the cap.
        let shared = ADA.replace("ada@example.com", "shared@example.com");
        let t = mail_on_ping(
            &shared,
            "2026-06-01T08:00:00Z $suppress email=shared@example.com\n2026-06-01T09:00:00Z ping\n2026-06-01T10:00:00Z $profile email=ada@example.com\n2026-06-01T11:00:00Z ping",
            "email=1/1d",
            "delay",
        );
        insta::assert_snapshot!(t, @r#"
        2026-06-01T09:00:00Z  enter      mail
        2026-06-01T09:00:00Z  suppressed mail             email not sent: email: address suppressed (hard)
        2026-06-01T09:00:00Z  enter      done
        2026-06-01T09:00:00Z  exit       done             completed
        2026-06-01T11:00:00Z  enter      mail
        2026-06-01T11:00:00Z  send       mail             email welcome to ada@example.com: "Welcome to Acme, Ada"
        2026-06-01T11:00:00Z  enter      done
        2026-06-01T11:00:00Z  exit       done             completed
        "#);
    }
}
