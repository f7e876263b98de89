//! The outbox: claiming due messages, recording each attempt's outcome (group-committed by
//! the dispatcher), releasing claims at startup, and provider delivery reports.

use super::*;

impl Store {
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
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records the outcomes of a batch of attempts, each as an `attempts` row plus the
    /// message's new status.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_attempts(
        &self,
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
        let mut tx = self.begin().await?;
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
                .execute(&mut *tx.tx)
                .await
                .map_err(query(what))?;
        }
        tx.commit().await
    }
}

impl Tx {
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
