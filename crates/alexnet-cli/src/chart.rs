//! A small line-chart renderer for the paper's figures: axes with numbered
//! ticks, solid or dashed lines, a legend and a title, drawn into an RGB image.
//! Text uses the DejaVu Sans font shipped in `assets/` (its licence beside it).

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
/// Line colours, in the order series are given.
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Index into the palette; series that belong together can share a colour.
    pub colour: usize,
}

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A horizontal reference line (for instance the paper's 25% threshold).
    pub reference: Option<(f64, String)>,
    /// Vertical lines at these x values with their labels (learning-rate drops,
    /// epoch boundaries; an empty label draws the line alone).
    pub markers: Vec<(f64, String)>,
}

/// Round tick values covering `lo..hi`, about `count` of them.
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

fn format_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if (v * 10.0).round() == v * 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

struct Canvas {
    image: RgbImage,
    font: FontRef<'static>,
}

impl Canvas {
    fn blend(&mut self, x: i64, y: i64, colour: Rgb<u8>, alpha: f32) {
        if x < 0 || y < 0 || x >= self.image.width() as i64 || y >= self.image.height() as i64 {
            return;
        }
        let pixel = self.image.get_pixel_mut(x as u32, y as u32);
        for c in 0..3 {
            pixel.0[c] =
                (pixel.0[c] as f32 * (1.0 - alpha) + colour.0[c] as f32 * alpha).round() as u8;
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: Rgb<u8>) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.blend(x, y, colour, 1.0);
            }
        }
    }

    /// A line of the given width; `dash` > 0 draws dashes of that length.
    fn line(
        &mut self,
        from: (f64, f64),
        to: (f64, f64),
        colour: Rgb<u8>,
        width: f64,
        dash: f64,
        phase: &mut f64,
    ) {
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let length = (dx * dx + dy * dy).sqrt();
        let steps = (length * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let travelled = *phase + t * length;
            if dash > 0.0 && (travelled / dash) as i64 % 2 == 1 {
                continue;
            }
            let (x, y) = (from.0 + t * dx, from.1 + t * dy);
            let r = width / 2.0;
            for oy in (y - r).floor() as i64..=(y + r).ceil() as i64 {
                for ox in (x - r).floor() as i64..=(x + r).ceil() as i64 {
                    let d = ((ox as f64 - x).powi(2) + (oy as f64 - y).powi(2)).sqrt();
                    let alpha = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
                    if alpha > 0.0 {
                        self.blend(ox, oy, colour, alpha);
                    }
                }
            }
        }
        *phase += length;
    }

    fn text_width(&self, text: &str, size: f32) -> f64 {
        let scaled = self.font.as_scaled(PxScale::from(size));
        text.chars()
            .map(|c| scaled.h_advance(self.font.glyph_id(c)) as f64)
            .sum()
    }

    /// Draws `text` with its left end at `x` and its baseline at `y`.
    fn text(&mut self, text: &str, x: f64, y: f64, size: f32, colour: Rgb<u8>) {
        let scale = PxScale::from(size);
        let mut caret = x as f32;
        for c in text.chars() {
            let id = self.font.glyph_id(c);
            let advance = self.font.as_scaled(scale).h_advance(id);
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, y as f32));
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                let mut dots = Vec::new();
                outline.draw(|gx, gy, coverage| dots.push((gx, gy, coverage)));
                for (gx, gy, coverage) in dots {
                    self.blend(
                        bounds.min.x as i64 + gx as i64,
                        bounds.min.y as i64 + gy as i64,
                        colour,
                        coverage,
                    );
                }
            }
            caret += advance;
        }
    }

    /// Draws `text` rotated a quarter turn anticlockwise, centred on (x, y).
    fn vertical_text(&mut self, text: &str, x: f64, y: f64, size: f32, colour: Rgb<u8>) {
        let width = self.text_width(text, size).ceil() as u32 + 4;
        let height = (size * 1.4).ceil() as u32;
        let mut strip = Canvas {
            image: RgbImage::from_pixel(width, height, WHITE),
            font: self.font.clone(),
        };
        strip.text(text, 2.0, size as f64, size, colour);
        for sy in 0..height {
            for sx in 0..width {
                let p = *strip.image.get_pixel(sx, sy);
                if p != WHITE {
                    let tx = x as i64 - height as i64 / 2 + sy as i64;
                    let ty = y as i64 + width as i64 / 2 - sx as i64;
                    self.blend(tx, ty, p, 1.0);
                }
            }
        }
    }
}

