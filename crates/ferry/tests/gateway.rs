//! `ferry gateway` against a real PostgreSQL, two nodes as real processes:
//! session guarantees under a concurrent write load (read-your-writes and
//! monotonic reads, checked directly on every read), the wait of a strong
//! read on an idle source, and never a stale strong read when the source
//! crashes or the stream is cut.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_testkit::{PostgresServer, eventually, free_port};
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::kit::{Dir, FERRY, ferry, open, text};

/// One `ferry gateway` process.
struct Node {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Node {
    fn start(d: &Dir, pg: &PostgresServer, name: &str) -> Node {
        let port = free_port();
        let file = d.path(&format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\n[source]\nurl = \"{}\"\n[gateway]\nlisten = \"127.0.0.1:{port}\"\n",
                pg.url()
            ),
        )
        .unwrap();
        let log = d.path(&format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(FERRY)
            .args(["gateway", file.to_str().unwrap()])
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn ferry gateway");
        Node { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the node serves strong reads.
    async fn ready(&self) {
        let port = self.port;
        eventually(
            "the gateway serves strong reads",
            Duration::from_secs(60),
            || async move {
                let mut c = Http::connect(port).await.map_err(|e| e.to_string())?;
                let (_, s) = c.get("/status").await.map_err(|e| e.to_string())?;
                (s["strong_reads"] == "served")
                    .then_some(())
                    .ok_or(s.to_string())
            },
        )
        .await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 connection (no client library needed for GETs).
struct Http {
    conn: BufReader<TcpStream>,
}

impl Http {
    async fn connect(port: u16) -> std::io::Result<Http> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        Ok(Http {
            conn: BufReader::new(s),
        })
    }

    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Json)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.conn.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.conn.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.conn.read_line(&mut line).await?;
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
        self.conn.read_exact(&mut body).await?;
        let json = serde_json::from_slice(&body)
            .map_err(|e| std::io::Error::other(format!("bad JSON body: {e}")))?;
        Ok((status, json))
    }
}

/// One GET on a fresh connection (for `eventually`, which retries).
async fn get_once(port: u16, path: &str) -> Result<(u16, Json), String> {
    let mut c = Http::connect(port).await.map_err(|e| e.to_string())?;
    c.get(path).await.map_err(|e| e.to_string())
}

async fn pg_client(pg: &PostgresServer) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(conn);
    client
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// The LSN of a token (`pg.<system>.<timeline>.<LSN>`), as a number.
fn lsn(token: &str) -> u64 {
    let (_, l) = token.rsplit_once('.').expect("token");
    let (hi, lo) = l.split_once('/').expect("lsn");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn epoch(token: &str) -> &str {
    token.rsplit_once('.').expect("token").0
}

const CLIENTS: usize = 4;
const CYCLES: u64 = 300;

/// Thousands of write-then-read cycles against random nodes while another
/// writer keeps the source busy: each client writes its own key (an
/// increasing value), then reads it back from either node, alternately
/// as a strong read and as an eventual read carrying the token of its
/// write; it also reads the other clients' keys. A read that misses the
/// client's own last write breaks read-your-writes; a value or a position
/// lower than one the client saw before breaks monotonic reads.
#[test]
fn two_nodes_keep_read_your_writes_and_monotonic_reads_under_load() {
    let pg = PostgresServer::start();
    pg.psql(
        "CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO kv SELECT g, 0 FROM generate_series(0, 199) g;",
    );
    let d = Dir::new();
    let nodes = [Node::start(&d, &pg, "gw_a"), Node::start(&d, &pg, "gw_b")];
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    runtime().block_on(async {
        for n in &nodes {
            n.ready().await;
        }
        // Background load: other keys, as fast as one connection goes.
        let stop = Arc::new(AtomicBool::new(false));
        let load_writes = Arc::new(AtomicU64::new(0));
        let load = {
            let (stop, n) = (stop.clone(), load_writes.clone());
            let client = pg_client(&pg).await;
            tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let k = 100 + (i % 100) as i32;
                    client
                        .execute("UPDATE kv SET v = v + 1 WHERE k = $1", &[&k])
                        .await
                        .unwrap();
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut clients = Vec::new();
        for id in 0..CLIENTS {
            let db = pg_client(&pg).await;
            let ports = ports.clone();
            clients.push(tokio::spawn(async move {
                let mut http = Vec::new();
                for p in &ports {
                    http.push(Http::connect(*p).await.unwrap());
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
                let mut violations = Vec::new();
                // Highest value seen per key, and highest position seen.
                let mut seen = [0i64; CLIENTS];
                let mut max_position: Option<String> = None;
                let mut strong_ms = Vec::new();
                for n in 1..=CYCLES as i64 {
                    db.execute("UPDATE kv SET v = $1 WHERE k = $2", &[&n, &(id as i32)])
                        .await
                        .unwrap();
                    seen[id] = n;
                    let token = if n % 2 == 0 {
                        let row = db
                            .query_one("SELECT pg_current_wal_lsn()::text", &[])
                            .await
                            .unwrap();
                        let at: String = row.get(0);
                        max_position.as_deref().map(|p| format!("{}.{at}", epoch(p)))
                    } else {
                        None
                    };
                    // Read own key, then another client's, each from a random node.
                    for key in [id, rng.random_range(0..CLIENTS)] {
                        let node = rng.random_range(0..http.len());
                        // A client merges tokens by taking the greatest: its
                        // write's, or the newest position it read.
                        let token = match (&token, &max_position) {
                            (Some(t), Some(p)) if lsn(p) > lsn(t) => Some(p.clone()),
                            _ => token.clone(),
                        };
                        let path = match (&token, &max_position) {
                            (Some(t), _) if key == id => {
                                format!("/tables/kv/rows/{key}?consistency=eventual&min_position={t}")
                            }
                            (_, Some(p)) if key != id => {
                                format!("/tables/kv/rows/{key}?consistency=eventual&min_position={p}")
                            }
                            _ => format!("/tables/kv/rows/{key}"),
                        };
                        let started = Instant::now();
                        let (status, body) = http[node].get(&path).await.unwrap();
                        if !path.contains("min_position") {
                            strong_ms.push(started.elapsed().as_secs_f64() * 1e3);
                        }
                        assert_eq!(status, 200, "{path} on node {node}: {body}");
                        let v = body["row"]["v"].as_i64().expect("v");
                        let position = body["position"].as_str().expect("position").to_owned();
                        if v < seen[key] {
                            violations.push(format!(
                                "client {id} cycle {n}: key {key} read {v} after seeing {} ({path} on node {node})",
                                seen[key]
                            ));
                        }
                        seen[key] = seen[key].max(v);
                        // Strong reads too: their lookup came after every
                        // position this client saw.
                        if let Some(p) = &max_position
                            && epoch(p) == epoch(&position)
                            && lsn(&position) < lsn(p)
                        {
                            violations.push(format!(
                                "client {id} cycle {n}: position {position} below {p} it had seen ({path} on node {node})"
                            ));
                        }
                        if max_position.as_deref().is_none_or(|p| lsn(&position) > lsn(p)) {
                            max_position = Some(position);
                        }
                    }
                }
                (violations, strong_ms)
            }));
        }
        let mut violations = Vec::new();
        let mut strong_ms = Vec::new();
        for c in clients {
            let (v, ms) = c.await.unwrap();
            violations.extend(v);
            strong_ms.extend(ms);
        }
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        strong_ms.sort_by(f64::total_cmp);
        let pct = |q: f64| strong_ms[((strong_ms.len() - 1) as f64 * q) as usize];
        eprintln!(
            "{} cycles, {} reads ({} strong: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms), \
             {} background writes",
            CLIENTS as u64 * CYCLES,
            CLIENTS as u64 * CYCLES * 2,
            strong_ms.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0),
            load_writes.load(Ordering::Relaxed)
        );
        assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    });
}

/// With nothing written, a strong read still returns at once: the lookup's
/// own marker comes back through the stream.
#[test]
fn a_strong_read_on_an_idle_source_returns_in_bounded_time() {
    let pg = PostgresServer::start();
    pg.psql(
        "CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL); INSERT INTO kv VALUES (1, 1);",
    );
    let d = Dir::new();
    let node = Node::start(&d, &pg, "gw_idle");
    runtime().block_on(async {
        node.ready().await;
        let mut http = Http::connect(node.port).await.unwrap();
        let mut slowest = Duration::ZERO;
        for _ in 0..50 {
            let started = Instant::now();
            let (status, body) = http.get("/tables/kv/rows/1").await.unwrap();
            slowest = slowest.max(started.elapsed());
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["consistency"], "strong");
            assert_eq!(body["row"]["v"], 1);
        }
        eprintln!("slowest of 50 strong reads on an idle source: {slowest:?}");
        assert!(
            slowest < Duration::from_millis(500),
            "a strong read on an idle source took {slowest:?}"
        );
    });
    // The node's slot outlives it until `ferry teardown`.
    drop(node);
    let file = d.path("gw_idle.toml");
    let slots = || {
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .trim()
            .to_owned()
    };
    assert_eq!(slots(), "1");
    ferry_testkit::eventually_blocking("ferry teardown", Duration::from_secs(30), || {
        let out = ferry(&["teardown", file.to_str().unwrap()]);
        out.status.success().then_some(()).ok_or(text(&out))
    });
    assert_eq!(slots(), "0");
}

/// A crashed source: strong reads get 503 naming the reason within a
/// second, eventual reads go on and say how stale they are; once the
/// source is back, strong reads see writes made after the restart, and no
/// strong read ever answers with the value from before a later write.
#[test]
fn a_crashed_source_makes_strong_reads_503_never_stale() {
    let mut pg = PostgresServer::start();
    pg.psql(
        "CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL); INSERT INTO kv VALUES (1, 1);",
    );
    let d = Dir::new();
    let node = Node::start(&d, &pg, "gw_crash");
    let rt = runtime();
    rt.block_on(node.ready());
    let mut http = rt.block_on(Http::connect(node.port)).unwrap();
    let (status, body) = rt.block_on(http.get("/tables/kv/rows/1")).unwrap();
    assert_eq!((status, &body["row"]["v"]), (200, &Json::from(1)), "{body}");

    pg.crash();
    let down = Instant::now();
    let refused_after = rt.block_on(async {
        loop {
            let (status, body) = http.get("/tables/kv/rows/1").await.unwrap();
            match status {
                503 => {
                    assert!(
                        body["error"].as_str().is_some_and(|e| !e.is_empty()),
                        "{body}"
                    );
                    return down.elapsed();
                }
                200 => assert_eq!(body["row"]["v"], 1, "{body}"),
                other => panic!("status {other}: {body}"),
            }
            assert!(
                down.elapsed() < Duration::from_secs(5),
                "strong reads still served"
            );
        }
    });
    eprintln!("strong reads refused {refused_after:?} after the source crashed");
    assert!(refused_after <= Duration::from_secs(1), "{refused_after:?}");
    let (status, body) = rt
        .block_on(http.get("/tables/kv/rows/1?consistency=eventual"))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["row"]["v"], 1);
    assert!(body["staleness_ms"].as_f64().is_some(), "{body}");

    pg.restart();
    pg.psql("UPDATE kv SET v = 2 WHERE k = 1");
    rt.block_on(async {
        let port = node.port;
        eventually(
            "strong reads served again",
            Duration::from_secs(60),
            || async move {
                let (status, body) = get_once(port, "/tables/kv/rows/1").await?;
                match status {
                    200 => {
                        assert_eq!(body["row"]["v"], 2, "a stale strong read: {body}");
                        Ok(())
                    }
                    _ => Err(body.to_string()),
                }
            },
        )
        .await
    });
    assert!(
        node.log().contains("change stream broken"),
        "{}",
        node.log()
    );
}

/// The replication connection cut while writes go on, five times: strong
/// reads either wait for the resumed stream or get 503; none answers with
/// a value older than a write that committed before it, and the node is
/// back in sync after each cut.
#[test]
fn a_cut_stream_never_yields_a_stale_strong_read() {
    let pg = PostgresServer::start();
    pg.psql(
        "CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL); INSERT INTO kv VALUES (1, 0);",
    );
    let d = Dir::new();
    let node = Node::start(&d, &pg, "gw_cut");
    runtime().block_on(async {
        node.ready().await;
        let db = pg_client(&pg).await;
        let mut http = Http::connect(node.port).await.unwrap();
        let (mut served, mut refused, mut n) = (0, 0, 0i64);
        for cut in 1..=5 {
            for i in 0..40 {
                n += 1;
                db.execute("UPDATE kv SET v = $1 WHERE k = 1", &[&n])
                    .await
                    .unwrap();
                if i == 20 {
                    let killed = db
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication",
                            &[],
                        )
                        .await
                        .unwrap();
                    assert_eq!(killed, 1, "cut {cut}: no stream to cut\n{}", node.log());
                }
                let (status, body) = http.get("/tables/kv/rows/1").await.unwrap();
                match status {
                    200 => {
                        served += 1;
                        assert_eq!(body["row"]["v"], n, "stale strong read (cut {cut}): {body}");
                    }
                    503 => refused += 1,
                    other => panic!("status {other}: {body}"),
                }
            }
            // In sync again before the next cut.
            let port = node.port;
            eventually(
                "strong reads served after a cut",
                Duration::from_secs(30),
                || async move {
                    let (status, body) = get_once(port, "/tables/kv/rows/1").await?;
                    (status == 200).then_some(()).ok_or(body.to_string())?;
                    assert_eq!(body["row"]["v"], n, "{body}");
                    Ok::<_, String>(())
                },
            )
            .await;
        }
        eprintln!("{served} strong reads served, {refused} refused around 5 stream cuts");
        assert!(served >= 100, "{served} served, {refused} refused");
        assert!(
            refused > 0,
            "no strong read was refused while the stream was cut"
        );
    });
}

/// A SQLite source: a strong read sees every write committed before it
/// (the lookup reads the change table's end), an eventual read answers at
/// once, a range read pages by key.
#[test]
fn a_sqlite_source_serves_strong_and_eventual_reads() {
    let d = Dir::new();
    let src = d.source();
    src.execute_batch(
        "CREATE TABLE kv (region TEXT NOT NULL, n INTEGER NOT NULL, v INTEGER NOT NULL,
                          PRIMARY KEY (region, n));
         INSERT INTO kv VALUES ('eu', 1, 0), ('eu', 2, 0), ('us', 1, 0);",
    )
    .unwrap();
    let port = free_port();
    let file = d.path("gw.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"gw_sqlite\"\n[source]\nurl = \"{}\"\npoll_interval = \"5ms\"\n\
             [gateway]\nlisten = \"127.0.0.1:{port}\"\n",
            d.source_url()
        ),
    )
    .unwrap();
    let log = d.path("gw.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(FERRY)
        .args(["gateway", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let node = Node { child, port, log };
    runtime().block_on(async {
        node.ready().await;
        let mut http = Http::connect(port).await.unwrap();
        let writer = open(&d.path("source.db"));
        for n in 1..=50 {
            writer
                .execute("UPDATE kv SET v = ?1 WHERE region = 'eu' AND n = 2", [n])
                .unwrap();
            let (status, body) = http.get("/tables/kv/rows/'eu',2").await.unwrap();
            assert_eq!(status, 200, "{body}\n{}", node.log());
            assert_eq!(
                body["row"]["v"], n,
                "a strong read missed a committed write: {body}"
            );
            assert!(
                body["position"].as_str().unwrap().starts_with("sqlite."),
                "{body}"
            );
        }
        let (status, body) = http
            .get("/tables/kv/rows?from='eu',2&limit=1&consistency=eventual")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"][0]["n"], 2, "{body}");
        assert_eq!(body["next"], "'us',1", "{body}");
    });
    drop(src);
}

/// A bad `[gateway]` section is refused before anything connects.
#[test]
fn a_bad_gateway_file_names_the_key_and_the_fix() {
    let d = Dir::new();
    let file = d.path("g.toml");
    let base = "[source]\nurl = \"postgres://u@127.0.0.1:1/db\"\n";
    for (gateway, says) in [
        (
            "[gateway]\nlisten = \"127.0.0.1:1\"\nmax_lagg = \"1s\"\n",
            "max_lagg",
        ),
        ("[gateway]\nlisten = \"nowhere\"\n", "IP:PORT"),
        (
            "[gateway]\nlisten = \"127.0.0.1:1\"\nmax_lag = \"soon\"\n",
            "max_lag",
        ),
        (
            "[target]\nurl = \"sqlite:x.db\"\n[gateway]\nlisten = \"127.0.0.1:1\"\n",
            "no [target]",
        ),
        ("", "no [gateway] section"),
    ] {
        std::fs::write(&file, format!("{base}{gateway}")).unwrap();
        let out = ferry(&["gateway", file.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains(says) && t.contains("fix"),
            "{says:?} not in: {t}"
        );
    }
}
