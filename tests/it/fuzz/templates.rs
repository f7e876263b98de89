//! Fuzz target: template sources (compiled and checked as the loader checks a file, then
//! rendered inline as webhook strings are) and hostile render contexts (every shipped
//! template rendered against them).

use std::path::Path;

use serde_json::{Value, json};
use trellis::template::Templates;

use super::mutate::{HOSTILE, corpus, mutate, raw};
use super::{Rng, run};
use crate::helpers::{root, templates};

/// Handlebars pieces a mutation may insert.
const HBS_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{{{",
    "}}}",
    "{{&",
    "{{~",
    "~}}",
    "\\{{",
    "{{!-- ",
    " --}}",
    "{{! ",
    "{{else}}",
    "{{^}}",
    "{{#if customer.email}}",
    "{{/if}}",
    "{{#unless x}}",
    "{{#each event.properties.items}}",
    "{{/each}}",
    "{{#each this as |a b|}}",
    "{{#with customer}}",
    "{{/with}}",
    "{{> greeting}}",
    "{{> layout}}",
    "{{> (lookup . \"x\")}}",
    "{{> missing}}",
    "{{#> layout}}",
    "{{/layout}}",
    "{{> @partial-block}}",
    "{{#*inline \"p\"}}",
    "{{/inline}}",
    "{{> p}}",
    "{{*decorator}}",
    "{{{{raw}}}}",
    "{{{{/raw}}}}",
    "{{lookup customer.attributes \"x\"}}",
    "{{lookup this 99999999999999999999}}",
    "{{@root.customer.id}}",
    "{{../../../../x}}",
    "{{this.[weird key]}}",
    "{{customer.attributes.[0]}}",
    "{{date event.timestamp format=\"%Y-%m-%d %H:%M %Z %:z %q %n\"}}",
    "{{date event.timestamp format=\"%\"}}",
    "{{date customer.attributes.coupon_expires format=\"short\"}}",
    "{{date \"+99999-01-01T00:00:00Z\"}}",
    "{{date 1e308}}",
    "{{date}}",
    "{{money 1e308 currency=\"JPY\"}}",
    "{{money -1e-308}}",
    "{{money \"NaN\"}}",
    "{{money event.properties.total currency=customer}}",
    "{{money}}",
    "{{default}}",
    "{{default customer.attributes.x}}",
    "{{default customer.attributes.x \"there\"}}",
    "{{len event.properties.items}}",
    "{{eq 1 1 1}}",
    "{{#if (and (or a b) (not c))}}",
    "{{log \"x\" level=\"error\"}}",
    "(",
    ")",
    "=",
    "\"",
    "|",
];

/// Openers and closers for deep nesting: blocks, subexpressions, partial blocks, raw blocks.
const HBS_NESTING: &[(&str, &str)] = &[
    ("{{#if customer.email}}", "{{/if}}"),
    ("{{#each event.properties.items}}", "{{/each}}"),
    ("{{#with customer}}", "{{/with}}"),
    ("{{#> layout}}", "{{/layout}}"),
    ("{{#*inline \"p\"}}", "{{/inline}}"),
    ("{{not (not ", "true))}}"),
    ("(", ")"),
    ("{{{{raw}}}}", "{{{{/raw}}}}"),
];

/// A context like the engine's, its free fields hostile, its types sometimes wrong.
fn context(rng: &mut Rng) -> Value {
    let text = |rng: &mut Rng| -> Value {
        match rng.below(6) {
            0 => Value::String("x".repeat(rng.size(50_000))),
            1 => json!(*rng.pick(&[1e308, -1e308, f64::MIN_POSITIVE, -0.0])),
            2 => json!(*rng.pick(&[i64::MIN, i64::MAX])),
            3 => json!([[[[[["deep"]]]]]]),
            4 => Value::Null,
            _ => Value::String((*rng.pick(HOSTILE)).to_owned()),
        }
    };
    let mut deep = json!("bottom");
    for _ in 0..rng.size(55) {
        deep = json!({ "a": [deep] });
    }
    let timestamps = [
        "2026-03-01T10:00:00Z",
        "+9999-12-31T23:59:59Z",
        "-009999-01-01T00:00:00Z",
        "not a time",
        "",
    ];
    let context = json!({
        "customer": {
            "id": "c1",
            "email": text(rng),
            "phone": text(rng),
            "timezone": *rng.pick(&["Europe/Paris", "Mars/Olympus", "", "../../etc", "UTC"]),
            "locale": *rng.pick(&["de-AT", "fr", "es_ES", "en-US", "", "\u{0}", "zz-ZZ-x-private"]),
            "attributes": {
                "first_name": text(rng),
                "coupon_code": text(rng),
                "coupon_expires": *rng.pick(&["2026-03-08", "9999-12-31", "-9999-01-01", "2026-02-30", "x"]),
                "birthday": text(rng),
                "x": deep,
            },
            "tags": [text(rng)],
            "consent": { "email": true, "sms": text(rng) },
        },
        "event": {
            "id": "e1",
            "name": "cart_updated",
            "timestamp": *rng.pick(&timestamps),
            "properties": {
                "total": text(rng),
                "items": [{ "name": text(rng), "quantity": text(rng), "price": text(rng) }],
            },
        },
        "workflow": { "id": "w", "name": text(rng) },
        "links": { "unsubscribe": text(rng) },
    });
    if rng.one_in(10) {
        // The wrong shape altogether.
        return match rng.below(3) {
            0 => json!({ "customer": "c1", "event": [], "links": 1 }),
            1 => json!([context]),
            _ => Value::Null,
        };
    }
    context
}

/// The shipped template folders, to render against hostile contexts.
const SHIPPED: &[&str] = &[
    "birthday",
    "cart_reminder",
    "cart_sms",
    "newsletter",
    "nudge",
    "tips",
    "welcome",
    "winback_offer",
];

/// Renders every part of a shipped template: a `Result` either way, never a panic.
fn render_shipped(templates: &Templates, name: &str, context: &Value) {
    let kinds = templates.kinds(name).expect("a shipped template");
    if kinds.email
        && let Err(err) = templates.render_email(name, context)
    {
        assert!(!err.to_string().trim().is_empty());
    }
    if kinds.sms
        && let Err(err) = templates.render_sms(name, context)
    {
        assert!(!err.to_string().trim().is_empty());
    }
}

#[test]
fn template_sources_and_contexts_are_refused_clearly_or_rendered() {
    let mut seeds = Vec::new();
    corpus(&root().join("templates"), &["hbs"], &mut seeds);
    corpus(&root().join("tests/fixtures"), &["hbs"], &mut seeds);
    assert!(seeds.len() > 20, "the shipped templates are the seeds");
    let templates = templates();
    // A few contexts reused for the sources; the context inputs make their own.
    let mut setup = Rng(0x5eed);
    let contexts: Vec<Value> = (0..8).map(|_| context(&mut setup)).collect();
    // The first byte: bit 0 HTML, bits 1..3 the context, bit 3 rendered rather than checked,
    // bit 4 a context input (the rest is JSON to render a shipped template against) rather
    // than a template source.
    run(
        "templates",
        |rng| {
            let flags = rng.next() as u8 & 0x0f;
            if rng.one_in(5) {
                let mut input = vec![flags | 0x10];
                input.extend(context(rng).to_string().into_bytes());
                return input;
            }
            let mut input = vec![flags];
            input.extend(match rng.below(10) {
                0 => raw(rng, 512),
                _ => {
                    let seed = rng.pick(&seeds);
                    let other = rng.pick(&seeds);
                    mutate(rng, seed, other, HBS_TOKENS, HBS_NESTING)
                }
            });
            input
        },
        |input| {
            let (flags, body) = (input[0], &input[1..]);
            if flags & 0x10 != 0 {
                let context: Value = serde_json::from_slice(body).expect("generated JSON");
                let name = SHIPPED[usize::from(flags & 0x0f) % SHIPPED.len()];
                render_shipped(&templates, name, &context);
                return;
            }
            let text = String::from_utf8_lossy(body);
            let html = flags & 1 == 1;
            let context = &contexts[usize::from((flags >> 1) & 0x03) % contexts.len()];
            // Either checked as a file, or rendered as a webhook string (each compiles it).
            if flags & 0x08 == 0 {
                for p in templates.check_source(Path::new("fuzz.hbs"), &text, html) {
                    assert!(!p.message.trim().is_empty(), "{p:?}");
                }
            } else if let Err(err) = templates.render_inline(&text, context) {
                assert!(!err.to_string().trim().is_empty());
            }
        },
    );
}
