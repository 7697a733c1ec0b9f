//! Table files (SPEC §12), by extension: `.npy` ([`crate::npy`]) or
//! `.safetensors` (the `safetensors` crate). A safetensors table is one
//! named 2-D tensor (default `weight`): F32 as it is, F64, F16 and BF16 converted
//! with a note. The file's other tensors and its metadata are carried over
//! unchanged when the output is `.safetensors` too, so a checkpoint goes
//! out as it came in, with the table trained. Saves are atomic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors, TensorView};

use crate::config::Shape;
use crate::error::{Error, Result};
use crate::npy;
use crate::trainer::RunState;

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
    pub fn stage(self, path: &Path, shape: Shape, v: &[f32]) -> Result<npy::Staged> {
        npy::stage_table(&self.path(path), shape, v)
    }

    /// Loads it from beside `path`, checked against the table's shape and
    /// against the fingerprint the run state recorded for it (`None`: a
    /// state saved before fingerprints); with the leftover file it was
    /// taken from instead, when a killed save left the one beside `path`
    /// from another checkpoint (see [`recover`]).
    pub fn load(self, path: &Path, shape: Shape, want: Option<u64>) -> Result<(Vec<f32>, Option<PathBuf>)> {
        let side = self.path(path);
        let v = npy::load(&side).map_err(|e| match e {
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
        if let Some(h) = want.filter(|&h| h != fingerprint(&v.data)) {
            // A checkpoint killed between its renames: the file it was
            // saved with is among the leftovers.
            if let Some((from, data)) = recover(path, shape, h) {
                return Ok((data, Some(from)));
            }
            return Err(Error::bad_file(
                &side,
                format!(
                    "this {} is not the one {}'s run state was saved with (a save interrupted between the two?), \
                     nor is any file a killed save left beside it; resume from another checkpoint, or start again \
                     with --load",
                    self.name(),
                    path.display()
                ),
            ));
        }
        Ok((v.data, None))
    }
}

/// A checkpoint's files are each replaced atomically, the set one file
/// after another (`npy::commit`): a kill between two renames leaves some
/// files new and some old, and beside them the new ones not yet renamed
/// (`.latent-line-*.tmp`) and the old ones already replaced (kept under
/// `.latent-line-old-*` links). The first of those leftovers in the
/// folder of `path` that is an `.npy` table of `shape` with the
/// fingerprint `want` that the run state recorded, with its path: what a
/// resume takes instead of the file that does not belong.
pub fn recover(path: &Path, shape: Shape, want: u64) -> Option<(PathBuf, Vec<f32>)> {
    let found = leftovers(path)?;
    let read = |p: &Path| npy::load(p).ok().filter(|l| l.shape == shape).map(|l| l.data);
    found.into_iter().find_map(|p| read(&p).filter(|v| fingerprint(v) == want).map(|v| (p, v)))
}

/// A killed save's leftovers in the folder of the checkpoint `path` (its
/// links followed), in name order: the new files not yet renamed
/// (`.latent-line-*.tmp`) and the old ones replaced (`.latent-line-old-*`).
fn leftovers(path: &Path) -> Option<Vec<PathBuf>> {
    let path = npy::destination(path).unwrap_or_else(|p| p);
    let mut found: Vec<PathBuf> = std::fs::read_dir(npy::folder(&path))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(".latent-line-old-") || (name.starts_with(".latent-line-") && name.ends_with(".tmp"))
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
    use rayon::prelude::*;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let parts: Vec<u64> = v
        .par_chunks(1 << 16)
        .map(|c| c.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| (h ^ x.to_bits() as u64).wrapping_mul(PRIME)))
        .collect();
    parts.into_iter().fold(v.len() as u64, |h, p| (h.rotate_left(23) ^ p).wrapping_mul(0x9e37_79b9_7f4a_7c15))
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
            let (_, meta) = SafeTensors::read_metadata(&c.bytes)
                .map_err(|e| Error::bad_file(path, format!("not a valid .safetensors file: {e}")))?;
            let meta = meta.metadata().as_ref();
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

/// The rest of a loaded `.safetensors` file: the whole file (its other
/// tensors are views into it) and the name the table had.
pub struct Carried {
    bytes: Vec<u8>,
    table: String,
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

/// Reads the table of `path`: the tensor `tensor` of a `.safetensors` file,
/// keeping the rest of the file to carry over ([`LoadedTable::carried`]).
pub fn load(path: &Path, tensor: &str) -> Result<LoadedTable> {
    load_as(path, tensor, npy::Overflow::Inf, true)
}

/// `load`, float64 values beyond float32's range becoming as `overflow`
/// says. Without `carry`, a `.safetensors` file's header and table are all
/// that is read (`carried` is then `None`).
pub fn load_as(path: &Path, tensor: &str, overflow: npy::Overflow, carry: bool) -> Result<LoadedTable> {
    load_rows(path, tensor, overflow, carry, 2)
}

/// What `latent-line scan` reads: `load_as` without carrying, float64
/// values beyond float32's range saturating (they are finite in the file),
/// and a one-row table taken (training needs two rows; a scan does not).
pub fn load_for_scan(path: &Path, tensor: &str) -> Result<LoadedTable> {
    load_rows(path, tensor, npy::Overflow::Saturate, false, 1)
}

fn load_rows(path: &Path, tensor: &str, overflow: npy::Overflow, carry: bool, min_rows: usize) -> Result<LoadedTable> {
    match format_of(path)? {
        Format::Npy => {
            let l = npy::load_rows(path, overflow, min_rows)?;
            // An .npy table's only note is its float64 conversion.
            let file_dtype = if l.note.is_some() { "f64" } else { "f32" }.to_owned();
            Ok(LoadedTable { shape: l.shape, data: l.data, note: l.note, carried: None, file_dtype })
        }
        Format::Safetensors => load_safetensors(path, tensor, overflow, carry, min_rows),
    }
}

fn load_safetensors(
    path: &Path,
    name: &str,
    overflow: npy::Overflow,
    carry: bool,
    min_rows: usize,
) -> Result<LoadedTable> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let no_tensor = |mut names: Vec<&str>| {
        names.sort_unstable();
        bad(format!("no tensor \"{name}\" (it has: {}); choose one with --tensor", names.join(", ")))
    };
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    // A pipe (`<(…)`) has no size to seek in: read whole.
    if carry || !meta.is_file() {
        // The whole file, and nothing larger: the crate checks every offset
        // against it before a tensor is touched; the other tensors are
        // saved from it.
        let bytes = if meta.is_file() {
            read_bytes(path, &mut file, meta.len())?
        } else {
            let mut all = Vec::new();
            file.read_to_end(&mut all).map_err(|e| Error::io(path, e))?;
            all
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| invalid(path, e))?;
        let view = st.tensor(name).map_err(|_| no_tensor(st.names()))?;
        let (shape, data, note) = table_of(path, name, view.dtype(), view.shape(), view.data(), overflow, min_rows)?;
        let file_dtype = format!("{:?}", view.dtype());
        drop(st);
        let carried = carry.then(|| Carried { bytes, table: name.to_owned() });
        return Ok(LoadedTable { shape, data, note, carried, file_dtype });
    }
    // Only the header and the table's bytes (a scan, or an output that is
    // not .safetensors: nothing else of a 50 GB checkpoint is needed).
    let (data_at, meta) = read_header(path, &mut file, meta.len())?;
    let Some(info) = meta.info(name) else {
        let names: Vec<String> = meta.tensors().into_keys().collect();
        return Err(no_tensor(names.iter().map(String::as_str).collect()));
    };
    let (from, to) = info.data_offsets;
    file.seek(std::io::SeekFrom::Start(data_at + from as u64)).map_err(|e| Error::io(path, e))?;
    let raw = read_bytes(path, &mut file, (to - from) as u64)?;
    let (shape, data, note) = table_of(path, name, info.dtype, &info.shape, &raw, overflow, min_rows)?;
    Ok(LoadedTable { shape, data, note, carried: None, file_dtype: format!("{:?}", info.dtype) })
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
        return Err(invalid(SafeTensorError::InvalidHeaderLength));
    }
    let header = read_bytes(path, file, n)?;
    let text = std::str::from_utf8(&header).map_err(|e| invalid(SafeTensorError::InvalidHeader(e)))?;
    // (JSON that parses but whose tensors' places do not hold together is
    // not "invalid JSON": the crate's own checks, said as it says them
    // when it reads a whole file.)
    let meta: Metadata = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::bad_file(path, format!("not a valid .safetensors file: {e}")),
        _ => invalid(SafeTensorError::InvalidHeaderDeserialization(e)),
    })?;
    if (8 + n).checked_add(meta.data_len() as u64) != Some(len) {
        return Err(invalid(SafeTensorError::MetadataIncompleteBuffer));
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

/// Tensor `name` of a `.safetensors` file (its dtype, shape and bytes) as
/// a table of f32: its shape, values and a note when they were converted.
fn table_of(
    path: &Path,
    name: &str,
    dtype: Dtype,
    dims: &[usize],
    raw: &[u8],
    overflow: npy::Overflow,
    min_rows: usize,
) -> Result<(Shape, Vec<f32>, Option<String>)> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let [rows, dim] = dims else {
        return Err(bad(format!("tensor \"{name}\" has shape {dims:?}; a table is 2-D (rows × columns)")));
    };
    let shape = Shape::of_file_from(*rows, *dim, min_rows).map_err(|e| bad(format!("tensor \"{name}\": {e}")))?;
    let mut data: Vec<f32> = npy::host_vec(path, shape.elements(), &format!("tensor \"{name}\" as f32"))?;
    let note = match dtype {
        Dtype::F32 => {
            data.extend(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            None
        }
        Dtype::F64 => {
            let mut overflowed = 0;
            data.extend(raw.chunks_exact(8).map(|b| {
                npy::f64_to_f32(f64::from_le_bytes(b.try_into().unwrap_or([0; 8])), &mut overflowed, overflow)
            }));
            let note = npy::overflow_note(overflowed, overflow);
            Some(format!("tensor \"{name}\" converted from F64 to f32{note}"))
        }
        Dtype::F16 => {
            data.extend(raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))));
            Some(format!("tensor \"{name}\" converted from F16 to f32"))
        }
        Dtype::BF16 => {
            data.extend(raw.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))));
            Some(format!("tensor \"{name}\" converted from BF16 to f32"))
        }
        other => return Err(bad(format!("tensor \"{name}\" is {other:?}; a table is F32, F64, F16 or BF16"))),
    };
    Ok((shape, data, note))
}

