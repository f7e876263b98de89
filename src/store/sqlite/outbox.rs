//! The outbox: claiming due messages, recording each attempt's outcome (group-committed by
//! the dispatcher), releasing claims at startup, and provider delivery reports.

use super::*;

impl SqliteStore {
    /// Messages that were on the wire when the process stopped go back to pending, so they
    /// are sent again with the same key. Called once at startup by the only runner.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_in_flight(&self) -> Result<u64, Error> {
        let done = sqlx::query("UPDATE messages SET status = 'pending' WHERE status = 'sending'")
            .execute(&self.pool)
            .await
            .map_err(query("releasing in-flight messages"))?;
        Ok(done.rows_affected())
    }

    /// Puts claimed messages that were never attempted back to `pending` (the dispatcher's
    /// queue when it stops). Returns how many.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_claims(&self, keys: &[String]) -> Result<u64, Error> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE messages SET status = 'pending'
             WHERE key IN (SELECT value FROM json_each(?1)) AND status = 'sending'",
        )
        .bind(serde_json::Value::from(keys.to_vec()).to_string())
        .execute(&mut *tx.tx)
        .await
        .map_err(query("releasing claimed messages"))?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Claims up to `limit` messages due at `now` whose workflow is not paused, marking them
    /// `sending`.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, Error> {
        let mut tx = self.begin().await?;
        // The candidates first, so that the checks below look at this batch only and a
        // claim costs the same with ten or a million messages waiting.
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT m.key FROM messages m JOIN workflows w ON w.id = m.workflow_id
             WHERE m.status = 'pending' AND m.next_attempt_at <= ?1 AND w.paused = 0
             ORDER BY m.next_attempt_at LIMIT ?2",
        )
        .bind(millis(now))
        .bind(limit)
        .fetch_all(&mut *tx.tx)
        .await
        .map_err(query("choosing messages to claim"))?;
        if candidates.is_empty() {
            tx.end_unwritten().await?;
            return Ok(Vec::new());
        }
        let claimed = claim_candidates(&mut tx, now, candidates).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Claims, in one transaction, up to `limit` due messages of each `(channel, limit)`
    /// pair's channel (`messages.channel`: `email`, `sms`, `webhook`), with the same checks
    /// as [`SqliteStore::claim_messages`]; returns each pair's claimed messages, in the pairs'
    /// order. Each channel's candidates are its own oldest due messages, so a backlog on one
    /// channel never takes another's place. A pair with limit 0 claims nothing.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages_per_channel(
        &self,
        now: Timestamp,
        limits: &[(&str, u32)],
    ) -> Result<Vec<Vec<OutboxMessage>>, Error> {
        let mut tx = self.begin().await?;
        let mut group_of = std::collections::HashMap::new();
        let mut candidates = Vec::new();
        for (group, &(channel, limit)) in limits.iter().enumerate() {
            if limit == 0 {
                continue;
            }
            let keys: Vec<String> = sqlx::query_scalar(CHANNEL_CANDIDATES)
                .bind(millis(now))
                .bind(limit)
                .bind(channel)
                .fetch_all(&mut *tx.tx)
                .await
                .map_err(query("choosing messages to claim"))?;
            group_of.extend(keys.iter().map(|k| (k.clone(), group)));
            candidates.extend(keys);
        }
        let mut groups: Vec<Vec<OutboxMessage>> = limits.iter().map(|_| Vec::new()).collect();
        if candidates.is_empty() {
            tx.end_unwritten().await?;
            return Ok(groups);
        }
        let claimed = claim_candidates(&mut tx, now, candidates).await?;
        tx.commit().await?;
        for message in claimed {
            groups[group_of[&message.key]].push(message);
        }
        Ok(groups)
    }

    /// Records the outcomes of a batch of attempts in a transaction of its own
    /// ([`SqliteTx::record_attempts`]).
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

