//! When a README or a slide says how long a step's diff is, it says the truth.
//!
//! A length is quoted in one form: the command, `| wc -l` included, in one code span, then
//! what it prints —
//!
//! ```text
//! `diff -ruN step04-poll/src step05-epoll/src | wc -l` prints 391
//! ```
//!
//! or, in a table, that code span (its pipes written `\|`) with the number alone in the next
//! cell. A step that uses files of the previous one as a library, unchanged, may leave them
//! out with `-x NAME` options before the directories
//! (`diff -ruN -x frame.rs stepNN-name/src stepMM-name/src | wc -l`): each NAME must be a
//! file of the first step's `src` that the second step does not have, so an exclusion can
//! never hide a changed file. Every Markdown file in the workspace is read, so a new step's README joins by
//! itself. Any other way of writing the command is an error rather than left unchecked: a
//! `diff` of step directories that is not `diff -ruN stepNN-name/src stepMM-name/src`, the
//! command outside a code span, `| wc -l` without `prints N`, and a bare command with
//! "N lines" later in its sentence.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

const COMMAND: &str = "diff -ruN ";
const COUNT: &str = " | wc -l";
const PAGER: &str = " | less";
const FORM: &str = "`diff -ruN [-x NAME]… stepNN-name/src stepMM-name/src | wc -l` prints N";

