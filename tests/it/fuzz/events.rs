//! Fuzz targets: one event as `POST /v1/events` reads it (`EventIn` and `into_event`), and
//! batches as `POST /v1/events/batch` reads them (a JSON array, or NDJSON).

use jiff::Timestamp;
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

/// A JSON string of [`text`].
fn quoted(rng: &mut Rng) -> String {
    serde_json::to_string(&text(rng)).expect("a string serialises")
}

/// Any JSON value, up to `depth` levels of arrays and objects, written out directly (cheaper
/// than building a `Value` in a debug build).
fn value(rng: &mut Rng, depth: usize, out: &mut String) {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => out.push_str("null"),
        1 => out.push_str(if rng.one_in(2) { "true" } else { "false" }),
        2 => out.push_str(rng.pick::<&str>(&[
            "-9223372036854775808",
            "9223372036854775807",
            "18446744073709551615",
            "0",
            "-1",
            "9007199254740993",
        ])),
        3 => out.push_str(rng.pick::<&str>(&[
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "-0.0",
            "1e-300",
            "0.1",
        ])),
        4 => out.push_str(&quoted(rng)),
        5 => {
            out.push('[');
            for i in 0..rng.below(4) {
                if i > 0 {
                    out.push(',');
                }
                value(rng, depth - 1, out);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            for i in 0..rng.below(4) {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&quoted(rng));
                out.push(':');
                value(rng, depth - 1, out);
            }
            out.push('}');
        }
    }
}

/// An event object: each field well formed, of the wrong type, hostile or absent.
fn event(rng: &mut Rng) -> String {
    let mut out = String::from("{");
    let mut first = true;
    for field in ["id", "customer_id", "name", "timestamp", "properties"] {
        if rng.one_in(6) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&format!("\"{field}\":"));
        match rng.below(4) {
            0 | 1 => out.push_str(&match field {
                "id" => format!("\"e{}\"", rng.below(1000)),
                "customer_id" => "\"ada\"".into(),
                "name" => "\"order_completed\"".into(),
                "timestamp" => "\"2026-03-02T15:00:00Z\"".into(),
                _ => "{\"value\":20,\"items\":[{\"sku\":\"A1\"}]}".into(),
            }),
            2 => out.push_str(&quoted(rng)),
            _ => value(rng, 3, &mut out),
        }
    }
    if rng.one_in(20) {
        if !first {
            out.push(',');
        }
        out.push_str(&quoted(rng));
        out.push(':');
        value(rng, 1, &mut out);
    }
    out.push('}');
    out
}

/// An event body: generated, a mutated generated one, or raw bytes.
fn event_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => raw(rng, 256),
        1..=3 => {
            let seed = event(rng).into_bytes();
            let other = event(rng).into_bytes();
            mutate(rng, &seed, &other, JSON_TOKENS, JSON_NESTING)
        }
        _ => event(rng).into_bytes(),
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
                format!(
                    "{{\"customer_id\":\"c{}\",\"name\":\"order_completed\",\"properties\":{{\"value\":{}}}}}",
                    rng.below(100),
                    rng.below(1000)
                )
                .into_bytes()
            } else if !rng.one_in(4) {
                event(rng).into_bytes()
            } else {
                event_body(rng)
            }
        })
        .collect();
    let mut body = if ndjson {
        let mut body = Vec::new();
        for line in events {
            // A newline inside an event (from a mutation) makes two hostile lines.
            body.extend_from_slice(&line);
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
