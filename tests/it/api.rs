//! The HTTP API refuses bad input with a 4xx, a stable code and a reason, and writes nothing.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use trellis::api::routes::{Access, Verb, routes};

use crate::app::{TOKEN, TestApp, build_error, spawn_app};

/// A request with any headers; the status, the headers and the body (JSON, or a JSON
/// string when it is not JSON).
async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .router
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

/// Asserts a JSON error body with `code` and a detail containing `detail`.
fn assert_error(
    (status, headers, body): &(StatusCode, HeaderMap, Value),
    want: u16,
    code: &str,
    detail: &str,
) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{body}"
    );
    assert_eq!(body["error"], code, "{body}");
    let text = body["detail"].as_str().unwrap_or_default();
    assert!(text.contains(detail), "{detail:?} not in {body}");
    assert_eq!(
        body.as_object().map(serde_json::Map::len),
        Some(2),
        "{body}"
    );
}

/// The document the server serves.
async fn document(app: &TestApp) -> Value {
    let (status, _, doc) = send(app, "GET", "/v1/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    doc
}

/// Follows a local `$ref` (`#/components/...`) until the value is not one.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("a local $ref");
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} is not in the document"));
    }
    value
}

/// A path with every `{param}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_of_the_router_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app(&[]).await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    let served = routes();
    assert!(
        served.len() >= 18,
        "the route table looks truncated: {served:?}"
    );
    let mut missing = Vec::new();
    for route in &served {
        if paths
            .get(route.path)
            .and_then(|p| p.get(route.verb.as_str()))
            .is_none()
        {
            missing.push(format!("{} {}", route.verb.as_str(), route.path));
        }
    }
    assert!(missing.is_empty(), "not in openapi.json: {missing:?}");
    const VERBS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for (path, item) in paths {
        for verb in item.as_object().unwrap().keys() {
            if VERBS.contains(&verb.as_str()) {
                assert!(
                    served
                        .iter()
                        .any(|r| r.path == path && r.verb.as_str() == verb),
                    "{verb} {path} is documented but not served"
                );
            }
        }
    }
    // The table is what the router serves: each route reaches a handler, not the fallbacks.
    for route in &served {
        let method = route.verb.as_str().to_ascii_uppercase();
        let auth = format!("Bearer {TOKEN}");
        let (status, _, body) = send(
            &app,
            &method,
            &concrete(route.path),
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && body["error"] != "not_found",
            "{method} {} did not reach its handler: {status} {body}",
            route.path
        );
        // Routes behind the token refuse a request without it.
        if route.access == Access::Token {
            let (status, _, _) = send(&app, &method, &concrete(route.path), &[], "").await;
            assert_eq!(status, 401, "{method} {} without a token", route.path);
        }
    }
    assert!(
        served
            .iter()
            .any(|r| r.verb == Verb::Post && r.path == "/kannel/dlr")
    );
}

