//! Figure 3: the real scheduler advancing due enrollments through non-sending nodes on a
//! real SQLite file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use jiff::{SignedDuration, Timestamp};
use trellis::clock::ManualClock;
use trellis::model::{CustomerId, Event};
use trellis::scheduler::tick;

use crate::workload;

/// Steps per second: `n` customers wait one second in the `steps` workload; then every
/// tick's woken enrollments are counted until none is due. Each customer is woken twice
/// (branch + update + wait 0 s, then exit).
pub async fn scheduler_steps(dir: &Path, n: usize) -> anyhow::Result<f64> {
    let start: Timestamp = "2026-11-23T12:00:00Z".parse()?;
    let clock = Arc::new(ManualClock::new(start));
    let service = workload::service(dir, "steps", &[], clock).await?;
    let ctx = &service.scheduler;
    workload::seed_customers(&ctx.store, n, start).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = ctx.store.begin().await?;
        for &i in chunk {
            let event = Event {
                id: None,
                name: "bench_start".into(),
                timestamp: start,
                properties: serde_json::Map::new(),
            };
            tx.insert_event(&CustomerId::parse(format!("c{i:07}"))?, &event, start)
                .await?;
        }
        tx.commit().await?;
    }
    let entered = tick(ctx, start).await?;
    if entered.events != n {
        bail!(
            "{} of {n} customers entered the steps workload",
            entered.events
        );
    }
    let due = start.checked_add(SignedDuration::from_secs(1))?;
    let started = Instant::now();
    let woken = workload::tick_until_idle(ctx, due, |r| r.woken).await?;
    let seconds = started.elapsed().as_secs_f64();
    if woken != 2 * n {
        bail!("the scheduler woke {woken} enrollments, not {}", 2 * n);
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(woken as f64 / seconds)
}
