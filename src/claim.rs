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
/// (unlisted, removed, then let go: a run that opened it meanwhile finds
/// it gone once it holds the lock, and tries again with a new one).
pub struct Claim {
    lock: File,
    path: PathBuf,
    listed: Option<InFlight>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // (Unlisted first: a forced end from here on must not remove a
        // lock file another run has made at the name since.)
        self.listed.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of a save to `path` (the file it names, links followed;
/// its folder by its canonical name, so that one file has one lock path),
/// or none for one written through (a pipe, a terminal: nothing replaced).
/// A name too long for the lock's prefix keeps its first 200 bytes and
/// adds a hash of the whole (file systems take names of 255 bytes).
pub fn lock_path(path: &Path) -> Option<PathBuf> {
    let dest = npy::destination(path).ok()?;
    let name = dest.file_name()?;
    let folder = npy::folder(&dest);
    let folder = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_owned());
    let mut lock = std::ffi::OsString::from(PREFIX);
    let bytes = name.as_encoded_bytes();
    if PREFIX.len() + bytes.len() <= 255 {
        lock.push(name);
    } else {
        // (FNV-1a: the same name gives the same lock in every build.)
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        lock.push(head(name, 200));
        lock.push(format!("…{hash:016x}"));
    }
    Some(folder.join(lock))
}

const PREFIX: &str = ".latent-line-lock-";

/// The first `n` bytes of a name (off unix, its text cut at a character).
fn head(name: &std::ffi::OsStr, n: usize) -> std::ffi::OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&name.as_bytes()[..n]).to_owned()
    }
    #[cfg(not(unix))]
    {
        let text = name.to_string_lossy();
        let mut end = n.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].into()
    }
}

/// Claims `path` for this process, unless one of `held` (this run's own
/// claims) is its lock already (`Ok(None)`, as for nothing to claim: a
/// pipe, or a folder where no lock can be made), or says which process
/// holds it (`Error::InUse`). Something other than a file at the lock's
/// name (a link, a folder) is refused: a link would be followed.
pub fn claim(path: &Path, held: &[Claim]) -> Result<Option<Claim>> {
    let Some(lock) = lock_path(path) else { return Ok(None) };
    if std::fs::symlink_metadata(&lock).is_ok_and(|m| !m.is_file()) {
        return Err(Error::BadFile {
            path: lock,
            reason: format!(
                "a link or a folder, not a lock file, at the name of the lock of a save to {}; remove it",
                path.display()
            ),
        });
    }
    // A few tries: each one that loses finds the file removed by a run
    // that was ending (at most once per such run).
    for _ in 0..8 {
        let Ok((mut file, writable)) = open_lock(&lock) else { return Ok(None) };
        if held.iter().any(|h| h.path == lock || npy::same_open_file(&h.lock, &file)) {
            return Ok(None);
        }
        // A file with other names (a hard link to one of the user's), or
        // holding more than a process id (a file of the user's at that
        // name), is never written: it would lose its contents.
        let not_ours = if file.metadata().is_ok_and(|m| !m.is_file() || links(&m) > 1) {
            Some("a file with other names (a hard link), not a lock file")
        } else if !holds_a_pid_at_most(&mut file) {
            Some("a file that holds more than a process id, not a lock file")
        } else {
            None
        };
        if let Some(what) = not_ours {
            return Err(Error::BadFile {
                path: lock,
                reason: format!("{what}, at the name of the lock of a save to {}; remove it", path.display()),
            });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::InUse { path: path.to_owned(), pid: holder(&mut file), lock });
            }
            // No locks on this file system: nothing claimed (the file made
            // for nothing is left: it claims nothing either).
            Err(std::fs::TryLockError::Error(_)) => return Ok(None),
        }
        // The name may have been removed (and made again) by the holder
        // that just let go: ours only if it still names this file.
        if !names(&lock, &file) {
            continue;
        }
        // Another user's lock file, left by a run that ended, opened to
        // read only: removed (held, as a run removes its own) and made
        // anew, ours, so that it names this process. (Where it cannot be
        // removed, a sticky folder, it is held as it is.)
        if !writable && std::fs::remove_file(&lock).is_ok() {
            continue;
        }
        // Listed once held (a run ending at once removes it; not before:
        // it may have been another run's), then its process id written,
        // readable by every user (whose runs lock it to read: a umask of
        // 077 made it theirs to ignore).
        let listed = InFlight::list(&lock);
        if writable {
            use std::io::Seek;
            let _ =
                file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id()));
            #[cfg(unix)]
            let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        }
        return Ok(Some(Claim { lock: file, path: lock, listed: Some(listed) }));
    }
    Ok(None)
}

/// Whether an open lock file holds at most a process id (digits and a
/// line end, or nothing): what latent-line writes there.
fn holds_a_pid_at_most(file: &mut File) -> bool {
    contents(file)
        .is_some_and(|held| held.len() < 24 && held.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_whitespace()))
}

/// The first 24 bytes of an open lock file, read from its start (as text:
/// a process id; none where they are not text).
fn contents(file: &mut File) -> Option<String> {
    use std::io::{Read, Seek};
    let mut held = String::new();
    file.rewind().and_then(|()| Read::take(&mut *file, 24).read_to_string(&mut held)).ok()?;
    Some(held)
}

