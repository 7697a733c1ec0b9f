//! Table files (SPEC §12), by extension: `.npy` ([`crate::npy`]) or
//! `.safetensors` (the `safetensors` crate). A safetensors table is one
//! named 2-D tensor (default `weight`): F32 as it is, F64, F16 and BF16 converted
//! with a note. The file's other tensors and its metadata are carried over
//! unchanged when the output is `.safetensors` too, so a checkpoint goes
//! out as it came in, with the table trained. Saves are atomic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensorError};

use crate::config::Shape;
use crate::error::{Error, Result};
use crate::npy;
use crate::trainer::{Fill, RunState};

pub mod reader;
pub use reader::TableReader;

/// Where a `.safetensors` checkpoint keeps its [`RunState`] (metadata key).
const STATE_KEY: &str = "latent_line.run_state";
/// … or, where the run state is too large for the header (skip-row's
/// strike counts of millions of rows: the crate refuses a header past 100
/// MB), this key, and the state in `FILE.state.json` beside it as for an
/// `.npy` (`state_sidecar`).
const STATE_BESIDE_KEY: &str = "latent_line.run_state_beside";
/// The largest run state kept in a `.safetensors` header.
const STATE_IN_HEADER_MAX: usize = 16 << 20;

/// Whether the `.safetensors` checkpoint `path` keeps its run state beside
/// it (`STATE_BESIDE_KEY`), read from its header alone.
pub fn state_is_beside(path: &Path) -> Result<bool> {
    let (_, _, meta) = open_header(path)?;
    Ok(meta.metadata().as_ref().is_some_and(|m| m.contains_key(STATE_BESIDE_KEY)))
}

/// A run state written beside the checkpoint `path` (`state_sidecar`),
/// staged to be committed with the checkpoint's other files.
fn stage_state(path: &Path, text: &str) -> Result<npy::Staged> {
    npy::stage(&state_sidecar(path), |w| std::io::Write::write_all(w, text.as_bytes()))
}

/// The [`RunState`] file beside an `.npy` checkpoint.
pub fn state_sidecar(path: &Path) -> std::path::PathBuf {
    beside(path, ".state.json")
}

/// `path` + `suffix`, where `path` is the checkpoint's own file: a
/// symbolic link followed (as a save follows it, `npy::destination`), so a
/// checkpoint saved or resumed through a link keeps its parts beside the
/// table they belong to, not beside the link.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut s = npy::destination(path).unwrap_or_else(|p| p).into_os_string();
    s.push(suffix);
    s.into()
}

/// Optimiser state saved beside a checkpoint (either format), kept out of
/// the user's file as PyTorch keeps it out of the model's: `FILE.velocity.npy`
/// (momentum) and `FILE.snapshot.npy` (the table a rollback would restore).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sidecar {
    Velocity,
    Snapshot,
}

impl Sidecar {
    /// `velocity` or `snapshot`, as its file is named.
    pub fn name(self) -> &'static str {
        match self {
            Sidecar::Velocity => "velocity",
            Sidecar::Snapshot => "snapshot",
        }
    }

    /// Where it lies beside the checkpoint `path`.
    pub fn path(self, path: &Path) -> std::path::PathBuf {
        beside(path, &format!(".{}.npy", self.name()))
    }

    /// Writes it for beside the checkpoint `path`, to be committed with
    /// the checkpoint's other files (`npy::commit`).
    /// The values come from `fill` a block at a time; returns their
    /// fingerprint too.
    pub fn stage(self, path: &Path, shape: Shape, fill: &mut Fill) -> Result<(npy::Staged, u64)> {
        npy::stage_table_from(&self.path(path), shape, fill)
    }

    /// Opens it from beside `path`, checked against the table's shape and
    /// against the fingerprint the run state recorded for it (`None`: a
    /// state saved before fingerprints) by a pass over its values; with the
    /// leftover file it was taken from instead, when a killed save left the
    /// one beside `path` from another checkpoint (see [`recover`]). The
    /// values then stream from the reader.
    /// `checked` false: no pass of its own; its fingerprint is kept as it
    /// streams into the trainer, for the caller to check after
    /// ([`TableReader::fingerprint_as_read`]), and to open it again with
    /// `checked` where that one differs.
    pub fn load(
        self,
        path: &Path,
        shape: Shape,
        want: Option<u64>,
        checked: bool,
    ) -> Result<(TableReader, Option<PathBuf>)> {
        let side = self.path(path);
        let mut v = npy::open_table(&side, npy::Overflow::Inf, 2).map_err(|e| match e {
            Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => Error::bad_file(
                &side,
                format!(
                    "not found: {}'s run state says its {} was saved here, beside it; a checkpoint resumes with all \
                     of its files",
                    path.display(),
                    self.name()
                ),
            ),
            e => e,
        })?;
        if v.shape != shape {
            return Err(Error::bad_file(
                &side,
                format!(
                    "a {} of {} × {} for a table of {} × {}",
                    self.name(),
                    v.shape.rows,
                    v.shape.dim,
                    shape.rows,
                    shape.dim
                ),
            ));
        }
        if let Some(h) = want {
            if v.fingerprint_first(checked)?.is_some_and(|have| have != h) {
                // A checkpoint killed between its renames: the file it was
                // saved with is among the leftovers.
                if let Some((from, reader)) = recover(path, shape, h) {
                    return Ok((reader, Some(from)));
                }
                return Err(Error::bad_file(
                    &side,
                    format!(
                        "this {} is not the one {}'s run state was saved with (a save interrupted between the two?), \
                         nor is any file a killed save left beside it; resume from another checkpoint, or start \
                         again with --load",
                        self.name(),
                        path.display()
                    ),
                ));
            }
        }
        Ok((v, None))
    }
}

