//! The sink: table creation, writes, atomic checkpoints, errors.

use std::sync::Arc;

use ferry_core::{
    Checkpoint, CheckpointRecord, CheckpointStore, Column, ColumnType, ErrorClass, KeyRange, Sink,
    Step, TableName, TableOps, TableProgress, TableReader, TableRef, TableSchema, Value,
};
use ferry_sqlite::{SqliteSink, SqliteSinkConfig};
use rusqlite::Connection;
use tempfile::TempDir;

use crate::pos;

fn col(name: &str, ty: ColumnType, nullable: bool) -> Column {
    Column {
        name: name.into(),
        ty,
        nullable,
        source_type: String::new(),
        user_type: None,
    }
}

fn orders() -> TableRef {
    Arc::new(TableSchema {
        name: TableName::new(Some("public"), "orders"),
        columns: vec![
            col("id", ColumnType::Int64, false),
            col(
                "customer",
                ColumnType::Text {
                    max_len: Some(40),
                    fixed: false,
                },
                false,
            ),
            col(
                "amount",
                ColumnType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
                true,
            ),
            col("placed", ColumnType::TimestampTz, true),
            col("paid", ColumnType::Bool, true),
        ],
        key: vec![0],
        version: 1,
        key_deferrable: false,
    })
}

fn row(id: i64, customer: &str, amount: &str) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(customer.into()),
        Value::Decimal(amount.into()),
        Value::TimestampTz(1_700_000_000_000_000 + id),
        Value::Bool(id % 2 == 0),
    ]
}

struct Target {
    _dir: TempDir,
    path: std::path::PathBuf,
    sink: SqliteSink,
}

async fn target() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.db");
    let sink = SqliteSink::open(SqliteSinkConfig {
        path: path.clone(),
        pipeline: "p".into(),
        indexes_from: None,
    })
    .unwrap();
    sink.ensure_tables(&[orders()]).await.unwrap();
    Target {
        _dir: dir,
        path,
        sink,
    }
}

