//! The render context: what a template can see. Secrets never enter it.

use serde_json::{Value, json};

use crate::model::{Customer, Event};

/// The roots a template may use, and the fields each provides. The validator checks
/// templates against this list, so keep it in step with [`render_context`].
pub const ROOTS: &[(&str, &[&str])] = &[
    (
        "customer",
        &[
            "id",
            "email",
            "phone",
            "timezone",
            "locale",
            "attributes",
            "tags",
            "consent",
        ],
    ),
    ("event", &["id", "name", "timestamp", "properties"]),
    ("workflow", &["id", "name"]),
    ("links", &["unsubscribe"]),
];

/// Builds the JSON a template renders against.
pub fn render_context(
    customer: &Customer,
    event: Option<&Event>,
    workflow: (&str, &str),
    unsubscribe_link: &str,
) -> Value {
    json!({
        "customer": {
            "id": customer.id,
            "email": customer.email,
            "phone": customer.phone,
            "timezone": customer.timezone,
            "locale": customer.locale,
            "attributes": customer.attributes,
            "tags": customer.tags,
            "consent": customer.consent,
        },
        "event": event.map(|e| json!({
            "id": e.id,
            "name": e.name,
            "timestamp": e.timestamp.to_string(),
            "properties": e.properties,
        })),
        "workflow": { "id": workflow.0, "name": workflow.1 },
        "links": { "unsubscribe": unsubscribe_link },
    })
}
