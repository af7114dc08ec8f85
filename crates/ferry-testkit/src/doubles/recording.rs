//! [`RecordingSink`]: a sink wrapper that records every call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, ErrorClass, Result, Sink, SinkInfo,
    SinkWriter, Step, TableReader, TableRef, Value,
};

/// Row operations on one table in one `Rows` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsSummary {
    /// Target table (display name).
    pub table: String,
    /// Number of deletes.
    pub deletes: usize,
    /// Number of upserts.
    pub upserts: usize,
    /// Number of partial updates.
    pub updates: usize,
}

/// One applied [`Step`], summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepSummary {
    /// A `Rows` step: its operations per table.
    Rows(Vec<OpsSummary>),
    /// A `Truncate` step: the tables.
    Truncate(Vec<String>),
    /// A `Schema` step: the table.
    Schema(String),
    /// A `MoveKey` step: the table.
    MoveKey(String),
    /// A `Keyless` step: the table and its number of changes.
    Keyless(String, usize),
    /// Active-active: changes checked for conflicts (table, count).
    Checked(String, usize),
    /// Active-active: the source transaction applied.
    Stamp,
    /// A `Replace` step (online re-copy chunk): the table and its rows.
    Replace(String, usize),
}

impl StepSummary {
    fn of(step: &Step) -> Self {
        match step {
            Step::Rows(ops) => StepSummary::Rows(
                ops.iter()
                    .map(|o| OpsSummary {
                        table: o.table.name.to_string(),
                        deletes: o.deletes.len(),
                        upserts: o.upserts.len(),
                        updates: o.updates.len(),
                    })
                    .collect(),
            ),
            Step::Truncate(t) => {
                StepSummary::Truncate(t.iter().map(|t| t.name.to_string()).collect())
            }
            Step::Schema { table, .. } => StepSummary::Schema(table.name.to_string()),
            Step::MoveKey { table, .. } => StepSummary::MoveKey(table.name.to_string()),
            Step::Keyless { table, ops } => StepSummary::Keyless(table.name.to_string(), ops.len()),
            Step::Checked { table, ops } => StepSummary::Checked(table.name.to_string(), ops.len()),
            Step::Stamp { .. } => StepSummary::Stamp,
            Step::Replace { table, rows, .. } => {
                StepSummary::Replace(table.name.to_string(), rows.len())
            }
        }
    }
}

/// One call to a sink or one of its writers, with a summary of its
/// arguments. `writer` numbers the writers in the order they were opened
/// (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkCall {
    /// `CheckpointStore::load`.
    LoadCheckpoint,
    /// `CheckpointStore::clear`.
    ClearCheckpoint,
    /// `Sink::check`.
    Check,
    /// `Sink::fence`.
    Fence,
    /// `Sink::ensure_tables` with these tables.
    EnsureTables(Vec<String>),
    /// `Sink::writer` opened writer number `writer`.
    OpenWriter {
        /// The new writer.
        writer: usize,
    },
    /// `SinkWriter::begin`.
    Begin {
        /// The writer.
        writer: usize,
    },
    /// `SinkWriter::apply`.
    Apply {
        /// The writer.
        writer: usize,
        /// The steps.
        steps: Vec<StepSummary>,
    },
    /// `SinkWriter::load`.
    Load {
        /// The writer.
        writer: usize,
        /// Target table.
        table: String,
        /// Number of rows.
        rows: usize,
    },
    /// `SinkWriter::clear_table`.
    ClearTable {
        /// The writer.
        writer: usize,
        /// Target table.
        table: String,
    },
    /// `SinkWriter::commit`.
    Commit {
        /// The writer.
        writer: usize,
        /// The checkpoint records written.
        records: Vec<CheckpointRecord>,
    },
    /// `SinkWriter::rollback`.
    Rollback {
        /// The writer.
        writer: usize,
    },
}

impl SinkCall {
    /// The writer that made the call, for writer calls.
    pub fn writer(&self) -> Option<usize> {
        match self {
            SinkCall::OpenWriter { writer }
            | SinkCall::Begin { writer }
            | SinkCall::Apply { writer, .. }
            | SinkCall::Load { writer, .. }
            | SinkCall::ClearTable { writer, .. }
            | SinkCall::Commit { writer, .. }
            | SinkCall::Rollback { writer } => Some(*writer),
            _ => None,
        }
    }
}

/// A recorded call and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The call.
    pub call: SinkCall,
    /// `None` when it succeeded, else the class of its error.
    pub error: Option<ErrorClass>,
}

/// The calls of one writer between a `begin` and the `commit` or
/// `rollback` that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTxn {
    /// The writer.
    pub writer: usize,
    /// `Apply`, `Load` and `ClearTable` calls, in order (`Begin` and the
    /// ending call left out).
    pub calls: Vec<SinkCall>,
    /// Ended by a successful commit.
    pub committed: bool,
    /// The records of the ending commit (empty for a rollback).
    pub records: Vec<CheckpointRecord>,
}

type Log = Arc<Mutex<Vec<Recorded>>>;

fn push(log: &Log, call: SinkCall, error: Option<ErrorClass>) {
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Recorded { call, error });
}