/// Every diff length quoted in a README or a slide is what `diff -ruN … | wc -l` prints today.
#[test]
fn every_quoted_diff_length_is_what_diff_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut lengths: HashMap<(String, String, Vec<String>), usize> = HashMap::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in markdown_files(root) {
        let text = fs::read_to_string(&doc).unwrap();
        let name = doc.strip_prefix(root).unwrap().display().to_string();
        let (quotes, errors) = quotes(&text);
        failures.extend(errors.into_iter().map(|err| format!("{name}:{err}")));
        for quote in quotes {
            let pair = (quote.from.clone(), quote.to.clone(), quote.excluded.clone());
            let actual = match lengths.get(&pair) {
                Some(&lines) => lines,
                None => match diff_length(root, &quote.from, &quote.to, &quote.excluded) {
                    Ok(Some(lines)) => *lengths.entry(pair).or_insert(lines),
                    Ok(None) => {
                        eprintln!("skipped: no `diff` on PATH to measure the quoted diff lengths");
                        return;
                    }
                    Err(err) => {
                        failures.push(format!("{name}:{}: {err}", quote.line));
                        continue;
                    }
                },
            };
            checked += 1;
            if actual != quote.lines {
                failures.push(format!(
                    "{name}:{}: says `{}` prints {}, but it prints {actual}",
                    quote.line,
                    quote.command(),
                    quote.lines
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked >= 4,
        "only {checked} quoted diff lengths found: is the form still {FORM}?"
    );
}

/// A file left out with `-x` must be one the first step has and the second does not: an
/// exclusion cannot hide a file both steps have (a changed one), nor one the second step
/// added, nor a typo. Breaks if `diff_length` stops checking what it leaves out.
#[test]
fn an_exclusion_names_a_file_only_the_first_step_has() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let (from, to) = ("step06-ws-epoll", "step09-io-uring");
    let diff = |excluded: &[&str]| {
        let excluded: Vec<String> = excluded.iter().map(|name| name.to_string()).collect();
        diff_length(root, from, to, &excluded)
    };
    let Ok(Some(all)) = diff(&[]) else {
        return eprintln!("skipped: no `diff` on PATH");
    };
    let without = diff(&["frame.rs"]).expect("frame.rs is step06's only");
    assert!(
        without.is_some_and(|lines| lines < all),
        "leaving out frame.rs did not shorten the diff"
    );
    for name in ["lib.rs", "ring.rs", "no-such-file.rs", "*.rs"] {
        assert!(
            diff(&[name]).is_err(),
            "`-x {name}` was accepted: an exclusion could hide a changed file"
        );
    }
}

/// The reader finds quotes in prose and in tables, and refuses every other way of quoting.
#[test]
fn quotes_in_another_form_are_refused() {
    let text = "\
`diff -ruN step04-poll/src step05-epoll/src | wc -l` prints 391: the loop.
| `diff -ruN step03-select/src step04-poll/src \\| wc -l` | 334 | bitmaps |
`diff -ruN -x frame.rs -x page.rs step06-ws-epoll/src step09-io-uring/src | wc -l` prints 12.
`diff -ruN -x step06-ws-epoll/src step09-io-uring/src | wc -l` prints 12.
Read it: `diff -ruN step04-poll/src step05-epoll/src | less`. It is 12 pages.
| `diff -ruN step04-poll/src step05-epoll/src` | see above |
```console
$ diff -ruN step04-poll/src step05-epoll/src | less
```
`diff -ruN step04-poll/src step05-epoll/src` is the lesson, 391 lines (`| wc -l`).
`diff -ruN step04-poll/src step05-epoll/src | wc -l` is 391.
| `diff -ruN step03-select/src step04-poll/src` | 334 | bitmaps |
`diff -u step04-poll/src/lib.rs step05-epoll/src/lib.rs`
diff -ruN step04-poll/src step05-epoll/src says it all.
";
    let (quotes, errors) = quotes(text);
    let found: Vec<_> = quotes
        .iter()
        .map(|q| (q.line, q.command(), q.lines))
        .collect();
    assert_eq!(
        found,
        [
            (
                1,
                "diff -ruN step04-poll/src step05-epoll/src | wc -l".to_string(),
                391
            ),
            (
                2,
                "diff -ruN step03-select/src step04-poll/src | wc -l".to_string(),
                334
            ),
            (
                3,
                "diff -ruN -x frame.rs -x page.rs step06-ws-epoll/src step09-io-uring/src | wc -l"
                    .to_string(),
                12
            ),
        ]
    );
    let lines: Vec<_> = errors
        .iter()
        .map(|err| err.split(':').next().unwrap().parse::<usize>().unwrap())
        .collect();
    assert_eq!(lines, [4, 10, 11, 12, 13, 14], "errors: {errors:#?}");
}

/// A quoted length: where it is, the two steps, the files left out, and the number the text
/// gives.
#[derive(Debug)]
struct Quote {
    line: usize,
    from: String,
    to: String,
    excluded: Vec<String>,
    lines: usize,
}

impl Quote {
    /// The command as quoted.
    fn command(&self) -> String {
        let excluded: String = self
            .excluded
            .iter()
            .map(|name| format!("-x {name} "))
            .collect();
        format!(
            "{COMMAND}{excluded}{}/src {}/src{COUNT}",
            self.from, self.to
        )
    }
}

/// The quotes in a Markdown text, and an error (`LINE: why`) for each mention of a step
/// diff that is not in the checked form.
fn quotes(markdown: &str) -> (Vec<Quote>, Vec<String>) {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut quotes = Vec::new();
    let mut errors = Vec::new();
    let mut in_fence = false;
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            // A command shown in a code block is fine; a count there would go unchecked.
            if line.contains(COMMAND) && line.contains(COUNT) {
                errors.push(format!(
                    "{number}: a diff length in a code block is not checked; quote it as {FORM}"
                ));
            }
            continue;
        }
        let mut outside = String::new();
        for (span, after) in code_spans(line, &mut outside) {
            let span = span.replace("\\|", "|");
            if !(span.starts_with("diff ") && span.contains("step")) {
                continue;
            }
            let Some((excluded, from, to, tail)) = parse_command(&span) else {
                errors.push(format!(
                    "{number}: `{span}`: show a step's lesson as `diff -ruN [-x NAME]… stepNN-name/src stepMM-name/src`"
                ));
                continue;
            };
            match tail {
                Tail::Count => match printed(after) {
                    Some(count) => quotes.push(Quote {
                        line: number,
                        from,
                        to,
                        excluded,
                        lines: count,
                    }),
                    None => errors.push(format!(
                        "{number}: `{span}` must be followed by what it prints, as {FORM}"
                    )),
                },
                Tail::None | Tail::Pager => {
                    if unchecked_count(line, after, &lines[index + 1..]) {
                        errors.push(format!(
                            "{number}: a diff length beside `{span}` is not checked; quote it as {FORM}"
                        ));
                    }
                }
            }
        }
        if outside.contains(COMMAND) {
            errors.push(format!(
                "{number}: `diff -ruN` outside a code span is not checked; quote it as {FORM}"
            ));
        }
    }
    (quotes, errors)
}

