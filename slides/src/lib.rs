//! What the slide-fit check measures, apart from driving the browser (`tests/fit.rs`).
//!
//! The deck is exported with marp-cli and opened in headless Chromium, where
//! `tests/measure.js` writes one line per finding, in slide pixels (a slide is 1280×720
//! whatever the window). [`check`] turns those lines into the list of problems a speaker
//! would see on the projector: text running off a slide, a clipped code block, an image
//! that did not load, chart text too small to read from the back of the room.

/// A slide's size: what a projector shows.
pub const SLIDE_WIDTH: f64 = 1280.0;
pub const SLIDE_HEIGHT: f64 = 720.0;

/// The smallest text a chart may have once scaled onto a slide, in slide pixels: about
/// 2.2% of the slide's height, what a caption needs to be read from the back of a room.
pub const MIN_CHART_TEXT: f64 = 16.0;

/// The smallest text the slides themselves may have (captions, code shrunk to fit), in
/// slide pixels. Body text is 28 px.
pub const MIN_TEXT: f64 = 16.0;

/// Content must stay this far inside the slide's edges: text touching the edge is lost on
/// a projector that crops a little.
pub const EDGE: f64 = 20.0;

/// At the bottom, the page number's line comes first: Marp draws the number in the bottom
/// right corner, its glyphs from about 670 px down. Content must end above that line and
/// EDGE above the bottom, so within the slide's last 40 px there is only the number.
pub const BOTTOM_EDGE: f64 = 40.0;

/// A code block drawn at less than this fraction of its own size was shrunk by Marp to
/// fit a line too long for the slide. Where Marp's script does not run (a viewer without
/// scripts, another export) that line is cut at the right edge instead.
pub const CODE_SCALE: f64 = 0.98;

/// Half a pixel of rounding in the browser's layout is not an overflow.
const TOLERANCE: f64 = 0.5;

/// What the measurement found, beside the problems.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub slides: usize,
    /// The smallest text on any slide, in slide pixels (charts excluded).
    pub smallest_text: f64,
    /// The smallest chart text once on its slide, in slide pixels.
    pub smallest_chart_text: Option<f64>,
    pub problems: Vec<String>,
}

/// Reads the measurement lines; `svg(src)` returns the text of a chart named by an image's
/// `src`, or `None` when it is not an SVG file.
pub fn check(report: &str, svg: impl Fn(&str) -> Option<String>) -> Summary {
    let mut summary = Summary {
        smallest_text: f64::INFINITY,
        ..Summary::default()
    };
    for line in report.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, slide, kind, rest @ ..] = words.as_slice() else {
            continue;
        };
        let number = |i: usize| {
            rest.get(i)
                .and_then(|w| w.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        match *kind {
            "extent" => {
                summary.slides += 1;
                let (right, bottom) = (number(0), number(1));
                if bottom > SLIDE_HEIGHT - BOTTOM_EDGE + TOLERANCE {
                    summary.problems.push(format!(
                        "slide {slide}: content ends at {bottom:.0} px, past {} px \
                         (the 720 px slide less {BOTTOM_EDGE} px: the page number's line \
                         and a {EDGE} px edge)",
                        SLIDE_HEIGHT - BOTTOM_EDGE
                    ));
                }
                if right > SLIDE_WIDTH - EDGE + TOLERANCE {
                    summary.problems.push(format!(
                        "slide {slide}: content ends at {right:.0} px from the left, past {} px \
                         (the 1280 px slide less a {EDGE} px edge)",
                        SLIDE_WIDTH - EDGE
                    ));
                }
            }
            "code" => {
                let (drawn, text_right, room) = (number(0), number(1), number(2));
                if drawn < CODE_SCALE {
                    summary.problems.push(format!(
                        "slide {slide}: a code block shrunk to {:.0}% to fit: a line too long \
                         for the slide (shorten the excerpt, or leave lines out with `// ...`)",
                        drawn * 100.0
                    ));
                } else if text_right > room + TOLERANCE {
                    summary.problems.push(format!(
                        "slide {slide}: a code line ends at {text_right:.0} px, past its \
                         block's edge at {room:.0} px: cut at the right"
                    ));
                }
            }
            "clipped" => summary.problems.push(format!(
                "slide {slide}: a <{}> hides {} px of its content (a line too long?)",
                rest.first().unwrap_or(&"?"),
                number(1)
            )),
            "text" => {
                let size = number(0);
                summary.smallest_text = summary.smallest_text.min(size);
                if size < MIN_TEXT {
                    summary.problems.push(format!(
                        "slide {slide}: text drawn at {size:.1} px, under {MIN_TEXT} px \
                         (a code line too long, shrunk to fit?)"
                    ));
                }
            }
            "image" => {
                let (state, width, src) = (rest.first(), number(1), rest.get(2).unwrap_or(&"?"));
                if state != Some(&"ok") {
                    summary
                        .problems
                        .push(format!("slide {slide}: image {src} did not load"));
                    continue;
                }
                let Some(text) = svg(src) else { continue };
                let Some((svg_width, sizes)) = svg_text_sizes(&text) else {
                    summary.problems.push(format!(
                        "slide {slide}: {src} has no width to scale its text by"
                    ));
                    continue;
                };
                let scale = width / svg_width;
                let Some(smallest) = sizes.iter().copied().reduce(f64::min) else {
                    continue;
                };
                let on_slide = smallest * scale;
                let so_far = summary.smallest_chart_text.get_or_insert(on_slide);
                *so_far = so_far.min(on_slide);
                if on_slide < MIN_CHART_TEXT {
                    summary.problems.push(format!(
                        "slide {slide}: {src} has {smallest:.1} px text drawn {width:.0} px wide \
                         from {svg_width:.0}: {on_slide:.1} px on the slide, under {MIN_CHART_TEXT} px"
                    ));
                }
            }
            _ => {}
        }
    }
    summary
}

