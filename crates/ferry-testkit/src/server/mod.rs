//! Real servers (PostgreSQL, MariaDB, NATS) started for one test.
//!
//! Each fixture runs its own server process on `127.0.0.1`, on a free port,
//! with all its files in a fresh temporary directory. Several tests can
//! start servers at the same time without colliding. Dropping the fixture
//! stops the server (also when the test panics) and deletes its directory.
//!
//! The fixtures are synchronous (they use `std::process`), so they work the
//! same from plain `#[test]`s and from `#[tokio::test]`s. Starting one takes
//! from ~20 ms (NATS) to ~1 s (PostgreSQL, MariaDB).
//!
//! When a server cannot start, the fixture panics with a message that says
//! why and ends with the last lines of the server's log. When its binaries
//! are missing, the message says to run `scripts/install-test-deps.sh`.
//!
//! Limitation: the processes are stopped by `Drop`. A test binary killed
//! with `SIGKILL`, or a fixture kept in a `static` (statics are never
//! dropped), leaves the servers running.

mod mariadb;
mod nats;
mod postgres;

pub use mariadb::{MariaDbBuilder, MariaDbServer};
pub use nats::{NatsBuilder, NatsServer};
pub use postgres::{PostgresBuilder, PostgresServer};

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready before the start fails.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the process is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of a server log quoted in error messages.
pub(crate) const LOG_TAIL_LINES: usize = 30;

/// Why a server fixture could not start.
///
/// The `start()` methods panic with this error's message; the `try_start()`
/// methods return it.
#[derive(Debug)]
pub struct StartError {
    message: String,
    address_in_use: bool,
}

impl StartError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        StartError {
            message: message.into(),
            address_in_use: false,
        }
    }

    /// Appends the last lines of the log files to the message, and notes
    /// whether they say that a port was already taken.
    pub(crate) fn with_logs(mut self, logs: &[&Path]) -> Self {
        for log in logs {
            let tail = log_tail(log, LOG_TAIL_LINES);
            if tail.is_empty() {
                continue;
            }
            if mentions_address_in_use(&tail) {
                self.address_in_use = true;
            }
            self.message.push_str(&format!(
                "\n--- last lines of {} ---\n{tail}",
                log.display()
            ));
        }
        self
    }

    /// The full message, including the tail of the server log if any.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the start failed because a port was already in use (the
    /// fixtures retry once with new ports when this happens).
    pub fn is_address_in_use(&self) -> bool {
        self.address_in_use
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

fn mentions_address_in_use(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("address already in use")
        || t.contains("do you already have another server running")
        || t.contains("errno: 98")
}

/// Runs `start` and, if it failed because a port was taken (the race of
/// [`crate::port::free_port`]), runs it once more.
pub(crate) fn with_port_retry<T>(
    mut start: impl FnMut() -> Result<T, StartError>,
) -> Result<T, StartError> {
    match start() {
        Err(e) if e.is_address_in_use() => start(),
        other => other,
    }
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_BYTES && file.seek(SeekFrom::Start(len - MAX_BYTES)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds an executable by name in `$PATH`, then in the sbin directories
/// that a non-root `$PATH` often lacks.
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/usr/local/sbin",
                "/usr/local/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Like [`find_binary`], but an error that says how to install it.
pub(crate) fn require_binary(name: &str, package: &str) -> Result<PathBuf, StartError> {
    find_binary(name).ok_or_else(|| {
        StartError::new(format!(
            "`{name}` not found (looked in $PATH and /usr/sbin): install the `{package}` \
             package by running `scripts/install-test-deps.sh` as root"
        ))
    })
}

/// Whether this process runs as root (judged by the owner of a directory it
/// just created, which needs no `unsafe` call to `geteuid`).
pub(crate) fn created_by_root(dir: &Path) -> bool {
    dir.metadata().map(|m| m.uid() == 0).unwrap_or(false)
}

/// A fresh temporary directory for one server.
pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, StartError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| StartError::new(format!("cannot create a temporary directory: {e}")))
}

/// Runs a command to completion, capturing its output; a non-zero exit is
/// an error that quotes the command and its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output, StartError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StartError::new(format!("{what}: cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(StartError::new(format!(
            "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end(),
        )))
    }
}

/// Polls `probe` (5 ms growing to 50 ms between attempts) until it returns
/// `Ok(Some(_))`, fails, or `timeout` passes.
pub(crate) fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, StartError>,
) -> Result<T, StartError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(5);
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StartError::new(format!(
                "{what}: not ready after {timeout:?}"
            )));
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// Waits up to `timeout` for `child` to exit; returns whether it did.
pub(crate) fn wait_for_exit(child: &mut Child, timeout: Duration) -> bool {
    let exited = poll_until("process exit", timeout, || match child.try_wait() {
        Ok(Some(_)) => Ok(Some(())),
        Ok(None) => Ok(None),
        // Cannot wait on it (already reaped?): treat as gone.
        Err(_) => Ok(Some(())),
    });
    exited.is_ok()
}

/// Sends `signal` (e.g. "TERM", "KILL") to a process with the `kill`
/// command (the workspace forbids `unsafe`, so no `libc::kill`).
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops a child: SIGTERM, up to `grace` for it to exit, then SIGKILL.
/// Never panics (used from `Drop`).
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    send_signal(child.id(), "TERM");
    if !wait_for_exit(child, grace) {
        kill(child);
    }
}

/// SIGKILL and reap. Never panics.
pub(crate) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Opens (creating) a file to receive a child's stdout/stderr.
pub(crate) fn output_file(path: &Path) -> Result<File, StartError> {
    File::create(path)
        .map_err(|e| StartError::new(format!("cannot create {}: {e}", path.display())))
}

/// Percent-encodes a URL userinfo or path component (keeps only RFC 3986
/// unreserved characters).
pub(crate) fn encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn io_error(what: &str, e: io::Error) -> StartError {
    StartError::new(format!("{what}: {e}"))
}

/// Runs a client command with `input` on its stdin; returns its stdout
/// (trailing newlines removed), or an error quoting `input` and stderr.
pub(crate) fn run_with_stdin(mut cmd: Command, input: &str) -> Result<String, String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Feed stdin from another thread so that a large output cannot block
    // the client while we are still writing.
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(input.as_bytes());
        });
        child.wait_with_output()
    })
    .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
    if out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        while text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    } else {
        Err(format!(
            "{} failed ({}) running {input:?}: {}",
            cmd.get_program().to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}
