//! One value must not wedge a pipeline. A value ferry cannot read from the
//! source, or one the target refuses, is a data error naming the table,
//! the key and the column, with the way past it: exclude the column (a
//! change already in the source's log cannot be corrected on the source;
//! a source leaves an excluded column unread, so it stops nothing), or
//! correct the value or the target column.
//!
//! A multi-row statement that fails does not say which row or column the
//! server refused, so [`pinpoint`] tries the rows again one value at a time
//! on a connection of its own, in a transaction it rolls back.

use ferry_core::value::display_key;
use ferry_core::{Error, TableSchema, Value};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::apply::Param;
use crate::target::{Shared, Target};

/// The `exclude_columns` entry that leaves `column` of `table` out.
fn exclude_entry(table: &str, column: &str) -> String {
    format!("`exclude_columns = [\"{table}.{column}\"]` under `[tables]`")
}

/// A source value of `table`'s column `column` ferry cannot read (`key`:
/// the row's key, when it could be read).
pub(crate) fn unreadable(
    e: Error,
    table: &TableSchema,
    column: usize,
    key: Option<&[Value]>,
) -> Error {
    let col = &table.columns[column].name;
    let at = key
        .map(|k| format!(" at key {}", display_key(k)))
        .unwrap_or_default();
    let mut out = Error::data(format!(
        "cannot read column {col} of {}{at}: {}",
        table.name,
        e.message()
    ))
    .with("table", table.name.to_string())
    .with("column", col.as_str());
    if let Some(k) = key {
        out = out.with("key", display_key(k));
    }
    out.with_fix(format!(
        "exclude the column with {} and run again: ferry then leaves it unread, in the copy and \
         in every change (a change already in the source's log cannot be corrected on the \
         source); to keep the column, change its type on the source to one ferry reads \
         (docs/types.md) and copy the table again",
        exclude_entry(&table.name.to_string(), col)
    ))
}

/// Decodes a row's values with `decode`; a value that fails in a column
/// `unread` says nothing reads becomes NULL, any other failure an
/// [`unreadable`] error naming the row's key.
pub(crate) fn decode_row(
    table: &TableSchema,
    fields: usize,
    unread: impl Fn(usize) -> bool,
    mut decode: impl FnMut(usize) -> ferry_core::Result<Value>,
) -> ferry_core::Result<Vec<Value>> {
    let mut row = Vec::with_capacity(fields);
    let mut failed = None;
    for i in 0..fields {
        match decode(i) {
            Ok(v) => row.push(v),
            Err(e) => {
                if !unread(i) && failed.is_none() {
                    failed = Some((i, e));
                }
                row.push(Value::Null);
            }
        }
    }
    match failed {
        None => Ok(row),
        Some((i, e)) => {
            let key_read = table
                .key
                .iter()
                .all(|&k| k < row.len() && (k != i) && !matches!(row[k], Value::Null));
            let key = key_read.then(|| table.key_of(&row));
            Err(unreadable(e, table, i, key.as_deref()))
        }
    }
}

/// The value the target refused, found by [`pinpoint`].
pub(crate) struct Refused {
    pub row: usize,
    pub column: usize,
    /// The error writing that value alone.
    pub error: Error,
}

/// After a data error on a statement writing `rows` (columns `cols`) of
/// `t`: which value the target refuses. On a fresh connection, in a
/// transaction rolled back, each column's values go into an empty
/// temporary table of that column's type alone (so a value is judged by
/// its own type, domain and length, not by the other columns), all at once
/// and, when refused, one by one. The probe never reads the target table:
/// the failed transaction may still hold a lock on it (a key built, a
/// truncate) until this returns. `None` when no single value is refused
/// (a constraint of the table, or between rows) or the probe could not
/// run.
pub(crate) async fn pinpoint(
    shared: &Shared,
    t: &Target,
    rows: &[&Vec<Value>],
    cols: &[usize],
) -> Option<Refused> {
    let client = shared.endpoint.connect().await.ok()?;
    let mut setup = vec![
        "BEGIN; SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = '60s'".to_owned(),
    ];
    for &c in cols {
        setup.push(format!(
            "CREATE TEMPORARY TABLE ferry_probe_{c} (v {}) ON COMMIT DROP",
            t.types[c].name
        ));
    }
    client.batch_execute(&setup.join("; ")).await.ok()?;
    let found = probe(&client, t, rows, cols).await;
    let _ = client.batch_execute("ROLLBACK").await;
    found
}

/// Values per probing statement (PostgreSQL binds at most 65,535).
const PROBE_VALUES: usize = 10_000;

async fn probe(
    client: &Client,
    t: &Target,
    rows: &[&Vec<Value>],
    cols: &[usize],
) -> Option<Refused> {
    for &c in cols {
        let values: Vec<(usize, &Value)> = (rows.iter().enumerate())
            .map(|(r, row)| (r, &row[c]))
            .filter(|(_, v)| !matches!(v, Value::Unchanged))
            .collect();
        for chunk in values.chunks(PROBE_VALUES) {
            if insert(client, t, c, chunk).await.is_ok() {
                continue;
            }
            for &(row, v) in chunk {
                if let Err(error) = insert(client, t, c, &[(row, v)]).await {
                    return Some(Refused {
                        row,
                        column: c,
                        error,
                    });
                }
            }
        }
    }
    None
}

