//! The SQLite sink: creates target tables, writes through one writer
//! connection (SQLite has one writer at a time), and keeps the checkpoint
//! in `_ferry_checkpoint`, committed in the same transaction as the data.
//!
//! Durability: WAL with `synchronous=NORMAL`. A commit is in the WAL file
//! when `COMMIT` returns, so it survives a crash or `kill -9` of ferry; an
//! OS crash or power loss may lose the last commits, but data and
//! checkpoint are lost together, so ferry resumes from what is there.

mod indexes;
mod repair;
mod wal;
mod writer;

pub use indexes::IndexSource;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Error, Result, Sink, SinkInfo,
    SinkWriter, TableName, TableReader, TableRef, TableSchema, Value,
};
use rusqlite::{Connection, TransactionBehavior};

use crate::connection::{Blocking, db_error, ident, open_target};
use crate::types::{has_text_affinity, target_declared_type};

const CREATE_CHECKPOINT: &str = "CREATE TABLE IF NOT EXISTS _ferry_checkpoint(\
     pipeline TEXT NOT NULL, scope TEXT NOT NULL, value TEXT NOT NULL, \
     updated_at TEXT NOT NULL, PRIMARY KEY(pipeline, scope))";

/// Validated settings of a SQLite target.
#[derive(Debug, Clone)]
pub struct SqliteSinkConfig {
    /// The target database file; created when missing.
    pub path: PathBuf,
    /// Pipeline name: the key of this pipeline's checkpoint records.
    pub pipeline: String,
    /// The SQLite source whose indexes each table the sink creates gets
    /// too (SQLite → SQLite; see `sink/indexes.rs`). `None`: tables get
    /// their columns and key only.
    pub indexes_from: Option<IndexSource>,
}

/// A SQLite database written by ferry.
pub struct SqliteSink {
    cfg: SqliteSinkConfig,
    /// For checkpoint reads, structure changes, checks and verify reads;
    /// writes go through [`SinkWriter`]s, each with its own connection.
    conn: Blocking<Connection>,
    /// The pipeline's lock file once [`Sink::fence`] locked it (see
    /// `fence.rs`); closing it releases the lock.
    fence: std::sync::Mutex<Option<std::fs::File>>,
    /// `ferry verify --where`: reads see only rows for which it holds.
    condition: Option<String>,
}

impl SqliteSink {
    /// Opens (creating if needed) the target. A read-only file or an
    /// unwritable directory is a fatal error naming the path. The
    /// checkpoint table comes with the structure copy
    /// ([`Sink::ensure_tables`]) or the first writer, so a run refused
    /// before either leaves no trace of ferry in the target.
    pub fn open(cfg: SqliteSinkConfig) -> Result<Self> {
        let conn = open_target(&cfg.path)?;
        Ok(SqliteSink {
            conn: Blocking::new(conn, &cfg.path),
            cfg,
            fence: std::sync::Mutex::new(None),
            condition: None,
        })
    }
}

fn checkpoint_table_exists(c: &Connection, path: &Path) -> Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
         AND name = '_ferry_checkpoint')",
        [],
        |r| r.get(0),
    )
    .map_err(|e| db_error(path, "looking for the checkpoint table", e))
}

