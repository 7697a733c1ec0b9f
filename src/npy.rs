//! `.npy` tables (SPEC §12): 2-D, C order, little-endian f32 (f64 accepted
//! and converted). Every check runs against the header and the file's real
//! size before any allocation, and names the file. Hand-written because the
//! format is a few lines and we need exactly these checks in exactly this
//! order; saving is atomic (see [`save_atomic`]).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use crate::config::Shape;
use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A table read from a file.
#[derive(Debug)]
pub struct Loaded {
    pub shape: Shape,
    pub data: Vec<f32>,
    /// Set when the values were converted (e.g. from f64).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    /// Little-endian float32, float64: tables.
    F32,
    F64,
    /// Integers of 1, 2, 4 or 8 bytes, either byte order: indices.
    Int {
        bytes: u8,
        signed: bool,
        big: bool,
    },
}

impl Dtype {
    fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Int { bytes, .. } => bytes as u64,
        }
    }

    /// An integer's value, widened (u64 beyond i64 saturates: out of range
    /// for any table anyway).
    fn int_at(self, c: &[u8]) -> i64 {
        let Dtype::Int { bytes, signed, big } = self else { unreachable!("an integer dtype") };
        let mut b = [0u8; 8];
        let n = bytes as usize;
        if big {
            b[..n].copy_from_slice(c);
            b[..n].reverse();
        } else {
            b[..n].copy_from_slice(c);
        }
        // Sign-extend from the top bit of the value's own width.
        if signed && b[n - 1] & 0x80 != 0 {
            b[n..].fill(0xff);
        }
        let v = u64::from_le_bytes(b);
        if signed {
            v as i64
        } else {
            v.min(i64::MAX as u64) as i64
        }
    }
}

/// An open `.npy` file positioned at its data, with its parsed header.
struct Opened {
    file: File,
    dtype: Dtype,
    dims: Vec<u64>,
    /// Data bytes the file really holds (after the header).
    data_bytes: u64,
}

/// Reads and checks the magic, the version and the header, against the
/// file's real size, before anything is allocated for the data.
fn open(path: &Path) -> Result<Opened> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut pre = [0u8; 8];
    read_exact_or(&mut file, &mut pre, || bad(format!("not a .npy file: only {file_len} bytes")))?;
    if &pre[..6] != MAGIC {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let (major, minor) = (pre[6], pre[7]);
    let header_len = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or(&mut file, &mut b, || bad("truncated .npy header".into()))?;
            u16::from_le_bytes(b) as u64
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or(&mut file, &mut b, || bad("truncated .npy header".into()))?;
            u32::from_le_bytes(b) as u64
        }
        _ => return Err(bad(format!("unsupported .npy version {major}.{minor}"))),
    };
    let prefix = 8 + if major == 1 { 2 } else { 4 };
    if prefix + header_len > file_len {
        return Err(bad(format!("truncated: the header claims {header_len} bytes but the file has {file_len} in all")));
    }
    let mut header = vec![0u8; header_len as usize];
    read_exact_or(&mut file, &mut header, || bad("truncated .npy header".into()))?;
    let header = String::from_utf8(header).map_err(|_| bad("the .npy header is not text".into()))?;
    let (dtype, dims) = parse_header(&header).map_err(bad)?;
    let data_bytes = file_len - prefix - header_len;
    let want = dims
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
    if data_bytes != want {
        let what = if data_bytes < want { "truncated" } else { "has trailing bytes" };
        return Err(bad(format!(
            "{what}: shape {dims:?} of {} needs {want} data bytes, the file has {data_bytes}",
            dtype_name(dtype)
        )));
    }
    Ok(Opened { file, dtype, dims, data_bytes })
}

/// Integer indices read from a `.npy` file (SPEC §10's `--indices`).
#[derive(Debug)]
pub struct Indices {
    /// 1-D: `[n]`; 2-D: `[batches, n]`.
    pub dims: Vec<u64>,
    /// Row-major values, widened to i64.
    pub values: Vec<i64>,
}

