//! The pictures, one message each, drawn for a 1280×720 slide read from the back of a room:
//! text of 24 px or more (16 px once the chart is 500 px high on a slide), the Okabe–Ito palette (safe for colour-blind eyes) with a marker
//! and a line style per step as well, units on every axis, log axes ticked in the units the
//! labels use, and each line or point named where it ends rather than in a distant legend.

use std::error::Error;
use std::path::Path;

use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::schema::StepResult;
use crate::steps;
use crate::units::{bytes_tick, cpu_us, micros, round_time};

/// A chart: drawn from the steps' results into an SVG file.
pub type Draw = fn(&[StepResult], &Path) -> Result<(), Box<dyn Error>>;

/// Every chart, by file name.
pub const ALL: &[(&str, Draw)] = &[
    ("memory-per-conn.svg", memory_per_conn),
    ("rtt-select-poll.svg", rtt_select_poll),
    ("rtt-epoll.svg", rtt_epoll),
    ("tradeoff.svg", tradeoff),
    ("busy.svg", busy),
    ("work.svg", work),
];

/// The slide's size: a chart drawn at it needs no scaling on a 1280×720 slide.
const SIZE: (u32, u32) = (1280, 720);
const FONT: &str = "sans-serif";
/// Font sizes as plotters takes them: it writes 1/1.24 of this into the SVG (points to
/// pixels), so 30 is 24 px in the file, 16.8 px once the chart is shown 500 px high.
const TITLE: u32 = 38;
const TEXT: u32 = 30;

/// Okabe & Ito's palette, "Color Universal Design" (2002), without its yellow (too pale
/// on white for a projector).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0x00, 0x00, 0x00), // black
];

/// Each step keeps its colour, marker and line style in every chart: by its place in the
/// lesson (the order of `steps.rs`), not by its place in one chart.
fn look(steps: &[StepResult], name: &str) -> (RGBColor, usize) {
    let k = steps.iter().position(|r| r.step == name).unwrap_or(0);
    (PALETTE[k % PALETTE.len()], k)
}

/// One step's line: solid or dashed by its place among the steps, a marker at each point.
/// Returns where its last point lands on the picture, and that point's value, for its label.
fn draw_line<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<DB, CT>,
    k: usize,
    color: RGBColor,
    xy: Vec<(f64, f64)>,
) -> Result<((i32, i32), f64), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let last = *xy.last().expect("bug: a line has points");
    let style = color.stroke_width(4);
    if k % 2 == 0 {
        chart.draw_series(LineSeries::new(xy.clone(), style))?;
    } else {
        chart.draw_series(DashedLineSeries::new(xy.clone(), 14, 8, style))?;
    }
    for &at in &xy {
        draw_marker(chart, k, at, color)?;
    }
    Ok((chart.as_coord_spec().translate(&last), last.1))
}

/// A marker of one of four shapes (circle, triangle, square, cross), by `k`.
fn draw_marker<DB: DrawingBackend, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<DB, CT>,
    k: usize,
    at: (f64, f64),
    color: RGBColor,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let style = color.filled();
    match k % 4 {
        0 => chart.draw_series([Circle::new(at, 9, style)])?,
        1 => chart.draw_series([TriangleMarker::new(at, 11, style)])?,
        2 => {
            chart.draw_series([EmptyElement::at(at) + Rectangle::new([(-8, -8), (8, 8)], style)])?
        }
        _ => chart.draw_series([Cross::new(at, 10, color.stroke_width(4))])?,
    };
    Ok(())
}

/// Powers of four from `lo` to `hi`: ticks for a log byte axis.
fn byte_ticks(lo: f64, hi: f64) -> Vec<f64> {
    (0..20)
        .map(|k| 4f64.powi(k))
        .filter(|v| *v >= lo && *v <= hi)
        .collect()
}

fn blank(path: &Path, message: &str) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(message.to_string(), (40, 40), (FONT, TEXT)))?;
    root.present()?;
    Ok(())
}

