//! `cargo bench`: the in-process parts of the standard journey (BENCHMARKS.md), with
//! criterion. The whole suite, with its limits and ratios, is `trellis-bench`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use serde_json::json;
use trellis::engine::policy::SendPolicy;
use trellis::engine::{Enrollment, Facts, Input, step};
use trellis::model::{Customer, Event};
use trellis::template::render_context;
use trellis::workflow::validate::check_paths;

fn customer() -> Customer {
    serde_json::from_value(json!({
        "id": "c0000001",
        "email": "customer1@example.com",
        "phone": "+15550000001",
        "timezone": "UTC",
        "attributes": {"first_name": "Ada", "company": "Acme", "city": "Lisbon", "plan": "pro"},
        "consent": {"email": true, "sms": true},
    }))
    .expect("a valid customer")
}

fn standard_journey(c: &mut Criterion) {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    let checked = check_paths(
        &[bench.join("workloads/standard").as_path()],
        &bench.join("templates"),
    );
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    let workflow = &checked.workflows[0];
    let customer = customer();
    let (segments, policy) = (BTreeSet::new(), SendPolicy::default());
    let facts = Facts {
        customer: &customer,
        segments: &segments,
        history: &[],
        policy: &policy,
        recent_sends: &[],
    };
    let now: Timestamp = "2026-11-23T12:00:00Z".parse().expect("a timestamp");
    let signup = Event {
        id: None,
        name: "signup".into(),
        timestamp: now,
        properties: serde_json::Map::new(),
    };

    c.bench_function("engine: standard journey, enter and wake to exit", |b| {
        b.iter(|| {
            let fresh = Enrollment::new(
                "e",
                workflow,
                customer.id.clone(),
                Some(signup.clone()),
                now,
            );
            let waiting = step(workflow, &fresh, &facts, &Input::Enter, now);
            let done = step(workflow, &waiting.enrollment, &facts, &Input::Wake, now);
            assert!(!done.enrollment.is_active());
            black_box(done)
        });
    });

    let context = render_context(
        &customer,
        Some(&signup),
        ("standard", "Standard benchmark journey"),
        "https://trellis.example/unsubscribe/token",
    );
    c.bench_function("template: welcome email (about 3 KB)", |b| {
        b.iter(|| {
            black_box(
                checked
                    .templates
                    .render_email("welcome", &context)
                    .expect("renders"),
            )
        });
    });
}

criterion_group!(benches, standard_journey);
criterion_main!(benches);
