//! The journey store in memory, for the simulator: the same rules the SQL enforces (a resent
//! event id stored once, one active enrollment per workflow and customer, an outbox key
//! written once unless its row is `held`, a due occurrence kept when rescheduling), over
//! ordered maps. Every call completes at once; a transaction works on a copy of the tables
//! and swaps it in on commit, which is fine for one simulated customer and not meant for
//! millions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::ports::{DueFire, JourneyStore, JourneyTx};
use super::{Conversion, Error, Inserted, MessageStatus, NewMessage, StoredEvent};
use crate::engine::Enrollment;
use crate::journey::{CustomerState, CustomerWrite, FireWrite, LoadSpec};
use crate::model::{Channel, Customer, CustomerId, Event};
use crate::traits::{OrderStats, Traits};

/// The journey store in memory. Clones share the tables.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore(Arc<Mutex<Tables>>);

/// A message as the memory store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The row as written.
    pub message: NewMessage,
    /// Its status now.
    pub status: MessageStatus,
    /// When it was accepted for delivery.
    pub sent_at: Option<Timestamp>,
}

/// A conversion with the message it was credited to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConversion {
    /// The conversion.
    pub conversion: Conversion,
    /// The message credited, if one was sent within the attribution window.
    pub message_key: Option<String>,
    /// When.
    pub at: Timestamp,
}

#[derive(Debug, Clone, Default)]
struct Tables {
    customers: BTreeMap<CustomerId, Customer>,
    /// As `customers.version`: 0 when the row is made, one more at each profile change.
    versions: BTreeMap<CustomerId, i64>,
    events: Vec<(StoredEvent, bool)>,
    event_ids: BTreeSet<String>,
    /// The last sequence number handed out. As with SQLite's `AUTOINCREMENT`, a refused
    /// duplicate uses one up too, so enrollment ids (and message keys) match the runtime's.
    last_seq: i64,
    /// Enrollments by id, with the order they were first written (SQLite's rowid).
    enrollments: BTreeMap<String, (u64, Enrollment)>,
    written: u64,
    /// Messages in the order they were first written.
    messages: Vec<StoredMessage>,
    conversions: Vec<StoredConversion>,
    members: BTreeSet<(String, CustomerId)>,
    suppressions: BTreeMap<(Channel, String), String>,
    scheduled: BTreeMap<(String, CustomerId), (u64, Timestamp)>,
    fired: BTreeSet<(String, CustomerId, Timestamp)>,
    paused: BTreeSet<String>,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        f(&mut self.0.lock().expect("no lock is held across a panic"))
    }

    /// Stores an event, creating a minimal customer if needed; a resent id is a duplicate.
    pub fn insert_event(&self, customer_id: &CustomerId, event: &Event) -> Inserted {
        self.with(|t| {
            if !t.customers.contains_key(customer_id) {
                t.put(Customer::minimal(customer_id.clone()));
            }
            t.last_seq += 1;
            if let Some(id) = &event.id
                && !t.event_ids.insert(id.as_str().to_owned())
            {
                return Inserted::Duplicate;
            }
            let seq = t.last_seq;
            t.events.push((
                StoredEvent {
                    seq,
                    customer_id: customer_id.clone(),
                    event: event.clone(),
                },
                false,
            ));
            Inserted::Accepted
        })
    }

    /// Creates or replaces a customer's profile.
    pub fn put_customer(&self, customer: &Customer) {
        self.with(|t| t.put(customer.clone()));
    }

    /// Suppresses an address on a channel.
    pub fn suppress(&self, channel: Channel, address: &str, reason: &str) {
        self.with(|t| {
            t.suppressions
                .insert((channel, address.to_lowercase()), reason.to_owned());
        });
    }

    /// Pauses or resumes a workflow.
    pub fn set_paused(&self, workflow_id: &str, paused: bool) {
        self.with(|t| {
            if paused {
                t.paused.insert(workflow_id.to_owned());
            } else {
                t.paused.remove(workflow_id);
            }
        });
    }

    /// Delivers every pending message at once, as a provider that never fails would; returns
    /// their keys.
    pub fn deliver_pending(&self, now: Timestamp) -> Vec<String> {
        self.with(|t| {
            t.messages
                .iter_mut()
                .filter(|m| m.status == MessageStatus::Pending)
                .map(|m| {
                    m.status = MessageStatus::Sent;
                    m.sent_at = Some(now);
                    m.message.key.clone()
                })
                .collect()
        })
    }

    /// Every message, in the order first written.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.with(|t| t.messages.clone())
    }

    /// Every conversion, in the order recorded.
    pub fn conversions(&self) -> Vec<StoredConversion> {
        self.with(|t| t.conversions.clone())
    }

    /// Every enrollment, by id.
    pub fn enrollments(&self) -> Vec<Enrollment> {
        self.with(|t| t.enrollments.values().map(|(_, e)| e.clone()).collect())
    }

    /// A customer's profile.
    pub fn customer(&self, id: &CustomerId) -> Option<Customer> {
        self.with(|t| t.customers.get(id).cloned())
    }

    /// The segments a customer is in.
    pub fn segments_of(&self, id: &CustomerId) -> BTreeSet<String> {
        self.with(|t| t.segments_of(id))
    }
}

