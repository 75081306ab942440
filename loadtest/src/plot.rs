//! `--plot`: a PNG of the timeline, drawn with plotters' bitmap backend. Text is rendered with
//! ab_glyph and the DejaVu Sans font embedded from the `dejavu` crate, so no system font or
//! font library is needed.
//!
//! Lifecycle runs: dispatch latency p50/p99 and placed→vendor p99 per second (ms) on top,
//! orders placed and dispatched per second below. Connections-only runs: hub and harness RSS on
//! top, sockets held and connects per second below.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Sample;

const SIZE: (u32, u32) = (1200, 800);

/// A named, coloured line and its points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

const GREEN: RGBColor = RGBColor(0, 150, 0);

fn register_font() -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded font could not be loaded"))
}

/// The points of one optional column of the timeline.
fn column(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter_map(|s| f(s).map(|v| (s.t_s, v)))
        .collect()
}

/// Draw the timeline into `path` (PNG).
pub fn draw(path: &Path, samples: &[Sample], connections_only: bool) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(SIZE.1 * 3 / 5);
    let t_max = samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    if connections_only {
        let memory = vec![
            ("hub RSS", RED, column(samples, |s| s.hub_rss_mib)),
            ("harness RSS", BLUE, column(samples, |s| s.harness_rss_mib)),
        ];
        panel(&top, "memory", "MiB", t_max, memory)?;
        let sockets = vec![
            (
                "sockets held",
                BLUE,
                column(samples, |s| Some(s.sockets_open as f64)),
            ),
            (
                "connects /s",
                GREEN,
                column(samples, |s| Some(s.connects_per_s)),
            ),
        ];
        panel(&bottom, "sockets", "", t_max, sockets)?;
    } else {
        let latency = vec![
            ("dispatch p50", BLUE, column(samples, |s| s.dispatch_p50_ms)),
            ("dispatch p99", RED, column(samples, |s| s.dispatch_p99_ms)),
            (
                "placed -> vendor p99",
                GREEN,
                column(samples, |s| s.placed_to_vendor_p99_ms),
            ),
        ];
        panel(&top, "latency per second", "ms", t_max, latency)?;
        let throughput = vec![
            (
                "orders placed /s",
                BLUE,
                column(samples, |s| Some(s.orders_per_s)),
            ),
            (
                "dispatched /s",
                RED,
                column(samples, |s| Some(s.dispatch_count as f64)),
            ),
        ];
        panel(&bottom, "throughput", "per second", t_max, throughput)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One chart: `lines` over time, with a legend when anything was drawn.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    t_max: f64,
    lines: Vec<Line>,
) -> Result<()> {
    let y_max = lines
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, v)| *v))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since sockets started")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let mut drawn = 0;
    for (name, color, pts) in lines {
        if pts.is_empty() {
            continue;
        }
        drawn += 1;
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if drawn > 0 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}
