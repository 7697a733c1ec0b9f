//! Table files (SPEC §12), by extension: `.npy` ([`crate::npy`]) or
//! `.safetensors` (the `safetensors` crate). A safetensors table is one
//! named 2-D tensor (default `weight`): F32 as it is, F64, F16 and BF16 converted
//! with a note. The file's other tensors and its metadata are carried over
//! unchanged when the output is `.safetensors` too, so a checkpoint goes
//! out as it came in, with the table trained. Saves are atomic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::Shape;
use crate::error::{Error, Result};
use crate::npy;
use crate::trainer::RunState;

/// Where a `.safetensors` checkpoint keeps its [`RunState`] (metadata key).
const STATE_KEY: &str = "latent_line.run_state";

/// The [`RunState`] file beside an `.npy` checkpoint.
pub fn state_sidecar(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".state.json");
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
    fn name(self) -> &'static str {
        match self {
            Sidecar::Velocity => "velocity",
            Sidecar::Snapshot => "snapshot",
        }
    }

    /// Where it lies beside the checkpoint `path`.
    pub fn path(self, path: &Path) -> std::path::PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{}.npy", self.name()));
        s.into()
    }

    /// Writes it for beside the checkpoint `path`, to be committed with
    /// the checkpoint's other files (`npy::commit`).
    pub fn stage(self, path: &Path, shape: Shape, v: &[f32]) -> Result<npy::Staged> {
        npy::stage_table(&self.path(path), shape, v)
    }

    /// Loads it from beside `path`, checked against the table's shape and
    /// against the fingerprint the run state recorded for it (`None`: a
    /// state saved before fingerprints).
    pub fn load(self, path: &Path, shape: Shape, want: Option<u64>) -> Result<Vec<f32>> {
        let side = self.path(path);
        let v = npy::load(&side)?;
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
            if let Some((_, data)) = recover(path, shape, h) {
                return Ok(data);
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
        Ok(v.data)
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
    let mut found: Vec<PathBuf> = std::fs::read_dir(npy::folder(path))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(".latent-line-old-") || (name.starts_with(".latent-line-") && name.ends_with(".tmp"))
        })
        .collect();
    found.sort();
    let read = |p: &Path| npy::load(p).ok().filter(|l| l.shape == shape).map(|l| l.data);
    found.into_iter().find_map(|p| read(&p).filter(|v| fingerprint(v) == want).map(|v| (p, v)))
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
    match (format_of(path)?, carried) {
        (Format::Safetensors, Some(c)) => {
            let (_, meta) = SafeTensors::read_metadata(&c.bytes)
                .map_err(|e| Error::bad_file(path, format!("not a valid .safetensors file: {e}")))?;
            match meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)) {
                Some(text) => parse(text, path),
                None => Ok(None),
            }
        }
        _ => {
            let side = state_sidecar(path);
            match std::fs::read_to_string(&side) {
                Ok(text) => parse(&text, &side),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(&side, e)),
            }
        }
    }
}

/// The tensor a safetensors table is, unless `--tensor` says otherwise.
pub const DEFAULT_TENSOR: &str = "weight";

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
}

/// Reads the table of `path`: the tensor `tensor` of a `.safetensors` file.
pub fn load(path: &Path, tensor: &str) -> Result<LoadedTable> {
    load_as(path, tensor, npy::Overflow::Inf)
}

/// `load`, float64 values beyond float32's range becoming as `overflow` says.
pub fn load_as(path: &Path, tensor: &str, overflow: npy::Overflow) -> Result<LoadedTable> {
    match format_of(path)? {
        Format::Npy => {
            let l = npy::load_as(path, overflow)?;
            Ok(LoadedTable { shape: l.shape, data: l.data, note: l.note, carried: None })
        }
        Format::Safetensors => load_safetensors(path, tensor, overflow),
    }
}

fn load_safetensors(path: &Path, name: &str, overflow: npy::Overflow) -> Result<LoadedTable> {
    let bad = |reason: String| Error::bad_file(path, reason);
    // The whole file, and nothing larger: the crate checks every offset
    // against it before a tensor is touched.
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a valid .safetensors file: {e}")))?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        bad(format!("no tensor \"{name}\" (it has: {}); choose one with --tensor", names.join(", ")))
    })?;
    let dims = view.shape();
    let [rows, dim] = dims else {
        return Err(bad(format!("tensor \"{name}\" has shape {dims:?}; a table is 2-D (rows × columns)")));
    };
    let shape = Shape::of_file(*rows, *dim).map_err(|e| bad(format!("tensor \"{name}\": {e}")))?;
    let raw = view.data();
    let (data, note): (Vec<f32>, Option<String>) = match view.dtype() {
        Dtype::F32 => (raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), None),
        Dtype::F64 => {
            let mut overflowed = 0;
            let v = raw
                .chunks_exact(8)
                .map(|b| npy::f64_to_f32(f64::from_le_bytes(b.try_into().unwrap_or([0; 8])), &mut overflowed, overflow))
                .collect();
            let note = npy::overflow_note(overflowed, overflow);
            (v, Some(format!("tensor \"{name}\" converted from F64 to f32{note}")))
        }
        Dtype::F16 => (
            raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Some(format!("tensor \"{name}\" converted from F16 to f32 (saved as F32)")),
        ),
        Dtype::BF16 => (
            raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Some(format!("tensor \"{name}\" converted from BF16 to f32 (saved as F32)")),
        ),
        other => return Err(bad(format!("tensor \"{name}\" is {other:?}; a table is F32, F64, F16 or BF16"))),
    };
    let carried = Some(Carried { bytes, table: name.to_owned() });
    Ok(LoadedTable { shape, data, note, carried })
}

/// Saves a table to `path` (format from the extension), atomically. A
/// `.safetensors` output holds the table as F32 tensor `tensor`, and, when
/// `carried` comes from a `.safetensors` input, that file's other tensors
/// and metadata unchanged.
///
/// With `state`, the run state goes beside the table: into the metadata of a
/// `.safetensors` file, or into `FILE.npy.state.json`, both files written
/// before either replaces anything (`npy::commit`).
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
                files.push(npy::stage(&state_sidecar(path), |w| std::io::Write::write_all(w, text.as_bytes()))?);
            }
            files.push(npy::stage_table(path, shape, data)?);
            Ok(files)
        }
        Format::Safetensors => {
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
            if let Some(text) = state_json {
                metadata.get_or_insert_with(HashMap::new).insert(STATE_KEY.to_owned(), text);
            }
            let out = safetensors::tensor::serialize(tensors, metadata)
                .map_err(|e| Error::bad_file(path, format!("cannot encode the file: {e}")))?;
            Ok(vec![npy::stage(path, |w| std::io::Write::write_all(w, &out))?])
        }
    }
}
