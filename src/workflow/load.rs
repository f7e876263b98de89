//! Reading workflow files: strict YAML into typed structs, with located errors.
//!
//! A file that does not parse whole is read again part by part (each top-level key, and
//! each node under `nodes:`, on its own), so every format error in it is reported in one
//! run, each with its line and the node or key it is in.

use std::path::{Path, PathBuf};

use serde_saphyr::{Error, Options};

use super::outline::{self, Entry};
use super::{Located, Node, Problem, Source, Workflow};
use crate::model::NodeId;

/// Limits on what one file may make the parser do, far above any workflow or segments file
/// written by hand: without them, a few lines of nested aliases ("billion laughs") expand to
/// hundreds of thousands of values, and a file takes seconds to be refused.
const MAX_NODES: usize = 50_000;
/// The largest workflow or segments file: far above any written by hand (the examples hold
/// about 1 kB), and a bound on the time a file takes to be read or refused (80 kB took 40 ms
/// in a debug build).
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// The problem of a file larger than [`MAX_FILE_BYTES`], with what to do instead.
pub(super) fn too_large(path: &Path, advice: &str) -> Problem {
    Problem::at(
        path,
        0,
        format!(
            "the file is larger than {} KiB: {advice}",
            MAX_FILE_BYTES / 1024
        ),
    )
}

/// Values copied by aliases, in all.
const MAX_REPLAYED: usize = 10_000;

fn options() -> Options {
    serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_NODES,
            max_events: 4 * MAX_NODES,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: MAX_REPLAYED,
            max_documents: 1,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED,
        },
    }
}

/// Deserialises `text` as a `T` with the loader's options.
pub(super) fn read<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// Parses one workflow from its text. `path` is used for messages and kept in [`Source`].
///
/// # Errors
/// Every YAML or type error found, each located at its line and, when it is in one, named
/// by its node (`node remind`) or top-level key (`trigger`).
pub fn parse(path: &Path, text: &str) -> Result<Workflow, Vec<Problem>> {
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![too_large(path, "split it into several workflows")]);
    }
    let mut workflow: Workflow = read(text).map_err(|err| recover(path, text, &err))?;
    workflow.source = Source {
        path: path.to_owned(),
        version: crate::engine::hash::hex_digest(&[text], 16),
    };
    Ok(workflow)
}

