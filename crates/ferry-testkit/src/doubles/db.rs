//! [`MemoryDb`]: the in-memory source database behind [`MemorySource`].
//!
//! [`MemorySource`]: super::MemorySource

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ferry_core::{
    Change, ErrorClass, Position, Result, TableName, TableReader, TableRef, Value, display_key,
};
use tokio::sync::Notify;

use super::{has_unchanged, now_micros, overlay, seq_position};

/// Rows of one table by key.
pub(crate) type Rows = BTreeMap<Vec<Value>, Vec<Value>>;

/// A transaction committed to a [`MemoryDb`].
#[derive(Debug, Clone)]
pub struct LoggedTransaction {
    /// Sequence number (1 for the first transaction).
    pub seq: i64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// The changes, as committed.
    pub changes: Vec<Change>,
}

#[derive(Default)]
pub(crate) struct DbState {
    pub tables: BTreeMap<TableName, Rows>,
    /// `log[i].seq == i + 1`.
    pub log: Vec<LoggedTransaction>,
    pub acks: Vec<Position>,
    pub deliveries: Vec<Position>,
    pub snapshots: Vec<Position>,
    pub prepares: u64,
    /// `prepare` ran and `teardown` did not since.
    pub installed: bool,
    pub source_faults: VecDeque<ErrorClass>,
    /// Transactions up to this seq can no longer be streamed (a purged
    /// log, a dropped slot): see [`MemoryDb::forget_log_through`].
    pub forgotten_through: i64,
}

#[derive(Default)]
pub(crate) struct DbShared {
    state: Mutex<DbState>,
    /// Woken on every commit and injected fault.
    pub changed: Notify,
}

impl DbShared {
    pub fn lock(&self) -> MutexGuard<'_, DbState> {
        // A test that panicked while holding the lock already failed; the
        // state is still worth reading in its report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A shared in-memory database: tables of rows by key, and the log of the
/// transactions committed to it. Cheap to clone; clones share the data.
///
/// Test code writes to it with [`commit`](Self::commit) /
/// [`commit_with`](Self::commit_with); [`MemorySource`](super::MemorySource)s
/// read it. It also keeps what its sources did (acks, deliveries, snapshots)
/// so a test can inspect them after the pipeline consumed the source.
#[derive(Clone, Default)]
pub struct MemoryDb {
    pub(crate) shared: Arc<DbShared>,
}

/// Read access to a [`MemoryDb`]'s tables inside [`MemoryDb::commit_with`].
pub struct DbView<'a> {
    tables: &'a BTreeMap<TableName, Rows>,
}

impl DbView<'_> {
    /// The row of `table` with key `key`.
    pub fn row(&self, table: &TableName, key: &[Value]) -> Option<&Vec<Value>> {
        self.tables.get(table)?.get(key)
    }

    /// Every row of `table`, in key order.
    pub fn rows(&self, table: &TableName) -> Vec<&Vec<Value>> {
        self.tables
            .get(table)
            .map(|t| t.values().collect())
            .unwrap_or_default()
    }
}

fn apply(tables: &mut BTreeMap<TableName, Rows>, change: &Change, seq: i64) {
    let what = |t: &TableRef, key: &[Value]| format!("{} key {}", t.name, display_key(key));
    match change {
        Change::Insert { table, row } => {
            assert!(
                !has_unchanged(row),
                "MemoryDb: transaction {seq} inserts a row with Unchanged values into {}",
                table.name
            );
            let key = table.key_of(row);
            let rows = tables.entry(table.name.clone()).or_default();
            assert!(
                !rows.contains_key(&key),
                "MemoryDb: transaction {seq} inserts a duplicate key: {}",
                what(table, &key)
            );
            rows.insert(key, row.clone());
        }
        Change::Update {
            table,
            before,
            after,
        } => {
            let new_key = table.key_of(after);
            let old_key = before.as_ref().map_or(new_key.clone(), |b| table.key_of(b));
            let rows = tables.entry(table.name.clone()).or_default();
            let mut row = rows.remove(&old_key).unwrap_or_else(|| {
                panic!(
                    "MemoryDb: transaction {seq} updates a missing row: {}",
                    what(table, &old_key)
                )
            });
            overlay(&mut row, after);
            assert!(
                !rows.contains_key(&new_key),
                "MemoryDb: transaction {seq} moves a row onto an existing key: {}",
                what(table, &new_key)
            );
            rows.insert(new_key, row);
        }
        Change::Delete { table, before } => {
            let key = table.key_of(before);
            let removed = tables
                .get_mut(&table.name)
                .and_then(|rows| rows.remove(&key));
            assert!(
                removed.is_some(),
                "MemoryDb: transaction {seq} deletes a missing row: {}",
                what(table, &key)
            );
        }
        Change::Truncate { tables: truncated } => {
            for t in truncated {
                tables.entry(t.name.clone()).or_default().clear();
            }
        }
        Change::Schema { .. } | Change::RecopyStart { .. } => {}
        Change::RecopyRows { table, .. } => panic!(
            "MemoryDb: transaction {seq} commits re-copy rows of {}: only a source delivers those",
            table.name
        ),
    }
}

