//! `--plot FILE.svg` (issue 6): the mean excess per step, and the codes
//! before and after training projected onto the plane of the anchor line and
//! the main direction perpendicular to it, anchors marked. Drawn with
//! plotters' SVG backend into memory, then saved atomically.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::npy;

/// Rows drawn in the scatter (evenly spaced through the table).
const SAMPLE: usize = 2000;

/// The frame of the picture: origin p, axis u along p→q, axis w the main
/// direction of the sampled codes perpendicular to u.
pub(crate) struct Frame {
    p: Vec<f64>,
    u: Vec<f64>,
    w: Vec<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sample_rows(rows: usize) -> Vec<usize> {
    let n = rows.min(SAMPLE);
    (0..n).map(|i| i * rows / n).collect()
}

impl Frame {
    /// The frame of `table`'s drawn rows for anchors a, b.
    pub(crate) fn new(table: &Drawn, a: usize, b: usize) -> Frame {
        let row = |i: usize| table.row(i).iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (p, q) = (row(a), row(b));
        let mut u: Vec<f64> = q.iter().zip(&p).map(|(q, p)| q - p).collect();
        let n = dot(&u, &u).sqrt();
        if n > 0.0 {
            u.iter_mut().for_each(|x| *x /= n);
        }
        // Power iteration on the sampled residuals' scatter matrix (of
        // finite rows: one NaN row would make every direction NaN).
        let resid: Vec<Vec<f64>> = sample_rows(table.rows)
            .into_iter()
            .map(|i| {
                let d: Vec<f64> = row(i).iter().zip(&p).map(|(x, p)| x - p).collect();
                let t = dot(&d, &u);
                d.iter().zip(&u).map(|(d, u)| d - t * u).collect::<Vec<f64>>()
            })
            .filter(|r| r.iter().all(|x| x.is_finite()))
            .collect();
        let dim = table.dim;
        let mut w: Vec<f64> = (0..dim).map(|k| 1.0 + k as f64 * 0.01).collect();
        // No residual across u (D = 1, codes all on the anchor line, no
        // finite row): no direction, so every code's y is 0 — not the
        // starting guess, which is neither a unit vector nor across u.
        let mut found = false;
        for _ in 0..50 {
            let mut next = vec![0.0; dim];
            for r in &resid {
                let s = dot(r, &w);
                next.iter_mut().zip(r).for_each(|(n, r)| *n += s * r);
            }
            let t = dot(&next, &u); // keep it perpendicular to u
            next.iter_mut().zip(&u).for_each(|(n, u)| *n -= t * u);
            let norm = dot(&next, &next).sqrt();
            if norm == 0.0 {
                break;
            }
            w = next.into_iter().map(|x| x / norm).collect();
            found = true;
        }
        if !found {
            w = vec![0.0; dim];
        }
        Frame { p, u, w }
    }

    /// (along the anchor line, across it) of row `i`.
    fn project(&self, table: &Drawn, i: usize) -> (f64, f64) {
        let d: Vec<f64> = table.row(i).iter().zip(&self.p).map(|(&x, p)| x as f64 - p).collect();
        (dot(&d, &self.u), dot(&d, &self.w))
    }
}

/// The rows of a table that a picture draws (its sample, evenly spaced,
/// and the two anchors), taken from the table as its values pass, a block
/// at a time in row-major order (a GPU's table read back through a sink:
/// no host copy of the whole).
#[derive(Clone, Debug)]
pub struct Drawn {
    rows: usize,
    dim: usize,
    anchors: (usize, usize),
    /// The rows kept, ascending, each once, and their values.
    kept: Vec<usize>,
    values: Vec<f32>,
    /// Values handed over so far.
    seen: u64,
}

impl Drawn {
    /// Ready to take the drawn rows of a table of `rows` × `dim` whose
    /// anchors are `anchors`.
    pub fn new(rows: usize, dim: usize, anchors: (usize, usize)) -> Result<Drawn> {
        if dim == 0 || rows == 0 || anchors.0 >= rows || anchors.1 >= rows {
            return Err(Error::invalid(
                "plot",
                format!("a table of {rows} × {dim}, anchors {},{}: anchors among its rows", anchors.0, anchors.1),
            ));
        }
        let mut kept = sample_rows(rows);
        kept.extend([anchors.0, anchors.1]);
        kept.sort_unstable();
        kept.dedup();
        let too_wide =
            || Error::invalid("plot", format!("{} rows of {dim} columns: more than memory holds", kept.len()));
        let n = kept.len().checked_mul(dim).ok_or_else(too_wide)?;
        let mut values = Vec::new();
        values.try_reserve_exact(n).map_err(|_| too_wide())?;
        values.resize(n, f32::NAN);
        Ok(Drawn { rows, dim, anchors, kept, values, seen: 0 })
    }

