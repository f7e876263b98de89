//! Segment membership: which segments' conditions hold for a customer. Pure.

use std::collections::BTreeSet;

use super::condition::{Scope, holds};
use crate::workflow::SegmentDef;

/// The segments `scope`'s customer belongs to. Segments are evaluated in definition order,
/// so a segment's `in_segment` sees the segments defined before it.
pub fn membership(defs: &[SegmentDef], scope: &Scope<'_>) -> BTreeSet<String> {
    let mut members = BTreeSet::new();
    for def in defs {
        let inner = Scope {
            segments: &members,
            ..*scope
        };
        if holds(&def.segment.when, &inner) {
            members.insert(def.id.clone());
        }
    }
    members
}
