//! The outbox on PostgreSQL: claiming due messages, recording attempts' outcomes, releasing
//! claims, and provider delivery reports, with the same statements' meaning as
//! `store::sqlite::outbox`.
//!
//! Candidates are read `FOR UPDATE SKIP LOCKED`, so two dispatchers on one database never
//! claim the same message, and a claim is a lease (`leases`): a message `sending` whose
//! lease expired is claimable again, and an outcome is recorded only while the claim's token
//! is still in the row, so a runner that lost a message to another records nothing over it.

use std::collections::HashMap;

use tokio::time::Instant;

use super::*;
use crate::store::{AttemptOutcome, OutboxMessage, millis};

impl PgStore {
    /// Messages whose claim expired (their runner stopped or died) go back to pending at
    /// once, to be sent again with the same key. Live claims are other runners' and stay;
    /// expired ones would be claimed again anyway, so this only hastens it at startup.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_in_flight(&self) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE messages SET status = 'pending', claimed_by = NULL, lease_token = NULL
             WHERE status = 'sending' AND lease_expires_at < trellis_now_ms()",
        )
        .execute(&self.pool)
        .await
        .map_err(query("releasing in-flight messages"))?;
        Ok(done.rows_affected())
    }

    /// Puts claimed messages that were never attempted back to `pending`. Returns how many.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_claims(&self, keys: &[String]) -> Result<u64, Error> {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let tokens = self.leases.take_messages(&refs);
        let (keys, tokens): (Vec<&str>, Vec<i64>) = refs
            .iter()
            .zip(tokens)
            .filter_map(|(k, t)| Some((*k, t?)))
            .unzip();
        let done = sqlx::query(
            "UPDATE messages SET status = 'pending', claimed_by = NULL, lease_token = NULL
             FROM unnest($1::text[], $2::bigint[]) AS u(key, token)
             WHERE messages.key = u.key AND messages.lease_token = u.token
               AND messages.status = 'sending'",
        )
        .bind(&keys)
        .bind(&tokens)
        .execute(&self.pool)
        .await
        .map_err(query("releasing claimed messages"))?;
        Ok(done.rows_affected())
    }

    /// Claims up to `limit` messages due at `now` whose workflow is not paused, marking them
    /// `sending`, oldest due first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages(
        &self,
        now: Timestamp,
        n: u32,
    ) -> Result<Vec<OutboxMessage>, Error> {
        let began = Instant::now();
        let mut tx = self.begin().await?;
        let candidates = claimable(&mut tx, now, n, None).await?;
        if candidates.is_empty() {
            tx.end_unwritten().await?;
            return Ok(Vec::new());
        }
        let (claimed, token) = claim_candidates(&mut tx, now, &candidates).await?;
        tx.commit().await?;
        hold(self, &claimed, token, began);
        Ok(claimed)
    }

    /// Claims, in one transaction, up to each `(channel, limit)` pair's limit of that
    /// channel's oldest due messages, with the checks of [`PgStore::claim_messages`]; each
    /// pair's claimed messages, in the pairs' order.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages_per_channel(
        &self,
        now: Timestamp,
        limits: &[(&str, u32)],
    ) -> Result<Vec<Vec<OutboxMessage>>, Error> {
        let began = Instant::now();
        let mut tx = self.begin().await?;
        let mut group_of = HashMap::new();
        let mut candidates = Vec::new();
        for (group, &(channel, n)) in limits.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let keys = claimable(&mut tx, now, n, Some(channel)).await?;
            group_of.extend(keys.iter().map(|k| (k.clone(), group)));
            candidates.extend(keys);
        }
        let mut groups: Vec<Vec<OutboxMessage>> = limits.iter().map(|_| Vec::new()).collect();
        if candidates.is_empty() {
            tx.end_unwritten().await?;
            return Ok(groups);
        }
        let (claimed, token) = claim_candidates(&mut tx, now, &candidates).await?;
        tx.commit().await?;
        hold(self, &claimed, token, began);
        for message in claimed {
            groups[group_of[&message.key]].push(message);
        }
        Ok(groups)
    }

    /// Records the outcomes of a batch of attempts in a transaction of its own.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_attempts(
        &self,
        outcomes: &[(String, u32, AttemptOutcome)],
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        tx.record_attempts(outcomes, now).await?;
        tx.commit().await
    }
}

