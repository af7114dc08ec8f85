//! The sink against a real MariaDB: the conformance suites, every type
//! written and read back, values the target cannot hold, structure
//! changes and their crash safety, repair scripts.

use std::sync::Arc;

use ferry_core::{
    Alteration, CheckpointRecord, CheckpointStore, Column, ColumnType, ErrorClass, KeylessOp, Sink,
    Step, TableName, TableOps, TableReader, TableRef, TableSchema, Value,
};
use ferry_mysql::{MySqlSink, MySqlSinkConfig};
use ferry_testkit::MariaDbServer;
use ferry_testkit::doubles::{
    checkpoint_store_conformance, conformance_table, fence_conformance, keyless_conformance,
    seq_position, sink_conformance,
};

fn server() -> (MariaDbServer, String) {
    let db = MariaDbServer::start();
    let url = db.create_database("target");
    (db, url)
}

async fn sink(url: &str, pipeline: &str) -> MySqlSink {
    MySqlSink::connect(MySqlSinkConfig {
        url: url.to_owned(),
        pipeline: pipeline.to_owned(),
        same_engine: false,
    })
    .await
    .unwrap_or_else(|e| panic!("connect: {}", e.report()))
}

fn col(name: &str, ty: ColumnType, nullable: bool) -> Column {
    Column {
        name: name.into(),
        ty,
        nullable,
        source_type: String::new(),
        user_type: None,
    }
}

fn text() -> ColumnType {
    ColumnType::Text {
        max_len: None,
        fixed: false,
    }
}

fn table(name: &str, columns: Vec<Column>, key: Vec<usize>) -> TableRef {
    Arc::new(TableSchema {
        name: TableName::new(Some("public"), name),
        columns,
        key,
        version: 1,
        key_deferrable: false,
    })
}

async fn load(sink: &MySqlSink, t: &TableRef, rows: &[Vec<Value>]) -> ferry_core::Result<()> {
    let mut w = sink.writer().await?;
    w.begin().await?;
    match w.load(t, rows).await {
        Ok(()) => w.commit(&[]).await,
        Err(e) => {
            w.rollback().await?;
            Err(e)
        }
    }
}

