//! The MySQL/MariaDB sink: the structure copy (`structure.rs`, existing
//! tables checked in `target.rs`), the checkpoint table
//! (`checkpoint.rs`), the pipeline's fence (`fence.rs`), and reads of the
//! target for `ferry verify` (`read.rs`). Writers, the data path, are in
//! `writer.rs`.
//!
//! Every table of every source goes into the URL's database under its
//! bare name (the source's namespace is dropped, as the SQLite sink does).

mod alter;
mod array;
mod check;
mod checkpoint;
mod encode;
mod fence;
mod infile;
mod read;
mod repair;
mod statements;
mod structure;
mod target;
mod writer;

pub use checkpoint::CHECKPOINT_TABLE;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointStore, DeclaredShape, Error, Result, Sink, SinkInfo,
    SinkWriter, Step, TableName, TableReader, TableRef, TableSchema, Value,
};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::connection::Endpoint;
use crate::digest::Canon;
use crate::error::my_error;
use structure::{Dialect, create_table_sql};
use target::{Plan, TargetTable};

/// Most bytes of one multi-row statement: large enough that a round trip
/// carries thousands of rows, small enough to stay well under any
/// `max_allowed_packet` and not to hold a huge buffer per writer.
const STATEMENT_BYTES: usize = 4 << 20;

/// How to reach the target.
#[derive(Clone)]
pub struct MySqlSinkConfig {
    /// `mysql://user:password@host:3306/database` (or `mariadb://`).
    pub url: String,
    /// The pipeline's name: the key of its checkpoint records.
    pub pipeline: String,
    /// The source is MySQL/MariaDB too: tables are created with the
    /// source's own column types (`Column::source_type`).
    pub same_engine: bool,
}

impl std::fmt::Debug for MySqlSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("MySqlSinkConfig")
            .field("pipeline", &self.pipeline)
            .field("same_engine", &self.same_engine)
            .finish_non_exhaustive()
    }
}

/// Each column's digest encoding (`digest.rs`), `None` for a column
/// without one.
type Canons = Vec<Option<Canon>>;

/// What the sink and its writers share.
pub(crate) struct Shared {
    pub endpoint: Endpoint,
    pub pipeline: String,
    pub dialect: Dialect,
    /// Most bytes of one statement (see [`STATEMENT_BYTES`]).
    pub statement_bytes: usize,
    /// Snapshot loads may use `LOAD DATA LOCAL INFILE` (until the server
    /// refuses it: `local_infile` off).
    pub infile: AtomicBool,
    plans: Mutex<HashMap<TableName, Arc<Plan>>>,
    /// Each table's columns in ferry's last structure of it: the columns
    /// a structure change drops.
    columns: Mutex<HashMap<TableName, Vec<String>>>,
}

impl Shared {
    pub fn cached_plan(&self, t: &TableSchema) -> Option<Arc<Plan>> {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.get(&t.name).filter(|p| p.matches(t)).cloned()
    }

    pub fn cache_plan(&self, t: &TableSchema, plan: Arc<Plan>) {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.insert(t.name.clone(), plan);
    }

    pub fn forget_plan(&self, name: &TableName) {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans.remove(name);
    }

    pub fn remember_columns(&self, t: &TableSchema) {
        let mut map = self.columns.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            t.name.clone(),
            t.columns.iter().map(|c| c.name.clone()).collect(),
        );
    }

    pub fn known_columns(&self, name: &TableName) -> Vec<String> {
        let map = self.columns.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned().unwrap_or_default()
    }
}

/// Opens a connection with ferry's session settings (`SESSION_SETUP`,
/// which the endpoint's options run on every new connection).
async fn open(endpoint: &Endpoint) -> Result<Conn> {
    endpoint.connect().await
}

