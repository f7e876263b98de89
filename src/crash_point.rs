//! Named crash points for the fault tests: with the `crash-points` feature (test builds
//! only: `./test.sh` enables it), `crash_point("after_claim")` aborts the process at once —
//! no destructors, no flush, no commit, as `kill -9` would — when `TRELLIS_CRASH_AT` names
//! that point (`after_claim`, or `after_claim:3` for its third pass). Without the feature
//! it compiles to nothing, so a release build holds no way to crash on request.
//!
//! `fail_point("record_outcomes")` likewise makes an operation fail as if the database were
//! busy, for `TRELLIS_FAIL_AT=record_outcomes:N`'s first N passes.
//!
//! The points: `after_claim` (messages marked `sending`, nothing delivered),
//! `after_send` (a message delivered, its outcome not recorded), `in_step` (inside a
//! scheduler transaction, before its commit), `after_step_commit` (a step committed, its
//! messages not yet dispatched), `after_event_insert` (an event committed, the response not
//! yet sent).

/// With the `crash-points` feature, whether the operation at `point` should fail this time
/// as if the database could not take it: `TRELLIS_FAIL_AT=record_outcomes:3` fails its first
/// three passes. Without the feature, never.
#[inline]
pub fn fail_point(point: &'static str) -> bool {
    #[cfg(feature = "crash-points")]
    return armed::fails(point);
    #[cfg(not(feature = "crash-points"))]
    {
        let _ = point;
        false
    }
}

/// Aborts the process if the `crash-points` feature is on and `TRELLIS_CRASH_AT` names
/// `point` (and this is its configured pass).
#[inline]
pub fn crash_point(point: &'static str) {
    #[cfg(feature = "crash-points")]
    armed::check(point);
    #[cfg(not(feature = "crash-points"))]
    let _ = point;
}

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The point named in `TRELLIS_CRASH_AT`, the pass to crash at, and the passes so far.
    static TARGET: OnceLock<Option<(String, u64, AtomicU64)>> = OnceLock::new();

    /// The point named in `TRELLIS_FAIL_AT`, how many passes fail, and the passes so far.
    static FAILING: OnceLock<Option<(String, u64, AtomicU64)>> = OnceLock::new();

    pub(super) fn fails(point: &'static str) -> bool {
        let target = FAILING.get_or_init(|| {
            let spec = std::env::var("TRELLIS_FAIL_AT").ok()?;
            let (name, times) = match spec.split_once(':') {
                Some((name, times)) => (name.to_owned(), times.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some((name, times, AtomicU64::new(0)))
        });
        matches!(target, Some((name, times, seen))
            if name == point && seen.fetch_add(1, Ordering::SeqCst) < *times)
    }

    pub(super) fn check(point: &'static str) {
        let target = TARGET.get_or_init(|| {
            let spec = std::env::var("TRELLIS_CRASH_AT").ok()?;
            let (name, pass) = match spec.split_once(':') {
                Some((name, pass)) => (name.to_owned(), pass.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some((name, pass.max(1), AtomicU64::new(0)))
        });
        if let Some((name, pass, seen)) = target
            && name == point
            && seen.fetch_add(1, Ordering::SeqCst) + 1 == *pass
        {
            eprintln!("crash point {point}: aborting");
            std::process::abort();
        }
    }
}
