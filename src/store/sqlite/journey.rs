//! What the scheduler reads and writes inside one step transaction: due work, a customer's
//! history, enrollments, segment membership, trigger occurrences, the sends caps count, and
//! the step's results (enrollments, outbox messages, conversions).

use super::*;

impl Tx {
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

    /// Marks an event processed.
    ///
    /// # Errors
    /// On a database error.
    pub async fn mark_processed(&mut self, seq: i64) -> Result<(), Error> {
        sqlx::query("UPDATE events SET processed = 1 WHERE seq = ?")
            .bind(seq)
            .execute(&mut *self.tx)
            .await
            .map_err(query("marking an event processed"))?;
        Ok(())
    }

    /// The customer's events since `since` (all of them when `None`), oldest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn history(
        &mut self,
        id: &CustomerId,
        since: Option<Timestamp>,
    ) -> Result<Vec<Event>, Error> {
        let rows = sqlx::query(
            "SELECT id, name, at, properties FROM events WHERE customer_id = ? AND at >= ? ORDER BY at, seq",
        )
        .bind(id.as_str())
        .bind(since.map_or(i64::MIN, millis))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading event history"))?;
        rows.iter().map(event_from_row).collect()
    }

    /// The customer's active enrollments.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn active_enrollments(&mut self, id: &CustomerId) -> Result<Vec<Enrollment>, Error> {
        let rows = sqlx::query("SELECT state FROM enrollments WHERE customer_id = ? AND active = 1 ORDER BY entered_at, id")
            .bind(id.as_str())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("reading active enrollments"))?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("an enrollment")))
            .collect()
    }

    /// When the customer last entered the workflow, if ever.
    ///
    /// # Errors
    /// On a database error.
    pub async fn last_entered(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
    ) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MAX(entered_at) FROM enrollments WHERE workflow_id = ? AND customer_id = ?",
        )
        .bind(workflow_id)
        .bind(id.as_str())
        .fetch_one(&mut *self.tx)
        .await
        .map_err(query("reading past entries"))?;
        Ok(row.get::<Option<i64>, _>(0).map(from_millis))
    }

    /// The segments the customer was in when last computed.
    ///
    /// # Errors
    /// On a database error.
    pub async fn segments_of(&mut self, id: &CustomerId) -> Result<BTreeSet<String>, Error> {
        let rows = sqlx::query("SELECT segment FROM segment_members WHERE customer_id = ?")
            .bind(id.as_str())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("reading segment membership"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Records that the customer entered (`member`) or left a segment.
    ///
    /// # Errors
    /// On a database error.
    pub async fn set_member(
        &mut self,
        segment: &str,
        id: &CustomerId,
        member: bool,
        now: Timestamp,
    ) -> Result<(), Error> {
        let sql = if member {
            "INSERT OR IGNORE INTO segment_members (segment, customer_id, since) VALUES (?, ?, ?)"
        } else {
            "DELETE FROM segment_members WHERE segment = ? AND customer_id = ? AND ? IS NOT NULL"
        };
        sqlx::query(sql)
            .bind(segment)
            .bind(id.as_str())
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("writing segment membership"))?;
        Ok(())
    }

    /// Sets the next occurrence of a time-based trigger for a customer (`None` removes it).
    /// An occurrence already due and not yet handled is kept.
    ///
    /// # Errors
    /// On a database error.
    pub async fn schedule_fire(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        fire_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), Error> {
        match fire_at {
            Some(at) => sqlx::query(
                "INSERT INTO scheduled_fires (workflow_id, customer_id, fire_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (workflow_id, customer_id) DO UPDATE SET fire_at = excluded.fire_at
                 WHERE scheduled_fires.fire_at > ?4",
            )
            .bind(workflow_id)
            .bind(id.as_str())
            .bind(millis(at))
            .bind(millis(now)),
            None => sqlx::query("DELETE FROM scheduled_fires WHERE workflow_id = ?1 AND customer_id = ?2 AND fire_at > ?3")
                .bind(workflow_id)
                .bind(id.as_str())
                .bind(millis(now)),
        }
        .execute(&mut *self.tx)
        .await
        .map_err(query("scheduling a trigger"))?;
        Ok(())
    }

    /// Replaces a handled occurrence with the next one (`None`: no more).
    ///
    /// # Errors
    /// On a database error.
    pub async fn advance_fire(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        next: Option<Timestamp>,
    ) -> Result<(), Error> {
        match next {
            Some(at) => sqlx::query("UPDATE scheduled_fires SET fire_at = ? WHERE workflow_id = ? AND customer_id = ?").bind(millis(at)),
            None => sqlx::query("DELETE FROM scheduled_fires WHERE ?1 IS NULL AND workflow_id = ?2 AND customer_id = ?3").bind(Option::<i64>::None),
        }
        .bind(workflow_id)
        .bind(id.as_str())
        .execute(&mut *self.tx)
        .await
        .map_err(query("advancing a trigger"))?;
        Ok(())
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

    /// Whether an occurrence was handled for the customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn has_fired(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        occurrence: Timestamp,
    ) -> Result<bool, Error> {
        let row = sqlx::query("SELECT 1 FROM trigger_fires WHERE workflow_id = ? AND customer_id = ? AND occurrence = ?")
            .bind(workflow_id)
            .bind(id.as_str())
            .bind(millis(occurrence))
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("reading trigger occurrences"))?;
        Ok(row.is_some())
    }

    /// Records that an occurrence was handled; false when it was already.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_fire(
        &mut self,
        workflow_id: &str,
        id: &CustomerId,
        occurrence: Timestamp,
    ) -> Result<bool, Error> {
        let done = sqlx::query("INSERT OR IGNORE INTO trigger_fires (workflow_id, customer_id, occurrence) VALUES (?, ?, ?)")
            .bind(workflow_id)
            .bind(id.as_str())
            .bind(millis(occurrence))
            .execute(&mut *self.tx)
            .await
            .map_err(query("recording a trigger occurrence"))?;
        Ok(done.rows_affected() > 0)
    }

    /// The customer's sends that count toward frequency caps since `since`, per channel: the
    /// messages written with a [`CapMark`](crate::engine::policy::CapMark), from the moment
    /// it gives (a held send counts from when it was sent, not from the hold).
    ///
    /// # Errors
    /// On a database error.
    pub async fn recent_sends(
        &mut self,
        id: &CustomerId,
        since: Timestamp,
    ) -> Result<Vec<(crate::model::Channel, Timestamp)>, Error> {
        // Exactly the rows written with a cap mark: which sends count is decided once, by
        // `engine::policy::counts_toward_caps`, never by a filter here.
        let rows = sqlx::query(
            "SELECT channel, counts_at FROM messages
             WHERE customer_id = ? AND counts_at > ? AND counts_at IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(millis(since))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading recent sends"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let channel = if r.get::<&str, _>(0) == "sms" {
                    crate::model::Channel::Sms
                } else {
                    crate::model::Channel::Email
                };
                (channel, from_millis(r.get(1)))
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

    /// Records a conversion, credited to the last message of the workflow the customer
    /// received since `attribution_since`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_conversion(&mut self, c: &Conversion, now: Timestamp) -> Result<(), Error> {
        sqlx::query(
            "INSERT OR IGNORE INTO conversions (enrollment_id, workflow_id, customer_id, event, value, arm, message_key, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6,
               (SELECT key FROM messages WHERE customer_id = ?3 AND workflow_id = ?2 AND status = 'sent' AND sent_at >= ?8
                ORDER BY sent_at DESC, key LIMIT 1),
               ?7)",
        )
        .bind(&c.enrollment_id)
        .bind(&c.workflow_id)
        .bind(&c.customer_id)
        .bind(&c.event)
        .bind(c.value)
        .bind(&c.arm)
        .bind(millis(now))
        .bind(millis(c.attribution_since))
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a conversion"))?;
        Ok(())
    }
}