/// Where the plot area lies on the canvas, and the data range it shows.
struct Axes {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    /// Canvas position of a data point.
    fn to_px(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let ((x_lo, x_hi), (y_lo, y_hi)) = (self.x, self.y);
        (
            self.left + (x - x_lo) / (x_hi - x_lo) * (self.right - self.left),
            self.bottom - (y - y_lo) / (y_hi - y_lo) * (self.bottom - self.top),
        )
    }
}

impl LineChart {
    pub fn render(&self, width: u32, height: u32) -> RgbImage {
        let font = FontRef::try_from_slice(FONT).expect("the bundled font is valid");
        let mut canvas = Canvas {
            image: RgbImage::from_pixel(width, height, WHITE),
            font,
        };
        let (x, y) = self.data_range();
        let axes = Axes {
            left: 80.0,
            right: width as f64 - 20.0,
            top: 50.0,
            bottom: height as f64 - 60.0,
            x,
            y,
        };
        draw_axes(&mut canvas, &axes);
        self.draw_reference(&mut canvas, &axes);
        self.draw_markers(&mut canvas, &axes);
        self.draw_series(&mut canvas, &axes);
        self.draw_legend(&mut canvas, &axes);
        self.draw_labels(&mut canvas, &axes, width, height);
        canvas.image
    }

    /// The x and y ranges shown: every finite point, the reference line, and 0
    /// on the y axis, with 5% room above.
    fn data_range(&self) -> ((f64, f64), (f64, f64)) {
        let points = self.series.iter().flat_map(|s| s.points.iter().copied());
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) =
            (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, f64::NEG_INFINITY);
        for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            x_lo = x_lo.min(x);
            x_hi = x_hi.max(x);
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
        if let Some((y, _)) = self.reference {
            y_hi = y_hi.max(y);
        }
        if !x_lo.is_finite() {
            (x_lo, x_hi, y_hi) = (0.0, 1.0, 1.0);
        }
        if x_hi <= x_lo {
            x_hi = x_lo + 1.0;
        }
        if y_hi <= y_lo {
            y_hi = y_lo + 1.0;
        }
        ((x_lo, x_hi), (y_lo, y_hi * 1.05))
    }

    fn draw_markers(&self, canvas: &mut Canvas, axes: &Axes) {
        for (x, label) in &self.markers {
            if !(axes.x.0..=axes.x.1).contains(x) {
                continue;
            }
            let (px, _) = axes.to_px((*x, axes.y.0));
            let mut phase = 0.0;
            let grey = if label.is_empty() {
                Rgb([215, 215, 215])
            } else {
                Rgb([150, 150, 150])
            };
            canvas.line(
                (px, axes.bottom),
                (px, axes.top),
                grey,
                1.0,
                4.0,
                &mut phase,
            );
            if !label.is_empty() {
                canvas.text(label, px + 3.0, axes.top + 12.0, 11.0, Rgb([90, 90, 90]));
            }
        }
    }

    fn draw_reference(&self, canvas: &mut Canvas, axes: &Axes) {
        let Some((y, label)) = &self.reference else {
            return;
        };
        let (_, py) = axes.to_px((axes.x.0, *y));
        let mut phase = 0.0;
        canvas.line(
            (axes.left, py),
            (axes.right, py),
            Rgb([120, 120, 120]),
            1.0,
            3.0,
            &mut phase,
        );
        canvas.text(
            label,
            axes.right - canvas.text_width(label, 12.0) - 4.0,
            py - 4.0,
            12.0,
            Rgb([90, 90, 90]),
        );
    }

    fn draw_series(&self, canvas: &mut Canvas, axes: &Axes) {
        for series in &self.series {
            let colour = Rgb(PALETTE[series.colour % PALETTE.len()]);
            let mut phase = 0.0;
            let dash = if series.dashed { 8.0 } else { 0.0 };
            for pair in series.points.windows(2) {
                canvas.line(
                    axes.to_px(pair[0]),
                    axes.to_px(pair[1]),
                    colour,
                    2.0,
                    dash,
                    &mut phase,
                );
            }
            if series.points.len() == 1 {
                let (px, py) = axes.to_px(series.points[0]);
                canvas.rect(
                    px as i64 - 2,
                    py as i64 - 2,
                    px as i64 + 2,
                    py as i64 + 2,
                    colour,
                );
            }
        }
    }

    /// The legend, top right inside the axes.
    fn draw_legend(&self, canvas: &mut Canvas, axes: &Axes) {
        let mut y = axes.top + 18.0;
        for series in &self.series {
            let colour = Rgb(PALETTE[series.colour % PALETTE.len()]);
            let w = canvas.text_width(&series.label, 13.0);
            let x = axes.right - w - 50.0;
            let mut phase = 0.0;
            canvas.line(
                (x, y - 5.0),
                (x + 36.0, y - 5.0),
                colour,
                2.0,
                if series.dashed { 6.0 } else { 0.0 },
                &mut phase,
            );
            canvas.text(&series.label, x + 42.0, y, 13.0, BLACK);
            y += 18.0;
        }
    }

    /// The title and the two axis labels.
    fn draw_labels(&self, canvas: &mut Canvas, axes: &Axes, width: u32, height: u32) {
        let title_width = canvas.text_width(&self.title, 16.0);
        canvas.text(
            &self.title,
            (width as f64 - title_width) / 2.0,
            30.0,
            16.0,
            BLACK,
        );
        let x_width = canvas.text_width(&self.x_label, 14.0);
        canvas.text(
            &self.x_label,
            (axes.left + axes.right - x_width) / 2.0,
            height as f64 - 18.0,
            14.0,
            BLACK,
        );
        let middle = (axes.top + axes.bottom) / 2.0;
        canvas.vertical_text(&self.y_label, 22.0, middle, 14.0, BLACK);
    }
}