    /// The drawn rows of a table at hand (whole rows of `dim` columns).
    pub fn of(table: &[f32], dim: usize, anchors: (usize, usize)) -> Result<Drawn> {
        if dim == 0 || !table.len().is_multiple_of(dim) {
            return Err(Error::invalid("plot", format!("{} values: not whole rows of {dim}", table.len())));
        }
        let mut d = Drawn::new(table.len() / dim, dim, anchors)?;
        d.take(table);
        Ok(d)
    }

    /// The table's next values: those of drawn rows are kept.
    pub fn take(&mut self, values: &[f32]) {
        let (start, end) = (self.seen, self.seen + values.len() as u64);
        let d = self.dim as u64;
        // The first kept row that ends after `start`.
        let first = self.kept.partition_point(|&r| (r as u64 + 1) * d <= start);
        for (k, &r) in self.kept.iter().enumerate().skip(first) {
            let (r0, r1) = (r as u64 * d, (r as u64 + 1) * d);
            if r0 >= end {
                break;
            }
            let (from, to) = (r0.max(start), r1.min(end));
            let dst = k * self.dim + (from - r0) as usize;
            self.values[dst..dst + (to - from) as usize]
                .copy_from_slice(&values[(from - start) as usize..(to - start) as usize]);
        }
        self.seen = end;
    }

    /// Whether every value of the table has been handed over.
    pub fn is_whole(&self) -> bool {
        self.seen == self.rows as u64 * self.dim as u64
    }

    /// Row `i` (one that is drawn).
    fn row(&self, i: usize) -> &[f32] {
        let k = self.kept.binary_search(&i).expect("a drawn row");
        &self.values[k * self.dim..][..self.dim]
    }
}

/// What the picture shows.
pub struct Picture<'a> {
    /// (step, mean excess) for every evaluated step.
    pub excess: Vec<(usize, f64)>,
    /// The drawn rows of the table before training and after.
    pub before: &'a Drawn,
    pub after: &'a Drawn,
}

/// Draws the picture into `path` (SVG), atomically.
pub fn draw(path: &Path, pic: &Picture) -> Result<()> {
    let (b, a) = (pic.before, pic.after);
    if (b.rows, b.dim, b.anchors) != (a.rows, a.dim, a.anchors) || !b.is_whole() || !a.is_whole() {
        return Err(Error::invalid(
            "plot",
            format!(
                "tables of {} and {} values of {} × {} and {} × {}: two whole tables of the same shape and anchors",
                b.seen, a.seen, b.rows, b.dim, a.rows, a.dim
            ),
        ));
    }
    let mut svg = String::new();
    render(&mut svg, pic).map_err(|e| Error::bad_file(path, format!("cannot draw the plot: {e}")))?;
    npy::save_atomic(path, |w| std::io::Write::write_all(w, svg.as_bytes()))
}

