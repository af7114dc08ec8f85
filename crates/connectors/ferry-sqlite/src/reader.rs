//! Reading rows in key order: SQL text for a table's columns and key, row
//! conversion, and the [`TableReader`](ferry_core::TableReader) queries the
//! source and the sink share.

use std::sync::Arc;

use ferry_core::canonical::{CANONICAL_DIGEST, CANONICAL_MD5_DIGEST, HashSum, row_hash_by};
use ferry_core::selection::{RowFilter, Selection};
use ferry_core::value::display_key;
use ferry_core::{ColumnType, Error, KeyRange, RangeDigest, Result, TableRef, TableSchema, Value};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::connection::{Blocking, db_error, ident};
use crate::types::{Param, display_raw, to_value};

/// `"a", "b", ...`: every column, in schema order.
pub(crate) fn column_list(table: &TableSchema) -> String {
    table
        .columns
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `("k1", "k2")`: the key as a row value, for comparisons.
pub(crate) fn key_tuple(table: &TableSchema) -> String {
    format!("({})", key_order(table))
}

/// `"k1", "k2"`: the key, for `ORDER BY`.
pub(crate) fn key_order(table: &TableSchema) -> String {
    table
        .key_names()
        .iter()
        .map(|k| ident(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(?3, ?4)`: `n` numbered parameters starting at `first`.
pub(crate) fn params_tuple(first: usize, n: usize) -> String {
    let p: Vec<String> = (first..first + n).map(|i| format!("?{i}")).collect();
    format!("({})", p.join(", "))
}

/// Which database a reader reads: a value that does not fit its column is
/// corrected where it is.
#[derive(Debug, Clone)]
pub(crate) enum Side {
    /// The source, with the pipeline's row filters: a row they leave out
    /// may hold values that do not fit.
    Source(Option<Arc<dyn RowFilter>>),
    /// A target ferry writes (read back by `ferry verify`).
    Target,
}

impl Side {
    pub(crate) fn source(selection: &Selection) -> Side {
        Side::Source(selection.row_filter.clone())
    }
}

/// Converts one result row (columns in schema order) to values, reporting
/// a value that does not fit its column with table, column, key and value.
pub(crate) fn convert_row(
    table: &TableSchema,
    row: &rusqlite::Row<'_>,
    side: &Side,
) -> Result<Vec<Value>> {
    decode_row(
        table,
        |i| {
            row.get_ref(i)
                .map_err(|e| Error::fatal(format!("reading {}", table.name)).with_source(e))
        },
        side,
    )
}

/// Decodes a stored row, `cell(i)` the value of column `i`. A value that
/// does not fit its column's declared type is a data error naming table,
/// column, key and value, with the fixes. On the source the pipeline's
/// filter is asked first: a row it leaves out whatever that value is goes
/// on with the value [`Value::Unchanged`] (the filter drops the row before
/// any target sees it), and a warning records the row.
pub(crate) fn decode_row<'r>(
    table: &TableSchema,
    cell: impl Fn(usize) -> Result<ValueRef<'r>>,
    side: &Side,
) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(table.columns.len());
    let mut misfit = None;
    for (i, col) in table.columns.iter().enumerate() {
        match to_value(&col.ty, cell(i)?) {
            Ok(v) => out.push(v),
            Err(why) => {
                misfit.get_or_insert((i, why));
                out.push(Value::Unchanged);
            }
        }
    }
    let Some((column, why)) = misfit else {
        return Ok(out);
    };
    let key: Vec<String> = table
        .key
        .iter()
        .map(|&k| cell(k).map(display_raw).unwrap_or_default())
        .collect();
    let key = format!("({})", key.join(", "));
    if let Side::Source(Some(filter)) = side
        && filter.leaves_out(table, &out)
    {
        tracing::warn!(
            table = %table.name,
            key,
            column = table.columns[column].name,
            "a value that does not fit its declared type, in a row the pipeline's filter \
             leaves out: the row is skipped"
        );
        return Ok(out);
    }
    let values: Vec<Value> = table.key.iter().map(|&k| out[k].clone()).collect();
    Err(value_error(table, column, cell(column)?, &why, side, &values).with("key", key))
}

/// A stored value that does not fit its column's declared type, in the row
/// with key `key` (the key's values, [`Value::Unchanged`] where not known).
fn value_error(
    table: &TableSchema,
    column: usize,
    raw: ValueRef<'_>,
    why: &str,
    side: &Side,
    key: &[Value],
) -> Error {
    let col = &table.columns[column];
    let (place, fix) = match side {
        Side::Source(_) => {
            let mut fix = format!(
                "correct the value at the source, or exclude the column \
                 (`exclude_columns = [\"{}.{}\"]`)",
                table.name, col.name
            );
            let names = table.key_names();
            if let Some(skip) =
                ferry_core::selection::skip_row_fix(&table.name.to_string(), &names, key)
            {
                fix.push_str(&format!("; or {skip}"));
            }
            ("", fix)
        }
        Side::Target => (
            "target ",
            format!(
                "the target holds a value ferry does not write in this form (changed on the \
                 target, or written by an older ferry): correct it on the target, or re-copy \
                 the table (`ferry resync <pipeline file> {}`)",
                table.name
            ),
        ),
    };
    Error::data(format!(
        "value in {place}{}.{} (declared {:?}) {why}",
        table.name, col.name, col.source_type
    ))
    .with("table", table.name.to_string())
    .with("column", col.name.as_str())
    .with("value", display_raw(raw))
    .with_fix(fix)
}

pub(crate) async fn count_rows(conn: &Blocking<Connection>, table: &TableRef) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM {}", ident(&table.name.name));
    let path = conn.path.clone();
    conn.run(move |c| {
        c.query_row(&sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| db_error(&path, "counting rows", e).with("statement", sql.clone()))
    })
    .await
}

