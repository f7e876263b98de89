//! The runtime end to end: events over the API, a real SQLite file, the scheduler and the
//! dispatcher on a manual clock, delivery to a real SMTP server and a Twilio-shaped API.

use jiff::SignedDuration;
use serde_json::json;

use crate::app::{SmtpSink, TwilioServer, build_error, spawn_app};
use crate::helpers::at;

fn ada() -> serde_json::Value {
    json!({
        "email": "ada@example.com",
        "phone": "+1 415 555 0101",
        "timezone": "America/New_York",
        "attributes": {"first_name": "Ada", "plan": "free"},
        "consent": {"email": true, "sms": true}
    })
}

#[tokio::test]
async fn a_signup_posted_over_http_reaches_a_real_smtp_server_as_the_rendered_welcome_email() {
    let smtp = SmtpSink::start();
    let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
    assert_eq!(
        app.call("PUT", "/v1/customers/ada", Some(ada())).await.0,
        201
    );
    let (status, body) = app
        .call(
            "POST",
            "/v1/events",
            Some(json!({"id": "evt-1", "customer_id": "ada", "name": "signup"})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (202, json!({"status": "accepted"}))
    );

    let (_, drained) = app.settle().await;
    assert_eq!(drained.sent, 1);
    let received = smtp.messages();
    assert_eq!(received.len(), 1);
    let mail = &received[0];
    assert!(mail.contains("Subject: Welcome to Acme, Ada"), "{mail}");
    assert!(mail.contains("To: ada@example.com"), "{mail}");
    assert!(mail.contains("From: Acme <news@acme.test>"), "{mail}");
    assert!(mail.contains("Thanks for signing up."), "{mail}");
    assert!(
        mail.contains("List-Unsubscribe: <https://trellis.test/unsubscribe/email."),
        "{mail}"
    );
    assert!(
        mail.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{mail}"
    );
    assert!(mail.contains("multipart/alternative"), "{mail}");

    // The API shows where Ada stands: waiting two days, one message sent.
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["enrollments"][0]["node"], "wait_two_days");
    assert_eq!(view["enrollments"][0]["next_wake"], "2026-03-04T15:00:00Z");
    assert_eq!(view["messages"][0]["status"], "sent");
    let key = view["messages"][0]["key"].as_str().unwrap();
    assert!(
        mail.contains(&format!("Message-ID: <{key}@acme.test>")),
        "{mail}"
    );
}

#[tokio::test]
async fn the_cart_journey_runs_its_hour_and_23_hours_on_an_injected_clock_and_texts_through_twilio()
{
    let smtp = SmtpSink::start();
    let twilio = TwilioServer::start(0).await;
    let app = spawn_app(&[
        "--smtp-url",
        &smtp.url(),
        "--twilio-base-url",
        &twilio.base,
        "--twilio-account-sid",
        "AC123",
        "--twilio-auth-token",
        "secret-token",
        "--sms-from",
        "+15550001111",
    ])
    .await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated",
        "properties": {"total": 114, "items": [{"name": "Trail shoes", "quantity": 1, "price": 89}]}}))).await;
    app.settle().await;
    assert!(smtp.messages().is_empty(), "nothing before the hour is up");

    app.advance(SignedDuration::from_mins(59));
    app.settle().await;
    assert!(smtp.messages().is_empty());
    app.advance(SignedDuration::from_mins(1));
    app.settle().await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("Subject: You left something in your cart")
            && mails[0].contains("Trail shoes x 1: $89.00"),
        "{}",
        mails[0]
    );

    app.advance(SignedDuration::from_hours(23));
    app.settle().await;
    let sms = twilio.received.lock().unwrap().clone();
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].path, "/2010-04-01/Accounts/AC123/Messages.json");
    let field = |name: &str| {
        sms[0]
            .form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(field("To"), "+14155550101");
    assert_eq!(field("From"), "+15550001111");
    assert!(
        field("Body").contains("your cart ($114.00) is saved"),
        "{}",
        field("Body")
    );
    // Basic auth with the account SID and token.
    assert_eq!(
        sms[0].authorization.as_deref(),
        Some("Basic QUMxMjM6c2VjcmV0LXRva2Vu")
    );
    assert!(sms[0].idempotency.is_some());
}

