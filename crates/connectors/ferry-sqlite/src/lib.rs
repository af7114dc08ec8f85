//! SQLite for ferry: a source that captures changes with triggers into a
//! change table, consistent snapshots, and a sink that keeps its
//! checkpoint in the same transaction as the data.
//!
//! | concern | file |
//! | --- | --- |
//! | `Source`: tables, prepare, stream, ack, teardown | [`source`] |
//! | triggers, change table, `quote()` images | `capture.rs` |
//! | rows `REPLACE` removes without a delete trigger | `capture/displaced.rs` |
//! | consistent snapshot on its own thread | `snapshot.rs` |
//! | `Sink`, `CheckpointStore`, `SinkWriter` | [`sink`] |
//! | change rows → `Change`s, structure drift | `change.rs` |
//! | declared types ↔ `ColumnType`, values ↔ `Value` | `types.rs`, `temporal.rs` |
//! | opening files, pragmas, blocking bridge, error classes | `connection.rs` |
//! | one runner per pipeline (target lock file), database identity | `fence.rs` |
//!
//! Positions are [`ferry_core::SqlitePosition`]: the change-table sequence.
//! The source delivers *groups of whole source transactions* (SQLite
//! triggers cannot see transaction boundaries, but a committed prefix of
//! the change table always ends on one): readers of the target still only
//! see states the source had. See `README.md` for the design and limits.
//!
//! Every driver call runs under `block_in_place`, on tokio's blocking pool
//! or on a dedicated thread; nothing here blocks the async runtime.

mod array;
mod capture;
mod change;
mod check;
mod connection;
mod ddl;
mod fence;
mod probe;
mod reader;
mod schema;
pub mod sink;
mod snapshot;
pub mod source;
mod temporal;
mod types;

use std::path::PathBuf;

pub use probe::SqliteProbe;
pub use sink::{IndexSource, SqliteSink, SqliteSinkConfig};
pub use source::{SqliteSource, SqliteSourceConfig};

const URL_FORMS: &str =
    "sqlite:relative/path.db, sqlite://relative/path.db or sqlite:///absolute/path.db";

/// The file a `sqlite:` URL names: `sqlite:path` and `sqlite://path` are
/// relative (to the working directory), `sqlite:///abs/path` is absolute.
pub fn path_from_url(url: &str) -> Result<PathBuf, ferry_core::Error> {
    let bad = |why: &str| {
        ferry_core::Error::fatal(format!("{url:?} is not a SQLite URL: {why}"))
            .with_fix(format!("write it as {URL_FORMS}"))
    };
    let rest = url
        .strip_prefix("sqlite:")
        .ok_or_else(|| bad("it must start with `sqlite:`"))?;
    // `sqlite:///abs` keeps one slash; `sqlite://rel` drops both.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    if path == ":memory:" || path.starts_with("file:") {
        return Err(bad(
            "in-memory databases and nested `file:` URIs are not supported",
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            path_from_url("sqlite:a/b.db").unwrap(),
            PathBuf::from("a/b.db")
        );
        assert_eq!(
            path_from_url("sqlite://a.db").unwrap(),
            PathBuf::from("a.db")
        );
        assert_eq!(
            path_from_url("sqlite:///abs/a.db").unwrap(),
            PathBuf::from("/abs/a.db")
        );
        for bad in [
            "postgres://x",
            "sqlite:",
            "sqlite://",
            "a.db",
            "sqlite::memory:",
        ] {
            let e = path_from_url(bad).unwrap_err();
            assert!(e.message().contains(bad), "{bad}");
            assert!(e.fix().unwrap().contains("sqlite:///"));
        }
    }
}
