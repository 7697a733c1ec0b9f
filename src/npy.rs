//! `.npy` tables (SPEC §12): 2-D, C order, little-endian f32 (f64 accepted
//! and converted). Every check runs against the header and the file's real
//! size before any allocation, and names the file. Hand-written because the
//! format is a few lines and we need exactly these checks in exactly this
//! order; saving is atomic (see [`save_atomic`]).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::Shape;
use crate::error::{Error, Result};
use crate::tables::reader::{Elem, Origin, TableReader};
use crate::tables::Fingerprinter;
use crate::trainer::Fill;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A table read from a file.
#[derive(Debug)]
pub struct Loaded {
    pub shape: Shape,
    pub data: Vec<f32>,
    /// Set when the values were converted (e.g. from f64).
    pub note: Option<String>,
}

/// What a `.npy` file is opened as: its errors say what was expected.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Holds {
    Table,
    Indices,
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

    /// An integer's value, widened: every width, signed or not, exactly
    /// (so an error names the value the file holds).
    fn int_at(self, c: &[u8]) -> i128 {
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
            v as i64 as i128
        } else {
            v as i128
        }
    }
}

/// An open `.npy` file positioned at its data, with its parsed header.
struct Opened {
    file: File,
    dtype: Dtype,
    dims: Vec<u64>,
    /// Column-major data (only index files may be: `parse_header`).
    fortran: bool,
    /// Data bytes the file really holds (after the header).
    data_bytes: u64,
}

/// Reads and checks the magic, the version and the header, against the
/// file's real size, before anything is allocated for the data.
fn open(path: &Path, what: Holds) -> Result<Opened> {
    let bad = |reason: String| Error::bad_file(path, reason);
    // Its kind by name, before it is opened: opening a pipe that has no
    // writer would wait for one, forever.
    let not_regular = |meta: &std::fs::Metadata| match () {
        _ if meta.is_dir() => Some(Error::bad_file(path, "a folder, not a .npy file")),
        // (Its size is checked against the header before anything is read.)
        _ if !meta.is_file() => {
            Some(Error::bad_file(path, "not a regular file (a pipe or a device): a .npy file is read from disk"))
        }
        _ => None,
    };
    if let Some(e) = not_regular(&std::fs::metadata(path).map_err(|e| Error::io(path, e))?) {
        return Err(e);
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if let Some(e) = not_regular(&meta) {
        return Err(e);
    }
    let file_len = meta.len();
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
    let (dtype, dims, fortran) = parse_header(&header, what).map_err(bad)?;
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
    Ok(Opened { file, dtype, dims, fortran, data_bytes })
}

/// Integer indices read from a `.npy` file (SPEC §10's `--indices`).
#[derive(Debug)]
pub struct Indices {
    /// 1-D: `[n]`; 2-D: `[batches, n]`.
    pub dims: Vec<u64>,
    /// Row-major values, each a row of the table.
    pub values: Vec<u32>,
}

/// An empty vector with room for `n` values read from `path` (`what`
/// they are, for the message): a host that cannot hold them is an error
/// naming the file (exit 1), not an abort.
pub(crate) fn host_vec<T>(path: &Path, n: u64, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    usize::try_from(n).ok().and_then(|n| v.try_reserve_exact(n).ok()).ok_or_else(|| {
        let bytes = n.saturating_mul(std::mem::size_of::<T>() as u64);
        Error::bad_file(path, format!("{what}: {bytes} bytes of host memory, which this host cannot give"))
    })?;
    Ok(v)
}

/// Why index `v` at `at` (`[j]`, or `[i, j]`) is not a row of a table of
/// `rows` rows.
pub fn index_out_of_range(at: &str, v: i128, rows: usize) -> String {
    format!("index {at} is {v}, out of range for a table of {rows} rows (valid: 0..={})", rows.saturating_sub(1))
}

/// Reads a 1-D or 2-D `.npy` file of integer row indices (any width,
/// signed or not, either byte order; C or Fortran order, as numpy saves a
/// transposed array), each checked to be a row of a table of `rows` rows
/// as it is read (4 bytes an index in memory, whatever the file's width);
/// one that is not is refused by its position in the array, the first in
/// row order.
pub fn load_indices(path: &Path, rows: usize) -> Result<Indices> {
    let bad = |reason: String| Error::bad_file(path, reason);
    let Opened { mut file, dtype, dims, fortran, data_bytes } = open(path, Holds::Indices)?;
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
    let width = *dims.last().expect("1-D or 2-D") as usize;
    let height = n / width;
    let mut values: Vec<u32> = host_vec(path, n as u64, &format!("{n} indices"))?;
    values.resize(n, 0);
    // The k-th value of the file: its place in row order (a column-major
    // 2-D file's k-th is row k % height, column k / height).
    let place = |k: usize| if fortran && dims.len() == 2 { (k % height) * width + k / height } else { k };
    // The first out-of-range index in row order, with its value: in a C
    // order file the first met, in a Fortran one the least place of all.
    let mut first_bad: Option<(usize, i128)> = None;
    let mut block = vec![0u8; item * 65_536];
    let mut k = 0;
    while k < n {
        let m = (n - k).min(65_536);
        let bytes = &mut block[..m * item];
        read_exact_or(&mut file, bytes, || bad("truncated while reading the data".into()))?;
        for c in bytes.chunks_exact(item) {
            let (v, at) = (dtype.int_at(c), place(k));
            if v < 0 || v >= rows as i128 {
                if first_bad.is_none_or(|(b, _)| at < b) {
                    first_bad = Some((at, v));
                }
            } else {
                values[at] = v as u32;
            }
            k += 1;
        }
        if first_bad.is_some() && !fortran {
            break;
        }
    }
    if let Some((k, v)) = first_bad {
        let at = if dims.len() == 2 { format!("[{}, {}]", k / width, k % width) } else { format!("[{k}]") };
        return Err(bad(index_out_of_range(&at, v, rows)));
    }
    Ok(Indices { dims, values })
}

/// The bits of element `index` (row-major) of a float64 `.npy` table as
/// the file holds them; `None` for a float32 one, whose loaded values are
/// its own bits (`latent-line scan` names a finding by the file's bits).
pub fn element_bits(path: &Path, index: u64) -> Result<Option<u64>> {
    use std::io::{Read as _, Seek as _};
    let Opened { mut file, dtype, data_bytes, .. } = open(path, Holds::Table)?;
    if dtype != Dtype::F64 {
        return Ok(None);
    }
    if index >= data_bytes / 8 {
        return Err(Error::bad_file(path, format!("no element {index}")));
    }
    let mut b = [0u8; 8];
    file.seek(std::io::SeekFrom::Current(index as i64 * 8))
        .and_then(|_| file.read_exact(&mut b))
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(u64::from_le_bytes(b)))
}

