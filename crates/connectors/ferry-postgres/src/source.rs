//! The PostgreSQL source: catalog, publication and slot, snapshot hand-off
//! and the change stream.
//!
//! Hand-off: the slot `ferry_<pipeline>` is created on a replication
//! connection with an exported snapshot, and that connection is held until
//! the snapshot workers have imported it, so the snapshot is exactly the
//! slot's consistent point and streaming from that point delivers exactly
//! what the snapshot lacks. After a restart that snapshot is gone: tables
//! still to copy are copied in a new snapshot exported by a temporary slot,
//! and the checkpoint's per-range snapshot positions tell the pipeline
//! which streamed changes those copies already contain.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Continuity, Error, Lsn, Position, Result, Selection, SequenceValue, SnapshotReader,
    SnapshotRequest, Source, SourceEvent, TableName, TableReader, TableRef, TableShape, Value,
};
use tokio_postgres::Client;

use crate::catalog::{self, PgTable};
use crate::connection::Endpoint;
use crate::error::pg_error;
use crate::fence::{self, Lock};
use crate::position::{point, start_lsn};
use crate::publication::Publication;
use crate::reader::KeyOrderReads;
use crate::replication::{CommandError, ReplicationConn};
use crate::stream::{Context, Stream};
use crate::types::{TypeCache, ident, quote_literal};

/// How to reach the source and what to replicate.
#[derive(Clone)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The pipeline's name: ferry's slot and publication are
    /// `ferry_<pipeline>`, mapped to a valid slot name ([`crate::slot_name`]).
    pub pipeline: String,
    pub selection: Selection,
    /// Connections copying the snapshot in parallel (at least 1).
    pub snapshot_workers: usize,
    /// Rows per snapshot chunk (one target transaction each). `None`:
    /// 20,000 decoded rows, 40,000 passed-through ones. A chunk of
    /// passed-through rows also ends at 4 MiB.
    pub snapshot_chunk_rows: Option<usize>,
}

impl std::fmt::Debug for PostgresSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSourceConfig")
            .field("pipeline", &self.pipeline)
            .field("selection", &self.selection)
            .field("snapshot_workers", &self.snapshot_workers)
            .field("snapshot_chunk_rows", &self.snapshot_chunk_rows)
            .finish_non_exhaustive()
    }
}

/// The slot's exporting session, held until the snapshot is imported.
struct Exported {
    /// Held open: the snapshot lives as long as this session.
    _conn: ReplicationConn,
    snapshot: String,
    lsn: Lsn,
}

pub struct PostgresSource {
    endpoint: Endpoint,
    pipeline: String,
    selection: Selection,
    workers: usize,
    chunk_rows: Option<usize>,
    client: Client,
    types: TypeCache,
    tables: HashMap<TableName, (TableRef, PgTable)>,
    known: HashMap<TableName, TableRef>,
    exported: Option<Exported>,
    stream: Option<Stream>,
    heartbeat: Duration,
    /// Holds the pipeline's advisory lock (see `fence`).
    fenced: bool,
    /// The server's major version (part of the row encoding's name).
    major: u32,
    /// `TableReader::read_rows` (`ferry verify`).
    reads: KeyOrderReads,
    /// Online re-copies (see `recopy.rs`).
    recopies: crate::recopy::Recopies,
    /// Why `prepare` created the slot, when it did so with a checkpoint
    /// possibly older than it (`continuity` reports the gap).
    slot_created: Option<String>,
    /// When the catalog was last looked at for new tables.
    tables_checked: std::time::Instant,
    /// New tables that cannot be replicated, reported once.
    refused: std::collections::HashSet<TableName>,
    /// Active-active: skip transactions ferry applied from another site.
    skip_ferry_origins: bool,
}

/// How often a streaming source looks for new tables the selection matches.
const NEW_TABLE_CHECK: Duration = Duration::from_secs(5);

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("source", &self.endpoint.describe())
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

fn validate_pipeline(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::fatal("the pipeline name is empty").with_fix("name the pipeline"));
    }
    Ok(())
}

