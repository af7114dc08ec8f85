//! Examples of the merge rules; `property.rs` checks them at random.

use super::*;
use ferry_core::{Column, ColumnType, TableSchema};
use std::sync::Arc;

/// A table of integer `columns`, keyed by the first.
pub(super) fn int_table(name: &str, columns: &[&str]) -> TableRef {
    let col = |n: &&str| Column {
        name: (*n).into(),
        ty: ColumnType::Int64,
        nullable: true,
        source_type: "int".into(),
        user_type: None,
    };
    Arc::new(TableSchema {
        name: TableName::bare(name),
        columns: columns.iter().map(col).collect(),
        key: vec![0],
        version: 1,
        key_deferrable: false,
    })
}

fn table() -> TableRef {
    int_table("t", &["id", "v"])
}

fn row(id: i64, v: i64) -> Vec<Value> {
    vec![Value::Int(id), Value::Int(v)]
}

fn ins(id: i64, v: i64) -> Change {
    Change::Insert {
        table: table(),
        row: row(id, v),
    }
}
fn upd(id: i64, v: i64) -> Change {
    Change::Update {
        table: table(),
        before: None,
        after: row(id, v),
    }
}
fn del(id: i64) -> Change {
    Change::Delete {
        table: table(),
        before: vec![Value::Int(id), Value::Unchanged],
    }
}

type Rows = Vec<Vec<Value>>;

/// Deletes, upserts and updates of every `Rows` step.
fn rows_of(steps: &[Step]) -> (Rows, Rows, Rows) {
    let mut d = Vec::new();
    let mut u = Vec::new();
    let mut p = Vec::new();
    for s in steps {
        if let Step::Rows(ops) = s {
            for o in ops {
                d.extend(o.deletes.clone());
                u.extend(o.upserts.clone());
                p.extend(o.updates.clone());
            }
        }
    }
    (d, u, p)
}

#[test]
fn insert_update_update_is_one_upsert() {
    let steps = merge([ins(1, 1), upd(1, 2), upd(1, 3)]);
    assert_eq!(rows_of(&steps), (vec![], vec![row(1, 3)], vec![]));
}

#[test]
fn insert_delete_is_nothing() {
    assert!(merge([ins(1, 1), upd(1, 2), del(1)]).is_empty());
}

#[test]
fn update_delete_is_delete_and_delete_insert_is_upsert() {
    assert_eq!(
        rows_of(&merge([upd(1, 2), del(1)])).0,
        vec![vec![Value::Int(1)]]
    );
    assert_eq!(rows_of(&merge([del(1), ins(1, 5)])).1, vec![row(1, 5)]);
}

#[test]
fn key_change_deletes_old_and_upserts_new() {
    let mv = Change::Update {
        table: table(),
        before: Some(row(1, 1)),
        after: row(2, 1),
    };
    let (d, u, _) = rows_of(&merge([mv]));
    assert_eq!(d, vec![vec![Value::Int(1)]]);
    assert_eq!(u, vec![row(2, 1)]);
    // insert then move: the old key never existed on the target.
    let mv = Change::Update {
        table: table(),
        before: Some(row(1, 1)),
        after: row(2, 1),
    };
    let (d, u, _) = rows_of(&merge([ins(1, 1), mv]));
    assert!(d.is_empty());
    assert_eq!(u, vec![row(2, 1)]);
}

#[test]
fn partial_updates_merge_and_stay_partial() {
    let partial = |id, v: Value| Change::Update {
        table: table(),
        before: None,
        after: vec![Value::Int(id), v],
    };
    let (_, u, p) = rows_of(&merge([partial(1, Value::Unchanged)]));
    assert!(u.is_empty());
    assert_eq!(p.len(), 1);
    let (_, u, _) = rows_of(&merge([ins(1, 1), partial(1, Value::Unchanged)]));
    assert_eq!(u, vec![row(1, 1)]);
}

#[test]
fn partial_key_move_stands_alone() {
    let mv = Change::Update {
        table: table(),
        before: Some(vec![Value::Int(1), Value::Unchanged]),
        after: vec![Value::Int(2), Value::Unchanged],
    };
    let steps = merge([upd(5, 5), mv, upd(6, 6)]);
    assert_eq!(steps.len(), 3);
    assert!(matches!(steps[1], Step::MoveKey { .. }));
}

