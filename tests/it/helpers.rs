//! Shared helpers: paths, example loading, and a compact timeline for assertions.

use std::path::{Path, PathBuf};

use trellis::model::{Customer, Event};
use trellis::simulate::{self, Options};
use trellis::template::Templates;
use trellis::workflow::{self, Workflow};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped templates, which must load without problems.
pub fn templates() -> Templates {
    let (templates, problems) = Templates::load(&root().join("templates"));
    assert!(problems.is_empty(), "template problems: {problems:#?}");
    templates
}

/// A shipped workflow by id.
pub fn example(id: &str) -> Workflow {
    workflow::load_file(&root().join("workflows").join(format!("{id}.yaml")))
        .unwrap_or_else(|p| panic!("{}", shown(&p)))
}

/// A workflow from YAML text, named `inline.yaml` in messages.
pub fn inline(yaml: &str) -> Workflow {
    workflow::parse(Path::new("inline.yaml"), yaml).unwrap_or_else(|p| panic!("{}", shown(&p)))
}

/// Problems one a line, as `trellis validate` prints them.
fn shown(problems: &[workflow::Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A customer from JSON text.
pub fn customer(json: &str) -> Customer {
    serde_json::from_str(json).expect("test customer JSON is valid")
}

/// Events from a compact script, one per line: `2026-03-02T15:00:00Z name key=value ...`.
/// Values parse as JSON when they can (numbers, booleans), else as strings.
pub fn events(script: &str) -> Vec<Event> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let timestamp = words
                .next()
                .expect("a time")
                .parse()
                .expect("an RFC 3339 time");
            let name = words.next().expect("a name").to_owned();
            let mut properties = serde_json::Map::new();
            let mut id = None;
            for word in words {
                let (key, value) = word.split_once('=').expect("key=value");
                if key == "id" {
                    id = Some(trellis::model::EventId::parse(value).expect("a valid id"));
                    continue;
                }
                let value =
                    serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::from(value));
                properties.insert(key.to_owned(), value);
            }
            Event {
                id,
                name,
                timestamp,
                properties,
            }
        })
        .collect()
}

/// Runs the simulator and returns one line per moment (without message bodies).
/// The runtime plays the same script and must give the same timeline
/// ([`crate::parity::played_both`]).
pub fn timeline(wf: &Workflow, customer: Customer, events: Vec<Event>, options: Options) -> String {
    let lines = crate::parity::played_both(std::slice::from_ref(wf), customer, events, options);
    lines
        .iter()
        .map(|l| l.to_text().lines().next().unwrap_or_default().to_owned() + "\n")
        .collect()
}

/// Runs the simulator and returns the raw lines.
pub fn lines(
    wf: &Workflow,
    customer: Customer,
    events: Vec<Event>,
    options: Options,
) -> Vec<simulate::Line> {
    crate::parity::played_both(std::slice::from_ref(wf), customer, events, options)
}

/// Runs the simulator on several workflows at once and returns the raw lines, each naming
/// its workflow; the runtime must give the same.
pub fn lines_of(
    workflows: &[Workflow],
    customer: Customer,
    events: Vec<Event>,
    options: Options,
) -> Vec<simulate::Line> {
    crate::parity::played_both(workflows, customer, events, options)
}

/// An RFC 3339 instant.
pub fn at(s: &str) -> jiff::Timestamp {
    s.parse().expect("an RFC 3339 time")
}
