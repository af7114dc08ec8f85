//! Snapshots: chunk ranges, skipped ranges, and consistency with the
//! stream under concurrent writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_core::{Change, KeyRange, SnapshotRequest, Source, SourceEvent, TableReader, Value};
use ferry_sqlite::SqliteSource;

use crate::{Db, count, next_data, seq};

fn seeded(rows: i64) -> Db {
    let db = Db::new("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);");
    let mut w = db.conn();
    let tx = w.transaction().unwrap();
    for i in 1..=rows {
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![i, format!("v{i}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    db
}

fn key(i: i64) -> Option<Vec<Value>> {
    Some(vec![Value::Int(i)])
}

/// A restart where a later piece committed before earlier ones: the copy
/// skips a range in the middle, and the gap before it (no lower bound)
/// is read whole. (It once bound its upper bound to the wrong parameter
/// and read nothing, so its keys were recorded as copied without rows.)
#[tokio::test]
async fn a_range_skipped_in_the_middle_leaves_both_sides_copied() {
    let db = seeded(25);
    let mut cfg = db.config();
    cfg.max_chunk_rows = 4;
    let mut src = SqliteSource::open(cfg).unwrap();
    let table = src.tables().await.unwrap().remove(0);
    src.prepare().await.unwrap();
    let mut reader = src
        .snapshot(vec![SnapshotRequest {
            table: table.clone(),
            skip: vec![KeyRange {
                lower: key(10),
                upper: key(15),
            }],
            encoding: None,
        }])
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut keys = Vec::new();
    while let Some(c) = reader.next_chunk().await.unwrap() {
        if let ferry_core::ChunkRows::Values(rows) = &c.rows {
            keys.extend(rows.iter().map(|r| r[0].clone()));
        }
        got.push((c.range, c.rows.len()));
    }
    let expected: Vec<Value> = (1..=10).chain(16..=25).map(Value::Int).collect();
    assert_eq!(keys, expected, "chunks {got:?}");
    assert_eq!(
        got.first().map(|(r, _)| r.lower.clone()),
        Some(None),
        "the first gap starts at the lowest key"
    );
}

#[tokio::test]
async fn chunks_cover_the_table_in_key_ranges() {
    let db = seeded(25);
    let mut cfg = db.config();
    cfg.max_chunk_rows = 10;
    let mut src = SqliteSource::open(cfg).unwrap();
    let table = src.tables().await.unwrap().remove(0);
    src.prepare().await.unwrap();
    let mut reader = src
        .snapshot(vec![SnapshotRequest {
            table: table.clone(),
            skip: vec![KeyRange {
                lower: None,
                upper: key(5),
            }],
            encoding: None,
        }])
        .await
        .unwrap();
    assert_eq!(seq(reader.position()), db.base(), "no change captured yet");
    let mut got = Vec::new();
    while let Some(c) = reader.next_chunk().await.unwrap() {
        got.push((c.range, c.rows.len(), c.table_done));
    }
    assert_eq!(
        got,
        vec![
            (
                KeyRange {
                    lower: key(5),
                    upper: key(15)
                },
                10,
                false
            ),
            (
                KeyRange {
                    lower: key(15),
                    upper: None
                },
                10,
                true
            ),
        ]
    );
    assert!(reader.next_chunk().await.unwrap().is_none());
}

#[tokio::test]
async fn an_empty_table_yields_one_done_chunk() {
    let db = seeded(0);
    let mut src = SqliteSource::open(db.config()).unwrap();
    let table = src.tables().await.unwrap().remove(0);
    src.prepare().await.unwrap();
    let mut reader = src
        .snapshot(vec![SnapshotRequest {
            table,
            skip: vec![],
            encoding: None,
        }])
        .await
        .unwrap();
    let c = reader.next_chunk().await.unwrap().unwrap();
    assert!(c.rows.is_empty() && c.table_done && c.range == KeyRange::all());
    assert!(reader.next_chunk().await.unwrap().is_none());
}

#[tokio::test]
async fn composite_keys_chunk_with_row_values() {
    let db = Db::new("CREATE TABLE c(a TEXT, b INT, PRIMARY KEY(a, b)) WITHOUT ROWID;");
    let w = db.conn();
    for a in ["x", "y"] {
        for b in 0..4 {
            w.execute("INSERT INTO c VALUES (?1, ?2)", rusqlite::params![a, b])
                .unwrap();
        }
    }
    let mut cfg = db.config();
    cfg.max_chunk_rows = 3;
    let mut src = SqliteSource::open(cfg).unwrap();
    let table = src.tables().await.unwrap().remove(0);
    src.prepare().await.unwrap();
    let skip = vec![KeyRange {
        lower: None,
        upper: Some(vec![Value::Text("x".into()), Value::Int(1)]),
    }];
    let mut reader = src
        .snapshot(vec![SnapshotRequest {
            table: table.clone(),
            skip,
            encoding: None,
        }])
        .await
        .unwrap();
    let mut rows = Vec::new();
    while let Some(c) = reader.next_chunk().await.unwrap() {
        for r in c.rows.values() {
            assert!(c.range.contains(&table.key_of(r)));
        }
        rows.extend(c.rows.into_values());
    }
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0], vec![Value::Text("x".into()), Value::Int(2)]);

    // The table reader pages the same order.
    let page = src
        .read_rows(&table, Some(&[Value::Text("x".into()), Value::Int(3)]), 2)
        .await
        .unwrap();
    assert_eq!(
        page,
        vec![
            vec![Value::Text("y".into()), Value::Int(0)],
            vec![Value::Text("y".into()), Value::Int(1)]
        ]
    );
    assert_eq!(src.count_rows(&table).await.unwrap(), 8);
}

/// Rows written while a snapshot runs: the snapshot plus the changes
/// streamed after its position equal the final table — nothing missed,
/// nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_stream_equals_the_final_table() {
    let db = seeded(20_000);
    let mut cfg = db.config();
    cfg.max_chunk_rows = 500;
    let mut src = SqliteSource::open(cfg.clone()).unwrap();
    let table = src.tables().await.unwrap().remove(0);
    src.prepare().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let path = db.path.clone();
    let flag = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut w = crate::writer(&path);
        let mut n = 0i64;
        while !flag.load(Ordering::Relaxed) || n < 300 {
            n += 1;
            let tx = w.transaction().unwrap();
            let id = (n * 7919) % 25_000 + 1;
            tx.execute(
                "INSERT INTO t VALUES (?1, 'new') ON CONFLICT(id) DO UPDATE SET v = v || '+'",
                [id],
            )
            .unwrap();
            tx.execute("DELETE FROM t WHERE id = ?1", [(n * 104_729) % 25_000 + 1])
                .unwrap();
            // Key moves, to an id nobody else uses.
            tx.execute(
                "UPDATE t SET id = ?1 WHERE id = ?2",
                [100_000 + n, (n * 31) % 25_000 + 1],
            )
            .unwrap();
            tx.commit().unwrap();
        }
    });

    let mut reader = src
        .snapshot(vec![SnapshotRequest {
            table: table.clone(),
            skip: vec![],
            encoding: None,
        }])
        .await
        .unwrap();
    let position = reader.position().clone();
    let mut model: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
    let mut chunks = 0;
    while let Some(c) = reader.next_chunk().await.unwrap() {
        chunks += 1;
        for r in c.rows.into_values() {
            assert!(
                model.insert(table.key_of(&r), r).is_none(),
                "row twice in the snapshot"
            );
        }
        // Let the writer get ahead of the reader.
        tokio::task::yield_now().await;
    }
    assert!(chunks >= 40);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let end = count(&db.path, "SELECT max(seq) FROM _ferry_changes");
    assert!(end > seq(&position), "writes must overlap the snapshot");

    src.start_stream(Some(&position), &[]).await.unwrap();
    let mut at = seq(&position);
    while at < end {
        let changes = match next_data(&mut src).await {
            SourceEvent::Partial { changes, .. } => changes,
            SourceEvent::Commit(t) => {
                at = seq(&t.position);
                t.changes
            }
            SourceEvent::Heartbeat { .. } => continue,
        };
        for c in changes {
            match c {
                Change::Insert { table, row } => {
                    assert!(
                        model.insert(table.key_of(&row), row).is_none(),
                        "insert of a present row"
                    );
                }
                Change::Update {
                    table,
                    before,
                    after,
                } => {
                    let old = table.key_of(&before.unwrap());
                    assert!(model.remove(&old).is_some(), "update of a missing row");
                    model.insert(table.key_of(&after), after);
                }
                Change::Delete { table, before } => {
                    assert!(
                        model.remove(&table.key_of(&before)).is_some(),
                        "delete of a missing row"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let mut expected = BTreeMap::new();
    let mut after: Option<Vec<Value>> = None;
    loop {
        let page = src
            .read_rows(&table, after.as_deref(), 5_000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(table.key_of(page.last().unwrap()));
        for r in page {
            expected.insert(table.key_of(&r), r);
        }
    }
    assert_eq!(model.len(), expected.len());
    assert!(
        model == expected,
        "snapshot + stream differs from the final table"
    );
}