/// The MySQL/MariaDB sink. Each writer has its own connection.
pub struct MySqlSink {
    shared: Arc<Shared>,
    /// Checkpoint reads, the structure copy, checks and verify reads.
    admin: tokio::sync::Mutex<Conn>,
    /// The session holding the pipeline's lock, once [`Sink::fence`] took it.
    fence: tokio::sync::Mutex<Option<Conn>>,
    checkpoint_ready: AtomicBool,
    /// `ferry verify --where`.
    condition: Option<String>,
    /// Each verified table's columns' digest encodings, by table and
    /// structure version (`digest_canons`): read once, not per range.
    canons: Mutex<HashMap<(String, u32), Option<Canons>>>,
}

impl std::fmt::Debug for MySqlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlSink")
            .field("target", &self.shared.endpoint.describe())
            .field("pipeline", &self.shared.pipeline)
            .finish()
    }
}

impl MySqlSink {
    /// Connects to the target. Nothing is created yet: the checkpoint
    /// table comes with the structure copy or the first writer.
    pub async fn connect(config: MySqlSinkConfig) -> Result<MySqlSink> {
        if config.pipeline.is_empty() {
            return Err(Error::fatal("the pipeline name is empty").with_fix("name the pipeline"));
        }
        let endpoint = Endpoint::parse(&config.url, "target")?;
        let mut admin = open(&endpoint).await?;
        let (version, max_packet): (String, u64) = admin
            .query_first("SELECT VERSION(), @@max_allowed_packet")
            .await
            .map_err(|e| my_error(e, "reading the server version"))?
            .unwrap_or_default();
        // Room for the statement's head and the packet's framing.
        let statement_bytes = STATEMENT_BYTES.min((max_packet as usize).saturating_sub(64 << 10));
        Ok(MySqlSink {
            shared: Arc::new(Shared {
                dialect: Dialect::new(&version, config.same_engine),
                endpoint,
                pipeline: config.pipeline,
                statement_bytes: statement_bytes.max(16 << 10),
                infile: AtomicBool::new(true),
                plans: Mutex::new(HashMap::new()),
                columns: Mutex::new(HashMap::new()),
            }),
            admin: tokio::sync::Mutex::new(admin),
            fence: tokio::sync::Mutex::new(None),
            checkpoint_ready: AtomicBool::new(false),
            condition: None,
            canons: Mutex::new(HashMap::new()),
        })
    }

    async fn ensure_checkpoint_table(&self) -> Result<()> {
        if self.checkpoint_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut admin = self.admin.lock().await;
        admin
            .query_drop(checkpoint::create_sql())
            .await
            .map_err(|e| {
                my_error(
                    e,
                    &format!("creating the checkpoint table {CHECKPOINT_TABLE}"),
                )
            })?;
        self.checkpoint_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Each of `t`'s columns' digest encoding as the target table holds
    /// it (`digest.rs`); `None` when the table is not here.
    async fn digest_canons(&self, t: &TableRef) -> Result<Option<Canons>> {
        let id = (t.name.name.clone(), t.version);
        if let Some(known) = self.canons.lock().expect("canons lock").get(&id) {
            return Ok(known.clone());
        }
        let canons = self.describe(&t.name.name).await?.map(|target| {
            t.columns
                .iter()
                .map(|c| {
                    target
                        .column(&c.name)
                        .and_then(|tc| Canon::of_target(&c.ty, &tc.data_type))
                })
                .collect()
        });
        self.canons
            .lock()
            .expect("canons lock")
            .insert(id, canons.clone());
        Ok(canons)
    }

    async fn describe(&self, name: &str) -> Result<Option<TargetTable>> {
        let mut admin = self.admin.lock().await;
        target::describe(&mut admin, self.shared.endpoint.database(), name).await
    }

    /// Checks an existing target table against `t`: a different key is
    /// fatal; `true` when columns are missing or cannot hold the source's
    /// values.
    fn needs_alter(&self, t: &TableSchema, target: &TargetTable) -> Result<bool> {
        let want: Vec<&str> = t.key_names();
        if target
            .key
            .iter()
            .map(String::as_str)
            .ne(want.iter().copied())
        {
            return Err(Error::fatal(format!(
                "target table {} has primary key ({}) but the source's key is ({})",
                target.name,
                target.key.join(", "),
                want.join(", ")
            ))
            .with("table", target.name.clone())
            .with_fix(
                "drop the target table so ferry creates it again, or give it the source's key",
            ));
        }
        Ok(t.columns.iter().any(|c| {
            target
                .column(&c.name)
                .is_none_or(|tc| alter::needs_change(&self.shared.dialect, c, tc))
        }))
    }
}

#[async_trait]
impl CheckpointStore for MySqlSink {
    /// A target without the checkpoint table holds no checkpoint.
    async fn load(&self) -> Result<Checkpoint> {
        let mut admin = self.admin.lock().await;
        checkpoint::load(&mut admin, &self.shared.pipeline).await
    }

