//! What the shell reads about one customer before planning, and what it asks the store to
//! write afterwards: plain data, no storage types.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use crate::engine::Enrollment;
use crate::model::{Channel, Customer, CustomerId, Event};
use crate::store::{Conversion, NewMessage, StoredEvent};

/// How far back the store must read for one piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSpec {
    /// Events since this instant; `None`: all of them.
    pub history_since: Option<Timestamp>,
    /// Sends that count toward caps since this instant; `None`: none (no caps).
    pub sends_since: Option<Timestamp>,
    /// Handled trigger occurrences since this instant; `None`: none needed.
    pub fired_since: Option<Timestamp>,
    /// Whether the work may enroll the customer: the active enrollments and past entries
    /// are read only then (a wake-up steps the one enrollment it wakes).
    pub enrollments: bool,
}

impl LoadSpec {
    /// A spec that reads at least what either reads: for a batch of work read together.
    pub fn union(self, other: LoadSpec) -> LoadSpec {
        let earliest = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LoadSpec {
            // `None` is "all history": it wins.
            history_since: self
                .history_since
                .zip(other.history_since)
                .map(|(a, b)| a.min(b)),
            sends_since: earliest(self.sends_since, other.sends_since),
            fired_since: earliest(self.fired_since, other.fired_since),
            enrollments: self.enrollments || other.enrollments,
        }
    }
}

/// Everything the shell may consult about one customer, read from one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerState {
    /// The profile; `None` for a customer known only by an event.
    pub customer: Option<Customer>,
    /// The profile's version when loaded (bumped by every change to it); `None` when the
    /// customer has no row.
    pub version: Option<i64>,
    /// The customer's events since [`LoadSpec::history_since`], oldest first.
    pub history: Vec<Event>,
    /// The active enrollments, oldest first.
    pub enrollments: Vec<Enrollment>,
    /// When the customer last entered each workflow they ever entered.
    pub last_entered: BTreeMap<String, Timestamp>,
    /// The segments the customer was in when last computed.
    pub segments: BTreeSet<String>,
    /// The sends caps count, since [`LoadSpec::sends_since`]: exactly the outbox rows
    /// written with a [`CapMark`](crate::engine::policy::CapMark).
    pub cap_sends: Vec<(Channel, Timestamp)>,
    /// The customer's current addresses that are suppressed, with the reason.
    pub suppressed: BTreeMap<(Channel, String), String>,
    /// Trigger occurrences handled for the customer since [`LoadSpec::fired_since`]:
    /// `(workflow id, occurrence)`.
    pub fired: BTreeSet<(String, Timestamp)>,
}

/// One piece of due work for one customer.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// A stored event, not yet processed.
    Event(&'a StoredEvent),
    /// An enrollment whose wake-up is due.
    Wake(&'a Enrollment),
    /// An occurrence of a schedule or date trigger.
    Fire {
        /// The workflow.
        workflow_id: &'a str,
        /// The occurrence.
        occurrence: Timestamp,
    },
    /// The periodic sweep: segments that change with time alone, time-based triggers for
    /// customers who have none scheduled yet.
    Sweep,
}

/// A change to a customer's time-based triggers, in the order decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireWrite {
    /// The next occurrence (`None`: none), keeping an occurrence already due and not yet
    /// handled.
    Schedule {
        /// The workflow.
        workflow_id: String,
        /// The next occurrence.
        at: Option<Timestamp>,
    },
    /// The handled occurrence replaced by the next one (`None`: no more).
    Advance {
        /// The workflow.
        workflow_id: String,
        /// The next occurrence.
        next: Option<Timestamp>,
    },
    /// An occurrence handled, so it is never handled twice.
    Fired {
        /// The workflow.
        workflow_id: String,
        /// The occurrence.
        occurrence: Timestamp,
    },
}

/// What one piece of work leads to for one customer, for the store to write in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerWrite {
    /// The customer.
    pub id: Option<CustomerId>,
    /// The version the plan was made on: the store writes nothing for this customer if the
    /// profile has changed since (it is planned again from the new state).
    pub version: Option<i64>,
    /// The profile, when a step changed it.
    pub profile: Option<Customer>,
    /// Segments entered.
    pub joined: Vec<String>,
    /// Segments left.
    pub left: Vec<String>,
    /// Enrollment states, in the order they were decided (an exit before a new entry).
    pub enrollments: Vec<Enrollment>,
    /// Outbox rows, in order.
    pub messages: Vec<NewMessage>,
    /// Goals reached.
    pub conversions: Vec<Conversion>,
    /// Trigger bookkeeping, in order.
    pub fires: Vec<FireWrite>,
    /// The event processed, by sequence number.
    pub processed: Option<i64>,
    /// What was decided, as timeline lines, when the shell keeps a journal.
    pub journal: Vec<super::Line>,
}

impl CustomerWrite {
    /// Messages queued for delivery.
    pub fn queued(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.status == crate::store::MessageStatus::Pending)
            .count()
    }
}
