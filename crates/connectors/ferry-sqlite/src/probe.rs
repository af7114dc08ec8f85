//! Position probes for consistent readers (`ferry gateway`).
//!
//! A SQLite source's position is its change table's sequence: the highest
//! sequence number ever handed out (which survives pruning) is a position
//! every change committed before the call precedes. The source delivers
//! changes of other pipelines' tables as heartbeats, so a reader waiting
//! for that position is not held up by changes it does not read.
//!
//! The epoch is the file's identity. A change table dropped and created
//! again (`ferry teardown`) starts its sequence over: the probe notices
//! the end going backwards and refuses to compare from then on.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_core::{Error, Position, Result, SqlitePosition};
use rusqlite::Connection;

use crate::capture::END_SQL;
use crate::connection::{db_error, open_source};

/// Reads the change table's end of one SQLite source, on a connection of
/// its own.
pub struct SqliteProbe {
    path: PathBuf,
    epoch: String,
    /// The connection, and the highest end read so far.
    state: Mutex<(Connection, i64)>,
}

impl std::fmt::Debug for SqliteProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteProbe")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl SqliteProbe {
    /// Opens the source at `path` (blocking).
    pub fn open(path: &Path) -> Result<SqliteProbe> {
        let conn = open_source(path)?;
        let id = crate::fence::identity(path)?.replace(['.', ':', '='], "-");
        Ok(SqliteProbe {
            path: path.to_owned(),
            epoch: format!("sqlite.{id}"),
            state: Mutex::new((conn, 0)),
        })
    }

    /// The history positions belong to: `sqlite.<file identity>`.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The change table's end now (blocking: call it off the async
    /// runtime). 0 before the pipeline created the change table.
    pub fn end(&self) -> Result<Position> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (conn, highest) = &mut *state;
        let seq: i64 = match conn.query_row(END_SQL, [], |r| r.get(0)) {
            Ok(s) => s,
            Err(e) if e.to_string().contains("no such table") => 0,
            Err(e) => return Err(db_error(&self.path, "reading the change table's end", e)),
        };
        if seq < *highest {
            return Err(Error::fatal(format!(
                "the change table of {} started over (its end went from {highest} back to \
                 {seq}): it was dropped and created again, so positions before and after \
                 cannot be compared",
                self.path.display()
            ))
            .with_fix("restart the gateway node: it loads the tables again"));
        }
        *highest = seq;
        Ok(Position::Sqlite(SqlitePosition { seq }))
    }
}