impl Tx {
    /// Reads what the journey shell consults about one customer for one piece of work, as
    /// `spec` bounds it, inside this transaction (so it sees the batch's earlier writes).
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn load_customer(
        &mut self,
        id: &CustomerId,
        spec: &LoadSpec,
    ) -> Result<CustomerState, Error> {
        let mut states =
            super::journey_batch::load_wave(&mut self.tx, std::slice::from_ref(id), spec).await?;
        Ok(states.pop().unwrap_or_default())
    }

    /// Writes what the journey shell planned for one customer, in its order.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn write_customer(&mut self, w: &CustomerWrite, now: Timestamp) -> Result<(), Error> {
        let Some(id) = &w.id else { return Ok(()) };
        for segment in &w.joined {
            self.set_member(segment, id, true, now).await?;
        }
        for segment in &w.left {
            self.set_member(segment, id, false, now).await?;
        }
        for message in &w.messages {
            self.insert_message(message, now).await?;
        }
        for conversion in &w.conversions {
            self.record_conversion(conversion, now).await?;
        }
        for enrollment in &w.enrollments {
            self.save_enrollment(enrollment, now).await?;
        }
        for fire in &w.fires {
            match fire {
                FireWrite::Schedule { workflow_id, at } => {
                    self.schedule_fire(workflow_id, id, *at, now).await?;
                }
                FireWrite::Advance { workflow_id, next } => {
                    self.advance_fire(workflow_id, id, *next).await?;
                }
                FireWrite::Fired {
                    workflow_id,
                    occurrence,
                } => {
                    self.record_fire(workflow_id, id, *occurrence).await?;
                }
            }
        }
        if let Some(profile) = &w.profile {
            self.put_customer(profile, now).await?;
        }
        if let Some(seq) = w.processed {
            self.mark_processed(seq).await?;
        }
        Ok(())
    }
}

