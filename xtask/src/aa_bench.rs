//! `cargo xtask bench active-active`: two and three PostgreSQL sites, each
//! taking small write transactions (most to keys of its own, some to keys
//! every site writes), replicated both ways by ferry (one `ferry run` per
//! direction, ADR 0014) and by pglogical 2 (`forward_origins := '{}'`,
//! `last_update_wins`), beside one-way ferry (writes on one site only).
//! Measures committed write transactions per second over all sites, the
//! lag of marker rows (inserted on one site, polled on the others), and
//! whether and how fast the sites converge once the writers stop. The
//! table keeps its default replica identity (the primary key): pglogical
//! refuses a table whose identity is `FULL`, so ferry checks conflicts by
//! commit time here (ADR 0014).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pg_server::{self, Cluster};
use crate::process::Ferry;
use crate::{Ctx, Res};

const DB: &str = "bench";
/// Rows of `kv`: each site writes mostly its own share, and the first
/// [`HOT`] keys from every site.
const ROWS: u64 = 20_000;
const HOT: u64 = 100;
/// Percentage of writes that go to the hot keys.
const HOT_PERCENT: u64 = 10;

pub struct AaOpts {
    pub sites: Vec<usize>,
    pub secs: u64,
    pub writers: usize,
    pub keep: bool,
    pub command: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Ferry,
    Pglogical,
    /// Ferry, one direction, writes on the first site only.
    OneWay,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Ferry => "ferry active-active",
            Method::Pglogical => "pglogical 2 (last_update_wins)",
            Method::OneWay => "ferry one-way (writes on one site)",
        }
    }
}

struct Outcome {
    method: Method,
    sites: usize,
    txns: u64,
    secs: f64,
    lag_ms: Vec<f64>,
    converged: Option<f64>,
    conflicts: Option<u64>,
}

