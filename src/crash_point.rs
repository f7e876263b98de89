//! Named crash points for the fault tests: with the `crash-points` feature (test builds
//! only: `./test.sh` enables it), `crash_point("after_claim")` aborts the process at once —
//! no destructors, no flush, no commit, as `kill -9` would — when `TRELLIS_CRASH_AT` names
//! that point (`after_claim`, or `after_claim:3` for its third pass). Without the feature
//! it compiles to nothing, so a release build holds no way to crash on request.
//!
//! The points: `after_claim` (messages marked `sending`, nothing delivered),
//! `after_send` (a message delivered, its outcome not recorded), `in_step` (inside a
//! scheduler transaction, before its commit), `after_step_commit` (a step committed, its
//! messages not yet dispatched), `after_event_insert` (an event committed, the response not
//! yet sent).

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
