//! A PNG chart of a run's loss and accuracy per epoch (plotters, drawn into a buffer, encoded by
//! the `image` crate). The font, DejaVu Sans, is embedded (licence in `runtime/assets/`).

use crate::train::EpochMetrics;
use plotters::prelude::*;
use std::sync::Once;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 400;

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let _ =
            plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"));
    });
}

/// Writes the chart to `path` (atomically). Errors are returned as text.
pub fn write(path: &std::path::Path, history: &[EpochMetrics]) -> Result<(), String> {
    register_font();
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    draw(&mut buffer, history).map_err(|e| e.to_string())?;
    crate::atomic::write_png(path, &buffer, WIDTH as usize, HEIGHT as usize, 3)
}

fn draw(buffer: &mut [u8], history: &[EpochMetrics]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buffer, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let epochs = history.len().max(1) as f64;
    let x_max = epochs.max(2.0);
    let losses: Vec<f64> = history.iter().flat_map(|m| [m.train_loss, m.test_loss]).filter(|v| v.is_finite()).collect();
    let loss_max = losses.iter().copied().fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..x_max, 0.0..loss_max)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    series(&mut chart, history, |m| m.train_loss, BLUE, "train")?;
    series(&mut chart, history, |m| m.test_loss, RED, "test")?;
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    let mut chart = ChartBuilder::on(&right)
        .caption("accuracy", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..x_max, 0.0..1.0)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    series(&mut chart, history, |m| m.train_accuracy, BLUE, "train")?;
    series(&mut chart, history, |m| m.test_accuracy, RED, "test")?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn series(
    chart: &mut Chart,
    history: &[EpochMetrics],
    value: impl Fn(&EpochMetrics) -> f64,
    color: RGBColor,
    label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let points: Vec<(f64, f64)> =
        history.iter().map(|m| (m.epoch as f64, value(m))).filter(|p| p.1.is_finite()).collect();
    if points.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    Ok(())
}

/// Writes the distributions of the distances of same and different pairs (each as the share of
/// its pairs in 50 bins), with the verification threshold, to `path` (atomically).
pub fn distances(path: &std::path::Path, pairs: &[(f32, bool)], threshold: f32) -> Result<(), String> {
    register_font();
    let (width, height) = (WIDTH * 2 / 3, HEIGHT);
    let top = pairs.iter().map(|p| p.0).fold(0f32, f32::max).max(threshold).max(1e-6) as f64 * 1.02;
    const BINS: usize = 50;
    let histogram = |same: bool| -> Vec<(f64, f64)> {
        let mut counts = [0usize; BINS];
        let mut n = 0usize;
        for &(d, _) in pairs.iter().filter(|p| p.1 == same) {
            counts[((f64::from(d) / top * BINS as f64) as usize).min(BINS - 1)] += 1;
            n += 1;
        }
        counts
            .iter()
            .enumerate()
            .map(|(b, &c)| ((b as f64 + 0.5) * top / BINS as f64, c as f64 / n.max(1) as f64))
            .collect()
    };
    let (same, different) = (histogram(true), histogram(false));
    let peak = same.iter().chain(&different).map(|p| p.1).fold(0.0, f64::max).max(1e-6) * 1.1;
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption("distances of pairs", ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..top, 0.0..peak)?;
            chart.configure_mesh().x_desc("distance").y_desc("share of the pairs").draw()?;
            for (points, color, label) in [(same, BLUE, "same identity"), (different, RED, "different identities")] {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            let t = f64::from(threshold);
            chart
                .draw_series(LineSeries::new(vec![(t, 0.0), (t, peak)], BLACK.stroke_width(1)))?
                .label(format!("threshold {threshold:.3}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| e.to_string())?;
    }
    crate::atomic::write_png(path, &buffer, width as usize, height as usize, 3)
}

/// Writes a chart of a cost per optimizer step (step 0: before the first), on a log scale, to
/// `path` (atomically): style transfer's cost falling.
pub fn costs(path: &std::path::Path, totals: &[f64]) -> Result<(), String> {
    register_font();
    let (width, height) = (WIDTH / 2 + 80, HEIGHT);
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error>> {
            root.fill(&WHITE)?;
            let points: Vec<(f64, f64)> = totals
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && **v > 0.0)
                .map(|(i, &v)| (i as f64, v))
                .collect();
            let low = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).min(1.0) * 0.8;
            let high = points.iter().map(|p| p.1).fold(0.0, f64::max).max(low * 10.0) * 1.25;
            let mut chart = ChartBuilder::on(&root)
                .caption("cost", ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..(totals.len().max(2) - 1) as f64, (low..high).log_scale())?;
            chart.configure_mesh().x_desc("step").draw()?;
            chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| e.to_string())?;
    }
    crate::atomic::write_png(path, &buffer, width as usize, height as usize, 3)
}