/// Labels at the right of their points, pushed apart vertically so none overlaps another:
/// `(name, pixel position, colour)`.
fn labels_apart(
    root: &DrawingArea<SVGBackend, Shift>,
    mut labels: Vec<(String, (i32, i32), RGBColor)>,
) -> Result<(), Box<dyn Error>> {
    labels.sort_by_key(|(_, (_, y), _)| *y);
    let gap = TEXT as i32 + 4;
    let mut placed: Vec<i32> = Vec::new();
    for (i, (_, (_, y), _)) in labels.iter().enumerate() {
        let y = match i {
            0 => *y,
            _ => (*y).max(placed[i - 1] + gap),
        };
        placed.push(y);
    }
    let style = TextStyle::from((FONT, TEXT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for ((text, (x, y), color), at) in labels.into_iter().zip(placed) {
        let color = darker(color);
        if at != y {
            // Moved to make room: a thin line says which point it names.
            root.draw(&PathElement::new(
                [(x + 8, y), (x + 18, at)],
                color.stroke_width(2),
            ))?;
        }
        root.draw(&Text::new(text, (x + 22, at), style.color(&color)))?;
    }
    Ok(())
}

/// Horizontal bars, two per step (user-space RSS, kernel), on a log scale: the steps span
/// three orders of magnitude, from tens of bytes to a hundred kilobytes. Each bar says what
/// it is and how much at its end, so the colours are a help, never the only key.
pub fn memory_per_conn(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    let positive = |v: f64| (v >= 1.0).then_some(v);
    let rows: Vec<(&str, Option<f64>, Option<f64>)> = steps
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| {
            (
                r.step.as_str(),
                r.memory
                    .as_ref()
                    .and_then(|m| m.rss_per_conn_bytes)
                    .and_then(|b| positive(b as f64)),
                r.kernel
                    .as_ref()
                    .and_then(|k| positive(k.per_conn_bytes as f64)),
            )
        })
        .collect();
    let values: Vec<f64> = rows.iter().flat_map(|r| [r.1, r.2]).flatten().collect();
    if values.is_empty() {
        return blank(path, "no step was measured");
    }
    let lo = 8.0;
    let hi = values.iter().copied().fold(1024.0, f64::max) * 16.0;
    let n = rows.len();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Memory per connection, idle", (FONT, TITLE))
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(280)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(byte_ticks(lo, hi)),
            0.0..n as f64,
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|x| bytes_tick(*x))
        .x_desc("bytes per connection (log scale)")
        .label_style((FONT, TEXT))
        .axis_desc_style((FONT, TEXT))
        .draw()?;
    let (user_color, kernel_color) = (PALETTE[0], PALETTE[1]);
    let label = TextStyle::from((FONT, TEXT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let name = TextStyle::from((FONT, TEXT).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (k, (step, user, kernel)) in rows.iter().enumerate() {
        // Step k from the top occupies y from n-1-k to n-k: user above, kernel below.
        let y = (n - 1 - k) as f64;
        for (value, offset, color, what) in [
            (user, 0.52, user_color, "user"),
            (kernel, 0.10, kernel_color, "kernel"),
        ] {
            let Some(v) = value else { continue };
            chart.draw_series([Rectangle::new(
                [(lo, y + offset), (*v, y + offset + 0.38)],
                color.filled(),
            )])?;
            chart.draw_series([Text::new(
                format!("{} {what}", common::format_bytes(*v as u64)),
                (*v * 1.1, y + offset + 0.19),
                label.color(&color),
            )])?;
        }
        let (x, py) = chart.backend_coord(&(lo, y + 0.5));
        root.draw(&Text::new(step.to_string(), (x - 12, py), name.clone()))?;
    }
    root.present()?;
    Ok(())
}

/// A line per step: round trip p50 against connections held, linear axes, each line named
/// at its end. `pick` chooses the steps; `title` says the message.
fn rtt_lines(
    steps: &[StepResult],
    path: &Path,
    pick: &dyn Fn(&StepResult) -> bool,
    title: &str,
) -> Result<(), Box<dyn Error>> {
    let swept: Vec<&StepResult> = steps
        .iter()
        .filter(|r| r.error.is_none() && r.sweep.len() > 2 && pick(r))
        .collect();
    if swept.is_empty() {
        return blank(path, "no step was swept");
    }
    let points = swept.iter().flat_map(|r| r.sweep.iter());
    let max_conns = points.clone().map(|p| p.conns).max().unwrap_or(1) as f64;
    let max_us = points.map(|p| p.p50_us).fold(10.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, TITLE))
        .margin(20)
        .margin_right(300) // room for the names at the lines' ends
        .x_label_area_size(70)
        .y_label_area_size(130)
        .build_cartesian_2d(0.0..max_conns, 0.0..max_us * 1.25)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| micros(*y))
        .x_desc("idle connections held")
        .y_desc("round trip, median")
        .label_style((FONT, TEXT))
        .axis_desc_style((FONT, TEXT))
        .draw()?;
    let mut ends = Vec::new();
    for r in &swept {
        let (color, k) = look(steps, &r.step);
        let xy: Vec<(f64, f64)> = r.sweep.iter().map(|p| (p.conns as f64, p.p50_us)).collect();
        let (end, last) = draw_line(&mut chart, k, color, xy)?;
        ends.push((format!("{} {}", r.step, micros(last)), end, color));
    }
    labels_apart(&root, ends)?;
    root.present()?;
    Ok(())
}

/// select and poll: every wake-up scans every connection, so the round trip climbs.
pub fn rtt_select_poll(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    rtt_lines(
        steps,
        path,
        &|r| steps::scans(&r.step),
        "select and poll: every idle connection slows each round trip",
    )
}

/// epoll and what is built on it: the round trip stays flat however many sit idle.
pub fn rtt_epoll(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    rtt_lines(
        steps,
        path,
        &|r| !steps::scans(&r.step),
        "epoll: the round trip stays flat as idle connections pile up",
    )
}

/// The whole workshop in one picture: what a connection costs at rest (x, log) against what
/// a message costs the server when every connection speaks at once (y).
pub fn tradeoff(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    let points: Vec<(&StepResult, f64, f64)> = steps
        .iter()
        .filter_map(|r| {
            let bytes = r.memory.as_ref()?.rss_per_conn_bytes? as f64;
            let cpu = r.burst.as_ref()?.server_cpu_us_per_msg?;
            Some((r, bytes.max(1.0), cpu))
        })
        .collect();
    if points.is_empty() {
        return blank(path, "no step had a burst");
    }
    let hi_x = points.iter().map(|p| p.1).fold(1024.0, f64::max) * 4.0;
    let hi_y = points.iter().map(|p| p.2).fold(1.0, f64::max) * 1.3;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "The trade-off: memory at rest against CPU in a burst",
            (FONT, TITLE),
        )
        .margin(20)
        .margin_right(120) // room for the names beside the points
        .x_label_area_size(70)
        .y_label_area_size(130)
        .build_cartesian_2d(
            (8.0..hi_x)
                .log_scale()
                .with_key_points(byte_ticks(8.0, hi_x)),
            0.0..hi_y,
        )?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .y_labels(6)
        .x_label_formatter(&|x| bytes_tick(*x))
        .y_label_formatter(&|y| format!("{y:.0} µs"))
        .x_desc("user memory per idle connection (log scale)")
        .y_desc("server CPU per message, burst")
        .label_style((FONT, TEXT))
        .axis_desc_style((FONT, TEXT))
        .draw()?;
    let mut labels = Vec::new();
    for (r, x, y) in &points {
        let (color, k) = look(steps, &r.step);
        draw_marker(&mut chart, k, (*x, *y), color)?;
        labels.push((r.step.clone(), chart.backend_coord(&(*x, *y)), color));
    }
    labels_apart(&root, labels)?;
    root.present()?;
    Ok(())
}

