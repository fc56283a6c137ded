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

/// Content must stay this far inside the slide's edges: text touching the edge (or the
/// page number) is lost on a projector that crops a little.
pub const EDGE: f64 = 20.0;

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
                if bottom > SLIDE_HEIGHT - EDGE + TOLERANCE {
                    summary.problems.push(format!(
                        "slide {slide}: content ends at {bottom:.0} px, past {} px \
                         (the 720 px slide less a {EDGE} px edge)",
                        SLIDE_HEIGHT - EDGE
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
        .iter()
        .enumerate()
        .filter(|(_, slide)| !has_note(slide))
        .map(|(i, _)| i + 1)
        .collect()
}

fn has_note(slide: &str) -> bool {
    slide.split("<!--").skip(1).any(|comment| {
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
        !marker && !directive && !text.is_empty()
    })
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
        let fits = check("slide 1 extent 1201.5 699.8 1280 720\n", |_| None);
        assert_eq!(fits.slides, 1);
        assert!(fits.problems.is_empty(), "{:?}", fits.problems);
        let runs_off = check("slide 2 extent 1201.5 707.8 1280 720\n", |_| None);
        assert_eq!(runs_off.problems.len(), 1, "{:?}", runs_off.problems);
        assert!(runs_off.problems[0].contains("slide 2"));
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

    /// A slide needs a comment that is neither a directive nor a marker to have notes.
    #[test]
    fn slides_without_notes_are_found() {
        let deck = "---\nmarp: true\n---\n\n# One\n\n<!-- Say hello. -->\n\n---\n\n\
                    <!-- _class: lead -->\n<!-- excerpt: a.rs -->\n```rust\n---\n```\n\n---\n\n# Three\n";
        assert_eq!(slides_without_notes(deck), vec![2, 3]);
    }
}
