//! Wiring and running a pipeline: start-up, the snapshot phase, then the
//! change stream (source task → bounded queue → dispatcher → apply workers
//! → ordered commits → acks back to the source).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{
    Change, Checkpoint, Error, Position, Result, SequenceValue, Sink, SnapshotRequest, Source,
    SourceEvent, Step, TableName, TableProgress, TableRef, TableShape,
};
use tokio::sync::{mpsc, watch};

use crate::dispatch::{Dispatcher, handle_event};
use crate::options::{Consistency, Options};
use crate::queue;
use crate::recopy::Recopies;
use crate::schedule::InFlight;
use crate::snapshot::{SnapshotEnd, SnapshotRun};
use crate::startup::{StartUp, commit_records};
use crate::stats::Stats;
use crate::transform::Transform;
use crate::worker::Worker;

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request after draining every worker; the checkpoint is
    /// at one consistent position.
    Stopped,
}

pub struct Pipeline {
    pub source: Box<dyn Source>,
    pub sink: Arc<dyn Sink>,
    pub transform: Arc<Transform>,
    pub options: Options,
    pub stats: Arc<Stats>,
    /// Becomes `true` to ask the pipeline to stop.
    pub shutdown: watch::Receiver<bool>,
}
impl Pipeline {
    /// Runs until stopped (`Ok`) or an error the pipeline cannot handle
    /// itself (`Err`: the caller decides whether to restart, by class).
    /// First it claims the target (`ownership.rs`): the pipeline's fence,
    /// and a target that is not the source.
    pub async fn run(self) -> Result<Outcome> {
        let Pipeline {
            mut source,
            sink,
            transform,
            options,
            stats,
            shutdown,
        } = self;
        stats.set_phase("starting");
        crate::ownership::claim(source.as_mut(), sink.as_ref(), &options.pipeline).await?;
        let cp = sink.load().await?;
        let tables = source.tables().await?;
        if tables.is_empty() {
            return Err(Error::fatal("no source table matches the pipeline's table selection")
                .with_fix("check `tables.include` / `tables.exclude` in the pipeline file and the source database"));
        }
        let targets = tables
            .iter()
            .map(|t| transform.target_table(t))
            .collect::<Result<Vec<_>>>()?;
        // Nothing is written to either side before both are known good:
        // the source is checked here, before the target's structure copy
        // (which also creates its checkpoint table); the target is
        // written before the source is prepared (slot, publication,
        // triggers), so a target that refuses leaves the source as it was.
        source.preflight().await?;
        let sequences = share_shapes(source.as_mut(), sink.as_ref(), &tables, &targets).await?;
        let altered = sink.ensure_tables(&targets).await?;
        // Target tables whose columns differ: altered below, in the
        // transaction that records what start-up decided about them.
        let (sources, alter): (Vec<String>, Vec<Step>) = tables
            .iter()
            .zip(&targets)
            .filter(|(_, t)| altered.contains(&t.name))
            .map(|(s, t)| {
                let step = Step::Schema {
                    table: t.clone(),
                    alter: Default::default(),
                };
                (s.name.to_string(), step)
            })
            .unzip();
        source.prepare().await?;
        let mut cp = cp;
        let start = StartUp::plan(&mut cp, &tables, &sources, source.as_mut(), &options).await?;
        if !start.records.is_empty() || !alter.is_empty() {
            commit_records(sink.as_ref(), &alter, &start.records).await?;
        }

        let to_copy: Vec<&TableRef> = tables
            .iter()
            .filter(|t| {
                cp.tables
                    .get(&t.name.to_string())
                    .is_none_or(|p| !p.complete)
            })
            .collect();
        let mut progress = cp.tables.clone();
        for t in to_copy.iter().filter(|t| t.is_keyless()) {
            // A keyless table is copied in pieces of its physical order,
            // which mean nothing in another snapshot: an interrupted copy
            // starts over (the snapshot phase empties its target table).
            if let Some(p) = progress.get_mut(&t.name.to_string())
                && !p.ranges.is_empty()
            {
                tracing::info!(table = %t.name, "table has no key: copying it again from the start");
                p.ranges.clear();
            }
        }
        if !to_copy.is_empty() {
            let mut requests = Vec::with_capacity(to_copy.len());
            for t in &to_copy {
                requests.push(SnapshotRequest {
                    table: (*t).clone(),
                    skip: progress
                        .get(&t.name.to_string())
                        .map(|p| p.ranges.iter().map(|r| r.range.clone()).collect())
                        .unwrap_or_default(),
                    encoding: shared_encoding(source.row_encoding(t), sink.as_ref(), &transform, t)
                        .await?,
                });
            }
            let reader = source.snapshot(requests).await?;
            let writers = open_writers(sink.as_ref(), options.workers).await?;
            let run = SnapshotRun {
                writers,
                transform: transform.clone(),
                stats: stats.clone(),
                progress,
                shutdown: shutdown.clone(),
            };
            let copied: Vec<TableRef> = to_copy.into_iter().cloned().collect();
            match run.run(reader, &copied).await? {
                SnapshotEnd::Done(p) => progress = p,
                SnapshotEnd::Stopped => return Ok(Outcome::Stopped),
            }
            // The copy is loaded: the target's sequences continue after
            // the source's (`ferry sync-sequences` does it again later).
            sync_sequences(source.as_mut(), sink.as_ref(), &sequences).await?;
        }

        // Stream from the applied position, or (first run) from the oldest
        // snapshot; changes a snapshot already holds are skipped per range.
        let snapshots: Vec<Position> = progress
            .values()
            .flat_map(|p| p.ranges.iter().map(|r| r.snapshot.clone()))
            .collect();
        let from = match &cp.applied {
            Some(p) => Some(p.clone()),
            None => snapshots
                .iter()
                .cloned()
                .reduce(|a, b| if b < a { b } else { a }),
        };
        // `eventual` mode: a table may be applied past `from`; a change to
        // it is skipped when its transaction is at or before that position,
        // so no delivered transaction may straddle it either (re-applying
        // part of one would double rows of a table without a key).
        let mut boundaries: Vec<Position> = snapshots
            .into_iter()
            .chain(cp.table_applied.values().cloned())
            .filter(|s| from.as_ref().is_none_or(|f| s > f))
            .collect();
        boundaries.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        boundaries.dedup();
        source.start_stream(from.as_ref(), &boundaries).await?;
        if let Some(f) = &from {
            stats.set_applied(f.to_string(), None);
            stats.set_received(f.to_string(), None);
        }
        // Online re-copies continue where their last chunk ended.
        for (name, p) in cp.recopies.iter().filter(|(_, p)| !p.is_done()) {
            let Some(t) = tables.iter().find(|t| t.name.to_string() == *name) else {
                continue;
            };
            tracing::info!(table = %name, after = ?p.after.as_deref().map(ferry_core::display_key),
                reason = %p.reason, "continuing the online re-copy");
            source.recopy(t, p.after.clone()).await?;
        }
        let newest_copy = progress
            .iter()
            .filter(|(t, _)| start.selected.contains(*t))
            .filter_map(|(_, p)| p.newest_snapshot())
            .cloned()
            .reduce(|a, b| if b > a { b } else { a });
        let recopies = Recopies::new(
            cp.recopies
                .iter()
                .filter(|(t, _)| start.selected.contains(*t))
                .map(|(t, p)| (t.clone(), p.clone()))
                .collect(),
            newest_copy,
            from.clone(),
            stats.clone(),
        );
        let covered = Checkpoint {
            applied: cp.applied.clone(),
            tables: progress,
            table_applied: cp.table_applied.clone(),
            recopies: BTreeMap::new(),
        };
        stream(
            source, sink, transform, options, stats, shutdown, covered, from, recopies,
        )
        .await
    }
}

