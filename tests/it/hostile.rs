//! Trellis under attack: what an attacker would try against the API, the signed links, the
//! webhook destination policy, the templates and the files Trellis loads. Each test runs
//! against the in-process app or the real binary with real local servers, checks that
//! nothing was written or leaked, and prints one `RELIABILITY <name>: <figure>` line for the
//! soak script. Sizes grow with `TRELLIS_SOAK=1`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tower::ServiceExt;
use trellis::api::routes::{Access, Route, Verb, routes};
use trellis::channels::DeliveryError;
use trellis::channels::webhook::{Allowlist, WebhookChannel};
use trellis::model::{Channel, CustomerId};
use trellis::unsubscribe;

use crate::app::{SmtpSink, TOKEN, TestApp, TwilioServer, build_error, spawn_app_in};
use crate::helpers::root;

/// Whether the larger soak sizes apply.
fn soak() -> bool {
    std::env::var("TRELLIS_SOAK").is_ok_and(|v| v == "1")
}

/// `ci` normally, `soak` under `TRELLIS_SOAK=1`.
fn size(ci: usize, soak_size: usize) -> usize {
    if soak() { soak_size } else { ci }
}

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every row of every table, as text: equal snapshots mean nothing was written.
async fn snapshot(app: &TestApp) -> Vec<String> {
    match app.service.api.store.postgres_pool() {
        Some(pool) => postgres_snapshot_of(pool).await,
        None => {
            snapshot_of(
                app.service
                    .api
                    .store
                    .sqlite_pool()
                    .expect("SQLite or PostgreSQL"),
            )
            .await
        }
    }
}

/// [`snapshot`] of a PostgreSQL schema (the first of the connections' `search_path`): each
/// row as its text form.
async fn postgres_snapshot_of(pool: &sqlx::PgPool) -> Vec<String> {
    use sqlx::Row;
    let tables: Vec<String> = sqlx::query(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(tables.iter().any(|t| t == "messages"), "{tables:?}");
    let mut rows = Vec::new();
    for table in tables {
        let query = format!("SELECT '{table}|' || t::text FROM \"{table}\" t ORDER BY 1");
        for r in sqlx::query(&query).fetch_all(pool).await.unwrap() {
            rows.push(r.get::<String, _>(0));
        }
    }
    rows
}

/// [`snapshot`] of any SQLite database.
async fn snapshot_of(pool: &sqlx::SqlitePool) -> Vec<String> {
    use sqlx::Row;
    let tables: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut rows = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let row = columns
            .iter()
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let query = format!("SELECT '{table}|' || {row} FROM \"{table}\" ORDER BY 1");
        for r in sqlx::query(&query).fetch_all(pool).await.unwrap() {
            rows.push(r.get::<String, _>(0));
        }
    }
    rows
}

/// One request through the router: status, headers and the raw body.
async fn send(app: &TestApp, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

/// Whether `body` is exactly `{"error": <string>, "detail": <string>}`.
fn is_problem_body(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            map.len() == 2
                && map.get("error").is_some_and(Value::is_string)
                && map.get("detail").is_some_and(Value::is_string)
        }
        _ => false,
    }
}

/// A victim customer with distinctive data no refusal may show.
const VICTIM_EMAIL: &str = "victim-canary@example.com";
const VICTIM_PHONE: &str = "+14155550123";
const VICTIM_SECRET: &str = "SSN-778-99-0000";

/// A fresh app with `extra` flags and the victim customer in it.
async fn app_with_victim(extra: &[&str]) -> TestApp {
    let app = spawn_app_in(tempfile::tempdir().unwrap(), extra).await;
    let (status, _) = app
        .call(
            "PUT",
            "/v1/customers/victim",
            Some(json!({
                "email": VICTIM_EMAIL,
                "phone": VICTIM_PHONE,
                "attributes": {"ssn": VICTIM_SECRET, "first_name": "Vic"},
                "consent": {"email": true, "sms": true}
            })),
        )
        .await;
    assert_eq!(status, 201);
    app
}

/// A concrete path and a body that would write, for a route of the table.
fn concrete(route: &Route) -> (String, Option<Value>) {
    let path = route
        .path
        .replace("/v1/customers/{id}", "/v1/customers/victim")
        .replace("/v1/workflows/{id}", "/v1/workflows/welcome_series")
        .replace("{token}", "x");
    let body = match (route.verb, route.path) {
        (Verb::Put, _) => Some(json!({"email": "attacker@evil.example"})),
        (Verb::Patch, _) => Some(json!({"attributes": {"owned": true}})),
        (Verb::Post, "/v1/events") => Some(json!({"customer_id": "victim", "name": "signup"})),
        (Verb::Post, "/v1/events/batch") => {
            Some(json!([{"customer_id": "victim", "name": "signup"}]))
        }
        (Verb::Post, "/v1/bounces") => Some(json!({"email": VICTIM_EMAIL, "type": "hard"})),
        _ => None,
    };
    (path, body)
}

/// The HTTP method of a verb.
fn method(verb: Verb) -> &'static str {
    match verb {
        Verb::Get => "GET",
        Verb::Post => "POST",
        Verb::Put => "PUT",
        Verb::Patch => "PATCH",
        Verb::Delete => "DELETE",
    }
}

/// Standard base64 with padding, for Basic credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
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

/// Ways of presenting (or almost presenting) the token that must all be refused:
/// `(label, extra headers, query string)`.
/// A way of giving credentials: `(label, extra headers, query string)`.
type Credentials = (&'static str, Vec<(&'static str, String)>, String);

/// Every way of (almost) giving the token that must be refused.
fn wrong_credentials() -> Vec<Credentials> {
    let q = |name: &str| format!("?{name}={TOKEN}");
    let h = |value: String| vec![("authorization", value)];
    let upper = TOKEN.to_uppercase();
    vec![
        ("no token", vec![], String::new()),
        (
            "wrong token",
            h("Bearer wrong-token-0123456789abcdef".into()),
            String::new(),
        ),
        ("empty bearer", h("Bearer ".into()), String::new()),
        ("bare scheme", h("Bearer".into()), String::new()),
        (
            "prefix of the token",
            h(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            String::new(),
        ),
        (
            "token plus a character",
            h(format!("Bearer {TOKEN}x")),
            String::new(),
        ),
        (
            "token upper-cased",
            h(format!("Bearer {upper}")),
            String::new(),
        ),
        (
            "scheme lower-cased",
            h(format!("bearer {TOKEN}")),
            String::new(),
        ),
        (
            "scheme upper-cased",
            h(format!("BEARER {TOKEN}")),
            String::new(),
        ),
        ("two spaces", h(format!("Bearer  {TOKEN}")), String::new()),
        ("a tab", h(format!("Bearer\t{TOKEN}")), String::new()),
        ("no space", h(format!("Bearer{TOKEN}")), String::new()),
        ("quoted", h(format!("Bearer \"{TOKEN}\"")), String::new()),
        (
            "base64 of the token",
            h(format!("Bearer {}", base64(TOKEN.as_bytes()))),
            String::new(),
        ),
        ("token scheme", h(format!("Token {TOKEN}")), String::new()),
        ("bare token", h(TOKEN.into()), String::new()),
        (
            "basic user:token",
            h(format!(
                "Basic {}",
                base64(format!("twilio:{TOKEN}").as_bytes())
            )),
            String::new(),
        ),
        (
            "basic token:",
            h(format!("Basic {}", base64(format!("{TOKEN}:").as_bytes()))),
            String::new(),
        ),
        (
            "two bearers in one",
            h(format!("Bearer wrong, Bearer {TOKEN}")),
            String::new(),
        ),
        (
            "wrong then right header",
            vec![
                ("authorization", "Bearer wrong".into()),
                ("authorization", format!("Bearer {TOKEN}")),
            ],
            String::new(),
        ),
        (
            "right then wrong header",
            vec![
                ("authorization", format!("Bearer {TOKEN}")),
                ("authorization", "Bearer wrong".into()),
            ],
            String::new(),
        ),
        ("query token", vec![], q("token")),
        ("query access_token", vec![], q("access_token")),
        ("query api_token", vec![], q("api_token")),
        ("query bearer", vec![], q("bearer")),
        (
            "cookie token",
            vec![("cookie", format!("token={TOKEN}"))],
            String::new(),
        ),
        (
            "cookie access_token",
            vec![("cookie", format!("access_token={TOKEN}"))],
            String::new(),
        ),
        (
            "cookie authorization",
            vec![("cookie", format!("Authorization=Bearer {TOKEN}"))],
            String::new(),
        ),
        (
            "x-api-key",
            vec![("x-api-key", TOKEN.into())],
            String::new(),
        ),
        (
            "x-auth-token",
            vec![("x-auth-token", TOKEN.into())],
            String::new(),
        ),
        (
            "proxy-authorization",
            vec![("proxy-authorization", format!("Bearer {TOKEN}"))],
            String::new(),
        ),
    ]
}

#[tokio::test]
async fn the_token_and_every_route_own_credentials_refuse_every_wrong_way_of_giving_them() {
    let app = app_with_victim(&[]).await;
    let before = snapshot(&app).await;
    let token_routes: Vec<Route> = routes()
        .into_iter()
        .filter(|r| r.access == Access::Token)
        .collect();
    assert!(token_routes.len() >= 11, "{token_routes:?}");
    let mut refused = 0;
    let mut leaks = Vec::new();
    let mut let_in = Vec::new();
    let check = |label: String,
                 status: StatusCode,
                 body: &[u8],
                 refused: &mut usize,
                 leaks: &mut Vec<String>,
                 let_in: &mut Vec<String>| {
        let text = String::from_utf8_lossy(body);
        if status == StatusCode::UNAUTHORIZED && is_problem_body(body) {
            *refused += 1;
        } else {
            let_in.push(format!("{label}: {status} {text}"));
        }
        for secret in [VICTIM_EMAIL, VICTIM_PHONE, VICTIM_SECRET, "Vic", TOKEN] {
            if text.contains(secret) {
                leaks.push(format!("{label}: {secret} in {text}"));
            }
        }
    };
    for route in &token_routes {
        let (path, body) = concrete(route);
        for (label, headers, query) in wrong_credentials() {
            let mut request = Request::builder()
                .method(method(route.verb))
                .uri(format!("{path}{query}"))
                .header("content-type", "application/json");
            for (name, value) in &headers {
                request = request.header(*name, value);
            }
            let body = body.as_ref().map(Value::to_string).unwrap_or_default();
            let (status, headers, bytes) =
                send(&app, request.body(Body::from(body)).unwrap()).await;
            let label = format!("{} {path} with {label}", method(route.verb));
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(headers["www-authenticate"], "Bearer", "{label}");
            }
            check(label, status, &bytes, &mut refused, &mut leaks, &mut let_in);
        }
    }

    // Other methods on the same paths, without the token: HEAD (GET's twin), OPTIONS, TRACE
    // and an unknown one say 401 too, not which methods exist.
    for route in &token_routes {
        let (path, _) = concrete(route);
        let methods: &[&str] = if route.verb == Verb::Get {
            &["HEAD", "OPTIONS", "TRACE", "BREW"]
        } else {
            &["OPTIONS", "TRACE", "BREW"]
        };
        for m in methods {
            let request = Request::builder()
                .method(*m)
                .uri(&path)
                .body(Body::empty())
                .unwrap();
            let (status, _, bytes) = send(&app, request).await;
            let label = format!("{m} {path} without a token");
            if *m == "HEAD" {
                if status == StatusCode::UNAUTHORIZED {
                    refused += 1;
                } else {
                    let_in.push(format!("{label}: {status}"));
                }
            } else {
                check(label, status, &bytes, &mut refused, &mut leaks, &mut let_in);
            }
        }
    }

    // The inbound SMS webhook takes Basic credentials: user `twilio`, the token as password.
    let stop = format!("From={}&Body=STOP", VICTIM_PHONE.replace('+', "%2B"));
    let basic = |text: String| Some(format!("Basic {}", base64(text.as_bytes())));
    let forged_basic = [
        None,
        basic("twilio:wrong".into()),
        basic("twilio:".into()),
        basic(format!("Twilio:{TOKEN}")),
        basic(format!("other:{TOKEN}")),
        basic(format!("twilio:{}", TOKEN.to_uppercase())),
        basic(format!("twilio:{TOKEN} ")),
        basic(format!("twilio {TOKEN}")),
        basic(TOKEN.into()),
        Some(format!(
            "basic {}",
            base64(format!("twilio:{TOKEN}").as_bytes())
        )),
        Some(format!("Bearer {TOKEN}")),
        Some("Basic !!!not-base64!!!".into()),
        Some("Basic ".into()),
    ];
    for authorization in forged_basic {
        let label = format!("POST /sms/inbound with {authorization:?}");
        let (status, value) = app
            .request(
                "POST",
                "/sms/inbound",
                authorization,
                "application/x-www-form-urlencoded",
                stop.clone(),
            )
            .await;
        let bytes = value.to_string().into_bytes();
        check(label, status, &bytes, &mut refused, &mut leaks, &mut let_in);
    }
    for query in [format!("?token={TOKEN}"), format!("?access_token={TOKEN}")] {
        let (status, value) = app
            .request(
                "POST",
                &format!("/sms/inbound{query}"),
                None,
                "application/x-www-form-urlencoded",
                stop.clone(),
            )
            .await;
        let bytes = value.to_string().into_bytes();
        check(
            format!("POST /sms/inbound{query}"),
            status,
            &bytes,
            &mut refused,
            &mut leaks,
            &mut let_in,
        );
    }

    // Kannel delivery reports carry a signature of the message key.
    let other_key = b"another-key-entirely".as_slice();
    let good_sig = unsubscribe::sign_value(&app.service.api.unsubscribe_key, "dlr", "k1");
    let forged_sigs = [
        String::new(),
        "0".repeat(32),
        good_sig[..31].to_owned(),
        format!("{good_sig}0"),
        good_sig.to_uppercase(),
        unsubscribe::sign_value(other_key, "dlr", "k1"),
        unsubscribe::sign_value(&app.service.api.unsubscribe_key, "unsubscribe", "k1"),
        unsubscribe::sign_value(&app.service.api.unsubscribe_key, "dlr", "k2"),
    ];
    for sig in &forged_sigs {
        for verb in ["GET", "POST"] {
            let path = format!("/kannel/dlr?key=k1&sig={sig}&status=1");
            let (status, value) = app
                .request(verb, &path, None, "text/plain", String::new())
                .await;
            let bytes = value.to_string().into_bytes();
            check(
                format!("{verb} {path}"),
                status,
                &bytes,
                &mut refused,
                &mut leaks,
                &mut let_in,
            );
        }
    }

    // Unsubscribe links: forged tokens get the HTML "not valid" page and change nothing.
    let victim = CustomerId::parse("victim").unwrap();
    let real = unsubscribe::sign(&app.service.api.unsubscribe_key, &victim, Channel::Email);
    let forged_tokens = [
        unsubscribe::sign(other_key, &victim, Channel::Email),
        real.replacen("email", "sms", 1),
        real[..real.len() - 1].to_owned(),
        format!("{real}0"),
        format!("{real}.x"),
        real.to_uppercase(),
        String::from("email.76696374696d."),
        // The customer part in upper-case hex: the same customer, but not the token issued.
        real.replace("76696374696d", "76696374696D"),
        String::from("email..") + &real[real.rfind('.').unwrap() + 1..],
    ];
    let mut pages = 0;
    for token in &forged_tokens {
        for verb in ["GET", "POST"] {
            let path = format!(
                "/unsubscribe/{}",
                utf8_percent_encode(token, NON_ALPHANUMERIC)
            );
            let (status, value) = app
                .request(
                    verb,
                    &path,
                    None,
                    "application/x-www-form-urlencoded",
                    String::new(),
                )
                .await;
            let text = value.as_str().unwrap_or_default();
            if status == StatusCode::BAD_REQUEST && text.contains("not valid") {
                pages += 1;
            } else {
                let_in.push(format!("{verb} {path}: {status} {text}"));
            }
        }
    }

    let after = snapshot(&app).await;
    let attempts = refused + pages + let_in.len();
    assert!(let_in.is_empty(), "let in:\n{}", let_in.join("\n"));
    assert!(leaks.is_empty(), "leaked:\n{}", leaks.join("\n"));
    assert_eq!(before, after, "a refused request wrote to the database");
    println!(
        "RELIABILITY auth_matrix: {} of {attempts} refused ({} token routes x {} ways, plus other methods, forged Basic, DLR and query credentials: {}; {} forged unsubscribe links), 0 let in, 0 leaks, 0 rows changed",
        refused + pages,
        token_routes.len(),
        wrong_credentials().len(),
        refused - token_routes.len() * wrong_credentials().len(),
        forged_tokens.len() * 2,
    );
}

