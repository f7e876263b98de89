//! The HTTP API refuses bad input with a 4xx, a stable code and a reason, and writes nothing.

use serde_json::json;

use crate::app::{TOKEN, build_error, spawn_app};

#[tokio::test]
async fn bad_requests_get_a_stable_code_and_a_reason_naming_the_problem() {
    let app = spawn_app(&["--max-body-bytes", "2000"]).await;
    let cases = [
        (
            "POST",
            "/v1/events",
            Some(TOKEN),
            "{\"customer_id\": ",
            400,
            "malformed_json",
            "EOF",
        ),
        (
            "POST",
            "/v1/events",
            Some(TOKEN),
            "{\"customer_id\": \"ada\"}",
            422,
            "invalid_field",
            "missing field `name`",
        ),
        (
            "POST",
            "/v1/events",
            Some(TOKEN),
            "{\"customer_id\": \"ada\", \"name\": \"x\", \"colour\": 1}",
            422,
            "invalid_field",
            "unknown field `colour`",
        ),
        (
            "POST",
            "/v1/events",
            Some(TOKEN),
            "{\"customer_id\": \"a b\", \"name\": \"x\"}",
            422,
            "invalid_field",
            "customer id",
        ),
        (
            "POST",
            "/v1/events",
            Some(TOKEN),
            "{\"customer_id\": \"ada\", \"name\": \"$segment_entered\"}",
            422,
            "invalid_field",
            "reserved",
        ),
        (
            "POST",
            "/v1/events",
            Some(TOKEN),
            "{\"customer_id\": \"ada\", \"name\": \"x\", \"timestamp\": \"yesterday\"}",
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "POST",
            "/v1/events",
            Some("wrong"),
            "{}",
            401,
            "unauthorized",
            "bearer token",
        ),
        (
            "POST",
            "/v1/events",
            None,
            "{}",
            401,
            "unauthorized",
            "bearer token",
        ),
        (
            "GET",
            "/v1/workflows/nope",
            Some(TOKEN),
            "",
            404,
            "unknown_workflow",
            "\"nope\"",
        ),
        (
            "POST",
            "/v1/workflows/nope/pause",
            Some(TOKEN),
            "",
            404,
            "unknown_workflow",
            "\"nope\"",
        ),
        (
            "GET",
            "/v1/customers/nobody",
            Some(TOKEN),
            "",
            404,
            "unknown_customer",
            "\"nobody\"",
        ),
        (
            "PUT",
            "/v1/customers/ada",
            Some(TOKEN),
            "{\"email\": \"not-an-address\"}",
            422,
            "invalid_field",
            "email",
        ),
        (
            "PUT",
            "/v1/customers/ada",
            Some(TOKEN),
            "{\"phone\": \"555 0101\"}",
            422,
            "invalid_field",
            "country code",
        ),
        (
            "PUT",
            "/v1/customers/ada",
            Some(TOKEN),
            "{\"timezone\": \"Mars/Olympus\"}",
            422,
            "invalid_field",
            "unknown time zone",
        ),
        (
            "PUT",
            "/v1/customers/ada",
            Some(TOKEN),
            "{\"id\": \"bob\"}",
            422,
            "invalid_field",
            "differs",
        ),
    ];
    for (method, path, token, body, status, code, detail) in cases {
        let (got, json) = app
            .raw(method, path, token, "application/json", body.to_owned())
            .await;
        assert_eq!(got.as_u16(), status, "{method} {path} {body}: {json}");
        assert_eq!(json["error"], code, "{method} {path} {body}: {json}");
        assert!(
            json["detail"].as_str().unwrap().contains(detail),
            "{method} {path} {body}: {json}"
        );
    }
    let huge = format!(
        "{{\"customer_id\": \"ada\", \"name\": \"x\", \"properties\": {{\"pad\": \"{}\"}}}}",
        "x".repeat(5000)
    );
    let (got, json) = app
        .raw("POST", "/v1/events", Some(TOKEN), "application/json", huge)
        .await;
    assert_eq!(
        (got.as_u16(), json["error"].clone()),
        (413, json!("body_too_large"))
    );
    // Nothing was written by any refused request.
    assert_eq!(app.call("GET", "/v1/customers/ada", None).await.0, 404);
}

