//! `trellis import customers|events FILE`: bulk loads from CSV or NDJSON with a progress bar
//! and a summary. A bad row is reported with its line and reason and never stops the good
//! ones. The file is streamed: rows are read, checked and written in transactions of
//! [`BATCH`] as they come, so memory stays flat whatever the file's size (only the ids seen,
//! for the repeated-id check, and the first refusals are kept). Events land as pending, and a
//! running `trellis serve` processes them within a second.

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

/// How every CSV is read: a header, then one value per column on every row.
fn csv_reader() -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder.flexible(false);
    builder
}

/// A CSV's rows, read one at a time: maps from column name to value, or why a row is
/// unreadable.
struct CsvRows<R: std::io::Read> {
    records: csv::StringRecordsIntoIter<R>,
    columns: Vec<Column>,
    /// Rows returned so far.
    index: usize,
    /// The file could not be read on: no more rows.
    failed: bool,
}

impl<R: std::io::Read> CsvRows<R> {
    /// Reads and checks the header; `name` names the source in messages.
    fn new(mut reader: csv::Reader<R>, name: &str) -> anyhow::Result<Self> {
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
        Ok(Self {
            records: reader.into_records(),
            columns,
            index: 0,
            failed: false,
        })
    }

    /// Bytes read so far, for the progress bar.
    fn position(&self) -> u64 {
        self.records.reader().position().byte()
    }
}

impl<R: std::io::Read> Iterator for CsvRows<R> {
    type Item = Row<Map<String, Value>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.index += 1;
        // The line a row starts on (a quoted value may span lines), and never before the
        // row's place after the header (csv counts only `\n`, so a file ending its lines
        // with a bare `\r` would be all "line 1").
        let after_header = self.index + 1;
        let line_of = |position: Option<&csv::Position>| {
            position
                .map_or(0, |p| usize::try_from(p.line()).unwrap_or(usize::MAX))
                .max(after_header)
        };
        let record = match self.records.next()? {
            Ok(record) => record,
            Err(err) => {
                let line = line_of(err.position());
                let reason = match err.kind() {
                    csv::ErrorKind::Io(io) => {
                        // The reader would meet the same error again: stop here.
                        self.failed = true;
                        format!("cannot read the file: {io}")
                    }
                    csv::ErrorKind::UnequalLengths { .. } => {
                        "the row does not have one value per column".to_owned()
                    }
                    csv::ErrorKind::Utf8 { .. } => "the row is not UTF-8".to_owned(),
                    _ => err.to_string(),
                };
                return Some((line, Err(reason)));
            }
        };
        let line = line_of(record.position());
        let mut cells = Map::new();
        for (column, text) in self.columns.iter().zip(record.iter()) {
            match column.value(text) {
                Ok(Some(value)) => {
                    cells.insert(column.name.clone(), value);
                }
                Ok(None) => {}
                Err(reason) => return Some((line, Err(reason))),
            }
        }
        Some((line, Ok(cells)))
    }
}

/// An NDJSON file's objects, read one line at a time; blank lines are skipped.
struct NdjsonRows<R: std::io::Read> {
    reader: std::io::BufReader<R>,
    line: usize,
    bytes: u64,
    buf: Vec<u8>,
    failed: bool,
}

impl NdjsonRows<std::fs::File> {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            reader: std::io::BufReader::new(file),
            line: 0,
            bytes: 0,
            buf: Vec::new(),
            failed: false,
        })
    }
}

impl<R: std::io::Read> Iterator for NdjsonRows<R> {
    type Item = Row<Value>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        while !self.failed {
            self.buf.clear();
            let read = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(err) => {
                    // The file cannot be read on: refuse where it stopped, then end.
                    self.failed = true;
                    return Some((self.line + 1, Err(format!("cannot read the file: {err}"))));
                }
            };
            self.line += 1;
            self.bytes += read as u64;
            let Ok(text) = std::str::from_utf8(&self.buf) else {
                return Some((self.line, Err("the line is not UTF-8".to_owned())));
            };
            if text.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str(text.trim_end_matches(['\n', '\r']))
                .map_err(|e| format!("not JSON: {e}"));
            return Some((self.line, value));
        }
        None
    }
}

/// Customers from CSV text, as `trellis import customers FILE.csv` reads them — the same
/// rows, checks and repeated-id rule, from text instead of a file. Pure: nothing is stored.
///
/// # Errors
/// A header that cannot be read: an unknown column type, an empty or repeated name.
pub fn customers_from_csv(text: &str) -> anyhow::Result<Vec<Row<Customer>>> {
    let mut source = Source::csv_text(text)?;
    let mut seen = RepeatedIds::default();
    Ok(std::iter::from_fn(|| source.next_customer())
        .map(|row| seen.check(row))
        .collect())
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
    let mut source = Source::csv_text(text)?;
    Ok(std::iter::from_fn(|| source.next_event(now)).collect())
}

/// Refuses every row whose customer id an earlier row of the same file already used: two
/// rows for one customer in one file are a mistake to show, not a silent replacement.
#[derive(Default)]
struct RepeatedIds {
    first_line: std::collections::HashMap<String, usize>,
}

