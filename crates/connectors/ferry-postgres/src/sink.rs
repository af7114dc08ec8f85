//! The PostgreSQL sink: the structure copy (checks of existing tables,
//! creation of missing ones, [`crate::structure`]), the checkpoint table
//! ([`crate::checkpoint`]), and each table's mapping onto its target table
//! ([`crate::target`]). Writers (the data path) are in [`crate::writer`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Column, Error, Result, SequenceValue,
    Sink, SinkInfo, SinkWriter, Step, TableName, TableReader, TableRef, TableShape, Value,
};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::catalog::{self, PgTable};
use crate::checkpoint::{self, CHECKPOINT_TABLE};
use crate::connection::Endpoint;
use crate::error::pg_error;
use crate::fence::{self, Lock};
use crate::reader::KeyOrderReads;
use crate::structure::{create_schema_sql, create_table_sql, ensure_user_types};
use crate::target::{Shared, map_target, target_name};
use crate::types::{TypeCache, ident, writable};

/// The advisory lock every pipeline's structure copy on a database holds.
const STRUCTURE_LOCK: &str = "ferry structure copy";

/// How to reach the target.
#[derive(Clone)]
pub struct PostgresSinkConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The pipeline's name: the key of its checkpoint records.
    pub pipeline: String,
}

impl std::fmt::Debug for PostgresSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PostgresSinkConfig")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL sink. Cheap to share; each writer has its own connection.
pub struct PostgresSink {
    shared: Arc<Shared>,
    admin: Client,
    types: tokio::sync::Mutex<TypeCache>,
    /// `TableReader::read_rows` (`ferry verify`).
    reads: KeyOrderReads,
    /// The session holding the pipeline's lock on the target, once
    /// [`Sink::fence`] took it; the lock goes with it.
    fence: tokio::sync::Mutex<Option<Client>>,
    /// The checkpoint table is known to exist.
    checkpoint_ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("target", &self.shared.endpoint.describe())
            .field("pipeline", &self.shared.pipeline)
            .finish()
    }
}