    async fn clear(&self) -> Result<()> {
        let mut admin = self.admin.lock().await;
        checkpoint::clear(&mut admin, &self.shared.pipeline).await
    }
}

#[async_trait]
impl Sink for MySqlSink {
    /// InnoDB takes concurrent writers; more would mostly wait on each
    /// other's locks.
    fn info(&self) -> SinkInfo {
        SinkInfo { max_writers: 4 }
    }

    /// `GET_LOCK('ferry:<pipeline>:<database>')` on a connection of its
    /// own that lives as long as this sink (see `fence.rs`).
    async fn fence(&self) -> Result<()> {
        let mut held = self.fence.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let mut conn = open(&self.shared.endpoint).await?;
        let name = fence::lock_name(&self.shared.pipeline, self.shared.endpoint.database());
        match fence::lock(&mut conn, &name).await? {
            fence::Lock::Taken => {
                fence::drain_writers(
                    &mut conn,
                    &self.shared.pipeline,
                    self.shared.endpoint.database(),
                )
                .await?;
                *held = Some(conn);
                Ok(())
            }
            fence::Lock::HeldBy(id) => Err(Error::fatal(format!(
                "another ferry runs pipeline {:?} into target {} (connection {} holds the \
                 pipeline's lock {name:?})",
                self.shared.pipeline,
                self.shared.endpoint.describe(),
                id.map_or("?".into(), |i| i.to_string())
            ))
            .with_fix(
                "stop the other `ferry run` of this pipeline first (two runners would both apply \
                 every change); a killed runner's lock goes with its connection",
            )),
        }
    }

    async fn identity(&self) -> Result<Option<String>> {
        let mut admin = self.admin.lock().await;
        crate::connection::identity(&mut admin, self.shared.endpoint.database())
            .await
            .map(Some)
    }

    async fn check(&self) -> Vec<CheckItem> {
        let mut admin = self.admin.lock().await;
        check::sink_checks(&mut admin, &self.shared.endpoint).await
    }

    /// Creates the checkpoint table and the missing tables; checks the
    /// existing ones. Returns the tables to alter, and those a crash left
    /// with a re-copy marker (`checkpoint.rs`).
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        self.ensure_checkpoint_table().await?;
        let marked = {
            let mut admin = self.admin.lock().await;
            checkpoint::marked_tables(&mut admin, &self.shared.pipeline).await?
        };
        let mut altered = Vec::new();
        let mut missing = Vec::new();
        for t in tables {
            match self.describe(&t.name.name).await? {
                Some(target) => {
                    let marked = marked.contains(&t.name.to_string());
                    if self.needs_alter(t, &target)? || marked {
                        altered.push(t.name.clone());
                    } else {
                        self.shared.cache_plan(t, Arc::new(Plan::new(t, &target)?));
                    }
                }
                None => missing.push(t),
            }
            self.shared.remember_columns(t);
        }
        for t in missing {
            let sql = create_table_sql(t, &t.name.name, &self.shared.dialect)?;
            tracing::info!(table = %t.name, "creating the target table");
            let mut admin = self.admin.lock().await;
            admin.query_drop(sql.as_str()).await.map_err(|e| {
                my_error(e, &format!("creating target table {}", t.name.name))
                    .with("statement", sql.clone())
            })?;
        }
        Ok(altered)
    }

