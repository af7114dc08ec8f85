//! Heartbeats while the pipeline is busy: a source position marker (a
//! consistent reader's, or an idle source's) that arrives while a group
//! is open or in flight becomes the applied position as soon as every
//! transaction before it is applied, not when the pipeline next falls
//! idle; and it is acked no earlier than that.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Position;
use ferry_pipeline::{Options, TransformSpec};
use ferry_testkit::doubles::{FaultySink, MemoryDb, MemorySink, MemorySource, SinkOp};
use ferry_testkit::eventually;

use crate::support::*;

/// A source whose empty transactions come as heartbeats (PostgreSQL's
/// markers) and which sends no idle heartbeat of its own during the test,
/// so the only heartbeat is the marker.
fn marker_source(db: &MemoryDb, t: &ferry_core::TableRef) -> MemorySource {
    MemorySource::new(db.clone(), vec![t.clone()])
        .heartbeat_after(Duration::from_secs(3600))
        .empty_as_heartbeat()
}

/// One worker, every heartbeat recorded (`idle_checkpoint` 0): the
/// gateway's settings.
fn gateway_options() -> Options {
    let mut o = options(1);
    o.idle_checkpoint = Duration::ZERO;
    o
}

async fn held(faulty: &FaultySink<MemorySink>, n: usize) {
    eventually("commits wait in the hold", WAIT, || {
        std::future::ready((faulty.held() == n).then_some(()))
    })
    .await;
}

async fn applied_at(sink: &MemorySink, want: &Position) {
    eventually("the target's checkpoint reaches the marker", WAIT, || {
        let got = sink.checkpoint().applied;
        std::future::ready(if got.as_ref() == Some(want) {
            Ok(())
        } else {
            Err(got)
        })
    })
    .await;
}

/// Every ack so far is at or before `bound`.
fn acked_at_most(db: &MemoryDb, bound: &Position) {
    let acks = db.acks();
    assert!(
        acks.iter().all(|a| a <= bound),
        "acked past {bound} before it was applied: {acks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_marker_arriving_while_a_group_commits_is_applied_right_after_it() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit(vec![ins(&it, item(1, "a", 1))]);
    let sink = MemorySink::new();
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    let run = start(
        marker_source(&db, &it),
        faulty.clone(),
        TransformSpec::default(),
        gateway_options(),
    );
    streaming(&run).await;
    let before = db.position();

    // Group A is in flight: its commit waits.
    faulty.hold(SinkOp::Commit, faulty.calls(SinkOp::Commit) + 1);
    let a = db.commit(vec![upd(&it, item(1, "b", 2))]);
    held(&faulty, 1).await;
    // The marker arrives meanwhile.
    let marker = db.commit(vec![]);
    received(&run, &marker).await;
    acked_at_most(&db, &before);

    faulty.release();
    // Without waiting for an idle moment or another transaction: the
    // source sends nothing after the marker.
    applied_at(&sink, &marker).await;
    let applied = sink.applied_positions();
    assert_eq!(
        applied[applied.len() - 2..],
        [a.clone(), marker.clone()],
        "A commits first, then the marker: {applied:?}"
    );
    acked_at_most(&db, &marker);
    // The source task acks between pulls: the next transaction's pull
    // carries the marker's ack.
    let c = db.commit(vec![upd(&it, item(1, "c", 3))]);
    applied_at(&sink, &c).await;
    eventually("the marker is acked", WAIT, || {
        std::future::ready(db.acks().contains(&marker).then_some(()))
    })
    .await;
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_marker_behind_a_waiting_group_is_recorded_by_that_group() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit(vec![ins(&it, item(1, "a", 1))]);
    let sink = MemorySink::new();
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    let run = start(
        marker_source(&db, &it),
        faulty.clone(),
        TransformSpec::default(),
        gateway_options(),
    );
    streaming(&run).await;
    let before = db.position();

    faulty.hold(SinkOp::Commit, faulty.calls(SinkOp::Commit) + 1);
    let a = db.commit(vec![upd(&it, item(1, "b", 2))]);
    held(&faulty, 1).await;
    // B waits in the open group (the only worker is busy), the marker
    // right behind it.
    let b = db.commit(vec![ins(&it, item(2, "c", 3))]);
    let marker = db.commit(vec![]);
    received(&run, &marker).await;
    acked_at_most(&db, &before);
    let commits = faulty.calls(SinkOp::Commit);

    faulty.release();
    applied_at(&sink, &marker).await;
    // B's commit carries the marker's position: one commit, and B's own
    // position is never recorded on its own.
    let applied = sink.applied_positions();
    assert_eq!(
        applied[applied.len() - 2..],
        [a, marker.clone()],
        "{applied:?}"
    );
    assert!(!applied.contains(&b), "{applied:?}");
    assert_eq!(faulty.calls(SinkOp::Commit), commits + 1);
    assert_eq!(sink.rows("items").len(), 2);
    run.stop().await.unwrap();
}