impl PostgresSink {
    /// Connects to the target. Nothing is created yet: the checkpoint
    /// table comes with the structure copy ([`Sink::ensure_tables`]) or
    /// the first writer, so a run refused before either leaves the target
    /// as it was.
    pub async fn connect(config: PostgresSinkConfig) -> Result<PostgresSink> {
        if config.pipeline.is_empty() {
            return Err(Error::fatal("the pipeline name is empty").with_fix("name the pipeline"));
        }
        let endpoint = Endpoint::parse(&config.url, "target")?;
        let admin = endpoint.connect().await?;
        let major = catalog::server_major(&admin).await?;
        Ok(PostgresSink {
            reads: KeyOrderReads::new(endpoint.clone()),
            shared: Arc::new(Shared {
                endpoint,
                major,
                pipeline: config.pipeline,
                targets: Mutex::new(HashMap::new()),
                shapes: Mutex::new(HashMap::new()),
                active: None,
                writers: Default::default(),
            }),
            admin,
            types: tokio::sync::Mutex::new(TypeCache::default()),
            fence: tokio::sync::Mutex::new(None),
            checkpoint_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes this sink one direction of an active-active setup (ADR 0014):
    /// its writers apply under the replication origin of the source site,
    /// with the source's commit times, and check each change for a
    /// conflict by the table's policy. Call it right after `connect`.
    pub fn set_active_active(&mut self, active: ferry_core::ActiveActive) -> Result<()> {
        let shared = Arc::get_mut(&mut self.shared).ok_or_else(|| {
            Error::fatal("set_active_active called after writers opened; this is a ferry bug")
        })?;
        shared.active = Some(active);
        Ok(())
    }

    /// Creates the checkpoint table if the target lacks it.
    async fn ensure_checkpoint_table(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.checkpoint_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.checkpoint_table_usable().await? {
            self.create_checkpoint_table().await?;
        }
        self.checkpoint_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the checkpoint table exists; an error naming the grant
    /// when this user could neither write it nor create it.
    async fn checkpoint_table_usable(&self) -> Result<bool> {
        let row = self
            .admin
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                        CASE WHEN to_regclass($1) IS NULL THEN has_schema_privilege('public', 'CREATE') \
                        ELSE has_table_privilege($1, 'SELECT') AND has_table_privilege($1, 'INSERT') \
                         AND has_table_privilege($1, 'UPDATE') AND has_table_privilege($1, 'DELETE') END",
                &[&CHECKPOINT_TABLE],
            )
            .await
            .map_err(|e| pg_error(e, "looking for the checkpoint table"))?;
        let (exists, allowed): (bool, bool) = (row.get(0), row.get(1));
        let user = self.shared.endpoint.user();
        match (exists, allowed) {
            (_, true) => Ok(exists),
            (true, false) => Err(Error::fatal(format!(
                "role {user} may not write the checkpoint table {CHECKPOINT_TABLE}"
            ))
            .with_fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {CHECKPOINT_TABLE} TO {user}"
            ))),
            (false, false) => Err(Error::fatal(format!(
                "role {user} may not create the checkpoint table {CHECKPOINT_TABLE}"
            ))
            .with_fix(format!(
                "GRANT CREATE ON SCHEMA public TO {user}; or have an administrator create \
                 {CHECKPOINT_TABLE} (see README.md) and grant SELECT, INSERT, UPDATE, DELETE on it"
            ))),
        }
    }

    async fn create_checkpoint_table(&self) -> Result<()> {
        self.admin
            .batch_execute(&checkpoint::create_sql())
            .await
            .map_err(|e| pg_error(e, &format!("creating {CHECKPOINT_TABLE}")))
    }

    /// The structure copy: checks every existing target table, then
    /// creates the missing ones (with their schemas and types) and the
    /// checkpoint table, and records every table's mapping. Nothing is
    /// created unless every existing table can take its rows. Returns the
    /// tables whose columns differ (see `Sink::ensure_tables`).
    async fn create_missing(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        use std::sync::atomic::Ordering;
        let checkpoint_exists = self.checkpoint_table_usable().await?;
        let mut altered = Vec::new();
        let mut missing = Vec::new();
        for table in tables {
            match self.describe(&table.name).await? {
                Some(pg) => {
                    if self.map_existing(table, &pg).await? {
                        altered.push(table.name.clone());
                    }
                }
                None => missing.push(table),
            }
        }
        for table in missing {
            let columns: Vec<&Column> = table.columns.iter().collect();
            ensure_user_types(&self.admin, &columns).await?;
            let (schema, _) = target_name(&table.name);
            let sql = match create_schema_sql(&self.admin, &schema).await? {
                Some(create) => format!("{create}; {}", create_table_sql(table, false)?),
                None => create_table_sql(table, false)?,
            };
            tracing::info!(table = %table.name, "creating the target table");
            // The table and what comes with it (`shape.rs`) in one
            // transaction: a crash between them would leave a table that
            // a restart, finding it, never completes.
            let (schema, name) = target_name(&table.name);
            let q = format!("{}.{}", ident(&schema), ident(&name));
            let statements = self
                .shared
                .shape(&table.name)
                .map(|shape| crate::shape::with_table(table, &q, &shape))
                .unwrap_or_default();
            let created = async {
                self.admin
                    .batch_execute(&format!("BEGIN; {sql}"))
                    .await
                    .map_err(|e| pg_error(e, &format!("creating table {}", table.name)))?;
                crate::shape::run_each(&self.admin, &q, &statements, true).await?;
                self.admin
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| pg_error(e, &format!("creating table {}", table.name)))
            }
            .await;
            if let Err(e) = created {
                let _ = self.admin.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            let pg = self.describe(&table.name).await?.ok_or_else(|| {
                Error::fatal(format!(
                    "table {} vanished right after creation",
                    table.name
                ))
            })?;
            self.map_existing(table, &pg).await?;
        }
        if !checkpoint_exists {
            self.create_checkpoint_table().await?;
        }
        self.checkpoint_ready.store(true, Ordering::Release);
        Ok(altered)
    }

    /// Records the mapping of `table` onto the existing target table `pg`,
    /// or returns `true` when the target lacks columns of it (or holds one
    /// in a type that cannot take its values): the pipeline alters such a
    /// table (writer `Step::Schema`) together with recording its re-copy.
    async fn map_existing(&self, table: &TableRef, pg: &PgTable) -> Result<bool> {
        let lacks = table.columns.iter().any(|c| {
            pg.column(&c.name)
                .is_none_or(|tc| !tc.kind.as_ref().is_some_and(|k| writable(&c.ty, k)))
        });
        if lacks {
            return Ok(true);
        }
        let traits = catalog::write_traits(&self.admin, pg.oid).await?;
        if !traits.writable {
            // Found now, before the source is prepared, rather than by the
            // first load after a slot and a publication exist.
            let user = self.shared.endpoint.user();
            return Err(Error::fatal(format!(
                "role {user} may not write target table {}",
                pg.display()
            ))
            .with("table", pg.display())
            .with_fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO {user}",
                pg.qualified()
            )));
        }
        let target = map_target(table, pg, &traits, self.shared.major)?;
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.name.clone(), Arc::new(target));
        Ok(false)
    }

    async fn describe(&self, name: &TableName) -> Result<Option<PgTable>> {
        let (schema, table) = target_name(name);
        let mut types = self.types.lock().await;
        catalog::describe(&self.admin, &mut types, &schema, &table).await
    }
}

