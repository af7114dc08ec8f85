//! The parallel snapshot: several connections import one exported snapshot
//! (`SET TRANSACTION SNAPSHOT`), tables are copied in parallel, and a table
//! is split into key ranges copied in parallel (a single integer key by
//! arithmetic, other keys at keys sampled inside the snapshot).
//!
//! Each worker runs `COPY (SELECT ... WHERE <range>) TO STDOUT (FORMAT
//! binary)`, decodes rows into ferry values and sends chunks of at most
//! [`CHUNK_ROWS`] rows through a bounded channel: memory stays bounded
//! whatever the table size. A chunk's [`KeyRange`] covers only keys the
//! chunk completes; ranges the request says to skip are never read.
//!
//! When the request carries this table's binary COPY encoding (the target
//! is a PostgreSQL of the same major version with the same built-in column
//! types, and nothing transforms the rows), the tuples are not decoded:
//! they pass through as [`ChunkRows::Encoded`] bytes, and only the key of
//! a chunk's last row is decoded, for its range.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::{
    ChunkRows, EncodedRows, KeyRange, Position, Result, Selection, SnapshotChunk, SnapshotReader,
    SnapshotRequest, TableRef, Value, piece,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::bad_value::decode_row;
use crate::catalog::PgTable;
use crate::connection::Endpoint;
use crate::copy::{CopyDecoder, decode_fields, for_each_field};
use crate::error::pg_error;
use crate::reader::{
    ReadColumn, column_list, copy_out_rows, indexed_order, range_predicate, read_columns,
    select_blocks, select_range,
};
use crate::types::{Kind, quote_literal};

/// Rows per chunk sent to the pipeline, unless the pipeline sets
/// `snapshot.chunk_rows`.
pub(crate) const CHUNK_ROWS: usize = 20_000;
/// Rows per chunk of encoded rows: each chunk is one `COPY` on the target,
/// and a `COPY` costs about 1.5 ms beyond its rows (a 5 M-row table
/// loaded in 20,000-row `COPY`s took 14 % longer than in one, in
/// 50,000-row ones 6 % longer). Encoded rows take no more memory than
/// their bytes, so chunks can be larger than decoded ones.
const ENCODED_CHUNK_ROWS: usize = 40_000;
/// Bytes per chunk of encoded rows (wide rows make smaller chunks). With
/// 4 workers at most about 20 chunks are in flight (filling, waiting,
/// queued in the pipeline, being written): under 100 MiB.
const CHUNK_BYTES: usize = 4 << 20;

/// What one table's copy needs.
struct TableJob {
    table: TableRef,
    /// Rows per chunk (at most [`CHUNK_BYTES`] of encoded rows too).
    chunk_rows: usize,
    /// The table as the source names it (`"schema"."name"`).
    from: String,
    cols: Vec<ReadColumn>,
    kinds: Vec<Kind>,
    key_cols: Vec<ReadColumn>,
    /// Pass rows through in this encoding (binary COPY tuples) undecoded.
    encoding: Option<String>,
    /// Per column: nothing reads it, so a value that cannot be read there
    /// becomes NULL instead of an error.
    unread: Vec<bool>,
    /// Work items of this table not finished yet; held while sending a
    /// final chunk so the one that brings it to zero is sent last.
    remaining: tokio::sync::Mutex<usize>,
}

impl TableJob {
    /// A tuple's values; see [`decode_row`] for a value that cannot be read.
    fn decode(&self, tuple: &[u8]) -> Result<Vec<Value>> {
        let mut fields: Vec<Option<&[u8]>> = Vec::with_capacity(self.kinds.len());
        for_each_field(tuple, |_, f| {
            fields.push(f);
            Ok(())
        })?;
        decode_row(
            &self.table,
            fields.len(),
            |i| self.unread.get(i).copied().unwrap_or(false),
            |i| match fields[i] {
                None => Ok(Value::Null),
                Some(bytes) => crate::binary::decode(&self.kinds[i], bytes),
            },
        )
    }
}

/// One key range of a table, read in key order by one worker: every chunk
/// claims the keys from the previous chunk's last key to its own, so a
/// chunk's rows are always inside the range it records as copied.
struct Work {
    job: Arc<TableJob>,
    range: KeyRange,
}

