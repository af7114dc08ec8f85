//! One runner per pipeline on a SQLite target, and database identity.
//!
//! The fence is an exclusive OS lock (`flock`, through
//! [`File::try_lock`]) on a sidecar file next to the target database:
//! `<database file>.ferry-<pipeline>.lock`, beside the real file when the
//! path is a symbolic link, so every path to one database meets the same
//! lock. The database file itself is not locked: SQLite keeps POSIX locks
//! on it, and closing any other descriptor of the file in this process
//! would drop them. The OS releases the lock when its descriptor is closed
//! or the process dies (`kill -9` included), so nothing is left to clean
//! up; the file itself stays (removing it could let two runners lock two
//! different files). The holder writes its PID into it, for the message a
//! refused runner prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_core::{Error, Result};

/// The lock file of `pipeline` on the database at `path` (which exists).
fn lock_path(path: &Path, pipeline: &str) -> Result<PathBuf> {
    let real = std::fs::canonicalize(path)
        .map_err(|e| Error::fatal(format!("cannot resolve the path {}: {e}", path.display())))?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(real.with_file_name(format!("{name}.ferry-{pipeline}.lock")))
}

/// Takes the exclusive lock of `pipeline` on the target database at
/// `path`, without waiting: a live holder is another process (or another
/// sink in this one). Keep the returned file open as long as the lock is
/// needed.
pub(crate) fn lock(path: &Path, pipeline: &str) -> Result<File> {
    let lock = lock_path(path, pipeline)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| {
            Error::fatal(format!(
                "cannot open the pipeline's lock file {}: {e}",
                lock.display()
            ))
            .with_fix("make the target database's directory writable by the user running ferry")
        })?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for a refused runner's message; best effort.
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| write!(file, "{}", std::process::id()));
            Ok(file)
        }
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(Error::fatal(format!(
                "another ferry runs pipeline {pipeline:?} into target {} (process {} holds {})",
                path.display(),
                if pid.is_empty() { "?" } else { pid },
                lock.display()
            ))
            .with_fix(
                "stop the other `ferry run` of this pipeline first (two runners would both apply \
                 every change); a killed runner's lock goes with its process",
            ))
        }
        Err(TryLockError::Error(e)) => Err(Error::fatal(format!(
            "cannot lock {} (the pipeline's lock on the target): {e}",
            lock.display()
        ))
        .with_fix("put the target database on a file system that supports flock(2) locks")),
    }
}

/// `sqlite:device=D:inode=I` of the database file at `path`: the same for
/// every path to it (relative, `./`, symbolic links, hard links).
pub(crate) fn identity(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::fatal(format!(
            "cannot read the identity of SQLite database {}: {e}",
            path.display()
        ))
    })?;
    Ok(format!("sqlite:device={}:inode={}", meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_pipeline_and_database_whatever_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();

        let held = lock(&db, "p").unwrap();
        let e = lock(&link, "p").unwrap_err();
        assert!(
            e.message().contains("\"p\"") && e.message().contains(&std::process::id().to_string()),
            "{e}"
        );
        assert!(e.fix().unwrap().contains("stop the other"));
        // Another pipeline on the same target is not affected.
        let other = lock(&db, "q").unwrap();
        drop(held);
        let again = lock(&link, "p").unwrap();
        drop((other, again));

        assert_eq!(identity(&db).unwrap(), identity(&link).unwrap());
        let rel = dir.path().join(".").join("t.db");
        assert_eq!(identity(&db).unwrap(), identity(&rel).unwrap());
        let other_db = dir.path().join("u.db");
        std::fs::write(&other_db, b"").unwrap();
        assert_ne!(identity(&db).unwrap(), identity(&other_db).unwrap());
    }
}
