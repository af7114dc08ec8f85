//! Consistent snapshots of a SQLite source.
//!
//! One dedicated thread and connection per snapshot: `BEGIN`, then as the
//! *first* statement reading the change table's end (`capture::END_SQL`). In WAL mode the
//! first read of a transaction fixes its view of the database, so the
//! position and every table read afterwards in the same transaction come
//! from one state. The triggers were installed by `prepare()` before, so a
//! change committed after that state has a seq greater than the position:
//! streaming from the position delivers exactly what the snapshot lacks.
//!
//! Rows travel to the async side through a channel of two chunks, so memory
//! stays bounded whatever the table size; the thread blocks while the
//! pipeline is busy. The read transaction stays open until the last table
//! is read, which keeps SQLite from checkpointing the WAL past it: the WAL
//! file grows for as long as a large snapshot runs.

use std::path::PathBuf;

use async_trait::async_trait;
use ferry_core::{
    ChunkRows, Error, KeyRange, Position, Result, SnapshotChunk, SnapshotReader, SnapshotRequest,
    SqlitePosition, TableRef, Value,
};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{db_error, ident, journal_mode, open_source};
use crate::reader::{Side, column_list, convert_row, key_order, key_tuple, params_tuple};
use crate::types::Param;

/// A chunk, the end of the snapshot (`None`), or the error that stopped it.
type Message = Result<Option<SnapshotChunk>>;

/// Starts the snapshot thread and waits until it has fixed its position.
pub(crate) async fn open(
    path: PathBuf,
    requests: Vec<SnapshotRequest>,
    max_chunk_rows: usize,
    side: Side,
) -> Result<Box<dyn SnapshotReader>> {
    let (position_tx, position_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(2);
    std::thread::Builder::new()
        .name("ferry-sqlite-snapshot".into())
        .spawn(move || {
            run(
                path,
                requests,
                max_chunk_rows.max(1),
                &side,
                position_tx,
                tx,
            )
        })
        .map_err(|e| Error::fatal("could not start the snapshot thread").with_source(e))?;
    let seq = position_rx
        .await
        .map_err(|_| Error::fatal("the snapshot thread stopped before taking its snapshot"))??;
    tracing::info!(seq, "sqlite snapshot opened");
    Ok(Box::new(SqliteSnapshot {
        position: Position::Sqlite(SqlitePosition { seq }),
        rx,
        finished: false,
    }))
}

struct SqliteSnapshot {
    position: Position,
    rx: mpsc::Receiver<Message>,
    finished: bool,
}

#[async_trait]
impl SnapshotReader for SqliteSnapshot {
    fn position(&self) -> &Position {
        &self.position
    }

    async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>> {
        if self.finished {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Ok(Some(chunk))) => Ok(Some(chunk)),
            Some(Ok(None)) => {
                self.finished = true;
                Ok(None)
            }
            Some(Err(e)) => {
                self.finished = true;
                Err(e)
            }
            // The thread always ends with an explicit message; a closed
            // channel without one means it died, and the snapshot is
            // incomplete — never report that as done.
            None => Err(Error::fatal(
                "the snapshot thread stopped unexpectedly; the snapshot is incomplete",
            )),
        }
    }
}