/// Reads a 1-D or 2-D `.npy` file of integer row indices (any width,
/// signed or not, either byte order).
pub fn load_indices(path: &Path) -> Result<Indices> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let Opened { mut file, dtype, dims, data_bytes } = open(path)?;
    if !matches!(dtype, Dtype::Int { .. }) {
        return Err(bad(format!("indices must be integers, found {}", dtype_name(dtype))));
    }
    if dims.is_empty() || dims.len() > 2 {
        return Err(bad(format!("expected 1-D (one batch) or 2-D (a batch per row) indices, found shape {dims:?}")));
    }
    if dims.contains(&0) {
        return Err(bad(format!("an index file of shape {dims:?} holds no batch")));
    }
    let item = dtype.size() as usize;
    // The size check above ties the count to the file's real size.
    let n = (data_bytes / item as u64) as usize;
    let mut values = Vec::with_capacity(n);
    let mut block = vec![0u8; item * 65_536];
    let mut left = n;
    while left > 0 {
        let m = left.min(65_536);
        let bytes = &mut block[..m * item];
        read_exact_or(&mut file, bytes, || bad("truncated while reading the data".into()))?;
        values.extend(bytes.chunks_exact(item).map(|c| dtype.int_at(c)));
        left -= m;
    }
    Ok(Indices { dims, values })
}

/// Reads a 2-D f32/f64 `.npy` table.
pub fn load(path: &Path) -> Result<Loaded> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let Opened { mut file, dtype, dims, .. } = open(path)?;
    if !matches!(dtype, Dtype::F32 | Dtype::F64) {
        return Err(bad(format!(
            "unsupported dtype {}: a table is little-endian float32 ('<f4') or float64 ('<f8')",
            dtype_name(dtype)
        )));
    }
    if dims.len() != 2 {
        return Err(bad(format!("expected a 2-D table (rows, dim), found {} dimension(s) {:?}", dims.len(), dims)));
    }
    let shape = Shape::new(dims[0] as usize, dims[1] as usize).map_err(|e| bad(e.to_string()))?;
    let n = (dims[0] * dims[1]) as usize;
    let mut data = vec![0f32; n];
    let note = match dtype {
        Dtype::F32 => {
            // Straight into the table: no second copy of the data.
            read_exact_or(&mut file, bytemuck::cast_slice_mut(&mut data), || {
                bad("truncated while reading the data".into())
            })?;
            if cfg!(target_endian = "big") {
                data.iter_mut().for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
            }
            None
        }
        _ => {
            // float64, converted in bounded blocks.
            let mut block = vec![0u8; 8 * 65_536];
            for out in data.chunks_mut(65_536) {
                let bytes = &mut block[..out.len() * 8];
                read_exact_or(&mut file, bytes, || bad("truncated while reading the data".into()))?;
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
                }
            }
            Some(format!("{}: converted float64 to float32", path.display()))
        }
    };
    Ok(Loaded { shape, data, note })
}

fn dtype_name(d: Dtype) -> String {
    match d {
        Dtype::F32 => "float32".into(),
        Dtype::F64 => "float64".into(),
        Dtype::Int { bytes, signed, big } => {
            format!("{}int{}{}", if signed { "" } else { "u" }, bytes * 8, if big { " (big-endian)" } else { "" })
        }
    }
}

