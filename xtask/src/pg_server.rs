//! The benchmark's PostgreSQL clusters: `initdb` into the work directory,
//! 127.0.0.1 on a free port, `pg_ctl start`; stopped when dropped (also on
//! an error path). As root, the server binaries run as the `postgres` user
//! (`initdb` refuses root), which then owns the cluster's directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pg_client::Client;
use crate::{Ctx, Res};

/// The PostgreSQL binaries: the newest `/usr/lib/postgresql/*/bin` (or
/// `$FERRY_BENCH_PG_BIN`), so `psql`, `pg_dump` and `pgbench` match the
/// server (`/usr/bin/psql` is Debian's version-picking wrapper).
pub fn bin_dir() -> Res<PathBuf> {
    if let Some(d) = std::env::var_os("FERRY_BENCH_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; install them: \
         apt-get install -y postgresql (or set FERRY_BENCH_PG_BIN to a bin directory)"
            .to_owned()
    })
}

/// Checks that every tool the benchmark runs is there, with install hints.
pub fn check_tools(bin: &Path) -> Res<()> {
    for tool in [
        "initdb",
        "pg_ctl",
        "psql",
        "pg_dump",
        "pgbench",
        "pg_recvlogical",
    ] {
        if !bin.join(tool).is_file() {
            return Err(format!(
                "{} is missing; install PostgreSQL's server and client programs: \
                 apt-get install -y postgresql postgresql-contrib",
                bin.join(tool).display()
            ));
        }
    }
    let ok = Command::new("pgcopydb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err("pgcopydb is needed for one of the baselines; install it: \
                    apt-get install -y pgcopydb"
            .into());
    }
    Ok(())
}

/// `postgres --version`, e.g. `PostgreSQL 15.14 (Debian 15.14-0+deb12u1)`.
pub fn server_version(bin: &Path) -> String {
    Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("postgres (PostgreSQL) ")
                .to_owned()
        })
        .map(|v| format!("PostgreSQL {v}"))
        .unwrap_or_else(|| "PostgreSQL (version unknown)".into())
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).ctx(|| "finding a free port".into())?;
    Ok(l.local_addr().ctx(|| "local address".into())?.port())
}

/// The settings both clusters get. Durability is off on both (`fsync`,
/// `full_page_writes`), the same for every method; autovacuum is off so
/// that no background vacuum of one method's table runs during another
/// method's timing; the WAL may grow to 8 GB between checkpoints so that a
/// checkpoint does not land in the middle of one load and not another (the
/// task checkpoints before each method instead).
pub const SETTINGS: &[&str] = &[
    "wal_level = logical",
    "max_replication_slots = 20",
    "max_wal_senders = 20",
    "shared_buffers = 256MB",
    "fsync = off",
    "full_page_writes = off",
    "autovacuum = off",
    "max_wal_size = 8GB",
    "checkpoint_timeout = 30min",
];

pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    /// Settings after [`SETTINGS`] (`cargo xtask bench active-active`).
    extra: Vec<String>,
    bin: PathBuf,
    as_postgres: bool,
    running: bool,
}

impl Cluster {
    /// `initdb` + configuration + `pg_ctl start`, in `dir` (created).
    pub fn start(name: &str, dir: &Path, bin: &Path) -> Res<Cluster> {
        Self::start_with(name, dir, bin, &[])
    }

