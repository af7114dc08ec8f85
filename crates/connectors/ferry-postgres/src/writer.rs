//! A sink writer: one connection applying one transaction at a time.
//!
//! Snapshot rows go in through binary `COPY`. Merged change steps become
//! few statements per table: one `DELETE ... IN (VALUES ...)`, multi-row
//! `INSERT ... ON CONFLICT DO UPDATE`, and `UPDATE ... FROM (VALUES ...)`
//! per set of present columns, each sent with typed parameters (one round
//! trip, no prepare). `BEGIN` travels with the first statement and the
//! checkpoint upsert with `COMMIT`, so a small transaction costs two round
//! trips.

mod checked;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use ferry_core::value::display_key;
use ferry_core::{
    Alteration, Checkpoint, CheckpointRecord, EncodedRows, Error, KeyRange, KeylessOp, Result,
    SinkWriter, Step, TableName, TableOps, TableRef, Value,
};
use futures_util::SinkExt;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use crate::apply::{
    Param, abbreviate, delete_one_sql, delete_sql, has_array_text, insert_sql, key_params,
    match_columns, move_by_delete_insert_sql, param_refs, row_params, rows_per_statement, settable,
    update_one_sql, update_sql, upsert_from, upsert_sql,
};
use crate::bad_value;
use crate::catalog;
use crate::checkpoint;
use crate::copy;
use crate::error::pg_error;
use crate::structure::{add_key_sql, create_schema_sql, create_table_sql, ensure_user_types};
use crate::target::{Shared, Target, map_target, target_name};
use crate::types::{Kind, TypeCache, column_ddl_type, ident, writable};

/// A row image and the columns of it a statement binds.
type Bound<'a> = (&'a Vec<Value>, Vec<usize>);

/// Upserts of a table at or above this many rows go through `COPY` into a
/// temporary staging table and one merge statement, which beats bind
/// parameters for large batches.
const STAGE_MIN_ROWS: usize = 500;
/// COPY data is sent in pieces of about this size.
const COPY_PIECE: usize = 256 * 1024;

pub(crate) struct PostgresWriter {
    shared: Arc<Shared>,
    client: Client,
    types: TypeCache,
    /// `begin` was called and `BEGIN` is not sent yet.
    begin_pending: bool,
    in_tx: bool,
    /// Tables loaded in the open transaction.
    loaded: Vec<TableRef>,
    /// Tables whose structure the open transaction changed (key built,
    /// altered): their cached mapping is void if it rolls back.
    restructured: Vec<TableName>,
    /// Staging table name per target structure (stable per connection).
    stage_names: HashMap<String, String>,
    /// Staging tables known to exist (a rollback may undo a creation).
    stages_ready: std::collections::HashSet<String>,
    /// Active-active: the open transaction set the source's commit time
    /// and LSN on the session (reset after it ends).
    stamped: bool,
    /// Active-active: the source commit time of the open transaction.
    current_time: Option<i64>,
}

impl PostgresWriter {
    pub fn new(shared: Arc<Shared>, client: Client) -> Self {
        PostgresWriter {
            shared,
            client,
            types: TypeCache::default(),
            begin_pending: false,
            in_tx: false,
            loaded: Vec::new(),
            restructured: Vec::new(),
            stage_names: HashMap::new(),
            stages_ready: Default::default(),
            stamped: false,
            current_time: None,
        }
    }

    /// Drops the cached mappings of tables restructured by a transaction
    /// that rolls back.
    fn forget_restructured(&mut self) {
        let mut map = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for name in self.restructured.drain(..) {
            map.remove(&name);
        }
    }

