//! The markdown report of `bench sqlite`.

use std::fmt::Write as _;

use crate::data::Written;

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if !v.len().is_multiple_of(2) {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Peak RSS may grow at most this much from rows/4 to rows (proportional
/// memory would be 4×).
pub const RSS_BOUND_FACTOR: f64 = 1.25;
pub const SNAPSHOT_TARGET_RATIO: f64 = 0.5;
pub const CDC_TARGET_ROWS_PER_S: f64 = 50_000.0;

/// A CDC phase of ferry.
pub struct Apply {
    pub written: Written,
    /// From ferry's start (backlog) or the writer's start (live) until the
    /// target's applied position reached the source's last change.
    pub secs: f64,
    pub rss_kib: u64,
    /// ferry's CPU time (user + system) over the same span.
    pub cpu_secs: f64,
}

pub struct Live {
    pub apply: Apply,
    /// From the writer's last commit until the target caught up.
    pub lag_secs: f64,
    /// Captured changes not yet applied when the writer finished.
    pub behind_at_end: i64,
}

pub struct Results {
    pub command: String,
    pub rows: u64,
    pub runs: u32,
    pub source_mib: f64,
    pub attach_secs: Vec<f64>,
    pub dump_secs: Vec<f64>,
    pub ferry_secs: Vec<f64>,
    pub ferry_rss_kib: Vec<u64>,
    pub ferry_cpu_secs: Vec<f64>,
    pub small_rows: u64,
    pub small_secs: f64,
    pub small_rss_kib: u64,
    pub small_cpu_secs: f64,
    pub backlog: Apply,
    pub live: Live,
    pub machine: String,
    pub sqlite: String,
    pub commit: String,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

fn all_runs(xs: &[f64]) -> String {
    xs.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Results {
    pub fn markdown(&self) -> String {
        let rate = |rows: u64, secs: f64| rows as f64 / secs;
        let attach = median(&self.attach_secs);
        let dump = median(&self.dump_secs);
        let ferry = median(&self.ferry_secs);
        let ferry_rate = rate(self.rows, ferry);
        let ferry_rss = *self.ferry_rss_kib.iter().max().unwrap_or(&0);
        let med = if self.runs > 1 {
            format!(" (median of {})", self.runs)
        } else {
            String::new()
        };

        let mut o = String::new();
        o.push_str("| method | rows | seconds | rows/s | ratio to ferry | peak RSS |\n");
        o.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
        let mut row = |method: &str, rows: u64, secs: f64, ratio: &str, rss: Option<u64>| {
            let _ = writeln!(
                o,
                "| {method} | {} | {secs:.2} | {} | {ratio} | {} |",
                thousands(rows),
                thousands(rate(rows, secs).round() as u64),
                rss.map_or("—".into(), mib)
            );
        };
        let ratio = |secs: f64| format!("{:.2}", ferry_rate / rate(self.rows, secs));
        row(
            &format!("`INSERT INTO t SELECT * FROM src.t` over `ATTACH` (physical limit){med}"),
            self.rows,
            attach,
            &ratio(attach),
            None,
        );
        row(
            &format!("`sqlite3 src.db '.dump t' \\| sqlite3 dst.db`{med}"),
            self.rows,
            dump,
            &ratio(dump),
            None,
        );
        row(
            &format!("**ferry snapshot** (start → table recorded copied){med}"),
            self.rows,
            ferry,
            "1.00",
            Some(ferry_rss),
        );
        row(
            "ferry snapshot of rows/4 (RSS check)",
            self.small_rows,
            self.small_secs,
            "—",
            Some(self.small_rss_kib),
        );
        let b = &self.backlog;
        row(
            &format!(
                "**ferry CDC, backlog** ({} transactions of 1–5 changes written while ferry was stopped; start → applied)",
                thousands(b.written.transactions)
            ),
            b.written.changes,
            b.secs,
            "—",
            Some(b.rss_kib),
        );
        let l = &self.live;
        row(
            &format!(
                "writer, live: {} transactions of 1–5 changes, as fast as it can, ferry running",
                thousands(l.apply.written.transactions)
            ),
            l.apply.written.changes,
            l.apply.written.elapsed.as_secs_f64(),
            "—",
            None,
        );
        row(
            "**ferry CDC, live** (writer start → target caught up)",
            l.apply.written.changes,
            l.apply.secs,
            "—",
            Some(l.apply.rss_kib),
        );

        let _ = writeln!(
            o,
            "\nEvery snapshot target runs at ferry's durability ({}): the ATTACH copy is timed \
             until its COMMIT returns, ferry until its checkpoint records the table copied (in \
             the same transaction as the last rows), the dump until the loading sqlite3 exits.",
            crate::sqlite_bench::durability()
        );
        let _ = writeln!(
            o,
            "\"ratio to ferry\" = ferry's snapshot rows/s ÷ that method's rows/s. \
             Rows ≈ {:.0} bytes each ({:.0} MiB source file). CDC \"rows\" are row changes \
             (60 % UPDATE, 20 % INSERT, 20 % DELETE).",
            self.source_mib * 1024.0 * 1024.0 / self.rows as f64,
            self.source_mib
        );
        let _ = writeln!(
            o,
            "The writer alone (ferry stopped, backlog phase) made {} changes/s.",
            thousands(b.written.rate().round() as u64)
        );
        let _ = writeln!(
            o,
            "Live: the writer finished with {} captured changes not yet applied; the target caught up \
             {:.2} s after the writer's last commit.",
            thousands(l.behind_at_end.max(0) as u64),
            l.lag_secs
        );
        let us = |cpu: f64, n: u64| cpu * 1e6 / n as f64;
        let snap_cpu = median(&self.ferry_cpu_secs);
        let _ = writeln!(
            o,
            "ferry CPU time (user + system, all threads): snapshot {snap_cpu:.2} s = {:.2} µs/row \
             (rows/4: {:.2} µs/row); CDC backlog {:.2} s = {:.2} µs/change; CDC live {:.2} s = {:.2} µs/change.",
            us(snap_cpu, self.rows),
            us(self.small_cpu_secs, self.small_rows),
            b.cpu_secs,
            us(b.cpu_secs, b.written.changes),
            l.apply.cpu_secs,
            us(l.apply.cpu_secs, l.apply.written.changes),
        );
        if self.runs > 1 {
            let _ = writeln!(
                o,
                "Snapshot seconds per run: ATTACH {}; dump {}; ferry {}.",
                all_runs(&self.attach_secs),
                all_runs(&self.dump_secs),
                all_runs(&self.ferry_secs)
            );
        }

        let snap_ratio = ferry_rate / rate(self.rows, attach);
        let cdc = rate(b.written.changes, b.secs);
        let rss_ok = ferry_rss as f64 <= self.small_rss_kib as f64 * RSS_BOUND_FACTOR;
        let _ = writeln!(o, "\nTargets (issue 3):\n");
        let _ = writeln!(
            o,
            "- snapshot ≥ {SNAPSHOT_TARGET_RATIO}× the ATTACH copy: {snap_ratio:.2}× → {}",
            verdict(snap_ratio >= SNAPSHOT_TARGET_RATIO)
        );
        let _ = writeln!(
            o,
            "- CDC ≥ {} rows/s in transaction-consistent mode: backlog {} rows/s → {} (live: {} rows/s)",
            thousands(CDC_TARGET_ROWS_PER_S as u64),
            thousands(cdc.round() as u64),
            verdict(cdc >= CDC_TARGET_ROWS_PER_S),
            thousands(rate(l.apply.written.changes, l.apply.secs).round() as u64)
        );
        let _ = writeln!(
            o,
            "- RSS bounded, independent of table size: {} at {} rows vs {} at {} rows \
             (bound: ≤ {RSS_BOUND_FACTOR}×) → {}",
            mib(ferry_rss),
            thousands(self.rows),
            mib(self.small_rss_kib),
            thousands(self.small_rows),
            verdict(rss_ok)
        );
        let _ = writeln!(o, "\n- machine: {}", self.machine);
        let _ = writeln!(o, "- SQLite: {}", self.sqlite);
        let _ = writeln!(o, "- ferry commit: {}", self.commit);
        let _ = writeln!(o, "- command: `{}`", self.command);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(mib(1536), "1.5 MiB");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
