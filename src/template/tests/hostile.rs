//! Hostile template sources found by fuzzing: each is refused with a problem or an error,
//! quickly, where handlebars alone would overflow the stack or take seconds.

use super::{folder, hostile_context};
use crate::template::{MAX_NESTING, Templates, check_inline};

/// How long `f` takes.
// Allowed in a test: it measures its own work; the product reads time via clock::Clock.
#[allow(clippy::disallowed_methods)]
fn timed<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration) {
    let start = std::time::Instant::now();
    let value = f();
    (value, start.elapsed())
}

fn with_partial() -> tempfile::TempDir {
    folder(&[
        ("partials/greeting.hbs", "Hi"),
        ("t/sms.hbs", "{{> greeting}}"),
    ])
}

/// An inline partial that includes itself recursed until the stack overflowed, aborting
/// the whole process: a webhook string in a workflow passed validation, since it compiles.
#[test]
fn an_inline_partial_that_includes_itself_is_refused_not_a_stack_overflow() {
    let dir = with_partial();
    let (templates, problems) = Templates::load(dir.path());
    assert!(problems.is_empty(), "{problems:?}");
    for text in [
        "{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}",
        "{{#*inline \"greeting\"}}{{> greeting}}{{/inline}}{{> greeting}}",
    ] {
        let err = templates
            .render_inline(text, &hostile_context())
            .expect_err("refused");
        assert!(err.to_string().contains("cannot use partials"), "{err}");
        assert!(check_inline(text).is_err());
    }
    // In a template file, an inline partial that shadows a file partial is a problem.
    let dir = folder(&[
        ("partials/greeting.hbs", "Hi"),
        (
            "t/sms.hbs",
            "{{#*inline \"greeting\"}}{{> greeting}}{{/inline}}{{> greeting}}",
        ),
    ]);
    let (_, problems) = Templates::load(dir.path());
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("inline partials")),
        "{problems:?}"
    );
}

/// Blocks nested 2 000 deep took 1.5 s to compile in a debug build (and recursed through
/// the checks and the renderer); subexpressions as deep recursed in the parser.
#[test]
fn deep_nesting_is_refused_quickly() {
    let dir = with_partial();
    let (templates, _) = Templates::load(dir.path());
    let blocks = format!(
        "{}x{}",
        "{{#if customer.email}}".repeat(2_000),
        "{{/if}}".repeat(2_000)
    );
    let subexpressions = format!(
        "{{{{not {}true{}}}}}",
        "(not ".repeat(2_000),
        ")".repeat(2_000)
    );
    for text in [blocks, subexpressions] {
        let ((problems, rendered), took) = timed(|| {
            (
                templates.check_source(std::path::Path::new("t.hbs"), &text, true),
                templates.render_inline(&text, &hostile_context()),
            )
        });
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("nested deeper than"),
            "{problems:?}"
        );
        assert!(rendered.is_err());
        assert!(
            took < std::time::Duration::from_millis(250),
            "took {took:?}"
        );
    }
    // Nesting as deep as allowed still compiles.
    let allowed = format!(
        "{}x{}",
        "{{#if customer.email}}".repeat(MAX_NESTING),
        "{{/if}}".repeat(MAX_NESTING)
    );
    assert!(check_inline(&allowed).is_ok());
}

/// handlebars locates each expression by counting from the start of the source: 4 000
/// expressions in 100 kB took 0.7 s to compile in a debug build, and 6 MB took seconds.
#[test]
fn a_template_too_large_to_compile_quickly_is_refused_with_advice() {
    let dir = with_partial();
    let (templates, _) = Templates::load(dir.path());
    let many = "<p>{{customer.id}}</p>\n".repeat(4_000);
    let huge = "x".repeat(6_000_000);
    for (text, says) in [
        (many, "move some of it into partials"),
        (huge, "larger than"),
    ] {
        let (problems, took) =
            timed(|| templates.check_source(std::path::Path::new("t.hbs"), &text, false));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains(says), "{problems:?}");
        assert!(
            took < std::time::Duration::from_millis(250),
            "took {took:?}"
        );
    }
    // A large email of ordinary density is fine.
    let ordinary = "<p>Some text of a newsletter, {{customer.id}}.</p>\n".repeat(300);
    assert!(check_inline(&ordinary).is_ok());
}

/// A `{{!--` without its `--}}` made handlebars look for the end of the comment to the end
/// of the source, once per comment: 400 of them in 10 kB took 0.25 s to compile in a debug
/// build, 128 kB would take minutes.
#[test]
fn unclosed_long_comments_are_refused_quickly() {
    let dir = with_partial();
    let (templates, _) = Templates::load(dir.path());
    let text = "Hello{{!--  {{customer.id}}\n".repeat(400);
    let (problems, took) =
        timed(|| templates.check_source(std::path::Path::new("t.hbs"), &text, false));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.contains("not closed with --}}"),
        "{problems:?}"
    );
    assert!(
        took < std::time::Duration::from_millis(250),
        "took {took:?}"
    );
    // Closed comments, even holding braces, are fine.
    let closed = "Hello{{!-- {{customer.id}} }} --}}\n".repeat(400);
    assert!(check_inline(&closed).is_ok());
}
