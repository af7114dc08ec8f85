//! Change capture: turns the pgoutput stream into ferry transactions.
//!
//! * Relation messages become [`TableSchema`]s; a relation whose columns
//!   changed yields a `Change::Schema` before the changes that use it.
//! * Unchanged TOAST columns and the non-key columns of key-only old
//!   tuples become [`Value::Unchanged`].
//! * A transaction larger than [`PARTIAL_CHANGES`] changes or
//!   [`PARTIAL_BYTES`] bytes is handed over in `Partial` pieces.
//! * The slot is confirmed only up to what the pipeline acked, which never
//!   passes the target's checkpoint. While the source is idle or busy with
//!   other tables, keepalives become heartbeats, which the pipeline
//!   records on the target and acks, so WAL does not pile up behind ferry.
//! * Every `heartbeat` of silence, a transactional logical message is
//!   emitted on the source: it comes back as a transaction without
//!   changes, i.e. a `Heartbeat`, which bounds waits of consistent readers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::{
    Alteration, Change, Column, Error, Lsn, PgPosition, Position, Result, Selection, SourceEvent,
    TableName, TableRef, TableSchema, Transaction, Value,
};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::bad_value::decode_row;
use crate::binary;
use crate::catalog::{self, PgTable};
use crate::ddl;
use crate::error::pg_error;
use crate::pgoutput::{self, Datum, OldTuple, PgOutput, Relation};
use crate::position::{already_delivered, point, txn_position, unix_micros};
use crate::replication::{ReplicationConn, ReplicationMessage};
use crate::types::{Kind, TypeCache, column_type};

/// Changes of one transaction held before a `Partial` is handed over.
pub(crate) const PARTIAL_CHANGES: usize = 10_000;
/// Bytes of one transaction held before a `Partial` is handed over.
pub(crate) const PARTIAL_BYTES: usize = 16 * 1024 * 1024;
/// Standby status is sent at least this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// What the stream needs from the source around it.
pub(crate) struct Context<'a> {
    pub client: &'a Client,
    pub types: &'a mut TypeCache,
    /// Tables as `tables()` described them.
    pub known: &'a HashMap<TableName, TableRef>,
    /// Their catalog entries then.
    pub described: &'a HashMap<TableName, (TableRef, PgTable)>,
    /// Columns nothing reads: a value there that cannot be read is no error.
    pub selection: &'a Selection,
}

struct Rel {
    table: TableRef,
    kinds: Vec<Kind>,
    type_oids: Vec<u32>,
    /// The table's catalog entry when this structure was recorded (what a
    /// later structure change is compared with; see `ddl.rs`).
    pg: Option<PgTable>,
}

struct OpenTxn {
    commit_lsn: Lsn,
    skip: bool,
    /// Applied by ferry from another site (its origin is a ferry origin)
    /// and skipped: only local writes are forwarded (ADR 0014).
    foreign: bool,
    changes: Vec<Change>,
    bytes: usize,
    partial_sent: bool,
    /// ferry's own logical messages in this transaction.
    markers: Vec<Marker>,
}

/// A logical message ferry wrote on the source, met in the stream.
enum Marker {
    /// The end of an online re-copy chunk read (its id).
    Chunk(String),
    /// `ferry resync`: re-copy this table (display name).
    Recopy(String),
    /// A new table (display name) is published from here on.
    NewTable(String),
}

/// An online re-copy chunk read on the source, waiting for its marker's
/// transaction in the stream: there it is exact (see `PostgresSource`).
pub(crate) struct PendingChunk {
    pub id: String,
    /// The table's structure as the chunk was read (the stream's own may
    /// lag: pgoutput describes a relation only before its next change).
    pub relation: Relation,
    pub range: ferry_core::KeyRange,
    pub rows: Vec<Vec<Value>>,
}

