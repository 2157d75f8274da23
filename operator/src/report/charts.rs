//! The report's charts, drawn as inline SVG (plotters' SVG backend): nothing for the page to
//! fetch. A chart that cannot be drawn comes back as its error, which the page shows in its
//! place; the rest of the report stands.

use plotters::prelude::*;
use scorer_runner::histogram::Histogram;

const WIDTH: u32 = 760;
const RANKED: RGBColor = RGBColor(66, 114, 196);
const UNRANKED: RGBColor = RGBColor(165, 165, 165);
const TOTAL: RGBColor = RGBColor(200, 210, 230);
const CUT: RGBColor = RGBColor(200, 40, 40);
const PALETTE: [RGBColor; 8] = [
    RGBColor(66, 114, 196),
    RGBColor(237, 125, 49),
    RGBColor(112, 173, 71),
    RGBColor(155, 89, 182),
    RGBColor(38, 166, 154),
    RGBColor(255, 192, 0),
    RGBColor(200, 40, 40),
    RGBColor(90, 90, 90),
];

pub type Chart = std::result::Result<String, String>;

/// Bins per histogram drawn: the score step keeps thousands, far too fine to read.
const DRAWN_BINS: usize = 50;

/// Tokens per aggregate score, those of ranked sources and those of sources no dimension ranks
/// stacked, with a line at each cut's threshold (label, score).
pub fn score_histogram(ranked: &Histogram, unranked: Option<&Histogram>, cuts: &[(String, f64)]) -> Chart {
    let coarse = |h: &Histogram| -> Vec<u64> {
        let per = h.tokens.len().div_ceil(DRAWN_BINS).max(1);
        h.tokens.chunks(per).map(|c| c.iter().sum()).collect()
    };
    let below = coarse(ranked);
    let above = unranked.map(coarse).unwrap_or_default();
    let width = (ranked.max - ranked.min) / below.len().max(1) as f64;
    let top = below.iter().enumerate().map(|(i, b)| b + above.get(i).copied().unwrap_or(0)).max().unwrap_or(0).max(1);
    draw(WIDTH, 300, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(ranked.min..ranked.max, 0u64..top + top / 10)?;
        chart.configure_mesh().x_desc("aggregate score").y_desc("tokens").disable_x_mesh().draw()?;
        let bar = |i: usize, from: u64, to: u64, color: RGBColor| {
            let x = ranked.min + i as f64 * width;
            Rectangle::new([(x, from), (x + width * 0.92, to)], color.filled())
        };
        chart
            .draw_series(below.iter().enumerate().filter(|(_, &t)| t > 0).map(|(i, &t)| bar(i, 0, t, RANKED)))?
            .label("ranked by their score")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RANKED.filled()));
        if above.iter().any(|&t| t > 0) {
            chart
                .draw_series(
                    above
                        .iter()
                        .enumerate()
                        .filter(|(_, &t)| t > 0)
                        .map(|(i, &t)| bar(i, below[i], below[i] + t, UNRANKED)),
                )?
                .label("no reliable dimension (cut on its own, by the draw)")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], UNRANKED.filled()));
        }
        for (label, threshold) in cuts {
            chart
                .draw_series(LineSeries::new([(*threshold, 0), (*threshold, top)], CUT.stroke_width(2)))?
                .label(format!("cut {label}: keeps scores >= {threshold:.2}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], CUT.stroke_width(2)));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.9)).draw()?;
        Ok(())
    })
}

/// Total and kept tokens per source, as horizontal bars: one category per source.
pub fn kept_bars(rows: &[(String, u64, u64)]) -> Chart {
    let top = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let height = 60 + 28 * rows.len().max(1) as u32;
    draw(WIDTH, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(160)
            .build_cartesian_2d(0u64..top + top / 10, (0..rows.len()).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len().max(1))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => rows.get(*i).map(|r| r.0.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("tokens")
            .draw()?;
        let bar = |i: usize, tokens: u64, inset: u32, color: RGBColor| {
            let mut bar =
                Rectangle::new([(0, SegmentValue::Exact(i)), (tokens, SegmentValue::Exact(i + 1))], color.filled());
            bar.set_margin(inset, inset, 0, 0);
            bar
        };
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| bar(i, r.1, 3, TOTAL)))?
            .label("total")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], TOTAL.filled()));
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| bar(i, r.2, 7, RANKED)))?
            .label("kept")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RANKED.filled()));
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.9)).draw()?;
        Ok(())
    })
}

/// Mean aggregate score per length decile, one line per source: (name, [(median tokens, mean
/// score)]). The x axis is logarithmic: record lengths span orders of magnitude.
pub fn score_by_length(series: &[(String, Vec<(f64, f64)>)], scale: (f64, f64)) -> Chart {
    let points = series.iter().flat_map(|s| &s.1);
    let lo = points.clone().map(|p| p.0).fold(f64::INFINITY, f64::min).max(1.0);
    let hi = points.map(|p| p.0).fold(1.0, f64::max).max(lo * 2.0);
    draw(WIDTH, 320, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), scale.0..scale.1)?;
        chart
            .configure_mesh()
            .x_labels(12)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("record length (tokens, median of its decile)")
            .y_desc("mean aggregate score")
            .draw()?;
        for (i, (name, line)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.9)).draw()?;
        Ok(())
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws onto a fresh SVG of `width` x `height` and returns its markup.
fn draw(
    width: u32,
    height: u32,
    plot: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> DrawResult,
) -> Chart {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        plot(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_their_marks() {
        let mut h = Histogram::new(1.0, 5.0, 1000);
        for i in 0..400 {
            h.add(1.0 + (i % 40) as f64 / 10.0, 10);
        }
        let mut flat = Histogram::new(1.0, 5.0, 1000);
        flat.add(3.0, 500);
        let svg = score_histogram(&h, Some(&flat), &[("prose".into(), 3.2)]).unwrap();
        assert!(svg.starts_with("<svg") && svg.matches("<rect").count() > 40, "{svg}");
        assert!(svg.contains("keeps scores &gt;= 3.20") || svg.contains("keeps scores >= 3.20"), "the cut is labelled");
        let bars = kept_bars(&[("prose/web".into(), 1000, 500), ("prose/forum".into(), 400, 100)]).unwrap();
        assert!(bars.contains("prose/forum") && bars.matches("<rect").count() >= 4);
        let lines = score_by_length(&[("web".into(), vec![(20.0, 2.5), (200.0, 3.5)])], (1.0, 5.0)).unwrap();
        assert!(lines.contains("<polyline") || lines.contains("<path"), "{lines}");
    }
}
