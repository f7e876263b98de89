//! The `trellis` binary as a user runs it.

use std::process::{Command, Output};

use crate::helpers::root;

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

#[test]
fn validate_passes_on_the_shipped_examples() {
    let out = trellis(&["validate"]);
    assert_eq!(stdout(&out), "ok: 5 workflows, no problems\n");
    assert!(out.status.success());
}

#[test]
fn validate_reports_every_problem_in_the_broken_fixtures_with_file_line_and_node() {
    let out = trellis(&[
        "validate",
        "tests/fixtures/broken/workflows",
        "--templates",
        "tests/fixtures/broken/templates",
    ]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(stdout(&out), @r#"
    tests/fixtures/broken/templates/bad_syntax/html.hbs:4: template does not compile: invalid handlebars syntax (an unclosed block or a stray brace?)
    tests/fixtures/broken/templates/incomplete: email template is missing html.hbs and text.hbs
    tests/fixtures/broken/templates/partials/loop_a.hbs: partials include each other in a cycle: loop_a -> loop_b -> loop_a
    tests/fixtures/broken/templates/partials/loop_b.hbs: partials include each other in a cycle: loop_b -> loop_a -> loop_b
    tests/fixtures/broken/templates/unknown_var/html.hbs:2: variable "order.total" can never be provided: the context has only customer, event, workflow, links
    tests/fixtures/broken/templates/unknown_var/subject.hbs:1: variable "customer.frist_name" can never be provided: customer has only id, email, phone, timezone, locale, attributes, tags, consent; free attributes are under customer.attributes
    tests/fixtures/broken/templates/unknown_var/text.hbs:2: partial "missing_partial" not found in templates/partials/
    tests/fixtures/broken/workflows/graph.yaml:9: node greet: template "missing_template" not found (or has problems) in tests/fixtures/broken/templates
    tests/fixtures/broken/workflows/graph.yaml:13: node ab: split weights plus holdout sum to 80, not 100 (weights are percentages)
    tests/fixtures/broken/workflows/graph.yaml:18: node text_as_email: template "texts" cannot render email: it needs subject.hbs, html.hbs and text.hbs
    tests/fixtures/broken/workflows/graph.yaml:20: node text_as_email: edge to missing node "nowhere"
    tests/fixtures/broken/workflows/graph.yaml:22: node spin: comparison on "plan" needs one operator (eq, ne, gt, gte, lt, lte, in, contains, exists)
    tests/fixtures/broken/workflows/graph.yaml:22: node spin: loop without a wait: spin -> tag -> spin
    tests/fixtures/broken/workflows/graph.yaml:22: node spin: path never ends: no exit can be reached from here
    tests/fixtures/broken/workflows/graph.yaml:32: node forever: wait takes only one of duration, until or until_attribute
    tests/fixtures/broken/workflows/graph.yaml:40: node orphan: unreachable: no path from start leads here
    tests/fixtures/broken/workflows/schedule.yaml:4: trigger: invalid cron expression "0 25 * * MON": Component error: Number out of bounds.
    tests/fixtures/broken/workflows/schedule.yaml:4: trigger: unknown time zone "Mars/Olympus" (expected an IANA name such as "Europe/Paris"), or "customer" for each customer's own zone
    tests/fixtures/broken/workflows/segments.yaml:3: segment vip: comparison on "tier" needs one operator (eq, ne, gt, gte, lt, lte, in, contains, exists)
    tests/fixtures/broken/workflows/segments.yaml:3: segment vip: in_segment "later": only segments defined above this one can be used
    tests/fixtures/broken/workflows/syntax.yaml:5: while parsing a flow mapping, did not find expected ',' or '}'
    tests/fixtures/broken/workflows/three_mistakes.yaml:2: name: expected string scalar
    tests/fixtures/broken/workflows/three_mistakes.yaml:11: node hello: unknown field `colour`, expected one of template, from, reply_to, next
    tests/fixtures/broken/workflows/three_mistakes.yaml:15: node pause: invalid duration "3 days": write a number and a unit (s, m, h, d, w), such as "90m", "2d" or "1h30m"
    tests/fixtures/broken/workflows/unknown_key.yaml:12: node hello: unknown field `colour`, expected one of template, from, reply_to, next
    tests/fixtures/broken/workflows/unknown_segment.yaml:4: trigger: unknown segment "nobody" (define it in segments.yaml beside the workflows)
    26 problems
    "#);
}

#[test]
fn validate_reports_every_format_error_of_one_file_in_one_run() {
    // A wrong type at the top level, an unknown key in one node and a bad duration in
    // another: all three, each with its line and its node or key.
    let out = trellis(&[
        "validate",
        "tests/fixtures/broken/workflows/three_mistakes.yaml",
        "--templates",
        "tests/fixtures/broken/templates",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let shown = stdout(&out);
    let workflow_lines: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("three_mistakes.yaml"))
        .collect();
    insta::assert_snapshot!(workflow_lines.join("\n"), @r#"
    tests/fixtures/broken/workflows/three_mistakes.yaml:2: name: expected string scalar
    tests/fixtures/broken/workflows/three_mistakes.yaml:11: node hello: unknown field `colour`, expected one of template, from, reply_to, next
    tests/fixtures/broken/workflows/three_mistakes.yaml:15: node pause: invalid duration "3 days": write a number and a unit (s, m, h, d, w), such as "90m", "2d" or "1h30m"
    "#);
}

/// `trellis simulate ARGS --json`, which must succeed, as one JSON value a line.
fn simulate_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = trellis(&[&["simulate"], args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[test]
fn simulate_prints_json_lines_with_the_documented_fields() {
    let lines = simulate_json(&[
        "workflows/cart_abandonment.yaml",
        "--customer",
        "examples/customers/ada.json",
        "--events",
        "examples/events/cart_abandoned.ndjson",
    ]);
    for line in &lines {
        for field in ["at", "node", "kind"] {
            assert!(line.get(field).is_some(), "{line} lacks {field}");
        }
    }
    let sends: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "send").collect();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0]["channel"], "email");
    assert_eq!(sends[0]["template"], "cart_reminder");
    assert_eq!(sends[0]["to"], "ada@example.com");
    assert_eq!(sends[0]["at"], "2026-04-14T11:00:00Z");
    assert_eq!(sends[1]["channel"], "sms");
    assert_eq!(sends[1]["to"], "+14155550101");
    // Due at 06:00 in New York, inside the default SMS quiet hours (21:00-08:00): held
    // until 08:00 local, as `serve` would.
    let held: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "held").collect();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (
            held[0]["at"].as_str(),
            held[0]["until"].as_str(),
            held[0]["reason"].as_str()
        ),
        (
            Some("2026-04-15T10:00:00Z"),
            Some("2026-04-15T12:00:00Z"),
            Some("quiet hours")
        )
    );
    assert_eq!(sends[1]["at"], "2026-04-15T12:00:00Z");
}

#[test]
fn simulate_plays_several_workflows_and_names_each_lines_workflow() {
    let lines = simulate_json(&[
        "workflows/welcome_series.yaml",
        "workflows/cart_abandonment.yaml",
        "--customer",
        "examples/customers/ada.json",
        "--events",
        "examples/events/signup.ndjson",
    ]);
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l["workflow"] == "welcome_series"),
        "only the welcome series starts on a signup, and every line says so: {lines:?}"
    );
}

