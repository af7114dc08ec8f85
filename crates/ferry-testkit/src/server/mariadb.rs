//! A throwaway MariaDB server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{
    START_TIMEOUT, STOP_GRACE, StartError, created_by_root, kill, log_tail, output_file,
    poll_until, require_binary, run, run_with_stdin, temp_dir, wait_for_exit, with_port_retry,
};
use crate::port::free_port;

/// Options for a [`MariaDbServer`]; get one from [`MariaDbServer::builder`].
#[derive(Clone, Debug)]
pub struct MariaDbBuilder {
    binlog_format: String,
    log_bin: bool,
    server_id: u32,
    durable: bool,
    args: Vec<String>,
}

impl Default for MariaDbBuilder {
    fn default() -> Self {
        MariaDbBuilder {
            binlog_format: "ROW".to_string(),
            log_bin: true,
            server_id: 1,
            durable: false,
            args: Vec::new(),
        }
    }
}

impl MariaDbBuilder {
    /// `binlog_format` (default `ROW`); e.g. `STATEMENT` or `MIXED` to test
    /// what ferry says when the binlog is not row-based.
    pub fn binlog_format(mut self, format: &str) -> Self {
        self.binlog_format = format.to_string();
        self
    }

    /// Whether the binary log is on (default `true`; `false` to test what
    /// ferry says when it is off).
    pub fn log_bin(mut self, on: bool) -> Self {
        self.log_bin = on;
        self
    }

    /// `server_id` (default 1).
    pub fn server_id(mut self, id: u32) -> Self {
        self.server_id = id;
        self
    }

    /// `false` (the default) skips InnoDB's fsyncs and doublewrite for
    /// speed; `true` uses `innodb_flush_log_at_trx_commit=1` and
    /// `sync_binlog=1`.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// An extra `mariadbd` command-line option, e.g. `"--max-connections=20"`
    /// (it comes last, so it overrides the kit's own).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts the server; panics with the reason and the log tail if it
    /// cannot.
    pub fn start(self) -> MariaDbServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("MariaDbServer: {e}"))
    }

    /// Starts the server, or says why it could not. Retries once with a new
    /// port if the chosen one was taken meanwhile.
    pub fn try_start(self) -> Result<MariaDbServer, StartError> {
        let bins = Binaries::find()?;
        with_port_retry(|| MariaDbServer::init_and_start(&self, &bins))
    }
}

#[derive(Clone, Debug)]
struct Binaries {
    install_db: PathBuf,
    server: PathBuf,
    admin: PathBuf,
    client: PathBuf,
}

impl Binaries {
    fn find() -> Result<Self, StartError> {
        Ok(Binaries {
            install_db: require_binary("mariadb-install-db", "mariadb-server")?,
            server: require_binary("mariadbd", "mariadb-server")?,
            admin: require_binary("mariadb-admin", "mariadb-client")?,
            client: require_binary("mariadb", "mariadb-client")?,
        })
    }
}

