//! Hot-row merge: the changes of a batch become one write per row.
//!
//! Insert, update, update of one key becomes one upsert of the final row;
//! insert then delete becomes nothing; update then delete becomes a delete.
//! A key change is a delete of the old key and an insert of the new one.
//! Truncates, structure changes, re-copy chunks and key moves of partially known rows must
//! keep their place, so they end the current step and stand alone.
//! Changes to a table without a key are never merged: they keep their
//! order in one [`Step::Keyless`] per table and step.

use std::collections::HashMap;

use ferry_core::{Change, KeylessOp, Step, TableName, TableOps, TableRef, Value};

#[derive(Debug)]
struct Entry {
    /// The first change of the batch to this key was an insert: the row did
    /// not exist before the batch, so a final delete leaves nothing to do.
    fresh: bool,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Upsert(Vec<Value>),
    Update(Vec<Value>),
    Delete(Vec<Value>),
}

struct TableEntries {
    table: TableRef,
    rows: HashMap<Vec<Value>, Entry>,
    /// Keys in first-touch order, so output is deterministic.
    order: Vec<Vec<Value>>,
}

/// Accumulates changes and produces merged [`Step`]s.
#[derive(Default)]
pub struct Merger {
    steps: Vec<Step>,
    tables: Vec<TableEntries>,
    index: HashMap<TableName, usize>,
    /// Changes to keyless tables in this step, in order, per table.
    keyless: Vec<(TableRef, Vec<KeylessOp>)>,
    changes_in: usize,
}

/// Sets the values of `update` that are not [`Value::Unchanged`] on `base`.
pub(crate) fn overlay(base: &mut [Value], update: Vec<Value>) {
    for (slot, v) in base.iter_mut().zip(update) {
        if !matches!(v, Value::Unchanged) {
            *slot = v;
        }
    }
}

fn is_full(row: &[Value]) -> bool {
    !row.iter().any(|v| matches!(v, Value::Unchanged))
}

impl Merger {
    pub fn new() -> Self {
        Merger::default()
    }

    /// Number of changes pushed so far (before merging).
    pub fn changes_in(&self) -> usize {
        self.changes_in
    }