/// What a float64 value beyond float32's range becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// ±Inf, as a cast gives (a table to train: its scan reports them).
    Inf,
    /// ±f32::MAX: the file holds a finite value there (`latent-line scan`,
    /// which reports the file's own NaN and ±Inf, and these apart).
    Saturate,
}

/// Reads a 2-D f32/f64 `.npy` table.
pub fn load(path: &Path) -> Result<Loaded> {
    load_as(path, Overflow::Inf)
}

/// `load`, float64 values beyond float32's range becoming as `overflow` says.
pub fn load_as(path: &Path, overflow: Overflow) -> Result<Loaded> {
    load_rows(path, overflow, 2)
}

/// `load_as` of a table of at least `min_rows` rows (1 to scan it).
pub fn load_rows(path: &Path, overflow: Overflow, min_rows: usize) -> Result<Loaded> {
    let mut r = open_table(path, overflow, min_rows)?;
    let data = r.read_all()?;
    Ok(Loaded { shape: r.shape, data, note: r.note() })
}

/// A 2-D f32/f64 `.npy` table of at least `min_rows` rows, checked and
/// opened for its values to stream (float64 values beyond float32's range
/// becoming as `overflow` says).
pub fn open_table(path: &Path, overflow: Overflow, min_rows: usize) -> Result<TableReader> {
    use std::io::Seek as _;
    let bad = |reason: String| Error::bad_file(path, reason);
    let Opened { mut file, dtype, dims, .. } = open(path, Holds::Table)?;
    let elem = match dtype {
        Dtype::F32 => Elem::F32,
        Dtype::F64 => Elem::F64,
        _ => {
            return Err(bad(format!(
                "unsupported dtype {}: a table is little-endian float32 ('<f4') or float64 ('<f8')",
                dtype_name(dtype)
            )))
        }
    };
    if dims.len() != 2 {
        return Err(bad(format!("expected a 2-D table (rows, dim), found {} dimension(s) {:?}", dims.len(), dims)));
    }
    let shape = Shape::of_file_from(dims[0] as usize, dims[1] as usize, min_rows).map_err(bad)?;
    let at = file.stream_position().map_err(|e| Error::io(path, e))?;
    Ok(TableReader::new(file, path, Origin::Npy, at, shape, elem, overflow))
}

/// f64 → f32, counting the finite values too large for f32 (±Inf, which
/// the scan of the loaded table then reports, or ±f32::MAX: `overflow`).
pub fn f64_to_f32(v: f64, overflowed: &mut u64, overflow: Overflow) -> f32 {
    let f = v as f32;
    if f.is_infinite() && v.is_finite() {
        *overflowed += 1;
        if overflow == Overflow::Saturate {
            return f32::MAX.copysign(f);
        }
    }
    f
}

