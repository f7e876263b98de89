//! Segments: named conditions over attributes, tags and event history, defined in
//! `workflows/segments.yaml` or in files under `workflows/segments/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, HistoryNeed, Located, Problem};

/// One segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// What the segment is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who is in it.
    pub when: Condition,
}

/// A segments file: `segments: { id: { description, when } }`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentsFile {
    /// Segments by id.
    pub segments: IndexMap<String, Located<Segment>>,
}

/// A segment with where it was defined.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDef {
    /// Its id, as triggers and `in_segment` name it.
    pub id: String,
    /// The definition.
    pub segment: Segment,
    /// The file.
    pub file: PathBuf,
    /// The line of its definition.
    pub line: u32,
}

/// The segment files in a workflows folder: `segments.yaml` and `segments/*.yaml`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["segments.yaml", "segments.yml"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("segments")) {
        let mut more: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
}

/// Loads and checks every segment in `dir`, in definition order; a segment may use
/// `in_segment` only for segments defined before it.
pub fn load_segments(dir: &Path) -> (Vec<SegmentDef>, Vec<Problem>) {
    let mut defs: Vec<SegmentDef> = Vec::new();
    let mut problems = Vec::new();
    for file in segment_files(dir) {
        if let Some(problem) = super::load::escapes(dir, &file) {
            problems.push(problem);
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => read_segments(&file, &text, &mut defs, &mut problems),
            Err(err) => problems.push(Problem::at(&file, 0, format!("cannot read file: {err}"))),
        }
    }
    (defs, problems)
}

/// Parses and checks the segments of one file's text, as [`load_segments`] does for each
/// file. `file` is used for messages and kept in each [`SegmentDef`]. Pure.
pub fn parse_segments(file: &Path, text: &str) -> (Vec<SegmentDef>, Vec<Problem>) {
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    read_segments(file, text, &mut defs, &mut problems);
    (defs, problems)
}

/// Adds the segments of `text` to `defs`, after those already there, and their problems
/// to `problems`.
fn read_segments(file: &Path, text: &str, defs: &mut Vec<SegmentDef>, problems: &mut Vec<Problem>) {
    if text.len() > super::load::MAX_FILE_BYTES {
        problems.push(super::load::too_large(
            file,
            "split its segments over files in segments/",
        ));
        return;
    }
    let parsed: SegmentsFile = match super::load::read(text) {
        Ok(parsed) => parsed,
        Err(err) => {
            problems.push(super::load::problem(file, &err));
            return;
        }
    };
    for (id, located) in parsed.segments {
        let at = |message: String| {
            Problem::at(file, located.line, message).in_place(format!("segment {id}"))
        };
        if defs.iter().any(|d| d.id == id) {
            problems.push(at("segment id is defined twice".into()));
            continue;
        }
        let mut notes = Vec::new();
        super::validate::check_condition(&located.when, &mut notes);
        let known: BTreeSet<&str> = defs.iter().map(|d| d.id.as_str()).collect();
        located.when.walk(&mut |c| {
            if let Condition::InSegment(name) = c
                && !known.contains(name.as_str())
            {
                notes.push(format!(
                    "in_segment {name:?}: only segments defined above this one can be used"
                ));
            }
        });
        problems.extend(notes.into_iter().map(at));
        defs.push(SegmentDef {
            id,
            segment: located.value.clone(),
            file: file.to_owned(),
            line: located.line,
        });
    }
}

/// How much event history the segments' conditions need.
pub fn history_need(defs: &[SegmentDef]) -> HistoryNeed {
    let mut need = HistoryNeed::Nothing;
    for def in defs {
        def.segment.when.walk(&mut |c| {
            if let Some(window) = c.history_window() {
                need = need.max(window.map_or(HistoryNeed::All, HistoryNeed::Within));
            }
        });
    }
    need
}