/// Up to `n` messages to claim, of one `channel` or all, locked for this transaction (other
/// claimers skip them): first those whose claim expired (their runner stopped or died),
/// then those due, oldest first.
async fn claimable(
    tx: &mut PgTx,
    now: Timestamp,
    n: u32,
    channel: Option<&str>,
) -> Result<Vec<String>, Error> {
    let mut keys: Vec<String> = sqlx::query_scalar(
        // Never this runner's own: a claim of its own that lapsed (a slow renewal, an
        // outage) is still in its pipeline, and its renewal revives it; claiming it again
        // would start it twice here.
        "SELECT m.key FROM messages m JOIN workflows w ON w.id = m.workflow_id
         WHERE m.status = 'sending'
           AND (m.lease_expires_at < trellis_now_ms() OR m.lease_expires_at IS NULL)
           AND m.claimed_by IS DISTINCT FROM $4
           AND ($3::text IS NULL OR m.channel = $3) AND NOT w.paused
         ORDER BY m.lease_expires_at NULLS FIRST LIMIT $2
         FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(millis(now))
    .bind(limit(n))
    .bind(channel)
    .bind(&tx.leases.runner)
    .fetch_all(&mut *tx.tx)
    .await
    .map_err(query("choosing expired claims to take over"))?;
    let room = n.saturating_sub(u32::try_from(keys.len()).unwrap_or(u32::MAX));
    if room > 0 {
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT m.key FROM messages m JOIN workflows w ON w.id = m.workflow_id
             WHERE m.status = 'pending' AND m.next_attempt_at <= $1
               AND ($3::text IS NULL OR m.channel = $3) AND NOT w.paused
             ORDER BY m.next_attempt_at LIMIT $2
             FOR UPDATE OF m SKIP LOCKED",
        )
        .bind(millis(now))
        .bind(limit(room))
        .bind(channel)
        .fetch_all(&mut *tx.tx)
        .await
        .map_err(query("choosing messages to claim"))?;
        keys.extend(due);
    }
    Ok(keys)
}