fn raw(path: &std::path::Path, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let c = Connection::open(path).unwrap();
    let mut s = c.prepare(sql).unwrap();
    let n = s.column_count();
    s.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn ensure_tables_creates_and_checks() {
    let t = target().await;
    let sql = raw(
        &t.path,
        "SELECT sql FROM sqlite_schema WHERE name = 'orders'",
    );
    let rusqlite::types::Value::Text(sql) = &sql[0][0] else {
        panic!()
    };
    assert!(
        sql.contains("\"amount\" DECIMAL_TEXT(12,2)") && sql.contains("PRIMARY KEY (\"id\")"),
        "{sql}"
    );
    // Idempotent.
    t.sink.ensure_tables(&[orders()]).await.unwrap();
    // A table lacking a column is reported, and a writer's schema step
    // adds it.
    let mut wider = (*orders()).clone();
    wider.columns.push(col("note", ColumnType::Json, true));
    let wider = Arc::new(wider);
    let altered = t
        .sink
        .ensure_tables(std::slice::from_ref(&wider))
        .await
        .unwrap();
    assert_eq!(altered, vec![wider.name.clone()]);
    let mut w = t.sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.apply(&[Step::Schema {
        table: wider.clone(),
        alter: Default::default(),
    }])
    .await
    .unwrap();
    w.commit(&[]).await.unwrap();
    assert!(t.sink.ensure_tables(&[wider]).await.unwrap().is_empty());
    assert_eq!(t.sink.info().max_writers, 1);
}

#[tokio::test]
async fn load_apply_and_checkpoint_commit_together() {
    let t = target().await;
    let table = orders();
    let mut w = t.sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.load(
        &table,
        &[
            row(1, "ann", "12.50"),
            row(2, "bob", "0.10"),
            row(3, "cy", "7"),
        ],
    )
    .await
    .unwrap();
    let mut progress = TableProgress::default();
    progress.add(KeyRange::all(), &pos(4));
    progress.complete = true;
    let mut cp = Checkpoint {
        applied: Some(pos(4)),
        ..Default::default()
    };
    cp.tables.insert("orders".into(), progress);
    w.commit(&cp.to_records()).await.unwrap();
    assert_eq!(t.sink.load().await.unwrap(), cp);

    let mut ops = TableOps::new(table.clone());
    ops.deletes.push(vec![Value::Int(3)]);
    ops.upserts.push(row(1, "ann", "99.99"));
    ops.upserts.push(row(4, "dee", "1.00"));
    let mut partial = vec![Value::Unchanged; 5];
    partial[0] = Value::Int(2);
    partial[2] = Value::Decimal("0.20".into());
    ops.updates.push(partial);
    let mut moved = vec![Value::Unchanged; 5];
    moved[0] = Value::Int(20);
    moved[1] = Value::Text("bob2".into());
    w.begin().await.unwrap();
    w.apply(&[
        Step::Rows(vec![ops]),
        Step::MoveKey {
            table: table.clone(),
            old_key: vec![Value::Int(2)],
            row: moved,
        },
    ])
    .await
    .unwrap();
    w.commit(&[CheckpointRecord::applied(&pos(9))])
        .await
        .unwrap();

    let rows = t.sink.read_rows(&table, None, 10).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                Value::Int(1),
                Value::Text("ann".into()),
                Value::Decimal("99.99".into())
            ),
            (
                Value::Int(4),
                Value::Text("dee".into()),
                Value::Decimal("1.00".into())
            ),
            (
                Value::Int(20),
                Value::Text("bob2".into()),
                Value::Decimal("0.20".into())
            ),
        ]
    );
    assert_eq!(rows[0][3], Value::TimestampTz(1_700_000_000_000_001));
    assert_eq!(t.sink.count_rows(&table).await.unwrap(), 3);
    let loaded = t.sink.load().await.unwrap();
    assert_eq!(loaded.applied, Some(pos(9)));
    assert!(loaded.tables["orders"].complete, "other records are kept");

    // Decimals are stored as text, exactly.
    let stored = raw(
        &t.path,
        "SELECT typeof(amount), amount FROM orders WHERE id = 4",
    );
    assert_eq!(
        stored[0],
        [
            rusqlite::types::Value::Text("text".into()),
            rusqlite::types::Value::Text("1.00".into())
        ]
    );

    w.begin().await.unwrap();
    w.apply(&[Step::Truncate(vec![table.clone()])])
        .await
        .unwrap();
    w.commit(&[]).await.unwrap();
    assert_eq!(t.sink.count_rows(&table).await.unwrap(), 0);

    t.sink.clear().await.unwrap();
    assert_eq!(t.sink.load().await.unwrap(), Checkpoint::default());
}

#[tokio::test]
async fn rollback_leaves_nothing() {
    let t = target().await;
    let table = orders();
    let mut w = t.sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.load(&table, &[row(1, "ann", "1")]).await.unwrap();
    w.rollback().await.unwrap();
    w.rollback().await.unwrap();
    assert_eq!(t.sink.count_rows(&table).await.unwrap(), 0);
    assert_eq!(t.sink.load().await.unwrap(), Checkpoint::default());
    // Outside a transaction, writes are refused rather than autocommitted.
    let err = w.load(&table, &[row(1, "ann", "1")]).await.unwrap_err();
    assert!(err.message().contains("outside a transaction"));
}