/// A checkpoint's files are each replaced atomically, the set one file
/// after another (`npy::commit`): a kill between two renames leaves some
/// files new and some old, and beside them the new ones not yet renamed
/// (`.latent-line-*.tmp`) and the old ones already replaced (kept under
/// `.latent-line-old-*` links). The first of those leftovers in the
/// folder of `path` that is an `.npy` table of `shape` with the
/// fingerprint `want` that the run state recorded (each read through once,
/// in blocks), with its path: what a resume takes instead of the file that
/// does not belong, opened for its values to stream.
pub fn recover(path: &Path, shape: Shape, want: u64) -> Option<(PathBuf, TableReader)> {
    let found = leftovers(path)?;
    let open = |p: &Path| {
        let mut r = npy::open_table(p, npy::Overflow::Inf, 2).ok().filter(|r| r.shape == shape)?;
        (r.fingerprint_whole().ok()? == want).then_some(r)
    };
    found.into_iter().find_map(|p| open(&p).map(|r| (p, r)))
}

/// A killed save's leftovers in the folder of the checkpoint `path` (its
/// links followed), in name order: the new files not yet renamed
/// (`.latent-line-*.tmp`) and the old ones replaced (`.latent-line-old-*`).
/// (Also another run's save in flight there: they are named alike.)
pub fn leftovers(path: &Path) -> Option<Vec<PathBuf>> {
    let path = npy::destination(path).unwrap_or_else(|p| p);
    let mut found: Vec<PathBuf> = std::fs::read_dir(npy::folder(&path))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // (Not a run's lock file: `claim.rs`.)
            name.starts_with(".latent-line-old-")
                || (name.starts_with(".latent-line-")
                    && name.ends_with(".tmp")
                    && !name.starts_with(".latent-line-lock-"))
        })
        .collect();
    found.sort();
    Some(found)
}

/// The run state among a killed save's leftovers beside `path` (as
/// [`recover`] looks for a table) that was saved with the table of
/// fingerprint `table`, with its path: for a `.safetensors` checkpoint
/// whose run state lies beside it, the renames of the state and then the
/// table cut between, the state in place is the new one and the table the
/// old one, whose state is a leftover.
pub fn recover_state(path: &Path, table: u64) -> Option<(PathBuf, RunState)> {
    let found = leftovers(path)?;
    let read = |p: &Path| -> Option<RunState> {
        // (A run state is JSON: a table's leftover is not read whole.)
        let mut head = [0u8; 1];
        std::io::Read::read_exact(&mut std::fs::File::open(p).ok()?, &mut head).ok()?;
        (head[0] == b'{').then(|| serde_json::from_slice(&std::fs::read(p).ok()?).ok()).flatten()
    };
    found.into_iter().find_map(|p| read(&p).filter(|s| s.table_fingerprint == Some(table)).map(|s| (p, s)))
}

/// A 64-bit fingerprint of values (their bits, in order). A checkpoint is
/// several files written one after another (the table, its run state, the
/// optimiser's sidecars), each atomically; the run state records the
/// others' fingerprints, so that a resume can tell a checkpoint whose parts
/// come from two saves (one interrupted) and refuse it rather than go on
/// from a mixture. Not cryptographic: it guards against accidents.
pub fn fingerprint(v: &[f32]) -> u64 {
    let mut f = Fingerprinter::new(v.len() as u64);
    f.update(v);
    f.finish()
}

/// [`fingerprint`] of `len` values handed over a block at a time (a save
/// streams its table), the same number for any split: FNV-1a over each
/// 65 536 values (rayon over whole ones), the chunks' hashes folded in
/// order from `len`.
#[derive(Clone)]
pub struct Fingerprinter {
    h: u64,
    /// The hash of the chunk under way, and its values so far.
    part: u64,
    in_part: usize,
}