/// The code spans of one line, each with the text after it; the text outside every span is
/// appended to `outside`.
fn code_spans<'a>(line: &'a str, outside: &mut String) -> Vec<(&'a str, &'a str)> {
    let mut spans = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('`') {
        outside.push_str(&rest[..open]);
        let after_open = &rest[open + 1..];
        let Some(close) = after_open.find('`') else {
            rest = after_open;
            break;
        };
        let after = &after_open[close + 1..];
        spans.push((&after_open[..close], after));
        rest = after;
    }
    outside.push_str(rest);
    spans
}

/// What follows the command.
enum Tail {
    None,
    Pager,
    Count,
}

/// `diff -ruN [-x NAME]… FROM/src TO/src` with an optional `| less` or `| wc -l`: the names
/// left out, the two steps, and the tail.
fn parse_command(span: &str) -> Option<(Vec<String>, String, String, Tail)> {
    let mut rest = span.strip_prefix(COMMAND)?;
    let mut excluded = Vec::new();
    while let Some(option) = rest.strip_prefix("-x ") {
        let (name, after) = option.split_once(' ')?;
        // A plain file name: no path, no pattern (a pattern could leave out more than it says).
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain || name.ends_with("/src") {
            return None;
        }
        excluded.push(name.to_string());
        rest = after;
    }
    let (dirs, tail) = if let Some(dirs) = rest.strip_suffix(COUNT) {
        (dirs, Tail::Count)
    } else if let Some(dirs) = rest.strip_suffix(PAGER) {
        (dirs, Tail::Pager)
    } else {
        (rest, Tail::None)
    };
    let step = |dir: &str| -> Option<String> {
        let name = dir.strip_suffix("/src")?;
        let ok = name.starts_with("step")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        ok.then(|| name.to_string())
    };
    let mut dirs = dirs.split(' ');
    let (from, to) = (step(dirs.next()?)?, step(dirs.next()?)?);
    dirs.next().is_none().then_some((excluded, from, to, tail))
}

/// The number after ` prints `, or alone in the next table cell.
fn printed(after: &str) -> Option<usize> {
    let digits = if let Some(rest) = after.strip_prefix(" prints ") {
        rest.split(|c: char| !c.is_ascii_digit()).next()?
    } else {
        after
            .trim_start()
            .strip_prefix('|')?
            .split('|')
            .next()?
            .trim()
    };
    digits.parse().ok()
}

/// Whether the text after a command without `| wc -l` gives a length anyway: "N lines"
/// before the end of its sentence, or, in a table row, in its cell or alone in the next.
fn unchecked_count(line: &str, after: &str, next_lines: &[&str]) -> bool {
    if line.trim_start().starts_with('|') {
        let cells = after.replace("\\|", "  ");
        let mut cells = cells.split('|');
        let (rest, next) = (cells.next().unwrap_or_default(), cells.next());
        return counts_lines(rest) || next.is_some_and(|cell| cell.trim().parse::<usize>().is_ok());
    }
    let mut text = after.to_string();
    for line in next_lines {
        if line.trim().is_empty() || line.trim_start().starts_with("```") {
            break;
        }
        text.push(' ');
        text.push_str(line);
    }
    text.truncate(text.find(". ").unwrap_or(text.len()));
    counts_lines(&text)
}

/// Whether a text gives a number of lines ("391 lines").
fn counts_lines(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).any(|pair| {
        let number = pair[0].trim_matches(|c: char| !c.is_ascii_digit());
        !number.is_empty()
            && number.chars().all(|c| c.is_ascii_digit())
            && pair[1].starts_with("lines")
    })
}

