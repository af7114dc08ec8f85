//! [`MemorySink`]: an in-memory target with real transactions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ferry_core::checkpoint::APPLIED_SCOPE;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Error, Position, Result, Sink,
    SinkInfo, SinkWriter, TableName, TableReader, TableRef, Value,
};
use tokio::sync::Notify;

use super::db::{Rows, read_rows};

mod writer;

struct MemTable {
    schema: TableRef,
    rows: Rows,
}

/// What one open transaction wrote but did not commit yet. Its keys are the
/// transaction's row locks; `truncated` is a lock on the whole table.
#[derive(Default)]
struct Overlay {
    truncated: bool,
    /// `None`: deleted.
    rows: BTreeMap<Vec<Value>, Option<Vec<Value>>>,
}

#[derive(Default)]
struct Txn {
    tables: BTreeMap<TableName, Overlay>,
    loaded: u64,
}

#[derive(Default)]
struct SinkState {
    tables: BTreeMap<TableName, MemTable>,
    checkpoint: BTreeMap<String, String>,
    commits: u64,
    applied: Vec<Position>,
    rows_loaded: u64,
    open: HashMap<u64, Txn>,
    next_writer: u64,
    live_writers: usize,
    peak_writers: usize,
    lock_waits: u64,
    /// The runner handle holding the fence ([`Sink::fence`]).
    fence_holder: Option<u64>,
    next_runner: u64,
}

type Observer = Box<dyn FnMut(&CommitView<'_>) + Send>;

struct SinkShared {
    state: Mutex<SinkState>,
    /// Woken whenever a transaction ends (its locks are released).
    txn_ended: Notify,
    max_writers: usize,
    observers: Mutex<Vec<Observer>>,
    /// Loads rows in [`MEMORY_ROW_ENCODING`](crate::doubles::MEMORY_ROW_ENCODING).
    encoded: std::sync::atomic::AtomicBool,
    /// Chunks loaded through `load_encoded`.
    encoded_loads: std::sync::atomic::AtomicUsize,
    /// The pipeline this is the target of, for messages.
    pipeline: String,
}

impl SinkShared {
    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An in-memory [`Sink`], [`CheckpointStore`] and [`TableReader`]. Cheap to
/// clone; clones share the data, so a test keeps one to inspect what the
/// pipeline (holding another) wrote.
///
/// Transactions behave like a database's:
///
/// * writes are staged per writer and become visible at `commit`, together
///   with the checkpoint records, in one step; `rollback` or dropping the
///   writer discards them;
/// * a row (or, for truncate and `clear_table`, a table) written by an open
///   transaction is locked: another writer touching it waits until that
///   transaction ends, as PostgreSQL would block ([`lock_waits`] counts
///   these waits; a pipeline that applies a later group before an earlier
///   one on the same rows and commits in order deadlocks here, as it would
///   on a real database);
/// * `load` of a key that exists is a data error (a duplicate key), an
///   upsert with [`Value::Unchanged`] values of a missing row too;
///   deletes of missing rows and updates of missing rows do nothing;
/// * `Schema` steps are no-ops; calls outside a transaction, or to tables
///   `ensure_tables` did not create, are fatal errors.
///
///
/// The fence ([`Sink::fence`]) belongs to a *runner handle*: clones share
/// it (a test's clone and the pipeline's are one runner), while
/// [`reopen`](MemorySink::reopen) gives another handle on the same data, as
/// a second process opening the same database would have. A second handle
/// is refused while the first holds the fence; dropping every clone of the
/// holding handle releases it, as a dead process's lock goes.
///
/// [`lock_waits`]: MemorySink::lock_waits
#[derive(Clone)]
pub struct MemorySink {
    shared: Arc<SinkShared>,
    runner: Arc<Runner>,
}

/// One runner's handle: releases the fence when its last clone goes.
struct Runner {
    id: u64,
    shared: Arc<SinkShared>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.fence_holder == Some(self.id) {
            st.fence_holder = None;
        }
    }
}

/// The sink's state right after a commit, handed to
/// [`MemorySink::on_commit`] observers.
pub struct CommitView<'a> {
    /// Number of this commit (1 for the first).
    pub number: u64,
    /// The checkpoint records written by this commit.
    pub records: &'a [CheckpointRecord],
    tables: &'a BTreeMap<TableName, MemTable>,
}