    /// Starts `COPY table (cols) FROM STDIN (FORMAT binary)`.
    async fn copy_in(
        &self,
        t: &Target,
        table: &str,
    ) -> Result<tokio_postgres::CopyInSink<bytes::Bytes>> {
        let sql = format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            t.cols.join(", ")
        );
        self.client.copy_in(&sql).await.map_err(copy_failed(t))
    }

    /// Streams `rows` into `table (cols)` with binary COPY.
    async fn copy_rows(&self, t: &Target, table: &str, rows: &[&Vec<Value>]) -> Result<()> {
        let fail = copy_failed(t);
        let sink = self.copy_in(t, table).await?;
        futures_util::pin_mut!(sink);
        let kinds: Vec<&Kind> = t.types.iter().map(|ty| &ty.kind).collect();
        let mut buf = BytesMut::with_capacity(COPY_PIECE + 4096);
        copy::copy_header(&mut buf);
        for &row in rows {
            copy::copy_row(row, &kinds, &mut buf).map_err(|e| {
                e.with("table", t.display.clone()).with(
                    "key",
                    display_key(&t.key.iter().map(|&i| row[i].clone()).collect::<Vec<_>>()),
                )
            })?;
            if buf.len() >= COPY_PIECE {
                sink.send(buf.split().freeze()).await.map_err(fail)?;
            }
        }
        copy::copy_trailer(&mut buf);
        sink.send(buf.split().freeze()).await.map_err(fail)?;
        sink.finish().await.map_err(fail)?;
        Ok(())
    }

    /// Streams binary COPY tuples into the table as they are.
    async fn copy_encoded(&self, t: &Target, tuples: Vec<u8>) -> Result<()> {
        let fail = copy_failed(t);
        let sink = self.copy_in(t, &t.qualified).await?;
        futures_util::pin_mut!(sink);
        let mut framing = BytesMut::with_capacity(32);
        copy::copy_header(&mut framing);
        sink.feed(framing.split().freeze()).await.map_err(fail)?;
        // Sent (and flushed) a piece at a time: the connection copies what
        // it is given into its write buffer, which would otherwise grow to
        // a whole chunk per connection and stay that large.
        let tuples = bytes::Bytes::from(tuples);
        for at in (0..tuples.len()).step_by(COPY_PIECE * 4) {
            let end = tuples.len().min(at + COPY_PIECE * 4);
            sink.send(tuples.slice(at..end)).await.map_err(fail)?;
        }
        copy::copy_trailer(&mut framing);
        sink.send(framing.freeze()).await.map_err(fail)?;
        sink.finish().await.map_err(fail)?;
        Ok(())
    }

    /// The staging table of `t` (created on first use): the target's
    /// columns, a column of a type carried as text as `text`.
    async fn stage(&mut self, t: &Target) -> Result<String> {
        self.send_begin().await?;
        let types: Vec<&str> = t.types.iter().map(|ty| ty.name.as_str()).collect();
        let signature = format!("{}({})({})", t.qualified, t.cols.join(","), types.join(","));
        let next = self.stage_names.len() + 1;
        let stage = self
            .stage_names
            .entry(signature.clone())
            .or_insert_with(|| format!("_ferry_stage_{next}"))
            .clone();
        if !self.stages_ready.contains(&signature) {
            let sql = format!(
                "CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS \
                 SELECT {} FROM {} WITH NO DATA",
                t.stage_columns(),
                t.qualified
            );
            self.client.batch_execute(&sql).await.map_err(|e| {
                pg_error(e, "creating a staging table").with("table", t.display.clone())
            })?;
            self.stages_ready.insert(signature);
        }
        Ok(stage)
    }

    /// Large upsert batch: COPY into a staging table, one merge statement.
    async fn upsert_staged(&mut self, t: &Target, rows: &[&Vec<Value>]) -> Result<()> {
        self.through_stage(t, rows, "applying changes", |stage| {
            upsert_from(t, &format!("SELECT {} FROM {stage}", t.unstage_columns()))
        })
        .await
    }

    /// Active-active snapshot rows: those whose key the target lacks,
    /// through the staging table (the others stay as the site has them).
    async fn load_absent(&mut self, t: &Target, rows: &[&Vec<Value>]) -> Result<()> {
        self.through_stage(t, rows, "loading rows", |stage| {
            let on: Vec<String> = t
                .key
                .iter()
                .map(|&i| format!("x.{0} = s.{0}", t.cols[i]))
                .collect();
            format!(
                "INSERT INTO {q} ({}){} SELECT {} FROM {stage} AS s \
                 WHERE NOT EXISTS (SELECT 1 FROM {q} AS x WHERE {})",
                t.cols.join(", "),
                crate::apply::overriding(t),
                t.unstage_columns(),
                on.join(" AND "),
                q = t.qualified
            )
        })
        .await
    }

    /// COPYs `rows` into `t`'s staging table, runs the statement `from`
    /// makes of the stage's name, and empties the stage.
    async fn through_stage(
        &mut self,
        t: &Target,
        rows: &[&Vec<Value>],
        doing: &str,
        from: impl FnOnce(&str) -> String,
    ) -> Result<()> {
        let stage = self.stage(t).await?;
        self.copy_rows(t, &stage, rows).await?;
        let sql = from(&stage);
        self.client
            .batch_execute(&format!("{sql}; TRUNCATE {stage}"))
            .await
            .map_err(|e| {
                pg_error(e, doing)
                    .with("table", t.display.clone())
                    .with("statement", abbreviate(&sql))
            })?;
        Ok(())
    }

    /// Snapshot rows into a table with columns of types carried as text:
    /// binary `COPY` into the staging table, then one `INSERT ... SELECT`
    /// that casts the text to each column's type.
    async fn load_staged(&mut self, t: &Target, rows: &[&Vec<Value>]) -> Result<()> {
        let stage = self.stage(t).await?;
        self.copy_rows(t, &stage, rows).await?;
        let insert = format!(
            "INSERT INTO {} ({}) SELECT {} FROM {stage}",
            t.qualified,
            t.cols.join(", "),
            t.unstage_columns()
        );
        self.client
            .batch_execute(&format!("{insert}; TRUNCATE {stage}"))
            .await
            .map_err(|e| {
                pg_error(e, "loading rows")
                    .with("table", t.display.clone())
                    .with("statement", abbreviate(&insert))
            })?;
        Ok(())
    }

    /// The target mapping with its primary key built: a table created by
    /// ferry gets its key when its snapshot is complete, or before the
    /// first change that needs it (`ON CONFLICT` needs the key).
    async fn keyed_target(&mut self, table: &TableRef) -> Result<Arc<Target>> {
        let t = self.target(table).await?;
        if !t.key_pending {
            return Ok(t);
        }
        self.build_key(&table.name, &t).await?;
        self.target(table).await
    }

    async fn build_key(&mut self, name: &TableName, t: &Target) -> Result<()> {
        let sql = add_key_sql(t);
        self.send_begin().await?;
        self.restructured.push(name.clone());
        // Another sink writing this table (a second pipeline into it) may
        // have built the key since this mapping was read: look under the
        // lock the key build takes anyway, so two builders never race.
        let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", t.qualified);
        let failed =
            |e| pg_error(e, "looking for the table's primary key").with("table", t.display.clone());
        self.client.batch_execute(&lock).await.map_err(failed)?;
        let built: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint \
                 WHERE conrelid = $1::text::regclass AND contype = 'p')",
                &[&t.qualified],
            )
            .await
            .map_err(failed)?
            .get(0);
        if built {
            self.shared
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            return Ok(());
        }
        tracing::info!(table = %t.display, "building the primary key after the snapshot load");
        // The key's sort fits in memory with more than the default 64 MB
        // (5 M bigint keys need about 240 MB): raised for this transaction
        // only, never lowered.
        self.client
            .batch_execute(
                "SELECT set_config('maintenance_work_mem', '1GB', true) FROM pg_catalog.pg_settings \
                 WHERE name = 'maintenance_work_mem' AND setting::bigint < 1048576",
            )
            .await
            .map_err(|e| pg_error(e, "raising maintenance_work_mem for the key build"))?;
        self.client.batch_execute(&sql).await.map_err(|e| {
            pg_error(e, "adding the primary key after the snapshot load")
                .with("table", t.display.clone())
                .with("statement", sql.clone())
        })?;
        // The source's other indexes and unique constraints, built now
        // that the table is loaded (`shape.rs`).
        if let Some(shape) = self.shared.shape(name) {
            let statements = crate::shape::after_load(&t.source_cols, &t.qualified, &shape);
            crate::shape::run_each(&self.client, &t.display, &statements, true).await?;
        }
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    /// Builds the pending keys of tables whose snapshot `records` mark
    /// complete: those loaded in this transaction, and those the records
    /// name (a final chunk may carry no rows).
    async fn build_completed_keys(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let mut complete = Vec::new();
        for r in records.iter().filter(|r| r.scope.starts_with("table:")) {
            if let Ok(cp) = Checkpoint::from_records(std::slice::from_ref(r)) {
                complete.extend(
                    cp.tables
                        .into_iter()
                        .filter(|(_, p)| p.complete)
                        .map(|(n, _)| n),
                );
            }
        }
        if complete.is_empty() {
            return Ok(());
        }
        let mut names: Vec<TableName> = self.loaded.iter().map(|t| t.name.clone()).collect();
        names.extend(complete.iter().map(|n| TableName::parse(n)));
        let pending: Vec<(TableName, Arc<Target>)> = {
            let map = self
                .shared
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut out: Vec<(TableName, Arc<Target>)> = Vec::new();
            for n in names {
                if let Some(t) = map.get(&n).filter(|t| t.key_pending)
                    && !out.iter().any(|(_, o)| o.qualified == t.qualified)
                {
                    out.push((n, t.clone()));
                }
            }
            out
        };
        for (name, t) in pending {
            self.build_key(&name, &t).await?;
        }
        Ok(())
    }

    /// The target mapping for `table`, rebuilt from the catalog when the
    /// table's structure is newer than the cached mapping.
    async fn target(&mut self, table: &TableRef) -> Result<Arc<Target>> {
        if let Some(t) = self.cached(table) {
            return Ok(t);
        }
        let (schema, name) = target_name(&table.name);
        let pg = catalog::describe(&self.client, &mut self.types, &schema, &name)
            .await?
            .ok_or_else(|| {
                Error::fatal(format!(
                    "table {schema}.{name} does not exist on the target"
                ))
                .with_fix("restart the pipeline so it creates the target tables")
            })?;
        let traits = catalog::write_traits(&self.client, pg.oid).await?;
        let target = Arc::new(map_target(table, &pg, &traits, self.shared.major)?);
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.name.clone(), target.clone());
        Ok(target)
    }

    fn cached(&self, table: &TableRef) -> Option<Arc<Target>> {
        let map = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(&table.name).filter(|t| t.matches(table)).cloned()
    }

    /// Runs a statement with typed parameters, sending a pending `BEGIN`
    /// in the same round trip.
    async fn exec(&mut self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<u64> {
        let res = if self.begin_pending {
            self.begin_pending = false;
            self.in_tx = true;
            let (b, r) = tokio::join!(
                self.client.batch_execute("BEGIN"),
                self.client.execute_typed(sql, params)
            );
            b.map_err(|e| pg_error(e, "BEGIN"))?;
            r
        } else {
            self.client.execute_typed(sql, params).await
        };
        res.map_err(|e| pg_error(e, "applying changes").with("statement", abbreviate(sql)))
    }

    async fn send_begin(&mut self) -> Result<()> {
        if self.begin_pending {
            self.begin_pending = false;
            self.in_tx = true;
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| pg_error(e, "BEGIN"))?;
        }
        Ok(())
    }

    /// Changes to a keyless table, in order: runs of inserts as multi-row
    /// `INSERT`s, each update or delete on one row equal to its
    /// before-image (found by a scan: the table has no index to use).
    async fn apply_keyless(&mut self, table: &TableRef, ops: &[KeylessOp]) -> Result<()> {
        let t = self.target(table).await?;
        let context = |e: Error, row: &[Value]| {
            e.with("table", t.display.clone())
                .with("row", display_key(row))
        };
        let inserts = |a: &KeylessOp, b: &KeylessOp| {
            matches!((a, b), (KeylessOp::Insert(_), KeylessOp::Insert(_)))
        };
        for run in ops.chunk_by(inserts) {
            // The statement, the image that names the row in errors, and
            // the columns bound, in parameter order.
            let (sql, image, bound): (String, &Vec<Value>, Vec<Bound>) = match &run[0] {
                KeylessOp::Insert(_) => {
                    let rows: Vec<&Vec<Value>> = run
                        .iter()
                        .filter_map(|op| match op {
                            KeylessOp::Insert(row) => Some(row),
                            _ => None,
                        })
                        .collect();
                    self.insert_rows(&t, &rows)
                        .await
                        .map_err(|e| context(e, rows[0]))?;
                    continue;
                }
                KeylessOp::Delete(before) => {
                    let matched = match_columns(before);
                    (
                        delete_one_sql(&t, &matched),
                        before,
                        vec![(before, matched)],
                    )
                }
                KeylessOp::Update { before, after } => {
                    let mut set = match_columns(after);
                    set.retain(|i| !t.always_identity.contains(i));
                    if set.is_empty() {
                        continue;
                    }
                    let matched = match_columns(before);
                    let sql = update_one_sql(&t, &set, &matched);
                    (sql, before, vec![(after, set), (before, matched)])
                }
            };
            let params: Vec<Param> = bound
                .iter()
                .flat_map(|(row, cols)| row_params(&t, &[row], cols))
                .collect();
            let cols: Vec<usize> = bound.iter().flat_map(|(_, c)| c.iter().copied()).collect();
            let refs = param_refs(&params, &t, 1, &cols);
            self.exec(&sql, &refs)
                .await
                .map_err(|e| context(e, image))?;
        }
        Ok(())
    }

    /// An online re-copy chunk: deletes the target's rows in `range` (in
    /// ferry's key order, as the source read it), then writes `rows`.
    async fn replace(
        &mut self,
        table: &TableRef,
        range: &KeyRange,
        rows: &[Vec<Value>],
        keep_others: bool,
    ) -> Result<()> {
        let t = if table.is_keyless() {
            self.target(table).await?
        } else {
            self.keyed_target(table).await?
        };
        if !keep_others {
            let keys: Vec<&crate::reader::ReadColumn> = t.key_read.iter().collect();
            let sql = match crate::reader::range_predicate(&keys, range)? {
                Some(p) => format!("DELETE FROM {} WHERE {p}", t.qualified),
                None => format!("DELETE FROM {}", t.qualified),
            };
            self.exec(&sql, &[])
                .await
                .map_err(|e| e.with("table", t.display.clone()))?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        if table.is_keyless() {
            let rows: Vec<&Vec<Value>> = rows.iter().collect();
            return self.insert_rows(&t, &rows).await;
        }
        let mut ops = TableOps::new(table.clone());
        ops.upserts = rows.to_vec();
        self.apply_rows(&ops).await
    }

    /// Plain multi-row `INSERT`s (no conflict target: a keyless table).
    async fn insert_rows(&mut self, t: &Target, rows: &[&Vec<Value>]) -> Result<()> {
        let all: Vec<usize> = (0..t.cols.len()).collect();
        for chunk in rows.chunks(rows_per_statement(t.cols.len())) {
            let sql = insert_sql(t, chunk.len());
            let params = row_params(t, chunk, &all);
            let refs = param_refs(&params, t, chunk.len(), &all);
            self.exec(&sql, &refs).await?;
        }
        Ok(())
    }

    async fn apply_rows(&mut self, ops: &TableOps) -> Result<()> {
        let t = self.keyed_target(&ops.table).await?;
        let context = |e: Error, rows: &[&Vec<Value>]| {
            let mut e = e.with("table", t.display.clone());
            if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
                let key = |r: &Vec<Value>| {
                    display_key(&t.key.iter().map(|&i| r[i].clone()).collect::<Vec<_>>())
                };
                e = e.with(
                    "keys",
                    format!("{} .. {} ({} rows)", key(first), key(last), rows.len()),
                );
            }
            e
        };
        // Deletes first: merge guarantees each key appears once per batch.
        let deletes: Vec<&Vec<Value>> = ops.deletes.iter().collect();
        for chunk in deletes.chunks(rows_per_statement(t.key.len())) {
            let sql = delete_sql(&t, chunk.len());
            let params = key_params(&t, chunk);
            let refs = param_refs(&params, &t, chunk.len(), &t.key);
            self.exec(&sql, &refs)
                .await
                .map_err(|e| context(e, chunk))?;
        }
        let (mut upserts, mut updates): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) =
            (Vec::new(), Vec::new());
        for row in &ops.upserts {
            if row.iter().any(|v| matches!(v, Value::Unchanged)) {
                updates.push(row);
            } else {
                upserts.push(row);
            }
        }
        updates.extend(ops.updates.iter());
        let all: Vec<usize> = (0..t.cols.len()).collect();
        if upserts.len() >= STAGE_MIN_ROWS {
            // Rows with an array binary COPY cannot carry stay statements.
            let (by_text, staged): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) =
                upserts.iter().partition(|r| has_array_text(&t, r));
            if !staged.is_empty()
                && let Err(e) = self.upsert_staged(&t, &staged).await
            {
                return Err(self.explain(e, &t, &staged, &all, context).await);
            }
            upserts = by_text;
        }
        for chunk in upserts.chunks(rows_per_statement(t.cols.len())) {
            let sql = upsert_sql(&t, chunk.len());
            let params = row_params(&t, chunk, &all);
            let refs = param_refs(&params, &t, chunk.len(), &all);
            if let Err(e) = self.exec(&sql, &refs).await {
                return Err(self.explain(e, &t, chunk, &all, context).await);
            }
        }
        // Partial updates, grouped by the set of columns they carry.
        let mut groups: HashMap<Vec<usize>, Vec<&Vec<Value>>> = HashMap::new();
        for row in updates {
            let present: Vec<usize> = (0..row.len())
                .filter(|&i| !matches!(row[i], Value::Unchanged) || t.key.contains(&i))
                .collect();
            groups.entry(present).or_default().push(row);
        }
        for (present, rows) in groups {
            if !present.iter().any(|&i| settable(&t, i)) {
                continue;
            }
            for chunk in rows.chunks(rows_per_statement(present.len())) {
                let sql = update_sql(&t, &present, chunk.len());
                let params = row_params(&t, chunk, &present);
                let refs = param_refs(&params, &t, chunk.len(), &present);
                if let Err(e) = self.exec(&sql, &refs).await {
                    return Err(self.explain(e, &t, chunk, &present, context).await);
                }
            }
        }
        Ok(())
    }

    /// `e`, from writing `rows` (columns `cols`) of `t`: when it is a
    /// data error one value explains, the error naming that value's table,
    /// key and column ([`bad_value::refused`]); else `e` with `coarse`
    /// context.
    async fn explain(
        &self,
        e: Error,
        t: &Target,
        rows: &[&Vec<Value>],
        cols: &[usize],
        coarse: impl FnOnce(Error, &[&Vec<Value>]) -> Error,
    ) -> Error {
        match bad_value::refused(&e, &self.shared, t, rows, cols).await {
            Some(pinned) => pinned,
            None => coarse(e, rows),
        }
    }

    async fn move_key(&mut self, table: &TableRef, old_key: &[Value], row: &[Value]) -> Result<()> {
        let t = self.keyed_target(table).await?;
        let present: Vec<usize> = (0..row.len())
            .filter(|&i| !matches!(row[i], Value::Unchanged))
            .collect();
        let set: Vec<String> = present
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = {}", t.cols[i], t.placeholder(i, n + 1)))
            .collect();
        let cond: Vec<String> = t
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "{} = {}",
                    t.cols[i],
                    t.placeholder(i, present.len() + n + 1)
                )
            })
            .collect();
        // PostgreSQL lets no UPDATE set an identity column GENERATED
        // ALWAYS: such a key moves by delete and insert.
        let sql = if t.key.iter().any(|k| t.always_identity.contains(k)) {
            move_by_delete_insert_sql(&t, &present)
        } else {
            format!(
                "UPDATE {} SET {} WHERE {}",
                t.qualified,
                set.join(", "),
                cond.join(" AND ")
            )
        };
        let mut params: Vec<Param> = present
            .iter()
            .map(|&i| Param {
                value: &row[i],
                kind: &t.types[i].kind,
            })
            .collect();
        params.extend(t.key.iter().zip(old_key).map(|(&i, v)| Param {
            value: v,
            kind: &t.types[i].kind,
        }));
        let mut refs: Vec<(&(dyn ToSql + Sync), Type)> = Vec::new();
        for (n, p) in params.iter().enumerate() {
            let col = if n < present.len() {
                present[n]
            } else {
                t.key[n - present.len()]
            };
            refs.push((p as &(dyn ToSql + Sync), t.params[col].clone()));
        }
        self.exec(&sql, &refs).await.map_err(|e| {
            e.with("table", t.display.clone())
                .with("key", display_key(old_key))
        })?;
        Ok(())
    }

    /// Alters the target table to the structure of `table`: renames what
    /// `alter` says was renamed, adds new columns (with the value `alter`
    /// gives the existing rows, as their default), drops columns the
    /// previous structure had and this one does not, and changes types the
    /// target column cannot hold.
    async fn alter(&mut self, table: &TableRef, alter: &Alteration) -> Result<()> {
        let (schema, name) = target_name(&table.name);
        let missing = || {
            Error::fatal(format!(
                "table {schema}.{name} does not exist on the target"
            ))
        };
        let pg = catalog::describe(&self.client, &mut self.types, &schema, &name).await?;
        let Some(mut pg) = pg else {
            // A table new to the pipeline (created on the source while it
            // runs): created here, in the transaction that starts its copy.
            let columns: Vec<&ferry_core::Column> = table.columns.iter().collect();
            self.send_begin().await?;
            ensure_user_types(&self.client, &columns).await?;
            let sql = match create_schema_sql(&self.client, &schema).await? {
                Some(create) => format!("{create}; {}", create_table_sql(table, true)?),
                None => create_table_sql(table, true)?,
            };
            tracing::info!(table = %table.name, "creating the target table");
            self.restructured.push(table.name.clone());
            self.client.batch_execute(&sql).await.map_err(|e| {
                pg_error(e, &format!("creating table {}", table.name))
                    .with("statement", sql.clone())
            })?;
            // Empty, and keyed already: its whole shape at once.
            if let Some(shape) = self.shared.shape(&table.name) {
                let q = format!("{}.{}", ident(&schema), ident(&name));
                let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
                let mut statements = crate::shape::with_table(table, &q, &shape);
                if !table.is_keyless() {
                    statements.extend(crate::shape::after_load(&columns, &q, &shape));
                }
                crate::shape::run_each(&self.client, &q, &statements, true).await?;
            }
            self.target(table).await?;
            return Ok(());
        };
        // Renames come first and alone (one statement each), so the
        // columns they name are found by their new names below.
        let renames: Vec<String> = alter
            .renamed
            .iter()
            .filter(|(old, new)| pg.column(old).is_some() && pg.column(new).is_none())
            .map(|(old, new)| {
                format!(
                    "ALTER TABLE {} RENAME COLUMN {} TO {}",
                    pg.qualified(),
                    ident(old),
                    ident(new)
                )
            })
            .collect();
        if !renames.is_empty() {
            self.send_begin().await?;
            self.restructured.push(table.name.clone());
            for sql in &renames {
                tracing::info!(table = %table.name, statement = %sql, "renaming a target column");
                self.client.batch_execute(sql).await.map_err(|e| {
                    pg_error(e, "renaming a target column").with("statement", sql.clone())
                })?;
            }
            pg = catalog::describe(&self.client, &mut self.types, &schema, &name)
                .await?
                .ok_or_else(missing)?;
        }
        let renamed_from = |n: &str| alter.renamed.iter().any(|(old, _)| old == n);
        let previous: Vec<String> = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&table.name)
            .map(|t| t.source_cols.clone())
            .unwrap_or_default();
        let changed: Vec<&ferry_core::Column> = table
            .columns
            .iter()
            .filter(|c| {
                pg.column(&c.name)
                    .is_none_or(|tc| !tc.kind.as_ref().is_some_and(|k| writable(&c.ty, k)))
            })
            .collect();
        if changed.iter().any(|c| c.user_type.is_some()) {
            self.send_begin().await?;
            ensure_user_types(&self.client, &changed).await?;
        }
        let mut actions = Vec::new();
        for c in changed {
            let ty = column_ddl_type(c)?;
            actions.push(match pg.column(&c.name) {
                None => match alter.filled.iter().find(|(n, _)| *n == c.name) {
                    // Rows already there hold the source's constant default.
                    Some((_, v)) => format!(
                        "ADD COLUMN {} {ty} DEFAULT {}",
                        ident(&c.name),
                        crate::binary::literal(v, &ty)?
                    ),
                    None => format!("ADD COLUMN {} {ty}", ident(&c.name)),
                },
                Some(_) => format!("ALTER COLUMN {0} TYPE {ty} USING {0}::{ty}", ident(&c.name)),
            });
        }
        for old in previous
            .iter()
            .filter(|o| table.column_index(o).is_none() && !renamed_from(o))
        {
            if pg.column(old).is_some() {
                actions.push(format!("DROP COLUMN {}", ident(old)));
            }
        }
        if !actions.is_empty() {
            let sql = format!("ALTER TABLE {} {}", pg.qualified(), actions.join(", "));
            tracing::info!(table = %table.name, statement = %sql, "altering the target table");
            self.send_begin().await?;
            self.restructured.push(table.name.clone());
            self.client.batch_execute(&sql).await.map_err(|e| {
                pg_error(e, "altering the target table").with("statement", sql.clone())
            })?;
        }
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&table.name);
        self.target(table).await?;
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for PostgresWriter {
    async fn begin(&mut self) -> Result<()> {
        if self.in_tx || self.begin_pending {
            return Err(Error::fatal(
                "begin called inside an open transaction; this is a ferry bug",
            ));
        }
        self.begin_pending = true;
        Ok(())
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        for step in steps {
            match step {
                Step::Rows(tables) => {
                    for ops in tables {
                        self.apply_rows(ops).await?;
                    }
                }
                Step::Truncate(tables) => {
                    let mut names = Vec::new();
                    for t in tables {
                        names.push(self.target(t).await?.qualified.clone());
                    }
                    if !names.is_empty() {
                        let sql = format!("TRUNCATE {}", names.join(", "));
                        self.exec(&sql, &[]).await?;
                    }
                }
                Step::Schema { table, alter } => self.alter(table, alter).await?,
                Step::MoveKey {
                    table,
                    old_key,
                    row,
                } => self.move_key(table, old_key, row).await?,
                Step::Keyless { table, ops } => self.apply_keyless(table, ops).await?,
                Step::Stamp {
                    position,
                    commit_time_micros,
                } => self.stamp(position, *commit_time_micros).await?,
                Step::Checked { table, ops } => self.apply_checked(table, ops).await?,
                Step::Replace {
                    table,
                    range,
                    rows,
                    keep_others,
                } => self.replace(table, range, rows, *keep_others).await?,
            }
        }
        Ok(())
    }

    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let t = self.target(table).await?;
        self.send_begin().await?;
        if !self.loaded.iter().any(|l| l.name == table.name) {
            self.loaded.push(table.clone());
        }
        if self.shared.active.is_some() && !t.key_pending && !t.key.is_empty() {
            // Active-active: the site may hold rows already (its own, or
            // copies from another site): only the missing ones go in.
            let rows: Vec<&Vec<Value>> = rows.iter().collect();
            return self.load_absent(&t, &rows).await;
        }
        // Rows with an array binary COPY cannot carry go in by INSERT.
        let (by_text, rows): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) =
            rows.iter().partition(|r| has_array_text(&t, r));
        let loaded = if rows.is_empty() {
            Ok(())
        } else if t.has_text_columns() {
            self.load_staged(&t, &rows).await
        } else {
            self.copy_rows(&t, &t.qualified, &rows).await
        };
        let loaded = match loaded {
            Ok(()) if !by_text.is_empty() => self.insert_rows(&t, &by_text).await,
            other => other,
        };
        let rows = if by_text.is_empty() {
            rows
        } else {
            [rows, by_text].concat()
        };
        match loaded {
            Ok(()) => Ok(()),
            Err(e) => {
                let all: Vec<usize> = (0..t.cols.len()).collect();
                Err(self.explain(e, &t, &rows, &all, |e, _| e).await)
            }
        }
    }

    async fn load_encoded(&mut self, table: &TableRef, rows: EncodedRows) -> Result<()> {
        if rows.rows == 0 {
            return Ok(());
        }
        let t = self.target(table).await?;
        if t.encoding.as_deref() != Some(rows.encoding.as_str()) {
            return Err(Error::fatal(format!(
                "target table {} no longer has the column types the snapshot of {} was \
                 started for ({})",
                t.display, table.name, rows.encoding
            ))
            .with_fix("restart the pipeline: it copies the remaining rows decoded"));
        }
        self.send_begin().await?;
        if !self.loaded.iter().any(|l| l.name == table.name) {
            self.loaded.push(table.clone());
        }
        self.copy_encoded(&t, rows.data).await
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        let t = self.target(table).await?;
        if self.shared.active.is_some() {
            // Active-active: the table is this site's data too, never
            // emptied by a copy from another site (ADR 0014).
            tracing::info!(table = %t.display, "active-active: the copy adds missing rows only");
            return Ok(());
        }
        let sql = format!("TRUNCATE {}", t.qualified);
        self.exec(&sql, &[]).await?;
        Ok(())
    }

    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let result = self.commit_inner(records).await;
        let reset = self.end_stamp().await;
        result.and(reset)
    }

    async fn rollback(&mut self) -> Result<()> {
        let result = self.rollback_inner().await;
        let reset = self.end_stamp().await;
        result.and(reset)
    }
}

