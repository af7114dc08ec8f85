//! Copies every table of a source database to a target database through
//! ferry-postgres's snapshot and sink load path (no pipeline), and prints
//! rows/s. For quick measurements against a binary COPY pipe:
//!
//! ```text
//! cargo run --release -p ferry-postgres --example snapshot_copy -- \
//!     postgres://postgres@127.0.0.1:5432/src postgres://postgres@127.0.0.1:5432/dst \
//!     [workers] [writers] [decoded]
//! ```
//!
//! Rows pass through undecoded where both ends share the binary COPY
//! encoding, unless the fifth argument is `decoded`.
//!
//! Creates (and afterwards drops) the slot and publication `ferry_bench`
//! on the source; the target tables must not exist or must be empty.

use std::time::Instant;

use ferry_core::{Selection, Sink, Source};
use ferry_postgres::{PostgresSink, PostgresSinkConfig, PostgresSource, PostgresSourceConfig};

#[tokio::main]
async fn main() -> Result<(), ferry_core::Error> {
    let args: Vec<String> = std::env::args().collect();
    let (src_url, dst_url) = (&args[1], &args[2]);
    let workers: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let writers: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut src = PostgresSource::connect(PostgresSourceConfig {
        url: src_url.clone(),
        pipeline: "bench".into(),
        selection: Selection::default(),
        snapshot_workers: workers,
        snapshot_chunk_rows: None,
    })
    .await?;
    let sink = PostgresSink::connect(PostgresSinkConfig {
        url: dst_url.clone(),
        pipeline: "bench".into(),
    })
    .await?;
    let started = Instant::now();
    let tables = src.tables().await?;
    sink.ensure_tables(&tables).await?;
    src.prepare().await?;
    let decoded = args.get(5).is_some_and(|a| a == "decoded");
    let mut requests = Vec::new();
    for t in &tables {
        let encoding = match src.row_encoding(t) {
            Some(e) if !decoded && sink.row_encoding(t).await?.as_ref() == Some(&e) => Some(e),
            _ => None,
        };
        requests.push(ferry_core::SnapshotRequest {
            table: t.clone(),
            skip: vec![],
            encoding,
        });
    }
    let mut reader = src.snapshot(requests).await?;
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..writers {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ferry_core::SnapshotChunk>(2);
        let mut w = sink.writer().await?;
        txs.push(tx);
        handles.push(tokio::spawn(async move {
            let mut rows = 0usize;
            while let Some(chunk) = rx.recv().await {
                w.begin().await?;
                rows += chunk.rows.len();
                match chunk.rows {
                    ferry_core::ChunkRows::Values(v) => w.load_owned(&chunk.table, v).await?,
                    ferry_core::ChunkRows::Encoded(e) => w.load_encoded(&chunk.table, e).await?,
                }
                w.commit(&[]).await?;
            }
            Ok::<usize, ferry_core::Error>(rows)
        }));
    }
    let mut n = 0;
    while let Some(chunk) = reader.next_chunk().await? {
        let _ = txs[n % writers].send(chunk).await;
        n += 1;
    }
    drop(txs);
    let mut rows = 0;
    for h in handles {
        rows += h.await.expect("writer task")?;
    }
    // As the pipeline does with a table's last chunk: record it complete,
    // which builds the primary key of tables the sink created.
    let mut w = sink.writer().await?;
    w.begin().await?;
    let records: Vec<ferry_core::CheckpointRecord> = tables
        .iter()
        .map(|t| {
            let mut p = ferry_core::TableProgress::default();
            p.add(ferry_core::KeyRange::all(), reader.position());
            p.complete = true;
            ferry_core::CheckpointRecord::table(&t.name.to_string(), &p)
        })
        .collect();
    w.commit(&records).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{rows} rows in {secs:.2} s: {:.0} rows/s ({workers} readers, {writers} writers)",
        rows as f64 / secs
    );
    drop(reader);
    src.teardown().await?;
    Ok(())
}
