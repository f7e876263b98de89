//! The README's promises P3 (nothing after an opt-out), P4 (SMS only inside the local
//! window) and P5 (one customer's nodes in order), each tried over many customers through
//! the in-process runtime on a manual clock. Sizes grow with `TRELLIS_SOAK=1`.

use jiff::SignedDuration;
use serde_json::{Value, json};

use crate::app::{SmtpSink, TestApp, TwilioServer, spawn_app, spawn_app_in};

/// `ci` customers, or ten times as many in the soak.
fn size(ci: usize) -> usize {
    if std::env::var_os("TRELLIS_SOAK").is_some() {
        ci * 10
    } else {
        ci
    }
}

/// The app with one inline workflow instead of the examples.
async fn app_with(workflow: &str, extra: &[&str]) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.yaml"), workflow).unwrap();
    let mut flags = vec!["--workflows", dir.path().to_str().unwrap()];
    flags.extend_from_slice(extra);
    (
        spawn_app_in(tempfile::tempdir().unwrap(), &flags).await,
        dir,
    )
}

async fn post_batch(app: &TestApp, events: Vec<Value>) {
    for chunk in events.chunks(1000) {
        let (status, body) = app
            .call("POST", "/v1/events/batch", Some(json!(chunk)))
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

#[tokio::test]
async fn p3_nothing_leaves_after_an_opt_out_commits() {
    let n = size(200);
    let smtp = SmtpSink::start();
    let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
    for i in 0..n {
        app.call(
            "PUT",
            &format!("/v1/customers/c{i:05}"),
            Some(json!({"email": format!("c{i:05}@example.com"), "attributes": {"first_name": "C", "plan": "pro"}, "consent": {"email": true}})),
        )
        .await;
    }
    // Every welcome email is queued and waiting for a retry when the opt-outs arrive.
    smtp.set_failing(true);
    post_batch(
        &app,
        (0..n)
            .map(|i| json!({"id": format!("s{i}"), "customer_id": format!("c{i:05}"), "name": "signup"}))
            .collect(),
    )
    .await;
    app.settle().await;
    let mut opted_out = Vec::new();
    for i in (0..n).filter(|i| i % 2 == 0) {
        let id = format!("c{i:05}");
        if i % 4 == 0 {
            // One-click unsubscribe through the signed link.
            let token = trellis::unsubscribe::sign(
                &app.service.api.unsubscribe_key,
                &trellis::model::CustomerId::parse(id.clone()).unwrap(),
                trellis::model::Channel::Email,
            );
            let (status, _) = app
                .raw(
                    "POST",
                    &format!("/unsubscribe/{token}"),
                    None,
                    "application/x-www-form-urlencoded",
                    "List-Unsubscribe=One-Click".into(),
                )
                .await;
            assert_eq!(status, 200);
        } else {
            // Consent withdrawn through the API.
            let (status, body) = app
                .call(
                    "PATCH",
                    &format!("/v1/customers/{id}"),
                    Some(json!({"consent": {"email": false}})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        opted_out.push(format!("{id}@example.com"));
    }
    smtp.set_failing(false);
    // The whole journey: the retries, the two-day wait and the tips email.
    for _ in 0..6 {
        app.advance(SignedDuration::from_hours(12));
        app.settle().await;
    }
    let mails = smtp.messages();
    let leaked = mails
        .iter()
        .filter(|m| {
            opted_out
                .iter()
                .any(|to| m.lines().any(|l| l == format!("To: {to}")))
        })
        .count();
    assert_eq!(leaked, 0, "messages to customers who opted out");
    assert_eq!(
        mails.len(),
        (n - opted_out.len()) * 2,
        "the others got their welcome and tips emails"
    );
    println!(
        "RELIABILITY P3 opt-out: {} customers opted out with messages queued, 0 of {} messages went to them",
        opted_out.len(),
        mails.len()
    );
}

const TEXT_ON_PING: &str = "id: ping_sms\nname: Ping SMS\ntrigger: { event: { name: ping } }\nentry: every_time\nstart: text\nnodes:\n  text: { send_sms: { template: nudge, next: done } }\n  done: exit\n";

#[tokio::test]
async fn p4_sms_go_out_only_inside_the_local_window() {
    let n = size(120);
    let zones = [
        "America/Los_Angeles",
        "America/New_York",
        "America/Sao_Paulo",
        "Europe/London",
        "Europe/Berlin",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Asia/Tokyo",
        "Australia/Adelaide",
        "Pacific/Auckland",
        "Pacific/Chatham",
        "UTC",
    ];
    let twilio = TwilioServer::start(0).await;
    let (app, _wf) = app_with(TEXT_ON_PING, &twilio.flags()).await;
    for i in 0..n {
        let zone = zones[i % zones.len()];
        app.call(
            "PUT",
            &format!("/v1/customers/p{i:05}"),
            Some(json!({"phone": format!("+1415555{:04}", i % 10_000), "timezone": zone, "attributes": {"first_name": "P"}, "consent": {"sms": true}})),
        )
        .await;
    }
    // Pings spread over two days, every 7 minutes of customer, in every zone; after each
    // step, what the provider received was sent at this moment.
    let mut sent_at: Vec<(String, jiff::Timestamp)> = Vec::new();
    let step = SignedDuration::from_mins(7);
    let steps = 2 * 24 * 60 / 7;
    for s in 0..steps + 24 * 60 / 7 {
        if s < steps {
            let i = s % n;
            app.call(
                "POST",
                "/v1/events",
                Some(json!({"customer_id": format!("p{i:05}"), "name": "ping"})),
            )
            .await;
        }
        app.settle().await;
        let received = twilio.received.lock().unwrap().len();
        while sent_at.len() < received {
            let to = twilio.received.lock().unwrap()[sent_at.len()]
                .form
                .iter()
                .find(|(k, _)| k == "To")
                .unwrap()
                .1
                .clone();
            sent_at.push((to, app.now()));
        }
        app.advance(step);
    }
    assert_eq!(sent_at.len(), steps, "every ping's SMS went out in the end");
    let mut outside = Vec::new();
    for (to, at) in &sent_at {
        let i: usize = to[to.len() - 4..].parse().unwrap();
        let zone = jiff::tz::TimeZone::get(zones[i % zones.len()]).unwrap();
        let local = at.to_zoned(zone).time();
        // The default SMS quiet hours are 21:00–08:00.
        if local >= jiff::civil::time(21, 0, 0, 0) || local < jiff::civil::time(8, 0, 0, 0) {
            outside.push((to.clone(), at.to_string(), local.to_string()));
        }
    }
    assert!(
        outside.is_empty(),
        "SMS outside 08:00–21:00 local: {outside:?}"
    );
    println!(
        "RELIABILITY P4 SMS window: {} SMS to {} customers in {} zones over two days, 0 outside 08:00-21:00 local",
        sent_at.len(),
        n.min(steps),
        zones.len()
    );
}

const ORDERED: &str = "id: ordered\nname: In order\ntrigger: { event: { name: signup } }\nstart: wait_a\nnodes:\n  wait_a:\n    wait_for_event: { event: step_a, timeout: 1h, on_event: wait_b, on_timeout: out_of_order }\n  wait_b:\n    wait_for_event: { event: step_b, timeout: 1h, on_event: in_order, on_timeout: out_of_order }\n  in_order:\n    update: { set: { order: kept }, next: done }\n  out_of_order:\n    update: { set: { order: broken }, next: done }\n  done: exit\n";

#[tokio::test]
async fn p5_one_customers_events_step_their_journey_in_arrival_order() {
    let n = size(300);
    let (app, _wf) = app_with(ORDERED, &[]).await;
    // signup, step_a and step_b of every customer, interleaved across customers and split
    // over batches, so that a customer's events sit in different requests.
    let mut events = Vec::new();
    for name in ["signup", "step_a", "step_b"] {
        for i in 0..n {
            events.push(json!({"id": format!("{name}-{i}"), "customer_id": format!("o{i:05}"), "name": name}));
        }
    }
    for chunk in events.chunks(97) {
        post_batch(&app, chunk.to_vec()).await;
    }
    app.settle().await;
    app.advance(SignedDuration::from_hours(3));
    app.settle().await;
    let mut broken = Vec::new();
    for i in 0..n {
        let (_, view) = app
            .call("GET", &format!("/v1/customers/o{i:05}"), None)
            .await;
        if view["customer"]["attributes"]["order"] != "kept" {
            broken.push(i);
        }
    }
    assert!(
        broken.is_empty(),
        "customers stepped out of order: {broken:?}"
    );
    println!(
        "RELIABILITY P5 order: {} events of {n} customers interleaved over {} requests, 0 stepped out of order",
        events.len(),
        events.len().div_ceil(97)
    );
}
