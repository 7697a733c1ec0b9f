//! `latent-line scan FILE`: SPEC §7 over a saved table, on the host or a
//! GPU adapter, as text or JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use latent_line::gpu::GpuContext;
use latent_line::scan::scan_rows;
use latent_line::tables;

use super::checks::{adapter_arg, check_adapter, check_output, claim_outputs, same_file, tensor_arg};
use crate::{print_json, BackendChoice, Outcome, QUIET};

/// `scan`'s plot is being written: a signal then no longer ends it.
static WRITING: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

#[derive(Args, Clone, Debug)]
pub(crate) struct ScanArgs {
    /// The table (.npy, or tensor --tensor of a .safetensors file).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The tensor of a .safetensors file to scan [default: weight].
    #[arg(long, value_parser = tensor_arg)]
    tensor: Option<String>,
    /// Draw where in the table the non-finite rows sit (SVG).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Where to scan: auto, cpu or gpu. auto and cpu scan in host memory
    /// (the file is read there); gpu, and auto with an adapter named
    /// (--adapter or WGPU_ADAPTER_NAME), on a GPU adapter (software ones
    /// included), as training does.
    // (Not training's value list: its `auto` takes a hardware GPU.)
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, hide_possible_values = true)]
    backend: BackendChoice,
    /// GPU adapter whose name contains this (else WGPU_ADAPTER_NAME); a
    /// name that matches none is an error (as is one with --backend cpu).
    #[arg(long, value_parser = adapter_arg)]
    adapter: Option<String>,
    /// Print the scan as JSON on standard output instead of the text.
    #[arg(long)]
    json: bool,
}

/// `latent-line scan --json`: what the text says, as fields.
#[derive(serde::Serialize)]
struct ScanJson<'a> {
    /// (As text: a name that is not UTF-8 is written lossily.)
    file: String,
    /// The tensor scanned (a `.safetensors` file's; `null` for `.npy`).
    tensor: Option<&'a str>,
    /// What the file holds (`f32`, `f64`, `F16`, …), scanned as f32.
    dtype: &'a str,
    rows: usize,
    dim: usize,
    /// A conversion's note (finite f64 values beyond f32's range, counted).
    note: Option<&'a str>,
    /// `cpu` or `gpu`, and where: threads or the adapter.
    backend: &'a str,
    on: &'a str,
    read_seconds: f64,
    /// The scan's wall clock (on a GPU, the upload included).
    scan_seconds: f64,
    /// NaN and ±Inf counts, the non-finite rows (`bad_rows`, the lowest
    /// `rows`, up to 64) and the lowest non-finite element (`first`, its
    /// bits those of the f32 value scanned).
    scan: &'a latent_line::Scan,
    /// `first`'s bits as the file holds them (hex, with their width: an
    /// f64 or F16 NaN's own payload), where the file can be read again.
    first_file_bits: Option<String>,
    all_finite: bool,
}

/// The CPU scan's block of whole rows, read from the file and scanned in
/// turn: what the scan holds in host memory, whatever the table's size.
const SCAN_BLOCK_BYTES: usize = 16 << 20;