fn render(svg: &mut String, pic: &Picture) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(560);

    // Mean excess per step, log scale. A step whose mean excess is not
    // finite (or 0) has no place: the line breaks there, a point alone is
    // a dot, and the panel says how many steps were left out. The x axis
    // spans every step.
    let shown = |e: f64| e.is_finite() && e > 0.0;
    let runs: Vec<Vec<(f64, f64)>> = pic
        .excess
        .split(|&(_, e)| !shown(e))
        .filter(|run| !run.is_empty())
        .map(|run| run.iter().map(|&(s, e)| (s as f64, e.log10())).collect())
        .collect();
    let left_out = pic.excess.iter().filter(|(_, e)| !shown(*e)).count();
    let x1 = pic.excess.iter().map(|&(s, _)| s as f64).fold(1.0f64, f64::max);
    let (y0, y1) =
        runs.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (y0, y1) = if y0.is_finite() { (y0.floor(), y1.ceil().max(y0.floor() + 1.0)) } else { (-1.0, 1.0) };
    let mut c = ChartBuilder::on(&left)
        .caption("mean excess per step (log10)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..x1, y0..y1)?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc("log10 mean excess")
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .draw()?;
    for run in runs {
        if run.len() == 1 {
            c.draw_series(run.into_iter().map(|p| Circle::new(p, 3, BLUE.filled())))?;
        } else {
            c.draw_series(LineSeries::new(run, &BLUE))?;
        }
    }
    if left_out > 0 {
        let note = format!("{left_out} of {} steps not finite, not drawn", pic.excess.len());
        left.draw(&Text::new(note, (70, 44), ("sans-serif", 14).into_font().color(&RED)))?;
    }

    // The codes in the plane of the anchor line, before and after.
    let (a, b) = pic.before.anchors;
    let frame = Frame::new(pic.before, a, b);
    let sample = sample_rows(pic.before.rows);
    let before: Vec<(f64, f64)> = sample.iter().map(|&i| frame.project(pic.before, i)).collect();
    let after: Vec<(f64, f64)> = sample.iter().map(|&i| frame.project(pic.after, i)).collect();
    let anchors = |t: &Drawn| [frame.project(t, a), frame.project(t, b)];
    let (ab, aa) = (anchors(pic.before), anchors(pic.after));
    let all = before.iter().chain(&after).chain(&ab).chain(&aa).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut lo, mut hi) = ((f64::INFINITY, f64::INFINITY), (f64::NEG_INFINITY, f64::NEG_INFINITY));
    for p in all {
        lo = (lo.0.min(p.0), lo.1.min(p.1));
        hi = (hi.0.max(p.0), hi.1.max(p.1));
    }
    let pad = |a: f64, b: f64| if a.is_finite() && b > a { ((b - a) * 0.05).max(1e-6) } else { 1.0 };
    let (px, py) = (pad(lo.0, hi.0), pad(lo.1, hi.1));
    let (lo, hi) = if lo.0.is_finite() { (lo, hi) } else { ((-1.0, -1.0), (1.0, 1.0)) };
    let mut c = ChartBuilder::on(&right)
        .caption("codes: along p→q (x) and across it (y)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d((lo.0 - px)..(hi.0 + px), (lo.1 - py)..(hi.1 + py))?;
    c.configure_mesh()
        .x_desc("along the anchor line")
        .y_desc("main perpendicular direction")
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    // A point that is not finite has no place: it is left out, and its
    // series' label says how many were (plotters would put it in a corner,
    // where it looks like a cluster of codes).
    let drawn = |pts: &[(f64, f64)], what: &str| {
        let kept: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        let left_out = pts.len() - kept.len();
        let label = if left_out > 0 { format!("{what} ({left_out} not finite, not drawn)") } else { what.to_owned() };
        (kept, label)
    };
    let (pts, label) = drawn(&before, "before");
    c.draw_series(pts.into_iter().map(|p| Circle::new(p, 2, RGBColor(170, 170, 170).filled())))?
        .label(label)
        .legend(|p| Circle::new(p, 3, RGBColor(170, 170, 170).filled()));
    let (pts, label) = drawn(&after, "after");
    c.draw_series(pts.into_iter().map(|p| Circle::new(p, 2, BLUE.filled())))?
        .label(label)
        .legend(|p| Circle::new(p, 3, BLUE.filled()));
    let (pts, label) = drawn(&ab, "anchors before");
    c.draw_series(pts.into_iter().map(|p| Circle::new(p, 7, RED.stroke_width(2))))?
        .label(label)
        .legend(|p| Circle::new(p, 5, RED.stroke_width(2)));
    let (pts, label) = drawn(&aa, "anchors after");
    c.draw_series(pts.into_iter().map(|p| TriangleMarker::new(p, 8, RED.filled())))?
        .label(label)
        .legend(|p| TriangleMarker::new(p, 6, RED.filled()));
    c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// An axis label of the codes' panel: plain decimals where they read
/// well, else scientific (a range of ±1e-6 read "0.0" at every tick, one of
/// 1e30 ran 33 digits into its neighbours).
fn tick(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        // (Trailing zeros of the mantissa trimmed: "0.500" → "0.5",
        // "1.000e30" → "1e30".)
        let (m, e) = s.split_once('e').map_or((s.as_str(), None), |(m, e)| (m, Some(e)));
        let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
        let m = if m == "-0" { "0" } else { m };
        e.map_or(m.to_owned(), |e| format!("{m}e{e}"))
    };
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        // Four significant digits.
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        trim(format!("{v:.decimals$}"))
    } else {
        trim(format!("{v:.3e}"))
    }
}

