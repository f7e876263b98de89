//! Runs the shell against a [`JourneyStore`]: due work in batches, one transaction each —
//! load, plan, write, commit. Generic over the store, so `serve` drives SQLite and the
//! simulator drives memory with the same code; async only because stores are.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::{Line, Shell, Work};
use crate::model::CustomerId;
use crate::store::{Error, JourneyStore, JourneyTx};
use crate::workflow::Trigger;

/// Rounds of due wake-ups in one tick; more waits for the next tick, so zero-length waits
/// cannot hold a tick forever.
const MAX_ROUNDS: usize = 64;
/// Rounds in a row that may write nothing (every customer changed while planned) before a
/// tick leaves the rest for the next one.
const MAX_UNWRITTEN_ROUNDS: usize = 3;
/// Customers per transaction in a sweep.
const SWEEP_BATCH: u32 = 500;

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Events processed.
    pub events: usize,
    /// Enrollments woken.
    pub woken: usize,
    /// Schedule and date trigger occurrences handled.
    pub fired: usize,
    /// Messages added to the outbox.
    pub messages: usize,
    /// The next wake-up or trigger occurrence, if any.
    pub next_wake: Option<Timestamp>,
}

/// Where a drive reports: after each commit (the scheduler nudges the dispatcher), and the
/// journal of what was committed (the simulator's timeline).
pub struct Sink<'a> {
    /// Called after each committed batch with the report so far.
    pub committed: &'a (dyn Fn(&TickReport) + Send + Sync),
    /// Receives the journal lines of each committed batch, when the shell keeps one.
    pub journal: Option<&'a mut Vec<Line>>,
}

impl Sink<'_> {
    fn commit(&mut self, report: &TickReport, lines: Vec<Line>) {
        (self.committed)(report);
        if let Some(journal) = self.journal.as_deref_mut() {
            journal.extend(lines);
        }
    }
}

/// One piece of work, owned, as a batch holds it. The variants differ in size, but a batch
/// holds one kind and lives for one transaction.
#[allow(clippy::large_enum_variant)]
enum Due {
    Event(crate::store::StoredEvent),
    Wake(crate::engine::Enrollment),
    Fire(crate::store::DueFire),
}

impl Due {
    fn customer(&self) -> &CustomerId {
        match self {
            Due::Event(e) => &e.customer_id,
            Due::Wake(e) => &e.customer_id,
            Due::Fire((_, c, _)) => c,
        }
    }

    fn work(&self) -> Work<'_> {
        match self {
            Due::Event(e) => Work::Event(e),
            Due::Wake(e) => Work::Wake(e),
            Due::Fire((workflow_id, _, occurrence)) => Work::Fire {
                workflow_id,
                occurrence: *occurrence,
            },
        }
    }
}

/// Which kind of due work a round takes.
#[derive(Clone, Copy)]
enum Kind {
    Events,
    Wakes,
    Fires,
}

