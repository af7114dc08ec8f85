//! The SQLite source: trigger capture (see `capture.rs`) read by
//! polling, snapshots (see `snapshot.rs`), and pre-flight checks.
//!
//! # Transactions
//!
//! Triggers cannot see transaction ids, but SQLite serializes writers and
//! `AUTOINCREMENT` hands out seqs in commit order, so every committed state
//! of the change table ends on a transaction boundary. Each poll reads
//! `hi = max(seq)`; the rows `(last delivered, hi]` are a group of whole
//! source transactions and are delivered as one [`Transaction`] (as
//! `Partial`s of `max_chunk_rows` followed by the `Commit` when large).
//! Source transactions are never split, but several may be merged into one:
//! readers of the target still only see states the source had, just not
//! every one of them. Rows up to `hi` never change (pruning only removes
//! acknowledged ones), so no read transaction stays open across chunks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ferry_core::{
    Change, CheckItem, Continuity, Error, ErrorClass, Position, Result, Selection, SnapshotReader,
    SnapshotRequest, Source, SourceEvent, SqlitePosition, TableName, TableReader, TableRef,
    Transaction, Value,
};
use rusqlite::{Connection, TransactionBehavior};

use crate::capture;
use crate::change::{decode_change, drift_error, follow_unique_indexes};
use crate::connection::{Blocking, db_error, open_source, set_wal};
use crate::schema::{read_selected_table, selected_tables};

/// How long the source may stay silent before it sends a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Acks are recorded (and the change table pruned) at most this often: each
/// is a write transaction on the source database.
const ACK_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Validated settings of a SQLite source.
#[derive(Debug, Clone)]
pub struct SqliteSourceConfig {
    /// The source database file; it must exist.
    pub path: PathBuf,
    /// Pipeline name: the consumer name in `_ferry_consumers`.
    pub pipeline: String,
    pub selection: Selection,
    /// Pause between two polls of the change table while idle.
    pub poll_interval: Duration,
    /// Most changes per event, and most rows per snapshot chunk.
    pub max_chunk_rows: usize,
    /// Carry every value with the storage class it has (INTEGER, REAL,
    /// TEXT, BLOB) and every column's declared type verbatim: all columns
    /// become [`ColumnType::Dynamic`](ferry_core::ColumnType::Dynamic) with
    /// `source_type` the declared type, whatever it says. For a SQLite
    /// target, which then reproduces `typeof()` and `quote()` of every
    /// cell. Off (the default), each column is narrowed to the logical type
    /// its declared type names and every value is checked against it, for
    /// targets of other kinds (see `docs/types.md`).
    pub keep_storage_classes: bool,
}

impl SqliteSourceConfig {
    /// A config with the defaults: every table, 20 ms polls, 10 000-row chunks.
    pub fn new(path: impl Into<PathBuf>, pipeline: impl Into<String>) -> Self {
        SqliteSourceConfig {
            path: path.into(),
            pipeline: pipeline.into(),
            selection: Selection::default(),
            poll_interval: Duration::from_millis(20),
            max_chunk_rows: 10_000,
            keep_storage_classes: false,
        }
    }
}

/// A SQLite database read through capture triggers.
pub struct SqliteSource {
    cfg: SqliteSourceConfig,
    conn: Blocking<Connection>,
    /// `ferry verify --where`: reads see only rows for which it holds.
    condition: Option<String>,
    /// The structure `tables()` reported, and the schema version it was read at.
    tables: Option<(Vec<TableRef>, i64)>,
    stream: Option<Stream>,
    acks: Acks,
    /// Online re-copies running: table and the last key copied.
    recopies: std::collections::VecDeque<(TableRef, Option<Vec<Value>>)>,
    /// A re-copy chunk read at seq `.0`, delivered once the stream has
    /// delivered everything up to it.
    pending_recopy: Option<(i64, ferry_core::Change)>,
    /// Tables whose structure change this source marked in the change
    /// table, until the stream meets the marker.
    structure_marked: std::collections::HashSet<String>,
}

