//! Loads generated rows into a MySQL/MariaDB target through the sink's
//! snapshot path (no source, no pipeline) and prints rows/s: the sink's
//! share of a copy, for comparison with `mariadb-dump | mariadb`.
//!
//! ```text
//! cargo run --release -p ferry-mysql --example sink_load -- \
//!     mysql://root@127.0.0.1:3306/dst [rows] [writers] [chunk_rows]
//! ```
//!
//! Creates table `bench_load` (id, name, qty, price, at) in the target
//! database; it must not exist or must be empty.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::{Column, ColumnType, Sink, TableName, TableSchema, Value};
use ferry_mysql::{MySqlSink, MySqlSinkConfig};

fn table() -> Arc<TableSchema> {
    let col = |name: &str, ty: ColumnType| Column {
        name: name.into(),
        ty,
        nullable: name != "id",
        source_type: String::new(),
        user_type: None,
    };
    Arc::new(TableSchema {
        name: TableName::bare("bench_load"),
        columns: vec![
            col("id", ColumnType::Int64),
            col(
                "name",
                ColumnType::Text {
                    max_len: Some(64),
                    fixed: false,
                },
            ),
            col("qty", ColumnType::Int32),
            col(
                "price",
                ColumnType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
            ),
            col("at", ColumnType::TimestampTz),
        ],
        key: vec![0],
        version: 1,
        key_deferrable: false,
    })
}

fn rows(from: i64, n: i64) -> Vec<Vec<Value>> {
    (from..from + n)
        .map(|i| {
            vec![
                Value::Int(i),
                Value::Text(format!("item number {i} of the bench")),
                Value::Int(i % 1000),
                Value::Decimal(format!("{}.{:02}", i / 7, i % 100)),
                Value::TimestampTz(1_700_000_000_000_000 + i * 1_000_003),
            ]
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), ferry_core::Error> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("target URL").clone();
    let total: i64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let writers: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let chunk: i64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let sink = Arc::new(
        MySqlSink::connect(MySqlSinkConfig {
            url,
            pipeline: "bench".into(),
            same_engine: false,
        })
        .await?,
    );
    let t = table();
    sink.ensure_tables(std::slice::from_ref(&t)).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (sink, t) = (sink.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut writer = sink.writer().await?;
            let mut from = w * chunk;
            while from < total {
                let batch = rows(from, chunk.min(total - from));
                writer.begin().await?;
                writer.load_owned(&t, batch).await?;
                writer.commit(&[]).await?;
                from += writers * chunk;
            }
            Ok::<_, ferry_core::Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("writer task")?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} rows in {secs:.2} s: {:.0} rows/s ({writers} writers, {chunk}-row chunks)",
        total as f64 / secs
    );
    Ok(())
}