pub(crate) struct Stream {
    conn: ReplicationConn,
    from: Option<PgPosition>,
    relations: HashMap<u32, Rel>,
    txn: Option<OpenTxn>,
    ready: VecDeque<SourceEvent>,
    /// What the server was last told is flushed.
    confirmed: Lsn,
    /// End of the last transaction handed to the pipeline.
    delivered: Lsn,
    /// Highest position handed to the pipeline (commit or heartbeat).
    emitted: Option<Position>,
    last_status: Instant,
    last_activity: Instant,
    heartbeat: Duration,
    prefix: String,
    /// `confirmed`, shared with the keepalive task.
    shared_confirmed: Arc<AtomicU64>,
    keepalive: JoinHandle<()>,
    /// The re-copy chunk whose marker the stream waits for.
    pub(crate) pending_chunk: Option<PendingChunk>,
    /// Tables whose re-copy a `ferry resync` marker started, for the
    /// source to run.
    pub(crate) started: Vec<TableRef>,
    /// Skip transactions ferry applied from another site (active-active).
    pub(crate) skip_ferry_origins: bool,
    /// Transactions skipped for their ferry origin since the stream began.
    pub(crate) skipped_foreign: u64,
}

/// Prefix of the logical message ending a re-copy chunk read.
pub(crate) fn chunk_prefix(slot: &str) -> String {
    format!("{slot}.chunk")
}

/// Prefix of the logical message `ferry resync` writes.
pub(crate) fn recopy_prefix(slot: &str) -> String {
    format!("{slot}.recopy")
}

