//! Customer data is escaped in HTML whatever path it takes, and literal elsewhere.

use std::path::{Path, PathBuf};

use super::assert_escaped_only_in_html;
use super::{HOSTILE, email, escaped, folder, hostile_context, load};
use crate::template::Templates;

#[test]
fn a_plain_variable_is_escaped_in_html_only() {
    assert_escaped_only_in_html("{{customer.attributes.first_name}}", HOSTILE);
}

#[test]
fn the_default_helper_is_escaped_in_html_only() {
    assert_escaped_only_in_html(
        r#"{{default customer.attributes.first_name "there"}}"#,
        HOSTILE,
    );
    // The fallback too: it may be a value of the data.
    assert_escaped_only_in_html(
        r#"{{default customer.attributes.nickname customer.attributes.first_name}}"#,
        HOSTILE,
    );
}

#[test]
fn the_money_helper_is_escaped_in_html_only() {
    // An unknown currency code is shown upper-cased, before the amount.
    assert_escaped_only_in_html(
        "{{money 5 currency=customer.attributes.currency}}",
        &format!("{}5.00", HOSTILE.to_uppercase()),
    );
}

#[test]
fn the_date_helper_is_escaped_in_html_only() {
    assert_escaped_only_in_html(
        "{{date customer.attributes.coupon_expires format=customer.attributes.pattern}}",
        &format!("2026 {HOSTILE}"),
    );
}

#[test]
fn a_partial_using_a_helper_is_escaped_in_html_only() {
    let dir = folder(&[
        (
            "partials/hello.hbs",
            r#"Hi {{default customer.attributes.first_name "there"}}"#,
        ),
        ("t/subject.hbs", "{{> hello}}"),
        ("t/html.hbs", "<p>{{> hello}}</p>"),
        ("t/text.hbs", "{{> hello}}"),
    ]);
    let templates = load(dir.path());
    let mail = templates
        .render_email("t", &hostile_context())
        .expect("renders");
    assert_eq!(mail.html, format!("<p>Hi {}</p>", escaped()));
    assert_eq!(mail.text, format!("Hi {HOSTILE}"));
    assert_eq!(
        mail.subject,
        format!("Hi {HOSTILE}")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[test]
fn a_helper_as_a_subexpression_is_escaped_once() {
    assert_escaped_only_in_html(
        r#"{{#if (default customer.attributes.first_name "")}}{{default customer.attributes.first_name "x"}}{{/if}}"#,
        HOSTILE,
    );
    let dir = email(r#"{{lookup customer.attributes (default "" "first_name")}}"#);
    let mail = load(dir.path())
        .render_email("t", &hostile_context())
        .expect("renders");
    assert_eq!(mail.html, escaped());
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

#[test]
fn every_shipped_template_escapes_hostile_customer_and_event_data_in_html_only() {
    let dir = shipped();
    let templates = load(&dir);
    let context = hostile_context();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("templates/ is readable")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != crate::template::PARTIALS_DIR)
        .collect();
    names.sort();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        let kinds = templates.kinds(name).expect("a shipped template loads");
        if kinds.email {
            let mail = templates.render_email(name, &context).expect("renders");
            assert!(!mail.html.contains("<script>"), "{name}: {}", mail.html);
            assert!(!mail.html.contains(r#""quoted""#), "{name}: {}", mail.html);
            // Every shipped email greets by first name (or sets the language) in HTML.
            assert!(mail.html.contains(&escaped()), "{name}: {}", mail.html);
            // The link keeps its query, escaped as HTML attributes need.
            assert!(
                mail.html
                    .contains("https://x.invalid/u?c&#x3D;1&amp;s&#x3D;2"),
                "{name}: {}",
                mail.html
            );
            assert!(!mail.text.contains("&lt;"), "{name}: {}", mail.text);
            assert!(!mail.subject.contains("&lt;"), "{name}: {}", mail.subject);
            if mail.text.contains("Hi ") {
                assert!(mail.text.contains(HOSTILE), "{name}: {}", mail.text);
            }
        }
        if kinds.sms {
            let sms = templates.render_sms(name, &context).expect("renders");
            assert!(
                !sms.contains("&lt;") && !sms.contains("&amp;"),
                "{name}: {sms}"
            );
        }
    }
    let welcome = templates
        .render_email("welcome", &context)
        .expect("renders");
    assert!(welcome.subject.contains(HOSTILE), "{}", welcome.subject);
    let nudge = templates.render_sms("nudge", &context).expect("renders");
    assert!(nudge.contains(HOSTILE), "{nudge}");
    let cart = templates
        .render_email("cart_reminder", &context)
        .expect("renders");
    assert!(
        cart.html.contains(&format!("{} &times; 1", escaped())),
        "{}",
        cart.html
    );
    assert!(
        cart.text.contains(&format!("- {HOSTILE} x 1")),
        "{}",
        cart.text
    );
    let birthday = templates
        .render_email("birthday", &context)
        .expect("renders");
    assert!(
        birthday
            .html
            .contains(&format!("<strong>{}</strong>", escaped())),
        "{}",
        birthday.html
    );
}

#[test]
fn triple_stash_on_data_is_refused_in_html_and_partials_but_not_in_text() {
    let dir = folder(&[
        ("partials/raw.hbs", "{{{customer.attributes.first_name}}}"),
        ("t/subject.hbs", "{{{customer.attributes.first_name}}}"),
        (
            "t/html.hbs",
            "<p>\n{{{default customer.attributes.first_name \"x\"}}}\n{{#each event.properties.items}}{{&name}}{{/each}}</p>",
        ),
        ("t/text.hbs", "{{{customer.attributes.first_name}}}"),
    ]);
    let (_, problems) = Templates::load(dir.path());
    let shown: Vec<String> = problems
        .iter()
        .map(|p| p.to_string().replace(&dir.path().display().to_string(), ""))
        .collect();
    assert_eq!(
        shown,
        [
            "/partials/raw.hbs:1: {{{customer.attributes.first_name}}} is not escaped: \
             write {{customer.attributes.first_name}} (HTML output must escape every value)",
            "/t/html.hbs:2: {{{default ...}}} is not escaped: \
             write {{default ...}} (HTML output must escape every value)",
            "/t/html.hbs:3: {{{name}}} is not escaped: \
             write {{name}} (HTML output must escape every value)",
        ],
        "{problems:#?}"
    );
}

#[test]
fn values_in_a_webhook_url_are_percent_encoded_and_triple_stash_is_as_is() {
    let dir = email("ok");
    let templates = load(dir.path());
    let context = serde_json::json!({"event": {"properties": {"name": "Vic&admin=1#x/../y", "base": "https://crm.example"}}});
    assert_eq!(
        templates
            .render_url(
                "{{{event.properties.base}}}/hook?name={{event.properties.name}}",
                &context
            )
            .unwrap(),
        "https://crm.example/hook?name=Vic%26admin%3D1%23x%2F..%2Fy"
    );
    // Headers and bodies are not URLs: they stay literal.
    assert_eq!(
        templates
            .render_inline("{{event.properties.name}}", &context)
            .unwrap(),
        "Vic&admin=1#x/../y"
    );
}