/// Opens worker connections inside `snapshot`, plans the work and starts
/// the workers. The caller keeps the exporting session open until this
/// returns (every worker has imported the snapshot by then).
pub(crate) async fn start(
    endpoint: &Endpoint,
    snapshot: &str,
    position: Position,
    workers: usize,
    chunk_rows: Option<usize>,
    requests: Vec<(SnapshotRequest, PgTable)>,
    selection: &Selection,
) -> Result<Box<dyn SnapshotReader>> {
    let workers = workers.clamp(1, 32).min(requests.len().max(1) * 8);
    let mut clients = Vec::with_capacity(workers);
    for _ in 0..workers {
        let c = endpoint.connect().await?;
        c.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| {
            pg_error(e, "importing the exported snapshot")
                .with_fix("the exporting session ended early; restart the pipeline")
        })?;
        clients.push(c);
    }
    let mut queue = VecDeque::new();
    let mut done_now = Vec::new();
    for (req, pg) in requests {
        let chunk = chunk_rows.unwrap_or_else(|| default_chunk_rows(&req.encoding));
        let unread = (req.table.columns.iter())
            .map(|c| selection.unread(&req.table.name, &c.name))
            .collect();
        let planned = plan(&clients[0], &req, &pg, workers, chunk, unread).await?;
        if planned.is_empty() {
            done_now.push(empty_done(&req));
        }
        queue.extend(planned);
    }
    tracing::info!(
        work_items = queue.len(),
        workers,
        %position,
        "snapshot: copying inside the exported snapshot"
    );
    let queue = Arc::new(Mutex::new(queue));
    // One finished chunk per worker may wait: with the one each worker
    // fills, and those the pipeline holds, memory stays a few chunks per
    // worker whatever the table size.
    let (tx, rx) = mpsc::channel(workers);
    let mut tasks = Vec::new();
    for client in clients {
        let (queue, tx) = (queue.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(work) = next else { break };
                if let Err(e) = copy_work(&client, &work, &tx).await {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
            let _ = client.batch_execute("COMMIT").await;
        }));
    }
    Ok(Box::new(PgSnapshotReader {
        position,
        rx,
        ready: done_now.into(),
        tasks,
    }))
}

/// A table none of whose rows is left to copy: one chunk with no rows and
/// an empty range (it claims no key for this snapshot).
fn empty_done(req: &SnapshotRequest) -> SnapshotChunk {
    let anchor = req
        .skip
        .iter()
        .find_map(|r| r.upper.clone().or_else(|| r.lower.clone()))
        .unwrap_or_else(|| vec![Value::Null]);
    SnapshotChunk {
        table: req.table.clone(),
        rows: ChunkRows::Values(Vec::new()),
        range: KeyRange {
            lower: Some(anchor.clone()),
            upper: Some(anchor),
        },
        table_done: true,
    }
}

