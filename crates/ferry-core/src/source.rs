//! The contract every source connector implements.

use async_trait::async_trait;

use crate::change::SourceEvent;
use crate::check::CheckItem;
use crate::checkpoint::KeyRange;
use crate::error::Result;
use crate::position::Position;
use crate::schema::{TableName, TableRef};
use crate::shape::{SequenceValue, TableShape};
use crate::value::Value;

/// A table to copy, and the key ranges of it already on the target.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub table: TableRef,
    /// Ranges copied by an earlier run; the reader must not send them again.
    pub skip: Vec<KeyRange>,
    /// A row encoding the target loads as is (see [`Source::row_encoding`]):
    /// the reader may send this table's rows as [`ChunkRows::Encoded`] in it
    /// instead of decoding them. `None`: values only.
    pub encoding: Option<String>,
}

/// The rows of a snapshot chunk.
#[derive(Debug)]
pub enum ChunkRows {
    /// Decoded rows, aligned with the table's columns.
    Values(Vec<Vec<Value>>),
    /// Rows passed through in an encoding source and target share, never
    /// decoded (see [`SnapshotRequest::encoding`]).
    Encoded(EncodedRows),
}

impl ChunkRows {
    pub fn len(&self) -> usize {
        match self {
            ChunkRows::Values(rows) => rows.len(),
            ChunkRows::Encoded(e) => e.rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decoded rows; empty for encoded ones.
    pub fn values(&self) -> &[Vec<Value>] {
        match self {
            ChunkRows::Values(rows) => rows,
            ChunkRows::Encoded(_) => &[],
        }
    }

    /// The decoded rows, taken; empty for encoded ones.
    pub fn into_values(self) -> Vec<Vec<Value>> {
        match self {
            ChunkRows::Values(rows) => rows,
            ChunkRows::Encoded(_) => Vec::new(),
        }
    }
}

/// Whole rows in a connector-defined encoding, e.g. the tuples of a
/// PostgreSQL binary `COPY` stream without its header and trailer.
#[derive(Debug, Clone)]
pub struct EncodedRows {
    /// The encoding, as [`Source::row_encoding`] named it.
    pub encoding: String,
    pub data: Vec<u8>,
    /// Number of rows in `data`.
    pub rows: usize,
}

/// Rows of one table read from a snapshot.
#[derive(Debug)]
pub struct SnapshotChunk {
    pub table: TableRef,
    pub rows: ChunkRows,
    /// The key range these rows complete: every row of the snapshot in
    /// `range` is in `rows` (or in an earlier chunk with an overlapping
    /// range already reported).
    pub range: KeyRange,
    /// No more chunks of this table follow.
    pub table_done: bool,
}

/// Reads a consistent snapshot.
///
/// Contract: every chunk comes from one snapshot of the source taken at
/// [`SnapshotReader::position`]: streaming changes from that position
/// (exclusive) delivers exactly the changes the snapshot does not contain —
/// no gap, no overlap.
#[async_trait]
pub trait SnapshotReader: Send {
    fn position(&self) -> &Position;

    /// The next chunk, or `None` once every requested table is done. Chunks
    /// of different tables may interleave; chunks of one table never overlap.
    async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>>;
}

/// Whether a source's stream can resume exactly where the target's
/// checkpoint left off ([`Source::continuity`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Continuity {
    /// Every transaction after the checkpoint can still be delivered.
    Exact,
    /// Some transactions after the checkpoint can no longer be delivered.
    Gap {
        /// What happened, for the operator: "the replication slot was
        /// created again at 0/1A2B3C4", "changes after seq 812 were pruned".
        reason: String,
        /// The oldest position the stream can start after now. Streaming
        /// from there loses the changes between the checkpoint and it; the
        /// pipeline either stops or re-copies every table online.
        resume: Position,
    },
}

/// A source of changes.
///
/// Call order: [`check`](Source::check) (optional), [`tables`](Source::tables),
/// [`preflight`](Source::preflight), [`prepare`](Source::prepare), then [`snapshot`](Source::snapshot) if tables
/// need copying, then [`start_stream`](Source::start_stream) once, then
/// [`next`](Source::next) repeatedly with [`ack`](Source::ack) interleaved.
/// Calls never overlap (`&mut self`).
#[async_trait]
pub trait Source: Send {
    /// Pre-flight checks: connectivity, privileges, log settings, keys. Must
    /// not change the source. A check that cannot run is a failed item.
    async fn check(&mut self) -> Vec<CheckItem>;