/// What a conversion note adds when values overflowed f32.
pub fn overflow_note(overflowed: u64, overflow: Overflow) -> String {
    match (overflowed, overflow) {
        (0, _) => String::new(),
        (n, Overflow::Inf) => {
            format!(" ({n} finite value{} beyond float32's range became ±Inf)", crate::diagnose::plural(n))
        }
        (n, Overflow::Saturate) => format!(
            " ({n} finite value{} beyond float32's range, which loading for training makes ±Inf; scanned as finite, \
             as the file holds them)",
            crate::diagnose::plural(n)
        ),
    }
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

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (R, D), }`:
/// the header's dictionary, as numpy writes it and reads it back (a Python
/// literal): exactly the keys 'descr', 'fortran_order' and 'shape', each
/// once, and nothing before or after it but spaces (numpy refuses other
/// keys and any other text; a key given twice, which Python would take
/// the last of, is refused rather than read either way).
/// Returns the dtype, the shape and whether the data are column-major:
/// only an index file's may be (read whole, then put in row order); a
/// table streams in row order, so one of those is refused.
fn parse_header(h: &str, what: Holds) -> std::result::Result<(Dtype, Vec<u64>, bool), String> {
    let mut p = HeaderCursor { s: h.as_bytes(), i: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        let twice = || format!("the .npy header gives '{key}' twice");
        match key.as_str() {
            "descr" => {
                // (numpy writes a structured dtype as a list of fields.)
                p.skip_spaces();
                if p.s.get(p.i) == Some(&b'[') {
                    return Err(match what {
                        Holds::Table => "a structured dtype (named fields) is not supported: a table is a plain 2-D \
                                         float32 or float64 array"
                            .into(),
                        Holds::Indices => "a structured dtype (named fields) is not supported: indices are a plain \
                                           integer array"
                            .into(),
                    });
                }
                descr.replace(p.string()?).map_or(Ok(()), |_| Err(twice()))?
            }
            "fortran_order" => fortran.replace(p.boolean()?).map_or(Ok(()), |_| Err(twice()))?,
            "shape" => shape.replace(p.tuple()?).map_or(Ok(()), |_| Err(twice()))?,
            other => return Err(format!("unexpected key '{other}' in the .npy header")),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    if !p.at_end() {
        return Err("text after the .npy header's dictionary".into());
    }
    let missing = |key: &str| format!("the .npy header has no '{key}'");
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran = fortran.ok_or_else(|| missing("fortran_order"))?;
    let dims = shape.ok_or_else(|| missing("shape"))?;
    let int = |order: &str, kind: &str, n: &str| -> Option<Dtype> {
        let bytes = match n {
            "1" => 1,
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return None,
        };
        // '=' is this machine's order, and so is '|' (no order), as numpy
        // reads it.
        let big = match order {
            "<" => false,
            ">" => true,
            "=" | "|" => cfg!(target_endian = "big"),
            _ => return None,
        };
        Some(Dtype::Int { bytes, signed: kind == "i", big })
    };
    // (numpy writes '<f4'; '=f4' and '|f4' are this machine's order, as
    // numpy reads them: little-endian here or refused.)
    let native = cfg!(target_endian = "little");
    let dtype = match descr.as_str() {
        "<f4" => Some(Dtype::F32),
        "<f8" => Some(Dtype::F64),
        "=f4" | "|f4" if native => Some(Dtype::F32),
        "=f8" | "|f8" if native => Some(Dtype::F64),
        d if d.len() == 3 && d.is_ascii() && matches!(&d[1..2], "i" | "u") => int(&d[..1], &d[1..2], &d[2..]),
        _ => None,
    }
    .ok_or_else(|| match what {
        Holds::Table => format!(
            "unsupported dtype '{descr}': a table is little-endian float32 ('<f4') or float64 ('<f8'){}",
            // (Big-endian floats, float16: numpy converts them.)
            if matches!(descr.as_str(), ">f4" | ">f8" | "<f2" | ">f2" | "|f2") {
                "; convert it with numpy's .astype('<f4')"
            } else {
                ""
            }
        ),
        Holds::Indices => format!("unsupported dtype '{descr}': indices are integers (e.g. '<i4', '<i8', '<u4')"),
    })?;
    if fortran && what == Holds::Table {
        return Err("Fortran-ordered tables are not supported: save with numpy.ascontiguousarray".into());
    }
    Ok((dtype, dims, fortran))
}

/// Reads the Python literals of a `.npy` header, skipping spaces before
/// each token.
struct HeaderCursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl HeaderCursor<'_> {
    fn skip_spaces(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_spaces();
        let hit = self.s.get(self.i) == Some(&c);
        self.i += hit as usize;
        hit
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed .npy header: expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_spaces();
        self.i == self.s.len()
    }

    /// A quoted string ('…' or "…"), without escapes (numpy writes none).
    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_spaces();
        let q = match self.s.get(self.i) {
            Some(&q) if q == b'\'' || q == b'"' => q,
            _ => return Err(format!("malformed .npy header: expected a quoted string at byte {}", self.i)),
        };
        let from = self.i + 1;
        let len = self.s[from..]
            .iter()
            .position(|&c| c == q || c == b'\\')
            .filter(|&n| self.s[from + n] == q)
            .ok_or_else(|| format!("malformed .npy header: unterminated string at byte {}", self.i))?;
        self.i = from + len + 1;
        Ok(String::from_utf8_lossy(&self.s[from..from + len]).into_owned())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.skip_spaces();
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err("malformed 'fortran_order' in the .npy header".into())
    }

    /// A tuple of non-negative integers: `()`, `(7,)`, `(2, 3)`, `(2, 3,)`.
    fn tuple(&mut self) -> std::result::Result<Vec<u64>, String> {
        self.expect(b'(').map_err(|_| "malformed 'shape' in the .npy header".to_string())?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            self.skip_spaces();
            let from = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = String::from_utf8_lossy(&self.s[from..self.i]).into_owned();
            self.i += (self.s.get(self.i) == Some(&b'L')) as usize; // Python 2's long
            let d = digits.parse::<u64>().map_err(|_| {
                let end =
                    self.s[from..].iter().position(|&c| c == b',' || c == b')').map_or(self.s.len(), |n| from + n);
                format!(
                    "malformed dimension '{}' in the .npy shape",
                    String::from_utf8_lossy(&self.s[from..end]).trim()
                )
            })?;
            dims.push(d);
            if !self.eat(b',') {
                self.expect(b')').map_err(|_| "malformed 'shape' in the .npy header".to_string())?;
                // One element needs its comma: `(7)` is an int, not a tuple.
                if dims.len() == 1 {
                    return Err("malformed 'shape' in the .npy header: a one-element tuple is written (n,)".into());
                }
                return Ok(dims);
            }
        }
    }
}

/// The `.npy` encoding of a 2-D f32 table.
pub fn encode(shape: Shape, data: &[f32], out: &mut impl Write) -> std::io::Result<()> {
    // (A file whose header and values disagree could not be loaded back.)
    if data.len() as u64 != shape.elements() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} values for a {} × {} table", data.len(), shape.rows, shape.dim),
        ));
    }
    encode_header(shape, out)?;
    write_f32s(out, data)
}

/// The `.npy` header of a 2-D f32 table (its values follow it).
fn encode_header(shape: Shape, out: &mut impl Write) -> std::io::Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", shape.rows, shape.dim);
    // Pad so that the data starts on a 64-byte boundary, as numpy does.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())
}

/// f32 values as little-endian bytes (both formats store them so).
pub(crate) fn write_f32s(out: &mut impl Write, data: &[f32]) -> std::io::Result<()> {
    for chunk in data.chunks(1 << 16) {
        if cfg!(target_endian = "little") {
            out.write_all(bytemuck::cast_slice(chunk))?;
        } else {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Writes the values `fill` hands over, block by block, as they come: no
/// copy of the whole table is made (a GPU's table streams from its
/// readback blocks into the file). Checked against `shape` (no more and no
/// fewer values than it holds); returns their [`fingerprint`].
pub(crate) fn write_values(out: &mut impl Write, path: &Path, shape: Shape, fill: &mut Fill) -> Result<u64> {
    let want = shape.elements();
    let mut fp = Fingerprinter::new(want);
    let mut got = 0u64;
    let wrong = |got: String| {
        Error::invalid(
            "table",
            format!(
                "{got} values for {} × {}; a table saved to {} holds rows × dim",
                shape.rows,
                shape.dim,
                path.display()
            ),
        )
    };
    fill(&mut |v: &[f32]| {
        got += v.len() as u64;
        if got > want {
            return Err(wrong(format!("{got} or more")));
        }
        fp.update(v);
        write_f32s(out, v).map_err(|e| Error::io(path, e))
    })?;
    if got != want {
        return Err(wrong(format!("only {got}")));
    }
    Ok(fp.finish())
}

/// Saves a table as `.npy`, atomically.
pub fn save(path: &Path, shape: Shape, data: &[f32]) -> Result<()> {
    commit(vec![stage_table(path, shape, data)?])
}

/// Writes `path` atomically: a temporary file in the same folder, written,
/// flushed and synced, then renamed over `path`. An interrupted or failed
/// write leaves either the old file or none, never a partial one.
pub fn save_atomic(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>) -> Result<()> {
    commit(vec![stage(path, write)?])
}

/// A file written in full beside `path` (a temporary file in the same
/// folder, flushed and synced) and not yet renamed over it: see [`commit`].
/// Dropped uncommitted, the temporary file is removed.
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    /// Its temporary file's name, listed while it may still be there.
    _listed: InFlight,
    /// Where the file goes: `path` with its symbolic links followed.
    path: PathBuf,
    /// `path` is not a regular file (a pipe, a terminal, `/dev/stdout`):
    /// written through at commit, since nothing can be renamed over it.
    stream: bool,
}

/// Where a save to `path` goes: `Ok(target)` for a regular file, a folder
/// or nothing yet (replaced atomically: a symbolic link is followed to its
/// target, so the link stays and the file it names is replaced; a folder
/// is for the caller to refuse), `Err(path)` for a file written through
/// in place, appended to: one that exists and is neither a regular file
/// nor a folder (a pipe, a terminal, a device), or any path that goes
/// through a process's open files (`/dev/stdout`, `/dev/fd/N`,
/// `/proc/self/fd/N`), even one redirected to a regular file, which must
/// keep what the process wrote there before.
pub fn destination(path: &Path) -> std::result::Result<PathBuf, PathBuf> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Err(path.to_owned());
    }
    // Follow the links (a dangling one too: the save creates its target).
    let mut p = path.to_owned();
    for _ in 0..40 {
        if is_open_file_link(&p) {
            return Err(path.to_owned());
        }
        match std::fs::read_link(&p) {
            Ok(t) => p = if t.is_absolute() { t } else { folder(&p).join(t) },
            Err(_) => break,
        }
    }
    Ok(p)
}

/// A name of one of a process's open files: /dev/stdout, /dev/stderr,
/// /dev/fd/N, /proc/self/fd/N (and /proc/PID/fd/N, /proc/thread-self/fd/N).
fn is_open_file_link(p: &Path) -> bool {
    let parts: Vec<&str> = p.iter().filter_map(|c| c.to_str()).collect();
    match parts.as_slice() {
        ["/", "dev", "stdout" | "stderr" | "stdin"] => true,
        ["/", "dev", "fd", _] => true,
        ["/", "proc", who, "fd", _] => {
            *who == "self" || *who == "thread-self" || who.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Writes what will become `path`, without touching `path` itself.
pub fn stage(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>) -> Result<Staged> {
    stage_with(path, |w| write(w).map_err(|e| Error::io(path, e)))
}

/// [`stage`], `write` saying its own errors (a table streamed from a GPU
/// may fail there, not in the file).
pub fn stage_with(path: &Path, write: impl FnOnce(&mut BufWriter<&File>) -> Result<()>) -> Result<Staged> {
    let (dest, stream) = match destination(path) {
        Ok(d) => (d, false),
        Err(d) => (d, true),
    };
    // A file written through is staged where temporary files go.
    let dir = if stream { std::env::temp_dir() } else { folder(&dest).to_owned() };
    // Created as any new file is (0666 less the umask: a user's `umask
    // 077` keeps a checkpoint private); a file it replaces gives it its own
    // permissions below. (A copy staged for a file written through stays
    // tempfile's 0600: it is no file of the user's.)
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    if !stream {
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    }
    let (tmp, listed) = InFlight::create(|| builder.prefix(".latent-line-").suffix(".tmp").tempfile_in(&dir))
        .map_err(|e| Error::io(path, e))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    // A file it replaces keeps its permissions. (A file written through
    // keeps its own.)
    if !stream {
        if let Ok(perms) = std::fs::metadata(&dest).map(|m| m.permissions()) {
            tmp.as_file().set_permissions(perms).map_err(|e| Error::io(path, e))?;
        }
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    Ok(Staged { tmp, _listed: listed, path: dest, stream })
}

