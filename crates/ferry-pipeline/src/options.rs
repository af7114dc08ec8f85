//! Runtime options of a pipeline (already validated by the caller).

use std::time::Duration;

use ferry_core::RetryBudget;

/// How the target may expose source transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Every source transaction is applied atomically, target commits
    /// become visible in source commit order, and a transaction executes
    /// only after the earlier ones whose rows it writes.
    Transactional,
    /// Changes are grouped per table and tables commit independently, in
    /// parallel, each in source order: faster, but a reader may see part
    /// of a source transaction. Exactly once still holds (per-table
    /// positions in the checkpoint).
    Eventual,
}

/// What to do when the source can no longer continue from the target's
/// checkpoint (see [`ferry_core::Continuity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGap {
    /// Stop with an error naming the gap and the way out.
    Fail,
    /// Stream from where the source can continue and re-copy every table
    /// online, so the target converges.
    Resync,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Pipeline name: names checkpoints and source objects.
    pub pipeline: String,
    /// Close a batch at this many changes...
    pub batch_rows: usize,
    /// ...or when its first change is this old, whichever comes first.
    pub batch_time: Duration,
    /// Apply workers (capped by what the sink allows).
    pub workers: usize,
    /// Source events buffered between the source and the appliers.
    pub queue_events: usize,
    /// Bytes buffered between the source and the appliers.
    pub queue_bytes: usize,
    pub consistency: Consistency,
    /// Retries of one group on its own, still open, connection before the
    /// pipeline restarts from its checkpoint (`apply.max_retries`).
    pub max_retries: u32,
    /// Transient failures following each other without progress for this
    /// long make ferry give up (`apply.give_up_after`).
    pub give_up_after: Duration,
    /// While the source is idle, record its position on the target this often.
    pub idle_checkpoint: Duration,
    pub on_gap: OnGap,
    /// Active-active apply (ADR 0014): every source transaction is its own
    /// target transaction, led by a [`ferry_core::Step::Stamp`], and its
    /// changes to keyed tables reach the sink unmerged
    /// ([`ferry_core::Step::Checked`]) so that it can detect conflicts.
    pub active_active: bool,
}

impl Options {
    pub fn new(pipeline: impl Into<String>) -> Self {
        Options {
            pipeline: pipeline.into(),
            batch_rows: 1000,
            batch_time: Duration::from_millis(500),
            workers: 4,
            queue_events: 1024,
            queue_bytes: 64 << 20,
            consistency: Consistency::Transactional,
            max_retries: 3,
            give_up_after: Duration::from_secs(3600),
            idle_checkpoint: Duration::from_secs(5),
            on_gap: OnGap::Fail,
            active_active: false,
        }
    }

    /// What [`ferry_core::policy`] needs of these options.
    pub fn retry_budget(&self) -> RetryBudget {
        RetryBudget {
            give_up_after: self.give_up_after,
            in_place: self.max_retries,
        }
    }
}