    /// The selected tables with their current structure. A selected table
    /// that cannot be replicated (no usable key, unsupported column type) is
    /// a fatal error naming the table, column and fix.
    async fn tables(&mut self) -> Result<Vec<TableRef>>;

    /// Verifies, without changing the source, that [`prepare`](Source::prepare)
    /// and capture can work: log settings, privileges, the right to set up
    /// what `prepare` installs. Called after [`tables`](Source::tables) and
    /// before the pipeline writes anything to the target, so a run refused
    /// for a bad source changes neither side. An error is what `prepare`
    /// would have failed with, fix included. The default checks nothing.
    async fn preflight(&mut self) -> Result<()> {
        Ok(())
    }

    /// The shape of each of `tables` beyond columns and key (defaults,
    /// constraints, indexes, owned sequences), for a target of the same
    /// engine ([`Sink::set_shapes`](crate::Sink::set_shapes)). Called
    /// after [`tables`](Source::tables); changes nothing. The default
    /// knows none.
    async fn shapes(&mut self, _tables: &[TableRef]) -> Result<Vec<(TableName, TableShape)>> {
        Ok(Vec::new())
    }

    /// The current values of the sequences `shapes` named, for
    /// [`Sink::set_sequences`](crate::Sink::set_sequences) at the end of a
    /// copy and for `ferry sync-sequences`. The default knows none.
    async fn sequence_values(&mut self, _sequences: &[TableName]) -> Result<Vec<SequenceValue>> {
        Ok(Vec::new())
    }

    /// Installs what capture needs (triggers, slot, publication). Idempotent:
    /// a restart calls it again on an already prepared source.
    async fn prepare(&mut self) -> Result<()>;

    /// Opens a consistent snapshot of `requests` (see [`SnapshotReader`]).
    /// Must be called after `prepare`, so no change is missed between the
    /// snapshot and the stream.
    async fn snapshot(&mut self, requests: Vec<SnapshotRequest>)
    -> Result<Box<dyn SnapshotReader>>;

    /// The encoding in which this source can send the snapshot rows of
    /// `table` without decoding them, if any. When the target's writers load
    /// the same encoding ([`Sink::row_encoding`](crate::Sink::row_encoding))
    /// and nothing changes the rows on the way, the pipeline asks for it in
    /// [`SnapshotRequest::encoding`]. The name must pin down everything the
    /// bytes depend on (format, server version, column types).
    fn row_encoding(&self, _table: &TableRef) -> Option<String> {
        None
    }

    /// Whether the stream can start exactly after `from`, the position the
    /// target's checkpoint holds. Called after [`prepare`](Source::prepare)
    /// and before [`start_stream`](Source::start_stream), whenever a
    /// checkpoint exists. Must not change the source. A source that lost
    /// what follows `from` — its log position was dropped and created again
    /// (slot, change table), its log was purged or pruned — says
    /// [`Continuity::Gap`]; it must never answer `Exact` unless it can
    /// deliver every transaction after `from`.
    async fn continuity(&mut self, from: &Position) -> Result<Continuity>;

