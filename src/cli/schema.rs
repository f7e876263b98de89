//! `trellis schema`: the JSON Schema of workflow files, for editors and CI.

use std::io::Write;
use std::process::ExitCode;

/// Prints the schema.
pub fn run() -> anyhow::Result<ExitCode> {
    std::io::stdout().write_all(crate::workflow::schema::workflow_schema().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
