//! [`FaultySink`]: a sink wrapper that fails or holds chosen calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Error, ErrorClass, Result, Sink,
    SinkInfo, SinkWriter, Step, TableReader, TableRef, Value,
};
use tokio::sync::Notify;

/// A writer operation a [`FaultySink`] can fail or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkOp {
    /// `SinkWriter::begin`.
    Begin,
    /// `SinkWriter::apply`.
    Apply,
    /// `SinkWriter::load`.
    Load,
    /// `SinkWriter::clear_table`.
    ClearTable,
    /// `SinkWriter::commit`.
    Commit,
    /// `SinkWriter::rollback`.
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// Fail instead of making the call.
    Instead,
    /// Make the call (a commit), then report a failure.
    After,
}

#[derive(Default)]
struct Plan {
    fails: Vec<(SinkOp, u64, ErrorClass, When)>,
    /// Calls of `op` numbered `from` or later wait until `release`.
    holds: Vec<(SinkOp, u64)>,
    calls: HashMap<SinkOp, u64>,
}

#[derive(Default)]
struct Faults {
    plan: Mutex<Plan>,
    released: Notify,
    held: AtomicUsize,
}

impl Faults {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_fail(&self, op: SinkOp, n: u64, when: When) -> Option<Error> {
        let mut plan = self.plan();
        let i = plan
            .fails
            .iter()
            .position(|(o, nth, _, w)| *o == op && *nth == n && *w == when)?;
        let (_, _, class, _) = plan.fails.remove(i);
        let what = match when {
            When::Instead => "failed",
            When::After => "failed after it committed",
        };
        Some(
            Error::new(class, format!("injected fault: {op:?} call #{n} {what}"))
                .with_fix("this is a test double (FaultySink)"),
        )
    }

    /// Counts the call, waits while it is held, then fails it if planned.
    async fn enter(&self, op: SinkOp) -> Result<u64> {
        let n = {
            let mut plan = self.plan();
            let c = plan.calls.entry(op).or_default();
            *c += 1;
            *c
        };
        loop {
            let released = self.released.notified();
            let held = self
                .plan()
                .holds
                .iter()
                .any(|(o, from)| *o == op && n >= *from);
            if !held {
                break;
            }
            let _waiting = HeldGuard::new(&self.held);
            released.await;
        }
        match self.take_fail(op, n, When::Instead) {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }
}

/// Counts a held call while it waits (also when its future is dropped).
struct HeldGuard<'a>(&'a AtomicUsize);

impl<'a> HeldGuard<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        HeldGuard(n)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps a [`Sink`] and injects faults into its writers' calls.
///
/// Calls are numbered per operation across all writers, from 1, in the
/// order they start. Faults can be planned before or while the sink is in
/// use (`&self` methods; read [`calls`](Self::calls) to aim at "the next
/// commit"):
///
/// * [`fail`](Self::fail): call N of an operation fails with a class,
///   without reaching the wrapped sink;
/// * [`fail_after_commit`](Self::fail_after_commit): commit N reaches the
///   wrapped sink and commits, then reports a failure — an ambiguous commit,
///   as when the connection drops before the commit's answer arrives;
/// * [`hold`](Self::hold): calls N and later of an operation wait until
///   [`release`](Self::release) (a slow or stuck target); a held call that
///   is also planned to fail fails once released.
pub struct FaultySink<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S> FaultySink<S> {
    /// Wraps `inner`, with no fault planned.
    pub fn new(inner: S) -> Self {
        FaultySink {
            inner,
            faults: Arc::default(),
        }
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Call `nth` (1-based) of `op` fails with `class`.
    pub fn fail(&self, op: SinkOp, nth: u64, class: ErrorClass) -> &Self {
        self.faults
            .plan()
            .fails
            .push((op, nth, class, When::Instead));
        self
    }

    /// Commit `nth` commits, then returns an error of `class`.
    pub fn fail_after_commit(&self, nth: u64, class: ErrorClass) -> &Self {
        self.faults
            .plan()
            .fails
            .push((SinkOp::Commit, nth, class, When::After));
        self
    }

    /// Calls of `op` numbered `from_nth` and later wait until
    /// [`release`](Self::release).
    pub fn hold(&self, op: SinkOp, from_nth: u64) -> &Self {
        self.faults.plan().holds.push((op, from_nth));
        self
    }

    /// Ends every hold: waiting calls proceed, later ones are not held.
    pub fn release(&self) {
        self.faults.plan().holds.clear();
        self.faults.released.notify_waiters();
    }

    /// Calls waiting in a hold right now.
    pub fn held(&self) -> usize {
        self.faults.held.load(Ordering::SeqCst)
    }

    /// Calls of `op` made so far (held and failed ones included).
    pub fn calls(&self, op: SinkOp) -> u64 {
        self.faults.plan().calls.get(&op).copied().unwrap_or(0)
    }
}

struct FaultyWriter {
    inner: Box<dyn SinkWriter>,
    faults: Arc<Faults>,
}

#[async_trait]
impl SinkWriter for FaultyWriter {
    async fn begin(&mut self) -> Result<()> {
        self.faults.enter(SinkOp::Begin).await?;
        self.inner.begin().await
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        self.faults.enter(SinkOp::Apply).await?;
        self.inner.apply(steps).await
    }

    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        self.faults.enter(SinkOp::Load).await?;
        self.inner.load(table, rows).await
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        self.faults.enter(SinkOp::ClearTable).await?;
        self.inner.clear_table(table).await
    }

    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let n = self.faults.enter(SinkOp::Commit).await?;
        self.inner.commit(records).await?;
        match self.faults.take_fail(SinkOp::Commit, n, When::After) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn rollback(&mut self) -> Result<()> {
        self.faults.enter(SinkOp::Rollback).await?;
        self.inner.rollback().await
    }
}