impl PostgresSource {
    /// Validates the configuration and connects (no change to the source).
    pub async fn connect(config: PostgresSourceConfig) -> Result<PostgresSource> {
        validate_pipeline(&config.pipeline)?;
        let endpoint = Endpoint::parse(&config.url, "source")?;
        let client = endpoint.connect().await?;
        let major = catalog::server_major(&client).await?;
        Ok(PostgresSource {
            reads: KeyOrderReads::new(endpoint.clone()),
            endpoint,
            pipeline: config.pipeline,
            selection: config.selection,
            workers: config.snapshot_workers.max(1),
            chunk_rows: config.snapshot_chunk_rows.map(|n| n.max(1)),
            client,
            types: TypeCache::default(),
            tables: HashMap::new(),
            known: HashMap::new(),
            exported: None,
            stream: None,
            heartbeat: Duration::from_secs(10),
            fenced: false,
            major,
            recopies: crate::recopy::Recopies::new(config.snapshot_chunk_rows),
            slot_created: None,
            tables_checked: std::time::Instant::now(),
            refused: Default::default(),
            skip_ferry_origins: false,
        })
    }

    /// Active-active (ADR 0014): forward only the transactions written on
    /// this database, skipping those whose replication origin is one of
    /// ferry's apply sessions (`ferry_<site>_<n>`,
    /// [`ferry_core::conflict::origin_name`]), so a change never returns
    /// to the site it came from.
    pub fn skip_ferry_origins(&mut self, on: bool) {
        self.skip_ferry_origins = on;
    }

    /// How long the stream may be silent before ferry emits a heartbeat
    /// message on the source (default 10 s).
    pub fn set_heartbeat_interval(&mut self, every: Duration) {
        self.heartbeat = every.max(Duration::from_millis(100));
    }

    /// Name of ferry's replication slot and publication (see
    /// [`crate::slot_name`] for how a pipeline name maps to it).
    pub fn slot_name(&self) -> String {
        crate::names::slot_name(&self.pipeline)
    }

    /// Takes the pipeline's session advisory lock on the source, held as
    /// long as this source's connection: a second ferry running the same
    /// pipeline, in any phase, is refused. A crashed runner's lock goes
    /// with its connection; a few seconds are allowed for that.
    async fn fence(&mut self) -> Result<()> {
        if self.fenced {
            return Ok(());
        }
        match fence::lock(
            &self.client,
            &self.slot_name(),
            "the pipeline's lock on the source",
        )
        .await?
        {
            Lock::Taken => {
                self.fenced = true;
                Ok(())
            }
            Lock::HeldBy(pid) => Err(Error::fatal(format!(
                "another ferry runs pipeline {:?} on this source (session PID {} holds the \
                 pipeline's lock)",
                self.pipeline,
                Lock::holder(pid)
            ))
            .with_fix(
                "stop the other ferry of this pipeline; two runners of one pipeline would both \
                 write the target",
            )),
        }
    }

