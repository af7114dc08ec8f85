//! Dependency tracking between transaction groups (transaction-consistent
//! mode): a group may execute once every earlier group whose write set it
//! overlaps has committed. Commit order itself is always source order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use ferry_core::{Change, TableName, Value};

fn h<T: Hash>(t: &T) -> u64 {
    let mut s = DefaultHasher::new();
    t.hash(&mut s);
    s.finish()
}

/// Rows (table, key) and whole tables a group writes.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    rows: HashSet<(u64, u64)>,
    row_tables: HashSet<u64>,
    tables: HashSet<u64>,
    /// Unknown in advance (a streamed large transaction): overlaps everything.
    all: bool,
}

impl WriteSet {
    /// A write set that overlaps every other one.
    pub fn everything() -> Self {
        WriteSet {
            all: true,
            ..WriteSet::default()
        }
    }

    fn add_row(&mut self, table: &TableName, key: &[Value]) {
        let t = h(table);
        self.rows.insert((t, h(&key)));
        self.row_tables.insert(t);
    }

    /// Marks the whole table as written: the group then runs after every
    /// earlier group on the table (`eventual` mode keeps per-table order so).
    pub fn add_table(&mut self, table: &TableName) {
        self.tables.insert(h(table));
    }

    /// Adds what a change writes (both keys of a key change; the whole
    /// table for truncate, structure changes and re-copy chunks).
    pub fn add(&mut self, change: &Change) {
        match change {
            Change::Truncate { .. }
            | Change::Schema { .. }
            | Change::RecopyStart { .. }
            | Change::RecopyRows { .. } => {
                for t in change.table_names() {
                    self.tables.insert(h(t));
                }
            }
            _ => {
                let table = &change.table().expect("row change").name;
                if let Some(k) = change.key() {
                    self.add_row(table, &k);
                }
                if let Some(k) = change.old_key() {
                    self.add_row(table, &k);
                }
            }
        }
    }

    pub fn overlaps(&self, other: &WriteSet) -> bool {
        if self.all || other.all {
            return true;
        }
        let (small, large) = if self.rows.len() <= other.rows.len() {
            (self, other)
        } else {
            (other, self)
        };
        small.rows.iter().any(|r| large.rows.contains(r))
            || self
                .tables
                .iter()
                .any(|t| other.tables.contains(t) || other.row_tables.contains(t))
            || other.tables.iter().any(|t| self.row_tables.contains(t))
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.tables.is_empty() && !self.all
    }
}

/// Write sets of groups dispatched but not yet committed.
#[derive(Default)]
pub struct InFlight {
    groups: VecDeque<(u64, WriteSet)>,
}

impl InFlight {
    /// The newest in-flight group `ws` depends on (0 when none).
    pub fn depends_on(&self, ws: &WriteSet) -> u64 {
        self.groups
            .iter()
            .rev()
            .find(|(_, other)| other.overlaps(ws))
            .map_or(0, |(seq, _)| *seq)
    }

    pub fn push(&mut self, seq: u64, ws: WriteSet) {
        self.groups.push_back((seq, ws));
    }

    /// Forgets a committed group.
    pub fn committed(&mut self, seq: u64) {
        if let Some(i) = self.groups.iter().position(|(s, _)| *s == seq) {
            self.groups.remove(i);
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, TableSchema};
    use std::sync::Arc;

    fn ins(table: &str, id: i64) -> Change {
        let col = Column {
            name: "id".into(),
            ty: ColumnType::Int64,
            nullable: false,
            source_type: String::new(),
            user_type: None,
        };
        let t = Arc::new(TableSchema {
            name: TableName::bare(table),
            columns: vec![col],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        });
        Change::Insert {
            table: t,
            row: vec![Value::Int(id)],
        }
    }

    fn ws(changes: &[Change]) -> WriteSet {
        let mut w = WriteSet::default();
        changes.iter().for_each(|c| w.add(c));
        w
    }

    #[test]
    fn overlapping_keys_depend_disjoint_do_not() {
        let mut f = InFlight::default();
        f.push(1, ws(&[ins("a", 1), ins("a", 2)]));
        f.push(2, ws(&[ins("b", 1)]));
        assert_eq!(f.depends_on(&ws(&[ins("a", 2)])), 1);
        assert_eq!(f.depends_on(&ws(&[ins("b", 1), ins("a", 1)])), 2);
        assert_eq!(f.depends_on(&ws(&[ins("a", 3)])), 0);
        f.committed(1);
        assert_eq!(f.depends_on(&ws(&[ins("a", 2)])), 0);
    }

    #[test]
    fn everything_overlaps_all() {
        let mut f = InFlight::default();
        f.push(4, WriteSet::everything());
        assert_eq!(f.depends_on(&ws(&[ins("z", 1)])), 4);
    }

    #[test]
    fn truncate_conflicts_with_any_row_of_the_table() {
        let t = match ins("a", 1) {
            Change::Insert { table, .. } => table,
            _ => unreachable!(),
        };
        let mut f = InFlight::default();
        f.push(3, ws(&[ins("a", 9)]));
        assert_eq!(
            f.depends_on(&ws(&[Change::Truncate { tables: vec![t] }])),
            3
        );
    }
}
