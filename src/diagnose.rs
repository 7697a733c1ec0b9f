//! `latent-line diagnose` (SPEC §1, §6, §13): the original six-code case,
//! naive and safe side by side, explained for someone who has never seen
//! the math. Every finding in the text comes from running the CPU backend
//! ([`CpuTrainer`]) on a fixed table and reading its records and scans; only
//! the per-row distances are recomputed here, in f64, for display.
//!
//! The case: a [`ROWS`] × [`DIM`] table, entry (row, col) =
//! `rng::normal_f32(SEED, row, col)`, anchors p = row 0 and q = row 5,
//! endpoints `detached` (the anchors get their own row term, as in the
//! original PyTorch code), reduction `sum`, one SGD step with lr 0.2.

use crate::config::{Endpoints, Shape, StepConfig};
use crate::cpu::CpuTrainer;
use crate::error::{Error, Result};
use crate::guard::{Action, Policy, COLLAPSE_FRACTION};
use crate::record::Record;
use crate::scan::{classify, Kind, Scan};
use crate::trainer::{TableSource, Trainer};

/// Rows of the case: six codes, as in the original report.
pub const ROWS: usize = 6;
/// Columns of each code.
pub const DIM: usize = 4;
/// Seed of the table (latent-line's counter RNG, `rng::normal_f32`).
pub const SEED: u64 = 0;
/// Steps of the collapse demonstration.
pub const LONG_STEPS: usize = 200;
/// Text width: every line of the report is at most this many characters.
const WIDTH: usize = 100;
/// In [`Out::para`], joins words that must stay on one line.
const GLUE: char = '~';

/// The table of the case, row-major: N(0,1) entries of seed [`SEED`].
pub fn table() -> Vec<f32> {
    (0..ROWS).flat_map(|r| (0..DIM).map(move |c| crate::rng::normal_f32(SEED, r as u32, c as u32))).collect()
}

/// The case's step options: `naive` (ε = 0, autograd's formula) or safe
/// (ε = 1e-8), endpoints `detached`, under `policy`.
pub fn config(naive: bool, policy: Policy) -> StepConfig {
    let mut cfg = StepConfig::for_rows(ROWS);
    cfg.anchor_a = 0;
    cfg.anchor_b = ROWS - 1;
    cfg.endpoints = Endpoints::Detached;
    cfg.naive = naive;
    if naive {
        cfg.eps = 0.0;
    }
    cfg.guard.policy = policy;
    cfg
}