    /// Starts delivering transactions committed after `from` (exclusive).
    /// `None` means "from now": only for a pipeline with nothing to copy.
    /// If the source no longer holds `from` (log purged), a fatal error says
    /// so and how to recover.
    ///
    /// `boundaries` are snapshot positions of tables copied in different
    /// snapshots (after a restart during the copy). A source that groups
    /// several transactions into one (SQLite) must end a group at each of
    /// them, so no delivered transaction straddles a boundary; a source that
    /// delivers every transaction on its own can ignore them.
    async fn start_stream(
        &mut self,
        from: Option<&Position>,
        boundaries: &[Position],
    ) -> Result<()>;

    /// Waits for the next event. Transactions arrive whole (or as
    /// `Partial`s followed by their `Commit`), in source commit order, each
    /// exactly once per stream. The pipeline cancels this future only when
    /// it stops, and then drops the source: after a cancel the source need
    /// not be usable.
    async fn next(&mut self) -> Result<SourceEvent>;

    /// Everything up to and including `position` is durable on the target.
    /// The source may release it (prune a change table, confirm a slot).
    /// Positions passed here never go backwards.
    async fn ack(&mut self, position: &Position) -> Result<()>;

    /// An opaque string naming the database this source reads, equal for
    /// every way of reaching it (another host name, a relative path, a
    /// symbolic link); see [`Sink::identity`](crate::Sink::identity).
    /// May be called at any time after opening; changes nothing. `None`:
    /// the connector cannot tell.
    async fn identity(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Where the source's log is now: every change committed before the
    /// call is at or before this position, so a target whose applied
    /// position reaches it holds every such change. Used by `ferry verify`
    /// to re-check rows that changed while it compared. Changes nothing;
    /// `None` when the connector cannot tell (or ferry's capture is not
    /// installed).
    async fn current_position(&mut self) -> Result<Option<Position>> {
        Ok(None)
    }

    /// Removes what [`prepare`](Source::prepare) installed. Used by
    /// `ferry teardown`; the pipeline must not be running.
    async fn teardown(&mut self) -> Result<()>;

    /// Online re-copy: re-copies `table` (one of [`tables`](Source::tables))
    /// while the stream keeps flowing, continuing after key `after`
    /// (`None`: from the start). Called after
    /// [`start_stream`](Source::start_stream), between calls of
    /// [`next`](Source::next).
    ///
    /// Contract: the source reads the table's rows in key order, a chunk at
    /// a time, each chunk *at an exact position of its own stream* — no
    /// transaction before that position missing from the rows, none after
    /// it included — and delivers it from `next` as a
    /// [`Change::RecopyRows`](crate::Change::RecopyRows) in a transaction
    /// at that position, in stream order. Chunks of one table come in key
    /// order, each range starting where the previous ended; the last has no
    /// upper bound. A table without a key is one chunk. Re-copies of several
    /// tables may interleave. A chunk read but not yet delivered when the
    /// source is dropped is simply read again by the restarted pipeline.
    ///
    /// A source may also start a re-copy by itself (a structure change it
    /// cannot express otherwise, a [`request_recopy`](Source::request_recopy)
    /// marker): it then first delivers a
    /// [`Change::RecopyStart`](crate::Change::RecopyStart) in the
    /// transaction from which the re-copy runs.
    async fn recopy(&mut self, table: &TableRef, after: Option<Vec<Value>>) -> Result<()> {
        let _ = after;
        Err(crate::Error::fatal(format!(
            "this source cannot re-copy table {} online",
            table.name
        )))
    }

    /// `ferry resync`: asks the pipeline reading this source to re-copy
    /// `table` online, by writing a request into the source's own change
    /// log, so the running (or next) `ferry run` of the pipeline meets it in
    /// stream order and starts the re-copy there
    /// ([`Change::RecopyStart`](crate::Change::RecopyStart)). Needs only the
    /// capture [`prepare`](Source::prepare) installed; `tables` first.
    async fn request_recopy(&mut self, table: &TableName) -> Result<()> {
        Err(crate::Error::fatal(format!(
            "this source cannot re-copy table {table} online"
        )))
    }
}