    /// Tables created on the source while the pipeline streams that the
    /// selection matches: each is added to the publication, in the same
    /// transaction as a marker message, so the stream meets the marker
    /// exactly where the table's changes start to flow; there the target
    /// creates the table and it is copied online (`stream.rs`). A table
    /// that cannot be replicated is reported once and left out.
    async fn add_new_tables(&mut self) -> Result<()> {
        let names = catalog::list_tables(&self.client).await?;
        let new: Vec<TableName> = names
            .into_iter()
            .filter(|n| self.selection.selects(n) && !self.tables.contains_key(n))
            .filter(|n| !self.refused.contains(n))
            .collect();
        for name in new {
            let ns = name.namespace.clone().unwrap_or_default();
            let Some(pg) =
                catalog::describe(&self.client, &mut self.types, &ns, &name.name).await?
            else {
                continue;
            };
            let table = match catalog::source_schema(&pg) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(table = %name, "a new table matches the selection but cannot be replicated: {}", e.report());
                    self.refused.insert(name);
                    continue;
                }
            };
            let slot = self.slot_name();
            let sql = format!(
                "BEGIN; ALTER PUBLICATION {} ADD TABLE {}; SELECT pg_logical_emit_message(true, {}, {}); COMMIT",
                ident(&slot),
                pg.qualified(),
                quote_literal(&crate::stream::new_table_prefix(&slot)),
                quote_literal(&name.to_string())
            );
            if let Err(e) = self.client.batch_execute(&sql).await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                tracing::warn!(table = %name, "a new table matches the selection but cannot be added to the publication: {}",
                    pg_error(e, "adding the table to the publication").report());
                self.refused.insert(name);
                continue;
            }
            tracing::info!(table = %name, "a new table matches the selection: it is copied online");
            self.known.insert(name.clone(), table.clone());
            self.tables.insert(name, (table, pg));
        }
        Ok(())
    }

    async fn wal_level_logical(&self) -> Result<()> {
        let level: String = self
            .client
            .query_one("SELECT current_setting('wal_level')", &[])
            .await
            .map_err(|e| pg_error(e, "reading wal_level"))?
            .get(0);
        if level != "logical" {
            return Err(Error::fatal(format!(
                "the source's wal_level is {level}; change capture needs logical"
            ))
            .with_fix("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"));
        }
        Ok(())
    }

    async fn slot_state(&self) -> Result<Option<(String, Option<i32>, Option<String>, bool)>> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, active_pid, wal_status, \
                        database = current_database() \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot_name()],
            )
            .await
            .map_err(|e| pg_error(e, "reading the replication slot"))?;
        Ok(row.map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get::<_, Option<bool>>(3).unwrap_or(false),
            )
        }))
    }

    /// Creates ferry's publication, or sets its tables, unless it lists
    /// exactly the selected tables already (see [`crate::publication`]).
    async fn ensure_publication(&self) -> Result<()> {
        let tables: Vec<TableName> = self.tables.values().map(|(t, _)| t.name.clone()).collect();
        Publication::inspect(&self.client, &self.slot_name(), &tables)
            .await?
            .ensure(&self.client)
            .await
    }

    /// Creates a logical slot with an exported snapshot on a new
    /// replication connection; `temporary` slots vanish with it.
    async fn export(&self, slot: &str, temporary: bool) -> Result<Exported> {
        let mut conn = ReplicationConn::connect(&self.endpoint).await?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput EXPORT_SNAPSHOT",
            ident(slot),
            if temporary { "TEMPORARY " } else { "" }
        );
        let rows = conn
            .simple_query(&sql)
            .await
            .map_err(|e| slot_error(e, slot))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::fatal("CREATE_REPLICATION_SLOT returned nothing"))?;
        let lsn: Lsn = row
            .get(1)
            .cloned()
            .flatten()
            .unwrap_or_default()
            .parse()
            .map_err(|_| Error::fatal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
        let snapshot = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::fatal("CREATE_REPLICATION_SLOT exported no snapshot"))?;
        Ok(Exported {
            _conn: conn,
            snapshot,
            lsn,
        })
    }
}