/// Prefix of the logical message marking where a new table joined the
/// publication.
pub(crate) fn new_table_prefix(slot: &str) -> String {
    format!("{slot}.newtable")
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl Stream {
    /// `status_every`: how often a status update goes out even while
    /// nobody reads the stream (well within the server's
    /// `wal_sender_timeout`).
    pub fn new(
        conn: ReplicationConn,
        from: Option<PgPosition>,
        heartbeat: Duration,
        status_every: Duration,
        prefix: String,
    ) -> Self {
        let start = from.map(|p| p.lsn).unwrap_or_default();
        let shared_confirmed = Arc::new(AtomicU64::new(start.0));
        let keepalive = conn.keepalive(shared_confirmed.clone(), status_every);
        Stream {
            shared_confirmed,
            keepalive,
            conn,
            from,
            relations: HashMap::new(),
            txn: None,
            ready: VecDeque::new(),
            confirmed: start,
            delivered: start,
            emitted: from.map(Position::Postgres),
            last_status: Instant::now(),
            last_activity: Instant::now(),
            heartbeat,
            prefix,
            pending_chunk: None,
            started: Vec::new(),
            skip_ferry_origins: false,
            skipped_foreign: 0,
        }
    }

    pub async fn next(&mut self, ctx: &mut Context<'_>) -> Result<SourceEvent> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(ev);
            }
            // Buffered messages need no timer (one per message would cost
            // more than decoding it).
            let msg = if self.conn.has_buffered_message() {
                self.conn.recv().await
            } else {
                let tick = tokio::time::sleep(Duration::from_millis(500));
                tokio::select! {
                    m = self.conn.recv() => m,
                    _ = tick => {
                        self.on_tick(ctx).await?;
                        continue;
                    }
                }
            };
            let msg = msg.map_err(|e| e.into_error("reading the replication stream"))?;
            if self.last_status.elapsed() >= STATUS_INTERVAL {
                self.send_status().await?;
            }
            self.last_activity = Instant::now();
            match msg {
                ReplicationMessage::XLogData { data } => {
                    let m = pgoutput::decode(data)?;
                    self.on_message(m, ctx).await?;
                }
                ReplicationMessage::Keepalive { wal_end, reply } => {
                    self.on_keepalive(wal_end, reply).await?;
                }
            }
        }
    }

    /// Everything up to `position` is durable on the target.
    pub async fn ack(&mut self, position: &PgPosition) -> Result<()> {
        if position.lsn > self.confirmed {
            self.confirmed = position.lsn;
            self.send_status().await?;
        }
        Ok(())
    }

    async fn send_status(&mut self) -> Result<()> {
        self.last_status = Instant::now();
        self.shared_confirmed
            .store(self.confirmed.0, Ordering::Release);
        self.conn.send_status(self.confirmed).await
    }

    async fn on_tick(&mut self, ctx: &mut Context<'_>) -> Result<()> {
        if self.last_status.elapsed() >= STATUS_INTERVAL {
            self.send_status().await?;
        }
        if self.txn.is_none() && self.last_activity.elapsed() >= self.heartbeat {
            self.last_activity = Instant::now();
            ctx.client
                .execute(
                    "SELECT pg_logical_emit_message(true, $1, '')",
                    &[&self.prefix],
                )
                .await
                .map_err(|e| pg_error(e, "emitting a heartbeat message on the source"))?;
        }
        Ok(())
    }

    async fn on_keepalive(&mut self, wal_end: Lsn, reply: bool) -> Result<()> {
        if self.txn.is_none() {
            // The slot is confirmed only up to what the target's checkpoint
            // holds (through acks), never to a keepalive's position: a slot
            // ahead of the checkpoint is how a lost stretch of the log is
            // recognised (`Source::continuity`). The heartbeat below lets
            // the pipeline record this position and ack it.
            //
            // A keepalive that asks for a reply is one even at a position
            // already sent on: a stopping server (`pg_ctl stop -m fast`)
            // asks again and again until the slot is confirmed up to what
            // it sent, and only an event hands the pipeline's pending ack
            // back to `ack` (the stream is otherwise idle then).
            let pos = point(wal_end);
            if reply || self.emitted.as_ref().is_none_or(|e| &pos > e) {
                self.emitted = Some(pos.clone());
                self.ready.push_back(SourceEvent::Heartbeat {
                    position: pos,
                    time_micros: None,
                });
            }
        }
        if reply {
            self.send_status().await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, m: PgOutput, ctx: &mut Context<'_>) -> Result<()> {
        match m {
            PgOutput::Begin { final_lsn } => {
                let skip = self
                    .from
                    .as_ref()
                    .is_some_and(|f| already_delivered(final_lsn, f));
                self.txn = Some(OpenTxn {
                    commit_lsn: final_lsn,
                    skip,
                    foreign: false,
                    changes: Vec::new(),
                    bytes: 0,
                    partial_sent: false,
                    markers: Vec::new(),
                });
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                let mut txn = self
                    .txn
                    .take()
                    .ok_or_else(|| Error::fatal("pgoutput Commit without Begin"))?;
                if txn.skip && !txn.foreign {
                    return Ok(());
                }
                if txn.foreign {
                    // Not forwarded; its end still moves the position on.
                    self.skipped_foreign += 1;
                    let position = txn_position(commit_lsn, end_lsn);
                    self.delivered = end_lsn;
                    self.emitted = Some(position.clone());
                    self.ready.push_back(SourceEvent::Heartbeat {
                        position,
                        time_micros: Some(unix_micros(commit_time)),
                    });
                    return Ok(());
                }
                for marker in std::mem::take(&mut txn.markers) {
                    let changes = self.on_marker(marker, ctx).await?;
                    txn.changes.extend(changes);
                }
                debug_assert_eq!(txn.commit_lsn, commit_lsn);
                let position = txn_position(commit_lsn, end_lsn);
                self.delivered = end_lsn;
                self.emitted = Some(position.clone());
                let time = Some(unix_micros(commit_time));
                self.ready
                    .push_back(if txn.changes.is_empty() && !txn.partial_sent {
                        SourceEvent::Heartbeat {
                            position,
                            time_micros: time,
                        }
                    } else {
                        SourceEvent::Commit(Transaction {
                            position,
                            commit_time_micros: time,
                            changes: txn.changes,
                        })
                    });
            }
            PgOutput::Relation(r) => {
                for change in self.on_relation(r, ctx).await? {
                    self.push(change);
                }
            }
            PgOutput::Insert { rel, mut new } => {
                let r = self.rel(rel)?;
                textify(ctx.client, r, &mut new, ctx.selection).await?;
                let row = values(r, new, false, ctx.selection)?;
                let table = r.table.clone();
                self.push(Change::Insert { table, row });
            }
            PgOutput::Update {
                rel,
                mut old,
                mut new,
            } => {
                let r = self.rel(rel)?;
                if let Some(o) = old.as_mut() {
                    textify(ctx.client, r, &mut o.datums, ctx.selection).await?;
                }
                textify(ctx.client, r, &mut new, ctx.selection).await?;
                let before = old.map(|o| old_values(r, o, ctx.selection)).transpose()?;
                let after = values(r, new, false, ctx.selection)?;
                let table = r.table.clone();
                self.push(Change::Update {
                    table,
                    before,
                    after,
                });
            }
            PgOutput::Delete { rel, mut old } => {
                let r = self.rel(rel)?;
                textify(ctx.client, r, &mut old.datums, ctx.selection).await?;
                let before = old_values(r, old, ctx.selection)?;
                let table = r.table.clone();
                self.push(Change::Delete { table, before });
            }
            PgOutput::Truncate { rels } => {
                let tables = rels
                    .iter()
                    .map(|oid| self.rel(*oid).map(|r| r.table.clone()))
                    .collect::<Result<Vec<_>>>()?;
                self.push(Change::Truncate { tables });
            }
            PgOutput::Message { prefix, content } => {
                let text = || String::from_utf8_lossy(&content).into_owned();
                let marker = if prefix == chunk_prefix(&self.prefix) {
                    Some(Marker::Chunk(text()))
                } else if prefix == recopy_prefix(&self.prefix) {
                    Some(Marker::Recopy(text()))
                } else if prefix == new_table_prefix(&self.prefix) {
                    Some(Marker::NewTable(text()))
                } else {
                    None
                };
                if let (Some(m), Some(txn)) = (marker, self.txn.as_mut()) {
                    txn.markers.push(m);
                }
            }
            PgOutput::Origin { name } => {
                if self.skip_ferry_origins
                    && ferry_core::conflict::is_ferry_origin(&name)
                    && let Some(txn) = self.txn.as_mut()
                    && !txn.skip
                {
                    txn.skip = true;
                    txn.foreign = true;
                }
            }
            PgOutput::Other => {}
        }
        Ok(())
    }

    /// The changes a marker stands for in its transaction.
    async fn on_marker(&mut self, marker: Marker, ctx: &mut Context<'_>) -> Result<Vec<Change>> {
        match marker {
            Marker::Chunk(id) => {
                // A marker without its rows was written by an earlier run.
                if self.pending_chunk.as_ref().is_none_or(|p| p.id != id) {
                    return Ok(Vec::new());
                }
                let chunk = self.pending_chunk.take().expect("checked above");
                let oid = chunk.relation.oid;
                // The table's structure here is the one the rows were read
                // in (the read blocked structure changes): describe it, so
                // a change pgoutput has not sent yet comes first.
                let mut out: Vec<Change> = self
                    .on_relation(chunk.relation, ctx)
                    .await?
                    .into_iter()
                    .collect();
                let table = self.rel(oid)?.table.clone();
                if let Some(bad) = chunk.rows.iter().find(|r| r.len() != table.columns.len()) {
                    return Err(Error::fatal(format!(
                        "a re-copy chunk of {} has {} values per row for {} columns; this is a ferry bug",
                        table.name,
                        bad.len(),
                        table.columns.len()
                    )));
                }
                out.push(Change::RecopyRows {
                    table,
                    range: chunk.range,
                    rows: chunk.rows,
                });
                Ok(out)
            }
            Marker::NewTable(name) => {
                let found = ctx
                    .described
                    .values()
                    .find(|(t, _)| t.name.to_string() == name);
                let Some((table, _)) = found else {
                    // Written by an earlier run; the restart copies the
                    // table as a new one.
                    return Ok(Vec::new());
                };
                let table = table.clone();
                self.started.push(table.clone());
                Ok(vec![
                    Change::Schema {
                        table: table.clone(),
                        alter: Alteration::default(),
                    },
                    Change::RecopyStart {
                        table,
                        reason: "a new table matched the selection".into(),
                    },
                ])
            }
            Marker::Recopy(name) => {
                let table = self
                    .relations
                    .values()
                    .map(|r| &r.table)
                    .find(|t| t.name.to_string() == name)
                    .or_else(|| ctx.known.values().find(|t| t.name.to_string() == name))
                    .cloned();
                let Some(table) = table else {
                    tracing::warn!(table = %name, "ferry resync names a table this pipeline does not replicate; ignored");
                    return Ok(Vec::new());
                };
                self.started.push(table.clone());
                Ok(vec![Change::RecopyStart {
                    table,
                    reason: "ferry resync".into(),
                }])
            }
        }
    }

    fn rel(&self, oid: u32) -> Result<&Rel> {
        self.relations.get(&oid).ok_or_else(|| {
            Error::fatal(format!(
                "pgoutput sent a change of relation {oid} before describing it"
            ))
        })
    }

    fn push(&mut self, change: Change) {
        let Some(txn) = self.txn.as_mut() else { return };
        if txn.skip {
            return;
        }
        txn.bytes += change.approx_size();
        txn.changes.push(change);
        if txn.changes.len() >= PARTIAL_CHANGES || txn.bytes >= PARTIAL_BYTES {
            txn.partial_sent = true;
            txn.bytes = 0;
            let changes = std::mem::take(&mut txn.changes);
            // The closing commit's end LSN is not known yet; one past the
            // commit's start orders exactly like it against every snapshot
            // and transaction position (see crate::position).
            let position = txn_position(txn.commit_lsn, Lsn(txn.commit_lsn.0 + 1));
            self.ready
                .push_back(SourceEvent::Partial { position, changes });
        }
    }

    /// Records a relation; returns the changes its structure change means
    /// for the target, when it differs from what ferry knew (see `ddl.rs`):
    /// a `Schema` change, and a `RecopyStart` when the rows cannot be
    /// followed otherwise (the source then re-copies the table).
    async fn on_relation(&mut self, r: Relation, ctx: &mut Context<'_>) -> Result<Vec<Change>> {
        let name = TableName::new(Some(&r.namespace), &r.name);
        let mut kinds = Vec::with_capacity(r.columns.len());
        let mut types = Vec::with_capacity(r.columns.len());
        for c in &r.columns {
            let kind = ctx
                .types
                .kind(ctx.client, c.type_oid)
                .await?
                .ok_or_else(|| {
                    Error::transient(format!(
                        "column {name}.{} has a type (oid {}) the source no longer knows",
                        c.name, c.type_oid
                    ))
                    .with("table", name.to_string())
                    .with("column", c.name.clone())
                })?;
            // A type carried as text is named by the server (its name is
            // part of the column type, so a change of it is a change).
            let type_name = if kind == Kind::Other {
                type_name(ctx.client, c.type_oid, c.typmod).await?
            } else {
                String::new()
            };
            types.push(column_type(&kind, c.type_oid, c.typmod, &type_name));
            kinds.push(kind);
        }
        let type_oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        let (prev, prev_pg) = match self.relations.get(&r.oid) {
            Some(x) => (Some(x.table.clone()), x.pg.clone()),
            None => match ctx.described.get(&name) {
                Some((t, pg)) => (Some(t.clone()), Some(pg.clone())),
                None => (ctx.known.get(&name).cloned(), None),
            },
        };
        let unchanged = prev.as_ref().is_some_and(|p| {
            p.columns.len() == r.columns.len()
                && p.columns
                    .iter()
                    .zip(&r.columns)
                    .zip(&types)
                    .all(|((pc, rc), t)| pc.name == rc.name && &pc.ty == t)
        });
        if let (true, Some(p)) = (unchanged, &prev) {
            self.relations.insert(
                r.oid,
                Rel {
                    table: p.clone(),
                    kinds,
                    type_oids,
                    pg: prev_pg,
                },
            );
            return Ok(Vec::new());
        }
        let now = catalog::describe(ctx.client, ctx.types, &r.namespace, &r.name).await?;
        let new_cols: Vec<(String, ferry_core::ColumnType)> = r
            .columns
            .iter()
            .zip(&types)
            .map(|(c, t)| (c.name.clone(), t.clone()))
            .collect();
        let plan = match &prev {
            Some(p) => ddl::plan(p, prev_pg.as_ref(), &new_cols, now.as_ref()),
            None => ddl::Plan::default(),
        };
        let old_name = |n: &str| -> String {
            plan.renamed
                .iter()
                .find(|(_, new)| new == n)
                .map_or_else(|| n.to_owned(), |(old, _)| old.clone())
        };
        let mut columns = Vec::with_capacity(r.columns.len());
        for (c, ty) in r.columns.iter().zip(types) {
            let old = prev
                .as_ref()
                .and_then(|p| p.columns.iter().find(|pc| pc.name == old_name(&c.name)));
            let source_type = type_name(ctx.client, c.type_oid, c.typmod).await?;
            columns.push(Column {
                name: c.name.clone(),
                ty,
                nullable: old.is_none_or(|o| o.nullable),
                source_type,
                user_type: ctx.types.user_type(ctx.client, c.type_oid).await?,
            });
        }
        let by_name = |n: &str| columns.iter().position(|c| c.name == n);
        let prev_key: Option<Vec<usize>> = prev.as_ref().and_then(|p| {
            p.key_names()
                .iter()
                .map(|n| {
                    let renamed = plan
                        .renamed
                        .iter()
                        .find(|(old, _)| old == n)
                        .map_or(*n, |(_, new)| new.as_str());
                    by_name(renamed)
                })
                .collect()
        });
        let key = prev_key
            .unwrap_or_else(|| (0..r.columns.len()).filter(|&i| r.columns[i].key).collect());
        // A table ferry copies without a key stays keyless (its old rows
        // carry every column: REPLICA IDENTITY FULL).
        if key.is_empty() && prev.as_ref().is_none_or(|p| !p.is_keyless()) {
            return Err(
                Error::fatal(format!("table {name} has no key in the replication stream"))
                    .with("table", name.to_string())
                    .with_fix("add a primary key or a replica identity index to the table"),
            );
        }
        let version = prev.as_ref().map_or(1, |p| p.version + 1);
        let table = Arc::new(TableSchema {
            name,
            columns,
            key,
            version,
            // What the catalogue says now, else what ferry knew.
            key_deferrable: match now.as_ref() {
                Some(pg) => pg.replication_key().is_some_and(|k| k.deferrable),
                None => prev.as_ref().is_some_and(|p| p.key_deferrable),
            },
        });
        let mut filled = Vec::with_capacity(plan.filled.len());
        for (col, text) in &plan.filled {
            if let Some(i) = table.column_index(col) {
                filled.push((col.clone(), binary::decode_text(&kinds[i], text)?));
            }
        }
        tracing::info!(table = %table.name, version, renamed = ?plan.renamed,
            filled = ?plan.filled, recopy = ?plan.recopy, "source table structure changed");
        self.relations.insert(
            r.oid,
            Rel {
                table: table.clone(),
                kinds,
                type_oids,
                pg: now,
            },
        );
        if prev.is_none() {
            return Ok(Vec::new());
        }
        let mut out = vec![Change::Schema {
            table: table.clone(),
            alter: Alteration {
                renamed: plan.renamed,
                filled,
            },
        }];
        if let Some(why) = plan.recopy {
            self.started.push(table.clone());
            out.push(Change::RecopyStart {
                table,
                reason: format!("structure change: {why}"),
            });
        }
        Ok(out)
    }
}

