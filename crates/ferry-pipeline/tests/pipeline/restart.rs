//! Stop and run again on the same stores: nothing lost, nothing doubled.

use std::sync::Arc;

use ferry_pipeline::{Outcome, TransformSpec};
use ferry_testkit::doubles::{MemoryDb, MemorySink};
use ferry_testkit::eventually;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_loses_nothing_and_doubles_nothing() {
    let db = MemoryDb::new();
    let (acc, it) = (accounts(), items("items"));
    db.commit(
        (1..=30)
            .map(|i| ins(&acc, vec![int(i), text("o"), int(100)]))
            .collect(),
    );
    db.commit((1..=30).map(|i| ins(&it, item(i, "a", i))).collect());
    let sink = MemorySink::new();

    let mut run = start(
        source(&db, &[&acc, &it]).chunk_rows(8),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(3),
    );
    streaming(&run).await;
    for i in 1..=15 {
        db.commit(vec![
            upd(&acc, vec![int(i), text("r1"), int(100 + i)]),
            ins(&it, item(100 + i, "r1", i)),
        ]);
    }
    run.synced(&db, &sink, &["accounts", "items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    let first = sink.checkpoint();
    assert_eq!(
        first.applied,
        Some(db.position()),
        "a clean stop leaves the checkpoint at the last applied position"
    );
    let loaded = sink.rows_loaded();
    let applied_before = sink.applied_positions();
    let delivered_before = db.deliveries().len();

    // Changes while the pipeline is down.
    for i in 1..=10 {
        db.commit(vec![
            upd(&acc, vec![int(i), text("down"), int(i)]),
            del(&it, 100 + i),
        ]);
    }
    db.commit((200..210).map(|i| ins(&it, item(i, "down", i))).collect());

    let mut run = start(
        source(&db, &[&acc, &it]).chunk_rows(8),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(3),
    );
    for i in 11..=20 {
        db.commit(vec![upd(&acc, vec![int(i), text("r2"), int(i)])]);
    }
    run.synced(&db, &sink, &["accounts", "items"]).await;
    // The source hears of everything applied (acks never go backwards: the
    // source asserts it, over both runs).
    let head = db.position();
    eventually("the source is acked up to its head", WAIT, || {
        std::future::ready(db.acks().last().filter(|a| **a == head).map(|_| ()))
    })
    .await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);

    assert_eq!(sink.checkpoint().applied, Some(db.position()));
    assert_eq!(
        db.snapshots().len(),
        1,
        "the second run must not copy again"
    );
    assert_eq!(sink.rows_loaded(), loaded, "no row loaded twice");
    // Nothing re-read: the second run's deliveries all follow the
    // checkpoint of the first.
    let second_run = &db.deliveries()[delivered_before..];
    let stop_position = first.applied.unwrap();
    assert!(
        second_run.iter().all(|p| *p > stop_position),
        "re-delivered after a clean stop at {stop_position}: {second_run:?}"
    );
    // Nothing applied twice: commit positions strictly increase over both
    // runs.
    let applied = sink.applied_positions();
    assert!(applied.len() > applied_before.len());
    assert_strictly_increasing(&applied, "applied positions over two runs");
}