#[async_trait]
impl CheckpointStore for PostgresSink {
    /// A target without the checkpoint table holds no checkpoint.
    async fn load(&self) -> Result<Checkpoint> {
        let rows = match self
            .admin
            .query(
                &format!("SELECT scope, value FROM {CHECKPOINT_TABLE} WHERE pipeline = $1"),
                &[&self.shared.pipeline],
            )
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Vec::new(),
            r => r.map_err(|e| pg_error(e, "reading the checkpoint"))?,
        };
        let records: Vec<CheckpointRecord> = rows
            .iter()
            .map(|r| CheckpointRecord {
                scope: r.get(0),
                value: r.get(1),
            })
            .collect();
        Checkpoint::from_records(&records)
    }

    async fn clear(&self) -> Result<()> {
        match self
            .admin
            .execute(
                &format!("DELETE FROM {CHECKPOINT_TABLE} WHERE pipeline = $1"),
                &[&self.shared.pipeline],
            )
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(()),
            r => r
                .map(|_| ())
                .map_err(|e| pg_error(e, "clearing the checkpoint")),
        }
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn info(&self) -> SinkInfo {
        SinkInfo { max_writers: 4 }
    }

    /// A session advisory lock keyed `ferry_target_<pipeline>`, taken on a
    /// connection of its own that lives as long as this sink (see
    /// `fence.rs`). It does not survive a restart of the target server;
    /// nothing written after one goes through the old connections, and a
    /// run that lost them fences again when it restarts.
    async fn fence(&self) -> Result<()> {
        let mut held = self.fence.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let client = self.shared.endpoint.connect().await?;
        let key = format!("ferry_target_{}", self.shared.pipeline);
        match fence::lock(&client, &key, "the pipeline's lock on the target").await? {
            Lock::Taken => {
                fence::drain_writers(&client, &self.shared.pipeline).await?;
                *held = Some(client);
                Ok(())
            }
            Lock::HeldBy(pid) => Err(Error::fatal(format!(
                "another ferry runs pipeline {:?} into target {} (session PID {} holds the \
                 pipeline's lock on the target)",
                self.shared.pipeline,
                self.shared.endpoint.describe(),
                Lock::holder(pid)
            ))
            .with_fix(
                "stop the other `ferry run` of this pipeline first (two runners would both apply \
                 every change); a killed runner's lock goes with its session",
            )),
        }
    }

    async fn identity(&self) -> Result<Option<String>> {
        catalog::database_identity(&self.admin).await.map(Some)
    }

    async fn check(&self) -> Vec<CheckItem> {
        let mut items = crate::check::sink_checks(&self.admin, &self.shared.endpoint).await;
        if let Some(active) = &self.shared.active {
            items.push(CheckItem::ok(
                "active-active",
                format!(
                    "applies changes from site {} to site {} under replication origins {}; \
                     conflicts go to {} (policy {} unless set per table); installs on the \
                     target: the origins, the table {}",
                    active.source_site,
                    active.target_site,
                    ferry_core::conflict::origin_name(&active.source_site, 0)
                        .trim_end_matches('0')
                        .to_owned()
                        + "<n>",
                    crate::origin::CONFLICTS_TABLE,
                    active.default_policy.name(),
                    crate::origin::CONFLICTS_TABLE,
                ),
            ));
            items.extend(crate::origin::check(&self.admin, self.shared.endpoint.user()).await);
        }
        items
    }

    /// Pipelines starting at once on one target would race to create the
    /// same schema, type or table (`duplicate key value violates unique
    /// constraint "pg_type_typname_nsp_index"`): the structure copy of
    /// every ferry pipeline on a database holds one advisory lock, so the
    /// second finds what the first created.
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        if self.shared.active.is_some() {
            // Refused before the source is prepared: nothing installed.
            crate::origin::require(&self.admin, self.shared.endpoint.user()).await?;
            crate::origin::ensure_conflicts_table(&self.admin).await?;
        }
        let lock = |f: &str| format!("SELECT {f}(hashtext('{STRUCTURE_LOCK}')::int8)");
        self.admin
            .batch_execute(&lock("pg_advisory_lock"))
            .await
            .map_err(|e| pg_error(e, "taking the structure copy's lock"))?;
        let created = self.create_missing(tables).await;
        let released = self.admin.batch_execute(&lock("pg_advisory_unlock")).await;
        let altered = created?;
        released.map_err(|e| pg_error(e, "releasing the structure copy's lock"))?;
        Ok(altered)
    }

    /// Binary `COPY` tuples, when every column of the target table has a
    /// built-in type: the same name as a PostgreSQL source of the same
    /// major version gives a table with the same column types.
    async fn row_encoding(&self, table: &TableRef) -> Result<Option<String>> {
        if self.shared.active.is_some() {
            // Active-active copies add missing rows only (`load_absent`).
            return Ok(None);
        }
        let map = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(map
            .get(&table.name)
            .filter(|t| t.matches(table))
            .and_then(|t| t.encoding.clone()))
    }

    async fn render_sql(&self, steps: &[Step]) -> Result<String> {
        let mut tables = HashMap::new();
        for step in steps {
            let touched: Vec<&TableRef> = match step {
                Step::Rows(ops) => ops.iter().map(|t| &t.table).collect(),
                Step::Keyless { table, .. } => vec![table],
                _ => Vec::new(),
            };
            for t in touched {
                if let Some(pg) = self.describe(&t.name).await? {
                    tables.insert(t.name.clone(), pg);
                }
            }
        }
        crate::repair::render(steps, &tables)
    }

    /// Kept for the tables this sink creates: see `shape.rs`.
    async fn set_shapes(&self, shapes: Vec<(TableName, TableShape)>) {
        let mut map = self.shared.shapes.lock().unwrap_or_else(|p| p.into_inner());
        map.clear();
        map.extend(
            shapes
                .into_iter()
                .filter(|(_, s)| s.dialect == crate::shape::DIALECT),
        );
    }

    async fn set_sequences(&self, values: &[SequenceValue]) -> Result<()> {
        crate::shape::set_sequences(&self.admin, values).await
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        self.ensure_checkpoint_table().await?;
        let client = self.shared.endpoint.connect().await?;
        fence::hold_writer_lock(&client, &self.shared.pipeline).await?;
        if let Some(active) = &self.shared.active {
            let user = self.shared.endpoint.user();
            crate::origin::require(&client, user).await?;
            crate::origin::ensure_conflicts_table(&self.admin).await?;
            let n = self
                .shared
                .writers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::origin::setup_session(&client, user, &active.source_site, n).await?;
        }
        Ok(Box::new(crate::writer::PostgresWriter::new(
            self.shared.clone(),
            client,
        )))
    }
}

