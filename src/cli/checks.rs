//! What the options are checked against before any work: clap's parsers
//! of values, and the outputs' paths.

use std::path::{Path, PathBuf};

use anyhow::bail;
use latent_line::{npy, tables};

use crate::BackendChoice;

/// clap's parser of `--adapter`: a name (an empty one would match every
/// adapter, where an empty `WGPU_ADAPTER_NAME` is no name).
pub(crate) fn adapter_arg(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("an empty adapter name".into());
    }
    Ok(s.to_owned())
}

/// `--adapter` with `--backend cpu`: a GPU adapter asked for by a run that
/// uses none.
pub(crate) fn check_adapter(backend: BackendChoice, adapter: &Option<String>) -> anyhow::Result<()> {
    if let (BackendChoice::Cpu, Some(a)) = (backend, adapter) {
        bail!("invalid --adapter: \"{a}\" names a GPU adapter, and --backend cpu uses none; drop one of the two");
    }
    Ok(())
}

/// clap's parser of `--tensor`: a name a table's tensor can have.
pub(crate) fn tensor_arg(s: &str) -> Result<String, String> {
    tables::check_tensor_name(s).map(|_| s.to_owned())
}

/// clap's parser of `--anchors`: the value as given, once it parses.
pub(crate) fn anchors_arg(s: &str) -> Result<String, String> {
    parse_anchors(s).map(|_| s.to_owned())
}

pub(crate) fn parse_anchors(s: &str) -> Result<(usize, usize), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b] = parts.as_slice() else {
        return Err(format!("\"{s}\" is not two row numbers A,B"));
    };
    let num = |x: &str| x.parse::<usize>().map_err(|e| format!("\"{x}\" is not a row number ({e})"));
    Ok((num(a)?, num(b)?))
}

/// Whether two paths name one file: each resolved as far as it exists (the
/// file, else its folder, links and `..` included; a dangling link to the
/// file a save would create there) and then compared, by path and, on
/// Unix, by the file's identity (device and inode; a file not there yet:
/// its folder's, and its name), so that a folder reached by two paths (a
/// bind mount) is one folder too. (A hard link is then the file it links:
/// the save goes beside it as it would beside the input, where replacing
/// the name alone would have left the input whole.)
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    fn resolve(p: &Path) -> Option<PathBuf> {
        let p = match npy::destination(p) {
            Ok(q) | Err(q) => q,
        };
        p.canonicalize().ok().or_else(|| {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(dir.canonicalize().ok()?.join(p.file_name()?))
        })
    }
    #[cfg(unix)]
    fn identity(p: &Path) -> Option<((u64, u64), Option<std::ffi::OsString>)> {
        if let Ok(m) = std::fs::metadata(p) {
            return Some((npy::file_id(&m)?, None));
        }
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let m = std::fs::metadata(dir).ok()?;
        Some((npy::file_id(&m)?, Some(p.file_name()?.to_owned())))
    }
    let (x, y) = (resolve(a), resolve(b));
    if matches!((&x, &y), (Some(x), Some(y)) if x == y) {
        return true;
    }
    #[cfg(unix)]
    if let (Some(x), Some(y)) = (x, y) {
        return matches!((identity(&x), identity(&y)), (Some(i), Some(j)) if i == j);
    }
    false
}

/// Output paths must be writable places, checked before any work. A save
/// replaces a symbolic link's target (the link stays), and writes through
/// a file that is not a regular one (`/dev/stdout`, a pipe).
pub(crate) fn check_output(opt: &str, given: &Path) -> anyhow::Result<()> {
    // A name ending in a separator, `.` or `..` names a folder whatever is
    // there (`Path` drops a trailing `/`: `out/new.npy/` would otherwise
    // pass here and fail only when the trained table is saved); so does a
    // link to one.
    let names_folder = |path: &Path| {
        let text = path.as_os_str().as_encoded_bytes();
        let sep = |c: &u8| std::path::is_separator(*c as char);
        let dot_last = text.len() >= 2 && text[text.len() - 1] == b'.' && sep(&text[text.len() - 2]);
        path.file_name().is_none() || text.last().is_some_and(sep) || dot_last
    };
    let folder_named = |p: &Path| -> anyhow::Result<()> {
        if names_folder(p) {
            bail!("invalid {opt}: {} names a folder, not a file", p.display());
        }
        Ok(())
    };
    folder_named(given)?;
    // (What is written through exists already, and is not a folder.)
    let Ok(path) = npy::destination(given) else { return Ok(()) };
    folder_named(&path)?;
    // Links followed as far as `destination` goes (40) and still a link: a
    // loop, which the save would have replaced with a file.
    if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        bail!("invalid {opt}: {} is a loop of symbolic links", given.display());
    }
    let path = path.as_path();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("invalid {opt}: folder {} does not exist", dir.display());
    }
    if path.is_dir() {
        bail!("invalid {opt}: {} is a folder", path.display());
    }
    // A save goes through a temporary file in the same folder: try one
    // now, so a folder that cannot take it fails before the training; its
    // name as long as the file's, so that a name past the file system's
    // limit (255 bytes on Linux) fails now too, not at the save.
    let (prefix, suffix) = (".latent-line-", ".tmp");
    let len = path.file_name().map_or(0, |n| n.as_encoded_bytes().len());
    let random = len.saturating_sub(prefix.len() + suffix.len()).max(6);
    match tempfile::Builder::new().prefix(prefix).suffix(suffix).rand_bytes(random).tempfile_in(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidFilename => {
            bail!("invalid {opt}: {}: a name of {len} bytes is too long for its folder's file system", path.display())
        }
        Err(e) => bail!("invalid {opt}: cannot write in {}: {e}", dir.display()),
        Ok(_) => Ok(()),
    }
}

/// Whether `path` is this process's standard output (`/dev/stdout`, its
/// `/proc/self/fd/1`, or the file or pipe that stdout is): the same file.
pub(crate) fn is_stdout(path: &Path) -> bool {
    // (/dev/null takes any number of documents.)
    let null = std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null"));
    !null && npy::is_stream(path, npy::Stream::Stdout)
}

/// Claims the files a command writes (`latent_line::claim`), each given
/// with its option and what it is (", where this run's checkpoints go"),
/// for as long as the claims are held. A file another run holds is
/// refused, naming that run's process.
pub(crate) fn claim_outputs(outputs: &[(&str, PathBuf, &str)]) -> anyhow::Result<Vec<latent_line::claim::Claim>> {
    let paths: Vec<PathBuf> = outputs.iter().map(|(_, p, _)| p.clone()).collect();
    latent_line::claim::claim_all(&paths).map_err(|(i, e)| {
        let (opt, _, role) = outputs[i];
        match e {
            latent_line::Error::InUse { path, lock, pid } => anyhow::anyhow!(
                "invalid {opt}: {}{role}: another run{} is writing it (it holds {}); wait for that run to end, or \
                 give another path",
                path.display(),
                pid.map(|p| format!(", process {p},")).unwrap_or_default(),
                lock.display()
            ),
            e => anyhow::anyhow!("invalid {opt}: {e}"),
        }
    })
}