async fn apply(sink: &MySqlSink, steps: &[Step]) -> ferry_core::Result<()> {
    let mut w = sink.writer().await?;
    w.begin().await?;
    w.apply(steps).await?;
    w.commit(&[CheckpointRecord::applied(&seq_position(1))])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sink_passes_the_conformance_suites() {
    let (_db, url) = server();
    let s = sink(&url, "conformance").await;
    sink_conformance(&s, conformance_table(TableName::new(Some("app"), "conf"))).await;

    let (p1, p2) = (sink(&url, "p1").await, sink(&url, "p2").await);
    checkpoint_store_conformance(&p1, &p2, conformance_table(TableName::bare("ckpt"))).await;

    let log = table(
        "log",
        vec![
            col("n", ColumnType::Int64, true),
            col("note", text(), true),
            col("at", ColumnType::TimestampTz, true),
            col("doc", ColumnType::Json, true),
        ],
        vec![],
    );
    keyless_conformance(&s, log, |n, note| {
        vec![
            Value::Int(n),
            note.map_or(Value::Null, |s| Value::Text(s.into())),
            Value::TimestampTz(1_700_000_000_000_000),
            Value::Json("{\"a\": [1, 2]}".into()),
        ]
    })
    .await;

    fence_conformance(async |pipeline: &str| {
        let s: Box<dyn Sink> = Box::new(sink(&url, pipeline).await);
        s
    })
    .await;
}

/// One column of each ferry type, and the values that test its edges.
fn every_type() -> (TableRef, Vec<Vec<Value>>) {
    let t = table(
        "types",
        vec![
            col("id", ColumnType::Int64, false),
            col("b", ColumnType::Bool, true),
            col("i2", ColumnType::Int16, true),
            col("i4", ColumnType::Int32, true),
            col("f4", ColumnType::Float32, true),
            col("f8", ColumnType::Float64, true),
            col(
                "dec",
                ColumnType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
                true,
            ),
            col(
                "num",
                ColumnType::Decimal {
                    precision: None,
                    scale: None,
                },
                true,
            ),
            col("t", text(), true),
            col(
                "vc",
                ColumnType::Text {
                    max_len: Some(5),
                    fixed: true,
                },
                true,
            ),
            col("by", ColumnType::Bytes, true),
            col("d", ColumnType::Date, true),
            col("tm", ColumnType::Time, true),
            col("ts", ColumnType::Timestamp, true),
            col("tz", ColumnType::TimestampTz, true),
            col("iv", ColumnType::Interval, true),
            col("u", ColumnType::Uuid, true),
            col("j", ColumnType::Json, true),
            col("arr", ColumnType::Array(Box::new(ColumnType::Int32)), true),
            col(
                "other",
                ColumnType::Other {
                    type_name: "point".into(),
                },
                true,
            ),
        ],
        vec![0],
    );
    let full = vec![
        Value::Int(1),
        Value::Bool(true),
        Value::Int(-32768),
        Value::Int(2_147_483_647),
        Value::Float(f64::from(0.1f32)),
        Value::Float(0.1 + 0.2),
        Value::Decimal("-1234567890.12".into()),
        Value::Decimal("12345678901234567890.000000000000000000000000000001".into()),
        Value::Text("it's a \\ 'quote', ünïcödé 🦀 and a NUL \0 byte".into()),
        Value::Text("ab   ".into()),
        Value::Bytes(vec![0, 1, 0x27, 0x5c, 0xff]),
        Value::Date(-719_528),
        Value::Time(86_399_999_999),
        Value::Timestamp(253_402_300_799_999_999),
        Value::TimestampTz(1_700_000_000_123_456),
        Value::Interval {
            months: 14,
            days: -3,
            micros: -1_500_000,
        },
        Value::Uuid(*b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0"),
        Value::Json("{\"k\": [1, 2.5, \"x\"], \"n\": null}".into()),
        Value::Array(vec![Value::Int(1), Value::Null, Value::Int(-3)]),
        Value::Text("(1,2)".into()),
    ];
    let mut nulls = vec![Value::Null; full.len()];
    nulls[0] = Value::Int(2);
    let mut small = full.clone();
    small[0] = Value::Int(3);
    small[1] = Value::Bool(false);
    small[4] = Value::Float(f64::from(f32::MAX));
    small[5] = Value::Float(f64::MIN_POSITIVE / 8.0);
    small[6] = Value::Decimal("0.01".into());
    small[7] = Value::Decimal("-0.5".into());
    small[8] = Value::Text(String::new());
    small[10] = Value::Bytes(Vec::new());
    small[12] = Value::Time(-838 * 3_600_000_000);
    small[13] = Value::Timestamp(0);
    small[18] = Value::Array(Vec::new());
    (t, vec![full, nulls, small])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_written_and_read_back_exactly() {
    let (db, url) = server();
    let s = sink(&url, "types").await;
    let (t, rows) = every_type();
    s.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    load(&s, &t, &rows[..1]).await.unwrap();
    // The snapshot load went through LOAD DATA LOCAL INFILE.
    let loads: i64 = db
        .sql("SHOW GLOBAL STATUS LIKE 'Com_load'")
        .split('\t')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(loads > 0, "no LOAD DATA ran");
    // The rest as upserts: the change path writes what the load does.
    let mut ops = TableOps::new(t.clone());
    ops.upserts = rows[1..].to_vec();
    apply(&s, &[Step::Rows(vec![ops])]).await.unwrap();
    let got = s.read_rows(&t, None, 100).await.unwrap();
    for (g, want) in got.iter().zip(&rows) {
        for ((c, a), b) in t.columns.iter().zip(g).zip(want) {
            assert!(
                std::mem::discriminant(a) == std::mem::discriminant(b) && a == b,
                "column {}: read back {a:?}, wrote {b:?}",
                c.name
            );
        }
    }
    assert_eq!(got.len(), rows.len());
    assert_eq!(s.count_rows(&t).await.unwrap(), 3);
    // Exact text comparisons: a key differing in a trailing space is
    // another key, and text keys order by bytes.
    let keyed = table(
        "keys",
        vec![col("k", text(), false), col("v", ColumnType::Int64, true)],
        vec![0],
    );
    s.ensure_tables(std::slice::from_ref(&keyed)).await.unwrap();
    let keys = ["a", "a ", "B", "b", "é"];
    let rows: Vec<Vec<Value>> = keys
        .iter()
        .map(|k| vec![Value::Text((*k).into()), Value::Int(1)])
        .collect();
    load(&s, &keyed, &rows).await.unwrap();
    let read = s.read_rows(&keyed, None, 10).await.unwrap();
    let order: Vec<Value> = read.into_iter().map(|r| r[0].clone()).collect();
    let mut want: Vec<Value> = rows.iter().map(|r| r[0].clone()).collect();
    want.sort();
    assert_eq!(order, want);
    let page = s
        .read_rows(&keyed, Some(&[Value::Text("a ".into())]), 2)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0][0], Value::Text("b".into()));
    let shape = s.declared_shape(&t).await.unwrap().unwrap();
    assert_eq!(shape.key, ["id"]);
    assert!(
        db.sql_in("target", "SHOW CREATE TABLE types")
            .contains("utf8mb4_nopad_bin")
    );
}

/// The error of writing `value` into column `column` of a one-row load.
async fn refused(s: &MySqlSink, t: &TableRef, column: usize, value: Value) -> ferry_core::Error {
    let mut row: Vec<Value> = t.columns.iter().map(|_| Value::Null).collect();
    row[0] = Value::Int(42);
    row[column] = value.clone();
    let err = load(
        s,
        t,
        &[
            vec![Value::Int(41), Value::Null, Value::Null, Value::Null],
            row,
        ],
    )
    .await
    .expect_err(&format!("{value:?} must be refused"));
    assert_eq!(err.class(), ErrorClass::Data, "{}", err.report());
    let report = err.report();
    assert!(report.contains("(42)"), "the error names the key: {report}");
    assert!(
        report.contains(&t.columns[column].name),
        "the error names the column: {report}"
    );
    assert!(
        report.contains("bad"),
        "the error names the table: {report}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_target_cannot_hold_stop_with_table_key_and_column() {
    let (db, url) = server();
    let s = sink(&url, "bad").await;
    let t = table(
        "bad",
        vec![
            col("id", ColumnType::Int64, false),
            col("ratio", ColumnType::Float64, true),
            col(
                "price",
                ColumnType::Decimal {
                    precision: Some(5),
                    scale: Some(2),
                },
                true,
            ),
            col(
                "code",
                ColumnType::Text {
                    max_len: Some(3),
                    fixed: false,
                },
                true,
            ),
        ],
        vec![0],
    );
    s.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    refused(&s, &t, 1, Value::Float(f64::NAN)).await;
    refused(&s, &t, 1, Value::Float(f64::NEG_INFINITY)).await;
    // MariaDB would round this with a mere note.
    refused(&s, &t, 2, Value::Decimal("1.005".into())).await;
    refused(&s, &t, 2, Value::Decimal("1000".into())).await;
    // Found by the server (strict mode), named by its row.
    refused(&s, &t, 3, Value::Text("abcd".into())).await;
    assert_eq!(s.count_rows(&t).await.unwrap(), 0, "nothing was written");
    // A duplicate in a load is an error too (LOAD DATA LOCAL would skip it).
    let one = vec![Value::Int(7), Value::Null, Value::Null, Value::Null];
    let err = load(&s, &t, &[one.clone(), one]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data, "{}", err.report());
    assert!(err.report().contains("Duplicate entry"), "{}", err.report());
    assert_eq!(s.count_rows(&t).await.unwrap(), 0, "nothing was written");
    // A server that refuses LOAD DATA LOCAL gets INSERTs, checked alike.
    db.sql("SET GLOBAL local_infile = 0");
    let ok = vec![
        Value::Int(8),
        Value::Float(0.5),
        Value::Decimal("1.5".into()),
        Value::Null,
    ];
    load(&s, &t, &[ok]).await.unwrap();
    refused(&s, &t, 3, Value::Text("abcd".into())).await;
    assert_eq!(s.count_rows(&t).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structure_changes_are_idempotent_and_survive_a_crash_before_commit() {
    let (db, url) = server();
    let s = sink(&url, "ddl").await;
    let v1 = table(
        "items",
        vec![
            col("id", ColumnType::Int32, false),
            col("old", text(), true),
        ],
        vec![0],
    );
    assert!(
        s.ensure_tables(std::slice::from_ref(&v1))
            .await
            .unwrap()
            .is_empty()
    );
    load(&s, &v1, &[vec![Value::Int(1), Value::Text("x".into())]])
        .await
        .unwrap();

    // Rename old → name, add qty (existing rows get 7), widen id.
    let mut v2 = (*v1).clone();
    v2.version = 2;
    v2.columns[0].ty = ColumnType::Int64;
    v2.columns[1].name = "name".into();
    v2.columns.push(col("qty", ColumnType::Int32, true));
    let v2 = Arc::new(v2);
    let alter = Alteration {
        renamed: vec![("old".into(), "name".into())],
        filled: vec![("qty".into(), Value::Int(7))],
    };
    let step = Step::Schema {
        table: v2.clone(),
        alter: alter.clone(),
    };
    // A crash after the DDL, before the commit: the writer goes away.
    {
        let mut w = s.writer().await.unwrap();
        w.begin().await.unwrap();
        w.apply(std::slice::from_ref(&step)).await.unwrap();
    }
    let restarted = sink(&url, "ddl").await;
    assert_eq!(
        restarted
            .ensure_tables(std::slice::from_ref(&v2))
            .await
            .unwrap(),
        vec![v2.name.clone()],
        "a structure change whose transaction never committed asks for a re-copy"
    );
    // The replay changes nothing twice, and its commit clears the marker.
    apply(&restarted, &[step.clone(), step]).await.unwrap();
    assert!(
        sink(&url, "ddl")
            .await
            .ensure_tables(std::slice::from_ref(&v2))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        restarted.read_rows(&v2, None, 10).await.unwrap(),
        vec![vec![Value::Int(1), Value::Text("x".into()), Value::Int(7)]]
    );
    assert_eq!(
        restarted.load().await.unwrap().applied,
        Some(seq_position(1))
    );

    // A column the source dropped goes; a table new to the pipeline is created.
    let mut v3 = (*v2).clone();
    v3.version = 3;
    v3.columns.pop();
    let v3 = Arc::new(v3);
    let fresh = table(
        "fresh",
        vec![col("k", ColumnType::Int64, false), col("v", text(), true)],
        vec![0],
    );
    let mut ops = TableOps::new(fresh.clone());
    ops.upserts = vec![vec![Value::Int(5), Value::Text("new".into())]];
    apply(
        &restarted,
        &[
            Step::Schema {
                table: v3.clone(),
                alter: Alteration::default(),
            },
            Step::Schema {
                table: fresh.clone(),
                alter: Alteration::default(),
            },
            Step::Rows(vec![ops]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        db.sql_in("target", "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY ORDINAL_POSITION) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'target' AND TABLE_NAME = 'items'"),
        "id,name"
    );
    assert_eq!(restarted.count_rows(&fresh).await.unwrap(), 1);

    // A different key is refused.
    let rekeyed = table(
        "items",
        vec![
            col("id", ColumnType::Int64, false),
            col("name", text(), false),
        ],
        vec![1],
    );
    let err = restarted.ensure_tables(&[rekeyed]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.report().contains("primary key"), "{}", err.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_print_as_sql_the_client_runs() {
    let (db, url) = server();
    let s = sink(&url, "repair").await;
    let (t, rows) = every_type();
    s.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    let log = table(
        "log",
        vec![col("n", ColumnType::Int64, true), col("s", text(), true)],
        vec![],
    );
    s.ensure_tables(std::slice::from_ref(&log)).await.unwrap();
    load(
        &s,
        &log,
        &[
            vec![Value::Int(1), Value::Null],
            vec![Value::Int(1), Value::Null],
        ],
    )
    .await
    .unwrap();
    let mut ops = TableOps::new(t.clone());
    ops.upserts = rows.clone();
    let script = s
        .render_sql(&[
            Step::Rows(vec![ops]),
            Step::Keyless {
                table: log.clone(),
                ops: vec![
                    KeylessOp::Delete(vec![Value::Int(1), Value::Null]),
                    KeylessOp::Insert(vec![Value::Int(2), Value::Text("it's".into())]),
                ],
            },
        ])
        .await
        .unwrap();
    db.sql_in("target", &script);
    assert_eq!(s.read_rows(&t, None, 10).await.unwrap(), rows);
    let mut left = Vec::new();
    s.scan_rows(&log, &mut |batch| {
        left.extend(batch);
        Ok(())
    })
    .await
    .unwrap();
    left.sort();
    assert_eq!(
        left,
        vec![
            vec![Value::Int(1), Value::Null],
            vec![Value::Int(2), Value::Text("it's".into())]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_is_identified_and_checked() {
    let (db, url) = server();
    let s = sink(&url, "id").await;
    let other_url = url.replace("127.0.0.1", "localhost");
    let id = s.identity().await.unwrap().unwrap();
    assert_eq!(
        sink(&other_url, "id").await.identity().await.unwrap(),
        Some(id.clone())
    );
    db.create_database("other");
    let elsewhere = sink(&db.url_for("other"), "id")
        .await
        .identity()
        .await
        .unwrap();
    assert_ne!(elsewhere, Some(id));

    let checks = s.check().await;
    assert!(
        checks
            .iter()
            .all(|c| c.status == ferry_core::CheckStatus::Ok),
        "{checks:?}"
    );
    db.sql("CREATE USER 'reader'@'%' IDENTIFIED BY 'pw'; GRANT SELECT, INSERT ON target.* TO 'reader'@'%'");
    let limited = sink(&url.replace("root@", "reader:pw@"), "id").await;
    let checks = limited.check().await;
    let privileges = checks
        .iter()
        .find(|c| c.name.contains("privileges"))
        .unwrap();
    assert_eq!(
        privileges.status,
        ferry_core::CheckStatus::Fail,
        "{checks:?}"
    );
    assert!(
        privileges.fix.as_deref().unwrap().starts_with("GRANT"),
        "{checks:?}"
    );
    assert!(privileges.detail.contains("CREATE"), "{checks:?}");
}
