//! What the API and `trellis import` write, on PostgreSQL: so far profiles, events and
//! suppressions (what the simulator's `Stage` and the conformance suite need). The rest of
//! `store::sqlite::ingest` (opt-outs, erasure, lookups by address) comes with the API
//! (docs/design-postgres.md §9, increment 3).

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
}
