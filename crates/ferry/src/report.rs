//! A pipeline's live status: published by `ferry run` to a small file next
//! to the pipeline file, rendered by `ferry status`, and exported as
//! Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use ferry_pipeline::{Stats, TargetConsistency};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    pub snapshot_rows: u64,
    pub snapshot_total: Option<u64>,
    pub snapshot_done: bool,
    pub changes_applied: u64,
    pub changes_per_sec: f64,
    /// The table's online re-copy in this process, if one ran.
    #[serde(default)]
    pub recopy: Option<String>,
    #[serde(default)]
    pub recopy_rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub doing: String,
    pub for_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub pipeline: String,
    pub pid: u32,
    pub updated_micros: i64,
    pub phase: String,
    pub uptime_secs: f64,
    pub received_position: String,
    pub applied_position: String,
    pub lag_secs: f64,
    pub rows_per_sec: f64,
    pub bytes_per_sec: f64,
    pub queue_events: u64,
    pub queue_bytes: u64,
    pub rows_applied: u64,
    pub snapshot_rows: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub ddl: u64,
    pub commits: u64,
    pub retries: u64,
    /// Rows written by online re-copies.
    #[serde(default)]
    pub recopy_rows: u64,
    /// Whether readers of the target see only states the source had.
    #[serde(default)]
    pub consistent: bool,
    /// Since when, or why not yet.
    #[serde(default)]
    pub consistency: String,
    /// Restarts of the whole pipeline after transient errors.
    #[serde(default)]
    pub restarts: u64,
    /// The error behind the last restart; empty if none.
    #[serde(default)]
    pub last_error: String,
    pub tables: BTreeMap<String, TableReport>,
    pub workers: Vec<WorkerReport>,
}

/// Turns cumulative counters into per-second rates between two reports.
#[derive(Default)]
pub struct RateTracker {
    last: Option<(std::time::Instant, u64, u64, BTreeMap<String, u64>)>,
}

impl RateTracker {
    pub fn report(&mut self, name: &str, stats: &Stats) -> StatusReport {
        let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let now = std::time::Instant::now();
        let rows = g(&stats.rows_applied) + g(&stats.snapshot_rows);
        let bytes = g(&stats.bytes_applied);
        let tables = stats.tables();
        let per_table: BTreeMap<String, u64> = tables
            .iter()
            .map(|(k, t)| (k.clone(), t.changes_applied + t.snapshot_rows))
            .collect();
        let (rps, bps, table_rates) = match &self.last {
            Some((t, r, b, pt)) if now > *t => {
                let dt = now.duration_since(*t).as_secs_f64();
                let rates = per_table
                    .iter()
                    .map(|(k, v)| (k.clone(), (v - pt.get(k).copied().unwrap_or(0)) as f64 / dt))
                    .collect();
                ((rows - r) as f64 / dt, (bytes - b) as f64 / dt, rates)
            }
            _ => (0.0, 0.0, BTreeMap::new()),
        };
        self.last = Some((now, rows, bytes, per_table));
        StatusReport {
            pipeline: name.to_owned(),
            pid: std::process::id(),
            updated_micros: ferry_pipeline::stats::now_micros(),
            phase: stats.phase(),
            uptime_secs: stats.started.elapsed().as_secs_f64(),
            received_position: stats.received().position,
            applied_position: stats.applied().position,
            lag_secs: stats.lag_seconds(),
            rows_per_sec: rps,
            bytes_per_sec: bps,
            queue_events: g(&stats.queue_items),
            queue_bytes: g(&stats.queue_bytes),
            rows_applied: g(&stats.rows_applied),
            snapshot_rows: g(&stats.snapshot_rows),
            inserts: g(&stats.inserts),
            updates: g(&stats.updates),
            deletes: g(&stats.deletes),
            ddl: g(&stats.ddl),
            commits: g(&stats.commits),
            retries: g(&stats.retries),
            recopy_rows: g(&stats.recopy_rows),
            consistent: matches!(stats.consistency(), TargetConsistency::Consistent { .. }),
            consistency: match stats.consistency() {
                TargetConsistency::Unknown => "not known yet".into(),
                TargetConsistency::Pending { at: Some(at), why } => {
                    format!("not yet: consistent once applied reaches {at} ({why})")
                }
                TargetConsistency::Pending { at: None, why } => format!("not yet: {why}"),
                TargetConsistency::Consistent { since } => format!("consistent since {since}"),
            },
            restarts: g(&stats.restarts),
            last_error: stats.last_error(),
            tables: tables
                .into_iter()
                .map(|(k, t)| {
                    let rate = table_rates.get(&k).copied().unwrap_or(0.0);
                    (
                        k,
                        TableReport {
                            snapshot_rows: t.snapshot_rows,
                            snapshot_total: t.snapshot_total,
                            snapshot_done: t.snapshot_done,
                            changes_applied: t.changes_applied,
                            changes_per_sec: rate,
                            recopy: t.recopy,
                            recopy_rows: t.recopy_rows,
                        },
                    )
                })
                .collect(),
            workers: stats
                .workers()
                .into_iter()
                .map(|w| WorkerReport {
                    doing: w.doing,
                    for_secs: w.since.elapsed().as_secs_f64(),
                })
                .collect(),
        }
    }
}

