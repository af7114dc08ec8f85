//! What a target table looks like (`information_schema`), and how a ferry
//! table maps onto it: the [`Plan`] every writer statement is built from.

use ferry_core::{ColumnType, Error, Result, TableSchema};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::encode::Fit;
use crate::connection::quote_ident;
use crate::error::my_error;

/// One column of a target table.
#[derive(Debug, Clone)]
pub(crate) struct TargetColumn {
    pub name: String,
    /// `COLUMN_TYPE`: `bigint(20) unsigned`, `varchar(40)`.
    pub column_type: String,
    /// `DATA_TYPE`: `bigint`, `varchar`.
    pub data_type: String,
    /// Characters (text) or bytes (binary) it holds at most.
    pub max_len: Option<u64>,
    pub fit: Fit,
}

/// A target table as `information_schema` shows it.
#[derive(Debug, Clone)]
pub(crate) struct TargetTable {
    pub name: String,
    pub columns: Vec<TargetColumn>,
    /// The primary key's columns, in order.
    pub key: Vec<String>,
    /// A unique index besides the primary key: an upsert must not use
    /// `ON DUPLICATE KEY UPDATE`, which would update whichever row
    /// collides on it.
    pub other_unique: bool,
}

impl TargetTable {
    pub fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

fn text(row: &mut Row, i: usize) -> String {
    match row.take::<mysql_async::Value, _>(i) {
        Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(&b).into_owned(),
        Some(mysql_async::Value::Int(n)) => n.to_string(),
        Some(mysql_async::Value::UInt(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn number(row: &mut Row, i: usize) -> Option<u64> {
    match row.take::<mysql_async::Value, _>(i)? {
        mysql_async::Value::Int(n) => u64::try_from(n).ok(),
        mysql_async::Value::UInt(n) => Some(n),
        mysql_async::Value::Bytes(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
        _ => None,
    }
}

/// `table` of database `db`, `None` when it does not exist.
pub(crate) async fn describe(
    conn: &mut Conn,
    db: &str,
    table: &str,
) -> Result<Option<TargetTable>> {
    let failed = |e| my_error(e, &format!("reading the structure of target table {table}"));
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, \
                    CHARACTER_MAXIMUM_LENGTH \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await
        .map_err(failed)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let columns = rows
        .into_iter()
        .map(|mut r| {
            let data_type = text(&mut r, 2).to_ascii_lowercase();
            let (precision, scale) = (number(&mut r, 3), number(&mut r, 4));
            let fit = match (data_type.as_str(), precision, scale) {
                ("decimal", Some(p), Some(s)) => Fit::Decimal {
                    precision: p as u32,
                    scale: s as u32,
                },
                _ => Fit::Any,
            };
            TargetColumn {
                name: text(&mut r, 0),
                column_type: text(&mut r, 1),
                data_type,
                max_len: number(&mut r, 5),
                fit,
            }
        })
        .collect();
    let indexes: Vec<Row> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (db, table),
        )
        .await
        .map_err(failed)?;
    let mut key = Vec::new();
    let mut other_unique = false;
    for mut r in indexes {
        let (index, column, non_unique) = (text(&mut r, 0), text(&mut r, 1), text(&mut r, 2));
        if index == "PRIMARY" {
            key.push(column);
        } else if non_unique == "0" {
            other_unique = true;
        }
    }
    Ok(Some(TargetTable {
        name: table.to_owned(),
        columns,
        key,
        other_unique,
    }))
}

/// Whether a target column can take every value of a ferry column of type
/// `ty` (else the structure copy alters it). Lenient where it cannot
/// tell: a type it does not know is taken as able.
pub(crate) fn holds(ty: &ColumnType, c: &TargetColumn) -> bool {
    let int_width = |t: &str| match t {
        "tinyint" | "bit" => 1,
        "smallint" | "year" => 2,
        "mediumint" => 3,
        "int" | "integer" => 4,
        "bigint" => 8,
        _ => 0,
    };
    let dt = c.data_type.as_str();
    let textual = matches!(
        dt,
        "char"
            | "varchar"
            | "tinytext"
            | "text"
            | "mediumtext"
            | "longtext"
            | "json"
            | "enum"
            | "set"
    );
    match ty {
        ColumnType::Bool => int_width(dt) >= 1 || dt == "decimal",
        ColumnType::Int16 => int_width(dt) >= 2 || dt == "decimal",
        ColumnType::Int32 => int_width(dt) >= 4 || dt == "decimal",
        ColumnType::Int64 => int_width(dt) >= 8 || dt == "decimal",
        ColumnType::Float32 => matches!(dt, "float" | "double"),
        ColumnType::Float64 => dt == "double",
        ColumnType::Decimal { precision, scale } => match c.fit {
            Fit::Decimal {
                precision: p,
                scale: s,
            } => {
                let (want_p, want_s) = super::structure::decimal(*precision, *scale);
                s >= want_s && p - s >= want_p - want_s
            }
            Fit::Any => textual || matches!(dt, "double"),
        },
        ColumnType::Text { max_len, .. } => {
            textual && max_len.is_none_or(|n| c.max_len.is_none_or(|m| m >= u64::from(n)))
                || !textual && max_len.is_none() && !is_binary(dt) && !is_number(dt)
        }
        ColumnType::Bytes => is_binary(dt),
        ColumnType::Date => matches!(dt, "date" | "datetime" | "timestamp"),
        ColumnType::Time => dt == "time",
        ColumnType::Timestamp | ColumnType::TimestampTz => matches!(dt, "datetime" | "timestamp"),
        _ => true,
    }
}

fn is_binary(dt: &str) -> bool {
    matches!(
        dt,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
    )
}

fn is_number(dt: &str) -> bool {
    matches!(
        dt,
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal" | "float" | "double"
    )
}

/// How the columns of one ferry table are written to its target table.
#[derive(Debug)]
pub(crate) struct Plan {
    /// `` `orders` ``
    pub table: String,
    /// The bare name, for messages.
    pub display: String,
    /// Quoted column names, in the ferry table's order.
    pub cols: Vec<String>,
    pub fits: Vec<Fit>,
    /// Column kinds a match of a keyless row compares specially.
    pub json: Vec<bool>,
    pub other_unique: bool,
    /// The ferry table this plan was made for (its version and columns).
    version: u32,
    names: Vec<String>,
}

impl Plan {
    /// The plan for `t` onto `target`; every column of `t` must exist.
    pub fn new(t: &TableSchema, target: &TargetTable) -> Result<Plan> {
        let mut fits = Vec::with_capacity(t.columns.len());
        let mut json = Vec::with_capacity(t.columns.len());
        for c in &t.columns {
            let tc = target.column(&c.name).ok_or_else(|| {
                Error::fatal(format!(
                    "target table {} has no column {}",
                    target.name, c.name
                ))
                .with("table", target.name.clone())
                .with_fix(
                    "let ferry add it: restart the pipeline (the structure copy alters the table)",
                )
            })?;
            fits.push(tc.fit);
            json.push(tc.data_type == "json");
        }
        Ok(Plan {
            table: quote_ident(&target.name),
            display: target.name.clone(),
            cols: t.columns.iter().map(|c| quote_ident(&c.name)).collect(),
            fits,
            json,
            other_unique: target.other_unique,
            version: t.version,
            names: t.columns.iter().map(|c| c.name.clone()).collect(),
        })
    }

    /// Made for this structure of the table.
    pub fn matches(&self, t: &TableSchema) -> bool {
        self.version == t.version
            && self.names.len() == t.columns.len()
            && self.names.iter().zip(&t.columns).all(|(n, c)| *n == c.name)
    }
}
