//! A throwaway PostgreSQL server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{
    LOG_TAIL_LINES, START_TIMEOUT, StartError, created_by_root, encode_userinfo, io_error,
    log_tail, run, run_with_stdin, send_signal, temp_dir, with_port_retry,
};
use crate::port::free_port;

/// Environment variable naming a PostgreSQL `bin` directory to use instead
/// of the newest `/usr/lib/postgresql/*/bin`.
pub const PG_BIN_ENV: &str = "FERRY_TESTKIT_PG_BIN";

/// Options for a [`PostgresServer`]; get one from [`PostgresServer::builder`].
#[derive(Clone, Debug)]
pub struct PostgresBuilder {
    durable: bool,
    wal_level: String,
    password: Option<String>,
    conf: Vec<String>,
    bin_dir: Option<PathBuf>,
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            durable: false,
            wal_level: "logical".to_string(),
            password: None,
            conf: Vec::new(),
            bin_dir: None,
        }
    }
}

impl PostgresBuilder {
    /// `false` (the default) sets `fsync = off` and `full_page_writes = off`
    /// for speed; `true` keeps PostgreSQL's crash-safe defaults.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// `wal_level` (default `logical`). Use `replica` to test what ferry
    /// says when logical decoding is unavailable.
    pub fn wal_level(mut self, level: &str) -> Self {
        self.wal_level = level.to_string();
        self
    }

    /// Gives the `postgres` user this password and makes TCP connections
    /// (including replication ones) use `scram-sha-256` instead of `trust`.
    /// [`PostgresServer::url`] then carries the password. The helpers
    /// ([`PostgresServer::psql`]) use the Unix socket, which stays `trust`.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// Appends a line to `postgresql.conf` (after the kit's own settings,
    /// so it overrides them), e.g. `"max_connections = 20"`.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// The PostgreSQL `bin` directory to use (with `initdb`, `pg_ctl`,
    /// `psql`). Default: `$FERRY_TESTKIT_PG_BIN`, else the newest
    /// `/usr/lib/postgresql/*/bin`.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Starts the server; panics with the reason and the log tail if it
    /// cannot.
    pub fn start(self) -> PostgresServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("PostgresServer: {e}"))
    }

    /// Starts the server, or says why it could not. Retries once with a new
    /// port if the chosen one was taken meanwhile.
    pub fn try_start(self) -> Result<PostgresServer, StartError> {
        let bin_dir = match &self.bin_dir {
            Some(dir) => checked_bin_dir(dir.clone(), "bin_dir")?,
            None => pg_bin_dir()?,
        };
        with_port_retry(|| PostgresServer::init_and_start(&self, &bin_dir))
    }
}

