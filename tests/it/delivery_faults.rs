//! Providers that fail in the ways real ones do, through the in-process runtime on a manual
//! clock: an SMTP server that stores a message and drops the connection before its 250 (the
//! RFC 1047 window), 421 and 451 for a while, a 550 for one address; webhooks that are slow,
//! answer 500 twice, or 404.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use jiff::SignedDuration;
use serde_json::{Value, json};

use crate::app::{SmtpSink, TestApp, spawn_app, spawn_app_in};

fn customer(email: &str) -> Value {
    json!({
        "email": email,
        "timezone": "Europe/London",
        "attributes": {"first_name": "Ada"},
        "consent": {"email": true}
    })
}

/// Makes `id` a pro customer, so the welcome journey's tips email follows two days later;
/// moves the clock past it, settles, and returns the customer as the API shows them.
async fn two_days_later_as_pro(app: &TestApp, id: &str) -> Value {
    let path = format!("/v1/customers/{id}");
    app.call("PATCH", &path, Some(json!({"attributes": {"plan": "pro"}})))
        .await;
    app.advance(SignedDuration::from_hours(49));
    app.settle().await;
    app.call("GET", &path, None).await.1
}

async fn sign_up(app: &TestApp, ids: &[&str]) {
    for id in ids {
        app.call(
            "PUT",
            &format!("/v1/customers/{id}"),
            Some(customer(&format!("{id}@example.com"))),
        )
        .await;
        app.call(
            "POST",
            "/v1/events",
            Some(json!({"id": format!("signup-{id}"), "customer_id": id, "name": "signup"})),
        )
        .await;
    }
}

#[tokio::test]
async fn a_message_stored_before_a_dropped_connection_arrives_twice_with_one_message_id() {
    let smtp = SmtpSink::start();
    let app = spawn_app(&["--smtp-url", &smtp.url(), "--channel-concurrency", "1"]).await;
    smtp.drop_after_next_data();
    sign_up(&app, &["c0", "c1", "c2"]).await;
    let (_, first) = app.settle().await;
    assert_eq!((first.sent, first.retried), (2, 1), "{first:?}");
    app.advance(SignedDuration::from_mins(2));
    app.settle().await;
    let by_id = smtp.message_ids();
    assert_eq!(by_id.len(), 3, "every welcome email arrived");
    let twice: Vec<_> = by_id.values().filter(|n| **n > 1).collect();
    assert_eq!(
        twice,
        vec![&2],
        "only the message in the RFC 1047 window arrived again, under its own Message-ID"
    );
    println!(
        "RELIABILITY RFC 1047 window: connection dropped after DATA, {} messages, 1 arrived twice with one Message-ID, nothing else duplicated",
        by_id.len()
    );
}

#[tokio::test]
async fn smtp_421_and_451_for_a_while_then_recovery_deliver_every_message_once() {
    for reply in [
        "421 4.3.2 Service shutting down",
        "451 4.3.0 Try again later",
    ] {
        let smtp = SmtpSink::start();
        let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
        smtp.fail_with(Some(reply));
        sign_up(&app, &["c0", "c1", "c2"]).await;
        let (_, first) = app.settle().await;
        assert_eq!((first.sent, first.retried), (0, 3), "{reply}: {first:?}");
        // Still failing at the first retry, 30 s plus jitter later.
        app.advance(SignedDuration::from_secs(40));
        let (_, second) = app.settle().await;
        assert_eq!(second.retried, 3, "{reply}");
        smtp.fail_with(None);
        app.advance(SignedDuration::from_mins(2));
        let (_, third) = app.settle().await;
        assert_eq!(third.sent, 3, "{reply}");
        let by_id = smtp.message_ids();
        assert_eq!(
            (by_id.len(), by_id.values().sum::<usize>()),
            (3, 3),
            "{reply}: every message once"
        );
        let (_, view) = app.call("GET", "/v1/customers/c0", None).await;
        assert_eq!(
            (
                &view["messages"][0]["status"],
                &view["messages"][0]["attempts"]
            ),
            (&json!("sent"), &json!(3)),
            "{reply}: two refusals recorded, then sent"
        );
    }
}

