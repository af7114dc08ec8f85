//! Source to sink without the pipeline: a snapshot loaded into a target and
//! changes applied after it give a target equal to the source, value for
//! value, through every supported declared type.

use ferry_core::{Change, Sink, SnapshotRequest, Source, Step, TableOps, TableReader};
use ferry_sqlite::{SqliteSink, SqliteSinkConfig, SqliteSource};

use crate::{Db, next_commit};

const TYPES: &str = "CREATE TABLE every(
    id INTEGER PRIMARY KEY, i BIGINT, b BOOLEAN, r DOUBLE, d DECIMAL(10,3), t VARCHAR(10),
    c CLOB, x BLOB, day DATE, tm TIME, ts DATETIME, tz TIMESTAMPTZ, u UUID, j JSON, anything);";

const ROW: &str = "(?1, -9007199254740993, 0, 1e-310, '123.450', 'ünï''\n,', 'c', x'DEADBEEF', \
     '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59', '2024-01-01 01:00:00+01:00', \
     '123e4567-e89b-12d3-a456-426614174000', '{\"a\":[1,2]}', 3.25)";

#[tokio::test]
async fn snapshot_and_changes_round_trip_into_a_sqlite_target() {
    let db = Db::new(TYPES);
    let w = db.conn();
    w.execute(&format!("INSERT INTO every VALUES {ROW}"), [1])
        .unwrap();
    w.execute("INSERT INTO every(id) VALUES (2)", []).unwrap();

    let mut src = SqliteSource::open(db.config()).unwrap();
    let tables = src.tables().await.unwrap();
    src.prepare().await.unwrap();
    let target_path = db.dir.path().join("target.db");
    let sink = SqliteSink::open(SqliteSinkConfig {
        path: target_path,
        pipeline: "test".into(),
        indexes_from: None,
    })
    .unwrap();
    sink.ensure_tables(&tables).await.unwrap();
    let table = tables[0].clone();

    let mut reader = src
        .snapshot(vec![SnapshotRequest {
            table: table.clone(),
            skip: vec![],
            encoding: None,
        }])
        .await
        .unwrap();
    let position = reader.position().clone();
    let mut writer = sink.writer().await.unwrap();
    writer.begin().await.unwrap();
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        writer
            .load(&chunk.table, chunk.rows.values())
            .await
            .unwrap();
    }
    writer.commit(&[]).await.unwrap();

    w.execute(&format!("INSERT INTO every VALUES {ROW}"), [3])
        .unwrap();
    w.execute(
        "UPDATE every SET id = 30, anything = x'00' WHERE id = 2",
        [],
    )
    .unwrap();
    w.execute("DELETE FROM every WHERE id = 1", []).unwrap();
    src.start_stream(Some(&position), &[]).await.unwrap();
    let mut applied = 0;
    while applied < 3 {
        let t = next_commit(&mut src).await;
        let mut steps = Vec::new();
        for c in t.changes {
            let mut ops = TableOps::new(table.clone());
            match c {
                Change::Insert { row, .. } => ops.upserts.push(row),
                Change::Update { before, after, .. } => {
                    ops.deletes.push(table.key_of(&before.unwrap()));
                    ops.upserts.push(after);
                }
                Change::Delete { before, .. } => ops.deletes.push(table.key_of(&before)),
                other => panic!("{other:?}"),
            }
            steps.push(Step::Rows(vec![ops]));
            applied += 1;
        }
        writer.begin().await.unwrap();
        writer.apply(&steps).await.unwrap();
        writer.commit(&[]).await.unwrap();
    }

    let source_rows = src.read_rows(&table, None, 100).await.unwrap();
    let target_rows = sink.read_rows(&table, None, 100).await.unwrap();
    assert_eq!(source_rows.len(), 2);
    assert_eq!(source_rows, target_rows);
}
