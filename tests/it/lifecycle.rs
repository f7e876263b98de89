//! The service's lifecycle: versions kept for customers in flight, refusing broken files,
//! graceful shutdown, webhooks through the whole runtime, secrets kept out of sight.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use jiff::SignedDuration;
use serde_json::{Value, json};

use crate::app::{TOKEN, spawn_app_in};
use crate::helpers::root;

const V1: &str = r#"
id: onboarding
name: Onboarding
trigger: { event: { name: signup } }
start: hello
nodes:
  hello: { send_email: { template: welcome, next: pause } }
  pause: { wait: { duration: 1d, next: follow_up } }
  follow_up: { send_email: { template: tips, next: done } }
  done: exit
"#;

fn write_workflow(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("onboarding.yaml"), text).unwrap();
}

#[tokio::test]
async fn a_customer_in_flight_keeps_the_version_they_entered_with_and_new_entries_get_the_new_one()
{
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    let outbox = dir.path().join("outbox");
    write_workflow(&workflows, V1);
    // Both runs use one database file, as a restart would.
    let db = format!("sqlite://{}", dir.path().join("kept.db").display());
    let flags = [
        "--workflows",
        workflows.to_str().unwrap(),
        "--outbox",
        outbox.to_str().unwrap(),
        "--database-url",
        &db,
    ];
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &flags).await;
    app.call(
        "PUT",
        "/v1/customers/old",
        Some(json!({"email": "old@example.com", "consent": {"email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "old", "name": "signup"})),
    )
    .await;
    app.settle().await;
    let start = app.now();
    drop(app);

    // The file changes: the follow-up now sends the newsletter instead of tips.
    write_workflow(
        &workflows,
        &V1.replace("template: tips", "template: newsletter"),
    );
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &flags).await;
    app.clock.set(start);
    app.call(
        "PUT",
        "/v1/customers/new",
        Some(json!({"email": "new@example.com", "consent": {"email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "new", "name": "signup"})),
    )
    .await;
    app.settle().await;
    app.advance(SignedDuration::from_hours(25));
    app.settle().await;

    let follow_up = |id: &str| {
        let id = id.to_owned();
        let app = &app;
        async move {
            let (_, view) = app.call("GET", &format!("/v1/customers/{id}"), None).await;
            view["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["node"] == "follow_up")
                .unwrap()["template"]
                .clone()
        }
    };
    assert_eq!(
        follow_up("old").await,
        "tips",
        "the old customer finishes on the version they entered"
    );
    assert_eq!(
        follow_up("new").await,
        "newsletter",
        "new entries get the changed workflow"
    );
    let (_, wf) = app.call("GET", "/v1/workflows/onboarding", None).await;
    let (_, old_view) = app.call("GET", "/v1/customers/old", None).await;
    assert_ne!(
        wf["version"],
        old_view["enrollments"][0]["workflow_version"]
    );
}

#[tokio::test]
async fn serve_refuses_to_start_on_broken_workflows_and_prints_every_problem() {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--database-url",
            "sqlite::memory:",
        ])
        .arg("--workflows")
        .arg(root().join("tests/fixtures/broken/workflows"))
        .arg("--templates")
        .arg(root().join("tests/fixtures/broken/templates"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workflows or templates have problems"),
        "{err}"
    );
    assert!(
        err.contains("graph.yaml:22: node spin: loop without a wait"),
        "{err}"
    );
    assert!(
        err.contains("unknown_key.yaml:12: node hello: unknown field `colour`"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.path().join("t.db").display()))
        .arg("--outbox")
        .arg(dir.path().join("outbox"))
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the service came up");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = status.expect("the service exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("Shutting down") && log.contains("Stopped."),
        "{log}"
    );
}

/// (customer id from the path, Idempotency-Key header, JSON body)
type HookCall = (String, Option<String>, Value);

#[tokio::test]
async fn a_webhook_node_calls_an_allowlisted_local_endpoint_with_the_rendered_body_and_key() {
    let received: Arc<Mutex<Vec<HookCall>>> = Arc::default();
    let sink = received.clone();
    let hook = Router::new().route(
        "/hooks/{id}",
        post(
            move |axum::extract::Path(id): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: axum::Json<Value>| {
                let sink = sink.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    sink.lock().unwrap().push((id, key, body.0));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await });

    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("crm.yaml"),
        format!(
            "id: crm\nname: CRM sync\ntrigger: {{ event: {{ name: order_completed }} }}\nentry: every_time\nstart: sync\nnodes:\n  sync:\n    webhook:\n      url: \"{base}/hooks/{{{{customer.id}}}}\"\n      body: {{ value: \"{{{{event.properties.value}}}}\", plan: \"{{{{customer.attributes.plan}}}}\" }}\n      next: done\n  done: exit\n"
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
        ],
    )
    .await;
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"attributes": {"plan": "pro"}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "order_completed", "properties": {"value": 59}})),
    )
    .await;
    let (_, drained) = app.settle().await;
    assert_eq!(drained.sent, 1);
    let calls = received.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "ada");
    assert_eq!(calls[0].2, json!({"value": "59", "plan": "pro"}));
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    assert_eq!(calls[0].1.as_deref(), view["messages"][0]["key"].as_str());
}