const FP_CHUNK: usize = 1 << 16;
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: u64, v: &[f32]) -> u64 {
    v.iter().fold(h, |h, x| (h ^ x.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

impl Fingerprinter {
    pub fn new(len: u64) -> Fingerprinter {
        Fingerprinter { h: len, part: FNV_START, in_part: 0 }
    }

    pub fn update(&mut self, mut v: &[f32]) {
        use rayon::prelude::*;
        if self.in_part > 0 {
            let take = (FP_CHUNK - self.in_part).min(v.len());
            self.part = fnv(self.part, &v[..take]);
            self.in_part += take;
            v = &v[take..];
            if self.in_part < FP_CHUNK {
                return;
            }
            self.fold(self.part);
            (self.part, self.in_part) = (FNV_START, 0);
        }
        let whole = v.len() / FP_CHUNK * FP_CHUNK;
        let parts: Vec<u64> = v[..whole].par_chunks(FP_CHUNK).map(|c| fnv(FNV_START, c)).collect();
        parts.into_iter().for_each(|p| self.fold(p));
        if whole < v.len() {
            (self.part, self.in_part) = (fnv(FNV_START, &v[whole..]), v.len() - whole);
        }
    }

    pub fn finish(mut self) -> u64 {
        if self.in_part > 0 {
            self.fold(self.part);
        }
        self.h
    }

    fn fold(&mut self, part: u64) {
        self.h = (self.h.rotate_left(23) ^ part).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The run state saved with the table at `path` (`None`: none saved).
pub fn load_state(path: &Path, carried: Option<&Carried>) -> Result<Option<RunState>> {
    let parse = |text: &str, from: &Path| {
        serde_json::from_str::<RunState>(text)
            .map(Some)
            .map_err(|e| Error::bad_file(from, format!("unreadable run state: {e}")))
    };
    let beside = || {
        let side = state_sidecar(path);
        match std::fs::read_to_string(&side) {
            Ok(text) => parse(&text, &side),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&side, e)),
        }
    };
    match (format_of(path)?, carried) {
        (Format::Safetensors, Some(c)) => {
            let meta = c.metadata.as_ref();
            match (meta.and_then(|m| m.get(STATE_KEY)), meta.is_some_and(|m| m.contains_key(STATE_BESIDE_KEY))) {
                (Some(text), _) => parse(text, path),
                // (Too large for the header: beside it, and required.)
                (None, true) => beside()?.map(Some).ok_or_else(|| {
                    Error::bad_file(
                        &state_sidecar(path),
                        format!("not found: {}'s header says its run state was saved here", path.display()),
                    )
                }),
                (None, false) => Ok(None),
            }
        }
        _ => beside(),
    }
}

/// The tensor a safetensors table is, unless `--tensor` says otherwise.
pub const DEFAULT_TENSOR: &str = "weight";

/// Whether `name` can name a table's tensor: not empty, and not the
/// header's metadata key (a file saved with a tensor of that name has the
/// key twice, and nothing reads it back).
pub fn check_tensor_name(name: &str) -> std::result::Result<(), String> {
    match name {
        "" => Err("an empty tensor name".into()),
        "__metadata__" => Err("\"__metadata__\" is the .safetensors header's metadata, not a tensor".into()),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Npy,
    Safetensors,
}

/// The format of `path`, from its extension.
pub fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("npy") => Ok(Format::Npy),
        Some("safetensors") => Ok(Format::Safetensors),
        _ => Err(Error::bad_file(path, "unknown table format: the name must end in .npy or .safetensors")),
    }
}

/// Whether `path` names a `.safetensors` file (by its extension).
pub fn is_safetensors(path: &Path) -> bool {
    matches!(format_of(path), Ok(Format::Safetensors))
}

/// The rest of a loaded `.safetensors` file, carried over to a
/// `.safetensors` save: its metadata and its other tensors (their bytes as
/// the file holds them). Neither the table's bytes (the table is in
/// [`LoadedTable::data`]) nor the others' are held: the input stays open,
/// and a save copies the others from it a block at a time, so a
/// checkpoint of tens of GB is never held in host memory. (The open file
/// is the file loaded, even once a save has replaced it at its path; each
/// tensor's hash, taken at the load, is checked as it is copied, so a file
/// changed in place since is refused, not carried. A pipe's bytes are in
/// an unnamed temporary file.)
pub struct Carried {
    metadata: Option<HashMap<String, String>>,
    others: Vec<CarriedTensor>,
    /// The input, open, and its path (for errors).
    file: std::fs::File,
    from: PathBuf,
}

/// A tensor carried over: where its bytes lie in the open input (from
/// its start), how many, and their hash.
struct CarriedTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    at: u64,
    len: u64,
    hash: u64,
}

impl Carried {
    /// After a save of the table to `saved` (a `.safetensors` checkpoint,
    /// which holds these same tensors), carries them from there: the file
    /// loaded is let go, so that a checkpoint that replaced it at its path
    /// (`--save` onto the `--resume` file) frees its disk space at once,
    /// not at the run's end. Where `saved`
    /// is not a regular file, or its tensors are not these (hashes), the
    /// loaded file stays the source. Returns whether it switched.
    pub fn follow(&mut self, saved: &Path) -> bool {
        let Ok(dest) = npy::destination(saved) else { return false };
        let Ok((file, data_at, meta)) = open_header(&dest) else { return false };
        let mut moved = Vec::new();
        for t in &self.others {
            let Some(i) = meta.info(&t.name) else { return false };
            let (at, len) = place(data_at, i);
            let same = i.dtype == t.dtype && i.shape == t.shape && len == t.len;
            let hash = read_range(
                &file,
                &dest,
                at,
                len,
                &|| Error::bad_file(&dest, "shorter than its header says"),
                &mut |_| Ok(()),
            );
            if !same || hash.ok() != Some(t.hash) {
                return false;
            }
            moved.push(at);
        }
        for (t, at) in self.others.iter_mut().zip(moved) {
            t.at = at;
        }
        (self.file, self.from) = (file, dest);
        true
    }
}

/// Where tensor `i`'s bytes lie in its file (whose data starts at
/// `data_at`), and how many.
fn place(data_at: u64, i: &safetensors::tensor::TensorInfo) -> (u64, u64) {
    (data_at + i.data_offsets.0 as u64, (i.data_offsets.1 - i.data_offsets.0) as u64)
}

/// An error reading `from`: a file that ends too soon is `short()`.
fn read_error(from: &Path, e: std::io::Error, short: impl FnOnce() -> Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => short(),
        _ => Error::io(from, e),
    }
}

/// Bytes `at..at + len` of `file` (`from`, for errors; `short()` where it
/// ends before them) handed to `each` in blocks of 1 MiB; returns their
/// hash (`std`'s hasher: one process only).
fn read_range(
    file: &std::fs::File,
    from: &Path,
    at: u64,
    len: u64,
    short: &dyn Fn() -> Error,
    each: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    use std::hash::Hasher as _;
    use std::io::{Read as _, Seek as _};
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(at)).map_err(|e| Error::io(from, e))?;
    let mut h = std::hash::DefaultHasher::new();
    let mut block = vec![0u8; len.min(1 << 20) as usize];
    let mut left = len;
    while left > 0 {
        let b = &mut block[..left.min(1 << 20) as usize];
        f.read_exact(b).map_err(|e| read_error(from, e, short))?;
        h.write(b);
        each(b)?;
        left -= b.len() as u64;
    }
    Ok(h.finish())
}

