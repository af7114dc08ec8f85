//! Statements of the change apply path: multi-row upserts, deletes and
//! partial updates with typed binary parameters.

use bytes::BytesMut;
use ferry_core::{Error, Value};
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};

use crate::binary;
use crate::target::Target;
use crate::types::Kind;

/// Most rows in one multi-row statement.
const MAX_ROWS_PER_STATEMENT: usize = 1000;
/// PostgreSQL's limit on bind parameters per statement.
const MAX_PARAMS: usize = 65_535;

/// A value bound as a statement parameter, encoded by ferry's codec.
#[derive(Debug)]
pub(crate) struct Param<'a> {
    pub value: &'a Value,
    pub kind: &'a Kind,
}

impl Param<'_> {
    /// An array the source could only describe by its text
    /// ([`binary::decode`]: lower bounds other than 1) goes as a text
    /// parameter, which the column type's input function reads.
    fn array_text(&self) -> Option<&str> {
        match (self.kind, self.value) {
            (Kind::Array { .. }, Value::Text(text)) => Some(text),
            _ => None,
        }
    }
}

/// Whether a row holds an array only a text parameter can carry
/// ([`Param::array_text`]): binary `COPY` cannot take it.
pub(crate) fn has_array_text(t: &Target, row: &[Value]) -> bool {
    t.has_arrays
        && t.types
            .iter()
            .zip(row)
            .any(|(ty, v)| matches!((&ty.kind, v), (Kind::Array { .. }, Value::Text(_))))
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if self.value.is_null() {
            return Ok(IsNull::Yes);
        }
        if matches!(self.value, Value::Unchanged) {
            return Err(Box::new(Error::fatal(
                "an unchanged value reached a statement parameter; this is a ferry bug",
            )));
        }
        if let Some(text) = self.array_text() {
            out.extend_from_slice(text.as_bytes());
            return Ok(IsNull::No);
        }
        match binary::encode(self.value, self.kind, out) {
            Ok(()) => Ok(IsNull::No),
            Err(e) => Err(Box::new(e)),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        if self.array_text().is_some() {
            Format::Text
        } else {
            Format::Binary
        }
    }

    to_sql_checked!();
}

pub(crate) fn abbreviate(sql: &str) -> String {
    if sql.len() <= 300 {
        return sql.to_owned();
    }
    let mut end = 300;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &sql[..end], sql.len())
}

pub(crate) fn rows_per_statement(cols: usize) -> usize {
    (MAX_PARAMS / cols.max(1)).clamp(1, MAX_ROWS_PER_STATEMENT)
}

/// `($1,$2),($3,$4),...`: `rows` tuples of the columns `cols` of `t`
/// (each placeholder as [`Target::placeholder`] writes it).
pub(crate) fn placeholders(t: &Target, rows: usize, cols: &[usize]) -> String {
    let width = cols.len();
    let mut s = String::with_capacity(rows * width * 6);
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for (c, &col) in cols.iter().enumerate() {
            if c > 0 {
                s.push(',');
            }
            s.push_str(&t.placeholder(col, r * width + c + 1));
        }
        s.push(')');
    }
    s
}

