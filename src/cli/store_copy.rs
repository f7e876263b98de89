//! `trellis store copy --from sqlite://… --to postgres://…`: moves an installation from its
//! SQLite file to an empty PostgreSQL database, with a progress bar and a count check.

use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::store::{OpenOptions, Store, copy, redacted_url};

/// Arguments of `trellis store`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do: `copy`.
    #[arg(value_parser = ["copy"])]
    pub action: String,
    /// The SQLite database to copy (stop `serve` first: a copy of a live file misses what is
    /// written meanwhile).
    #[arg(long)]
    pub from: String,
    /// The PostgreSQL database to copy into; it must exist and hold no customers, events or
    /// messages yet (its tables are made if missing).
    #[arg(long)]
    pub to: String,
}

/// Copies, then prints each table's rows in both databases; fails when any differ.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let open = |url: &str| {
            let url = url.to_owned();
            async move {
                Store::open(&url, OpenOptions::default())
                    .await
                    .with_context(|| format!("opening {}", redacted_url(&url)))
            }
        };
        let Store::Sqlite(from) = open(&args.from).await? else {
            bail!("--from must be a SQLite database (sqlite://PATH), the one to move away from");
        };
        let Store::Postgres(to) = open(&args.to).await? else {
            bail!("--to must be a PostgreSQL database (postgres://USER:PASSWORD@HOST/DB)");
        };
        let total = copy::rows_to_copy(&from).await?;
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
                .expect("the template is valid"),
        );
        let copied = copy::sqlite_to_postgres(&from, &to, |n| bar.inc(n))
            .await
            .context("copying")?;
        bar.finish_and_clear();
        let mut differ = Vec::new();
        for c in &copied {
            let mark = if c.source == c.target { "" } else { "  DIFFERS" };
            println!("{:<18} {:>10} → {:>10}{mark}", c.table, c.source, c.target);
            if c.source != c.target {
                differ.push(c.table);
            }
        }
        if !differ.is_empty() {
            bail!(
                "the copy's counts differ for {}: do not switch to {}",
                differ.join(", "),
                redacted_url(&args.to)
            );
        }
        println!(
            "copied {total} rows from {} to {}; start `serve` with TRELLIS_DATABASE_URL set to the new database",
            redacted_url(&args.from),
            redacted_url(&args.to)
        );
        Ok(ExitCode::SUCCESS)
    })
}
