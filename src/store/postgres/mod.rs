//! The PostgreSQL store (docs/design-postgres.md): a pool opened from a `postgres://` URL,
//! migrations of its own from `migrations/postgres/`, and READ COMMITTED transactions. It
//! implements every method of `store::sqlite` and the journey port, so `serve`, the CLI and
//! the simulator's `Stage` run on it as they do on SQLite. The several-runner leases
//! (§5) come in the next increment: until then, one runner per database.
//!
//! Times are BIGINT milliseconds, as on SQLite. JSON columns are `jsonb`: values go in as
//! text cast to `jsonb` (or inside one `jsonb` array of rows) and come out as `::text`, so
//! rows decode with `serde_json` exactly as on SQLite.
//!
//! One module per concern, the same split as `store::sqlite`: `journey` (the due queries and
//! the port's impls), `journey_batch` (a wave's load and write), `ingest` (customers, events
//! and suppressions as the API writes them) and `housekeeping` (pause flags, workflow
//! versions, the sweep's paging, computed traits, settings), `outbox` (claims, outcomes,
//! delivery reports) and `read_models` (what the API shows).

use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{Error, OpenOptions, decode, from_millis, query};
use crate::model::{Customer, CustomerId, Event, EventId};

mod housekeeping;
mod ingest;
mod journey;
mod journey_batch;
mod leases;
mod outbox;
mod read_models;

/// The migrations of `migrations/postgres/`, with their own `_sqlx_migrations` table.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A PostgreSQL database. Clones share the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This runner's name and what it holds.
    leases: std::sync::Arc<leases::Leases>,
    /// Why the last write failed for a reason that passes, until a write commits again;
    /// `/healthz` reports it.
    write_failure: Health,
}

/// The reason writes fail now, shared by a store and its transactions.
type Health = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// One READ COMMITTED transaction. Dropped without [`PgTx::commit`], it rolls back (sqlx
/// queues the ROLLBACK, and the pool's ping on release sends it, so the connection holds no
/// row locks once back in the pool).
pub struct PgTx {
    tx: Transaction<'static, Postgres>,
    health: Health,
    leases: std::sync::Arc<leases::Leases>,
}

/// `url` with its password hidden, for error messages.
fn redacted(url: &str) -> String {
    super::redacted_url(url)
}

impl PgStore {
    /// Opens and migrates the database at `url`, such as
    /// `postgres://trellis:secret@127.0.0.1:5432/trellis`. The database must exist; the
    /// schema is made in the first schema of the session's `search_path`.
    ///
    /// # Errors
    /// When the URL does not parse, or the database cannot be reached or migrated.
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, Error> {
        let connect = PgConnectOptions::from_str(url).map_err(|source| Error::Open {
            url: redacted(url),
            source,
        })?;
        Self::open_with(connect, options, &redacted(url)).await
    }