/// The busy side, per step: the server's CPU per new connection in a storm, and per
/// message in a burst, as paired bars, each with its figure and unit at its end.
pub fn busy(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    let rows: Vec<(&str, Option<f64>, Option<f64>)> = steps
        .iter()
        .filter(|r| r.storm.is_some() || r.burst.is_some())
        .map(|r| {
            (
                r.step.as_str(),
                r.storm.as_ref().and_then(|s| s.server_cpu_us_per_conn),
                r.burst.as_ref().and_then(|b| b.server_cpu_us_per_msg),
            )
        })
        .collect();
    let hi = rows
        .iter()
        .flat_map(|r| [r.1, r.2])
        .flatten()
        .fold(1.0, f64::max);
    if rows.is_empty() {
        return blank(path, "no step had a storm or a burst");
    }
    let n = rows.len();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Busy: server CPU per new connection (storm) and per message (burst)",
            (FONT, TITLE - 6),
        )
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(280)
        .build_cartesian_2d(0.0..hi * 1.45, 0.0..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(0)
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.0} µs"))
        .x_desc("server CPU time")
        .label_style((FONT, TEXT))
        .axis_desc_style((FONT, TEXT))
        .draw()?;
    let label = TextStyle::from((FONT, TEXT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let name = TextStyle::from((FONT, TEXT).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (k, (step, storm, burst)) in rows.iter().enumerate() {
        let y = (n - 1 - k) as f64;
        for (value, offset, color, what) in [
            (storm, 0.52, PALETTE[4], "per conn"),
            (burst, 0.10, PALETTE[0], "per msg"),
        ] {
            let Some(v) = value else { continue };
            chart.draw_series([Rectangle::new(
                [(0.0, y + offset), (*v, y + offset + 0.38)],
                color.filled(),
            )])?;
            chart.draw_series([Text::new(
                format!("{} {what}", cpu_us(*v)),
                (*v + hi * 0.02, y + offset + 0.19),
                label.color(&darker(color)),
            )])?;
        }
        let (x, py) = chart.backend_coord(&(0.0, y + 0.5));
        root.draw(&Text::new(step.to_string(), (x - 12, py), name.clone()))?;
    }
    root.present()?;
    Ok(())
}

/// Where one loop loses: a line per step, the burst's p99 against the work per message (log
/// axes both; the levels evenly spaced). With no work the single loops are quickest; as the
/// work grows, one core serving everyone in turn falls behind the steps that use both.
pub fn work(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    let lines: Vec<(&StepResult, Vec<(u32, f64)>)> = steps
        .iter()
        .filter_map(|r| {
            let levels = &r.work.as_ref()?.levels;
            let points: Vec<(u32, f64)> = levels
                .iter()
                .filter(|l| l.p99_us > 0.0)
                .map(|l| (l.work_us, l.p99_us))
                .collect();
            (points.len() > 1).then_some((r, points))
        })
        .collect();
    if lines.is_empty() {
        return blank(path, "no step had the work section");
    }
    // The levels, in order, each at its own place on the x axis.
    let mut levels: Vec<u32> = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let x_of = |work_us: u32| levels.iter().position(|&l| l == work_us).unwrap_or(0) as f64;
    let all = lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
    let lo = all.clone().fold(f64::MAX, f64::min) / 1.5;
    let hi = all.fold(1.0, f64::max) * 1.5;
    // 1, 2, 5 in every decade: a log axis ticked where the labels read round.
    let ticks: Vec<f64> = (0..9)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .filter(|v| (lo..=hi).contains(v))
        .collect();
    // Wider than tall, unlike the others: on its slide it shares the height with a line
    // per finding, and its text must stay legible at that size.
    let root = SVGBackend::new(path, (1280, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "A burst's p99 as each message costs more CPU",
            (FONT, TITLE - 4),
        )
        .margin(20)
        .margin_right(330) // room for the names at the lines' ends
        .x_label_area_size(70)
        .y_label_area_size(130)
        .build_cartesian_2d(
            -0.2..(levels.len() as f64 - 0.8),
            (lo..hi).log_scale().with_key_points(ticks),
        )?;
    let level_names: Vec<String> = levels.iter().map(|l| format!("{l} µs")).collect();
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(levels.len())
        .x_label_formatter(&|x| {
            let k = x.round();
            match level_names.get(k as usize) {
                Some(name) if (x - k).abs() < 0.01 && k >= 0.0 => name.clone(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|y| round_time(*y))
        .x_desc("CPU spent on each message before its echo")
        .y_desc("burst round trip, p99 (log)")
        .label_style((FONT, TEXT))
        .axis_desc_style((FONT, TEXT))
        .draw()?;
    let mut ends = Vec::new();
    for (r, points) in &lines {
        let (color, k) = look(steps, &r.step);
        let xy: Vec<(f64, f64)> = points.iter().map(|&(w, p99)| (x_of(w), p99)).collect();
        let (end, last) = draw_line(&mut chart, k, color, xy)?;
        ends.push((format!("{} {}", r.step, micros(last)), end, color));
    }
    labels_apart(&root, ends)?;
    root.present()?;
    Ok(())
}

/// Text in a bar's colour, dark enough to read on white (orange text alone is too pale).
fn darker(color: RGBColor) -> RGBColor {
    let RGBColor(r, g, b) = color;
    RGBColor(r / 4 * 3, g / 4 * 3, b / 4 * 3)
}