/// Bodies that are not JSON at all, or not the JSON any route takes.
fn broken_json(rng: &mut Rng) -> Vec<u8> {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let depth = *rng.pick(&[129, 1_000, 100_000]);
    let fixed: [&[u8]; 24] = [
        b"",
        b"{",
        b"}",
        b"{\"customer_id\":}",
        b"{\"customer_id\":\"victim\",}",
        b"{'customer_id':'victim'}",
        b"{customer_id:victim}",
        b"{\"a\":NaN}",
        b"{\"a\":Infinity}",
        b"{\"a\":1} // comment",
        b"/* c */ {\"a\":1}",
        b"{\"a\":\"\\u00\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":1}{\"b\":2}",
        b"{\"a\":1}\0",
        b"\xef\xbb\xbf{\"a\":1}",
        b"{\"customer_id\":\"\xff\xfe\",\"name\":\"x\"}",
        b"\xff\xff\xff\xff",
        b"{\"a\":\"\x01\x02\"}",
        b"{\"a\":1e999999}",
        b"{\"a\":-}",
        b"<xml/>",
        b"customer_id=victim&name=signup",
        b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--",
    ];
    match rng.below(4) {
        0 => fixed[rng.below(fixed.len())].to_vec(),
        1 => deep(depth).into_bytes(),
        2 => format!(
            "{{\"customer_id\":\"victim\",\"name\":\"deep\",\"properties\":{{\"p\":{}}}}}",
            deep(depth)
        )
        .into_bytes(),
        _ => {
            // A valid body cut short: an unbalanced object is never valid.
            let whole = json!({"customer_id": "victim", "name": "signup", "properties": {"a": [1, 2, {"b": "c"}]}}).to_string();
            let cut = 1 + rng.below(whole.len() - 1);
            whole.as_bytes()[..cut].to_vec()
        }
    }
}

/// Well-formed JSON a route refuses: wrong types, missing or unknown fields, huge or
/// impossible values. `(method, path, body)`.
fn wrong_json(rng: &mut Rng) -> (&'static str, &'static str, Value) {
    let long_name = "n".repeat(101);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"customer_id": "victim", "name": format!("e{i}")}))
        .collect();
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "POST",
            "/v1/events",
            json!({"customer_id": 123_456_789_012_345_678_u64, "name": "x"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": ["victim"], "name": "x"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": ""}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "$profile_updated"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": long_name}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "..", "name": "x"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "a/b", "name": "x"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "a\u{0}b", "name": "x"}),
        ),
        ("POST", "/v1/events", json!({"customer_id": "victim"})),
        ("POST", "/v1/events", json!({"name": "x"})),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "properties": [1]}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "properties": "p"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "timestamp": 1e300}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "timestamp": "99999-01-01T00:00:00Z"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "timestamp": "2026-13-45T99:99:99Z"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "id": ""}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "id": "a b"}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"customer_id": "victim", "name": "x", "admin": true}),
        ),
        (
            "POST",
            "/v1/events",
            json!([{"customer_id": "victim", "name": "x"}]),
        ),
        ("POST", "/v1/events/batch", json!([1, 2])),
        (
            "POST",
            "/v1/events/batch",
            json!([{"customer_id": "victim", "name": "fine"}, {"customer_id": "victim", "name": ""}]),
        ),
        ("POST", "/v1/events/batch", Value::Array(too_many)),
        ("PUT", "/v1/customers/victim", json!([])),
        ("PUT", "/v1/customers/victim", json!("victim")),
        ("PUT", "/v1/customers/victim", json!({"id": "someone-else"})),
        ("PUT", "/v1/customers/victim", json!({"id": 7})),
        (
            "PUT",
            "/v1/customers/victim",
            json!({"email": 12_345_678_901_234_567_890_u64}),
        ),
        (
            "PUT",
            "/v1/customers/victim",
            json!({"email": "not-an-email"}),
        ),
        (
            "PUT",
            "/v1/customers/victim",
            json!({"email": "victim@example.com\r\nBcc: x@evil.example"}),
        ),
        ("PUT", "/v1/customers/victim", json!({"phone": "12"})),
        (
            "PUT",
            "/v1/customers/victim",
            json!({"timezone": "Mars/Olympus_Mons"}),
        ),
        (
            "PUT",
            "/v1/customers/victim",
            json!({"consent": {"email": 2}}),
        ),
        (
            "PUT",
            "/v1/customers/victim",
            json!({"attributes": "not a map"}),
        ),
        ("PUT", "/v1/customers/victim", json!({"tags": "x"})),
        (
            "PATCH",
            "/v1/customers/victim",
            json!({"timezone": "Nowhere/Land"}),
        ),
        ("PATCH", "/v1/customers/victim", json!({"email": "bad"})),
        ("PATCH", "/v1/customers/victim", json!({"phone": "+1"})),
        (
            "PATCH",
            "/v1/customers/victim",
            json!({"consent": {"email": "yes"}}),
        ),
        ("PATCH", "/v1/customers/victim", json!({"tags": "x"})),
        ("PATCH", "/v1/customers/victim", json!({"add_tags": [1]})),
        ("PATCH", "/v1/customers/victim", json!({"attributes": []})),
        ("PATCH", "/v1/customers/victim", json!({"role": "admin"})),
        (
            "PATCH",
            "/v1/customers/nobody",
            json!({"attributes": {"a": 1}}),
        ),
        (
            "POST",
            "/v1/bounces",
            json!({"email": VICTIM_EMAIL, "type": "medium"}),
        ),
        ("POST", "/v1/bounces", json!({"email": 1, "type": "hard"})),
        ("POST", "/v1/bounces", json!({"type": "hard"})),
        (
            "POST",
            "/v1/bounces",
            json!({"email": VICTIM_EMAIL, "type": "hard", "extra": 1}),
        ),
        (
            "POST",
            "/v1/bounces",
            json!([{"email": VICTIM_EMAIL, "type": "hard"}]),
        ),
    ];
    let (m, p, v) = cases[rng.below(cases.len())].clone();
    (m, p, v)
}