async fn plan(
    client: &Client,
    req: &SnapshotRequest,
    pg: &PgTable,
    workers: usize,
    chunk_rows: usize,
    unread: Vec<bool>,
) -> Result<Vec<Work>> {
    let table = req.table.clone();
    let mut cols = read_columns(pg, &table)?;
    // A column nothing reads is not read at all (a key column always is).
    for (i, c) in cols.iter_mut().enumerate() {
        c.unread = unread.get(i).copied().unwrap_or(false) && !table.is_key_column(i);
    }
    let key_cols: Vec<ReadColumn> = table.key.iter().map(|&i| cols[i].clone()).collect();
    let gaps = ferry_core::gaps(&req.skip);
    let int_key =
        key_cols.len() == 1 && matches!(key_cols[0].kind, Kind::Int2 | Kind::Int4 | Kind::Int8);
    let mut ranges: Vec<KeyRange> = Vec::new();
    if table.is_keyless() {
        // No key: pieces of the heap's block order. They mean nothing in
        // another snapshot, so the pipeline never asks to skip any.
        let (est, pages) = table_size(client, pg).await?;
        let blocks = heap_blocks(client, pg).await?;
        let per_piece = piece_rows(chunk_rows, &req.encoding, est, pages) as f64;
        let step = if est >= 1.0 && pages >= 1.0 {
            (per_piece * pages / est).ceil().max(1.0) as i64
        } else {
            (CHUNK_BYTES / 8192) as i64
        };
        ranges = block_ranges(blocks, step);
    } else if int_key {
        let k = &key_cols[0].quoted;
        let refs: Vec<&ReadColumn> = key_cols.iter().collect();
        let (est, pages) = table_size(client, pg).await?;
        let all_span = client
            .query_one(
                &format!(
                    "SELECT min({k})::int8, max({k})::int8 FROM {}",
                    pg.qualified()
                ),
                &[],
            )
            .await
            .map_err(|e| pg_error(e, "reading the key span"))?;
        let per_piece = piece_rows(chunk_rows, &req.encoding, est, pages);
        let width = piece::int_key_width(all_span.get(0), all_span.get(1), est, per_piece);
        for gap in gaps {
            let mut sql = format!(
                "SELECT min({k})::int8, max({k})::int8 FROM {}",
                pg.qualified()
            );
            if let Some(p) = range_predicate(&refs, &gap)? {
                sql.push_str(&format!(" WHERE {p}"));
            }
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| pg_error(e, "reading the key span"))?;
            let (min, max): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
            ranges.extend(piece::int_key_pieces(&gap, min.zip(max), width));
        }
    } else {
        // Ferry orders text keys by bytes. When the key's index orders them
        // otherwise (a linguistic collation; enums and addresses compared
        // as text), a piece cannot be read through the index.
        let max_pieces = piece::max_pieces(indexed_order(&key_cols), workers);
        let splits = sample_splits(client, req, pg, &key_cols, chunk_rows, max_pieces).await?;
        for gap in gaps {
            ranges.extend(piece::split_gap(&gap, &splits));
        }
    }
    let job = Arc::new(TableJob {
        table,
        chunk_rows,
        from: pg.qualified(),
        kinds: cols.iter().map(|c| c.kind.clone()).collect(),
        cols,
        key_cols,
        encoding: req.encoding.clone(),
        unread,
        remaining: tokio::sync::Mutex::new(ranges.len()),
    });
    Ok(ranges
        .into_iter()
        .map(|range| Work {
            job: job.clone(),
            range,
        })
        .collect())
}

/// Rows a piece is planned to hold: one chunk's worth, in rows, and for
/// encoded rows also in bytes, estimated from the heap's size per row
/// (which exceeds a row's COPY size: tuple headers, free space), so that
/// a piece usually fits in one chunk.
fn piece_rows(rows: usize, encoding: &Option<String>, est: f64, pages: f64) -> usize {
    if encoding.is_none() || est < 1.0 || pages < 1.0 {
        return rows;
    }
    let row_bytes = pages * 8192.0 / est;
    rows.min((CHUNK_BYTES as f64 / row_bytes) as usize).max(1)
}

/// Rows per chunk, decoded or encoded, when the pipeline does not say.
fn default_chunk_rows(encoding: &Option<String>) -> usize {
    if encoding.is_some() {
        ENCODED_CHUNK_ROWS
    } else {
        CHUNK_ROWS
    }
}

/// Split points for a table whose key is not one integer column (text,
/// uuid, numeric, timestamps, composite keys, ...), so its pieces copy in
/// parallel like integer key ranges: the keys of a `TABLESAMPLE SYSTEM`
/// sample inside the snapshot, placed by [`piece::sample_splits`]. Empty
/// (read the table in key order instead) when the table is estimated to
/// fit in a few chunks, or has never been analyzed (no estimate).
async fn sample_splits(
    client: &Client,
    req: &SnapshotRequest,
    pg: &PgTable,
    key: &[ReadColumn],
    chunk_rows: usize,
    max_pieces: usize,
) -> Result<Vec<Vec<Value>>> {
    let (est, pages) = table_size(client, pg).await?;
    let per_piece = piece_rows(chunk_rows, &req.encoding, est, pages);
    let pieces = match piece::sampled_pieces(est, per_piece, max_pieces) {
        Some(pieces) if pages >= 1.0 => pieces,
        _ => return Ok(Vec::new()),
    };
    // About 20 sampled keys per piece, at most 100,000 keys, from at least
    // 8 pages per piece (`SYSTEM` samples whole pages: keys of one page
    // are often neighbours).
    let want = (pieces as f64 * 20.0).min(100_000.0);
    let percent = (want / est).max(pieces as f64 * 8.0 / pages) * 100.0;
    let percent = percent.clamp(0.000_1, 100.0);
    let sql = format!(
        "SELECT {} FROM {} TABLESAMPLE SYSTEM ({percent}) REPEATABLE (0)",
        column_list(key),
        pg.qualified()
    );
    let kinds: Vec<Kind> = key.iter().map(|c| c.kind.clone()).collect();
    let mut keys = Vec::new();
    copy_out_rows(client, &sql, &kinds, |row| {
        keys.push(row);
        Ok(())
    })
    .await?;
    let sampled = keys.len();
    let splits = piece::sample_splits(keys, pieces);
    tracing::debug!(table = %req.table.name, pieces = splits.len() + 1, sampled,
        "snapshot: key ranges from a sample");
    Ok(splits)
}