/// `format_type(oid, typmod)`: the server's name of a column type.
async fn type_name(client: &Client, oid: u32, typmod: i32) -> Result<String> {
    Ok(client
        .query_one("SELECT format_type($1, $2)", &[&oid, &typmod])
        .await
        .map_err(|e| pg_error(e, "naming a column type"))?
        .get(0))
}

/// A binary value of a type with no ferry codec, as it arrives in the
/// stream (pgoutput sends the binary form of every type that has one).
#[derive(Debug)]
struct RawValue<'a>(&'a [u8]);

impl tokio_postgres::types::ToSql for RawValue<'_> {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        out.extend_from_slice(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Turns the binary values of [`Kind::Other`] columns in `datums` into
/// their text forms, by the source's own functions: one round trip that
/// hands each value back to the server in binary (its receive function)
/// and reads `$n::text` (its output function). Values of the same type
/// read back the same on any server, which the binary form (OIDs inside
/// composites and arrays, extension versions) does not promise.
/// A column nothing reads (`selection`) is not sent to the server: its
/// value becomes NULL.
async fn textify(
    client: &Client,
    r: &Rel,
    datums: &mut [Datum],
    selection: &Selection,
) -> Result<()> {
    let mut at = Vec::new();
    for (i, datum) in datums.iter_mut().enumerate() {
        if r.kinds.get(i) != Some(&Kind::Other) || !matches!(datum, Datum::Binary(_)) {
            continue;
        }
        let unread =
            (r.table.columns.get(i)).is_some_and(|c| selection.unread(&r.table.name, &c.name));
        if unread {
            *datum = Datum::Null;
        } else {
            at.push(i);
        }
    }
    if at.is_empty() {
        return Ok(());
    }
    let raws: Vec<RawValue> = at
        .iter()
        .map(|&i| match &datums[i] {
            Datum::Binary(b) => RawValue(b),
            _ => RawValue(&[]),
        })
        .collect();
    let params: Vec<(
        &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type,
    )> = raws
        .iter()
        .zip(&at)
        .map(|(raw, &i)| {
            let oid = r.type_oids[i];
            let ty = tokio_postgres::types::Type::from_oid(oid).unwrap_or_else(|| {
                tokio_postgres::types::Type::new(
                    format!("oid {oid}"),
                    oid,
                    tokio_postgres::types::Kind::Simple,
                    "pg_catalog".into(),
                )
            });
            (raw as &(dyn tokio_postgres::types::ToSql + Sync), ty)
        })
        .collect();
    let list: Vec<String> = (1..=at.len()).map(|n| format!("${n}::text")).collect();
    let sql = format!("SELECT {}", list.join(", "));
    let rows = client.query_typed(&sql, &params).await.map_err(|e| {
        pg_error(e, "reading values of a type ferry carries as text")
            .with("table", r.table.name.to_string())
    })?;
    let row = rows
        .first()
        .ok_or_else(|| Error::fatal("SELECT of values returned no row"))?;
    for (n, &i) in at.iter().enumerate() {
        let text: Option<String> = row.get(n);
        datums[i] = match text {
            Some(t) => Datum::Text(bytes::Bytes::from(t)),
            None => Datum::Null,
        };
    }
    Ok(())
}

