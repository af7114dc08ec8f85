//! The sink's writer: one connection applying one transaction at a time.
//!
//! Every statement is prepared once per connection (`prepare_cached`, keyed
//! by its text, which is fixed per table and shape) and executed per row
//! with parameters bound straight from the values — the snapshot load is
//! the hot path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use async_trait::async_trait;
use ferry_core::value::display_key;
use ferry_core::{
    Alteration, CheckpointRecord, Error, ErrorClass, KeyRange, KeylessOp, Result, SinkWriter, Step,
    TableOps, TableRef, TableSchema, Value,
};
use rusqlite::{CachedStatement, Connection, params};

use super::indexes::IndexSource;
use super::target_columns;
use super::wal::{self, Checkpointer};
use crate::connection::{Blocking, db_error, ident};
use crate::temporal::temporal_text;
use crate::types::{Param, sql_literal, target_declared_type};

const UPSERT_CHECKPOINT: &str = "INSERT INTO _ferry_checkpoint(pipeline, scope, value, updated_at) \
     VALUES (?1, ?2, ?3, strftime('%Y-%m-%d %H:%M:%f', 'now')) \
     ON CONFLICT(pipeline, scope) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

pub(crate) struct SqliteWriter {
    state: Blocking<Connection>,
    pipeline: String,
    /// Where tables this writer creates (`Step::Schema` of a table new to
    /// the pipeline) get their indexes from.
    indexes: Option<Arc<IndexSource>>,
    dropper: Dropper,
    checkpointer: Arc<Checkpointer>,
}

impl SqliteWriter {
    pub(crate) fn new(
        conn: Connection,
        path: &Path,
        pipeline: &str,
        indexes: Option<IndexSource>,
    ) -> Self {
        wal::install_hook(&conn);
        SqliteWriter {
            state: Blocking::new(conn, path),
            pipeline: pipeline.to_owned(),
            indexes: indexes.map(Arc::new),
            dropper: Dropper::start(),
            checkpointer: Arc::new(Checkpointer::start(path)),
        }
    }

    /// Runs `f` inside the open transaction; a call outside one would
    /// autocommit statement by statement, which the contract forbids.
    async fn in_txn<R, F>(&self, what: &'static str, f: F) -> Result<R>
    where
        F: FnOnce(&Connection, &Path) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let path = self.state.path.clone();
        self.state
            .run(move |c| {
                if c.is_autocommit() {
                    return Err(Error::fatal(format!(
                        "{what} was called outside a transaction (begin() first)"
                    )));
                }
                f(c, &path)
            })
            .await
    }
}

/// Frees loaded snapshot chunks on a thread of its own. Freeing a chunk
/// (two allocations a row) costs about a tenth of inserting it, and the
/// writer's thread is the snapshot's critical path. At most one chunk waits
/// to be freed; when the thread is behind (or could not be started), the
/// caller frees the chunk itself, so memory stays bounded.
#[derive(Clone)]
struct Dropper(Option<SyncSender<Vec<Vec<Value>>>>);

impl Dropper {
    fn start() -> Self {
        let (tx, rx) = sync_channel::<Vec<Vec<Value>>>(1);
        let spawned = std::thread::Builder::new()
            .name("ferry-sqlite-free".into())
            // Ends when the writer (the only sender) is dropped.
            .spawn(move || rx.into_iter().for_each(drop));
        Dropper(spawned.ok().map(|_| tx))
    }

    fn discard(&self, rows: Vec<Vec<Value>>) {
        if let Some(tx) = &self.0 {
            // Full or gone: `rows` comes back in the error and is freed here.
            let _ = tx.try_send(rows);
        }
    }
}

/// A failed statement: table, key (when known) and statement in the
/// context, the driver error as source, classified by [`db_error`].
fn statement_error(
    path: &Path,
    table: &TableSchema,
    key: Option<&[Value]>,
    sql: &str,
    e: rusqlite::Error,
) -> Error {
    let mut err = db_error(path, &format!("writing to table {}", table.name.name), e)
        .with("table", table.name.name.as_str());
    if let Some(key) = key {
        err = err.with("key", display_key(key));
    }
    err.with("statement", sql)
}

