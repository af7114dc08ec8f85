//! Wiring and running a pipeline: start-up, the snapshot phase, then the
//! change stream (source task → bounded queue → dispatcher → apply workers
//! → ordered commits → acks back to the source).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{
    Change, Checkpoint, CheckpointRecord, Error, Position, Result, Sink, SnapshotRequest, Source,
    SourceEvent, TableProgress, TableRef,
};
use tokio::sync::{mpsc, watch};

use crate::merge::Merger;
use crate::options::{Consistency, Options};
use crate::queue;
use crate::schedule::{InFlight, WriteSet};
use crate::snapshot::{SnapshotEnd, SnapshotRun};
use crate::stats::{Stats, now_micros};
use crate::transform::Transform;
use crate::worker::{Done, Job, StreamPart, Worker};

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

/// Consecutive source transactions gathered for one apply.
///
/// Transactional mode keeps one part (key `""`); eventual mode keeps one
/// part per target table, each applied and committed on its own.
struct OpenGroup {
    parts: BTreeMap<String, Part>,
    rows: usize,
    txns: usize,
    position: Option<Position>,
    commit_time: Option<i64>,
    opened: Instant,
}

#[derive(Default)]
struct Part {
    merger: Merger,
    ws: WriteSet,
}

impl OpenGroup {
    fn new() -> Self {
        OpenGroup {
            parts: BTreeMap::new(),
            rows: 0,
            txns: 0,
            position: None,
            commit_time: None,
            opened: Instant::now(),
        }
    }
}

impl Pipeline {
    /// Runs until stopped (`Ok`) or an error the pipeline cannot handle
    /// itself (`Err`: the caller decides whether to restart, by class).
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
        sink.ensure_tables(&targets).await?;
        source.prepare().await?;