/// A serialized `.safetensors` file with its header's keys in sorted
/// order (its entries and theirs: every value of the header is an object,
/// the metadata or a tensor's place): the crate writes the
/// metadata from a `HashMap`, in an order that changes from one process to
/// the next, and SPEC §11 asks the same run for the same bytes. The data
/// and its offsets (from the header's end) are unchanged.
fn sorted_header(file: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let bad = |e: String| format!("cannot encode the file: {e}");
    let n =
        file.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).ok_or_else(|| bad("no header".into()))?;
    let end = usize::try_from(n).ok().and_then(|n| n.checked_add(8)).filter(|&e| e <= file.len());
    let end = end.ok_or_else(|| bad("a header past the file's end".into()))?;
    type Sorted = std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>;
    let header: Sorted = serde_json::from_slice(&file[8..end]).map_err(|e| bad(e.to_string()))?;
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    // Padded with spaces to 8 bytes, as the crate pads it.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + file.len() - end);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
    out.extend(&file[end..]);
    Ok(out)
}

/// An F16 value as f32, exactly, a NaN's payload too (as numpy's
/// `astype`): `half`'s conversion sets a signalling NaN's quiet bit.
fn f16_to_f32(h: u16) -> f32 {
    if h & 0x7c00 == 0x7c00 && h & 0x03ff != 0 {
        f32::from_bits(((h as u32 & 0x8000) << 16) | 0x7f80_0000 | ((h as u32 & 0x03ff) << 13))
    } else {
        half::f16::from_bits(h).to_f32()
    }
}

