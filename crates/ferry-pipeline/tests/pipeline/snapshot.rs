//! Snapshot resume: a run stopped or failed during the copy is followed by
//! one that completes every table without copying a row twice (the
//! `MemorySink` refuses to load a key it holds) and without losing changes
//! made between the two snapshots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Error, ErrorClass, Result, Sink,
    SinkInfo, SinkWriter, Step, TableRef, Value,
};
use ferry_pipeline::{Outcome, TransformSpec};
use ferry_testkit::doubles::{FaultySink, MemoryDb, MemorySink, SinkOp};
use ferry_testkit::eventually;
use tokio::sync::Notify;

use crate::support::*;

const TABLES: [&str; 3] = ["t1", "t2", "t3"];

fn seeded() -> (MemoryDb, Vec<TableRef>) {
    let db = MemoryDb::new();
    let tables: Vec<TableRef> = TABLES.iter().map(|t| items(t)).collect();
    for t in &tables {
        db.commit((1..=100).map(|i| ins(t, item(i, "s", i))).collect());
    }
    (db, tables)
}

fn src(db: &MemoryDb, tables: &[TableRef]) -> ferry_testkit::doubles::MemorySource {
    source(db, &tables.iter().collect::<Vec<_>>()).chunk_rows(10)
}

/// Changes between the two runs: in copied and uncopied ranges, and keys
/// moving between them (a stopped first run copies at most 60 rows of t1).
fn change_between_runs(db: &MemoryDb, tables: &[TableRef]) {
    let t1 = &tables[0];
    db.commit(vec![
        upd(t1, item(5, "between", 5)),
        upd(t1, item(85, "between", 85)),
        del(t1, 6),
        ins(t1, item(1001, "new", 1)),
    ]);
    // Copied range → a range the next snapshot copies, and back.
    db.commit(vec![mv(t1, item(7, "s", 7), item(2007, "moved", 7))]);
    db.commit(vec![
        del(t1, 8),
        mv(t1, item(59, "s", 59), item(8, "moved", 59)),
    ]);
    for t in &tables[1..] {
        db.commit(vec![upd(t, item(1, "between", 1)), del(t, 90)]);
    }
}

/// The checkpoint says exactly what the target holds (checked before the
/// source changes, so the source still equals the first snapshot): a
/// complete table has every row, an incomplete one exactly the rows of its
/// recorded ranges, a table without progress none.
fn assert_checkpoint_matches_target(db: &MemoryDb, sink: &MemorySink) {
    let cp = sink.checkpoint();
    for t in TABLES {
        let progress = cp.tables.get(t);
        let expected: Vec<Vec<Value>> = match progress {
            None => Vec::new(),
            Some(p) if p.complete => db.rows(t),
            Some(p) => db
                .rows(t)
                .into_iter()
                .filter(|r| p.ranges.iter().any(|c| c.range.contains(&r[..1])))
                .collect(),
        };
        let got = sink.rows(t);
        assert!(
            got == expected,
            "{t}: the checkpoint ({progress:?}) does not match the target: {} rows, expected {}",
            got.len(),
            expected.len()
        );
    }
}