#[tokio::test]
async fn a_550_for_one_address_fails_it_at_once_and_suppresses_it_from_then_on() {
    let smtp = SmtpSink::start();
    let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
    smtp.reject(&["gone@example.com"]);
    sign_up(&app, &["ada", "gone"]).await;
    let (_, first) = app.settle().await;
    assert_eq!((first.sent, first.failed, first.retried), (1, 1, 0));
    let (_, gone) = app.call("GET", "/v1/customers/gone", None).await;
    let welcome = gone["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "welcome")
        .unwrap();
    assert_eq!(
        (welcome["status"].as_str(), welcome["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{gone}"
    );
    assert!(
        welcome["last_error"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{welcome}"
    );

    // The journey's next email (tips, for pro customers), two days later, is not attempted:
    // the address is suppressed.
    let gone = two_days_later_as_pro(&app, "gone").await;
    let later: Vec<&Value> = gone["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["node"] != "welcome")
        .collect();
    assert!(!later.is_empty(), "the journey went on: {gone}");
    for message in later {
        assert_eq!(message["status"], "suppressed", "{message}");
        assert_eq!(message["attempts"], 0, "{message}");
    }
    let (_, ada) = app.call("GET", "/v1/customers/ada", None).await;
    assert!(
        ada["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "sent"),
        "other addresses are untouched: {ada}"
    );
}

#[tokio::test]
async fn a_pipelining_server_gets_one_group_per_message_and_a_refused_rcpt_still_suppresses() {
    let smtp = SmtpSink::start();
    let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
    smtp.reject(&["gone@example.com"]);
    sign_up(&app, &["ada", "gone", "bea"]).await;
    let (_, first) = app.settle().await;
    assert_eq!(
        (first.sent, first.failed, first.retried),
        (2, 1, 0),
        "{first:?}"
    );
    assert_eq!(
        smtp.rcpt_log(),
        ["pipelined"; 3],
        "every RCPT arrived with its DATA behind it, before the server answered"
    );
    let (_, gone) = app.call("GET", "/v1/customers/gone", None).await;
    let last_error = gone["messages"][0]["last_error"].as_str().unwrap();
    assert!(last_error.contains("(550): 5.1.1"), "{gone}");
    let gone = two_days_later_as_pro(&app, "gone").await;
    let statuses: Vec<&Value> = gone["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!("suppressed"), &json!("failed")],
        "newest first: {gone}"
    );
    assert!(
        smtp.messages()
            .iter()
            .all(|m| !m.contains("To: gone@example.com")),
        "nothing reached the refused address"
    );
}

#[tokio::test]
async fn a_server_without_pipelining_gets_one_command_at_a_time() {
    let smtp = SmtpSink::start();
    smtp.without_pipelining();
    let app = spawn_app(&["--smtp-url", &smtp.url()]).await;
    sign_up(&app, &["ada", "bea"]).await;
    let (_, first) = app.settle().await;
    assert_eq!(
        (first.sent, first.failed, first.retried),
        (2, 0, 0),
        "{first:?}"
    );
    assert_eq!(smtp.rcpt_log(), ["waited"; 2]);
    assert_eq!(smtp.message_ids().len(), 2);
}

/// Calls received per customer id, and a switch that makes `/hooks/slow` fast.
#[derive(Default)]
struct Hooks {
    calls: Mutex<BTreeMap<String, Vec<Option<String>>>>,
    slow_is_fast: std::sync::atomic::AtomicBool,
}

async fn hook_server(hooks: Arc<Hooks>) -> String {
    let router = Router::new().route(
        "/hooks/{id}",
        post(
            move |axum::extract::Path(id): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap| {
                let hooks = hooks.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let n = {
                        let mut calls = hooks.calls.lock().unwrap();
                        let list = calls.entry(id.clone()).or_default();
                        list.push(key);
                        list.len()
                    };
                    let status = match id.as_str() {
                        "slow" if !hooks.slow_is_fast.load(std::sync::atomic::Ordering::SeqCst) => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            200
                        }
                        "flaky" if n <= 2 => 500,
                        "gone" => 404,
                        _ => 200,
                    };
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

#[tokio::test]
async fn webhooks_slower_than_their_timeout_or_answering_500_are_retried_and_a_404_is_not() {
    let hooks = Arc::new(Hooks::default());
    let base = hook_server(hooks.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("crm.yaml"),
        format!(
            "id: crm\nname: CRM sync\ntrigger: {{ event: {{ name: order_completed }} }}\nentry: every_time\nstart: sync\nnodes:\n  sync:\n    webhook:\n      url: \"{base}/hooks/{{{{customer.id}}}}\"\n      next: done\n  done: exit\n"
        ),
    )
    .unwrap();
    let app = spawn_app_in(
        dir,
        &[
            "--workflows",
            workflows.to_str().unwrap(),
            "--webhook-allow",
            "127.0.0.1",
            "--webhook-timeout",
            "1s",
        ],
    )
    .await;
    for id in ["slow", "flaky", "gone"] {
        app.call(
            "POST",
            "/v1/events",
            Some(json!({"customer_id": id, "name": "order_completed"})),
        )
        .await;
    }
    let (_, first) = app.settle().await;
    assert_eq!(
        (first.sent, first.retried, first.failed),
        (0, 2, 1),
        "{first:?}"
    );
    let status = |view: &Value| {
        let m = &view["messages"][0];
        (
            m["status"].as_str().unwrap_or_default().to_owned(),
            m["attempts"].as_u64().unwrap_or_default(),
        )
    };
    let (_, slow) = app.call("GET", "/v1/customers/slow", None).await;
    assert!(
        slow["messages"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{slow}"
    );
    let (_, gone) = app.call("GET", "/v1/customers/gone", None).await;
    assert_eq!(status(&gone), ("failed".into(), 1), "a 404 is not retried");

    hooks
        .slow_is_fast
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        app.advance(SignedDuration::from_mins(5));
        app.settle().await;
    }
    let (_, slow) = app.call("GET", "/v1/customers/slow", None).await;
    assert_eq!(status(&slow), ("sent".into(), 2));
    let (_, flaky) = app.call("GET", "/v1/customers/flaky", None).await;
    assert_eq!(status(&flaky), ("sent".into(), 3), "two 500s, then 200");
    let calls = hooks.calls.lock().unwrap();
    assert_eq!(calls["gone"].len(), 1);
    let keys = &calls["flaky"];
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "every attempt carries the same Idempotency-Key: {keys:?}"
    );
}

/// An SMS provider that resets the first `resets` connections (RST, no answer) and then
/// answers every request 201 like Twilio; counts the requests it answered.
async fn resetting_provider(resets: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            seen += 1;
            if seen <= resets {
                // Linger 0: closing sends a reset instead of a clean end.
                socket.set_zero_linger().unwrap();
                drop(socket);
                continue;
            }
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut read = 0;
                // Headers, then the body its Content-Length announces.
                loop {
                    let Ok(n) = socket.read(&mut buf[read..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read += n;
                    let text = String::from_utf8_lossy(&buf[..read]).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if read >= end + 4 + length {
                            break;
                        }
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = "{\"sid\":\"SM1\",\"status\":\"queued\"}";
                let _ = socket
                    .write_all(
                        format!(
                            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (base, answered)
}

#[tokio::test]
async fn an_sms_provider_resetting_the_connection_is_retried_and_sent_once() {
    let (base, answered) = resetting_provider(1).await;
    let app = spawn_app(&[
        "--twilio-base-url",
        &base,
        "--twilio-account-sid",
        "AC1",
        "--twilio-auth-token",
        "t",
    ])
    .await;
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"phone": "+14155550101", "timezone": "America/New_York", "attributes": {"first_name": "Ada"}, "consent": {"sms": true, "email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "cart_updated", "properties": {"total": 5, "items": []}})),
    )
    .await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(1));
    app.settle().await; // the reminder email, to no address
    app.advance(SignedDuration::from_hours(23));
    let (_, first) = app.settle().await;
    assert_eq!(
        first.retried, 1,
        "a reset is a temporary failure: {first:?}"
    );
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 0);
    app.advance(SignedDuration::from_mins(2));
    let (_, second) = app.settle().await;
    assert_eq!(second.sent, 1, "{second:?}");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let sms = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "sms")
        .unwrap()
        .clone();
    assert_eq!(
        (&sms["status"], &sms["attempts"]),
        (&json!("sent"), &json!(2)),
        "{sms}"
    );
}