/// A BF16 value as f32: its top 16 bits, NaNs as they are (as PyTorch's
/// conversion; `half`'s sets a signalling NaN's quiet bit).
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
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
/// (`npy::commit`).
pub fn save(
    path: &Path,
    tensor: &str,
    shape: Shape,
    data: &[f32],
    carried: Option<&Carried>,
    state: Option<&RunState>,
) -> Result<()> {
    npy::commit(stage(path, tensor, shape, data, carried, state)?)
}

/// [`save`]'s files, written in full but not yet renamed over anything, in
/// the order to commit them (the table last).
pub fn stage(
    path: &Path,
    tensor: &str,
    shape: Shape,
    data: &[f32],
    carried: Option<&Carried>,
    state: Option<&RunState>,
) -> Result<Vec<npy::Staged>> {
    let state_json = state.map(|s| serde_json::to_string(s).unwrap_or_default());
    match format_of(path)? {
        Format::Npy => {
            let mut files = Vec::new();
            if let Some(text) = &state_json {
                files.push(stage_state(path, text)?);
            }
            files.push(npy::stage_table(path, shape, data)?);
            Ok(files)
        }
        Format::Safetensors => {
            check_tensor_name(tensor).map_err(|e| Error::invalid("tensor", e))?;
            let bytes: &[u8] = bytemuck::cast_slice(data);
            let table = TensorView::new(Dtype::F32, vec![shape.rows, shape.dim], bytes)
                .map_err(|e| Error::bad_file(path, format!("cannot encode the table: {e}")))?;
            let mut tensors: Vec<(String, TensorView<'_>)> = vec![(tensor.to_owned(), table)];
            let mut metadata: Option<HashMap<String, String>> = None;
            let parsed;
            if let Some(c) = carried {
                parsed = SafeTensors::deserialize(&c.bytes)
                    .map_err(|e| Error::bad_file(path, format!("the loaded file no longer parses: {e}")))?;
                let (_, meta) = SafeTensors::read_metadata(&c.bytes)
                    .map_err(|e| Error::bad_file(path, format!("the loaded file no longer parses: {e}")))?;
                metadata = meta.metadata().clone();
                tensors.extend(parsed.tensors().into_iter().filter(|(n, _)| *n != c.table && *n != tensor));
            }
            let mut files = Vec::new();
            if let Some(text) = state_json {
                let meta = metadata.get_or_insert_with(HashMap::new);
                meta.remove(STATE_KEY);
                meta.remove(STATE_BESIDE_KEY);
                if text.len() > STATE_IN_HEADER_MAX {
                    files.push(stage_state(path, &text)?);
                    meta.insert(STATE_BESIDE_KEY.to_owned(), "FILE.state.json".to_owned());
                } else {
                    meta.insert(STATE_KEY.to_owned(), text);
                }
            }
            let out = safetensors::tensor::serialize(tensors, metadata)
                .map_err(|e| Error::bad_file(path, format!("cannot encode the file: {e}")))
                .and_then(|out| sorted_header(out).map_err(|e| Error::bad_file(path, e)))?;
            files.push(npy::stage(path, |w| std::io::Write::write_all(w, &out))?);
            Ok(files)
        }
    }
}