/// A table read from a file.
pub struct LoadedTable {
    pub shape: Shape,
    pub data: Vec<f32>,
    /// Set when the values were converted.
    pub note: Option<String>,
    /// `.safetensors` inputs: what to carry over on a `.safetensors` save.
    pub carried: Option<Carried>,
    /// What the file holds: `f32`/`f64` (`.npy`), or a safetensors dtype
    /// (`F32`, `F64`, `F16`, `BF16`).
    pub file_dtype: String,
}

/// A table file opened, checked, for its values to stream
/// ([`TableReader`]; its shape is `reader.shape`).
pub struct OpenedTable {
    pub reader: TableReader,
    /// `.safetensors` inputs: what to carry over on a `.safetensors` save.
    pub carried: Option<Carried>,
    /// As [`LoadedTable::file_dtype`].
    pub file_dtype: String,
}

impl OpenedTable {
    /// Every value read into host memory.
    fn load(mut self) -> Result<LoadedTable> {
        let data = self.reader.read_all()?;
        let r = &self.reader;
        Ok(LoadedTable { shape: r.shape, data, note: r.note(), carried: self.carried, file_dtype: self.file_dtype })
    }
}

/// Reads the table of `path`: the tensor `tensor` of a `.safetensors` file,
/// keeping the rest of the file to carry over ([`LoadedTable::carried`]).
pub fn load(path: &Path, tensor: &str) -> Result<LoadedTable> {
    load_as(path, tensor, npy::Overflow::Inf, true)
}

/// `load`, float64 values beyond float32's range becoming as `overflow`
/// says. Without `carry`, a `.safetensors` file's header and table are all
/// that is read (`carried` is then `None`).
pub fn load_as(path: &Path, tensor: &str, overflow: npy::Overflow, carry: bool) -> Result<LoadedTable> {
    open_as(path, tensor, overflow, carry)?.load()
}

/// [`load_as`] without reading the values: they stream from the reader.
pub fn open_as(path: &Path, tensor: &str, overflow: npy::Overflow, carry: bool) -> Result<OpenedTable> {
    open_rows(path, tensor, overflow, carry, 2)
}

/// What `latent-line scan` reads: `open_as` without carrying, float64
/// values beyond float32's range saturating (they are finite in the file),
/// and a one-row table taken (training needs two rows; a scan does not).
pub fn open_for_scan(path: &Path, tensor: &str) -> Result<OpenedTable> {
    open_rows(path, tensor, npy::Overflow::Saturate, false, 1)
}

fn open_rows(path: &Path, tensor: &str, overflow: npy::Overflow, carry: bool, min_rows: usize) -> Result<OpenedTable> {
    match format_of(path)? {
        Format::Npy => {
            let reader = npy::open_table(path, overflow, min_rows)?;
            let file_dtype = if reader.elem == reader::Elem::F64 { "f64" } else { "f32" }.to_owned();
            Ok(OpenedTable { reader, carried: None, file_dtype })
        }
        Format::Safetensors => open_safetensors(path, tensor, overflow, carry, min_rows),
    }
}

fn open_safetensors(
    path: &Path,
    name: &str,
    overflow: npy::Overflow,
    carry: bool,
    min_rows: usize,
) -> Result<OpenedTable> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let no_tensor = |mut names: Vec<&str>| {
        names.sort_unstable();
        bad(format!("no tensor \"{name}\" (it has: {}); choose one with --tensor", names.join(", ")))
    };
    use std::io::Seek as _;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    // A pipe (`<(…)`) has no size to seek in: spooled to an unnamed
    // temporary file first, then read as a file is.
    // Anything else that is no regular file (a device: /dev/zero would
    // be spooled without end) is refused.
    #[cfg(unix)]
    let pipe = std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type());
    #[cfg(not(unix))]
    let pipe = false;
    let (mut file, len) = if meta.is_file() {
        (file, meta.len())
    } else if !pipe {
        return Err(bad("not a regular file, nor a pipe".into()));
    } else {
        let (mut spool, len) = spool_safetensors(path, file)?;
        spool.rewind().map_err(|e| Error::io(path, e))?;
        (spool, len)
    };
    // The header, checked as the crate checks a whole file; the table's
    // bytes are read by the reader, converted as they come, and (to carry
    // them) the other tensors' here, for their hashes: never the whole
    // file at once.
    let (data_at, meta) = read_header(path, &mut file, len)?;
    let Some(info) = meta.info(name) else {
        let names: Vec<String> = meta.tensors().into_keys().collect();
        return Err(no_tensor(names.iter().map(String::as_str).collect()));
    };
    let truncated = |n: &str| bad(format!("truncated while reading tensor \"{n}\""));
    // (A clone of the handle shares its offset: the reader seeks before
    // each read.)
    let shared = file.try_clone().map_err(|e| Error::io(path, e))?;
    let reader = table_reader(shared, path, name, place(data_at, info).0, info, overflow, min_rows)?;
    let file_dtype = format!("{:?}", info.dtype);
    let carried = if carry {
        let mut others = Vec::new();
        for n in meta.offset_keys() {
            let Some(i) = meta.info(&n).filter(|_| n != name) else { continue };
            let (at, len) = place(data_at, i);
            let hash = read_range(&file, path, at, len, &|| truncated(&n), &mut |_| Ok(()))?;
            others.push(CarriedTensor { name: n, dtype: i.dtype, shape: i.shape.clone(), at, len, hash });
        }
        Some(Carried { metadata: meta.metadata().clone(), others, file, from: path.to_owned() })
    } else {
        None
    };
    Ok(OpenedTable { reader, carried, file_dtype })
}

