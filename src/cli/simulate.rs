//! `trellis simulate WORKFLOW... --customer FILE --events FILE`: a journey's timeline before
//! it goes live; with several workflows, how they share the customer (caps, quiet hours).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use jiff::Timestamp;

use crate::model::{Customer, Event};
use crate::simulate::{self, Options};
use crate::workflow::validate::check_paths;

/// Arguments of `trellis simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow files: with more than one, every line names its workflow, and caps
    /// count the sends of all of them.
    #[arg(required = true, num_args = 1..)]
    pub workflows: Vec<PathBuf>,
    /// The customer, as JSON: {"id", "email", "phone", "timezone", "locale", "attributes", "tags", "consent"}.
    #[arg(long)]
    pub customer: PathBuf,
    /// Events, one JSON object a line: {"id"?, "name", "timestamp", "properties"}. Two names
    /// stand for what reaches `serve` by other routes: "$profile" (properties: a profile
    /// patch, as `PATCH /v1/customers/{id}` takes) and "$suppress" (properties: "email" or
    /// "phone", an address on the suppression list).
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// When to start (RFC 3339); default: the first event's time.
    #[arg(long)]
    pub start: Option<Timestamp>,
    /// When to stop (RFC 3339); default: 30 days after the start or the last event.
    #[arg(long)]
    pub until: Option<Timestamp>,
    /// Print one JSON object a line instead of text.
    #[arg(long)]
    pub json: bool,
    /// The templates folder.
    #[arg(long, default_value = "templates", env = "TRELLIS_TEMPLATES")]
    pub templates: PathBuf,
    /// Quiet hours, caps, default time zone: the same settings `serve` takes.
    #[command(flatten)]
    pub policy: crate::config::PolicyArgs,
    /// How often segments are recomputed for conditions that become true with time alone,
    /// as `serve`'s `TRELLIS_SEGMENT_REFRESH`.
    #[arg(long, default_value = "5m", env = "TRELLIS_SEGMENT_REFRESH")]
    pub segment_refresh: crate::workflow::Duration,
    /// Ignore the segments defined in `segments.yaml` beside the workflow: every segment is
    /// then scripted with `$segment_entered` / `$segment_exited` events.
    #[arg(long)]
    pub script_segments: bool,
    /// Lifecycle thresholds of the computed traits, as `serve` takes them.
    #[command(flatten)]
    pub lifecycle: crate::config::LifecycleArgs,
}

fn read_customer(path: &Path) -> anyhow::Result<Customer> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid customer", path.display()))
}

fn read_events(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a valid event", path.display(), i + 1))
        })
        .collect()
}

/// Validates the workflow, then prints its timeline.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let paths: Vec<&Path> = args.workflows.iter().map(PathBuf::as_path).collect();
    let checked = check_paths(&paths, &args.templates);
    let (workflows, templates, problems, segments) = (
        checked.workflows,
        checked.templates,
        checked.problems,
        checked.segments,
    );
    if !problems.is_empty() {
        let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!(
            "the workflows have problems; fix them first:\n{}",
            listed.join("\n")
        );
    }
    if workflows.is_empty() {
        bail!("no workflow was read");
    }
    let customer = read_customer(&args.customer)?;
    let events = match &args.events {
        Some(path) => read_events(path)?,
        None => Vec::new(),
    };
    let options = Options {
        start: args.start,
        until: args.until,
        policy: args.policy.to_policy().map_err(anyhow::Error::msg)?,
        segments: if args.script_segments {
            Vec::new()
        } else {
            segments
        },
        segment_refresh: Some(args.segment_refresh.as_signed().unsigned_abs()),
        lifecycle: args.lifecycle.to_lifecycle(),
    };
    let lines = simulate::run(
        &workflows,
        std::sync::Arc::new(templates),
        customer,
        events,
        options,
    )?;
    let text = if args.json {
        simulate::render_json(&lines)
    } else {
        simulate::render_text(&lines)
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
