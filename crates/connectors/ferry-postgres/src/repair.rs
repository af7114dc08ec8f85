//! Repairs as SQL (`ferry verify --repair print`): row steps rendered with
//! literals, for an operator to review and run with `psql`.
//!
//! Each row is deleted by its key and inserted again, rather than upserted
//! with `ON CONFLICT`, so that the script also works on a pre-created
//! table with a deferrable key; `OVERRIDING SYSTEM VALUE` writes identity
//! columns as the source has them, and generated columns are left to the
//! target to compute.

use std::collections::HashMap;

use ferry_core::{Error, RepairSql, Result, Step, TableName, TableRef, Value};

use crate::catalog::PgTable;
use crate::types::ident;

/// The script for `steps`, one transaction. `tables` holds the target's
/// description of every table the steps touch.
pub(crate) fn render(steps: &[Step], tables: &HashMap<TableName, PgTable>) -> Result<String> {
    ferry_core::render_repair(steps, &Dialect { tables })
}

struct Dialect<'a> {
    tables: &'a HashMap<TableName, PgTable>,
}

impl RepairSql for Dialect<'_> {
    fn delete_by_key(&self, t: &TableRef, key: &[Value]) -> Result<String> {
        delete_by_key(table(self.tables, t)?, t, key)
    }

    fn insert(&self, t: &TableRef, row: &[Value]) -> Result<String> {
        insert(table(self.tables, t)?, t, row)
    }

    fn delete_one(&self, t: &TableRef, row: &[Value]) -> Result<String> {
        let pg = table(self.tables, t)?;
        Ok(format!(
            "DELETE FROM {q} WHERE ctid = (SELECT ctid FROM {q} WHERE {} LIMIT 1);",
            matching(pg, t, row, &(0..t.columns.len()).collect::<Vec<_>>())?,
            q = pg.qualified()
        ))
    }
}

fn table<'a>(tables: &'a HashMap<TableName, PgTable>, t: &TableRef) -> Result<&'a PgTable> {
    tables
        .get(&t.name)
        .ok_or_else(|| Error::fatal(format!("table {} does not exist on the target", t.name)))
}

/// The literal of `v` for column `name` of the target table.
fn literal(pg: &PgTable, name: &str, v: &Value) -> Result<String> {
    let col = pg.column(name).ok_or_else(|| {
        Error::fatal(format!(
            "column {name} does not exist in target table {}",
            pg.qualified()
        ))
    })?;
    if let Value::Array(items) = v {
        let text = crate::binary::array_text(items).ok_or_else(|| cannot(name, v))?;
        return Ok(format!(
            "{}::{}",
            crate::types::quote_literal(&text),
            col.type_name
        ));
    }
    crate::binary::literal(v, &col.type_name).map_err(|_| cannot(name, v))
}

fn cannot(name: &str, v: &Value) -> Error {
    Error::fatal(format!(
        "the value {v} of column {name} cannot be written as a SQL literal"
    ))
    .with_fix("repair with `ferry verify --repair apply`, or re-copy the table with `ferry resync`")
}

fn matching(pg: &PgTable, t: &TableRef, values: &[Value], columns: &[usize]) -> Result<String> {
    let mut parts = Vec::new();
    for (&i, v) in columns.iter().zip(values) {
        let name = &t.columns[i].name;
        parts.push(format!(
            "{} IS NOT DISTINCT FROM {}",
            ident(name),
            literal(pg, name, v)?
        ));
    }
    Ok(parts.join(" AND "))
}

fn delete_by_key(pg: &PgTable, t: &TableRef, key: &[Value]) -> Result<String> {
    Ok(format!(
        "DELETE FROM {} WHERE {};",
        pg.qualified(),
        matching(pg, t, key, &t.key)?
    ))
}

fn insert(pg: &PgTable, t: &TableRef, row: &[Value]) -> Result<String> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (c, v) in t.columns.iter().zip(row) {
        if matches!(v, Value::Unchanged) || pg.column(&c.name).is_some_and(|p| p.generated) {
            continue;
        }
        names.push(ident(&c.name));
        values.push(literal(pg, &c.name, v)?);
    }
    Ok(format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({});",
        pg.qualified(),
        names.join(", "),
        values.join(", ")
    ))
}
