//! Figures 8–10: PostgreSQL. The step limit (the claim, write and outbox transaction with no
//! engine), the real scheduler with 1, 2 and 4 runners on one database, and the standard
//! journey end to end with 1, 2 and 4 `trellis serve` runners.
//!
//! The database is a throwaway cluster that `tests/support/postgres.sh` starts (and stops at
//! the end), or the one `TRELLIS_TEST_POSTGRES_URL` names; every run gets a fresh schema.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sqlx::Connection;
use trellis::clock::{Clock, ManualClock, SystemClock};
use trellis::model::{CustomerId, Event};
use trellis::store::{OpenOptions, Store};

use crate::report::Row;
use crate::sinks::{SmsServer, SmtpSink};
use crate::workload::{self, free_port};

/// Enrollments claimed per transaction, as the scheduler's batch.
const BATCH: i64 = 200;

/// The runner counts the scaling figures are measured at.
pub const RUNNERS: [usize; 3] = [1, 2, 4];

/// A PostgreSQL cluster for the suite: started by `tests/support/postgres.sh` unless
/// `TRELLIS_TEST_POSTGRES_URL` names one; stopped on drop if this started it.
pub struct Cluster {
    url: String,
    started: bool,
}

impl Cluster {
    /// Finds or starts the cluster.
    pub fn start() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("TRELLIS_TEST_POSTGRES_URL") {
            return Ok(Self {
                url,
                started: false,
            });
        }
        let out = Command::new(script())
            .arg("start")
            .stderr(Stdio::inherit())
            .output()
            .context("running tests/support/postgres.sh (Debian package postgresql)")?;
        if !out.status.success() {
            bail!("tests/support/postgres.sh start failed: {}", out.status);
        }
        Ok(Self {
            url: String::from_utf8(out.stdout)?.trim().to_owned(),
            started: true,
        })
    }

    /// A fresh schema: the URL of a database whose connections use it, and its name.
    async fn schema(&self) -> anyhow::Result<(String, String)> {
        use std::hash::{BuildHasher, Hasher};
        let name = format!(
            "bench_{:012x}",
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                & 0xffff_ffff_ffff
        );
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let mut url = url::Url::parse(&self.url)?;
        url.query_pairs_mut()
            .append_pair("options", &format!("-c search_path={name}"));
        Ok((url.to_string(), name))
    }

    /// Drops a schema made by [`Cluster::schema`].
    async fn drop_schema(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(script()).arg("stop").status();
        }
    }
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/postgres.sh")
}

/// Every PostgreSQL row: the limit, the scheduler and end to end at each runner count.
pub async fn figures(n: usize, runs: usize, end_to_end: bool) -> anyhow::Result<Vec<Row>> {
    let cluster = Cluster::start()?;
    let mut limit = Vec::new();
    for _ in 0..runs.max(1) {
        let (url, schema) = cluster.schema().await?;
        limit.push(step_limit(&url, n).await?);
        cluster.drop_schema(&schema).await?;
    }
    let limit_row = Row::plain(
        "8. limit: PostgreSQL step transitions (1 connection)",
        &limit,
        "steps/s",
    );
    let pg_limit = limit_row.value;
    let mut rows = vec![limit_row];
    for runners in RUNNERS {
        let mut samples = Vec::new();
        for _ in 0..runs.max(1) {
            let (url, schema) = cluster.schema().await?;
            samples.push(scheduler_steps(&url, n, runners).await?);
            cluster.drop_schema(&schema).await?;
        }
        rows.push(
            Row::plain(
                format!("9. scheduler steps on PostgreSQL, {runners} runner(s)"),
                &samples,
                "steps/s",
            )
            .against("PostgreSQL limit", pg_limit, 0.5),
        );
    }
    if end_to_end {
        for runners in RUNNERS {
            let mut samples = Vec::new();
            for _ in 0..runs.max(1) {
                let (url, schema) = cluster.schema().await?;
                let dir = tempfile::tempdir()?;
                samples.push(journey(dir.path(), &url, n, runners).await?);
                cluster.drop_schema(&schema).await?;
            }
            rows.push(
                Row::plain(
                    format!("10. end to end on PostgreSQL, N={n}, {runners} runner(s)"),
                    &samples,
                    "customers/s",
                )
                .against("PostgreSQL limit / 2 steps", pg_limit / 2.0, 0.5),
            );
        }
    }
    Ok(rows)
}