impl Tables {
    /// Creates (version 0) or replaces (one more) a profile.
    fn put(&mut self, customer: Customer) {
        let version = match self.versions.get(&customer.id) {
            Some(v) if self.customers.contains_key(&customer.id) => v + 1,
            _ => 0,
        };
        self.versions.insert(customer.id.clone(), version);
        self.customers.insert(customer.id.clone(), customer);
    }

    /// As the SQL: every customer, their `order_completed` events counted, `value` summed as
    /// a number (a numeric string counts, anything else as 0).
    fn order_stats(&self) -> Vec<OrderStats> {
        self.customers
            .keys()
            .map(|id| {
                let orders: Vec<&Event> = self
                    .events
                    .iter()
                    .map(|(e, _)| e)
                    .filter(|e| &e.customer_id == id && e.event.name == "order_completed")
                    .map(|e| &e.event)
                    .collect();
                let revenue = orders
                    .iter()
                    .filter_map(|e| e.properties.get("value"))
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.trim().parse().unwrap_or(0.0),
                        serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                        other => other.as_f64().unwrap_or(0.0),
                    })
                    .sum();
                OrderStats {
                    customer_id: id.to_string(),
                    orders: orders.len() as u64,
                    revenue,
                    first_order: orders.iter().map(|e| e.timestamp).min(),
                    last_order: orders.iter().map(|e| e.timestamp).max(),
                }
            })
            .collect()
    }

    fn segments_of(&self, id: &CustomerId) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|(_, c)| c == id)
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn next_order(&mut self) -> u64 {
        self.written += 1;
        self.written
    }

    fn load(&self, id: &CustomerId, spec: &LoadSpec) -> CustomerState {
        let customer = self.customers.get(id).cloned();
        let version = customer
            .as_ref()
            .and_then(|_| self.versions.get(id).copied());
        let mut history: Vec<&StoredEvent> = self
            .events
            .iter()
            .map(|(e, _)| e)
            .filter(|e| {
                &e.customer_id == id
                    && spec
                        .history_since
                        .is_none_or(|since| e.event.timestamp >= since)
            })
            .collect();
        history.sort_by_key(|e| (e.event.timestamp, e.seq));
        let mut state = CustomerState {
            history: history.into_iter().map(|e| e.event.clone()).collect(),
            segments: self.segments_of(id),
            ..CustomerState::default()
        };
        if let Some(since) = spec.sends_since {
            state.cap_sends = self
                .messages
                .iter()
                .filter(|m| m.message.customer_id == id.as_str())
                .filter_map(|m| m.message.cap)
                .filter(|mark| mark.at() > since)
                .map(|mark| (mark.channel(), mark.at()))
                .collect();
        }
        if spec.enrollments {
            let mut active: Vec<&Enrollment> = self
                .enrollments
                .values()
                .map(|(_, e)| e)
                .filter(|e| &e.customer_id == id && e.is_active())
                .collect();
            active.sort_by(|a, b| (a.entered_at, &a.id).cmp(&(b.entered_at, &b.id)));
            state.enrollments = active.into_iter().cloned().collect();
            for (_, e) in self.enrollments.values() {
                if &e.customer_id == id {
                    let last = state
                        .last_entered
                        .entry(e.workflow_id.to_string())
                        .or_insert(e.entered_at);
                    *last = (*last).max(e.entered_at);
                }
            }
        }
        if let Some(since) = spec.fired_since {
            state.fired = self
                .fired
                .iter()
                .filter(|(_, c, at)| c == id && *at >= since)
                .map(|(w, _, at)| (w.clone(), *at))
                .collect();
        }
        if let Some(customer) = &customer {
            for channel in [Channel::Email, Channel::Sms] {
                if let Some(address) = customer.address(channel)
                    && let Some(reason) = self.suppressions.get(&(channel, address.to_lowercase()))
                {
                    state
                        .suppressed
                        .insert((channel, address.to_owned()), reason.clone());
                }
            }
        }
        state.customer = customer;
        state.version = version;
        state
    }

    fn write(&mut self, w: &CustomerWrite, now: Timestamp) -> Result<(), Error> {
        let Some(id) = &w.id else { return Ok(()) };
        for segment in &w.joined {
            self.members.insert((segment.clone(), id.clone()));
        }
        for segment in &w.left {
            self.members.remove(&(segment.clone(), id.clone()));
        }
        for message in &w.messages {
            self.insert_message(message);
        }
        for conversion in &w.conversions {
            self.record_conversion(conversion, now);
        }
        for enrollment in &w.enrollments {
            self.save_enrollment(enrollment)?;
        }
        for fire in &w.fires {
            self.fire(id, fire, now);
        }
        if let Some(profile) = &w.profile {
            self.put(profile.clone());
        }
        if let Some(seq) = w.processed
            && let Some((_, processed)) = self.events.iter_mut().find(|(e, _)| e.seq == seq)
        {
            *processed = true;
        }
        Ok(())
    }

    /// A key is written once, unless its row is held: then this is the decision after the hold.
    fn insert_message(&mut self, message: &NewMessage) {
        match self
            .messages
            .iter_mut()
            .find(|m| m.message.key == message.key)
        {
            Some(row) if row.status == MessageStatus::Held => {
                row.message = message.clone();
                row.status = message.status;
            }
            Some(_) => {}
            None => self.messages.push(StoredMessage {
                message: message.clone(),
                status: message.status,
                sent_at: None,
            }),
        }
    }

    /// One conversion per enrollment, credited to the workflow's last message sent to the
    /// customer since the attribution window began.
    fn record_conversion(&mut self, c: &Conversion, now: Timestamp) {
        if self
            .conversions
            .iter()
            .any(|s| s.conversion.enrollment_id == c.enrollment_id)
        {
            return;
        }
        let message_key = self
            .messages
            .iter()
            .filter(|m| {
                m.message.customer_id == c.customer_id
                    && m.message.workflow_id == c.workflow_id
                    && m.status == MessageStatus::Sent
                    && m.sent_at.is_some_and(|at| at >= c.attribution_since)
            })
            .max_by(|a, b| {
                (a.sent_at, std::cmp::Reverse(&a.message.key))
                    .cmp(&(b.sent_at, std::cmp::Reverse(&b.message.key)))
            })
            .map(|m| m.message.key.clone());
        self.conversions.push(StoredConversion {
            conversion: c.clone(),
            message_key,
            at: now,
        });
    }

    fn save_enrollment(&mut self, e: &Enrollment) -> Result<(), Error> {
        if e.is_active()
            && self.enrollments.values().any(|(_, other)| {
                other.id != e.id
                    && other.is_active()
                    && other.workflow_id == e.workflow_id
                    && other.customer_id == e.customer_id
            })
        {
            return Err(Error::Constraint(format!(
                "a second active enrollment of {} in {}",
                e.customer_id, e.workflow_id
            )));
        }
        let order = match self.enrollments.get(&e.id) {
            Some((order, _)) => *order,
            None => self.next_order(),
        };
        self.enrollments.insert(e.id.clone(), (order, e.clone()));
        Ok(())
    }

    fn fire(&mut self, id: &CustomerId, fire: &FireWrite, now: Timestamp) {
        match fire {
            FireWrite::Schedule { workflow_id, at } => {
                let key = (workflow_id.clone(), id.clone());
                // An occurrence already due and not yet handled is kept.
                if self.scheduled.get(&key).is_some_and(|(_, due)| *due <= now) {
                    return;
                }
                match at {
                    Some(at) => {
                        let order = match self.scheduled.get(&key) {
                            Some((order, _)) => *order,
                            None => self.next_order(),
                        };
                        self.scheduled.insert(key, (order, *at));
                    }
                    None => {
                        self.scheduled.remove(&key);
                    }
                }
            }
            FireWrite::Advance { workflow_id, next } => {
                let key = (workflow_id.clone(), id.clone());
                match next {
                    Some(at) => {
                        if let Some((_, due)) = self.scheduled.get_mut(&key) {
                            *due = *at;
                        }
                    }
                    None => {
                        self.scheduled.remove(&key);
                    }
                }
            }
            FireWrite::Fired {
                workflow_id,
                occurrence,
            } => {
                self.fired
                    .insert((workflow_id.clone(), id.clone(), *occurrence));
            }
        }
    }
}

