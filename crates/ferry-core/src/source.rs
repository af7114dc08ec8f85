//! The contract every source connector implements.

use async_trait::async_trait;

use crate::change::SourceEvent;
use crate::check::CheckItem;
use crate::checkpoint::KeyRange;
use crate::error::Result;
use crate::position::Position;
use crate::schema::TableRef;
use crate::value::Value;

/// A table to copy, and the key ranges of it already on the target.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub table: TableRef,
    /// Ranges copied by an earlier run; the reader must not send them again.
    pub skip: Vec<KeyRange>,
}

/// Rows of one table read from a snapshot.
#[derive(Debug)]
pub struct SnapshotChunk {
    pub table: TableRef,
    pub rows: Vec<Vec<Value>>,
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

/// A source of changes.
///
/// Call order: [`check`](Source::check) (optional), [`tables`](Source::tables),
/// [`prepare`](Source::prepare), then [`snapshot`](Source::snapshot) if tables
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

    /// Installs what capture needs (triggers, slot, publication). Idempotent:
    /// a restart calls it again on an already prepared source.
    async fn prepare(&mut self) -> Result<()>;

    /// Opens a consistent snapshot of `requests` (see [`SnapshotReader`]).
    /// Must be called after `prepare`, so no change is missed between the
    /// snapshot and the stream.
    async fn snapshot(&mut self, requests: Vec<SnapshotRequest>)
    -> Result<Box<dyn SnapshotReader>>;

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

    /// Removes what [`prepare`](Source::prepare) installed. Used by
    /// `ferry teardown`; the pipeline must not be running.
    async fn teardown(&mut self) -> Result<()>;
}