fn read_exact_or(f: &mut File, buf: &mut [u8], err: impl FnOnce() -> Error) -> Result<()> {
    f.read_exact(buf).map_err(|_| err())
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (R, D), }`.
fn parse_header(h: &str) -> std::result::Result<(Dtype, Vec<u64>), String> {
    let value = |key: &str| -> std::result::Result<&str, String> {
        let k = format!("'{key}':");
        let at = h.find(&k).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        Ok(h[at + k.len()..].trim_start())
    };
    let descr = value("descr")?;
    let descr =
        descr.strip_prefix('\'').and_then(|s| s.split('\'').next()).ok_or("malformed 'descr' in the .npy header")?;
    let int = |order: &str, kind: &str, n: &str| -> Option<Dtype> {
        let bytes = match n {
            "1" => 1,
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return None,
        };
        // '|' (no order) only for single bytes; '=' is this machine's.
        let big = match order {
            "<" => false,
            ">" => true,
            "=" => cfg!(target_endian = "big"),
            "|" if bytes == 1 => false,
            _ => return None,
        };
        Some(Dtype::Int { bytes, signed: kind == "i", big })
    };
    let dtype = match descr {
        "<f4" => Some(Dtype::F32),
        "<f8" => Some(Dtype::F64),
        d if d.len() == 3 && d.is_ascii() && matches!(&d[1..2], "i" | "u") => int(&d[..1], &d[1..2], &d[2..]),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "unsupported dtype '{descr}': expected little-endian float32 ('<f4') or float64 ('<f8'), \
             or for indices an integer type (e.g. '<i4', '<i8', '<u4')"
        )
    })?;
    let fortran = value("fortran_order")?;
    if fortran.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported: save with numpy.ascontiguousarray".into());
    } else if !fortran.starts_with("False") {
        return Err("malformed 'fortran_order' in the .npy header".into());
    }
    let shape = value("shape")?;
    let inner =
        shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("malformed 'shape' in the .npy header")?;
    let dims = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L').parse::<u64>().map_err(|_| format!("malformed dimension '{s}' in the .npy shape"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((dtype, dims))
}

/// The `.npy` encoding of a 2-D f32 table.
pub fn encode(shape: Shape, data: &[f32], out: &mut impl Write) -> std::io::Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", shape.rows, shape.dim);
    // Pad so that the data starts on a 64-byte boundary, as numpy does.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for chunk in data.chunks(1 << 16) {
        out.write_all(bytemuck::cast_slice(chunk))?;
    }
    Ok(())
}

/// Saves a table as `.npy`, atomically.
pub fn save(path: &Path, shape: Shape, data: &[f32]) -> Result<()> {
    save_atomic(path, |w| encode(shape, data, w))
}

/// Writes `path` atomically: a temporary file in the same folder, written,
/// flushed and synced, then renamed over `path`. An interrupted or failed
/// write leaves either the old file or none, never a partial one.
pub fn save_atomic(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".latent-line-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w).and_then(|_| w.flush()).map_err(|e| Error::io(path, e))?;
    }
    // tempfile creates 0600; give the result the old file's permissions, or
    // the usual 0644 for a new one.
    if let Some(perms) = std::fs::metadata(path).map(|m| m.permissions()).ok().or_else(default_permissions) {
        tmp.as_file().set_permissions(perms).map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(unix)]
fn default_permissions() -> Option<std::fs::Permissions> {
    Some(std::os::unix::fs::PermissionsExt::from_mode(0o644))
}

#[cfg(not(unix))]
fn default_permissions() -> Option<std::fs::Permissions> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indices of every integer width, signed or not, in either byte order,
    /// read as numpy wrote them (values chosen to show the sign, the width
    /// and the order).
    #[test]
    fn indices_of_every_integer_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let values: [i64; 4] = [0, 1, 100, 127];
        for bytes in [1usize, 2, 4, 8] {
            for signed in [true, false] {
                for (order, big) in [("<", false), (">", true), ("|", false), ("=", cfg!(target_endian = "big"))] {
                    if order == "|" && bytes != 1 {
                        continue; // '|' is for single bytes only
                    }
                    let descr = format!("{order}{}{bytes}", if signed { "i" } else { "u" });
                    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (4,), }}\n");
                    let mut f = MAGIC.to_vec();
                    f.extend([1, 0]);
                    f.extend((header.len() as u16).to_le_bytes());
                    f.extend(header.as_bytes());
                    for v in values {
                        let le = (v as u64).to_le_bytes();
                        let mut b = le[..bytes].to_vec();
                        if big {
                            b.reverse();
                        }
                        f.extend(b);
                    }
                    let path = dir.path().join(format!("i{bytes}{signed}{big}.npy"));
                    std::fs::write(&path, &f).unwrap();
                    let got = load_indices(&path).unwrap_or_else(|e| panic!("{descr}: {e}"));
                    assert_eq!(got.values, values, "{descr}");
                }
            }
        }
        // A negative signed value stays negative (and is then refused by
        // position, as out of range); a huge unsigned one saturates.
        let t = Dtype::Int { bytes: 2, signed: true, big: true };
        assert_eq!(t.int_at(&[0xff, 0xfe]), -2);
        assert_eq!(Dtype::Int { bytes: 8, signed: false, big: false }.int_at(&[0xff; 8]), i64::MAX);
        assert_eq!(Dtype::Int { bytes: 1, signed: true, big: false }.int_at(&[0x80]), -128);
    }

    #[test]
    fn round_trip_and_header_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        let shape = Shape::new(3, 5).unwrap();
        let data: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect();
        save(&path, shape, &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let back = load(&path).unwrap();
        assert_eq!(back.shape, shape);
        assert_eq!(back.data, data);
        assert!(back.note.is_none());
    }

    #[test]
    fn header_parser_rejects_what_it_must() {
        assert!(parse_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }")
            .unwrap_err()
            .contains("'>f4'"));
        assert!(parse_header("{'descr': '<i3', 'fortran_order': False, 'shape': (2, 3), }").is_err());
        assert!(parse_header("{'descr': '|i4', 'fortran_order': False, 'shape': (2, 3), }").is_err());
        assert!(parse_header("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }").is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }")
            .unwrap_err()
            .contains("Fortran"));
        assert_eq!(parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }").unwrap().1, vec![7]);
        assert_eq!(
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }").unwrap(),
            (Dtype::F64, vec![2, 3])
        );
    }
}