struct Stream {
    by_name: Arc<HashMap<String, TableRef>>,
    /// Highest seq delivered (in a `Commit` or a heartbeat).
    delivered: i64,
    /// Highest seq seen committed; above `delivered` while a boundary split
    /// what one poll saw into several groups.
    seen: i64,
    /// Snapshot positions a group must end at (ascending), so no delivered
    /// group straddles the snapshot of a table copied in another snapshot.
    boundaries: Vec<i64>,
    data_version: Option<i64>,
    schema_version: i64,
    group: Option<Group>,
    last_event: Instant,
}

/// A group of whole transactions being delivered in chunks.
struct Group {
    hi: i64,
    /// Highest seq already read.
    cursor: i64,
    max_ts: Option<i64>,
    partial_sent: bool,
}

struct Acks {
    pending: Option<i64>,
    last_flush: Option<Instant>,
}

/// What one poll saw.
struct Poll {
    data_version: i64,
    /// `(schema_version, max(seq))`, read together, when anything changed.
    state: Option<(i64, i64)>,
}

impl SqliteSource {
    /// Opens the source database (it must exist; ferry never creates it).
    pub fn open(cfg: SqliteSourceConfig) -> Result<Self> {
        let conn = open_source(&cfg.path)?;
        Ok(SqliteSource {
            conn: Blocking::new(conn, &cfg.path),
            cfg,
            condition: None,
            tables: None,
            stream: None,
            acks: Acks {
                pending: None,
                last_flush: None,
            },
            recopies: Default::default(),
            pending_recopy: None,
            structure_marked: Default::default(),
        })
    }

    async fn known_tables(&mut self) -> Result<(Vec<TableRef>, i64)> {
        if let Some(t) = &self.tables {
            return Ok(t.clone());
        }
        let t = self.load_tables().await?;
        self.tables = Some(t.clone());
        Ok(t)
    }

