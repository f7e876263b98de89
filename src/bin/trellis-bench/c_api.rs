//! The SQLite step limit through SQLite's own C API (`libsqlite3-sys`, the same bundled
//! SQLite that sqlx links): the same schema, settings and statements as
//! `limits::sqlite_steps`, with prepared statements stepped directly, so the figure is what
//! the database itself allows with no async driver in between.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;
use std::ptr;
use std::time::Instant;

use anyhow::{Context, bail};
use libsqlite3_sys as ffi;

/// One connection, closed on drop.
struct Db(*mut ffi::sqlite3);

/// One prepared statement, finalised on drop.
struct Stmt<'a> {
    raw: *mut ffi::sqlite3_stmt,
    db: &'a Db,
}

impl Db {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let name = CString::new(path.to_string_lossy().as_bytes())?;
        let mut raw = ptr::null_mut();
        // SAFETY: `name` is a valid C string; `raw` receives the handle, closed in `Drop`.
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut raw,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
                ptr::null(),
            )
        };
        let db = Db(raw);
        db.check(rc, "opening the database")?;
        Ok(db)
    }

    fn check(&self, rc: c_int, what: &str) -> anyhow::Result<()> {
        if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_ROW || rc == ffi::SQLITE_DONE {
            return Ok(());
        }
        // SAFETY: the handle is open; sqlite3_errmsg returns a string it owns.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.0)) };
        bail!("{what}: {} (code {rc})", message.to_string_lossy())
    }

    fn exec(&self, sql: &str) -> anyhow::Result<()> {
        let sql = CString::new(sql)?;
        // SAFETY: the handle is open and `sql` a valid C string; no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(self.0, sql.as_ptr(), None, ptr::null_mut(), ptr::null_mut())
        };
        self.check(rc, "executing a statement")
    }

    fn prepare(&self, sql: &str) -> anyhow::Result<Stmt<'_>> {
        let sql = CString::new(sql)?;
        let mut raw = ptr::null_mut();
        // SAFETY: the handle is open; `raw` receives a statement finalised in `Drop`.
        let rc =
            unsafe { ffi::sqlite3_prepare_v2(self.0, sql.as_ptr(), -1, &mut raw, ptr::null_mut()) };
        self.check(rc, "preparing a statement")?;
        Ok(Stmt { raw, db: self })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: every statement borrowed the connection and was finalised first.
        unsafe { ffi::sqlite3_close(self.0) };
    }
}

impl Stmt<'_> {
    fn bind_text(&self, index: c_int, value: &str) -> anyhow::Result<()> {
        let len = c_int::try_from(value.len())?;
        // SAFETY: SQLITE_TRANSIENT makes SQLite copy the bytes before this returns.
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.raw,
                index,
                value.as_ptr().cast::<c_char>(),
                len,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.db.check(rc, "binding a text")
    }

    fn bind_int(&self, index: c_int, value: i64) -> anyhow::Result<()> {
        // SAFETY: the statement is prepared.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.raw, index, value) };
        self.db.check(rc, "binding an integer")
    }

    /// Steps once: `true` when a row is ready.
    fn step(&self) -> anyhow::Result<bool> {
        // SAFETY: the statement is prepared and its parameters bound.
        let rc = unsafe { ffi::sqlite3_step(self.raw) };
        self.db.check(rc, "stepping a statement")?;
        Ok(rc == ffi::SQLITE_ROW)
    }

    fn text(&self, column: c_int) -> String {
        // SAFETY: called only while a row is ready; the pointer lives until the next step.
        unsafe {
            let ptr = ffi::sqlite3_column_text(self.raw, column);
            if ptr.is_null() {
                return String::new();
            }
            CStr::from_ptr(ptr.cast::<c_char>())
                .to_string_lossy()
                .into_owned()
        }
    }

    fn reset(&self) {
        // SAFETY: the statement is prepared; resetting keeps it for the next use.
        unsafe {
            ffi::sqlite3_reset(self.raw);
            ffi::sqlite3_clear_bindings(self.raw);
        }
    }
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared on a connection that outlives it.
        unsafe { ffi::sqlite3_finalize(self.raw) };
    }
}

/// Step transitions per second through the C API on the database at `file`, which
/// `limits::sqlite_steps`' setup has filled with `n` due enrollments: claim up to `batch`,
/// write each one's next state and one outbox row, commit; until none is due.
pub fn steps(
    file: &Path,
    n: usize,
    batch: i64,
    version: &str,
    payload: &str,
    at: i64,
) -> anyhow::Result<f64> {
    let db = Db::open(file).context("opening the database through the C API")?;
    // The busy timeout first: the store's pool may still be closing its last connection.
    db.exec("PRAGMA busy_timeout = 10000")?;
    db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON")?;
    let due = db.prepare(
        "SELECT e.id, e.customer_id, e.state FROM enrollments e JOIN workflows w ON w.id = e.workflow_id
         WHERE e.active = 1 AND e.wake_at <= ?1 AND w.paused = 0 ORDER BY e.wake_at LIMIT ?2",
    )?;
    let save = db.prepare(
        "INSERT INTO enrollments (id, workflow_id, workflow_version, customer_id, active, node, wake_at, state, entered_at, updated_at)
         VALUES (?1, 'standard', ?2, ?3, 0, NULL, NULL, ?4, ?5, ?5)
         ON CONFLICT (id) DO UPDATE SET active = excluded.active, node = excluded.node,
           wake_at = excluded.wake_at, state = excluded.state, updated_at = excluded.updated_at",
    )?;
    let outbox = db.prepare(
        "INSERT INTO messages (key, enrollment_id, workflow_id, node, customer_id, channel, template, status, payload, next_attempt_at, created_at, updated_at, category)
         VALUES (?1, ?2, 'standard', 'tips', ?3, 'email', 'tips', 'pending', ?4, ?5, ?5, ?5, 'marketing')",
    )?;
    let started = Instant::now();
    let mut stepped = 0usize;
    loop {
        db.exec("BEGIN IMMEDIATE")?;
        due.bind_int(1, at)?;
        due.bind_int(2, batch)?;
        let mut rows = Vec::new();
        while due.step()? {
            rows.push((due.text(0), due.text(1), due.text(2)));
        }
        due.reset();
        if rows.is_empty() {
            db.exec("COMMIT")?;
            break;
        }
        for (id, customer, state) in &rows {
            save.bind_text(1, id)?;
            save.bind_text(2, version)?;
            save.bind_text(3, customer)?;
            save.bind_text(4, state)?;
            save.bind_int(5, at)?;
            save.step()?;
            save.reset();
            outbox.bind_text(1, &format!("{id}:tips"))?;
            outbox.bind_text(2, id)?;
            outbox.bind_text(3, customer)?;
            outbox.bind_text(4, payload)?;
            outbox.bind_int(5, at)?;
            outbox.step()?;
            outbox.reset();
        }
        stepped += rows.len();
        db.exec("COMMIT")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop((due, save, outbox));
    if stepped != n {
        bail!("the C API limit stepped {stepped} enrollments, not {n}");
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / seconds)
}
