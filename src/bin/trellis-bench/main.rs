//! `trellis-bench`: the benchmark suite described in BENCHMARKS.md.
//!
//! Every figure is measured in one process run on this machine and printed with its median
//! over `--runs` and its ratio to a limit measured in the same run. Nothing here asserts a
//! timing; a workload that does not run as specified (a customer missing, a message not
//! sent) is an error.

// A benchmark's job is to read a stopwatch; the engine it measures still gets its time
// through `Clock`.
#![allow(clippy::disallowed_methods)]

mod c_api;
mod end_to_end;
mod engine_rate;
mod limits;
mod postgres;
mod report;
mod scheduler_rate;
mod sinks;
mod waiting;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use report::Row;

/// Measures Trellis against this machine's own limits.
#[derive(Debug, Parser)]
#[command(name = "trellis-bench")]
struct Args {
    /// Customers in the standard journey and the step benchmarks.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// Runs of each figure; the median is printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Customers enrolled by the broadcast and then left waiting.
    #[arg(long, default_value_t = 1_000_000)]
    broadcast_customers: usize,
    /// Wake-ups falling due per second in the lateness figure.
    #[arg(long, default_value_t = 1_000)]
    wakeups_per_second: usize,
    /// How long wake-ups keep falling due in the lateness figure, in seconds.
    #[arg(long, default_value_t = 10)]
    lateness_seconds: usize,
    /// Only these figures: limit, engine, scheduler, e2e, email, postgres, ingest,
    /// broadcast, lateness.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    child: Option<Child>,
}

/// The processes the suite starts of itself, so that their memory is measured alone.
#[derive(Debug, Subcommand)]
enum Child {
    /// `trellis serve` with these arguments.
    #[command(hide = true)]
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Enrolls customers in the broadcast workload and prints what it measured as JSON.
    #[command(hide = true)]
    Broadcast {
        /// Customers.
        #[arg(long)]
        customers: usize,
        /// Folder of the database.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.child {
        Some(Child::Serve { args }) => {
            let mut argv = vec!["trellis".to_owned(), "serve".to_owned()];
            argv.extend(args);
            return match trellis::cli::run(trellis::cli::Cli::parse_from(argv)) {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Child::Broadcast { customers, ref dir }) => {
            runtime().and_then(|rt| rt.block_on(waiting::broadcast_child(dir, customers)))
        }
        None => runtime().and_then(|rt| rt.block_on(suite(&args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `f` `runs` times, each in a fresh temporary folder, and returns the samples.
async fn sample<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let dir = tempfile::tempdir()?;
        samples.push(f(dir.path().to_path_buf()).await?);
    }
    Ok(samples)
}

async fn suite(args: &Args) -> anyhow::Result<()> {
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let n = args.customers;
    let runs = args.runs;
    let mut rows: Vec<Row> = Vec::new();
    let progress = |what: &str| {
        if !args.json {
            eprintln!("measuring {what}…");
        }
    };

    // The limits everything else is compared with.
    progress("the SQLite step limit");
    let sqlite = Row::plain(
        "1. limit: SQLite step transitions",
        &sample(
            runs,
            |dir| async move { limits::sqlite_steps(&dir, n).await },
        )
        .await?,
        "steps/s",
    );
    rows.push(sqlite);
    progress("the SQLite step limit through the C API");
    let c_api = Row::plain(
        "1. limit: SQLite step transitions, C API",
        &sample(runs, |dir| async move {
            limits::sqlite_steps_c_api(&dir, n).await
        })
        .await?,
        "steps/s",
    );
    // The database's own limit, with no driver between: what the runtime is held to.
    let sqlite_limit = c_api.value;
    rows.push(c_api);

    if wanted("engine") {
        progress("the engine");
        rows.push(Row::plain(
            "2. engine steps (example workflows)",
            &sample(runs, |_| async {
                engine_rate::engine_steps(Duration::from_secs(1))
            })
            .await?,
            "steps/s",
        ));
    }
    if wanted("scheduler") {
        progress("the scheduler");
        rows.push(
            Row::plain(
                "3. scheduler steps (non-sending nodes)",
                &sample(runs, |dir| async move {
                    scheduler_rate::scheduler_steps(&dir, n).await
                })
                .await?,
                "steps/s",
            )
            .against("SQLite limit", sqlite_limit, 0.5),
        );
    }
    if wanted("e2e") || wanted("email") {
        progress("end to end and the email channel");
        rows.extend(
            end_to_end::figures(n, runs, sqlite_limit, wanted("e2e"), wanted("email")).await?,
        );
    }
    if wanted("postgres") {
        progress("PostgreSQL: the step limit, and 1, 2 and 4 runners");
        rows.extend(postgres::figures(n, runs, true).await?);
    }
    if wanted("ingest") {
        progress("event ingest");
        rows.extend(end_to_end::ingest(n, runs).await?);
    }
    if wanted("broadcast") {
        progress(&format!(
            "a broadcast to {} customers",
            report::human(args.broadcast_customers as f64)
        ));
        rows.extend(waiting::broadcast(args.broadcast_customers).await?);
    }
    if wanted("lateness") {
        progress("wake-up lateness");
        rows.extend(waiting::lateness(args.wakeups_per_second, args.lateness_seconds).await?);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", report::table(&rows));
    }
    Ok(())
}
