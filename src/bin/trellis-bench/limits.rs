//! The limits the runtime is compared with, measured on this machine in the same run: raw
//! SQL on the store's own schema and settings, and a bare SMTP client.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use jiff::Timestamp;
use sqlx::Row;
use trellis::engine::{Enrollment, Input, step};
use trellis::store::{OpenOptions, Payload, Store};
use trellis::workflow::Workflow;

use crate::engine_rate::{facts_for, load};
use crate::workload;

/// Enrollments claimed per transaction, as the scheduler's batch.
const BATCH: i64 = 200;

/// A realistic enrollment state: the standard journey's, after its first step.
fn enrollment_state(workflow: &Workflow, now: Timestamp) -> String {
    let customer = workload::customer(0);
    let (segments, policy) = Default::default();
    let facts = facts_for(&customer, &segments, &policy);
    let fresh = Enrollment::new("e", workflow, customer.id.clone(), None, now);
    let stepped = step(workflow, &fresh, &facts, &Input::Enter, now);
    serde_json::to_string(&stepped.enrollment).expect("an enrollment serializes")
}

/// An outbox payload the size of the standard journey's welcome email (about 3 KB).
pub fn email_payload(i: usize) -> Payload {
    Payload::Email {
        to: format!("customer{i}@example.com"),
        from: None,
        reply_to: None,
        subject: format!("Welcome to Acme, Customer{i}"),
        html: format!(
            "<p>Hi Customer{i},</p>{}",
            "<p>Thanks for signing up. Your account is ready.</p>\n".repeat(36)
        ),
        text: format!(
            "Hi Customer{i},\n{}",
            "Thanks for signing up. Your account is ready.\n".repeat(20)
        ),
        unsubscribe: format!("https://trellis.example/unsubscribe/c{i:07}.email.0123456789abcdef"),
    }
}

/// A database with `n` enrollments due at `now`, as the standard journey leaves them after
/// its first step; returns the store, the workflow version and `now`.
async fn due_enrollments(dir: &Path, n: usize) -> anyhow::Result<(Store, String, Timestamp)> {
    let store = Store::open(&workload::database_url(dir), OpenOptions::default()).await?;
    let now: Timestamp = "2026-11-23T12:00:00Z".parse()?;
    let workflow = load("standard")?
        .into_iter()
        .next()
        .context("no standard workflow")?;
    trellis::scheduler::Catalog::register(&store, vec![workflow.clone()], Vec::new(), now).await?;
    let state = enrollment_state(&workflow, now);
    let version = workflow.source.version.clone();
    let mut tx = store
        .sqlite_pool()
        .expect("the bench measures SQLite")
        .begin()
        .await?;
    for i in 0..n {
        sqlx::query(
            "INSERT INTO enrollments (id, workflow_id, workflow_version, customer_id, active, node, wake_at, state, entered_at, updated_at)
             VALUES (?1, 'standard', ?2, ?3, 1, 'pause', ?4, ?5, ?4, ?4)",
        )
        .bind(format!("e{i}"))
        .bind(&version)
        .bind(format!("c{i:07}"))
        .bind(now.as_millisecond() - 1000 + i64::try_from(i % 1000)?)
        .bind(&state)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((store, version, now))
}

/// The same step transitions as [`sqlite_steps`] through SQLite's C API, with the driver out
/// of the way: the database's own limit.
pub async fn sqlite_steps_c_api(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let (store, version, now) = due_enrollments(dir, n).await?;
    store
        .sqlite_pool()
        .expect("the bench measures SQLite")
        .close()
        .await;
    drop(store);
    let payload = serde_json::to_string(&email_payload(0))?;
    let file = dir.join("trellis.db");
    tokio::task::spawn_blocking(move || {
        crate::c_api::steps(&file, n, BATCH, &version, &payload, now.as_millisecond())
    })
    .await?
}

/// Step transitions per second with no engine: claim up to 200 due enrollments, write each
/// one's next state and one outbox row, commit; until none is due.
pub async fn sqlite_steps(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let (store, version, now) = due_enrollments(dir, n).await?;
    let pool = store.sqlite_pool().expect("the bench measures SQLite");
    let payload = serde_json::to_string(&email_payload(0))?;
    let at = now.as_millisecond();
    let started = Instant::now();
    let mut stepped = 0usize;
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let due = sqlx::query(
            "SELECT e.id, e.customer_id, e.state FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active = 1 AND e.wake_at <= ? AND w.paused = 0 ORDER BY e.wake_at LIMIT ?",
        )
        .bind(at)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            break;
        }
        for row in &due {
            let id: String = row.try_get(0)?;
            let customer: String = row.try_get(1)?;
            let state: String = row.try_get(2)?;
            sqlx::query(
                "INSERT INTO enrollments (id, workflow_id, workflow_version, customer_id, active, node, wake_at, state, entered_at, updated_at)
                 VALUES (?1, 'standard', ?2, ?3, 0, NULL, NULL, ?4, ?5, ?5)
                 ON CONFLICT (id) DO UPDATE SET active = excluded.active, node = excluded.node,
                   wake_at = excluded.wake_at, state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(&id)
            .bind(&version)
            .bind(&customer)
            .bind(&state)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO messages (key, enrollment_id, workflow_id, node, customer_id, channel, template, status, payload, next_attempt_at, created_at, updated_at, category)
                 VALUES (?1, ?2, 'standard', 'tips', ?3, 'email', 'tips', 'pending', ?4, ?5, ?5, ?5, 'marketing')",
            )
            .bind(format!("{id}:tips"))
            .bind(&id)
            .bind(&customer)
            .bind(&payload)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        stepped += due.len();
        tx.commit().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if stepped != n {
        bail!("the SQLite limit stepped {stepped} enrollments, not {n}");
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / seconds)
}

/// Events inserted per second with no API: the same `INSERT` as the store's, 1,000 events
/// a transaction, as one batch request carries.
pub async fn raw_event_inserts(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let store = Store::open(&workload::database_url(dir), OpenOptions::default()).await?;
    let pool = store.sqlite_pool().expect("the bench measures SQLite");
    let at = Timestamp::UNIX_EPOCH.as_millisecond();
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for &i in chunk {
            sqlx::query(
                "INSERT OR IGNORE INTO events (id, customer_id, name, at, properties, received_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(format!("ev-{i}"))
            .bind(format!("c{:07}", i % 10_000))
            .bind("page_viewed")
            .bind(at)
            .bind(r#"{"path":"/pricing","referrer":"newsletter"}"#)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Messages per second that postfix's `smtp-source` gets accepted by the SMTP server at
/// `port`: `sessions` connections in parallel, each reused, 3 KB messages.
pub fn smtp_source(port: u16, sessions: usize, messages: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = std::process::Command::new("smtp-source")
        .args([
            "-s",
            &sessions.to_string(),
            "-d",
            "-m",
            &messages.to_string(),
            "-l",
            "3000",
            &format!("127.0.0.1:{port}"),
        ])
        .status()
        .context("running smtp-source (Debian package postfix)")?;
    if !status.success() {
        bail!("smtp-source failed: {status}");
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}
