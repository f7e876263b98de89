//! `send_email` and `send_sms`: one message with a stable key, or a recorded suppression.

use crate::engine::policy::Overflow;
use crate::engine::{Effect, Flow, Message, Run, Suppression};
use crate::model::{Channel, NodeId};
use crate::workflow::Category;

/// When a marketing message may go, if not now: the end of quiet hours, or when a frequency
/// cap frees a place (counting sends earlier in this step).
fn held_until(
    request: &Request<'_>,
    run: &Run<'_>,
) -> Option<(jiff::Timestamp, Suppression, Overflow)> {
    let policy = run.facts.policy;
    let quiet = run
        .workflow
        .quiet_hours
        .as_ref()
        .map_or(policy.quiet(request.channel), |o| {
            o.for_channel(request.channel, policy.quiet(request.channel))
        });
    if let Some(end) =
        quiet.and_then(|q| crate::engine::policy::quiet_ends_after(q, run.now, &run.tz()))
    {
        return Some((end, Suppression::QuietHours, policy.quiet_mode));
    }
    let mut sends: Vec<jiff::Timestamp> = run
        .facts
        .recent_sends
        .iter()
        .filter(|(c, _)| *c == request.channel)
        .map(|(_, at)| *at)
        .collect();
    // Sends earlier in this step, counted by the one rule every shell uses.
    sends.extend(
        run.effects
            .iter()
            .filter_map(|e| {
                crate::engine::policy::counts_toward_caps(run.workflow.category, e, run.now)
            })
            .filter(|mark| mark.channel() == request.channel)
            .map(crate::engine::policy::CapMark::at),
    );
    policy
        .cap_allows_at(request.channel, &sends, run.now)
        .map(|at| (at, Suppression::FrequencyCap, policy.cap_mode))
}

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
    let marketing = run.workflow.category == Category::Marketing;
    let suppression = if run.customer.address(request.channel).is_none() {
        Some(Suppression::NoAddress)
    } else if marketing && !run.customer.consent.allows(request.channel) {
        Some(Suppression::NoConsent)
    } else if marketing {
        // Quiet hours first, then caps; transactional messages are exempt from both.
        match held_until(&request, run) {
            Some((until, reason, Overflow::Delay)) => {
                run.effects.push(Effect::Held {
                    key,
                    node,
                    channel: request.channel,
                    until,
                    reason,
                });
                return Flow::Sleep(until);
            }
            Some((_, reason, Overflow::Drop)) => Some(reason),
            None => None,
        }
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
