//! Inbound SMS keywords and bounce reports, through the runtime.

use jiff::SignedDuration;
use serde_json::json;

use crate::app::{TOKEN, TwilioServer, spawn_app, spawn_app_in};

fn basic(password: &str) -> String {
    // "twilio:<password>" in base64, as Twilio sends credentials from the webhook URL.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("twilio:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

async fn inbound(app: &crate::app::TestApp, auth: &str, body: &str) -> (u16, String) {
    let (status, reply) = app
        .request(
            "POST",
            "/sms/inbound",
            Some(auth.to_owned()),
            "application/x-www-form-urlencoded",
            body.to_owned(),
        )
        .await;
    let text = match reply {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    };
    (status.as_u16(), text)
}

#[tokio::test]
async fn stop_withdraws_sms_consent_so_the_journeys_next_sms_is_not_sent_and_start_restores_it() {
    let twilio = TwilioServer::start(0).await;
    let app = spawn_app(&twilio.flags()).await;
    app.call("PUT", "/v1/customers/ada", Some(json!({"email": "ada@example.com", "phone": "+14155550101", "consent": {"email": true, "sms": true}}))).await;
    app.call("POST", "/v1/events", Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 5, "items": []}}))).await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await;

    let (status, _) = inbound(&app, &basic("wrong"), "From=%2B14155550101&Body=STOP").await;
    assert_eq!(status, 401);
    let (status, reply) = inbound(
        &app,
        &basic(TOKEN),
        "From=%2B14155550101&Body=stop&MessageSid=SM1",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        reply.contains("<Response><Message>You are unsubscribed") && reply.contains("Reply START"),
        "{reply}"
    );

    app.advance(SignedDuration::from_hours(23));
    app.settle().await;
    assert!(
        twilio.received.lock().unwrap().is_empty(),
        "no SMS after STOP"
    );
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["customer"]["consent"]["sms"], false);
    let sms = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "last_call")
        .unwrap()
        .clone();
    assert_eq!(sms["status"], "suppressed");

    let (_, reply) = inbound(&app, &basic(TOKEN), "From=%2B14155550101&Body=START").await;
    assert!(reply.contains("subscribed again"), "{reply}");
    let (_, reply) = inbound(&app, &basic(TOKEN), "From=%2B14155550101&Body=HELP").await;
    assert!(reply.contains("Reply STOP to unsubscribe"), "{reply}");
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["customer"]["consent"]["sms"], true);
}

#[tokio::test]
async fn a_hard_bounce_suppresses_the_address_even_for_transactional_email() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("receipt.yaml"),
        "id: receipt\nname: Receipt\ncategory: transactional\ntrigger: { event: { name: order_completed } }\nentry: every_time\nstart: mail\nnodes:\n  mail: { send_email: { template: welcome, next: done } }\n  done: exit\n",
    )
    .unwrap();
    let app = spawn_app_in(dir, &["--workflows", workflows.to_str().unwrap()]).await;
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"email": "Ada@Example.com", "consent": {"email": true}})),
    )
    .await;
    let (status, body) = app
        .call(
            "POST",
            "/v1/bounces",
            Some(json!({"email": "ada@example.com", "type": "hard"})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body),
        (200, json!({"suppressed": true, "customers": 1}))
    );
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "order_completed"})),
    )
    .await;
    app.settle().await;
    assert!(app.outbox_files().is_empty());
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(view["messages"][0]["status"], "suppressed");
    assert_eq!(view["customer"]["consent"]["email"], false);
    let (status, _) = app
        .call(
            "POST",
            "/v1/bounces",
            Some(json!({"email": "x@example.com", "type": "bogus"})),
        )
        .await;
    assert_eq!(status, 422);
}