/// Checks consent and suppressions once more for `candidates` (not empty, locked by this
/// transaction), cancelling or suppressing those that must not leave, then claims the rest
/// under one new lease token and returns them in the candidates' order.
async fn claim_candidates(
    tx: &mut PgTx,
    now: Timestamp,
    candidates: &[String],
) -> Result<(Vec<OutboxMessage>, Option<i64>), Error> {
    let now_ms = millis(now);
    // A marketing message queued before the customer opted out (by any route) never leaves;
    // nor does anything to an address suppressed since it was queued.
    sqlx::query(
        "UPDATE messages SET status = 'cancelled', last_error = 'consent withdrawn before sending', updated_at = $1
         WHERE key = ANY($2) AND category = 'marketing' AND channel IN ('email', 'sms')
           AND EXISTS (SELECT 1 FROM customers c WHERE c.id = messages.customer_id
                       AND (c.profile -> 'consent' -> messages.channel) IS DISTINCT FROM 'true'::jsonb)",
    )
    .bind(now_ms)
    .bind(candidates)
    .execute(&mut *tx.tx)
    .await
    .map_err(query("cancelling messages without consent"))?;
    sqlx::query(
        "UPDATE messages SET status = 'suppressed', last_error = 'address suppressed before sending', updated_at = $1
         WHERE key = ANY($2) AND status IN ('pending', 'sending') AND channel IN ('email', 'sms')
           AND EXISTS (SELECT 1 FROM customers c JOIN suppressions s ON s.channel = messages.channel
                       AND s.address = lower(c.profile ->> CASE messages.channel WHEN 'email' THEN 'email' ELSE 'phone' END)
                       WHERE c.id = messages.customer_id)",
    )
    .bind(now_ms)
    .bind(candidates)
    .execute(&mut *tx.tx)
    .await
    .map_err(query("suppressing messages to suppressed addresses"))?;
    let rows = sqlx::query(
        "WITH t AS (SELECT nextval('lease_tokens') AS token)
         UPDATE messages SET status = 'sending', updated_at = $1, claimed_by = $3,
                lease_token = t.token, lease_expires_at = trellis_now_ms() + $4
         FROM t WHERE key = ANY($2) AND status IN ('pending', 'sending')
         RETURNING key, workflow_id, customer_id, attempts, created_at, payload::text, t.token",
    )
    .bind(now_ms)
    .bind(candidates)
    .bind(&tx.leases.runner)
    .bind(tx.leases.ttl_ms())
    .fetch_all(&mut *tx.tx)
    .await
    .map_err(query("claiming messages"))?;
    let token = rows.first().map(|r| r.get::<i64, _>(6));
    let mut claimed = rows
        .iter()
        .map(|r| {
            Ok(OutboxMessage {
                key: r.get(0),
                workflow_id: r.get(1),
                customer_id: r.get(2),
                attempts: r.get::<i32, _>(3).try_into().unwrap_or(0),
                created_at: from_millis(r.get(4)),
                payload: serde_json::from_str(r.get::<&str, _>(5))
                    .map_err(decode("a message payload"))?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    // RETURNING gives no order; the dispatcher takes the oldest due first.
    let place: HashMap<&str, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    claimed.sort_by_key(|m| place.get(m.key.as_str()).copied());
    Ok((claimed, token))
}

/// Remembers `claimed` as held under `token`, once their claim has committed (a renewal
/// that ran before the commit would not see the rows and would drop them), as live from
/// `began`, when the claim's transaction began.
fn hold(store: &PgStore, claimed: &[OutboxMessage], token: Option<i64>, began: Instant) {
    if let Some(token) = token {
        let keys = claimed.iter().map(|m| m.key.clone());
        store.leases.hold_messages(keys, token, began);
    }
}

impl PgTx {
    /// Records the outcomes of a batch of attempts, each as an `attempts` row plus the
    /// message's new status, in five multi-row statements whatever the batch's size.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_attempts(
        &mut self,
        outcomes: &[(String, u32, AttemptOutcome)],
        now: Timestamp,
    ) -> Result<(), Error> {
        if crate::crash_point::fail_point("record_outcomes") {
            return Err(Error::Busy("recording outcomes (a test's fail point)"));
        }
        let outcomes = self.still_ours(outcomes).await?;
        let mut attempts = Vec::with_capacity(outcomes.len());
        let mut sent = Vec::new();
        let mut retried = Vec::new();
        let mut failed = Vec::new();
        let mut refused = Vec::new();
        // PostgreSQL refuses one key twice in an upsert; as SQLite's INSERT OR REPLACE, the
        // last outcome of an attempt wins.
        let mut attempt_row = HashMap::new();
        for (key, attempt, outcome) in outcomes.iter().copied() {
            let (label, detail) = match outcome {
                AttemptOutcome::Sent { provider_id } => ("sent", provider_id.clone()),
                AttemptOutcome::Retry { reason, .. } => ("retry", Some(reason.clone())),
                AttemptOutcome::Failed { reason } | AttemptOutcome::Refused { reason } => {
                    ("failed", Some(reason.clone()))
                }
            };
            let row = serde_json::json!({"key": key, "attempt": attempt, "outcome": label, "detail": detail});
            match attempt_row.entry((key.as_str(), *attempt)) {
                std::collections::hash_map::Entry::Occupied(place) => attempts[*place.get()] = row,
                std::collections::hash_map::Entry::Vacant(place) => {
                    place.insert(attempts.len());
                    attempts.push(row);
                }
            }
            match outcome {
                AttemptOutcome::Sent { provider_id } => sent.push(
                    serde_json::json!({"key": key, "attempt": attempt, "provider_id": provider_id}),
                ),
                AttemptOutcome::Retry {
                    next_attempt_at,
                    reason,
                } => retried.push(serde_json::json!({
                    "key": key, "attempt": attempt, "next": millis(*next_attempt_at), "reason": reason
                })),
                AttemptOutcome::Failed { reason } => failed
                    .push(serde_json::json!({"key": key, "attempt": attempt, "reason": reason})),
                AttemptOutcome::Refused { reason } => {
                    failed.push(
                        serde_json::json!({"key": key, "attempt": attempt, "reason": reason}),
                    );
                    refused.push(serde_json::json!({
                        "key": key, "reason": format!("refused by the provider: {reason}")
                    }));
                }
            }
        }
        for (rows, sql, what) in [
            (
                &attempts,
                "INSERT INTO attempts (customer_id, message_key, attempt, at, outcome, detail)
                 SELECT m.customer_id, r.key, r.attempt, $2, r.outcome, r.detail
                 FROM jsonb_to_recordset($1::jsonb) AS r(key text, attempt integer, outcome text, detail text)
                 JOIN messages m ON m.key = r.key
                 ORDER BY m.customer_id, r.key
                 ON CONFLICT (customer_id, message_key, attempt) DO UPDATE
                   SET at = excluded.at, outcome = excluded.outcome, detail = excluded.detail",
                "recording attempts",
            ),
            (
                &sent,
                "UPDATE messages SET status = 'sent', attempts = u.attempt, provider_id = u.provider_id,
                   sent_at = $2, updated_at = $2, last_error = NULL
                 FROM jsonb_to_recordset($1::jsonb) AS u(key text, attempt integer, provider_id text)
                 WHERE messages.key = u.key",
                "recording sent messages",
            ),
            (
                &retried,
                "UPDATE messages SET status = 'pending', attempts = u.attempt, next_attempt_at = u.next,
                   last_error = u.reason, updated_at = $2
                 FROM jsonb_to_recordset($1::jsonb) AS u(key text, attempt integer, next bigint, reason text)
                 WHERE messages.key = u.key AND messages.status = 'sending'",
                "recording retries",
            ),
            (
                &failed,
                "UPDATE messages SET status = 'failed', attempts = u.attempt, last_error = u.reason,
                   updated_at = $2
                 FROM jsonb_to_recordset($1::jsonb) AS u(key text, attempt integer, reason text)
                 WHERE messages.key = u.key",
                "recording failed messages",
            ),
            // The address is refused for good: nothing, not even a transactional message, goes
            // to it again (claims check suppressions).
            (
                &refused,
                "INSERT INTO suppressions (channel, address, reason, at)
                 SELECT m.channel, lower(m.payload ->> 'to'), r.reason, $2
                 FROM jsonb_to_recordset($1::jsonb) AS r(key text, reason text)
                 JOIN messages m ON m.key = r.key
                 WHERE m.payload ->> 'to' IS NOT NULL
                 ON CONFLICT DO NOTHING",
                "suppressing refused addresses",
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            sqlx::query(sql)
                .bind(serde_json::to_string(rows).expect("JSON values always serialize"))
                .bind(millis(now))
                .execute(&mut *self.tx)
                .await
                .map_err(query(what))?;
        }
        Ok(())
    }

    /// The outcomes whose messages this runner still holds: claimed with the token it keeps
    /// for them, and `sending` (locked until commit, so no claimer takes them meanwhile).
    /// The others were taken over by another runner after this one's lease ran out; what
    /// this one did with them is not recorded over the new owner's work.
    async fn still_ours<'a>(
        &mut self,
        outcomes: &'a [(String, u32, AttemptOutcome)],
    ) -> Result<Vec<&'a (String, u32, AttemptOutcome)>, Error> {
        let keys: Vec<&str> = outcomes.iter().map(|(k, ..)| k.as_str()).collect();
        // Peeked, not taken: if this transaction fails, the dispatcher records again.
        let tokens = self.leases.message_tokens(&keys);
        let (held, held_tokens): (Vec<&str>, Vec<i64>) = keys
            .iter()
            .zip(&tokens)
            .filter_map(|(k, t)| Some((*k, (*t)?)))
            .unzip();
        let ours: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT m.key FROM messages m JOIN unnest($1::text[], $2::bigint[]) AS u(key, token)
               ON m.key = u.key AND m.lease_token = u.token
             WHERE m.status = 'sending' ORDER BY m.customer_id, m.key FOR UPDATE OF m",
        )
        .bind(&held)
        .bind(&held_tokens)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("checking outbox leases"))?
        .into_iter()
        .collect();
        let lost = outcomes.len() - ours.len();
        if lost > 0 {
            tracing::warn!(
                outcomes = lost,
                "Outcomes of messages another runner took over are not recorded."
            );
        }
        Ok(outcomes.iter().filter(|(k, ..)| ours.contains(k)).collect())
    }

    /// Records a provider's delivery report; a failure report also sets the last error. An
    /// interim report (`final_report` false) never replaces a final one. False when no
    /// message has that key.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_delivery_report(
        &mut self,
        key: &str,
        status: &str,
        report: crate::channels::sms_kannel::Report,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let known = sqlx::query("SELECT 1 FROM messages WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("finding a message"))?
            .is_some();
        sqlx::query(
            "UPDATE messages SET delivery_status = $2, updated_at = $3,
               last_error = CASE WHEN $4 THEN 'delivery report: ' || $2 ELSE last_error END,
               delivery_is_final = delivery_is_final OR $5
             WHERE key = $1 AND ($5 OR delivery_status IS NULL OR NOT delivery_is_final)",
        )
        .bind(key)
        .bind(status)
        .bind(millis(now))
        .bind(report.failed)
        .bind(report.is_final)
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a delivery report"))?;
        Ok(known)
    }
}
