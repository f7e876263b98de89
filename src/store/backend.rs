//! [`Store`] and [`Tx`]: the database `serve`, the CLI and the tools open, SQLite or
//! PostgreSQL by the URL's scheme. Each method hands the call to the backend's own
//! implementation (`store::sqlite`, `store::postgres`) and nothing else, so a caller never
//! knows which one it holds (docs/design-postgres.md §2).

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::postgres::{PgStore, PgTx};
use super::sqlite::{SqliteStore, SqliteTx};
use super::{
    AttemptOutcome, ConversionView, DueFire, EnrollmentView, Error, Inserted, MessageView,
    NewMessage, OpenOptions, OutboxMessage, StoredEvent,
};
use crate::engine::Enrollment;
use crate::journey::{CustomerState, CustomerWrite, LoadSpec};
use crate::model::{Channel, Customer, CustomerId, Event};
use crate::traits::{OrderStats, Traits};

/// The database: SQLite (one runner, the default) or PostgreSQL. Clones share the pool.
#[derive(Debug, Clone)]
pub enum Store {
    /// A SQLite file (`sqlite://PATH`).
    Sqlite(SqliteStore),
    /// A PostgreSQL database (`postgres://…`).
    Postgres(PgStore),
}

/// One write transaction of a [`Store`]: all or nothing. Dropped without [`Tx::commit`], it
/// rolls back.
pub enum Tx {
    /// On SQLite: `BEGIN IMMEDIATE`, holding the write lock.
    Sqlite(SqliteTx),
    /// On PostgreSQL: READ COMMITTED.
    Postgres(PgTx),
}

/// Hands `$call` to whichever backend `$on` holds, naming it `$b`.
macro_rules! on_backend {
    ($on:expr, $kind:ident, $b:ident => $call:expr) => {
        match $on {
            $kind::Sqlite($b) => $call,
            $kind::Postgres($b) => $call,
        }
    };
}