/// The temporary files of this process's saves that may still be there
/// (staged, not yet renamed, or being written), and its lock files
/// (`claim.rs`): a process that ends at
/// once (a second signal) removes them first (`remove_in_flight`), where
/// they would stay behind. (A name listed that a commit has since renamed
/// names nothing.)
static IN_FLIGHT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A name in `IN_FLIGHT` while this lives.
pub(crate) struct InFlight(PathBuf);

impl InFlight {
    /// A temporary file made by `make`, listed: under the list's lock, so
    /// that a process ending at once (which holds it) leaves none unlisted.
    fn create(
        make: impl FnOnce() -> std::io::Result<tempfile::NamedTempFile>,
    ) -> std::io::Result<(tempfile::NamedTempFile, InFlight)> {
        let mut all = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = make()?;
        all.push(tmp.path().to_owned());
        let listed = InFlight(tmp.path().to_owned());
        Ok((tmp, listed))
    }

    /// `path` listed (a run's lock file, once held: `claim.rs`).
    pub(crate) fn list(path: &Path) -> InFlight {
        IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_owned());
        InFlight(path.to_owned())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut all = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = all.iter().position(|p| *p == self.0) {
            all.swap_remove(i);
        }
    }
}

/// Removes the temporary files of the saves in flight and the run's lock
/// files (`IN_FLIGHT`), then
/// runs `end`, which ends the process, with the list still held: a save
/// cannot stage another meanwhile. A checkpoint killed between its renames
/// keeps what a resume recovers from: the old files replaced
/// (`.latent-line-old-*`, not listed here) and the set not yet begun.
pub fn remove_in_flight_and_end(end: impl FnOnce() -> std::convert::Infallible) -> ! {
    let held = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    for p in held.iter() {
        let _ = std::fs::remove_file(p);
    }
    match end() {}
}