/// The heap's size in blocks now (`relpages` is only as fresh as the
/// last VACUUM or ANALYZE).
async fn heap_blocks(client: &Client, pg: &PgTable) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT (pg_catalog.pg_relation_size($1::oid::regclass) / current_setting('block_size')::int8)::int8",
            &[&pg.oid],
        )
        .await
        .map_err(|e| pg_error(e, "reading the table size"))?;
    Ok(row.get(0))
}

/// Consecutive ranges of `step` blocks covering every block of a heap of
/// `blocks` blocks, the last one open (the heap may have grown).
fn block_ranges(blocks: i64, step: i64) -> Vec<KeyRange> {
    let mut out = Vec::new();
    let mut lower = None;
    let mut edge = step - 1;
    while edge < blocks - 1 {
        let upper = vec![Value::Int(edge)];
        out.push(KeyRange {
            lower: lower.replace(upper.clone()),
            upper: Some(upper),
        });
        edge += step;
    }
    out.push(KeyRange { lower, upper: None });
    out
}

/// The planner's estimate of the table's rows and pages (`reltuples` is -1
/// for a table never analyzed).
async fn table_size(client: &Client, pg: &PgTable) -> Result<(f64, f64)> {
    let row = client
        .query_one(
            "SELECT reltuples::float8, relpages::float8 FROM pg_catalog.pg_class WHERE oid = $1",
            &[&pg.oid],
        )
        .await
        .map_err(|e| pg_error(e, "estimating the table size"))?;
    Ok((row.get(0), row.get(1)))
}

type ChunkSender = mpsc::Sender<Result<SnapshotChunk>>;

