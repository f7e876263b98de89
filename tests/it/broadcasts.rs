//! Schedule and date triggers at runtime: each customer at their own local time, once per
//! occurrence.

use jiff::SignedDuration;
use serde_json::json;

use crate::app::spawn_app;
use crate::helpers::at;

#[tokio::test]
async fn tokyo_and_los_angeles_each_get_the_weekly_newsletter_at_their_local_09_00_once() {
    let app = spawn_app(&[]).await;
    app.clock.set(at("2026-05-31T12:00:00Z")); // Sunday
    for (id, zone) in [("kenji", "Asia/Tokyo"), ("lucy", "America/Los_Angeles")] {
        app.call("PUT", &format!("/v1/customers/{id}"), Some(json!({"email": format!("{id}@example.com"), "timezone": zone, "consent": {"email": true}}))).await;
    }
    app.call(
        "PUT",
        "/v1/customers/nomail",
        Some(json!({"email": "no@example.com", "timezone": "Asia/Tokyo"})),
    )
    .await;
    app.settle().await;
    assert!(app.outbox_files().is_empty());

    // Monday 09:00 in Tokyo is 00:00 UTC.
    app.clock.set(at("2026-06-01T00:00:00Z"));
    let (ticks, _) = app.settle().await;
    assert_eq!(
        ticks.fired, 2,
        "Kenji, and the customer without consent (outside the audience)"
    );
    assert_eq!(app.outbox_files().len(), 1);
    let (_, kenji) = app.call("GET", "/v1/customers/kenji", None).await;
    assert_eq!(kenji["messages"][0]["template"], "newsletter");

    // Monday 09:00 in Los Angeles is 16:00 UTC.
    app.clock.set(at("2026-06-01T15:59:00Z"));
    app.settle().await;
    assert_eq!(app.outbox_files().len(), 1);
    app.clock.set(at("2026-06-01T16:00:00Z"));
    app.settle().await;
    assert_eq!(app.outbox_files().len(), 2);

    // The sweep and later ticks the same hour enroll nobody again for that occurrence.
    trellis::scheduler::refresh_segments(&app.service.scheduler, app.now())
        .await
        .unwrap();
    app.advance(SignedDuration::from_mins(30));
    app.settle().await;
    assert_eq!(app.outbox_files().len(), 2);
    // A week on, both again.
    app.clock.set(at("2026-06-08T16:00:00Z"));
    app.settle().await;
    assert_eq!(app.outbox_files().len(), 4);
}

#[tokio::test]
async fn a_birthday_greeting_goes_out_at_09_00_local_on_the_daylight_saving_start_day() {
    let app = spawn_app(&[]).await;
    app.clock.set(at("2026-03-01T00:00:00Z"));
    app.call("PUT", "/v1/customers/ada", Some(json!({
        "email": "ada@example.com", "timezone": "America/New_York", "consent": {"email": true},
        "attributes": {"first_name": "Ada", "birthday": "1990-03-08", "coupon_code": "BDAY-15", "coupon_expires": "2026-03-31"}
    }))).await;
    app.settle().await;
    let birthday_mails = || {
        app.outbox_files()
            .into_iter()
            .map(|f| std::fs::read_to_string(app.outbox.join(f)).unwrap())
            .filter(|m| m.contains("Subject: Happy birthday, Ada!"))
            .collect::<Vec<_>>()
    };
    // Ada also gets the weekly newsletter on Monday 03-02; only the greeting matters here.
    app.clock.set(at("2026-03-08T12:59:00Z"));
    app.settle().await;
    assert!(birthday_mails().is_empty());
    app.clock.set(at("2026-03-08T13:00:00Z"));
    app.settle().await;
    let mails = birthday_mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("BDAY-15"), "{}", mails[0]);
}

async fn late_customer_sends(missed: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("news.yaml"),
        format!(
            "id: news\nname: News\ntrigger:\n  schedule: {{ cron: \"0 9 * * MON\", timezone: customer, missed: {missed} }}\nentry: every_time\nstart: mail\nnodes:\n  mail: {{ send_email: {{ template: newsletter, next: done }} }}\n  done: exit\n"
        ),
    )
    .unwrap();
    let app = crate::app::spawn_app_in(dir, &["--workflows", workflows.to_str().unwrap()]).await;
    // Monday 12:00 in Tokyo: this week's 09:00 has passed.
    app.clock.set(at("2026-06-01T03:00:00Z"));
    app.call("PUT", "/v1/customers/kenji", Some(json!({"email": "kenji@example.com", "timezone": "Asia/Tokyo", "consent": {"email": true}}))).await;
    app.settle().await;
    for day in 1..=8 {
        app.clock.set(
            at("2026-06-01T00:00:00Z")
                .checked_add(SignedDuration::from_hours(24 * day))
                .unwrap(),
        );
        app.settle().await;
    }
    let (_, view) = app.call("GET", "/v1/customers/kenji", None).await;
    let mut sent: Vec<String> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sent_at"].as_str().unwrap().to_owned())
        .collect();
    sent.sort();
    sent
}

#[tokio::test]
async fn a_customer_scheduled_after_their_local_occurrence_gets_it_next_day_or_skips_as_configured()
{
    assert_eq!(
        late_customer_sends("next_day").await,
        ["2026-06-02T00:00:00Z", "2026-06-08T00:00:00Z"]
    );
    assert_eq!(late_customer_sends("skip").await, ["2026-06-08T00:00:00Z"]);
}

#[tokio::test]
async fn a_customer_without_a_time_zone_gets_broadcasts_in_the_configured_default_zone() {
    let app = spawn_app(&["--default-timezone", "Asia/Tokyo"]).await;
    app.clock.set(at("2026-05-31T12:00:00Z"));
    app.call(
        "PUT",
        "/v1/customers/zoneless",
        Some(json!({"email": "z@example.com", "consent": {"email": true}})),
    )
    .await;
    app.settle().await;
    // Monday 09:00 in Tokyo is 00:00 UTC; in UTC it would be 09:00.
    app.clock.set(at("2026-06-01T00:00:00Z"));
    app.settle().await;
    assert_eq!(app.outbox_files().len(), 1);
}

#[tokio::test]
async fn erasing_a_customer_leaves_no_trace_of_their_id_in_handled_occurrences() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("kept.db").display());
    let app =
        crate::app::spawn_app_in(tempfile::tempdir().unwrap(), &["--database-url", &db]).await;
    app.clock.set(at("2026-05-31T12:00:00Z"));
    app.call(
        "PUT",
        "/v1/customers/kenji",
        Some(
            json!({"email": "k@example.com", "timezone": "Asia/Tokyo", "consent": {"email": true}}),
        ),
    )
    .await;
    app.settle().await;
    app.clock.set(at("2026-06-01T00:00:00Z"));
    app.settle().await;
    assert_eq!(
        app.outbox_files().len(),
        1,
        "the newsletter occurrence was handled"
    );
    assert_eq!(app.call("DELETE", "/v1/customers/kenji", None).await.0, 204);

    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    for table in [
        "trigger_fires",
        "scheduled_fires",
        "segment_members",
        "events",
        "messages",
        "enrollments",
        "customers",
    ] {
        let (n,): (i64,) = sqlx::query_as(
            &format!("SELECT COUNT(*) FROM {table} WHERE customer_id = 'kenji'")
                .replace("customers WHERE customer_id", "customers WHERE id"),
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} still names kenji");
    }
    let (handled,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM trigger_fires")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(handled, 1, "the anonymous count stays");
}
