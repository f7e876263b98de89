//! Who enters a workflow and when: trigger matching, entry rules, and the next time a
//! schedule or date trigger fires for a customer. Pure, like the rest of the engine.

use jiff::Timestamp;

use super::condition::{Scope, holds, matches_filter};
use super::time::{next_cron, next_date_occurrence, parse_cron, parse_date};
use crate::model::{Customer, Event};
use crate::workflow::{Entry, ScheduleTrigger, Trigger, Workflow};

/// Whether `event` fires the workflow's event trigger.
pub fn enrolls_on_event(workflow: &Workflow, event: &Event) -> bool {
    match &workflow.trigger.value {
        Trigger::Event(t) => t.name == event.name && matches_filter(event, &t.filter),
        _ => false,
    }
}

/// What the shell knows of the customer's earlier enrollments in this workflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PastEntries {
    /// An enrollment is still active.
    pub active: bool,
    /// When the customer last entered, if ever.
    pub last_entered_at: Option<Timestamp>,
}

/// The answer to "may this customer enter now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryDecision {
    /// Enter.
    Enter,
    /// Already in the workflow: one active enrollment per customer per workflow.
    AlreadyActive,
    /// `entry: once`, and the customer entered before.
    AlreadyEntered,
    /// `entry: cooldown`, and the cooldown runs until this instant.
    CoolingDown(Timestamp),
}

/// Applies the workflow's entry rule.
pub fn may_enter(entry: Entry, past: PastEntries, now: Timestamp) -> EntryDecision {
    if past.active {
        return EntryDecision::AlreadyActive;
    }
    match (entry, past.last_entered_at) {
        (_, None) | (Entry::EveryTime, _) => EntryDecision::Enter,
        (Entry::Once, Some(_)) => EntryDecision::AlreadyEntered,
        (Entry::Cooldown(cooldown), Some(last)) => {
            let until = last
                .saturating_add(cooldown.as_signed())
                .unwrap_or(Timestamp::MAX);
            if now >= until {
                EntryDecision::Enter
            } else {
                EntryDecision::CoolingDown(until)
            }
        }
    }
}

/// The zone a schedule trigger's cron is read in for this customer.
fn schedule_zone(trigger: &ScheduleTrigger, customer: &Customer) -> jiff::tz::TimeZone {
    if trigger.per_customer_zone() {
        return customer.tz();
    }
    trigger
        .timezone
        .as_deref()
        .and_then(|name| jiff::tz::TimeZone::get(name).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC)
}

/// The first instant strictly after `after` at which a time-based trigger (schedule or date
/// attribute) fires for `customer`; `None` for other triggers, a date attribute the customer
/// lacks, or an invalid cron expression (which the validator reports).
pub fn next_fire(workflow: &Workflow, customer: &Customer, after: Timestamp) -> Option<Timestamp> {
    match &workflow.trigger.value {
        Trigger::Schedule(s) => {
            let cron = parse_cron(&s.cron).ok()?;
            next_cron(&cron, &schedule_zone(s, customer), after)
        }
        Trigger::DateAttribute(d) => {
            let tz = customer.tz();
            let date = parse_date(&customer.field(&d.attribute)?, &tz)?;
            next_date_occurrence(date, d.offset_days, d.at, d.repeat, &tz, after)
        }
        Trigger::Event(_) | Trigger::SegmentEntered(_) | Trigger::SegmentExited(_) => None,
    }
}

/// For a schedule trigger with `missed: next_day`: the catch-up instant for an occurrence that
/// passed less than a day before `now` — the same local time the next day — with the missed
/// occurrence. The shell uses it only if that occurrence never fired for the customer.
pub fn catch_up(
    workflow: &Workflow,
    customer: &Customer,
    now: Timestamp,
) -> Option<(Timestamp, Timestamp)> {
    let Trigger::Schedule(s) = &workflow.trigger.value else {
        return None;
    };
    if s.missed != crate::workflow::Missed::NextDay {
        return None;
    }
    let tz = schedule_zone(s, customer);
    let missed = super::time::previous_cron(&parse_cron(&s.cron).ok()?, &tz, now)?;
    if now.duration_since(missed) >= jiff::SignedDuration::from_hours(24) || missed == now {
        return None;
    }
    let local = missed.to_zoned(tz.clone());
    let next_day = local.date().tomorrow().ok()?;
    Some((
        super::time::resolve_local(next_day, local.time(), &tz),
        missed,
    ))
}

/// Whether a schedule trigger's audience includes the customer (always, for other triggers).
pub fn in_audience(workflow: &Workflow, scope: &Scope<'_>) -> bool {
    match &workflow.trigger.value {
        Trigger::Schedule(schedule) => schedule.audience.as_ref().is_none_or(|a| holds(a, scope)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Duration;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn entry_rules_allow_once_every_time_and_after_cooldown() {
        let now = ts("2026-05-10T00:00:00Z");
        let before = PastEntries {
            active: false,
            last_entered_at: Some(ts("2026-05-05T00:00:00Z")),
        };
        assert_eq!(
            may_enter(Entry::Once, PastEntries::default(), now),
            EntryDecision::Enter
        );
        assert_eq!(
            may_enter(Entry::Once, before, now),
            EntryDecision::AlreadyEntered
        );
        assert_eq!(
            may_enter(Entry::EveryTime, before, now),
            EntryDecision::Enter
        );
        let week = Entry::Cooldown("7d".parse::<Duration>().unwrap());
        assert_eq!(
            may_enter(week, before, now),
            EntryDecision::CoolingDown(ts("2026-05-12T00:00:00Z"))
        );
        assert_eq!(
            may_enter(week, before, ts("2026-05-12T00:00:00Z")),
            EntryDecision::Enter
        );
        let active = PastEntries {
            active: true,
            ..before
        };
        assert_eq!(
            may_enter(Entry::EveryTime, active, now),
            EntryDecision::AlreadyActive
        );
    }
}