/// An SVG's width in its own units (the viewBox's, else the `width` attribute) and the
/// font size of each of its `<text>` elements: its own `font-size`, else the nearest
/// enclosing `<g>`'s or `<svg>`'s, else 16 px, the SVG default.
pub fn svg_text_sizes(svg: &str) -> Option<(f64, Vec<f64>)> {
    let root = svg.split("<svg").nth(1)?.split('>').next()?;
    let width = attribute(root, "viewBox")
        .and_then(|view_box| view_box.split_whitespace().nth(2)?.parse().ok())
        .or_else(|| {
            attribute(root, "width")?
                .trim_end_matches("px")
                .parse()
                .ok()
        })?;
    let font_size = |tag: &str| -> Option<f64> {
        attribute(tag, "font-size")?
            .trim_end_matches("px")
            .parse()
            .ok()
    };
    // The font size each open <svg> or <g> passes down to what it contains.
    let mut inherited = vec![16.0];
    let mut sizes = Vec::new();
    for tag in svg
        .split('<')
        .skip(1)
        .map(|rest| rest.split('>').next().unwrap_or_default())
    {
        let name = tag.split_whitespace().next().unwrap_or_default();
        let here = *inherited.last().expect("bug: the default is never popped");
        match name {
            "svg" | "g" if !tag.ends_with('/') => inherited.push(font_size(tag).unwrap_or(here)),
            "/svg" | "/g" if inherited.len() > 1 => {
                inherited.pop();
            }
            "text" => sizes.push(font_size(tag).unwrap_or(here)),
            _ => {}
        }
    }
    Some((width, sizes))
}

/// The value of `name="..."` in a tag's attributes.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[start..].split('"').next()
}

/// The slides (numbered from 1) that have no speaker notes. In Marp, an HTML comment on a
/// slide is its presenter note, except directives (`_class: …`) and the repository's own
/// markers (`excerpt:`, `figure:`).
pub fn slides_without_notes(markdown: &str) -> Vec<usize> {
    slides(markdown)
        .iter()
        .enumerate()
        .filter(|(_, slide)| notes(slide).is_none())
        .map(|(i, _)| i + 1)
        .collect()
}