/// A `.safetensors` file read from a pipe, copied into an unnamed
/// temporary file: its header first, then only the bytes the header
/// places (a pipe that goes on past them, `cat t.safetensors /dev/zero`,
/// is refused at the first byte too many, not spooled until the disk is
/// full). Returns the spool and its length.
fn spool_safetensors(path: &Path, mut pipe: std::fs::File) -> Result<(std::fs::File, u64)> {
    use std::io::{Read as _, Write as _};
    // (The temporary folder's failures named as its own: not the pipe's.)
    let spooled = |what: &str, e: std::io::Error| {
        let tmp = std::env::temp_dir();
        Error::bad_file(
            path,
            format!("a pipe is copied to a temporary file first, and {what} in {} (TMPDIR): {e}", tmp.display()),
        )
    };
    let mut spool = tempfile::tempfile().map_err(|e| spooled("none could be made", e))?;
    // The header's length and the header, bounded as `read_header` bounds
    // them (a short or bad one is left for it to name).
    let mut head = Vec::new();
    (&mut pipe).take(8).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
    let mut want = None;
    if let Ok(n8) = <[u8; 8]>::try_from(head.as_slice()) {
        let n = u64::from_le_bytes(n8);
        if n <= SAFETENSORS_MAX_HEADER {
            (&mut pipe).take(n).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
            let meta = std::str::from_utf8(&head[8..]).ok().and_then(|t| serde_json::from_str::<Metadata>(t).ok());
            want = meta.and_then(|m| (8 + n).checked_add(m.data_len() as u64));
        }
    }
    spool.write_all(&head).map_err(|e| spooled("it could not be written", e))?;
    let Some(want) = want else { return Ok((spool, head.len() as u64)) };
    // One byte past what the header places tells a pipe that has more.
    let data = want - head.len() as u64;
    let (mut got, mut buf) = (0u64, vec![0u8; 1 << 16]);
    let mut more = (&mut pipe).take(data.saturating_add(1));
    loop {
        let n = match more.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        spool.write_all(&buf[..n]).map_err(|e| spooled("it could not be written", e))?;
        got += n as u64;
    }
    if got > data {
        return Err(Error::bad_file(
            path,
            format!(
                "not a valid .safetensors file: bytes past its tensors' data: its header places {want} bytes in \
                 all, the pipe has more"
            ),
        ));
    }
    Ok((spool, head.len() as u64 + got))
}

fn invalid(path: &Path, e: SafeTensorError) -> Error {
    Error::bad_file(path, format!("not a valid .safetensors file: {e}"))
}

/// The `.safetensors` file `path` opened and its header read
/// ([`read_header`]): the file, where its data starts, its tensors' places.
fn open_header(path: &Path) -> Result<(std::fs::File, u64, Metadata)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let (data_at, meta) = read_header(path, &mut file, len)?;
    Ok((file, data_at, meta))
}

/// The header of the `.safetensors` file `file` (`len` bytes, read from
/// its start), checked as the crate checks a whole file, without reading
/// its tensors: where the data starts and the tensors' places.
fn read_header(path: &Path, file: &mut std::fs::File, len: u64) -> Result<(u64, Metadata)> {
    use std::io::Read as _;
    let invalid = |e: SafeTensorError| invalid(path, e);
    if len < 8 {
        return Err(invalid(SafeTensorError::HeaderTooSmall));
    }
    let mut n8 = [0u8; 8];
    file.read_exact(&mut n8).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n8);
    if n > SAFETENSORS_MAX_HEADER {
        return Err(invalid(SafeTensorError::HeaderTooLarge));
    }
    if 8 + n > len {
        // (The crate's words, "invalid header length", with the numbers.)
        return Err(Error::bad_file(
            path,
            format!(
                "not a valid .safetensors file: its header is said to be {n} bytes long, past the file's end ({} \
                 bytes after the length's 8)",
                len - 8
            ),
        ));
    }
    let header = read_bytes(path, file, n)?;
    let text = std::str::from_utf8(&header).map_err(|e| invalid(SafeTensorError::InvalidHeader(e)))?;
    // (JSON that parses but whose tensors' places do not hold together is
    // not "invalid JSON": the crate's own checks, said as it says them
    // when it reads a whole file.)
    let meta: Metadata = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::bad_file(
            path,
            format!("not a valid .safetensors file: {}", tensor_size_mismatch(text).unwrap_or_else(|| e.to_string())),
        ),
        _ => invalid(SafeTensorError::InvalidHeaderDeserialization(e)),
    })?;
    // (The crate's own words, "incomplete metadata, file not fully
    // covered", do not say which way: the byte counts do, as for a .npy.)
    match (8 + n).checked_add(meta.data_len() as u64) {
        Some(want) if want == len => {}
        Some(want) => {
            return Err(Error::bad_file(
                path,
                format!(
                    "not a valid .safetensors file: {}: its header places {want} bytes in all, the file has {len}",
                    if want > len { "truncated" } else { "bytes past its tensors' data" }
                ),
            ))
        }
        None => return Err(invalid(SafeTensorError::MetadataIncompleteBuffer)),
    }
    Ok((8 + n, meta))
}

