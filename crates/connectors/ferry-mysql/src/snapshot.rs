//! Consistent snapshots of a MySQL/MariaDB source.
//!
//! Each reader connection runs `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT` and reads `Binlog_snapshot_file`/`Binlog_snapshot_position`:
//! MariaDB reports the binlog position that belongs to exactly that
//! snapshot, without a global read lock, so streaming from it delivers
//! exactly what the snapshot lacks. Several connections read tables in
//! parallel only when their snapshots report one and the same position (no
//! transaction committed between them); otherwise one connection reads
//! every table.
//!
//! Each table is read in key order, one query per range still to copy,
//! its rows streamed and cut into chunks; chunks travel to the pipeline
//! through a channel of two per reader, so memory stays bounded whatever
//! the table size.

use async_trait::async_trait;
use ferry_core::{
    ChunkRows, Error, KeyRange, MySqlPosition, Position, Result, SnapshotChunk, SnapshotReader,
    SnapshotRequest, TableRef, Value,
};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::mpsc;

use crate::catalog::MyTable;
use crate::connection::{Endpoint, quote_ident};
use crate::error::my_error;
use crate::reader::decode_row;
use crate::sql::{column_list, key_compare, order_by_key};

/// A chunk, one reader's end (`None`), or the error that stopped it.
type Message = Result<Option<SnapshotChunk>>;

/// How many times parallel readers try to open snapshots at one position
/// before one reader copies everything.
const ALIGN_ATTEMPTS: usize = 5;

/// Opens the snapshot: `workers` connections at one position (or one
/// connection), each copying a share of the tables.
pub(crate) async fn open(
    endpoint: &Endpoint,
    requests: Vec<(SnapshotRequest, MyTable)>,
    workers: usize,
    chunk_rows: usize,
) -> Result<Box<dyn SnapshotReader>> {
    let workers = workers.clamp(1, requests.len().max(1));
    let (conns, position) = open_aligned(endpoint, workers).await?;
    tracing::info!(file = %position.file, offset = position.offset, readers = conns.len(),
        "mysql snapshot opened");
    let (tx, rx) = mpsc::channel(2 * conns.len());
    let mut shares: Vec<Vec<(SnapshotRequest, MyTable)>> =
        conns.iter().map(|_| Vec::new()).collect();
    for (i, request) in requests.into_iter().enumerate() {
        shares[i % conns.len()].push(request);
    }
    let readers = conns.len();
    for (conn, share) in conns.into_iter().zip(shares) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = copy_share(conn, share, chunk_rows.max(1), &tx).await;
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

/// Copies the tables of one reader, in order.
async fn copy_share(
    mut conn: Conn,
    share: Vec<(SnapshotRequest, MyTable)>,
    chunk_rows: usize,
    tx: &mpsc::Sender<Message>,
) -> Result<()> {
    for (request, table) in share {
        if !copy_table(&mut conn, &request, &table, chunk_rows, tx).await? {
            return Ok(());
        }
    }
    let _ = conn.query_drop("COMMIT").await;
    Ok(())
}

/// Streams one table's rows outside `request.skip`. Returns `false` when
/// the pipeline stopped reading.
async fn copy_table(
    conn: &mut Conn,
    request: &SnapshotRequest,
    local: &MyTable,
    chunk_rows: usize,
    tx: &mpsc::Sender<Message>,
) -> Result<bool> {
    let table = &request.table;
    let send = |rows: Vec<Vec<Value>>, range: KeyRange, table_done: bool| {
        tx.send(Ok(Some(SnapshotChunk {
            table: TableRef::clone(table),
            rows: ChunkRows::Values(rows),
            range,
            table_done,
        })))
    };
    let gaps = ferry_core::gaps(&request.skip);
    if gaps.is_empty() {
        // Copied before but not marked done: a chunk that claims no key.
        let empty = KeyRange {
            lower: Some(Vec::new()),
            upper: Some(Vec::new()),
        };
        return Ok(send(Vec::new(), empty, true).await.is_ok());
    }
    let schema = &local.table;
    for (g, gap) in gaps.iter().enumerate() {
        let last_gap = g + 1 == gaps.len();
        let mut params = Vec::new();
        let mut conditions = Vec::new();
        if let Some(lower) = &gap.lower {
            conditions.push(key_compare(schema, lower, true, &mut params));
        }
        if let Some(upper) = &gap.upper {
            conditions.push(key_compare(schema, upper, false, &mut params));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
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
        let mut lower = gap.lower.clone();
        let mut buf: Vec<Vec<Value>> = Vec::with_capacity(chunk_rows.min(4096));
        while let Some(row) = result.next().await.map_err(fail)? {
            // Flush a full buffer only once another row follows, so the last
            // chunk of a gap is the one that closes it.
            if buf.len() == chunk_rows {
                let upper = table.key_of(&buf[buf.len() - 1]);
                let range = KeyRange {
                    lower: lower.replace(upper.clone()),
                    upper: Some(upper),
                };
                if send(std::mem::take(&mut buf), range, false).await.is_err() {
                    return Ok(false);
                }
            }
            buf.push(decode_row(schema, &local.decode, row)?);
        }
        drop(result);
        let range = KeyRange {
            lower,
            upper: gap.upper.clone(),
        };
        if send(buf, range, last_gap).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
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