#[tokio::test]
async fn secrets_never_show_in_debug_output_or_api_responses() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_in(
        dir,
        &[
            "--smtp-url",
            "smtp://user:hunter2@127.0.0.1:9",
            "--twilio-account-sid",
            "AC1",
            "--twilio-auth-token",
            "tw-secret-77",
        ],
    )
    .await;
    let debug = format!(
        "{:?} {:?}",
        app.service.dispatcher, app.service.scheduler.shell.links
    );
    for secret in ["hunter2", "tw-secret-77", TOKEN] {
        assert!(!debug.contains(secret), "{secret} leaked into {debug}");
    }
    let (_, workflows) = app.call("GET", "/v1/workflows", None).await;
    assert!(!workflows.to_string().contains("hunter2"));
    assert_eq!(
        format!("{}", trellis::config::Secret::new("x")),
        "[redacted]"
    );
}

#[tokio::test]
async fn an_event_beside_an_enrollment_whose_version_no_longer_loads_is_still_processed() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("ping.yaml"),
        "id: ping\nname: Ping\ntrigger: { event: { name: ping } }\nentry: every_time\nstart: pause\nnodes:\n  pause: { wait: { duration: 2d, next: done } }\n  done: exit\n",
    )
    .unwrap();
    let app = spawn_app_in(dir, &["--workflows", workflows.to_str().unwrap()]).await;
    let ping = || json!({"customer_id": "ada", "name": "ping"});
    app.call("POST", "/v1/events", Some(ping())).await;
    app.settle().await;
    // The waiting enrollment now names a version the catalog does not hold (its file was
    // changed and the old text no longer parses).
    let store = &app.service.scheduler.store;
    match store.postgres_pool() {
        Some(pool) => sqlx::query(
            "UPDATE enrollments SET state = jsonb_set(state, '{workflow_version}', '\"gone0000gone0000\"')",
        )
        .execute(pool)
        .await
        .map(drop),
        None => sqlx::query(
            "UPDATE enrollments SET state = json_set(state, '$.workflow_version', 'gone0000gone0000')",
        )
        .execute(store.sqlite_pool().expect("SQLite or PostgreSQL"))
        .await
        .map(drop),
    }
    .unwrap();
    app.call("POST", "/v1/events", Some(ping())).await;
    let report = trellis::scheduler::tick(&app.service.scheduler, app.now())
        .await
        .expect("the batch commits: the customer is still in the workflow, so no second entry");
    assert_eq!(report.events, 1);
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let active: Vec<_> = view["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{view}");
}
