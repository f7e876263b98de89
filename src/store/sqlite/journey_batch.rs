//! The journey port's batch calls on SQLite: a wave of customers loaded in a fixed number of
//! queries and its results written in a fixed number of multi-row statements, whatever the
//! wave's size. Rows travel as one JSON array per statement (`json_each(?1)`), so each
//! statement is one cached, prepared statement with two or three bound values, and SQLite's
//! limit on bound variables never applies.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;

/// The ids as one JSON array.
fn id_array(ids: &[CustomerId]) -> String {
    Value::from(ids.iter().map(CustomerId::as_str).collect::<Vec<_>>()).to_string()
}

fn channel_of(name: &str) -> Channel {
    if name == "sms" {
        Channel::Sms
    } else {
        Channel::Email
    }
}

/// A wave's handled occurrences since an instant (index `trigger_fires_by_customer`).
pub(super) const WAVE_FIRED: &str = "SELECT customer_id, workflow_id, occurrence FROM trigger_fires
     WHERE customer_id IN (SELECT value FROM json_each(?1)) AND occurrence >= ?2";

impl SqliteStore {
    /// What the journey shell consults about a wave of distinct customers, in `ids`' order,
    /// outside the write lock: one read snapshot (a deferred transaction that only reads), so
    /// the shell plans while others write; the write that follows is fenced by the versions
    /// read here.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        let mut snapshot = self.pool.begin().await.map_err(query("beginning a read"))?;
        let states = load_wave(&mut snapshot, ids, spec).await?;
        snapshot.commit().await.map_err(query("ending a read"))?;
        Ok(states)
    }
}

/// Loads a wave of distinct customers on `conn`, in `ids`' order: eight queries.
pub(super) async fn load_wave(
    conn: &mut sqlx::SqliteConnection,
    ids: &[CustomerId],
    spec: &LoadSpec,
) -> Result<Vec<CustomerState>, Error> {
    {
        let ids_json = id_array(ids);
        let mut states: HashMap<&str, CustomerState> = ids
            .iter()
            .map(|id| (id.as_str(), CustomerState::default()))
            .collect();

        let rows = sqlx::query(
            "SELECT id, profile, version FROM customers WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids_json)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("reading customers"))?;
        for r in &rows {
            let customer: Customer =
                serde_json::from_str(r.get::<&str, _>(1)).map_err(decode("a customer profile"))?;
            if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                state.customer = Some(customer);
                state.version = Some(r.get(2));
            }
        }

        let rows = sqlx::query(
            "SELECT id, name, at, properties, customer_id FROM events
             WHERE customer_id IN (SELECT value FROM json_each(?1)) AND at >= ?2
             ORDER BY customer_id, at, seq",
        )
        .bind(&ids_json)
        .bind(spec.history_since.map_or(i64::MIN, millis))
        .fetch_all(&mut *conn)
        .await
        .map_err(query("reading event history"))?;
        for r in &rows {
            if let Some(state) = states.get_mut(r.get::<&str, _>(4)) {
                state.history.push(event_from_row(r)?);
            }
        }

        let rows = sqlx::query(
            "SELECT customer_id, segment FROM segment_members
             WHERE customer_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids_json)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("reading segment membership"))?;
        for r in &rows {
            if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                state.segments.insert(r.get(1));
            }
        }

        if let Some(since) = spec.sends_since {
            // Exactly the rows written with a cap mark (see `SqliteTx::recent_sends`).
            let rows = sqlx::query(
                "SELECT customer_id, channel, counts_at FROM messages
                 WHERE customer_id IN (SELECT value FROM json_each(?1))
                   AND counts_at > ?2 AND counts_at IS NOT NULL",
            )
            .bind(&ids_json)
            .bind(millis(since))
            .fetch_all(&mut *conn)
            .await
            .map_err(query("reading recent sends"))?;
            for r in &rows {
                if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                    state
                        .cap_sends
                        .push((channel_of(r.get(1)), from_millis(r.get(2))));
                }
            }
        }

        if spec.enrollments {
            let rows = sqlx::query(
                "SELECT customer_id, state FROM enrollments
                 WHERE customer_id IN (SELECT value FROM json_each(?1)) AND active = 1
                 ORDER BY customer_id, entered_at, id",
            )
            .bind(&ids_json)
            .fetch_all(&mut *conn)
            .await
            .map_err(query("reading active enrollments"))?;
            for r in &rows {
                let enrollment: Enrollment =
                    serde_json::from_str(r.get::<&str, _>(1)).map_err(decode("an enrollment"))?;
                if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                    state.enrollments.push(enrollment);
                }
            }
            let rows = sqlx::query(
                "SELECT customer_id, workflow_id, MAX(entered_at) FROM enrollments
                 WHERE customer_id IN (SELECT value FROM json_each(?1))
                 GROUP BY customer_id, workflow_id",
            )
            .bind(&ids_json)
            .fetch_all(&mut *conn)
            .await
            .map_err(query("reading past entries"))?;
            for r in &rows {
                if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                    state.last_entered.insert(r.get(1), from_millis(r.get(2)));
                }
            }
        }

        if let Some(since) = spec.fired_since {
            let rows = sqlx::query(WAVE_FIRED)
                .bind(&ids_json)
                .bind(millis(since))
                .fetch_all(&mut *conn)
                .await
                .map_err(query("reading trigger occurrences"))?;
            for r in &rows {
                if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                    state.fired.insert((r.get(1), from_millis(r.get(2))));
                }
            }
        }

        // The suppression list, for the addresses just read.
        let addresses: Vec<Value> = ids
            .iter()
            .filter_map(|id| states.get(id.as_str())?.customer.as_ref())
            .flat_map(|c| {
                [Channel::Email, Channel::Sms]
                    .into_iter()
                    .filter_map(move |ch| {
                        c.address(ch)
                            .map(|a| json!([c.id.as_str(), ch.as_str(), a]))
                    })
            })
            .collect();
        if !addresses.is_empty() {
            let rows = sqlx::query(
                "SELECT a.value ->> '$[0]', s.channel, a.value ->> '$[2]', s.reason
                 FROM json_each(?1) a
                 JOIN suppressions s ON s.channel = a.value ->> '$[1]'
                                    AND s.address = lower(a.value ->> '$[2]')",
            )
            .bind(Value::from(addresses).to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(query("reading suppressions"))?;
            for r in &rows {
                if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
                    state
                        .suppressed
                        .insert((channel_of(r.get(1)), r.get(2)), r.get(3));
                }
            }
        }

        Ok(ids
            .iter()
            .map(|id| states.remove(id.as_str()).unwrap_or_default())
            .collect())
    }
}

