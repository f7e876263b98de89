//! `exit`: the journey ends here.

use crate::engine::{ExitReason, Flow};

pub(super) fn visit() -> Flow {
    Flow::End(ExitReason::Completed)
}
