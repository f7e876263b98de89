//! The storage ports the journey drive uses, defined by what it does: one transaction at a
//! time, in which it takes due work, loads a customer, and writes what the shell planned.
//! `store::sqlite` implements them on SQLite, `store::memory` in memory for the simulator;
//! `tests/it/store_conformance.rs` holds both to the same cases.

use std::collections::BTreeSet;
use std::future::Future;

use jiff::Timestamp;

use super::{Error, StoredEvent};
use crate::engine::Enrollment;
use crate::journey::{CustomerState, CustomerWrite, LoadSpec};
use crate::model::CustomerId;
use crate::traits::{OrderStats, Traits};

/// A trigger occurrence due: `(workflow id, customer, occurrence)`.
pub type DueFire = (String, CustomerId, Timestamp);

/// Where journeys are kept: the drive opens one [`JourneyTx`] per batch.
pub trait JourneyStore: Send + Sync {
    /// One transaction.
    type Tx: JourneyTx + Send;
    /// Starts a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, Error>> + Send;
    /// The workflows paused: they enroll nobody and their wake-ups wait.
    fn paused(&self) -> impl Future<Output = Result<BTreeSet<String>, Error>> + Send;
    /// The earliest wake-up or trigger occurrence still to come, if any.
    fn next_due(&self) -> impl Future<Output = Result<Option<Timestamp>, Error>> + Send;
    /// What the shell consults about several distinct customers, in `ids`' order, as `spec`
    /// bounds it: from one consistent snapshot outside any write transaction, so the shell
    /// plans while others write; the write that follows is fenced by the versions loaded.
    fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> impl Future<Output = Result<Vec<CustomerState>, Error>> + Send;
    /// Up to `limit` customer ids after `after`, in id order: the sweep's pages.
    fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<CustomerId>, Error>> + Send;
    /// Every customer's `order_completed` statistics, for the computed traits.
    fn order_stats(&self) -> impl Future<Output = Result<Vec<OrderStats>, Error>> + Send;
    /// Writes computed traits into the customers' attributes (`rfm`, `value_tier`,
    /// `lifecycle`), in transactions of its own. A customer whose traits are already these
    /// is left alone: their version stays, so a scheduler write planned meanwhile is not
    /// fenced out by a change that changed nothing.
    fn write_traits(
        &self,
        traits: &[Traits],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// One transaction of a [`JourneyStore`]: all or nothing. Dropped without
/// [`JourneyTx::commit`], it writes nothing.
pub trait JourneyTx {
    /// Up to `limit` events not yet processed, in arrival order.
    fn pending_events(
        &mut self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, Error>> + Send;
    /// Up to `limit` active enrollments due at `now`, of workflows not paused, earliest first.
    fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Enrollment>, Error>> + Send;
    /// Up to `limit` trigger occurrences due at `now`, earliest first.
    fn due_fires(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DueFire>, Error>> + Send;
    /// Writes what the shell planned for several customers, each at most once, in order, in
    /// a fixed number of statements, fenced: a write whose [`CustomerWrite::version`] is not the customer's version now is
    /// skipped whole. Returns the customers skipped, to be planned again.
    fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<CustomerId>, Error>> + Send;
    /// Commits.
    fn commit(self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Ends a transaction that wrote nothing.
    fn end_unwritten(self) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The fence of [`JourneyTx::write_customers`], the same on every store: the writes whose
/// planned version is the customer's `version` now, in order, and the ids of those skipped
/// (to be planned again). A write without a customer is dropped.
pub(crate) fn fenced(
    writes: &[CustomerWrite],
    version: impl Fn(&str) -> Option<i64>,
) -> (Vec<&CustomerWrite>, Vec<CustomerId>) {
    let mut conflicted = Vec::new();
    let current = writes
        .iter()
        .filter(|w| {
            let Some(id) = &w.id else { return false };
            if version(id.as_str()) == w.version {
                true
            } else {
                conflicted.push(id.clone());
                false
            }
        })
        .collect();
    (current, conflicted)
}
