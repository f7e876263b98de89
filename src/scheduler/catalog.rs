//! Registers the workflow files in the store, so every version ever run can be loaded again.

use jiff::Timestamp;

use crate::journey::Catalog;
use crate::store::{self, Store};
use crate::workflow::{SegmentDef, Workflow};

impl Catalog {
    /// Records the current workflows in the store, then loads every stored version.
    ///
    /// # Errors
    /// On a database error.
    pub async fn register(
        store: &Store,
        current: Vec<Workflow>,
        segments: Vec<SegmentDef>,
        now: Timestamp,
    ) -> Result<Self, store::Error> {
        let mut tx = store.begin().await?;
        for wf in &current {
            let text = std::fs::read_to_string(&wf.source.path).unwrap_or_default();
            tx.register_workflow(
                wf.id.as_str(),
                &wf.source.version,
                &text,
                &wf.source.path.display().to_string(),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        let stored = store.workflow_versions().await?;
        Ok(Catalog::from_parts(current, stored, segments))
    }
}