/// The schemes [`Store::open`] takes for PostgreSQL.
const POSTGRES_SCHEMES: [&str; 2] = ["postgres:", "postgresql:"];

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`:
    /// `sqlite://trellis.db`, or `postgres://user:password@host/db` for PostgreSQL 13+.
    ///
    /// # Errors
    /// When the URL is of neither kind, or the database cannot be opened or migrated.
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, Error> {
        if POSTGRES_SCHEMES.iter().any(|s| url.starts_with(s)) {
            return PgStore::open(url, options).await.map(Store::Postgres);
        }
        SqliteStore::open(url, options).await.map(Store::Sqlite)
    }

    /// Whether only one runner can use this database: SQLite, whose one write lock and
    /// startup recovery assume a single `serve`.
    pub fn is_single_runner(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// The SQLite pool, for tools that measure the database itself (`trellis-bench`) and
    /// tests that look at the file; `None` on PostgreSQL.
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self {
            Store::Sqlite(s) => Some(s.pool()),
            Store::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for tests that look at what was stored; `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.pool()),
        }
    }

    /// This runner's id on PostgreSQL (`<host>/<pid>/<random>`); `None` on SQLite.
    pub fn runner(&self) -> Option<&str> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.runner()),
        }
    }

    /// Whether a delivery of the claimed message `key` may start: on PostgreSQL, this
    /// runner's claim on it is recent enough that no other runner can have taken it; on
    /// SQLite, always.
    pub fn still_claimed(&self, key: &str) -> bool {
        match self {
            Store::Sqlite(_) => true,
            Store::Postgres(s) => s.still_claimed(key),
        }
    }

    /// Whether this runner is the one that does the singleton job `name` (the sweep) now:
    /// on PostgreSQL, it holds or took that leader lease; on SQLite, always.
    ///
    /// # Errors
    /// On a database error.
    pub async fn lead(&self, name: &str) -> Result<bool, Error> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(s) => s.lead(name).await,
        }
    }

    /// Until `shutdown`, wakes this runner's scheduler (`events`) and dispatcher (`outbox`)
    /// when another runner's API or scheduler commits new work (PostgreSQL's
    /// `LISTEN`/`NOTIFY`). On SQLite, one process does everything and nudges itself: this
    /// returns at once.
    pub async fn listen_for_work(
        &self,
        events: std::sync::Arc<tokio::sync::Notify>,
        outbox: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if let Store::Postgres(s) = self {
            s.listen_for_work(events, outbox, shutdown).await;
        }
    }

    /// Gives back this runner's customer leases (at shutdown); nothing on SQLite.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_leases(&self) -> Result<(), Error> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.release_leases().await,
        }
    }

    /// Starts a write transaction.
    ///
    /// # Errors
    /// When none can be had in time.
    pub async fn begin(&self) -> Result<Tx, Error> {
        match self {
            Store::Sqlite(s) => s.begin().await.map(Tx::Sqlite),
            Store::Postgres(s) => s.begin().await.map(Tx::Postgres),
        }
    }

    /// Whether writes work now: `Err` with the reason while they fail for a reason that
    /// passes, until one commits again.
    ///
    /// # Errors
    /// The reason writes fail.
    pub async fn write_health(&self) -> Result<(), String> {
        on_backend!(self, Store, s => s.write_health().await)
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), Error> {
        on_backend!(self, Store, s => s.ping().await)
    }

    /// A setting, such as the unsubscribe signing key; created with `make` when absent.
    ///
    /// # Errors
    /// On a database error.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, Error> {
        on_backend!(self, Store, s => s.setting_or_insert(name, make).await)
    }

    /// Messages that were on the wire when the process stopped go back to pending. Called
    /// once at startup, and only where one runner owns the database
    /// ([`Store::is_single_runner`]).
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_in_flight(&self) -> Result<u64, Error> {
        on_backend!(self, Store, s => s.release_in_flight().await)
    }

    /// Puts claimed messages that were never attempted back to `pending`. Returns how many.
    ///
    /// # Errors
    /// On a database error.
    pub async fn release_claims(&self, keys: &[String]) -> Result<u64, Error> {
        on_backend!(self, Store, s => s.release_claims(keys).await)
    }

    /// Claims up to `limit` messages due at `now` whose workflow is not paused.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, Error> {
        on_backend!(self, Store, s => s.claim_messages(now, limit).await)
    }

    /// Claims up to each `(channel, limit)` pair's limit of that channel's due messages, in
    /// one transaction; each pair's claimed messages, in the pairs' order.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn claim_messages_per_channel(
        &self,
        now: Timestamp,
        limits: &[(&str, u32)],
    ) -> Result<Vec<Vec<OutboxMessage>>, Error> {
        on_backend!(self, Store, s => s.claim_messages_per_channel(now, limits).await)
    }

    /// Records a batch of attempts' outcomes in a transaction of its own.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_attempts(
        &self,
        outcomes: &[(String, u32, AttemptOutcome)],
        now: Timestamp,
    ) -> Result<(), Error> {
        on_backend!(self, Store, s => s.record_attempts(outcomes, now).await)
    }

    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        on_backend!(self, Store, s => s.customer(id).await)
    }

    /// The customer's most recent events, newest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn recent_events(&self, id: &CustomerId, limit: u32) -> Result<Vec<Event>, Error> {
        on_backend!(self, Store, s => s.recent_events(id, limit).await)
    }

    /// The customer's enrollments, newest first.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn enrollments_of(&self, id: &CustomerId) -> Result<Vec<EnrollmentView>, Error> {
        on_backend!(self, Store, s => s.enrollments_of(id).await)
    }

    /// The customer's messages, newest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn messages_of(&self, id: &CustomerId) -> Result<Vec<MessageView>, Error> {
        on_backend!(self, Store, s => s.messages_of(id).await)
    }

    /// The customer's conversions, newest first.
    ///
    /// # Errors
    /// On a database error.
    pub async fn conversions_of(&self, id: &CustomerId) -> Result<Vec<ConversionView>, Error> {
        on_backend!(self, Store, s => s.conversions_of(id).await)
    }

    /// Active enrollments per workflow.
    ///
    /// # Errors
    /// On a database error.
    pub async fn active_counts(&self) -> Result<Vec<(String, i64)>, Error> {
        on_backend!(self, Store, s => s.active_counts().await)
    }

    /// The earliest wake-up among active enrollments of workflows not paused.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_wake(&self) -> Result<Option<Timestamp>, Error> {
        on_backend!(self, Store, s => s.next_wake().await)
    }

    /// The earliest pending message attempt.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_attempt(&self) -> Result<Option<Timestamp>, Error> {
        on_backend!(self, Store, s => s.next_attempt().await)
    }

    /// The earliest pending attempt of one channel's messages.
    ///
    /// # Errors
    /// On a database error.
    pub async fn next_attempt_of(&self, channel: &str) -> Result<Option<Timestamp>, Error> {
        on_backend!(self, Store, s => s.next_attempt_of(channel).await)
    }

    /// Every stored workflow version: `(workflow id, version, YAML text, path)`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn workflow_versions(&self) -> Result<Vec<(String, String, String, String)>, Error> {
        on_backend!(self, Store, s => s.workflow_versions().await)
    }

    /// The ids of paused workflows.
    ///
    /// # Errors
    /// On a database error.
    pub async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        on_backend!(self, Store, s => s.paused().await)
    }

    /// The members of a segment, in id order.
    ///
    /// # Errors
    /// On a database error.
    pub async fn segment_members(&self, segment: &str) -> Result<Vec<String>, Error> {
        on_backend!(self, Store, s => s.segment_members(segment).await)
    }

    /// Messages counted by `(channel, status)`, in that order.
    ///
    /// # Errors
    /// On a database error.
    pub async fn message_counts(&self) -> Result<Vec<(String, String, i64)>, Error> {
        on_backend!(self, Store, s => s.message_counts().await)
    }

    /// Up to `limit` customer ids after `after`, in bytewise id order.
    ///
    /// # Errors
    /// On a database error.
    pub async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        on_backend!(self, Store, s => s.customer_ids_after(after, limit).await)
    }

    /// Every customer's `order_completed` statistics.
    ///
    /// # Errors
    /// On a database error.
    pub async fn order_stats(&self) -> Result<Vec<OrderStats>, Error> {
        on_backend!(self, Store, s => s.order_stats().await)
    }

    /// Writes computed traits into the customers' attributes.
    ///
    /// # Errors
    /// On a database error.
    pub async fn write_traits(&self, traits: &[Traits], now: Timestamp) -> Result<(), Error> {
        on_backend!(self, Store, s => s.write_traits(traits, now).await)
    }

    /// What the shell consults about `ids`, from one snapshot.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        on_backend!(self, Store, s => s.load_customers(ids, spec).await)
    }
}

impl Tx {
    /// Ends a transaction that wrote nothing.
    ///
    /// # Errors
    /// When the database refuses even that.
    pub async fn end_unwritten(self) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.end_unwritten().await)
    }

    /// Commits.
    ///
    /// # Errors
    /// When the commit fails; nothing was written.
    pub async fn commit(self) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.commit().await)
    }

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
        on_backend!(self, Tx, t => t.register_workflow(id, version, source, path, now).await)
    }

    /// Pauses or resumes a workflow. False when there is no such workflow.
    ///
    /// # Errors
    /// On a database error.
    pub async fn set_paused(&mut self, id: &str, paused: bool) -> Result<bool, Error> {
        on_backend!(self, Tx, t => t.set_paused(id, paused).await)
    }

    /// Creates or replaces a customer's profile.
    ///
    /// # Errors
    /// On a database error.
    pub async fn put_customer(&mut self, customer: &Customer, now: Timestamp) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.put_customer(customer, now).await)
    }

    /// Stores an event, creating a minimal profile for an unknown customer; a resent id is
    /// a duplicate.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_event(
        &mut self,
        customer_id: &CustomerId,
        event: &Event,
        now: Timestamp,
    ) -> Result<Inserted, Error> {
        on_backend!(self, Tx, t => t.insert_event(customer_id, event, now).await)
    }

    /// [`Tx::insert_event`] for many events, in order.
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_events(
        &mut self,
        events: &[(&CustomerId, &Event)],
        now: Timestamp,
    ) -> Result<Vec<Inserted>, Error> {
        on_backend!(self, Tx, t => t.insert_events(events, now).await)
    }

    /// Customers whose profile has this phone number or email address (any case).
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customers_by_address(
        &mut self,
        channel: Channel,
        address: &str,
    ) -> Result<Vec<Customer>, Error> {
        on_backend!(self, Tx, t => t.customers_by_address(channel, address).await)
    }

    /// Suppresses an address for good.
    ///
    /// # Errors
    /// On a database error.
    pub async fn suppress(
        &mut self,
        channel: Channel,
        address: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.suppress(channel, address, reason, now).await)
    }

    /// Why an address is suppressed, if it is.
    ///
    /// # Errors
    /// On a database error.
    pub async fn suppression(
        &mut self,
        channel: Channel,
        address: &str,
    ) -> Result<Option<String>, Error> {
        on_backend!(self, Tx, t => t.suppression(channel, address).await)
    }

    /// Cancels the customer's queued marketing messages on `channel`.
    ///
    /// # Errors
    /// On a database error.
    pub async fn cancel_pending(
        &mut self,
        id: &CustomerId,
        channel: Channel,
        now: Timestamp,
    ) -> Result<u64, Error> {
        on_backend!(self, Tx, t => t.cancel_pending(id, channel, now).await)
    }

    /// Erases a customer's personal data. False when there was no such customer.
    ///
    /// # Errors
    /// On a database error.
    pub async fn erase_customer(&mut self, id: &CustomerId, now: Timestamp) -> Result<bool, Error> {
        on_backend!(self, Tx, t => t.erase_customer(id, now).await)
    }

    /// A customer's profile.
    ///
    /// # Errors
    /// On a database or decode error.
    pub async fn customer(&mut self, id: &CustomerId) -> Result<Option<Customer>, Error> {
        on_backend!(self, Tx, t => t.customer(id).await)
    }

    /// Writes an enrollment's state.
    ///
    /// # Errors
    /// On a database error, such as a second active enrollment in the same workflow.
    pub async fn save_enrollment(&mut self, e: &Enrollment, now: Timestamp) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.save_enrollment(e, now).await)
    }

    /// Adds a message to the outbox (a held message's key may be written again).
    ///
    /// # Errors
    /// On a database error.
    pub async fn insert_message(&mut self, m: &NewMessage, now: Timestamp) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.insert_message(m, now).await)
    }

    /// Records a batch of attempts' outcomes.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_attempts(
        &mut self,
        outcomes: &[(String, u32, AttemptOutcome)],
        now: Timestamp,
    ) -> Result<(), Error> {
        on_backend!(self, Tx, t => t.record_attempts(outcomes, now).await)
    }

    /// Records a provider's delivery report. False when no message has that key.
    ///
    /// # Errors
    /// On a database error.
    pub async fn record_delivery_report(
        &mut self,
        key: &str,
        status: &str,
        report: crate::channels::sms_kannel::Report,
        now: Timestamp,
    ) -> Result<bool, Error> {
        on_backend!(self, Tx, t => t.record_delivery_report(key, status, report, now).await)
    }
}

impl super::JourneyStore for Store {
    type Tx = Tx;

    async fn begin(&self) -> Result<Tx, Error> {
        Store::begin(self).await
    }

    async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        Store::paused(self).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        on_backend!(self, Store, s => super::JourneyStore::next_due(s).await)
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        Store::load_customers(self, ids, spec).await
    }

    async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        Store::customer_ids_after(self, after, limit).await
    }

    async fn order_stats(&self) -> Result<Vec<OrderStats>, Error> {
        Store::order_stats(self).await
    }

    async fn write_traits(&self, traits: &[Traits], now: Timestamp) -> Result<(), Error> {
        Store::write_traits(self, traits, now).await
    }
}

impl super::JourneyTx for Tx {
    async fn pending_events(&mut self, limit: u32) -> Result<Vec<StoredEvent>, Error> {
        on_backend!(self, Tx, t => t.pending_events(limit).await)
    }

    async fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        on_backend!(self, Tx, t => t.due_enrollments(now, limit).await)
    }

    async fn due_fires(&mut self, now: Timestamp, limit: u32) -> Result<Vec<DueFire>, Error> {
        on_backend!(self, Tx, t => t.due_fires(now, limit).await)
    }

    async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        on_backend!(self, Tx, t => t.write_customers(writes, now).await)
    }

    async fn commit(self) -> Result<(), Error> {
        Tx::commit(self).await
    }

    async fn end_unwritten(self) -> Result<(), Error> {
        Tx::end_unwritten(self).await
    }
}