impl SqliteTx {
    /// Writes what the journey shell planned for a wave of distinct customers: at most twelve statements,
    /// each skipped when it has no rows.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        // The fence: the versions now, against those the plans were made on.
        let ids: Vec<CustomerId> = writes.iter().filter_map(|w| w.id.clone()).collect();
        let rows = sqlx::query(
            "SELECT id, version FROM customers WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(id_array(&ids))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading customer versions"))?;
        let versions: HashMap<&str, i64> = rows
            .iter()
            .map(|r| (r.get::<&str, _>(0), r.get(1)))
            .collect();
        let (writes, conflicted) =
            crate::store::ports::fenced(writes, |id| versions.get(id).copied());
        self.write_planned(&writes, now).await?;
        Ok(conflicted)
    }

    /// Writes the planned results, unfenced.
    async fn write_planned(
        &mut self,
        writes: &[&CustomerWrite],
        now: Timestamp,
    ) -> Result<(), Error> {
        let now_ms = millis(now);
        let mut joined = Vec::new();
        let mut left = Vec::new();
        let mut messages = Vec::new();
        let mut conversions = Vec::new();
        let mut enrollments = Vec::new();
        let mut scheduled = Vec::new();
        let mut unscheduled = Vec::new();
        let mut advanced = Vec::new();
        let mut ended = Vec::new();
        let mut fired = Vec::new();
        let mut profiles = Vec::new();
        let mut processed = Vec::new();
        for w in writes {
            let Some(id) = &w.id else { continue };
            let id = id.as_str();
            joined.extend(w.joined.iter().map(|s| json!([s, id])));
            left.extend(w.left.iter().map(|s| json!([s, id])));
            messages.extend(w.messages.iter().map(|m| {
                json!({
                    "key": m.key, "enrollment_id": m.enrollment_id, "workflow_id": m.workflow_id,
                    "node": m.node, "customer_id": m.customer_id,
                    "channel": m.payload.channel_name(), "template": m.template,
                    "status": m.status.as_str(),
                    "payload": serde_json::to_string(&m.payload).expect("a payload always serializes"),
                    "note": m.note,
                    "category": if m.transactional { "transactional" } else { "marketing" },
                    "counts_at": m.cap.map(|mark| millis(mark.at())),
                })
            }));
            conversions.extend(w.conversions.iter().map(|c| {
                json!({
                    "enrollment_id": c.enrollment_id, "workflow_id": c.workflow_id,
                    "customer_id": c.customer_id, "event": c.event, "value": c.value,
                    "arm": c.arm, "since": millis(c.attribution_since),
                })
            }));
            enrollments.extend(w.enrollments.iter().map(|e| {
                json!({
                    "id": e.id, "workflow_id": e.workflow_id.as_str(),
                    "workflow_version": e.workflow_version, "customer_id": e.customer_id.as_str(),
                    "active": i64::from(e.is_active()),
                    "node": e.current_node().map(|n| n.as_str()),
                    "wake_at": e.next_wake().map(millis),
                    "state": serde_json::to_string(e).expect("an enrollment always serializes"),
                    "entered_at": millis(e.entered_at),
                })
            }));
            for fire in &w.fires {
                match fire {
                    FireWrite::Schedule {
                        workflow_id,
                        at: Some(at),
                    } => scheduled.push(json!([workflow_id, id, millis(*at)])),
                    FireWrite::Schedule {
                        workflow_id,
                        at: None,
                    } => unscheduled.push(json!([workflow_id, id])),
                    FireWrite::Advance {
                        workflow_id,
                        next: Some(at),
                    } => advanced.push(json!([workflow_id, id, millis(*at)])),
                    FireWrite::Advance {
                        workflow_id,
                        next: None,
                    } => ended.push(json!([workflow_id, id])),
                    FireWrite::Fired {
                        workflow_id,
                        occurrence,
                    } => fired.push(json!([workflow_id, id, millis(*occurrence)])),
                }
            }
            if let Some(profile) = &w.profile {
                profiles.push(json!([
                    id,
                    serde_json::to_string(profile).expect("a customer always serializes")
                ]));
            }
            processed.extend(w.processed);
        }

        self.each(
            &joined,
            "INSERT OR IGNORE INTO segment_members (segment, customer_id, since)
             SELECT value ->> '$[0]', value ->> '$[1]', ?2 FROM json_each(?1)",
            now_ms,
            "writing segment membership",
        )
        .await?;
        self.each(
            &left,
            "DELETE FROM segment_members WHERE ?2 IS NOT NULL AND (segment, customer_id) IN
               (SELECT value ->> '$[0]', value ->> '$[1]' FROM json_each(?1))",
            now_ms,
            "writing segment membership",
        )
        .await?;
        // As `SqliteTx::insert_message`: a key is written once, unless its row is held.
        self.each(
            &messages,
            "INSERT INTO messages (key, enrollment_id, workflow_id, node, customer_id, channel, template, status, payload, next_attempt_at, last_error, created_at, updated_at, category, counts_at)
             SELECT value ->> 'key', value ->> 'enrollment_id', value ->> 'workflow_id', value ->> 'node',
                    value ->> 'customer_id', value ->> 'channel', value ->> 'template', value ->> 'status',
                    value ->> 'payload', ?2, value ->> 'note', ?2, ?2, value ->> 'category', value ->> 'counts_at'
             FROM json_each(?1) WHERE true
             ON CONFLICT (key) DO UPDATE SET status = excluded.status, payload = excluded.payload,
               channel = excluded.channel, last_error = excluded.last_error,
               next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at,
               counts_at = excluded.counts_at
             WHERE messages.status = 'held'",
            now_ms,
            "writing outbox messages",
        )
        .await?;
        // As `SqliteTx::record_conversion`: credited to the workflow's last message sent within the
        // attribution window.
        self.each(
            &conversions,
            "INSERT OR IGNORE INTO conversions (enrollment_id, workflow_id, customer_id, event, value, arm, message_key, at)
             SELECT c.value ->> 'enrollment_id', c.value ->> 'workflow_id', c.value ->> 'customer_id',
                    c.value ->> 'event', c.value ->> 'value', c.value ->> 'arm',
                    (SELECT key FROM messages
                      WHERE customer_id = c.value ->> 'customer_id' AND workflow_id = c.value ->> 'workflow_id'
                        AND status = 'sent' AND sent_at >= c.value ->> 'since'
                      ORDER BY sent_at DESC, key LIMIT 1),
                    ?2
             FROM json_each(?1) c",
            now_ms,
            "recording conversions",
        )
        .await?;
        // In order: an exit is written before the entry that follows it.
        self.each(
            &enrollments,
            "INSERT INTO enrollments (id, workflow_id, workflow_version, customer_id, active, node, wake_at, state, entered_at, updated_at)
             SELECT value ->> 'id', value ->> 'workflow_id', value ->> 'workflow_version', value ->> 'customer_id',
                    value ->> 'active', value ->> 'node', value ->> 'wake_at', value ->> 'state',
                    value ->> 'entered_at', ?2
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO UPDATE SET active = excluded.active, node = excluded.node,
               wake_at = excluded.wake_at, state = excluded.state, updated_at = excluded.updated_at",
            now_ms,
            "writing enrollments",
        )
        .await?;
        // As `SqliteTx::schedule_fire`: an occurrence already due and not yet handled is kept.
        self.each(
            &scheduled,
            "INSERT INTO scheduled_fires (workflow_id, customer_id, fire_at)
             SELECT value ->> '$[0]', value ->> '$[1]', value ->> '$[2]' FROM json_each(?1) WHERE true
             ON CONFLICT (workflow_id, customer_id) DO UPDATE SET fire_at = excluded.fire_at
             WHERE scheduled_fires.fire_at > ?2",
            now_ms,
            "scheduling triggers",
        )
        .await?;
        self.each(
            &unscheduled,
            "DELETE FROM scheduled_fires WHERE fire_at > ?2 AND (workflow_id, customer_id) IN
               (SELECT value ->> '$[0]', value ->> '$[1]' FROM json_each(?1))",
            now_ms,
            "scheduling triggers",
        )
        .await?;
        self.each(
            &advanced,
            "UPDATE scheduled_fires SET fire_at = u.at
             FROM (SELECT value ->> '$[0]' AS w, value ->> '$[1]' AS c, value ->> '$[2]' AS at
                   FROM json_each(?1)) AS u
             WHERE ?2 IS NOT NULL AND scheduled_fires.workflow_id = u.w AND scheduled_fires.customer_id = u.c",
            now_ms,
            "advancing triggers",
        )
        .await?;
        self.each(
            &ended,
            "DELETE FROM scheduled_fires WHERE ?2 IS NOT NULL AND (workflow_id, customer_id) IN
               (SELECT value ->> '$[0]', value ->> '$[1]' FROM json_each(?1))",
            now_ms,
            "advancing triggers",
        )
        .await?;
        self.each(
            &fired,
            "INSERT OR IGNORE INTO trigger_fires (workflow_id, customer_id, occurrence)
             SELECT value ->> '$[0]', value ->> '$[1]', value ->> '$[2]' FROM json_each(?1)
             WHERE ?2 IS NOT NULL",
            now_ms,
            "recording trigger occurrences",
        )
        .await?;
        self.each(
            &profiles,
            "INSERT INTO customers (id, profile, created_at, updated_at)
             SELECT value ->> '$[0]', value ->> '$[1]', ?2, ?2 FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO UPDATE SET profile = excluded.profile, updated_at = excluded.updated_at",
            now_ms,
            "writing customers",
        )
        .await?;
        let processed: Vec<Value> = processed.into_iter().map(Value::from).collect();
        self.each(
            &processed,
            "UPDATE events SET processed = 1
             WHERE ?2 IS NOT NULL AND seq IN (SELECT value FROM json_each(?1))",
            now_ms,
            "marking events processed",
        )
        .await?;
        Ok(())
    }

    /// Runs one multi-row statement over `rows` (bound as `?1`, a JSON array) and `now_ms`
    /// (`?2`); nothing when there are no rows.
    async fn each(
        &mut self,
        rows: &[Value],
        sql: &'static str,
        now_ms: i64,
        what: &'static str,
    ) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(sql)
            .bind(serde_json::to_string(rows).expect("JSON values always serialize"))
            .bind(now_ms)
            .execute(&mut *self.tx)
            .await
            .map_err(query(what))?;
        Ok(())
    }
}
