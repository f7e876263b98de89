//! The workflow file format: typed structs parsed strictly from YAML, the validator,
//! and the JSON Schema generated from the same types.
//!
//! No I/O beyond reading the files handed to [`load_dir`] or [`load_file`]; no clock.

/// Serde and JSON Schema for a type written as a string in files: serialized with `Display`,
/// parsed with `FromStr` (whose error becomes the located message), described by `$schema`.
macro_rules! string_format {
    ($ty:ty, $schema:tt) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}
use string_format;

mod condition;
mod duration;
pub mod load;
mod local_time;
mod node;
mod outline;
mod problem;
pub mod schema;
mod segment;
mod trigger;
pub mod validate;

use std::borrow::Cow;
use std::ops::Deref;
use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub use condition::{Comparison, Condition, EventCount, EventSum, Op};
pub use duration::Duration;
pub use load::{load_dir, load_file, parse};
pub use local_time::{NoneWord, QuietHours, QuietOverride, QuietSetting, TimeOfDay, Weekday};
pub use node::{
    Arm, Branch, Case, Method, Node, SendEmail, SendSms, Split, Update, Wait, WaitForEvent, Webhook,
};
pub use problem::Problem;
pub use segment::{
    Segment, SegmentDef, SegmentsFile, history_need as segments_history_need, load_segments,
    parse_segments,
};
pub use trigger::{
    Category, DateTrigger, Entry, EventTrigger, Goal, Missed, Repeat, ScheduleTrigger, Trigger,
};

use crate::model::{NodeId, WorkflowId};

/// One workflow file: a trigger, entry rules, an optional goal, and a graph of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Unique id across `workflows/`, used by the API and in reports.
    pub id: WorkflowId,
    /// A human name.
    pub name: String,
    /// What the journey is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `marketing` (the default: needs consent) or `transactional`.
    #[serde(default)]
    pub category: Category,
    /// What enrolls a customer.
    pub trigger: Located<Trigger>,
    /// Who may enter again: `once` (default), `every_time`, or `cooldown: 7d`.
    #[serde(default)]
    pub entry: Entry,
    /// The conversion event that ends the journey wherever the customer is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Located<Goal>>,
    /// This workflow's quiet hours, replacing the global ones for the channels named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietOverride>,
    /// The first node.
    pub start: Located<NodeId>,
    /// The nodes by id.
    pub nodes: IndexMap<NodeId, Located<Node>>,
    /// Where the workflow came from; not part of the file.
    #[serde(skip)]
    #[schemars(skip)]
    pub source: Source,
}

/// Where a workflow was read from, and the content hash that versions it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The file path as given.
    pub path: PathBuf,
    /// A hash of the file's bytes: customers in flight keep the version they entered with.
    pub version: String,
}

impl Workflow {
    /// The node with this id.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id).map(|n| &n.value)
    }

    /// The longest event-count window any condition of the workflow looks back over,
    /// or `None` when one looks at all of history. The shell loads this much history into
    /// the engine's facts.
    pub fn history_window(&self) -> HistoryNeed {
        let mut need = HistoryNeed::Nothing;
        let mut note = |c: &Condition| {
            if let Some(window) = c.history_window() {
                need = need.max(window.map_or(HistoryNeed::All, HistoryNeed::Within));
            }
        };
        for node in self.nodes.values() {
            match &node.value {
                Node::Branch(b) => b.cases.iter().for_each(|c| c.when.walk(&mut note)),
                _ => continue,
            }
        }
        if let Trigger::Schedule(s) = &self.trigger.value
            && let Some(a) = &s.audience
        {
            a.walk(&mut note);
        }
        need
    }
}

/// How much event history a workflow's conditions need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum HistoryNeed {
    /// No condition counts events.
    #[default]
    Nothing,
    /// Events within this window.
    Within(Duration),
    /// All events.
    All,
}

/// A value with the line of the file it was read from, so problems can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// 1-based line in the workflow file; 0 when the value did not come from a file.
    pub line: u32,
}

impl<T> Located<T> {
    /// A value that did not come from a file.
    pub fn unlocated(value: T) -> Self {
        Self { value, line: 0 }
    }
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(d)?;
        let line = u32::try_from(spanned.referenced.line()).unwrap_or(u32::MAX);
        Ok(Self {
            value: spanned.value,
            line,
        })
    }
}

impl<T: Serialize> Serialize for Located<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}
