//! The source: capture installation, change delivery, transaction
//! grouping, resume, pruning and the errors that name a fix.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_core::{
    Change, ColumnType, ErrorClass, Lsn, PgPosition, Position, Source, SourceEvent, Value,
};
use ferry_sqlite::SqliteSource;

use crate::{Db, count, next_commit, next_data, pos, seq};

const ITEMS: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
     price DECIMAL(10,2), at DATETIME, flag BOOLEAN, data BLOB, any, score REAL);
     CREATE TABLE notes(a TEXT, b INT, body TEXT, PRIMARY KEY(a, b));";

#[tokio::test]
async fn prepare_installs_capture_idempotently() {
    let db = Db::new(ITEMS);
    let mut src = SqliteSource::open(db.config()).unwrap();
    let tables = src.tables().await.unwrap();
    assert_eq!(tables.len(), 2);
    src.prepare().await.unwrap();
    src.prepare().await.unwrap();
    let triggers =
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '_ferry_%'";
    // Five per table: three AFTER triggers that append row changes, two
    // BEFORE triggers for rows REPLACE removes (see replace.rs).
    assert_eq!(count(&db.path, triggers), 10);
    assert_eq!(
        count(
            &db.path,
            "SELECT count(*) FROM _ferry_consumers WHERE pipeline = 'test'"
        ),
        1
    );
    let mode: String = db
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn row_changes_from_another_connection_arrive_with_images() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    let w = db.conn();
    w.execute(
        "INSERT INTO items VALUES (1, 'a,''b''\nc', '12.50', '2024-03-01 10:00:00.25', 1, x'00ff', 7, -0.5)",
        [],
    )
    .unwrap();
    let t = next_commit(&mut src).await;
    let Change::Insert { row, table } = &t.changes[0] else {
        panic!("{t:?}")
    };
    assert_eq!(table.name.name, "items");
    assert_eq!(
        row,
        &vec![
            Value::Int(1),
            Value::Text("a,'b'\nc".into()),
            // DECIMAL has NUMERIC affinity: SQLite itself stored 12.5.
            Value::Decimal("12.5".into()),
            Value::Timestamp(ferry_core::time::parse_timestamp("2024-03-01 10:00:00.25").unwrap()),
            Value::Bool(true),
            Value::Bytes(vec![0, 255]),
            Value::Int(7),
            Value::Float(-0.5),
        ]
    );
    assert!(t.commit_time_micros.is_some());

    w.execute(
        "UPDATE items SET name = 'z', any = 'text now' WHERE id = 1",
        [],
    )
    .unwrap();
    let t = next_commit(&mut src).await;
    let Change::Update {
        before: Some(before),
        after,
        ..
    } = &t.changes[0]
    else {
        panic!("{t:?}")
    };
    assert_eq!(before[1], Value::Text("a,'b'\nc".into()));
    assert_eq!(after[1], Value::Text("z".into()));
    assert_eq!(after[6], Value::Text("text now".into()));

    // A key change keeps the old key in the before-image.
    w.execute("UPDATE items SET id = 2 WHERE id = 1", [])
        .unwrap();
    let t = next_commit(&mut src).await;
    assert_eq!(t.changes[0].old_key(), Some(vec![Value::Int(1)]));
    assert_eq!(t.changes[0].key(), Some(vec![Value::Int(2)]));

    w.execute("DELETE FROM items", []).unwrap();
    let t = next_commit(&mut src).await;
    let Change::Delete { before, .. } = &t.changes[0] else {
        panic!("{t:?}")
    };
    assert_eq!(before[0], Value::Int(2));
    assert_eq!(before[2], Value::Decimal("12.5".into()));
}

#[tokio::test]
async fn a_transaction_arrives_whole() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    let mut w = db.conn();
    let tx = w.transaction().unwrap();
    tx.execute("INSERT INTO items(id, name) VALUES (1, 'a')", [])
        .unwrap();
    tx.execute("INSERT INTO notes VALUES ('k', 1, 'x')", [])
        .unwrap();
    tx.execute("UPDATE items SET name = 'b' WHERE id = 1", [])
        .unwrap();
    tx.commit().unwrap();
    let t = next_commit(&mut src).await;
    assert_eq!(t.changes.len(), 3);
    assert_eq!(t.changes[1].table().unwrap().name.name, "notes");
}

