//! Building and driving the real `ferry` binary, and watching its progress
//! through the checkpoint it keeps in the target.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::{Ctx, Res};

/// How often a condition is re-checked.
pub const POLL: Duration = Duration::from_millis(20);

/// `$CARGO_TARGET_DIR`, or `~/.cache/ferry-target` (the repository's
/// convention) when unset.
pub fn target_dir() -> Res<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            Ok(if d.is_absolute() {
                d
            } else {
                std::env::current_dir()
                    .ctx(|| "current dir".into())?
                    .join(d)
            })
        }
        _ => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            Ok(PathBuf::from(home).join(".cache/ferry-target"))
        }
    }
}

/// The workspace root (xtask lives one level below it). `cargo run` sets
/// `CARGO_MANIFEST_DIR` for the binary; the compile-time value is the
/// fallback when the binary is run directly.
pub fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo build --release -p ferry` into the target dir; returns the binary.
pub fn build_ferry() -> Res<PathBuf> {
    let target = target_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "== cargo build --release -p ferry (CARGO_TARGET_DIR={})",
        target.display()
    );
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "-p", "ferry"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .ctx(|| "running cargo build".into())?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release -p ferry` failed ({status}); the benchmark needs a ferry binary"
        ));
    }
    let bin = target.join("release/ferry");
    if !bin.is_file() {
        return Err(format!("built ferry but {} is missing", bin.display()));
    }
    Ok(bin)
}

/// A running `ferry run`. Killed with SIGKILL if dropped while running (an
/// error path); [`Ferry::stop`] is the clean way out.
pub struct Ferry {
    child: Child,
    log: PathBuf,
    pub started: Instant,
}

impl Ferry {
    pub fn start(bin: &Path, pipeline: &Path, log: &Path) -> Res<Ferry> {
        Self::start_args(bin, pipeline, &[], log)
    }

    /// `ferry run PIPELINE ARGS...` (`--from`, `--to` of a sites file).
    pub fn start_args(bin: &Path, pipeline: &Path, args: &[&str], log: &Path) -> Res<Ferry> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().ctx(|| "log handle".into())?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("run")
            .arg(pipeline)
            .args(args)
            .env("FERRY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .ctx(|| format!("starting {} run", bin.display()))?;
        Ok(Ferry {
            child,
            log: log.to_owned(),
            started,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Res<u64> {
        peak_rss_kib_of(self.pid())
    }

    /// CPU time used so far, user + system, all threads (`/proc/<pid>/stat`
    /// fields 14 and 15, in clock ticks of 1/100 s on Linux).
    pub fn cpu_secs(&self) -> Res<f64> {
        cpu_secs_of(self.pid())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Errors when the process has exited (it must not, until stopped).
    pub fn ensure_running(&mut self, waiting_for: &str) -> Res<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "ferry exited ({st}) while waiting for {waiting_for}\n{}",
                self.log_tail()
            )),
            Err(e) => Err(format!("checking on ferry: {e}")),
        }
    }