/// The bits of element `index` (row-major) of the table in `path` as the
/// file holds them, with their width in bytes; `None` where the file holds
/// f32, whose loaded values are its own bits (`latent-line scan` names a
/// finding by the file's bits: an f64 NaN's payload, an F16 Inf's).
pub fn element_bits(path: &Path, tensor: &str, index: u64) -> Result<Option<(u64, usize)>> {
    use std::io::{Read as _, Seek as _};
    match format_of(path)? {
        Format::Npy => Ok(npy::element_bits(path, index)?.map(|b| (b, 8))),
        Format::Safetensors => {
            let (mut file, data_at, meta) = open_header(path)?;
            let Some(info) = meta.info(tensor) else {
                return Err(Error::bad_file(path, format!("no tensor \"{tensor}\"")));
            };
            let size = info.dtype.bitsize() / 8;
            if info.dtype == Dtype::F32 || !matches!(size, 2 | 8) {
                return Ok(None);
            }
            let (from, to) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            if index >= (to - from) / size as u64 {
                return Err(Error::bad_file(path, format!("tensor \"{tensor}\" has no element {index}")));
            }
            let at = from + index * size as u64;
            let mut b = [0u8; 8];
            file.seek(std::io::SeekFrom::Start(data_at + at))
                .and_then(|_| file.read_exact(&mut b[..size]))
                .map_err(|e| Error::io(path, e))?;
            Ok(Some((u64::from_le_bytes(b), size)))
        }
    }
}

/// The tensor of a `.safetensors` header whose data offsets do not span
/// its shape's bytes, said with the numbers (the crate says only "invalid
/// shape, data type, or offset for tensor"); `None` where none is found.
fn tensor_size_mismatch(header: &str) -> Option<String> {
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(header).ok()?;
    all.iter().filter(|(name, _)| *name != "__metadata__").find_map(|(name, t)| {
        let dtype: Dtype = serde_json::from_value(t.get("dtype")?.clone()).ok()?;
        let shape: Vec<u64> = serde_json::from_value(t.get("shape")?.clone()).ok()?;
        let [from, to]: [u64; 2] = serde_json::from_value(t.get("data_offsets")?.clone()).ok()?;
        let bits = shape.iter().try_fold(dtype.bitsize() as u64, |n, &d| n.checked_mul(d));
        let placed = to.checked_sub(from).and_then(|b| b.checked_mul(8));
        (bits != placed).then(|| match (bits, placed) {
            (Some(bits), Some(_)) => format!(
                "tensor \"{name}\": shape {shape:?} of {dtype:?} is {} bytes, and its data_offsets [{from}, {to}] \
                 place {}",
                bits.div_ceil(8),
                to - from
            ),
            (None, _) => format!("tensor \"{name}\": shape {shape:?} of {dtype:?}: its size overflows 64 bits"),
            (_, None) => format!("tensor \"{name}\": data_offsets [{from}, {to}] end before they start"),
        })
    })
}

/// The safetensors crate's limit on a header (its `MAX_HEADER_SIZE`).
const SAFETENSORS_MAX_HEADER: u64 = 100_000_000;

/// `n` bytes from `file`'s position; a host that cannot hold them is an
/// error, not an abort.
fn read_bytes(path: &Path, file: &mut std::fs::File, n: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = npy::host_vec(path, n, &format!("{n} bytes to read"))?;
    file.take(n).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != n {
        return Err(Error::bad_file(path, format!("truncated: {} of {n} bytes read", bytes.len())));
    }
    Ok(bytes)
}

/// Tensor `name` of a `.safetensors` file (its dtype and shape), whose
/// bytes start at `at` in `file`, checked and opened as a table to stream.
fn table_reader(
    file: std::fs::File,
    path: &Path,
    name: &str,
    at: u64,
    info: &safetensors::tensor::TensorInfo,
    overflow: npy::Overflow,
    min_rows: usize,
) -> Result<TableReader> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let [rows, dim] = info.shape[..] else {
        return Err(bad(format!("tensor \"{name}\" has shape {:?}; a table is 2-D (rows × columns)", info.shape)));
    };
    let shape = Shape::of_file_from(rows, dim, min_rows).map_err(|e| bad(format!("tensor \"{name}\": {e}")))?;
    let elem = match info.dtype {
        Dtype::F32 => reader::Elem::F32,
        Dtype::F64 => reader::Elem::F64,
        Dtype::F16 => reader::Elem::F16,
        Dtype::BF16 => reader::Elem::BF16,
        other => return Err(bad(format!("tensor \"{name}\" is {other:?}; a table is F32, F64, F16 or BF16"))),
    };
    Ok(TableReader::new(file, path, reader::Origin::Tensor(name.to_owned()), at, shape, elem, overflow))
}

/// Saves a table to `path` (format from the extension), atomically. A
/// `.safetensors` output holds the table as F32 tensor `tensor`, and, when
/// `carried` comes from a `.safetensors` input, that file's other tensors
/// and metadata unchanged.
///
/// With `state`, the run state goes beside the table: into the metadata of a
/// `.safetensors` file (or, past `STATE_IN_HEADER_MAX`, into
/// `FILE.safetensors.state.json`, the header saying so), or into
/// `FILE.npy.state.json`, all files written before any replaces anything
/// (`npy::commit`); its `table_fingerprint` is set to the table's.
pub fn save(
    path: &Path,
    tensor: &str,
    shape: Shape,
    data: &[f32],
    carried: Option<&Carried>,
    state: Option<&RunState>,
) -> Result<()> {
    if data.len() as u64 != shape.elements() {
        return Err(Error::invalid("table", format!("{} values for {} × {}", data.len(), shape.rows, shape.dim)));
    }
    npy::commit(stage(path, tensor, shape, &mut |sink| sink(data), carried, state.cloned())?)
}

