//! `cargo xtask bench gateway`: read latency of two `ferry gateway` nodes
//! under a write load (issue 15, item 7), beside the alternatives a user
//! has: reading the primary directly, and a PostgreSQL streaming replica
//! that waits for the primary's LSN before it reads.
//!
//! One primary, one streaming replica (`pg_basebackup -R`), two gateway
//! nodes. Each phase runs `--secs` with a writer at `--writes` single-row
//! UPDATEs per second and readers at `--reads` point reads per second in
//! an open loop: every read has a scheduled start, and its latency counts
//! from that start, so a stall delays the reads queued behind it as it
//! would a real client's (no coordinated omission). Reads alternate
//! between the two nodes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pg_client::{Client, parse_lsn};
use crate::pg_server::{self, Cluster};
use crate::{Ctx, Res};

#[derive(Debug, Clone)]
pub struct GwOpts {
    pub rows: u64,
    pub secs: u64,
    pub reads: u64,
    pub writes: u64,
    pub keep: bool,
    pub command: String,
}

/// Reader threads, each with its own connections: enough that a slow
/// read does not hold the schedule up at 4,000 reads/s.
const READERS: usize = 64;

/// What one phase measures.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Strong,
    Eventual,
    Primary,
    /// The streaming replica, after a `pg_current_wal_lsn()` on the primary
    /// per read, polling `pg_last_wal_replay_lsn()` until it passed it.
    ReplicaWait,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Strong => "gateway, strong (default)",
            Kind::Eventual => "gateway, eventual",
            Kind::Primary => "primary, direct `SELECT`",
            Kind::ReplicaWait => {
                "streaming replica, waits for the primary's LSN (a lookup per read)"
            }
        }
    }
}

/// A keep-alive HTTP/1.1 GET client over a plain socket.
struct Http {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Http {
    fn connect(port: u16) -> Res<Http> {
        let s = TcpStream::connect(("127.0.0.1", port)).ctx(|| format!("connecting to :{port}"))?;
        s.set_nodelay(true).ctx(|| "TCP_NODELAY".into())?;
        Ok(Http {
            reader: BufReader::new(s.try_clone().ctx(|| "socket clone".into())?),
            writer: s,
        })
    }

