//! Render errors name the file, the line and the variable.

use std::path::Path;

use serde_json::{Value, json};

use super::{email, folder, hostile_context, load};
use crate::template::RenderError;

/// The message of a render error, with the temporary folder taken out.
fn render_error(dir: &Path, result: Result<impl std::fmt::Debug, RenderError>) -> String {
    let err = result.expect_err("rendering fails");
    err.to_string().replace(&dir.display().to_string(), "")
}

#[test]
fn a_missing_variable_names_the_file_line_and_variable_in_every_part() {
    let body = "Hello\n  {{customer.attributes.coupon_code}}\n";
    for (part, others) in [("html", "ok"), ("text", "ok"), ("subject", "ok")] {
        let mut files = vec![
            ("t/subject.hbs", others),
            ("t/html.hbs", others),
            ("t/text.hbs", others),
        ];
        let file = format!("t/{part}.hbs");
        files.retain(|(f, _)| *f != file);
        files.push((file.as_str(), body));
        let dir = folder(&files);
        let templates = load(dir.path());
        let mut context = hostile_context();
        context["customer"]["attributes"] = json!({});
        let shown = render_error(dir.path(), templates.render_email("t", &context));
        assert_eq!(
            shown,
            format!(
                "rendering /t/{part}.hbs:2:3: variable customer.attributes.coupon_code is missing"
            )
        );
    }
    let dir = folder(&[("t/sms.hbs", "Hi {{customer.attributes.coupon_code}}")]);
    let mut context = hostile_context();
    context["customer"]["attributes"] = json!({});
    let shown = render_error(dir.path(), load(dir.path()).render_sms("t", &context));
    assert_eq!(
        shown,
        "rendering /t/sms.hbs:1:4: variable customer.attributes.coupon_code is missing"
    );
}

#[test]
fn a_helper_given_null_names_the_helper_and_the_variable_in_every_part() {
    let cases = [
        (
            "{{date customer.attributes.birthday}}",
            "date cannot read customer.attributes.birthday (null) as a date or timestamp",
        ),
        (
            "{{date customer.attributes.nothing}}",
            "date cannot read customer.attributes.nothing (missing) as a date or timestamp",
        ),
        (
            "{{money event.properties.total}}",
            "money cannot read event.properties.total (\"lots\") as an amount",
        ),
    ];
    for (expr, message) in cases {
        let body = format!("x\n\n y {expr}");
        let dir = email(&body);
        let templates = load(dir.path());
        let mut context = hostile_context();
        context["customer"]["attributes"]["birthday"] = Value::Null;
        context["event"]["properties"]["total"] = json!("lots");
        // Subject is rendered first, then html, then text: break each in turn.
        for part in ["subject", "html", "text"] {
            let dir = folder(&[
                (
                    "t/subject.hbs",
                    if part == "subject" { &body } else { "ok" },
                ),
                ("t/html.hbs", if part == "html" { &body } else { "ok" }),
                ("t/text.hbs", if part == "text" { &body } else { "ok" }),
            ]);
            let shown = render_error(dir.path(), load(dir.path()).render_email("t", &context));
            assert_eq!(shown, format!("rendering /t/{part}.hbs:3:4: {message}"));
        }
        let shown = render_error(dir.path(), templates.render_sms("t", &context));
        assert_eq!(shown, format!("rendering /t/sms.hbs:3:4: {message}"));
    }
}

#[test]
fn an_error_inside_a_partial_names_the_partial_file() {
    let dir = folder(&[
        (
            "partials/hello.hbs",
            "Hi\n{{date customer.attributes.birthday}}",
        ),
        ("t/subject.hbs", "ok"),
        ("t/html.hbs", "<p>\n{{> hello}}</p>"),
        ("t/text.hbs", "ok"),
    ]);
    let mut context = hostile_context();
    context["customer"]["attributes"]["birthday"] = Value::Null;
    let shown = render_error(dir.path(), load(dir.path()).render_email("t", &context));
    assert_eq!(
        shown,
        "rendering /partials/hello.hbs:2:1: date cannot read customer.attributes.birthday (null) as a date or timestamp (included from /t/html.hbs)"
    );
}

#[test]
fn an_inline_template_error_names_the_expression() {
    let dir = email("ok");
    let shown = render_error(
        dir.path(),
        load(dir.path()).render_inline(
            "https://x.invalid/{{customer.nope}}",
            &json!({"customer": {}}),
        ),
    );
    assert_eq!(
        shown,
        "rendering inline template:1:19: variable customer.nope is missing"
    );
}

#[test]
fn an_error_inside_a_layout_block_names_the_including_file_and_its_line() {
    let dir = folder(&[
        (
            "partials/layout.hbs",
            "<html>\n{{> @partial-block}}\n</html>",
        ),
        ("t/subject.hbs", "ok"),
        (
            "t/html.hbs",
            "{{#> layout}}\n<p>{{customer.attributes.coupon_code}}</p>\n{{/layout}}",
        ),
        ("t/text.hbs", "ok"),
    ]);
    let mut context = hostile_context();
    context["customer"]["attributes"] = json!({});
    let shown = render_error(dir.path(), load(dir.path()).render_email("t", &context));
    assert_eq!(
        shown,
        "rendering /t/html.hbs:2:4: variable customer.attributes.coupon_code is missing"
    );
}

#[test]
fn a_date_pattern_that_cannot_format_is_an_error_not_a_panic() {
    let dir = email(r#"{{date customer.attributes.coupon_expires format="%H:%M"}}"#);
    let shown = render_error(
        dir.path(),
        load(dir.path()).render_email("t", &hostile_context()),
    );
    assert!(
        shown.starts_with(
            "rendering /t/subject.hbs:1:1: date cannot format customer.attributes.coupon_expires (\"2026-03-08\") with \"%H:%M\": "
        ),
        "{shown}"
    );
}
