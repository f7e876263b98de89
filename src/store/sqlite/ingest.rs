//! What the API and `trellis import` write: events, profiles, suppressions, opt-outs and
//! erasure.

use super::*;

impl SqliteTx {
    /// Creates or replaces a customer's profile.
    ///
    /// # Errors
    /// On a database error.
    pub async fn put_customer(&mut self, customer: &Customer, now: Timestamp) -> Result<(), Error> {
        let profile = serde_json::to_string(customer).expect("a customer always serializes");
        sqlx::query(
            "INSERT INTO customers (id, profile, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
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
    /// An event whose id was seen before is not stored again.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_event(
        &mut self,
        customer_id: &CustomerId,
        event: &Event,
        now: Timestamp,
    ) -> Result<Inserted, Error> {
        let minimal = serde_json::to_string(&Customer::minimal(customer_id.clone()))
            .expect("a customer always serializes");
        sqlx::query("INSERT OR IGNORE INTO customers (id, profile, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)")
            .bind(customer_id.as_str())
            .bind(minimal)
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("creating a minimal customer"))?;
        let properties =
            serde_json::to_string(&event.properties).expect("a JSON map always serializes");
        let done = sqlx::query(
            "INSERT OR IGNORE INTO events (id, customer_id, name, at, properties, received_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id.as_ref().map(EventId::as_str))
        .bind(customer_id.as_str())
        .bind(&event.name)
        .bind(millis(event.timestamp))
        .bind(properties)
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("storing an event"))?;
        Ok(if done.rows_affected() == 0 {
            Inserted::Duplicate
        } else {
            Inserted::Accepted
        })
    }

    /// [`SqliteTx::insert_event`] for many events, in order, in three statements: minimal profiles
    /// for unknown customers, the ids already stored, the events. An event whose id was
    /// stored before, or appears earlier in `events`, is a duplicate (and, as one by one, uses
    /// up a sequence number).
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
                serde_json::json!([
                    c.as_str(),
                    serde_json::to_string(&Customer::minimal((*c).clone()))
                        .expect("a customer always serializes")
                ])
            })
            .collect();
        sqlx::query(
            "INSERT OR IGNORE INTO customers (id, profile, created_at, updated_at)
             SELECT value ->> '$[0]', value ->> '$[1]', ?2, ?2 FROM json_each(?1)",
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
            sqlx::query_scalar(
                "SELECT id FROM events WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(serde_json::Value::from(ids).to_string())
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
                serde_json::json!([
                    e.id.as_ref().map(EventId::as_str),
                    c.as_str(),
                    e.name,
                    millis(e.timestamp),
                    serde_json::to_string(&e.properties).expect("a JSON map always serializes"),
                ])
            })
            .collect();
        sqlx::query(
            "INSERT OR IGNORE INTO events (id, customer_id, name, at, properties, received_at)
             SELECT value ->> '$[0]', value ->> '$[1]', value ->> '$[2]', value ->> '$[3]',
                    value ->> '$[4]', ?2
             FROM json_each(?1)",
        )
        .bind(serde_json::Value::from(rows).to_string())
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(query("storing events"))?;
        Ok(results)
    }

    /// Customers whose profile has this phone number (E.164) or email address.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customers_by_address(
        &mut self,
        channel: crate::model::Channel,
        address: &str,
    ) -> Result<Vec<Customer>, Error> {
        let field = match channel {
            crate::model::Channel::Email => "$.email",
            crate::model::Channel::Sms => "$.phone",
        };
        let rows = sqlx::query(
            "SELECT profile FROM customers WHERE json_extract(profile, ?) = ? COLLATE NOCASE",
        )
        .bind(field)
        .bind(address)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("finding customers by address"))?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("a customer profile"))
            })
            .collect()
    }

    /// Suppresses an address for good (hard bounce, complaint).
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
        sqlx::query("INSERT OR REPLACE INTO suppressions (channel, address, reason, at) VALUES (?, lower(?), ?, ?)")
            .bind(channel.as_str())
            .bind(address)
            .bind(reason)
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("suppressing an address"))?;
        Ok(())
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
        let row =
            sqlx::query("SELECT reason FROM suppressions WHERE channel = ? AND address = lower(?)")
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
            "UPDATE messages SET status = 'cancelled', last_error = 'the customer unsubscribed', updated_at = ?3
             WHERE customer_id = ?1 AND channel = ?2 AND status = 'pending' AND category = 'marketing'",
        )
        .bind(id.as_str())
        .bind(channel.as_str())
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("cancelling queued messages"))?;
        Ok(done.rows_affected())
    }

    /// Erases a customer's personal data: the profile goes, events keep their name and
    /// time under an anonymous id, pending messages are cancelled, message bodies are
    /// cleared, active enrollments end. Counts survive. False when there was no such customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn erase_customer(&mut self, id: &CustomerId, now: Timestamp) -> Result<bool, Error> {
        let anonymous = format!(
            "erased-{}",
            crate::engine::hash::hex_digest(&[id.as_str()], 16)
        );
        let gone = sqlx::query("DELETE FROM customers WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(query("erasing a customer"))?
            .rows_affected()
            > 0;
        let statements = [
            "UPDATE events SET customer_id = ?2, properties = '{}', id = NULL WHERE customer_id = ?1",
            "UPDATE messages SET status = 'cancelled', updated_at = ?3 WHERE customer_id = ?1 AND status IN ('pending', 'sending')",
            "UPDATE messages SET customer_id = ?2, payload = '{\"channel\":\"none\"}' WHERE customer_id = ?1",
            "UPDATE enrollments SET customer_id = ?2, active = 0, wake_at = NULL, node = NULL, state = '{}' WHERE customer_id = ?1",
            "UPDATE conversions SET customer_id = ?2 WHERE customer_id = ?1",
            "DELETE FROM segment_members WHERE customer_id = ?1 AND ?2 IS NOT NULL",
            "DELETE FROM scheduled_fires WHERE customer_id = ?1 AND ?2 IS NOT NULL",
            "UPDATE trigger_fires SET customer_id = ?2 WHERE customer_id = ?1",
        ];
        for sql in statements {
            sqlx::query(sql)
                .bind(id.as_str())
                .bind(&anonymous)
                .bind(millis(now))
                .execute(&mut *self.tx)
                .await
                .map_err(query("erasing a customer's data"))?;
        }
        Ok(gone)
    }
}