    /// Status and body.
    fn get(&mut self, path: &str) -> Res<(u16, String)> {
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .ctx(|| "sending a request".into())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .ctx(|| "reading the status".into())?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = 0;
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .ctx(|| "reading headers".into())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .ctx(|| "reading a body".into())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A number after `"key":` in a JSON text (enough for `/status`).
fn json_number(body: &str, key: &str) -> Option<f64> {
    let at = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &body[at..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))?;
    rest[..end].parse().ok()
}

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(bin: &Path, dir: &Path, primary: &Cluster, name: &str) -> Res<Node> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .ctx(|| "finding a free port".into())?
        .port();
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\n[source]\nurl = \"{}\"\n[gateway]\nlisten = \"127.0.0.1:{port}\"\n",
            primary.url("postgres")
        ),
    )
    .ctx(|| format!("writing {}", file.display()))?;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).ctx(|| "log file".into())?;
    let child = Command::new(bin)
        .arg("gateway")
        .arg(&file)
        .env("FERRY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().ctx(|| "log".into())?)
        .stderr(log)
        .spawn()
        .ctx(|| "starting ferry gateway".into())?;
    let node = Node { child, port };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok((200, body)) = Http::connect(port).and_then(|mut h| h.get("/status"))
            && body.contains("\"strong_reads\":\"served\"")
        {
            return Ok(node);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "gateway {name} did not get ready; see {}",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A streaming replica of `primary` on a port of its own.
struct Replica {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(tool: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(tool);
    c
}

fn run_ok(mut c: Command, what: &str) -> Res<()> {
    let out = c.output().ctx(|| format!("running {what}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn start_replica(bin: &Path, dir: &Path, primary: &Cluster) -> Res<Replica> {
    std::fs::create_dir_all(dir).ctx(|| "replica dir".into())?;
    run_ok(
        {
            let mut c = Command::new("chown");
            c.args(["postgres:postgres"]).arg(dir);
            c
        },
        "chown",
    )?;
    let data = dir.join("data");
    let mut c = as_postgres(&bin.join("pg_basebackup"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &primary.port.to_string(),
        "-U",
        "postgres",
        "-R",
        "-X",
        "stream",
        // A spread checkpoint can hold the copy for minutes.
        "--checkpoint=fast",
        "-D",
    ])
    .arg(&data)
    .current_dir(dir);
    run_ok(c, "pg_basebackup")?;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .ctx(|| "finding a free port".into())?
        .port();
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).ctx(|| "replica conf".into())?;
    text.push_str(&format!(
        "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
        dir.display()
    ));
    std::fs::write(&conf, text).ctx(|| "replica conf".into())?;
    let mut c = as_postgres(&bin.join("pg_ctl"));
    c.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "start"])
        .current_dir(dir);
    run_ok(c, "pg_ctl start (replica)")?;
    Ok(Replica {
        dir: dir.to_owned(),
        port,
    })
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(bin) = pg_server::bin_dir() {
            let mut c = as_postgres(&bin.join("pg_ctl"));
            c.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.output();
        }
    }
}

/// Latencies of one phase, in milliseconds, and the reads refused.
struct Phase {
    kind: Kind,
    rate: u64,
    latencies: Vec<f64>,
    errors: u64,
    lookups_per_sec: Option<f64>,
    /// The nodes' own account of the phase (strong reads).
    counted: Option<Counters>,
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs one phase: readers at `rate` reads/s of `kind`, while the writer
/// runs (it runs through every phase).
fn phase(
    kind: Kind,
    rate: u64,
    secs: u64,
    rows: u64,
    nodes: &[u16],
    primary: u16,
    replica: u16,
) -> Res<Phase> {
    let before = counters(nodes)?;
    let started = Instant::now() + Duration::from_millis(200);
    let total = rate * secs;
    let out = Arc::new(Mutex::new((Vec::with_capacity(total as usize), 0u64)));
    let mut threads = Vec::new();
    for t in 0..READERS {
        let out = out.clone();
        let nodes = nodes.to_vec();
        threads.push(std::thread::spawn(move || -> Res<()> {
            let mut http: Vec<Http> = nodes
                .iter()
                .map(|p| Http::connect(*p))
                .collect::<Res<_>>()?;
            let mut prim = Client::connect(primary, "postgres")?;
            let mut rep = Client::connect(replica, "postgres")?;
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
            let mut i = t as u64;
            while i < total {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = seed % rows;
                let ok = match kind {
                    Kind::Strong | Kind::Eventual => {
                        let c = if kind == Kind::Eventual {
                            "?consistency=eventual"
                        } else {
                            ""
                        };
                        let node = (i / READERS as u64) as usize % http.len();
                        http[node].get(&format!("/tables/kv/rows/{k}{c}"))?.0 == 200
                    }
                    Kind::Primary => prim
                        .query(&format!("SELECT k, v, pad FROM kv WHERE k = {k}"))
                        .is_ok(),
                    Kind::ReplicaWait => {
                        let at = parse_lsn(
                            &prim
                                .value("SELECT pg_current_wal_lsn()")?
                                .unwrap_or_default(),
                        )?;
                        loop {
                            let replayed = parse_lsn(
                                &rep.value("SELECT pg_last_wal_replay_lsn()")?
                                    .unwrap_or_default(),
                            )?;
                            if replayed >= at {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        rep.query(&format!("SELECT k, v, pad FROM kv WHERE k = {k}"))
                            .is_ok()
                    }
                };
                if ok {
                    lat.push(due.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors += 1;
                }
                i += READERS as u64;
            }
            let mut o = out.lock().expect("results");
            o.0.extend(lat);
            o.1 += errors;
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a reader thread panicked".to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counted = counters(nodes)?.since(before);
    let (mut latencies, errors) = std::mem::take(&mut *out.lock().expect("results"));
    latencies.sort_by(f64::total_cmp);
    let per_node = counted.lookups / nodes.len() as f64 / elapsed;
    let gateway = matches!(kind, Kind::Strong | Kind::Eventual);
    Ok(Phase {
        kind,
        rate,
        latencies,
        errors,
        lookups_per_sec: gateway.then_some(per_node),
        counted: (kind == Kind::Strong).then_some(counted),
    })
}

/// The nodes' counters (`/status`), summed over the nodes.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    lookups: f64,
    /// Time in the probe's queries.
    query_micros: f64,
    /// Strong reads answered, and their waits: for a lookup that started
    /// after the read arrived, then for the replica to apply it.
    reads: f64,
    lookup_micros: f64,
    apply_micros: f64,
    /// Waiting reads that asked for another lookup.
    nudges: f64,
}

impl Counters {
    fn since(self, before: Counters) -> Counters {
        Counters {
            lookups: self.lookups - before.lookups,
            query_micros: self.query_micros - before.query_micros,
            reads: self.reads - before.reads,
            lookup_micros: self.lookup_micros - before.lookup_micros,
            apply_micros: self.apply_micros - before.apply_micros,
            nudges: self.nudges - before.nudges,
        }
    }
}

fn counters(nodes: &[u16]) -> Res<Counters> {
    let mut c = Counters::default();
    for p in nodes {
        let (_, body) = Http::connect(*p)?.get("/status")?;
        let n = |key: &str| json_number(&body, key).ok_or(format!("no {key} in /status"));
        c.lookups += n("lookups")?;
        c.query_micros += n("lookup_query_micros")?;
        c.reads += n("reads")?;
        c.lookup_micros += n("lookup_micros")?;
        c.apply_micros += n("apply_micros")?;
        c.nudges += n("nudges")?;
    }
    Ok(c)
}

/// Single-row UPDATEs at `rate` per second until `stop`.
fn writer(primary: u16, rate: u64, rows: u64, stop: Arc<AtomicBool>) -> Res<u64> {
    let mut c = Client::connect(primary, "postgres")?;
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        c.exec(&format!(
            "UPDATE kv SET v = v + 1 WHERE k = {}",
            (n * 7919) % rows
        ))?;
        n += 1;
    }
    Ok(n)
}

pub fn run(o: &GwOpts) -> Res<()> {
    let bin = crate::process::build_ferry()?;
    let pg_bin = pg_server::bin_dir()?;
    let work = tempfile_dir()?;
    eprintln!("== work directory {}", work.display());
    let primary = Cluster::start("primary", &work.join("primary"), &pg_bin)?;
    let mut c = primary.connect("postgres")?;
    c.exec(&format!(
        "CREATE TABLE kv (k bigint PRIMARY KEY, v bigint NOT NULL, pad text NOT NULL);
         INSERT INTO kv SELECT g, 0, repeat('x', 80) FROM generate_series(0, {}) g;",
        o.rows - 1
    ))?;
    c.exec("VACUUM ANALYZE kv")?;
    eprintln!("== streaming replica");
    let replica = start_replica(&pg_bin, &work.join("replica"), &primary)?;
    eprintln!("== two gateway nodes");
    let nodes = [
        start_node(&bin, &work, &primary, "gw_a")?,
        start_node(&bin, &work, &primary, "gw_b")?,
    ];
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let (_, status) = Http::connect(ports[0])?.get("/status")?;
    let bytes_per_row = json_number(&status, "bytes_per_row");
    let rss_kib = crate::process::proc_stat(nodes[0].child.id())
        .ok()
        .and_then(|_| std::fs::read_to_string(format!("/proc/{}/status", nodes[0].child.id())).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        });

    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let stop = stop.clone();
        let (port, rate, rows) = (primary.port, o.writes, o.rows);
        std::thread::spawn(move || writer(port, rate, rows, stop))
    };
    let mut phases = Vec::new();
    for (kind, rate) in [
        (Kind::Strong, o.reads),
        (Kind::Eventual, o.reads),
        (Kind::Primary, o.reads),
        (Kind::ReplicaWait, o.reads.min(1000)),
    ] {
        eprintln!("== {} at {rate} reads/s for {} s", kind.label(), o.secs);
        phases.push(phase(
            kind,
            rate,
            o.secs,
            o.rows,
            &ports,
            primary.port,
            replica.port,
        )?);
    }
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().map_err(|_| "the writer panicked".to_string())??;

    println!("### Read gateway: `{}`\n", o.command);
    println!(
        "{}; commit `{}`; {} rows of ~100 bytes; {} single-row UPDATEs/s on the primary through \
         every phase ({} in all); two `ferry gateway` nodes (release build), reads alternating \
         between them; {} s per phase, open loop ({} reader threads, latency from each read's \
         scheduled start).\n",
        crate::machine::Machine::read().line(),
        crate::machine::git_commit(&crate::process::workspace_root()),
        o.rows,
        o.writes,
        writes,
        o.secs,
        READERS
    );
    println!("| reads | rate | p50 | p99 | p999 | max | refused | position lookups/s per node |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for p in &phases {
        let l = &p.latencies;
        println!(
            "| {} | {}/s | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
            p.kind.label(),
            p.rate,
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 0.999),
            pct(l, 1.0),
            p.errors,
            p.lookups_per_sec.map_or("—".into(), |n| format!("{n:.0}"))
        );
    }
    for c in phases.iter().filter_map(|p| p.counted) {
        let avg = |micros: f64, n: f64| if n > 0.0 { micros / n / 1e3 } else { f64::NAN };
        println!(
            "\nWhere a strong read waits, as the nodes count it (averages): {:.2} ms for a lookup \
             that started after it arrived, then {:.2} ms until the replica applied that \
             position; a lookup's query took {:.2} ms; {} reads asked for another lookup after \
             20 ms without progress.",
            avg(c.lookup_micros, c.reads),
            avg(c.apply_micros, c.reads),
            avg(c.query_micros, c.lookups),
            c.nudges
        );
    }
    println!(
        "\nMemory: {} bytes per cached row as the node counts keys and values; node RSS {} MiB \
         for {} rows (≈ {} bytes per row, the process and its runtime included).",
        bytes_per_row.map_or("?".into(), |b| format!("{b:.0}")),
        rss_kib.map_or("?".into(), |k| format!("{:.0}", k / 1024.0)),
        o.rows,
        rss_kib.map_or("?".into(), |k| format!("{:.0}", k * 1024.0 / o.rows as f64)),
    );
    drop(nodes);
    drop(replica);
    drop(primary);
    if o.keep {
        eprintln!("== kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

fn tempfile_dir() -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferry-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
