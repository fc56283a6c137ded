//! The two pictures: memory per connection by step, and round trip against idle connections.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::StepResult;

/// A chart: drawn from the steps' results into an SVG file.
pub type Draw = fn(&[StepResult], &Path) -> Result<(), Box<dyn Error>>;

/// Every chart, by file name.
pub const ALL: &[(&str, Draw)] = &[
    ("memory-per-conn.svg", memory_per_conn),
    ("rtt-vs-idle.svg", rtt_vs_idle),
];

/// Horizontal bars, two per step (user-space RSS, kernel), on a log scale: the steps span
/// three orders of magnitude, from tens of bytes to tens of kilobytes.
pub fn memory_per_conn(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    let rows: Vec<(&str, Option<f64>, Option<f64>)> = steps
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| {
            let positive = |v: f64| (v >= 1.0).then_some(v);
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
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|(_, u, k)| [*u, *k])
        .flatten()
        .collect();
    let root =
        SVGBackend::new(path, (960, 120 + 56 * rows.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    if values.is_empty() {
        root.draw(&Text::new(
            "no step was measured",
            (20, 20),
            ("sans-serif", 20),
        ))?;
        root.present()?;
        return Ok(());
    }
    let lo = values.iter().copied().fold(f64::MAX, f64::min).min(10.0) / 2.0;
    let hi = values.iter().copied().fold(1.0, f64::max) * 4.0;
    let n = rows.len();
    // Step k (from the top) occupies y from n-1-k to n-k; below 0 is room for the legend.

    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Memory per connection, by step (log scale)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(200)
        .build_cartesian_2d((lo..hi).log_scale(), -0.9..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|x| plain_bytes(*x))
        .x_desc("bytes per connection")
        .label_style(("sans-serif", 14))
        .draw()?;

    let bar = |k: usize, offset: f64, value: f64| {
        let y = (n - 1 - k) as f64;
        Rectangle::new(
            [(lo, y + offset), (value, y + offset + 0.36)],
            COLOR_USER.filled(),
        )
    };
    let user = rows.iter().enumerate().filter_map(|(k, r)| Some((k, r.1?)));
    chart
        .draw_series(user.clone().map(|(k, v)| bar(k, 0.52, v)))?
        .label("user space: resident set (/proc)")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], COLOR_USER.filled()));
    let kernel = rows.iter().enumerate().filter_map(|(k, r)| Some((k, r.2?)));
    chart
        .draw_series(kernel.clone().map(|(k, v)| {
            let y = (n - 1 - k) as f64;
            Rectangle::new([(lo, y + 0.12), (v, y + 0.48)], COLOR_KERNEL.filled())
        }))?
        .label("kernel: socket caches + stacks (both ends)")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], COLOR_KERNEL.filled()));
    // The figure at the end of each bar: the chart is read from the back of a room.
    let label = |v: f64, y: f64| {
        Text::new(
            common::format_bytes(v as u64),
            (v * 1.08, y),
            ("sans-serif", 13),
        )
    };
    chart.draw_series(user.map(|(k, v)| label(v, (n - 1 - k) as f64 + 0.80)))?;
    chart.draw_series(kernel.map(|(k, v)| label(v, (n - 1 - k) as f64 + 0.40)))?;
    // Step names left of the axis, each beside its pair of bars.
    let name_style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (k, row) in rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(lo, (n - 1 - k) as f64 + 0.5));
        root.draw(&Text::new(row.0, (x - 10, y), name_style.clone()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line per step that was swept: round-trip p50 against connections held. select and
/// poll climb (every wake-up scans every fd); epoll stays flat (it hands back only the
/// ready). Log scale: poll at 10 000 is hundreds of times epoll, and both must be seen.
pub fn rtt_vs_idle(steps: &[StepResult], path: &Path) -> Result<(), Box<dyn Error>> {
    let swept: Vec<&StepResult> = steps
        .iter()
        .filter(|r| r.error.is_none() && r.sweep.len() > 2)
        .collect();
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    if swept.is_empty() {
        root.draw(&Text::new(
            "no step was swept",
            (20, 20),
            ("sans-serif", 20),
        ))?;
        root.present()?;
        return Ok(());
    }
    let points = swept.iter().flat_map(|r| r.sweep.iter());
    let max_conns = points.clone().map(|p| p.conns).max().unwrap_or(1) as f64;
    let max_us = points.clone().map(|p| p.p50_us).fold(1.0, f64::max);
    let min_us = points.map(|p| p.p50_us).fold(f64::MAX, f64::min).max(1.0);

    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round trip (p50) on one connection while the others sit idle (log scale)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0.0..max_conns * 1.02,
            (min_us / 1.5..max_us * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| crate::output::micros(*y))
        .x_desc("connections held")
        .y_desc("round trip p50")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, r) in swept.iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        let xy: Vec<(f64, f64)> = r.sweep.iter().map(|p| (p.conns as f64, p.p50_us)).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(3)))?
            .label(r.step.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(PointSeries::of_element(
            xy,
            4,
            color.filled(),
            &|c, s, st| Circle::new(c, s, st),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// `10 B`, `1000 B`, `100000 B`: axis ticks at powers of ten read best as plain numbers.
fn plain_bytes(bytes: f64) -> String {
    format!("{bytes:.0} B")
}

/// Strong, distinct colours that survive a projector (no yellow on white).
const LINE_COLORS: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x7f, 0x7f, 0x7f),
];

const COLOR_USER: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const COLOR_KERNEL: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
