//! Housekeeping on PostgreSQL: workflow versions and pause flags, the sweep's paging, and
//! computed traits, as `store::sqlite::housekeeping` does them.

use std::collections::BTreeSet;

use super::*;
use crate::store::millis;

impl PgStore {
    /// A setting, such as the unsubscribe signing key; created with `make` when absent. Two
    /// runners starting together agree: the first insert wins and both read it.
    ///
    /// # Errors
    /// On a database error.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, Error> {
        let read = |name: &str| {
            sqlx::query_scalar::<_, String>("SELECT value FROM settings WHERE name = $1")
                .bind(name.to_owned())
                .fetch_optional(&self.pool)
        };
        if let Some(value) = read(name).await.map_err(query("reading a setting"))? {
            return Ok(value);
        }
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(make())
            .execute(&self.pool)
            .await
            .map_err(query("writing a setting"))?;
        read(name)
            .await
            .map_err(query("reading a setting"))?
            .ok_or(Error::Constraint(format!(
                "the setting {name} vanished as it was made"
            )))
    }

    /// The workflows paused.
    ///
    /// # Errors
    /// On a database error.
    pub async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        let rows = sqlx::query("SELECT id FROM workflows WHERE paused")
            .fetch_all(&self.pool)
            .await
            .map_err(query("reading paused workflows"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Up to `limit` customer ids after `after`, in bytewise order (ids are `COLLATE "C"`),
    /// each leased to this runner: the sweep's pages. The sweep's writes are then fenced as
    /// the scheduler's are; a customer another runner holds is skipped until the next sweep
    /// (a page of nothing but such customers is passed over, not taken for the end).
    ///
    /// # Errors
    /// On a database error.
    pub async fn customer_ids_after(
        &self,
        after: Option<&str>,
        n: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        let mut after = after.unwrap_or("").to_owned();
        loop {
            let mut tx = self.begin().await?;
            let leased = tx
                .lease_customers(
                    "SELECT id AS customer_id, id AS first FROM customers
                     WHERE id > $4 ORDER BY id LIMIT $3",
                    n,
                    super::journey::Arg::Text(&after),
                )
                .await?;
            let page_end: Option<String> = sqlx::query_scalar(
                "SELECT max(id) FROM (SELECT id FROM customers WHERE id > $1 ORDER BY id LIMIT $2) p",
            )
            .bind(&after)
            .bind(limit(n))
            .fetch_one(&mut *tx.tx)
            .await
            .map_err(query("listing customers"))?;
            tx.commit().await?;
            if !leased.is_empty() {
                let mut ids: Vec<CustomerId> = leased
                    .into_iter()
                    .filter_map(|id| CustomerId::parse(id).ok())
                    .collect();
                ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                return Ok(ids);
            }
            match page_end {
                Some(end) => after = end,
                None => return Ok(Vec::new()),
            }
        }
    }

    /// Every customer's `order_completed` statistics, in id order. A value is read as
    /// SQLite's `CAST(… AS REAL)` reads it (`trellis_real` in the migration), so a string
    /// that is no number counts 0 instead of failing the query.
    ///
    /// # Errors
    /// On a database error.
    pub async fn order_stats(&self) -> Result<Vec<crate::traits::OrderStats>, Error> {
        let rows = sqlx::query(
            "SELECT c.id, COUNT(e.seq), COALESCE(SUM(trellis_real(e.properties -> 'value')), 0.0)::float8,
                    MIN(e.at), MAX(e.at)
             FROM customers c LEFT JOIN events e ON e.customer_id = c.id AND e.name = 'order_completed'
             GROUP BY c.id ORDER BY c.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("aggregating orders"))?;
        Ok(rows
            .iter()
            .map(|r| crate::traits::OrderStats {
                customer_id: r.get(0),
                orders: r.get::<i64, _>(1).try_into().unwrap_or(0),
                revenue: r.get(2),
                first_order: at(r.get(3)),
                last_order: at(r.get(4)),
            })
            .collect())
    }

    /// Writes computed traits into the customers' attributes (`traits::COMPUTED_ATTRIBUTES`,
    /// each replaced whole or removed), a batch per transaction; a profile that already holds
    /// them is not rewritten (its version stays).
    ///
    /// # Errors
    /// On a database error.
    pub async fn write_traits(
        &self,
        traits: &[crate::traits::Traits],
        now: Timestamp,
    ) -> Result<(), Error> {
        let names: Vec<&str> = crate::traits::COMPUTED_ATTRIBUTES.to_vec();
        for batch in traits.chunks(1000) {
            let mut tx = self.begin().await?;
            for t in batch {
                // `attributes` loses every computed key, then gets those set (made when
                // missing, as SQLite's json_patch does); jsonb compares by value.
                let set = serde_json::Value::Object(t.set_attributes()).to_string();
                sqlx::query(
                    "UPDATE customers SET updated_at = $4,
                        profile = profile || jsonb_build_object('attributes',
                            (COALESCE(profile -> 'attributes', '{}'::jsonb) - $3::text[]) || $2::jsonb)
                     WHERE id = $1
                       AND COALESCE(profile -> 'attributes', '{}'::jsonb)
                           IS DISTINCT FROM (COALESCE(profile -> 'attributes', '{}'::jsonb) - $3::text[]) || $2::jsonb",
                )
                .bind(&t.customer_id)
                .bind(&set)
                .bind(&names)
                .bind(millis(now))
                .execute(&mut *tx.tx)
                .await
                .map_err(query("writing computed traits"))?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

impl PgTx {
    /// Records a loaded workflow version and makes it current; keeps the paused flag.
    ///
    /// # Errors
    /// On a database error.
    pub async fn register_workflow(
        &mut self,
        id: &str,
        version: &str,
        source: &str,
        path: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO workflow_versions (workflow_id, version, source, path, loaded_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(version)
        .bind(source)
        .bind(path)
        .bind(millis(now))
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a workflow version"))?;
        sqlx::query(
            "INSERT INTO workflows (id, current_version) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET current_version = excluded.current_version",
        )
        .bind(id)
        .bind(version)
        .execute(&mut *self.tx)
        .await
        .map_err(query("recording a workflow"))?;
        Ok(())
    }

    /// Pauses or resumes a workflow; false when no such workflow is known.
    ///
    /// # Errors
    /// On a database error.
    pub async fn set_paused(&mut self, id: &str, paused: bool) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE workflows SET paused = $1 WHERE id = $2")
            .bind(paused)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(query("pausing a workflow"))?;
        Ok(done.rows_affected() > 0)
    }
}