/// Text for an SVG: XML 1.0 has no place for control characters other
/// than tab and line ends (a file name may hold them; the SVG backend
/// escapes only `&`, `<`, `>` and quotes), so each becomes U+FFFD.
fn xml_text(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && !matches!(c, '\t' | '\n' | '\r') { '\u{FFFD}' } else { c }).collect()
}

/// `scan --plot`: where in the table the non-finite rows sit — the table cut
/// into `counts.len()` equal spans of rows, a bar per span with its count of
/// rows holding a NaN or ±Inf.
pub fn draw_bad_rows(path: &Path, rows: usize, counts: &[u64], title: &str) -> Result<()> {
    let mut svg = String::new();
    render_bad_rows(&mut svg, rows, counts, &xml_text(title))
        .map_err(|e| Error::bad_file(path, format!("cannot draw the plot: {e}")))?;
    npy::save_atomic(path, |w| std::io::Write::write_all(w, svg.as_bytes()))
}

fn render_bad_rows(
    svg: &mut String,
    rows: usize,
    counts: &[u64],
    title: &str,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (1000, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let span = rows as f64 / counts.len().max(1) as f64;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..rows as f64, 0.0..top * 1.05)?;
    // (Rows and counts of rows: whole numbers on the axes, however few.)
    let whole = |v: &f64| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() };
    c.configure_mesh()
        .x_desc("row")
        .y_desc("rows with NaN or ±Inf")
        .x_labels((rows + 1).min(11))
        .y_labels((top as usize + 1).min(11))
        .x_label_formatter(&whole)
        .y_label_formatter(&whole)
        .draw()?;
    c.draw_series(counts.iter().enumerate().filter(|(_, &n)| n > 0).map(|(i, &n)| {
        let x0 = i as f64 * span;
        Rectangle::new([(x0, 0.0), (x0 + span, n as f64)], RED.filled())
    }))?;
    root.present()?;
    Ok(())
}

/// Rows holding a non-finite value in each of `buckets` equal spans of rows.
pub fn bad_rows_per_span(values: &[f32], dim: usize, buckets: usize) -> Vec<u64> {
    // Whole rows only (a partial last row is no row).
    let mut spans = BadRowSpans::new(values.len() / dim.max(1), dim, buckets);
    spans.add(values);
    spans.counts
}

/// [`bad_rows_per_span`] of a table of `rows` rows whose values are handed
/// over in order, a block at a time, split anywhere (`latent-line scan`
/// streams its file).
pub struct BadRowSpans {
    rows: u64,
    dim: u64,
    /// Values handed over so far, and the last row counted.
    seen: u64,
    last: Option<u64>,
    pub counts: Vec<u64>,
}

impl BadRowSpans {
    pub fn new(rows: usize, dim: usize, buckets: usize) -> BadRowSpans {
        let buckets = buckets.clamp(1, rows.max(1));
        BadRowSpans { rows: rows as u64, dim: dim.max(1) as u64, seen: 0, last: None, counts: vec![0; buckets] }
    }

