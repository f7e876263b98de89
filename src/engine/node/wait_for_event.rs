//! `wait_for_event`: pause until a matching event arrives or the timeout passes.
//!
//! Entering only arms the timeout; `Run::on_event` and `Run::on_wake` take the edges.

use crate::engine::{Flow, Run};
use crate::workflow::WaitForEvent;

pub(super) fn visit(wait: &WaitForEvent, run: &mut Run<'_>) -> Flow {
    Flow::Sleep(
        run.now
            .saturating_add(wait.timeout.as_signed())
            .unwrap_or(run.now),
    )
}
