//! Rendering tests: escaping of customer data in HTML (whatever path it takes), literal
//! text elsewhere, and render errors that say where and what.

mod errors;
mod escaping;
mod hostile;

use std::path::Path;

use serde_json::{Value, json};

use super::Templates;

/// Customer data that must never become markup.
const HOSTILE: &str = r#"<script>alert(1)</script> & "quoted" 'single'"#;

/// A templates folder in a temporary directory, from `(relative path, text)` pairs.
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (path, text) in files {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("create folder");
        std::fs::write(file, text).expect("write template");
    }
    dir
}

fn load(dir: &Path) -> Templates {
    let (templates, problems) = Templates::load(dir);
    assert!(problems.is_empty(), "template problems: {problems:#?}");
    templates
}

/// One email template `t` whose three parts are the same body.
fn email(body: &str) -> tempfile::TempDir {
    folder(&[
        ("t/subject.hbs", body),
        ("t/html.hbs", body),
        ("t/text.hbs", body),
        ("t/sms.hbs", body),
    ])
}

/// A context whose every free-text field is hostile.
fn hostile_context() -> Value {
    json!({
        "customer": {
            "id": "c1",
            "email": "ada@example.com",
            "phone": null,
            "timezone": "Europe/Paris",
            "locale": HOSTILE,
            "attributes": {
                "first_name": HOSTILE,
                "coupon_code": HOSTILE,
                "coupon_expires": "2026-03-08",
                "currency": HOSTILE,
                "pattern": format!("%Y {HOSTILE}"),
            },
            "tags": [],
            "consent": {},
        },
        "event": {
            "id": "e1",
            "name": "cart_updated",
            "timestamp": "2026-03-01T10:00:00Z",
            "properties": {
                "total": 114,
                "items": [{ "name": HOSTILE, "quantity": 1, "price": 89 }],
            },
        },
        "workflow": { "id": "w", "name": "W" },
        "links": { "unsubscribe": "https://x.invalid/u?c=1&s=2" },
    })
}

fn escaped() -> String {
    handlebars::html_escape(HOSTILE)
}

/// Renders `body` as every part and checks: `literal` escaped in HTML, as is in the rest.
fn assert_escaped_only_in_html(body: &str, literal: &str) {
    let dir = email(body);
    let templates = load(dir.path());
    let context = hostile_context();
    let mail = templates.render_email("t", &context).expect("renders");
    assert!(
        !mail.html.to_lowercase().contains("<script>"),
        "{body}: {}",
        mail.html
    );
    let escaped = handlebars::html_escape(literal);
    assert!(mail.html.contains(&escaped), "{body}: {}", mail.html);
    assert!(mail.text.contains(literal), "{body}: {}", mail.text);
    assert!(mail.subject.contains(literal), "{body}: {}", mail.subject);
    let sms = templates.render_sms("t", &context).expect("renders");
    assert!(sms.contains(literal), "{body}: {sms}");
}