#[test]
fn truncate_drops_earlier_rows_and_keeps_order() {
    let steps = merge([
        ins(1, 1),
        Change::Truncate {
            tables: vec![table()],
        },
        ins(2, 2),
    ]);
    assert_eq!(steps.len(), 2);
    assert!(matches!(steps[0], Step::Truncate(_)));
    assert_eq!(rows_of(&steps).1, vec![row(2, 2)]);
}

#[test]
fn keyless_changes_keep_their_order_and_are_not_merged() {
    let keyless = Arc::new(TableSchema {
        name: TableName::bare("log"),
        key: vec![],
        ..(*table()).clone()
    });
    let k = |c: fn(TableRef) -> Change| c(keyless.clone());
    let steps = merge([
        k(|t| Change::Insert {
            table: t,
            row: row(1, 1),
        }),
        ins(7, 7),
        // An identical row: two rows on the target, not one.
        k(|t| Change::Insert {
            table: t,
            row: row(1, 1),
        }),
        k(|t| Change::Update {
            table: t,
            before: Some(row(1, 1)),
            after: row(1, 2),
        }),
        k(|t| Change::Delete {
            table: t,
            before: row(1, 2),
        }),
        upd(7, 8),
    ]);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(rows_of(&steps).1, vec![row(7, 8)]);
    let Step::Keyless { table, ops } = &steps[1] else {
        panic!("expected the keyless step after the merged rows: {steps:?}");
    };
    assert_eq!(table.name, TableName::bare("log"));
    assert_eq!(
        ops,
        &vec![
            KeylessOp::Insert(row(1, 1)),
            KeylessOp::Insert(row(1, 1)),
            KeylessOp::Update {
                before: row(1, 1),
                after: row(1, 2)
            },
            KeylessOp::Delete(row(1, 2)),
        ]
    );
    // A truncate keeps its place: ops before it are dropped with it,
    // ops after it follow it.
    let steps = merge([
        k(|t| Change::Insert {
            table: t,
            row: row(1, 1),
        }),
        Change::Truncate {
            tables: vec![keyless.clone()],
        },
        k(|t| Change::Insert {
            table: t,
            row: row(2, 2),
        }),
    ]);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(matches!(steps[0], Step::Truncate(_)));
    assert!(
        matches!(&steps[1], Step::Keyless { ops, .. } if ops == &vec![KeylessOp::Insert(row(2, 2))])
    );
}

fn mv(before: Vec<Value>, after: Vec<Value>) -> Change {
    Change::Update {
        table: table(),
        before: Some(before),
        after,
    }
}

#[test]
fn a_swap_under_a_deferred_key_writes_both_rows() {
    // UPDATE t SET id = 3 - id WHERE id IN (1, 2), REPLICA IDENTITY FULL:
    // key 2 holds two rows between the two changes.
    let steps = merge([mv(row(1, 10), row(2, 10)), mv(row(2, 20), row(1, 20))]);
    let (d, mut u, p) = rows_of(&steps);
    u.sort();
    assert_eq!((d, u, p), (vec![], vec![row(1, 20), row(2, 10)], vec![]));
}

#[test]
fn an_insert_under_a_taken_deferred_key_then_the_old_row_deleted_keeps_the_new() {
    let del_full = Change::Delete {
        table: table(),
        before: row(1, 1),
    };
    let (d, u, _) = rows_of(&merge([ins(1, 2), del_full]));
    assert_eq!((d, u), (vec![], vec![row(1, 2)]));
}

#[test]
fn a_cycle_through_a_free_key_is_two_upserts() {
    let steps = merge([
        mv(row(1, 10), row(9, 10)),
        mv(row(2, 20), row(1, 20)),
        mv(row(9, 10), row(2, 10)),
    ]);
    let (d, mut u, _) = rows_of(&steps);
    u.sort();
    assert_eq!((d, u), (vec![], vec![row(1, 20), row(2, 10)]));
}