    /// Opens and migrates the database `connect` names; `label` names it in errors (never
    /// with a password). `options` maps as on SQLite: `max_connections` is the pool's size,
    /// `gate_wait` how long a caller waits for a connection (there is no write gate: row
    /// locks replace it), `lock_wait` the session's `lock_timeout`.
    ///
    /// # Errors
    /// When the database cannot be reached or migrated.
    pub async fn open_with(
        connect: PgConnectOptions,
        options: OpenOptions,
        label: &str,
    ) -> Result<Self, Error> {
        let runner = leases::runner_id();
        let connect = connect
            .application_name(&format!("trellis {runner}"))
            .options([
                (
                    "lock_timeout",
                    format!("{}ms", options.lock_wait.as_millis().max(1)),
                ),
                ("statement_timeout", "30s".to_owned()),
                ("idle_in_transaction_session_timeout", "30s".to_owned()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.gate_wait.max(Duration::from_secs(1)))
            .connect_with(connect)
            .await
            .map_err(|source| Error::Open {
                url: label.to_owned(),
                source,
            })?;
        MIGRATOR.run(&pool).await.map_err(Error::Migrate)?;
        let leases =
            std::sync::Arc::new(leases::Leases::new(runner, options.lease_ttl, pool.clone()));
        tokio::spawn(leases::renew_outbox(std::sync::Arc::downgrade(&leases)));
        Ok(Self {
            pool,
            leases,
            write_failure: Health::default(),
        })
    }

    /// The connection pool, for tests that look at what was stored.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a READ COMMITTED write transaction.
    ///
    /// # Errors
    /// When no connection could be had in time, or the database refuses.
    pub async fn begin(&self) -> Result<PgTx, Error> {
        let tx = self.pool.begin().await.map_err(|e| {
            let err = query("beginning a transaction")(e);
            super::note_failure(&self.write_failure, &err);
            err
        })?;
        Ok(PgTx {
            tx,
            health: std::sync::Arc::clone(&self.write_failure),
            leases: std::sync::Arc::clone(&self.leases),
        })
    }

    /// Whether writes work: `Err` with the reason while the last write failed for a reason
    /// that passes (disk full, no connection), until a write commits again. While failing,
    /// each call tries a one-row write, so health turns good by itself once the cause goes.
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
        let probe = async {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO settings (name, value) VALUES ('write_probe', $1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(std::process::id().to_string())
            .execute(&mut *tx.tx)
            .await
            .map_err(query("probing a write"))?;
            tx.commit().await
        };
        probe
            .await
            .map_err(|err| crate::scheduler::error_chain(&err))
    }

    /// This runner's id (`<host>/<pid>/<random>`), as its leases and sessions name it.
    pub fn runner(&self) -> &str {
        &self.leases.runner
    }

    /// Whether a delivery of the claimed message `key` may start: this runner still holds
    /// its claim, recently enough that no other runner can have taken it.
    pub fn still_claimed(&self, key: &str) -> bool {
        self.leases.still_claimed(key)
    }

    /// Takes or keeps the leader lease `name` (such as `sweep`): true while this runner is
    /// the one that does that job.
    ///
    /// # Errors
    /// On a database error.
    pub async fn lead(&self, name: &str) -> Result<bool, Error> {
        leases::lead(&self.pool, &self.leases, name)
            .await
            .map_err(query("taking a leader lease"))
    }

    /// Until `shutdown`, turns the notifications on `trellis_due` (sent when an ingest or
    /// a journey write commits) into nudges: `events` wakes the scheduler, `outbox` the
    /// dispatcher, whichever runner sent them. A lost connection is made again (what was
    /// sent meanwhile is lost, and the workers' one-second poll finds it).
    pub async fn listen_for_work(
        &self,
        events: std::sync::Arc<tokio::sync::Notify>,
        outbox: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                listener.listen("trellis_due").await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = match listening.await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "Listening for new work failed; polling meanwhile.");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    heard = listener.recv() => match heard {
                        Ok(n) if n.payload() == "events" => events.notify_one(),
                        Ok(n) if n.payload() == "outbox" => outbox.notify_one(),
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "The connection listening for new work broke; making it again.");
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Gives back every customer lease this runner holds (at shutdown: another runner takes
    /// them at once instead of after their expiry).
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_leases(&self) -> Result<(), Error> {
        let (ids, tokens) = self.leases.take_customers();
        sqlx::query(
            "UPDATE customer_leases SET expires_at = 0
             WHERE customer_id = ANY($1) AND token = ANY($2) AND runner_id = $3",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&self.leases.runner)
        .execute(&self.pool)
        .await
        .map_err(query("giving back customer leases"))?;
        // The leader lease too, so another runner sweeps without waiting for its end.
        sqlx::query("DELETE FROM leader_leases WHERE runner_id = $1")
            .bind(&self.leases.runner)
            .execute(&self.pool)
            .await
            .map_err(query("giving back leader leases"))?;
        Ok(())
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

impl PgTx {
    /// Commits.
    ///
    /// # Errors
    /// When the commit fails; nothing was written.
    pub async fn commit(self) -> Result<(), Error> {
        let health = self.health;
        match self.tx.commit().await.map_err(query("committing")) {
            Ok(()) => {
                if let Ok(mut failure) = health.lock() {
                    *failure = None;
                }
                Ok(())
            }
            Err(err) => {
                super::note_failure(&health, &err);
                Err(err)
            }
        }
    }

    /// Ends a transaction that wrote nothing (it commits, which frees the connection at
    /// once; a dropped transaction's rollback is only queued).
    ///
    /// # Errors
    /// When the database refuses even that.
    pub async fn end_unwritten(self) -> Result<(), Error> {
        self.tx
            .commit()
            .await
            .map_err(query("ending a transaction"))
    }
}

/// An event from a row of `id, name, at, properties::text`.
fn event_from_row(r: &PgRow) -> Result<Event, Error> {
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

/// A customer from a `profile::text` column.
fn customer_from(profile: &str) -> Result<Customer, Error> {
    serde_json::from_str(profile).map_err(decode("a customer profile"))
}

/// A stored customer id.
fn customer_id(id: String) -> Result<CustomerId, Error> {
    CustomerId::parse(id).map_err(|e| decode("a customer id")(serde::de::Error::custom(e)))
}

/// A limit as PostgreSQL's `LIMIT` takes it.
fn limit(n: u32) -> i64 {
    i64::from(n)
}

/// Stored milliseconds, or none.
fn at(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(from_millis)
}
