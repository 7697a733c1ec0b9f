//! The library's error type. Every variant names the thing at fault so the
//! command line can print it as one actionable line.

use std::path::PathBuf;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option or a combination of options is invalid.
    #[error("invalid {option}: {reason}")]
    InvalidOption { option: &'static str, reason: String },

    /// A file could not be read or written. (The I/O error is the message,
    /// not a `source`: anyhow's `{:#}` would print it a second time.)
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// A file was read but its contents are not acceptable.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },

    /// Another run is writing the file (it holds its claim: `claim.rs`).
    #[error(
        "{}: another run{} is writing it (it holds {}); wait for that run to end, or give another path",
        path.display(),
        pid.map(|p| format!(", process {p},")).unwrap_or_default(),
        lock.display()
    )]
    InUse { path: PathBuf, lock: PathBuf, pid: Option<u32> },

    /// No usable GPU adapter.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),

    /// The table does not fit the device or the host.
    #[error("table of {rows} rows × {dim} columns ({bytes} bytes) does not fit: {reason}")]
    TooLarge { rows: u64, dim: u64, bytes: u128, reason: String },

    /// wgpu reported an error (validation, out of memory, internal).
    #[error("GPU error: {0}")]
    Gpu(String),

    /// The GPU device was lost.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// A shader failed to parse or validate (a bug in latent-line).
    #[error("shader {name}: {message}")]
    Shader { name: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption { option, reason: reason.into() }
    }
    /// A `rows` × `dim` f32 table that cannot be held, and why. The size is
    /// computed in u128 so that even an overflowing request is reported truly.
    pub(crate) fn too_large(rows: usize, dim: usize, reason: impl Into<String>) -> Self {
        Error::TooLarge {
            rows: rows as u64,
            dim: dim as u64,
            bytes: (rows as u128).saturating_mul(dim as u128).saturating_mul(4),
            reason: reason.into(),
        }
    }
    pub(crate) fn bad_file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::BadFile { path: path.to_path_buf(), reason: reason.into() }
    }
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), err: source }
    }
}
