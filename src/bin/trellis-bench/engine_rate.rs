//! Figure 2: the pure engine alone, on the example workflows.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use jiff::Timestamp;
use serde_json::json;
use trellis::engine::policy::SendPolicy;
use trellis::engine::{Enrollment, Facts, Input, step};
use trellis::model::{Customer, Event};
use trellis::workflow::validate::check_paths;
use trellis::workflow::{Trigger, Workflow};

use crate::workload;

/// The workflows of a bench workload (`standard`, `steps`, `broadcast`) or, for `examples`,
/// of the repository's `workflows/` folder.
pub fn load(name: &str) -> anyhow::Result<Vec<Workflow>> {
    let (folder, templates) = if name == "examples" {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        (root.join("workflows"), root.join("templates"))
    } else {
        (workload::workflows(name), workload::templates())
    };
    let checked = check_paths(&[folder.as_path()], &templates);
    if let Some(problem) = checked.problems.first() {
        bail!("{name}: {problem}");
    }
    Ok(checked.workflows)
}

/// What the engine may consult, with no history and no recent sends.
pub fn facts_for<'a>(
    customer: &'a Customer,
    segments: &'a BTreeSet<String>,
    policy: &'a SendPolicy,
) -> Facts<'a> {
    Facts {
        customer,
        segments,
        history: &[],
        policy,
        recent_sends: &[],
    }
}

/// Engine steps per second: each example workflow, for customers on either plan, entered
/// and woken at each wake-up until it exits; repeated for about `for_at_least`.
pub fn engine_steps(for_at_least: Duration) -> anyhow::Result<f64> {
    let workflows = load("examples")?;
    let start: Timestamp = "2026-11-23T12:00:00Z".parse()?;
    let customers: Vec<Customer> = (0..2)
        .map(|i| {
            let mut c = workload::customer(i);
            c.attributes.insert("birthday".into(), json!("1990-11-24"));
            c
        })
        .collect();
    let segments = BTreeSet::new();
    let policy = SendPolicy::default();
    let started = Instant::now();
    let mut steps = 0u64;
    while started.elapsed() < for_at_least {
        for workflow in &workflows {
            for customer in &customers {
                steps += journey(workflow, customer, &segments, &policy, start);
            }
        }
    }
    if steps == 0 {
        bail!("the engine took no steps");
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(steps as f64 / started.elapsed().as_secs_f64())
}

/// Runs one customer through one workflow; returns the steps taken.
fn journey(
    workflow: &Workflow,
    customer: &Customer,
    segments: &BTreeSet<String>,
    policy: &SendPolicy,
    now: Timestamp,
) -> u64 {
    let facts = facts_for(customer, segments, policy);
    let trigger = match &workflow.trigger.value {
        Trigger::Event(t) => Some(Event {
            id: None,
            name: t.name.to_string(),
            timestamp: now,
            properties: serde_json::Map::new(),
        }),
        _ => None,
    };
    let fresh = Enrollment::new("e", workflow, customer.id.clone(), trigger, now);
    let mut current = step(workflow, &fresh, &facts, &Input::Enter, now);
    let mut steps = 1;
    while let Some(at) = current.enrollment.next_wake()
        && steps < 32
    {
        current = step(workflow, &current.enrollment, &facts, &Input::Wake, at);
        steps += 1;
    }
    std::hint::black_box(&current);
    steps
}
