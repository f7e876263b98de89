//! The command line: one file per subcommand. The only place besides `main` that uses
//! `anyhow`, and the only layer that reads files for the engine and prints.

pub mod import;
mod schema;
pub mod serve;
mod simulate;
mod store_copy;
mod traits;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trellis: marketing journeys as files, run by a pure engine.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API, the scheduler and the dispatcher (on SQLite, or PostgreSQL).
    Serve(Box<crate::config::ServeConfig>),
    /// Check workflows and templates; print every problem as file:line: node <id>: problem.
    Validate(validate::Args),
    /// Run one or more workflows for one customer on a virtual clock and print the timeline.
    Simulate(Box<simulate::Args>),
    /// Print the JSON Schema of workflow files.
    Schema,
    /// Load customers or events from a CSV or NDJSON file.
    Import(import::Args),
    /// Recompute RFM scores, value tiers, lifecycle stages and predicted traits now.
    Traits(traits::Args),
    /// Move an installation from SQLite to PostgreSQL (`store copy --from … --to …`).
    Store(store_copy::Args),
}

/// A single-threaded runtime and the store at `url`, for the one-shot commands.
fn open_store(url: &str) -> anyhow::Result<(tokio::runtime::Runtime, crate::store::Store)> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store = runtime
        .block_on(crate::store::Store::open(
            url,
            crate::store::OpenOptions::default(),
        ))
        .with_context(|| format!("opening {}", crate::store::redacted_url(url)))?;
    Ok((runtime, store))
}

/// Runs the parsed command line.
///
/// # Errors
/// Anything that stops the command, with context for the user.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(config) => serve::run(&config),
        Command::Validate(args) => validate::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Schema => schema::run(),
        Command::Import(args) => import::run(&args),
        Command::Traits(args) => traits::run(&args),
        Command::Store(args) => store_copy::run(&args),
    }
}
