//! What a structure change of a source table means for the target.
//!
//! pgoutput shows a structure change only as a new relation message: the
//! column names and types, nothing about how the columns got there. The
//! catalog fills in what the target needs to end up with the same rows:
//!
//! * **Renamed column**: a column that left and one that arrived with the
//!   same `attnum` (which a rename keeps) — renamed on the target, values
//!   kept. Told apart from a drop and an add, which would lose them.
//! * **Added column**: rows that existed before it read NULL, or the
//!   constant default it was added with, which PostgreSQL records as the
//!   column's missing value (`atthasmissing`) — added on the target with
//!   that value for the existing rows. A column added with a volatile
//!   default (`now()`, `random()`, a sequence) gives every old row its own
//!   value by rewriting the table: then the table is re-copied.
//! * **Dropped column**: dropped on the target.
//! * **Changed type**: altered on the target. If the table was rewritten
//!   (its `relfilenode` changed), the values may have changed with it
//!   (`ALTER COLUMN … TYPE … USING` any expression): re-copied.
//! * **Changed key**: cannot be followed in place: re-copied (the target's
//!   key must be changed by the operator first; see the error).
//!
//! The catalog is read when the change reaches ferry, which may be later
//! than the change itself: anything that makes the reading ambiguous (the
//! table rewritten again since, a column dropped since) errs towards a
//! re-copy, which is always exact.

use ferry_core::{ColumnType, TableSchema};

use crate::catalog::PgTable;

/// How to bring the target from one structure to the next.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// `(old name, new name)`.
    pub renamed: Vec<(String, String)>,
    /// Added columns whose existing rows hold a constant: `(name, text form)`.
    pub filled: Vec<(String, String)>,
    /// Why the table must be re-copied, if it must.
    pub recopy: Option<String>,
}