#[test]
fn simulate_refuses_a_profile_patch_it_cannot_apply_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("events.ndjson");
    std::fs::write(
        &script,
        r#"{"name": "$profile", "timestamp": "2026-03-02T15:00:00Z", "properties": {"timezone": "Mars/Olympus"}}"#,
    )
    .unwrap();
    let out = trellis(&[
        "simulate",
        "workflows/welcome_series.yaml",
        "--customer",
        "examples/customers/ada.json",
        "--events",
        script.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("$profile at 2026-03-02T15:00:00Z") && err.contains("Mars/Olympus"),
        "{err}"
    );
}

#[test]
fn simulate_refuses_a_broken_workflow_and_names_the_problem() {
    let out = trellis(&[
        "simulate",
        "tests/fixtures/broken/workflows/unknown_key.yaml",
        "--customer",
        "examples/customers/ada.json",
        "--start",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown_key.yaml:12: node hello: unknown field `colour`"),
        "{err}"
    );
}

#[test]
fn simulate_names_the_line_of_a_bad_event() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        "{\"name\": \"signup\", \"timestamp\": \"2026-01-01T00:00:00Z\"}\n{\"name\": \"signup\"}\n",
    )
    .unwrap();
    let out = trellis(&[
        "simulate",
        "workflows/welcome_series.yaml",
        "--customer",
        "examples/customers/ada.json",
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("events.ndjson:2: not a valid event") && err.contains("timestamp"),
        "{err}"
    );
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = trellis(&["schema"]);
    let committed = std::fs::read_to_string(root().join("workflows/workflow.schema.json")).unwrap();
    assert_eq!(stdout(&out), committed);
}