fn decode_datum(r: &Rel, i: usize, d: &Datum) -> Result<Value> {
    let kind = r
        .kinds
        .get(i)
        .ok_or_else(|| Error::fatal("tuple wider than its relation"))?;
    match d {
        Datum::Null => Ok(Value::Null),
        Datum::Unchanged => Ok(Value::Unchanged),
        Datum::Binary(b) => binary::decode(kind, b),
        Datum::Text(t) => {
            let s = std::str::from_utf8(t).map_err(|_| Error::data("text value is not UTF-8"))?;
            binary::decode_text(kind, s)
        }
    }
}

/// A tuple's values. A value that cannot be read is a data error naming
/// table, key and column, unless nothing reads its column (`selection`).
fn values(
    r: &Rel,
    datums: Vec<Datum>,
    key_only: bool,
    selection: &Selection,
) -> Result<Vec<Value>> {
    if datums.len() != r.type_oids.len() {
        return Err(Error::fatal(format!(
            "pgoutput tuple of {} has {} columns, its relation {}",
            r.table.name,
            datums.len(),
            r.type_oids.len()
        )));
    }
    let table = &r.table;
    let unread = |i: usize| {
        table
            .columns
            .get(i)
            .is_some_and(|c| selection.unread(&table.name, &c.name))
    };
    decode_row(table, datums.len(), unread, |i| match &datums[i] {
        // A key-only image sends the other columns as NULL.
        Datum::Null if key_only && !table.is_key_column(i) => Ok(Value::Unchanged),
        d => decode_datum(r, i, d),
    })
}

fn old_values(r: &Rel, old: OldTuple, selection: &Selection) -> Result<Vec<Value>> {
    values(r, old.datums, old.key_only, selection)
}