#[tokio::test]
async fn a_failing_statement_names_table_key_and_statement() {
    let t = target().await;
    let table = orders();
    let mut bad = row(7, "x", "1");
    bad[1] = Value::Null;
    let mut w = t.sink.writer().await.unwrap();
    w.begin().await.unwrap();
    let err = w.load(&table, &[row(6, "ok", "1"), bad]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data);
    let report = err.report();
    assert!(report.contains("table: orders"), "{report}");
    assert!(report.contains("key: (7)"), "{report}");
    assert!(
        report.contains("statement: INSERT INTO \"orders\""),
        "{report}"
    );
    assert!(
        report.contains("NOT NULL constraint failed: orders.customer"),
        "{report}"
    );
    w.rollback().await.unwrap();

    // Inside a multi-row insert the failing row is still found and named,
    // and the transaction stays usable for the rollback.
    let mut rows: Vec<_> = (100..140).map(|i| row(i, "ok", "1")).collect();
    rows[21][1] = Value::Null;
    w.begin().await.unwrap();
    let err = w.load(&table, &rows).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data);
    assert!(err.report().contains("key: (121)"), "{}", err.report());
    w.rollback().await.unwrap();
    assert_eq!(t.sink.count_rows(&table).await.unwrap(), 0);

    // A duplicate in a snapshot load is a data error too.
    w.begin().await.unwrap();
    let err = w
        .load(&table, &[row(1, "a", "1"), row(1, "a", "1")])
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data);
    w.rollback().await.unwrap();
}

#[tokio::test]
async fn schema_steps_add_columns() {
    let t = target().await;
    let mut wider = (*orders()).clone();
    wider.columns.push(col(
        "tags",
        ColumnType::Array(Box::new(ColumnType::Text {
            max_len: None,
            fixed: false,
        })),
        true,
    ));
    wider.version = 2;
    let wider = Arc::new(wider);
    let mut w = t.sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.apply(&[Step::Schema {
        table: wider.clone(),
        alter: Default::default(),
    }])
    .await
    .unwrap();
    let mut r = row(1, "a", "1");
    r.push(Value::Array(vec![Value::Text("x\"y".into()), Value::Null]));
    w.load(&wider, &[r.clone()]).await.unwrap();
    w.commit(&[]).await.unwrap();
    assert_eq!(t.sink.read_rows(&wider, None, 5).await.unwrap(), vec![r]);
}

#[tokio::test]
async fn unwritable_targets_are_fatal_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/t.db");
    let err = SqliteSink::open(SqliteSinkConfig {
        path: missing.clone(),
        pipeline: "p".into(),
        indexes_from: None,
    })
    .err()
    .unwrap();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(
        err.report().contains(&missing.display().to_string()),
        "{}",
        err.report()
    );

    // A read-only target (which file permissions cannot produce for root,
    // who runs CI) is covered by the unit test with a read-only connection.
}

#[tokio::test]
async fn check_reports_the_target() {
    let t = target().await;
    let items = t.sink.check().await;
    let text: Vec<String> = items.iter().map(ToString::to_string).collect();
    assert!(
        items
            .iter()
            .all(|i| i.status == ferry_core::CheckStatus::Ok),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|s| s.contains("journal_mode: wal")),
        "{text:#?}"
    );
}

/// The shared `Sink` contract suite, run against a real SQLite target.
#[tokio::test]
async fn sqlite_sink_passes_the_sink_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SqliteSink::open(SqliteSinkConfig {
        path: dir.path().join("conformance.db"),
        pipeline: "conformance".into(),
        indexes_from: None,
    })
    .unwrap();
    let table = ferry_testkit::doubles::conformance_table(ferry_core::TableName::bare("conf"));
    ferry_testkit::doubles::sink_conformance(&sink, table).await;
}

/// One runner per pipeline: the shared fence suite, each sink opened
/// through another path to the same file (`./` and a symbolic link).
#[tokio::test]
async fn sqlite_sink_passes_the_fence_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fenced.db");
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let opened = std::sync::atomic::AtomicUsize::new(0);
    ferry_testkit::doubles::fence_conformance(async |pipeline: &str| {
        let path = match opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 3 {
            0 => file.clone(),
            1 => dir.path().join(".").join("fenced.db"),
            _ => link.clone(),
        };
        Box::new(
            SqliteSink::open(SqliteSinkConfig {
                path,
                pipeline: pipeline.into(),
                indexes_from: None,
            })
            .unwrap(),
        ) as Box<dyn Sink>
    })
    .await;
}

