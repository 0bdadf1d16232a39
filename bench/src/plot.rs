//! SVG charts (plotters).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::run::RunResult;

const COLORS: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

fn labels(rows: &[RunResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in rows {
        if !v.contains(&r.label) {
            v.push(r.label.clone());
        }
    }
    v
}

/// A line per backend of `y(row)` against the row's x, x on a log scale.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    rows: &[RunResult],
    y: fn(&RunResult) -> f64,
) -> Result<()> {
    lines_with(path, title, x_desc, y_desc, rows, y, None)
}

/// A reference curve drawn dashed beside the measured lines: its legend label and its y at x.
pub struct Reference<'a> {
    pub label: &'a str,
    pub y: &'a dyn Fn(f64) -> f64,
}

/// Points of `r` over `xmin..=xmax`, evenly spaced on the log scale.
fn reference_points(r: &Reference<'_>, xmin: f64, xmax: f64) -> Vec<(f64, f64)> {
    const N: usize = 64;
    (0..=N)
        .map(|i| {
            let x = xmin * (xmax / xmin).powf(i as f64 / N as f64);
            (x, (r.y)(x))
        })
        .collect()
}

/// [`lines`], with a `reference` curve (an ideal line) dashed in black beside them.
pub fn lines_with(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    rows: &[RunResult],
    y: fn(&RunResult) -> f64,
    reference: Option<Reference<'_>>,
) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let xmin = rows
        .iter()
        .map(|r| r.x)
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
    let xmax = rows
        .iter()
        .map(|r| r.x)
        .fold(0.0, f64::max)
        .max(xmin * 1.01);
    let ref_pts = reference
        .as_ref()
        .map(|r| reference_points(r, xmin, xmax))
        .unwrap_or_default();
    let ymax = rows
        .iter()
        .map(y)
        .chain(ref_pts.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|x| e(&x))?;
    if let Some(r) = &reference {
        let dashed = BLACK.stroke_width(2);
        c.draw_series(DashedLineSeries::new(ref_pts.clone(), 8, 6, dashed))
            .map_err(|x| e(&x))?
            .label(r.label)
            .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 4, 3, dashed));
    }
    for (i, l) in labels(rows).iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &r.label == l)
            .map(|r| (r.x, y(r)))
            .collect();
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(l.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        c.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|x| e(&x))?;
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Latency percentile curves (x: percentile as 1/(1-p), log; y: µs), one per row.
pub fn percentile_curves(path: &Path, title: &str, rows: &[RunResult]) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let pts = |r: &RunResult| -> Vec<(f64, f64)> {
        r.percentiles
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, us)| (1.0 / (1.0 - p / 100.0), *us))
            .collect()
    };
    let xmax = rows
        .iter()
        .flat_map(|r| pts(r).into_iter().map(|p| p.0))
        .fold(10.0, f64::max);
    let ymax = rows
        .iter()
        .flat_map(|r| pts(r).into_iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..xmax).log_scale(), 0f64..ymax)
        .map_err(|x| e(&x))?;
    c.configure_mesh()
        .x_desc("percentile (1/(1-p): 10 = p90, 100 = p99, 1000 = p99.9)")
        .y_desc("latency µs")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, r) in rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let label = format!("{} @ {}", r.label, r.x);
        c.draw_series(LineSeries::new(pts(r), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
