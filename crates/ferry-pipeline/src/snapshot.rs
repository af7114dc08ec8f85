//! The snapshot phase: copies tables that are not (fully) on the target yet,
//! one chunk per target transaction, each committed together with the
//! table's progress record, so a restart resumes after the last chunk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_core::failpoint::{self, failpoint};
use ferry_core::{
    CheckpointRecord, ChunkRows, Error, Result, SinkWriter, SnapshotChunk, SnapshotReader,
    TableProgress, TableRef,
};
use tokio::sync::{Mutex, mpsc, watch};

use crate::stats::Stats;
use crate::transform::Transform;

pub(crate) struct SnapshotRun {
    pub writers: Vec<Box<dyn SinkWriter>>,
    pub transform: Arc<Transform>,
    pub stats: Arc<Stats>,
    /// Progress already on the target, by source table name.
    pub progress: BTreeMap<String, TableProgress>,
    pub shutdown: watch::Receiver<bool>,
}

/// Outcome of the snapshot phase.
pub(crate) enum SnapshotEnd {
    Done(BTreeMap<String, TableProgress>),
    Stopped,
}

struct Shared {
    progress: Mutex<BTreeMap<String, TableProgress>>,
    transform: Arc<Transform>,
    stats: Arc<Stats>,
    snapshot: ferry_core::Position,
    /// Chunks handed to writers and not yet committed, per source table.
    pending: std::sync::Mutex<std::collections::HashMap<String, Pending>>,
    /// A chunk failed. Set under the progress lock when a commit fails: the
    /// in-memory progress may then differ from the target (an ambiguous
    /// commit may have landed), so no later chunk may record progress.
    failed: AtomicBool,
}

#[derive(Default)]
struct Pending {
    in_flight: usize,
    final_seen: bool,
}

async fn write_chunk(w: &mut dyn SinkWriter, shared: &Shared, chunk: SnapshotChunk) -> Result<()> {
    let source_name = chunk.table.name.to_string();
    let target = shared.transform.target_table(&chunk.table)?;
    let n = chunk.rows.len() as u64;
    w.begin().await?;
    match chunk.rows {
        ChunkRows::Values(rows) => {
            let rows = shared.transform.rows(&chunk.table, rows)?;
            if !rows.is_empty() {
                w.load_owned(&target, rows).await?;
            }
        }
        // Asked for only when the transform keeps rows as they are.
        ChunkRows::Encoded(rows) => {
            if rows.rows > 0 {
                w.load_encoded(&target, rows).await?;
            }
        }
    }
    failpoint(failpoint::SNAPSHOT_CHUNK_LOADED);
    // Hold the progress lock across the commit so concurrent chunks of one
    // table never record ranges that are not committed.
    let mut all = shared.progress.lock().await;
    if shared.failed.load(Ordering::SeqCst) {
        // The run ends with the first failure; this chunk is copied again.
        drop(all);
        return w.rollback().await;
    }
    let mut p = all.get(&source_name).cloned().unwrap_or_default();
    p.add(chunk.range, &shared.snapshot);
    // Complete only once the final chunk *and* every other chunk of the
    // table have committed: with several writers the final chunk may commit
    // before an earlier one.
    let complete = {
        let mut pending = shared.pending.lock().expect("pending chunks");
        let t = pending.entry(source_name.clone()).or_default();
        t.in_flight -= 1;
        t.final_seen |= chunk.table_done;
        t.final_seen && t.in_flight == 0
    };
    p.complete = complete;
    if let Err(e) = w.commit(&[CheckpointRecord::table(&source_name, &p)]).await {
        shared.failed.store(true, Ordering::SeqCst);
        return Err(e);
    }
    all.insert(source_name, p);
    drop(all);
    failpoint(failpoint::SNAPSHOT_CHUNK_COMMITTED);
    Stats::add(&shared.stats.snapshot_rows, n);
    shared.stats.table(&target.name.to_string(), |t| {
        t.snapshot_rows += n;
        t.snapshot_done = complete;
    });
    Ok(())
}