/// Each slide's Markdown, front matter left out, in order (slide 1 first).
pub fn slides(markdown: &str) -> Vec<String> {
    let body = markdown
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map_or(markdown, |(_, body)| body);
    let mut slides = vec![String::new()];
    let mut in_code = false;
    for line in body.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.trim_end() == "---" {
            slides.push(String::new());
        } else {
            let slide = slides.last_mut().expect("bug: slides starts non-empty");
            slide.push_str(line);
            slide.push('\n');
        }
    }
    slides
}

/// The deck, `slides/slides.md`.
pub fn deck() -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("slides.md"))
        .expect("slides/slides.md is readable")
}

/// A slide's speaker notes: its first HTML comment that is neither a directive nor a marker.
pub fn notes(slide: &str) -> Option<&str> {
    all_notes(slide).next()
}

/// Every HTML comment of a slide that is neither a directive nor a marker: Marp shows them
/// all as the speaker's notes.
pub fn all_notes(slide: &str) -> impl Iterator<Item = &str> {
    slide.split("<!--").skip(1).filter_map(|comment| {
        let text = comment.split("-->").next().unwrap_or_default().trim();
        let marker = ["excerpt:", "figure:"]
            .iter()
            .any(|marker| text.starts_with(marker));
        let directive = text.lines().all(|line| {
            let line = line.trim();
            line.is_empty()
                || line
                    .split_once(':')
                    .is_some_and(|(key, _)| is_directive(key))
        });
        (!marker && !directive && !text.is_empty()).then_some(text)
    })
}

/// A slide's title: its first `#` or `##` heading, outside code.
pub fn title(slide: &str) -> Option<&str> {
    let mut in_code = false;
    for line in slide.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && (line.starts_with("# ") || line.starts_with("## ")) {
            return Some(line.trim_start_matches('#').trim());
        }
    }
    None
}

/// Titles that more than one slide carries: a speaker's "the slide about X" must name one.
pub fn duplicate_titles(markdown: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for (i, slide) in slides(markdown).iter().enumerate() {
        if let Some(title) = title(slide) {
            seen.entry(title.to_string())
                .or_insert_with(Vec::new)
                .push(i + 1);
        }
    }
    seen.into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(title, at)| format!("\"{title}\" on slides {at:?}"))
        .collect()
}

/// Table rows (a header included) whose every cell is empty, as `slide N: row`: on the
/// screen, a blank band that says nothing.
pub fn empty_table_rows(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, slide) in slides(markdown).iter().enumerate() {
        for line in slide.lines().map(str::trim) {
            let is_row = line.starts_with('|') && line.ends_with('|') && line.len() > 1;
            let separator =
                line.contains('-') && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '));
            let empty = line
                .trim_matches('|')
                .split('|')
                .all(|cell| cell.trim().is_empty());
            if is_row && !separator && empty {
                found.push(format!("slide {}: `{line}`", i + 1));
            }
        }
    }
    found
}

/// The minute mark each slide's notes open with (`0:15 Say: …` is minute 15), or what is
/// wrong: notes that open without one, or a mark earlier than the slide before's, or past
/// the end of a workshop of `length` minutes.
pub fn minute_marks(markdown: &str, length: u32) -> Result<Vec<u32>, Vec<String>> {
    let mut marks = Vec::new();
    let mut wrong = Vec::new();
    for (i, slide) in slides(markdown).iter().enumerate() {
        let n = i + 1;
        let Some(mark) = notes(slide).and_then(|text| minutes(text.split_whitespace().next()?))
        else {
            wrong.push(format!(
                "slide {n}: its notes do not open with a minute mark (`0:15 …`)"
            ));
            continue;
        };
        if let Some(&before) = marks.last()
            && mark < before
        {
            wrong.push(format!(
                "slide {n}: {} comes before the slide before's {}",
                clock(mark),
                clock(before)
            ));
        }
        if mark >= length {
            wrong.push(format!(
                "slide {n}: {} is past the end, {}",
                clock(mark),
                clock(length)
            ));
        }
        marks.push(mark);
    }
    if wrong.is_empty() {
        Ok(marks)
    } else {
        Err(wrong)
    }
}

/// `H:MM` as minutes: `1:05` is 65.
pub fn minutes(mark: &str) -> Option<u32> {
    let (hours, mins) = mark.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(hours) && mins.len() == 2 && digits(mins)).then_some(())?;
    let (hours, mins): (u32, u32) = (hours.parse().ok()?, mins.parse().ok()?);
    (mins < 60).then_some(hours * 60 + mins)
}

