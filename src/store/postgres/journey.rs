//! What the scheduler reads inside one step transaction on PostgreSQL (due events, wake-ups
//! and trigger occurrences, a customer's profile) and the journey port's impls for
//! [`PgStore`] and [`PgTx`]. Single runner for now: the due queries take no leases
//! (docs/design-postgres.md §5.1 adds them).

use std::collections::BTreeSet;

use super::*;
use crate::engine::Enrollment;
use crate::journey::{CustomerState, CustomerWrite, LoadSpec};
use crate::store::{DueFire, NewMessage, StoredEvent, millis};

/// The `$4` of a lease claim's candidates query.
pub(super) enum Arg<'a> {
    /// None.
    None,
    /// A time, in milliseconds.
    Millis(i64),
    /// Text, such as the id a page starts after.
    Text(&'a str),
}

impl PgTx {
    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&mut self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        let row = sqlx::query("SELECT profile::text FROM customers WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(query("reading a customer"))?;
        row.map(|r| customer_from(r.get::<&str, _>(0))).transpose()
    }

    /// Up to `limit` events not yet processed, in arrival order, of customers this runner
    /// leases for them (a customer another runner holds is left to it).
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn pending_events(&mut self, n: u32) -> Result<Vec<StoredEvent>, Error> {
        let customers = self
            .lease_customers(
                // The window is taken among customers nobody holds, so a customer another
                // runner works through, however many events it has, never hides the rest.
                "SELECT customer_id, min(seq) AS first
                 FROM (SELECT e.customer_id, e.seq FROM events e
                       JOIN customer_leases l ON l.customer_id = e.customer_id
                       WHERE NOT e.processed AND l.expires_at < trellis_now_ms()
                       ORDER BY e.seq LIMIT $3 * 4) w
                 GROUP BY customer_id",
                n,
                Arg::None,
            )
            .await?;
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, name, at, properties::text, seq, customer_id FROM events
             WHERE NOT processed AND customer_id = ANY($2) ORDER BY seq LIMIT $1",
        )
        .bind(limit(n))
        .bind(&customers)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading pending events"))?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: r.get(4),
                    customer_id: customer_id(r.get(5))?,
                    event: event_from_row(r)?,
                })
            })
            .collect()
    }

    /// Up to `limit` trigger occurrences due at `now`, earliest first, of customers this
    /// runner leases for them.
    ///
    /// # Errors
    /// On a database error.
    pub async fn due_fires(&mut self, now: Timestamp, n: u32) -> Result<Vec<DueFire>, Error> {
        let customers = self
            .lease_customers(
                "SELECT customer_id, min(fire_at) AS first
                 FROM (SELECT customer_id, fire_at FROM scheduled_fires WHERE fire_at <= $4
                       ORDER BY fire_at LIMIT $3 * 4) w
                 GROUP BY customer_id",
                n,
                Arg::Millis(millis(now)),
            )
            .await?;
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT workflow_id, customer_id, fire_at FROM scheduled_fires
             WHERE fire_at <= $1 AND customer_id = ANY($3) ORDER BY fire_at LIMIT $2",
        )
        .bind(millis(now))
        .bind(limit(n))
        .bind(&customers)
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

    /// Up to `limit` active enrollments due at `now`, of workflows not paused, earliest
    /// first, of customers this runner leases for them.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn due_enrollments(
        &mut self,
        now: Timestamp,
        n: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        let customers = self
            .lease_customers(
                "SELECT customer_id, min(wake_at) AS first
                 FROM (SELECT e.customer_id, e.wake_at FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
                       WHERE e.active AND e.wake_at <= $4 AND NOT w.paused
                       ORDER BY e.wake_at LIMIT $3 * 4) w
                 GROUP BY customer_id",
                n,
                Arg::Millis(millis(now)),
            )
            .await?;
        if customers.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT e.state::text FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
             WHERE e.active AND e.wake_at <= $1 AND NOT w.paused AND e.customer_id = ANY($3)
             ORDER BY e.wake_at LIMIT $2",
        )
        .bind(millis(now))
        .bind(limit(n))
        .bind(&customers)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("claiming due enrollments"))?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<&str, _>(0)).map_err(decode("an enrollment")))
            .collect()
    }

    /// Gives back the customers this runner held from its last round, then leases up to `n`
    /// of the customers `candidates` names (a query of `customer_id, first` over the oldest
    /// `$3 * 4` due items, `$4` being `arg` when there is one) whose lease is free, earliest
    /// first, skipping rows another claim has locked: their ids, held from now with one new
    /// token.
    pub(super) async fn lease_customers(
        &mut self,
        candidates: &str,
        n: u32,
        arg: Arg<'_>,
    ) -> Result<Vec<String>, Error> {
        let (ids, tokens) = self.leases.take_customers();
        if !ids.is_empty() {
            // By primary key, locked in id order as every other lease statement locks them.
            let given_back = sqlx::query(
                "WITH mine AS (
                    SELECT customer_id FROM customer_leases
                    WHERE customer_id = ANY($1) AND token = ANY($2) AND runner_id = $3
                    ORDER BY customer_id FOR UPDATE)
                 UPDATE customer_leases l SET expires_at = 0 FROM mine
                 WHERE l.customer_id = mine.customer_id",
            )
            .bind(&ids)
            .bind(&tokens)
            .bind(&self.leases.runner)
            .execute(&mut *self.tx)
            .await;
            if let Err(err) = given_back {
                self.leases.rehold_customers(ids, tokens);
                return Err(query("giving back customer leases")(err));
            }
        }
        let sql = format!(
            "WITH cand AS ({candidates}),
             free AS (
                SELECT l.customer_id, cand.first FROM customer_leases l JOIN cand USING (customer_id)
                WHERE l.expires_at < trellis_now_ms()
                ORDER BY cand.first LIMIT $3
                FOR UPDATE OF l SKIP LOCKED),
             t AS (SELECT nextval('lease_tokens') AS token)
             UPDATE customer_leases l SET runner_id = $1, token = t.token,
                    expires_at = trellis_now_ms() + $2
             FROM free, t WHERE l.customer_id = free.customer_id
             RETURNING l.customer_id, l.token"
        );
        let mut claim = sqlx::query(&sql)
            .bind(&self.leases.runner)
            .bind(self.leases.ttl_ms())
            .bind(limit(n));
        match arg {
            Arg::None => {}
            Arg::Millis(ms) => claim = claim.bind(ms),
            Arg::Text(text) => claim = claim.bind(text.to_owned()),
        }
        let rows = claim
            .fetch_all(&mut *self.tx)
            .await
            .map_err(query("leasing customers"))?;
        let Some(token) = rows.first().map(|r| r.get::<i64, _>(1)) else {
            return Ok(Vec::new());
        };
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        self.leases.hold_customers(&ids, token);
        Ok(ids)
    }
}

