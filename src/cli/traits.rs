//! `trellis traits recompute`: computes RFM scores, value tiers, lifecycle stages, predicted
//! traits and VAP scores now, instead of waiting for `serve`'s periodic run, and prints the
//! predictive models' fit (parameters, standard errors, log-likelihood, convergence).

use std::process::ExitCode;

use crate::clock::{Clock, SystemClock};
use crate::config::LifecycleArgs;

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
    let (runtime, store) = super::open_store(&args.database_url)?;
    runtime.block_on(async {
        let (n, model) = crate::scheduler::recompute_traits(
            &store,
            args.lifecycle.to_lifecycle(),
            SystemClock.now(),
        )
        .await?;
        println!("traits recomputed for {n} customers");
        println!("{}", model.summary());
        Ok(ExitCode::SUCCESS)
    })
}
