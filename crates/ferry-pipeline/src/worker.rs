//! Apply workers: each owns one target connection and applies one group of
//! transactions at a time.
//!
//! Ordering contract: a group executes once the newest earlier group it
//! depends on (overlapping write set) has committed, and — in
//! transaction-consistent mode — commits only after the group before it
//! committed, so target commits become visible in source order.
//!
//! Retrying is safe: a merged group is idempotent (upserts of final rows,
//! deletes, updates of final values), and no later group can commit before
//! it, so re-applying a group whose commit outcome is unknown converges.
//! Changes to a keyless table are not idempotent (an insert applied twice
//! is two rows): a group holding them whose commit failed is not retried
//! here; the error ends the run, and the restart resumes from the
//! checkpoint the target holds, which knows whether the commit landed.
//!
//! A group is retried in place only on a live connection (a deadlock, a
//! lock timeout), a few times (`apply.max_retries`); an error that says the
//! connection is gone ends the run at once, and `ferry run` restarts the
//! pipeline on new connections (see [`ferry_core::policy`]).

use std::sync::Arc;
use std::time::Instant;

use ferry_core::{Action, CheckpointRecord, Level, Result, RetryBudget, SinkWriter, Step, policy};
use tokio::sync::{mpsc, watch};

use crate::commits::Commits;
use crate::stats::Stats;

pub(crate) enum Job {
    Group {
        seq: u64,
        exec_after: u64,
        steps: Vec<Step>,
        records: Vec<CheckpointRecord>,
        summary: String,
    },
    /// One large transaction, streamed in parts into one target transaction.
    Stream {
        seq: u64,
        parts: mpsc::Receiver<StreamPart>,
    },
}

pub(crate) enum StreamPart {
    Steps(Vec<Step>),
    Commit(Vec<CheckpointRecord>),
}

pub(crate) struct Done {
    pub worker: usize,
    pub seq: u64,
    /// A streamed transaction abandoned because the pipeline is stopping:
    /// rolled back, nothing committed.
    pub abandoned: bool,
}

pub(crate) struct Worker {
    pub id: usize,
    pub writer: Box<dyn SinkWriter>,
    pub committed: Arc<watch::Sender<Commits>>,
    pub stats: Arc<Stats>,
    pub ordered_commit: bool,
    pub retry: RetryBudget,
}

/// Waits until group `seq` has committed (0: nothing to wait for).
async fn wait_committed(committed: &watch::Sender<Commits>, seq: u64) {
    if seq == 0 {
        return;
    }
    let mut rx = committed.subscribe();
    // The sender lives as long as the pipeline; an error means shutdown.
    let _ = rx.wait_for(|c| c.is_committed(seq)).await;
}

/// Waits until every group before `seq` has committed (commit order).
async fn wait_turn(committed: &watch::Sender<Commits>, seq: u64) {
    let mut rx = committed.subscribe();
    let _ = rx.wait_for(|c| c.prefix + 1 >= seq).await;
}

/// Where applying a group failed: before its commit nothing of it is on
/// the target; a failed commit may have landed.
enum GroupError {
    BeforeCommit(ferry_core::Error),
    Commit(ferry_core::Error),
}

impl Worker {
    async fn apply_group(
        &mut self,
        seq: u64,
        steps: &[Step],
        records: &[CheckpointRecord],
    ) -> std::result::Result<(), GroupError> {
        let before_commit = async {
            self.writer.begin().await?;
            self.writer.apply(steps).await?;
            if self.ordered_commit {
                wait_turn(&self.committed.clone(), seq).await;
            }
            ferry_core::failpoint::failpoint(ferry_core::failpoint::GROUP_EXECUTED);
            Ok(())
        };
        before_commit.await.map_err(GroupError::BeforeCommit)?;
        self.writer
            .commit(records)
            .await
            .map_err(GroupError::Commit)
    }

