//! The workflows the runtime knows: the current version of each file, and every version
//! ever loaded (kept in the database), so a customer in flight finishes the journey with the
//! version they entered with. Pure: `scheduler::catalog` registers the files in the store and
//! hands the stored versions to [`Catalog::from_parts`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;

use crate::workflow::{HistoryNeed, SegmentDef, Workflow};

/// Workflows by id and by (id, version).
#[derive(Debug, Default)]
pub struct Catalog {
    current: BTreeMap<String, Arc<Workflow>>,
    versions: HashMap<(String, String), Arc<Workflow>>,
    history: HistoryNeed,
    segments: Vec<SegmentDef>,
}

impl Catalog {
    /// The catalog of the `current` workflows, every `stored` version `(id, version, text,
    /// path)` that still parses, and the segments. A stored version that no longer parses
    /// (written by an older Trellis) is skipped; its enrollments exit as broken when they
    /// next wake.
    pub fn from_parts(
        current: Vec<Workflow>,
        stored: Vec<(String, String, String, String)>,
        segments: Vec<SegmentDef>,
    ) -> Self {
        let mut catalog = Catalog {
            history: crate::workflow::segments_history_need(&segments),
            segments,
            ..Catalog::default()
        };
        for (id, version, text, path) in stored {
            if let Ok(mut wf) = crate::workflow::parse(Path::new(&path), &text) {
                wf.source.version = version.clone();
                catalog.versions.insert((id, version), Arc::new(wf));
            }
        }
        for wf in current {
            catalog.history = catalog.history.max(wf.history_window());
            let wf = Arc::new(wf);
            catalog
                .versions
                .insert((wf.id.to_string(), wf.source.version.clone()), wf.clone());
            catalog.current.insert(wf.id.to_string(), wf);
        }
        catalog
    }

    /// The segments, in definition order.
    pub fn segments(&self) -> &[SegmentDef] {
        &self.segments
    }

    /// The current workflows.
    pub fn current(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.current.values()
    }

    /// Whether there are several current workflows (timeline lines then name theirs).
    pub fn several(&self) -> bool {
        self.current.len() > 1
    }

    /// The current version of one workflow.
    pub fn get(&self, id: &str) -> Option<&Arc<Workflow>> {
        self.current.get(id)
    }

    /// A specific version.
    pub fn version(&self, id: &str, version: &str) -> Option<&Arc<Workflow>> {
        self.versions.get(&(id.to_owned(), version.to_owned()))
    }

    /// How far back event history must be loaded for the conditions of all workflows.
    pub fn history_since(&self, now: Timestamp) -> Option<Timestamp> {
        match self.history {
            HistoryNeed::Nothing => Some(now),
            HistoryNeed::Within(d) => {
                Some(now.checked_sub(d.as_signed()).unwrap_or(Timestamp::MIN))
            }
            HistoryNeed::All => None,
        }
    }
}
