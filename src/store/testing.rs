//! Test support: a real SQLite file in a temporary folder, and a PostgreSQL schema of its own
//! in the test database, each opened by the production code.

use super::{OpenOptions, Store};

/// A store on a fresh SQLite file; keep the returned folder alive as long as the store.
///
/// # Panics
/// When the temporary folder or the database cannot be created: tests cannot go on.
pub async fn temp_store() -> (Store, tempfile::TempDir) {
    let (store, dir) = temp_sqlite().await;
    (Store::Sqlite(store), dir)
}

/// [`temp_store`] as the SQLite store itself, for the SQLite adapter's own tests.
///
/// # Panics
/// When the file cannot be made or migrated: tests cannot go on.
pub async fn temp_sqlite() -> (super::SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder can be created");
    let url = format!("sqlite://{}", dir.path().join("trellis.db").display());
    let store = super::SqliteStore::open(&url, OpenOptions::default())
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

/// The variable that names the PostgreSQL database the tests use (`./test.sh` sets it).
pub const POSTGRES_URL_VAR: &str = "TRELLIS_TEST_POSTGRES_URL";

/// A schema of its own in the test database, dropped (with everything in it) when this is
/// dropped.
pub struct TempSchema {
    url: String,
    name: String,
}

impl TempSchema {
    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its
        // own with a runtime of its own drops the schema. A failure leaves a schema behind in
        // a throwaway cluster, which is no reason to fail the test.
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::Connection as _;
                let options = std::str::FromStr::from_str(&url).ok().map(
                    |o: sqlx::postgres::PgConnectOptions| o.options([("lock_timeout", "10s")]),
                )?;
                let mut conn = sqlx::PgConnection::connect_with(&options).await.ok()?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: the test schema {} was not dropped", self.name);
        }
    }
}

/// A PostgreSQL store on a fresh schema of the database at [`POSTGRES_URL_VAR`], opened and
/// migrated by the production code (the connections' `search_path` names the schema, so
/// the tables, functions and `_sqlx_migrations` land in it). Keep the returned guard alive
/// as long as the store; dropping it drops the schema.
///
/// # Panics
/// When the variable is unset (a PostgreSQL case is never skipped silently), or the
/// database cannot be reached: tests cannot go on.
pub async fn temp_postgres() -> (super::PgStore, TempSchema) {
    let (url, guard) = temp_postgres_url().await;
    let store = super::PgStore::open(&url, OpenOptions::default())
        .await
        .expect("a fresh schema opens and migrates");
    (store, guard)
}

/// A fresh schema of the database at [`POSTGRES_URL_VAR`] and a URL whose connections use
/// it (`?options=-c search_path=…`), for what opens a store from a URL, as `serve` does.
/// Dropping the guard drops the schema.
///
/// # Panics
/// As [`temp_postgres`].
pub async fn temp_postgres_url() -> (String, TempSchema) {
    use sqlx::Connection as _;
    let url = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is unset, and the PostgreSQL cases need a database: run \
             ./test.sh, which starts a throwaway cluster, or start one yourself with \
             `eval \"$(tests/support/postgres.sh env)\"` before `cargo test` (and \
             `tests/support/postgres.sh stop` afterwards)"
        )
    });
    let name = format!("t_{}", random_hex());
    let admin: sqlx::postgres::PgConnectOptions = std::str::FromStr::from_str(&url)
        .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} does not parse: {e}"));
    let mut conn = sqlx::PgConnection::connect_with(&admin)
        .await
        .unwrap_or_else(|e| panic!("the database at {POSTGRES_URL_VAR} cannot be reached: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {name}"))
        .execute(&mut conn)
        .await
        .expect("the test role may create a schema");
    conn.close().await.ok();
    let mut scoped =
        url::Url::parse(&url).unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is not a URL: {e}"));
    scoped
        .query_pairs_mut()
        .append_pair("options", &format!("-c search_path={name}"));
    (scoped.to_string(), TempSchema { url, name })
}

/// 16 random hex digits: the standard library's hasher is seeded at random once per thread
/// and differs at each `RandomState::new`; a counter keeps two calls apart regardless.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