/// A PostgreSQL server of its own for one test: `127.0.0.1` on a free
/// port, data in a temporary directory, `wal_level = logical`, trust auth
/// (unless [`PostgresBuilder::password`]), superuser `postgres`.
///
/// Dropping it stops the server (`pg_ctl -m immediate`) and deletes the
/// directory.
///
/// As root, `initdb` and `pg_ctl` run as the `postgres` system user (via
/// `runuser`), which owns the temporary directory; otherwise they run as
/// the current user. Binaries come from `$FERRY_TESTKIT_PG_BIN` or the
/// newest `/usr/lib/postgresql/*/bin`.
///
/// ```no_run
/// let pg = ferry_testkit::PostgresServer::start();
/// assert_eq!(pg.psql("select 1"), "1");
/// let url = pg.create_database("app"); // postgres://postgres@127.0.0.1:PORT/app
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    // Field order matters: `dir` is dropped (deleted) after `Drop::drop`
    // has stopped the server.
    config: PostgresBuilder,
    bin_dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
    running: bool,
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Options for a server; finish with [`PostgresBuilder::start`].
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// Starts a server with the default options; panics if it cannot.
    pub fn start() -> PostgresServer {
        Self::builder().start()
    }

    fn init_and_start(config: &PostgresBuilder, bin_dir: &Path) -> Result<Self, StartError> {
        let dir = temp_dir("ferry-pg-")?;
        let run_as_postgres = created_by_root(dir.path());
        if run_as_postgres {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| io_error("chown of the temporary directory to `postgres`", e))?;
        }
        // From here on, Drop cleans up whatever was started.
        let mut server = PostgresServer {
            config: config.clone(),
            bin_dir: bin_dir.to_path_buf(),
            port: free_port(),
            run_as_postgres,
            running: false,
            dir,
        };
        server.initdb()?;
        server.write_config()?;
        server.pg_ctl_start()?;
        if let Some(password) = &server.config.password {
            server
                .try_psql(&format!(
                    "ALTER USER postgres PASSWORD '{}'",
                    password.replace('\'', "''")
                ))
                .map_err(|e| StartError::new(format!("setting the password: {e}")))?;
        }
        Ok(server)
    }

    /// A command for a server binary, run as `postgres` when we are root.
    fn pg_command(&self, binary: &str) -> Command {
        let path = self.bin_dir.join(binary);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The test's working directory may not be readable by `postgres`.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn initdb(&self) -> Result<(), StartError> {
        run(
            self.pg_command("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ])
                .arg("--no-sync"),
            "initdb",
        )?;
        Ok(())
    }

    fn write_config(&self) -> Result<(), StartError> {
        let c = &self.config;
        let mut conf = format!(
            "\n# ---- ferry-testkit ----\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = {wal}\n\
             max_replication_slots = 20\n\
             max_wal_senders = {senders}\n\
             shared_buffers = 32MB\n",
            port = self.port,
            sock = self.dir.path().display(),
            wal = c.wal_level,
            // `minimal` refuses to start with WAL senders configured.
            senders = if c.wal_level == "minimal" { 0 } else { 20 },
        );
        if !c.durable {
            conf.push_str("fsync = off\nfull_page_writes = off\n");
        }
        for line in &c.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let method = if c.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = format!(
            "# ferry-testkit\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 {method}\n\
             host replication all 127.0.0.1/32 {method}\n"
        );
        let data = self.data_dir();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(|e| io_error("opening postgresql.conf", e))?;
        f.write_all(conf.as_bytes())
            .map_err(|e| io_error("writing postgresql.conf", e))?;
        std::fs::write(data.join("pg_hba.conf"), hba)
            .map_err(|e| io_error("writing pg_hba.conf", e))?;
        Ok(())
    }

    fn pg_ctl_start(&mut self) -> Result<(), StartError> {
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t"])
                .arg(START_TIMEOUT.as_secs().to_string())
                .arg("start"),
            "pg_ctl start",
        )
        .map_err(|e| e.with_logs(&[&self.log_path()]))?;
        self.running = true;
        Ok(())
    }

    /// The path of a program of this server's version (`pg_recvlogical`,
    /// `pg_dump`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (with the password,
    /// percent-encoded, when one was set).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Like [`url`](Self::url) for database `db` (percent-encoded).
    pub fn url_for(&self, db: &str) -> String {
        let user = match &self.config.password {
            Some(p) => format!("postgres:{}", encode_userinfo(p)),
            None => "postgres".to_string(),
        };
        format!(
            "postgres://{user}@127.0.0.1:{}/{}",
            self.port,
            encode_userinfo(db)
        )
    }

    /// The password given with [`PostgresBuilder::password`], if any.
    pub fn password(&self) -> Option<&str> {
        self.config.password.as_deref()
    }

    /// The directory holding the Unix socket (the temporary directory).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Runs SQL in database `postgres` with `psql` and returns its output
    /// (unaligned, tuples only: columns joined by `|`, one row per line,
    /// trailing newline removed). Panics on any SQL error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`psql`](Self::psql) in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql)
            .unwrap_or_else(|e| panic!("PostgresServer::psql on port {}: {e}", self.port))
    }

    /// [`psql`](Self::psql) that returns the error (psql's stderr) instead
    /// of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_in("postgres", sql)
    }

    /// [`try_psql`](Self::try_psql) in database `db`.
    pub fn try_psql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db]);
        psql_command(cmd, sql)
    }

    /// Runs SQL with `psql` connecting to an arbitrary connection string
    /// (e.g. a URL with a wrong password, to test authentication errors).
    pub fn try_psql_url(&self, url: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.arg("-d").arg(url);
        psql_command(cmd, sql)
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ));
        self.url_for(name)
    }

    /// Stops the server (`pg_ctl -m fast -w stop`), keeping its data; the
    /// port then refuses connections. Panics if `pg_ctl` fails.
    ///
    /// A fast stop waits for each logical walsender until its client has
    /// confirmed everything sent (up to `wal_sender_timeout`, 60 s):
    /// [`crash`](Self::crash) does not.
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Stops the server at once, as a crash would (`pg_ctl -m immediate`),
    /// keeping its data: the next start runs crash recovery. Panics if
    /// `pg_ctl` fails.
    pub fn crash(&mut self) {
        self.stop_with("immediate");
    }

    fn stop_with(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let stopped = run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "stop"]),
            "pg_ctl stop",
        );
        if let Err(e) = stopped {
            panic!("PostgresServer::stop ({mode}) on port {}: {e}", self.port);
        }
        self.running = false;
    }

    /// Starts the server again on the same port and data (after
    /// [`stop`](Self::stop) or [`crash`](Self::crash)), or restarts it if
    /// running.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.pg_ctl_start() {
            panic!("PostgresServer::restart on port {}: {e}", self.port);
        }
    }

    /// Whether the server was started and not stopped.
    pub fn is_running(&self) -> bool {
        self.running
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        // Immediate: the data is thrown away, so skip the checkpoint.
        let stopped = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "20", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            // Last resort: kill the postmaster named in postmaster.pid.
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            {
                send_signal(pid, "KILL");
            }
            eprintln!(
                "PostgresServer: pg_ctl stop failed on port {}; killed the postmaster\n{}",
                self.port,
                log_tail(&self.log_path(), LOG_TAIL_LINES)
            );
        }
        self.running = false;
    }
}