fn slot_error(e: CommandError, slot: &str) -> Error {
    match e {
        CommandError::Server(s) if s.code == "55006" => Error::fatal(format!(
            "replication slot {slot} is in use by another process ({}): another ferry runs this \
             pipeline, or a stale session holds the slot",
            s.message
        ))
        .with_fix(format!(
            "stop the other ferry of this pipeline (SELECT active_pid FROM pg_replication_slots \
             WHERE slot_name = '{slot}'; a stale one can be ended with pg_terminate_backend)"
        )),
        CommandError::Server(s) if s.code == "55000" && s.message.contains("wal_level") => {
            Error::fatal(format!(
                "cannot create replication slot {slot}: {}",
                s.message
            ))
            .with_fix("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
        }
        CommandError::Server(s) if s.code == "53400" => Error::fatal(format!(
            "cannot create replication slot {slot}: {}",
            s.message
        ))
        .with_fix("drop unused slots or raise max_replication_slots and restart PostgreSQL"),
        CommandError::Server(s) if s.code == "42501" => {
            Error::fatal(format!("cannot use replication slot {slot}: {}", s.message))
                .with_fix("ALTER ROLE <ferry's user> WITH REPLICATION")
        }
        CommandError::Server(s)
            if s.code == "58P01"
                || (s.code == "55000"
                    && [s.message.as_str(), s.detail.as_deref().unwrap_or_default()]
                        .iter()
                        .any(|t| t.contains("invalidated") || t.contains("no longer"))) =>
        {
            Error::fatal(format!(
                "replication slot {slot} can no longer deliver the changes ferry needs: {} \
                 (the WAL after ferry's checkpoint was removed)",
                s.message
            ))
            .with_fix(
                "re-snapshot: `ferry teardown` (drops the slot and publication) and `ferry reset` \
                 (clears the checkpoint), then start the pipeline again; to avoid this, keep \
                 max_slot_wal_keep_size large enough for ferry's downtime",
            )
        }
        other => other.into_error(&format!("replication slot {slot}")),
    }
}

#[async_trait]
impl Source for PostgresSource {
    async fn check(&mut self) -> Vec<CheckItem> {
        crate::check::source_checks(
            &self.client,
            &self.endpoint,
            &self.selection,
            &self.slot_name(),
        )
        .await
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        let names = catalog::list_tables(&self.client).await?;
        let mut out = Vec::new();
        self.tables.clear();
        for name in names.into_iter().filter(|n| self.selection.selects(n)) {
            let ns = name.namespace.clone().unwrap_or_default();
            let Some(pg) =
                catalog::describe(&self.client, &mut self.types, &ns, &name.name).await?
            else {
                continue;
            };
            let table = catalog::source_schema(&pg)?;
            self.tables.insert(name, (table.clone(), pg));
            out.push(table);
        }
        self.known = self
            .tables
            .iter()
            .map(|(n, (t, _))| (n.clone(), t.clone()))
            .collect();
        Ok(out)
    }

    async fn shapes(&mut self, tables: &[TableRef]) -> Result<Vec<(TableName, TableShape)>> {
        let mut out = Vec::new();
        for t in tables {
            let Some((_, pg)) = self.tables.get(&t.name) else {
                continue;
            };
            let key: Vec<String> = t.key_names().iter().map(|k| k.to_string()).collect();
            out.push((
                t.name.clone(),
                catalog::table_shape(&self.client, pg, &key).await?,
            ));
        }
        Ok(out)
    }

    async fn sequence_values(&mut self, sequences: &[TableName]) -> Result<Vec<SequenceValue>> {
        let mut out = Vec::new();
        for name in sequences {
            let schema = name.namespace.as_deref().unwrap_or("public");
            if let Some((last_value, is_called)) =
                catalog::sequence_value(&self.client, schema, &name.name).await?
            {
                out.push(SequenceValue {
                    name: name.clone(),
                    last_value,
                    is_called,
                });
            }
        }
        Ok(out)
    }

    /// `wal_level`, the REPLICATION attribute, a free slot when ferry's
    /// does not exist yet, and the rights the publication needs: what
    /// [`prepare`](Source::prepare) would otherwise find out after the
    /// target was touched.
    async fn preflight(&mut self) -> Result<()> {
        self.wal_level_logical().await?;
        let slot = self.slot_name();
        let row = self
            .client
            .query_one(
                "SELECT (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles \
                         WHERE rolname = current_user), \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
                        (SELECT count(*) FROM pg_catalog.pg_replication_slots)::int \
                          >= current_setting('max_replication_slots')::int",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error(e, "reading the source's replication settings"))?;
        let (replication, slot_exists, slots_full): (Option<bool>, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        if !replication.unwrap_or(false) {
            let user = self.endpoint.user();
            return Err(Error::fatal(format!(
                "role {user} lacks the REPLICATION attribute, which change capture needs"
            ))
            .with_fix(format!("ALTER ROLE {user} WITH REPLICATION")));
        }
        if !slot_exists && slots_full {
            return Err(Error::fatal(format!(
                "all replication slots of the source are in use, so ferry cannot create {slot}"
            ))
            .with_fix(
                "drop unused slots (SELECT pg_drop_replication_slot(name)) or raise \
                 max_replication_slots and restart PostgreSQL",
            ));
        }
        let tables: Vec<TableName> = self.tables.values().map(|(t, _)| t.name.clone()).collect();
        let publication = Publication::inspect(&self.client, &slot, &tables).await?;
        if let Some((why, fix)) = publication.refusal() {
            return Err(
                Error::fatal(format!("cannot set up publication {slot}: {why}")).with_fix(fix),
            );
        }
        Ok(())
    }

    async fn prepare(&mut self) -> Result<()> {
        self.wal_level_logical().await?;
        self.fence().await?;
        self.ensure_publication().await?;
        let slot = self.slot_name();
        let mut state = self.slot_state().await?;
        if let Some((_, None, Some(wal_status), true)) = &state
            && wal_status == "lost"
        {
            // The server removed the WAL this slot needed: it can never
            // stream again. `continuity` reports what was lost.
            tracing::warn!(slot = %slot, "the replication slot was invalidated (its WAL was removed): dropping it and creating it again");
            self.client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| pg_error(e, &format!("dropping invalidated slot {slot}")))?;
            self.slot_created = Some(format!(
                "replication slot {slot} was invalidated (the server removed the WAL it still needed)"
            ));
            state = None;
        }
        match state {
            None => {
                let exported = self.export(&slot, false).await?;
                tracing::info!(slot = %slot, consistent_point = %exported.lsn, snapshot = %exported.snapshot,
                    "created the replication slot with an exported snapshot");
                self.slot_created.get_or_insert_with(|| format!("replication slot {slot} did not exist (dropped by `ferry teardown` or by hand)"));
                self.exported = Some(exported);
            }
            Some((plugin, _, wal_status, same_db)) => {
                if plugin != "pgoutput" || !same_db {
                    return Err(Error::fatal(format!(
                        "replication slot {slot} exists but is not ferry's (plugin {plugin}, or another database)"
                    ))
                    .with_fix(format!("rename the pipeline, or drop the slot: SELECT pg_drop_replication_slot('{slot}')")));
                }
                if wal_status.as_deref() == Some("lost") {
                    return Err(slot_error(
                        CommandError::Server(crate::replication::ServerError {
                            code: "55000".into(),
                            message: "the slot was invalidated".into(),
                            detail: None,
                        }),
                        &slot,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        requests: Vec<SnapshotRequest>,
    ) -> Result<Box<dyn SnapshotReader>> {
        let exported = match self.exported.take() {
            Some(e) => e,
            None => {
                let temp = format!("{}_snap", self.slot_name());
                let e = self.export(&temp, true).await?;
                let names: Vec<String> =
                    requests.iter().map(|r| r.table.name.to_string()).collect();
                let skipped: usize = requests.iter().map(|r| r.skip.len()).sum();
                tracing::warn!(
                    slot = %self.slot_name(), new_snapshot_at = %e.lsn, tables = ?names, ranges_kept = skipped,
                    "the snapshot exported when the slot was created is gone (this is a restart): \
                     copying the unfinished tables in a new snapshot taken through temporary slot {temp}, \
                     skipping the key ranges already copied; streamed changes up to {} to the rows \
                     copied now are skipped by the checkpoint", e.lsn
                );
                e
            }
        };
        let mut work = Vec::with_capacity(requests.len());
        for mut req in requests {
            let (_, pg) = self.tables.get(&req.table.name).ok_or_else(|| {
                Error::fatal(format!(
                    "table {} was not listed by tables()",
                    req.table.name
                ))
            })?;
            if req.encoding.is_some() && req.encoding != self.row_encoding(&req.table) {
                req.encoding = None;
            }
            work.push((req, pg.clone()));
        }
        let reader = crate::snapshot::start(
            &self.endpoint,
            &exported.snapshot,
            point(exported.lsn),
            self.workers,
            self.chunk_rows,
            work,
            &self.selection,
        )
        .await;
        // Every worker imported the snapshot: the exporting session may end.
        drop(exported);
        reader
    }

    /// Binary `COPY` tuples, when every column has a built-in type.
    fn row_encoding(&self, table: &TableRef) -> Option<String> {
        let (_, pg) = self.tables.get(&table.name)?;
        catalog::binary_copy_encoding(self.major, pg, table)
    }

    /// Every transaction is delivered on its own, so snapshot boundaries
    /// need no special handling here.
    async fn start_stream(
        &mut self,
        from: Option<&Position>,
        _boundaries: &[Position],
    ) -> Result<()> {
        self.exported = None;
        let from = from.map(Position::as_postgres).transpose()?;
        let slot = self.slot_name();
        // Status updates go out at a third of the server's timeout (at most
        // every 10 s), read or not, so a busy pipeline keeps its stream.
        let timeout_ms: i64 = self
            .client
            .query_one(
                "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
                &[],
            )
            .await
            .map_err(|e| pg_error(e, "reading wal_sender_timeout"))?
            .get(0);
        let status_every = match timeout_ms {
            t if t > 0 => Duration::from_millis((t as u64 / 3).clamp(100, 10_000)),
            _ => Duration::from_secs(10),
        };
        let start = from.as_ref().map(start_lsn).unwrap_or_default();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, \
             binary 'true', messages 'true')",
            ident(&slot),
            quote_literal(&slot)
        );
        // Holding the pipeline's lock, a session still on the slot belongs
        // to a runner that is gone (killed, or cut off by the network) and
        // the server ends it by wal_sender_timeout at the latest: wait for
        // that rather than fail. Without the lock, fail at once.
        let patience = if self.fenced {
            Duration::from_millis(timeout_ms.clamp(0, 120_000) as u64) + Duration::from_secs(5)
        } else {
            Duration::ZERO
        };
        let deadline = tokio::time::Instant::now() + patience;
        let mut waited = false;
        let conn = loop {
            let busy = match self.slot_state().await? {
                None => {
                    return Err(Error::fatal(format!("replication slot {slot} does not exist"))
                        .with_fix("the slot was dropped: `ferry reset` and start again to copy the tables afresh"));
                }
                Some((_, Some(pid), _, _)) => {
                    CommandError::Server(crate::replication::ServerError {
                        code: "55006".into(),
                        message: format!("active for PID {pid}"),
                        detail: None,
                    })
                }
                Some(_) => {
                    let mut conn = ReplicationConn::connect(&self.endpoint).await?;
                    match conn.start_replication(&sql).await {
                        Ok(()) => break conn,
                        Err(CommandError::Server(e)) if e.code == "55006" => {
                            CommandError::Server(e)
                        }
                        Err(e) => return Err(slot_error(e, &slot)),
                    }
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(slot_error(busy, &slot));
            }
            if !waited {
                waited = true;
                tracing::info!(slot = %slot, patience = ?patience,
                    "the slot is still held by a session of an earlier runner; waiting for the server to end it");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tracing::info!(slot = %slot, from = %start, "streaming changes");
        let mut stream = Stream::new(conn, from, self.heartbeat, status_every, slot);
        stream.skip_ferry_origins = self.skip_ferry_origins;
        self.stream = Some(stream);
        Ok(())
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        if self.stream.is_some() && self.tables_checked.elapsed() >= NEW_TABLE_CHECK {
            self.tables_checked = std::time::Instant::now();
            self.add_new_tables().await?;
        }
        let stream = self.stream.as_mut().ok_or_else(|| {
            Error::fatal("next() called before start_stream(); this is a ferry bug")
        })?;
        if stream.pending_chunk.is_none() {
            let slot = crate::names::slot_name(&self.pipeline);
            stream.pending_chunk = self
                .recopies
                .read_chunk(&self.client, &mut self.types, &slot)
                .await?;
        }
        let mut ctx = Context {
            client: &self.client,
            types: &mut self.types,
            known: &self.known,
            described: &self.tables,
            selection: &self.selection,
        };
        let event = stream.next(&mut ctx).await?;
        for table in std::mem::take(&mut stream.started) {
            self.recopies
                .start(self.tables.get(&table.name), &table, None)?;
        }
        Ok(event)
    }

    async fn continuity(&mut self, from: &Position) -> Result<Continuity> {
        let from = from.as_postgres()?;
        let slot = self.slot_name();
        let confirmed: Option<Lsn> = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error(e, "reading the replication slot"))?
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| t.parse().ok());
        let Some(confirmed) = confirmed else {
            return Err(
                Error::fatal(format!("replication slot {slot} does not exist"))
                    .with_fix("prepare() creates it; this is a ferry bug"),
            );
        };
        // The slot never confirms what the target does not hold, so a
        // slot ahead of the checkpoint was created (or moved) by someone
        // else: what lies between was streamed to nobody.
        if confirmed <= start_lsn(&from) {
            return Ok(Continuity::Exact);
        }
        let why = self.slot_created.clone().unwrap_or_else(|| {
            format!("replication slot {slot} was confirmed up to {confirmed} by another consumer")
        });
        Ok(Continuity::Gap {
            reason: format!("{why}; it can only stream changes after {confirmed}"),
            resume: point(confirmed),
        })
    }

    async fn recopy(&mut self, table: &TableRef, after: Option<Vec<Value>>) -> Result<()> {
        self.recopies
            .start(self.tables.get(&table.name), table, after)
    }

    /// Writes a transactional logical message naming the table: the
    /// stream meets it in commit order.
    async fn request_recopy(&mut self, table: &TableName) -> Result<()> {
        if !self.tables.contains_key(table) {
            return Err(Error::fatal(format!(
                "table {table} is not replicated by pipeline {:?}",
                self.pipeline
            ))
            .with_fix("name a table the pipeline selects (`ferry status` lists them)"));
        }
        self.client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[
                    &crate::stream::recopy_prefix(&self.slot_name()),
                    &table.to_string(),
                ],
            )
            .await
            .map_err(|e| pg_error(e, "writing the re-copy request on the source"))?;
        Ok(())
    }

    async fn ack(&mut self, position: &Position) -> Result<()> {
        let p = position.as_postgres()?;
        match self.stream.as_mut() {
            Some(s) => s.ack(&p).await,
            None => Ok(()),
        }
    }

    async fn identity(&mut self) -> Result<Option<String>> {
        catalog::database_identity(&self.client).await.map(Some)
    }

    async fn current_position(&mut self) -> Result<Option<Position>> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| pg_error(e, "reading the current WAL position"))?;
        let lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::fatal(format!("the server's WAL position: {e}")))?;
        Ok(Some(Position::Postgres(ferry_core::PgPosition {
            commit_lsn: lsn,
            lsn,
        })))
    }

    async fn teardown(&mut self) -> Result<()> {
        self.stream = None;
        self.exported = None;
        let slot = self.slot_name();
        if let Some((_, Some(pid), _, _)) = self.slot_state().await? {
            return Err(
                Error::fatal(format!("replication slot {slot} is in use by PID {pid}"))
                    .with_fix("stop the pipeline before tearing it down"),
            );
        }
        self.client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error(e, &format!("dropping replication slot {slot}")))?;
        self.client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&slot)))
            .await
            .map_err(|e| pg_error(e, &format!("dropping publication {slot}")))?;
        tracing::info!(slot = %slot, "dropped the replication slot and the publication");
        Ok(())
    }
}

