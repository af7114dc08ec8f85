//! `cargo xtask bench sqlite`: ferry SQLite → SQLite beside the physical
//! limit (`INSERT … SELECT` over `ATTACH`) and `sqlite3 .dump | sqlite3`,
//! all on the same data in one run, every copy checked.
//!
//! Phases: source creation; snapshot (ATTACH, dump, ferry) × runs; CDC
//! backlog (changes written while ferry is stopped, then applied); CDC live
//! (ferry running while the writer writes); snapshot of rows/4 for the RSS
//! comparison. Progress goes to stderr, the report to stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::data::{self, Writer};
use crate::machine::{self, Machine};
use crate::process::{self, Ferry, Probe};
use crate::report::{Apply, Live, Results, thousands};
use crate::{BenchOpts, Ctx, Res};

/// A work directory, removed at the end unless `--keep` or an error.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn new(keep: bool) -> Res<WorkDir> {
        let path = std::env::temp_dir().join(format!("ferry-bench-sqlite-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).ctx(|| format!("clearing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).ctx(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn finish(self) {
        if self.keep {
            eprintln!("== files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A pipeline with ferry's defaults, selecting table `t`.
fn write_pipeline(path: &Path, name: &str, source: &Path, target: &Path) -> Res<()> {
    let text = format!(
        "# written by cargo xtask bench sqlite: ferry's defaults, one table\n\
         name = {}\n\n[source]\nurl = {}\n\n[target]\nurl = {}\n\n[tables]\ninclude = [\"t\"]\n",
        toml_str(name),
        toml_str(&format!("sqlite:{}", source.display())),
        toml_str(&format!("sqlite:{}", target.display())),
    );
    std::fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}

/// The durability every copy runs at: the settings ferry's SQLite sink
/// gives its target (`crates/connectors/ferry-sqlite/src/connection.rs`,
/// `open_target`). A commit is in the WAL when it returns; it is not synced
/// until the next checkpoint.
pub(crate) const TARGET_PRAGMAS: [(&str, &str); 2] =
    [("journal_mode", "WAL"), ("synchronous", "NORMAL")];

/// `TARGET_PRAGMAS` as text for the report.
pub(crate) fn durability() -> String {
    TARGET_PRAGMAS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The physical limit: one statement copying pages' worth of rows inside
/// SQLite, no decoding into another type system, one transaction, into a
/// target at ferry's durability. Timed until `COMMIT` returns (the data is
/// committed, as ferry's is when its checkpoint records the table copied);
/// closing the connection, which checkpoints the WAL, is not timed.
fn attach_copy(source: &Path, target: &Path) -> Res<f64> {
    let t = Instant::now();
    let c = Connection::open(target).ctx(|| format!("opening {}", target.display()))?;
    for (pragma, value) in TARGET_PRAGMAS {
        c.pragma_update(None, pragma, value)
            .ctx(|| format!("PRAGMA {pragma}={value}"))?;
    }
    let mode: String = c
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .ctx(|| "PRAGMA journal_mode".into())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "the ATTACH target is in journal mode {mode}, not WAL"
        ));
    }
    c.execute(
        "ATTACH DATABASE ?1 AS src",
        [source.to_str().ok_or("non-UTF-8 path")?],
    )
    .ctx(|| "ATTACH".into())?;
    c.execute_batch(&format!(
        "BEGIN; {}; INSERT INTO main.t SELECT * FROM src.t; COMMIT;",
        data::DDL.replacen("CREATE TABLE t", "CREATE TABLE main.t", 1)
    ))
    .ctx(|| "INSERT INTO t SELECT * FROM src.t".into())?;
    let secs = t.elapsed().as_secs_f64();
    drop(c);
    Ok(secs)
}

/// `sqlite3 source '.dump t' | sqlite3 target` (one transaction: `.dump`
/// wraps its output in BEGIN … COMMIT), the loading `sqlite3` set to
/// ferry's durability first. Timed until the loading `sqlite3` exits.
fn dump_copy(source: &Path, target: &Path) -> Res<f64> {
    let t = Instant::now();
    let mut dump = Command::new("sqlite3")
        .arg(source)
        .arg(".dump t")
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "starting sqlite3 .dump (apt-get install sqlite3)".into())?;
    let pipe = dump.stdout.take().ok_or("no stdout from sqlite3 .dump")?;
    let mut load = Command::new("sqlite3");
    for (pragma, value) in TARGET_PRAGMAS {
        load.arg("-cmd").arg(format!("PRAGMA {pragma}={value}"));
    }
    let load = load
        .arg(target)
        .stdin(pipe)
        // `PRAGMA journal_mode` prints the mode; stdout is the report's.
        .stdout(Stdio::null())
        .status()
        .ctx(|| "running sqlite3 (load)".into())?;
    let secs = t.elapsed().as_secs_f64();
    let dumped = dump.wait().ctx(|| "waiting for sqlite3 .dump".into())?;
    if !dumped.success() || !load.success() {
        return Err(format!(
            "sqlite3 .dump | sqlite3 failed: dump {dumped}, load {load}"
        ));
    }
    Ok(secs)
}

/// Generous: a stuck ferry fails the run instead of hanging it.
fn timeout_for(units: u64, per_unit: Duration) -> Duration {
    Duration::from_secs(60) + per_unit * u32::try_from(units).unwrap_or(u32::MAX)
}

struct Snapshot {
    secs: f64,
    rss_kib: u64,
    cpu_secs: f64,
}

/// `ferry run` on a fresh target until table `t` is recorded copied; then
/// peak RSS, SIGTERM, exit 0, and the guard.
fn ferry_snapshot(
    bin: &Path,
    pipeline: &Path,
    name: &str,
    source: &Path,
    target: &Path,
    log: &Path,
    rows: u64,
) -> Res<Snapshot> {
    let mut probe = Probe::new(target, name);
    let mut ferry = Ferry::start(bin, pipeline, log)?;
    let done = ferry.wait_for(
        "the snapshot of t to be recorded complete",
        timeout_for(rows, Duration::from_millis(1)),
        || probe.table_copied(),
    )?;
    let secs = done.duration_since(ferry.started).as_secs_f64();
    let rss_kib = ferry.peak_rss_kib()?;
    let cpu_secs = ferry.cpu_secs()?;
    drop(probe);
    ferry.stop()?;
    data::guard("the ferry snapshot", source, target)?;
    Ok(Snapshot {
        secs,
        rss_kib,
        cpu_secs,
    })
}

/// Waits until the target's applied position reaches `seq`.
fn wait_applied(ferry: &mut Ferry, probe: &mut Probe, seq: i64, changes: u64) -> Res<Instant> {
    ferry.wait_for(
        &format!("the target's applied position to reach source seq {seq}"),
        timeout_for(changes, Duration::from_millis(5)),
        || Ok(probe.applied_seq()?.is_some_and(|a| a >= seq)),
    )
}

pub fn run(opts: &BenchOpts) -> Res<()> {
    let sqlite_cli = machine::sqlite3_cli_version()?;
    let root = process::workspace_root();
    let commit = machine::git_commit(&root);
    let bin = process::build_ferry()?;
    let dir = WorkDir::new(opts.keep)?;
    eprintln!("== work directory {}", dir.path.display());
    match measure(opts, &bin, &dir, sqlite_cli, commit) {
        Ok(results) => {
            println!("{}", results.markdown());
            dir.finish();
            Ok(())
        }
        // Keep the databases and ferry's logs for whoever looks into it.
        Err(e) => Err(format!(
            "{e}\n(work directory kept: {})",
            dir.path.display()
        )),
    }
}

fn measure(
    opts: &BenchOpts,
    bin: &Path,
    dir: &WorkDir,
    sqlite_cli: String,
    commit: String,
) -> Res<Results> {
    let source = dir.file("source.db");
    eprintln!("== creating the source: {} rows", thousands(opts.rows));
    data::create_source(&source, opts.rows, 1)?;
    let source_mib = std::fs::metadata(&source)
        .ctx(|| "source size".into())?
        .len() as f64
        / 1024.0
        / 1024.0;

    // Snapshot: the three methods side by side, `runs` times.
    let (mut attach_secs, mut dump_secs) = (Vec::new(), Vec::new());
    let (mut ferry_secs, mut ferry_rss, mut ferry_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_pipeline = None;
    for run in 1..=opts.runs {
        eprintln!("== snapshot run {run}/{}", opts.runs);
        let dst = dir.file(&format!("attach-{run}.db"));
        let s = attach_copy(&source, &dst)?;
        eprintln!("   ATTACH copy: {s:.2} s");
        data::guard("the ATTACH copy", &source, &dst)?;
        remove_db(&dst);
        attach_secs.push(s);

        let dst = dir.file(&format!("dump-{run}.db"));
        let s = dump_copy(&source, &dst)?;
        eprintln!("   sqlite3 .dump | sqlite3: {s:.2} s");
        data::guard("the .dump copy", &source, &dst)?;
        remove_db(&dst);
        dump_secs.push(s);

        let name = format!("bench-{run}");
        let target = dir.file(&format!("ferry-{run}.db"));
        let pipeline = dir.file(&format!("{name}.toml"));
        write_pipeline(&pipeline, &name, &source, &target)?;
        let log = dir.file(&format!("{name}.log"));
        let snap = ferry_snapshot(bin, &pipeline, &name, &source, &target, &log, opts.rows)?;
        eprintln!(
            "   ferry snapshot: {:.2} s, peak RSS {}",
            snap.secs,
            crate::report::mib(snap.rss_kib)
        );
        ferry_secs.push(snap.secs);
        ferry_rss.push(snap.rss_kib);
        ferry_cpu.push(snap.cpu_secs);
        if run < opts.runs {
            // Unregister this run's consumer (and drop its triggers), so the
            // next run's `.dump` and snapshot see a plain source again.
            process::ferry_command(bin, &["teardown"], &pipeline)?;
            remove_db(&target);
        } else {
            last_pipeline = Some((name, pipeline, target, log));
        }
    }
    let (name, pipeline, target, log) = last_pipeline.ok_or("no snapshot run")?;

    // CDC backlog: ferry is stopped after its snapshot; the changes pile up
    // in `_ferry_changes`, then ferry starts and applies them.
    let mut writer = Writer::new(&source, opts.rows, 3)?;
    let before = data::max_change_seq(writer.conn())?;
    eprintln!(
        "== CDC backlog: writing {} changes with ferry stopped",
        thousands(opts.changes)
    );
    let written = writer.write(opts.changes)?;
    let end_seq = data::max_change_seq(writer.conn())?;
    let captured: i64 = writer
        .conn()
        .query_row(
            "SELECT count(*) FROM _ferry_changes WHERE seq > ?1",
            [before],
            |r| r.get(0),
        )
        .ctx(|| "counting captured changes".into())?;
    if captured as u64 != written.changes || (end_seq - before) as u64 != written.changes {
        return Err(format!(
            "wrote {} changes but the triggers captured {captured} (seq {before} → {end_seq}); \
             is ferry's capture installed?",
            written.changes
        ));
    }
    eprintln!(
        "   writer: {} changes in {} transactions, {:.2} s ({} changes/s, ferry stopped)",
        thousands(written.changes),
        thousands(written.transactions),
        written.elapsed.as_secs_f64(),
        thousands(written.rate().round() as u64)
    );
    let mut probe = Probe::new(&target, &name);
    let mut ferry = Ferry::start(bin, &pipeline, &log)?;
    let done = wait_applied(&mut ferry, &mut probe, end_seq, opts.changes)?;
    let backlog = Apply {
        written,
        secs: done.duration_since(ferry.started).as_secs_f64(),
        rss_kib: ferry.peak_rss_kib()?,
        cpu_secs: ferry.cpu_secs()?,
    };
    drop(probe);
    ferry.stop()?;
    eprintln!(
        "   ferry applied the backlog in {:.2} s ({} changes/s), peak RSS {}",
        backlog.secs,
        thousands((backlog.written.changes as f64 / backlog.secs).round() as u64),
        crate::report::mib(backlog.rss_kib)
    );
    data::guard("the CDC backlog", &source, &target)?;

    // CDC live: ferry runs while the writer writes as fast as it can.
    eprintln!(
        "== CDC live: writing {} changes with ferry running",
        thousands(opts.changes)
    );
    let mut probe = Probe::new(&target, &name);
    let mut ferry = Ferry::start(bin, &pipeline, &log)?;
    // One change first, applied, so ferry is known to be streaming before
    // the clock starts.
    writer.write(1)?;
    let warm = data::max_change_seq(writer.conn())?;
    wait_applied(&mut ferry, &mut probe, warm, 1)?;
    let written = writer.write(opts.changes)?;
    let writer_done = Instant::now();
    let end_seq = data::max_change_seq(writer.conn())?;
    let applied_then = probe.applied_seq()?.unwrap_or(warm);
    if (end_seq - warm) as u64 != written.changes {
        return Err(format!(
            "wrote {} changes but the change sequence moved {warm} → {end_seq}",
            written.changes
        ));
    }
    let done = wait_applied(&mut ferry, &mut probe, end_seq, opts.changes)?;
    let live_secs = written.elapsed.as_secs_f64() + done.duration_since(writer_done).as_secs_f64();
    let live = Live {
        apply: Apply {
            written,
            secs: live_secs,
            rss_kib: ferry.peak_rss_kib()?,
            cpu_secs: ferry.cpu_secs()?,
        },
        lag_secs: done.duration_since(writer_done).as_secs_f64(),
        behind_at_end: end_seq - applied_then,
    };
    drop(probe);
    ferry.stop()?;
    eprintln!(
        "   writer {:.2} s ({} changes/s); ferry caught up {:.2} s later ({} changes/s overall), peak RSS {}",
        written.elapsed.as_secs_f64(),
        thousands(written.rate().round() as u64),
        live.lag_secs,
        thousands((written.changes as f64 / live_secs).round() as u64),
        crate::report::mib(live.apply.rss_kib)
    );
    data::guard("the live CDC", &source, &target)?;
    drop(writer);

    // RSS independence: the same snapshot on a table a quarter the size.
    let small_rows = opts.rows / 4;
    let small_source = dir.file("source-small.db");
    eprintln!("== RSS check: snapshot of {} rows", thousands(small_rows));
    data::create_source(&small_source, small_rows, 2)?;
    let small_target = dir.file("ferry-small.db");
    let small_pipeline = dir.file("bench-small.toml");
    write_pipeline(&small_pipeline, "bench-small", &small_source, &small_target)?;
    let small = ferry_snapshot(
        bin,
        &small_pipeline,
        "bench-small",
        &small_source,
        &small_target,
        &dir.file("bench-small.log"),
        small_rows,
    )?;
    eprintln!(
        "   ferry snapshot: {:.2} s, peak RSS {}",
        small.secs,
        crate::report::mib(small.rss_kib)
    );

    let results = Results {
        command: opts.command.clone(),
        rows: opts.rows,
        runs: opts.runs,
        source_mib,
        attach_secs,
        dump_secs,
        ferry_secs,
        ferry_rss_kib: ferry_rss,
        ferry_cpu_secs: ferry_cpu,
        small_rows,
        small_secs: small.secs,
        small_rss_kib: small.rss_kib,
        small_cpu_secs: small.cpu_secs,
        backlog,
        live,
        machine: Machine::read().line(),
        sqlite: format!(
            "`sqlite3` CLI {sqlite_cli}, library {} (linked by ferry and xtask)",
            rusqlite::version()
        ),
        commit,
    };
    Ok(results)
}