    async fn load_tables(&self) -> Result<(Vec<TableRef>, i64)> {
        let selection = self.cfg.selection.clone();
        let path = self.cfg.path.clone();
        let keep = self.cfg.keep_storage_classes;
        self.conn
            .run(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Deferred)
                    .map_err(|e| db_error(&path, "reading tables", e))?;
                let version = schema_version(&tx, &path)?;
                let mut out = Vec::new();
                for name in selected_tables(&tx, &path, &selection)? {
                    out.push(Arc::new(read_selected_table(
                        &tx, &path, &name, &selection, keep,
                    )?));
                }
                Ok((out, version))
            })
            .await
    }

    fn stream_mut(&mut self) -> Result<&mut Stream> {
        self.stream
            .as_mut()
            .ok_or_else(|| Error::fatal("next() was called before start_stream()"))
    }

    /// Reads the next chunk of the current group.
    async fn next_chunk(&mut self) -> Result<Option<SourceEvent>> {
        let limit = self.cfg.max_chunk_rows.max(1);
        let stream = self.stream_mut()?;
        let Some(group) = &stream.group else {
            return Ok(None);
        };
        let (after, hi) = (group.cursor, group.hi);
        let by_name = Arc::clone(&stream.by_name);
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        let side = crate::reader::Side::source(&self.cfg.selection);
        // Tables whose misfit rows need no new re-copy: one runs, or the
        // structure marker that starts one is on its way.
        let recopying: std::collections::HashSet<String> = self
            .recopies
            .iter()
            .map(|(t, _)| t.name.name.clone())
            .chain(self.structure_marked.iter().cloned())
            .collect();
        let (changes, last_seq, read, max_ts) = self
            .conn
            .run(move |c| {
                let rows = capture::read_changes(c, after, hi, limit)
                    .map_err(|e| db_error(&path, "reading the change table", e))?;
                let last = rows.last().map_or(hi, |r| r.seq);
                let max_ts = rows.iter().filter_map(|r| r.ts).max();
                let mut changes = Vec::with_capacity(rows.len());
                let mut restarted = std::collections::HashSet::new();
                for row in &rows {
                    let Some(table) = by_name.get(&row.table) else {
                        continue;
                    };
                    if row.op == capture::RECOPY_OP || row.op == capture::STRUCTURE_OP {
                        // Markers of this pipeline (others ignore them):
                        // `ferry resync`, or a structure change it met.
                        if row.new.as_deref() != Some(pipeline.as_str()) {
                            continue;
                        }
                        let reason = if row.op == capture::RECOPY_OP {
                            "ferry resync"
                        } else {
                            changes.push(Change::Schema {
                                table: table.clone(),
                                alter: Default::default(),
                            });
                            restarted.insert(row.table.clone());
                            "its columns changed (or it is new to the pipeline)"
                        };
                        changes.push(Change::RecopyStart {
                            table: table.clone(),
                            reason: reason.into(),
                        });
                        continue;
                    }
                    if !crate::change::fits(table, row) {
                        // Captured before the table's structure changed:
                        // its effect is in the re-copy the change started,
                        // whose chunks all come after this row.
                        if !recopying.contains(&row.table) && restarted.insert(row.table.clone()) {
                            changes.push(Change::RecopyStart {
                                table: table.clone(),
                                reason: format!(
                                    "change {} was captured with another column list",
                                    row.seq
                                ),
                            });
                        }
                        continue;
                    }
                    changes.push(decode_change(table, row, &side)?);
                }
                Ok((changes, last, rows.len(), max_ts))
            })
            .await?;
        // A re-copy requested in the stream runs from here on.
        for c in &changes {
            if let Change::Schema { table, .. } = c {
                self.structure_marked.remove(&table.name.name);
            }
            if let Change::RecopyStart { table, .. } = c {
                self.recopies.retain(|(t, _)| t.name != table.name);
                self.recopies.push_back((table.clone(), None));
            }
        }
        let stream = self.stream_mut()?;
        let group = stream.group.as_mut().expect("group checked above");
        group.cursor = last_seq;
        group.max_ts = group.max_ts.max(max_ts);
        let done = read < limit || last_seq >= hi;
        if !done {
            if changes.is_empty() {
                return Ok(None);
            }
            group.partial_sent = true;
            return Ok(Some(SourceEvent::Partial {
                position: Position::Sqlite(SqlitePosition { seq: hi }),
                changes,
            }));
        }
        let group = stream.group.take().expect("group checked above");
        stream.delivered = group.hi;
        stream.last_event = Instant::now();
        let position = Position::Sqlite(SqlitePosition { seq: group.hi });
        if changes.is_empty() && !group.partial_sent {
            // Only tables of other pipelines changed.
            return Ok(Some(SourceEvent::Heartbeat {
                position,
                time_micros: Some(now_micros()),
            }));
        }
        Ok(Some(SourceEvent::Commit(Transaction {
            position,
            commit_time_micros: group.max_ts,
            changes,
        })))
    }

    async fn poll(&mut self) -> Result<Poll> {
        let known = self.stream_mut()?.data_version;
        let path = self.cfg.path.clone();
        self.conn
            .run(move |c| {
                let err = |e| db_error(&path, "polling the change table", e);
                let data_version: i64 = c
                    .query_row("PRAGMA data_version", [], |r| r.get(0))
                    .map_err(err)?;
                // data_version only moves when another connection commits.
                if known == Some(data_version) {
                    return Ok(Poll {
                        data_version,
                        state: None,
                    });
                }
                let tx = c.transaction().map_err(err)?;
                let schema = schema_version(&tx, &path)?;
                let hi: i64 = tx
                    .query_row(
                        "SELECT COALESCE(max(seq), 0) FROM _ferry_changes",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(err)?;
                Ok(Poll {
                    data_version,
                    state: Some((schema, hi)),
                })
            })
            .await
    }

    /// Follows structure changes of captured tables (the schema version
    /// moved): a table whose columns changed gets its capture triggers
    /// reinstalled for the new columns and, in the same transaction, a
    /// structure marker in the change table, which the stream turns into
    /// `Schema` (the target is altered) and `RecopyStart` (rows captured
    /// before cannot tell the new columns' values) exactly there. A change
    /// of a table's unique indexes is followed when that provably lost
    /// nothing (see [`follow_unique_indexes`]). A table dropped, or whose
    /// triggers are gone with the same columns (recreated), stops the
    /// pipeline.
    async fn follow_structure(&mut self) -> Result<()> {
        let stream = self.stream_mut()?;
        let tables: Vec<TableRef> = stream.by_name.values().cloned().collect();
        // Read together with the previous schema version: every change up
        // to it was captured before the structure changed.
        let since = stream.seen;
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        let selection = self.cfg.selection.clone();
        let keep = self.cfg.keep_storage_classes;
        let changed = self
            .conn
            .run(move |c| {
                let mut changed = Vec::new();
                // Tables created since that the selection matches: captured
                // from here on, created on the target and copied online.
                for name in selected_tables(c, &path, &selection)? {
                    if tables.iter().any(|t| t.name.name == name) {
                        continue;
                    }
                    let table =
                        Arc::new(read_selected_table(c, &path, &name, &selection, keep)?);
                    let err = |e| db_error(&path, "installing capture triggers", e);
                    let tx = c
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(err)?;
                    capture::install(&tx, std::slice::from_ref(&table), &pipeline).map_err(err)?;
                    capture::mark(&tx, &name, capture::STRUCTURE_OP, &pipeline).map_err(err)?;
                    tx.commit().map_err(err)?;
                    tracing::info!(table = %name, "a new table matches the selection: it is copied online");
                    changed.push(table);
                }
                for table in tables {
                    let now = read_selected_table(c, &path, &table.name.name, &selection, keep);
                    if now
                        .as_ref()
                        .is_ok_and(|n| n.columns == table.columns && n.key == table.key)
                    {
                        // Same columns, but dropping and recreating a table
                        // drops its triggers too: capture would stop silently.
                        let state = capture::capture_state(c, &table)
                            .map_err(|e| db_error(&path, "reading triggers", e))?;
                        if state.row_triggers != 3 {
                            return Err(drift_error(&table.name.name).with(
                                "triggers",
                                format!(
                                    "{} of 3 capture triggers left (was the table recreated?)",
                                    state.row_triggers
                                ),
                            ));
                        }
                        if !state.displacement_current {
                            follow_unique_indexes(c, &path, &table, since)?;
                        }
                        continue;
                    }
                    let mut now = now.map_err(|e| {
                        drift_error(&table.name.name).with("now", e.message().to_owned())
                    })?;
                    now.version = table.version + 1;
                    let now = Arc::new(now);
                    let err = |e| db_error(&path, "reinstalling capture triggers", e);
                    let tx = c
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(err)?;
                    capture::install(&tx, std::slice::from_ref(&now), &pipeline).map_err(err)?;
                    capture::mark(&tx, &now.name.name, capture::STRUCTURE_OP, &pipeline)
                        .map_err(err)?;
                    tx.commit().map_err(err)?;
                    changed.push(now);
                }
                Ok(changed)
            })
            .await?;
        if changed.is_empty() {
            return Ok(());
        }
        let stream = self.stream_mut()?;
        let mut by_name = (*stream.by_name).clone();
        for t in changed {
            tracing::warn!(pipeline = %self.cfg.pipeline, table = %t.name,
                "source table structure changed: the target table is altered and re-copied online");
            self.structure_marked.insert(t.name.name.clone());
            by_name.insert(t.name.name.clone(), t);
        }
        let stream = self.stream_mut()?;
        stream.by_name = Arc::new(by_name);
        // The markers are this connection's own commit, which
        // `data_version` does not report: look again at the next poll.
        stream.data_version = None;
        Ok(())
    }

    async fn flush_acks(&mut self, seq: i64) -> Result<()> {
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        let pruned = self
            .conn
            .run(move |c| {
                let err = |e| db_error(&path, "recording the acknowledged position", e);
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(err)?;
                let pruned = capture::record_ack(&tx, &pipeline, seq, true).map_err(err)?;
                tx.commit().map_err(err)?;
                Ok(pruned)
            })
            .await?;
        tracing::debug!(pipeline = %self.cfg.pipeline, seq, pruned, "sqlite source ack recorded");
        Ok(())
    }
}