    pub fn add(&mut self, values: &[f32]) {
        use rayon::prelude::*;
        // Where the values are non-finite (exponent all ones), by a
        // branch-free pass first: a clean block is skipped whole.
        const BLOCK: usize = 1 << 16;
        let blocks: Vec<Vec<u64>> = values
            .par_chunks(BLOCK)
            .enumerate()
            .map(|(b, part)| {
                if part.iter().fold(u32::MAX, |m, v| m.min(!v.to_bits() & 0x7f80_0000)) != 0 {
                    return Vec::new();
                }
                let at = self.seen + (b * BLOCK) as u64;
                // Each bad row once (at most one index a row, however many
                // of its values are bad).
                let mut rows = Vec::new();
                for (i, v) in part.iter().enumerate() {
                    if v.to_bits() & 0x7f80_0000 == 0x7f80_0000 {
                        let r = (at + i as u64) / self.dim;
                        if rows.last() != Some(&r) {
                            rows.push(r);
                        }
                    }
                }
                rows
            })
            .collect();
        let buckets = self.counts.len() as u128;
        for row in blocks.into_iter().flatten() {
            if row < self.rows && self.last != Some(row) {
                self.counts[(row as u128 * buckets / self.rows as u128) as usize] += 1;
                self.last = Some(row);
            }
        }
        self.seen += values.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows too wide to keep are an error, not an overflow or an abort.
    #[test]
    fn rows_too_wide_to_draw_are_an_error() {
        for dim in [1usize << 62, usize::MAX / 4] {
            let err = Drawn::new(2, dim, (0, 1)).map(drop).unwrap_err();
            assert!(err.to_string().contains("more than memory holds"), "{err}");
        }
    }

    /// A table with NaN rows: the frame comes from the finite rows (one NaN
    /// row made every code's y NaN), and points that are not finite are
    /// left out of the picture, counted in their series' label.
    #[test]
    fn codes_that_are_not_finite_are_left_out_and_counted() {
        let (rows, dim) = (40, 3);
        let before: Vec<f32> = (0..rows * dim).map(|i| ((i * 37) % 17) as f32 * 0.25 - 2.0).collect();
        let mut with_nan = before.clone();
        with_nan[10 * dim + 2] = f32::NAN;
        let drawn = |t: &[f32]| Drawn::of(t, dim, (0, rows - 1)).unwrap();
        let frame = Frame::new(&drawn(&with_nan), 0, rows - 1);
        assert!(frame.w.iter().all(|x| x.is_finite()), "{:?}", frame.w);
        assert!((dot(&frame.w, &frame.w) - 1.0).abs() < 1e-12 && dot(&frame.w, &frame.u).abs() < 1e-12);
        let mut after = before.clone();
        for r in [3, 4, 5] {
            after[r * dim] = f32::INFINITY;
        }
        let (before, after) = (drawn(&with_nan), drawn(&after));
        let pic = Picture { excess: vec![(0, 1.0), (1, 0.5)], before: &before, after: &after };
        let mut svg = String::new();
        render(&mut svg, &pic).unwrap();
        let grey = svg.matches("fill=\"#AAAAAA\"").count();
        let blue = svg.matches("fill=\"#0000FF\"").count();
        // (Each series also draws its legend's marker.)
        assert_eq!((grey, blue), (rows - 1 + 1, rows - 3 + 1), "{svg}");
        assert!(svg.contains("before (1 not finite, not drawn)") && svg.contains("after (3 not finite, not drawn)"));
    }

    /// Tick labels read at any scale; control characters never reach the
    /// SVG.
    #[test]
    fn ticks_read_at_any_scale_and_text_is_xml() {
        for (v, want) in [
            (0.0, "0"),
            (-0.0, "0"),
            (4.5, "4.5"),
            (-4.0, "-4"),
            (0.011, "0.011"),
            (12345.0, "12345"),
            (1e30, "1e30"),
            (-2.5e-7, "-2.5e-7"),
            (1.234567e-6, "1.235e-6"),
        ] {
            assert_eq!(tick(v), want, "{v}");
        }
        assert_eq!(xml_text("a\u{1}b\tc\u{7f}"), "a\u{FFFD}b\tc\u{FFFD}");
    }

    /// In one dimension (or with every code on the anchor line) nothing
    /// lies across the line: every code's y is 0, not its x mirrored.
    #[test]
    fn codes_with_nothing_across_the_anchor_line_lie_on_it() {
        use rand::{Rng, SeedableRng};
        let seed = crate::test_seed("frame_1d");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let rows = 300;
        let t: Vec<f32> = (0..rows).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let d = Drawn::of(&t, 1, (0, rows - 1)).unwrap();
        let frame = Frame::new(&d, 0, rows - 1);
        for i in sample_rows(rows) {
            let (x, y) = frame.project(&d, i);
            assert_eq!(y, 0.0, "seed {seed}: row {i}");
            let want = (t[i] as f64 - t[0] as f64) * (t[rows - 1] as f64 - t[0] as f64).signum();
            assert!((x - want).abs() < 1e-9, "seed {seed}: row {i}: {x} vs {want}");
        }
        // Codes on the segment in 3-D: the same.
        let (p, q) = ([1.0f32, -2.0, 0.5], [3.0f32, 1.0, -1.5]);
        let on: Vec<f32> = (0..rows)
            .flat_map(|i| {
                let s = i as f32 / (rows - 1) as f32;
                (0..3).map(move |k| p[k] + s * (q[k] - p[k]))
            })
            .collect();
        let d = Drawn::of(&on, 3, (0, rows - 1)).unwrap();
        let frame = Frame::new(&d, 0, rows - 1);
        assert!(sample_rows(rows).into_iter().all(|i| frame.project(&d, i).1.abs() < 1e-5), "seed {seed}");
    }

    /// Steps whose mean excess is not finite break the line and are counted
    /// on the panel; a point alone is a dot; the axis spans every step.
    #[test]
    fn steps_not_finite_break_the_excess_line_and_are_counted() {
        let t = [0.5f32, 1.0, -1.0, 2.0, 0.25, -0.5];
        let d = Drawn::of(&t, 2, (0, 2)).unwrap();
        let excess = vec![(0, 1.0), (1, 0.5), (2, f64::NAN), (3, 0.25), (4, f64::NAN), (5, 0.1), (6, 0.05)];
        let mut svg = String::new();
        render(&mut svg, &Picture { excess, before: &d, after: &d }).unwrap();
        // (Blue lines are the excess's; blue dots of radius 3 its lone
        // points, besides the scatter legend's marker.)
        let lines = |svg: &str| svg.lines().filter(|l| l.starts_with("<polyline") && l.contains("#0000FF")).count();
        let dots = |svg: &str| {
            svg.lines().filter(|l| l.starts_with("<circle") && l.contains("r=\"3\"") && l.contains("#0000FF")).count()
        };
        assert!(svg.contains("2 of 7 steps not finite, not drawn"), "{svg}");
        // Steps 0–1 and 5–6 lines, step 3 a dot.
        assert_eq!((lines(&svg), dots(&svg)), (2, 1 + 1), "{svg}");
        let mut svg = String::new();
        render(&mut svg, &Picture { excess: vec![(0, 1.0), (1, f64::NAN)], before: &d, after: &d }).unwrap();
        assert!(svg.contains("1 of 2 steps not finite, not drawn"), "{svg}");
        assert_eq!((lines(&svg), dots(&svg)), (0, 1 + 1), "{svg}");
        // Every step finite: one line, no note.
        let mut svg = String::new();
        render(&mut svg, &Picture { excess: vec![(0, 1.0), (1, 0.5), (2, 0.2)], before: &d, after: &d }).unwrap();
        assert!(!svg.contains("not finite, not drawn") && (lines(&svg), dots(&svg)) == (1, 1), "{svg}");
    }

    /// Rows are whole rows: a partial last row (even a lone one) is none,
    /// not an index past the spans.
    #[test]
    fn spans_count_whole_rows_only() {
        let mut v = vec![0.5f32; 10];
        v[9] = f32::NAN;
        assert_eq!(bad_rows_per_span(&v, 3, 3), [0, 0, 0]);
        assert_eq!(bad_rows_per_span(&v[8..], 3, 4), [0]);
        v[4] = f32::INFINITY;
        assert_eq!(bad_rows_per_span(&v, 3, 3), [0, 1, 0]);
    }

    /// Values handed over in any split count each bad row once, in its
    /// span, as a row-by-row count of the whole table does.
    #[test]
    fn spans_counted_from_blocks_of_any_split() {
        use rand::{Rng, SeedableRng};
        let seed = crate::test_seed("span_blocks");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (rows, dim, buckets) = (5000, 29, 37);
        let mut v = vec![0.25f32; rows * dim];
        for _ in 0..400 {
            v[rng.random_range(0..rows * dim)] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.random_range(0..3)];
        }
        let mut want = vec![0u64; buckets];
        for (r, row) in v.chunks(dim).enumerate() {
            if row.iter().any(|x| !x.is_finite()) {
                want[r * buckets / rows] += 1;
            }
        }
        let mut spans = BadRowSpans::new(rows, dim, buckets);
        let mut at = 0;
        while at < v.len() {
            let n = rng.random_range(1..=(v.len() - at).min(200_000));
            spans.add(&v[at..at + n]);
            at += n;
        }
        assert_eq!(spans.counts, want, "seed {seed}");
        assert!(want.iter().sum::<u64>() > 300);
    }

