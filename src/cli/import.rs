//! `trellis import customers|events FILE`: bulk loads from CSV or NDJSON with a progress bar
//! and a summary. A bad row is reported with its line and reason and never stops the good
//! ones. Rows are written in transactions of [`BATCH`]; events land as pending, and a running
//! `trellis serve` processes them within a second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use crate::api::events::EventIn;
use crate::clock::{Clock, SystemClock};
use crate::model::{Consent, Customer, CustomerId, Event};
use crate::store::Inserted;

/// Rows per transaction.
const BATCH: usize = 500;
/// Refusals printed in full; the rest are counted.
const SHOWN_REFUSALS: usize = 50;

/// What to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Profiles: `id`, `email`, `phone`, `timezone`, `locale`, `consent_email`, `consent_sms`,
    /// `tags` (separated by `;`); other CSV columns become attributes.
    Customers,
    /// Events: `id`, `customer_id`, `name`, `timestamp`; other CSV columns become properties.
    Events,
}

/// Arguments of `trellis import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `customers` or `events`.
    pub kind: Kind,
    /// A `.csv` file, or NDJSON (`.ndjson`, `.jsonl`, `.json`: one JSON object a line).
    pub file: PathBuf,
    /// The database.
    #[arg(
        long,
        env = "TRELLIS_DATABASE_URL",
        default_value = "sqlite://trellis.db"
    )]
    pub database_url: String,
}

/// One row, parsed or refused, with its line number.
type Row<T> = (usize, Result<T, String>);

/// A CSV cell as JSON: numbers and booleans as such, empty as absent, the rest as text.
fn cell_value(text: &str) -> Option<Value> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(n) = text.parse::<i64>() {
        return Some(Value::from(n));
    }
    if let Ok(x) = text.parse::<f64>()
        && x.is_finite()
    {
        return Some(Value::from(x));
    }
    match text {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => Some(Value::String(text.to_owned())),
    }
}

/// The CSV's rows as maps from column name to value, or why a row is unreadable.
fn csv_rows(path: &Path) -> anyhow::Result<Vec<Row<Map<String, Value>>>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let headers: Vec<String> = reader
        .headers()
        .context("reading the CSV header")?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    Ok(reader
        .records()
        .enumerate()
        .map(|(i, record)| {
            let cells = record
                .map_err(|_| "the row does not have one value per column".to_owned())
                .map(|record| {
                    headers
                        .iter()
                        .zip(record.iter())
                        .filter_map(|(name, text)| cell_value(text).map(|v| (name.clone(), v)))
                        .collect()
                });
            (i + 2, cells)
        })
        .collect())
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

fn ndjson_rows(path: &Path) -> anyhow::Result<Vec<(usize, Result<Value, String>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            (
                i + 1,
                serde_json::from_str(l).map_err(|e| format!("not JSON: {e}")),
            )
        })
        .collect())
}