    /// Polls `cond` every [`POLL`] until it holds; returns when it was seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut() -> Res<bool>,
    ) -> Res<Instant> {
        let start = Instant::now();
        loop {
            if cond()? {
                return Ok(Instant::now());
            }
            self.ensure_running(what)?;
            if start.elapsed() > timeout {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM (via the `kill` command: the workspace forbids unsafe), then
    /// waits for a clean exit 0.
    pub fn stop(mut self) -> Res<Duration> {
        self.ensure_running("the stop")?;
        let t = Instant::now();
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .ctx(|| "running kill".into())?;
        if !st.success() {
            return Err(format!("kill -TERM {} failed", self.pid()));
        }
        loop {
            if let Some(st) = self.child.try_wait().ctx(|| "waiting for ferry".into())? {
                if st.success() {
                    return Ok(t.elapsed());
                }
                return Err(format!(
                    "ferry exited with {st} after SIGTERM (expected 0)\n{}",
                    self.log_tail()
                ));
            }
            if t.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "ferry did not exit within 120 s of SIGTERM\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// Runs a one-shot ferry command (`teardown`, …) and requires exit 0.
pub fn ferry_command(bin: &Path, args: &[&str], pipeline: &Path) -> Res<()> {
    let out = Command::new(bin)
        .args(args)
        .arg(pipeline)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running ferry {}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ferry {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Reads a pipeline's checkpoint in the target database
/// (`_ferry_checkpoint(pipeline, scope, value, updated_at)`).
pub struct Probe {
    path: PathBuf,
    pipeline: String,
    conn: Option<Connection>,
}

impl Probe {
    pub fn new(target: &Path, pipeline: &str) -> Probe {
        Probe {
            path: target.to_owned(),
            pipeline: pipeline.to_owned(),
            conn: None,
        }
    }

    /// Opened only once ferry has put the target in WAL mode (the `-wal`
    /// file exists), so the probe never competes for the journal-mode switch
    /// and its reads never block ferry's commits.
    fn conn(&mut self) -> Res<Option<&Connection>> {
        if self.conn.is_none() {
            let mut wal = self.path.clone().into_os_string();
            wal.push("-wal");
            if !Path::new(&wal).exists() {
                return Ok(None);
            }
            let c = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .ctx(|| format!("opening {}", self.path.display()))?;
            c.busy_timeout(Duration::from_secs(5))
                .ctx(|| "busy_timeout".into())?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_ref())
    }

    /// Whether a table's snapshot is recorded complete: its `table:<name>`
    /// record starts with the length-prefixed state `t:6:copied`
    /// (`ferry_core::checkpoint::CheckpointRecord::table`). The pipelines
    /// here select one table, so any such record is `t`'s.
    pub fn table_copied(&mut self) -> Res<bool> {
        let pipeline = self.pipeline.clone();
        let Some(c) = self.conn()? else {
            return Ok(false);
        };
        let r: rusqlite::Result<i64> = c.query_row(
            "SELECT count(*) FROM _ferry_checkpoint \
             WHERE pipeline = ?1 AND scope LIKE 'table:%' AND value LIKE 't:6:copied%'",
            [&pipeline],
            |r| r.get(0),
        );
        match r {
            Ok(n) => Ok(n > 0),
            // Not created yet, or ferry holds a lock for a moment.
            Err(_) => Ok(false),
        }
    }

    /// The applied source position: `ferry.pos.v1 sqlite <seq>` → `seq`.
    pub fn applied_seq(&mut self) -> Res<Option<i64>> {
        let pipeline = self.pipeline.clone();
        let Some(c) = self.conn()? else {
            return Ok(None);
        };
        let r: rusqlite::Result<Option<String>> = c
            .query_row(
                "SELECT value FROM _ferry_checkpoint WHERE pipeline = ?1 AND scope = 'applied'",
                [&pipeline],
                |r| r.get(0),
            )
            .optional();
        let Ok(Some(value)) = r else {
            return Ok(None);
        };
        match value.split(' ').collect::<Vec<_>>().as_slice() {
            ["ferry.pos.v1", "sqlite", seq] => seq
                .parse()
                .map(Some)
                .map_err(|_| format!("applied position {value:?} has a bad sequence")),
            _ => Err(format!(
                "applied position {value:?} is not `ferry.pos.v1 sqlite <seq>`: the checkpoint format changed; update xtask"
            )),
        }
    }
}

/// Peak resident set size of process `pid` so far (`VmHWM`), in KiB; an
/// error once it has exited (a zombie has no memory left to report).
pub fn peak_rss_kib_of(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ctx(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// CPU time process `pid` has used so far, user + system, all threads.
pub fn cpu_secs_of(pid: u32) -> Res<f64> {
    let st = proc_stat(pid)?;
    Ok(st.cpu_secs)
}

/// The fields of `/proc/<pid>/stat` the benchmarks use. Times are in
/// clock ticks of 1/100 s on Linux, converted to seconds.
pub struct ProcStat {
    pub ppid: u32,
    /// utime + stime (fields 14 and 15).
    pub cpu_secs: f64,
    /// cutime + cstime of reaped children (fields 16 and 17).
    pub children_cpu_secs: f64,
}

pub fn proc_stat(pid: u32) -> Res<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ctx(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; count after its `)`.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (num(1), num(11), num(12), num(13), num(14)) {
        (Some(ppid), Some(u), Some(s), Some(cu), Some(cs)) => Ok(ProcStat {
            ppid: ppid as u32,
            cpu_secs: (u + s) as f64 / 100.0,
            children_cpu_secs: (cu + cs) as f64 / 100.0,
        }),
        _ => Err(format!("unreadable /proc/{pid}/stat")),
    }
}
