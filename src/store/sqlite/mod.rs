//! The SQLite store: WAL, `synchronous=FULL` by default, a busy timeout, migrations from
//! `migrations/`, and `BEGIN IMMEDIATE` for every transaction that reads then writes.
//!
//! Writers in this process queue for SQLite's one write lock on an async mutex (the write
//! gate) instead of in SQLite's busy handler: the busy handler polls with sleeps of up to
//! 100 ms, so a scheduler batch, the dispatcher and the API contending for the lock would
//! spend most of their time asleep. The busy timeout still covers other processes (the CLI,
//! a backup) that write to the same file.
//!
//! One module per concern, each adding to `SqliteStore` and `SqliteTx`: `journey` (what a scheduler
//! step reads and writes), `outbox` (claims, outcomes, delivery reports), `ingest` (what the
//! API and import write), `housekeeping` (settings, workflow versions, the sweep, traits) and
//! `read_models` (what the API shows).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{
    AttemptOutcome, EnrollmentView, Error, Inserted, MessageView, NewMessage, OutboxMessage,
    StoredEvent, decode, from_millis, millis, note_failure, query,
};
use crate::engine::Enrollment;
use crate::journey::{CustomerState, CustomerWrite, FireWrite, LoadSpec};
use crate::model::{Channel, Customer, CustomerId, Event, EventId};

mod housekeeping;
mod ingest;
mod journey;
mod journey_batch;
mod outbox;
mod read_models;

/// How to open the database.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// `synchronous=NORMAL` instead of `FULL`: faster commits, but a power loss (not a
    /// process crash) may lose the last transactions.
    pub synchronous_normal: bool,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a writer waits behind this process's other writers (the write gate). Past
    /// it the store answers [`Error::is_unavailable`] and the API 503.
    pub gate_wait: Duration,
    /// How long a writer that holds the gate waits for another process's lock (SQLite's
    /// busy timeout). With `gate_wait`, no request waits without bound.
    pub lock_wait: Duration,
    /// On PostgreSQL, how long a runner's lease on a customer or a claimed message lasts
    /// unless renewed: a runner that dies loses its work to the others this long after.
    /// SQLite, one runner by construction, has no leases.
    pub lease_ttl: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            synchronous_normal: false,
            max_connections: 8,
            gate_wait: Duration::from_secs(6),
            lock_wait: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// The database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    write_gate: Arc<Mutex<()>>,
    gate_wait: Duration,
    /// Why the last write failed for a reason that passes (disk full, locked), until a
    /// write commits again; `/healthz` reports it.
    write_failure: Arc<std::sync::Mutex<Option<String>>>,
}

