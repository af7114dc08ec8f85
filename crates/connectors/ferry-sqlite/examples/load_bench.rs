//! Measures the sink's snapshot load and the source's snapshot read.
//!
//! `cargo run --release -p ferry-sqlite --example load_bench [rows]`
//!
//! Loads `rows` (default 1 000 000) rows of five columns (integer key,
//! text, decimal, timestamp, boolean) into a fresh target in chunks of
//! 10 000, committing every 100 000 rows as the pipeline would, then reads
//! them back as a snapshot of a source.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::{
    Column, ColumnType, Sink, SnapshotRequest, Source, TableName, TableSchema, Value,
};
use ferry_sqlite::{SqliteSink, SqliteSinkConfig, SqliteSource, SqliteSourceConfig};

const CHUNK: usize = 10_000;
const COMMIT_EVERY: usize = 100_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        nullable: false,
        source_type: String::new(),
        user_type: None,
    };
    let table = Arc::new(TableSchema {
        name: TableName::bare("bench"),
        columns: vec![
            col("id", ColumnType::Int64),
            col(
                "name",
                ColumnType::Text {
                    max_len: None,
                    fixed: false,
                },
            ),
            col(
                "amount",
                ColumnType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
            ),
            col("at", ColumnType::Timestamp),
            col("flag", ColumnType::Bool),
        ],
        key: vec![0],
        version: 1,
        key_deferrable: false,
    });
    let sink = SqliteSink::open(SqliteSinkConfig {
        path: path.clone(),
        pipeline: "bench".into(),
        indexes_from: None,
    })?;
    sink.ensure_tables(std::slice::from_ref(&table)).await?;
    let mut writer = sink.writer().await?;

    let cpu_before = cpu_seconds();
    let mut in_sink = std::time::Duration::ZERO;
    let mut done = 0;
    writer.begin().await?;
    while done < rows {
        let n = CHUNK.min(rows - done);
        let chunk: Vec<Vec<Value>> = (done..done + n)
            .map(|i| {
                vec![
                    Value::Int(i as i64),
                    Value::Text(format!("customer {i}")),
                    Value::Decimal(format!("{}.{:02}", i % 10_000, i % 100)),
                    Value::Timestamp(1_700_000_000_000_000 + i as i64 * 1_000),
                    Value::Bool(i % 2 == 0),
                ]
            })
            .collect();
        let started = Instant::now();
        writer.load(&table, &chunk).await?;
        done += n;
        if done % COMMIT_EVERY == 0 || done == rows {
            writer.commit(&[]).await?;
            if done < rows {
                writer.begin().await?;
            }
        }
        in_sink += started.elapsed();
        // Generating and dropping the input rows is the caller's cost.
        drop(chunk);
    }
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "sink load: {rows} rows in {in_sink:.2?} ({:.0} rows/s, time inside load/commit calls); \
         process CPU {cpu:.2} s ({:.0} rows per CPU-second, including generating the rows)",
        rows as f64 / in_sink.as_secs_f64(),
        rows as f64 / cpu,
    );

    let mut cfg = SqliteSourceConfig::new(&path, "bench");
    cfg.max_chunk_rows = CHUNK;
    let mut source = SqliteSource::open(cfg)?;
    source.prepare().await?;
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut reader = source
        .snapshot(vec![SnapshotRequest {
            table: table.clone(),
            skip: vec![],
            encoding: None,
        }])
        .await?;
    let mut read = 0;
    while let Some(chunk) = reader.next_chunk().await? {
        read += chunk.rows.len();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    assert_eq!(read, rows);
    println!(
        "source snapshot read: {read} rows in {elapsed:.2?} ({:.0} rows/s); process CPU {cpu:.2} s",
        read as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// User + system CPU time of this process so far (Linux), so a loaded
/// machine does not distort the comparison; 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime is
    // the 12th, stime the 13th, in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
