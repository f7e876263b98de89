//! The journey port's batch calls on PostgreSQL: a wave of customers loaded in a fixed
//! number of queries from one `REPEATABLE READ READ ONLY` snapshot, and its results written
//! in a fixed number of multi-row statements, fenced by the customers' versions. Ids travel
//! as one `text[]` (`= ANY($1)`), rows as one `jsonb` array read with
//! `ROWS FROM (jsonb_to_recordset(...) AS (...)) WITH ORDINALITY` where order matters (a column
//! definition list and `WITH ORDINALITY` only go together inside `ROWS FROM`; the form in
//! docs/design-postgres.md §4 is refused with SQLSTATE 42601), `jsonb_to_recordset` alone
//! elsewhere (docs/design-postgres.md §4).
//!
//! PostgreSQL refuses a key twice in one `ON CONFLICT DO UPDATE` (SQLSTATE 21000) where
//! SQLite applies both rows in turn, so each `DO UPDATE` batch is deduplicated first, to
//! what SQLite's rows in turn leave: for most tables the last row for a key, at the place
//! of the first; for messages, the rule "written once unless held" applied in order.

use std::collections::HashMap;
use std::hash::Hash;

use serde_json::{Value, json};

use super::*;
use crate::engine::Enrollment;
use crate::journey::{CustomerState, CustomerWrite, FireWrite, LoadSpec};
use crate::model::Channel;
use crate::store::{MessageStatus, millis};

/// The ids as PostgreSQL's `text[]` takes them.
fn id_array(ids: &[CustomerId]) -> Vec<&str> {
    ids.iter().map(CustomerId::as_str).collect()
}

fn channel_of(name: &str) -> Channel {
    if name == "sms" {
        Channel::Sms
    } else {
        Channel::Email
    }
}

/// `rows` with one row per key: the last row for a key, at the place of its first.
fn dedup_last<K: Eq + Hash>(rows: Vec<Value>, key: impl Fn(&Value) -> K) -> Vec<Value> {
    let mut place: HashMap<K, usize> = HashMap::new();
    let mut out: Vec<Value> = Vec::with_capacity(rows.len());
    for row in rows {
        match place.entry(key(&row)) {
            std::collections::hash_map::Entry::Occupied(at) => out[*at.get()] = row,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push(row);
            }
        }
    }
    out
}

/// `messages` with one row per key, as SQLite's row-by-row upsert leaves it: a later row
/// for a key replaces what an upsert replaces (status, payload, channel, note, cap mark) only
/// while the row before it is `held`; the other columns stay the first row's.
fn merge_messages(rows: Vec<Value>) -> Vec<Value> {
    let mut place: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Value> = Vec::with_capacity(rows.len());
    for row in rows {
        let key = field(&row, "key");
        if let Some(&at) = place.get(&key) {
            let kept = &mut out[at];
            if field(kept, "status") == MessageStatus::Held.as_str() {
                for name in ["status", "payload", "channel", "note", "counts_at"] {
                    kept[name] = row[name].clone();
                }
            }
        } else {
            place.insert(key, out.len());
            out.push(row);
        }
    }
    out
}

/// A text field of a JSON row, for dedup keys.
fn field(row: &Value, name: &str) -> String {
    row.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl PgStore {
    /// What the journey shell consults about a wave of distinct customers, in `ids`' order,
    /// from one `REPEATABLE READ READ ONLY` snapshot outside any write transaction; the
    /// write that follows is fenced by the versions read here.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        let mut snapshot = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(query("beginning a read"))?;
        let states = load_wave(&mut snapshot, ids, spec).await?;
        snapshot.commit().await.map_err(query("ending a read"))?;
        Ok(states)
    }
}

