//! Figures 4 and 5: the standard journey through `trellis serve` with real delivery, the
//! email channel alone, and event ingest over loopback HTTP.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::Timestamp;
use serde_json::{Value, json};
use sqlx::sqlite::SqlitePoolOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use trellis::channels::email::SmtpChannel;
use trellis::clock::{Clock, SystemClock};
use trellis::store::{OpenOptions, Store};

use crate::limits;
use crate::report::{Row, median};
use crate::sinks::{SmsServer, SmtpSink};
use crate::workload::{self, free_port};

/// Concurrent SMTP sessions for the bare client, as `trellis serve`'s default
/// `--channel-concurrency`.
const SESSIONS: usize = 16;
/// Messages the bare client and the email channel send per run.
const EMAIL_MESSAGES: usize = 20_000;
/// Scheduler transitions per customer in the standard journey: the signup (enter, welcome,
/// wait 0 s) and the wake-up (branch, tips or nudge, exit).
const STEPS_PER_CUSTOMER: f64 = 2.0;

/// `trellis serve`, started as a child process of the suite so that its memory is its own.
struct ServeChild {
    child: Child,
    base: String,
}

impl ServeChild {
    async fn start(dir: &Path, workload: &str, extra: &[String]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut flags = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        flags.extend(extra.iter().cloned());
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .args(workload::serve_args(dir, workload, &flags))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting trellis serve")?;
        let mut serve = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Some(status) = serve.child.try_wait()? {
                bail!(
                    "trellis serve exited ({status}): {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            if client
                .get(format!("{}/healthz", serve.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(serve);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("trellis serve did not answer /healthz")
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Stops it with SIGTERM, as an operator would.
    fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill").args(["-TERM", &self.pid()]).status()?;
        for _ in 0..200 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// What one standard-journey run measured.
struct JourneyRun {
    customers_per_second: f64,
    peak_rss: f64,
}

/// Rows for figure 4 (and the SMTP limit and email channel rows).
pub async fn figures(
    n: usize,
    runs: usize,
    sqlite_limit: f64,
    end_to_end: bool,
    email: bool,
) -> anyhow::Result<Vec<Row>> {
    let (mut smtp, mut journeys, mut channel) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let sink = SmtpSink::start()?;
        smtp.push(limits::smtp_source(sink.port, SESSIONS, EMAIL_MESSAGES)?);
        if email {
            channel.push(email_channel(sink.port, EMAIL_MESSAGES, SESSIONS).await?);
        }
        if end_to_end {
            let dir = tempfile::tempdir()?;
            journeys.push(journey(dir.path(), n, sink.port).await?);
        }
    }
    let smtp_row = Row::plain(
        format!("limit: SMTP acceptance (smtp-source, {SESSIONS} sessions)"),
        &smtp,
        "msgs/s",
    );
    let smtp_limit = smtp_row.value;
    let mut rows = vec![smtp_row];
    if end_to_end {
        #[allow(clippy::cast_precision_loss)]
        let emails_per_customer = (n + n.div_ceil(2)) as f64 / n as f64;
        let by_sqlite = sqlite_limit / STEPS_PER_CUSTOMER;
        let by_smtp = smtp_limit / emails_per_customer;
        let (name, ceiling) = if by_sqlite <= by_smtp {
            ("SQLite limit / 2 steps", by_sqlite)
        } else {
            ("SMTP limit / 1.5 emails", by_smtp)
        };
        let rates: Vec<f64> = journeys.iter().map(|j| j.customers_per_second).collect();
        let rss: Vec<f64> = journeys.iter().map(|j| j.peak_rss).collect();
        rows.push(
            Row::plain(
                format!("4. end to end, standard journey, N={n}"),
                &rates,
                "customers/s",
            )
            .against(name, ceiling, 0.5),
        );
        let rss_row = Row::plain(
            format!("4. peak RSS of trellis serve, N={n}"),
            &[median(&rss) / 1e6],
            "MB",
        );
        rows.push(if n >= 100_000 {
            rss_row.below(200.0)
        } else {
            rss_row
        });
    }
    if email {
        rows.push(
            Row::plain(
                format!("4. email channel alone ({SESSIONS} connections)"),
                &channel,
                "msgs/s",
            )
            .against("SMTP limit", smtp_limit, 0.8),
        );
    }
    Ok(rows)
}

/// The standard journey for `n` customers: from the first signup posted to the last message
/// accepted, through a `trellis serve` child delivering to `smtp-sink` and a Twilio-style
/// server.
async fn journey(dir: &Path, n: usize, smtp_port: u16) -> anyhow::Result<JourneyRun> {
    let now = SystemClock.now();
    {
        let store = Store::open(&workload::database_url(dir), OpenOptions::default()).await?;
        workload::seed_customers(&store, n, now).await?;
        store
            .sqlite_pool()
            .expect("the bench measures SQLite")
            .close()
            .await;
    }
    let sms = SmsServer::start().await?;
    let serve = ServeChild::start(
        dir,
        "standard",
        &[
            "--smtp-url".into(),
            format!("smtp://127.0.0.1:{smtp_port}?tls=off"),
            "--twilio-base-url".into(),
            sms.base.clone(),
            "--twilio-account-sid".into(),
            "ACbench".into(),
            "--twilio-auth-token".into(),
            "bench-token".into(),
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let started = SystemClock.now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(trellis::api::MAX_BATCH) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"id": format!("signup-{i}"), "customer_id": format!("c{i:07}"), "name": "signup"}))
            .collect();
        post_ok(
            &client,
            &format!("{}/v1/events/batch", serve.base),
            &Value::from(batch),
        )
        .await?;
    }
    let emails = n + n.div_ceil(2);
    let texts = n / 2;
    let last_sent = wait_for_sent(dir, emails + texts, Duration::from_secs(1800)).await?;
    let (peak, _) = workload::memory_of(&serve.pid())?;
    serve.stop()?;
    if sms.count() != texts {
        bail!(
            "the SMS server accepted {} messages, not {texts}",
            sms.count()
        );
    }
    let seconds = (last_sent.as_millisecond() - started.as_millisecond()).max(1) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    Ok(JourneyRun {
        customers_per_second: n as f64 / seconds,
        peak_rss: peak as f64,
    })
}

/// Waits until `expected` messages are recorded as sent; returns when the last one was.
async fn wait_for_sent(dir: &Path, expected: usize, limit: Duration) -> anyhow::Result<Timestamp> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}?mode=ro", workload::database_url(dir)))
        .await?;
    let started = Instant::now();
    loop {
        // From the attempts, whose rows are small: `messages` rows hold the rendered
        // payload, and scanning them ten times a second took a core's worth of page copies
        // from the system measured. An attempt's `at` is its message's `sent_at`.
        let (sent, failed, last): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT COALESCE(SUM(outcome = 'sent'), 0), COALESCE(SUM(outcome = 'failed'), 0),
                    MAX(CASE WHEN outcome = 'sent' THEN at END) FROM attempts",
        )
        .fetch_one(&pool)
        .await?;
        if failed > 0 {
            bail!(
                "{failed} messages failed; see {}",
                dir.join("serve.log").display()
            );
        }
        if usize::try_from(sent)? >= expected {
            let last = last.context("sent messages have a sent_at")?;
            return Ok(Timestamp::from_millisecond(last)?);
        }
        if started.elapsed() > limit {
            bail!("only {sent} of {expected} messages were sent within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_ok(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<()> {
    let response = client.post(url).json(body).send().await?;
    if !response.status().is_success() {
        bail!(
            "POST {url}: {} {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

/// Messages per second through [`SmtpChannel`] alone, `concurrency` at a time.
async fn email_channel(port: u16, messages: usize, concurrency: usize) -> anyhow::Result<f64> {
    let channel = Arc::new(
        SmtpChannel::new(
            &format!("smtp://127.0.0.1:{port}?tls=off"),
            "Acme <news@acme.example>",
            u32::try_from(concurrency)?,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let payloads: Vec<_> = (0..messages).map(limits::email_payload).collect();
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut sends = JoinSet::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        let channel = channel.clone();
        sends.spawn(async move {
            let result = channel.send(&format!("bench-{i}"), &payload).await;
            drop(permit);
            result
        });
    }
    while let Some(result) = sends.join_next().await {
        result?.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Figure 5: events per second through `POST /v1/events/batch` (1,000 a request) and
/// through `POST /v1/events` from 32 concurrent clients, against raw batched inserts.
pub async fn ingest(n: usize, runs: usize) -> anyhow::Result<Vec<Row>> {
    const CLIENTS: usize = 32;
    let singles = n.min(20_000);
    let (mut raw, mut batch, mut single) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let dir = tempfile::tempdir()?;
        raw.push(limits::raw_event_inserts(dir.path(), n).await?);
        let dir = tempfile::tempdir()?;
        let serve = ServeChild::start(dir.path(), "standard", &[]).await?;
        let client = reqwest::Client::new();
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(trellis::api::MAX_BATCH) {
            let events: Vec<Value> = chunk.iter().map(|&i| page_view(i)).collect();
            post_ok(
                &client,
                &format!("{}/v1/events/batch", serve.base),
                &Value::from(events),
            )
            .await?;
        }
        #[allow(clippy::cast_precision_loss)]
        batch.push(n as f64 / started.elapsed().as_secs_f64());
        let url: Arc<str> = format!("{}/v1/events", serve.base).into();
        let started = Instant::now();
        let mut clients = JoinSet::new();
        for c in 0..CLIENTS {
            let (client, url) = (client.clone(), url.clone());
            clients.spawn(async move {
                for i in (c..singles).step_by(CLIENTS) {
                    post_ok(&client, &url, &page_view(n + i)).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = clients.join_next().await {
            done??;
        }
        #[allow(clippy::cast_precision_loss)]
        single.push(singles as f64 / started.elapsed().as_secs_f64());
        serve.stop()?;
    }
    let raw_row = Row::plain("limit: raw batched event inserts", &raw, "events/s");
    let limit = raw_row.value;
    Ok(vec![
        raw_row,
        Row::plain(
            "5. ingest, POST /v1/events/batch (1,000 each)",
            &batch,
            "events/s",
        )
        .against("raw inserts", limit, 0.5),
        Row::plain(
            format!("5. ingest, POST /v1/events, {CLIENTS} clients"),
            &single,
            "events/s",
        )
        // The target for single events: a quarter of raw inserts.
        .against("raw inserts", limit, 0.25),
    ])
}

fn page_view(i: usize) -> Value {
    json!({
        "id": format!("ev-{i}"),
        "customer_id": format!("c{:07}", i % 10_000),
        "name": "page_viewed",
        "properties": {"path": "/pricing", "referrer": "newsletter"},
    })
}
