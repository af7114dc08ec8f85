//! Opening SQLite files, the pragmas every connection gets, the bridge that
//! runs blocking driver calls off the async runtime, and the mapping of
//! driver errors to ferry's error classes.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::Error;
use rusqlite::{Connection, ErrorCode, OpenFlags};

/// How long a statement waits for another connection's lock before SQLite
/// reports `SQLITE_BUSY` (which ferry then classifies as transient).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens an existing source database read-write. Never creates the file:
/// a typo in `source.url` must not silently replicate an empty database.
pub(crate) fn open_source(path: &Path) -> Result<Connection, Error> {
    if !path.exists() {
        return Err(
            Error::fatal(format!("source database {} does not exist", path.display()))
                .with_fix("check the path in `source.url`; ferry does not create source databases"),
        );
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| db_error(path, "opening", e))?;
    configure(&conn, path)?;
    Ok(conn)
}

/// Opens (creating if needed) a target database, in WAL mode with
/// `synchronous=NORMAL`: a commit survives a crash of ferry (the WAL is
/// written before `COMMIT` returns); only a power loss or OS crash may undo
/// the last commits, and then data and checkpoint roll back together.
pub(crate) fn open_target(path: &Path) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| db_error(path, "opening", e))?;
    ensure_writable(&conn, path)?;
    configure(&conn, path)?;
    set_wal(&conn, path)?;
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA cache_size=-32768;")
        .map_err(|e| db_error(path, "configuring", e))?;
    Ok(conn)
}

/// SQLite silently opens a write-protected file read-only; ferry needs to
/// know at once rather than at the first write.
pub(crate) fn ensure_writable(conn: &Connection, path: &Path) -> Result<(), Error> {
    let read_only = conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| db_error(path, "opening", e))?;
    if read_only {
        return Err(read_only_error(path));
    }
    Ok(())
}

fn read_only_error(path: &Path) -> Error {
    Error::fatal(format!("SQLite database {} is read-only", path.display())).with_fix(format!(
        "make {} and its directory writable by the user running ferry \
         (SQLite also writes -wal and -shm files next to it)",
        path.display()
    ))
}

fn configure(conn: &Connection, path: &Path) -> Result<(), Error> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| db_error(path, "configuring", e))?;
    // Statements are cached per connection; writers use one per table and
    // shape, so the default of 16 would thrash with a handful of tables.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
}

/// Switches to WAL: readers (snapshots, verify) never block writers and
/// keep a stable snapshot for as long as their transaction lasts.
pub(crate) fn set_wal(conn: &Connection, path: &Path) -> Result<(), Error> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| db_error(path, "switching to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::fatal(format!(
            "could not switch {} to WAL journal mode (it stays {mode:?})",
            path.display()
        ))
        .with_fix("make sure the file is a regular on-disk database and no other connection holds it open in another journal mode"));
    }
    Ok(())
}

pub(crate) fn journal_mode(conn: &Connection, path: &Path) -> Result<String, Error> {
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| db_error(path, "reading the journal mode", e))
}

/// Quotes an identifier for SQL text (`"` doubled).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL text (`'` doubled).
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Maps a driver error to a ferry error: the class says what the caller
/// should do, the message says which file and what ferry was doing.
pub(crate) fn db_error(path: &Path, doing: &str, e: rusqlite::Error) -> Error {
    let code = e.sqlite_error_code();
    let err = match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::transient(format!(
            "SQLite database {} is locked by another connection (waited {} s) while {doing}",
            path.display(),
            BUSY_TIMEOUT.as_secs()
        ))
        .with_fix("a long write transaction in another process holds the lock; ferry retries"),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig) => {
            Error::data(format!("{doing} failed in {}", path.display()))
        }
        Some(ErrorCode::ReadOnly) => read_only_error(path),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => Error::fatal(format!(
            "cannot open SQLite database {} while {doing}",
            path.display()
        ))
        .with_fix("check that the path is right, its directory exists and is writable by ferry"),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::fatal(format!(
            "{} is not a valid SQLite database (while {doing})",
            path.display()
        ))
        .with_fix("point ferry at the right file"),
        _ => Error::fatal(format!("{doing} failed in {}", path.display())),
    };
    err.with_source(e)
}

/// A connection (or connection-owning state) used from async code, holding
/// the lock for the duration of each call. On tokio's multi-threaded
/// runtime (the `ferry` binary) a call runs on the calling worker thread
/// through `block_in_place`, which moves the worker's other tasks to
/// another thread; elsewhere (a current-thread runtime, as in tests) it runs
/// on the blocking pool. The async runtime never waits for SQLite.
///
/// The state survives a cancelled call: the closure runs to the end and
/// releases the lock, so the next call sees a consistent state.
pub(crate) struct Blocking<T> {
    inner: Arc<Mutex<T>>,
    pub(crate) path: PathBuf,
}

impl<T> Clone for Blocking<T> {
    fn clone(&self) -> Self {
        Blocking {
            inner: Arc::clone(&self.inner),
            path: self.path.clone(),
        }
    }
}

impl<T: Send + 'static> Blocking<T> {
    pub(crate) fn new(value: T, path: &Path) -> Self {
        Blocking {
            inner: Arc::new(Mutex::new(value)),
            path: path.to_owned(),
        }
    }

    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut T) -> Result<R, Error> + Send + 'static,
        R: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let path = self.path.clone();
        let call = move || {
            // A panic mid-call may have left a transaction half done; refuse
            // to reuse the connection rather than guess.
            let mut guard = inner.lock().map_err(|_| {
                Error::fatal(format!(
                    "an earlier call on the connection to {} panicked; the connection is unusable",
                    path.display()
                ))
            })?;
            f(&mut guard)
        };
        if on_multi_thread_runtime() {
            // Run on this worker thread: `block_in_place` hands the worker's
            // other tasks to another thread meanwhile. Handing each call to
            // the blocking pool and back cost two thread wake-ups per call;
            // in a snapshot (three calls per chunk) about a tenth of the
            // writer's time on two cores.
            return tokio::task::block_in_place(|| {
                std::panic::catch_unwind(AssertUnwindSafe(call))
            })
            .map_err(|_| {
                Error::fatal(format!(
                    "a call on the connection to {} panicked",
                    self.path.display()
                ))
            })?;
        }
        tokio::task::spawn_blocking(call)
            .await
            .map_err(|e| Error::fatal(format!("SQLite worker task failed: {e}")))?
    }
}

/// Whether the current task runs on tokio's multi-threaded runtime, where
/// `block_in_place` may run a blocking call on the worker thread itself.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn missing_source_is_fatal_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let err = open_source(&path).unwrap_err();
        assert_eq!(err.class(), ferry_core::ErrorClass::Fatal);
        assert!(err.message().contains("does not exist"));
        assert!(err.fix().unwrap().contains("source.url"));
        assert!(!path.exists());
    }

    #[test]
    fn read_only_connection_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(a)")
            .unwrap();
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let err = ensure_writable(&conn, &path).unwrap_err();
        assert!(err.message().contains("read-only"));
        assert!(err.message().contains("ro.db"));
    }
}