async fn resume_and_check(db: &MemoryDb, tables: &[TableRef], sink: &MemorySink) {
    // The second run groups transactions like the SQLite source, so it must
    // honour the snapshot boundary.
    let mut run = start(
        src(db, tables).group_max(3),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    run.synced(db, sink, &TABLES).await;
    for t in tables {
        db.commit(vec![
            upd(t, item(2, "after", 2)),
            ins(t, item(3000, "after", 0)),
        ]);
    }
    run.synced(db, sink, &TABLES).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
    let cp = sink.checkpoint();
    for t in TABLES {
        assert!(cp.tables[t].complete, "{t} not complete: {cp:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_stopped_midway_resumes_without_duplicates_or_gaps() {
    let (db, tables) = seeded();
    let sink = MemorySink::with_max_writers(2);
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    // Commits 1-3 clear the tables, 4 and 5 are chunks; 6 on are held.
    faulty.hold(SinkOp::Commit, 6);
    let run = start(
        src(&db, &tables),
        faulty.clone(),
        TransformSpec::default(),
        options(2),
    );
    eventually("the copy is held", WAIT, || {
        std::future::ready((faulty.held() >= 1).then_some(()))
    })
    .await;
    run.request_stop();
    faulty.release();
    assert_eq!(run.join().await.unwrap(), Outcome::Stopped);
    let cp = sink.checkpoint();
    assert_eq!(cp.applied, None);
    assert!(
        !cp.tables["t1"].complete && !cp.tables["t1"].ranges.is_empty(),
        "{cp:?}"
    );
    assert!(!cp.tables.get("t3").is_some_and(|p| p.complete), "{cp:?}");
    assert_checkpoint_matches_target(&db, &sink);

    change_between_runs(&db, &tables);
    resume_and_check(&db, &tables, &sink).await;
    assert_eq!(db.snapshots().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_failing_midway_resumes_without_duplicates_or_gaps() {
    let (db, tables) = seeded();
    let sink = MemorySink::with_max_writers(2);
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    faulty.fail(SinkOp::Commit, 9, ErrorClass::Fatal);
    let run = start(
        src(&db, &tables),
        faulty.clone(),
        TransformSpec::default(),
        options(2),
    );
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Fatal, "{err:?}");
    assert_checkpoint_matches_target(&db, &sink);

    change_between_runs(&db, &tables);
    resume_and_check(&db, &tables, &sink).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ambiguous_snapshot_commit_resumes_without_duplicates() {
    let (db, tables) = seeded();
    let sink = MemorySink::with_max_writers(2);
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    // Commits 1-3 clear the tables; commit 5 (a chunk of t1) lands but
    // reports a failure while the other writer has a chunk to commit; a
    // later failure ends the run before the copy could complete.
    faulty.fail_after_commit(5, ErrorClass::Transient);
    faulty.fail(SinkOp::Commit, 7, ErrorClass::Fatal);
    let run = start(
        src(&db, &tables),
        faulty.clone(),
        TransformSpec::default(),
        options(2),
    );
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    assert_checkpoint_matches_target(&db, &sink);

    change_between_runs(&db, &tables);
    resume_and_check(&db, &tables, &sink).await;
}

/// Makes the first chunk of `items` fail only after the table's last chunk
/// committed (two writers, the later chunk committing first).
struct ReorderingSink {
    inner: MemorySink,
    last_chunk_committed: Arc<(AtomicBool, Notify)>,
}

struct ReorderingWriter {
    inner: Box<dyn SinkWriter>,
    last_chunk_committed: Arc<(AtomicBool, Notify)>,
    holds_last_chunk: bool,
}

#[async_trait]
impl SinkWriter for ReorderingWriter {
    async fn begin(&mut self) -> Result<()> {
        self.inner.begin().await
    }
    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        self.inner.apply(steps).await
    }
    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        let has = |id| rows.iter().any(|r| r[0] == int(id));
        if has(1) {
            let (done, notify) = &*self.last_chunk_committed;
            loop {
                let woken = notify.notified();
                if done.load(Ordering::SeqCst) {
                    break;
                }
                woken.await;
            }
            return Err(Error::transient("connection lost while loading"));
        }
        self.holds_last_chunk = has(20);
        self.inner.load(table, rows).await
    }
    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        self.inner.clear_table(table).await
    }
    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        self.inner.commit(records).await?;
        if std::mem::take(&mut self.holds_last_chunk) {
            let (done, notify) = &*self.last_chunk_committed;
            done.store(true, Ordering::SeqCst);
            notify.notify_waiters();
        }
        Ok(())
    }
    async fn rollback(&mut self) -> Result<()> {
        self.inner.rollback().await
    }
}

#[async_trait]
impl CheckpointStore for ReorderingSink {
    async fn load(&self) -> Result<Checkpoint> {
        self.inner.load().await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
}

#[async_trait]
impl Sink for ReorderingSink {
    fn info(&self) -> SinkInfo {
        self.inner.info()
    }
    async fn fence(&self) -> Result<()> {
        self.inner.fence().await
    }
    async fn check(&self) -> Vec<CheckItem> {
        self.inner.check().await
    }
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<ferry_core::TableName>> {
        self.inner.ensure_tables(tables).await
    }
    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(ReorderingWriter {
            inner: self.inner.writer().await?,
            last_chunk_committed: self.last_chunk_committed.clone(),
            holds_last_chunk: false,
        }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_is_complete_only_once_every_chunk_is_committed() {
    let db = MemoryDb::new();
    let it = items("items");
    db.commit((1..=20).map(|i| ins(&it, item(i, "s", i))).collect());
    let sink = MemorySink::with_max_writers(2);
    let reordering = ReorderingSink {
        inner: sink.clone(),
        last_chunk_committed: Arc::default(),
    };
    let run = start(
        source(&db, &[&it]).chunk_rows(10),
        Arc::new(reordering),
        TransformSpec::default(),
        options(2),
    );
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    let progress = &sink.checkpoint().tables["items"];
    assert!(
        !progress.complete,
        "items is recorded as copied, but only {} of its 20 rows are on the target: {progress:?}",
        sink.rows("items").len()
    );

    let mut run = start(
        source(&db, &[&it]).chunk_rows(10),
        Arc::new(sink.clone()),
        TransformSpec::default(),
        options(2),
    );
    db.commit(vec![upd(&it, item(1, "after", 1))]);
    run.synced(&db, &sink, &["items"]).await;
    assert_eq!(run.stop().await.unwrap(), Outcome::Stopped);
}

/// With one writer (a SQLite target), a failing chunk must end the run
/// with its error while the source still has chunks to hand out.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_failure_with_a_single_writer_ends_the_run() {
    let (db, tables) = seeded();
    let sink = MemorySink::with_max_writers(1);
    let faulty = Arc::new(FaultySink::new(sink.clone()));
    faulty.fail(SinkOp::Load, 2, ErrorClass::Transient);
    let run = start(
        src(&db, &tables),
        faulty.clone(),
        TransformSpec::default(),
        options(4),
    );
    let err = failed(run.join().await);
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    assert_checkpoint_matches_target(&db, &sink);

    change_between_runs(&db, &tables);
    resume_and_check(&db, &tables, &sink).await;
}

/// Snapshot rows pass through in the row encoding both ends name, for a
/// table whose rows the transform leaves alone (a rename changes no row),
/// and are decoded for a table with an excluded column or a filter, which
/// must see each row.
#[tokio::test(flavor = "multi_thread")]
async fn rows_pass_through_encoded_only_where_the_transform_keeps_them() {
    use ferry_pipeline::TableRule;
    use ferry_pipeline::predicate::Expr;

    let db = MemoryDb::new();
    let plain = items("plain");
    let renamed = items("renamed");
    let filtered = items("filtered");
    let trimmed = items("trimmed");
    for t in [&plain, &renamed, &filtered, &trimmed] {
        db.commit((1..=50).map(|i| ins(t, item(i, "s", i))).collect());
    }
    let mut spec = TransformSpec::default();
    spec.tables.insert(
        "renamed".into(),
        TableRule {
            rename: Some("renamed_copy".into()),
            ..TableRule::default()
        },
    );
    spec.tables.insert(
        "filtered".into(),
        TableRule {
            filter: Some(Expr::parse("qty > 25").unwrap()),
            ..TableRule::default()
        },
    );
    spec.tables.insert(
        "trimmed".into(),
        TableRule {
            exclude_columns: vec!["label".into()],
            ..TableRule::default()
        },
    );
    let sink = MemorySink::new();
    sink.accept_encoded_rows();
    let source = source(&db, &[&plain, &renamed, &filtered, &trimmed])
        .chunk_rows(10)
        .row_encoding();
    let mut run = start(source, Arc::new(sink.clone()), spec, options(2));
    run.synced_as(
        &db,
        &sink,
        &[("plain", "plain"), ("renamed", "renamed_copy")],
    )
    .await;
    // 5 chunks of 10 rows for each of the two tables that pass through.
    assert_eq!(sink.encoded_loads(), 10);
    let qty = |r: &Vec<Value>| match r[2] {
        Value::Int(q) => q,
        _ => panic!("{r:?}"),
    };
    let filtered_rows = sink.rows("filtered");
    assert_eq!(filtered_rows.len(), 25);
    assert!(filtered_rows.iter().all(|r| qty(r) > 25));
    let trimmed_rows = sink.rows("trimmed");
    assert_eq!(trimmed_rows.len(), 50);
    assert!(trimmed_rows.iter().all(|r| r.len() == 2), "label excluded");
    run.stop().await.unwrap();
}