    /// [`Cluster::start`] with `extra` lines appended to the settings.
    pub fn start_with(name: &str, dir: &Path, bin: &Path, extra: &[&str]) -> Res<Cluster> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let as_postgres = std::fs::metadata(dir)
            .ctx(|| format!("reading {}", dir.display()))?
            .uid()
            == 0;
        if as_postgres {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir)
                .status()
                .ctx(|| "running chown".into())?;
            if !st.success() {
                return Err(format!(
                    "chown postgres {} failed: running as root needs the `postgres` user \
                     (apt-get install -y postgresql creates it)",
                    dir.display()
                ));
            }
        }
        let mut c = Cluster {
            name: name.to_owned(),
            dir: dir.to_owned(),
            port: 0,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            bin: bin.to_owned(),
            as_postgres,
            running: false,
        };
        c.run(
            "initdb",
            &[
                "-D",
                &c.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        )?;
        // A port found free may be taken before the server binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            c.port = free_port()?;
            c.configure()?;
            match c.run(
                "pg_ctl",
                &[
                    "-D",
                    &c.data().to_string_lossy(),
                    "-l",
                    &c.log().to_string_lossy(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(()) => {
                    c.running = true;
                    return Ok(c);
                }
                Err(e) => last = e,
            }
        }
        Err(format!("{last}\n{}", c.log_tail()))
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// CPU seconds the whole cluster has used so far: the postmaster, its
    /// live children (backends, walsenders, background processes) and the
    /// children it has reaped (`cutime`/`cstime`). The difference of two
    /// readings is what the cluster did in between.
    pub fn cpu_secs(&self) -> Res<f64> {
        let pid_file = self.data().join("postmaster.pid");
        let text =
            std::fs::read_to_string(&pid_file).ctx(|| format!("reading {}", pid_file.display()))?;
        let postmaster: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("no PID in {}", pid_file.display()))?;
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc").ctx(|| "reading /proc".into())? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may exit between the listing and the read.
            let Ok(st) = crate::process::proc_stat(pid) else {
                continue;
            };
            if pid == postmaster {
                total += st.cpu_secs + st.children_cpu_secs;
            } else if st.ppid == postmaster {
                total += st.cpu_secs;
            }
        }
        Ok(total)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.log().display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    fn configure(&self) -> Res<()> {
        let conf = self.data().join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).ctx(|| format!("reading {}", conf.display()))?;
        if let Some(at) = text.find("\n# ---- cargo xtask bench postgres ----\n") {
            text.truncate(at);
        }
        text.push_str("\n# ---- cargo xtask bench postgres ----\n");
        text.push_str(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.dir.display()
        ));
        for line in SETTINGS
            .iter()
            .copied()
            .chain(self.extra.iter().map(String::as_str))
        {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text).ctx(|| format!("writing {}", conf.display()))?;
        let hba = "local all all trust\nlocal replication all trust\n\
                   host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
        let path = self.data().join("pg_hba.conf");
        std::fs::write(&path, hba).ctx(|| format!("writing {}", path.display()))
    }

    fn run(&self, tool: &str, args: &[&str]) -> Res<()> {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        // The caller's directory may not be readable by `postgres`.
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .ctx(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// libpq keyword form, for `CREATE SUBSCRIPTION … CONNECTION`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=postgres",
            self.port
        )
    }

    pub fn connect(&self, db: &str) -> Res<Client> {
        Client::connect(self.port, db)
    }

    /// Connection arguments of the client programs (`-h -p -U`).
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// `psql` arguments that reach `db` on this cluster.
    pub fn psql_args(&self, db: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-X".into(),
            "-q".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
        ];
        args.extend(self.conn_args());
        args.extend(["-d".into(), db.into()]);
        args
    }

    pub fn create_database(&self, db: &str) -> Res<()> {
        self.connect("postgres")?
            .exec(&format!("CREATE DATABASE {db}"))
            .ctx(|| format!("on the {} cluster", self.name))
    }

    pub fn drop_database(&self, db: &str) -> Res<()> {
        self.connect("postgres")?
            .exec(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .ctx(|| format!("on the {} cluster", self.name))
    }

    pub fn checkpoint(&self) -> Res<()> {
        self.connect("postgres")?.exec("CHECKPOINT")
    }

    /// `pg_ctl stop -m fast`; the drop guard does the same if this is never
    /// called.
    pub fn stop(mut self) -> Res<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Res<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data().to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"],
        )
        .or_else(|e| {
            self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
                .map_err(|e2| format!("{e}; then {e2}"))
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("xtask: stopping the {} cluster: {e}", self.name);
        }
    }
}
