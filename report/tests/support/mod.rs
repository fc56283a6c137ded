//! What the report's tests share: the workspace's files, the committed runs, the documents
//! a learner reads, and Markdown tables.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The workspace's root: README.md, slides/ and every crate.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("report/ lives in the workspace")
}

/// A file of the workspace, as text; `path` is relative to its root.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(workspace().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A JSON file of the workspace.
pub fn read_json(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The committed million's runs, epoll's first (a file from before `--loop` holds one run).
pub fn million_runs() -> Vec<Value> {
    match read_json("slides/figures/million.json") {
        Value::Array(runs) => runs,
        one => vec![one],
    }
}

/// The number at `path` in `v`.
pub fn number(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(v, |v, key| &v[key])
        .as_f64()
        .unwrap_or_else(|| panic!("no {} in the committed run", path.join(".")))
}

/// The documents a learner reads, apart from the slides: the top README, each crate's, and
/// the worked answers.
pub fn documents() -> Vec<PathBuf> {
    let root = workspace();
    let mut docs = vec![root.join("README.md")];
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        docs.push(dir.join("README.md"));
    }
    let mut solutions: Vec<PathBuf> = std::fs::read_dir(root.join("solutions"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    solutions.sort();
    docs.extend(solutions);
    docs.retain(|d| d.is_file());
    docs
}

/// What `check` finds wrong in each of `docs`, each line led by the document's path in
/// the workspace.
pub fn wrong_in(docs: Vec<PathBuf>, check: impl Fn(&str) -> Vec<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        let shown = doc.strip_prefix(workspace()).unwrap().display().to_string();
        wrong.extend(check(&text).into_iter().map(|w| format!("{shown} {w}")));
    }
    wrong
}

/// The cells of a Markdown table row, trimmed.
pub fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}
