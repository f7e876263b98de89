//! All SQL lives under this module. [`Store`] opens the database and offers the few reads
//! the API needs; [`Tx`] is one `BEGIN IMMEDIATE` transaction in which the scheduler reads a
//! customer's state and writes the step's result — enrollments, outbox messages, profile
//! changes, conversions — all or nothing.
//!
//! [`Store`] is SQLite (`sqlite/`, the default) or PostgreSQL (`postgres/`), chosen by the
//! URL's scheme; `backend` hands each call to the one it holds. Both implement the same
//! methods and the journey port, and `tests/it/store_conformance.rs` holds them (and the
//! memory store) to the same cases.

mod backend;
pub mod copy;
pub mod memory;
mod ports;
mod postgres;
mod sqlite;
pub mod testing;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use backend::{Store, Tx};
pub use memory::MemoryStore;
pub use ports::{DueFire, JourneyStore, JourneyTx};
pub use postgres::{PgStore, PgTx};
pub use sqlite::{OpenOptions, SqliteStore, SqliteTx};

use crate::model::{Channel, CustomerId, Event};

/// What went wrong in the store. Each variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or migrating the database.
    #[error("opening the database {url}")]
    Open {
        /// The database URL.
        url: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// A database URL of a kind this store does not open (the URL with its password hidden).
    #[error("{0}: Trellis opens `sqlite://PATH` and `postgres://USER:PASSWORD@HOST/DB` URLs")]
    UnsupportedUrl(String),
    /// Applying migrations.
    #[error("migrating the database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("{what}")]
    Query {
        /// What the query was for.
        what: &'static str,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The write lock was not had within the wait allowed (another writer, maybe another
    /// process, holds it).
    #[error("{0}: the database stayed locked longer than the wait allowed")]
    Busy(&'static str),
    /// A transaction shared with other requests (a group commit) met an error that passes
    /// (see [`Error::is_unavailable`]); the text is that error's chain.
    #[error("{0}")]
    SharedUnavailable(String),
    /// A write broke a rule the store enforces, such as one active enrollment per workflow
    /// and customer (the memory store; SQLite reports its constraints as [`Error::Query`]).
    #[error("{0}")]
    Constraint(String),
    /// Stored JSON did not decode: the row was written by an incompatible version.
    #[error("decoding {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether the database cannot serve this now but will again by itself: the disk is full,
    /// the file is locked by another process longer than the wait allowed, an I/O error, or no
    /// connection could be had in time. Callers answer 503 and retry; nothing is half-written,
    /// because the transaction that met it rolled back.
    pub fn is_unavailable(&self) -> bool {
        let source = match self {
            Error::Open { source, .. } | Error::Query { source, .. } => source,
            Error::Busy(_) | Error::SharedUnavailable(_) => return true,
            Error::Migrate(_)
            | Error::Decode { .. }
            | Error::Constraint(_)
            | Error::UnsupportedUrl(_) => return false,
        };
        match source {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return pg_passes(pg.code());
                }
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| {
                        // Primary result codes: the low byte of the extended code.
                        matches!(
                            code & 0xff,
                            SQLITE_BUSY
                                | SQLITE_LOCKED
                                | SQLITE_IOERR
                                | SQLITE_FULL
                                | SQLITE_CANTOPEN
                        )
                    })
            }
            _ => false,
        }
    }
}

/// `url` with any password replaced by `***`, for error messages and logs: a database URL
/// may carry credentials, and secrets are never logged.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL (a bare path): nothing that looks like credentials can be told apart, so
        // keep only what precedes an `@`, which a password would follow.
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

/// Whether a PostgreSQL error (an SQLSTATE) passes by itself: connection errors (class
/// `08`), serialization failures and deadlocks (`40001`, `40P01`), insufficient resources
/// (class `53`: disk full, out of memory, too many connections), `lock_timeout`
/// (`55P03`) and shutdowns (`57P01`–`57P03`). SQLSTATEs are never read as SQLite's codes:
/// `42501` (insufficient privilege) would mask to `SQLITE_BUSY`.
fn pg_passes(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
        )
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

/// Records `err` as the reason writes fail, when it is one that passes.
pub(crate) fn note_failure(health: &std::sync::Mutex<Option<String>>, err: &Error) {
    if err.is_unavailable()
        && let Ok(mut failure) = health.lock()
    {
        *failure = Some(crate::scheduler::error_chain(err));
    }
}

