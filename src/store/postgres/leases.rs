//! Several runners on one database (docs/design-postgres.md §5): what this runner holds, and
//! the statements that take, check, renew and give back leases.
//!
//! - **Customers.** The scheduler's due work (events, wake-ups, occurrences) and the sweep's
//!   pages are taken by leasing their customers: `customer_leases` rows claimed `FOR UPDATE
//!   SKIP LOCKED`, one token per claim, expiring `lease_ttl` later by the database's clock.
//!   A journey write is fenced by the token: it goes through only while the token in the row
//!   is still the one this runner holds. A runner's holdings are given back at its next
//!   claim, after the round that used them. A runner that dies loses them when they expire;
//!   one that was stopped and resumes finds its token replaced and writes nothing.
//! - **Outbox.** A claimed message is `sending` under `claimed_by`/`lease_token`/
//!   `lease_expires_at`; another runner's expired one is claimable again (never the runner's
//!   own: its renewal revives it). Outcomes are recorded only for rows whose token is still
//!   this runner's. A task renews, key by key, the claims of messages waiting for a permit,
//!   and forgets a key it no longer finds ours; the dispatcher does not start a delivery
//!   whose claim was last known live more than ⅔ of a lease ago
//!   ([`Leases::still_claimed`]) and hands such a claim back, so a runner stopped past its
//!   lease sends at most what was already on the wire again.
//! - **Leader.** `leader_leases` names one runner per singleton job (the sweep), River's
//!   `river_leader` in one upsert. Correctness never rests on it: it only keeps the work
//!   from being done twice.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// Who this runner is and what it holds. Shared by a store's clones and its transactions.
#[derive(Debug)]
pub(crate) struct Leases {
    /// `<host>/<pid>/<random>`, in `claimed_by`, `runner_id` and `application_name`.
    pub(crate) runner: String,
    /// How long a lease lasts unless renewed.
    pub(crate) ttl: Duration,
    /// The store's pool, for the renewal task, which holds these leases only weakly: it ends
    /// with the store and keeps no connection open after it.
    pool: sqlx::PgPool,
    /// Customer id → the token of the claim that leased it, until given back.
    customers: Mutex<HashMap<String, i64>>,
    /// Claimed messages and their claims' renewals.
    outbox: Mutex<Outbox>,
}

/// The outbox leases this runner holds.
#[derive(Debug, Default)]
struct Outbox {
    /// Message key → its claim's token and when that claim was last known to be live
    /// (claimed or renewed, by this process's monotonic clock, only ever compared with
    /// itself), until its outcome is recorded, it is released, or a renewal no longer finds
    /// it ours. Kept per key: another runner may take over some of one claim's messages.
    by_key: HashMap<String, (i64, Instant)>,
}

impl Leases {
    /// A runner named `runner` whose leases last `ttl`, on `pool`.
    pub(crate) fn new(runner: String, ttl: Duration, pool: sqlx::PgPool) -> Self {
        Self {
            runner,
            ttl,
            pool,
            customers: Mutex::default(),
            outbox: Mutex::default(),
        }
    }

    /// The lease length in milliseconds, as the statements bind it.
    pub(crate) fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Forgets every customer held and returns them with their tokens, in id order, to be
    /// given back (and held again with [`Leases::rehold_customers`] if that fails).
    pub(crate) fn take_customers(&self) -> (Vec<String>, Vec<i64>) {
        let mut held = self.customers.lock().expect("never held across a panic");
        let mut taken: Vec<(String, i64)> = held.drain().collect();
        taken.sort_unstable();
        taken.into_iter().unzip()
    }

    /// Holds again what [`Leases::take_customers`] returned, after a give-back that failed:
    /// otherwise those customers would wait out their leases.
    pub(crate) fn rehold_customers(&self, ids: Vec<String>, tokens: Vec<i64>) {
        let mut held = self.customers.lock().expect("never held across a panic");
        for (id, token) in ids.into_iter().zip(tokens) {
            held.entry(id).or_insert(token);
        }
    }