#[tokio::test]
async fn a_batch_with_one_bad_event_stores_none_and_names_the_bad_one() {
    let app = spawn_app(&[]).await;
    let batch = "{\"customer_id\": \"a\", \"name\": \"signup\"}\n{\"customer_id\": \"b\"}\n";
    let (status, body) = app
        .raw(
            "POST",
            "/v1/events/batch",
            Some(TOKEN),
            "application/x-ndjson",
            batch.into(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("event 1: missing field `name`"),
        "{body}"
    );
    assert_eq!(
        app.call("GET", "/v1/customers/a", None).await.0,
        404,
        "nothing half-written"
    );

    let good = json!([
        {"id": "e1", "customer_id": "a", "name": "signup"},
        {"id": "e1", "customer_id": "a", "name": "signup"},
        {"id": "e2", "customer_id": "b", "name": "signup"}
    ]);
    let (status, body) = app.call("POST", "/v1/events/batch", Some(good)).await;
    assert_eq!(
        (status.as_u16(), body),
        (202, json!({"accepted": 2, "duplicates": 1}))
    );
    let too_many: Vec<_> = (0..1001)
        .map(|i| json!({"customer_id": "a", "name": format!("e{i}")}))
        .collect();
    let (status, body) = app
        .call("POST", "/v1/events/batch", Some(json!(too_many)))
        .await;
    assert!(
        status == 422 && body["detail"].as_str().unwrap().contains("at most 1000"),
        "{body}"
    );
}

#[tokio::test]
async fn an_empty_blank_or_short_token_is_no_token() {
    for blank in ["", "   ", "\t"] {
        let err = build_error(&["--listen", "0.0.0.0:8080", "--api-token", blank])
            .await
            .unwrap_or_else(|| panic!("a blank token {blank:?} on 0.0.0.0 must be refused"));
        assert!(err.contains("empty"), "{err}");
        // Blank plus the explicit flag on loopback is serving without auth, as asked.
        let on_loopback = build_error(&["--api-token", blank, "--insecure-no-auth"]).await;
        assert_eq!(on_loopback, None);
        let off_loopback = build_error(&[
            "--listen",
            "0.0.0.0:8080",
            "--api-token",
            blank,
            "--insecure-no-auth",
        ])
        .await
        .unwrap();
        assert!(
            off_loopback.contains("only on a loopback address"),
            "{off_loopback}"
        );
    }
    let err = build_error(&["--api-token", "short-token"]).await.unwrap();
    assert!(err.contains("at least 16 characters"), "{err}");
    assert!(
        !err.contains("short-token"),
        "the token is never printed: {err}"
    );
    assert_eq!(
        build_error(&["--api-token", "sixteen-chars-ok"]).await,
        None
    );
}

#[tokio::test]
async fn serving_without_a_token_is_refused_unless_asked_for_on_loopback() {
    let no_token = [
        "trellis",
        "--database-url",
        "sqlite::memory:",
        "--listen",
        "0.0.0.0:8080",
        "--insecure-no-auth",
    ];
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        config: trellis::config::ServeConfig,
    }
    use clap::Parser;
    let clock = std::sync::Arc::new(trellis::clock::ManualClock::new(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let config = Flags::try_parse_from(no_token).unwrap().config;
    let err = trellis::cli::serve::build(&config, clock.clone())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("only on a loopback address"),
        "{err}"
    );
    let config = Flags::try_parse_from(["trellis", "--database-url", "sqlite::memory:"])
        .unwrap()
        .config;
    let err = trellis::cli::serve::build(&config, clock)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("TRELLIS_API_TOKEN"), "{err}");
}