/// A serde-saphyr error as a problem at its line.
pub(super) fn problem(path: &Path, err: &Error) -> Problem {
    let line = err
        .location()
        .map(|l| u32::try_from(l.line()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let message = clean_message(&err.to_string());
    let message = if message.starts_with("budget breached") || message.contains("replay") {
        format!(
            "the file is too large, or its aliases expand too far: at most {MAX_NODES} values, \
             {MAX_REPLAYED} of them copied by aliases ({message})"
        )
    } else {
        message
    };
    Problem::at(path, line, message)
}

/// The most parts (top-level keys and nodes) read one by one after a format error: enough
/// for any workflow written by hand, and a bound on the time a generated file can take.
/// Problems beyond are found once those before are fixed.
const MAX_PARTS: usize = 200;

/// Every problem of a file that did not parse whole, `whole` being the first error. Parts
/// are cut out with their lines kept and deserialised one by one; when every part is well
/// formed on its own (a missing key, a duplicate key, an alias across parts), the whole
/// file's error is reported, attributed to the part its line falls in.
fn recover(path: &Path, text: &str, whole: &Error) -> Vec<Problem> {
    let first = problem(path, whole);
    let Some(outline) = outline::outline(text) else {
        return vec![first]; // Not YAML, or not a mapping: nothing to recover.
    };
    let top = outline.entries;
    if outline.aliases {
        return vec![attribute(first, &top)]; // Parts that refer to each other.
    }
    let excerpts = outline::Excerpts::new(text);
    let mut problems = Vec::new();
    let mut parts = 0;
    for entry in &top {
        match (entry.key.as_str(), &entry.entries) {
            ("nodes", Some(nodes)) => {
                for node in nodes.iter().take(MAX_PARTS.saturating_sub(parts)) {
                    problems.extend(node_problem(path, &excerpts, node));
                }
                parts += nodes.len();
            }
            _ if parts < MAX_PARTS => {
                problems.extend(key_problem(path, &excerpts, entry));
                parts += 1;
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        problems.push(match whole.without_snippet() {
            // Located at wherever the parser stood; it concerns the file as a whole.
            Error::SerdeMissingField { .. } => Problem { line: 0, ..first },
            _ => attribute(first, &top),
        });
    }
    problems
}

/// The problem of one entry under `nodes:`, if its id or its value is malformed.
fn node_problem(path: &Path, excerpts: &outline::Excerpts<'_>, node: &Entry) -> Option<Problem> {
    let place = format!("node {}", node.key);
    let id = excerpts.part(node.key_span.clone());
    if let Err(err) = read::<NodeId>(&id) {
        let mut found = problem(path, &err).in_place(place);
        if found.line == 0 {
            found.line = node.line;
        }
        return Some(found);
    }
    let value = excerpts.part(node.value_span.clone());
    read::<Located<Node>>(&value)
        .err()
        .map(|err| problem(path, &err).in_place(place))
}

/// The problem of one top-level `key: value`, read as a workflow of that key alone: an
/// unknown key or a malformed value fails there, and the keys it lacks are ignored.
fn key_problem(path: &Path, excerpts: &outline::Excerpts<'_>, entry: &Entry) -> Option<Problem> {
    let alone = excerpts.part(entry.key_span.start..entry.value_span.end);
    match read::<Workflow>(&alone) {
        Ok(_) => None,
        Err(err) => match err.without_snippet() {
            Error::SerdeMissingField { .. } => None,
            Error::SerdeUnknownField { field, .. } if *field == entry.key => {
                Some(problem(path, &err))
            }
            _ => Some(problem(path, &err).in_place(entry.key.clone())),
        },
    }
}

/// The whole file's problem, named by the node or top-level key its line falls in.
fn attribute(problem: Problem, top: &[Entry]) -> Problem {
    let within = |e: &Entry| (e.line..=e.last_line).contains(&problem.line);
    let Some(entry) = top.iter().find(|e| within(e)) else {
        return problem;
    };
    let node = match (entry.key.as_str(), &entry.entries) {
        ("nodes", Some(nodes)) => nodes.iter().find(|n| within(n)),
        _ => None,
    };
    match node {
        Some(node) => problem.in_place(format!("node {}", node.key)),
        None if entry.key == "nodes" => problem,
        None => problem.in_place(entry.key.clone()),
    }
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

/// A problem when `path`, inside the folder `root`, is (or lies under) a symbolic link to
/// somewhere outside `root`: workflows, segments and templates are read only from inside
/// the folders they are configured in, so a link cannot smuggle in `/etc/passwd` or another
/// project's files. Links that stay inside are fine; a dangling link is left to the read
/// that follows, which names it.
pub fn escapes(root: &Path, path: &Path) -> Option<Problem> {
    let root_real = std::fs::canonicalize(root).ok()?;
    let real = std::fs::canonicalize(path).ok()?;
    if real.starts_with(&root_real) {
        return None;
    }
    Some(Problem::at(
        path,
        0,
        format!(
            "refused: a symbolic link to {}, outside {} (files are read only from inside the folder)",
            real.display(),
            root.display()
        ),
    ))
}

/// Reads and parses one workflow file.
///
/// # Errors
/// Problems naming the file when it cannot be read, or every problem when it cannot be
/// parsed (see [`parse`]).
pub fn load_file(path: &Path) -> Result<Workflow, Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| vec![Problem::at(path, 0, format!("cannot read file: {err}"))])?;
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
        if let Some(problem) = escapes(dir, &file) {
            problems.push(problem);
            continue;
        }
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
            Err(found) => problems.extend(found),
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
        let problems = parse(Path::new("w.yaml"), &text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 7, "{}", problems[0]);
        assert!(problems[0].message.contains("colour"), "{}", problems[0]);
    }

    fn shown(text: &str) -> Vec<String> {
        parse(Path::new("w.yaml"), text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_format_error_is_reported_with_its_line_and_node() {
        let text = "id: many\nname: [not, a, string]\ntrigger:\n  event:\n    name: signup\nstart: a\nnodes:\n  a:\n    send_email:\n      template: t\n      colour: blue\n      next: b\n  b:\n    wait:\n      duration: 3 days\n      next: c\n  c: { exit: 1 }\n  d: exit\n";
        assert_eq!(
            shown(text),
            [
                "w.yaml:2: name: expected string scalar",
                "w.yaml:11: node a: unknown field `colour`, expected one of template, from, reply_to, next",
                "w.yaml:15: node b: invalid duration \"3 days\": write a number and a unit (s, m, h, d, w), such as \"90m\", \"2d\" or \"1h30m\"",
                "w.yaml:17: node c: unexpected value for unit enum variant",
            ]
        );
    }

    #[test]
    fn a_bad_top_level_key_and_a_bad_node_are_both_reported() {
        let text = MINIMAL
            .replace("start: done", "start: done\ncolour: blue\nentry: sometimes")
            .replace("done: exit", "done: exit\n  bad id: exit");
        assert_eq!(
            shown(&text),
            [
                "w.yaml:7: unknown field `colour`, expected one of id, name, description, category, trigger, entry, goal, quiet_hours, start, nodes",
                "w.yaml:8: entry: unknown variant `sometimes`, expected one of once, every_time, cooldown",
                "w.yaml:11: node bad id: node id \"bad id\" may only hold letters, digits, '_', '-', '.', ':', '@' and '+'",
            ]
        );
    }

    #[test]
    fn a_syntax_error_is_one_problem() {
        let text = MINIMAL.replace("  event:\n    name: signup", "  event: { name: signup");
        let problems = shown(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn parts_joined_by_an_alias_report_the_first_error_named_by_its_node() {
        let text = "id: a\nname: A\ntrigger: { event: { name: s } }\nstart: a\nnodes:\n  a: &w { wait: { duration: x, next: b } }\n  b: *w\n";
        let problems = shown(text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("w.yaml:6: node a: invalid duration \"x\""),
            "{problems:?}"
        );
    }

    #[test]
    fn a_missing_field_is_reported_when_every_part_is_well_formed() {
        let text = MINIMAL.replace("start: done\n", "");
        assert_eq!(shown(&text), ["w.yaml: missing field `start`"]);
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

    /// Found by fuzzing: a file whose first error sends it to part-by-part recovery, with
    /// flow collections nested as deep as the YAML parser allows (255), overflowed a 2 MiB
    /// stack in the outline, which recursed once per level. Run here on a small stack.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                for (open, close) in [("{a: ", "}"), ("[", "]")] {
                    for depth in [250, 2_000] {
                        let deep = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                        let text = format!("{MINIMAL}colour: blue\nx: {deep}\n");
                        assert!(!shown(&text).is_empty());
                        let text = format!("segments:\n  s:\n    when:\n      - x{deep}\n");
                        assert!(!shown(&text).is_empty());
                    }
                }
            })
            .expect("a thread");
        handle.join().expect("no stack overflow, no panic");
    }

    /// Found by fuzzing: nested aliases ("billion laughs") in a webhook body, which takes
    /// any YAML, expanded to 250 000 values before the parser's default budget stopped them:
    /// 300 ms in a debug build, 0.3 s of a core per file. Now refused within the alias limit.
    #[test]
    fn nested_aliases_are_refused_before_they_expand() {
        let mut anchors =
            String::from("        l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..9 {
            let aliases = vec![format!("*l{}", level - 1); 10].join(", ");
            anchors.push_str(&format!("        l{level}: &l{level} [{aliases}]\n"));
        }
        let text = format!(
            "id: laughs\nname: L\ntrigger: {{ event: {{ name: s }} }}\nstart: a\nnodes:\n  a:\n    webhook:\n      url: https://x.invalid/\n      body:\n{anchors}      next: done\n  done: exit\n"
        );
        let (problems, took) = timed(|| shown(&text));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("alias"), "{problems:?}");
        assert!(
            took < std::time::Duration::from_millis(250),
            "took {took:?}"
        );
        // Aliases within the limits still work.
        let shared = MINIMAL.replace(
            "name: signup",
            "name: &n signup\n    where: [{ name: *n, eq: 1 }]",
        );
        assert!(parse(Path::new("w.yaml"), &shared).is_ok());
    }

    /// Found by fuzzing: a broken file of many parts was read again part by part, each
    /// part cut out as a copy of the whole file: quadratic, 0.8 s for 1 000 lines of 23 kB
    /// in a debug build. Now each cut is linear in its own lines and at most
    /// [`MAX_PARTS`] are read.
    #[test]
    fn a_broken_file_of_many_parts_is_refused_quickly() {
        let nodes: String = (0..1_000)
            .map(|i| format!("  n{i}: {{ wait: {{ duration: x, next: done }} }}\n"))
            .collect();
        let text = format!("{MINIMAL}{nodes}");
        let (problems, took) = timed(|| shown(&text));
        assert_eq!(problems.len(), MAX_PARTS - 5, "{:?}", &problems[..3]);
        assert!(problems[0].starts_with("w.yaml:9: node n0: invalid duration"));
        assert!(
            took < std::time::Duration::from_millis(250),
            "took {took:?}"
        );
    }

    /// Found by fuzzing: a 2 MB file took 0.1 s to be refused in a debug build, and 80 kB
    /// (a split of 1 700 arms) 40 ms.
    #[test]
    fn a_file_larger_than_the_limit_is_refused_at_once() {
        let text = format!("{MINIMAL}description: {}\n", "x".repeat(2 << 20));
        let (problems, took) = timed(|| shown(&text));
        assert_eq!(
            problems,
            ["w.yaml: the file is larger than 64 KiB: split it into several workflows"]
        );
        assert!(
            took < std::time::Duration::from_millis(250),
            "took {took:?}"
        );
        let (_, problems) = super::super::parse_segments(Path::new("s.yaml"), &text);
        assert!(
            problems[0].message.contains("larger than 64 KiB"),
            "{problems:?}"
        );
    }

    /// How long `f` takes.
    // Allowed in a test: it measures its own work; the product reads time via clock::Clock.
    #[allow(clippy::disallowed_methods)]
    fn timed<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration) {
        let start = std::time::Instant::now();
        let value = f();
        (value, start.elapsed())
    }
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn a_link_out_of_the_folder_is_a_problem_and_one_inside_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (inside, outside) = (dir.path().join("workflows"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("a.yaml"), "x").unwrap();
        std::fs::write(inside.join("b.yaml"), "x").unwrap();
        std::os::unix::fs::symlink(outside.join("a.yaml"), inside.join("out.yaml")).unwrap();
        std::os::unix::fs::symlink(inside.join("b.yaml"), inside.join("in.yaml")).unwrap();
        let problem = escapes(&inside, &inside.join("out.yaml")).expect("refused");
        assert!(problem.message.contains("outside"), "{problem}");
        assert!(escapes(&inside, &inside.join("in.yaml")).is_none());
        assert!(escapes(&inside, &inside.join("b.yaml")).is_none());
    }
}
