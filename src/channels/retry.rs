//! When to try a failed delivery again: exponential backoff with jitter, up to a maximum
//! age. Pure; the jitter is a hash of (key, attempt), not randomness.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::DeliveryError;
use crate::store::AttemptOutcome;

/// The retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
    /// Give up on a message this long after it was written.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` failures (1-based): base ×
    /// 2^(attempt−1), capped, plus up to 20 % jitter derived from the key.
    pub fn delay(&self, key: &str, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        let spread = u64::try_from(capped.as_millis() / 5)
            .unwrap_or(u64::MAX)
            .max(1);
        let jitter = crate::engine::hash::bucket(&[key, &attempt.to_string()], spread);
        capped + Duration::from_millis(jitter)
    }

    /// What to record after attempt number `attempt` (1-based) failed with `error`.
    pub fn decide(
        &self,
        key: &str,
        attempt: u32,
        created_at: Timestamp,
        error: &DeliveryError,
        now: Timestamp,
    ) -> AttemptOutcome {
        match error {
            DeliveryError::Permanent { reason } => AttemptOutcome::Failed {
                reason: reason.clone(),
            },
            DeliveryError::Refused { reason } => AttemptOutcome::Refused {
                reason: reason.clone(),
            },
            DeliveryError::Transient {
                retry_after,
                reason,
            } => {
                let delay = self
                    .delay(key, attempt)
                    .max(retry_after.map(|r| r.wait_from(now)).unwrap_or_default());
                let next = now
                    .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
                    .unwrap_or(Timestamp::MAX);
                let deadline = created_at
                    .checked_add(
                        SignedDuration::try_from(self.max_age).unwrap_or(SignedDuration::MAX),
                    )
                    .unwrap_or(Timestamp::MAX);
                if next > deadline {
                    AttemptOutcome::Failed {
                        reason: format!("gave up after {attempt} attempts: {reason}"),
                    }
                } else {
                    AttemptOutcome::Retry {
                        next_attempt_at: next,
                        reason: reason.clone(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn delays_double_up_to_the_cap_with_bounded_jitter() {
        let policy = RetryPolicy::default();
        for (attempt, base_secs) in [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (30, 3600)] {
            let d = policy.delay("k", attempt).as_secs_f64();
            let base = f64::from(base_secs);
            assert!(d >= base && d <= base * 1.2, "attempt {attempt}: {d}s");
        }
        assert_eq!(
            policy.delay("k", 3),
            policy.delay("k", 3),
            "jitter is deterministic"
        );
        assert_ne!(
            policy.delay("k", 3),
            policy.delay("other", 3),
            "jitter spreads keys"
        );
    }

    #[test]
    fn outcomes_follow_the_error_kind_retry_after_and_max_age() {
        let policy = RetryPolicy::default();
        let created = ts("2026-01-01T00:00:00Z");
        let transient = DeliveryError::Transient {
            retry_after: None,
            reason: "451 try later".into(),
        };
        let slow_down = DeliveryError::Transient {
            retry_after: Some(super::super::RetryAfter::Delay(Duration::from_secs(600))),
            reason: "429".into(),
        };
        let permanent = DeliveryError::Permanent {
            reason: "550 no such user".into(),
        };

        assert_eq!(
            policy.decide("k", 1, created, &permanent, created),
            AttemptOutcome::Failed {
                reason: "550 no such user".into()
            }
        );
        match policy.decide("k", 1, created, &transient, created) {
            AttemptOutcome::Retry {
                next_attempt_at, ..
            } => {
                let wait = next_attempt_at.duration_since(created).as_secs();
                assert!((30..=36).contains(&wait), "{wait}");
            }
            other => panic!("{other:?}"),
        }
        match policy.decide("k", 1, created, &slow_down, created) {
            AttemptOutcome::Retry {
                next_attempt_at, ..
            } => assert_eq!(next_attempt_at, ts("2026-01-01T00:10:00Z")),
            other => panic!("{other:?}"),
        }
        let late = ts("2026-01-01T23:50:00Z");
        assert!(matches!(
            policy.decide("k", 12, created, &transient, late),
            AttemptOutcome::Failed { reason } if reason.starts_with("gave up after 12 attempts")
        ));
    }
}