/// Grid lines with their values on the y axis, ticks on the x axis, and the two axes.
fn draw_axes(canvas: &mut Canvas, axes: &Axes) {
    let (left, right, top, bottom) = (axes.left, axes.right, axes.top, axes.bottom);
    for t in ticks(axes.y.0, axes.y.1, 6) {
        let (_, py) = axes.to_px((axes.x.0, t));
        canvas.rect(left as i64, py as i64, right as i64, py as i64, GRID);
        let label = format_tick(t);
        let w = canvas.text_width(&label, 13.0);
        canvas.text(&label, left - 8.0 - w, py + 5.0, 13.0, BLACK);
    }
    for t in ticks(axes.x.0, axes.x.1, 8) {
        let (px, _) = axes.to_px((t, axes.y.0));
        canvas.rect(
            px as i64,
            bottom as i64,
            px as i64,
            bottom as i64 + 5,
            BLACK,
        );
        let label = format_tick(t);
        let w = canvas.text_width(&label, 13.0);
        canvas.text(&label, px - w / 2.0, bottom + 20.0, 13.0, BLACK);
    }
    canvas.rect(left as i64, top as i64, left as i64, bottom as i64, BLACK);
    canvas.rect(
        left as i64,
        bottom as i64,
        right as i64,
        bottom as i64,
        BLACK,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(3.0, 97.0, 8);
        assert!(
            t.first().unwrap() >= &3.0 && t.last().unwrap() <= &97.0 && t.len() >= 4,
            "{t:?}"
        );
    }

    #[test]
    fn lines_and_text_leave_ink() {
        let chart = LineChart {
            title: "t".into(),
            x_label: "epochs".into(),
            y_label: "error".into(),
            series: vec![Series {
                label: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 0.5)],
                dashed: true,
                colour: 1,
            }],
            reference: Some((0.25, "25%".into())),
            markers: vec![(0.5, "lr 0.001".into())],
        };
        let image = chart.render(400, 300);
        let red = image
            .pixels()
            .filter(|p| p.0[0] > 150 && p.0[1] < 100)
            .count();
        assert!(
            red > 50,
            "the dashed red series should be drawn ({red} pixels)"
        );
        let dark = image
            .pixels()
            .filter(|p| p.0.iter().all(|&c| c < 80))
            .count();
        assert!(dark > 200, "axes and text should be drawn ({dark} pixels)");
    }
}