/// [`save`]'s files, written in full but not yet renamed over anything, in
/// the order to commit them (the table last). The table's values come from
/// `fill` a block at a time and are written as they come (a GPU's table
/// streams from its readback into the file: no host copy of the whole).
pub fn stage(
    path: &Path,
    tensor: &str,
    shape: Shape,
    fill: &mut Fill,
    carried: Option<&Carried>,
    state: Option<RunState>,
) -> Result<Vec<npy::Staged>> {
    match format_of(path)? {
        Format::Npy => {
            let (table, fp) = npy::stage_table_from(path, shape, fill)?;
            let mut files = Vec::new();
            if let Some(s) = state {
                files.push(stage_state(path, &state_text(&s, fp))?);
            }
            files.push(table);
            Ok(files)
        }
        Format::Safetensors => stage_safetensors(path, tensor, shape, fill, carried, state),
    }
}

/// A run state as saved, with the fingerprint of the table saved with it.
fn state_text(state: &RunState, table_fingerprint: u64) -> String {
    let s = RunState { table_fingerprint: Some(table_fingerprint), ..state.clone() };
    serde_json::to_string(&s).unwrap_or_default()
}

/// A `.safetensors` file written by hand, so that the table streams into
/// it: the crate's `serialize` wants every tensor's bytes at once. Laid
/// out as the crate lays a file out (tensors by dtype, widest first, then
/// by name; the header padded with spaces to 8 bytes), the header's keys
/// sorted (SPEC §11 asks the same run for the same bytes). A run state
/// kept in the header holds the table's fingerprint, known only once the
/// table is written: room is kept for the widest one, and the header is
/// written again over its place at the end (padded with spaces, which
/// JSON and the format allow).
fn stage_safetensors(
    path: &Path,
    tensor: &str,
    shape: Shape,
    fill: &mut Fill,
    carried: Option<&Carried>,
    state: Option<RunState>,
) -> Result<Vec<npy::Staged>> {
    use std::collections::BTreeMap;
    use std::io::{Seek as _, Write as _};
    check_tensor_name(tensor).map_err(|e| Error::invalid("tensor", e))?;
    npy::check_saved_shape(path, shape)?;
    let cannot = |e: String| Error::bad_file(path, format!("cannot encode the file: {e}"));
    struct Entry<'a> {
        name: &'a str,
        dtype: Dtype,
        dims: &'a [usize],
        bytes: u64,
        /// A tensor carried over and the input it lies in; None for the
        /// table, which streams.
        data: Option<(&'a CarriedTensor, &'a Carried)>,
    }
    let dims = [shape.rows, shape.dim];
    let mut entries =
        vec![Entry { name: tensor, dtype: Dtype::F32, dims: &dims, bytes: shape.elements() * 4, data: None }];
    if let Some(c) = carried {
        for t in c.others.iter().filter(|t| t.name != tensor) {
            entries.push(Entry { name: &t.name, dtype: t.dtype, dims: &t.shape, bytes: t.len, data: Some((t, c)) });
        }
    }
    entries.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(b.name)));
    let mut metadata: Option<BTreeMap<String, String>> =
        carried.and_then(|c| c.metadata.as_ref()).map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    // The run state goes in the header, unless moved beside the file below.
    let (mut in_header, mut beside) = (None, None);
    if let Some(st) = state {
        let meta = metadata.get_or_insert_with(BTreeMap::new);
        meta.remove(STATE_KEY);
        meta.remove(STATE_BESIDE_KEY);
        in_header = Some(st);
    }
    type Header = BTreeMap<String, BTreeMap<String, serde_json::Value>>;
    // (The metadata and the state in it as arguments: the state may yet
    // move beside the file, below.)
    let header =
        |metadata: &Option<BTreeMap<String, String>>, in_header: &Option<RunState>, fp: u64| -> Result<Vec<u8>> {
            let mut top = Header::new();
            if let Some(m) = metadata {
                let mut m: BTreeMap<String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                if let Some(st) = in_header {
                    m.insert(STATE_KEY.to_owned(), state_text(st, fp).into());
                }
                top.insert("__metadata__".to_owned(), m);
            }
            let mut at = 0u64;
            for t in &entries {
                let mut e = BTreeMap::new();
                e.insert("dtype".to_owned(), serde_json::to_value(t.dtype).map_err(|e| cannot(e.to_string()))?);
                e.insert("shape".to_owned(), serde_json::to_value(t.dims).map_err(|e| cannot(e.to_string()))?);
                e.insert("data_offsets".to_owned(), serde_json::json!([at, at + t.bytes]));
                top.insert(t.name.to_owned(), e);
                at += t.bytes;
            }
            serde_json::to_vec(&top).map_err(|e| cannot(e.to_string()))
        };
    // Room for the widest fingerprint (u64::MAX's 20 digits).
    let room_of =
        |metadata: &_, in_header: &_| Ok::<_, Error>(header(metadata, in_header, u64::MAX)?.len().next_multiple_of(8));
    // The run state goes beside the file, the header saying so, where it is
    // too large for a header (skip-row's strike counts of millions of rows)
    // or where the carried metadata leaves it no room under the format's
    // limit (an input whose header is near it). (A large one's header is
    // not built with it first.)
    let too_large = in_header.as_ref().is_some_and(|st| state_text(st, u64::MAX).len() > STATE_IN_HEADER_MAX);
    let mut room = if too_large { 0 } else { room_of(&metadata, &in_header)? };
    if in_header.is_some() && (too_large || room as u64 > SAFETENSORS_MAX_HEADER) {
        metadata.get_or_insert_with(BTreeMap::new).insert(STATE_BESIDE_KEY.to_owned(), "FILE.state.json".to_owned());
        beside = in_header.take();
        room = room_of(&metadata, &in_header)?;
    }
    if room as u64 > SAFETENSORS_MAX_HEADER {
        return Err(cannot(format!("a header of {room} bytes, past the format's {SAFETENSORS_MAX_HEADER}")));
    }
    let padded = |mut text: Vec<u8>| {
        if text.len() > room {
            return Err(cannot(format!("a header of {} bytes where {room} were kept for it", text.len())));
        }
        text.resize(room, b' ');
        Ok(text)
    };
    let mut fp = 0;
    let table = npy::stage_with(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&(room as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&padded(header(&metadata, &in_header, u64::MAX)?)?).map_err(io)?;
        for e in &entries {
            match e.data {
                // Copied from the input a block at a time, its hash checked.
                Some((t, c)) => {
                    let changed = || {
                        let why = format!(
                            "changed since it was loaded: its tensor \"{}\" cannot be carried over to {}",
                            t.name,
                            path.display()
                        );
                        Error::bad_file(&c.from, why)
                    };
                    let hash =
                        read_range(&c.file, &c.from, t.at, t.len, &changed, &mut |b| w.write_all(b).map_err(io))?;
                    if hash != t.hash {
                        return Err(changed());
                    }
                }
                None => fp = npy::write_values(w, path, shape, fill)?,
            }
        }
        if in_header.is_some() {
            w.seek(std::io::SeekFrom::Start(8)).map_err(io)?;
            w.write_all(&padded(header(&metadata, &in_header, fp)?)?).map_err(io)?;
        }
        Ok(())
    })?;
    let mut files = Vec::new();
    if let Some(st) = beside {
        files.push(stage_state(path, &state_text(&st, fp))?);
    }
    files.push(table);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use safetensors::tensor::SafeTensors;

    /// The fingerprint as first written (whole slices only): checkpoints
    /// saved before streaming must still resume.
    fn fingerprint_as_before(v: &[f32]) -> u64 {
        use rayon::prelude::*;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let parts: Vec<u64> = v
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| (h ^ x.to_bits() as u64).wrapping_mul(PRIME)))
            .collect();
        parts.into_iter().fold(v.len() as u64, |h, p| (h.rotate_left(23) ^ p).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    #[test]
    fn a_fingerprint_is_the_same_for_any_split_of_its_values() {
        let seed = crate::test_seed("fingerprint_splits");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for len in [0usize, 1, 65_535, 65_536, 65_537, 200_003] {
            let v: Vec<f32> = (0..len).map(|_| f32::from_bits(rng.random())).collect();
            let want = fingerprint_as_before(&v);
            assert_eq!(fingerprint(&v), want, "seed {seed}, {len} values");
            for _ in 0..4 {
                let mut f = Fingerprinter::new(len as u64);
                let mut rest = &v[..];
                while !rest.is_empty() {
                    // Blocks of any size, whole chunks and more included.
                    let n = rng.random_range(1..=rest.len().min(150_000));
                    f.update(&rest[..n]);
                    rest = &rest[n..];
                    f.update(&[]);
                }
                assert_eq!(f.finish(), want, "seed {seed}, {len} values in random blocks");
            }
        }
    }

    #[test]
    fn a_streamed_safetensors_header_holds_the_fingerprint_of_the_table_after_it() {
        let seed = crate::test_seed("streamed_safetensors");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let shape = Shape::new(301, 7).unwrap();
        let v: Vec<f32> = (0..shape.elements()).map(|_| rng.random_range(-2.0..2.0)).collect();
        let state = RunState { steps: 5, lr: 0.1, table_fingerprint: Some(7), ..RunState::default() };
        // Handed over in uneven blocks, as a GPU's readback hands them.
        let mut fill = |sink: &mut crate::trainer::Sink| v.chunks(250).try_for_each(&mut *sink);
        npy::commit(stage(&path, "emb", shape, &mut fill, None, Some(state.clone())).unwrap()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let t = st.tensor("emb").unwrap();
        assert_eq!((t.dtype(), t.shape().to_vec()), (Dtype::F32, vec![301, 7]));
        assert!(
            t.data().chunks(4).zip(&v).all(|(b, x)| f32::from_le_bytes(b.try_into().unwrap()) == *x),
            "seed {seed}"
        );
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "the data starts on 8 bytes");
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        // Room for the widest fingerprint: the header as it would be with
        // u64::MAX's 20 digits, to 8 bytes.
        let fp = fingerprint(&v).to_string();
        assert_eq!(header.matches(&fp).count(), 1, "{header}");
        let widest = header.trim_end().replace(&fp, &u64::MAX.to_string());
        assert_eq!(n, widest.len().next_multiple_of(8), "room for 20 digits: {header:?}");
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let saved: RunState = serde_json::from_str(&meta.metadata().as_ref().unwrap()[STATE_KEY]).unwrap();
        assert_eq!(saved, RunState { table_fingerprint: Some(fingerprint(&v)), ..state }, "seed {seed}");
        // Too few values, or too many, write nothing.
        for take in [v.len() - 1, v.len() + 1] {
            let other = dir.path().join("u.safetensors");
            let more: Vec<f32> = v.iter().copied().cycle().take(take).collect();
            let mut fill = |sink: &mut crate::trainer::Sink| sink(&more);
            let err = stage(&other, "emb", shape, &mut fill, None, None).err().expect("refused");
            assert!(err.to_string().contains("301 × 7"), "{err}");
            assert!(!other.exists());
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file left");
        }
    }
}