/// Step transitions per second with no engine, on one connection: claim up to 200 due
/// enrollments `FOR UPDATE SKIP LOCKED`, write their next states and one outbox row each in
/// two multi-row statements, commit; until none is due.
async fn step_limit(url: &str, n: usize) -> anyhow::Result<f64> {
    let store = Store::open(url, OpenOptions::default()).await?;
    let pool = store.postgres_pool().context("a PostgreSQL store")?;
    let now: Timestamp = "2026-11-23T12:00:00Z".parse()?;
    let at = now.as_millisecond();
    let state = json!({"bench": true}).to_string();
    let payload = serde_json::to_string(&crate::limits::email_payload(0))?;
    sqlx::query("INSERT INTO workflows (id, current_version) VALUES ('standard', 'v1')")
        .execute(pool)
        .await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("e{i}")).collect();
        let customers: Vec<String> = chunk.iter().map(|i| format!("c{i:07}")).collect();
        sqlx::query(
            "INSERT INTO enrollments (customer_id, id, workflow_id, workflow_version, active, node, wake_at, state, entered_at, updated_at)
             SELECT c, e, 'standard', 'v1', true, 'pause', $3, $4::jsonb, $3, $3 FROM unnest($1::text[], $2::text[]) AS u(c, e)",
        )
        .bind(&customers)
        .bind(&ids)
        .bind(at - 1000)
        .bind(&state)
        .execute(pool)
        .await?;
    }
    let started = Instant::now();
    let mut stepped = 0usize;
    loop {
        let mut tx = pool.begin().await?;
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT e.customer_id, e.id FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active AND e.wake_at <= $1 AND NOT w.paused ORDER BY e.wake_at LIMIT $2
             FOR UPDATE OF e SKIP LOCKED",
        )
        .bind(at)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            break;
        }
        let (customers, ids): (Vec<String>, Vec<String>) = due.into_iter().unzip();
        sqlx::query(
            "UPDATE enrollments SET active = false, node = NULL, wake_at = NULL, state = $3::jsonb, updated_at = $4
             FROM unnest($1::text[], $2::text[]) AS u(c, e) WHERE customer_id = u.c AND id = u.e",
        )
        .bind(&customers)
        .bind(&ids)
        .bind(&state)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO messages (customer_id, key, enrollment_id, workflow_id, node, channel, template, status, payload, next_attempt_at, created_at, updated_at, category)
             SELECT c, e || ':tips', e, 'standard', 'tips', 'email', 'tips', 'pending', $3::jsonb, $4, $4, $4, 'marketing'
             FROM unnest($1::text[], $2::text[]) AS u(c, e)",
        )
        .bind(&customers)
        .bind(&ids)
        .bind(&payload)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        stepped += ids.len();
        tx.commit().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if stepped != n {
        bail!("the PostgreSQL limit stepped {stepped} enrollments, not {n}");
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / seconds)
}