    async fn run_group(
        &mut self,
        seq: u64,
        exec_after: u64,
        steps: Vec<Step>,
        records: Vec<CheckpointRecord>,
        summary: &str,
    ) -> Result<()> {
        if exec_after > 0 {
            self.stats.worker(
                self.id,
                format!("waiting for group {exec_after} (shared rows)"),
            );
            wait_committed(&self.committed.clone(), exec_after).await;
        }
        self.stats
            .worker(self.id, format!("applying group {seq}: {summary}"));
        let mut attempts = 0;
        let mut first_failure: Option<Instant> = None;
        loop {
            match self.apply_group(seq, &steps, &records).await {
                Ok(()) => return Ok(()),
                Err(failed) => {
                    let _ = self.writer.rollback().await;
                    let e = match failed {
                        GroupError::Commit(e)
                            if steps.iter().any(|s| {
                                matches!(s, Step::Keyless { .. } | Step::Checked { .. })
                            }) =>
                        {
                            tracing::warn!(
                                worker = self.id,
                                group = seq,
                                "the commit of changes to a table without a key, or of changes \
                                 checked for conflicts, failed and may have landed; resuming \
                                 from the target's checkpoint instead of applying them again"
                            );
                            return Err(e);
                        }
                        GroupError::Commit(e) | GroupError::BeforeCommit(e) => e,
                    };
                    let failing_for = first_failure.get_or_insert_with(Instant::now).elapsed();
                    match policy(&e, Level::InPlace, attempts, failing_for, &self.retry) {
                        Action::Retry(wait) => {
                            attempts += 1;
                            Stats::add(&self.stats.retries, 1);
                            tracing::warn!(
                                worker = self.id,
                                group = seq,
                                "apply failed; retrying group {seq} on the same connection in \
                                 {wait:?} (retry {attempts} of {}): {e}",
                                self.retry.in_place
                            );
                            self.stats.worker(
                                self.id,
                                format!("retry {attempts} of group {seq} in {wait:?}: {e}"),
                            );
                            tokio::time::sleep(wait).await;
                        }
                        Action::Escalate => {
                            tracing::warn!(
                                worker = self.id,
                                group = seq,
                                "apply failed {}; restarting the pipeline from its checkpoint on \
                                 new connections: {e}",
                                if e.connection_lost() {
                                    "on a lost connection".to_owned()
                                } else {
                                    format!("after {attempts} retries")
                                }
                            );
                            return Err(e);
                        }
                        Action::Halt => return Err(e),
                    }
                }
            }
        }
    }

    /// `Ok(false)`: abandoned before its commit (the pipeline is stopping).
    async fn run_stream(
        &mut self,
        seq: u64,
        mut parts: mpsc::Receiver<StreamPart>,
    ) -> Result<bool> {
        // Everything before this transaction has committed (the dispatcher
        // drains first), so no ordering wait is needed.
        self.stats
            .worker(self.id, format!("applying large transaction (group {seq})"));
        self.writer.begin().await?;
        let result = async {
            while let Some(part) = parts.recv().await {
                match part {
                    StreamPart::Steps(steps) => {
                        self.writer.apply(&steps).await?;
                        ferry_core::failpoint::failpoint(
                            ferry_core::failpoint::LARGE_TXN_PART_APPLIED,
                        );
                    }
                    StreamPart::Commit(records) => {
                        return self.writer.commit(&records).await.map(|()| true);
                    }
                }
            }
            Ok(false)
        }
        .await;
        if !matches!(result, Ok(true)) {
            let _ = self.writer.rollback().await;
        }
        result
    }