/// Many writers' transactions while the source polls: groups may merge
/// transactions but never split one.
#[tokio::test]
async fn concurrent_transactions_are_never_split() {
    let db = Db::new("CREATE TABLE t(id INTEGER PRIMARY KEY, txn INTEGER NOT NULL);");
    let mut src = db.streaming(db.config()).await;
    const TXNS: i64 = 200;
    const PER_TXN: i64 = 5;
    let path = db.path.clone();
    let writer = std::thread::spawn(move || {
        let mut w = crate::writer(&path);
        for txn in 0..TXNS {
            let tx = w.transaction().unwrap();
            for i in 0..PER_TXN {
                tx.execute("INSERT INTO t VALUES (?1, ?2)", [txn * PER_TXN + i, txn])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
    });
    let mut seen = 0;
    let mut commits = 0;
    while seen < TXNS * PER_TXN {
        let t = next_commit(&mut src).await;
        let mut per_txn: HashMap<i64, i64> = HashMap::new();
        for c in &t.changes {
            let Change::Insert { row, .. } = c else {
                panic!()
            };
            let Value::Int(txn) = row[1] else { panic!() };
            *per_txn.entry(txn).or_default() += 1;
        }
        assert!(
            per_txn.values().all(|&n| n == PER_TXN),
            "split: {per_txn:?}"
        );
        seen += t.changes.len() as i64;
        commits += 1;
    }
    writer.join().unwrap();
    assert!(commits > 1, "the test should see several groups");
}

#[tokio::test]
async fn a_big_group_arrives_as_partials_then_commit() {
    let db = Db::new(ITEMS);
    let mut cfg = db.config();
    cfg.max_chunk_rows = 10;
    let mut src = db.streaming(cfg).await;
    let base = db.base();
    let mut w = db.conn();
    let tx = w.transaction().unwrap();
    for i in 0..35 {
        tx.execute("INSERT INTO items(id, name) VALUES (?1, 'n')", [i])
            .unwrap();
    }
    tx.commit().unwrap();
    let mut partials = Vec::new();
    loop {
        match next_data(&mut src).await {
            SourceEvent::Partial { position, changes } => partials.push((position, changes.len())),
            SourceEvent::Commit(t) => {
                assert_eq!(t.changes.len(), 5);
                assert_eq!(seq(&t.position) - base, 35);
                assert!(partials.iter().all(|(p, n)| *p == t.position && *n == 10));
                break;
            }
            SourceEvent::Heartbeat { .. } => unreachable!(),
        }
    }
    assert_eq!(partials.len(), 3);
}

#[tokio::test]
async fn groups_end_at_snapshot_boundaries() {
    let db = Db::new(ITEMS);
    let mut src = SqliteSource::open(db.config()).unwrap();
    src.prepare().await.unwrap();
    let base = db.base();
    let w = db.conn();
    for i in 0..5 {
        w.execute("INSERT INTO items(id, name) VALUES (?1, 'n')", [i])
            .unwrap();
    }
    src.start_stream(Some(&pos(base)), &[pos(base + 3)])
        .await
        .unwrap();
    assert_eq!(seq(&next_commit(&mut src).await.position) - base, 3);
    assert_eq!(seq(&next_commit(&mut src).await.position) - base, 5);
}

#[tokio::test]
async fn idle_and_foreign_writes_give_heartbeats() {
    let db = Db::new(&format!(
        "{ITEMS} CREATE TABLE other(id INTEGER PRIMARY KEY);"
    ));
    let mut cfg = db.config();
    cfg.selection.exclude = vec!["other".into()];
    let mut src = db.streaming(cfg).await;
    // `other` is not captured by this pipeline, but by another one sharing the file.
    let mut other_cfg = db.config();
    other_cfg.pipeline = "other-pipeline".into();
    other_cfg.selection.include = vec!["other".into()];
    let _other = db.streaming(other_cfg).await;
    let base = db.base();

    db.conn()
        .execute("INSERT INTO other VALUES (1)", [])
        .unwrap();
    let started = Instant::now();
    let event = tokio::time::timeout(crate::WAIT, src.next())
        .await
        .unwrap()
        .unwrap();
    let SourceEvent::Heartbeat { position, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        seq(&position) - base,
        1,
        "a group of foreign changes ends in a heartbeat"
    );
    let event = tokio::time::timeout(crate::WAIT, src.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, SourceEvent::Heartbeat { ref position, .. } if seq(position) == base + 1)
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn resume_after_a_position_is_exact() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    let base = db.base();
    let w = db.conn();
    w.execute("INSERT INTO items(id, name) VALUES (1, 'a')", [])
        .unwrap();
    let first = next_commit(&mut src).await.position;
    w.execute("INSERT INTO items(id, name) VALUES (2, 'b')", [])
        .unwrap();
    w.execute("INSERT INTO items(id, name) VALUES (3, 'c')", [])
        .unwrap();
    drop(src);

    let mut again = SqliteSource::open(db.config()).unwrap();
    again.prepare().await.unwrap();
    again.start_stream(Some(&first), &[]).await.unwrap();
    let t = next_commit(&mut again).await;
    let keys: Vec<_> = t.changes.iter().map(|c| c.key().unwrap()).collect();
    assert_eq!(keys, [vec![Value::Int(2)], vec![Value::Int(3)]]);
    assert_eq!(seq(&t.position) - base, 3);
}

#[tokio::test]
async fn ack_prunes_and_a_pruned_position_is_fatal() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    let w = db.conn();
    w.execute("INSERT INTO items(id, name) VALUES (1, 'a')", [])
        .unwrap();
    let first = next_commit(&mut src).await.position;
    w.execute("INSERT INTO items(id, name) VALUES (2, 'b')", [])
        .unwrap();
    let second = next_commit(&mut src).await.position;
    assert_eq!(count(&db.path, "SELECT count(*) FROM _ferry_changes"), 2);
    src.ack(&second).await.unwrap();
    assert_eq!(count(&db.path, "SELECT count(*) FROM _ferry_changes"), 0);
    assert_eq!(
        count(
            &db.path,
            "SELECT acked_seq FROM _ferry_consumers WHERE pipeline = 'test'"
        ),
        seq(&second)
    );

    let mut again = SqliteSource::open(db.config()).unwrap();
    let err = again.start_stream(Some(&first), &[]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(
        err.message()
            .contains(&format!("changes after seq {} were pruned", seq(&first))),
        "{}",
        err.report()
    );
    assert!(err.fix().unwrap().contains("reset"));
    // Resuming exactly where the ack was is fine.
    again.start_stream(Some(&second), &[]).await.unwrap();
    // A position of another source kind is refused.
    let pg = Position::Postgres(PgPosition {
        commit_lsn: Lsn(1),
        lsn: Lsn(1),
    });
    let err = again.start_stream(Some(&pg), &[]).await.unwrap_err();
    assert!(err.message().contains("postgres"), "{}", err.report());
}

#[tokio::test]
async fn a_position_beyond_a_rebuilt_change_table_is_fatal() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    let err = src
        .start_stream(Some(&pos(db.base() + 99)), &[])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("only ever reached"),
        "{}",
        err.report()
    );
}

