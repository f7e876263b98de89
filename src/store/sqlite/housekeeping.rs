//! Housekeeping: settings, workflow versions and pause flags, the sweep's paging, and
//! computed traits.

use super::*;

impl SqliteStore {
    /// A setting, such as the unsubscribe signing key; created with `make` when absent.
    ///
    /// # Errors
    /// On a database error.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, Error> {
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT value FROM settings WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx.tx)
            .await
            .map_err(query("reading a setting"))?;
        if let Some(row) = existing {
            return Ok(row.get(0));
        }
        let value = make();
        sqlx::query("INSERT INTO settings (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(&value)
            .execute(&mut *tx.tx)
            .await
            .map_err(query("writing a setting"))?;
        tx.commit().await?;
        Ok(value)
    }

    /// Up to `limit` customer ids after `after`, in order: for sweeps over every customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        let rows = sqlx::query("SELECT id FROM customers WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(query("listing customers"))?;
        Ok(rows
            .iter()
            .filter_map(|r| CustomerId::parse(r.get::<String, _>(0)).ok())
            .collect())
    }

    /// Every customer's `order_completed` statistics, for computed traits.
    ///
    /// # Errors
    /// On a database error.
    pub async fn order_stats(&self) -> Result<Vec<crate::traits::OrderStats>, Error> {
        let rows = sqlx::query(
            "SELECT c.id, COUNT(e.seq), COALESCE(SUM(CAST(json_extract(e.properties, '$.value') AS REAL)), 0.0), MIN(e.at), MAX(e.at)
             FROM customers c LEFT JOIN events e ON e.customer_id = c.id AND e.name = 'order_completed'
             GROUP BY c.id",
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
                first_order: r.get::<Option<i64>, _>(3).map(from_millis),
                last_order: r.get::<Option<i64>, _>(4).map(from_millis),
            })
            .collect())
    }

    /// Writes computed traits into the customers' attributes (`rfm`, `value_tier`,
    /// `lifecycle`), a batch per transaction; a profile that already holds them is not
    /// rewritten (its version stays).
    ///
    /// # Errors
    /// On a database error.
    pub async fn write_traits(
        &self,
        traits: &[crate::traits::Traits],
        now: Timestamp,
    ) -> Result<(), Error> {
        for batch in traits.chunks(1000) {
            let mut tx = self.begin().await?;
            for t in batch {
                let (rfm, tier, stage) = t.attributes();
                sqlx::query(
                    "UPDATE customers SET updated_at = ?5, profile = CASE WHEN ?2 IS NULL
                        THEN json_set(json_remove(profile, '$.attributes.rfm'), '$.attributes.value_tier', ?3, '$.attributes.lifecycle', ?4)
                        ELSE json_set(profile, '$.attributes.rfm', json(?2), '$.attributes.value_tier', ?3, '$.attributes.lifecycle', ?4) END
                     WHERE id = ?1
                       AND (json_extract(profile, '$.attributes.value_tier') IS NOT ?3
                         OR json_extract(profile, '$.attributes.lifecycle') IS NOT ?4
                         OR json_extract(profile, '$.attributes.rfm') IS NOT json(?2))",
                )
                .bind(&t.customer_id)
                .bind(if rfm.is_null() { None } else { Some(rfm.to_string()) })
                .bind(tier.as_str())
                .bind(stage.as_str())
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

impl SqliteTx {
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
        sqlx::query("INSERT OR IGNORE INTO workflow_versions (workflow_id, version, source, path, loaded_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id)
            .bind(version)
            .bind(source)
            .bind(path)
            .bind(millis(now))
            .execute(&mut *self.tx)
            .await
            .map_err(query("recording a workflow version"))?;
        sqlx::query(
            "INSERT INTO workflows (id, current_version) VALUES (?1, ?2)
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
        let done = sqlx::query("UPDATE workflows SET paused = ? WHERE id = ?")
            .bind(paused)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(query("pausing a workflow"))?;
        Ok(done.rows_affected() > 0)
    }
}
