//! What the room sees and the speaker says comes from the committed runs: every figure
//! anywhere in the deck, speaker notes and captions included, is one that
//! `slides/figures/report.json` or `million.json` holds (or follows from them by the
//! arithmetic a slide shows, or is one of a few named constants); every date is the date
//! of the run the slide shows; and "Under 1 GB?" adds up.
//!
//! quoted_figures.rs ties a table row to its step; this file asks less of each figure (that
//! the runs hold it at all) but asks it of every figure, in prose and notes too, where no
//! marker can go (a note is an HTML comment, and comments do not nest).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

mod support;
use support::{million_runs, number, read, read_json, workspace};

/// The units a figure may carry, longest first so `KiB` is not read as `B`.
const UNITS: &[&str] = &[
    "k/s", "KiB", "MiB", "GiB", "KB", "MB", "GB", "µs", "ms", "B", "s",
];

/// Figures that no run measures, each with where it comes from.
const CONSTANTS: &[(&str, &str)] = &[
    ("20 KB", "the Go talk's estimate per connection [2]"),
    ("20 GB", "the Go talk's estimate for a million [2]"),
    ("1 GB", "the Go talk's claim: a million in under 1 GB [1]"),
    ("16 KiB", "a thread's kernel stack on x86-64 (THREAD_SIZE)"),
    ("128 KiB", "tokio-tungstenite's default read buffer"),
    ("10 s", "step 06's default --handshake-timeout"),
    ("30 s", "loadgen's --hold 30 in the demo commands"),
    (
        "24 GiB",
        "the measuring machine's memory, named in the captions",
    ),
];

/// `bytes` as the report prints them: `47 B`, `7.3 KiB`, `45.7 MiB`.
fn bytes(value: f64) -> String {
    common::format_bytes(value as u64)
}

/// "Under 1 GB?", from the epoll million: (what, figure) in the slide's order.
fn under_1gb(run: &Value) -> Vec<(&'static str, String)> {
    let conns = number(run, &["held"]);
    let ours = number(run, &["server_user_bytes"]);
    let bases = number(run, &["worker_bases_bytes"]);
    let supervisor = number(run, &["supervisor_rss_bytes"]);
    let user = ours + bases + supervisor;
    let kernel = number(run, &["kernel_bytes"]);
    // Both ends of each loopback connection are in the kernel's count: the server's is
    // about half.
    let server_end = kernel / 2.0;
    vec![
        ("our code per connection", bytes(ours / conns)),
        ("our code", bytes(ours)),
        ("the workers' bases", bytes(bases)),
        ("the supervisor", bytes(supervisor)),
        ("user space", bytes(user)),
        ("the kernel per connection", bytes(kernel / conns)),
        ("the kernel, both ends", bytes(kernel)),
        ("the server's end", bytes(server_end)),
        ("the kernel a side", bytes(kernel / conns / 2.0)),
        ("the server", bytes(user + server_end)),
    ]
}

/// Every figure the committed runs hold, as the report prints it.
fn committed() -> BTreeSet<String> {
    let report = read_json("slides/figures/report.json");
    let tables = report["tables"]
        .as_str()
        .expect("report.json has its tables");
    let mut figures: BTreeSet<String> = tables
        .lines()
        .filter(|line| line.starts_with("| step"))
        .flat_map(|row| row.split('|').filter_map(figure))
        .collect();
    figures.insert(format!("{:.0} s", number(&report, &["wall_seconds"])));
    // The work section's settings, which its slide names: the slow messages' work.
    if let Some(slow_ms) = report["plan"]["work"]["slow_ms"].as_u64() {
        figures.insert(format!("{slow_ms} ms"));
    }
    for run in million_runs() {
        for key in [
            "server_user_per_conn",
            "kernel_per_conn",
            "uring_kernel_per_conn",
            "loadgen_per_conn",
            "server_user_bytes",
            "worker_bases_bytes",
            "supervisor_rss_bytes",
            "kernel_bytes",
        ] {
            figures.insert(bytes(number(&run, &[key])));
        }
        figures.insert(format!("{:.0} s", number(&run, &["open_seconds"])));
        for key in ["p50_us", "p99_us", "max_us", "last_us"] {
            figures.insert(format!("{:.1} s", number(&run, &["burst", key]) / 1e6));
        }
        let cost = &run["burst_cost"];
        figures.insert(format!("{:.1} s", number(cost, &["floor_s"])));
        for key in ["server_us_per_msg", "loadgen_us_per_msg"] {
            figures.insert(format!("{:.1} µs", number(cost, &[key])));
        }
        figures.extend(under_1gb(&run).into_iter().map(|(_, figure)| figure));
    }
    figures.extend(CONSTANTS.iter().map(|(figure, _)| figure.to_string()));
    figures
}