#[async_trait]
impl TableReader for PostgresSink {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        let (schema, name) = target_name(&table.name);
        crate::reader::count_rows(&self.admin, &schema, &name).await
    }

    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        Ok(self.describe_if_there(table).await?.is_some())
    }

    async fn declared_shape(&self, table: &TableRef) -> Result<Option<ferry_core::DeclaredShape>> {
        Ok(self
            .describe_if_there(table)
            .await?
            .map(|pg| ferry_core::DeclaredShape {
                columns: pg
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_name.clone()))
                    .collect(),
                key: pg
                    .primary_key()
                    .map(|k| k.columns.clone())
                    .unwrap_or_default(),
            }))
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let pg = self.describe_for_reading(table).await?;
        self.reads
            .read_rows(&self.admin, &pg, table, after, limit)
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
            .key_after(&self.admin, &pg, table, after, rows)
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
        let pg = self.describe(&table.name).await?.ok_or_else(|| {
            Error::fatal(format!("table {} does not exist on the target", table.name))
        })?;
        self.reads.scan_rows(&self.admin, &pg, table, on_rows).await
    }
}

impl PostgresSink {
    /// The catalog entry of a target table `ferry verify` reads, read once
    /// per structure version.
    async fn describe_for_reading(&self, table: &TableRef) -> Result<PgTable> {
        self.describe_if_there(table).await?.ok_or_else(|| {
            Error::fatal(format!("table {} does not exist on the target", table.name))
        })
    }

    /// `table`'s catalog entry on the target, read once per structure
    /// version for every read verify makes (a distant target pays its
    /// round trips once).
    async fn describe_if_there(&self, table: &TableRef) -> Result<Option<PgTable>> {
        self.reads
            .described_if_there(table, self.describe(&table.name))
            .await
    }
}
