//! Code shown in a README or on a slide is an excerpt of a real file, never a retyped copy.
//!
//! A code block marked with `<!-- excerpt: PATH -->` on the line before its fence must
//! appear, line for line, in PATH (relative to the workspace root). A line `// ...` inside
//! the block stands for lines left out: each run of lines between such markers must appear
//! in the file, in order. A marker spelled otherwise (`<!-- excerpt:PATH -->`, another case)
//! is an error, and so is a block with no line a file could be recognised by (empty, blank,
//! only `}` or `// ...`).

use std::fs;
use std::path::{Path, PathBuf};

const MARKER: &str = "<!-- excerpt: ";
const MARKER_END: &str = " -->";
const ELISION: &str = "// ...";

/// Every code block marked as an excerpt in a README or slide still appears in the file it
/// names, every marker is well formed, and every marker present was checked.
/// Breaks if a doc's code drifts from its file, or if markers go unread (a changed marker
/// syntax, a parser that skips blocks).
#[test]
fn every_marked_code_block_is_an_excerpt_of_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let (mut checked, mut present) = (0, 0);
    let mut failures = Vec::new();
    for doc in markdown_files(root) {
        let text = fs::read_to_string(&doc).unwrap();
        // Counted apart from the parser: every line that opens a comment mentioning an excerpt.
        present += text
            .lines()
            .filter(|line| looks_like_a_marker(line))
            .count();
        let source = |path: &str| fs::read_to_string(root.join(path)).ok();
        let (n, failed) = check_markdown(&doc.display().to_string(), &text, source);
        checked += n;
        failures.extend(failed);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        present > 0,
        "no excerpt markers found in the READMEs and slides"
    );
    assert_eq!(
        checked, present,
        "{present} excerpt markers in the READMEs and slides, {checked} blocks checked"
    );
}

/// A marker with a typo (no space, another case, a broken comment, no path) is an error,
/// never a block silently left unchecked. Breaks if the check only reads exact markers.
#[test]
fn a_malformed_marker_is_an_error() {
    let source = |_: &str| Some("fn a() {}\n".to_string());
    for marker in [
        "<!-- excerpt:a.rs -->",
        "<!-- Excerpt: a.rs -->",
        "<!--excerpt: a.rs-->",
        "<!-- excerpt: a.rs ->",
        "<!-- excerpt: -->",
        "<!-- excerpt: a.rs b.rs -->",
    ] {
        let doc = format!("{marker}\n```rust\nfn retyped_wrong() {{}}\n```\n");
        let (checked, failures) = check_markdown("doc.md", &doc, source);
        assert_eq!(checked, 1, "{marker:?} was not counted");
        assert!(
            failures.iter().any(|f| f.contains("malformed")),
            "{marker:?} was accepted: {failures:?}"
        );
    }
    let no_fence = "<!-- excerpt: a.rs -->\nfn a() {}\n";
    assert!(!check_markdown("doc.md", no_fence, source).1.is_empty());
}

/// A block that names no line of its file (empty, blank, or only lines any file has: `}`,
/// `// ...`, `...`) fails: it would match anything. Breaks if such a block passes.
#[test]
fn a_block_that_says_nothing_fails() {
    let source = |_: &str| Some("fn a() {\n\n    one();\n}\n...\n".to_string());
    for block in ["", "\n", "}\n", "// ...\n", "...\n", "}\n// ...\n\n}\n"] {
        let doc = format!("<!-- excerpt: a.rs -->\n```rust\n{block}```\n");
        let (checked, failures) = check_markdown("doc.md", &doc, source);
        assert_eq!(checked, 1);
        assert!(
            failures.iter().any(|f| f.contains("says nothing")),
            "the block {block:?} passed: {failures:?}"
        );
    }
    let telling = "<!-- excerpt: a.rs -->\n```rust\nfn a() {\n// ...\n}\n```\n";
    assert_eq!(check_markdown("doc.md", telling, source), (1, vec![]));
}

/// The excerpt check catches a changed line and lines out of order, and skips over `// ...`.
/// Breaks if lines are compared loosely or out of order.
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
    let longer_than_the_file = lines(&["fn a() {", "    one();", "    two();", "}", "}"]);
    assert!(appears_in_order(&longer_than_the_file, source).is_err());
}

fn lines(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| line.to_string()).collect()
}

/// True for a line that opens an HTML comment about an excerpt, well formed or not.
fn looks_like_a_marker(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("<!") && line.to_ascii_lowercase().contains("excerpt")
}

/// Check every marked block of one Markdown text (`doc` names it in failures) against the
/// files `source` reads. Returns how many markers it found and what failed.
fn check_markdown(
    doc: &str,
    markdown: &str,
    source: impl Fn(&str) -> Option<String>,
) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((at, line)) = lines.next() {
        if !looks_like_a_marker(line) {
            continue;
        }
        checked += 1;
        let line_no = at + 1;
        let Some(path) = marker_path(line) else {
            failures.push(format!(
                "{doc}:{line_no}: malformed excerpt marker {line:?}; write `{MARKER}PATH{MARKER_END}`"
            ));
            continue;
        };
        let fence = lines.next().map_or("", |(_, line)| line);
        if !fence.trim_start().starts_with("```") {
            failures.push(format!(
                "{doc}:{line_no}: the excerpt marker for {path} must be followed by a code fence, not {fence:?}"
            ));
            continue;
        }
        let block: Vec<String> = lines
            .by_ref()
            .map(|(_, line)| line)
            .take_while(|line| !line.trim_start().starts_with("```"))
            .map(str::to_string)
            .collect();
        if !block.iter().any(|line| names_something(line)) {
            failures.push(format!(
                "{doc}:{line_no}: the block marked as an excerpt of {path} says nothing: \
                 it has no line that could only come from a file"
            ));
            continue;
        }
        let Some(text) = source(path) else {
            failures.push(format!(
                "{doc}:{line_no}: names {path}, which does not exist"
            ));
            continue;
        };
        if let Err(missing) = appears_in_order(&block, &text) {
            failures.push(format!(
                "{doc}:{line_no}: a block no longer matches {path}; this line is not found there (in order):\n    {missing}"
            ));
        }
    }
    (checked, failures)
}

/// The path of a well-formed marker, `<!-- excerpt: PATH -->`, exactly so spelled.
fn marker_path(line: &str) -> Option<&str> {
    let path = line.trim().strip_prefix(MARKER)?.strip_suffix(MARKER_END)?;
    (!path.is_empty() && !path.contains(char::is_whitespace)).then_some(path)
}

/// A line with a letter or digit in it, other than the elision: `}`, `);`, `...` and blank
/// lines are in every file and prove nothing.
fn names_something(line: &str) -> bool {
    line.trim() != ELISION && line.chars().any(char::is_alphanumeric)
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
        // A run longer than what is left of the file finds no place (and no panic).
        let at = (from..source.len() + 1)
            .take_while(|&start| start + run.len() <= source.len())
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