/// A statement prepared once and run for many rows: a cache lookup per
/// row would cost as much as binding the row.
struct Statement<'a> {
    stmt: CachedStatement<'a>,
    sql: &'a str,
    table: &'a TableSchema,
    path: &'a Path,
    /// Reused for the text of dates and times; SQLite copies bound text.
    scratch: String,
}

impl<'a> Statement<'a> {
    fn new(
        c: &'a Connection,
        path: &'a Path,
        table: &'a TableSchema,
        sql: &'a str,
    ) -> Result<Self> {
        let stmt = c
            .prepare_cached(sql)
            .map_err(|e| statement_error(path, table, None, sql, e))?;
        Ok(Statement {
            stmt,
            sql,
            table,
            path,
            scratch: String::with_capacity(40),
        })
    }

    /// Binds `values` in order and executes.
    fn execute<'v>(
        &mut self,
        values: impl IntoIterator<Item = &'v Value>,
    ) -> rusqlite::Result<usize> {
        for (i, v) in values.into_iter().enumerate() {
            if temporal_text(v, &mut self.scratch) {
                self.stmt.raw_bind_parameter(i + 1, self.scratch.as_str())?;
            } else {
                self.stmt.raw_bind_parameter(i + 1, Param(v))?;
            }
        }
        self.stmt.raw_execute()
    }

    /// Executes with `values`; `key` names the row in errors.
    fn run<'v>(
        &mut self,
        values: impl IntoIterator<Item = &'v Value>,
        key: impl Fn() -> Vec<Value>,
    ) -> Result<usize> {
        self.execute(values)
            .map_err(|e| statement_error(self.path, self.table, Some(&key()), self.sql, e))
    }
}

/// Rows per multi-row `INSERT` of a snapshot load: fewer statement
/// executions. Loading 1 M rows of five columns took about 30 % less time
/// with 64 rows per statement than with one, and 7 % less than with 16;
/// more rows per statement gained little more.
const ROWS_PER_INSERT: usize = 64;
/// SQLite's bound-parameter limit (since 3.32).
const MAX_PARAMS: usize = 32_766;

/// Inserts `rows` into `t`, several rows per statement.
fn load_rows(c: &Connection, path: &Path, t: &TableSchema, rows: &[Vec<Value>]) -> Result<()> {
    let per = (MAX_PARAMS / t.columns.len().max(1)).clamp(1, ROWS_PER_INSERT);
    let single = insert_sql(t, 1);
    let mut one = Statement::new(c, path, t, &single)?;
    let mut rest = rows;
    if per > 1 && rows.len() >= per {
        let multi = insert_sql(t, per);
        let mut many = Statement::new(c, path, t, &multi)?;
        let mut chunks = rows.chunks_exact(per);
        for chunk in &mut chunks {
            if let Err(e) = many.execute(chunk.iter().flatten()) {
                // Which row failed? A failed constraint undoes only its
                // statement, so re-running the rows one by one finds it.
                // Any other failure may have ended the transaction: then
                // nothing more is run.
                let err = statement_error(path, t, None, &multi, e);
                if err.class() != ErrorClass::Data || c.is_autocommit() {
                    return Err(err);
                }
                for row in chunk {
                    one.run(row, || t.key_of(row))?;
                }
                return Err(err);
            }
        }
        rest = chunks.remainder();
    }
    for row in rest {
        one.run(row, || t.key_of(row))?;
    }
    Ok(())
}

/// `INSERT` of `rows` rows per execution.
fn insert_sql(t: &TableSchema, rows: usize) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
    let one = format!("({})", vec!["?"; cols.len()].join(", "));
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        ident(&t.name.name),
        cols.join(", "),
        vec![one.as_str(); rows].join(", ")
    )
}

fn upsert_sql(t: &TableSchema) -> String {
    let key: Vec<String> = t.key_names().iter().map(|k| ident(k)).collect();
    let set: Vec<String> = (0..t.columns.len())
        .filter(|&i| !t.is_key_column(i))
        .map(|i| {
            let c = ident(&t.columns[i].name);
            format!("{c} = excluded.{c}")
        })
        .collect();
    let action = if set.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", set.join(", "))
    };
    format!(
        "{} ON CONFLICT ({}) DO {action}",
        insert_sql(t, 1),
        key.join(", ")
    )
}

