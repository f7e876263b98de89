//! `trellis validate [PATH...]`: every problem in workflows and templates, in one run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::workflow::validate::check_paths;

/// Arguments of `trellis validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workflow files or folders of them.
    #[arg(default_value = "workflows")]
    pub paths: Vec<PathBuf>,
    /// The templates folder.
    #[arg(long, default_value = "templates", env = "TRELLIS_TEMPLATES")]
    pub templates: PathBuf,
}

/// Prints each problem on stdout; exits 1 when there is any.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let paths: Vec<&Path> = args.paths.iter().map(PathBuf::as_path).collect();
    let checked = check_paths(&paths, &args.templates);
    let (workflows, problems) = (checked.workflows, checked.problems);
    let mut out = std::io::stdout().lock();
    for problem in &problems {
        writeln!(out, "{problem}")?;
    }
    if problems.is_empty() {
        writeln!(out, "ok: {} workflows, no problems", workflows.len())?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "{} problems", problems.len())?;
        Ok(ExitCode::FAILURE)
    }
}