#[async_trait]
impl<S: Sink> CheckpointStore for FaultySink<S> {
    async fn load(&self) -> Result<Checkpoint> {
        self.inner.load().await
    }

    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
}

#[async_trait]
impl<S: Sink> Sink for FaultySink<S> {
    fn info(&self) -> SinkInfo {
        self.inner.info()
    }

    async fn fence(&self) -> Result<()> {
        self.inner.fence().await
    }

    async fn identity(&self) -> Result<Option<String>> {
        self.inner.identity().await
    }

    async fn check(&self) -> Vec<CheckItem> {
        self.inner.check().await
    }

    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<ferry_core::TableName>> {
        self.inner.ensure_tables(tables).await
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(FaultyWriter {
            inner: self.inner.writer().await?,
            faults: self.faults.clone(),
        }))
    }
}

#[async_trait]
impl<S: Sink + TableReader> TableReader for FaultySink<S> {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        self.inner.count_rows(table).await
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        self.inner.read_rows(table, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::{MemorySink, conformance_table};
    use ferry_core::{TableName, TableOps};

    fn table() -> TableRef {
        conformance_table(TableName::bare("t"))
    }

    fn upsert(id: i64) -> Vec<Step> {
        let mut ops = TableOps::new(table());
        ops.upserts
            .push(vec![Value::Int(id), Value::Null, Value::Null, Value::Null]);
        vec![Step::Rows(vec![ops])]
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fails_holds_and_reports_ambiguous_commits() {
        let sink = MemorySink::new();
        let faulty = Arc::new(FaultySink::new(sink.clone()));
        faulty.ensure_tables(&[table()]).await.unwrap();
        faulty.fail(SinkOp::Apply, 2, ErrorClass::Data);
        faulty.fail_after_commit(1, ErrorClass::Transient);
        let mut w = faulty.writer().await.unwrap();
        w.begin().await.unwrap();
        w.apply(&upsert(1)).await.unwrap();
        assert_eq!(
            w.apply(&upsert(2)).await.unwrap_err().class(),
            ErrorClass::Data
        );
        w.apply(&upsert(3)).await.unwrap();
        let e = w.commit(&[]).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
        assert_eq!(sink.rows("t").len(), 2, "the ambiguous commit landed");

        faulty.hold(SinkOp::Commit, 2);
        w.begin().await.unwrap();
        w.apply(&upsert(4)).await.unwrap();
        let commit = tokio::spawn(async move { w.commit(&[]).await });
        crate::eventually(
            "the commit is held",
            std::time::Duration::from_secs(5),
            || std::future::ready((faulty.held() == 1).then_some(())),
        )
        .await;
        assert_eq!(sink.rows("t").len(), 2);
        faulty.release();
        commit.await.unwrap().unwrap();
        assert_eq!(sink.rows("t").len(), 3);
        assert_eq!(faulty.held(), 0);
        assert_eq!(faulty.calls(SinkOp::Commit), 2);
        assert_eq!(faulty.calls(SinkOp::Apply), 4);
    }
}