/// `text` as a figure with a unit (`43 B`, `1.42 ms`, `12.3k/s`, `13.4 s`), trimmed of the
/// punctuation around it, or `None`.
fn figure(text: &str) -> Option<String> {
    let text = text
        .trim()
        .trim_end_matches(['⚠', '*'])
        .trim()
        .trim_start_matches('*');
    let unit = UNITS.iter().find(|u| text.ends_with(*u))?;
    let number = text[..text.len() - unit.len()].trim_end();
    let is_number = number.starts_with(|c: char| c.is_ascii_digit())
        && number.chars().all(|c| c.is_ascii_digit() || c == '.');
    is_number.then(|| format!("{number}{}{unit}", if *unit == "k/s" { "" } else { " " }))
}

/// The figures in a stretch of prose: a number followed by a unit, as one word (`12.3k/s`)
/// or two (`47 B`). Code spans are left out: they are commands and code, not figures.
fn figures_in(text: &str) -> Vec<String> {
    let prose: String = text
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, part)| part)
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<&str> = prose
        .split(|c: char| c.is_whitespace() || "(),;:[]|".contains(c))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_end_matches(['.', '!', '?', '\'', '"']))
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if let Some(fig) = words
            .get(i + 1)
            .filter(|unit| UNITS.contains(unit))
            .and_then(|unit| figure(&format!("{} {unit}", words[i])))
        {
            found.push(fig);
            i += 2;
            continue;
        }
        if let Some(fig) = figure(words[i]).filter(|_| words[i].ends_with("k/s")) {
            found.push(fig);
        }
        i += 1;
    }
    found
}

/// The deck's text outside code blocks (commands and excerpts are not figures), by slide:
/// the front matter first, then slide 1, 2, … at their own numbers.
fn slides_prose() -> Vec<String> {
    let deck = read("slides/slides.md");
    let deck = deck
        .strip_prefix("---\n")
        .expect("slides.md opens with its front matter");
    let mut slides = vec![String::new()];
    let mut in_code = false;
    for line in deck.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code && line.trim_end() == "---" {
            slides.push(String::new());
        } else if !in_code {
            let slide = slides.last_mut().expect("bug: starts non-empty");
            slide.push_str(line);
            slide.push('\n');
        }
    }
    slides
}

/// What in the deck's prose and notes is not a committed figure: `slide N: figure`.
fn unknown_figures(slides: &[String], known: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (i, slide) in slides.iter().enumerate().skip(1) {
        for fig in figures_in(slide) {
            if !known.contains(&fig) {
                wrong.push(format!("slide {i}: {fig}"));
            }
        }
    }
    wrong
}

/// Every figure on a slide or in its notes is one the committed runs hold.
#[test]
fn every_figure_in_the_deck_and_its_notes_is_the_committed_runs() {
    let wrong = unknown_figures(&slides_prose(), &committed());
    assert!(
        wrong.is_empty(),
        "figures in slides/slides.md (slides, captions or speaker notes) that neither \
         report.json nor million.json holds: quote the committed run, or name a constant \
         in CONSTANTS with its source:\n{}",
        wrong.join("\n")
    );
}

/// The checker itself: stale figures are caught in notes as in prose; code spans, code
/// blocks and numbers without units are not figures.
#[test]
fn figures_are_found_in_prose_and_notes() {
    assert_eq!(
        figures_in("a million at 39 bytes, 38 MB; poll at 17 µs (16 µs) and 25.6k/s."),
        vec!["38 MB", "17 µs", "16 µs", "25.6k/s"]
    );
    assert_eq!(
        figures_in("`--hold 30 s` 10000 held, 64-byte"),
        Vec::<String>::new()
    );
    let known: BTreeSet<String> = ["47 B", "44.9 MiB"].map(String::from).into();
    let slides = [
        String::new(),
        "## One\n<!--\n0:10 Say: 47 B a connection, 44.9 MiB.\n-->\n".to_string(),
        "## Two\n<!--\n2:50 Say: a million at 39 B a connection, 38 MiB.\n-->\n".to_string(),
    ];
    assert_eq!(
        unknown_figures(&slides, &known),
        vec!["slide 2: 39 B", "slide 2: 38 MiB"]
    );
}

