//! `update`: change attributes and tags. Later nodes in the same step see the change.

use crate::engine::{Effect, Flow, Run};
use crate::workflow::Update;

pub(super) fn visit(update: &Update, run: &mut Run<'_>) -> Flow {
    apply(update, run.customer.to_mut());
    run.effects.push(Effect::UpdateProfile {
        node: run.node_id(),
        update: update.clone(),
    });
    Flow::Next(update.next.value.clone())
}

/// Applies an update to a profile; the shells use the same function, so the engine's view
/// and the stored profile agree.
pub fn apply(update: &Update, customer: &mut crate::model::Customer) {
    for (name, value) in &update.set {
        customer.attributes.insert(name.clone(), value.clone());
    }
    for name in &update.unset {
        customer.attributes.remove(name);
    }
    for tag in &update.add_tags {
        customer.tags.insert(tag.clone());
    }
    for tag in &update.remove_tags {
        customer.tags.remove(tag);
    }
}
