//! The deck fits the room: exported with marp-cli and rendered in headless Chromium at
//! 1280×720, no slide's content comes within 20 px of its edge (40 px at the bottom, where
//! the page number is), no code block is shrunk to fit a long line, every image loads, and
//! all text, chart text included, is drawn at 16 px or more. And it reads as one talk: each
//! slide's notes open with their minute mark, in order; no two slides share a title, no
//! chart slide repeats its chart's own title, no table has an empty row.
//!
//! Needs `npm ci --prefix slides` (marp-cli, pinned in package-lock.json) and Chromium
//! (`apt-get install chromium`). Without them the check says so and passes, unless
//! `WORKSHOP_REQUIRE_CHROMIUM=1` (as in CI), where it fails.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slides::{
    MIN_CHART_TEXT, check, clock, deck, duplicate_titles, empty_table_rows, minute_marks, slides,
    slides_without_notes, title,
};
use stepcheck::chromium;

/// How long one export or one browser run may take before the check gives up.
const DEADLINE: Duration = Duration::from_secs(180);

/// Every slide fits 1280×720 with an edge to spare, its images load, its text is at least
/// MIN_TEXT px and its charts' text at least MIN_CHART_TEXT px.
#[test]
fn every_slide_fits_a_1280x720_screen() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some((marp, chromium)) = tools(dir) else {
        return;
    };
    let guard = WorkDir::new();
    let work = guard.0.as_path();
    fs::create_dir_all(work.join("figures")).unwrap();
    // The deck links its charts as figures/NAME: they sit beside the exported page.
    for entry in fs::read_dir(dir.join("figures")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, work.join("figures").join(path.file_name().unwrap())).unwrap();
    }

    // The bare template lays every slide out, one under the other, each 1280×720.
    let deck = work.join("deck.html");
    let mut export = Command::new(&marp);
    export
        .current_dir(dir)
        .args(["--config-file", "marp.config.js", "--template", "bare"])
        .arg("slides.md")
        .arg("-o")
        .arg(&deck);
    let (ok, _, err) = run(export);
    assert!(ok, "marp-cli could not export slides.md:\n{err}");
    let html = fs::read_to_string(&deck).unwrap();
    let script = format!("<script>{}</script></body>", include_str!("measure.js"));
    let (page, end) = html
        .rsplit_once("</body>")
        .expect("the export is an HTML page");
    fs::write(&deck, format!("{page}{script}{end}")).unwrap();

    let mut browser = chromium::headless(&chromium, &work.join("profile"));
    browser
        .args([
            "--window-size=1280,720",
            // Dump the page once it is loaded and its pending work (fonts) has run.
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", deck.display()));
    let (ok, dom, err) = run(browser);
    assert!(ok, "chromium could not render the deck:\n{err}");
    // The page's last element, written by measure.js once everything has loaded.
    let report = dom
        .rsplit_once("<pre id=\"fit-report\">")
        .and_then(|(_, rest)| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("the page wrote no measurements; chromium said:\n{err}"));

    let summary = check(report, |src| {
        let path = dir.join(src);
        (path.extension()? == "svg").then(|| fs::read_to_string(path).ok())?
    });
    eprintln!(
        "{} slides; smallest text {:.1} px; smallest chart text {} (minimum {MIN_CHART_TEXT} px)",
        summary.slides,
        summary.smallest_text,
        summary
            .smallest_chart_text
            .map_or("none".to_string(), |px| format!("{px:.1} px")),
    );
    assert!(summary.slides > 0, "no slides measured in:\n{report}");
    assert!(
        summary.problems.is_empty(),
        "{} problem(s) on a 1280×720 screen:\n{}",
        summary.problems.len(),
        summary.problems.join("\n")
    );
}

/// Every slide has speaker notes: what to say, what to run, what the room should see.
#[test]
fn every_slide_has_speaker_notes() {
    let missing = slides_without_notes(&deck());
    assert!(
        missing.is_empty(),
        "slides without speaker notes (an HTML comment on the slide): {missing:?}"
    );
}

/// The workshop's length, break included: the agenda slide's last part ends here.
const WORKSHOP_MINUTES: u32 = 180;

/// Every slide's notes open with its minute mark, the marks never go back, and the agenda
/// slide's parts start at marks that some slide's notes open with (a part with no slide at
/// its start is a schedule the speaker cannot follow).
#[test]
fn every_slide_opens_its_notes_with_its_minute_mark() {
    let markdown = deck();
    let marks = minute_marks(&markdown, WORKSHOP_MINUTES)
        .unwrap_or_else(|wrong| panic!("minute marks:\n{}", wrong.join("\n")));
    let agenda = slides(&markdown)
        .into_iter()
        .find(|slide| title(slide).is_some_and(|t| t.starts_with("Agenda")))
        .expect("an agenda slide");
    let starts: Vec<u32> = agenda
        .lines()
        .filter_map(|row| slides::minutes(row.trim_start_matches('|').split('|').next()?.trim()))
        .collect();
    assert!(
        starts.len() >= 8,
        "the agenda lists its parts' marks: {starts:?}"
    );
    for start in starts {
        assert!(
            marks.contains(&start),
            "the agenda has a part at {}, but no slide's notes open at {}",
            clock(start),
            clock(start)
        );
    }
}

/// No two slides share a title, and no table has a row of empty cells.
#[test]
fn titles_are_unique_and_tables_have_no_empty_rows() {
    let markdown = deck();
    let duplicates = duplicate_titles(&markdown);
    assert!(duplicates.is_empty(), "titles used twice: {duplicates:?}");
    let empty = empty_table_rows(&markdown);
    assert!(empty.is_empty(), "empty table rows: {empty:?}");
}

/// A chart slide's title says something its chart's own title does not: the same words
/// twice, one above the other ("Memory per connection, …" over "Memory per connection,
/// idle"), waste the slide's top line. Sharing the first three words counts as repeating.
#[test]
fn no_chart_slide_repeats_its_charts_title() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .collect()
    };
    for (i, slide) in slides(&deck()).iter().enumerate() {
        let Some(heading) = title(slide) else {
            continue;
        };
        for src in slide
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            let Ok(svg) = fs::read_to_string(dir.join(src)) else {
                continue;
            };
            let Some(chart_title) = svg
                .split("<text")
                .nth(1)
                .and_then(|text| text.split_once('>'))
                .map(|(_, rest)| words(rest.split('<').next().unwrap_or_default()))
            else {
                continue;
            };
            let heading = words(heading);
            let shared = heading
                .iter()
                .zip(&chart_title)
                .take_while(|(a, b)| a == b)
                .count();
            assert!(
                shared < 3.min(chart_title.len()),
                "slide {}: its title repeats {src}'s own, \"{}\"",
                i + 1,
                chart_title.join(" ")
            );
        }
    }
}