/// The text of `latent-line diagnose`.
pub fn report() -> Result<String> {
    let shape = Shape::new(ROWS, DIM)?;
    let start = table();
    let naive_cfg = config(true, Policy::Ignore);
    let safe_cfg = config(false, StepConfig::for_rows(ROWS).guard.policy);
    let (a, b) = (naive_cfg.anchor_a, naive_cfg.anchor_b);

    // The runs. Naive under `ignore`, so that its NaN is written; a second
    // naive step shows what the NaN does next.
    let (mut naive_tr, naive) = one_step(shape, naive_cfg, &start)?;
    let naive2_rec = first(naive_tr.steps(1)?)?;
    let naive2_scan = naive_tr.scan_table()?;
    let (_, safe) = one_step(shape, safe_cfg, &start)?;
    // The same naive step under the default guard (skip-step).
    let guarded_cfg = config(true, StepConfig::for_rows(ROWS).guard.policy);
    let (_, guarded) = one_step(shape, guarded_cfg, &start)?;
    // Many safe steps: detached (the anchors drift) against frozen.
    let mut long_tr = CpuTrainer::new(shape, safe_cfg, TableSource::Data(start.clone()))?;
    let long = long_tr.steps(LONG_STEPS)?;
    let long_end = long_tr.evaluate()?;
    let frozen_cfg = StepConfig { endpoints: Endpoints::Frozen, ..safe_cfg };
    let mut frozen_tr = CpuTrainer::new(shape, frozen_cfg, TableSource::Data(start.clone()))?;
    let frozen = frozen_tr.steps(LONG_STEPS)?;
    let frozen_end = frozen_tr.evaluate()?;

    let p = row_of(&start, a);
    let q = row_of(&start, b);
    let d0 = dist(p, q);
    let geo: Vec<Geo> = (0..ROWS).map(|i| Geo::of(&start, i, a, b, 0.0)).collect();
    let naive_bad = &naive.after_scan.rows;
    let safe_clean = safe.rec.scans.is_clean() && safe.after_scan.is_clean();
    let eps = safe_cfg.eps;
    let w_red = safe_cfg.w_red(ROWS) as f64;
    let d_min = geo.iter().flat_map(|g| [g.d1, g.d2]).filter(|&d| d > 0.0).fold(f64::INFINITY, f64::min);
    let root_eps = eps.sqrt();

    let mut o = Out::default();
    let title = "latent-line diagnose: the original six-code case, naive and safe side by side";
    o.line(title);
    o.line("=".repeat(title.chars().count()));
    o.blank();

    // 1. What the penalty is.
    o.line("1. The penalty");
    o.blank();
    o.para(
        "  ",
        &format!(
            "A model keeps {ROWS} codes: the rows of a table, {DIM} numbers each. Two rows are anchors: \
             p = row {a} and q = row {b}. The author wants every code e to lie on the straight segment \
             from p to q, and adds for each row the penalty"
        ),
    );
    o.blank();
    o.line("      |‖p − e‖ + ‖q − e‖ − ‖p − q‖|  =  |d1 + d2 − d0|");
    o.blank();
    o.para(
        "  ",
        "where d1 = ‖e − p‖ is the distance from e to p, d2 = ‖e − q‖ the distance from e to q, and \
         d0 = ‖p − q‖ the length of the segment. Going from p to q by way of e is never shorter than \
         going straight, so the excess r = d1 + d2 − d0 is never negative, and it is 0 exactly when e \
         lies on the segment. A distance is the square root of a sum of squares, d1 = sqrt(s1) with \
         s1 = Σ_k~(e_k − p_k)². Training moves every row a little against the gradient of the penalty \
         (one step of SGD).",
    );
    o.blank();
    o.para(
        "  ",
        &format!(
            "Setup: table {ROWS} × {DIM}, entry (row, col) = rng::normal_f32(seed {SEED}, row, col); \
             one full-table SGD step, lr {}, reduction sum, endpoints detached (the anchors are trained \
             by their own row term, as in the original PyTorch code, `vecs = weight.data`).",
            safe_cfg.lr
        ),
    );
    o.blank();
    for i in 0..ROWS {
        let vals: Vec<String> = row_of(&start, i).iter().map(|&v| format!("{v:>8.4}")).collect();
        o.line(format!("    row {i}  {:<9} [{} ]", role(i, a, b), vals.join("")));
    }
    o.line(format!("    d0 = ‖p − q‖ = {}", fmt4(d0)));
    o.blank();
    o.line("  Two ways to compute the gradient of a distance, d/de ‖e − p‖:");
    o.line(format!("    {:<42}(e − p) · (1/sqrt(s1))", "naive (ε = 0, what autograd does):"));
    o.line(format!(
        "    {:<42}(e − p) / d1,  d1 = sqrt(s1 + ε)",
        format!("safe (ε = {eps:e}, latent-line's default):")
    ));
    o.blank();

    // 2. The per-row table.
    o.line("2. One step, row by row (distances exact, ε = 0; outcomes from the CPU backend's run)");
    o.blank();
    o.line(format!("{:<40} | {:<20}| {}", "", "naive (ε = 0)", format_args!("safe (ε = {eps:e})")));
    o.line(format!(
        "{:>3}  {:<8}  {:>7}  {:>7}  {:>7} | {:<8}  {:<10}| {:<8}  {:<10}  {:>6}",
        "row", "role", "d1", "d2", "r", "gradient", "row after", "gradient", "row after", "moved"
    ));
    o.line(format!(
        "{:>3}  {:<8}  {:>7}  {:>7}  {:>7} | {:<8}  {:<10}| {:<8}  {:<10}  {:>6}",
        "---", "--------", "-------", "-------", "-------", "--------", "---------", "--------", "---------", "------"
    ));
    for (i, g) in geo.iter().enumerate() {
        o.line(format!(
            "{:>3}  {:<8}  {:>7}  {:>7}  {:>7} | {:<8}  {:<10}| {:<8}  {:<10}  {:>6}",
            i,
            role(i, a, b),
            fmt4(g.d1),
            fmt4(g.d2),
            fmt4(g.r),
            grad_state(&naive.rec.scans.grad, i),
            row_state(row_of(&naive.after, i)),
            grad_state(&safe.rec.scans.grad, i),
            row_state(row_of(&safe.after, i)),
            fmt4(dist(row_of(&start, i), row_of(&safe.after, i))),
        ));
    }
    o.blank();
    o.para(
        "  ",
        "d1 = ‖e − p‖, d2 = ‖e − q‖ and r = d1 + d2 − d0 (the excess): the row before the step. \
         gradient: whether the \
         step's fused gradient scan found the row's gradient finite. row after: the row's values after the \
         step. moved: ‖row after − row before‖ in the safe run.",
    );
    o.blank();

    // 3. What the runs found.
    o.line("3. What the CPU backend found (one step each; the naive run under --on-nonfinite ignore)");
    o.blank();
    for (name, run) in [("naive", &naive), ("safe", &safe)] {
        o.line(format!("  {name}:"));
        o.line(format!(
            "    loss      {}; L = Σ|r| = {} before the step, {} after",
            run.rec.scans.loss.describe_of(false),
            fmt4(run.rec.loss(w_red)),
            fmt4(run.eval_after.loss(w_red))
        ));
        o.scan_lines("    gradient  ", &run.rec.scans.grad);
        o.scan_lines("    written   ", &run.rec.scans.table);
        o.line(format!(
            "    audit     {} near-singular row{} (s1 or s2 below (τ·d0)²); guard action {}",
            run.rec.near_singular,
            plural(run.rec.near_singular),
            run.rec.action.name()
        ));
        o.scan_lines("    table     ", &run.after_scan);
        o.blank();
    }
    o.para(
        "  ",
        &format!(
            "The loss itself is {} in the naive run: the forward pass is fine, the distances and the \
             penalty can be computed. It is the backward pass, the gradient, that breaks. The audit's \
             near-singular count ({}) flags the rows where the naive formula divides by a distance of \
             (almost) 0, before any NaN exists.",
            if naive.rec.loss_finite() { "finite" } else { "not finite" },
            naive.rec.near_singular
        ),
    );
    o.blank();

    // 4. Why those rows.
    if naive_bad.is_empty() {
        o.line("4. The naive step left every row finite (unexpected: see SPEC §6)");
        o.blank();
    } else {
        o.line(format!("4. Why {} turn{} NaN", rows_words(naive_bad), if naive_bad.len() == 1 { "s" } else { "" }));
        o.blank();
        let inv = 1.0f32 / (2.0 * 0.0f32.sqrt());
        let zero_inf = 0.0f32 * inv;
        for &r in naive_bad {
            let i = r as usize;
            let g = &geo[i];
            let vals = row_of(&naive.after, i);
            let nan_cols = vals.iter().filter(|&&v| classify(v) == Some(Kind::Nan)).count();
            let cols =
                if nan_cols == DIM { "in every column".to_string() } else { format!("in {nan_cols} of {DIM} columns") };
            let (who, dn, anchor) = if i == a {
                (format!("Row {i} is p itself"), "d1", "p")
            } else if i == b {
                (format!("Row {i} is q itself"), "d2", "q")
            } else if g.s1 == 0.0 {
                (format!("Row {i} sits exactly on p"), "d1", "p")
            } else if g.s2 == 0.0 {
                (format!("Row {i} sits exactly on q"), "d2", "q")
            } else {
                o.para("  ", &format!("Row {i} read a non-finite value ({}).", row_state(vals)));
                o.blank();
                continue;
            };
            let mut text = format!(
                "{who}, so {dn} = ‖{anchor} − {anchor}‖ = 0. The gradient of sqrt at 0 is \
                 1/(2·sqrt(0))~=~{inv}; autograd multiplies it by (x − {anchor}) = 0, and \
                 0~·~{inv}~=~{zero_inf}, {cols} (the run's row {i} after the step: {}). The SGD step \
                 writes x − {}·NaN = NaN into the row, and from the next step every distance to it is NaN.",
                row_state(vals),
                naive_cfg.lr
            );
            if g.r == 0.0 {
                text += &format!(
                    " Note that the row's excess is exactly r = 0 (for row {i}, {dn} = 0 and the other \
                     distance is d0), so |r| contributes the factor sign(0) = 0: it cannot help, 0 · NaN \
                     is still NaN."
                );
            }
            o.para("  ", &text);
            o.blank();
        }
        let first = naive.rec.scans.grad.first;
        if let Some(f) = first {
            o.para(
                "  ",
                &format!(
                    "The scan's first non-finite gradient element is row {}, column {}: {}, bits 0x{:08x} \
                     (latent-line writes this quiet NaN explicitly, SPEC §6, instead of relying on the \
                     hardware's 0 · inf).",
                    f.row,
                    f.col,
                    f.kind(),
                    f.bits
                ),
            );
            o.blank();
        }
        o.para(
            "  ",
            &format!(
                "A second naive step (also run) shows it: it reads p and q from the NaN rows, every d1 and \
                 d2 is NaN, the loss scan finds {} NaN term{} (loss L = {}), and afterwards the table holds:",
                naive2_rec.scans.loss.nan,
                plural(naive2_rec.scans.loss.nan),
                fmt4(naive2_rec.loss(w_red))
            ),
        );
        o.scan_lines("    ", &naive2_scan);
        o.blank();
    }

    // 5. What ε changes.
    o.line("5. What ε changes");
    o.blank();
    o.para(
        "  ",
        &format!(
            "With ε inside the root, d = sqrt(s + ε) ≥ sqrt(ε) = {root_eps:.1e}, so 1/d ≤ {:.1e}, and at \
             the anchor the gradient (x − p)/d = 0/{root_eps:.1e} = 0 instead of NaN. Away from the \
             anchors ε changes a distance d by about ε/(2d): here at most {:.1e} (the shortest other \
             distance is {}), far below f32 precision.",
            1.0 / root_eps,
            eps as f64 / (2.0 * d_min),
            fmt4(d_min)
        ),
    );
    o.blank();
    let safe_words = if safe_clean {
        format!("all {ROWS} rows finite")
    } else {
        format!("non-finite values in {}", rows_words(&safe.after_scan.rows))
    };
    o.para(
        "  ",
        &format!(
            "Safe run: gradient scan {}; written rows {}; guard action {}: {safe_words} after the step. \
             The loss fell from L = {} to {}. The anchors moved by {}~(row~{a}) and {}~(row~{b}).",
            safe.rec.scans.grad.describe(),
            safe.rec.scans.table.describe(),
            safe.rec.action.name(),
            fmt4(safe.rec.loss(w_red)),
            fmt4(safe.eval_after.loss(w_red)),
            fmt4(dist(row_of(&start, a), row_of(&safe.after, a))),
            fmt4(dist(row_of(&start, b), row_of(&safe.after, b))),
        ),
    );
    o.blank();

    // 6. Collapse.
    o.line("6. The second worry: collapse");
    o.blank();
    let r_anchor = Geo::of(&start, a, a, b, eps as f64).r;
    o.para(
        "  ",
        &format!(
            "In detached mode the anchors are rows like the others, so their own row term moves them. \
             With ε the anchor's excess is r = sqrt(ε) = {r_anchor:.1e} > 0, the factor sign(r) is 1, \
             and p's gradient is (p − p)/d1 + (p − q)/d0: a unit vector away from q. The step moves p \
             toward q by lr, and q toward p by lr. In the safe run d0 went from {} (the step's record) to \
             {} (evaluated after the step): {} shorter, 2 · lr = {}.",
            fmt4(safe.rec.d0),
            fmt4(safe.eval_after.d0),
            fmt4(safe.rec.d0 - safe.eval_after.d0),
            fmt4(2.0 * safe_cfg.lr as f64)
        ),
    );
    o.blank();
    let d0_start = long.first().map_or(f64::NAN, |r| r.d0);
    let d0_min = long.iter().map(|r| r.d0).chain([long_end.d0]).fold(f64::INFINITY, f64::min);
    let warn_at = long.iter().chain([&long_end]).position(|r| r.d0 < COLLAPSE_FRACTION * d0_start);
    let warned = match warn_at {
        Some(k) => format!(
            "it fell below {} · d0(start) = {} after {k} steps, where the audit (SPEC §8) warns of collapse",
            COLLAPSE_FRACTION,
            fmt4(COLLAPSE_FRACTION * d0_start)
        ),
        None => format!(
            "it stayed above {} · d0(start) = {}, the audit's (SPEC §8) collapse threshold",
            COLLAPSE_FRACTION,
            fmt4(COLLAPSE_FRACTION * d0_start)
        ),
    };
    o.para(
        "  ",
        &format!(
            "Over {LONG_STEPS} safe detached steps (run) d0 went from {} to {} (smallest {}): {warned}. \
             This is the collapse the original author feared: the loss is also small when p, q and every \
             code sit at one point. With frozen endpoints (latent-line's default) the same {LONG_STEPS} \
             steps keep d0 = {} → {}, and the mean excess goes from {} to {}. Use --endpoints frozen \
             (or --margin M, a term that pushes the anchors apart while d0 < M) to keep the segment.",
            fmt4(d0_start),
            fmt4(long_end.d0),
            fmt4(d0_min),
            fmt4(frozen.first().map_or(f64::NAN, |r| r.d0)),
            fmt4(frozen_end.d0),
            fmt4(frozen.first().map_or(f64::NAN, Record::mean_excess)),
            fmt4(frozen_end.mean_excess()),
        ),
    );
    o.blank();

    // 7. The guard.
    o.line("7. The guard");
    o.blank();
    let unchanged = guarded.after.iter().zip(&start).all(|(x, y)| x.to_bits() == y.to_bits());
    o.para(
        "  ",
        &format!(
            "With the default --on-nonfinite skip-step, latent-line refuses to write such a step. The same \
             naive step run under the default guard: action {}; the table is {}. The step's scan of \
             the rows it would have written still reports what it refused:",
            guarded.rec.action.name(),
            if unchanged { "unchanged, bit for bit" } else { "CHANGED (unexpected)" }
        ),
    );
    o.scan_lines("    ", &guarded.rec.scans.table);
    o.blank();

    // Conclusion.
    o.line("Conclusion");
    o.blank();
    let naive_words = if naive_bad.is_empty() {
        "left every row finite".to_string()
    } else {
        let roles: Vec<&str> = naive_bad.iter().map(|&r| role(r as usize, a, b)).collect();
        format!("turned {} ({}) into NaN", rows_words(naive_bad), roles.join(", "))
    };
    o.para(
        "  ",
        &format!(
            "One naive step (ε = 0) {naive_words}; with ε = {eps:e} inside the root the same step left \
             {safe_words}. In detached mode the anchors still drift together (collapse): keep them \
             frozen. The default guard would have skipped the naive step{}.",
            if guarded.rec.action == Action::SkippedStep { "" } else { " (here it did not: see 7)" }
        ),
    );
    Ok(o.text)
}

