//! The timeline of a journey: one [`Line`] per thing that happened, as `trellis simulate`
//! prints it (text or JSON) and tests assert it. The shell writes the lines while it plans,
//! when asked to (`Shell::journal`).

use std::fmt::Write as _;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::engine::{Effect, Step};
use crate::store::{MessageStatus, NewMessage, Payload};

/// How many lines of a message body the timeline shows.
const PREVIEW_LINES: usize = 3;

/// What happened at one moment of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// When.
    pub at: Timestamp,
    /// The workflow, named when the timeline holds several.
    pub workflow: Option<String>,
    /// The node involved, if any.
    pub node: Option<String>,
    /// `enter`, `wait`, `send`, `suppressed`, `webhook`, `update`, `goal`, `exit`, `skip`, `error`.
    pub kind: &'static str,
    /// Kind-specific fields, as in the `--json` output.
    pub fields: serde_json::Map<String, Value>,
}

impl Line {
    pub(crate) fn new(
        at: Timestamp,
        node: Option<&str>,
        kind: &'static str,
        fields: Value,
    ) -> Self {
        let fields = match fields {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        Self {
            at,
            workflow: None,
            node: node.map(str::to_owned),
            kind,
            fields,
        }
    }

    /// The line as one JSON object: `at`, `workflow` (when named), `node`, `kind`, then the
    /// fields.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("at".into(), json!(self.at.to_string()));
        if let Some(workflow) = &self.workflow {
            map.insert("workflow".into(), json!(workflow));
        }
        map.insert("node".into(), json!(self.node));
        map.insert("kind".into(), json!(self.kind));
        map.extend(self.fields.clone());
        Value::Object(map)
    }

    /// The line as text for people: time, kind, node (`workflow/node` when the workflow is
    /// named) and a short description.
    pub fn to_text(&self) -> String {
        let f = |k: &str| self.fields.get(k).and_then(Value::as_str).unwrap_or("");
        let node = self.node.as_deref().unwrap_or("-");
        let node = match &self.workflow {
            Some(workflow) => format!("{workflow}/{node}"),
            None => node.to_owned(),
        };
        let detail = match self.kind {
            "wait" => format!("until {} ({})", f("until"), f("local")),
            "send" if f("channel") == "email" => {
                format!("email {} to {}: {:?}", f("template"), f("to"), f("subject"))
            }
            "send" => format!("{} {} to {}", f("channel"), f("template"), f("to")),
            "suppressed" => format!("{} not sent: {}", f("channel"), f("reason")),
            "held" => format!(
                "{} held until {} ({})",
                f("channel"),
                f("until"),
                f("reason")
            ),
            "webhook" => format!("{} {}", f("method"), f("url")),
            "update" => self
                .fields
                .get("update")
                .map(Value::to_string)
                .unwrap_or_default(),
            "goal" => match self.fields.get("value").and_then(Value::as_f64) {
                Some(v) => format!("{} reached, value {v:.2}", f("event")),
                None => format!("{} reached", f("event")),
            },
            "exit" => f("reason").to_owned(),
            "skip" | "error" => f("reason").to_owned(),
            _ => String::new(),
        };
        let mut out = format!("{}  {:<10} {:<16} {}", self.at, self.kind, node, detail)
            .trim_end()
            .to_owned();
        if let Some(body) = self.fields.get("body").and_then(Value::as_str) {
            for line in body.lines() {
                let _ = write!(out, "\n{:>33}| {line}", "");
            }
        }
        out
    }
}

/// The lines of one engine step: each node entered, followed by the effects it produced;
/// effects before the first visit (a goal reached while waiting) come first, at the node
/// that was waiting. `rows` are the outbox rows the step's sends, holds, suppressions and
/// webhooks became, in effect order; `zone` is the zone wait lines show local times in.
pub(crate) fn step_lines(
    step: &Step,
    waiting_at: Option<&str>,
    rows: &[NewMessage],
    zone: &jiff::tz::TimeZone,
    now: Timestamp,
) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut rows = rows.iter();
    let first = step
        .path
        .first()
        .map_or(step.effects.len(), |v| v.first_effect);
    let mut node = waiting_at.map(str::to_owned);
    let mut visits = step.path.iter().peekable();
    for (i, effect) in step.effects.iter().enumerate() {
        while let Some(visit) = visits.next_if(|v| v.first_effect <= i && i >= first) {
            node = Some(visit.node.to_string());
            lines.push(Line::new(now, node.as_deref(), "enter", json!({})));
        }
        let row = matches!(
            effect,
            Effect::Send(_)
                | Effect::Held { .. }
                | Effect::Suppressed { .. }
                | Effect::CallWebhook(_)
        )
        .then(|| rows.next())
        .flatten();
        lines.push(effect_line(effect, row, node.as_deref(), zone, now));
    }
    for visit in visits {
        lines.push(Line::new(
            now,
            Some(visit.node.as_str()),
            "enter",
            json!({}),
        ));
    }
    lines
}