impl SqliteSource {
    /// Reads the next chunk of the oldest re-copy in one read transaction
    /// with the change table's end: the rows are exactly the table's state
    /// after the change at that seq (SQLite has one writer, and triggers
    /// write change rows in the writer's transaction).
    async fn read_recopy_chunk(&mut self) -> Result<(i64, Change)> {
        let (table, after) = self.recopies.front().cloned().expect("a re-copy runs");
        let limit = self.cfg.max_chunk_rows.max(1);
        let path = self.cfg.path.clone();
        let side = crate::reader::Side::source(&self.cfg.selection);
        let t = table.clone();
        let a = after.clone();
        let (at, rows) = self
            .conn
            .run(move |c| {
                let err = |e| db_error(&path, "reading a re-copy chunk", e);
                let tx = c.transaction().map_err(err)?;
                let at = capture::extent(&tx).map_err(err)?.allocated;
                let rows =
                    crate::reader::read_rows_in(&tx, &path, &t, a.as_deref(), limit, &side, None)?;
                tx.commit().map_err(err)?;
                Ok((at, rows))
            })
            .await?;
        let last = table.is_keyless() || rows.len() < limit;
        let upper = if last {
            self.recopies.pop_front();
            None
        } else {
            let k = rows.last().map(|r| table.key_of(r));
            self.recopies[0].1 = k.clone();
            k
        };
        let lower = if table.is_keyless() { None } else { after };
        Ok((
            at,
            Change::RecopyRows {
                table,
                range: ferry_core::KeyRange { lower, upper },
                rows,
            },
        ))
    }
}