impl RepeatedIds {
    fn check(&mut self, (line, row): Row<Customer>) -> Row<Customer> {
        let row =
            row.and_then(
                |customer| match self.first_line.entry(customer.id.as_str().to_owned()) {
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
    }
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
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

/// A file's rows as the kind of import takes them, read one at a time.
enum Source<R: std::io::Read> {
    Csv(CsvRows<R>),
    Ndjson(NdjsonRows<R>),
}

impl<'a> Source<&'a [u8]> {
    /// CSV text, read as a file would be.
    fn csv_text(text: &'a str) -> anyhow::Result<Self> {
        Ok(Self::Csv(CsvRows::new(
            csv_reader().from_reader(text.as_bytes()),
            "the CSV",
        )?))
    }
}

impl Source<std::fs::File> {
    fn open(path: &Path) -> anyhow::Result<Self> {
        if is_csv(path) {
            let reader = csv_reader()
                .from_path(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Self::Csv(CsvRows::new(
                reader,
                &path.display().to_string(),
            )?))
        } else {
            Ok(Self::Ndjson(NdjsonRows::open(path)?))
        }
    }
}

impl<R: std::io::Read> Source<R> {
    /// The next row as a customer.
    fn next_customer(&mut self) -> Option<Row<Customer>> {
        match self {
            Self::Csv(rows) => rows
                .next()
                .map(|(line, cells)| (line, cells.and_then(customer_from_cells))),
            Self::Ndjson(rows) => rows.next().map(|(line, value)| {
                let customer = value
                    .and_then(|v| serde_json::from_value::<Customer>(v).map_err(|e| e.to_string()))
                    .and_then(Customer::normalise_contacts);
                (line, customer)
            }),
        }
    }

    /// The next row as an event, `now` standing in for a missing timestamp.
    fn next_event(&mut self, now: jiff::Timestamp) -> Option<Row<(CustomerId, Event)>> {
        match self {
            Self::Csv(rows) => rows.next().map(|(line, cells)| {
                (
                    line,
                    cells.map(event_from_cells).and_then(|v| to_event(v, now)),
                )
            }),
            Self::Ndjson(rows) => rows
                .next()
                .map(|(line, value)| (line, value.and_then(|v| to_event(v, now)))),
        }
    }

    /// Bytes read so far.
    fn position(&self) -> u64 {
        match self {
            Self::Csv(rows) => rows.position(),
            Self::Ndjson(rows) => rows.bytes,
        }
    }
}

/// What an import did, kept small however large the file: the first refusals in full, the
/// rest counted.
#[derive(Default)]
struct Tally {
    rows: usize,
    imported: usize,
    duplicates: usize,
    refused: usize,
    shown: Vec<Refusal>,
}

impl Tally {
    /// Counts a batch's rows and returns the good ones.
    fn take<T>(&mut self, batch: Vec<Row<T>>) -> Vec<T> {
        let mut good = Vec::with_capacity(batch.len());
        for (line, row) in batch {
            self.rows += 1;
            match row {
                Ok(value) => good.push(value),
                Err(reason) => {
                    self.refused += 1;
                    if self.shown.len() < SHOWN_REFUSALS {
                        self.shown.push((line, reason));
                    }
                }
            }
        }
        good
    }
}

/// Imports the file and prints the summary; exits 1 when any row was refused.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let (runtime, store) = super::open_store(&args.database_url)?;
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    let mut source = Source::open(&args.file)?;
    runtime.block_on(async {
        let now = SystemClock.now();
        let bar = progress(size);
        let mut tally = Tally::default();
        match args.kind {
            Kind::Customers => {
                let mut seen = RepeatedIds::default();
                loop {
                    let batch: Vec<_> = std::iter::from_fn(|| source.next_customer())
                        .take(BATCH)
                        .map(|row| seen.check(row))
                        .collect();
                    if batch.is_empty() {
                        break;
                    }
                    let good = tally.take(batch);
                    let mut tx = store.begin().await?;
                    for customer in &good {
                        tx.put_customer(customer, now).await?;
                    }
                    tx.commit().await?;
                    tally.imported += good.len();
                    bar.set_position(source.position().min(size));
                }
            }
            Kind::Events => loop {
                let batch: Vec<_> = std::iter::from_fn(|| source.next_event(now))
                    .take(BATCH)
                    .collect();
                if batch.is_empty() {
                    break;
                }
                let good = tally.take(batch);
                let mut tx = store.begin().await?;
                for (customer, event) in &good {
                    match tx.insert_event(customer, event, now).await? {
                        Inserted::Accepted => tally.imported += 1,
                        Inserted::Duplicate => tally.duplicates += 1,
                    }
                }
                tx.commit().await?;
                bar.set_position(source.position().min(size));
            },
        }
        bar.finish_and_clear();
        if tally.rows == 0 {
            bail!("{} holds no rows", args.file.display());
        }
        println!(
            "{}: {} rows, {} imported, {} duplicates, {} refused",
            args.file.display(),
            tally.rows,
            tally.imported,
            tally.duplicates,
            tally.refused
        );
        for (line, reason) in &tally.shown {
            println!("  line {line}: {reason}");
        }
        if tally.refused > tally.shown.len() {
            println!("  … and {} more", tally.refused - tally.shown.len());
        }
        Ok(if tally.refused == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// A refused row: its line and the reason.
type Refusal = (usize, String);

/// A progress bar over the file's bytes: rows vary in size, bytes are what is known up front.
fn progress(bytes: u64) -> ProgressBar {
    let bar = ProgressBar::new(bytes);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("the template is valid"),
    );
    bar
}
