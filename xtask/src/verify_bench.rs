//! `cargo xtask bench verify`: `ferry verify` between two PostgreSQL
//! databases that hold the same table, row by row (`--method rows`) and by
//! range digests computed in each database (the default there), beside
//! `pgcopydb compare data` and one in-database pass over the table; then
//! the digests again with a few rows changed on the target, which they must
//! find, key by key, in about the time an equal table takes.
//!
//! Both tables come from the same deterministic `INSERT … SELECT`, so they
//! are equal without a copy. Then the same across engines: a SQLite file,
//! and a MariaDB table (when MariaDB is installed), each copied into the
//! target cluster by `ferry run`, verified row by row and by the canonical
//! digests (SQLite in-process, MariaDB and PostgreSQL in SQL), equal and
//! with rows changed. Progress goes to stderr, the report to stdout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::machine::{self, Machine};
use crate::pg_bench::{
    Guarded, create_source, path_with_server_bin, pgcopydb_version, sync_os, timeout_for, work_dir,
};
use crate::pg_report::{rate, verdict};
use crate::pg_server::{self, Cluster};
use crate::process;
use crate::report::{mib, thousands};
use crate::{Ctx, Res};

/// Options of `bench verify`, validated.
#[derive(Debug, Clone)]
pub struct VerifyOpts {
    pub rows: u64,
    pub keep: bool,
    /// The command as typed, for the report.
    pub command: String,
}

/// Rows changed on the target before the last run, which must find them.
pub const CHANGED: u64 = 10;
/// The digests may take at most this much longer on a table with
/// [`CHANGED`] differences than on an equal one.
const DIFFERENT_VS_EQUAL: f64 = 1.2;
const PIPELINE: &str = "verify_bench";

/// A command run to its end.
struct Timed {
    /// Wall clock, spawn to exit.
    secs: f64,
    /// The process's own peak RSS (`VmHWM`), not its children's.
    rss_kib: u64,
    code: Option<i32>,
    stdout: String,
    log: PathBuf,
}

