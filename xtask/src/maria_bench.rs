//! `cargo xtask bench mariadb`: ferry MariaDB → MariaDB and MariaDB →
//! PostgreSQL beside the tools people use for the same job, on the same
//! data in one run, every copy checked.
//!
//! Servers (started here with the test kit, on 127.0.0.1): the source, a
//! target MariaDB, two native replicas of the source and a PostgreSQL.
//! Every MariaDB runs with the kit's fast settings (no fsync per commit,
//! no doublewrite) and the targets and replicas without a binlog of their
//! own, so each method does the same work on the same durability.
//!
//! Phases: the source table; the snapshot by `mysqldump | mariadb`,
//! mydumper/myloader (2 threads, row chunks), ferry into MariaDB and ferry
//! into PostgreSQL, each into a fresh database; then a CDC backlog of
//! single-row UPDATE transactions written while ferry is stopped and the
//! replicas are stopped, applied by ferry, by a native replica with one
//! applier and by one with 4 optimistic parallel appliers. Progress goes
//! to stderr, the report to stdout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{MariaDbServer, PostgresServer};

use crate::machine::{self, Machine};
use crate::process::{self, Ferry};
use crate::report::{mib, thousands};
use crate::{Ctx, Res};

/// Options of `bench mariadb`, validated.
#[derive(Debug, Clone)]
pub struct MariaOpts {
    pub rows: u64,
    pub changes: u64,
    pub keep: bool,
    /// The command as typed, for the report.
    pub command: String,
}

const PIPELINE: &str = "bench";
pub(crate) const TABLE_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, a int, b varchar(64), \
                         c datetime(6) NULL, d decimal(12,2)) ENGINE=InnoDB";

/// The source rows: `b` 40–60 characters, one `c` in 20 NULL, `d` 0 to
/// 99,999.99: about 100 bytes a row.
pub(crate) fn fill_sql(rows: u64) -> String {
    format!(
        "INSERT INTO t SELECT seq, (seq * 2654435761) % 1000000000, \
           left(concat(md5(seq), md5(seq + 1)), 40 + seq % 21), \
           IF(seq % 20 = 0, NULL, TIMESTAMP '2020-01-01 00:00:00' + INTERVAL (seq * 7919) % 180000000 SECOND), \
           ((seq * 7) % 10000000) / 100 \
         FROM seq_1_to_{rows}"
    )
}

/// One snapshot method's result.
struct Copy {
    method: String,
    secs: f64,
    rss_kib: Option<u64>,
}

/// One CDC method's result.
struct Apply {
    method: String,
    secs: f64,
}

struct Results {
    machine: Machine,
    server: String,
    rows: u64,
    changes: u64,
    write_secs: f64,
    copies: Vec<Copy>,
    applies: Vec<Apply>,
}

pub(crate) fn mariadb_bin(name: &str) -> Res<()> {
    Command::new(name)
        .arg("--version")
        .output()
        .map(|_| ())
        .map_err(|_| {
            format!(
                "{name} is not installed: apt-get install -y mariadb-server mariadb-client mydumper"
            )
        })
}

/// Runs a shell pipeline; fails with its stderr.
fn sh(script: &str) -> Res<()> {
    let out = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running {script}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn client(db: &MariaDbServer) -> String {
    format!(
        "mariadb --no-defaults -h 127.0.0.1 -P {} -u root",
        db.port()
    )
}

/// `(count, sum of id, sum of a)` of `t`, as text, for checking a copy.
fn fingerprint(db: &MariaDbServer, database: &str) -> Res<String> {
    db.try_sql_in(database, "SELECT count(*), sum(id), sum(a) FROM t")
        .map(|s| s.replace('\t', " "))
}

fn pg_fingerprint(pg: &PostgresServer) -> Res<String> {
    pg.try_psql_in("dst", "SELECT count(*), sum(id), sum(a) FROM t")
        .map(|s| s.replace('|', " "))
}

/// Polls `cond` until it holds or `timeout` passes.
fn poll(what: &str, timeout: Duration, mut cond: impl FnMut() -> Res<bool>) -> Res<Instant> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(Instant::now());
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(process::POLL);
    }
}

fn timeout_for(rows: u64) -> Duration {
    Duration::from_secs(120 + rows / 20_000)
}

