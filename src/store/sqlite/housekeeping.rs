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

    /// Writes computed traits into the customers' attributes (`traits::COMPUTED_ATTRIBUTES`:
    /// `rfm`, `value_tier`, `lifecycle`, `predicted`, `vap`, each replaced whole or removed),
    /// a batch per transaction; a profile that already holds them is not rewritten (its
    /// version stays).
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
                // Every computed attribute is removed, then those set are merged back in, so
                // an object (`rfm`, `predicted`) is replaced whole, never merged key by key.
                let set = serde_json::Value::Object(t.set_attributes()).to_string();
                sqlx::query(WRITE_TRAITS)
                    .bind(&t.customer_id)
                    .bind(&set)
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

/// One customer's computed traits (`?1` the id, `?2` the attributes set, as a JSON object,
/// `?3` now): written only when one of them differs (a JSON text compared with a JSON text:
/// both are minified with keys in order, by serde_json and by SQLite).
const WRITE_TRAITS: &str = "UPDATE customers SET updated_at = ?3,
       profile = json_patch(
         json_remove(profile, '$.attributes.rfm', '$.attributes.value_tier', '$.attributes.lifecycle',
                     '$.attributes.predicted', '$.attributes.vap'),
         json_object('attributes', json(?2)))
     WHERE id = ?1
       AND (json_extract(profile, '$.attributes.rfm') IS NOT json_extract(?2, '$.rfm')
         OR json_extract(profile, '$.attributes.value_tier') IS NOT json_extract(?2, '$.value_tier')
         OR json_extract(profile, '$.attributes.lifecycle') IS NOT json_extract(?2, '$.lifecycle')
         OR json_extract(profile, '$.attributes.predicted') IS NOT json_extract(?2, '$.predicted')
         OR json_extract(profile, '$.attributes.vap') IS NOT json_extract(?2, '$.vap'))";

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