    /// A picture whose tables and anchors do not fit together is refused,
    /// and nothing is written.
    #[test]
    fn a_picture_that_does_not_fit_its_tables_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let t = [0.5f32; 12];
        // Anchors out of the table, no columns, no whole rows: no rows to draw.
        for (table, dim, anchors) in [(&t[..], 3, (0, 4)), (&t[..], 0, (0, 1)), (&t[..11], 3, (0, 1))] {
            let e = Drawn::of(table, dim, anchors).unwrap_err().to_string();
            assert!(e.starts_with("invalid plot: "), "{e}");
        }
        // Tables of two shapes, or one not yet whole: no picture.
        let whole = Drawn::of(&t, 3, (0, 3)).unwrap();
        let mut part = Drawn::new(4, 3, (0, 3)).unwrap();
        part.take(&t[..6]);
        for (before, after) in [(&whole, &Drawn::of(&t, 4, (0, 2)).unwrap()), (&whole, &part), (&part, &whole)] {
            let e = draw(&path, &Picture { excess: vec![(0, 1.0)], before, after }).unwrap_err().to_string();
            assert!(e.starts_with("invalid plot: "), "{e}");
            assert!(!path.exists());
        }
        draw(&path, &Picture { excess: vec![(0, 1.0)], before: &whole, after: &whole }).unwrap();
        assert!(path.exists());
    }

    /// The drawn rows taken from a table handed over in any split are
    /// those of the table at hand, each value in its place.
    #[test]
    fn drawn_rows_are_taken_from_blocks_of_any_split() {
        use rand::{Rng, SeedableRng};
        let seed = crate::test_seed("drawn_blocks");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (rows, dim) = (4321, 7);
        let table: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-3.0..3.0)).collect();
        let anchors = (rng.random_range(0..rows), rng.random_range(0..rows));
        let mut d = Drawn::new(rows, dim, anchors).unwrap();
        let mut at = 0;
        while at < table.len() {
            assert!(!d.is_whole());
            let n = rng.random_range(1..=(table.len() - at).min(50));
            d.take(&table[at..at + n]);
            at += n;
        }
        assert!(d.is_whole());
        let mut want = sample_rows(rows);
        want.extend([anchors.0, anchors.1]);
        want.sort_unstable();
        want.dedup();
        assert_eq!(d.kept, want);
        for &r in d.kept.iter().chain([&anchors.0, &anchors.1]) {
            assert_eq!(d.row(r), &table[r * dim..][..dim], "row {r}, seed {seed}");
        }
    }
}
