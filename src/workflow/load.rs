//! Reading workflow files: strict YAML into typed structs, with located errors.

use std::path::{Path, PathBuf};

use super::{Problem, Source, Workflow};

/// Parses one workflow from its text. `path` is used for messages and kept in [`Source`].
///
/// # Errors
/// The YAML or type error, located at its line.
pub fn parse(path: &Path, text: &str) -> Result<Workflow, Problem> {
    let options = serde_saphyr::options! { with_snippet: false };
    let mut workflow: Workflow =
        serde_saphyr::from_str_with_options(text, options).map_err(|err| {
            let line = err
                .location()
                .map(|l| u32::try_from(l.line()).unwrap_or(u32::MAX))
                .unwrap_or(0);
            Problem::at(path, line, clean_message(&err.to_string()))
        })?;
    workflow.source = Source {
        path: path.to_owned(),
        version: crate::engine::hash::hex_digest(&[text], 16),
    };
    Ok(workflow)
}

/// serde-saphyr appends " at line N column M" to its messages; the line already leads
/// our message, so keep just the sentence.
pub(crate) fn clean_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    let trimmed = match first.rfind(" at line ") {
        Some(at) => &first[..at],
        None => first,
    };
    trimmed.trim().to_owned()
}

/// Reads and parses one workflow file.
///
/// # Errors
/// A problem naming the file when it cannot be read or parsed.
pub fn load_file(path: &Path) -> Result<Workflow, Problem> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Problem::at(path, 0, format!("cannot read file: {err}")))?;
    parse(path, &text)
}

/// The workflow files in `dir`: every `*.yaml` or `*.yml` directly inside it, sorted by name.
/// `segments.yaml` and the `segments/` folder hold segments, not workflows, and are skipped.
///
/// # Errors
/// A problem naming the folder when it cannot be listed.
pub fn workflow_files(dir: &Path) -> Result<Vec<PathBuf>, Problem> {
    let entries = std::fs::read_dir(dir)
        .map_err(|err| Problem::at(dir, 0, format!("cannot read folder: {err}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| p.file_stem().and_then(|s| s.to_str()) != Some("segments"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every workflow in `dir`, collecting every parse problem rather than stopping
/// at the first. Also reports two files that share an id.
pub fn load_dir(dir: &Path) -> (Vec<Workflow>, Vec<Problem>) {
    let files = match workflow_files(dir) {
        Ok(files) => files,
        Err(problem) => return (Vec::new(), vec![problem]),
    };
    let mut workflows: Vec<Workflow> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(wf) => {
                if let Some(other) = workflows.iter().find(|w| w.id == wf.id) {
                    problems.push(Problem::at(
                        &file,
                        0,
                        format!(
                            "workflow id {:?} is already used by {}",
                            wf.id.as_str(),
                            other.source.path.display()
                        ),
                    ));
                } else {
                    workflows.push(wf);
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    (workflows, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "id: hello\nname: Hello\ntrigger:\n  event:\n    name: signup\nstart: done\nnodes:\n  done: exit\n";

    #[test]
    fn a_minimal_workflow_parses_with_lines_and_a_content_version() {
        let wf = parse(Path::new("w.yaml"), MINIMAL).unwrap();
        assert_eq!(wf.id.as_str(), "hello");
        assert_eq!(wf.trigger.line, 4);
        assert_eq!(wf.nodes.values().next().unwrap().line, 8);
        assert_eq!(wf.source.version.len(), 16);
        let changed = parse(Path::new("w.yaml"), &MINIMAL.replace("Hello", "Hi")).unwrap();
        assert_ne!(wf.source.version, changed.source.version);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = MINIMAL.replace("start: done", "start: done\ncolour: blue");
        let problem = parse(Path::new("w.yaml"), &text).unwrap_err();
        assert_eq!(problem.line, 7, "{problem}");
        assert!(problem.message.contains("colour"), "{problem}");
    }

    #[test]
    fn edges_keep_their_own_line() {
        let text = "id: e\nname: E\ntrigger: { event: { name: signup } }\nstart: a\nnodes:\n  a:\n    wait:\n      duration: 1d\n\n      next: b\n  b:\n    branch:\n      cases:\n        - when: { has_tag: x }\n          next: a\n      else: b\n";
        let wf = parse(Path::new("w.yaml"), text).unwrap();
        let lines = |id: &str| -> Vec<u32> {
            wf.nodes[&crate::model::NodeId::parse(id).unwrap()]
                .located_edges()
                .iter()
                .map(|e| e.line)
                .collect()
        };
        assert_eq!(lines("a"), [10]);
        assert_eq!(lines("b"), [15, 16]);
    }
}
