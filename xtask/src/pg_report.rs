//! The markdown report of `bench postgres`, and what it is made of.

use std::fmt::Write as _;

use crate::Res;
use crate::pg_bench::PgOpts;
use crate::pg_server;
use crate::report::{mib, thousands};

pub const SNAPSHOT_VS_PIPE: f64 = 0.9;
pub const SNAPSHOT_VS_DUMP: f64 = 1.5;
pub const CDC_VS_NATIVE: f64 = 3.0;
pub const RSS_LIMIT_MIB: f64 = 512.0;
/// Peak RSS may grow at most this much from rows/2 to rows (proportional
/// memory would be 2×).
pub const RSS_GROWTH_BOUND: f64 = 1.25;

pub struct FerryRun {
    pub secs: f64,
    pub rss_kib: u64,
    pub cpu_secs: f64,
}

/// What pgbench reported.
pub struct Pgbench {
    pub transactions: u64,
    pub tps: f64,
    pub secs: f64,
}

pub fn parse_pgbench(out: &str, secs: f64) -> Res<Pgbench> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let transactions = field("number of transactions actually processed:")
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no transaction count in pgbench's output:\n{out}"))?;
    let tps = field("tps =")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(Pgbench {
        transactions,
        tps,
        secs,
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub struct Snapshots {
    pub pipe_key_first: f64,
    pub pipe_key_after: f64,
    pub dump: f64,
    pub pgcopydb_key: f64,
    pub pgcopydb_total: f64,
    pub native: f64,
    pub ferry: FerryRun,
    /// CPU seconds (source cluster, target cluster) during the COPY pipe
    /// with the key after, and during ferry's snapshot.
    pub cluster_cpu: [(f64, f64); 2],
    pub small_rows: u64,
    pub small: FerryRun,
}

pub struct Cdc {
    pub backlog: Pgbench,
    pub native_secs: f64,
    /// From ENABLE until the apply worker showed in `pg_stat_subscription`.
    pub native_worker_secs: f64,
    /// `pg_recvlogical` reading the same backlog from a slot of its own to
    /// `/dev/null`, applying nothing: PostgreSQL's own logical-decoding
    /// client. Not a bound (it handles one message at a time), a reference.
    pub decode_secs: f64,
    /// CPU seconds of the source's walsender serving native, `pg_recvlogical`
    /// and ferry in their phases (`None` when it could not be read).
    pub walsender_cpu: [Option<f64>; 3],
    /// CPU seconds (source cluster, target cluster) during native's and
    /// ferry's apply of the backlog.
    pub cluster_cpu: [(f64, f64); 2],
    pub ferry: FerryRun,
}

pub struct Live {
    pub writer: Pgbench,
    /// From pgbench's start until ferry had applied everything.
    pub secs: f64,
    /// After pgbench's end until ferry had applied everything.
    pub catch_up_secs: f64,
    pub lags: Vec<f64>,
    /// The same samples against the position ferry's walsender had sent.
    pub sent_lags: Vec<f64>,
    pub rss_kib: u64,
    pub cpu_secs: f64,
}

pub struct Results {
    pub opts: PgOpts,
    pub bytes_per_row: f64,
    pub table_mib: f64,
    pub source_fingerprint: String,
    pub snap: Snapshots,
    pub cdc: Cdc,
    pub live: Option<Live>,
    pub machine: String,
    pub postgres: String,
    pub pgcopydb: String,
    pub commit: String,
}

pub fn rate(rows: u64, secs: f64) -> String {
    thousands((rows as f64 / secs).round() as u64)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

impl Results {
    pub fn markdown(&self) -> String {
        let rows = self.opts.rows;
        let s = &self.snap;
        let per_s = |n: u64, secs: f64| n as f64 / secs;
        let ferry_rate = per_s(rows, s.ferry.secs);
        let mut o = String::new();
        o.push_str("| method | rows | seconds | rows/s | ferry ratio | peak RSS |\n");
        o.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
        let mut row = |method: &str, n: u64, secs: f64, ratio: Option<f64>, rss: Option<u64>| {
            let _ = writeln!(
                o,
                "| {method} | {} | {secs:.2} | {} | {} | {} |",
                thousands(n),
                rate(n, secs),
                ratio.map_or("—".into(), |r| format!("{r:.2}")),
                rss.map_or("—".into(), mib)
            );
        };
        let vs = |secs: f64| Some(ferry_rate / per_s(rows, secs));
        row(
            "binary COPY pipe, key created first",
            rows,
            s.pipe_key_first,
            vs(s.pipe_key_first),
            None,
        );
        row(
            "binary COPY pipe into a table without key, then `ADD PRIMARY KEY`",
            rows,
            s.pipe_key_after,
            vs(s.pipe_key_after),
            None,
        );
        row("`pg_dump -t t \\| psql`", rows, s.dump, vs(s.dump), None);
        row(
            &format!(
                "`pgcopydb clone --table-jobs 2 --index-jobs 2` (until the key exists; the process took {:.2} s)",
                s.pgcopydb_total
            ),
            rows,
            s.pgcopydb_key,
            vs(s.pgcopydb_key),
            None,
        );
        row(
            "native logical replication, `copy_data = true` (until `srsubstate = 'r'`)",
            rows,
            s.native,
            vs(s.native),
            None,
        );
        row(
            "**ferry snapshot** (start → t recorded copied, key built)",
            rows,
            s.ferry.secs,
            Some(1.0),
            Some(s.ferry.rss_kib),
        );
        row(
            "ferry snapshot of rows/2 (RSS check)",
            s.small_rows,
            s.small.secs,
            None,
            Some(s.small.rss_kib),
        );
        let c = &self.cdc;
        let n = c.backlog.transactions;
        let ferry_cdc_rate = per_s(n, c.ferry.secs);
        row(
            &format!(
                "CDC backlog, native logical replication ({} single-row UPDATE transactions; ENABLE → applied)",
                thousands(n)
            ),
            n,
            c.native_secs,
            Some(ferry_cdc_rate / per_s(n, c.native_secs)),
            None,
        );
        row(
            "`pg_recvlogical` reading the same backlog from its own slot to `/dev/null`, applying nothing (start → exit at the end marker)",
            n,
            c.decode_secs,
            Some(ferry_cdc_rate / per_s(n, c.decode_secs)),
            None,
        );
        row(
            "**ferry CDC backlog**, same transactions (start → applied)",
            n,
            c.ferry.secs,
            Some(1.0),
            Some(c.ferry.rss_kib),
        );
        if let Some(l) = &self.live {
            row(
                &format!(
                    "pgbench live, {} clients, {} s, ferry running (writer rate)",
                    self.opts.clients, self.opts.live_secs
                ),
                l.writer.transactions,
                l.writer.secs,
                None,
                None,
            );
            row(
                "**ferry CDC live** (pgbench start → target caught up)",
                l.writer.transactions,
                l.secs,
                None,
                Some(l.rss_kib),
            );
        }

        let _ = writeln!(
            o,
            "\n\"ferry ratio\" = ferry's rows/s ÷ that method's rows/s (snapshot rows against ferry's \
             snapshot, CDC rows against ferry's CDC backlog). Rows ≈ {:.0} bytes each \
             (`pg_column_size`), heap {:.0} MiB. Source fingerprint: {}.",
            self.bytes_per_row, self.table_mib, self.source_fingerprint
        );
        let _ = writeln!(
            o,
            "pgbench made the backlog at {:.0} tps with both appliers stopped. Native's apply worker \
             was running {:.2} s after `ENABLE` (included in its time, as ferry's start-up is in ferry's).",
            c.backlog.tps, c.native_worker_secs
        );
        let us = |cpu: f64, n: u64| cpu * 1e6 / n as f64;
        let _ = writeln!(
            o,
            "ferry CPU time (user + system, all threads): snapshot {:.2} s = {:.2} µs/row \
             (rows/2: {:.2} µs/row); CDC backlog {:.2} s = {:.2} µs/change.",
            s.ferry.cpu_secs,
            us(s.ferry.cpu_secs, rows),
            us(s.small.cpu_secs, s.small_rows),
            c.ferry.cpu_secs,
            us(c.ferry.cpu_secs, n)
        );
        let busy = |cpu: Option<f64>, secs: f64| {
            cpu.map_or("?".to_string(), |c| {
                format!("{c:.2} s of {secs:.2} s ({:.0} %)", 100.0 * c / secs)
            })
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let [(ps, pt), (fs, ft)] = s.cluster_cpu;
        let _ = writeln!(
            o,
            "  CPU during the snapshot: pipe (key after): source {ps:.2} s + target {pt:.2} s = \
             {:.0} % of {cores:.0} cores × {:.2} s (psql processes not counted); ferry: source \
             {fs:.2} s + target {ft:.2} s + ferry {:.2} s = {:.0} % of {cores:.0} cores × {:.2} s",
            100.0 * (ps + pt) / (cores * s.pipe_key_after),
            s.pipe_key_after,
            s.ferry.cpu_secs,
            100.0 * (fs + ft + s.ferry.cpu_secs) / (cores * s.ferry.secs),
            s.ferry.secs,
        );
        let [w_native, w_decode, w_ferry] = c.walsender_cpu;
        let _ = writeln!(
            o,
            "  source walsender CPU (decoding and sending the backlog): native {}, \
             pg_recvlogical {}, ferry {}",
            busy(w_native, c.native_secs),
            busy(w_decode, c.decode_secs),
            busy(w_ferry, c.ferry.secs),
        );
        let [(ns, nt), (fs, ft)] = c.cluster_cpu;
        let ferry_cpu = c.ferry.cpu_secs;
        let _ = writeln!(
            o,
            "  CPU while applying the backlog: native: source {ns:.2} s + target {nt:.2} s = \
             {:.0} % of {cores:.0} cores × {:.2} s; ferry: source {fs:.2} s + target {ft:.2} s + \
             ferry {ferry_cpu:.2} s = {:.0} % of {cores:.0} cores × {:.2} s",
            100.0 * (ns + nt) / (cores * c.native_secs),
            c.native_secs,
            100.0 * (fs + ft + ferry_cpu) / (cores * c.ferry.secs),
            c.ferry.secs,
        );
        if let Some(l) = &self.live {
            let _ = writeln!(
                o,
                "Live: pgbench alone reported {:.0} tps; ferry caught up {:.2} s after pgbench ended; \
                 lag over {} samples (source flushed WAL position → ferry's applied position, \
                 20 ms polling): p50 {:.3} s, p99 {:.3} s, max {:.3} s; the same samples against the \
                 position the source's walsender had sent to ferry (decoding): p50 {:.3} s, p99 {:.3} s; \
                 ferry CPU {:.2} s = {:.2} µs/change.",
                l.writer.tps,
                l.catch_up_secs,
                l.lags.len(),
                percentile(&l.lags, 0.5),
                percentile(&l.lags, 0.99),
                l.lags.last().copied().unwrap_or(f64::NAN),
                percentile(&l.sent_lags, 0.5),
                percentile(&l.sent_lags, 0.99),
                l.cpu_secs,
                us(l.cpu_secs, l.writer.transactions)
            );
        }

        let best_pipe = s.pipe_key_first.min(s.pipe_key_after);
        let vs_pipe = ferry_rate / per_s(rows, best_pipe);
        let vs_dump = ferry_rate / per_s(rows, s.dump);
        let vs_pgcopydb = ferry_rate / per_s(rows, s.pgcopydb_key);
        let vs_native = ferry_cdc_rate / per_s(n, c.native_secs);
        let peak = [
            s.ferry.rss_kib,
            s.small.rss_kib,
            c.ferry.rss_kib,
            self.live.as_ref().map_or(0, |l| l.rss_kib),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let growth = s.ferry.rss_kib as f64 / s.small.rss_kib as f64;
        let factor = rows as f64 / s.small_rows as f64;
        let _ = writeln!(o, "\nTargets (issue 4):\n");
        let _ = writeln!(
            o,
            "- snapshot ≥ {SNAPSHOT_VS_PIPE}× the binary COPY pipe (the faster of its two forms): \
             {vs_pipe:.2}× → {} (key first {:.2}×, key after {:.2}×)",
            verdict(vs_pipe >= SNAPSHOT_VS_PIPE),
            ferry_rate / per_s(rows, s.pipe_key_first),
            ferry_rate / per_s(rows, s.pipe_key_after),
        );
        let _ = writeln!(
            o,
            "- snapshot ≥ {SNAPSHOT_VS_DUMP}× `pg_dump | psql`: {vs_dump:.2}× → {}",
            verdict(vs_dump >= SNAPSHOT_VS_DUMP)
        );
        let _ = writeln!(
            o,
            "- snapshot faster than pgcopydb: {vs_pgcopydb:.2}× → {}",
            verdict(vs_pgcopydb > 1.0)
        );
        let _ = writeln!(
            o,
            "- CDC ≥ {CDC_VS_NATIVE}× native logical replication's rows/s (transaction-consistent mode): \
             {} against {} rows/s = {vs_native:.2}× → {}",
            rate(n, c.ferry.secs),
            rate(n, c.native_secs),
            verdict(vs_native >= CDC_VS_NATIVE)
        );
        let _ = writeln!(
            o,
            "  (`pg_recvlogical` only reading the backlog to /dev/null: {} rows/s = {:.2}× native's apply; \
             ferry applies at {:.0} % of that rate)",
            rate(n, c.decode_secs),
            per_s(n, c.decode_secs) / per_s(n, c.native_secs),
            100.0 * ferry_cdc_rate / per_s(n, c.decode_secs)
        );
        if let Some(l) = &self.live {
            let _ = writeln!(
                o,
                "- lag p99 reported: {:.3} s (p50 {:.3} s) under {:.0} tps",
                percentile(&l.lags, 0.99),
                percentile(&l.lags, 0.5),
                l.writer.tps
            );
        }
        let _ = writeln!(
            o,
            "- peak RSS ≤ {RSS_LIMIT_MIB} MiB: highest {} over all ferry runs → {}",
            mib(peak),
            verdict(peak as f64 / 1024.0 <= RSS_LIMIT_MIB)
        );
        let _ = writeln!(
            o,
            "- … whatever the table size: snapshot {} at {} rows against {} at {} rows = {growth:.2}× \
             for {factor:.0}× the rows (proportional memory would be {factor:.0}×; bound here ≤ \
             {RSS_GROWTH_BOUND}×) → {}",
            mib(s.ferry.rss_kib),
            thousands(rows),
            mib(s.small.rss_kib),
            thousands(s.small_rows),
            verdict(growth <= RSS_GROWTH_BOUND)
        );
        let _ = writeln!(o, "\n- machine: {}", self.machine);
        let _ = writeln!(
            o,
            "- {}, two clusters on this machine (source, target), each with: {}",
            self.postgres,
            pg_server::SETTINGS.join(", ")
        );
        let _ = writeln!(o, "- pgcopydb {}", self.pgcopydb);
        let _ = writeln!(o, "- ferry commit: {}", self.commit);
        let _ = writeln!(o, "- command: `{}`", self.opts.command);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert_eq!(percentile(&v, 0.99), 4.0);
        assert_eq!(percentile(&[5.0], 0.01), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn pgbench_output() {
        let out = "transaction type: update.sql\nnumber of transactions actually processed: 200000/200000\n\
                   latency average = 0.2 ms\ntps = 23456.789012 (without initial connection time)\n";
        let p = parse_pgbench(out, 8.5).unwrap();
        assert_eq!(p.transactions, 200_000);
        assert!((p.tps - 23456.789012).abs() < 1e-6);
        let out = "number of transactions actually processed: 345678\ntps = 1.5 (without initial connection time)\n";
        assert_eq!(parse_pgbench(out, 1.0).unwrap().transactions, 345_678);
        assert!(parse_pgbench("nothing", 1.0).is_err());
    }
}
