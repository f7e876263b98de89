//! What each node kind does when a journey enters it: one file per kind.

mod branch;
mod exit;
mod send;
mod split;
mod update;
mod wait;
mod wait_for_event;

pub use update::apply as apply_update;
mod webhook;

use super::{Flow, Run};
use crate::model::Channel;
use crate::workflow::Node;

/// Runs the node the journey just entered.
pub(crate) fn visit(node: &Node, run: &mut Run<'_>) -> Flow {
    match node {
        Node::Wait(n) => wait::visit(n, run),
        Node::WaitForEvent(n) => wait_for_event::visit(n, run),
        Node::Branch(n) => branch::visit(n, run),
        Node::Split(n) => split::visit(n, run),
        Node::SendEmail(n) => send::visit(
            send::Request {
                channel: Channel::Email,
                template: &n.template,
                from: n.from.as_deref(),
                reply_to: n.reply_to.as_deref(),
            },
            &n.next,
            run,
        ),
        Node::SendSms(n) => send::visit(
            send::Request {
                channel: Channel::Sms,
                template: &n.template,
                from: None,
                reply_to: None,
            },
            &n.next,
            run,
        ),
        Node::Webhook(n) => webhook::visit(n, run),
        Node::Update(n) => update::visit(n, run),
        Node::Exit => exit::visit(),
    }
}
