//! Test support: a real SQLite file in a temporary folder, opened by the production code.

use super::{OpenOptions, Store};

/// A store on a fresh SQLite file; keep the returned folder alive as long as the store.
///
/// # Panics
/// When the temporary folder or the database cannot be created: tests cannot go on.
pub async fn temp_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder can be created");
    let url = format!("sqlite://{}", dir.path().join("trellis.db").display());
    let store = Store::open(&url, OpenOptions::default())
        .await
        .expect("a fresh database opens and migrates");
    (store, dir)
}
