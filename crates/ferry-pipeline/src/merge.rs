//! Hot-row merge: the changes of a batch become one write per key.
//!
//! Insert, update, update of one key becomes one upsert of the final row;
//! insert then delete becomes nothing; update then delete becomes a delete.
//! A key change takes its row from the old key and puts it under the new
//! one. Each key keeps the target's row apart from the rows the batch put
//! under it ([`slot`]), so a swap or a cycle of keys under a deferred
//! unique key, where a key briefly holds two rows, merges to the rows the
//! source ends with.
//!
//! The result follows the sink contract ([`Step`]): inside a `Rows` step
//! each key appears once, in the deletes, the upserts or the updates.
//! Truncates, structure changes, re-copy chunks and key moves of partially
//! known rows must keep their place among the changes of their table:
//! they close that table's open rows into a step of their own and stand
//! alone after it; other tables' rows stay open. Changes to a table
//! without a key are never merged: they keep their order in one
//! [`Step::Keyless`] per table and step.

mod slot;

#[cfg(test)]
mod property;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use ferry_core::{Change, KeylessOp, Step, TableName, TableOps, TableRef, Value};

pub(crate) use slot::overlay;
use slot::{Net, Slot, is_full};

/// The open keys of one table, in first-touch order (so output is
/// deterministic).
struct TableEntries {
    table: TableRef,
    slots: HashMap<Vec<Value>, Slot>,
    order: Vec<Vec<Value>>,
}

impl TableEntries {
    fn slot(&mut self, key: Vec<Value>) -> &mut Slot {
        match self.slots.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.order.push(e.key().clone());
                e.insert(Slot::default())
            }
        }
    }

    fn into_ops(mut self) -> TableOps {
        let mut out = TableOps::new(self.table.clone());
        for key in self.order {
            let Some(slot) = self.slots.remove(&key) else {
                continue;
            };
            slot_ops(key, slot, &mut out);
        }
        out
    }

    /// Takes out the keys known to hold at most one row; under a
    /// deferrable key, a key the batch put a row under while the target
    /// may still hold one there stays open (see [`Merger::finish_part`]).
    fn take_settled(&mut self) -> TableOps {
        let mut out = TableOps::new(self.table.clone());
        let deferrable = self.table.key_deferrable;
        let mut open = Vec::new();
        for key in std::mem::take(&mut self.order) {
            let Some(slot) = self.slots.remove(&key) else {
                continue;
            };
            if deferrable && !slot.settled() {
                self.slots.insert(key.clone(), slot);
                open.push(key);
            } else {
                slot_ops(key, slot, &mut out);
            }
        }
        self.order = open;
        out
    }

    /// Approximate bytes of the rows held open.
    fn held_bytes(&self) -> usize {
        self.slots
            .values()
            .flat_map(|s| &s.arrived)
            .flatten()
            .map(Value::approx_size)
            .sum()
    }
}

fn slot_ops(key: Vec<Value>, slot: Slot, out: &mut TableOps) {
    match slot.net() {
        Net::Nothing => {}
        Net::Upsert(row) => out.upserts.push(row),
        Net::Update(row) => out.updates.push(row),
        Net::Delete => out.deletes.push(key),
    }
}