impl MemoryDb {
    /// An empty database.
    pub fn new() -> Self {
        MemoryDb::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, DbState> {
        self.shared.lock()
    }

    /// Commits one transaction: applies `changes` in order to the tables,
    /// appends them to the log and returns the transaction's position.
    ///
    /// Row images follow the [`Change`] conventions; an update's `before`
    /// (when set) names the row to change, otherwise `after`'s key does, and
    /// `after`'s [`Value::Unchanged`] columns keep their value.
    ///
    /// # Panics
    ///
    /// On changes a database would refuse (duplicate key, update or delete
    /// of a missing row, an insert with `Unchanged` values): a bug in the
    /// test. Nothing is applied then.
    pub fn commit(&self, changes: Vec<Change>) -> Position {
        self.commit_with(|_| changes)
    }

    /// Commits the changes `f` computes from the current data, atomically:
    /// no other commit happens between the read and the write (a
    /// read-modify-write transaction such as a transfer between accounts).
    pub fn commit_with(&self, f: impl FnOnce(&DbView<'_>) -> Vec<Change>) -> Position {
        let mut st = self.lock();
        let changes = f(&DbView { tables: &st.tables });
        let seq = st.log.len() as i64 + 1;
        // Validate on a copy of the touched tables, so a panicking test
        // leaves the database as it was.
        let mut touched: BTreeMap<TableName, Rows> = BTreeMap::new();
        for c in &changes {
            for name in c.table_names() {
                if !touched.contains_key(name) {
                    let rows = st.tables.get(name).cloned().unwrap_or_default();
                    touched.insert(name.clone(), rows);
                }
            }
        }
        for c in &changes {
            apply(&mut touched, c, seq);
        }
        st.tables.extend(touched);
        st.log.push(LoggedTransaction {
            seq,
            commit_time_micros: now_micros(),
            changes,
        });
        drop(st);
        self.shared.changed.notify_waiters();
        seq_position(seq)
    }

    /// Makes the transactions up to and including `position` impossible to
    /// stream, as a purged log or a dropped and recreated replication slot
    /// would: [`MemorySource`](super::MemorySource) then reports a gap for
    /// a checkpoint before it.
    pub fn forget_log_through(&self, position: &Position) {
        let seq = position.as_sqlite().expect("a MemoryDb position").seq;
        let mut st = self.lock();
        st.forgotten_through = st.forgotten_through.max(seq);
    }

    /// `ferry resync`: commits a transaction holding only a request to
    /// re-copy `table`, which the [`MemorySource`](super::MemorySource)
    /// streaming it starts.
    pub fn request_recopy(&self, table: &TableRef) -> Position {
        self.commit(vec![Change::RecopyStart {
            table: table.clone(),
            reason: "ferry resync".into(),
        }])
    }

    /// Position of the newest transaction (`seq 0` when there is none).
    pub fn position(&self) -> Position {
        seq_position(self.lock().log.len() as i64)
    }

    /// Number of committed transactions.
    pub fn transactions(&self) -> usize {
        self.lock().log.len()
    }

    /// The committed transactions, oldest first.
    pub fn log(&self) -> Vec<LoggedTransaction> {
        self.lock().log.clone()
    }

    /// Every row of `table` (`name` or `ns.name`), in key order.
    pub fn rows(&self, table: &str) -> Vec<Vec<Value>> {
        self.lock()
            .tables
            .get(&TableName::parse(table))
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The row of `table` with key `key`.
    pub fn row(&self, table: &str, key: &[Value]) -> Option<Vec<Value>> {
        self.lock()
            .tables
            .get(&TableName::parse(table))?
            .get(key)
            .cloned()
    }

    /// Every table with its rows in key order.
    pub fn tables(&self) -> BTreeMap<TableName, Vec<Vec<Value>>> {
        self.lock()
            .tables
            .iter()
            .map(|(n, rows)| (n.clone(), rows.values().cloned().collect()))
            .collect()
    }

    /// Positions acked by this database's sources, in order.
    pub fn acks(&self) -> Vec<Position> {
        self.lock().acks.clone()
    }

    /// Positions of the transactions (or groups) the sources delivered as
    /// `Commit` events, in delivery order, over every source and stream.
    pub fn deliveries(&self) -> Vec<Position> {
        self.lock().deliveries.clone()
    }

    /// Positions of the snapshots the sources opened, in order.
    pub fn snapshots(&self) -> Vec<Position> {
        self.lock().snapshots.clone()
    }

    /// How many times a source ran `prepare`.
    pub fn prepares(&self) -> u64 {
        self.lock().prepares
    }

    /// Whether a source's `prepare` installed capture that no `teardown`
    /// removed since.
    pub fn capture_installed(&self) -> bool {
        self.lock().installed
    }

    /// Makes the next [`Source::next`](ferry_core::Source::next) call of a
    /// source of this database (waiting or not) fail with `class`.
    pub fn fail_next_read(&self, class: ErrorClass) {
        self.lock().source_faults.push_back(class);
        self.shared.changed.notify_waiters();
    }
}

/// Up to `limit` rows of `rows` with key greater than `after`, in key order.
pub(crate) fn read_rows(
    rows: Option<&Rows>,
    after: Option<&[Value]>,
    limit: usize,
) -> Vec<Vec<Value>> {
    let Some(rows) = rows else {
        return Vec::new();
    };
    let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
    rows.range((lower, Bound::Unbounded))
        .take(limit)
        .map(|(_, r)| r.clone())
        .collect()
}

/// Reads the source tables (for `ferry verify`-style comparisons).
#[async_trait]
impl TableReader for MemoryDb {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        Ok(self.lock().tables.get(&table.name).map_or(0, |t| t.len()) as u64)
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        Ok(read_rows(self.lock().tables.get(&table.name), after, limit))
    }
}
