//! Table structure from `information_schema`: columns in ferry's types,
//! the key, and how to decode each column's values.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::{Column, Error, Result, Selection, TableName, TableRef, TableSchema};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::my_error;
use crate::types::{ColumnInfo, Decode, map_column};

/// A table as ferry reads it from this server.
#[derive(Debug, Clone)]
pub(crate) struct MyTable {
    pub table: TableRef,
    /// How to decode each column, aligned with `table.columns`.
    pub decode: Vec<Decode>,
    /// Each column's place among all the table's columns (the selection
    /// may leave some out; row events carry them all).
    pub ordinals: Vec<usize>,
    /// The names of all the table's columns, in order.
    pub all_columns: Vec<String>,
    /// Each column's default as `information_schema` spells it, aligned
    /// with `table.columns`.
    pub defaults: Vec<Option<String>>,
}

type ColumnRow = (
    String,
    String,
    String,
    String,
    String,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<String>,
);

/// The base tables of `database` that `selection` selects (all when
/// `None`), by bare name. A column of a type ferry cannot carry is a
/// fatal error naming table and column, unless the selection leaves it
/// unread.
pub(crate) async fn read_tables(
    conn: &mut Conn,
    database: &str,
    selection: Option<&Selection>,
) -> Result<Vec<MyTable>> {
    let doing = format!("reading the structure of database {database}");
    let names: Vec<String> = conn
        .exec(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY table_name",
            (database,),
        )
        .await
        .map_err(|e| my_error(e, &doing))?;
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| !n.starts_with("ferry_") && !n.starts_with("_ferry"))
        .filter(|n| selection.is_none_or(|s| s.selects(&TableName::bare(n))))
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let columns: Vec<ColumnRow> = conn
        .exec(
            "SELECT table_name, column_name, data_type, column_type, is_nullable, \
             numeric_precision, numeric_scale, character_maximum_length, character_set_name, \
             column_default \
             FROM information_schema.columns WHERE table_schema = ? \
             ORDER BY table_name, ordinal_position",
            (database,),
        )
        .await
        .map_err(|e| my_error(e, &doing))?;
    let keys: Vec<(String, String, String, u64)> = conn
        .exec(
            "SELECT table_name, index_name, column_name, non_unique \
             FROM information_schema.statistics WHERE table_schema = ? \
             ORDER BY table_name, index_name = 'PRIMARY' DESC, index_name, seq_in_index",
            (database,),
        )
        .await
        .map_err(|e| my_error(e, &doing))?;
    // MariaDB's JSON is LONGTEXT with a json_valid() check.
    let json_checks: Vec<(String, String)> = conn
        .exec(
            "SELECT table_name, check_clause FROM information_schema.check_constraints \
             WHERE constraint_schema = ?",
            (database,),
        )
        .await
        .unwrap_or_default();
    let mut tables = Vec::new();
    for name in names {
        let table_name = TableName::bare(&name);
        let mut cols = Vec::new();
        let mut decode = Vec::new();
        let mut ordinals = Vec::new();
        let mut all_columns = Vec::new();
        let mut defaults = Vec::new();
        for (
            ordinal,
            (
                _,
                column,
                data_type,
                column_type,
                nullable,
                precision,
                scale,
                max_len,
                charset,
                default,
            ),
        ) in columns.iter().filter(|c| c.0 == name).enumerate()
        {
            all_columns.push(column.clone());
            let json = json_checks.iter().any(|(t, clause)| {
                *t == name
                    && clause
                        .replace('`', "")
                        .contains(&format!("json_valid({column})"))
            });
            let info = ColumnInfo {
                data_type: data_type.to_lowercase(),
                column_type: column_type.clone(),
                precision: *precision,
                scale: *scale,
                max_len: *max_len,
                charset: charset.clone(),
                json,
            };
            let (ty, how) = match map_column(&info) {
                Ok(mapped) => mapped,
                Err(what) if selection.is_some_and(|s| s.unread(&table_name, column)) => {
                    let _ = what;
                    continue;
                }
                Err(what) => {
                    return Err(Error::fatal(format!(
                        "column {name}.{column} has {what}, which ferry cannot carry"
                    ))
                    .with_fix(format!(
                        "leave the column out: exclude_columns = [\"{name}.{column}\"] in the \
                         pipeline file, or change its type"
                    )));
                }
            };
            cols.push(Column {
                name: column.clone(),
                ty,
                nullable: nullable == "YES",
                source_type: column_type.clone(),
                user_type: None,
            });
            decode.push(how);
            ordinals.push(ordinal);
            defaults.push(default.clone());
        }
        let key = choose_key(&name, &cols, &keys);
        tables.push(MyTable {
            table: Arc::new(TableSchema {
                name: table_name,
                columns: cols,
                key,
                version: 1,
                key_deferrable: false,
            }),
            decode,
            ordinals,
            all_columns,
            defaults,
        });
    }
    Ok(tables)
}

/// The primary key; else the first unique index whose columns are all NOT
/// NULL (it identifies rows as a key does); else none (a keyless table).
fn choose_key(table: &str, cols: &[Column], keys: &[(String, String, String, u64)]) -> Vec<usize> {
    let mut indexes: BTreeMap<(bool, &str), Vec<&str>> = BTreeMap::new();
    for (t, index, column, non_unique) in keys {
        if t == table && *non_unique == 0 {
            indexes
                .entry((index != "PRIMARY", index.as_str()))
                .or_default()
                .push(column.as_str());
        }
    }
    for columns in indexes.values() {
        let positions: Option<Vec<usize>> = columns
            .iter()
            .map(|c| cols.iter().position(|col| col.name == *c && !col.nullable))
            .collect();
        if let Some(positions) = positions {
            return positions;
        }
    }
    Vec::new()
}
