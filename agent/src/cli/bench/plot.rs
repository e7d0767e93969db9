//! Log-log plots of time against sequence length, as SVG.

use std::path::Path;

use plotters::prelude::*;

/// One line of the plot: (sequence length, seconds) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Writes a log-log plot of every series to `path` (SVG).
pub fn plot_times(path: &Path, series: &[Series]) -> anyhow::Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x_min, x_max) = bounds(all().map(|p| p.0));
    let (y_min, y_max) = bounds(all().map(|p| p.1));
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "attention prefill time against sequence length",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min / 1.2..x_max * 1.2).log_scale(),
            (y_min / 2.0..y_max * 2.0).log_scale(),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("sequence length T")
        .y_desc("seconds")
        .draw()
        .map_err(plot_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("could not draw the plot: {e}")
}