/// One `BEGIN IMMEDIATE` transaction. Dropped without [`SqliteTx::commit`], it rolls back.
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    health: Arc<std::sync::Mutex<Option<String>>>,
    // Declared after `tx`, so the gate opens only once the transaction is dropped. sqlx only
    // queues the rollback of a dropped transaction, so paths that end without writing commit
    // instead (an empty claim), leaving the next writer no lock to wait for.
    _gate: OwnedMutexGuard<()>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url`, such as
    /// `sqlite://trellis.db`.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, Error> {
        let open_error = |source| Error::Open {
            url: super::redacted_url(url),
            source,
        };
        if !url.starts_with("sqlite:") {
            // sqlx would take anything else for a file name ("postgres://…" included).
            return Err(Error::UnsupportedUrl(super::redacted_url(url)));
        }
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(open_error)?
            .create_if_missing(true)
            // sqlx leaves the journal mode alone unless told; WAL lets readers run beside
            // the one writer.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_normal {
                SqliteSynchronous::Normal
            } else {
                SqliteSynchronous::Full
            })
            .busy_timeout(options.lock_wait)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.gate_wait.max(Duration::from_secs(1)))
            .after_release(|conn, _| {
                Box::pin(async move {
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    // A dropped transaction queues its ROLLBACK; a round trip lets it run.
                    conn.ping().await?;
                    // Still counted as open: a COMMIT failed (SQLITE_FULL) after SQLite had
                    // rolled back by itself, so no ROLLBACK can end it and every later BEGIN
                    // on this connection would fail. Close it instead of reusing it.
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(connect)
            .await
            .map_err(open_error)?;
        MIGRATOR.run(&pool).await.map_err(Error::Migrate)?;
        Ok(Self {
            pool,
            write_gate: Arc::new(Mutex::new(())),
            gate_wait: options.gate_wait,
            write_failure: Arc::default(),
        })
    }

    /// The connection pool, for tools that measure the database itself (`trellis-bench`
    /// compares the runtime with raw SQL on the same file and settings).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction with `BEGIN IMMEDIATE`, so it holds the write lock from
    /// the start; a deferred transaction that reads and then writes can fail with
    /// "database is locked" despite the busy timeout.
    ///
    /// # Errors
    /// When the lock cannot be had within the busy timeout.
    pub async fn begin(&self) -> Result<SqliteTx, Error> {
        let waiting = Arc::clone(&self.write_gate).lock_owned();
        let gate = tokio::time::timeout(self.gate_wait, waiting)
            .await
            .map_err(|_| self.note(Error::Busy("waiting for the write lock")))?;
        self.begin_holding(gate).await
    }

    /// Starts the write transaction once this process's write gate is held.
    async fn begin_holding(&self, gate: OwnedMutexGuard<()>) -> Result<SqliteTx, Error> {
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.note(query("beginning a transaction")(e)))?;
        Ok(SqliteTx {
            tx,
            health: Arc::clone(&self.write_failure),
            _gate: gate,
        })
    }

    /// Remembers a passing write failure for [`SqliteStore::write_health`].
    fn note(&self, err: Error) -> Error {
        note_failure(&self.write_failure, &err);
        err
    }

    /// Whether writes work: `Err` with the reason while the last write failed for a reason
    /// that passes (disk full, locked), until a write commits again. While failing, each
    /// call tries a one-row write, so health turns good by itself once space returns.
    ///
    /// # Errors
    /// The reason writes fail.
    pub async fn write_health(&self) -> Result<(), String> {
        let failing = self
            .write_failure
            .lock()
            .map(|f| f.is_some())
            .unwrap_or(true);
        if !failing {
            return Ok(());
        }
        // Probe only when no writer holds the gate: the health check, which anyone may call,
        // never queues in front of the writers it reports on. A busy gate keeps the last word.
        let Ok(gate) = Arc::clone(&self.write_gate).try_lock_owned() else {
            let reason = self.write_failure.lock().ok().and_then(|f| f.clone());
            return Err(reason.unwrap_or_else(|| "writes are failing".into()));
        };
        let probe = async {
            let mut tx = self.begin_holding(gate).await?;
            sqlx::query(
                "INSERT INTO settings (name, value) VALUES ('write_probe', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(std::process::id().to_string())
            .execute(&mut *tx.tx)
            .await
            .map_err(query("probing a write"))?;
            tx.commit().await
        };
        match probe.await {
            Ok(()) => Ok(()),
            Err(err) => Err(crate::scheduler::error_chain(&err)),
        }
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query("pinging the database"))?;
        Ok(())
    }
}

fn event_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Event, Error> {
    Ok(Event {
        id: r
            .get::<Option<String>, _>(0)
            .and_then(|id| EventId::parse(id).ok()),
        name: r.get(1),
        timestamp: from_millis(r.get(2)),
        properties: serde_json::from_str(r.get::<&str, _>(3))
            .map_err(decode("event properties"))?,
    })
}

impl SqliteTx {
    /// Ends a transaction that wrote nothing: the lock goes now rather than by the rollback
    /// sqlx queues on drop, and, having written nothing, it says nothing of write health.
    ///
    /// # Errors
    /// When the database refuses even that.
    pub async fn end_unwritten(self) -> Result<(), Error> {
        self.tx
            .commit()
            .await
            .map_err(query("ending a transaction"))
    }

    /// Commits.
    ///
    /// # Errors
    /// When the commit fails; nothing was written.
    pub async fn commit(self) -> Result<(), Error> {
        let health = Arc::clone(&self.health);
        match self.tx.commit().await.map_err(query("committing")) {
            Ok(()) => {
                if let Ok(mut failure) = health.lock() {
                    *failure = None;
                }
                Ok(())
            }
            Err(err) => {
                note_failure(&health, &err);
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::testing::temp_store;

    #[tokio::test]
    async fn a_url_it_does_not_open_is_refused_without_its_password() {
        let err =
            super::SqliteStore::open("postgres://u:s3cret@127.0.0.1:1/db", Default::default())
                .await
                .expect_err("not a SQLite URL");
        let text = crate::scheduler::error_chain(&err);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("sqlite://PATH") && text.contains("u:***@127.0.0.1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_locked_sqlite_database_is_an_error_that_passes() {
        use sqlx::Connection;
        use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut holder)
            .await
            .unwrap();
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();
        let source = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut other)
            .await
            .unwrap_err();
        let err = crate::store::Error::Query { what: "x", source };
        assert!(err.is_unavailable(), "{err:?}");
    }

    #[tokio::test]
    async fn a_second_writer_waits_at_the_gate_until_the_first_commits() {
        let (store, _dir) = temp_store().await;
        let first = store.begin().await.unwrap();
        let second = tokio::spawn({
            let store = store.clone();
            async move { store.begin().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "the second writer waits for the first"
        );
        first.commit().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second writer enters once the first commits")
            .unwrap()
            .unwrap();
    }
}
