//! What the API and `trellis import` write, on PostgreSQL: profiles, events, suppressions,
//! opt-outs' cancellations and erasure, and the lookups by address that inbound replies and
//! bounces need, as `store::sqlite::ingest` does them.

use std::collections::BTreeSet;

use super::*;
use crate::store::{Inserted, millis};

impl PgTx {
    /// Creates or replaces a customer's profile (the version trigger counts a replacement).
    ///
    /// # Errors
    /// On a database error.
    pub async fn put_customer(&mut self, customer: &Customer, now: Timestamp) -> Result<(), Error> {
        let profile = serde_json::to_string(customer).expect("a customer always serializes");
        sqlx::query(
            "INSERT INTO customers (id, profile, created_at, updated_at) VALUES ($1, $2::jsonb, $3, $3)
             ON CONFLICT (id) DO UPDATE SET profile = excluded.profile, updated_at = excluded.updated_at",
        )
        .bind(customer.id.as_str())
        .bind(profile)
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("writing a customer"))?;
        Ok(())
    }

    /// Stores an event for a customer, creating a minimal profile for an unknown customer.
    /// An event whose id was seen before is not stored again (and, as on SQLite, uses up a
    /// sequence number: the identity is taken before `ON CONFLICT` decides).
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_event(
        &mut self,
        customer_id: &CustomerId,
        event: &Event,
        now: Timestamp,
    ) -> Result<Inserted, Error> {
        let inserted = self.insert_events(&[(customer_id, event)], now).await?;
        Ok(inserted.into_iter().next().unwrap_or(Inserted::Duplicate))
    }

    /// [`PgTx::insert_event`] for many events, in order, in three statements: minimal
    /// profiles for unknown customers, the ids already stored, the events. An event whose id
    /// was stored before, or appears earlier in `events`, is a duplicate.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_events(
        &mut self,
        events: &[(&CustomerId, &Event)],
        now: Timestamp,
    ) -> Result<Vec<Inserted>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now_ms = millis(now);
        let customers: BTreeSet<&CustomerId> = events.iter().map(|(c, _)| *c).collect();
        let minimal: Vec<serde_json::Value> = customers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.as_str(),
                    "profile": Customer::minimal((*c).clone()),
                })
            })
            .collect();
        // In id order, so two ingests that share customers lock their rows in one order.
        sqlx::query(
            "INSERT INTO customers (id, profile, created_at, updated_at)
             SELECT r.id, r.profile, $2, $2 FROM jsonb_to_recordset($1::jsonb) AS r(id text, profile jsonb)
             ORDER BY r.id COLLATE \"C\"
             ON CONFLICT DO NOTHING",
        )
        .bind(serde_json::Value::from(minimal).to_string())
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(query("creating minimal customers"))?;
        // One customer's events commit in `seq` order: an identity is taken at insert, not at
        // commit, so two ingests for one customer take turns (ingests of different
        // customers never wait on each other, nor on the scheduler, which takes none).
        // The workers hear of the events at commit (LISTEN trellis_due).
        let ordered: Vec<&str> = customers.iter().map(|c| c.as_str()).collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended(c, 0)) FROM unnest($1::text[]) AS c ORDER BY c COLLATE \"C\"",
        )
        .bind(&ordered)
        .execute(&mut *self.tx)
        .await
        .map_err(query("taking the customers' ingest locks"))?;
        sqlx::query("SELECT pg_notify('trellis_due', 'events')")
            .execute(&mut *self.tx)
            .await
            .map_err(query("notifying the workers"))?;
        let ids: Vec<&str> = events
            .iter()
            .filter_map(|(_, e)| e.id.as_ref().map(EventId::as_str))
            .collect();
        let mut seen: BTreeSet<String> = if ids.is_empty() {
            BTreeSet::new()
        } else {
            sqlx::query_scalar("SELECT id FROM events WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(query("finding events stored before"))?
                .into_iter()
                .collect()
        };
        let results = events
            .iter()
            .map(|(_, e)| match &e.id {
                Some(id) if !seen.insert(id.as_str().to_owned()) => Inserted::Duplicate,
                _ => Inserted::Accepted,
            })
            .collect();
        let rows: Vec<serde_json::Value> = events
            .iter()
            .map(|(c, e)| {
                serde_json::json!({
                    "id": e.id.as_ref().map(EventId::as_str),
                    "customer_id": c.as_str(),
                    "name": e.name,
                    "at": millis(e.timestamp),
                    "properties": e.properties,
                })
            })
            .collect();
        sqlx::query(
            "INSERT INTO events (id, customer_id, name, at, properties, received_at)
             SELECT r.id, r.customer_id, r.name, r.at, r.properties, $2
             FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (id text, customer_id text, name text, at bigint, properties jsonb)) WITH ORDINALITY AS r
             ORDER BY r.ordinality
             ON CONFLICT DO NOTHING",
        )
        .bind(serde_json::Value::from(rows).to_string())
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(query("storing events"))?;
        Ok(results)
    }

    /// Suppresses an address for good (hard bounce, complaint); the address is kept in
    /// lower case, as on SQLite.
    ///
    /// # Errors
    /// On a database error.
    pub async fn suppress(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO suppressions (channel, address, reason, at) VALUES ($1, lower($2), $3, $4)
             ON CONFLICT (channel, address) DO UPDATE SET reason = excluded.reason, at = excluded.at",
        )
        .bind(channel.as_str())
        .bind(address)
        .bind(reason)
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("suppressing an address"))?;
        Ok(())
    }

    /// Customers whose profile has this phone number (E.164) or email address (in any
    /// case), through the expression indexes `customers_by_email`/`customers_by_phone`.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customers_by_address(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
    ) -> Result<Vec<Customer>, Error> {
        let sql = match channel {
            crate::model::Channel::Email => {
                "SELECT profile::text FROM customers WHERE lower(profile ->> 'email') = lower($1) ORDER BY id"
            }
            crate::model::Channel::Sms => {
                "SELECT profile::text FROM customers WHERE profile ->> 'phone' = $1 ORDER BY id"
            }
        };
        let rows = sqlx::query(sql)
            .bind(address)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("finding customers by address"))?;
        rows.iter()
            .map(|r| customer_from(r.get::<&str, _>(0)))
            .collect()
    }

    /// Why an address is suppressed, if it is.
    ///
    /// # Errors
    /// On a database error.
    pub async fn suppression(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
    ) -> Result<Option<String>, Error> {
        let row = sqlx::query(
            "SELECT reason FROM suppressions WHERE channel = $1 AND address = lower($2)",
        )
        .bind(channel.as_str())
        .bind(address)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(query("reading suppressions"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Cancels the customer's queued marketing messages on `channel` (after an opt-out).
    /// Transactional messages, which need no marketing consent, stay.
    ///
    /// # Errors
    /// On a database error.
    pub async fn cancel_pending(
        &mut self,
        id: &CustomerId,
        channel: crate::model::Channel,
        now: Timestamp,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE messages SET status = 'cancelled', last_error = 'the customer unsubscribed', updated_at = $3
             WHERE customer_id = $1 AND channel = $2 AND status = 'pending' AND category = 'marketing'",
        )
        .bind(id.as_str())
        .bind(channel.as_str())
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("cancelling queued messages"))?;
        Ok(done.rows_affected())
    }

    /// Erases a customer's personal data, as on SQLite: the profile (and its lease row)
    /// goes, events keep their name and time under an anonymous id, pending messages are
    /// cancelled, message bodies are cleared, active enrollments end. Counts survive. False
    /// when there was no such customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn erase_customer(&mut self, id: &CustomerId, now: Timestamp) -> Result<bool, Error> {
        let anonymous = format!(
            "erased-{}",
            crate::engine::hash::hex_digest(&[id.as_str()], 16)
        );
        let gone = sqlx::query("DELETE FROM customers WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query("erasing a customer"))?
            .rows_affected()
            > 0;
        // Each statement binds exactly the parameters it names: PostgreSQL refuses a
        // parameter whose type it cannot infer.
        let moves = [
            // Processed as well: nobody leases an erased customer, so an event left pending
            // would sit in front of every claim's window for ever.
            "UPDATE events SET customer_id = $2, properties = '{}', id = NULL, processed = true WHERE customer_id = $1",
            "UPDATE messages SET customer_id = $2, payload = '{\"channel\":\"none\"}' WHERE customer_id = $1",
            "UPDATE enrollments SET customer_id = $2, active = false, wake_at = NULL, node = NULL, state = '{}' WHERE customer_id = $1",
            "UPDATE conversions SET customer_id = $2 WHERE customer_id = $1",
            "UPDATE trigger_fires SET customer_id = $2 WHERE customer_id = $1",
        ];
        let removals = [
            "DELETE FROM segment_members WHERE customer_id = $1",
            "DELETE FROM scheduled_fires WHERE customer_id = $1",
            "DELETE FROM customer_leases WHERE customer_id = $1",
        ];
        sqlx::query(
            "UPDATE messages SET status = 'cancelled', updated_at = $2
             WHERE customer_id = $1 AND status IN ('pending', 'sending')",
        )
        .bind(id.as_str())
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("erasing a customer's data"))?;
        for sql in moves {
            sqlx::query(sql)
                .bind(id.as_str())
                .bind(&anonymous)
                .execute(&mut *self.tx)
                .await
                .map_err(query("erasing a customer's data"))?;
        }
        for sql in removals {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *self.tx)
                .await
                .map_err(query("erasing a customer's data"))?;
        }
        Ok(gone)
    }
}
