//! The gateway's in-memory replica: each table as a map from key to row,
//! in ferry's key order, changed only by whole committed batches.
//!
//! The pipeline writes through [`MemorySink`](super::sink::MemorySink),
//! which buffers a transaction and hands it here at commit; readers take
//! the read lock for one lookup or one range, so a reader sees the state
//! after some commit, never part of one. The applied position of that
//! state is published on a `watch` channel *after* the commit is visible,
//! so a reader that saw position `p` on the channel finds everything up
//! to `p` in the maps.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ferry_core::checkpoint::APPLIED_SCOPE;
use ferry_core::{
    Alteration, Checkpoint, CheckpointRecord, Error, KeyRange, Position, Result, Step, TableOps,
    TableRef, Value,
};
use tokio::sync::watch;

/// One table: its current structure and its rows by key.
#[derive(Debug)]
pub struct Table {
    pub schema: TableRef,
    pub rows: BTreeMap<Vec<Value>, Vec<Value>>,
    /// Approximate bytes the rows hold (keys and values), for the memory
    /// figure `/status` reports.
    pub bytes: usize,
}

fn row_bytes(key: &[Value], row: &[Value]) -> usize {
    key.iter().chain(row).map(Value::approx_size).sum()
}

impl Table {
    fn new(schema: TableRef) -> Self {
        Table {
            schema,
            rows: BTreeMap::new(),
            bytes: 0,
        }
    }

    fn put(&mut self, row: Vec<Value>) {
        let key = self.schema.key_of(&row);
        self.bytes += row_bytes(&key, &row);
        if let Some(old) = self.rows.insert(key.clone(), row) {
            self.bytes = self.bytes.saturating_sub(row_bytes(&key, &old));
        }
    }

    fn remove(&mut self, key: &[Value]) -> Option<Vec<Value>> {
        let old = self.rows.remove(key)?;
        self.bytes = self.bytes.saturating_sub(row_bytes(key, &old));
        Some(old)
    }

    /// Sets the known columns of `row` on the row with its key; a row that
    /// is not there gets them with NULL for the unknown ones (cannot happen
    /// for a consistent stream, but never invents a panic).
    fn merge(&mut self, row: &[Value]) {
        let key = self.schema.key_of(row);
        let mut merged = self
            .rows
            .get(&key)
            .cloned()
            .unwrap_or_else(|| vec![Value::Null; row.len()]);
        merged.resize(row.len(), Value::Null);
        for (slot, v) in merged.iter_mut().zip(row) {
            if !matches!(v, Value::Unchanged) {
                *slot = v.clone();
            }
        }
        self.put(merged);
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.bytes = 0;
    }

    /// Re-shapes every row for the table's new structure `to`: columns
    /// keep their values by name (or by their old name when renamed),
    /// added columns hold the `alter.filled` value or NULL.
    fn alter(&mut self, to: TableRef, alter: &Alteration) {
        let from = std::mem::replace(&mut self.schema, to.clone());
        let sources: Vec<Option<usize>> = to
            .columns
            .iter()
            .map(|c| {
                let old = alter
                    .renamed
                    .iter()
                    .find(|(_, new)| *new == c.name)
                    .map_or(c.name.as_str(), |(old, _)| old.as_str());
                from.column_index(old)
            })
            .collect();
        let fill: Vec<Value> = to
            .columns
            .iter()
            .map(|c| {
                alter
                    .filled
                    .iter()
                    .find(|(n, _)| *n == c.name)
                    .map_or(Value::Null, |(_, v)| v.clone())
            })
            .collect();
        let rows = std::mem::take(&mut self.rows);
        self.bytes = 0;
        for (_, old) in rows {
            let row = sources
                .iter()
                .zip(&fill)
                .map(|(src, fill)| match src {
                    Some(i) => old.get(*i).cloned().unwrap_or(Value::Null),
                    None => fill.clone(),
                })
                .collect();
            self.put(row);
        }
    }
}

/// One unit of a buffered transaction (see `sink.rs`).
#[derive(Debug)]
pub enum Pending {
    Steps(Vec<Step>),
    Load(TableRef, Vec<Vec<Value>>),
    Clear(TableRef),
}

/// What the replica holds: tables and the checkpoint records committed
/// with them.
#[derive(Debug, Default)]
pub struct State {
    pub tables: BTreeMap<String, Table>,
    /// The applied position of exactly these rows: a reader takes it under
    /// the same lock as the rows, so the token it returns never claims
    /// more, or less, than what it read.
    pub applied: Option<Position>,
    records: BTreeMap<String, String>,
}

impl State {
    fn table(&mut self, t: &TableRef) -> &mut Table {
        self.tables
            .entry(t.name.to_string())
            .or_insert_with(|| Table::new(t.clone()))
    }

