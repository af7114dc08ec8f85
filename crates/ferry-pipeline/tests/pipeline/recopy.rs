//! Online re-copies and the start-up rules around them: a divergent target
//! converges while changes flow; a restart continues an unfinished re-copy;
//! a lost stretch of the source's log stops the pipeline or is repaired by
//! re-copying; a table that leaves the selection is copied again when it
//! comes back.

use std::sync::{Arc, Mutex};

use ferry_core::{ErrorClass, Sink, Step, TableOps};
use ferry_pipeline::{OnGap, Outcome, TargetConsistency, TransformSpec};
use ferry_testkit::doubles::{MemoryDb, MemorySink};
use ferry_testkit::eventually;

use crate::support::*;

/// Writes to the target behind the pipeline's back: the divergence a
/// re-copy must repair.
async fn diverge(sink: &MemorySink, t: &ferry_core::TableRef) {
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    let mut ops = TableOps::new(t.clone());
    ops.deletes = vec![vec![int(3)], vec![int(40)], vec![int(77)]];
    ops.upserts = vec![
        item(5, "wrong", -1),
        item(60, "wrong", -1),
        item(9001, "extra", 0),
        item(9002, "extra", 0),
    ];
    w.apply(&[Step::Rows(vec![ops])]).await.unwrap();
    w.commit(&[]).await.unwrap();
}

