//! Consistent snapshots of a MySQL/MariaDB source.
//!
//! Each reader connection runs `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT` and reads `Binlog_snapshot_file`/`Binlog_snapshot_position`:
//! MariaDB reports the binlog position that belongs to exactly that
//! snapshot, without a global read lock, so streaming from it delivers
//! exactly what the snapshot lacks. Several connections read in parallel
//! only when their snapshots report one and the same position (no
//! transaction committed between them); otherwise one connection reads
//! every table.
//!
//! The work is a queue of pieces: each range of a table still to copy, cut
//! every so many key values when the table is keyed by one integer column
//! and several readers share the work (`ferry_core::piece`). A piece is
//! read in key order by one query, its rows streamed and cut into chunks; chunks travel to the pipeline
//! through a channel of two per reader, so memory stays bounded whatever
//! the table size.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_core::{
    ChunkRows, ColumnType, Error, KeyRange, MySqlPosition, Position, Result, SnapshotChunk,
    SnapshotReader, SnapshotRequest, TableRef, Value,
};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::mpsc;

use crate::catalog::MyTable;
use crate::connection::{Endpoint, quote_ident};
use crate::error::my_error;
use crate::reader::decode_row;
use crate::sql::{column_list, order_by_key, range_filter};
use ferry_core::piece;

/// A chunk, one reader's end (`None`), or the error that stopped it.
type Message = Result<Option<SnapshotChunk>>;

/// How many times parallel readers try to open snapshots at one position
/// before one reader copies everything.
const ALIGN_ATTEMPTS: usize = 5;

/// Rows a piece of a table keyed by one integer column should hold when
/// several readers share the table.
const PIECE_ROWS: usize = 200_000;

/// One table being copied: its pieces still running, so that the last
/// piece to end marks the table done.
struct TableJob {
    request: SnapshotRequest,
    local: MyTable,
    /// Pieces not yet ended; locked while a piece's last chunk is sent.
    remaining: tokio::sync::Mutex<usize>,
}

/// A key range of one table, read by whichever reader is free.
struct Piece {
    job: Arc<TableJob>,
    range: KeyRange,
}

type Pieces = Arc<std::sync::Mutex<VecDeque<Piece>>>;

/// Opens the snapshot: `workers` connections at one position (or one
/// connection), each taking the next piece to copy: a table's range still
/// to copy, cut by key when it is keyed by one integer column and several
/// readers share the work.
pub(crate) async fn open(
    endpoint: &Endpoint,
    requests: Vec<(SnapshotRequest, MyTable)>,
    workers: usize,
    chunk_rows: usize,
) -> Result<Box<dyn SnapshotReader>> {
    let (mut conns, position) = open_aligned(endpoint, workers.max(1)).await?;
    let several = conns.len() > 1;
    let pieces = plan(&mut conns[0], requests, several).await?;
    tracing::info!(file = %position.file, offset = position.offset, readers = conns.len(),
        pieces = pieces.len(), "mysql snapshot opened");
    let (tx, rx) = mpsc::channel(2 * conns.len());
    let readers = conns.len();
    let pieces: Pieces = Arc::new(std::sync::Mutex::new(pieces));
    for conn in conns {
        let (tx, pieces) = (tx.clone(), pieces.clone());
        tokio::spawn(async move {
            let result = copy_pieces(conn, &pieces, chunk_rows.max(1), &tx).await;
            let _ = tx.send(result.map(|()| None)).await;
        });
    }
    Ok(Box::new(MySqlSnapshot {
        position: Position::MySql(position),
        rx,
        running: readers,
        failed: false,
    }))
}

/// The pieces of every table: its ranges still to copy, each cut every so
/// many key values when `cut` and the table is keyed by one integer column.
async fn plan(
    conn: &mut Conn,
    requests: Vec<(SnapshotRequest, MyTable)>,
    cut: bool,
) -> Result<VecDeque<Piece>> {
    let mut pieces = VecDeque::new();
    for (request, local) in requests {
        let gaps = ferry_core::gaps(&request.skip);
        let mut ranges = Vec::new();
        let int_key = local.table.key.len() == 1
            && matches!(
                local.table.columns[local.table.key[0]].ty,
                ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64
            );
        for gap in gaps {
            if cut && int_key {
                let (inside, est_rows) = key_span(conn, &local, &gap).await?;
                let (min, max) = (inside.map(|s| s.0), inside.map(|s| s.1));
                let width = piece::int_key_width(min, max, est_rows, PIECE_ROWS);
                ranges.extend(piece::int_key_pieces(&gap, inside, width));
            } else {
                ranges.push(gap);
            }
        }
        if ranges.is_empty() {
            // Copied before but not marked done: a chunk that claims no key.
            ranges.push(KeyRange {
                lower: Some(Vec::new()),
                upper: Some(Vec::new()),
            });
        }
        let job = Arc::new(TableJob {
            request,
            local,
            remaining: tokio::sync::Mutex::new(ranges.len()),
        });
        pieces.extend(ranges.into_iter().map(|range| Piece {
            job: job.clone(),
            range,
        }));
    }
    Ok(pieces)
}