#[tokio::test]
async fn unusable_tables_are_fatal_and_named() {
    // A table without a key is replicated (keyless), not refused.
    let db = Db::new("CREATE TABLE ok(id INTEGER PRIMARY KEY); CREATE TABLE heap(a, b);");
    let mut src = SqliteSource::open(db.config()).unwrap();
    let tables = src.tables().await.unwrap();
    assert!(
        tables
            .iter()
            .any(|t| t.name.name == "heap" && t.is_keyless())
    );
    let check: Vec<String> = src.check().await.iter().map(ToString::to_string).collect();
    assert!(
        check
            .iter()
            .any(|t| t.contains("table heap") && t.contains("no key")),
        "{check:#?}"
    );

    let db = Db::new("CREATE TABLE geo(id INTEGER PRIMARY KEY, shape GEOMETRY);");
    let err = SqliteSource::open(db.config())
        .unwrap()
        .tables()
        .await
        .unwrap_err();
    assert!(err.message().contains("geo.shape") && err.message().contains("GEOMETRY"));
    assert!(err.fix().unwrap().contains("exclude_columns"));

    let mut cfg = db.config();
    cfg.selection.exclude = vec!["geo".into()];
    assert!(
        SqliteSource::open(cfg)
            .unwrap()
            .tables()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_structure_change_is_followed_and_the_table_recopied() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    let w = db.conn();
    w.execute("INSERT INTO items(id, name) VALUES (1, 'a')", [])
        .unwrap();
    next_commit(&mut src).await;
    // The row inserted in the same transaction as the ALTER is captured by
    // the old triggers (without `extra`): only the re-copy can carry it.
    w.execute_batch(
        "BEGIN; ALTER TABLE items ADD COLUMN extra TEXT; \
         INSERT INTO items(id, name, extra) VALUES (2, 'b', 'kept'); COMMIT;",
    )
    .unwrap();
    let t = next_commit(&mut src).await;
    let [
        Change::Schema { table, .. },
        Change::RecopyStart { table: again, .. },
    ] = t.changes.as_slice()
    else {
        panic!("{:?}", t.changes)
    };
    assert!(table.column_index("extra").is_some() && table.version == 2);
    assert_eq!(again.name, table.name);
    // The re-copy's rows carry the new column; later changes too.
    let t = next_commit(&mut src).await;
    let [Change::RecopyRows { rows, range, .. }] = t.changes.as_slice() else {
        panic!("{:?}", t.changes)
    };
    assert!(range.upper.is_none(), "one chunk");
    let extra = table.column_index("extra").unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][extra], Value::Text("kept".into()));
    w.execute(
        "INSERT INTO items(id, name, extra) VALUES (3, 'c', 'new')",
        [],
    )
    .unwrap();
    let t = next_commit(&mut src).await;
    let [Change::Insert { row, .. }] = t.changes.as_slice() else {
        panic!("{:?}", t.changes)
    };
    assert_eq!(row[extra], Value::Text("new".into()));
}

