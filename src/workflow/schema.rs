//! The JSON Schema of workflow files, generated from the same types the parser uses.
//! `workflows/workflow.schema.json` is this output, committed; a test keeps it current.

use super::Workflow;

/// Where the committed schema lives, relative to the repository root.
pub const SCHEMA_PATH: &str = "workflows/workflow.schema.json";

/// The schema as pretty-printed JSON with a trailing newline.
pub fn workflow_schema() -> String {
    let mut schema = schemars::schema_for!(Workflow);
    schema.insert("title".into(), "Trellis workflow".into());
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is always valid JSON");
    text.push('\n');
    text
}