impl CommitView<'_> {
    /// Every row of `table` (`name` or `ns.name`) after this commit, in key
    /// order.
    pub fn rows(&self, table: &str) -> Vec<&Vec<Value>> {
        self.tables
            .get(&TableName::parse(table))
            .map(|t| t.rows.values().collect())
            .unwrap_or_default()
    }

    /// The applied position this commit recorded, if any.
    pub fn applied(&self) -> Option<Position> {
        applied_of(self.records)
    }
}

fn applied_of(records: &[CheckpointRecord]) -> Option<Position> {
    records
        .iter()
        .find(|r| r.scope == APPLIED_SCOPE)
        .and_then(|r| Position::from_envelope(&r.value).ok())
}

impl Default for MemorySink {
    fn default() -> Self {
        MemorySink::new()
    }
}

impl MemorySink {
    /// An empty sink allowing 4 writers.
    pub fn new() -> Self {
        MemorySink::with_max_writers(4)
    }

    /// An empty sink whose [`SinkInfo::max_writers`] is `max_writers`.
    pub fn with_max_writers(max_writers: usize) -> Self {
        MemorySink::build(max_writers, "test")
    }

    /// An empty sink allowing 4 writers, the target of pipeline `pipeline`
    /// (named in its errors; `test` otherwise).
    pub fn named(pipeline: &str) -> Self {
        MemorySink::build(4, pipeline)
    }

    fn build(max_writers: usize, pipeline: &str) -> Self {
        let shared = Arc::new(SinkShared {
            state: Mutex::new(SinkState::default()),
            txn_ended: Notify::new(),
            max_writers,
            observers: Mutex::new(Vec::new()),
            encoded: Default::default(),
            encoded_loads: Default::default(),
            pipeline: pipeline.to_owned(),
        });
        MemorySink::handle(shared)
    }

    fn handle(shared: Arc<SinkShared>) -> Self {
        let id = {
            let mut st = shared.lock();
            st.next_runner += 1;
            st.next_runner
        };
        MemorySink {
            runner: Arc::new(Runner {
                id,
                shared: shared.clone(),
            }),
            shared,
        }
    }

    /// Another runner's handle on the same data (see the type's docs): it
    /// has its own fence.
    pub fn reopen(&self) -> MemorySink {
        MemorySink::handle(self.shared.clone())
    }

    /// Whether some handle holds the fence.
    pub fn fenced(&self) -> bool {
        self.lock().fence_holder.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.shared.lock()
    }