    async fn render_sql(&self, steps: &[Step]) -> Result<String> {
        let mut plans = HashMap::new();
        for step in steps {
            let touched: Vec<&TableRef> = match step {
                Step::Rows(ops) => ops.iter().map(|t| &t.table).collect(),
                Step::Keyless { table, .. } => vec![table],
                _ => Vec::new(),
            };
            for t in touched {
                if let Some(target) = self.describe(&t.name.name).await? {
                    plans.insert(t.name.clone(), Arc::new(Plan::new(t, &target)?));
                }
            }
        }
        repair::render(steps, &plans)
    }

    /// A connection in `autocommit = 0` (every statement in a transaction)
    /// and `READ COMMITTED` (no gap locks between concurrent writers);
    /// waits for a table's metadata lock end after a minute, as an error
    /// to retry, rather than never.
    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        self.ensure_checkpoint_table().await?;
        let mut conn = open(&self.shared.endpoint).await?;
        fence::take_writer_slot(
            &mut conn,
            &self.shared.pipeline,
            self.shared.endpoint.database(),
        )
        .await?;
        conn.query_drop(
            "SET SESSION autocommit = 0, SESSION lock_wait_timeout = 60; \
             SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        .await
        .map_err(|e| my_error(e, "setting up a writer's session"))?;
        Ok(Box::new(writer::MySqlWriter::new(
            self.shared.clone(),
            conn,
        )))
    }
}

#[async_trait]
impl TableReader for MySqlSink {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        let mut admin = self.admin.lock().await;
        read::count_rows(&mut admin, &table.name.name, self.condition.as_deref()).await
    }

    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        Ok(self.describe(&table.name.name).await?.is_some())
    }

    async fn declared_shape(&self, table: &TableRef) -> Result<Option<DeclaredShape>> {
        Ok(self
            .describe(&table.name.name)
            .await?
            .map(|target| DeclaredShape {
                columns: target
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.column_type.clone()))
                    .collect(),
                key: target.key,
            }))
    }

    fn restrict(&mut self, condition: &str) -> Result<()> {
        self.condition = Some(condition.to_owned());
        Ok(())
    }

    fn row_digests(&self) -> Vec<&'static str> {
        crate::digest::ROW_DIGESTS.to_vec()
    }

    async fn digest_range(
        &self,
        table: &TableRef,
        range: &ferry_core::KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<ferry_core::RangeDigest>> {
        if !crate::digest::ROW_DIGESTS.contains(&digest) {
            return Ok(None);
        }
        let Some(canons) = self.digest_canons(table).await? else {
            return Ok(None);
        };
        let Some(plan) = crate::digest::DigestPlan::new(&table.name.name, table, &canons) else {
            return Ok(None);
        };
        let decode_key = |i: usize, v| read::decode(&table.columns[i].ty, v);
        let mut admin = self.admin.lock().await;
        plan.digest(
            &mut admin,
            range,
            limit,
            self.condition.as_deref(),
            &decode_key,
        )
        .await
        .map(Some)
    }

    /// Through the key's index, keys only, when it orders as ferry does.
    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        let in_order = self
            .digest_canons(table)
            .await?
            .is_some_and(|canons| crate::digest::key_in_ferry_order(table, &canons));
        if !in_order {
            let got = self.read_rows(table, after, rows.max(1) as usize).await?;
            return Ok(ferry_core::reader::key_of_nth(table, &got, rows));
        }
        let decode_key = |i: usize, v| read::decode(&table.columns[i].ty, v);
        let mut admin = self.admin.lock().await;
        crate::digest::key_after(
            &mut admin,
            &table.name.name,
            table,
            after,
            rows,
            self.condition.as_deref(),
            &decode_key,
        )
        .await
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let mut admin = self.admin.lock().await;
        read::read_rows(
            &mut admin,
            &table.name.name,
            table,
            after,
            limit,
            self.condition.as_deref(),
        )
        .await
    }

    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        let mut admin = self.admin.lock().await;
        read::scan_rows(
            &mut admin,
            &table.name.name,
            table,
            self.condition.as_deref(),
            on_rows,
        )
        .await
    }
}
