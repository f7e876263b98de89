//! Figures 6 and 7: a broadcast enrolling many customers who then wait, and how late
//! wake-ups are handled while many fall due each second.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context as LayerCtx, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use trellis::clock::{Clock, ManualClock, SystemClock};
use trellis::engine::policy::SendPolicy;
use trellis::engine::{Enrollment, Input, step};
use trellis::model::Event;
use trellis::scheduler::{refresh_segments, run, tick};

use crate::engine_rate::{facts_for, load};
use crate::report::{Row, quantile};
use crate::workload;

/// What the broadcast child measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct BroadcastFigures {
    schedule_seconds: f64,
    enroll_seconds: f64,
    peak_rss: u64,
    waiting_rss: u64,
    database_bytes: u64,
}

/// Figure 6, measured in a child process so that its memory is its own.
pub async fn broadcast(n: usize) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(std::env::current_exe()?)
        .args(["broadcast", "--customers", &n.to_string(), "--dir"])
        .arg(dir.path())
        .output()
        .context("running the broadcast child")?;
    if !output.status.success() {
        bail!(
            "the broadcast child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let figures: BroadcastFigures = serde_json::from_slice(&output.stdout)?;
    let label = crate::report::human(n as f64);
    #[allow(clippy::cast_precision_loss)]
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let at_a_million = n >= 1_000_000;
    let targeted = |row: Row, max: f64| if at_a_million { row.below(max) } else { row };
    Ok(vec![
        Row::plain(
            format!("6. broadcast: schedule {label} first fires"),
            &[figures.schedule_seconds],
            "s",
        ),
        targeted(
            Row::plain(
                format!("6. broadcast: enroll {label} customers"),
                &[figures.enroll_seconds],
                "s",
            ),
            60.0,
        ),
        Row::plain(
            format!("6. broadcast: peak RSS, {label}"),
            &[mb(figures.peak_rss)],
            "MB",
        ),
        targeted(
            Row::plain(
                format!("6. RSS with {label} customers waiting"),
                &[mb(figures.waiting_rss)],
                "MB",
            ),
            400.0,
        ),
        Row::plain(
            format!("6. database with {label} waiting"),
            &[mb(figures.database_bytes)],
            "MB",
        ),
    ])
}

/// The broadcast child: `n` customers, the sweep that schedules each one's first
/// occurrence, then the scheduler at Monday 09:00 UTC until every occurrence is handled.
/// Prints [`BroadcastFigures`] as JSON.
pub async fn broadcast_child(dir: &Path, n: usize) -> anyhow::Result<()> {
    let sunday: Timestamp = "2026-11-22T12:00:00Z".parse()?;
    let monday_nine: Timestamp = "2026-11-23T09:00:00Z".parse()?;
    let clock = Arc::new(ManualClock::new(sunday));
    let service = workload::service(dir, "broadcast", &[], clock).await?;
    let ctx = &service.scheduler;
    workload::seed_customers(&ctx.store, n, sunday).await?;
    let started = Instant::now();
    refresh_segments(ctx, sunday).await?;
    let schedule_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let fired = workload::tick_until_idle(ctx, monday_nine, |r| r.fired).await?;
    let enroll_seconds = started.elapsed().as_secs_f64();
    let (active,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM enrollments WHERE active = 1 AND node = 'hold'")
            .fetch_one(ctx.store.sqlite_pool().expect("the bench measures SQLite"))
            .await?;
    if fired != n || usize::try_from(active)? != n {
        bail!("{fired} occurrences handled and {active} customers waiting, not {n}");
    }
    // A later tick finds nobody due: the resting state with everyone waiting.
    tick(ctx, monday_nine.checked_add(SignedDuration::from_secs(60))?).await?;
    let (peak_rss, waiting_rss) = workload::memory_of("self")?;
    let figures = BroadcastFigures {
        schedule_seconds,
        enroll_seconds,
        peak_rss,
        waiting_rss,
        database_bytes: workload::database_bytes(dir),
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// When each scheduler tick ended, by the `now` it ran at: a tracing layer that watches
/// the `tick` span close, so a wake-up's lateness includes the commit of its batch.
#[derive(Clone, Default)]
struct TickEnds(Arc<Mutex<HashMap<i64, i64>>>);

/// The `now` of a `tick` span, kept in the span's extensions until it closes.
struct TickNow(i64);

impl<S> Layer<S> for TickEnds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerCtx<'_, S>) {
        struct Now(Option<i64>);
        impl Visit for Now {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "now" {
                    self.0 = format!("{value:?}")
                        .parse::<Timestamp>()
                        .ok()
                        .map(Timestamp::as_millisecond);
                }
            }
        }
        if attrs.metadata().name() != "tick" {
            return;
        }
        let mut now = Now(None);
        attrs.record(&mut now);
        if let (Some(now), Some(span)) = (now.0, ctx.span(id)) {
            span.extensions_mut().insert(TickNow(now));
        }
    }

    fn on_close(&self, id: Id, ctx: LayerCtx<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if let Some(&TickNow(now)) = span.extensions().get::<TickNow>()
            && let Ok(mut ends) = self.0.lock()
        {
            ends.insert(now, SystemClock.now().as_millisecond());
        }
    }
}

/// Figure 7: `rate` wake-ups a second fall due for `seconds` while the real scheduler loop
/// runs on the wall clock. A wake-up's lateness is from when it was due to the end of the
/// tick that handled it (so it includes the commit).
pub async fn lateness(rate: usize, seconds: usize) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ends = TickEnds::default();
    // Global: the scheduler's task runs on any worker thread. This process sets no other.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ends.clone()))
        .context("watching the scheduler's ticks")?;
    let service = workload::service(dir.path(), "lateness", &[], clock.clone()).await?;
    let workflow = load("lateness")?
        .into_iter()
        .next()
        .context("no lateness workflow")?;
    let n = rate * seconds;
    let first_due = SystemClock
        .now()
        .checked_add(SignedDuration::from_secs(5))?;
    let (segments, policy) = (Default::default(), SendPolicy::default());
    let mut due = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = service.scheduler.store.begin().await?;
        for &i in chunk {
            let at = first_due.checked_add(SignedDuration::from_micros(i64::try_from(
                i * 1_000_000 / rate,
            )?))?;
            let entered = at.checked_sub(SignedDuration::from_secs(60))?;
            let customer = workload::customer(i);
            let trigger = Event {
                id: None,
                name: "bench_wait".into(),
                timestamp: entered,
                properties: serde_json::Map::new(),
            };
            let fresh = Enrollment::new(
                format!("w{i}"),
                &workflow,
                customer.id.clone(),
                Some(trigger),
                entered,
            );
            let waiting = step(
                &workflow,
                &fresh,
                &facts_for(&customer, &segments, &policy),
                &Input::Enter,
                entered,
            )
            .enrollment;
            let wake = waiting.next_wake().context("the entrant waits")?;
            due.push((format!("w{i}"), wake.as_millisecond()));
            tx.save_enrollment(&waiting, entered).await?;
        }
        tx.commit().await?;
    }
    if SystemClock.now() >= first_due {
        bail!("writing {n} waiting enrollments took longer than the 5 s lead");
    }
    *service
        .scheduler
        .last_refresh
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))? = Some(first_due);
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(run(
        service.scheduler.clone(),
        clock.clone(),
        Arc::new(Notify::new()),
        shutdown.clone(),
    ));
    let run_for = Duration::from_secs(u64::try_from(seconds)? + 7);
    tokio::time::sleep(run_for).await;
    shutdown.cancel();
    scheduler.await?;
    let ends = ends
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let updated: std::collections::HashMap<String, (i64, i64)> =
        sqlx::query_as("SELECT id, active, updated_at FROM enrollments")
            .fetch_all(
                service
                    .scheduler
                    .store
                    .sqlite_pool()
                    .expect("the bench measures SQLite"),
            )
            .await?
            .into_iter()
            .map(|(id, active, updated): (String, i64, i64)| (id, (active, updated)))
            .collect();
    let mut late = Vec::with_capacity(n);
    for (id, wake) in &due {
        let &(active, updated_at) = updated.get(id).context("an enrollment vanished")?;
        if active != 0 {
            bail!("enrollment {id} was never woken");
        }
        let committed_by = *ends
            .get(&updated_at)
            .with_context(|| format!("no tick ran at {updated_at}, when {id} was updated"))?;
        #[allow(clippy::cast_precision_loss)]
        late.push((committed_by - wake).max(0) as f64 / 1000.0);
    }
    let label = format!("{rate}/s for {seconds} s");
    Ok(vec![
        Row::plain(
            format!("7. wake-up lateness p50, {label}"),
            &[quantile(&late, 0.5)],
            "s",
        ),
        Row::plain(
            format!("7. wake-up lateness p99, {label}"),
            &[quantile(&late, 0.99)],
            "s",
        )
        .below(1.0),
        Row::plain(
            format!("7. wake-up lateness max, {label}"),
            &[quantile(&late, 1.0)],
            "s",
        ),
    ])
}
