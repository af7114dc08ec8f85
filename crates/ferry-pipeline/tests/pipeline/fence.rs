//! One runner per pipeline: a second run on the same target is refused
//! before it reads or writes anything, and the first one is not disturbed.

use std::sync::Arc;

use ferry_core::ErrorClass;
use ferry_pipeline::{Outcome, TransformSpec};
use ferry_testkit::doubles::{MemoryDb, MemorySink, RecordingSink, SinkCall};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_second_runner_is_refused_before_it_touches_the_target() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit((1..=5).map(|i| ins(&it, item(i, "a", i))).collect());
    let sink = MemorySink::new();
    let mut first = start(
        source(&db, &[&it]),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    streaming(&first).await;

    // Another process opening the same target: its own runner handle.
    let second_sink = Arc::new(RecordingSink::new(sink.reopen()));
    let second = start(
        source(&db, &[&it]),
        second_sink.clone(),
        TransformSpec::default(),
        options(2),
    );
    let err = failed(second.join().await);
    assert_eq!(err.class(), ErrorClass::Fatal, "{err:?}");
    assert!(
        err.message().contains("another ferry runs pipeline"),
        "{err}"
    );
    let calls: Vec<SinkCall> = second_sink.calls().into_iter().map(|c| c.call).collect();
    assert_eq!(calls, [SinkCall::Fence], "nothing but the fence was tried");

    db.commit((6..=10).map(|i| ins(&it, item(i, "b", i))).collect());
    first.synced(&db, &sink, &["items"]).await;
    assert_eq!(first.stop().await.unwrap(), Outcome::Stopped);
}