#[tokio::test]
async fn every_documented_operation_lists_its_errors_with_the_error_schema_and_503_with_retry_after()
 {
    let app = spawn_app(&[]).await;
    let doc = document(&app).await;
    // Routes that never touch the database.
    let storeless = [("get", "/v1/openapi.json"), ("get", "/unsubscribe/{token}")];
    for route in routes() {
        let verb = route.verb.as_str();
        let operation = &doc["paths"][route.path][verb];
        let responses = operation["responses"].as_object().unwrap();
        let name = format!("{verb} {}", route.path);
        for (status, response) in responses {
            assert!(
                status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()),
                "{name}: status {status} is not exact"
            );
            let response = resolve(&doc, response);
            if status.starts_with('4') || status.starts_with('5') {
                let schema = resolve(&doc, &response["content"]["application/json"]["schema"]);
                let schema = schema
                    .get("allOf")
                    .and_then(|all| all.get(0))
                    .map_or(schema, |first| resolve(&doc, first));
                assert_eq!(
                    schema, &doc["components"]["schemas"]["Error"],
                    "{name}: {status} does not use the Error schema"
                );
            }
        }
        let status = |s: &str| responses.contains_key(s);
        if route.access == Access::Token {
            assert!(status("401"), "{name}: 401");
        }
        if !storeless.contains(&(verb, route.path)) {
            assert!(status("500") && status("503"), "{name}: 500 and 503");
            let unavailable = resolve(&doc, &responses["503"]);
            assert_eq!(
                unavailable["headers"]["Retry-After"]["required"], true,
                "{name}: 503 without Retry-After"
            );
        }
        if route.path.contains('{') {
            assert!(
                status("400"),
                "{name}: 400 for a path segment that is not UTF-8"
            );
        }
    }
    let statuses = |verb: &str, path: &str| -> Vec<String> {
        doc["paths"][path][verb]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let customer = "/v1/customers/{id}";
    for (verb, path, want) in [
        (
            "put",
            customer,
            &["200", "201", "400", "401", "404", "413", "422"][..],
        ),
        (
            "post",
            "/v1/events",
            &["200", "202", "400", "401", "413", "422"],
        ),
        (
            "post",
            "/v1/events/batch",
            &["202", "400", "401", "413", "422"],
        ),
        ("delete", customer, &["204", "401", "404", "422"]),
        ("get", "/kannel/dlr", &["200", "400", "401", "404"]),
        ("post", "/kannel/dlr", &["200", "400", "401", "404"]),
        ("post", "/sms/inbound", &["200", "401", "413", "422"]),
    ] {
        let got = statuses(verb, path);
        for status in want {
            assert!(
                got.iter().any(|s| s == status),
                "{verb} {path}: {status} missing from {got:?}"
            );
        }
    }
    // Every stable code the server answers with is in the Error schema's list.
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"].clone();
    for code in [
        "malformed_json",
        "invalid_path",
        "invalid_query",
        "invalid_field",
        "body_too_large",
        "unauthorized",
        "unknown_customer",
        "unknown_workflow",
        "unknown_message",
        "not_found",
        "method_not_allowed",
        "unavailable",
        "internal",
    ] {
        assert!(codes.as_array().unwrap().contains(&json!(code)), "{code}");
    }
}

#[tokio::test]
async fn bad_paths_queries_unknown_routes_and_wrong_methods_get_json_errors() {
    let app = spawn_app(&[]).await;
    let auth = format!("Bearer {TOKEN}");
    let token = [("authorization", auth.as_str())];
    assert_error(
        &send(&app, "GET", "/v1/customers/%FF", &token, "").await,
        400,
        "invalid_path",
        "UTF-8",
    );
    assert_error(
        &send(&app, "PUT", "/v1/customers/a%C3", &token, "{}").await,
        400,
        "invalid_path",
        "UTF-8",
    );
    assert_error(
        &send(&app, "POST", "/v1/workflows/%FF/pause", &token, "").await,
        400,
        "invalid_path",
        "UTF-8",
    );
    assert_error(
        &send(&app, "GET", "/unsubscribe/%FF%FE", &[], "").await,
        400,
        "invalid_path",
        "UTF-8",
    );
    assert_error(
        &send(&app, "GET", "/kannel/dlr?key=a", &[], "").await,
        400,
        "invalid_query",
        "sig",
    );
    assert_error(
        &send(&app, "POST", "/kannel/dlr?key=a&sig=b&status=high", &[], "").await,
        400,
        "invalid_query",
        "status",
    );
    let answer = send(
        &app,
        "GET",
        "/kannel/dlr?key=abc&sig=forged&status=1",
        &[],
        "",
    )
    .await;
    assert_error(&answer, 401, "unauthorized", "signature");
    assert!(!answer.1.contains_key("www-authenticate"));
    let sig = trellis::unsubscribe::sign_value(&app.service.api.unsubscribe_key, "dlr", "abc");
    assert_error(
        &send(
            &app,
            "GET",
            &format!("/kannel/dlr?key=abc&sig={sig}&status=1"),
            &[],
            "",
        )
        .await,
        404,
        "unknown_message",
        "\"abc\"",
    );
    for path in [
        "/nope",
        "/v1",
        "/v1/customers",
        "/v1/customers/",
        "/v1/events/batch/x",
    ] {
        assert_error(
            &send(&app, "GET", path, &token, "").await,
            404,
            "not_found",
            path,
        );
    }
    let answer = send(&app, "DELETE", "/v1/workflows", &token, "").await;
    assert_error(&answer, 405, "method_not_allowed", "DELETE");
    assert_eq!(answer.1["allow"], "GET,HEAD");
    let answer = send(&app, "PUT", "/healthz", &[], "").await;
    assert_error(&answer, 405, "method_not_allowed", "/healthz");
    assert_eq!(answer.1["allow"], "GET,HEAD");
    let answer = send(&app, "POST", "/v1/customers/ada", &token, "{}").await;
    assert_error(&answer, 405, "method_not_allowed", "POST");
    assert_eq!(answer.1["allow"], "GET,HEAD,PUT,PATCH,DELETE");
    // Behind the token, a wrong method is not told apart from a right one without it.
    assert_error(
        &send(&app, "POST", "/v1/customers/ada", &[], "{}").await,
        401,
        "unauthorized",
        "bearer token",
    );
}