pub(crate) async fn has_table(conn: &Blocking<Connection>, table: &TableRef) -> Result<bool> {
    let name = table.name.name.clone();
    let path = conn.path.clone();
    conn.run(move |c| {
        crate::capture::table_exists(c, &name)
            .map_err(|e| db_error(&path, "looking the table up", e))
    })
    .await
}

pub(crate) async fn declared_shape(
    conn: &Blocking<Connection>,
    table: &TableRef,
) -> Result<Option<ferry_core::DeclaredShape>> {
    let name = table.name.name.clone();
    let path = conn.path.clone();
    conn.run(move |c| {
        let err = |e| db_error(&path, "reading the table's structure", e);
        if !crate::capture::table_exists(c, &name).map_err(err)? {
            return Ok(None);
        }
        // (name, declared type, position in the primary key)
        let raw: Vec<(String, String, i64)> = c
            .prepare(
                "SELECT name, type, pk FROM pragma_table_xinfo(?1) WHERE hidden <> 1 ORDER BY cid",
            )
            .and_then(|mut s| {
                s.query_map([&name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(err)?;
        let mut key: Vec<(i64, String)> = raw
            .iter()
            .filter(|c| c.2 > 0)
            .map(|c| (c.2, c.0.clone()))
            .collect();
        key.sort();
        Ok(Some(ferry_core::DeclaredShape {
            columns: raw.into_iter().map(|(n, t, _)| (n, t)).collect(),
            key: key.into_iter().map(|(_, n)| n).collect(),
        }))
    })
    .await
}

/// Serves [`ferry_core::TableReader::key_after`]: the key `rows` rows past
/// `after`, through the key's index (keys only are read).
pub(crate) async fn key_after(
    conn: &Blocking<Connection>,
    table: &TableRef,
    after: Option<&[Value]>,
    rows: u64,
    condition: Option<&str>,
) -> Result<Option<Vec<Value>>> {
    let table = TableRef::clone(table);
    let after = after.map(<[Value]>::to_vec);
    let condition = condition.map(|c| format!("({c})"));
    let path = conn.path.clone();
    conn.run(move |c| {
        let mut conds: Vec<String> = condition.into_iter().collect();
        if after.is_some() {
            conds.push(format!(
                "{} > {}",
                key_tuple(&table),
                params_tuple(1, table.key.len())
            ));
        }
        let sql = format!(
            "SELECT {} FROM {} {} ORDER BY {} LIMIT 1 OFFSET {}",
            key_order(&table),
            ident(&table.name.name),
            where_all(&conds),
            key_order(&table),
            rows.max(1) - 1
        );
        let fail = |e| {
            db_error(&path, "reading keys", e)
                .with("table", table.name.to_string())
                .with("statement", sql.clone())
        };
        let mut stmt = c.prepare_cached(&sql).map_err(fail)?;
        for (i, v) in after.iter().flatten().enumerate() {
            stmt.raw_bind_parameter(i + 1, Param(v)).map_err(fail)?;
        }
        let mut found = stmt.raw_query();
        let Some(row) = found.next().map_err(fail)? else {
            return Ok(None);
        };
        table
            .key
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let raw = row.get_ref(i).map_err(fail)?;
                to_value(&table.columns[k].ty, raw).map_err(|why| {
                    Error::data(format!("a key of {} {why}", table.name))
                        .with("value", display_raw(raw))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    })
    .await
}

pub(crate) async fn read_rows(
    conn: &Blocking<Connection>,
    table: &TableRef,
    after: Option<&[Value]>,
    limit: usize,
    side: &Side,
    condition: Option<&str>,
) -> Result<Vec<Vec<Value>>> {
    let table = TableRef::clone(table);
    let after = after.map(<[Value]>::to_vec);
    let path = conn.path.clone();
    let side = side.clone();
    let condition = condition.map(str::to_owned);
    conn.run(move |c| {
        read_rows_in(
            c,
            &path,
            &table,
            after.as_deref(),
            limit,
            &side,
            condition.as_deref(),
        )
    })
    .await
}

/// `WHERE` and the conditions that hold (none: nothing).
fn where_all(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    }
}

/// Up to `limit` rows of `table` with key after `after`, in key order, on
/// `c` (inside whatever transaction it has open); only those for which
/// `condition` holds, when given. A table without a key is read whole, in
/// rowid order.
pub(crate) fn read_rows_in(
    c: &Connection,
    path: &std::path::Path,
    table: &TableSchema,
    after: Option<&[Value]>,
    limit: usize,
    side: &Side,
    condition: Option<&str>,
) -> Result<Vec<Vec<Value>>> {
    let n = table.key.len();
    let mut conds: Vec<String> = condition.map(|c| format!("({c})")).into_iter().collect();
    let sql = if table.is_keyless() {
        format!(
            "SELECT {} FROM {} {} ORDER BY rowid",
            column_list(table),
            ident(&table.name.name),
            where_all(&conds)
        )
    } else {
        if after.is_some() {
            conds.push(format!("{} > {}", key_tuple(table), params_tuple(2, n)));
        }
        let filter = where_all(&conds);
        format!(
            "SELECT {} FROM {} {filter} ORDER BY {} LIMIT ?1",
            column_list(table),
            ident(&table.name.name),
            key_order(table)
        )
    };
    let fail = |e| {
        let mut err = db_error(path, "reading rows", e)
            .with("table", table.name.to_string())
            .with("statement", sql.clone());
        if let Some(k) = after {
            err = err.with("key", display_key(k));
        }
        err
    };
    let mut stmt = c.prepare_cached(&sql).map_err(fail)?;
    if !table.is_keyless() {
        stmt.raw_bind_parameter(1, limit as i64).map_err(fail)?;
        for (i, v) in after.iter().copied().flatten().enumerate() {
            stmt.raw_bind_parameter(i + 2, Param(v)).map_err(fail)?;
        }
    }
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(fail)? {
        out.push(convert_row(table, row, side)?);
    }
    Ok(out)
}

/// Every row of a table without a key, in rowid order (every table ferry
/// creates has one), a page at a time.
pub(crate) async fn scan_rows(
    conn: &Blocking<Connection>,
    table: &TableRef,
    on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    side: &Side,
    condition: Option<&str>,
) -> Result<()> {
    const PAGE: i64 = 5_000;
    let also = condition.map(|c| format!(" AND ({c})")).unwrap_or_default();
    let mut after = i64::MIN;
    loop {
        let table = TableRef::clone(table);
        let path = conn.path.clone();
        let side = side.clone();
        let also = also.clone();
        let (rows, last) = conn
            .run(move |c| {
                let sql = format!(
                    "SELECT {}, rowid FROM {} WHERE rowid > ?1{also} ORDER BY rowid LIMIT ?2",
                    column_list(&table),
                    ident(&table.name.name)
                );
                let fail = |e| {
                    db_error(&path, "reading rows", e)
                        .with("table", table.name.to_string())
                        .with("statement", sql.clone())
                };
                let mut stmt = c.prepare_cached(&sql).map_err(fail)?;
                let mut rows = stmt.query(rusqlite::params![after, PAGE]).map_err(fail)?;
                let (mut out, mut last) = (Vec::new(), after);
                while let Some(row) = rows.next().map_err(fail)? {
                    out.push(convert_row(&table, row, &side)?);
                    last = row.get(table.columns.len()).map_err(fail)?;
                }
                Ok((out, last))
            })
            .await?;
        let full = rows.len() as i64 == PAGE;
        if !rows.is_empty() {
            on_rows(rows)?;
        }
        if !full {
            return Ok(());
        }
        after = last;
    }
}

/// The digests a SQLite reader offers: the canonical ones, lookup3 first
/// (PostgreSQL computes it fastest), MD5 for MariaDB.
pub(crate) const ROW_DIGESTS: [&str; 2] = [CANONICAL_DIGEST, CANONICAL_MD5_DIGEST];

/// Serves [`ferry_core::TableReader::digest_range`] for the
/// [`ROW_DIGESTS`]: the rows of `range` (the first `limit` in key order)
/// are read in-process (SQLite is embedded: no row crosses a link) and each
/// row's canonical encoding is hashed as the other database hashes it in
/// SQL. `None` for a table without a key or with an array column (no
/// canonical encoding).
pub(crate) async fn digest_range(
    conn: &Blocking<Connection>,
    table: &TableRef,
    range: &KeyRange,
    limit: Option<u64>,
    digest: &str,
    side: &Side,
    condition: Option<&str>,
) -> Result<Option<RangeDigest>> {
    let arrays = table
        .columns
        .iter()
        .any(|c| matches!(c.ty, ColumnType::Array(_)));
    let Some(digest) = ROW_DIGESTS.into_iter().find(|d| *d == digest) else {
        return Ok(None);
    };
    if table.is_keyless() || arrays {
        return Ok(None);
    }
    let table = TableRef::clone(table);
    let range = range.clone();
    let path = conn.path.clone();
    let side = side.clone();
    let condition = condition.map(str::to_owned);
    let ask = DigestAsk {
        range,
        limit,
        digest,
    };
    conn.run(move |c| digest_range_in(c, &path, &table, &ask, &side, condition.as_deref()))
        .await
}

/// One digest asked for: of which rows, by which hash.
struct DigestAsk {
    range: KeyRange,
    limit: Option<u64>,
    digest: &'static str,
}

fn digest_range_in(
    c: &Connection,
    path: &std::path::Path,
    table: &TableSchema,
    ask: &DigestAsk,
    side: &Side,
    condition: Option<&str>,
) -> Result<Option<RangeDigest>> {
    let DigestAsk {
        range,
        limit,
        digest,
    } = ask;
    let (limit, digest) = (*limit, *digest);
    let n = table.key.len();
    let mut conds: Vec<String> = condition.map(|c| format!("({c})")).into_iter().collect();
    let mut bound: Vec<&Value> = Vec::new();
    if let Some(lower) = &range.lower {
        conds.push(format!("{} > {}", key_tuple(table), params_tuple(1, n)));
        bound.extend(lower);
    }
    if let Some(upper) = &range.upper {
        let first = bound.len() + 1;
        conds.push(format!(
            "{} <= {}",
            key_tuple(table),
            params_tuple(first, n)
        ));
        bound.extend(upper);
    }
    let filter = where_all(&conds);
    let sql = format!(
        "SELECT {} FROM {} {filter} ORDER BY {}{}",
        column_list(table),
        ident(&table.name.name),
        key_order(table),
        limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default()
    );
    let fail = |e| {
        db_error(path, "digesting rows", e)
            .with("table", table.name.to_string())
            .with("statement", sql.clone())
    };
    let mut stmt = c.prepare_cached(&sql).map_err(fail)?;
    for (i, v) in bound.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, Param(v)).map_err(fail)?;
    }
    let mut rows = stmt.raw_query();
    let (mut count, mut sum, mut buf) = (0u64, HashSum::default(), Vec::new());
    let mut last = None;
    while let Some(row) = rows.next().map_err(fail)? {
        let values = convert_row(table, row, side)?;
        let Some(h) = row_hash_by(digest, &values, &mut buf) else {
            return Ok(None);
        };
        sum.add(h);
        count += 1;
        if limit.is_some() {
            last = Some(table.key_of(&values));
        }
    }
    Ok(Some(RangeDigest {
        rows: count,
        sum: sum.to_string(),
        last: if count == 0 { None } else { last },
    }))
}
