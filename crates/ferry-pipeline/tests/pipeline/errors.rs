//! Error classes through the runtime: transient errors are retried, data
//! errors halt, a failed run leaves nothing behind, source errors surface.

use std::sync::Arc;

use ferry_core::{ErrorClass, Sink};
use ferry_pipeline::{Outcome, TransformSpec};
use ferry_testkit::doubles::{FaultySink, MemoryDb, MemorySink, SinkOp};
use ferry_testkit::eventually;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn transient_commit_failures_are_retried_and_the_data_stays_exact() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit((1..=10).map(|i| ins(&it, item(i, "a", i))).collect());
    let sink = MemorySink::new();
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    let mut run = start(
        source(&db, &[&it]),
        faulty.clone(),
        TransformSpec::default(),
        options(3),
    );
    streaming(&run).await;

    // A commit that fails, then one that commits but reports a failure.
    let n = faulty.calls(SinkOp::Commit);
    faulty.fail(SinkOp::Commit, n + 1, ErrorClass::Transient);
    faulty.fail_after_commit(n + 2, ErrorClass::Transient);
    for i in 1..=10 {
        db.commit(vec![
            upd(&it, item(i, "b", i * 10)),
            ins(&it, item(100 + i, "n", i)),
        ]);
    }
    db.commit(vec![del(&it, 5), del(&it, 105)]);
    run.synced(&db, &sink, &["items"]).await;
    assert!(
        ferry_pipeline::Stats::get(&run.stats.retries) >= 2,
        "both failures must have been retried"
    );
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    // The ambiguous commit is applied twice, never out of order.
    let applied = sink.applied_positions();
    assert!(applied.windows(2).all(|w| w[0] <= w[1]), "{applied:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_error_halts_with_the_error_and_keeps_the_checkpoint() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit((1..=10).map(|i| ins(&it, item(i, "a", i))).collect());
    let sink = MemorySink::new();
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    let mut run = start(
        source(&db, &[&it]),
        faulty.clone(),
        TransformSpec::default(),
        options(2),
    );
    streaming(&run).await;
    let p1 = db.commit(vec![upd(&it, item(1, "b", 1))]);
    run.synced(&db, &sink, &["items"]).await;

    faulty.fail(
        SinkOp::Apply,
        faulty.calls(SinkOp::Apply) + 1,
        ErrorClass::Data,
    );
    let bad = db.commit(vec![upd(&it, item(2, "bad", 2))]);
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Data, "{err:?}");
    assert!(err.message().contains("injected fault"), "{err:?}");
    let applied = sink.checkpoint().applied.unwrap();
    assert!(applied >= p1 && applied < bad, "checkpoint at {applied}");
    assert_eq!(sink.rows("items")[1], item(2, "a", 2));

    // Once the cause is gone, a new run applies the change.
    let mut run = start(
        source(&db, &[&it]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    run.synced(&db, &sink, &["items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

/// A group fails while a later group has applied and waits for its turn to
/// commit: the run must end without leaving that writer (and its open
/// transaction, which holds row locks) behind, or a restart on the same
/// target blocks on those locks.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_leaves_no_writer_or_open_transaction_behind() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit((1..=4).map(|i| ins(&it, item(i, "a", i))).collect());
    let sink = MemorySink::new();
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    let run = start(
        source(&db, &[&it]),
        faulty.clone(),
        TransformSpec::default(),
        options(2),
    );
    streaming(&run).await;

    let (applies, commits) = (faulty.calls(SinkOp::Apply), faulty.calls(SinkOp::Commit));
    faulty.hold(SinkOp::Commit, commits + 1);
    faulty.fail(SinkOp::Commit, commits + 1, ErrorClass::Data);
    db.commit(vec![upd(&it, item(1, "b", 1))]);
    eventually("the first group waits in its commit", WAIT, || {
        std::future::ready((faulty.held() == 1).then_some(()))
    })
    .await;
    db.commit(vec![upd(&it, item(2, "b", 2))]);
    eventually("the second group has applied", WAIT, || {
        std::future::ready((faulty.calls(SinkOp::Apply) == applies + 2).then_some(()))
    })
    .await;
    faulty.release();
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Data, "{err:?}");
    eventually("every writer is closed", WAIT, || {
        std::future::ready(
            if sink.live_writers() == 0 && sink.open_transactions() == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} writers alive, {} transactions open",
                    sink.live_writers(),
                    sink.open_transactions()
                ))
            },
        )
    })
    .await;

    let mut run = start(
        source(&db, &[&it]),
        Arc::new(sink.clone()) as Arc<dyn Sink>,
        TransformSpec::default(),
        options(2),
    );
    run.synced(&db, &sink, &["items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_error_ends_the_run_with_that_error() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit(vec![ins(&it, item(1, "a", 1))]);
    let sink = MemorySink::new();
    let mut run = start(
        source(&db, &[&it]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    streaming(&run).await;
    db.commit(vec![ins(&it, item(2, "a", 2))]);
    run.synced(&db, &sink, &["items"]).await;
    db.fail_next_read(ErrorClass::Transient);
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    assert!(err.message().contains("injected read failure"), "{err:?}");
}