/// `"k1" = ?n AND "k2" = ?n+1`
fn key_match(t: &TableSchema, first: usize) -> String {
    t.key_names()
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", ident(k), first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `UPDATE` of the columns in `set`, the row found by the key after them.
fn update_sql(t: &TableSchema, set: &[usize]) -> String {
    let assignments: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(p, &i)| format!("{} = ?{}", ident(&t.columns[i].name), p + 1))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        ident(&t.name.name),
        assignments.join(", "),
        key_match(t, set.len() + 1)
    )
}

/// A delete entry is the key; a full-width row is accepted too.
fn delete_key(t: &TableSchema, entry: &[Value]) -> Vec<Value> {
    if entry.len() == t.key.len() {
        entry.to_vec()
    } else {
        t.key_of(entry)
    }
}

fn apply_ops(c: &Connection, path: &Path, ops: &TableOps) -> Result<()> {
    let t = &*ops.table;
    if !ops.deletes.is_empty() {
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            ident(&t.name.name),
            key_match(t, 1)
        );
        let mut stmt = Statement::new(c, path, t, &sql)?;
        for entry in &ops.deletes {
            let key = delete_key(t, entry);
            stmt.run(&key, || key.clone())?;
        }
    }
    let mut updates: HashMap<Vec<usize>, String> = HashMap::new();
    let mut update = |row: &[Value]| -> Result<()> {
        // Key columns identify the row; the other known columns are set.
        let set: Vec<usize> = (0..t.columns.len())
            .filter(|&i| !t.is_key_column(i) && !matches!(row[i], Value::Unchanged))
            .collect();
        if set.is_empty() {
            return Ok(());
        }
        let sql = updates
            .entry(set.clone())
            .or_insert_with(|| update_sql(t, &set));
        let key = t.key_of(row);
        let values = set.iter().map(|&i| &row[i]).chain(&key);
        Statement::new(c, path, t, sql)?.run(values, || key.clone())?;
        Ok(())
    };
    if !ops.upserts.is_empty() && has_other_unique_index(c, path, t)? {
        return apply_upserts_in_two_passes(c, path, ops, &mut update);
    }
    if !ops.upserts.is_empty() {
        let sql = upsert_sql(t);
        let mut stmt = Statement::new(c, path, t, &sql)?;
        for row in &ops.upserts {
            // An upsert with unchanged columns is an update of a row known
            // to exist (see `RowOp::Upsert`).
            if row.iter().any(|v| matches!(v, Value::Unchanged)) {
                update(row)?;
            } else {
                stmt.run(row, || t.key_of(row))?;
            }
        }
    }
    for row in &ops.updates {
        update(row)?;
    }
    Ok(())
}

/// Whether `t` has a unique index besides its key (a `UNIQUE` constraint
/// or a `CREATE UNIQUE INDEX`, copied from a SQLite source or made by
/// hand). Read from the schema SQLite holds in memory: cheap per batch.
fn has_other_unique_index(c: &Connection, path: &Path, t: &TableSchema) -> Result<bool> {
    c.prepare_cached(
        "SELECT count(*) FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin <> 'pk'",
    )
    .and_then(|mut s| s.query_row([&t.name.name], |r| r.get::<_, i64>(0)))
    .map(|n| n > 0)
    .map_err(|e| db_error(path, &format!("reading the indexes of {}", t.name.name), e))
}

/// Upserts of a table with another unique index. The merged rows are a
/// state the source had, so their values are unique together; but one
/// upsert at a time may pass through a state that is not (two rows that
/// swapped a unique value: the first write collides with the second
/// row's old value). So every upserted key is deleted first, then the
/// rows are inserted: at each step the table holds only rows of the final
/// state. Rows with unchanged columns (updates) follow, as before.
fn apply_upserts_in_two_passes(
    c: &Connection,
    path: &Path,
    ops: &TableOps,
    update: &mut dyn FnMut(&[Value]) -> Result<()>,
) -> Result<()> {
    let t = &*ops.table;
    let (full, partial): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) = ops
        .upserts
        .iter()
        .partition(|row| !row.iter().any(|v| matches!(v, Value::Unchanged)));
    let sql = format!(
        "DELETE FROM {} WHERE {}",
        ident(&t.name.name),
        key_match(t, 1)
    );
    let mut delete = Statement::new(c, path, t, &sql)?;
    for row in &full {
        let key = t.key_of(row);
        delete.run(&key, || key.clone())?;
    }
    let insert = insert_sql(t, 1);
    let mut stmt = Statement::new(c, path, t, &insert)?;
    for row in &full {
        stmt.run(row.iter(), || t.key_of(row))?;
    }
    for row in partial.into_iter().chain(&ops.updates) {
        update(row)?;
    }
    Ok(())
}

