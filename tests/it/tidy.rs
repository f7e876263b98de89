//! Checks on the repository itself: file headers, the architecture map, the committed
//! schema and the examples' editor hints.

use std::path::Path;

use crate::helpers::root;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_a_module_doc_comment() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("tests"), &mut files);
    assert!(files.len() > 20);
    let undocumented: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "files without a //! header: {undocumented:?}"
    );
}

#[test]
fn architecture_md_names_every_top_level_module() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if matches!(name.as_str(), "lib" | "main") {
            continue;
        }
        if !map.contains(&format!("`{name}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name: {missing:?}"
    );
}

#[test]
fn the_committed_json_schema_is_current() {
    let committed =
        std::fs::read_to_string(root().join(trellis::workflow::schema::SCHEMA_PATH)).unwrap();
    assert!(
        committed == trellis::workflow::schema::workflow_schema(),
        "workflows/workflow.schema.json is stale: run `cargo run -- schema > workflows/workflow.schema.json`"
    );
}

#[test]
fn every_example_workflow_points_editors_at_the_schema() {
    let files = trellis::workflow::load::workflow_files(&root().join("workflows")).unwrap();
    assert_eq!(files.len(), 5);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=./workflow.schema.json"),
            "{} lacks the schema line",
            file.display()
        );
    }
}

/// Files outside `src/store` that still speak SQL: none of the product's. The bench measures
/// raw SQL beside the store (its limits are what SQLite does without Trellis) and seeds and
/// counts rows directly; a few tests reach into the file to see what was stored. The list
/// only shrinks; a new file here fails the test below.
const SQL_OUTSIDE_STORE: [&str; 10] = [
    "src/bin/trellis-bench/end_to_end.rs",
    "src/bin/trellis-bench/limits.rs",
    // The PostgreSQL step limit is raw SQL by definition, as the SQLite one in limits.rs.
    "src/bin/trellis-bench/postgres.rs",
    "src/bin/trellis-bench/waiting.rs",
    "src/bin/trellis-bench/workload.rs",
    "tests/it/app.rs",
    "tests/it/broadcasts.rs",
    "tests/it/crash.rs",
    "tests/it/hostile.rs",
    "tests/it/lifecycle.rs",
];

#[test]
fn sql_lives_only_in_the_store() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut speaking: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| !f.starts_with("src/store/") && f != "tests/it/tidy.rs")
        .filter(|f| {
            std::fs::read_to_string(root().join(f))
                .unwrap()
                .contains("sqlx::")
        })
        .collect();
    speaking.sort();
    let new: Vec<_> = speaking
        .iter()
        .filter(|f| !SQL_OUTSIDE_STORE.contains(&f.as_str()))
        .collect();
    assert!(new.is_empty(), "SQL outside src/store: {new:?}");
    let gone: Vec<_> = SQL_OUTSIDE_STORE
        .iter()
        .filter(|f| !speaking.iter().any(|s| s == *f))
        .collect();
    assert!(
        gone.is_empty(),
        "no longer speak SQL, take them off the list: {gone:?}"
    );
}