    /// Records the customers a claim leased with `token`.
    pub(crate) fn hold_customers(&self, ids: &[String], token: i64) {
        let mut held = self.customers.lock().expect("never held across a panic");
        held.extend(ids.iter().map(|id| (id.clone(), token)));
    }

    /// The token this runner holds for `customer`, if any.
    pub(crate) fn customer_token(&self, customer: &str) -> Option<i64> {
        self.customers
            .lock()
            .expect("never held across a panic")
            .get(customer)
            .copied()
    }

    /// Records messages claimed with `token`, live from `at` (taken before the claim
    /// began, so a stall between the claim and this call only makes the claim look older).
    pub(crate) fn hold_messages(
        &self,
        keys: impl Iterator<Item = String>,
        token: i64,
        at: Instant,
    ) {
        let mut outbox = self.outbox.lock().expect("never held across a panic");
        outbox.by_key.extend(keys.map(|k| (k, (token, at))));
    }

    /// The tokens of `keys`' claims (`None` for a key this runner does not hold), and
    /// forgets them: they are being released.
    pub(crate) fn take_messages(&self, keys: &[&str]) -> Vec<Option<i64>> {
        let mut outbox = self.outbox.lock().expect("never held across a panic");
        keys.iter()
            .map(|k| outbox.by_key.remove(*k).map(|(token, _)| token))
            .collect()
    }

    /// The tokens of `keys`' claims (`None` for a key this runner does not hold), kept: a
    /// renewal that no longer finds a key ours forgets it.
    pub(crate) fn message_tokens(&self, keys: &[&str]) -> Vec<Option<i64>> {
        let outbox = self.outbox.lock().expect("never held across a panic");
        keys.iter()
            .map(|k| outbox.by_key.get(*k).map(|(token, _)| *token))
            .collect()
    }

    /// Whether a delivery of `key` may start: this runner holds its claim, and the claim
    /// was live less than two thirds of a lease ago (a renewal every third of a lease keeps
    /// a waiting message's claim younger than that; a runner stopped past it, whose claims
    /// another runner may have taken, does not send them).
    pub(crate) fn still_claimed(&self, key: &str) -> bool {
        let outbox = self.outbox.lock().expect("never held across a panic");
        outbox
            .by_key
            .get(key)
            .is_some_and(|(_, at)| at.elapsed() < self.ttl * 2 / 3)
    }

    /// The claims this runner holds, as keys and their tokens, for a renewal.
    fn outbox_claims(&self) -> (Vec<String>, Vec<i64>) {
        let outbox = self.outbox.lock().expect("never held across a panic");
        outbox
            .by_key
            .iter()
            .map(|(key, (token, _))| (key.clone(), *token))
            .unzip()
    }

    /// After a renewal sent at `at` for `asked`: the keys in `live` (still `sending` under
    /// this runner's token) are live as of `at`; the others — recorded, released, or taken
    /// over by another runner — are forgotten, so none of them is started here again.
    fn renewed(&self, asked: &[String], live: &[String], at: Instant) {
        let mut outbox = self.outbox.lock().expect("never held across a panic");
        let live: std::collections::HashSet<&str> = live.iter().map(String::as_str).collect();
        for key in asked {
            if live.contains(key.as_str()) {
                if let Some((_, when)) = outbox.by_key.get_mut(key) {
                    *when = at;
                }
            } else {
                outbox.by_key.remove(key);
            }
        }
    }
}

/// A runner id: the host, the process and 8 random hex digits (two processes with one pid,
/// in two containers, still differ).
pub(crate) fn runner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish() & 0xffff_ffff
    };
    format!("{host}/{}/{random:08x}", std::process::id())
}

