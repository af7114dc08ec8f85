//! The contract every sink connector implements.

use async_trait::async_trait;

use crate::batch::Step;
use crate::check::CheckItem;
use crate::checkpoint::{Checkpoint, CheckpointRecord};
use crate::error::{Error, Result};
use crate::schema::{TableName, TableRef};
use crate::shape::{SequenceValue, TableShape};
use crate::source::EncodedRows;
use crate::value::Value;

/// What the pipeline must know about a sink to drive it.
#[derive(Debug, Clone)]
pub struct SinkInfo {
    /// Most writers that may hold open transactions at once. A database
    /// with one writer at a time (SQLite) says 1.
    pub max_writers: usize,
}

/// Reads the checkpoint a sink keeps.
///
/// Durability: a checkpoint is written only by [`SinkWriter::commit`], in
/// the same target transaction as the data it covers, so after any crash
/// `load` returns exactly what is on the target — never more, never less.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The pipeline's checkpoint; empty for a pipeline never run.
    async fn load(&self) -> Result<Checkpoint>;

    /// Forgets the pipeline's checkpoint (`ferry reset`).
    async fn clear(&self) -> Result<()>;
}

/// A target database.
#[async_trait]
pub trait Sink: CheckpointStore {
    fn info(&self) -> SinkInfo;

    /// Takes the pipeline's exclusive lock on the target: one runner per
    /// pipeline, whatever the source (the target holds the checkpoint, so
    /// it is where two runners would collide).
    ///
    /// * **When**: first thing in a run, before the checkpoint is loaded
    ///   and before any writer is opened; also by `ferry reset` before it
    ///   clears the checkpoint.
    /// * **How long**: held until this sink is dropped (the end of the
    ///   run), or until the process dies: a killed runner's lock must go
    ///   with it, without an operator. Calling it again on the same sink
    ///   succeeds at once.
    /// * **A second caller** (another sink of the same pipeline on the same
    ///   target, in this process or another) may wait a few seconds for a
    ///   holder that is going away (a killed runner's session the server
    ///   has not ended yet), then gets a [`Fatal`](crate::ErrorClass::Fatal)
    ///   error naming the pipeline and the target, with a fix.
    /// * Other pipelines on the same target are not affected.
    async fn fence(&self) -> Result<()>;

    /// An opaque string naming the database this sink writes, equal for
    /// every way of reaching the same database (another host name, a
    /// relative path, a symbolic link) and comparable with
    /// [`Source::identity`](crate::Source::identity): equal identities
    /// mean source and target are one database, which a pipeline refuses.
    /// `None`: the connector cannot tell (nothing is compared).
    async fn identity(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Pre-flight checks: reachable, writable, privileges.
    async fn check(&self) -> Vec<CheckItem>;

    /// Makes sure each table exists with a compatible structure, creating
    /// missing ones (structure copy). Called once at start, before any writer.
    ///
    /// An existing table that lacks columns of `table`, or holds one in a
    /// type that cannot take the source's values (the source's structure
    /// changed while ferry was stopped), is left as it is and returned: the
    /// pipeline alters it with a [`Step::Schema`] in the same target
    /// transaction that records its re-copy (its rows may not be the
    /// source's: an added column is NULL where the source has values).
    /// Extra target columns are left alone. A different key is a fatal
    /// error.
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>>;

    /// The source's shape of tables beyond columns and key
    /// ([`Source::shapes`](crate::Source::shapes)), by target table name,
    /// for the tables whose target name and columns are the source's.
    /// Called before [`ensure_tables`](Sink::ensure_tables). A sink of the
    /// shape's engine gives the tables it creates that shape: defaults and
    /// `CHECK`s with the table, indexes once its copy is loaded. Tables
    /// that exist already are left as they are. The default ignores it.
    async fn set_shapes(&self, _shapes: Vec<(TableName, TableShape)>) {}

    /// Sets the target's sequences to the source's `values` (at the end of
    /// a copy, and `ferry sync-sequences`), so that a switchover to the
    /// target does not hand out used values. A sequence the target lacks
    /// is skipped. The default does nothing.
    async fn set_sequences(&self, _values: &[SequenceValue]) -> Result<()> {
        Ok(())
    }

    /// Opens a writer (its own connection). The pipeline opens at most
    /// `info().max_writers` of them.
    async fn writer(&self) -> Result<Box<dyn SinkWriter>>;

    /// The row encoding this sink's writers load as is into target table
    /// `table` ([`SinkWriter::load_encoded`]), if any; see
    /// [`Source::row_encoding`](crate::Source::row_encoding). Called after
    /// [`ensure_tables`](Sink::ensure_tables).
    async fn row_encoding(&self, _table: &TableRef) -> Result<Option<String>> {
        Ok(None)
    }

    /// SQL in this target's dialect that does what [`Step::Rows`] and
    /// [`Step::Keyless`] steps do, with the values as literals, for an
    /// operator to review and run (`ferry verify --repair print`). Called
    /// after [`ensure_tables`](Sink::ensure_tables).
    async fn render_sql(&self, steps: &[Step]) -> Result<String> {
        let _ = steps;
        Err(Error::fatal("this target cannot print repairs as SQL")
            .with_fix("use `ferry verify --repair apply`, which applies them directly"))
    }
}

/// One connection to the target, applying one transaction at a time.
///
/// Every method but `begin` is called inside a transaction opened by
/// `begin`; a transaction ends with `commit` or `rollback`. Nothing is
/// visible to readers of the target before `commit` returns, and after it
/// returns the data and the checkpoint records are durable together.
#[async_trait]
pub trait SinkWriter: Send {
    async fn begin(&mut self) -> Result<()>;

    /// Applies merged row operations and structure changes, in step order.
    /// Upserts replace rows, updates change the listed columns of an
    /// existing row, deletes of absent rows are not errors. A failing
    /// statement's error names table, key, statement and database error.
    async fn apply(&mut self, steps: &[Step]) -> Result<()>;

    /// Snapshot load: inserts rows known not to be on the target.
    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()>;

    /// [`load`](Self::load), taking the rows: the snapshot phase has no
    /// further use for them, so a writer that runs its driver on another
    /// thread can move them there instead of copying each chunk. The
    /// default borrows and calls `load`.
    async fn load_owned(&mut self, table: &TableRef, rows: Vec<Vec<Value>>) -> Result<()> {
        self.load(table, &rows).await
    }

    /// Snapshot load of rows in an encoding this sink named in
    /// [`Sink::row_encoding`] for `table`.
    async fn load_encoded(&mut self, table: &TableRef, rows: EncodedRows) -> Result<()> {
        Err(Error::fatal(format!(
            "the target cannot load rows of {} encoded as {}",
            table.name, rows.encoding
        )))
    }

    /// Removes every row of `table` (restarting a table's copy).
    async fn clear_table(&mut self, table: &TableRef) -> Result<()>;

    /// Writes `records` (upserting by scope) and commits, atomically with
    /// everything applied since `begin`.
    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()>;

    /// Abandons the open transaction (no-op if none).
    async fn rollback(&mut self) -> Result<()>;
}
