//! What a README or a worked answer tells a learner to expect holds for the committed run:
//! a range such as `per-conn under 200 B` must contain the figure the run measured, and a
//! figure of the million must be million.json's. Beside `quoted_figures.rs` (figures the
//! report's tables print, `<!-- report: STEP -->`), two more markers, each right after what
//! it checks and invisible once rendered:
//!
//! - `under 200 B<!-- range: step03-select memory.line.per_conn_bytes -->`: the range or
//!   figure before it must contain that value of the step's object in
//!   `slides/figures/report.json` (a path of keys, `last` for an array's last element; the
//!   key's suffix gives its unit: `_bytes`, `_us`). A range is `A–B U`, `A to B U`,
//!   `under`/`below`/`over`/`above N U`, `tens of U`, `hundreds of U`, `a few U`, or
//!   `in U` (in kilobytes: 1 to 1000 KiB); a single figure holds what rounds to it.
//! - `47 B<!-- million: epoll server_user_per_conn -->`: the figure before it must round
//!   from that value of the run of `slides/figures/million.json` with that `loop`.
//!
//! And each step README's checklist line "At the end of this step you should see" marks
//! every range or figure it states, so none escapes the check.

use serde_json::Value;

mod support;
use support::{documents, read_json, wrong_in};

/// What a unit word measures, and its size in that dimension's base (bytes, µs).
fn unit(word: &str) -> Option<(Dimension, &'static str, f64)> {
    let word = word.trim_end_matches([',', ';', ':', '.', ')']);
    Some(match word {
        "B" | "byte" | "bytes" => (Dimension::Bytes, "B", 1.0),
        "KiB" | "kilobytes" => (Dimension::Bytes, "KiB", 1024.0),
        "MiB" | "megabytes" => (Dimension::Bytes, "MiB", 1024.0 * 1024.0),
        "GiB" | "gigabytes" => (Dimension::Bytes, "GiB", 1024.0 * 1024.0 * 1024.0),
        "µs" | "microseconds" => (Dimension::Micros, "µs", 1.0),
        "ms" | "milliseconds" => (Dimension::Micros, "ms", 1e3),
        "s" | "seconds" => (Dimension::Micros, "s", 1e6),
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dimension {
    Bytes,
    Micros,
}

/// A stated range, in the base unit of its dimension, both ends included.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Claim {
    dimension: Dimension,
    low: f64,
    high: f64,
    /// The unit it was written in, and its size: for messages.
    unit: (&'static str, f64),
}

impl Claim {
    fn holds(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }

    /// `value`, in the unit the claim was written in.
    fn shown(&self, value: f64) -> String {
        let (name, size) = self.unit;
        format!("{:.3} {name}", value / size)
            .replace(".000 ", " ")
            .replace("inf ", "∞ ")
    }
}

fn number(word: &str) -> Option<f64> {
    let word = word.replace(' ', "");
    (!word.is_empty() && word.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .then(|| word.parse().ok())
        .flatten()
}

/// A single figure `x` as written: everything that rounds to it.
fn rounded(word: &str) -> Option<(f64, f64)> {
    let x = number(word)?;
    let decimals = word.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    Some((x - half, x + half))
}

/// The claim that the words end with, and how many words it took, if they end with one.
fn claim_at_end(words: &[&str]) -> Option<(Claim, usize)> {
    let (last, before) = words.split_last()?;
    let (dimension, name, size) = unit(last)?;
    let word = |back: usize| -> &str {
        before
            .len()
            .checked_sub(back)
            .map_or("", |i| before[i].trim_start_matches('('))
    };
    let claim = |low: f64, high: f64| Claim {
        dimension,
        low: low * size,
        high: high * size,
        unit: (name, size),
    };
    // `35 to 170 B`
    if word(2) == "to" {
        if let (Some(a), Some(b)) = (number(word(3)), number(word(1))) {
            return Some((claim(a, b), 4));
        }
    }
    // `49–64 B`, `0.5-10 ms`
    if let Some((a, b)) = word(1).split_once(['–', '-']) {
        if let (Some(a), Some(b)) = (number(a), number(b)) {
            return Some((claim(a, b), 2));
        }
    }
    if let Some((low, high)) = rounded(word(1)) {
        return Some(match word(2).to_lowercase().as_str() {
            "under" | "below" => (claim(0.0, high), 3),
            "over" | "above" => (claim(low, f64::INFINITY), 3),
            _ => (claim(low, high), 2),
        });
    }
    match (word(3), word(2), word(1)) {
        (_, "tens", "of") => Some((claim(10.0, 100.0), 3)),
        (_, "hundreds", "of") => Some((claim(100.0, 1000.0), 3)),
        (_, "a", "few") => Some((claim(1.0, 10.0), 3)),
        (_, _, "in") => Some((claim(1.0, 1000.0), 2)),
        _ => None,
    }
}

/// A value of the committed run at `path` (keys, `last` for an array's last element), in
/// the base unit its key names.
fn value_at(root: &Value, path: &str) -> Result<(Dimension, f64), String> {
    let mut at = root;
    for key in path.split('.') {
        at = match (key, at) {
            ("last", Value::Array(items)) => items.last(),
            (key, Value::Array(items)) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            (key, object) => object.get(key),
        }
        .ok_or_else(|| format!("no `{key}` in `{path}`"))?;
    }
    let value = at
        .as_f64()
        .ok_or_else(|| format!("`{path}` is not a number"))?;
    let last = path.rsplit('.').next().unwrap_or(path);
    if last.ends_with("_bytes") || last.ends_with("per_conn") {
        Ok((Dimension::Bytes, value))
    } else if last.ends_with("_us") {
        Ok((Dimension::Micros, value))
    } else if last.ends_with("_s") || last.ends_with("_seconds") {
        Ok((Dimension::Micros, value * 1e6))
    } else {
        Err(format!(
            "`{path}`: its unit is not in its name (_bytes, _us, _s)"
        ))
    }
}

/// The committed runs: report.json's steps by name, million.json's runs by loop.
struct Committed {
    steps: Value,
    million: Value,
}

impl Committed {
    fn load() -> Committed {
        Committed {
            steps: read_json("slides/figures/report.json")["steps"].clone(),
            million: read_json("slides/figures/million.json"),
        }
    }

    fn step(&self, name: &str) -> Option<&Value> {
        self.steps
            .as_array()?
            .iter()
            .find(|s| s["step"].as_str() == Some(name))
    }

    fn million_run(&self, loop_name: &str) -> Option<&Value> {
        match &self.million {
            Value::Array(runs) => runs.iter().find(|r| r["loop"].as_str() == Some(loop_name)),
            one => (loop_name == "epoll").then_some(one),
        }
    }
}

/// The markers of this module in a line: (kind, its words, the text before it).
fn markers(line: &str) -> Vec<(&str, Vec<&str>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = line[from..].find("<!--").map(|s| s + from) {
        let end = line[start..]
            .find("-->")
            .map_or(line.len(), |e| start + e + 3);
        let inner = line[start + 4..end.saturating_sub(3).max(start + 4)].trim();
        from = end;
        let before = &line[..start];
        if before.matches('`').count() % 2 == 1 {
            continue; // inside `code`: a marker shown, not used
        }
        for kind in ["range:", "million:"] {
            if let Some(rest) = inner.strip_prefix(kind) {
                found.push((kind, rest.split_whitespace().collect(), before));
            }
        }
    }
    found
}

/// What in `text` the committed runs contradict, one line each.
fn disagreements(text: &str, committed: &Committed) -> Vec<String> {
    let mut wrong = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        for (kind, words, before) in markers(line) {
            let before_words: Vec<&str> = before.split_whitespace().collect();
            let Some((claim, _)) = claim_at_end(&before_words) else {
                wrong.push(format!(
                    "line {at}: `{kind} {}` follows no range or figure with a unit",
                    words.join(" ")
                ));
                continue;
            };
            let [owner, path] = words[..] else {
                wrong.push(format!(
                    "line {at}: write `<!-- {kind} NAME PATH -->`, not `{}`",
                    words.join(" ")
                ));
                continue;
            };
            let root = match kind {
                "range:" => committed.step(owner),
                _ => committed.million_run(owner),
            };
            let Some(root) = root else {
                wrong.push(format!("line {at}: no `{owner}` in the committed run"));
                continue;
            };
            match value_at(root, path) {
                Err(err) => wrong.push(format!("line {at}: {owner}: {err}")),
                Ok((dimension, _)) if dimension != claim.dimension => wrong.push(format!(
                    "line {at}: {owner} {path} is {dimension:?}, the text says {:?}",
                    claim.dimension
                )),
                Ok((_, value)) if !claim.holds(value) => wrong.push(format!(
                    "line {at}: {owner} {path} is {} in the committed run, outside what \
                     the text says ({} to {})",
                    claim.shown(value),
                    claim.shown(claim.low),
                    claim.shown(claim.high)
                )),
                Ok(_) => {}
            }
        }
    }
    wrong
}

/// What in a checklist's "you should see" line states a range or a figure without a
/// marker after it.
fn unmarked(line: &str) -> Vec<String> {
    let mut missing = Vec::new();
    // Each piece of text up to a marker (or the end of the line).
    let mut rest = line;
    loop {
        let (piece, marked, tail) = match rest.find("<!--") {
            Some(start) => {
                let end = rest[start..]
                    .find("-->")
                    .map_or(rest.len(), |e| start + e + 3);
                (&rest[..start], true, &rest[end..])
            }
            None => (rest, false, ""),
        };
        let words: Vec<&str> = piece.split_whitespace().collect();
        let ends_with_claim = !piece.ends_with(char::is_whitespace);
        for end in 1..=words.len() {
            if claim_at_end(&words[..end]).is_some()
                && !(marked && ends_with_claim && end == words.len())
            {
                missing.push(words[end.saturating_sub(3)..end].join(" "));
            }
        }
        if tail.is_empty() {
            break;
        }
        rest = tail;
    }
    missing
}

/// Every range and million figure marked in a README or a worked answer holds for the
/// committed runs.
#[test]
fn every_marked_range_holds_for_the_committed_run() {
    let committed = Committed::load();
    let wrong = wrong_in(documents(), |text| disagreements(text, &committed));
    assert!(
        wrong.is_empty(),
        "ranges and figures the committed runs (slides/figures/report.json, million.json) \
         contradict: say what the run measured, or commit a new run:\n{}",
        wrong.join("\n")
    );
}

/// Each step README's "At the end of this step you should see" marks every range or
/// figure it states, so the check above covers them all.
#[test]
fn every_checklist_range_is_marked() {
    let mut missing = Vec::new();
    let mut checklists = 0;
    for doc in documents() {
        let dir = doc.parent().unwrap().file_name().unwrap().to_string_lossy();
        if !dir.starts_with("step") || doc.file_name().unwrap() != "README.md" {
            continue;
        }
        let text = std::fs::read_to_string(&doc).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("you should see") {
                checklists += 1;
                missing.extend(
                    unmarked(line)
                        .into_iter()
                        .map(|m| format!("{dir}/README.md line {}: `{m}`", n + 1)),
                );
            }
        }
    }
    assert!(
        checklists >= 7,
        "found {checklists} checklists, not one per step"
    );
    assert!(
        missing.is_empty(),
        "a checklist states these with no marker (follow each with \
         `<!-- range: STEP PATH -->`, or `<!-- report: STEP -->` for a table's figure):\n{}",
        missing.join("\n")
    );
}

/// The checker itself: each form of range, and each way a marker can be wrong.
#[test]
fn ranges_are_read_strictly() {
    let committed = Committed {
        steps: serde_json::json!([{
            "step": "step03-select",
            "memory": { "line": { "per_conn_bytes": 163 } },
            "sweep": [{ "p50_us": 17.2 }, { "p50_us": 94.9 }],
        }]),
        million: serde_json::json!([
            { "loop": "epoll", "server_user_per_conn": 47, "server_user_bytes": 47906816 },
        ]),
    };
    let check = |text: &str| disagreements(text, &committed);
    let line = "memory.line.per_conn_bytes -->";
    let ok = [
        format!("per-conn under 200 B<!-- range: step03-select {line}"),
        format!("35 to 170 B<!-- range: step03-select {line}"),
        format!("(49–170 bytes<!-- range: step03-select {line})"),
        format!("hundreds of bytes<!-- range: step03-select {line}"),
        "a p50 of 95 µs<!-- range: step03-select sweep.last.p50_us -->".to_string(),
        "in tens of microseconds<!-- range: step03-select sweep.0.p50_us -->".to_string(),
        "0.05-0.1 ms<!-- range: step03-select sweep.last.p50_us -->".to_string(),
        "47 B<!-- million: epoll server_user_per_conn -->".to_string(),
        "45.7 MiB<!-- million: epoll server_user_bytes -->".to_string(),
        format!("`tens of bytes<!-- range: nowhere {line}` shows a marker"),
    ];
    for text in &ok {
        assert_eq!(check(text), Vec::<String>::new(), "{text}");
    }
    let wrong = [
        format!("tens of bytes<!-- range: step03-select {line}"),
        format!("under 100 B<!-- range: step03-select {line}"),
        format!("a few KiB<!-- range: step03-select {line}"),
        format!("under 200 µs<!-- range: step03-select {line}"),
        "96 µs<!-- range: step03-select sweep.last.p50_us -->".to_string(),
        "46 B<!-- million: epoll server_user_per_conn -->".to_string(),
        "45.6 MiB<!-- million: epoll server_user_bytes -->".to_string(),
        format!("tens of bytes<!-- range: step3-select {line}"),
        "tens of bytes<!-- range: step03-select memory.nothing -->".to_string(),
        "tens of bytes<!-- range: step03-select -->".to_string(),
        format!("<!-- range: step03-select {line} tens of bytes"),
        "47 B<!-- million: uring server_user_per_conn -->".to_string(),
    ];
    for text in &wrong {
        assert_eq!(check(text).len(), 1, "{text}: {:?}", check(text));
    }

    // Checklists: every range or figure marked, and nothing else flagged.
    assert!(unmarked("`conns 1000`, `threads 1` and no refusal").is_empty());
    assert!(unmarked(&format!("`per-conn` under 200 B<!-- range: s {line}; done")).is_empty());
    assert_eq!(
        unmarked("`per-conn` in tens of bytes; `conns 1000`").len(),
        1
    );
    assert_eq!(
        unmarked("a p50 of 95 µs, and hundreds of microseconds").len(),
        2
    );
    assert_eq!(
        unmarked(&format!("under 200 B <!-- range: s {line}")).len(),
        1,
        "a marker must touch what it checks"
    );
}
