//! Filters and transforms between source and target: column excludes,
//! table renames, operation filters and row predicates.
//!
//! Predicates are evaluated on the *source* row (so they may read excluded
//! columns); the target sees projected rows under the target table name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_core::{Change, Error, Result, TableName, TableRef, TableSchema, Value};

use crate::predicate::Expr;

/// Which operations reach the target.
#[derive(Debug, Clone, Copy)]
pub struct Ops {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
}

impl Default for Ops {
    fn default() -> Self {
        Ops {
            insert: true,
            update: true,
            delete: true,
            truncate: true,
        }
    }
}

/// Rules for one source table.
#[derive(Debug, Clone, Default)]
pub struct TableRule {
    /// Target table name, when it differs.
    pub rename: Option<String>,
    pub exclude_columns: Vec<String>,
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone, Default)]
pub struct TransformSpec {
    /// Keyed by source table name as written in the config (`name` or `ns.name`).
    pub tables: HashMap<String, TableRule>,
    pub ops: Ops,
}

impl TransformSpec {
    /// The rule for source table `name`, written as `ns.name` or `name`.
    fn rule(&self, name: &TableName) -> Option<&TableRule> {
        self.tables
            .get(&name.to_string())
            .or_else(|| self.tables.get(&name.name))
    }
}

/// A source asks about a row it cannot wholly decode: the row is left out
/// when its filter says so whatever the undecoded cells hold (a filter
/// reading one of them answers `None` and keeps the row).
impl ferry_core::selection::RowFilter for TransformSpec {
    fn leaves_out(&self, table: &TableSchema, row: &[Value]) -> bool {
        self.rule(&table.name)
            .and_then(|r| r.filter.as_ref())
            .is_some_and(|f| f.eval(table, row) == Some(false))
    }
}

struct Mapping {
    target: TableRef,
    /// Source column index of each target column.
    columns: Vec<usize>,
    rule: TableRule,
}

/// Applies a [`TransformSpec`]; caches one mapping per table structure.
pub struct Transform {
    spec: TransformSpec,
    cache: Mutex<HashMap<(TableName, u32), Arc<Mapping>>>,
}