/// A table of `shape` may be saved to `path`: one that could be loaded
/// back (`Shape::of_file_from`'s rules, at least one row).
pub(crate) fn check_saved_shape(path: &Path, shape: Shape) -> Result<()> {
    if shape.rows == 0 {
        return Err(Error::bad_file(path, "a table of 0 rows: nothing to save"));
    }
    Shape::of_file_from(shape.rows, shape.dim, 1).map(|_| ()).map_err(|e| Error::bad_file(path, e))
}

/// A table staged as `.npy` for `path`.
pub fn stage_table(path: &Path, shape: Shape, data: &[f32]) -> Result<Staged> {
    check_saved_shape(path, shape)?;
    if data.len() as u64 != shape.elements() {
        return Err(Error::invalid(
            "table",
            format!(
                "{} values for {} × {}; a table saved to {} holds rows × dim",
                data.len(),
                shape.rows,
                shape.dim,
                path.display()
            ),
        ));
    }
    stage_table_from(path, shape, &mut |sink| sink(data)).map(|(staged, _)| staged)
}

/// A table staged as `.npy` for `path` from the values `fill` hands over a
/// block at a time, with their [`fingerprint`](crate::tables::fingerprint).
pub fn stage_table_from(path: &Path, shape: Shape, fill: &mut Fill) -> Result<(Staged, u64)> {
    // A file that could not be loaded back is never written (nor over a
    // good one); the shape's own rules first (its fields are public: its
    // size may not even fit 64 bits).
    check_saved_shape(path, shape)?;
    let mut fp = 0;
    let staged = stage_with(path, |w| {
        encode_header(shape, w).map_err(|e| Error::io(path, e))?;
        fp = write_values(w, path, shape, fill)?;
        Ok(())
    })?;
    Ok((staged, fp))
}

/// Renames staged files over their paths, in order: files that belong
/// together (a checkpoint's table, its run state and its sidecars) are all
/// written before any is replaced, so a full disk or a failed write leaves
/// every old file as it was. If a rename fails, the files already renamed
/// get their old contents back (kept until then under a hard link), so a
/// failure leaves the set as it was, not half new (a file written through,
/// a pipe, goes first and cannot be taken back: `commit_then`). Only a kill between the
/// renames themselves (microseconds) can mix the two sets, and `--resume`
/// refuses a mixture by its fingerprints. Two processes saving to the same
/// paths take turns (`lock_folders`): each one's set lands whole.
pub fn commit(files: Vec<Staged>) -> Result<()> {
    commit_then(files, || ())
}

/// [`commit`], then `after` (a checkpoint's clean-up of the sidecars it no
/// longer has) while the folders are still held: another run's commit
/// into them cannot link a file this one is removing.
///
/// Files that are not regular ones (a pipe, a terminal) are written
/// through first, before any rename and outside the folders' locks: such
/// a write cannot be undone, and may wait on a reader for ever, so the
/// files renamed after it are still as they were while it waits (a second
/// signal then ends the save with the whole set old) and a failure leaves
/// nothing to put back; another run's save into the folder does not wait
/// on it.
pub fn commit_then(files: Vec<Staged>, after: impl FnOnce()) -> Result<()> {
    let (streams, files): (Vec<Staged>, Vec<Staged>) = files.into_iter().partition(|f| f.stream);
    for f in &streams {
        write_through(&f.path, f.tmp.path()).map_err(|e| Error::io(&f.path, e))?;
    }
    let _turn = lock_folders(files.iter().map(|f| folder(&f.path).to_path_buf()).collect());
    renames(files)?;
    after();
    Ok(())
}

/// Renames the staged regular files over their paths (see [`commit`]).
fn renames(files: Vec<Staged>) -> Result<()> {
    let mut done: Vec<(PathBuf, Old)> = Vec::new();
    for f in files {
        let old = match keep_old(&f.path) {
            Ok(o) => o,
            Err(e) => {
                undo(done);
                return Err(Error::io(&f.path, e));
            }
        };
        if let Err(e) = f.tmp.persist(&f.path) {
            // The old file is still in place; its link (if any) goes.
            drop(old);
            undo(done);
            return Err(Error::io(&f.path, e.error));
        }
        done.push((f.path, old));
    }
    // Committed: dropping the old contents' links removes them.
    Ok(())
}

/// Exclusive locks (`flock`) on `folders`, each once, in order (so two
/// processes never wait on each other's second), held until dropped: the
/// renames of one commit are not interleaved with another process's into
/// the same folder (two runs saving one checkpoint at once mixed their
/// tables and run states, or one failed linking a file the other had just
/// replaced). Best effort: a folder that cannot be opened or locked (a file
/// system without locks; folders are not files on every system) is not
/// waited for.
fn lock_folders(mut folders: Vec<PathBuf>) -> Vec<File> {
    folders.sort();
    folders.dedup();
    let mut held: Vec<File> = Vec::new();
    for d in folders {
        let Ok(f) = File::open(&d) else { continue };
        // One folder by two names is locked once: a second lock of it from
        // this process, on another open file, would wait for the first.
        if held.iter().any(|h| same_open_file(h, &f)) {
            continue;
        }
        if f.lock().is_ok() {
            held.push(f);
        }
    }
    held
}

/// Whether two open files are one: the same device and inode (off unix,
/// never: nothing to compare).
pub(crate) fn same_open_file(a: &File, b: &File) -> bool {
    let id = |f: &File| f.metadata().ok().and_then(|m| file_id(&m));
    id(a).is_some_and(|i| id(b) == Some(i))
}

/// A file's identity: its device and inode (none off unix, where there is
/// nothing to compare). What the folder locks, the claims and the checks
/// of one file by two names compare.
pub fn file_id(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        None
    }
}