fn seed(db: &MemoryDb, t: &ferry_core::TableRef, n: i64) {
    db.commit((1..=n).map(|i| ins(t, item(i, "a", i))).collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recopy_requested_in_the_stream_repairs_the_target_while_changes_flow() {
    let db = MemoryDb::new();
    let (it, acc) = (items("items"), accounts());
    seed(&db, &it, 250);
    db.commit(vec![ins(&acc, vec![int(1), text("o"), int(10)])]);
    let sink = MemorySink::new();
    let mut run = start(
        source(&db, &[&it, &acc]).chunk_rows(20),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(3),
    );
    run.synced(&db, &sink, &["items", "accounts"]).await;
    diverge(&sink, &it).await;
    assert!(in_sync(&db, &sink, &[("items", "items")]).is_err());

    db.request_recopy(&it);
    // Changes keep coming while the chunks are applied, to rows already
    // re-copied and to rows not reached yet.
    for i in 1..=30 {
        db.commit(vec![
            upd(&it, item(i * 8, "during", i)),
            ins(&it, item(300 + i, "new", i)),
            upd(&acc, vec![int(1), text("o"), int(10 + i)]),
        ]);
        if i % 5 == 0 {
            db.commit(vec![del(&it, 300 + i - 1)]);
        }
        tokio::task::yield_now().await;
    }
    run.synced(&db, &sink, &["items", "accounts"]).await;
    let cp = sink.checkpoint();
    let r = cp.recopies.get("items").expect("the re-copy is recorded");
    assert!(r.is_done(), "{r:?}");
    assert_eq!(r.reason, "ferry resync");
    assert!(
        run.stats.tables()["items"].recopy_rows >= 250,
        "every row was re-copied"
    );
    eventually("the target is consistent again", WAIT, || {
        std::future::ready(match run.stats.consistency() {
            TargetConsistency::Consistent { .. } => Ok(()),
            other => Err(other),
        })
    })
    .await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_continues_an_unfinished_recopy_after_its_last_chunk() {
    let db = MemoryDb::new();
    let it = items("items");
    seed(&db, &it, 200);
    let sink = MemorySink::new();
    // One chunk per group, so the stop can land between chunks.
    let mut opts = options(2);
    opts.batch_rows = 20;
    let mut run = start(
        source(&db, &[&it]).chunk_rows(25),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        opts.clone(),
    );
    run.synced(&db, &sink, &["items"]).await;
    // Stop as soon as the second chunk commits.
    let chunks = Arc::new(Mutex::new(0));
    {
        let (chunks, stop) = (chunks.clone(), run.stop_handle());
        sink.on_commit(move |c| {
            if c.records
                .iter()
                .any(|r| r.scope == "recopy:items" && r.value.contains("copying"))
            {
                let mut n = chunks.lock().unwrap();
                *n += 1;
                if *n == 3 {
                    let _ = stop.send(true);
                }
            }
        });
    }
    diverge(&sink, &it).await;
    db.request_recopy(&it);
    assert_eq!(run.join().await.unwrap(), Outcome::Stopped);
    let cp = sink.checkpoint();
    let r = cp.recopies.get("items").expect("recorded").clone();
    assert!(!r.is_done(), "stopped in the middle: {r:?}");
    let after = r.after.clone().expect("chunks recorded their last key");

    // Meanwhile the source changes; then a new run continues after `after`.
    db.commit(vec![upd(&it, item(190, "later", 1))]);
    let mut run = start(
        source(&db, &[&it]).chunk_rows(25),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        opts,
    );
    run.synced(&db, &sink, &["items"]).await;
    assert!(sink.checkpoint().recopies["items"].is_done());
    let rows = run.stats.tables()["items"].recopy_rows;
    let before_after = db
        .rows("items")
        .iter()
        .filter(|r| vec![r[0].clone()] <= after)
        .count() as u64;
    assert!(
        rows <= 200 - before_after + 1,
        "the second run re-copies only the rest ({rows} rows, {before_after} were done)"
    );
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_in_the_source_log_stops_the_pipeline_or_is_repaired_by_recopying() {
    let db = MemoryDb::new();
    let (it, acc) = (items("items"), accounts());
    seed(&db, &it, 120);
    db.commit(vec![ins(&acc, vec![int(1), text("o"), int(10)])]);
    let sink = MemorySink::new();
    let mut run = start(
        source(&db, &[&it, &acc]).chunk_rows(30),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    run.synced(&db, &sink, &["items", "accounts"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    let checkpoint = sink.checkpoint();

    // While ferry is down the source changes, and the log of those changes
    // is lost (a dropped slot, a purged log).
    db.commit(vec![del(&it, 7), upd(&it, item(8, "lost", 0))]);
    db.commit(vec![upd(&acc, vec![int(1), text("lost"), int(0)])]);
    db.forget_log_through(&db.position());
    db.commit(vec![ins(&it, item(500, "after", 1))]);

    let run = start(
        source(&db, &[&it, &acc]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(
        err.message()
            .contains("cannot continue from the target's checkpoint"),
        "{}",
        err.report()
    );
    assert!(err.fix().unwrap().contains("on_gap"), "{}", err.report());
    assert_eq!(
        sink.checkpoint(),
        checkpoint,
        "a refused start changes nothing"
    );

    let mut opts = options(2);
    opts.on_gap = OnGap::Resync;
    let mut run = start(
        source(&db, &[&it, &acc]).chunk_rows(30),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        opts,
    );
    db.commit(vec![upd(&it, item(100, "streamed", 2))]);
    run.synced(&db, &sink, &["items", "accounts"]).await;
    let cp = sink.checkpoint();
    for t in ["items", "accounts"] {
        let r = &cp.recopies[t];
        assert!(
            r.is_done() && r.reason.contains("lost changes"),
            "{t}: {r:?}"
        );
    }
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_that_leaves_the_selection_is_copied_again_when_it_comes_back() {
    let db = MemoryDb::new();
    let (it, acc) = (items("items"), accounts());
    seed(&db, &it, 40);
    db.commit(vec![ins(&acc, vec![int(1), text("o"), int(10)])]);
    let sink = MemorySink::new();
    let run_with = |tables: &[&ferry_core::TableRef]| {
        start(
            source(&db, tables),
            Arc::new(sink.clone()),
            TransformSpec::default(),
            options(2),
        )
    };
    let mut run = run_with(&[&it, &acc]);
    run.synced(&db, &sink, &["items", "accounts"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);

    // `items` is taken out of the selection; it keeps changing.
    let mut run = run_with(&[&acc]);
    streaming(&run).await;
    db.commit(vec![del(&it, 1), upd(&it, item(2, "unseen", 0))]);
    db.commit(vec![upd(&acc, vec![int(1), text("seen"), int(11)])]);
    run.synced(&db, &sink, &["accounts"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    let cp = sink.checkpoint();
    assert!(
        !cp.tables["items"].complete,
        "a table out of the selection is no longer 'copied'"
    );

    // Back in the selection: copied again, then kept up to date.
    let snapshots = db.snapshots().len();
    let mut run = run_with(&[&it, &acc]);
    db.commit(vec![ins(&it, item(41, "back", 1))]);
    run.synced(&db, &sink, &["items", "accounts"]).await;
    assert_eq!(db.snapshots().len(), snapshots + 1, "copied again");
    assert!(sink.checkpoint().tables["items"].complete);
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}