impl Transform {
    pub fn new(spec: TransformSpec) -> Self {
        Transform {
            spec,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn rule(&self, name: &TableName) -> TableRule {
        self.spec.rule(name).cloned().unwrap_or_default()
    }

    fn mapping(&self, source: &TableRef) -> Result<Arc<Mapping>> {
        let key = (source.name.clone(), source.version);
        if let Some(m) = self.cache.lock().expect("transform cache").get(&key) {
            return Ok(m.clone());
        }
        let rule = self.rule(&source.name);
        for c in &rule.exclude_columns {
            let Some(i) = source.column_index(c) else {
                return Err(Error::fatal(format!(
                    "exclude_columns names column {c:?}, which table {} does not have",
                    source.name
                ))
                .with_fix(format!(
                    "use one of: {}",
                    source
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if source.is_key_column(i) {
                return Err(Error::fatal(format!(
                    "column {c:?} of {} is part of its key and cannot be excluded",
                    source.name
                ))
                .with_fix("remove it from exclude_columns"));
            }
        }
        if let Some(f) = &rule.filter {
            for c in f.columns() {
                if source.column_index(c).is_none() {
                    return Err(Error::fatal(format!(
                        "the filter of {} reads column {c:?}, which the table does not have",
                        source.name
                    ))
                    .with_fix("fix the column name in the filter"));
                }
            }
        }
        let columns: Vec<usize> = (0..source.columns.len())
            .filter(|&i| !rule.exclude_columns.contains(&source.columns[i].name))
            .collect();
        let key = source
            .key
            .iter()
            .map(|k| columns.iter().position(|c| c == k).expect("key kept"))
            .collect();
        let name = match &rule.rename {
            Some(r) => TableName::parse(r),
            None => source.name.clone(),
        };
        let target = Arc::new(TableSchema {
            name,
            columns: columns.iter().map(|&i| source.columns[i].clone()).collect(),
            key,
            version: source.version,
            key_deferrable: source.key_deferrable,
        });
        let m = Arc::new(Mapping {
            target,
            columns,
            rule,
        });
        self.cache
            .lock()
            .expect("transform cache")
            .insert((source.name.clone(), source.version), m.clone());
        Ok(m)
    }

    /// The target structure of a source table.
    pub fn target_table(&self, source: &TableRef) -> Result<TableRef> {
        Ok(self.mapping(source)?.target.clone())
    }

    fn project(m: &Mapping, row: &[Value]) -> Vec<Value> {
        m.columns.iter().map(|&i| row[i].clone()).collect()
    }

    /// Whether snapshot rows of `source` reach the target as they are (no
    /// column excluded, no filter; a table rename changes no row).
    pub fn keeps_rows(&self, source: &TableRef) -> Result<bool> {
        let m = self.mapping(source)?;
        Ok(m.columns.len() == source.columns.len() && m.rule.filter.is_none())
    }

    /// Snapshot rows: keeps those passing the filter, projected.
    pub fn rows(&self, source: &TableRef, rows: Vec<Vec<Value>>) -> Result<Vec<Vec<Value>>> {
        if self.keeps_rows(source)? {
            return Ok(rows);
        }
        let m = self.mapping(source)?;
        Ok(rows
            .iter()
            .filter(|r| {
                m.rule
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.eval(source, r) != Some(false))
            })
            .map(|r| Self::project(&m, r))
            .collect())
    }

    /// Maps one source change to what the target must see (zero or one change).
    pub fn change(&self, change: Change) -> Result<Option<Change>> {
        let ops = self.spec.ops;
        Ok(match change {
            Change::Insert { table, row } => {
                let m = self.mapping(&table)?;
                let pass = m
                    .rule
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.eval(&table, &row) != Some(false));
                (ops.insert && pass).then(|| Change::Insert {
                    table: m.target.clone(),
                    row: Self::project(&m, &row),
                })
            }
            Change::Update {
                table,
                before,
                after,
            } => {
                let m = self.mapping(&table)?;
                if !ops.update {
                    return Ok(None);
                }
                let pass = m
                    .rule
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.eval(&table, &after) != Some(false));
                let entering = m.rule.filter.as_ref().is_some_and(|f| {
                    before
                        .as_ref()
                        .is_some_and(|b| f.eval(&table, b) == Some(false))
                });
                if pass && entering {
                    // A row entering the filtered set is not on the target
                    // to be updated (a partial update would be lost, and a
                    // keyless table has no row to match): insert its new
                    // image, columns the source left unchanged taken from
                    // the old one.
                    let mut row = before.expect("checked above");
                    crate::merge::overlay(&mut row, after);
                    ops.insert.then(|| Change::Insert {
                        table: m.target.clone(),
                        row: Self::project(&m, &row),
                    })
                } else if pass {
                    Some(Change::Update {
                        table: m.target.clone(),
                        before: before.map(|b| Self::project(&m, &b)),
                        after: Self::project(&m, &after),
                    })
                } else if ops.delete {
                    // The row left the filtered set: remove it from the target.
                    let image = before.unwrap_or(after);
                    Some(Change::Delete {
                        table: m.target.clone(),
                        before: Self::project(&m, &image),
                    })
                } else {
                    None
                }
            }
            Change::Delete { table, before } => {
                let m = self.mapping(&table)?;
                ops.delete.then(|| Change::Delete {
                    table: m.target.clone(),
                    before: Self::project(&m, &before),
                })
            }
            Change::Truncate { tables } => {
                if !ops.truncate {
                    return Ok(None);
                }
                let targets = tables
                    .iter()
                    .map(|t| self.target_table(t))
                    .collect::<Result<Vec<_>>>()?;
                Some(Change::Truncate { tables: targets })
            }
            Change::Schema { table, mut alter } => {
                // Excluded columns are not on the target.
                let target = self.target_table(&table)?;
                let kept = |c: &str| target.column_index(c).is_some();
                alter.renamed.retain(|(_, new)| kept(new));
                alter.filled.retain(|(c, _)| kept(c));
                Some(Change::Schema {
                    table: target,
                    alter,
                })
            }
            Change::RecopyStart { table, reason } => Some(Change::RecopyStart {
                table: self.target_table(&table)?,
                reason,
            }),
            // The key is never excluded or changed, so the range holds for
            // the projected rows; rows outside the filter are left out, and
            // the target's rows of the range become the rest.
            Change::RecopyRows { table, range, rows } => Some(Change::RecopyRows {
                table: self.target_table(&table)?,
                rows: self.rows(&table, rows)?,
                range,
            }),
        })
    }

    /// Whether deletes reach the target (`[operations] delete`). When they
    /// do not, an online re-copy only adds and replaces rows.
    pub fn passes_deletes(&self) -> bool {
        self.spec.ops.delete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType};

    fn src() -> TableRef {
        let col = |n: &str| Column {
            name: n.into(),
            ty: ColumnType::Dynamic,
            nullable: true,
            source_type: String::new(),
            user_type: None,
        };
        Arc::new(TableSchema {
            name: TableName::bare("orders"),
            columns: vec![col("id"), col("secret"), col("region")],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        })
    }

    fn spec() -> TransformSpec {
        let mut s = TransformSpec::default();
        s.tables.insert(
            "orders".into(),
            TableRule {
                rename: Some("orders_eu".into()),
                exclude_columns: vec!["secret".into()],
                filter: Some(Expr::parse("region = 'eu'").unwrap()),
            },
        );
        s
    }

    fn row(id: i64, region: &str) -> Vec<Value> {
        vec![
            Value::Int(id),
            Value::Text("pw".into()),
            Value::Text(region.into()),
        ]
    }

    #[test]
    fn renames_projects_and_filters() {
        let t = Transform::new(spec());
        let out = t
            .change(Change::Insert {
                table: src(),
                row: row(1, "eu"),
            })
            .unwrap()
            .unwrap();
        let Change::Insert {
            table,
            row: projected,
        } = out
        else {
            panic!()
        };
        assert_eq!(table.name.name, "orders_eu");
        assert_eq!(projected, vec![Value::Int(1), Value::Text("eu".into())]);
        assert!(
            t.change(Change::Insert {
                table: src(),
                row: row(2, "us")
            })
            .unwrap()
            .is_none()
        );
        let rows = t.rows(&src(), vec![row(1, "eu"), row(2, "us")]).unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_source_learns_which_rows_the_filter_leaves_out_whatever_an_undecoded_cell_holds() {
        use ferry_core::selection::RowFilter;
        let s = spec();
        let t = src();
        let undecoded = |region: Value| vec![Value::Int(1), Value::Unchanged, region];
        // The filter reads region, not the undecoded secret.
        assert!(s.leaves_out(&t, &undecoded(Value::Text("us".into()))));
        assert!(!s.leaves_out(&t, &undecoded(Value::Text("eu".into()))));
        // The filter reads the undecoded cell: the row is kept.
        let on_region = vec![Value::Int(1), Value::Text("pw".into()), Value::Unchanged];
        assert!(!s.leaves_out(&t, &on_region));
        // A table without a filter keeps every row.
        assert!(!TransformSpec::default().leaves_out(&t, &undecoded(Value::Null)));
    }

    #[test]
    fn a_row_entering_the_filter_is_inserted_whole() {
        // Keyed: a partial update of a row the target does not hold would
        // change nothing.
        let t = Transform::new(spec());
        let out = t
            .change(Change::Update {
                table: src(),
                before: Some(row(1, "us")),
                after: vec![Value::Int(1), Value::Unchanged, Value::Text("eu".into())],
            })
            .unwrap();
        assert!(
            matches!(&out, Some(Change::Insert { row, .. }) if !row.contains(&Value::Unchanged)),
            "{out:?}"
        );
    }

    #[test]
    fn a_keyless_row_entering_the_filter_is_inserted_whole() {
        let t = Transform::new(spec());
        let keyless = Arc::new(TableSchema {
            key: vec![],
            ..(*src()).clone()
        });
        let out = t
            .change(Change::Update {
                table: keyless,
                before: Some(row(1, "us")),
                after: vec![Value::Int(1), Value::Unchanged, Value::Text("eu".into())],
            })
            .unwrap();
        let Some(Change::Insert { row: r, .. }) = out else {
            panic!("expected an insert, got {out:?}");
        };
        // The unchanged column comes from the old image.
        assert!(!r.iter().any(|v| matches!(v, Value::Unchanged)), "{r:?}");
    }

    #[test]
    fn update_leaving_the_filter_becomes_delete() {
        let t = Transform::new(spec());
        let out = t
            .change(Change::Update {
                table: src(),
                before: Some(row(1, "eu")),
                after: row(1, "us"),
            })
            .unwrap();
        assert!(matches!(out, Some(Change::Delete { .. })));
    }

    #[test]
    fn op_filter_drops_deletes() {
        let mut s = spec();
        s.ops.delete = false;
        let t = Transform::new(s);
        assert!(
            t.change(Change::Delete {
                table: src(),
                before: row(1, "eu")
            })
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn excluding_a_key_column_is_an_error() {
        let mut s = TransformSpec::default();
        s.tables.insert(
            "orders".into(),
            TableRule {
                exclude_columns: vec!["id".into()],
                ..Default::default()
            },
        );
        let err = Transform::new(s).target_table(&src()).unwrap_err();
        assert!(err.to_string().contains("part of its key"));
    }
}