/// The committed date of a file under slides/figures/, from git; `None` (with a message)
/// where git or the history is missing.
fn committed_date(file: &str) -> Option<Result<String, String>> {
    let path = format!("slides/figures/{file}");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let date = git(&["log", "-1", "--format=%cs", "--", &path])?;
    if date.is_empty() {
        return Some(Err(format!("{path} has no commit")));
    }
    let changed = git(&["status", "--porcelain", "--", &path])?;
    if !changed.is_empty() {
        return Some(Err(format!(
            "{path} has changes not committed: commit the new run, then date the captions"
        )));
    }
    Some(Ok(date))
}

/// The dates (`2026-11-28`) in a stretch of text.
fn dates_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(9))
        .filter(|&i| {
            let s = &bytes[i..i + 10];
            let boundary = |j: usize| bytes.get(j).is_none_or(|b| !b.is_ascii_digit());
            s.iter().enumerate().all(|(k, b)| match k {
                4 | 7 => *b == b'-',
                _ => b.is_ascii_digit(),
            }) && (i == 0 || boundary(i - 1))
                && boundary(i + 10)
        })
        .map(|i| text[i..i + 10].to_string())
        .collect()
}

/// The files under slides/figures/ a slide shows or names: `figures/NAME` and
/// `report.json`, `million.json`.
fn figure_files(slide: &str) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for (at, _) in slide.match_indices("figures/") {
        let name: String = slide[at + "figures/".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || "-_.".contains(*c))
            .collect();
        files.insert(name.trim_end_matches('.').to_string());
    }
    for name in ["report.json", "million.json"] {
        if slide.contains(name) {
            files.insert(name.to_string());
        }
    }
    files
}

/// Every date on a slide (a chart's caption, say) is the date of a run the slide shows or
/// names: the day its file under slides/figures/ was committed.
#[test]
fn every_date_in_the_deck_is_its_runs() {
    let mut wrong = Vec::new();
    for (i, slide) in slides_prose().iter().enumerate().skip(1) {
        let dates = dates_in(slide);
        if dates.is_empty() {
            continue;
        }
        let files = figure_files(slide);
        if files.is_empty() {
            wrong.push(format!(
                "slide {i}: {dates:?} with no run on the slide to date it by (show the \
                 chart, or name report.json or million.json)"
            ));
            continue;
        }
        let mut runs = Vec::new();
        for file in &files {
            match committed_date(file) {
                None => {
                    eprintln!("git or its history is missing: the deck's dates are not checked");
                    return;
                }
                Some(Ok(date)) => runs.push(format!("{file}: {date}")),
                Some(Err(why)) => wrong.push(format!("slide {i}: {why}")),
            }
        }
        for date in dates {
            if !runs.iter().any(|run| run.ends_with(&date)) {
                wrong.push(format!(
                    "slide {i}: {date}, but the runs it shows are {runs:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dates in slides/slides.md that are not their run's:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn dates_and_files_are_found() {
    assert_eq!(
        dates_in("run 2026-11-27: and 2026-12-07, not 12026-11-270"),
        vec!["2026-11-27", "2026-12-07"]
    );
    assert_eq!(
        figure_files("![h:500](figures/rtt-epoll.svg) … `million.json`, see figures/."),
        ["", "million.json", "rtt-epoll.svg"]
            .map(String::from)
            .into()
    );
}

/// "Under 1 GB?" shows the epoll million's arithmetic, each figure computed here from
/// million.json: our code, the workers' bases and the supervisor, their sum; the kernel,
/// its server's half; the server's total.
#[test]
fn under_1gb_adds_up_from_the_committed_million() {
    let deck = read("slides/slides.md");
    let start = deck
        .find("## Under 1 GB?")
        .expect("a slide \"Under 1 GB?\"");
    let slide = &deck[start..];
    let slide = &slide[..slide.find("\n---\n").unwrap_or(slide.len())];
    let runs = million_runs();
    let epoll = runs
        .iter()
        .find(|run| run["loop"].as_str().unwrap_or("epoll") == "epoll")
        .expect("the million's epoll run");
    let workers = number(epoll, &["workers"]);
    assert!(
        slide.contains(&format!("{workers} workers")),
        "\"Under 1 GB?\" lacks `{workers} workers`"
    );
    for (what, figure) in under_1gb(epoll) {
        if what.ends_with("a side") {
            continue; // the summary's, not this slide's
        }
        assert!(
            slide.contains(&figure),
            "\"Under 1 GB?\" lacks {what}, `{figure}` (from million.json)"
        );
    }
}