/// Compares `prev` (as ferry knew it; `prev_pg` its catalog entry then)
/// with the new relation's columns `(name, type)`; `now` is the catalog
/// entry now, when the table still exists.
pub(crate) fn plan(
    prev: &TableSchema,
    prev_pg: Option<&PgTable>,
    new: &[(String, ColumnType)],
    now: Option<&PgTable>,
) -> Plan {
    let mut plan = Plan::default();
    let in_new = |n: &str| new.iter().any(|(c, _)| c == n);
    let in_prev = |n: &str| prev.column_index(n).is_some();
    // Renames: a column gone and one arrived with the same attnum.
    if let (Some(before), Some(now)) = (prev_pg, now) {
        for gone in prev.columns.iter().filter(|c| !in_new(&c.name)) {
            let Some(attnum) = before.column(&gone.name).map(|c| c.attnum) else {
                continue;
            };
            if let Some(arrived) = now
                .columns
                .iter()
                .find(|c| c.attnum == attnum && in_new(&c.name) && !in_prev(&c.name))
            {
                plan.renamed.push((gone.name.clone(), arrived.name.clone()));
            }
        }
    }
    let old_name = |n: &str| -> String {
        plan.renamed
            .iter()
            .find(|(_, new)| new == n)
            .map_or_else(|| n.to_owned(), |(old, _)| old.clone())
    };
    let rewritten = match (prev_pg, now) {
        (Some(a), Some(b)) => a.filenode != b.filenode,
        // Unknown: assume the worst.
        _ => true,
    };
    let mut added = Vec::new();
    let mut retyped = Vec::new();
    for (name, ty) in new {
        match prev.column_index(&old_name(name)) {
            None => added.push(name.clone()),
            Some(i) if prev.columns[i].ty != *ty => retyped.push(name.clone()),
            Some(_) => {}
        }
    }
    let prev_key: Vec<String> = prev
        .key_names()
        .iter()
        .map(|k| {
            plan.renamed
                .iter()
                .find(|(old, _)| old == k)
                .map_or_else(|| (*k).to_owned(), |(_, new)| new.clone())
        })
        .collect();
    if prev_key.iter().any(|k| !in_new(k)) || retyped.iter().any(|c| prev_key.contains(c)) {
        plan.recopy = Some(format!(
            "the key ({}) was dropped or changed type",
            prev_key.join(", ")
        ));
    } else if rewritten && !retyped.is_empty() {
        plan.recopy = Some(format!(
            "the type of {} changed and the table was rewritten (its values may have changed)",
            retyped.join(", ")
        ));
    } else if rewritten && !added.is_empty() {
        plan.recopy = Some(format!(
            "{} was added and the table was rewritten (a volatile default gave each row its own value)",
            added.join(", ")
        ));
    }
    if plan.recopy.is_none() {
        for name in &added {
            let missing = now
                .and_then(|t| t.column(name))
                .and_then(|c| c.missing.clone());
            if let Some(value) = missing {
                plan.filled.push((name.clone(), value));
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::PgColumn;
    use ferry_core::{Column, TableName};

    fn int() -> ColumnType {
        ColumnType::Int32
    }

    fn text() -> ColumnType {
        ColumnType::Text {
            max_len: None,
            fixed: false,
        }
    }

    fn schema(cols: &[(&str, ColumnType)]) -> TableSchema {
        TableSchema {
            name: TableName::bare("t"),
            columns: cols
                .iter()
                .map(|(n, ty)| Column {
                    name: (*n).into(),
                    ty: ty.clone(),
                    nullable: true,
                    source_type: String::new(),
                    user_type: None,
                })
                .collect(),
            key: vec![0],
            version: 1,
            key_deferrable: false,
        }
    }

    fn pg(filenode: u32, cols: &[(&str, i16, Option<&str>)]) -> PgTable {
        PgTable {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replident: "d".into(),
            comment: None,
            keys: Vec::new(),
            filenode,
            columns: cols
                .iter()
                .map(|(n, attnum, missing)| PgColumn {
                    name: (*n).into(),
                    type_oid: 23,
                    typmod: -1,
                    not_null: false,
                    type_name: "integer".into(),
                    kind: None,
                    user_type: None,
                    generated: false,
                    bytewise: false,
                    attnum: *attnum,
                    missing: missing.map(str::to_owned),
                })
                .collect(),
        }
    }

    fn cols(c: &[(&str, ColumnType)]) -> Vec<(String, ColumnType)> {
        c.iter()
            .map(|(n, t)| ((*n).to_owned(), t.clone()))
            .collect()
    }

    #[test]
    fn a_rename_keeps_values_and_a_drop_plus_add_does_not_look_like_one() {
        let prev = schema(&[("id", int()), ("a", text())]);
        let before = pg(10, &[("id", 1, None), ("a", 2, None)]);
        // RENAME a TO b: same attnum.
        let now = pg(10, &[("id", 1, None), ("b", 2, None)]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", int()), ("b", text())]),
            Some(&now),
        );
        assert_eq!(p.renamed, vec![("a".into(), "b".into())]);
        assert!(p.recopy.is_none() && p.filled.is_empty());
        // DROP a, ADD b: a new attnum.
        let now = pg(10, &[("id", 1, None), ("b", 3, None)]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", int()), ("b", text())]),
            Some(&now),
        );
        assert!(p.renamed.is_empty());
        assert!(p.recopy.is_none(), "a nullable add needs no copy");
    }

    #[test]
    fn an_added_column_with_a_constant_default_fills_old_rows() {
        let prev = schema(&[("id", int())]);
        let before = pg(10, &[("id", 1, None)]);
        let now = pg(10, &[("id", 1, None), ("status", 2, Some("active"))]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", int()), ("status", text())]),
            Some(&now),
        );
        assert_eq!(p.filled, vec![("status".into(), "active".into())]);
        assert!(p.recopy.is_none());
    }

    #[test]
    fn a_rewrite_with_new_or_retyped_columns_is_recopied() {
        let prev = schema(&[("id", int()), ("v", int())]);
        let before = pg(10, &[("id", 1, None), ("v", 2, None)]);
        let now = pg(11, &[("id", 1, None), ("v", 2, None)]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", int()), ("v", text())]),
            Some(&now),
        );
        assert!(p.recopy.unwrap().contains("rewritten"));
        // A volatile default rewrites the table.
        let now = pg(11, &[("id", 1, None), ("v", 2, None), ("at", 3, None)]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", int()), ("v", int()), ("at", int())]),
            Some(&now),
        );
        assert!(p.recopy.is_some());
        // Without a rewrite a type change keeps its values.
        let now = pg(10, &[("id", 1, None), ("v", 2, None)]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", int()), ("v", text())]),
            Some(&now),
        );
        assert!(p.recopy.is_none());
        // A dropped column alone needs nothing, rewritten or not.
        let now = pg(11, &[("id", 1, None)]);
        let p = plan(&prev, Some(&before), &cols(&[("id", int())]), Some(&now));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_changed_key_or_an_unknown_catalog_is_recopied() {
        let prev = schema(&[("id", int()), ("v", int())]);
        let before = pg(10, &[("id", 1, None), ("v", 2, None)]);
        let now = pg(10, &[("id", 1, None), ("v", 2, None)]);
        let p = plan(
            &prev,
            Some(&before),
            &cols(&[("id", text()), ("v", int())]),
            Some(&now),
        );
        assert!(p.recopy.unwrap().contains("key"));
        let p = plan(
            &prev,
            None,
            &cols(&[("id", int()), ("v", int()), ("w", int())]),
            None,
        );
        assert!(p.recopy.is_some());
    }
}
