//! Live counters and worker activity, read by metrics, `ferry status` and
//! progress bars. Written by the runtime; cheap to update on the hot path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Counters of one target table.
#[derive(Debug, Clone, Default)]
pub struct TableStats {
    pub snapshot_rows: u64,
    /// Rows in the source table when its copy started (estimate).
    pub snapshot_total: Option<u64>,
    pub snapshot_done: bool,
    pub changes_applied: u64,
    /// Rows written by online re-copies of the table.
    pub recopy_rows: u64,
    /// The table's online re-copy: `None` when none ran in this process.
    pub recopy: Option<String>,
}

/// From when readers of the target see only states the source had.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TargetConsistency {
    /// Not known yet (starting).
    #[default]
    Unknown,
    /// Not yet: tables hold rows of different source positions until the
    /// applied position reaches `at` (`None`: until a re-copy ends).
    Pending { at: Option<String>, why: String },
    /// Consistent since the applied position passed `since`.
    Consistent { since: String },
}

/// What one apply worker is doing.
#[derive(Debug, Clone)]
pub struct WorkerActivity {
    pub doing: String,
    pub since: Instant,
}

#[derive(Debug, Clone, Default)]
pub struct PositionInfo {
    pub position: String,
    /// Source commit time, microseconds since the epoch.
    pub commit_time_micros: Option<i64>,
}

/// Shared pipeline statistics.
pub struct Stats {
    pub started: Instant,
    pub rows_applied: AtomicU64,
    pub bytes_applied: AtomicU64,
    pub txns_applied: AtomicU64,
    pub commits: AtomicU64,
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
    pub ddl: AtomicU64,
    pub snapshot_rows: AtomicU64,
    pub queue_items: AtomicU64,
    pub queue_bytes: AtomicU64,
    /// Transient errors retried in place by apply workers.
    pub retries: AtomicU64,
    /// Rows written by online re-copies.
    pub recopy_rows: AtomicU64,
    /// Restarts of the whole pipeline after a transient error (`ferry run`).
    pub restarts: AtomicU64,
    tables: Mutex<BTreeMap<String, TableStats>>,
    workers: Mutex<Vec<WorkerActivity>>,
    phase: Mutex<String>,
    received: Mutex<PositionInfo>,
    applied: Mutex<PositionInfo>,
    consistency: Mutex<TargetConsistency>,
    last_error: Mutex<String>,
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            rows_applied: AtomicU64::new(0),
            bytes_applied: AtomicU64::new(0),
            txns_applied: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            ddl: AtomicU64::new(0),
            snapshot_rows: AtomicU64::new(0),
            queue_items: AtomicU64::new(0),
            queue_bytes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            recopy_rows: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            tables: Mutex::new(BTreeMap::new()),
            workers: Mutex::new(Vec::new()),
            phase: Mutex::new("starting".into()),
            received: Mutex::new(PositionInfo::default()),
            applied: Mutex::new(PositionInfo::default()),
            consistency: Mutex::new(TargetConsistency::Unknown),
            last_error: Mutex::new(String::new()),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().expect("stats") = phase.to_owned();
    }

    pub fn phase(&self) -> String {
        self.phase.lock().expect("stats").clone()
    }

    pub fn table(&self, name: &str, f: impl FnOnce(&mut TableStats)) {
        f(self
            .tables
            .lock()
            .expect("stats")
            .entry(name.to_owned())
            .or_default());
    }

    pub fn tables(&self) -> BTreeMap<String, TableStats> {
        self.tables.lock().expect("stats").clone()
    }

    pub fn set_workers(&self, n: usize) {
        *self.workers.lock().expect("stats") = vec![
            WorkerActivity {
                doing: "idle".into(),
                since: Instant::now()
            };
            n
        ];
    }

    pub fn worker(&self, i: usize, doing: impl Into<String>) {
        if let Some(w) = self.workers.lock().expect("stats").get_mut(i) {
            *w = WorkerActivity {
                doing: doing.into(),
                since: Instant::now(),
            };
        }
    }

    pub fn workers(&self) -> Vec<WorkerActivity> {
        self.workers.lock().expect("stats").clone()
    }

    pub fn set_received(&self, position: String, time: Option<i64>) {
        *self.received.lock().expect("stats") = PositionInfo {
            position,
            commit_time_micros: time,
        };
    }

    pub fn set_applied(&self, position: String, time: Option<i64>) {
        *self.applied.lock().expect("stats") = PositionInfo {
            position,
            commit_time_micros: time,
        };
    }

    pub fn set_consistency(&self, c: TargetConsistency) {
        *self.consistency.lock().expect("stats") = c;
    }

    pub fn consistency(&self) -> TargetConsistency {
        self.consistency.lock().expect("stats").clone()
    }

    /// Records the error that made the pipeline restart (or retry).
    pub fn set_last_error(&self, error: impl Into<String>) {
        *self.last_error.lock().expect("stats") = error.into();
    }

    /// The last error that made the pipeline restart; empty if none.
    pub fn last_error(&self) -> String {
        self.last_error.lock().expect("stats").clone()
    }

    pub fn received(&self) -> PositionInfo {
        self.received.lock().expect("stats").clone()
    }

    pub fn applied(&self) -> PositionInfo {
        self.applied.lock().expect("stats").clone()
    }

    /// Replication lag in seconds: how long ago the newest applied change
    /// was committed at the source, or 0 when everything received is applied.
    pub fn lag_seconds(&self) -> f64 {
        let applied = self.applied();
        let received = self.received();
        if applied.position == received.position {
            return 0.0;
        }
        match applied.commit_time_micros.or(received.commit_time_micros) {
            Some(t) => ((now_micros() - t).max(0) as f64) / 1e6,
            None => 0.0,
        }
    }
}
