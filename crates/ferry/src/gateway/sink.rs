//! The pipeline's target for a gateway: the in-memory [`Replica`].
//!
//! A writer buffers everything of one transaction and hands it to the
//! replica at `commit`, together with the checkpoint records, so readers
//! see whole source transactions only (the pipeline runs in
//! transaction-consistent mode) and the applied position published after
//! a commit covers exactly what readers can see. The checkpoint lives as
//! long as the process: a pipeline restarted after a broken stream
//! resumes from it with the rows it already holds; a new process loads
//! everything again.

use std::sync::Arc;

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Result, Sink, SinkInfo, SinkWriter,
    Step, TableName, TableRef, Value,
};

use super::replica::{Pending, Replica, keyless_error};

pub struct MemorySink {
    pub replica: Arc<Replica>,
}

#[async_trait]
impl CheckpointStore for MemorySink {
    async fn load(&self) -> Result<Checkpoint> {
        self.replica.checkpoint()
    }

    async fn clear(&self) -> Result<()> {
        self.replica.clear();
        Ok(())
    }
}

#[async_trait]
impl Sink for MemorySink {
    /// One writer: applying in memory takes microseconds, and one writer
    /// keeps commits in source order without waiting on each other.
    fn info(&self) -> SinkInfo {
        SinkInfo { max_writers: 1 }
    }

    /// The replica belongs to this process alone.
    async fn fence(&self) -> Result<()> {
        Ok(())
    }

    async fn check(&self) -> Vec<CheckItem> {
        vec![CheckItem::ok("gateway memory", "tables are held in memory")]
    }

    /// Rows are served by key, so every table needs one.
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        if let Some(t) = tables.iter().find(|t| t.is_keyless()) {
            return Err(keyless_error(t));
        }
        Ok(Vec::new())
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(MemoryWriter {
            replica: self.replica.clone(),
            pending: Vec::new(),
        }))
    }
}

struct MemoryWriter {
    replica: Arc<Replica>,
    pending: Vec<Pending>,
}

#[async_trait]
impl SinkWriter for MemoryWriter {
    async fn begin(&mut self) -> Result<()> {
        self.pending.clear();
        Ok(())
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        self.pending.push(Pending::Steps(steps.to_vec()));
        Ok(())
    }

    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        self.pending
            .push(Pending::Load(table.clone(), rows.to_vec()));
        Ok(())
    }

    async fn load_owned(&mut self, table: &TableRef, rows: Vec<Vec<Value>>) -> Result<()> {
        self.pending.push(Pending::Load(table.clone(), rows));
        Ok(())
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        self.pending.push(Pending::Clear(table.clone()));
        Ok(())
    }

    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.replica.commit(pending, records)
    }

    async fn rollback(&mut self) -> Result<()> {
        self.pending.clear();
        Ok(())
    }
}