/// Accumulates changes and produces merged [`Step`]s.
#[derive(Default)]
pub struct Merger {
    steps: Vec<Step>,
    /// Keyed tables with open rows, in first-touch order.
    tables: Vec<TableEntries>,
    index: HashMap<TableName, usize>,
    /// Changes to keyless tables not yet in a step, in order, per table.
    keyless: Vec<(TableRef, Vec<KeylessOp>)>,
    changes_in: usize,
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
                // change, which already closed the table.
                self.close_table(&table.name);
                return self.entries(table);
            }
            None => {
                self.tables.push(TableEntries {
                    table: table.clone(),
                    slots: HashMap::new(),
                    order: Vec::new(),
                });
                self.index.insert(table.name.clone(), self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        &mut self.tables[i]
    }

    /// Takes a table's open rows and keyless changes out of the merger.
    fn take_table(&mut self, name: &TableName) -> (Option<TableEntries>, Option<Step>) {
        let entries = self.index.remove(name).map(|i| {
            let t = self.tables.remove(i);
            for (j, later) in self.tables.iter().enumerate().skip(i) {
                self.index.insert(later.table.name.clone(), j);
            }
            t
        });
        let keyless = self
            .keyless
            .iter()
            .position(|(t, _)| &t.name == name)
            .map(|i| {
                let (table, ops) = self.keyless.remove(i);
                Step::Keyless { table, ops }
            });
        (entries, keyless)
    }

    /// Ends the open step of one table: what the batch holds for it so far
    /// applies before whatever comes next for it.
    fn close_table(&mut self, name: &TableName) {
        let (entries, keyless) = self.take_table(name);
        if let Some(ops) = entries
            .map(TableEntries::into_ops)
            .filter(|o| !o.is_empty())
        {
            self.steps.push(Step::Rows(vec![ops]));
        }
        self.steps.extend(keyless);
    }

    /// Active-active apply: the source transaction the following changes
    /// belong to (see [`Step::Stamp`]).
    pub fn stamp(&mut self, position: ferry_core::Position, commit_time_micros: Option<i64>) {
        self.steps.push(Step::Stamp {
            position,
            commit_time_micros,
        });
    }

    /// Active-active apply: a row change to a keyed table goes to the sink
    /// as it is, in order, with its before-image ([`Step::Checked`]); any
    /// other change merges as [`Merger::push`] does.
    pub fn push_checked(&mut self, change: Change) {
        let keyed = change.table().is_some_and(|t| !t.is_keyless());
        let (table, op) = match change {
            Change::Insert { table, row } if keyed => (table, KeylessOp::Insert(row)),
            Change::Update {
                table,
                before: Some(before),
                after,
            } if keyed => (table, KeylessOp::Update { before, after }),
            Change::Update {
                table,
                before: None,
                after,
            } if keyed => {
                // The key is the before-image when the source sent none.
                let before = key_image(&table, &after);
                (table, KeylessOp::Update { before, after })
            }
            Change::Delete { table, before } if keyed => (table, KeylessOp::Delete(before)),
            other => return self.push(other),
        };
        self.changes_in += 1;
        self.close_table(&table.name);
        if let Some(Step::Checked { table: t, ops }) = self.steps.last_mut()
            && t.name == table.name
            && t.version == table.version
        {
            ops.push(op);
            return;
        }
        self.steps.push(Step::Checked {
            table,
            ops: vec![op],
        });
    }

    /// Appends a change to a keyless table to its table's ordered list.
    fn push_keyless(&mut self, table: &TableRef, op: KeylessOp) {
        let i = match self.keyless.iter().position(|(t, _)| t.name == table.name) {
            Some(i) if self.keyless[i].0.version == table.version => i,
            Some(_) => {
                self.close_table(&table.name);
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
                self.entries(&table).slot(key).arrived.push(row);
            }
            Change::Update {
                table,
                before,
                after,
            } => {
                let new_key = table.key_of(&after);
                match before {
                    Some(before) if table.key_of(&before) != new_key => {
                        self.move_key(&table, before, new_key, after)
                    }
                    before => {
                        let slot = self.entries(&table).slot(new_key);
                        slot.update(before.as_deref(), after);
                    }
                }
            }
            Change::Delete { table, before } => {
                let slot = self.entries(&table).slot(table.key_of(&before));
                let found = slot.find(Some(&before));
                slot.remove(found);
            }
            Change::Truncate { tables } => {
                for t in &tables {
                    // Whatever the batch did to the table before is wiped.
                    let _ = self.take_table(&t.name);
                }
                self.steps.push(Step::Truncate(tables));
            }
            Change::Schema { table, alter } => {
                self.close_table(&table.name);
                self.steps.push(Step::Schema { table, alter });
            }
            // Recorded by the dispatcher; nothing to write.
            Change::RecopyStart { .. } => {}
            Change::RecopyRows { table, range, rows } => {
                // The range's rows as of this point: what the batch holds
                // for the table so far applies first, later changes after.
                self.close_table(&table.name);
                self.steps.push(Step::Replace {
                    table,
                    range,
                    rows,
                    keep_others: false,
                });
            }
        }
    }

    fn move_key(
        &mut self,
        table: &TableRef,
        before: Vec<Value>,
        new_key: Vec<Value>,
        after: Vec<Value>,
    ) {
        let old_key = table.key_of(&before);
        let t = self.entries(table);
        let old = t.slot(old_key.clone());
        let found = old.find(Some(&before));
        // Complete a partial image from what the batch knows of the row.
        let mut row = old.known(found, &before);
        overlay(&mut row, after.clone());
        if is_full(&row) {
            old.remove(found);
            t.slot(new_key).arrived.push(row);
        } else {
            // The target must move the row itself: keep it in order.
            self.close_table(&table.name);
            self.steps.push(Step::MoveKey {
                table: table.clone(),
                old_key,
                row: after,
            });
        }
    }

    /// The steps of one part of a transaction too large for memory, more
    /// parts of which follow: everything merged so far, except, under a
    /// deferrable key, the keys that may hold two rows at this point (a
    /// swap half done): a target with a unique key cannot hold both, so
    /// those keys stay open until a later part or [`Merger::finish`]
    /// settles them. Other keys of those tables are written now; a later
    /// change to one starts from what the target then holds.
    pub fn finish_part(&mut self) -> Vec<Step> {
        let mut ops = Vec::new();
        for t in &mut self.tables {
            let o = t.take_settled();
            if !o.is_empty() {
                ops.push(o);
            }
        }
        self.tables.retain(|t| !t.slots.is_empty());
        let mut steps = std::mem::take(&mut self.steps);
        if !ops.is_empty() {
            steps.push(Step::Rows(ops));
        }
        for (table, ops) in self.keyless.drain(..) {
            steps.push(Step::Keyless { table, ops });
        }
        self.index = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.table.name.clone(), i))
            .collect();
        steps
    }

    /// Approximate bytes of the rows [`Merger::finish_part`] held open.
    pub fn held_bytes(&self) -> usize {
        self.tables.iter().map(TableEntries::held_bytes).sum()
    }

    /// The tables with rows held open, for an error message.
    pub fn held_tables(&self) -> Vec<TableName> {
        self.tables.iter().map(|t| t.table.name.clone()).collect()
    }

    /// The merged steps, in the order they must be applied.
    pub fn finish(mut self) -> Vec<Step> {
        let ops: Vec<TableOps> = self
            .tables
            .drain(..)
            .map(TableEntries::into_ops)
            .filter(|o| !o.is_empty())
            .collect();
        if !ops.is_empty() {
            self.steps.push(Step::Rows(ops));
        }
        for (table, ops) in self.keyless.drain(..) {
            self.steps.push(Step::Keyless { table, ops });
        }
        self.steps
    }
}

/// A row image holding only `row`'s key columns (the others unchanged).
fn key_image(table: &TableRef, row: &[Value]) -> Vec<Value> {
    let mut image = vec![Value::Unchanged; row.len()];
    for &i in &table.key {
        image[i] = row[i].clone();
    }
    image
}

/// Merges a sequence of changes.
pub fn merge(changes: impl IntoIterator<Item = Change>) -> Vec<Step> {
    let mut m = Merger::new();
    for c in changes {
        m.push(c);
    }
    m.finish()
}