async fn open_writers(
    sink: &dyn Sink,
    wanted: usize,
) -> Result<Vec<Box<dyn ferry_core::SinkWriter>>> {
    let n = wanted.clamp(1, sink.info().max_writers.max(1));
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        writers.push(sink.writer().await?);
    }
    Ok(writers)
}

/// Pulls events from the source into the queue; applies acks between pulls.
async fn source_task(
    mut source: Box<dyn Source>,
    queue: queue::Sender<SourceEvent>,
    mut acks: watch::Receiver<Option<Position>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        if acks.has_changed().unwrap_or(false) {
            let pos = acks.borrow_and_update().clone();
            if let Some(p) = pos {
                source.ack(&p).await?;
            }
        }
        let event = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            e = source.next() => e?,
        };
        let size = match &event {
            SourceEvent::Commit(tx) => tx.approx_size(),
            SourceEvent::Partial { changes, .. } => changes.iter().map(Change::approx_size).sum(),
            SourceEvent::Heartbeat { .. } => 64,
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            r = queue.send(event, size) => if r.is_err() { return Ok(()) },
        }
    }
}
#[allow(clippy::too_many_arguments)]
async fn stream(
    source: Box<dyn Source>,
    sink: Arc<dyn Sink>,
    transform: Arc<Transform>,
    options: Options,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
    covered: Checkpoint,
    from: Option<Position>,
    recopies: Recopies,
) -> Result<Outcome> {
    stats.set_phase("streaming");
    match &from {
        Some(p) => tracing::info!(from = %p, "change stream started"),
        None => tracing::info!("change stream started from the source's current position"),
    }
    let (qtx, queue) = queue::bounded::<SourceEvent>(options.queue_events, options.queue_bytes);
    let (ack_tx, ack_rx) = watch::channel(None);
    // The source stops on request or when the dispatcher ends for any reason.
    let (stop_source, source_stop) = watch::channel(false);
    let source_handle = tokio::spawn(source_task(source, qtx, ack_rx, source_stop));

    let writers = open_writers(sink.as_ref(), options.workers).await?;
    stats.set_workers(writers.len());
    let committed = Arc::new(watch::channel(crate::commits::Commits::default()).0);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut senders = Vec::new();
    let mut worker_handles = Vec::new();
    for (id, writer) in writers.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(1);
        senders.push(tx);
        let w = Worker {
            id,
            writer,
            committed: committed.clone(),
            stats: stats.clone(),
            ordered_commit: options.consistency == Consistency::Transactional,
            retry: options.retry_budget(),
        };
        worker_handles.push(tokio::spawn(w.run(rx, done_tx.clone())));
    }
    drop(done_tx);
    let newest_snapshot = covered
        .tables
        .values()
        .filter_map(TableProgress::newest_snapshot)
        .cloned()
        .reduce(|a, b| if b > a { b } else { a });
    let n = senders.len();
    let mut d = Dispatcher {
        transform,
        stats: stats.clone(),
        covered,
        newest_snapshot,
        free: (0..n).rev().collect(),
        workers: senders,
        in_flight: InFlight::default(),
        jobs: BTreeMap::new(),
        commits: Default::default(),
        ends: BTreeMap::new(),
        durable: None,
        next_seq: 0,
        open: None,
        stream: None,
        acks: ack_tx,
        last_checkpoint: Instant::now(),
        newest: from.clone(),
        last_applied: from,
        recopies,
        options,
    };

    let mut stopping = false;
    let mut source_done = false;
    let result: Result<()> = loop {
        stats.queue_items.store(
            queue.depth().items as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        stats.queue_bytes.store(
            queue.depth().bytes as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // Dispatch the open group when a worker is free and the group is
        // full, old enough, or there is nothing more to add right now.
        if d.stream.is_none() && !d.free.is_empty() {
            let due = d
                .open
                .as_ref()
                .is_some_and(|g| d.group_due(g, queue.is_empty() || stopping || source_done));
            if due {
                if let Err(e) = d.dispatch_open(&mut done_rx).await {
                    break Err(e);
                }
                continue;
            }
        }
        if source_done && d.stream.take().is_some() {
            // The source failed inside a large transaction: abandon it.
        }
        if (stopping || source_done)
            && d.open.is_none()
            && d.in_flight.is_empty()
            && d.stream.is_none()
        {
            break Ok(());
        }
        let full = d.open.as_ref().is_some_and(|g| d.group_full(g));
        let wait = match &d.open {
            Some(g) if !d.free.is_empty() => {
                d.options.batch_time.saturating_sub(g.opened.elapsed())
            }
            _ => Duration::from_millis(250),
        };
        let pull = !(stopping || source_done || (full && d.stream.is_none()));
        tokio::select! {
            biased;
            done = done_rx.recv() => match done {
                Some(Ok(done)) => d.on_done(done),
                Some(Err(e)) => break Err(e),
                None => break Err(Error::fatal("every apply worker stopped")),
            },
            // Not `wait_for` directly: its `watch::Ref` would live in the
            // select's output while other branches await, making `run()`'s
            // future `!Send` (it could not be spawned).
            _ = async { let _ = shutdown.wait_for(|s| *s).await; }, if !stopping => {
                tracing::info!("stop requested: draining apply workers");
                stats.set_phase("stopping");
                stopping = true;
                if d.stream.take().is_some() {
                    // The large transaction in progress is rolled back and
                    // re-read after restart.
                }
            },
            ev = queue.recv_timeout(wait), if pull => match ev {
                Err(()) => {}
                Ok(None) => source_done = true,
                Ok(Some(ev)) => if let Err(e) = handle_event(&mut d, ev, &mut done_rx).await { break Err(e) },
            },
            _ = tokio::time::sleep(wait), if !pull => {}
        }
    };
    // Stop the source task and surface its error, if any. Workers still
    // waiting (after an error elsewhere) are aborted: dropping their writer
    // rolls back whatever they had open.
    let _ = stop_source.send(true);
    drop(queue);
    for h in &worker_handles {
        h.abort();
    }
    for h in worker_handles {
        let _ = h.await;
    }
    let source_result = source_handle
        .await
        .map_err(|e| Error::fatal(format!("source task panicked: {e}")))?;
    result?;
    source_result?;
    if !stopping {
        return Err(Error::transient("the source stream ended unexpectedly"));
    }
    Ok(Outcome::Stopped)
}

/// The row encoding in which `table`'s snapshot rows can pass from source to
/// target undecoded: the source's `encoding`, when the target loads it too
/// and nothing changes the rows.
async fn shared_encoding(
    encoding: Option<String>,
    sink: &dyn Sink,
    transform: &Transform,
    table: &TableRef,
) -> Result<Option<String>> {
    let Some(encoding) = encoding else {
        return Ok(None);
    };
    if !transform.keeps_rows(table)? {
        return Ok(None);
    }
    let target = sink.row_encoding(&transform.target_table(table)?).await?;
    let shared = target.as_deref() == Some(encoding.as_str());
    if shared {
        tracing::info!(table = %table.name, %encoding, "snapshot: rows pass through undecoded");
    } else {
        tracing::debug!(table = %table.name, source = %encoding, target = ?target,
            "snapshot: rows decoded (the target loads another encoding)");
    }
    Ok(shared.then_some(encoding))
}

/// Hands the sink the source's shape of each table whose target keeps
/// the source's name (a renamed table's definitions name the source
/// table); returns the sequences those shapes own.
pub async fn share_shapes(
    source: &mut dyn Source,
    sink: &dyn Sink,
    tables: &[TableRef],
    targets: &[TableRef],
) -> Result<Vec<TableName>> {
    let shapes = source.shapes(tables).await?;
    let shapes: Vec<(TableName, TableShape)> = shapes
        .into_iter()
        .filter(|(name, _)| {
            targets
                .iter()
                .zip(tables)
                .any(|(t, s)| s.name == *name && t.name == *name)
        })
        .collect();
    let sequences = shapes
        .iter()
        .flat_map(|(_, s)| s.sequences.iter().chain(&s.identity))
        .map(|q| TableName::parse(&q.name))
        .collect();
    sink.set_shapes(shapes).await;
    Ok(sequences)
}

/// Sets the target's `sequences` to the source's values.
pub async fn sync_sequences(
    source: &mut dyn Source,
    sink: &dyn Sink,
    sequences: &[TableName],
) -> Result<Vec<SequenceValue>> {
    if sequences.is_empty() {
        return Ok(Vec::new());
    }
    let values = source.sequence_values(sequences).await?;
    sink.set_sequences(&values).await?;
    Ok(values)
}