#[tokio::test]
async fn customer_ids_dot_and_dot_dot_are_refused_with_a_reason() {
    let app = spawn_app(&[]).await;
    let auth = format!("Bearer {TOKEN}");
    let token = [("authorization", auth.as_str())];
    for id in [".", ".."] {
        assert_error(
            &send(&app, "PUT", &format!("/v1/customers/{id}"), &token, "{}").await,
            422,
            "invalid_field",
            "path steps",
        );
        let event = json!({"customer_id": id, "name": "signup"}).to_string();
        assert_error(
            &send(&app, "POST", "/v1/events", &token, &event).await,
            422,
            "invalid_field",
            "path steps",
        );
    }
    let (status, _, _) = send(&app, "PUT", "/v1/customers/a.b", &token, "{}").await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn the_inbound_sms_webhook_checks_the_basic_user_name_as_well_as_the_password() {
    let app = spawn_app(&[]).await;
    let form = "From=%2B14155550101&Body=HELP";
    let basic = |credentials: &str| {
        use base64_shim::encode;
        format!("Basic {}", encode(credentials.as_bytes()))
    };
    let form_type = ("content-type", "application/x-www-form-urlencoded");
    for wrong in [
        format!("mallory:{TOKEN}"),
        format!("Twilio:{TOKEN}"),
        format!(":{TOKEN}"),
        "twilio:wrong".to_owned(),
        format!("{TOKEN}:twilio"),
    ] {
        let auth = basic(&wrong);
        let answer = send(
            &app,
            "POST",
            "/sms/inbound",
            &[("authorization", &auth), form_type],
            form,
        )
        .await;
        assert_error(&answer, 401, "unauthorized", "Basic");
        assert_eq!(
            answer.1["www-authenticate"], "Basic realm=\"trellis\"",
            "{wrong}"
        );
    }
    let auth = basic(&format!("twilio:{TOKEN}"));
    let (status, headers, body) = send(
        &app,
        "POST",
        "/sms/inbound",
        &[("authorization", &auth), form_type],
        form,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/xml");
}

#[tokio::test]
async fn the_served_document_is_the_one_in_the_repository_and_healthz_answers() {
    let app = spawn_app(&[]).await;
    let doc = document(&app).await;
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::helpers::root().join("src/api/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc, file);
    let (status, _, health) = send(&app, "GET", "/healthz", &[], "").await;
    assert_eq!((status.as_u16(), health), (200, json!({"status": "ok"})));
}

/// Standard base64, for Basic credentials.
mod base64_shim {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(raw: &[u8]) -> String {
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
        out
    }

    #[test]
    fn encodes_as_rfc_4648() {
        assert_eq!(encode(b"twilio:secret"), "dHdpbGlvOnNlY3JldA==");
        assert_eq!(encode(b"ab"), "YWI=");
    }
}

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
    // An id stored by an earlier batch is a duplicate too; events without an id never are.
    let again = json!([
        {"id": "e2", "customer_id": "b", "name": "signup"},
        {"customer_id": "b", "name": "page_view"},
        {"customer_id": "b", "name": "page_view"}
    ]);
    let (status, body) = app.call("POST", "/v1/events/batch", Some(again)).await;
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
    let stored = app.count_rows("events").await;
    assert_eq!(stored, 20);
}