fn move_key(
    c: &Connection,
    path: &Path,
    t: &TableSchema,
    old_key: &[Value],
    row: &[Value],
) -> Result<()> {
    let set: Vec<usize> = (0..t.columns.len())
        .filter(|&i| !matches!(row[i], Value::Unchanged))
        .collect();
    let sql = update_sql(t, &set);
    let values = set.iter().map(|&i| &row[i]).chain(old_key);
    Statement::new(c, path, t, &sql)?.run(values, || old_key.to_vec())?;
    Ok(())
}

/// Renames what `alter` says was renamed, then adds the columns the new
/// structure has and the target lacks (with the value `alter` gives the
/// rows already there as their default). Added columns are nullable
/// whatever the source says: SQLite cannot add a NOT NULL column without a
/// default.
fn alter(
    c: &Connection,
    path: &Path,
    t: &TableSchema,
    alter: &Alteration,
    indexes: Option<&IndexSource>,
) -> Result<()> {
    let name = &t.name.name;
    // A table new to the pipeline is created, with its source's indexes.
    crate::sink::create_table(c, path, t, indexes)?;
    let read = |c: &Connection| {
        target_columns(c, name)
            .map(|(cols, _)| cols)
            .map_err(|e| db_error(path, &format!("reading the structure of table {name}"), e))
    };
    let mut existing = read(c)?;
    for (old, new) in &alter.renamed {
        if existing.contains(old) && !existing.contains(new) {
            let sql = format!(
                "ALTER TABLE {} RENAME COLUMN {} TO {}",
                ident(name),
                ident(old),
                ident(new)
            );
            c.execute_batch(&sql).map_err(|e| {
                db_error(path, &format!("renaming column {name}.{old}"), e)
                    .with("statement", sql.clone())
            })?;
            tracing::info!(table = %name, from = %old, to = %new, "sqlite target column renamed");
        }
    }
    if !alter.renamed.is_empty() {
        existing = read(c)?;
    }
    for col in t.columns.iter().filter(|c| !existing.contains(&c.name)) {
        let default = match alter.filled.iter().find(|(n, _)| *n == col.name) {
            Some((_, v)) => format!(
                " DEFAULT {}",
                sql_literal(v).map_err(|e| db_error(path, "writing a default value", e))?
            ),
            None => String::new(),
        };
        let sql = format!(
            "ALTER TABLE {} ADD COLUMN {} {}{default}",
            ident(name),
            ident(&col.name),
            target_declared_type(col)
        );
        c.execute_batch(&sql).map_err(|e| {
            db_error(path, &format!("adding column {}.{}", name, col.name), e)
                .with("statement", sql.clone())
        })?;
        tracing::info!(table = %name, column = %col.name, "sqlite target column added");
    }
    for gone in existing.iter().filter(|e| t.column_index(e).is_none()) {
        tracing::warn!(table = %name, column = %gone,
            "column is no longer in the source; it stays in the target and new rows leave it NULL");
    }
    Ok(())
}

/// `WHERE rowid = (one row equal to the image's columns `matched`)`,
/// bound from `?first` on (`IS` matches NULL to NULL).
fn one_row_equal(t: &TableSchema, matched: &[usize], first: usize) -> String {
    let conds: Vec<String> = matched
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} IS ?{}", ident(&t.columns[i].name), first + n))
        .chain(matched.is_empty().then(|| "1".to_owned()))
        .collect();
    format!(
        "rowid = (SELECT rowid FROM {} WHERE {} LIMIT 1)",
        ident(&t.name.name),
        conds.join(" AND ")
    )
}

