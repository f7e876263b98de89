//! Segments at runtime: membership kept current on events and by the sweep, and
//! segment triggers fired once per transition.

use jiff::SignedDuration;
use serde_json::json;

use crate::app::spawn_app;
use crate::helpers::at;

#[tokio::test]
async fn a_customer_who_stops_buying_enters_at_risk_once_by_the_sweep_and_gets_the_winback_offer() {
    let app = spawn_app(&[]).await;
    app.clock.set(at("2026-05-01T12:00:00Z"));
    app.call("PUT", "/v1/customers/grace", Some(json!({"email": "grace@example.com", "timezone": "Europe/Berlin", "consent": {"email": true}}))).await;
    app.call(
        "POST",
        "/v1/events",
        Some(
            json!({"customer_id": "grace", "name": "order_completed", "properties": {"value": 30}}),
        ),
    )
    .await;
    app.settle().await;
    let store = &app.service.scheduler.store;
    assert_eq!(store.segment_members("buyers").await.unwrap(), ["grace"]);
    assert!(store.segment_members("at_risk").await.unwrap().is_empty());

    // Over sixty days on, with no event at all, the sweep finds Grace at risk: Wednesday 07-01.
    app.clock.set(at("2026-07-01T12:00:00Z"));
    assert_eq!(
        trellis::scheduler::refresh_segments(&app.service.scheduler, app.now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.segment_members("at_risk").await.unwrap(), ["grace"]);
    // A second sweep sees no transition and enrolls nobody again.
    assert_eq!(
        trellis::scheduler::refresh_segments(&app.service.scheduler, app.now())
            .await
            .unwrap(),
        0
    );
    let (_, view) = app.call("GET", "/v1/customers/grace", None).await;
    let winbacks: Vec<_> = view["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["workflow_id"] == "winback")
        .cloned()
        .collect();
    assert_eq!(winbacks.len(), 1);
    // 14:00 in Berlin is past 10:00, so the offer goes on Thursday at 10:00 CEST.
    assert_eq!(winbacks[0]["next_wake"], "2026-07-02T08:00:00Z");
    app.clock.set(at("2026-07-02T08:00:00Z"));
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/grace", None).await;
    let offers: Vec<_> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["template"] == "winback_offer")
        .cloned()
        .collect();
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(
        (offers[0]["status"].clone(), offers[0]["sent_at"].clone()),
        (json!("sent"), json!("2026-07-02T08:00:00Z"))
    );

    // An order takes her out of at_risk at once.
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "grace", "name": "order_completed"})),
    )
    .await;
    app.settle().await;
    assert!(store.segment_members("at_risk").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_profile_change_is_evaluated_against_segments_without_waiting_for_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("segments.yaml"),
        "segments:\n  pros:\n    when: { attribute: { name: plan, eq: pro } }\n",
    )
    .unwrap();
    std::fs::write(
        workflows.join("upgrade.yaml"),
        "id: upgrade\nname: Upgrade thanks\ntrigger: { segment_entered: pros }\nentry: every_time\nstart: thanks\nnodes:\n  thanks: { send_email: { template: tips, next: done } }\n  done: exit\n",
    )
    .unwrap();
    std::fs::write(
        workflows.join("downgrade.yaml"),
        "id: downgrade\nname: Sorry to see you go\ntrigger: { segment_exited: pros }\nentry: every_time\nstart: bye\nnodes:\n  bye: { send_email: { template: welcome, next: done } }\n  done: exit\n",
    )
    .unwrap();
    let app = crate::app::spawn_app_in(dir, &["--workflows", workflows.to_str().unwrap()]).await;
    app.call("PUT", "/v1/customers/ada", Some(json!({"email": "ada@example.com", "consent": {"email": true}, "attributes": {"plan": "free"}}))).await;
    app.settle().await;
    assert!(app.outbox_files().is_empty());
    app.call(
        "PATCH",
        "/v1/customers/ada",
        Some(json!({"attributes": {"plan": "pro"}})),
    )
    .await;
    app.settle().await;
    app.advance(SignedDuration::from_mins(1));
    app.call(
        "PATCH",
        "/v1/customers/ada",
        Some(json!({"attributes": {"plan": "pro", "seats": 3}})),
    )
    .await;
    app.settle().await;
    assert_eq!(
        app.outbox_files().len(),
        1,
        "entered once, not again on an unrelated change"
    );
    app.call(
        "PATCH",
        "/v1/customers/ada",
        Some(json!({"attributes": {"plan": "free"}})),
    )
    .await;
    app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/ada", None).await;
    let mut flows: Vec<&str> = view["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["workflow_id"].as_str().unwrap())
        .collect();
    flows.sort();
    assert_eq!(flows, ["downgrade", "upgrade"]);
    assert!(
        view["recent_events"].as_array().unwrap().is_empty(),
        "internal events stay internal"
    );
}
