//! Several runners on one database (docs/design-postgres.md §5): what this runner holds, and
//! the statements that take, check, renew and give back leases.
//!
//! - **Customers.** The scheduler's due work (events, wake-ups, occurrences) is taken by
//!   leasing its customers: `customer_leases` rows claimed `FOR UPDATE SKIP LOCKED`, one
//!   token per claim, expiring `lease_ttl` later by the database's clock. A journey write is
//!   fenced by the token: it goes through only while the token in the row is still the one
//!   this runner holds (or, for a customer it holds nothing for, such as a sweep's, while
//!   nobody's lease is live). A runner's holdings are given back at its next claim, after
//!   the round that used them. A runner that dies loses them when they expire; one that was
//!   stopped and resumes finds its token replaced and writes nothing.
//! - **Outbox.** A claimed message is `sending` under `claimed_by`/`lease_token`/
//!   `lease_expires_at`; an expired one is claimable again. Outcomes are recorded only for
//!   rows whose token is still this runner's. A task renews the tokens of messages waiting
//!   for a permit; the dispatcher does not start a delivery whose lease may have lapsed
//!   ([`Leases::still_claimed`]), so a runner stopped past its lease sends at most what
//!   was already on the wire again.
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
    /// Message key → its claim's token, until its outcome is recorded or it is released.
    by_key: HashMap<String, i64>,
    /// Token → when its lease was last known to be live (claimed or renewed), by this
    /// process's monotonic clock: only ever compared with itself.
    renewed: HashMap<i64, Instant>,
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

    /// Forgets every customer held and returns the tokens, to be given back.
    pub(crate) fn take_customers(&self) -> Vec<i64> {
        let mut held = self.customers.lock().expect("never held across a panic");
        let mut tokens: Vec<i64> = held.drain().map(|(_, t)| t).collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
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

    /// Records messages claimed with `token`, live from `at`.
    pub(crate) fn hold_messages(
        &self,
        keys: impl Iterator<Item = String>,
        token: i64,
        at: Instant,
    ) {
        let mut outbox = self.outbox.lock().expect("never held across a panic");
        outbox.by_key.extend(keys.map(|k| (k, token)));
        outbox.renewed.insert(token, at);
    }

    /// The tokens of `keys`' claims (`None` for a key this runner does not hold), and
    /// forgets them: they are being released.
    pub(crate) fn take_messages(&self, keys: &[&str]) -> Vec<Option<i64>> {
        let mut outbox = self.outbox.lock().expect("never held across a panic");
        keys.iter().map(|k| outbox.by_key.remove(*k)).collect()
    }

    /// The tokens of `keys`' claims (`None` for a key this runner does not hold), kept:
    /// a renewal that finds none of a token's messages `sending` any more forgets it.
    pub(crate) fn message_tokens(&self, keys: &[&str]) -> Vec<Option<i64>> {
        let outbox = self.outbox.lock().expect("never held across a panic");
        keys.iter()
            .map(|k| outbox.by_key.get(*k).copied())
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
            .and_then(|token| outbox.renewed.get(token))
            .is_some_and(|at| at.elapsed() < self.ttl * 2 / 3)
    }

    /// The tokens this runner holds messages under.
    fn outbox_tokens(&self) -> Vec<i64> {
        let outbox = self.outbox.lock().expect("never held across a panic");
        outbox.renewed.keys().copied().collect()
    }

    /// After a renewal sent at `at` for `asked`: the tokens in `live` (that still had a
    /// message `sending`) are live as of `at`; the others, whose messages were all
    /// recorded, released or taken over, are forgotten with their keys.
    fn renewed(&self, asked: &[i64], live: &[i64], at: Instant) {
        let mut outbox = self.outbox.lock().expect("never held across a panic");
        let live: std::collections::HashSet<i64> = live.iter().copied().collect();
        for token in asked {
            if live.contains(token) {
                if let Some(when) = outbox.renewed.get_mut(token) {
                    *when = at;
                }
            } else {
                outbox.renewed.remove(token);
            }
        }
        let Outbox { by_key, renewed } = &mut *outbox;
        by_key.retain(|_, token| renewed.contains_key(token));
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
        let tokens = leases.outbox_tokens();
        if tokens.is_empty() {
            continue;
        }
        let sent = Instant::now();
        let renewed: Result<Vec<i64>, _> = sqlx::query_scalar(
            "WITH r AS (
                UPDATE messages SET lease_expires_at = trellis_now_ms() + $2
                WHERE lease_token = ANY($1) AND status = 'sending' AND claimed_by = $3
                RETURNING lease_token)
             SELECT DISTINCT lease_token FROM r",
        )
        .bind(&tokens)
        .bind(leases.ttl_ms())
        .bind(&leases.runner)
        .fetch_all(&leases.pool)
        .await;
        match renewed {
            Ok(live) => leases.renewed(&tokens, &live, sent),
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
