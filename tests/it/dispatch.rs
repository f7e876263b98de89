//! The continuous dispatcher (`dispatch::run`, the real loop) in-process on a manual clock:
//! a webhook endpoint that holds its calls until the test releases them stands for a slow
//! provider, and emails go to the outbox folder. Every assertion is on the recorded state
//! the API shows, never on timing ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trellis::channels::dispatch::{self, DispatchCtx};

use crate::app::{TestApp, spawn_app_in};
use crate::helpers::root;

/// A webhook endpoint: `/hooks/held-…` calls wait until [`HeldHooks::release`], others
/// answer 200 at once.
struct HeldHooks {
    base: String,
    arrived: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl HeldHooks {
    async fn start() -> HeldHooks {
        let arrived = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let (a, b) = (arrived.clone(), answered.clone());
        let router = Router::new().route(
            "/hooks/{id}",
            post(
                move |axum::extract::Path(id): axum::extract::Path<String>| {
                    let (arrived, answered, mut released) =
                        (a.clone(), b.clone(), released.clone());
                    async move {
                        if id.starts_with("held") {
                            arrived.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        HeldHooks {
            base,
            arrived,
            answered,
            release,
        }
    }

    /// Held calls received so far.
    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Held calls answered so far.
    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Answers every held call, and every later one at once.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// An app with the shipped welcome series (an email on signup) and a CRM sync webhook on
/// every `order_completed`, to `hooks`; extra flags after.
async fn app_with_hooks(hooks: &HeldHooks, extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::copy(
        root().join("workflows/welcome_series.yaml"),
        workflows.join("welcome_series.yaml"),
    )
    .unwrap();
    std::fs::write(
        workflows.join("crm.yaml"),
        format!(
            "id: crm\nname: CRM sync\ntrigger: {{ event: {{ name: order_completed }} }}\nentry: every_time\nstart: sync\nnodes:\n  sync:\n    webhook:\n      url: \"{}/hooks/{{{{customer.id}}}}\"\n      next: done\n  done: exit\n",
            hooks.base
        ),
    )
    .unwrap();
    let mut flags = vec![
        "--workflows",
        workflows.to_str().unwrap(),
        "--webhook-allow",
        "127.0.0.1",
        "--webhook-timeout",
        "30s",
    ];
    flags.extend(extra);
    spawn_app_in(dir, &flags).await
}

/// Queues a CRM sync webhook for customer `id` (the scheduler runs once).
async fn queue_webhook(app: &TestApp, id: &str) {
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": id, "name": "order_completed"})),
    )
    .await;
    tick(app).await;
}

/// Queues the welcome email for a new customer `id` (the scheduler runs once).
async fn queue_email(app: &TestApp, id: &str) {
    app.call(
        "PUT",
        &format!("/v1/customers/{id}"),
        Some(json!({
            "email": format!("{id}@example.com"),
            "timezone": "Europe/London",
            "attributes": {"first_name": "Ada"},
            "consent": {"email": true}
        })),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"id": format!("signup-{id}"), "customer_id": id, "name": "signup"})),
    )
    .await;
    tick(app).await;
}

/// One scheduler pass: the events become outbox messages, and the dispatcher is nudged.
async fn tick(app: &TestApp) {
    trellis::scheduler::tick(&app.service.scheduler, app.now())
        .await
        .unwrap();
}

/// The status of customer `id`'s first message (the only one these tests queue).
async fn status(app: &TestApp, id: &str) -> String {
    let (_, view) = app.call("GET", &format!("/v1/customers/{id}"), None).await;
    view["messages"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls for up to five seconds until `check` holds.
async fn eventually<F: AsyncFnMut() -> bool>(mut check: F) -> bool {
    for _ in 0..250 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The real dispatcher loop, as `serve` runs it, with `ctx`.
fn start(app: &TestApp, ctx: DispatchCtx, shutdown: &CancellationToken) -> JoinHandle<()> {
    tokio::spawn(dispatch::run(
        ctx,
        app.clock.clone(),
        app.service.outbox_nudge.clone(),
        shutdown.clone(),
    ))
}

async fn statuses(app: &TestApp, ids: &[&str]) -> Vec<String> {
    let mut all = Vec::new();
    for id in ids {
        all.push(status(app, id).await);
    }
    all
}

#[tokio::test]
async fn emails_queued_behind_a_slow_webhook_are_sent_and_recorded_while_it_is_on_the_wire() {
    let hooks = HeldHooks::start().await;
    let app = app_with_hooks(&hooks, &[]).await;
    let shutdown = CancellationToken::new();
    let dispatcher = start(&app, app.service.dispatcher.clone(), &shutdown);
    queue_webhook(&app, "held-1").await;
    assert!(
        eventually(async || hooks.arrived() == 1).await,
        "the webhook is on the wire"
    );

    // Queued after the webhook was claimed: under rounds they waited for it to answer.
    queue_email(&app, "ada").await;
    queue_email(&app, "bea").await;
    let emails = ["ada", "bea"];
    assert!(
        eventually(async || statuses(&app, &emails).await == ["sent", "sent"]).await,
        "the emails were sent and recorded while the webhook was held: {:?}",
        statuses(&app, &emails).await
    );
    assert_eq!(hooks.answered(), 0, "the webhook is still on the wire");
    assert_eq!(status(&app, "held-1").await, "sending");
    assert_eq!(app.outbox_files().len(), 2, "both emails went out");

    hooks.release();
    assert!(
        eventually(async || status(&app, "held-1").await == "sent").await,
        "the slow webhook is recorded once it answers"
    );
    shutdown.cancel();
    dispatcher.await.unwrap();
}

#[tokio::test]
async fn a_backlog_on_one_channel_does_not_keep_another_channels_message_waiting() {
    let hooks = HeldHooks::start().await;
    let app = app_with_hooks(&hooks, &["--channel-concurrency", "1"]).await;
    // A backlog larger than a claim: ten webhooks, all older than the email, one of them
    // held on the wire and nine waiting behind it. Claimed in due order up to a global
    // bound, the waiting webhooks would fill every claim and the email would wait for them.
    let backlog: Vec<String> = (0..10).map(|i| format!("held-{i}")).collect();
    for id in &backlog {
        queue_webhook(&app, id).await;
    }
    app.advance(jiff::SignedDuration::from_secs(1));
    let ctx = DispatchCtx {
        batch_size: 4,
        ..app.service.dispatcher.clone()
    };
    let shutdown = CancellationToken::new();
    let dispatcher = start(&app, ctx, &shutdown);
    assert!(eventually(async || hooks.arrived() == 1).await);

    queue_email(&app, "ada").await;
    assert!(
        eventually(async || status(&app, "ada").await == "sent").await,
        "the email went out past the webhook backlog: {}",
        status(&app, "ada").await
    );
    let ids: Vec<&str> = backlog.iter().map(String::as_str).collect();
    let webhooks = statuses(&app, &ids).await;
    assert_eq!(hooks.arrived(), 1, "one webhook at a time: {webhooks:?}");
    // The lane claims ahead, a claim's worth (4) at most: one on the wire, three waiting
    // for its permit, the other six still `pending`.
    assert_eq!(
        webhooks.iter().filter(|s| *s == "sending").count(),
        4,
        "a lane claims at most batch_size ahead: {webhooks:?}"
    );

    // Stopped now, the webhook on the wire ends and is recorded; the three claimed but never
    // attempted go back to `pending` at once, not at the next start.
    shutdown.cancel();
    hooks.release();
    dispatcher.await.unwrap();
    let webhooks = statuses(&app, &ids).await;
    assert_eq!(
        (
            webhooks.iter().filter(|s| *s == "sent").count(),
            webhooks.iter().filter(|s| *s == "pending").count()
        ),
        (1, 9),
        "{webhooks:?}"
    );
    assert_eq!(hooks.arrived(), 1, "nothing new started after the stop");
}

#[tokio::test]
async fn on_shutdown_the_deliveries_in_flight_end_and_are_recorded_and_nothing_more_is_claimed() {
    let hooks = HeldHooks::start().await;
    let app = app_with_hooks(&hooks, &[]).await;
    queue_webhook(&app, "held-1").await;
    queue_webhook(&app, "held-2").await;
    let shutdown = CancellationToken::new();
    let mut dispatcher = start(&app, app.service.dispatcher.clone(), &shutdown);
    assert!(eventually(async || hooks.arrived() == 2).await);

    shutdown.cancel();
    // Queued after the stop began: not claimed.
    queue_email(&app, "ada").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut dispatcher)
            .await
            .is_err(),
        "the dispatcher waits for the deliveries in flight"
    );
    hooks.release();
    tokio::time::timeout(Duration::from_secs(5), dispatcher)
        .await
        .expect("the dispatcher returns once they are recorded")
        .unwrap();
    assert_eq!(
        statuses(&app, &["held-1", "held-2", "ada"]).await,
        ["sent", "sent", "pending"],
        "both deliveries in flight were recorded; nothing was claimed after the stop"
    );
    let (_, view): (_, Value) = app.call("GET", "/v1/customers/held-1", None).await;
    assert_eq!(view["messages"][0]["attempts"], 1, "{view}");
}