/// A path segment no id can be, in the tricks path parsers and proxies fall for.
const PATH_TRICKS: [&str; 22] = [
    "..%2f..",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "%2e",
    ".",
    "..",
    "%00",
    "victim%00",
    "victim%00.json",
    "%252e%252e%252f",
    "%2576ictim",
    "%ff",
    "%c0%ae%c0%ae",
    "a%2fb",
    "%20",
    "victim%0d%0aX-Injected:%201",
    "victim%20",
    "%e2%80%aevictim",
    "victim;admin",
    "victim%3f",
    "*",
    "victim%23",
];

/// One generated malformed request: `(method, uri, headers, body, token)`.
struct Malformed {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    token: bool,
}

/// One malformed request of any kind, spread over the routes.
fn malformed(rng: &mut Rng) -> Malformed {
    let content_types = [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/x-ndjson",
        "application/json; charset=utf-16",
        "application/xml",
        "",
    ];
    let mut headers = Vec::new();
    let content_type = (*rng.pick(&content_types)).to_owned();
    if !content_type.is_empty() {
        headers.push(("content-type".to_owned(), content_type));
    }
    if rng.below(20) == 0 {
        headers.push(("x-junk".to_owned(), "j".repeat(100_000)));
    }
    if rng.below(20) == 0 {
        for i in 0..200 {
            headers.push((format!("x-many-{i}"), "v".to_owned()));
        }
    }
    let token = rng.below(10) != 0;
    let body_routes = [
        ("POST", "/v1/events"),
        ("POST", "/v1/events/batch"),
        ("PUT", "/v1/customers/victim"),
        ("PATCH", "/v1/customers/victim"),
        ("POST", "/v1/bounces"),
    ];
    let odd_methods = [
        "TRACE", "OPTIONS", "CONNECT", "PROPFIND", "FOO", "M-SEARCH", "LINK", "PURGE", "PUT",
        "PATCH", "DELETE",
    ];
    let (method, uri, body): (String, String, Vec<u8>) = match rng.below(9) {
        0 | 1 => {
            let (m, p) = *rng.pick(&body_routes);
            (m.into(), p.into(), broken_json(rng))
        }
        2 | 3 => {
            let (m, p, v) = wrong_json(rng);
            (m.into(), p.into(), v.to_string().into_bytes())
        }
        4 => {
            let trick = *rng.pick(&PATH_TRICKS);
            let (m, path) = *rng.pick(&[
                ("GET", "/v1/customers/{}"),
                ("PUT", "/v1/customers/{}"),
                ("PATCH", "/v1/customers/{}"),
                ("DELETE", "/v1/customers/{}"),
                ("GET", "/v1/workflows/{}"),
                ("POST", "/v1/workflows/{}/pause"),
                ("POST", "/v1/workflows/{}/resume"),
                ("POST", "/v1/workflows/welcome_series{}/pause"),
                ("GET", "/unsubscribe/{}"),
                ("POST", "/unsubscribe/{}"),
            ]);
            let body = json!({"email": "attacker@evil.example", "attributes": {"a": 1}});
            (
                m.into(),
                path.replace("{}", trick),
                body.to_string().into_bytes(),
            )
        }
        5 => {
            // A route's path with a method it does not take, or an unknown one.
            let routes = routes();
            let route = rng.pick(&routes);
            let (path, body) = concrete(route);
            let method = loop {
                let m = *rng.pick(&odd_methods);
                if !routes
                    .iter()
                    .any(|r| r.path == route.path && self::method(r.verb) == m)
                {
                    break m;
                }
            };
            (
                method.into(),
                path,
                body.map(|b| b.to_string()).unwrap_or_default().into_bytes(),
            )
        }
        6 => {
            let paths = [
                "/v1/customer/victim",
                "/v1/customers",
                "/v1/customers/",
                "/V1/events",
                "/v1/events/",
                "//v1/events",
                "/v1/./events",
                "/v1/../v1/events",
                "/v1/events%2fbatch",
                "/v1/customers/victim/..",
                "/v1/customers/victim/events",
                "/v1/workflows/welcome_series/delete",
                "/admin",
                "/.env",
                "/v1/openapi.json/../../etc/passwd",
                "/%2e%2e/%2e%2e/etc/passwd",
            ];
            let body = json!({"customer_id": "victim", "name": "signup"});
            (
                "POST".into(),
                (*rng.pick(&paths)).into(),
                body.to_string().into_bytes(),
            )
        }
        7 => {
            let queries = [
                "",
                "?key=k1",
                "?key=k1&sig=x",
                "?key=k1&sig=x&status=abc",
                "?key=k1&sig=x&status=99999999999999999999",
                "?key=k1&sig=x&status=-1",
                "?key=%ff&sig=%ff&status=1",
                "?key=k1&key=k2&sig=x&status=1",
                "?key[]=k1&sig=x&status=1",
                "?%00=1",
            ];
            let method = *rng.pick(&["GET", "POST"]);
            (
                method.into(),
                format!("/kannel/dlr{}", rng.pick(&queries)),
                Vec::new(),
            )
        }
        _ => {
            let forms: [&[u8]; 8] = [
                b"",
                b"Body=STOP",
                b"From=&Body=STOP",
                b"From=not-a-phone&Body=STOP",
                b"From=%ff%fe&Body=STOP",
                b"From=%2B1&Body=STOP",
                b"From=\xff\xfe&Body=\xff",
                b"From=%2B14155550123%00&Body=STOP",
            ];
            headers.retain(|(n, _)| n != "content-type");
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            headers.push((
                "authorization".into(),
                format!("Basic {}", base64(format!("twilio:{TOKEN}").as_bytes())),
            ));
            (
                "POST".into(),
                "/sms/inbound".into(),
                rng.pick(&forms).to_vec(),
            )
        }
    };
    // The inbound webhook carries its own (Basic) credentials; a second header would only
    // make it a 401.
    let token = token && uri != "/sms/inbound";
    // An empty NDJSON batch is a batch of no events, which is fine; as JSON it is malformed.
    if uri == "/v1/events/batch" && body.iter().all(u8::is_ascii_whitespace) {
        headers.retain(|(n, _)| n != "content-type");
        headers.push(("content-type".into(), "application/json".into()));
    }
    Malformed {
        method,
        uri,
        headers,
        body,
        token,
    }
}

