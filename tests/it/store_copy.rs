//! `trellis store copy`: an installation moved mid-journey from its SQLite file to PostgreSQL
//! goes on there exactly as it would have gone on on SQLite.

use jiff::SignedDuration;
use serde_json::json;

use crate::app::{TestApp, spawn_app_in};

/// Every customer's messages (key, node, template, status, attempts) and enrollments
/// (workflow, still in, node, exit reason), as the API shows them: what the journeys did.
async fn journeys(app: &TestApp, customers: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..customers {
        let (status, view) = app
            .call("GET", &format!("/v1/customers/c{i:02}"), None)
            .await;
        assert!(status.is_success(), "c{i:02}: {view}");
        for m in view["messages"].as_array().unwrap() {
            lines.push(format!(
                "c{i:02} message {} {} {} {} {}",
                m["key"], m["node"], m["template"], m["status"], m["attempts"]
            ));
        }
        for e in view["enrollments"].as_array().unwrap() {
            lines.push(format!(
                "c{i:02} enrollment {} {} {} {}",
                e["workflow_id"], e["active"], e["node"], e["exit_reason"]
            ));
        }
    }
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_installation_copied_mid_journey_finishes_on_postgresql_as_it_would_on_sqlite() {
    const CUSTOMERS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("before.db");
    let sqlite_url = format!("sqlite://{}", file.display());
    let on_sqlite = spawn_app_in(dir, &["--database-url", &sqlite_url]).await;
    // The welcome series: a welcome now, then after two days tips for pro customers and
    // buyers, an SMS nudge for those with a phone and SMS consent, nothing for the rest.
    for i in 0..CUSTOMERS {
        let mut body = json!({"email": format!("c{i:02}@example.com"), "consent": {"email": true}});
        if i % 3 == 0 {
            body["attributes"] = json!({"plan": "pro"});
        }
        if i % 3 == 1 {
            body["phone"] = json!(format!("+1415555{i:04}"));
            body["consent"]["sms"] = json!(true);
        }
        let (status, answer) = on_sqlite
            .call("PUT", &format!("/v1/customers/c{i:02}"), Some(body))
            .await;
        assert!(status.is_success(), "{answer}");
        on_sqlite
            .call(
                "POST",
                "/v1/events",
                Some(json!({"id": format!("signup-{i}"), "customer_id": format!("c{i:02}"), "name": "signup"})),
            )
            .await;
    }
    on_sqlite.settle().await;
    // One customer orders during the wait.
    on_sqlite
        .call(
            "POST",
            "/v1/events",
            Some(json!({"customer_id": "c02", "name": "order_completed", "properties": {"value": 30}})),
        )
        .await;
    on_sqlite.settle().await;

    // Copied with the real binary while every journey waits.
    let (pg_url, _schema) = trellis::store::testing::temp_postgres_url().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["store", "copy", "--from", &sqlite_url, "--to", &pg_url])
        .output()
        .expect("the binary runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains("DIFFERS"), "{printed}");
    assert!(printed.contains("customers"), "{printed}");
    assert!(!printed.contains(password(&pg_url)), "{printed}");

    let pg_dir = tempfile::tempdir().unwrap();
    let on_postgres = spawn_app_in(pg_dir, &["--database-url", &pg_url]).await;
    assert!(on_postgres.service.api.store.postgres_pool().is_some());
    on_postgres.clock.set(on_sqlite.now());
    assert_eq!(
        journeys(&on_sqlite, CUSTOMERS).await,
        journeys(&on_postgres, CUSTOMERS).await,
        "the copy holds every journey where it was"
    );

    // Both go on the same way: two days and a minute later.
    for app in [&on_sqlite, &on_postgres] {
        app.advance(SignedDuration::from_hours(48) + SignedDuration::from_mins(1));
        app.settle().await;
    }
    let (after_sqlite, after_postgres) = (
        journeys(&on_sqlite, CUSTOMERS).await,
        journeys(&on_postgres, CUSTOMERS).await,
    );
    assert_eq!(after_sqlite, after_postgres);
    // And they did go on: tips and nudges were sent after the copy.
    for template in ["\"tips\"", "\"nudge\""] {
        assert!(
            after_postgres
                .iter()
                .any(|l| l.contains(template) && l.contains("\"sent\"")),
            "{template}: {after_postgres:#?}"
        );
    }
}

#[tokio::test]
async fn a_copy_into_a_database_that_already_has_customers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("a.db").display());
    let (pg_url, _schema) = trellis::store::testing::temp_postgres_url().await;
    let on_postgres =
        spawn_app_in(tempfile::tempdir().unwrap(), &["--database-url", &pg_url]).await;
    on_postgres
        .call(
            "PUT",
            "/v1/customers/ada",
            Some(json!({"email": "ada@example.com"})),
        )
        .await;
    let copy = |from: &str, to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["store", "copy", "--from", from, "--to", to])
            .output()
            .expect("the binary runs")
    };
    let out = copy(&sqlite_url, &pg_url);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("already has customers"), "{said}");
    // The wrong way round is refused too, naming the flag.
    let out = copy(&pg_url, &sqlite_url);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("--from must be a SQLite database"), "{said}");
    assert!(!said.contains(password(&pg_url)), "{said}");
}

/// The password in a URL.
fn password(url: &str) -> &str {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map_or("(none)", |(_, password)| password)
}
