//! Schedule and date triggers for one customer: the next occurrence kept current, a due
//! occurrence handled once, a missed one caught up the next day.

use jiff::Timestamp;

use super::{FireWrite, Shell, Working};
use crate::engine::entry::{catch_up, in_audience, next_fire};
use crate::engine::policy::with_default_zone;
use crate::workflow::Trigger;

impl Working {
    /// Whether the occurrence was handled for the customer.
    fn has_fired(&self, workflow_id: &str, occurrence: Timestamp) -> bool {
        self.state
            .fired
            .contains(&(workflow_id.to_owned(), occurrence))
    }

    /// Records that the occurrence is handled; false when it was already.
    fn record_fire(&mut self, workflow_id: &str, occurrence: Timestamp) -> bool {
        let first = self
            .state
            .fired
            .insert((workflow_id.to_owned(), occurrence));
        if first {
            self.write.fires.push(FireWrite::Fired {
                workflow_id: workflow_id.to_owned(),
                occurrence,
            });
        }
        first
    }

    /// Keeps the next occurrence of every time-based trigger current for this customer (their
    /// zone or date attribute may have changed).
    pub(super) fn schedule_fires(&mut self, shell: &Shell, now: Timestamp) {
        for workflow in shell.catalog.current() {
            if !matches!(
                workflow.trigger.value,
                Trigger::Schedule(_) | Trigger::DateAttribute(_)
            ) {
                continue;
            }
            let customer = with_default_zone(&self.customer, &shell.policy);
            let mut next = next_fire(workflow, &customer, now);
            if let Some((at, missed)) = catch_up(workflow, &customer, now)
                && next.is_none_or(|n| at < n)
                && !self.has_fired(workflow.id.as_str(), missed)
                && !self.has_fired(workflow.id.as_str(), at)
            {
                next = Some(at);
            }
            self.write.fires.push(FireWrite::Schedule {
                workflow_id: workflow.id.to_string(),
                at: next,
            });
        }
    }

    /// Handles one due occurrence of a schedule or date trigger: enrolls the customer if
    /// they are in the audience (once per occurrence), then schedules the next occurrence.
    pub(super) fn on_fire(
        &mut self,
        shell: &Shell,
        workflow_id: &str,
        occurrence: Timestamp,
        paused: &std::collections::BTreeSet<String>,
        now: Timestamp,
    ) {
        let Some(workflow) = shell.catalog.get(workflow_id) else {
            self.write.fires.push(FireWrite::Advance {
                workflow_id: workflow_id.to_owned(),
                next: None,
            });
            return;
        };
        let first_time = self.record_fire(workflow_id, occurrence);
        let scope = crate::engine::condition::Scope {
            customer: &self.customer,
            event: None,
            trigger: None,
            segments: &self.state.segments,
            history: &self.state.history,
            now,
        };
        let audience = in_audience(workflow, &scope);
        if first_time && !paused.contains(workflow_id) {
            if audience {
                let id = format!(
                    "{workflow_id}:{}:at-{}",
                    self.id(),
                    occurrence.as_millisecond()
                );
                self.enter(shell, workflow, None, id, now);
            } else {
                self.skip(shell, now, Some(workflow_id), "not in the audience");
            }
        }
        let customer = with_default_zone(&self.customer, &shell.policy);
        let next = next_fire(workflow, &customer, occurrence.max(now));
        self.write.fires.push(FireWrite::Advance {
            workflow_id: workflow_id.to_owned(),
            next,
        });
    }
}