#[tokio::test]
async fn ten_thousand_malformed_requests_are_each_a_json_4xx_and_write_nothing() {
    let app = app_with_victim(&[]).await;
    let before = snapshot(&app).await;
    let n = size(10_000, 100_000);
    let mut rng = Rng(0x5eed_0bad_f00d_u64);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut wrong = Vec::new();
    let mut too_large = 0;
    for i in 0..n {
        let mut m = malformed(&mut rng);
        // Now and then a body over the limit (1 MiB).
        if i % 997 == 0 {
            m.body = vec![b'['; 1_048_577];
            m.method = "POST".into();
            m.uri = "/v1/events/batch".into();
            m.token = true;
            m.headers.retain(|(n, _)| n != "authorization");
            too_large += 1;
        }
        let mut request = Request::builder().method(m.method.as_str()).uri(&m.uri);
        for (name, value) in &m.headers {
            request = request.header(name, value);
        }
        if m.token {
            request = request.header("authorization", format!("Bearer {TOKEN}"));
        }
        let (status, headers, body) =
            send(&app, request.body(Body::from(m.body.clone())).unwrap()).await;
        *statuses.entry(status.as_u16()).or_default() += 1;
        let html_page = m.uri.starts_with("/unsubscribe/")
            && headers
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/html"));
        let ok = status.is_client_error() && (html_page || is_problem_body(&body));
        if !ok && wrong.len() < 20 {
            wrong.push(format!(
                "#{i} {} {} (token {}, {} body bytes: {:?}) -> {status} {}",
                m.method,
                m.uri,
                m.token,
                m.body.len(),
                String::from_utf8_lossy(&m.body[..m.body.len().min(120)]),
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
    }
    let after = snapshot(&app).await;
    assert!(wrong.is_empty(), "not a JSON 4xx:\n{}", wrong.join("\n"));
    assert_eq!(before.len(), after.len(), "rows were added");
    assert_eq!(before, after, "a malformed request wrote to the database");
    let five = statuses.range(500..).map(|(_, c)| c).sum::<usize>();
    println!(
        "RELIABILITY malformed_requests: {n} requests ({too_large} over the body limit), {} 4xx, {five} 5xx, 0 rows changed; statuses {statuses:?}",
        statuses.range(400..500).map(|(_, c)| c).sum::<usize>()
    );
}

/// One way of tampering with a signed string.
fn tamper(rng: &mut Rng, token: &str, others: &[String]) -> String {
    let mut bytes = token.as_bytes().to_vec();
    match rng.below(9) {
        0 => {
            // Flip one bit anywhere (0x20 turns a hex letter's case).
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 0x20;
        }
        2 => bytes.truncate(rng.below(bytes.len())),
        3 => {
            let tails: [&[u8]; 8] = [b"0", b"a", b".", b".x", b"\0", b"%00", b"=", b" "];
            bytes.extend_from_slice(tails[rng.below(tails.len())]);
        }
        4 => {
            // Swap the parts around.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut parts: Vec<&str> = text.split('.').collect();
            let (a, b) = (rng.below(parts.len()), rng.below(parts.len()));
            parts.swap(a, b);
            if a == b {
                parts.reverse();
            }
            bytes = parts.join(".").into_bytes();
        }
        5 if !others.is_empty() => {
            // Graft the signature or the id part of another token on.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let other = rng.pick(others);
            let mine: Vec<&str> = text.split('.').collect();
            let theirs: Vec<&str> = other.split('.').collect();
            let k = rng.below(mine.len().min(theirs.len()));
            let mut mixed: Vec<&str> = mine.clone();
            mixed[k] = theirs[k];
            if mixed == mine {
                mixed.push(theirs[0]);
            }
            bytes = mixed.join(".").into_bytes();
        }
        6 => {
            // Change one character to another of the same kind.
            let i = rng.below(bytes.len());
            let replacement = *rng.pick(b"0123456789abcdefABCDEF.");
            bytes[i] = if bytes[i] == replacement {
                b'x'
            } else {
                replacement
            };
        }
        7 => bytes = Vec::new(),
        _ => {
            // Insert a character.
            let i = rng.below(bytes.len() + 1);
            bytes.insert(i, *rng.pick(b"0a.Z-_"));
        }
    }
    let tampered = String::from_utf8_lossy(&bytes).into_owned();
    if tampered == token {
        format!("{token}.")
    } else {
        tampered
    }
}

#[tokio::test]
async fn a_hundred_thousand_tampered_or_forged_signed_links_are_all_refused() {
    let key = b"the-real-signing-key-0123456789".as_slice();
    let other_keys: [&[u8]; 4] = [
        b"",
        b"the-real-signing-key-012345678",
        b"THE-REAL-SIGNING-KEY-0123456789",
        b"another",
    ];
    let customers: Vec<CustomerId> = [
        "ada",
        "bob@example.com",
        "z",
        "customer-0042",
        "Åsa+1",
        "x:y",
        "deadbeef",
    ]
    .iter()
    .map(|c| CustomerId::parse(*c).unwrap())
    .collect();
    let mut tokens = Vec::new();
    for c in &customers {
        for channel in [Channel::Email, Channel::Sms] {
            let token = unsubscribe::sign(key, c, channel);
            assert_eq!(unsubscribe::verify(key, &token), Some((c.clone(), channel)));
            tokens.push(token);
        }
    }
    let values = ["k1", "msg-0001-email", "Zz", "a.b.c", ""];
    let signatures: Vec<String> = values
        .iter()
        .map(|v| unsubscribe::sign_value(key, "dlr", v))
        .collect();
    let n = size(100_000, 1_000_000);
    let mut rng = Rng(0x70c3_4e5a_11ce_u64);
    let mut accepted = Vec::new();
    for i in 0..n {
        if i % 2 == 0 {
            let token = rng.pick(&tokens).clone();
            let forged = if i % 50 == 0 {
                // A token signed with another key.
                let c = rng.pick(&customers);
                unsubscribe::sign(other_keys[rng.below(other_keys.len())], c, Channel::Email)
            } else {
                tamper(&mut rng, &token, &tokens)
            };
            if let Some(got) = unsubscribe::verify(key, &forged) {
                accepted.push(format!(
                    "unsubscribe {forged:?} (from {token:?}) -> {got:?}"
                ));
            }
        } else {
            let k = rng.below(values.len());
            let (value, sig) = (values[k], &signatures[k]);
            let (value, forged): (String, String) = match rng.below(4) {
                0 => (value.to_owned(), tamper(&mut rng, sig, &signatures)),
                1 => {
                    let other = values[(k + 1 + rng.below(values.len() - 1)) % values.len()];
                    (other.to_owned(), sig.clone())
                }
                2 => {
                    let changed = tamper(&mut rng, &format!("{value}x"), &[]);
                    let changed = if changed == value {
                        format!("{value}.")
                    } else {
                        changed
                    };
                    (changed, sig.clone())
                }
                _ => (
                    value.to_owned(),
                    unsubscribe::sign_value(other_keys[rng.below(other_keys.len())], "dlr", value),
                ),
            };
            if unsubscribe::verify_value(key, "dlr", &value, &forged) {
                accepted.push(format!("dlr {value:?} with {forged:?}"));
            }
            // The same signature for another purpose is no signature.
            if unsubscribe::verify_value(key, "unsubscribe", values[k], &signatures[k]) {
                accepted.push(format!("dlr signature used for another purpose: {value:?}"));
            }
        }
    }
    accepted.truncate(20);
    assert!(accepted.is_empty(), "accepted:\n{}", accepted.join("\n"));

    // A few hundred of them through HTTP: the page says the link is not valid, the DLR
    // callback answers 401, and the victim keeps their consent.
    let app = app_with_victim(&[]).await;
    let before = snapshot(&app).await;
    let key = app.service.api.unsubscribe_key.clone();
    let victim = CustomerId::parse("victim").unwrap();
    let real = [
        unsubscribe::sign(&key, &victim, Channel::Email),
        unsubscribe::sign(&key, &victim, Channel::Sms),
    ];
    let real_sig = unsubscribe::sign_value(&key, "dlr", "k1");
    let http = size(300, 3_000);
    let mut refused = 0;
    for i in 0..http {
        let (status, value) = if i % 3 == 2 {
            let forged = tamper(&mut rng, &real_sig, &[]);
            let path = format!(
                "/kannel/dlr?key=k1&sig={}&status=1",
                utf8_percent_encode(&forged, NON_ALPHANUMERIC)
            );
            app.request(
                if i % 2 == 0 { "GET" } else { "POST" },
                &path,
                None,
                "text/plain",
                String::new(),
            )
            .await
        } else {
            let forged = tamper(&mut rng, &real[i % 2], &real);
            let path = format!(
                "/unsubscribe/{}",
                utf8_percent_encode(&forged, NON_ALPHANUMERIC)
            );
            app.request(
                if i % 2 == 0 { "GET" } else { "POST" },
                &path,
                None,
                "application/x-www-form-urlencoded",
                String::new(),
            )
            .await
        };
        let is_refusal = match status.as_u16() {
            400 => value.as_str().is_some_and(|t| t.contains("not valid")),
            401 => value["error"] == "unauthorized",
            // A tampered token that no longer names a route.
            404 | 405 => value["error"].is_string(),
            _ => false,
        };
        assert!(is_refusal, "#{i}: {status} {value}");
        refused += 1;
    }
    assert_eq!(
        before,
        snapshot(&app).await,
        "a forged link changed something"
    );
    // The pages keep to themselves: not framed, not cached, no referrer.
    let request = Request::builder()
        .uri(format!("/unsubscribe/{}", real[0]))
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&app, request).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    println!(
        "RELIABILITY forged_tokens: {n} tampered or forged tokens and signatures, 0 accepted; {refused} of {http} through HTTP refused, 0 rows changed"
    );
}

/// A TCP listener that counts the connections it accepts and answers each with `reply`.
async fn counting_listener(
    addr: SocketAddr,
    reply: String,
) -> Option<(SocketAddr, Arc<AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
    let local = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Some((local, count))
}

/// A plain 200 that closes the connection, so every call makes a new one.
const OK_REPLY: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A resolver an attacker controls: it answers `answers` in turn, one per lookup.
struct Rebinding {
    lookups: AtomicUsize,
    answers: Vec<Vec<IpAddr>>,
}

impl reqwest::dns::Resolve for Rebinding {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let n = self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer: Vec<SocketAddr> = self.answers[n % self.answers.len()]
            .iter()
            .map(|ip| SocketAddr::new(*ip, 0))
            .collect();
        Box::pin(async move { Ok(Box::new(answer.into_iter()) as reqwest::dns::Addrs) })
    }
}

/// Whether a call was refused by the policy (or the URL), before any connection.
fn refused_up_front(result: &Result<trellis::channels::Delivered, DeliveryError>) -> bool {
    matches!(result, Err(DeliveryError::Permanent { reason }) if reason.contains("refused") || reason.contains("scheme") || reason.contains("invalid"))
}

#[tokio::test]
async fn webhooks_reach_no_internal_address_by_any_spelling_name_rebinding_or_redirect() {
    // The victim: a service on loopback, on IPv4 and (where there is IPv6) on ::1.
    let (victim, hits) = counting_listener("127.0.0.1:0".parse().unwrap(), OK_REPLY.into())
        .await
        .unwrap();
    let p = victim.port();
    let hits6 = counting_listener(SocketAddr::new("::1".parse().unwrap(), p), OK_REPLY.into())
        .await
        .map(|(_, c)| c);
    let strict = WebhookChannel::new(Allowlist::default(), Duration::from_secs(2)).unwrap();
    let urls: Vec<String> = [
        "http://127.0.0.1:{p}/",
        "http://127.0.0.2:{p}/",
        "http://127.1:{p}/",
        "http://0:{p}/",
        "http://0.0.0.0:{p}/",
        "http://2130706433:{p}/",
        "http://0x7f000001:{p}/",
        "http://0x7f.0.0.1:{p}/",
        "http://0177.0.0.1:{p}/",
        "http://0177.0.0.01:{p}/",
        "http://127.0.0.1.:{p}/",
        "http://localhost:{p}/",
        "http://LOCALHOST:{p}/",
        "http://localhost.:{p}/",
        "http://attacker@127.0.0.1:{p}/",
        "http://hooks.example.com@127.0.0.1:{p}/",
        "http://[::1]:{p}/",
        "http://[::]:{p}/",
        "http://[0:0:0:0:0:0:0:1]:{p}/",
        "http://[::ffff:127.0.0.1]:{p}/",
        "http://[::ffff:7f00:1]:{p}/",
        "http://[::127.0.0.1]:{p}/",
        "http://[::ffff:0:127.0.0.1]:{p}/",
        "http://[64:ff9b::127.0.0.1]:{p}/",
        "http://[64:ff9b::7f00:1]:{p}/",
        "http://[64:ff9b:1::7f00:1]:{p}/",
        "http://[2002:7f00:1::]:{p}/",
        "http://[fe80::1]:{p}/",
        "http://[fd00::1]:{p}/",
        "http://[fc00::1]:{p}/",
        "http://[fec0::1]:{p}/",
        "http://[ff02::1]:{p}/",
        "http://10.0.0.1:{p}/",
        "http://172.16.0.1:{p}/",
        "http://192.168.0.1:{p}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1:{p}/",
        "http://192.0.0.1:{p}/",
        "http://224.0.0.1:{p}/",
        "http://255.255.255.255:{p}/",
        "https://127.0.0.1:{p}/",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{p}/",
        "gopher://127.0.0.1:{p}/_GET%20/",
        "ws://127.0.0.1:{p}/",
        "dict://127.0.0.1:{p}/",
        "data:text/plain,hello",
        "javascript:alert(1)",
        "//127.0.0.1:{p}/",
        "127.0.0.1:{p}",
        "http:///127.0.0.1:{p}/",
    ]
    .iter()
    .map(|u| u.replace("{p}", &p.to_string()))
    .collect();
    let mut not_refused = Vec::new();
    for url in &urls {
        let result = strict
            .call("k", "POST", url, &[], Some(&json!({"x": 1})))
            .await;
        if !refused_up_front(&result) {
            not_refused.push(format!("{url}: {result:?}"));
        }
    }

    // An allowlisted "external" target (127.0.0.2, allowlisted) delivers; the same target
    // answering with redirects to loopback is not followed.
    let allowed_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let (target, target_hits) = counting_listener(SocketAddr::new(allowed_ip, 0), OK_REPLY.into())
        .await
        .expect("127.0.0.2 is loopback on Linux");
    let mut redirects = Vec::new();
    for (status, location) in [
        (302, format!("http://127.0.0.1:{p}/")),
        (307, format!("http://localhost:{p}/")),
        (308, format!("http://[::1]:{p}/")),
        (301, format!("http://2130706433:{p}/")),
    ] {
        let reply = format!(
            "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        redirects.push(
            counting_listener(SocketAddr::new(allowed_ip, 0), reply)
                .await
                .unwrap(),
        );
    }
    let allowing = WebhookChannel::new(
        Allowlist::new(&["127.0.0.2".into()]),
        Duration::from_secs(2),
    )
    .unwrap();
    let delivered = allowing
        .call(
            "k",
            "POST",
            &format!("http://{target}/hook"),
            &[],
            Some(&json!({"x": 1})),
        )
        .await;
    assert!(delivered.is_ok(), "the allowlisted target: {delivered:?}");
    assert_eq!(target_hits.load(Ordering::SeqCst), 1);
    for (redirector, redirector_hits) in &redirects {
        let result = allowing
            .call("k", "POST", &format!("http://{redirector}/hook"), &[], None)
            .await;
        assert!(
            matches!(result, Err(DeliveryError::Permanent { .. })),
            "{redirector}: {result:?}"
        );
        assert_eq!(redirector_hits.load(Ordering::SeqCst), 1);
    }

    // DNS rebinding: a name that answers an allowed address, then loopback, then both. Every
    // lookup is checked, and the client connects only to what passed.
    let (_, rebound_hits) = counting_listener(SocketAddr::new(allowed_ip, p), OK_REPLY.into())
        .await
        .expect("port free on 127.0.0.2 too");
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let resolver = Arc::new(Rebinding {
        lookups: AtomicUsize::new(0),
        answers: vec![
            vec![allowed_ip],
            vec![loopback],
            vec![loopback, allowed_ip],
            vec!["::ffff:127.0.0.1".parse().unwrap()],
            vec!["0.0.0.0".parse().unwrap()],
        ],
    });
    let rebinding = WebhookChannel::with_resolver(
        Allowlist::new(&["127.0.0.2".into()]),
        Duration::from_secs(2),
        resolver.clone(),
    )
    .unwrap();
    let rounds = 10;
    let mut rebinding_ok = 0;
    for i in 0..rounds {
        let result = rebinding
            .call(
                "k",
                "POST",
                &format!("http://rebind.attacker.example:{p}/"),
                &[],
                None,
            )
            .await;
        match i % 5 {
            0 | 2 => {
                assert!(
                    result.is_ok(),
                    "lookup {i} answered an allowed address: {result:?}"
                );
                rebinding_ok += 1;
            }
            _ => assert!(refused_up_front(&result), "lookup {i}: {result:?}"),
        }
    }
    assert_eq!(
        resolver.lookups.load(Ordering::SeqCst),
        rounds,
        "one checked lookup per call"
    );
    assert_eq!(rebound_hits.load(Ordering::SeqCst), rebinding_ok);

    let victim_hits = hits.load(Ordering::SeqCst) + hits6.map_or(0, |c| c.load(Ordering::SeqCst));
    assert!(
        not_refused.is_empty(),
        "not refused before connecting:\n{}",
        not_refused.join("\n")
    );
    assert_eq!(victim_hits, 0, "connections reached the loopback victim");
    println!(
        "RELIABILITY webhook_ssrf: {} internal or non-http destinations, {} redirects to loopback, {rounds} rebinding lookups: 0 connections to loopback; the allowlisted target got 1 of 1, the rebinding name {rebinding_ok} at the allowed address",
        urls.len(),
        redirects.len()
    );
}

/// What an attacker puts into their profile and events.
const PAYLOAD: &str = "<script>alert(\"x\")</script> \"dq\" 'sq' & {{links.unsubscribe}} \r\nBcc: x@evil.example\r\nSubject: pwned\r\n\r\nbody-injected";

/// Folders with one journey, `hostile`: on `ping`, an email then an SMS, each showing the
/// customer's `name` attribute and the event's `note`.
fn hostile_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    let mail = dir.path().join("templates/hostile_mail");
    let sms = dir.path().join("templates/hostile_sms");
    for d in [&workflows, &mail, &sms] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        workflows.join("hostile.yaml"),
        "id: hostile\nname: Hostile\ntrigger:\n  event:\n    name: ping\nstart: mail\nnodes:\n  mail:\n    send_email:\n      template: hostile_mail\n      next: text\n  text:\n    send_sms:\n      template: hostile_sms\n      next: done\n  done: exit\n",
    )
    .unwrap();
    std::fs::write(
        mail.join("subject.hbs"),
        "Hello {{customer.attributes.name}}",
    )
    .unwrap();
    std::fs::write(
        mail.join("html.hbs"),
        "<p>{{customer.attributes.name}}</p><p>{{event.properties.note}}</p><a href=\"{{links.unsubscribe}}\">Unsubscribe</a>\n",
    )
    .unwrap();
    std::fs::write(
        mail.join("text.hbs"),
        "Hello {{customer.attributes.name}}\n{{event.properties.note}}\nUnsubscribe: {{links.unsubscribe}}\n",
    )
    .unwrap();
    std::fs::write(sms.join("sms.hbs"), "{{customer.attributes.name}}").unwrap();
    dir
}