impl PostgresWriter {
    /// After a stamped transaction: the session's origin LSN and time
    /// must not carry over to the next transaction (a snapshot chunk, an
    /// idle checkpoint), which commits with its own time.
    async fn end_stamp(&mut self) -> Result<()> {
        self.current_time = None;
        if std::mem::take(&mut self.stamped) {
            self.client
                .batch_execute("SELECT pg_replication_origin_xact_reset()")
                .await
                .map_err(|e| pg_error(e, "resetting the session's origin commit time"))?;
        }
        Ok(())
    }

    async fn commit_inner(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        self.build_completed_keys(records).await?;
        self.loaded.clear();
        self.restructured.clear();
        let pipeline = self.shared.pipeline.clone();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        params.push(&pipeline);
        for r in records {
            params.push(&r.scope);
            params.push(&r.value);
        }
        let typed: Vec<(&(dyn ToSql + Sync), Type)> =
            params.iter().map(|p| (*p, Type::TEXT)).collect();
        let sql = checkpoint::upsert_sql(records.len());
        // Active-active: the origin's time and LSN are reset in the same
        // round trip as the commit (off the commit order's critical path).
        let commit_sql = if self.stamped {
            "COMMIT; SELECT pg_replication_origin_xact_reset()"
        } else {
            "COMMIT"
        };
        if records.is_empty() {
            if self.in_tx {
                self.client
                    .batch_execute(commit_sql)
                    .await
                    .map_err(|e| pg_error(e, "COMMIT"))?;
                self.stamped = false;
            }
            self.in_tx = false;
            self.begin_pending = false;
            return Ok(());
        }
        let pending = std::mem::take(&mut self.begin_pending);
        // One round trip: [BEGIN,] checkpoint upsert, COMMIT. If the upsert
        // fails, COMMIT of the failed transaction rolls it back.
        let begin = async {
            if pending {
                self.client.batch_execute("BEGIN").await
            } else {
                Ok(())
            }
        };
        let (b, w, c) = tokio::join!(
            begin,
            self.client.execute_typed(&sql, &typed),
            self.client.batch_execute(commit_sql)
        );
        self.in_tx = false;
        b.map_err(|e| pg_error(e, "BEGIN"))?;
        w.map_err(|e| pg_error(e, "writing the checkpoint"))?;
        c.map_err(|e| pg_error(e, "COMMIT"))?;
        // The reset went with the COMMIT (`end_stamp` has nothing to do).
        self.stamped = false;
        Ok(())
    }

    async fn rollback_inner(&mut self) -> Result<()> {
        self.begin_pending = false;
        self.loaded.clear();
        self.stages_ready.clear();
        self.forget_restructured();
        if self.in_tx {
            self.in_tx = false;
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| pg_error(e, "ROLLBACK"))?;
        }
        Ok(())
    }
}

/// The error of a failed `COPY` into `t`.
fn copy_failed(t: &Target) -> impl Fn(tokio_postgres::Error) -> Error + Copy + '_ {
    |e| pg_error(e, "copying rows").with("table", t.display.clone())
}