/// Customers `0..n` and one `bench_start` event each, through the store as the API writes
/// them: setup, not measured.
async fn seed(store: &Store, n: usize, start: Timestamp, event: &str) -> anyhow::Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut tx = store.begin().await?;
        for &i in chunk {
            tx.put_customer(&workload::customer(i), start).await?;
        }
        if !event.is_empty() {
            let ids: Vec<CustomerId> = chunk
                .iter()
                .map(|i| CustomerId::parse(format!("c{i:07}")))
                .collect::<Result<_, _>>()?;
            let events: Vec<Event> = chunk
                .iter()
                .map(|_| Event {
                    id: None,
                    name: event.into(),
                    timestamp: start,
                    properties: serde_json::Map::new(),
                })
                .collect();
            let pairs: Vec<(&CustomerId, &Event)> = ids.iter().zip(&events).collect();
            tx.insert_events(&pairs, start).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Steps per second of `runners` schedulers (each a runner of its own: its own pool, id and
/// leases) advancing the steps workload together on one database: each customer is woken
/// twice, by whichever runner leases them.
async fn scheduler_steps(url: &str, n: usize, runners: usize) -> anyhow::Result<f64> {
    let start: Timestamp = "2026-11-23T12:00:00Z".parse()?;
    let dir = tempfile::tempdir()?;
    let mut services = Vec::with_capacity(runners);
    for _ in 0..runners {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start));
        services.push(workload::service_on(url, dir.path(), "steps", &[], clock).await?);
    }
    seed(&services[0].scheduler.store, n, start, "bench_start").await?;
    let entered = trellis::scheduler::tick(&services[0].scheduler, start).await?;
    if entered.events != n {
        bail!(
            "{} of {n} customers entered the steps workload",
            entered.events
        );
    }
    let due = start.checked_add(SignedDuration::from_secs(1))?;
    let started = Instant::now();
    let mut ticking = tokio::task::JoinSet::new();
    for service in services {
        ticking.spawn(async move {
            let mut woken = 0;
            // A tick that finds nothing may only mean the others hold it all: stop after
            // two in a row, once nothing is left due for anyone.
            let mut idle = 0;
            while idle < 2 {
                let handled = trellis::scheduler::tick(&service.scheduler, due)
                    .await?
                    .woken;
                woken += handled;
                idle = if handled == 0 { idle + 1 } else { 0 };
            }
            anyhow::Ok(woken)
        });
    }
    let mut woken = 0;
    while let Some(done) = ticking.join_next().await {
        woken += done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if woken != 2 * n {
        bail!("{runners} runners woke {woken} enrollments, not {}", 2 * n);
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(woken as f64 / seconds)
}

/// The standard journey for `n` customers through `runners` `trellis serve` children on one
/// database, the signups posted to the first one's API in batches: customers per second
/// from the first post to the last message accepted.
async fn journey(dir: &Path, url: &str, n: usize, runners: usize) -> anyhow::Result<f64> {
    let now = SystemClock.now();
    let store = Store::open(url, OpenOptions::default()).await?;
    seed(&store, n, now, "").await?;
    let sink = SmtpSink::start()?;
    let sms = SmsServer::start().await?;
    let mut children = Vec::with_capacity(runners);
    for i in 0..runners {
        children.push(
            Runner::start(
                &dir.join(format!("runner{i}")),
                url,
                &[
                    "--smtp-url".into(),
                    format!("smtp://127.0.0.1:{}?tls=off", sink.port),
                    "--twilio-base-url".into(),
                    sms.base.clone(),
                    "--twilio-account-sid".into(),
                    "ACbench".into(),
                    "--twilio-auth-token".into(),
                    "bench-token".into(),
                ],
            )
            .await?,
        );
    }
    let client = reqwest::Client::new();
    let started = SystemClock.now();
    for (k, chunk) in (0..n)
        .collect::<Vec<_>>()
        .chunks(trellis::api::MAX_BATCH)
        .enumerate()
    {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"id": format!("signup-{i}"), "customer_id": format!("c{i:07}"), "name": "signup"}))
            .collect();
        // Spread over the runners' APIs, as a load balancer would.
        let base = &children[k % runners].base;
        let response = client
            .post(format!("{base}/v1/events/batch"))
            .json(&Value::from(batch))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("POST /v1/events/batch: {}", response.status());
        }
    }
    let expected = n + n.div_ceil(2) + n / 2;
    let pool = store.postgres_pool().context("a PostgreSQL store")?;
    let waited = Instant::now();
    let last_sent = loop {
        let (sent, failed, last): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE outcome = 'sent'), count(*) FILTER (WHERE outcome = 'failed'),
                    max(at) FILTER (WHERE outcome = 'sent') FROM attempts",
        )
        .fetch_one(pool)
        .await?;
        if failed > 0 {
            bail!("{failed} messages failed; see {}", dir.display());
        }
        if usize::try_from(sent)? >= expected {
            break last.context("sent messages have a time")?;
        }
        if waited.elapsed() > Duration::from_secs(1800) {
            bail!("only {sent} of {expected} messages were sent within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for child in children {
        child.stop();
    }
    let seconds = (last_sent - started.as_millisecond()).max(1) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / seconds)
}

/// One `trellis serve` runner on PostgreSQL, a child process of the suite.
struct Runner {
    child: Child,
    base: String,
}

impl Runner {
    async fn start(dir: &Path, url: &str, extra: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut flags = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        flags.extend(extra.iter().cloned());
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .args(workload::serve_args_on(url, dir, "standard", &flags))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting trellis serve")?;
        let runner = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client
                .get(format!("{}/healthz", runner.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(runner);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "a runner did not answer /healthz: {}",
            std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
        )
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