fn write_pipeline(work: &Path, name: &str, source: &str, target: &str) -> Res<PathBuf> {
    let p = work.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{PIPELINE}\"\n[source]\nurl = \"{source}\"\n[target]\nurl = \"{target}\"\n"
        ),
    )
    .ctx(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Runs ferry until its copy is done; returns it still running.
fn ferry_copy(bin: &Path, pipeline: &Path, log: &Path, rows: u64) -> Res<(Ferry, f64)> {
    let mut ferry = Ferry::start(bin, pipeline, log)?;
    let done = ferry.wait_for("the copy", timeout_for(rows), || {
        Ok(std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("snapshot done"))
    })?;
    let secs = (done - ferry.started).as_secs_f64();
    Ok((ferry, secs))
}

/// `(file number, offset)` of `SHOW MASTER STATUS`.
fn binlog_end(db: &MariaDbServer) -> Res<(u64, u64)> {
    let status = db.try_sql("SHOW MASTER STATUS")?;
    let mut fields = status.split('\t');
    let file = fields.next().unwrap_or_default();
    let offset = fields.next().unwrap_or_default();
    Ok((
        file_number(file)?,
        offset.parse().ctx(|| format!("offset {offset:?}"))?,
    ))
}

fn file_number(file: &str) -> Res<u64> {
    file.rsplit_once('.')
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| format!("binlog file name {file:?}"))
}

/// Where ferry's target checkpoint says it applied up to.
fn ferry_applied(dst: &MariaDbServer, database: &str) -> Res<Option<(u64, u64)>> {
    let value = dst.try_sql_in(
        database,
        &format!(
            "SELECT value FROM _ferry_checkpoint WHERE pipeline = '{PIPELINE}' AND scope = 'applied'"
        ),
    )?;
    // ferry.pos.v1 mysql <file> <offset>
    let fields: Vec<&str> = value.split_whitespace().collect();
    match fields.as_slice() {
        [_, "mysql", file, offset] => Ok(Some((
            file_number(file)?,
            offset.parse().ctx(|| format!("offset {offset:?}"))?,
        ))),
        _ => Ok(None),
    }
}

/// `SHOW SLAVE STATUS` with its field names (`Name: value` lines).
fn replica_status(replica: &MariaDbServer) -> Res<String> {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "-E",
            "-e",
            "SHOW SLAVE STATUS",
        ])
        .arg(format!("--port={}", replica.port()))
        .output()
        .ctx(|| "running mariadb".into())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a replica's SQL thread has executed up to, in the source's binlog.
fn replica_executed(replica: &MariaDbServer) -> Res<Option<(u64, u64)>> {
    let status = replica_status(replica)?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            (k == name).then(|| v.trim().to_owned())
        })
    };
    for error in ["Last_SQL_Error", "Last_IO_Error"] {
        if let Some(error) = field(error).filter(|e| !e.is_empty()) {
            return Err(format!("the replica stopped: {error}"));
        }
    }
    match (field("Relay_Master_Log_File"), field("Exec_Master_Log_Pos")) {
        (Some(file), Some(pos)) if !file.is_empty() => Ok(Some((
            file_number(&file)?,
            pos.parse().ctx(|| format!("position {pos:?}"))?,
        ))),
        _ => Ok(None),
    }
}

/// Loads the dump (made with `--master-data=2`) into `replica` and points
/// it at the source's position the dump belongs to, stopped.
fn prepare_replica(replica: &MariaDbServer, source: &MariaDbServer, dump: &Path) -> Res<()> {
    sh(&format!("{} < {}", client(replica), dump.display()))?;
    let text = std::fs::read_to_string(dump).ctx(|| "reading the dump".into())?;
    let change = text
        .lines()
        .find_map(|l| l.strip_prefix("-- CHANGE MASTER TO "))
        .ok_or("the dump has no CHANGE MASTER line (--master-data=2)")?;
    replica.try_sql(&format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
         MASTER_USE_GTID = no, {change}",
        source.port()
    ))?;
    Ok(())
}

/// Starts a stopped replica with `threads` parallel appliers (0: one) and
/// times it to `end`.
fn replica_apply(replica: &MariaDbServer, threads: u32, end: (u64, u64), changes: u64) -> Res<f64> {
    replica.try_sql(&format!(
        "SET GLOBAL slave_parallel_threads = {threads}; \
         SET GLOBAL slave_parallel_mode = 'optimistic'; START SLAVE"
    ))?;
    let start = Instant::now();
    let done = poll(
        "the replica to apply the backlog",
        timeout_for(changes * 10),
        || Ok(replica_executed(replica)?.is_some_and(|at| at >= end)),
    )
    .map_err(|e| {
        let status = replica_status(replica).unwrap_or_default();
        format!("{e}; want {end:?}; replica status:\n{status}")
    })?;
    Ok((done - start).as_secs_f64())
}