/// Loads a wave of distinct customers on `conn`, in `ids`' order: at most eight queries.
async fn load_wave(
    conn: &mut sqlx::PgConnection,
    ids: &[CustomerId],
    spec: &LoadSpec,
) -> Result<Vec<CustomerState>, Error> {
    let id_list = id_array(ids);
    let mut states: HashMap<&str, CustomerState> = ids
        .iter()
        .map(|id| (id.as_str(), CustomerState::default()))
        .collect();

    let rows = sqlx::query("SELECT id, profile::text, version FROM customers WHERE id = ANY($1)")
        .bind(&id_list)
        .fetch_all(&mut *conn)
        .await
        .map_err(query("reading customers"))?;
    for r in &rows {
        let customer = customer_from(r.get::<&str, _>(1))?;
        if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
            state.customer = Some(customer);
            state.version = Some(r.get(2));
        }
    }

    let rows = sqlx::query(
        "SELECT id, name, at, properties::text, customer_id FROM events
         WHERE customer_id = ANY($1) AND at >= $2
         ORDER BY customer_id, at, seq",
    )
    .bind(&id_list)
    .bind(spec.history_since.map_or(i64::MIN, millis))
    .fetch_all(&mut *conn)
    .await
    .map_err(query("reading event history"))?;
    for r in &rows {
        if let Some(state) = states.get_mut(r.get::<&str, _>(4)) {
            state.history.push(event_from_row(r)?);
        }
    }

    let rows =
        sqlx::query("SELECT customer_id, segment FROM segment_members WHERE customer_id = ANY($1)")
            .bind(&id_list)
            .fetch_all(&mut *conn)
            .await
            .map_err(query("reading segment membership"))?;
    for r in &rows {
        if let Some(state) = states.get_mut(r.get::<&str, _>(0)) {
            state.segments.insert(r.get(1));
        }
    }

    if let Some(since) = spec.sends_since {
        // Exactly the rows written with a cap mark.
        let rows = sqlx::query(
            "SELECT customer_id, channel, counts_at FROM messages
             WHERE customer_id = ANY($1) AND counts_at > $2 AND counts_at IS NOT NULL",
        )
        .bind(&id_list)
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
            "SELECT customer_id, state::text FROM enrollments
             WHERE customer_id = ANY($1) AND active
             ORDER BY customer_id, entered_at, id",
        )
        .bind(&id_list)
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
             WHERE customer_id = ANY($1)
             GROUP BY customer_id, workflow_id",
        )
        .bind(&id_list)
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
        let rows = sqlx::query(
            "SELECT customer_id, workflow_id, occurrence FROM trigger_fires
             WHERE customer_id = ANY($1) AND occurrence >= $2",
        )
        .bind(&id_list)
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
                    c.address(ch).map(
                        |a| json!({"customer_id": c.id.as_str(), "channel": ch.as_str(), "address": a}),
                    )
                })
        })
        .collect();
    if !addresses.is_empty() {
        let rows = sqlx::query(
            "SELECT a.customer_id, s.channel, a.address, s.reason
             FROM jsonb_to_recordset($1::jsonb) AS a(customer_id text, channel text, address text)
             JOIN suppressions s ON s.channel = a.channel AND s.address = lower(a.address)",
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

impl PgTx {
    /// Writes what the journey shell planned for a wave of distinct customers: at most
    /// twelve statements after the fence, each skipped when it has no rows. The fence locks
    /// the customers' rows (`FOR UPDATE`, in id order) and compares their versions with those
    /// the plans were made on; a write planned on another version is skipped whole, and its
    /// customer returned. The locks hold to commit, so no profile changes in between.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        let ids: Vec<CustomerId> = writes.iter().filter_map(|w| w.id.clone()).collect();
        // The leases first (claims lock only them, ingest only customers: one order, no
        // cycle), held until commit, so no claim takes a customer in the middle of this.
        let leases = sqlx::query(
            "SELECT customer_id, token, expires_at < trellis_now_ms() FROM customer_leases
             WHERE customer_id = ANY($1) ORDER BY customer_id FOR UPDATE",
        )
        .bind(id_array(&ids))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("checking customer leases"))?;
        // A customer this runner leased is written while the token is still its own (even
        // past expiry, if nobody took it: nobody else did the work); one it holds nothing
        // for (a caller outside the drive, such as a test) only while nobody's lease is
        // live. The drive's writes, the sweep's included, are always of leased customers.
        let lost: std::collections::HashSet<&str> = leases
            .iter()
            .filter(|r| {
                let (id, token, free) =
                    (r.get::<&str, _>(0), r.get::<i64, _>(1), r.get::<bool, _>(2));
                match self.leases.customer_token(id) {
                    Some(held) => held != token,
                    None => !free,
                }
            })
            .map(|r| r.get::<&str, _>(0))
            .collect();
        let rows = sqlx::query(
            "SELECT id, version FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(id_array(&ids))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(query("reading customer versions"))?;
        let versions: HashMap<&str, i64> = rows
            .iter()
            .map(|r| (r.get::<&str, _>(0), r.get(1)))
            .collect();
        // A lost lease reads as a version no plan was made on.
        let (writes, conflicted) = crate::store::ports::fenced(writes, |id| {
            if lost.contains(id) {
                Some(i64::MIN)
            } else {
                versions.get(id).copied()
            }
        });
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
            joined.extend(
                w.joined
                    .iter()
                    .map(|s| json!({"segment": s, "customer_id": id})),
            );
            left.extend(
                w.left
                    .iter()
                    .map(|s| json!({"segment": s, "customer_id": id})),
            );
            messages.extend(w.messages.iter().map(|m| {
                json!({
                    "key": m.key, "enrollment_id": m.enrollment_id, "workflow_id": m.workflow_id,
                    "node": m.node, "customer_id": m.customer_id,
                    "channel": m.payload.channel_name(), "template": m.template,
                    "status": m.status.as_str(),
                    "payload": m.payload,
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
                    "active": e.is_active(),
                    "node": e.current_node().map(|n| n.as_str()),
                    "wake_at": e.next_wake().map(millis),
                    "state": e,
                    "entered_at": millis(e.entered_at),
                })
            }));
            for fire in &w.fires {
                let (workflow_id, at) = match fire {
                    FireWrite::Schedule { workflow_id, at } => (workflow_id, *at),
                    FireWrite::Advance { workflow_id, next } => (workflow_id, *next),
                    FireWrite::Fired {
                        workflow_id,
                        occurrence,
                    } => (workflow_id, Some(*occurrence)),
                };
                let row =
                    json!({"workflow_id": workflow_id, "customer_id": id, "at": at.map(millis)});
                match fire {
                    FireWrite::Schedule { at: Some(_), .. } => scheduled.push(row),
                    FireWrite::Schedule { at: None, .. } => unscheduled.push(row),
                    FireWrite::Advance { next: Some(_), .. } => advanced.push(row),
                    FireWrite::Advance { next: None, .. } => ended.push(row),
                    FireWrite::Fired { .. } => fired.push(row),
                }
            }
            if let Some(profile) = &w.profile {
                profiles.push(json!({"id": id, "profile": profile}));
            }
            if let Some(seq) = w.processed {
                processed.push(json!({"customer_id": id, "seq": seq}));
            }
        }
        // Each `DO UPDATE` batch has one row per key (see the module's doc).
        let messages = merge_messages(messages);
        let enrollments = dedup_last(enrollments, |r| (field(r, "customer_id"), field(r, "id")));
        let scheduled = dedup_last(scheduled, |r| {
            (field(r, "customer_id"), field(r, "workflow_id"))
        });
        let profiles = dedup_last(profiles, |r| field(r, "id"));
        if !messages.is_empty() {
            // The dispatchers hear of the new messages at commit (LISTEN trellis_due).
            sqlx::query("SELECT pg_notify('trellis_due', 'outbox')")
                .execute(&mut *self.tx)
                .await
                .map_err(query("notifying the dispatchers"))?;
        }

        self.each(
            &joined,
            "INSERT INTO segment_members (customer_id, segment, since)
             SELECT r.customer_id, r.segment, $2
             FROM jsonb_to_recordset($1::jsonb) AS r(customer_id text, segment text)
             ON CONFLICT DO NOTHING",
            now_ms,
            "writing segment membership",
        )
        .await?;
        self.each(
            &left,
            "DELETE FROM segment_members m
             USING jsonb_to_recordset($1::jsonb) AS r(customer_id text, segment text)
             WHERE m.customer_id = r.customer_id AND m.segment = r.segment AND $2::bigint IS NOT NULL",
            now_ms,
            "writing segment membership",
        )
        .await?;
        // A key is written once, unless its row is held.
        self.each(
            &messages,
            "INSERT INTO messages (customer_id, key, enrollment_id, workflow_id, node, channel, template,
                                   status, payload, next_attempt_at, last_error, created_at, updated_at,
                                   category, counts_at)
             SELECT r.customer_id, r.key, r.enrollment_id, r.workflow_id, r.node, r.channel, r.template,
                    r.status, r.payload, $2, r.note, $2, $2, r.category, r.counts_at
             FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (key text, enrollment_id text, workflow_id text, node text, customer_id text,
                       channel text, template text, status text, payload jsonb, note text,
                       category text, counts_at bigint)) WITH ORDINALITY AS r
             ORDER BY r.ordinality
             ON CONFLICT (customer_id, key) DO UPDATE SET status = excluded.status,
               payload = excluded.payload, channel = excluded.channel,
               last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at,
               updated_at = excluded.updated_at, counts_at = excluded.counts_at
             WHERE messages.status = 'held'",
            now_ms,
            "writing outbox messages",
        )
        .await?;
        // Credited to the workflow's last message sent within the attribution window.
        self.each(
            &conversions,
            "INSERT INTO conversions (customer_id, enrollment_id, workflow_id, event, value, arm, message_key, at)
             SELECT c.customer_id, c.enrollment_id, c.workflow_id, c.event, c.value, c.arm,
                    (SELECT m.key FROM messages m
                      WHERE m.customer_id = c.customer_id AND m.workflow_id = c.workflow_id
                        AND m.status = 'sent' AND m.sent_at >= c.since
                      ORDER BY m.sent_at DESC, m.key LIMIT 1),
                    $2
             FROM jsonb_to_recordset($1::jsonb) AS c(enrollment_id text, workflow_id text,
                  customer_id text, event text, value double precision, arm text, since bigint)
             ON CONFLICT DO NOTHING",
            now_ms,
            "recording conversions",
        )
        .await?;
        // In order: an exit is written before the entry that follows it (the one-active
        // index is checked row by row).
        self.each(
            &enrollments,
            "INSERT INTO enrollments (customer_id, id, workflow_id, workflow_version, active, node,
                                      wake_at, state, entered_at, updated_at)
             SELECT r.customer_id, r.id, r.workflow_id, r.workflow_version, r.active, r.node,
                    r.wake_at, r.state, r.entered_at, $2
             FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (customer_id text, id text, workflow_id text, workflow_version text,
                       active boolean, node text, wake_at bigint, state jsonb, entered_at bigint)) WITH ORDINALITY AS r
             ORDER BY r.ordinality
             ON CONFLICT (customer_id, id) DO UPDATE SET active = excluded.active,
               node = excluded.node, wake_at = excluded.wake_at, state = excluded.state,
               updated_at = excluded.updated_at",
            now_ms,
            "writing enrollments",
        )
        .await?;
        // An occurrence already due and not yet handled is kept.
        self.each(
            &scheduled,
            "INSERT INTO scheduled_fires (customer_id, workflow_id, fire_at)
             SELECT r.customer_id, r.workflow_id, r.at
             FROM jsonb_to_recordset($1::jsonb) AS r(workflow_id text, customer_id text, at bigint)
             ON CONFLICT (customer_id, workflow_id) DO UPDATE SET fire_at = excluded.fire_at
             WHERE scheduled_fires.fire_at > $2",
            now_ms,
            "scheduling triggers",
        )
        .await?;
        self.each(
            &unscheduled,
            "DELETE FROM scheduled_fires f
             USING jsonb_to_recordset($1::jsonb) AS r(workflow_id text, customer_id text)
             WHERE f.customer_id = r.customer_id AND f.workflow_id = r.workflow_id AND f.fire_at > $2",
            now_ms,
            "scheduling triggers",
        )
        .await?;
        self.each(
            &advanced,
            "UPDATE scheduled_fires f SET fire_at = r.at
             FROM jsonb_to_recordset($1::jsonb) AS r(workflow_id text, customer_id text, at bigint)
             WHERE f.customer_id = r.customer_id AND f.workflow_id = r.workflow_id
               AND $2::bigint IS NOT NULL",
            now_ms,
            "advancing triggers",
        )
        .await?;
        self.each(
            &ended,
            "DELETE FROM scheduled_fires f
             USING jsonb_to_recordset($1::jsonb) AS r(workflow_id text, customer_id text)
             WHERE f.customer_id = r.customer_id AND f.workflow_id = r.workflow_id
               AND $2::bigint IS NOT NULL",
            now_ms,
            "advancing triggers",
        )
        .await?;
        self.each(
            &fired,
            "INSERT INTO trigger_fires (customer_id, workflow_id, occurrence)
             SELECT r.customer_id, r.workflow_id, r.at
             FROM jsonb_to_recordset($1::jsonb) AS r(workflow_id text, customer_id text, at bigint)
             WHERE $2::bigint IS NOT NULL
             ON CONFLICT DO NOTHING",
            now_ms,
            "recording trigger occurrences",
        )
        .await?;
        self.each(
            &profiles,
            "INSERT INTO customers (id, profile, created_at, updated_at)
             SELECT r.id, r.profile, $2, $2
             FROM jsonb_to_recordset($1::jsonb) AS r(id text, profile jsonb)
             ORDER BY r.id COLLATE \"C\"
             ON CONFLICT (id) DO UPDATE SET profile = excluded.profile, updated_at = excluded.updated_at",
            now_ms,
            "writing customers",
        )
        .await?;
        self.each(
            &processed,
            "UPDATE events e SET processed = true
             FROM jsonb_to_recordset($1::jsonb) AS r(customer_id text, seq bigint)
             WHERE e.customer_id = r.customer_id AND e.seq = r.seq AND $2::bigint IS NOT NULL",
            now_ms,
            "marking events processed",
        )
        .await?;
        Ok(())
    }

    /// Runs one multi-row statement over `rows` (bound as `$1`, a `jsonb` array) and
    /// `now_ms` (`$2`); nothing when there are no rows.
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
