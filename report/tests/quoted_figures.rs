//! Every figure a README or a slide quotes comes from the committed run,
//! `slides/figures/report.json`: a test that fails as soon as a quote and the run disagree.
//!
//! What counts as a quote (see report/README.md, "Quoting a figure"):
//!
//! 1. In a Markdown table, a row whose first cell names a step: its row name exactly as the
//!    report prints it (`step05-epoll`, `step07-tokio/4k`), or its binary or number at the
//!    start (`step07-tokio …`, `07 tokio, 4 KiB buffer`). Every other cell of it that is a
//!    figure with a unit (`43 B`, `7.5 KiB`, `35 µs`, `13.8 ms`, `12.3k/s`) must be one of
//!    the figures the report printed for that row (for a binary or a number: for any of
//!    its rows), in any of its tables.
//! 2. In prose, a figure followed by a marker naming its step:
//!    `43 B<!-- report: step05-epoll -->` (not inside backticks: that shows a marker). The
//!    marker is invisible once rendered; a marker with no figure before it, or naming no
//!    step of the run, is an error too, so a typo cannot switch the check off.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

mod support;
use support::{cells, workspace, wrong_in};

/// The units a figure may carry, longest first so `KiB` is not read as `B`.
const UNITS: &[&str] = &["k/s", "/s", "KiB", "MiB", "GiB", "µs", "ms", "B"];

/// The marker that ties a figure in prose to its step.
const MARKER: &str = "<!-- report: ";

/// What a learner reads, and what the speaker shows: the slides.
fn documents_and_slides() -> Vec<PathBuf> {
    let mut docs = support::documents();
    docs.push(workspace().join("slides/slides.md"));
    docs
}

/// Step → the figures its rows show in the committed run's tables.
fn committed_figures() -> BTreeMap<String, BTreeSet<String>> {
    let path = workspace().join("slides/figures/report.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let report: Value = serde_json::from_str(&text).expect("report.json is JSON");
    let tables = report["tables"].as_str().unwrap_or_else(|| {
        panic!(
            "{} has no `tables`: commit a run of the current report \
             (cargo run --release -p report -- --out slides/figures)",
            path.display()
        )
    });
    figures_by_step(tables)
}

/// Figures by step in Markdown tables: the first cell names the step.
fn figures_by_step(tables: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut figures: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in tables.lines().filter(|l| l.starts_with('|')) {
        let cells = cells(row);
        let Some((name, rest)) = cells.split_first().filter(|(n, _)| n.starts_with("step")) else {
            continue; // a header or a separator
        };
        figures
            .entry(name.to_string())
            .or_default()
            .extend(rest.iter().filter_map(|c| figure(c)));
    }
    figures
}

/// `text` as a figure with a unit (`43 B`, `1.42 ms`, `12.3k/s`), without a trailing ⚠, or
/// `None` if it is not one.
fn figure(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('⚠').trim();
    let unit = UNITS.iter().find(|u| text.ends_with(*u))?;
    let number = text[..text.len() - unit.len()].trim_end();
    let digits = number.strip_prefix(['−', '-']).unwrap_or(number);
    let is_number = !digits.is_empty()
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    is_number.then(|| text.to_string())
}

/// The figure that ends `before` (the text just ahead of a marker), if any: the last one
/// or two words, as `43 B` or `12.3k/s`.
fn figure_before(before: &str) -> Option<String> {
    let words: Vec<&str> = before.split_whitespace().collect();
    let last_two = words[words.len().saturating_sub(2)..].join(" ");
    let last = words.last()?.to_string();
    figure(&last_two).or_else(|| figure(&last))
}

/// The figures a table row may quote, by its first cell: a row name exactly
/// (`step07-tokio/4k`), or a step named by its binary (`step07-tokio …`) or its number
/// (`07 tokio, 4 KiB buffer`), which may quote any of that step's rows.
fn step_figures(
    first: &str,
    committed: &BTreeMap<String, BTreeSet<String>>,
) -> Option<BTreeSet<String>> {
    let first = first.trim_matches(['*', '`', ' ']);
    if let Some(exact) = committed.get(first) {
        return Some(exact.clone());
    }
    let number = match first.get(..2) {
        Some(nn) if nn.bytes().all(|b| b.is_ascii_digit()) && first[2..].starts_with(' ') => nn,
        _ => first.strip_prefix("step")?.get(..2)?,
    };
    let prefix = format!("step{number}");
    let rows: Vec<&BTreeSet<String>> = committed
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(_, figures)| figures)
        .collect();
    (!rows.is_empty()).then(|| rows.into_iter().flatten().cloned().collect())
}

