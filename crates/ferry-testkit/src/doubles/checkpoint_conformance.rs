//! The [`CheckpointStore`](ferry_core::CheckpointStore) contract as one
//! test, run against every sink.
//!
//! ```text
//! #[tokio::test]
//! async fn sqlite_checkpoint_store_conforms() {
//!     let sink = SqliteSink::open(config("conf.db", "p1")).unwrap();
//!     let other = SqliteSink::open(config("conf.db", "p2")).unwrap();
//!     checkpoint_store_conformance(&sink, &other, conformance_table(TableName::bare("t"))).await;
//! }
//! ```

use std::collections::BTreeMap;

use ferry_core::{
    Checkpoint, CheckpointRecord, KeyRange, Result, Sink, SinkWriter, Step, TableOps,
    TableProgress, TableRef, Value,
};

use super::seq_position;

/// Checks the checkpoint contract on `sink`; panics naming the first
/// broken rule.
///
/// `sink` and `other` must be sinks of two different pipelines on the
/// same, fresh target (nothing ever committed for either); a store that
/// serves one pipeline only (an in-memory sink) passes a second instance.
/// `table` must be a keyed table the suite may create and write, of
/// [`conformance_table`](super::conformance_table)'s columns or simpler.
/// The suite leaves both checkpoints cleared.
///
/// Positions are [`seq_position`]s: stores keep them as opaque envelopes.
///
/// What it checks: `load` on a fresh target is empty; records committed
/// with data come back exactly (global, per-worker and per-table applied
/// positions, table progress with awkward keys and namespaced names), and
/// not before `commit` returns; the records of a rolled-back transaction,
/// or of one whose writer was dropped before committing, are absent; a
/// commit upserts its records by scope and keeps the others, a commit
/// without records changes nothing; `clear` forgets every record of its
/// pipeline, and a commit after it starts afresh; each pipeline's records
/// are its own.
pub async fn checkpoint_store_conformance(sink: &dyn Sink, other: &dyn Sink, table: TableRef) {
    let empty = Checkpoint::default();
    expect(sink, &empty, "load() of a fresh target").await;
    expect(
        other,
        &empty,
        "load() of another pipeline on a fresh target",
    )
    .await;
    for s in [sink, other] {
        ok(
            s.ensure_tables(std::slice::from_ref(&table)).await,
            "ensure_tables",
        );
    }
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut w = ok(sink.writer().await, "open a writer");

    // Committed with data: back exactly, and only after commit.
    let mut copying = TableProgress::default();
    copying.add(
        KeyRange {
            lower: None,
            upper: Some(vec![Value::Int(7), Value::Text("x;\t'y\"z".into())]),
        },
        &seq_position(3),
    );
    copying.add(
        KeyRange {
            lower: Some(vec![Value::Int(9)]),
            upper: None,
        },
        &seq_position(4),
    );
    let mut copied = TableProgress::default();
    copied.add(KeyRange::all(), &seq_position(2));
    copied.complete = true;
    let first = [
        CheckpointRecord::applied(&seq_position(5)),
        CheckpointRecord::applied_by(0, &seq_position(4)),
        CheckpointRecord::applied_by(1, &seq_position(6)),
        CheckpointRecord::table_applied("app.orders", &seq_position(7)),
        CheckpointRecord::table("app.orders", &copying),
        CheckpointRecord::table("plain", &copied),
    ];
    ok(w.begin().await, "begin");
    upsert(w.as_mut(), &table, 1).await;
    expect(
        sink,
        &empty,
        "load() while the records' transaction is open",
    )
    .await;
    ok(w.commit(&first).await, "commit records with data");
    record(&mut model, &first);
    expect_model(sink, &model, "records committed with data").await;

    // Rolled back, explicitly or by dropping the writer (an aborted worker
    // task): nothing of it, and no commit without records, changes them.
    ok(w.begin().await, "begin");
    upsert(w.as_mut(), &table, 2).await;
    ok(w.rollback().await, "rollback");
    expect_model(sink, &model, "after a rollback").await;
    ok(w.begin().await, "begin");
    upsert(w.as_mut(), &table, 3).await;
    drop(w);
    expect_model(sink, &model, "after a writer was dropped in a transaction").await;
    let mut w = ok(sink.writer().await, "open a writer");
    ok(w.begin().await, "begin");
    ok(w.commit(&[]).await, "commit nothing");
    expect_model(sink, &model, "after a commit without records").await;

    // Upsert by scope.
    let mut done = copying.clone();
    done.complete = true;
    let second = [
        CheckpointRecord::applied(&seq_position(9)),
        CheckpointRecord::table("app.orders", &done),
        CheckpointRecord::applied_by(1, &seq_position(8)),
    ];
    ok(w.begin().await, "begin");
    upsert(w.as_mut(), &table, 4).await;
    ok(w.commit(&second).await, "commit records of existing scopes");
    record(&mut model, &second);
    expect_model(sink, &model, "after upserting records by scope").await;

    // Another pipeline's records are its own.
    expect(other, &empty, "another pipeline's load()").await;
    let theirs = [CheckpointRecord::applied(&seq_position(1))];
    let mut ow = ok(other.writer().await, "open another pipeline's writer");
    ok(ow.begin().await, "begin (other pipeline)");
    upsert(ow.as_mut(), &table, 5).await;
    ok(ow.commit(&theirs).await, "commit (other pipeline)");
    drop(ow);
    let mut other_model = BTreeMap::new();
    record(&mut other_model, &theirs);
    expect_model(other, &other_model, "another pipeline's own records").await;
    expect_model(sink, &model, "after another pipeline committed").await;

    // Clear forgets this pipeline's records only; a commit after it
    // starts afresh.
    ok(sink.clear().await, "clear");
    expect(sink, &empty, "after clear()").await;
    expect_model(other, &other_model, "another pipeline after clear()").await;
    let after = [CheckpointRecord::applied(&seq_position(2))];
    ok(w.begin().await, "begin");
    ok(w.commit(&after).await, "commit after clear()");
    let mut fresh = BTreeMap::new();
    record(&mut fresh, &after);
    expect_model(sink, &fresh, "a commit after clear()").await;

    ok(w.begin().await, "begin");
    ok(w.clear_table(&table).await, "clear_table");
    ok(w.commit(&[]).await, "commit");
    ok(sink.clear().await, "clear");
    ok(other.clear().await, "clear (other pipeline)");
    expect(other, &empty, "another pipeline after its clear()").await;
}