impl SqliteTx {
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
        // Five multi-row statements whatever the group's size: the attempts, then each kind
        // of outcome's update, then the addresses refused.
        let mut attempts = Vec::with_capacity(outcomes.len());
        let mut sent = Vec::new();
        let mut retried = Vec::new();
        let mut failed = Vec::new();
        let mut refused = Vec::new();
        for (key, attempt, outcome) in outcomes {
            let (label, detail) = match outcome {
                AttemptOutcome::Sent { provider_id } => ("sent", provider_id.clone()),
                AttemptOutcome::Retry { reason, .. } => ("retry", Some(reason.clone())),
                AttemptOutcome::Failed { reason } | AttemptOutcome::Refused { reason } => {
                    ("failed", Some(reason.clone()))
                }
            };
            attempts.push(serde_json::json!([key, attempt, label, detail]));
            match outcome {
                AttemptOutcome::Sent { provider_id } => {
                    sent.push(serde_json::json!([key, attempt, provider_id]));
                }
                AttemptOutcome::Retry {
                    next_attempt_at,
                    reason,
                } => retried.push(serde_json::json!([
                    key,
                    attempt,
                    millis(*next_attempt_at),
                    reason
                ])),
                AttemptOutcome::Failed { reason } => {
                    failed.push(serde_json::json!([key, attempt, reason]));
                }
                AttemptOutcome::Refused { reason } => {
                    failed.push(serde_json::json!([key, attempt, reason]));
                    refused.push(serde_json::json!([
                        key,
                        format!("refused by the provider: {reason}")
                    ]));
                }
            }
        }
        let now_ms = millis(now);
        for (rows, sql, what) in [
            (
                &attempts,
                "INSERT OR REPLACE INTO attempts (message_key, attempt, at, outcome, detail)
                 SELECT value ->> '$[0]', value ->> '$[1]', ?2, value ->> '$[2]', value ->> '$[3]'
                 FROM json_each(?1)",
                "recording attempts",
            ),
            (
                &sent,
                "UPDATE messages SET status = 'sent', attempts = u.attempt, provider_id = u.provider_id,
                   sent_at = ?2, updated_at = ?2, last_error = NULL
                 FROM (SELECT value ->> '$[0]' AS key, value ->> '$[1]' AS attempt,
                              value ->> '$[2]' AS provider_id FROM json_each(?1)) AS u
                 WHERE messages.key = u.key",
                "recording sent messages",
            ),
            (
                &retried,
                "UPDATE messages SET status = 'pending', attempts = u.attempt, next_attempt_at = u.next,
                   last_error = u.reason, updated_at = ?2
                 FROM (SELECT value ->> '$[0]' AS key, value ->> '$[1]' AS attempt,
                              value ->> '$[2]' AS next, value ->> '$[3]' AS reason FROM json_each(?1)) AS u
                 WHERE messages.key = u.key AND messages.status = 'sending'",
                "recording retries",
            ),
            (
                &failed,
                "UPDATE messages SET status = 'failed', attempts = u.attempt, last_error = u.reason,
                   updated_at = ?2
                 FROM (SELECT value ->> '$[0]' AS key, value ->> '$[1]' AS attempt,
                              value ->> '$[2]' AS reason FROM json_each(?1)) AS u
                 WHERE messages.key = u.key",
                "recording failed messages",
            ),
            // The address is refused for good: nothing, not even a transactional message, goes
            // to it again (claims check suppressions).
            (
                &refused,
                "INSERT OR IGNORE INTO suppressions (channel, address, reason, at)
                 SELECT m.channel, lower(json_extract(m.payload, '$.to')), r.value ->> '$[1]', ?2
                 FROM json_each(?1) r JOIN messages m ON m.key = r.value ->> '$[0]'
                 WHERE json_extract(m.payload, '$.to') IS NOT NULL",
                "suppressing refused addresses",
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            sqlx::query(sql)
                .bind(serde_json::to_string(rows).expect("JSON values always serialize"))
                .bind(now_ms)
                .execute(&mut *self.tx)
                .await
                .map_err(query(what))?;
        }
        Ok(())
    }
}

