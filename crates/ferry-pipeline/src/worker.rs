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

use std::sync::Arc;

use ferry_core::{Action, CheckpointRecord, Result, SinkWriter, Step, policy};
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
    pub max_retries: u32,
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

impl Worker {
    async fn apply_group(
        &mut self,
        seq: u64,
        steps: &[Step],
        records: &[CheckpointRecord],
    ) -> Result<()> {
        self.writer.begin().await?;
        self.writer.apply(steps).await?;
        if self.ordered_commit {
            wait_turn(&self.committed.clone(), seq).await;
        }
        self.writer.commit(records).await
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
        loop {
            match self.apply_group(seq, &steps, &records).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let _ = self.writer.rollback().await;
                    match policy(e.class(), attempts, self.max_retries) {
                        Action::Retry(wait) => {
                            attempts += 1;
                            Stats::add(&self.stats.retries, 1);
                            tracing::warn!(
                                worker = self.id,
                                group = seq,
                                attempt = attempts,
                                "retrying after: {e}"
                            );
                            self.stats.worker(
                                self.id,
                                format!("retry {attempts} of group {seq} in {wait:?}: {e}"),
                            );
                            tokio::time::sleep(wait).await;
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
                    StreamPart::Steps(steps) => self.writer.apply(&steps).await?,
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