/// What in `text` disagrees with `committed`, one line each.
fn disagreements(text: &str, committed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        // Rule 1: table rows named after a step.
        if line.trim_start().starts_with('|') {
            let cells = cells(line);
            if let Some(known) = cells.first().and_then(|name| step_figures(name, committed)) {
                for cell in &cells[1..] {
                    if let Some(fig) = figure(cell).filter(|f| !known.contains(f)) {
                        wrong.push(format!(
                            "line {at}: {} {fig}: the committed run shows {} for it",
                            cells[0],
                            known.iter().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
        // Rule 2: markers in prose (or anywhere).
        let mut rest = line;
        let mut before_len = 0;
        while let Some(start) = rest.find("<!--") {
            let before = &line[..before_len + start];
            let tail = &rest[start..];
            let end = tail.find("-->").map_or(tail.len(), |e| e + 3);
            let comment = &tail[..end];
            rest = &tail[end..];
            before_len += start + end;
            let loose = comment.replace(' ', "");
            if !loose.starts_with("<!--report") {
                continue; // some other comment (an excerpt marker, say)
            }
            if before.matches('`').count() % 2 == 1 {
                continue; // inside `code`: a marker shown, not used
            }
            let step = comment
                .strip_prefix(MARKER)
                .and_then(|s| s.strip_suffix(" -->"))
                .filter(|s| !s.contains(' '));
            let Some(step) = step else {
                wrong.push(format!(
                    "line {at}: `{comment}` is not a marker: write `{MARKER}STEP -->`"
                ));
                continue;
            };
            let Some(known) = committed.get(step) else {
                wrong.push(format!("line {at}: {comment}: no step `{step}` in the run"));
                continue;
            };
            match figure_before(before) {
                None => wrong.push(format!(
                    "line {at}: {comment} follows no figure (write it right after one, \
                     as `43 B{MARKER}{step} -->`)"
                )),
                Some(fig) if !known.contains(&fig) => wrong.push(format!(
                    "line {at}: {step} {fig}: the committed run shows {}",
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(_) => {}
            }
        }
    }
    wrong
}

/// Every README and the slides quote only figures the committed run printed.
#[test]
fn every_quoted_figure_is_in_the_committed_run() {
    let committed = committed_figures();
    assert!(
        committed.contains_key("step05-epoll"),
        "the committed run has no step05-epoll row"
    );
    let wrong = wrong_in(documents_and_slides(), |text| {
        disagreements(text, &committed)
    });
    assert!(
        wrong.is_empty(),
        "figures quoted that slides/figures/report.json does not contain (quote the \
         committed run, or commit a new run and update every quote):\n{}",
        wrong.join("\n")
    );
}

/// The checker itself: what it accepts, and each way a quote can be wrong.
#[test]
fn quotes_are_recognised_strictly() {
    let committed = figures_by_step(
        "| memory | held | user / conn | kernel / conn |\n\
         |---|--:|--:|--:|\n\
         | step05-epoll | 10000 | 43 B | 7.5 KiB ⚠ |\n\
         | busy | storm | burst |\n\
         | step05-epoll | 12.3k/s | 1.42 ms |\n",
    );
    let check = |text: &str| disagreements(text, &committed);

    // Right: table cells and marked prose that the run printed; unmarked prose is free.
    assert!(check("| step05-epoll | 43 B | 7.5 KiB | 12.3k/s | 10000 | yes |").is_empty());
    assert!(
        check("epoll holds each at 43 B<!-- report: step05-epoll --> in user space").is_empty()
    );
    assert!(check("it opens 12.3k/s<!-- report: step05-epoll -->.").is_empty());
    assert!(check("a thread costs 16 KiB of kernel stack").is_empty());
    assert!(check("<!-- excerpt: step05-epoll/src/lib.rs -->").is_empty());
    assert!(check("write `49 B<!-- report: step05-epoll -->` after it").is_empty());

    // Wrong: a figure not in the run, in a table or after a marker.
    assert_eq!(check("| step05-epoll | 49 B |").len(), 1);
    assert_eq!(
        check("| 05 epoll | 49 B | 43 B |").len(),
        1,
        "a step by its number"
    );
    assert_eq!(check("| **05 epoll** | 43 B | 12.3k/s |").len(), 0);
    assert_eq!(
        check("| step05-epoll `--flag` | 49 B |").len(),
        1,
        "by its binary"
    );
    assert_eq!(
        check("| 5 epoll | 49 B |").len(),
        0,
        "not a step: not checked"
    );
    assert_eq!(check("| step05-epoll | −43 B |").len(), 1);
    assert_eq!(check("about 47 B<!-- report: step05-epoll -->").len(), 1);
    // Wrong: markers that would silently check nothing.
    assert_eq!(
        check("43 B<!--report: step05-epoll-->").len(),
        1,
        "no spaces"
    );
    assert_eq!(
        check("43 B<!-- report: step5-epoll -->").len(),
        1,
        "unknown step"
    );
    assert_eq!(
        check("<!-- report: step05-epoll --> 43 B").len(),
        1,
        "no figure before"
    );
    assert_eq!(check("forty B<!-- report: step05-epoll -->").len(), 1);

    assert_eq!(figure("13.6 KiB ⚠").as_deref(), Some("13.6 KiB"));
    assert_eq!(figure("10000"), None);
    assert_eq!(figure("B"), None);
}

/// The committed run's `work` section, read from report.json itself: the figure at `path`
/// (`levels/100/msgs_per_s`: the level whose `work_us` is 100; `fairness/fresh_p99_us`) of
/// `step`, formatted as the report prints it.
fn work_figure(report: &Value, step: &str, path: &str) -> String {
    let row = report["steps"]
        .as_array()
        .expect("report.json has steps")
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no {step} in the committed run"));
    let work = &row["work"];
    assert!(
        work.is_object(),
        "{step} has no `work` in slides/figures/report.json: commit a run of the current \
         report (cargo run --release -p report -- --out slides/figures)"
    );
    let mut keys = path.split('/');
    let value = match keys.next() {
        Some("levels") => {
            let level: u64 = keys.next().unwrap().parse().unwrap();
            let at = work["levels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["work_us"] == level)
                .unwrap_or_else(|| panic!("{step}: no work level {level}"));
            keys.fold(at, |v, k| &v[k])
        }
        _ => path.split('/').fold(work, |v, k| &v[k]),
    };
    let n = value
        .as_f64()
        .unwrap_or_else(|| panic!("{step}: no work/{path} in report.json"));
    if path.ends_with("msgs_per_s") {
        // As the report's `rate`.
        if n < 1000.0 {
            format!("{n:.0}/s")
        } else {
            format!("{:.1}k/s", n / 1000.0)
        }
    } else {
        // As the report's `micros`.
        match n {
            ..1000.0 => format!("{n:.0} µs"),
            ..10_000.0 => format!("{:.2} ms", n / 1000.0),
            ..100_000.0 => format!("{:.1} ms", n / 1000.0),
            _ => format!("{:.0} ms", n / 1000.0),
        }
    }
}

/// A figure of the work section: its step, and where it is in the step's `work`.
type WorkQuote<'a> = (&'a str, &'a str);

/// The work section's figures that the slide "Where one loop loses" and step08's README
/// quote are the committed run's `work`: each read from its own place in report.json, not
/// just any figure of the step's rows. In the README each is `figure<!-- report: STEP -->`;
/// on the slide, where a marker would be taken for a speaker note, the figure itself.
#[test]
fn the_work_section_is_quoted_from_the_committed_run() {
    let path = workspace().join("slides/figures/report.json");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let slides = std::fs::read_to_string(workspace().join("slides/slides.md")).unwrap();
    let slide_start = slides
        .find("## Where one loop loses")
        .expect("the slide \"Where one loop loses\"");
    let slide = &slides[slide_start..];
    let slide = &slide[..slide.find("\n---\n").unwrap_or(slide.len())];
    let step08 = std::fs::read_to_string(workspace().join("step08-reuseport/README.md")).unwrap();
    // Each document, and the figures it quotes: (step, where in the step's `work`).
    // Each document, whether it marks its quotes, and the figures it quotes.
    let quotes: [(&str, &str, bool, &[WorkQuote]); 2] = [
        (
            "the slide",
            slide,
            false,
            &[
                ("step06-ws-epoll", "levels/100/msgs_per_s"),
                ("step07-tokio", "levels/100/msgs_per_s"),
                ("step08-reuseport", "levels/100/msgs_per_s"),
                ("step06-ws-epoll", "levels/500/p99_us"),
                ("step08-reuseport", "levels/500/p99_us"),
                ("step06-ws-epoll", "fairness/fresh_p99_us"),
                ("step08-reuseport", "fairness/other_workers/p99_us"),
            ],
        ),
        (
            "step08's README",
            &step08,
            true,
            &[
                ("step06-ws-epoll", "levels/100/msgs_per_s"),
                ("step08-reuseport", "levels/100/msgs_per_s"),
                ("step08-reuseport", "fairness/same_worker/p99_us"),
            ],
        ),
    ];
    let mut missing = Vec::new();
    for (doc, text, marked, figures) in quotes {
        for (step, path) in figures {
            let figure = work_figure(&report, step, path);
            let quote = match marked {
                true => format!("{figure}{MARKER}{step} -->"),
                false => figure,
            };
            if !text.contains(&quote) {
                missing.push(format!("{doc} lacks `{quote}` (work/{path})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the work section's quotes and the committed run disagree:\n{}",
        missing.join("\n")
    );
}