        let to_copy: Vec<&TableRef> = tables
            .iter()
            .filter(|t| {
                cp.tables
                    .get(&t.name.to_string())
                    .is_none_or(|p| !p.complete)
            })
            .collect();
        let mut progress = cp.tables.clone();
        if !to_copy.is_empty() {
            let requests = to_copy
                .iter()
                .map(|t| SnapshotRequest {
                    table: (*t).clone(),
                    skip: progress
                        .get(&t.name.to_string())
                        .map(|p| p.ranges.iter().map(|r| r.range.clone()).collect())
                        .unwrap_or_default(),
                })
                .collect();
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
        let mut boundaries: Vec<Position> = snapshots
            .into_iter()
            .filter(|s| from.as_ref().is_none_or(|f| s > f))
            .collect();
        boundaries.dedup();
        source.start_stream(from.as_ref(), &boundaries).await?;
        if let Some(f) = &from {
            stats.set_applied(f.to_string(), None);
            stats.set_received(f.to_string(), None);
        }
        let covered = Checkpoint {
            applied: cp.applied.clone(),
            tables: progress,
            table_applied: cp.table_applied.clone(),
        };
        stream(
            source, sink, transform, options, stats, shutdown, covered, from,
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

struct Dispatcher {
    transform: Arc<Transform>,
    options: Options,
    stats: Arc<Stats>,
    covered: Checkpoint,
    /// Newest snapshot position; past it no change needs the coverage check.
    newest_snapshot: Option<Position>,
    workers: Vec<mpsc::Sender<Job>>,
    free: Vec<usize>,
    in_flight: InFlight,
    /// Jobs dispatched and not yet committed.
    jobs: BTreeMap<u64, JobInfo>,
    /// Committed jobs (dispatcher's own view, for the applied position).
    commits: crate::commits::Commits,
    /// Committed jobs whose group end is not yet known to be applied.
    ends: BTreeMap<u64, Option<(Position, Option<i64>)>>,
    /// Newest applied position the target's checkpoint records hold.
    durable: Option<Position>,
    next_seq: u64,
    open: Option<OpenGroup>,
    stream: Option<mpsc::Sender<StreamPart>>,
    acks: watch::Sender<Option<Position>>,
    last_checkpoint: Instant,
    last_applied: Option<Position>,
}

impl Dispatcher {
    /// Source changes → target changes, dropping what a snapshot already holds.
    fn target_changes(&self, position: &Position, changes: Vec<Change>) -> Result<Vec<Change>> {
        let check = self.newest_snapshot.as_ref().is_some_and(|s| position <= s);
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            // Near a snapshot boundary a key change is judged per key: the
            // old key's range and the new key's range may come from
            // different snapshots.
            let parts = match c {
                Change::Update {
                    table,
                    before: Some(before),
                    after,
                } if check
                    && table.key_of(&before) != table.key_of(&after)
                    && !after
                        .iter()
                        .any(|v| matches!(v, ferry_core::Value::Unchanged)) =>
                {
                    vec![
                        Change::Delete {
                            table: table.clone(),
                            before,
                        },
                        Change::Insert { table, row: after },
                    ]
                }
                other => vec![other],
            };
            for c in parts {
                self.keep(check, position, c, &mut out)?;
            }
        }
        Ok(out)
    }

    fn keep(
        &self,
        check: bool,
        position: &Position,
        c: Change,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        {
            if check {
                let key = c.key();
                let skip = c.table_names().iter().all(|t| {
                    self.covered
                        .covered_by_snapshot(&t.to_string(), key.as_deref(), position)
                });
                if skip {
                    return Ok(());
                }
            }
            if let Some(t) = self.transform.change(c)? {
                // Eventual mode: a table may already be ahead of the
                // applied position (tables commit independently).
                let applied = !self.covered.table_applied.is_empty()
                    && t.table_names()
                        .iter()
                        .all(|n| self.covered.applied_to_table(&n.to_string(), position));
                if !applied {
                    self.count(&t);
                    out.push(t);
                }
            }
        }
        Ok(())
    }

    fn count(&self, c: &Change) {
        let s = &self.stats;
        match c {
            Change::Insert { .. } => Stats::add(&s.inserts, 1),
            Change::Update { .. } => Stats::add(&s.updates, 1),
            Change::Delete { .. } => Stats::add(&s.deletes, 1),
            Change::Truncate { .. } | Change::Schema { .. } => Stats::add(&s.ddl, 1),
        }
        for t in c.table_names() {
            s.table(&t.to_string(), |t| t.changes_applied += 1);
        }
        Stats::add(&s.bytes_applied, c.approx_size() as u64);
    }

    fn add_to_group(
        &mut self,
        position: Position,
        time: Option<i64>,
        changes: Vec<Change>,
    ) -> Result<()> {
        let changes = self.target_changes(&position, changes)?;
        let eventual = self.options.consistency == Consistency::Eventual;
        let g = self.open.get_or_insert_with(OpenGroup::new);
        g.rows += changes.len();
        g.txns += 1;
        for c in changes {
            if !eventual {
                let part = g.parts.entry(String::new()).or_default();
                part.ws.add(&c);
                part.merger.push(c);
                continue;
            }
            // Eventual: one part per table (a truncate of several tables
            // becomes one truncate per table).
            let split = match c {
                Change::Truncate { tables } if tables.len() > 1 => tables
                    .into_iter()
                    .map(|t| Change::Truncate { tables: vec![t] })
                    .collect(),
                other => vec![other],
            };
            for c in split {
                let name = c.table_names()[0].clone();
                let part = g.parts.entry(name.to_string()).or_default();
                part.ws.add_table(&name);
                part.merger.push(c);
            }
        }
        g.position = Some(position);
        g.commit_time = time.or(g.commit_time);
        Ok(())
    }

    fn group_due(&self, g: &OpenGroup, queue_empty: bool) -> bool {
        g.rows >= self.options.batch_rows
            || g.opened.elapsed() >= self.options.batch_time
            || queue_empty
    }

    /// Sends the open group to free workers: one job per part. Waits for a
    /// worker to free up when a part has none.
    async fn dispatch_open(&mut self, done_rx: &mut DoneRx) -> Result<()> {
        let Some(g) = self.open.take() else {
            return Ok(());
        };
        let Some(position) = g.position.clone() else {
            return Ok(());
        };
        Stats::add(&self.stats.txns_applied, g.txns as u64);
        let eventual = self.options.consistency == Consistency::Eventual;
        let mut parts: Vec<(String, Part)> = g.parts.into_iter().collect();
        if parts.is_empty() {
            // Nothing to write (an idle checkpoint): still record the position.
            parts.push((String::new(), Part::default()));
        }
        let last = parts.len() - 1;
        for (i, (table, part)) in parts.into_iter().enumerate() {
            while self.free.is_empty() {
                wait_one(self, done_rx).await?;
            }
            let worker = self.free.pop().expect("a free worker");
            self.next_seq += 1;
            let seq = self.next_seq;
            let exec_after = self.in_flight.depends_on(&part.ws);
            let steps = part.merger.finish();
            let rows: usize = steps.iter().map(|s| s.row_count()).sum();
            Stats::add(&self.stats.rows_applied, rows as u64);
            let summary = if table.is_empty() {
                format!("{} txns, {} changes up to {}", g.txns, g.rows, position)
            } else {
                format!("{rows} row writes to {table} up to {position}")
            };
            // What becomes durable with this job: transactional mode
            // records the group's position; eventual mode records the
            // table's position and the prefix known to be applied.
            let (records, durable) = if !eventual {
                (
                    vec![CheckpointRecord::applied(&position)],
                    Some(position.clone()),
                )
            } else {
                let idle = table.is_empty();
                let prefix = if idle {
                    Some(position.clone())
                } else {
                    self.last_applied.clone()
                };
                let mut records: Vec<CheckpointRecord> = prefix
                    .iter()
                    .map(|p| CheckpointRecord::applied_by(worker, p))
                    .collect();
                if !idle {
                    records.push(CheckpointRecord::table_applied(&table, &position));
                }
                (records, prefix)
            };
            self.in_flight.push(seq, part.ws);
            self.jobs.insert(
                seq,
                JobInfo {
                    group_end: (i == last).then(|| (position.clone(), g.commit_time)),
                    durable,
                },
            );
            let job = Job::Group {
                seq,
                exec_after,
                steps,
                records,
                summary,
            };
            self.workers[worker]
                .send(job)
                .await
                .map_err(|_| Error::fatal("apply worker stopped unexpectedly"))?;
        }
        Ok(())
    }

    fn on_done(&mut self, done: Done) {
        self.free.push(done.worker);
        self.in_flight.committed(done.seq);
        let info = self.jobs.remove(&done.seq);
        if done.abandoned {
            return;
        }
        self.commits.mark(done.seq);
        if let Some(JobInfo {
            durable: Some(d), ..
        }) = &info
            && self.durable.as_ref().is_none_or(|a| d > a)
        {
            self.durable = Some(d.clone());
            // Only what the target's checkpoint holds may be released.
            self.acks.send_replace(Some(d.clone()));
        }
        if let Some(info) = info {
            self.ends.insert(done.seq, info.group_end);
        }
        // The applied position: the end of the newest group whose every
        // job, and every job before, has committed.
        let mut newest = None;
        while let Some((&seq, _)) = self.ends.first_key_value() {
            if seq > self.commits.prefix {
                break;
            }
            if let Some((_, Some(end))) = self.ends.pop_first() {
                newest = Some(end);
            }
        }
        if let Some((pos, time)) = newest {
            self.stats.set_applied(pos.to_string(), time);
            self.last_applied = Some(pos);
            self.last_checkpoint = Instant::now();
        }
    }
}

type DoneRx = mpsc::UnboundedReceiver<Result<Done>>;

/// What the dispatcher remembers of a job until it commits.
struct JobInfo {
    /// The group's position and commit time, on the group's last job.
    group_end: Option<(Position, Option<i64>)>,
    /// The applied position this job's checkpoint records make durable.
    durable: Option<Position>,
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
) -> Result<Outcome> {
    stats.set_phase("streaming");
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
            max_retries: options.max_retries,
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
        last_applied: from,
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
        let full = d
            .open
            .as_ref()
            .is_some_and(|g| g.rows >= d.options.batch_rows);
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

async fn wait_all_committed(
    d: &mut Dispatcher,
    done_rx: &mut mpsc::UnboundedReceiver<Result<Done>>,
) -> Result<()> {
    while !d.in_flight.is_empty() || d.free.len() < d.workers.len() {
        match done_rx.recv().await {
            Some(Ok(done)) => d.on_done(done),
            Some(Err(e)) => return Err(e),
            None => return Err(Error::fatal("every apply worker stopped")),
        }
    }
    Ok(())
}

async fn handle_event(
    d: &mut Dispatcher,
    ev: SourceEvent,
    done_rx: &mut mpsc::UnboundedReceiver<Result<Done>>,
) -> Result<()> {
    match ev {
        SourceEvent::Commit(tx) => {
            d.stats
                .set_received(tx.position.to_string(), tx.commit_time_micros);
            if let Some(parts) = d.stream.take() {
                let changes = d.target_changes(&tx.position, tx.changes)?;
                let steps = crate::merge::merge(changes);
                let _ = parts.send(StreamPart::Steps(steps)).await;
                let _ = parts
                    .send(StreamPart::Commit(vec![CheckpointRecord::applied(
                        &tx.position,
                    )]))
                    .await;
                d.jobs.insert(
                    d.next_seq,
                    JobInfo {
                        group_end: Some((tx.position.clone(), tx.commit_time_micros)),
                        durable: Some(tx.position),
                    },
                );
                Stats::add(&d.stats.txns_applied, 1);
                return Ok(());
            }
            d.add_to_group(tx.position, tx.commit_time_micros, tx.changes)
        }
        SourceEvent::Partial { position, changes } => {
            if d.stream.is_none() {
                // A transaction too large for memory: everything before it
                // commits first, then it streams alone into one target
                // transaction.
                d.dispatch_open(done_rx).await?;
                wait_all_committed(d, done_rx).await?;
                let (tx, rx) = mpsc::channel(2);
                d.next_seq += 1;
                let seq = d.next_seq;
                d.in_flight.push(seq, WriteSet::everything());
                d.jobs.insert(
                    seq,
                    JobInfo {
                        group_end: None,
                        durable: None,
                    },
                );
                let worker = d.free.pop().expect("all workers free");
                d.workers[worker]
                    .send(Job::Stream { seq, parts: rx })
                    .await
                    .map_err(|_| Error::fatal("apply worker stopped unexpectedly"))?;
                d.stream = Some(tx);
            }
            let changes = d.target_changes(&position, changes)?;
            Stats::add(&d.stats.rows_applied, changes.len() as u64);
            let steps = crate::merge::merge(changes);
            if let Some(parts) = &d.stream {
                let _ = parts.send(StreamPart::Steps(steps)).await;
            }
            Ok(())
        }
        SourceEvent::Heartbeat {
            position,
            time_micros,
        } => {
            d.stats
                .set_received(position.to_string(), time_micros.or(Some(now_micros())));
            let idle = d.open.is_none() && d.in_flight.is_empty() && d.stream.is_none();
            // Compare with what the checkpoint holds (in eventual mode it
            // trails the applied position until an idle record).
            let newer = d.durable.as_ref().is_none_or(|a| position > *a);
            if idle
                && newer
                && d.last_checkpoint.elapsed() >= d.options.idle_checkpoint
                && !d.free.is_empty()
            {
                // Record the idle source's position on the target so it can
                // release its log, and a restart need not re-read it.
                let mut g = OpenGroup::new();
                g.position = Some(position);
                g.commit_time = time_micros;
                d.open = Some(g);
                d.dispatch_open(done_rx).await?;
            }
            Ok(())
        }
    }
}

async fn wait_one(
    d: &mut Dispatcher,
    done_rx: &mut mpsc::UnboundedReceiver<Result<Done>>,
) -> Result<()> {
    match done_rx.recv().await {
        Some(Ok(done)) => {
            d.on_done(done);
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Err(Error::fatal("every apply worker stopped")),
    }
}
