//! Turns one engine step's effects into writes: rendered outbox messages, suppressions and
//! holds, profile changes and conversions. Pure: the suppression list comes loaded.

use jiff::Timestamp;
use serde_json::Value;

use super::{Shell, Working};
use crate::engine::{Effect, Enrollment, Message, Step, WebhookCall, apply_update};
use crate::model::{Channel, Customer, PhoneE164};
use crate::store::{Conversion, MessageStatus, NewMessage, Payload};
use crate::template::render_context;
use crate::workflow::{Category, Workflow};

/// Adds a step's effects and the enrollment's new state to the customer's writes; returns the
/// marks of the sends that count toward frequency caps.
pub(super) fn apply(
    shell: &Shell,
    workflow: &Workflow,
    step: &Step,
    working: &mut Working,
    now: Timestamp,
) -> Vec<crate::engine::policy::CapMark> {
    let enrollment = &step.enrollment;
    let mut cap_marks = Vec::new();
    for effect in &step.effects {
        match effect {
            Effect::Send(message) => {
                let mut new =
                    render_message(shell, workflow, enrollment, &working.customer, message);
                let address = working
                    .customer
                    .address(message.channel)
                    .unwrap_or_default();
                if let Some(reason) = working
                    .state
                    .suppressed
                    .get(&(message.channel, address.to_owned()))
                {
                    new.status = MessageStatus::Suppressed;
                    new.payload = Payload::None;
                    new.note = Some(format!(
                        "{}: address suppressed ({reason})",
                        message.channel
                    ));
                }
                // Only a message queued for delivery counts toward caps: one that could not
                // be rendered, or whose address is suppressed, never goes out.
                if new.status == MessageStatus::Pending {
                    new.cap =
                        crate::engine::policy::counts_toward_caps(workflow.category, effect, now);
                    cap_marks.extend(new.cap);
                }
                working.write.messages.push(new);
            }
            Effect::Suppressed {
                key,
                node,
                channel,
                reason,
            } => {
                let mut row = record_row(workflow, enrollment, &working.customer, key, node);
                row.status = MessageStatus::Suppressed;
                row.note = Some(format!("{channel}: {reason}"));
                row.transactional = workflow.category == Category::Transactional;
                working.write.messages.push(row);
            }
            Effect::CallWebhook(call) => {
                let new = render_webhook(shell, workflow, enrollment, &working.customer, call);
                working.write.messages.push(new);
            }
            Effect::UpdateProfile { update, .. } => {
                apply_update(update, &mut working.customer);
                working.changed = true;
            }
            Effect::Goal { event, value } => {
                working.write.conversions.push(Conversion {
                    enrollment_id: enrollment.id.clone(),
                    workflow_id: workflow.id.to_string(),
                    customer_id: working.customer.id.to_string(),
                    event: event.clone(),
                    value: *value,
                    arm: enrollment.arm.clone(),
                    attribution_since: now
                        .checked_sub(
                            jiff::SignedDuration::try_from(shell.attribution_window)
                                .unwrap_or(jiff::SignedDuration::MAX),
                        )
                        .unwrap_or(Timestamp::MIN),
                });
            }
            Effect::Held {
                key,
                node,
                channel,
                until,
                reason,
            } => {
                // Recorded as a `held` message; the send that follows the hold replaces it.
                let mut row = record_row(workflow, enrollment, &working.customer, key, node);
                row.status = MessageStatus::Held;
                row.note = Some(format!("{channel}: {reason} until {until}"));
                working.write.messages.push(row);
            }
            Effect::WakeAt { .. } | Effect::Exit(_) => {}
        }
    }
    working.write.enrollments.push(enrollment.clone());
    cap_marks
}

/// An outbox row that records a decision and delivers nothing (a hold, a suppression); the
/// caller sets its status and note.
fn record_row(
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    key: &crate::model::IdempotencyKey,
    node: &crate::model::NodeId,
) -> NewMessage {
    NewMessage {
        key: key.to_string(),
        enrollment_id: enrollment.id.clone(),
        workflow_id: workflow.id.to_string(),
        node: node.to_string(),
        customer_id: customer.id.to_string(),
        template: None,
        status: MessageStatus::Suppressed,
        payload: Payload::None,
        note: None,
        transactional: false,
        cap: None,
    }
}

fn context(
    shell: &Shell,
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    channel: Channel,
) -> Value {
    let link = shell.links.unsubscribe(&customer.id, channel);
    // A customer without a zone lives in the default zone for waits, quiet hours and
    // triggers; their dates read in it too (`customer.timezone` is what the `date` helper
    // and the templates see).
    let customer = crate::engine::policy::with_default_zone(customer, &shell.policy);
    render_context(
        &customer,
        enrollment.current_event(),
        (workflow.id.as_str(), &workflow.name),
        &link,
    )
}

fn render_message(
    shell: &Shell,
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    message: &Message,
) -> NewMessage {
    let context = context(shell, workflow, enrollment, customer, message.channel);
    let address = customer.address(message.channel).unwrap_or_default();
    let payload = match message.channel {
        Channel::Email => shell
            .templates
            .render_email(&message.template, &context)
            .map_err(|e| e.to_string())
            .map(|email| Payload::Email {
                to: address.to_owned(),
                from: message.from.clone(),
                reply_to: message.reply_to.clone(),
                subject: email.subject,
                html: email.html,
                text: email.text,
                unsubscribe: shell.links.unsubscribe(&customer.id, Channel::Email),
            }),
        Channel::Sms => PhoneE164::parse(address).and_then(|to| {
            shell
                .templates
                .render_sms(&message.template, &context)
                .map_err(|e| e.to_string())
                .map(|body| Payload::Sms {
                    to: to.to_string(),
                    body,
                })
        }),
    };
    let (status, payload, note) = match payload {
        Ok(payload) => (MessageStatus::Pending, payload, None),
        // A message that cannot be rendered is recorded as failed; the journey goes on.
        Err(reason) => (MessageStatus::Failed, Payload::None, Some(reason)),
    };
    NewMessage {
        key: message.key.to_string(),
        enrollment_id: enrollment.id.clone(),
        workflow_id: workflow.id.to_string(),
        node: message.node.to_string(),
        customer_id: customer.id.to_string(),
        template: Some(message.template.clone()),
        status,
        payload,
        note,
        transactional: workflow.category == Category::Transactional,
        cap: None,
    }
}

fn render_webhook(
    shell: &Shell,
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    call: &WebhookCall,
) -> NewMessage {
    let context = context(shell, workflow, enrollment, customer, Channel::Email);
    let rendered = (|| {
        let url = shell.templates.render_url(&call.url, &context)?;
        let headers = call
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), shell.templates.render_inline(v, &context)?)))
            .collect::<Result<Vec<_>, crate::template::RenderError>>()?;
        let body = call
            .body
            .as_ref()
            .map(|b| shell.templates.render_json(b, &context))
            .transpose()?;
        Ok::<_, crate::template::RenderError>(Payload::Webhook {
            method: call.method.as_str().to_owned(),
            url,
            headers,
            body,
        })
    })();
    let (status, payload, note) = match rendered {
        Ok(payload) => (MessageStatus::Pending, payload, None),
        Err(err) => (MessageStatus::Failed, Payload::None, Some(err.to_string())),
    };
    NewMessage {
        key: call.key.to_string(),
        enrollment_id: enrollment.id.clone(),
        workflow_id: workflow.id.to_string(),
        node: call.node.to_string(),
        customer_id: customer.id.to_string(),
        template: None,
        status,
        payload,
        note,
        transactional: workflow.category == Category::Transactional,
        cap: None,
    }
}