/// The line of one effect, with the outbox row it became, if any.
fn effect_line(
    effect: &Effect,
    row: Option<&NewMessage>,
    node: Option<&str>,
    zone: &jiff::tz::TimeZone,
    now: Timestamp,
) -> Line {
    let failed = row.filter(|r| r.status == MessageStatus::Failed);
    match effect {
        Effect::Send(message) => {
            let node = Some(message.node.as_str());
            if let Some(failed) = failed {
                return Line::new(now, node, "error", json!({"reason": failed.note}));
            }
            if let Some(row) = row.filter(|r| r.status == MessageStatus::Suppressed) {
                return Line::new(
                    now,
                    node,
                    "suppressed",
                    json!({"channel": message.channel.as_str(), "reason": row.note}),
                );
            }
            let mut fields = json!({
                "channel": message.channel.as_str(),
                "template": message.template,
                "key": message.key.as_str(),
            });
            match row.map(|r| &r.payload) {
                Some(Payload::Email {
                    to, subject, text, ..
                }) => {
                    fields["to"] = json!(to);
                    fields["subject"] = json!(subject);
                    fields["body"] = json!(preview(text));
                }
                Some(Payload::Sms { to, body }) => {
                    fields["to"] = json!(to);
                    fields["body"] = json!(body);
                }
                _ => {}
            }
            Line::new(now, node, "send", fields)
        }
        Effect::Held {
            node,
            channel,
            until,
            reason,
            ..
        } => Line::new(
            now,
            Some(node.as_str()),
            "held",
            json!({"channel": channel.as_str(), "until": until.to_string(), "reason": reason.to_string()}),
        ),
        Effect::Suppressed {
            node,
            channel,
            reason,
            ..
        } => Line::new(
            now,
            Some(node.as_str()),
            "suppressed",
            json!({"channel": channel.as_str(), "reason": reason.to_string()}),
        ),
        Effect::CallWebhook(call) => {
            let node = Some(call.node.as_str());
            match (failed, row.map(|r| &r.payload)) {
                (None, Some(Payload::Webhook { method, url, .. })) => Line::new(
                    now,
                    node,
                    "webhook",
                    json!({"method": method, "url": url, "key": call.key.as_str()}),
                ),
                _ => Line::new(
                    now,
                    node,
                    "error",
                    json!({"reason": row.and_then(|r| r.note.clone())}),
                ),
            }
        }
        Effect::UpdateProfile { node, update } => {
            // The edge is the workflow's business; the timeline shows what changed.
            let mut changes = json!(update);
            if let Some(map) = changes.as_object_mut() {
                map.remove("next");
            }
            Line::new(
                now,
                Some(node.as_str()),
                "update",
                json!({ "update": changes }),
            )
        }
        Effect::WakeAt { node, at } => {
            let local = at.to_zoned(zone.clone());
            Line::new(
                now,
                Some(node.as_str()),
                "wait",
                json!({"until": at.to_string(), "local": local.strftime("%Y-%m-%d %H:%M %Z").to_string()}),
            )
        }
        Effect::Goal { event, value } => {
            Line::new(now, node, "goal", json!({"event": event, "value": value}))
        }
        Effect::Exit(reason) => Line::new(now, node, "exit", json!({"reason": reason.to_string()})),
    }
}

fn preview(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(PREVIEW_LINES)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The timeline as text, one moment a line (message bodies indented below their send).
pub fn render_text(lines: &[Line]) -> String {
    lines.iter().map(|l| l.to_text() + "\n").collect()
}

/// The timeline as JSON lines.
pub fn render_json(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| l.to_json().to_string() + "\n")
        .collect()
}
