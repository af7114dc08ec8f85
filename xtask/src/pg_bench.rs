//! `cargo xtask bench postgres`: ferry PostgreSQL → PostgreSQL beside the
//! tools people use for the same job, all on the same data in one run,
//! every copy checked.
//!
//! Two clusters started here (source and target, like a copy between two
//! servers). Phases: source table; snapshot by the binary COPY pipe (key
//! first, and key after), `pg_dump | psql`, `pgcopydb clone`, native
//! logical replication (`copy_data`) and ferry, each into a fresh database;
//! CDC backlog (pgbench single-row UPDATE transactions while the native
//! subscription is disabled and ferry stopped, then each applies the same
//! backlog alone); CDC live (pgbench for N seconds with ferry running: apply
//! rate and lag); a ferry snapshot of rows/2 for the RSS comparison (big
//! enough that the snapshot pipeline fills, as in the full copy).
//! Progress goes to stderr, the report to stdout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::machine::{self, Machine};
use crate::pg_client::{Client, parse_lsn};
use crate::pg_report::{
    Cdc, FerryRun, Live, Pgbench, Results, Snapshots, parse_pgbench, percentile, rate,
};
use crate::pg_server::{self, Cluster};
use crate::process::{self, Ferry};
use crate::report::{mib, thousands};
use crate::{Ctx, Res};

/// Options of `bench postgres`, validated.
#[derive(Debug, Clone)]
pub struct PgOpts {
    pub rows: u64,
    pub changes: u64,
    pub clients: u32,
    /// Seconds of pgbench in the live CDC phase (0 skips it).
    pub live_secs: u32,
    pub keep: bool,
    /// The command as typed, for the report.
    pub command: String,
}

const COLUMNS: &str = "a int, b text, c timestamptz, d numeric(12,2)";
const PIPELINE: &str = "bench";
const SMALL_PIPELINE: &str = "bench_small";
const NATIVE_SUB: &str = "native_sub";
const NATIVE_PUB: &str = "native_pub";
/// The slot `pg_recvlogical` reads the CDC backlog from (no apply).
const DECODE_SLOT: &str = "bench_decode";
/// Ferry's slot for [`PIPELINE`].
const FERRY_SLOT: &str = "ferry_bench";
/// PostgreSQL's `wal_retrieve_retry_interval` default.
const LAUNCHER_INTERVAL: Duration = Duration::from_secs(5);

fn ddl(with_key: bool) -> String {
    if with_key {
        format!("CREATE TABLE t (id bigint PRIMARY KEY, {COLUMNS})")
    } else {
        format!("CREATE TABLE t (id bigint NOT NULL, {COLUMNS})")
    }
}

/// The source rows: `b` has 40–60 characters, one `c` in 20 is NULL, `d`
/// spans 0–99,999.99. About 100 bytes per row on the wire and in the heap.
fn fill_sql(rows: u64) -> String {
    format!(
        "INSERT INTO t SELECT g, ((g * 2654435761) % 1000000000)::int, \
           left(md5(g::text) || md5((g + 1)::text), 40 + (g % 21)::int), \
           CASE WHEN g % 20 = 0 THEN NULL \
                ELSE timestamptz '2020-01-01 00:00:00+00' + ((g * 7919) % 180000000) * interval '1 second' END, \
           ((g * 7) % 10000000) / 100.0 \
         FROM generate_series(1::bigint, {rows}) g"
    )
}

