//! Crash safety: the real binary killed with SIGKILL while customers flow through a journey,
//! then restarted on the same file; and named failure points in-process.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::app::SmtpSink;
use crate::helpers::root;

/// The API token of the crash tests' servers.
const CRASH_TOKEN: &str = "crash-test-token-0123456789";

/// Customers and kills of the kill loop: 500 and 5 in CI, 10,000 and 20 with
/// `TRELLIS_SOAK=1`.
fn sizes() -> (usize, usize) {
    if std::env::var_os("TRELLIS_SOAK").is_some() {
        (10_000, 20)
    } else {
        (500, 5)
    }
}

/// `PRAGMA integrity_check` on the file while no server runs: "ok" or what is wrong.
async fn integrity(db: &str) -> String {
    use sqlx::ConnectOptions;
    let mut conn = db
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    sqlx::query_scalar::<_, String>("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
}

impl Server {
    fn start(db: &str, smtp: &str, port: u16, concurrency: usize) -> Server {
        Self::start_with(db, smtp, port, concurrency, None)
    }

    /// Starts the server; `crash_at` arms a named crash point (`TRELLIS_CRASH_AT`).
    fn start_with(
        db: &str,
        smtp: &str,
        port: u16,
        concurrency: usize,
        crash_at: Option<&str>,
    ) -> Server {
        Self::start_env(
            db,
            smtp,
            port,
            concurrency,
            &[("TRELLIS_CRASH_AT", crash_at.unwrap_or(""))],
        )
    }

    /// Starts the server with extra environment variables (crash and fail points).
    fn start_env(
        db: &str,
        smtp: &str,
        port: u16,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> Server {
        let fixtures = root().join("tests/fixtures/crash");
        let child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "serve",
                "--database-url",
                db,
                "--smtp-url",
                smtp,
                "--api-token",
                CRASH_TOKEN,
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workflows")
            .arg(fixtures.join("workflows"))
            .arg("--templates")
            .arg(fixtures.join("templates"))
            .args(["--from", "Crash <crash@trellis.test>"])
            .arg("--channel-concurrency")
            .arg(concurrency.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        Server { child }
    }

    /// Waits up to 30 s for the process to end by itself (at a crash point).
    #[cfg(feature = "crash-points")]
    async fn wait_for_crash(&mut self) -> std::process::ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the crash point was never reached");
    }

    fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until_up(client: &reqwest::Client, port: u16) {
    for _ in 0..200 {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server did not come up");
}

/// Posts one batch of `size`, retrying through kills: event ids make the retry idempotent.
async fn post_batch(client: &reqwest::Client, port: u16, batch: usize, size: usize) -> bool {
    let events: Vec<_> = (batch * size..(batch + 1) * size)
        .map(|i| json!({"id": format!("signup-{i}"), "customer_id": format!("c{i:04}"), "name": "signup"}))
        .collect();
    client
        .post(format!("http://127.0.0.1:{port}/v1/events/batch"))
        .bearer_auth(CRASH_TOKEN)
        .json(&events)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Stores customers `c0000`… with an email and consent, before their signups arrive.
async fn put_customers(client: &reqwest::Client, port: u16, n: usize) {
    for i in 0..n {
        let body = json!({"email": format!("c{i:04}@example.com"), "consent": {"email": true}});
        let put = client
            .put(format!("http://127.0.0.1:{port}/v1/customers/c{i:04}"))
            .bearer_auth(CRASH_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }
}

/// Runs the kill loop; returns (expected, distinct Message-IDs, raw messages, kills).
async fn kill_loop(concurrency: usize) -> (usize, usize, usize, usize) {
    let (customers, planned_kills) = sizes();
    let batch_size = customers / planned_kills;
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crash.db").display());
    let port = free_port();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // Customers need an email and consent before their signup arrives.
    let mut server = Server::start(&db, &smtp.url(), port, concurrency);
    wait_until_up(&client, port).await;
    put_customers(&client, port, customers).await;

    // Post the signups batch by batch, killing the server at different moments: right
    // after a batch is accepted, while the scheduler works, while the dispatcher sends.
    let pauses_ms = [0u64, 40, 120, 250, 600, 15];
    let mut kills = 0;
    for batch in 0..planned_kills {
        while !post_batch(&client, port, batch, batch_size).await {
            server.kill9();
            kills += 1;
            assert_eq!(integrity(&db).await, "ok", "after kill {kills}");
            server = Server::start(&db, &smtp.url(), port, concurrency);
            wait_until_up(&client, port).await;
        }
        tokio::time::sleep(Duration::from_millis(pauses_ms[batch % pauses_ms.len()])).await;
        server.kill9();
        kills += 1;
        assert_eq!(integrity(&db).await, "ok", "after kill {kills}");
        server = Server::start(&db, &smtp.url(), port, concurrency);
        wait_until_up(&client, port).await;
    }

    // Let the last run finish: every customer gets both emails.
    let expected = customers * 2;
    let mut by_id = smtp.message_ids();
    for _ in 0..6000 {
        if by_id.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        by_id = smtp.message_ids();
    }
    drop(server);
    let raw: usize = by_id.values().sum();
    println!(
        "RELIABILITY kill -9 (concurrency {concurrency}): {customers} customers, {kills} kills, {} of {expected} messages arrived, {} raw duplicates, integrity ok after every restart",
        by_id.len(),
        raw - by_id.len()
    );
    (expected, by_id.len(), raw, kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_at_several_points_trellis_loses_no_message_and_duplicates_at_most_one_per_kill()
 {
    // One delivery at a time per channel: at most one message is on the wire at any instant.
    let (expected, distinct, raw, kills) = kill_loop(1).await;
    assert_eq!(
        distinct, expected,
        "every expected message arrived (distinct Message-IDs)"
    );
    assert!(
        raw - distinct <= kills,
        "{} raw duplicates after {kills} kills",
        raw - distinct
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_concurrent_deliveries_a_kill_duplicates_at_most_the_messages_on_the_wire() {
    const CONCURRENCY: usize = 4;
    let (expected, distinct, raw, kills) = kill_loop(CONCURRENCY).await;
    assert_eq!(
        distinct, expected,
        "every expected message arrived (distinct Message-IDs)"
    );
    assert!(
        raw - distinct <= kills * CONCURRENCY,
        "{} raw duplicates after {kills} kills",
        raw - distinct
    );
}

#[tokio::test]
async fn a_crash_between_claiming_and_recording_resends_with_the_same_message_id() {
    if crate::app::on_postgres() {
        // On PostgreSQL a restart is another runner, which takes the claim once its lease
        // expires; a claim held by the live app here is renewed, never expired. The
        // several-runner test (tests/it/runners.rs) kills and stops real runners instead.
        return;
    }
    let smtp = SmtpSink::start();
    let app = crate::app::spawn_app(&["--smtp-url", &smtp.url()]).await;
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
    trellis::scheduler::tick(&app.service.scheduler, app.now())
        .await
        .unwrap();

    // Failure point "after send, before record": the message is claimed and delivered, and
    // the process dies before the outcome is written.
    let store = &app.service.dispatcher.store;
    let claimed = store.claim_messages(app.now(), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    app.service
        .dispatcher
        .channels
        .deliver(&claimed[0])
        .await
        .unwrap();

    // Restart: in-flight messages are released and sent again.
    assert_eq!(store.release_in_flight().await.unwrap(), 1);
    let report = trellis::channels::dispatch::drain(&app.service.dispatcher, app.now())
        .await
        .unwrap();
    assert_eq!(report.sent, 1);
    let mails = smtp.messages();
    assert_eq!(
        mails.len(),
        2,
        "the one on the wire at the crash is sent again"
    );
    let ids: Vec<&str> = mails
        .iter()
        .map(|m| m.lines().find(|l| l.starts_with("Message-ID:")).unwrap())
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "with the same Message-ID, so the receiver can tell"
    );

    // Failure point "after commit, before claim": nothing is lost, nothing sent twice.
    assert_eq!(
        trellis::channels::dispatch::drain(&app.service.dispatcher, app.now())
            .await
            .unwrap()
            .attempted(),
        0
    );
}

/// Runs customers through the two-email journey with the process aborting at `point`, then
/// restarts it on the same file; returns (expected, distinct Message-IDs, raw messages).
#[cfg(feature = "crash-points")]
async fn crash_at(point: &str) -> (usize, usize, usize) {
    const N: usize = 20;
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crash.db").display());
    let port = free_port();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Profiles first, on an unarmed server: storing them is not the point under test.
    let server = Server::start(&db, &smtp.url(), port, 1);
    wait_until_up(&client, port).await;
    put_customers(&client, port, N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    let mut server = Server::start_with(&db, &smtp.url(), port, 1, Some(point));
    wait_until_up(&client, port).await;
    let answered = post_batch(&client, port, 0, N).await;
    let status = server.wait_for_crash().await;
    assert!(!status.success(), "{point}: the process aborted ({status})");
    if point == "after_event_insert" {
        assert!(!answered, "the crash came before the answer");
    }
    assert_eq!(integrity(&db).await, "ok", "{point}");

    let server = Server::start(&db, &smtp.url(), port, 1);
    wait_until_up(&client, port).await;
    // The client resends what it was never answered for; ids make that harmless.
    assert!(post_batch(&client, port, 0, N).await);
    let expected = 2 * N;
    let mut by_id = smtp.message_ids();
    for _ in 0..600 {
        if by_id.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        by_id = smtp.message_ids();
    }
    drop(server);
    assert_eq!(integrity(&db).await, "ok", "{point}, after the run");
    (expected, by_id.len(), by_id.values().sum())
}

#[cfg(feature = "crash-points")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_every_named_crash_point_a_restart_loses_nothing_and_duplicates_only_what_was_on_the_wire()
 {
    for point in [
        "after_event_insert",
        "in_step",
        "after_step_commit",
        "after_claim",
        "after_send",
    ] {
        let (expected, distinct, raw) = crash_at(point).await;
        assert_eq!(distinct, expected, "{point}: every message arrived");
        // One delivery at a time: only `after_send` has a message on the wire.
        let allowed = usize::from(point == "after_send");
        assert!(
            raw - distinct <= allowed,
            "{point}: {} raw duplicates",
            raw - distinct
        );
        println!(
            "RELIABILITY crash point {point}: {distinct} of {expected} messages, {} raw duplicates, integrity ok",
            raw - distinct
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_flow_exits_within_ten_seconds_and_the_restart_sends_nothing_twice() {
    const N: usize = 200;
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("term.db").display());
    let port = free_port();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut server = Server::start(&db, &smtp.url(), port, 4);
    wait_until_up(&client, port).await;
    put_customers(&client, port, N).await;
    assert!(post_batch(&client, port, 0, N).await);
    // Mid-flow: some messages are out, the rest are queued or on the wire.
    for _ in 0..400 {
        if !smtp.messages().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = server.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = exited.expect("serve exits within 10 s of SIGTERM");
    assert!(exited.success(), "a clean exit: {exited}");
    let before = smtp.messages().len();
    assert!(
        before < 2 * N,
        "stopped mid-flow ({before} of {} sent)",
        2 * N
    );

    let server = Server::start(&db, &smtp.url(), port, 4);
    wait_until_up(&client, port).await;
    let mut by_id = smtp.message_ids();
    for _ in 0..1200 {
        if by_id.len() >= 2 * N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        by_id = smtp.message_ids();
    }
    drop(server);
    let raw: usize = by_id.values().sum();
    assert_eq!(by_id.len(), 2 * N, "every message arrived");
    assert_eq!(
        raw,
        by_id.len(),
        "a graceful stop leaves nothing to send twice"
    );
    println!(
        "RELIABILITY SIGTERM mid-flow: stopped after {before} of {} messages, {} raw duplicates after restart",
        2 * N,
        raw - by_id.len()
    );
}

#[cfg(feature = "crash-points")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_the_database_cannot_take_at_once_are_recorded_later_and_nothing_is_sent_twice() {
    const N: usize = 20;
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("record.db").display());
    let port = free_port();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // The first three groups of outcomes meet a busy database.
    let server = Server::start_env(
        &db,
        &smtp.url(),
        port,
        1,
        &[("TRELLIS_FAIL_AT", "record_outcomes:3")],
    );
    wait_until_up(&client, port).await;
    put_customers(&client, port, N).await;
    assert!(post_batch(&client, port, 0, N).await);
    // Every message ends `sent` without a restart: none is left `sending`.
    let mut sending = usize::MAX;
    for _ in 0..400 {
        let mut statuses = Vec::new();
        for i in 0..N {
            let view: serde_json::Value = client
                .get(format!("http://127.0.0.1:{port}/v1/customers/c{i:04}"))
                .bearer_auth(CRASH_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            statuses.extend(
                view["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["status"].as_str().unwrap_or_default().to_owned()),
            );
        }
        sending = statuses.iter().filter(|s| *s != "sent").count();
        if statuses.len() == 2 * N && sending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sending, 0, "every outcome was recorded in the end");
    // A restart has nothing left to send again.
    drop(server);
    let server = Server::start(&db, &smtp.url(), port, 1);
    wait_until_up(&client, port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(server);
    let by_id = smtp.message_ids();
    assert_eq!(by_id.len(), 2 * N);
    assert_eq!(by_id.values().sum::<usize>(), 2 * N, "nothing sent twice");
}
