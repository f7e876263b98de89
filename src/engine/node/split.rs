//! `split`: a weighted arm chosen by a hash of workflow and customer, so that a re-run,
//! a retry or a second enrollment gives the same arm.

use crate::engine::hash::bucket;
use crate::engine::{ExitReason, Flow, Run};
use crate::workflow::Split;

pub(super) fn visit(split: &Split, run: &mut Run<'_>) -> Flow {
    let total: u64 =
        split.arms.iter().map(|a| u64::from(a.weight)).sum::<u64>() + u64::from(split.holdout);
    let node = run.node_id();
    let mut point = bucket(
        &[
            run.workflow.id.as_str(),
            node.as_str(),
            run.customer.id.as_str(),
        ],
        total,
    );
    for arm in &split.arms {
        if point < u64::from(arm.weight) {
            run.enrollment.arm = Some(arm.name.clone());
            return Flow::Next(arm.next.value.clone());
        }
        point -= u64::from(arm.weight);
    }
    if split.holdout > 0 {
        run.enrollment.arm = Some("holdout".into());
        return Flow::End(ExitReason::HeldOut);
    }
    Flow::End(ExitReason::Broken("split has no arm with a weight".into()))
}
