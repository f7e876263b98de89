//! `trellis store copy`: an installation moved from a SQLite file to an empty PostgreSQL
//! database, table by table, with every journey where it was.
//!
//! Each table is read in rowid order, in pages, as JSON objects (`json_object`, JSON columns
//! as JSON, not as text) and written with one `INSERT … SELECT * FROM
//! jsonb_populate_recordset(NULL::table, $1)` per page, so the columns are matched by name
//! and typed by PostgreSQL. `events.seq` keeps its values (`OVERRIDING SYSTEM VALUE`, then the
//! identity moves past the largest). A message that was `sending` when the source stopped
//! arrives `pending`, as SQLite's own restart would make it, since a PostgreSQL claim needs a
//! lease. `attempts` gets its `customer_id` from its message. Customer leases are made by the
//! target's trigger, one per customer.

use sqlx::Row;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Error, query};

/// Rows read and written per statement.
const PAGE: i64 = 5_000;

/// One table: its name, the SQLite `FROM` clause (its rows as `r`), and the JSON object of a
/// row, named as the PostgreSQL columns.
struct Table {
    name: &'static str,
    from: &'static str,
    row: &'static str,
}

/// Every table, customers first.
const TABLES: [Table; 13] = [
    Table {
        name: "customers",
        from: "customers r",
        row: "json_object('id', r.id, 'profile', json(r.profile), 'created_at', r.created_at,
              'updated_at', r.updated_at, 'version', r.version)",
    },
    Table {
        name: "events",
        from: "events r",
        row: "json_object('customer_id', r.customer_id, 'seq', r.seq, 'id', r.id, 'name', r.name,
              'at', r.at, 'properties', json(r.properties), 'received_at', r.received_at,
              'processed', json(CASE r.processed WHEN 0 THEN 'false' ELSE 'true' END))",
    },
    Table {
        name: "workflow_versions",
        from: "workflow_versions r",
        row: "json_object('workflow_id', r.workflow_id, 'version', r.version, 'source', r.source,
              'path', r.path, 'loaded_at', r.loaded_at)",
    },
    Table {
        name: "workflows",
        from: "workflows r",
        row: "json_object('id', r.id, 'current_version', r.current_version,
              'paused', json(CASE r.paused WHEN 0 THEN 'false' ELSE 'true' END))",
    },
    Table {
        name: "enrollments",
        from: "enrollments r",
        row: "json_object('customer_id', r.customer_id, 'id', r.id, 'workflow_id', r.workflow_id,
              'workflow_version', r.workflow_version,
              'active', json(CASE r.active WHEN 0 THEN 'false' ELSE 'true' END),
              'node', r.node, 'wake_at', r.wake_at, 'state', json(r.state),
              'entered_at', r.entered_at, 'updated_at', r.updated_at)",
    },
    Table {
        name: "messages",
        from: "messages r",
        row: "json_object('customer_id', r.customer_id, 'key', r.key, 'enrollment_id', r.enrollment_id,
              'workflow_id', r.workflow_id, 'node', r.node, 'channel', r.channel,
              'template', r.template, 'category', r.category,
              'status', CASE r.status WHEN 'sending' THEN 'pending' ELSE r.status END,
              'payload', json(r.payload), 'attempts', r.attempts,
              'next_attempt_at', r.next_attempt_at, 'last_error', r.last_error,
              'provider_id', r.provider_id, 'delivery_status', r.delivery_status,
              'delivery_is_final', json(CASE r.delivery_is_final WHEN 0 THEN 'false' ELSE 'true' END),
              'created_at', r.created_at, 'updated_at', r.updated_at, 'sent_at', r.sent_at,
              'counts_at', r.counts_at)",
    },
    Table {
        name: "attempts",
        from: "attempts r JOIN messages m ON m.key = r.message_key",
        row: "json_object('customer_id', m.customer_id, 'message_key', r.message_key,
              'attempt', r.attempt, 'at', r.at, 'outcome', r.outcome, 'detail', r.detail)",
    },
    Table {
        name: "conversions",
        from: "conversions r",
        row: "json_object('customer_id', r.customer_id, 'enrollment_id', r.enrollment_id,
              'workflow_id', r.workflow_id, 'event', r.event, 'value', r.value, 'arm', r.arm,
              'message_key', r.message_key, 'at', r.at)",
    },
    Table {
        name: "settings",
        from: "settings r",
        row: "json_object('name', r.name, 'value', r.value)",
    },
    Table {
        name: "segment_members",
        from: "segment_members r",
        row: "json_object('customer_id', r.customer_id, 'segment', r.segment, 'since', r.since)",
    },
    Table {
        name: "suppressions",
        from: "suppressions r",
        row: "json_object('channel', r.channel, 'address', r.address, 'reason', r.reason, 'at', r.at)",
    },
    Table {
        name: "scheduled_fires",
        from: "scheduled_fires r",
        row: "json_object('customer_id', r.customer_id, 'workflow_id', r.workflow_id,
              'fire_at', r.fire_at)",
    },
    Table {
        name: "trigger_fires",
        from: "trigger_fires r",
        row: "json_object('customer_id', r.customer_id, 'workflow_id', r.workflow_id,
              'occurrence', r.occurrence)",
    },
];