/// One transaction: a copy of the tables, swapped in on commit.
#[derive(Debug)]
pub struct MemoryTx {
    store: MemoryStore,
    tables: Tables,
}

impl JourneyStore for MemoryStore {
    type Tx = MemoryTx;

    async fn begin(&self) -> Result<MemoryTx, Error> {
        Ok(MemoryTx {
            store: self.clone(),
            tables: self.with(|t| t.clone()),
        })
    }

    async fn paused(&self) -> Result<BTreeSet<String>, Error> {
        Ok(self.with(|t| t.paused.clone()))
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        Ok(self.with(|t| {
            let wake = t
                .enrollments
                .values()
                .filter(|(_, e)| e.is_active() && !t.paused.contains(e.workflow_id.as_str()))
                .filter_map(|(_, e)| e.next_wake())
                .min();
            let fire = t.scheduled.values().map(|(_, at)| *at).min();
            wake.into_iter().chain(fire).min()
        }))
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &LoadSpec,
    ) -> Result<Vec<CustomerState>, Error> {
        Ok(self.with(|t| ids.iter().map(|id| t.load(id, spec)).collect()))
    }

    async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, Error> {
        Ok(self.with(|t| {
            t.customers
                .keys()
                .filter(|id| after.is_none_or(|a| id.as_str() > a))
                .take(limit as usize)
                .cloned()
                .collect()
        }))
    }