/// The smallest and largest key in `gap` (`None` when it holds none) and
/// the table's estimated rows, read inside the snapshot.
async fn key_span(
    conn: &mut Conn,
    local: &MyTable,
    gap: &KeyRange,
) -> Result<(Option<(i64, i64)>, f64)> {
    let schema = &local.table;
    let key = quote_ident(&schema.columns[schema.key[0]].name);
    let mut params = Vec::new();
    let filter = range_filter(schema, gap, &mut params);
    let doing = format!("planning the copy of {}", schema.name);
    let span: Option<(Option<i64>, Option<i64>)> = conn
        .exec_first(
            format!(
                "SELECT MIN({key}), MAX({key}) FROM {} {filter}",
                quote_ident(&schema.name.name)
            ),
            params,
        )
        .await
        .map_err(|e| my_error(e, &doing))?;
    let est: Option<Option<u64>> = conn
        .exec_first(
            "SELECT table_rows FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
            (&schema.name.name,),
        )
        .await
        .map_err(|e| my_error(e, &doing))?;
    let inside = match span {
        Some((Some(min), Some(max))) => Some((min, max)),
        _ => None,
    };
    Ok((inside, est.flatten().unwrap_or(0) as f64))
}

/// `workers` connections inside snapshots at one binlog position.
async fn open_aligned(endpoint: &Endpoint, workers: usize) -> Result<(Vec<Conn>, MySqlPosition)> {
    for _ in 0..ALIGN_ATTEMPTS {
        let mut conns = Vec::new();
        let mut positions = Vec::new();
        for _ in 0..workers {
            let mut conn = endpoint.connect().await?;
            positions.push(begin(&mut conn).await?);
            conns.push(conn);
        }
        if positions.windows(2).all(|w| w[0] == w[1]) {
            return Ok((conns, positions.swap_remove(0)));
        }
    }
    let mut conn = endpoint.connect().await?;
    let position = begin(&mut conn).await?;
    Ok((vec![conn], position))
}

/// Starts a consistent snapshot and reads the binlog position it belongs to.
async fn begin(conn: &mut Conn) -> Result<MySqlPosition> {
    let doing = "starting a consistent snapshot";
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(|e| my_error(e, doing))?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(|e| my_error(e, doing))?;
    crate::recopy::snapshot_position(conn).await
}

/// Copies pieces until none is left; then ends the snapshot transaction.
async fn copy_pieces(
    mut conn: Conn,
    pieces: &Pieces,
    chunk_rows: usize,
    tx: &mpsc::Sender<Message>,
) -> Result<()> {
    loop {
        let next = pieces.lock().expect("pieces lock").pop_front();
        let Some(piece) = next else { break };
        if !copy_piece(&mut conn, &piece, chunk_rows, tx).await? {
            return Ok(());
        }
    }
    let _ = conn.query_drop("COMMIT").await;
    Ok(())
}

/// Streams one piece's rows in key order, in chunks. Returns `false` when
/// the pipeline stopped reading.
async fn copy_piece(
    conn: &mut Conn,
    piece: &Piece,
    chunk_rows: usize,
    tx: &mpsc::Sender<Message>,
) -> Result<bool> {
    let job = &piece.job;
    let table = &job.request.table;
    let chunk = |rows: Vec<Vec<Value>>, range: KeyRange, table_done: bool| SnapshotChunk {
        table: TableRef::clone(table),
        rows: ChunkRows::Values(rows),
        range,
        table_done,
    };
    let schema = &job.local.table;
    let range = &piece.range;
    let claims_nothing = range.lower.as_ref().is_some_and(Vec::is_empty);
    let mut buf: Vec<Vec<Value>> = Vec::new();
    let mut lower = range.lower.clone();
    if !claims_nothing {
        let mut params = Vec::new();
        let filter = range_filter(schema, range, &mut params);
        let order = if schema.is_keyless() {
            String::new()
        } else {
            order_by_key(schema)
        };
        let sql = format!(
            "SELECT {} FROM {} {filter} {order}",
            column_list(schema),
            quote_ident(&schema.name.name),
        );
        let fail = |e| {
            my_error(e, "reading a snapshot")
                .with("table", table.name.to_string())
                .with("statement", sql.clone())
        };
        let mut result = conn.exec_iter(sql.as_str(), params).await.map_err(fail)?;
        buf.reserve(chunk_rows.min(4096));
        while let Some(row) = result.next().await.map_err(fail)? {
            // Flush a full buffer only once another row follows, so the last
            // chunk of the piece is the one that closes it.
            if buf.len() == chunk_rows {
                let upper = table.key_of(&buf[buf.len() - 1]);
                let range = KeyRange {
                    lower: lower.replace(upper.clone()),
                    upper: Some(upper),
                };
                if tx
                    .send(Ok(Some(chunk(std::mem::take(&mut buf), range, false))))
                    .await
                    .is_err()
                {
                    return Ok(false);
                }
            }
            buf.push(decode_row(schema, &job.local.decode, row)?);
        }
    }
    let last = KeyRange {
        lower,
        upper: range.upper.clone(),
    };
    // The piece that ends last marks the table done; its chunk goes after
    // every other piece's.
    let mut remaining = job.remaining.lock().await;
    *remaining -= 1;
    let done = *remaining == 0;
    Ok(tx.send(Ok(Some(chunk(buf, last, done)))).await.is_ok())
}

struct MySqlSnapshot {
    position: Position,
    rx: mpsc::Receiver<Message>,
    /// Readers that have not ended yet.
    running: usize,
    failed: bool,
}

#[async_trait]
impl SnapshotReader for MySqlSnapshot {
    fn position(&self) -> &Position {
        &self.position
    }

    async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>> {
        while self.running > 0 && !self.failed {
            match self.rx.recv().await {
                Some(Ok(Some(chunk))) => return Ok(Some(chunk)),
                Some(Ok(None)) => self.running -= 1,
                Some(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // Every reader ends with a message; a closed channel without
                // one means a reader died and the snapshot is incomplete.
                None => {
                    self.failed = true;
                    return Err(Error::fatal(
                        "a snapshot reader stopped unexpectedly; the snapshot is incomplete",
                    ));
                }
            }
        }
        if self.failed {
            return Err(Error::fatal("the snapshot failed earlier"));
        }
        Ok(None)
    }
}