    /// Calls `f` after every commit, with the state that commit produced,
    /// before any other transaction can commit. `f` runs under the sink's
    /// lock: it must not call the sink.
    pub fn on_commit(&self, f: impl FnMut(&CommitView<'_>) + Send + 'static) {
        self.shared
            .observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// From now on, names
    /// [`MEMORY_ROW_ENCODING`](crate::doubles::MEMORY_ROW_ENCODING) as the
    /// row encoding of every table and loads rows in it.
    pub fn accept_encoded_rows(&self) {
        self.shared
            .encoded
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many chunks came through `load_encoded`.
    pub fn encoded_loads(&self) -> usize {
        self.shared
            .encoded_loads
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every committed row of `table` (`name` or `ns.name`), in key order.
    pub fn rows(&self, table: &str) -> Vec<Vec<Value>> {
        self.lock()
            .tables
            .get(&TableName::parse(table))
            .map(|t| t.rows.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `table` exists.
    pub fn has_table(&self, table: &str) -> bool {
        self.lock().tables.contains_key(&TableName::parse(table))
    }

    /// The structure `table` was created with.
    pub fn schema(&self, table: &str) -> Option<TableRef> {
        self.lock()
            .tables
            .get(&TableName::parse(table))
            .map(|t| t.schema.clone())
    }

    /// Every table with its committed rows in key order.
    pub fn tables(&self) -> BTreeMap<TableName, Vec<Vec<Value>>> {
        self.lock()
            .tables
            .iter()
            .map(|(n, t)| (n.clone(), t.rows.values().cloned().collect()))
            .collect()
    }

    /// The committed checkpoint.
    ///
    /// # Panics
    ///
    /// If the stored records do not decode.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::from_records(&self.records()).expect("MemorySink: checkpoint records decode")
    }

    /// The committed checkpoint records, by scope.
    pub fn records(&self) -> Vec<CheckpointRecord> {
        self.lock()
            .checkpoint
            .iter()
            .map(|(scope, value)| CheckpointRecord {
                scope: scope.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Number of commits so far.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    /// The applied positions recorded by commits, in commit order.
    pub fn applied_positions(&self) -> Vec<Position> {
        self.lock().applied.clone()
    }

    /// Rows committed through `load` (snapshot rows) so far.
    pub fn rows_loaded(&self) -> u64 {
        self.lock().rows_loaded
    }

    /// Writers currently alive (opened and not dropped).
    pub fn live_writers(&self) -> usize {
        self.lock().live_writers
    }

    /// Most writers alive at once so far.
    pub fn peak_writers(&self) -> usize {
        self.lock().peak_writers
    }

    /// Transactions currently open.
    pub fn open_transactions(&self) -> usize {
        self.lock().open.len()
    }

    /// How many times a writer had to wait for a row or table locked by
    /// another open transaction.
    pub fn lock_waits(&self) -> u64 {
        self.lock().lock_waits
    }
}

fn missing_table(name: &TableName) -> Error {
    Error::fatal(format!("MemorySink: table {name} does not exist"))
        .with("table", name.to_string())
        .with_fix("ensure_tables must create every table before writers use it")
}

fn no_txn(what: &str) -> Error {
    Error::fatal(format!(
        "MemorySink: {what} outside a transaction (begin was not called)"
    ))
}

#[async_trait]
impl CheckpointStore for MemorySink {
    async fn load(&self) -> Result<Checkpoint> {
        Checkpoint::from_records(&self.records())
    }

    async fn clear(&self) -> Result<()> {
        self.lock().checkpoint.clear();
        Ok(())
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn info(&self) -> SinkInfo {
        SinkInfo {
            max_writers: self.shared.max_writers,
        }
    }

    /// Refused at once while another handle holds it; see the type's docs.
    async fn fence(&self) -> Result<()> {
        let mut st = self.lock();
        match st.fence_holder {
            Some(holder) if holder != self.runner.id => Err(Error::fatal(format!(
                "another ferry runs pipeline {:?} into the memory target (runner {holder} holds \
                 its lock)",
                self.shared.pipeline
            ))
            .with_fix("stop the other runner of this pipeline first")),
            _ => {
                st.fence_holder = Some(self.runner.id);
                Ok(())
            }
        }
    }

    async fn check(&self) -> Vec<CheckItem> {
        vec![CheckItem::ok("target: memory", "in-memory test sink")]
    }

    /// Creates missing tables. An existing table whose columns are a
    /// prefix of the wanted ones gets the rest at once (NULL in every row;
    /// this double's `Step::Schema` changes nothing) and is reported; any
    /// other difference is fatal.
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        let mut st = self.lock();
        let mut altered = Vec::new();
        for t in tables {
            match st.tables.get_mut(&t.name) {
                Some(existing) => {
                    let names = |s: &TableRef| -> Vec<String> {
                        s.columns.iter().map(|c| c.name.clone()).collect()
                    };
                    let (have, want) = (names(&existing.schema), names(t));
                    if have == want && existing.schema.key == t.key {
                        continue;
                    }
                    if !want.starts_with(&have) || existing.schema.key != t.key {
                        return Err(Error::fatal(format!(
                            "MemorySink: table {} exists with other columns ({have:?}) than wanted ({want:?})",
                            t.name
                        )));
                    }
                    for row in existing.rows.values_mut() {
                        row.resize(want.len(), Value::Null);
                    }
                    existing.schema = t.clone();
                    altered.push(t.name.clone());
                }
                None => {
                    st.tables.insert(
                        t.name.clone(),
                        MemTable {
                            schema: t.clone(),
                            rows: Rows::new(),
                        },
                    );
                }
            }
        }
        Ok(altered)
    }

    async fn row_encoding(&self, _table: &TableRef) -> Result<Option<String>> {
        let on = self
            .shared
            .encoded
            .load(std::sync::atomic::Ordering::SeqCst);
        Ok(on.then(|| crate::doubles::MEMORY_ROW_ENCODING.to_string()))
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        let mut st = self.lock();
        st.next_writer += 1;
        st.live_writers += 1;
        st.peak_writers = st.peak_writers.max(st.live_writers);
        Ok(Box::new(writer::MemWriter::new(
            self.shared.clone(),
            st.next_writer,
        )))
    }
}

#[async_trait]
impl TableReader for MemorySink {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        let st = self.lock();
        let t = st
            .tables
            .get(&table.name)
            .ok_or_else(|| missing_table(&table.name))?;
        Ok(t.rows.len() as u64)
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let st = self.lock();
        let t = st
            .tables
            .get(&table.name)
            .ok_or_else(|| missing_table(&table.name))?;
        Ok(read_rows(Some(&t.rows), after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::conformance_table;
    use ferry_core::{ErrorClass, Step, TableOps};

    fn table() -> TableRef {
        conformance_table(TableName::bare("t"))
    }

    fn row(id: i64, qty: i64) -> Vec<Value> {
        vec![Value::Int(id), Value::Null, Value::Int(qty), Value::Null]
    }

    fn upsert(r: Vec<Value>) -> Vec<Step> {
        let mut ops = TableOps::new(table());
        ops.upserts.push(r);
        vec![Step::Rows(vec![ops])]
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_writer_waits_for_a_row_another_transaction_wrote() {
        let sink = MemorySink::new();
        sink.ensure_tables(&[table()]).await.unwrap();
        let mut w1 = sink.writer().await.unwrap();
        let mut w2 = sink.writer().await.unwrap();
        w1.begin().await.unwrap();
        w1.apply(&upsert(row(1, 1))).await.unwrap();
        w2.begin().await.unwrap();
        let second = tokio::spawn(async move {
            w2.apply(&upsert(row(1, 2))).await.unwrap();
            w2.commit(&[]).await.unwrap();
        });
        crate::eventually(
            "the second writer waits",
            std::time::Duration::from_secs(5),
            || std::future::ready((sink.lock_waits() > 0).then_some(())),
        )
        .await;
        assert!(!second.is_finished());
        assert!(
            sink.rows("t").is_empty(),
            "nothing is visible before a commit"
        );
        w1.commit(&[]).await.unwrap();
        second.await.unwrap();
        assert_eq!(sink.rows("t"), vec![row(1, 2)]);
        assert_eq!(sink.commits(), 2);
    }

    #[tokio::test]
    async fn misuse_and_bad_rows_are_classified_errors() {
        let sink = MemorySink::new();
        sink.ensure_tables(&[table()]).await.unwrap();
        let mut w = sink.writer().await.unwrap();
        let e = w.apply(&upsert(row(1, 1))).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal, "{e:?}");
        w.begin().await.unwrap();
        assert_eq!(w.begin().await.unwrap_err().class(), ErrorClass::Fatal);
        w.load(&table(), &[row(1, 1)]).await.unwrap();
        let e = w.load(&table(), &[row(1, 2)]).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Data, "{e:?}");
        assert!(e.to_string().contains("duplicate key"), "{e}");
        let mut partial = row(2, 1);
        partial[1] = Value::Unchanged;
        assert_eq!(
            w.apply(&upsert(partial)).await.unwrap_err().class(),
            ErrorClass::Data
        );
        let other = conformance_table(TableName::bare("missing"));
        assert_eq!(
            w.load(&other, &[row(1, 1)]).await.unwrap_err().class(),
            ErrorClass::Fatal
        );
        assert_eq!(sink.live_writers(), 1);
        drop(w);
        assert_eq!(sink.live_writers(), 0);
        assert_eq!(sink.open_transactions(), 0);
        assert!(
            sink.rows("t").is_empty(),
            "a dropped writer's transaction is rolled back"
        );
    }

    #[tokio::test]
    async fn observers_see_each_commit_with_its_records() {
        let sink = MemorySink::new();
        sink.ensure_tables(&[table()]).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        sink.on_commit(move |v| {
            s.lock()
                .unwrap()
                .push((v.number, v.rows("t").len(), v.applied()));
        });
        let mut w = sink.writer().await.unwrap();
        w.begin().await.unwrap();
        w.apply(&upsert(row(1, 1))).await.unwrap();
        let p = crate::doubles::seq_position(7);
        w.commit(&[CheckpointRecord::applied(&p)]).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [(1, 1, Some(p.clone()))]);
        assert_eq!(sink.applied_positions(), std::slice::from_ref(&p));
        assert_eq!(sink.checkpoint().applied, Some(p));
    }
}