/// One table's rows in the source and in the target once copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The table.
    pub table: &'static str,
    /// Rows in the source.
    pub source: i64,
    /// Rows in the target.
    pub target: i64,
}

/// How many rows the source holds in all the tables copied, for a progress bar.
///
/// # Errors
/// On a database error.
pub async fn rows_to_copy(from: &SqliteStore) -> Result<u64, Error> {
    let mut total = 0;
    for table in &TABLES {
        total += count_sqlite(from, table).await?;
    }
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Copies every table from `from` to `to`, which must hold no customer, event or message
/// yet; `progress` hears how many rows each page added. Returns each table's counts in both,
/// for the caller to check.
///
/// # Errors
/// A target that is not empty, or a database error (the target then holds what was
/// copied so far: drop its tables, or use another database, and copy again).
pub async fn sqlite_to_postgres(
    from: &SqliteStore,
    to: &PgStore,
    mut progress: impl FnMut(u64),
) -> Result<Vec<Copied>, Error> {
    for table in ["customers", "events", "messages"] {
        if count_postgres(to, table).await? > 0 {
            return Err(Error::Constraint(format!(
                "the target database already has {table}: `store copy` writes into an empty one only"
            )));
        }
    }
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in &TABLES {
        let select = format!(
            "SELECT r.rowid, {row} FROM {from} WHERE r.rowid > ?1 ORDER BY r.rowid LIMIT ?2",
            row = table.row,
            from = table.from
        );
        let overriding = if table.name == "events" {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let insert = format!(
            "INSERT INTO {name} {overriding} SELECT * FROM jsonb_populate_recordset(NULL::{name}, $1::jsonb)",
            name = table.name
        );
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(&select)
                .bind(after)
                .bind(PAGE)
                .fetch_all(from.pool())
                .await
                .map_err(query("reading the source"))?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            let page: Vec<&str> = rows.iter().map(|r| r.get::<&str, _>(1)).collect();
            let json = format!("[{}]", page.join(","));
            sqlx::query(&insert)
                .bind(json)
                .execute(to.pool())
                .await
                .map_err(query("writing the target"))?;
            progress(u64::try_from(rows.len()).unwrap_or(0));
        }
        counts.push(Copied {
            table: table.name,
            source: count_sqlite(from, table).await?,
            target: count_postgres(to, table.name).await?,
        });
    }
    // The identity goes on past the copied events.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('events', 'seq'), GREATEST((SELECT max(seq) FROM events), 1))",
    )
    .execute(to.pool())
    .await
    .map_err(query("moving the event sequence on"))?;
    Ok(counts)
}

/// Rows of `table` in the source, as it is copied (attempts with their message).
async fn count_sqlite(from: &SqliteStore, table: &Table) -> Result<i64, Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.from))
        .fetch_one(from.pool())
        .await
        .map_err(query("counting the source's rows"))
}

/// Rows of `table` in the target.
async fn count_postgres(to: &PgStore, table: &str) -> Result<i64, Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(to.pool())
        .await
        .map_err(query("counting the target's rows"))
}