/// Renews, every third of a lease, the outbox claims whose messages still wait, until the
/// store is dropped. A failed renewal is tried again at the next turn; the claims it could
/// not renew age, and past two thirds of a lease the dispatcher stops starting them.
pub(crate) async fn renew_outbox(leases: Weak<Leases>) {
    let every = match leases.upgrade() {
        Some(l) => l.ttl / 3,
        None => return,
    };
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(50)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let (keys, tokens) = leases.outbox_claims();
        if keys.is_empty() {
            continue;
        }
        let sent = Instant::now();
        // Rows locked in (customer, key) order, as the recorder locks them: no deadlock.
        let renewed: Result<Vec<String>, _> = sqlx::query_scalar(
            "WITH mine AS (
                SELECT m.customer_id, m.key FROM messages m
                JOIN unnest($1::text[], $2::bigint[]) AS u(key, token)
                  ON m.key = u.key AND m.lease_token = u.token
                WHERE m.status = 'sending' AND m.claimed_by = $4
                ORDER BY m.customer_id, m.key FOR UPDATE OF m)
             UPDATE messages SET lease_expires_at = trellis_now_ms() + $3
             FROM mine WHERE messages.customer_id = mine.customer_id AND messages.key = mine.key
             RETURNING messages.key",
        )
        .bind(&keys)
        .bind(&tokens)
        .bind(leases.ttl_ms())
        .bind(&leases.runner)
        .fetch_all(&leases.pool)
        .await;
        match renewed {
            Ok(live) => leases.renewed(&keys, &live, sent),
            Err(err) => tracing::warn!(error = %err, "Renewing outbox leases failed; retrying."),
        }
    }
}

/// Takes (or keeps) the leader lease `name` for `leases.runner`: true when this runner is
/// the leader until the lease's end (its holder renews it by taking it again).
pub(crate) async fn lead(
    pool: &sqlx::PgPool,
    leases: &Leases,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO leader_leases (name, runner_id, token, expires_at)
         VALUES ($1, $2, nextval('lease_tokens'), trellis_now_ms() + $3)
         ON CONFLICT (name) DO UPDATE
            SET runner_id = excluded.runner_id, expires_at = excluded.expires_at,
                token = CASE WHEN leader_leases.runner_id = excluded.runner_id
                             THEN leader_leases.token ELSE excluded.token END
          WHERE leader_leases.runner_id = excluded.runner_id
             OR leader_leases.expires_at < trellis_now_ms()
         RETURNING 1",
    )
    .bind(name)
    .bind(&leases.runner)
    .bind(leases.ttl_ms())
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renewal_that_no_longer_finds_a_key_ours_stops_it_being_started() {
        // A lazy pool opens no connection: the bookkeeping alone is under test.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let leases = Leases::new("r1".into(), Duration::from_secs(30), pool);
        let now = Instant::now();
        leases.hold_messages(["k1".to_owned(), "k2".to_owned()].into_iter(), 5, now);
        assert!(leases.still_claimed("k1") && leases.still_claimed("k2"));
        // Another runner took k2 over (its row carries the other's token now): the renewal
        // of claim 5 returns k1 only. k2 must not be started here, though claim 5 lives on.
        let (asked, _) = leases.outbox_claims();
        leases.renewed(&asked, &["k1".to_owned()], now);
        assert!(leases.still_claimed("k1"));
        assert!(
            !leases.still_claimed("k2"),
            "a key taken over is not ours to send"
        );
        assert_eq!(leases.message_tokens(&["k1", "k2"]), [Some(5), None]);
    }

    #[tokio::test]
    async fn a_claim_not_renewed_for_two_thirds_of_a_lease_is_not_started() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let leases = Leases::new("r1".into(), Duration::from_millis(300), pool);
        leases.hold_messages(std::iter::once("k".to_owned()), 7, Instant::now());
        assert!(leases.still_claimed("k"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!leases.still_claimed("k"));
        assert!(!leases.still_claimed("unknown"));
    }
}