/// `diff -ruN -x EXCLUDED… FROM/src TO/src | wc -l`, run in the workspace root. `Ok(None)`
/// when there is no `diff` to run. Each excluded name must be a file of `FROM/src` that
/// `TO/src` does not have: the second step uses it from the first, unchanged.
fn diff_length(
    root: &Path,
    from: &str,
    to: &str,
    excluded: &[String],
) -> Result<Option<usize>, String> {
    for dir in [from, to] {
        if !root.join(dir).join("src").is_dir() {
            return Err(format!("quotes a diff of {dir}/src, which does not exist"));
        }
    }
    for name in excluded {
        if !root.join(from).join("src").join(name).is_file() {
            return Err(format!("leaves out {name}, which {from}/src does not have"));
        }
        if root.join(to).join("src").join(name).exists() {
            return Err(format!(
                "leaves out {name}, which {to}/src has too: its changes would be hidden"
            ));
        }
    }
    let mut diff = Command::new("diff");
    diff.arg("-ruN");
    for name in excluded {
        diff.arg("-x").arg(name);
    }
    let output = match diff
        .arg(format!("{from}/src"))
        .arg(format!("{to}/src"))
        .current_dir(root)
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot run diff: {err}")),
    };
    // diff exits 0 (same) or 1 (different); 2 is trouble.
    if output.status.code().is_none_or(|code| code > 1) {
        return Err(format!(
            "diff -ruN … {from}/src {to}/src failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(Some(
        output.stdout.iter().filter(|&&byte| byte == b'\n').count(),
    ))
}

/// Every Markdown file of the workspace, outside build output and installed packages.
/// Every code fence in a README or a slide opens with its language and is closed. A bare
/// fence can only close a block, so a block left open shows as an error at once: it would
/// otherwise turn the rest of the file into code, and hide its quotes from these checks.
#[test]
fn every_code_fence_is_closed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let errors: Vec<String> = markdown_files(root)
        .into_iter()
        .filter_map(|doc| {
            let err = fence_error(&fs::read_to_string(&doc).unwrap())?;
            Some(format!(
                "{}:{err}",
                doc.strip_prefix(root).unwrap().display()
            ))
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(
        fence_error("```text\na\n```\n````md\n```rust\n```\n````\n"),
        None
    );
    for (text, line) in [
        ("x\n```text\na\n", 2),
        ("```text\na\n```\n## Layout\n```\ntree\n```\n", 5),
        ("```text\na\n\n```console\nb\n```\n", 4),
    ] {
        let err = fence_error(text).expect("a broken fence is found");
        assert!(err.starts_with(&format!("{line}: ")), "{err}");
    }
}

/// The first misplaced fence: a bare one with no block open (it was meant to open one), one
/// with a language inside a block of the same fence (the block above was left open), or
/// a block never closed.
fn fence_error(text: &str) -> Option<String> {
    // The open block: its first line, its fence character and length.
    let mut open: Option<(usize, char, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        let Some(mark) = line.chars().next().filter(|c| *c == '`' || *c == '~') else {
            continue;
        };
        let run = line.chars().take_while(|c| *c == mark).count();
        if run < 3 {
            continue;
        }
        let bare = line[run..].trim().is_empty();
        match open {
            Some((_, c, n)) if c == mark && run >= n && bare => open = None,
            Some((from, c, n)) if c == mark && run == n => {
                return Some(format!(
                    "{}: a fence with a language inside the block opened at line {from}: \
                     is that block closed?",
                    i + 1
                ));
            }
            Some(_) => {}
            None if bare => {
                return Some(format!(
                    "{}: a bare fence with no block open: say its language (```text), or \
                     close the block above it",
                    i + 1
                ));
            }
            None => open = Some((i + 1, mark, run)),
        }
    }
    open.map(|(from, _, _)| format!("{from}: a code fence opened here is never closed"))
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
