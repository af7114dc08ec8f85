//! Structure changes of target tables (`Step::Schema`), idempotent: the
//! target's structure is read first and only what differs from the ferry
//! table changes, so a change replayed after a crash does nothing twice.

use ferry_core::{Alteration, Column, Error, Result, TableSchema};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::Shared;
use super::encode::{Fit, literal};
use super::structure::{Dialect, column_type, create_table_sql};
use super::target::{TargetColumn, describe, holds};
use crate::connection::quote_ident;
use crate::error::my_error;

async fn ddl(conn: &mut Conn, table: &str, sql: String) -> Result<()> {
    tracing::info!(table = %table, statement = %sql, "changing the target's structure");
    conn.query_drop(sql.as_str()).await.map_err(|e| {
        my_error(
            e,
            &format!("changing the structure of target table {table}"),
        )
        .with("table", table.to_owned())
        .with("statement", sql)
    })
}

/// A column as `ADD COLUMN` / `MODIFY COLUMN` define it: nullable
/// (rows already there have no value for it) unless in the key.
fn column_sql(shared: &Shared, t: &TableSchema, i: usize) -> String {
    let c = &t.columns[i];
    let key = t.is_key_column(i);
    format!(
        "{} {}{}",
        quote_ident(&c.name),
        column_type(c, &shared.dialect, u32::from(key)),
        if key { " NOT NULL" } else { " NULL" }
    )
}

/// Alters target table `t` to the structure of `t`: creates it when it is
/// missing (a table new to the pipeline); renames what `alter` says was
/// renamed; adds missing columns (the rows already there get the value
/// `alter` gives, as the column's default); widens columns that cannot
/// hold the new type; drops the columns the table had in ferry's last
/// structure and has no more.
pub(crate) async fn alter(
    shared: &Shared,
    conn: &mut Conn,
    t: &TableSchema,
    alter: &Alteration,
) -> Result<()> {
    let db = shared.endpoint.database();
    let name = &t.name.name;
    let Some(mut target) = describe(conn, db, name).await? else {
        ddl(conn, name, create_table_sql(t, name, &shared.dialect)?).await?;
        shared.remember_columns(t);
        return Ok(());
    };
    let renames: Vec<String> = alter
        .renamed
        .iter()
        .filter(|(old, new)| target.column(old).is_some() && target.column(new).is_none())
        .map(|(old, new)| format!("RENAME COLUMN {} TO {}", quote_ident(old), quote_ident(new)))
        .collect();
    if !renames.is_empty() {
        let sql = format!("ALTER TABLE {} {}", quote_ident(name), renames.join(", "));
        ddl(conn, name, sql).await?;
        target = describe(conn, db, name).await?.ok_or_else(|| {
            Error::fatal(format!("target table {name} vanished while it was altered"))
        })?;
    }
    let mut actions = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        match target.column(&c.name) {
            None => {
                let mut add = format!("ADD COLUMN {}", column_sql(shared, t, i));
                if let Some((_, v)) = alter.filled.iter().find(|(n, _)| *n == c.name) {
                    let lit = literal(v, Fit::Any).map_err(|why| {
                        Error::fatal(format!(
                            "the default of new column {}.{} cannot be written: {why}",
                            name, c.name
                        ))
                    })?;
                    add.push_str(&format!(" DEFAULT {lit}"));
                }
                actions.push(add);
            }
            Some(tc) if needs_change(&shared.dialect, c, tc) => {
                actions.push(format!("MODIFY COLUMN {}", column_sql(shared, t, i)));
            }
            Some(_) => {}
        }
    }
    let renamed_from = |n: &str| alter.renamed.iter().any(|(old, _)| old == n);
    for old in shared.known_columns(&t.name) {
        if t.column_index(&old).is_none() && !renamed_from(&old) && target.column(&old).is_some() {
            actions.push(format!("DROP COLUMN {}", quote_ident(&old)));
        }
    }
    if !actions.is_empty() {
        let sql = format!("ALTER TABLE {} {}", quote_ident(name), actions.join(", "));
        ddl(conn, name, sql).await?;
    }
    shared.remember_columns(t);
    Ok(())
}

/// Whether target column `tc` must change to take the values of `c`: a
/// MySQL/MariaDB source's column must have the source's type, another's
/// a type that holds its values.
pub(crate) fn needs_change(d: &Dialect, c: &Column, tc: &TargetColumn) -> bool {
    if d.same_engine && !c.source_type.trim().is_empty() {
        !same_type(&c.source_type, &tc.column_type)
    } else {
        !holds(&c.ty, tc)
    }
}

/// Two spellings of a MySQL column type that mean the same
/// (`INT(11)` and `int(11)`).
fn same_type(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}
