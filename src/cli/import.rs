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
    /// `tags` (separated by `;`); other CSV columns become attributes, as text unless the
    /// header declares `name:number` or `name:boolean`.
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
pub type Row<T> = (usize, Result<T, String>);

/// The type a CSV column declares in its header (`age:number`); undeclared columns are text,
/// so a phone `+15551230007`, an id `007` or a zip `02134` arrive exactly as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    /// Kept as written (the default).
    String,
    /// A JSON number; a cell that is not one refuses the row.
    Number,
    /// `true`/`false` (also `yes`/`no`, `1`/`0`); anything else refuses the row.
    Boolean,
}

/// One CSV column: its name and declared type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    kind: ColumnType,
}

impl Column {
    /// Reads a header cell: `name` or `name:type`.
    fn parse(header: &str, position: usize) -> anyhow::Result<Self> {
        let header = header.trim();
        let (name, kind) = match header.rsplit_once(':') {
            None => (header, ColumnType::String),
            Some((name, kind)) => {
                let kind = match kind.trim() {
                    "string" | "text" => ColumnType::String,
                    "number" => ColumnType::Number,
                    "boolean" | "bool" => ColumnType::Boolean,
                    other => bail!(
                        "column {position} ({header:?}) declares an unknown type {other:?}: use string, number or boolean"
                    ),
                };
                (name.trim(), kind)
            }
        };
        if name.is_empty() {
            bail!("column {position} has no name");
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }

    /// A cell of this column as JSON: empty is absent; text stays text unless declared.
    fn value(&self, text: &str) -> Result<Option<Value>, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        let refuse = |what: &str| format!("{}: {trimmed:?} is not {what}", self.name);
        match self.kind {
            ColumnType::String => Ok(Some(Value::String(trimmed.to_owned()))),
            ColumnType::Number => {
                if let Ok(n) = trimmed.parse::<i64>() {
                    return Ok(Some(Value::from(n)));
                }
                match trimmed.parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(Some(Value::from(x))),
                    _ => Err(refuse("a number")),
                }
            }
            ColumnType::Boolean => parse_flag(trimmed)
                .map(|b| Some(Value::Bool(b)))
                .ok_or_else(|| refuse("true or false")),
        }
    }
}

/// `true`/`yes`/`y`/`1` or `false`/`no`/`n`/`0`, in any case.
fn parse_flag(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Some(true),
        "false" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// The CSV's rows as maps from column name to value, or why a row is unreadable.
fn csv_rows(path: &Path) -> anyhow::Result<Vec<Row<Map<String, Value>>>> {
    let reader = csv_reader()
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    rows_of(reader, &path.display().to_string())
}

/// How every CSV is read: a header, then one value per column on every row.
fn csv_reader() -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder.flexible(false);
    builder
}

/// The rows of an open CSV reader; `name` names the source in messages.
fn rows_of<R: std::io::Read>(
    mut reader: csv::Reader<R>,
    name: &str,
) -> anyhow::Result<Vec<Row<Map<String, Value>>>> {
    let columns: Vec<Column> = reader
        .headers()
        .context("reading the CSV header")?
        .iter()
        .enumerate()
        .map(|(i, h)| Column::parse(h, i + 1))
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("reading the header of {name}"))?;
    for (i, column) in columns.iter().enumerate() {
        if let Some(j) = columns[..i].iter().position(|c| c.name == column.name) {
            bail!(
                "{name}: columns {} and {} are both named {:?}",
                j + 1,
                i + 1,
                column.name
            );
        }
    }
    Ok(reader
        .records()
        .enumerate()
        .map(|(i, record)| {
            let cells = record
                .map_err(|_| "the row does not have one value per column".to_owned())
                .and_then(|record| {
                    let mut cells = Map::new();
                    for (column, text) in columns.iter().zip(record.iter()) {
                        if let Some(value) = column.value(text)? {
                            cells.insert(column.name.clone(), value);
                        }
                    }
                    Ok(cells)
                });
            (i + 2, cells)
        })
        .collect())
}