pub(crate) fn key_list(t: &Target) -> String {
    t.key
        .iter()
        .map(|&i| t.cols[i].as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn delete_sql(t: &Target, rows: usize) -> String {
    format!(
        "DELETE FROM {} WHERE ({}) IN (VALUES {})",
        t.qualified,
        key_list(t),
        placeholders(t, rows, &t.key)
    )
}

pub(crate) fn upsert_sql(t: &Target, rows: usize) -> String {
    let all: Vec<usize> = (0..t.cols.len()).collect();
    upsert_from(t, &format!("VALUES {}", placeholders(t, rows, &all)))
}

/// `OVERRIDING SYSTEM VALUE` when the target has a column `GENERATED
/// ALWAYS AS IDENTITY`: the source's value goes in, as `COPY` does.
pub(crate) fn overriding(t: &Target) -> &'static str {
    if t.always_identity.is_empty() {
        ""
    } else {
        " OVERRIDING SYSTEM VALUE"
    }
}

/// Whether an update may set column `i`: not a key column (the key finds
/// the row) and not an identity `GENERATED ALWAYS` (PostgreSQL refuses
/// any value but `DEFAULT`; the source cannot change such a value either
/// but by a key change, which [`move_by_delete_insert_sql`] applies).
pub(crate) fn settable(t: &Target, i: usize) -> bool {
    !t.key.contains(&i) && !t.always_identity.contains(&i)
}

/// `INSERT ... <source> ON CONFLICT (key) DO UPDATE SET` every non-key column.
///
/// A target whose key is `DEFERRABLE` cannot be an `ON CONFLICT` arbiter:
/// there one statement updates the rows of `source` whose key exists and
/// inserts the others ([`update_then_insert`]).
pub(crate) fn upsert_from(t: &Target, source: &str) -> String {
    if t.deferrable_key {
        return update_then_insert(t, source);
    }
    let updates: Vec<String> = (0..t.cols.len())
        .filter(|&i| settable(t, i))
        .map(|i| format!("{0} = EXCLUDED.{0}", t.cols[i]))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} ({}){} {source} ON CONFLICT ({}) DO {action}",
        t.qualified,
        t.cols.join(", "),
        overriding(t),
        key_list(t)
    )
}