    fn apply(&mut self, p: Pending) {
        match p {
            Pending::Steps(steps) => steps.into_iter().for_each(|s| self.step(s)),
            Pending::Load(t, rows) => {
                let table = self.table(&t);
                rows.into_iter().for_each(|r| table.put(r));
            }
            Pending::Clear(t) => self.table(&t).clear(),
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Rows(ops) => ops.into_iter().for_each(|o| self.rows(o)),
            Step::Truncate(tables) => tables.iter().for_each(|t| self.table(t).clear()),
            Step::Schema { table, alter } => {
                let t = self.table(&table);
                if t.schema != table {
                    t.alter(table, &alter);
                }
            }
            Step::MoveKey {
                table,
                old_key,
                row,
            } => {
                let t = self.table(&table);
                let old = t.remove(&old_key);
                let mut merged = old.unwrap_or_else(|| vec![Value::Null; row.len()]);
                merged.resize(row.len(), Value::Null);
                for (slot, v) in merged.iter_mut().zip(row) {
                    if !matches!(v, Value::Unchanged) {
                        *slot = v;
                    }
                }
                t.put(merged);
            }
            Step::Replace {
                table,
                range,
                rows,
                keep_others,
            } => {
                let t = self.table(&table);
                if !keep_others {
                    let doomed: Vec<Vec<Value>> = keys_in(&t.rows, &range);
                    doomed.iter().for_each(|k| {
                        t.remove(k);
                    });
                }
                rows.into_iter().for_each(|r| t.put(r));
            }
            // Refused before any step applies (`refuse_keyless`); a
            // gateway pipeline never runs active-active.
            Step::Keyless { .. } | Step::Checked { .. } | Step::Stamp { .. } => {}
        }
    }

    fn rows(&mut self, ops: TableOps) {
        let t = self.table(&ops.table);
        let key_len = t.schema.key.len();
        for d in &ops.deletes {
            // A delete holds the key, or a whole before-image.
            let key = if d.len() == key_len {
                d.clone()
            } else {
                t.schema.key_of(d)
            };
            t.remove(&key);
        }
        for row in ops.upserts {
            if row.iter().any(|v| matches!(v, Value::Unchanged)) {
                t.merge(&row);
            } else {
                t.put(row);
            }
        }
        for row in &ops.updates {
            t.merge(row);
        }
    }
}

/// Tables without a key are refused at start (`MemorySink::ensure_tables`);
/// one that loses its key while streaming stops the pipeline here.
fn refuse_keyless(p: &Pending) -> Result<()> {
    let keyless = match p {
        Pending::Steps(steps) => steps.iter().find_map(|s| match s {
            Step::Keyless { table, .. } => Some(table),
            _ => None,
        }),
        Pending::Load(t, _) | Pending::Clear(t) => t.is_keyless().then_some(t),
    };
    match keyless {
        Some(t) => Err(keyless_error(t)),
        None => Ok(()),
    }
}

pub fn keyless_error(t: &TableRef) -> Error {
    Error::fatal(format!(
        "table {} has no key: the gateway serves rows by key",
        t.name
    ))
    .with_fix("give the table a primary key, or leave it out with `tables.exclude`")
}

/// Keys of `rows` inside `range` (`lower < key <= upper`).
fn keys_in(rows: &BTreeMap<Vec<Value>, Vec<Value>>, range: &KeyRange) -> Vec<Vec<Value>> {
    let lower = range
        .lower
        .as_ref()
        .map_or(Bound::Unbounded, |l| Bound::Excluded(l.clone()));
    let upper = range
        .upper
        .as_ref()
        .map_or(Bound::Unbounded, |u| Bound::Included(u.clone()));
    rows.range((lower, upper)).map(|(k, _)| k.clone()).collect()
}

/// The applied position and when it was published.
#[derive(Debug, Clone)]
pub struct Applied {
    pub position: Option<Position>,
    pub at: Instant,
}

/// The shared replica.
pub struct Replica {
    state: RwLock<State>,
    applied: watch::Sender<Applied>,
}

impl Default for Replica {
    fn default() -> Self {
        Replica {
            state: RwLock::new(State::default()),
            applied: watch::channel(Applied {
                position: None,
                at: Instant::now(),
            })
            .0,
        }
    }
}

impl Replica {
    pub fn new() -> Arc<Replica> {
        Arc::new(Replica::default())
    }

