//! `trellis import`: good rows land, bad rows are reported with line and reason.

use std::process::Command;

use trellis::model::CustomerId;
use trellis::store::{OpenOptions, Store};

fn import(kind: &str, file: &std::path::Path, db: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["import", kind])
        .arg(file)
        .args(["--database-url", db])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Writes `contents` to a file named `name` in a fresh folder and imports it as `kind` into
/// a fresh database there; returns the folder (kept alive), the database URL, the exit code
/// and what was printed, with the file's path shortened to its name.
fn import_new(
    kind: &str,
    name: &str,
    contents: impl AsRef<[u8]>,
) -> (tempfile::TempDir, String, Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let file = dir.path().join(name);
    std::fs::write(&file, contents).unwrap();
    let (code, out) = import(kind, &file, &db);
    let out = out.replace(file.to_str().unwrap(), name);
    (dir, db, code, out)
}

/// Whether the store at `db` holds customer `id`.
async fn has_customer(db: &str, id: &str) -> bool {
    let store = Store::open(db, OpenOptions::default()).await.unwrap();
    store
        .customer(&CustomerId::parse(id).unwrap())
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_csv_of_customers_imports_the_good_rows_and_names_the_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let csv = dir.path().join("customers.csv");
    std::fs::write(
        &csv,
        "id,email,phone,timezone,consent_email,tags,plan,lifetime_value:number\n\
         ada,ada@example.com,+1 415 555 0101,America/New_York,true,vip;beta,pro,120.5\n\
         bob,not-an-email,,,false,,free,0\n\
         cy,cy@example.com,,Mars/Olympus,yes,,free,3\n\
         ,nobody@example.com,,,,,,\n\
         dee,dee@example.com,,,no,,free,7\n",
    )
    .unwrap();
    let (code, out) = import("customers", &csv, &db);
    assert_eq!(code, Some(1), "{out}");
    insta::assert_snapshot!(out.replace(csv.to_str().unwrap(), "customers.csv"), @r#"
    customers.csv: 5 rows, 2 imported, 0 duplicates, 3 refused
      line 3: email: "not-an-email" is not an email address
      line 4: timezone: unknown time zone "Mars/Olympus" (expected an IANA name such as "Europe/Paris")
      line 5: id is missing
    "#);

    let store = Store::open(&db, OpenOptions::default()).await.unwrap();
    let ada = store
        .customer(&CustomerId::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ada.phone.as_deref(), Some("+14155550101"));
    assert!(ada.consent.email && ada.tags.contains("vip"));
    assert_eq!(ada.attributes["plan"], "pro");
    assert_eq!(ada.attributes["lifetime_value"], 120.5);
    assert!(
        store
            .customer(&CustomerId::parse("dee").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .customer(&CustomerId::parse("bob").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn ndjson_events_import_with_duplicates_counted_and_bad_lines_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        "{\"id\": \"o1\", \"customer_id\": \"ada\", \"name\": \"order_completed\", \"timestamp\": \"2026-01-05T10:00:00Z\", \"properties\": {\"value\": 20}}\n\
         {\"id\": \"o1\", \"customer_id\": \"ada\", \"name\": \"order_completed\", \"timestamp\": \"2026-01-05T10:00:00Z\"}\n\
         {\"customer_id\": \"ada\"}\n\
         not json\n\
         {\"id\": \"o2\", \"customer_id\": \"bob\", \"name\": \"order_completed\"}\n",
    )
    .unwrap();
    let (code, out) = import("events", &file, &db);
    assert_eq!(code, Some(1));
    insta::assert_snapshot!(out.replace(file.to_str().unwrap(), "events.ndjson"), @"
    events.ndjson: 5 rows, 2 imported, 1 duplicates, 2 refused
      line 3: missing field `name`
      line 4: not JSON: expected ident at line 1 column 2
    ");
    let store = Store::open(&db, OpenOptions::default()).await.unwrap();
    let events = store
        .recent_events(&CustomerId::parse("ada").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(
        store
            .customer(&CustomerId::parse("bob").unwrap())
            .await
            .unwrap()
            .is_some(),
        "a minimal profile for bob"
    );
}

#[tokio::test]
async fn csv_events_take_their_extra_columns_as_properties() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let file = dir.path().join("orders.csv");
    std::fs::write(
        &file,
        "id,customer_id,name,timestamp,value:number,currency\n\
         o1,ada,order_completed,2026-01-05T10:00:00Z,59.9,EUR\n\
         o2,ada,order_completed,last tuesday,10,EUR\n",
    )
    .unwrap();
    let (code, out) = import("events", &file, &db);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("2 rows, 1 imported, 0 duplicates, 1 refused")
            && out.contains("line 3: timestamp \"last tuesday\" is not RFC 3339"),
        "{out}"
    );
    let store = Store::open(&db, OpenOptions::default()).await.unwrap();
    let events = store
        .recent_events(&CustomerId::parse("ada").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(events[0].properties["value"], 59.9);
    assert_eq!(events[0].properties["currency"], "EUR");
    assert_eq!(events[0].timestamp.to_string(), "2026-01-05T10:00:00Z");
}

#[tokio::test]
async fn csv_cells_stay_text_unless_their_column_declares_a_type() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let csv = dir.path().join("customers.csv");
    std::fs::write(
        &csv,
        "id,phone,zip,age:number,vip:boolean,note\n\
         007,+15551230007,02134,41,yes,1e3\n\
         008,,00501,forty,no,true\n\
         009,,10001,7,maybe,x\n\
         007,+15551230008,99999,50,no,again\n",
    )
    .unwrap();
    let (code, out) = import("customers", &csv, &db);
    assert_eq!(code, Some(1), "{out}");
    insta::assert_snapshot!(out.replace(csv.to_str().unwrap(), "customers.csv"), @r#"
    customers.csv: 4 rows, 1 imported, 0 duplicates, 3 refused
      line 3: age: "forty" is not a number
      line 4: vip: "maybe" is not true or false
      line 5: id "007" repeats line 2; the first row was kept
    "#);
    let store = Store::open(&db, OpenOptions::default()).await.unwrap();
    let bond = store
        .customer(&CustomerId::parse("007").unwrap())
        .await
        .unwrap()
        .expect("the id keeps its leading zeros");
    assert_eq!(bond.phone.as_deref(), Some("+15551230007"));
    assert_eq!(bond.attributes["zip"], "02134");
    assert_eq!(bond.attributes["age"], 41);
    assert_eq!(bond.attributes["vip"], true);
    assert_eq!(
        bond.attributes["note"], "1e3",
        "undeclared columns are text"
    );
    assert!(
        store
            .customer(&CustomerId::parse("7").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn an_unknown_column_type_stops_the_import_before_any_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, "id,age:int\nada,3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["import", "customers"])
        .arg(&csv)
        .args(["--database-url", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown type \"int\": use string, number or boolean"),
        "{err}"
    );
}

#[tokio::test]
async fn ndjson_customers_with_a_repeated_id_are_reported() {
    let (_dir, db, code, out) = import_new(
        "customers",
        "customers.ndjson",
        "{\"id\": \"ada\", \"email\": \"ada@example.com\"}\n{\"id\": \"ada\", \"email\": \"other@example.com\"}\n",
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("line 2: id \"ada\" repeats line 1"), "{out}");
    let store = Store::open(&db, OpenOptions::default()).await.unwrap();
    let ada = store
        .customer(&CustomerId::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ada.email.as_deref(), Some("ada@example.com"));
}

#[tokio::test]
async fn an_ndjson_line_that_is_not_utf8_is_refused_and_the_rest_imported() {
    let mut bytes = b"{\"id\": \"ada\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"id\": \"b\xffb\"}\n\n");
    bytes.extend_from_slice(b"{\"id\": \"cy\"}");
    let (_dir, db, code, out) = import_new("customers", "customers.ndjson", bytes);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("3 rows, 2 imported, 0 duplicates, 1 refused")
            && out.contains("line 2: the line is not UTF-8"),
        "{out}"
    );
    for id in ["ada", "cy"] {
        assert!(has_customer(&db, id).await, "{id}");
    }
}

#[tokio::test]
async fn a_refused_row_after_a_value_spanning_lines_is_named_by_its_own_line() {
    let (_dir, _db, code, out) = import_new(
        "customers",
        "customers.csv",
        "id,note,age:number\nada,\"two\nlines\",3\nbob,x,old\n",
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("line 4: age: \"old\" is not a number"),
        "{out}"
    );
}