/// Copies the file `from` into `path`, which is not replaced: this
/// process's standard output or error through their own handles (so what
/// follows lands after it, and what came before stays: `>> run.log`),
/// anything else opened to append.
fn write_through(path: &Path, from: &Path) -> std::io::Result<()> {
    let mut src = File::open(from)?;
    if is_stream(path, Stream::Stdout) {
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut src, &mut out)?;
        return out.flush();
    }
    if is_stream(path, Stream::Stderr) {
        let mut err = std::io::stderr().lock();
        std::io::copy(&mut src, &mut err)?;
        return err.flush();
    }
    let mut to = std::fs::OpenOptions::new().append(true).open(path)?;
    std::io::copy(&mut src, &mut to)?;
    to.flush()
}

/// This process's standard output or error.
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whether `path` is the file `stream` writes to (`/dev/stdout`, its
/// `/proc/self/fd/1`, or the file or pipe it is redirected to): the same
/// device and inode. (Not on other systems: false.)
pub fn is_stream(path: &Path, stream: Stream) -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let fd = match stream {
            Stream::Stdout => std::io::stdout().as_fd().try_clone_to_owned(),
            Stream::Stderr => std::io::stderr().as_fd().try_clone_to_owned(),
        };
        let of_fd = fd.ok().and_then(|o| File::from(o).metadata().ok());
        match (std::fs::metadata(path), of_fd) {
            (Ok(p), Some(o)) => file_id(&p) == file_id(&o),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, stream);
        false
    }
}

/// What was at a path before `commit` renamed over it.
enum Old {
    /// No file: undone by removing the new one.
    Absent,
    /// A hard link to the old contents, under a temporary name.
    Kept(tempfile::TempPath),
    /// A file that could not be linked (a file system without hard
    /// links): the new one stays.
    Unkept,
}

fn keep_old(path: &Path) -> std::io::Result<Old> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(Old::Absent);
    }
    // A fresh unique name: create it, remove the file, link the old
    // contents under the name.
    let name = tempfile::Builder::new().prefix(".latent-line-old-").tempfile_in(folder(path))?.into_temp_path();
    std::fs::remove_file(&name)?;
    match std::fs::hard_link(path, &name) {
        Ok(()) => Ok(Old::Kept(name)),
        Err(e) => {
            // Nothing is at `name`: forget it without removing anything.
            let _ = name.keep();
            // A file system without hard links (or not for this file) goes
            // on unkept; a file gone since it was seen (removed by another
            // program) was not there; anything else (a full disk) stops
            // the commit before it renames.
            use std::io::ErrorKind::{CrossesDevices, NotFound, PermissionDenied, Unsupported};
            match e.kind() {
                NotFound => Ok(Old::Absent),
                Unsupported | PermissionDenied | CrossesDevices => Ok(Old::Unkept),
                _ => Err(e),
            }
        }
    }
}

/// Puts back what `commit` had renamed, newest first.
fn undo(done: Vec<(PathBuf, Old)>) {
    for (path, old) in done.into_iter().rev() {
        match old {
            Old::Kept(b) => {
                // Put back; if even that fails, the old contents stay under
                // the link's name rather than be removed with it.
                if let Err(e) = b.persist(&path) {
                    let _ = e.path.keep();
                }
            }
            Old::Absent => {
                let _ = std::fs::remove_file(&path);
            }
            Old::Unkept => {}
        }
    }
}