#[tokio::test]
async fn an_order_within_the_hour_ends_the_cart_journey_with_a_conversion_and_no_reminder() {
    let app = spawn_app(&[]).await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 59, "items": []}}))).await;
    app.settle().await;
    app.advance(SignedDuration::from_mins(40));
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "order_completed", "properties": {"value": 59}})),
    )
    .await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(30));
    app.settle().await;
    assert!(app.outbox_files().is_empty(), "{:?}", app.outbox_files());
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let cart = view["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["workflow_id"] == "cart_abandonment")
        .unwrap();
    assert_eq!(cart["exit_reason"], "goal reached");
}

#[tokio::test]
async fn an_sms_provider_answering_503_is_retried_and_a_refused_number_fails_without_retry() {
    let twilio = TwilioServer::start(1).await;
    let app = spawn_app(&twilio.flags()).await;
    let mut refused = ada();
    refused["phone"] = json!(crate::app::INVALID_NUMBER);
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    app.call("PUT", "/v1/customers/zed", Some(refused)).await;
    for id in ["ada", "zed"] {
        app.call("POST", "/v1/events", Some(json!({"customer_id": id, "name": "cart_updated", "properties": {"total": 5, "items": []}}))).await;
    }
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await; // reminder emails
    app.advance(SignedDuration::from_hours(23));
    let (_, first) = app.settle().await;
    // One of the two SMS meets the single 503 and is retried; the refused number fails for good.
    assert_eq!(
        (first.sent + first.retried, first.failed),
        (1, 1),
        "{first:?}"
    );
    app.advance(SignedDuration::from_mins(5));
    app.settle().await;
    let delivered = twilio.received.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert!(
        delivered[0]
            .form
            .contains(&("To".into(), "+14155550101".into()))
    );
    let (_, zed) = app.call("GET", "/v1/customers/zed", None).await;
    let sms = zed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "sms")
        .unwrap()
        .clone();
    assert_eq!(
        (sms["status"].clone(), sms["attempts"].clone()),
        (json!("failed"), json!(1)),
        "{sms}"
    );
    assert!(
        sms["last_error"].as_str().unwrap().contains("HTTP 400"),
        "{sms}"
    );
}

#[tokio::test]
async fn pausing_a_workflow_stops_entries_and_sends_and_resuming_lets_them_go() {
    let app = spawn_app(&[]).await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    let (status, body) = app
        .call("POST", "/v1/workflows/welcome_series/pause", None)
        .await;
    assert_eq!(
        (status.as_u16(), body["paused"].clone()),
        (200, json!(true))
    );
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "signup"})),
    )
    .await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert!(
        view["enrollments"].as_array().unwrap().is_empty(),
        "no entry while paused"
    );
    app.call("POST", "/v1/workflows/welcome_series/resume", None)
        .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "signup"})),
    )
    .await;
    app.settle().await;
    assert_eq!(app.outbox_files().len(), 1);
    let (_, listed) = app.call("GET", "/v1/workflows", None).await;
    let welcome = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "welcome_series")
        .unwrap();
    assert_eq!(
        (
            welcome["paused"].clone(),
            welcome["active_enrollments"].clone()
        ),
        (json!(false), json!(1))
    );
}

#[tokio::test]
async fn the_one_click_unsubscribe_stops_a_queued_message_and_a_tampered_token_is_refused() {
    let smtp = SmtpSink::start();
    let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    smtp.set_failing(true);
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "signup"})),
    )
    .await;
    app.settle().await; // The welcome email is queued for a retry.

    let token = trellis::unsubscribe::sign(
        &app.service.api.unsubscribe_key,
        &"ada".parse_id(),
        trellis::model::Channel::Email,
    );
    // Change the signature's last digit to a different one.
    let last = if token.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &token[..token.len() - 1]);
    let (status, page) = app
        .raw(
            "POST",
            &format!("/unsubscribe/{tampered}"),
            None,
            "application/x-www-form-urlencoded",
            "List-Unsubscribe=One-Click".into(),
        )
        .await;
    assert_eq!(status, 400, "{page}");
    let (status, page) = app
        .raw(
            "GET",
            &format!("/unsubscribe/{token}"),
            None,
            "text/html",
            String::new(),
        )
        .await;
    assert!(
        status == 200 && page.as_str().unwrap().contains("<form method=\"post\">"),
        "{page}"
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

    smtp.set_failing(false);
    app.advance(SignedDuration::from_hours(2));
    app.settle().await;
    assert!(smtp.messages().is_empty(), "the queued email was cancelled");
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["customer"]["consent"]["email"], false);
    assert_eq!(view["messages"][0]["status"], "cancelled");
}

trait ParseId {
    fn parse_id(&self) -> trellis::model::CustomerId;
}

