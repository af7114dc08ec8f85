//! What the pipeline hands to a sink after hot-row merge.

use crate::checkpoint::KeyRange;
use crate::position::Position;
use crate::schema::{Alteration, TableRef};
use crate::value::Value;

/// The net effect on one row of the changes merged into a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    /// Make the row exist with exactly these values (insert or replace).
    /// May contain [`Value::Unchanged`] only when `exists` is known true; then
    /// it is an update of the listed columns.
    Upsert(Vec<Value>),
    /// Update the columns that are not [`Value::Unchanged`] of an existing row.
    Update(Vec<Value>),
    /// Remove the row with this key (no error if it is absent).
    Delete(Vec<Value>),
}

/// Row operations on one table, in an order that is safe to apply: all
/// deletes may run before all upserts, and upserts before updates (merge
/// guarantees each key appears once, in one of the three lists, so the
/// order between keys is free: a swap of two keys is two upserts).
#[derive(Debug, Clone)]
pub struct TableOps {
    pub table: TableRef,
    pub deletes: Vec<Vec<Value>>,
    pub upserts: Vec<Vec<Value>>,
    pub updates: Vec<Vec<Value>>,
}

impl TableOps {
    pub fn new(table: TableRef) -> Self {
        TableOps {
            table,
            deletes: Vec::new(),
            upserts: Vec::new(),
            updates: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.deletes.len() + self.upserts.len() + self.updates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One step of a batch. Steps apply in order; inside a `Rows` step the
/// order between tables and keys is free.
#[derive(Debug, Clone)]
pub enum Step {
    Rows(Vec<TableOps>),
    Truncate(Vec<TableRef>),
    /// A table's structure changed: the sink alters its table to match —
    /// renames first, then added columns (filled as `alter` says for the
    /// rows already there), dropped columns and changed types.
    Schema {
        table: TableRef,
        alter: Alteration,
    },
    /// A change that must apply alone, in order: an update that moves a row
    /// to a new key while not every column is known.
    MoveKey {
        table: TableRef,
        old_key: Vec<Value>,
        row: Vec<Value>,
    },
    /// Online re-copy of one key range: the target's rows of `table` with a
    /// key in `range` become exactly `rows` (rows in the range that are not
    /// among them are deleted, unless `keep_others`: the pipeline does not
    /// pass deletes). A table without a key has one range, the whole table.
    Replace {
        table: TableRef,
        range: KeyRange,
        rows: Vec<Vec<Value>>,
        keep_others: bool,
    },
    /// Changes to a table without a key, in source order, never merged:
    /// the table may hold identical rows, so each change stands for itself.
    Keyless {
        table: TableRef,
        ops: Vec<KeylessOp>,
    },
    /// Active-active apply ([`crate::conflict`], ADR 0014): the source
    /// transaction this batch applies (a batch then holds exactly one).
    /// Comes first. The sink records the transaction's commit time and the
    /// source site as those of its own commit, so conflict checks on every
    /// site compare the same times, and changes it applies are never
    /// captured back to their origin.
    Stamp {
        /// The source transaction's position (its commit LSN for a
        /// PostgreSQL source).
        position: Position,
        /// Commit time at the source, microseconds since the Unix epoch.
        commit_time_micros: Option<i64>,
    },
    /// Active-active apply: changes to a keyed table in source order, never
    /// merged, each with the before-image the source sent, so the sink can
    /// compare it with the row it holds and resolve a conflict by the
    /// table's [`ConflictPolicy`](crate::conflict::ConflictPolicy).
    Checked {
        table: TableRef,
        ops: Vec<KeylessOp>,
    },
}

/// One change to a keyless table (or, in [`Step::Checked`], to a keyed
/// table whose conflicts the sink checks). In a keyless table a row is found by its whole before-image
/// (`NULL` matching `NULL`; columns that are [`Value::Unchanged`] match
/// anything); of several identical rows, exactly one is changed.
#[derive(Debug, Clone, PartialEq)]
pub enum KeylessOp {
    Insert(Vec<Value>),
    /// Set the columns of `after` that are not [`Value::Unchanged`] on one
    /// row equal to `before`.
    Update {
        before: Vec<Value>,
        after: Vec<Value>,
    },
    /// Remove one row equal to this image.
    Delete(Vec<Value>),
}

impl Step {
    pub fn row_count(&self) -> usize {
        match self {
            Step::Rows(t) => t.iter().map(TableOps::len).sum(),
            Step::MoveKey { .. } => 1,
            Step::Keyless { ops, .. } | Step::Checked { ops, .. } => ops.len(),
            Step::Replace { rows, .. } => rows.len(),
            _ => 0,
        }
    }
}
