//! `send_email` and `send_sms`: one message with a stable key, or a recorded suppression.

use crate::engine::{Effect, Flow, Message, Run, Suppression};
use crate::model::{Channel, NodeId};
use crate::workflow::Category;

/// What a send node asks for.
pub(super) struct Request<'a> {
    pub channel: Channel,
    pub template: &'a str,
    pub from: Option<&'a str>,
    pub reply_to: Option<&'a str>,
}

pub(super) fn visit(request: Request<'_>, next: &NodeId, run: &mut Run<'_>) -> Flow {
    let key = run.key();
    let node = run.node_id();
    let suppression = if run.customer.address(request.channel).is_none() {
        Some(Suppression::NoAddress)
    } else if run.workflow.category == Category::Marketing
        && !run.customer.consent.allows(request.channel)
    {
        Some(Suppression::NoConsent)
    } else {
        None
    };
    run.effects.push(match suppression {
        Some(reason) => Effect::Suppressed {
            key,
            node,
            channel: request.channel,
            reason,
        },
        None => Effect::Send(Message {
            key,
            node,
            channel: request.channel,
            template: request.template.to_owned(),
            from: request.from.map(str::to_owned),
            reply_to: request.reply_to.map(str::to_owned),
        }),
    });
    Flow::Next(next.clone())
}