impl ParseId for &str {
    fn parse_id(&self) -> trellis::model::CustomerId {
        trellis::model::CustomerId::parse(*self).unwrap()
    }
}

#[tokio::test]
async fn a_goal_reached_after_the_reminder_is_credited_to_it_with_its_value() {
    let app = spawn_app(&[]).await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 80, "items": []}}))).await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await; // the reminder email is sent
    app.advance(SignedDuration::from_hours(2));
    app.call(
        "POST",
        "/v1/events",
        Some(
            json!({"customer_id": "ada", "name": "order_completed", "properties": {"value": 80.5}}),
        ),
    )
    .await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let reminder = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "reminder")
        .unwrap()["key"]
        .clone();
    let conversion = &view["conversions"][0];
    assert_eq!(
        (
            conversion["workflow_id"].clone(),
            conversion["value"].clone()
        ),
        (json!("cart_abandonment"), json!(80.5))
    );
    assert_eq!(conversion["message_key"], reminder);
}

#[tokio::test]
async fn a_goal_with_no_message_received_in_the_attribution_window_is_not_credited() {
    let app = spawn_app(&["--attribution-window", "1h"]).await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 80, "items": []}}))).await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await;
    app.advance(SignedDuration::from_hours(2));
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "order_completed", "properties": {"value": 10}})),
    )
    .await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["conversions"][0]["value"], 10.0);
    assert_eq!(view["conversions"][0]["message_key"], json!(null));
}

#[tokio::test]
async fn an_smtp_server_without_a_usable_auth_mechanism_stops_serve_at_startup() {
    // aiosmtpd offers no AUTH at all: credentials in the URL can never work with it, so
    // this is a configuration error to say at once, not a day of retries per message.
    let smtp = SmtpSink::start();
    let url = format!("smtp://mailer:s3cret-password@127.0.0.1:{}", smtp.port);
    let err = build_error(&["--api-token", "a-token-of-sixteen+", "--smtp-url", &url])
        .await
        .expect("serve refuses to start");
    assert!(
        err.contains("offers no authentication mechanism") && err.contains("TRELLIS_SMTP_URL"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-password"),
        "the password is never printed: {err}"
    );
    // The same server without credentials is fine, and one that is down only warns.
    let plain = build_error(&[
        "--api-token",
        "a-token-of-sixteen+",
        "--smtp-url",
        &smtp.url(),
    ])
    .await;
    assert_eq!(plain, None);
    drop(smtp);
    let down = build_error(&["--api-token", "a-token-of-sixteen+", "--smtp-url", &url]).await;
    assert_eq!(down, None, "an unreachable server may come up later");
}

/// One cart customer whose last-call SMS meets a 429 with `Retry-After: retry_after`;
/// returns how many SMS arrived `early` and `late` after the refusal (minutes).
async fn sms_after_a_429(
    retry_after: impl Fn(jiff::Timestamp) -> String,
    early: i64,
    late: i64,
) -> (usize, usize) {
    let refusal_time = at("2026-03-03T15:00:00Z");
    let twilio = TwilioServer::start_refusing(
        1,
        crate::app::Refusal {
            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(retry_after(refusal_time)),
        },
    )
    .await;
    let app = spawn_app(&twilio.flags()).await;
    app.call("PUT", "/v1/customers/ada", Some(ada())).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 5, "items": []}}))).await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await; // the reminder email
    app.advance(SignedDuration::from_hours(23));
    assert_eq!(app.now(), refusal_time);
    let (_, first) = app.settle().await;
    assert_eq!(first.retried, 1, "the 429 is retried: {first:?}");
    app.advance(SignedDuration::from_mins(early));
    app.settle().await;
    let before = twilio.received.lock().unwrap().len();
    app.advance(SignedDuration::from_mins(late - early));
    app.settle().await;
    let after = twilio.received.lock().unwrap().len();
    (before, after)
}

#[tokio::test]
async fn an_sms_429_waits_at_least_its_retry_after_in_seconds() {
    // The backoff alone would retry after about 30 s; the provider asked for 10 minutes.
    let (early, late) = sms_after_a_429(|_| "600".into(), 9, 11).await;
    assert_eq!((early, late), (0, 1));
}

#[tokio::test]
async fn an_sms_429_waits_at_least_its_retry_after_as_an_http_date() {
    let date = |now: jiff::Timestamp| {
        let until = now.checked_add(SignedDuration::from_mins(15)).unwrap();
        until.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
    };
    let (early, late) = sms_after_a_429(date, 14, 16).await;
    assert_eq!((early, late), (0, 1));
}