#[tokio::test]
async fn a_webhook_to_loopback_or_the_metadata_address_is_refused_before_any_connection() {
    // A listener on loopback counts connections: it must see none.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let channel = trellis::channels::webhook::WebhookChannel::new(
        Default::default(),
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://localhost:{port}/hook"),
    ] {
        let err = channel
            .call("k", "POST", &url, &[], Some(&json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, trellis::channels::DeliveryError::Permanent { reason } if reason.contains("refused")),
            "{url}: {err:?}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );

    let allowed = trellis::channels::webhook::WebhookChannel::new(
        trellis::channels::webhook::Allowlist::new(&["127.0.0.1".into()]),
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    // Allowlisted: the call connects (and fails on the non-HTTP listener, transiently).
    let result = allowed
        .call(
            "k",
            "POST",
            &format!("http://127.0.0.1:{port}/hook"),
            &[],
            None,
        )
        .await;
    assert!(
        matches!(
            result,
            Err(trellis::channels::DeliveryError::Transient { .. })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn deleting_a_customer_erases_the_profile_and_cancels_pending_messages_but_keeps_counts() {
    let app = spawn_app(&["--smtp-url", "smtp://127.0.0.1:9"]).await; // nothing listens: messages stay pending
    app.call(
        "PUT",
        "/v1/customers/ada",
        Some(json!({"email": "ada@example.com", "consent": {"email": true}})),
    )
    .await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "ada", "name": "signup", "properties": {"secret": "x"}})),
    )
    .await;
    app.settle().await;
    assert_eq!(app.call("DELETE", "/v1/customers/ada", None).await.0, 204);
    assert_eq!(app.call("GET", "/v1/customers/ada", None).await.0, 404);
    assert_eq!(app.call("DELETE", "/v1/customers/ada", None).await.0, 404);
    let counts = app.service.api.store.message_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![("email".to_owned(), "cancelled".to_owned(), 1)]
    );
    let (_, workflows) = app.call("GET", "/v1/workflows", None).await;
    assert!(
        workflows
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["active_enrollments"] == 0)
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app(&[]).await;
    let (status, doc) = app
        .raw("GET", "/v1/openapi.json", None, "", String::new())
        .await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/v1/events", "post"),
        ("/v1/events/batch", "post"),
        ("/v1/customers/{id}", "put"),
        ("/v1/customers/{id}", "patch"),
        ("/v1/customers/{id}", "get"),
        ("/v1/customers/{id}", "delete"),
        ("/v1/workflows", "get"),
        ("/v1/workflows/{id}", "get"),
        ("/v1/workflows/{id}/pause", "post"),
        ("/v1/workflows/{id}/resume", "post"),
        ("/v1/bounces", "post"),
        ("/sms/inbound", "post"),
        ("/kannel/dlr", "get"),
        ("/unsubscribe/{token}", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    let (status, health) = app.raw("GET", "/healthz", None, "", String::new()).await;
    assert_eq!((status.as_u16(), health), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn events_posted_one_by_one_at_once_are_each_stored_once_and_answered_alone() {
    let app = std::sync::Arc::new(spawn_app(&[]).await);
    let mut posts = tokio::task::JoinSet::new();
    // Twenty ids, each posted twice at the same time: one of each pair is new, one a resend.
    for i in 0..40 {
        let app = app.clone();
        posts.spawn(async move {
            let event = json!({"id": format!("evt-{}", i % 20), "customer_id": format!("c{}", i % 20), "name": "page_viewed"});
            app.call("POST", "/v1/events", Some(event)).await
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = posts.join_next().await {
        let (status, body) = answer.unwrap();
        answers.push((status.as_u16(), body["status"].as_str().unwrap().to_owned()));
    }
    answers.sort();
    let accepted = answers
        .iter()
        .filter(|a| a.0 == 202 && a.1 == "accepted")
        .count();
    let duplicates = answers
        .iter()
        .filter(|a| a.0 == 200 && a.1 == "duplicate")
        .count();
    assert_eq!((accepted, duplicates), (20, 20), "{answers:?}");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(app.service.api.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 20);
}