pub fn run(o: &AaOpts) -> Res<()> {
    let bin = crate::process::build_ferry()?;
    let pg_bin = pg_server::bin_dir()?;
    let pglogical = pg_bin
        .parent()
        .map(|p| p.join("lib/pglogical.so").exists())
        .unwrap_or(false);
    if !pglogical {
        eprintln!(
            "xtask: pglogical is not installed (apt-get install -y postgresql-15-pglogical): \
             measuring ferry only"
        );
    }
    let work = std::env::temp_dir().join(format!("ferry-bench-aa-{}", std::process::id()));
    std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
    eprintln!("== work directory {}", work.display());
    let mut results = Vec::new();
    for &n in &o.sites {
        let mut methods = vec![Method::Ferry];
        if pglogical {
            methods.push(Method::Pglogical);
        }
        if n == 2 {
            methods.push(Method::OneWay);
        }
        for m in methods {
            eprintln!("== {} sites: {}", n, m.name());
            let dir = work.join(format!("{n}_{m:?}").to_lowercase());
            results.push(case(&bin, &pg_bin, &dir, m, n, o)?);
            if !o.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    println!("{}", report(&results, o));
    Ok(())
}

fn case(bin: &Path, pg_bin: &Path, dir: &Path, m: Method, n: usize, o: &AaOpts) -> Res<Outcome> {
    let names: Vec<String> = (0..n)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let mut extra = vec!["track_commit_timestamp = on"];
    if m == Method::Pglogical {
        extra.extend([
            "shared_preload_libraries = 'pglogical'",
            "pglogical.conflict_resolution = 'last_update_wins'",
            "pglogical.conflict_log_level = 'DEBUG1'",
        ]);
    }
    let mut clusters = Vec::new();
    for s in &names {
        let c = Cluster::start_with(s, &dir.join(s), pg_bin, &extra)?;
        c.create_database(DB)?;
        c.connect(DB)?.exec(&format!(
            "CREATE TABLE kv (id int PRIMARY KEY, site text NOT NULL, v bigint NOT NULL);
             INSERT INTO kv SELECT g, 'seed', 0 FROM generate_series(1, {ROWS}) g;
             CREATE TABLE marks (site text, n int, PRIMARY KEY (site, n));"
        ))?;
        c.connect(DB)?.exec("VACUUM ANALYZE kv")?;
        clusters.push(c);
    }
    let mut ferries = Vec::new();
    match m {
        Method::Ferry => {
            let file = dir.join("sites.toml");
            let mut text = String::from("name = \"bench\"\n");
            for c in &clusters {
                text.push_str(&format!("[sites.{}]\nurl = \"{}\"\n", c.name, c.url(DB)));
            }
            text.push_str("[tables]\ninclude = [\"public.kv\", \"public.marks\"]\n");
            std::fs::write(&file, text).ctx(|| "writing the sites file".into())?;
            for a in &names {
                for b in &names {
                    if a != b {
                        let log = dir.join(format!("ferry_{a}_{b}.log"));
                        let args = ["--from", a.as_str(), "--to", b.as_str()];
                        ferries.push(Ferry::start_args(bin, &file, &args, &log)?);
                    }
                }
            }
        }
        Method::OneWay => {
            let file = dir.join("oneway.toml");
            std::fs::write(
                &file,
                format!(
                    "name = \"oneway\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
                     [tables]\ninclude = [\"public.kv\", \"public.marks\"]\n[apply]\nbatch_time = \"5ms\"\n",
                    clusters[0].url(DB),
                    clusters[1].url(DB)
                ),
            )
            .ctx(|| "writing the pipeline file".into())?;
            ferries.push(Ferry::start(bin, &file, &dir.join("ferry.log"))?);
        }
        Method::Pglogical => pglogical_mesh(&clusters)?,
    }
    for f in ferries.iter_mut() {
        let log = f.log_path().to_owned();
        f.wait_for("the change stream", Duration::from_secs(300), || {
            Ok(std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("stream started"))
        })?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let txns = Arc::new(AtomicU64::new(0));
    let writing: Vec<usize> = if m == Method::OneWay {
        vec![0]
    } else {
        (0..n).collect()
    };
    let ports: Vec<u16> = clusters.iter().map(|c| c.port).collect();
    let started = Instant::now();
    let mut threads = Vec::new();
    for &i in &writing {
        for w in 0..o.writers {
            let (stop, txns) = (stop.clone(), txns.clone());
            let (port, site) = (ports[i], names[i].clone());
            let (share, first) = (ROWS / n as u64, ROWS / n as u64 * i as u64);
            threads.push(std::thread::spawn(move || -> Res<()> {
                let mut c = crate::pg_client::Client::connect(port, DB)?;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((i * 64 + w) as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let id = if rng % 100 < HOT_PERCENT {
                        1 + (rng >> 8) % HOT
                    } else {
                        first + HOT + 1 + (rng >> 8) % (share - HOT)
                    };
                    c.exec(&format!(
                        "UPDATE kv SET v = v + 1, site = '{site}' WHERE id = {}",
                        id.min(ROWS)
                    ))?;
                    txns.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
    }
    // Lag: a marker row inserted on a writing site, polled on every other.
    let prober = {
        let stop = stop.clone();
        let ports = ports.clone();
        let names = names.clone();
        let writing = writing.clone();
        std::thread::spawn(move || -> Res<Vec<f64>> {
            let mut lags = Vec::new();
            let mut clients = Vec::new();
            for &p in &ports {
                clients.push(crate::pg_client::Client::connect(p, DB)?);
            }
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let from = writing[k % writing.len()];
                let t0 = Instant::now();
                clients[from].exec(&format!(
                    "INSERT INTO marks VALUES ('{}', {k})",
                    names[from]
                ))?;
                for (j, c) in clients.iter_mut().enumerate() {
                    if j == from {
                        continue;
                    }
                    let sql = format!(
                        "SELECT 1 FROM marks WHERE site = '{}' AND n = {k}",
                        names[from]
                    );
                    loop {
                        if c.value(&sql)?.is_some() {
                            lags.push(t0.elapsed().as_secs_f64() * 1000.0);
                            break;
                        }
                        if t0.elapsed() > Duration::from_secs(60) {
                            return Err(format!("marker {k} never reached site {}", names[j]));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(lags)
        })
    };
    std::thread::sleep(Duration::from_secs(o.secs));
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for t in threads {
        t.join().map_err(|_| "a writer panicked")??;
    }
    let lag_ms = prober.join().map_err(|_| "the prober panicked")??;
    let txns = txns.load(Ordering::Relaxed);

    // Convergence: every site holds the same rows.
    let t = Instant::now();
    let mut converged = None;
    while t.elapsed() < Duration::from_secs(300) {
        let mut digests = Vec::new();
        for c in &clusters {
            digests.push(c.connect(DB)?.value(
                "SELECT md5(string_agg(id || ':' || site || ':' || v, ',' ORDER BY id)) FROM kv",
            )?);
        }
        if digests.windows(2).all(|w| w[0] == w[1]) {
            converged = Some(t.elapsed().as_secs_f64());
            break;
        }
        for f in ferries.iter_mut() {
            f.ensure_running("convergence")?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let conflicts = if m == Method::Ferry {
        let mut sum = 0;
        for c in &clusters {
            sum += c
                .connect(DB)?
                .value("SELECT count(*) FROM _ferry_conflicts")?
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Some(sum)
    } else {
        None
    };
    for f in ferries {
        let _ = f.stop();
    }
    for c in clusters {
        c.stop()?;
    }
    Ok(Outcome {
        method: m,
        sites: n,
        txns,
        secs,
        lag_ms,
        converged,
        conflicts,
    })
}

/// Every node a pglogical provider of the `default` set, subscribed to
/// every other node without forwarding what it applied.
fn pglogical_mesh(clusters: &[Cluster]) -> Res<()> {
    for c in clusters {
        c.connect(DB)?.exec(&format!(
            "CREATE EXTENSION pglogical;
             SELECT pglogical.create_node(node_name := '{}', dsn := '{}');
             SELECT pglogical.replication_set_add_table('default', 'kv');
             SELECT pglogical.replication_set_add_table('default', 'marks');",
            c.name,
            c.conninfo(DB)
        ))?;
    }
    for a in clusters {
        for b in clusters {
            if a.name != b.name {
                b.connect(DB)?.exec(&format!(
                    "SELECT pglogical.create_subscription(subscription_name := 'sub_{}_{}', \
                     provider_dsn := '{}', replication_sets := ARRAY['default'], \
                     synchronize_structure := false, synchronize_data := false, \
                     forward_origins := '{{}}')",
                    a.name,
                    b.name,
                    a.conninfo(DB)
                ))?;
            }
        }
    }
    let t = Instant::now();
    loop {
        let mut ready = true;
        for c in clusters {
            let n = c
                .connect(DB)?
                .value(
                    "SELECT count(*) FROM pglogical.show_subscription_status() \
                     WHERE status <> 'replicating'",
                )?
                .unwrap_or_default();
            ready &= n == "0";
        }
        if ready {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err("pglogical subscriptions did not reach 'replicating' in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pct(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn report(results: &[Outcome], o: &AaOpts) -> String {
    let machine = crate::machine::Machine::read();
    let mut s = String::new();
    s.push_str(&format!(
        "### Active-active, {} s of writes, {} writers per writing site\n\n",
        o.secs, o.writers
    ));
    s.push_str(&format!(
        "`{}` on {}; {ROWS} rows, {HOT_PERCENT} % of the single-row UPDATE transactions to \
         {HOT} keys every site writes. Lag: a marker row inserted on a writing site until \
         seen on each other site.\n\n",
        o.command,
        machine.line()
    ));
    s.push_str("| sites | method | write txn/s (all sites) | lag p50 ms | lag p99 ms | converged after stop | conflicts logged |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {} |\n",
            r.sites,
            r.method.name(),
            r.txns as f64 / r.secs,
            pct(&r.lag_ms, 0.5),
            pct(&r.lag_ms, 0.99),
            r.converged
                .map(|t| format!("yes, {t:.1} s"))
                .unwrap_or_else(|| "NO (300 s)".into()),
            r.conflicts
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    s
}