/// Changes to a keyless table, in order: each update or delete applies to
/// one row equal to its before-image.
fn apply_keyless(c: &Connection, path: &Path, t: &TableSchema, ops: &[KeylessOp]) -> Result<()> {
    let known = |row: &[Value]| -> Vec<usize> {
        (0..row.len())
            .filter(|&i| !matches!(row[i], Value::Unchanged))
            .collect()
    };
    let name = ident(&t.name.name);
    let insert = insert_sql(t, 1);
    for op in ops {
        match op {
            KeylessOp::Insert(row) => {
                Statement::new(c, path, t, &insert)?.run(row, || row.clone())?;
            }
            KeylessOp::Delete(before) => {
                let matched = known(before);
                let sql = format!("DELETE FROM {name} WHERE {}", one_row_equal(t, &matched, 1));
                let values = matched.iter().map(|&i| &before[i]);
                Statement::new(c, path, t, &sql)?.run(values, || before.clone())?;
            }
            KeylessOp::Update { before, after } => {
                let (set, matched) = (known(after), known(before));
                if set.is_empty() {
                    continue;
                }
                let assignments: Vec<String> = set
                    .iter()
                    .enumerate()
                    .map(|(p, &i)| format!("{} = ?{}", ident(&t.columns[i].name), p + 1))
                    .collect();
                let sql = format!(
                    "UPDATE {name} SET {} WHERE {}",
                    assignments.join(", "),
                    one_row_equal(t, &matched, set.len() + 1)
                );
                let values = set
                    .iter()
                    .map(|&i| &after[i])
                    .chain(matched.iter().map(|&i| &before[i]));
                Statement::new(c, path, t, &sql)?.run(values, || before.clone())?;
            }
        }
    }
    Ok(())
}

fn apply_step(
    c: &Connection,
    path: &Path,
    step: &Step,
    indexes: Option<&IndexSource>,
) -> Result<()> {
    match step {
        Step::Rows(ops) => ops.iter().try_for_each(|o| apply_ops(c, path, o)),
        Step::Truncate(tables) => tables.iter().try_for_each(|t| clear(c, path, t)),
        Step::Schema { table, alter: a } => alter(c, path, table, a, indexes),
        Step::MoveKey {
            table,
            old_key,
            row,
        } => move_key(c, path, table, old_key, row),
        Step::Keyless { table, ops } => apply_keyless(c, path, table, ops),
        Step::Stamp { .. } => Ok(()),
        Step::Checked { table, .. } => Err(not_active_active(&table.name)),
        Step::Replace {
            table,
            range,
            rows,
            keep_others,
        } => replace(c, path, table, range, rows, *keep_others),
    }
}

/// Active-active apply (conflict checks) is built for PostgreSQL targets.
fn not_active_active(table: &ferry_core::TableName) -> Error {
    Error::fatal(format!(
        "active-active apply into SQLite is not built yet (table {table})"
    ))
    .with_fix("use a PostgreSQL database for every site, or remove [active_active]")
}

/// An online re-copy chunk: deletes the rows of `range` (row-value
/// comparisons of the key: bytes for text, as ferry orders keys), then
/// writes `rows`.
fn replace(
    c: &Connection,
    path: &Path,
    t: &TableRef,
    range: &KeyRange,
    rows: &[Vec<Value>],
    keep_others: bool,
) -> Result<()> {
    if !keep_others {
        let n = t.key.len();
        let tuple = crate::reader::key_tuple(t);
        let mut conds = Vec::new();
        let mut values: Vec<&Value> = Vec::new();
        if let Some(lower) = range.lower.as_ref().filter(|_| n > 0) {
            conds.push(format!(
                "{tuple} > {}",
                crate::reader::params_tuple(values.len() + 1, n)
            ));
            values.extend(lower);
        }
        if let Some(upper) = range.upper.as_ref().filter(|_| n > 0) {
            conds.push(format!(
                "{tuple} <= {}",
                crate::reader::params_tuple(values.len() + 1, n)
            ));
            values.extend(upper);
        }
        let mut sql = format!("DELETE FROM {}", ident(&t.name.name));
        if !conds.is_empty() {
            sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
        }
        let key = range.lower.clone().unwrap_or_default();
        Statement::new(c, path, t, &sql)?.run(values, || key.clone())?;
    }
    if t.is_keyless() {
        return load_rows(c, path, t, rows);
    }
    let mut ops = TableOps::new(t.clone());
    ops.upserts = rows.to_vec();
    apply_ops(c, path, &ops)
}