/// Inserts `values` into column `c`'s probe table inside a savepoint; the
/// server's (or the encoder's) error when one is refused.
async fn insert(
    client: &Client,
    t: &Target,
    c: usize,
    values: &[(usize, &Value)],
) -> Result<(), Error> {
    let marks: Vec<String> = (1..=values.len())
        .map(|n| format!("({})", t.placeholder(c, n)))
        .collect();
    let params: Vec<Param> = values
        .iter()
        .map(|&(_, value)| Param {
            value,
            kind: &t.types[c].kind,
        })
        .collect();
    let refs: Vec<(&(dyn ToSql + Sync), tokio_postgres::types::Type)> = params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), t.params[c].clone()))
        .collect();
    let sql = format!(
        "INSERT INTO ferry_probe_{c} (v) VALUES {}",
        marks.join(", ")
    );
    let probe = |e| crate::error::pg_error(e, "probing");
    client
        .batch_execute("SAVEPOINT ferry_probe")
        .await
        .map_err(probe)?;
    let result = client.execute_typed(&sql, &refs).await;
    let undo = if result.is_ok() {
        "RELEASE SAVEPOINT ferry_probe"
    } else {
        "ROLLBACK TO SAVEPOINT ferry_probe"
    };
    client.batch_execute(undo).await.map_err(probe)?;
    result.map(|_| ()).map_err(probe)
}

/// For `e`, a data error writing `rows` of `t`: the error naming the
/// table, key and column of the refused value, when [`pinpoint`] finds it.
pub(crate) async fn refused(
    e: &Error,
    shared: &Shared,
    t: &Target,
    rows: &[&Vec<Value>],
    cols: &[usize],
) -> Option<Error> {
    if e.class() != ferry_core::ErrorClass::Data {
        return None;
    }
    let found = pinpoint(shared, t, rows, cols).await?;
    let row = rows[found.row];
    let key: Vec<Value> = t.key.iter().map(|&i| row[i].clone()).collect();
    let col = t.source_cols[found.column].as_str();
    let why = found.error.message().trim_start_matches("probing: ");
    let mut out = Error::data(format!(
        "the target refused the value of column {col} of {} at key {}: {why}",
        t.display,
        display_key(&key),
    ))
    .with("table", t.display.clone())
    .with("key", display_key(&key))
    .with("column", col)
    .with("value", abbreviated(&row[found.column]));
    for (label, value) in e.context() {
        if !matches!(*label, "table" | "keys" | "key") {
            out = out.with(label, value.clone());
        }
    }
    let mut exclude = format!(
        "exclude the column with {} (the source table's name) and run again",
        exclude_entry(&t.display, col)
    );
    let names: Vec<&str> = t.key.iter().map(|&i| t.source_cols[i].as_str()).collect();
    if let Some(skip) = ferry_core::selection::skip_row_fix(&t.display, &names, &key) {
        exclude.push_str(&format!("; or {skip}"));
    }
    Some(out.with_fix(match found.error.fix() {
        // The server's reason has a fix of its own (an enum label the
        // target lacks, say).
        Some(fix) => format!("{fix}; or {exclude}"),
        None => format!(
            "correct the value on the source, widen the target column to take it, or {exclude}"
        ),
    }))
}

fn abbreviated(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((end, _)) => format!("{}... ({} characters)", &s[..end], s.chars().count()),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::{Column, ColumnType, TableName};

    use super::*;

    fn table() -> TableSchema {
        let col = |name: &str| Column {
            name: name.into(),
            ty: ColumnType::Int64,
            nullable: true,
            source_type: "int".into(),
            user_type: None,
        };
        TableSchema {
            name: TableName::new(Some("public"), "m"),
            columns: vec![col("id"), col("a"), col("v")],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        }
    }

    /// Every PostgreSQL value decodes today; a codec failure (a future
    /// type, a malformed message) must still name table, key and column
    /// with the way past it, and an unread column must not stop anything.
    #[test]
    fn a_value_that_does_not_decode_names_table_key_and_column() {
        let t = table();
        let decode = |i: usize| match i {
            1 => Err(Error::data("malformed")),
            i => Ok(Value::Int(i as i64 + 6)),
        };
        let e = decode_row(&t, 3, |_| false, decode).unwrap_err();
        let text = format!("{e} {}", e.fix().unwrap_or_default());
        for part in [
            "cannot read column a of public.m at key (6): malformed",
            "exclude_columns = [\"public.m.a\"]",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        let row = decode_row(&t, 3, |i| i == 1, decode).unwrap();
        assert_eq!(row, vec![Value::Int(6), Value::Null, Value::Int(8)]);
        // A key that did not decode is not named.
        let e = decode_row(
            &t,
            3,
            |_| false,
            |i| match i {
                0 => Err(Error::data("malformed")),
                _ => Ok(Value::Int(1)),
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read column id of public.m: "),
            "{e}"
        );
    }
}
