//! The one integration-test binary of ferry-sqlite. Every test works on real
//! SQLite files in its own temporary directory; a second `rusqlite`
//! connection plays the other process that writes to the source.

mod conformance;
mod replace;
mod round_trip;
mod sink;
mod snapshot;
mod source;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::{Position, Source, SourceEvent, SqlitePosition, Transaction};
use ferry_sqlite::{SqliteSource, SqliteSourceConfig};
use rusqlite::Connection;
use tempfile::TempDir;

/// Longest a test waits for an event before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A temporary directory holding a source database created with `sql`.
pub struct Db {
    pub dir: TempDir,
    pub path: PathBuf,
}

impl Db {
    pub fn new(sql: &str) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source.db");
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        Db { dir, path }
    }

    /// Another connection, as another process would open it.
    pub fn conn(&self) -> Connection {
        writer(&self.path)
    }

    pub fn config(&self) -> SqliteSourceConfig {
        let mut cfg = SqliteSourceConfig::new(&self.path, "test");
        cfg.poll_interval = Duration::from_millis(5);
        cfg
    }

    /// An opened and prepared source streaming from now.
    pub async fn streaming(&self, cfg: SqliteSourceConfig) -> SqliteSource {
        let mut src = SqliteSource::open(cfg).unwrap();
        src.tables().await.unwrap();
        src.prepare().await.unwrap();
        src.start_stream(None, &[]).await.unwrap();
        src
    }
}

impl Db {
    /// The seq a freshly installed change table starts after (the capture
    /// seeds it with the time): positions in tests are relative to it.
    /// Read once capture is installed and before any change is captured.
    pub fn base(&self) -> i64 {
        count(
            &self.path,
            "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
        )
    }
}

pub fn writer(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

pub fn seq(p: &Position) -> i64 {
    p.as_sqlite().unwrap().seq
}

pub fn pos(seq: i64) -> Position {
    Position::Sqlite(SqlitePosition { seq })
}

/// The next non-heartbeat event.
pub async fn next_data(src: &mut SqliteSource) -> SourceEvent {
    loop {
        let event = tokio::time::timeout(WAIT, src.next())
            .await
            .expect("no event in time")
            .unwrap();
        if !matches!(event, SourceEvent::Heartbeat { .. }) {
            return event;
        }
    }
}

/// The next transaction, which must arrive whole (no `Partial` before it).
pub async fn next_commit(src: &mut SqliteSource) -> Transaction {
    match next_data(src).await {
        SourceEvent::Commit(t) => t,
        other => panic!("expected a commit, got {other:?}"),
    }
}

pub fn count(path: &Path, sql: &str) -> i64 {
    writer(path).query_row(sql, [], |r| r.get(0)).unwrap()
}
