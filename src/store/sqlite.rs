//! The SQLite store: WAL, `synchronous=FULL` by default, a busy timeout, migrations from
//! `migrations/`, and `BEGIN IMMEDIATE` for every transaction that reads then writes.
//!
//! Writers in this process queue for SQLite's one write lock on an async mutex (the write
//! gate) instead of in SQLite's busy handler: the busy handler polls with sleeps of up to
//! 100 ms, so a scheduler batch, the dispatcher and the API contending for the lock would
//! spend most of their time asleep. The busy timeout still covers other processes (the CLI,
//! a backup) that write to the same file.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{
    AttemptOutcome, Conversion, EnrollmentView, Error, Inserted, MessageView, NewMessage,
    OutboxMessage, StoredEvent, decode, from_millis, millis, query,
};
use crate::engine::{Enrollment, Status};
use crate::model::{Customer, CustomerId, Event, EventId};

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
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            synchronous_normal: false,
            max_connections: 8,
            gate_wait: Duration::from_secs(6),
            lock_wait: Duration::from_secs(3),
        }
    }
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    write_gate: Arc<Mutex<()>>,
    gate_wait: Duration,
    /// Why the last write failed for a reason that passes (disk full, locked), until a
    /// write commits again; `/healthz` reports it.
    write_failure: Arc<std::sync::Mutex<Option<String>>>,
}

