//! The report as an SVG bar chart: a panel per (test, metric), a bar per system. Text
//! is written as SVG `<text>` elements (plotters' SVG backend without font features),
//! so no font library is needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{number, Report};
use super::Test;

/// Panels per row.
const COLUMNS: usize = 3;
/// Size of one panel in pixels.
const PANEL: (u32, u32) = (420, 300);

/// One colour per system, in the report's system order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// The panels of `report`'s plot: every (test, metric, unit) some system has a
/// figure for.
fn panels(report: &Report) -> Vec<(Test, &'static str, &'static str)> {
    let systems = &report.settings.systems;
    Test::ALL
        .into_iter()
        .flat_map(|t| t.metrics().iter().map(move |m| (t, m.name, m.unit)))
        .filter(|(t, m, _)| {
            systems
                .iter()
                .any(|s| report.find(s, t.name(), m).is_some())
        })
        .collect()
}

/// Draws `report` to the SVG file `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    let systems = &report.settings.systems;
    let panels = panels(report);
    if panels.is_empty() {
        return Err(anyhow!("nothing to plot"));
    }
    let rows = panels.len().div_ceil(COLUMNS);
    let size = (PANEL.0 * COLUMNS as u32, PANEL.1 * rows as u32);
    let label = TextStyle::from(("sans-serif", 13).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    let root = SVGBackend::new(path, size).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, COLUMNS));
    for (area, (test, metric, unit)) in areas.iter().zip(&panels) {
        let values: Vec<Option<f64>> = systems
            .iter()
            .map(|s| report.find(s, test.name(), metric).and_then(|r| r.value))
            .collect();
        let top = values.iter().flatten().copied().fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.2 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{test} {metric} ({unit})"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(52)
            // A segmented range holds its end, so 0..n-1 gives one segment per system.
            .build_cartesian_2d((0..systems.len() - 1).into_segmented(), 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(systems.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => systems.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| number(*y))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        for (i, value) in values.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            match value {
                Some(v) => {
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), *v),
                        ],
                        colour.filled(),
                    );
                    bar.set_margin(0, 0, 14, 14);
                    chart.draw_series(std::iter::once(bar)).map_err(err)?;
                    chart
                        .draw_series(std::iter::once(Text::new(
                            number(*v),
                            (SegmentValue::CenterOf(i), *v + top * 0.02),
                            label.clone(),
                        )))
                        .map_err(err)?;
                }
                None => {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            "n/a".to_string(),
                            (SegmentValue::CenterOf(i), top * 0.05),
                            label.clone(),
                        )))
                        .map_err(err)?;
                }
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
