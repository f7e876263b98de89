//! What the scheduler reads and writes inside one step transaction: due work, a customer's
//! history, enrollments, segment membership, trigger occurrences, the sends caps count, and
//! the step's results (enrollments, outbox messages, conversions).

use super::*;

impl SqliteTx {
    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&mut self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        let row = sqlx::query("SELECT profile FROM customers WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("reading a customer"))?;
        row.map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("a customer profile")))
            .transpose()
    }

    /// Up to `limit` events not yet processed, in arrival order.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn pending_events(&mut self, limit: u32) -> Result<Vec<StoredEvent>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, at, properties, seq, customer_id FROM events WHERE processed = 0 ORDER BY seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading pending events"))?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: r.get(4),
                    customer_id: CustomerId::parse(r.get::<String, _>(5))
                        .map_err(|e| decode("a customer id")(serde::de::Error::custom(e)))?,
                    event: event_from_row(r)?,
                })
            })
            .collect()
    }

    /// Up to `limit` trigger occurrences due at `now`: `(workflow id, customer, occurrence)`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn due_fires(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, CustomerId, Timestamp)>, Error> {
        let rows = sqlx::query("SELECT workflow_id, customer_id, fire_at FROM scheduled_fires WHERE fire_at <= ? ORDER BY fire_at LIMIT ?")
            .bind(millis(now))
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("claiming due triggers"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get(0),
                    CustomerId::parse(r.get::<String, _>(1)).ok()?,
                    from_millis(r.get(2)),
                ))
            })
            .collect())
    }

    /// Up to `limit` active enrollments due at `now`, of workflows not paused.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        let rows = sqlx::query(
            "SELECT e.state FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active = 1 AND e.wake_at <= ? AND w.paused = 0 ORDER BY e.wake_at LIMIT ?",
        )
        .bind(millis(now))
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("claiming due enrollments"))?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("an enrollment")))
            .collect()
    }

    /// Writes an enrollment's state.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn save_enrollment(&mut self, e: &Enrollment, now: Timestamp) -> Result<(), Error> {
        let state = serde_json::to_string(e).expect("an enrollment always serializes");
        sqlx::query(
            "INSERT INTO enrollments (id, workflow_id, workflow_version, customer_id, active, node, wake_at, state, entered_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET active = excluded.active, node = excluded.node,
               wake_at = excluded.wake_at, state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(&e.id)
        .bind(e.workflow_id.as_str())
        .bind(&e.workflow_version)
        .bind(e.customer_id.as_str())
        .bind(e.is_active())
        .bind(e.current_node().map(|n| n.as_str()))
        .bind(e.next_wake().map(millis))
        .bind(state)
        .bind(millis(e.entered_at))
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("writing an enrollment"))?;
        Ok(())
    }

    /// Adds a message to the outbox; a message whose key exists already is left as it is,
    /// unless it was `held`, in which case this is the decision that follows the hold.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_message(&mut self, m: &NewMessage, now: Timestamp) -> Result<(), Error> {
        let payload = serde_json::to_string(&m.payload).expect("a payload always serializes");
        sqlx::query(
            "INSERT INTO messages (key, enrollment_id, workflow_id, node, customer_id, channel, template, status, payload, next_attempt_at, last_error, created_at, updated_at, category, counts_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?10, ?12, ?13)
             ON CONFLICT (key) DO UPDATE SET status = excluded.status, payload = excluded.payload,
               channel = excluded.channel, last_error = excluded.last_error,
               next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at,
               counts_at = excluded.counts_at
             WHERE messages.status = 'held'",
        )
        .bind(&m.key)
        .bind(&m.enrollment_id)
        .bind(&m.workflow_id)
        .bind(&m.node)
        .bind(&m.customer_id)
        .bind(m.payload.channel_name())
        .bind(&m.template)
        .bind(m.status.as_str())
        .bind(payload)
        .bind(millis(now))
        .bind(&m.note)
        .bind(if m.transactional { "transactional" } else { "marketing" })
        .bind(m.cap.map(|mark| millis(mark.at())))
        .execute(&mut *self.tx)
        .await
        .map_err(query("writing an outbox message"))?;
        Ok(())
    }
}

impl crate::store::JourneyStore for SqliteStore {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx, Error> {
        SqliteStore::begin(self).await
    }

    async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        SqliteStore::paused(self).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MIN(at) FROM (
               SELECT MIN(e.wake_at) AS at FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
                WHERE e.active = 1 AND e.wake_at IS NOT NULL AND w.paused = 0
               UNION ALL SELECT MIN(fire_at) FROM scheduled_fires)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query("reading the next wake-up"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        SqliteStore::customer_ids_after(self, after, limit).await
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        SqliteStore::load_customers(self, ids, spec).await
    }

    async fn order_stats(&self) -> Result<Vec<crate::traits::OrderStats>, Error> {
        SqliteStore::order_stats(self).await
    }

    async fn write_traits(
        &self,
        traits: &[crate::traits::Traits],
        now: Timestamp,
    ) -> Result<(), Error> {
        SqliteStore::write_traits(self, traits, now).await
    }
}

impl crate::store::JourneyTx for SqliteTx {
    async fn pending_events(&mut self, limit: u32) -> Result<Vec<StoredEvent>, Error> {
        SqliteTx::pending_events(self, limit).await
    }

    async fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        SqliteTx::due_enrollments(self, now, limit).await
    }

    async fn due_fires(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<crate::store::DueFire>, Error> {
        SqliteTx::due_fires(self, now, limit).await
    }

    async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        SqliteTx::write_customers(self, writes, now).await
    }

    async fn commit(self) -> Result<(), Error> {
        SqliteTx::commit(self).await
    }

    async fn end_unwritten(self) -> Result<(), Error> {
        SqliteTx::end_unwritten(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans `sql`, one line per step.
    async fn plan_of(store: &SqliteStore, sql: &str) -> String {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .bind("ada")
            .bind(0_i64)
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.get::<String, _>(3))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn a_customers_occurrences_are_read_through_an_index_not_a_scan() {
        // The primary key starts with the workflow: without its own index this read scanned
        // every occurrence of every broadcast, once per customer a fire visits.
        let (store, _dir) = crate::store::testing::temp_sqlite().await;
        let plan = plan_of(&store, super::super::journey_batch::WAVE_FIRED).await;
        assert!(plan.contains("trigger_fires_by_customer"), "{plan}");
    }
}