/// One step of a fresh CPU trainer over `table`.
struct StepRun {
    rec: Record,
    after: Vec<f32>,
    after_scan: Scan,
    /// A forward evaluation of the table after the step.
    eval_after: Record,
}

fn one_step(shape: Shape, cfg: StepConfig, table: &[f32]) -> Result<(CpuTrainer, StepRun)> {
    let mut tr = CpuTrainer::new(shape, cfg, TableSource::Data(table.to_vec()))?;
    let rec = first(tr.steps(1)?)?;
    let after = tr.read_table()?;
    let after_scan = tr.scan_table()?;
    let eval_after = tr.evaluate()?;
    Ok((tr, StepRun { rec, after, after_scan, eval_after }))
}

fn first(recs: Vec<Record>) -> Result<Record> {
    recs.into_iter().next().ok_or_else(|| Error::invalid("diagnose", "the trainer returned no record for a step"))
}

/// A row's distances to the anchors, in f64, with `pin_anchors` of
/// `shaders/common.wgsl` (row a is p and row b is q, so their other
/// distance is d0 exactly).
struct Geo {
    s1: f64,
    s2: f64,
    d1: f64,
    d2: f64,
    r: f64,
}

impl Geo {
    fn of(table: &[f32], i: usize, a: usize, b: usize, eps: f64) -> Geo {
        let sq = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>();
        let (x, p, q) = (row_of(table, i), row_of(table, a), row_of(table, b));
        let s0 = sq(p, q);
        let s1 = if i == b { s0 } else { sq(x, p) };
        let s2 = if i == a { s0 } else { sq(x, q) };
        let (d1, d2, d0) = ((s1 + eps).sqrt(), (s2 + eps).sqrt(), (s0 + eps).sqrt());
        Geo { s1, s2, d1, d2, r: d1 + d2 - d0 }
    }
}