fn run(
    path: PathBuf,
    requests: Vec<SnapshotRequest>,
    max_rows: usize,
    side: &Side,
    position_tx: oneshot::Sender<Result<i64>>,
    tx: mpsc::Sender<Message>,
) {
    let conn = match begin(&path) {
        Ok((conn, seq)) => {
            if position_tx.send(Ok(seq)).is_err() {
                return;
            }
            conn
        }
        Err(e) => {
            let _ = position_tx.send(Err(e));
            return;
        }
    };
    for request in &requests {
        match copy_table(&conn, &path, request, max_rows, side, &tx) {
            Ok(true) => {}
            // The reader was dropped: the pipeline stopped.
            Ok(false) => return,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    let _ = tx.blocking_send(Ok(None));
    // Dropping the connection ends the read transaction.
}

/// Opens the read transaction and fixes its position.
fn begin(path: &std::path::Path) -> Result<(Connection, i64)> {
    let conn = open_source(path)?;
    let mode = journal_mode(&conn, path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // In rollback-journal mode a long read would block every writer.
        return Err(Error::fatal(format!(
            "source database {} is in journal mode {mode:?}, not WAL; a snapshot would block its writers",
            path.display()
        ))
        .with_fix("run the pipeline normally: prepare() switches the source to WAL before the snapshot"));
    }
    conn.execute_batch("BEGIN")
        .map_err(|e| db_error(path, "starting the snapshot", e))?;
    let seq = conn
        .query_row(crate::capture::END_SQL, [], |r| r.get(0))
        .map_err(|e| {
            db_error(path, "reading the snapshot position", e)
                .with_fix("the capture tables are missing: prepare() must run before snapshot()")
        })?;
    Ok((conn, seq))
}

/// Streams one table's rows outside `request.skip`. Returns `false` when
/// the receiver is gone.
fn copy_table(
    conn: &Connection,
    path: &std::path::Path,
    request: &SnapshotRequest,
    max_rows: usize,
    side: &Side,
    tx: &mpsc::Sender<Message>,
) -> Result<bool> {
    let table = &request.table;
    let send = |rows: Vec<Vec<Value>>, range: KeyRange, table_done: bool| {
        tx.blocking_send(Ok(Some(SnapshotChunk {
            table: TableRef::clone(table),
            rows: ChunkRows::Values(rows),
            range,
            table_done,
        })))
        .is_ok()
    };
    let gaps = ferry_core::gaps(&request.skip);
    if gaps.is_empty() {
        // Everything was copied before but the table was not marked done.
        // The chunk must not claim any key for this snapshot, so it carries
        // an empty range: `[] < key <= []` holds for no key.
        let empty = KeyRange {
            lower: Some(Vec::new()),
            upper: Some(Vec::new()),
        };
        return Ok(send(Vec::new(), empty, true));
    }
    let n = table.key.len();
    for (g, gap) in gaps.iter().enumerate() {
        let last_gap = g + 1 == gaps.len();
        let mut conditions = Vec::new();
        if gap.lower.is_some() {
            conditions.push(format!("{} > {}", key_tuple(table), params_tuple(1, n)));
        }
        if gap.upper.is_some() {
            // Numbered after the lower bound's only when there is one: the
            // bounds are bound one after the other below, and a parameter
            // left unbound is NULL (a gap read as empty, its keys then
            // recorded as copied).
            let first = if gap.lower.is_some() { n + 1 } else { 1 };
            conditions.push(format!(
                "{} <= {}",
                key_tuple(table),
                params_tuple(first, n)
            ));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // A keyless table is read in rowid order; its chunks' ranges are
        // empty (it is copied again whole after a restart, ADR 0008).
        let order = if table.is_keyless() {
            "rowid".to_owned()
        } else {
            key_order(table)
        };
        let sql = format!(
            "SELECT {} FROM {} {filter} ORDER BY {order}",
            column_list(table),
            ident(&table.name.name),
        );
        let fail = |e| {
            db_error(path, "reading a snapshot", e)
                .with("table", table.name.to_string())
                .with("statement", sql.clone())
        };
        let mut stmt = conn.prepare(&sql).map_err(fail)?;
        let bounds = gap.lower.iter().flatten().chain(gap.upper.iter().flatten());
        for (i, v) in bounds.enumerate() {
            stmt.raw_bind_parameter(i + 1, Param(v)).map_err(fail)?;
        }
        let mut rows = stmt.raw_query();
        let mut lower = gap.lower.clone();
        let mut buf: Vec<Vec<Value>> = Vec::with_capacity(max_rows.min(4096));
        while let Some(row) = rows.next().map_err(fail)? {
            // Only flush a full buffer once another row is known to follow,
            // so the last chunk of a gap is the one that closes it.
            if buf.len() == max_rows {
                let upper = table.key_of(&buf[buf.len() - 1]);
                let range = KeyRange {
                    lower: lower.replace(upper.clone()),
                    upper: Some(upper),
                };
                if !send(std::mem::take(&mut buf), range, false) {
                    return Ok(false);
                }
            }
            buf.push(convert_row(table, row, side)?);
        }
        let range = KeyRange {
            lower,
            upper: gap.upper.clone(),
        };
        if !send(buf, range, last_gap) {
            return Ok(false);
        }
    }
    Ok(true)
}
