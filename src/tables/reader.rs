//! A table's values read from its file a block at a time, converted to f32
//! as they come: a table streams from its file into a device, and no host
//! copy of the whole is made (a table may fill a GPU larger than host
//! memory; saves stream the other way, [`crate::tables::stage`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::Shape;
use crate::error::{Error, Result};
use crate::npy;
use crate::tables::Fingerprinter;

/// How a table file holds its values (each read as f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    F16,
    BF16,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F64 => 8,
            Elem::F16 | Elem::BF16 => 2,
        }
    }
}

/// What a reader's note says of a conversion: where the values came from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// An `.npy` file: `PATH: converted float64 to float32`.
    Npy,
    /// Tensor `name` of a `.safetensors` file.
    Tensor(String),
}

/// A table's values from an open file (`path`, for errors), row-major,
/// each [`TableReader::read`] taking the next ones. Every read seeks to its
/// own place first: the file may be shared with a reader of its other
/// parts (a `.safetensors` input's carried tensors).
pub struct TableReader {
    pub shape: Shape,
    pub elem: Elem,
    file: File,
    path: PathBuf,
    origin: Origin,
    /// Where the values start in the file, and how many have been read.
    at: u64,
    done: u64,
    overflow: npy::Overflow,
    overflowed: u64,
    block: Vec<u8>,
    /// The values' fingerprint as they are read, once
    /// [`TableReader::fingerprint_whole`] has been asked for (a resume
    /// checks that the values it streams are those it checked).
    fingerprint: Option<Fingerprinter>,
}

/// Values converted a block of this many at a time.
const BLOCK_VALUES: usize = 1 << 18;

impl TableReader {
    pub(crate) fn new(
        file: File,
        path: &Path,
        origin: Origin,
        at: u64,
        shape: Shape,
        elem: Elem,
        overflow: npy::Overflow,
    ) -> TableReader {
        TableReader {
            shape,
            elem,
            file,
            path: path.to_owned(),
            origin,
            at,
            done: 0,
            overflow,
            overflowed: 0,
            block: Vec::new(),
            fingerprint: None,
        }
    }

    /// Values not yet read.
    pub fn left(&self) -> u64 {
        self.shape.elements() - self.done
    }

    /// Fills `out` with the next values (as many as it holds: no more than
    /// are left).
    pub fn read(&mut self, out: &mut [f32]) -> Result<()> {
        use std::io::{Read as _, Seek as _};
        if out.len() as u64 > self.left() {
            return Err(Error::invalid(
                "table",
                format!("{} values asked of {}, which has {} left", out.len(), self.path.display(), self.left()),
            ));
        }
        let size = self.elem.size();
        let at = self.at + self.done * size as u64;
        self.file.seek(std::io::SeekFrom::Start(at)).map_err(|e| Error::io(&self.path, e))?;
        let (path, origin) = (&self.path, &self.origin);
        let short = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::bad_file(
                path,
                match origin {
                    Origin::Npy => "truncated while reading the data".to_owned(),
                    Origin::Tensor(n) => format!("truncated while reading tensor \"{n}\""),
                },
            ),
            _ => Error::io(path, e),
        };
        if self.elem == Elem::F32 {
            // Straight into `out`: no copy between.
            self.file.read_exact(bytemuck::cast_slice_mut(out)).map_err(short)?;
            if cfg!(target_endian = "big") {
                out.iter_mut().for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
            }
        } else {
            if self.block.is_empty() {
                self.block = vec![0u8; size * BLOCK_VALUES];
            }
            for part in out.chunks_mut(BLOCK_VALUES) {
                let raw = &mut self.block[..size * part.len()];
                self.file.read_exact(raw).map_err(short)?;
                let c = raw.chunks_exact(size);
                let (overflowed, overflow) = (&mut self.overflowed, self.overflow);
                match self.elem {
                    Elem::F64 => part.iter_mut().zip(c).for_each(|(o, b)| {
                        let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                        *o = npy::f64_to_f32(v, overflowed, overflow);
                    }),
                    Elem::F16 => {
                        part.iter_mut().zip(c).for_each(|(o, b)| *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    }
                    _ => part.iter_mut().zip(c).for_each(|(o, b)| *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
                }
            }
        }
        if let Some(f) = &mut self.fingerprint {
            f.update(out);
        }
        self.done += out.len() as u64;
        Ok(())
    }

    /// The values as a feed for a trainer ([`crate::TableSource::Stream`],
    /// `Trainer::set_velocity_from`).
    pub fn feed(&mut self) -> impl FnMut(&mut [f32]) -> Result<()> + '_ {
        |out| self.read(out)
    }