#[tokio::test]
async fn a_recreated_table_stops_the_stream() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    db.conn()
        .execute_batch(
            "DROP TABLE notes; CREATE TABLE notes(a TEXT, b INT, body TEXT, PRIMARY KEY(a, b)); \
             INSERT INTO notes VALUES ('k', 1, 'not captured');",
        )
        .unwrap();
    let err = tokio::time::timeout(crate::WAIT, async {
        loop {
            match src.next().await {
                Ok(SourceEvent::Heartbeat { .. }) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        err.report().contains("0 of 3 capture triggers"),
        "{}",
        err.report()
    );
}

#[tokio::test]
async fn values_that_do_not_fit_are_data_errors() {
    let db = Db::new(ITEMS);
    let mut src = db.streaming(db.config()).await;
    db.conn()
        .execute(
            "INSERT INTO items(id, name, flag) VALUES (5, 'a', 'maybe')",
            [],
        )
        .unwrap();
    let err = tokio::time::timeout(crate::WAIT, src.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data);
    let report = err.report();
    assert!(
        report.contains("items.flag") && report.contains("key: (5)") && report.contains("maybe"),
        "{report}"
    );
}

#[tokio::test]
async fn teardown_removes_capture_once_no_consumer_remains() {
    let db = Db::new(ITEMS);
    let mut a = db.streaming(db.config()).await;
    let mut cfg = db.config();
    cfg.pipeline = "b".into();
    let mut b = db.streaming(cfg).await;
    let triggers = "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'";
    a.teardown().await.unwrap();
    assert_eq!(count(&db.path, triggers), 10, "pipeline b still captures");
    b.teardown().await.unwrap();
    assert_eq!(count(&db.path, triggers), 0);
    assert_eq!(
        count(
            &db.path,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '_ferry%'"
        ),
        0
    );
    // Writes keep working without the capture.
    db.conn()
        .execute("INSERT INTO items(id, name) VALUES (1, 'a')", [])
        .unwrap();
}

#[tokio::test]
async fn check_reports_without_changing_the_source() {
    let db = Db::new(ITEMS);
    let mut src = SqliteSource::open(db.config()).unwrap();
    let items = src.check().await;
    let text: Vec<String> = items.iter().map(ToString::to_string).collect();
    assert!(
        items
            .iter()
            .all(|i| i.status == ferry_core::CheckStatus::Ok),
        "{text:#?}"
    );
    assert!(text.iter().any(|t| t.contains("not installed yet")));
    assert_eq!(
        count(
            &db.path,
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
        ),
        0
    );

    // Another process holding the write lock is a warning.
    let w = db.conn();
    w.execute_batch("BEGIN IMMEDIATE").unwrap();
    let items = src.check().await;
    let lock = items.iter().find(|i| i.name == "source: lock").unwrap();
    assert_eq!(lock.status, ferry_core::CheckStatus::Warn);
    w.execute_batch("ROLLBACK").unwrap();

    src.prepare().await.unwrap();
    let text: Vec<String> = src.check().await.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("installed for all 2 tables")),
        "{text:#?}"
    );
}

#[tokio::test]
async fn table_types_follow_declared_types() {
    let db = Db::new(ITEMS);
    let mut src = SqliteSource::open(db.config()).unwrap();
    let tables = src.tables().await.unwrap();
    let items = tables.iter().find(|t| t.name.name == "items").unwrap();
    let types: Vec<&ColumnType> = items.columns.iter().map(|c| &c.ty).collect();
    assert_eq!(types[0], &ColumnType::Int64);
    assert_eq!(types[4], &ColumnType::Bool);
    assert_eq!(types[6], &ColumnType::Dynamic);
    let notes = tables.iter().find(|t| t.name.name == "notes").unwrap();
    assert_eq!(notes.key_names(), ["a", "b"]);
}
