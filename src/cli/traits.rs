//! `trellis traits recompute`: computes RFM scores, value tiers and lifecycle stages now,
//! instead of waiting for `serve`'s periodic run.

use std::process::ExitCode;

use anyhow::Context;

use crate::clock::{Clock, SystemClock};
use crate::config::LifecycleArgs;
use crate::store::{OpenOptions, Store};

/// Arguments of `trellis traits`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do: `recompute`.
    #[arg(value_parser = ["recompute"])]
    pub action: String,
    /// The database.
    #[arg(
        long,
        env = "TRELLIS_DATABASE_URL",
        default_value = "sqlite://trellis.db"
    )]
    pub database_url: String,
    /// Lifecycle thresholds.
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// Recomputes and prints how many customers were scored.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = Store::open(&args.database_url, OpenOptions::default())
            .await
            .with_context(|| format!("opening {}", args.database_url))?;
        let n = crate::scheduler::recompute_traits(
            &store,
            args.lifecycle.to_lifecycle(),
            SystemClock.now(),
        )
        .await?;
        println!("traits recomputed for {n} customers");
        Ok(ExitCode::SUCCESS)
    })
}
