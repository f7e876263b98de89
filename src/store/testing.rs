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

/// Another connection holding SQLite's write lock (`BEGIN EXCLUSIVE`) on a database file, as
/// another process would, until [`Locker::release`].
pub struct Locker(sqlx::SqliteConnection);

impl Locker {
    /// Takes the write lock on the database at `path`.
    ///
    /// # Panics
    /// When the file cannot be opened or locked: tests cannot go on.
    pub async fn lock(path: &std::path::Path) -> Self {
        use sqlx::Connection as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("the database opens");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("the lock is free");
        Self(conn)
    }

    /// Gives the lock back.
    ///
    /// # Panics
    /// When the rollback fails.
    pub async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut self.0)
            .await
            .expect("the lock is given back");
    }
}