/// Processes every pending event, then the enrollments due at `now`, then the trigger
/// occurrences due, `batch_size` per transaction.
///
/// # Errors
/// A store error; the batch in progress is rolled back and retried next tick.
pub async fn tick<S: JourneyStore>(
    store: &S,
    shell: &Shell,
    batch_size: u32,
    now: Timestamp,
    sink: &mut Sink<'_>,
) -> Result<TickReport, Error> {
    let paused = store.paused().await?;
    let mut report = TickReport::default();
    for kind in [Kind::Events, Kind::Wakes, Kind::Fires] {
        // Events until none is left (new ones wait for the next tick only if they keep
        // coming); wake-ups and fires a bounded number of rounds.
        let rounds = if matches!(kind, Kind::Events) {
            usize::MAX
        } else {
            MAX_ROUNDS
        };
        let mut unwritten_rounds = 0;
        for _ in 0..rounds {
            let mut tx = store.begin().await?;
            let due: Vec<Due> = match kind {
                Kind::Events => tx
                    .pending_events(batch_size)
                    .await?
                    .into_iter()
                    .map(Due::Event)
                    .collect(),
                Kind::Wakes => tx
                    .due_enrollments(now, batch_size)
                    .await?
                    .into_iter()
                    .map(Due::Wake)
                    .collect(),
                Kind::Fires => tx
                    .due_fires(now, batch_size)
                    .await?
                    .into_iter()
                    .map(Due::Fire)
                    .collect(),
            };
            // The due work is read under the write lock only for that moment; the customers
            // are loaded and planned outside it, and each wave's write is fenced.
            tx.end_unwritten().await?;
            if due.is_empty() {
                break;
            }
            let mut written = 0;
            let mut conflicted: BTreeSet<CustomerId> = BTreeSet::new();
            for wave in waves(&due) {
                // A customer whose earlier work was not written keeps the rest for the next
                // round, so their work stays in order.
                let wave: Vec<&Due> = wave
                    .into_iter()
                    .filter(|d| !conflicted.contains(d.customer()))
                    .collect();
                let works: Vec<(&CustomerId, Work<'_>)> =
                    wave.iter().map(|d| (d.customer(), d.work())).collect();
                let (writes, skipped) = plan_all(store, shell, &works, &paused, now).await?;
                conflicted.extend(skipped);
                let mut lines = Vec::new();
                for write in writes {
                    if write.id.as_ref().is_some_and(|id| conflicted.contains(id)) {
                        continue;
                    }
                    written += 1;
                    report.messages += write.queued();
                    lines.extend(write.journal);
                    match kind {
                        Kind::Events => report.events += 1,
                        Kind::Wakes => report.woken += 1,
                        Kind::Fires => report.fired += 1,
                    }
                }
                sink.commit(&report, lines);
            }
            if written == 0 {
                // Every customer changed while planned: planned again at once, but a batch
                // that keeps changing waits for the next tick rather than spin.
                unwritten_rounds += 1;
                if unwritten_rounds >= MAX_UNWRITTEN_ROUNDS {
                    break;
                }
            } else {
                unwritten_rounds = 0;
            }
        }
    }
    report.next_wake = store.next_due().await?;
    Ok(report)
}

/// The batch split so that no customer appears twice in one wave, each customer's work kept
/// in order: a customer's second piece of work is loaded after the first is written.
fn waves(due: &[Due]) -> Vec<Vec<&Due>> {
    let mut waves: Vec<Vec<&Due>> = Vec::new();
    let mut seen: std::collections::HashMap<&CustomerId, usize> = std::collections::HashMap::new();
    for item in due {
        let n = seen.entry(item.customer()).or_insert(0);
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(item);
        *n += 1;
    }
    waves
}

/// Loads `works`' customers together outside the write lock (each at most once), plans each
/// piece of work, and writes the results in one fenced transaction. Returns the writes and
/// the customers skipped because their profile changed meanwhile.
async fn plan_all<S: JourneyStore>(
    store: &S,
    shell: &Shell,
    works: &[(&CustomerId, Work<'_>)],
    paused: &BTreeSet<String>,
    now: Timestamp,
) -> Result<(Vec<super::CustomerWrite>, Vec<CustomerId>), Error> {
    let Some(spec) = works
        .iter()
        .map(|(_, work)| shell.load_spec(work, now))
        .reduce(super::LoadSpec::union)
    else {
        return Ok((Vec::new(), Vec::new()));
    };
    let ids: Vec<CustomerId> = works.iter().map(|(id, _)| (*id).clone()).collect();
    let states = store.load_customers(&ids, &spec).await?;
    let writes: Vec<super::CustomerWrite> = works
        .iter()
        .zip(states)
        .map(|((id, work), state)| super::plan(shell, id, state, *work, paused, now))
        .collect();
    let mut tx = store.begin().await?;
    let conflicted = tx.write_customers(&writes, now).await?;
    crate::crash_point::crash_point("in_step");
    tx.commit().await?;
    crate::crash_point::crash_point("after_step_commit");
    Ok((writes, conflicted))
}

/// Recomputes the computed traits when the shell computes them ([`Shell::lifecycle`]), then
/// every customer's segments at `now`, firing segment triggers for each
/// transition (for conditions that become true with time alone, "no order in 60 days"), and
/// schedules time-based triggers for customers who have none yet (new workflows, imports).
/// Returns how many customers entered or left a segment.
///
/// # Errors
/// A store error; the batch in progress is rolled back.
pub async fn sweep<S: JourneyStore>(
    store: &S,
    shell: &Shell,
    now: Timestamp,
    sink: &mut Sink<'_>,
) -> Result<usize, Error> {
    // Traits first, so the segments below see fresh scores.
    if let Some(lifecycle) = shell.lifecycle {
        let (_, model) = recompute_traits(store, lifecycle, now).await?;
        tracing::debug!(model = %model.summary(), "predictive models fitted");
    }
    let time_triggers = shell.catalog.current().any(|w| {
        matches!(
            w.trigger.value,
            Trigger::Schedule(_) | Trigger::DateAttribute(_)
        )
    });
    if shell.catalog.segments().is_empty() && !time_triggers {
        return Ok(0);
    }
    let paused = store.paused().await?;
    let mut after: Option<String> = None;
    let mut changed = 0;
    loop {
        let ids = store
            .customer_ids_after(after.as_deref(), SWEEP_BATCH)
            .await?;
        let Some(last) = ids.last() else { break };
        after = Some(last.to_string());
        let mut report = TickReport::default();
        let mut lines = Vec::new();
        let works: Vec<(&CustomerId, Work<'_>)> = ids.iter().map(|id| (id, Work::Sweep)).collect();
        // A customer skipped because they changed meanwhile is swept at the next sweep.
        let (writes, skipped) = plan_all(store, shell, &works, &paused, now).await?;
        for write in writes {
            if write.id.as_ref().is_some_and(|id| skipped.contains(id)) {
                continue;
            }
            if !write.joined.is_empty() || !write.left.is_empty() {
                changed += 1;
            }
            report.messages += write.queued();
            lines.extend(write.journal);
        }
        sink.commit(&report, lines);
    }
    Ok(changed)
}

/// Recomputes every customer's computed traits (RFM, value tier, lifecycle, predicted
/// traits, VAP scores) at `now` from their orders ([`crate::traits::compute_with_model`],
/// pure) and writes those that changed into their attributes. Returns how many customers
/// were scored, and the predictive models' fit.
///
/// # Errors
/// A store error.
pub async fn recompute_traits<S: JourneyStore>(
    store: &S,
    lifecycle: crate::traits::Lifecycle,
    now: Timestamp,
) -> Result<(usize, crate::traits::ModelFit), Error> {
    let stats = store.order_stats().await?;
    let (traits, model) = crate::traits::compute_with_model(&stats, now, lifecycle);
    store.write_traits(&traits, now).await?;
    Ok((traits.len(), model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, customer: &str) -> Due {
        Due::Event(crate::store::StoredEvent {
            seq,
            customer_id: CustomerId::parse(customer.to_owned()).unwrap(),
            event: crate::model::Event {
                id: None,
                name: "signup".into(),
                timestamp: Timestamp::UNIX_EPOCH,
                properties: Default::default(),
            },
        })
    }

    #[test]
    fn a_customer_appears_once_a_wave_with_their_work_in_order() {
        let due = [
            event(1, "a"),
            event(2, "b"),
            event(3, "a"),
            event(4, "a"),
            event(5, "c"),
        ];
        let seqs: Vec<Vec<i64>> = waves(&due)
            .iter()
            .map(|wave| {
                wave.iter()
                    .map(|d| match d {
                        Due::Event(e) => e.seq,
                        _ => unreachable!(),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(seqs, [vec![1, 2, 5], vec![3], vec![4]]);
    }
}
