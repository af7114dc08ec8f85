//! `eventual` mode: tables commit independently and in parallel, each in
//! source order; a restart (clean or after a failed commit) loses nothing
//! and applies nothing twice.

use std::sync::Arc;

use ferry_core::ErrorClass;
use ferry_pipeline::{Consistency, Outcome, TransformSpec};
use ferry_testkit::doubles::{FaultySink, MemoryDb, MemorySink, SinkOp};

use crate::support::*;

fn eventual(workers: usize) -> ferry_pipeline::Options {
    let mut o = options(workers);
    o.consistency = Consistency::Eventual;
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_apply_in_parallel_and_restart_exactly() {
    let db = MemoryDb::new();
    let (acc, it) = (accounts(), items("items"));
    db.commit(
        (1..=20)
            .map(|i| ins(&acc, vec![int(i), text("o"), int(100)]))
            .collect(),
    );
    db.commit((1..=20).map(|i| ins(&it, item(i, "a", i))).collect());
    let sink = MemorySink::with_max_writers(4);

    let mut run = start(
        source(&db, &[&acc, &it]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        eventual(4),
    );
    streaming(&run).await;
    for i in 1..=200 {
        let k = 1 + i % 20;
        db.commit(vec![
            upd(&acc, vec![int(k), text("e1"), int(i)]),
            ins(&it, item(1000 + i, "e1", i)),
        ]);
        if i % 7 == 0 {
            db.commit(vec![del(&it, 1000 + i - 3)]);
        }
    }
    run.synced(&db, &sink, &["accounts", "items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    let loaded = sink.rows_loaded();
    assert!(
        sink.peak_writers() > 1,
        "eventual mode must use several writers"
    );

    // Changes while down, then a restart on the same stores.
    for i in 1..=30 {
        db.commit(vec![upd(&acc, vec![int(1 + i % 20), text("down"), int(i)])]);
    }
    db.commit((1..=10).map(|i| del(&it, i)).collect());
    let mut run = start(
        source(&db, &[&acc, &it]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        eventual(4),
    );
    run.synced(&db, &sink, &["accounts", "items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    assert_eq!(sink.rows_loaded(), loaded, "no row loaded twice");
    assert_eq!(
        db.snapshots().len(),
        1,
        "the second run must not copy again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_commit_mid_stream_resumes_from_per_table_positions() {
    let db = MemoryDb::new();
    let (acc, it) = (accounts(), items("items"));
    db.commit(
        (1..=10)
            .map(|i| ins(&acc, vec![int(i), text("o"), int(100)]))
            .collect(),
    );
    db.commit((1..=10).map(|i| ins(&it, item(i, "a", i))).collect());
    let inner = MemorySink::with_max_writers(4);
    let sink = Arc::new(FaultySink::new(inner.clone()));

    let run = start(
        source(&db, &[&acc, &it]),
        sink.clone(),
        TransformSpec::default(),
        eventual(4),
    );
    streaming(&run).await;
    // The 5th stream commit from now fails fatally: some tables of a group
    // have committed, others not; the next run must replay exactly those.
    let fail_at = sink.calls(SinkOp::Commit) + 5;
    sink.fail(SinkOp::Commit, fail_at, ErrorClass::Fatal);
    for burst in 0..12 {
        let mut last = None;
        for i in 1..=10 {
            let n = burst * 10 + i;
            // Only new rows: a lost change can never be hidden by a later one.
            last = Some(db.commit(vec![
                ins(&acc, vec![int(100 + n), text("x"), int(n)]),
                ins(&it, item(500 + n, "x", n)),
            ]));
        }
        // Separate groups, so the failing commit comes mid-stream.
        let want = last.expect("committed").to_string();
        ferry_testkit::eventually("received, or the planned failure happened", WAIT, || {
            let done =
                run.stats.received().position == want || sink.calls(SinkOp::Commit) >= fail_at;
            std::future::ready(done.then_some(()))
        })
        .await;
    }
    let stats = run.stats.clone();
    let joined = tokio::time::timeout(std::time::Duration::from_secs(5), run.join()).await;
    let Ok(result) = joined else {
        panic!(
            "did not end; workers: {:?} phase {}",
            stats.workers(),
            stats.phase()
        );
    };
    let err = failed(result);
    assert_eq!(err.class(), ErrorClass::Fatal);

    let mut run = start(
        source(&db, &[&acc, &it]),
        sink.clone(),
        TransformSpec::default(),
        eventual(4),
    );
    run.synced(&db, &inner, &["accounts", "items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}