/// One channel's oldest due messages whose workflow is not paused (`?1` now, `?2` the
/// limit, `?3` the channel), read through `messages_due_by_channel` without walking the
/// other channels' due messages.
const CHANNEL_CANDIDATES: &str =
    "SELECT m.key FROM messages m JOIN workflows w ON w.id = m.workflow_id
     WHERE m.status = 'pending' AND m.channel = ?3 AND m.next_attempt_at <= ?1 AND w.paused = 0
     ORDER BY m.next_attempt_at LIMIT ?2";

/// Checks consent and suppressions once more for `candidates` (not empty), cancelling or
/// suppressing those that must not leave, then marks the rest `sending` and returns them.
async fn claim_candidates(
    tx: &mut SqliteTx,
    now: Timestamp,
    candidates: Vec<String>,
) -> Result<Vec<OutboxMessage>, Error> {
    let keys = serde_json::Value::from(candidates).to_string();
    // Consent is checked once more at the last moment: a marketing message queued before
    // the customer opted out (by any route) never leaves; nor does anything to an address
    // suppressed since it was queued.
    sqlx::query(
        "UPDATE messages SET status = 'cancelled', last_error = 'consent withdrawn before sending', updated_at = ?1
         WHERE key IN (SELECT value FROM json_each(?2)) AND category = 'marketing' AND channel IN ('email', 'sms')
           AND EXISTS (SELECT 1 FROM customers c WHERE c.id = messages.customer_id
                       AND coalesce(json_extract(c.profile, '$.consent.' || messages.channel), 0) = 0)",
    )
    .bind(millis(now))
    .bind(&keys)
    .execute(&mut *tx.tx)
    .await
    .map_err(query("cancelling messages without consent"))?;
    sqlx::query(
        "UPDATE messages SET status = 'suppressed', last_error = 'address suppressed before sending', updated_at = ?1
         WHERE key IN (SELECT value FROM json_each(?2)) AND status = 'pending' AND channel IN ('email', 'sms')
           AND EXISTS (SELECT 1 FROM customers c JOIN suppressions s ON s.channel = messages.channel
                       AND s.address = lower(json_extract(c.profile, CASE messages.channel WHEN 'email' THEN '$.email' ELSE '$.phone' END))
                       WHERE c.id = messages.customer_id)",
    )
    .bind(millis(now))
    .bind(&keys)
    .execute(&mut *tx.tx)
    .await
    .map_err(query("suppressing messages to suppressed addresses"))?;
    let rows = sqlx::query(
        "UPDATE messages SET status = 'sending', updated_at = ?1
         WHERE key IN (SELECT value FROM json_each(?2)) AND status = 'pending'
         RETURNING key, workflow_id, customer_id, attempts, created_at, payload",
    )
    .bind(millis(now))
    .bind(&keys)
    .fetch_all(&mut *tx.tx)
    .await
    .map_err(query("claiming messages"))?;
    let claimed = rows
        .iter()
        .map(|r| {
            Ok(OutboxMessage {
                key: r.get(0),
                workflow_id: r.get(1),
                customer_id: r.get(2),
                attempts: r.get::<i64, _>(3).try_into().unwrap_or(0),
                created_at: from_millis(r.get(4)),
                payload: serde_json::from_str(r.get::<&str, _>(5))
                    .map_err(decode("a message payload"))?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(claimed)
}

impl SqliteTx {
    /// Records a provider's delivery report; a failure report also sets the last error.
    /// Reports can arrive out of order (a gateway sends each as its own request), so an
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
        let known = sqlx::query("SELECT 1 FROM messages WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("finding a message"))?
            .is_some();
        sqlx::query(
            "UPDATE messages SET delivery_status = ?2, updated_at = ?3,
               last_error = CASE WHEN ?4 THEN 'delivery report: ' || ?2 ELSE last_error END
             WHERE key = ?1 AND (?5 OR delivery_status IS NULL OR delivery_is_final = 0)",
        )
        .bind(key)
        .bind(status)
        .bind(millis(now))
        .bind(report.failed)
        .bind(report.is_final)
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a delivery report"))?;
        if report.is_final {
            sqlx::query("UPDATE messages SET delivery_is_final = 1 WHERE key = ?")
                .bind(key)
                .execute(&mut *self.tx)
                .await
                .map_err(query("recording a delivery report"))?;
        }
        Ok(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending message of `channel`, due at `due` ms, to customer `customer`.
    async fn queue(store: &SqliteStore, key: &str, channel: &str, customer: &str, due: i64) {
        let payload = match channel {
            "email" => {
                r#"{"channel":"email","to":"a@example.com","subject":"","html":"","text":"","unsubscribe":""}"#
            }
            "sms" => r#"{"channel":"sms","to":"+14155550101","body":""}"#,
            _ => {
                r#"{"channel":"webhook","method":"POST","url":"https://example.com/","headers":[]}"#
            }
        };
        sqlx::query(
            "INSERT INTO messages (key, workflow_id, node, customer_id, channel, category, status,
               payload, next_attempt_at, created_at, updated_at)
             VALUES (?1, 'wf', 'n', ?2, ?3, 'marketing', 'pending', ?4, ?5, 0, 0)",
        )
        .bind(key)
        .bind(customer)
        .bind(channel)
        .bind(payload)
        .bind(due)
        .execute(store.pool())
        .await
        .unwrap();
    }

    async fn status_of(store: &SqliteStore, key: &str) -> String {
        sqlx::query_scalar("SELECT status FROM messages WHERE key = ?")
            .bind(key)
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_channel_is_claimed_up_to_its_own_limit_with_the_same_last_moment_checks() {
        let (store, _dir) = crate::store::testing::temp_sqlite().await;
        for sql in [
            "INSERT INTO workflows (id, current_version) VALUES ('wf', 'v1')",
            r#"INSERT INTO customers (id, profile, created_at, updated_at) VALUES
               ('ok', '{"consent":{"email":true,"sms":true}}', 0, 0),
               ('out', '{"consent":{"email":false}}', 0, 0)"#,
        ] {
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
        // The oldest email's customer opted out; a backlog of emails is older than the SMS.
        queue(&store, "e0", "email", "out", 1).await;
        for i in 1..=5 {
            queue(&store, &format!("e{i}"), "email", "ok", 1 + i).await;
        }
        queue(&store, "s1", "sms", "ok", 10).await;
        queue(&store, "w1", "webhook", "ok", 3).await;
        queue(&store, "later", "sms", "ok", 99_000).await;

        let claimed = store
            .claim_messages_per_channel(
                from_millis(20),
                &[("email", 3), ("sms", 4), ("webhook", 0)],
            )
            .await
            .unwrap();
        let keys: Vec<Vec<&str>> = claimed
            .iter()
            .map(|group| group.iter().map(|m| m.key.as_str()).collect())
            .collect();
        // e0 was a candidate and is cancelled, not claimed; the SMS is not kept behind the
        // emails; the webhook lane had no room; nothing not yet due is taken.
        assert_eq!(keys, [vec!["e1", "e2"], vec!["s1"], vec![]]);
        assert_eq!(status_of(&store, "e0").await, "cancelled");
        for (key, status) in [("e1", "sending"), ("e3", "pending"), ("w1", "pending")] {
            assert_eq!(status_of(&store, key).await, status, "{key}");
        }
        assert_eq!(
            store.next_attempt_of("sms").await.unwrap(),
            Some(from_millis(99_000))
        );
    }

    #[tokio::test]
    async fn a_channels_candidates_are_read_through_its_own_index_without_a_sort() {
        // Through `messages_due` alone, a claim of the next SMS walked every due email first.
        let (store, _dir) = crate::store::testing::temp_sqlite().await;
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {CHANNEL_CANDIDATES}"))
            .bind(0_i64)
            .bind(16_i64)
            .bind("sms")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
        let plan = plan.join("\n");
        assert!(plan.contains("messages_due_by_channel"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
