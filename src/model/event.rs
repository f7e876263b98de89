//! Events: something a customer did, at a time, with properties.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::EventId;

/// An event's properties, such as `value` or `items`.
pub type Properties = Map<String, Value>;

/// One event, as a line of the simulator's `--events` file or a body of `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The sender's id for the event; a resend with the same id is not counted twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
    /// The event's name, such as `signup` or `order_completed`.
    pub name: String,
    /// When it happened.
    pub timestamp: Timestamp,
    /// Free properties.
    #[serde(default)]
    pub properties: Properties,
}

/// The internal event stored with every profile change, so the scheduler recomputes the
/// customer's segments in order with their other events.
pub const PROFILE_UPDATED: &str = "$profile_updated";

impl Event {
    /// The event that marks a profile change at `at`.
    pub fn profile_updated(at: Timestamp) -> Self {
        Self {
            id: None,
            name: PROFILE_UPDATED.into(),
            timestamp: at,
            properties: Map::new(),
        }
    }

    /// A property by dotted path, such as `value` or `shipping.country`.
    pub fn property(&self, path: &str) -> Option<&Value> {
        super::customer::lookup_path(&self.properties, path)
    }
}
