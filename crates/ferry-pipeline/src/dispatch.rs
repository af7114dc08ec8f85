//! The dispatcher: turns source events into apply jobs. It groups
//! consecutive transactions (closing a group at `batch_rows`, `batch_time`
//! or when idle), tracks write-set dependencies, hands jobs to free
//! workers, streams large transactions alone, and turns commits into the
//! applied position and acks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ferry_core::{
    Change, Checkpoint, CheckpointRecord, Error, Position, Result, SourceEvent, Step, TableProgress,
};
use tokio::sync::{mpsc, watch};

use crate::merge::Merger;
use crate::options::{Consistency, Options};
use crate::recopy::Recopies;
use crate::schedule::{InFlight, WriteSet};
use crate::stats::{Stats, now_micros};
use crate::transform::Transform;
use crate::worker::{Done, Job, StreamPart};

/// Consecutive source transactions gathered for one apply.
///
/// Transactional mode keeps one part (key `""`); eventual mode keeps one
/// part per target table, each applied and committed on its own.
pub(crate) struct OpenGroup {
    pub(crate) parts: BTreeMap<String, Part>,
    pub(crate) rows: usize,
    pub(crate) txns: usize,
    pub(crate) position: Option<Position>,
    pub(crate) commit_time: Option<i64>,
    pub(crate) opened: Instant,
}

#[derive(Default)]
pub(crate) struct Part {
    merger: Merger,
    ws: WriteSet,
    /// Checkpoint records committed with this part beside the applied
    /// position (online re-copy progress), by scope: the newest wins.
    records: BTreeMap<String, CheckpointRecord>,
}

