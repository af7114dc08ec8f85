//! PostgreSQL → PostgreSQL structure copy beyond columns and key: a table
//! ferry creates gets the source's owned sequences, defaults and `CHECK`s
//! with it, and its unique and exclusion constraints and secondary
//! indexes once its copy is loaded (with the primary key; a table without
//! key gets them at once). A definition the target cannot take (a
//! function or an operator class it lacks) is logged as not copied and
//! skipped: the copy's data does not depend on it. Tables that exist
//! already keep their own structure.

use ferry_core::{Result, SequenceValue, ShapeItem, TableRef, TableShape};
use tokio_postgres::Client;

use crate::error::pg_error;
use crate::types::ident;

/// The shape's dialect this sink understands.
pub(crate) const DIALECT: &str = "postgresql";

fn has_columns(columns: &[String], item: &ShapeItem) -> bool {
    item.columns.iter().all(|c| columns.contains(c))
}

/// `columns` (a table's ferry columns) and the generated columns the
/// target computes from them.
fn with_generated(columns: &[String], shape: &TableShape) -> Vec<String> {
    let mut all = columns.to_vec();
    all.extend(
        shape
            .generated
            .iter()
            .filter(|g| has_columns(columns, g))
            .map(|g| g.name.clone()),
    );
    all
}

/// `schema.name` (as [`ShapeItem::name`] holds a sequence's) quoted.
fn quoted_name(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, name)) => format!("{}.{}", ident(schema), ident(name)),
        None => ident(name),
    }
}

/// Statements that give `table` (created empty as `q`) what comes with
/// it: owned sequences, identity columns, defaults, `CHECK`s; for a table
/// without key, its indexes too (it never gets a "loaded" moment of its
/// own).
pub(crate) fn with_table(table: &TableRef, q: &str, shape: &TableShape) -> Vec<String> {
    let ferry_columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
    let mut out = Vec::new();
    // Generated columns first (their expressions read the table's
    // columns); constraints and indexes may read them.
    for g in shape
        .generated
        .iter()
        .filter(|g| has_columns(&ferry_columns, g))
    {
        out.push(g.sql.clone());
    }
    let columns = with_generated(&ferry_columns, shape);
    for s in shape.sequences.iter().filter(|s| has_columns(&columns, s)) {
        out.push(s.sql.clone());
        out.push(format!(
            "ALTER SEQUENCE {} OWNED BY {q}.{}",
            quoted_name(&s.name),
            ident(&s.columns[0])
        ));
    }
    out.extend(
        shape
            .identity
            .iter()
            .filter(|i| has_columns(&columns, i))
            .map(|i| i.sql.clone()),
    );
    for (column, expr) in &shape.defaults {
        if columns.contains(column) {
            out.push(format!(
                "ALTER TABLE {q} ALTER COLUMN {} SET DEFAULT {expr}",
                ident(column)
            ));
        }
    }
    for c in shape.checks.iter().filter(|c| has_columns(&columns, c)) {
        out.push(format!(
            "ALTER TABLE {q} ADD CONSTRAINT {} {}",
            ident(&c.name),
            c.sql
        ));
    }
    if table.is_keyless() {
        out.extend(after_load(&ferry_columns, q, shape));
    }
    out
}

/// Unique and exclusion constraints and secondary indexes of a table
/// (target `q`, ferry columns `columns`), built once its copy is loaded.
pub(crate) fn after_load(columns: &[String], q: &str, shape: &TableShape) -> Vec<String> {
    let columns = with_generated(columns, shape);
    let columns = columns.as_slice();
    shape
        .indexes
        .iter()
        .filter(|i| has_columns(columns, i))
        .map(|i| {
            if i.sql.starts_with("CONSTRAINT ") {
                format!("ALTER TABLE {q} ADD {}", i.sql)
            } else {
                i.sql.clone()
            }
        })
        .collect()
}

/// Runs each statement; one the target refuses is logged as not copied
/// and skipped. Inside a transaction (`in_tx`) each runs under a
/// savepoint, so a refusal does not abort the transaction.
pub(crate) async fn run_each(
    client: &Client,
    table: &str,
    statements: &[String],
    in_tx: bool,
) -> Result<()> {
    for sql in statements {
        let run = if in_tx {
            format!("SAVEPOINT ferry_shape; {sql}; RELEASE SAVEPOINT ferry_shape")
        } else {
            sql.clone()
        };
        tracing::info!(table, statement = %sql, "copying the source's structure");
        if let Err(e) = client.batch_execute(&run).await {
            if e.as_db_error().is_none() {
                // The connection failed, not the statement.
                return Err(pg_error(e, "copying the source's structure"));
            }
            if in_tx {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT ferry_shape")
                    .await
                    .map_err(|e| pg_error(e, "copying the source's structure"))?;
            }
            tracing::warn!(table, statement = %sql, error = %e,
                "not copied: the target refused this part of the source's structure \
                 (the data is copied all the same); create it on the target by hand");
        }
    }
    Ok(())
}