/// The rows of CSV text, as read from a file: the pure part of `csv_rows`.
fn text_rows(text: &str) -> anyhow::Result<Vec<Row<Map<String, Value>>>> {
    rows_of(csv_reader().from_reader(text.as_bytes()), "the CSV")
}

/// Customers from CSV text, as `trellis import customers FILE.csv` reads them: each row
/// parsed or refused with its line and reason, a repeated id refused. Pure: nothing is
/// stored.
///
/// # Errors
/// A header that cannot be read: an unknown column type, an empty or repeated name.
pub fn customers_from_csv(text: &str) -> anyhow::Result<Vec<Row<Customer>>> {
    Ok(refuse_repeated_ids(
        text_rows(text)?
            .into_iter()
            .map(|(line, cells)| (line, cells.and_then(customer_from_cells)))
            .collect(),
    ))
}

/// Events from CSV text, as `trellis import events FILE.csv` reads them, `now` standing in
/// for a missing timestamp. Pure: nothing is stored.
///
/// # Errors
/// A header that cannot be read.
pub fn events_from_csv(
    text: &str,
    now: jiff::Timestamp,
) -> anyhow::Result<Vec<Row<(CustomerId, Event)>>> {
    Ok(text_rows(text)?
        .into_iter()
        .map(|(line, cells)| {
            (
                line,
                cells.map(event_from_cells).and_then(|v| to_event(v, now)),
            )
        })
        .collect())
}

/// Refuses every row whose customer id an earlier row of the same file already used: two
/// rows for one customer in one file are a mistake to show, not a silent replacement.
fn refuse_repeated_ids(rows: Vec<Row<Customer>>) -> Vec<Row<Customer>> {
    let mut first_line: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    rows.into_iter()
        .map(|(line, row)| {
            let row =
                row.and_then(
                    |customer| match first_line.entry(customer.id.as_str().to_owned()) {
                        std::collections::hash_map::Entry::Occupied(first) => Err(format!(
                            "id {:?} repeats line {}; the first row was kept",
                            customer.id.as_str(),
                            first.get()
                        )),
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(line);
                            Ok(customer)
                        }
                    },
                );
            (line, row)
        })
        .collect()
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
            Some(other) => other
                .as_str()
                .and_then(parse_flag)
                .ok_or_else(|| format!("{name}: {other} is not true/false")),
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
        return Ok(refuse_repeated_ids(
            csv_rows(path)?
                .into_iter()
                .map(|(line, cells)| (line, cells.and_then(customer_from_cells)))
                .collect(),
        ));
    }
    Ok(refuse_repeated_ids(
        ndjson_rows(path)?
            .into_iter()
            .map(|(line, value)| {
                let customer = value
                    .and_then(|v| serde_json::from_value::<Customer>(v).map_err(|e| e.to_string()))
                    .and_then(Customer::normalise_contacts);
                (line, customer)
            })
            .collect(),
    ))
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

/// An event as the API would take it, or why not.
fn to_event(value: Value, now: jiff::Timestamp) -> Result<(CustomerId, Event), String> {
    serde_json::from_value::<EventIn>(value)
        .map_err(|e| e.to_string())?
        .into_event(now)
        .map_err(|e| e.to_string())
}

fn parse_events(
    path: &Path,
    now: jiff::Timestamp,
) -> anyhow::Result<Vec<Row<(CustomerId, Event)>>> {
    if is_csv(path) {
        return Ok(csv_rows(path)?
            .into_iter()
            .map(|(line, cells)| {
                (
                    line,
                    cells.map(event_from_cells).and_then(|v| to_event(v, now)),
                )
            })
            .collect());
    }
    Ok(ndjson_rows(path)?
        .into_iter()
        .map(|(line, value)| (line, value.and_then(|v| to_event(v, now))))
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
