//! Local-time arithmetic: the next 09:00 in a customer's zone, anniversaries, cron.
//!
//! Daylight-saving rules, applied everywhere: a local time that does not exist (inside a
//! spring-forward gap) resolves to the first valid instant after it, which is the moment
//! the clocks jump; a local time that occurs twice (fall-back) takes its first occurrence.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

use crate::workflow::{Repeat, TimeOfDay, Weekday};

/// The instant at which the local clock in `tz` shows `date` `time`, by the rules above.
pub fn resolve_local(date: Date, time: Time, tz: &TimeZone) -> Timestamp {
    let civil: DateTime = date.to_datetime(time);
    let ambiguous = tz.to_ambiguous_timestamp(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { offset } => {
            offset.to_timestamp(civil).unwrap_or(Timestamp::MAX)
        }
        AmbiguousOffset::Fold { before, .. } => {
            before.to_timestamp(civil).unwrap_or(Timestamp::MAX)
        }
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, the civil time lands just before the transition;
            // the transition itself is the first instant whose local time is past the gap.
            let probe = after.to_timestamp(civil).unwrap_or(Timestamp::MAX);
            tz.following(probe)
                .next()
                .map(|t| t.timestamp())
                .unwrap_or(probe)
        }
    }
}

/// The first instant strictly after `after` when the local clock in `tz` shows `at`,
/// on one of `weekdays` if given.
pub fn next_local_time(
    after: Timestamp,
    tz: &TimeZone,
    at: TimeOfDay,
    weekdays: Option<&[Weekday]>,
) -> Timestamp {
    let today = after.to_zoned(tz.clone()).date();
    // Fifteen days cover any weekday set plus a daylight-saving shift.
    for offset in 0..15 {
        let Ok(date) = today.checked_add(offset.days()) else {
            break;
        };
        if let Some(days) = weekdays
            && !days.iter().any(|d| d.to_jiff() == date.weekday())
        {
            continue;
        }
        let candidate = resolve_local(date, at.time(), tz);
        if candidate > after {
            return candidate;
        }
    }
    Timestamp::MAX
}

/// Reads a date attribute: `YYYY-MM-DD`, or an RFC 3339 timestamp (whose date is taken in `tz`).
pub fn parse_date(value: &serde_json::Value, tz: &TimeZone) -> Option<Date> {
    let text = value.as_str()?;
    if let Ok(date) = text.parse::<Date>() {
        return Some(date);
    }
    text.parse::<Timestamp>()
        .ok()
        .map(|ts| ts.to_zoned(tz.clone()).date())
}

/// The date's month and day in `year`; 29 February becomes 28 February in common years.
fn in_year(date: Date, year: i16) -> Option<Date> {
    Date::new(year, date.month(), date.day())
        .or_else(|_| Date::new(year, date.month(), date.day() - 1))
        .ok()
}

/// The first instant strictly after `after` at which a date trigger fires: the date (each
/// year, or once) moved by `offset_days`, at local time `at` in `tz`.
pub fn next_date_occurrence(
    date: Date,
    offset_days: i32,
    at: TimeOfDay,
    repeat: Repeat,
    tz: &TimeZone,
    after: Timestamp,
) -> Option<Timestamp> {
    let fire = |d: Date| {
        d.checked_add(i64::from(offset_days).days())
            .ok()
            .map(|d| resolve_local(d, at.time(), tz))
    };
    match repeat {
        Repeat::Once => fire(date).filter(|t| *t > after),
        Repeat::Yearly => {
            let year = after.to_zoned(tz.clone()).year();
            (year - 1..=year + 1)
                .filter_map(|y| in_year(date, y))
                .filter_map(fire)
                .find(|t| *t > after)
        }
    }
}

/// The first instant strictly after `after` when `cron` fires, read in `tz`.
pub fn next_cron(cron: &croner::Cron, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    let start = after.to_zoned(tz.clone());
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|z| z.timestamp())
}

/// The last instant at or before `at` when `cron` fires, read in `tz`.
pub fn previous_cron(cron: &croner::Cron, tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    cron.find_previous_occurrence(&at.to_zoned(tz.clone()), true)
        .ok()
        .map(|z| z.timestamp())
}