/// This pipeline's checkpoint records, decoded.
/// A target without the checkpoint table holds no checkpoint.
pub(crate) fn load_checkpoint(c: &Connection, path: &Path, pipeline: &str) -> Result<Checkpoint> {
    if !checkpoint_table_exists(c, path)? {
        return Ok(Checkpoint::default());
    }
    let records = c
        .prepare_cached(
            "SELECT scope, value FROM _ferry_checkpoint WHERE pipeline = ?1 ORDER BY scope",
        )
        .and_then(|mut s| {
            s.query_map([pipeline], |r| {
                Ok(CheckpointRecord {
                    scope: r.get(0)?,
                    value: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| db_error(path, "reading the checkpoint", e))?;
    Checkpoint::from_records(&records)
}

/// `CREATE TABLE` for a target table: logical types mapped by
/// [`target_declared_type`] (a SQLite source's declared types verbatim),
/// `NOT NULL` kept, the key (if any) as primary key. A one-column key
/// declared `INTEGER` is the rowid, as it is on a SQLite source.
/// `constraints` are more table constraints (`UNIQUE (...)`).
fn create_table_sql(table: &TableSchema, constraints: &[String]) -> String {
    let mut parts: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let ty = target_declared_type(c);
            let mut def = ident(&c.name);
            if !ty.is_empty() {
                def.push(' ');
                def.push_str(&ty);
            }
            if !c.nullable {
                def.push_str(" NOT NULL");
            }
            def
        })
        .collect();
    // A keyless table gets none: its rows are found by all their columns.
    if !table.is_keyless() {
        let key: Vec<String> = table.key_names().iter().map(|k| ident(k)).collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    parts.extend(constraints.iter().cloned());
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        ident(&table.name.name),
        parts.join(", ")
    )
}

/// Column names of an existing table, and its primary key in order.
pub(crate) fn target_columns(
    c: &Connection,
    table: &str,
) -> rusqlite::Result<(Vec<String>, Vec<String>)> {
    let cols: Vec<(String, i64)> = c
        .prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut key: Vec<&(String, i64)> = cols.iter().filter(|c| c.1 > 0).collect();
    key.sort_by_key(|c| c.1);
    let key = key.into_iter().map(|c| c.0.clone()).collect();
    Ok((cols.into_iter().map(|c| c.0).collect(), key))
}

/// Creates `table` if missing, with the source's indexes when `indexes`
/// says where they are. Returns whether the table was created.
pub(crate) fn create_table(
    c: &Connection,
    path: &Path,
    table: &TableSchema,
    indexes: Option<&IndexSource>,
) -> Result<bool> {
    let name = &table.name.name;
    let exists = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| db_error(path, &format!("looking for table {name}"), e))?
        > 0;
    if exists {
        return Ok(false);
    }
    let found = match indexes {
        Some(from) => indexes::SourceIndexes::read(from, table)?,
        None => indexes::SourceIndexes::default(),
    };
    let sql = create_table_sql(table, &found.constraints(table));
    c.execute_batch(&sql).map_err(|e| {
        db_error(path, &format!("creating table {name}"), e).with("statement", sql.clone())
    })?;
    found.create(c, path, table)?;
    Ok(true)
}

/// Creates `table` if missing. Returns whether an existing one lacks
/// columns of it (the writer's `Step::Schema` adds them).
fn ensure_table(
    c: &Connection,
    path: &Path,
    table: &TableSchema,
    indexes: Option<&IndexSource>,
) -> Result<bool> {
    let name = &table.name.name;
    create_table(c, path, table, indexes)?;
    let (existing, key) = target_columns(c, name)
        .map_err(|e| db_error(path, &format!("reading the structure of table {name}"), e))?;
    let altered = table.columns.iter().any(|c| !existing.contains(&c.name));
    warn_numeric_json(c, path, table)?;
    let want: Vec<&str> = table.key_names();
    if key != want {
        // Upserts name the key in ON CONFLICT; any other key makes them fail.
        return Err(Error::fatal(format!(
            "target table {name} has primary key ({}) but the source key is ({})",
            key.join(", "),
            want.join(", ")
        ))
        .with("table", name.as_str())
        .with_fix(
            "drop the target table so ferry recreates it, or map the pipeline to another table",
        ));
    }
    Ok(altered)
}

/// A JSON column of an existing target (created by ferry before it
/// declared `JSON_TEXT`, or by hand) whose affinity is not TEXT stores a
/// document that is a bare number as a number: `12345678901234567890`
/// would lose digits. SQLite cannot change a column's type in place, so
/// this is a warning with the fix, not an error.
fn warn_numeric_json(c: &Connection, path: &Path, table: &TableSchema) -> Result<()> {
    let name = &table.name.name;
    let declared: Vec<(String, String)> = c
        .prepare("SELECT name, type FROM pragma_table_info(?1)")
        .and_then(|mut s| {
            s.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| db_error(path, &format!("reading the structure of table {name}"), e))?;
    for col in table
        .columns
        .iter()
        .filter(|c| c.ty == ferry_core::ColumnType::Json)
    {
        if let Some((_, ty)) = declared
            .iter()
            .find(|(n, ty)| *n == col.name && !has_text_affinity(ty))
        {
            tracing::warn!(
                table = %name, column = %col.name, declared = %ty,
                "target column is not of TEXT affinity: a JSON document that is a bare number \
                 is stored as a number and may lose digits; to keep it exactly, recreate the \
                 table with the column declared JSON_TEXT (or drop it so ferry recreates it)"
            );
        }
    }
    Ok(())
}

#[async_trait]
impl CheckpointStore for SqliteSink {
    async fn load(&self) -> Result<Checkpoint> {
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        self.conn
            .run(move |c| load_checkpoint(c, &path, &pipeline))
            .await
    }

    async fn clear(&self) -> Result<()> {
        let path = self.cfg.path.clone();
        let pipeline = self.cfg.pipeline.clone();
        self.conn
            .run(move |c| {
                if !checkpoint_table_exists(c, &path)? {
                    return Ok(());
                }
                c.execute(
                    "DELETE FROM _ferry_checkpoint WHERE pipeline = ?1",
                    [&pipeline],
                )
                .map_err(|e| db_error(&path, "clearing the checkpoint", e))?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Sink for SqliteSink {
    /// SQLite allows one writer at a time.
    fn info(&self) -> SinkInfo {
        SinkInfo { max_writers: 1 }
    }

    /// An exclusive `flock` on `<target file>.ferry-<pipeline>.lock`, held
    /// until this sink is dropped; a second caller is refused at once (the
    /// OS drops a dead process's locks itself, so there is nothing to wait
    /// for). See `fence.rs`.
    async fn fence(&self) -> Result<()> {
        let mut held = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            *held = Some(crate::fence::lock(&self.cfg.path, &self.cfg.pipeline)?);
        }
        Ok(())
    }

    async fn identity(&self) -> Result<Option<String>> {
        crate::fence::identity(&self.cfg.path).map(Some)
    }

    async fn check(&self) -> Vec<CheckItem> {
        crate::check::target(&self.conn, &self.cfg.pipeline).await
    }

    /// Creates missing tables and reports existing ones that lack columns;
    /// an existing table must have the same primary key. One transaction
    /// for all tables.
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        let tables = tables.to_vec();
        let path = self.cfg.path.clone();
        let indexes = self.cfg.indexes_from.clone();
        self.conn
            .run(move |c| {
                let err = |e| db_error(&path, "creating target tables", e);
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(err)?;
                tx.execute_batch(CREATE_CHECKPOINT).map_err(err)?;
                let mut altered = Vec::new();
                for table in &tables {
                    if ensure_table(&tx, &path, table, indexes.as_ref())? {
                        altered.push(table.name.clone());
                    }
                }
                tx.commit().map_err(err)?;
                Ok(altered)
            })
            .await
    }

    async fn render_sql(&self, steps: &[ferry_core::Step]) -> Result<String> {
        repair::render(steps)
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        let path = self.cfg.path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = open_target(&path)?;
            conn.execute_batch(CREATE_CHECKPOINT)
                .map_err(|e| db_error(&path, "creating the checkpoint table", e))?;
            Ok::<_, Error>(conn)
        })
        .await
        .map_err(|e| Error::fatal(format!("SQLite worker task failed: {e}")))??;
        Ok(Box::new(writer::SqliteWriter::new(
            conn,
            &self.cfg.path,
            &self.cfg.pipeline,
            self.cfg.indexes_from.clone(),
        )))
    }
}

#[async_trait]
impl TableReader for SqliteSink {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        crate::reader::count_rows(&self.conn, table).await
    }

    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        crate::reader::has_table(&self.conn, table).await
    }

    async fn declared_shape(&self, table: &TableRef) -> Result<Option<ferry_core::DeclaredShape>> {
        crate::reader::declared_shape(&self.conn, table).await
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
            &crate::reader::Side::Target,
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
            &crate::reader::Side::Target,
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
            &crate::reader::Side::Target,
            self.condition.as_deref(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, TableName};

    #[test]
    fn create_table_maps_types_and_key() {
        let t = TableSchema {
            name: TableName::new(Some("public"), "or\"ders"),
            columns: vec![
                Column {
                    name: "id".into(),
                    ty: ColumnType::Int32,
                    nullable: false,
                    source_type: "int4".into(),
                    user_type: None,
                },
                Column {
                    name: "amount".into(),
                    ty: ColumnType::Decimal {
                        precision: Some(12),
                        scale: Some(2),
                    },
                    nullable: true,
                    source_type: "numeric(12,2)".into(),
                    user_type: None,
                },
                Column {
                    name: "any".into(),
                    ty: ColumnType::Dynamic,
                    nullable: true,
                    source_type: String::new(),
                    user_type: None,
                },
                // A SQLite source's declared type, kept verbatim.
                Column {
                    name: "v".into(),
                    ty: ColumnType::Dynamic,
                    nullable: true,
                    source_type: "varchar(20)".into(),
                    user_type: None,
                },
            ],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        };
        assert_eq!(
            create_table_sql(&t, &["UNIQUE (\"amount\")".to_owned()]),
            "CREATE TABLE IF NOT EXISTS \"or\"\"ders\" (\"id\" INTEGER NOT NULL, \
             \"amount\" DECIMAL_TEXT(12,2), \"any\", \"v\" varchar(20), PRIMARY KEY (\"id\"), UNIQUE (\"amount\"))"
        );
    }
}