async fn copy_work(client: &Client, work: &Work, tx: &ChunkSender) -> Result<()> {
    let job = &work.job;
    // In key order even for a piece planned to fit in one chunk: a piece
    // denser than planned is sent in several chunks, and each must claim
    // exactly its rows (a chunk committed without a claim would be copied
    // again after a restart). For integer keys the range is read through
    // the key's index anyway, so the order costs nothing. A keyless piece
    // is its heap blocks, read in no particular order.
    let keyless = job.table.is_keyless();
    let query = if keyless {
        select_blocks(&job.from, &job.cols, &work.range)?
    } else {
        select_range(&job.from, &job.cols, &job.key_cols, &work.range)?
    };
    let failed = |e| pg_error(e, "copying snapshot rows").with("table", job.table.name.to_string());
    let stream = client
        .copy_out(format!("COPY ({query}) TO STDOUT (FORMAT binary)").as_str())
        .await
        .map_err(failed)?;
    futures_util::pin_mut!(stream);
    let mut dec = CopyDecoder::new();
    let mut lower = work.range.lower.clone();
    let mut batch = Batch::new(job);
    let limit = job.chunk_rows;
    while let Some(data) = stream.next().await {
        dec.push(data.map_err(failed)?);
        while batch.read(&mut dec, job)? {
            if batch.len() >= limit || batch.bytes() >= CHUNK_BYTES {
                let range = if keyless {
                    // Rows of a keyless piece are not in an order to claim
                    // part of it by: every chunk but the last claims an
                    // empty range; within this snapshot the last claims the
                    // piece, and a restart copies the table again anyway.
                    let anchor = work
                        .range
                        .lower
                        .clone()
                        .or_else(|| work.range.upper.clone())
                        .unwrap_or_else(|| vec![Value::Int(-1)]);
                    KeyRange {
                        lower: Some(anchor.clone()),
                        upper: Some(anchor),
                    }
                } else {
                    let last = batch.last_key(job)?;
                    KeyRange {
                        lower: lower.replace(last.clone()),
                        upper: Some(last),
                    }
                };
                let chunk = SnapshotChunk {
                    table: job.table.clone(),
                    rows: batch.take(job),
                    range,
                    table_done: false,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let range = KeyRange {
        lower,
        upper: work.range.upper.clone(),
    };
    let mut remaining = job.remaining.lock().await;
    *remaining -= 1;
    let chunk = SnapshotChunk {
        table: job.table.clone(),
        rows: batch.take(job),
        range,
        table_done: *remaining == 0,
    };
    let _ = tx.send(Ok(chunk)).await;
    Ok(())
}

/// The rows of the chunk being filled: decoded, or binary COPY tuples
/// passed through.
enum Batch {
    Values(Vec<Vec<Value>>),
    Encoded {
        data: Vec<u8>,
        rows: usize,
        /// The last tuple, whose key ends the chunk's range.
        last: Bytes,
    },
}

impl Batch {
    fn new(job: &TableJob) -> Batch {
        match job.encoding {
            None => Batch::Values(Vec::with_capacity(job.chunk_rows.min(CHUNK_ROWS))),
            Some(_) => Batch::Encoded {
                data: Vec::new(),
                rows: 0,
                last: Bytes::new(),
            },
        }
    }

    /// Moves the next complete row from `dec` into the batch; false when
    /// none is buffered.
    fn read(&mut self, dec: &mut CopyDecoder, job: &TableJob) -> Result<bool> {
        match self {
            Batch::Values(rows) => match dec.next_tuple(job.kinds.len())? {
                Some(tuple) => rows.push(job.decode(&tuple)?),
                None => return Ok(false),
            },
            Batch::Encoded { data, rows, last } => match dec.next_tuple(job.kinds.len())? {
                Some(tuple) => {
                    if data.capacity() == 0 {
                        // Always the same size, with room for a row past the
                        // cap: no doubling, and freed buffers fit the next
                        // ones exactly (no allocator fragmentation).
                        data.reserve_exact(CHUNK_BYTES + (64 << 10));
                    }
                    data.extend_from_slice(&tuple);
                    *rows += 1;
                    *last = tuple;
                }
                None => return Ok(false),
            },
        }
        Ok(true)
    }

    fn len(&self) -> usize {
        match self {
            Batch::Values(rows) => rows.len(),
            Batch::Encoded { rows, .. } => *rows,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Batch::Values(_) => 0,
            Batch::Encoded { data, .. } => data.len(),
        }
    }

    /// The key of the last row (the batch is not empty).
    fn last_key(&self, job: &TableJob) -> Result<Vec<Value>> {
        match self {
            Batch::Values(rows) => Ok(job.table.key_of(&rows[rows.len() - 1])),
            Batch::Encoded { last, .. } => {
                let cols: Vec<(usize, &Kind)> =
                    job.table.key.iter().map(|&i| (i, &job.kinds[i])).collect();
                decode_fields(last, &cols)
            }
        }
    }

    /// The rows so far, leaving the batch empty.
    fn take(&mut self, job: &TableJob) -> ChunkRows {
        match std::mem::replace(self, Batch::new(job)) {
            Batch::Values(rows) => ChunkRows::Values(rows),
            Batch::Encoded { data, rows, .. } => ChunkRows::Encoded(EncodedRows {
                encoding: job.encoding.clone().unwrap_or_default(),
                data,
                rows,
            }),
        }
    }
}

struct PgSnapshotReader {
    position: Position,
    rx: mpsc::Receiver<Result<SnapshotChunk>>,
    ready: VecDeque<SnapshotChunk>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PgSnapshotReader {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl SnapshotReader for PgSnapshotReader {
    fn position(&self) -> &Position {
        &self.position
    }

    async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>> {
        if let Some(c) = self.ready.pop_front() {
            return Ok(Some(c));
        }
        match self.rx.recv().await {
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_cover_the_heap_and_stay_open_at_its_end() {
        let b = |n: i64| Some(vec![Value::Int(n)]);
        let got = block_ranges(10, 4);
        assert_eq!(
            got.iter()
                .map(|r| (r.lower.clone(), r.upper.clone()))
                .collect::<Vec<_>>(),
            vec![(None, b(3)), (b(3), b(7)), (b(7), None)]
        );
        // An empty heap, or one smaller than a piece: one open range.
        assert_eq!(block_ranges(0, 4), vec![KeyRange::all()]);
        assert_eq!(block_ranges(4, 4), vec![KeyRange::all()]);
    }
}
