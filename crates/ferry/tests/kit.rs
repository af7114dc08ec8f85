//! Helpers for driving the real `ferry` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rusqlite::Connection;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Dir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a pipeline file replicating `source.db` to `target.db` plus `extra` TOML.
    pub fn pipeline(&self, extra: &str) -> PathBuf {
        let p = self.path("pipeline.toml");
        let text = format!(
            "name = \"test\"\n[source]\nurl = \"sqlite:{}\"\npoll_interval = \"5ms\"\n[target]\nurl = \"sqlite:{}\"\n{extra}",
            self.path("source.db").display(),
            self.path("target.db").display()
        );
        std::fs::write(&p, text).expect("write pipeline");
        p
    }

    /// Writes pipeline `test` from `source` to `target` (URLs), with quick
    /// polls and batches, plus `apply` lines (TOML under `[apply]`).
    pub fn pipeline_between(&self, source: &str, target: &str, apply: &str) -> PathBuf {
        let p = self.path("pipeline.toml");
        let text = format!(
            "name = \"test\"\n[source]\nurl = \"{source}\"\npoll_interval = \"5ms\"\n\
             [target]\nurl = \"{target}\"\n[apply]\nbatch_time = \"20ms\"\n{apply}"
        );
        std::fs::write(&p, text).expect("write pipeline");
        p
    }

    /// `sqlite:` URL of `source.db`.
    pub fn source_url(&self) -> String {
        format!("sqlite:{}", self.path("source.db").display())
    }

    pub fn source(&self) -> Connection {
        open(&self.path("source.db"))
    }
}

pub fn open(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open sqlite");
    c.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    c
}

pub fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(args)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run ferry")
}

pub fn spawn_run(pipeline: &Path, log: &Path) -> Child {
    spawn_run_env(pipeline, log, &[])
}

/// [`spawn_run`] with extra environment variables (armed failpoints).
pub fn spawn_run_env(pipeline: &Path, log: &Path, env: &[(&str, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(FERRY)
        .args(["run", pipeline.to_str().expect("utf8 path")])
        .env("FERRY_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn ferry run")
}

/// Occurrences of `needle` in the log file (0 while it does not exist).
pub fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// The last 40 lines of the log file, for failure messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Starts `ferry run` and waits until it has started streaming changes
/// (a new "stream started" line in the log); fails with the log's tail if
/// it exits first.
pub fn spawn_streaming(pipeline: &Path, log: &Path) -> Child {
    let before = log_count(log, "stream started");
    let mut child = spawn_run(pipeline, log);
    ferry_testkit::eventually_blocking(
        "ferry streams changes",
        std::time::Duration::from_secs(180),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ferry run exited ({status}) before streaming:\n{}",
                    log_tail(log)
                );
            }
            if log_count(log, "stream started") > before {
                Ok(())
            } else {
                Err(log_tail(log))
            }
        },
    );
    child
}

/// Runs `ferry run` with failpoint `point` armed at hit `nth`, and waits
/// until the process aborts there: killed by SIGABRT, with the failpoint's
/// message in the log. Fails if it exits any other way.
pub fn crash_at(pipeline: &Path, log: &Path, point: &str, nth: u64) {
    use ferry_testkit::failpoint::{FAILPOINTS_ENV, FailpointSpec, env_value};
    use std::os::unix::process::ExitStatusExt;
    let spec = env_value(&[FailpointSpec::new(point, nth)]);
    let message = format!("ferry failpoint {point:?}: hit {nth}, aborting");
    let before = log_count(log, &message);
    let mut child = spawn_run_env(pipeline, log, &[(FAILPOINTS_ENV, spec.clone())]);
    let status = ferry_testkit::eventually_blocking(
        &format!("ferry run to abort at {spec}"),
        std::time::Duration::from_secs(180),
        || child.try_wait().expect("wait for ferry run").ok_or(()),
    );
    const SIGABRT: i32 = 6;
    assert!(
        status.signal() == Some(SIGABRT) && log_count(log, &message) > before,
        "ferry run with {spec} ended with {status:?}, not at the failpoint:\n{}",
        log_tail(log)
    );
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// All rows of `table` ordered by its first column, as text, or `None` if
/// the database or table does not exist yet.
pub fn dump(path: &Path, table: &str) -> Option<Vec<String>> {
    if !path.exists() {
        return None;
    }
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.busy_timeout(std::time::Duration::from_secs(10)).ok()?;
    let mut st = c
        .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1"))
        .ok()?;
    let n = st.column_count();
    let rows = st
        .query_map([], |r| {
            let mut parts = Vec::with_capacity(n);
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i)?;
                parts.push(format!("{v:?}"));
            }
            Ok(parts.join("|"))
        })
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(rows)
}

/// Sends SIGTERM and waits for the exit code.
pub fn terminate(mut child: Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().expect("wait ferry")
}

/// Rows of `table` in the SQLite file at `path` (0 while it cannot be read).
pub fn count(path: &Path, table: &str) -> i64 {
    Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()
        .and_then(|c| {
            c.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                r.get(0)
            })
            .ok()
        })
        .unwrap_or(0)
}

/// Runs `ferry run` and kills it (SIGKILL) right after the copy made
/// progress, that is once `copied()` (the rows on the target) changed or
/// reached `total`, so the kill lands mid-copy however fast the machine
/// copies (a tight poll: `eventually()` backs off to 100 ms, longer than a
/// whole copy may take). Returns whether the kill left a partial copy.
pub fn kill_after_copy_progress(
    pipeline: &Path,
    log: &Path,
    total: i64,
    copied: &dyn Fn() -> i64,
) -> bool {
    let mut child = spawn_run(pipeline, log);
    let before = copied();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let n = copied();
        if n != before || n == total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let n = copied();
    n > 0 && n < total
}

/// Runs `ferry ARGS` expected to end on its own within `within`; returns
/// its exit code and output. A process still running then is killed and
/// the test fails (a second runner that was not refused, say).
pub fn run_to_exit(args: &[&str], within: std::time::Duration) -> (i32, String) {
    let mut child = Command::new(FERRY)
        .args(args)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().expect("poll ferry").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap ferry");
            panic!(
                "`ferry {}` still ran after {within:?}:\n{}",
                args.join(" "),
                text(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("ferry output");
    (out.status.code().unwrap_or(-1), text(&out))
}

/// How many runs logged to `log` reached the change stream.
pub fn streams_started(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("change stream started")
        .count()
}

/// A number `sql` returns in database `db`, or -1 while it cannot be read.
pub fn pg_number(pg: &ferry_testkit::PostgresServer, db: &str, sql: &str) -> i64 {
    pg.try_psql_in(db, sql)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// Appends `toml` to the pipeline file at `p`.
pub fn add_to_pipeline(p: &Path, toml: &str) {
    let mut text = std::fs::read_to_string(p).unwrap();
    text.push_str(toml);
    std::fs::write(p, text).unwrap();
}
