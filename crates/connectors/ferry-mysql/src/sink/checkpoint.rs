//! The checkpoint table in the target database: one row per pipeline and
//! scope, written by a writer in the transaction whose data it covers
//! (InnoDB, so it commits or rolls back with the rows).
//!
//! It also holds *re-copy markers* (scope [`DDL_MARKER`]`<table>`): MySQL
//! and MariaDB commit every DDL statement implicitly, so a structure
//! change cannot share a transaction with the checkpoint. Before a writer
//! runs one, it records a marker for the altered table (and for every
//! keyless table the transaction wrote, whose changes a replay would
//! apply twice); the DDL's implicit commit makes the markers durable, and
//! the transaction's own commit deletes them with the checkpoint. A
//! marker found at start-up means a crash fell between the two: the
//! structure copy reports the table as altered, and the pipeline copies
//! it again. Markers are never handed to [`ferry_core::Checkpoint`].

use ferry_core::{Checkpoint, CheckpointRecord, Result};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::encode::push_quoted;
use crate::connection::quote_literal;
use crate::error::my_error;

/// The checkpoint table, in the target database.
pub const CHECKPOINT_TABLE: &str = "_ferry_checkpoint";

/// Scope prefix of re-copy markers.
pub(crate) const DDL_MARKER: &str = "mysql-ddl-pending:";

/// `CREATE TABLE` for the checkpoint table. The key's columns are binary
/// strings: scopes compare byte for byte.
pub(crate) fn create_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{CHECKPOINT_TABLE}` (\
           pipeline VARBINARY(255) NOT NULL, scope VARBINARY(700) NOT NULL, \
           value LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
           updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
           PRIMARY KEY (pipeline, scope)) ENGINE=InnoDB"
    )
}

/// The upsert of `records` of `pipeline`.
pub(crate) fn upsert_sql(pipeline: &str, records: &[(&str, &str)]) -> String {
    let mut out =
        format!("INSERT INTO `{CHECKPOINT_TABLE}` (pipeline, scope, value, updated_at) VALUES ");
    for (n, (scope, value)) in records.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push('(');
        push_quoted(&mut out, pipeline);
        out.push(',');
        push_quoted(&mut out, scope);
        out.push(',');
        push_quoted(&mut out, value);
        out.push_str(",UTC_TIMESTAMP(6))");
    }
    out.push_str(" ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)");
    out
}

/// Deletes the re-copy markers of `tables`.
pub(crate) fn delete_markers_sql(pipeline: &str, tables: &[String]) -> String {
    let mut out = format!("DELETE FROM `{CHECKPOINT_TABLE}` WHERE pipeline = ");
    push_quoted(&mut out, pipeline);
    out.push_str(" AND scope IN (");
    for (n, t) in tables.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&quote_literal(&format!("{DDL_MARKER}{t}")));
    }
    out.push(')');
    out
}

/// Whether `e` says the table does not exist (error 1146).
pub(crate) fn is_missing_table(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1146)
}

/// Every record of `pipeline`, markers included; none when the table
/// does not exist.
async fn records(conn: &mut Conn, pipeline: &str) -> Result<Vec<(String, String)>> {
    let sql = format!(
        "SELECT CAST(scope AS CHAR CHARACTER SET utf8mb4), value FROM `{CHECKPOINT_TABLE}` \
         WHERE pipeline = ? ORDER BY scope"
    );
    match conn.exec::<(String, String), _, _>(sql, (pipeline,)).await {
        Err(e) if is_missing_table(&e) => Ok(Vec::new()),
        r => r.map_err(|e| my_error(e, "reading the checkpoint")),
    }
}

/// The pipeline's checkpoint.
pub(crate) async fn load(conn: &mut Conn, pipeline: &str) -> Result<Checkpoint> {
    let records: Vec<CheckpointRecord> = records(conn, pipeline)
        .await?
        .into_iter()
        .filter(|(scope, _)| !scope.starts_with(DDL_MARKER))
        .map(|(scope, value)| CheckpointRecord { scope, value })
        .collect();
    Checkpoint::from_records(&records)
}

/// The tables (by the source's name) with a re-copy marker.
pub(crate) async fn marked_tables(conn: &mut Conn, pipeline: &str) -> Result<Vec<String>> {
    Ok(records(conn, pipeline)
        .await?
        .into_iter()
        .filter_map(|(scope, _)| scope.strip_prefix(DDL_MARKER).map(str::to_owned))
        .collect())
}

/// Forgets the pipeline's records (markers too: a reset copies again).
pub(crate) async fn clear(conn: &mut Conn, pipeline: &str) -> Result<()> {
    let sql = format!("DELETE FROM `{CHECKPOINT_TABLE}` WHERE pipeline = ?");
    match conn.exec_drop(sql, (pipeline,)).await {
        Err(e) if is_missing_table(&e) => Ok(()),
        r => r.map_err(|e| my_error(e, "clearing the checkpoint")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_quotes_every_part() {
        assert_eq!(
            upsert_sql("p'1", &[("applied", "x")]),
            "INSERT INTO `_ferry_checkpoint` (pipeline, scope, value, updated_at) VALUES \
             ('p''1','applied','x',UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE value = \
             VALUES(value), updated_at = VALUES(updated_at)"
        );
    }
}
