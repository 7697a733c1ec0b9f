//! A run's claim on the files it saves, for as long as it runs: two runs
//! saving to one file at once lose one run's work (the last save wins), and
//! a run whose `--save` is its `--load` file keeps its checkpoints and its
//! interrupted or aborted table beside that file, where another such run
//! would save over them, or remove them as its own when it ended well.
//! A claim is an exclusive lock (`flock`, or the system's like) on a hidden
//! file beside the one saved, `.latent-line-lock-NAME`, which holds the
//! claiming process's id: the lock, not the file, is the claim, so one left
//! by a killed run claims nothing, and the system lets go of a lock when its
//! process ends, however it ends. A run removes its lock files as it ends.
//! Best effort, as the folder locks of `npy::commit` are: where the file
//! cannot be made (the save will say why) or its file system has no locks,
//! nothing is claimed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::npy::{self, InFlight};

/// The claim on one file: its lock file, locked, removed when dropped
/// (removed first, then let go: a run that opened it meanwhile finds it
/// gone once it holds the lock, and tries again with a new one).
pub struct Claim {
    _lock: File,
    path: PathBuf,
    _listed: InFlight,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of a save to `path` (the file it names, links followed),
/// or none for one written through (a pipe, a terminal: nothing replaced).
pub fn lock_path(path: &Path) -> Option<PathBuf> {
    let dest = npy::destination(path).ok()?;
    let mut name = std::ffi::OsString::from(".latent-line-lock-");
    name.push(dest.file_name()?);
    Some(npy::folder(&dest).join(name))
}

/// Claims `path` for this process, or says which process holds it
/// (`Error::InUse`). `Ok(None)`: nothing to claim (a pipe), or no claim
/// can be made there.
pub fn claim(path: &Path) -> Result<Option<Claim>> {
    let Some(lock) = lock_path(path) else { return Ok(None) };
    // A few tries: each one that loses finds the file removed by a run
    // that was ending (at most once per such run).
    for _ in 0..8 {
        // Listed as it is made, so that a run ending at once removes it.
        let made = InFlight::made(
            || std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock),
            &lock,
        );
        let Ok((mut file, listed)) = made else { return Ok(None) };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // (Not this process's to remove: unlisted, left as it is.)
                drop(listed);
                let pid = std::fs::read_to_string(&lock).ok().and_then(|s| s.trim().parse().ok());
                return Err(Error::InUse { path: path.to_owned(), lock, pid });
            }
            // No locks on this file system: nothing claimed (and the file,
            // made for nothing, removed).
            Err(std::fs::TryLockError::Error(_)) => {
                drop(Claim { _lock: file, path: lock, _listed: listed });
                return Ok(None);
            }
        }
        if !names_this_file(&lock, &file) {
            drop(listed);
            continue;
        }
        let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
        return Ok(Some(Claim { _lock: file, path: lock, _listed: listed }));
    }
    Ok(None)
}

/// Claims each of `paths` (duplicates once); the first one held by another
/// run is the error, and the claims made until then are let go.
pub fn claim_all(paths: &[PathBuf]) -> Result<Vec<Claim>> {
    let mut held: Vec<(PathBuf, Claim)> = Vec::new();
    for p in paths {
        let Some(lock) = lock_path(p) else { continue };
        if held.iter().any(|(l, _)| *l == lock) {
            continue;
        }
        if let Some(c) = claim(p)? {
            held.push((lock, c));
        }
    }
    Ok(held.into_iter().map(|(_, c)| c).collect())
}

/// Whether `path` still names the open `file` (not removed, nor made anew,
/// by the run that held it before).
fn names_this_file(path: &Path, file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), file.metadata()) {
            (Ok(p), Ok(f)) => (p.dev(), p.ino()) == (f.dev(), f.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claimed file is refused to a second claim, naming this process;
    /// let go, it can be claimed again, and its lock file is gone.
    #[test]
    fn a_claim_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.npy");
        let first = claim(&t).unwrap().expect("claimed");
        let lock = lock_path(&t).unwrap();
        assert_eq!(lock.file_name().unwrap(), ".latent-line-lock-t.npy");
        match claim(&t) {
            Err(Error::InUse { pid, lock: l, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(l, lock);
            }
            other => panic!("claimed twice: {:?}", other.map(|c| c.is_some())),
        }
        // Another name of the same file (a link) is the same claim.
        std::os::unix::fs::symlink(&t, dir.path().join("link.npy")).unwrap();
        assert!(matches!(claim(&dir.path().join("link.npy")), Err(Error::InUse { .. })));
        drop(first);
        assert!(!lock.exists(), "the lock file was left");
        let again = claim_all(&[t.clone(), dir.path().join("link.npy"), dir.path().join("u.npy")]).unwrap();
        assert_eq!(again.len(), 2, "t.npy (by two names) and u.npy");
        drop(again);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the link is left");
    }

    /// A lock file left by a killed run claims nothing: it is taken over.
    #[test]
    fn a_lock_file_left_behind_claims_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.npy");
        std::fs::write(lock_path(&t).unwrap(), "4294967295\n").unwrap();
        let c = claim(&t).unwrap().expect("claimed");
        let held = std::fs::read_to_string(lock_path(&t).unwrap()).unwrap();
        assert_eq!(held.trim(), std::process::id().to_string());
        drop(c);
    }
}
