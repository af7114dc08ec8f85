//! Pre-flight checks (`ferry check`) for SQLite sources and targets. They
//! read only: the lock probe opens a write transaction and rolls it back
//! without writing.

use std::path::Path;
use std::time::Duration;

use ferry_core::{CheckItem, Checkpoint};
use rusqlite::Connection;

use crate::capture;
use crate::connection::{BUSY_TIMEOUT, Blocking, db_error, ensure_writable, journal_mode};
use crate::schema::{read_selected_table, selected_tables};
use crate::source::SqliteSourceConfig;

/// How long the lock probe waits: long enough to skip a short commit, short
/// enough that `ferry check` answers at once.
const LOCK_PROBE: Duration = Duration::from_millis(200);

pub(crate) async fn source(
    conn: &Blocking<Connection>,
    cfg: &SqliteSourceConfig,
) -> Vec<CheckItem> {
    let cfg = cfg.clone();
    let result = conn.run(move |c| Ok(source_items(c, &cfg))).await;
    result.unwrap_or_else(|e| vec![CheckItem::from_error("source: sqlite", &e)])
}

fn source_items(c: &Connection, cfg: &SqliteSourceConfig) -> Vec<CheckItem> {
    let path = &cfg.path;
    let mut items = Vec::new();
    if !path.exists() {
        items.push(CheckItem::fail(
            "source: file",
            format!("{} does not exist", path.display()),
            "check the path in `source.url`; ferry does not create source databases",
        ));
        return items;
    }
    items.push(CheckItem::ok(
        "source: file",
        format!("{} opens", path.display()),
    ));
    items.push(match ensure_writable(c, path) {
        Ok(()) => CheckItem::ok("source: writable", "ferry can install its capture triggers"),
        Err(e) => CheckItem::from_error("source: writable", &e),
    });
    items.push(match journal_mode(c, path) {
        Ok(m) if m.eq_ignore_ascii_case("wal") => CheckItem::ok("source: journal_mode", "wal"),
        Ok(m) => CheckItem::ok(
            "source: journal_mode",
            format!("{m}; ferry switches the database to WAL when the pipeline starts"),
        ),
        Err(e) => CheckItem::from_error("source: journal_mode", &e),
    });

    let names = match selected_tables(c, path, &cfg.selection) {
        Ok(n) => n,
        Err(e) => {
            items.push(CheckItem::from_error("source: tables", &e));
            return items;
        }
    };
    if names.is_empty() {
        items.push(CheckItem::warn(
            "source: tables",
            "no table is selected",
            "check `include` / `exclude` in the pipeline file",
        ));
    }
    let mut tables = Vec::new();
    for name in &names {
        let label = format!("source: table {name}");
        match read_selected_table(c, path, name, &cfg.selection, cfg.keep_storage_classes) {
            Ok(t) => {
                let key = if t.is_keyless() {
                    "no key: copied whole, changed one row at a time".to_owned()
                } else {
                    format!("key ({})", t.key_names().join(", "))
                };
                items.push(CheckItem::ok(
                    label,
                    format!("{} columns, {key}", t.columns.len()),
                ));
                tables.push(t);
            }
            Err(e) => items.push(CheckItem::from_error(label, &e)),
        }
    }
    items.push(capture_item(c, path, &tables));
    items.push(lock_item(c, path, "source: lock"));
    items
}

fn capture_item(c: &Connection, path: &Path, tables: &[ferry_core::TableSchema]) -> CheckItem {
    let count = || -> rusqlite::Result<usize> {
        if !capture::table_exists(c, "_ferry_changes")? {
            return Ok(0);
        }
        let mut n = 0;
        for t in tables {
            n += usize::from(capture::capture_state(c, t)?.complete());
        }
        Ok(n)
    };
    match count() {
        Ok(0) => CheckItem::ok(
            "source: capture",
            "not installed yet; ferry installs its triggers when the pipeline starts",
        ),
        Ok(n) if n == tables.len() => {
            CheckItem::ok("source: capture", format!("installed for all {n} tables"))
        }
        Ok(n) => CheckItem::ok(
            "source: capture",
            format!(
                "installed for {n} of {} tables; the others are installed (or updated) when the pipeline starts",
                tables.len()
            ),
        ),
        Err(e) => CheckItem::from_error("source: capture", &db_error(path, "reading triggers", e)),
    }
}

/// Probes the write lock: `BEGIN IMMEDIATE` takes it, `ROLLBACK` releases it
/// without having written anything.
fn lock_item(c: &Connection, path: &Path, name: &str) -> CheckItem {
    let probe = || -> rusqlite::Result<()> {
        c.busy_timeout(LOCK_PROBE)?;
        let r = c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;");
        c.busy_timeout(BUSY_TIMEOUT)?;
        r
    };
    match probe() {
        Ok(()) => CheckItem::ok(name, "no other connection holds the write lock"),
        Err(e) => {
            let err = db_error(path, "probing the write lock", e);
            if err.class() == ferry_core::ErrorClass::Transient {
                CheckItem::warn(
                    name,
                    format!(
                        "another connection holds the write lock on {}",
                        path.display()
                    ),
                    "a long write transaction delays ferry; it waits up to 5 s per attempt and retries",
                )
            } else {
                CheckItem::from_error(name, &err)
            }
        }
    }
}

pub(crate) async fn target(conn: &Blocking<Connection>, pipeline: &str) -> Vec<CheckItem> {
    let pipeline = pipeline.to_owned();
    let path = conn.path.clone();
    let result = conn
        .run(move |c| Ok(target_items(c, &path, &pipeline)))
        .await;
    result.unwrap_or_else(|e| vec![CheckItem::from_error("target: sqlite", &e)])
}

fn target_items(c: &Connection, path: &Path, pipeline: &str) -> Vec<CheckItem> {
    let mut items = vec![match ensure_writable(c, path) {
        Ok(()) => CheckItem::ok(
            "target: writable",
            format!("{} is writable", path.display()),
        ),
        Err(e) => CheckItem::from_error("target: writable", &e),
    }];
    items.push(match journal_mode(c, path) {
        Ok(m) => CheckItem::ok("target: journal_mode", m),
        Err(e) => CheckItem::from_error("target: journal_mode", &e),
    });
    items.push(match crate::sink::load_checkpoint(c, path, pipeline) {
        Ok(cp) if cp == Checkpoint::default() => CheckItem::ok(
            "target: checkpoint",
            "none yet (the pipeline starts with a copy)",
        ),
        Ok(cp) => CheckItem::ok(
            "target: checkpoint",
            format!(
                "applied up to {}, {} tables tracked",
                cp.applied.map_or("nothing".into(), |p| p.to_string()),
                cp.tables.len()
            ),
        ),
        Err(e) => CheckItem::from_error("target: checkpoint", &e),
    });
    items.push(lock_item(c, path, "target: lock"));
    items
}