    fn entries(&mut self, table: &TableRef) -> &mut TableEntries {
        let i = match self.index.get(&table.name) {
            Some(&i) if self.tables[i].table.version == table.version => i,
            Some(_) => {
                // A new structure of a table mid-batch: only after a Schema
                // change, which already closed the step.
                self.close_step();
                return self.entries(table);
            }
            None => {
                self.tables.push(TableEntries {
                    table: table.clone(),
                    rows: HashMap::new(),
                    order: Vec::new(),
                });
                self.index.insert(table.name.clone(), self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        &mut self.tables[i]
    }

    fn put(
        &mut self,
        table: &TableRef,
        key: Vec<Value>,
        f: impl FnOnce(Option<Entry>) -> Option<Entry>,
    ) {
        let t = self.entries(table);
        let prev = t.rows.remove(&key);
        let had = prev.is_some();
        if let Some(e) = f(prev) {
            if !had {
                t.order.push(key.clone());
            }
            t.rows.insert(key, e);
        } else if had {
            // Entry vanished (insert then delete); drop it from the order
            // lazily: `order` is filtered against `rows` when closing.
        }
    }

    /// Appends a change to a keyless table to its table's ordered list.
    fn push_keyless(&mut self, table: &TableRef, op: KeylessOp) {
        let i = match self.keyless.iter().position(|(t, _)| t.name == table.name) {
            Some(i) if self.keyless[i].0.version == table.version => i,
            Some(_) => {
                self.close_step();
                return self.push_keyless(table, op);
            }
            None => {
                self.keyless.push((table.clone(), Vec::new()));
                self.keyless.len() - 1
            }
        };
        self.keyless[i].1.push(op);
    }

    pub fn push(&mut self, change: Change) {
        self.changes_in += 1;
        if let Some(t) = change.table().filter(|t| t.is_keyless()).cloned() {
            match change {
                Change::Insert { row, .. } => return self.push_keyless(&t, KeylessOp::Insert(row)),
                Change::Update {
                    before: Some(before),
                    after,
                    ..
                } => return self.push_keyless(&t, KeylessOp::Update { before, after }),
                Change::Delete { before, .. } => {
                    return self.push_keyless(&t, KeylessOp::Delete(before));
                }
                // An update without its before-image cannot find its row;
                // the source refuses such tables, so this is not reached.
                _ => {}
            }
        }
        match change {
            Change::Insert { table, row } => {
                let key = table.key_of(&row);
                self.put(&table, key, |prev| {
                    Some(Entry {
                        fresh: prev.as_ref().is_none_or(|e| e.fresh),
                        op: Op::Upsert(row),
                    })
                });
            }
            Change::Update {
                table,
                before,
                after,
            } => {
                let new_key = table.key_of(&after);
                let old_key = before
                    .as_ref()
                    .map(|b| table.key_of(b))
                    .filter(|k| *k != new_key);
                match old_key {
                    None => self.update_in_place(&table, new_key, after),
                    Some(old_key) => self.move_key(&table, old_key, new_key, after),
                }
            }
            Change::Delete { table, before } => {
                let key = table.key_of(&before);
                let k2 = key.clone();
                self.put(&table, key, |prev| match prev {
                    Some(e) if e.fresh => None,
                    _ => Some(Entry {
                        fresh: false,
                        op: Op::Delete(k2),
                    }),
                });
            }
            Change::Truncate { tables } => {
                for t in &tables {
                    if let Some(&i) = self.index.get(&t.name) {
                        self.tables[i].rows.clear();
                        self.tables[i].order.clear();
                    }
                    self.keyless.retain(|(k, _)| k.name != t.name);
                }
                self.close_step();
                self.steps.push(Step::Truncate(tables));
            }
            Change::Schema { table, alter } => {
                self.close_step();
                self.steps.push(Step::Schema { table, alter });
            }
            // Recorded by the dispatcher; nothing to write.
            Change::RecopyStart { .. } => {}
            Change::RecopyRows { table, range, rows } => {
                // The range's rows as of this point: what the step holds
                // for the table so far applies first, later changes after.
                self.close_step();
                self.steps.push(Step::Replace {
                    table,
                    range,
                    rows,
                    keep_others: false,
                });
            }
        }
    }

    fn update_in_place(&mut self, table: &TableRef, key: Vec<Value>, after: Vec<Value>) {
        self.put(table, key, |prev| {
            let (fresh, op) = match prev {
                None => (
                    false,
                    if is_full(&after) {
                        Op::Upsert(after)
                    } else {
                        Op::Update(after)
                    },
                ),
                Some(Entry {
                    fresh,
                    op: Op::Upsert(mut row),
                }) => {
                    overlay(&mut row, after);
                    (fresh, Op::Upsert(row))
                }
                Some(Entry {
                    fresh,
                    op: Op::Update(mut row),
                }) => {
                    overlay(&mut row, after);
                    (
                        fresh,
                        if is_full(&row) {
                            Op::Upsert(row)
                        } else {
                            Op::Update(row)
                        },
                    )
                }
                // An update after a delete cannot come from a consistent
                // source; keep the newest full image if we have one.
                Some(Entry {
                    fresh,
                    op: Op::Delete(k),
                }) => (
                    fresh,
                    if is_full(&after) {
                        Op::Upsert(after)
                    } else {
                        Op::Delete(k)
                    },
                ),
            };
            Some(Entry { fresh, op })
        });
    }

    fn move_key(
        &mut self,
        table: &TableRef,
        old_key: Vec<Value>,
        new_key: Vec<Value>,
        after: Vec<Value>,
    ) {
        // Complete a partial image from what the batch knows of the old row.
        let known = {
            let t = self.entries(table);
            match t.rows.get(&old_key) {
                Some(Entry {
                    op: Op::Upsert(row),
                    ..
                }) => Some(row.clone()),
                _ => None,
            }
        };
        let full = if is_full(&after) {
            Some(after)
        } else if let Some(mut row) = known {
            overlay(&mut row, after);
            Some(row)
        } else {
            // The target must move the row itself: keep it in order.
            self.close_step();
            self.steps.push(Step::MoveKey {
                table: table.clone(),
                old_key,
                row: after,
            });
            return;
        };
        let k = old_key.clone();
        self.put(table, old_key, |prev| match prev {
            Some(e) if e.fresh => None,
            _ => Some(Entry {
                fresh: false,
                op: Op::Delete(k),
            }),
        });
        let row = full.expect("full image");
        self.put(table, new_key, |prev| {
            Some(Entry {
                fresh: prev.as_ref().is_none_or(|e| e.fresh),
                op: Op::Upsert(row),
            })
        });
    }

    fn close_step(&mut self) {
        let mut ops = Vec::new();
        for mut t in self.tables.drain(..) {
            let mut out = TableOps::new(t.table.clone());
            for key in t.order.drain(..) {
                match t.rows.remove(&key) {
                    Some(Entry {
                        op: Op::Upsert(row),
                        ..
                    }) => out.upserts.push(row),
                    Some(Entry {
                        op: Op::Update(row),
                        ..
                    }) => out.updates.push(row),
                    Some(Entry {
                        op: Op::Delete(k), ..
                    }) => out.deletes.push(k),
                    None => {}
                }
            }
            if !out.is_empty() {
                ops.push(out);
            }
        }
        self.index.clear();
        if !ops.is_empty() {
            self.steps.push(Step::Rows(ops));
        }
        for (table, ops) in self.keyless.drain(..) {
            self.steps.push(Step::Keyless { table, ops });
        }
    }

    /// The merged steps, in the order they must be applied.
    pub fn finish(mut self) -> Vec<Step> {
        self.close_step();
        self.steps
    }
}

/// Merges a sequence of changes.
pub fn merge(changes: impl IntoIterator<Item = Change>) -> Vec<Step> {
    let mut m = Merger::new();
    for c in changes {
        m.push(c);
    }
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, TableSchema};
    use std::sync::Arc;

    fn table() -> TableRef {
        let col = |n: &str| Column {
            name: n.into(),
            ty: ColumnType::Int64,
            nullable: true,
            source_type: "int".into(),
            user_type: None,
        };
        Arc::new(TableSchema {
            name: TableName::bare("t"),
            columns: vec![col("id"), col("v")],
            key: vec![0],
            version: 1,
        })
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
}