/// `setval` for each of `values` the target has.
pub(crate) async fn set_sequences(client: &Client, values: &[SequenceValue]) -> Result<()> {
    for v in values {
        let schema = v.name.namespace.as_deref().unwrap_or("public");
        let q = format!("{}.{}", ident(schema), ident(&v.name.name));
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
            .await
            .map_err(|e| pg_error(e, "looking for a sequence on the target"))?
            .get(0);
        if !exists {
            tracing::warn!(sequence = %v.name, "the target has no such sequence: not synchronised");
            continue;
        }
        client
            .execute(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&q, &v.last_value, &v.is_called],
            )
            .await
            .map_err(|e| {
                pg_error(e, &format!("setting sequence {} on the target", v.name))
                    .with("sequence", v.name.to_string())
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferry_core::{Column, ColumnType, TableName, TableSchema};

    use super::*;

    fn table(columns: &[&str], key: Vec<usize>) -> TableRef {
        Arc::new(TableSchema {
            name: TableName::new(Some("public"), "t"),
            columns: columns
                .iter()
                .map(|n| Column {
                    name: n.to_string(),
                    ty: ColumnType::Int64,
                    nullable: true,
                    source_type: "bigint".into(),
                    user_type: None,
                })
                .collect(),
            key,
            version: 1,
            key_deferrable: false,
        })
    }

    fn item(name: &str, sql: &str, columns: &[&str]) -> ShapeItem {
        ShapeItem {
            name: name.into(),
            sql: sql.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn shape() -> TableShape {
        TableShape {
            dialect: DIALECT.into(),
            defaults: vec![
                ("id".into(), "nextval('t_id_seq'::regclass)".into()),
                ("gone".into(), "0".into()),
            ],
            checks: vec![
                item("pos", "CHECK ((id > 0))", &["id"]),
                item("g", "CHECK ((gone > 0))", &["gone"]),
            ],
            indexes: vec![
                item("t_v_key", "CONSTRAINT t_v_key UNIQUE (v)", &["v"]),
                item(
                    "t_v",
                    "CREATE INDEX IF NOT EXISTS t_v ON public.t USING btree (v)",
                    &["v"],
                ),
                item("t_gone", "CREATE INDEX IF NOT EXISTS t_gone ...", &["gone"]),
            ],
            sequences: vec![item(
                "public.t_id_seq",
                "CREATE SEQUENCE IF NOT EXISTS public.t_id_seq",
                &["id"],
            )],
            identity: vec![item(
                "public.t_n_seq",
                "ALTER TABLE q ALTER COLUMN n ADD GENERATED ALWAYS AS IDENTITY",
                &["n"],
            )],
            generated: vec![],
        }
    }

    #[test]
    fn definitions_reading_a_column_the_target_lacks_are_left_out() {
        let t = table(&["id", "v"], vec![0]);
        assert_eq!(
            with_table(&t, "q", &shape()),
            [
                "CREATE SEQUENCE IF NOT EXISTS public.t_id_seq",
                "ALTER SEQUENCE \"public\".\"t_id_seq\" OWNED BY q.\"id\"",
                "ALTER TABLE q ALTER COLUMN \"id\" SET DEFAULT nextval('t_id_seq'::regclass)",
                "ALTER TABLE q ADD CONSTRAINT \"pos\" CHECK ((id > 0))",
            ]
        );
        assert_eq!(
            after_load(&["id".into(), "v".into()], "q", &shape()),
            [
                "ALTER TABLE q ADD CONSTRAINT t_v_key UNIQUE (v)",
                "CREATE INDEX IF NOT EXISTS t_v ON public.t USING btree (v)",
            ]
        );
    }

    #[test]
    fn a_table_without_key_gets_its_indexes_with_it() {
        let t = table(&["id", "v"], vec![]);
        let all = with_table(&t, "q", &shape());
        assert_eq!(all.len(), 6, "{all:?}");
        assert!(all[5].starts_with("CREATE INDEX IF NOT EXISTS t_v "));
    }
}