/// Parses a five-field cron expression (minute, hour, day of month, month, day of week).
///
/// # Errors
/// croner's description of what is wrong.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    // A broadcast computes the next run for every customer from the same few expressions;
    // parsing was a tenth of its time. The memo is a pure function's cache: same result.
    const MEMO_SIZE: usize = 64;
    thread_local! {
        static PARSED: std::cell::RefCell<std::collections::HashMap<String, croner::Cron>> =
            std::cell::RefCell::default();
    }
    if let Some(cron) = PARSED.with_borrow(|memo| memo.get(expr).cloned()) {
        return Ok(cron);
    }
    // croner takes `0,,5` or `,` as a list with nothing in it: a field that never matches,
    // and a search for the next run that takes seconds before it gives up.
    if let Some(field) = expr
        .split_whitespace()
        .find(|field| field.split(',').any(str::is_empty))
    {
        return Err(format!(
            "invalid cron expression {expr:?}: {field:?} has an empty item in its list"
        ));
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
    PARSED.with_borrow_mut(|memo| {
        if memo.len() >= MEMO_SIZE {
            memo.clear();
        }
        memo.insert(expr.to_owned(), cron.clone());
    });
    Ok(cron)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memoised_cron_fires_like_a_fresh_one_and_errors_are_not_memoised() {
        let tz = TimeZone::get("Europe/Paris").unwrap();
        let after: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let first = next_cron(&parse_cron("0 9 * * MON").unwrap(), &tz, after);
        let again = next_cron(&parse_cron("0 9 * * MON").unwrap(), &tz, after);
        let other = next_cron(&parse_cron("0 9 * * TUE").unwrap(), &tz, after);
        assert_eq!(first, Some("2026-11-23T08:00:00Z".parse().unwrap()));
        assert_eq!(again, first);
        assert_eq!(other, Some("2026-11-24T08:00:00Z".parse().unwrap()));
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_cron("0 25 * * *").is_err());
    }

    fn ny() -> TimeZone {
        TimeZone::get("America/New_York").unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn nine_am_on_spring_forward_day_in_new_york_is_13_utc() {
        let next = next_local_time(
            ts("2026-03-08T05:00:00Z"),
            &ny(),
            "09:00".parse().unwrap(),
            None,
        );
        assert_eq!(next, ts("2026-03-08T13:00:00Z"));
    }

    #[test]
    fn a_local_time_inside_the_gap_resolves_to_the_moment_clocks_jump() {
        // 02:30 does not exist in New York on 2026-03-08; 03:00 EDT (07:00 UTC) is the first
        // valid instant after it.
        let next = next_local_time(
            ts("2026-03-08T05:00:00Z"),
            &ny(),
            "02:30".parse().unwrap(),
            None,
        );
        assert_eq!(next, ts("2026-03-08T07:00:00Z"));
    }

    #[test]
    fn a_local_time_that_occurs_twice_takes_the_first_occurrence() {
        // 01:30 happens twice in New York on 2026-11-01: first at EDT (05:30 UTC).
        let next = next_local_time(
            ts("2026-11-01T00:00:00Z"),
            &ny(),
            "01:30".parse().unwrap(),
            None,
        );
        assert_eq!(next, ts("2026-11-01T05:30:00Z"));
    }

    #[test]
    fn weekday_waits_skip_to_the_next_allowed_day() {
        let weekdays = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ];
        // Saturday 2026-06-06 noon UTC in Paris: next weekday 10:00 is Monday 08:00 UTC.
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let next = next_local_time(
            ts("2026-06-06T12:00:00Z"),
            &paris,
            "10:00".parse().unwrap(),
            Some(&weekdays),
        );
        assert_eq!(next, ts("2026-06-08T08:00:00Z"));
    }

    #[test]
    fn cron_in_new_york_neither_skips_nor_doubles_across_daylight_saving() {
        let cron = parse_cron("30 2 * * *").unwrap();
        let mut at = ts("2026-03-07T00:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..3 {
            at = next_cron(&cron, &ny(), at).unwrap();
            fired.push(at.to_zoned(ny()).date().to_string());
        }
        assert_eq!(fired, ["2026-03-07", "2026-03-08", "2026-03-09"]);

        let cron = parse_cron("30 1 * * *").unwrap();
        let mut at = ts("2026-10-31T12:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..3 {
            at = next_cron(&cron, &ny(), at).unwrap();
            fired.push(at.to_zoned(ny()).date().to_string());
        }
        assert_eq!(fired, ["2026-11-01", "2026-11-02", "2026-11-03"]);
    }

    #[test]
    fn yearly_dates_come_round_and_leap_days_fall_back_to_the_28th() {
        let utc = TimeZone::UTC;
        let at: TimeOfDay = "09:00".parse().unwrap();
        let leap: Date = "2000-02-29".parse().unwrap();
        let next = next_date_occurrence(
            leap,
            0,
            at,
            Repeat::Yearly,
            &utc,
            ts("2026-01-01T00:00:00Z"),
        );
        assert_eq!(next, Some(ts("2026-02-28T09:00:00Z")));
        let once =
            next_date_occurrence(leap, 0, at, Repeat::Once, &utc, ts("2026-01-01T00:00:00Z"));
        assert_eq!(once, None);
        let before = next_date_occurrence(
            "1990-07-10".parse().unwrap(),
            -3,
            at,
            Repeat::Yearly,
            &utc,
            ts("2026-07-08T00:00:00Z"),
        );
        assert_eq!(before, Some(ts("2027-07-07T09:00:00Z")));
    }

    /// Found by fuzzing: croner accepted `,,,, * * * *` (a minute list with nothing in it),
    /// and the next run was searched for 16 s in a debug build before none was found.
    #[test]
    fn a_cron_field_with_an_empty_list_item_is_refused() {
        for expr in [",,,, * * * *", ", 9 * * MON", "0,,30 9 * * *", "0 9, * * *"] {
            let err = parse_cron(expr).expect_err(expr);
            assert!(err.contains("has an empty item"), "{err}");
        }
        assert!(parse_cron("0,30 9 * * MON,FRI").is_ok());
    }
}