/// One `BEGIN IMMEDIATE` transaction. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    tx: Transaction<'static, Sqlite>,
    health: Arc<std::sync::Mutex<Option<String>>>,
    // Declared after `tx` so the rollback on drop happens before the next writer enters.
    _gate: OwnedMutexGuard<()>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`, such as
    /// `sqlite://trellis.db`.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, Error> {
        let open_error = |source| Error::Open {
            url: url.to_owned(),
            source,
        };
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
    pub async fn begin(&self) -> Result<Tx, Error> {
        let waiting = Arc::clone(&self.write_gate).lock_owned();
        let gate = tokio::time::timeout(self.gate_wait, waiting)
            .await
            .map_err(|_| self.note(Error::Busy("waiting for the write lock")))?;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.note(query("beginning a transaction")(e)))?;
        Ok(Tx {
            tx,
            health: Arc::clone(&self.write_failure),
            _gate: gate,
        })
    }

    /// Remembers a passing write failure for [`Store::write_health`].
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
        let probe = async {
            let mut tx = self.begin().await?;
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

    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        let row = sqlx::query("SELECT profile FROM customers WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query("reading a customer"))?;
        row.map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("a customer profile")))
            .transpose()
    }

    /// The customer's most recent events, newest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn recent_events(&self, id: &CustomerId, limit: u32) -> Result<Vec<Event>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, at, properties FROM events WHERE customer_id = ? AND name NOT LIKE '$%' ORDER BY at DESC, seq DESC LIMIT ?",
        )
        .bind(id.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading recent events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// The customer's enrollments, newest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn enrollments_of(&self, id: &CustomerId) -> Result<Vec<EnrollmentView>, Error> {
        let rows = sqlx::query(
            "SELECT state FROM enrollments WHERE customer_id = ? ORDER BY entered_at DESC",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading enrollments"))?;
        rows.iter()
            .map(|r| {
                let e: Enrollment =
                    serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("an enrollment"))?;
                Ok(EnrollmentView {
                    id: e.id.clone(),
                    workflow_id: e.workflow_id.to_string(),
                    workflow_version: e.workflow_version.clone(),
                    active: e.is_active(),
                    node: e.current_node().map(ToString::to_string),
                    next_wake: e.next_wake(),
                    entered_at: e.entered_at,
                    exit_reason: match &e.status {
                        Status::Exited { reason, .. } => Some(reason.to_string()),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    /// The customer's messages, newest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn messages_of(&self, id: &CustomerId) -> Result<Vec<MessageView>, Error> {
        let rows = sqlx::query(
            "SELECT key, workflow_id, node, channel, template, status, attempts, last_error, provider_id, created_at, sent_at, delivery_status
             FROM messages WHERE customer_id = ? ORDER BY created_at DESC, key",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading messages"))?;
        Ok(rows
            .iter()
            .map(|r| MessageView {
                key: r.get(0),
                workflow_id: r.get(1),
                node: r.get(2),
                channel: r.get(3),
                template: r.get(4),
                status: r.get(5),
                attempts: r.get::<i64, _>(6).try_into().unwrap_or(0),
                last_error: r.get(7),
                provider_id: r.get(8),
                created_at: from_millis(r.get(9)),
                sent_at: r.get::<Option<i64>, _>(10).map(from_millis),
                delivery_status: r.get(11),
            })
            .collect())
    }

    /// The customer's conversions, newest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn conversions_of(
        &self,
        id: &CustomerId,
    ) -> Result<Vec<super::ConversionView>, Error> {
        let rows = sqlx::query("SELECT workflow_id, event, value, arm, message_key, at FROM conversions WHERE customer_id = ? ORDER BY at DESC")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(query("reading conversions"))?;
        Ok(rows
            .iter()
            .map(|r| super::ConversionView {
                workflow_id: r.get(0),
                event: r.get(1),
                value: r.get(2),
                arm: r.get(3),
                message_key: r.get(4),
                at: from_millis(r.get(5)),
            })
            .collect())
    }

    /// Active enrollments per workflow.
    ///
    /// # Errors
    /// On a database error.
    pub async fn active_counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows = sqlx::query(
            "SELECT workflow_id, COUNT(*) FROM enrollments WHERE active = 1 GROUP BY workflow_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("counting enrollments"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The earliest wake-up among active enrollments of workflows not paused.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_wake(&self) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MIN(e.wake_at) FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active = 1 AND e.wake_at IS NOT NULL AND w.paused = 0",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query("finding the next wake-up"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    /// The earliest pending message attempt, for the dispatcher's sleep.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_attempt(&self) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MIN(m.next_attempt_at) FROM messages m JOIN workflows w ON w.id = m.workflow_id
             WHERE m.status = 'pending' AND w.paused = 0",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query("finding the next attempt"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    /// Every stored workflow version: `(workflow id, version, YAML text, path)`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn workflow_versions(&self) -> Result<Vec<(String, String, String, String)>, Error> {
        let rows = sqlx::query("SELECT workflow_id, version, source, path FROM workflow_versions")
            .fetch_all(&self.pool)
            .await
            .map_err(query("reading workflow versions"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The ids of paused workflows.
    ///
    /// # Errors
    /// On a database error.
    pub async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        let rows = sqlx::query("SELECT id FROM workflows WHERE paused = 1")
            .fetch_all(&self.pool)
            .await
            .map_err(query("reading paused workflows"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Messages that were on the wire when the process stopped go back to pending, so they
    /// are sent again with the same key. Called once at startup by the only runner.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_in_flight(&self) -> Result<u64, Error> {
        let done = sqlx::query("UPDATE messages SET status = 'pending' WHERE status = 'sending'")
            .execute(&self.pool)
            .await
            .map_err(query("releasing in-flight messages"))?;
        Ok(done.rows_affected())
    }

    /// Claims up to `limit` messages due at `now` whose workflow is not paused, marking them
    /// `sending`.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, Error> {
        let mut tx = self.begin().await?;
        // The candidates first, so that the checks below look at this batch only and a
        // claim costs the same with ten or a million messages waiting.
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT m.key FROM messages m JOIN workflows w ON w.id = m.workflow_id
             WHERE m.status = 'pending' AND m.next_attempt_at <= ?1 AND w.paused = 0
             ORDER BY m.next_attempt_at LIMIT ?2",
        )
        .bind(millis(now))
        .bind(limit)
        .fetch_all(&mut *tx.tx)
        .await
        .map_err(query("choosing messages to claim"))?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let keys = serde_json::Value::from(candidates).to_string();
        // Consent is checked once more at the last moment: a marketing message queued before
        // the customer opted out (by any route) never leaves; nor does anything to an address
        // suppressed since it was queued.
        sqlx::query(
            "UPDATE messages SET status = 'cancelled', last_error = 'consent withdrawn before sending', updated_at = ?1
             WHERE key IN (SELECT value FROM json_each(?2)) AND category = 'marketing' AND channel IN ('email', 'sms')
               AND EXISTS (SELECT 1 FROM customers c WHERE c.id = messages.customer_id
                           AND coalesce(json_extract(c.profile, '$.consent.' || messages.channel), 0) = 0)",
        )
        .bind(millis(now))
        .bind(&keys)
        .execute(&mut *tx.tx)
        .await
        .map_err(query("cancelling messages without consent"))?;
        sqlx::query(
            "UPDATE messages SET status = 'suppressed', last_error = 'address suppressed before sending', updated_at = ?1
             WHERE key IN (SELECT value FROM json_each(?2)) AND status = 'pending' AND channel IN ('email', 'sms')
               AND EXISTS (SELECT 1 FROM customers c JOIN suppressions s ON s.channel = messages.channel
                           AND s.address = lower(json_extract(c.profile, CASE messages.channel WHEN 'email' THEN '$.email' ELSE '$.phone' END))
                           WHERE c.id = messages.customer_id)",
        )
        .bind(millis(now))
        .bind(&keys)
        .execute(&mut *tx.tx)
        .await
        .map_err(query("suppressing messages to suppressed addresses"))?;
        let rows = sqlx::query(
            "UPDATE messages SET status = 'sending', updated_at = ?1
             WHERE key IN (SELECT value FROM json_each(?2)) AND status = 'pending'
             RETURNING key, workflow_id, customer_id, attempts, created_at, payload",
        )
        .bind(millis(now))
        .bind(&keys)
        .fetch_all(&mut *tx.tx)
        .await
        .map_err(query("claiming messages"))?;
        let claimed = rows
            .iter()
            .map(|r| {
                Ok(OutboxMessage {
                    key: r.get(0),
                    workflow_id: r.get(1),
                    customer_id: r.get(2),
                    attempts: r.get::<i64, _>(3).try_into().unwrap_or(0),
                    created_at: from_millis(r.get(4)),
                    payload: serde_json::from_str(r.get::<&str, _>(5))
                        .map_err(decode("a message payload"))?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records the outcomes of a batch of attempts, each as an `attempts` row plus the
    /// message's new status.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_attempts(
        &self,
        outcomes: &[(String, u32, AttemptOutcome)],
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        for (key, attempt, outcome) in outcomes {
            let (label, detail) = match outcome {
                AttemptOutcome::Sent { provider_id } => ("sent", provider_id.clone()),
                AttemptOutcome::Retry { reason, .. } => ("retry", Some(reason.clone())),
                AttemptOutcome::Failed { reason } | AttemptOutcome::Refused { reason } => {
                    ("failed", Some(reason.clone()))
                }
            };
            sqlx::query("INSERT OR REPLACE INTO attempts (message_key, attempt, at, outcome, detail) VALUES (?, ?, ?, ?, ?)")
                .bind(key)
                .bind(attempt)
                .bind(millis(now))
                .bind(label)
                .bind(&detail)
                .execute(&mut *tx.tx)
                .await
                .map_err(query("recording an attempt"))?;
            let update = match outcome {
                AttemptOutcome::Sent { provider_id } => sqlx::query(
                    "UPDATE messages SET status = 'sent', attempts = ?2, provider_id = ?3, sent_at = ?4, updated_at = ?4, last_error = NULL WHERE key = ?1",
                )
                .bind(key)
                .bind(attempt)
                .bind(provider_id)
                .bind(millis(now)),
                AttemptOutcome::Retry { next_attempt_at, reason } => sqlx::query(
                    "UPDATE messages SET status = 'pending', attempts = ?2, next_attempt_at = ?3, last_error = ?4, updated_at = ?5 WHERE key = ?1 AND status = 'sending'",
                )
                .bind(key)
                .bind(attempt)
                .bind(millis(*next_attempt_at))
                .bind(reason)
                .bind(millis(now)),
                AttemptOutcome::Failed { reason } | AttemptOutcome::Refused { reason } => sqlx::query(
                    "UPDATE messages SET status = 'failed', attempts = ?2, last_error = ?3, updated_at = ?4 WHERE key = ?1",
                )
                .bind(key)
                .bind(attempt)
                .bind(reason)
                .bind(millis(now)),
            };
            update
                .execute(&mut *tx.tx)
                .await
                .map_err(query("updating a message"))?;
            if let AttemptOutcome::Refused { reason } = outcome {
                // The address is refused for good: nothing, not even a transactional
                // message, goes to it again (claims check suppressions).
                sqlx::query(
                    "INSERT OR IGNORE INTO suppressions (channel, address, reason, at)
                     SELECT channel, lower(json_extract(payload, '$.to')), ?2, ?3
                     FROM messages WHERE key = ?1 AND json_extract(payload, '$.to') IS NOT NULL",
                )
                .bind(key)
                .bind(format!("refused by the provider: {reason}"))
                .bind(millis(now))
                .execute(&mut *tx.tx)
                .await
                .map_err(query("suppressing a refused address"))?;
            }
        }
        tx.commit().await
    }

    /// A setting, such as the unsubscribe signing key; created with `make` when absent.
    ///
    /// # Errors
    /// On a database error.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, Error> {
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT value FROM settings WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx.tx)
            .await
            .map_err(query("reading a setting"))?;
        if let Some(row) = existing {
            return Ok(row.get(0));
        }
        let value = make();
        sqlx::query("INSERT INTO settings (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(&value)
            .execute(&mut *tx.tx)
            .await
            .map_err(query("writing a setting"))?;
        tx.commit().await?;
        Ok(value)
    }

    /// Up to `limit` customer ids after `after`, in order: for sweeps over every customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        let rows = sqlx::query("SELECT id FROM customers WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(query("listing customers"))?;
        Ok(rows
            .iter()
            .filter_map(|r| CustomerId::parse(r.get::<String, _>(0)).ok())
            .collect())
    }

    /// The members of a segment, for tests and reports.
    ///
    /// # Errors
    /// On a database error.
    pub async fn segment_members(&self, segment: &str) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT customer_id FROM segment_members WHERE segment = ? ORDER BY customer_id",
        )
        .bind(segment)
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading segment members"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every customer's `order_completed` statistics, for computed traits.
    ///
    /// # Errors
    /// On a database error.
    pub async fn order_stats(&self) -> Result<Vec<crate::traits::OrderStats>, Error> {
        let rows = sqlx::query(
            "SELECT c.id, COUNT(e.seq), COALESCE(SUM(CAST(json_extract(e.properties, '$.value') AS REAL)), 0.0), MIN(e.at), MAX(e.at)
             FROM customers c LEFT JOIN events e ON e.customer_id = c.id AND e.name = 'order_completed'
             GROUP BY c.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("aggregating orders"))?;
        Ok(rows
            .iter()
            .map(|r| crate::traits::OrderStats {
                customer_id: r.get(0),
                orders: r.get::<i64, _>(1).try_into().unwrap_or(0),
                revenue: r.get(2),
                first_order: r.get::<Option<i64>, _>(3).map(from_millis),
                last_order: r.get::<Option<i64>, _>(4).map(from_millis),
            })
            .collect())
    }

    /// Writes computed traits into the customers' attributes (`rfm`, `value_tier`,
    /// `lifecycle`), a batch per transaction.
    ///
    /// # Errors
    /// On a database error.
    pub async fn write_traits(
        &self,
        traits: &[crate::traits::Traits],
        now: Timestamp,
    ) -> Result<(), Error> {
        for batch in traits.chunks(1000) {
            let mut tx = self.begin().await?;
            for t in batch {
                let (rfm, tier, stage) = t.attributes();
                sqlx::query(
                    "UPDATE customers SET updated_at = ?5, profile = CASE WHEN ?2 IS NULL
                        THEN json_set(json_remove(profile, '$.attributes.rfm'), '$.attributes.value_tier', ?3, '$.attributes.lifecycle', ?4)
                        ELSE json_set(profile, '$.attributes.rfm', json(?2), '$.attributes.value_tier', ?3, '$.attributes.lifecycle', ?4) END
                     WHERE id = ?1",
                )
                .bind(&t.customer_id)
                .bind(if rfm.is_null() { None } else { Some(rfm.to_string()) })
                .bind(tier.as_str())
                .bind(stage.as_str())
                .bind(millis(now))
                .execute(&mut *tx.tx)
                .await
                .map_err(query("writing computed traits"))?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Counts messages by status, for tests and reports.
    ///
    /// # Errors
    /// On a database error.
    pub async fn message_counts(&self) -> Result<Vec<(String, String, i64)>, Error> {
        let rows = sqlx::query("SELECT channel, status, COUNT(*) FROM messages GROUP BY channel, status ORDER BY channel, status")
            .fetch_all(&self.pool)
            .await
            .map_err(query("counting messages"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
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

/// Records `err` as the reason writes fail, when it is one that passes.
fn note_failure(health: &std::sync::Mutex<Option<String>>, err: &Error) {
    if err.is_unavailable()
        && let Ok(mut failure) = health.lock()
    {
        *failure = Some(crate::scheduler::error_chain(err));
    }
}

impl Tx {
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

    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&mut self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        let row = sqlx::query("SELECT profile FROM customers WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("reading a customer"))?;
        row.map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("a customer profile")))
            .transpose()
    }

    /// Creates or replaces a customer's profile.
    ///
    /// # Errors
    /// On a database error.
    pub async fn put_customer(&mut self, customer: &Customer, now: Timestamp) -> Result<(), Error> {
        let profile = serde_json::to_string(customer).expect("a customer always serializes");
        sqlx::query(
            "INSERT INTO customers (id, profile, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (id) DO UPDATE SET profile = excluded.profile, updated_at = excluded.updated_at",
        )
        .bind(customer.id.as_str())
        .bind(profile)
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("writing a customer"))?;
        Ok(())
    }

    /// Stores an event for a customer, creating a minimal profile for an unknown customer.
    /// An event whose id was seen before is not stored again.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_event(
        &mut self,
        customer_id: &CustomerId,
        event: &Event,
        now: Timestamp,
    ) -> Result<Inserted, Error> {
        let minimal = serde_json::to_string(&Customer::minimal(customer_id.clone()))
            .expect("a customer always serializes");
        sqlx::query("INSERT OR IGNORE INTO customers (id, profile, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)")
            .bind(customer_id.as_str())
            .bind(minimal)
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("creating a minimal customer"))?;
        let properties =
            serde_json::to_string(&event.properties).expect("a JSON map always serializes");
        let done = sqlx::query(
            "INSERT OR IGNORE INTO events (id, customer_id, name, at, properties, received_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id.as_ref().map(EventId::as_str))
        .bind(customer_id.as_str())
        .bind(&event.name)
        .bind(millis(event.timestamp))
        .bind(properties)
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("storing an event"))?;
        Ok(if done.rows_affected() == 0 {
            Inserted::Duplicate
        } else {
            Inserted::Accepted
        })
    }

    /// Up to `limit` events not yet processed, in arrival order.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn pending_events(&mut self, limit: u32) -> Result<Vec<StoredEvent>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, at, properties, seq, customer_id FROM events WHERE processed = 0 ORDER BY seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading pending events"))?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: r.get(4),
                    customer_id: CustomerId::parse(r.get::<String, _>(5))
                        .map_err(|e| decode("a customer id")(serde::de::Error::custom(e)))?,
                    event: event_from_row(r)?,
                })
            })
            .collect()
    }

    /// Marks an event processed.
    ///
    /// # Errors
    /// On a database error.
    pub async fn mark_processed(&mut self, seq: i64) -> Result<(), Error> {
        sqlx::query("UPDATE events SET processed = 1 WHERE seq = ?")
            .bind(seq)
            .execute(&mut *self.tx)
            .await
            .map_err(query("marking an event processed"))?;
        Ok(())
    }

    /// The customer's events since `since` (all of them when `None`), oldest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn history(
        &mut self,
        id: &CustomerId,
        since: Option<Timestamp>,
    ) -> Result<Vec<Event>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, at, properties FROM events WHERE customer_id = ? AND at >= ? ORDER BY at, seq",
        )
        .bind(id.as_str())
        .bind(since.map_or(i64::MIN, millis))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading event history"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// The customer's active enrollments.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn active_enrollments(&mut self, id: &CustomerId) -> Result<Vec<Enrollment>, Error> {
        let rows = sqlx::query("SELECT state FROM enrollments WHERE customer_id = ? AND active = 1 ORDER BY entered_at, id")
            .bind(id.as_str())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("reading active enrollments"))?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("an enrollment")))
            .collect()
    }

    /// When the customer last entered the workflow, if ever.
    ///
    /// # Errors
    /// On a database error.
    pub async fn last_entered(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
    ) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MAX(entered_at) FROM enrollments WHERE workflow_id = ? AND customer_id = ?",
        )
        .bind(workflow_id)
        .bind(id.as_str())
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query("reading past entries"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    /// The segments the customer was in when last computed.
    ///
    /// # Errors
    /// On a database error.
    pub async fn segments_of(&mut self, id: &CustomerId) -> Result<BTreeSet<String>, Error> {
        let rows = sqlx::query("SELECT segment FROM segment_members WHERE customer_id = ?")
            .bind(id.as_str())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("reading segment membership"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Records that the customer entered (`member`) or left a segment.
    ///
    /// # Errors
    /// On a database error.
    pub async fn set_member(
        &mut self,
        segment: &str,
        id: &CustomerId,
        member: bool,
        now: Timestamp,
    ) -> Result<(), Error> {
        let sql = if member {
            "INSERT OR IGNORE INTO segment_members (segment, customer_id, since) VALUES (?, ?, ?)"
        } else {
            "DELETE FROM segment_members WHERE segment = ? AND customer_id = ? AND ? IS NOT NULL"
        };
        sqlx::query(sql)
            .bind(segment)
            .bind(id.as_str())
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("writing segment membership"))?;
        Ok(())
    }

    /// Sets the next occurrence of a time-based trigger for a customer (`None` removes it).
    /// An occurrence already due and not yet handled is kept.
    ///
    /// # Errors
    /// On a database error.
    pub async fn schedule_fire(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), Error> {
        match fire_at {
            Some(at) => sqlx::query(
                "INSERT INTO scheduled_fires (workflow_id, customer_id, fire_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (workflow_id, customer_id) DO UPDATE SET fire_at = excluded.fire_at
                 WHERE scheduled_fires.fire_at > ?4",
            )
            .bind(workflow_id)
            .bind(id.as_str())
            .bind(millis(at))
            .bind(millis(now)),
            None => sqlx::query("DELETE FROM scheduled_fires WHERE workflow_id = ?1 AND customer_id = ?2 AND fire_at > ?3")
                .bind(workflow_id)
                .bind(id.as_str())
                .bind(millis(now)),
        }
        .execute(&mut *self.tx)
        .await
        .map_err(query("scheduling a trigger"))?;
        Ok(())
    }

    /// Replaces a handled occurrence with the next one (`None`: no more).
    ///
    /// # Errors
    /// On a database error.
    pub async fn advance_fire(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        next: Option<Timestamp>,
    ) -> Result<(), Error> {
        match next {
            Some(at) => sqlx::query("UPDATE scheduled_fires SET fire_at = ? WHERE workflow_id = ? AND customer_id = ?").bind(millis(at)),
            None => sqlx::query("DELETE FROM scheduled_fires WHERE ?1 IS NULL AND workflow_id = ?2 AND customer_id = ?3").bind(Option::<i64>::None),
        }
        .bind(workflow_id)
        .bind(id.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query("advancing a trigger"))?;
        Ok(())
    }

    /// Up to `limit` trigger occurrences due at `now`: `(workflow id, customer, occurrence)`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn due_fires(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, CustomerId, Timestamp)>, Error> {
        let rows = sqlx::query("SELECT workflow_id, customer_id, fire_at FROM scheduled_fires WHERE fire_at <= ? ORDER BY fire_at LIMIT ?")
            .bind(millis(now))
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("claiming due triggers"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get(0),
                    CustomerId::parse(r.get::<String, _>(1)).ok()?,
                    from_millis(r.get(2)),
                ))
            })
            .collect())
    }

    /// Whether an occurrence was handled for the customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn has_fired(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        occurrence: Timestamp,
    ) -> Result<bool, Error> {
        let row = sqlx::query("SELECT 1 FROM trigger_fires WHERE workflow_id = ? AND customer_id = ? AND occurrence = ?")
            .bind(workflow_id)
            .bind(id.as_str())
            .bind(millis(occurrence))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("reading trigger occurrences"))?;
        Ok(row.is_some())
    }

    /// Records that an occurrence was handled; false when it was already.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_fire(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        occurrence: Timestamp,
    ) -> Result<bool, Error> {
        let done = sqlx::query("INSERT OR IGNORE INTO trigger_fires (workflow_id, customer_id, occurrence) VALUES (?, ?, ?)")
            .bind(workflow_id)
            .bind(id.as_str())
            .bind(millis(occurrence))
            .execute(&mut *self.tx)
            .await
            .map_err(query("recording a trigger occurrence"))?;
        Ok(done.rows_affected() > 0)
    }

    /// The customer's sends that count toward frequency caps since `since`, per channel: the
    /// messages written with a [`CapMark`](crate::engine::policy::CapMark), from the moment
    /// it gives (a held send counts from when it was sent, not from the hold).
    ///
    /// # Errors
    /// On a database error.
    pub async fn recent_sends(
        &mut self,
        id: &CustomerId,
        since: Timestamp,
    ) -> Result<Vec<(crate::model::Channel, Timestamp)>, Error> {
        // Exactly the rows written with a cap mark: which sends count is decided once, by
        // `engine::policy::counts_toward_caps`, never by a filter here.
        let rows = sqlx::query(
            "SELECT channel, counts_at FROM messages
             WHERE customer_id = ? AND counts_at > ? AND counts_at IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(millis(since))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading recent sends"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let channel = if r.get::<&str, _>(0) == "sms" {
                    crate::model::Channel::Sms
                } else {
                    crate::model::Channel::Email
                };
                (channel, from_millis(r.get(1)))
            })
            .collect())
    }

    /// Up to `limit` active enrollments due at `now`, of workflows not paused.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        let rows = sqlx::query(
            "SELECT e.state FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active = 1 AND e.wake_at <= ? AND w.paused = 0 ORDER BY e.wake_at LIMIT ?",
        )
        .bind(millis(now))
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("claiming due enrollments"))?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("an enrollment")))
            .collect()
    }

    /// Writes an enrollment's state.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn save_enrollment(&mut self, e: &Enrollment, now: Timestamp) -> Result<(), Error> {
        let state = serde_json::to_string(e).expect("an enrollment always serializes");
        sqlx::query(
            "INSERT INTO enrollments (id, workflow_id, workflow_version, customer_id, active, node, wake_at, state, entered_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET active = excluded.active, node = excluded.node,
               wake_at = excluded.wake_at, state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(&e.id)
        .bind(e.workflow_id.as_str())
        .bind(&e.workflow_version)
        .bind(e.customer_id.as_str())
        .bind(e.is_active())
        .bind(e.current_node().map(|n| n.as_str()))
        .bind(e.next_wake().map(millis))
        .bind(state)
        .bind(millis(e.entered_at))
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("writing an enrollment"))?;
        Ok(())
    }

    /// Adds a message to the outbox; a message whose key exists already is left as it is,
    /// unless it was `held`, in which case this is the decision that follows the hold.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_message(&mut self, m: &NewMessage, now: Timestamp) -> Result<(), Error> {
        let payload = serde_json::to_string(&m.payload).expect("a payload always serializes");
        sqlx::query(
            "INSERT INTO messages (key, enrollment_id, workflow_id, node, customer_id, channel, template, status, payload, next_attempt_at, last_error, created_at, updated_at, category, counts_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?10, ?12, ?13)
             ON CONFLICT (key) DO UPDATE SET status = excluded.status, payload = excluded.payload,
               channel = excluded.channel, last_error = excluded.last_error,
               next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at,
               counts_at = excluded.counts_at
             WHERE messages.status = 'held'",
        )
        .bind(&m.key)
        .bind(&m.enrollment_id)
        .bind(&m.workflow_id)
        .bind(&m.node)
        .bind(&m.customer_id)
        .bind(m.payload.channel_name())
        .bind(&m.template)
        .bind(m.status.as_str())
        .bind(payload)
        .bind(millis(now))
        .bind(&m.note)
        .bind(if m.transactional { "transactional" } else { "marketing" })
        .bind(m.cap.map(|mark| millis(mark.at())))
        .execute(&mut *self.tx)
        .await
        .map_err(query("writing an outbox message"))?;
        Ok(())
    }

    /// Records a conversion, credited to the last message of the workflow the customer
    /// received since `attribution_since`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_conversion(&mut self, c: &Conversion, now: Timestamp) -> Result<(), Error> {
        sqlx::query(
            "INSERT OR IGNORE INTO conversions (enrollment_id, workflow_id, customer_id, event, value, arm, message_key, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6,
               (SELECT key FROM messages WHERE customer_id = ?3 AND workflow_id = ?2 AND status = 'sent' AND sent_at >= ?8
                ORDER BY sent_at DESC, key LIMIT 1),
               ?7)",
        )
        .bind(&c.enrollment_id)
        .bind(&c.workflow_id)
        .bind(&c.customer_id)
        .bind(&c.event)
        .bind(c.value)
        .bind(&c.arm)
        .bind(millis(now))
        .bind(millis(c.attribution_since))
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a conversion"))?;
        Ok(())
    }

    /// Records a loaded workflow version and makes it current; keeps the paused flag.
    ///
    /// # Errors
    /// On a database error.
    pub async fn register_workflow(
        &mut self,
        id: &str,
        version: &str,
        source: &str,
        path: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        sqlx::query("INSERT OR IGNORE INTO workflow_versions (workflow_id, version, source, path, loaded_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id)
            .bind(version)
            .bind(source)
            .bind(path)
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("recording a workflow version"))?;
        sqlx::query(
            "INSERT INTO workflows (id, current_version) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET current_version = excluded.current_version",
        )
        .bind(id)
        .bind(version)
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a workflow"))?;
        Ok(())
    }

    /// Pauses or resumes a workflow; false when no such workflow is known.
    ///
    /// # Errors
    /// On a database error.
    pub async fn set_paused(&mut self, id: &str, paused: bool) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE workflows SET paused = ? WHERE id = ?")
            .bind(paused)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(query("pausing a workflow"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a provider's delivery report; a failure report also sets the last error.
    /// Reports can arrive out of order (a gateway sends each as its own request), so an
    /// interim report (`final_report` false) never replaces a final one. False when no
    /// message has that key.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_delivery_report(
        &mut self,
        key: &str,
        status: &str,
        report: crate::channels::sms_kannel::Report,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let known = sqlx::query("SELECT 1 FROM messages WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("finding a message"))?
            .is_some();
        sqlx::query(
            "UPDATE messages SET delivery_status = ?2, updated_at = ?3,
               last_error = CASE WHEN ?4 THEN 'delivery report: ' || ?2 ELSE last_error END
             WHERE key = ?1 AND (?5 OR delivery_status IS NULL OR delivery_is_final = 0)",
        )
        .bind(key)
        .bind(status)
        .bind(millis(now))
        .bind(report.failed)
        .bind(report.is_final)
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a delivery report"))?;
        if report.is_final {
            sqlx::query("UPDATE messages SET delivery_is_final = 1 WHERE key = ?")
                .bind(key)
                .execute(&mut *self.tx)
                .await
                .map_err(query("recording a delivery report"))?;
        }
        Ok(known)
    }

    /// Customers whose profile has this phone number (E.164) or email address.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customers_by_address(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
    ) -> Result<Vec<Customer>, Error> {
        let field = match channel {
            crate::model::Channel::Email => "$.email",
            crate::model::Channel::Sms => "$.phone",
        };
        let rows = sqlx::query(
            "SELECT profile FROM customers WHERE json_extract(profile, ?) = ? COLLATE NOCASE",
        )
        .bind(field)
        .bind(address)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("finding customers by address"))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("a customer profile"))
            })
            .collect()
    }

    /// Suppresses an address for good (hard bounce, complaint).
    ///
    /// # Errors
    /// On a database error.
    pub async fn suppress(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        sqlx::query("INSERT OR REPLACE INTO suppressions (channel, address, reason, at) VALUES (?, lower(?), ?, ?)")
            .bind(channel.as_str())
            .bind(address)
            .bind(reason)
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("suppressing an address"))?;
        Ok(())
    }

    /// Why an address is suppressed, if it is.
    ///
    /// # Errors
    /// On a database error.
    pub async fn suppression(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
    ) -> Result<Option<String>, Error> {
        let row =
            sqlx::query("SELECT reason FROM suppressions WHERE channel = ? AND address = lower(?)")
                .bind(channel.as_str())
                .bind(address)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(query("reading suppressions"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Cancels the customer's queued marketing messages on `channel` (after an opt-out).
    /// Transactional messages, which need no marketing consent, stay.
    ///
    /// # Errors
    /// On a database error.
    pub async fn cancel_pending(
        &mut self,
        id: &CustomerId,
        channel: crate::model::Channel,
        now: Timestamp,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE messages SET status = 'cancelled', last_error = 'the customer unsubscribed', updated_at = ?3
             WHERE customer_id = ?1 AND channel = ?2 AND status = 'pending' AND category = 'marketing'",
        )
        .bind(id.as_str())
        .bind(channel.as_str())
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("cancelling queued messages"))?;
        Ok(done.rows_affected())
    }

    /// Erases a customer's personal data: the profile goes, events keep their name and
    /// time under an anonymous id, pending messages are cancelled, message bodies are
    /// cleared, active enrollments end. Counts survive. False when there was no such customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn erase_customer(&mut self, id: &CustomerId, now: Timestamp) -> Result<bool, Error> {
        let anonymous = format!(
            "erased-{}",
            crate::engine::hash::hex_digest(&[id.as_str()], 16)
        );
        let gone = sqlx::query("DELETE FROM customers WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query("erasing a customer"))?
            .rows_affected()
            > 0;
        let statements = [
            "UPDATE events SET customer_id = ?2, properties = '{}', id = NULL WHERE customer_id = ?1",
            "UPDATE messages SET status = 'cancelled', updated_at = ?3 WHERE customer_id = ?1 AND status IN ('pending', 'sending')",
            "UPDATE messages SET customer_id = ?2, payload = '{\"channel\":\"none\"}' WHERE customer_id = ?1",
            "UPDATE enrollments SET customer_id = ?2, active = 0, wake_at = NULL, node = NULL, state = '{}' WHERE customer_id = ?1",
            "UPDATE conversions SET customer_id = ?2 WHERE customer_id = ?1",
            "DELETE FROM segment_members WHERE customer_id = ?1 AND ?2 IS NOT NULL",
            "DELETE FROM scheduled_fires WHERE customer_id = ?1 AND ?2 IS NOT NULL",
            "UPDATE trigger_fires SET customer_id = ?2 WHERE customer_id = ?1",
        ];
        for sql in statements {
            sqlx::query(sql)
                .bind(id.as_str())
                .bind(&anonymous)
                .bind(millis(now))
                .execute(&mut *self.tx)
                .await
                .map_err(query("erasing a customer's data"))?;
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::testing::temp_store;

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