/// Opens (or makes) a lock file, never through a link nor waiting (on a
/// pipe put there meanwhile): to write, or, one another user made, to read
/// (a lock needs no more); whether it is open to write.
fn open_lock(lock: &Path) -> std::io::Result<(File, bool)> {
    let open = |write: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(write).create(write).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NOFOLLOW | libc::O_NONBLOCK);
        o.open(lock)
    };
    match open(true) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open(false).map(|f| (f, false)),
        r => r.map(|f| (f, true)),
    }
}

/// The process id a held lock file names, read through the file opened
/// (written just after its lock was taken: read again for a moment if
/// not there yet).
fn holder(file: &mut File) -> Option<u32> {
    for _ in 0..20 {
        if let Some(pid) = contents(file).and_then(|held| held.trim().parse().ok()) {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

/// Claims each of `paths` (one file by two names once); the first one
/// held by another run is the error (with its index in `paths`), and the
/// claims made until then are let go.
pub fn claim_all(paths: &[PathBuf]) -> std::result::Result<Vec<Claim>, (usize, Error)> {
    let mut held: Vec<Claim> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if let Some(c) = claim(p, &held).map_err(|e| (i, e))? {
            held.push(c);
        }
    }
    Ok(held)
}

/// Whether `path` names the open `file` (itself, not a link to it).
fn names(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => npy::file_id(&p) == npy::file_id(&f),
        _ => false,
    }
}

/// A file's count of names (1 off unix).
fn links(m: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::nlink(m)
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claimed file is refused to a second claim, naming this process;
    /// let go, it can be claimed again, and its lock file is gone. One
    /// file by two names (a link, a relative path) is claimed once.
    #[cfg(unix)]
    #[test]
    fn a_claim_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.npy");
        let first = claim(&t, &[]).unwrap().expect("claimed");
        let lock = lock_path(&t).unwrap();
        assert_eq!(lock.file_name().unwrap(), ".latent-line-lock-t.npy");
        match claim(&t, &[]) {
            Err(Error::InUse { pid, lock: l, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(l, lock);
            }
            other => panic!("claimed twice: {:?}", other.map(|c| c.is_some())),
        }
        let link = dir.path().join("link.npy");
        std::os::unix::fs::symlink(&t, &link).unwrap();
        assert!(matches!(claim(&link, &[]), Err(Error::InUse { .. })));
        drop(first);
        assert!(!lock.exists(), "the lock file was left");
        let dotted = dir.path().join(".").join("t.npy");
        let again = claim_all(&[t.clone(), link, dotted, dir.path().join("u.npy")]).unwrap();
        assert_eq!(again.len(), 2, "t.npy (by three names) and u.npy");
        drop(again);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the link is left");
    }

    /// A lock file left by a killed run claims nothing: it is taken over.
    /// Something else at its name is refused, a link never followed, a
    /// second name of a file never written.
    #[cfg(unix)]
    #[test]
    fn a_lock_file_left_behind_claims_nothing_and_a_link_there_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.npy");
        std::fs::write(lock_path(&t).unwrap(), "4294967295\n").unwrap();
        let c = claim(&t, &[]).unwrap().expect("claimed");
        let held = std::fs::read_to_string(lock_path(&t).unwrap()).unwrap();
        assert_eq!(held.trim(), std::process::id().to_string());
        drop(c);
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "kept").unwrap();
        std::os::unix::fs::symlink(&victim, lock_path(&t).unwrap()).unwrap();
        assert!(matches!(claim(&t, &[]), Err(Error::BadFile { .. })));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "kept");
        std::fs::remove_file(lock_path(&t).unwrap()).unwrap();
        std::fs::hard_link(&victim, lock_path(&t).unwrap()).unwrap();
        assert!(matches!(claim(&t, &[]), Err(Error::BadFile { .. })));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "kept");
    }

    /// A file of the user's at a lock's name is never written; a lock
    /// file left with a mode others cannot read (a umask of 077) is
    /// claimed readable by all (their runs lock it to read); a lock file is
    /// no leftover of a killed save, whatever its name ends with.
    #[cfg(unix)]
    #[test]
    fn a_lock_file_is_only_ever_a_lock_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.npy");
        std::fs::write(lock_path(&t).unwrap(), "a table of the user's").unwrap();
        assert!(matches!(claim(&t, &[]), Err(Error::BadFile { .. })));
        assert_eq!(std::fs::read_to_string(lock_path(&t).unwrap()).unwrap(), "a table of the user's");
        let u = dir.path().join("u.tmp");
        std::fs::write(lock_path(&u).unwrap(), "").unwrap();
        std::fs::set_permissions(lock_path(&u).unwrap(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let held = claim(&u, &[]).unwrap().expect("claimed");
        let mode = std::fs::metadata(lock_path(&u).unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(crate::tables::leftovers(&u), Some(Vec::new()));
        drop(held);
    }

    /// A name too long for the prefix gets a lock name of its own that
    /// fits, still one per name.
    #[test]
    fn a_long_name_has_a_lock_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (format!("{}a.npy", "x".repeat(245)), format!("{}b.npy", "x".repeat(245)));
        let (la, lb) = (lock_path(&dir.path().join(&a)).unwrap(), lock_path(&dir.path().join(&b)).unwrap());
        assert_ne!(la, lb);
        assert!(la.file_name().unwrap().len() <= 255, "{la:?}");
        let held = claim(&dir.path().join(&a), &[]).unwrap().expect("claimed");
        assert!(matches!(claim(&dir.path().join(&a), &[]), Err(Error::InUse { .. })));
        drop(held);
    }
}
