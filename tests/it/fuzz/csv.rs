//! Fuzz target: CSV files as `trellis import customers|events FILE.csv` reads them.

use jiff::Timestamp;
use trellis::cli::import::{customers_from_csv, events_from_csv};

use super::mutate::{HOSTILE, mutate, raw};
use super::{Rng, run};

/// Header cells: the known columns, typed ones, unknown types, odd names.
const COLUMNS: &[&str] = &[
    "id",
    "email",
    "phone",
    "timezone",
    "locale",
    "consent_email",
    "consent_sms",
    "tags",
    "customer_id",
    "name",
    "timestamp",
    "plan",
    "lifetime_value:number",
    "vip:boolean",
    "zip:string",
    "age:bool",
    "size:float",
    ":number",
    "",
    "a:b:c",
    " id ",
    "\"quoted, name\"",
    "id",
];

/// Cells: good values, near misses and hostile text.
const CELLS: &[&str] = &[
    "ada",
    "ada@example.com",
    "not-an-email",
    "+1 415 555 0101",
    "America/New_York",
    "Mars/Olympus",
    "../../etc/passwd",
    "UTC",
    "true",
    "no",
    "maybe",
    "vip;beta;;",
    "order_completed",
    "$reserved",
    "2026-01-05T10:00:00Z",
    "last tuesday",
    "120.5",
    "\"a \"\"quoted\"\" cell\"",
    "\"line\nbreak\"",
    "\"unterminated",
    "",
    " ",
];

const CSV_TOKENS: &[&str] = &[
    ",", "\"", "\"\"", "\n", "\r\n", ",,,,", ";", ":number", ":boolean",
];

/// A CSV: a header of some columns, then rows of cells, some rows short or long.
fn csv(rng: &mut Rng) -> Vec<u8> {
    let width = 1 + rng.below(8);
    let header: Vec<&str> = (0..width).map(|_| *rng.pick(COLUMNS)).collect();
    let mut text = header.join(",");
    text.push('\n');
    for _ in 0..rng.below(20) {
        let cells = if rng.one_in(10) {
            rng.below(width + 2)
        } else {
            width
        };
        let row: Vec<String> = (0..cells)
            .map(|_| match rng.below(6) {
                0 => (*rng.pick(HOSTILE)).to_owned(),
                1 => "9".repeat(rng.size(400)),
                _ => (*rng.pick(CELLS)).to_owned(),
            })
            .collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    text.into_bytes()
}

/// A CSV input: raw bytes, a mutated seed or generated file, or a generated file.
fn csv_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(6) {
        0 => raw(rng, 512),
        1 | 2 => {
            let seed = rng.pick(seeds).clone();
            let other = csv(rng);
            mutate(rng, &seed, &other, CSV_TOKENS, &[("\"", "\"")])
        }
        3 => {
            let seed = csv(rng);
            let other = rng.pick(seeds).clone();
            mutate(rng, &seed, &other, CSV_TOKENS, &[])
        }
        _ => csv(rng),
    }
}

#[test]
fn csv_imports_refuse_bad_rows_clearly() {
    let now: Timestamp = "2026-03-02T15:00:00Z".parse().expect("a timestamp");
    let seeds: Vec<Vec<u8>> = vec![
        b"id,email,phone,timezone,consent_email,tags,plan,lifetime_value:number\n\
          ada,ada@example.com,+1 415 555 0101,America/New_York,true,vip;beta,pro,120.5\n\
          bob,not-an-email,,,false,,free,0\n"
            .to_vec(),
        b"id,customer_id,name,timestamp,value:number,currency\n\
          o1,ada,order_completed,2026-01-05T10:00:00Z,59.9,EUR\n"
            .to_vec(),
    ];
    run(
        "csv",
        // Import files may be large, but rows are read one by one: half a megabyte of
        // hostile rows tries as much as more would, in a debug build's 100 ms.
        |rng| {
            let mut input = vec![rng.next() as u8];
            input.extend(csv_input(rng, &seeds));
            input.truncate(512 * 1024);
            input
        },
        // The first byte says which import reads the rest: customers or events.
        |input| {
            let (customers, text) = (input[0] & 1 == 0, String::from_utf8_lossy(&input[1..]));
            let refusals = |rows: Vec<(usize, Result<(), String>)>| {
                for (line, row) in rows {
                    assert!(line >= 2, "row line {line}");
                    if let Err(reason) = row {
                        assert!(!reason.trim().is_empty(), "line {line}: an empty reason");
                    }
                }
            };
            let rows = if customers {
                customers_from_csv(&text)
                    .map(|rows| rows.into_iter().map(|(l, r)| (l, r.map(drop))).collect())
            } else {
                events_from_csv(&text, now)
                    .map(|rows| rows.into_iter().map(|(l, r)| (l, r.map(drop))).collect())
            };
            match rows {
                Ok(rows) => refusals(rows),
                Err(err) => assert!(!err.to_string().trim().is_empty()),
            }
        },
    );
}