/// Shorthand for a query error with context.
pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Query { what, source }
}

/// Shorthand for a decode error with context.
pub(crate) fn decode(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |source| Error::Decode { what, source }
}

/// An event as stored, with its place in the processing order.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Order of arrival.
    pub seq: i64,
    /// Whose event.
    pub customer_id: CustomerId,
    /// The event.
    pub event: Event,
}

/// Whether an inserted event was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Inserted {
    /// Stored; the scheduler will process it.
    Accepted,
    /// An event with the same id was stored before; nothing changed.
    Duplicate,
}

/// A rendered message, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Payload {
    /// An email.
    Email {
        /// Recipient.
        to: String,
        /// Sender override.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Reply-To.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        /// Subject line.
        subject: String,
        /// HTML part.
        html: String,
        /// Text part.
        text: String,
        /// One-click unsubscribe URL, for the List-Unsubscribe header.
        unsubscribe: String,
    },
    /// An SMS.
    Sms {
        /// Recipient phone number, E.164.
        to: String,
        /// Body.
        body: String,
    },
    /// A webhook call.
    Webhook {
        /// HTTP method.
        method: String,
        /// URL.
        url: String,
        /// Headers.
        headers: Vec<(String, String)>,
        /// JSON body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<serde_json::Value>,
    },
    /// Nothing to deliver (a suppressed or failed-to-render message, or erased data).
    None,
}

impl Payload {
    /// The channel name stored with the message.
    pub fn channel_name(&self) -> &'static str {
        match self {
            Payload::Email { .. } => Channel::Email.as_str(),
            Payload::Sms { .. } => Channel::Sms.as_str(),
            Payload::Webhook { .. } => "webhook",
            Payload::None => "none",
        }
    }
}

/// The lifecycle of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by the dispatcher; an attempt is on the wire.
    Sending,
    /// Accepted by the provider.
    Sent,
    /// Given up: a permanent failure, or retries exhausted.
    Failed,
    /// Not sent, by rule: no consent, no address.
    Suppressed,
    /// Waiting for quiet hours to end or a frequency cap to free a place.
    Held,
    /// Withdrawn before sending: the customer was erased or opted out.
    Cancelled,
}

impl MessageStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Suppressed => "suppressed",
            MessageStatus::Held => "held",
            MessageStatus::Cancelled => "cancelled",
        }
    }
}

/// A new outbox row, written in the same transaction as the step that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Idempotency key: a second insert with the same key is ignored.
    pub key: String,
    /// The enrollment that produced it.
    pub enrollment_id: String,
    /// Its workflow.
    pub workflow_id: String,
    /// Its node.
    pub node: String,
    /// The customer.
    pub customer_id: String,
    /// The template, for sends.
    pub template: Option<String>,
    /// Pending, suppressed or failed (render errors).
    pub status: MessageStatus,
    /// What to deliver.
    pub payload: Payload,
    /// Why it was suppressed or failed.
    pub note: Option<String>,
    /// From a transactional workflow: not cancelled when the customer opts out of marketing.
    pub transactional: bool,
    /// Counts toward frequency caps from this moment
    /// ([`counts_toward_caps`](crate::engine::policy::counts_toward_caps)); `None` for what
    /// caps never count.
    pub cap: Option<crate::engine::policy::CapMark>,
}

/// An outbox message claimed for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Idempotency key.
    pub key: String,
    /// Its workflow.
    pub workflow_id: String,
    /// The customer.
    pub customer_id: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When it was written.
    pub created_at: Timestamp,
    /// What to deliver.
    pub payload: Payload,
}

/// The result of one delivery attempt, as the dispatcher records it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// Delivered.
    Sent {
        /// The provider's id for the message, if it gave one.
        provider_id: Option<String>,
    },
    /// Try again at `next_attempt_at`.
    Retry {
        /// When.
        next_attempt_at: Timestamp,
        /// Why this attempt failed.
        reason: String,
    },
    /// Give up.
    Failed {
        /// Why.
        reason: String,
    },
    /// Give up, and suppress the recipient's address on the message's channel: the provider
    /// refused the address itself.
    Refused {
        /// What the provider said.
        reason: String,
    },
}