/// The upsert of [`upsert_from`] without `ON CONFLICT`: `source`'s rows
/// (each key once, as merged batches are) update the existing rows, and
/// those whose key no row has are inserted, in one statement.
fn update_then_insert(t: &Target, source: &str) -> String {
    let alias = |i: usize| format!("c{i}");
    let names: Vec<String> = (0..t.cols.len()).map(alias).collect();
    let on = |left: &str| -> String {
        t.key
            .iter()
            .map(|&i| format!("{left}.{} = v.{}", t.cols[i], alias(i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let set: Vec<String> = (0..t.cols.len())
        .filter(|&i| settable(t, i))
        .map(|i| format!("{} = v.{}", t.cols[i], alias(i)))
        .collect();
    let (updated, present) = if set.is_empty() {
        (String::new(), format!("{} AS t", t.qualified))
    } else {
        let keys: Vec<String> = t.key.iter().map(|&i| format!("v.{}", alias(i))).collect();
        let key_names: Vec<String> = t.key.iter().map(|&i| alias(i)).collect();
        (
            format!(
                ", u AS (UPDATE {} AS t SET {} FROM v WHERE {} RETURNING {})",
                t.qualified,
                set.join(", "),
                on("t"),
                keys.join(", ")
            ),
            // `u` returns the key columns under their aliases.
            format!("u AS t({})", key_names.join(", ")),
        )
    };
    let cond = if set.is_empty() {
        on("t")
    } else {
        t.key
            .iter()
            .map(|&i| format!("t.{0} = v.{0}", alias(i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    format!(
        "WITH v({}) AS ({source}){updated} INSERT INTO {} ({}){} SELECT {} FROM v \
         WHERE NOT EXISTS (SELECT 1 FROM {present} WHERE {cond})",
        names.join(", "),
        t.qualified,
        t.cols.join(", "),
        overriding(t),
        names
            .iter()
            .map(|n| format!("v.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Moves a row to a new key by deleting it and inserting it again, in one
/// statement: for a key with an identity column `GENERATED ALWAYS`, which
/// no `UPDATE` may set. The new row takes the columns `present` (bound
/// first, in order) from the change and the others from the old row; the
/// old key is bound after them.
pub(crate) fn move_by_delete_insert_sql(t: &Target, present: &[usize]) -> String {
    let values: Vec<String> = (0..t.cols.len())
        .map(|i| match present.iter().position(|&p| p == i) {
            Some(n) => format!("${}", n + 1),
            None => format!("old.{}", t.cols[i]),
        })
        .collect();
    let cond: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = ${}", t.cols[i], present.len() + n + 1))
        .collect();
    format!(
        "WITH old AS (DELETE FROM {q} WHERE {} RETURNING *) INSERT INTO {q} ({}){} SELECT {} FROM old",
        cond.join(" AND "),
        t.cols.join(", "),
        overriding(t),
        values.join(", "),
        q = t.qualified
    )
}

pub(crate) fn update_sql(t: &Target, present: &[usize], rows: usize) -> String {
    let alias = |i: usize| format!("c{i}");
    let set: Vec<String> = present
        .iter()
        .filter(|&&i| settable(t, i))
        .map(|&i| format!("{} = v.{}", t.cols[i], alias(i)))
        .collect();
    let cond: Vec<String> = t
        .key
        .iter()
        .map(|&i| format!("t.{} = v.{}", t.cols[i], alias(i)))
        .collect();
    let names: Vec<String> = present.iter().map(|&i| alias(i)).collect();
    format!(
        "UPDATE {} AS t SET {} FROM (VALUES {}) AS v({}) WHERE {}",
        t.qualified,
        set.join(", "),
        placeholders(t, rows, present),
        names.join(", "),
        cond.join(" AND ")
    )
}

pub(crate) fn key_params<'a>(t: &'a Target, rows: &[&'a Vec<Value>]) -> Vec<Param<'a>> {
    // Delete rows are key-only images: the key columns sit at `t.key`.
    row_params(t, rows, &t.key)
}

pub(crate) fn row_params<'a>(
    t: &'a Target,
    rows: &[&'a Vec<Value>],
    cols: &[usize],
) -> Vec<Param<'a>> {
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for row in rows {
        for &i in cols {
            out.push(Param {
                value: &row[i],
                kind: &t.types[i].kind,
            });
        }
    }
    out
}

pub(crate) fn param_refs<'a>(
    params: &'a [Param<'a>],
    t: &Target,
    rows: usize,
    cols: &[usize],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut out = Vec::with_capacity(rows * cols.len());
    for (n, p) in params.iter().enumerate() {
        out.push((
            p as &(dyn ToSql + Sync),
            t.params[cols[n % cols.len()]].clone(),
        ));
    }
    out
}

/// `INSERT INTO t (cols) VALUES ...` without a conflict target: rows of a
/// keyless table, where identical rows are each a row.
pub(crate) fn insert_sql(t: &Target, rows: usize) -> String {
    let all: Vec<usize> = (0..t.cols.len()).collect();
    format!(
        "INSERT INTO {} ({}){} VALUES {}",
        t.qualified,
        t.cols.join(", "),
        overriding(t),
        placeholders(t, rows, &all)
    )
}

/// The columns of a keyless table's before-image a row is matched on:
/// every column the source sent.
pub(crate) fn match_columns(before: &[Value]) -> Vec<usize> {
    (0..before.len())
        .filter(|&i| !matches!(before[i], Value::Unchanged))
        .collect()
}

/// `WHERE ctid = (one row equal to the image)`: the row of a keyless
/// table a change applies to, the image's columns `matched` bound from
/// `$first` on. `json` has no equality operator, so it compares as text.
fn one_row_equal(t: &Target, matched: &[usize], first: usize) -> String {
    let conds: Vec<String> = matched
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let p = format!("${}", first + n);
            if t.types[i].kind.has_no_equality() {
                format!("{}::text IS NOT DISTINCT FROM {p}::text", t.cols[i])
            } else {
                format!("{} IS NOT DISTINCT FROM {p}", t.cols[i])
            }
        })
        .collect();
    let cond = if conds.is_empty() {
        "true".to_owned()
    } else {
        conds.join(" AND ")
    };
    format!(
        "ctid = (SELECT ctid FROM {} WHERE {cond} LIMIT 1)",
        t.qualified
    )
}

/// Deletes one row of a keyless table equal to the image's `matched`
/// columns.
pub(crate) fn delete_one_sql(t: &Target, matched: &[usize]) -> String {
    format!(
        "DELETE FROM {} WHERE {}",
        t.qualified,
        one_row_equal(t, matched, 1)
    )
}

/// Sets the columns `set` (bound first) on one row of a keyless table
/// equal to the image's `matched` columns (bound after them).
pub(crate) fn update_one_sql(t: &Target, set: &[usize], matched: &[usize]) -> String {
    let assignments: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = {}", t.cols[i], t.placeholder(i, n + 1)))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {}",
        t.qualified,
        assignments.join(", "),
        one_row_equal(t, matched, set.len() + 1)
    )
}