/// Minutes as `H:MM`.
pub fn clock(minutes: u32) -> String {
    format!("{}:{:02}", minutes / 60, minutes % 60)
}

/// Marp's directive names (spot directives start with `_`).
fn is_directive(key: &str) -> bool {
    const DIRECTIVES: &[&str] = &[
        "paginate",
        "header",
        "footer",
        "class",
        "backgroundColor",
        "backgroundImage",
        "backgroundPosition",
        "backgroundRepeat",
        "backgroundSize",
        "color",
        "theme",
        "headingDivider",
        "style",
        "size",
        "math",
    ];
    DIRECTIVES.contains(&key.trim().trim_start_matches('_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART: &str = r#"<svg width="960" height="560" viewBox="0 0 960 560">
<text x="1" font-size="20">Title</text><text x="2" font-size="12">tick</text></svg>"#;

    /// A slide whose content ends within EDGE of the bottom is reported; one that ends
    /// above it is not.
    #[test]
    fn overflow_past_the_bottom_is_a_problem() {
        let fits = check("slide 1 extent 1201.5 679.8 1280 720\n", |_| None);
        assert_eq!(fits.slides, 1);
        assert!(fits.problems.is_empty(), "{:?}", fits.problems);
        let runs_off = check("slide 2 extent 1201.5 707.8 1280 720\n", |_| None);
        assert_eq!(runs_off.problems.len(), 1, "{:?}", runs_off.problems);
        assert!(runs_off.problems[0].contains("slide 2"));
    }

    /// Content that runs into the page number's line, within BOTTOM_EDGE of the bottom, is
    /// reported (the round-trip chart's caption ran to 690 px, under the page number).
    #[test]
    fn content_beside_the_page_number_is_a_problem() {
        let fits = check("slide 1 extent 1201.5 679.8 1280 720\n", |_| None);
        assert!(fits.problems.is_empty(), "{:?}", fits.problems);
        let low = check("slide 27 extent 1201.5 689.6 1280 720\n", |_| None);
        assert_eq!(low.problems.len(), 1, "{:?}", low.problems);
        assert!(low.problems[0].contains("slide 27"));
    }

    /// A code block that Marp shrank, or a code line past its block's edge, is a problem;
    /// one drawn at its own size (to within rounding) with room to spare is not.
    #[test]
    fn a_code_line_too_long_for_its_block_is_a_problem() {
        let fits = check(
            "slide 5 code 1.007 1109.4 1184.5\nslide 9 code 0.999 1184.5 1184.5\n",
            |_| None,
        );
        assert!(fits.problems.is_empty(), "{:?}", fits.problems);
        let shrunk = check("slide 18 code 0.859 1183.6 1184.5\n", |_| None);
        assert_eq!(shrunk.problems.len(), 1, "{:?}", shrunk.problems);
        assert!(shrunk.problems[0].contains("shrunk to 86%"));
        let cut = check("slide 18 code 1.000 1230.0 1184.5\n", |_| None);
        assert_eq!(cut.problems.len(), 1, "{:?}", cut.problems);
        assert!(cut.problems[0].contains("cut at the right"));
    }

    /// Text under MIN_TEXT on a slide is a problem; the smallest size is reported.
    #[test]
    fn small_text_is_a_problem() {
        let found = check("slide 6 text 16.9\nslide 7 text 12.0\n", |_| None);
        assert_eq!(found.smallest_text, 12.0);
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert!(found.problems[0].contains("slide 7"));
    }

    /// An image that did not load, and a clipped code block, are problems.
    #[test]
    fn broken_images_and_clipped_blocks_are_problems() {
        let found = check(
            "slide 3 image broken 0.0 figures/missing.svg\nslide 4 clipped pre 120\n",
            |_| None,
        );
        assert_eq!(found.problems.len(), 2, "{:?}", found.problems);
        assert!(found.problems[0].contains("figures/missing.svg"));
        assert!(found.problems[1].contains("<pre>"));
    }

    /// Chart text is scaled by the width the image is drawn at: 12 px in a 960 px chart
    /// drawn 1200 px wide is 15 px on the slide, under the minimum; drawn 1280 wide, 16.
    #[test]
    fn chart_text_is_measured_once_scaled_onto_the_slide() {
        let svg = |_: &str| Some(CHART.to_string());
        let small = check("slide 5 image ok 1200.0 figures/chart.svg\n", svg);
        assert_eq!(small.smallest_chart_text, Some(15.0));
        assert_eq!(small.problems.len(), 1, "{:?}", small.problems);
        let large = check("slide 5 image ok 1280.0 figures/chart.svg\n", svg);
        assert_eq!(large.smallest_chart_text, Some(16.0));
        assert!(large.problems.is_empty(), "{:?}", large.problems);
    }

    #[test]
    fn svg_width_and_text_sizes_are_read() {
        assert_eq!(svg_text_sizes(CHART), Some((960.0, vec![20.0, 12.0])));
        let no_size = r#"<svg viewBox="0 0 400 300"><text>x</text></svg>"#;
        assert_eq!(svg_text_sizes(no_size), Some((400.0, vec![16.0])));
        // A group's size reaches the texts inside it, and only those; the viewBox, not
        // the drawn width, is the unit the sizes are in.
        let grouped = r#"<svg width="800" viewBox="0 0 400 300"><g font-size="9">
            <text>a</text><text font-size="20">b</text></g><text>c</text></svg>"#;
        assert_eq!(
            svg_text_sizes(grouped),
            Some((400.0, vec![9.0, 20.0, 16.0]))
        );
    }

    /// Marks read as minutes; notes without one, marks going back, and marks past the end
    /// are each reported with their slide.
    #[test]
    fn minute_marks_are_read_and_checked() {
        assert_eq!(minutes("0:15"), Some(15));
        assert_eq!(minutes("2:50"), Some(170));
        assert_eq!(minutes("0:5"), None);
        assert_eq!(minutes("Say:"), None);
        let deck = |notes: [&str; 3]| {
            format!(
                "---\nmarp: true\n---\n\n# A\n<!-- {} -->\n\n---\n\n## B\n<!-- excerpt: x.rs -->\n<!-- {} -->\n\n---\n\n## C\n<!-- {} -->\n",
                notes[0], notes[1], notes[2]
            )
        };
        assert_eq!(
            minute_marks(&deck(["0:00 Say: hi.", "0:05 Run: x.", "2:59 Bye."]), 180),
            Ok(vec![0, 5, 179])
        );
        let wrong = minute_marks(&deck(["0:00 Say.", "Run: no mark.", "0:10 x"]), 180).unwrap_err();
        assert_eq!(wrong.len(), 1, "{wrong:?}");
        assert!(wrong[0].starts_with("slide 2"));
        let back = minute_marks(&deck(["0:10 a", "0:05 b", "3:00 c"]), 180).unwrap_err();
        assert_eq!(back.len(), 2, "{back:?}");
        assert!(back[0].contains("0:05 comes before") && back[1].contains("3:00 is past"));
    }

    /// Two slides with one title, and a table row of empty cells, are found.
    #[test]
    fn duplicate_titles_and_empty_rows_are_found() {
        let deck = "---\nmarp: true\n---\n\n## Step 02\n\n| | |\n|---|--:|\n| held | 10 |\n\n---\n\n## Step 02\n\n```text\n## not a title\n```\n";
        assert_eq!(duplicate_titles(deck), vec!["\"Step 02\" on slides [1, 2]"]);
        assert_eq!(empty_table_rows(deck), vec!["slide 1: `| | |`"]);
        assert!(empty_table_rows("| a | |\n|---|---|\n").is_empty());
    }

    /// A slide needs a comment that is neither a directive nor a marker to have notes.
    #[test]
    fn slides_without_notes_are_found() {
        let deck = "---\nmarp: true\n---\n\n# One\n\n<!-- Say hello. -->\n\n---\n\n\
                    <!-- _class: lead -->\n<!-- excerpt: a.rs -->\n```rust\n---\n```\n\n---\n\n# Three\n";
        assert_eq!(slides_without_notes(deck), vec![2, 3]);
    }
}