    /// From the first value again.
    pub fn rewind(&mut self) {
        self.done = 0;
        self.overflowed = 0;
        if self.fingerprint.is_some() {
            self.fingerprint = Some(Fingerprinter::new(self.shape.elements()));
        }
    }

    /// Every value, in host memory.
    pub fn read_all(&mut self) -> Result<Vec<f32>> {
        let n = self.left();
        let mut v: Vec<f32> = npy::host_vec(&self.path, n, &format!("a table of {} values as f32", n))?;
        v.resize(n as usize, 0.0);
        self.read(&mut v)?;
        Ok(v)
    }

    /// The fingerprint ([`crate::tables::fingerprint`]) of the values read
    /// (the whole table's once all are), where kept: since a
    /// [`TableReader::fingerprint_whole`].
    pub fn fingerprint(&self) -> Option<u64> {
        self.fingerprint.clone().map(Fingerprinter::finish)
    }

    /// Keep the fingerprint of the values as they are read from here (the
    /// whole table's, once all are): a file read once, into a trainer,
    /// and checked after (where [`TableReader::fingerprint_whole`] reads it
    /// through first).
    pub fn fingerprint_as_read(&mut self) {
        self.fingerprint = Some(Fingerprinter::new(self.shape.elements()));
        self.rewind();
    }

    /// With `first`, the whole table's fingerprint by a pass of its own
    /// ([`TableReader::fingerprint_whole`]), to check before the values are
    /// read; else `None`, the fingerprint kept as they are read
    /// ([`TableReader::fingerprint_as_read`]), to check after.
    pub fn fingerprint_first(&mut self, first: bool) -> Result<Option<u64>> {
        if first {
            self.fingerprint_whole().map(Some)
        } else {
            self.fingerprint_as_read();
            Ok(None)
        }
    }

    /// The fingerprint of the whole table, read through once (in blocks),
    /// then rewound; the reads that follow keep one too.
    pub fn fingerprint_whole(&mut self) -> Result<u64> {
        self.fingerprint_as_read();
        let mut block = vec![0f32; BLOCK_VALUES.min(self.left() as usize)];
        while self.left() > 0 {
            let n = block.len().min(self.left() as usize);
            self.read(&mut block[..n])?;
        }
        let h = self.fingerprint().expect("kept above");
        self.rewind();
        Ok(h)
    }

    /// Where the values come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set where the values were converted, with the values beyond f32's
    /// range met so far (all of them, once the table is read).
    pub fn note(&self) -> Option<String> {
        let over = npy::overflow_note(self.overflowed, self.overflow);
        match (&self.origin, self.elem) {
            (_, Elem::F32) => None,
            (Origin::Npy, _) => Some(format!("{}: converted float64 to float32{over}", self.path.display())),
            (Origin::Tensor(n), Elem::F64) => Some(format!("tensor \"{n}\" converted from F64 to f32{over}")),
            (Origin::Tensor(n), e) => Some(format!("tensor \"{n}\" converted from {e:?} to f32")),
        }
    }
}

/// A [`crate::trainer::Feed`] reading `v` in order (a table at hand, handed to
/// what takes a stream); asking for more than is left is an error.
pub fn slice_feed(mut v: &[f32]) -> impl FnMut(&mut [f32]) -> Result<()> + '_ {
    move |out: &mut [f32]| {
        if out.len() > v.len() {
            return Err(Error::invalid("table", format!("{} values asked, {} left", out.len(), v.len())));
        }
        let (head, rest) = v.split_at(out.len());
        out.copy_from_slice(head);
        v = rest;
        Ok(())
    }
}