    async fn order_stats(&self) -> Result<Vec<OrderStats>, Error> {
        Ok(self.with(|t| t.order_stats()))
    }

    async fn write_traits(&self, traits: &[Traits], _now: Timestamp) -> Result<(), Error> {
        self.with(|t| {
            for computed in traits {
                let Ok(id) = CustomerId::parse(computed.customer_id.clone()) else {
                    continue;
                };
                let Some(mut customer) = t.customers.get(&id).cloned() else {
                    continue;
                };
                let attributes = &mut customer.attributes;
                for (name, value) in computed.attributes() {
                    if value.is_null() {
                        attributes.remove(name);
                    } else {
                        attributes.insert(name.into(), value);
                    }
                }
                if t.customers.get(&id) != Some(&customer) {
                    t.put(customer);
                }
            }
        });
        Ok(())
    }
}

impl JourneyTx for MemoryTx {
    async fn pending_events(&mut self, limit: u32) -> Result<Vec<StoredEvent>, Error> {
        Ok(self
            .tables
            .events
            .iter()
            .filter(|(_, processed)| !processed)
            .take(limit as usize)
            .map(|(e, _)| e.clone())
            .collect())
    }

    async fn due_enrollments(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, Error> {
        let t = &self.tables;
        let mut due: Vec<(Timestamp, u64, &Enrollment)> = t
            .enrollments
            .values()
            .filter(|(_, e)| e.is_active() && !t.paused.contains(e.workflow_id.as_str()))
            .filter_map(|(order, e)| Some((e.next_wake()?, *order, e)))
            .filter(|(at, _, _)| *at <= now)
            .collect();
        due.sort_by_key(|(at, order, _)| (*at, *order));
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|(_, _, e)| e.clone())
            .collect())
    }

    async fn due_fires(&mut self, now: Timestamp, limit: u32) -> Result<Vec<DueFire>, Error> {
        let mut due: Vec<(Timestamp, u64, DueFire)> = self
            .tables
            .scheduled
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|((w, c), (order, at))| (*at, *order, (w.clone(), c.clone(), *at)))
            .collect();
        due.sort_by_key(|(at, order, _)| (*at, *order));
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|(_, _, fire)| fire)
            .collect())
    }

    async fn write_customers(
        &mut self,
        writes: &[CustomerWrite],
        now: Timestamp,
    ) -> Result<Vec<CustomerId>, Error> {
        let mut conflicted = Vec::new();
        for write in writes {
            let Some(id) = &write.id else { continue };
            let current = self
                .tables
                .customers
                .contains_key(id)
                .then(|| self.tables.versions.get(id).copied())
                .flatten();
            if current == write.version {
                self.tables.write(write, now)?;
            } else {
                conflicted.push(id.clone());
            }
        }
        Ok(conflicted)
    }

    async fn commit(self) -> Result<(), Error> {
        let MemoryTx { store, tables } = self;
        store.with(|t| *t = tables);
        Ok(())
    }

    async fn end_unwritten(self) -> Result<(), Error> {
        Ok(())
    }
}
