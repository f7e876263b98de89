//! What the API and the pages read on PostgreSQL: profiles, histories, enrollments,
//! messages and conversions of one customer, counts, and when the next work is due, as
//! `store::sqlite::read_models` reads them.

use super::*;
use crate::store::{ConversionView, EnrollmentView, MessageView};

impl PgStore {
    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        let row = sqlx::query("SELECT profile::text FROM customers WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query("reading a customer"))?;
        row.map(|r| customer_from(r.get::<&str, _>(0))).transpose()
    }

    /// The customer's most recent events, newest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn recent_events(&self, id: &CustomerId, limit: u32) -> Result<Vec<Event>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, at, properties::text FROM events WHERE customer_id = $1 AND name NOT LIKE '$%' ORDER BY at DESC, seq DESC LIMIT $2",
        )
        .bind(id.as_str())
        .bind(super::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading recent events"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// The customer's enrollments, newest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn enrollments_of(&self, id: &CustomerId) -> Result<Vec<EnrollmentView>, Error> {
        let rows = sqlx::query(
            "SELECT state::text FROM enrollments WHERE customer_id = $1 ORDER BY entered_at DESC, id",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading enrollments"))?;
        rows.iter()
            .map(|r| EnrollmentView::from_state(r.get::<&str, _>(0)))
            .collect()
    }

    /// The customer's messages, newest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn messages_of(&self, id: &CustomerId) -> Result<Vec<MessageView>, Error> {
        let rows: Vec<crate::store::MessageRow> = sqlx::query_as(
            "SELECT key, workflow_id, node, channel, template, status, attempts::bigint, last_error, provider_id, created_at, sent_at, delivery_status
             FROM messages WHERE customer_id = $1 ORDER BY created_at DESC, key",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading messages"))?;
        Ok(rows.into_iter().map(MessageView::from).collect())
    }

    /// The customer's conversions, newest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn conversions_of(&self, id: &CustomerId) -> Result<Vec<ConversionView>, Error> {
        let rows: Vec<crate::store::ConversionRow> = sqlx::query_as("SELECT workflow_id, event, value, arm, message_key, at FROM conversions WHERE customer_id = $1 ORDER BY at DESC")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(query("reading conversions"))?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Active enrollments per workflow.
    ///
    /// # Errors
    /// On a database error.
    pub async fn active_counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows = sqlx::query(
            "SELECT workflow_id, COUNT(*) FROM enrollments WHERE active GROUP BY workflow_id ORDER BY workflow_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("counting enrollments"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The earliest wake-up among active enrollments of workflows not paused.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_wake(&self) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MIN(e.wake_at) FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active AND e.wake_at IS NOT NULL AND NOT w.paused",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query("finding the next wake-up"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    /// The earliest pending message attempt, for the dispatcher's sleep.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_attempt(&self) -> Result<Option<Timestamp>, Error> {
        // Another runner's claim, once it expires, is due as well: it is taken over then.
        let row = sqlx::query(
            "SELECT LEAST(
               (SELECT MIN(m.next_attempt_at) FROM messages m JOIN workflows w ON w.id = m.workflow_id
                WHERE m.status = 'pending' AND NOT w.paused),
               (SELECT MIN(COALESCE(m.lease_expires_at, 0)) FROM messages m JOIN workflows w ON w.id = m.workflow_id
                WHERE m.status = 'sending' AND m.claimed_by IS DISTINCT FROM $1 AND NOT w.paused))",
        )
        .bind(&self.leases.runner)
        .fetch_one(&self.pool)
        .await
        .map_err(query("finding the next attempt"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    /// The earliest pending attempt of one channel's messages (`messages.channel`), or the
    /// earliest end of another runner's claim on one, for the continuous dispatcher's sleep
    /// while that channel has room.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_attempt_of(&self, channel: &str) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            // In `messages_due_by_channel` order, stopping at the first row of a running
            // workflow (a MIN over the join would read every pending message).
            // Another runner's claim, once it expires, is due as well (`messages_leased`).
            "SELECT LEAST(
               (SELECT m.next_attempt_at FROM messages m JOIN workflows w ON w.id = m.workflow_id
                WHERE m.status = 'pending' AND m.channel = $1 AND m.next_attempt_at IS NOT NULL
                  AND NOT w.paused
                ORDER BY m.next_attempt_at LIMIT 1),
               (SELECT COALESCE(m.lease_expires_at, 0) FROM messages m JOIN workflows w ON w.id = m.workflow_id
                WHERE m.status = 'sending' AND m.channel = $1 AND m.claimed_by IS DISTINCT FROM $2 AND NOT w.paused
                ORDER BY m.lease_expires_at NULLS FIRST LIMIT 1))",
        )
        .bind(channel)
        .bind(&self.leases.runner)
        .fetch_optional(&self.pool)
        .await
        .map_err(query("finding a channel's next attempt"))?;
        Ok(row
            .and_then(|r| r.get::<Option<i64>, _>(0))
            .map(from_millis))
    }

    /// Every stored workflow version: `(workflow id, version, YAML text, path)`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn workflow_versions(&self) -> Result<Vec<(String, String, String, String)>, Error> {
        let rows = sqlx::query("SELECT workflow_id, version, source, path FROM workflow_versions")
            .fetch_all(&self.pool)
            .await
            .map_err(query("reading workflow versions"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The members of a segment, for tests and reports.
    ///
    /// # Errors
    /// On a database error.
    pub async fn segment_members(&self, segment: &str) -> Result<Vec<String>, Error> {
        let rows = sqlx::query(
            "SELECT customer_id FROM segment_members WHERE segment = $1 ORDER BY customer_id",
        )
        .bind(segment)
        .fetch_all(&self.pool)
        .await
        .map_err(query("reading segment members"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Counts messages by status, for tests and reports.
    ///
    /// # Errors
    /// On a database error.
    pub async fn message_counts(&self) -> Result<Vec<(String, String, i64)>, Error> {
        let rows = sqlx::query("SELECT channel, status, COUNT(*) FROM messages GROUP BY channel, status ORDER BY channel, status")
            .fetch_all(&self.pool)
            .await
            .map_err(query("counting messages"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}
