//! Fuzz targets: one event as `POST /v1/events` reads it (`EventIn` and `into_event`), and
//! batches as `POST /v1/events/batch` reads them (a JSON array, or NDJSON).

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use trellis::api::ApiError;
use trellis::api::error::parse_json;
use trellis::api::events::{EventIn, parse_batch};

use super::mutate::{HOSTILE, mutate, raw};
use super::{Rng, run};

/// JSON fragments a mutation may insert.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\"customer_id\":",
    "\"name\":",
    "\"timestamp\":",
    "\"properties\":",
    "\"id\":",
    "\"extra\":",
    "null",
    "1e400",
    "-1e-400",
    "0.",
    ".5",
    "01",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "\"\\",
    "tru",
    "[[[[[[[[",
    "{\"a\":{\"a\":",
];

/// Openers and closers for deep nesting.
const JSON_NESTING: &[(&str, &str)] = &[("[", "]"), ("{\"a\":", "}")];

fn now() -> Timestamp {
    "2026-03-02T15:00:00Z".parse().expect("a timestamp")
}

/// A string for an id, a name or a timestamp: well formed, borderline or hostile.
fn text(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => "ada".into(),
        1 => "order_completed".into(),
        2 => "2026-03-02T15:00:00Z".into(),
        3 => "$signup".into(),
        4 => String::new(),
        5 => "x".repeat(rng.size(20_000)),
        6 => String::from_utf8_lossy(&raw(rng, 64)).into_owned(),
        7 => format!(" {} ", rng.pick(HOSTILE)),
        _ => (*rng.pick(HOSTILE)).to_owned(),
    }
}

/// Any JSON value, up to `depth` levels of arrays and objects.
fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 if rng.one_in(4) => json!(u64::MAX),
        2 => json!(*rng.pick(&[i64::MIN, i64::MAX, 0, -1, 9_007_199_254_740_993])),
        3 => json!(*rng.pick(&[f64::MAX, f64::MIN_POSITIVE, -0.0, 1e-300, 0.1])),
        4 => Value::String(text(rng)),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (text(rng), value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// An event object: each field well formed, of the wrong type, hostile or absent.
fn event(rng: &mut Rng) -> Value {
    let mut object = Map::new();
    for field in ["id", "customer_id", "name", "timestamp", "properties"] {
        if rng.one_in(6) {
            continue;
        }
        let good = match field {
            "id" => json!(format!("e{}", rng.below(1000))),
            "customer_id" => json!("ada"),
            "name" => json!("order_completed"),
            "timestamp" => json!("2026-03-02T15:00:00Z"),
            _ => json!({ "value": 20, "items": [{ "sku": "A1" }] }),
        };
        let chosen = match rng.below(4) {
            0 | 1 => good,
            2 => Value::String(text(rng)),
            _ => value(rng, 3),
        };
        object.insert(field.into(), chosen);
    }
    if rng.one_in(20) {
        object.insert(text(rng), value(rng, 1));
    }
    Value::Object(object)
}

/// An event body: generated, a mutated generated one, or raw bytes.
fn event_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => raw(rng, 256),
        1..=3 => {
            let seed = event(rng).to_string().into_bytes();
            let other = event(rng).to_string().into_bytes();
            mutate(rng, &seed, &other, JSON_TOKENS, JSON_NESTING)
        }
        _ => event(rng).to_string().into_bytes(),
    }
}

/// An API error is a sentence, not an empty string.
fn clear(err: &ApiError) {
    assert!(
        !err.to_string().trim().is_empty(),
        "an empty error: {err:?}"
    );
}

#[test]
fn event_json_is_refused_clearly_or_accepted_valid() {
    run("events", event_body, |input| {
        match parse_json::<EventIn>(input).and_then(|e| e.into_event(now())) {
            Ok((customer, event)) => {
                assert!(!customer.as_str().is_empty());
                assert!(!event.name.is_empty() && event.name.len() <= 100);
                assert!(!event.name.starts_with('$'));
            }
            Err(err) => clear(&err),
        }
    });
}

/// A batch: some events as NDJSON lines or a JSON array, some lines mutated or blank.
fn batch(rng: &mut Rng) -> (bool, Vec<u8>) {
    let ndjson = !rng.one_in(4);
    let count = if rng.one_in(400) {
        1000 + rng.below(3)
    } else {
        rng.below(8)
    };
    let events: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            if count > 100 {
                // A full batch: well-formed events, the last few perhaps not.
                json!({ "customer_id": format!("c{}", rng.below(100)), "name": "order_completed",
                        "properties": { "value": rng.below(1000) } })
                .to_string()
                .into_bytes()
            } else if !rng.one_in(4) {
                event(rng).to_string().into_bytes()
            } else {
                event_body(rng)
            }
        })
        .collect();
    let mut body = if ndjson {
        let mut body = Vec::new();
        for line in events {
            body.extend(line.iter().filter(|b| **b != b'\n'));
            body.extend_from_slice(if rng.one_in(10) { b"\r\n\n  \n" } else { b"\n" });
        }
        body
    } else {
        let parts: Vec<String> = events
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect();
        format!("[{}]", parts.join(",")).into_bytes()
    };
    if rng.one_in(4) {
        body = mutate(rng, &body, b"{}\n", JSON_TOKENS, JSON_NESTING);
    }
    // The API refuses a larger body before reading it (`max_body_bytes`, 1 MiB).
    body.truncate(1 << 20);
    (ndjson, body)
}

#[test]
fn ndjson_and_array_batches_are_refused_clearly_or_accepted_whole() {
    // The first byte of the input says which format the body is posted as.
    run(
        "ndjson",
        |rng| {
            let (ndjson, body) = batch(rng);
            let mut input = vec![u8::from(ndjson)];
            input.extend(body);
            input
        },
        |input| {
            let (ndjson, body) = (input[0] == 1, &input[1..]);
            match parse_batch(body, ndjson, now()) {
                Ok(events) => assert!(events.len() <= 1000),
                Err(err) => clear(&err),
            }
        },
    );
}