/// `latent-line scan FILE`: SPEC §7 over a saved table.
pub(crate) fn scan(args: &ScanArgs) -> anyhow::Result<Outcome> {
    QUIET.store(args.json, std::sync::atomic::Ordering::Relaxed);
    check_adapter(args.backend, &args.adapter)?;
    // --tensor names a tensor of a .safetensors file (as for training: a
    // typo of the file's kind is not passed over).
    let safetensors = tables::is_safetensors(&args.file);
    if args.tensor.is_some() && !safetensors {
        bail!("invalid --tensor: it names a tensor of a .safetensors file, and {} is not one", args.file.display());
    }
    let tensor = args.tensor.as_deref().unwrap_or(latent_line::tables::DEFAULT_TENSOR);
    if let Some(p) = &args.plot {
        if p.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!("invalid --plot: {} must end in .svg", p.display());
        }
        check_output("--plot", p)?;
        // (A link named like a plot to the table scanned would replace it.)
        if same_file(p, &args.file) {
            bail!("invalid --plot: {} is also the scanned file; give it a path of its own", p.display());
        }
    }
    // The plot claimed for the scan's length, as a run claims its outputs
    // (two scans drawing one file: the last would win unseen).
    let _claims = match &args.plot {
        Some(p) => claim_outputs(&[("--plot", p.clone(), "")])?,
        None => Vec::new(),
    };
    // The values pass through host memory anyway (read from the file a
    // block at a time): `auto` scans them there, at memory speed; uploading
    // them to a GPU would cost more than the scan (measured, BENCHMARKS.md). `--backend gpu`, or an adapter named (`--adapter`,
    // `WGPU_ADAPTER_NAME`: as `train` takes one under `auto`), runs
    // scan_table.wgsl instead. (Opened first: a missing adapter is an error
    // before anything is printed.)
    let gpu = match args.backend {
        BackendChoice::Gpu => Some(GpuContext::new(args.adapter.as_deref())?),
        BackendChoice::Auto if args.adapter.is_some() || latent_line::gpu::context::env_adapter_name()?.is_some() => {
            Some(GpuContext::new(args.adapter.as_deref())?)
        }
        BackendChoice::Cpu | BackendChoice::Auto => None,
    };
    if gpu.is_some() {
        latent_line::gpu::transfer_block(None)?; // checked before any output
    }
    // Ctrl-C (SIGTERM, SIGHUP): a scan has nothing to save, so it ends at
    // once, exit 130, writing nothing (also while it waits on a pipe,
    // where a flag would be seen only once data came), unless its plot is
    // being written: that write finishes (no temporary file left behind),
    // and the scan with it. The gate orders the two: the handler exits
    // holding it, before the plot starts, or finds the plot started.
    // (A signal a second or more after the first ends a plot's write
    // too, as it ends a run's save: a plot into a pipe no one reads.)
    crate::on_signals(|| {
        let which = crate::which_signal();
        let writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        if !*writing {
            crate::end_now("scan     interrupted: nothing written");
        }
        match which {
            crate::Signal::First => {
                crate::tell(
                    "scan     interrupted: the plot being written is finished first (another signal, a second from \
                     now, ends it at once, unwritten)"
                        .into(),
                );
            }
            crate::Signal::Again => crate::end_now("scan     interrupted again: the plot left unwritten"),
            crate::Signal::Echo => {}
        }
    });
    let t = Instant::now();
    // What the file holds: a float64 value beyond float32's range is
    // finite there (loading it to train makes it ±Inf, the note says).
    // Its values stream from the file, scanned a block at a time (no host
    // copy of the whole table).
    let o = tables::open_for_scan(&args.file, tensor)?;
    let (mut reader, file_dtype) = (o.reader, o.file_dtype);
    let shape = reader.shape;
    out!(
        "file     {} · {} × {} {} ({:.1} MB as f32)",
        args.file.display(),
        shape.rows,
        shape.dim,
        file_dtype,
        shape.bytes() as f64 / 1e6
    );
    // --plot's rows with NaN or ±Inf, counted as the values pass.
    let mut spans = args.plot.as_ref().map(|_| latent_line::plot::BadRowSpans::new(shape.rows, shape.dim, 200));
    // Time in the file's opening and reads, apart from the scan's (and the
    // plot's counts, in neither).
    let (mut read_s, mut plot_s) = (t.elapsed().as_secs_f64(), 0.0);
    let mut read = |out: &mut [f32]| -> latent_line::Result<()> {
        let t = Instant::now();
        reader.read(out)?;
        read_s += t.elapsed().as_secs_f64();
        if let Some(s) = spans.as_mut() {
            let t = Instant::now();
            s.add(out);
            plot_s += t.elapsed().as_secs_f64();
        }
        Ok(())
    };
    let (found, on) = match gpu {
        Some(ctx) => {
            let on = format!("gpu · {}", ctx.info.name);
            (latent_line::gpu::scan_from(Arc::new(ctx), shape, &mut read, None)?, on)
        }
        None => {
            // Whole rows a block (about 16 MB), scanned in row order.
            let rows = (SCAN_BLOCK_BYTES / (shape.dim * 4)).clamp(1, shape.rows);
            let mut block = vec![0f32; rows * shape.dim];
            let mut found = latent_line::Scan::default();
            for base in (0..shape.rows).step_by(rows) {
                let part = &mut block[..(shape.rows - base).min(rows) * shape.dim];
                read(part)?;
                found = found.merge(scan_rows(part, shape.dim, base as u64));
            }
            (found, format!("cpu · {} threads", rayon::current_num_threads()))
        }
    };
    let scan_s = (t.elapsed().as_secs_f64() - read_s - plot_s).max(0.0);
    let note = reader.note();
    if let Some(n) = &note {
        out!("         {n}");
    }
    out!(
        "scanned  on {on} · read {:.3} s · scan {:.3} s ({} GB/s{})",
        read_s,
        scan_s,
        // (A small file's rate, under 1 GB/s, in three decimals or as an
        // exponent: never 0.0.)
        match shape.bytes() as f64 / scan_s.max(1e-9) / 1e9 {
            r if r >= 1.0 => format!("{r:.1}"),
            r if r >= 1e-3 => format!("{r:.3}"),
            r => format!("{r:.1e}"),
        },
        if on.starts_with("gpu") { ", upload included" } else { "" }
    );
    if let (Some(p), Some(spans)) = (&args.plot, spans) {
        let title = format!(
            "{}: {} row{} with NaN or ±Inf of {} ({} NaN, {} +Inf, {} −Inf)",
            args.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            found.bad_rows,
            if found.bad_rows == 1 { "" } else { "s" },
            shape.rows,
            found.nan,
            found.pos_inf,
            found.neg_inf
        );
        *WRITING.lock().unwrap_or_else(|e| e.into_inner()) = true;
        latent_line::plot::draw_bad_rows(p, shape.rows, &spans.counts, &title)?;
        out!("plot     {}", p.display());
    }
    // The first bad element's bits as the file holds them (an f64 NaN's
    // payload, an F16 Inf's), not those of the f32 value it was scanned as:
    // (hex, what they are of), `None` where not to be read again.
    let file_bits = found.first.and_then(|f| {
        let index = f.row * shape.dim as u64 + f.col;
        // A pipe is not opened again (a named one would wait for a writer).
        let regular = std::fs::metadata(&args.file).is_ok_and(|m| m.is_file());
        let raw = if regular { tables::element_bits(&args.file, tensor, index) } else { Ok(None) };
        match raw {
            Ok(Some((b, width))) => Some(format!("0x{b:0w$x}", w = 2 * width)),
            Ok(None) if matches!(file_dtype.as_str(), "f32" | "F32") => Some(format!("0x{:08x}", f.bits)),
            _ => None,
        }
    });
    if args.json {
        let (backend, where_) = on.split_once(" · ").unwrap_or((&on, ""));
        let out = ScanJson {
            file: args.file.to_string_lossy().into_owned(),
            tensor: safetensors.then_some(tensor),
            dtype: &file_dtype,
            rows: shape.rows,
            dim: shape.dim,
            note: note.as_deref(),
            backend,
            on: where_,
            read_seconds: read_s,
            scan_seconds: scan_s,
            scan: &found,
            first_file_bits: file_bits,
            all_finite: found.is_clean(),
        };
        print_json(&out);
        return Ok(if found.is_clean() { Outcome::Done } else { Outcome::NonFinite });
    }
    if found.is_clean() {
        out!("finite   every value is finite");
        return Ok(Outcome::Done);
    }
    let plural = if found.bad_rows == 1 { "" } else { "s" };
    out!(
        "found    {} NaN · {} +Inf · {} -Inf · in {} row{plural}",
        found.nan,
        found.pos_inf,
        found.neg_inf,
        found.bad_rows
    );
    if let Some(f) = found.first {
        let bits = match (&file_bits, file_dtype.as_str()) {
            (Some(b), "f32" | "F32") => b.clone(),
            (Some(b), dtype) => format!("{b} ({dtype})"),
            // Not to be read again: the f32 value's bits, said so.
            (None, _) => format!("0x{:08x} (as f32)", f.bits),
        };
        out!("first    row {} column {} · {} · bits {bits}", f.row, f.col, f.kind());
    }
    let rows: Vec<String> = found.rows.iter().map(|r| r.to_string()).collect();
    out!(
        "rows     {}{}",
        rows.join(" "),
        if found.bad_rows > found.rows.len() as u64 {
            format!(" … ({} rows in all)", found.bad_rows)
        } else {
            String::new()
        }
    );
    Ok(Outcome::NonFinite)
}