/// A MariaDB server of its own for one test: `127.0.0.1` on a free port,
/// data in a temporary directory, binary log on with `binlog_format=ROW`
/// and `gtid_strict_mode=1`, `server_id=1`, user `root` without password.
///
/// Dropping it shuts the server down (`mariadb-admin shutdown`, then
/// `SIGKILL` if it lingers) and deletes the directory.
///
/// ```no_run
/// let db = ferry_testkit::MariaDbServer::start();
/// assert_eq!(db.sql("select @@binlog_format"), "ROW");
/// let url = db.create_database("app"); // mysql://root@127.0.0.1:PORT/app
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct MariaDbServer {
    // Field order matters: `dir` is deleted after `Drop::drop` stopped the
    // server.
    config: MariaDbBuilder,
    bins: Binaries,
    port: u16,
    as_root: bool,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl MariaDbServer {
    /// Options for a server; finish with [`MariaDbBuilder::start`].
    pub fn builder() -> MariaDbBuilder {
        MariaDbBuilder::default()
    }

    /// Starts a server with the default options; panics if it cannot.
    pub fn start() -> MariaDbServer {
        Self::builder().start()
    }

    fn init_and_start(config: &MariaDbBuilder, bins: &Binaries) -> Result<Self, StartError> {
        let dir = temp_dir("ferry-mariadb-")?;
        let as_root = created_by_root(dir.path());
        let mut server = MariaDbServer {
            config: config.clone(),
            bins: bins.clone(),
            port: free_port(),
            as_root,
            child: None,
            dir,
        };
        server.install_db()?;
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// Own tmpdir: at start-up mariadbd deletes every `#sql*` file in its
    /// tmpdir, so a shared /tmp breaks servers started in parallel.
    fn tmp_dir(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    fn install_db(&self) -> Result<(), StartError> {
        std::fs::create_dir(self.tmp_dir()).map_err(|e| super::io_error("creating tmpdir", e))?;
        let mut cmd = Command::new(&self.bins.install_db);
        // --no-defaults must come first.
        cmd.arg("--no-defaults");
        if self.as_root {
            cmd.arg("--user=root");
        }
        cmd.arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--tmpdir={}", self.tmp_dir().display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                // Passed on to the bootstrap server: no fsyncs, small redo log.
                "--innodb-log-file-size=8M",
                "--innodb-flush-method=nosync",
                "--innodb-doublewrite=0",
            ])
            .current_dir(self.dir.path());
        run(&mut cmd, "mariadb-install-db")?;
        Ok(())
    }

    fn server_args(&self) -> Vec<String> {
        let c = &self.config;
        let d = self.dir.path();
        let mut args = vec!["--no-defaults".to_string()];
        if self.as_root {
            args.push("--user=root".into());
        }
        args.extend([
            format!("--datadir={}", self.data_dir().display()),
            format!("--socket={}", d.join("mariadbd.sock").display()),
            format!("--tmpdir={}", self.tmp_dir().display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            format!("--pid-file={}", d.join("mariadbd.pid").display()),
            format!("--log-error={}", self.log_path().display()),
            format!("--server-id={}", c.server_id),
            format!("--binlog-format={}", c.binlog_format),
            "--gtid-strict-mode=1".into(),
            "--skip-name-resolve".into(),
            "--innodb-log-file-size=8M".into(),
            "--innodb-buffer-pool-size=64M".into(),
            "--innodb-buffer-pool-dump-at-shutdown=0".into(),
            "--innodb-buffer-pool-load-at-startup=0".into(),
        ]);
        if c.log_bin {
            args.push(format!(
                "--log-bin={}",
                self.data_dir().join("binlog").display()
            ));
        }
        if c.durable {
            args.extend(
                ["--innodb-flush-log-at-trx-commit=1", "--sync-binlog=1"].map(String::from),
            );
        } else {
            args.extend(
                [
                    "--innodb-flush-log-at-trx-commit=2",
                    "--innodb-flush-method=nosync",
                    "--innodb-doublewrite=0",
                    "--sync-binlog=0",
                ]
                .map(String::from),
            );
        }
        args.extend(c.args.iter().cloned());
        args
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.stderr")
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let stderr = output_file(&self.stderr_path())?;
        let stdout = stderr
            .try_clone()
            .map_err(|e| super::io_error("dup of the stderr file", e))?;
        let child = Command::new(&self.bins.server)
            .args(self.server_args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                StartError::new(format!("cannot run {}: {e}", self.bins.server.display()))
            })?;
        self.child = Some(child);
        let logs = [self.log_path(), self.stderr_path()];
        let logs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
        let port = self.port;
        let admin = self.bins.admin.clone();
        let child = self.child.as_mut().expect("just spawned");
        poll_until("mariadbd", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError::new(format!(
                    "mariadbd on port {port} exited during start-up ({status})"
                )));
            }
            let alive = Command::new(&admin)
                .args(admin_args(port))
                .arg("ping")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            Ok(alive.then_some(()))
        })
        .map_err(|e| e.with_logs(&logs))
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        self.url_for("")
    }

    /// `mysql://root@127.0.0.1:PORT/DB` (`db` percent-encoded).
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/{}",
            self.port,
            super::encode_userinfo(db)
        )
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The error log (`--log-error`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// The last `lines` lines of the error log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Runs SQL with the `mariadb` client as root (batch mode, no column
    /// names: columns separated by tabs, one row per line, trailing newline
    /// removed). Panics on any SQL error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("MariaDbServer::sql on port {}: {e}", self.port))
    }

    /// [`sql`](Self::sql) with `db` as the default database.
    pub fn sql_in(&self, db: &str, sql: &str) -> String {
        self.try_sql_in(db, sql)
            .unwrap_or_else(|e| panic!("MariaDbServer::sql on port {}: {e}", self.port))
    }

    /// [`sql`](Self::sql) that returns the error (the client's stderr)
    /// instead of panicking.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_sql_in("", sql)
    }

    /// [`try_sql`](Self::try_sql) with `db` as the default database (none
    /// if empty).
    pub fn try_sql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.bins.client);
        cmd.args(admin_args(self.port)).args(["-N", "-B"]);
        if !db.is_empty() {
            cmd.arg(format!("--database={db}"));
        }
        run_with_stdin(cmd, sql)
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.sql(&format!("CREATE DATABASE `{}`", name.replace('`', "``")));
        self.url_for(name)
    }

    /// Shuts the server down (`mariadb-admin shutdown`, `SIGKILL` after
    /// 20 s), keeping its data; the port then refuses connections.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new(&self.bins.admin)
            .args(admin_args(self.port))
            .arg("shutdown")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !wait_for_exit(&mut child, STOP_GRACE) {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port and data (after
    /// [`stop`](Self::stop)), or restarts it if running.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("MariaDbServer::restart on port {}: {e}", self.port);
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connection options shared by `mariadb` and `mariadb-admin`.
fn admin_args(port: u16) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        "-h127.0.0.1".into(),
        format!("-P{port}"),
        "-uroot".into(),
        format!("--connect-timeout={}", Duration::from_secs(5).as_secs()),
    ]
}
