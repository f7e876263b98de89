//! `branch`: the first case whose condition holds, else the `else` edge.

use crate::engine::condition::holds;
use crate::engine::{Flow, Run};
use crate::workflow::Branch;

pub(super) fn visit(branch: &Branch, run: &mut Run<'_>) -> Flow {
    let scope = run.scope();
    let next = branch
        .cases
        .iter()
        .find(|case| holds(&case.when, &scope))
        .map_or(&branch.otherwise, |case| &case.next);
    Flow::Next(next.value.clone())
}