/// The folder `path` is in (`.` for a bare name).
pub(crate) fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shape no check has passed (its fields are public) is refused by an
    /// error, never an overflow: its element count saturates, so a length
    /// never matches it; `encode` refuses values that disagree with its
    /// header (the file could not be loaded back).
    #[test]
    fn unchecked_shapes_and_short_data_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for shape in [Shape { rows: 1 << 33, dim: 1 << 31 }, Shape { rows: usize::MAX, dim: 2 }] {
            assert_eq!(shape.elements(), u64::MAX);
            let err = crate::tables::save(&dir.path().join("x.npy"), "weight", shape, &[], None, None).unwrap_err();
            assert!(err.to_string().contains("0 values for"), "{err}");
        }
        let mut out = Vec::new();
        let err = encode(Shape::new(4, 3).unwrap(), &[1.0; 5], &mut out).unwrap_err();
        assert!(err.to_string().contains("5 values for a 4 × 3 table"), "{err}");
        assert!(out.is_empty(), "a header was written");
    }

    /// Indices of every integer width, signed or not, in either byte order,
    /// read as numpy wrote them (values chosen to show the sign, the width
    /// and the order).
    #[test]
    fn indices_of_every_integer_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let values: [u32; 4] = [0, 1, 100, 127];
        for bytes in [1usize, 2, 4, 8] {
            for signed in [true, false] {
                // ('|', no order, is read as this machine's, as numpy does.)
                let native = cfg!(target_endian = "big");
                for (order, big) in [("<", false), (">", true), ("|", native), ("=", native)] {
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
                    let got = load_indices(&path, 128).unwrap_or_else(|e| panic!("{descr}: {e}"));
                    assert_eq!(got.values, values, "{descr}");
                }
            }
        }
        // A negative signed value stays negative (and is then refused by
        // position, as out of range); a huge unsigned one keeps its value.
        let t = Dtype::Int { bytes: 2, signed: true, big: true };
        assert_eq!(t.int_at(&[0xff, 0xfe]), -2);
        assert_eq!(Dtype::Int { bytes: 8, signed: false, big: false }.int_at(&[0xff; 8]), u64::MAX as i128);
        assert_eq!(Dtype::Int { bytes: 1, signed: true, big: false }.int_at(&[0x80]), -128);
    }

    /// A 2-D index file in Fortran order (as `np.save` writes a transposed
    /// array) reads as the same array as its C-order twin; an index out of
    /// range is named by the first place in row order, not in the file's.
    #[test]
    fn fortran_order_indices_read_in_row_order() {
        use rand::{Rng as _, SeedableRng as _};
        let seed = crate::test_seed("fortran_order_indices_read_in_row_order");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        // (More values than the reader's block of 65 536: places met late.)
        let (h, w) = (rng.random_range(260..400usize), rng.random_range(260..400usize));
        let rows = 1000u32;
        let a: Vec<u32> = (0..h * w).map(|_| rng.random_range(0..rows)).collect();
        let file = |name: &str, fortran: bool, v: &[u32]| {
            let header = format!(
                "{{'descr': '<i4', 'fortran_order': {}, 'shape': ({h}, {w}), }}\n",
                if fortran { "True" } else { "False" }
            );
            let mut f = MAGIC.to_vec();
            f.extend([1, 0]);
            f.extend((header.len() as u16).to_le_bytes());
            f.extend(header.as_bytes());
            // Column-major: element (i, j) at j·h + i.
            let order: Vec<usize> =
                if fortran { (0..h * w).map(|k| (k % h) * w + k / h).collect() } else { (0..h * w).collect() };
            for k in order {
                f.extend((v[k] as i32).to_le_bytes());
            }
            let path = dir.path().join(name);
            std::fs::write(&path, f).unwrap();
            path
        };
        let (c, f) = (file("c.npy", false, &a), file("f.npy", true, &a));
        let got = load_indices(&f, rows as usize).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(got.dims, [h as u64, w as u64], "seed {seed}");
        assert_eq!(got.values, a, "seed {seed}");
        assert_eq!(load_indices(&c, rows as usize).unwrap().values, a, "seed {seed}");
        // Two indices out of range: (h − 1, 0), in the Fortran file's first
        // block, and (0, w − 1), in its last; row order names (0, w − 1)
        // in both files.
        let mut b = a.clone();
        b[(h - 1) * w] = rows;
        b[w - 1] = rows + 7;
        for fortran in [false, true] {
            let err = load_indices(&file("bad.npy", fortran, &b), rows as usize).unwrap_err().to_string();
            let want = format!("index [0, {}] is {}", w - 1, rows + 7);
            assert!(err.contains(&want), "seed {seed}, fortran {fortran}: {err}");
        }
    }

    /// A set of files committed together: when one cannot replace its
    /// path, the ones already renamed get their old contents back (or go,
    /// where there was none), and no temporary file is left.
    #[test]
    fn a_commit_that_fails_leaves_every_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a"), b"old a").unwrap();
        // "c" is a non-empty folder: nothing can be renamed over it.
        std::fs::create_dir(p("c")).unwrap();
        std::fs::write(p("c").join("inside"), b"x").unwrap();
        let put = |path: PathBuf, text: &'static [u8]| stage(&path, move |w| w.write_all(text)).unwrap();
        let files = vec![put(p("a"), b"new a"), put(p("b"), b"new b"), put(p("c"), b"new c")];
        let err = commit(files).unwrap_err().to_string();
        assert!(err.contains(&p("c").display().to_string()), "{err}");
        assert_eq!(std::fs::read(p("a")).unwrap(), b"old a");
        assert!(!p("b").exists());
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["a", "c"]);

        // Without the obstacle the same set goes in whole, links removed.
        std::fs::remove_dir_all(p("c")).unwrap();
        commit(vec![put(p("a"), b"new a"), put(p("b"), b"new b"), put(p("c"), b"new c")]).unwrap();
        for (n, want) in [("a", b"new a"), ("b", b"new b"), ("c", b"new c")] {
            assert_eq!(std::fs::read(p(n)).unwrap(), want);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    /// A save through a link replaces the file it names; one through a
    /// link to a file that is not a regular one writes through it.
    #[test]
    #[cfg(unix)]
    fn a_save_through_a_link_replaces_its_target_and_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("runs-t.npy"), dir.path().join("latest.npy"));
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink("runs-t.npy", &link).unwrap();
        save_atomic(&link, |w| w.write_all(b"new")).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A dangling link: the save creates the file it names.
        let (gone, dangling) = (dir.path().join("made.json"), dir.path().join("d.json"));
        std::os::unix::fs::symlink("made.json", &dangling).unwrap();
        save_atomic(&dangling, |w| w.write_all(b"{}")).unwrap();
        assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&gone).unwrap(), b"{}");
        // A link to a file that is not a regular one (as /dev/stdout is):
        // written through it, the link and the device left as they are.
        let null = dir.path().join("null.json");
        std::os::unix::fs::symlink("/dev/null", &null).unwrap();
        assert!(destination(&null).is_err(), "written through, not replaced");
        save_atomic(&null, |w| w.write_all(b"{}")).unwrap();
        assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_symlink(), "the link was replaced");
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5, "a temporary file was left");
    }

    /// A commit's folders are locked, exclusively, while it renames, and
    /// let go after: another process's commit into them waits its turn.
    #[cfg(unix)]
    #[test]
    fn a_commit_holds_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let other = || File::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("again")).unwrap();
        let held = lock_folders(vec![dir.path().to_owned(), dir.path().join("again")]);
        assert_eq!(held.len(), 1, "the same folder twice was locked twice");
        assert!(matches!(other().try_lock(), Err(std::fs::TryLockError::WouldBlock)), "not held");
        drop(held);
        assert!(other().try_lock().is_ok(), "not let go");
        // A commit waits for a folder another holds, and renames after.
        let path = dir.path().join("t.npy");
        let staged = stage_table(&path, Shape::new(3, 2).unwrap(), &[1.0; 6]).unwrap();
        let held = other();
        held.lock().unwrap();
        let t = std::thread::spawn(move || commit(vec![staged]));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!path.exists(), "renamed while the folder was held");
        drop(held);
        t.join().unwrap().unwrap();
        assert_eq!(load(&path).unwrap().data, [1.0; 6]);
    }

    /// A table whose values are not rows × dim is never written (a file
    /// that could not be loaded back), nor over a good one.
    #[test]
    fn a_table_of_the_wrong_length_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        let shape = Shape::new(3, 2).unwrap();
        save(&path, shape, &[1.0; 6]).unwrap();
        let e = save(&path, shape, &[1.0; 5]).unwrap_err().to_string();
        assert!(e.contains("5 values for 3 × 2"), "{e}");
        // A shape built by hand whose size overflows (it wrapped to 0
        // elements, and a header-only file was written).
        let e = save(&path, Shape { rows: 1 << 32, dim: 1 << 32 }, &[]).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        assert_eq!(load(&path).unwrap().data, [1.0; 6]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // An element past the end, however far, is named, not wrapped.
        let f64s = dir.path().join("f.npy");
        let bytes: Vec<u8> = [1.5f64, 2.5, 3.5, 4.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
        let mut file = MAGIC.to_vec();
        file.extend([1, 0]);
        let pad = (10 + header.len() + 1).next_multiple_of(64) - (10 + header.len() + 1);
        let text = format!("{header}{}\n", " ".repeat(pad));
        file.extend((text.len() as u16).to_le_bytes());
        file.extend(text.as_bytes());
        file.extend(bytes);
        std::fs::write(&f64s, file).unwrap();
        assert_eq!(element_bits(&f64s, 3).unwrap(), Some(4.5f64.to_bits()));
        for index in [4, 1 << 61, u64::MAX] {
            assert!(element_bits(&f64s, index).unwrap_err().to_string().contains("no element"), "{index}");
        }
    }

    /// A write that fails (here: the writer's own error) stages nothing,
    /// leaves the old file and no temporary file.
    #[test]
    fn a_failed_write_stages_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        std::fs::write(&path, b"old").unwrap();
        let r = stage(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(r.err().unwrap().to_string().contains("disk full"));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// float64 values too large for float32 become ±Inf, and the note says
    /// how many (an Inf in the file is not counted: it was one already).
    #[test]
    fn float64_overflow_is_counted_in_the_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }\n";
        let mut f = MAGIC.to_vec();
        f.extend([1, 0]);
        f.extend((header.len() as u16).to_le_bytes());
        f.extend(header.as_bytes());
        for v in [1.5f64, 1e300, -1e39, f64::INFINITY] {
            f.extend(v.to_le_bytes());
        }
        std::fs::write(&path, &f).unwrap();
        let l = load(&path).unwrap();
        assert_eq!(l.data, [1.5, f32::INFINITY, f32::NEG_INFINITY, f32::INFINITY]);
        let note = l.note.unwrap();
        assert!(
            note.ends_with("converted float64 to float32 (2 finite values beyond float32's range became ±Inf)"),
            "{note}"
        );
        // Scanned as the file holds them: the finite ones stay finite.
        let s = load_as(&path, Overflow::Saturate).unwrap();
        assert_eq!(s.data, [1.5, f32::MAX, -f32::MAX, f32::INFINITY]);
        assert!(s.note.unwrap().contains("2 finite values beyond float32's range"));
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
        assert!(parse_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", Holds::Table)
            .unwrap_err()
            .contains("'>f4'"));
        // Each error says what the file was opened as wants.
        let big =
            parse_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", Holds::Table).unwrap_err();
        assert!(big.contains("a table is") && big.contains(".astype('<f4')") && !big.contains("indices"), "{big}");
        let c8 =
            parse_header("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }", Holds::Indices).unwrap_err();
        assert!(c8.contains("indices are integers") && !c8.contains("table"), "{c8}");
        assert!(parse_header("{'descr': '<i3', 'fortran_order': False, 'shape': (2, 3), }", Holds::Table).is_err());
        // A structured dtype, as numpy writes one: said so, not "malformed".
        for what in [Holds::Table, Holds::Indices] {
            let h = "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (3,), }";
            assert!(parse_header(h, what).unwrap_err().contains("a structured dtype (named fields) is not supported"));
        }
        let native_i4 = Dtype::Int { bytes: 4, signed: true, big: cfg!(target_endian = "big") };
        let h = "{'descr': '|i4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(parse_header(h, Holds::Indices).map(|p| p.0), Ok(native_i4));
        // This machine's order ('=', or '|' as numpy reads it) is
        // little-endian here: the floats numpy loads.
        for (descr, want) in [("=f4", Dtype::F32), ("|f4", Dtype::F32), ("=f8", Dtype::F64), ("|f8", Dtype::F64)] {
            let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 3), }}");
            assert_eq!(parse_header(&h, Holds::Table).map(|p| p.0), Ok(want), "{descr}");
        }
        assert!(parse_header("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }", Holds::Table).is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", Holds::Table)
            .unwrap_err()
            .contains("Fortran"));
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }", Holds::Table).unwrap().1,
            vec![7]
        );
        // Only numpy's dictionary, each key once, nothing around it.
        for (h, says) in [
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2000, 4), 'shape': (1000, 8), }", "'shape' twice"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1, }", "unexpected key 'extra'"),
            ("x{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", "expected '{'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } junk", "text after"),
            ("'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", "expected '{'"),
            ("{'descr': '<f4', 'fortran_order': False, }", "no 'shape'"),
            ("{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3), }", "expected '}'"),
            ("{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3), }", "'fortran_order'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (7), }", "(n,)"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", "malformed 'shape'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", "dimension '-3'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, }", "malformed dimension '}'"),
            ("{'descr: '<f4', 'fortran_order': False, 'shape': (2, 3), }", "expected ':'"),
        ] {
            let e = parse_header(h, Holds::Table).unwrap_err();
            assert!(e.contains(says), "{h}: {e}");
        }
        // What numpy writes (and Python reads): spaces, a last comma or
        // none, double quotes, the padding and newline after.
        for h in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n",
            "{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(2,3)}",
            "{ 'shape' : ( 2 , 3 , ) , 'fortran_order' : False , 'descr' : '<f4' }",
        ] {
            assert_eq!(parse_header(h, Holds::Table).unwrap(), (Dtype::F32, vec![2, 3], false), "{h}");
        }
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", Holds::Table).unwrap().1,
            Vec::<u64>::new()
        );
        assert_eq!(
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", Holds::Table).unwrap(),
            (Dtype::F64, vec![2, 3], false)
        );
    }
}
