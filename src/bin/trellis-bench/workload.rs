//! The benchmark workload: its files, its customers, and the ways to run Trellis on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use jiff::Timestamp;
use serde_json::json;
use trellis::cli::serve::{Service, build};
use trellis::cli::{Cli, Command};
use trellis::clock::Clock;
use trellis::model::Customer;
use trellis::store::Store;

/// `bench/` in the source tree: workflows and templates of the workload.
pub fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench")
}

/// The workflows folder of one workload: `standard`, `steps` or `broadcast`.
pub fn workflows(name: &str) -> PathBuf {
    bench_dir().join("workloads").join(name)
}

/// The templates every workload uses.
pub fn templates() -> PathBuf {
    bench_dir().join("templates")
}

/// Customer `i` of the workload: every other one on the pro plan, all with an email
/// address, a phone and consent to both channels, in UTC.
pub fn customer(i: usize) -> Customer {
    let plan = if i.is_multiple_of(2) { "pro" } else { "free" };
    let city = ["Lisbon", "Denver", "Osaka", "Lagos", "Berlin"][i % 5];
    serde_json::from_value(json!({
        "id": format!("c{i:07}"),
        "email": format!("customer{i}@example.com"),
        "phone": format!("+1555{:07}", i % 10_000_000),
        "timezone": "UTC",
        "locale": "en",
        "attributes": {
            "first_name": format!("Customer{i}"),
            "company": format!("Company {}", i % 997),
            "city": city,
            "plan": plan,
        },
        "consent": { "email": true, "sms": true },
    }))
    .expect("the workload's customers are valid")
}

/// Writes customers `0..n` straight into the store's `customers` table, in large
/// transactions: setup, not a measured path.
pub async fn seed_customers(store: &Store, n: usize, now: Timestamp) -> anyhow::Result<()> {
    const CHUNK: usize = 5_000;
    const ROWS_PER_INSERT: usize = 200;
    for start in (0..n).step_by(CHUNK) {
        let mut tx = store
            .sqlite_pool()
            .expect("the bench measures SQLite")
            .begin()
            .await?;
        let end = (start + CHUNK).min(n);
        for rows in (start..end).collect::<Vec<_>>().chunks(ROWS_PER_INSERT) {
            let placeholders = vec!["(?, ?, ?, ?)"; rows.len()].join(", ");
            let sql = format!(
                "INSERT INTO customers (id, profile, created_at, updated_at) VALUES {placeholders}"
            );
            let mut query = sqlx::query(&sql);
            for &i in rows {
                let customer = customer(i);
                query = query
                    .bind(customer.id.as_str().to_owned())
                    .bind(serde_json::to_string(&customer)?)
                    .bind(now.as_millisecond())
                    .bind(now.as_millisecond());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The `trellis serve` settings of every run, for a database in `dir`; `extra` adds or
/// overrides flags.
pub fn serve_args(dir: &Path, workload: &str, extra: &[String]) -> Vec<String> {
    serve_args_on(&database_url(dir), dir, workload, extra)
}

/// [`serve_args`] on the database at `url` (the outbox folder still in `dir`).
pub fn serve_args_on(url: &str, dir: &Path, workload: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--database-url".into(),
        url.to_owned(),
        "--insecure-no-auth".into(),
        "--workflows".into(),
        workflows(workload).display().to_string(),
        "--templates".into(),
        templates().display().to_string(),
        "--outbox".into(),
        dir.join("outbox").display().to_string(),
        "--from".into(),
        "Acme <news@acme.example>".into(),
        "--public-url".into(),
        "https://trellis.example".into(),
        // The run must not depend on the hour it starts at.
        "--quiet-hours-sms".into(),
        "none".into(),
        "--segment-refresh".into(),
        "1d".into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// `sqlite://…` for the database file in `dir`.
pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("trellis.db").display())
}

/// Builds the same service `trellis serve` runs, in this process, on `clock`.
pub async fn service(
    dir: &Path,
    workload: &str,
    extra: &[String],
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Service> {
    service_on(&database_url(dir), dir, workload, extra, clock).await
}

/// [`service`] on the database at `url`.
pub async fn service_on(
    url: &str,
    dir: &Path,
    workload: &str,
    extra: &[String],
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Service> {
    let mut argv = vec!["trellis".to_owned(), "serve".to_owned()];
    argv.extend(serve_args_on(url, dir, workload, extra));
    let Command::Serve(config) = Cli::try_parse_from(argv)?.command else {
        unreachable!("the arguments name the serve command")
    };
    build(&config, clock).await.context("building the service")
}

/// Peak and current resident memory of a process, in bytes, from `/proc/<pid>/status`.
pub fn memory_of(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} is not in /proc/{pid}/status"))?;
        let kb: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Size of the database with its WAL, in bytes.
pub fn database_bytes(dir: &Path) -> u64 {
    ["trellis.db", "trellis.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Ticks the scheduler at `now` until a tick handles nothing by `count` (woken, fired…);
/// returns the total it handled.
pub async fn tick_until_idle(
    ctx: &trellis::scheduler::SchedulerCtx,
    now: Timestamp,
    count: fn(&trellis::scheduler::TickReport) -> usize,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let handled = count(&trellis::scheduler::tick(ctx, now).await?);
        if handled == 0 {
            return Ok(total);
        }
        total += handled;
    }
}
