//! `webhook`: an HTTP call with a stable idempotency key; the shell renders and sends it.

use crate::engine::{Effect, Flow, Run, WebhookCall};
use crate::workflow::Webhook;

pub(super) fn visit(hook: &Webhook, run: &mut Run<'_>) -> Flow {
    run.effects.push(Effect::CallWebhook(WebhookCall {
        key: run.key(),
        node: run.node_id(),
        method: hook.method,
        url: hook.url.clone(),
        headers: hook
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: hook.body.clone(),
    }));
    Flow::Next(hook.next.value.clone())
}