fn clear(c: &Connection, path: &Path, t: &TableSchema) -> Result<()> {
    let sql = format!("DELETE FROM {}", ident(&t.name.name));
    c.execute_batch(&sql).map_err(|e| {
        db_error(path, &format!("clearing table {}", t.name.name), e).with("statement", sql.clone())
    })
}

#[async_trait]
impl SinkWriter for SqliteWriter {
    /// `BEGIN IMMEDIATE`: takes the write lock now, so a busy database
    /// fails here (transient) rather than halfway through a batch.
    async fn begin(&mut self) -> Result<()> {
        let path = self.state.path.clone();
        self.state
            .run(move |c| {
                if !c.is_autocommit() {
                    return Err(Error::fatal(
                        "begin() was called while a transaction is open (commit or rollback first)",
                    ));
                }
                c.execute_batch("BEGIN IMMEDIATE")
                    .map_err(|e| db_error(&path, "starting a write transaction", e))
            })
            .await
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        let steps = steps.to_vec();
        let indexes = self.indexes.clone();
        self.in_txn("apply()", move |c, path| {
            steps
                .iter()
                .try_for_each(|s| apply_step(c, path, s, indexes.as_deref()))
        })
        .await
    }

    /// Plain `INSERT`s: the rows are known not to be on the target, and a
    /// duplicate is a data error worth seeing.
    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        self.load_owned(table, rows.to_vec()).await
    }

    /// The rows move to the thread that runs the statements (no copy) and
    /// are freed on another.
    async fn load_owned(&mut self, table: &TableRef, rows: Vec<Vec<Value>>) -> Result<()> {
        let table = TableRef::clone(table);
        let dropper = self.dropper.clone();
        self.in_txn("load()", move |c, path| {
            let result = load_rows(c, path, &table, &rows);
            dropper.discard(rows);
            result
        })
        .await
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        let table = TableRef::clone(table);
        self.in_txn("clear_table()", move |c, path| clear(c, path, &table))
            .await
    }

    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let records = records.to_vec();
        let pipeline = self.pipeline.clone();
        let checkpointer = Arc::clone(&self.checkpointer);
        self.in_txn("commit()", move |c, path| {
            let err = |e| db_error(path, "writing the checkpoint", e);
            let mut stmt = c.prepare_cached(UPSERT_CHECKPOINT).map_err(err)?;
            for r in &records {
                stmt.execute(params![pipeline, r.scope, r.value])
                    .map_err(|e| err(e).with("scope", r.scope.clone()))?;
            }
            let (done, frames) = wal::frames_after(|| c.execute_batch("COMMIT"));
            done.map_err(|e| db_error(path, "committing", e))?;
            checkpointer.committed(c, frames);
            Ok(())
        })
        .await
    }

    async fn rollback(&mut self) -> Result<()> {
        let path: PathBuf = self.state.path.clone();
        self.state
            .run(move |c| {
                if c.is_autocommit() {
                    return Ok(());
                }
                c.execute_batch("ROLLBACK")
                    .map_err(|e| db_error(&path, "rolling back", e))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, TableName};

    fn table() -> TableSchema {
        let col = |name: &str| Column {
            name: name.into(),
            ty: ColumnType::Int64,
            nullable: true,
            source_type: "INTEGER".into(),
            user_type: None,
        };
        TableSchema {
            name: TableName::bare("t"),
            columns: vec![col("a"), col("b"), col("c")],
            key: vec![1, 0],
            version: 1,
            key_deferrable: false,
        }
    }

    #[test]
    fn statement_shapes() {
        let t = table();
        assert_eq!(
            upsert_sql(&t),
            "INSERT INTO \"t\" (\"a\", \"b\", \"c\") VALUES (?, ?, ?) \
             ON CONFLICT (\"b\", \"a\") DO UPDATE SET \"c\" = excluded.\"c\""
        );
        assert_eq!(
            update_sql(&t, &[2]),
            "UPDATE \"t\" SET \"c\" = ?1 WHERE \"b\" = ?2 AND \"a\" = ?3"
        );
        assert_eq!(
            delete_key(&t, &[Value::Int(1), Value::Int(2), Value::Null]),
            [Value::Int(2), Value::Int(1)]
        );
    }
}