/// Waits for `cond`, polling every [`process::POLL`]; returns when it held.
fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Res<bool>) -> Res<Instant> {
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

/// Generous: a stuck method fails the run instead of hanging it.
pub(crate) fn timeout_for(units: u64, per_unit: Duration) -> Duration {
    Duration::from_secs(60) + per_unit * u32::try_from(units).unwrap_or(u32::MAX)
}

/// A child process killed if dropped while running (error paths).
pub(crate) struct Guarded(Option<Child>);

impl Guarded {
    pub(crate) fn new(child: Child) -> Guarded {
        Guarded(Some(child))
    }

    pub(crate) fn child(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .expect("a guarded child is present until taken")
    }

    fn into_inner(mut self) -> Child {
        self.0
            .take()
            .expect("a guarded child is present until taken")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && let Ok(None) = c.try_wait()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The table's fingerprint: `count(*), sum(a), sum(length(b)), sum(d)`;
/// an error if the table has no primary key.
fn fingerprint(c: &Cluster, db: &str) -> Res<String> {
    let mut client = c.connect(db)?;
    let pk = client
        .value(
            "SELECT count(*) FROM pg_constraint \
             WHERE conrelid = to_regclass('public.t') AND contype = 'p'",
        )?
        .unwrap_or_default();
    if pk != "1" {
        return Err(format!(
            "table t in {db} on the {} cluster has no primary key",
            c.name
        ));
    }
    client
        .value(
            "SELECT count(*) || ' rows, sum(a) ' || coalesce(sum(a), 0) \
                 || ', sum(length(b)) ' || coalesce(sum(length(b)), 0) \
                 || ', sum(d) ' || coalesce(sum(d), 0)::numeric(24, 2) FROM t",
        )?
        .ok_or_else(|| "no fingerprint".into())
}

fn guard(what: &str, expected: &str, c: &Cluster, db: &str) -> Res<()> {
    let got = fingerprint(c, db).ctx(|| format!("checking {what}"))?;
    if got != expected {
        return Err(format!(
            "{what}: the target differs from the source\n  source: {expected}\n  target: {got}"
        ));
    }
    eprintln!("   guard passed: {got}, primary key present");
    Ok(())
}

/// The tools and the two clusters.
struct Bench {
    /// When the native subscription's apply worker was last asked for
    /// (CREATE SUBSCRIPTION, ENABLE): the launcher starts workers at most
    /// once per `wal_retrieve_retry_interval` (5 s).
    native_launch: std::cell::Cell<Option<Instant>>,
    pg_bin: PathBuf,
    ferry: PathBuf,
    work: PathBuf,
    src: Cluster,
    dst: Cluster,
}

impl Bench {
    fn tool(&self, name: &str) -> Command {
        Command::new(self.pg_bin.join(name))
    }

    fn psql(&self, c: &Cluster, db: &str, sql: &str) -> Command {
        let mut cmd = self.tool("psql");
        cmd.args(c.psql_args(db)).args(["-c", sql]);
        cmd
    }

    /// `producer | consumer`, both required to succeed.
    fn pipe(&self, mut producer: Command, mut consumer: Command, what: &str) -> Res<()> {
        let mut p = Guarded::new(
            producer
                .stdout(Stdio::piped())
                .spawn()
                .ctx(|| format!("starting the producer of {what}"))?,
        );
        let out = p.child().stdout.take().ok_or("no stdout")?;
        // The consumer's output (`pg_dump`'s `set_config` results) would
        // land in the report on stdout.
        let loaded = consumer
            .stdin(out)
            .stdout(Stdio::null())
            .status()
            .ctx(|| format!("running the consumer of {what}"))?;
        let produced = p.child().wait().ctx(|| format!("waiting for {what}"))?;
        if !produced.success() || !loaded.success() {
            return Err(format!(
                "{what} failed: producer {produced}, consumer {loaded}"
            ));
        }
        Ok(())
    }

    fn fresh_db(&self, db: &str, table: Option<bool>) -> Res<()> {
        self.dst.drop_database(db)?;
        self.dst.create_database(db)?;
        if let Some(with_key) = table {
            self.dst.connect(db)?.exec(&ddl(with_key))?;
        }
        // Each method starts without dirty buffers of the previous one, and
        // without its dirty pages in the OS: the kernel's writeback of
        // earlier methods' gigabytes would otherwise slow whichever method
        // runs later.
        self.dst.checkpoint()?;
        self.src.checkpoint()?;
        sync_os()
    }

    /// The binary COPY pipe into `db`; with `key_after`, into a table
    /// without key and `ALTER TABLE t ADD PRIMARY KEY (id)` after.
    fn copy_pipe(&self, db: &str, key_after: bool) -> Res<(f64, (f64, f64))> {
        self.fresh_db(db, Some(!key_after))?;
        let cpu = ClusterCpu::start(&self.src, &self.dst)?;
        let t = Instant::now();
        self.pipe(
            self.psql(&self.src, "src", "COPY t TO STDOUT (FORMAT binary)"),
            self.psql(&self.dst, db, "COPY t FROM STDIN (FORMAT binary)"),
            "the binary COPY pipe",
        )?;
        if key_after {
            let st = self
                .psql(&self.dst, db, "ALTER TABLE t ADD PRIMARY KEY (id)")
                .stdout(Stdio::null())
                .status()
                .ctx(|| "running psql".into())?;
            if !st.success() {
                return Err(format!("ALTER TABLE t ADD PRIMARY KEY failed: {st}"));
            }
        }
        let secs = t.elapsed().as_secs_f64();
        Ok((secs, cpu.stop(&self.src, &self.dst)?))
    }

    /// `pg_dump -t public.t src | psql` into an empty database.
    fn dump_pipe(&self, db: &str) -> Res<f64> {
        self.fresh_db(db, None)?;
        let t = Instant::now();
        let mut dump = self.tool("pg_dump");
        dump.args(self.src.conn_args())
            .args(["-t", "public.t", "src"]);
        let mut load = self.tool("psql");
        load.args(self.dst.psql_args(db));
        self.pipe(dump, load, "pg_dump | psql")?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// `pgcopydb clone` of table t into an empty database. Timed until the
    /// target's primary key is there (the table is copied before its
    /// indexes are built); the process's own end (after its VACUUM
    /// ANALYZE of the target) is returned too.
    fn pgcopydb(&self, db: &str, rows: u64) -> Res<(f64, f64)> {
        self.fresh_db(db, None)?;
        let dir = self.work.join("pgcopydb");
        let _ = std::fs::remove_dir_all(&dir);
        let filters = self.work.join("pgcopydb-filters.ini");
        std::fs::write(&filters, "[include-only-table]\npublic.t\n")
            .ctx(|| "writing the pgcopydb filters".into())?;
        let log_path = self.work.join("pgcopydb.log");
        let log = std::fs::File::create(&log_path).ctx(|| "creating pgcopydb.log".into())?;
        let err = log.try_clone().ctx(|| "log handle".into())?;
        let mut probe = self.dst.connect(db)?;
        let path = path_with_server_bin(&self.pg_bin);
        let t = Instant::now();
        let mut child = Guarded::new(
            Command::new("pgcopydb")
                .arg("clone")
                .args(["--source", &self.src.url("src")])
                .args(["--target", &self.dst.url(db)])
                .arg("--dir")
                .arg(&dir)
                .args(["--table-jobs", "2", "--index-jobs", "2"])
                .arg("--filters")
                .arg(&filters)
                .args(["--no-owner", "--no-acl"])
                .env("PATH", path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .ctx(|| "starting pgcopydb (apt-get install -y pgcopydb)".into())?,
        );
        let mut key_at = None;
        let timeout = timeout_for(rows, Duration::from_micros(50));
        let exit = loop {
            if key_at.is_none() && has_pk(&mut probe)? {
                key_at = Some(t.elapsed().as_secs_f64());
            }
            if let Some(st) = child
                .child()
                .try_wait()
                .ctx(|| "waiting for pgcopydb".into())?
            {
                break st;
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "pgcopydb did not finish within {timeout:?}; see {}",
                    log_path.display()
                ));
            }
            std::thread::sleep(process::POLL);
        };
        let total = t.elapsed().as_secs_f64();
        if !exit.success() {
            return Err(format!(
                "pgcopydb clone failed ({exit}); see {}",
                log_path.display()
            ));
        }
        let key = match key_at {
            Some(k) => k,
            None if has_pk(&mut probe)? => total,
            None => return Err("pgcopydb finished but t has no primary key".into()),
        };
        Ok((key, total))
    }

    /// Native logical replication with `copy_data = true` into a table
    /// created with its key: from `CREATE SUBSCRIPTION` until t is `r`eady.
    /// The subscription is then disabled (kept for the CDC phase).
    fn native_snapshot(&self, db: &str, rows: u64) -> Res<f64> {
        self.fresh_db(db, Some(true))?;
        let mut src = self.src.connect("src")?;
        src.exec(&format!("CREATE PUBLICATION {NATIVE_PUB} FOR TABLE t"))?;
        let mut dst = self.dst.connect(db)?;
        let t = Instant::now();
        self.native_launch.set(Some(t));
        dst.exec(&format!(
            "CREATE SUBSCRIPTION {NATIVE_SUB} CONNECTION '{}' PUBLICATION {NATIVE_PUB} \
             WITH (copy_data = true)",
            self.src.conninfo("src")
        ))?;
        let done = poll_until(
            "the native subscription's table sync (srsubstate = 'r')",
            timeout_for(rows, Duration::from_micros(50)),
            || {
                Ok(dst
                    .value(
                        "SELECT srsubstate FROM pg_subscription_rel \
                         WHERE srrelid = 'public.t'::regclass",
                    )?
                    .as_deref()
                    == Some("r"))
            },
        )?;
        let secs = done.duration_since(t).as_secs_f64();
        self.native_disable(&mut dst)?;
        Ok(secs)
    }

    /// Disables the native subscription and waits until its slot on the
    /// source is no longer in use.
    fn native_disable(&self, dst: &mut Client) -> Res<()> {
        dst.exec(&format!("ALTER SUBSCRIPTION {NATIVE_SUB} DISABLE"))?;
        let mut src = self.src.connect("src")?;
        poll_until(
            "the native subscription's slot to be released",
            Duration::from_secs(60),
            || {
                Ok(src
                    .value(&format!(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = '{NATIVE_SUB}'"
                    ))?
                    .as_deref()
                    == Some("f"))
            },
        )?;
        Ok(())
    }

    fn write_pipeline(&self, name: &str, src_db: &str, dst_db: &str) -> Res<PathBuf> {
        let path = self.work.join(format!("{name}.toml"));
        let text = format!(
            "# written by cargo xtask bench postgres: ferry's defaults, one table\n\
             name = \"{name}\"\n\n[source]\nurl = \"{}\"\n\n[target]\nurl = \"{}\"\n\n\
             [tables]\ninclude = [\"public.t\"]\n",
            self.src.url(src_db),
            self.dst.url(dst_db)
        );
        std::fs::write(&path, text).ctx(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `ferry run` into a fresh database until the checkpoint records t
    /// copied (and its key is built); then peak RSS, SIGTERM, exit 0.
    /// Also returns the CPU both clusters used meanwhile (source, target).
    fn ferry_snapshot(
        &self,
        name: &str,
        src_db: &str,
        db: &str,
        rows: u64,
    ) -> Res<(FerryRun, (f64, f64))> {
        self.fresh_db(db, None)?;
        let pipeline = self.write_pipeline(name, src_db, db)?;
        let log = self.work.join(format!("{name}.log"));
        let mut probe = self.dst.connect(db)?;
        let copied = format!(
            "SELECT EXISTS (SELECT 1 FROM public._ferry_checkpoint WHERE pipeline = '{name}' \
               AND scope = 'table:public.t' AND value LIKE 't:6:copied%') \
             AND EXISTS (SELECT 1 FROM pg_constraint \
               WHERE conrelid = to_regclass('public.t') AND contype = 'p')"
        );
        let cpu = ClusterCpu::start(&self.src, &self.dst)?;
        let mut ferry = Ferry::start(&self.ferry, &pipeline, &log)?;
        let done = ferry.wait_for(
            "the snapshot of t to be recorded complete",
            timeout_for(rows, Duration::from_micros(50)),
            || match probe.try_query(&copied)? {
                Ok(rows) => Ok(rows.first().and_then(|r| r[0].as_deref()) == Some("t")),
                // The checkpoint table is not there yet.
                Err(e) if e.code == "42P01" => Ok(false),
                Err(e) => Err(format!("polling ferry's checkpoint: {}", e.message)),
            },
        )?;
        let clusters = cpu.stop(&self.src, &self.dst)?;
        let run = FerryRun {
            secs: done.duration_since(ferry.started).as_secs_f64(),
            rss_kib: ferry.peak_rss_kib()?,
            cpu_secs: ferry.cpu_secs()?,
        };
        ferry.stop()?;
        Ok((run, clusters))
    }
}

fn has_pk(c: &mut Client) -> Res<bool> {
    Ok(c.value(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass('public.t') AND contype = 'p'",
    )?
    .as_deref()
        == Some("1"))
}

/// ferry's applied position in the target (`ferry.pos.v1 postgres
/// <commit_lsn> <lsn>`): `lsn`, the end of the last applied transaction.
fn ferry_applied(c: &mut Client, pipeline: &str) -> Res<Option<u64>> {
    let sql = format!(
        "SELECT value FROM public._ferry_checkpoint WHERE pipeline = '{pipeline}' AND scope = 'applied'"
    );
    let value = match c.try_query(&sql)? {
        Ok(rows) => rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()),
        Err(e) if e.code == "42P01" => None,
        Err(e) => return Err(format!("reading ferry's applied position: {}", e.message)),
    };
    let Some(value) = value else {
        return Ok(None);
    };
    match value.split(' ').collect::<Vec<_>>().as_slice() {
        ["ferry.pos.v1", "postgres", _commit, lsn] => parse_lsn(lsn).map(Some),
        _ => Err(format!(
            "applied position {value:?} is not `ferry.pos.v1 postgres <commit_lsn> <lsn>`: \
             the checkpoint format changed; update xtask"
        )),
    }
}

/// The native subscription's applied position: its replication origin's
/// `remote_lsn` on the target, the end of the last applied remote commit
/// (updated at each commit, unlike the slot's `confirmed_flush_lsn`, which
/// follows the subscriber's periodic feedback).
fn native_applied(c: &mut Client) -> Res<Option<u64>> {
    c.value(&format!(
        "SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = \
           'pg_' || (SELECT oid FROM pg_subscription WHERE subname = '{NATIVE_SUB}')"
    ))?
    .map(|s| parse_lsn(&s))
    .transpose()
}

/// Ends the change stream with a known point: the source's WAL insert
/// position `m`, then one no-op change to t committed after it. Every
/// earlier transaction ends at or before `m`; an applier whose position is
/// past `m` has applied all of them. Returns `m`.
impl Bench {
    /// Reads the backlog from [`DECODE_SLOT`] with `pg_recvlogical` (pgoutput,
    /// binary, ferry's publication) to `/dev/null` until the end marker;
    /// returns the seconds from its start to its exit and drops the slot.
    fn decode_only(&self, marker: u64, timeout: Duration) -> Res<(f64, Option<f64>)> {
        let endpos = format!("{:X}/{:X}", marker >> 32, marker & 0xffff_ffff);
        let mut cmd = self.tool("pg_recvlogical");
        cmd.args(self.src.conn_args())
            .args([
                "-d",
                "src",
                "-S",
                DECODE_SLOT,
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args([
                "-E",
                &endpos,
                "-o",
                "proto_version=1",
                "-o",
                "binary=true",
                "-o",
            ])
            .arg(format!("publication_names=ferry_{PIPELINE}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut probe = self.src.connect("src")?;
        let mut walsender = Walsender::new(DECODE_SLOT);
        let t = Instant::now();
        let mut child = cmd.spawn().ctx(|| "starting pg_recvlogical".into())?;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .ctx(|| "waiting for pg_recvlogical".into())?
            {
                break status;
            }
            walsender.sample(&mut probe)?;
            if t.elapsed() > timeout {
                let _ = child.kill();
                return Err("pg_recvlogical did not reach the end marker in time".into());
            }
            std::thread::sleep(process::POLL);
        };
        let secs = t.elapsed().as_secs_f64();
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!("pg_recvlogical failed ({status}): {err}"));
        }
        probe.exec(&format!("SELECT pg_drop_replication_slot('{DECODE_SLOT}')"))?;
        Ok((secs, walsender.cpu_secs))
    }
}

/// The CPU time of the walsender serving `slot` on the source, sampled at
/// each poll: its process starts with the stream, so the last sample is
/// about what decoding and sending the stream cost the source.
struct Walsender {
    slot: &'static str,
    pid: Option<u32>,
    cpu_secs: Option<f64>,
}

impl Walsender {
    fn new(slot: &'static str) -> Self {
        Walsender {
            slot,
            pid: None,
            cpu_secs: None,
        }
    }

    fn sample(&mut self, src: &mut Client) -> Res<()> {
        if self.pid.is_none() {
            self.pid = src
                .value(&format!(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
                    self.slot
                ))?
                .and_then(|p| p.parse().ok());
        }
        if let Some(pid) = self.pid
            && let Ok(cpu) = process::cpu_secs_of(pid)
        {
            self.cpu_secs = Some(cpu);
        }
        Ok(())
    }
}

/// CPU used by both clusters over a phase: (source, target) seconds.
struct ClusterCpu(f64, f64);

impl ClusterCpu {
    fn start(src: &Cluster, dst: &Cluster) -> Res<Self> {
        Ok(ClusterCpu(src.cpu_secs()?, dst.cpu_secs()?))
    }

    fn stop(self, src: &Cluster, dst: &Cluster) -> Res<(f64, f64)> {
        Ok((src.cpu_secs()? - self.0, dst.cpu_secs()? - self.1))
    }
}

fn end_marker(src: &mut Client) -> Res<u64> {
    let m = src
        .value("SELECT pg_current_wal_insert_lsn()")?
        .ok_or("no WAL position")?;
    src.exec("UPDATE t SET a = a WHERE id = 1")?;
    parse_lsn(&m)
}

impl Bench {
    /// pgbench with the update script: `-t` transactions per client, or
    /// `-T` seconds. Returns the command, not yet started.
    fn pgbench(&self, opts: &PgOpts, per_client: Option<u64>, secs: Option<u32>) -> Res<Command> {
        let script = self.work.join("update.sql");
        std::fs::write(
            &script,
            "\\set id random(1, :rows)\nUPDATE t SET a = a + 1 WHERE id = :id;\n",
        )
        .ctx(|| "writing update.sql".into())?;
        let mut cmd = self.tool("pgbench");
        cmd.args(["-n", "-c", &opts.clients.to_string()])
            .args(["-j", &opts.clients.min(2).to_string()]);
        if let Some(t) = per_client {
            cmd.args(["-t", &t.to_string()]);
        }
        if let Some(s) = secs {
            cmd.args(["-T", &s.to_string()]);
        }
        cmd.arg("-f")
            .arg(&script)
            .args(["-D", &format!("rows={}", opts.rows)])
            .args(["-h", "127.0.0.1", "-p", &self.src.port.to_string()])
            .args(["-U", "postgres", "src"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }
}

fn pgbench_output(child: Child, started: Instant) -> Res<Pgbench> {
    let out = child
        .wait_with_output()
        .ctx(|| "waiting for pgbench".into())?;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_pgbench(&text, secs)
}

/// `$PATH` with the server's binaries first: pgcopydb runs `pg_dump` and
/// `pg_restore` found there, and those must match the server.
pub(crate) fn path_with_server_bin(pg_bin: &Path) -> String {
    format!(
        "{}:{}",
        pg_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A work directory, removed at the end unless `--keep` or an error.
pub(crate) fn work_dir() -> Res<PathBuf> {
    let path = std::env::temp_dir().join(format!("ferry-bench-pg-{}", std::process::id()));
    if path.exists() {
        std::fs::remove_dir_all(&path).ctx(|| format!("clearing {}", path.display()))?;
    }
    std::fs::create_dir_all(&path).ctx(|| format!("creating {}", path.display()))?;
    Ok(path)
}

pub(crate) fn pgcopydb_version() -> String {
    Command::new("pgcopydb")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.split_whitespace()
                .skip_while(|w| *w != "version")
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(opts: &PgOpts) -> Res<()> {
    let pg_bin = pg_server::bin_dir()?;
    pg_server::check_tools(&pg_bin)?;
    let root = process::workspace_root();
    let commit = machine::git_commit(&root);
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
        let bench = Bench {
            native_launch: Default::default(),
            pg_bin: pg_bin.clone(),
            ferry,
            work: work.clone(),
            src,
            dst,
        };
        let results = measure(opts, &bench, commit);
        // Stop the servers before the report (the drop guard would too).
        let Bench { src, dst, .. } = bench;
        let stopped = src.stop().and(dst.stop());
        let results = results?;
        stopped?;
        Ok::<Results, String>(results)
    })();
    match result {
        Ok(results) => {
            println!("{}", results.markdown());
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

/// The source table in `db`: rows loaded, key built, `VACUUM ANALYZE`.
/// Returns (average row size in bytes, heap size in MiB).
pub(crate) fn create_source(src: &Cluster, db: &str, rows: u64) -> Res<(f64, f64)> {
    src.create_database(db)?;
    let mut c = src.connect(db)?;
    c.exec(&ddl(false))?;
    c.exec(&fill_sql(rows))?;
    c.exec("ALTER TABLE t ADD PRIMARY KEY (id)")?;
    c.exec("VACUUM ANALYZE t")?;
    let row_bytes: f64 = c
        .value("SELECT avg(pg_column_size(t.*)) FROM t TABLESAMPLE SYSTEM (1) REPEATABLE (1)")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let heap: f64 = c
        .value("SELECT pg_relation_size('t')")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    src.checkpoint()?;
    Ok((row_bytes, heap / 1024.0 / 1024.0))
}

fn measure(opts: &PgOpts, b: &Bench, commit: String) -> Res<Results> {
    let rows = opts.rows;
    eprintln!("== creating the source: {} rows", thousands(rows));
    let t = Instant::now();
    let (bytes_per_row, table_mib) = create_source(&b.src, "src", rows)?;
    let fp = fingerprint(&b.src, "src")?;
    eprintln!(
        "   {:.1} s; {bytes_per_row:.0} bytes/row, heap {table_mib:.0} MiB; {fp}",
        t.elapsed().as_secs_f64()
    );

    let report = |what: &str, secs: f64| {
        eprintln!("   {what}: {secs:.2} s ({} rows/s)", rate(rows, secs));
    };
    eprintln!("== snapshot: binary COPY pipe into a table with its key");
    let (pipe_key_first, _) = b.copy_pipe("pipe_key_first", false)?;
    report("binary COPY pipe, key first", pipe_key_first);
    guard(
        "the binary COPY pipe (key first)",
        &fp,
        &b.dst,
        "pipe_key_first",
    )?;
    b.dst.drop_database("pipe_key_first")?;

    eprintln!("== snapshot: binary COPY pipe into a table without key, then ADD PRIMARY KEY");
    let (pipe_key_after, pipe_key_after_cpu) = b.copy_pipe("pipe_key_after", true)?;
    report("binary COPY pipe, key after", pipe_key_after);
    guard(
        "the binary COPY pipe (key after)",
        &fp,
        &b.dst,
        "pipe_key_after",
    )?;
    b.dst.drop_database("pipe_key_after")?;

    eprintln!("== snapshot: pg_dump -t t | psql");
    let dump = b.dump_pipe("dump")?;
    report("pg_dump | psql", dump);
    guard("pg_dump | psql", &fp, &b.dst, "dump")?;
    b.dst.drop_database("dump")?;

    eprintln!("== snapshot: pgcopydb clone --table-jobs 2 --index-jobs 2");
    let (pgcopydb_key, pgcopydb_total) = b.pgcopydb("pgcopydb", rows)?;
    report("pgcopydb (until the key exists)", pgcopydb_key);
    eprintln!("   pgcopydb exited after {pgcopydb_total:.2} s");
    guard("pgcopydb clone", &fp, &b.dst, "pgcopydb")?;
    b.dst.drop_database("pgcopydb")?;

    eprintln!("== snapshot: native logical replication, copy_data = true");
    let native = b.native_snapshot("native", rows)?;
    report("native logical replication", native);
    guard("native logical replication", &fp, &b.dst, "native")?;

    eprintln!("== snapshot: ferry");
    let (ferry, ferry_snapshot_cpu) = b.ferry_snapshot(PIPELINE, "src", "ferry", rows)?;
    report("ferry", ferry.secs);
    eprintln!("   ferry peak RSS {}", mib(ferry.rss_kib));
    guard("the ferry snapshot", &fp, &b.dst, "ferry")?;

    // CDC backlog: the same single-row UPDATE transactions for both, made
    // while the native subscription is disabled and ferry is stopped.
    let clients = u64::from(opts.clients);
    let per_client = (opts.changes / clients).max(1);
    eprintln!(
        "== CDC backlog: pgbench, {} clients × {} single-row UPDATE transactions (both appliers stopped)",
        opts.clients,
        thousands(per_client)
    );
    // A third slot, for reading the same backlog without applying it.
    b.src.connect("src")?.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{DECODE_SLOT}', 'pgoutput')"
    ))?;
    let started = Instant::now();
    let child = b
        .pgbench(opts, Some(per_client), None)?
        .spawn()
        .ctx(|| "starting pgbench".into())?;
    let backlog = pgbench_output(child, started)?;
    eprintln!(
        "   pgbench: {} transactions in {:.2} s ({:.0} tps)",
        thousands(backlog.transactions),
        backlog.secs,
        backlog.tps
    );
    let mut src = b.src.connect("src")?;
    let marker = end_marker(&mut src)?;
    let fp_cdc = fingerprint(&b.src, "src")?;
    b.src.checkpoint()?;
    b.dst.checkpoint()?;
    sync_os()?;
    let timeout = timeout_for(backlog.transactions, Duration::from_millis(1));

    eprintln!("== CDC backlog: native logical replication (ALTER SUBSCRIPTION … ENABLE)");
    // Not to time the launcher's pause between two starts of a worker.
    if let Some(last) = b.native_launch.get() {
        let quiet = LAUNCHER_INTERVAL + Duration::from_millis(500);
        if let Some(rest) = quiet.checked_sub(last.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let mut native_dst = b.dst.connect("native")?;
    let mut native_src = b.src.connect("src")?;
    let mut native_walsender = Walsender::new(NATIVE_SUB);
    let native_cpu = ClusterCpu::start(&b.src, &b.dst)?;
    let t = Instant::now();
    b.native_launch.set(Some(t));
    native_dst.exec(&format!("ALTER SUBSCRIPTION {NATIVE_SUB} ENABLE"))?;
    let mut worker_at = None;
    let done = poll_until(
        "native logical replication to apply the backlog",
        timeout,
        || {
            if worker_at.is_none()
                && native_dst
                    .value(&format!(
                        "SELECT pid IS NOT NULL FROM pg_stat_subscription \
                         WHERE subname = '{NATIVE_SUB}' AND relid IS NULL"
                    ))?
                    .as_deref()
                    == Some("t")
            {
                worker_at = Some(t.elapsed().as_secs_f64());
            }
            native_walsender.sample(&mut native_src)?;
            Ok(native_applied(&mut native_dst)?.is_some_and(|l| l > marker))
        },
    )?;
    let native_secs = done.duration_since(t).as_secs_f64();
    let native_cpu = native_cpu.stop(&b.src, &b.dst)?;
    let native_worker_secs = worker_at.unwrap_or(f64::NAN);
    eprintln!(
        "   native: {native_secs:.2} s ({} rows/s); its apply worker was running {native_worker_secs:.2} s after ENABLE",
        rate(backlog.transactions, native_secs)
    );
    b.native_disable(&mut native_dst)?;
    drop(native_dst);
    guard(
        "native logical replication's CDC",
        &fp_cdc,
        &b.dst,
        "native",
    )?;

    eprintln!("== CDC backlog: pg_recvlogical reading it to /dev/null (no apply)");
    let (decode_secs, decode_walsender) = b.decode_only(marker, timeout)?;
    eprintln!(
        "   pg_recvlogical: {decode_secs:.2} s ({} rows/s)",
        rate(backlog.transactions, decode_secs)
    );

    eprintln!("== CDC backlog: ferry");
    b.dst.checkpoint()?;
    sync_os()?;
    let pipeline = b.work.join(format!("{PIPELINE}.toml"));
    let log = b.work.join(format!("{PIPELINE}.log"));
    let mut probe = b.dst.connect("ferry")?;
    let mut ferry_src = b.src.connect("src")?;
    let mut ferry_walsender = Walsender::new(FERRY_SLOT);
    let ferry_cpu = ClusterCpu::start(&b.src, &b.dst)?;
    let mut f = Ferry::start(&b.ferry, &pipeline, &log)?;
    let done = f.wait_for("ferry to apply the backlog", timeout, || {
        ferry_walsender.sample(&mut ferry_src)?;
        Ok(ferry_applied(&mut probe, PIPELINE)?.is_some_and(|l| l > marker))
    })?;
    let ferry_cluster_cpu = ferry_cpu.stop(&b.src, &b.dst)?;
    let ferry_cdc = FerryRun {
        secs: done.duration_since(f.started).as_secs_f64(),
        rss_kib: f.peak_rss_kib()?,
        cpu_secs: f.cpu_secs()?,
    };
    f.stop()?;
    eprintln!(
        "   ferry: {:.2} s ({} rows/s), peak RSS {}",
        ferry_cdc.secs,
        rate(backlog.transactions, ferry_cdc.secs),
        mib(ferry_cdc.rss_kib)
    );
    guard("ferry's CDC", &fp_cdc, &b.dst, "ferry")?;

    let live = if opts.live_secs > 0 {
        Some(live(opts, b, &mut src, &mut probe, &pipeline, &log)?)
    } else {
        None
    };

    let small_rows = (rows / 2).max(1);
    eprintln!(
        "== RSS check: ferry snapshot of {} rows",
        thousands(small_rows)
    );
    create_source(&b.src, "src_small", small_rows)?;
    let fp_small = fingerprint(&b.src, "src_small")?;
    let (small, _) = b.ferry_snapshot(SMALL_PIPELINE, "src_small", "ferry_small", small_rows)?;
    eprintln!(
        "   ferry: {:.2} s ({} rows/s), peak RSS {}",
        small.secs,
        rate(small_rows, small.secs),
        mib(small.rss_kib)
    );
    guard(
        "the ferry snapshot of rows/2",
        &fp_small,
        &b.dst,
        "ferry_small",
    )?;

    Ok(Results {
        opts: opts.clone(),
        bytes_per_row,
        table_mib,
        source_fingerprint: fp,
        snap: Snapshots {
            pipe_key_first,
            pipe_key_after,
            dump,
            pgcopydb_key,
            pgcopydb_total,
            native,
            ferry,
            cluster_cpu: [pipe_key_after_cpu, ferry_snapshot_cpu],
            small_rows,
            small,
        },
        cdc: Cdc {
            backlog,
            native_secs,
            native_worker_secs,
            decode_secs,
            walsender_cpu: [
                native_walsender.cpu_secs,
                decode_walsender,
                ferry_walsender.cpu_secs,
            ],
            cluster_cpu: [native_cpu, ferry_cluster_cpu],
            ferry: ferry_cdc,
        },
        live,
        machine: Machine::read().line(),
        postgres: pg_server::server_version(&b.pg_bin),
        pgcopydb: pgcopydb_version(),
        commit,
    })
}

/// Lag samples: a source WAL position taken at a moment, resolved when a
/// follower's position passes it.
struct LagTracker {
    pending: std::collections::VecDeque<(Instant, u64)>,
    /// (seconds since pgbench's start, lag), in sample order.
    samples: Vec<(f64, f64)>,
}

impl LagTracker {
    fn new() -> LagTracker {
        LagTracker {
            pending: Default::default(),
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, at: Instant, lsn: u64) {
        self.pending.push_back((at, lsn));
    }

    fn resolve(&mut self, reached: u64, started: Instant) {
        let now = Instant::now();
        while let Some(&(at, lsn)) = self.pending.front() {
            if lsn > reached {
                break;
            }
            self.samples.push((
                at.saturating_duration_since(started).as_secs_f64(),
                now.duration_since(at).as_secs_f64(),
            ));
            self.pending.pop_front();
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|s| s.1).collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// The position ferry's walsender has sent (decoded) up to.
fn ferry_sent(src: &mut Client) -> Res<Option<u64>> {
    src.value(&format!(
        "SELECT r.sent_lsn FROM pg_stat_replication r \
           JOIN pg_replication_slots s ON s.active_pid = r.pid \
         WHERE s.slot_name = 'ferry_{PIPELINE}'"
    ))?
    .map(|s| parse_lsn(&s))
    .transpose()
}

/// pgbench for `--live-secs` with ferry running. Every poll (20 ms) samples
/// the source's flushed WAL position; a sample's lag is the time until
/// ferry's applied position passed it. The same samples against the
/// position ferry's walsender has sent show how much of that lag is the
/// source's decoding.
fn live(
    opts: &PgOpts,
    b: &Bench,
    src: &mut Client,
    probe: &mut Client,
    pipeline: &Path,
    log: &Path,
) -> Res<Live> {
    eprintln!(
        "== CDC live: pgbench for {} s, {} clients, ferry running",
        opts.live_secs, opts.clients
    );
    let mut f = Ferry::start(&b.ferry, pipeline, log)?;
    // One change applied first, so ferry is known to be streaming.
    let warm = end_marker(src)?;
    f.wait_for(
        "ferry to stream (a first change applied)",
        Duration::from_secs(120),
        || Ok(ferry_applied(probe, PIPELINE)?.is_some_and(|l| l > warm)),
    )?;
    let (mut applied_lag, mut sent_lag) = (LagTracker::new(), LagTracker::new());
    let started = Instant::now();
    let mut bench = Guarded::new(
        b.pgbench(opts, None, Some(opts.live_secs))?
            .spawn()
            .ctx(|| "starting pgbench".into())?,
    );
    f.wait_for(
        "pgbench to finish",
        Duration::from_secs(u64::from(opts.live_secs) + 120),
        || {
            let at = Instant::now();
            let lsn = src
                .value("SELECT pg_current_wal_flush_lsn()")?
                .ok_or("no WAL position")?;
            let lsn = parse_lsn(&lsn)?;
            applied_lag.sample(at, lsn);
            sent_lag.sample(at, lsn);
            if let Some(sent) = ferry_sent(src)? {
                sent_lag.resolve(sent, started);
            }
            applied_lag.resolve(ferry_applied(probe, PIPELINE)?.unwrap_or(0), started);
            Ok(bench
                .child()
                .try_wait()
                .ctx(|| "waiting for pgbench".into())?
                .is_some())
        },
    )?;
    let writer_done = Instant::now();
    let writer = pgbench_output(bench.into_inner(), started)?;
    let marker = end_marker(src)?;
    let done = f.wait_for(
        "ferry to catch up after pgbench",
        timeout_for(writer.transactions, Duration::from_millis(1)),
        || {
            if let Some(sent) = ferry_sent(src)? {
                sent_lag.resolve(sent, started);
            }
            let applied = ferry_applied(probe, PIPELINE)?.unwrap_or(0);
            applied_lag.resolve(applied, started);
            Ok(applied > marker)
        },
    )?;
    let rss_kib = f.peak_rss_kib()?;
    let cpu_secs = f.cpu_secs()?;
    f.stop()?;
    let csv_path = b.work.join("live-lag.csv");
    let mut csv =
        String::from("seconds_since_pgbench_start,applied_lag_seconds,sent_lag_seconds\n");
    for (i, (at, lag)) in applied_lag.samples.iter().enumerate() {
        let sent = sent_lag
            .samples
            .get(i)
            .map_or(String::new(), |s| format!("{:.3}", s.1));
        let _ = writeln!(csv, "{at:.3},{lag:.3},{sent}");
    }
    std::fs::write(&csv_path, csv).ctx(|| format!("writing {}", csv_path.display()))?;
    let result = Live {
        secs: done.duration_since(started).as_secs_f64(),
        catch_up_secs: done.duration_since(writer_done).as_secs_f64(),
        writer,
        lags: applied_lag.sorted(),
        sent_lags: sent_lag.sorted(),
        rss_kib,
        cpu_secs,
    };
    eprintln!(
        "   pgbench {} transactions ({:.0} tps); ferry caught up {:.2} s after it ({} rows/s overall); \
         lag p50 {:.3} s, p99 {:.3} s (walsender sent: p50 {:.3} s, p99 {:.3} s); peak RSS {}",
        thousands(result.writer.transactions),
        result.writer.tps,
        result.catch_up_secs,
        rate(result.writer.transactions, result.secs),
        percentile(&result.lags, 0.5),
        percentile(&result.lags, 0.99),
        percentile(&result.sent_lags, 0.5),
        percentile(&result.sent_lags, 0.99),
        mib(rss_kib)
    );
    let fp = fingerprint(&b.src, "src")?;
    guard("ferry's live CDC", &fp, &b.dst, "ferry")?;
    Ok(result)
}

/// `sync`: writes the OS's dirty pages out and waits for it.
pub(crate) fn sync_os() -> Res<()> {
    let status = Command::new("sync")
        .status()
        .ctx(|| "running sync".into())?;
    if !status.success() {
        return Err(format!("sync failed: {status}"));
    }
    Ok(())
}