impl OpenGroup {
    pub(crate) fn new() -> Self {
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

pub(crate) struct Dispatcher {
    pub(crate) transform: Arc<Transform>,
    pub(crate) options: Options,
    pub(crate) stats: Arc<Stats>,
    pub(crate) covered: Checkpoint,
    /// Newest snapshot position; past it no change needs the coverage check.
    pub(crate) newest_snapshot: Option<Position>,
    pub(crate) workers: Vec<mpsc::Sender<Job>>,
    pub(crate) free: Vec<usize>,
    pub(crate) in_flight: InFlight,
    /// Jobs dispatched and not yet committed.
    pub(crate) jobs: BTreeMap<u64, JobInfo>,
    /// Committed jobs (dispatcher's own view, for the applied position).
    pub(crate) commits: crate::commits::Commits,
    /// Committed jobs whose group end is not yet known to be applied.
    pub(crate) ends: BTreeMap<u64, Option<(Position, Option<i64>)>>,
    /// Newest applied position the target's checkpoint records hold.
    pub(crate) durable: Option<Position>,
    pub(crate) next_seq: u64,
    pub(crate) open: Option<OpenGroup>,
    /// The transaction too large for memory being applied, if any.
    pub(crate) stream: Option<OpenStream>,
    pub(crate) acks: watch::Sender<Option<Position>>,
    pub(crate) last_checkpoint: Instant,
    pub(crate) last_applied: Option<Position>,
    /// Newest position handed to a group (a transaction's, or a
    /// heartbeat's once recorded): a heartbeat at or before it says
    /// nothing new.
    pub(crate) newest: Option<Position>,
    pub(crate) recopies: Recopies,
}

/// A transaction too large for memory, streaming into one target
/// transaction part by part.
pub(crate) struct OpenStream {
    parts: mpsc::Sender<StreamPart>,
    /// Rows of keys a part could not settle (a deferrable key holding two
    /// rows at the part's end), merged on with the next part.
    merger: Merger,
}

impl Dispatcher {
    /// Source changes → target changes, dropping what a snapshot already holds.
    pub(crate) fn target_changes(
        &self,
        position: &Position,
        changes: Vec<Change>,
    ) -> Result<Vec<Change>> {
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

    pub(crate) fn keep(
        &self,
        check: bool,
        position: &Position,
        c: Change,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        {
            // Re-copy chunks are read after every snapshot and applied once
            // each: never covered, never already applied.
            if c.is_recopy() {
                if let Some(t) = self.transform.change(c)? {
                    self.count(&t);
                    out.push(t);
                }
                return Ok(());
            }
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

    pub(crate) fn count(&self, c: &Change) {
        let s = &self.stats;
        match c {
            Change::Insert { .. } => Stats::add(&s.inserts, 1),
            Change::Update { .. } => Stats::add(&s.updates, 1),
            Change::Delete { .. } => Stats::add(&s.deletes, 1),
            Change::Truncate { .. } | Change::Schema { .. } => Stats::add(&s.ddl, 1),
            // Counted by `Recopies::observe`.
            Change::RecopyStart { .. } | Change::RecopyRows { .. } => return,
        }
        for t in c.table_names() {
            s.table(&t.to_string(), |t| t.changes_applied += 1);
        }
        Stats::add(&s.bytes_applied, c.approx_size() as u64);
    }

    pub(crate) fn add_to_group(
        &mut self,
        position: Position,
        time: Option<i64>,
        changes: Vec<Change>,
    ) -> Result<()> {
        let eventual = self.options.consistency == Consistency::Eventual;
        // Re-copy progress commits with the part that applies the chunk.
        let mut records = Vec::new();
        for c in changes.iter().filter(|c| c.is_recopy()) {
            let Some(t) = c.table() else { continue };
            let target = self.transform.target_table(t)?.name.to_string();
            let part = if eventual {
                target.clone()
            } else {
                String::new()
            };
            if let Some(r) = self.recopies.observe(c, &position, &target) {
                records.push((part.clone(), r));
            }
            // A table the pipeline never copied (new on the source) is
            // copied once its re-copy ends: a restart must not copy it
            // again from the start.
            let name = t.name.to_string();
            if let Change::RecopyRows { range, .. } = c
                && (range.upper.is_none() || t.is_keyless())
                && self.covered.tables.get(&name).is_none_or(|p| !p.complete)
            {
                let mut p = TableProgress::default();
                p.add(ferry_core::KeyRange::all(), &position);
                p.complete = true;
                records.push((part, CheckpointRecord::table(&name, &p)));
                self.covered.tables.insert(name, p);
            }
        }
        let changes = self.target_changes(&position, changes)?;
        let g = self.open.get_or_insert_with(OpenGroup::new);
        for (part, r) in records {
            g.parts
                .entry(part)
                .or_default()
                .records
                .insert(r.scope.clone(), r);
        }
        g.rows += changes.iter().map(weight).sum::<usize>();
        g.txns += 1;
        if self.options.active_active {
            // One source transaction per target transaction (`full`), its
            // commit time and origin on the target's commit.
            let part = g.parts.entry(String::new()).or_default();
            if !changes.is_empty() {
                part.merger.stamp(position.clone(), time);
            }
            for c in changes {
                part.ws.add(&c);
                part.merger.push_checked(c);
            }
            g.position = Some(position);
            g.commit_time = time.or(g.commit_time);
            return Ok(());
        }
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
        self.newest = Some(position.clone());
        g.position = Some(position);
        g.commit_time = time.or(g.commit_time);
        Ok(())
    }

    /// A heartbeat that arrives while a group is open or in flight.
    ///
    /// Its position is recorded by the next group to commit, so it becomes
    /// the applied position as soon as every transaction before it is
    /// applied, not when the pipeline next falls idle (a consistent reader
    /// waiting for a source marker then waits for one commit, not for a
    /// quiet moment). Into a group still open it costs nothing: nothing
    /// lies between that group's last transaction and the heartbeat, so
    /// the group's position becomes the heartbeat's. With nothing open, an
    /// empty group is opened to carry it, under the same rule as an idle
    /// heartbeat (`idle_checkpoint`); it is dispatched like any group, once
    /// a worker is free, and absorbs the transactions that follow meanwhile.
    ///
    /// Acks are unchanged: the position is acked once the group recording
    /// it commits, and groups commit in source order. Eventual mode keeps
    /// recording heartbeats only when idle: its groups commit out of order,
    /// so a position-only group must wait until nothing else is in flight.
    /// So does a large transaction being streamed (it ends with its own
    /// commit position, which covers the heartbeat's), and active-active,
    /// whose groups are one source transaction each, stamped with its
    /// commit time.
    pub(crate) fn heartbeat_while_busy(&mut self, position: Position, time: Option<i64>) {
        if self.options.consistency == Consistency::Eventual
            || self.stream.is_some()
            || self.options.active_active
        {
            return;
        }
        if self.newest.as_ref().is_some_and(|n| position <= *n) {
            return;
        }
        match &mut self.open {
            Some(g) => {
                g.position = Some(position.clone());
                g.commit_time = time.or(g.commit_time);
            }
            None if self.last_checkpoint.elapsed() >= self.options.idle_checkpoint => {
                let mut g = OpenGroup::new();
                g.position = Some(position.clone());
                g.commit_time = time;
                self.open = Some(g);
            }
            None => return,
        }
        self.newest = Some(position);
    }

    /// The open group takes no more transactions: it has `batch_rows`
    /// changes, or (active-active) one transaction.
    pub(crate) fn group_full(&self, g: &OpenGroup) -> bool {
        g.rows >= self.options.batch_rows || (self.options.active_active && g.txns >= 1)
    }

    pub(crate) fn group_due(&self, g: &OpenGroup, queue_empty: bool) -> bool {
        self.group_full(g) || g.opened.elapsed() >= self.options.batch_time || queue_empty
    }

    /// Sends the open group to free workers: one job per part. Waits for a
    /// worker to free up when a part has none.
    pub(crate) async fn dispatch_open(&mut self, done_rx: &mut DoneRx) -> Result<()> {
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
            let mut steps = part.merger.finish();
            if !self.transform.passes_deletes() {
                for s in &mut steps {
                    if let Step::Replace { keep_others, .. } = s {
                        *keep_others = true;
                    }
                }
            }
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
            let (mut records, durable) = if !eventual {
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
            records.extend(part.records.into_values());
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

    pub(crate) fn on_done(&mut self, done: Done) {
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
            self.recopies.applied(&pos);
            self.last_applied = Some(pos);
            self.last_checkpoint = Instant::now();
        }
    }
}

pub(crate) type DoneRx = mpsc::UnboundedReceiver<Result<Done>>;

/// How much a change counts toward `batch_rows`: a re-copy chunk, its rows.
fn weight(c: &Change) -> usize {
    match c {
        Change::RecopyRows { rows, .. } => rows.len().max(1),
        _ => 1,
    }
}

/// What the dispatcher remembers of a job until it commits.
pub(crate) struct JobInfo {
    /// The group's position and commit time, on the group's last job.
    pub(crate) group_end: Option<(Position, Option<i64>)>,
    /// The applied position this job's checkpoint records make durable.
    pub(crate) durable: Option<Position>,
}

pub(crate) async fn wait_all_committed(
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

pub(crate) async fn handle_event(
    d: &mut Dispatcher,
    ev: SourceEvent,
    done_rx: &mut mpsc::UnboundedReceiver<Result<Done>>,
) -> Result<()> {
    match ev {
        SourceEvent::Commit(tx) => {
            d.stats
                .set_received(tx.position.to_string(), tx.commit_time_micros);
            if let Some(OpenStream { parts, mut merger }) = d.stream.take() {
                for c in d.target_changes(&tx.position, tx.changes)? {
                    merger.push(c);
                }
                let _ = parts.send(StreamPart::Steps(merger.finish())).await;
                let _ = parts
                    .send(StreamPart::Commit(vec![CheckpointRecord::applied(
                        &tx.position,
                    )]))
                    .await;
                d.jobs.insert(
                    d.next_seq,
                    JobInfo {
                        group_end: Some((tx.position.clone(), tx.commit_time_micros)),
                        durable: Some(tx.position.clone()),
                    },
                );
                Stats::add(&d.stats.txns_applied, 1);
                d.newest = Some(tx.position);
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
                d.stream = Some(OpenStream {
                    parts: tx,
                    merger: Merger::new(),
                });
            }
            let changes = d.target_changes(&position, changes)?;
            Stats::add(&d.stats.rows_applied, changes.len() as u64);
            let budget = d.options.queue_bytes;
            if let Some(stream) = &mut d.stream {
                for c in changes {
                    stream.merger.push(c);
                }
                let steps = stream.merger.finish_part();
                let held = stream.merger.held_bytes();
                if held > budget {
                    let tables: Vec<String> = stream
                        .merger
                        .held_tables()
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    return Err(Error::fatal(format!(
                        "the transaction ending at {position} writes more rows ({held} bytes) \
                         under the DEFERRABLE key of {} than ferry holds in memory \
                         (`apply.queue_bytes` = {budget}): a key there may hold two rows until \
                         the transaction commits, so ferry must hold them until then",
                        tables.join(", ")
                    ))
                    .with_fix(
                        "raise `apply.queue_bytes` in the pipeline file (the memory ferry may \
                         use for this), then restart; or make the key NOT DEFERRABLE",
                    ));
                }
                let _ = stream.parts.send(StreamPart::Steps(steps)).await;
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
            if !idle {
                d.heartbeat_while_busy(position, time_micros);
                return Ok(());
            }
            if newer
                && d.last_checkpoint.elapsed() >= d.options.idle_checkpoint
                && !d.free.is_empty()
            {
                // Record the idle source's position on the target so it can
                // release its log, and a restart need not re-read it.
                if d.newest.as_ref().is_none_or(|n| position > *n) {
                    d.newest = Some(position.clone());
                }
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

pub(crate) async fn wait_one(
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