    pub async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        done: mpsc::UnboundedSender<Result<Done>>,
    ) {
        while let Some(job) = jobs.recv().await {
            let (seq, result) = match job {
                Job::Group {
                    seq,
                    exec_after,
                    steps,
                    records,
                    summary,
                } => (
                    seq,
                    self.run_group(seq, exec_after, steps, records, &summary)
                        .await
                        .map(|()| true),
                ),
                Job::Stream { seq, parts } => (seq, self.run_stream(seq, parts).await),
            };
            self.stats.worker(self.id, "idle");
            match result {
                Ok(committed) => {
                    if committed {
                        ferry_core::failpoint::failpoint(ferry_core::failpoint::GROUP_COMMITTED);
                        self.committed.send_modify(|c| c.mark(seq));
                        Stats::add(&self.stats.commits, 1);
                    }
                    if done
                        .send(Ok(Done {
                            worker: self.id,
                            seq,
                            abandoned: !committed,
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use ferry_core::{
        Column, ColumnType, EncodedRows, Error, KeylessOp, TableName, TableRef, TableSchema, Value,
    };

    /// A writer whose first commit fails (its outcome unknown to the
    /// caller), counting the groups applied.
    struct FailFirstCommit {
        applies: Arc<AtomicUsize>,
        commits: usize,
        lost: bool,
    }

    #[async_trait]
    impl SinkWriter for FailFirstCommit {
        async fn begin(&mut self) -> Result<()> {
            Ok(())
        }
        async fn apply(&mut self, _steps: &[Step]) -> Result<()> {
            self.applies.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn load(&mut self, _table: &TableRef, _rows: &[Vec<Value>]) -> Result<()> {
            Ok(())
        }
        async fn load_encoded(&mut self, _table: &TableRef, _rows: EncodedRows) -> Result<()> {
            Ok(())
        }
        async fn clear_table(&mut self, _table: &TableRef) -> Result<()> {
            Ok(())
        }
        async fn commit(&mut self, _records: &[CheckpointRecord]) -> Result<()> {
            self.commits += 1;
            if self.commits == 1 {
                let e = Error::transient("connection lost during COMMIT");
                return Err(if self.lost {
                    e.with_connection_lost()
                } else {
                    e
                });
            }
            Ok(())
        }
        async fn rollback(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn table(key: Vec<usize>) -> TableRef {
        Arc::new(TableSchema {
            name: TableName::bare("t"),
            columns: vec![Column {
                name: "v".into(),
                ty: ColumnType::Int64,
                nullable: true,
                source_type: "int".into(),
                user_type: None,
            }],
            key,
            version: 1,
            key_deferrable: false,
        })
    }

    async fn run(steps: Vec<Step>) -> (Result<()>, usize) {
        run_on(steps, false).await
    }

    /// `lost`: the failed commit says its connection is gone.
    async fn run_on(steps: Vec<Step>, lost: bool) -> (Result<()>, usize) {
        let applies = Arc::new(AtomicUsize::new(0));
        let mut w = Worker {
            id: 1,
            writer: Box::new(FailFirstCommit {
                applies: applies.clone(),
                commits: 0,
                lost,
            }),
            committed: Arc::new(watch::channel(Commits::default()).0),
            stats: Arc::new(Stats::new()),
            ordered_commit: false,
            retry: RetryBudget::default(),
        };
        let r = w.run_group(1, 0, steps, Vec::new(), "test").await;
        (r, applies.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_failed_commit_is_retried_only_when_the_group_is_idempotent() {
        let mut ops = ferry_core::TableOps::new(table(vec![0]));
        ops.upserts.push(vec![Value::Int(1)]);
        let (r, applies) = run(vec![Step::Rows(vec![ops])]).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(applies, 2, "merged rows are applied again");
        // Changes to a keyless table applied twice would be doubled: the
        // error ends the run (the restart reads the target's checkpoint).
        let (r, applies) = run(vec![Step::Keyless {
            table: table(vec![]),
            ops: vec![KeylessOp::Insert(vec![Value::Int(1)])],
        }])
        .await;
        assert!(r.is_err());
        assert_eq!(applies, 1);
    }

    #[tokio::test]
    async fn a_lost_connection_is_not_retried_on() {
        let mut ops = ferry_core::TableOps::new(table(vec![0]));
        ops.upserts.push(vec![Value::Int(1)]);
        let (r, applies) = run_on(vec![Step::Rows(vec![ops])], true).await;
        let e = r.unwrap_err();
        assert!(e.connection_lost(), "{e:?}");
        assert_eq!(
            applies, 1,
            "the group is not applied again on a dead connection"
        );
    }
}