fn row_of(table: &[f32], i: usize) -> &[f32] {
    &table[i * DIM..][..DIM]
}

fn dist(u: &[f32], v: &[f32]) -> f64 {
    u.iter().zip(v).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

fn role(i: usize, a: usize, b: usize) -> &'static str {
    if i == a {
        "anchor p"
    } else if i == b {
        "anchor q"
    } else {
        "code"
    }
}

/// `finite`, `NaN`, `+Inf`, `-Inf`, or `non-finite` for a mix.
fn row_state(vals: &[f32]) -> &'static str {
    let kinds: Vec<Kind> = vals.iter().filter_map(|&v| classify(v)).collect();
    match kinds.first() {
        None => "finite",
        Some(&k) if kinds.iter().any(|&o| o != k) => "non-finite",
        Some(Kind::Nan) => "NaN",
        Some(Kind::PosInf) => "+Inf",
        Some(Kind::NegInf) => "-Inf",
    }
}

/// Row `i`'s gradient as the step's gradient scan saw it.
fn grad_state(scan: &Scan, i: usize) -> &'static str {
    if !scan.rows.contains(&(i as u64)) {
        if scan.bad_rows > scan.rows.len() as u64 {
            "?"
        } else {
            "finite"
        }
    } else if scan.nan == scan.nonfinite() {
        "NaN"
    } else {
        "non-fin."
    }
}