fn ok<T>(r: Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("checkpoint conformance: {what} failed: {}", e.report()))
}

fn record(model: &mut BTreeMap<String, String>, records: &[CheckpointRecord]) {
    for r in records {
        model.insert(r.scope.clone(), r.value.clone());
    }
}

async fn expect_model(sink: &dyn Sink, model: &BTreeMap<String, String>, when: &str) {
    let records: Vec<CheckpointRecord> = model
        .iter()
        .map(|(scope, value)| CheckpointRecord {
            scope: scope.clone(),
            value: value.clone(),
        })
        .collect();
    let want = Checkpoint::from_records(&records).expect("the suite's records decode");
    expect(sink, &want, when).await;
}

async fn expect(sink: &dyn Sink, want: &Checkpoint, when: &str) {
    let got = ok(sink.load().await, &format!("load() {when}"));
    assert_eq!(&got, want, "checkpoint conformance: {when} (got, want)");
}

/// Upserts row `n` of `table` in the writer's open transaction.
async fn upsert(w: &mut dyn SinkWriter, table: &TableRef, n: i64) {
    let row: Vec<Value> = (0..table.columns.len())
        .map(|i| row_value(table, i, n))
        .collect();
    let mut ops = TableOps::new(table.clone());
    ops.upserts.push(row);
    ok(w.apply(&[Step::Rows(vec![ops])]).await, "apply an upsert");
}

fn row_value(table: &TableRef, i: usize, n: i64) -> Value {
    use ferry_core::ColumnType;
    match &table.columns[i].ty {
        ColumnType::Text { .. } => Value::Text(format!("v{n}")),
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => Value::Int(n),
        other => panic!(
            "checkpoint conformance: column {} of type {other:?} is not supported; use \
             conformance_table()",
            table.columns[i].name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::{MemorySink, conformance_table};
    use ferry_core::TableName;

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_sink_checkpoint_store_conforms() {
        let sink = MemorySink::new();
        let other = MemorySink::new();
        checkpoint_store_conformance(&sink, &other, conformance_table(TableName::bare("t"))).await;
        assert_eq!(sink.open_transactions(), 0);
    }
}