/// A failing row in the middle of a multi-row `INSERT` is still named:
/// the statement is undone and its rows re-run one by one.
#[tokio::test]
async fn a_failing_row_in_a_multi_row_insert_is_named() {
    let t = target().await;
    let table = orders();
    let mut rows: Vec<Vec<Value>> = (1..=200).map(|i| row(i, "c", "1")).collect();
    rows[99][1] = Value::Null;
    let mut w = t.sink.writer().await.unwrap();
    w.begin().await.unwrap();
    let err = w.load_owned(&table, rows).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data);
    let report = err.report();
    assert!(report.contains("key: (100)"), "{report}");
    assert!(
        report.contains("NOT NULL constraint failed: orders.customer"),
        "{report}"
    );
    w.rollback().await.unwrap();
    assert_eq!(t.sink.count_rows(&table).await.unwrap(), 0);
}

/// A load far larger than the WAL's checkpoint limits, on the
/// multi-threaded runtime the binary uses (calls run in `block_in_place`),
/// with a reader between the commits: every row arrives, and the WAL is
/// checkpointed and restarted rather than growing with the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_load_keeps_the_wal_bounded() {
    let t = target().await;
    let table = orders();
    let mut w = t.sink.writer().await.unwrap();
    let reader = Connection::open(&t.path).unwrap();
    let wal = t.path.with_extension("db-wal");
    let text = "x".repeat(3000);
    // About one 4 KiB page a row: 24 000 rows write some 24 000 frames,
    // beyond the 16 000 at which a commit checkpoints in any case.
    let (chunks, per_chunk) = (60, 400);
    let mut max_wal = 0;
    for c in 0..chunks {
        let rows = (0..per_chunk)
            .map(|i| {
                let id = c * per_chunk + i + 1;
                let mut r = row(id, "c", "1");
                r[1] = Value::Text(format!("{id}{text}"));
                r
            })
            .collect();
        w.begin().await.unwrap();
        w.load_owned(&table, rows).await.unwrap();
        w.commit(&[CheckpointRecord::applied(&pos(c + 1))])
            .await
            .unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, (c + 1) * per_chunk);
        max_wal = max_wal.max(std::fs::metadata(&wal).unwrap().len());
    }
    // Frames are a 24-byte header and a 4 KiB page; the WAL may exceed
    // 16 000 frames by one transaction (about 400 frames here) and a few.
    let frame = 4096 + 24;
    assert!(
        max_wal <= (16_000 + 1_000) * frame,
        "the WAL grew to {max_wal} bytes"
    );
    // The WAL restarted: it holds fewer frames than were written.
    let (_, log, _): (i64, i64, i64) = reader
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert!(log < 20_000, "{log} frames in the WAL");
    let total: i64 = reader
        .query_row("SELECT sum(length(customer)) FROM orders", [], |r| r.get(0))
        .unwrap();
    let expected: i64 = (1..=chunks * per_chunk)
        .map(|id| id.to_string().len() as i64 + 3000)
        .sum();
    assert_eq!(total, expected);
}

#[tokio::test]
async fn keyless_changes_apply_one_row_at_a_time_in_order() {
    let t = target().await;
    let log = Arc::new(TableSchema {
        name: TableName::new(Some("public"), "log"),
        columns: vec![
            col("n", ColumnType::Int64, true),
            col(
                "note",
                ColumnType::Text {
                    max_len: None,
                    fixed: false,
                },
                true,
            ),
            // Stored as text: matched on the same text.
            col("at", ColumnType::TimestampTz, true),
        ],
        key: vec![],
        version: 1,
        key_deferrable: false,
    });
    ferry_testkit::doubles::keyless_conformance(&t.sink, log, |n, note| {
        vec![
            Value::Int(n),
            note.map_or(Value::Null, |s| Value::Text(s.into())),
            Value::TimestampTz(1_700_000_000_000_000),
        ]
    })
    .await;
    let sql = raw(&t.path, "SELECT sql FROM sqlite_schema WHERE name = 'log'");
    let rusqlite::types::Value::Text(sql) = &sql[0][0] else {
        panic!()
    };
    assert!(!sql.contains("PRIMARY KEY"), "{sql}");
}