/// `row 3`, `rows 0 and 5`, `rows 1, 2 and 4`.
fn rows_words(rows: &[u64]) -> String {
    let s: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    match s.split_last() {
        None => "no rows".into(),
        Some((last, [])) => format!("row {last}"),
        Some((last, rest)) => format!("rows {} and {last}", rest.join(", ")),
    }
}

/// "s" after a count other than one.
pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Four decimals (scientific below 1e-3, 0 aside), or the word for a
/// non-finite value.
fn fmt4(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.1e}")
    } else if x.is_finite() {
        format!("{x:.4}")
    } else {
        format!("{x}")
    }
}

/// The report being written.
#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str(s.as_ref().trim_end());
        self.text.push('\n');
    }
    fn blank(&mut self) {
        self.text.push('\n');
    }
    /// `text` wrapped at [`WIDTH`], each line starting with `indent`; words
    /// joined by [`GLUE`], or by a binary operator (`a = b`), stay on one line.
    fn para(&mut self, indent: &str, text: &str) {
        let mut line = String::from(indent);
        let mut empty = true;
        let mut glued = text.to_string();
        for op in [" = ", " − ", " + ", " · ", " ≥ ", " ≤ ", " → ", " > ", " × "] {
            glued = glued.replace(op, &op.replace(' ', &GLUE.to_string()));
        }
        for word in glued.split_whitespace() {
            let word = word.replace(GLUE, " ");
            let len = line.chars().count() + usize::from(!empty) + word.chars().count();
            if !empty && len > WIDTH {
                self.line(&line);
                line = indent.to_string();
                empty = true;
            }
            if !empty {
                line.push(' ');
            }
            line.push_str(&word);
            empty = false;
        }
        if !empty {
            self.line(&line);
        }
    }
    /// A scan's description, one finding a line, after `label`.
    fn scan_lines(&mut self, label: &str, scan: &Scan) {
        let pad = " ".repeat(label.chars().count() + 2);
        for (k, part) in scan.describe().split("; ").enumerate() {
            if k == 0 {
                self.line(format!("{label}{part}"));
            } else {
                self.line(format!("{pad}{part}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnose_report_explains_the_case_from_the_runs() -> Result<()> {
        let text = report()?;
        println!("{text}");

        // What the CPU backend finds for the naive step, independently.
        let shape = Shape::new(ROWS, DIM)?;
        let (_, naive) = one_step(shape, config(true, Policy::Ignore), &table())?;
        assert_eq!(naive.after_scan.rows, vec![0, 5], "SPEC §6: rows a and b, and only they");
        assert_eq!(naive.after_scan.nan, 2 * DIM as u64);
        assert!(text.contains("4. Why rows 0 and 5 turn NaN"), "names the NaN rows found");
        assert!(text.contains("turned rows 0 and 5 (anchor p, anchor q) into NaN"));
        assert!(text.contains("0 · inf = NaN"));
        assert!(text.contains("Row 0 is p itself, so d1 = ‖p − p‖ = 0"));
        assert!(text.contains("Row 5 is q itself, so d2 = ‖q − q‖ = 0"));

        // The safe step: all finite, from the run.
        let (_, safe) = one_step(shape, config(false, Policy::SkipStep), &table())?;
        assert!(safe.rec.scans.is_clean() && safe.after_scan.is_clean());
        assert!(text.contains(&format!("left all {ROWS} rows finite")));

        // Collapse and guard.
        assert!(text.contains("collapse"));
        assert!(safe.eval_after.d0 < safe.rec.d0, "detached anchors drift together");
        assert!(text.contains("action skipped-step"));
        assert!(text.contains("unchanged, bit for bit"));

        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "line too long ({}): {line}", line.chars().count());
        }
        assert_eq!(text, report()?, "deterministic");
        Ok(())
    }

    #[test]
    fn diagnose_rows_words() {
        assert_eq!(rows_words(&[]), "no rows");
        assert_eq!(rows_words(&[3]), "row 3");
        assert_eq!(rows_words(&[0, 5]), "rows 0 and 5");
        assert_eq!(rows_words(&[1, 2, 4]), "rows 1, 2 and 4");
    }
}