impl crate::store::JourneyStore for Store {
    type Tx = Tx;

    async fn begin(&self) -> Result<Tx, Error> {
        Store::begin(self).await
    }

    async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        Store::paused(self).await
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
        Store::customer_ids_after(self, after, limit).await
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        Store::load_customers(self, ids, spec).await
    }
}

impl crate::store::JourneyTx for Tx {
    async fn pending_events(&mut self, limit: u32) -> Result<Vec<StoredEvent>, Error> {
        Tx::pending_events(self, limit).await
    }

    async fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        Tx::due_enrollments(self, now, limit).await
    }

    async fn due_fires(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<crate::store::DueFire>, Error> {
        Tx::due_fires(self, now, limit).await
    }

    async fn load_customer(
        &mut self,
        id: &CustomerId,
        spec: &LoadSpec,
    ) -> Result<CustomerState, Error> {
        Tx::load_customer(self, id, spec).await
    }

    async fn write_customer(&mut self, write: &CustomerWrite, now: Timestamp) -> Result<(), Error> {
        Tx::write_customer(self, write, now).await
    }

    async fn load_customers(
        &mut self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        Tx::load_customers(self, ids, spec).await
    }

    async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        Tx::write_customers(self, writes, now).await
    }

    async fn commit(self) -> Result<(), Error> {
        Tx::commit(self).await
    }

    async fn end_unwritten(self) -> Result<(), Error> {
        Tx::end_unwritten(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans `sql`, one line per step.
    async fn plan_of(store: &Store, sql: &str) -> String {
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
        let (store, _dir) = crate::store::testing::temp_store().await;
        let plan = plan_of(&store, super::super::journey_batch::WAVE_FIRED).await;
        assert!(plan.contains("trigger_fires_by_customer"), "{plan}");
    }
}