/// A conversion: the goal reached, with its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// The enrollment.
    pub enrollment_id: String,
    /// Its workflow.
    pub workflow_id: String,
    /// The customer.
    pub customer_id: String,
    /// The goal event's name.
    pub event: String,
    /// Revenue, if the goal names a value property.
    pub value: Option<f64>,
    /// The split arm the customer was on.
    pub arm: Option<String>,
    /// Credit the last message of the workflow received since this instant.
    pub attribution_since: Timestamp,
}

/// A conversion as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversionView {
    /// Workflow.
    pub workflow_id: String,
    /// The goal event.
    pub event: String,
    /// Revenue.
    pub value: Option<f64>,
    /// The split arm.
    pub arm: Option<String>,
    /// The message credited, if one was received within the attribution window.
    pub message_key: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// An enrollment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnrollmentView {
    /// Enrollment id.
    pub id: String,
    /// Workflow.
    pub workflow_id: String,
    /// Workflow version (content hash).
    pub workflow_version: String,
    /// Still in the journey?
    pub active: bool,
    /// Current node.
    pub node: Option<String>,
    /// Next wake-up.
    pub next_wake: Option<Timestamp>,
    /// When the customer entered.
    pub entered_at: Timestamp,
    /// Why it ended, if it did.
    pub exit_reason: Option<String>,
}

/// A message as the API shows it (no body: bodies hold personal data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageView {
    /// Idempotency key.
    pub key: String,
    /// Workflow.
    pub workflow_id: String,
    /// Node.
    pub node: String,
    /// Channel.
    pub channel: String,
    /// Template.
    pub template: Option<String>,
    /// Status.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The provider's id.
    pub provider_id: Option<String>,
    /// The last delivery report, such as `delivered`.
    pub delivery_status: Option<String>,
    /// When it was written.
    pub created_at: Timestamp,
    /// When it was accepted by the provider.
    pub sent_at: Option<Timestamp>,
}

impl EnrollmentView {
    /// The view of a stored enrollment state (the `state` column's JSON).
    pub(crate) fn from_state(state: &str) -> Result<Self, Error> {
        let e: crate::engine::Enrollment =
            serde_json::from_str(state).map_err(decode("an enrollment"))?;
        Ok(Self {
            id: e.id.clone(),
            workflow_id: e.workflow_id.to_string(),
            workflow_version: e.workflow_version.clone(),
            active: e.is_active(),
            node: e.current_node().map(ToString::to_string),
            next_wake: e.next_wake(),
            entered_at: e.entered_at,
            exit_reason: match &e.status {
                crate::engine::Status::Exited { reason, .. } => Some(reason.to_string()),
                _ => None,
            },
        })
    }
}

/// A `messages` row as both backends read it for [`MessageView`]: `key, workflow_id, node,
/// channel, template, status, attempts, last_error, provider_id, created_at, sent_at,
/// delivery_status`.
pub(crate) type MessageRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
);

impl From<MessageRow> for MessageView {
    fn from(r: MessageRow) -> Self {
        Self {
            key: r.0,
            workflow_id: r.1,
            node: r.2,
            channel: r.3,
            template: r.4,
            status: r.5,
            attempts: r.6.try_into().unwrap_or(0),
            last_error: r.7,
            provider_id: r.8,
            created_at: from_millis(r.9),
            sent_at: r.10.map(from_millis),
            delivery_status: r.11,
        }
    }
}

/// A `conversions` row as both backends read it for [`ConversionView`]: `workflow_id, event,
/// value, arm, message_key, at`.
pub(crate) type ConversionRow = (
    String,
    String,
    Option<f64>,
    Option<String>,
    Option<String>,
    i64,
);

impl From<ConversionRow> for ConversionView {
    fn from(r: ConversionRow) -> Self {
        Self {
            workflow_id: r.0,
            event: r.1,
            value: r.2,
            arm: r.3,
            message_key: r.4,
            at: from_millis(r.5),
        }
    }
}

/// Converts a timestamp to stored milliseconds.
pub(crate) fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

/// Converts stored milliseconds to a timestamp.
pub(crate) fn from_millis(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_sqlstates_pass_by_class_and_never_as_sqlite_codes() {
        for passes in [
            "08006", "40001", "40P01", "53100", "53300", "55P03", "57P01",
        ] {
            assert!(super::pg_passes(passes), "{passes}");
        }
        // 42501 & 0xff is SQLITE_BUSY: read as SQLite's code it would be retried for ever.
        for stays in ["42501", "23505", "21000", "42601", "22P02"] {
            assert!(!super::pg_passes(stays), "{stays}");
        }
    }
}