/// A fresh directory for the export and the browser's profile, removed however the test ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> WorkDir {
        let path = std::env::temp_dir().join(format!("slides-fit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        WorkDir(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// marp-cli from slides/node_modules and a Chromium, or `None` after saying what is missing.
fn tools(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    const CHECK: &str = "the slide-fit check";
    let marp = dir.join("node_modules/.bin/marp");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !node {
        chromium::skip(CHECK, "node (apt-get install nodejs npm)");
        return None;
    }
    if !marp.exists() {
        chromium::skip(CHECK, "marp-cli (npm ci --prefix slides)");
        return None;
    }
    Some((marp, chromium::find_or_skip(CHECK)?))
}

/// Runs a command to its end, or kills it at DEADLINE. Returns (success, stdout, stderr).
fn run(mut command: Command) -> (bool, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
    let mut stdout = child.stdout.take().expect("bug: stdout is piped");
    let mut stderr = child.stderr.take().expect("bug: stderr is piped");
    // Read both pipes while the child runs, so a full pipe never stalls it.
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .expect("bug: the child is ours to wait for")
        {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, mut err) = (out.join().unwrap(), err.join().unwrap());
    if status.is_none() {
        err.push_str(&format!("\n(killed after {DEADLINE:?})"));
    }
    (status.is_some_and(|status| status.success()), out, err)
}