#[async_trait]
impl TableReader for PostgresSource {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        let ns = namespace(table);
        crate::reader::count_rows(&self.client, &ns, &table.name.name).await
    }

    /// The planner's row estimate (`pg_class.reltuples`) when the table has
    /// been analyzed; counting would read the whole table while the snapshot
    /// reads it too.
    async fn estimate_rows(&self, table: &TableRef) -> Result<u64> {
        let ns = namespace(table);
        let est: Option<f32> = self
            .client
            .query_opt(
                "SELECT c.reltuples FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&ns, &table.name.name],
            )
            .await
            .map_err(|e| pg_error(e, "reading the table's row estimate"))?
            .map(|r| r.get(0));
        match est {
            Some(n) if n > 0.0 => Ok(n as u64),
            _ => crate::reader::count_rows(&self.client, &ns, &table.name.name).await,
        }
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let pg = self.describe_for_reading(table).await?;
        self.reads
            .read_rows(&self.client, &pg, table, after, limit)
            .await
    }

    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        let pg = self.describe_for_reading(table).await?;
        self.reads
            .key_after(&self.client, &pg, table, after, rows)
            .await
    }

    fn row_digests(&self) -> Vec<&'static str> {
        crate::reader::ROW_DIGESTS.to_vec()
    }

    fn restrict(&mut self, condition: &str) -> Result<()> {
        self.reads.restrict(condition);
        Ok(())
    }

    async fn prepare_digests(&self) -> Result<()> {
        self.reads.prepare_digests().await
    }

    async fn digest_range(
        &self,
        table: &TableRef,
        range: &ferry_core::KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<ferry_core::RangeDigest>> {
        self.reads
            .digest_range(
                self.describe_for_reading(table),
                table,
                range,
                limit,
                digest,
            )
            .await
    }

    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        let pg = self.describe_for_reading(table).await?;
        self.reads
            .scan_rows(&self.client, &pg, table, on_rows)
            .await
    }
}

impl PostgresSource {
    /// The catalog entry of a source table `ferry verify` reads.
    async fn describe_for_reading(&self, table: &TableRef) -> Result<catalog::PgTable> {
        let describe = async {
            let mut types = TypeCache::default();
            catalog::describe(
                &self.client,
                &mut types,
                &namespace(table),
                &table.name.name,
            )
            .await?
            .ok_or_else(|| {
                Error::fatal(format!("table {} does not exist on the source", table.name))
            })
        };
        self.reads.described(table, describe).await
    }
}

/// The schema a source table lives in (`public` when unqualified).
fn namespace(table: &TableRef) -> String {
    table
        .name
        .namespace
        .clone()
        .unwrap_or_else(|| "public".into())
}
