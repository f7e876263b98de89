//! What starts a workflow, who may enter it again, and the goal that ends it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::{Comparison, Condition};
use super::duration::Duration;
use super::local_time::TimeOfDay;

/// What enrolls a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// An event arrives.
    Event(EventTrigger),
    /// The customer enters the named segment.
    SegmentEntered(String),
    /// The customer leaves the named segment.
    SegmentExited(String),
    /// A cron schedule, for broadcasts.
    Schedule(Box<ScheduleTrigger>),
    /// A date attribute, such as a birthday, comes round.
    DateAttribute(DateTrigger),
}

/// Enrolls on an event of one name whose properties pass the filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// The event name, such as `signup`.
    pub name: String,
    /// Every comparison must hold on the event's properties.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Comparison>,
}

/// Enrolls the audience each time a cron expression fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Five-field cron expression (minute hour day-of-month month day-of-week), e.g. `0 9 * * MON`.
    pub cron: String,
    /// An IANA zone to read the expression in, or `customer` to read it in each
    /// customer's own zone (so 09:00 rolls around the globe). Default: `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Who is enrolled; everyone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Condition>,
    /// A customer whose occurrence had already passed when they were scheduled (the
    /// broadcast started after 09:00 their time): `skip` to the next occurrence (default), or
    /// `next_day` to send at the same local time the next day.
    #[serde(default)]
    pub missed: Missed,
}

/// What happens to an occurrence that passed before a customer was scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Wait for the next occurrence.
    #[default]
    Skip,
    /// Send at the same local time the next day, if the occurrence passed less than a day ago.
    NextDay,
}

impl ScheduleTrigger {
    /// The time-zone setting that means "each customer's own zone".
    pub const CUSTOMER_ZONE: &'static str = "customer";

    /// Whether the cron expression is read in each customer's own time zone.
    pub fn per_customer_zone(&self) -> bool {
        self.timezone.as_deref() == Some(Self::CUSTOMER_ZONE)
    }
}

/// Enrolls on the anniversary (or the one date) held in a date attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DateTrigger {
    /// The attribute holding a date, `YYYY-MM-DD`.
    pub attribute: String,
    /// Local time of day in the customer's zone.
    pub at: TimeOfDay,
    /// Days before (negative) or after (positive) the date.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset_days: i32,
    /// `yearly` (the default) or `once`.
    #[serde(default)]
    pub repeat: Repeat,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Whether a date trigger comes round every year.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Repeat {
    /// Every year on the date's month and day.
    #[default]
    Yearly,
    /// Only on the date itself.
    Once,
}

/// Who may enter again. One customer is never in two enrollments of the same workflow at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// Once per customer, ever.
    #[default]
    Once,
    /// Every time the trigger fires, once the previous enrollment has ended.
    EveryTime,
    /// Again only after this long since the previous entry.
    Cooldown(Duration),
}

/// The conversion that ends a journey wherever the customer is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// The event name, such as `order_completed`.
    pub event: String,
    /// Every comparison must hold on the event's properties.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Comparison>,
    /// The property holding the conversion's value (revenue), such as `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Whether a workflow sends marketing (needs consent) or transactional messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Promotional messages: sent only with the customer's consent for the channel.
    #[default]
    Marketing,
    /// Messages the customer needs (receipts, password resets): sent without marketing consent.
    Transactional,
}
