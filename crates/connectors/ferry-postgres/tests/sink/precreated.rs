//! Target tables the operator created beforehand, with a structure ferry
//! would not choose itself: a `DEFERRABLE` key (no `ON CONFLICT` arbiter)
//! and an identity column `GENERATED ALWAYS` (no plain insert or update
//! of it).

use ferry_core::{
    CheckpointRecord, ColumnType, KeyRange, Sink, Step, TableOps, TableProgress, TableRef, Value,
};
use ferry_postgres::PostgresSink;

use super::{config, pos};
use crate::common::{col, server_with_db, table, text};

fn items() -> TableRef {
    table(
        Some("app"),
        "items",
        vec![
            col("id", ColumnType::Int64, false),
            col("name", text(), true),
            col("qty", ColumnType::Int32, true),
        ],
        vec![0],
    )
}

fn item(id: i64, name: &str, qty: i32) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(name.into()),
        Value::Int(qty as i64),
    ]
}

/// Loads a snapshot into the pre-created `app.items` (created by `ddl`),
/// then applies every kind of change, small and staged, and returns the
/// table as `id|name|qty` lines.
async fn copy_then_change(ddl: &str) -> String {
    let (pg, url) = server_with_db("target");
    pg.psql_in("target", &format!("CREATE SCHEMA app; {ddl}"));
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = items();
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.load(&t, &(1..=5).map(|i| item(i, "a", 1)).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut done = TableProgress::default();
    done.add(KeyRange::all(), &pos(1));
    done.complete = true;
    w.commit(&[CheckpointRecord::table("app.items", &done)])
        .await
        .unwrap();

    // Streamed changes: a delete, an update of an existing row, an insert,
    // a partial update and a key change.
    let mut ops = TableOps::new(t.clone());
    ops.deletes
        .push(vec![Value::Int(1), Value::Unchanged, Value::Unchanged]);
    ops.upserts.push(item(2, "b", 2));
    ops.upserts.push(item(6, "f", 6));
    ops.updates
        .push(vec![Value::Int(3), Value::Unchanged, Value::Int(33)]);
    w.begin().await.unwrap();
    w.apply(&[
        Step::Rows(vec![ops]),
        Step::MoveKey {
            table: t.clone(),
            old_key: vec![Value::Int(5)],
            row: vec![
                Value::Int(50),
                Value::Text("moved".into()),
                Value::Unchanged,
            ],
        },
    ])
    .await
    .unwrap();
    w.commit(&[CheckpointRecord::applied(&pos(10))])
        .await
        .unwrap();

    // A large batch goes through the staging table: it updates 2..=4, 6
    // and inserts 100..=699.
    let mut ops = TableOps::new(t.clone());
    ops.upserts
        .extend([2, 3, 4, 6].map(|i| item(i, "staged", 7)));
    ops.upserts.extend((100..700).map(|i| item(i, "bulk", 1)));
    w.begin().await.unwrap();
    w.apply(&[Step::Rows(vec![ops])]).await.unwrap();
    w.commit(&[CheckpointRecord::applied(&pos(20))])
        .await
        .unwrap();
    pg.psql_in(
        "target",
        "SELECT id, name, qty FROM app.items WHERE id < 100 \
         UNION ALL SELECT count(*), min(name), sum(qty) FROM app.items WHERE id >= 100 \
         ORDER BY 1",
    )
}

const EXPECTED: &str = "2|staged|7\n3|staged|7\n4|staged|7\n6|staged|7\n50|moved|1\n600|bulk|600";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precreated_target_with_a_deferrable_key_takes_every_change() {
    for when in ["INITIALLY DEFERRED", "INITIALLY IMMEDIATE"] {
        let got = copy_then_change(&format!(
            "CREATE TABLE app.items (id bigint PRIMARY KEY DEFERRABLE {when}, name text, qty int)"
        ))
        .await;
        assert_eq!(got, EXPECTED, "{when}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precreated_target_with_an_identity_generated_always_takes_every_change() {
    let got = copy_then_change(
        "CREATE TABLE app.items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         name text, qty int)",
    )
    .await;
    assert_eq!(got, EXPECTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precreated_target_with_a_deferrable_key_and_an_identity_takes_every_change() {
    let got = copy_then_change(
        "CREATE TABLE app.items (id bigint GENERATED ALWAYS AS IDENTITY, name text, qty int, \
         PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;
    assert_eq!(got, EXPECTED);
}
