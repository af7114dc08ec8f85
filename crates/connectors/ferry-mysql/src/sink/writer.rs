//! A sink writer: one connection applying one transaction at a time.
//!
//! The session runs with `autocommit = 0`, so every statement belongs to
//! a transaction; `begin` costs no round trip (the first statement opens
//! the transaction), and `commit` sends the checkpoint upsert and `COMMIT`
//! together. Statements carry their values as literals and as many rows
//! as fit in [`Shared::statement_bytes`](super::Shared): snapshot rows as
//! multi-row `INSERT`s, upserts as multi-row `INSERT ... ON DUPLICATE KEY
//! UPDATE`, deletes as one `DELETE ... WHERE k IN (...)`.
//!
//! Structure changes are DDL, which MySQL/MariaDB commit implicitly: see
//! `checkpoint.rs` for the re-copy markers that keep a crash between the
//! DDL and the checkpoint's commit safe.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use ferry_core::value::display_key;
use ferry_core::{
    CheckpointRecord, Error, ErrorClass, KeyRange, KeylessOp, Result, SinkWriter, Step, TableOps,
    TableRef, TableSchema, Value,
};
use futures_util::StreamExt;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::Shared;
use super::checkpoint;
use super::infile;
use super::statements::{
    delete_one, delete_range, insert_head, on_duplicate, push_delete, push_rows, update_by_key,
    update_one,
};
use super::target::Plan;
use crate::error::my_error;

pub(crate) struct MySqlWriter {
    shared: Arc<Shared>,
    conn: Conn,
    in_tx: bool,
    /// Keyless tables the open transaction wrote (by the source's name):
    /// a DDL's implicit commit marks them for a re-copy.
    keyless_written: BTreeSet<String>,
    /// Re-copy markers the open transaction recorded; its commit deletes them.
    markers: BTreeSet<String>,
    /// Markers of transactions rolled back after their DDL had committed
    /// part of them: what they wrote before it stays, so a retry may
    /// apply it twice. These stay until the next start re-copies the
    /// tables.
    kept: BTreeSet<String>,
}

/// The statement's start, for error messages.
fn abbreviate(sql: &str) -> String {
    if sql.len() <= 300 {
        return sql.to_owned();
    }
    let mut end = 300;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &sql[..end], sql.len())
}

