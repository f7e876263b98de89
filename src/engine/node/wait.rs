//! `wait`: pause for a duration, until a local time of day, or until a date attribute.

use crate::engine::time::{next_local_time, parse_date, resolve_local};
use crate::engine::{ExitReason, Flow, Run};
use crate::workflow::{TimeOfDay, Wait};

/// The local time used by `until_attribute` when the node gives no `at`.
const DEFAULT_AT: &str = "09:00";

pub(super) fn visit(wait: &Wait, run: &mut Run<'_>) -> Flow {
    let tz = run.tz();
    if let Some(duration) = wait.duration {
        // A zero wait parks until now: the step ends here and the next one goes on, in
        // another transaction (a yield; the benchmark's two-step journey is built on it).
        // The validator's loop check does not count it as a wait (`Node::waits`), since a
        // loop through nothing but zero waits would wake and park for ever.
        return Flow::Sleep(
            run.now
                .saturating_add(duration.as_signed())
                .unwrap_or(run.now),
        );
    }
    if let Some(at) = wait.until {
        return Flow::Sleep(next_local_time(run.now, &tz, at, wait.weekdays.as_deref()));
    }
    if let Some(attribute) = &wait.until_attribute {
        let Some(date) = run
            .customer
            .field(attribute)
            .and_then(|v| parse_date(&v, &tz))
        else {
            return Flow::End(ExitReason::MissingData(format!(
                "attribute {attribute:?} is not a date"
            )));
        };
        let offset_days = wait.offset.map_or(0, |d| d.as_signed().as_secs() / 86_400);
        let at = wait.at.unwrap_or_else(|| {
            DEFAULT_AT
                .parse::<TimeOfDay>()
                .expect("DEFAULT_AT is a valid time")
        });
        let Ok(day) = date.checked_add(jiff::Span::new().days(offset_days)) else {
            return Flow::End(ExitReason::MissingData(format!(
                "attribute {attribute:?} plus the offset is out of range"
            )));
        };
        // A date already past means there is nothing left to wait for.
        return Flow::Sleep(resolve_local(day, at.time(), &tz).max(run.now));
    }
    Flow::End(ExitReason::Broken(
        "wait node gives none of duration, until, until_attribute".into(),
    ))
}