fn measure(opts: &MariaOpts, bin: &Path, work: &Path) -> Res<Results> {
    let n = opts.rows;
    eprintln!("== starting the servers");
    let src = MariaDbServer::builder().server_id(1).start();
    let dst = MariaDbServer::builder()
        .server_id(10)
        .log_bin(false)
        .start();
    let serial = MariaDbServer::builder().server_id(2).log_bin(false).start();
    let parallel = MariaDbServer::builder().server_id(3).log_bin(false).start();
    let pg = PostgresServer::start();
    pg.create_database("dst");
    let server = src.try_sql("SELECT @@version")?;

    eprintln!("== source table: {} rows", thousands(n));
    src.create_database("src");
    src.try_sql_in("src", TABLE_DDL)?;
    src.try_sql_in("src", &fill_sql(n))?;
    let want = fingerprint(&src, "src")?;
    let mut copies = Vec::new();

    eprintln!("== mysqldump | mariadb");
    dst.create_database("dump");
    let t = Instant::now();
    sh(&format!(
        "mysqldump --no-defaults -h 127.0.0.1 -P {} -u root --single-transaction --quick src t | {} dump",
        src.port(),
        client(&dst)
    ))?;
    copies.push(Copy {
        method: "`mysqldump | mariadb`".into(),
        secs: t.elapsed().as_secs_f64(),
        rss_kib: None,
    });
    check("mysqldump", &want, &fingerprint(&dst, "dump")?)?;

    eprintln!("== mydumper + myloader, 2 threads");
    dst.create_database("mydumper");
    let dir = work.join("mydumper");
    let t = Instant::now();
    sh(&format!(
        "mydumper -h 127.0.0.1 -P {} -u root -B src -t 2 -r 250000 -o {}",
        src.port(),
        dir.display()
    ))?;
    sh(&format!(
        "myloader -h 127.0.0.1 -P {} -u root -d {} -B mydumper -t 2",
        dst.port(),
        dir.display()
    ))?;
    copies.push(Copy {
        method: "mydumper + myloader, 2 threads".into(),
        secs: t.elapsed().as_secs_f64(),
        rss_kib: None,
    });
    check("mydumper", &want, &fingerprint(&dst, "mydumper")?)?;
    let _ = std::fs::remove_dir_all(&dir);

    eprintln!("== ferry MariaDB → PostgreSQL");
    let p = write_pipeline(work, "to-pg", &src.url_for("src"), &pg.url_for("dst"))?;
    let (ferry, secs) = ferry_copy(bin, &p, &work.join("to-pg.log"), n)?;
    let rss = ferry.peak_rss_kib()?;
    ferry.stop()?;
    copies.push(Copy {
        method: "ferry MariaDB → PostgreSQL".into(),
        secs,
        rss_kib: Some(rss),
    });
    check("ferry → PostgreSQL", &want, &pg_fingerprint(&pg)?)?;

    eprintln!("== ferry MariaDB → MariaDB");
    dst.create_database("ferry");
    let p = write_pipeline(work, "to-maria", &src.url_for("src"), &dst.url_for("ferry"))?;
    let log = work.join("to-maria.log");
    let (ferry, secs) = ferry_copy(bin, &p, &log, n)?;
    let rss = ferry.peak_rss_kib()?;
    ferry.stop()?;
    copies.push(Copy {
        method: "ferry MariaDB → MariaDB".into(),
        secs,
        rss_kib: Some(rss),
    });
    check("ferry → MariaDB", &want, &fingerprint(&dst, "ferry")?)?;

    eprintln!("== native replicas: loading the source at a known binlog position");
    let dump = work.join("replica.sql");
    sh(&format!(
        "mysqldump --no-defaults -h 127.0.0.1 -P {} -u root --single-transaction --quick \
         --master-data=2 --databases src > {}",
        src.port(),
        dump.display()
    ))?;
    prepare_replica(&serial, &src, &dump)?;
    prepare_replica(&parallel, &src, &dump)?;
    let _ = std::fs::remove_file(&dump);

    let c = opts.changes;
    eprintln!(
        "== CDC backlog: {} single-row UPDATE transactions",
        thousands(c)
    );
    src.try_sql_in(
        "src",
        &format!(
            "DELIMITER //\nCREATE PROCEDURE backlog(n INT) BEGIN DECLARE i INT DEFAULT 0; \
               WHILE i < n DO UPDATE t SET a = a + 1 WHERE id = 1 + (i * 7919) % {n}; \
               SET i = i + 1; END WHILE; END//\nDELIMITER ;"
        ),
    )?;
    let t = Instant::now();
    src.try_sql_in("src", &format!("SET autocommit = 1; CALL backlog({c})"))?;
    let write_secs = t.elapsed().as_secs_f64();
    let end = binlog_end(&src)?;
    let want = fingerprint(&src, "src")?;
    let mut applies = Vec::new();

    eprintln!("== ferry applies the backlog");
    let mut ferry = Ferry::start(bin, &p, &log)?;
    let done = ferry.wait_for("ferry to apply the backlog", timeout_for(c * 10), || {
        Ok(ferry_applied(&dst, "ferry")?.is_some_and(|at| at >= end))
    })?;
    applies.push(Apply {
        method: "ferry MariaDB → MariaDB (transaction-consistent, from start-up)".into(),
        secs: (done - ferry.started).as_secs_f64(),
    });
    ferry.stop()?;
    check("ferry CDC", &want, &fingerprint(&dst, "ferry")?)?;

    eprintln!("== native replica, one applier");
    applies.push(Apply {
        method: "MariaDB replica, serial".into(),
        secs: replica_apply(&serial, 0, end, c)?,
    });
    check("serial replica", &want, &fingerprint(&serial, "src")?)?;
    eprintln!("== native replica, 4 optimistic parallel appliers");
    applies.push(Apply {
        method: "MariaDB replica, 4 optimistic parallel threads".into(),
        secs: replica_apply(&parallel, 4, end, c)?,
    });
    check("parallel replica", &want, &fingerprint(&parallel, "src")?)?;

    Ok(Results {
        machine: Machine::read(),
        server,
        rows: n,
        changes: c,
        write_secs,
        copies,
        applies,
    })
}