impl PgTx {
    /// Writes an enrollment's state.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn save_enrollment(&mut self, e: &Enrollment, now: Timestamp) -> Result<(), Error> {
        let state = serde_json::to_string(e).expect("an enrollment always serializes");
        sqlx::query(
            "INSERT INTO enrollments (customer_id, id, workflow_id, workflow_version, active, node, wake_at, state, entered_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)
             ON CONFLICT (customer_id, id) DO UPDATE SET active = excluded.active, node = excluded.node,
               wake_at = excluded.wake_at, state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(e.customer_id.as_str())
        .bind(&e.id)
        .bind(e.workflow_id.as_str())
        .bind(&e.workflow_version)
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
            "INSERT INTO messages (customer_id, key, enrollment_id, workflow_id, node, channel, template, status, payload, next_attempt_at, last_error, created_at, updated_at, category, counts_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $10, $10, $12, $13)
             ON CONFLICT (customer_id, key) DO UPDATE SET status = excluded.status, payload = excluded.payload,
               channel = excluded.channel, last_error = excluded.last_error,
               next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at,
               counts_at = excluded.counts_at
             WHERE messages.status = 'held'",
        )
        .bind(&m.customer_id)
        .bind(&m.key)
        .bind(&m.enrollment_id)
        .bind(&m.workflow_id)
        .bind(&m.node)
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

impl PgStore {
    /// The earliest wake-up of a workflow not paused, or trigger occurrence, still to come.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        let row = sqlx::query(
            "SELECT MIN(at) FROM (
               SELECT MIN(e.wake_at) AS at FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
                WHERE e.active AND e.wake_at IS NOT NULL AND NOT w.paused
               UNION ALL SELECT MIN(fire_at) FROM scheduled_fires) due",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query("reading the next wake-up"))?;
        Ok(at(row.get::<Option<i64>, _>(0)))
    }
}

impl crate::store::JourneyStore for PgStore {
    type Tx = PgTx;

    async fn begin(&self) -> Result<PgTx, Error> {
        PgStore::begin(self).await
    }

    async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        PgStore::paused(self).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        PgStore::next_due(self).await
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        PgStore::load_customers(self, ids, spec).await
    }

    async fn customer_ids_after(
        &self,
        after: Option<&str>,
        n: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        PgStore::customer_ids_after(self, after, n).await
    }

    async fn order_stats(&self) -> Result<Vec<crate::traits::OrderStats>, Error> {
        PgStore::order_stats(self).await
    }

    async fn write_traits(
        &self,
        traits: &[crate::traits::Traits],
        now: Timestamp,
    ) -> Result<(), Error> {
        PgStore::write_traits(self, traits, now).await
    }
}

impl crate::store::JourneyTx for PgTx {
    async fn pending_events(&mut self, n: u32) -> Result<Vec<StoredEvent>, Error> {
        PgTx::pending_events(self, n).await
    }

    async fn due_enrollments(&mut self, now: Timestamp, n: u32) -> Result<Vec<Enrollment>, Error> {
        PgTx::due_enrollments(self, now, n).await
    }

    async fn due_fires(&mut self, now: Timestamp, n: u32) -> Result<Vec<DueFire>, Error> {
        PgTx::due_fires(self, now, n).await
    }

    async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        PgTx::write_customers(self, writes, now).await
    }

    async fn commit(self) -> Result<(), Error> {
        PgTx::commit(self).await
    }

    async fn end_unwritten(self) -> Result<(), Error> {
        PgTx::end_unwritten(self).await
    }
}
