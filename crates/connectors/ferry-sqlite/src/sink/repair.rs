//! Repairs as SQL (`ferry verify --repair print`): row steps rendered with
//! literals, for an operator to review and run with `sqlite3`. Values are
//! written in the form the sink's writer binds them ([`Param`]), so the
//! script stores what a repair applied by ferry would.

use std::fmt::Write;

use ferry_core::{Error, RepairSql, Result, Step, TableRef, Value};
use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::connection::ident;
use crate::types::Param;

/// The script for `steps`, one transaction.
pub(crate) fn render(steps: &[Step]) -> Result<String> {
    ferry_core::render_repair(steps, &Dialect)
}

struct Dialect;

impl RepairSql for Dialect {
    fn delete_by_key(&self, t: &TableRef, key: &[Value]) -> Result<String> {
        delete_by_key(t, key)
    }

    fn insert(&self, t: &TableRef, row: &[Value]) -> Result<String> {
        insert(t, row)
    }

    fn delete_one(&self, t: &TableRef, row: &[Value]) -> Result<String> {
        Ok(format!(
            "DELETE FROM {q} WHERE rowid = (SELECT rowid FROM {q} WHERE {} LIMIT 1);",
            matching(t, row, &(0..t.columns.len()).collect::<Vec<_>>())?,
            q = ident(&t.name.name)
        ))
    }
}

/// A SQLite literal for `v` as the writer binds it.
pub(crate) fn literal(v: &Value) -> Result<String> {
    let param = Param(v);
    let bound = param.to_sql().map_err(|e| {
        Error::fatal(format!(
            "the value {v} cannot be written as a SQL literal: {e}"
        ))
    })?;
    let r = match &bound {
        ToSqlOutput::Borrowed(r) => *r,
        ToSqlOutput::Owned(o) => ValueRef::from(o),
        _ => {
            return Err(Error::fatal(format!(
                "the value {v} cannot be written as a SQL literal"
            )));
        }
    };
    Ok(match r {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) if f.is_infinite() => {
            if f > 0.0 {
                "9e999".into()
            } else {
                "-9e999".into()
            }
        }
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => {
            let mut s = String::with_capacity(3 + 2 * b.len());
            s.push_str("X'");
            for byte in b {
                write!(s, "{byte:02X}").ok();
            }
            s.push('\'');
            s
        }
    })
}

fn matching(t: &TableRef, values: &[Value], columns: &[usize]) -> Result<String> {
    let mut parts = Vec::new();
    for (&i, v) in columns.iter().zip(values) {
        parts.push(format!("{} IS {}", ident(&t.columns[i].name), literal(v)?));
    }
    Ok(parts.join(" AND "))
}

fn delete_by_key(t: &TableRef, key: &[Value]) -> Result<String> {
    Ok(format!(
        "DELETE FROM {} WHERE {};",
        ident(&t.name.name),
        matching(t, key, &t.key)?
    ))
}

fn insert(t: &TableRef, row: &[Value]) -> Result<String> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (c, v) in t.columns.iter().zip(row) {
        if matches!(v, Value::Unchanged) {
            continue;
        }
        names.push(ident(&c.name));
        values.push(literal(v)?);
    }
    Ok(format!(
        "INSERT INTO {} ({}) VALUES ({});",
        ident(&t.name.name),
        names.join(", "),
        values.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_as_the_values_the_writer_binds() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for v in [
            Value::Null,
            Value::Int(-7),
            Value::Float(0.1),
            Value::Float(f64::INFINITY),
            Value::Text("it's".into()),
            Value::Bytes(vec![0, 255]),
            Value::Decimal("12.50".into()),
        ] {
            let lit = literal(&v).unwrap();
            let (a, b): (String, String) = c
                .query_row(
                    &format!("SELECT quote({lit}), quote(?1)"),
                    [Param(&v)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(a, b, "{v}");
        }
    }
}