fn schema_version(c: &Connection, path: &Path) -> Result<i64> {
    c.query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(|e| db_error(path, "reading the schema version", e))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[async_trait]
impl Source for SqliteSource {
    /// Reads only (see `check.rs`): never changes the source.
    async fn check(&mut self) -> Vec<CheckItem> {
        crate::check::source(&self.conn, &self.cfg).await
    }

    /// Reads the selected tables. Called again, it re-reads them.
    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        let loaded = self.load_tables().await?;
        self.tables = Some(loaded.clone());
        Ok(loaded.0)
    }

    /// Switches the source to WAL, creates `_ferry_changes` and
    /// `_ferry_consumers`, installs the triggers of the selected tables and
    /// registers this pipeline as a consumer — in one transaction, so a
    /// crash leaves either all of it or none. Idempotent; triggers whose
    /// column list no longer matches the table are recreated.
    async fn prepare(&mut self) -> Result<()> {
        let (tables, _) = self.known_tables().await?;
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        let count = tables.len();
        let installed = self
            .conn
            .run(move |c| {
                set_wal(c, &path)?;
                let err = |e| db_error(&path, "installing capture triggers", e);
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(err)?;
                let installed = capture::install(&tx, &tables, &pipeline).map_err(err)?;
                tx.commit().map_err(err)?;
                Ok(installed)
            })
            .await?;
        installed.warn(&self.cfg.pipeline);
        tracing::info!(pipeline = %self.cfg.pipeline, path = %self.cfg.path.display(), tables = count,
            "sqlite capture installed");
        Ok(())
    }

    /// Opens a snapshot on its own connection and thread (see
    /// `snapshot.rs`).
    async fn snapshot(
        &mut self,
        requests: Vec<SnapshotRequest>,
    ) -> Result<Box<dyn SnapshotReader>> {
        crate::snapshot::open(
            self.cfg.path.clone(),
            requests,
            self.cfg.max_chunk_rows,
            crate::reader::Side::source(&self.cfg.selection),
        )
        .await
    }

    /// Fails when the capture is not installed, a trigger is missing, or
    /// the changes right after `from` were pruned (or `from` is beyond
    /// anything this change table ever held: it was torn down and rebuilt).
    async fn start_stream(
        &mut self,
        from: Option<&Position>,
        boundaries: &[Position],
    ) -> Result<()> {
        let (tables, schema_version) = self.known_tables().await?;
        let from = from.map(|p| p.as_sqlite().map(|p| p.seq)).transpose()?;
        let mut boundaries = boundaries
            .iter()
            .map(|p| p.as_sqlite().map(|p| p.seq))
            .collect::<Result<Vec<i64>, _>>()?;
        boundaries.sort_unstable();
        boundaries.dedup();
        let path = self.cfg.path.clone();
        let check_tables = tables.clone();
        let delivered = self
            .conn
            .run(move |c| {
                let err = |e| db_error(&path, "opening the change stream", e);
                let installed = capture::table_exists(c, "_ferry_changes").map_err(err)?;
                if !installed {
                    return Err(Error::fatal(format!(
                        "capture is not installed in {}",
                        path.display()
                    ))
                    .with_fix("prepare() installs it; run the pipeline normally"));
                }
                for t in &check_tables {
                    if !capture::capture_state(c, t).map_err(err)?.complete() {
                        return Err(Error::fatal(format!(
                            "capture triggers of table {} are missing or outdated",
                            t.name
                        ))
                        .with_fix("run the pipeline again: prepare() reinstalls them; if writes happened meanwhile, reset the pipeline"));
                    }
                }
                let extent = capture::extent(c).map_err(err)?;
                let Some(from) = from else {
                    return Ok(extent.allocated);
                };
                if from > extent.allocated {
                    return Err(Error::fatal(format!(
                        "the checkpoint is at seq {from} but the change table of {} only ever reached seq {}; \
                         the capture was removed and reinstalled since",
                        path.display(),
                        extent.allocated
                    ))
                    .with_fix("reset the pipeline (`ferry reset`) to re-copy"));
                }
                let next_missing = extent.min.is_none_or(|m| m > from + 1);
                if extent.allocated > from && next_missing {
                    return Err(Error::fatal(format!(
                        "the changes after seq {from} were pruned from the change table of {} \
                         (oldest kept: {}); they can no longer be replicated",
                        path.display(),
                        extent.min.map_or("none".into(), |m| m.to_string())
                    ))
                    .with_fix("another consumer acknowledged them; reset the pipeline (`ferry reset`) to re-copy"));
                }
                Ok(from)
            })
            .await?;
        tracing::info!(pipeline = %self.cfg.pipeline, seq = delivered, "sqlite stream started");
        self.stream = Some(Stream {
            by_name: Arc::new(
                tables
                    .iter()
                    .map(|t| (t.name.name.clone(), t.clone()))
                    .collect(),
            ),
            delivered,
            seen: delivered,
            boundaries,
            data_version: None,
            schema_version,
            group: None,
            last_event: Instant::now(),
        });
        Ok(())
    }

    /// Polls every `poll_interval`; sends a heartbeat after a second of
    /// silence. Cancel-safe in the sense the contract asks: a cancelled
    /// call leaves at worst a group to be re-read, never a half-sent one
    /// reported as sent.
    async fn next(&mut self) -> Result<SourceEvent> {
        loop {
            if self.stream_mut()?.group.is_some() {
                match self.next_chunk().await? {
                    Some(event) => return Ok(event),
                    None => continue,
                }
            }
            let delivered = self.stream_mut()?.delivered;
            // Groups end at the chunk's seq (a boundary), so the stream
            // reaches it exactly.
            if let Some((at, _)) = &self.pending_recopy
                && *at == delivered
            {
                let (at, change) = self.pending_recopy.take().expect("checked above");
                let stream = self.stream_mut()?;
                stream.last_event = Instant::now();
                return Ok(SourceEvent::Commit(Transaction {
                    position: Position::Sqlite(SqlitePosition { seq: at }),
                    commit_time_micros: Some(now_micros()),
                    changes: vec![change],
                }));
            }
            let caught_up = {
                let stream = self.stream_mut()?;
                stream.seen == stream.delivered
            };
            if self.pending_recopy.is_none() && !self.recopies.is_empty() && caught_up {
                let (at, change) = self.read_recopy_chunk().await?;
                let stream = self.stream_mut()?;
                if at > stream.seen {
                    // Deliver the changes up to the chunk's position first,
                    // ending a group exactly there.
                    stream.seen = at;
                    if let Err(i) = stream.boundaries.binary_search(&at) {
                        stream.boundaries.insert(i, at);
                    }
                }
                self.pending_recopy = Some((at, change));
                continue;
            }
            let stream = self.stream_mut()?;
            if stream.seen > stream.delivered {
                let (delivered, seen) = (stream.delivered, stream.seen);
                let hi = stream
                    .boundaries
                    .iter()
                    .copied()
                    .find(|&b| b > delivered && b < seen)
                    .unwrap_or(seen);
                stream.group = Some(Group {
                    hi,
                    cursor: delivered,
                    max_ts: None,
                    partial_sent: false,
                });
                continue;
            }
            let poll = self.poll().await?;
            self.stream_mut()?.data_version = Some(poll.data_version);
            if let Some((schema, hi)) = poll.state {
                if schema != self.stream_mut()?.schema_version {
                    self.follow_structure().await?;
                    self.stream_mut()?.schema_version = schema;
                }
                let stream = self.stream_mut()?;
                if hi > stream.seen {
                    stream.seen = hi;
                    continue;
                }
            }
            let stream = self.stream_mut()?;
            if stream.last_event.elapsed() >= HEARTBEAT_EVERY {
                stream.last_event = Instant::now();
                return Ok(SourceEvent::Heartbeat {
                    position: Position::Sqlite(SqlitePosition {
                        seq: stream.delivered,
                    }),
                    time_micros: Some(now_micros()),
                });
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    /// Records the position in `_ferry_consumers` and prunes what every
    /// consumer acknowledged, at most once a second (the first ack at once).
    /// A lock held by another writer only postpones this to a later ack.
    async fn ack(&mut self, position: &Position) -> Result<()> {
        let seq = position.as_sqlite()?.seq;
        self.acks.pending = Some(self.acks.pending.map_or(seq, |p| p.max(seq)));
        if self
            .acks
            .last_flush
            .is_some_and(|t| t.elapsed() < ACK_FLUSH_EVERY)
        {
            return Ok(());
        }
        self.acks.last_flush = Some(Instant::now());
        match self.flush_acks(seq).await {
            Ok(()) => Ok(()),
            Err(e) if e.class() == ErrorClass::Transient => {
                tracing::warn!(pipeline = %self.cfg.pipeline, error = %e, "could not record the ack yet; will retry");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// A gap when the capture was removed and installed again, this
    /// pipeline's consumer was registered after the checkpoint, or the
    /// change rows after it were pruned.
    async fn continuity(&mut self, from: &Position) -> Result<Continuity> {
        let from = from.as_sqlite()?.seq;
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        self.conn
            .run(move |c| {
                let err = |e| db_error(&path, "reading the change table", e);
                if !capture::table_exists(c, "_ferry_changes").map_err(err)? {
                    return Ok(Continuity::Exact);
                }
                let extent = capture::extent(c).map_err(err)?;
                let acked = capture::acked(c, &pipeline).map_err(err)?.unwrap_or(0);
                let gap = |reason: String, resume: i64| Continuity::Gap {
                    reason,
                    resume: Position::Sqlite(SqlitePosition { seq: resume }),
                };
                if from > extent.allocated {
                    return Ok(gap(
                        format!(
                            "the change table of {} only ever reached seq {}: the capture was \
                             removed and installed again",
                            path.display(),
                            extent.allocated
                        ),
                        extent.allocated,
                    ));
                }
                if acked > from {
                    return Ok(gap(
                        format!(
                            "this pipeline's capture in {} starts at seq {acked} (it was removed, \
                             e.g. by `ferry teardown`, and installed again)",
                            path.display()
                        ),
                        acked,
                    ));
                }
                if extent.allocated > from && extent.min.is_none_or(|m| m > from + 1) {
                    let resume = extent.min.map_or(extent.allocated, |m| m - 1);
                    return Ok(gap(
                        format!(
                            "the changes after seq {from} were pruned from the change table of {} \
                             (another consumer acknowledged them)",
                            path.display()
                        ),
                        resume,
                    ));
                }
                Ok(Continuity::Exact)
            })
            .await
    }

    async fn recopy(&mut self, table: &TableRef, after: Option<Vec<Value>>) -> Result<()> {
        self.recopies.retain(|(t, _)| t.name != table.name);
        self.recopies.push_back((table.clone(), after));
        Ok(())
    }

    /// A change row naming the table and this pipeline.
    async fn request_recopy(&mut self, table: &TableName) -> Result<()> {
        let (tables, _) = self.known_tables().await?;
        if !tables.iter().any(|t| t.name == *table) {
            return Err(Error::fatal(format!(
                "table {table} is not replicated by pipeline {:?}",
                self.cfg.pipeline
            ))
            .with_fix("name a table the pipeline selects (`ferry status` lists them)"));
        }
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        let name = table.name.clone();
        self.conn
            .run(move |c| {
                let err = |e| db_error(&path, "writing the re-copy request", e);
                if !capture::table_exists(c, "_ferry_changes").map_err(err)? {
                    return Err(Error::fatal(format!(
                        "capture is not installed in {}",
                        path.display()
                    ))
                    .with_fix("run the pipeline first (`ferry run`)"));
                }
                capture::mark(c, &name, capture::RECOPY_OP, &pipeline).map_err(err)
            })
            .await
    }

    /// Device and inode of the database file (see `fence.rs`).
    async fn identity(&mut self) -> Result<Option<String>> {
        crate::fence::identity(&self.cfg.path).map(Some)
    }

    /// The newest sequence number in the change table (shared by every
    /// pipeline capturing from this file); `None` before capture is installed.
    async fn current_position(&mut self) -> Result<Option<Position>> {
        let path = self.cfg.path.clone();
        self.conn
            .run(move |c| {
                let err = |e| db_error(&path, "reading the change table's newest position", e);
                if !capture::table_exists(c, "_ferry_changes").map_err(err)? {
                    return Ok(None);
                }
                let seq: i64 = c
                    .query_row(
                        "SELECT COALESCE(max(seq), 0) FROM _ferry_changes",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(err)?;
                Ok(Some(Position::Sqlite(SqlitePosition { seq })))
            })
            .await
    }

    /// Unregisters this pipeline. When no other consumer remains, drops all
    /// ferry triggers and tables; otherwise leaves them (another pipeline
    /// may capture the same tables) and says so.
    async fn teardown(&mut self) -> Result<()> {
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        let done = self
            .conn
            .run(move |c| {
                let err = |e| db_error(&path, "removing capture", e);
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(err)?;
                let done = capture::uninstall(&tx, &pipeline).map_err(err)?;
                tx.commit().map_err(err)?;
                Ok(done)
            })
            .await?;
        if done.remaining.is_empty() {
            tracing::info!(pipeline = %self.cfg.pipeline, triggers = done.dropped_triggers,
                "sqlite capture removed");
        } else {
            tracing::warn!(pipeline = %self.cfg.pipeline, others = ?done.remaining,
                "other pipelines still consume this database; capture triggers and tables were left in place");
        }
        Ok(())
    }
}

#[async_trait]
impl TableReader for SqliteSource {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        crate::reader::count_rows(&self.conn, table).await
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        crate::reader::read_rows(
            &self.conn,
            table,
            after,
            limit,
            &crate::reader::Side::source(&self.cfg.selection),
            self.condition.as_deref(),
        )
        .await
    }

    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        crate::reader::scan_rows(
            &self.conn,
            table,
            on_rows,
            &crate::reader::Side::source(&self.cfg.selection),
            self.condition.as_deref(),
        )
        .await
    }

    fn row_digests(&self) -> Vec<&'static str> {
        crate::reader::ROW_DIGESTS.to_vec()
    }

    fn restrict(&mut self, condition: &str) -> Result<()> {
        self.condition = Some(condition.to_owned());
        Ok(())
    }

    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        crate::reader::key_after(&self.conn, table, after, rows, self.condition.as_deref()).await
    }

    async fn digest_range(
        &self,
        table: &TableRef,
        range: &ferry_core::KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<ferry_core::RangeDigest>> {
        crate::reader::digest_range(
            &self.conn,
            table,
            range,
            limit,
            digest,
            &crate::reader::Side::source(&self.cfg.selection),
            self.condition.as_deref(),
        )
        .await
    }
}
