//! Snapshot then stream, transaction consistency with several workers,
//! hot-row merge, large transactions, transforms.

use std::sync::{Arc, Mutex};

use ferry_core::{Change, CheckpointRecord, Sink, Value};
use ferry_pipeline::predicate::Expr;
use ferry_pipeline::{Outcome, TableRule, TransformSpec};
use ferry_testkit::doubles::{
    FaultySink, MemoryDb, MemorySink, OpsSummary, RecordingSink, SinkCall, SinkOp, StepSummary,
};
use ferry_testkit::eventually;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_then_stream() {
    let db = MemoryDb::new();
    let (acc, it) = (accounts(), items("items"));
    db.commit(
        (1..=50)
            .map(|i| ins(&acc, vec![int(i), text("o"), int(100)]))
            .collect(),
    );
    db.commit((1..=30).map(|i| ins(&it, item(i, "a", i))).collect());
    db.commit(vec![
        del(&it, 3),
        upd(&acc, vec![int(7), text("p"), int(70)]),
    ]);

    let sink = MemorySink::with_max_writers(4);
    let src = source(&db, &[&acc, &it]).chunk_rows(7);
    let mut run = start(
        src,
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(4),
    );
    streaming(&run).await;
    for i in 1..=20 {
        db.commit(vec![
            upd(&acc, vec![int(i), text("o"), int(100 + i)]),
            ins(&it, item(100 + i, "b", i)),
        ]);
    }
    db.commit(vec![del(&acc, 50), del(&it, 101)]);
    db.commit(vec![Change::Truncate {
        tables: vec![it.clone()],
    }]);
    db.commit((1..=5).map(|i| ins(&it, item(i, "c", i))).collect());
    run.synced(&db, &sink, &["accounts", "items"]).await;
    let head = db.position();
    eventually("the source is acked up to its head", WAIT, || {
        std::future::ready(db.acks().last().filter(|a| **a == head).map(|_| ()))
    })
    .await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);

    let cp = sink.checkpoint();
    assert_eq!(cp.applied, Some(db.position()));
    assert!(cp.tables.values().all(|p| p.complete), "{cp:?}");
    assert_eq!(db.snapshots().len(), 1);
    assert!(sink.peak_writers() <= 4);
    assert_strictly_increasing(&sink.applied_positions(), "applied positions");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_transfers_commit_in_source_order_and_keep_the_total() {
    const ACCOUNTS: i64 = 24;
    const TOTAL: i64 = ACCOUNTS * 1000;
    let db = MemoryDb::new();
    let acc = accounts();
    db.commit(
        (1..=ACCOUNTS)
            .map(|i| ins(&acc, vec![int(i), text("o"), int(1000)]))
            .collect(),
    );
    let sink = MemorySink::with_max_writers(4);
    // Every commit that carries an applied position (the stream's) must
    // show every account and the invariant total.
    let seen: Arc<Mutex<Vec<(u64, usize, i64)>>> = Arc::default();
    let s = seen.clone();
    sink.on_commit(move |v| {
        if v.applied().is_some() {
            let rows = v.rows("accounts");
            let total = rows.iter().map(|r| as_int(&r[2])).sum();
            s.lock().unwrap().push((v.number, rows.len(), total));
        }
    });
    let mut opts = options(4);
    opts.batch_rows = 6;
    opts.batch_time = std::time::Duration::from_millis(1);
    let mut run = start(
        source(&db, &[&acc]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        opts,
    );
    streaming(&run).await;

    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (db, acc) = (db.clone(), acc.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(w + 1);
                for _ in 0..150 {
                    let (a, b) = (rng.range(1, ACCOUNTS), rng.range(1, ACCOUNTS));
                    let amount = rng.range(1, 50);
                    db.commit_with(|v| {
                        let bal = |id| as_int(&v.row(&acc.name, &[int(id)]).unwrap()[2]);
                        if a == b {
                            return vec![upd(&acc, vec![int(a), text("t"), int(bal(a))])];
                        }
                        vec![
                            upd(&acc, vec![int(a), text("t"), int(bal(a) - amount)]),
                            upd(&acc, vec![int(b), text("t"), int(bal(b) + amount)]),
                        ]
                    });
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    run.synced(&db, &sink, &["accounts"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);

    let seen = seen.lock().unwrap();
    assert!(
        seen.len() > 10,
        "expected many stream commits, saw {}",
        seen.len()
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|(_, n, total)| *n as i64 != ACCOUNTS || *total != TOTAL)
        .collect();
    assert!(bad.is_empty(), "commits broke the invariant: {bad:?}");
    assert_strictly_increasing(&sink.applied_positions(), "commit order");
    assert!(
        sink.peak_writers() >= 2,
        "several writers must have been used"
    );
    assert!(sink.peak_writers() <= 4);
    // Groups writing the same rows execute one after the other, so no
    // writer ever waits on another's row lock.
    assert_eq!(sink.lock_waits(), 0);
}

fn rows_step(table: &str, deletes: usize, upserts: usize, updates: usize) -> StepSummary {
    StepSummary::Rows(vec![OpsSummary {
        table: table.into(),
        deletes,
        upserts,
        updates,
    }])
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_rows_merge_into_one_write_per_row() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit(vec![ins(&it, item(99, "z", 0))]);
    let sink = MemorySink::new();
    let rec = Arc::new(RecordingSink::new(FaultySink::new(sink.clone())));
    let faulty = rec.inner();
    // One worker: while it is held, the next transactions pile up in one
    // open group.
    faulty.hold(SinkOp::Apply, 1);
    let mut run = start(
        source(&db, &[&it]),
        rec.clone() as Arc<dyn Sink>,
        TransformSpec::default(),
        options(1),
    );
    streaming(&run).await;
    db.commit(vec![upd(&it, item(99, "z", 1))]);
    eventually("the first group is held", WAIT, || {
        std::future::ready((faulty.held() == 1).then_some(()))
    })
    .await;
    // insert + update + update of one row across transactions, insert +
    // delete across transactions, and insert + delete inside one.
    db.commit(vec![ins(&it, item(1, "a", 1))]);
    db.commit(vec![upd(&it, item(1, "a", 2))]);
    db.commit(vec![upd(&it, item(1, "b", 3))]);
    db.commit(vec![ins(&it, item(2, "x", 1))]);
    db.commit(vec![del(&it, 2)]);
    let last = db.commit(vec![ins(&it, item(3, "y", 1)), del(&it, 3)]);
    received(&run, &last).await;
    faulty.release();
    run.synced(&db, &sink, &["items"]).await;
    assert_eq!(sink.rows("items"), vec![item(1, "b", 3), item(99, "z", 1)]);

    let merged = rec
        .transactions()
        .into_iter()
        .find(|t| t.records.contains(&CheckpointRecord::applied(&last)))
        .expect("a transaction committed the last position");
    assert!(merged.committed);
    assert_eq!(
        merged.calls,
        vec![SinkCall::Apply {
            writer: merged.writer,
            steps: vec![rows_step("items", 0, 1, 0)],
        }],
        "six transactions must merge into one upsert"
    );

    // Within one transaction too.
    let p = db.commit(vec![
        ins(&it, item(5, "a", 1)),
        upd(&it, item(5, "a", 2)),
        upd(&it, item(5, "a", 3)),
        ins(&it, item(6, "a", 1)),
        del(&it, 6),
    ]);
    run.synced(&db, &sink, &["items"]).await;
    let t = rec
        .transactions()
        .into_iter()
        .find(|t| t.records.contains(&CheckpointRecord::applied(&p)))
        .expect("committed");
    assert_eq!(
        t.calls,
        vec![SinkCall::Apply {
            writer: t.writer,
            steps: vec![rows_step("items", 0, 1, 0)],
        }]
    );
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transactions_stream_as_partials_into_one_target_transaction() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit(vec![ins(&it, item(1000, "seed", 0))]);
    let sink = MemorySink::new();
    let counts: Arc<Mutex<Vec<usize>>> = Arc::default();
    let c = counts.clone();
    sink.on_commit(move |v| c.lock().unwrap().push(v.rows("items").len()));
    let rec = Arc::new(RecordingSink::new(sink.clone()));
    let src = source(&db, &[&it]).partial_after(10);
    let mut run = start(src, rec.clone(), TransformSpec::default(), options(4));
    streaming(&run).await;

    let big = db.commit((1..=95).map(|i| ins(&it, item(i, "big", i))).collect());
    // Small transactions right behind it, and another large one.
    db.commit(vec![upd(&it, item(1, "small", 1))]);
    let mut second: Vec<Change> = (1..=40).map(|i| upd(&it, item(i, "big2", -i))).collect();
    second.extend((41..=60).map(|i| del(&it, i)));
    let big2 = db.commit(second);
    db.commit(vec![ins(&it, item(2000, "tail", 0))]);
    run.synced(&db, &sink, &["items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);

    let counts = counts.lock().unwrap();
    assert!(
        counts.iter().all(|n| [0, 1, 96, 76, 77].contains(n)),
        "a commit exposed part of a large transaction: row counts {counts:?}"
    );
    for (pos, parts) in [(&big, 10), (&big2, 6)] {
        let t = rec
            .transactions()
            .into_iter()
            .find(|t| t.records.contains(&CheckpointRecord::applied(pos)))
            .expect("the large transaction committed");
        let applies = t
            .calls
            .iter()
            .filter(|c| matches!(c, SinkCall::Apply { .. }))
            .count();
        assert_eq!(applies, parts, "one apply per part: {t:?}");
    }
    assert_strictly_increasing(&sink.applied_positions(), "applied positions");
    // The small transaction right behind the first large one writes one of
    // its rows: it executes only after the large one committed, so it never
    // waits on the large transaction's row locks.
    assert_eq!(sink.lock_waits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_during_a_large_transaction_is_a_clean_stop() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit(vec![ins(&it, item(1000, "seed", 0))]);
    let sink = MemorySink::new();
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    let src = source(&db, &[&it]).partial_after(10);
    let run = start(src, faulty.clone(), TransformSpec::default(), options(2));
    streaming(&run).await;
    let before = sink.checkpoint().applied;

    faulty.hold(SinkOp::Apply, faulty.calls(SinkOp::Apply) + 2);
    db.commit((1..=95).map(|i| ins(&it, item(i, "big", i))).collect());
    eventually("a part of the large transaction is held", WAIT, || {
        std::future::ready((faulty.held() == 1).then_some(()))
    })
    .await;
    run.request_stop();
    // Let the held part go only once the stop request is out.
    faulty.release();
    let stopped = run.join().await;
    assert_eq!(stopped.unwrap(), Outcome::Stopped);
    assert_eq!(sink.rows("items"), vec![item(1000, "seed", 0)]);
    assert_eq!(sink.checkpoint().applied, before);
    assert_eq!(sink.open_transactions(), 0);

    let mut run = start(
        source(&db, &[&it]).partial_after(10),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    run.synced(&db, &sink, &["items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn renames_excluded_columns_and_filters_apply_to_snapshot_and_stream() {
    let db = MemoryDb::new();
    let orders = table(
        "orders",
        &["item:text", "secret:text", "region:text", "qty:int"],
    );
    let row = |id: i64, region: &str, qty: i64| {
        vec![int(id), text("it"), text("pw"), text(region), int(qty)]
    };
    db.commit(
        (1..=20)
            .map(|i| ins(&orders, row(i, if i % 2 == 0 { "eu" } else { "us" }, i)))
            .collect(),
    );
    let sink = MemorySink::new();
    let mut spec = TransformSpec::default();
    spec.tables.insert(
        "orders".into(),
        TableRule {
            rename: Some("orders_copy".into()),
            exclude_columns: vec!["secret".into()],
            filter: Some(Expr::parse("region = 'eu'").unwrap()),
        },
    );
    let run = start(
        source(&db, &[&orders]).chunk_rows(6),
        Arc::new(sink.clone()),
        spec,
        options(2),
    );
    streaming(&run).await;
    db.commit(vec![
        ins(&orders, row(21, "eu", 21)),
        ins(&orders, row(23, "us", 23)),
    ]);
    // eu → us leaves the filtered set; us → eu enters it.
    db.commit(vec![
        upd(&orders, row(2, "us", 2)),
        upd(&orders, row(3, "eu", 3)),
    ]);
    db.commit(vec![
        del(&orders, 4),
        del(&orders, 5),
        upd(&orders, row(6, "eu", 60)),
    ]);

    let expected = || -> Vec<Vec<Value>> {
        db.rows("orders")
            .into_iter()
            .filter(|r| r[3] == text("eu"))
            .map(|r| vec![r[0].clone(), r[1].clone(), r[3].clone(), r[4].clone()])
            .collect()
    };
    eventually("the filtered, projected copy matches", WAIT, || {
        let (want, got) = (expected(), sink.rows("orders_copy"));
        std::future::ready(
            if want == got && sink.checkpoint().applied == Some(db.position()) {
                Ok(())
            } else {
                Err((want, got))
            },
        )
    })
    .await;
    assert!(!sink.has_table("orders"), "only the renamed table exists");
    let schema = sink.schema("orders_copy").unwrap();
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "item", "region", "qty"]);
    // Progress is recorded under the source table's name.
    assert!(sink.checkpoint().tables["orders"].complete);
    assert!(run.stats.tables().contains_key("orders_copy"));
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

/// A large transaction's rows under a deferrable key wait for the key to
/// hold one row again, across parts (a swap half done at a part's end);
/// more such rows than `queue_bytes` stop the pipeline with the fix, and
/// nothing of the transaction reaches the target.
#[tokio::test(flavor = "multi_thread")]
async fn rows_held_under_a_deferrable_key_are_bounded_by_the_queue_bytes() {
    let it = Arc::new(ferry_core::TableSchema {
        key_deferrable: true,
        ..(*items("items")).clone()
    });
    for (budget, fits) in [(1 << 20, true), (4000, false)] {
        let db = MemoryDb::new();
        db.commit(vec![ins(&it, item(1000, "seed", 0))]);
        let sink = MemorySink::new();
        let mut o = options(2);
        o.queue_bytes = budget;
        let src = source(&db, &[&it]).partial_after(10);
        let mut run = start(src, Arc::new(sink.clone()), TransformSpec::default(), o);
        streaming(&run).await;
        db.commit((1..=95).map(|i| ins(&it, item(i, "big", i))).collect());
        if fits {
            run.synced(&db, &sink, &["items"]).await;
            assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
            continue;
        }
        let e = run.join().await.unwrap_err();
        let text = format!("{e} {}", e.fix().unwrap_or_default());
        assert!(
            text.contains("DEFERRABLE") && text.contains("apply.queue_bytes"),
            "{text}"
        );
        assert_eq!(sink.rows("items"), vec![item(1000, "seed", 0)]);
    }
}