fn outcome<T>(r: &Result<T>) -> Option<ErrorClass> {
    r.as_ref().err().map(ferry_core::Error::class)
}

/// Wraps a [`Sink`] and records every call made to it and to its writers,
/// in the order the calls *returned*, with their outcome.
pub struct RecordingSink<S> {
    inner: S,
    log: Log,
    writers: AtomicUsize,
}

impl<S> RecordingSink<S> {
    /// Records the calls to `inner`.
    pub fn new(inner: S) -> Self {
        RecordingSink {
            inner,
            log: Log::default(),
            writers: AtomicUsize::new(0),
        }
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The transactions so far (ended ones only), in the order they ended.
    pub fn transactions(&self) -> Vec<RecordedTxn> {
        let mut open: Vec<(usize, Vec<SinkCall>)> = Vec::new();
        let mut out = Vec::new();
        for r in self.calls() {
            let Some(w) = r.call.writer() else { continue };
            match r.call {
                SinkCall::Begin { .. } if r.error.is_none() => open.push((w, Vec::new())),
                SinkCall::Commit { records, .. } => {
                    if let Some(i) = open.iter().position(|(o, _)| *o == w) {
                        let (_, calls) = open.remove(i);
                        out.push(RecordedTxn {
                            writer: w,
                            calls,
                            committed: r.error.is_none(),
                            records,
                        });
                    }
                }
                SinkCall::Rollback { .. } => {
                    if let Some(i) = open.iter().position(|(o, _)| *o == w) {
                        let (_, calls) = open.remove(i);
                        out.push(RecordedTxn {
                            writer: w,
                            calls,
                            committed: false,
                            records: Vec::new(),
                        });
                    }
                }
                call => {
                    if let Some((_, calls)) = open.iter_mut().find(|(o, _)| *o == w) {
                        calls.push(call);
                    }
                }
            }
        }
        out
    }
}

struct RecordingWriter {
    inner: Box<dyn SinkWriter>,
    log: Log,
    id: usize,
}

#[async_trait]
impl SinkWriter for RecordingWriter {
    async fn begin(&mut self) -> Result<()> {
        let r = self.inner.begin().await;
        push(&self.log, SinkCall::Begin { writer: self.id }, outcome(&r));
        r
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        let r = self.inner.apply(steps).await;
        let call = SinkCall::Apply {
            writer: self.id,
            steps: steps.iter().map(StepSummary::of).collect(),
        };
        push(&self.log, call, outcome(&r));
        r
    }

    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        let r = self.inner.load(table, rows).await;
        let call = SinkCall::Load {
            writer: self.id,
            table: table.name.to_string(),
            rows: rows.len(),
        };
        push(&self.log, call, outcome(&r));
        r
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        let r = self.inner.clear_table(table).await;
        let call = SinkCall::ClearTable {
            writer: self.id,
            table: table.name.to_string(),
        };
        push(&self.log, call, outcome(&r));
        r
    }

    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let r = self.inner.commit(records).await;
        let call = SinkCall::Commit {
            writer: self.id,
            records: records.to_vec(),
        };
        push(&self.log, call, outcome(&r));
        r
    }

    async fn rollback(&mut self) -> Result<()> {
        let r = self.inner.rollback().await;
        push(
            &self.log,
            SinkCall::Rollback { writer: self.id },
            outcome(&r),
        );
        r
    }
}

#[async_trait]
impl<S: Sink> CheckpointStore for RecordingSink<S> {
    async fn load(&self) -> Result<Checkpoint> {
        let r = self.inner.load().await;
        push(&self.log, SinkCall::LoadCheckpoint, outcome(&r));
        r
    }

    async fn clear(&self) -> Result<()> {
        let r = self.inner.clear().await;
        push(&self.log, SinkCall::ClearCheckpoint, outcome(&r));
        r
    }
}

#[async_trait]
impl<S: Sink> Sink for RecordingSink<S> {
    fn info(&self) -> SinkInfo {
        self.inner.info()
    }

    async fn fence(&self) -> Result<()> {
        let r = self.inner.fence().await;
        push(&self.log, SinkCall::Fence, outcome(&r));
        r
    }

    async fn identity(&self) -> Result<Option<String>> {
        self.inner.identity().await
    }

    async fn check(&self) -> Vec<CheckItem> {
        let r = self.inner.check().await;
        push(&self.log, SinkCall::Check, None);
        r
    }

    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<ferry_core::TableName>> {
        let r = self.inner.ensure_tables(tables).await;
        let names = tables.iter().map(|t| t.name.to_string()).collect();
        push(&self.log, SinkCall::EnsureTables(names), outcome(&r));
        r
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        let inner = self.inner.writer().await?;
        let id = self.writers.fetch_add(1, Ordering::SeqCst) + 1;
        push(&self.log, SinkCall::OpenWriter { writer: id }, None);
        Ok(Box::new(RecordingWriter {
            inner,
            log: self.log.clone(),
            id,
        }))
    }
}

#[async_trait]
impl<S: Sink + TableReader> TableReader for RecordingSink<S> {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        self.inner.count_rows(table).await
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        self.inner.read_rows(table, after, limit).await
    }
}