fn psql_command(mut cmd: Command, sql: &str) -> Result<String, String> {
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        "-",
    ])
    .env_remove("PGPASSWORD")
    .env_remove("PGPASSFILE")
    .env_remove("PGSERVICE")
    .env_remove("PGOPTIONS");
    run_with_stdin(cmd, sql)
}

/// The `bin` directory of the PostgreSQL to use.
fn pg_bin_dir() -> Result<PathBuf, StartError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return checked_bin_dir(PathBuf::from(dir), &format!("${PG_BIN_ENV}"));
    }
    let version =
        |name: &str| -> Option<Vec<u32>> { name.split('.').map(|p| p.parse().ok()).collect() };
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = version(e.file_name().to_str()?)?;
            let bin = e.path().join("bin");
            super::is_executable(&bin.join("initdb")).then_some((v, bin))
        })
        .max();
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        StartError::new(format!(
            "PostgreSQL not found (no /usr/lib/postgresql/*/bin/initdb, ${PG_BIN_ENV} unset): \
             install the `postgresql` package by running `scripts/install-test-deps.sh` as root"
        ))
    })
}

/// `dir` if it holds `initdb`, else an error naming where it came from.
fn checked_bin_dir(dir: PathBuf, source: &str) -> Result<PathBuf, StartError> {
    if super::is_executable(&dir.join("initdb")) {
        Ok(dir)
    } else {
        Err(StartError::new(format!(
            "no initdb in {} (from {source}): point it at a PostgreSQL bin directory, \
             or install the `postgresql` package with `scripts/install-test-deps.sh`",
            dir.display()
        )))
    }
}

/// uid and gid of the `postgres` system user, from /etc/passwd.
fn postgres_ids() -> Result<(u32, u32), StartError> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| io_error("reading /etc/passwd", e))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            StartError::new(
                "running as root, but there is no `postgres` user to run initdb as \
                 (initdb refuses root): install the `postgresql` package \
                 (scripts/install-test-deps.sh) or run the tests as a normal user",
            )
        })
}