    /// Reads the replica under its read lock.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits on the applied position.
    pub fn watch(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    pub fn applied(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// The checkpoint committed so far (a restarted pipeline resumes from it).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.read(|s| {
            let records: Vec<CheckpointRecord> = s
                .records
                .iter()
                .map(|(scope, value)| CheckpointRecord {
                    scope: scope.clone(),
                    value: value.clone(),
                })
                .collect();
            Checkpoint::from_records(&records)
        })
    }

    /// Forgets everything (`CheckpointStore::clear`).
    pub fn clear(&self) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State::default();
        self.applied.send_replace(Applied {
            position: None,
            at: Instant::now(),
        });
    }

    /// Applies a buffered transaction and its checkpoint records at once,
    /// then publishes the applied position it reached. Everything that can
    /// fail is checked before the first change, so a refused transaction
    /// leaves the replica as it was.
    pub fn commit(&self, pending: Vec<Pending>, records: &[CheckpointRecord]) -> Result<()> {
        pending.iter().try_for_each(refuse_keyless)?;
        let mut applied = None;
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            pending.into_iter().for_each(|p| state.apply(p));
            for r in records {
                if r.scope == APPLIED_SCOPE {
                    applied = Some(Position::from_envelope(&r.value).map_err(|e| {
                        Error::fatal(format!("the pipeline committed a bad position: {e}"))
                    })?);
                }
                state.records.insert(r.scope.clone(), r.value.clone());
            }
            if let Some(p) = &applied
                && state.applied.as_ref().is_none_or(|old| p >= old)
            {
                state.applied = Some(p.clone());
            }
        }
        if let Some(p) = applied {
            self.applied.send_modify(|a| {
                // Positions only move forward; a replayed commit never
                // moves the published one back.
                if a.position.as_ref().is_none_or(|old| p >= *old) {
                    a.position = Some(p);
                }
                a.at = Instant::now();
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, PgPosition, TableName, TableSchema};

    fn schema(cols: &[&str]) -> TableRef {
        Arc::new(TableSchema {
            name: TableName::new(Some("public"), "t"),
            columns: cols
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    ty: ColumnType::Int64,
                    nullable: true,
                    source_type: "bigint".into(),
                    user_type: None,
                })
                .collect(),
            key: vec![0],
            version: cols.len() as u32,
            key_deferrable: false,
        })
    }

    fn rows(r: &Replica) -> Vec<Vec<Value>> {
        r.read(|s| s.tables["public.t"].rows.values().cloned().collect())
    }

    fn int(v: i64) -> Value {
        Value::Int(v)
    }

    #[test]
    fn a_commit_applies_steps_and_publishes_its_position() {
        let r = Replica::default();
        let t = schema(&["id", "v"]);
        r.commit(
            vec![Pending::Load(
                t.clone(),
                vec![vec![int(1), int(10)], vec![int(2), int(20)]],
            )],
            &[],
        )
        .unwrap();
        assert!(r.applied().position.is_none());
        let mut ops = TableOps::new(t.clone());
        ops.deletes.push(vec![int(1)]);
        ops.upserts.push(vec![int(3), int(30)]);
        ops.updates.push(vec![int(2), Value::Unchanged]);
        ops.updates.push(vec![int(3), int(31)]);
        let pos = Position::Postgres(PgPosition {
            commit_lsn: ferry_core::Lsn(5),
            lsn: ferry_core::Lsn(9),
        });
        r.commit(
            vec![Pending::Steps(vec![Step::Rows(vec![ops])])],
            &[CheckpointRecord::applied(&pos)],
        )
        .unwrap();
        assert_eq!(rows(&r), vec![vec![int(2), int(20)], vec![int(3), int(31)]]);
        assert_eq!(r.applied().position, Some(pos.clone()));
        assert_eq!(r.checkpoint().unwrap().applied, Some(pos));
    }

    #[test]
    fn schema_changes_keep_values_by_name_and_fill_added_columns() {
        let r = Replica::default();
        let t = schema(&["id", "v"]);
        r.commit(vec![Pending::Load(t, vec![vec![int(1), int(10)]])], &[])
            .unwrap();
        let to = schema(&["id", "w", "x"]);
        let alter = Alteration {
            renamed: vec![("v".into(), "w".into())],
            filled: vec![("x".into(), int(7))],
        };
        r.commit(
            vec![Pending::Steps(vec![Step::Schema { table: to, alter }])],
            &[],
        )
        .unwrap();
        assert_eq!(rows(&r), vec![vec![int(1), int(10), int(7)]]);
    }

    #[test]
    fn replace_swaps_one_key_range_and_move_key_moves_a_row() {
        let r = Replica::default();
        let t = schema(&["id", "v"]);
        let all = (1..=5).map(|i| vec![int(i), int(i)]).collect();
        r.commit(vec![Pending::Load(t.clone(), all)], &[]).unwrap();
        let replace = Step::Replace {
            table: t.clone(),
            range: KeyRange {
                lower: Some(vec![int(1)]),
                upper: Some(vec![int(4)]),
            },
            rows: vec![vec![int(3), int(33)]],
            keep_others: false,
        };
        let mv = Step::MoveKey {
            table: t,
            old_key: vec![int(5)],
            row: vec![int(6), Value::Unchanged],
        };
        r.commit(vec![Pending::Steps(vec![replace, mv])], &[])
            .unwrap();
        assert_eq!(
            rows(&r),
            vec![
                vec![int(1), int(1)],
                vec![int(3), int(33)],
                vec![int(6), int(5)]
            ]
        );
        assert!(r.read(|s| s.tables["public.t"].bytes) > 0);
    }
}