fn check(what: &str, want: &str, got: &str) -> Res<()> {
    if want == got {
        Ok(())
    } else {
        Err(format!(
            "{what}: the copy differs: source {want:?}, copy {got:?}"
        ))
    }
}

impl Results {
    fn markdown(&self, opts: &MariaOpts, commit: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Command: `{}` (commit {commit})", opts.command);
        let _ = writeln!(out, "Machine: {}; {}", self.machine.line(), self.server);
        let _ = writeln!(
            out,
            "\nSnapshot of {} rows (~100 bytes each) into a fresh database:\n",
            thousands(self.rows)
        );
        let _ = writeln!(
            out,
            "| method | seconds | rows/s | ferry → MariaDB faster by | peak RSS |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        let ferry = self
            .copies
            .iter()
            .find(|c| c.method.contains("→ MariaDB"))
            .map_or(f64::NAN, |c| c.secs);
        for c in &self.copies {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {} | {:.2}× | {} |",
                c.method,
                c.secs,
                thousands((self.rows as f64 / c.secs) as u64),
                c.secs / ferry,
                c.rss_kib.map_or("—".into(), mib)
            );
        }
        let _ = writeln!(
            out,
            "\nCDC backlog of {} single-row UPDATE transactions (written at {} txn/s):\n",
            thousands(self.changes),
            thousands((self.changes as f64 / self.write_secs) as u64)
        );
        let _ = writeln!(out, "| method | seconds | txn/s | ferry faster by |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        let ferry = self.applies.first().map_or(f64::NAN, |a| a.secs);
        for a in &self.applies {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {} | {:.2}× |",
                a.method,
                a.secs,
                thousands((self.changes as f64 / a.secs) as u64),
                a.secs / ferry
            );
        }
        out
    }
}

pub fn run(opts: &MariaOpts) -> Res<()> {
    for bin in ["mariadb", "mysqldump", "mydumper", "myloader"] {
        mariadb_bin(bin)?;
    }
    let commit = machine::git_commit(&process::workspace_root());
    let ferry = process::build_ferry()?;
    let work = std::env::temp_dir().join(format!("ferry-bench-maria-{}", std::process::id()));
    std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
    eprintln!("== work directory {}", work.display());
    match measure(opts, &ferry, &work) {
        Ok(results) => {
            println!("{}", results.markdown(opts, &commit));
            if opts.keep {
                eprintln!("== files kept in {}", work.display());
            } else {
                let _ = std::fs::remove_dir_all(&work);
            }
            Ok(())
        }
        Err(e) => Err(format!("{e}\n(work directory kept: {})", work.display())),
    }
}
