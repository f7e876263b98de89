//! Turns one engine step into writes in the open transaction: rendered outbox messages,
//! profile changes, conversions and the enrollment's new state.

use jiff::Timestamp;
use serde_json::Value;

use super::SchedulerCtx;
use crate::engine::{Effect, Enrollment, Message, Step, WebhookCall, apply_update};
use crate::model::{Channel, Customer, PhoneE164};
use crate::store::{self, Conversion, MessageStatus, NewMessage, Payload, Tx};
use crate::template::render_context;
use crate::workflow::{Category, Workflow};

/// The customer as the step left them, and whether that differs from what is stored.
pub(super) struct CustomerState {
    pub customer: Customer,
    pub changed: bool,
}

/// What [`apply`] wrote: how many messages it queued for delivery, and the marks of those
/// that count toward frequency caps.
pub(super) struct Applied {
    pub queued: usize,
    pub cap_marks: Vec<crate::engine::policy::CapMark>,
}

/// Writes a step's effects and the enrollment's new state.
pub(super) async fn apply(
    ctx: &SchedulerCtx,
    tx: &mut Tx,
    workflow: &Workflow,
    step: &Step,
    state: &mut CustomerState,
    now: Timestamp,
) -> Result<Applied, store::Error> {
    let enrollment = &step.enrollment;
    let mut n_messages = 0;
    let mut cap_marks = Vec::new();
    for effect in &step.effects {
        match effect {
            Effect::Send(message) => {
                let mut new = render_message(ctx, workflow, enrollment, &state.customer, message);
                let address = state.customer.address(message.channel).unwrap_or_default();
                if let Some(reason) = tx.suppression(message.channel, address).await? {
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
                    n_messages += 1;
                    new.cap =
                        crate::engine::policy::counts_toward_caps(workflow.category, effect, now);
                    cap_marks.extend(new.cap);
                }
                tx.insert_message(&new, now).await?;
            }
            Effect::Suppressed {
                key,
                node,
                channel,
                reason,
            } => {
                let new = NewMessage {
                    key: key.to_string(),
                    enrollment_id: enrollment.id.clone(),
                    workflow_id: workflow.id.to_string(),
                    node: node.to_string(),
                    customer_id: state.customer.id.to_string(),
                    template: None,
                    status: MessageStatus::Suppressed,
                    payload: Payload::None,
                    note: Some(format!("{channel}: {reason}")),
                    transactional: workflow.category == Category::Transactional,
                    cap: None,
                };
                tx.insert_message(&new, now).await?;
            }
            Effect::CallWebhook(call) => {
                let new = render_webhook(ctx, workflow, enrollment, &state.customer, call);
                n_messages += usize::from(new.status == MessageStatus::Pending);
                tx.insert_message(&new, now).await?;
            }
            Effect::UpdateProfile { update, .. } => {
                apply_update(update, &mut state.customer);
                state.changed = true;
            }
            Effect::Goal { event, value } => {
                let conversion = Conversion {
                    enrollment_id: enrollment.id.clone(),
                    workflow_id: workflow.id.to_string(),
                    customer_id: state.customer.id.to_string(),
                    event: event.clone(),
                    value: *value,
                    arm: enrollment.arm.clone(),
                    attribution_since: now
                        .checked_sub(
                            jiff::SignedDuration::try_from(ctx.attribution_window)
                                .unwrap_or(jiff::SignedDuration::MAX),
                        )
                        .unwrap_or(Timestamp::MIN),
                };
                tx.record_conversion(&conversion, now).await?;
            }
            Effect::Held {
                key,
                node,
                channel,
                until,
                reason,
            } => {
                // Recorded as a `held` message; the send that follows the hold replaces it.
                let held = NewMessage {
                    key: key.to_string(),
                    enrollment_id: enrollment.id.clone(),
                    workflow_id: workflow.id.to_string(),
                    node: node.to_string(),
                    customer_id: state.customer.id.to_string(),
                    template: None,
                    status: MessageStatus::Held,
                    payload: Payload::None,
                    note: Some(format!("{channel}: {reason} until {until}")),
                    transactional: false,
                    cap: None,
                };
                tx.insert_message(&held, now).await?;
            }
            Effect::WakeAt { .. } | Effect::Exit(_) => {}
        }
    }
    tx.save_enrollment(enrollment, now).await?;
    Ok(Applied {
        queued: n_messages,
        cap_marks,
    })
}

fn context(
    ctx: &SchedulerCtx,
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    channel: Channel,
) -> Value {
    let link = ctx.links.unsubscribe(&customer.id, channel);
    render_context(
        customer,
        enrollment.current_event(),
        (workflow.id.as_str(), &workflow.name),
        &link,
    )
}

fn render_message(
    ctx: &SchedulerCtx,
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    message: &Message,
) -> NewMessage {
    let context = context(ctx, workflow, enrollment, customer, message.channel);
    let address = customer.address(message.channel).unwrap_or_default();
    let payload = match message.channel {
        Channel::Email => ctx
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
                unsubscribe: ctx.links.unsubscribe(&customer.id, Channel::Email),
            }),
        Channel::Sms => PhoneE164::parse(address).and_then(|to| {
            ctx.templates
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
    ctx: &SchedulerCtx,
    workflow: &Workflow,
    enrollment: &Enrollment,
    customer: &Customer,
    call: &WebhookCall,
) -> NewMessage {
    let context = context(ctx, workflow, enrollment, customer, Channel::Email);
    let rendered = (|| {
        let url = ctx.templates.render_url(&call.url, &context)?;
        let headers = call
            .headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), ctx.templates.render_inline(v, &context)?)))
            .collect::<Result<Vec<_>, crate::template::RenderError>>()?;
        let body = call
            .body
            .as_ref()
            .map(|b| ctx.templates.render_json(b, &context))
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