/// A customer from a CSV row's cells.
fn customer_from_cells(mut cells: Map<String, Value>) -> Result<Customer, String> {
    let text = |cells: &mut Map<String, Value>, name: &str| {
        cells
            .remove(name)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    let flag = |cells: &mut Map<String, Value>, name: &str| -> Result<bool, String> {
        match cells.remove(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(Value::Number(n)) if n.as_i64() == Some(1) || n.as_i64() == Some(0) => {
                Ok(n.as_i64() == Some(1))
            }
            Some(other) => match other.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("yes" | "y") => Ok(true),
                Some("no" | "n") => Ok(false),
                _ => Err(format!("{name}: {other} is not true/false")),
            },
        }
    };
    let id = text(&mut cells, "id").ok_or("id is missing")?;
    let timezone = text(&mut cells, "timezone");
    if let Some(zone) = &timezone {
        crate::model::check_zone(zone).map_err(|e| format!("timezone: {e}"))?;
    }
    let customer = Customer {
        id: CustomerId::parse(id).map_err(|e| format!("id: {e}"))?,
        email: text(&mut cells, "email"),
        phone: text(&mut cells, "phone"),
        timezone,
        locale: text(&mut cells, "locale"),
        tags: text(&mut cells, "tags")
            .map(|t| {
                t.split(';')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        consent: Consent {
            email: flag(&mut cells, "consent_email")?,
            sms: flag(&mut cells, "consent_sms")?,
        },
        attributes: cells,
    };
    customer.normalise_contacts()
}

fn parse_customers(path: &Path) -> anyhow::Result<Vec<Row<Customer>>> {
    if is_csv(path) {
        return Ok(csv_rows(path)?
            .into_iter()
            .map(|(line, cells)| (line, cells.and_then(customer_from_cells)))
            .collect());
    }
    Ok(ndjson_rows(path)?
        .into_iter()
        .map(|(line, value)| {
            let customer = value
                .and_then(|v| serde_json::from_value::<Customer>(v).map_err(|e| e.to_string()))
                .and_then(Customer::normalise_contacts);
            (line, customer)
        })
        .collect())
}

/// An API-shaped event from a CSV row: the known columns, and the rest as properties.
fn event_from_cells(mut cells: Map<String, Value>) -> Value {
    let mut event = Map::new();
    for field in ["id", "customer_id", "name", "timestamp"] {
        if let Some(v) = cells.remove(field) {
            event.insert(
                field.into(),
                Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
            );
        }
    }
    event.insert("properties".into(), Value::Object(cells));
    Value::Object(event)
}

fn parse_events(
    path: &Path,
    now: jiff::Timestamp,
) -> anyhow::Result<Vec<Row<(CustomerId, Event)>>> {
    let to_event = |value: Value| -> Result<(CustomerId, Event), String> {
        serde_json::from_value::<EventIn>(value)
            .map_err(|e| e.to_string())?
            .into_event(now)
            .map_err(|e| e.to_string())
    };
    if is_csv(path) {
        return Ok(csv_rows(path)?
            .into_iter()
            .map(|(line, cells)| (line, cells.map(event_from_cells).and_then(to_event)))
            .collect());
    }
    Ok(ndjson_rows(path)?
        .into_iter()
        .map(|(line, value)| (line, value.and_then(to_event)))
        .collect())
}

/// Imports the file and prints the summary; exits 1 when any row was refused.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (runtime, store) = super::open_store(&args.database_url)?;
    runtime.block_on(async {
        let now = SystemClock.now();
        let (n_rows, refused, accepted, duplicates) = match args.kind {
            Kind::Customers => {
                let rows = parse_customers(&args.file)?;
                let (refused, good) = split(rows);
                let bar = progress(good.len());
                for chunk in good.chunks(BATCH) {
                    let mut tx = store.begin().await?;
                    for (_, customer) in chunk {
                        tx.put_customer(customer, now).await?;
                    }
                    tx.commit().await?;
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                (refused.len() + good.len(), refused, good.len(), 0)
            }
            Kind::Events => {
                let rows = parse_events(&args.file, now)?;
                let (refused, good) = split(rows);
                let bar = progress(good.len());
                let mut duplicates = 0;
                for chunk in good.chunks(BATCH) {
                    let mut tx = store.begin().await?;
                    for (_, (customer, event)) in chunk {
                        if tx.insert_event(customer, event, now).await? == Inserted::Duplicate {
                            duplicates += 1;
                        }
                    }
                    tx.commit().await?;
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                (
                    refused.len() + good.len(),
                    refused,
                    good.len() - duplicates,
                    duplicates,
                )
            }
        };
        if n_rows == 0 {
            bail!("{} holds no rows", args.file.display());
        }
        println!(
            "{}: {n_rows} rows, {accepted} imported, {duplicates} duplicates, {} refused",
            args.file.display(),
            refused.len()
        );
        for (line, reason) in refused.iter().take(SHOWN_REFUSALS) {
            println!("  line {line}: {reason}");
        }
        if refused.len() > SHOWN_REFUSALS {
            println!("  … and {} more", refused.len() - SHOWN_REFUSALS);
        }
        Ok(if refused.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// A refused row: its line and the reason.
type Refusal = (usize, String);

fn split<T>(rows: Vec<Row<T>>) -> (Vec<Refusal>, Vec<(usize, T)>) {
    let mut refused = Vec::new();
    let mut good = Vec::new();
    for (line, row) in rows {
        match row {
            Ok(value) => good.push((line, value)),
            Err(reason) => refused.push((line, reason)),
        }
    }
    (refused, good)
}

fn progress(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .expect("the template is valid"),
    );
    bar
}