/// Runs `cmd` with stdout to `<name>.out` and stderr to `<name>.log` in
/// `work`. The exit is checked every 2 ms, so that it shows in the time
/// within 2 ms; the peak RSS every [`process::POLL`].
fn timed(mut cmd: Command, name: &str, work: &Path, timeout: Duration) -> Res<Timed> {
    let out_path = work.join(format!("{name}.out"));
    let log = work.join(format!("{name}.log"));
    let out =
        std::fs::File::create(&out_path).ctx(|| format!("creating {}", out_path.display()))?;
    let err = std::fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    let mut child = Guarded::new(
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .ctx(|| format!("starting {name}"))?,
    );
    let pid = child.child().id();
    let (mut rss_kib, mut sampled) = (0, None::<Instant>);
    let status = loop {
        if sampled.is_none_or(|s| s.elapsed() >= process::POLL) {
            // An error only once it has exited: the samples before count.
            if let Ok(k) = process::peak_rss_kib_of(pid) {
                rss_kib = rss_kib.max(k);
            }
            sampled = Some(Instant::now());
        }
        if let Some(st) = child
            .child()
            .try_wait()
            .ctx(|| format!("waiting for {name}"))?
        {
            break st;
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{name} did not finish within {timeout:?}; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = started.elapsed().as_secs_f64();
    let stdout =
        std::fs::read_to_string(&out_path).ctx(|| format!("reading {}", out_path.display()))?;
    Ok(Timed {
        secs,
        rss_kib,
        code: status.code(),
        stdout,
        log,
    })
}

impl Timed {
    fn expect_code(&self, code: i32, what: &str) -> Res<&Self> {
        if self.code == Some(code) {
            return Ok(self);
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(format!(
            "{what} exited with {:?}, expected {code}\nstdout: {}\n--- last lines of {} ---\n{}",
            self.code,
            self.stdout.trim(),
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// The raw value of the first `"name":` in `ferry verify --format json`'s
/// one-line output, quotes removed: enough for the numbers and plain
/// strings read here without a JSON parser in xtask.
fn json_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let pattern = format!("\"{name}\":");
    let rest = &json[json.find(&pattern)? + pattern.len()..];
    let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// Every `key.id` listed in `differences`, sorted.
fn difference_ids(json: &str) -> Vec<u64> {
    let pattern = "\"key\":{\"id\":";
    let mut ids: Vec<u64> = json
        .match_indices(pattern)
        .filter_map(|(at, _)| {
            let rest = &json[at + pattern.len()..];
            rest[..rest.find('}')?].parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// `CHANGED` ids spread over `1..=rows` (distinct for rows ≥ 10), none at
/// the very ends.
fn changed_ids(rows: u64) -> Vec<u64> {
    (0..CHANGED).map(|i| (2 * i + 1) * rows / 20 + 1).collect()
}

/// A digest run: the run and what the JSON says about its ranges.
struct Digests {
    run: Timed,
    ranges: String,
    read: String,
}

fn digests(run: Timed, code: i32, what: &str) -> Res<Digests> {
    run.expect_code(code, what)?;
    let method = json_field(&run.stdout, "method");
    if method != Some("digests") {
        return Err(format!(
            "{what} compared t by {method:?}, not by digests: `--method auto` should digest \
             ranges in each database; output: {}",
            run.stdout.trim()
        ));
    }
    let field = |name| json_field(&run.stdout, name).unwrap_or("?").to_owned();
    let (ranges, read) = (field("digest_ranges"), field("ranges_read"));
    Ok(Digests { run, ranges, read })
}

struct Results {
    row_bytes: f64,
    table_mib: f64,
    by_rows: Timed,
    /// `Err(why not)` when pgcopydb cannot run `compare data`.
    pgcopydb: Result<Timed, String>,
    equal: Digests,
    different: Digests,
    /// The target reached through a cross-region link: by rows, by digests.
    far: (Timed, Digests),
    /// Seconds of one `count(*), sum(hashtextextended(t::text, 0))` pass.
    floor: f64,
    cross: CrossEngine,
    /// MariaDB → PostgreSQL; `Err(why not)` without a MariaDB server.
    maria: Result<CrossEngine, String>,
}

/// SQLite → PostgreSQL or MariaDB → PostgreSQL: the same compare across
/// engines.
struct CrossEngine {
    /// `SQLite → PostgreSQL`.
    label: &'static str,
    /// The letters of its three runs in the report.
    letters: [char; 3],
    /// Where its table came from and how it digests, for the report.
    origin: &'static str,
    digest: &'static str,
    /// `ferry run` until the copy was complete.
    copy_secs: f64,
    by_rows: Timed,
    equal: Digests,
    different: Digests,
}

/// Where a cross-engine compare's table comes from.
struct Across<'a> {
    label: &'static str,
    letters: [char; 3],
    origin: &'static str,
    digest: &'static str,
    /// The source's URL, holding `t`.
    url: &'a str,
    /// The database of the target cluster it is copied into.
    database: &'static str,
}

/// t in a SQLite file: the SQLite → PostgreSQL compare.
fn measure_sqlite(
    rows: u64,
    ferry: &Path,
    work: &Path,
    dst: &Cluster,
    timeout: Duration,
) -> Res<CrossEngine> {
    eprintln!("== across engines: t in a SQLite file, copied by ferry run into dst.lite");
    let file = work.join("lite-source.db");
    crate::data::create_source(&file, rows, 42)?;
    let url = format!("sqlite:{}", file.display());
    let across = Across {
        label: "SQLite → PostgreSQL",
        letters: ['e', 'f', 'g'],
        origin: "generated into a SQLite file (the `bench sqlite` table)",
        digest: "canonical digests: SQLite in-process, PostgreSQL in SQL",
        url: &url,
        database: "lite",
    };
    measure_cross_engine(rows, ferry, work, dst, timeout, &across)
}

/// t (the `bench mariadb` table) in a MariaDB server: the MariaDB →
/// PostgreSQL compare, MariaDB digesting in SQL (MD5 of each row's
/// canonical encoding) and PostgreSQL the same.
fn measure_mariadb(
    rows: u64,
    ferry: &Path,
    work: &Path,
    dst: &Cluster,
    timeout: Duration,
) -> Res<CrossEngine> {
    crate::maria_bench::mariadb_bin("mariadbd")?;
    eprintln!("== across engines: t in MariaDB, copied by ferry run into dst.maria");
    let src = ferry_testkit::MariaDbServer::start();
    src.create_database("src");
    src.try_sql_in("src", crate::maria_bench::TABLE_DDL)?;
    src.try_sql_in("src", &crate::maria_bench::fill_sql(rows))?;
    src.try_sql_in("src", "ANALYZE TABLE t")?;
    let url = src.url_for("src");
    let across = Across {
        label: "MariaDB → PostgreSQL",
        letters: ['h', 'i', 'j'],
        origin: "generated into MariaDB (the `bench mariadb` table)",
        digest: "canonical digests hashed with MD5: MariaDB and PostgreSQL in SQL",
        url: &url,
        database: "maria",
    };
    measure_cross_engine(rows, ferry, work, dst, timeout, &across)
}

/// Copies `across`'s table of `rows` rows into its database of `dst` with
/// `ferry run`, then verifies it row by row and by digests, equal and with
/// [`CHANGED`] rows changed on the target.
fn measure_cross_engine(
    rows: u64,
    ferry: &Path,
    work: &Path,
    dst: &Cluster,
    timeout: Duration,
    across: &Across<'_>,
) -> Res<CrossEngine> {
    let (label, [e, f, g]) = (across.label, across.letters);
    dst.create_database(across.database)?;
    let name = format!("verify_bench_{}", across.database);
    let pipeline = work.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n",
        across.url,
        dst.url(across.database)
    );
    std::fs::write(&pipeline, text).ctx(|| format!("writing {}", pipeline.display()))?;
    let mut probe = dst.connect(across.database)?;
    let copied = format!(
        "SELECT (SELECT count(*) FROM t) = {rows} AND EXISTS (SELECT 1 FROM pg_constraint \
           WHERE conrelid = to_regclass('public.t') AND contype = 'p')"
    );
    let log = work.join(format!("{}-run.log", across.database));
    let mut run = process::Ferry::start(ferry, &pipeline, &log)?;
    let done = run.wait_for("the copy of t into PostgreSQL", timeout, || {
        match probe.try_query(&copied)? {
            Ok(r) => Ok(r.first().and_then(|r| r[0].as_deref()) == Some("t")),
            // t is not created yet.
            Err(e) if e.code == "42P01" => Ok(false),
            Err(e) => Err(format!("polling the copy: {}", e.message)),
        }
    })?;
    let copy_secs = done.duration_since(run.started).as_secs_f64();
    run.stop()?;
    probe.exec("VACUUM ANALYZE t")?;
    dst.checkpoint()?;
    sync_os()?;
    let check = |name: &str, method: &[&str]| verify(ferry, &pipeline, method, name, work, timeout);
    let by_rows = check(&format!("{e}-rows"), &["--method", "rows"])?;
    by_rows.expect_code(0, &format!("ferry verify --method rows, {label}, equal"))?;
    eprintln!("   rows: {:.2} s", by_rows.secs);
    let equal = digests(
        check(&format!("{f}-digests"), &[])?,
        0,
        &format!("ferry verify, {label}, equal"),
    )?;
    eprintln!("   digests, equal: {:.2} s", equal.run.secs);
    let ids = changed_ids(rows);
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    probe.exec(&format!(
        "UPDATE t SET b = b || 'x' WHERE id IN ({})",
        list.join(", ")
    ))?;
    let what = format!("ferry verify, {label}, {CHANGED} rows changed");
    let different = digests(check(&format!("{g}-digests"), &[])?, 1, &what)?;
    let found = difference_ids(&different.run.stdout);
    if found != ids {
        return Err(format!("{what} listed ids {found:?}, expected {ids:?}"));
    }
    eprintln!("   digests, different: {:.2} s", different.run.secs);
    Ok(CrossEngine {
        label,
        letters: across.letters,
        origin: across.origin,
        digest: across.digest,
        copy_secs,
        by_rows,
        equal,
        different,
    })
}

/// `ferry verify <pipeline> <method> --format json --settle 0`, timed.
fn verify(
    ferry: &Path,
    pipeline: &Path,
    method: &[&str],
    name: &str,
    work: &Path,
    timeout: Duration,
) -> Res<Timed> {
    let mut cmd = Command::new(ferry);
    cmd.arg("verify")
        .arg(pipeline)
        .args(method)
        .args(["--format", "json", "--settle", "0"])
        .env("FERRY_LOG", "warn")
        .env("NO_COLOR", "1");
    timed(cmd, name, work, timeout)
}

/// Whether this pgcopydb has `compare data` (0.13 and later), or why not.
fn pgcopydb_compare() -> Result<(), String> {
    let Ok(o) = Command::new("pgcopydb")
        .args(["compare", "data", "--help"])
        .output()
    else {
        return Err("not installed".into());
    };
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if help.contains("compare data") && help.contains("--target") {
        Ok(())
    } else {
        Err(format!(
            "not available: pgcopydb {} has no `compare data` (0.13 and later)",
            pgcopydb_version()
        ))
    }
}

fn measure(
    opts: &VerifyOpts,
    pg_bin: &Path,
    ferry: &Path,
    work: &Path,
    (src, dst): (&Cluster, &Cluster),
) -> Res<Results> {
    let rows = opts.rows;
    eprintln!(
        "== creating t with {} rows in src (source) and in dst (target)",
        thousands(rows)
    );
    let t = Instant::now();
    let (row_bytes, table_mib) = create_source(src, "src", rows)?;
    create_source(dst, "dst", rows)?;
    eprintln!(
        "   {:.1} s; {row_bytes:.0} bytes/row, heap {table_mib:.0} MiB per side",
        t.elapsed().as_secs_f64()
    );
    for (c, db) in [(src, "src"), (dst, "dst")] {
        c.connect(db)?.exec("VACUUM ANALYZE t")?;
        c.checkpoint()?;
    }
    sync_os()?;
    let pipeline = work.join(format!("{PIPELINE}.toml"));
    let text = format!(
        "name = \"{PIPELINE}\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n",
        src.url("src"),
        dst.url("dst")
    );
    std::fs::write(&pipeline, text).ctx(|| format!("writing {}", pipeline.display()))?;
    let timeout = timeout_for(rows, Duration::from_micros(100));
    let check = |name: &str, method: &[&str]| verify(ferry, &pipeline, method, name, work, timeout);
    let show = |what: &str, r: &Timed| {
        eprintln!(
            "   {what}: {:.2} s ({} row pairs/s), peak RSS {}",
            r.secs,
            rate(rows, r.secs),
            mib(r.rss_kib)
        );
    };

    eprintln!("== (a) ferry verify --method rows");
    let by_rows = check("a-rows", &["--method", "rows"])?;
    by_rows.expect_code(0, "ferry verify --method rows on equal tables")?;
    show("rows", &by_rows);

    eprintln!("== (b) pgcopydb compare data");
    let pgcopydb = match pgcopydb_compare() {
        Ok(()) => {
            let mut cmd = Command::new("pgcopydb");
            cmd.args(["compare", "data", "--source", &src.url("src")])
                .args(["--target", &dst.url("dst"), "--dir"])
                .arg(work.join("pgcopydb"))
                .env("PATH", path_with_server_bin(pg_bin));
            let run = timed(cmd, "b-pgcopydb", work, timeout)?;
            run.expect_code(0, "pgcopydb compare data on equal tables")?;
            eprintln!("   pgcopydb: {:.2} s", run.secs);
            Ok(run)
        }
        Err(why) => {
            eprintln!("   pgcopydb: {why}; skipped");
            Err(why)
        }
    };

    eprintln!("== (c) ferry verify (--method auto: digests)");
    let equal = digests(check("c-digests", &[])?, 0, "ferry verify on equal tables")?;
    show("digests, equal", &equal.run);

    let ids = changed_ids(rows);
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    eprintln!(
        "== (d) ferry verify after changing b of ids {}",
        list.join(", ")
    );
    dst.connect("dst")?.exec(&format!(
        "UPDATE t SET b = b || 'x' WHERE id IN ({})",
        list.join(", ")
    ))?;
    let what = format!("ferry verify with {CHANGED} rows changed");
    let different = digests(check("d-digests", &[])?, 1, &what)?;
    let found = difference_ids(&different.run.stdout);
    if found != ids {
        return Err(format!(
            "{what} listed ids {found:?}, expected {ids:?}; see {}",
            work.join("d-digests.out").display()
        ));
    }
    show("digests, different", &different.run);

    let link = ferry_testkit::Link::cross_region();
    eprintln!(
        "== (c) the target across a link of {} Mbit/s and {} ms each way (the test kit's proxy), \
         {CHANGED} rows changed",
        link.bits_per_sec.unwrap_or(0) / 1_000_000,
        link.latency.as_millis()
    );
    let proxy =
        ferry_testkit::LinkProxy::start(dst.port, link).ctx(|| "starting the link proxy".into())?;
    let far_pipeline = work.join(format!("{PIPELINE}_far.toml"));
    let text = format!(
        "name = \"{PIPELINE}\"\n[source]\nurl = \"{}\"\n[target]\nurl = \
         \"postgres://postgres@127.0.0.1:{}/dst\"\n",
        src.url("src"),
        proxy.port()
    );
    std::fs::write(&far_pipeline, text).ctx(|| format!("writing {}", far_pipeline.display()))?;
    let far =
        |name: &str, method: &[&str]| verify(ferry, &far_pipeline, method, name, work, timeout * 4);
    let far_rows = far("c-far-rows", &["--method", "rows"])?;
    far_rows.expect_code(1, "ferry verify --method rows across the link")?;
    show("rows across the link", &far_rows);
    let far_digests = digests(
        far("c-far-digests", &[])?,
        1,
        "ferry verify across the link",
    )?;
    show("digests across the link", &far_digests.run);
    for (what, out) in [
        ("rows", &far_rows.stdout),
        ("digests", &far_digests.run.stdout),
    ] {
        let found = difference_ids(out);
        if found != ids {
            return Err(format!(
                "{what} across the link listed ids {found:?}, expected {ids:?}"
            ));
        }
    }
    drop(proxy);

    eprintln!("== one in-database pass over t on the source alone");
    let mut c = src.connect("src")?;
    let t = Instant::now();
    c.exec("SELECT count(*), sum(hashtextextended(t::text, 0)) FROM t")?;
    let floor = t.elapsed().as_secs_f64();
    eprintln!("   {floor:.2} s ({} rows/s)", rate(rows, floor));
    let cross = measure_sqlite(rows, ferry, work, dst, timeout)?;
    let maria = match measure_mariadb(rows, ferry, work, dst, timeout) {
        Err(why) if why.contains("is not installed") => {
            eprintln!("   {why}; skipped");
            Err(why)
        }
        other => Ok(other?),
    };
    Ok(Results {
        row_bytes,
        table_mib,
        by_rows,
        pgcopydb,
        equal,
        different,
        far: (far_rows, far_digests),
        floor,
        cross,
        maria,
    })
}

impl Results {
    fn markdown(&self, opts: &VerifyOpts, pg_bin: &Path, commit: &str) -> String {
        let rows = opts.rows;
        let b = self.pgcopydb.as_ref().ok();
        let ratio = |secs: f64, to: Option<&Timed>| {
            to.map_or("—".into(), |t| format!("{:.2}", secs / t.secs))
        };
        // The cells after the method's name.
        let cells = |t: &Timed, rss: bool| {
            format!(
                "{:.2} | {} | {} | {} | {}",
                t.secs,
                rate(rows, t.secs),
                ratio(t.secs, Some(&self.by_rows)),
                ratio(t.secs, b),
                if rss { mib(t.rss_kib) } else { "—".into() }
            )
        };
        let pgcopydb = match &self.pgcopydb {
            Ok(t) => cells(t, false),
            Err(why) => format!("{why} | — | — | — | —"),
        };
        let mut o = String::new();
        o.push_str("| method | seconds | row pairs/s | ratio to (a) | ratio to (b) | peak RSS |\n");
        o.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
        let _ = writeln!(
            o,
            "| (a) `ferry verify --method rows` (streams both sides in key order) | {} |\n\
             | (b) `pgcopydb compare data` (count and one hash per table and side: equal or not, \
             never where) | {pgcopydb} |\n\
             | (c) **`ferry verify`** (`--method auto`: range digests in each database), tables \
             equal | {} |\n\
             | (d) **`ferry verify`**, {CHANGED} rows changed on the target: all {CHANGED} keys \
             listed | {} |",
            cells(&self.by_rows, true),
            cells(&self.equal.run, true),
            cells(&self.different.run, true),
        );
        let (c, d) = (&self.equal, &self.different);
        let d_vs_c = d.run.secs / c.run.secs;
        let _ = writeln!(
            o,
            "\nSeconds are wall clock, start to exit; ratio = this row's seconds ÷ that row's \
             (below 1 is faster); row pairs/s = rows ÷ seconds; peak RSS is ferry's `VmHWM`. \
             {} rows per side, ≈ {:.0} bytes each (`pg_column_size`), heap {:.0} MiB per side.",
            thousands(rows),
            self.row_bytes,
            self.table_mib
        );
        let _ = writeln!(
            o,
            "Digests: (c) {} key ranges, {} read row by row; (d) {} key ranges, {} read row by row.",
            c.ranges, c.read, d.ranges, d.read
        );
        let _ = writeln!(
            o,
            "In-database floor for one side: `SELECT count(*), sum(hashtextextended(t::text, 0)) FROM t` \
             on the source alone took {:.2} s ({} rows/s). Any method that looks at every row pays \
             at least that on each side; the two clusters share this machine's cores.",
            self.floor,
            rate(rows, self.floor)
        );
        o.push_str(&self.cross.markdown(rows));
        match &self.maria {
            Ok(m) => o.push_str(&m.markdown(rows)),
            Err(why) => {
                let _ = writeln!(o, "\nMariaDB → PostgreSQL: not measured ({why}).");
            }
        }
        let _ = writeln!(o, "\nTargets:\n");
        let _ = writeln!(
            o,
            "- (d) within {DIFFERENT_VS_EQUAL}× of (c): {d_vs_c:.2}× → {}",
            verdict(d_vs_c <= DIFFERENT_VS_EQUAL)
        );
        for x in std::iter::once(&self.cross).chain(self.maria.as_ref().ok()) {
            let [e, f, _] = x.letters;
            let f_vs_e = x.equal.run.secs / x.by_rows.secs;
            let _ = writeln!(
                o,
                "- across engines, {}, ({f}) at least as fast as ({e}): {:.2}× faster → {}",
                x.label,
                1.0 / f_vs_e,
                verdict(f_vs_e <= 1.0)
            );
        }
        let (far_rows, far_digests) = &self.far;
        let far_ratio = far_rows.secs / far_digests.run.secs;
        let _ = writeln!(
            o,
            "- the target across a link of 100 Mbit/s and 20 ms each way ({CHANGED} rows \
             changed, all listed by both): rows {:.2} s, digests {:.2} s ({} ranges, {} read \
             row by row); digests at least 10× faster: {far_ratio:.1}× → {}",
            far_rows.secs,
            far_digests.run.secs,
            far_digests.ranges,
            far_digests.read,
            verdict(far_ratio >= 10.0)
        );
        let _ = writeln!(o, "\n- machine: {}", Machine::read().line());
        let _ = writeln!(
            o,
            "- {}, two clusters on this machine (source, target), each with: {}",
            pg_server::server_version(pg_bin),
            pg_server::SETTINGS.join(", ")
        );
        let pgcopydb = match &self.pgcopydb {
            Err(why) if why == "not installed" => "not installed".to_owned(),
            _ => pgcopydb_version(),
        };
        let _ = writeln!(o, "- pgcopydb {pgcopydb}");
        let _ = writeln!(o, "- ferry commit: {commit}");
        let _ = writeln!(o, "- command: `{}`", opts.command);
        o
    }
}

impl CrossEngine {
    /// Its table in the report.
    fn markdown(&self, rows: u64) -> String {
        let [e, f, g] = self.letters;
        let cells = |t: &Timed| {
            format!(
                "{:.2} | {} | {:.2} | {}",
                t.secs,
                rate(rows, t.secs),
                t.secs / self.by_rows.secs,
                mib(t.rss_kib)
            )
        };
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nAcross engines, {} (the same {} rows {}, copied by `ferry run` in {:.1} s):\n",
            self.label,
            thousands(rows),
            self.origin,
            self.copy_secs
        );
        let _ = writeln!(
            o,
            "| method | seconds | row pairs/s | ratio to ({e}) | peak RSS |\n\
             | --- | ---: | ---: | ---: | ---: |\n\
             | ({e}) `ferry verify --method rows` | {} |\n\
             | ({f}) **`ferry verify`** ({}), tables equal ({} ranges, {} read row by row) | {} |\n\
             | ({g}) **`ferry verify`**, {CHANGED} rows changed on the target ({} ranges, {} read \
             row by row; all {CHANGED} keys listed) | {} |",
            cells(&self.by_rows),
            self.digest,
            self.equal.ranges,
            self.equal.read,
            cells(&self.equal.run),
            self.different.ranges,
            self.different.read,
            cells(&self.different.run),
        );
        o
    }
}

pub fn run(opts: &VerifyOpts) -> Res<()> {
    let pg_bin = pg_server::bin_dir()?;
    let commit = machine::git_commit(&process::workspace_root());
    let ferry = process::build_ferry()?;
    let work = work_dir()?;
    eprintln!("== work directory {}", work.display());
    let result = (|| {
        eprintln!("== starting the source and target clusters");
        let src = Cluster::start("source", &work.join("pg-source"), &pg_bin)?;
        let dst = Cluster::start("target", &work.join("pg-target"), &pg_bin)?;
        eprintln!(
            "   source 127.0.0.1:{}, target 127.0.0.1:{}",
            src.port, dst.port
        );
        let results = measure(opts, &pg_bin, &ferry, &work, (&src, &dst));
        // Stopped before the report (the drop guard would too).
        let stopped = src.stop().and(dst.stop());
        let results = results?;
        stopped?;
        Ok::<Results, String>(results)
    })();
    match result {
        Ok(results) => {
            println!("{}", results.markdown(opts, &pg_bin, &commit));
            if opts.keep {
                eprintln!("== files kept in {}", work.display());
            } else {
                let _ = std::fs::remove_dir_all(&work);
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "{e}\n(work directory kept: {}; the clusters are stopped)",
            work.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_verify_json() {
        let json = r#"{"equal":false,"tables":[{"all_differences_listed":true,"differences":[{"fields":[{"column":"b","source":"ab","target":"abx"}],"key":{"id":51},"kind":"different"},{"key":{"id":7},"kind":"different"}],"digest_ranges":50,"method":"digests","ranges_read":2,"table":"public.t"}]}"#;
        assert_eq!(json_field(json, "method"), Some("digests"));
        assert_eq!(json_field(json, "digest_ranges"), Some("50"));
        assert_eq!(json_field(json, "ranges_read"), Some("2"));
        assert_eq!(json_field(json, "settled_at"), None);
        assert_eq!(difference_ids(json), vec![7, 51]);
    }

    #[test]
    fn changed_ids_are_spread_and_distinct() {
        for rows in [10, 11, 99, 1_000_000] {
            let ids = changed_ids(rows);
            assert_eq!(ids.len() as u64, CHANGED);
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{rows}: {ids:?}");
            assert!(ids[0] >= 1 && ids[9] <= rows, "{rows}: {ids:?}");
        }
        assert_eq!(changed_ids(1_000_000)[0], 50_001);
    }
}