impl SnapshotRun {
    pub async fn run(
        self,
        mut reader: Box<dyn SnapshotReader>,
        tables: &[TableRef],
    ) -> Result<SnapshotEnd> {
        let SnapshotRun {
            mut writers,
            transform,
            stats,
            progress,
            mut shutdown,
        } = self;
        // Tables with nothing recorded as copied: whatever their target
        // table holds is from an abandoned run (or a reset), so start clean,
        // before any chunk is written.
        let w = writers
            .first_mut()
            .ok_or_else(|| Error::fatal("no snapshot writer"))?;
        for t in tables {
            if progress
                .get(&t.name.to_string())
                .is_none_or(|p| p.ranges.is_empty())
            {
                w.begin().await?;
                w.clear_table(&transform.target_table(t)?).await?;
                w.commit(&[]).await?;
            }
        }
        for t in tables {
            stats.table(&transform.target_table(t)?.name.to_string(), |s| {
                s.snapshot_done = false
            });
        }
        stats.set_phase("snapshot");
        let shared = Arc::new(Shared {
            progress: Mutex::new(progress),
            transform,
            stats: stats.clone(),
            snapshot: reader.position().clone(),
            pending: Default::default(),
            failed: Default::default(),
        });
        tracing::info!(position = %shared.snapshot, tables = tables.len(), "snapshot started");

        // Chunks fan out to the writers through one bounded channel; each
        // writer takes the next chunk when it is free.
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(writers.len());
        let rx = Arc::new(Mutex::new(rx));
        let mut tasks = Vec::new();
        for (i, mut w) in writers.into_iter().enumerate() {
            let rx = rx.clone();
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let chunk = rx.lock().await.recv().await;
                    let Some(chunk) = chunk else {
                        return Ok::<_, Error>(());
                    };
                    shared.stats.worker(
                        i,
                        format!("copying {} ({} rows)", chunk.table.name, chunk.rows.len()),
                    );
                    let r = write_chunk(w.as_mut(), &shared, chunk).await;
                    shared.stats.worker(i, "idle");
                    if let Err(e) = r {
                        shared.failed.store(true, Ordering::SeqCst);
                        let _ = w.rollback().await;
                        return Err(e);
                    }
                    if shared.failed.load(Ordering::SeqCst) {
                        // Another writer failed: stop taking chunks (its
                        // error is the run's).
                        return Ok(());
                    }
                }
            }));
        }
        // Only the writers hold the receiver: once they have all stopped
        // (after an error), sending fails instead of waiting forever.
        drop(rx);
        let mut stopped = false;
        let read = async {
            loop {
                tokio::select! {
                    biased;
                    // Wrapped so no `watch::Ref` is held across an await (`run()` stays `Send`).
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => { stopped = true; return Ok(()); }
                    chunk = reader.next_chunk() => match chunk? {
                        Some(c) => {
                            shared.pending.lock().expect("pending chunks").entry(c.table.name.to_string()).or_default().in_flight += 1;
                            if tx.send(c).await.is_err() { return Ok(()) }
                        }
                        None => return Ok(()),
                    }
                }
            }
        };
        let read_result: Result<()> = read.await;
        drop(tx);
        let mut first_err = read_result.err();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(join) => {
                    first_err = first_err.or(Some(Error::fatal(format!(
                        "snapshot writer panicked: {join}"
                    ))))
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if stopped {
            tracing::info!("snapshot stopped; it resumes after the last copied chunk");
            return Ok(SnapshotEnd::Stopped);
        }
        let progress = std::mem::take(&mut *shared.progress.lock().await);
        tracing::info!(rows = Stats::get(&stats.snapshot_rows), "snapshot done");
        Ok(SnapshotEnd::Done(progress))
    }
}