/// The flags that point the app at a fixture's workflows and templates.
fn fixture_flags(fixture: &Path) -> [String; 4] {
    [
        "--workflows".into(),
        fixture.join("workflows").display().to_string(),
        "--templates".into(),
        fixture.join("templates").display().to_string(),
    ]
}

/// Base64 decoded, skipping line breaks and padding.
fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in text.bytes() {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Quoted-printable decoded, soft line breaks joined.
fn decode_quoted_printable(text: &str) -> String {
    let text = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`) decoded.
fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        let Some(end) = rest[start + 2..].find("?=").map(|e| start + 2 + e) else {
            break;
        };
        let word = &rest[start + 2..end];
        let parts: Vec<&str> = word.splitn(3, '?').collect();
        if parts.len() != 3 {
            break;
        }
        let between = &rest[..start];
        if !between.trim().is_empty() || out.is_empty() {
            out.push_str(between);
        }
        let decoded = if parts[1].eq_ignore_ascii_case("b") {
            String::from_utf8_lossy(&decode_base64(parts[2])).into_owned()
        } else {
            decode_quoted_printable(&parts[2].replace('_', " "))
        };
        out.push_str(&decoded);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A raw message's headers (unfolded, in order) and its body.
fn parse_message(raw: &str) -> (Vec<(String, String)>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        } else {
            headers.push((line.to_ascii_lowercase(), String::new()));
        }
    }
    (headers, body.to_owned())
}

/// The decoded parts of a multipart body: `(content type, text)`.
fn mime_parts(headers: &[(String, String)], body: &str) -> Vec<(String, String)> {
    let content_type = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return vec![(content_type, body.to_owned())];
    };
    let boundary = boundary
        .trim_matches('"')
        .split(';')
        .next()
        .unwrap()
        .trim_matches('"');
    body.split(&format!("--{boundary}"))
        .skip(1)
        .filter(|p| !p.starts_with("--"))
        .map(|part| {
            let (h, b) = parse_message(part.trim_start_matches('\n'));
            let get = |name: &str| {
                h.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.to_ascii_lowercase())
                    .unwrap_or_default()
            };
            let text = match get("content-transfer-encoding").as_str() {
                "quoted-printable" => decode_quoted_printable(&b),
                "base64" => String::from_utf8_lossy(&decode_base64(&b)).into_owned(),
                _ => b,
            };
            (get("content-type"), text)
        })
        .collect()
}

#[tokio::test]
async fn customer_data_is_escaped_in_html_literal_elsewhere_and_never_a_header() {
    let fixture = hostile_fixture();
    let smtp = SmtpSink::start();
    let twilio = TwilioServer::start(0).await;
    let flags = fixture_flags(fixture.path());
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let smtp_url = smtp.url();
    args.extend([
        "--smtp-url",
        &smtp_url,
        "--twilio-base-url",
        &twilio.base,
        "--twilio-account-sid",
        "AC1",
        "--twilio-auth-token",
        "t",
        "--quiet-hours-sms",
        "none",
    ]);
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &args).await;

    // Addresses that smuggle headers or more recipients are refused at the door.
    let mut refused_addresses = 0;
    for email in [
        "victim@example.com\r\nBcc: x@evil.example",
        "victim@example.com\nBcc: x@evil.example",
        "victim@example.com, x@evil.example",
        "x@evil.example,victim@example.com",
        "Evil <x@evil.example>",
        "victim@example.com>\r\nBcc:<x@evil.example",
        "\"a\r\nBcc: x@evil.example\"@example.com",
    ] {
        let (status, body) = app
            .call("PUT", "/v1/customers/victim", Some(json!({"email": email})))
            .await;
        assert_eq!(status, 422, "{email:?}: {body}");
        refused_addresses += 1;
    }

    let (status, body) = app
        .call(
            "PUT",
            "/v1/customers/victim",
            Some(json!({
                "email": "victim@example.com",
                "phone": "+14155550123",
                "attributes": {"name": PAYLOAD},
                "consent": {"email": true, "sms": true}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The event comes with a forged Host and forwarding headers: links must still use the
    // configured public URL.
    let event = json!({"customer_id": "victim", "name": "ping", "properties": {"note": PAYLOAD}});
    let request = Request::builder()
        .method("POST")
        .uri("/v1/events")
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "host=evil.example;proto=http")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(event.to_string()))
        .unwrap();
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let (_, drained) = app.settle().await;
    assert_eq!(drained.sent, 2, "{drained:?}");

    // SQL in data stays data: stored and shown verbatim, every table still there.
    let sql = "x'); DROP TABLE customers; --";
    let (status, body) = app
        .call(
            "PATCH",
            "/v1/customers/victim",
            Some(json!({"attributes": {"sql": "' OR '1'='1", "name": PAYLOAD}, "add_tags": [sql]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .call(
            "POST",
            "/v1/events",
            Some(json!({"customer_id": "victim", "name": sql})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (_, view) = app.call("GET", "/v1/customers/victim", None).await;
    assert_eq!(view["customer"]["attributes"]["sql"], "' OR '1'='1");
    assert_eq!(view["customer"]["tags"][0], sql);
    assert_eq!(view["recent_events"][0]["name"], sql);
    let (status, _) = app.call("GET", "/v1/customers/nobody-else", None).await;
    assert_eq!(status, 404, "the customers table still answers");

    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    let (headers, body) = parse_message(&mails[0]);
    let count = |name: &str| headers.iter().filter(|(n, _)| n == name).count();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| decode_words(v))
            .unwrap_or_default()
    };
    assert_eq!(count("subject"), 1, "{headers:#?}");
    assert_eq!(count("bcc") + count("cc"), 0, "{headers:#?}");
    assert_eq!(count("to"), 1);
    assert_eq!(value("to"), "victim@example.com");
    assert_eq!(value("from"), "Acme <news@acme.test>");
    assert!(
        value("list-unsubscribe").starts_with("<https://trellis.test/unsubscribe/"),
        "{headers:#?}"
    );
    assert!(
        !mails[0].contains("evil.example/"),
        "a forged Host reached a link"
    );
    let flat: Vec<&str> = PAYLOAD.split_whitespace().collect();
    assert_eq!(
        value("subject"),
        format!("Hello {}", flat.join(" ")),
        "the subject is one literal line"
    );
    let known = [
        "from",
        "to",
        "subject",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "date",
        "content-type",
        "content-transfer-encoding",
    ];
    let strange: Vec<&(String, String)> = headers
        .iter()
        .filter(|(n, _)| !known.contains(&n.as_str()))
        .collect();
    assert!(
        strange.is_empty(),
        "headers from customer data: {strange:#?}"
    );

    let parts = mime_parts(&headers, &body);
    let html = parts
        .iter()
        .find(|(t, _)| t.starts_with("text/html"))
        .map(|(_, b)| b.clone())
        .unwrap();
    let text = parts
        .iter()
        .find(|(t, _)| t.starts_with("text/plain"))
        .map(|(_, b)| b.clone())
        .unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("\"dq\"") && !html.contains("'sq'"), "{html}");
    assert!(
        html.contains("{{links.unsubscribe}}") || html.contains("&#x7B;"),
        "data is not a template: {html}"
    );
    let text_normalised = text.replace("\r\n", "\n");
    let literal = PAYLOAD.replace("\r\n", "\n");
    assert_eq!(
        text_normalised.matches(literal.as_str()).count(),
        2,
        "the text part shows the data literally, twice: {text}"
    );
    let sms = twilio.received.lock().unwrap().clone();
    assert_eq!(sms.len(), 1);
    let sms_body = sms[0]
        .form
        .iter()
        .find(|(k, _)| k == "Body")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(sms_body, PAYLOAD, "the SMS carries the data literally");
    let to: Vec<&String> = sms[0]
        .form
        .iter()
        .filter(|(k, _)| k == "To")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to, ["+14155550123"]);
    println!(
        "RELIABILITY injection: {refused_addresses} smuggling addresses refused; 1 email with 1 Subject, 0 Bcc/Cc, To only the customer, HTML escaped, text and SMS literal, links on the public URL despite a forged Host, SQL in data stored verbatim"
    );
}

/// Distinctive values for every secret Trellis holds; none may ever show.
const CANARIES: [(&str, &str); 5] = [
    ("API token", "CANARYapiTOKEN0123456789"),
    ("SMTP password", "CANARYsmtpPASSWORD4242"),
    ("Twilio auth token", "CANARYtwilioTOKEN4343"),
    ("Kannel password", "CANARYkannelPASSWORD4444"),
    ("secret key", "CANARYsecretKEY45454545"),
];

/// The canary value of the secret called `name`.
fn canary(name: &str) -> &'static str {
    CANARIES.iter().find(|(n, _)| *n == name).unwrap().1
}

/// Every canary found in `text`, with where: `"<where>: <secret name>"`.
fn canaries_in(place: &str, text: &str) -> Vec<String> {
    CANARIES
        .iter()
        .filter(|(_, value)| text.contains(value))
        .map(|(name, _)| format!("{place}: {name}"))
        .collect()
}

/// A loopback port nothing listens on (now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `trellis serve` with `RUST_LOG=trace`, its stderr kept in a file.
struct TracedServer {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl TracedServer {
    fn spawn(dir: &Path, port: u16, args: &[String]) -> TracedServer {
        let log = dir.join(format!("serve-{port}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("serve")
            .args(args)
            .current_dir(root())
            .env("RUST_LOG", "trace")
            .env_remove("TRELLIS_API_TOKEN")
            .stdout(std::fs::File::create(dir.join(format!("stdout-{port}.log"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        TracedServer { child, port, log }
    }

    async fn wait_healthy(&mut self, client: &reqwest::Client) -> bool {
        for _ in 0..400 {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{}/healthz", self.port))
                .send()
                .await
                && r.status() == 200
            {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Stops it with SIGTERM (graceful shutdown logs too) and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TracedServer {
    /// A test that fails mid-way leaves no server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drives a flow over real HTTP, with errors of every kind; returns every response as text.
async fn drive(client: &reqwest::Client, port: u16, token: &str) -> Vec<(String, String)> {
    let base = format!("http://127.0.0.1:{port}");
    let mut seen = Vec::new();
    let mut record = async |label: &str, request: reqwest::RequestBuilder| {
        let response = match request.send().await {
            Ok(response) => response,
            // An over-limit body is refused at once, with `Connection: close`: the client may
            // still be writing it when the socket goes. Nothing was answered, so nothing leaks.
            Err(err) if label == "huge body" && err.is_request() => {
                seen.push((label.to_owned(), err.to_string()));
                return;
            }
            Err(err) => panic!("{label}: {err}"),
        };
        let head = format!("{} {:?}", response.status(), response.headers());
        let body = response.text().await.unwrap_or_default();
        seen.push((label.to_owned(), format!("{head}\n{body}")));
    };
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(token);
    record("healthz", client.get(format!("{base}/healthz"))).await;
    record("openapi", client.get(format!("{base}/v1/openapi.json"))).await;
    record(
        "put customer",
        auth(client.put(format!("{base}/v1/customers/victim"))).json(&json!({
            "email": "victim@example.com", "phone": "+14155550123",
            "attributes": {"name": "Vic"}, "consent": {"email": true, "sms": true}
        })),
    )
    .await;
    record(
        "ping",
        auth(client.post(format!("{base}/v1/events")))
            .json(&json!({"customer_id": "victim", "name": "ping", "properties": {"note": "hi"}})),
    )
    .await;
    record(
        "batch",
        auth(client.post(format!("{base}/v1/events/batch")))
            .json(&json!([{"customer_id": "victim", "name": "other"}])),
    )
    .await;
    record(
        "wrong token",
        client
            .get(format!("{base}/v1/workflows"))
            .bearer_auth("wrong"),
    )
    .await;
    record(
        "no token",
        client.delete(format!("{base}/v1/customers/victim")),
    )
    .await;
    record(
        "bad json",
        auth(client.post(format!("{base}/v1/events"))).body("{nope"),
    )
    .await;
    record(
        "bad field",
        auth(client.patch(format!("{base}/v1/customers/victim")))
            .json(&json!({"timezone": "No/Where"})),
    )
    .await;
    record(
        "unknown path",
        auth(client.get(format!("{base}/v1/secrets"))),
    )
    .await;
    record(
        "wrong method",
        auth(client.put(format!("{base}/v1/events"))),
    )
    .await;
    record(
        "huge body",
        auth(client.post(format!("{base}/v1/events/batch"))).body(vec![b'['; 1_100_000]),
    )
    .await;
    record(
        "forged unsubscribe",
        client.post(format!("{base}/unsubscribe/email.76696374696d.00")),
    )
    .await;
    record(
        "forged dlr",
        client.get(format!("{base}/kannel/dlr?key=k&sig=00&status=1")),
    )
    .await;
    record(
        "forged inbound",
        client
            .post(format!("{base}/sms/inbound"))
            .basic_auth("twilio", Some("wrong"))
            .body("From=%2B14155550123&Body=STOP"),
    )
    .await;
    record(
        "bounce",
        auth(client.post(format!("{base}/v1/bounces")))
            .json(&json!({"email": "x@example.com", "type": "soft"})),
    )
    .await;
    record(
        "workflows",
        auth(client.get(format!("{base}/v1/workflows"))),
    )
    .await;
    record(
        "workflow",
        auth(client.get(format!("{base}/v1/workflows/hostile"))),
    )
    .await;
    // Wait until both messages have been tried (and failed) at least once.
    for _ in 0..200 {
        let view: Value = auth(client.get(format!("{base}/v1/customers/victim")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let tried = view["messages"].as_array().map_or(0, |m| {
            m.iter()
                .filter(|m| !m["last_error"].is_null() || m["status"] == "failed")
                .count()
        });
        if tried >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    record(
        "customer",
        auth(client.get(format!("{base}/v1/customers/victim"))),
    )
    .await;
    record(
        "pause",
        auth(client.post(format!("{base}/v1/workflows/hostile/pause"))),
    )
    .await;
    record(
        "resume",
        auth(client.post(format!("{base}/v1/workflows/hostile/resume"))),
    )
    .await;
    record(
        "erase",
        auth(client.delete(format!("{base}/v1/customers/victim"))),
    )
    .await;
    seen
}

/// An SMTP server (aiosmtpd) that offers `AUTH` without TLS and refuses every login with
/// 535; returns the child and its port.
fn smtp_refusing_auth() -> (std::process::Child, u16) {
    use std::io::BufRead;
    const SCRIPT: &str = r#"
import socket, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
def refuse(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=False, handled=False)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
c = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=refuse, auth_require_tls=False)
c.start()
print(f"ready {port}", flush=True)
threading.Event().wait()
"#;
    let python = std::env::var("TRELLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs (./test.sh installs aiosmtpd)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the refusing SMTP server did not start: {line:?}"));
    (child, port)
}

#[tokio::test]
async fn no_secret_shows_in_output_responses_errors_or_trace_logs() {
    let fixture = hostile_fixture();
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut found = Vec::new();
    let mut places = 0;
    let mut log_bytes = 0;
    let smtp = SmtpSink::start();
    smtp.set_failing(true);
    let closed = free_port();
    let common = |port: u16, db: &str| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--api-token".into(),
            canary("API token").into(),
            "--secret-key".into(),
            canary("secret key").into(),
            "--database-url".into(),
            format!("sqlite://{}", dir.path().join(db).display()),
            "--outbox".into(),
            dir.path()
                .join(format!("outbox-{db}"))
                .display()
                .to_string(),
            "--public-url".into(),
            format!("http://127.0.0.1:{port}"),
            "--quiet-hours-sms".into(),
            "none".into(),
            "--twilio-account-sid".into(),
            "AC1".into(),
            "--twilio-auth-token".into(),
            canary("Twilio auth token").into(),
            "--twilio-base-url".into(),
            format!("http://127.0.0.1:{closed}"),
        ];
        args.extend(fixture_flags(fixture.path()));
        args
    };

    // 1. SMTP with the password in its URL, to a server that is down, and Kannel (with its
    //    password) down too: every delivery fails with a connection error.
    let port = free_port();
    let mut args = common(port, "a.db");
    args.extend([
        "--smtp-url".into(),
        format!(
            "smtp://mailer:{}@127.0.0.1:{closed}",
            canary("SMTP password")
        ),
        "--kannel-url".into(),
        format!("http://127.0.0.1:{closed}"),
        "--kannel-password".into(),
        canary("Kannel password").into(),
    ]);
    let mut server = TracedServer::spawn(dir.path(), port, &args);
    assert!(
        server.wait_healthy(&client).await,
        "{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    for (label, text) in drive(&client, port, canary("API token")).await {
        places += 1;
        found.extend(canaries_in(&format!("down servers, {label}"), &text));
    }
    let log = server.stop();
    log_bytes += log.len();
    places += 1;
    found.extend(canaries_in("down servers, trace log", &log));
    assert!(
        log.contains("Delivery failed"),
        "the failed deliveries were logged: {log}"
    );
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "the log is at trace level"
    );

    // 2. SMTP answering 451 to every message, Twilio down.
    let port = free_port();
    let mut args = common(port, "b.db");
    args.extend(["--smtp-url".into(), smtp.url()]);
    let mut server = TracedServer::spawn(dir.path(), port, &args);
    assert!(server.wait_healthy(&client).await);
    for (label, text) in drive(&client, port, canary("API token")).await {
        places += 1;
        found.extend(canaries_in(&format!("451 and Twilio down, {label}"), &text));
    }
    let log = server.stop();
    log_bytes += log.len();
    places += 1;
    found.extend(canaries_in("451 and Twilio down, trace log", &log));

    // 3. SMTP credentials a server cannot take (it offers no AUTH): serve refuses to start.
    let port = free_port();
    let mut args = common(port, "c.db");
    args.extend([
        "--smtp-url".into(),
        format!(
            "smtp://mailer:{}@127.0.0.1:{}",
            canary("SMTP password"),
            smtp.port
        ),
    ]);
    smtp.set_failing(false);
    let mut server = TracedServer::spawn(dir.path(), port, &args);
    assert!(
        !server.wait_healthy(&client).await,
        "serve refuses credentials the server cannot take"
    );
    let log = server.stop();
    log_bytes += log.len();
    places += 1;
    assert!(log.contains("TRELLIS_SMTP_URL"), "{log}");
    found.extend(canaries_in("refused start, stderr", &log));

    // 3b. A server that offers AUTH and refuses the credentials (535).
    let (mut refusing, refusing_port) = smtp_refusing_auth();
    let port = free_port();
    let mut args = common(port, "d.db");
    args.extend([
        "--smtp-url".into(),
        format!(
            "smtp://mailer:{}@127.0.0.1:{refusing_port}",
            canary("SMTP password")
        ),
    ]);
    let mut server = TracedServer::spawn(dir.path(), port, &args);
    let started = server.wait_healthy(&client).await;
    let log = server.stop();
    let _ = refusing.kill();
    let _ = refusing.wait();
    log_bytes += log.len();
    places += 1;
    assert!(
        !started,
        "serve refuses credentials the server refuses: {log}"
    );
    assert!(
        log.contains("535") || log.to_lowercase().contains("credentials"),
        "{log}"
    );
    found.extend(canaries_in("SMTP AUTH refused, stderr", &log));

    // 4. Template output, in process: a delivered email and SMS with every secret set.
    let twilio = TwilioServer::start(0).await;
    let flags = fixture_flags(fixture.path());
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let smtp_url = smtp.url();
    args.extend([
        "--smtp-url",
        &smtp_url,
        "--twilio-base-url",
        &twilio.base,
        "--twilio-account-sid",
        "AC1",
        "--twilio-auth-token",
        canary("Twilio auth token"),
        "--secret-key",
        canary("secret key"),
        "--quiet-hours-sms",
        "none",
    ]);
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &args).await;
    app.call("PUT", "/v1/customers/victim", Some(json!({"email": "victim@example.com", "phone": "+14155550123", "attributes": {"name": "Vic"}, "consent": {"email": true, "sms": true}}))).await;
    app.call(
        "POST",
        "/v1/events",
        Some(json!({"customer_id": "victim", "name": "ping", "properties": {"note": "hi"}})),
    )
    .await;
    let (_, drained) = app.settle().await;
    let (_, view) = app.call("GET", "/v1/customers/victim", None).await;
    assert_eq!(drained.sent, 2, "{drained:?} {view}");
    for mail in smtp.messages() {
        places += 1;
        found.extend(canaries_in("delivered email", &mail));
    }
    for sms in twilio.received.lock().unwrap().iter() {
        places += 1;
        // The Authorization header to Twilio is where the token belongs; the rest is output.
        found.extend(canaries_in(
            "delivered SMS",
            &format!("{} {:?}", sms.path, sms.form),
        ));
    }
    let openapi = std::fs::read_to_string(root().join("src/api/openapi.json")).unwrap();
    places += 1;
    found.extend(canaries_in("openapi.json", &openapi));

    assert!(found.is_empty(), "secrets shown:\n{}", found.join("\n"));
    println!(
        "RELIABILITY secret_canaries: {} canaries, {places} places checked ({} KiB of trace logs), 0 occurrences",
        CANARIES.len(),
        log_bytes / 1024
    );
}

#[tokio::test]
async fn paths_out_of_the_workflows_and_templates_folders_are_refused_with_a_problem() {
    use std::os::unix::fs::symlink;
    let fixture = hostile_fixture();
    let base = fixture.path();
    let (workflows, templates) = (base.join("workflows"), base.join("templates"));
    // What the attacker wants read: files beside (not inside) the two folders.
    let outside = base.join("outside");
    std::fs::create_dir_all(outside.join("stolen_mail")).unwrap();
    std::fs::create_dir_all(outside.join("segments")).unwrap();
    for part in ["subject", "html", "text"] {
        std::fs::write(
            outside.join(format!("stolen_mail/{part}.hbs")),
            "OUTSIDE-SECRET",
        )
        .unwrap();
    }
    std::fs::write(outside.join("secret.hbs"), "OUTSIDE-SECRET").unwrap();
    std::fs::write(
        outside.join("flow.yaml"),
        "id: stolen\nname: OUTSIDE-SECRET\ntrigger:\n  event:\n    name: x\nstart: done\nnodes:\n  done: exit\n",
    )
    .unwrap();
    std::fs::write(
        outside.join("segments.yaml"),
        "segments:\n  stolen:\n    when:\n      event_count: { event: x }\n",
    )
    .unwrap();
    std::fs::write(
        outside.join("segments/more.yaml"),
        "segments:\n  stolen_too:\n    when:\n      event_count: { event: x }\n",
    )
    .unwrap();

    std::fs::create_dir_all(templates.join("partials")).unwrap();
    let attacks: Vec<(&str, std::path::PathBuf)> = vec![
        (
            "a partial linked to a file outside",
            templates.join("partials/stolen.hbs"),
        ),
        (
            "a partial linked to /etc/passwd",
            templates.join("partials/passwd.hbs"),
        ),
        (
            "a template folder linked outside",
            templates.join("linked_mail"),
        ),
        (
            "a template part linked outside",
            templates.join("half/html.hbs"),
        ),
        (
            "an SMS template linked to /etc/hostname",
            templates.join("host_sms/sms.hbs"),
        ),
        (
            "a partial named ../../etc/passwd",
            templates.join("dotdot/html.hbs"),
        ),
        (
            "a partial named /etc/passwd",
            templates.join("absolute/html.hbs"),
        ),
        (
            "a workflow file linked outside",
            workflows.join("stolen.yaml"),
        ),
        (
            "a segments file linked outside",
            workflows.join("segments.yml"),
        ),
        (
            "a segments folder linked outside",
            workflows.join("segments"),
        ),
        (
            "a workflow naming template ../outside/stolen_mail",
            workflows.join("climb.yaml"),
        ),
        (
            "a workflow naming template /etc",
            workflows.join("root.yaml"),
        ),
    ];
    symlink(outside.join("secret.hbs"), &attacks[0].1).unwrap();
    symlink("/etc/passwd", &attacks[1].1).unwrap();
    symlink(outside.join("stolen_mail"), &attacks[2].1).unwrap();
    std::fs::create_dir_all(templates.join("half")).unwrap();
    std::fs::write(templates.join("half/subject.hbs"), "Hi").unwrap();
    std::fs::write(templates.join("half/text.hbs"), "Hi").unwrap();
    symlink(outside.join("secret.hbs"), &attacks[3].1).unwrap();
    std::fs::create_dir_all(templates.join("host_sms")).unwrap();
    symlink("/etc/hostname", &attacks[4].1).unwrap();
    for (folder, partial) in [("dotdot", "../../etc/passwd"), ("absolute", "/etc/passwd")] {
        std::fs::create_dir_all(templates.join(folder)).unwrap();
        std::fs::write(templates.join(format!("{folder}/subject.hbs")), "Hi").unwrap();
        std::fs::write(templates.join(format!("{folder}/text.hbs")), "Hi").unwrap();
        std::fs::write(
            templates.join(format!("{folder}/html.hbs")),
            format!("{{{{> {partial}}}}}"),
        )
        .unwrap();
    }
    symlink(outside.join("flow.yaml"), &attacks[7].1).unwrap();
    symlink(outside.join("segments.yaml"), &attacks[8].1).unwrap();
    symlink(outside.join("segments"), &attacks[9].1).unwrap();
    for (file, template) in [
        ("climb.yaml", "../outside/stolen_mail"),
        ("root.yaml", "/etc"),
    ] {
        let id = file.trim_end_matches(".yaml");
        std::fs::write(
            workflows.join(file),
            format!("id: {id}\nname: {id}\ntrigger:\n  event:\n    name: x\nstart: mail\nnodes:\n  mail:\n    send_email:\n      template: \"{template}\"\n      next: done\n  done: exit\n"),
        )
        .unwrap();
    }
    // A link that stays inside is fine: a partial shared under two names.
    std::fs::write(templates.join("partials/footer.hbs"), "Bye").unwrap();
    symlink(
        templates.join("partials/footer.hbs"),
        templates.join("partials/signoff.hbs"),
    )
    .unwrap();

    let checked = trellis::workflow::validate::check_paths(&[workflows.as_path()], &templates);
    let shown: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
    let mut unrefused = Vec::new();
    for (what, path) in &attacks {
        let name = path.file_name().unwrap().to_str().unwrap();
        let parent = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let named = shown.iter().any(|p| {
            (p.contains(&format!("{parent}/{name}"))
                || p.contains(&format!("{name}:"))
                || p.contains(&format!("{name} ")))
                && (p.contains("outside")
                    || p.contains("not found")
                    || p.contains("no email template")
                    || p.contains("no template"))
        });
        if !named {
            unrefused.push(format!("{what} ({})", path.display()));
        }
    }
    assert!(
        !shown.iter().any(|p| p.contains("signoff")),
        "a link inside the folder is fine: {shown:#?}"
    );
    assert!(
        unrefused.is_empty(),
        "not refused:\n{}\nproblems:\n{}",
        unrefused.join("\n"),
        shown.join("\n")
    );
    // Nothing from outside was loaded.
    assert!(checked.templates.kinds("linked_mail").is_none());
    assert!(checked.templates.kinds("host_sms").is_none());
    assert!(!checked.workflows.iter().any(|w| w.id.as_str() == "stolen"));
    assert!(
        !checked.segments.iter().any(|s| s.id.starts_with("stolen")),
        "{:?}",
        checked.segments
    );
    // And serve says so and does not start.
    let flags = fixture_flags(base);
    let mut args: Vec<&str> = vec!["--api-token", "a-token-of-sixteen+"];
    args.extend(flags.iter().map(String::as_str));
    let err = build_error(&args).await.expect("serve refuses to start");
    assert!(err.contains("outside"), "{err}");
    println!(
        "RELIABILITY paths: {} path attacks, {} refused with a problem, 0 files from outside loaded",
        attacks.len(),
        attacks.len() - unrefused.len()
    );
}

/// A listener that keeps the raw text of every request it gets and answers 200.
async fn recording_listener(addr: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut len = 0;
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf[len..]))
                        .await
                {
                    if n == 0 {
                        break;
                    }
                    len += n;
                    let text = String::from_utf8_lossy(&buf[..len]);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let want = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= want {
                            break;
                        }
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..len]).into_owned());
                let _ = stream.write_all(OK_REPLY.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (local, seen)
}

#[tokio::test]
async fn a_webhook_built_from_customer_data_reaches_no_internal_host_and_injects_no_header() {
    let (victim, hits) = counting_listener("127.0.0.1:0".parse().unwrap(), OK_REPLY.into())
        .await
        .unwrap();
    let (partner, received) = recording_listener("127.0.0.2:0".parse().unwrap()).await;
    let fixture = hostile_fixture();
    std::fs::write(
        fixture.path().join("workflows/hook.yaml"),
        "id: hook\nname: Hook\ntrigger:\n  event:\n    name: hook\nentry: every_time\nstart: call\nnodes:\n  call:\n    webhook:\n      url: \"http://{{{event.properties.host}}}/hook?name={{event.properties.name}}\"\n      headers:\n        X-Name: \"{{event.properties.name}}\"\n      body:\n        name: \"{{event.properties.name}}\"\n      next: done\n  done: exit\n",
    )
    .unwrap();
    let flags = fixture_flags(fixture.path());
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--webhook-allow", "127.0.0.2"]);
    let app = spawn_app_in(tempfile::tempdir().unwrap(), &args).await;
    let v = victim.to_string();
    let hosts = [
        v.clone(),
        format!("localhost:{}", victim.port()),
        format!("[::ffff:127.0.0.1]:{}", victim.port()),
        format!("2130706433:{}", victim.port()),
        format!("{partner}@{v}"),
        format!("{v}#@{partner}"),
        format!("{v}/x?@{partner}"),
    ];
    for (i, host) in hosts.iter().enumerate() {
        let (status, body) = app
            .call(
                "POST",
                "/v1/events",
                Some(json!({"customer_id": format!("c{i}"), "name": "hook", "properties": {"host": host, "name": "Vic"}})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // The allowlisted partner gets the plain call (also when a backslash, which URLs read as
    // a slash, puts the victim in the path), and those with a header-breaking name fail at
    // once: not retried and not split into headers.
    let backslash = format!("{partner}\\@{v}");
    for (id, host, name) in [
        ("ok", partner.to_string(), "Vic"),
        ("backslash", backslash, "Vic"),
        ("query", partner.to_string(), "Vic&admin=1#x/../y"),
        ("crlf", partner.to_string(), "Vic\r\nX-Injected: 1"),
        ("lf", partner.to_string(), "Vic\nX-Injected: 1"),
    ] {
        app.call(
            "POST",
            "/v1/events",
            Some(json!({"customer_id": id, "name": "hook", "properties": {"host": host, "name": name}})),
        )
        .await;
    }
    app.settle().await;
    let mut outcomes = Vec::new();
    for id in (0..hosts.len()).map(|i| format!("c{i}")).chain([
        "ok".into(),
        "backslash".into(),
        "query".into(),
        "crlf".into(),
        "lf".into(),
    ]) {
        let (_, view) = app.call("GET", &format!("/v1/customers/{id}"), None).await;
        let m = &view["messages"][0];
        outcomes.push((
            id,
            m["status"].as_str().unwrap_or_default().to_owned(),
            m["last_error"].to_string(),
        ));
    }
    let failed_refused = outcomes
        .iter()
        .take(hosts.len())
        .filter(|(_, status, error)| status == "failed" && error.contains("refused"))
        .count();
    assert_eq!(failed_refused, hosts.len(), "{outcomes:#?}");
    assert_eq!(outcomes[hosts.len()].1, "sent", "{outcomes:#?}");
    assert_eq!(outcomes[hosts.len() + 1].1, "sent", "{outcomes:#?}");
    assert_eq!(outcomes[hosts.len() + 2].1, "sent", "{outcomes:#?}");
    for (id, status, error) in &outcomes[hosts.len() + 3..] {
        assert_eq!(
            status, "failed",
            "{id}: a bad header value is permanent: {error}"
        );
    }
    let requests = received.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let lines: Vec<&str> = requests
        .iter()
        .map(|r| r.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with("/hook?name=Vic HTTP/1.1"))
            .count(),
        2,
        "{lines:#?}"
    );
    // Data in the URL stays one value: no extra parameter, fragment or path step.
    assert!(
        lines.contains(&"POST /hook?name=Vic%26admin%3D1%23x%2F..%2Fy HTTP/1.1"),
        "{lines:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.to_ascii_lowercase().contains("\r\nx-injected")),
        "{requests:#?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the loopback victim was reached"
    );
    println!(
        "RELIABILITY webhook_from_data: {} attacker-built URLs refused, 0 connections to loopback; 3 partner calls delivered (data in the URL percent-encoded), 2 header-breaking values failed without a retry or an injected header",
        hosts.len()
    );
}

/// Raw requests a client library would never send, for the real server's HTTP parser.
fn raw_requests(port: u16) -> Vec<(String, Vec<u8>)> {
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let event = r#"{"customer_id":"victim","name":"signup"}"#;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |label: &str, bytes: Vec<u8>| out.push((label.to_owned(), bytes));
    add(
        "giant header",
        format!(
            "GET /v1/customers/victim HTTP/1.1\r\n{host}{auth}X-Junk: {}\r\n\r\n",
            "j".repeat(1_000_000)
        )
        .into_bytes(),
    );
    add(
        "many headers",
        format!(
            "GET /v1/customers/victim HTTP/1.1\r\n{host}{auth}{}\r\n",
            "X-A: b\r\n".repeat(200)
        )
        .into_bytes(),
    );
    add(
        "giant path",
        format!(
            "GET /v1/customers/{} HTTP/1.1\r\n{host}{auth}\r\n",
            "a".repeat(100_000)
        )
        .into_bytes(),
    );
    add("no version", b"GET /healthz\r\n\r\n".to_vec());
    add("HTTP/0.9", b"GET /healthz\r\n".to_vec());
    add(
        "HTTP/2 preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
    );
    add(
        "HTTP/3.0",
        format!("GET /healthz HTTP/3.0\r\n{host}\r\n").into_bytes(),
    );
    add(
        "lower-case method",
        format!("get /healthz HTTP/1.1\r\n{host}\r\n").into_bytes(),
    );
    add(
        "NUL in the path",
        format!("GET /v1/customers/vic\0tim HTTP/1.1\r\n{host}{auth}\r\n").into_bytes(),
    );
    add(
        "space in the path",
        format!("GET /v1/customers/vic tim HTTP/1.1\r\n{host}{auth}\r\n").into_bytes(),
    );
    add(
        "raw dot segments",
        format!("GET /v1/customers/../../etc/passwd HTTP/1.1\r\n{host}{auth}\r\n").into_bytes(),
    );
    add(
        "encoded dot segments",
        format!("GET /v1/customers/..%2f..%2fetc%2fpasswd HTTP/1.1\r\n{host}{auth}\r\n")
            .into_bytes(),
    );
    add(
        "double-encoded",
        format!("DELETE /v1/customers/%2576ictim HTTP/1.1\r\n{host}{auth}\r\n").into_bytes(),
    );
    add(
        "invalid UTF-8 in the path",
        format!("GET /v1/customers/%c0%ae HTTP/1.1\r\n{host}{auth}\r\n").into_bytes(),
    );
    add(
        "raw byte 0xff in the path",
        [
            b"GET /v1/customers/\xff HTTP/1.1\r\n".as_slice(),
            host.as_bytes(),
            auth.as_bytes(),
            b"\r\n",
        ]
        .concat(),
    );
    add(
        "asterisk form",
        format!("OPTIONS * HTTP/1.1\r\n{host}\r\n").into_bytes(),
    );
    add(
        "authority form",
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{host}\r\n").into_bytes(),
    );
    add(
        "header without a colon",
        format!("GET /healthz HTTP/1.1\r\n{host}Broken header\r\n\r\n").into_bytes(),
    );
    add(
        "space before the colon",
        format!("GET /healthz HTTP/1.1\r\n{host}X-A : b\r\n\r\n").into_bytes(),
    );
    add(
        "NUL in a header",
        format!("GET /v1/workflows HTTP/1.1\r\n{host}{auth}X-A: b\0c\r\n\r\n").into_bytes(),
    );
    add(
        "bare LF line ends",
        format!("GET /healthz HTTP/1.1\n{}\n", host.trim_end()).into_bytes(),
    );
    add(
        "obsolete folding",
        format!("GET /v1/workflows HTTP/1.1\r\n{host}Authorization: Bearer\r\n {TOKEN}\r\n\r\n")
            .into_bytes(),
    );
    add(
        "negative Content-Length",
        format!("POST /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: -1\r\n\r\n{event}")
            .into_bytes(),
    );
    add("huge Content-Length", format!("POST /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: 99999999999999999999\r\n\r\n{event}").into_bytes());
    add("two Content-Lengths", format!("POST /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: 5\r\nContent-Length: {}\r\n\r\n{event}", event.len()).into_bytes());
    add("Content-Length and chunked", format!("POST /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: {}\r\n\r\n{event}", event.len()).into_bytes());
    add("bad chunk size", format!("POST /v1/events HTTP/1.1\r\n{host}{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\n{event}\r\n0\r\n\r\n").into_bytes());
    add(
        "chunked, obfuscated",
        format!(
            "POST /v1/events HTTP/1.1\r\n{host}{auth}Transfer-Encoding: xchunked\r\n\r\n{event}"
        )
        .into_bytes(),
    );
    add("body shorter than Content-Length", format!("POST /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: 1000\r\nConnection: close\r\n\r\n{event}").into_bytes());
    add("giant chunked body", {
        let mut b = format!(
            "POST /v1/events/batch HTTP/1.1\r\n{host}{auth}Transfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..40 {
            b.extend_from_slice(format!("8000\r\n{}\r\n", "[".repeat(0x8000)).as_bytes());
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    });
    add("expect 100-continue over the limit", format!("POST /v1/events/batch HTTP/1.1\r\n{host}{auth}Expect: 100-continue\r\nContent-Length: 50000000\r\n\r\n").into_bytes());
    add(
        "unknown method with a body",
        format!(
            "BREW /v1/events HTTP/1.1\r\n{host}{auth}Content-Length: {}\r\n\r\n{event}",
            event.len()
        )
        .into_bytes(),
    );
    add("absolute form elsewhere", format!("POST http://evil.example/v1/events HTTP/1.1\r\nHost: evil.example\r\n{auth}Content-Length: 5\r\n\r\n{{bad}}").into_bytes());
    add(
        "TRACE",
        format!("TRACE /v1/customers/victim HTTP/1.1\r\n{host}{auth}\r\n").into_bytes(),
    );
    add(
        "garbage",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    );
    add("empty lines only", b"\r\n\r\n\r\n\r\n".to_vec());
    out
}

/// Reads one HTTP response (after any `100 Continue`): until its `Content-Length` is in,
/// the server closes, or 5 s pass. When the server still waits for more of the request
/// after 300 ms, the client hangs up its side, as a client that gave up would.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut hung_up = false;
    loop {
        let wait = if hung_up {
            deadline
        } else {
            (tokio::time::Instant::now() + Duration::from_millis(300)).min(deadline)
        };
        let n = match tokio::time::timeout_at(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Err(_) if !hung_up => {
                let _ = stream.shutdown().await;
                hung_up = true;
                continue;
            }
            _ => break,
        };
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let text = text
            .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap_or(&text);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    reply
}

#[tokio::test]
async fn the_real_server_answers_raw_malformed_http_with_a_4xx_and_writes_nothing() {
    use tokio::io::AsyncWriteExt;
    let fixture = hostile_fixture();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = dir.path().join("raw.db");
    let mut args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--api-token".into(),
        TOKEN.into(),
        "--database-url".into(),
        format!("sqlite://{}", db.display()),
        "--outbox".into(),
        dir.path().join("outbox").display().to_string(),
    ];
    args.extend(fixture_flags(fixture.path()));
    let mut server = TracedServer::spawn(dir.path(), port, &args);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(server.wait_healthy(&client).await);
    let base = format!("http://127.0.0.1:{port}");
    let put = client
        .put(format!("{base}/v1/customers/victim"))
        .bearer_auth(TOKEN)
        .json(&json!({"email": VICTIM_EMAIL, "consent": {"email": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    // Let the scheduler take the profile event before the snapshot.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let before = snapshot_of(&pool).await;
    let requests = raw_requests(port);
    let rounds = size(5, 50);
    let mut wrong = Vec::new();
    let (mut answered, mut closed, mut json_bodies, mut bare) = (0, 0, 0, Vec::new());
    let mut closed_labels: Vec<String> = Vec::new();
    for _ in 0..rounds {
        for (label, bytes) in &requests {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let _ = stream.write_all(bytes).await;
            // The write side stays open: hyper drops a response when the client half-closes.
            let reply = read_response(&mut stream).await;
            let text = String::from_utf8_lossy(&reply);
            if label.contains("over the limit")
                && (text.starts_with("HTTP/1.1 100") || !text.contains("connection: close"))
            {
                wrong.push(format!(
                    "{label}: not refused at once with the connection closed: {text}"
                ));
            }
            // An interim `100 Continue` comes before the answer.
            let text = text
                .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
                .unwrap_or(&text);
            let Some(status) = text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else {
                // The parser gave up without an answer (a TLS hello, a body cut short).
                closed += 1;
                if !closed_labels.contains(label) {
                    closed_labels.push(label.clone());
                }
                continue;
            };
            answered += 1;
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if !(400..500).contains(&status) {
                wrong.push(format!("{label}: {}", &text[..text.len().min(300)]));
            } else if is_problem_body(body.as_bytes()) {
                json_bodies += 1;
            } else if body.is_empty() && !bare.iter().any(|(l, _)| l == label) {
                bare.push((label.clone(), status));
            } else if !body.is_empty() {
                wrong.push(format!(
                    "{label}: a 4xx with a body that is not a problem: {}",
                    &text[..text.len().min(300)]
                ));
            }
        }
    }
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server is still up");
    let after = snapshot_of(&pool).await;
    let _ = server.stop();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(before, after, "a malformed request wrote to the database");
    println!(
        "RELIABILITY raw_http: {} raw malformed requests to the real server, {answered} answered 4xx ({json_bodies} with a JSON problem, the rest by the HTTP parser without a body: {bare:?}), {closed} closed unanswered ({closed_labels:?}), 0 5xx, 0 rows changed, still healthy",
        requests.len() * rounds
    );
}
