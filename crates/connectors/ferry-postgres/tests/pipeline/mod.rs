//! TEMPORARY: CDC apply throughput of a backlog of single-row transactions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::Sink;
use ferry_pipeline::options::Options;
use ferry_pipeline::runtime::Pipeline;
use ferry_pipeline::stats::Stats;
use ferry_pipeline::transform::{Transform, TransformSpec};
use ferry_postgres::{PostgresSink, PostgresSinkConfig};

use crate::common::source;

async fn pipeline(
    src_url: &str,
    dst_url: &str,
    rx: tokio::sync::watch::Receiver<bool>,
) -> Pipeline {
    let src = source(src_url, "bench").await;
    let sink: Arc<dyn Sink> = Arc::new(
        PostgresSink::connect(PostgresSinkConfig {
            url: dst_url.into(),
            pipeline: "bench".into(),
        })
        .await
        .unwrap(),
    );
    let mut options = Options::new("bench");
    options.idle_checkpoint = Duration::from_millis(200);
    if let Ok(w) = std::env::var("BENCH_WORKERS") {
        options.workers = w.parse().unwrap();
    }
    Pipeline {
        source: Box::new(src),
        sink,
        transform: Arc::new(Transform::new(TransformSpec::default())),
        options,
        stats: Arc::new(Stats::new()),
        shutdown: rx,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_backlog_apply_rate() {
    let pg = ferry_testkit::PostgresServer::builder()
        .conf("shared_buffers = 256MB")
        .start();
    let src_url = pg.create_database("src");
    let dst_url = pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, filler char(84)); \
        INSERT INTO accounts SELECT g, 0, '' FROM generate_series(1, 100000) g;",
    );
    // Snapshot, then stop cleanly in CDC.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(pipeline(&src_url, &dst_url, rx).await.run());
    for _ in 0..600 {
        if pg.psql_in(
            "dst",
            "SELECT count(*) FROM _ferry_checkpoint WHERE scope = 'applied'",
        ) == "1"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.send(true).unwrap();
    run.await.unwrap().unwrap();
    // Backlog: single-row update transactions from 4 clients.
    let n: usize = std::env::var("BENCH_TXNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    std::fs::write(
        "/tmp/ferry_bench_update.sql",
        "\\set aid random(1, 100000)\nUPDATE accounts SET balance = balance + 1 WHERE id = :aid;\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-h",
            pg.socket_dir().to_str().unwrap(),
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-c",
            "4",
            "-j",
            "2",
            "-t",
            &(n / 4).to_string(),
            "-f",
            "/tmp/ferry_bench_update.sql",
            "src",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "backlog of {n} txns written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    pg.psql_in("src", "UPDATE accounts SET filler = 'done' WHERE id = 1");
    // Catch up.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let run = tokio::spawn(pipeline(&src_url, &dst_url, rx).await.run());
    loop {
        if pg
            .psql_in("dst", "SELECT filler FROM accounts WHERE id = 1")
            .starts_with("done")
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "not caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "ferry applied {n} single-row transactions in {secs:.2} s: {:.0} rows/s (includes start-up)",
        n as f64 / secs
    );
    let digest =
        "SELECT sum(balance), md5(string_agg(id || ':' || balance, ',' ORDER BY id)) FROM accounts";
    assert_eq!(pg.psql_in("dst", digest), pg.psql_in("src", digest));
    tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_backlog_read_rate() {
    use ferry_core::{Source, SourceEvent};
    let pg = ferry_testkit::PostgresServer::builder()
        .conf("shared_buffers = 256MB")
        .start();
    let src_url = pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, filler char(84)); \
        INSERT INTO accounts SELECT g, 0, '' FROM generate_series(1, 100000) g;",
    );
    let mut src = source(&src_url, "read").await;
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    drop(src);
    let n = 100_000;
    std::fs::write(
        "/tmp/ferry_bench_update.sql",
        "\\set aid random(1, 100000)\nUPDATE accounts SET balance = balance + 1 WHERE id = :aid;\n",
    )
    .unwrap();
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-h",
            pg.socket_dir().to_str().unwrap(),
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-c",
            "4",
            "-j",
            "2",
            "-t",
            &(n / 4).to_string(),
            "-f",
            "/tmp/ferry_bench_update.sql",
            "src",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut src = source(&src_url, "read").await;
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    let t0 = Instant::now();
    src.start_stream(None, &[]).await.unwrap();
    let mut commits = 0;
    while commits < n {
        if let SourceEvent::Commit(_) = src.next().await.unwrap() {
            commits += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "source alone read {n} transactions in {secs:.2} s: {:.0} txns/s",
        n as f64 / secs
    );
}
