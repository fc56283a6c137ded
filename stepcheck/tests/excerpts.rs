//! Code shown in a README or on a slide is an excerpt of a real file, never a retyped copy.
//!
//! A code block marked with `<!-- excerpt: PATH -->` on the line before its fence must
//! appear, line for line, in PATH (relative to the workspace root). A line `// ...` inside
//! the block stands for lines left out: each run of lines between such markers must appear
//! in the file, in order.

use std::fs;
use std::path::{Path, PathBuf};

const MARKER: &str = "<!-- excerpt: ";
const ELISION: &str = "// ...";

/// Every code block marked as an excerpt in a README or slide still appears in the file it names.
#[test]
fn every_marked_code_block_is_an_excerpt_of_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in markdown_files(root) {
        let text = fs::read_to_string(&doc).unwrap();
        for excerpt in excerpts(&text) {
            checked += 1;
            let Ok(source) = fs::read_to_string(root.join(&excerpt.path)) else {
                failures.push(format!(
                    "{}: names {}, which does not exist",
                    doc.display(),
                    excerpt.path
                ));
                continue;
            };
            if let Err(missing) = appears_in_order(&excerpt.lines, &source) {
                failures.push(format!(
                    "{}: a block no longer matches {}; this line is not found there (in order):\n    {missing}",
                    doc.display(),
                    excerpt.path
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked >= 5,
        "only {checked} marked excerpts found: is the marker still `{MARKER}PATH -->`?"
    );
}

/// The excerpt check catches a changed line and lines out of order, and skips over `// ...`.
#[test]
fn a_changed_line_is_caught() {
    let source = "fn a() {\n    one();\n    two();\n}\n";
    assert!(appears_in_order(&lines(&["    one();", "    two();"]), source).is_ok());
    assert!(appears_in_order(&lines(&["fn a() {", ELISION, "}"]), source).is_ok());
    assert_eq!(
        appears_in_order(&lines(&["    one();", "    three();"]), source),
        Err("    one();".to_string())
    );
    assert!(appears_in_order(&lines(&["    two();", ELISION, "    one();"]), source).is_err());
}

fn lines(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| line.to_string()).collect()
}

/// A marked code block: the file it claims to come from, and its lines.
struct Excerpt {
    path: String,
    lines: Vec<String>,
}

/// The marked code blocks of a Markdown text.
fn excerpts(markdown: &str) -> Vec<Excerpt> {
    let mut found = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else {
            continue;
        };
        let path = rest.trim_end_matches("-->").trim().to_string();
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.trim_start().starts_with("```"),
            "the excerpt marker for {path} must be followed by a code fence, not {fence:?}"
        );
        let body = lines
            .by_ref()
            .take_while(|line| !line.trim_start().starts_with("```"));
        found.push(Excerpt {
            path,
            lines: body.map(str::to_string).collect(),
        });
    }
    found
}

/// Each run of lines between `// ...` markers must appear as consecutive lines of
/// `source`, the runs in order. On failure: the first line of the run not found.
fn appears_in_order(excerpt: &[String], source: &str) -> Result<(), String> {
    let source: Vec<&str> = source.lines().map(str::trim_end).collect();
    let mut from = 0;
    for run in excerpt.split(|line| line.trim() == ELISION) {
        let run: Vec<&str> = run.iter().map(|line| line.trim_end()).collect();
        if run.is_empty() {
            continue;
        }
        let at = (from..=source.len().saturating_sub(run.len()))
            .find(|&start| source[start..start + run.len()] == run[..])
            .ok_or_else(|| run[0].to_string())?;
        from = at + run.len();
    }
    Ok(())
}

/// The top README, every crate's README, and the slides.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    for entry in fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        if dir.is_dir() && !dir.ends_with("target") {
            files.push(dir.join("README.md"));
        }
    }
    if let Ok(slides) = fs::read_dir(root.join("slides")) {
        files.extend(slides.map(|entry| entry.unwrap().path()));
    }
    files.retain(|file| file.is_file() && file.extension().is_some_and(|ext| ext == "md"));
    files.sort();
    files
}