/// Prometheus text exposition of a report.
pub fn prometheus(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: f64| {
        out.push_str(&format!("# HELP ferry_{name} {help}\n# TYPE ferry_{name} {kind}\nferry_{name}{{pipeline=\"{}\"}} {value}\n", r.pipeline));
    };
    metric(
        "rows_per_second",
        "Rows written to the target per second (snapshot and changes).",
        "gauge",
        r.rows_per_sec,
    );
    metric(
        "bytes_per_second",
        "Change bytes applied per second.",
        "gauge",
        r.bytes_per_sec,
    );
    metric(
        "lag_seconds",
        "Age of the newest applied source commit, 0 when caught up.",
        "gauge",
        r.lag_secs,
    );
    metric(
        "queue_events",
        "Source events waiting to be applied.",
        "gauge",
        r.queue_events as f64,
    );
    metric(
        "queue_bytes",
        "Bytes waiting to be applied.",
        "gauge",
        r.queue_bytes as f64,
    );
    metric(
        "snapshot_rows_total",
        "Rows copied by snapshots.",
        "counter",
        r.snapshot_rows as f64,
    );
    metric(
        "changes_applied_total",
        "Row writes applied after merging.",
        "counter",
        r.rows_applied as f64,
    );
    metric(
        "inserts_total",
        "Insert changes received.",
        "counter",
        r.inserts as f64,
    );
    metric(
        "updates_total",
        "Update changes received.",
        "counter",
        r.updates as f64,
    );
    metric(
        "deletes_total",
        "Delete changes received.",
        "counter",
        r.deletes as f64,
    );
    metric(
        "ddl_total",
        "Structure changes and truncates received.",
        "counter",
        r.ddl as f64,
    );
    metric(
        "commits_total",
        "Target transactions committed.",
        "counter",
        r.commits as f64,
    );
    metric(
        "retries_total",
        "Transient apply errors retried in place by apply workers.",
        "counter",
        r.retries as f64,
    );
    metric(
        "recopy_rows_total",
        "Rows written by online re-copies.",
        "counter",
        r.recopy_rows as f64,
    );
    metric(
        "target_consistent",
        "1 when readers of the target see only states the source had, else 0.",
        "gauge",
        if r.consistent { 1.0 } else { 0.0 },
    );
    metric(
        "restarts_total",
        "Restarts of the pipeline from its checkpoint after transient errors.",
        "counter",
        r.restarts as f64,
    );
    for (t, s) in &r.tables {
        out.push_str(&format!(
            "ferry_table_rows_total{{pipeline=\"{}\",table=\"{t}\"}} {}\n",
            r.pipeline,
            s.snapshot_rows + s.changes_applied
        ));
    }
    out
}

/// Human-readable rendering for `ferry status`.
pub fn render(r: &StatusReport, live: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "pipeline {}: {}{}\n",
        r.pipeline,
        r.phase,
        if live {
            format!(" (pid {})", r.pid)
        } else {
            " (not running: last published status)".into()
        }
    ));
    out.push_str(&format!(
        "  received:  {}\n  applied:   {}\n",
        r.received_position, r.applied_position
    ));
    out.push_str(&format!(
        "  lag:       {:.3} s\n  rate:      {:.0} rows/s, {:.0} bytes/s\n",
        r.lag_secs, r.rows_per_sec, r.bytes_per_sec
    ));
    out.push_str(&format!(
        "  queue:     {} events, {} bytes\n",
        r.queue_events, r.queue_bytes
    ));
    out.push_str(&format!("  target:    {}\n", r.consistency));
    out.push_str(&format!(
        "  totals:    {} snapshot rows, {} inserts, {} updates, {} deletes, {} ddl, {} commits, {} retries\n",
        r.snapshot_rows, r.inserts, r.updates, r.deletes, r.ddl, r.commits, r.retries
    ));
    if r.restarts > 0 {
        out.push_str(&format!(
            "  restarts:  {} (after transient errors; the last: {})\n",
            r.restarts, r.last_error
        ));
    }
    if !r.tables.is_empty() {
        out.push_str("  tables:\n");
        for (t, s) in &r.tables {
            let snap = match (s.snapshot_done, s.snapshot_total) {
                (true, _) => format!("copied {} rows", s.snapshot_rows),
                (false, Some(total)) => format!("copying {}/{} rows", s.snapshot_rows, total),
                (false, None) => format!("copying {} rows", s.snapshot_rows),
            };
            let recopy = s
                .recopy
                .as_ref()
                .map(|r| format!("; {r} ({} rows)", s.recopy_rows))
                .unwrap_or_default();
            out.push_str(&format!(
                "    {t}: {snap}; {} changes ({:.0}/s){recopy}\n",
                s.changes_applied, s.changes_per_sec
            ));
        }
    }
    if !r.workers.is_empty() {
        out.push_str("  workers:\n");
        for (i, w) in r.workers.iter().enumerate() {
            let stuck = if w.doing != "idle" && w.for_secs > 30.0 {
                "  <-- STUCK? running for a long time"
            } else {
                ""
            };
            out.push_str(&format!(
                "    #{i}: {} (for {:.1} s){stuck}\n",
                w.doing, w.for_secs
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_and_retries_are_exported_and_shown() {
        let stats = Stats::new();
        Stats::add(&stats.restarts, 3);
        Stats::add(&stats.retries, 2);
        stats.set_last_error("connection refused");
        let r = RateTracker::default().report("shop", &stats);
        let text = prometheus(&r);
        assert!(
            text.contains("ferry_restarts_total{pipeline=\"shop\"} 3")
                && text.contains("ferry_retries_total{pipeline=\"shop\"} 2"),
            "{text}"
        );
        let shown = render(&r, true);
        assert!(
            shown.contains("restarts:  3") && shown.contains("connection refused"),
            "{shown}"
        );
    }
}