/// The row a multi-row statement's error names (`... at row 3`), counted
/// from 1.
fn failed_row(e: &Error) -> Option<usize> {
    let (_, after) = e.message().rsplit_once(" at row ")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl MySqlWriter {
    pub(crate) fn new(shared: Arc<Shared>, conn: Conn) -> Self {
        MySqlWriter {
            shared,
            conn,
            in_tx: false,
            keyless_written: BTreeSet::new(),
            markers: BTreeSet::new(),
            kept: BTreeSet::new(),
        }
    }

    fn in_transaction(&self, what: &str) -> Result<()> {
        if self.in_tx {
            Ok(())
        } else {
            Err(Error::fatal(format!(
                "{what} was called outside a transaction (begin() first); this is a ferry bug"
            )))
        }
    }

    /// How `t` is written: cached per structure version.
    async fn plan(&mut self, t: &TableSchema) -> Result<Arc<Plan>> {
        if let Some(p) = self.shared.cached_plan(t) {
            return Ok(p);
        }
        let target = super::target::describe(
            &mut self.conn,
            self.shared.endpoint.database(),
            &t.name.name,
        )
        .await?
        .ok_or_else(|| {
            Error::fatal(format!(
                "table {} does not exist in target database {}",
                t.name.name,
                self.shared.endpoint.database()
            ))
            .with("table", t.name.name.clone())
            .with_fix("restart the pipeline: its structure copy creates missing tables")
        })?;
        let plan = Arc::new(Plan::new(t, &target)?);
        self.shared.cache_plan(t, plan.clone());
        Ok(plan)
    }

    /// Runs one statement (or several, `;`-separated) of table `plan`.
    async fn run(&mut self, plan: &Plan, sql: &str, key: Option<&[Value]>) -> Result<()> {
        self.conn.query_drop(sql).await.map_err(|e| {
            let mut err = my_error(e, &format!("writing to table {}", plan.display))
                .with("table", plan.display.clone());
            if let Some(key) = key {
                err = err.with("key", display_key(key));
            }
            err.with("statement", abbreviate(sql))
        })
    }

    /// Multi-row `INSERT`s of `rows` (with `suffix`, an `ON DUPLICATE KEY`
    /// clause or nothing). A data error names the failing row's key.
    async fn insert_rows(
        &mut self,
        t: &TableSchema,
        rows: &[&Vec<Value>],
        suffix: &str,
    ) -> Result<()> {
        let plan = self.plan(t).await?;
        let head = insert_head(&plan);
        let budget = self.shared.statement_bytes;
        let mut start = 0;
        let mut sql = String::with_capacity(budget + budget / 8);
        while start < rows.len() {
            sql.clear();
            sql.push_str(&head);
            let end = push_rows(&mut sql, &plan, t, rows, start, budget)?;
            sql.push_str(suffix);
            if let Err(e) = self.run(&plan, &sql, None).await {
                let row = failed_row(&e)
                    .filter(|_| e.class() == ErrorClass::Data)
                    .and_then(|n| rows[start..end].get(n - 1));
                return Err(match row {
                    Some(row) => e.with("key", display_key(&t.key_of(row))),
                    None => e,
                });
            }
            start = end;
        }
        Ok(())
    }

    /// Snapshot rows through `LOAD DATA LOCAL INFILE`, a piece of at most
    /// `statement_bytes` at a time. A piece the server takes with warnings
    /// or with fewer rows (bad values and duplicates are only warnings
    /// with `LOCAL`, see `infile.rs`) is undone and written as `INSERT`s,
    /// which fail on the bad row. A server that refuses `LOCAL` gets
    /// `INSERT`s from then on.
    async fn load_rows(&mut self, t: &TableSchema, rows: &[&Vec<Value>]) -> Result<()> {
        if !self.shared.infile.load(Ordering::Relaxed) {
            return self.insert_rows(t, rows, "").await;
        }
        let plan = self.plan(t).await?;
        let sql = infile::load_sql(&plan);
        let budget = self.shared.statement_bytes;
        let failed = |e| my_error(e, &format!("loading rows into table {}", plan.display));
        let mut start = 0;
        while start < rows.len() {
            let mut data = Vec::with_capacity(budget + budget / 8);
            let end = infile::push_lines(&mut data, &plan, t, rows, start, budget)?;
            self.conn
                .query_drop("SAVEPOINT ferry_load")
                .await
                .map_err(failed)?;
            let data = bytes::Bytes::from(data);
            self.conn.set_infile_handler(async move {
                Ok(futures_util::stream::once(async move { Ok(data) }).boxed())
            });
            match self.conn.query_drop(sql.as_str()).await {
                Ok(()) => {
                    let taken = self.conn.affected_rows() == (end - start) as u64
                        && self.conn.get_warnings() == 0;
                    if !taken {
                        self.conn
                            .query_drop("ROLLBACK TO SAVEPOINT ferry_load")
                            .await
                            .map_err(failed)?;
                        self.insert_rows(t, &rows[start..end], "").await?;
                    }
                }
                // MySQL 1148, 3948; MariaDB 4166: `local_infile` is off.
                Err(mysql_async::Error::Server(e)) if matches!(e.code, 1148 | 3948 | 4166) => {
                    tracing::info!(
                        "the target refuses LOAD DATA LOCAL INFILE (local_infile is off): loading \
                         with INSERTs, which is slower; SET GLOBAL local_infile = 1 to allow it"
                    );
                    self.shared.infile.store(false, Ordering::Relaxed);
                    return self.insert_rows(t, &rows[start..], "").await;
                }
                Err(e) => return Err(failed(e).with("table", plan.display.clone())),
            }
            start = end;
        }
        Ok(())
    }

    async fn delete_keys(&mut self, t: &TableSchema, keys: &[Vec<Value>]) -> Result<()> {
        let plan = self.plan(t).await?;
        let budget = self.shared.statement_bytes;
        let mut start = 0;
        while start < keys.len() {
            let mut sql = String::new();
            let end = push_delete(&mut sql, &plan, t, keys, start, budget)?;
            self.run(&plan, &sql, None).await?;
            start = end;
        }
        Ok(())
    }

    /// `UPDATE`s, several per round trip; a data error is narrowed down to
    /// its row by running that batch's statements one at a time (an
    /// update that ran already runs again to the same effect).
    async fn run_updates(&mut self, plan: &Plan, updates: Vec<(String, Vec<Value>)>) -> Result<()> {
        let budget = self.shared.statement_bytes;
        let mut at = 0;
        while at < updates.len() {
            let mut end = at;
            let mut size = 0;
            while end < updates.len() && (end == at || size < budget) {
                size += updates[end].0.len() + 1;
                end += 1;
            }
            let batch = &updates[at..end];
            let sql: Vec<&str> = batch.iter().map(|(s, _)| s.as_str()).collect();
            if let Err(e) = self.run(plan, &sql.join(";"), None).await {
                if e.class() != ErrorClass::Data || batch.len() == 1 {
                    return Err(match batch {
                        [(_, key)] => e.with("key", display_key(key)),
                        _ => e,
                    });
                }
                for (sql, key) in batch {
                    self.run(plan, sql, Some(key)).await?;
                }
                return Err(e);
            }
            at = end;
        }
        Ok(())
    }

    async fn apply_rows(&mut self, ops: &TableOps) -> Result<()> {
        let t = &ops.table;
        if t.is_keyless() {
            return Err(Error::fatal(format!(
                "row changes keyed on a table without a key ({}); this is a ferry bug",
                t.name
            )));
        }
        let plan = self.plan(t).await?;
        let keys: Vec<Vec<Value>> = ops
            .deletes
            .iter()
            .map(|d| {
                if d.len() == t.key.len() {
                    d.clone()
                } else {
                    t.key_of(d)
                }
            })
            .collect();
        if !keys.is_empty() {
            self.delete_keys(t, &keys).await?;
        }
        let (full, partial): (Vec<&Vec<Value>>, Vec<&Vec<Value>>) = ops
            .upserts
            .iter()
            .partition(|row| !row.iter().any(|v| matches!(v, Value::Unchanged)));
        if !full.is_empty() {
            if plan.other_unique {
                // Another unique index: delete, then insert, so no row
                // passes through a state that collides with another's
                // old value, and none is updated by the wrong index.
                let keys: Vec<Vec<Value>> = full.iter().map(|r| t.key_of(r)).collect();
                self.delete_keys(t, &keys).await?;
                self.insert_rows(t, &full, "").await?;
            } else {
                self.insert_rows(t, &full, &on_duplicate(&plan, t)).await?;
            }
        }
        let mut updates = Vec::new();
        for row in partial.into_iter().chain(&ops.updates) {
            let key = t.key_of(row);
            if let Some(sql) = update_by_key(&plan, t, row, &key, false)? {
                updates.push((sql, key));
            }
        }
        self.run_updates(&plan, updates).await
    }

    async fn apply_keyless(&mut self, t: &TableRef, ops: &[KeylessOp]) -> Result<()> {
        let plan = self.plan(t).await?;
        self.keyless_written.insert(t.name.to_string());
        let inserts = |a: &KeylessOp, b: &KeylessOp| {
            matches!((a, b), (KeylessOp::Insert(_), KeylessOp::Insert(_)))
        };
        for run in ops.chunk_by(inserts) {
            let (sql, image) = match &run[0] {
                KeylessOp::Insert(_) => {
                    let rows: Vec<&Vec<Value>> = run
                        .iter()
                        .filter_map(|op| match op {
                            KeylessOp::Insert(row) => Some(row),
                            _ => None,
                        })
                        .collect();
                    self.insert_rows(t, &rows, "").await?;
                    continue;
                }
                KeylessOp::Delete(before) => (delete_one(&plan, t, before)?, before),
                KeylessOp::Update { before, after } => match update_one(&plan, t, before, after)? {
                    Some(sql) => (sql, before),
                    None => continue,
                },
            };
            self.run(&plan, &sql, None)
                .await
                .map_err(|e| e.with("row", display_key(image)))?;
        }
        Ok(())
    }

    async fn move_key(&mut self, t: &TableRef, old_key: &[Value], row: &[Value]) -> Result<()> {
        let plan = self.plan(t).await?;
        if let Some(sql) = update_by_key(&plan, t, row, old_key, true)? {
            self.run(&plan, &sql, Some(old_key)).await?;
        }
        Ok(())
    }

    async fn replace(
        &mut self,
        t: &TableRef,
        range: &KeyRange,
        rows: &[Vec<Value>],
        keep_others: bool,
    ) -> Result<()> {
        let plan = self.plan(t).await?;
        if !keep_others {
            let sql = delete_range(&plan, t, range)?;
            self.run(&plan, &sql, None).await?;
        }
        let rows: Vec<&Vec<Value>> = rows.iter().collect();
        if rows.is_empty() {
            return Ok(());
        }
        if t.is_keyless() {
            self.keyless_written.insert(t.name.to_string());
            return self.insert_rows(t, &rows, "").await;
        }
        let mut ops = TableOps::new(t.clone());
        ops.upserts = rows.into_iter().cloned().collect();
        self.apply_rows(&ops).await
    }

    /// `DELETE FROM`: `TRUNCATE` would commit the transaction.
    async fn clear(&mut self, t: &TableRef) -> Result<()> {
        let plan = self.plan(t).await?;
        let sql = format!("DELETE FROM {}", plan.table);
        self.run(&plan, &sql, None).await
    }

    /// A structure change. Its DDL commits what the transaction wrote so
    /// far, so first the markers that make a crash before this
    /// transaction's commit re-copy the tables concerned (see
    /// `checkpoint.rs`), then the DDL, idempotent: it changes only what
    /// differs from `t`.
    async fn alter(&mut self, t: &TableRef, alter: &ferry_core::Alteration) -> Result<()> {
        let mut marked: Vec<String> = std::mem::take(&mut self.keyless_written)
            .into_iter()
            .collect();
        marked.push(t.name.to_string());
        let records: Vec<(String, String)> = marked
            .iter()
            .map(|m| (format!("{}{m}", checkpoint::DDL_MARKER), String::new()))
            .collect();
        let refs: Vec<(&str, &str)> = records
            .iter()
            .map(|(s, v)| (s.as_str(), v.as_str()))
            .collect();
        let sql = checkpoint::upsert_sql(&self.shared.pipeline, &refs);
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| my_error(e, "recording a structure change in the checkpoint table"))?;
        self.markers.extend(marked);
        super::alter::alter(&self.shared, &mut self.conn, t, alter).await?;
        self.shared.forget_plan(&t.name);
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for MySqlWriter {
    async fn begin(&mut self) -> Result<()> {
        if self.in_tx {
            return Err(Error::fatal(
                "begin() was called while a transaction is open; this is a ferry bug",
            ));
        }
        self.in_tx = true;
        Ok(())
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        self.in_transaction("apply()")?;
        for step in steps {
            match step {
                Step::Rows(tables) => {
                    for ops in tables {
                        self.apply_rows(ops).await?;
                    }
                }
                Step::Truncate(tables) => {
                    for t in tables {
                        self.clear(t).await?;
                    }
                }
                Step::Schema { table, alter } => self.alter(table, alter).await?,
                Step::MoveKey {
                    table,
                    old_key,
                    row,
                } => self.move_key(table, old_key, row).await?,
                Step::Keyless { table, ops } => self.apply_keyless(table, ops).await?,
                Step::Stamp { .. } => {}
                Step::Checked { table, .. } => {
                    return Err(Error::fatal(format!(
                        "active-active apply into MySQL/MariaDB is not built yet (table {})",
                        table.name
                    ))
                    .with_fix(
                        "use a PostgreSQL database for every site, or remove [active_active]",
                    ));
                }
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

    /// Plain `INSERT`s: the rows are known not to be on the target, and a
    /// duplicate is an error worth seeing.
    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        self.in_transaction("load()")?;
        if table.is_keyless() {
            self.keyless_written.insert(table.name.to_string());
        }
        let rows: Vec<&Vec<Value>> = rows.iter().collect();
        self.load_rows(table, &rows).await
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        self.in_transaction("clear_table()")?;
        self.clear(table).await
    }

    /// The checkpoint upsert (and the deletion of this transaction's
    /// re-copy markers) and `COMMIT`, in one round trip: the server stops
    /// at the first failing statement, so `COMMIT` runs only after both.
    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        self.in_transaction("commit()")?;
        let mut sql = String::new();
        let tables: Vec<String> = self.markers.difference(&self.kept).cloned().collect();
        if !tables.is_empty() {
            sql.push_str(&checkpoint::delete_markers_sql(
                &self.shared.pipeline,
                &tables,
            ));
            sql.push(';');
        }
        if !records.is_empty() {
            let refs: Vec<(&str, &str)> = records
                .iter()
                .map(|r| (r.scope.as_str(), r.value.as_str()))
                .collect();
            sql.push_str(&checkpoint::upsert_sql(&self.shared.pipeline, &refs));
            sql.push(';');
        }
        sql.push_str("COMMIT");
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| my_error(e, "committing"))?;
        self.in_tx = false;
        self.markers.clear();
        self.keyless_written.clear();
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        self.in_tx = false;
        if !self.markers.is_empty() {
            tracing::warn!(
                tables = ?self.markers,
                "a transaction with a structure change rolled back after the change committed \
                 (MySQL/MariaDB commit DDL implicitly); these tables are copied again at the \
                 next start"
            );
        }
        self.kept.append(&mut self.markers);
        self.keyless_written.clear();
        self.conn
            .query_drop("ROLLBACK")
            .await
            .map_err(|e| my_error(e, "rolling back"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_row_error_names_its_row() {
        let e = Error::data("writing: Out of range value for column 'q' at row 17 (error 1264)");
        assert_eq!(failed_row(&e), Some(17));
        assert_eq!(failed_row(&Error::data("Duplicate entry '1'")), None);
    }
}
