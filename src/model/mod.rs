//! Plain data shared by every layer: ids, customers, events, channels.
//!
//! Nothing here does I/O or reads the clock; these are the nouns the engine,
//! the store and the API agree on.

mod customer;
mod event;
mod ids;
mod patch;
mod phone;

pub use customer::{Consent, Customer, check_zone};
pub use event::{Event, PROFILE_UPDATED, Properties};
pub use ids::{Channel, CustomerId, EventId, IdError, IdempotencyKey, NodeId, WorkflowId};
pub use patch::{ConsentPatch, CustomerPatch};
pub use phone::PhoneE164;