/// An F16 value as f32, exactly, a NaN's payload too (as numpy's
/// `astype`): `half`'s conversion sets a signalling NaN's quiet bit.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    if h & 0x7c00 == 0x7c00 && h & 0x03ff != 0 {
        f32::from_bits(((h as u32 & 0x8000) << 16) | 0x7f80_0000 | ((h as u32 & 0x03ff) << 13))
    } else {
        half::f16::from_bits(h).to_f32()
    }
}

/// A BF16 value as f32: its top 16 bits, NaNs as they are (as PyTorch's
/// conversion; `half`'s sets a signalling NaN's quiet bit).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::io::{Seek as _, Write as _};

    /// Each element type's values, as bytes after a header of `skip` bytes,
    /// read back in random splits: every value converted as the element
    /// conversions say, the fingerprint the whole table's, a rewind
    /// reading the same again, and asking past the end refused.
    #[test]
    fn a_reader_gives_each_value_once_in_any_split() {
        let seed = crate::test_seed("reader_splits");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let shape = Shape::new(777, 5).unwrap();
        let n = shape.elements() as usize;
        for elem in [Elem::F32, Elem::F64, Elem::F16, Elem::BF16] {
            let skip = rng.random_range(0..100u64);
            let mut bytes = vec![0xa5u8; skip as usize];
            let mut want = Vec::with_capacity(n);
            for i in 0..n {
                // Every few values a NaN, an Inf, or (f64) one past f32's range.
                let x: f64 = match i % 97 {
                    3 => f64::NAN,
                    5 => f64::NEG_INFINITY,
                    7 => 1e300,
                    _ => rng.random_range(-1e4..1e4),
                };
                match elem {
                    Elem::F32 => {
                        bytes.extend((x as f32).to_le_bytes());
                        want.push(x as f32);
                    }
                    Elem::F64 => {
                        bytes.extend(x.to_le_bytes());
                        want.push(x as f32);
                    }
                    Elem::F16 => {
                        let h = half::f16::from_f64(x).to_bits();
                        bytes.extend(h.to_le_bytes());
                        want.push(f16_to_f32(h));
                    }
                    Elem::BF16 => {
                        let h = half::bf16::from_f64(x).to_bits();
                        bytes.extend(h.to_le_bytes());
                        want.push(bf16_to_f32(h));
                    }
                }
            }
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&bytes).unwrap();
            let path = Path::new("values.bin");
            let mut r = TableReader::new(
                file.try_clone().unwrap(),
                path,
                Origin::Tensor("w".into()),
                skip,
                shape,
                elem,
                npy::Overflow::Inf,
            );
            let whole = r.fingerprint_whole().unwrap();
            assert_eq!(whole, crate::tables::fingerprint(&want), "{elem:?}, seed {seed}");
            for pass in 0..2 {
                let mut got = vec![f32::NAN; n];
                let mut at = 0;
                while at < n {
                    let m = rng.random_range(1..=(n - at).min(300));
                    // (The handle shared, moved elsewhere between reads.)
                    file.seek(std::io::SeekFrom::Start(rng.random_range(0..bytes.len() as u64))).unwrap();
                    r.read(&mut got[at..at + m]).unwrap();
                    at += m;
                }
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{elem:?} pass {pass}: other values, seed {seed}");
                assert_eq!(r.fingerprint(), Some(whole), "{elem:?}, seed {seed}");
                let e = r.read(&mut [0.0]).unwrap_err().to_string();
                assert!(e.contains("1 values asked") && e.contains("0 left"), "{e}");
                if elem == Elem::F64 {
                    // 1e300 at every 97th value from the 7th.
                    let over = (0..n).filter(|i| i % 97 == 7).count();
                    let note = r.note().unwrap();
                    let values = if over == 1 { "value" } else { "values" };
                    assert!(note.contains(&format!("({over} finite {values} beyond")), "{note}");
                }
                r.rewind();
            }
            assert_eq!(r.left(), n as u64, "rewound");
            // A file cut short: said so, with the tensor's name.
            file.set_len(bytes.len() as u64 - 1).unwrap();
            let e = r.read_all().unwrap_err().to_string();
            assert!(e.contains("truncated while reading tensor \"w\""), "{e}");
        }
    }
}
